//! The Redis protocol (RESP2/RESP3) front of a shard: existing Redis clients and the session
//! stores built on them use stategrid unchanged (issue 8; docs/redis.md is the user's view).
//!
//! Layering (as mini-redis and Dragonfly's facade do it):
//! - [`parse`]: bytes to a command's arguments (incremental, bounded, no allocation by a
//!   peer's claimed length).
//! - [`commands`]: the command table; each command becomes literal replies and/or typed
//!   native requests (`Request::Redis`, `Meta`, `ListKeys`...) that take the SAME routing path
//!   as native requests (local shard, other shard, relay to the primary host, wait for a
//!   lease, refuse) and the same replication. Nothing here routes or replicates.
//! - [`render`]: native answers to RESP replies, in request order.
//! - [`reply`]: RESP encoding; [`glob`]: Redis's pattern matcher.
//! - [`standalone`]: a connection on an in-memory one-shard store, no I/O (for fuzzing).
//!
//! The shard side (detection on `svr_port`, the receive loop, the glue to the routing path)
//! is `server/shard/resp_conn.rs`. A transaction (`EXEC`) travels as one `Request::RedisTx` to
//! the shard that serves its keys and runs there through this same command table
//! (`server/resp_tx.rs`), so it is atomic wherever the connection is.
//!
//! Redis database N is the namespace `redis-N` (reserved id `REDIS_NS_BASE | N`, see
//! `stategrid_proto::hash`), whose keys hash with Redis Cluster's slot function, so native
//! clients and Redis clients share objects and agree on where they live.

pub mod cluster;
pub mod commands;
pub mod cursor;
pub mod glob;
pub mod parse;
pub mod render;
pub mod reply;
pub mod standalone;

pub use commands::{Args, Host, Session, Topology};
pub use render::{Pending, RespOut, Shape, ValRef};

/// The version INFO and HELLO report. Clients switch features on by it (redis-py and
/// StackExchange.Redis check it for UNLINK, GETEX, EXPIRE options...): 7.2 has every command
/// stategrid implements.
pub const REDIS_VERSION: &str = "7.2.4";
