//! The `Range` request header (RFC 9110 §14.2) as a file server answers it:
//! one satisfiable byte range, or the whole file. The header is size-checked
//! before parsing: validating thousands of ranges costs CPU for nothing
//! (clients ask for one: resuming, or reading a wheel's tail).

/// Ranges one request may ask for.
pub const MAX_RANGES: usize = 8;
/// Longest `Range` header parsed at all.
pub const MAX_RANGE_HEADER_BYTES: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    #[error("Range header asks for too much (at most {MAX_RANGES} ranges in {MAX_RANGE_HEADER_BYTES} bytes)")]
    TooMuch,
    #[error("malformed Range header {0:?}")]
    Malformed(String),
    #[error("range {value:?} is not satisfiable for a file of {size} bytes")]
    Unsatisfiable { value: String, size: u64 },
}

/// The `(start, length)` to send of a file of `size` bytes for the header
/// `value`; `None` for the whole file (no byte ranges asked, a unit we do
/// not know, which RFC 9110 says to ignore, or several ranges, which the
/// whole file answers without a multipart body).
pub fn byte_range(value: &str, size: u64) -> Result<Option<(u64, u64)>, RangeError> {
    // An empty file is served whole: no byte range of it exists, and the
    // range crate's arithmetic on `size - 1` underflows (found by fuzzing).
    if size == 0 || !value.trim_start().starts_with("bytes=") {
        return Ok(None);
    }
    if value.len() > MAX_RANGE_HEADER_BYTES || value.split(',').count() > MAX_RANGES {
        return Err(RangeError::TooMuch);
    }
    let shown = || value.escape_default().to_string();
    let parsed =
        http_range_header::parse_range_header(value).map_err(|_| RangeError::Malformed(shown()))?;
    let ranges = parsed
        .validate(size)
        .map_err(|_| RangeError::Unsatisfiable {
            value: shown(),
            size,
        })?;
    match ranges.as_slice() {
        [only] if only.start() <= only.end() && *only.end() < size => {
            Ok(Some((*only.start(), *only.end() - *only.start() + 1)))
        }
        [_] => Err(RangeError::Unsatisfiable {
            value: shown(),
            size,
        }),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_range_many_ranges_and_limits() {
        assert_eq!(byte_range("bytes=0-9", 100), Ok(Some((0, 10))));
        assert_eq!(byte_range("bytes=-10", 100), Ok(Some((90, 10))));
        assert_eq!(byte_range("bytes=0-1,5-6", 100), Ok(None));
        assert_eq!(byte_range("items=0-1", 100), Ok(None));
        assert!(matches!(
            byte_range("bytes=200-", 100),
            Err(RangeError::Unsatisfiable { .. })
        ));
        assert!(matches!(
            byte_range("bytes=x", 100),
            Err(RangeError::Malformed(_))
        ));
        let many: Vec<String> = (0..=MAX_RANGES).map(|i| format!("{i}-{i}")).collect();
        assert_eq!(
            byte_range(&format!("bytes={}", many.join(",")), 100),
            Err(RangeError::TooMuch)
        );
        let long = format!("bytes=0-{}", "0".repeat(MAX_RANGE_HEADER_BYTES));
        assert_eq!(byte_range(&long, 100), Err(RangeError::TooMuch));
    }

    /// Found by fuzzing (`range_header`): a range of an empty file came out
    /// as `(0, 0)` in release builds and panicked on overflow in debug ones.
    #[test]
    fn an_empty_file_is_served_whole_whatever_the_range() {
        for value in ["bytes=0-98882", "bytes=0-", "bytes=-5", "bytes=0-0"] {
            assert_eq!(byte_range(value, 0), Ok(None), "{value}");
        }
    }
}
