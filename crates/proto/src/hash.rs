//! Key hashing and partitioning. Every host and every client must compute the same numbers,
//! so the functions are fixed here and never depend on a random seed.
//!
//! Redis databases are namespaces with reserved ids ([`REDIS_NS_BASE`] | N for `redis-N`). For
//! their keys, [`key_hash`] carries Redis Cluster's hash slot in its top 14 bits, so that
//! [`partition_of`] = slot / 16: a cluster-aware Redis client that routes by slot and a native
//! client that routes by partition reach the same host, and keys sharing a `{hash tag}` share a
//! partition (and a shard) as Redis Cluster promises.

/// Partitions in a store: the unit of ownership, replication and migration.
pub const PARTITIONS: u32 = 1024;

/// Redis Cluster's hash slots.
pub const REDIS_SLOTS: u32 = 16384;

/// Slots per partition: 16384 slots over 1024 partitions.
pub const SLOTS_PER_PARTITION: u32 = REDIS_SLOTS / PARTITIONS;

/// Namespace ids from here up are reserved for Redis databases: `redis-N` has id
/// `REDIS_NS_BASE | N` (N < 65536). [`namespace_id`] never gives another name an id in this range.
pub const REDIS_NS_BASE: u32 = 0xFFFF_0000;

/// Is `ns` the namespace of a Redis database?
#[inline]
pub fn is_redis_ns(ns: u32) -> bool {
    ns >= REDIS_NS_BASE
}

/// The namespace id of Redis database `db`.
#[inline]
pub fn redis_ns(db: u16) -> u32 {
    REDIS_NS_BASE | db as u32
}

/// The namespace name of Redis database `db` (`redis-0`, `redis-1`, ...).
pub fn redis_ns_name(db: u16) -> String {
    format!("redis-{db}")
}

/// `Some(N)` when `name` is `redis-N` written canonically (decimal, no leading zero, N < 65536).
fn redis_db_of_name(name: &str) -> Option<u16> {
    let digits = name.strip_prefix("redis-")?;
    if digits.is_empty() || (digits.len() > 1 && digits.starts_with('0')) {
        return None;
    }
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u16>().ok()
}

/// CRC16/XMODEM (polynomial 0x1021, initial 0), the checksum Redis Cluster hashes keys with.
/// Bitwise: 8 shifts per byte; keys are short and this runs once per request.
#[inline]
pub fn crc16_xmodem(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= (b as u16) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// Redis Cluster's slot of a key: CRC16 of the key, or of the part between the first `{` and
/// the next `}` when that part is not empty (a hash tag), mod 16384.
#[inline]
pub fn redis_slot(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.iter()
                .position(|&b| b == b'}')
                .filter(|&close| close > 0)
                .map(|close| &rest[..close])
        })
        .unwrap_or(key);
    crc16_xmodem(tagged) % REDIS_SLOTS as u16
}

/// The 64-bit hash of an object address: xxh3 of the key seeded with the namespace id. For a
/// Redis database's key the top 14 bits are replaced by the key's Redis slot (see the module
/// doc); the low 32 bits, which the store's tables use, are xxh3's either way.
#[inline]
pub fn key_hash(ns: u32, key: &[u8]) -> u64 {
    let h = xxhash_rust::xxh3::xxh3_64_with_seed(key, ns as u64);
    if is_redis_ns(ns) {
        let slot = redis_slot(key) as u64;
        (slot << 50) | (h & ((1u64 << 50) - 1))
    } else {
        h
    }
}

/// The Redis slot a key hash of a Redis database carries (meaningless for other namespaces).
#[inline]
pub fn slot_of_hash(hash: u64) -> u16 {
    (hash >> 50) as u16
}

/// The partition of a key hash. Uses the high 32 bits (the table uses the low ones).
#[inline]
pub fn partition_of(hash: u64) -> u32 {
    (((hash >> 32) * PARTITIONS as u64) >> 32) as u32
}

/// The partition that holds Redis slot `slot`.
#[inline]
pub fn partition_of_slot(slot: u16) -> u32 {
    slot as u32 / SLOTS_PER_PARTITION
}

/// The shard of a host that owns `partition`, for a host with `shards` shards. The server
/// serves a keyed request on this shard; a shard-aware client sends it on its connection to
/// this shard, so both must compute the same number.
#[inline]
pub fn owner_shard(partition: u32, shards: usize) -> usize {
    debug_assert!(shards > 0, "a host has at least one shard");
    partition as usize % shards
}

/// A namespace's id, derived from its name, so hosts need not agree on a counter. `redis-N`
/// gets its reserved id; every other name lands below [`REDIS_NS_BASE`].
#[inline]
pub fn namespace_id(name: &str) -> u32 {
    if let Some(db) = redis_db_of_name(name) {
        return redis_ns(db);
    }
    let h = xxhash_rust::xxh3::xxh3_64_with_seed(name.as_bytes(), 0x5354_4154_4547_5244);
    let id = (h ^ (h >> 32)) as u32;
    // Out of the reserved range (one name in 65536 lands there). A name so moved may collide
    // with another; the registry refuses the second one (NamespaceCollision).
    if is_redis_ns(id) {
        id ^ 0x0001_0000
    } else {
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_values() {
        // These numbers are part of the protocol: a change here splits clients from servers.
        assert_eq!(key_hash(1, b"session-1"), key_hash(1, b"session-1"));
        assert_ne!(key_hash(1, b"session-1"), key_hash(2, b"session-1"));
        assert_eq!(namespace_id("sessions"), namespace_id("sessions"));
    }

    #[test]
    fn pinned_numbers() {
        // Pinned (issue 11): changing any of these breaks every deployed client.
        assert_eq!(namespace_id("sessions"), PINNED_SESSIONS_ID);
        assert_eq!(key_hash(namespace_id("sessions"), b"k"), PINNED_SESSIONS_K);
        assert_eq!(namespace_id("redis-0"), 0xFFFF_0000);
        assert_eq!(namespace_id("redis-15"), 0xFFFF_000F);
        assert_eq!(key_hash(redis_ns(0), b"foo"), PINNED_REDIS_FOO);
        assert_eq!(partition_of(PINNED_REDIS_FOO), 12182 / 16);
    }

    const PINNED_SESSIONS_ID: u32 = 3_205_751_481;
    const PINNED_SESSIONS_K: u64 = 4_710_747_835_898_448_642;
    const PINNED_REDIS_FOO: u64 = 13_716_411_032_021_794_462;

    #[test]
    fn redis_slots_match_redis() {
        // Values from Redis's CLUSTER KEYSLOT (and the Redis Cluster spec's CRC16 check value).
        assert_eq!(crc16_xmodem(b"123456789"), 0x31C3);
        assert_eq!(redis_slot(b"foo"), 12182);
        assert_eq!(redis_slot(b"bar"), 5061);
        assert_eq!(redis_slot(b"{user1000}.following"), redis_slot(b"user1000"));
        assert_eq!(redis_slot(b"foo{}{bar}"), redis_slot(b"foo{}{bar}"));
        assert_eq!(redis_slot(b"{}x"), crc16_xmodem(b"{}x") % 16384);
        for key in [&b"a"[..], b"session:abc", b"{t}x", b""] {
            let h = key_hash(redis_ns(3), key);
            assert_eq!(slot_of_hash(h), redis_slot(key));
            assert_eq!(partition_of(h), partition_of_slot(redis_slot(key)));
        }
    }

    #[test]
    fn reserved_range_only_for_redis_names() {
        assert_eq!(namespace_id("redis-01"), namespace_id("redis-01"));
        assert!(!is_redis_ns(namespace_id("redis-01")));
        assert!(!is_redis_ns(namespace_id("redis-65536")));
        assert!(!is_redis_ns(namespace_id("redis-")));
        for i in 0..200_000u32 {
            assert!(!is_redis_ns(namespace_id(&format!("ns{i}"))));
        }
    }

    #[test]
    fn partitions_cover_range_evenly() {
        let mut counts = vec![0u32; PARTITIONS as usize];
        for i in 0..200_000u32 {
            let p = partition_of(key_hash(7, &i.to_le_bytes()));
            assert!(p < PARTITIONS);
            counts[p as usize] += 1;
        }
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        // 195 keys per partition on average; a fair hash stays well inside 2x.
        assert!(*min > 100 && *max < 300, "min {min} max {max}");
    }
}
