//! The stategrid client library: async on tokio, and blocking behind the `blocking` feature.
//!
//! ```no_run
//! use stategrid_client::{Client, ClientConfig, WriteOptions};
//!
//! # async fn run() -> Result<(), stategrid_client::Error> {
//! let client = Client::connect("127.0.0.1:2721", ClientConfig::default()).await?;
//! let sessions = client.namespace("sessions").await?;
//!
//! // A session that expires after 20 idle minutes.
//! sessions.put("session-1", b"{\"user\":42}", WriteOptions::sliding(1200)).await?;
//!
//! // The session-provider pattern: lock, change, write back and unlock.
//! let locked = sessions.read_and_lock("session-1").await?;
//! let mut state = locked.value;
//! state.extend_from_slice(b" ");
//! sessions
//!     .update_and_unlock("session-1", &state, WriteOptions::new(), locked.lock_token)
//!     .await?;
//!
//! match sessions.read("session-2").await {
//!     Ok(read) => println!("{} bytes, version {}", read.value.len(), read.meta.version),
//!     Err(e) if e.is_not_found() => println!("no such session"),
//!     Err(e) => return Err(e),
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Layout:
//!
//! - [`Client`] (in `client.rs`): a pool of `connections` connections to one host, used
//!   round-robin; a failed connection is replaced on its next use. Every request has a
//!   timeout (`request_timeout_ms`). [`Namespace`] handles carry the object calls.
//! - `conn.rs`: one pipelined connection: up to `inflight_per_conn_max` requests in flight, a
//!   writer task batching frames, a reader task matching answers to requests by request id,
//!   and an 8-aligned receive buffer (rkyv validates archives in place).
//! - [`Error`] (in `error.rs`): server refusals ([`Error::Server`], with `is_not_found`,
//!   `is_locked`, `is_version_mismatch`, ...) apart from connection trouble.
//! - [`blocking`] (feature `blocking`): the same client for scripts, run on a private
//!   current-thread runtime.
//!
//! The wire protocol lives in `stategrid-proto`, re-exported here as [`proto`]; this crate
//! never depends on glommio or io_uring.

#[cfg(feature = "blocking")]
pub mod blocking;
mod client;
mod config;
mod conn;
mod error;
mod tls;

pub use client::{Client, KEY_PAGE_LIMIT, KeyPage, Locked, Namespace, ReadResult, WriteOptions};
pub use config::{ClientConfig, Credentials, DEFAULT_PORT, TlsOptions, with_default_port};
pub use conn::{RawReply, ServerInfo};
pub use error::{Error, Result};
pub use stategrid_proto as proto;
pub use stategrid_proto::{
    ErrorCode, ErrorReply, LockInfo, Meta, NsId, NsInfo, Param, Stats, TIMEOUT_S_MAX, Timeout,
    TimeoutKind, WriteOpts,
};

#[cfg(test)]
mod tests;
