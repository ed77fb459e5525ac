//! Which delegated roles are trusted for a target path: `paths` patterns
//! (shell-style, matched segment by segment so that a wildcard never crosses
//! a `/`) and `path_hash_prefixes` (prefixes of the hex SHA-256 of the path).
//! Both match the path exactly as signed, never a normalised form, like the
//! reference implementation.

use std::collections::HashMap;

use globset::GlobBuilder;
use sha2::{Digest, Sha256};
use tough::schema::{DelegatedRole, PathSet};

use crate::schema::Delegations;

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

/// The roles one targets role delegates to, indexed so that a lookup does
/// not test each of 16,384 bins: hash-prefix delegations by prefix (one map
/// per prefix length), pattern delegations in a list. Built once per
/// verified version of the delegating role.
#[derive(Debug, Default)]
pub struct DelegationIndex {
    by_prefix: HashMap<usize, HashMap<String, Vec<usize>>>,
    by_pattern: Vec<usize>,
}

impl DelegationIndex {
    pub fn new(delegations: &Delegations) -> Self {
        let mut index = DelegationIndex::default();
        for (i, role) in delegations.roles.iter().enumerate() {
            match &role.paths {
                PathSet::Paths(_) => index.by_pattern.push(i),
                PathSet::PathHashPrefixes(prefixes) => {
                    for prefix in prefixes {
                        let value = prefix.value();
                        index
                            .by_prefix
                            .entry(value.len())
                            .or_default()
                            .entry(value.to_string())
                            .or_default()
                            .push(i);
                    }
                }
            }
        }
        index
    }

    /// Positions, in listed order, of the roles in `roles` (the list this
    /// index was built from) trusted for `target`.
    pub fn matching(&self, roles: &[DelegatedRole], target: &str) -> Vec<usize> {
        let mut hits = Vec::new();
        if !self.by_prefix.is_empty() {
            let digest = path_digest(target);
            for (&len, prefixes) in &self.by_prefix {
                if let Some(found) = digest.get(..len).and_then(|p| prefixes.get(p)) {
                    hits.extend_from_slice(found);
                }
            }
        }
        hits.extend(
            self.by_pattern
                .iter()
                .copied()
                .filter(|&i| roles.get(i).is_some_and(|role| delegates(role, target))),
        );
        hits.sort_unstable();
        hits.dedup();
        hits
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
    fn the_index_finds_the_same_roles_in_the_same_order_as_testing_each() {
        let roles: serde_json::Value = serde_json::json!({
            "keys": {},
            "roles": [
                { "name": "py", "keyids": [], "threshold": 1, "terminating": false, "paths": ["*.py"] },
                { "name": "bin-a", "keyids": [], "threshold": 1, "terminating": false,
                  "path_hash_prefixes": ["0", "1", "2", "3", "4", "5", "6", "7"] },
                { "name": "all", "keyids": [], "threshold": 1, "terminating": false, "paths": ["*"] },
                { "name": "bin-b", "keyids": [], "threshold": 1, "terminating": false,
                  "path_hash_prefixes": ["8", "9", "a", "b", "c", "d", "e", "f"] },
                { "name": "two-digit", "keyids": [], "threshold": 1, "terminating": false,
                  "path_hash_prefixes": ["00", "ff", "5e"] }
            ]
        });
        let delegations: Delegations = serde_json::from_value(roles).unwrap();
        let index = DelegationIndex::new(&delegations);
        for n in 0..500 {
            for target in [
                format!("pkg-{n}.py"),
                format!("dir/pkg-{n}.whl"),
                format!("t{n}"),
            ] {
                let expected: Vec<usize> = delegations
                    .roles
                    .iter()
                    .enumerate()
                    .filter(|(_, role)| delegates(role, &target))
                    .map(|(i, _)| i)
                    .collect();
                assert_eq!(
                    index.matching(&delegations.roles, &target),
                    expected,
                    "{target}"
                );
            }
        }
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
