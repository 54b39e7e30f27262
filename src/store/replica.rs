//! What replication and migration need from the store: an object's whole state out, and the
//! same state in, exactly (version, times, lock and timeout included), so a replica promoted
//! to primary serves what the old primary acknowledged.

use std::num::NonZeroU64;
use std::rc::Rc;

use stategrid_proto::{NsId, ObjectState, PARTITIONS, partition_of};

use super::entry::{Entry, KeyBytes, Lock, NIL, object_cost_bytes};
use super::{KeyRef, Store, StoreError, Value, table_hash};

/// Whether a request changed an object, compared before and after it: version and lock.
/// (A read that restarts a sliding timeout changes neither and is not replicated: after a
/// failover such an object's timeout runs from its last replicated change.)
pub type Stamp = Option<(u64, u64, u64)>;

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
        self.limits.check_value(value)?;
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
        let slot = self.slab.insert(Entry {
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
            referenced: false,
        });
        let slot = match u32::try_from(slot) {
            Ok(s) if s != NIL => s,
            _ => panic!("a shard holds at most {} objects", NIL - 1),
        };
        self.slots_end = self.slots_end.max(slot + 1);
        let slab = &self.slab;
        self.tables[partition_of(k.hash) as usize].insert_unique(table_hash(k.hash), slot, |&s| {
            table_hash(slab[s as usize].hash)
        });
        let cost = self.slab[slot as usize].cost_bytes();
        self.object_bytes += cost;
        if state.evictable {
            self.lru.push_head(&mut self.slab, slot);
            self.evictable_bytes += cost;
        }
        *self.ns_counts.entry(k.ns).or_insert(0) += 1;
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
