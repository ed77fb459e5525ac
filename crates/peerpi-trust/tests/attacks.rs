//! Each TUF attack class against the client, over real HTTP on loopback,
//! against a repository made by the signer and then tampered with on disk.
//! Every test also checks that nothing was trusted (persisted) afterwards.
//! A fresh `Client` per refresh is a restart: rollback protection must come
//! from the metadata directory alone.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::path::PathBuf;
use std::time::Duration;

use peerpi_testkit::repo_server::RepoServer;
use peerpi_trust::keys::{sign_role, SigningKey};
use peerpi_trust::signer::{InitOptions, KeyRole, Keys, Lifetimes, NewTarget, Repository};
use peerpi_trust::{Client, HttpFetcher, Limits, MetadataDir, TrustError};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use url::Url;

struct Fixture {
    dir: TempDir,
    server: RepoServer,
}

impl Fixture {
    async fn new(bins: u32) -> Self {
        Self::with(InitOptions {
            bins,
            ..InitOptions::default()
        })
        .await
    }

    async fn with(options: InitOptions) -> Self {
        let dir = tempfile::tempdir().unwrap();
        Repository::init(&dir.path().join("repo"), &dir.path().join("keys"), &options).unwrap();
        std::fs::create_dir_all(dir.path().join("client")).unwrap();
        std::fs::copy(
            dir.path().join("repo/metadata/1.root.json"),
            dir.path().join("client/root.json"),
        )
        .unwrap();
        let server = RepoServer::start(&dir.path().join("repo")).await.unwrap();
        Fixture { dir, server }
    }

    fn key(&self, name: &str) -> SigningKey {
        SigningKey::load(&self.dir.path().join("keys").join(name)).unwrap()
    }

    fn keys(&self) -> Keys {
        Keys {
            root: vec![self.key("root-1.pk8")],
            targets: Some(self.key("targets.pk8")),
            online: Some(self.key("online.pk8")),
        }
    }

    fn repo(&self) -> Repository {
        Repository::open(&self.dir.path().join("repo")).unwrap()
    }

    /// Publishes `bytes` as target `path` (bytes under their consistent name).
    fn add(&self, path: &str, bytes: &[u8]) {
        let sha256: [u8; 32] = Sha256::digest(bytes).into();
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        let file = self
            .dir
            .path()
            .join("repo/targets")
            .join(dir)
            .join(format!("{}.{name}", hex::encode(sha256)));
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, bytes).unwrap();
        let target = NewTarget {
            path: path.into(),
            length: bytes.len() as u64,
            sha256,
        };
        self.repo()
            .add(&[target], &self.keys(), Lifetimes::default())
            .unwrap();
    }

    fn client_dir(&self) -> PathBuf {
        self.dir.path().join("client")
    }

    /// A new client, as after a restart.
    fn client(&self) -> Client<HttpFetcher> {
        self.client_with(Limits::default())
    }

    fn client_with(&self, limits: Limits) -> Client<HttpFetcher> {
        let url = Url::parse(&self.server.url("metadata/")).unwrap();
        Client::new(
            MetadataDir::new(self.client_dir()),
            HttpFetcher::new(Duration::from_secs(10)).unwrap(),
            &url,
            limits,
        )
        .unwrap()
    }

    async fn refresh(&self) -> Result<Client<HttpFetcher>, TrustError> {
        let mut client = self.client();
        client.refresh().await.map(|()| client)
    }

    async fn download(&self, target: &str) -> Result<Vec<u8>, TrustError> {
        let mut client = self.refresh().await?;
        let info = client
            .lookup(target)
            .await?
            .ok_or_else(|| TrustError::Signer(format!("{target} not found")))?;
        let base = Url::parse(&self.server.url("targets/")).unwrap();
        let out = self.dir.path().join("downloads");
        let file = client.download(&info, &base, &out).await?;
        Ok(std::fs::read(file).unwrap())
    }

    fn metadata(&self, file: &str) -> PathBuf {
        self.dir.path().join("repo/metadata").join(file)
    }

    /// Bytes of a published metadata file.
    fn published(&self, file: &str) -> Vec<u8> {
        std::fs::read(self.metadata(file)).unwrap()
    }

    /// Rewrites `file`'s signed part with `change` and signs it with `keys`.
    fn tamper(&self, file: &str, keys: &[&SigningKey], change: impl FnOnce(&mut Value)) {
        let mut envelope: Value = serde_json::from_slice(&self.published(file)).unwrap();
        let signed = envelope.get_mut("signed").unwrap();
        change(signed);
        std::fs::write(
            self.metadata(file),
            sign_role(signed.clone(), keys).unwrap(),
        )
        .unwrap();
    }

    /// The version of `role` the client has persisted.
    fn trusted_version(&self, role: &str) -> Option<u64> {
        let bytes = std::fs::read(self.client_dir().join(format!("{role}.json"))).ok()?;
        let value: Value = serde_json::from_slice(&bytes).unwrap();
        value["signed"]["version"].as_u64()
    }

    fn snapshot_version(&self) -> u64 {
        let timestamp: Value = serde_json::from_slice(&self.published("timestamp.json")).unwrap();
        timestamp["signed"]["meta"]["snapshot.json"]["version"]
            .as_u64()
            .unwrap()
    }

    /// The bin `target` falls in, by the delegation top-level targets signs
    /// (succinct or listed).
    fn bin_of(&self, target: &str) -> String {
        let snapshot = self.published(&format!("{}.snapshot.json", self.snapshot_version()));
        let snapshot: Value = serde_json::from_slice(&snapshot).unwrap();
        let digest = hex::encode(Sha256::digest(target.as_bytes()));
        let targets_version = snapshot["signed"]["meta"]["targets.json"]["version"]
            .as_u64()
            .unwrap();
        let targets: Value =
            serde_json::from_slice(&self.published(&format!("{targets_version}.targets.json")))
                .unwrap();
        let delegations = &targets["signed"]["delegations"];
        if let Some(bits) = delegations["succinct_roles"]["bit_length"].as_u64() {
            let first = u32::from_str_radix(&digest[..8], 16).unwrap();
            let digits = bits.div_ceil(4) as usize;
            return format!("bins-{:0digits$x}", first >> (32 - bits));
        }
        delegations["roles"]
            .as_array()
            .unwrap()
            .iter()
            .find(|role| {
                role["path_hash_prefixes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| digest.starts_with(p.as_str().unwrap()))
            })
            .map(|role| role["name"].as_str().unwrap().to_string())
            .unwrap()
    }
}

/// Drops the length and hashes of a snapshot entry, so that a file whose
/// bytes changed is judged by the check a test is about.
fn unpin(entry: &mut Value) {
    let entry = entry.as_object_mut().unwrap();
    entry.remove("length");
    entry.remove("hashes");
}

fn days_ago(days: i64) -> String {
    let t = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(24 * days);
    jiff::Timestamp::from_second(t.as_second())
        .unwrap()
        .to_string()
}

fn expect<T: std::fmt::Debug>(
    result: Result<T, TrustError>,
    matches: impl Fn(&TrustError) -> bool,
) {
    match result {
        Err(e) if matches(&e) => {}
        other => panic!("unexpected outcome: {other:?}"),
    }
}

#[tokio::test]
async fn a_published_target_downloads_and_verifies() {
    let fx = Fixture::new(4).await;
    fx.add("simple/alpha/index.json", b"{\"name\":\"alpha\"}");
    assert_eq!(
        fx.download("simple/alpha/index.json").await.unwrap(),
        b"{\"name\":\"alpha\"}"
    );
    assert_eq!(fx.trusted_version("timestamp"), Some(2));
    assert_eq!(fx.trusted_version("snapshot"), Some(2));
}

#[tokio::test]
async fn unknown_fields_count_in_signatures_and_a_key_keeps_its_listed_id() {
    // Specification section 4: undefined attribute-value pairs are part of
    // what is signed. A key with an extra field is no longer hashed to its
    // listed id; the id as listed is what identifies it (as in python-tuf).
    let fx = Fixture::new(4).await;
    let root_key = fx.key("root-1.pk8");
    let root_id = hex::encode(root_key.keyid());
    std::fs::copy(fx.metadata("1.root.json"), fx.metadata("2.root.json")).unwrap();
    fx.tamper("2.root.json", &[&root_key], |signed| {
        signed["version"] = 2.into();
        signed["custom-field"] = "value".into();
        signed["keys"][&root_id]["extra-field"] = serde_json::json!({ "a": 1, "b": 2 });
        signed["roles"]["root"]["another-field"] = "value".into();
    });
    fx.refresh().await.unwrap();
    assert_eq!(fx.trusted_version("root"), Some(2));
    // A field added after signing is caught.
    let mut envelope: Value = serde_json::from_slice(&fx.published("2.root.json")).unwrap();
    envelope["signed"]["version"] = 3.into();
    envelope["signed"]["sneaked-in"] = true.into();
    std::fs::write(
        fx.metadata("3.root.json"),
        serde_json::to_vec(&envelope).unwrap(),
    )
    .unwrap();
    expect(
        fx.refresh().await.map(|_| ()),
        |e| matches!(e, TrustError::ThresholdNotMet { role, valid: 0, .. } if role == "root"),
    );
}

// Rollback -----------------------------------------------------------------

#[tokio::test]
async fn rollback_of_timestamp_is_refused_after_a_restart() {
    let fx = Fixture::new(4).await;
    let old = fx.published("timestamp.json");
    fx.add("a", b"a");
    fx.refresh().await.unwrap();
    std::fs::write(fx.metadata("timestamp.json"), old).unwrap();
    expect(
        fx.refresh().await.map(|_| ()),
        |e| matches!(e, TrustError::Rollback { role, trusted: 2, new: 1 } if role == "timestamp"),
    );
    assert_eq!(fx.trusted_version("timestamp"), Some(2));
}

#[tokio::test]
async fn rollback_of_snapshot_named_by_a_newer_timestamp_is_refused() {
    let fx = Fixture::new(4).await;
    fx.add("a", b"a");
    fx.refresh().await.unwrap();
    let online = fx.key("online.pk8");
    fx.tamper("timestamp.json", &[&online], |signed| {
        signed["version"] = 3.into();
        signed["meta"]["snapshot.json"] = serde_json::json!({ "version": 1 });
    });
    expect(
        fx.refresh().await.map(|_| ()),
        |e| matches!(e, TrustError::Rollback { role, trusted: 2, new: 1 } if role == "snapshot"),
    );
    assert_eq!(fx.trusted_version("timestamp"), Some(2));
}

#[tokio::test]
async fn rollback_of_targets_or_of_a_bin_in_a_newer_snapshot_is_refused() {
    for rolled_back in ["targets", "bin"] {
        let fx = Fixture::new(4).await;
        fx.add("a", b"a"); // the bin of "a" is now at version 2
        let new_targets_key =
            SigningKey::create(&fx.dir.path().join("keys/targets-2.pk8")).unwrap();
        fx.repo()
            .rotate(
                KeyRole::Targets,
                &new_targets_key,
                &fx.keys(),
                Lifetimes::default(),
            )
            .unwrap(); // targets is now at version 2
        fx.download("a").await.unwrap(); // the bin is loaded by a lookup
        let role = if rolled_back == "bin" {
            fx.bin_of("a")
        } else {
            "targets".to_string()
        };
        assert_eq!(fx.trusted_version(&role), Some(2), "{role}");
        // A newer snapshot, validly signed, that names version 1 of the role.
        let current = fx.snapshot_version();
        let next = current + 1;
        std::fs::copy(
            fx.metadata(&format!("{current}.snapshot.json")),
            fx.metadata(&format!("{next}.snapshot.json")),
        )
        .unwrap();
        let online = fx.key("online.pk8");
        fx.tamper(&format!("{next}.snapshot.json"), &[&online], |signed| {
            signed["version"] = next.into();
            signed["meta"][format!("{role}.json")] = serde_json::json!({ "version": 1 });
        });
        fx.tamper("timestamp.json", &[&online], |signed| {
            signed["version"] = 10.into();
            signed["meta"]["snapshot.json"] = serde_json::json!({ "version": next });
        });
        expect(
            fx.refresh().await.map(|_| ()),
            |e| matches!(e, TrustError::Rollback { role: r, trusted: 2, new: 1 } if *r == role),
        );
        assert_eq!(fx.trusted_version("snapshot"), Some(current));
    }
}

#[tokio::test]
async fn a_snapshot_that_drops_a_role_is_refused() {
    let fx = Fixture::new(4).await;
    fx.add("a", b"a");
    fx.refresh().await.unwrap();
    let bin = fx.bin_of("a");
    let current = fx.snapshot_version();
    let next = current + 1;
    let online = fx.key("online.pk8");
    std::fs::copy(
        fx.metadata(&format!("{current}.snapshot.json")),
        fx.metadata(&format!("{next}.snapshot.json")),
    )
    .unwrap();
    fx.tamper(&format!("{next}.snapshot.json"), &[&online], |signed| {
        signed["version"] = next.into();
        signed["meta"]
            .as_object_mut()
            .unwrap()
            .remove(&format!("{bin}.json"));
    });
    fx.tamper("timestamp.json", &[&online], |signed| {
        signed["version"] = 10.into();
        signed["meta"]["snapshot.json"] = serde_json::json!({ "version": next });
    });
    expect(
        fx.refresh().await.map(|_| ()),
        |e| matches!(e, TrustError::DroppedFromSnapshot { role } if *role == bin),
    );
}

// Indefinite freeze --------------------------------------------------------

#[tokio::test]
async fn an_expired_timestamp_is_refused_and_not_persisted() {
    let fx = Fixture::new(4).await;
    fx.refresh().await.unwrap();
    let online = fx.key("online.pk8");
    fx.tamper("timestamp.json", &[&online], |signed| {
        signed["version"] = 2.into();
        signed["expires"] = days_ago(1).into();
    });
    expect(
        fx.refresh().await.map(|_| ()),
        |e| matches!(e, TrustError::Expired { role, .. } if role == "timestamp"),
    );
    assert_eq!(fx.trusted_version("timestamp"), Some(1));
}

#[tokio::test]
async fn an_expired_snapshot_targets_or_bin_is_refused() {
    for role in ["snapshot", "targets", "bin"] {
        let fx = Fixture::new(4).await;
        fx.add("a", b"a");
        let online = fx.key("online.pk8");
        let targets_key = fx.key("targets.pk8");
        let (file, key, name) = match role {
            "snapshot" => (
                format!("{}.snapshot.json", fx.snapshot_version()),
                &online,
                "snapshot".to_string(),
            ),
            "targets" => (
                "1.targets.json".to_string(),
                &targets_key,
                "targets".to_string(),
            ),
            _ => {
                let bin = fx.bin_of("a");
                (format!("2.{bin}.json"), &online, bin)
            }
        };
        fx.tamper(&file, &[key], |signed| {
            signed["expires"] = days_ago(1).into()
        });
        // Length and hash in snapshot no longer match a re-signed file;
        // drop them so that the freeze (not the length) is what is refused.
        if role != "snapshot" {
            let snapshot = format!("{}.snapshot.json", fx.snapshot_version());
            fx.tamper(&snapshot, &[&online], |signed| {
                unpin(&mut signed["meta"][format!("{name}.json")]);
            });
        }
        let snapshot_len = fx
            .published(&format!("{}.snapshot.json", fx.snapshot_version()))
            .len();
        fx.tamper("timestamp.json", &[&online], |signed| {
            signed["meta"]["snapshot.json"]["length"] = snapshot_len.into();
            signed["meta"]["snapshot.json"]
                .as_object_mut()
                .unwrap()
                .remove("hashes");
        });
        let result = if role == "bin" {
            fx.download("a").await.map(|_| ())
        } else {
            fx.refresh().await.map(|_| ())
        };
        expect(
            result,
            |e| matches!(e, TrustError::Expired { role, .. } if *role == name),
        );
        assert_eq!(
            fx.trusted_version(&name),
            None,
            "{name} must not be persisted"
        );
    }
}

#[tokio::test]
async fn an_expired_root_is_persisted_by_rotation_then_refused() {
    let fx = Fixture::new(4).await;
    fx.refresh().await.unwrap();
    let root_key = fx.key("root-1.pk8");
    std::fs::copy(fx.metadata("1.root.json"), fx.metadata("2.root.json")).unwrap();
    fx.tamper("2.root.json", &[&root_key], |signed| {
        signed["version"] = 2.into();
        signed["expires"] = days_ago(1).into();
    });
    expect(
        fx.refresh().await.map(|_| ()),
        |e| matches!(e, TrustError::Expired { role, .. } if role == "root"),
    );
    // 5.3.10: the rotated root is kept, nothing after it is updated.
    assert_eq!(fx.trusted_version("root"), Some(2));
    assert_eq!(fx.trusted_version("timestamp"), Some(1));
}

#[tokio::test]
async fn a_clock_set_back_after_a_restart_does_not_revive_expired_metadata() {
    let fx = Fixture::new(4).await;
    let clock = fx.dir.path().join("clock");
    let client = || fx.client().with_clock_file(clock.clone()).unwrap();
    client().refresh().await.unwrap();
    let stored: i64 = std::fs::read_to_string(&clock).unwrap().parse().unwrap();
    assert!((jiff::Timestamp::now().as_second() - stored).abs() < 60);
    // The node saw a time 400 days ahead (its clock was wrong, or time
    // passed); set back, it must still judge expiry by the later time.
    let later = jiff::Timestamp::now().as_second() + 400 * 86_400;
    std::fs::write(&clock, later.to_string()).unwrap();
    let mut restarted = client();
    expect(
        restarted.refresh().await,
        |e| matches!(e, TrustError::Expired { role, .. } if role == "root"),
    );
    // Without the clock file (the conformance CLI) the system clock rules.
    fx.refresh().await.unwrap();
}

// Mix-and-match --------------------------------------------------------------

#[tokio::test]
async fn a_bin_whose_version_differs_from_snapshot_is_refused() {
    let fx = Fixture::new(4).await;
    fx.add("a", b"a");
    let bin = fx.bin_of("a");
    // Serve the old bin (version 1, validly signed) where version 2 belongs.
    std::fs::copy(
        fx.metadata(&format!("1.{bin}.json")),
        fx.metadata(&format!("2.{bin}.json")),
    )
    .unwrap();
    let online = fx.key("online.pk8");
    let snapshot = format!("{}.snapshot.json", fx.snapshot_version());
    fx.tamper(&snapshot, &[&online], |signed| {
        unpin(&mut signed["meta"][format!("{bin}.json")]);
    });
    let snapshot_len = fx.published(&snapshot).len();
    fx.tamper("timestamp.json", &[&online], |signed| {
        signed["meta"]["snapshot.json"]["length"] = snapshot_len.into();
        signed["meta"]["snapshot.json"]
            .as_object_mut()
            .unwrap()
            .remove("hashes");
    });
    expect(
        fx.download("a").await,
        |e| matches!(e, TrustError::VersionMismatch { role, expected: 2, got: 1, .. } if *role == bin),
    );
    assert_eq!(fx.trusted_version(&bin), None);
}

#[tokio::test]
async fn metadata_that_does_not_match_the_signed_length_or_hash_is_refused() {
    let fx = Fixture::new(4).await;
    fx.add("a", b"a");
    let bin = fx.bin_of("a");
    // A mirror serves the old bin (validly signed) where version 2 belongs:
    // its length is not the one snapshot signed.
    std::fs::copy(
        fx.metadata(&format!("1.{bin}.json")),
        fx.metadata(&format!("2.{bin}.json")),
    )
    .unwrap();
    expect(
        fx.download("a").await,
        |e| matches!(e, TrustError::LengthOrHash { what } if *what == bin),
    );
    assert_eq!(fx.trusted_version(&bin), None);
    // The snapshot, checked against the timestamp's sha256.
    let fx = Fixture::new(4).await;
    let snapshot = format!("{}.snapshot.json", fx.snapshot_version());
    fx.tamper(&snapshot, &[&online_of(&fx)], |signed| {
        signed["expires"] = "2099-01-01T00:00:00Z".into();
    });
    expect(
        fx.refresh().await.map(|_| ()),
        |e| matches!(e, TrustError::LengthOrHash { what } if what == "snapshot"),
    );
    assert_eq!(fx.trusted_version("snapshot"), None);
}

fn online_of(fx: &Fixture) -> SigningKey {
    fx.key("online.pk8")
}

// Arbitrary package ------------------------------------------------------------

#[tokio::test]
async fn a_target_no_role_lists_is_not_found() {
    let fx = Fixture::new(4).await;
    fx.add("a", b"a");
    let mut client = fx.refresh().await.unwrap();
    assert!(client.lookup("b").await.unwrap().is_none());
}

#[tokio::test]
async fn target_bytes_that_differ_in_hash_or_length_are_refused_and_not_written() {
    let fx = Fixture::new(4).await;
    fx.add("pkg/a.whl", b"good bytes");
    let published = fx.dir.path().join("repo/targets/pkg").join(format!(
        "{}.a.whl",
        hex::encode(Sha256::digest(b"good bytes"))
    ));
    for evil in [&b"evil bytes"[..], &b"good byte"[..], &b""[..]] {
        std::fs::write(&published, evil).unwrap();
        expect(fx.download("pkg/a.whl").await, |e| {
            matches!(e, TrustError::LengthOrHash { .. })
        });
        assert!(!fx.dir.path().join("downloads/pkg%2Fa.whl").exists());
    }
}

// Endless data -----------------------------------------------------------------

#[tokio::test]
async fn endless_timestamp_stops_at_its_16_kib_limit() {
    let fx = Fixture::new(4).await;
    fx.server.make_endless("metadata/timestamp.json");
    expect(
        fx.refresh().await.map(|_| ()),
        |e| matches!(e, TrustError::TooLarge { what, limit: 16_384 } if what == "timestamp"),
    );
}

#[tokio::test]
async fn endless_target_stops_at_its_signed_length() {
    let fx = Fixture::new(4).await;
    fx.add("a", b"0123456789");
    let digest = hex::encode(Sha256::digest(b"0123456789"));
    fx.server.make_endless(&format!("targets/{digest}.a"));
    expect(fx.download("a").await, |e| {
        matches!(e, TrustError::TooLarge { limit: 10, .. })
    });
}

#[tokio::test]
async fn endless_bin_stops_at_the_length_snapshot_lists() {
    let fx = Fixture::new(4).await;
    fx.add("a", b"a");
    let bin = fx.bin_of("a");
    let length = fx.published(&format!("2.{bin}.json")).len() as u64;
    fx.server.make_endless(&format!("metadata/2.{bin}.json"));
    expect(
        fx.download("a").await,
        |e| matches!(e, TrustError::TooLarge { limit, .. } if *limit == length),
    );
}

// Threshold and signatures ---------------------------------------------------

#[tokio::test]
async fn root_threshold_not_met_is_refused() {
    let fx = Fixture::with(InitOptions {
        bins: 4,
        root_keys: 2,
        root_threshold: 2,
        ..InitOptions::default()
    })
    .await;
    let one = fx.key("root-1.pk8");
    std::fs::copy(fx.metadata("1.root.json"), fx.metadata("2.root.json")).unwrap();
    fx.tamper("2.root.json", &[&one], |signed| {
        signed["version"] = 2.into()
    });
    expect(
        fx.refresh().await.map(|_| ()),
        |e| matches!(e, TrustError::ThresholdNotMet { role, valid: 1, threshold: 2 } if role == "root"),
    );
    assert_eq!(fx.trusted_version("root"), Some(1));
}

#[tokio::test]
async fn a_signature_by_a_key_the_role_does_not_list_does_not_count() {
    let fx = Fixture::new(4).await;
    let targets_key = fx.key("targets.pk8");
    // The targets key is in root, but not a timestamp key.
    fx.tamper("timestamp.json", &[&targets_key], |signed| {
        signed["version"] = 2.into()
    });
    expect(
        fx.refresh().await.map(|_| ()),
        |e| matches!(e, TrustError::ThresholdNotMet { role, valid: 0, .. } if role == "timestamp"),
    );
}

// Key rotation and recovery -----------------------------------------------------------

#[tokio::test]
async fn after_rotating_the_online_key_metadata_signed_by_the_old_key_is_refused() {
    let fx = Fixture::new(4).await;
    fx.refresh().await.unwrap();
    let compromised = fx.key("online.pk8");
    let new_key_path = fx.dir.path().join("keys/online-2.pk8");
    let new_key = SigningKey::create(&new_key_path).unwrap();
    fx.repo()
        .rotate(KeyRole::Online, &new_key, &fx.keys(), Lifetimes::default())
        .unwrap();
    fx.refresh().await.unwrap();
    assert_eq!(fx.trusted_version("root"), Some(2));
    // The attacker signs a newer timestamp with the old key.
    fx.tamper("timestamp.json", &[&compromised], |signed| {
        signed["version"] = 99.into()
    });
    expect(
        fx.refresh().await.map(|_| ()),
        |e| matches!(e, TrustError::ThresholdNotMet { role, .. } if role == "timestamp"),
    );
    assert_ne!(fx.trusted_version("timestamp"), Some(99));
}

#[tokio::test]
async fn fast_forward_recovery_after_a_timestamp_key_rotation() {
    let fx = Fixture::new(4).await;
    fx.refresh().await.unwrap();
    // The attacker holds the online key and fast-forwards the timestamp.
    let online = fx.key("online.pk8");
    let honest = fx.published("timestamp.json");
    fx.tamper("timestamp.json", &[&online], |signed| {
        signed["version"] = 1000.into()
    });
    fx.refresh().await.unwrap();
    assert_eq!(fx.trusted_version("timestamp"), Some(1000));
    // The operator restores the repository and rotates the online key; the
    // new timestamp (version 2) must be accepted despite the trusted 1000.
    std::fs::write(fx.metadata("timestamp.json"), honest).unwrap();
    let new_key = SigningKey::create(&fx.dir.path().join("keys/online-2.pk8")).unwrap();
    fx.repo()
        .rotate(KeyRole::Online, &new_key, &fx.keys(), Lifetimes::default())
        .unwrap();
    fx.refresh().await.unwrap();
    assert_eq!(fx.trusted_version("timestamp"), Some(2));
}

#[tokio::test]
async fn root_rotation_walks_every_version_and_needs_old_and_new_keys() {
    let fx = Fixture::new(4).await;
    fx.refresh().await.unwrap();
    let new_root = SigningKey::create(&fx.dir.path().join("keys/root-new.pk8")).unwrap();
    fx.repo()
        .rotate(KeyRole::Root, &new_root, &fx.keys(), Lifetimes::default())
        .unwrap();
    // Version 3, signed by the new key only (the new threshold), follows.
    let keys = Keys {
        root: vec![new_root],
        ..fx.keys()
    };
    let (changes, _) = fx
        .repo()
        .sign(
            &keys,
            Lifetimes {
                root: jiff::SignedDuration::from_hours(24 * 3650),
                ..Lifetimes::default()
            },
        )
        .unwrap();
    assert_eq!(changes.root_version, Some(3));
    fx.server.take_requests();
    fx.refresh().await.unwrap();
    assert_eq!(fx.trusted_version("root"), Some(3));
    let roots: Vec<String> = fx
        .server
        .take_requests()
        .into_iter()
        .filter(|p| p.ends_with("root.json"))
        .collect();
    assert_eq!(
        roots,
        [
            "metadata/2.root.json",
            "metadata/3.root.json",
            "metadata/4.root.json"
        ]
    );
    // A root v4 signed only by the old (rotated away) key is refused.
    let old = fx.key("root-1.pk8");
    std::fs::copy(fx.metadata("3.root.json"), fx.metadata("4.root.json")).unwrap();
    fx.tamper("4.root.json", &[&old], |signed| {
        signed["version"] = 4.into()
    });
    expect(fx.refresh().await.map(|_| ()), |e| {
        matches!(e, TrustError::ThresholdNotMet { .. })
    });
    assert_eq!(fx.trusted_version("root"), Some(3));
}

#[tokio::test]
async fn a_failed_root_fetch_other_than_not_found_fails_the_refresh() {
    let fx = Fixture::new(4).await;
    fx.server.make_endless("metadata/2.root.json");
    expect(
        fx.refresh().await.map(|_| ()),
        |e| matches!(e, TrustError::TooLarge { what, limit: 512_000 } if what == "root"),
    );
}

// Laziness ---------------------------------------------------------------------------

#[tokio::test]
async fn lookup_in_16384_bins_fetches_only_the_bin_on_the_path() {
    let fx = Fixture::new(16_384).await;
    fx.add("simple/requests/index.json", b"page");
    fx.server.take_requests();
    let mut client = fx.refresh().await.unwrap();
    let info = client
        .lookup("simple/requests/index.json")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(info.length, 4);
    let bin = fx.bin_of("simple/requests/index.json");
    let snapshot = fx.snapshot_version();
    assert_eq!(
        fx.server.take_requests(),
        [
            "metadata/2.root.json".to_string(),
            "metadata/timestamp.json".to_string(),
            format!("metadata/{snapshot}.snapshot.json"),
            "metadata/1.targets.json".to_string(),
            format!("metadata/2.{bin}.json"),
        ]
    );
    // A restarted client with everything stored fetches only what may change.
    let mut client = fx.refresh().await.unwrap();
    client
        .lookup("simple/requests/index.json")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        fx.server.take_requests(),
        ["metadata/2.root.json", "metadata/timestamp.json"]
    );
}

#[tokio::test]
async fn the_walk_visits_at_most_max_delegations_roles() {
    let fx = Fixture::new(4).await;
    fx.add("a", b"a");
    let mut client = fx.client_with(Limits {
        max_delegations: 1,
        ..Limits::default()
    });
    client.refresh().await.unwrap();
    // Top-level targets is the one role allowed: the bin is never reached.
    assert!(client.lookup("a").await.unwrap().is_none());
}

/// Pruning removes superseded metadata and unlisted targets once they are
/// older than the window, never a root, and leaves a repository clients
/// still update from and download from.
#[tokio::test]
async fn pruning_removes_superseded_files_and_keeps_what_clients_need() {
    let fx = Fixture::new(4).await;
    fx.add("simple/a/index.json", b"v1");
    assert_eq!(fx.download("simple/a/index.json").await.unwrap(), b"v1");
    let old_target = fx
        .dir
        .path()
        .join("repo/targets/simple/a")
        .join(format!("{}.index.json", hex::encode(Sha256::digest(b"v1"))));
    assert!(old_target.exists());
    fx.add("simple/a/index.json", b"v2");
    fx.add("simple/b/index.json", b"b");

    let within_window = fx.repo().prune(Duration::from_secs(3600)).unwrap();
    assert_eq!(
        within_window,
        Default::default(),
        "nothing is old enough yet"
    );
    assert!(fx.metadata("1.snapshot.json").exists());

    let pruned = fx.repo().prune(Duration::ZERO).unwrap();
    assert_eq!(pruned.targets, 1, "the v1 page, which no bin lists");
    assert!(!old_target.exists());
    // Snapshots 1..=3 and the two superseded versions of a's bin at least.
    assert!(pruned.metadata >= 5, "{pruned:?}");
    assert!(!fx.metadata("1.snapshot.json").exists());
    assert!(fx
        .metadata(&format!("{}.snapshot.json", fx.snapshot_version()))
        .exists());
    assert!(
        fx.metadata("1.root.json").exists(),
        "roots are never pruned"
    );

    // A client that trusted the old state updates and downloads.
    assert_eq!(fx.download("simple/a/index.json").await.unwrap(), b"v2");
    assert_eq!(fx.download("simple/b/index.json").await.unwrap(), b"b");
    // A second prune finds nothing more.
    assert_eq!(fx.repo().prune(Duration::ZERO).unwrap(), Default::default());
}

/// One garbage timestamp response once dropped the whole trusted set, and
/// with it a node's "serve through a signer outage": a failed refresh now
/// abandons the update and keeps what was trusted until it expires.
#[tokio::test]
async fn a_garbage_timestamp_keeps_the_set_trusted_before() {
    let fx = Fixture::new(16).await;
    fx.add("simple/demo/index.json", b"page");
    let mut client = fx.refresh().await.unwrap();
    let trusted = client.trusted().unwrap().timestamp().unwrap().version;
    std::fs::write(fx.metadata("timestamp.json"), b"{ not json").unwrap();
    let failed = client.refresh().await;
    assert!(failed.is_err(), "the garbage is refused");
    let kept = client.trusted().expect("the set trusted before is kept");
    assert_eq!(kept.timestamp().unwrap().version, trusted);
    assert!(client
        .lookup("simple/demo/index.json")
        .await
        .unwrap()
        .is_some());
}

// Timestamps from peers ----------------------------------------------------------------

/// A repository whose URL cannot be reached, and peers that hand over
/// timestamps (any bytes); metadata named by its hash still arrives, as a
/// node takes it from its peers.
struct SignerDown {
    http: HttpFetcher,
    peers: Vec<Vec<u8>>,
}

impl peerpi_trust::Fetch for SignerDown {
    async fn fetch(&self, url: &Url, _limit: u64) -> Result<Vec<u8>, peerpi_trust::FetchError> {
        Err(peerpi_trust::FetchError::Other(format!(
            "{url}: connection refused"
        )))
    }

    async fn fetch_hashed(
        &self,
        url: &Url,
        limit: u64,
        _sha256: [u8; 32],
    ) -> Result<Vec<u8>, peerpi_trust::FetchError> {
        self.http.fetch(url, limit).await
    }

    async fn timestamps_from_peers(&self, _limit: u64) -> Vec<Vec<u8>> {
        self.peers.clone()
    }
}

impl Fixture {
    fn client_with_signer_down(&self, peers: Vec<Vec<u8>>) -> Client<SignerDown> {
        let url = Url::parse(&self.server.url("metadata/")).unwrap();
        let fetcher = SignerDown {
            http: HttpFetcher::new(Duration::from_secs(10)).unwrap(),
            peers,
        };
        Client::new(
            MetadataDir::new(self.client_dir()),
            fetcher,
            &url,
            Limits::default(),
        )
        .unwrap()
    }
}

/// With the repository unreachable, the newest timestamp peers hand over
/// that verifies is trusted; an older one (rollback), one with a forged
/// signature, one of another repository and garbage are passed over, and
/// with only those the refresh fails naming the unreachable repository.
#[tokio::test]
async fn with_the_repository_down_the_newest_valid_peer_timestamp_is_trusted() {
    let fx = Fixture::new(4).await;
    let old = fx.published("timestamp.json");
    fx.add("a", b"a");
    fx.refresh().await.unwrap();
    fx.add("b", b"b");
    let genuine = fx.published("timestamp.json");
    let mut forged: Value = serde_json::from_slice(&genuine).unwrap();
    forged["signed"]["version"] = Value::from(99);
    let forged = serde_json::to_vec(&forged).unwrap();
    let other = Fixture::new(4).await;
    other.add("c", b"c");
    other.add("d", b"d");
    other.add("e", b"e");
    let foreign = other.published("timestamp.json");
    let bad = vec![old.clone(), forged, foreign, b"not json".to_vec()];

    let mut client = fx.client_with_signer_down(bad.clone());
    expect(
        client.refresh().await,
        |e| matches!(e, TrustError::Fetch { reason, .. } if reason.contains("connection refused")),
    );
    assert_eq!(fx.trusted_version("timestamp"), Some(2));
    assert_eq!(
        client.timestamp_source(),
        peerpi_trust::TimestampSource::Peers
    );

    let mut offered = bad;
    offered.insert(1, genuine);
    let mut client = fx.client_with_signer_down(offered);
    client.refresh().await.unwrap();
    assert_eq!(fx.trusted_version("timestamp"), Some(3));
    assert_eq!(
        client.timestamp_source(),
        peerpi_trust::TimestampSource::Peers
    );
    // The new snapshot and bin came by their hashes: the target signed
    // after the last refresh is found.
    assert!(client.lookup("b").await.unwrap().is_some());
}

// Bin layouts --------------------------------------------------------------------------

/// New repositories delegate by TAP 15 `succinct_roles`: top-level targets
/// stays a few hundred bytes whatever the number of bins (it listed every
/// bin: 182 KB at 1,024 bins). Repositories made with listed bins are still
/// maintained: targets added, roles re-signed, the online key rotated, and
/// a client reads each state.
#[tokio::test]
async fn succinct_bins_are_written_and_listed_bins_still_maintained() {
    let fx = Fixture::new(1_024).await;
    let targets: Value = serde_json::from_slice(&fx.published("1.targets.json")).unwrap();
    let delegations = &targets["signed"]["delegations"];
    assert_eq!(delegations["succinct_roles"]["bit_length"], 10);
    assert_eq!(delegations["succinct_roles"]["name_prefix"], "bins");
    assert!(delegations.get("roles").is_none());
    assert!(fx.published("1.targets.json").len() < 1_000);
    fx.add("simple/a/index.json", b"a");
    assert_eq!(fx.download("simple/a/index.json").await.unwrap(), b"a");

    let listed = Fixture::with(InitOptions {
        bins: 16,
        style: peerpi_trust::signer::BinStyle::Listed,
        ..InitOptions::default()
    })
    .await;
    let targets: Value = serde_json::from_slice(&listed.published("1.targets.json")).unwrap();
    assert_eq!(
        targets["signed"]["delegations"]["roles"]
            .as_array()
            .unwrap()
            .len(),
        16
    );
    listed.add("simple/a/index.json", b"a");
    assert_eq!(listed.download("simple/a/index.json").await.unwrap(), b"a");
    let new_online = SigningKey::create(&listed.dir.path().join("new-online.pk8")).unwrap();
    listed
        .repo()
        .rotate(
            KeyRole::Online,
            &new_online,
            &listed.keys(),
            Lifetimes::default(),
        )
        .unwrap();
    std::fs::copy(
        listed.dir.path().join("new-online.pk8"),
        listed.dir.path().join("keys/online.pk8"),
    )
    .unwrap();
    listed.add("simple/b/index.json", b"b");
    assert_eq!(listed.download("simple/b/index.json").await.unwrap(), b"b");
    assert_eq!(listed.download("simple/a/index.json").await.unwrap(), b"a");
}

/// A repository that outgrew its bins moves to more of them with the
/// targets key: a client that trusted the old layout follows (no rollback:
/// reused bin names get their next version, old bins stay listed), finds
/// every target, and new targets go into the new bins. A listed-bin
/// repository moves to succinct bins the same way.
#[tokio::test]
async fn rebinning_keeps_every_target_and_clients_follow() {
    for style in [
        peerpi_trust::signer::BinStyle::Succinct,
        peerpi_trust::signer::BinStyle::Listed,
    ] {
        let fx = Fixture::with(InitOptions {
            bins: 4,
            style,
            ..InitOptions::default()
        })
        .await;
        let paths: Vec<String> = (0..20).map(|i| format!("simple/p{i}/index.json")).collect();
        for path in &paths {
            fx.add(path, path.as_bytes());
        }
        fx.refresh().await.unwrap();
        let changes = fx
            .repo()
            .rebin(64, &fx.keys(), Lifetimes::default())
            .unwrap();
        assert_eq!(changes.bins_signed, 64);
        let targets: Value = serde_json::from_slice(&fx.published(&format!(
            "{}.targets.json",
            changes.targets_version.unwrap()
        )))
        .unwrap();
        assert_eq!(
            targets["signed"]["delegations"]["succinct_roles"]["bit_length"],
            6
        );
        for path in &paths {
            assert_eq!(fx.download(path).await.unwrap(), path.as_bytes(), "{path}");
        }
        fx.add("simple/new/index.json", b"new");
        assert_eq!(fx.download("simple/new/index.json").await.unwrap(), b"new");
        assert!(fx.bin_of("simple/new/index.json").starts_with("bins-"));
        // 64 to 128 bins reuses the names bins-00 ... bins-3f.
        fx.repo()
            .rebin(128, &fx.keys(), Lifetimes::default())
            .unwrap();
        for path in paths
            .iter()
            .map(String::as_str)
            .chain(["simple/new/index.json"])
        {
            assert!(!fx.download(path).await.unwrap().is_empty(), "{path}");
        }
    }
}
