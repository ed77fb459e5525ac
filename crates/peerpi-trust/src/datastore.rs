//! The client's metadata directory: the exact bytes of the newest verified
//! version of each role, under non-versioned names (`root.json`,
//! `timestamp.json`, `<role>.json` with the role name percent-encoded).
//! Written atomically (temporary file, fsync, rename), so a crash leaves the
//! old or the new file, never half of one.

use std::io::Write;
use std::path::{Path, PathBuf};

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::error::{Result, TrustError};

/// Characters left as they are when a role or target name becomes one path
/// segment: the same set as Python's `urllib.parse.quote(name, safe="")`,
/// so that file names and URLs match the reference implementation's.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'_')
    .remove(b'.')
    .remove(b'-')
    .remove(b'~');

/// `name` as a single path segment (`/` and every other special byte
/// percent-encoded).
pub fn quote_segment(name: &str) -> String {
    utf8_percent_encode(name, SEGMENT).to_string()
}

/// The directory of trusted metadata.
#[derive(Debug, Clone)]
pub struct MetadataDir {
    dir: PathBuf,
}

impl MetadataDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        MetadataDir { dir: dir.into() }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Where `role`'s metadata lives.
    pub fn file(&self, role: &str) -> PathBuf {
        self.dir.join(format!("{}.json", quote_segment(role)))
    }

    /// The stored bytes of `role`, or `None` when there are none.
    pub fn read(&self, role: &str) -> Result<Option<Vec<u8>>> {
        let path = self.file(role);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(TrustError::io(path, e)),
        }
    }

    /// Replaces `role`'s metadata with `bytes`, atomically.
    pub fn write(&self, role: &str, bytes: &[u8]) -> Result<()> {
        write_atomically(&self.file(role), bytes)
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory
/// (whose name does not end in `.json`), then renames it into place.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| TrustError::io(dir, e))?;
    let mut temp = tempfile::Builder::new()
        .prefix(".incoming-")
        .suffix(".part")
        .tempfile_in(dir)
        .map_err(|e| TrustError::io(dir, e))?;
    temp.write_all(bytes)
        .and_then(|()| temp.as_file().sync_all())
        .map_err(|e| TrustError::io(path, e))?;
    temp.persist(path)
        .map_err(|e| TrustError::io(path, e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_are_quoted_like_the_reference_implementation() {
        assert_eq!(quote_segment("bin-0a1f"), "bin-0a1f");
        assert_eq!(quote_segment("?"), "%3F");
        assert_eq!(quote_segment("#"), "%23");
        assert_eq!(quote_segment("/delegatedrole"), "%2Fdelegatedrole");
        assert_eq!(quote_segment("../delegatedrole"), "..%2Fdelegatedrole");
        assert_eq!(quote_segment("a b~c"), "a%20b~c");
    }

    #[test]
    fn a_role_name_cannot_leave_the_directory() {
        let store = MetadataDir::new("/m");
        assert_eq!(store.file("../x"), PathBuf::from("/m/..%2Fx.json"));
        assert_eq!(
            store.file("/etc/passwd"),
            PathBuf::from("/m/%2Fetc%2Fpasswd.json")
        );
    }
}
