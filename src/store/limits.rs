//! The store's limits and counters: plain structs, units last.

use stategrid_proto::{TIMEOUT_S_MAX, Timeout};

use super::error::StoreError;
use stategrid_proto::ErrorCode;

/// What one shard's store accepts. Every limit is enforced with an error naming it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreLimits {
    /// Largest value. Bounds one request's copy and the frame that carries it.
    /// Default 64 MiB. Must fit the wire's `u32` value length.
    pub object_bytes_max: u32,
    /// Longest key. Default 1 KiB: session ids and composite keys are well under 256 bytes;
    /// the limit bounds a `list_keys` page (limit x key_bytes_max) and keeps a key usable in
    /// a REST URL. Longer keys should be hashed by the client (ScaleOut itself keys objects
    /// by a 256-bit hash).
    pub key_bytes_max: u32,
    /// This shard's share of `max_memory`, in accounted bytes (see `entry::object_cost_bytes`);
    /// 0 = unlimited.
    pub memory_bytes_max: u64,
    /// Percent of `memory_bytes_max` above which a write first evicts least recently used
    /// evictable objects (ScaleOut's `lru_threshold`). 1..=100; default 90.
    pub lru_threshold_pct: u32,
    /// How long a lock lasts without activity (ScaleOut's `lock_timeout`, 90 s); refresh_lock
    /// and updates by the holder restart it.
    pub lock_timeout_ms: u64,
}

impl Default for StoreLimits {
    fn default() -> Self {
        StoreLimits {
            object_bytes_max: 64 << 20,
            key_bytes_max: 1024,
            memory_bytes_max: 0,
            lru_threshold_pct: 90,
            lock_timeout_ms: 90_000,
        }
    }
}

impl StoreLimits {
    /// Panics on limits no store can run with. Configuration is validated (with messages for
    /// a person) before a store is built, so reaching this is a bug.
    pub(super) fn assert_valid(&self) {
        assert!(
            (1..=100).contains(&self.lru_threshold_pct),
            "lru_threshold_pct must be 1..=100, got {}",
            self.lru_threshold_pct
        );
        assert!(self.lock_timeout_ms > 0, "lock_timeout_ms must be above 0");
    }

    /// The accounted bytes above which writes evict; `u64::MAX` when memory is unlimited.
    #[inline]
    pub(super) fn lru_threshold_bytes(&self) -> u64 {
        match self.memory_bytes_max {
            0 => u64::MAX,
            max => (max as u128 * self.lru_threshold_pct as u128 / 100) as u64,
        }
    }

    #[inline]
    pub(super) fn check_key(&self, key: &[u8]) -> Result<(), StoreError> {
        if key.len() > self.key_bytes_max as usize {
            return Err(StoreError::new(
                ErrorCode::KeyTooLong,
                self.key_bytes_max as u64,
            ));
        }
        Ok(())
    }

    /// Checks a written trailer: the value, then `content_type_bytes` of content type (see
    /// `WriteOpts::content_type_bytes`). The limit applies to the value; the content type is
    /// bounded by its u8 length (the HTTP API's `content_type_bytes_max` is at most 255).
    #[inline]
    pub(super) fn check_value(
        &self,
        trailer: &[u8],
        content_type_bytes: u8,
    ) -> Result<(), StoreError> {
        let Some(value_bytes) = trailer.len().checked_sub(content_type_bytes as usize) else {
            return Err(StoreError::new(ErrorCode::InvalidRequest, 0));
        };
        if value_bytes > self.object_bytes_max as usize {
            return Err(StoreError::new(
                ErrorCode::ObjectTooLarge,
                self.object_bytes_max as u64,
            ));
        }
        Ok(())
    }
}

/// Refuses a timeout above ScaleOut's maximum; detail = the maximum.
#[inline]
pub(super) fn check_timeout(timeout: Timeout) -> Result<(), StoreError> {
    if timeout.timeout_s > TIMEOUT_S_MAX {
        return Err(StoreError::new(ErrorCode::BadTimeout, TIMEOUT_S_MAX as u64));
    }
    Ok(())
}

/// One shard's counters. A plain struct: the caller sums the shards' copies when it reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Objects held, including expired ones the sweeper has not reached yet.
    pub objects: u64,
    /// Accounted bytes of those objects (what `memory_bytes_max` limits).
    pub object_bytes: u64,
    /// Objects removed by LRU eviction since the store was made.
    pub evictions: u64,
    /// Objects removed because their timeout ran out (found on access or by the sweeper).
    pub expirations: u64,
}

impl std::ops::AddAssign for StoreStats {
    fn add_assign(&mut self, o: StoreStats) {
        self.objects += o.objects;
        self.object_bytes += o.object_bytes;
        self.evictions += o.evictions;
        self.expirations += o.expirations;
    }
}
