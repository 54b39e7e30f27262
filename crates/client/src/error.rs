//! The client's error type: one enum, each variant saying what went wrong and what to do.

use stategrid_proto::{ErrorCode, ErrorReply};

/// Everything a client call can fail with.
///
/// Server refusals arrive as [`Error::Server`] with the server's typed [`ErrorReply`]; the
/// `is_*` helpers name the outcomes an application usually branches on (not found, locked,
/// version mismatch, ...). The other variants are about reaching the server at all.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered with a typed error (see [`ErrorCode`] for the whole set).
    #[error("{0}")]
    Server(ErrorReply),

    /// No connection could be made to `addr` (refused, unreachable, or the connect timed out).
    #[error(
        "cannot connect to {addr}: {source} (is a stategrid server running there? check the host and port, default 2721)"
    )]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },

    /// The server does not speak this client's protocol version.
    #[error(
        "server at {addr} does not speak protocol version {client_version} (it serves up to version {server_version}); upgrade the client or the server so they match"
    )]
    UnsupportedVersion {
        addr: String,
        client_version: u16,
        server_version: u64,
    },

    /// A local I/O failure outside a connection (for example creating the blocking client's
    /// runtime).
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),

    /// The server sent bytes this client cannot read: a bad frame header, an archive that fails
    /// validation, or an answer that does not fit the request.
    #[error(
        "protocol error: {0} (is this port a stategrid server of a matching version? check client and server versions)"
    )]
    Protocol(String),

    /// No answer within `request_timeout_ms`.
    #[error(
        "no answer within {ms} ms (request_timeout_ms): the server may be overloaded or unreachable; the request may still have been applied"
    )]
    Timeout { ms: u64 },

    /// The connection closed before the answer arrived. The next request reconnects.
    #[error(
        "connection closed before the answer arrived ({reason}); the request may or may not have been applied, retry it if it is safe to repeat"
    )]
    Closed { reason: String },

    /// A [`crate::ClientConfig`] field is out of range.
    #[error("invalid client configuration: {0}")]
    Config(String),
}

impl Error {
    /// `Connect` for a step of connecting that did not finish in time; `what` says which
    /// step, the budget, and what to check.
    pub(crate) fn connect_timeout(addr: &str, what: String) -> Error {
        Error::Connect {
            addr: addr.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::TimedOut, what),
        }
    }

    /// The server's error code, when the server refused the request.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Server(reply) => Some(reply.code),
            _ => None,
        }
    }

    /// The server's full error reply, when the server refused the request.
    pub fn reply(&self) -> Option<&ErrorReply> {
        match self {
            Error::Server(reply) => Some(reply),
            _ => None,
        }
    }

    fn is(&self, code: ErrorCode) -> bool {
        self.code() == Some(code)
    }

    /// No such object (never existed, removed, or expired).
    pub fn is_not_found(&self) -> bool {
        self.is(ErrorCode::NotFound)
    }

    /// `add` found the object already present.
    pub fn is_already_exists(&self) -> bool {
        self.is(ErrorCode::AlreadyExists)
    }

    /// Another client holds the object's lock. [`Error::lock_expires_in_ms`] says for how long.
    pub fn is_locked(&self) -> bool {
        self.is(ErrorCode::Locked)
    }

    /// The lock token no longer holds the lock (expired, released, or wrong).
    pub fn is_lock_lost(&self) -> bool {
        self.is(ErrorCode::LockLost)
    }

    /// `update_if_version` found another version. [`Error::stored_version`] says which.
    pub fn is_version_mismatch(&self) -> bool {
        self.is(ErrorCode::VersionMismatch)
    }

    /// The store is full and nothing evictable is left; nothing was changed.
    pub fn is_low_memory(&self) -> bool {
        self.is(ErrorCode::LowMemory)
    }

    /// The value exceeds the server's `object_bytes_max`.
    pub fn is_object_too_large(&self) -> bool {
        self.is(ErrorCode::ObjectTooLarge)
    }

    /// The host is shutting down; another host can take the request.
    pub fn is_shutting_down(&self) -> bool {
        self.is(ErrorCode::ShuttingDown)
    }

    /// A concurrency conflict: already exists, locked, lock lost, or version mismatch. The
    /// request was well-formed; the object's state did not allow it.
    pub fn is_conflict(&self) -> bool {
        matches!(
            self.code(),
            Some(
                ErrorCode::AlreadyExists
                    | ErrorCode::Locked
                    | ErrorCode::LockLost
                    | ErrorCode::VersionMismatch
            )
        )
    }

    /// The request did not reach an answer because of the connection: connect failure,
    /// timeout, closed connection, or garbage from the peer.
    pub fn is_connection(&self) -> bool {
        matches!(
            self,
            Error::Connect { .. }
                | Error::Timeout { .. }
                | Error::Closed { .. }
                | Error::Protocol(_)
        )
    }

    /// A failure that may go away if the same request is sent again later: locked, low
    /// memory, too many in flight or connections, shutting down, timeout, closed connection.
    /// (Whether repeating is *safe* depends on the request.)
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Server(r) => matches!(
                r.code,
                ErrorCode::Locked
                    | ErrorCode::LowMemory
                    | ErrorCode::TooManyInFlight
                    | ErrorCode::TooManyConnections
                    | ErrorCode::ShuttingDown
            ),
            Error::Timeout { .. } | Error::Closed { .. } | Error::Connect { .. } => true,
            _ => false,
        }
    }

    /// For [`ErrorCode::Locked`]: milliseconds until the other holder's lock expires.
    pub fn lock_expires_in_ms(&self) -> Option<u64> {
        match self {
            Error::Server(r) if r.code == ErrorCode::Locked => Some(r.detail),
            _ => None,
        }
    }

    /// For [`ErrorCode::VersionMismatch`]: the version the server holds.
    pub fn stored_version(&self) -> Option<u64> {
        match self {
            Error::Server(r) if r.code == ErrorCode::VersionMismatch => Some(r.detail),
            _ => None,
        }
    }
}

impl From<ErrorReply> for Error {
    fn from(reply: ErrorReply) -> Self {
        Error::Server(reply)
    }
}

/// The client's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers_follow_the_code() {
        let e = Error::Server(ErrorReply::new(ErrorCode::Locked, 1500));
        assert!(e.is_locked() && e.is_conflict() && e.is_transient());
        assert_eq!(e.lock_expires_in_ms(), Some(1500));
        assert!(!e.is_not_found());
        assert_eq!(e.stored_version(), None);

        let e = Error::Server(ErrorReply::new(ErrorCode::VersionMismatch, 7));
        assert!(e.is_version_mismatch() && e.is_conflict() && !e.is_transient());
        assert_eq!(e.stored_version(), Some(7));

        let e = Error::Server(ErrorReply::new(ErrorCode::NotFound, 0));
        assert!(e.is_not_found() && !e.is_conflict());
        assert!(e.to_string().contains("not found"));

        let e = Error::Timeout { ms: 5000 };
        assert!(e.is_connection() && e.is_transient() && e.code().is_none());
        assert!(e.to_string().contains("5000 ms"));
    }
}
