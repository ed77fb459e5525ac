//! The TUF client workflow over a metadata directory and a fetcher: refresh
//! (root rotation, timestamp, snapshot, top-level targets), lazy target
//! lookup (a pre-order walk that loads only the delegated roles on the
//! target's path) and bounded, verified target download.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tough::schema::Metafile;
use url::Url;

use crate::datastore::{quote_segment, write_atomically, MetadataDir};
use crate::error::{Result, TrustError};
use crate::fetch::{fetch_failed, Fetch, FetchError};
use crate::schema::{TargetFile, TargetHashes, Targets};
use crate::trusted::{snapshot_meta, TimestampUpdate, TrustedSet, ROOT, TARGETS};

/// Download limits and walk bounds. The metadata limits apply where the
/// repository signed no length.
#[derive(Debug, Clone)]
pub struct Limits {
    pub root_bytes: u64,
    pub timestamp_bytes: u64,
    pub snapshot_bytes: u64,
    pub targets_bytes: u64,
    /// Root versions fetched in one refresh at most.
    pub max_root_rotations: u64,
    /// Targets roles visited in one lookup at most.
    pub max_delegations: usize,
}

impl Default for Limits {
    /// The reference implementation's defaults.
    fn default() -> Self {
        Limits {
            root_bytes: 512_000,
            timestamp_bytes: 16_384,
            snapshot_bytes: 2_000_000,
            targets_bytes: 5_000_000,
            max_root_rotations: 256,
            max_delegations: 32,
        }
    }
}

/// A target as trusted metadata describes it.
#[derive(Debug, Clone)]
pub struct TargetInfo {
    pub path: String,
    pub length: u64,
    pub hashes: TargetHashes,
}

impl TargetInfo {
    fn new(path: &str, target: &TargetFile) -> Self {
        TargetInfo {
            path: path.to_string(),
            length: target.length,
            hashes: target.hashes.clone(),
        }
    }

    /// The signed SHA-256 of the target, if the repository listed one.
    pub fn sha256(&self) -> Option<[u8; 32]> {
        self.hashes.sha256()
    }

    /// Whether `bytes` are this target: its signed length and every
    /// signed digest.
    pub fn verify(&self, bytes: &[u8]) -> Result<()> {
        if bytes.len() as u64 != self.length {
            return Err(TrustError::LengthOrHash {
                what: self.path.clone(),
            });
        }
        self.hashes.check(&self.path, bytes)
    }
}

/// A TUF client bound to one repository and one metadata directory.
pub struct Client<F> {
    store: MetadataDir,
    fetcher: F,
    metadata_url: Url,
    limits: Limits,
    /// The latest time this client has seen: expiry is judged against the
    /// later of this and the system clock, so a clock stepped back cannot
    /// revive expired metadata within one process.
    latest_time: jiff::Timestamp,
    /// Where the latest time is kept across restarts, if anywhere.
    clock_file: Option<PathBuf>,
    set: Option<TrustedSet>,
    /// Where the timestamp of the last refresh came from (or was asked
    /// for, when the refresh failed).
    timestamp_source: TimestampSource,
}

/// Where the trusted timestamp came from in the last refresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimestampSource {
    /// The repository's URL (the signer).
    #[default]
    Repository,
    /// The repository could not be reached, so peers were asked: the
    /// timestamp is a peer's copy (the newest that verified) or the one
    /// already trusted when no peer had a newer one.
    Peers,
}

impl<F: Fetch> Client<F> {
    /// A client over `store`, which must hold a trusted `root.json`.
    pub fn new(store: MetadataDir, fetcher: F, metadata_url: &Url, limits: Limits) -> Result<Self> {
        let root_file = store.file(ROOT);
        if !root_file.exists() {
            return Err(TrustError::NoRoot { path: root_file });
        }
        Ok(Client {
            store,
            fetcher,
            metadata_url: with_trailing_slash(metadata_url),
            limits,
            latest_time: jiff::Timestamp::UNIX_EPOCH,
            clock_file: None,
            set: None,
            timestamp_source: TimestampSource::default(),
        })
    }

    /// Keeps the latest time seen in `file` (seconds since the epoch), so
    /// that a node restarted with its clock set back still refuses what
    /// had expired. Not for the conformance CLI: the reference client keeps
    /// no such state, and the suite moves the clock forward for one run
    /// only.
    pub fn with_clock_file(mut self, file: PathBuf) -> Result<Self> {
        match std::fs::read_to_string(&file) {
            Ok(text) => {
                let seconds: i64 = text.trim().parse().map_err(|_| {
                    TrustError::malformed(
                        "clock",
                        format!("{}: not a number of seconds", file.display()),
                    )
                })?;
                let floor = jiff::Timestamp::from_second(seconds)
                    .map_err(|e| TrustError::malformed("clock", e))?;
                self.latest_time = self.latest_time.max(floor);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(TrustError::io(&file, e)),
        }
        self.clock_file = Some(file);
        Ok(self)
    }

    /// The trusted metadata after the last successful refresh.
    pub fn trusted(&self) -> Option<&TrustedSet> {
        self.set.as_ref()
    }

    /// The time expiry is judged against: the later of the system clock
    /// and the latest time this client has seen (kept across restarts
    /// with [`Client::with_clock_file`]).
    pub fn latest_time(&mut self) -> jiff::Timestamp {
        self.now()
    }

    /// Where the timestamp of the last refresh came from.
    pub fn timestamp_source(&self) -> TimestampSource {
        self.timestamp_source
    }

    fn now(&mut self) -> jiff::Timestamp {
        self.latest_time = self.latest_time.max(jiff::Timestamp::now());
        self.latest_time
    }

    /// Brings root, timestamp, snapshot and top-level targets up to date.
    /// What was verified before a failing step stays persisted (a rotated
    /// root, say). When the repository could not be reached, the metadata
    /// trusted before stays in use for lookups until it expires (a node
    /// keeps serving through a signer outage, within the timestamp's
    /// expiry); any other failure leaves nothing trusted until the next
    /// successful refresh.
    pub async fn refresh(&mut self) -> Result<()> {
        let outcome = self.fresh_set().await;
        match outcome {
            Ok(set) => {
                self.set = Some(set);
                if let Some(file) = &self.clock_file {
                    write_atomically(file, self.latest_time.as_second().to_string().as_bytes())?;
                }
                Ok(())
            }
            Err(e) => {
                // A failed refresh abandons the update, not the trust: the
                // set trusted before stays valid until it expires, so one
                // garbage response cannot stop a node serving through a
                // signer outage. Only a root rotated meanwhile (new keys,
                // perhaps revoking the old ones) drops it.
                if self.root_rotated_since_set() {
                    self.set = None;
                }
                Err(e)
            }
        }
    }

    /// Whether the stored root is newer than the trusted set's.
    fn root_rotated_since_set(&mut self) -> bool {
        let Some(trusted) = self.set.as_ref().map(|s| s.root().version) else {
            return false;
        };
        let now = self.now();
        let stored = self.store.read(ROOT).ok().flatten();
        let version = stored.and_then(|root| TrustedSet::new(&root, now).ok());
        // An unreadable stored root is no basis to keep trusting either.
        version.is_none_or(|v| v.root().version > trusted)
    }

    async fn fresh_set(&mut self) -> Result<TrustedSet> {
        let root = self.store.read(ROOT)?.ok_or_else(|| TrustError::NoRoot {
            path: self.store.file(ROOT),
        })?;
        let mut set = TrustedSet::new(&root, self.now())?;
        self.timestamp_source = TimestampSource::Repository;
        let unreachable = self.rotate_root(&mut set).await?;
        self.load_timestamp(&mut set, unreachable).await?;
        self.load_snapshot(&mut set).await?;
        self.load_targets(&mut set, TARGETS, ROOT).await?;
        Ok(set)
    }

    /// Rotates the trusted root as far as the repository has new roots.
    /// `Ok(Some(error))`: the repository could not be reached, so no
    /// rotation could be seen; the refresh may go on with a timestamp from
    /// peers (see `timestamp_from_peers`), and fails with `error` without one.
    async fn rotate_root(&self, set: &mut TrustedSet) -> Result<Option<TrustError>> {
        let first = set.root().version.get() + 1;
        let mut unreachable = None;
        for version in first..first + self.limits.max_root_rotations {
            let url = self.metadata_file_url(ROOT, Some(version))?;
            match self.fetcher.fetch(&url, self.limits.root_bytes).await {
                Ok(bytes) => {
                    set.update_root(&bytes)?;
                    self.store.write(ROOT, &bytes)?;
                }
                Err(FetchError::NotFound) => break,
                Err(e @ FetchError::Other(_)) => {
                    unreachable = Some(fetch_failed("root", &url, e));
                    break;
                }
                Err(e) => return Err(fetch_failed("root", &url, e)),
            }
        }
        set.check_root_fresh()?;
        Ok(unreachable)
    }

    /// `unreachable`: the repository could not be reached for the root
    /// rotation; the timestamp is then asked of peers only.
    async fn load_timestamp(
        &mut self,
        set: &mut TrustedSet,
        unreachable: Option<TrustError>,
    ) -> Result<()> {
        if let Some(local) = self.store.read("timestamp")? {
            // The stored timestamp is a reference against rollback even when
            // it has expired; if the keys rotated it no longer verifies and
            // is ignored (fast-forward recovery).
            if let Err(e) = set.update_timestamp(&local) {
                tracing::debug!(error = %e, "stored timestamp is not final");
            }
        }
        if let Some(unreachable) = unreachable {
            return self.timestamp_from_peers(set, unreachable).await;
        }
        let url = self.metadata_file_url("timestamp", None)?;
        let bytes = match self.fetcher.fetch(&url, self.limits.timestamp_bytes).await {
            Ok(bytes) => bytes,
            Err(e) => {
                let unreachable = fetch_failed("timestamp", &url, e);
                return self.timestamp_from_peers(set, unreachable).await;
            }
        };
        if set.update_timestamp(&bytes)? == TimestampUpdate::Updated {
            self.store.write("timestamp", &bytes)?;
        }
        Ok(())
    }

    /// The repository could not be reached (`unreachable`): takes the
    /// newest timestamp peers hold that verifies under the trusted root and
    /// is not older than the trusted one. Freshness is then bounded by that
    /// timestamp's expiry alone, which is what the repository's own copy
    /// would bound it by; a peer can withhold a newer timestamp, not forge
    /// or roll one back. Without one, the refresh fails with `unreachable`.
    /// A root rotated during the outage is seen once the repository is
    /// back: until then the trusted root decides.
    async fn timestamp_from_peers(
        &mut self,
        set: &mut TrustedSet,
        unreachable: TrustError,
    ) -> Result<()> {
        self.timestamp_source = TimestampSource::Peers;
        let mut candidates = self
            .fetcher
            .timestamps_from_peers(self.limits.timestamp_bytes)
            .await;
        // Newest claimed version first: an older one can only fail the
        // rollback check after a newer one verified.
        candidates.sort_by_key(|bytes| std::cmp::Reverse(claimed_version(bytes)));
        candidates.dedup();
        let offered = candidates.len();
        for bytes in candidates {
            match set.update_timestamp(&bytes) {
                Ok(update) => {
                    if update == TimestampUpdate::Updated {
                        self.store.write("timestamp", &bytes)?;
                    }
                    tracing::warn!(
                        error = %unreachable,
                        version = set.timestamp().map(|t| t.version.get()),
                        "the repository cannot be reached: using the newest valid timestamp peers hold"
                    );
                    return Ok(());
                }
                // A newer one that verifies but has expired is the answer:
                // the metadata has expired, whoever else holds what.
                Err(e @ TrustError::Expired { .. }) => return Err(e),
                Err(e) => tracing::debug!(error = %e, "a peer's timestamp was refused"),
            }
        }
        if offered > 0 {
            tracing::debug!(offered, "no timestamp from peers verified");
        }
        Err(unreachable)
    }

    async fn load_snapshot(&self, set: &mut TrustedSet) -> Result<()> {
        if let Some(local) = self.store.read("snapshot")? {
            match set.update_snapshot(&local, true) {
                Ok(()) => return Ok(()),
                Err(e) => tracing::debug!(error = %e, "stored snapshot is not final"),
            }
        }
        let timestamp = set
            .timestamp()
            .ok_or(TrustError::NotRefreshed("timestamp"))?;
        let meta = snapshot_meta(timestamp)?.clone();
        let version = set.root().consistent_snapshot.then(|| meta.version.get());
        let url = self.metadata_file_url("snapshot", version)?;
        let bytes = self
            .fetch_listed(&url, &meta, self.limits.snapshot_bytes)
            .await
            .map_err(|e| fetch_failed("snapshot", &url, e))?;
        set.update_snapshot(&bytes, false)?;
        self.store.write("snapshot", &bytes)
    }

    /// Loads `role` (stored copy if it is still the one the snapshot names,
    /// otherwise from the repository) unless this refresh already has it
    /// verified by `delegator`'s keys.
    async fn load_targets(&self, set: &mut TrustedSet, role: &str, delegator: &str) -> Result<()> {
        if set.trusted_through(role, delegator)? {
            return Ok(());
        }
        if let Some(local) = self.store.read(role)? {
            match set.update_targets(&local, role, delegator) {
                Ok(()) => return Ok(()),
                Err(e) => tracing::debug!(role, error = %e, "stored targets metadata is not final"),
            }
        }
        let entry = set
            .snapshot_entry(role)
            .ok_or_else(|| TrustError::NotInSnapshot { role: role.into() })?
            .clone();
        let version = set.root().consistent_snapshot.then(|| entry.version.get());
        let url = self.metadata_file_url(role, version)?;
        let bytes = self
            .fetch_listed(&url, &entry, self.limits.targets_bytes)
            .await
            .map_err(|e| fetch_failed(role, &url, e))?;
        set.update_targets(&bytes, role, delegator)?;
        self.store.write(role, &bytes)
    }

    /// Fetches the file a timestamp or snapshot entry names: by its digest
    /// where the entry gives length and SHA-256 (so a fetcher may take it
    /// from anyone who holds those bytes), else from `url`, reading at most
    /// the listed length or `default_limit`.
    async fn fetch_listed(
        &self,
        url: &Url,
        entry: &Metafile,
        default_limit: u64,
    ) -> std::result::Result<Vec<u8>, FetchError> {
        let sha256 = entry
            .hashes
            .as_ref()
            .and_then(|h| <[u8; 32]>::try_from(h.sha256.as_ref()).ok());
        match (sha256, entry.length) {
            (Some(sha256), Some(length)) => self.fetcher.fetch_hashed(url, length, sha256).await,
            _ => {
                let limit = entry.length.unwrap_or(default_limit);
                self.fetcher.fetch(url, limit).await
            }
        }
    }

    /// Finds `target` by walking delegations in pre-order from the
    /// top-level targets, loading only roles trusted for its path, stopping
    /// at a terminating delegation and after `max_delegations` roles.
    /// `Ok(None)`: no trusted role lists it.
    pub async fn lookup(&mut self, target: &str) -> Result<Option<TargetInfo>> {
        let now = self.now();
        let mut set = self.set.take().ok_or(TrustError::NotRefreshed("targets"))?;
        // Expired since the last refresh: the set is dropped, nothing is
        // trusted until a refresh succeeds.
        set.check_current(now)?;
        let found = self.walk(&mut set, target).await;
        self.set = Some(set);
        found
    }

    async fn walk(&self, set: &mut TrustedSet, target: &str) -> Result<Option<TargetInfo>> {
        let mut to_visit: Vec<(String, String)> = vec![(TARGETS.into(), ROOT.into())];
        let mut visited: Vec<String> = Vec::new();
        while visited.len() < self.limits.max_delegations {
            let Some((role, delegator)) = to_visit.pop() else {
                break;
            };
            if visited.contains(&role) {
                continue;
            }
            self.load_targets(set, &role, &delegator).await?;
            let targets: &Targets = set
                .targets(&role)
                .ok_or(TrustError::NotRefreshed("targets"))?;
            if let Some(found) = targets.targets.get(target) {
                return Ok(Some(TargetInfo::new(target, found)));
            }
            let mut children = Vec::new();
            for (child, terminating) in set.delegated_for(&role, target) {
                children.push((child, role.clone()));
                if terminating {
                    to_visit.clear();
                    break;
                }
            }
            visited.push(role);
            to_visit.extend(children.into_iter().rev());
        }
        Ok(None)
    }

    /// Downloads `info` from `base_url` into `dir` (as one file named by
    /// the quoted target path), unless a verified copy is already there.
    /// Reads at most the signed length; writes only verified bytes.
    pub async fn download(&self, info: &TargetInfo, base_url: &Url, dir: &Path) -> Result<PathBuf> {
        let path = dir.join(quote_segment(&info.path));
        if let Ok(existing) = std::fs::read(&path) {
            if info.verify(&existing).is_ok() {
                return Ok(path);
            }
        }
        let consistent = self
            .set
            .as_ref()
            .ok_or(TrustError::NotRefreshed("root"))?
            .root()
            .consistent_snapshot;
        let url = target_url(base_url, info, consistent)?;
        let bytes = self
            .fetcher
            .fetch(&url, info.length)
            .await
            .map_err(|e| fetch_failed(&info.path, &url, e))?;
        info.verify(&bytes)?;
        write_atomically(&path, &bytes)?;
        Ok(path)
    }

    fn metadata_file_url(&self, role: &str, version: Option<u64>) -> Result<Url> {
        let name = quote_segment(role);
        let file = match version {
            Some(v) => format!("{v}.{name}.json"),
            None => format!("{name}.json"),
        };
        self.metadata_url
            .join(&file)
            .map_err(|e| TrustError::malformed(role, format!("no URL for it: {e}")))
    }
}

/// Where a target is published: `base/path`, or with consistent snapshots
/// `base/dir/HASH.name` (the SHA-256, the directory kept).
pub fn target_url(base: &Url, info: &TargetInfo, consistent: bool) -> Result<Url> {
    let path = if consistent {
        let digest = info
            .hashes
            .for_file_name()
            .map(hex::encode)
            .ok_or_else(|| TrustError::malformed(&info.path, "no hash to name its file by"))?;
        match info.path.rsplit_once('/') {
            Some((dir, name)) => format!("{dir}/{digest}.{name}"),
            None => format!("{digest}.{}", info.path),
        }
    } else {
        info.path.clone()
    };
    let base = with_trailing_slash(base);
    Url::parse(&format!("{base}{path}"))
        .map_err(|e| TrustError::malformed(&info.path, format!("no URL for it: {e}")))
}

fn with_trailing_slash(url: &Url) -> Url {
    let mut url = url.clone();
    if !url.path().ends_with('/') {
        url.set_path(&format!("{}/", url.path()));
    }
    url
}

/// The version a metadata file claims, unverified (0 when it does not
/// parse): only to order candidates before verifying them.
fn claimed_version(bytes: &[u8]) -> u64 {
    #[derive(serde::Deserialize)]
    struct Claim {
        signed: Version,
    }
    #[derive(serde::Deserialize)]
    struct Version {
        version: u64,
    }
    serde_json::from_slice::<Claim>(bytes).map_or(0, |c| c.signed.version)
}

/// The SHA-256 of `bytes`, for callers that hold bytes and a `TargetInfo`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}
