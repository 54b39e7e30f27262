//! Key hashing and partitioning. Every host and every client must compute the same numbers,
//! so the functions are fixed here and never depend on a random seed.

/// Partitions in a store: the unit of ownership, replication and migration.
pub const PARTITIONS: u32 = 1024;

/// The 64-bit hash of an object address: xxh3 of the key seeded with the namespace id.
#[inline]
pub fn key_hash(ns: u32, key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(key, ns as u64)
}

/// The partition of a key hash. Uses the high 32 bits (the table uses the low ones).
#[inline]
pub fn partition_of(hash: u64) -> u32 {
    (((hash >> 32) * PARTITIONS as u64) >> 32) as u32
}

/// The shard of a host that owns `partition`, for a host with `shards` shards. The server
/// serves a keyed request on this shard; a shard-aware client sends it on its connection to
/// this shard, so both must compute the same number.
#[inline]
pub fn owner_shard(partition: u32, shards: usize) -> usize {
    debug_assert!(shards > 0, "a host has at least one shard");
    partition as usize % shards
}

/// A namespace's id, derived from its name, so hosts need not agree on a counter.
#[inline]
pub fn namespace_id(name: &str) -> u32 {
    let h = xxhash_rust::xxh3::xxh3_64_with_seed(name.as_bytes(), 0x5354_4154_4547_5244);
    (h ^ (h >> 32)) as u32
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
