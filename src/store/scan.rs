//! Walks over many objects: namespaces, key listing, partition iteration.
//!
//! Key listing walks slab slots in order with a cursor. Slots are stable (an object keeps its
//! slot for life), so a key present for a whole listing is returned exactly once, whatever
//! else is added or removed meanwhile; an object added during a listing may or may not be
//! seen (it may land in a freed slot behind the cursor). Every walk has a bound per call.

use stategrid_proto::{Meta, NsId, PARTITIONS, ValueKind};

use super::{Store, Value};

/// A read-only view of one stored object, for migrating a partition.
#[derive(Debug, Clone, Copy)]
pub struct ObjectRef<'a> {
    pub ns: NsId,
    pub key: &'a [u8],
    /// `key_hash(ns, key)`.
    pub hash: u64,
    /// The stored buffer: the value, then `meta.content_type_bytes` of content type.
    pub value: &'a Value,
    /// Metadata as seen at the `now_ms` the iteration was made with.
    pub meta: Meta,
    /// The token of the lock held at that time, so a migrated object stays locked to the
    /// same holder.
    pub lock_token: Option<u64>,
}

impl Store {
    /// Objects in namespace `ns` on this shard. O(1): a kept count, so it includes expired
    /// objects that neither an access nor the sweeper has removed yet.
    pub fn ns_count(&self, ns: NsId) -> u64 {
        self.ns_counts.get(&ns).copied().unwrap_or(0)
    }

    /// The namespaces with objects on this shard, with their counts (as [`Store::ns_count`]).
    pub fn ns_ids(&self) -> impl Iterator<Item = (NsId, u64)> + '_ {
        self.ns_counts.iter().map(|(&ns, &n)| (ns, n))
    }

    /// Removes every object of `ns`, ignoring locks; returns how many live objects it removed
    /// (expired ones are counted as expirations instead).
    /// Cost: O(slab slots) unless the namespace is empty here: an administrative operation.
    pub fn ns_clear(&mut self, ns: NsId, now_ms: u64) -> u64 {
        let mut left = self.ns_count(ns);
        let mut removed = 0;
        let mut slot = 0;
        while left > 0 && slot < self.slots_end {
            if let Some(e) = self.slab.get(slot as usize).filter(|e| e.ns == ns) {
                if e.is_expired(now_ms) {
                    self.expire_slot(slot);
                } else {
                    self.remove_slot(slot);
                    removed += 1;
                }
                left -= 1;
            }
            slot += 1;
        }
        debug_assert_eq!(self.ns_count(ns), 0);
        removed
    }

    /// Objects of `ns` in the partitions `keep` accepts (in a store of several hosts, the
    /// partitions this host is primary of, so the hosts' counts add up to the store's).
    /// Cost: O(objects in the kept partitions), none when `ns` is empty here.
    pub fn ns_count_in(&self, ns: NsId, keep: impl Fn(u32) -> bool) -> u64 {
        if self.ns_count(ns) == 0 {
            return 0;
        }
        (0..PARTITIONS)
            .filter(|&p| keep(p))
            .map(|p| {
                self.tables[p as usize]
                    .iter()
                    .filter(|&&s| self.slab[s as usize].ns == ns)
                    .count() as u64
            })
            .sum()
    }

    /// Removes every object of `ns` in partition `p`, ignoring locks. Returns how many live
    /// objects it removed and whether it found any object of `ns` at all (expired ones count
    /// as expirations). Cost: O(objects in `p`).
    pub fn ns_clear_partition(&mut self, ns: NsId, p: u32, now_ms: u64) -> (u64, bool) {
        assert!(p < PARTITIONS, "partition {p} out of range");
        if self.ns_count(ns) == 0 {
            return (0, false);
        }
        let slots: Vec<u32> = self.tables[p as usize]
            .iter()
            .copied()
            .filter(|&s| self.slab[s as usize].ns == ns)
            .collect();
        let mut removed = 0;
        for &s in &slots {
            if self.slab[s as usize].is_expired(now_ms) {
                self.expire_slot(s);
            } else {
                self.remove_slot(s);
                removed += 1;
            }
        }
        (removed, !slots.is_empty())
    }

    /// Up to `limit` keys of namespace `ns`, scanning at most `scan_slots_max` slab slots from
    /// `from_slot`. Returns the keys and the slot to continue from, `None` when the scan reached
    /// the end. A page may hold fewer than `limit` keys (even none) and still have a next slot:
    /// the bound on scanned slots keeps one call's work small however sparse `ns` is.
    /// Expired objects met on the way are removed, whatever their namespace.
    /// Cost: O(scan_slots_max); one allocation per key returned (the reply owns its keys).
    pub fn list_keys(
        &mut self,
        ns: NsId,
        from_slot: u32,
        limit: usize,
        scan_slots_max: usize,
        now_ms: u64,
    ) -> (Vec<Vec<u8>>, Option<u32>) {
        self.list_keys_in(ns, from_slot, limit, scan_slots_max, now_ms, None, |_| true)
    }

    /// [`Store::list_keys`] restricted to the keys whose partition `keep` accepts (in a store of
    /// several hosts, the partitions this host is primary of: its replica copies are listed by
    /// their primaries, so a store-wide listing has no duplicates), and, when `kind` is given,
    /// to the objects whose value is of that kind (Redis `SCAN ... TYPE`).
    #[allow(clippy::too_many_arguments)]
    pub fn list_keys_in(
        &mut self,
        ns: NsId,
        from_slot: u32,
        limit: usize,
        scan_slots_max: usize,
        now_ms: u64,
        kind: Option<ValueKind>,
        keep: impl Fn(u32) -> bool,
    ) -> (Vec<Vec<u8>>, Option<u32>) {
        let mut keys = Vec::new();
        let mut slot = from_slot;
        let mut scanned = 0;
        while slot < self.slots_end && keys.len() < limit && scanned < scan_slots_max {
            if let Some(e) = self.slab.get(slot as usize) {
                if e.is_expired(now_ms) {
                    self.expire_slot(slot);
                } else if e.ns == ns
                    && kind.is_none_or(|k| e.kind == k)
                    && keep(stategrid_proto::partition_of(e.hash))
                {
                    keys.push(e.key.to_vec());
                }
            }
            slot += 1;
            scanned += 1;
        }
        let next = (slot < self.slots_end).then_some(slot);
        (keys, next)
    }

    /// Objects filed in partition `p` (expired-but-unremoved ones included).
    pub fn partition_len(&self, p: u32) -> usize {
        assert!(p < PARTITIONS, "partition {p} out of range");
        self.tables[p as usize].len()
    }

    /// The live objects of partition `p` at `now_ms`, in no particular order.
    /// Cost: O(partition's table size); allocates nothing.
    pub fn partition_iter(&self, p: u32, now_ms: u64) -> impl Iterator<Item = ObjectRef<'_>> + '_ {
        assert!(p < PARTITIONS, "partition {p} out of range");
        self.tables[p as usize]
            .iter()
            .map(|&s| &self.slab[s as usize])
            .filter(move |e| !e.is_expired(now_ms))
            .map(move |e| ObjectRef {
                ns: e.ns,
                key: &e.key[..],
                hash: e.hash,
                value: &e.value,
                meta: e.meta(now_ms),
                lock_token: e.live_lock(now_ms).map(|l| l.token.get()),
            })
    }
}
