//! What replication and migration need from the store: an object's whole state out, and the
//! same state in, exactly (version, times, lock and timeout included), so a replica promoted
//! to primary serves what the old primary acknowledged.

use std::num::NonZeroU64;
use std::rc::Rc;

use stategrid_proto::{NsId, ObjectState, PARTITIONS, partition_of};

use super::entry::{Entry, KeyBytes, Lock, NIL, object_cost_bytes};
use super::{KeyRef, Store, StoreError, Value};

/// Whether a request changed an object, compared before and after it: version and lock.
/// (A read that restarts a sliding timeout changes neither: it is not replicated as a change
/// but recorded in the touch log, see [`Store::set_touch_log`].)
pub type Stamp = Option<(u64, u64, u64)>;

/// A restarted timeout taken from the touch log, for `ReplicateTouches`.
pub struct Touched {
    pub ns: NsId,
    pub key: Vec<u8>,
    pub partition: u32,
    pub version: u64,
    pub expires_at_ms: u64,
}

/// One object exported for a migration stream.
pub struct Exported {
    pub ns: NsId,
    pub key: Vec<u8>,
    pub state: ObjectState,
    pub value: Value,
}

fn state_of(e: &Entry) -> ObjectState {
    ObjectState {
        version: e.version,
        created_ms: e.created_ms,
        updated_ms: e.updated_ms,
        expires_at_ms: e.expires_at_ms,
        lock_token: e.lock.map_or(0, |l| l.token.get()),
        lock_expires_at_ms: e.lock.map_or(0, |l| l.expires_at_ms),
        timeout: e.timeout,
        evictable: e.evictable,
        kind: e.kind,
        content_type_bytes: e.content_type_bytes,
    }
}

impl Store {
    /// See [`Stamp`]. Cost: one probe.
    #[inline]
    pub fn stamp(&self, k: KeyRef<'_>) -> Stamp {
        self.find(k).map(|s| {
            let e = &self.slab[s as usize];
            (
                e.version,
                e.lock.map_or(0, |l| l.token.get()),
                e.lock.map_or(0, |l| l.expires_at_ms),
            )
        })
    }

    /// The object's whole state and value (None when absent or expired). Cost: one probe, a
    /// reference count on the value; no copy.
    pub fn export(&self, k: KeyRef<'_>, now_ms: u64) -> Option<(ObjectState, Value)> {
        let s = self.find(k)?;
        let e = &self.slab[s as usize];
        (!e.is_expired(now_ms)).then(|| (state_of(e), e.value.clone()))
    }

    /// Sets `k` to exactly `state` and `value`, replacing whatever is there; an already
    /// expired state removes the object. Fails (changing nothing) only with `LowMemory`, or
    /// when the key or value break this host's limits.
    pub fn install(
        &mut self,
        k: KeyRef<'_>,
        state: &ObjectState,
        value: &[u8],
        now_ms: u64,
    ) -> Result<(), StoreError> {
        self.limits.check_key(k.key)?;
        self.limits.check_value(value, state.content_type_bytes)?;
        let existing = self.find(k);
        if state.expires_at_ms != 0 && state.expires_at_ms <= now_ms {
            if let Some(s) = existing {
                self.remove_slot(s);
            }
            return Ok(());
        }
        let cost = object_cost_bytes(k.key.len(), value.len());
        self.make_room(existing, cost, now_ms)?;
        if let Some(s) = existing {
            self.remove_slot(s);
        }
        let lock = NonZeroU64::new(state.lock_token).map(|token| Lock {
            token,
            expires_at_ms: state.lock_expires_at_ms,
        });
        self.file(Entry {
            hash: k.hash,
            version: state.version,
            created_ms: state.created_ms,
            updated_ms: state.updated_ms,
            expires_at_ms: state.expires_at_ms,
            lock,
            value: Rc::from(value),
            key: KeyBytes::new(k.key),
            ns: k.ns,
            timeout: state.timeout,
            lru_prev: NIL,
            lru_next: NIL,
            evictable: state.evictable,
            kind: state.kind,
            referenced: false,
            content_type_bytes: state.content_type_bytes,
        });
        Ok(())
    }

    /// Removes `k` whatever its lock; returns whether it was there.
    pub fn remove_exact(&mut self, k: KeyRef<'_>) -> bool {
        match self.find(k) {
            Some(s) => {
                self.remove_slot(s);
                true
            }
            None => false,
        }
    }

    /// The slots of partition `p` now: a migration walks this list, so objects that move in
    /// the table meanwhile (a resize) are still visited. Cost: one allocation of 4 bytes per
    /// object of the partition.
    pub fn partition_slots(&self, p: u32) -> Vec<u32> {
        assert!(p < PARTITIONS, "partition {p} out of range");
        self.tables[p as usize].iter().copied().collect()
    }

    /// The object in `slot` if it is live and still in partition `p` (a slot freed and
    /// reused since [`Store::partition_slots`] may hold another object, or nothing).
    pub fn export_slot(&self, slot: u32, p: u32, now_ms: u64) -> Option<Exported> {
        let e = self.slab.get(slot as usize)?;
        if partition_of(e.hash) != p || e.is_expired(now_ms) {
            return None;
        }
        Some(Exported {
            ns: e.ns,
            key: e.key[..].to_vec(),
            state: state_of(e),
            value: e.value.clone(),
        })
    }

    /// Starts (or stops, dropping what it holds) recording which objects had their timeout
    /// restarted without a change: a read of a sliding object, a `touch` without a new
    /// timeout. Those restarts change no version, so they are not replicated as changes; the
    /// shard takes the log every `sliding_touch_replication_ms` and sends it to the replicas
    /// (`ReplicateTouches`), so an object that is only read survives a failover. Cost while
    /// on: one hash-set insert per such restart (a key read a thousand times between two
    /// batches is sent once).
    pub fn set_touch_log(&mut self, on: bool) {
        if on != self.touched.is_some() {
            self.touched = on.then(hashbrown::HashSet::new);
        }
    }

    /// Takes the touch log: each live object whose timeout was restarted since the last call,
    /// with its current version and deadline. A slot freed and reused since is reported with
    /// the object it holds now, whose state the replicas already have (harmless). Cost: one
    /// key copy per object.
    pub fn take_touches(&mut self, now_ms: u64) -> Vec<Touched> {
        let Some(t) = self.touched.as_mut() else {
            return Vec::new();
        };
        if t.is_empty() {
            return Vec::new();
        }
        let slots: Vec<u32> = t.drain().collect();
        slots
            .into_iter()
            .filter_map(|s| {
                let e = self.slab.get(s as usize)?;
                (e.expires_at_ms != 0 && !e.is_expired(now_ms)).then(|| Touched {
                    ns: e.ns,
                    key: e.key[..].to_vec(),
                    partition: partition_of(e.hash),
                    version: e.version,
                    expires_at_ms: e.expires_at_ms,
                })
            })
            .collect()
    }

    /// A replica's side of a touch from the primary: moves the deadline of `k` later to
    /// `expires_at_ms`, but only if the object is here, live, and exactly at `version`. So a
    /// touch never re-creates a removed (or expired) object, never changes a newer state (a
    /// change replicated after the touch left), and never shortens a deadline. Returns
    /// whether it applied. Cost: one probe.
    pub fn apply_touch(
        &mut self,
        k: KeyRef<'_>,
        version: u64,
        expires_at_ms: u64,
        now_ms: u64,
    ) -> bool {
        let Some(s) = self.find(k) else {
            return false;
        };
        let e = &mut self.slab[s as usize];
        if e.is_expired(now_ms)
            || e.version != version
            || e.expires_at_ms == 0
            || expires_at_ms <= e.expires_at_ms
        {
            return false;
        }
        e.expires_at_ms = expires_at_ms;
        true
    }

    /// Drops every object of partition `p` (this host no longer holds a copy). Returns how
    /// many were dropped. Cost: O(objects in `p`).
    pub fn drop_partition(&mut self, p: u32) -> u64 {
        let slots = self.partition_slots(p);
        for &s in &slots {
            self.remove_slot(s);
        }
        slots.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use stategrid_proto::{Timeout, TimeoutKind, WriteOpts, key_hash};

    use super::*;
    use crate::store::StoreLimits;

    const NS: NsId = 3;
    const NOW: u64 = 1_000_000;

    fn k(key: &[u8]) -> KeyRef<'_> {
        KeyRef::new(NS, key)
    }

    #[test]
    fn a_copy_installed_from_an_export_is_the_same_object() {
        let mut primary = Store::new(StoreLimits::default(), 1);
        let opts = WriteOpts {
            timeout: Some(Timeout {
                timeout_s: 600,
                kind: TimeoutKind::Sliding,
            }),
            evictable: false,
            content_type_bytes: 0,
        };
        primary.put(k(b"s"), b"cart", opts, NOW).unwrap();
        primary.put(k(b"s"), b"cart2", opts, NOW + 5).unwrap();
        let (_, _, token) = primary.read_and_lock(k(b"s"), NOW + 7).unwrap();
        let (state, value) = primary.export(k(b"s"), NOW + 8).unwrap();
        assert_eq!(state.lock_token, token);

        let mut replica = Store::new(StoreLimits::default(), 2);
        replica.install(k(b"s"), &state, &value, NOW + 9).unwrap();
        // Version, times, lock (same token), timeout and evictability all survive.
        assert_eq!(replica.export(k(b"s"), NOW + 9).unwrap().0, state);
        assert_eq!(
            replica.meta(k(b"s"), NOW + 9).unwrap(),
            primary.meta(k(b"s"), NOW + 9).unwrap()
        );
        assert_eq!(replica.stats().object_bytes, primary.stats().object_bytes);
        // The lock holds on the copy: the holder's token works, another writer is refused.
        assert!(
            replica
                .update(k(b"s"), b"x", WriteOpts::default(), None, NOW + 10)
                .is_err()
        );
        replica
            .update_and_unlock(k(b"s"), b"done", opts, token, NOW + 11)
            .unwrap();

        // Installing over an existing object replaces it; an expired state removes it.
        replica.install(k(b"s"), &state, &value, NOW + 12).unwrap();
        assert_eq!(replica.export(k(b"s"), NOW + 12).unwrap().0, state);
        let expired = ObjectState {
            expires_at_ms: NOW,
            ..state
        };
        replica
            .install(k(b"s"), &expired, &value, NOW + 13)
            .unwrap();
        assert!(replica.export(k(b"s"), NOW + 13).is_none());
        assert_eq!(replica.stats().objects, 0);
        assert_eq!(replica.stats().object_bytes, 0);
    }

    #[test]
    fn touches_are_logged_and_applied_only_to_the_same_live_version() {
        let sliding = WriteOpts {
            timeout: Some(Timeout {
                timeout_s: 4,
                kind: TimeoutKind::Sliding,
            }),
            evictable: true,
            content_type_bytes: 0,
        };
        let mut primary = Store::new(StoreLimits::default(), 1);
        primary.put(k(b"s"), b"cart", sliding, NOW).unwrap();
        primary
            .put(k(b"t"), b"x", WriteOpts::default(), NOW)
            .unwrap();
        let mut replica = Store::new(StoreLimits::default(), 2);
        let (state, value) = primary.export(k(b"s"), NOW).unwrap();
        replica.install(k(b"s"), &state, &value, NOW).unwrap();

        // Off: nothing is recorded.
        primary.read(k(b"s"), NOW + 10).unwrap();
        assert!(primary.take_touches(NOW + 10).is_empty());
        primary.set_touch_log(true);
        // Many reads of one object are one entry; an object without a timeout is none.
        for i in 0..5 {
            primary.read(k(b"s"), NOW + 1000 + i).unwrap();
            primary.read(k(b"t"), NOW + 1000 + i).unwrap();
        }
        let t = primary.take_touches(NOW + 1005);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].key, b"s");
        assert_eq!(t[0].version, state.version);
        assert_eq!(t[0].expires_at_ms, NOW + 1004 + 4000);
        assert_eq!(t[0].partition, partition_of(key_hash(NS, b"s")));
        assert!(primary.take_touches(NOW + 1005).is_empty(), "taken once");

        // Applied to the same version: the replica's deadline moves later (never earlier).
        assert!(replica.apply_touch(k(b"s"), t[0].version, t[0].expires_at_ms, NOW + 1006));
        assert_eq!(
            replica.export(k(b"s"), NOW + 4500).unwrap().0.expires_at_ms,
            NOW + 5004
        );
        assert!(!replica.apply_touch(k(b"s"), t[0].version, NOW + 2000, NOW + 1006));
        // A newer state on the replica is not overwritten by an older touch.
        primary.put(k(b"s"), b"cart2", sliding, NOW + 1100).unwrap();
        let (newer, v2) = primary.export(k(b"s"), NOW + 1100).unwrap();
        replica.install(k(b"s"), &newer, &v2, NOW + 1100).unwrap();
        assert!(!replica.apply_touch(k(b"s"), state.version, NOW + 9000, NOW + 1101));
        assert_eq!(
            replica.export(k(b"s"), NOW + 1101).unwrap().0.expires_at_ms,
            newer.expires_at_ms
        );
        // A removed object is never re-created by a touch.
        replica.remove_exact(k(b"s"));
        assert!(!replica.apply_touch(k(b"s"), newer.version, NOW + 9000, NOW + 1102));
        assert!(replica.export(k(b"s"), NOW + 1102).is_none());
        assert_eq!(replica.stats().objects, 0);
        // A removed object is not reported by the primary either.
        primary.read(k(b"s"), NOW + 1200).unwrap();
        primary.remove_exact(k(b"s"));
        assert!(primary.take_touches(NOW + 1201).is_empty());
        // `touch` without a new timeout is a restart too.
        primary.put(k(b"u"), b"x", sliding, NOW + 1300).unwrap();
        primary.touch(k(b"u"), None, NOW + 1400).unwrap();
        assert_eq!(primary.take_touches(NOW + 1401).len(), 1);
    }

    #[test]
    fn a_partition_is_exported_slot_by_slot_and_dropped_whole() {
        let mut s = Store::new(StoreLimits::default(), 1);
        let keys: Vec<Vec<u8>> = (0..2000).map(|i| format!("k{i}").into_bytes()).collect();
        for key in &keys {
            s.put(k(key), b"v", WriteOpts::default(), NOW).unwrap();
        }
        let p = partition_of(key_hash(NS, &keys[0]));
        let in_p: Vec<&Vec<u8>> = keys
            .iter()
            .filter(|key| partition_of(key_hash(NS, key)) == p)
            .collect();
        let slots = s.partition_slots(p);
        assert_eq!(slots.len(), in_p.len());
        let mut exported: Vec<Vec<u8>> = slots
            .iter()
            .filter_map(|&slot| s.export_slot(slot, p, NOW))
            .map(|e| e.key)
            .collect();
        exported.sort();
        let mut want: Vec<Vec<u8>> = in_p.iter().map(|k| k.to_vec()).collect();
        want.sort();
        assert_eq!(exported, want);
        // A slot freed and reused by another partition's object is not exported as p's.
        s.remove_exact(k(in_p[0]));
        let other = (0..)
            .map(|i| format!("o{i}").into_bytes())
            .find(|key| partition_of(key_hash(NS, key)) != p)
            .unwrap();
        s.put(k(&other), b"v", WriteOpts::default(), NOW).unwrap();
        let again: usize = slots
            .iter()
            .filter(|&&slot| s.export_slot(slot, p, NOW).is_some())
            .count();
        assert_eq!(again, in_p.len() - 1);

        let before = s.stats().objects;
        assert_eq!(s.drop_partition(p), (in_p.len() - 1) as u64);
        assert_eq!(s.stats().objects, before - (in_p.len() as u64 - 1));
        assert_eq!(s.partition_len(p), 0);
    }
}
