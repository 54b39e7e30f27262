//! The data plane of one host as a plain state machine: no socket, no clock, no thread.
//!
//! [`DataPlane`] holds what a shard (or a simulated host) knows of the cluster — the installed
//! map as a [`View`], the primary lease, the time of the current pass — and the writes waiting
//! for their copies. It answers the questions the I/O around it asks:
//!
//! - [`route`]: where a keyed request goes (serve here, relay to host H, hold, refuse), under
//!   the one lease rule of [`lease`] that `ClusterNode::is_primary` and the simulation's
//!   checker use too;
//! - [`pending`]: whether a change waits for copies, which copies, and when the answer is
//!   released (all confirmed, a copy refused, the map dropped a copy, or
//!   `replication_timeout_ms` passed: `ReplicationFailed`); and the reads of a partition
//!   held behind its waiting changes, so that no read sees a change before it is safe;
//! - [`fence`]: whether a change from another host is accepted (epoch fencing,
//!   `StaleEpoch`), and applying `Replicate` and `ReplicateTouches` to the real [`Store`]
//!   (itself I/O-free);
//! - [`pulls`]: migration — which partitions this host is receiving, when to ask their
//!   primary for them, when a move is done, and whether a primary serves a pull.
//!
//! Inputs are plain data (a new [`View`], a lease, the time, a peer's message fields);
//! outputs are plain data (a [`Route`], a [`Begin`] telling whom to send a change, the
//! [`Completed`] writes to answer). The shard (`src/server/shard/hosts.rs`) feeds it from
//! the [`crate::cluster::plane::Plane`] and its links and turns the outputs into frames; the
//! deterministic simulation (`tests/cluster_sim.rs`) feeds it from a seeded scheduler, so the
//! code the simulation checks is the code the server runs. Still in the shard, not here: the
//! primary's migration stream (a paced walk over the partition's slots: I/O), held requests,
//! sliding-touch batching and store-wide requests (see docs/cluster.md, "Known gaps").
//!
//! [`Store`]: crate::store::Store

pub mod fence;
pub mod lease;
pub mod pending;
pub mod pulls;
pub mod route;

use std::sync::Arc;

pub use fence::{Refusal, Touch};
pub use pending::{Begin, Completed, Objects, PendingWrites, Read, Resend};
pub use pulls::{Pulls, accept_pull};
pub use route::Route;

use crate::cluster::plane::View;

/// One host's (in production: one shard's) data-plane state. `T` is what a waiting write
/// answers with (the shard: the answer frame and where it goes; the simulation: the client
/// operation). See the module doc.
pub struct DataPlane<T> {
    /// The installed map, `None` before the first.
    pub view: Option<Arc<View>>,
    /// `(epoch, until_ms)` on the caller's monotonic clock.
    lease: (u64, u64),
    /// The caller's clock at the start of this pass (leases are compared against it).
    now_ms: u64,
    pending: PendingWrites<T>,
}

impl<T> Default for DataPlane<T> {
    fn default() -> Self {
        DataPlane {
            view: None,
            lease: (0, 0),
            now_ms: 0,
            pending: PendingWrites::default(),
        }
    }
}

impl<T> DataPlane<T> {
    /// The start of a pass: the time and the lease (read once per pass, not per request).
    #[inline]
    pub fn set_time(&mut self, now_ms: u64, lease: (u64, u64)) {
        self.now_ms = now_ms;
        self.lease = lease;
    }

    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    pub fn lease(&self) -> (u64, u64) {
        self.lease
    }

    /// Installs a map (with its `primary_since` filled in, see [`lease::primary_since`]).
    /// Returns whether its epoch differs from the previous one, and the writes that no longer
    /// wait because the map dropped the copies they waited for.
    ///
    /// A map with another host id for this host means it rejoined the store as a new, empty
    /// member (it had been declared failed): every write still waiting is answered with the
    /// retryable `ReplicationFailed`, never acknowledged, since the store may have given its
    /// partition to others meanwhile.
    pub fn set_view(&mut self, view: Arc<View>) -> (bool, Vec<Completed<T>>) {
        view.check();
        let newer = self.view.as_ref().map(|v| v.epoch) != Some(view.epoch);
        let rejoined = self.view.as_ref().is_some_and(|v| v.me != view.me);
        self.view = Some(view);
        let done = if rejoined {
            self.fail_all((stategrid_proto::ErrorCode::ReplicationFailed, 0))
        } else if newer {
            self.settle_dropped_copies()
        } else {
            Vec::new()
        };
        (newer, done)
    }

    /// Is this host the primary of `p` with a lease that covers it now ([`lease::covers`])?
    #[inline]
    pub fn serves(&self, p: usize) -> bool {
        self.view.as_ref().is_some_and(|v| {
            v.owners[p].primary() == Some(v.me)
                && lease::covers(self.lease, v.epoch, v.primary_since[p], self.now_ms)
        })
    }

    /// Does a change to `p` need replication (another host has a copy)? Cheap: no allocation.
    #[inline]
    pub fn replicated(&self, p: usize) -> bool {
        self.view
            .as_ref()
            .is_some_and(|v| v.owners[p].copies().any(|h| h != v.me))
    }

    /// Writes waiting for copies now.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Reads held behind them now.
    pub fn held_len(&self) -> usize {
        self.pending.held_len()
    }

    /// Do changes of `p` wait for their copies (so that a read of `p` must wait too, see
    /// [`DataPlane::begin_read`])? Cost: one load.
    #[inline]
    pub fn waiting_in(&self, p: usize) -> bool {
        self.pending.waiting_in(p)
    }
}
