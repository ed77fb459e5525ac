//! Signed metadata as it arrives: parse the envelope, check the `_type` and
//! `spec_version`, and count valid signatures from distinct keys against a
//! role's threshold.
//!
//! Signatures are checked over the canonical JSON of the `signed` object *as
//! received* (not re-serialised from typed structs), so that fields this
//! client does not model still count, exactly as the reference
//! implementation does it.

use std::collections::HashMap;

use olpc_cjson::CanonicalFormatter;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use tough::schema::decoded::{Decoded, Hex};
use tough::schema::key::{EcdsaScheme, Ed25519Scheme, Key, RsaScheme};
use tough::schema::{Root, Snapshot, Timestamp};

use crate::error::{Result, TrustError};
use crate::schema::Targets;

/// The major version of the TUF specification this client implements.
const SPEC_MAJOR: &str = "1";

/// Parsed metadata with the bytes its signatures cover.
#[derive(Debug, Clone)]
pub struct Envelope<T> {
    /// The typed `signed` object.
    pub signed: T,
    /// Canonical JSON of `signed`, what every signature covers.
    canonical: Vec<u8>,
    /// key id → signature bytes; one per key id (a repeated key id is refused).
    signatures: HashMap<Vec<u8>, Vec<u8>>,
}

/// A role type as `tough` models it. Key maps are read here rather than by
/// `tough`, which refuses a key whose id is not the hash of the key as
/// serialised; the specification does not require that check, and the
/// reference implementation does not make it (a key with an extra field
/// keeps its id).
pub trait Metadata: DeserializeOwned {
    /// Takes the key map out of `signed`, leaving an empty one.
    fn take_keys(_signed: &mut Value) -> Option<Value> {
        None
    }
    /// Puts the key map back into the typed value.
    fn put_keys(&mut self, _keys: HashMap<Decoded<Hex>, Key>) {}
}

impl Metadata for Root {
    fn take_keys(signed: &mut Value) -> Option<Value> {
        signed
            .get_mut("keys")
            .map(|keys| std::mem::replace(keys, Value::Object(Default::default())))
    }
    fn put_keys(&mut self, keys: HashMap<Decoded<Hex>, Key>) {
        self.keys = keys;
    }
}

impl Metadata for Targets {
    fn take_keys(signed: &mut Value) -> Option<Value> {
        signed
            .get_mut("delegations")
            .and_then(|d| d.get_mut("keys"))
            .map(|keys| std::mem::replace(keys, Value::Object(Default::default())))
    }
    fn put_keys(&mut self, keys: HashMap<Decoded<Hex>, Key>) {
        if let Some(delegations) = &mut self.delegations {
            delegations.keys = keys;
        }
    }
}

impl Metadata for Timestamp {}
impl Metadata for Snapshot {}
impl Metadata for Value {}

impl<T: Metadata> Envelope<T> {
    /// Parses `bytes` as metadata of type `role_type` ("root", "timestamp",
    /// "snapshot" or "targets"). `role` names the role in errors.
    pub fn parse(bytes: &[u8], role_type: &str, role: &str) -> Result<Self> {
        let mut top: serde_json::Map<String, Value> =
            serde_json::from_slice(bytes).map_err(|e| TrustError::malformed(role, e))?;
        let signed = top
            .remove("signed")
            .ok_or_else(|| TrustError::malformed(role, "no \"signed\" object"))?;
        let raw_signatures = top
            .remove("signatures")
            .ok_or_else(|| TrustError::malformed(role, "no \"signatures\" list"))?;
        if let Some(extra) = top.keys().next() {
            return Err(TrustError::malformed(
                role,
                format!("unexpected field {extra:?}"),
            ));
        }
        let found_type = signed.get("_type").and_then(Value::as_str);
        if found_type != Some(role_type) {
            return Err(TrustError::malformed(
                role,
                format!("_type is {found_type:?}, expected {role_type:?}"),
            ));
        }
        check_spec_version(&signed, role)?;
        let signatures = parse_signatures(raw_signatures, role)?;
        let canonical = canonical_json(&signed).map_err(|e| TrustError::malformed(role, e))?;
        let mut signed = signed;
        let keys = T::take_keys(&mut signed)
            .map(serde_json::from_value::<HashMap<Decoded<Hex>, Key>>)
            .transpose()
            .map_err(|e| TrustError::malformed(role, format!("keys: {e}")))?;
        let mut signed: T =
            serde_json::from_value(signed).map_err(|e| TrustError::malformed(role, e))?;
        if let Some(keys) = keys {
            signed.put_keys(keys);
        }
        Ok(Envelope {
            signed,
            canonical,
            signatures,
        })
    }
}

impl<T> Envelope<T> {
    /// Checks that at least `threshold` distinct keys among `keyids` signed.
    /// A key listed under two key ids, or a key id signing twice, counts once.
    pub fn verify(
        &self,
        role: &str,
        keys: &HashMap<Decoded<Hex>, Key>,
        keyids: &[Decoded<Hex>],
        threshold: u64,
    ) -> Result<()> {
        let mut signers: Vec<&Key> = Vec::new();
        for keyid in keyids {
            let (Some(key), Some(sig)) = (keys.get(keyid), self.signatures.get(keyid.as_ref()))
            else {
                continue;
            };
            if verify_signature(key, &self.canonical, sig) && !signers.contains(&key) {
                signers.push(key);
            }
        }
        if (signers.len() as u64) < threshold {
            return Err(TrustError::ThresholdNotMet {
                role: role.to_string(),
                valid: signers.len(),
                threshold,
            });
        }
        Ok(())
    }
}

fn check_spec_version(signed: &Value, role: &str) -> Result<()> {
    let version = signed
        .get("spec_version")
        .and_then(Value::as_str)
        .ok_or_else(|| TrustError::malformed(role, "no spec_version"))?;
    let parts: Vec<&str> = version.split('.').collect();
    let numeric = parts
        .iter()
        .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    if !(2..=3).contains(&parts.len()) || !numeric || parts[0] != SPEC_MAJOR {
        return Err(TrustError::malformed(
            role,
            format!("spec_version {version:?} is not supported (major version {SPEC_MAJOR})"),
        ));
    }
    Ok(())
}

fn parse_signatures(raw: Value, role: &str) -> Result<HashMap<Vec<u8>, Vec<u8>>> {
    #[derive(serde::Deserialize)]
    struct RawSignature {
        keyid: String,
        sig: String,
    }
    let list: Vec<RawSignature> =
        serde_json::from_value(raw).map_err(|e| TrustError::malformed(role, e))?;
    let mut signatures = HashMap::with_capacity(list.len());
    for entry in list {
        let keyid = hex::decode(&entry.keyid).map_err(|_| {
            TrustError::malformed(role, format!("key id {:?} is not hex", entry.keyid))
        })?;
        // A signature that is not hex can never verify; keep it out rather
        // than refuse the whole file (other keys may still meet the threshold).
        let sig = hex::decode(&entry.sig).unwrap_or_default();
        if signatures.insert(keyid, sig).is_some() {
            return Err(TrustError::malformed(
                role,
                format!("two signatures from key id {}", entry.keyid),
            ));
        }
    }
    Ok(signatures)
}

/// The canonical JSON form (OLPC canonical JSON, as securesystemslib
/// writes it) of any serialisable value.
pub fn canonical_json<S: Serialize + ?Sized>(value: &S) -> serde_json::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut serializer =
        serde_json::Serializer::with_formatter(&mut out, CanonicalFormatter::new());
    value.serialize(&mut serializer)?;
    Ok(out)
}

fn verify_signature(key: &Key, message: &[u8], signature: &[u8]) -> bool {
    use aws_lc_rs::signature;
    let (algorithm, public): (&dyn signature::VerificationAlgorithm, &[u8]) = match key {
        Key::Ed25519 {
            keyval,
            scheme: Ed25519Scheme::Ed25519,
            ..
        } => (&signature::ED25519, &keyval.public),
        Key::Ecdsa {
            keyval,
            scheme: EcdsaScheme::EcdsaSha2Nistp256,
            ..
        }
        | Key::EcdsaOld {
            keyval,
            scheme: EcdsaScheme::EcdsaSha2Nistp256,
            ..
        } => (&signature::ECDSA_P256_SHA256_ASN1, &keyval.public),
        Key::Rsa {
            keyval,
            scheme: RsaScheme::RsassaPssSha256,
            ..
        } => (&signature::RSA_PSS_2048_8192_SHA256, &keyval.public),
    };
    signature::UnparsedPublicKey::new(algorithm, public)
        .verify(message, signature)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_versions_of_major_one_are_accepted_others_refused() {
        for ok in ["1.0.31", "1.0", "1.2.0"] {
            check_spec_version(&serde_json::json!({ "spec_version": ok }), "root").unwrap();
        }
        for bad in ["2.0.0", "1", "1.0.0.0", "one.0", "1..0", ""] {
            assert!(
                check_spec_version(&serde_json::json!({ "spec_version": bad }), "root").is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_repeated_key_id_in_signatures_is_refused() {
        let bytes = br#"{"signed":{"_type":"timestamp","spec_version":"1.0.31"},
            "signatures":[{"keyid":"ab","sig":"00"},{"keyid":"ab","sig":"01"}]}"#;
        let err = Envelope::<Value>::parse(bytes, "timestamp", "timestamp").unwrap_err();
        assert!(err.to_string().contains("two signatures"), "{err}");
    }

    #[test]
    fn one_key_under_two_key_ids_counts_once_toward_the_threshold() {
        use crate::keys::{sign_role, SigningKey};
        let (key, _) = SigningKey::generate().unwrap();
        let signed =
            serde_json::json!({ "_type": "timestamp", "spec_version": "1.0.31", "version": 2 });
        let mut envelope: Value =
            serde_json::from_slice(&sign_role(signed, &[&key]).unwrap()).unwrap();
        let alias: Decoded<Hex> = vec![7u8; 32].into();
        let first = envelope["signatures"][0].clone();
        let mut second = first.clone();
        second["keyid"] = hex::encode(&alias).into();
        envelope["signatures"] = serde_json::json!([first, second]);
        let parsed = Envelope::<Value>::parse(
            &serde_json::to_vec(&envelope).unwrap(),
            "timestamp",
            "timestamp",
        )
        .unwrap();
        let keys = HashMap::from([
            (key.keyid().clone(), key.public().clone()),
            (alias.clone(), key.public().clone()),
        ]);
        let ids = [key.keyid().clone(), alias];
        parsed.verify("timestamp", &keys, &ids, 1).unwrap();
        let err = parsed.verify("timestamp", &keys, &ids, 2).unwrap_err();
        assert!(
            matches!(
                err,
                TrustError::ThresholdNotMet {
                    valid: 1,
                    threshold: 2,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn wrong_type_and_extra_top_level_fields_are_refused() {
        let wrong = br#"{"signed":{"_type":"snapshot","spec_version":"1.0.31"},"signatures":[]}"#;
        assert!(Envelope::<Value>::parse(wrong, "timestamp", "timestamp").is_err());
        let extra =
            br#"{"signed":{"_type":"timestamp","spec_version":"1.0.31"},"signatures":[],"x":1}"#;
        assert!(Envelope::<Value>::parse(extra, "timestamp", "timestamp").is_err());
    }
}
