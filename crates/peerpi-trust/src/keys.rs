//! Signing keys: ed25519 key pairs kept as PKCS#8 files (the format tough
//! reads), their TUF public form and key id, and signing a role.

use std::collections::HashMap;
use std::path::Path;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use serde::Serialize;
use tough::schema::decoded::{Decoded, Hex};
use tough::schema::key::{Ed25519Key, Ed25519Scheme, Key};
use tough::schema::{Signature, Signed};

use crate::envelope::canonical_json;
use crate::error::{Result, TrustError};

/// An ed25519 signing key with its TUF key id.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    public: Key,
    keyid: Decoded<Hex>,
}

impl SigningKey {
    /// Makes a new key; returns it with its PKCS#8 document, to be saved.
    pub fn generate() -> Result<(Self, Vec<u8>)> {
        let document = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|_| TrustError::Signer("the system random source failed".into()))?;
        let bytes = document.as_ref().to_vec();
        Ok((Self::from_pkcs8(&bytes)?, bytes))
    }

    /// Reads a PKCS#8 ed25519 key.
    pub fn from_pkcs8(bytes: &[u8]) -> Result<Self> {
        let pair = Ed25519KeyPair::from_pkcs8(bytes)
            .map_err(|_| TrustError::Signer("not a PKCS#8 ed25519 key".into()))?;
        let public = Key::Ed25519 {
            keyval: Ed25519Key {
                public: pair.public_key().as_ref().to_vec().into(),
                _extra: HashMap::new(),
            },
            scheme: Ed25519Scheme::Ed25519,
            _extra: HashMap::new(),
        };
        let keyid = public
            .key_id()
            .map_err(|e| TrustError::Signer(format!("key id: {e}")))?;
        Ok(SigningKey {
            pair,
            public,
            keyid,
        })
    }

    /// Reads a key file, naming the file in the error.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| TrustError::io(path, e))?;
        Self::from_pkcs8(&bytes).map_err(|e| TrustError::Signer(format!("{}: {e}", path.display())))
    }

    /// Writes a new key to `path`, readable by its owner only; refuses to
    /// overwrite an existing key.
    pub fn create(path: &Path) -> Result<Self> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let (key, document) = Self::generate()?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| TrustError::io(path, e))?;
        file.write_all(&document)
            .and_then(|()| file.sync_all())
            .map_err(|e| TrustError::io(path, e))?;
        Ok(key)
    }

    pub fn public(&self) -> &Key {
        &self.public
    }

    pub fn keyid(&self) -> &Decoded<Hex> {
        &self.keyid
    }
}

/// Signs `role` with every key in `keys` and returns the signed envelope as
/// canonical JSON bytes (the exact bytes to publish).
pub fn sign_role<T: Serialize>(role: T, keys: &[&SigningKey]) -> Result<Vec<u8>> {
    let message =
        canonical_json(&role).map_err(|e| TrustError::Signer(format!("serialising: {e}")))?;
    let signatures = keys
        .iter()
        .map(|key| Signature {
            keyid: key.keyid.clone(),
            sig: key.pair.sign(&message).as_ref().to_vec().into(),
        })
        .collect();
    let envelope = Signed {
        signed: role,
        signatures,
    };
    canonical_json(&envelope).map_err(|e| TrustError::Signer(format!("serialising: {e}")))
}
