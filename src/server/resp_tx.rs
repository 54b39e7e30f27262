//! A Redis transaction (`MULTI` ... `EXEC`, `Request::RedisTx`) run on the shard that serves its
//! keys: the connection that queued it may be on another shard or another host, so the whole
//! batch travels as one request on the ordinary routing path (relayed to the partition's
//! primary host, forwarded to its shard) and runs here in one go. A shard runs one thing at a
//! time, so nothing else reads or writes between two of its commands: atomic and isolated.
//!
//! Each queued command goes through the same command table as on a RESP connection
//! (`resp::commands::execute`) with a [`Host`] that applies its native requests to this shard's
//! store at once and renders each answer as RESP; the replies, in order, make `EXEC`'s array.
//! The caller (`execute_replicated`) replicates every key the batch changed before the answer
//! leaves, as for a single write.
//!
//! Cost: per queued command one rkyv serialization and validation of its native request and a
//! copy of the answer's value into the reply. Transactions are not the hot path.

use stategrid_proto::hash::REDIS_NS_BASE;
use stategrid_proto::{
    ArchivedRequest, ErrorCode, ErrorReply, Key, RedisOp, Request, Response, codec, frame,
    key_hash, partition_of,
};

use super::exec::{Core, Sink};
use crate::net::{AlignedBuf, SendBatch};
use crate::resp::commands::{self, Args, OffShard, Owner, Stamp, Topology};
use crate::resp::{Pending, RespOut, Session, ValRef, reply};
use crate::store::{KeyRef, Value};

/// Runs the transaction `req` (a `RedisTx` whose `key` hashes to `h`) and answers its whole
/// RESP reply as a `Value`.
pub fn run(
    core: &mut Core,
    req: &ArchivedRequest,
    h: u64,
    now_ms: u64,
    id: u32,
    sink: &mut impl Sink,
) {
    let ArchivedRequest::RedisTx {
        key,
        resp3,
        keys,
        watched,
        commands,
    } = req
    else {
        unreachable!("resp_tx::run serves RedisTx");
    };
    let ns = key.ns.to_native();
    let resp3 = *resp3;
    // Every key must be served by this one step (see `Core::colocated`).
    for k in keys
        .iter()
        .map(|k| k.as_slice())
        .chain(watched.iter().map(|w| w.key.as_slice()))
    {
        if let Err(e) = core.colocated(h, ns, k) {
            return sink.respond(id, &Response::Error(e), &[]);
        }
    }
    let mut out = Vec::with_capacity(64);
    // A watched key that changed since WATCH aborts the transaction: a null reply.
    let changed = watched.iter().any(|w| {
        let now = stamp(core, ns, w.key.as_slice(), now_ms);
        let then = w
            .exists
            .then(|| (w.version.to_native(), w.created_ms.to_native()));
        now != then
    });
    if changed {
        reply::null_array(&mut out, resp3);
    } else {
        reply::array(&mut out, commands.len());
        let mut render = RespOut::default();
        render.resp3 = resp3;
        let mut host = TxHost {
            core,
            ns,
            tx_hash: h,
            now_ms,
            out,
            render,
            batch: SendBatch::default(),
            frame: Vec::new(),
        };
        let mut session = Session::new(0, now_ms);
        session.db = (ns & !REDIS_NS_BASE) as u16;
        session.resp3 = resp3;
        let mut ranges = Vec::new();
        let mut base = Vec::new();
        for cmd in commands.iter() {
            base.clear();
            ranges.clear();
            for arg in cmd.iter() {
                let start = base.len();
                base.extend_from_slice(arg.as_slice());
                ranges.push(start..base.len());
            }
            let a = Args {
                base: &base,
                ranges: &ranges,
            };
            commands::execute(&mut session, &a, &mut host);
        }
        out = host.out;
    }
    let meta = super::exec::bare_meta(out.len());
    sink.respond(
        id,
        &Response::Value {
            meta,
            lock_token: None,
        },
        &[Value::from(out)],
    );
}

/// An object's (version, created_ms) now, as WATCH records it.
fn stamp(core: &Core, ns: u32, key: &[u8], now_ms: u64) -> Stamp {
    core.store
        .export(KeyRef::new(ns, key), now_ms)
        .map(|(st, _)| (st.version, st.created_ms))
}

/// The commands' view of the shard while a transaction runs on it.
struct TxHost<'a> {
    core: &'a mut Core,
    /// The transaction's namespace and routing key's hash: every request must be served with it.
    ns: u32,
    tx_hash: u64,
    now_ms: u64,
    /// EXEC's reply so far.
    out: Vec<u8>,
    render: RespOut,
    batch: SendBatch,
    /// The native frame a command's request is encoded into (reused).
    frame: Vec<u8>,
}

/// Renders each answer straight into the transaction's reply (no answer frame is encoded).
struct RenderSink<'a> {
    render: &'a mut RespOut,
    batch: &'a mut SendBatch,
}

impl Sink for RenderSink<'_> {
    fn respond(&mut self, _request_id: u32, resp: &Response, values: &[Value]) {
        let joined;
        let val = match values {
            [] => None,
            [v] => Some(ValRef::Bytes(&v[..])),
            many => {
                joined = many
                    .iter()
                    .flat_map(|v| v.iter().copied())
                    .collect::<Vec<u8>>();
                Some(ValRef::Bytes(&joined[..]))
            }
        };
        self.render.render(self.batch, resp, val);
    }
}

impl TxHost<'_> {
    fn answer_error(&mut self, p: Pending, message: &str) {
        self.render.push(p);
        let e = Response::Error(ErrorReply::with_message(
            ErrorCode::InvalidRequest,
            0,
            message,
        ));
        self.render.render(&mut self.batch, &e, None);
        self.flush();
    }

    fn flush(&mut self) {
        self.out.append(self.batch.bytes_mut());
    }
}

impl commands::Host for TxHost<'_> {
    /// The connection's role was checked when `EXEC` sent the transaction (`RedisTx` needs
    /// read-write); inside it nothing more is asked.
    fn role(&self) -> Option<crate::auth::users::Role> {
        Some(crate::auth::users::Role::ReadWrite)
    }

    /// `AUTH` inside `MULTI` is refused: a transaction cannot change who the connection is.
    fn login(&mut self, _user: Option<&[u8]>, _password: &[u8]) -> Result<(), &'static str> {
        Err(commands::WRONGPASS)
    }

    fn reply(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    fn request(&mut self, req: &Request, value: &[u8], p: Pending) {
        let Some(k) = req.key() else {
            // Namespace-wide requests (INFO keyspace...) span every shard: not inside a
            // transaction, which runs on one.
            return self.answer_error(
                p,
                "this command is not served inside MULTI by stategrid (a transaction runs on one shard); send it outside the transaction",
            );
        };
        if matches!(req, Request::RedisTx { .. }) {
            // Only a RESP connection's EXEC makes one; never nested.
            return self.answer_error(p, "EXEC inside a transaction");
        }
        if k.ns != self.ns || self.core.colocated(self.tx_hash, k.ns, &k.key).is_err() {
            return self.answer_error(
                p,
                "a key of this transaction is not served by the shard running it",
            );
        }
        self.frame.clear();
        codec::encode_request(&mut self.frame, 0, req, value);
        let buf = AlignedBuf::from_slice(&self.frame);
        let Some(parsed) = frame::parse(buf.as_slice(), usize::MAX).ok().flatten() else {
            return self.answer_error(p, "internal: a request did not frame");
        };
        let Ok(archived) = codec::decode_request(parsed.archive) else {
            return self.answer_error(p, "internal: a request did not decode");
        };
        self.render.push(p);
        let mut sink = RenderSink {
            render: &mut self.render,
            batch: &mut self.batch,
        };
        self.core
            .execute(archived, parsed.value, self.now_ms, 0, &mut sink);
        self.flush();
    }

    fn redis(&mut self, ns: u32, key: &[u8], op: RedisOp, value: &[u8], p: Pending) {
        let req = Request::Redis {
            key: Key {
                ns,
                key: key.to_vec(),
            },
            op,
        };
        self.request(&req, value, p);
    }

    fn close(&mut self) {}

    fn set_resp3(&mut self, on: bool) {
        self.render.resp3 = on;
    }

    fn cfg(&self) -> &crate::config::Config {
        &self.core.cfg
    }

    fn now_ms(&self) -> u64 {
        self.now_ms
    }

    fn shards(&self) -> usize {
        self.core.shards
    }

    fn counters(&self) -> (u64, u64) {
        (self.core.connections, 0)
    }

    fn uptime_s(&self) -> u64 {
        0
    }

    fn topology(&self) -> Topology {
        Topology::default()
    }

    fn owner(&self, _ns: u32, _key: &[u8]) -> Owner {
        Owner::Here
    }

    fn shard_of(&self, ns: u32, key: &[u8]) -> usize {
        super::exec::owner_shard(partition_of(key_hash(ns, key)), self.core.shards)
    }

    fn own_shard(&self) -> usize {
        self.core.shard
    }

    fn stamp_here(&self, ns: u32, key: &[u8]) -> Result<Stamp, OffShard> {
        if self.shard_of(ns, key) != self.core.shard {
            return Err(OffShard);
        }
        Ok(stamp(self.core, ns, key, self.now_ms))
    }

    fn watch_stamp(&self, _id: u64) -> Option<Stamp> {
        None
    }

    fn clear_watch(&mut self) {}
}
