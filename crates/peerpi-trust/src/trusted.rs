//! The set of metadata a client trusts right now, and the only way in: each
//! `update_*` applies the checks of the TUF client workflow (specification
//! 1.0, section 5) for one role, in the order the workflow gives, and keeps
//! the new metadata only if every check passed. No I/O happens here; the
//! client feeds bytes in and persists what was accepted.

use std::collections::HashMap;

use sha2::{Digest, Sha256};
use tough::schema::{Hashes, Metafile, RoleType, Root, Snapshot, Timestamp};

use crate::envelope::Envelope;
use crate::error::{Result, TrustError};
use crate::paths::DelegationIndex;
use crate::schema::{digest, Targets};

/// The role that signs top-level targets.
pub const TARGETS: &str = "targets";
/// The pseudo-role name that delegates top-level targets.
pub const ROOT: &str = "root";

/// What happened to a new timestamp.
#[derive(Debug, PartialEq, Eq)]
pub enum TimestampUpdate {
    /// Newer and valid: persist it.
    Updated,
    /// The same version as the trusted one: keep the trusted one.
    Unchanged,
}

/// Trusted metadata, newest first checked against oldest.
pub struct TrustedSet {
    now: jiff::Timestamp,
    root: Envelope<Root>,
    timestamp: Option<Envelope<Timestamp>>,
    snapshot: Option<Envelope<Snapshot>>,
    targets: HashMap<String, Envelope<Targets>>,
    /// Each trusted targets role's delegations, indexed for lookups.
    delegation_indexes: HashMap<String, DelegationIndex>,
    /// Each trusted delegated role's delegators whose keys verified it. A
    /// role two roles delegate (a "diamond") is trusted on a search path
    /// only once that path's delegator verified it.
    verified_by: HashMap<String, Vec<String>>,
}

impl TrustedSet {
    /// Starts from a root the operator installed (or a previous run
    /// verified). It must be signed by a threshold of its own root keys;
    /// its expiry is checked only once the root rotation is done.
    pub fn new(root: &[u8], now: jiff::Timestamp) -> Result<Self> {
        let root = Envelope::<Root>::parse(root, "root", ROOT)?;
        verify_top_level(&root.signed, &root, RoleType::Root, ROOT)?;
        Ok(TrustedSet {
            now,
            root,
            timestamp: None,
            snapshot: None,
            targets: HashMap::new(),
            delegation_indexes: HashMap::new(),
            verified_by: HashMap::new(),
        })
    }

    pub fn root(&self) -> &Root {
        &self.root.signed
    }

    pub fn timestamp(&self) -> Option<&Timestamp> {
        self.timestamp.as_ref().map(|t| &t.signed)
    }

    pub fn snapshot(&self) -> Option<&Snapshot> {
        self.snapshot.as_ref().map(|s| &s.signed)
    }

    pub fn targets(&self, role: &str) -> Option<&Targets> {
        self.targets.get(role).map(|t| &t.signed)
    }

    /// 5.3.4-5.3.8: the next root must be signed by a threshold of the
    /// trusted root's keys and of its own, and be exactly one version newer.
    pub fn update_root(&mut self, bytes: &[u8]) -> Result<()> {
        if self.timestamp.is_some() {
            return Err(TrustError::malformed(ROOT, "root update after timestamp"));
        }
        let new = Envelope::<Root>::parse(bytes, "root", ROOT)?;
        verify_top_level(&self.root.signed, &new, RoleType::Root, ROOT)?;
        let trusted = self.root.signed.version.get();
        let got = new.signed.version.get();
        if got != trusted + 1 {
            return Err(TrustError::VersionMismatch {
                role: ROOT.into(),
                expected: trusted + 1,
                got,
                by: "the root rotation",
            });
        }
        verify_top_level(&new.signed, &new, RoleType::Root, ROOT)?;
        self.root = new;
        Ok(())
    }

    /// 5.3.10: the final root must not have expired.
    pub fn check_root_fresh(&self) -> Result<()> {
        self.check_fresh(ROOT, self.root.signed.expires)
    }

    /// 5.4: a timestamp signed by the root's timestamp keys, no older than
    /// the trusted one, naming a snapshot version no older than the trusted
    /// one's. It is kept even when expired (so that it still guards against
    /// rollback), and then the expiry is reported.
    pub fn update_timestamp(&mut self, bytes: &[u8]) -> Result<TimestampUpdate> {
        self.check_root_fresh()?;
        let new = Envelope::<Timestamp>::parse(bytes, "timestamp", "timestamp")?;
        verify_top_level(&self.root.signed, &new, RoleType::Timestamp, "timestamp")?;
        let new_snapshot = snapshot_meta(&new.signed)?.version.get();
        if let Some(trusted) = &self.timestamp {
            let (old, got) = (trusted.signed.version.get(), new.signed.version.get());
            if got < old {
                return Err(rollback("timestamp", old, got));
            }
            if got == old {
                return Ok(TimestampUpdate::Unchanged);
            }
            let old_snapshot = snapshot_meta(&trusted.signed)?.version.get();
            if new_snapshot < old_snapshot {
                return Err(rollback("snapshot", old_snapshot, new_snapshot));
            }
        }
        let expires = new.signed.expires;
        self.timestamp = Some(new);
        self.check_fresh("timestamp", expires)?;
        Ok(TimestampUpdate::Updated)
    }

    /// 5.5: a snapshot matching the timestamp's length and hashes (unless it
    /// was verified before: `from_local`), signed by the root's snapshot
    /// keys, that drops no role and rolls back no version the trusted
    /// snapshot lists. Kept even when stale, to guard the next one; then it
    /// must be unexpired and the very version the timestamp names.
    pub fn update_snapshot(&mut self, bytes: &[u8], from_local: bool) -> Result<()> {
        let timestamp = self
            .timestamp
            .as_ref()
            .ok_or(TrustError::NotRefreshed("timestamp"))?;
        self.check_fresh("timestamp", timestamp.signed.expires)?;
        let meta = snapshot_meta(&timestamp.signed)?.clone();
        if !from_local {
            check_length_and_hashes("snapshot", bytes, meta.length, meta.hashes.as_ref())?;
        }
        let new = Envelope::<Snapshot>::parse(bytes, "snapshot", "snapshot")?;
        verify_top_level(&self.root.signed, &new, RoleType::Snapshot, "snapshot")?;
        if let Some(trusted) = &self.snapshot {
            for (file, old) in &trusted.signed.meta {
                let Some(fresh) = new.signed.meta.get(file) else {
                    return Err(TrustError::DroppedFromSnapshot {
                        role: role_of(file).into(),
                    });
                };
                if fresh.version < old.version {
                    return Err(rollback(
                        role_of(file),
                        old.version.get(),
                        fresh.version.get(),
                    ));
                }
            }
        }
        let (expires, got) = (new.signed.expires, new.signed.version.get());
        self.snapshot = Some(new);
        self.check_fresh("snapshot", expires)?;
        if got != meta.version.get() {
            return Err(TrustError::VersionMismatch {
                role: "snapshot".into(),
                expected: meta.version.get(),
                got,
                by: "timestamp",
            });
        }
        Ok(())
    }

    /// 5.6 and 5.7: targets metadata for `role`, delegated by `delegator`
    /// ("root" for the top-level targets): its length and hashes as the
    /// snapshot lists them, a threshold of the delegator's keys for it, the
    /// version the snapshot names, not expired.
    pub fn update_targets(&mut self, bytes: &[u8], role: &str, delegator: &str) -> Result<()> {
        let snapshot = self
            .snapshot
            .as_ref()
            .ok_or(TrustError::NotRefreshed("snapshot"))?;
        self.check_fresh("snapshot", snapshot.signed.expires)?;
        let meta = snapshot
            .signed
            .meta
            .get(&format!("{role}.json"))
            .ok_or_else(|| TrustError::NotInSnapshot { role: role.into() })?;
        check_length_and_hashes(role, bytes, meta.length, meta.hashes.as_ref())?;
        let new = Envelope::<Targets>::parse(bytes, "targets", role)?;
        self.verify_delegated(&new, role, delegator)?;
        if new.signed.version != meta.version {
            return Err(TrustError::VersionMismatch {
                role: role.into(),
                expected: meta.version.get(),
                got: new.signed.version.get(),
                by: "snapshot",
            });
        }
        self.check_fresh(role, new.signed.expires)?;
        if let Some(delegations) = &new.signed.delegations {
            self.delegation_indexes
                .insert(role.to_string(), DelegationIndex::new(delegations));
        }
        self.targets.insert(role.to_string(), new);
        self.verified_by
            .insert(role.to_string(), vec![delegator.to_string()]);
        Ok(())
    }

    /// Whether `role` is trusted on a search path through `delegator`: it
    /// is loaded, and `delegator`'s keys for it verified it (checked now if
    /// another delegator's did before).
    pub fn trusted_through(&mut self, role: &str, delegator: &str) -> Result<bool> {
        let Some(envelope) = self.targets.get(role) else {
            return Ok(false);
        };
        let verifiers = self.verified_by.get(role).map(Vec::as_slice);
        if verifiers.unwrap_or_default().iter().any(|d| d == delegator) {
            return Ok(true);
        }
        self.verify_delegated(envelope, role, delegator)?;
        self.verified_by
            .entry(role.to_string())
            .or_default()
            .push(delegator.to_string());
        Ok(true)
    }

    /// A threshold of `delegator`'s keys for `role` signed `envelope`
    /// (the root's targets keys for the top-level targets).
    fn verify_delegated(
        &self,
        envelope: &Envelope<Targets>,
        role: &str,
        delegator: &str,
    ) -> Result<()> {
        if delegator == ROOT {
            return verify_top_level(&self.root.signed, envelope, RoleType::Targets, role);
        }
        let parent = self
            .targets
            .get(delegator)
            .ok_or(TrustError::NotRefreshed("the delegating role"))?;
        let delegations =
            parent.signed.delegations.as_ref().ok_or_else(|| {
                TrustError::malformed(role, format!("{delegator} delegates nothing"))
            })?;
        let (keyids, threshold) = delegations.signers_of(role).ok_or_else(|| {
            TrustError::malformed(role, format!("{delegator} does not delegate it"))
        })?;
        envelope.verify(role, &delegations.keys, keyids, threshold)
    }

    /// Moves the reference time forward (a set kept between refreshes) and
    /// checks that root, timestamp, snapshot and top-level targets are
    /// still unexpired at it.
    pub fn check_current(&mut self, now: jiff::Timestamp) -> Result<()> {
        self.now = self.now.max(now);
        self.check_root_fresh()?;
        let timestamp = self
            .timestamp
            .as_ref()
            .ok_or(TrustError::NotRefreshed("timestamp"))?;
        self.check_fresh("timestamp", timestamp.signed.expires)?;
        let snapshot = self
            .snapshot
            .as_ref()
            .ok_or(TrustError::NotRefreshed("snapshot"))?;
        self.check_fresh("snapshot", snapshot.signed.expires)?;
        let targets = self
            .targets
            .get(TARGETS)
            .ok_or(TrustError::NotRefreshed("targets"))?;
        self.check_fresh(TARGETS, targets.signed.expires)
    }

    /// The roles `role` delegates `target` to, in listed order, with
    /// whether each is terminating.
    pub fn delegated_for(&self, role: &str, target: &str) -> Vec<(String, bool)> {
        let Some(delegations) = self.targets(role).and_then(|t| t.delegations.as_ref()) else {
            return Vec::new();
        };
        if let Some(succinct) = &delegations.succinct_roles {
            return vec![(succinct.role_for(target), true)];
        }
        let Some(index) = self.delegation_indexes.get(role) else {
            return Vec::new();
        };
        let roles = delegations.roles.as_slice();
        index
            .matching(roles, target)
            .into_iter()
            .filter_map(|i| roles.get(i))
            .map(|r| (r.name.clone(), r.terminating))
            .collect()
    }

    /// The snapshot's entry for `role`, if it lists one.
    pub fn snapshot_entry(&self, role: &str) -> Option<&Metafile> {
        self.snapshot()?.meta.get(&format!("{role}.json"))
    }

    fn check_fresh(&self, role: &str, expires: jiff::Timestamp) -> Result<()> {
        if self.now >= expires {
            return Err(TrustError::Expired {
                role: role.into(),
                expires,
                now: self.now,
            });
        }
        Ok(())
    }
}

/// The timestamp's entry for the snapshot.
pub fn snapshot_meta(timestamp: &Timestamp) -> Result<&Metafile> {
    timestamp
        .meta
        .get("snapshot.json")
        .ok_or_else(|| TrustError::malformed("timestamp", "no snapshot.json in meta"))
}

fn verify_top_level<T>(
    root: &Root,
    envelope: &Envelope<T>,
    role_type: RoleType,
    role: &str,
) -> Result<()> {
    let keys = root
        .roles
        .get(&role_type)
        .ok_or_else(|| TrustError::malformed(ROOT, format!("no keys for the {role_type} role")))?;
    envelope.verify(role, &root.keys, &keys.keyids, keys.threshold.get())
}

fn rollback(role: &str, trusted: u64, new: u64) -> TrustError {
    TrustError::Rollback {
        role: role.into(),
        trusted,
        new,
    }
}

fn role_of(meta_file: &str) -> &str {
    meta_file.strip_suffix(".json").unwrap_or(meta_file)
}

/// Checks `bytes` against a signed length and hashes (each optional, as in
/// snapshot and timestamp meta). Every listed hash must match; a hash
/// algorithm this client does not know fails the check rather than being
/// skipped.
pub fn check_length_and_hashes(
    what: &str,
    bytes: &[u8],
    length: Option<u64>,
    hashes: Option<&Hashes>,
) -> Result<()> {
    let mismatch = || TrustError::LengthOrHash { what: what.into() };
    if length.is_some_and(|n| n != bytes.len() as u64) {
        return Err(mismatch());
    }
    let Some(hashes) = hashes else {
        return Ok(());
    };
    if Sha256::digest(bytes).as_slice() != hashes.sha256.as_ref() as &[u8] {
        return Err(mismatch());
    }
    for (algorithm, value) in &hashes._extra {
        let expected = value
            .as_str()
            .and_then(|h| hex::decode(h).ok())
            .ok_or_else(mismatch)?;
        if digest(algorithm, bytes).ok_or_else(mismatch)? != expected {
            return Err(mismatch());
        }
    }
    Ok(())
}
