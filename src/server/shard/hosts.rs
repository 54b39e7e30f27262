//! The shard's part of the multi-host store: routing to the primary host, synchronous
//! replication, and migration streams, over connections to the other hosts' `int_port`.
//!
//! The control plane (`cluster::control`) decides who owns what and hands this shard a
//! [`View`] and a lease through the [`Plane`]. The decisions on them — where a keyed request
//! goes, the lease rule, which copies a change waits for and when its answer is released,
//! the epoch fence on changes from other hosts — are made by the I/O-free
//! [`crate::cluster::data::DataPlane`] (the code the simulation runs); this module is the I/O
//! around it (links, frames, answers to connections) plus migration streams, held requests
//! and touch batching, which are not in the machine yet:
//!
//! - **Routing.** A keyed request is served here only if this host is its partition's primary
//!   and holds the lease for the installed map's epoch. A client request for a partition whose
//!   primary is another host is relayed there over this shard's link to that host and the
//!   answer comes back in request order. A request that arrived from another host (an
//!   internal connection) is never relayed again: if this host is not the primary any more it
//!   answers `NotPrimary`, and the client fetches the map and retries.
//! - **Replication.** A request that changed an object (its version or lock) is answered only
//!   after every other host with a copy of the partition (replicas, pending and outgoing
//!   copies) has applied the object's new state (`Replicate`, the whole state: value, version,
//!   times, lock, timeout; or its removal); for a RENAME or a Redis transaction, every object
//!   it changed (they share one partition). A replica that does not confirm within
//!   `replication_timeout_ms` turns the answer into `ReplicationFailed` (retryable); a replica
//!   the map drops meanwhile (declared failed) is no longer waited for.
//! - **Sliding timeouts.** A read restarts a sliding timeout without changing the object, so
//!   it is not replicated as a change: the store logs such restarts and every
//!   `sliding_touch_replication_ms` this shard sends each replica the new deadlines of the
//!   partitions it is primary of (`ReplicateTouches`, one batch per partition, no answer
//!   awaited). A replica applies a deadline only to a live object at the same version, so a
//!   session that is only read survives a failover, and a touch never re-creates a removed
//!   object or overwrites a newer one.
//! - **Fencing.** A replica whose map is at least as new as the sender's accepts a change only
//!   from the partition's primary in its own map; an old primary is refused (`StaleEpoch`).
//! - **Migration.** A host named a pending copy asks the primary to stream the partition
//!   (`MigratePull`); the primary walks a snapshot of the partition's slots and sends each
//!   live object as a `Replicate` on the same link that carries the partition's replication,
//!   so a change made during the move reaches the new copy after the older state it replaces.
//!   `MigrateEnd` closes the stream and the new copy reports `MigrationDone` to the control
//!   plane. Streams are paced by the link's queued bytes, so a partition move never holds the
//!   shard for long. When to ask, ask again and report a move done, and whether to serve a
//!   pull, are decided by [`Pulls`] and [`accept_pull`] (`cluster::data::pulls`), which the
//!   simulation runs too; this file sends the asks and walks the stream.
//!
//! Links use the shard's own ring (connect, recv, sendmsg), like client connections: a link is
//! a `Conn` in the shard's connection slab (`conn`). [`Hosts`] owns the data plane's state
//! (the machine, the links by host, pulls, streams, held requests); its methods take the
//! other parts of the shard they touch as parameters (`&mut Conns` for links and the
//! connections answers go to, `&mut Core` for the store, `&Mesh` for answers owed to other
//! shards). It also serves the requests other shards forward (`Hosts::execute_frame_to`),
//! which may be changes to replicate.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use hashbrown::HashMap;
use stategrid_proto::{
    ArchivedRequest, ErrorCode, ErrorReply, Key, MapHost, MapInfo, PARTITIONS, PROTOCOL_VERSION,
    Request, Response, TouchItem, codec, frame, key_hash, partition_of,
};

use super::conn::{Conn, ConnKind, Conns};
use super::mesh::Mesh;
use crate::auth::peer;
use crate::cluster::HostId;
use crate::cluster::data::{Begin, Completed, DataPlane, Objects, Pulls, Read, Touch, accept_pull};
use crate::cluster::plane::{self, DataCmd, DataEvent, Plane, View};
use crate::net::{AlignedBuf, Op, SendBatch, Token};
use crate::server::Msg;
use crate::server::exec::{Core, Sink, VecSink};
use crate::store::KeyRef;

/// Objects a migration stream sends per ring pass at most...
const MIGRATE_BATCH_OBJECTS: usize = 256;
/// ...and only while the link has fewer bytes than this queued: paces a partition move so
/// client requests on this shard never wait behind a whole partition.
const MIGRATE_QUEUE_BYTES_MAX: usize = 4 << 20;
/// Requests held per shard at most while a partition's new primary waits for its lease...
const DEFERRED_MAX: usize = 4096;
/// ...and for at most this long (the lease is asked for as soon as a map is installed and
/// renewed every `failure_detection_ms / 12`); then they are answered `NotPrimary`.
const DEFER_MS_MAX: u64 = 100;
/// Sent bytes unacknowledged this long fail a link (`TCP_USER_TIMEOUT`).
const LINK_DEAD_PEER_TIMEOUT_MS: u64 = 1_500;
/// Wait before connecting again to a host whose link failed.
const LINK_RETRY_MS: u64 = 100;
/// Key bytes one `ReplicateTouches` frame carries at most (a partition with more touched keys
/// sends several): keeps every batch far below any `frame_bytes_max`.
const TOUCH_BATCH_KEY_BYTES_MAX: usize = 256 << 10;
/// Frames in flight on one link at most before relayed requests are refused (bounds memory
/// when a peer stops answering).
pub const LINK_INFLIGHT_MAX: usize = 65_536;

/// Where a host-to-host connection is in the cluster-key handshake ([`peer`]). Nothing on the
/// connection is decoded as a frame, and nothing of ours is sent, until it is `Proven`.
pub enum LinkAuth {
    /// No handshake: a client connection, or a store without a cluster key.
    Open,
    /// We dialled: our hello (kept here until the connect completes) went first; waiting for
    /// the responder's challenge.
    Initiator(Box<peer::Initiator>, Option<Vec<u8>>),
    /// Another host dialled us: waiting for its hello, then its proof.
    Responder(Box<peer::Responder>),
    /// The peer proved it holds the cluster key and is this host.
    Proven(HostId),
}

impl LinkAuth {
    pub fn pending(&self) -> bool {
        matches!(self, LinkAuth::Initiator(..) | LinkAuth::Responder(..))
    }
}

/// For a request from host `peer` (proven on its connection), why it is refused: a
/// host-to-host request names its sender (or the copy it is for) and that must be the
/// connection's host, never a host it claims to speak for.
pub fn sender_mismatch(req: &ArchivedRequest, peer: HostId) -> Option<String> {
    let (field, claimed) = match req {
        ArchivedRequest::Replicate { from, .. } => ("from", from.to_native()),
        ArchivedRequest::MigrateEnd { from, .. } => ("from", from.to_native()),
        ArchivedRequest::MigratePull { to, .. } => ("to", to.to_native()),
        ArchivedRequest::ReplicateTouches { from, .. } => ("from", from.to_native()),
        ArchivedRequest::NsClearPartition { from, .. } => ("from", from.to_native()),
        _ => return None,
    };
    (claimed != peer.0).then(|| {
        format!(
            "{} names {field} host {claimed:#x}, but this connection proved it is host {:#x}",
            req.name(),
            peer.0
        )
    })
}

/// The hosts a store-wide request covers, in the map's order: every host not declared failed
/// (a joining host, primary of nothing yet, answers with nothing). A key listing cursor names
/// a host by its place in this list.
pub fn listed_hosts(view: &View) -> Vec<HostId> {
    view.hosts
        .iter()
        .filter(|h| h.state != crate::cluster::HostState::Failed)
        .map(|h| h.id)
        .collect()
}

/// The answer frame for a part of a store-wide request whose host could not be asked.
pub fn host_unreachable(host: HostId) -> Vec<u8> {
    let mut b = Vec::new();
    codec::encode_response(
        &mut b,
        0,
        &Response::Error(ErrorReply::with_message(
            ErrorCode::NotPrimary,
            0,
            format!("host {host:?} did not answer its part of a store-wide request; try again"),
        )),
        &[],
    );
    b
}

/// Sends a handshake message straight on a socket nothing else has sent on yet (tens of
/// bytes into an empty socket buffer: it goes whole or the connection is useless). One
/// syscall, once per connection. Over TLS (`tls_cluster`) it is queued to be encrypted
/// ahead of everything else, and the next flush sends it.
fn send_now(
    fd: std::os::fd::RawFd,
    tls: &mut Option<Box<crate::net::TlsConn>>,
    bytes: &[u8],
) -> bool {
    if let Some(tls) = tls {
        tls.send_urgent(bytes);
        return true;
    }
    // SAFETY: a nonblocking send of our own bytes on our own socket.
    let n = unsafe {
        libc::send(
            fd,
            bytes.as_ptr() as *const libc::c_void,
            bytes.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    n == bytes.len() as isize
}

/// A shard keeps two links to each other host, because a host answers a link's requests in
/// order. Relayed client writes wait for replication; if replication acknowledgements shared
/// their link they could wait behind such a write on the other host, whose own
/// acknowledgement waits behind ours: measured with load on both hosts, writes stalled until
/// `replication_timeout_ms`. Acknowledging a `Replicate` never waits on another host, so on
/// its own link nothing can wait in a cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LinkClass {
    /// Replication, migration streams and pulls.
    Data,
    /// Client requests relayed to the partition's primary.
    Relay,
}

/// What an answer on a link is for, in the order the requests went out.
pub enum Expect {
    Hello,
    /// A replica's confirmation of a change.
    Ack {
        pending: u32,
        host: HostId,
    },
    /// The answer to a client request relayed to the primary host.
    Relay {
        slot: u32,
        generation: u32,
        seq: u64,
        id: u32,
    },
    PullAck {
        partition: u16,
    },
    /// A migration stream's object: `MigrateEnd` waits until every one is confirmed.
    Stream {
        id: u64,
    },
    /// `MigrateEnd`: the receiver reports the move itself.
    Ignore,
    /// `ReplicateTouches`, `NsClearPartition`: nothing waits for the answer.
    Notice,
    /// Another host's part of a store-wide request (namespace count or clear) gathered for a
    /// client of this host.
    Part {
        slot: u32,
        generation: u32,
        seq: u64,
        part: u32,
    },
}

/// Where a deferred answer goes once its replicas confirmed.
#[derive(Clone, Copy, Debug)]
pub enum AnswerTo {
    Conn {
        slot: u32,
        generation: u32,
        seq: u64,
    },
    Shard {
        origin: usize,
        conn: u32,
        generation: u32,
        seq: u64,
        part: u32,
    },
}

/// What a write waiting for its copies answers with (the machine's `T`, see
/// [`DataPlane::begin_write`]).
pub struct Waiting {
    to: AnswerTo,
    request_id: u32,
    answer: Vec<u8>,
    /// When the write was applied (for the replication acknowledgement latency metric).
    started: std::time::Instant,
}

/// A request held until this host's lease covers its partition (see [`HostRoute::Wait`]).
struct Deferred {
    partition: usize,
    /// Relayed by another host (never relayed again).
    internal: bool,
    slot: u32,
    generation: u32,
    seq: u64,
    id: u32,
    frame: AlignedBuf,
    deadline_ms: u64,
}

/// A partition this host is receiving.
/// A partition this host is sending to a new copy.
struct Stream {
    id: u64,
    to: HostId,
    partition: u32,
    slots: Vec<u32>,
    pos: usize,
    sent: u64,
    /// Objects sent and not yet confirmed; `MigrateEnd` goes only when this is 0 and none was
    /// refused, so "the move is done" always means every object arrived.
    unconfirmed: u64,
    /// A refused object: the stream starts over from a fresh snapshot.
    failed: bool,
}

/// Where the arrival shard sends a keyed request (decided by [`DataPlane::route`]).
pub use crate::cluster::data::Route as HostRoute;

/// Requests that change nothing (never replicated).
pub fn read_only(req: &ArchivedRequest) -> bool {
    matches!(
        req,
        ArchivedRequest::Read { .. } | ArchivedRequest::Meta { .. }
    ) || matches!(req, ArchivedRequest::Redis { op, .. } if op.to_native().is_read_only())
}

/// The shard's multi-host state. See the module doc.
pub struct Hosts {
    pub plane: Arc<Plane>,
    generation: u64,
    /// The data plane's decisions (map, lease, routing, fencing, pending writes): this file
    /// is the I/O around it.
    pub data: DataPlane<Waiting>,
    links: HashMap<(HostId, LinkClass), (u32, u32)>,
    link_retry_at_ms: HashMap<(HostId, LinkClass), u64>,
    /// Partitions this host receives (the decisions: [`Pulls`]).
    pulls: Pulls,
    streams: VecDeque<Stream>,
    deferred: VecDeque<Deferred>,
    next_link_id: u32,
    next_stream_id: u64,
    /// Did the installed map ever name more than this host? (Bulk requests are single-host.)
    multi_host: bool,
    /// When the touch log next goes to the replicas ([`plane::now_ms`] clock).
    touches_due_ms: u64,
}

impl Hosts {
    /// For `/metrics`: writes waiting for replicas, partitions being received, partitions
    /// being streamed out.
    pub fn metrics_gauges(&self) -> (usize, usize, usize) {
        (
            self.data.pending_len(),
            self.pulls.len(),
            self.streams.len(),
        )
    }

    pub fn new(plane: Arc<Plane>) -> Hosts {
        Hosts {
            plane,
            generation: u64::MAX,
            data: DataPlane::default(),
            links: HashMap::new(),
            link_retry_at_ms: HashMap::new(),
            pulls: Pulls::default(),
            streams: VecDeque::new(),
            deferred: VecDeque::new(),
            next_link_id: 1,
            next_stream_id: 1,
            multi_host: false,
            touches_due_ms: 0,
        }
    }

    /// Must a request on `p` be served by [`Hosts::execute_replicated`]: a change to a
    /// replicated partition (it waits for its copies), or a read of a partition whose changes
    /// wait for their copies (it waits behind them: see [`DataPlane::begin_read`])?
    /// Cost: two loads for a read, the owners lookup for a change.
    #[inline]
    pub fn via_copies(&self, p: usize, read_only: bool) -> bool {
        if read_only {
            self.data.waiting_in(p)
        } else {
            self.data.replicated(p)
        }
    }

    /// [`plane::now_ms`] at the start of this pass.
    #[inline]
    fn mono_ms(&self) -> u64 {
        self.data.now_ms()
    }

    /// This host's id in the installed map (0 before it joined).
    pub fn me(&self) -> u64 {
        self.data.view.as_ref().map_or(0, |v| v.me.0)
    }

    /// Did the installed map ever name more than this host?
    pub fn multi_host(&self) -> bool {
        self.multi_host
    }

    // ---- the plane -----------------------------------------------------------------------

    /// Once per pass: new map, lease, commands; then pulls and migration streams.
    pub fn cluster_pass(&mut self, conns: &mut Conns, core: &mut Core, mesh: &Mesh) {
        let lease = self.plane.lease();
        self.data.set_time(plane::now_ms(), lease);
        let generation = self.plane.generation();
        if generation != self.generation {
            self.generation = generation;
            self.on_new_view(conns, core, mesh);
        }
        if !self.pulls.is_empty() {
            self.pump_pulls(conns, core);
        }
        if !self.streams.is_empty() {
            self.pump_streams(conns, core);
        }
        if !self.deferred.is_empty() {
            self.pump_deferred(conns, core, mesh);
        }
        if self.multi_host && self.mono_ms() >= self.touches_due_ms {
            self.touches_due_ms = self.mono_ms() + core.cfg.sliding_touch_replication_ms;
            self.send_touches(conns, core);
        }
    }

    /// Sends the timeouts restarted since the last batch to the replicas of the partitions
    /// this host is primary of (see the module doc). Cost per batch: one key copy per touched
    /// object, one frame per partition and replica; nothing per read beyond the store's log.
    fn send_touches(&mut self, conns: &mut Conns, core: &mut Core) {
        let touched = core.store.take_touches(core.now_ms);
        if touched.is_empty() {
            return;
        }
        let Some(view) = self.data.view.clone() else {
            return;
        };
        let mut by_partition: HashMap<u32, Vec<TouchItem>> = HashMap::new();
        for t in touched {
            let o = &view.owners[t.partition as usize];
            if o.primary() != Some(view.me) || o.copies().all(|h| h == view.me) {
                continue;
            }
            by_partition
                .entry(t.partition)
                .or_default()
                .push(TouchItem {
                    ns: t.ns,
                    key: t.key,
                    version: t.version,
                    expires_at_ms: t.expires_at_ms,
                });
        }
        for (partition, mut items) in by_partition {
            while !items.is_empty() {
                let mut bytes = 0;
                let n = items
                    .iter()
                    .take_while(|i| {
                        bytes += i.key.len();
                        bytes <= TOUCH_BATCH_KEY_BYTES_MAX
                    })
                    .count()
                    .max(1);
                let rest = items.split_off(n);
                let msg = Request::ReplicateTouches {
                    epoch: view.epoch,
                    from: view.me.0,
                    partition,
                    items,
                };
                for host in self.notify_copies(conns, core, &view, partition, &msg) {
                    tracing::debug!(shard = core.shard, ?host, "touches not sent");
                }
                items = rest;
            }
        }
    }

    /// Holds a keyed request until the lease covers its partition ([`HostRoute::Wait`]).
    #[allow(clippy::too_many_arguments)]
    pub fn defer(
        &mut self,
        partition: usize,
        internal: bool,
        slot: u32,
        generation: u32,
        seq: u64,
        id: u32,
        frame: &[u8],
    ) {
        self.deferred.push_back(Deferred {
            partition,
            internal,
            slot,
            generation,
            seq,
            id,
            frame: AlignedBuf::from_slice(frame),
            deadline_ms: self.mono_ms() + DEFER_MS_MAX,
        });
    }

    /// Serves held requests whose partition the lease now covers; relays a client's whose
    /// partition moved to another host; answers `NotPrimary` to those that waited too long.
    fn pump_deferred(&mut self, conns: &mut Conns, core: &mut Core, mesh: &Mesh) {
        let Some(view) = self.data.view.clone() else {
            return;
        };
        let now = self.mono_ms();
        let mut i = 0;
        while i < self.deferred.len() {
            let d = &self.deferred[i];
            let primary = view.owners[d.partition].primary();
            let mine = primary == Some(view.me);
            let ready = mine && self.data.serves(d.partition);
            // A client's request whose partition now has another primary goes there.
            let elsewhere = primary.filter(|&h| h != view.me && !d.internal);
            if !ready && elsewhere.is_none() && now < d.deadline_ms {
                i += 1;
                continue;
            }
            let d = self.deferred.remove(i).expect("index in range");
            let to = AnswerTo::Conn {
                slot: d.slot,
                generation: d.generation,
                seq: d.seq,
            };
            if let (false, Some(host)) = (ready, elsewhere) {
                self.relay(
                    conns,
                    core,
                    host,
                    d.slot,
                    d.generation,
                    d.seq,
                    d.id,
                    d.frame.as_slice(),
                );
                // A relay that could not be sent filled the slot: send it (we are outside
                // `process_frames`, so the connection may be flushed here).
                if conns.conn_mut(d.slot, d.generation).is_some() {
                    conns.flush(d.slot);
                    self.close_if_done(conns, core, d.slot);
                }
                continue;
            }
            if !ready {
                let mut b = Vec::new();
                VecSink(&mut b).error(d.id, ErrorCode::NotPrimary, view.epoch);
                self.deliver(conns, core, mesh, to, b);
                continue;
            }
            let owner = crate::server::owner_shard(d.partition as u32, core.shards);
            if owner == core.shard {
                if let Some(answer) = self.execute_frame_to(conns, core, &d.frame, Some(to)) {
                    self.deliver(conns, core, mesh, to, answer);
                }
            } else {
                let origin = core.shard;
                mesh.send_to(
                    owner,
                    Msg::Forward {
                        origin,
                        conn: d.slot,
                        generation: d.generation,
                        seq: d.seq,
                        part: 0,
                        frame: d.frame,
                    },
                );
            }
        }
    }

    fn on_new_view(&mut self, conns: &mut Conns, core: &mut Core, mesh: &Mesh) {
        let Some(view) = self.plane.view() else {
            return;
        };
        let me = core.shard;
        let shards = core.shards;
        // Writes waiting for a host the map no longer gives a copy: that copy is gone
        // (declared failed or moved away), so it is not waited for. After an in-process
        // rejoin (a new host id) every waiting write fails, retryable (`DataPlane::set_view`);
        // the empty view below drops every copy.
        let (newer, done) = self.data.set_view(view.clone());
        for c in done {
            self.complete_pending(conns, core, mesh, c);
        }
        if view.hosts.len() > 1 {
            self.multi_host = true;
        }
        // Restarted sliding timeouts are logged once there may be replicas to tell.
        core.store.set_touch_log(self.multi_host);
        core.list_host = self.multi_host.then(|| {
            let hosts = listed_hosts(&view);
            let me = hosts.iter().position(|&h| h == view.me).unwrap_or(0);
            (me as u8, hosts.len() as u8)
        });
        core.primary_partitions = self.multi_host.then(|| {
            (0..PARTITIONS as usize)
                .map(|p| view.owners[p].primary() == Some(view.me))
                .collect()
        });
        if newer {
            tracing::debug!(shard = me, epoch = view.epoch, "map installed");
            // Drop copies this host no longer has a role in, and pulls no longer wanted.
            for p in (me..PARTITIONS as usize).step_by(shards) {
                let role = view.owners[p].role_of(view.me);
                if role.is_none() && core.store.partition_len(p as u32) > 0 {
                    let n = core.store.drop_partition(p as u32);
                    tracing::debug!(shard = me, partition = p, objects = n, "copy dropped");
                }
            }
            self.pulls
                .on_map(&view, (me..PARTITIONS as usize).step_by(shards));
            // Links to hosts the map no longer names.
            let gone: Vec<HostId> = self
                .links
                .keys()
                .map(|&(h, _)| h)
                .filter(|h| view.addr(*h).is_none())
                .collect();
            for h in gone {
                self.close_link(conns, core, h);
            }
            self.streams.retain(|s| {
                view.owners[s.partition as usize]
                    .copies()
                    .any(|c| c == s.to)
            });
        }
        for cmd in self.plane.take_cmds(me) {
            match cmd {
                DataCmd::SetParam { name, value } => Self::apply_param(core, &name, &value),
                DataCmd::Pull { partition, .. } => self.pulls.want(partition, self.mono_ms()),
            }
        }
    }

    /// Applies a store-wide parameter from the Raft log to this shard: its configuration (as
    /// `stategrid show` reports it) and its store's limits.
    fn apply_param(core: &mut Core, name: &str, value: &str) {
        let mut cfg = (*core.cfg).clone();
        if let Err(e) = cfg.set(name, value, crate::config::Source::Set) {
            tracing::warn!(
                shard = core.shard,
                "store-wide parameter {name} = {value} not applied: {e}"
            );
            return;
        }
        core.store.set_limits(cfg.store_limits(core.shards));
        core.cfg = Arc::new(cfg);
    }

    /// Publishes this shard's numbers for `stategrid query` (from housekeeping).
    pub fn publish_counters(&self, core: &Core) {
        let st = core.store.stats();
        let c = &self.plane.counters[core.shard];
        c.objects
            .store(st.objects, std::sync::atomic::Ordering::Relaxed);
        c.memory_bytes
            .store(st.object_bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// Expires writes whose replicas did not confirm in time, and sends the changes in doubt
    /// again (from housekeeping; see `cluster::data::pending`).
    pub fn expire_pending(&mut self, conns: &mut Conns, core: &mut Core, mesh: &Mesh) {
        let timeout = core.cfg.replication_timeout_ms;
        let (done, resend) = self.data.expire(plane::now_ms(), timeout);
        for c in done {
            if !c.read {
                tracing::warn!(
                    shard = core.shard,
                    partition = c.partition,
                    "replicas {:?} did not confirm a change within replication_timeout_ms ({timeout} ms); it is sent to them again until they do or leave the map",
                    c.unconfirmed
                );
            }
            self.complete_pending(conns, core, mesh, c);
        }
        for r in resend {
            core.metrics.replication_resends += 1;
            for (ns, key) in &r.objects {
                self.send_replicas(
                    conns,
                    core,
                    r.idx,
                    r.epoch,
                    r.me,
                    r.partition as usize,
                    &r.copies,
                    *ns,
                    std::iter::once(&key[..]),
                );
            }
        }
    }

    // ---- routing -------------------------------------------------------------------------

    /// Where a keyed request for partition `p` goes, decided on the shard it arrived at.
    #[inline]
    pub fn host_route(&self, p: usize, internal: bool) -> HostRoute {
        let can_hold = self.deferred.len() < DEFERRED_MAX;
        self.data.route(p, internal, can_hold)
    }

    /// Bulk and store-wide requests are served by one host only; refused once the store has
    /// several (they would see or change only this host's part).
    pub fn multi_host_refusal(&self, req: &ArchivedRequest) -> Option<String> {
        if !self.multi_host {
            return None;
        }
        match req {
            ArchivedRequest::MultiRead { .. } | ArchivedRequest::BulkPut { .. } => Some(format!(
                "{} is not served by a multi-host store in this version; send the keys one by one",
                req.name()
            )),
            _ => None,
        }
    }

    /// `GetMap`: the primaries clients route by.
    pub fn map_response(&self) -> Response {
        let Some(view) = &self.data.view else {
            return Response::Error(ErrorReply::new(ErrorCode::NotJoined, 0));
        };
        // Hosts declared failed are left out: clients must not route to them, and a host that
        // comes back at the same address is a new member with a new id.
        let hosts: Vec<MapHost> = view
            .hosts
            .iter()
            .filter(|h| h.state != crate::cluster::HostState::Failed)
            .filter_map(|h| {
                let a = view.addr(h.id)?;
                Some(MapHost {
                    id: h.id.0,
                    svr_addr: a.svr().to_string(),
                    active: h.state == crate::cluster::HostState::Active,
                })
            })
            .collect();
        let primaries = view
            .owners
            .iter()
            .map(|o| {
                o.primary()
                    .and_then(|p| hosts.iter().position(|h| h.id == p.0))
                    .map_or(u16::MAX, |i| i as u16)
            })
            .collect();
        let moving = view
            .owners
            .iter()
            .filter(|o| o.copies().count() != o.targets().count() || o.pending().next().is_some())
            .count() as u32;
        let live = |id: HostId| hosts.iter().any(|h| h.id == id.0);
        let replicas_min = view
            .owners
            .iter()
            .map(|o| o.replicas().filter(|&r| live(r)).count() as u8)
            .min()
            .unwrap_or(0);
        Response::Map(MapInfo {
            epoch: view.epoch,
            hosts,
            primaries,
            moving,
            replicas_min,
        })
    }

    /// Relays a client's request frame to the primary host; the answer fills `seq`.
    #[allow(clippy::too_many_arguments)]
    pub fn relay(
        &mut self,
        conns: &mut Conns,
        core: &mut Core,
        host: HostId,
        slot: u32,
        generation: u32,
        seq: u64,
        id: u32,
        frame: &[u8],
    ) {
        core.metrics.relayed_requests += 1;
        let sent = self.link_send(
            conns,
            core,
            host,
            LinkClass::Relay,
            Expect::Relay {
                slot,
                generation,
                seq,
                id,
            },
            |b, link_id| append_relabelled(b, frame, link_id),
        );
        if !sent {
            let epoch = self.data.view.as_ref().map_or(0, |v| v.epoch);
            let mut bytes = Vec::new();
            VecSink(&mut bytes).error(id, ErrorCode::NotPrimary, epoch);
            conns.fill_slot(slot, generation, seq, 0, bytes, &core.cfg);
        }
    }

    /// Sends `msg`, a notice no answer is waited for, to every copy of `partition` but this
    /// host; returns the hosts it could not be queued for (no link).
    fn notify_copies(
        &mut self,
        conns: &mut Conns,
        core: &mut Core,
        view: &View,
        partition: u32,
        msg: &Request,
    ) -> Vec<HostId> {
        let mut unsent = Vec::new();
        for host in view.owners[partition as usize].copies() {
            if host == view.me {
                continue;
            }
            let sent = self.link_send(
                conns,
                core,
                host,
                LinkClass::Data,
                Expect::Notice,
                |b, id| {
                    encode_with_value(b, id, msg, None);
                },
            );
            if !sent {
                unsent.push(host);
            }
        }
        unsent
    }

    /// Tells the replicas of each partition a namespace clear emptied here (see
    /// `Core::cleared`). Called right after the clear ran, before any later change of the
    /// partition is replicated, so the copies apply it in the same order.
    pub fn send_clears(&mut self, conns: &mut Conns, core: &mut Core) {
        if core.cleared.is_empty() {
            return;
        }
        let cleared = std::mem::take(&mut core.cleared);
        let Some(view) = self.data.view.clone() else {
            return;
        };
        for (ns, partition) in cleared {
            let msg = Request::NsClearPartition {
                epoch: view.epoch,
                from: view.me.0,
                partition,
                ns,
            };
            for host in self.notify_copies(conns, core, &view, partition, &msg) {
                tracing::warn!(
                    shard = core.shard,
                    ?host,
                    partition,
                    "a namespace clear could not be sent to a replica"
                );
            }
        }
    }

    /// An answer (or a part of a store-wide request's) for a connection of this shard: fill its
    /// slot and send what is ready.
    #[allow(clippy::too_many_arguments)]
    pub fn deliver_part(
        &mut self,
        conns: &mut Conns,
        core: &mut Core,
        slot: u32,
        generation: u32,
        seq: u64,
        part: u32,
        b: Vec<u8>,
    ) {
        if conns.fill_slot(slot, generation, seq, part, b, &core.cfg) {
            self.settle(conns, core, slot);
        }
    }

    /// After a connection's state changed: send what is queued, read again if it may, and
    /// close it if it is done.
    pub fn settle(&mut self, conns: &mut Conns, core: &mut Core, slot: u32) {
        conns.flush(slot);
        conns.want_recv(slot, &core.cfg);
        self.close_if_done(conns, core, slot);
    }

    /// Frees a connection once it has nothing left to do ([`Conns::take_if_done`]); a host
    /// link's closing settles what waited on it.
    pub fn close_if_done(&mut self, conns: &mut Conns, core: &mut Core, slot: u32) {
        if let Some(mut conn) = conns.take_if_done(slot) {
            core.connections = conns.len() as u64;
            self.link_closed(conns, core, &mut conn);
        }
    }

    // ---- replication ---------------------------------------------------------------------

    /// Serves a keyed request on its owner shard, replicating a change before answering.
    /// Returns the answer now, or None when it will go to `to` after the replicas confirm.
    /// A read, or a change that changed nothing, of a partition whose changes still wait for
    /// their copies is held behind them (and fails with them) instead: answered at once it
    /// could show a change the store then loses with this host (see `cluster::data::pending`).
    ///
    /// Cost over an unreplicated write: two more table probes (version before and after),
    /// two allocations (the waiting hosts, the key copied once into the `Replicate` archive),
    /// one archive serialization per copy, and one round trip to the slowest copy; the value
    /// itself is not copied (the link sends the stored buffer).
    pub fn execute_replicated(
        &mut self,
        conns: &mut Conns,
        core: &mut Core,
        req: &ArchivedRequest,
        value: &[u8],
        id: u32,
        to: AnswerTo,
    ) -> Option<Vec<u8>> {
        let now = core.now_ms;
        let k = req.key().expect("keyed request");
        let (ns, key) = (k.ns.to_native(), k.key.as_slice());
        let h = key_hash(ns, key);
        let p = partition_of(h) as usize;
        // Every object the request may change: its key, and for RENAME and a transaction
        // the other keys it names (all in this partition: `Core::colocated` refuses others).
        let mut keys: Vec<&[u8]> = vec![key];
        match req {
            ArchivedRequest::Redis {
                op: stategrid_proto::ArchivedRedisOp::Rename { .. },
                ..
            } => keys.push(value),
            ArchivedRequest::RedisTx { keys: more, .. } => {
                keys.extend(more.iter().map(|k| k.as_slice()))
            }
            _ => {}
        }
        keys.sort_unstable();
        keys.dedup();
        let stamp_of = |store: &crate::store::Store, k: &[u8]| {
            store.stamp(KeyRef::with_hash(ns, k, key_hash(ns, k)))
        };
        let before: Vec<_> = keys.iter().map(|k| stamp_of(&core.store, k)).collect();
        let mut answer = Vec::with_capacity(128);
        core.execute(req, value, now, id, &mut VecSink(&mut answer));
        let changed: Vec<&[u8]> = if read_only(req) {
            Vec::new()
        } else {
            keys.iter()
                .zip(&before)
                .filter(|(k, b)| stamp_of(&core.store, k) != **b)
                .map(|(k, _)| *k)
                .collect()
        };
        let waiting = Waiting {
            to,
            request_id: id,
            answer,
            started: std::time::Instant::now(),
        };
        if changed.is_empty() {
            return match self.data.begin_read(p, waiting) {
                (Read::Held, _) => None,
                (Read::Now, Some(w)) => Some(w.answer),
                (Read::Refuse((code, detail)), Some(w)) => {
                    let mut b = Vec::new();
                    VecSink(&mut b).error(w.request_id, code, detail);
                    Some(b)
                }
                (_, None) => unreachable!("begin_read returns the answer unless it holds it"),
            };
        }
        let timeout = core.cfg.replication_timeout_ms;
        let now_mono = self.mono_ms();
        // Kept with the pending write, to send again if it fails (a repair).
        let objects: Objects = changed.iter().map(|&k| (ns, Box::from(k))).collect();
        let (idx, epoch, me, copies) = match self
            .data
            .begin_write(p, objects, waiting, now_mono, timeout)
        {
            (
                Begin::Replicate {
                    idx,
                    epoch,
                    me,
                    copies,
                },
                _,
            ) => (idx, epoch, me, copies),
            (Begin::Local, Some(w)) => return Some(w.answer),
            (Begin::Refuse((code, detail)), Some(w)) => {
                let mut b = Vec::new();
                VecSink(&mut b).error(w.request_id, code, detail);
                return Some(b);
            }
            (_, None) => unreachable!("begin_write returns the answer unless it waits"),
        };
        core.metrics.replicated_writes += 1;
        self.send_replicas(
            conns,
            core,
            idx,
            epoch,
            me,
            p,
            &copies,
            ns,
            changed.into_iter(),
        );
        None
    }

    /// Sends each of `keys`' current state (of partition `p`, namespace `ns`) to every one
    /// of `copies`, each expecting a confirmation of pending change `idx`: a change's first
    /// send, and a repair's resend ([`DataPlane::expire`]).
    /// Cost per object: one archive (the key copied once), no copy of the value (each link
    /// sends the stored buffer).
    #[allow(clippy::too_many_arguments)]
    fn send_replicas<'k>(
        &mut self,
        conns: &mut Conns,
        core: &mut Core,
        idx: u32,
        epoch: u64,
        me: HostId,
        p: usize,
        copies: &[HostId],
        ns: u32,
        keys: impl Iterator<Item = &'k [u8]>,
    ) {
        let now = core.now_ms;
        for key in keys {
            let kr = KeyRef::with_hash(ns, key, key_hash(ns, key));
            let state = core.store.export(kr, now);
            let msg = Request::Replicate {
                epoch,
                from: me.0,
                partition: p as u32,
                key: Key {
                    ns,
                    key: key.to_vec(),
                },
                state: state.as_ref().map(|(s, _)| *s),
            };
            for &host in copies {
                let v = state.as_ref().map(|(_, v)| v.clone());
                let sent = self.link_send(
                    conns,
                    core,
                    host,
                    LinkClass::Data,
                    Expect::Ack { pending: idx, host },
                    |b, link_id| {
                        encode_with_value(b, link_id, &msg, v);
                    },
                );
                if !sent {
                    // No address or too much in flight: this copy cannot confirm; the deadline
                    // (which sends it again) or a new map settles the change.
                    tracing::debug!(shard = core.shard, ?host, "replication not sent");
                }
            }
        }
    }

    /// Answers a write whose replicas all confirmed (or whose deadline passed), or a read
    /// held behind such writes.
    fn complete_pending(
        &mut self,
        conns: &mut Conns,
        core: &mut Core,
        mesh: &Mesh,
        c: Completed<Waiting>,
    ) {
        let w = c.answer;
        let m = &mut core.metrics;
        if !c.read {
            m.replication_ack
                .observe_us(w.started.elapsed().as_micros() as u64);
            if c.failed.is_some() {
                m.replication_failures += 1;
            }
        }
        let bytes = match c.failed {
            Some((code, detail)) => {
                let mut b = Vec::new();
                VecSink(&mut b).error(w.request_id, code, detail);
                b
            }
            None => w.answer,
        };
        self.deliver(conns, core, mesh, w.to, bytes);
    }

    pub fn deliver(
        &mut self,
        conns: &mut Conns,
        core: &mut Core,
        mesh: &Mesh,
        to: AnswerTo,
        bytes: Vec<u8>,
    ) {
        match to {
            AnswerTo::Conn {
                slot,
                generation,
                seq,
            } => self.deliver_part(conns, core, slot, generation, seq, 0, bytes),
            AnswerTo::Shard {
                origin,
                conn,
                generation,
                seq,
                part,
            } => mesh.send_to(
                origin,
                Msg::Reply {
                    conn,
                    generation,
                    seq,
                    part,
                    frame: bytes,
                },
            ),
        }
    }

    // ---- requests from other shards --------------------------------------------------------

    /// Serves a frame forwarded from another shard (or a local part of a gather); the answer
    /// is a whole frame. Costs a copy of any value read, since it crosses threads.
    pub fn execute_frame(
        &mut self,
        conns: &mut Conns,
        core: &mut Core,
        frame: &AlignedBuf,
    ) -> Vec<u8> {
        self.execute_frame_to(conns, core, frame, None)
            .expect("an answer is deferred only when a target is given")
    }

    /// As [`Hosts::execute_frame`]; a change that must be replicated first answers later, to
    /// `to` (then None is returned).
    pub fn execute_frame_to(
        &mut self,
        conns: &mut Conns,
        core: &mut Core,
        frame: &AlignedBuf,
        to: Option<AnswerTo>,
    ) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(256);
        let p = match frame::parse(frame.as_slice(), usize::MAX) {
            Ok(Some(p)) => p,
            _ => {
                codec::encode_response(
                    &mut out,
                    0,
                    &Response::Error(ErrorReply::with_message(
                        ErrorCode::Internal,
                        0,
                        "forwarded frame is not whole",
                    )),
                    &[],
                );
                return Some(out);
            }
        };
        match codec::decode_request(p.archive) {
            Ok(req) if req.is_internal() => {
                self.execute_internal(
                    core,
                    req,
                    p.value,
                    p.header.request_id,
                    &mut VecSink(&mut out),
                );
            }
            Ok(req)
                if to.is_some()
                    && req.key().is_some_and(|k| {
                        self.via_copies(
                            stategrid_proto::partition_of(stategrid_proto::key_hash(
                                k.ns.to_native(),
                                k.key.as_slice(),
                            )) as usize,
                            read_only(req),
                        )
                    }) =>
            {
                return self.execute_replicated(
                    conns,
                    core,
                    req,
                    p.value,
                    p.header.request_id,
                    to.expect("checked"),
                );
            }
            Ok(req) => {
                let now = core.now_ms;
                core.execute(
                    req,
                    p.value,
                    now,
                    p.header.request_id,
                    &mut VecSink(&mut out),
                );
            }
            Err(e) => codec::encode_response(
                &mut out,
                p.header.request_id,
                &Response::Error(ErrorReply::with_message(
                    ErrorCode::InvalidRequest,
                    0,
                    e.to_string(),
                )),
                &[],
            ),
        }
        self.send_clears(conns, core);
        Some(out)
    }

    // ---- the map as Redis Cluster sees it ----------------------------------------------------

    /// The partition map as Redis Cluster slot ranges.
    pub fn topology(&self, cfg: &crate::config::Config) -> crate::resp::commands::Topology {
        let Some(view) = &self.data.view else {
            return crate::resp::commands::Topology {
                me: 0,
                epoch: 0,
                nodes: vec![crate::resp::commands::TopoNode {
                    id: 0,
                    ip: cfg.net_interface.to_string(),
                    port: cfg.svr_port,
                }],
                ranges: vec![crate::resp::commands::SlotRange {
                    start: 0,
                    end: 16383,
                    primary: 0,
                    replicas: Vec::new(),
                }],
            };
        };
        let nodes: Vec<crate::resp::commands::TopoNode> = view
            .hosts
            .iter()
            .filter(|h| h.state != crate::cluster::HostState::Failed)
            .filter_map(|h| {
                let a = view.addr(h.id)?;
                Some(crate::resp::commands::TopoNode {
                    id: h.id.0,
                    ip: a.ip.to_string(),
                    port: a.svr_port,
                })
            })
            .collect();
        let index = |id: crate::cluster::HostId| nodes.iter().position(|n| n.id == id.0);
        let owners: Vec<(Option<usize>, Vec<usize>)> = view
            .owners
            .iter()
            .map(|o| {
                (
                    o.primary().and_then(index),
                    o.replicas().filter_map(index).collect(),
                )
            })
            .collect();
        crate::resp::commands::Topology {
            me: view.me.0,
            epoch: view.epoch,
            ranges: crate::resp::cluster::ranges_of(&owners),
            nodes,
        }
    }

    // ---- host-to-host requests (on the partition's owner shard) -------------------------

    /// Serves the host-to-host requests: changes from a primary go through the data plane
    /// machine (fence, then the store); migration pulls and ends are handled here.
    pub fn execute_internal(
        &mut self,
        core: &mut Core,
        req: &ArchivedRequest,
        value: &[u8],
        id: u32,
        sink: &mut VecSink<'_>,
    ) {
        let Some(view) = self.data.view.clone() else {
            return sink.error(id, ErrorCode::NotJoined, 0);
        };
        let now = core.now_ms;
        match req {
            ArchivedRequest::Replicate {
                epoch,
                from,
                partition,
                key,
                state,
            } => {
                let (ns, k) = (key.ns.to_native(), key.key.as_slice());
                let p = partition.to_native();
                let state = state.as_ref().map(|st| st.to_native());
                let result = self.data.on_replicate(
                    &mut core.store,
                    epoch.to_native(),
                    HostId(from.to_native()),
                    p,
                    ns,
                    k,
                    state.as_ref(),
                    value,
                    now,
                );
                if let Err((ErrorCode::InvalidRequest, actual)) = result {
                    return sink.respond(
                        id,
                        &Response::Error(ErrorReply::with_message(
                            ErrorCode::InvalidRequest,
                            0,
                            format!("key is in partition {actual}, not {p}"),
                        )),
                        &[],
                    );
                }
                if self.pulls.on_object(
                    p as u16,
                    HostId(from.to_native()),
                    result.is_ok(),
                    self.mono_ms(),
                ) {
                    // /metrics progress: an object received while this host pulls the
                    // partition (its migration stream, or a change sent to the new copy).
                    core.metrics.migrated_in_objects += 1;
                    core.metrics.migrated_in_bytes += value.len() as u64;
                }
                match result {
                    Ok(()) => sink.respond(id, &Response::Ok, &[]),
                    Err((code, detail)) => sink.error(id, code, detail),
                }
            }
            ArchivedRequest::MigratePull {
                epoch,
                to,
                partition,
            } => {
                let p = partition.to_native();
                let to = HostId(to.to_native());
                if let Err((code, detail)) = accept_pull(&view, epoch.to_native(), to, p as usize) {
                    return sink.error(id, code, detail);
                }
                // Asked again (the receiver saw no end): start over from a fresh snapshot in
                // the same place in the queue, so a long migration never sends a partition to
                // the back each time its receiver asks again. Objects still unconfirmed are
                // still counted; their confirmations arrive under the same id.
                let slots = core.store.partition_slots(p);
                if let Some(s) = self
                    .streams
                    .iter_mut()
                    .find(|s| s.to == to && s.partition == p)
                {
                    s.slots = slots;
                    s.pos = 0;
                    s.sent = 0;
                    s.failed = false;
                    return sink.respond(id, &Response::Ok, &[]);
                }
                let stream_id = self.next_stream_id;
                self.next_stream_id += 1;
                self.streams.push_back(Stream {
                    id: stream_id,
                    to,
                    partition: p,
                    slots,
                    pos: 0,
                    sent: 0,
                    unconfirmed: 0,
                    failed: false,
                });
                sink.respond(id, &Response::Ok, &[]);
            }
            ArchivedRequest::MigrateEnd {
                from,
                partition,
                objects,
                ..
            } => {
                let p = partition.to_native() as u16;
                let from = HostId(from.to_native());
                if self.pulls.on_end(p, from, self.mono_ms()) {
                    tracing::debug!(
                        shard = core.shard,
                        partition = p,
                        objects = objects.to_native(),
                        "partition received"
                    );
                    self.plane
                        .push_event(DataEvent::MigrationDone { partition: p });
                    core.metrics.migrations_done += 1;
                }
                sink.respond(id, &Response::Ok, &[]);
            }
            ArchivedRequest::ReplicateTouches {
                epoch,
                from,
                partition,
                items,
            } => {
                let items = items.iter().map(|i| Touch {
                    ns: i.ns.to_native(),
                    key: i.key.as_slice(),
                    version: i.version.to_native(),
                    expires_at_ms: i.expires_at_ms.to_native(),
                });
                match self.data.on_touches(
                    &mut core.store,
                    epoch.to_native(),
                    HostId(from.to_native()),
                    partition.to_native(),
                    items,
                    now,
                ) {
                    Ok(applied) => sink.respond(id, &Response::Count { objects: applied }, &[]),
                    Err((code, detail)) => sink.error(id, code, detail),
                }
            }
            ArchivedRequest::NsClearPartition {
                epoch,
                from,
                partition,
                ns,
            } => {
                let p = partition.to_native();
                // Fenced as `Replicate`: only the partition's primary may clear our copy.
                let from = HostId(from.to_native());
                if let Err((code, detail)) = self.data.fence(epoch.to_native(), from, p) {
                    return sink.error(id, code, detail);
                }
                let (removed, _) = core.store.ns_clear_partition(ns.to_native(), p, now);
                sink.respond(id, &Response::Count { objects: removed }, &[]);
            }
            _ => sink.error(id, ErrorCode::InvalidRequest, 0),
        }
    }

    // ---- migration -----------------------------------------------------------------------

    fn pump_pulls(&mut self, conns: &mut Conns, core: &mut Core) {
        let Some(view) = self.data.view.clone() else {
            return;
        };
        for (p, primary) in self.pulls.due(&view, self.mono_ms()) {
            let msg = Request::MigratePull {
                epoch: view.epoch,
                to: view.me.0,
                partition: p as u32,
            };
            let sent = self.link_send(
                conns,
                core,
                primary,
                LinkClass::Data,
                Expect::PullAck { partition: p },
                |b, link_id| {
                    encode_with_value(b, link_id, &msg, None);
                },
            );
            if !sent {
                self.pull_failed(p);
            }
        }
    }

    fn pull_failed(&mut self, p: u16) {
        self.pulls.refused(p, self.mono_ms());
    }

    fn pump_streams(&mut self, conns: &mut Conns, core: &mut Core) {
        let Some(view) = self.data.view.clone() else {
            return;
        };
        let now = core.now_ms;
        while let Some(s) = self.streams.front() {
            let (to, p) = (s.to, s.partition);
            if view.owners[p as usize].primary() != Some(view.me) {
                // No longer the primary: the new one serves the pull again.
                self.streams.pop_front();
                continue;
            }
            if self.link_queued_bytes(conns, to) > MIGRATE_QUEUE_BYTES_MAX {
                return;
            }
            let mut n = 0;
            while n < MIGRATE_BATCH_OBJECTS {
                let s = self.streams.front_mut().expect("front exists");
                let Some(&slot) = s.slots.get(s.pos) else {
                    break;
                };
                s.pos += 1;
                let Some(obj) = core.store.export_slot(slot, p, now) else {
                    continue;
                };
                n += 1;
                core.metrics.migrated_out_objects += 1;
                core.metrics.migrated_out_bytes += obj.value.len() as u64;
                let msg = Request::Replicate {
                    epoch: view.epoch,
                    from: view.me.0,
                    partition: p,
                    key: Key {
                        ns: obj.ns,
                        key: obj.key,
                    },
                    state: Some(obj.state),
                };
                let value = Some(obj.value);
                let id = self.streams.front().expect("front exists").id;
                if !self.link_send(
                    conns,
                    core,
                    to,
                    LinkClass::Data,
                    Expect::Stream { id },
                    |b, link_id| {
                        encode_with_value(b, link_id, &msg, value);
                    },
                ) {
                    self.streams.pop_front();
                    return;
                }
                let s = self.streams.front_mut().expect("front exists");
                s.sent += 1;
                s.unconfirmed += 1;
            }
            let s = self.streams.front_mut().expect("front exists");
            if s.pos < s.slots.len() || s.unconfirmed > 0 {
                return; // more next pass, or confirmations still to come
            }
            if s.failed {
                // Some object was refused: send the partition again, from a fresh snapshot.
                s.failed = false;
                s.pos = 0;
                s.sent = 0;
                s.slots = core.store.partition_slots(p);
                tracing::debug!(shard = core.shard, partition = p, ?to, "stream restarted");
                continue;
            }
            let msg = Request::MigrateEnd {
                epoch: view.epoch,
                from: view.me.0,
                partition: p,
                objects: s.sent,
            };
            tracing::debug!(
                shard = core.shard,
                partition = p,
                ?to,
                objects = s.sent,
                "partition sent"
            );
            self.streams.pop_front();
            self.link_send(
                conns,
                core,
                to,
                LinkClass::Data,
                Expect::Ignore,
                |b, link_id| {
                    encode_with_value(b, link_id, &msg, None);
                },
            );
        }
    }

    // ---- links ---------------------------------------------------------------------------

    fn link_queued_bytes(&self, conns: &Conns, host: HostId) -> usize {
        self.links
            .get(&(host, LinkClass::Data))
            .and_then(|&(slot, generation)| {
                conns
                    .get(slot as usize)
                    .filter(|c| c.generation == generation)
            })
            .map_or(0, |c| c.queued_bytes())
    }

    /// Queues one request on the link to `host` (opening it if needed); `encode` writes the
    /// frame with the link's request id. False when it cannot be sent.
    pub fn link_send(
        &mut self,
        conns: &mut Conns,
        core: &mut Core,
        host: HostId,
        class: LinkClass,
        expect: Expect,
        encode: impl FnOnce(&mut SendBatch, u32),
    ) -> bool {
        let slot = match self.link_slot(conns, core, host, class) {
            Some(s) => s,
            None => return false,
        };
        let id = self.next_link_id;
        self.next_link_id = self.next_link_id.wrapping_add(1).max(1);
        let conn = &mut conns[slot as usize];
        if conn.expect.len() >= LINK_INFLIGHT_MAX {
            return false;
        }
        encode(&mut conn.filling, id);
        conn.expect.push_back((id, expect));
        if !conn.connecting {
            conns.flush(slot);
        }
        true
    }

    /// The live link to `host`, opened now if there is none (unless it failed very recently).
    fn link_slot(
        &mut self,
        conns: &mut Conns,
        core: &mut Core,
        host: HostId,
        class: LinkClass,
    ) -> Option<u32> {
        let key = (host, class);
        if let Some(&(slot, generation)) = self.links.get(&key) {
            if conns.get(slot as usize).is_some_and(|c| {
                c.generation == generation && !c.close_after_flush && !c.read_closed
            }) {
                return Some(slot);
            }
            self.links.remove(&key);
        }
        let now = self.mono_ms();
        if self.link_retry_at_ms.get(&key).is_some_and(|&t| now < t) {
            return None;
        }
        if conns.draining {
            return None;
        }
        let addr = self.data.view.as_ref()?.addr(host)?.int();
        let sock = match socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::STREAM.nonblocking().cloexec(),
            Some(socket2::Protocol::TCP),
        ) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(shard = core.shard, "cannot open a socket to {addr}: {e}");
                return None;
            }
        };
        // Leave from the operator's interface, not whichever the routing table picks: peers
        // (and firewalls) see the address this host advertises, and a multi-homed host keeps
        // store traffic on the network it was given.
        let local = core.cfg.net_interface;
        if !local.is_unspecified()
            && let Err(e) = sock.bind(&std::net::SocketAddr::new(local.into(), 0).into())
        {
            tracing::warn!(
                shard = core.shard,
                "cannot bind a link to {addr} to net_interface {local}: {e}"
            );
            return None;
        }
        let _ = sock.set_tcp_nodelay(true);
        // A host cut off the network sends no reset: fail the link (and what waits on it)
        // instead of leaving relayed requests hanging until their clients give up.
        let dead = std::time::Duration::from_millis(LINK_DEAD_PEER_TIMEOUT_MS);
        let _ = sock.set_tcp_user_timeout(Some(dead));
        // And a host that died after our requests reached it (nothing unacknowledged):
        // keepalive probes notice.
        let _ = sock.set_tcp_keepalive(
            &socket2::TcpKeepalive::new()
                // The kernel counts these in whole seconds: about 3 s in all.
                .with_time(std::time::Duration::from_secs(1))
                .with_interval(std::time::Duration::from_secs(1))
                .with_retries(2),
        );
        let tls = conns
            .link_tls(addr)
            .inspect_err(|e| tracing::warn!(shard = core.shard, "link to {addr}: {e}"))
            .ok()?;
        // SAFETY: the descriptor is moved out of the socket2 wrapper, which forgets it.
        let fd = unsafe { OwnedFd::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(sock)) };
        let me = self.me();
        let slot = conns.add(fd, ConnKind::Outbound(host, class), core, me)?;
        conns[slot as usize].tls = tls;
        let peer_key = core.cfg.peer_key.clone();
        let conn = &mut conns[slot as usize];
        conn.connecting = true;
        conn.hello_done = true;
        if let Some(peer_key) = peer_key {
            // Any host holding the key may answer: a host restarted on the same address has a
            // new id, and frames for the old one are handled (or refused) as without a key.
            // What is proven is that the peer belongs to the store.
            let (init, hello) = peer::Initiator::start(&peer_key, me, None);
            conn.auth = LinkAuth::Initiator(Box::new(init), Some(hello));
        }
        let sa = Box::new(socket2::SockAddr::from(addr));
        let (ptr, len) = (sa.as_ptr() as *const libc::sockaddr, sa.len());
        conn.peer_addr = Some(sa);
        // The Hello goes first, sent as soon as the connection is up. It asks for our own
        // shard number: with equal shard counts on both hosts (the usual deployment) the
        // partitions this shard replicates and relays are the ones that shard owns there, so
        // `Replicate` frames and relayed requests arrive where they are served, without a hop.
        let id = 0;
        codec::encode_request(
            conn.filling.bytes_mut(),
            id,
            &Request::HelloShard {
                version: PROTOCOL_VERSION,
                client: format!("stategrid {} host link", env!("CARGO_PKG_VERSION")),
                shard: core.shard as u32,
            },
            &[],
        );
        conn.expect.push_back((id, Expect::Hello));
        let token = Token::new(Op::Connect, slot, conn.generation);
        let raw = conn.fd.as_raw_fd();
        let generation = conn.generation;
        // SAFETY: the address lives in the boxed connection until it is freed, which waits
        // for this completion (`connecting`).
        unsafe { conns.ring.connect(raw, ptr, len, token) };
        self.links.insert(key, (slot, generation));
        Some(slot)
    }

    pub fn on_connect(&mut self, conns: &mut Conns, core: &mut Core, c: crate::net::Completion) {
        let (slot, generation) = (c.token.slot(), c.token.generation());
        let Some(conn) = conns.conn_mut(slot, generation) else {
            return;
        };
        conn.connecting = false;
        if c.result < 0 {
            let ConnKind::Outbound(host, class) = conn.kind else {
                return;
            };
            tracing::debug!(
                shard = core.shard,
                ?host,
                "link failed: {}",
                std::io::Error::from_raw_os_error(-c.result)
            );
            let retry = self.mono_ms() + LINK_RETRY_MS;
            self.link_retry_at_ms.insert((host, class), retry);
            let conn = &mut conns[slot as usize];
            conn.filling.clear();
            conn.read_closed = true;
            conn.close_after_flush = true;
            self.close_if_done(conns, core, slot);
            return;
        }
        if let LinkAuth::Initiator(_, hello) = &mut conn.auth
            && let Some(hello) = hello.take()
            && !send_now(conn.fd.as_raw_fd(), &mut conn.tls, &hello)
        {
            return self.fail_handshake(conns, core, slot, "cannot send the handshake".into());
        }
        conns.flush(slot);
        conns.want_recv(slot, &core.cfg);
    }

    /// Advances the cluster-key handshake with the bytes at the front of the receive buffer.
    /// Returns true once the peer is proven (frames may follow in the buffer).
    pub fn link_handshake(&mut self, conns: &mut Conns, core: &mut Core, slot: u32) -> bool {
        let conn = &mut conns[slot as usize];
        let fd = conn.fd.as_raw_fd();
        let result = match &mut conn.auth {
            LinkAuth::Open | LinkAuth::Proven(_) => return true,
            LinkAuth::Initiator(init, _) => match init.on_challenge(conn.rbuf.as_slice()) {
                Ok(None) => return false,
                Ok(Some((proof, id))) => {
                    conn.rbuf.consume(peer::CHALLENGE_BYTES);
                    if send_now(fd, &mut conn.tls, &proof) {
                        conn.auth = LinkAuth::Proven(HostId(id));
                        Ok(true)
                    } else {
                        Err("cannot send the handshake proof".to_string())
                    }
                }
                Err(e) => Err(e.to_string()),
            },
            LinkAuth::Responder(resp) => {
                let mut outcome = Ok(false);
                loop {
                    match resp.on_bytes(conn.rbuf.as_slice()) {
                        Ok(peer::Step::More) => return false,
                        Ok(peer::Step::Send { used, bytes }) => {
                            conn.rbuf.consume(used);
                            if !send_now(fd, &mut conn.tls, &bytes) {
                                outcome = Err("cannot send the handshake challenge".to_string());
                                break;
                            }
                        }
                        Ok(peer::Step::Done { used, peer }) => {
                            conn.rbuf.consume(used);
                            conn.auth = LinkAuth::Proven(HostId(peer));
                            break;
                        }
                        Err(e) => {
                            outcome = Err(e.to_string());
                            break;
                        }
                    }
                }
                outcome
            }
        };
        match result {
            Ok(flush) => {
                if flush {
                    // What waited for the handshake (our Hello first) goes now.
                    conns.flush(slot);
                }
                true
            }
            Err(why) => {
                self.fail_handshake(conns, core, slot, why);
                false
            }
        }
    }

    /// Drops a connection whose peer did not prove itself, saying why and how to fix it.
    pub fn fail_handshake(&mut self, conns: &mut Conns, core: &mut Core, slot: u32, why: String) {
        let shard = core.shard;
        let conn = &mut conns[slot as usize];
        let fd = conn.fd.as_raw_fd();
        let peer = socket2::SockRef::from(&conn.fd)
            .peer_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .map_or_else(|| "?".to_string(), |a| a.to_string());
        tracing::warn!(shard, %peer, "host-to-host connection refused: {why}");
        conn.filling.clear();
        conn.read_closed = true;
        conn.close_after_flush = true;
        if let ConnKind::Outbound(host, class) = conn.kind {
            let retry = self.mono_ms() + LINK_RETRY_MS;
            self.link_retry_at_ms.insert((host, class), retry);
        }
        // SAFETY: shutdown on our own socket; pending operations complete.
        unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
        self.close_if_done(conns, core, slot);
    }

    fn close_link(&mut self, conns: &mut Conns, core: &mut Core, host: HostId) {
        for class in [LinkClass::Data, LinkClass::Relay] {
            if let Some((slot, generation)) = self.links.remove(&(host, class)) {
                if let Some(conn) = conns.conn_mut(slot, generation) {
                    conn.read_closed = true;
                    conn.close_after_flush = true;
                    // SAFETY: shutdown on our own socket; pending operations complete.
                    unsafe { libc::shutdown(conn.fd.as_raw_fd(), libc::SHUT_RDWR) };
                    self.close_if_done(conns, core, slot);
                }
            }
        }
    }

    /// A link is closing: settles what waited on it.
    fn link_closed(&mut self, conns: &mut Conns, core: &mut Core, conn: &mut Conn) {
        let ConnKind::Outbound(host, class) = conn.kind else {
            return;
        };
        if self
            .links
            .get(&(host, class))
            .is_some_and(|&(_, g)| g == conn.generation)
        {
            self.links.remove(&(host, class));
        }
        let epoch = self.data.view.as_ref().map_or(0, |v| v.epoch);
        for (_, e) in std::mem::take(&mut conn.expect) {
            match e {
                // The copy may or may not have the change: keep waiting until the map drops
                // the host or the deadline passes.
                Expect::Ack { .. } | Expect::Hello | Expect::Ignore | Expect::Notice => {}
                // The stream's host is unreachable: the receiver asks again.
                Expect::Stream { id } => self.streams.retain(|s| s.id != id),
                Expect::Relay {
                    slot,
                    generation,
                    seq,
                    id,
                } => {
                    let mut b = Vec::new();
                    VecSink(&mut b).error(id, ErrorCode::NotPrimary, epoch);
                    self.deliver_part(conns, core, slot, generation, seq, 0, b);
                }
                Expect::PullAck { partition } => self.pull_failed(partition),
                Expect::Part {
                    slot,
                    generation,
                    seq,
                    part,
                } => {
                    let b = host_unreachable(host);
                    self.deliver_part(conns, core, slot, generation, seq, part, b);
                }
            }
        }
    }

    /// Answers arriving on a link, in the order the requests went out.
    pub fn process_answers(
        &mut self,
        conns: &mut Conns,
        core: &mut Core,
        mesh: &Mesh,
        slot: u32,
        generation: u32,
    ) {
        let frame_max = core.cfg.frame_bytes_max as usize;
        let conn = &mut conns[slot as usize];
        let rbuf = std::mem::replace(&mut conn.rbuf, AlignedBuf::with_capacity(0));
        let mut pos = 0;
        let mut broken = None;
        loop {
            let bytes = &rbuf.as_slice()[pos..];
            let p = match frame::parse(bytes, frame_max) {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(e) => {
                    broken = Some(format!("bad frame: {e}"));
                    break;
                }
            };
            pos += p.frame_bytes;
            let Some(conn) = conns.conn_mut(slot, generation) else {
                break;
            };
            let Some((id, expect)) = conn.expect.pop_front() else {
                broken = Some("an answer nobody asked for".into());
                break;
            };
            if id != p.header.request_id {
                broken = Some(format!(
                    "answer {} arrived where {id} was expected",
                    p.header.request_id
                ));
                break;
            }
            let resp = match codec::decode_response(p.archive) {
                Ok(r) => r,
                Err(e) => {
                    broken = Some(format!("invalid answer: {e}"));
                    break;
                }
            };
            let error = match resp {
                stategrid_proto::ArchivedResponse::Error(e) => Some(e.to_reply()),
                _ => None,
            };
            match expect {
                Expect::Hello => {
                    if let Some(e) = error {
                        broken = Some(format!("the peer refused our hello: {e:?}"));
                        break;
                    }
                }
                Expect::Ack { pending, host } => {
                    // One confirmation of one object (a write of several objects waits for
                    // the host once per object).
                    let refused = error.as_ref().map(|e| (e.code, e.detail));
                    for c in self.data.confirm(pending, host, refused) {
                        self.complete_pending(conns, core, mesh, c);
                    }
                }
                Expect::Relay {
                    slot: to,
                    generation: g,
                    seq,
                    id,
                } => {
                    let mut answer = bytes[..p.frame_bytes].to_vec();
                    frame::set_request_id(&mut answer, id);
                    self.deliver(
                        conns,
                        core,
                        mesh,
                        AnswerTo::Conn {
                            slot: to,
                            generation: g,
                            seq,
                        },
                        answer,
                    );
                }
                Expect::PullAck { partition } => {
                    if error.is_some() {
                        self.pull_failed(partition);
                    }
                }
                Expect::Stream { id } => {
                    let shard = core.shard;
                    if let Some(s) = self.streams.iter_mut().find(|s| s.id == id) {
                        s.unconfirmed -= 1;
                        if let Some(e) = error {
                            tracing::debug!(
                                shard,
                                partition = s.partition,
                                "migration object refused: {e:?}"
                            );
                            s.failed = true;
                        }
                    }
                }
                Expect::Ignore => {
                    if let Some(e) = error {
                        tracing::debug!(shard = core.shard, "migration end refused: {e:?}");
                    }
                }
                Expect::Notice => {
                    if let Some(e) = error {
                        tracing::debug!(shard = core.shard, "notice refused: {e:?}");
                    }
                }
                Expect::Part {
                    slot: to,
                    generation: g,
                    seq,
                    part,
                } => {
                    let answer = bytes[..p.frame_bytes].to_vec();
                    self.deliver_part(conns, core, to, g, seq, part, answer);
                }
            }
        }
        let shard = core.shard;
        let Some(conn) = conns.conn_mut(slot, generation) else {
            return;
        };
        conn.rbuf = rbuf;
        conn.rbuf.consume(pos);
        if let Some(why) = broken {
            tracing::warn!(shard, "closing a host link: {why}");
            conn.read_closed = true;
            conn.close_after_flush = true;
            // SAFETY: shutdown on our own socket.
            unsafe { libc::shutdown(conn.fd.as_raw_fd(), libc::SHUT_RDWR) };
        }
    }
}

/// Encodes a request whose trailer is a stored value, without copying the value.
fn encode_with_value(
    b: &mut SendBatch,
    id: u32,
    req: &Request,
    value: Option<crate::store::Value>,
) {
    let len = value.as_ref().map_or(0, |v| v.len());
    codec::encode_head(b.bytes_mut(), id, req, len);
    if let Some(v) = value {
        b.push_value(v);
    }
}

/// Appends a client's request frame to a host link's send batch under the link's own request
/// id (the answer comes back under it and is matched to the client's). One copy of the frame.
pub fn append_relabelled(b: &mut SendBatch, frame: &[u8], link_id: u32) {
    let out = b.bytes_mut();
    let start = out.len();
    out.extend_from_slice(frame);
    frame::set_request_id(&mut out[start..], link_id);
}

#[cfg(test)]
mod tests {
    use super::*;
    use stategrid_proto::ObjectState;

    #[test]
    fn encoded_replicate_frames_decode_with_their_value() {
        let mut b = SendBatch::default();
        let req = Request::Replicate {
            epoch: 7,
            from: 3,
            partition: 5,
            key: Key {
                ns: 1,
                key: b"k".to_vec(),
            },
            state: Some(ObjectState {
                version: 9,
                created_ms: 1,
                updated_ms: 2,
                expires_at_ms: 0,
                lock_token: 0,
                lock_expires_at_ms: 0,
                timeout: Default::default(),
                evictable: true,
                kind: Default::default(),
                content_type_bytes: 0,
            }),
        };
        encode_with_value(&mut b, 42, &req, Some(std::rc::Rc::from(&b"hello"[..])));
        // Flatten the batch as sendmsg would.
        let msg = b.prepare();
        let mut flat = Vec::new();
        // SAFETY: prepare returns a msghdr pointing into the batch, valid until it changes.
        unsafe {
            for i in 0..(*msg).msg_iovlen {
                let iov = *(*msg).msg_iov.add(i);
                flat.extend_from_slice(std::slice::from_raw_parts(
                    iov.iov_base as *const u8,
                    iov.iov_len,
                ));
            }
        }
        let buf = AlignedBuf::from_slice(&flat);
        let p = frame::parse(buf.as_slice(), usize::MAX).unwrap().unwrap();
        assert_eq!(p.header.request_id, 42);
        assert_eq!(p.value, b"hello");
        let r = codec::decode_request(p.archive).unwrap();
        assert!(r.is_internal());
        assert_eq!(r.key().unwrap().key.as_slice(), b"k");
    }
}
