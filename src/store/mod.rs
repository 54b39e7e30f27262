//! One shard's object store. HOT PATH: `read`, `put`, `update` run for every request.
//!
//! A pure data structure: no I/O, no threads, no clock of its own. Every operation takes
//! `now_ms` (Unix milliseconds, read once per batch by the caller), so tests move a fake
//! clock and the shard decides how often to read the real one.
//!
//! Files, one concept each:
//! - this file: [`Store`], one method per protocol operation, and the write path.
//! - `entry`: one object ([`Value`], metadata) and what it costs in memory.
//! - `lru`: the exact, intrusive LRU list of evictable objects.
//! - `lock`: lock tokens and the rules for presenting one.
//! - `expiry`: timeout deadlines and the bounded sweeper.
//! - `scan`: whole-store walks: namespaces, key listing, partition iteration.
//! - `limits`: [`StoreLimits`] and [`StoreStats`]; `error`: [`StoreError`].
//!
//! # Layout
//! Objects live in a slab at stable `u32` slots. Each of the [`PARTITIONS`] partitions has its
//! own hash table of slots, so a partition can be iterated and migrated alone and a table
//! resize moves about 1/1024 of the shard's slots, not all of them at once. Lookups use the
//! caller's precomputed `key_hash` and compare namespace and key bytes against the entry: no
//! re-hashing and no allocation.
//!
//! # Semantics (ScaleOut's, made exact)
//! - **Versions** start at 1 and are bumped by every change others can observe: a value write,
//!   a timeout set (`touch` with a timeout), a lock taken, a lock released (`update_and_unlock`
//!   bumps once for both). Reads, `meta`, `refresh_lock`, and restarting a timeout do not bump.
//!   A re-created object starts again at 1.
//! - **Timeouts**: Absolute expires `timeout_s` after the write that set it; Sliding is
//!   restarted by every read and every update; ResetOnUpdate by updates only. `meta` restarts
//!   nothing. `touch` restarts any kind (and sets a new timeout when given one). A write
//!   without a timeout keeps the object's timeout (a new object gets none). An expired object
//!   is absent to every operation; the access that finds it removes it (an expiration).
//! - **Locks**: see `lock`. `put` ignores and clears locks (ScaleOut's AddOrUpdate);
//!   `remove` respects them unless forced; `touch`, `read` and `meta` ignore them.
//! - **Memory**: a write that would take the accounted bytes above `lru_threshold_pct` of
//!   `memory_bytes_max` first evicts least recently used evictable objects. A write that could
//!   not fit under `memory_bytes_max` even after evicting every other evictable object fails
//!   with `LowMemory` before anything is evicted or changed. A write that does not grow the
//!   accounted bytes never fails for memory. Locked objects may be evicted: a lock protects
//!   against other writers, not against running out of memory.
//! - **Use** (for the LRU): every operation on an object except `meta` uses it. Eviction is
//!   CLOCK (second chance) over the write-ordered list: a write moves the object to the head;
//!   a read or other use only marks it, and eviction moves a marked object to the head
//!   (clearing the mark) instead of evicting it. So objects used since eviction last passed
//!   them outlive unused ones, and a read costs no cache lines beyond the entry's own
//!   (relinking on every read measured 10% of server CPU at 650K reads/s).
//! - **Refusals** change nothing: an operation that fails (`Locked`, `VersionMismatch`,
//!   `LowMemory`, a limit) restarts no timeout and moves nothing in the LRU order. Only the
//!   removal of an expired object it found is kept, as that object was already absent.

mod entry;
mod error;
mod expiry;
pub mod hash;
mod limits;
mod lock;
mod lru;
mod redis;
mod replica;
mod scan;

#[cfg(test)]
mod alloc_counter;
#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod tests;

use std::num::NonZeroU64;
use std::rc::Rc;

use hashbrown::{HashMap, HashTable};
use slab::Slab;
use stategrid_proto::{
    Meta, NsId, PARTITIONS, Timeout, TimeoutKind, ValueKind, WriteOpts, partition_of,
};

use entry::{Entry, KeyBytes, Lock, NIL, object_cost_bytes};
use expiry::deadline_ms;
use limits::check_timeout;
use lock::{TokenGen, permit, require_holder};
use lru::Lru;

pub use entry::Value;
pub use error::StoreError;
pub use limits::{StoreLimits, StoreStats};
pub use redis::{RedisOut, parse_i64};
pub use replica::{Exported, Stamp, Touched};
pub use scan::ObjectRef;

/// The address of one object: namespace, key, and the key's hash computed once by the caller
/// (the network layer needs it anyway to route the request to this shard).
#[derive(Debug, Clone, Copy)]
pub struct KeyRef<'a> {
    pub ns: NsId,
    pub key: &'a [u8],
    /// `stategrid_proto::key_hash(ns, key)`.
    pub hash: u64,
}

impl<'a> KeyRef<'a> {
    /// Hashes the key. For callers that do not have the hash yet.
    #[inline]
    pub fn new(ns: NsId, key: &'a [u8]) -> Self {
        KeyRef {
            ns,
            key,
            hash: stategrid_proto::key_hash(ns, key),
        }
    }

    /// Uses a hash the caller already computed. A wrong hash would file the object where no
    /// lookup finds it, so debug builds check it.
    #[inline]
    pub fn with_hash(ns: NsId, key: &'a [u8], hash: u64) -> Self {
        debug_assert_eq!(
            hash,
            stategrid_proto::key_hash(ns, key),
            "KeyRef hash does not belong to the key"
        );
        KeyRef { ns, key, hash }
    }
}

/// The hash a partition table files a slot under.
///
/// A partition is the top 10 bits of `key_hash`, so every key in one table shares them, and
/// hashbrown takes its 7-bit control tag from the top bits: fed `key_hash` unchanged, every
/// slot of a table would carry the same tag and each probe would compare every key in its
/// group. Swapping the halves gives the tag bits 25..32 of the key hash instead (independent
/// of the partition), and the bucket index bits 32.. (independent of the tag).
#[inline]
fn table_hash(key_hash: u64) -> u64 {
    key_hash.rotate_left(32)
}

/// Which write a request asks for; one write path serves them all so the checks happen in
/// one order: limits, existence, lock, version, memory, then the change.
#[derive(Debug, Clone, Copy)]
enum WriteMode {
    Add,
    Put,
    Update {
        lock_token: Option<u64>,
    },
    UpdateIfVersion {
        version: u64,
        lock_token: Option<u64>,
    },
    UpdateAndUnlock {
        lock_token: u64,
    },
}

/// One shard's objects. Not `Send` (values are `Rc`): it lives on its shard's thread.
pub struct Store {
    limits: StoreLimits,
    slab: Slab<Entry>,
    /// One table per partition, of slab slots. An empty `HashTable` allocates nothing, so the
    /// partitions this shard does not own cost 32 bytes each.
    tables: Box<[HashTable<u32>]>,
    lru: Lru,
    /// Objects per namespace (expired-but-unswept ones included); a namespace leaves the map
    /// when its count reaches 0.
    ns_counts: HashMap<NsId, u64>,
    tokens: TokenGen,
    /// One past the highest slot ever used: the end of slot scans.
    slots_end: u32,
    /// Where the next `sweep` starts.
    sweep_cursor: u32,
    object_bytes: u64,
    /// Accounted bytes of the evictable objects: what eviction could free at most.
    evictable_bytes: u64,
    evictions: u64,
    expirations: u64,
    /// Slots whose timeout was restarted without a change (see [`Store::set_touch_log`]):
    /// the shard sends them to the replicas in batches. `None`: not recorded.
    touched: Option<hashbrown::HashSet<u32>>,
}

impl Store {
    /// An empty store. `seed` varies the lock tokens (use a different one per shard and per
    /// start, e.g. the clock mixed with the shard id).
    pub fn new(limits: StoreLimits, seed: u64) -> Store {
        limits.assert_valid();
        Store {
            limits,
            slab: Slab::new(),
            tables: (0..PARTITIONS).map(|_| HashTable::new()).collect(),
            lru: Lru::new(),
            ns_counts: HashMap::new(),
            tokens: TokenGen::new(seed),
            slots_end: 0,
            sweep_cursor: 0,
            object_bytes: 0,
            evictable_bytes: 0,
            evictions: 0,
            expirations: 0,
            touched: None,
        }
    }

    pub fn limits(&self) -> &StoreLimits {
        &self.limits
    }

    /// Changes the limits while the store runs (a store-wide parameter set with
    /// `stategrid set NAME VALUE --all`). Objects already stored are kept: a lower memory limit
    /// is reached by evictions on later writes, a new lock timeout applies to locks taken or
    /// refreshed from now on.
    pub fn set_limits(&mut self, limits: StoreLimits) {
        limits.assert_valid();
        self.limits = limits;
    }

    /// This shard's counters.
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            objects: self.slab.len() as u64,
            object_bytes: self.object_bytes,
            evictions: self.evictions,
            expirations: self.expirations,
        }
    }

    // ---- Writes: each returns the object's new version --------------------------------------

    /// Creates the object; `AlreadyExists` when it is present (and not expired).
    /// Cost: one table probe; a new object allocates its value (one copy), and its key when
    /// longer than 38 bytes, and may grow the slab or the partition table (amortized).
    pub fn add(
        &mut self,
        k: KeyRef<'_>,
        value: &[u8],
        opts: WriteOpts,
        now_ms: u64,
    ) -> Result<u64, StoreError> {
        self.write(k, value, opts, WriteMode::Add, now_ms)
    }

    /// Creates or replaces the object, ignoring and clearing any lock (ScaleOut's
    /// AddOrUpdate). Also the per-item operation of a bulk put.
    /// Cost: one table probe, one value allocation and copy; a new object also pays as `add`.
    pub fn put(
        &mut self,
        k: KeyRef<'_>,
        value: &[u8],
        opts: WriteOpts,
        now_ms: u64,
    ) -> Result<u64, StoreError> {
        self.write(k, value, opts, WriteMode::Put, now_ms)
    }

    /// Replaces an existing object; a locked one needs its holder's token, which keeps (and
    /// renews) the lock. Cost: one table probe, one value allocation and copy.
    pub fn update(
        &mut self,
        k: KeyRef<'_>,
        value: &[u8],
        opts: WriteOpts,
        lock_token: Option<u64>,
        now_ms: u64,
    ) -> Result<u64, StoreError> {
        self.write(k, value, opts, WriteMode::Update { lock_token }, now_ms)
    }

    /// `update` only if the stored version is `version`: `VersionMismatch` (detail = the stored
    /// version) otherwise. Lock rules are checked first: a locked object answers `Locked`.
    pub fn update_if_version(
        &mut self,
        k: KeyRef<'_>,
        value: &[u8],
        opts: WriteOpts,
        version: u64,
        lock_token: Option<u64>,
        now_ms: u64,
    ) -> Result<u64, StoreError> {
        let mode = WriteMode::UpdateIfVersion {
            version,
            lock_token,
        };
        self.write(k, value, opts, mode, now_ms)
    }

    /// Replaces the value and releases the lock `lock_token` holds, in one step.
    /// Cost: one table probe, one value allocation and copy.
    pub fn update_and_unlock(
        &mut self,
        k: KeyRef<'_>,
        value: &[u8],
        opts: WriteOpts,
        lock_token: u64,
        now_ms: u64,
    ) -> Result<u64, StoreError> {
        self.write(
            k,
            value,
            opts,
            WriteMode::UpdateAndUnlock { lock_token },
            now_ms,
        )
    }

    // ---- Reads and object operations ---------------------------------------------------------

    /// Starts loading the object's entry and value into cache without changing anything, so
    /// that a batch of pipelined requests overlaps its cache misses instead of taking them one
    /// after another. Cost: one table probe (the misses it takes now are hits later).
    #[inline]
    pub fn prefetch(&self, k: KeyRef<'_>) {
        if let Some(slot) = self.find(k) {
            let v = self.slab[slot as usize].value.as_ptr();
            #[cfg(target_arch = "x86_64")]
            // SAFETY: a prefetch hint never faults; the pointer is the live value's data, and
            // its refcount header sits in the same or the previous cache line.
            unsafe {
                use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
                _mm_prefetch::<_MM_HINT_T0>(v.wrapping_sub(16) as *const i8);
            }
            #[cfg(not(target_arch = "x86_64"))]
            let _ = v;
        }
    }

    /// The object's metadata and value; restarts a sliding timeout; ignores locks.
    /// Cost: one table probe, an `Rc` clone (a refcount bump): no allocation, no copy.
    #[inline]
    pub fn read(&mut self, k: KeyRef<'_>, now_ms: u64) -> Result<(Meta, Value), StoreError> {
        let slot = self.find_live(k, now_ms).ok_or(StoreError::NOT_FOUND)?;
        if self.slab[slot as usize].kind != ValueKind::String {
            return Err(StoreError::WRONG_TYPE);
        }
        self.note_read(slot, now_ms);
        let e = &self.slab[slot as usize];
        Ok((e.meta(now_ms), Rc::clone(&e.value)))
    }

    /// Reads and takes the lock in one step; returns the new lock token. `Locked` (detail = ms
    /// until the lock expires) when it is held. Bumps the version.
    /// Cost: one table probe, an `Rc` clone; no allocation.
    pub fn read_and_lock(
        &mut self,
        k: KeyRef<'_>,
        now_ms: u64,
    ) -> Result<(Meta, Value, u64), StoreError> {
        let slot = self.find_live(k, now_ms).ok_or(StoreError::NOT_FOUND)?;
        let e = &mut self.slab[slot as usize];
        if let Some(l) = e.live_lock(now_ms) {
            return Err(StoreError::locked(l.expires_at_ms - now_ms));
        }
        let token = self.tokens.next_token();
        e.lock = Some(Lock {
            token,
            expires_at_ms: now_ms.saturating_add(self.limits.lock_timeout_ms),
        });
        e.version += 1;
        self.note_read(slot, now_ms);
        let e = &self.slab[slot as usize];
        Ok((e.meta(now_ms), Rc::clone(&e.value), token.get()))
    }

    /// Releases the lock `lock_token` holds; bumps the version. Cost: one table probe.
    pub fn unlock(
        &mut self,
        k: KeyRef<'_>,
        lock_token: u64,
        now_ms: u64,
    ) -> Result<Meta, StoreError> {
        let slot = self.find_live(k, now_ms).ok_or(StoreError::NOT_FOUND)?;
        let e = &mut self.slab[slot as usize];
        require_holder(e, lock_token, now_ms)?;
        e.lock = None;
        e.version += 1;
        Ok(self.note_use(slot, now_ms))
    }

    /// Restarts the expiry of the lock `lock_token` holds; the version stays.
    /// Cost: one table probe.
    pub fn refresh_lock(
        &mut self,
        k: KeyRef<'_>,
        lock_token: u64,
        now_ms: u64,
    ) -> Result<Meta, StoreError> {
        let slot = self.find_live(k, now_ms).ok_or(StoreError::NOT_FOUND)?;
        let e = &mut self.slab[slot as usize];
        require_holder(e, lock_token, now_ms)?;
        if let Some(l) = e.lock.as_mut() {
            l.expires_at_ms = now_ms.saturating_add(self.limits.lock_timeout_ms);
        }
        Ok(self.note_use(slot, now_ms))
    }

    /// Removes the object. A locked object needs its holder's token unless `force`.
    /// Cost: one table probe to find it, one to unlink its slot; frees key and value (the
    /// value lives on while a send still holds it).
    pub fn remove(
        &mut self,
        k: KeyRef<'_>,
        lock_token: Option<u64>,
        force: bool,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let slot = self.find_live(k, now_ms).ok_or(StoreError::NOT_FOUND)?;
        if !force {
            permit(&self.slab[slot as usize], lock_token, now_ms)?;
        }
        self.remove_slot(slot);
        Ok(())
    }

    /// Restarts the object's timeout, whatever its kind; with `timeout`, first sets it (which
    /// bumps the version). Ignores locks. Cost: one table probe.
    pub fn touch(
        &mut self,
        k: KeyRef<'_>,
        timeout: Option<Timeout>,
        now_ms: u64,
    ) -> Result<Meta, StoreError> {
        if let Some(t) = timeout {
            check_timeout(t)?;
        }
        let slot = self.find_live(k, now_ms).ok_or(StoreError::NOT_FOUND)?;
        let e = &mut self.slab[slot as usize];
        if let Some(t) = timeout {
            e.timeout = t;
            e.version += 1;
        } else if e.timeout.timeout_s != 0
            && let Some(t) = self.touched.as_mut()
        {
            // A restart without a change: replicated in batches, not as a change.
            t.insert(slot);
        }
        e.expires_at_ms = deadline_ms(now_ms, e.timeout);
        Ok(self.note_use(slot, now_ms))
    }

    /// The object's metadata. A management read: restarts no timeout and leaves the LRU order
    /// alone. Cost: one table probe. (`&mut` because finding an expired object removes it.)
    pub fn meta(&mut self, k: KeyRef<'_>, now_ms: u64) -> Result<Meta, StoreError> {
        let slot = self.find_live(k, now_ms).ok_or(StoreError::NOT_FOUND)?;
        Ok(self.slab[slot as usize].meta(now_ms))
    }

    // ---- The write path ----------------------------------------------------------------------

    fn write(
        &mut self,
        k: KeyRef<'_>,
        value: &[u8],
        opts: WriteOpts,
        mode: WriteMode,
        now_ms: u64,
    ) -> Result<u64, StoreError> {
        let found = self.find_live(k, now_ms);
        self.write_found(k, found, value, opts, mode, now_ms)
            .map(|(_, version)| version)
    }

    /// [`Store::write`] given `found`, what `find_live(k)` returned just before (no change to
    /// the store in between): saves its caller's second probe. Returns the object's slot and
    /// new version.
    fn write_found(
        &mut self,
        k: KeyRef<'_>,
        found: Option<u32>,
        value: &[u8],
        opts: WriteOpts,
        mode: WriteMode,
        now_ms: u64,
    ) -> Result<(u32, u64), StoreError> {
        debug_assert_eq!(found, self.find(k), "found is k's live slot");
        self.limits.check_key(k.key)?;
        self.limits.check_value(value, opts.content_type_bytes)?;
        if let Some(t) = opts.timeout {
            check_timeout(t)?;
        }
        let new_cost = object_cost_bytes(k.key.len(), value.len());
        let Some(slot) = found else {
            if !matches!(mode, WriteMode::Add | WriteMode::Put) {
                return Err(StoreError::NOT_FOUND);
            }
            self.make_room(None, new_cost, now_ms)?;
            return Ok((self.insert_new(k, value, opts, now_ms), 1));
        };
        let e = &self.slab[slot as usize];
        // The lock the object keeps after the write: only an update by the holder keeps it
        // (renewed: the write is the holder's activity). An expired lock is dropped here too.
        let renewed = |lock_token: Option<u64>| {
            lock_token.map(|t| Lock {
                token: NonZeroU64::new(t).expect("permit() passed, so t holds the lock"),
                expires_at_ms: now_ms.saturating_add(self.limits.lock_timeout_ms),
            })
        };
        let lock = match mode {
            WriteMode::Add => return Err(StoreError::ALREADY_EXISTS),
            WriteMode::Put => None,
            WriteMode::Update { lock_token } => {
                permit(e, lock_token, now_ms)?;
                renewed(lock_token)
            }
            WriteMode::UpdateIfVersion {
                version,
                lock_token,
            } => {
                permit(e, lock_token, now_ms)?;
                if e.version != version {
                    return Err(StoreError::version_mismatch(e.version));
                }
                renewed(lock_token)
            }
            WriteMode::UpdateAndUnlock { lock_token } => {
                require_holder(e, lock_token, now_ms)?;
                None
            }
        };
        self.make_room(Some(slot), new_cost, now_ms)?;
        Ok((slot, self.replace(slot, value, opts, lock, now_ms)))
    }

    /// Makes room for a write that takes `new_cost` bytes, replacing `target`'s (if any):
    /// evicts least recently used evictable objects other than `target` until the store is
    /// under the LRU threshold, or fails with `LowMemory` having changed nothing when even
    /// evicting all of them would leave it above `memory_bytes_max`.
    /// Cost: nothing unless the store is above the threshold; then O(objects evicted).
    fn make_room(
        &mut self,
        target: Option<u32>,
        new_cost: u64,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let max = self.limits.memory_bytes_max;
        let (old_cost, target_evictable_bytes) = match target {
            Some(slot) => {
                let e = &self.slab[slot as usize];
                let cost = e.cost_bytes();
                (cost, if e.evictable { cost } else { 0 })
            }
            None => (0, 0),
        };
        if max == 0 || new_cost <= old_cost {
            return Ok(());
        }
        let threshold = self.limits.lru_threshold_bytes();
        let after = self.object_bytes - old_cost + new_cost;
        if after <= threshold {
            return Ok(());
        }
        let evictable_others = self.evictable_bytes - target_evictable_bytes;
        if after - evictable_others > max {
            return Err(StoreError::LOW_MEMORY);
        }
        // CLOCK (second chance): from the tail, an object used since it was last here moves to
        // the head with its mark cleared; an unused one is evicted. The walk continues into
        // the moved objects, so it ends, having visited each object at most twice.
        let mut slot = self.lru.tail;
        while self.object_bytes - old_cost + new_cost > threshold && slot != NIL {
            let more_recent = self.slab[slot as usize].lru_prev;
            if Some(slot) != target {
                let e = &mut self.slab[slot as usize];
                if e.referenced {
                    e.referenced = false;
                    if self.lru.head == slot {
                        // Nothing left to pass it by: look at it again, now unmarked.
                        continue;
                    }
                    self.lru.touch(&mut self.slab, slot);
                } else {
                    self.evict(slot, now_ms);
                }
            }
            slot = more_recent;
        }
        debug_assert!(self.object_bytes - old_cost + new_cost <= max);
        Ok(())
    }

    /// Files a new object (room already made). Returns its version, 1.
    /// Files a new object (version 1); returns its slot.
    fn insert_new(&mut self, k: KeyRef<'_>, value: &[u8], opts: WriteOpts, now_ms: u64) -> u32 {
        // No timeout given: never expires (Timeout's default is 0 s).
        let timeout = opts.timeout.unwrap_or_default();
        self.file(Entry {
            hash: k.hash,
            version: 1,
            created_ms: now_ms,
            updated_ms: now_ms,
            expires_at_ms: deadline_ms(now_ms, timeout),
            lock: None,
            value: Rc::from(value),
            key: KeyBytes::new(k.key),
            ns: k.ns,
            timeout,
            lru_prev: NIL,
            lru_next: NIL,
            evictable: opts.evictable,
            kind: ValueKind::String,
            referenced: false,
            content_type_bytes: opts.content_type_bytes,
        })
    }

    /// Files `entry` (an object not in the store; room already made): slab, partition table,
    /// LRU list and the counts. Returns its slot.
    fn file(&mut self, entry: Entry) -> u32 {
        let (hash, ns, evictable) = (entry.hash, entry.ns, entry.evictable);
        let slot = self.slab.insert(entry);
        // NIL marks "no slot" in the LRU links, so it can never be one.
        let slot = match u32::try_from(slot) {
            Ok(s) if s != NIL => s,
            _ => panic!("a shard holds at most {} objects", NIL - 1),
        };
        self.slots_end = self.slots_end.max(slot + 1);
        let slab = &self.slab;
        self.tables[partition_of(hash) as usize].insert_unique(table_hash(hash), slot, |&s| {
            table_hash(slab[s as usize].hash)
        });
        let cost = self.slab[slot as usize].cost_bytes();
        self.object_bytes += cost;
        if evictable {
            self.lru.push_head(&mut self.slab, slot);
            self.evictable_bytes += cost;
        }
        *self.ns_counts.entry(ns).or_insert(0) += 1;
        slot
    }

    /// Replaces a present object's value (room already made, checks passed). Returns the new
    /// version.
    fn replace(
        &mut self,
        slot: u32,
        value: &[u8],
        opts: WriteOpts,
        lock: Option<Lock>,
        now_ms: u64,
    ) -> u64 {
        let (was_evictable, old_cost) = {
            let e = &self.slab[slot as usize];
            (e.evictable, e.cost_bytes())
        };
        // Leave the LRU list before the flag changes (the list asserts membership by it).
        if was_evictable {
            self.lru.unlink(&mut self.slab, slot);
            self.evictable_bytes -= old_cost;
        }
        let e = &mut self.slab[slot as usize];
        e.value = Rc::from(value);
        // A write without a content type clears the old one: the new bytes are not known to
        // be of the old type (docs/rest.md, "Content-Type").
        e.content_type_bytes = opts.content_type_bytes;
        e.version += 1;
        e.updated_ms = now_ms;
        match opts.timeout {
            Some(t) => {
                e.timeout = t;
                e.expires_at_ms = deadline_ms(now_ms, t);
            }
            // Updates restart Sliding and ResetOnUpdate timeouts; Absolute keeps its deadline.
            None if e.timeout.kind != TimeoutKind::Absolute => {
                e.expires_at_ms = deadline_ms(now_ms, e.timeout);
            }
            None => {}
        }
        e.lock = lock;
        e.evictable = opts.evictable;
        // A native write stores bytes: whatever the object held, it is a string now.
        e.kind = ValueKind::String;
        let new_cost = e.cost_bytes();
        let version = e.version;
        self.object_bytes = self.object_bytes - old_cost + new_cost;
        if opts.evictable {
            self.lru.push_head(&mut self.slab, slot);
            self.evictable_bytes += new_cost;
        }
        version
    }

    // ---- Finding and removing ----------------------------------------------------------------

    /// The slot of `k`, expired or not. Cost: one probe sequence of one partition table,
    /// comparing hash, namespace and key bytes of the candidates; no allocation.
    #[inline]
    fn find(&self, k: KeyRef<'_>) -> Option<u32> {
        let slab = &self.slab;
        self.tables[partition_of(k.hash) as usize]
            .find(table_hash(k.hash), |&s| {
                let e = &slab[s as usize];
                e.hash == k.hash && e.ns == k.ns && *e.key == *k.key
            })
            .copied()
    }

    /// The slot of `k` if it is present and not expired; an expired object is removed.
    #[inline]
    fn find_live(&mut self, k: KeyRef<'_>, now_ms: u64) -> Option<u32> {
        let slot = self.find(k)?;
        if self.slab[slot as usize].is_expired(now_ms) {
            self.expire_slot(slot);
            return None;
        }
        Some(slot)
    }

    /// Records a read of `slot`: restarts a sliding timeout, marks it used.
    /// Cost: writes to the entry's own cache line only (see `referenced`).
    #[inline]
    fn note_read(&mut self, slot: u32, now_ms: u64) {
        let e = &mut self.slab[slot as usize];
        if e.timeout.kind == TimeoutKind::Sliding {
            e.expires_at_ms = deadline_ms(now_ms, e.timeout);
            if e.timeout.timeout_s != 0
                && let Some(t) = self.touched.as_mut()
            {
                t.insert(slot);
            }
        }
        e.referenced = true;
    }

    /// Records a use of `slot` that is not a read (the LRU's notion of use); returns its meta.
    #[inline]
    fn note_use(&mut self, slot: u32, now_ms: u64) -> Meta {
        let e = &mut self.slab[slot as usize];
        e.referenced = true;
        e.meta(now_ms)
    }

    fn expire_slot(&mut self, slot: u32) {
        self.remove_slot(slot);
        self.expirations += 1;
    }

    fn evict(&mut self, slot: u32, now_ms: u64) {
        // An object that had already expired is counted as what it is.
        if self.slab[slot as usize].is_expired(now_ms) {
            self.expirations += 1;
        } else {
            self.evictions += 1;
        }
        self.remove_slot(slot);
    }

    /// Takes `slot` out of the slab, its partition table, the LRU list and the counts.
    /// Cost: one table probe (by slot identity); frees the key, and the value unless a send
    /// still holds it.
    fn remove_slot(&mut self, slot: u32) -> Entry {
        if self.slab[slot as usize].evictable {
            self.lru.unlink(&mut self.slab, slot);
        }
        let e = self.slab.remove(slot as usize);
        match self.tables[partition_of(e.hash) as usize]
            .find_entry(table_hash(e.hash), |&s| s == slot)
        {
            Ok(found) => {
                found.remove();
            }
            Err(_) => unreachable!("slot {slot} is missing from its partition table"),
        }
        let cost = e.cost_bytes();
        self.object_bytes -= cost;
        if e.evictable {
            self.evictable_bytes -= cost;
        }
        match self.ns_counts.get_mut(&e.ns) {
            Some(n) if *n > 1 => *n -= 1,
            Some(_) => {
                self.ns_counts.remove(&e.ns);
            }
            None => unreachable!("namespace {} of a stored object has no count", e.ns),
        }
        e
    }
}
