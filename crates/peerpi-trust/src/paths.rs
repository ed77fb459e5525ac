//! Which delegated roles are trusted for a target path: `paths` patterns
//! (shell-style, matched segment by segment so that a wildcard never crosses
//! a `/`) and `path_hash_prefixes` (prefixes of the hex SHA-256 of the path).
//! Both match the path exactly as signed, never a normalised form, like the
//! reference implementation.

use globset::GlobBuilder;
use sha2::{Digest, Sha256};
use tough::schema::{DelegatedRole, PathSet};

/// The lowercase hex SHA-256 of a target path, what hash prefixes match.
pub fn path_digest(target: &str) -> String {
    hex::encode(Sha256::digest(target.as_bytes()))
}

/// Whether `role` is trusted for `target`.
pub fn delegates(role: &DelegatedRole, target: &str) -> bool {
    match &role.paths {
        PathSet::Paths(patterns) => patterns
            .iter()
            .any(|pattern| pattern_matches(pattern.value(), target)),
        PathSet::PathHashPrefixes(prefixes) => {
            let digest = path_digest(target);
            prefixes
                .iter()
                .any(|prefix| digest.starts_with(prefix.value()))
        }
    }
}

/// `pattern` and `target` have the same number of `/`-separated segments
/// and each target segment matches its pattern segment (`*`, `?`, `[...]`).
fn pattern_matches(pattern: &str, target: &str) -> bool {
    let patterns = pattern.split('/');
    let segments = target.split('/');
    if patterns.clone().count() != segments.clone().count() {
        return false;
    }
    patterns.zip(segments).all(|(pattern, segment)| {
        GlobBuilder::new(pattern)
            .literal_separator(true)
            .backslash_escape(false)
            .build()
            .is_ok_and(|glob| glob.compile_matcher().is_match(segment))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_stay_within_a_segment() {
        assert!(pattern_matches("targets/*.tgz", "targets/foo.tgz"));
        assert!(!pattern_matches("targets/*.tgz", "targets/foo.txt"));
        assert!(pattern_matches("foo-version-?.tgz", "foo-version-2.tgz"));
        assert!(!pattern_matches(
            "foo-version-?.tgz",
            "foo-version-alpha.tgz"
        ));
        assert!(pattern_matches("*.tgz", "foo.tgz"));
        assert!(!pattern_matches("*.tgz", "targets/foo.tgz"));
        assert!(!pattern_matches("*", "a/b"));
        assert!(pattern_matches("*/*", "a/b"));
        assert!(pattern_matches("a/[bc]/d", "a/c/d"));
        assert!(!pattern_matches("a/[!bc]/d", "a/c/d"));
    }

    #[test]
    fn hash_prefixes_match_the_digest_of_the_path_as_signed() {
        // The digest of the raw path, not of a normalised one.
        assert_ne!(path_digest("a/../b"), path_digest("b"));
        assert_eq!(
            path_digest(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
