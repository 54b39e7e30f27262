//! One stored object, and what it costs in memory.
//!
//! An [`Entry`] lives in the shard's slab at a stable `u32` slot; the partition tables and the
//! LRU list refer to it by that slot, never by pointer, so the slab may grow freely.

use std::num::NonZeroU64;
use std::rc::Rc;

use stategrid_proto::{LockInfo, Meta, NsId, Timeout, ValueKind};

/// A stored value. Immutable once stored and reference-counted, so a read hands the network
/// layer a clone of the `Rc` (no copy) and a later write never disturbs a send in progress:
/// the write makes a new `Rc` and the old buffer lives until the last send drops it.
pub type Value = Rc<[u8]>;

/// The "no slot" link of the LRU list. Slots are kept below it (see `Store::insert_new`).
pub(super) const NIL: u32 = u32::MAX;

/// A held (or once-held) lock. It counts as held only while `expires_at_ms > now_ms`; an
/// expired lock is left in place and ignored, because clearing it eagerly would need a timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Lock {
    /// Never 0, so `Option<Lock>` costs no tag word.
    pub token: NonZeroU64,
    pub expires_at_ms: u64,
}

pub(super) struct Entry {
    /// `key_hash(ns, key)`: kept so the tables can rehash and compare without re-hashing keys.
    pub hash: u64,
    /// 1 on creation; bumped by every change (see the version rules in `store/mod.rs`).
    pub version: u64,
    pub created_ms: u64,
    /// Time of the last value write.
    pub updated_ms: u64,
    /// When the object expires; 0 = never.
    pub expires_at_ms: u64,
    pub lock: Option<Lock>,
    /// The value, followed by its `content_type_bytes` of content type: stored as the wire
    /// carries it, so a read and a replication stream send this buffer whole, by reference.
    /// Use [`Entry::value_bytes`] for the value's length.
    pub value: Value,
    pub key: KeyBytes,
    pub ns: NsId,
    pub timeout: Timeout,
    /// LRU neighbours (toward the head = more recently used, toward the tail = less).
    /// Meaningful only while `evictable`: exactly the evictable objects are on the list.
    pub lru_prev: u32,
    pub lru_next: u32,
    pub evictable: bool,
    /// A string, or a Redis hash in `store::hash`'s encoding.
    pub kind: ValueKind,
    /// Used since it last reached the LRU tail (CLOCK's reference bit): reads set it instead of
    /// relinking the entry, which would touch two neighbours' cache lines on every read.
    pub referenced: bool,
    /// Bytes of content type at the end of `value` (0: none). In the entry's padding byte.
    pub content_type_bytes: u8,
}

/// Keys up to this long are stored inside the entry. 38 bytes holds the common session keys
/// (ASP.NET's 24-character ids, 32-character hex ids, 36-character UUIDs) and keeps
/// [`KeyBytes`] at 40 bytes.
pub(super) const KEY_INLINE_BYTES_MAX: usize = 38;

/// An object's key: inside the entry when short, else in its own allocation.
///
/// Every lookup compares the key, so a key in its own allocation costs each lookup one more
/// cache miss: profiling `store/get_1k` (100K objects) put half of a read's time in that
/// compare. Inline, the key shares the entry's cache lines and needs no allocation.
pub(super) enum KeyBytes {
    Inline {
        len: u8,
        bytes: [u8; KEY_INLINE_BYTES_MAX],
    },
    Heap(Box<[u8]>),
}

impl KeyBytes {
    #[inline]
    pub fn new(key: &[u8]) -> Self {
        if key.len() <= KEY_INLINE_BYTES_MAX {
            let mut bytes = [0; KEY_INLINE_BYTES_MAX];
            bytes[..key.len()].copy_from_slice(key);
            KeyBytes::Inline {
                len: key.len() as u8,
                bytes,
            }
        } else {
            KeyBytes::Heap(Box::from(key))
        }
    }
}

impl std::ops::Deref for KeyBytes {
    type Target = [u8];

    #[inline]
    fn deref(&self) -> &[u8] {
        match self {
            KeyBytes::Inline { len, bytes } => &bytes[..*len as usize],
            KeyBytes::Heap(b) => b,
        }
    }
}

impl Entry {
    /// Has the object's timeout run out at `now_ms`? An expired object is absent to every
    /// operation, whether or not the sweeper has removed it yet.
    #[inline]
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms != 0 && now_ms >= self.expires_at_ms
    }

    /// The lock if it is still held at `now_ms`.
    #[inline]
    pub fn live_lock(&self, now_ms: u64) -> Option<Lock> {
        self.lock.filter(|l| l.expires_at_ms > now_ms)
    }

    /// The value's length, without the content type that follows it in `value`.
    #[inline]
    pub fn value_bytes(&self) -> usize {
        self.value.len() - self.content_type_bytes as usize
    }

    /// The value alone (without its content type).
    #[inline]
    pub fn value_only(&self) -> &[u8] {
        &self.value[..self.value_bytes()]
    }

    /// Accounted bytes of this object (see [`object_cost_bytes`]); the content type is part
    /// of the value's allocation, so it is charged with it.
    #[inline]
    pub fn cost_bytes(&self) -> u64 {
        object_cost_bytes(self.key.len(), self.value.len())
    }

    /// The object's metadata as seen at `now_ms`. Copies a few words; allocates nothing.
    #[inline]
    pub fn meta(&self, now_ms: u64) -> Meta {
        Meta {
            // The store refuses values above `object_bytes_max`, which is a u32.
            value_bytes: self.value_bytes() as u32,
            version: self.version,
            created_ms: self.created_ms,
            updated_ms: self.updated_ms,
            timeout: self.timeout,
            expires_in_ms: match self.expires_at_ms {
                0 => None,
                at => Some(at.saturating_sub(now_ms)),
            },
            lock: self.live_lock(now_ms).map(|l| LockInfo {
                expires_in_ms: l.expires_at_ms - now_ms,
            }),
            evictable: self.evictable,
            content_type_bytes: self.content_type_bytes,
        }
    }
}

// ---- Memory accounting ----------------------------------------------------------------------
//
// `memory_bytes_max` must bound what the process really holds, so an object is charged for
// every allocation it causes, rounded the way glibc malloc rounds, not just for its value bytes.
// Session values are small (hundreds of bytes to a few KiB), where per-object overhead is a
// large share; charging only value bytes would let resident memory overshoot the limit by 2x.

/// Mirrors `slab::Slab`'s private slot type (`enum Entry<T> { Vacant(usize), Occupied(T) }`)
/// so `size_of` gives the bytes one slab slot really takes, niche optimizations included.
#[allow(dead_code)] // never built: only measured
enum SlabSlotMirror {
    Vacant(usize),
    Occupied(Entry),
}

/// Bytes of one slab slot.
pub(super) const SLAB_SLOT_BYTES: u64 = std::mem::size_of::<SlabSlotMirror>() as u64;

/// Bytes of one partition-table slot per object: a `u32` slot index plus hashbrown's one
/// control byte, at a load between 7/16 and 7/8 (power-of-two growth), which averages
/// about 8 bytes per object.
pub(super) const TABLE_SLOT_BYTES: u64 = 8;

/// The header `Rc<[u8]>` puts before the bytes: strong and weak counts.
pub(super) const RC_HEADER_BYTES: u64 = 16;

/// The chunk glibc malloc hands out for a request of `request_bytes`: an 8-byte size header,
/// 16-byte alignment, 32 bytes at least. (Requests above the mmap threshold, 128 KiB by
/// default, are page-rounded instead; at that size the difference is under 3%.)
#[inline]
pub(super) const fn malloc_chunk_bytes(request_bytes: u64) -> u64 {
    let chunk = (request_bytes + 8).next_multiple_of(16);
    if chunk < 32 { 32 } else { chunk }
}

/// The accounted bytes of an object with a key of `key_bytes` and a value of `value_bytes`:
/// its slab slot, its table slot, the key's allocation (none when the key is stored inline)
/// and the value's `Rc` allocation.
#[inline]
pub(super) const fn object_cost_bytes(key_bytes: usize, value_bytes: usize) -> u64 {
    let key_alloc = if key_bytes <= KEY_INLINE_BYTES_MAX {
        0
    } else {
        malloc_chunk_bytes(key_bytes as u64)
    };
    SLAB_SLOT_BYTES
        + TABLE_SLOT_BYTES
        + key_alloc
        + malloc_chunk_bytes(RC_HEADER_BYTES + value_bytes as u64)
}

// The entry is on every lookup's path: keep it small (it spans at most three cache lines).
const _: () = assert!(std::mem::size_of::<KeyBytes>() == 40);
const _: () = assert!(std::mem::size_of::<Entry>() <= 136);
const _: () = assert!(SLAB_SLOT_BYTES <= 136);
