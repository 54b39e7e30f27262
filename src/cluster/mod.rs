//! The multi-host store's cluster core: pure logic, no I/O (see `docs/cluster.md`).
//!
//! Nothing here opens a socket, spawns a thread or reads a clock: every function takes the
//! time (`now_ms`) and inputs as plain data and returns outputs as plain data, so the server
//! can drive it from glommio sockets and timers and the deterministic simulation
//! (`tests/cluster_sim.rs`) can drive it from a seeded scheduler.
//!
//! Parts:
//! - [`map`]: [`PartitionMap`] (epoch, hosts, owners of each of the 1024 partitions, with
//!   pending and outgoing copies for migration) and the pure deterministic planner [`plan`].
//! - [`node`]: [`ClusterNode`], one host's member of the Raft group (raft-rs) that agrees on
//!   the map: the log of map commands, the leader's reactions to membership events, Raft
//!   group changes, primary leases and the witness mode.

pub mod map;
pub mod node;
pub mod plane;

pub use map::{HostId, HostInfo, HostState, Owners, PartitionMap, Role, plan, plan_with_ready};
pub use node::{ClusterNode, Command, Input, NodeConfig, Output, PeerMsg};
