//! The store's failure type: a protocol error code and the number it names.
//!
//! `Copy` and two words wide, so a failed operation allocates nothing: the hot error paths
//! (`Locked` while sessions contend, `NotFound` for expired sessions) are as cheap as success.

use stategrid_proto::{ErrorCode, ErrorReply};

/// A failed store operation. `detail` is the number [`ErrorCode`] documents for `code`
/// (ms until a lock expires for `Locked`, the stored version for `VersionMismatch`, the limit
/// for `ObjectTooLarge` / `KeyTooLong` / `BadTimeout`), 0 when the code names none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreError {
    pub code: ErrorCode,
    pub detail: u64,
}

impl StoreError {
    #[inline]
    pub const fn new(code: ErrorCode, detail: u64) -> Self {
        StoreError { code, detail }
    }

    pub(super) const NOT_FOUND: StoreError = StoreError::new(ErrorCode::NotFound, 0);
    pub(super) const ALREADY_EXISTS: StoreError = StoreError::new(ErrorCode::AlreadyExists, 0);
    pub(super) const LOCK_LOST: StoreError = StoreError::new(ErrorCode::LockLost, 0);
    pub(super) const LOW_MEMORY: StoreError = StoreError::new(ErrorCode::LowMemory, 0);
    pub(super) const WRONG_TYPE: StoreError = StoreError::new(ErrorCode::WrongType, 0);
    /// detail 0: not an integer; 1: the result would overflow.
    pub(super) const NOT_INTEGER: StoreError = StoreError::new(ErrorCode::NotInteger, 0);
    pub(super) const OVERFLOW: StoreError = StoreError::new(ErrorCode::NotInteger, 1);

    /// Another holder has the lock for `expires_in_ms` more.
    #[inline]
    pub(super) const fn locked(expires_in_ms: u64) -> Self {
        StoreError::new(ErrorCode::Locked, expires_in_ms)
    }

    #[inline]
    pub(super) const fn version_mismatch(stored_version: u64) -> Self {
        StoreError::new(ErrorCode::VersionMismatch, stored_version)
    }
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // One wording for a person, shared with the wire error (which knows how to show detail).
        std::fmt::Display::fmt(&ErrorReply::new(self.code, self.detail), f)
    }
}

impl std::error::Error for StoreError {}

impl From<StoreError> for ErrorReply {
    /// The wire form. The message stays empty: the code and detail say it all, and an empty
    /// `String` does not allocate.
    #[inline]
    fn from(e: StoreError) -> Self {
        ErrorReply::new(e.code, e.detail)
    }
}
