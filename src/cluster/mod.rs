//! The multi-host store's cluster layer (see `docs/cluster.md`): a pure core, and the control
//! plane that drives it.
//!
//! The core (`map`, `node`, `data`, and the rules in `swim` and `wire`) opens no socket, spawns no
//! thread and reads no clock: every function takes the time (`now_ms`) and inputs as plain
//! data and returns outputs as plain data, so the control plane can drive it from sockets and
//! timers and the deterministic simulation (`tests/cluster_sim.rs`) from a seeded scheduler.
//! All I/O is in `control`.
//!
//! Parts:
//! - [`map`]: [`PartitionMap`] (epoch, hosts, owners of each of the 1024 partitions, with
//!   pending and outgoing copies for migration) and the pure deterministic planner [`plan`].
//! - [`node`]: [`ClusterNode`], one host's member of the Raft group (raft-rs) that agrees on
//!   the map: the log of map commands, the leader's reactions to membership events, Raft
//!   group changes, primary leases and the witness mode.
//! - [`data`]: [`data::DataPlane`], the data plane's decisions as a plain state machine
//!   (routing, the lease rule, pending replicated writes, epoch fencing), run by the shards and
//!   by the simulation alike.
//! - [`plane`]: the boundary between this host's control plane and its data plane.
//! - [`control`]: the control plane thread (I/O lives here, not in the parts above): SWIM
//!   ([`swim`]), the Raft transport ([`wire`]) and the admin protocol ([`admin`]) on `mgt_port`;
//!   name lookups run beside it ([`resolver`]).

pub mod admin;
pub mod control;
pub mod data;
pub mod map;
pub mod mgt_tls;
pub mod node;
pub mod plane;
pub mod resolver;
pub mod secure_mgt;
pub mod swim;
pub mod wire;

pub use map::{HostId, HostInfo, HostState, Owners, PartitionMap, Role, plan, plan_with_ready};
pub use node::{ClusterNode, Command, Input, NodeConfig, Output, PeerMsg};
