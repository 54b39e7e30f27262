//! The shard side of the Redis protocol: telling RESP from native on `svr_port`, the receive
//! loop of a RESP connection, and the glue that hands each command's native requests to the
//! shard's ordinary routing path (`Dispatch::on_frame`) and renders the answers. Its types:
//! [`RespConn`] (a connection's RESP state), [`RespShard`] (the shard's scratch and the receive
//! loop, [`RespShard::process`]) and `Glue` (the command table's view of the shard).
//!
//! Detection: a native connection's first bytes are the frame magic "GS" (`frame::MAGIC`,
//! little-endian). Any other first byte, or 'G' followed by anything but 'S', is RESP (a
//! Redis client starts with `*` or an inline command). Decided once, on the first bytes; the
//! connection keeps its protocol for life. Connections accepted on `resp_port` are RESP from
//! the start.
//!
//! Two ways a command's keyed work is served:
//! - Here (the hot path): the key's partition is this shard's, this host serves it, and a
//!   write has no replica to wait for. The operation is applied to the store at once
//!   (`Core::execute_redis`) and its answer rendered as RESP straight into the send batch:
//!   no native request is built, serialized or validated. A GET's value goes to sendmsg by
//!   reference (no copy, no allocation); a SET copies its value once (receive buffer to the
//!   store), as a native put does.
//! - Anything else (another shard or host, a lease not yet granted, a replicated write): the
//!   command becomes a native request (rkyv, into a reused buffer) on the shard's ordinary
//!   routing path (`Dispatch::on_frame`), which forwards, relays, defers, refuses or replicates
//!   exactly as for a native client. Its answer comes back as native bytes and is rendered
//!   then (`render_native`: a deserialization and a copy of the value). A command served here
//!   while such an answer is still awaited is rendered at once and queued as RESP bytes.

use std::ops::Range;

use stategrid_proto::{Key, RedisOp, Request, Response, codec, frame, key_hash, partition_of};

use super::conn::{BatchSink, Conn, Slot};
use super::dispatch::Dispatch;
use super::hosts::HostRoute;
use crate::net::{AlignedBuf, SendBatch};
use crate::resp::commands::{self, Args, Owner, Topology};
use crate::resp::parse::{self, Limits, Parsed};
use crate::resp::{Pending, RespOut, Session, Shape, ValRef, reply};
use crate::server::exec::{Core, Sink, VecSink, owner_shard};
use crate::store::KeyRef;

/// A RESP connection's state, kept in its `Conn`.
pub(super) struct RespConn {
    pub session: Session,
    /// `session.sees_store_wide()` as of the command being executed: the session is taken
    /// out while a command runs, and the routing of its requests (`Conn::sees_store_wide`)
    /// reads this copy.
    pub store_wide: bool,
    pub out: RespOut,
    args: Vec<Range<usize>>,
    scratch: Vec<u8>,
    /// Bytes the receive buffer needs in all for the command at its front (a hint).
    pub need: usize,
}

/// Shard-wide scratch of the RESP glue.
#[derive(Default)]
pub(super) struct RespShard {
    /// The native frame a command's request is encoded into (reused).
    frame: Vec<u8>,
    /// The key of a `Request::Redis` (reused: moved into the request and back).
    key: Vec<u8>,
    /// Where an answer queued behind another shard's is rendered (`Glue::serve_here`).
    alone: SendBatch,
}

/// Items one RESP command may have before the connection authenticated.
const UNAUTH_ITEMS_MAX: usize = 16;

impl RespConn {
    pub fn new(id: u64, now_ms: u64, whole_store: bool) -> Box<RespConn> {
        let mut session = Session::new(id, now_ms);
        session.whole_store = whole_store;
        Box::new(RespConn {
            store_wide: session.sees_store_wide(),
            session,
            out: RespOut::default(),
            args: Vec::new(),
            scratch: Vec::new(),
            need: 0,
        })
    }
}

/// Renders a whole native answer frame (one that waited in the queue, or came from another
/// shard or host) as RESP. Costs a deserialization of the archive (an allocation or two) and
/// a copy of the value: these answers are already bytes.
pub(super) fn render_native(out: &mut RespOut, b: &mut SendBatch, bytes: &[u8]) {
    let copy;
    let buf = if (bytes.as_ptr() as usize) % 8 == 0 {
        bytes
    } else {
        copy = AlignedBuf::from_slice(bytes);
        copy.as_slice()
    };
    let parsed = match frame::parse(buf, usize::MAX) {
        Ok(Some(p)) => p,
        _ => {
            return out.render(
                b,
                &Response::Error(stategrid_proto::ErrorReply::with_message(
                    stategrid_proto::ErrorCode::Internal,
                    0,
                    "an answer frame was not whole",
                )),
                None,
            );
        }
    };
    let resp = codec::decode_response(parsed.archive)
        .ok()
        .and_then(|a| rkyv::deserialize::<Response, rkyv::rancor::Error>(a).ok())
        .unwrap_or_else(|| {
            Response::Error(stategrid_proto::ErrorReply::with_message(
                stategrid_proto::ErrorCode::Internal,
                0,
                "an answer did not decode",
            ))
        });
    out.render(b, &resp, Some(ValRef::Bytes(parsed.value)));
}

/// What a shard does for one RESP connection while it runs a command.
struct Glue<'a, 'd> {
    d: &'a mut Dispatch<'d>,
    scratch: &'a mut RespShard,
    slot: u32,
    generation: u32,
}

impl Glue<'_, '_> {
    fn conn(&mut self) -> &mut Conn {
        &mut self.d.conns[self.slot as usize]
    }
}

/// Renders one answer as RESP bytes at once with the shape the caller holds (values copied
/// into the bytes: they are queued, not sent by reference).
struct AloneSink<'a>(&'a mut RespOut, &'a mut SendBatch, Option<Pending>);

impl Sink for AloneSink<'_> {
    fn respond(&mut self, _id: u32, resp: &Response, values: &[crate::store::Value]) {
        if let Some(p) = self.2.take() {
            let v = values.first().map(|v| ValRef::Bytes(v));
            self.0.render_alone(p, self.1, resp, v);
        }
    }
}

/// Keyed work a RESP connection's shard applies itself (see `Glue::serve_here`).
#[derive(Clone, Copy)]
enum Direct {
    Redis(RedisOp),
    /// TTL and its kin (`Request::Meta`).
    Meta,
}

impl Direct {
    #[inline]
    fn run(self, core: &mut Core, k: KeyRef<'_>, value: &[u8], now: u64, sink: &mut impl Sink) {
        match self {
            Direct::Redis(op) => core.execute_redis(k, op, value, now, 0, sink),
            Direct::Meta => core.execute_meta(k, now, 0, sink),
        }
    }
}

impl Glue<'_, '_> {
    /// May this shard apply `op` on a key of partition `p` at once, without a native request?
    /// Yes when the partition is this shard's and this host serves it now (`HostRoute::Here`:
    /// primary with a lease), a write has no replica to wait for and a read no change waiting
    /// for replicas before it. Everything else (another shard or host, a lease not yet
    /// granted, a refusal, a replicated write, a read held behind one, an oversized value)
    /// takes the native request path, which forwards, defers, refuses, replicates or holds
    /// exactly as for a native client's request.
    ///
    /// Cost: two loads and the partition map's owner and lease checks (as `on_frame` does).
    #[inline]
    fn served_here(&self, p: usize, write: bool, value: &[u8]) -> bool {
        let d = &*self.d;
        owner_shard(p as u32, d.core.shards) == d.core.shard
            && value.len() as u64 <= d.core.cfg.object_bytes_max
            && matches!(d.hosts.host_route(p, false), HostRoute::Here)
            && !d.hosts.via_copies(p, !write)
    }

    /// Applies `op` on this shard's store and answers it in request order: rendered as RESP
    /// straight into the send batch when nothing earlier waits (the hot path), else rendered
    /// now and queued as RESP bytes behind the earlier answers (a part of a multi-key command
    /// is queued as a native answer instead, as `on_frame` queues a local answer, so that the
    /// parts combine in order).
    ///
    /// HOT PATH. Cost of a GET: one table probe; the stored value goes to sendmsg by reference
    /// (no copy, no allocation). A SET copies its value once (receive buffer to the store).
    /// No native request is serialized or validated.
    fn serve_here(&mut self, k: KeyRef<'_>, what: Direct, value: &[u8], p: Pending) {
        let now = self.d.core.now_ms;
        let core = &mut *self.d.core;
        let conn = &mut self.d.conns[self.slot as usize];
        let rc = conn.resp.as_mut().expect("a RESP connection");
        if conn.slots.is_empty() {
            rc.out.push(p);
            what.run(core, k, value, now, &mut BatchSink::of(conn));
        } else if matches!(p.shape, Shape::Part { .. }) {
            // A part of a multi-key command combines with its other parts in order: queue its
            // native answer, rendered when its turn comes.
            rc.out.push(p);
            let mut bytes = Vec::new();
            what.run(core, k, value, now, &mut VecSink(&mut bytes));
            conn.slots.push_back(Slot::Ready(bytes));
        } else {
            // Behind an answer from another shard: render it now and queue the RESP bytes (a
            // copy of a value, no native answer encoded and decoded later).
            let batch = &mut self.scratch.alone;
            what.run(
                core,
                k,
                value,
                now,
                &mut AloneSink(&mut rc.out, batch, Some(p)),
            );
            let (bytes, _) = batch.take_parts();
            conn.slots.push_back(Slot::Raw(bytes));
        }
    }
}

impl commands::Host for Glue<'_, '_> {
    fn reply(&mut self, bytes: &[u8]) {
        let conn = self.conn();
        if conn.slots.is_empty() {
            conn.filling.bytes_mut().extend_from_slice(bytes);
        } else {
            conn.slots.push_back(Slot::Raw(bytes.to_vec()));
        }
    }

    fn request(&mut self, req: &Request, value: &[u8], p: Pending) {
        if let Request::Meta { key } = req {
            let hash = key_hash(key.ns, &key.key);
            if self.served_here(partition_of(hash) as usize, false, b"") {
                let k = KeyRef::with_hash(key.ns, &key.key, hash);
                return self.serve_here(k, Direct::Meta, b"", p);
            }
        }
        let conn = self.conn();
        conn.resp.as_mut().expect("a RESP connection").out.push(p);
        let mut frame = std::mem::take(&mut self.scratch.frame);
        frame.clear();
        codec::encode_request(&mut frame, 0, req, value);
        let copy;
        let buf = if (frame.as_ptr() as usize) % 8 == 0 {
            &frame[..]
        } else {
            copy = AlignedBuf::from_slice(&frame);
            copy.as_slice()
        };
        let parsed = frame::parse(buf, usize::MAX)
            .ok()
            .flatten()
            .expect("a frame just encoded parses");
        let (archive, value, n) = (parsed.archive, parsed.value, parsed.frame_bytes);
        self.d
            .on_frame(self.slot, self.generation, 0, archive, value, n, buf);
        self.scratch.frame = frame;
    }

    fn redis(&mut self, ns: u32, key: &[u8], op: RedisOp, value: &[u8], p: Pending) {
        let hash = key_hash(ns, key);
        if self.served_here(partition_of(hash) as usize, !op.is_read_only(), value) {
            return self.serve_here(
                KeyRef::with_hash(ns, key, hash),
                Direct::Redis(op),
                value,
                p,
            );
        }
        let mut k = std::mem::take(&mut self.scratch.key);
        k.clear();
        k.extend_from_slice(key);
        let req = Request::Redis {
            key: Key { ns, key: k },
            op,
        };
        self.request(&req, value, p);
        if let Request::Redis { key, .. } = req {
            self.scratch.key = key.key;
        }
    }

    fn close(&mut self) {
        let conn = self.conn();
        conn.close_after_flush = true;
        conn.read_closed = true;
    }

    fn set_resp3(&mut self, on: bool) {
        if let Some(r) = self.conn().resp.as_mut() {
            r.out.resp3 = on;
        }
    }

    fn cfg(&self) -> &crate::config::Config {
        &self.d.core.cfg
    }

    fn now_ms(&self) -> u64 {
        self.d.core.now_ms
    }

    fn shards(&self) -> usize {
        self.d.core.shards
    }

    fn counters(&self) -> (u64, u64) {
        (self.d.core.connections, super::resident_bytes())
    }

    fn uptime_s(&self) -> u64 {
        self.d.conns.started.elapsed().as_secs()
    }

    fn topology(&self) -> Topology {
        self.d.hosts.topology(&self.d.core.cfg)
    }

    fn owner(&self, ns: u32, key: &[u8]) -> Owner {
        let p = partition_of(key_hash(ns, key)) as usize;
        match self.d.hosts.host_route(p, false) {
            HostRoute::Here | HostRoute::Wait => Owner::Here,
            HostRoute::Remote(host) => {
                match self.d.hosts.data.view.as_ref().and_then(|v| v.addr(host)) {
                    Some(a) => Owner::Remote(a.svr().to_string()),
                    None => Owner::Nobody,
                }
            }
            HostRoute::Refuse(..) => Owner::Nobody,
        }
    }

    fn shard_of(&self, ns: u32, key: &[u8]) -> usize {
        crate::server::exec::owner_shard(partition_of(key_hash(ns, key)), self.d.core.shards)
    }

    fn own_shard(&self) -> usize {
        self.d.core.shard
    }

    fn stamp_here(&self, ns: u32, key: &[u8]) -> Result<commands::Stamp, commands::OffShard> {
        if self.shard_of(ns, key) != self.own_shard() || !matches!(self.owner(ns, key), Owner::Here)
        {
            return Err(commands::OffShard);
        }
        let k = crate::store::KeyRef::new(ns, key);
        Ok(self
            .d
            .core
            .store
            .export(k, self.d.core.now_ms)
            .map(|(st, _)| (st.version, st.created_ms)))
    }

    fn watch_stamp(&self, id: u64) -> Option<commands::Stamp> {
        let conn = &self.d.conns[self.slot as usize];
        conn.resp.as_ref()?.out.watch_stamp(id)
    }

    fn clear_watch(&mut self) {
        if let Some(r) = self.conn().resp.as_mut() {
            r.out.clear_watch();
        }
    }

    fn role(&self) -> Option<crate::auth::users::Role> {
        self.d.conns[self.slot as usize].role
    }

    fn login(&mut self, user: Option<&[u8]>, password: &[u8]) -> Result<(), &'static str> {
        let Some(users) = self.d.core.cfg.users.clone() else {
            return Ok(());
        };
        match users.verify(user, password) {
            Ok(role) => {
                let conn = self.conn();
                conn.role = Some(role);
                conn.user = Some(String::from_utf8_lossy(user.unwrap_or(b"default")).into());
                Ok(())
            }
            Err(crate::auth::users::AuthFail::Busy) => Err(commands::AUTH_BUSY),
            Err(_) => {
                tracing::info!(
                    shard = self.d.core.shard,
                    "Redis client authentication failed for user '{}'",
                    String::from_utf8_lossy(user.unwrap_or(b"default"))
                );
                Err(commands::WRONGPASS)
            }
        }
    }
}

impl RespShard {
    /// Serves every whole RESP command in the connection's receive buffer, in order.
    pub fn process(&mut self, d: &mut Dispatch<'_>, slot: u32, generation: u32) {
        let cfg = d.core.cfg.clone();
        let full = Limits {
            bulk_bytes_max: cfg.object_bytes_max as usize,
            items_max: cfg.resp_multibulk_items_max as usize,
            inline_bytes_max: cfg.resp_inline_bytes_max as usize,
        };
        // Before AUTH (credentials configured), a command is small: `HELLO 3 AUTH u p
        // SETNAME n` has 7 items; no argument may exceed unauth_frame_bytes_max.
        let unauth_bytes = cfg.unauth_frame_bytes_max as usize;
        let before_auth = Limits {
            bulk_bytes_max: full.bulk_bytes_max.min(unauth_bytes),
            items_max: full.items_max.min(UNAUTH_ITEMS_MAX),
            inline_bytes_max: full.inline_bytes_max.min(unauth_bytes),
        };
        let conn = &mut d.conns[slot as usize];
        let rbuf = std::mem::replace(&mut conn.rbuf, AlignedBuf::with_capacity(0));
        let rc = conn.resp.as_mut().expect("a RESP connection");
        let mut session = std::mem::take(&mut rc.session);
        let mut args = std::mem::take(&mut rc.args);
        let mut scratch = std::mem::take(&mut rc.scratch);
        // The pass looked up this buffer's keys already (`prefetch`).
        let mut pos = 0;
        let mut need = 0;
        while pos < rbuf.len() {
            let bytes = &rbuf.as_slice()[pos..];
            let lim = if d.conns[slot as usize].role.is_some() {
                &full
            } else {
                &before_auth
            };
            match parse::parse(bytes, lim, &mut args, &mut scratch) {
                Ok(Parsed::Incomplete { need: n }) => {
                    need = n;
                    break;
                }
                Ok(Parsed::Command { consumed, inline }) => {
                    let a = Args {
                        base: if inline { &scratch[..] } else { bytes },
                        ranges: &args,
                    };
                    if let Some(rc) = d.conns[slot as usize].resp.as_mut() {
                        rc.store_wide = session.sees_store_wide();
                    }
                    let mut glue = Glue {
                        d: &mut *d,
                        scratch: &mut *self,
                        slot,
                        generation,
                    };
                    commands::execute(&mut session, &a, &mut glue);
                    pos += consumed;
                    if d.conns[slot as usize].close_after_flush {
                        pos = rbuf.len();
                        break;
                    }
                }
                Err(e) => {
                    tracing::debug!(shard = d.core.shard, "closing a RESP connection: {}", e.0);
                    let mut out = Vec::new();
                    reply::error(&mut out, &format!("ERR {}", e.0));
                    let mut glue = Glue {
                        d: &mut *d,
                        scratch: &mut *self,
                        slot,
                        generation,
                    };
                    commands::Host::reply(&mut glue, &out);
                    commands::Host::close(&mut glue);
                    pos = rbuf.len();
                    break;
                }
            }
        }
        let conn = &mut d.conns[slot as usize];
        conn.rbuf = rbuf;
        conn.rbuf.consume(pos);
        let rc = conn.resp.as_mut().expect("a RESP connection");
        rc.session = session;
        rc.args = args;
        rc.scratch = scratch;
        rc.need = need;
    }
}
