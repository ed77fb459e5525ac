//! Distribution filenames and project names from pages and request paths.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let _ = peerpi_core::DistFilename::parse(text);
    let _ = peerpi_core::filename::check_safe_filename(text);
    if let Ok(name) = peerpi_core::ProjectName::new(text) {
        // Normalising is idempotent.
        let again =
            peerpi_core::ProjectName::new(name.as_str()).expect("a normalised name is valid");
        assert_eq!(again.as_str(), name.as_str());
    }
});
