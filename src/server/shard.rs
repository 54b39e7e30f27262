//! One shard: its store, its connections, its ring, and its mailboxes from the other shards.
//!
//! Everything here runs on the shard's own pinned thread; state lives in one
//! `Rc<RefCell<Shard>>`, borrowed by one task at a time and never across an await.
//!
//! A connection's answers leave in request order. A request served locally is answered at
//! once into the connection's send batch; one that another shard serves takes a slot in the
//! connection's queue, and later local answers wait behind it in the same queue.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use glommio::channels::shared_channel::{ConnectedReceiver, ConnectedSender};
use slab::Slab;
use stategrid_proto::{
    ArchivedRequest, ErrorCode, ErrorReply, FrameError, PROTOCOL_VERSION, PROTOCOL_VERSION_MIN,
    Response, codec, frame,
};

mod hosts;
mod local;
mod prefetch;
mod resp_conn;
mod tls_link;

use hosts::{AnswerTo, ConnKind, Expect, HostRoute, Hosts, LinkAuth};
pub use local::{Answer, LocalAnswer, LocalConn, LocalError, Mailbox};
use resp_conn::{RespConn, RespShard};

use super::exec::{Core, Route, Sink, VecSink};
use super::gather::{self, Gather};
use super::hop::{HopBatch, HopLanes, HopTo};
use super::{Msg, Shared};
use crate::auth::users::Role;
use crate::net::{AlignedBuf, Completion, Op, Ring, SendBatch, Token};

/// Slab slots the expiry sweeper visits per housekeeping tick (every `sweep_interval_ms`):
/// bounds the pause a tick adds to the shard.
const SWEEP_SLOTS_PER_TICK: usize = 4096;

/// The accept token slot of the `secure_svr_port` listener (0 `svr_port`, 1 `int_port`,
/// 2 `resp_port`).
const SECURE_ACCEPT_SLOT: u32 = 3;

/// A batched answer sink writing into a connection's send batch (the local hot path). A RESP
/// connection's answers are rendered as RESP instead (the second field).
struct BatchSink<'a>(&'a mut SendBatch, Option<&'a mut crate::resp::RespOut>);

impl<'a> BatchSink<'a> {
    fn of(conn: &'a mut Conn) -> BatchSink<'a> {
        BatchSink(
            &mut conn.filling,
            conn.resp.as_deref_mut().map(|r| &mut r.out),
        )
    }
}

impl Sink for BatchSink<'_> {
    fn respond(&mut self, request_id: u32, resp: &Response, values: &[crate::store::Value]) {
        if let Some(out) = self.1.as_deref_mut() {
            let v = values.first().map(crate::resp::ValRef::Stored);
            return out.render(self.0, resp, v);
        }
        let total: usize = values.iter().map(|v| v.len()).sum();
        codec::encode_head(self.0.bytes_mut(), request_id, resp, total);
        match values {
            [] => {}
            [one] => self.0.push_value(one.clone()),
            many => {
                // Several values share one padding at the end: copy them (multi-read only).
                let b = self.0.bytes_mut();
                for v in many {
                    b.extend_from_slice(v);
                }
                b.extend_from_slice(codec::value_padding(total));
            }
        }
    }
}

enum Slot {
    /// An answer that waits for an earlier one.
    Ready(Vec<u8>),
    /// Bytes already in the connection's wire form (a literal RESP reply) that wait.
    Raw(Vec<u8>),
    /// Waiting for another shard or host; holds `bytes` of request copies meanwhile
    /// (counted in [`Conn::held_bytes`]).
    Forwarded {
        bytes: u32,
    },
    Gather(Gather, u32),
}

struct Conn {
    fd: OwnedFd,
    generation: u32,
    rbuf: AlignedBuf,
    recv_inflight: bool,
    send_inflight: bool,
    sending: SendBatch,
    filling: SendBatch,
    hello_done: bool,
    /// Answers that must wait for a forwarded request; `slot_base` is the seq of the front.
    slots: VecDeque<Slot>,
    slot_base: u64,
    /// Forwarded or gathered requests not yet answered.
    waiting: u32,
    /// Bytes of this connection's requests held as copies while they wait (forwarded to
    /// other shards, relayed, deferred): reading pauses above `conn_held_bytes_max`, so a
    /// peer that pipelines large frames cannot queue unbounded copies between shards.
    held_bytes: usize,
    /// No more reading: EOF, an error, or shutdown.
    read_closed: bool,
    /// Close once everything queued is sent (after a framing error).
    close_after_flush: bool,
    /// When the partial frame at the front of `rbuf` began arriving.
    partial_since_ms: Option<u64>,
    kind: ConnKind,
    /// A link whose connect has not completed (nothing is sent before).
    connecting: bool,
    /// A link's requests awaiting answers, in order: (link request id, what it is for).
    expect: VecDeque<(u32, Expect)>,
    /// A link's peer address, kept alive for the connect SQE.
    peer_addr: Option<Box<socket2::SockAddr>>,
    /// Some when the connection speaks RESP (see `resp_conn`).
    resp: Option<Box<RespConn>>,
    /// Host-to-host connections: the cluster-key handshake (`hosts::LinkAuth`).
    auth: LinkAuth,
    /// Set by a `HelloShard` that asked for another shard: (that shard, the Hello's request
    /// id). Reading stops; the receive completion hands the socket over ([`Shard::hand_off`]).
    handoff: Option<(usize, u32)>,
    /// A local connection's caller ([`local`]): answers go here instead of a socket.
    local: Option<Rc<RefCell<local::Mailbox>>>,
    /// Some on `secure_svr_port`: the TLS record layer between the socket and `rbuf` /
    /// `filling` (see `crate::net::tls`). None costs a plaintext connection one branch per
    /// receive and per send.
    tls: Option<Box<crate::net::TlsConn>>,
    /// Emptied `Slot::Ready` buffers kept for the next answer that must wait: a naive
    /// client's local answers queue behind its hopped ones, and without these each would
    /// allocate (and free) a buffer.
    spare: Vec<Vec<u8>>,
    /// What this client may do (`auth::users`): None until a successful `Auth` when the
    /// server has client credentials; admin otherwise (and for hosts and local callers,
    /// which are checked where they come in). Checked per request with one comparison.
    role: Option<Role>,
    /// The user `Auth` proved (for error messages).
    user: Option<Box<str>>,
    /// Protected mode refused this client (not on loopback, no credentials configured): its
    /// first bytes are answered with why, in its protocol, and it is closed.
    denied: bool,
}

/// Spare answer buffers a connection keeps ([`Conn::spare`]), and the largest one kept.
const SPARE_ANSWER_BUFFERS_MAX: usize = 32;
const SPARE_ANSWER_BUFFER_BYTES_MAX: usize = 64 << 10;

impl Conn {
    /// A buffer for an answer that must wait in the queue (reused when one is spare).
    fn answer_buf(&mut self) -> Vec<u8> {
        self.spare.pop().unwrap_or_default()
    }

    /// Moves a queued answer into the send batch, keeping its buffer for reuse.
    fn send_answer(&mut self, mut bytes: Vec<u8>) {
        self.write_answer(&bytes);
        if self.spare.len() < SPARE_ANSWER_BUFFERS_MAX
            && bytes.capacity() <= SPARE_ANSWER_BUFFER_BYTES_MAX
        {
            bytes.clear();
            self.spare.push(bytes);
        }
    }

    /// Appends a whole native answer frame to the send batch (rendered as RESP for a RESP
    /// connection). One copy of the answer.
    fn write_answer(&mut self, bytes: &[u8]) {
        match self.resp.as_deref_mut() {
            Some(r) => resp_conn::render_native(&mut r.out, &mut self.filling, bytes),
            None => self.filling.bytes_mut().extend_from_slice(bytes),
        }
    }

    fn queued_bytes(&self) -> usize {
        self.sending.queued_bytes()
            + self.filling.queued_bytes()
            + self.tls.as_ref().map_or(0, |t| t.wire_bytes())
    }

    /// Has the peer done what lets it send full-size frames? A client after `Hello`; another
    /// host after `Hello` on `int_port`; our own links always (we chose whom to dial).
    fn trusted(&self) -> bool {
        matches!(self.kind, ConnKind::Outbound(..)) || (self.hello_done && self.role.is_some())
    }

    /// The largest frame this connection may send now: `unauth_frame_bytes_max` until it is
    /// trusted, so a peer that has proven nothing cannot make the shard buffer much.
    fn frame_max(&self, cfg: &crate::config::Config) -> usize {
        if self.trusted() {
            cfg.frame_bytes_max as usize
        } else {
            cfg.unauth_frame_bytes_max as usize
        }
    }
}

pub struct Shard {
    pub core: Core,
    ring: Ring,
    listener: Option<socket2::Socket>,
    conns: Slab<Box<Conn>>,
    next_generation: u32,
    peers: Vec<Option<Rc<ConnectedSender<Msg>>>>,
    /// Messages that found a peer's channel full, in order; drained by a task per peer.
    outbox: Vec<Rc<RefCell<VecDeque<Msg>>>>,
    shared: Arc<Shared>,
    pub now_ms: u64,
    draining: bool,
    completions: Vec<Completion>,
    hosts: Hosts,
    resp: RespShard,
    /// `secure_svr_port`: its listener and the certificate its connections are accepted with.
    secure_listener: Option<socket2::Socket>,
    tls: Option<Arc<crate::net::TlsSettings>>,
    /// Requests queued for other shards during this pass, sent once per destination at its
    /// end ([`super::hop`]), and the pool of batches that came back.
    hops: HopLanes,
    /// Connections that got answers from a returned batch (reused scratch).
    touched: Vec<u32>,
    /// Scratch of the pass's key look-ahead ([`prefetch`]).
    lookahead: prefetch::Lookahead,
}

fn conn_kind(conns: &Slab<Box<Conn>>, slot: u32) -> Option<ConnKind> {
    conns.get(slot as usize).map(|c| c.kind)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Shard {
    pub fn new(
        core: Core,
        ring: Ring,
        listener: socket2::Socket,
        int_listener: socket2::Socket,
        plane: Arc<crate::cluster::plane::Plane>,
        shared: Arc<Shared>,
    ) -> Shard {
        let (shards, core_shard) = (core.shards, core.shard);
        Shard {
            core,
            ring,
            listener: Some(listener),
            conns: Slab::with_capacity(64),
            next_generation: 1,
            peers: (0..shards).map(|_| None).collect(),
            outbox: (0..shards)
                .map(|_| Rc::new(RefCell::new(VecDeque::new())))
                .collect(),
            shared,
            now_ms: now_ms(),
            draining: false,
            completions: Vec::with_capacity(1024),
            hosts: Hosts::new(plane, int_listener),
            resp: RespShard::default(),
            secure_listener: None,
            tls: None,
            hops: HopLanes::new(core_shard, shards),
            touched: Vec::new(),
            lookahead: Default::default(),
        }
    }

    pub fn set_peer(&mut self, shard: usize, sender: ConnectedSender<Msg>) {
        self.peers[shard] = Some(Rc::new(sender));
    }

    pub fn start_accepting(&mut self) {
        let fd = self.listener.as_ref().expect("listener").as_raw_fd();
        self.ring.accept_multi(fd, Token::new(Op::Accept, 0, 0));
        self.start_accepting_int();
        self.start_accepting_resp();
        self.start_accepting_secure();
    }

    /// Serves `secure_svr_port` with `listener`, accepting TLS with `tls`.
    pub fn set_secure_listener(
        &mut self,
        listener: Option<socket2::Socket>,
        tls: Option<Arc<crate::net::TlsSettings>>,
    ) {
        self.secure_listener = listener;
        self.tls = tls;
    }

    fn start_accepting_secure(&mut self) {
        if let Some(l) = &self.secure_listener {
            let token = Token::new(Op::Accept, SECURE_ACCEPT_SLOT, 0);
            self.ring.accept_multi(l.as_raw_fd(), token);
        }
    }

    /// A connection to `secure_svr_port`: a client connection whose bytes pass through TLS.
    fn on_accept_secure(&mut self, c: Completion) {
        if c.result >= 0 {
            // SAFETY: the kernel handed us this new descriptor.
            let fd = unsafe { OwnedFd::from_raw_fd(c.result) };
            let Some(settings) = self.tls.clone() else {
                return;
            };
            self.accept_tls(fd, ConnKind::Client, settings.server());
        } else if !self.draining && c.result != -libc::ECANCELED {
            tracing::warn!(
                shard = self.core.shard,
                "accept on secure_svr_port failed: {}",
                std::io::Error::from_raw_os_error(-c.result)
            );
        }
        if !c.more() && !self.draining {
            self.start_accepting_secure();
        }
    }

    // ---- the ring driver ------------------------------------------------------------------

    /// One pass: submit, reap, handle. Returns how many completions were handled.
    fn pass(&mut self) -> usize {
        self.now_ms = now_ms();
        self.cluster_pass();
        if let Err(e) = self.ring.enter() {
            tracing::error!(shard = self.core.shard, "io_uring enter failed: {e}");
        }
        let mut batch = std::mem::take(&mut self.completions);
        self.ring.drain(&mut batch);
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
        self.flush_hops();
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

    fn on_completion(&mut self, c: Completion) {
        match c.token.op() {
            Some(Op::Accept) => self.on_accept(c),
            Some(Op::Recv) => self.on_recv(c),
            Some(Op::Send) => self.on_send(c),
            Some(Op::Connect) => self.on_connect(c),
            None => {}
        }
    }

    fn on_accept(&mut self, c: Completion) {
        // Token slot 1: the `int_port` listener (other hosts); 0: `svr_port` (clients);
        // 2: `resp_port` (Redis clients).
        if c.token.slot() == resp_conn::RESP_ACCEPT_SLOT {
            return self.on_accept_resp(c);
        }
        if c.token.slot() == SECURE_ACCEPT_SLOT {
            return self.on_accept_secure(c);
        }
        let internal = c.token.slot() == 1;
        if c.result >= 0 {
            // SAFETY: the kernel handed us this new descriptor.
            let fd = unsafe { OwnedFd::from_raw_fd(c.result) };
            let kind = if internal {
                ConnKind::Internal
            } else {
                ConnKind::Client
            };
            let denied = !internal && crate::auth::protect::refuse_fd(&self.core.cfg, &fd);
            if let Some(config) = internal.then(|| self.int_accept_tls()).flatten() {
                // tls_cluster: another host proves its certificate before anything else.
                self.accept_tls(fd, kind, config);
            } else if let Some(slot) = self.add_conn_kind(fd, kind) {
                self.conns[slot as usize].denied = denied;
            }
        } else if !self.draining && c.result != -libc::ECANCELED {
            tracing::warn!(
                shard = self.core.shard,
                "accept failed: {}",
                std::io::Error::from_raw_os_error(-c.result)
            );
        }
        if !c.more() && !self.draining && self.listener.is_some() {
            // The multishot accept ended (an error or a full CQ): arm it again.
            if internal {
                self.start_accepting_int();
            } else {
                let fd = self.listener.as_ref().expect("listener").as_raw_fd();
                self.ring.accept_multi(fd, Token::new(Op::Accept, 0, 0));
            }
        }
    }

    /// Adds a connection and starts reading it (not a link of ours: it reads once connected);
    /// None when refused (draining, or too many).
    fn add_conn_kind(&mut self, fd: OwnedFd, kind: ConnKind) -> Option<u32> {
        let slot = self.insert_conn(fd, kind)?;
        if !matches!(kind, ConnKind::Outbound(..)) {
            self.want_recv(slot);
        }
        Some(slot)
    }

    /// Adds a connection without reading it yet; None when refused (draining, or too many).
    fn insert_conn(&mut self, fd: OwnedFd, kind: ConnKind) -> Option<u32> {
        if self.draining {
            return None;
        }
        let max = self.core.cfg.connections_per_shard_max as usize;
        if self.conns.len() >= max || self.conns.len() >= Token::SLOTS_MAX as usize {
            // Refuse with a typed error, best effort, without blocking the shard.
            let mut out = Vec::new();
            codec::encode_response(
                &mut out,
                0,
                &Response::Error(ErrorReply::new(ErrorCode::TooManyConnections, max as u64)),
                &[],
            );
            // SAFETY: plain nonblocking send on a socket we own.
            unsafe {
                libc::send(
                    fd.as_raw_fd(),
                    out.as_ptr() as *const _,
                    out.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            tracing::warn!(
                shard = self.core.shard,
                "refused a connection: connections_per_shard_max ({max}) reached"
            );
            return None;
        }
        let one: libc::c_int = 1;
        // SAFETY: setsockopt on our socket with a valid int option.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                &one as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        // Another host dialling int_port proves it holds the cluster key before anything
        // else (our own links start their side in `link_slot`).
        let auth = match (&self.core.cfg.peer_key, kind) {
            (Some(key), ConnKind::Internal) => {
                let me = self.hosts.data.view.as_ref().map_or(0, |v| v.me.0);
                LinkAuth::Responder(Box::new(crate::auth::peer::Responder::new(key, me)))
            }
            _ => LinkAuth::Open,
        };
        self.next_generation = self.next_generation.wrapping_add(1).max(1);
        let conn = Box::new(Conn {
            fd,
            generation: self.next_generation,
            rbuf: AlignedBuf::with_capacity(self.core.cfg.recv_buffer_bytes as usize),
            recv_inflight: false,
            send_inflight: false,
            sending: SendBatch::default(),
            filling: SendBatch::default(),
            hello_done: false,
            slots: VecDeque::new(),
            slot_base: 0,
            waiting: 0,
            held_bytes: 0,
            read_closed: false,
            close_after_flush: false,
            partial_since_ms: None,
            kind,
            connecting: false,
            expect: VecDeque::new(),
            peer_addr: None,
            resp: None,
            auth,
            handoff: None,
            local: None,
            tls: None,
            spare: Vec::new(),
            role: if kind == ConnKind::Client && self.core.cfg.users.is_some() {
                None
            } else {
                Some(Role::Admin)
            },
            user: None,
            denied: false,
        });
        let slot = self.conns.insert(conn) as u32;
        self.core.connections = self.conns.len() as u64;
        Some(slot)
    }

    /// Takes over a client connection another shard accepted and whose `HelloShard` asked for
    /// this shard: answers the Hello from here and serves whatever followed it. Costs one
    /// copy of the bytes that followed the Hello (usually none: clients wait for the answer).
    fn adopt(
        &mut self,
        fd: OwnedFd,
        rest: AlignedBuf,
        hello_id: u32,
        internal: bool,
        proven_host: Option<u64>,
    ) {
        let kind = if internal {
            ConnKind::Internal
        } else {
            ConnKind::Client
        };
        // Not `add_conn_kind`: the bytes already received go in before a receive is armed.
        let Some(slot) = self.insert_conn(fd, kind) else {
            return;
        };
        let generation = self.conns[slot as usize].generation;
        let resp = self.hello_ok(true);
        let conn = &mut self.conns[slot as usize];
        conn.hello_done = true;
        // The accepting shard ran the cluster-key handshake before it decoded the Hello.
        conn.auth = match proven_host {
            Some(h) => LinkAuth::Proven(crate::cluster::map::HostId(h)),
            None => LinkAuth::Open,
        };
        Sink::respond(
            &mut BatchSink(&mut conn.filling, None),
            hello_id,
            &resp,
            &[],
        );
        if !rest.is_empty() {
            conn.rbuf.reserve_total(rest.len());
            conn.rbuf.spare_mut()[..rest.len()].copy_from_slice(rest.as_slice());
            conn.rbuf.advance(rest.len());
            self.process_frames(slot, generation);
            let now = self.now_ms;
            if let Some(conn) = self.conn_mut(slot, generation)
                && !conn.rbuf.is_empty()
            {
                conn.partial_since_ms = Some(now);
            }
        }
        self.flush(slot);
        self.want_recv(slot);
        self.maybe_close(slot);
    }

    /// Hands a connection whose `HelloShard` asked for another shard to that shard, with the
    /// bytes received after the Hello. Called from the receive completion, so no receive is
    /// in flight, and before any answer was queued (the Hello is answered by the new shard).
    fn hand_off(&mut self, slot: u32) {
        let conn = self.conns.remove(slot as usize);
        self.core.connections = self.conns.len() as u64;
        self.core.handed_off_connections += 1;
        let (to, hello_id) = conn.handoff.expect("hand_off is called for a handoff");
        assert!(
            !conn.recv_inflight && !conn.send_inflight && conn.filling.is_empty(),
            "a connection is handed over only before anything is in flight or answered"
        );
        let internal = conn.kind == ConnKind::Internal;
        assert!(
            !conn.auth.pending(),
            "a host connection is handed over only after its handshake"
        );
        let proven_host = match conn.auth {
            LinkAuth::Proven(h) => Some(h.0),
            _ => None,
        };
        let Conn { fd, rbuf, .. } = *conn;
        self.send_to(
            to,
            Msg::Adopt {
                fd,
                rest: rbuf,
                hello_id,
                internal,
                proven_host,
            },
        );
    }

    fn conn_mut(&mut self, slot: u32, generation: u32) -> Option<&mut Conn> {
        self.conns
            .get_mut(slot as usize)
            .filter(|c| c.generation == generation)
            .map(|c| &mut **c)
    }

    /// Arms a receive if the connection wants one and is not held back.
    fn want_recv(&mut self, slot: u32) {
        let cfg = &self.core.cfg;
        let out_max = cfg.conn_out_bytes_max as usize;
        let held_max = cfg.conn_held_bytes_max as usize;
        let draining = self.draining;
        let Some(conn) = self.conns.get_mut(slot as usize) else {
            return;
        };
        if conn.recv_inflight
            || conn.kind == ConnKind::Local
            || conn.read_closed
            || conn.close_after_flush
            || conn.connecting
            || (draining && !matches!(conn.kind, ConnKind::Outbound(..)))
        {
            return;
        }
        // Backpressure: a client that does not read its answers stops being read, and so does
        // one whose waiting requests hold too many bytes of copies (forwarded, relayed).
        if conn.queued_bytes() > out_max || conn.held_bytes > held_max {
            return;
        }
        // The receive buffer grows with the bytes that actually arrived, never to the length a
        // header (or a RESP bulk length) claims: a full buffer doubles, capped at what the
        // partial frame or command at its front needs. A peer that announces a huge frame and
        // sends nothing costs one initial buffer; a real large frame costs about
        // log2(frame / recv_buffer_bytes) regrowths and, in all, about one extra copy of itself.
        let token = Token::new(Op::Recv, slot, conn.generation);
        let fd = conn.fd.as_raw_fd();
        if let Some(tls) = conn.tls.as_deref_mut() {
            // Ciphertext goes to the TLS buffer; `rbuf` grows as records are decrypted.
            let Some(spare) = tls.recv_buf() else {
                tracing::debug!(
                    shard = self.core.shard,
                    "closing a TLS connection: {}",
                    crate::net::TlsError::TooLarge
                );
                conn.read_closed = true;
                conn.close_after_flush = true;
                return self.maybe_close(slot);
            };
            let (ptr, len) = (spare.as_mut_ptr(), spare.len() as u32);
            conn.recv_inflight = true;
            // SAFETY: the buffer belongs to the boxed TLS state of the boxed connection; it
            // is not resized or freed while `recv_inflight` is set.
            unsafe { self.ring.recv(fd, ptr, len, token) };
            return;
        }
        let frame_max = conn.frame_max(cfg);
        if conn.rbuf.len() == conn.rbuf.capacity() {
            let cap = conn.rbuf.capacity();
            let need = match &conn.resp {
                Some(r) => r.need,
                None => frame::needed_bytes(conn.rbuf.as_slice(), frame_max)
                    .unwrap_or(frame::HEADER_BYTES),
            };
            let target = if need > cap {
                need.min(cap.saturating_mul(2).max(4096))
            } else {
                cap + 4096
            };
            conn.rbuf.reserve_total(target);
        }
        let spare = conn.rbuf.spare_mut();
        let (ptr, len) = (
            spare.as_mut_ptr(),
            spare.len().min(u32::MAX as usize) as u32,
        );
        conn.recv_inflight = true;
        // SAFETY: the buffer belongs to the boxed connection, which is not freed and whose
        // buffer is not resized while `recv_inflight` is set.
        unsafe { self.ring.recv(fd, ptr, len, token) };
    }

    fn on_recv(&mut self, c: Completion) {
        let (slot, generation) = (c.token.slot(), c.token.generation());
        let now = self.now_ms;
        let Some(conn) = self.conn_mut(slot, generation) else {
            return;
        };
        conn.recv_inflight = false;
        if c.result <= 0 {
            // 0: the peer closed its side; < 0: reset or error. Either way no more requests.
            conn.read_closed = true;
            self.maybe_close(slot);
            return;
        }
        let shard = self.core.shard;
        let Some(conn) = self.conn_mut(slot, generation) else {
            return;
        };
        if let Some(tls) = conn.tls.as_deref_mut() {
            tls.received(c.result as usize);
            // A host link's answers wait for the cluster-key handshake (run inside TLS).
            let app_out = (!conn.auth.pending()).then_some(&mut conn.filling);
            if let Err(e) = tls.pump(&mut conn.rbuf, app_out) {
                if conn.kind != ConnKind::Client {
                    // A host link (tls_cluster): say why and how to fix it, retry later.
                    return self
                        .fail_handshake(slot, format!("{e}. {}", crate::net::tls_cluster::HOWTO));
                }
                // Not TLS (plaintext on the TLS port), a refused certificate, a bad record:
                // close; the other connections never notice.
                tracing::debug!(shard, "closing a TLS connection: {e}");
                conn.read_closed = true;
                conn.close_after_flush = true;
                // Answers still to come are dropped as they arrive (see `flush`).
                conn.filling.clear();
                self.flush(slot);
                return self.maybe_close(slot);
            }
            if tls.peer_closed() {
                conn.read_closed = true;
            }
            if !tls.established() {
                // Still in the handshake: nothing to decode; answer it.
                self.flush(slot);
                self.want_recv(slot);
                return self.maybe_close(slot);
            }
        } else {
            conn.rbuf.advance(c.result as usize);
        }
        if conn.denied {
            return self.deny(slot);
        }
        let proven = !conn.auth.pending() || self.link_handshake(slot);
        let outbound = matches!(conn_kind(&self.conns, slot), Some(ConnKind::Outbound(..)));
        if !proven || self.conn_mut(slot, generation).is_none() {
            // Still proving itself (or refused): nothing is decoded yet.
        } else if outbound {
            self.process_answers(slot, generation);
        } else if self.detect_resp(slot) {
            self.process_resp(slot, generation);
        } else {
            self.process_frames(slot, generation);
            if self.conns[slot as usize].handoff.is_some() {
                return self.hand_off(slot);
            }
        }
        let recv_bytes = self.core.cfg.recv_buffer_bytes as usize;
        let Some(conn) = self.conn_mut(slot, generation) else {
            return;
        };
        conn.partial_since_ms = if conn.rbuf.is_empty() {
            None
        } else {
            Some(conn.partial_since_ms.unwrap_or(now))
        };
        if conn.tls.as_ref().is_some_and(|t| t.has_partial()) {
            // Half a TLS record is half a frame too.
            conn.partial_since_ms = Some(conn.partial_since_ms.unwrap_or(now));
        }
        conn.rbuf.shrink_to(recv_bytes);
        self.flush(slot);
        self.want_recv(slot);
        self.maybe_close(slot);
    }

    /// Serves every whole frame in the connection's receive buffer.
    ///
    /// HOT PATH. What one request costs here, for a key this shard owns:
    /// - syscalls: none of its own. The recv that brought it and the sendmsg that answers it
    ///   are shared by every request of the batch (one each per connection per pass), and one
    ///   `io_uring_enter` submits and reaps the whole pass.
    /// - copies: a write copies its value once (receive buffer -> new store allocation); a
    ///   read copies nothing in user space (the stored buffer is handed to sendmsg); the
    ///   metadata archive is serialized into the reused send buffer.
    /// - allocations: a read none; a write one (the value, plus the key when the object is new).
    /// - work: frame parse, archive validation (bytecheck), one xxh3 hash, one table probe.
    ///
    /// Known mistakes to avoid here: logging per request, allocating per request, touching
    /// another connection's state.
    fn process_frames(&mut self, slot: u32, generation: u32) {
        let conn = self.conns.get_mut(slot as usize).expect("live connection");
        let mut frame_max = conn.frame_max(&self.core.cfg);
        // Take the buffer out so requests can borrow it while the shard is borrowed mutably.
        // The pass looked up this buffer's keys already (`prefetch`).
        let rbuf = std::mem::replace(&mut conn.rbuf, AlignedBuf::with_capacity(0));
        let mut pos = 0usize;
        loop {
            let bytes = &rbuf.as_slice()[pos..];
            let trusted = self.conns[slot as usize].trusted();
            if trusted {
                // `Hello` may have just lifted the limit (cheap: two loads).
                frame_max = self.conns[slot as usize].frame_max(&self.core.cfg);
            }
            match frame::parse(bytes, frame_max) {
                Ok(Some(p)) => {
                    pos += p.frame_bytes;
                    self.on_frame(
                        slot,
                        generation,
                        p.header.request_id,
                        p.archive,
                        p.value,
                        p.frame_bytes,
                        bytes,
                    );
                    let conn = &self.conns[slot as usize];
                    if conn.close_after_flush {
                        pos = rbuf.len();
                        break;
                    }
                    if conn.handoff.is_some() {
                        // The rest belongs to the shard this connection moves to.
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let (code, detail, id) = match e {
                        FrameError::TooLarge {
                            frame_bytes_max,
                            request_id,
                            ..
                        } => (ErrorCode::FrameTooLarge, frame_bytes_max as u64, request_id),
                        _ => (ErrorCode::BadFrame, 0, 0),
                    };
                    let e = match e {
                        FrameError::TooLarge { frame_bytes, .. } if !trusted => format!(
                            "frame of {frame_bytes} bytes before Hello (and Auth, when the server has client users) exceeds unauth_frame_bytes_max ({frame_max} bytes); send Hello and Auth first"
                        ),
                        e => e.to_string(),
                    };
                    tracing::debug!(shard = self.core.shard, "closing a connection: {e}");
                    self.respond_in_order(slot, |sink| {
                        sink.respond(
                            id,
                            &Response::Error(ErrorReply::with_message(code, detail, e)),
                            &[],
                        )
                    });
                    let conn = &mut self.conns[slot as usize];
                    conn.close_after_flush = true;
                    conn.read_closed = true;
                    pos = rbuf.len();
                    break;
                }
            }
        }
        let conn = &mut self.conns[slot as usize];
        conn.rbuf = rbuf;
        conn.rbuf.consume(pos);
    }

    /// Answers into the connection in request order: straight into the send batch when
    /// nothing earlier is pending, else into a queued slot.
    fn respond_in_order(&mut self, slot: u32, f: impl FnOnce(&mut dyn DynSink)) {
        let conn = &mut self.conns[slot as usize];
        if conn.slots.is_empty() {
            f(&mut BatchSink::of(conn));
        } else {
            let mut bytes = conn.answer_buf();
            f(&mut VecSink(&mut bytes));
            conn.slots.push_back(Slot::Ready(bytes));
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_frame(
        &mut self,
        slot: u32,
        generation: u32,
        id: u32,
        archive: &[u8],
        value: &[u8],
        frame_bytes: usize,
        frame_start: &[u8],
    ) {
        let req = match codec::decode_request(archive) {
            Ok(r) => r,
            Err(e) => {
                return self.respond_in_order(slot, |s| {
                    s.respond(
                        id,
                        &Response::Error(ErrorReply::with_message(
                            ErrorCode::InvalidRequest,
                            0,
                            e.to_string(),
                        )),
                        &[],
                    )
                });
            }
        };
        let conn = &mut self.conns[slot as usize];
        if !conn.hello_done {
            return self.hello(slot, id, req);
        }
        // Authentication and roles: one comparison per request for an admin connection
        // (every connection when no credentials are configured).
        if (conn.role != Some(Role::Admin) || matches!(req, ArchivedRequest::Auth { .. }))
            && !self.gate(slot, id, req)
        {
            return;
        }
        if !req.carries_value() && !value.is_empty() {
            return self.respond_in_order(slot, |s| {
                s.respond(
                    id,
                    &Response::Error(ErrorReply::with_message(
                        ErrorCode::InvalidRequest,
                        0,
                        format!(
                            "{} carries no value, yet the frame has {} value bytes",
                            req.name(),
                            value.len()
                        ),
                    )),
                    &[],
                )
            });
        }
        if req.carries_value()
            && value.len() as u64 > self.core.cfg.object_bytes_max
            && !matches!(req, ArchivedRequest::BulkPut { .. })
        {
            let max = self.core.cfg.object_bytes_max;
            return self.respond_in_order(slot, |s| s.error(id, ErrorCode::ObjectTooLarge, max));
        }
        let internal = self.conns[slot as usize].kind == ConnKind::Internal;
        if let LinkAuth::Proven(host) = self.conns[slot as usize].auth
            && let Some(why) = hosts::sender_mismatch(req, host)
        {
            tracing::warn!(
                shard = self.core.shard,
                "refused a host-to-host request: {why}"
            );
            return self.respond_in_order(slot, |s| {
                s.respond(
                    id,
                    &Response::Error(ErrorReply::with_message(ErrorCode::Forbidden, 0, why)),
                    &[],
                )
            });
        }
        if req.is_internal() && !internal {
            return self.respond_in_order(slot, |s| {
                s.respond(
                    id,
                    &Response::Error(ErrorReply::with_message(
                        ErrorCode::Forbidden,
                        0,
                        format!(
                            "{} is a host-to-host request; send it to int_port",
                            req.name()
                        ),
                    )),
                    &[],
                )
            });
        }
        if matches!(req, ArchivedRequest::GetMap) {
            let resp = self.map_response();
            return self.respond_in_order(slot, |s| s.respond(id, &resp, &[]));
        }
        if let Some(why) = self.multi_host_refusal(req) {
            return self.respond_in_order(slot, |s| {
                s.respond(
                    id,
                    &Response::Error(ErrorReply::with_message(ErrorCode::Unsupported, 0, why)),
                    &[],
                )
            });
        }
        // The host that serves a keyed request: this one, or the partition's primary.
        let (mut partition, mut hash) = (None, None);
        if let (Some(k), false) = (req.key(), req.is_internal()) {
            let h = stategrid_proto::key_hash(k.ns.to_native(), k.key.as_slice());
            let p = stategrid_proto::partition_of(h) as usize;
            (partition, hash) = (Some(p), Some(h));
            match self.host_route(p, internal) {
                HostRoute::Here => {}
                HostRoute::Remote(host) => {
                    let Some(seq) = self.reserve(
                        slot,
                        id,
                        Slot::Forwarded {
                            bytes: frame_bytes as u32,
                        },
                    ) else {
                        return;
                    };
                    return self.relay(
                        host,
                        slot,
                        generation,
                        seq,
                        id,
                        &frame_start[..frame_bytes],
                    );
                }
                HostRoute::Wait => {
                    let Some(seq) = self.reserve(
                        slot,
                        id,
                        Slot::Forwarded {
                            bytes: frame_bytes as u32,
                        },
                    ) else {
                        return;
                    };
                    return self.defer(
                        p,
                        internal,
                        slot,
                        generation,
                        seq,
                        id,
                        &frame_start[..frame_bytes],
                    );
                }
                HostRoute::Refuse(code, detail) => {
                    return self.respond_in_order(slot, |s| s.error(id, code, detail));
                }
            }
        }
        // Requests answered from parts (counts, clears and whole listings: every shard's and,
        // on a store of several hosts, every host's part), and store-wide listing pages.
        let frame = &frame_start[..frame_bytes];
        if self.gather_hosts(req, slot, generation, id, frame, internal)
            || (!internal && self.relay_listing(req, slot, generation, id))
        {
            return;
        }
        let (me, shards) = (self.core.shard, self.core.shards);
        let route = match (req, partition) {
            (ArchivedRequest::Stats, _) => Route::All,
            // The key was hashed for the host route above: not again.
            (_, Some(p)) => super::exec::partition_route(p as u32, me, shards),
            _ => super::exec::route(req, me, shards),
        };
        match route {
            Route::Local if req.is_internal() => {
                let mut bytes = Vec::new();
                self.execute_internal(req, value, id, &mut VecSink(&mut bytes));
                self.push_answer(slot, bytes);
            }
            Route::Local
                if partition.is_some_and(|p| self.hosts.via_copies(p, hosts::read_only(req))) =>
            {
                let Some(seq) = self.reserve(
                    slot,
                    id,
                    Slot::Forwarded {
                        bytes: frame_bytes as u32,
                    },
                ) else {
                    return;
                };
                let to = AnswerTo::Conn {
                    slot,
                    generation,
                    seq,
                };
                if let Some(answer) = self.execute_replicated(req, value, id, to) {
                    self.fill_slot(slot, generation, seq, 0, answer);
                }
            }
            Route::Local => {
                // The key was hashed once, above; the store probes with that hash.
                let now = self.now_ms;
                let core = &mut self.core;
                let conn = &mut self.conns[slot as usize];
                if conn.slots.is_empty() {
                    core.execute_with_hash(req, hash, value, now, id, &mut BatchSink::of(conn));
                } else {
                    let mut bytes = conn.answer_buf();
                    core.execute_with_hash(req, hash, value, now, id, &mut VecSink(&mut bytes));
                    conn.slots.push_back(Slot::Ready(bytes));
                }
                self.send_clears();
            }
            Route::Shard(to) => {
                let Some(seq) = self.reserve(
                    slot,
                    id,
                    Slot::Forwarded {
                        bytes: frame_bytes as u32,
                    },
                ) else {
                    return;
                };
                self.core.forwarded_requests += 1;
                // Batched: sent with every other request for `to` at the end of the pass.
                // The archive was validated above and the key hashed: the owner does neither
                // again. Without a key (a listing, a namespace), the owner validates.
                let dest = HopTo {
                    conn: slot,
                    generation,
                    seq,
                    part: 0,
                };
                self.queue_hop(to, dest, &frame_start[..frame_bytes], hash);
            }
            Route::All => {
                let kind = match req {
                    ArchivedRequest::NsList => gather::Kind::NsList,
                    ArchivedRequest::Stats => gather::Kind::Stats,
                    _ => gather::Kind::Sum,
                };
                let g = Gather {
                    kind,
                    request_id: id,
                    parts: (0..shards).map(|_| None).collect(),
                    indexes: Vec::new(),
                    items: 0,
                    remaining: shards,
                };
                let Some(seq) = self.reserve(slot, id, Slot::Gather(g, frame_bytes as u32)) else {
                    return;
                };
                for s in 0..shards {
                    let frame = &frame_start[..frame_bytes];
                    self.dispatch_part(s, slot, generation, seq, s as u32, frame);
                }
            }
            Route::Split => {
                let parts = super::exec::split(req, value, shards);
                if parts.is_empty() {
                    // Inconsistent item sizes: the local pass explains the error.
                    let mut bytes = Vec::new();
                    let now = self.now_ms;
                    self.core
                        .execute(req, value, now, id, &mut VecSink(&mut bytes));
                    return self.push_answer(slot, bytes);
                }
                let items = match req {
                    ArchivedRequest::MultiRead { keys, .. } => keys.len(),
                    ArchivedRequest::BulkPut { items, .. } => items.len(),
                    _ => 0,
                };
                let max = self.core.cfg.items_per_request_max as usize;
                if items > max {
                    return self.respond_in_order(slot, |s| {
                        s.error(id, ErrorCode::TooManyItems, max as u64)
                    });
                }
                let g = Gather {
                    kind: if matches!(req, ArchivedRequest::MultiRead { .. }) {
                        gather::Kind::MultiRead
                    } else {
                        gather::Kind::BulkPut
                    },
                    request_id: id,
                    parts: (0..parts.len()).map(|_| None).collect(),
                    indexes: parts.iter().map(|(_, _, idx)| idx.clone()).collect(),
                    items,
                    remaining: parts.len(),
                };
                let Some(seq) = self.reserve(slot, id, Slot::Gather(g, frame_bytes as u32)) else {
                    return;
                };
                for (part, (s, frame, _)) in parts.into_iter().enumerate() {
                    if s != me {
                        self.core.forwarded_requests += 1;
                    }
                    self.dispatch_part(s, slot, generation, seq, part as u32, &frame);
                }
            }
        }
    }

    /// Queues a whole encoded answer in request order.
    fn push_answer(&mut self, slot: u32, bytes: Vec<u8>) {
        let conn = &mut self.conns[slot as usize];
        if conn.slots.is_empty() {
            conn.write_answer(&bytes);
        } else {
            conn.slots.push_back(Slot::Ready(bytes));
        }
    }

    /// Runs one part of a gathered request here or queues it for its shard.
    fn dispatch_part(
        &mut self,
        to: usize,
        slot: u32,
        generation: u32,
        seq: u64,
        part: u32,
        frame: &[u8],
    ) {
        if to == self.core.shard {
            // Only fill the slot: this runs inside `process_frames`, which owns the receive
            // buffer right now, so no flush, receive or close may happen from here.
            let answer = self.execute_frame(&AlignedBuf::from_slice(frame));
            self.fill_slot(slot, generation, seq, part, answer);
        } else {
            let dest = HopTo {
                conn: slot,
                generation,
                seq,
                part,
            };
            // The part's archive was not validated here: the owner validates it.
            self.queue_hop(to, dest, frame, None);
        }
    }

    /// Queues a request frame for shard `to`; it leaves at the end of this pass (or now, when
    /// the batch is full). HOT PATH for a naive client: one memcpy of the frame.
    fn queue_hop(&mut self, to: usize, dest: HopTo, frame: &[u8], hash: Option<u64>) {
        if let Some(full) = self.hops.push(to, dest, frame, hash) {
            self.send_to(to, Msg::Hop(full));
        }
    }

    /// Sends every batch queued during this pass: one message per destination shard.
    fn flush_hops(&mut self) {
        if !self.hops.pending() {
            return;
        }
        for to in 0..self.core.shards {
            if let Some(b) = self.hops.take(to) {
                self.send_to(to, Msg::Hop(b));
            }
        }
    }

    /// Takes a queue slot for an answer another shard will produce; None when the
    /// connection has too many waiting (it then got TooManyInFlight).
    fn reserve(&mut self, slot: u32, id: u32, s: Slot) -> Option<u64> {
        let conn = &mut self.conns[slot as usize];
        // A link from another host carries many clients' requests, replication and migration
        // at once: its bound is the sender's (hosts::LINK_INFLIGHT_MAX), not a client's. With
        // the client limit, relayed writes failed with TooManyInFlight and migration frames
        // were refused under load.
        let max = if conn.kind == ConnKind::Internal {
            hosts::LINK_INFLIGHT_MAX as u32
        } else {
            self.core.cfg.inflight_per_conn_max
        };
        if conn.waiting >= max {
            self.respond_in_order(slot, |sink| {
                sink.error(id, ErrorCode::TooManyInFlight, max as u64)
            });
            return None;
        }
        conn.waiting += 1;
        conn.held_bytes += match &s {
            Slot::Forwarded { bytes } | Slot::Gather(_, bytes) => *bytes as usize,
            Slot::Ready(_) | Slot::Raw(_) => 0,
        };
        conn.slots.push_back(s);
        Some(conn.slot_base + conn.slots.len() as u64 - 1)
    }

    /// Authentication and role check for a connection that is not (yet) admin, or sends
    /// `Auth`: answers `Auth` itself, refuses what the connection may not do. True when the
    /// request goes on.
    fn gate(&mut self, slot: u32, id: u32, req: &ArchivedRequest) -> bool {
        let conn = &self.conns[slot as usize];
        if let ArchivedRequest::Auth { user, password } = req {
            let user = user.as_ref().map(|u| u.as_str());
            let resp = match &self.core.cfg.users {
                // No credentials configured: every client is admin already.
                None => Response::Ok,
                Some(users) => match users.verify(user.map(str::as_bytes), password.as_bytes()) {
                    Ok(role) => {
                        let conn = &mut self.conns[slot as usize];
                        conn.role = Some(role);
                        conn.user = Some(user.unwrap_or("default").into());
                        Response::Ok
                    }
                    Err(e) => {
                        // At most auth_checks_per_s_max a second reach a check (and a log).
                        if e == crate::auth::users::AuthFail::WrongPass {
                            tracing::info!(
                                shard = self.core.shard,
                                "client authentication failed for user '{}'",
                                user.unwrap_or("default")
                            );
                        }
                        Response::Error(ErrorReply::with_message(
                            ErrorCode::AuthFailed,
                            0,
                            e.to_string(),
                        ))
                    }
                },
            };
            self.respond_in_order(slot, |s| s.respond(id, &resp, &[]));
            return false;
        }
        let need = req.role_needed();
        let have = match conn.role {
            None => 0,
            Some(Role::Read) => 1,
            Some(Role::ReadWrite) => 2,
            Some(Role::Admin) => 3,
        };
        if need <= have {
            return true;
        }
        let resp = if conn.role.is_none() {
            Response::Error(ErrorReply::new(ErrorCode::AuthRequired, 0))
        } else {
            let needed = match need {
                1 => Role::Read,
                2 => Role::ReadWrite,
                _ => Role::Admin,
            };
            Response::Error(ErrorReply::with_message(
                ErrorCode::PermissionDenied,
                need as u64,
                format!(
                    "user '{}' has role {}; {} needs {}",
                    conn.user.as_deref().unwrap_or("default"),
                    conn.role.map_or("none", |r| r.name()),
                    req.name(),
                    needed.name()
                ),
            ))
        };
        self.respond_in_order(slot, |s| s.respond(id, &resp, &[]));
        false
    }

    /// Answers a client refused by protected mode in its own protocol, then closes it.
    fn deny(&mut self, slot: u32) {
        let is_resp = self.detect_resp(slot);
        let conn = &mut self.conns[slot as usize];
        if is_resp {
            let mut out = Vec::new();
            crate::resp::reply::error(
                &mut out,
                &format!("DENIED {}", crate::auth::protect::DENIED),
            );
            conn.filling.bytes_mut().extend_from_slice(&out);
        } else {
            codec::encode_response(
                conn.filling.bytes_mut(),
                0,
                &Response::Error(ErrorReply::with_message(
                    ErrorCode::PermissionDenied,
                    0,
                    crate::auth::protect::DENIED,
                )),
                &[],
            );
        }
        conn.rbuf.consume(conn.rbuf.len());
        conn.close_after_flush = true;
        conn.read_closed = true;
        tracing::info!(
            shard = self.core.shard,
            "refused a non-loopback client: protected mode (no requirepass or users_file)"
        );
        self.flush(slot);
        self.maybe_close(slot);
    }

    /// The answer to `Hello` (`shard_aware` false) or `HelloShard` on this shard.
    fn hello_ok(&self, shard_aware: bool) -> Response {
        let (version, server) = (
            PROTOCOL_VERSION,
            format!("stategrid {}", env!("CARGO_PKG_VERSION")),
        );
        let (shards, partitions) = (self.core.shards as u32, stategrid_proto::PARTITIONS);
        if shard_aware {
            Response::HelloShardOk {
                version,
                server,
                shards,
                partitions,
                shard: self.core.shard as u32,
            }
        } else {
            Response::HelloOk {
                version,
                server,
                shards,
                partitions,
            }
        }
    }

    fn hello(&mut self, slot: u32, id: u32, req: &ArchivedRequest) {
        let (me, shards, draining) = (self.core.shard, self.core.shards, self.draining);
        let (version, asked) = match req {
            ArchivedRequest::Hello { version, .. } => (Some(version.to_native()), None),
            ArchivedRequest::HelloShard { version, shard, .. } => {
                (Some(version.to_native()), Some(shard.to_native() as usize))
            }
            _ => (None, None),
        };
        let ok = version.is_some_and(|v| (PROTOCOL_VERSION_MIN..=PROTOCOL_VERSION).contains(&v));
        if let (true, Some(to)) = (ok, asked)
            && to < shards
            && to != me
            && !draining
            && matches!(
                self.conns[slot as usize].kind,
                ConnKind::Client | ConnKind::Internal
            )
            && self.conns[slot as usize].tls.is_none()
        {
            // Served by the shard it asked for: hand the socket over once this receive's
            // frames are done (the receive completion calls `hand_off`).
            self.conns[slot as usize].handoff = Some((to, id));
            return;
        }
        // A TLS connection stays on the shard that accepted it (its session cannot move to
        // another thread mid-stream), so it answers as a shard-unaware server: the client
        // then spreads its pool without per-shard connections.
        let tls = self.conns[slot as usize].tls.is_some();
        let hello_ok = self.hello_ok(asked.is_some() && !tls);
        let conn = &mut self.conns[slot as usize];
        let resp = match version {
            Some(v) => {
                if ok {
                    conn.hello_done = true;
                    hello_ok
                } else {
                    conn.close_after_flush = true;
                    Response::Error(ErrorReply::with_message(
                        ErrorCode::UnsupportedVersion,
                        PROTOCOL_VERSION as u64,
                        format!(
                            "client speaks protocol {v}; this server speaks {PROTOCOL_VERSION_MIN} to {PROTOCOL_VERSION}"
                        ),
                    ))
                }
            }
            None => {
                conn.close_after_flush = true;
                Response::Error(ErrorReply::new(ErrorCode::HandshakeRequired, 0))
            }
        };
        Sink::respond(&mut BatchSink::of(conn), id, &resp, &[]);
    }

    /// Starts sending the filled batch if no send is in flight. One sendmsg per batch.
    fn flush(&mut self, slot: u32) {
        let Some(conn) = self.conns.get_mut(slot as usize) else {
            return;
        };
        if conn.kind == ConnKind::Local {
            return self.deliver_local(slot);
        }
        if conn.send_inflight || conn.connecting {
            return;
        }
        // Nothing of ours goes to a host that has not proven the cluster key but the
        // handshake itself (over TLS: the TLS handshake and the urgent queue).
        let held = conn.auth.pending();
        if let Some(tls) = conn.tls.as_deref_mut() {
            // Encrypt what is queued (handshake records are queued already).
            if let Err(e) = tls.pump(&mut conn.rbuf, (!held).then_some(&mut conn.filling)) {
                tracing::debug!("closing a TLS connection: {e}");
                conn.filling.clear();
                conn.read_closed = true;
                conn.close_after_flush = true;
            }
            if tls.wire_bytes() == 0 {
                return;
            }
            tls.take_wire(conn.sending.bytes_mut());
        } else if held || conn.filling.is_empty() {
            return;
        } else {
            std::mem::swap(&mut conn.sending, &mut conn.filling);
        }
        let msg = conn.sending.prepare();
        let token = Token::new(Op::Send, slot, conn.generation);
        conn.send_inflight = true;
        // SAFETY: `sending` lives in the boxed connection and is not touched until the
        // send completes (`send_inflight`); its values are kept alive by the batch.
        unsafe { self.ring.sendmsg(conn.fd.as_raw_fd(), msg, token) };
    }

    fn on_send(&mut self, c: Completion) {
        let (slot, generation) = (c.token.slot(), c.token.generation());
        let Some(conn) = self
            .conns
            .get_mut(slot as usize)
            .filter(|c| c.generation == generation)
        else {
            return;
        };
        conn.send_inflight = false;
        if c.result < 0 {
            // The peer is gone (EPIPE, ECONNRESET): drop what was queued.
            conn.sending.clear();
            conn.filling.clear();
            conn.slots.clear();
            conn.read_closed = true;
            conn.close_after_flush = true;
            self.maybe_close(slot);
            return;
        }
        if conn.sending.advance(c.result as usize) {
            conn.sending.clear();
        } else {
            // Partial send: the rest goes next.
            let msg = conn.sending.prepare();
            let token = Token::new(Op::Send, slot, conn.generation);
            conn.send_inflight = true;
            // SAFETY: as in flush.
            unsafe { self.ring.sendmsg(conn.fd.as_raw_fd(), msg, token) };
            return;
        }
        self.flush(slot);
        self.want_recv(slot);
        self.maybe_close(slot);
    }

    /// Frees a connection once it has nothing left to do.
    fn maybe_close(&mut self, slot: u32) {
        let Some(conn) = self.conns.get(slot as usize) else {
            return;
        };
        let done_reading = conn.read_closed || conn.close_after_flush || self.draining;
        let idle = !conn.send_inflight
            && !conn.connecting
            && (conn.expect.is_empty() || conn.read_closed)
            && conn.filling.is_empty()
            && conn.tls.as_ref().is_none_or(|t| t.wire_bytes() == 0)
            && conn.waiting == 0
            && conn.slots.is_empty();
        if !(done_reading && idle) {
            return;
        }
        if conn.recv_inflight {
            // Make the pending receive complete (with 0) so its buffer can be freed.
            // SAFETY: shutdown on our own socket.
            unsafe { libc::shutdown(conn.fd.as_raw_fd(), libc::SHUT_RDWR) };
            return;
        }
        let mut conn = self.conns.remove(slot as usize);
        self.core.connections = self.conns.len() as u64;
        Self::local_closed(&conn);
        self.link_closed(&mut conn);
    }

    // ---- between shards --------------------------------------------------------------------

    fn send_to(&mut self, to: usize, msg: Msg) {
        let peer = self.peers[to]
            .as_ref()
            .expect("mesh is connected before serving")
            .clone();
        let outbox = self.outbox[to].clone();
        if outbox.borrow().is_empty() {
            match peer.try_send(msg) {
                Ok(()) => return,
                Err(glommio::GlommioError::WouldBlock(glommio::ResourceType::Channel(msg))) => {
                    outbox.borrow_mut().push_back(msg)
                }
                Err(e) => {
                    // Closed: the peer shard has stopped (only during shutdown).
                    tracing::debug!(
                        shard = self.core.shard,
                        "message to stopped shard {to} dropped: {e}"
                    );
                    return;
                }
            }
            // The channel is full: keep order by draining the outbox from a task.
            glommio::spawn_local(async move {
                loop {
                    let Some(msg) = outbox.borrow_mut().pop_front() else {
                        break;
                    };
                    if peer.send(msg).await.is_err() {
                        break;
                    }
                }
            })
            .detach();
        } else {
            outbox.borrow_mut().push_back(msg);
        }
    }

    /// Serves a frame forwarded from another shard (or a local part of a gather); the answer
    /// is a whole frame. Costs a copy of any value read, since it crosses threads.
    fn execute_frame(&mut self, frame: &AlignedBuf) -> Vec<u8> {
        self.execute_frame_to(frame, None)
            .expect("an answer is deferred only when a target is given")
    }

    /// As [`Shard::execute_frame`]; a change that must be replicated first answers later, to
    /// `to` (then None is returned).
    fn execute_frame_to(&mut self, frame: &AlignedBuf, to: Option<AnswerTo>) -> Option<Vec<u8>> {
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
                self.execute_internal(req, p.value, p.header.request_id, &mut VecSink(&mut out));
            }
            Ok(req)
                if to.is_some()
                    && req.key().is_some_and(|k| {
                        self.hosts.via_copies(
                            stategrid_proto::partition_of(stategrid_proto::key_hash(
                                k.ns.to_native(),
                                k.key.as_slice(),
                            )) as usize,
                            hosts::read_only(req),
                        )
                    }) =>
            {
                return self.execute_replicated(
                    req,
                    p.value,
                    p.header.request_id,
                    to.expect("checked"),
                );
            }
            Ok(req) => {
                let now = self.now_ms;
                self.core.execute(
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
        self.send_clears();
        Some(out)
    }

    pub fn on_msg(&mut self, msg: Msg) {
        self.now_ms = now_ms();
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
                if let Some(answer) = self.execute_frame_to(&frame, Some(to)) {
                    self.deliver(to, answer);
                }
            }
            Msg::Reply {
                conn,
                generation,
                seq,
                part,
                frame,
            } => self.on_reply(conn, generation, seq, part, frame),
            Msg::Adopt {
                fd,
                rest,
                hello_id,
                internal,
                proven_host,
            } => self.adopt(fd, rest, hello_id, internal, proven_host),
            Msg::Hop(batch) => self.serve_hops(batch),
            Msg::HopBack(batch) => self.on_hops_back(batch),
        }
        if let Some((at, before)) = started {
            let us = at.elapsed().as_micros() as u64;
            self.core.metrics.observe_pass(&before, us);
        }
        // Requests an adopted connection forwarded leave now.
        self.flush_hops();
        // A message may have started a migration stream or a pull: drive it now, not at the
        // next ring completion (there may be none for a while).
        self.cluster_pass();
        self.ring.submit();
    }

    /// Serves a batch of requests another shard forwarded, in order, and sends it back with
    /// the answers. A change to a replicated partition answers later, alone (`Msg::Reply`).
    fn serve_hops(&mut self, mut batch: Box<HopBatch>) {
        let origin = batch.origin;
        let now = self.now_ms;
        batch.serve_with(|to, req, hash, value, id, out| {
            if req.is_internal() {
                self.execute_internal(req, value, id, &mut VecSink(out));
                return true;
            }
            let replicated = req.key().is_some_and(|k| {
                let h = hash.unwrap_or_else(|| {
                    stategrid_proto::key_hash(k.ns.to_native(), k.key.as_slice())
                });
                self.hosts.via_copies(
                    stategrid_proto::partition_of(h) as usize,
                    hosts::read_only(req),
                )
            });
            if replicated {
                let to = AnswerTo::Shard {
                    origin,
                    conn: to.conn,
                    generation: to.generation,
                    seq: to.seq,
                    part: to.part,
                };
                return match self.execute_replicated(req, value, id, to) {
                    Some(answer) => {
                        out.extend_from_slice(&answer);
                        true
                    }
                    None => false,
                };
            }
            self.core
                .execute_with_hash(req, hash, value, now, id, &mut VecSink(out));
            true
        });
        self.send_to(origin, Msg::HopBack(batch));
    }

    /// A batch this shard sent came back: put each answer in its connection's queue, then
    /// send each connection's answers once (one sendmsg per connection, not per answer), and
    /// keep the batch for reuse (its buffers were allocated on this thread).
    fn on_hops_back(&mut self, batch: Box<HopBatch>) {
        let mut touched = std::mem::take(&mut self.touched);
        batch.for_each_answer(|to, answer| {
            if let Some(a) = answer
                && self.fill_slot_bytes(
                    to.conn,
                    to.generation,
                    to.seq,
                    to.part,
                    std::borrow::Cow::Borrowed(a),
                )
                && touched.last() != Some(&to.conn)
            {
                touched.push(to.conn);
            }
        });
        self.hops.give_back(batch);
        for &slot in &touched {
            // A slot seen twice (not in a row) is flushed twice: harmless, both are no-ops
            // the second time.
            self.flush(slot);
            self.want_recv(slot);
            self.maybe_close(slot);
        }
        touched.clear();
        self.touched = touched;
    }

    /// An answer from another shard: fill its slot and send every answer now in order.
    fn on_reply(&mut self, slot: u32, generation: u32, seq: u64, part: u32, answer: Vec<u8>) {
        if self.fill_slot(slot, generation, seq, part, answer) {
            self.flush(slot);
            self.want_recv(slot);
            self.maybe_close(slot);
        }
    }

    /// Puts an answer in its slot and moves every ready answer at the front of the queue into
    /// the send batch. No I/O, so it is safe inside `process_frames`. Returns whether the
    /// connection still exists.
    fn fill_slot(
        &mut self,
        slot: u32,
        generation: u32,
        seq: u64,
        part: u32,
        answer: Vec<u8>,
    ) -> bool {
        self.fill_slot_bytes(slot, generation, seq, part, std::borrow::Cow::Owned(answer))
    }

    /// As [`Shard::fill_slot`], for an answer that may be borrowed (from a returned hop
    /// batch): an answer at the front of the queue goes straight into the send batch, one
    /// copy, no allocation; one behind an earlier answer still missing waits in a buffer.
    fn fill_slot_bytes(
        &mut self,
        slot: u32,
        generation: u32,
        seq: u64,
        part: u32,
        answer: std::borrow::Cow<'_, [u8]>,
    ) -> bool {
        let (shard, shards) = (self.core.shard, self.core.shards);
        // Borrowed, not cloned: an `Arc` clone per answer costs two atomic operations.
        let cfg = &self.core.cfg;
        let Some(conn) = self
            .conns
            .get_mut(slot as usize)
            .filter(|c| c.generation == generation)
        else {
            return false; // the connection closed meanwhile
        };
        let Some(idx) = seq.checked_sub(conn.slot_base).map(|i| i as usize) else {
            return true;
        };
        let Some(s) = conn.slots.get_mut(idx) else {
            return true;
        };
        match s {
            Slot::Forwarded { bytes } => {
                conn.held_bytes -= *bytes as usize;
                conn.waiting -= 1;
                if idx == 0 {
                    // Nothing earlier waits: straight into the send batch.
                    conn.slots.pop_front();
                    conn.slot_base += 1;
                    conn.write_answer(&answer);
                } else {
                    let owned = match answer {
                        std::borrow::Cow::Owned(v) => v,
                        std::borrow::Cow::Borrowed(b) => {
                            let mut v = conn.answer_buf();
                            v.extend_from_slice(b);
                            v
                        }
                    };
                    // `s` was borrowed from the queue before `answer_buf`: index again.
                    conn.slots[idx] = Slot::Ready(owned);
                }
            }
            Slot::Gather(g, bytes) => {
                g.parts[part as usize] = Some(answer.into_owned());
                g.remaining -= 1;
                if g.remaining == 0 {
                    conn.held_bytes -= *bytes as usize;
                    let Slot::Gather(g, _) = std::mem::replace(s, Slot::Forwarded { bytes: 0 })
                    else {
                        unreachable!()
                    };
                    let mut out = Vec::new();
                    let started = self.shared.started;
                    gather::finish(g, &mut out, |st| finalize_stats(st, cfg, shards, started));
                    *s = Slot::Ready(out);
                    conn.waiting -= 1;
                }
            }
            Slot::Ready(_) | Slot::Raw(_) => {
                tracing::error!(shard, "an answer arrived twice for one request");
                return true;
            }
        }
        // Move every ready answer at the front into the send batch (rendered as RESP for a
        // RESP connection: here, in request order).
        while let Some(Slot::Ready(_) | Slot::Raw(_)) = conn.slots.front() {
            conn.slot_base += 1;
            match conn.slots.pop_front() {
                Some(Slot::Ready(bytes)) => conn.send_answer(bytes),
                Some(Slot::Raw(bytes)) => conn.filling.bytes_mut().extend_from_slice(&bytes),
                _ => unreachable!(),
            }
        }
        true
    }

    // ---- housekeeping ----------------------------------------------------------------------

    /// Publishes this shard's `/metrics` counters with its current gauges (one short lock).
    fn publish_metrics(&mut self) {
        let (pending, incoming, outgoing) = self.hosts.metrics_gauges();
        let m = &mut self.core.metrics;
        m.replication_pending = pending as u64;
        m.migrations_incoming = incoming as u64;
        m.migrations_outgoing = outgoing as u64;
        m.ring = self.ring.counters;
        // glommio resets these when read: accumulate.
        let ex = glommio::executor().executor_stats();
        m.executor_tasks += ex.tasks_executed();
        m.executor_scheduler_runs += ex.scheduler_runs();
        m.connections = [0; crate::server::metrics::PROTOCOLS.len()];
        for (_, c) in &self.conns {
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
        self.now_ms = now_ms();
        let now = self.now_ms;
        self.core.store.sweep(now, SWEEP_SLOTS_PER_TICK);
        self.publish_counters();
        self.publish_metrics();
        self.expire_pending();
        self.cluster_pass();
        // Nothing should be left queued between passes; if a path forgot, it leaves now.
        self.flush_hops();
        let timeout = self.core.cfg.frame_timeout_ms;
        let stuck: Vec<u32> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                c.partial_since_ms
                    .is_some_and(|t| now.saturating_sub(t) > timeout)
            })
            .map(|(i, _)| i as u32)
            .collect();
        for slot in stuck {
            tracing::info!(
                shard = self.core.shard,
                "closing a connection that left a frame half-sent for over frame_timeout_ms ({timeout} ms)"
            );
            let conn = &mut self.conns[slot as usize];
            conn.read_closed = true;
            conn.partial_since_ms = None;
            // SAFETY: shutdown on our own socket; the pending receive completes with 0.
            unsafe { libc::shutdown(conn.fd.as_raw_fd(), libc::SHUT_RDWR) };
            self.maybe_close(slot);
        }
        self.ring.submit();
    }

    /// Starts draining for shutdown: stop accepting, stop reading, finish what is queued.
    fn begin_drain(&mut self) {
        if self.draining {
            return;
        }
        self.draining = true;
        let listeners = [
            self.listener.take(),
            self.hosts.int_listener.take(),
            self.resp.listener.take(),
            self.secure_listener.take(),
        ];
        for l in listeners.into_iter().flatten() {
            // Closing the socket alone would not end the multishot accept; shutdown does.
            // SAFETY: shutdown on our own listening socket.
            unsafe { libc::shutdown(l.as_raw_fd(), libc::SHUT_RDWR) };
        }
        let slots: Vec<u32> = self.conns.iter().map(|(i, _)| i as u32).collect();
        for slot in slots {
            let conn = &mut self.conns[slot as usize];
            if conn.recv_inflight {
                // SAFETY: as above; only the read side, so queued answers still go out.
                unsafe { libc::shutdown(conn.fd.as_raw_fd(), libc::SHUT_RD) };
            }
            conn.read_closed = true;
            self.maybe_close(slot);
        }
    }

    fn drained(&self) -> bool {
        self.draining && self.conns.is_empty()
    }
}

/// Trait-object form of [`Sink`] for closures that answer either way.
trait DynSink {
    fn respond(&mut self, request_id: u32, resp: &Response, values: &[crate::store::Value]);
    fn error(&mut self, request_id: u32, code: ErrorCode, detail: u64) {
        self.respond(
            request_id,
            &Response::Error(ErrorReply::new(code, detail)),
            &[],
        );
    }
}

impl<T: Sink> DynSink for T {
    fn respond(&mut self, request_id: u32, resp: &Response, values: &[crate::store::Value]) {
        Sink::respond(self, request_id, resp, values)
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
    shard.borrow_mut().ring.submit();
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
