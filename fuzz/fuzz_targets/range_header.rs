//! `Range` headers from clients: never a panic, and an answered range lies
//! inside the file.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (u64, &str)| {
    let (size, value) = input;
    if let Ok(Some((start, len))) = peerpi_core::range::byte_range(value, size) {
        assert!(len > 0 && start.checked_add(len).is_some_and(|end| end <= size));
    }
});
