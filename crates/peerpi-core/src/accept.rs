//! Content negotiation for Simple API pages (PEP 691): the `Accept` header with
//! q-values as pip and uv send it, overridden by a `?format=` query parameter.

/// The representation chosen for a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PageFormat {
    /// `application/vnd.pypi.simple.v1+json`
    Json,
    /// `application/vnd.pypi.simple.v1+html`
    HtmlV1,
    /// `text/html`, the PEP 503 legacy type.
    TextHtml,
}

pub const JSON_V1: &str = "application/vnd.pypi.simple.v1+json";
pub const HTML_V1: &str = "application/vnd.pypi.simple.v1+html";
pub const JSON_LATEST: &str = "application/vnd.pypi.simple.latest+json";
pub const HTML_LATEST: &str = "application/vnd.pypi.simple.latest+html";

impl PageFormat {
    pub fn content_type(self) -> &'static str {
        match self {
            PageFormat::Json => JSON_V1,
            PageFormat::HtmlV1 => HTML_V1,
            PageFormat::TextHtml => "text/html; charset=utf-8",
        }
    }

    pub fn is_json(self) -> bool {
        self == PageFormat::Json
    }

    fn from_media_type(media: &str) -> Option<Self> {
        match media.to_ascii_lowercase().as_str() {
            JSON_V1 | JSON_LATEST | "json" => Some(PageFormat::Json),
            HTML_V1 | HTML_LATEST => Some(PageFormat::HtmlV1),
            "text/html" | "html" => Some(PageFormat::TextHtml),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("none of the requested types is served: {requested}; this index serves {JSON_V1}, {HTML_V1} and text/html")]
pub struct NotAcceptable {
    pub requested: String,
}

/// Picks the page format. Highest q wins; ties go to the order of the client's
/// list; wildcards match text/html (the PEP 503 default).
pub fn negotiate(accept: Option<&str>, format: Option<&str>) -> Result<PageFormat, NotAcceptable> {
    if let Some(f) = format {
        return PageFormat::from_media_type(f.trim()).ok_or_else(|| NotAcceptable {
            requested: format!("format={f}"),
        });
    }
    let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
        return Ok(PageFormat::TextHtml);
    };
    let mut best: Option<(f32, PageFormat)> = None;
    for item in accept.split(',') {
        let mut parts = item.split(';');
        let media = parts.next().unwrap_or("").trim();
        let mut q = 1.0f32;
        for param in parts {
            if let Some((k, v)) = param.split_once('=') {
                if k.trim().eq_ignore_ascii_case("q") {
                    q = v.trim().parse().unwrap_or(0.0);
                }
            }
        }
        if q.is_nan() || q <= 0.0 {
            continue;
        }
        let format = match media {
            "*/*" | "text/*" => Some(PageFormat::TextHtml),
            other => PageFormat::from_media_type(other),
        };
        if let Some(format) = format {
            if best.is_none_or(|(best_q, _)| q > best_q) {
                best = Some((q, format));
            }
        }
    }
    best.map(|(_, f)| f).ok_or_else(|| NotAcceptable {
        requested: accept.chars().take(200).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn pip_and_uv_headers_choose_json() {
        let pip = "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01";
        assert_eq!(negotiate(Some(pip), None), Ok(PageFormat::Json));
        let uv = "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.01";
        assert_eq!(negotiate(Some(uv), None), Ok(PageFormat::Json));
    }

    #[test]
    fn q_values_decide() {
        let h = "application/vnd.pypi.simple.v1+json;q=0.5, text/html;q=0.9";
        assert_eq!(negotiate(Some(h), None), Ok(PageFormat::TextHtml));
        let h = "application/vnd.pypi.simple.v1+json;q=0, application/vnd.pypi.simple.latest+html";
        assert_eq!(negotiate(Some(h), None), Ok(PageFormat::HtmlV1));
    }

    #[test]
    fn defaults_and_overrides() {
        assert_eq!(negotiate(None, None), Ok(PageFormat::TextHtml));
        assert_eq!(negotiate(Some("*/*"), None), Ok(PageFormat::TextHtml));
        assert_eq!(
            negotiate(Some("text/html"), Some(JSON_V1)),
            Ok(PageFormat::Json)
        );
        assert!(negotiate(Some("image/png"), None).is_err());
        assert!(negotiate(None, Some("xml")).is_err());
    }

    proptest! {
        #[test]
        fn never_panics(h in ".{0,100}") {
            let _ = negotiate(Some(&h), None);
        }
    }
}
