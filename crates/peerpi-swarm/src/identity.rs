//! The node's persistent identity (an ed25519 key pair in the data directory,
//! so the peer id survives restarts) and the private-network swarm key.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use libp2p::identity::Keypair;
use libp2p::pnet::PreSharedKey;

use crate::SwarmError;

pub const KEY_FILE: &str = "node.key";

/// Loads the key pair from `<data_dir>/node.key`, creating it (mode 0600) if absent.
pub fn load_or_create_keypair(data_dir: &Path) -> Result<Keypair, SwarmError> {
    let path = data_dir.join(KEY_FILE);
    match fs::read(&path) {
        Ok(bytes) => Keypair::from_protobuf_encoding(&bytes).map_err(|e| {
            SwarmError::Key(format!(
                "{} is not a valid node key ({e}); move it away to create a new identity",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(data_dir)
                .map_err(|e| SwarmError::Key(format!("creating {}: {e}", data_dir.display())))?;
            let keypair = Keypair::generate_ed25519();
            let bytes = keypair
                .to_protobuf_encoding()
                .map_err(|e| SwarmError::Key(format!("encoding a new key: {e}")))?;
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| SwarmError::Key(format!("writing {}: {e}", path.display())))?;
            file.write_all(&bytes)
                .and_then(|()| file.sync_all())
                .map_err(|e| SwarmError::Key(format!("writing {}: {e}", path.display())))?;
            Ok(keypair)
        }
        Err(e) => Err(SwarmError::Key(format!("reading {}: {e}", path.display()))),
    }
}

/// Reads a swarm key file (the go-libp2p `/key/swarm/psk/1.0.0/` format).
pub fn read_swarm_key(path: &Path) -> Result<PreSharedKey, SwarmError> {
    let text = fs::read_to_string(path)
        .map_err(|e| SwarmError::Key(format!("reading swarm key {}: {e}", path.display())))?;
    text.parse().map_err(|e| {
        SwarmError::Key(format!(
            "{} is not a swarm key ({e:?}); create one with `peerpi keygen --swarm-key FILE`",
            path.display()
        ))
    })
}

/// Writes a new random swarm key to `path` (mode 0600); refuses to overwrite.
pub fn write_new_swarm_key(path: &Path) -> Result<PreSharedKey, SwarmError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| SwarmError::Key(format!("no randomness: {e}")))?;
    let key = PreSharedKey::new(bytes);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| {
            SwarmError::Key(format!(
                "creating {}: {e} (it is never overwritten)",
                path.display()
            ))
        })?;
    file.write_all(key.to_string().as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| SwarmError::Key(format!("writing {}: {e}", path.display())))?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keypair_persists() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create_keypair(dir.path()).unwrap();
        let b = load_or_create_keypair(dir.path()).unwrap();
        assert_eq!(a.public().to_peer_id(), b.public().to_peer_id());
    }

    #[test]
    fn swarm_keys_round_trip_and_are_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("swarm.key");
        let key = write_new_swarm_key(&path).unwrap();
        assert_eq!(
            read_swarm_key(&path).unwrap().fingerprint().to_string(),
            key.fingerprint().to_string()
        );
        assert!(write_new_swarm_key(&path).is_err());
        fs::write(dir.path().join("bad.key"), "nonsense").unwrap();
        let e = read_swarm_key(&dir.path().join("bad.key"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("peerpi keygen"), "{e}");
    }
}
