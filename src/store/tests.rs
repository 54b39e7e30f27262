//! Store tests: every operation and error, locks, timeouts with a fake clock, sweeping, LRU
//! eviction order, memory limits, key listing, allocation counts. The random model test is
//! in `model_tests.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use stategrid_proto::{
    ErrorCode, ErrorReply, LockInfo, NsId, PARTITIONS, TIMEOUT_S_MAX, Timeout, TimeoutKind,
    WriteOpts, key_hash, partition_of,
};

use super::entry::{NIL, object_cost_bytes};
use super::lock::TokenGen;
use super::*;

const NS: NsId = 7;

fn k(key: &[u8]) -> KeyRef<'_> {
    KeyRef::new(NS, key)
}

fn opts() -> WriteOpts {
    WriteOpts::default()
}

fn pinned() -> WriteOpts {
    WriteOpts {
        timeout: None,
        evictable: false,
        content_type_bytes: 0,
    }
}

fn timed(timeout_s: u32, kind: TimeoutKind) -> WriteOpts {
    WriteOpts {
        timeout: Some(Timeout { timeout_s, kind }),
        evictable: true,
        content_type_bytes: 0,
    }
}

fn store() -> Store {
    Store::new(StoreLimits::default(), 42)
}

fn code<T: std::fmt::Debug>(r: Result<T, StoreError>) -> ErrorCode {
    r.expect_err("expected an error").code
}

fn err_of<T: std::fmt::Debug>(r: Result<T, StoreError>) -> StoreError {
    r.expect_err("expected an error")
}

fn err(code: ErrorCode, detail: u64) -> StoreError {
    StoreError::new(code, detail)
}

impl Store {
    /// Checks every invariant that ties the slab, the tables, the LRU list and the counters
    /// together. O(n): tests only.
    pub(super) fn assert_invariants(&self) {
        let lru_order = self.lru.check(&self.slab);
        let on_lru: BTreeSet<u32> = lru_order.iter().copied().collect();
        let mut object_bytes = 0;
        let mut evictable_bytes = 0;
        let mut ns_counts: BTreeMap<NsId, u64> = BTreeMap::new();
        for (slot, e) in self.slab.iter() {
            let slot = slot as u32;
            assert!(slot < self.slots_end, "slot {slot} beyond slots_end");
            assert_eq!(e.hash, key_hash(e.ns, &e.key), "slot {slot} hash");
            assert_eq!(
                self.find(KeyRef::new(e.ns, &e.key)),
                Some(slot),
                "slot {slot} not findable"
            );
            assert_eq!(
                e.evictable,
                on_lru.contains(&slot),
                "slot {slot} LRU membership"
            );
            assert!(e.version >= 1);
            object_bytes += e.cost_bytes();
            if e.evictable {
                evictable_bytes += e.cost_bytes();
            }
            *ns_counts.entry(e.ns).or_default() += 1;
        }
        let filed: usize = self.tables.iter().map(|t| t.len()).sum();
        assert_eq!(filed, self.slab.len(), "tables and slab disagree");
        assert_eq!(self.object_bytes, object_bytes, "object_bytes");
        assert_eq!(self.evictable_bytes, evictable_bytes, "evictable_bytes");
        let kept: BTreeMap<NsId, u64> = self.ns_ids().collect();
        assert_eq!(kept, ns_counts, "namespace counts");
        if self.limits.memory_bytes_max != 0 {
            assert!(
                self.object_bytes <= self.limits.memory_bytes_max,
                "over memory_bytes_max"
            );
        }
    }

    /// The keys on the LRU list, most recently used first.
    fn lru_keys(&self) -> Vec<Vec<u8>> {
        let mut keys = Vec::new();
        let mut slot = self.lru.head;
        while slot != NIL {
            keys.push(self.slab[slot as usize].key.to_vec());
            slot = self.slab[slot as usize].lru_next;
        }
        keys
    }
}

// ---- Basic operations ---------------------------------------------------------------------------

#[test]
fn add_read_put_update_and_versions() {
    let mut s = store();
    assert_eq!(s.add(k(b"a"), b"v1", opts(), 1000), Ok(1));
    assert_eq!(
        s.add(k(b"a"), b"v2", opts(), 1000),
        Err(StoreError::ALREADY_EXISTS)
    );
    let (m, v) = s.read(k(b"a"), 1001).unwrap();
    assert_eq!(&*v, b"v1");
    assert_eq!(
        m,
        Meta {
            value_bytes: 2,
            version: 1,
            created_ms: 1000,
            updated_ms: 1000,
            timeout: Timeout::default(),
            expires_in_ms: None,
            lock: None,
            evictable: true,
            content_type_bytes: 0,
        }
    );
    assert_eq!(s.put(k(b"a"), b"v2", opts(), 1002), Ok(2));
    assert_eq!(s.update(k(b"a"), b"v33", opts(), None, 1003), Ok(3));
    let (m, v) = s.read(k(b"a"), 1004).unwrap();
    assert_eq!(
        (&*v, m.version, m.created_ms, m.updated_ms, m.value_bytes),
        (&b"v33"[..], 3, 1000, 1003, 3)
    );
    assert_eq!(s.put(k(b"new"), b"x", opts(), 1005), Ok(1), "put creates");
    s.assert_invariants();
}

#[test]
fn writes_to_missing_objects_are_not_found() {
    let mut s = store();
    let nf = StoreError::NOT_FOUND;
    assert_eq!(err_of(s.update(k(b"m"), b"v", opts(), None, 0)), nf);
    assert_eq!(
        err_of(s.update_if_version(k(b"m"), b"v", opts(), 1, None, 0)),
        nf
    );
    assert_eq!(err_of(s.update_and_unlock(k(b"m"), b"v", opts(), 1, 0)), nf);
    assert_eq!(err_of(s.read(k(b"m"), 0)), nf);
    assert_eq!(err_of(s.read_and_lock(k(b"m"), 0)), nf);
    assert_eq!(err_of(s.unlock(k(b"m"), 1, 0)), nf);
    assert_eq!(err_of(s.refresh_lock(k(b"m"), 1, 0)), nf);
    assert_eq!(err_of(s.remove(k(b"m"), None, true, 0)), nf);
    assert_eq!(err_of(s.touch(k(b"m"), None, 0)), nf);
    assert_eq!(err_of(s.meta(k(b"m"), 0)), nf);
    assert_eq!(s.stats().objects, 0);
}

#[test]
fn update_if_version_checks_the_stored_version() {
    let mut s = store();
    s.put(k(b"a"), b"v1", opts(), 0).unwrap();
    s.put(k(b"a"), b"v2", opts(), 0).unwrap();
    assert_eq!(
        s.update_if_version(k(b"a"), b"v3", opts(), 1, None, 0),
        Err(StoreError::version_mismatch(2))
    );
    assert_eq!(
        &*s.read(k(b"a"), 0).unwrap().1,
        b"v2",
        "a mismatch changes nothing"
    );
    assert_eq!(
        s.update_if_version(k(b"a"), b"v3", opts(), 2, None, 0),
        Ok(3)
    );
    assert_eq!(&*s.read(k(b"a"), 0).unwrap().1, b"v3");
}

#[test]
fn remove_then_absent_and_recreated_at_version_1() {
    let mut s = store();
    s.put(k(b"a"), b"v1", opts(), 0).unwrap();
    s.put(k(b"a"), b"v2", opts(), 0).unwrap();
    assert_eq!(s.remove(k(b"a"), None, false, 0), Ok(()));
    assert_eq!(
        s.remove(k(b"a"), None, false, 0),
        Err(StoreError::NOT_FOUND)
    );
    assert_eq!(code(s.read(k(b"a"), 0)), ErrorCode::NotFound);
    assert_eq!(s.add(k(b"a"), b"v3", opts(), 0), Ok(1));
    s.assert_invariants();
    assert_eq!(s.stats().objects, 1);
}

#[test]
fn namespaces_separate_equal_keys() {
    let mut s = store();
    s.put(KeyRef::new(1, b"k"), b"one", opts(), 0).unwrap();
    s.put(KeyRef::new(2, b"k"), b"two", opts(), 0).unwrap();
    assert_eq!(&*s.read(KeyRef::new(1, b"k"), 0).unwrap().1, b"one");
    assert_eq!(&*s.read(KeyRef::new(2, b"k"), 0).unwrap().1, b"two");
    s.remove(KeyRef::new(1, b"k"), None, false, 0).unwrap();
    assert_eq!(&*s.read(KeyRef::new(2, b"k"), 0).unwrap().1, b"two");
}

#[test]
fn empty_key_and_empty_value_are_objects() {
    let mut s = store();
    assert_eq!(s.put(k(b""), b"", opts(), 0), Ok(1));
    let (m, v) = s.read(k(b""), 0).unwrap();
    assert_eq!((m.value_bytes, v.len()), (0, 0));
    s.assert_invariants();
}

#[test]
fn short_and_long_keys_round_trip() {
    let mut s = store();
    let keys: Vec<Vec<u8>> = [0usize, 1, 37, 38, 39, 40, 200, 1024]
        .iter()
        .map(|&n| (0..n).map(|i| b'a' + (i % 26) as u8).collect())
        .collect();
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(s.put(k(key), &[i as u8; 3], opts(), 0), Ok(1));
    }
    // Keys that share a prefix with a longer one stay distinct.
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(&*s.read(k(key), 0).unwrap().1, &[i as u8; 3]);
    }
    let (listed, _) = s.list_keys(NS, 0, 100, 100, 0);
    assert_eq!(
        listed.into_iter().collect::<BTreeSet<_>>(),
        keys.iter().cloned().collect()
    );
    s.assert_invariants();
    for key in &keys {
        s.remove(k(key), None, false, 0).unwrap();
    }
    assert_eq!(s.stats(), StoreStats::default());
}

#[test]
fn reads_share_the_stored_buffer_and_writes_never_disturb_it() {
    let mut s = store();
    s.put(k(b"a"), b"first", opts(), 0).unwrap();
    let (_, r1) = s.read(k(b"a"), 0).unwrap();
    let (_, r2) = s.read(k(b"a"), 0).unwrap();
    assert!(Rc::ptr_eq(&r1, &r2), "a read must not copy the value");
    s.put(k(b"a"), b"second", opts(), 0).unwrap();
    // A send still holding the old buffer sees the old bytes.
    assert_eq!(&*r1, b"first");
    assert_eq!(&*s.read(k(b"a"), 0).unwrap().1, b"second");
}

// ---- Limits ---------------------------------------------------------------------------------------

#[test]
fn key_and_value_limits_name_the_limit() {
    let limits = StoreLimits {
        object_bytes_max: 10,
        key_bytes_max: 4,
        ..StoreLimits::default()
    };
    let mut s = Store::new(limits, 1);
    let long = err(ErrorCode::KeyTooLong, 4);
    let large = err(ErrorCode::ObjectTooLarge, 10);
    assert_eq!(s.put(k(b"12345"), b"v", opts(), 0), Err(long));
    assert_eq!(s.add(k(b"12345"), b"v", opts(), 0), Err(long));
    assert_eq!(s.put(k(b"1234"), &[0; 11], opts(), 0), Err(large));
    assert_eq!(
        s.put(k(b"1234"), &[0; 10], opts(), 0),
        Ok(1),
        "limits are inclusive"
    );
    assert_eq!(s.update(k(b"1234"), &[0; 11], opts(), None, 0), Err(large));
    assert_eq!(
        s.update_and_unlock(k(b"1234"), &[0; 11], opts(), 5, 0),
        Err(large)
    );
    assert_eq!(
        s.read(k(b"1234"), 0).unwrap().0.version,
        1,
        "a refused write changes nothing"
    );
    assert_eq!(StoreLimits::default().key_bytes_max, 1024);
    assert_eq!(StoreLimits::default().object_bytes_max, 64 << 20);
}

#[test]
fn timeouts_above_the_maximum_are_refused() {
    let mut s = store();
    let bad = err(ErrorCode::BadTimeout, TIMEOUT_S_MAX as u64);
    let over = timed(TIMEOUT_S_MAX + 1, TimeoutKind::Sliding);
    assert_eq!(s.put(k(b"a"), b"v", over, 0), Err(bad));
    assert_eq!(s.ns_count(NS), 0);
    assert_eq!(
        s.put(k(b"a"), b"v", timed(TIMEOUT_S_MAX, TimeoutKind::Sliding), 0),
        Ok(1)
    );
    assert_eq!(
        code(s.touch(k(b"a"), over.timeout, 0)),
        ErrorCode::BadTimeout
    );
    assert_eq!(s.meta(k(b"a"), 0).unwrap().timeout.timeout_s, TIMEOUT_S_MAX);
}

// ---- Locks ----------------------------------------------------------------------------------------

#[test]
fn lock_contention_and_the_token_rules() {
    let mut s = store();
    s.put(k(b"a"), b"v", opts(), 0).unwrap();
    let (m, v, tok) = s.read_and_lock(k(b"a"), 0).unwrap();
    assert_ne!(tok, 0);
    assert_eq!(&*v, b"v");
    assert_eq!(m.version, 2, "taking a lock bumps the version");
    assert_eq!(
        m.lock,
        Some(LockInfo {
            expires_in_ms: 90_000
        })
    );

    let locked = StoreError::locked(89_000);
    assert_eq!(err_of(s.read_and_lock(k(b"a"), 1000)), locked);
    assert!(s.read(k(b"a"), 1000).is_ok(), "a plain read ignores locks");
    assert_eq!(
        s.meta(k(b"a"), 1000).unwrap().lock,
        Some(LockInfo {
            expires_in_ms: 89_000
        })
    );
    assert_eq!(err_of(s.update(k(b"a"), b"x", opts(), None, 1000)), locked);
    assert_eq!(
        err_of(s.update(k(b"a"), b"x", opts(), Some(tok ^ 1), 1000)),
        locked
    );
    assert_eq!(
        err_of(s.update_if_version(k(b"a"), b"x", opts(), 2, None, 1000)),
        locked
    );
    assert_eq!(
        err_of(s.update_and_unlock(k(b"a"), b"x", opts(), tok ^ 1, 1000)),
        locked
    );
    assert_eq!(err_of(s.unlock(k(b"a"), tok ^ 1, 1000)), locked);
    assert_eq!(err_of(s.refresh_lock(k(b"a"), tok ^ 1, 1000)), locked);
    assert_eq!(err_of(s.remove(k(b"a"), None, false, 1000)), locked);
    assert_eq!(
        s.meta(k(b"a"), 1000).unwrap().version,
        2,
        "refusals change nothing"
    );

    // The holder updates and keeps the lock, renewed by the write.
    assert_eq!(s.update(k(b"a"), b"x1", opts(), Some(tok), 2000), Ok(3));
    assert_eq!(
        s.meta(k(b"a"), 2000).unwrap().lock,
        Some(LockInfo {
            expires_in_ms: 90_000
        })
    );
    assert_eq!(
        s.update_if_version(k(b"a"), b"x2", opts(), 3, Some(tok), 2000),
        Ok(4)
    );
    assert_eq!(
        s.update_and_unlock(k(b"a"), b"x3", opts(), tok, 3000),
        Ok(5),
        "one bump for both"
    );
    let m = s.meta(k(b"a"), 3000).unwrap();
    assert_eq!((m.lock, m.version), (None, 5));

    // The released token no longer holds anything.
    let lost = StoreError::LOCK_LOST;
    assert_eq!(err_of(s.unlock(k(b"a"), tok, 3000)), lost);
    assert_eq!(err_of(s.refresh_lock(k(b"a"), tok, 3000)), lost);
    assert_eq!(
        err_of(s.update_and_unlock(k(b"a"), b"y", opts(), tok, 3000)),
        lost
    );
    assert_eq!(
        err_of(s.update(k(b"a"), b"y", opts(), Some(tok), 3000)),
        lost
    );
    assert_eq!(
        err_of(s.update_if_version(k(b"a"), b"y", opts(), 5, Some(tok), 3000)),
        lost
    );
    assert_eq!(err_of(s.remove(k(b"a"), Some(tok), false, 3000)), lost);
    assert_eq!(
        s.update(k(b"a"), b"y", opts(), None, 3000),
        Ok(6),
        "no lock, no token: fine"
    );
    s.assert_invariants();
}

#[test]
fn unlock_releases_and_relock_gets_a_new_token() {
    let mut s = store();
    s.put(k(b"a"), b"v", opts(), 0).unwrap();
    let (_, _, t1) = s.read_and_lock(k(b"a"), 0).unwrap();
    let m = s.unlock(k(b"a"), t1, 10).unwrap();
    assert_eq!(
        (m.version, m.lock),
        (3, None),
        "lock and unlock bump once each"
    );
    let (_, _, t2) = s.read_and_lock(k(b"a"), 20).unwrap();
    assert_ne!(t1, t2);
    assert_eq!(
        s.unlock(k(b"a"), t1, 30).map(|_| ()),
        Err(StoreError::locked(89_990))
    );
}

#[test]
fn locks_expire_and_refresh_restarts_them() {
    let mut s = store();
    s.put(k(b"a"), b"v", opts(), 0).unwrap();
    let (_, _, t1) = s.read_and_lock(k(b"a"), 0).unwrap();
    assert_eq!(
        s.read_and_lock(k(b"a"), 89_999).map(|_| ()),
        Err(StoreError::locked(1))
    );
    // Refresh restarts the expiry and bumps nothing.
    let m = s.refresh_lock(k(b"a"), t1, 50_000).unwrap();
    assert_eq!(
        (m.version, m.lock),
        (
            2,
            Some(LockInfo {
                expires_in_ms: 90_000
            })
        )
    );
    assert_eq!(
        s.read_and_lock(k(b"a"), 100_000).map(|_| ()),
        Err(StoreError::locked(40_000))
    );
    // Expired: no lock at all. Writers without a token pass; the old token is lost.
    assert_eq!(s.meta(k(b"a"), 140_000).unwrap().lock, None);
    assert_eq!(
        s.unlock(k(b"a"), t1, 140_000).map(|_| ()),
        Err(StoreError::LOCK_LOST)
    );
    let (_, _, t2) = s.read_and_lock(k(b"a"), 140_000).unwrap();
    assert_ne!(t2, t1);
    // The old holder now meets the new one.
    assert_eq!(
        s.update_and_unlock(k(b"a"), b"late", opts(), t1, 140_500),
        Err(StoreError::locked(89_500))
    );
    assert_eq!(s.update(k(b"a"), b"ok", opts(), Some(t2), 141_000), Ok(4));
    // An expired lock does not block a writer without a token either.
    assert_eq!(s.update(k(b"a"), b"free", opts(), None, 231_000), Ok(5));
    assert_eq!(s.meta(k(b"a"), 231_000).unwrap().lock, None);
}

#[test]
fn lock_timeout_is_the_configured_limit() {
    let limits = StoreLimits {
        lock_timeout_ms: 500,
        ..StoreLimits::default()
    };
    let mut s = Store::new(limits, 3);
    s.put(k(b"a"), b"v", opts(), 0).unwrap();
    let (m, _, _) = s.read_and_lock(k(b"a"), 100).unwrap();
    assert_eq!(m.lock, Some(LockInfo { expires_in_ms: 500 }));
    assert!(
        s.read_and_lock(k(b"a"), 600).is_ok(),
        "expired at 100 + 500"
    );
}

#[test]
fn put_ignores_and_clears_locks() {
    let mut s = store();
    s.put(k(b"a"), b"v", opts(), 0).unwrap();
    let (_, _, tok) = s.read_and_lock(k(b"a"), 0).unwrap();
    assert_eq!(s.put(k(b"a"), b"w", opts(), 10), Ok(3));
    assert_eq!(s.meta(k(b"a"), 10).unwrap().lock, None);
    assert_eq!(
        s.unlock(k(b"a"), tok, 10).map(|_| ()),
        Err(StoreError::LOCK_LOST)
    );
    assert_eq!(
        s.add(k(b"a"), b"x", opts(), 10),
        Err(StoreError::ALREADY_EXISTS),
        "add does not"
    );
}

#[test]
fn remove_respects_locks_unless_forced_or_the_holder() {
    let mut s = store();
    for key in [&b"a"[..], b"b"] {
        s.put(k(key), b"v", opts(), 0).unwrap();
    }
    let (_, _, ta) = s.read_and_lock(k(b"a"), 0).unwrap();
    let (_, _, tb) = s.read_and_lock(k(b"b"), 0).unwrap();
    assert_eq!(code(s.remove(k(b"a"), None, false, 0)), ErrorCode::Locked);
    assert_eq!(
        code(s.remove(k(b"a"), Some(tb), false, 0)),
        ErrorCode::Locked
    );
    assert_eq!(s.remove(k(b"a"), Some(ta), false, 0), Ok(()));
    assert_eq!(
        s.remove(k(b"b"), None, true, 0),
        Ok(()),
        "force ignores the lock"
    );
    assert_eq!(s.stats().objects, 0);
    s.assert_invariants();
}

#[test]
fn tokens_are_nonzero_distinct_and_seeded() {
    let mut g = TokenGen::new(0);
    let tokens: BTreeSet<u64> = (0..100_000).map(|_| g.next_token().get()).collect();
    assert_eq!(tokens.len(), 100_000);
    let mut a = TokenGen::new(1);
    let mut b = TokenGen::new(2);
    assert_ne!(a.next_token(), b.next_token());
}

// ---- Versions -------------------------------------------------------------------------------------

#[test]
fn version_bumps_exactly_on_changes() {
    let mut s = store();
    s.put(k(b"a"), b"v", timed(60, TimeoutKind::Sliding), 0)
        .unwrap();
    let v = |s: &mut Store| s.meta(k(b"a"), 0).unwrap().version;
    s.read(k(b"a"), 0).unwrap();
    s.meta(k(b"a"), 0).unwrap();
    s.touch(k(b"a"), None, 0).unwrap();
    assert_eq!(
        v(&mut s),
        1,
        "reads, meta and restarting a timeout change nothing"
    );
    let (_, _, tok) = s.read_and_lock(k(b"a"), 0).unwrap();
    assert_eq!(v(&mut s), 2, "lock taken");
    s.refresh_lock(k(b"a"), tok, 0).unwrap();
    assert_eq!(v(&mut s), 2, "refresh is not a change");
    s.unlock(k(b"a"), tok, 0).unwrap();
    assert_eq!(v(&mut s), 3, "lock released");
    s.touch(
        k(b"a"),
        Some(Timeout {
            timeout_s: 5,
            kind: TimeoutKind::Absolute,
        }),
        0,
    )
    .unwrap();
    assert_eq!(v(&mut s), 4, "timeout set");
}

// ---- Timeouts -------------------------------------------------------------------------------------

#[test]
fn absolute_timeout_runs_from_the_write_that_set_it() {
    let mut s = store();
    s.put(k(b"a"), b"v", timed(10, TimeoutKind::Absolute), 0)
        .unwrap();
    assert_eq!(s.meta(k(b"a"), 0).unwrap().expires_in_ms, Some(10_000));
    s.read(k(b"a"), 5000).unwrap();
    assert_eq!(
        s.meta(k(b"a"), 5000).unwrap().expires_in_ms,
        Some(5000),
        "reads do not restart"
    );
    s.update(k(b"a"), b"w", opts(), None, 6000).unwrap();
    assert_eq!(
        s.meta(k(b"a"), 6000).unwrap().expires_in_ms,
        Some(4000),
        "nor do updates"
    );
    assert!(s.read(k(b"a"), 9999).is_ok());
    assert_eq!(code(s.read(k(b"a"), 10_000)), ErrorCode::NotFound);
    assert_eq!(s.stats().expirations, 1);
    assert_eq!(s.stats().objects, 0, "the access removed it");

    s.put(k(b"b"), b"v", timed(10, TimeoutKind::Absolute), 0)
        .unwrap();
    s.put(k(b"b"), b"w", timed(10, TimeoutKind::Absolute), 8000)
        .unwrap();
    assert_eq!(
        s.meta(k(b"b"), 8000).unwrap().expires_in_ms,
        Some(10_000),
        "setting it restarts"
    );
}

#[test]
fn sliding_timeout_restarts_on_reads_and_updates_not_meta() {
    let mut s = store();
    s.put(k(b"a"), b"v", timed(10, TimeoutKind::Sliding), 0)
        .unwrap();
    s.read(k(b"a"), 8000).unwrap();
    assert_eq!(s.meta(k(b"a"), 17_000).unwrap().expires_in_ms, Some(1000));
    let (_, _, tok) = s.read_and_lock(k(b"a"), 17_500).unwrap();
    s.update_and_unlock(k(b"a"), b"w", opts(), tok, 27_000)
        .unwrap();
    assert!(s.meta(k(b"a"), 36_999).is_ok());
    assert_eq!(
        code(s.meta(k(b"a"), 37_000)),
        ErrorCode::NotFound,
        "meta restarted nothing"
    );

    // A refused read-and-lock read nothing, so it restarts nothing.
    s.put(k(b"b"), b"v", timed(10, TimeoutKind::Sliding), 0)
        .unwrap();
    s.read_and_lock(k(b"b"), 0).unwrap();
    assert_eq!(code(s.read_and_lock(k(b"b"), 5000)), ErrorCode::Locked);
    assert_eq!(s.meta(k(b"b"), 5000).unwrap().expires_in_ms, Some(5000));
}

#[test]
fn reset_on_update_timeout_ignores_reads() {
    let mut s = store();
    s.put(k(b"a"), b"v", timed(10, TimeoutKind::ResetOnUpdate), 0)
        .unwrap();
    s.read(k(b"a"), 8000).unwrap();
    s.read_and_lock(k(b"a"), 9000).unwrap();
    assert_eq!(code(s.read(k(b"a"), 10_000)), ErrorCode::NotFound);

    s.put(k(b"b"), b"v", timed(10, TimeoutKind::ResetOnUpdate), 0)
        .unwrap();
    s.put(k(b"b"), b"w", opts(), 8000).unwrap();
    assert_eq!(s.meta(k(b"b"), 8000).unwrap().expires_in_ms, Some(10_000));
}

#[test]
fn touch_restarts_any_kind_and_can_set_a_timeout() {
    let mut s = store();
    s.put(k(b"a"), b"v", timed(10, TimeoutKind::Absolute), 0)
        .unwrap();
    let m = s.touch(k(b"a"), None, 8000).unwrap();
    assert_eq!((m.expires_in_ms, m.version), (Some(10_000), 1));
    let t = Timeout {
        timeout_s: 3,
        kind: TimeoutKind::Sliding,
    };
    let m = s.touch(k(b"a"), Some(t), 9000).unwrap();
    assert_eq!((m.timeout, m.expires_in_ms, m.version), (t, Some(3000), 2));
    let never = Timeout {
        timeout_s: 0,
        kind: TimeoutKind::Absolute,
    };
    assert_eq!(
        s.touch(k(b"a"), Some(never), 9500).unwrap().expires_in_ms,
        None
    );
    assert!(s.read(k(b"a"), u64::MAX / 2).is_ok(), "0 s is never");
}

#[test]
fn a_write_without_a_timeout_keeps_the_objects_timeout() {
    let mut s = store();
    s.put(k(b"a"), b"v", timed(10, TimeoutKind::Sliding), 0)
        .unwrap();
    s.put(k(b"a"), b"w", opts(), 5000).unwrap();
    let m = s.meta(k(b"a"), 5000).unwrap();
    assert_eq!(
        m.timeout,
        Timeout {
            timeout_s: 10,
            kind: TimeoutKind::Sliding
        }
    );
    assert_eq!(m.expires_in_ms, Some(10_000));
    // A new object written without a timeout never expires.
    s.put(k(b"n"), b"v", opts(), 0).unwrap();
    assert_eq!(s.meta(k(b"n"), 0).unwrap().expires_in_ms, None);
    // An explicit 0 clears a timeout.
    s.put(k(b"a"), b"x", timed(0, TimeoutKind::Absolute), 6000)
        .unwrap();
    assert!(s.read(k(b"a"), 1 << 40).is_ok());
}

#[test]
fn expired_objects_are_never_returned() {
    let mut s = store();
    let keys: [&[u8]; 10] = [b"0", b"1", b"2", b"3", b"4", b"5", b"6", b"7", b"8", b"9"];
    for key in keys {
        s.put(k(key), b"v", timed(1, TimeoutKind::Absolute), 0)
            .unwrap();
    }
    s.put(k(b"live"), b"v", opts(), 0).unwrap();
    let now = 1000;
    let nf = ErrorCode::NotFound;
    assert_eq!(code(s.read(k(b"0"), now)), nf);
    assert_eq!(code(s.read_and_lock(k(b"1"), now)), nf);
    assert_eq!(code(s.meta(k(b"2"), now)), nf);
    assert_eq!(code(s.update(k(b"3"), b"w", opts(), None, now)), nf);
    assert_eq!(
        code(s.update_if_version(k(b"4"), b"w", opts(), 1, None, now)),
        nf
    );
    assert_eq!(code(s.update_and_unlock(k(b"5"), b"w", opts(), 1, now)), nf);
    assert_eq!(code(s.unlock(k(b"6"), 1, now)), nf);
    assert_eq!(code(s.remove(k(b"7"), None, true, now)), nf);
    assert_eq!(code(s.touch(k(b"8"), None, now)), nf);
    assert_eq!(
        s.add(k(b"9"), b"new", opts(), now),
        Ok(1),
        "add over an expired object creates"
    );
    assert_eq!(s.stats().expirations, 10);
    assert_eq!(s.stats().objects, 2);
    // Unswept expired objects are invisible to listing and iteration too.
    s.put(k(b"late"), b"v", timed(1, TimeoutKind::Absolute), 0)
        .unwrap();
    let (keys, _) = s.list_keys(NS, 0, 100, 100, now);
    assert_eq!(
        keys.into_iter().collect::<BTreeSet<_>>(),
        BTreeSet::from([b"9".to_vec(), b"live".to_vec()])
    );
    let seen: usize = (0..PARTITIONS)
        .map(|p| s.partition_iter(p, now).count())
        .sum();
    assert_eq!(seen, 2);
    s.assert_invariants();
}

// ---- Sweeping -------------------------------------------------------------------------------------

#[test]
fn sweep_is_bounded_and_reaches_everything() {
    let mut s = store();
    for i in 0u32..100 {
        let o = if i % 2 == 0 {
            timed(1, TimeoutKind::Absolute)
        } else {
            opts()
        };
        s.put(k(&i.to_le_bytes()), b"v", o, 0).unwrap();
    }
    assert_eq!(s.sweep(999, 1000), 0, "nothing expired yet");
    // Slots 0..10 hold keys 0..10: five of them expire.
    assert_eq!(s.sweep(1000, 10), 5);
    assert_eq!(s.stats().objects, 95);
    let mut total = 5;
    for _ in 0..20 {
        total += s.sweep(1000, 7);
    }
    assert_eq!(total, 50);
    assert_eq!(
        s.stats(),
        StoreStats {
            objects: 50,
            object_bytes: 50 * object_cost_bytes(4, 1),
            evictions: 0,
            expirations: 50
        }
    );
    assert_eq!(
        s.sweep(1000, usize::MAX),
        0,
        "a budget above the slot count wraps at most once"
    );
    s.assert_invariants();
    assert_eq!(Store::new(StoreLimits::default(), 0).sweep(0, 10), 0);
}

// ---- Memory and the LRU ---------------------------------------------------------------------------

/// A store that fits exactly `objects` objects of a 2-byte key and 100-byte value.
fn sized_store(objects: u64, lru_threshold_pct: u32) -> (Store, u64) {
    let cost = object_cost_bytes(2, 100);
    let limits = StoreLimits {
        memory_bytes_max: objects * cost,
        lru_threshold_pct,
        ..StoreLimits::default()
    };
    (Store::new(limits, 9), cost)
}

fn name(i: u32) -> Vec<u8> {
    format!("k{i}").into_bytes()
}

#[test]
fn eviction_takes_the_least_recently_used_with_a_second_chance() {
    let (mut s, cost) = sized_store(10, 100);
    for i in 0..10 {
        s.put(k(&name(i)), &[0; 100], opts(), 0).unwrap();
    }
    assert_eq!(s.stats().object_bytes, 10 * cost);
    s.read(k(b"k0"), 1).unwrap();
    s.read(k(b"k3"), 2).unwrap();
    // Reads only mark objects (CLOCK): the list keeps write order until eviction passes by.
    let expected: Vec<Vec<u8>> = [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]
        .into_iter()
        .map(name)
        .collect();
    assert_eq!(s.lru_keys(), expected);

    s.put(k(b"ka"), &[0; 100], opts(), 3).unwrap();
    assert_eq!(
        code(s.meta(k(b"k1"), 3)),
        ErrorCode::NotFound,
        "k0 was read, so it got a second chance: k1 was least recently used"
    );
    assert!(s.meta(k(b"k0"), 3).is_ok());
    assert_eq!(s.stats().evictions, 1);
    s.meta(k(b"k2"), 4).unwrap(); // meta is not a use
    s.put(k(b"kb"), &[0; 100], opts(), 5).unwrap();
    assert_eq!(code(s.meta(k(b"k2"), 5)), ErrorCode::NotFound);
    // Pinning k4 takes it off the list: the next eviction passes over it.
    s.put(k(b"k4"), &[0; 100], pinned(), 6).unwrap();
    s.put(k(b"kc"), &[0; 100], opts(), 7).unwrap();
    assert!(s.meta(k(b"k4"), 7).is_ok());
    assert_eq!(code(s.meta(k(b"k5"), 7)), ErrorCode::NotFound);
    assert_eq!(s.stats().evictions, 3);
    // k0 and k3 were moved to the head when eviction passed them, in that order.
    let expected: Vec<Vec<u8>> = [&b"kc"[..], b"k3", b"kb", b"ka", b"k0"]
        .iter()
        .map(|x| x.to_vec())
        .chain([9, 8, 7, 6].into_iter().map(name))
        .collect();
    assert_eq!(s.lru_keys(), expected);
    s.assert_invariants();
}

#[test]
fn eviction_starts_at_the_threshold() {
    let (mut s, cost) = sized_store(10, 50);
    for i in 0..20 {
        s.put(k(&name(i)), &[0; 100], opts(), i as u64).unwrap();
        s.assert_invariants();
    }
    assert_eq!(s.stats().objects, 5);
    assert_eq!(s.stats().object_bytes, 5 * cost);
    assert_eq!(s.stats().evictions, 15);
    let left: BTreeSet<Vec<u8>> = s.lru_keys().into_iter().collect();
    assert_eq!(left, (15..20).map(name).collect());
}

#[test]
fn eviction_counts_already_expired_objects_as_expirations() {
    let (mut s, _) = sized_store(2, 100);
    s.put(k(b"k0"), &[0; 100], timed(1, TimeoutKind::Absolute), 0)
        .unwrap();
    s.put(k(b"k1"), &[0; 100], opts(), 0).unwrap();
    s.put(k(b"k2"), &[0; 100], opts(), 5000).unwrap();
    assert_eq!((s.stats().evictions, s.stats().expirations), (0, 1));
}

#[test]
fn low_memory_changes_nothing() {
    let (mut s, cost) = sized_store(3, 100);
    s.put(k(b"k0"), &[0; 100], pinned(), 0).unwrap();
    s.put(k(b"k1"), &[1; 100], pinned(), 0).unwrap();
    s.put(k(b"k2"), &[2; 100], opts(), 0).unwrap();
    // Growing k0 past what evicting k2 could free: refused before anything is evicted.
    let big = vec![9u8; 200 + cost as usize];
    let before = s.stats();
    assert_eq!(
        s.put(k(b"k0"), &big, pinned(), 1),
        Err(StoreError::LOW_MEMORY)
    );
    assert_eq!(
        s.update(k(b"k0"), &big, pinned(), None, 1),
        Err(StoreError::LOW_MEMORY)
    );
    assert_eq!(s.stats(), before);
    let (m, v) = s.read(k(b"k0"), 1).unwrap();
    assert_eq!((m.version, &*v), (1, &[0u8; 100][..]));
    assert!(s.meta(k(b"k2"), 1).is_ok(), "nothing evicted");
    // A new pinned object that fits once k2 goes: k2 is evicted.
    assert_eq!(s.put(k(b"k3"), &[3; 100], pinned(), 2), Ok(1));
    assert_eq!(code(s.meta(k(b"k2"), 2)), ErrorCode::NotFound);
    // Now nothing is evictable: a new object cannot fit.
    assert_eq!(
        s.add(k(b"k4"), &[4; 100], opts(), 3),
        Err(StoreError::LOW_MEMORY)
    );
    assert_eq!(code(s.meta(k(b"k4"), 3)), ErrorCode::NotFound);
    // A write that does not grow never fails for memory.
    assert_eq!(s.put(k(b"k1"), &[5; 50], opts(), 4), Ok(2));
    s.assert_invariants();
}

#[test]
fn a_write_never_evicts_its_own_target() {
    let (mut s, cost) = sized_store(2, 100);
    s.put(k(b"k0"), &[0; 100], opts(), 0).unwrap();
    s.put(k(b"k1"), &[1; 100], pinned(), 0).unwrap();
    // k0 is the only evictable object; growing it cannot be paid for by evicting itself.
    let big = vec![0u8; 100 + 32];
    assert!(object_cost_bytes(2, big.len()) > cost);
    assert_eq!(
        s.put(k(b"k0"), &big, opts(), 1),
        Err(StoreError::LOW_MEMORY)
    );
    assert_eq!(s.read(k(b"k0"), 1).unwrap().0.version, 1);
    s.assert_invariants();
}

#[test]
fn accounted_bytes_track_real_allocations() {
    // The accounted cost should be what the process really holds for the objects, so
    // max_memory bounds resident memory. Compare with the bytes this thread allocated.
    let objects = 16_384u32; // a power of two: the slab's Vec has no spare capacity
    let mut s = store();
    let before = alloc_counter::live_bytes();
    for i in 0..objects {
        // Half the keys are stored inline in the entry, half in their own allocation.
        let key = if i % 2 == 0 {
            format!("session-{i:08}")
        } else {
            format!("{i:0>64}")
        };
        s.put(k(key.as_bytes()), &[7u8; 1000], opts(), 0).unwrap();
    }
    let allocated = (alloc_counter::live_bytes() - before) as f64;
    let accounted = s.stats().object_bytes as f64;
    let ratio = accounted / allocated;
    // Accounted bytes add malloc's rounding on top of requested sizes; table load varies.
    assert!(
        (0.99..1.06).contains(&ratio),
        "accounted {accounted} allocated {allocated} ratio {ratio}"
    );
}

// ---- Namespaces, listing, partitions --------------------------------------------------------------

#[test]
fn namespace_counts_and_clear() {
    let mut s = store();
    for i in 0u32..30 {
        let ns = 1 + i % 3;
        s.put(KeyRef::new(ns, &i.to_le_bytes()), b"v", opts(), 0)
            .unwrap();
    }
    assert_eq!(s.ns_count(1), 10);
    assert_eq!(s.ns_count(99), 0);
    let ids: BTreeMap<NsId, u64> = s.ns_ids().collect();
    assert_eq!(ids, BTreeMap::from([(1, 10), (2, 10), (3, 10)]));
    // Clear ignores locks, and counts expired objects as expirations.
    let (_, _, _) = s
        .read_and_lock(KeyRef::new(2, &1u32.to_le_bytes()), 0)
        .unwrap();
    s.put(
        KeyRef::new(2, b"short"),
        b"v",
        timed(1, TimeoutKind::Absolute),
        0,
    )
    .unwrap();
    assert_eq!(
        s.ns_count(2),
        11,
        "the count includes objects that will expire"
    );
    assert_eq!(s.ns_clear(2, 5000), 10);
    assert_eq!(s.stats().expirations, 1);
    assert_eq!(s.ns_count(2), 0);
    assert_eq!(s.ns_clear(2, 5000), 0);
    assert_eq!(s.ns_ids().count(), 2);
    s.remove(KeyRef::new(1, &0u32.to_le_bytes()), None, false, 0)
        .unwrap();
    assert_eq!(s.ns_count(1), 9);
    s.assert_invariants();
}

/// Pages through `ns` and returns every key with how often it came back.
fn list_all(
    s: &mut Store,
    ns: NsId,
    limit: usize,
    scan: usize,
    mut between_pages: impl FnMut(&mut Store),
) -> BTreeMap<Vec<u8>, usize> {
    let mut seen = BTreeMap::new();
    let mut cursor = Some(0);
    while let Some(from) = cursor {
        let (keys, next) = s.list_keys(ns, from, limit, scan, 0);
        assert!(keys.len() <= limit);
        if let Some(n) = next {
            assert!(n > from, "the cursor always advances");
        }
        for key in keys {
            *seen.entry(key).or_insert(0) += 1;
        }
        cursor = next;
        between_pages(s);
    }
    seen
}

#[test]
fn list_keys_returns_each_stable_key_exactly_once() {
    let mut s = store();
    let key = |i: u32| format!("key-{i}").into_bytes();
    for i in 0..1000 {
        s.put(KeyRef::new(1, &key(i)), b"v", opts(), 0).unwrap();
        if i % 2 == 0 {
            s.put(KeyRef::new(2, &key(i)), b"v", opts(), 0).unwrap();
        }
    }
    // Keys 0..500 stay for the whole listing; 500..1000 are removed while it runs, and new
    // keys are added, landing in freed slots behind and ahead of the cursor.
    let mut next_removed = 500;
    let mut next_added = 1000;
    let seen = list_all(&mut s, 1, 7, 50, |s| {
        for _ in 0..3 {
            if next_removed < 1000 {
                s.remove(KeyRef::new(1, &key(next_removed)), None, false, 0)
                    .unwrap();
                next_removed += 1;
            }
        }
        s.put(KeyRef::new(1, &key(next_added)), b"v", opts(), 0)
            .unwrap();
        next_added += 1;
    });
    assert!(seen.values().all(|&n| n == 1), "a key came back twice");
    for i in 0..500 {
        assert!(seen.contains_key(&key(i)), "stable key {i} missed");
    }
    assert!(seen.keys().all(|k| k.starts_with(b"key-")));
    // Namespace 2 lists its own keys only.
    let seen2 = list_all(&mut s, 2, 1000, 100_000, |_| {});
    assert_eq!(seen2.len(), 500);
    s.assert_invariants();
}

#[test]
fn list_keys_bounds_the_scan() {
    let mut s = store();
    s.put(KeyRef::new(1, b"first"), b"v", opts(), 0).unwrap();
    for i in 0u32..100 {
        s.put(KeyRef::new(2, &i.to_le_bytes()), b"v", opts(), 0)
            .unwrap();
    }
    s.put(KeyRef::new(1, b"last"), b"v", opts(), 0).unwrap();
    assert_eq!(
        s.list_keys(1, 0, 10, 10, 0),
        (vec![b"first".to_vec()], Some(10))
    );
    assert_eq!(
        s.list_keys(1, 10, 10, 10, 0),
        (vec![], Some(20)),
        "a sparse page is empty"
    );
    assert_eq!(
        s.list_keys(1, 0, 0, 10, 0),
        (vec![], Some(0)),
        "limit 0 scans nothing"
    );
    assert_eq!(
        s.list_keys(1, 20, 10, 1000, 0),
        (vec![b"last".to_vec()], None)
    );
    assert_eq!(
        s.list_keys(1, 5000, 10, 10, 0),
        (vec![], None),
        "past the end"
    );
}

#[test]
fn partitions_hold_their_own_objects() {
    let mut s = store();
    for i in 0u32..3000 {
        s.put(k(&i.to_le_bytes()), &i.to_le_bytes(), opts(), 0)
            .unwrap();
    }
    let (_, _, tok) = s.read_and_lock(k(&5u32.to_le_bytes()), 0).unwrap();
    let total: usize = (0..PARTITIONS).map(|p| s.partition_len(p)).sum();
    assert_eq!(total, 3000);
    let mut seen = 0;
    for p in 0..PARTITIONS {
        let items: Vec<_> = s.partition_iter(p, 0).collect();
        assert_eq!(items.len(), s.partition_len(p));
        for o in items {
            assert_eq!(partition_of(o.hash), p);
            assert_eq!(o.hash, key_hash(o.ns, o.key));
            assert_eq!(&**o.value, o.key, "value = key in this test");
            assert_eq!(o.lock_token.is_some(), o.key == 5u32.to_le_bytes());
            if o.lock_token.is_some() {
                assert_eq!(o.lock_token, Some(tok));
                assert_eq!(o.meta.version, 2);
            }
            seen += 1;
        }
    }
    assert_eq!(seen, 3000);
}

// ---- Costs ----------------------------------------------------------------------------------------

#[test]
fn read_allocates_nothing_and_a_write_allocates_its_value_once() {
    let mut s = store();
    let keys: Vec<Vec<u8>> = (0u32..1000).map(|i| format!("s{i}").into_bytes()).collect();
    for key in &keys {
        s.put(k(key), &[1; 1024], timed(60, TimeoutKind::Sliding), 0)
            .unwrap();
    }
    let hashes: Vec<KeyRef<'_>> = keys.iter().map(|key| k(key)).collect();
    let before = alloc_counter::allocations();
    let mut bytes = 0;
    for (i, kr) in hashes.iter().enumerate() {
        let (m, v) = s.read(*kr, i as u64).unwrap();
        bytes += v.len() + m.value_bytes as usize;
        let _ = s.meta(*kr, i as u64).unwrap();
    }
    // Error paths allocate nothing either.
    let _ = s.read(k(b"missing"), 0);
    assert_eq!(alloc_counter::allocations() - before, 0, "reads allocated");
    assert_eq!(bytes, 2 * 1024 * 1000);

    let (_, _, tok) = s.read_and_lock(hashes[0], 0).unwrap();
    let before = alloc_counter::allocations();
    let _ = s.read_and_lock(hashes[0], 0).unwrap_err();
    s.refresh_lock(hashes[0], tok, 0).unwrap();
    assert_eq!(
        alloc_counter::allocations() - before,
        0,
        "lock paths allocated"
    );

    let before = alloc_counter::allocations();
    s.put(hashes[1], &[2; 1024], opts(), 0).unwrap();
    s.update(hashes[2], &[2; 1024], opts(), None, 0).unwrap();
    assert_eq!(
        alloc_counter::allocations() - before,
        2,
        "one allocation per overwrite: the value"
    );
}

#[test]
fn table_hash_spreads_tags_within_a_partition() {
    // Keys of one partition share the top 10 bits of their hash; the table must not take its
    // 7-bit tag from there. See `table_hash`.
    let hashes: Vec<u64> = (0u32..400_000)
        .map(|i| key_hash(1, &i.to_le_bytes()))
        .filter(|&h| partition_of(h) == 0)
        .collect();
    assert!(hashes.len() > 300);
    let tags = |f: fn(u64) -> u64| {
        hashes
            .iter()
            .map(|&h| f(h) >> 57)
            .collect::<BTreeSet<_>>()
            .len()
    };
    assert_eq!(tags(|h| h), 1, "raw key hashes would share one tag");
    assert!(
        tags(table_hash) > 100,
        "table hashes spread over the 128 tags"
    );
}

#[test]
fn errors_convert_to_wire_replies_without_a_message() {
    let e = StoreError::locked(1234);
    let reply: ErrorReply = e.into();
    assert_eq!(reply, ErrorReply::new(ErrorCode::Locked, 1234));
    assert!(reply.message.is_empty());
    assert!(e.to_string().contains("1234 ms"), "{e}");
}

/// An object's content type (HTTP) rides behind its value in the one stored buffer: reads
/// return the buffer with `meta.content_type_bytes`, the value's length excludes it, memory
/// accounting includes it, an export/install (replication, migration) keeps it, a write
/// without one clears it, and Redis reads see the value alone.
#[test]
fn a_content_type_is_stored_behind_the_value() {
    let mut s = store();
    let typed = WriteOpts {
        content_type_bytes: 16,
        ..opts()
    };
    s.put(k(b"a"), b"{\"x\":1}application/json", typed, 1000)
        .unwrap();
    let (meta, v) = s.read(k(b"a"), 1001).unwrap();
    assert_eq!((meta.value_bytes, meta.content_type_bytes), (7, 16));
    assert_eq!(&v[..], b"{\"x\":1}application/json");
    assert_eq!(s.stats().object_bytes, object_cost_bytes(1, 23));
    // Redis sees the value alone.
    let got = s
        .redis(k(b"a"), stategrid_proto::RedisOp::Get, b"", 16, 1002)
        .unwrap();
    assert!(matches!(got, RedisOut::Value(v) if &v[..] == b"{\"x\":1}"));
    // A copy made from an export is the same object, type included.
    let (state, value) = s.export(k(b"a"), 1003).unwrap();
    assert_eq!(state.content_type_bytes, 16);
    let mut replica = store();
    replica.install(k(b"a"), &state, &value, 1003).unwrap();
    assert_eq!(
        replica.read(k(b"a"), 1004).unwrap().0.content_type_bytes,
        16
    );
    // A type longer than the trailer is refused and changes nothing.
    let bad = WriteOpts {
        content_type_bytes: 9,
        ..opts()
    };
    assert_eq!(
        code(s.put(k(b"a"), b"short", bad, 1005)),
        ErrorCode::InvalidRequest
    );
    // The value limit applies to the value, not to its type.
    let mut small = Store::new(
        StoreLimits {
            object_bytes_max: 4,
            ..StoreLimits::default()
        },
        1,
    );
    small
        .put(
            k(b"b"),
            b"abcdtext/plain",
            WriteOpts {
                content_type_bytes: 10,
                ..opts()
            },
            1,
        )
        .unwrap();
    // An update without a type clears it.
    s.put(k(b"a"), b"raw", opts(), 1006).unwrap();
    let (meta, v) = s.read(k(b"a"), 1007).unwrap();
    assert_eq!(
        (meta.value_bytes, meta.content_type_bytes, &v[..]),
        (3, 0, &b"raw"[..])
    );
    assert_eq!(s.stats().object_bytes, object_cost_bytes(1, 3));
}
