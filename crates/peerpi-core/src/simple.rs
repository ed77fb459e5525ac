//! The Simple Repository API model shared by the HTML and JSON forms: one
//! project page with its files and every per-file field clients use.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Sha256Digest;

/// One project's page: its files and, where known, its versions (PEP 700).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectPage {
    /// The project name as the index spells it in the page.
    pub name: String,
    pub files: Vec<DistFile>,
    pub versions: Option<Vec<String>>,
    /// PEP 792 project status, when the index gives one.
    #[serde(default)]
    pub status: Option<ProjectStatus>,
}

/// A PEP 792 project status marker: `active`, `archived`, `quarantined` or
/// `deprecated` as the index says it (an unknown one passes through).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectStatus {
    pub status: String,
    pub reason: Option<String>,
}

impl ProjectStatus {
    /// A quarantined project must not be installed: the index lists no
    /// files for it, and nothing cached may be offered instead.
    pub fn is_quarantined(&self) -> bool {
        self.status.eq_ignore_ascii_case("quarantined")
    }
}

impl ProjectPage {
    pub fn is_quarantined(&self) -> bool {
        self.status
            .as_ref()
            .is_some_and(ProjectStatus::is_quarantined)
    }
}

/// One distribution file (wheel or sdist) listed on a project page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DistFile {
    pub filename: String,
    /// Without fragment; absolute once parsed from upstream.
    pub url: String,
    /// Hash name (lowercase) to hex digest.
    pub hashes: Hashes,
    pub requires_python: Option<String>,
    pub yanked: Yanked,
    pub core_metadata: CoreMetadata,
    /// PEP 700.
    pub size: Option<u64>,
    /// PEP 700, ISO 8601 as the index gives it.
    pub upload_time: Option<String>,
    /// PEP 740 provenance URL.
    pub provenance: Option<String>,
}

/// PEP 592 yanking.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Yanked {
    #[default]
    No,
    Yes {
        reason: Option<String>,
    },
}

/// PEP 658 / 714 core metadata availability.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum CoreMetadata {
    #[default]
    Absent,
    /// Available; the hashes of the metadata file itself (may be empty).
    Available { hashes: Hashes },
}

/// Hash name (lowercase) to hex digest, ordered by name. A sorted `Vec`,
/// not a `BTreeMap`: a page lists one or two hashes per file, and a
/// `BTreeMap` node holds room for eleven (about 560 bytes a file, 168 MB
/// for a page of 300,000 files, in every copy of the page).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Hashes(Vec<(String, String)>);

impl Hashes {
    pub fn get(&self, name: &str) -> Option<&String> {
        self.get_key_value(name).map(|(_, v)| v)
    }

    pub fn get_key_value(&self, name: &str) -> Option<(&String, &String)> {
        self.0
            .binary_search_by(|(k, _)| k.as_str().cmp(name))
            .ok()
            .map(|i| (&self.0[i].0, &self.0[i].1))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }
}

impl FromIterator<(String, String)> for Hashes {
    /// Sorted by name; a name given twice keeps its last value.
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Self {
        let map: BTreeMap<String, String> = iter.into_iter().collect();
        Hashes(map.into_iter().collect())
    }
}

impl<const N: usize> From<[(String, String); N]> for Hashes {
    fn from(pairs: [(String, String); N]) -> Self {
        pairs.into_iter().collect()
    }
}

impl Serialize for Hashes {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Hashes {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        BTreeMap::<String, String>::deserialize(deserializer).map(|m| m.into_iter().collect())
    }
}

fn sha256_of(hashes: &Hashes) -> Option<Sha256Digest> {
    hashes
        .get("sha256")
        .and_then(|h| Sha256Digest::from_hex(h).ok())
}

impl DistFile {
    pub fn sha256(&self) -> Option<Sha256Digest> {
        sha256_of(&self.hashes)
    }
}

impl CoreMetadata {
    pub fn sha256(&self) -> Option<Sha256Digest> {
        match self {
            CoreMetadata::Absent => None,
            CoreMetadata::Available { hashes } => sha256_of(hashes),
        }
    }
}

/// Errors from parsing a Simple API page.
#[derive(Debug, thiserror::Error)]
pub enum PageParseError {
    #[error("invalid JSON page: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unsupported Simple API version {0:?} (only 1.x is understood)")]
    UnsupportedVersion(String),
    #[error("invalid HTML page: {0}")]
    Html(String),
    #[error("bad URL {url:?} in page: {source}")]
    Url {
        url: String,
        source: url::ParseError,
    },
}

/// Resolves a possibly relative `href` against the page URL.
pub(crate) fn resolve_url(base: &url::Url, href: &str) -> Result<url::Url, PageParseError> {
    base.join(href).map_err(|source| PageParseError::Url {
        url: href.to_string(),
        source,
    })
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;
    use proptest::prelude::*;

    /// A page with every field set; `with_sizes` controls the PEP 700 fields.
    pub fn sample_page(with_sizes: bool) -> ProjectPage {
        ProjectPage {
            name: "demo".into(),
            files: vec![DistFile {
                filename: "demo-1.0-py3-none-any.whl".into(),
                url: "https://files.invalid/demo-1.0-py3-none-any.whl".into(),
                hashes: [("sha256".to_string(), "ab".repeat(32))].into(),
                requires_python: Some(">=3.8,<4 & \"x\"".into()),
                yanked: Yanked::Yes {
                    reason: Some("bad <release> & \"quotes\"".into()),
                },
                core_metadata: CoreMetadata::Available {
                    hashes: [("sha256".to_string(), "cd".repeat(32))].into(),
                },
                size: with_sizes.then_some(42),
                upload_time: with_sizes.then(|| "2024-01-01T00:00:00Z".into()),
                provenance: None,
            }],
            versions: with_sizes.then(|| vec!["1.0".into()]),
            status: None,
        }
    }

    fn arb_hashes() -> impl Strategy<Value = Hashes> {
        proptest::collection::btree_map("sha256|md5|blake2b_256", "[0-9a-f]{8,64}", 0..3)
            .prop_map(|m| m.into_iter().collect())
    }

    pub fn arb_file() -> impl Strategy<Value = DistFile> {
        (
            "[a-z][a-z0-9_]{0,8}-[0-9]\\.[0-9](\\.tar\\.gz|-py3-none-any\\.whl)",
            arb_hashes(),
            proptest::option::of("[<>=!~,. 0-9a-z&\"']{1,20}"),
            prop_oneof![
                Just(Yanked::No),
                Just(Yanked::Yes { reason: None }),
                "[ -~]{1,30}".prop_map(|r| Yanked::Yes { reason: Some(r) }),
            ],
            prop_oneof![
                Just(CoreMetadata::Absent),
                arb_hashes().prop_map(|hashes| CoreMetadata::Available { hashes }),
            ],
            0u64..1_000_000_000,
            proptest::option::of("[0-9]{4}-[0-9]{2}-[0-9]{2}T00:00:00Z"),
            proptest::option::of("[a-z]{1,8}".prop_map(|p| format!("https://prov.invalid/{p}"))),
        )
            .prop_map(
                |(
                    filename,
                    hashes,
                    requires_python,
                    yanked,
                    core_metadata,
                    size,
                    upload_time,
                    provenance,
                )| DistFile {
                    url: format!("https://files.invalid/x/{filename}"),
                    filename,
                    hashes,
                    requires_python: requires_python.filter(|s| !s.trim().is_empty()),
                    yanked,
                    core_metadata,
                    size: Some(size),
                    upload_time,
                    provenance,
                },
            )
    }

    pub fn arb_page() -> impl Strategy<Value = ProjectPage> {
        (
            "[A-Za-z][A-Za-z0-9._-]{0,10}[A-Za-z0-9]",
            proptest::collection::vec(arb_file(), 0..6),
            proptest::collection::vec("[0-9]\\.[0-9]", 0..4),
            proptest::option::of((
                "active|archived|quarantined|deprecated",
                proptest::option::of("[a-z &<>\"]{1,20}"),
            )),
        )
            .prop_map(|(name, files, versions, status)| ProjectPage {
                name,
                files,
                versions: Some(versions),
                status: status.map(|(status, reason)| ProjectStatus { status, reason }),
            })
    }
}
