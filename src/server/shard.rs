//! One shard: its store, its connections, its ring, and its mailboxes from the other shards.
//!
//! Everything here runs on the shard's own pinned thread; state lives in one
//! `Rc<RefCell<Shard>>`, borrowed by one task at a time and never across an await.
//!
//! A shard is its parts, each a module with its own type; [`Shard`] only drives them (the ring
//! pass, routing each completion and message to the part it is for, housekeeping, draining):
//!
//! - `conn`: the socket and connection machinery ([`conn::Conns`]: the connection slab and
//!   the ring; accept, receive, send, close, hand-off, TLS, local connections, each
//!   connection's queue of answers in request order);
//! - `dispatch`: request dispatch ([`dispatch::Dispatch`]: a native frame becomes local
//!   execution, a hop to another shard, a relay to another host, a held, replicated or
//!   gathered request);
//! - `resp_conn`: the Redis protocol's receive loop and its glue to dispatch
//!   ([`resp_conn::RespShard`]);
//! - `hosts`: the cluster data plane's I/O ([`hosts::Hosts`]: host links, replication,
//!   answers released when copies confirm, migration pulls and streams, relays);
//! - `mesh`: the channels to the other shards and the per-pass hop batches
//!   ([`mesh::Mesh`]);
//! - `prefetch`: the key look-ahead over a pass's receives;
//! - `local`: the in-process callers' mailboxes (the HTTP data API).
//!
//! The parts borrow each other only as explicit parameters (`&mut Conns`, `&mut Core`, ...),
//! so what each step touches is visible at its call.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use glommio::channels::shared_channel::{ConnectedReceiver, ConnectedSender};
use stategrid_proto::frame;

mod conn;
mod dispatch;
mod hosts;
mod local;
mod mesh;
mod prefetch;
mod resp_conn;

use conn::{ConnKind, Conns, Received};
use dispatch::Dispatch;
use hosts::{AnswerTo, Hosts};
pub use local::{Answer, LocalAnswer, LocalConn, LocalError, Mailbox};
use mesh::Mesh;
use resp_conn::RespShard;

use super::exec::Core;
use super::{Msg, Shared};
use crate::net::{AlignedBuf, Completion, Op, Ring};

/// Slab slots the expiry sweeper visits per housekeeping tick (every `sweep_interval_ms`):
/// bounds the pause a tick adds to the shard.
const SWEEP_SLOTS_PER_TICK: usize = 4096;

pub struct Shard {
    pub core: Core,
    /// The connections and the ring (`conn`).
    conns: Conns,
    /// The cluster data plane's state and I/O (`hosts`).
    hosts: Hosts,
    /// The other shards (`mesh`).
    mesh: Mesh,
    /// Scratch of the RESP glue (`resp_conn`).
    resp: RespShard,
    shared: Arc<Shared>,
    completions: Vec<Completion>,
    /// Scratch of the pass's key look-ahead ([`prefetch`]).
    lookahead: prefetch::Lookahead,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Shard {
    pub fn new(
        mut core: Core,
        ring: Ring,
        listener: socket2::Socket,
        int_listener: socket2::Socket,
        plane: Arc<crate::cluster::plane::Plane>,
        shared: Arc<Shared>,
    ) -> Shard {
        let (shards, shard) = (core.shards, core.shard);
        core.now_ms = now_ms();
        Shard {
            core,
            conns: Conns::new(ring, shard, shards, shared.started, listener, int_listener),
            hosts: Hosts::new(plane),
            mesh: Mesh::new(shard, shards),
            resp: RespShard::default(),
            shared,
            completions: Vec::with_capacity(1024),
            lookahead: Default::default(),
        }
    }

    pub fn set_peer(&mut self, shard: usize, sender: ConnectedSender<Msg>) {
        self.mesh.set_peer(shard, sender);
    }

    pub fn set_resp_listener(&mut self, l: Option<socket2::Socket>) {
        self.conns.set_resp_listener(l);
    }

    /// Serves `secure_svr_port` with `listener`, accepting TLS with `tls`.
    pub fn set_secure_listener(
        &mut self,
        listener: Option<socket2::Socket>,
        tls: Option<Arc<crate::net::TlsSettings>>,
    ) {
        self.conns.set_secure_listener(listener, tls);
    }

    pub fn start_accepting(&mut self) {
        self.conns.start_accepting();
    }

    /// The parts a request's dispatch touches, borrowed for one receive or message.
    #[inline]
    fn dispatch(&mut self) -> Dispatch<'_> {
        Dispatch {
            conns: &mut self.conns,
            core: &mut self.core,
            hosts: &mut self.hosts,
            mesh: &mut self.mesh,
        }
    }

    /// Once per pass: the data plane's map, lease, commands, pulls and streams (`hosts`).
    fn cluster_pass(&mut self) {
        self.hosts
            .cluster_pass(&mut self.conns, &mut self.core, &self.mesh);
    }

    // ---- the ring driver ------------------------------------------------------------------

    /// One pass: submit, reap, handle. Returns how many completions were handled.
    fn pass(&mut self) -> usize {
        self.core.now_ms = now_ms();
        self.cluster_pass();
        if let Err(e) = self.conns.ring.enter() {
            tracing::error!(shard = self.core.shard, "io_uring enter failed: {e}");
        }
        let mut batch = std::mem::take(&mut self.completions);
        self.conns.ring.drain(&mut batch);
        // Latency for /metrics: two clock reads per pass that has work, none per request
        // (`server::metrics`, `observe_pass`).
        let started =
            (!batch.is_empty()).then(|| (std::time::Instant::now(), self.core.metrics.op_totals()));
        // Allocations while serving (parsing, executing, answering) are counted apart from
        // the runtime's: the no-allocation read path is checked against this number.
        let before = crate::alloc_count::thread_allocations();
        // Keys looked up ahead a window of receives at a time, then served (`prefetch`).
        self.serve_completions(&batch);
        // Everything this pass forwards leaves now, one message per destination shard.
        self.mesh.flush_hops();
        self.core.serve_allocations += crate::alloc_count::thread_allocations() - before;
        let n = batch.len();
        self.completions = batch;
        if n > 0 {
            // Answers from other hosts may have freed room for migration streams.
            self.cluster_pass();
        }
        // The sends and receives these completions queued reach the kernel with the next
        // pass's enter, which the driver runs at once after a pass that handled something
        // (`run`): one `io_uring_enter` per pass submits them and reaps what came meanwhile,
        // instead of one to submit and another to reap.
        if let Some((at, before)) = started {
            let us = at.elapsed().as_micros() as u64;
            self.core.metrics.observe_pass(&before, us);
        }
        n
    }

    /// Handles a pass's completions in windows: the keys a window's receives carry are looked
    /// up first (see `prefetch`), then its completions are handled in order. Order across
    /// connections does not matter; each connection's own requests keep theirs.
    fn serve_completions(&mut self, batch: &[Completion]) {
        let mut i = 0;
        while i < batch.len() {
            let window = &batch[i..];
            let end = prefetch::lookahead(&self.conns, &self.core, &mut self.lookahead, window) + i;
            debug_assert!(end > i, "a window covers at least one completion");
            for c in &batch[i..end] {
                self.on_completion(*c);
            }
            i = end;
        }
    }

    fn on_completion(&mut self, c: Completion) {
        match c.token.op() {
            Some(Op::Accept) => {
                let me = self.hosts.me();
                self.conns.on_accept(c, &mut self.core, me);
            }
            Some(Op::Recv) => self.on_recv(c),
            Some(Op::Send) => {
                if let Some((slot, settle)) = self.conns.on_send(c) {
                    if settle {
                        self.hosts.settle(&mut self.conns, &mut self.core, slot);
                    } else {
                        self.hosts
                            .close_if_done(&mut self.conns, &mut self.core, slot);
                    }
                }
            }
            Some(Op::Connect) => self.hosts.on_connect(&mut self.conns, &mut self.core, c),
            None => {}
        }
    }

    /// A receive completed: the bytes go to the connection (`conn`), then to whoever decodes
    /// them: the link handshake or a link's answers (`hosts`), RESP (`resp_conn`) or native
    /// frames (`dispatch`).
    fn on_recv(&mut self, c: Completion) {
        let (slot, generation) = (c.token.slot(), c.token.generation());
        let now = self.core.now_ms;
        match self.conns.on_recv(c) {
            Received::Done => return,
            Received::Close => {
                return self
                    .hosts
                    .close_if_done(&mut self.conns, &mut self.core, slot);
            }
            Received::Settle => {
                return self.hosts.settle(&mut self.conns, &mut self.core, slot);
            }
            Received::FailLink(why) => {
                return self
                    .hosts
                    .fail_handshake(&mut self.conns, &mut self.core, slot, why);
            }
            Received::Bytes => {}
        }
        if self.conns[slot as usize].denied {
            self.conns.deny(slot, now);
            return self
                .hosts
                .close_if_done(&mut self.conns, &mut self.core, slot);
        }
        let proven = !self.conns[slot as usize].auth.pending()
            || self
                .hosts
                .link_handshake(&mut self.conns, &mut self.core, slot);
        let outbound = matches!(self.conns.kind(slot), Some(ConnKind::Outbound(..)));
        if !proven || self.conns.conn_mut(slot, generation).is_none() {
            // Still proving itself (or refused): nothing is decoded yet.
        } else if outbound {
            self.hosts.process_answers(
                &mut self.conns,
                &mut self.core,
                &self.mesh,
                slot,
                generation,
            );
        } else if self.conns.detect_resp(slot, now) {
            let mut d = Dispatch {
                conns: &mut self.conns,
                core: &mut self.core,
                hosts: &mut self.hosts,
                mesh: &mut self.mesh,
            };
            self.resp.process(&mut d, slot, generation);
        } else {
            self.dispatch().process_frames(slot, generation);
            if self.conns[slot as usize].handoff.is_some() {
                return self.hand_off(slot);
            }
        }
        let recv_bytes = self.core.cfg.recv_buffer_bytes as usize;
        self.conns.after_recv(slot, generation, now, recv_bytes);
        self.hosts.settle(&mut self.conns, &mut self.core, slot);
    }

    /// Hands a connection whose `HelloShard` asked for another shard to that shard, with the
    /// bytes received after the Hello ([`Conns::take_for_hand_off`]).
    fn hand_off(&mut self, slot: u32) {
        let (to, msg) = self.conns.take_for_hand_off(slot);
        self.core.connections = self.conns.len() as u64;
        self.core.handed_off_connections += 1;
        self.mesh.send_to(to, msg);
    }

    // ---- between shards --------------------------------------------------------------------

    pub fn on_msg(&mut self, msg: Msg) {
        self.core.now_ms = now_ms();
        // Requests served for another shard are timed per message as a pass's are (two clock
        // reads per batch; `observe_pass`), from taking the batch to answering it.
        let executes = matches!(msg, Msg::Forward { .. } | Msg::Hop(_));
        let started = executes.then(|| (std::time::Instant::now(), self.core.metrics.op_totals()));
        match msg {
            Msg::Forward {
                origin,
                conn,
                generation,
                seq,
                part,
                frame,
            } => {
                let to = AnswerTo::Shard {
                    origin,
                    conn,
                    generation,
                    seq,
                    part,
                };
                let (conns, core) = (&mut self.conns, &mut self.core);
                if let Some(answer) = self.hosts.execute_frame_to(conns, core, &frame, Some(to)) {
                    self.hosts.deliver(conns, core, &self.mesh, to, answer);
                }
            }
            Msg::Reply {
                conn,
                generation,
                seq,
                part,
                frame,
            } => self.dispatch().on_reply(conn, generation, seq, part, frame),
            Msg::Adopt {
                fd,
                rest,
                hello_id,
                internal,
                proven_host,
            } => self
                .dispatch()
                .adopt(fd, rest, hello_id, internal, proven_host),
            Msg::Hop(batch) => self.dispatch().serve_hops(batch),
            Msg::HopBack(batch) => self.dispatch().on_hops_back(batch),
        }
        if let Some((at, before)) = started {
            let us = at.elapsed().as_micros() as u64;
            self.core.metrics.observe_pass(&before, us);
        }
        // Requests an adopted connection forwarded leave now.
        self.mesh.flush_hops();
        // A message may have started a migration stream or a pull: drive it now, not at the
        // next ring completion (there may be none for a while).
        self.cluster_pass();
        self.conns.ring.submit();
    }

    // ---- local connections (`local`) -------------------------------------------------------

    /// The control plane's shared state (the installed map), for the management API.
    pub fn plane(&self) -> Arc<crate::cluster::plane::Plane> {
        self.hosts.plane.clone()
    }

    /// The process's shared state (every shard's published metrics), for `/metrics`.
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Opens a local connection; `Unavailable` while draining or when the shard is at
    /// `connections_per_shard_max`.
    pub fn open_local(&mut self) -> Result<(LocalConn, Rc<RefCell<Mailbox>>), LocalError> {
        self.conns.open_local(&mut self.core)
    }

    /// Serves one whole request frame (built by [`stategrid_proto::codec::encode_request`])
    /// on a local connection. The answer arrives in the connection's mailbox, now or later.
    pub fn submit_local(&mut self, c: LocalConn, frame: &AlignedBuf) -> Result<(), LocalError> {
        self.core.now_ms = now_ms();
        if self.conns.conn_mut(c.slot, c.generation).is_none() {
            return Err(LocalError::Unavailable);
        }
        let bytes = frame.as_slice();
        let p = frame::parse(bytes, usize::MAX)
            .ok()
            .flatten()
            .expect("a local caller submits one whole frame");
        debug_assert_eq!(p.frame_bytes, bytes.len(), "one frame per submit");
        self.dispatch().on_frame(
            c.slot,
            c.generation,
            p.header.request_id,
            p.archive,
            p.value,
            p.frame_bytes,
            bytes,
        );
        self.conns.flush(c.slot);
        // A request for another shard waits in a batch: send it now (no pass ends here).
        self.mesh.flush_hops();
        // A relay or a replication may have queued sends on the ring: hand them over now.
        self.conns.ring.submit();
        Ok(())
    }

    /// Sets what a local connection's caller may do (the HTTP services authenticate each
    /// request and set its user's role here; the shard's ordinary role check then applies).
    pub fn set_local_role(
        &mut self,
        c: LocalConn,
        role: Option<crate::auth::users::Role>,
        user: &str,
    ) {
        self.conns.set_local_role(c, role, user);
    }

    /// Closes a local connection when its caller is gone; an answer still due is dropped
    /// when it arrives (the slot's generation no longer matches).
    pub fn close_local(&mut self, c: LocalConn) {
        if let Some(slot) = self.conns.close_local(c) {
            self.hosts
                .close_if_done(&mut self.conns, &mut self.core, slot);
        }
    }

    // ---- housekeeping ----------------------------------------------------------------------

    /// Publishes this shard's `/metrics` counters with its current gauges (one short lock).
    fn publish_metrics(&mut self) {
        let (pending, incoming, outgoing) = self.hosts.metrics_gauges();
        let m = &mut self.core.metrics;
        m.replication_pending = pending as u64;
        m.migrations_incoming = incoming as u64;
        m.migrations_outgoing = outgoing as u64;
        m.ring = self.conns.ring.counters;
        // glommio resets these when read: accumulate.
        let ex = glommio::executor().executor_stats();
        m.executor_tasks += ex.tasks_executed();
        m.executor_scheduler_runs += ex.scheduler_runs();
        m.connections = [0; crate::server::metrics::PROTOCOLS.len()];
        for (_, c) in self.conns.iter() {
            let p = match c.kind {
                ConnKind::Client if c.resp.is_some() => 1,
                ConnKind::Client => 0,
                ConnKind::Local => 2,
                ConnKind::Internal => 3,
                ConnKind::Outbound(..) => 4,
            };
            m.connections[p] += 1;
        }
        self.shared
            .metrics
            .publish(self.core.shard, &self.core.metrics);
    }

    /// Periodic work: expire objects and close connections stuck mid-frame.
    pub fn housekeeping(&mut self) {
        self.core.now_ms = now_ms();
        let now = self.core.now_ms;
        self.core.store.sweep(now, SWEEP_SLOTS_PER_TICK);
        self.hosts.publish_counters(&self.core);
        self.publish_metrics();
        self.hosts
            .expire_pending(&mut self.conns, &mut self.core, &self.mesh);
        self.cluster_pass();
        // Nothing should be left queued between passes; if a path forgot, it leaves now.
        self.mesh.flush_hops();
        let timeout = self.core.cfg.frame_timeout_ms;
        for slot in self.conns.stuck(now, timeout) {
            self.conns.stop_stuck(slot, timeout);
            self.hosts
                .close_if_done(&mut self.conns, &mut self.core, slot);
        }
        self.conns.ring.submit();
    }

    /// Starts draining for shutdown: stop accepting, stop reading, finish what is queued.
    fn begin_drain(&mut self) {
        if self.conns.draining {
            return;
        }
        for slot in self.conns.begin_drain() {
            self.conns.stop_reading(slot);
            self.hosts
                .close_if_done(&mut self.conns, &mut self.core, slot);
        }
    }

    fn drained(&self) -> bool {
        self.conns.draining && self.conns.is_empty()
    }
}

fn finalize_stats(
    st: &mut stategrid_proto::Stats,
    cfg: &crate::config::Config,
    shards: usize,
    started: std::time::Instant,
) {
    st.version = env!("CARGO_PKG_VERSION").to_owned();
    st.shards = shards as u32;
    st.partitions = stategrid_proto::PARTITIONS;
    st.uptime_s = started.elapsed().as_secs();
    st.resident_bytes = resident_bytes();
    st.params = cfg
        .values()
        .into_iter()
        .map(|(name, value)| stategrid_proto::Param {
            name: name.to_owned(),
            value,
        })
        .collect();
}

/// Resident memory of the process, from /proc/self/statm.
pub fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf is always safe to call.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    pages * page
}

/// Runs a shard until shutdown: the ring driver, the mailboxes, and housekeeping.
pub async fn run(
    shard: Rc<RefCell<Shard>>,
    waiter: crate::net::Waiter,
    receivers: Vec<ConnectedReceiver<Msg>>,
    shared: Arc<Shared>,
) {
    let id = shard.borrow().core.shard;
    for rx in receivers {
        let s = shard.clone();
        glommio::spawn_local(async move {
            while let Some(msg) = rx.recv().await {
                s.borrow_mut().on_msg(msg);
            }
        })
        .detach();
    }
    let hk = shard.clone();
    let interval = Duration::from_millis(shard.borrow().core.cfg.sweep_interval_ms);
    let housekeeping = glommio::spawn_local(async move {
        loop {
            glommio::timer::sleep(interval).await;
            hk.borrow_mut().housekeeping();
        }
    });
    shard.borrow_mut().start_accepting();
    shard.borrow_mut().conns.ring.submit();
    let mut drain_deadline = None;
    loop {
        let handled = shard.borrow_mut().pass();
        if shared.shutdown.load(Ordering::Acquire) {
            let mut s = shard.borrow_mut();
            if drain_deadline.is_none() {
                tracing::info!(
                    shard = id,
                    connections = s.conns.len(),
                    "shutting down: finishing in-flight requests"
                );
                s.begin_drain();
                drain_deadline = Some(
                    std::time::Instant::now()
                        + Duration::from_millis(s.core.cfg.shutdown_timeout_ms),
                );
            }
            let expired = drain_deadline.is_some_and(|d| std::time::Instant::now() > d);
            if s.drained() || expired {
                if expired && !s.drained() {
                    tracing::warn!(
                        shard = id,
                        connections = s.conns.len(),
                        "shutdown_timeout_ms passed; closing remaining connections"
                    );
                }
                break;
            }
        }
        if handled == 0 {
            if shared.shutdown.load(Ordering::Acquire) {
                // Poll while draining: the waker may have fired before the drain began.
                glommio::timer::sleep(Duration::from_millis(5)).await;
            } else {
                shard.borrow_mut().core.ring_waits += 1;
                waiter.wait().await;
            }
        } else {
            glommio::yield_if_needed().await;
        }
    }
    // Other shards may still forward to us until they have drained too.
    shared.drained.fetch_add(1, Ordering::AcqRel);
    while shared.drained.load(Ordering::Acquire) < shared.shards {
        let handled = shard.borrow_mut().pass();
        if handled == 0 {
            glommio::timer::sleep(Duration::from_millis(2)).await;
        }
    }
    drop(housekeeping);
    tracing::debug!(shard = id, "stopped");
}
