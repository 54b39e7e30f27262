//! Request dispatch: what a native request frame becomes on the shard it arrived at. Served
//! here at once (into the connection's send batch), hopped to the shard that owns its key
//! (batched per pass, `crate::server::hop`), relayed to the host that is its partition's
//! primary, held until this host's lease covers it, replicated before it is answered, or
//! gathered from every shard's (and host's) part; plus the connection-level requests
//! (`Hello`, `Auth`) and the batches other shards send this one.
//!
//! A [`Dispatch`] is a view of the shard's parts a request touches (connections, core, data
//! plane, mesh), built for one receive or message: it owns nothing and costs nothing to make.

use stategrid_proto::{
    ArchivedRequest, ErrorCode, ErrorReply, FrameError, PROTOCOL_VERSION, PROTOCOL_VERSION_MIN,
    Request, Response, codec, frame,
};

use super::conn::{BatchSink, ConnKind, Conns, Slot};
use super::hosts::{
    AnswerTo, Expect, HostRoute, Hosts, LinkAuth, LinkClass, append_relabelled, host_unreachable,
    listed_hosts,
};
use super::mesh::Mesh;
use crate::auth::users::Role;
use crate::cluster::HostId;
use crate::net::AlignedBuf;
use crate::server::Msg;
use crate::server::exec::{Core, Route, Sink, VecSink};
use crate::server::gather::{self, Gather};
use crate::server::hop::{HopBatch, HopTo};

/// The parts of the shard one request's dispatch touches. See the module doc.
pub(super) struct Dispatch<'a> {
    pub conns: &'a mut Conns,
    pub core: &'a mut Core,
    pub hosts: &'a mut Hosts,
    pub mesh: &'a mut Mesh,
}

impl Dispatch<'_> {
    /// Takes over a client connection another shard accepted and whose `HelloShard` asked for
    /// this shard: answers the Hello from here and serves whatever followed it. Costs one
    /// copy of the bytes that followed the Hello (usually none: clients wait for the answer).
    pub fn adopt(
        &mut self,
        fd: std::os::fd::OwnedFd,
        rest: AlignedBuf,
        hello_id: u32,
        internal: bool,
        proven_host: Option<u64>,
    ) {
        let hello = Self::hello_ok(self.core, true);
        let me = self.hosts.me();
        let Some((slot, generation)) = self.conns.adopt(
            fd,
            rest,
            hello_id,
            &hello,
            internal,
            proven_host,
            self.core,
            me,
        ) else {
            return;
        };
        if !self.conns[slot as usize].rbuf.is_empty() {
            self.process_frames(slot, generation);
            let now = self.core.now_ms;
            if let Some(conn) = self.conns.conn_mut(slot, generation)
                && !conn.rbuf.is_empty()
            {
                conn.partial_since_ms = Some(now);
            }
        }
        self.hosts.settle(self.conns, self.core, slot);
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
    pub fn process_frames(&mut self, slot: u32, generation: u32) {
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
                    self.conns.respond_in_order(slot, |sink| {
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

    #[allow(clippy::too_many_arguments)]
    pub fn on_frame(
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
                return self.conns.respond_in_order(slot, |s| {
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
            return self.conns.respond_in_order(slot, |s| {
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
            return self
                .conns
                .respond_in_order(slot, |s| s.error(id, ErrorCode::ObjectTooLarge, max));
        }
        let internal = self.conns[slot as usize].kind == ConnKind::Internal;
        if let LinkAuth::Proven(host) = self.conns[slot as usize].auth
            && let Some(why) = super::hosts::sender_mismatch(req, host)
        {
            tracing::warn!(
                shard = self.core.shard,
                "refused a host-to-host request: {why}"
            );
            return self.conns.respond_in_order(slot, |s| {
                s.respond(
                    id,
                    &Response::Error(ErrorReply::with_message(ErrorCode::Forbidden, 0, why)),
                    &[],
                )
            });
        }
        if req.is_internal() && !internal {
            return self.conns.respond_in_order(slot, |s| {
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
            let resp = self.hosts.map_response();
            return self
                .conns
                .respond_in_order(slot, |s| s.respond(id, &resp, &[]));
        }
        if let Some(why) = self.hosts.multi_host_refusal(req) {
            return self.conns.respond_in_order(slot, |s| {
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
            match self.hosts.host_route(p, internal) {
                HostRoute::Here => {}
                HostRoute::Remote(host) => {
                    let Some(seq) =
                        self.conns
                            .reserve_forwarded(slot, id, frame_bytes, &self.core.cfg)
                    else {
                        return;
                    };
                    return self.hosts.relay(
                        self.conns,
                        self.core,
                        host,
                        slot,
                        generation,
                        seq,
                        id,
                        &frame_start[..frame_bytes],
                    );
                }
                HostRoute::Wait => {
                    let Some(seq) =
                        self.conns
                            .reserve_forwarded(slot, id, frame_bytes, &self.core.cfg)
                    else {
                        return;
                    };
                    return self.hosts.defer(
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
                    return self
                        .conns
                        .respond_in_order(slot, |s| s.error(id, code, detail));
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
            (_, Some(p)) => crate::server::exec::partition_route(p as u32, me, shards),
            _ => crate::server::exec::route(req, me, shards),
        };
        match route {
            Route::Local if req.is_internal() => {
                let mut bytes = Vec::new();
                self.hosts
                    .execute_internal(self.core, req, value, id, &mut VecSink(&mut bytes));
                self.conns.push_answer(slot, bytes);
            }
            Route::Local
                if partition
                    .is_some_and(|p| self.hosts.via_copies(p, super::hosts::read_only(req))) =>
            {
                let Some(seq) = self
                    .conns
                    .reserve_forwarded(slot, id, frame_bytes, &self.core.cfg)
                else {
                    return;
                };
                let to = AnswerTo::Conn {
                    slot,
                    generation,
                    seq,
                };
                if let Some(answer) = self
                    .hosts
                    .execute_replicated(self.conns, self.core, req, value, id, to)
                {
                    self.conns
                        .fill_slot(slot, generation, seq, 0, answer, &self.core.cfg);
                }
            }
            Route::Local => {
                // The key was hashed once, above; the store probes with that hash.
                let now = self.core.now_ms;
                let core = &mut self.core;
                let conn = &mut self.conns[slot as usize];
                if conn.slots.is_empty() {
                    core.execute_with_hash(req, hash, value, now, id, &mut BatchSink::of(conn));
                } else {
                    let mut bytes = conn.answer_buf();
                    core.execute_with_hash(req, hash, value, now, id, &mut VecSink(&mut bytes));
                    conn.slots.push_back(Slot::Ready(bytes));
                }
                self.hosts.send_clears(self.conns, self.core);
            }
            Route::Shard(to) => {
                let Some(seq) = self
                    .conns
                    .reserve_forwarded(slot, id, frame_bytes, &self.core.cfg)
                else {
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
                self.mesh
                    .queue_hop(to, dest, &frame_start[..frame_bytes], hash);
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
                let Some(seq) = self.conns.reserve(
                    slot,
                    id,
                    Slot::Gather(g, frame_bytes as u32),
                    &self.core.cfg,
                ) else {
                    return;
                };
                for s in 0..shards {
                    let frame = &frame_start[..frame_bytes];
                    self.dispatch_part(s, slot, generation, seq, s as u32, frame);
                }
            }
            Route::Split => {
                let parts = crate::server::exec::split(req, value, shards);
                if parts.is_empty() {
                    // Inconsistent item sizes: the local pass explains the error.
                    let mut bytes = Vec::new();
                    let now = self.core.now_ms;
                    self.core
                        .execute(req, value, now, id, &mut VecSink(&mut bytes));
                    return self.conns.push_answer(slot, bytes);
                }
                let items = match req {
                    ArchivedRequest::MultiRead { keys, .. } => keys.len(),
                    ArchivedRequest::BulkPut { items, .. } => items.len(),
                    _ => 0,
                };
                let max = self.core.cfg.items_per_request_max as usize;
                if items > max {
                    return self.conns.respond_in_order(slot, |s| {
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
                let Some(seq) = self.conns.reserve(
                    slot,
                    id,
                    Slot::Gather(g, frame_bytes as u32),
                    &self.core.cfg,
                ) else {
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
            let answer =
                self.hosts
                    .execute_frame(self.conns, self.core, &AlignedBuf::from_slice(frame));
            self.conns
                .fill_slot(slot, generation, seq, part, answer, &self.core.cfg);
        } else {
            let dest = HopTo {
                conn: slot,
                generation,
                seq,
                part,
            };
            // The part's archive was not validated here: the owner validates it.
            self.mesh.queue_hop(to, dest, frame, None);
        }
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
            self.conns
                .respond_in_order(slot, |s| s.respond(id, &resp, &[]));
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
        self.conns
            .respond_in_order(slot, |s| s.respond(id, &resp, &[]));
        false
    }

    /// The answer to `Hello` (`shard_aware` false) or `HelloShard` on this shard.
    pub fn hello_ok(core: &Core, shard_aware: bool) -> Response {
        let (version, server) = (
            PROTOCOL_VERSION,
            format!("stategrid {}", env!("CARGO_PKG_VERSION")),
        );
        let (shards, partitions) = (core.shards as u32, stategrid_proto::PARTITIONS);
        if shard_aware {
            Response::HelloShardOk {
                version,
                server,
                shards,
                partitions,
                shard: core.shard as u32,
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
        let (me, shards, draining) = (self.core.shard, self.core.shards, self.conns.draining);
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
        let hello_ok = Self::hello_ok(self.core, asked.is_some() && !tls);
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

    /// Serves a batch of requests another shard forwarded, in order, and sends it back with
    /// the answers. A change to a replicated partition answers later, alone (`Msg::Reply`).
    pub fn serve_hops(&mut self, mut batch: Box<HopBatch>) {
        let origin = batch.origin;
        let now = self.core.now_ms;
        batch.serve_with(|to, req, hash, value, id, out| {
            if req.is_internal() {
                self.hosts
                    .execute_internal(self.core, req, value, id, &mut VecSink(out));
                return true;
            }
            let replicated = req.key().is_some_and(|k| {
                let h = hash.unwrap_or_else(|| {
                    stategrid_proto::key_hash(k.ns.to_native(), k.key.as_slice())
                });
                self.hosts.via_copies(
                    stategrid_proto::partition_of(h) as usize,
                    super::hosts::read_only(req),
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
                return match self
                    .hosts
                    .execute_replicated(self.conns, self.core, req, value, id, to)
                {
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
        self.mesh.send_to(origin, Msg::HopBack(batch));
    }

    /// A batch this shard sent came back: put each answer in its connection's queue, then
    /// send each connection's answers once (one sendmsg per connection, not per answer), and
    /// keep the batch for reuse (its buffers were allocated on this thread).
    pub fn on_hops_back(&mut self, batch: Box<HopBatch>) {
        let mut touched = std::mem::take(&mut self.mesh.touched);
        batch.for_each_answer(|to, answer| {
            if let Some(a) = answer
                && self.conns.fill_slot_bytes(
                    to.conn,
                    to.generation,
                    to.seq,
                    to.part,
                    std::borrow::Cow::Borrowed(a),
                    &self.core.cfg,
                )
                && touched.last() != Some(&to.conn)
            {
                touched.push(to.conn);
            }
        });
        self.mesh.give_back(batch);
        for &slot in &touched {
            // A slot seen twice (not in a row) is flushed twice: harmless, both are no-ops
            // the second time.
            self.hosts.settle(self.conns, self.core, slot);
        }
        touched.clear();
        self.mesh.touched = touched;
    }

    /// An answer from another shard: fill its slot and send every answer now in order.
    pub fn on_reply(&mut self, slot: u32, generation: u32, seq: u64, part: u32, answer: Vec<u8>) {
        if self
            .conns
            .fill_slot(slot, generation, seq, part, answer, &self.core.cfg)
        {
            self.hosts.settle(self.conns, self.core, slot);
        }
    }

    // ---- store-wide requests --------------------------------------------------------------

    /// Requests answered from parts: a namespace count or clear from a client of a store of
    /// several hosts (every host answers for the partitions it is primary of; a clear also
    /// clears their replicas), and a whole-host key listing (`CURSOR_WHOLE_HOST`, Redis
    /// `KEYS`) on any store. This host merges the parts: its own shards' and, for a client
    /// that sees the store whole, each other host's, asked over the relay links (a host asked
    /// by another answers for itself only). Returns false when it is not such a request.
    fn gather_hosts(
        &mut self,
        req: &ArchivedRequest,
        slot: u32,
        generation: u32,
        id: u32,
        frame: &[u8],
        internal: bool,
    ) -> bool {
        use gather::Kind;
        let kind = match req {
            ArchivedRequest::ListKeys { cursor, .. }
                if cursor.to_native() == crate::server::exec::CURSOR_WHOLE_HOST =>
            {
                Kind::Keys
            }
            ArchivedRequest::NsCount { .. } | ArchivedRequest::NsClear { .. } => Kind::Sum,
            _ => return false,
        };
        let store_wide =
            self.hosts.multi_host() && !internal && self.conns[slot as usize].sees_store_wide();
        if kind == Kind::Sum && !store_wide {
            return false;
        }
        let others: Vec<HostId> = match self.hosts.data.view.clone() {
            Some(view) if store_wide => listed_hosts(&view)
                .into_iter()
                .filter(|&h| h != view.me)
                .collect(),
            _ if kind == Kind::Sum => return false,
            _ => Vec::new(),
        };
        let shards = self.core.shards;
        let g = gather::Gather {
            kind,
            request_id: id,
            parts: (0..shards + others.len()).map(|_| None).collect(),
            indexes: Vec::new(),
            items: 0,
            remaining: shards + others.len(),
        };
        let Some(seq) = self.conns.reserve(
            slot,
            id,
            Slot::Gather(g, frame.len() as u32),
            &self.core.cfg,
        ) else {
            return true;
        };
        for s in 0..shards {
            self.dispatch_part(s, slot, generation, seq, s as u32, frame);
        }
        for (i, host) in others.into_iter().enumerate() {
            let part = (shards + i) as u32;
            let sent = self.hosts.link_send(
                self.conns,
                self.core,
                host,
                LinkClass::Relay,
                Expect::Part {
                    slot,
                    generation,
                    seq,
                    part,
                },
                |b, link_id| append_relabelled(b, frame, link_id),
            );
            if !sent {
                self.conns.fill_slot(
                    slot,
                    generation,
                    seq,
                    part,
                    host_unreachable(host),
                    &self.core.cfg,
                );
            }
        }
        true
    }

    /// A native client's key listing page on a store of several hosts: the cursor is marked
    /// store-wide ([`crate::server::exec::CURSOR_STORE_WIDE`]) and the page served by the host
    /// it names, here or relayed there; that host answers with the cursor of the page after,
    /// on it or on the next host. Returns false when it is not such a request.
    fn relay_listing(
        &mut self,
        req: &ArchivedRequest,
        slot: u32,
        generation: u32,
        id: u32,
    ) -> bool {
        use crate::server::exec::{CURSOR_STORE_WIDE, cursor_host, cursor_shard};
        let Some((me, _)) = self.core.list_host else {
            return false;
        };
        let marked = |cursor: u64| match cursor {
            0 => CURSOR_STORE_WIDE,
            c => c,
        };
        let (cursor, native) = match req {
            ArchivedRequest::ListKeys { ns, cursor, limit } => {
                let cursor = marked(cursor.to_native());
                (
                    cursor,
                    Request::ListKeys {
                        ns: ns.to_native(),
                        cursor,
                        limit: limit.to_native(),
                    },
                )
            }
            ArchivedRequest::ListKeysOfKind {
                ns,
                cursor,
                limit,
                kind,
            } => {
                let cursor = marked(cursor.to_native());
                (
                    cursor,
                    Request::ListKeysOfKind {
                        ns: ns.to_native(),
                        cursor,
                        limit: limit.to_native(),
                        kind: kind.to_native(),
                    },
                )
            }
            _ => return false,
        };
        // Redis cluster clients list one node at a time (as in Redis Cluster); so do old
        // cursors.
        if !self.conns[slot as usize].sees_store_wide() || cursor & CURSOR_STORE_WIDE == 0 {
            return false;
        }
        let Some(view) = self.hosts.data.view.clone() else {
            return false;
        };
        let mut frame = Vec::with_capacity(64);
        codec::encode_request(&mut frame, id, &native, &[]);
        let Some(seq) = self
            .conns
            .reserve_forwarded(slot, id, frame.len(), &self.core.cfg)
        else {
            return true;
        };
        let want = cursor_host(cursor);
        if want == me as usize {
            let shard = cursor_shard(cursor).min(self.core.shards - 1);
            self.dispatch_part(shard, slot, generation, seq, 0, &frame);
            return true;
        }
        let hosts = listed_hosts(&view);
        match hosts.get(want) {
            Some(&host) => self.hosts.relay(
                self.conns, self.core, host, slot, generation, seq, id, &frame,
            ),
            None => {
                let mut b = Vec::new();
                VecSink(&mut b).respond(
                    id,
                    &Response::Error(ErrorReply::with_message(
                        ErrorCode::InvalidRequest,
                        0,
                        format!(
                            "cursor {cursor} names host {want}, and the store lists {} hosts now; start the listing again from 0",
                            hosts.len()
                        ),
                    )),
                    &[],
                );
                self.conns
                    .fill_slot(slot, generation, seq, 0, b, &self.core.cfg);
            }
        }
        true
    }
}
