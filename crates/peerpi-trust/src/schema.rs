//! Targets metadata as the specification allows it, where `tough`'s schema
//! is narrower: `tough` requires a `sha256` in every `hashes` object, while
//! the specification lets a repository list any algorithms (a target with
//! only `sha512`, or only `blake2b-256` as the index's PEP 458 deployment
//! signs its pages); and `tough`'s delegations have no TAP 15
//! `succinct_roles` (hashed bins described by one rule instead of listed,
//! as the index's deployment delegates). Root, timestamp, snapshot and each
//! listed delegated role keep `tough`'s types.

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU64;

use blake2::digest::consts::U32;
use blake2::{Blake2b, Blake2b512};
use serde::{Deserialize, Deserializer};
use sha2::{Digest, Sha256, Sha384, Sha512};
use tough::schema::decoded::{Decoded, Hex};
use tough::schema::key::Key;
use tough::schema::DelegatedRole;

use crate::error::{Result, TrustError};

/// A targets role's `signed` object. Fields the client does not use are
/// not modelled; signatures cover them anyway (see `envelope`).
#[derive(Debug, Clone, Deserialize)]
pub struct Targets {
    pub version: NonZeroU64,
    pub expires: jiff::Timestamp,
    pub targets: HashMap<String, TargetFile>,
    pub delegations: Option<Delegations>,
}

/// A targets role's `delegations`: listed `roles`, or TAP 15
/// `succinct_roles`, never both.
#[derive(Debug, Clone)]
pub struct Delegations {
    pub keys: HashMap<Decoded<Hex>, Key>,
    pub roles: Vec<DelegatedRole>,
    pub succinct_roles: Option<SuccinctRoles>,
}

impl<'de> Deserialize<'de> for Delegations {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Raw {
            keys: HashMap<Decoded<Hex>, Key>,
            roles: Option<Vec<DelegatedRole>>,
            succinct_roles: Option<SuccinctRoles>,
        }
        let raw = Raw::deserialize(deserializer)?;
        match (raw.roles, raw.succinct_roles) {
            (Some(_), Some(_)) => Err(serde::de::Error::custom(
                "delegations list both \"roles\" and \"succinct_roles\"",
            )),
            (None, None) => Err(serde::de::Error::custom(
                "delegations list neither \"roles\" nor \"succinct_roles\"",
            )),
            (roles, succinct_roles) => Ok(Delegations {
                keys: raw.keys,
                roles: roles.unwrap_or_default(),
                succinct_roles,
            }),
        }
    }
}

impl Delegations {
    /// The key ids and threshold that sign delegated role `name`, if this
    /// delegates it.
    pub fn signers_of(&self, name: &str) -> Option<(&[Decoded<Hex>], u64)> {
        if let Some(succinct) = &self.succinct_roles {
            return succinct
                .is_role(name)
                .then(|| (succinct.keyids.as_slice(), succinct.threshold.get()));
        }
        self.roles
            .iter()
            .find(|r| r.name == name)
            .map(|r| (r.keyids.as_slice(), r.threshold.get()))
    }
}

/// TAP 15 hashed bins: `2^bit_length` roles named `PREFIX-N` (N in hex,
/// zero-padded to the digits of the last bin), all signed by the same keys;
/// a target's bin is the first `bit_length` bits of the SHA-256 of its path.
#[derive(Debug, Clone, Deserialize)]
pub struct SuccinctRoles {
    pub keyids: Vec<Decoded<Hex>>,
    pub threshold: NonZeroU64,
    #[serde(deserialize_with = "bit_length")]
    pub bit_length: u32,
    pub name_prefix: String,
}

fn bit_length<'de, D: Deserializer<'de>>(deserializer: D) -> std::result::Result<u32, D::Error> {
    let bits = u32::deserialize(deserializer)?;
    if !(1..=32).contains(&bits) {
        return Err(serde::de::Error::custom(format!(
            "bit_length is {bits}, TAP 15 allows 1 to 32"
        )));
    }
    Ok(bits)
}

impl SuccinctRoles {
    /// Hex digits of a bin's number.
    fn digits(&self) -> usize {
        self.bit_length.div_ceil(4) as usize
    }

    /// The bin `target` belongs to (TAP 15's only delegation for it, and a
    /// terminating one).
    pub fn role_for(&self, target: &str) -> String {
        let digest = Sha256::digest(target.as_bytes());
        let first = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
        // bit_length is 1..=32 (checked when read), so the shift is < 32.
        let bin = first >> (32 - self.bit_length);
        format!("{}-{bin:0width$x}", self.name_prefix, width = self.digits())
    }

    /// Every bin's name, in order.
    pub fn names(&self) -> impl Iterator<Item = String> + '_ {
        (0..1u64 << self.bit_length)
            .map(|bin| format!("{}-{bin:0width$x}", self.name_prefix, width = self.digits()))
    }

    /// Whether `name` is one of the bins.
    pub fn is_role(&self, name: &str) -> bool {
        let Some(suffix) = name
            .strip_prefix(self.name_prefix.as_str())
            .and_then(|rest| rest.strip_prefix('-'))
        else {
            return false;
        };
        suffix.len() == self.digits()
            && suffix
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            && u64::from_str_radix(suffix, 16).is_ok_and(|n| n < 1u64 << self.bit_length)
    }
}

/// One entry of a role's `targets`.
#[derive(Debug, Clone, Deserialize)]
pub struct TargetFile {
    pub length: u64,
    pub hashes: TargetHashes,
}

/// A target's signed digests by algorithm name, at least one. Algorithm
/// names are those of the reference implementation (securesystemslib).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetHashes(BTreeMap<String, Vec<u8>>);

impl TargetHashes {
    /// From `(algorithm, digest)` pairs.
    pub fn new(hashes: impl IntoIterator<Item = (String, Vec<u8>)>) -> Self {
        TargetHashes(hashes.into_iter().collect())
    }

    /// The algorithms listed, by name.
    pub fn algorithms(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// The digest listed for `algorithm`, if any.
    pub fn get(&self, algorithm: &str) -> Option<&[u8]> {
        self.0.get(algorithm).map(Vec::as_slice)
    }

    /// The signed SHA-256, if the repository listed one.
    pub fn sha256(&self) -> Option<[u8; 32]> {
        self.0
            .get("sha256")
            .and_then(|d| <[u8; 32]>::try_from(d.as_slice()).ok())
    }

    /// The digest that names the file under consistent snapshots: the
    /// SHA-256 where listed (what peerpi's signer writes), else the first
    /// by name. A repository publishes the file under each of its hashes'
    /// names, so any one of them is a valid choice.
    pub fn for_file_name(&self) -> Option<&[u8]> {
        self.0
            .get("sha256")
            .or_else(|| self.0.values().next())
            .map(Vec::as_slice)
    }

    /// Checks `bytes` against every listed digest. An algorithm this client
    /// does not know fails the check rather than being skipped: skipping it
    /// would let a repository's only digest go unchecked.
    pub fn check(&self, what: &str, bytes: &[u8]) -> Result<()> {
        for (algorithm, expected) in &self.0 {
            let actual = digest(algorithm, bytes).ok_or_else(|| {
                TrustError::malformed(what, format!("unknown hash algorithm {algorithm:?}"))
            })?;
            if actual != *expected {
                return Err(TrustError::LengthOrHash { what: what.into() });
            }
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for TargetHashes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let text = BTreeMap::<String, String>::deserialize(deserializer)?;
        if text.is_empty() {
            return Err(serde::de::Error::custom("a target lists no hashes"));
        }
        text.into_iter()
            .map(|(algorithm, hex_digest)| {
                hex::decode(&hex_digest)
                    .map(|d| (algorithm, d))
                    .map_err(|e| serde::de::Error::custom(format!("hash {hex_digest:?}: {e}")))
            })
            .collect::<std::result::Result<BTreeMap<_, _>, _>>()
            .map(TargetHashes)
    }
}

/// `bytes` hashed with `algorithm`, if this client knows it.
pub fn digest(algorithm: &str, bytes: &[u8]) -> Option<Vec<u8>> {
    Some(match algorithm {
        "sha256" => Sha256::digest(bytes).to_vec(),
        "sha384" => Sha384::digest(bytes).to_vec(),
        "sha512" => Sha512::digest(bytes).to_vec(),
        "blake2b-256" => Blake2b::<U32>::digest(bytes).to_vec(),
        "blake2b" => Blake2b512::digest(bytes).to_vec(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn parse(json: &str) -> std::result::Result<TargetFile, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn any_listed_algorithm_verifies_and_each_must_match() {
        let bytes = b"a page";
        for algorithm in ["sha256", "sha512", "blake2b-256", "blake2b", "sha384"] {
            let hex_digest = hex::encode(digest(algorithm, bytes).unwrap());
            let file = parse(&format!(
                r#"{{"length": 6, "hashes": {{"{algorithm}": "{hex_digest}"}}}}"#
            ))
            .unwrap();
            file.hashes.check("t", bytes).unwrap();
            assert!(matches!(
                file.hashes.check("t", b"another"),
                Err(TrustError::LengthOrHash { .. })
            ));
        }
        // Known values, so a wrong digest size or variant cannot pass.
        assert_eq!(
            hex::encode(digest("blake2b-256", b"abc").unwrap()),
            "bddd813c634239723171ef3fee98579b94964e3bb1cb3e427262c8c068d52319"
        );
        let sha256 = hex::encode(Sha256::digest(bytes));
        let mixed = parse(&format!(
            r#"{{"length": 6, "hashes": {{"sha256": "{sha256}", "sha512": "{}"}}}}"#,
            "00".repeat(64)
        ))
        .unwrap();
        assert!(
            mixed.hashes.check("t", bytes).is_err(),
            "a wrong sha512 beside a right sha256"
        );
    }

    #[test]
    fn no_hashes_or_an_unknown_algorithm_is_refused() {
        assert!(parse(r#"{"length": 1, "hashes": {}}"#).is_err());
        assert!(parse(r#"{"length": 1, "hashes": {"sha256": "zz"}}"#).is_err());
        let unknown = parse(r#"{"length": 1, "hashes": {"md5": "00"}}"#).unwrap();
        assert!(matches!(
            unknown.hashes.check("t", b"x"),
            Err(TrustError::Malformed { .. })
        ));
    }

    fn succinct(bits: u32) -> SuccinctRoles {
        SuccinctRoles {
            keyids: Vec::new(),
            threshold: NonZeroU64::MIN,
            bit_length: bits,
            name_prefix: "bins".into(),
        }
    }

    #[test]
    fn succinct_bins_are_named_by_the_leading_bits_of_the_path_digest() {
        // sha256("") starts e3b0c442: 1110 0011 1011 ...
        assert_eq!(succinct(1).role_for(""), "bins-1");
        assert_eq!(succinct(4).role_for(""), "bins-e");
        assert_eq!(succinct(5).role_for(""), "bins-1c");
        assert_eq!(succinct(8).role_for(""), "bins-e3");
        assert_eq!(succinct(32).role_for(""), "bins-e3b0c442");
        let five = succinct(5);
        assert!(five.is_role("bins-00") && five.is_role("bins-1f"));
        for name in [
            "bins-20", "bins-1", "bins-01f", "bins-1F", "other-00", "bins00", "bins-+1",
        ] {
            assert!(!five.is_role(name), "{name}");
        }
        let roles = |bits: u32| {
            serde_json::from_value::<Delegations>(serde_json::json!({
                "keys": {},
                "succinct_roles": {
                    "keyids": [], "threshold": 1, "bit_length": bits, "name_prefix": "bins"
                }
            }))
        };
        assert!(roles(0).is_err() && roles(33).is_err());
        assert!(roles(32).unwrap().signers_of("bins-ffffffff").is_some());
        assert!(roles(8).unwrap().signers_of("bins-100").is_none());
        let both = serde_json::json!({
            "keys": {}, "roles": [],
            "succinct_roles": { "keyids": [], "threshold": 1, "bit_length": 4, "name_prefix": "b" }
        });
        assert!(serde_json::from_value::<Delegations>(both).is_err());
    }

    #[test]
    fn the_file_name_digest_is_sha256_where_listed_else_the_first() {
        let both = TargetHashes::new([
            ("blake2b-256".to_string(), vec![1]),
            ("sha256".to_string(), vec![2]),
        ]);
        assert_eq!(both.for_file_name(), Some(&[2u8][..]));
        let only = TargetHashes::new([
            ("sha512".to_string(), vec![3]),
            ("blake2b-256".to_string(), vec![4]),
        ]);
        assert_eq!(only.for_file_name(), Some(&[4u8][..]));
        assert_eq!(only.sha256(), None);
    }
}
