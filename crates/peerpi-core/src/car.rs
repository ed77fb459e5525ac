//! CAR v1 framing (the content-addressed archive IPFS tools read) for one
//! raw block: a header naming the root, then one section of the CID and the
//! block's bytes. Only the framing lives here; the bytes stream from the
//! store.

use cid::Cid;

/// Appends `n` as an unsigned LEB128 varint, as CAR frames lengths.
fn push_varint(out: &mut Vec<u8>, mut n: u64) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// The CAR v1 header for a single root: the varint length, then the
/// DAG-CBOR map `{"roots": [root], "version": 1}` (keys in DAG-CBOR's
/// length-first order; a CID is tag 42 over its bytes behind a zero byte).
pub fn header(root: &Cid) -> Vec<u8> {
    let cid = root.to_bytes();
    let mut map = Vec::with_capacity(cid.len() + 24);
    map.push(0xa2); // map of 2
    map.push(0x65); // text of 5
    map.extend_from_slice(b"roots");
    map.push(0x81); // array of 1
    map.extend_from_slice(&[0xd8, 0x2a]); // tag 42
    let link_len = cid.len() + 1;
    if link_len < 24 {
        map.push(0x40 | link_len as u8);
    } else {
        // A CID is far shorter than 256 bytes.
        map.extend_from_slice(&[0x58, link_len as u8]);
    }
    map.push(0x00); // the multibase identity prefix
    map.extend_from_slice(&cid);
    map.push(0x67); // text of 7
    map.extend_from_slice(b"version");
    map.push(0x01);
    let mut out = Vec::with_capacity(map.len() + 2);
    push_varint(&mut out, map.len() as u64);
    out.extend_from_slice(&map);
    out
}

/// The start of the section holding `cid`'s block of `len` bytes: the
/// section's varint length, then the CID. The block's bytes follow.
pub fn section_prefix(cid: &Cid, len: u64) -> Vec<u8> {
    let cid = cid.to_bytes();
    let mut out = Vec::with_capacity(cid.len() + 10);
    push_varint(&mut out, cid.len() as u64 + len);
    out.extend_from_slice(&cid);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Sha256Digest;

    fn read_varint(bytes: &[u8]) -> (u64, usize) {
        let mut n = 0u64;
        for (i, b) in bytes.iter().enumerate() {
            n |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return (n, i + 1);
            }
        }
        panic!("unterminated varint")
    }

    #[test]
    fn varints_are_leb128() {
        for (n, bytes) in [
            (0u64, vec![0]),
            (127, vec![0x7f]),
            (128, vec![0x80, 1]),
            (300, vec![0xac, 0x02]),
        ] {
            let mut out = Vec::new();
            push_varint(&mut out, n);
            assert_eq!(out, bytes, "{n}");
        }
    }

    /// The header decodes as a CAR reader would: a length, the map with
    /// `roots` holding the CID as tag 42, and `version` 1.
    #[test]
    fn the_header_names_the_root_and_version_one() {
        let cid = Sha256Digest::from_bytes([7; 32]).cid();
        let head = header(&cid);
        let (len, at) = read_varint(&head);
        assert_eq!(len as usize, head.len() - at);
        let map = &head[at..];
        assert_eq!(&map[..7], b"\xa2\x65roots");
        assert_eq!(&map[7..10], b"\x81\xd8\x2a");
        let cid_bytes = cid.to_bytes();
        assert_eq!(map[10], 0x58);
        assert_eq!(map[11] as usize, cid_bytes.len() + 1);
        assert_eq!(map[12], 0);
        assert_eq!(&map[13..13 + cid_bytes.len()], cid_bytes.as_slice());
        assert_eq!(&map[13 + cid_bytes.len()..], b"\x67version\x01");
        let section = section_prefix(&cid, 1000);
        let (len, at) = read_varint(&section);
        assert_eq!(len, cid_bytes.len() as u64 + 1000);
        assert_eq!(&section[at..], cid_bytes.as_slice());
    }
}
