//! The command table: each Redis command checked (arity, options, exactly Redis's errors) and
//! turned into literal replies and typed native requests.
//!
//! A command never touches the store: keyed work becomes `Request::Redis` (or `Meta`,
//! `ReadAndLock`...) sent through [`Host::redis`]/[`Host::request`], which is the shard's
//! ordinary routing path. Multi-key commands send one request per key and combine the answers
//! (`render::Combine`); they are not atomic across keys, as in Redis Cluster (MSET there must
//! be single-slot too; here it is accepted and documented as per-key).

use std::ops::Range;
use std::rc::Rc;

use stategrid_proto::hash::{redis_ns, redis_slot};
use stategrid_proto::{
    ExpireCond, Key, RedisOp, Request, SetCond, SetExpire, ValueKind, WatchStamp,
};

use super::render::{Combine, Pending, Shape};
use super::{REDIS_VERSION, reply};
use crate::auth::users::Role;
use crate::config::Config;
use crate::store::{hash, parse_i64};

/// A command's arguments: ranges into one buffer (the receive buffer, the inline scratch, or
/// a queued transaction command's copy).
#[derive(Clone, Copy)]
pub struct Args<'a> {
    pub base: &'a [u8],
    pub ranges: &'a [Range<usize>],
}

impl<'a> Args<'a> {
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub fn get(&self, i: usize) -> &'a [u8] {
        &self.base[self.ranges[i].clone()]
    }
}

/// One node of the store as cluster commands show it.
#[derive(Debug, Clone)]
pub struct TopoNode {
    pub id: u64,
    pub ip: String,
    pub port: u16,
}

/// A run of slots with one primary (adjacent partitions merged).
#[derive(Debug, Clone)]
pub struct SlotRange {
    pub start: u16,
    pub end: u16,
    /// Index into `nodes`.
    pub primary: usize,
    pub replicas: Vec<usize>,
}

/// The store as cluster-aware clients route by it.
#[derive(Debug, Clone, Default)]
pub struct Topology {
    pub me: u64,
    pub epoch: u64,
    pub nodes: Vec<TopoNode>,
    pub ranges: Vec<SlotRange>,
}

/// Where a key is served, for cluster-mode clients.
pub enum Owner {
    /// This host serves it (or will once its lease arrives): send the request.
    Here,
    /// Another host is its primary: `ip:port` for `-MOVED`.
    Remote(String),
    /// No primary now (failover in progress).
    Nobody,
}

/// An object's (version, created_ms) for WATCH; None when absent.
pub type Stamp = Option<(u64, u64)>;

/// The key is not served by the connection's shard of this host (no transaction there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffShard;

/// A WATCHed key and its stamp when watched.
struct Watched {
    ns: u32,
    key: Vec<u8>,
    stamp: WatchState,
}

/// A watched key's stamp: read on this shard at WATCH, or coming as the answer of a `Meta`
/// sent to the key's shard or host (kept by the connection's renderer under an id).
#[derive(Clone, Copy)]
enum WatchState {
    Known(Stamp),
    Pending(u64),
}

/// What a command needs from the shard. Implemented by the shard's RESP connection glue.
pub trait Host {
    /// A literal reply, in order after the answers of earlier requests.
    fn reply(&mut self, bytes: &[u8]);
    /// A native request on the ordinary routing path; its answer is rendered by `p`.
    fn request(&mut self, req: &Request, value: &[u8], p: Pending);
    /// `Request::Redis` for (`ns`, `key`), built without allocating its key.
    fn redis(&mut self, ns: u32, key: &[u8], op: RedisOp, value: &[u8], p: Pending);
    /// Close the connection once what is queued is sent.
    fn close(&mut self);
    /// Render later answers as RESP3 (or RESP2).
    fn set_resp3(&mut self, on: bool);
    fn cfg(&self) -> &Config;
    fn now_ms(&self) -> u64;
    fn shards(&self) -> usize;
    /// Client connections on this shard, and the process's resident bytes.
    fn counters(&self) -> (u64, u64);
    fn uptime_s(&self) -> u64;
    fn topology(&self) -> Topology;
    /// Where the key's partition is served.
    fn owner(&self, ns: u32, key: &[u8]) -> Owner;
    /// The shard (of this host) that owns a key: transactions need all keys on one.
    fn shard_of(&self, ns: u32, key: &[u8]) -> usize;
    /// This connection's shard.
    fn own_shard(&self) -> usize;
    /// The object's (version, created_ms) read on this shard now, for WATCH; `Err` when the
    /// key is not served by this connection's shard of this host. None: absent.
    fn stamp_here(&self, ns: u32, key: &[u8]) -> Result<Stamp, OffShard>;
    /// The stamp of a key watched through a `Meta` request (`Shape::Watch { id }`), if its
    /// answer arrived.
    fn watch_stamp(&self, id: u64) -> Option<Stamp>;
    /// The watch ended: forget the stamps that arrived.
    fn clear_watch(&mut self);
    /// What this connection may do: None until it authenticates (only when the server has
    /// client credentials configured).
    fn role(&self) -> Option<Role>;
    /// Checks credentials against the configured users (`user` None: `default`); on success
    /// the connection takes the user's role. Called only when users are configured. Err:
    /// the RESP error to answer.
    fn login(&mut self, user: Option<&[u8]>, password: &[u8]) -> Result<(), &'static str>;
}

/// A command queued by MULTI: its own copy of the arguments.
struct Queued {
    base: Vec<u8>,
    ranges: Vec<Range<usize>>,
}

/// Per-connection state of the Redis protocol (database, name, transaction...).
#[derive(Default)]
pub struct Session {
    pub id: u64,
    pub db: u16,
    pub name: Option<Vec<u8>>,
    pub lib_name: Option<String>,
    pub lib_ver: Option<String>,
    /// Sent CLUSTER SLOTS/SHARDS/NODES or READONLY: keys of other hosts get -MOVED.
    pub cluster: bool,
    /// Came in on `resp_port`, the face of a single Redis server (see [`Session::sees_store_wide`]).
    pub whole_store: bool,
    pub resp3: bool,
    pub created_ms: u64,
    multi: Option<Vec<Queued>>,
    /// WATCHed keys and their (version, created_ms) when watched.
    watched: Vec<Watched>,
    /// A command queued in MULTI was refused: EXEC answers EXECABORT.
    multi_error: bool,
    /// Bytes of the queued commands' arguments (bounded: the batch travels as one frame).
    multi_bytes: usize,
    /// Id of the next WATCH answered by a `Meta` (see `WatchState::Pending`).
    next_watch: u64,
    /// Reused buffer for literal replies.
    out: Vec<u8>,
}

/// Command flags as COMMAND reports them.
const W: &[&str] = &["write"];
const R: &[&str] = &["readonly", "fast"];
const A: &[&str] = &["fast"];

type Run = fn(&mut Session, &Args<'_>, &mut dyn Host);

/// A command: Redis's arity convention (N exact, -N at least N), key positions for COMMAND,
/// cluster routing and transactions.
pub struct Spec {
    pub name: &'static str,
    pub arity: i32,
    pub flags: &'static [&'static str],
    pub first: i32,
    pub last: i32,
    pub step: i32,
    run: Run,
}

macro_rules! spec {
    ($name:literal, $arity:expr, $flags:expr, $first:expr, $last:expr, $step:expr, $run:expr) => {
        Spec {
            name: $name,
            arity: $arity,
            flags: $flags,
            first: $first,
            last: $last,
            step: $step,
            run: $run,
        }
    };
}

/// Every command served. The hot ones first: lookup is a scan of this table. A command that
/// is a variant of another (a unit, an option, a shape) names the shared function and its
/// argument here rather than in a one-line wrapper of its own.
#[rustfmt::skip]
pub static TABLE: &[Spec] = &[
    spec!("get", 2, R, 1, 1, 1, get),
    spec!("set", -3, W, 1, 1, 1, set),
    spec!("del", -2, W, 1, -1, 1, |s, a, h| per_key(s, a, h, RedisOp::Del)),
    spec!("expire", -3, W, 1, 1, 1, |s, a, h| expire_generic(s, a, h, "ex", "expire")),
    spec!("exists", -2, R, 1, -1, 1, |s, a, h| per_key(s, a, h, RedisOp::Exists)),
    spec!("hget", 3, R, 1, 1, 1, |s, a, h| hfields(s, a, h, RedisOp::HGet, Shape::Plain)),
    spec!("hset", -4, W, 1, 1, 1, |s, a, h| hset_generic(s, a, h, "hset", plain())),
    spec!("hmget", -3, R, 1, 1, 1, |s, a, h| hfields(s, a, h, RedisOp::HMGet, Shape::Plain)),
    spec!("hmset", -4, W, 1, 1, 1, |s, a, h| hset_generic(s, a, h, "hmset", Pending::of(Shape::Ok))),
    spec!("hgetall", 2, R, 1, 1, 1, |s, a, h| hfields(s, a, h, RedisOp::HGetAll, Shape::Map)),
    spec!("ping", -1, A, 0, 0, 0, ping),
    spec!("mget", -2, R, 1, -1, 1, mget),
    spec!("mset", -3, W, 1, -1, 2, mset),
    spec!("setex", 4, W, 1, 1, 1, |s, a, h| setex_unit(s, a, h, "ex", "setex")),
    spec!("psetex", 4, W, 1, 1, 1, |s, a, h| setex_unit(s, a, h, "px", "psetex")),
    spec!("setnx", 3, W, 1, 1, 1, setnx),
    spec!("getex", -2, W, 1, 1, 1, getex),
    spec!("getdel", 2, W, 1, 1, 1, getdel),
    spec!("getset", 3, W, 1, 1, 1, getset),
    spec!("incr", 2, W, 1, 1, 1, |s, a, h| incr_by(s, a, h, Some(1))),
    spec!("incrby", 3, W, 1, 1, 1, |s, a, h| incr_by(s, a, h, int_arg(a.get(2)))),
    spec!("decr", 2, W, 1, 1, 1, |s, a, h| incr_by(s, a, h, Some(-1))),
    spec!("decrby", 3, W, 1, 1, 1, decrby),
    spec!("append", 3, W, 1, 1, 1, append),
    spec!("strlen", 2, R, 1, 1, 1, strlen),
    spec!("unlink", -2, W, 1, -1, 1, |s, a, h| per_key(s, a, h, RedisOp::Del)),
    spec!("touch", -2, R, 1, -1, 1, |s, a, h| per_key(s, a, h, RedisOp::Exists)),
    spec!("pexpire", -3, W, 1, 1, 1, |s, a, h| expire_generic(s, a, h, "px", "pexpire")),
    spec!("expireat", -3, W, 1, 1, 1, |s, a, h| expire_generic(s, a, h, "exat", "expireat")),
    spec!("pexpireat", -3, W, 1, 1, 1, |s, a, h| expire_generic(s, a, h, "pxat", "pexpireat")),
    spec!("persist", 2, W, 1, 1, 1, persist),
    spec!("ttl", 2, R, 1, 1, 1, |s, a, h| meta(s, a, h, false, false)),
    spec!("pttl", 2, R, 1, 1, 1, |s, a, h| meta(s, a, h, true, false)),
    spec!("expiretime", 2, R, 1, 1, 1, |s, a, h| meta(s, a, h, false, true)),
    spec!("pexpiretime", 2, R, 1, 1, 1, |s, a, h| meta(s, a, h, true, true)),
    spec!("type", 2, R, 1, 1, 1, type_),
    spec!("rename", 3, W, 1, 2, 1, |s, a, h| rename_generic(s, a, h, false)),
    spec!("renamenx", 3, W, 1, 2, 1, |s, a, h| rename_generic(s, a, h, true)),
    spec!("scan", -2, R, 0, 0, 0, scan),
    spec!("keys", 2, R, 0, 0, 0, keys),
    spec!("hdel", -3, W, 1, 1, 1, |s, a, h| hfields(s, a, h, RedisOp::HDel, Shape::Plain)),
    spec!("hexists", 3, R, 1, 1, 1, |s, a, h| hfields(s, a, h, RedisOp::HExists, Shape::Plain)),
    spec!("hlen", 2, R, 1, 1, 1, |s, a, h| hfields(s, a, h, RedisOp::HLen, Shape::Plain)),
    spec!("hkeys", 2, R, 1, 1, 1, |s, a, h| hfields(s, a, h, RedisOp::HKeys, Shape::Plain)),
    spec!("hvals", 2, R, 1, 1, 1, |s, a, h| hfields(s, a, h, RedisOp::HVals, Shape::Plain)),
    spec!("hincrby", 4, W, 1, 1, 1, hincrby),
    spec!("hsetnx", 4, W, 1, 1, 1, hsetnx),
    spec!("hstrlen", 3, R, 1, 1, 1, |s, a, h| hfields(s, a, h, RedisOp::HStrlen, Shape::Plain)),
    spec!("hscan", -3, R, 1, 1, 1, hscan),
    spec!("sg.lock", 2, W, 1, 1, 1, sg_lock),
    spec!("sg.unlock", 3, W, 1, 1, 1, sg_unlock),
    spec!("sg.setunlock", 4, W, 1, 1, 1, sg_setunlock),
    spec!("multi", 1, A, 0, 0, 0, multi),
    spec!("exec", 1, A, 0, 0, 0, exec),
    spec!("discard", 1, A, 0, 0, 0, discard),
    spec!("watch", -2, A, 1, -1, 1, watch),
    spec!("unwatch", 1, A, 0, 0, 0, unwatch),
    spec!("echo", 2, A, 0, 0, 0, echo),
    spec!("hello", -1, A, 0, 0, 0, hello),
    spec!("auth", -2, A, 0, 0, 0, auth),
    spec!("quit", -1, A, 0, 0, 0, quit),
    spec!("reset", 1, A, 0, 0, 0, reset),
    spec!("select", 2, A, 0, 0, 0, select),
    spec!("client", -2, A, 0, 0, 0, client),
    spec!("command", -1, A, 0, 0, 0, command),
    spec!("info", -1, A, 0, 0, 0, info),
    spec!("config", -2, A, 0, 0, 0, config),
    spec!("dbsize", 1, R, 0, 0, 0, dbsize),
    spec!("flushdb", -1, W, 0, 0, 0, flushdb),
    spec!("flushall", -1, W, 0, 0, 0, flushall),
    spec!("time", 1, A, 0, 0, 0, time),
    spec!("cluster", -2, A, 0, 0, 0, super::cluster::cluster),
    spec!("readonly", 1, A, 0, 0, 0, super::cluster::readonly),
    spec!("readwrite", 1, A, 0, 0, 0, super::cluster::ok),
    spec!("asking", 1, A, 0, 0, 0, super::cluster::ok),
];

/// Commands of the data types and features stategrid does not serve, by family.
const OUT_OF_SCOPE: &[(&str, &[&str])] = &[
    (
        "lists are",
        &[
            "lpush",
            "rpush",
            "lpop",
            "rpop",
            "lrange",
            "llen",
            "lindex",
            "lset",
            "lrem",
            "ltrim",
            "linsert",
            "lpos",
            "lmove",
            "blpop",
            "brpop",
            "blmove",
            "rpoplpush",
            "lpushx",
            "rpushx",
            "lmpop",
            "blmpop",
            "brpoplpush",
        ],
    ),
    (
        "sets are",
        &[
            "sadd",
            "srem",
            "smembers",
            "sismember",
            "smismember",
            "scard",
            "spop",
            "srandmember",
            "sunion",
            "sinter",
            "sdiff",
            "sunionstore",
            "sinterstore",
            "sdiffstore",
            "smove",
            "sscan",
            "sintercard",
        ],
    ),
    (
        "sorted sets are",
        &[
            "zadd",
            "zrem",
            "zrange",
            "zscore",
            "zcard",
            "zincrby",
            "zrank",
            "zrevrank",
            "zrangebyscore",
            "zrevrange",
            "zrevrangebyscore",
            "zcount",
            "zremrangebyscore",
            "zremrangebyrank",
            "zpopmin",
            "zpopmax",
            "bzpopmin",
            "bzpopmax",
            "zscan",
            "zmscore",
            "zrangestore",
            "zunionstore",
            "zinterstore",
            "zlexcount",
            "zrangebylex",
        ],
    ),
    (
        "streams are",
        &[
            "xadd",
            "xread",
            "xrange",
            "xrevrange",
            "xlen",
            "xgroup",
            "xreadgroup",
            "xack",
            "xdel",
            "xtrim",
            "xinfo",
            "xpending",
            "xclaim",
            "xautoclaim",
        ],
    ),
    (
        "Lua scripting and functions are",
        &[
            "eval",
            "evalsha",
            "eval_ro",
            "evalsha_ro",
            "script",
            "function",
            "fcall",
            "fcall_ro",
        ],
    ),
    (
        "publish/subscribe is",
        &[
            "subscribe",
            "psubscribe",
            "unsubscribe",
            "punsubscribe",
            "publish",
            "pubsub",
            "ssubscribe",
            "sunsubscribe",
            "spublish",
        ],
    ),
];

fn upper<'b>(raw: &[u8], buf: &'b mut [u8; 32]) -> &'b [u8] {
    if raw.len() > buf.len() {
        return &[];
    }
    for (d, s) in buf.iter_mut().zip(raw) {
        *d = s.to_ascii_lowercase();
    }
    &buf[..raw.len()]
}

pub fn lookup(name_lower: &[u8]) -> Option<&'static Spec> {
    TABLE.iter().find(|s| s.name.as_bytes() == name_lower)
}

fn arity_ok(arity: i32, n: usize) -> bool {
    if arity >= 0 {
        n == arity as usize
    } else {
        n >= (-arity) as usize
    }
}

/// The key positions of a command (Redis's first/last/step).
pub fn keys_of<'a>(sp: &Spec, a: &Args<'a>) -> Vec<&'a [u8]> {
    if sp.first <= 0 {
        return Vec::new();
    }
    let last = if sp.last < 0 {
        a.len() as i32 + sp.last
    } else {
        sp.last.min(a.len() as i32 - 1)
    };
    (sp.first..=last)
        .step_by(sp.step.max(1) as usize)
        .map(|i| a.get(i as usize))
        .collect()
}

impl Session {
    pub fn new(id: u64, now_ms: u64) -> Session {
        Session {
            id,
            created_ms: now_ms,
            ..Default::default()
        }
    }

    fn ns(&self) -> u32 {
        redis_ns(self.db)
    }

    /// Whether SCAN, KEYS, DBSIZE and FLUSHDB cover the whole store: on `resp_port`, out of
    /// cluster mode. On `svr_port` (the cluster face CLUSTER SLOTS advertises) they cover the
    /// node asked, as a Redis Cluster node's do: a cluster client's per-node connections send
    /// nothing that tells them from a plain client's, and it visits every node itself.
    pub fn sees_store_wide(&self) -> bool {
        self.whole_store && !self.cluster
    }

    fn lit(&mut self, h: &mut dyn Host, f: impl FnOnce(&mut Vec<u8>)) {
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        f(&mut out);
        h.reply(&out);
        self.out = out;
    }

    fn err(&mut self, h: &mut dyn Host, e: &str) {
        self.lit(h, |o| reply::error(o, e));
    }

    pub fn in_multi(&self) -> bool {
        self.multi.is_some()
    }
}

fn unknown_command(raw: &[u8], a: &Args<'_>) -> String {
    let mut s = format!(
        "ERR unknown command '{}', with args beginning with: ",
        String::from_utf8_lossy(raw)
    );
    for i in 1..a.len() {
        s.push_str(&format!("'{}' ", String::from_utf8_lossy(a.get(i))));
    }
    s
}

/// The queued commands of one MULTI at most, in bytes: the batch travels as one frame (to
/// another shard or host), which must stay within `frame_bytes_max` with 1 MiB for its
/// archive's own bytes (a few per argument, counted too) and the watched keys.
fn multi_bytes_max(cfg: &Config) -> usize {
    cfg.frame_bytes_max.saturating_sub(1 << 20) as usize
}

fn wrong_arity(name: &str) -> String {
    format!("ERR wrong number of arguments for '{name}' command")
}

/// Runs one command. `a` holds at least the name (empty commands are skipped by the caller).
pub fn execute(s: &mut Session, a: &Args<'_>, h: &mut dyn Host) {
    if a.is_empty() {
        return;
    }
    let mut buf = [0u8; 32];
    let name = upper(a.get(0), &mut buf);
    let sp = lookup(name);
    // Authentication and roles (Redis's texts): one comparison for an admin connection,
    // which every connection is when no credentials are configured.
    let role = h.role();
    if role != Some(Role::Admin) {
        match (role, sp) {
            (None, _) if !matches!(name, b"auth" | b"hello" | b"quit" | b"reset") => {
                return s.err(h, NOAUTH);
            }
            (Some(have), Some(sp)) if role_needed(sp) > have => {
                let e = format!(
                    "NOPERM User has no permissions to run the '{}' command (role {}; it needs {})",
                    sp.name,
                    have.name(),
                    role_needed(sp).name()
                );
                return s.err(h, &e);
            }
            _ => {}
        }
    }
    if s.multi.is_some()
        && !matches!(
            name,
            b"exec" | b"discard" | b"multi" | b"watch" | b"quit" | b"reset"
        )
    {
        let bytes: usize = (0..a.len()).map(|i| a.get(i).len() + 8).sum();
        let bytes_max = multi_bytes_max(h.cfg());
        let e = match sp {
            None => Some(refusal(a.get(0), name, a)),
            Some(sp) if !arity_ok(sp.arity, a.len()) => Some(wrong_arity(sp.name)),
            Some(_) if s.multi_bytes + bytes > bytes_max => Some(format!(
                "ERR the transaction's queued commands exceed {bytes_max} bytes (frame_bytes_max less 1 MiB: a transaction travels to its keys' shard as one frame); send fewer commands per MULTI"
            )),
            Some(_) => None,
        };
        match e {
            Some(e) => {
                s.multi_error = true;
                s.err(h, &e);
            }
            None => {
                s.multi_bytes += bytes;
                let mut base = Vec::new();
                let mut ranges = Vec::with_capacity(a.len());
                for i in 0..a.len() {
                    let start = base.len();
                    base.extend_from_slice(a.get(i));
                    ranges.push(start..base.len());
                }
                s.multi
                    .as_mut()
                    .expect("in multi")
                    .push(Queued { base, ranges });
                s.lit(h, |o| reply::simple(o, "QUEUED"));
            }
        }
        return;
    }
    let Some(sp) = sp else {
        let e = refusal(a.get(0), name, a);
        return s.err(h, &e);
    };
    if !arity_ok(sp.arity, a.len()) {
        return s.err(h, &wrong_arity(sp.name));
    }
    if s.cluster && sp.first > 0 && !cluster_route(s, sp, a, h) {
        return;
    }
    (sp.run)(s, a, h)
}

/// In cluster mode: all keys in one slot, served here; else -CROSSSLOT / -MOVED / -TRYAGAIN.
fn cluster_route(s: &mut Session, sp: &Spec, a: &Args<'_>, h: &mut dyn Host) -> bool {
    let keys = keys_of(sp, a);
    let Some(first) = keys.first() else {
        return true;
    };
    let slot = redis_slot(first);
    if keys.iter().any(|k| redis_slot(k) != slot) {
        s.err(h, "CROSSSLOT Keys in request don't hash to the same slot");
        return false;
    }
    match h.owner(s.ns(), first) {
        Owner::Here => true,
        Owner::Remote(addr) => {
            s.err(h, &format!("MOVED {slot} {addr}"));
            false
        }
        Owner::Nobody => {
            s.err(
                h,
                "TRYAGAIN the slot has no primary right now (a failover is in progress); retry",
            );
            false
        }
    }
}

fn refusal(raw: &[u8], lower: &[u8], a: &Args<'_>) -> String {
    for (family, names) in OUT_OF_SCOPE {
        if names.iter().any(|n| n.as_bytes() == lower) {
            return format!(
                "ERR command '{}' is not supported by stategrid: {family} out of scope (see docs/redis.md)",
                String::from_utf8_lossy(raw)
            );
        }
    }
    unknown_command(raw, a)
}

// ---- helpers ---------------------------------------------------------------------------------

const NOT_INT: &str = "ERR value is not an integer or out of range";
const SYNTAX: &str = "ERR syntax error";

fn int_arg(b: &[u8]) -> Option<i64> {
    parse_i64(b)
}

fn eq(a: &[u8], b: &str) -> bool {
    a.eq_ignore_ascii_case(b.as_bytes())
}

/// The absolute expiry of `n` in a unit (EX s, PX ms, EXAT s, PXAT ms); None on overflow.
fn at_ms(unit: &[u8], n: i64, now: u64) -> Option<i64> {
    let now = now as i64;
    if eq(unit, "ex") {
        n.checked_mul(1000)?.checked_add(now)
    } else if eq(unit, "px") {
        n.checked_add(now)
    } else if eq(unit, "exat") {
        n.checked_mul(1000)
    } else {
        Some(n)
    }
}

fn items_of<'x>(it: impl Iterator<Item = &'x [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for i in it {
        hash::push_item(&mut out, Some(i));
    }
    out
}

fn plain() -> Pending {
    Pending::of(Shape::Plain)
}

fn parts(how: Combine, i: usize, n: usize) -> Pending {
    Pending::of(Shape::Part {
        how,
        first: i == 0,
        last: i + 1 == n,
        n: n as u32,
    })
}

// ---- strings ---------------------------------------------------------------------------------

fn get(s: &mut Session, a: &Args<'_>, h: &mut dyn Host) {
    h.redis(s.ns(), a.get(1), RedisOp::Get, b"", plain());
}

fn set(s: &mut Session, a: &Args<'_>, h: &mut dyn Host) {
    let mut cond = SetCond::Always;
    let mut get = false;
    let mut expire = SetExpire::Clear;
    let mut expire_set = false;
    let mut i = 3;
    while i < a.len() {
        let o = a.get(i);
        if eq(o, "nx") && cond == SetCond::Always {
            cond = SetCond::IfAbsent;
        } else if eq(o, "xx") && cond == SetCond::Always {
            cond = SetCond::IfPresent;
        } else if eq(o, "get") {
            get = true;
        } else if eq(o, "keepttl") && !expire_set {
            expire = SetExpire::Keep;
            expire_set = true;
        } else if (eq(o, "ex") || eq(o, "px") || eq(o, "exat") || eq(o, "pxat"))
            && !expire_set
            && i + 1 < a.len()
        {
            let Some(n) = int_arg(a.get(i + 1)) else {
                return s.err(h, NOT_INT);
            };
            match at_ms(o, n, h.now_ms()) {
                Some(at) if n > 0 && at > 0 => expire = SetExpire::AtMs(at as u64),
                _ => return s.err(h, "ERR invalid expire time in 'set' command"),
            }
            expire_set = true;
            i += 1;
        } else {
            return s.err(h, SYNTAX);
        }
        i += 1;
    }
    let op = RedisOp::Set { cond, expire, get };
    h.redis(s.ns(), a.get(1), op, a.get(2), plain());
}

fn setex_unit(s: &mut Session, a: &Args<'_>, h: &mut dyn Host, unit: &str, name: &str) {
    let Some(n) = int_arg(a.get(2)) else {
        return s.err(h, NOT_INT);
    };
    let at = match at_ms(unit.as_bytes(), n, h.now_ms()) {
        Some(at) if n > 0 => at as u64,
        _ => return s.err(h, &format!("ERR invalid expire time in '{name}' command")),
    };
    let op = RedisOp::Set {
        cond: SetCond::Always,
        expire: SetExpire::AtMs(at),
        get: false,
    };
    h.redis(s.ns(), a.get(1), op, a.get(3), plain());
}

fn setnx(s: &mut Session, a: &Args<'_>, h: &mut dyn Host) {
    let op = RedisOp::Set {
        cond: SetCond::IfAbsent,
        expire: SetExpire::Clear,
        get: false,
    };
    h.redis(s.ns(), a.get(1), op, a.get(2), Pending::of(Shape::OkAsOne));
}

fn getset(s: &mut Session, a: &Args<'_>, h: &mut dyn Host) {
    let op = RedisOp::Set {
        cond: SetCond::Always,
        expire: SetExpire::Clear,
        get: true,
    };
    h.redis(s.ns(), a.get(1), op, a.get(2), plain());
}

fn getex(s: &mut Session, a: &Args<'_>, h: &mut dyn Host) {
    let expire = match a.len() {
        2 => SetExpire::Keep,
        3 if eq(a.get(2), "persist") => SetExpire::Clear,
        4 if ["ex", "px", "exat", "pxat"].iter().any(|u| eq(a.get(2), u)) => {
            let Some(n) = int_arg(a.get(3)) else {
                return s.err(h, NOT_INT);
            };
            match at_ms(a.get(2), n, h.now_ms()) {
                Some(at) if n > 0 && at > 0 => SetExpire::AtMs(at as u64),
                _ => return s.err(h, "ERR invalid expire time in 'getex' command"),
            }
        }
        _ => return s.err(h, SYNTAX),
    };
    h.redis(s.ns(), a.get(1), RedisOp::GetEx { expire }, b"", plain());
}

fn getdel(s: &mut Session, a: &Args<'_>, h: &mut dyn Host) {
    h.redis(s.ns(), a.get(1), RedisOp::GetDel, b"", plain());
}

fn incr_by(s: &mut Session, a: &Args<'_>, h: &mut dyn Host, by: Option<i64>) {
    match by {
        Some(by) => h.redis(s.ns(), a.get(1), RedisOp::IncrBy { by }, b"", plain()),
        None => s.err(h, NOT_INT),
    }
}

fn decrby(s: &mut Session, a: &Args<'_>, h: &mut dyn Host) {
    match int_arg(a.get(2)) {
        Some(i64::MIN) => s.err(h, "ERR decrement would overflow"),
        by => incr_by(s, a, h, by.map(|b| -b)),
    }
}

fn append(s: &mut Session, a: &Args<'_>, h: &mut dyn Host) {
    h.redis(s.ns(), a.get(1), RedisOp::Append, a.get(2), plain());
}

fn strlen(s: &mut Session, a: &Args<'_>, h: &mut dyn Host) {
    h.redis(s.ns(), a.get(1), RedisOp::Strlen, b"", plain());
}

fn mget(s: &mut Session, a: &Args<'_>, h: &mut dyn Host) {
    let n = a.len() - 1;
    for i in 0..n {
        h.redis(
            s.ns(),
            a.get(i + 1),
            RedisOp::Get,
            b"",
            parts(Combine::Array, i, n),
        );
    }
}

fn mset(s: &mut Session, a: &Args<'_>, h: &mut dyn Host) {
    if a.len() % 2 != 1 {
        return s.err(h, &wrong_arity("mset"));
    }
    let n = (a.len() - 1) / 2;
    let op = RedisOp::Set {
        cond: SetCond::Always,
        expire: SetExpire::Clear,
        get: false,
    };
    for i in 0..n {
        h.redis(
            s.ns(),
            a.get(1 + 2 * i),
            op,
            a.get(2 + 2 * i),
            parts(Combine::AllOk, i, n),
        );
    }
}

// ---- keys ------------------------------------------------------------------------------------

fn per_key(s: &mut Session, a: &Args<'_>, h: &mut dyn Host, op: RedisOp) {
    let n = a.len() - 1;
    for i in 0..n {
        h.redis(s.ns(), a.get(i + 1), op, b"", parts(Combine::Sum, i, n));
    }
}

fn expire_generic(s: &mut Session, a: &Args<'_>, h: &mut dyn Host, unit: &str, name: &str) {
    let Some(n) = int_arg(a.get(2)) else {
        return s.err(h, NOT_INT);
    };
    let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
    for i in 3..a.len() {
        let o = a.get(i);
        if eq(o, "nx") {
            nx = true;
        } else if eq(o, "xx") {
            xx = true;
        } else if eq(o, "gt") {
            gt = true;
        } else if eq(o, "lt") {
            lt = true;
        } else {
            return s.err(
                h,
                &format!("ERR Unsupported option {}", String::from_utf8_lossy(o)),
            );
        }
    }
    if nx && (xx || gt || lt) {
        return s.err(
            h,
            "ERR NX and XX, GT or LT options at the same time are not compatible",
        );
    }
    if gt && lt {
        return s.err(
            h,
            "ERR GT and LT options at the same time are not compatible",
        );
    }
    let cond = match (nx, xx, gt, lt) {
        (true, ..) => ExpireCond::Nx,
        (_, _, true, _) => ExpireCond::Gt,
        (_, _, _, true) => ExpireCond::Lt,
        (_, true, ..) => ExpireCond::Xx,
        _ => ExpireCond::Always,
    };
    let now = h.now_ms();
    let Some(at) = at_ms(unit.as_bytes(), n, now) else {
        return s.err(h, &format!("ERR invalid expire time in '{name}' command"));
    };
    // A time in the past deletes the key (the store does it); clamp to "now".
    let at = at.max(1) as u64;
    let at = if at <= now { now } else { at };
    h.redis(
        s.ns(),
        a.get(1),
        RedisOp::Expire { at_ms: at, cond },
        b"",
        plain(),
    );
}

fn persist(s: &mut Session, a: &Args<'_>, h: &mut dyn Host) {
    h.redis(s.ns(), a.get(1), RedisOp::Persist, b"", plain());
}

fn meta(s: &mut Session, a: &Args<'_>, h: &mut dyn Host, ms: bool, absolute: bool) {
    let req = Request::Meta {
        key: Key {
            ns: s.ns(),
            key: a.get(1).to_vec(),
        },
    };
    h.request(&req, b"", Pending::of(Shape::Ttl { ms, absolute }));
}

/// RENAME / RENAMENX: one atomic step on the shard of the key, so both names must be served
/// there (one partition in a store of several hosts, one shard on a single host); otherwise
/// the answer is `-CROSSSLOT` naming hash tags (see docs/redis.md). Locks on either name are
/// respected; the expiry moves with the value.
fn rename_generic(s: &mut Session, a: &Args<'_>, h: &mut dyn Host, nx: bool) {
    h.redis(
        s.ns(),
        a.get(1),
        RedisOp::Rename { nx },
        a.get(2),
        Pending::of(Shape::NeedsKey),
    );
}

fn type_(s: &mut Session, a: &Args<'_>, h: &mut dyn Host) {
    h.redis(
        s.ns(),
        a.get(1),
        RedisOp::Type,
        b"",
        Pending::of(Shape::Type),
    );
}

/// MATCH / COUNT / TYPE / NOVALUES options of SCAN and HSCAN from argument `from` on.
struct ScanOpts {
    pattern: Option<Rc<[u8]>>,
    count: u32,
    novalues: bool,
    /// SCAN's TYPE: `None` lists every kind.
    kind: Option<ScanKind>,
}

/// What SCAN's TYPE asked for.
#[derive(Clone, Copy)]
enum ScanKind {
    /// A kind stategrid stores.
    Of(ValueKind),
    /// A type Redis knows (list, set...) or no type at all: no stategrid object is of it, and
    /// Redis answers an empty listing for an unknown type too.
    None,
}

fn scan_opts(
    s: &mut Session,
    a: &Args<'_>,
    h: &mut dyn Host,
    from: usize,
    hscan: bool,
) -> Option<ScanOpts> {
    let mut o = ScanOpts {
        pattern: None,
        count: 10,
        novalues: false,
        kind: None,
    };
    let mut i = from;
    while i < a.len() {
        let opt = a.get(i);
        if eq(opt, "match") && i + 1 < a.len() {
            let p = a.get(i + 1);
            o.pattern = (p != b"*").then(|| Rc::from(p));
            i += 2;
        } else if eq(opt, "count") && i + 1 < a.len() {
            match int_arg(a.get(i + 1)) {
                Some(n) if n >= 1 => o.count = n.min(u32::MAX as i64) as u32,
                Some(_) => {
                    s.err(h, SYNTAX);
                    return None;
                }
                None => {
                    s.err(h, NOT_INT);
                    return None;
                }
            }
            i += 2;
        } else if hscan && eq(opt, "novalues") {
            o.novalues = true;
            i += 1;
        } else if !hscan && eq(opt, "type") && i + 1 < a.len() {
            let t = a.get(i + 1);
            o.kind = Some(if eq(t, "string") {
                ScanKind::Of(ValueKind::String)
            } else if eq(t, "hash") {
                ScanKind::Of(ValueKind::Hash)
            } else {
                ScanKind::None
            });
            i += 2;
        } else {
            s.err(h, SYNTAX);
            return None;
        }
    }
    Some(o)
}

fn scan(s: &mut Session, a: &Args<'_>, h: &mut dyn Host) {
    let Some(cursor) = std::str::from_utf8(a.get(1))
        .ok()
        .and_then(|c| c.parse::<u64>().ok())
        .and_then(|c| super::cursor::to_native(c, s.sees_store_wide()))
    else {
        return s.err(h, "ERR invalid cursor");
    };
    let Some(o) = scan_opts(s, a, h, 2, false) else {
        return;
    };
    let limit = o.count.min(h.cfg().items_per_request_max);
    let req = match o.kind {
        None => Request::ListKeys {
            ns: s.ns(),
            cursor,
            limit,
        },
        // Filtered on the shard: a page carries only keys of the kind asked.
        Some(ScanKind::Of(kind)) => Request::ListKeysOfKind {
            ns: s.ns(),
            cursor,
            limit,
            kind,
        },
        // Nothing can match: the whole (empty) listing in one page, cursor 0.
        Some(ScanKind::None) => {
            return s.lit(h, |o| {
                reply::array(o, 2);
                reply::bulk(o, b"0");
                reply::array(o, 0);
            });
        }
    };
    h.request(
        &req,
        b"",
        Pending {
            shape: Shape::Scan,
            text: o.pattern,
        },
    );
}

/// One whole-host listing (`CURSOR_WHOLE_HOST`): the host gathers every shard's keys and, for
/// a plain client of a store of several hosts, every host's.
fn keys(s: &mut Session, a: &Args<'_>, h: &mut dyn Host) {
    let p = a.get(1);
    let req = Request::ListKeys {
        ns: s.ns(),
        cursor: crate::server::exec::CURSOR_WHOLE_HOST,
        limit: h.cfg().items_per_request_max,
    };
    let mut pend = parts(Combine::Keys, 0, 1);
    pend.text = (p != b"*").then(|| Rc::from(p));
    h.request(&req, b"", pend);
}

// ---- hashes ----------------------------------------------------------------------------------

fn hset_generic(s: &mut Session, a: &Args<'_>, h: &mut dyn Host, name: &str, p: Pending) {
    if a.len() % 2 != 0 {
        return s.err(h, &wrong_arity(name));
    }
    let args = items_of((2..a.len()).map(|i| a.get(i)));
    h.redis(s.ns(), a.get(1), RedisOp::HSet { nx: false }, &args, p);
}

fn hsetnx(s: &mut Session, a: &Args<'_>, h: &mut dyn Host) {
    let args = items_of([a.get(2), a.get(3)].into_iter());
    h.redis(s.ns(), a.get(1), RedisOp::HSet { nx: true }, &args, plain());
}

fn hfields(s: &mut Session, a: &Args<'_>, h: &mut dyn Host, op: RedisOp, shape: Shape) {
    let args = items_of((2..a.len()).map(|i| a.get(i)));
    h.redis(s.ns(), a.get(1), op, &args, Pending::of(shape));
}

fn hincrby(s: &mut Session, a: &Args<'_>, h: &mut dyn Host) {
    let Some(by) = int_arg(a.get(3)) else {
        return s.err(h, NOT_INT);
    };
    let args = items_of([a.get(2)].into_iter());
    h.redis(s.ns(), a.get(1), RedisOp::HIncrBy { by }, &args, plain());
}

/// HSCAN answers the whole hash in one page (cursor 0): session hashes are small, and
/// `hash_fields_max` bounds them.
fn hscan(s: &mut Session, a: &Args<'_>, h: &mut dyn Host) {
    if std::str::from_utf8(a.get(2))
        .ok()
        .and_then(|c| c.parse::<u64>().ok())
        .is_none()
    {
        return s.err(h, "ERR invalid cursor");
    }
    let Some(o) = scan_opts(s, a, h, 3, true) else {
        return;
    };
    h.redis(
        s.ns(),
        a.get(1),
        RedisOp::HGetAll,
        b"",
        Pending {
            shape: Shape::HScan {
                novalues: o.novalues,
            },
            text: o.pattern,
        },
    );
}

// ---- stategrid locks -------------------------------------------------------------------------

fn key_of(s: &Session, k: &[u8]) -> Key {
    Key {
        ns: s.ns(),
        key: k.to_vec(),
    }
}

fn sg_lock(s: &mut Session, a: &Args<'_>, h: &mut dyn Host) {
    let req = Request::ReadAndLock {
        key: key_of(s, a.get(1)),
    };
    h.request(&req, b"", Pending::of(Shape::LockToken));
}

fn token_arg(s: &mut Session, h: &mut dyn Host, b: &[u8]) -> Option<u64> {
    let t = std::str::from_utf8(b)
        .ok()
        .and_then(|t| t.parse::<u64>().ok());
    if t.is_none() {
        s.err(
            h,
            "ERR lock token must be the decimal number SG.LOCK returned",
        );
    }
    t
}

fn sg_unlock(s: &mut Session, a: &Args<'_>, h: &mut dyn Host) {
    let Some(lock_token) = token_arg(s, h, a.get(2)) else {
        return;
    };
    let req = Request::Unlock {
        key: key_of(s, a.get(1)),
        lock_token,
    };
    h.request(&req, b"", plain());
}

fn sg_setunlock(s: &mut Session, a: &Args<'_>, h: &mut dyn Host) {
    let Some(lock_token) = token_arg(s, h, a.get(3)) else {
        return;
    };
    let req = Request::UpdateAndUnlock {
        key: key_of(s, a.get(1)),
        opts: Default::default(),
        lock_token,
    };
    h.request(&req, a.get(2), plain());
}

// ---- transactions ----------------------------------------------------------------------------

fn multi(s: &mut Session, _a: &Args<'_>, h: &mut dyn Host) {
    if s.multi.is_some() {
        return s.err(h, "ERR MULTI calls can not be nested");
    }
    s.multi = Some(Vec::new());
    s.multi_error = false;
    s.multi_bytes = 0;
    s.lit(h, reply::ok);
}

fn discard(s: &mut Session, _a: &Args<'_>, h: &mut dyn Host) {
    if s.multi.take().is_none() {
        return s.err(h, "ERR DISCARD without MULTI");
    }
    end_watch(s, h);
    s.lit(h, reply::ok);
}

/// WATCH records each key's version (and creation time, so a delete and re-create is seen as
/// a change); the transaction's shard compares them when it runs EXEC. A key on this
/// connection's shard is stamped at once; otherwise every key's `Meta` is asked on the key's
/// shard or host and its answer kept (`Shape::Watch`) until EXEC.
fn watch(s: &mut Session, a: &Args<'_>, h: &mut dyn Host) {
    if s.multi.is_some() {
        return s.err(h, "ERR WATCH inside MULTI is not allowed");
    }
    let ns = s.ns();
    let local: Result<Vec<Stamp>, OffShard> =
        (1..a.len()).map(|i| h.stamp_here(ns, a.get(i))).collect();
    if let Ok(stamps) = local {
        for (i, stamp) in (1..a.len()).zip(stamps) {
            s.watched.push(Watched {
                ns,
                key: a.get(i).to_vec(),
                stamp: WatchState::Known(stamp),
            });
        }
        return s.lit(h, reply::ok);
    }
    for i in 1..a.len() {
        let id = s.next_watch;
        s.next_watch += 1;
        s.watched.push(Watched {
            ns,
            key: a.get(i).to_vec(),
            stamp: WatchState::Pending(id),
        });
        let req = Request::Meta {
            key: key_of(s, a.get(i)),
        };
        let last = i + 1 == a.len();
        h.request(&req, b"", Pending::of(Shape::Watch { id, last }));
    }
}

fn end_watch(s: &mut Session, h: &mut dyn Host) {
    s.watched.clear();
    h.clear_watch();
}

fn unwatch(s: &mut Session, _a: &Args<'_>, h: &mut dyn Host) {
    end_watch(s, h);
    s.lit(h, reply::ok);
}

/// EXEC: the queued commands (and the watched stamps) go as one `RedisTx` to the shard that
/// serves their keys, on whichever host, and run there back to back: nothing else runs on a
/// shard between two of its steps, so the transaction is atomic and isolated. That shard
/// refuses keys it does not serve all of (`-CROSSSLOT`: one partition in a store of several
/// hosts, one shard on a single host); it never runs them non-atomically.
fn exec(s: &mut Session, _a: &Args<'_>, h: &mut dyn Host) {
    let Some(queued) = s.multi.take() else {
        return s.err(h, "ERR EXEC without MULTI");
    };
    let watched = std::mem::take(&mut s.watched);
    let stamps: Vec<Option<Stamp>> = watched
        .iter()
        .map(|w| match w.stamp {
            WatchState::Known(st) => Some(st),
            WatchState::Pending(id) => h.watch_stamp(id),
        })
        .collect();
    h.clear_watch();
    if std::mem::take(&mut s.multi_error) {
        return s.err(
            h,
            "EXECABORT Transaction discarded because of previous errors.",
        );
    }
    let ns = s.ns();
    let mut keys: Vec<&[u8]> = Vec::new();
    for q in &queued {
        let a = Args {
            base: &q.base,
            ranges: &q.ranges,
        };
        let mut buf = [0u8; 32];
        let Some(sp) = lookup(upper(a.get(0), &mut buf)) else {
            continue;
        };
        if matches!(
            sp.name,
            "select" | "flushdb" | "flushall" | "keys" | "scan" | "dbsize"
        ) {
            return s.err(
                h,
                &format!(
                    "ERR {} inside MULTI is not supported by stategrid (a transaction runs on one shard); send it outside the transaction",
                    sp.name.to_uppercase()
                ),
            );
        }
        for k in keys_of(sp, &a) {
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
    }
    if watched.iter().any(|w| w.ns != ns) {
        return s.err(
            h,
            "ERR WATCHed keys of another database than the transaction's: stategrid runs a transaction in one database; WATCH after SELECT",
        );
    }
    if stamps.iter().any(|st| st.is_none()) {
        return s.err(
            h,
            "ERR EXEC before the answer to WATCH arrived: wait for WATCH's reply before sending EXEC",
        );
    }
    let route = keys
        .first()
        .map(|k| k.to_vec())
        .or_else(|| watched.first().map(|w| w.key.clone()));
    let Some(route) = route else {
        // No key at all (PING, ECHO...): nothing to isolate; run here.
        s.lit(h, |o| reply::array(o, queued.len()));
        for q in &queued {
            let a = Args {
                base: &q.base,
                ranges: &q.ranges,
            };
            execute(s, &a, h);
        }
        return;
    };
    let req = Request::RedisTx {
        key: Key { ns, key: route },
        resp3: s.resp3,
        keys: keys.iter().skip(1).map(|k| k.to_vec()).collect(),
        watched: watched
            .iter()
            .zip(&stamps)
            .map(|(w, st)| {
                let st = st.expect("checked above");
                WatchStamp {
                    key: w.key.clone(),
                    exists: st.is_some(),
                    version: st.map_or(0, |x| x.0),
                    created_ms: st.map_or(0, |x| x.1),
                }
            })
            .collect(),
        commands: queued
            .iter()
            .map(|q| {
                q.ranges
                    .iter()
                    .map(|r| q.base[r.clone()].to_vec())
                    .collect()
            })
            .collect(),
    };
    h.request(&req, b"", Pending::of(Shape::Raw));
}

// ---- connection ------------------------------------------------------------------------------

fn ping(s: &mut Session, a: &Args<'_>, h: &mut dyn Host) {
    match a.len() {
        1 => s.lit(h, |o| o.extend_from_slice(b"+PONG\r\n")),
        2 => {
            let m = a.get(1);
            s.lit(h, |o| reply::bulk(o, m))
        }
        _ => s.err(h, &wrong_arity("ping")),
    }
}

fn echo(s: &mut Session, a: &Args<'_>, h: &mut dyn Host) {
    let m = a.get(1);
    s.lit(h, |o| reply::bulk(o, m));
}

fn quit(s: &mut Session, _a: &Args<'_>, h: &mut dyn Host) {
    s.lit(h, reply::ok);
    h.close();
}

fn reset(s: &mut Session, _a: &Args<'_>, h: &mut dyn Host) {
    let (id, created, next_watch, whole_store) = (s.id, s.created_ms, s.next_watch, s.whole_store);
    end_watch(s, h);
    *s = Session::new(id, created);
    s.whole_store = whole_store;
    // Watch ids stay unique for the connection's life: an answer to a WATCH sent before the
    // RESET may still arrive, and must not pass for a later WATCH's.
    s.next_watch = next_watch;
    h.set_resp3(false);
    s.lit(h, |o| reply::simple(o, "RESET"));
}

fn select(s: &mut Session, a: &Args<'_>, h: &mut dyn Host) {
    let Some(db) = int_arg(a.get(1)) else {
        return s.err(h, NOT_INT);
    };
    if db < 0 || db >= h.cfg().resp_databases as i64 {
        return s.err(h, "ERR DB index is out of range");
    }
    s.db = db as u16;
    s.lit(h, reply::ok);
}

const NO_PASSWORD: &str = "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?";
pub const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";
const NOAUTH: &str = "NOAUTH Authentication required.";
/// `auth_checks_per_s_max` reached: refused without checking.
pub const AUTH_BUSY: &str = "ERR too many password checks on this host right now (auth_checks_per_s_max); retry in a second";
const HELLO_NOAUTH: &str = "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time";

/// The role a command needs: clearing databases is admin's, writes read-write's.
fn role_needed(sp: &Spec) -> Role {
    match sp.name {
        "flushdb" | "flushall" => Role::Admin,
        _ if sp.flags == W => Role::ReadWrite,
        _ => Role::Read,
    }
}

/// Authentication with Redis's semantics. Without configured credentials the server is as a
/// Redis without a password (the default user, with no password, is the only one); with
/// them, `users::Users` checks the pair and the connection takes the user's role.
fn check_auth(h: &mut dyn Host, user: Option<&[u8]>, pass: &[u8]) -> Result<(), &'static str> {
    if h.cfg().users.is_some() {
        return h.login(user, pass);
    }
    match user {
        None => Err(NO_PASSWORD),
        Some(u) if u == b"default" => Ok(()),
        Some(_) => Err(WRONGPASS),
    }
}

fn auth(s: &mut Session, a: &Args<'_>, h: &mut dyn Host) {
    let r = match a.len() {
        2 => check_auth(h, None, a.get(1)),
        3 => check_auth(h, Some(a.get(1)), a.get(2)),
        _ => return s.err(h, SYNTAX),
    };
    match r {
        Ok(()) => s.lit(h, reply::ok),
        Err(e) => s.err(h, e),
    }
}

fn valid_name(n: &[u8]) -> bool {
    n.iter().all(|&c| (b'!'..=b'~').contains(&c))
}

fn hello(s: &mut Session, a: &Args<'_>, h: &mut dyn Host) {
    let mut proto = if s.resp3 { 3 } else { 2 };
    let mut i = 1;
    if a.len() > 1 {
        match int_arg(a.get(1)) {
            Some(v @ (2 | 3)) => proto = v,
            Some(_) => return s.err(h, "NOPROTO unsupported protocol version"),
            None => return s.err(h, "ERR Protocol version is not an integer or out of range"),
        }
        i = 2;
    }
    let mut name = None;
    let mut authed = false;
    while i < a.len() {
        let o = a.get(i);
        if eq(o, "auth") && i + 2 < a.len() {
            if let Err(e) = check_auth(h, Some(a.get(i + 1)), a.get(i + 2)) {
                return s.err(h, e);
            }
            authed = true;
            i += 3;
        } else if eq(o, "setname") && i + 1 < a.len() {
            if !valid_name(a.get(i + 1)) {
                return s.err(
                    h,
                    "ERR Client names cannot contain spaces, newlines or special characters.",
                );
            }
            name = Some(a.get(i + 1).to_vec());
            i += 2;
        } else {
            return s.err(
                h,
                &format!(
                    "ERR Syntax error in HELLO option '{}'",
                    String::from_utf8_lossy(o)
                ),
            );
        }
    }
    if !authed && h.role().is_none() {
        return s.err(h, HELLO_NOAUTH);
    }
    if name.is_some() {
        s.name = name;
    }
    s.resp3 = proto == 3;
    h.set_resp3(s.resp3);
    let (id, resp3) = (s.id, s.resp3);
    let mode = if h.topology().nodes.len() > 1 {
        "cluster"
    } else {
        "standalone"
    };
    s.lit(h, |o| {
        reply::map(o, 7, resp3);
        reply::bulk(o, b"server");
        reply::bulk(o, b"redis");
        reply::bulk(o, b"version");
        reply::bulk(o, REDIS_VERSION.as_bytes());
        reply::bulk(o, b"proto");
        reply::int(o, proto);
        reply::bulk(o, b"id");
        reply::int(o, id as i64);
        reply::bulk(o, b"mode");
        reply::bulk(o, mode.as_bytes());
        reply::bulk(o, b"role");
        reply::bulk(o, b"master");
        reply::bulk(o, b"modules");
        reply::array(o, 0);
    });
}

fn client_line(s: &Session, h: &dyn Host) -> String {
    format!(
        "id={} addr=? laddr=? fd=0 name={} age={} idle=0 flags=N db={} sub=0 psub=0 ssub=0 multi={} qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 obl=0 oll=0 omem=0 tot-mem=0 events=r cmd=client|info user=default redir=-1 resp={} lib-name={} lib-ver={}\n",
        s.id,
        String::from_utf8_lossy(s.name.as_deref().unwrap_or(b"")),
        h.now_ms().saturating_sub(s.created_ms) / 1000,
        s.db,
        s.multi.as_ref().map_or(-1, |m| m.len() as i64),
        if s.resp3 { 3 } else { 2 },
        s.lib_name.as_deref().unwrap_or(""),
        s.lib_ver.as_deref().unwrap_or(""),
    )
}

fn client(s: &mut Session, a: &Args<'_>, h: &mut dyn Host) {
    let sub = a.get(1);
    if eq(sub, "setname") && a.len() == 3 {
        if !valid_name(a.get(2)) {
            return s.err(
                h,
                "ERR Client names cannot contain spaces, newlines or special characters.",
            );
        }
        s.name = (!a.get(2).is_empty()).then(|| a.get(2).to_vec());
        s.lit(h, reply::ok);
    } else if eq(sub, "getname") && a.len() == 2 {
        let (name, resp3) = (s.name.clone(), s.resp3);
        s.lit(h, |o| match &name {
            Some(n) => reply::bulk(o, n),
            None => reply::null(o, resp3),
        });
    } else if eq(sub, "setinfo") && a.len() == 4 {
        let v = String::from_utf8_lossy(a.get(3)).into_owned();
        if eq(a.get(2), "lib-name") {
            s.lib_name = Some(v);
        } else if eq(a.get(2), "lib-ver") {
            s.lib_ver = Some(v);
        } else {
            return s.err(
                h,
                &format!(
                    "ERR Unrecognized option '{}'",
                    String::from_utf8_lossy(a.get(2))
                ),
            );
        }
        s.lit(h, reply::ok);
    } else if eq(sub, "id") && a.len() == 2 {
        let id = s.id;
        s.lit(h, |o| reply::int(o, id as i64));
    } else if (eq(sub, "info") && a.len() == 2) || (eq(sub, "list") && a.len() >= 2) {
        // CLIENT LIST shows this connection only: connections live on their shards.
        let line = client_line(s, h);
        let resp3 = s.resp3;
        s.lit(h, |o| reply::verbatim(o, &line, resp3));
    } else if eq(sub, "no-evict") || eq(sub, "no-touch") {
        s.lit(h, reply::ok);
    } else {
        s.err(
            h,
            &format!(
                "ERR unknown subcommand or wrong number of arguments for '{}'. Try CLIENT HELP.",
                String::from_utf8_lossy(sub)
            ),
        );
    }
}

/// One COMMAND entry: name, arity, flags, first key, last key, step, ACL categories, tips,
/// key specs, subcommands (the 10-element form redis-py and redis-cli read).
fn command_entry(o: &mut Vec<u8>, sp: &Spec) {
    reply::array(o, 10);
    reply::bulk(o, sp.name.as_bytes());
    reply::int(o, sp.arity as i64);
    reply::array(o, sp.flags.len());
    for f in sp.flags {
        reply::simple(o, f);
    }
    reply::int(o, sp.first as i64);
    reply::int(o, sp.last as i64);
    reply::int(o, sp.step as i64);
    reply::array(o, 0);
    reply::array(o, 0);
    reply::array(o, 0);
    reply::array(o, 0);
}

fn command(s: &mut Session, a: &Args<'_>, h: &mut dyn Host) {
    let resp3 = s.resp3;
    if a.len() == 1 {
        return s.lit(h, |o| {
            reply::array(o, TABLE.len());
            for sp in TABLE {
                command_entry(o, sp);
            }
        });
    }
    let sub = a.get(1);
    if eq(sub, "count") {
        s.lit(h, |o| reply::int(o, TABLE.len() as i64));
    } else if eq(sub, "info") {
        s.lit(h, |o| {
            let names: Vec<&[u8]> = if a.len() == 2 {
                TABLE.iter().map(|sp| sp.name.as_bytes()).collect()
            } else {
                (2..a.len()).map(|i| a.get(i)).collect()
            };
            reply::array(o, names.len());
            for n in names {
                let mut buf = [0u8; 32];
                match lookup(upper(n, &mut buf)) {
                    Some(sp) => command_entry(o, sp),
                    None => reply::null_array(o, resp3),
                }
            }
        });
    } else if eq(sub, "docs") {
        // No documentation is served: redis-cli then shows no hints, and works.
        s.lit(h, |o| reply::map(o, 0, resp3));
    } else if eq(sub, "list") {
        s.lit(h, |o| {
            reply::array(o, TABLE.len());
            for sp in TABLE {
                reply::bulk(o, sp.name.as_bytes());
            }
        });
    } else {
        s.err(
            h,
            &format!(
                "ERR unknown subcommand '{}'. Try COMMAND HELP.",
                String::from_utf8_lossy(sub)
            ),
        );
    }
}

fn config(s: &mut Session, a: &Args<'_>, h: &mut dyn Host) {
    let sub = a.get(1);
    if eq(sub, "get") && a.len() >= 3 {
        let cfg = h.cfg();
        let values: Vec<(&str, String)> = vec![
            ("timeout", "0".into()),
            ("databases", cfg.resp_databases.to_string()),
            ("replica-read-only", "yes".into()),
            ("slave-read-only", "yes".into()),
            ("maxmemory", cfg.max_memory_bytes.to_string()),
            ("maxmemory-policy", "allkeys-lru".into()),
            ("proto-max-bulk-len", cfg.object_bytes_max.to_string()),
            ("save", String::new()),
            ("appendonly", "no".into()),
            ("cluster-enabled", "no".into()),
            ("port", cfg.svr_port.to_string()),
            ("maxclients", cfg.connections_per_shard_max.to_string()),
        ];
        let mut hits: Vec<&(&str, String)> = Vec::new();
        for i in 2..a.len() {
            let p = a.get(i).to_ascii_lowercase();
            for v in &values {
                if super::glob::matches(&p, v.0.as_bytes()) && !hits.iter().any(|x| x.0 == v.0) {
                    hits.push(v);
                }
            }
        }
        let resp3 = s.resp3;
        let mut out = Vec::new();
        reply::map(&mut out, hits.len(), resp3);
        for (k, v) in hits {
            reply::bulk(&mut out, k.as_bytes());
            reply::bulk(&mut out, v.as_bytes());
        }
        h.reply(&out);
    } else if eq(sub, "set") {
        s.err(
            h,
            "ERR CONFIG SET is not supported by stategrid; set parameters in the stategrid params file or with --set",
        );
    } else if eq(sub, "resetstat") {
        s.lit(h, reply::ok);
    } else {
        s.err(
            h,
            &format!(
                "ERR unknown subcommand '{}'. Try CONFIG HELP.",
                String::from_utf8_lossy(sub)
            ),
        );
    }
}

fn info(s: &mut Session, a: &Args<'_>, h: &mut dyn Host) {
    let want = |name: &str| {
        a.len() == 1
            || (1..a.len()).any(|i| {
                let x = a.get(i);
                eq(x, name) || eq(x, "all") || eq(x, "everything") || eq(x, "default")
            })
    };
    let (connections, resident) = h.counters();
    let topo = h.topology();
    let cfg = h.cfg();
    let mut t = String::new();
    if want("server") {
        t.push_str(&format!(
            "# Server\r\nredis_version:{REDIS_VERSION}\r\nredis_mode:{}\r\nos:Linux\r\narch_bits:64\r\nprocess_id:{}\r\nrun_id:{:040x}\r\ntcp_port:{}\r\nuptime_in_seconds:{}\r\nserver_name:stategrid\r\nstategrid_version:{}\r\n\r\n",
            if topo.nodes.len() > 1 { "cluster" } else { "standalone" },
            std::process::id(),
            topo.me,
            cfg.svr_port,
            h.uptime_s(),
            env!("CARGO_PKG_VERSION"),
        ));
    }
    if want("clients") {
        t.push_str(&format!(
            "# Clients\r\nconnected_clients:{connections}\r\nmaxclients:{}\r\n\r\n",
            cfg.connections_per_shard_max as u64 * h.shards() as u64
        ));
    }
    if want("memory") {
        t.push_str(&format!(
            "# Memory\r\nused_memory:{resident}\r\nused_memory_rss:{resident}\r\nmaxmemory:{}\r\nmaxmemory_policy:allkeys-lru\r\n\r\n",
            cfg.max_memory_bytes
        ));
    }
    if want("persistence") {
        t.push_str("# Persistence\r\nloading:0\r\naof_enabled:0\r\n\r\n");
    }
    if want("replication") {
        t.push_str("# Replication\r\nrole:master\r\nconnected_slaves:0\r\n\r\n");
    }
    if want("cluster") {
        t.push_str(&format!(
            "# Cluster\r\ncluster_enabled:{}\r\n\r\n",
            (topo.nodes.len() > 1) as u8
        ));
    }
    if want("keyspace") {
        let req = Request::NsList;
        h.request(
            &req,
            b"",
            Pending {
                shape: Shape::Info,
                text: Some(Rc::from(t.as_bytes())),
            },
        );
    } else {
        let resp3 = s.resp3;
        s.lit(h, |o| reply::verbatim(o, &t, resp3));
    }
}

fn dbsize(s: &mut Session, _a: &Args<'_>, h: &mut dyn Host) {
    h.request(&Request::NsCount { ns: s.ns() }, b"", plain());
}

fn flush_opts(s: &mut Session, a: &Args<'_>, h: &mut dyn Host) -> bool {
    let ok = a.len() == 1 || (a.len() == 2 && (eq(a.get(1), "async") || eq(a.get(1), "sync")));
    if !ok {
        s.err(h, SYNTAX);
    }
    ok
}

fn flushdb(s: &mut Session, a: &Args<'_>, h: &mut dyn Host) {
    if flush_opts(s, a, h) {
        h.request(
            &Request::NsClear { ns: s.ns() },
            b"",
            Pending::of(Shape::Ok),
        );
    }
}

fn flushall(s: &mut Session, a: &Args<'_>, h: &mut dyn Host) {
    if !flush_opts(s, a, h) {
        return;
    }
    let n = h.cfg().resp_databases as usize;
    for db in 0..n {
        let req = Request::NsClear {
            ns: redis_ns(db as u16),
        };
        h.request(&req, b"", parts(Combine::AllOk, db, n));
    }
}

fn time(s: &mut Session, _a: &Args<'_>, h: &mut dyn Host) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let _ = h.now_ms();
    s.lit(h, |o| {
        reply::array(o, 2);
        reply::bulk(o, now.as_secs().to_string().as_bytes());
        reply::bulk(o, now.subsec_micros().to_string().as_bytes());
    });
}
