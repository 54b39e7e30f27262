//! stategrid: a distributed in-memory object store for session state and shared objects.
//!
//! Layout (protocol apart from the store, the store apart from the shard runtime):
//!
//! - [`config`]: parameters (ScaleOut's `name value` file, `STATEGRID_*` env, `--set`), with
//!   every limit named with its unit.
//! - [`preflight`]: io_uring checks before any executor starts; each failure names its fix.
//! - [`store`]: one shard's objects (hashbrown tables, timeouts, locks, LRU, memory
//!   accounting). Pure data structure: no I/O, the clock is passed in.
//! - [`server`]: the shard-per-core runtime: one pinned glommio executor per shard, the
//!   message mesh between shards, request routing and forwarding, shutdown. A shard
//!   (`server::shard`) is layered socket → frame → dispatch → data plane → store, one module
//!   and one type each: `conn` (sockets, connections, TLS, answer order), `resp_conn` (RESP
//!   framing), `dispatch` (a request becomes local execution, a hop to another shard or a
//!   host route), `hosts` (the cluster data plane's link I/O), `mesh` (the other shards).
//! - [`net`]: the shard's socket path: an io_uring ring of its own (`DEFER_TASKRUN` +
//!   `SINGLE_ISSUER`) driven from a glommio task, batching accepts, receives and sends.
//! - [`http`]: the HTTP data REST API (hyper on each shard's glommio executor), whose
//!   requests go through the shard's own routing as native requests.
//! - [`cli`]: the `stategrid` control program (a client of the server).
//! - [`resp`]: the Redis protocol front (RESP2/3 parser, command table, reply rendering); its
//!   commands become native requests on the shard's one routing path.
//! - [`cluster`]: the multi-host core, pure logic: partition map, planner, Raft on the map,
//!   leases, and the data plane's decisions (`cluster::data`: routing, the lease rule, pending
//!   replicated writes, epoch fencing), run by the shards (`server::shard::hosts` is their
//!   link I/O) and by the deterministic simulation alike; plus the control plane's I/O.
//!
//! The wire protocol lives in the `stategrid-proto` crate and the client library in
//! `stategrid-client`, so applications never build glommio.

pub mod alloc_count;
pub mod auth;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod http;
pub mod net;
pub mod preflight;
pub mod resp;
pub mod server;
pub mod store;
