//! `SCAN` cursors as Redis clients see them.
//!
//! A native listing cursor is `[STORE_WIDE] host << 56 | shard << 32 | slot`
//! (`server::exec::CURSOR_STORE_WIDE`), a number up to 2^64. Redis's own cursors are small in
//! practice, and some clients keep them in a double (JavaScript numbers are exact only below
//! 2^53), so a Redis client gets the same position packed into 49 bits:
//! `host << 42 | shard << 32 | slot` (hosts < 128, shards ≤ 1024: both params' limits).
//! Whether the listing walks the whole store is the connection's (a plain client's does, a
//! cluster client's lists the node it asked), so it is not in the packed cursor.

use crate::server::exec::{CURSOR_STORE_WIDE, cursor_host, cursor_shard};

const SHARD_BITS: u32 = 10;
const HOST_BITS: u32 = 7;
/// The largest packed cursor: anything above it was not made by [`to_resp`].
const PACKED_MAX: u64 = (1 << (32 + SHARD_BITS + HOST_BITS)) - 1;

/// The cursor a Redis client is given for a native listing's next cursor. A position beyond
/// the packed range (a host with more shards than the param allows: only a broken peer sends
/// that, since the cursor may come from another host) ends the listing: 0.
pub fn to_resp(native: u64) -> u64 {
    let (host, shard) = (cursor_host(native) as u64, cursor_shard(native) as u64);
    if shard >= 1 << SHARD_BITS || host >= 1 << HOST_BITS {
        return 0;
    }
    host << (32 + SHARD_BITS) | shard << 32 | (native & 0xFFFF_FFFF)
}

/// The native cursor of a Redis client's `SCAN` cursor, or `None` when it was not made by
/// [`to_resp`]. `store_wide`: the listing walks every host (0 starts it, see
/// `Dispatch::relay_listing`).
pub fn to_native(packed: u64, store_wide: bool) -> Option<u64> {
    if packed > PACKED_MAX {
        return None;
    }
    if packed == 0 {
        return Some(0);
    }
    let host = packed >> (32 + SHARD_BITS);
    let shard = (packed >> 32) & ((1 << SHARD_BITS) - 1);
    let position = shard << 32 | (packed & 0xFFFF_FFFF);
    Some(match store_wide {
        true => CURSOR_STORE_WIDE | host << 56 | position,
        // One node's listing has no host part.
        false if host == 0 => position,
        false => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_cursors_round_trip_and_fit_a_double() {
        for native in [
            0u64,
            5,
            3 << 32 | 77,
            CURSOR_STORE_WIDE | 2 << 56 | 1023 << 32 | 0xFFFF_FFFF,
            CURSOR_STORE_WIDE | 127 << 56,
        ] {
            let packed = to_resp(native);
            assert!(packed < 1 << 53, "{packed} does not fit a double exactly");
            let store_wide = native & CURSOR_STORE_WIDE != 0;
            let back = to_native(packed, store_wide || native == 0);
            match native {
                0 => assert_eq!(back, Some(0)),
                n if store_wide => assert_eq!(back, Some(n)),
                n => assert_eq!(to_native(packed, false), Some(n)),
            }
        }
    }

    #[test]
    fn a_cursor_not_made_here_is_refused() {
        assert_eq!(to_resp(1 << 60 >> 4 << 4 | 2000 << 32), 0);
        assert_eq!(to_native(PACKED_MAX + 1, true), None);
        assert_eq!(to_native(u64::MAX, false), None);
        // A host part on a node's own listing.
        assert_eq!(to_native(1 << 42, false), None);
    }
}
