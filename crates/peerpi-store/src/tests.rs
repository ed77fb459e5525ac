use super::*;

fn digest_of(bytes: &[u8]) -> Sha256Digest {
    Sha256Digest::from_bytes(Sha256::digest(bytes).into())
}

fn put(store: &Store, bytes: &[u8]) -> Sha256Digest {
    put_evicting(store, bytes);
    digest_of(bytes)
}

#[test]
fn commit_verifies_and_get_finds_it() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), 1 << 20).unwrap();
    let d = put(&store, b"hello");
    let blob = store.get(&d).unwrap().unwrap();
    assert_eq!(blob.size, 5);
    assert_eq!(fs::read(&blob.path).unwrap(), b"hello");
    assert!(blob.path.to_str().unwrap().ends_with(&d.cid().to_string()));
    assert_eq!(store.total_bytes(), 5);
}

#[test]
fn mismatched_digest_or_length_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), 1 << 20).unwrap();
    let wanted = digest_of(b"good");
    let mut w = store.writer().unwrap();
    w.append(b"evil").unwrap();
    assert!(matches!(
        store.commit(w, &wanted, None),
        Err(StoreError::DigestMismatch { .. })
    ));
    let mut w = store.writer().unwrap();
    w.append(b"good").unwrap();
    assert!(matches!(
        store.commit(w, &wanted, Some(5)),
        Err(StoreError::LengthMismatch { .. })
    ));
    assert!(store.get(&wanted).unwrap().is_none());
    assert!(!store.blob_path(&wanted).exists());
    assert_eq!(
        fs::read_dir(dir.path().join("tmp")).unwrap().count(),
        0,
        "temp files removed"
    );
    assert_eq!(store.total_bytes(), 0);
}

#[test]
fn eviction_keeps_under_cap_least_recently_used_first() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), 250).unwrap();
    let a = put(&store, &[b'a'; 100]);
    std::thread::sleep(std::time::Duration::from_millis(5));
    let b = put(&store, &[b'b'; 100]);
    std::thread::sleep(std::time::Duration::from_millis(5));
    let c = put(&store, &[b'c'; 100]);
    assert!(store.total_bytes() <= 250, "total {}", store.total_bytes());
    assert!(store.get(&a).unwrap().is_none(), "oldest evicted");
    assert!(!store.blob_path(&a).exists());
    assert!(store.get(&b).unwrap().is_some());
    assert!(store.get(&c).unwrap().is_some());
}

#[test]
fn reopen_removes_temp_files_and_reconciles() {
    let dir = tempfile::tempdir().unwrap();
    let (kept, lost, orphan, forged);
    {
        let (store, _) = Store::open(dir.path(), 1 << 20).unwrap();
        kept = put(&store, b"kept");
        lost = put(&store, b"lost");
        // A download that never finished.
        let mut w = store.writer().unwrap();
        w.append(b"partial").unwrap();
        std::mem::forget(w);
        // A record whose file vanished.
        fs::remove_file(store.blob_path(&lost)).unwrap();
        // A verified file whose record never made it (crash after rename).
        orphan = digest_of(b"orphan");
        fs::create_dir_all(store.blob_path(&orphan).parent().unwrap()).unwrap();
        fs::write(store.blob_path(&orphan), b"orphan").unwrap();
        // A file whose content does not match its name.
        forged = digest_of(b"forged");
        fs::create_dir_all(store.blob_path(&forged).parent().unwrap()).unwrap();
        fs::write(store.blob_path(&forged), b"not it").unwrap();
        store.flush().unwrap();
    }
    let (store, report) = Store::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(
        report,
        ReconcileReport {
            temp_files_removed: 1,
            records_dropped: 1,
            orphans_adopted: 1,
            orphans_removed: 1
        }
    );
    assert!(store.get(&kept).unwrap().is_some());
    assert!(store.get(&lost).unwrap().is_none());
    assert_eq!(store.get(&orphan).unwrap().unwrap().size, 6);
    assert!(store.get(&forged).unwrap().is_none());
    assert!(!store.blob_path(&forged).exists());
    assert_eq!(store.total_bytes(), 4 + 6);
}

#[test]
fn pages_and_origins_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), 1 << 20).unwrap();
    let page = CachedPage {
        page: ProjectPage {
            name: "demo".into(),
            files: vec![],
            versions: None,
            status: None,
        },
        etag: Some("\"x\"".into()),
        fetched_at_ms: 7,
        content_id: "c1".into(),
    };
    store.put_page("demo", &page).unwrap();
    assert_eq!(store.page("demo").unwrap(), Some(page));
    assert_eq!(store.projects().unwrap(), vec!["demo".to_string()]);
    let d = digest_of(b"x");
    let origin = Origin {
        url: "https://up.invalid/x".into(),
        filename: "x-1.tar.gz".into(),
        size: Some(1),
        metadata: None,
    };
    store.put_origins(&[(d, origin.clone())]).unwrap();
    assert_eq!(store.origin(&d).unwrap(), Some(origin));
}

#[test]
fn batches_written_and_hashed_in_parallel_match_single_appends() {
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    // Small batches take the one-thread path, large ones the parallel one.
    for batch_size in [1_000usize, 600_000] {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path(), 64 << 20).unwrap();
        let chunks: Vec<&[u8]> = data.chunks(97_001).collect();
        let mut w = store.writer().unwrap();
        for batch in chunks.chunks(batch_size.div_ceil(97_001)) {
            w.append_batch(batch).unwrap();
        }
        assert_eq!(w.len(), data.len() as u64);
        let digest = digest_of(&data);
        store.commit(w, &digest, Some(data.len() as u64)).unwrap();
        assert_eq!(
            fs::read(store.get(&digest).unwrap().unwrap().path).unwrap(),
            data
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), 64 << 20).unwrap();
    let mut w = store.writer().unwrap();
    let mut tampered = data.clone();
    tampered[2_999_999] ^= 1;
    w.append_batch(&[&tampered[..]]).unwrap();
    assert!(matches!(
        store.commit(w, &digest_of(&data), None),
        Err(StoreError::DigestMismatch { .. })
    ));
}

/// `get` reads a record, eviction removes it, then `get` records the access:
/// the access must not bring back a record whose file is gone.
#[test]
fn an_access_recorded_after_eviction_does_not_resurrect_the_record() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), 1 << 20).unwrap();
    let d = put(&store, b"evicted between get and touch");
    let seen = store.catalog.blob(&d).unwrap().unwrap();
    let stale = BlobRecord {
        last_access_ms: 0,
        ..seen
    };
    store.catalog.put_blob(&d, &stale).unwrap();
    store.remove(&d, seen.size).unwrap();

    store.touch(&d, stale).unwrap();
    assert!(
        store.catalog.blob(&d).unwrap().is_none(),
        "no record without a file"
    );
    assert_eq!(store.total_bytes(), 0);

    // While the record is there, the access is recorded.
    let d = put(&store, b"kept");
    let old = BlobRecord {
        last_access_ms: 0,
        ..store.catalog.blob(&d).unwrap().unwrap()
    };
    store.catalog.put_blob(&d, &old).unwrap();
    store.touch(&d, old).unwrap();
    assert!(store.catalog.blob(&d).unwrap().unwrap().last_access_ms > 0);
}

/// A damaged catalog does not stop the store from opening: it is moved
/// aside and rebuilt from the blob files, which are re-verified.
#[test]
fn a_damaged_catalog_is_rebuilt_from_the_blob_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = {
        let (store, _) = Store::open(dir.path(), 1 << 20).unwrap();
        let d = put(&store, b"survives a damaged catalog");
        store.flush().unwrap();
        d
    };
    let catalog = dir.path().join("catalog");
    for entry in fs::read_dir(&catalog).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            fs::write(&path, vec![0xa5u8; 4096]).unwrap();
        }
    }
    let (store, report) = Store::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(report.orphans_adopted, 1, "{report:?}");
    assert_eq!(store.get(&d).unwrap().unwrap().size, 26);
    assert!(
        fs::read_dir(dir.path()).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("catalog.corrupt-")),
        "the damaged catalog is kept aside for inspection"
    );
}

/// Temp files of running downloads count against the cap: committing makes
/// room for them too, and a finished or dropped download gives its bytes back.
#[test]
fn running_downloads_count_against_the_cap() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), 250).unwrap();
    let old = put(&store, &[b'a'; 100]);
    std::thread::sleep(std::time::Duration::from_millis(5));
    let _newer = put(&store, &[b'b'; 100]);
    let mut running = store.writer().unwrap();
    running.append(&[b'r'; 100]).unwrap();
    assert_eq!(store.in_progress_bytes(), 100);

    std::thread::sleep(std::time::Duration::from_millis(5));
    let evicted = put_evicting(&store, &[b'c'; 40]);
    assert_eq!(evicted, vec![old], "200 stored + 40 + 100 running > 250");
    assert!(store.total_bytes() + store.in_progress_bytes() <= 250);

    drop(running);
    assert_eq!(store.in_progress_bytes(), 0);
}

fn put_evicting(store: &Store, bytes: &[u8]) -> Vec<Sha256Digest> {
    let digest = digest_of(bytes);
    let mut w = store.writer().unwrap();
    w.append(bytes).unwrap();
    store.commit(w, &digest, Some(bytes.len() as u64)).unwrap()
}

#[test]
fn scrub_keeps_good_blobs_and_removes_damaged_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), 1 << 20).unwrap();
    let good = put(&store, b"good bytes");
    let flipped = put(&store, b"flipped bytes");
    let cut = put(&store, b"truncated bytes");
    let gone = put(&store, b"deleted bytes");
    fs::write(store.blob_path(&flipped), b"flipped bytez").unwrap();
    fs::write(store.blob_path(&cut), b"trunc").unwrap();
    fs::remove_file(store.blob_path(&gone)).unwrap();

    assert_eq!(store.scrub_blob(&good).unwrap(), Scrub::Good { bytes: 10 });
    for (digest, reason) in [
        (flipped, "hash to sha256"),
        (cut, "5 bytes on disk, 15 recorded"),
        (gone, "missing"),
    ] {
        match store.scrub_blob(&digest).unwrap() {
            Scrub::Corrupt { reason: r } => assert!(r.contains(reason), "{r}"),
            other => panic!("{digest}: {other:?}"),
        }
        assert!(store.get(&digest).unwrap().is_none());
        assert!(!store.blob_path(&digest).exists());
        assert_eq!(store.scrub_blob(&digest).unwrap(), Scrub::Gone);
    }
    assert_eq!(store.total_bytes(), 10);
    assert_eq!(store.digests().unwrap(), vec![good]);
}

#[test]
fn a_pinned_blob_survives_eviction_within_the_pin_limit() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), 100).unwrap();
    let pinned = put(&store, &[1u8; 40]);
    assert_eq!(store.set_pinned(&pinned, true).unwrap(), Pin::Done);
    // Newer blobs push the store over its cap: the oldest unpinned go.
    let newer = put(&store, &[2u8; 40]);
    let newest = put(&store, &[3u8; 40]);
    assert!(store.get(&pinned).unwrap().is_some(), "pinned, so kept");
    assert!(store.get(&newer).unwrap().is_none(), "least recently used");
    assert!(store.get(&newest).unwrap().is_some());
    // Pins take at most half the cap (50 bytes).
    assert_eq!(
        store.set_pinned(&newest, true).unwrap(),
        Pin::OverLimit {
            limit: 50,
            pinned: 40
        }
    );
    assert_eq!(store.set_pinned(&newer, true).unwrap(), Pin::NotStored);
    // Unpinned, it is evicted like any other.
    assert_eq!(store.set_pinned(&pinned, false).unwrap(), Pin::Done);
    put(&store, &[4u8; 40]);
    assert!(store.get(&pinned).unwrap().is_none());
}

/// 10,000 projects grew the catalog 18 MB outside `--cache-size`: pages
/// now count against the cap, and those stored longest ago go when the
/// pages outgrow their share (an eighth of it).
#[test]
fn pages_count_against_the_cap_and_the_oldest_go_past_their_share() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), 80_000).unwrap();
    let page = |ms: u64| CachedPage {
        page: peerpi_core::ProjectPage {
            name: "p".into(),
            files: Vec::new(),
            versions: Some(vec!["1.0".repeat(100)]),
            status: None,
        },
        etag: None,
        fetched_at_ms: ms,
        content_id: String::new(),
    };
    let one = serde_json::to_vec(&page(0)).unwrap().len() as u64;
    for i in 0..200u64 {
        store
            .put_page(&format!("project-{i}"), &page(1000 + i))
            .unwrap();
        assert!(
            store.page_bytes() <= store.page_cap() + one,
            "{}",
            store.page_bytes()
        );
    }
    assert!(store.page_bytes() > 0);
    assert!(
        store.page("project-0").unwrap().is_none(),
        "the oldest went"
    );
    assert!(
        store.page("project-199").unwrap().is_some(),
        "the newest stays"
    );
    // Reopened, the count is the same.
    let counted = store.page_bytes();
    drop(store);
    let (store, _) = Store::open(dir.path(), 80_000).unwrap();
    assert_eq!(store.page_bytes(), counted);
}

/// sled lets go of its file lock only once its background threads drop a
/// closed database: a store reopened in the same process right after the
/// last one was dropped failed as "in use by another process" (seen in CI,
/// in `pages_count_against_the_cap_and_the_oldest_go_past_their_share`).
#[test]
fn a_store_reopened_while_the_last_one_is_still_closing_opens() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), 1 << 20).unwrap();
    let closing = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        drop(store);
    });
    let (store, _) = Store::open(dir.path(), 1 << 20).unwrap();
    closing.join().unwrap();
    put(&store, b"written after the reopen");
}
