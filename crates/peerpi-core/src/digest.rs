//! SHA-256 digests and the CIDs derived from them. A file's CID is CIDv1,
//! codec `raw`, multihash `sha2-256`: computed from the digest the index
//! publishes, so it is known before the bytes are.

use std::fmt;
use std::str::FromStr;

pub use cid::Cid;
use multihash::Multihash;

/// Multicodec code of the `raw` binary codec.
pub const RAW_CODEC: u64 = 0x55;
/// Multihash code of `sha2-256`.
pub const SHA2_256: u64 = 0x12;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sha256Digest([u8; 32]);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("a sha256 digest is 64 hexadecimal characters, got {0} characters")]
    BadLength(usize),
    #[error("a sha256 digest is hexadecimal, got {0:?}")]
    NotHex(String),
}

impl Sha256Digest {
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn from_hex(hex_text: &str) -> Result<Self, DigestError> {
        if hex_text.len() != 64 {
            return Err(DigestError::BadLength(hex_text.len()));
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hex_text, &mut bytes)
            .map_err(|_| DigestError::NotHex(hex_text.escape_default().to_string()))?;
        Ok(Self(bytes))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The digest a CID names, when it is one peerpi announces: CIDv1,
    /// codec raw, multihash sha2-256 of the whole content.
    pub fn from_cid(cid: &Cid) -> Option<Self> {
        let hash = cid.hash();
        let raw_sha256 = cid.version() == cid::Version::V1
            && cid.codec() == RAW_CODEC
            && hash.code() == SHA2_256;
        let bytes: [u8; 32] = hash.digest().try_into().ok()?;
        raw_sha256.then_some(Self(bytes))
    }

    /// The CIDv1 (raw, sha2-256) that names this content on the network.
    pub fn cid(&self) -> Cid {
        // A 32-byte digest always fits the 64-byte multihash this Cid type holds.
        let multihash = Multihash::<64>::wrap(SHA2_256, &self.0)
            .unwrap_or_else(|_| unreachable!("32-byte digest fits a 64-byte multihash"));
        Cid::new_v1(RAW_CODEC, multihash)
    }
}

impl FromStr for Sha256Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_hex(s)
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl serde::Serialize for Sha256Digest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for Sha256Digest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::from_hex(&text).map_err(serde::de::Error::custom)
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // sha256 of the empty string.
    const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn hex_round_trip_and_case_folding() {
        let d = Sha256Digest::from_hex(EMPTY).unwrap();
        assert_eq!(d.to_hex(), EMPTY);
        assert_eq!(Sha256Digest::from_hex(&EMPTY.to_uppercase()).unwrap(), d);
    }

    #[test]
    fn rejects_bad_hex() {
        assert_eq!(
            Sha256Digest::from_hex("abc"),
            Err(DigestError::BadLength(3))
        );
        assert!(matches!(
            Sha256Digest::from_hex(&"g".repeat(64)),
            Err(DigestError::NotHex(_))
        ));
    }

    #[test]
    fn cid_is_v1_raw_sha256_of_the_digest() {
        let d = Sha256Digest::from_hex(EMPTY).unwrap();
        let cid = d.cid();
        assert_eq!(cid.version(), cid::Version::V1);
        assert_eq!(cid.codec(), RAW_CODEC);
        assert_eq!(cid.hash().code(), SHA2_256);
        assert_eq!(cid.hash().digest(), d.as_bytes());
        // The well-known CIDv1 raw of the empty input.
        assert_eq!(
            cid.to_string(),
            "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
        );
    }
}
