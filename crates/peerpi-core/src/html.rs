//! PEP 503 HTML: parsing upstream project pages and rendering ours.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use html_escape::{encode_double_quoted_attribute, encode_text};

use crate::simple::{
    resolve_url, CoreMetadata, DistFile, Hashes, PageParseError, ProjectPage, ProjectStatus, Yanked,
};

/// An `<a>` (or `<base>`) start tag's attributes, entity-decoded by the tokenizer.
type Attributes = BTreeMap<String, String>;

fn attributes_of(tag: &html5gum::StartTag<()>) -> Attributes {
    tag.attributes
        .iter()
        .map(|(k, v)| {
            (
                String::from_utf8_lossy(k).to_ascii_lowercase(),
                String::from_utf8_lossy(&v.value).into_owned(),
            )
        })
        .collect()
}

/// `sha256=abc` (or the PEP 658 "true") into a hash map.
fn hashes_from_fragment(fragment: &str) -> Hashes {
    fragment
        .split_once('=')
        .map(|(k, v)| [(k.to_ascii_lowercase(), v.to_ascii_lowercase())].into())
        .unwrap_or_default()
}

fn core_metadata_from(value: Option<&String>) -> CoreMetadata {
    match value {
        None => CoreMetadata::Absent,
        Some(v) if v.eq_ignore_ascii_case("false") => CoreMetadata::Absent,
        Some(v) => CoreMetadata::Available {
            hashes: hashes_from_fragment(v),
        },
    }
}

fn dist_file(
    base: &url::Url,
    attrs: &Attributes,
    text: &str,
) -> Result<Option<DistFile>, PageParseError> {
    let Some(href) = attrs.get("href") else {
        return Ok(None);
    };
    let mut url = resolve_url(base, href)?;
    let hashes = url.fragment().map(hashes_from_fragment).unwrap_or_default();
    url.set_fragment(None);
    let core_metadata = match core_metadata_from(attrs.get("data-core-metadata")) {
        CoreMetadata::Absent => core_metadata_from(attrs.get("data-dist-info-metadata")),
        present => present,
    };
    Ok(Some(DistFile {
        filename: text.trim().to_string(),
        url: url.to_string(),
        hashes,
        requires_python: attrs
            .get("data-requires-python")
            .filter(|s| !s.is_empty())
            .cloned(),
        // A valueless attribute and an empty one both mean "yanked, no reason".
        yanked: match attrs.get("data-yanked") {
            None => Yanked::No,
            Some(reason) => Yanked::Yes {
                reason: Some(reason.clone()).filter(|r| !r.is_empty()),
            },
        },
        core_metadata,
        size: None,
        upload_time: None,
        provenance: attrs.get("data-provenance").cloned(),
    }))
}

/// Parses a PEP 503 project page fetched from `page_url`. Links resolve
/// against a `<base href>` if the page has one; hashes come from URL fragments.
pub fn parse_project_page(
    body: &[u8],
    page_url: &url::Url,
    name: &str,
) -> Result<ProjectPage, PageParseError> {
    let text = String::from_utf8_lossy(body);
    let mut base = page_url.clone();
    let mut files = Vec::new();
    let (mut status, mut status_reason) = (None, None);
    // The anchor being read: its attributes and the text seen so far.
    let mut open_anchor: Option<(Attributes, String)> = None;
    for token in html5gum::Tokenizer::new(text.as_ref()).filter_map(Result::ok) {
        match token {
            html5gum::Token::StartTag(tag) => match tag.name.as_slice() {
                // PEP 792 project status markers.
                b"meta" => {
                    let attrs = attributes_of(&tag);
                    let content = attrs.get("content").cloned();
                    match attrs.get("name").map(String::as_str) {
                        Some("pypi:project-status") => status = content,
                        Some("pypi:project-status-reason") => status_reason = content,
                        _ => {}
                    }
                }
                b"base" => {
                    if let Some(href) = attributes_of(&tag).get("href") {
                        base = resolve_url(page_url, href)?;
                    }
                }
                b"a" => {
                    if let Some((attrs, text)) = open_anchor.take() {
                        files.extend(dist_file(&base, &attrs, &text)?);
                    }
                    open_anchor = Some((attributes_of(&tag), String::new()));
                }
                _ => {}
            },
            html5gum::Token::String(s) => {
                let s = &s.value;
                if let Some((_, text)) = &mut open_anchor {
                    text.push_str(&String::from_utf8_lossy(s));
                }
            }
            html5gum::Token::EndTag(tag) if tag.name.as_slice() == b"a" => {
                if let Some((attrs, text)) = open_anchor.take() {
                    files.extend(dist_file(&base, &attrs, &text)?);
                }
            }
            _ => {}
        }
    }
    if let Some((attrs, text)) = open_anchor.take() {
        files.extend(dist_file(&base, &attrs, &text)?);
    }
    Ok(ProjectPage {
        name: name.to_string(),
        files,
        versions: None,
        status: status.map(|status| ProjectStatus {
            status,
            reason: status_reason.filter(|r| !r.is_empty()),
        }),
    })
}

fn metadata_attr_value(hashes: &Hashes) -> String {
    // Prefer sha256 (PEP 658 lets the index pick one hash to name).
    hashes
        .get("sha256")
        .map(|v| format!("sha256={v}"))
        .or_else(|| hashes.iter().next().map(|(k, v)| format!("{k}={v}")))
        .unwrap_or_else(|| "true".into())
}

/// Renders a PEP 503 project page with both PEP 714 metadata attribute names.
pub fn render_project_page(page: &ProjectPage) -> Vec<u8> {
    let name = encode_text(&page.name);
    let mut out = String::with_capacity(256 + page.files.len() * 300);
    let version = if page.status.is_some() { "1.4" } else { "1.0" };
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html>\n<head>\n<meta name=\"pypi:repository-version\" content=\"{version}\">\n"
    );
    if let Some(status) = &page.status {
        let _ = writeln!(
            out,
            "<meta name=\"pypi:project-status\" content=\"{}\">",
            encode_double_quoted_attribute(&status.status)
        );
        if let Some(reason) = &status.reason {
            let _ = writeln!(
                out,
                "<meta name=\"pypi:project-status-reason\" content=\"{}\">",
                encode_double_quoted_attribute(reason)
            );
        }
    }
    let _ = write!(
        out,
        "<title>Links for {name}</title>\n</head>\n<body>\n<h1>Links for {name}</h1>\n"
    );
    for f in &page.files {
        let mut href = f.url.clone();
        if let Some((k, v)) = f
            .hashes
            .get_key_value("sha256")
            .or_else(|| f.hashes.iter().next())
        {
            let _ = write!(href, "#{k}={v}");
        }
        let _ = write!(out, "<a href=\"{}\"", encode_double_quoted_attribute(&href));
        if let Some(rp) = &f.requires_python {
            let _ = write!(
                out,
                " data-requires-python=\"{}\"",
                encode_double_quoted_attribute(rp)
            );
        }
        if let Yanked::Yes { reason } = &f.yanked {
            let _ = write!(
                out,
                " data-yanked=\"{}\"",
                encode_double_quoted_attribute(reason.as_deref().unwrap_or(""))
            );
        }
        if let CoreMetadata::Available { hashes } = &f.core_metadata {
            let v = encode_double_quoted_attribute(&metadata_attr_value(hashes)).into_owned();
            let _ = write!(
                out,
                " data-core-metadata=\"{v}\" data-dist-info-metadata=\"{v}\""
            );
        }
        if let Some(p) = &f.provenance {
            let _ = write!(
                out,
                " data-provenance=\"{}\"",
                encode_double_quoted_attribute(p)
            );
        }
        let _ = writeln!(out, ">{}</a><br/>", encode_text(&f.filename));
    }
    out.push_str("</body>\n</html>\n");
    out.into_bytes()
}

/// Renders the PEP 503 project list; `names` are normalised project names.
pub fn render_project_list(names: &[String]) -> Vec<u8> {
    let mut out = String::from(
        "<!DOCTYPE html>\n<html>\n<head>\n<meta name=\"pypi:repository-version\" content=\"1.0\">\n<title>Simple index</title>\n</head>\n<body>\n",
    );
    for n in names {
        let _ = writeln!(
            out,
            "<a href=\"{}/\">{}</a><br/>",
            encode_double_quoted_attribute(n),
            encode_text(n)
        );
    }
    out.push_str("</body>\n</html>\n");
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simple::tests_support::{arb_page, sample_page};
    use proptest::prelude::*;

    fn base() -> url::Url {
        url::Url::parse("https://index.invalid/simple/demo/").unwrap()
    }

    /// What survives HTML: no PEP 700 fields, and only one hash per link.
    fn html_view(page: &ProjectPage) -> ProjectPage {
        let mut p = page.clone();
        p.versions = None;
        for f in &mut p.files {
            f.size = None;
            f.upload_time = None;
            let first = f
                .hashes
                .get_key_value("sha256")
                .or_else(|| f.hashes.iter().next());
            f.hashes = first
                .map(|(k, v)| [(k.clone(), v.clone())].into())
                .unwrap_or_default();
            if let CoreMetadata::Available { hashes } = &mut f.core_metadata {
                let first = hashes
                    .get_key_value("sha256")
                    .or_else(|| hashes.iter().next());
                *hashes = first
                    .map(|(k, v)| [(k.clone(), v.clone())].into())
                    .unwrap_or_default();
            }
        }
        p
    }

    #[test]
    fn escapes_requires_python_and_yank_reasons() {
        let html = String::from_utf8(render_project_page(&sample_page(false))).unwrap();
        assert!(
            html.contains("data-requires-python=\"&gt;=3.8,&lt;4 &amp; &quot;x&quot;\""),
            "{html}"
        );
        assert!(
            html.contains("data-yanked=\"bad &lt;release&gt; &amp; &quot;quotes&quot;\""),
            "{html}"
        );
        assert!(html.contains(&format!(
            "data-core-metadata=\"sha256={}\"",
            "cd".repeat(32)
        )));
        assert!(html.contains(&format!(
            "data-dist-info-metadata=\"sha256={}\"",
            "cd".repeat(32)
        )));
    }

    #[test]
    fn parses_legacy_pages() {
        let body = br#"<html><head><base href="https://mirror.invalid/pkgs/"></head><body>
            <a href="a-1.0.tar.gz#SHA256=ABCD" data-requires-python="&gt;=3.6">a-1.0.tar.gz</a>
            <a href="/b/a-2.0-py3-none-any.whl#sha256=ef" data-yanked data-dist-info-metadata="true">a-2.0-py3-none-any.whl</a>
            <a>no href</a></body></html>"#;
        let page = parse_project_page(body, &base(), "a").unwrap();
        assert_eq!(page.files.len(), 2);
        assert_eq!(
            page.files[0].url,
            "https://mirror.invalid/pkgs/a-1.0.tar.gz"
        );
        assert_eq!(
            page.files[0].hashes.get("sha256").map(String::as_str),
            Some("abcd")
        );
        assert_eq!(page.files[0].requires_python.as_deref(), Some(">=3.6"));
        assert_eq!(
            page.files[1].url,
            "https://mirror.invalid/b/a-2.0-py3-none-any.whl"
        );
        assert_eq!(page.files[1].yanked, Yanked::Yes { reason: None });
        assert_eq!(
            page.files[1].core_metadata,
            CoreMetadata::Available {
                hashes: Hashes::default()
            }
        );
    }

    proptest! {
        #[test]
        fn render_parse_round_trip(page in arb_page()) {
            let body = render_project_page(&page);
            let parsed = parse_project_page(&body, &base(), &page.name).unwrap();
            prop_assert_eq!(parsed, html_view(&page));
        }

        #[test]
        fn never_panics_on_garbage(body in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = parse_project_page(&body, &base(), "x");
        }
    }
}
