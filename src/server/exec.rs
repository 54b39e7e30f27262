//! What a shard does with one request: route it, or apply it to its store and describe the
//! answer. No I/O here: answers go to a [`Sink`], which is the connection's send batch for a
//! local request and a byte vector for a forwarded one.

use std::sync::Arc;

use stategrid_proto::{
    ArchivedRequest, ErrorCode, ErrorReply, ItemResult, NsInfo, PARTITIONS, PutResult, RedisOp,
    Request, Response, ValueKind, codec, key_hash, partition_of,
};

use crate::config::Config;
use crate::store::{KeyRef, RedisOut, Store, StoreError, Value};

/// Where an answer goes.
pub trait Sink {
    /// Encodes `resp` for `request_id`; `values` follow it back to back as the trailer.
    fn respond(&mut self, request_id: u32, resp: &Response, values: &[Value]);

    fn error(&mut self, request_id: u32, code: ErrorCode, detail: u64) {
        self.respond(
            request_id,
            &Response::Error(ErrorReply::new(code, detail)),
            &[],
        );
    }
}

/// A sink that copies everything into bytes: used for forwarded requests (the answer crosses
/// threads, so the stored value is copied once into it) and for answers that must wait behind
/// an earlier forwarded one.
pub struct VecSink<'a>(pub &'a mut Vec<u8>);

impl Sink for VecSink<'_> {
    fn respond(&mut self, request_id: u32, resp: &Response, values: &[Value]) {
        let total: usize = values.iter().map(|v| v.len()).sum();
        codec::encode_head(self.0, request_id, resp, total);
        for v in values {
            self.0.extend_from_slice(v);
        }
        self.0.extend_from_slice(codec::value_padding(total));
    }
}

/// The shard that owns a partition: one definition in `stategrid-proto`, which shard-aware
/// clients route by.
pub use stategrid_proto::owner_shard;

/// A key page scans at most this many slab slots per key asked for (a namespace with few
/// objects among many costs a scan; this bounds one page's work)...
const LIST_SCAN_SLOTS_PER_KEY: usize = 64;
/// ...and never fewer than this many, so small pages still make progress.
const LIST_SCAN_SLOTS_MIN: usize = 65_536;

/// How a request is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// On this shard.
    Local,
    /// By one other shard, the answer relayed back.
    Shard(usize),
    /// By every shard, the answers merged (namespace counts, clears, lists, stats).
    All,
    /// Items spread over several shards (multi-read, bulk put).
    Split,
}

/// The route to the shard that owns partition `p`, seen from shard `me`.
#[inline]
pub fn partition_route(p: u32, me: usize, shards: usize) -> Route {
    match owner_shard(p, shards) {
        s if s == me => Route::Local,
        s => Route::Shard(s),
    }
}

/// Decides where `req` is served. Cheap: one hash for a keyed request.
pub fn route(req: &ArchivedRequest, me: usize, shards: usize) -> Route {
    let to = |s: usize| {
        if s == me {
            Route::Local
        } else {
            Route::Shard(s)
        }
    };
    if let Some(k) = req.key() {
        let p = partition_of(key_hash(k.ns.to_native(), k.key.as_slice()));
        return partition_route(p, me, shards);
    }
    match req {
        // The namespace registry lives on shard 0.
        ArchivedRequest::NsOpen { .. } => to(0),
        ArchivedRequest::NsList
        | ArchivedRequest::NsClear { .. }
        | ArchivedRequest::NsCount { .. }
        | ArchivedRequest::Stats => {
            if shards == 1 {
                Route::Local
            } else {
                Route::All
            }
        }
        ArchivedRequest::ListKeys { cursor, .. }
        | ArchivedRequest::ListKeysOfKind { cursor, .. } => {
            let s = cursor_shard(cursor.to_native());
            if s >= shards { Route::Local } else { to(s) }
        }
        ArchivedRequest::MultiRead { ns, keys } => same_owner(
            keys.iter().map(|k| k.as_slice()),
            ns.to_native(),
            me,
            shards,
        ),
        ArchivedRequest::BulkPut { ns, items } => same_owner(
            items.iter().map(|i| i.key.as_slice()),
            ns.to_native(),
            me,
            shards,
        ),
        // Host-to-host partition requests go to the partition's shard.
        ArchivedRequest::MigratePull { partition, .. }
        | ArchivedRequest::MigrateEnd { partition, .. }
        | ArchivedRequest::ReplicateTouches { partition, .. }
        | ArchivedRequest::NsClearPartition { partition, .. } => {
            to(owner_shard(partition.to_native() % PARTITIONS, shards))
        }
        ArchivedRequest::Hello { .. } => Route::Local,
        _ => Route::Local,
    }
}

fn same_owner<'a>(
    keys: impl Iterator<Item = &'a [u8]>,
    ns: u32,
    me: usize,
    shards: usize,
) -> Route {
    let mut owner = None;
    for k in keys {
        let s = owner_shard(partition_of(key_hash(ns, k)), shards);
        match owner {
            None => owner = Some(s),
            Some(o) if o != s => return Route::Split,
            _ => {}
        }
    }
    match owner {
        Some(s) if s != me => Route::Shard(s),
        _ => Route::Local,
    }
}

/// The namespace registry (id -> name), kept by shard 0.
#[derive(Default)]
pub struct Registry {
    names: hashbrown::HashMap<u32, String>,
}

/// One shard's state that requests act on (everything but connections and I/O).
pub struct Core {
    pub shard: usize,
    pub shards: usize,
    pub store: Store,
    /// Some on shard 0 only.
    pub registry: Option<Registry>,
    pub cfg: Arc<Config>,
    /// The wall clock (ms since the epoch) as of the shard's current pass or message (kept by
    /// the shard): every request of a pass sees one time, read once per pass.
    pub now_ms: u64,
    pub requests: u64,
    /// Open client connections on this shard (kept by the shard).
    pub connections: u64,
    /// Times the network loop waited for the kernel (kept by the shard).
    pub ring_waits: u64,
    /// Allocations made while handling ring completions (kept by the shard).
    pub serve_allocations: u64,
    /// In a store of several hosts, the partitions this host is primary of in the installed
    /// map (kept by the shard's cluster pass): key listings show only these, so listing every
    /// host (Redis Cluster clients scan each primary) shows each key once, never a replica copy
    /// as well. `None`: a single host lists everything it has.
    pub primary_partitions: Option<Box<[bool]>>,
    /// Keyed requests and parts of multi-key requests sent to another shard to serve (kept
    /// by the shard): what a shard-aware client avoids. Requests every shard answers (stats,
    /// namespace counts) are not counted.
    pub forwarded_requests: u64,
    /// Connections handed to the shard their `HelloShard` asked for (kept by the shard).
    pub handed_off_connections: u64,
    /// In a store of several hosts, this host's place among the hosts a key listing walks,
    /// and their number (kept by the shard's cluster pass): a listing cursor names the host
    /// (see [`cursor_host`]), so one cursor pages through the whole store.
    pub list_host: Option<(u8, u8)>,
    /// Partitions (with the namespace) a namespace clear emptied here as their primary: the
    /// shard tells their replicas at once, on the links that carry the partitions' changes
    /// in order (`NsClearPartition`).
    pub cleared: Vec<(u32, u32)>,
    /// Counters for `/metrics`, published at housekeeping (`server::metrics`).
    pub metrics: super::metrics::ShardMetrics,
}

/// Key listing cursors: `shard << 32 | slot` for a listing of one host (a store of one host,
/// and a Redis cluster client's `SCAN`, which lists one node as in Redis Cluster), and
/// `STORE_WIDE | host << 56 | shard << 32 | slot` for the listing of a store of several hosts
/// by a native or plain Redis client, which walks every host with one cursor (the host asked
/// marks the cursor, see `Dispatch::relay_listing` in `server::shard::dispatch`). Redis clients see these cursors packed
/// smaller (`resp::cursor`).
pub const CURSOR_STORE_WIDE: u64 = 1 << 63;

/// A `ListKeys` cursor (exactly this value) asking for the first `limit` keys of every shard in
/// one answer (Redis `KEYS`): the host asked gathers its shards' parts and, for a store-wide client, every other
/// host's (`Dispatch::gather_hosts`). Not a position: never answered as a next cursor.
pub const CURSOR_WHOLE_HOST: u64 = 1 << 62;

/// The host part of a store-wide listing cursor.
pub fn cursor_host(cursor: u64) -> usize {
    ((cursor >> 56) & 0x7F) as usize
}

/// The shard part of a key listing cursor.
pub fn cursor_shard(cursor: u64) -> usize {
    ((cursor >> 32) & 0x00FF_FFFF) as usize
}

/// A sink that notes the answer's error code on its way through (for the metrics).
struct Metered<'a, S: Sink> {
    inner: &'a mut S,
    code: Option<ErrorCode>,
}

impl<S: Sink> Sink for Metered<'_, S> {
    #[inline]
    fn respond(&mut self, request_id: u32, resp: &Response, values: &[Value]) {
        if let Response::Error(e) = resp {
            self.code = Some(e.code);
        }
        self.inner.respond(request_id, resp, values);
    }

    #[inline]
    fn error(&mut self, request_id: u32, code: ErrorCode, detail: u64) {
        self.code = Some(code);
        self.inner.error(request_id, code, detail);
    }
}

impl Core {
    /// A shard's core with nothing served yet: `store` holds its objects, `registry` is
    /// shard 0's namespace registry (None elsewhere). The one place a `Core` is built, so a
    /// new counter or field is added once (the server, the fuzz harness and the benches all
    /// come here).
    pub fn new(
        shard: usize,
        shards: usize,
        store: Store,
        registry: Option<Registry>,
        cfg: Arc<Config>,
    ) -> Core {
        assert!(shard < shards, "shard {shard} of {shards}");
        Core {
            shard,
            shards,
            store,
            registry,
            cfg,
            now_ms: 0,
            requests: 0,
            connections: 0,
            ring_waits: 0,
            serve_allocations: 0,
            primary_partitions: None,
            forwarded_requests: 0,
            handed_off_connections: 0,
            list_host: None,
            cleared: Vec::new(),
            metrics: Default::default(),
        }
    }
}

/// The metadata of an answer that is a value and nothing more (a Redis reply, a whole EXEC
/// reply): only its length is meaningful.
pub(crate) fn bare_meta(value_bytes: usize) -> stategrid_proto::Meta {
    stategrid_proto::Meta {
        value_bytes: value_bytes as u32,
        version: 0,
        created_ms: 0,
        updated_ms: 0,
        timeout: Default::default(),
        expires_in_ms: None,
        lock: None,
        evictable: true,
        content_type_bytes: 0,
    }
}

fn store_err(e: StoreError) -> Response {
    Response::Error(ErrorReply::new(e.code, e.detail))
}

impl Core {
    /// Applies a request that this shard serves, answering into `sink`, and counts it by
    /// kind and result for `/metrics` (`server::metrics`: two jump tables and one add).
    pub fn execute(
        &mut self,
        req: &ArchivedRequest,
        value: &[u8],
        now_ms: u64,
        request_id: u32,
        sink: &mut impl Sink,
    ) {
        self.execute_with_hash(req, None, value, now_ms, request_id, sink)
    }

    /// As [`Core::execute`], with the key's hash when the caller already computed it (the
    /// shard hashes a keyed request once, to route it, and passes the hash on: hash once).
    /// Every path that serves a request comes through here, so each is counted once.
    pub fn execute_with_hash(
        &mut self,
        req: &ArchivedRequest,
        hash: Option<u64>,
        value: &[u8],
        now_ms: u64,
        request_id: u32,
        sink: &mut impl Sink,
    ) {
        let op = super::metrics::op_index(req);
        let mut metered = Metered {
            inner: sink,
            code: None,
        };
        self.serve(req, hash, value, now_ms, request_id, &mut metered);
        self.metrics.count(op, metered.code);
    }

    /// Applies a request that this shard serves, answering into `sink`.
    ///
    /// Cost of a keyed request (the hot path): one hash (none when passed in), one table
    /// probe, for a write one copy of the value into a new allocation, for a read none (the
    /// value is passed by reference); one rkyv serialization of the answer's metadata. No
    /// allocation on a read.
    fn serve(
        &mut self,
        req: &ArchivedRequest,
        hash: Option<u64>,
        value: &[u8],
        now_ms: u64,
        request_id: u32,
        sink: &mut impl Sink,
    ) {
        self.requests += 1;
        if let Some(k) = req.key() {
            let ns = k.ns.to_native();
            let key = k.key.as_slice();
            let h = hash.unwrap_or_else(|| key_hash(ns, key));
            debug_assert_eq!(h, key_hash(ns, key), "a hash passed in is the key's");
            assert_eq!(
                owner_shard(partition_of(h), self.shards),
                self.shard,
                "request for a partition this shard does not own reached it"
            );
            if key.len() > self.cfg.key_bytes_max as usize {
                return sink.error(
                    request_id,
                    ErrorCode::KeyTooLong,
                    self.cfg.key_bytes_max as u64,
                );
            }
            if let ArchivedRequest::RedisTx { .. } = req {
                return super::resp_tx::run(self, req, h, now_ms, request_id, sink);
            }
            return self.execute_keyed(req, h, ns, key, value, now_ms, request_id, sink);
        }
        let resp = match req {
            ArchivedRequest::Hello { .. } | ArchivedRequest::HelloShard { .. } => Response::Error(
                ErrorReply::with_message(ErrorCode::InvalidRequest, 0, "Hello is sent once, first"),
            ),
            ArchivedRequest::NsOpen { name } => self.ns_open(name.as_str()),
            ArchivedRequest::NsList => Response::Namespaces {
                items: self.ns_list_part(),
            },
            ArchivedRequest::NsClear { ns } => Response::Count {
                objects: self.ns_clear(ns.to_native(), now_ms),
            },
            // In a store of several hosts, the objects this host is primary of: the hosts'
            // counts add up to the store's (the host asked sums them).
            ArchivedRequest::NsCount { ns } => Response::Count {
                objects: match self.primary_partitions.as_deref() {
                    Some(set) => self.store.ns_count_in(ns.to_native(), |p| set[p as usize]),
                    None => self.store.ns_count(ns.to_native()),
                },
            },
            ArchivedRequest::ListKeys { ns, cursor, limit } => self.list_keys(
                ns.to_native(),
                cursor.to_native(),
                limit.to_native(),
                None,
                now_ms,
            ),
            ArchivedRequest::ListKeysOfKind {
                ns,
                cursor,
                limit,
                kind,
            } => self.list_keys(
                ns.to_native(),
                cursor.to_native(),
                limit.to_native(),
                Some(kind.to_native()),
                now_ms,
            ),
            ArchivedRequest::MultiRead { ns, keys } => {
                return self.multi_read(
                    ns.to_native(),
                    keys.iter().map(|k| k.as_slice()),
                    now_ms,
                    request_id,
                    sink,
                );
            }
            ArchivedRequest::BulkPut { ns, items } => {
                self.bulk_put(ns.to_native(), items, value, now_ms)
            }
            ArchivedRequest::Stats => Response::Stats(self.stats_part()),
            _ => unreachable!("keyed requests are handled above"),
        };
        sink.respond(request_id, &resp, &[]);
    }

    #[allow(clippy::too_many_arguments)]
    fn execute_keyed(
        &mut self,
        req: &ArchivedRequest,
        h: u64,
        ns: u32,
        key: &[u8],
        value: &[u8],
        now: u64,
        id: u32,
        sink: &mut impl Sink,
    ) {
        let s = &mut self.store;
        let k = KeyRef::with_hash(ns, key, h);
        let written = |r: Result<u64, StoreError>| match r {
            Ok(version) => Response::Written { version },
            Err(e) => store_err(e),
        };
        let versioned = |r: Result<stategrid_proto::Meta, StoreError>| match r {
            Ok(meta) => Response::Written {
                version: meta.version,
            },
            Err(e) => store_err(e),
        };
        let resp = match req {
            ArchivedRequest::Add { opts, .. } => written(s.add(k, value, opts.to_native(), now)),
            ArchivedRequest::Put { opts, .. } => written(s.put(k, value, opts.to_native(), now)),
            ArchivedRequest::Update {
                opts, lock_token, ..
            } => written(s.update(
                k,
                value,
                opts.to_native(),
                lock_token.as_ref().map(|t| t.to_native()),
                now,
            )),
            ArchivedRequest::UpdateIfVersion {
                opts,
                version,
                lock_token,
                ..
            } => written(s.update_if_version(
                k,
                value,
                opts.to_native(),
                version.to_native(),
                lock_token.as_ref().map(|t| t.to_native()),
                now,
            )),
            ArchivedRequest::UpdateAndUnlock {
                opts, lock_token, ..
            } => written(s.update_and_unlock(
                k,
                value,
                opts.to_native(),
                lock_token.to_native(),
                now,
            )),
            ArchivedRequest::Read { .. } => match s.read(k, now) {
                Ok((meta, v)) => {
                    return sink.respond(
                        id,
                        &Response::Value {
                            meta,
                            lock_token: None,
                        },
                        std::slice::from_ref(&v),
                    );
                }
                Err(e) => store_err(e),
            },
            ArchivedRequest::ReadAndLock { .. } => match s.read_and_lock(k, now) {
                Ok((meta, v, token)) => {
                    return sink.respond(
                        id,
                        &Response::Value {
                            meta,
                            lock_token: Some(token),
                        },
                        std::slice::from_ref(&v),
                    );
                }
                Err(e) => store_err(e),
            },
            ArchivedRequest::Unlock { lock_token, .. } => {
                versioned(s.unlock(k, lock_token.to_native(), now))
            }
            ArchivedRequest::RefreshLock { lock_token, .. } => {
                versioned(s.refresh_lock(k, lock_token.to_native(), now))
            }
            ArchivedRequest::Remove {
                lock_token, force, ..
            } => match s.remove(k, lock_token.as_ref().map(|t| t.to_native()), *force, now) {
                Ok(()) => Response::Ok,
                Err(e) => store_err(e),
            },
            ArchivedRequest::Touch { timeout, .. } => {
                match s.touch(k, timeout.as_ref().map(|t| t.to_native()), now) {
                    Ok(meta) => Response::Meta { meta },
                    Err(e) => store_err(e),
                }
            }
            ArchivedRequest::Meta { .. } => match s.meta(k, now) {
                Ok(meta) => Response::Meta { meta },
                Err(e) => store_err(e),
            },
            ArchivedRequest::Redis { op, .. } => {
                return self.redis_answer(k, op.to_native(), value, now, id, sink);
            }
            _ => unreachable!("not a keyed request"),
        };
        sink.respond(id, &resp, &[]);
    }

    /// Can `other` (of namespace `ns`) take part in one atomic step with the key of hash `h`
    /// here? On a single host: when this shard owns it too. In a store of several hosts: when
    /// it is in the same partition, since a partition, not a shard, is what moves between
    /// hosts and what one replicated change covers. The error says what to do.
    pub fn colocated(&self, h: u64, ns: u32, other: &[u8]) -> Result<(), ErrorReply> {
        if other.len() > self.cfg.key_bytes_max as usize {
            return Err(ErrorReply::new(
                ErrorCode::KeyTooLong,
                self.cfg.key_bytes_max as u64,
            ));
        }
        let (p, q) = (partition_of(h), partition_of(key_hash(ns, other)));
        let ok = if self.primary_partitions.is_some() {
            p == q
        } else {
            owner_shard(q, self.shards) == self.shard
        };
        if ok {
            return Ok(());
        }
        Err(ErrorReply::with_message(
            ErrorCode::InvalidRequest,
            crate::resp::render::CROSS_PARTITION,
            "the keys of one atomic step must live in one partition; give them a common {hash tag} (e.g. {user1}:a, {user1}:b)",
        ))
    }

    /// A Redis operation on a key this shard serves, without a native request: what the RESP
    /// front calls for a key it owns (`server/shard/resp_conn.rs`), so a command is neither
    /// serialized into an archive nor validated again. The same checks and answers as
    /// [`Core::execute`] with `Request::Redis`; the caller has checked the route (this shard,
    /// this host, and for a write no replica to wait for).
    ///
    /// Cost: the store operation only (one table probe; a SET copies its value once, from
    /// `value` into the store); a GET answers the stored buffer by reference.
    pub fn execute_redis(
        &mut self,
        k: KeyRef<'_>,
        op: RedisOp,
        value: &[u8],
        now_ms: u64,
        request_id: u32,
        sink: &mut impl Sink,
    ) {
        self.direct(
            super::metrics::OP_REDIS,
            k,
            request_id,
            sink,
            |core, sink| core.redis_answer(k, op, value, now_ms, request_id, sink),
        );
    }

    /// `Request::Meta` without the request (TTL, PTTL, EXPIRETIME over RESP), as
    /// [`Core::execute_redis`].
    pub fn execute_meta(
        &mut self,
        k: KeyRef<'_>,
        now_ms: u64,
        request_id: u32,
        sink: &mut impl Sink,
    ) {
        self.direct(
            super::metrics::OP_META,
            k,
            request_id,
            sink,
            |core, sink| {
                let resp = match core.store.meta(k, now_ms) {
                    Ok(meta) => Response::Meta { meta },
                    Err(e) => store_err(e),
                };
                sink.respond(request_id, &resp, &[]);
            },
        );
    }

    /// The direct path's frame around `serve`: what `execute` does for every keyed request
    /// (count it, refuse a key over `key_bytes_max`, count its result as `op` for `/metrics`).
    fn direct<S: Sink>(
        &mut self,
        op: usize,
        k: KeyRef<'_>,
        request_id: u32,
        sink: &mut S,
        serve: impl FnOnce(&mut Core, &mut Metered<'_, S>),
    ) {
        let mut metered = Metered {
            inner: sink,
            code: None,
        };
        if self.direct_key_ok(k, request_id, &mut metered) {
            serve(self, &mut metered);
        }
        self.metrics.count(op, metered.code);
    }

    /// Counts a keyed request and refuses a key over `key_bytes_max` (answered into `sink`:
    /// false).
    fn direct_key_ok(&mut self, k: KeyRef<'_>, request_id: u32, sink: &mut impl Sink) -> bool {
        self.requests += 1;
        debug_assert_eq!(
            owner_shard(partition_of(k.hash), self.shards),
            self.shard,
            "request for a partition this shard does not own reached it"
        );
        if k.key.len() > self.cfg.key_bytes_max as usize {
            sink.error(
                request_id,
                ErrorCode::KeyTooLong,
                self.cfg.key_bytes_max as u64,
            );
            return false;
        }
        true
    }

    /// Applies a Redis operation and answers it (`Value` by reference, `Items` in the trailer).
    fn redis_answer(
        &mut self,
        k: KeyRef<'_>,
        op: RedisOp,
        value: &[u8],
        now: u64,
        id: u32,
        sink: &mut impl Sink,
    ) {
        // RENAME's new name (`value`) must be served by this same atomic step: checked here,
        // where the native, direct and transaction paths all meet.
        if let RedisOp::Rename { .. } = op
            && let Err(e) = self.colocated(k.hash, k.ns, value)
        {
            return sink.respond(id, &Response::Error(e), &[]);
        }
        let fields_max = self.cfg.hash_fields_max as usize;
        let resp = match self.store.redis(k, op, value, fields_max, now) {
            Ok(RedisOut::Ok) => Response::Ok,
            Ok(RedisOut::Nil) => Response::Nil,
            Ok(RedisOut::Int(n)) => Response::Int { n },
            Ok(RedisOut::Value(v)) => {
                // As `Read`: the stored buffer goes to the sink by reference.
                let meta = bare_meta(v.len());
                return sink.respond(
                    id,
                    &Response::Value {
                        meta,
                        lock_token: None,
                    },
                    std::slice::from_ref(&v),
                );
            }
            Ok(RedisOut::Items(bytes, count)) => {
                return sink.respond(id, &Response::Items { count }, &[Value::from(bytes)]);
            }
            Err(e) => store_err(e),
        };
        sink.respond(id, &resp, &[]);
    }

    fn ns_open(&mut self, name: &str) -> Response {
        let max = self.cfg.namespace_bytes_max;
        if name.is_empty() || name.len() > max as usize {
            return Response::Error(ErrorReply::new(ErrorCode::NameTooLong, max as u64));
        }
        let reg = self
            .registry
            .as_mut()
            .expect("NsOpen is routed to shard 0, which keeps the registry");
        let id = stategrid_proto::hash::namespace_id(name);
        match reg.names.get(&id) {
            Some(existing) if existing != name => Response::Error(ErrorReply::with_message(
                ErrorCode::NamespaceCollision,
                id as u64,
                format!("'{name}' has the same id as existing namespace '{existing}'"),
            )),
            Some(_) => Response::Namespace { id },
            None => {
                reg.names.insert(id, name.to_owned());
                Response::Namespace { id }
            }
        }
    }

    /// This shard's view of the namespaces: its object counts, plus names on shard 0.
    fn ns_list_part(&self) -> Vec<NsInfo> {
        let mut items: Vec<NsInfo> = self
            .store
            .ns_ids()
            .map(|(id, objects)| NsInfo {
                id,
                name: String::new(),
                objects,
            })
            .collect();
        if let Some(reg) = &self.registry {
            for (id, name) in &reg.names {
                match items.iter_mut().find(|i| i.id == *id) {
                    Some(i) => i.name = name.clone(),
                    None => items.push(NsInfo {
                        id: *id,
                        name: name.clone(),
                        objects: 0,
                    }),
                }
            }
        }
        items
    }

    /// A page of keys from this shard. Cursor = shard (high 32 bits) and slab slot (low 32).
    /// A page of `ns`'s keys (of value kind `kind` when given) from `cursor`.
    /// Clears `ns` here. In a store of several hosts only the partitions this host is primary
    /// of are cleared, each noted in `cleared` for its replicas; every host clears its own
    /// (the host asked sends the clear to all). Cost: O(objects of this shard).
    fn ns_clear(&mut self, ns: u32, now_ms: u64) -> u64 {
        let Some(set) = self.primary_partitions.as_deref() else {
            return self.store.ns_clear(ns, now_ms);
        };
        let mut removed = 0;
        for p in (self.shard as u32..stategrid_proto::PARTITIONS).step_by(self.shards) {
            if !set[p as usize] {
                continue;
            }
            let (n, found) = self.store.ns_clear_partition(ns, p, now_ms);
            removed += n;
            if found {
                self.cleared.push((ns, p));
            }
        }
        removed
    }

    fn list_keys(
        &mut self,
        ns: u32,
        cursor: u64,
        limit: u32,
        kind: Option<ValueKind>,
        now_ms: u64,
    ) -> Response {
        if cursor == CURSOR_WHOLE_HOST {
            // One part of a whole-host listing: this shard's first page, and no next cursor
            // (the gathering shard merges the parts).
            let own = (self.shard as u64) << 32;
            return match self.list_keys(ns, own, limit, kind, now_ms) {
                Response::Keys { keys, .. } => Response::Keys {
                    keys,
                    next_cursor: 0,
                },
                other => other,
            };
        }
        let shard = cursor_shard(cursor);
        if shard >= self.shards {
            return Response::Error(ErrorReply::with_message(
                ErrorCode::InvalidRequest,
                0,
                format!(
                    "cursor {cursor} names shard {shard}, and this host has {}",
                    self.shards
                ),
            ));
        }
        let max = self.cfg.items_per_request_max;
        if limit == 0 || limit > max {
            return Response::Error(ErrorReply::new(ErrorCode::TooManyItems, max as u64));
        }
        // Bound the work of one page: a namespace with few keys among many costs a scan.
        let scan_slots_max = (limit as usize * LIST_SCAN_SLOTS_PER_KEY).max(LIST_SCAN_SLOTS_MIN);
        let primary = self.primary_partitions.as_deref();
        let (keys, next) = self.store.list_keys_in(
            ns,
            cursor as u32,
            limit as usize,
            scan_slots_max,
            now_ms,
            kind,
            |p| primary.is_none_or(|set| set[p as usize]),
        );
        let (host, hosts) = match self.list_host {
            Some(h) if cursor & CURSOR_STORE_WIDE != 0 => h,
            _ => (0, 1),
        };
        let host_bits = match hosts {
            1 => 0,
            _ => CURSOR_STORE_WIDE | (host as u64) << 56,
        };
        let next_cursor = match next {
            Some(slot) => host_bits | ((self.shard as u64) << 32) | slot as u64,
            None if self.shard + 1 < self.shards => host_bits | (self.shard as u64 + 1) << 32,
            // The next host's listing starts at its first shard.
            None if host + 1 < hosts => CURSOR_STORE_WIDE | (host as u64 + 1) << 56,
            None => 0,
        };
        Response::Keys { keys, next_cursor }
    }

    fn multi_read<'a>(
        &mut self,
        ns: u32,
        keys: impl ExactSizeIterator<Item = &'a [u8]>,
        now_ms: u64,
        id: u32,
        sink: &mut impl Sink,
    ) {
        let max = self.cfg.items_per_request_max as usize;
        if keys.len() > max {
            return sink.error(id, ErrorCode::TooManyItems, max as u64);
        }
        let mut items = Vec::with_capacity(keys.len());
        let mut values = Vec::with_capacity(keys.len());
        for key in keys {
            if key.len() > self.cfg.key_bytes_max as usize {
                items.push(ItemResult::Failed(ErrorReply::new(
                    ErrorCode::KeyTooLong,
                    self.cfg.key_bytes_max as u64,
                )));
                continue;
            }
            match self.store.read(KeyRef::new(ns, key), now_ms) {
                Ok((meta, v)) => {
                    items.push(ItemResult::Found(meta));
                    values.push(v);
                }
                Err(e) => items.push(ItemResult::Failed(ErrorReply::new(e.code, e.detail))),
            }
        }
        sink.respond(id, &Response::Multi { items }, &values);
    }

    fn bulk_put(
        &mut self,
        ns: u32,
        items: &rkyv::vec::ArchivedVec<stategrid_proto::ArchivedBulkItem>,
        values: &[u8],
        now_ms: u64,
    ) -> Response {
        let max = self.cfg.items_per_request_max as usize;
        if items.len() > max {
            return Response::Error(ErrorReply::new(ErrorCode::TooManyItems, max as u64));
        }
        let total: u64 = items.iter().map(|i| i.value_bytes.to_native() as u64).sum();
        if total != values.len() as u64 {
            return Response::Error(ErrorReply::with_message(
                ErrorCode::InvalidRequest,
                0,
                format!(
                    "bulk put items announce {total} value bytes, the frame carries {}",
                    values.len()
                ),
            ));
        }
        let mut off = 0usize;
        let mut out = Vec::with_capacity(items.len());
        for item in items.iter() {
            let len = item.value_bytes.to_native() as usize;
            let value = &values[off..off + len];
            off += len;
            let key = item.key.as_slice();
            let r = if key.len() > self.cfg.key_bytes_max as usize {
                Err(StoreError::new(
                    ErrorCode::KeyTooLong,
                    self.cfg.key_bytes_max as u64,
                ))
            } else {
                self.store
                    .put(KeyRef::new(ns, key), value, item.opts.to_native(), now_ms)
            };
            out.push(match r {
                Ok(version) => PutResult::Written { version },
                Err(e) => PutResult::Failed(ErrorReply::new(e.code, e.detail)),
            });
        }
        Response::Bulk { items: out }
    }

    fn stats_part(&self) -> stategrid_proto::Stats {
        let st = self.store.stats();
        stategrid_proto::Stats {
            objects: st.objects,
            object_bytes: st.object_bytes,
            evictions: st.evictions,
            expirations: st.expirations,
            requests: self.requests,
            connections: self.connections,
            shard_allocations: crate::alloc_count::thread_allocations(),
            ring_waits: self.ring_waits,
            serve_allocations: self.serve_allocations,
            forwarded_requests: self.forwarded_requests,
            handed_off_connections: self.handed_off_connections,
            ..Default::default()
        }
    }
}

/// Splits a multi-key request into one sub-request per owning shard.
/// Returns, per shard that has items, the sub-request frame and the original item indexes.
pub fn split(
    req: &ArchivedRequest,
    value: &[u8],
    shards: usize,
) -> Vec<(usize, Vec<u8>, Vec<u32>)> {
    let owner = |ns: u32, k: &[u8]| owner_shard(partition_of(key_hash(ns, k)), shards);
    let mut groups: Vec<Vec<u32>> = vec![Vec::new(); shards];
    let mut out = Vec::new();
    match req {
        ArchivedRequest::MultiRead { ns, keys } => {
            let ns = ns.to_native();
            for (i, k) in keys.iter().enumerate() {
                groups[owner(ns, k.as_slice())].push(i as u32);
            }
            for (s, idx) in groups
                .into_iter()
                .enumerate()
                .filter(|(_, g)| !g.is_empty())
            {
                let sub = Request::MultiRead {
                    ns,
                    keys: idx
                        .iter()
                        .map(|&i| keys[i as usize].as_slice().to_vec())
                        .collect(),
                };
                let mut frame = Vec::new();
                codec::encode_request(&mut frame, 0, &sub, &[]);
                out.push((s, frame, idx));
            }
        }
        ArchivedRequest::BulkPut { ns, items } => {
            let ns = ns.to_native();
            let mut offsets = Vec::with_capacity(items.len());
            let mut off = 0usize;
            for (i, it) in items.iter().enumerate() {
                groups[owner(ns, it.key.as_slice())].push(i as u32);
                let len = it.value_bytes.to_native() as usize;
                offsets.push((off, len));
                off += len;
            }
            if off != value.len() {
                return Vec::new(); // the local pass answers InvalidRequest
            }
            for (s, idx) in groups
                .into_iter()
                .enumerate()
                .filter(|(_, g)| !g.is_empty())
            {
                let sub_items = idx
                    .iter()
                    .map(|&i| {
                        let it = &items[i as usize];
                        stategrid_proto::BulkItem {
                            key: it.key.as_slice().to_vec(),
                            value_bytes: it.value_bytes.to_native(),
                            opts: it.opts.to_native(),
                        }
                    })
                    .collect();
                let parts: Vec<&[u8]> = idx
                    .iter()
                    .map(|&i| {
                        let (o, l) = offsets[i as usize];
                        &value[o..o + l]
                    })
                    .collect();
                let mut frame = Vec::new();
                codec::encode_request_parts(
                    &mut frame,
                    0,
                    &Request::BulkPut {
                        ns,
                        items: sub_items,
                    },
                    &parts,
                );
                out.push((s, frame, idx));
            }
        }
        _ => unreachable!("only multi-key requests are split"),
    }
    out
}

/// Partitions must divide evenly enough for any shard count we allow.
const _: () = assert!(PARTITIONS >= 1024);
