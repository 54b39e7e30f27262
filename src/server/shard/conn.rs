//! The shard's socket and connection machinery: the [`Conn`] type, the connection slab and
//! the ring they share ([`Conns`]): accepting (`svr_port`, `int_port`, `resp_port`,
//! `secure_svr_port`), arming receives, sending, closing, handing a socket to another shard,
//! TLS wrapping, local (in-process) connections, and each connection's queue of answers that
//! wait for earlier ones.
//!
//! Nothing here decodes a request: what the received bytes mean is request dispatch's
//! (`dispatch`, `resp_conn`) and, on a host link, the data plane's (`hosts`). Closing a
//! connection is two steps: [`Conns::take_if_done`] frees it here, and its owner settles what
//! waited on it (a host link's expected answers: `Hosts::close_if_done`).
//!
//! A connection's answers leave in request order. A request served locally is answered at
//! once into the connection's send batch; one that another shard serves takes a slot in the
//! connection's queue, and later local answers wait behind it in the same queue.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use slab::Slab;
use stategrid_proto::{ErrorCode, ErrorReply, Response, codec, frame};

use super::hosts::{Expect, LinkAuth, LinkClass};
use super::local::{LocalConn, LocalError, Mailbox};
use super::resp_conn::{self, RespConn};
use crate::auth::users::Role;
use crate::cluster::HostId;
use crate::config::Config;
use crate::net::{AlignedBuf, Completion, Op, Ring, SendBatch, TlsConn, Token};
use crate::server::exec::{Core, Sink, VecSink};
use crate::server::gather::{self, Gather};

/// The accept token slot of each listener: 0 `svr_port`, 1 `int_port`, 2 `resp_port`, 3
/// `secure_svr_port`.
const ACCEPT_SLOT: u32 = 0;
const INT_ACCEPT_SLOT: u32 = 1;
const RESP_ACCEPT_SLOT: u32 = 2;
const SECURE_ACCEPT_SLOT: u32 = 3;

/// A batched answer sink writing into a connection's send batch (the local hot path). A RESP
/// connection's answers are rendered as RESP instead (the second field).
pub(super) struct BatchSink<'a>(
    pub &'a mut SendBatch,
    pub Option<&'a mut crate::resp::RespOut>,
);

impl<'a> BatchSink<'a> {
    pub fn of(conn: &'a mut Conn) -> BatchSink<'a> {
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

/// Trait-object form of [`Sink`] for closures that answer either way.
pub(super) trait DynSink {
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

/// What kind of peer a connection has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ConnKind {
    /// An application on `svr_port`.
    Client,
    /// Another host, connected to our `int_port`: may send host-to-host requests.
    Internal,
    /// Our link to another host's `int_port`: we send requests, it answers.
    Outbound(HostId, LinkClass),
    /// A task on this shard (the HTTP data API): no socket, answers go to its mailbox
    /// (see `local`). Served as a `Client`.
    Local,
}

pub(super) enum Slot {
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

pub(super) struct Conn {
    pub fd: OwnedFd,
    pub generation: u32,
    pub rbuf: AlignedBuf,
    pub recv_inflight: bool,
    pub send_inflight: bool,
    pub sending: SendBatch,
    pub filling: SendBatch,
    pub hello_done: bool,
    /// Answers that must wait for a forwarded request; `slot_base` is the seq of the front.
    pub slots: VecDeque<Slot>,
    pub slot_base: u64,
    /// Forwarded or gathered requests not yet answered.
    pub waiting: u32,
    /// Bytes of this connection's requests held as copies while they wait (forwarded to
    /// other shards, relayed, deferred): reading pauses above `conn_held_bytes_max`, so a
    /// peer that pipelines large frames cannot queue unbounded copies between shards.
    pub held_bytes: usize,
    /// No more reading: EOF, an error, or shutdown.
    pub read_closed: bool,
    /// Close once everything queued is sent (after a framing error).
    pub close_after_flush: bool,
    /// When the partial frame at the front of `rbuf` began arriving.
    pub partial_since_ms: Option<u64>,
    pub kind: ConnKind,
    /// A link whose connect has not completed (nothing is sent before).
    pub connecting: bool,
    /// A link's requests awaiting answers, in order: (link request id, what it is for).
    pub expect: VecDeque<(u32, Expect)>,
    /// A link's peer address, kept alive for the connect SQE.
    pub peer_addr: Option<Box<socket2::SockAddr>>,
    /// Some when the connection speaks RESP (see `resp_conn`).
    pub resp: Option<Box<RespConn>>,
    /// Host-to-host connections: the cluster-key handshake (`hosts::LinkAuth`).
    pub auth: LinkAuth,
    /// Set by a `HelloShard` that asked for another shard: (that shard, the Hello's request
    /// id). Reading stops; the receive completion hands the socket over
    /// ([`Conns::take_for_hand_off`]).
    pub handoff: Option<(usize, u32)>,
    /// A local connection's caller (`local`): answers go here instead of a socket.
    pub local: Option<Rc<RefCell<Mailbox>>>,
    /// Some on `secure_svr_port`: the TLS record layer between the socket and `rbuf` /
    /// `filling` (see `crate::net::tls`). None costs a plaintext connection one branch per
    /// receive and per send.
    pub tls: Option<Box<TlsConn>>,
    /// Emptied `Slot::Ready` buffers kept for the next answer that must wait: a naive
    /// client's local answers queue behind its hopped ones, and without these each would
    /// allocate (and free) a buffer.
    spare: Vec<Vec<u8>>,
    /// What this client may do (`auth::users`): None until a successful `Auth` when the
    /// server has client credentials; admin otherwise (and for hosts and local callers,
    /// which are checked where they come in). Checked per request with one comparison.
    pub role: Option<Role>,
    /// The user `Auth` proved (for error messages).
    pub user: Option<Box<str>>,
    /// Protected mode refused this client (not on loopback, no credentials configured): its
    /// first bytes are answered with why, in its protocol, and it is closed.
    pub denied: bool,
}

/// Spare answer buffers a connection keeps ([`Conn::spare`]), and the largest one kept.
const SPARE_ANSWER_BUFFERS_MAX: usize = 32;
const SPARE_ANSWER_BUFFER_BYTES_MAX: usize = 64 << 10;

impl Conn {
    /// A connection of `kind` on `fd`, reading nothing yet.
    fn new(fd: OwnedFd, generation: u32, kind: ConnKind, rbuf: AlignedBuf) -> Conn {
        Conn {
            fd,
            generation,
            rbuf,
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
            auth: LinkAuth::Open,
            handoff: None,
            local: None,
            tls: None,
            spare: Vec::new(),
            role: Some(Role::Admin),
            user: None,
            denied: false,
        }
    }

    /// A buffer for an answer that must wait in the queue (reused when one is spare).
    pub fn answer_buf(&mut self) -> Vec<u8> {
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

    pub fn queued_bytes(&self) -> usize {
        self.sending.queued_bytes()
            + self.filling.queued_bytes()
            + self.tls.as_ref().map_or(0, |t| t.wire_bytes())
    }

    /// Has the peer done what lets it send full-size frames? A client after `Hello`; another
    /// host after `Hello` on `int_port`; our own links always (we chose whom to dial).
    pub fn trusted(&self) -> bool {
        matches!(self.kind, ConnKind::Outbound(..)) || (self.hello_done && self.role.is_some())
    }

    /// The largest frame this connection may send now: `unauth_frame_bytes_max` until it is
    /// trusted, so a peer that has proven nothing cannot make the shard buffer much.
    pub fn frame_max(&self, cfg: &Config) -> usize {
        if self.trusted() {
            cfg.frame_bytes_max as usize
        } else {
            cfg.unauth_frame_bytes_max as usize
        }
    }

    /// Whether this connection's listings, counts and clears cover the whole store: a native
    /// client's do, and a plain Redis client's on `resp_port`; a Redis client's on `svr_port`
    /// and a cluster client's cover the host asked, one node at a time as in Redis Cluster
    /// (`resp::commands::Session::sees_store_wide`).
    pub fn sees_store_wide(&self) -> bool {
        self.resp.as_ref().is_none_or(|r| r.store_wide)
    }

    /// Tells a local connection's caller that no answer will come (the shard is stopping).
    fn local_closed(&self) {
        if let Some(mailbox) = &self.local {
            let mut m = mailbox.borrow_mut();
            m.closed = true;
            if let Some(w) = m.waker.take() {
                w.wake();
            }
        }
    }
}

/// What a receive completion left to its connection's owner ([`Conns::on_recv`]).
pub(super) enum Received {
    /// Nothing more to do (the connection is gone).
    Done,
    /// Flush, read again and close if done (the TLS handshake went on).
    Settle,
    /// Close it if it is done (the peer closed, or its TLS failed).
    Close,
    /// A host link's TLS failed: refuse it, saying why (`Hosts::fail_handshake`).
    FailLink(String),
    /// New bytes in the receive buffer, to decode.
    Bytes,
}

/// The shard's connections, its ring and its listeners. See the module doc.
pub(super) struct Conns {
    pub ring: Ring,
    slab: Slab<Box<Conn>>,
    next_generation: u32,
    /// Shutting down: nothing new is accepted or read; queued answers still go out.
    pub draining: bool,
    shard: usize,
    shards: usize,
    /// When the process started (a gathered `Stats` answers its uptime).
    pub started: std::time::Instant,
    listener: Option<socket2::Socket>,
    int_listener: Option<socket2::Socket>,
    resp_listener: Option<socket2::Socket>,
    /// `secure_svr_port`: its listener and the certificate its connections are accepted with.
    secure_listener: Option<socket2::Socket>,
    tls: Option<Arc<crate::net::TlsSettings>>,
    /// Numbers RESP sessions (`CLIENT ID`) on this shard.
    next_resp_id: u64,
}

impl std::ops::Index<usize> for Conns {
    type Output = Conn;

    #[inline]
    fn index(&self, slot: usize) -> &Conn {
        &self.slab[slot]
    }
}

impl std::ops::IndexMut<usize> for Conns {
    #[inline]
    fn index_mut(&mut self, slot: usize) -> &mut Conn {
        &mut self.slab[slot]
    }
}

impl Conns {
    pub fn new(
        ring: Ring,
        shard: usize,
        shards: usize,
        started: std::time::Instant,
        listener: socket2::Socket,
        int_listener: socket2::Socket,
    ) -> Conns {
        Conns {
            ring,
            slab: Slab::with_capacity(64),
            next_generation: 1,
            draining: false,
            shard,
            shards,
            started,
            listener: Some(listener),
            int_listener: Some(int_listener),
            resp_listener: None,
            secure_listener: None,
            tls: None,
            next_resp_id: 0,
        }
    }

    #[inline]
    pub fn len(&self) -> usize {
        self.slab.len()
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }

    #[inline]
    pub fn get(&self, slot: usize) -> Option<&Conn> {
        self.slab.get(slot).map(|c| &**c)
    }

    #[inline]
    pub fn get_mut(&mut self, slot: usize) -> Option<&mut Conn> {
        self.slab.get_mut(slot).map(|c| &mut **c)
    }

    pub fn iter(&self) -> impl Iterator<Item = (usize, &Conn)> {
        self.slab.iter().map(|(i, c)| (i, &**c))
    }

    pub fn kind(&self, slot: u32) -> Option<ConnKind> {
        self.slab.get(slot as usize).map(|c| c.kind)
    }

    pub fn conn_mut(&mut self, slot: u32, generation: u32) -> Option<&mut Conn> {
        self.slab
            .get_mut(slot as usize)
            .filter(|c| c.generation == generation)
            .map(|c| &mut **c)
    }

    // ---- accepting -------------------------------------------------------------------------

    pub fn set_resp_listener(&mut self, l: Option<socket2::Socket>) {
        self.resp_listener = l;
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

    /// Arms every listener's multishot accept.
    pub fn start_accepting(&mut self) {
        for slot in [
            ACCEPT_SLOT,
            INT_ACCEPT_SLOT,
            RESP_ACCEPT_SLOT,
            SECURE_ACCEPT_SLOT,
        ] {
            self.arm_accept(slot);
        }
    }

    /// Arms the accept of the listener of token slot `slot`, if it is open.
    fn arm_accept(&mut self, slot: u32) {
        let l = match slot {
            ACCEPT_SLOT => &self.listener,
            INT_ACCEPT_SLOT => &self.int_listener,
            RESP_ACCEPT_SLOT => &self.resp_listener,
            _ => &self.secure_listener,
        };
        if let Some(l) = l {
            self.ring
                .accept_multi(l.as_raw_fd(), Token::new(Op::Accept, slot, 0));
        }
    }

    /// A new connection on one of the listeners (the token slot says which). `me`: this
    /// host's id (a host dialling `int_port` proves itself to it).
    pub fn on_accept(&mut self, c: Completion, core: &mut Core, me: u64) {
        let port = c.token.slot();
        if c.result >= 0 {
            // SAFETY: the kernel handed us this new descriptor.
            let fd = unsafe { OwnedFd::from_raw_fd(c.result) };
            match port {
                INT_ACCEPT_SLOT => {
                    if let Some(config) = self.int_accept_tls() {
                        // tls_cluster: another host proves its certificate before anything
                        // else.
                        self.accept_tls(fd, ConnKind::Internal, config, core, me);
                    } else {
                        self.add(fd, ConnKind::Internal, core, me);
                    }
                }
                SECURE_ACCEPT_SLOT => {
                    // A client connection whose bytes pass through TLS.
                    let Some(settings) = self.tls.clone() else {
                        return;
                    };
                    self.accept_tls(fd, ConnKind::Client, settings.server(), core, me);
                }
                _ => {
                    let denied = crate::auth::protect::refuse_fd(&core.cfg, &fd);
                    if let Some(slot) = self.add(fd, ConnKind::Client, core, me) {
                        if port == RESP_ACCEPT_SLOT {
                            self.make_resp(slot, core.now_ms, true);
                        }
                        self.slab[slot as usize].denied = denied;
                    }
                }
            }
        } else if !self.draining && c.result != -libc::ECANCELED {
            let on = match port {
                INT_ACCEPT_SLOT => "",
                RESP_ACCEPT_SLOT => " on resp_port",
                SECURE_ACCEPT_SLOT => " on secure_svr_port",
                _ => "",
            };
            tracing::warn!(
                shard = self.shard,
                "accept{on} failed: {}",
                std::io::Error::from_raw_os_error(-c.result)
            );
        }
        if !c.more() && !self.draining {
            // The multishot accept ended (an error or a full CQ): arm it again.
            self.arm_accept(port);
        }
    }

    /// Adds a connection and starts reading it (not a link of ours: it reads once connected);
    /// None when refused (draining, or too many).
    pub fn add(&mut self, fd: OwnedFd, kind: ConnKind, core: &mut Core, me: u64) -> Option<u32> {
        let slot = self.insert(fd, kind, core, me)?;
        if !matches!(kind, ConnKind::Outbound(..)) {
            self.want_recv(slot, &core.cfg);
        }
        Some(slot)
    }

    /// Adds a connection without reading it yet; None when refused (draining, or too many).
    pub fn insert(&mut self, fd: OwnedFd, kind: ConnKind, core: &mut Core, me: u64) -> Option<u32> {
        if self.draining {
            return None;
        }
        let cfg = &core.cfg;
        let max = cfg.connections_per_shard_max as usize;
        if self.slab.len() >= max || self.slab.len() >= Token::SLOTS_MAX as usize {
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
                shard = self.shard,
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
        // else (our own links start their side in `Hosts::link_slot`).
        let auth = match (&cfg.peer_key, kind) {
            (Some(key), ConnKind::Internal) => {
                LinkAuth::Responder(Box::new(crate::auth::peer::Responder::new(key, me)))
            }
            _ => LinkAuth::Open,
        };
        self.next_generation = self.next_generation.wrapping_add(1).max(1);
        let rbuf = AlignedBuf::with_capacity(cfg.recv_buffer_bytes as usize);
        let mut conn = Box::new(Conn::new(fd, self.next_generation, kind, rbuf));
        conn.auth = auth;
        if kind == ConnKind::Client && cfg.users.is_some() {
            conn.role = None;
        }
        let slot = self.slab.insert(conn) as u32;
        core.connections = self.slab.len() as u64;
        Some(slot)
    }

    // ---- TLS -------------------------------------------------------------------------------
    //
    // Which connection gets which end: a client on `secure_svr_port`, another host on
    // `int_port` with `tls_cluster 1`, and our links to other hosts over mutual TLS. The
    // record layer itself is `crate::net::tls`; the host links' certificates and CA are
    // `crate::net::tls_cluster`.

    /// Adds an accepted connection whose bytes pass through TLS with `config`, and starts
    /// reading it. A handshake that never finishes is closed like a half-sent frame
    /// (`frame_timeout_ms`).
    fn accept_tls(
        &mut self,
        fd: OwnedFd,
        kind: ConnKind,
        config: Arc<rustls::ServerConfig>,
        core: &mut Core,
        me: u64,
    ) -> Option<u32> {
        let tls = match TlsConn::new(config) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(shard = self.shard, "TLS session setup: {e}");
                return None;
            }
        };
        let slot = self.insert(fd, kind, core, me)?;
        let conn = &mut self.slab[slot as usize];
        conn.tls = Some(tls);
        conn.partial_since_ms = Some(core.now_ms);
        self.want_recv(slot, &core.cfg);
        Some(slot)
    }

    /// With `tls_cluster 1`, the mutual-TLS server configuration a connection accepted on
    /// `int_port` runs with (one read lock per accept); None: plaintext host links.
    fn int_accept_tls(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.tls.as_ref()?.cluster().map(|c| c.server)
    }

    /// With `tls_cluster 1`, the TLS client end of a new link to the host at `addr`: it
    /// presents our certificate and accepts only a certificate of the store CA naming `addr`'s
    /// IP address. Ok(None): plaintext host links. Err: the session could not be set up (said
    /// in the log by the caller).
    pub fn link_tls(
        &self,
        addr: std::net::SocketAddr,
    ) -> Result<Option<Box<TlsConn>>, crate::net::TlsError> {
        let Some(cluster) = self.tls.as_ref().and_then(|t| t.cluster()) else {
            return Ok(None);
        };
        let name = ServerName::IpAddress(addr.ip().into());
        TlsConn::client(cluster.client, name).map(Some)
    }

    // ---- RESP detection ----------------------------------------------------------------------

    /// On a client connection's first bytes: is it RESP? Marks it so (for life) when it is.
    /// (See `resp_conn` for how the protocols are told apart.)
    pub fn detect_resp(&mut self, slot: u32, now_ms: u64) -> bool {
        let conn = &mut self.slab[slot as usize];
        if conn.resp.is_some() {
            return true;
        }
        if conn.kind != ConnKind::Client || conn.hello_done {
            return false;
        }
        let b = conn.rbuf.as_slice();
        let magic = frame::MAGIC.to_le_bytes();
        // RESP starts with '*' (a multibulk) or a letter (an inline command); anything else is
        // left to the native framing, which closes a connection of garbage.
        let resp = match b {
            [] => false,
            [first, ..] if *first == b'*' => true,
            [first, ..] if first.is_ascii_alphabetic() && *first != magic[0] => true,
            [first, second, ..] => *first == magic[0] && *second != magic[1],
            [_] => false,
        };
        if resp {
            self.make_resp(slot, now_ms, false);
        }
        resp
    }

    /// Makes a connection a RESP one (detected, or accepted on `resp_port`).
    fn make_resp(&mut self, slot: u32, now_ms: u64, whole_store: bool) {
        self.next_resp_id += 1;
        let id = ((self.shard as u64) << 48) | self.next_resp_id;
        let conn = &mut self.slab[slot as usize];
        conn.hello_done = true;
        conn.resp = Some(RespConn::new(id, now_ms, whole_store));
    }

    // ---- receiving ---------------------------------------------------------------------------

    /// Arms a receive if the connection wants one and is not held back. A TLS connection whose
    /// record buffer is full is marked closing (its owner closes it: every caller but a fresh
    /// connection's, whose buffer is empty, closes what is done right after).
    pub fn want_recv(&mut self, slot: u32, cfg: &Config) {
        let out_max = cfg.conn_out_bytes_max as usize;
        let held_max = cfg.conn_held_bytes_max as usize;
        let draining = self.draining;
        let Some(conn) = self.slab.get_mut(slot as usize) else {
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
                    shard = self.shard,
                    "closing a TLS connection: {}",
                    crate::net::TlsError::TooLarge
                );
                conn.read_closed = true;
                conn.close_after_flush = true;
                return;
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

    /// The first half of a receive completion: the bytes go into the receive buffer (through
    /// TLS when the connection has it). What the bytes mean is the caller's.
    pub fn on_recv(&mut self, c: Completion) -> Received {
        let (slot, generation) = (c.token.slot(), c.token.generation());
        let shard = self.shard;
        let Some(conn) = self.conn_mut(slot, generation) else {
            return Received::Done;
        };
        conn.recv_inflight = false;
        if c.result <= 0 {
            // 0: the peer closed its side; < 0: reset or error. Either way no more requests.
            conn.read_closed = true;
            return Received::Close;
        }
        if let Some(tls) = conn.tls.as_deref_mut() {
            tls.received(c.result as usize);
            // A host link's answers wait for the cluster-key handshake (run inside TLS).
            let app_out = (!conn.auth.pending()).then_some(&mut conn.filling);
            if let Err(e) = tls.pump(&mut conn.rbuf, app_out) {
                if conn.kind != ConnKind::Client {
                    // A host link (tls_cluster): say why and how to fix it, retry later.
                    return Received::FailLink(format!("{e}. {}", crate::net::tls_cluster::HOWTO));
                }
                // Not TLS (plaintext on the TLS port), a refused certificate, a bad record:
                // close; the other connections never notice.
                tracing::debug!(shard, "closing a TLS connection: {e}");
                conn.read_closed = true;
                conn.close_after_flush = true;
                // Answers still to come are dropped as they arrive (see `flush`).
                conn.filling.clear();
                self.flush(slot);
                return Received::Close;
            }
            if tls.peer_closed() {
                conn.read_closed = true;
            }
            if !tls.established() {
                // Still in the handshake: nothing to decode; answer it.
                return Received::Settle;
            }
        } else {
            conn.rbuf.advance(c.result as usize);
        }
        Received::Bytes
    }

    /// The last half of a receive completion, once its bytes were decoded: notes a partial
    /// frame left at the front (for `frame_timeout_ms`) and gives back receive buffer grown
    /// for a large frame.
    pub fn after_recv(&mut self, slot: u32, generation: u32, now: u64, recv_bytes: usize) {
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
    }

    /// Answers a client refused by protected mode in its own protocol, and marks it closing
    /// (the caller flushes and closes it).
    pub fn deny(&mut self, slot: u32, now_ms: u64) {
        let is_resp = self.detect_resp(slot, now_ms);
        let conn = &mut self.slab[slot as usize];
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
            shard = self.shard,
            "refused a non-loopback client: protected mode (no requirepass or users_file)"
        );
        self.flush(slot);
    }

    // ---- the answer queue --------------------------------------------------------------------

    /// Answers into the connection in request order: straight into the send batch when
    /// nothing earlier is pending, else into a queued slot.
    pub fn respond_in_order(&mut self, slot: u32, f: impl FnOnce(&mut dyn DynSink)) {
        let conn = &mut self.slab[slot as usize];
        if conn.slots.is_empty() {
            f(&mut BatchSink::of(conn));
        } else {
            let mut bytes = conn.answer_buf();
            f(&mut VecSink(&mut bytes));
            conn.slots.push_back(Slot::Ready(bytes));
        }
    }

    /// Queues a whole encoded answer in request order.
    pub fn push_answer(&mut self, slot: u32, bytes: Vec<u8>) {
        let conn = &mut self.slab[slot as usize];
        if conn.slots.is_empty() {
            conn.write_answer(&bytes);
        } else {
            conn.slots.push_back(Slot::Ready(bytes));
        }
    }

    /// [`Self::reserve`] for a request answered later from elsewhere (another shard, host or
    /// the copies): it holds `frame_bytes` of the connection's budget until then.
    pub fn reserve_forwarded(
        &mut self,
        slot: u32,
        id: u32,
        frame_bytes: usize,
        cfg: &Config,
    ) -> Option<u64> {
        let bytes = frame_bytes as u32;
        self.reserve(slot, id, Slot::Forwarded { bytes }, cfg)
    }

    /// Takes a queue slot for an answer another shard will produce; None when the
    /// connection has too many waiting (it then got TooManyInFlight).
    pub fn reserve(&mut self, slot: u32, id: u32, s: Slot, cfg: &Config) -> Option<u64> {
        let conn = &mut self.slab[slot as usize];
        // A link from another host carries many clients' requests, replication and migration
        // at once: its bound is the sender's (hosts::LINK_INFLIGHT_MAX), not a client's. With
        // the client limit, relayed writes failed with TooManyInFlight and migration frames
        // were refused under load.
        let max = if conn.kind == ConnKind::Internal {
            super::hosts::LINK_INFLIGHT_MAX as u32
        } else {
            cfg.inflight_per_conn_max
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

    /// Puts an answer in its slot and moves every ready answer at the front of the queue into
    /// the send batch. No I/O, so it is safe inside `process_frames`. Returns whether the
    /// connection still exists.
    pub fn fill_slot(
        &mut self,
        slot: u32,
        generation: u32,
        seq: u64,
        part: u32,
        answer: Vec<u8>,
        cfg: &Config,
    ) -> bool {
        self.fill_slot_bytes(
            slot,
            generation,
            seq,
            part,
            std::borrow::Cow::Owned(answer),
            cfg,
        )
    }

    /// As [`Conns::fill_slot`], for an answer that may be borrowed (from a returned hop
    /// batch): an answer at the front of the queue goes straight into the send batch, one
    /// copy, no allocation; one behind an earlier answer still missing waits in a buffer.
    /// `cfg` is borrowed, not cloned: an `Arc` clone per answer costs two atomic operations.
    pub fn fill_slot_bytes(
        &mut self,
        slot: u32,
        generation: u32,
        seq: u64,
        part: u32,
        answer: std::borrow::Cow<'_, [u8]>,
        cfg: &Config,
    ) -> bool {
        let (shard, shards, started) = (self.shard, self.shards, self.started);
        let Some(conn) = self
            .slab
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
                    gather::finish(g, &mut out, |st| {
                        super::finalize_stats(st, cfg, shards, started)
                    });
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

    // ---- sending -----------------------------------------------------------------------------

    /// Starts sending the filled batch if no send is in flight. One sendmsg per batch.
    pub fn flush(&mut self, slot: u32) {
        let Some(conn) = self.slab.get_mut(slot as usize) else {
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

    /// A send completed. Returns the connection's slot and whether it is to be settled
    /// (flushed, read again, closed if done: true) or only closed if done (its peer is gone:
    /// false); None when there is nothing more to do.
    pub fn on_send(&mut self, c: Completion) -> Option<(u32, bool)> {
        let (slot, generation) = (c.token.slot(), c.token.generation());
        let conn = self
            .slab
            .get_mut(slot as usize)
            .filter(|c| c.generation == generation)?;
        conn.send_inflight = false;
        if c.result < 0 {
            // The peer is gone (EPIPE, ECONNRESET): drop what was queued.
            conn.sending.clear();
            conn.filling.clear();
            conn.slots.clear();
            conn.read_closed = true;
            conn.close_after_flush = true;
            return Some((slot, false));
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
            return None;
        }
        Some((slot, true))
    }

    // ---- closing -----------------------------------------------------------------------------

    /// Frees a connection once it has nothing left to do, and returns it: a host link's
    /// expected answers are its owner's to settle (`Hosts::close_if_done`). A local
    /// connection's caller is told no answer will come.
    #[must_use = "a closed host link's waiting requests must be settled (Hosts::close_if_done)"]
    pub fn take_if_done(&mut self, slot: u32) -> Option<Box<Conn>> {
        let conn = self.slab.get(slot as usize)?;
        let done_reading = conn.read_closed || conn.close_after_flush || self.draining;
        let idle = !conn.send_inflight
            && !conn.connecting
            && (conn.expect.is_empty() || conn.read_closed)
            && conn.filling.is_empty()
            && conn.tls.as_ref().is_none_or(|t| t.wire_bytes() == 0)
            && conn.waiting == 0
            && conn.slots.is_empty();
        if !(done_reading && idle) {
            return None;
        }
        if conn.recv_inflight {
            // Make the pending receive complete (with 0) so its buffer can be freed.
            // SAFETY: shutdown on our own socket.
            unsafe { libc::shutdown(conn.fd.as_raw_fd(), libc::SHUT_RDWR) };
            return None;
        }
        let conn = self.slab.remove(slot as usize);
        conn.local_closed();
        Some(conn)
    }

    /// Connections that left a frame half-sent for over `frame_timeout_ms` ([`Conns::stop_stuck`]
    /// each, then close it).
    pub fn stuck(&self, now: u64, timeout: u64) -> Vec<u32> {
        self.slab
            .iter()
            .filter(|(_, c)| {
                c.partial_since_ms
                    .is_some_and(|t| now.saturating_sub(t) > timeout)
            })
            .map(|(i, _)| i as u32)
            .collect()
    }

    /// Stops reading a connection stuck mid-frame: its pending receive completes with 0.
    pub fn stop_stuck(&mut self, slot: u32, timeout: u64) {
        tracing::info!(
            shard = self.shard,
            "closing a connection that left a frame half-sent for over frame_timeout_ms ({timeout} ms)"
        );
        let conn = &mut self.slab[slot as usize];
        conn.read_closed = true;
        conn.partial_since_ms = None;
        // SAFETY: shutdown on our own socket; the pending receive completes with 0.
        unsafe { libc::shutdown(conn.fd.as_raw_fd(), libc::SHUT_RDWR) };
    }

    /// Starts draining for shutdown: stops accepting; returns every connection, each to stop
    /// reading ([`Conns::stop_reading`]) and to close once what is queued is sent.
    pub fn begin_drain(&mut self) -> Vec<u32> {
        self.draining = true;
        let listeners = [
            self.listener.take(),
            self.int_listener.take(),
            self.resp_listener.take(),
            self.secure_listener.take(),
        ];
        for l in listeners.into_iter().flatten() {
            // Closing the socket alone would not end the multishot accept; shutdown does.
            // SAFETY: shutdown on our own listening socket.
            unsafe { libc::shutdown(l.as_raw_fd(), libc::SHUT_RDWR) };
        }
        self.slab.iter().map(|(i, _)| i as u32).collect()
    }

    /// Stops reading a connection while draining.
    pub fn stop_reading(&mut self, slot: u32) {
        let conn = &mut self.slab[slot as usize];
        if conn.recv_inflight {
            // SAFETY: shutdown on our own socket; only the read side, so queued answers still
            // go out.
            unsafe { libc::shutdown(conn.fd.as_raw_fd(), libc::SHUT_RD) };
        }
        conn.read_closed = true;
    }

    // ---- hand-off between shards -------------------------------------------------------------

    /// Takes out a connection whose `HelloShard` asked for another shard, to hand to it with
    /// the bytes received after the Hello: (that shard, the socket, those bytes, the Hello's
    /// request id, whether it is another host's, the host it proved it is). Called from the
    /// receive completion, so no receive is in flight, and before any answer was queued (the
    /// Hello is answered by the new shard).
    pub fn take_for_hand_off(&mut self, slot: u32) -> (usize, crate::server::Msg) {
        let conn = self.slab.remove(slot as usize);
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
        (
            to,
            crate::server::Msg::Adopt {
                fd,
                rest: rbuf,
                hello_id,
                internal,
                proven_host,
            },
        )
    }

    /// Takes over a client connection another shard accepted (the first half of an
    /// adoption): it is inserted with the Hello done, `hello` answers its Hello, and the bytes
    /// that followed the Hello are put in its receive buffer, one copy (usually none: clients
    /// wait for the answer). Returns its slot and generation, None when refused.
    #[allow(clippy::too_many_arguments)]
    pub fn adopt(
        &mut self,
        fd: OwnedFd,
        rest: AlignedBuf,
        hello_id: u32,
        hello: &Response,
        internal: bool,
        proven_host: Option<u64>,
        core: &mut Core,
        me: u64,
    ) -> Option<(u32, u32)> {
        let kind = if internal {
            ConnKind::Internal
        } else {
            ConnKind::Client
        };
        // Not `add`: the bytes already received go in before a receive is armed.
        let slot = self.insert(fd, kind, core, me)?;
        let conn = &mut self.slab[slot as usize];
        conn.hello_done = true;
        // The accepting shard ran the cluster-key handshake before it decoded the Hello.
        conn.auth = match proven_host {
            Some(h) => LinkAuth::Proven(crate::cluster::map::HostId(h)),
            None => LinkAuth::Open,
        };
        Sink::respond(
            &mut BatchSink(&mut conn.filling, None),
            hello_id,
            hello,
            &[],
        );
        if !rest.is_empty() {
            conn.rbuf.reserve_total(rest.len());
            conn.rbuf.spare_mut()[..rest.len()].copy_from_slice(rest.as_slice());
            conn.rbuf.advance(rest.len());
        }
        Some((slot, conn.generation))
    }

    // ---- local connections (`local`) ---------------------------------------------------------

    /// Opens a local connection; `Unavailable` while draining or when the shard is at
    /// `connections_per_shard_max`.
    pub fn open_local(
        &mut self,
        core: &mut Core,
    ) -> Result<(LocalConn, Rc<RefCell<Mailbox>>), LocalError> {
        let max = core.cfg.connections_per_shard_max as usize;
        if self.draining || self.slab.len() >= max.min(Token::SLOTS_MAX as usize) {
            return Err(LocalError::Unavailable);
        }
        // A Conn owns a descriptor; a local one has no socket, so it holds an eventfd that
        // nothing reads or writes (one syscall per HTTP connection, not per request).
        // SAFETY: eventfd returns a new descriptor we own, or -1.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if raw < 0 {
            return Err(LocalError::Unavailable);
        }
        // SAFETY: `raw` is a fresh descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        self.next_generation = self.next_generation.wrapping_add(1).max(1);
        let generation = self.next_generation;
        let mailbox = Rc::new(RefCell::new(Mailbox::default()));
        let mut conn = Box::new(Conn::new(
            fd,
            generation,
            ConnKind::Local,
            AlignedBuf::with_capacity(0),
        ));
        conn.hello_done = true;
        conn.local = Some(mailbox.clone());
        let slot = self.slab.insert(conn) as u32;
        core.connections = self.slab.len() as u64;
        Ok((LocalConn { slot, generation }, mailbox))
    }

    /// Sets what a local connection's caller may do.
    pub fn set_local_role(&mut self, c: LocalConn, role: Option<Role>, user: &str) {
        if let Some(conn) = self.conn_mut(c.slot, c.generation) {
            conn.role = role;
            if conn.user.as_deref() != Some(user) {
                conn.user = Some(user.into());
            }
        }
    }

    /// Marks a local connection closed when its caller is gone; an answer still due is
    /// dropped when it arrives (the slot's generation no longer matches). Returns its slot,
    /// to be closed, if it still exists.
    pub fn close_local(&mut self, c: LocalConn) -> Option<u32> {
        let conn = self.conn_mut(c.slot, c.generation)?;
        conn.read_closed = true;
        conn.local = None;
        // Answers still due (forwarded, relayed) keep the slot until they arrive.
        conn.slots.clear();
        conn.waiting = 0;
        conn.filling.clear();
        Some(c.slot)
    }

    /// [`Conns::flush`] for a local connection: move the filled batch to the mailbox and wake
    /// the caller. No copy: the batch's byte vector is swapped out.
    fn deliver_local(&mut self, slot: u32) {
        let Some(conn) = self.slab.get_mut(slot as usize) else {
            return;
        };
        if conn.filling.is_empty() {
            return;
        }
        let (bytes, values) = conn.filling.take_parts();
        let Some(mailbox) = &conn.local else {
            return;
        };
        let mut m = mailbox.borrow_mut();
        debug_assert!(
            m.answer.is_none(),
            "one request at a time per local connection"
        );
        m.answer = Some(super::local::LocalAnswer { bytes, values });
        if let Some(w) = m.waker.take() {
            w.wake();
        }
    }
}
