//! PEP 691 JSON: parsing upstream project pages and rendering ours.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::simple::{
    resolve_url, CoreMetadata, DistFile, Hashes, PageParseError, ProjectPage, ProjectStatus, Yanked,
};

#[derive(Deserialize)]
struct RawPage {
    meta: RawMeta,
    name: String,
    files: Vec<RawFile>,
    #[serde(default)]
    versions: Option<Vec<String>>,
    #[serde(rename = "project-status", default)]
    project_status: Option<RawStatus>,
}

/// PEP 792's `project-status` object.
#[derive(Deserialize, Serialize)]
struct RawStatus {
    status: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    reason: Option<String>,
}

#[derive(Deserialize, Serialize)]
struct RawMeta {
    #[serde(rename = "api-version")]
    api_version: String,
}

#[derive(Deserialize)]
struct RawFile {
    filename: String,
    url: String,
    #[serde(default)]
    hashes: BTreeMap<String, String>,
    #[serde(rename = "requires-python", default)]
    requires_python: Option<String>,
    #[serde(default)]
    yanked: Value,
    #[serde(rename = "core-metadata", default)]
    core_metadata: Value,
    #[serde(rename = "dist-info-metadata", default)]
    dist_info_metadata: Value,
    #[serde(default)]
    size: Option<u64>,
    #[serde(rename = "upload-time", default)]
    upload_time: Option<String>,
    #[serde(default)]
    provenance: Option<String>,
}

fn yanked_from(value: Value) -> Yanked {
    match value {
        Value::Bool(true) => Yanked::Yes { reason: None },
        Value::String(reason) if reason.is_empty() => Yanked::Yes { reason: None },
        Value::String(reason) => Yanked::Yes {
            reason: Some(reason),
        },
        _ => Yanked::No,
    }
}

fn core_metadata_from(value: Value) -> CoreMetadata {
    match value {
        Value::Bool(true) => CoreMetadata::Available {
            hashes: Hashes::default(),
        },
        Value::Object(map) => CoreMetadata::Available {
            hashes: map
                .into_iter()
                .filter_map(|(k, v)| {
                    v.as_str()
                        .map(|v| (k.to_ascii_lowercase(), v.to_ascii_lowercase()))
                })
                .collect(),
        },
        _ => CoreMetadata::Absent,
    }
}

/// Parses a PEP 691 project page fetched from `page_url`; file URLs are made absolute.
pub fn parse_project_page(body: &[u8], page_url: &url::Url) -> Result<ProjectPage, PageParseError> {
    let raw: RawPage = serde_json::from_slice(body)?;
    if !raw.meta.api_version.starts_with("1.") {
        return Err(PageParseError::UnsupportedVersion(raw.meta.api_version));
    }
    let mut files = Vec::with_capacity(raw.files.len());
    for f in raw.files {
        let mut url = resolve_url(page_url, &f.url)?;
        url.set_fragment(None);
        // PEP 714: `core-metadata` is the name; `dist-info-metadata` the older one.
        let core_metadata = match core_metadata_from(f.core_metadata) {
            CoreMetadata::Absent => core_metadata_from(f.dist_info_metadata),
            present => present,
        };
        files.push(DistFile {
            filename: f.filename,
            url: url.to_string(),
            hashes: f
                .hashes
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.to_ascii_lowercase()))
                .collect(),
            requires_python: f.requires_python.filter(|s| !s.is_empty()),
            yanked: yanked_from(f.yanked),
            core_metadata,
            size: f.size,
            upload_time: f.upload_time,
            provenance: f.provenance,
        });
    }
    Ok(ProjectPage {
        name: raw.name,
        files,
        versions: raw.versions,
        status: raw.project_status.map(|s| ProjectStatus {
            status: s.status,
            reason: s.reason.filter(|r| !r.is_empty()),
        }),
    })
}

#[derive(Serialize)]
struct OutPage<'a> {
    meta: RawMeta,
    name: &'a str,
    files: OutFiles<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    versions: Option<&'a [String]>,
    #[serde(rename = "project-status", skip_serializing_if = "Option::is_none")]
    project_status: Option<OutStatus<'a>>,
}

#[derive(Serialize)]
struct OutStatus<'a> {
    status: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

#[derive(Serialize)]
struct OutFile<'a> {
    filename: &'a str,
    url: &'a str,
    hashes: &'a Hashes,
    #[serde(rename = "requires-python", skip_serializing_if = "Option::is_none")]
    requires_python: Option<&'a str>,
    yanked: Flag<'a>,
    #[serde(rename = "core-metadata")]
    core_metadata: Metadata<'a>,
    #[serde(rename = "dist-info-metadata")]
    dist_info_metadata: Metadata<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
    #[serde(rename = "upload-time", skip_serializing_if = "Option::is_none")]
    upload_time: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    provenance: Option<&'a str>,
}

/// `false`, `true`, or a reason: PEP 592's `yanked`.
#[derive(Serialize, Clone, Copy)]
#[serde(untagged)]
enum Flag<'a> {
    Bool(bool),
    Reason(&'a str),
}

/// `false`, `true`, or the hashes of the metadata file (PEP 714).
#[derive(Serialize, Clone, Copy)]
#[serde(untagged)]
enum Metadata<'a> {
    Bool(bool),
    Hashes(&'a Hashes),
}

fn core_metadata_value(cm: &CoreMetadata) -> Metadata<'_> {
    match cm {
        CoreMetadata::Absent => Metadata::Bool(false),
        CoreMetadata::Available { hashes } if hashes.is_empty() => Metadata::Bool(true),
        CoreMetadata::Available { hashes } => Metadata::Hashes(hashes),
    }
}

/// The files of a page, serialised one by one as they are borrowed: a page
/// of 300,000 files once built 2.4 million JSON values (283 MB) first.
struct OutFiles<'a> {
    files: &'a [DistFile],
    v11: bool,
}

impl Serialize for OutFiles<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let v11 = self.v11;
        serializer.collect_seq(self.files.iter().map(|f| {
            let cm = core_metadata_value(&f.core_metadata);
            OutFile {
                filename: &f.filename,
                url: &f.url,
                hashes: &f.hashes,
                requires_python: f.requires_python.as_deref(),
                yanked: match &f.yanked {
                    Yanked::No => Flag::Bool(false),
                    Yanked::Yes { reason: None } => Flag::Bool(true),
                    Yanked::Yes { reason: Some(r) } => Flag::Reason(r),
                },
                dist_info_metadata: cm,
                core_metadata: cm,
                size: if v11 { f.size } else { None },
                upload_time: if v11 { f.upload_time.as_deref() } else { None },
                provenance: f.provenance.as_deref(),
            }
        }))
    }
}

/// Renders a PEP 691 project page. API version 1.1 (PEP 700) is declared only
/// when every file has a size, since 1.1 makes `size` mandatory; 1.4 (PEP
/// 792) when the page also carries a project status.
pub fn render_project_page(page: &ProjectPage) -> Vec<u8> {
    let v11 = page.files.iter().all(|f| f.size.is_some());
    let api_version = match (v11, page.status.is_some()) {
        (true, true) => "1.4",
        (true, false) => "1.1",
        (false, _) => "1.0",
    };
    let out = OutPage {
        meta: RawMeta {
            api_version: api_version.to_string(),
        },
        project_status: page.status.as_ref().map(|s| OutStatus {
            status: &s.status,
            reason: s.reason.as_deref(),
        }),
        name: &page.name,
        files: OutFiles {
            files: &page.files,
            v11,
        },
        versions: if v11 { page.versions.as_deref() } else { None },
    };
    // Serialising plain structs of strings, numbers and JSON values cannot fail.
    serde_json::to_vec(&out).unwrap_or_else(|_| unreachable!("plain data serialises"))
}

/// Renders the PEP 691 project list.
pub fn render_project_list(names: &[String]) -> Vec<u8> {
    let projects: Vec<Value> = names
        .iter()
        .map(|n| serde_json::json!({ "name": n }))
        .collect();
    let out = serde_json::json!({ "meta": { "api-version": "1.0" }, "projects": projects });
    out.to_string().into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simple::tests_support::sample_page;
    use proptest::prelude::*;

    fn base() -> url::Url {
        url::Url::parse("https://index.invalid/simple/demo/").unwrap()
    }

    #[test]
    fn parses_every_client_field() {
        let body = br#"{"meta":{"api-version":"1.1"},"name":"Demo","versions":["1.0","2.0"],
          "files":[
            {"filename":"demo-1.0.tar.gz","url":"../../files/demo-1.0.tar.gz#sha256=aa","hashes":{"SHA256":"AB"},
             "requires-python":">=3.8,<4","yanked":"broken build","dist-info-metadata":{"sha256":"cd"},
             "size":10,"upload-time":"2024-01-01T00:00:00Z","provenance":"https://index.invalid/prov"},
            {"filename":"demo-2.0-py3-none-any.whl","url":"https://files.invalid/demo-2.0-py3-none-any.whl",
             "hashes":{"sha256":"ef"},"yanked":false,"core-metadata":true,"size":20}
          ]}"#;
        let page = parse_project_page(body, &base()).unwrap();
        assert_eq!(page.name, "Demo");
        assert_eq!(
            page.versions.as_deref(),
            Some(&["1.0".to_string(), "2.0".to_string()][..])
        );
        let a = &page.files[0];
        assert_eq!(a.url, "https://index.invalid/files/demo-1.0.tar.gz");
        assert_eq!(a.hashes.get("sha256").map(String::as_str), Some("ab"));
        assert_eq!(a.requires_python.as_deref(), Some(">=3.8,<4"));
        assert_eq!(
            a.yanked,
            Yanked::Yes {
                reason: Some("broken build".into())
            }
        );
        assert_eq!(
            a.core_metadata,
            CoreMetadata::Available {
                hashes: [("sha256".into(), "cd".into())].into()
            }
        );
        assert_eq!(a.size, Some(10));
        assert_eq!(a.provenance.as_deref(), Some("https://index.invalid/prov"));
        let b = &page.files[1];
        assert_eq!(b.yanked, Yanked::No);
        assert_eq!(
            b.core_metadata,
            CoreMetadata::Available {
                hashes: Hashes::default()
            }
        );
    }

    #[test]
    fn rejects_unknown_major_version() {
        let body = br#"{"meta":{"api-version":"2.0"},"name":"x","files":[]}"#;
        assert!(matches!(
            parse_project_page(body, &base()),
            Err(PageParseError::UnsupportedVersion(_))
        ));
    }

    #[test]
    fn renders_both_metadata_keys_and_v11_only_with_sizes() {
        let page = sample_page(true);
        let v: Value = serde_json::from_slice(&render_project_page(&page)).unwrap();
        assert_eq!(v["meta"]["api-version"], "1.1");
        assert_eq!(
            v["files"][0]["core-metadata"],
            v["files"][0]["dist-info-metadata"]
        );
        assert!(v["versions"].is_array());
        let mut no_sizes = page.clone();
        no_sizes.files[0].size = None;
        let v: Value = serde_json::from_slice(&render_project_page(&no_sizes)).unwrap();
        assert_eq!(v["meta"]["api-version"], "1.0");
        assert!(v.get("versions").is_none());
    }

    proptest! {
        #[test]
        fn render_parse_round_trip(page in crate::simple::tests_support::arb_page()) {
            let body = render_project_page(&page);
            let parsed = parse_project_page(&body, &base()).unwrap();
            prop_assert_eq!(parsed, page);
        }
    }
}
