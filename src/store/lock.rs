//! Pessimistic locks: token generation and the rules for presenting a token.
//!
//! Rules (ScaleOut's, made exact):
//! - A lock is held while its expiry is in the future; an expired lock is no lock.
//! - Presenting no token: allowed when nobody holds the lock, `Locked` otherwise.
//! - Presenting a token: allowed only when that token holds the lock; `Locked` when another
//!   token holds it, `LockLost` when nobody does (the caller's lock expired or was released:
//!   someone may have changed the object meanwhile, so the caller must read-and-lock again).
//!   This applies to every operation that takes a token, including `update` and `remove`,
//!   so a session provider whose lock timed out always learns it.

use std::num::NonZeroU64;

use super::entry::Entry;
use super::error::StoreError;

/// Makes lock tokens: splitmix64 over a per-store seeded counter.
///
/// Tokens guard against mistakes (a stale token from an expired lock, a token sent to the
/// wrong object), not against attackers: any client may `put` over a lock or force a remove.
/// splitmix64's output function is a bijection of its counter, so a store never issues the
/// same token twice within 2^64 locks, and the seed makes tokens differ across shards and
/// restarts.
#[derive(Debug)]
pub(super) struct TokenGen {
    state: u64,
}

impl TokenGen {
    pub const fn new(seed: u64) -> Self {
        TokenGen { state: seed }
    }

    /// The next token. Never 0, because the wire and `Option<Lock>` use 0 as "none".
    #[inline]
    pub fn next_token(&mut self) -> NonZeroU64 {
        loop {
            self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            if let Some(t) = NonZeroU64::new(splitmix64_mix(self.state)) {
                return t;
            }
        }
    }
}

/// splitmix64's finalizer (Steele, Lea, Flood 2014).
#[inline]
const fn splitmix64_mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Passes when `lock_token` holds `e`'s lock at `now_ms`.
#[inline]
pub(super) fn require_holder(e: &Entry, lock_token: u64, now_ms: u64) -> Result<(), StoreError> {
    match e.live_lock(now_ms) {
        Some(l) if l.token.get() == lock_token => Ok(()),
        Some(l) => Err(StoreError::locked(l.expires_at_ms - now_ms)),
        None => Err(StoreError::LOCK_LOST),
    }
}

/// Passes when an operation presenting `lock_token` (or none) may change `e` at `now_ms`.
#[inline]
pub(super) fn permit(e: &Entry, lock_token: Option<u64>, now_ms: u64) -> Result<(), StoreError> {
    match lock_token {
        Some(t) => require_holder(e, t, now_ms),
        None => match e.live_lock(now_ms) {
            Some(l) => Err(StoreError::locked(l.expires_at_ms - now_ms)),
            None => Ok(()),
        },
    }
}
