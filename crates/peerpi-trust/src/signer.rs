//! The signer: creates and maintains a repository shaped like PEP 458 on
//! disk. Root (a threshold of offline keys) names the keys of targets
//! (offline), snapshot and timestamp (the online key); top-level targets
//! delegates every target path to one of N hashed bins by TAP 15
//! `succinct_roles` (repositories made before list the bins with
//! `path_hash_prefixes`, and are still maintained); the bins are signed by
//! the online key.
//!
//! Adding targets rewrites only the bins they fall in, then snapshot and
//! timestamp, each written whole before the next (new files, then the
//! timestamp last), so a client reading the repository meanwhile sees the
//! old state or the new one. One signer at a time: an exclusive lock on the
//! repository directory.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};

use fs2::FileExt;
use serde::de::DeserializeOwned;
use tough::schema::decoded::{Decoded, Hex};
use tough::schema::key::Key;
use tough::schema::{
    DelegatedRole, Delegations, Hashes, Metafile, PathHashPrefix, PathSet, RoleKeys, RoleType,
    Root, Signed, Snapshot, Target, Targets, Timestamp,
};
use tough::TargetName;

use crate::datastore::{quote_segment, write_atomically};
use crate::error::{Result, TrustError};
use crate::keys::{sign_role, SigningKey};
use crate::paths::path_digest;
use crate::schema::SuccinctRoles;

/// The specification version written into every role (python-tuf accepts
/// any 1.x).
pub const SPEC_VERSION: &str = "1.0.31";

/// How long each role's signature is valid. A role is re-signed by `sign`
/// once less than half of its period is left.
#[derive(Debug, Clone, Copy)]
pub struct Lifetimes {
    pub root: jiff::SignedDuration,
    pub targets: jiff::SignedDuration,
    pub bins: jiff::SignedDuration,
    pub snapshot: jiff::SignedDuration,
    pub timestamp: jiff::SignedDuration,
}

impl Default for Lifetimes {
    fn default() -> Self {
        let days = |d: i64| jiff::SignedDuration::from_hours(24 * d);
        Lifetimes {
            root: days(365),
            targets: days(365),
            bins: days(30),
            snapshot: days(7),
            timestamp: days(1),
        }
    }
}

/// Targets a new repository is sized for unless told otherwise: a
/// cluster's signer signs the pages its nodes asked for, thousands rather
/// than the index's millions.
pub const DEFAULT_EXPECTED_TARGETS: u64 = 10_000;

/// Hashed bins of a new repository, sized for [`DEFAULT_EXPECTED_TARGETS`]
/// (see [`bins_for`]): 256. PEP 458 sizes 16,384 for the whole index; each
/// bin costs every node a snapshot entry (version, length, sha256: about
/// 100 bytes) at each new snapshot, and each target about 110 bytes in the
/// bin a node downloads to look it up.
pub const DEFAULT_BINS: u32 = 256;

/// How top-level targets delegates to the bins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinStyle {
    /// TAP 15 `succinct_roles`: one rule, whatever the number of bins (a
    /// few hundred bytes instead of about 180 bytes a bin).
    Succinct,
    /// Each bin listed with its `path_hash_prefixes`: what repositories
    /// made before TAP 15 support have (kept to test that they are still
    /// maintained).
    Listed,
}

/// What `init` makes.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// Number of hashed bins: a power of two from 2 to 65,536 (from 1 with
    /// listed bins).
    pub bins: u32,
    pub style: BinStyle,
    pub root_keys: usize,
    pub root_threshold: u64,
    pub lifetimes: Lifetimes,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            bins: DEFAULT_BINS,
            style: BinStyle::Succinct,
            root_keys: 1,
            root_threshold: 1,
            lifetimes: Lifetimes::default(),
        }
    }
}

/// The bin name prefix of succinct bins (`bins-0`, `bins-1`, ...), as the
/// index's PEP 458 deployment names them.
pub const BIN_PREFIX: &str = "bins";

/// The number of bins for a repository expected to sign `targets`
/// targets: the power of two nearest (on a log scale) to `sqrt(6.6 x
/// targets)`, between 2 and 65,536. A cold node installing k projects
/// downloads the snapshot (about 100 bytes a bin) and k bins (about 110
/// bytes a target they hold); the sum is least at `sqrt(k x targets x
/// 110 / 100)` bins, and k = 6 is a typical install. 10,000 targets: 256
/// bins; 1,000: 64; 100,000: 1,024.
pub fn bins_for(targets: u64) -> u32 {
    let best = (6.6 * targets.max(1) as f64).sqrt();
    let exponent = best.log2().round().clamp(1.0, 16.0) as u32;
    1 << exponent
}

/// A target to sign: its path in the repository and the digest and length
/// of its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTarget {
    pub path: String,
    pub length: u64,
    pub sha256: [u8; 32],
}

/// The signing keys of one run; only those the operation needs must be set.
#[derive(Default)]
pub struct Keys {
    pub root: Vec<SigningKey>,
    pub targets: Option<SigningKey>,
    pub online: Option<SigningKey>,
}

impl Keys {
    fn online(&self) -> Result<&SigningKey> {
        self.online
            .as_ref()
            .ok_or_else(|| TrustError::Signer("this needs the online key (--online-key)".into()))
    }

    fn targets(&self) -> Result<&SigningKey> {
        self.targets
            .as_ref()
            .ok_or_else(|| TrustError::Signer("this needs the targets key (--targets-key)".into()))
    }

    fn root(&self) -> Result<Vec<&SigningKey>> {
        if self.root.is_empty() {
            return Err(TrustError::Signer(
                "this needs the root key(s) (--root-key)".into(),
            ));
        }
        Ok(self.root.iter().collect())
    }
}

/// Which keys `rotate` replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRole {
    Root,
    Targets,
    /// Timestamp, snapshot and the bins.
    Online,
}

/// What one signer run changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    pub root_version: Option<u64>,
    pub targets_version: Option<u64>,
    pub bins_signed: usize,
    pub snapshot_version: Option<u64>,
    pub timestamp_version: Option<u64>,
}

/// What [`Repository::prune`] removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub metadata: usize,
    pub targets: usize,
}

/// A repository on disk, locked for this signer.
pub struct Repository {
    dir: PathBuf,
    _lock: File,
}

/// The newest signed state, as read from the repository.
struct State {
    root: Root,
    targets: TopTargets,
    snapshot: Snapshot,
    timestamp: Timestamp,
}

impl Repository {
    /// Creates a new repository in `dir` (its `metadata/` must not exist)
    /// with new keys written to `keys_dir` (`root-N.pk8`, `targets.pk8`,
    /// `online.pk8`; move the root and targets keys offline afterwards).
    pub fn init(dir: &Path, keys_dir: &Path, options: &InitOptions) -> Result<Changes> {
        let bins = options.bins;
        let least = match options.style {
            BinStyle::Succinct => 2,
            BinStyle::Listed => 1,
        };
        if !bins.is_power_of_two() || bins < least || bins > 65_536 {
            return Err(TrustError::Signer(format!(
                "--bins {bins}: must be a power of two from {least} to 65536"
            )));
        }
        if options.root_keys == 0
            || options.root_threshold == 0
            || options.root_threshold > options.root_keys as u64
        {
            return Err(TrustError::Signer(format!(
                "--root-threshold {} must be between 1 and --root-keys {}",
                options.root_threshold, options.root_keys
            )));
        }
        if dir.join("metadata").exists() {
            return Err(TrustError::Signer(format!(
                "{} already holds a repository (metadata/ exists)",
                dir.display()
            )));
        }
        std::fs::create_dir_all(keys_dir).map_err(|e| TrustError::io(keys_dir, e))?;
        let keys = Keys {
            root: (1..=options.root_keys)
                .map(|n| SigningKey::create(&keys_dir.join(format!("root-{n}.pk8"))))
                .collect::<Result<_>>()?,
            targets: Some(SigningKey::create(&keys_dir.join("targets.pk8"))?),
            online: Some(SigningKey::create(&keys_dir.join("online.pk8"))?),
        };
        std::fs::create_dir_all(dir.join("metadata"))
            .map_err(|e| TrustError::io(dir.join("metadata"), e))?;
        let repo = Repository::open(dir)?;
        repo.write_initial(&keys, options)
    }

    /// Opens `dir` and takes its lock (waiting for another signer to finish).
    pub fn open(dir: &Path) -> Result<Self> {
        let metadata = dir.join("metadata");
        if !metadata.is_dir() {
            return Err(TrustError::Signer(format!(
                "{} is not a repository (no metadata/; run `peerpi tuf init` first)",
                dir.display()
            )));
        }
        let lock_path = dir.join(".signer.lock");
        let lock = File::create(&lock_path).map_err(|e| TrustError::io(&lock_path, e))?;
        lock.lock_exclusive()
            .map_err(|e| TrustError::io(&lock_path, e))?;
        Ok(Repository {
            dir: dir.to_path_buf(),
            _lock: lock,
        })
    }

    pub fn metadata_dir(&self) -> PathBuf {
        Self::metadata_dir_of(&self.dir)
    }

    /// Where the metadata of the repository in `dir` is, without opening
    /// (and locking) it.
    pub fn metadata_dir_of(dir: &Path) -> PathBuf {
        dir.join("metadata")
    }

    pub fn targets_dir(&self) -> PathBuf {
        self.dir.join("targets")
    }

    fn write_initial(&self, keys: &Keys, options: &InitOptions) -> Result<Changes> {
        let now = now();
        let online = keys.online()?;
        let targets_key = keys.targets()?;
        let root_keys = keys.root()?;
        let mut all_keys: HashMap<Decoded<Hex>, Key> = HashMap::new();
        for key in root_keys.iter().copied().chain([targets_key, online]) {
            all_keys.insert(key.keyid().clone(), key.public().clone());
        }
        let role_keys = |ids: Vec<Decoded<Hex>>, threshold: u64| RoleKeys {
            keyids: ids,
            threshold: non_zero(threshold),
            _extra: HashMap::new(),
        };
        let root_ids = root_keys.iter().map(|k| k.keyid().clone()).collect();
        let root = Root {
            spec_version: SPEC_VERSION.into(),
            consistent_snapshot: true,
            version: non_zero(1),
            expires: expiry(now, options.lifetimes.root),
            keys: all_keys,
            roles: HashMap::from([
                (RoleType::Root, role_keys(root_ids, options.root_threshold)),
                (
                    RoleType::Targets,
                    role_keys(vec![targets_key.keyid().clone()], 1),
                ),
                (
                    RoleType::Snapshot,
                    role_keys(vec![online.keyid().clone()], 1),
                ),
                (
                    RoleType::Timestamp,
                    role_keys(vec![online.keyid().clone()], 1),
                ),
            ]),
            _extra: HashMap::new(),
        };
        self.write_root(&root, &root_keys)?;

        let mut snapshot = Snapshot::new(
            SPEC_VERSION.into(),
            non_zero(1),
            expiry(now, options.lifetimes.snapshot),
        );
        let targets = TopTargets::new(
            expiry(now, options.lifetimes.targets),
            options.style,
            options.bins,
            online,
        )?;
        let bin_expiry = expiry(now, options.lifetimes.bins);
        for name in BinIndex::new(&targets)?.names() {
            let bin = Targets::new(SPEC_VERSION.into(), non_zero(1), bin_expiry);
            let meta = self.write_versioned(&name, 1, sign_role(bin, &[online])?)?;
            snapshot.meta.insert(format!("{name}.json"), meta);
        }
        let meta = self.write_versioned("targets", 1, sign_role(&targets.0, &[targets_key])?)?;
        snapshot.meta.insert("targets.json".into(), meta);
        self.publish_snapshot(snapshot, None, online, options.lifetimes)?;
        Ok(Changes {
            root_version: Some(1),
            targets_version: Some(1),
            bins_signed: options.bins as usize,
            snapshot_version: Some(1),
            timestamp_version: Some(1),
        })
    }

    /// Signs `new` into the bins their paths hash to. A target already
    /// listed is replaced. Only the touched bins, snapshot and timestamp
    /// are rewritten.
    pub fn add(&self, new: &[NewTarget], keys: &Keys, lifetimes: Lifetimes) -> Result<Changes> {
        if new.is_empty() {
            return Ok(Changes::default());
        }
        let online = keys.online()?;
        let state = self.state()?;
        let index = BinIndex::new(&state.targets)?;
        let mut by_bin: BTreeMap<String, Vec<&NewTarget>> = BTreeMap::new();
        for target in new {
            let bin = index.bin_of(&target.path).ok_or_else(|| {
                TrustError::Signer(format!("no bin is delegated {:?}", target.path))
            })?;
            by_bin.entry(bin).or_default().push(target);
        }
        let now = now();
        let mut snapshot = state.snapshot.clone();
        for (bin, targets) in &by_bin {
            let mut role: Targets = self.read_current(&snapshot, bin)?;
            for target in targets {
                let name = TargetName::new(target.path.clone()).map_err(|e| {
                    TrustError::Signer(format!("target path {:?}: {e}", target.path))
                })?;
                role.targets.insert(name, target_entry(target));
            }
            self.resign_into(
                &mut snapshot,
                bin,
                role,
                online,
                expiry(now, lifetimes.bins),
            )?;
        }
        let mut changes =
            self.publish_snapshot(snapshot, Some(&state.timestamp), online, lifetimes)?;
        changes.bins_signed = by_bin.len();
        Ok(changes)
    }

    /// Re-signs every role with less than half of its lifetime left, with
    /// the keys given. Roles whose keys were not given are listed in the
    /// error only if they would expire within their whole re-sign window.
    pub fn sign(&self, keys: &Keys, lifetimes: Lifetimes) -> Result<(Changes, Vec<String>)> {
        let state = self.state()?;
        let now = now();
        let due = |expires: jiff::Timestamp, lifetime: jiff::SignedDuration| {
            expires.duration_since(now) < lifetime / 2
        };
        let mut changes = Changes::default();
        let mut waiting = Vec::new();
        let mut root = state.root.clone();
        if due(root.expires, lifetimes.root) {
            if keys.root.is_empty() {
                waiting.push(format!("root expires {} (needs --root-key)", root.expires));
            } else {
                root.expires = expiry(now, lifetimes.root);
                changes.root_version = Some(self.bump_root(&mut root, keys, &[])?);
            }
        }
        let mut snapshot = state.snapshot.clone();
        let mut snapshot_changed = false;
        let targets_expires = state.targets.expires()?;
        if due(targets_expires, lifetimes.targets) {
            match &keys.targets {
                None => waiting.push(format!(
                    "targets expires {targets_expires} (needs --targets-key)"
                )),
                Some(key) => {
                    let targets = state.targets.clone();
                    let expires = expiry(now, lifetimes.targets);
                    changes.targets_version =
                        Some(self.resign_into(&mut snapshot, "targets", targets, key, expires)?);
                    snapshot_changed = true;
                }
            }
        }
        let Some(online) = keys.online.as_ref() else {
            waiting.push("timestamp, snapshot and bins (needs --online-key)".into());
            return Ok((changes, waiting));
        };
        let bins: Vec<String> = BinIndex::new(&state.targets)?.names().collect();
        for bin in &bins {
            let role: Targets = self.read_current(&snapshot, bin)?;
            if due(role.expires, lifetimes.bins) {
                self.resign_into(
                    &mut snapshot,
                    bin,
                    role,
                    online,
                    expiry(now, lifetimes.bins),
                )?;
                changes.bins_signed += 1;
                snapshot_changed = true;
            }
        }
        let snapshot_due = snapshot_changed || due(snapshot.expires, lifetimes.snapshot);
        if snapshot_due
            || due(state.timestamp.expires, lifetimes.timestamp)
            || changes.root_version.is_some()
        {
            let published = if snapshot_due {
                self.publish_snapshot(snapshot, Some(&state.timestamp), online, lifetimes)?
            } else {
                self.publish_timestamp(Some(&state.timestamp), None, online, lifetimes)?
            };
            changes.snapshot_version = published.snapshot_version;
            changes.timestamp_version = published.timestamp_version;
        }
        Ok((changes, waiting))
    }

    /// Replaces the keys of `which` with `new_key` and publishes everything
    /// that names or is signed by them. The new root is signed by the old
    /// root keys (a threshold of them, as given) and the new ones.
    pub fn rotate(
        &self,
        which: KeyRole,
        new_key: &SigningKey,
        keys: &Keys,
        lifetimes: Lifetimes,
    ) -> Result<Changes> {
        let state = self.state()?;
        let now = now();
        let mut root = state.root.clone();
        let mut changes = Changes::default();
        let replace = |root: &mut Root, role: RoleType| {
            if let Some(role_keys) = root.roles.get_mut(&role) {
                role_keys.keyids = vec![new_key.keyid().clone()];
                role_keys.threshold = non_zero(1);
            }
        };
        root.keys
            .insert(new_key.keyid().clone(), new_key.public().clone());
        match which {
            KeyRole::Root => replace(&mut root, RoleType::Root),
            KeyRole::Targets => replace(&mut root, RoleType::Targets),
            KeyRole::Online => {
                replace(&mut root, RoleType::Timestamp);
                replace(&mut root, RoleType::Snapshot);
            }
        }
        prune_unused_keys(&mut root);
        root.expires = expiry(now, lifetimes.root);
        let extra_signers: Vec<&SigningKey> = if which == KeyRole::Root {
            vec![new_key]
        } else {
            vec![]
        };
        changes.root_version = Some(self.bump_root(&mut root, keys, &extra_signers)?);
        if which == KeyRole::Root {
            return Ok(changes);
        }
        let mut snapshot = state.snapshot.clone();
        let mut targets = state.targets.clone();
        let targets_expiry = expiry(now, lifetimes.targets);
        let online = match which {
            KeyRole::Targets => {
                changes.targets_version = Some(self.resign_into(
                    &mut snapshot,
                    "targets",
                    targets,
                    new_key,
                    targets_expiry,
                )?);
                keys.online()?
            }
            _ => {
                let bins: Vec<String> = BinIndex::new(&targets)?.names().collect();
                targets.delegate_to(new_key)?;
                changes.targets_version = Some(self.resign_into(
                    &mut snapshot,
                    "targets",
                    targets,
                    keys.targets()?,
                    targets_expiry,
                )?);
                for bin in &bins {
                    let role: Targets = self.read_current(&snapshot, bin)?;
                    self.resign_into(
                        &mut snapshot,
                        bin,
                        role,
                        new_key,
                        expiry(now, lifetimes.bins),
                    )?;
                }
                changes.bins_signed = bins.len();
                new_key
            }
        };
        let published =
            self.publish_snapshot(snapshot, Some(&state.timestamp), online, lifetimes)?;
        changes.snapshot_version = published.snapshot_version;
        changes.timestamp_version = published.timestamp_version;
        Ok(changes)
    }

    /// Moves every target into `bins` succinct bins (a power of two from 2
    /// to 65,536): a repository that outgrew its bins, or one made with
    /// listed bins. Needs the targets key (a new delegation rule) and the
    /// online key (every new bin). Bins whose name the new rule reuses get
    /// their next version; the old bins stay listed in the snapshot at
    /// their version (a client refuses a snapshot that drops a role), no
    /// longer delegated.
    pub fn rebin(&self, bins: u32, keys: &Keys, lifetimes: Lifetimes) -> Result<Changes> {
        if !bins.is_power_of_two() || !(2..=65_536).contains(&bins) {
            return Err(TrustError::Signer(format!(
                "--bins {bins}: must be a power of two from 2 to 65536"
            )));
        }
        let online = keys.online()?;
        let targets_key = keys.targets()?;
        let state = self.state()?;
        let now = now();
        let mut listed: Vec<(TargetName, Target)> = Vec::new();
        for bin in BinIndex::new(&state.targets)?.names() {
            let role: Targets = self.read_current(&state.snapshot, &bin)?;
            listed.extend(role.targets);
        }
        let mut top = TopTargets::new(
            expiry(now, lifetimes.targets),
            BinStyle::Succinct,
            bins,
            online,
        )?;
        // The new rule replaces the old one: the version goes on.
        top.0["version"] = state.targets.parsed()?.version.get().into();
        let index = BinIndex::new(&top)?;
        let mut by_bin: BTreeMap<String, Targets> = index
            .names()
            .map(|name| (name, Targets::new(SPEC_VERSION.into(), non_zero(1), now)))
            .collect();
        for (name, target) in listed {
            let bin = index.bin_of(name.raw()).ok_or_else(|| {
                TrustError::Signer(format!("no bin is delegated {:?}", name.raw()))
            })?;
            if let Some(role) = by_bin.get_mut(&bin) {
                role.targets.insert(name, target);
            }
        }
        let mut snapshot = state.snapshot.clone();
        let mut changes = Changes::default();
        for (name, mut bin) in by_bin {
            // Reused names continue their version; new ones start at 1.
            let previous = snapshot
                .meta
                .get(&format!("{name}.json"))
                .map_or(0, |meta| meta.version.get());
            if previous == 0 {
                bin.version = non_zero(1);
                bin.expires = expiry(now, lifetimes.bins);
                let meta = self.write_versioned(&name, 1, sign_role(&bin, &[online])?)?;
                snapshot.meta.insert(format!("{name}.json"), meta);
            } else {
                bin.version = non_zero(previous);
                self.resign_into(
                    &mut snapshot,
                    &name,
                    bin,
                    online,
                    expiry(now, lifetimes.bins),
                )?;
            }
            changes.bins_signed += 1;
        }
        changes.targets_version = Some(self.resign_into(
            &mut snapshot,
            "targets",
            top,
            targets_key,
            expiry(now, lifetimes.targets),
        )?);
        let published =
            self.publish_snapshot(snapshot, Some(&state.timestamp), online, lifetimes)?;
        changes.snapshot_version = published.snapshot_version;
        changes.timestamp_version = published.timestamp_version;
        Ok(changes)
    }

    /// Writes the next root version signed by `keys.root` and `extra`.
    fn bump_root(&self, root: &mut Root, keys: &Keys, extra: &[&SigningKey]) -> Result<u64> {
        let version = root.version.get() + 1;
        root.version = non_zero(version);
        let mut signers = keys.root()?;
        signers.extend_from_slice(extra);
        self.write_root(root, &signers)?;
        Ok(version)
    }

    fn write_root(&self, root: &Root, signers: &[&SigningKey]) -> Result<()> {
        let bytes = sign_role(root, signers)?;
        self.write_versioned("root", root.version.get(), bytes.clone())?;
        // The newest root under its plain name too, for installing a client.
        write_atomically(&self.metadata_dir().join("root.json"), &bytes)
    }

    /// Bumps `role`'s version, signs it and records it in `snapshot`.
    fn resign_into(
        &self,
        snapshot: &mut Snapshot,
        name: &str,
        mut role: impl TargetsRole,
        key: &SigningKey,
        expires: jiff::Timestamp,
    ) -> Result<u64> {
        let version = role.renew(expires)?;
        let meta = self.write_versioned(name, version, role.sign(key)?)?;
        snapshot.meta.insert(format!("{name}.json"), meta);
        Ok(version)
    }

    /// Writes the next snapshot (version 1 when there is no `previous`
    /// timestamp, a new repository) and the timestamp naming it.
    fn publish_snapshot(
        &self,
        mut snapshot: Snapshot,
        previous: Option<&Timestamp>,
        online: &SigningKey,
        lifetimes: Lifetimes,
    ) -> Result<Changes> {
        let version = previous.map_or(1, |_| snapshot.version.get() + 1);
        snapshot.version = non_zero(version);
        snapshot.expires = expiry(now(), lifetimes.snapshot);
        let bytes = sign_role(&snapshot, &[online])?;
        self.write_versioned("snapshot", version, bytes.clone())?;
        let mut changes =
            self.publish_timestamp(previous, Some((version, &bytes)), online, lifetimes)?;
        changes.snapshot_version = Some(version);
        Ok(changes)
    }

    /// Removes what no client can need any more: metadata versions older
    /// than the current one of their role, and target files that no
    /// current bin lists, when they were written more than `keep` ago (a
    /// client that fetched the previous timestamp may still ask for the
    /// snapshot, bins and targets it names a moment later). Root versions
    /// are never removed: clients walk every one of them to rotate.
    pub fn prune(&self, keep: std::time::Duration) -> Result<Pruned> {
        let state = self.state()?;
        let snapshot_version = state.snapshot.version.get();
        let current: HashMap<String, u64> = state
            .snapshot
            .meta
            .iter()
            .filter_map(|(file, meta)| {
                let role = file.strip_suffix(".json")?;
                Some((quote_segment(role), meta.version.get()))
            })
            .chain([("snapshot".to_string(), snapshot_version)])
            .collect();
        let cutoff = std::time::SystemTime::now()
            .checked_sub(keep)
            .unwrap_or(std::time::UNIX_EPOCH);
        let old_enough = |path: &Path| {
            std::fs::metadata(path)
                .and_then(|m| m.modified())
                .is_ok_and(|modified| modified < cutoff)
        };
        let mut pruned = Pruned::default();
        let dir = self.metadata_dir();
        for entry in std::fs::read_dir(&dir).map_err(|e| TrustError::io(&dir, e))? {
            let path = entry.map_err(|e| TrustError::io(&dir, e))?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let Some((version, role)) = name
                .strip_suffix(".json")
                .and_then(|stem| stem.split_once('.'))
                .and_then(|(v, role)| Some((v.parse::<u64>().ok()?, role)))
            else {
                continue;
            };
            let superseded = current.get(role).is_some_and(|&now| version < now);
            if role != "root" && superseded && old_enough(&path) {
                std::fs::remove_file(&path).map_err(|e| TrustError::io(&path, e))?;
                pruned.metadata += 1;
            }
        }
        let mut listed: HashSet<String> = HashSet::new();
        let index = BinIndex::new(&state.targets)?;
        for role in std::iter::once("targets".to_string()).chain(index.names()) {
            let targets: crate::schema::Targets = if role == "targets" {
                state.targets.parsed()?
            } else {
                self.read_current(&state.snapshot, &role)?
            };
            listed.extend(
                targets
                    .targets
                    .values()
                    .filter_map(|t| t.hashes.sha256())
                    .map(hex::encode),
            );
        }
        let mut dirs = vec![self.targets_dir()];
        while let Some(dir) = dirs.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(TrustError::io(&dir, e)),
            };
            for entry in entries {
                let path = entry.map_err(|e| TrustError::io(&dir, e))?.path();
                if path.is_dir() {
                    dirs.push(path);
                    continue;
                }
                let hash = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.split_once('.'))
                    .map(|(hash, _)| hash);
                let Some(hash) = hash else { continue };
                if hash.len() == 64 && !listed.contains(hash) && old_enough(&path) {
                    std::fs::remove_file(&path).map_err(|e| TrustError::io(&path, e))?;
                    pruned.targets += 1;
                }
            }
        }
        Ok(pruned)
    }

    /// Writes the next timestamp, naming `snapshot` (version and bytes) or
    /// else the snapshot the previous one names.
    fn publish_timestamp(
        &self,
        previous: Option<&Timestamp>,
        snapshot: Option<(u64, &[u8])>,
        online: &SigningKey,
        lifetimes: Lifetimes,
    ) -> Result<Changes> {
        let expires = expiry(now(), lifetimes.timestamp);
        let mut timestamp = previous
            .cloned()
            .unwrap_or_else(|| Timestamp::new(SPEC_VERSION.into(), non_zero(1), expires));
        let version = previous.map_or(1, |t| t.version.get() + 1);
        timestamp.version = non_zero(version);
        timestamp.expires = expires;
        if let Some((snapshot_version, bytes)) = snapshot {
            let meta = metafile(snapshot_version, bytes);
            timestamp.meta = HashMap::from([("snapshot.json".to_string(), meta)]);
        }
        let path = self.metadata_dir().join("timestamp.json");
        write_atomically(&path, &sign_role(&timestamp, &[online])?)?;
        Ok(Changes {
            timestamp_version: Some(version),
            ..Changes::default()
        })
    }

    /// Writes `VERSION.NAME.json`; returns its entry for the snapshot.
    fn write_versioned(&self, role: &str, version: u64, bytes: Vec<u8>) -> Result<Metafile> {
        let path = self
            .metadata_dir()
            .join(format!("{version}.{}.json", quote_segment(role)));
        write_atomically(&path, &bytes)?;
        Ok(metafile(version, &bytes))
    }

    fn read_signed<T: DeserializeOwned>(&self, file: &str) -> Result<T> {
        let path = self.metadata_dir().join(file);
        let bytes = std::fs::read(&path).map_err(|e| TrustError::io(&path, e))?;
        let signed: Signed<T> = serde_json::from_slice(&bytes)
            .map_err(|e| TrustError::Signer(format!("{}: {e}", path.display())))?;
        Ok(signed.signed)
    }

    /// The version of `role` that `snapshot` names.
    fn read_current<T: DeserializeOwned>(&self, snapshot: &Snapshot, role: &str) -> Result<T> {
        let version = snapshot
            .meta
            .get(&format!("{role}.json"))
            .ok_or_else(|| TrustError::NotInSnapshot { role: role.into() })?
            .version;
        self.read_signed(&format!("{version}.{}.json", quote_segment(role)))
    }

    fn state(&self) -> Result<State> {
        let timestamp: Timestamp = self.read_signed("timestamp.json")?;
        let snapshot_version = crate::trusted::snapshot_meta(&timestamp)?.version;
        let snapshot: Snapshot = self.read_signed(&format!("{snapshot_version}.snapshot.json"))?;
        let targets = TopTargets(self.read_current(&snapshot, "targets")?);
        let root = self.read_signed("root.json")?;
        Ok(State {
            root,
            targets,
            snapshot,
            timestamp,
        })
    }
}

/// A targets role the signer re-signs: a bin (`tough`'s type) or the
/// top-level role.
trait TargetsRole {
    /// Sets the next version and `expires`; returns the version.
    fn renew(&mut self, expires: jiff::Timestamp) -> Result<u64>;
    fn sign(&self, key: &SigningKey) -> Result<Vec<u8>>;
}

impl TargetsRole for Targets {
    fn renew(&mut self, expires: jiff::Timestamp) -> Result<u64> {
        let version = self.version.get() + 1;
        self.version = non_zero(version);
        self.expires = expires;
        Ok(version)
    }

    fn sign(&self, key: &SigningKey) -> Result<Vec<u8>> {
        sign_role(self, &[key])
    }
}

/// The top-level targets role's `signed` object, kept as JSON: `tough`'s
/// type cannot express TAP 15 `succinct_roles`, and re-signing must keep
/// every field it does not change. It lists no targets of its own.
#[derive(Clone)]
struct TopTargets(serde_json::Value);

impl TopTargets {
    /// Top-level targets delegating every path to `bins` bins signed by
    /// `online`.
    fn new(
        expires: jiff::Timestamp,
        style: BinStyle,
        bins: u32,
        online: &SigningKey,
    ) -> Result<Self> {
        let keyid = json(online.keyid())?;
        let delegations = match style {
            BinStyle::Succinct => serde_json::json!({
                "keys": { keyid.as_str().unwrap_or_default(): json(online.public())? },
                "succinct_roles": {
                    "keyids": [keyid],
                    "threshold": 1,
                    "bit_length": bins.trailing_zeros(),
                    "name_prefix": BIN_PREFIX,
                },
            }),
            BinStyle::Listed => json(&listed_delegations(bins, online)?)?,
        };
        Ok(TopTargets(serde_json::json!({
            "_type": "targets",
            "spec_version": SPEC_VERSION,
            "version": 1,
            "expires": expires.to_string(),
            "targets": {},
            "delegations": delegations,
        })))
    }

    /// As the client reads it.
    fn parsed(&self) -> Result<crate::schema::Targets> {
        serde_json::from_value(self.0.clone())
            .map_err(|e| TrustError::Signer(format!("top-level targets: {e}")))
    }

    fn expires(&self) -> Result<jiff::Timestamp> {
        Ok(self.parsed()?.expires)
    }

    /// Makes `key` the only key of every bin (an online key rotation).
    fn delegate_to(&mut self, key: &SigningKey) -> Result<()> {
        let keyid = json(key.keyid())?;
        let delegations = self
            .0
            .get_mut("delegations")
            .and_then(|d| d.as_object_mut())
            .ok_or_else(|| TrustError::Signer("targets delegates no bins".into()))?;
        let mut keys = serde_json::Map::new();
        keys.insert(
            keyid.as_str().unwrap_or_default().to_string(),
            json(key.public())?,
        );
        delegations.insert("keys".into(), keys.into());
        if let Some(succinct) = delegations
            .get_mut("succinct_roles")
            .and_then(|r| r.as_object_mut())
        {
            succinct.insert("keyids".into(), serde_json::json!([keyid]));
        }
        if let Some(roles) = delegations.get_mut("roles").and_then(|r| r.as_array_mut()) {
            for role in roles.iter_mut().filter_map(|r| r.as_object_mut()) {
                role.insert("keyids".into(), serde_json::json!([keyid]));
            }
        }
        Ok(())
    }
}

impl TargetsRole for TopTargets {
    fn renew(&mut self, expires: jiff::Timestamp) -> Result<u64> {
        let version = self.parsed()?.version.get() + 1;
        self.0["version"] = version.into();
        self.0["expires"] = expires.to_string().into();
        Ok(version)
    }

    fn sign(&self, key: &SigningKey) -> Result<Vec<u8>> {
        sign_role(&self.0, &[key])
    }
}

fn json(value: &impl serde::Serialize) -> Result<serde_json::Value> {
    serde_json::to_value(value).map_err(|e| TrustError::Signer(format!("encoding metadata: {e}")))
}

/// Bins listed by `path_hash_prefixes`: bin `i` of N holds the prefixes
/// `i * per_bin .. (i + 1) * per_bin` of the fewest hex digits that give
/// every bin one, and is named `bin-{i:0digits x}`.
fn listed_delegations(bins: u32, online: &SigningKey) -> Result<Delegations> {
    let mut digits = 1;
    while 16u64.pow(digits) < u64::from(bins) {
        digits += 1;
    }
    let width = digits as usize;
    let per_bin = (16u64.pow(digits) / u64::from(bins)) as u32;
    let mut delegations = Delegations::new();
    delegations
        .keys
        .insert(online.keyid().clone(), online.public().clone());
    for index in 0..bins {
        let first = index * per_bin;
        let prefixes = (first..first + per_bin)
            .map(|p| PathHashPrefix::new(format!("{p:0width$x}")))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| TrustError::Signer(format!("hash prefix: {e}")))?;
        delegations.roles.push(DelegatedRole {
            name: format!("bin-{index:0width$x}"),
            keyids: vec![online.keyid().clone()],
            threshold: non_zero(1),
            paths: PathSet::PathHashPrefixes(prefixes),
            terminating: true,
            targets: None,
        });
    }
    Ok(delegations)
}

/// Which bin a path belongs to, read back from the signed delegations.
enum BinIndex {
    Succinct(SuccinctRoles),
    Listed {
        digits: usize,
        by_prefix: HashMap<String, String>,
        names: Vec<String>,
    },
}

impl BinIndex {
    fn new(targets: &TopTargets) -> Result<Self> {
        let Some(delegations) = targets.parsed()?.delegations else {
            return Ok(BinIndex::Listed {
                digits: 0,
                by_prefix: HashMap::new(),
                names: Vec::new(),
            });
        };
        if let Some(succinct) = delegations.succinct_roles {
            return Ok(BinIndex::Succinct(succinct));
        }
        let mut by_prefix = HashMap::new();
        let mut digits = 0;
        let mut names = Vec::with_capacity(delegations.roles.len());
        for role in delegations.roles {
            let PathSet::PathHashPrefixes(prefixes) = &role.paths else {
                return Err(TrustError::Signer(format!(
                    "role {} is not a hashed bin; this signer only maintains hashed bins",
                    role.name
                )));
            };
            for prefix in prefixes {
                digits = prefix.value().len();
                by_prefix.insert(prefix.value().to_string(), role.name.clone());
            }
            names.push(role.name);
        }
        Ok(BinIndex::Listed {
            digits,
            by_prefix,
            names,
        })
    }

    fn bin_of(&self, path: &str) -> Option<String> {
        match self {
            BinIndex::Succinct(succinct) => Some(succinct.role_for(path)),
            BinIndex::Listed {
                digits, by_prefix, ..
            } => by_prefix.get(&path_digest(path)[..*digits]).cloned(),
        }
    }

    fn names(&self) -> Box<dyn Iterator<Item = String> + '_> {
        match self {
            BinIndex::Succinct(succinct) => Box::new(succinct.names()),
            BinIndex::Listed { names, .. } => Box::new(names.iter().cloned()),
        }
    }
}

fn prune_unused_keys(root: &mut Root) {
    let used: Vec<Decoded<Hex>> = root
        .roles
        .values()
        .flat_map(|r| r.keyids.iter().cloned())
        .collect();
    root.keys.retain(|id, _| used.contains(id));
}

fn target_entry(target: &NewTarget) -> Target {
    Target {
        length: target.length,
        hashes: Hashes {
            sha256: target.sha256.to_vec().into(),
            _extra: HashMap::new(),
        },
        custom: HashMap::new(),
        _extra: HashMap::new(),
    }
}

/// A snapshot or timestamp entry for `bytes`: version, length and SHA-256.
/// With the hash a client can take the file from any peer by its digest
/// (content-addressed, like any blob) and still know it is the one the
/// entry names; without it only the repository's own URL would do.
fn metafile(version: u64, bytes: &[u8]) -> Metafile {
    Metafile {
        length: Some(bytes.len() as u64),
        hashes: Some(Hashes {
            sha256: crate::client::sha256(bytes).to_vec().into(),
            _extra: HashMap::new(),
        }),
        version: non_zero(version),
        _extra: HashMap::new(),
    }
}

fn non_zero(n: u64) -> NonZeroU64 {
    NonZeroU64::new(n.max(1)).unwrap_or(NonZeroU64::MIN)
}

fn now() -> jiff::Timestamp {
    jiff::Timestamp::now()
}

/// `now + lifetime`, in whole seconds (python-tuf refuses fractions).
fn expiry(now: jiff::Timestamp, lifetime: jiff::SignedDuration) -> jiff::Timestamp {
    let seconds = now.as_second().saturating_add(lifetime.as_secs());
    jiff::Timestamp::from_second(seconds).unwrap_or(jiff::Timestamp::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_are_sized_for_the_targets_expected() {
        assert_eq!(bins_for(10_000), 256);
        assert_eq!(bins_for(1_000), 64);
        assert_eq!(bins_for(100_000), 1_024);
        assert_eq!(bins_for(0), 2);
        assert_eq!(bins_for(u64::MAX), 65_536);
        assert_eq!(bins_for(DEFAULT_EXPECTED_TARGETS), DEFAULT_BINS);
    }
}
