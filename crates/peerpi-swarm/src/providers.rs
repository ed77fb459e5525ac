//! A Kademlia record store sized for nodes that provide many CIDs.
//!
//! libp2p's `MemoryStore` keeps every key's provider list in a `SmallVec` with
//! room for 20 records inline, so each provided key costs kilobytes even with
//! one provider (measured: about 8.5 KB of RSS per provided CID, some 850 MB
//! for 100,000 blobs). Here a key this node provides costs one `Key` in a set
//! (its provider record is built when asked for), and other peers' records sit
//! in a plain `Vec` per key. Other peers choose what they announce, so their
//! records are bounded in all (not per key), with a few addresses each.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::time::Instant;

use libp2p::kad::store::{Error, RecordStore, Result};
use libp2p::kad::{ProviderRecord, Record, RecordKey};
use libp2p::PeerId;

pub(crate) struct ProviderStore {
    local: PeerId,
    provided: HashSet<RecordKey>,
    remote: HashMap<RecordKey, Vec<ProviderRecord>>,
    /// Provider records in `remote`, all keys together.
    remote_records: usize,
    /// Records in `remote` per provider: one peer (or a handful of
    /// identities) must not hold every slot for a record's lifetime.
    per_provider: HashMap<PeerId, usize>,
    max_records_per_provider: usize,
    last_sweep: Instant,
    records: HashMap<RecordKey, Record>,
    max_remote_records: usize,
    max_providers_per_key: usize,
    max_records: usize,
}

/// Other peers' provider records kept at most (about 300 bytes each with
/// their addresses: some 75 MiB when full).
pub const MAX_REMOTE_RECORDS: usize = 262_144;
/// Other peers' records kept per provider: an eighth of the whole, room
/// for a node announcing 32,768 blobs near this node's keys.
pub const MAX_RECORDS_PER_PROVIDER: usize = MAX_REMOTE_RECORDS / 8;
/// Addresses kept per provider record; the rest are dropped.
const MAX_ADDRESSES_PER_RECORD: usize = 4;
/// A full store looks for expired records at most this often (a sweep
/// walks every record).
const SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

impl ProviderStore {
    pub(crate) fn new(local: PeerId) -> Self {
        Self {
            local,
            provided: HashSet::new(),
            remote: HashMap::new(),
            remote_records: 0,
            per_provider: HashMap::new(),
            max_records_per_provider: MAX_RECORDS_PER_PROVIDER,
            last_sweep: Instant::now(),
            records: HashMap::new(),
            max_remote_records: MAX_REMOTE_RECORDS,
            max_providers_per_key: 20,
            max_records: 1024,
        }
    }

    fn local_record(&self, key: &RecordKey) -> ProviderRecord {
        ProviderRecord::new(key.clone(), self.local, Vec::new())
    }

    /// Counts `n` records of `provider` gone from `remote`.
    fn forget(&mut self, provider: &PeerId, n: usize) {
        self.remote_records -= n;
        if let Some(count) = self.per_provider.get_mut(provider) {
            *count = count.saturating_sub(n);
            if *count == 0 {
                self.per_provider.remove(provider);
            }
        }
    }

    /// Drops the expired records of `key`'s list.
    fn drop_expired(&mut self, key: &RecordKey, now: Instant) {
        let Some(list) = self.remote.get_mut(key) else {
            return;
        };
        let expired: Vec<PeerId> = list
            .iter()
            .filter(|r| !live(r, now))
            .map(|r| r.provider)
            .collect();
        list.retain(|r| live(r, now));
        for provider in expired {
            self.forget(&provider, 1);
        }
    }
}

fn live(record: &ProviderRecord, now: Instant) -> bool {
    record.expires.is_none_or(|t| t > now)
}

impl RecordStore for ProviderStore {
    type RecordsIter<'a> = Box<dyn Iterator<Item = Cow<'a, Record>> + 'a>;
    type ProvidedIter<'a> = Box<dyn Iterator<Item = Cow<'a, ProviderRecord>> + 'a>;

    fn get(&self, k: &RecordKey) -> Option<Cow<'_, Record>> {
        self.records.get(k).map(Cow::Borrowed)
    }

    fn put(&mut self, r: Record) -> Result<()> {
        if self.records.len() >= self.max_records && !self.records.contains_key(&r.key) {
            return Err(Error::MaxRecords);
        }
        self.records.insert(r.key.clone(), r);
        Ok(())
    }

    fn remove(&mut self, k: &RecordKey) {
        self.records.remove(k);
    }

    fn records(&self) -> Self::RecordsIter<'_> {
        Box::new(self.records.values().map(Cow::Borrowed))
    }

    fn add_provider(&mut self, record: ProviderRecord) -> Result<()> {
        if record.provider == self.local {
            self.provided.insert(record.key);
            return Ok(());
        }
        let now = Instant::now();
        let mut record = record;
        record.addresses.truncate(MAX_ADDRESSES_PER_RECORD);
        let provider_full = |store: &Self| {
            store
                .per_provider
                .get(&record.provider)
                .copied()
                .unwrap_or(0)
                >= store.max_records_per_provider
        };
        if (self.remote_records >= self.max_remote_records || provider_full(self))
            && now.duration_since(self.last_sweep) >= SWEEP_INTERVAL
        {
            self.last_sweep = now;
            self.remote.retain(|_, list| {
                list.retain(|r| live(r, now));
                !list.is_empty()
            });
            self.remote_records = self.remote.values().map(Vec::len).sum();
            self.per_provider.clear();
            for r in self.remote.values().flatten() {
                *self.per_provider.entry(r.provider).or_default() += 1;
            }
        }
        self.drop_expired(&record.key, now);
        let over_provider_cap = provider_full(self);
        let list = self.remote.entry(record.key.clone()).or_default();
        if let Some(existing) = list.iter_mut().find(|r| r.provider == record.provider) {
            *existing = record;
        } else if list.len() >= self.max_providers_per_key {
            // Enough providers known for this key (as libp2p's own store does).
        } else if self.remote_records < self.max_remote_records && !over_provider_cap {
            *self.per_provider.entry(record.provider).or_default() += 1;
            list.push(record);
            self.remote_records += 1;
        } else {
            if list.is_empty() {
                self.remote.remove(&record.key);
            }
            return Err(Error::MaxProvidedKeys);
        }
        Ok(())
    }

    fn providers(&self, key: &RecordKey) -> Vec<ProviderRecord> {
        let now = Instant::now();
        let mut out: Vec<ProviderRecord> = self
            .remote
            .get(key)
            .map(|list| list.iter().filter(|r| live(r, now)).cloned().collect())
            .unwrap_or_default();
        if self.provided.contains(key) {
            out.push(self.local_record(key));
        }
        out
    }

    fn provided(&self) -> Self::ProvidedIter<'_> {
        Box::new(
            self.provided
                .iter()
                .map(|k| Cow::Owned(self.local_record(k))),
        )
    }

    fn remove_provider(&mut self, k: &RecordKey, p: &PeerId) {
        if *p == self.local {
            self.provided.remove(k);
            return;
        }
        if let Some(list) = self.remote.get_mut(k) {
            let before = list.len();
            list.retain(|r| r.provider != *p);
            let removed = before - list.len();
            if list.is_empty() {
                self.remote.remove(k);
            }
            self.forget(p, removed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn local_and_remote_providers() {
        let local = PeerId::random();
        let other = PeerId::random();
        let mut store = ProviderStore::new(local);
        let key = RecordKey::new(&b"cid");
        store
            .add_provider(ProviderRecord::new(key.clone(), local, Vec::new()))
            .unwrap();
        store
            .add_provider(ProviderRecord::new(key.clone(), other, Vec::new()))
            .unwrap();
        let providers: HashSet<PeerId> = store
            .providers(&key)
            .into_iter()
            .map(|r| r.provider)
            .collect();
        assert_eq!(providers, [local, other].into());
        assert_eq!(store.provided().count(), 1);
        store.remove_provider(&key, &local);
        assert_eq!(store.provided().count(), 0);
        assert_eq!(store.providers(&key).len(), 1);
        store.remove_provider(&key, &other);
        assert!(store.providers(&key).is_empty());
    }

    #[test]
    fn expired_records_are_not_returned_and_lists_are_capped() {
        let mut store = ProviderStore::new(PeerId::random());
        let key = RecordKey::new(&b"cid");
        let mut old = ProviderRecord::new(key.clone(), PeerId::random(), Vec::new());
        old.expires = Some(Instant::now() - Duration::from_secs(1));
        store.add_provider(old).unwrap();
        assert!(store.providers(&key).is_empty());
        for _ in 0..50 {
            store
                .add_provider(ProviderRecord::new(
                    key.clone(),
                    PeerId::random(),
                    Vec::new(),
                ))
                .unwrap();
        }
        assert_eq!(store.providers(&key).len(), 20);
    }

    #[test]
    fn remote_records_are_bounded_in_all_with_few_addresses_each() {
        let mut store = ProviderStore::new(PeerId::random());
        store.max_remote_records = 100;
        let addr: libp2p::Multiaddr = "/ip4/127.0.0.1/tcp/1".parse().unwrap();
        for i in 0..150u32 {
            let key = RecordKey::new(&i.to_be_bytes());
            let record = ProviderRecord::new(key, PeerId::random(), vec![addr.clone(); 50]);
            let added = store.add_provider(record);
            assert_eq!(added.is_ok(), i < 100, "record {i}");
        }
        assert_eq!(store.remote_records, 100);
        assert_eq!(store.remote.len(), 100, "refused keys leave no empty list");
        let first = store.providers(&RecordKey::new(&0u32.to_be_bytes()));
        assert_eq!(first[0].addresses.len(), MAX_ADDRESSES_PER_RECORD);
        // Removing makes room again.
        let key = RecordKey::new(&0u32.to_be_bytes());
        store.remove_provider(&key, &first[0].provider);
        assert_eq!(store.remote_records, 99);
        let again = ProviderRecord::new(key, PeerId::random(), Vec::new());
        assert!(store.add_provider(again).is_ok());
    }

    /// Two identities sent a million records in 10 s and one peer could
    /// hold every slot for the records' 48 h lifetime: now each provider
    /// holds at most its share, and other providers still get in.
    #[test]
    fn one_provider_holds_at_most_its_share_of_the_records() {
        let mut store = ProviderStore::new(PeerId::random());
        store.max_remote_records = 80;
        store.max_records_per_provider = 10;
        let flooder = PeerId::random();
        let mut accepted = 0;
        for i in 0..1000u32 {
            let key = RecordKey::new(&i.to_be_bytes());
            if store
                .add_provider(ProviderRecord::new(key, flooder, Vec::new()))
                .is_ok()
            {
                accepted += 1;
            }
        }
        assert_eq!(accepted, 10);
        assert_eq!(store.remote.len(), 10, "refused keys leave no empty list");
        // Re-announcing a held key is still fine.
        let held = RecordKey::new(&0u32.to_be_bytes());
        assert!(store
            .add_provider(ProviderRecord::new(held.clone(), flooder, Vec::new()))
            .is_ok());
        // An honest provider is not crowded out.
        let honest = PeerId::random();
        let key = RecordKey::new(&b"honest");
        assert!(store
            .add_provider(ProviderRecord::new(key, honest, Vec::new()))
            .is_ok());
        // Records removed give the flooder's slots back.
        store.remove_provider(&held, &flooder);
        assert_eq!(store.per_provider[&flooder], 9);
        let next = RecordKey::new(&5000u32.to_be_bytes());
        assert!(store
            .add_provider(ProviderRecord::new(next, flooder, Vec::new()))
            .is_ok());
    }
}
