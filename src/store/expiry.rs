//! Timeouts: deadlines, and the sweeper that reclaims expired objects nobody asks for.
//!
//! Expiry is checked on every access, so correctness never depends on the sweeper: it only
//! returns the memory of objects no request touches again (abandoned sessions, the common
//! case). It walks slab slots from a rotating cursor with a budget per call, so the shard
//! bounds the work it spends between requests (TigerBeetle: batch, and bound the batch).

use stategrid_proto::Timeout;

use super::Store;

/// The deadline of a timeout started at `now_ms`; 0 = never (a 0-second timeout).
#[inline]
pub(super) fn deadline_ms(now_ms: u64, timeout: Timeout) -> u64 {
    match timeout.timeout_s {
        0 => 0,
        // At least 1000, so a deadline is never mistaken for "never".
        s => now_ms.saturating_add(s as u64 * 1000),
    }
}

impl Store {
    /// Removes expired objects among the next `slots_budget` slab slots (wrapping around),
    /// counting each as an expiration; returns how many it removed.
    /// Cost: O(slots_budget) slot checks plus one table probe per removal; no allocation.
    pub fn sweep(&mut self, now_ms: u64, slots_budget: usize) -> usize {
        let end = self.slots_end as usize;
        if end == 0 {
            return 0;
        }
        let mut slot = self.sweep_cursor as usize;
        let mut removed = 0;
        for _ in 0..slots_budget.min(end) {
            if slot >= end {
                slot = 0;
            }
            if self.slab.get(slot).is_some_and(|e| e.is_expired(now_ms)) {
                self.expire_slot(slot as u32);
                removed += 1;
            }
            slot += 1;
        }
        self.sweep_cursor = if slot >= end { 0 } else { slot as u32 };
        removed
    }
}
