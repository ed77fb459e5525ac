//! Distribution filenames: wheels (`name-version(-build)?-py-abi-plat.whl`)
//! and sdists (`name-version.tar.gz` / `.zip`), and the checks a filename must
//! pass before it may appear in a URL path or on disk.

use crate::name::{NameError, ProjectName};

/// Longest filename accepted (the common filesystem limit).
pub const MAX_FILENAME_LEN: usize = 255;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DistKind {
    Wheel,
    Sdist,
}

/// A parsed distribution filename.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistFilename {
    pub name: ProjectName,
    pub version: String,
    pub kind: DistKind,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilenameError {
    #[error("filename is empty")]
    Empty,
    #[error("filename is longer than {MAX_FILENAME_LEN} bytes")]
    TooLong,
    #[error("filename {0:?} contains a path separator, a control character or starts with '.'")]
    Unsafe(String),
    #[error("{0:?} is not a wheel or sdist filename (.whl, .tar.gz, .zip)")]
    UnknownExtension(String),
    #[error("wheel filename {0:?} does not have 5 or 6 dash-separated parts")]
    BadWheel(String),
    #[error("sdist filename {0:?} has no '-' between name and version")]
    BadSdist(String),
    #[error("bad project name in filename: {0}")]
    Name(#[from] NameError),
}

/// Checks that `filename` is a single, harmless path component.
pub fn check_safe_filename(filename: &str) -> Result<(), FilenameError> {
    if filename.is_empty() {
        return Err(FilenameError::Empty);
    }
    if filename.len() > MAX_FILENAME_LEN {
        return Err(FilenameError::TooLong);
    }
    if filename.starts_with('.')
        || filename
            .chars()
            .any(|c| c == '/' || c == '\\' || c.is_control())
    {
        return Err(FilenameError::Unsafe(filename.escape_default().to_string()));
    }
    Ok(())
}

impl DistFilename {
    pub fn parse(filename: &str) -> Result<Self, FilenameError> {
        check_safe_filename(filename)?;
        if let Some(stem) = filename.strip_suffix(".whl") {
            let parts: Vec<&str> = stem.split('-').collect();
            if !(parts.len() == 5 || parts.len() == 6) || parts.iter().any(|p| p.is_empty()) {
                return Err(FilenameError::BadWheel(filename.to_string()));
            }
            return Ok(Self {
                name: ProjectName::new(parts[0])?,
                version: parts[1].to_string(),
                kind: DistKind::Wheel,
            });
        }
        let stem = [".tar.gz", ".zip", ".tar.bz2", ".tgz"]
            .iter()
            .find_map(|ext| filename.strip_suffix(ext))
            .ok_or_else(|| FilenameError::UnknownExtension(filename.to_string()))?;
        // Legacy sdists may have dashes in the name, never in a valid version.
        let (name, version) = stem
            .rsplit_once('-')
            .filter(|(n, v)| !n.is_empty() && !v.is_empty())
            .ok_or_else(|| FilenameError::BadSdist(filename.to_string()))?;
        Ok(Self {
            name: ProjectName::new(name)?,
            version: version.to_string(),
            kind: DistKind::Sdist,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_wheels() {
        let f = DistFilename::parse("Foo_Bar-1.2.3-py3-none-any.whl").unwrap();
        assert_eq!(f.name.as_str(), "foo-bar");
        assert_eq!(f.version, "1.2.3");
        assert_eq!(f.kind, DistKind::Wheel);
        let f = DistFilename::parse("numpy-2.0.0-1-cp312-cp312-manylinux_2_17_x86_64.whl").unwrap();
        assert_eq!((f.name.as_str(), f.version.as_str()), ("numpy", "2.0.0"));
    }

    #[test]
    fn parses_sdists_including_legacy_dashed_names() {
        let f = DistFilename::parse("foo_bar-0.1.tar.gz").unwrap();
        assert_eq!(
            (f.name.as_str(), f.version.as_str(), f.kind),
            ("foo-bar", "0.1", DistKind::Sdist)
        );
        let f = DistFilename::parse("zope-interface-5.0.zip").unwrap();
        assert_eq!(
            (f.name.as_str(), f.version.as_str()),
            ("zope-interface", "5.0")
        );
    }

    #[test]
    fn rejects_bad_filenames() {
        assert!(matches!(
            DistFilename::parse("a-1-py3-none.whl"),
            Err(FilenameError::BadWheel(_))
        ));
        assert!(matches!(
            DistFilename::parse("foo.exe"),
            Err(FilenameError::UnknownExtension(_))
        ));
        assert!(matches!(
            DistFilename::parse("foo.tar.gz"),
            Err(FilenameError::BadSdist(_))
        ));
        assert!(matches!(
            DistFilename::parse("../x-1.tar.gz"),
            Err(FilenameError::Unsafe(_))
        ));
        assert!(matches!(
            DistFilename::parse("a/b-1.tar.gz"),
            Err(FilenameError::Unsafe(_))
        ));
        assert!(matches!(
            DistFilename::parse(".hidden-1.tar.gz"),
            Err(FilenameError::Unsafe(_))
        ));
        assert!(matches!(
            DistFilename::parse(&format!("{}-1.tar.gz", "a".repeat(300))),
            Err(FilenameError::TooLong)
        ));
    }

    proptest! {
        #[test]
        fn wheel_round_trip(name in "[a-z][a-z0-9]{0,10}", version in "[0-9]{1,3}(\\.[0-9]{1,3}){0,2}") {
            let f = DistFilename::parse(&format!("{name}-{version}-py3-none-any.whl")).unwrap();
            prop_assert_eq!(f.name.as_str(), name.as_str());
            prop_assert_eq!(f.version, version);
        }

        #[test]
        fn never_panics(s in ".{0,80}") {
            let _ = DistFilename::parse(&s);
        }
    }
}
