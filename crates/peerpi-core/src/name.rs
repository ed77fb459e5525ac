//! Project names, normalised when they are made (PEP 503), so that no later
//! code has to normalise or re-check them.

use std::fmt;

/// Longest project name accepted. The public index has no name near this long;
/// the cap keeps hostile input from growing keys and log lines without bound.
pub const MAX_NAME_LEN: usize = 128;

/// A valid, PEP 503-normalised project name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProjectName(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("project name is empty")]
    Empty,
    #[error("project name is longer than {MAX_NAME_LEN} characters")]
    TooLong,
    #[error(
        "project name {0:?} has a character other than ASCII letters, digits, '-', '_' and '.'"
    )]
    BadCharacter(String),
    #[error("project name {0:?} must start and end with a letter or digit")]
    BadEdge(String),
}

impl ProjectName {
    /// Validates `raw` against the PEP 508 name grammar and normalises it:
    /// lowercase, with every run of `-`, `_` and `.` replaced by one `-`.
    pub fn new(raw: &str) -> Result<Self, NameError> {
        if raw.is_empty() {
            return Err(NameError::Empty);
        }
        if raw.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong);
        }
        if !raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(NameError::BadCharacter(raw.escape_default().to_string()));
        }
        let bytes = raw.as_bytes();
        if !bytes[0].is_ascii_alphanumeric() || !bytes[bytes.len() - 1].is_ascii_alphanumeric() {
            return Err(NameError::BadEdge(raw.to_string()));
        }
        let mut normalised = String::with_capacity(raw.len());
        let mut in_separator_run = false;
        for c in raw.chars() {
            if matches!(c, '-' | '_' | '.') {
                if !in_separator_run {
                    normalised.push('-');
                }
                in_separator_run = true;
            } else {
                normalised.push(c.to_ascii_lowercase());
                in_separator_run = false;
            }
        }
        Ok(Self(normalised))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ProjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn normalises_case_and_separator_runs() {
        for (raw, want) in [
            ("Django", "django"),
            ("zope.interface", "zope-interface"),
            ("Foo__Bar-.-baz", "foo-bar-baz"),
            ("a", "a"),
            ("A1_b2", "a1-b2"),
        ] {
            assert_eq!(ProjectName::new(raw).unwrap().as_str(), want, "{raw}");
        }
    }

    #[test]
    fn rejects_invalid_names() {
        assert_eq!(ProjectName::new(""), Err(NameError::Empty));
        assert!(matches!(ProjectName::new(".."), Err(NameError::BadEdge(_))));
        assert!(matches!(ProjectName::new("-a"), Err(NameError::BadEdge(_))));
        assert!(matches!(
            ProjectName::new("a/b"),
            Err(NameError::BadCharacter(_))
        ));
        assert!(matches!(
            ProjectName::new("naïve"),
            Err(NameError::BadCharacter(_))
        ));
        assert_eq!(
            ProjectName::new(&"a".repeat(MAX_NAME_LEN + 1)),
            Err(NameError::TooLong)
        );
        assert!(ProjectName::new(&"a".repeat(MAX_NAME_LEN)).is_ok());
    }

    proptest! {
        #[test]
        fn normalisation_is_idempotent(raw in "[A-Za-z0-9]([A-Za-z0-9._-]{0,30}[A-Za-z0-9])?") {
            let once = ProjectName::new(&raw).unwrap();
            let twice = ProjectName::new(once.as_str()).unwrap();
            prop_assert_eq!(&once, &twice);
            prop_assert!(!once.as_str().contains("--"));
            prop_assert!(once.as_str().bytes().all(|b| !b.is_ascii_uppercase() && b != b'_' && b != b'.'));
        }

        #[test]
        fn never_panics_on_any_input(raw in ".{0,200}") {
            let _ = ProjectName::new(&raw);
        }
    }
}
