//! Request and response messages (rkyv archives inside frames).
//!
//! Values ride outside the archive, in the frame's trailer: a request that writes one value
//! (`Add`, `Put`, `Update`, `UpdateIfVersion`, `UpdateAndUnlock`) carries it as the trailer;
//! `BulkPut` carries all item values concatenated in item order; a response with one value
//! (`Value`) or several (`Multi`) does the same.

use rkyv::{Archive, Deserialize, Serialize};

/// A namespace id: what `NsOpen` returns for a name. Derived from the name (see
/// [`crate::hash::namespace_id`]), so every host and client computes the same id.
pub type NsId = u32;

/// How an object's timeout runs. ScaleOut's names.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[rkyv(derive(Debug, PartialEq, Eq, Clone, Copy))]
#[repr(u8)]
pub enum TimeoutKind {
    /// Expires `timeout_s` after the last write that set the timeout.
    #[default]
    Absolute,
    /// Every read and update restarts the timeout (sessions).
    Sliding,
    /// Updates restart the timeout, reads do not.
    ResetOnUpdate,
}

/// An object's timeout: 0 seconds means never.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[rkyv(derive(Debug, PartialEq, Eq, Clone, Copy))]
pub struct Timeout {
    pub timeout_s: u32,
    pub kind: TimeoutKind,
}

/// The largest timeout an object may have, as in ScaleOut (about 48.5 days).
pub const TIMEOUT_S_MAX: u32 = 4_194_303;

/// Options for a write.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct WriteOpts {
    /// `None` keeps an existing object's timeout (a new object gets none).
    pub timeout: Option<Timeout>,
    /// May the LRU evict this object when memory runs short?
    pub evictable: bool,
    /// Bytes of the object's content type (the HTTP `Content-Type` it was written with),
    /// carried at the END of the value trailer: the value is the trailer's first
    /// `len - content_type_bytes` bytes. 0: none (every write sets the type it carries, so a
    /// write without one clears it). Appended field: in the archive's padding, so a frame
    /// from a client that predates it reads as 0.
    pub content_type_bytes: u8,
}

impl Default for WriteOpts {
    fn default() -> Self {
        WriteOpts {
            timeout: None,
            evictable: true,
            content_type_bytes: 0,
        }
    }
}

/// The object address carried by every keyed request.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Key {
    pub ns: NsId,
    pub key: Vec<u8>,
}

/// One item of a `BulkPut`; its value is the next `value_bytes` of the trailer.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct BulkItem {
    pub key: Vec<u8>,
    pub value_bytes: u32,
    pub opts: WriteOpts,
}

/// Every request a client can send.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum Request {
    /// First frame on a connection.
    Hello { version: u16, client: String },
    /// Open (create if missing) a namespace by name.
    NsOpen { name: String },
    /// All namespaces with their object counts.
    NsList,
    /// Remove every object in a namespace (locks are ignored).
    NsClear { ns: NsId },
    /// Objects in a namespace.
    NsCount { ns: NsId },
    /// Create only: `AlreadyExists` when present. Value in the trailer.
    Add { key: Key, opts: WriteOpts },
    /// Create or replace, ignoring locks (ScaleOut's AddOrUpdate). Value in the trailer.
    Put { key: Key, opts: WriteOpts },
    /// Replace an existing object; needs `lock_token` when the object is locked.
    Update {
        key: Key,
        opts: WriteOpts,
        lock_token: Option<u64>,
    },
    /// Replace only if the stored version is `version` (`VersionMismatch` otherwise).
    UpdateIfVersion {
        key: Key,
        opts: WriteOpts,
        version: u64,
        lock_token: Option<u64>,
    },
    /// Value and metadata; restarts a sliding timeout.
    Read { key: Key },
    /// Read and take the lock atomically; `Locked` when another holder has it.
    ReadAndLock { key: Key },
    /// Replace the value and release the lock atomically. Value in the trailer.
    UpdateAndUnlock {
        key: Key,
        opts: WriteOpts,
        lock_token: u64,
    },
    /// Release a lock without changing the value.
    Unlock { key: Key, lock_token: u64 },
    /// Restart a held lock's expiry.
    RefreshLock { key: Key, lock_token: u64 },
    /// Remove; a locked object needs its token unless `force`.
    Remove {
        key: Key,
        lock_token: Option<u64>,
        force: bool,
    },
    /// Restart the timeout, or set a new one when `timeout` is given.
    Touch { key: Key, timeout: Option<Timeout> },
    /// Metadata only; does not restart a sliding timeout.
    Meta { key: Key },
    /// A page of keys. `cursor` 0 starts; the response's `next_cursor` 0 means done.
    ListKeys { ns: NsId, cursor: u64, limit: u32 },
    /// Read several keys of one namespace; per-item results.
    MultiRead { ns: NsId, keys: Vec<Vec<u8>> },
    /// Put several objects of one namespace; per-item results. Values in the trailer.
    BulkPut { ns: NsId, items: Vec<BulkItem> },
    /// This host's status (for `stategrid show`).
    Stats,
    /// The partition map as clients route by it: which host is primary of each partition.
    GetMap,
    // ---- Host to host, accepted only on `int_port` -----------------------------------------
    /// Set one object on a replica (or pending replica) to the primary's state, or remove it
    /// (`state` None). Value in the trailer. Also the unit of a migration stream.
    Replicate {
        epoch: u64,
        from: u64,
        partition: u32,
        key: Key,
        state: Option<ObjectState>,
    },
    /// Sent to a partition's primary by its pending owner `to`: stream `partition` to `to`
    /// (`Replicate` frames on its own link to `to`, then `MigrateEnd`).
    MigratePull { epoch: u64, to: u64, partition: u32 },
    /// The last frame of a migration stream: `objects` were sent before it.
    MigrateEnd {
        epoch: u64,
        from: u64,
        partition: u32,
        objects: u64,
    },
    // ---- Client requests added later (appended: variant numbers are wire format) ------------
    /// A Redis-protocol operation on one object (see `RedisOp` and docs/redis.md). Values (a
    /// string, or a hash's fields) ride in the trailer. Served by the partition's primary and
    /// replicated by state like every other write.
    Redis { key: Key, op: RedisOp },
    // ---- Shard-aware connections ------------------------------------------------------------
    /// First frame of a shard-aware connection: as `Hello`, and serve this connection on shard
    /// `shard` of the host (the server hands the socket over when it landed elsewhere). A
    /// `shard` at or past the host's shard count is served where it landed. Answered with
    /// `HelloShardOk`, which names the shard that serves it. Old servers answer
    /// `InvalidRequest`; old clients keep sending `Hello` and are served where they land.
    HelloShard {
        version: u16,
        client: String,
        shard: u32,
    },
    // ---- Added later (appended: variant numbers are wire format) ----------------------------
    /// As `ListKeys`, listing only the objects whose value is of `kind` (Redis `SCAN ... TYPE`):
    /// filtered where the objects are, so a page never carries keys the caller would drop.
    ListKeysOfKind {
        ns: NsId,
        cursor: u64,
        limit: u32,
        kind: ValueKind,
    },
    /// Host to host (on `int_port`): the primary of `partition` restarted these objects'
    /// timeouts without changing them (reads of sliding objects, `Touch` without a new
    /// timeout). Batched per partition every `sliding_touch_replication_ms`. A replica applies
    /// an item only to a live object of exactly that version, and only moves its expiry
    /// later: a touch never re-creates a removed object nor overwrites a newer state.
    ReplicateTouches {
        epoch: u64,
        from: u64,
        partition: u32,
        items: Vec<TouchItem>,
    },
    /// Host to host (on `int_port`): the primary of `partition` removed every object of `ns`
    /// in it (a namespace clear); its copies do the same. Sent on the link that carries the
    /// partition's changes, so it lands after every change made before the clear and before
    /// every change made after it.
    NsClearPartition {
        epoch: u64,
        from: u64,
        partition: u32,
        ns: NsId,
    },
    /// A Redis transaction (`MULTI` ... `EXEC`): the queued commands of one RESP connection,
    /// run back to back on the shard that serves all their keys, so nothing else runs in
    /// between (atomic and isolated). Routed by `key` like any keyed request (relayed to the
    /// primary host, forwarded to the owning shard); every key in `keys` and `watched` must be
    /// served there too (one partition in a store of several hosts), else the answer is an
    /// error. Answered with `Value`: the whole RESP reply of `EXEC`, ready to send.
    RedisTx {
        /// The first key of the transaction (its partition routes the request).
        key: Key,
        /// The connection speaks RESP3 (`HELLO 3`): replies are rendered so.
        resp3: bool,
        /// Every other key the queued commands name (written ones are replicated).
        keys: Vec<Vec<u8>>,
        /// `WATCH`ed keys and their stamps when watched: any difference aborts (null reply).
        watched: Vec<WatchStamp>,
        /// The queued commands, each its arguments (name first).
        commands: Vec<Vec<Vec<u8>>>,
    },
    /// Proves who the client is, after `Hello` (`user` None: the user `default`, whose
    /// password is the server's `requirepass`). Answered `Ok`, or `AuthFailed`. While a
    /// server has client credentials configured, a connection is served nothing else but
    /// `Hello`/`Auth` until one succeeds (`AuthRequired`), and its frames stay under
    /// `unauth_frame_bytes_max`. A server without credentials answers `Ok` to any `Auth`.
    Auth {
        user: Option<String>,
        password: String,
    },
}

/// One restarted timeout of a `ReplicateTouches`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct TouchItem {
    pub ns: NsId,
    pub key: Vec<u8>,
    /// The object's version on the primary when the batch left.
    pub version: u64,
    /// Its new deadline, Unix milliseconds of the primary's clock.
    pub expires_at_ms: u64,
}

/// A `WATCH`ed key of `RedisTx` and the object's (version, creation time) when it was
/// watched; `exists` false when it was absent.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct WatchStamp {
    pub key: Vec<u8>,
    pub exists: bool,
    pub version: u64,
    pub created_ms: u64,
}

/// An object's whole state, as replication and migration copy it. Times are Unix
/// milliseconds of the primary's clock (hosts of one store keep their clocks in sync).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ObjectState {
    pub version: u64,
    pub created_ms: u64,
    pub updated_ms: u64,
    /// 0 = never.
    pub expires_at_ms: u64,
    /// 0 = not locked.
    pub lock_token: u64,
    pub lock_expires_at_ms: u64,
    pub timeout: Timeout,
    pub evictable: bool,
    /// What the value bytes are: a string, or a hash in the store's field encoding.
    pub kind: ValueKind,
    /// Bytes of the object's content type at the end of the value trailer (see
    /// [`WriteOpts::content_type_bytes`]): replication and migration carry it with the value.
    pub content_type_bytes: u8,
}

/// What an object's value bytes hold. Native reads serve strings only (`WrongType` for others).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[rkyv(derive(Debug, PartialEq, Eq, Clone, Copy))]
#[repr(u8)]
pub enum ValueKind {
    /// Opaque bytes (every native write; Redis strings).
    #[default]
    String,
    /// A Redis hash: field/value pairs in the encoding of `stategrid::store::hash`.
    Hash,
}

impl ArchivedValueKind {
    pub fn to_native(&self) -> ValueKind {
        match self {
            ArchivedValueKind::String => ValueKind::String,
            ArchivedValueKind::Hash => ValueKind::Hash,
        }
    }
}

/// A `SET` condition.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug, PartialEq, Eq, Clone, Copy))]
#[repr(u8)]
pub enum SetCond {
    Always,
    /// NX
    IfAbsent,
    /// XX
    IfPresent,
}

/// What a write does to the object's expiry.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug, PartialEq, Eq, Clone, Copy))]
pub enum SetExpire {
    /// KEEPTTL (and GETEX without an option): the expiry stays.
    Keep,
    /// No expiry (a plain SET, PERSIST).
    Clear,
    /// Expire at this Unix time in milliseconds (EX/PX/EXAT/PXAT, converted by the server).
    AtMs(u64),
}

/// An `EXPIRE` condition (Redis 7).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug, PartialEq, Eq, Clone, Copy))]
#[repr(u8)]
pub enum ExpireCond {
    Always,
    /// NX: only when the key has no expiry.
    Nx,
    /// XX: only when it has one.
    Xx,
    /// GT: only when the new expiry is later (no expiry counts as infinite).
    Gt,
    /// LT: only when the new expiry is sooner.
    Lt,
}

/// The operations a Redis command becomes. Each runs atomically on the primary's shard; writes
/// respect a native client's lock (`Locked`) instead of breaking it. Answers: `Int`, `Nil`,
/// `Ok`, `Value` (the bytes in the trailer) or `Items` (a list in the trailer).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug, PartialEq, Eq, Clone, Copy))]
pub enum RedisOp {
    /// GET: `Value` or `Nil`.
    Get,
    /// SET with its options; the value in the trailer. `Ok`/`Nil` (condition not met), or with
    /// `get` the old value (`Value`/`Nil`).
    Set {
        cond: SetCond,
        expire: SetExpire,
        get: bool,
    },
    /// INCRBY (INCR, DECR, DECRBY): the new `Int`.
    IncrBy { by: i64 },
    /// APPEND the trailer: the new length.
    Append,
    /// STRLEN.
    Strlen,
    /// GETDEL: `Value`/`Nil`.
    GetDel,
    /// GETEX: `Value`/`Nil`, changing the expiry.
    GetEx { expire: SetExpire },
    /// EXPIRE family at an absolute time (a past one deletes): `Int` 1 or 0.
    Expire { at_ms: u64, cond: ExpireCond },
    /// PERSIST: `Int` 1 when an expiry was removed.
    Persist,
    /// TYPE: `Int` 0 none, 1 string, 2 hash.
    Type,
    /// EXISTS for one key: `Int` 1/0.
    Exists,
    /// DEL/UNLINK for one key, respecting locks: `Int` 1/0.
    Del,
    /// HSET/HMSET (HSETNX with `nx`): trailer = field/value pairs as a list. `Int` fields added.
    HSet { nx: bool },
    /// HGET: trailer = one field. `Value`/`Nil`.
    HGet,
    /// HMGET: trailer = fields. `Items` with nils.
    HMGet,
    /// HGETALL: `Items` field, value, field, value...
    HGetAll,
    /// HKEYS: `Items`.
    HKeys,
    /// HVALS: `Items`.
    HVals,
    /// HDEL: trailer = fields. `Int` removed.
    HDel,
    /// HEXISTS: trailer = one field. `Int` 1/0.
    HExists,
    /// HLEN: `Int`.
    HLen,
    /// HSTRLEN: trailer = one field. `Int`.
    HStrlen,
    /// HINCRBY: trailer = one field. `Int` the new value.
    HIncrBy { by: i64 },
    // ---- Added later (appended: variant numbers are wire format) ----------------------------
    /// RENAME (RENAMENX with `nx`): trailer = the new name, which must be in the key's
    /// partition (one atomic step on one shard). The value, kind and expiry move; a lock on
    /// either name refuses it. `Ok` (RENAMENX: `Int` 1, or 0 when the new name exists);
    /// `NotFound` when the key is absent.
    Rename { nx: bool },
}

impl RedisOp {
    /// Reads change nothing and need no replication.
    pub fn is_read_only(&self) -> bool {
        matches!(
            self,
            RedisOp::Get
                | RedisOp::Strlen
                | RedisOp::Type
                | RedisOp::Exists
                | RedisOp::HGet
                | RedisOp::HMGet
                | RedisOp::HGetAll
                | RedisOp::HKeys
                | RedisOp::HVals
                | RedisOp::HExists
                | RedisOp::HLen
                | RedisOp::HStrlen
        )
    }
}

impl ArchivedRedisOp {
    pub fn to_native(&self) -> RedisOp {
        rkyv::deserialize::<RedisOp, rkyv::rancor::Failure>(self)
            .expect("a validated RedisOp deserializes")
    }
}

impl ArchivedObjectState {
    pub fn to_native(&self) -> ObjectState {
        ObjectState {
            version: self.version.to_native(),
            created_ms: self.created_ms.to_native(),
            updated_ms: self.updated_ms.to_native(),
            expires_at_ms: self.expires_at_ms.to_native(),
            lock_token: self.lock_token.to_native(),
            lock_expires_at_ms: self.lock_expires_at_ms.to_native(),
            timeout: self.timeout.to_native(),
            evictable: self.evictable,
            kind: self.kind.to_native(),
            content_type_bytes: self.content_type_bytes,
        }
    }
}

/// One host as `GetMap` lists it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct MapHost {
    pub id: u64,
    /// Its client address (`ip:svr_port`).
    pub svr_addr: String,
    /// Takes its share of partitions (false: joining, or leaving the store).
    pub active: bool,
}

/// The answer to `GetMap`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct MapInfo {
    pub epoch: u64,
    pub hosts: Vec<MapHost>,
    /// Per partition, the index in `hosts` of its primary; `u16::MAX` when it has none.
    pub primaries: Vec<u16>,
    /// Partitions with a copy still moving (a pending or outgoing copy): 0 once settled.
    pub moving: u32,
    /// The fewest full replicas any partition has (below `max_replicas` while the store
    /// re-creates copies after a failure).
    pub replicas_min: u8,
}

impl Request {
    /// The object this request addresses, if it addresses exactly one (as
    /// [`ArchivedRequest::key`] for the archived form: clients route by it).
    pub fn key(&self) -> Option<&Key> {
        match self {
            Request::Add { key, .. }
            | Request::Put { key, .. }
            | Request::Update { key, .. }
            | Request::UpdateIfVersion { key, .. }
            | Request::Read { key }
            | Request::ReadAndLock { key }
            | Request::UpdateAndUnlock { key, .. }
            | Request::Unlock { key, .. }
            | Request::RefreshLock { key, .. }
            | Request::Remove { key, .. }
            | Request::Touch { key, .. }
            | Request::Meta { key }
            | Request::Redis { key, .. }
            | Request::RedisTx { key, .. }
            | Request::Replicate { key, .. } => Some(key),
            _ => None,
        }
    }

    /// Short name for logs and errors.
    pub fn name(&self) -> &'static str {
        ArchivedRequest::name_of(self.tag())
    }

    fn tag(&self) -> u8 {
        match self {
            Request::Hello { .. } => 0,
            Request::NsOpen { .. } => 1,
            Request::NsList => 2,
            Request::NsClear { .. } => 3,
            Request::NsCount { .. } => 4,
            Request::Add { .. } => 5,
            Request::Put { .. } => 6,
            Request::Update { .. } => 7,
            Request::UpdateIfVersion { .. } => 8,
            Request::Read { .. } => 9,
            Request::ReadAndLock { .. } => 10,
            Request::UpdateAndUnlock { .. } => 11,
            Request::Unlock { .. } => 12,
            Request::RefreshLock { .. } => 13,
            Request::Remove { .. } => 14,
            Request::Touch { .. } => 15,
            Request::Meta { .. } => 16,
            Request::ListKeys { .. } => 17,
            Request::MultiRead { .. } => 18,
            Request::BulkPut { .. } => 19,
            Request::Stats => 20,
            Request::GetMap => 21,
            Request::Replicate { .. } => 22,
            Request::MigratePull { .. } => 23,
            Request::MigrateEnd { .. } => 24,
            Request::Redis { .. } => 25,
            Request::HelloShard { .. } => 26,
            Request::ListKeysOfKind { .. } => 27,
            Request::ReplicateTouches { .. } => 28,
            Request::NsClearPartition { .. } => 29,
            Request::RedisTx { .. } => 30,
            Request::Auth { .. } => 31,
        }
    }
}

impl ArchivedRequest {
    /// The object this request addresses, if it addresses exactly one.
    #[inline]
    pub fn key(&self) -> Option<&ArchivedKey> {
        match self {
            ArchivedRequest::Add { key, .. }
            | ArchivedRequest::Put { key, .. }
            | ArchivedRequest::Update { key, .. }
            | ArchivedRequest::UpdateIfVersion { key, .. }
            | ArchivedRequest::Read { key }
            | ArchivedRequest::ReadAndLock { key }
            | ArchivedRequest::UpdateAndUnlock { key, .. }
            | ArchivedRequest::Unlock { key, .. }
            | ArchivedRequest::RefreshLock { key, .. }
            | ArchivedRequest::Remove { key, .. }
            | ArchivedRequest::Touch { key, .. }
            | ArchivedRequest::Meta { key }
            | ArchivedRequest::Redis { key, .. }
            | ArchivedRequest::RedisTx { key, .. }
            | ArchivedRequest::Replicate { key, .. } => Some(key),
            _ => None,
        }
    }

    /// Does this request carry one value in the trailer?
    #[inline]
    pub fn carries_value(&self) -> bool {
        matches!(
            self,
            ArchivedRequest::Add { .. }
                | ArchivedRequest::Put { .. }
                | ArchivedRequest::Update { .. }
                | ArchivedRequest::UpdateIfVersion { .. }
                | ArchivedRequest::UpdateAndUnlock { .. }
                | ArchivedRequest::BulkPut { .. }
                | ArchivedRequest::Redis { .. }
                | ArchivedRequest::Replicate { .. }
        )
    }

    /// The least a client's role must be to send this request: 0 none (`Hello`, `Auth`),
    /// 1 read, 2 read-write (writes, locks, removals), 3 admin (clearing a namespace).
    /// Host-to-host requests say 3 (they are refused on client ports anyway). One match.
    #[inline]
    pub fn role_needed(&self) -> u8 {
        match self {
            ArchivedRequest::Hello { .. }
            | ArchivedRequest::HelloShard { .. }
            | ArchivedRequest::Auth { .. } => 0,
            ArchivedRequest::NsOpen { .. }
            | ArchivedRequest::NsList
            | ArchivedRequest::NsCount { .. }
            | ArchivedRequest::Read { .. }
            | ArchivedRequest::Meta { .. }
            | ArchivedRequest::ListKeys { .. }
            | ArchivedRequest::ListKeysOfKind { .. }
            | ArchivedRequest::MultiRead { .. }
            | ArchivedRequest::Stats
            | ArchivedRequest::GetMap => 1,
            ArchivedRequest::Redis { op, .. } => {
                if op.to_native().is_read_only() {
                    1
                } else {
                    2
                }
            }
            ArchivedRequest::Add { .. }
            | ArchivedRequest::Put { .. }
            | ArchivedRequest::Update { .. }
            | ArchivedRequest::UpdateIfVersion { .. }
            | ArchivedRequest::ReadAndLock { .. }
            | ArchivedRequest::UpdateAndUnlock { .. }
            | ArchivedRequest::Unlock { .. }
            | ArchivedRequest::RefreshLock { .. }
            | ArchivedRequest::Remove { .. }
            | ArchivedRequest::Touch { .. }
            | ArchivedRequest::BulkPut { .. } => 2,
            // A transaction may write; a read-only user sends its reads one by one.
            ArchivedRequest::RedisTx { .. } => 2,
            ArchivedRequest::NsClear { .. }
            | ArchivedRequest::ReplicateTouches { .. }
            | ArchivedRequest::NsClearPartition { .. }
            | ArchivedRequest::Replicate { .. }
            | ArchivedRequest::MigratePull { .. }
            | ArchivedRequest::MigrateEnd { .. } => 3,
        }
    }

    /// Host-to-host requests: refused on the client port.
    #[inline]
    pub fn is_internal(&self) -> bool {
        matches!(
            self,
            ArchivedRequest::Replicate { .. }
                | ArchivedRequest::MigratePull { .. }
                | ArchivedRequest::MigrateEnd { .. }
                | ArchivedRequest::ReplicateTouches { .. }
                | ArchivedRequest::NsClearPartition { .. }
        )
    }

    pub fn name(&self) -> &'static str {
        let tag = match self {
            ArchivedRequest::Hello { .. } => 0,
            ArchivedRequest::NsOpen { .. } => 1,
            ArchivedRequest::NsList => 2,
            ArchivedRequest::NsClear { .. } => 3,
            ArchivedRequest::NsCount { .. } => 4,
            ArchivedRequest::Add { .. } => 5,
            ArchivedRequest::Put { .. } => 6,
            ArchivedRequest::Update { .. } => 7,
            ArchivedRequest::UpdateIfVersion { .. } => 8,
            ArchivedRequest::Read { .. } => 9,
            ArchivedRequest::ReadAndLock { .. } => 10,
            ArchivedRequest::UpdateAndUnlock { .. } => 11,
            ArchivedRequest::Unlock { .. } => 12,
            ArchivedRequest::RefreshLock { .. } => 13,
            ArchivedRequest::Remove { .. } => 14,
            ArchivedRequest::Touch { .. } => 15,
            ArchivedRequest::Meta { .. } => 16,
            ArchivedRequest::ListKeys { .. } => 17,
            ArchivedRequest::MultiRead { .. } => 18,
            ArchivedRequest::BulkPut { .. } => 19,
            ArchivedRequest::Stats => 20,
            ArchivedRequest::GetMap => 21,
            ArchivedRequest::Replicate { .. } => 22,
            ArchivedRequest::MigratePull { .. } => 23,
            ArchivedRequest::MigrateEnd { .. } => 24,
            ArchivedRequest::Redis { .. } => 25,
            ArchivedRequest::HelloShard { .. } => 26,
            ArchivedRequest::ListKeysOfKind { .. } => 27,
            ArchivedRequest::ReplicateTouches { .. } => 28,
            ArchivedRequest::NsClearPartition { .. } => 29,
            ArchivedRequest::RedisTx { .. } => 30,
            ArchivedRequest::Auth { .. } => 31,
        };
        Self::name_of(tag)
    }

    fn name_of(tag: u8) -> &'static str {
        const NAMES: [&str; 32] = [
            "hello",
            "ns-open",
            "ns-list",
            "ns-clear",
            "ns-count",
            "add",
            "put",
            "update",
            "update-if-version",
            "read",
            "read-and-lock",
            "update-and-unlock",
            "unlock",
            "refresh-lock",
            "remove",
            "touch",
            "meta",
            "list-keys",
            "multi-read",
            "bulk-put",
            "stats",
            "get-map",
            "replicate",
            "migrate-pull",
            "migrate-end",
            "redis",
            "hello-shard",
            "list-keys-of-kind",
            "replicate-touches",
            "ns-clear-partition",
            "redis-tx",
            "auth",
        ];
        NAMES[tag as usize]
    }
}

/// An object's lock as seen by `Meta`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct LockInfo {
    /// Milliseconds until the lock expires by itself.
    pub expires_in_ms: u64,
}

/// Everything known about an object except its value.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Meta {
    pub value_bytes: u32,
    /// Bumped by every change to value, lock or timeout.
    pub version: u64,
    /// Unix milliseconds.
    pub created_ms: u64,
    pub updated_ms: u64,
    pub timeout: Timeout,
    /// Milliseconds until the object expires; `None` when it never does.
    pub expires_in_ms: Option<u64>,
    pub lock: Option<LockInfo>,
    pub evictable: bool,
    /// Bytes of the object's content type (0: none). Where this metadata describes a value in
    /// a trailer (`Value`, a `Multi` item), the content type follows the value there: the
    /// item takes `value_bytes + content_type_bytes` bytes of the trailer. Appended field
    /// (in the archive's padding).
    pub content_type_bytes: u8,
}

/// Per-item outcome of `MultiRead`: the item's value (if found) is the next `meta.value_bytes`
/// bytes of the trailer.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum ItemResult {
    Found(Meta),
    Failed(ErrorReply),
}

/// Per-item outcome of `BulkPut`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum PutResult {
    Written { version: u64 },
    Failed(ErrorReply),
}

/// A namespace as listed by `NsList`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct NsInfo {
    pub id: NsId,
    pub name: String,
    pub objects: u64,
}

/// One parameter as shown by `Stats`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Param {
    pub name: String,
    pub value: String,
}

/// A host's status for `stategrid show`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct Stats {
    pub version: String,
    pub shards: u32,
    pub partitions: u32,
    pub uptime_s: u64,
    pub objects: u64,
    /// Bytes the store accounts to objects (what `max_memory` limits).
    pub object_bytes: u64,
    pub resident_bytes: u64,
    pub connections: u64,
    pub requests: u64,
    pub evictions: u64,
    pub expirations: u64,
    /// Heap allocations made by the shards' threads since start (see docs/design.md).
    pub shard_allocations: u64,
    /// Times a shard's network loop went idle and waited for the kernel (each wake-up costs
    /// glommio one small allocation pair, independent of how many requests it brings).
    pub ring_waits: u64,
    /// Of `shard_allocations`, those made while serving client sockets (accepting, parsing,
    /// executing, answering), as opposed to the runtime's own (timers, wake-ups).
    pub serve_allocations: u64,
    pub params: Vec<Param>,
    /// Keyed requests, and parts of multi-key requests, that a shard of this host sent to
    /// another shard to serve (they landed on a shard that does not own their partition).
    /// Stays zero for a shard-aware client's requests. Requests every shard answers (`Stats`,
    /// namespace counts) are not counted.
    pub forwarded_requests: u64,
    /// Connections handed to another shard after their `HelloShard` asked for it.
    pub handed_off_connections: u64,
}

/// Every response the server sends.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum Response {
    HelloOk {
        version: u16,
        server: String,
        shards: u32,
        partitions: u32,
    },
    Ok,
    Namespace {
        id: NsId,
    },
    Namespaces {
        items: Vec<NsInfo>,
    },
    Count {
        objects: u64,
    },
    /// A write's new version.
    Written {
        version: u64,
    },
    /// A read: value in the trailer. `lock_token` is set by `ReadAndLock`.
    Value {
        meta: Meta,
        lock_token: Option<u64>,
    },
    Meta {
        meta: Meta,
    },
    Keys {
        keys: Vec<Vec<u8>>,
        next_cursor: u64,
    },
    Multi {
        items: Vec<ItemResult>,
    },
    Bulk {
        items: Vec<PutResult>,
    },
    Stats(Stats),
    Map(MapInfo),
    Error(ErrorReply),
    /// A Redis integer answer.
    Int {
        n: i64,
    },
    /// A Redis null answer (absent, or a condition not met).
    Nil,
    /// A Redis list answer: `count` items in the trailer, each a u32 LE length (u32::MAX =
    /// null) and its bytes.
    Items {
        count: u32,
    },
    /// The answer to `HelloShard`: as `HelloOk`, and the shard that serves this connection.
    HelloShardOk {
        version: u16,
        server: String,
        shards: u32,
        partitions: u32,
        shard: u32,
    },
}

/// A typed failure. `detail` carries the number the code names (see [`ErrorCode`]).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ErrorReply {
    pub code: ErrorCode,
    pub detail: u64,
    /// Extra words for a person; empty on hot paths (no allocation).
    pub message: String,
}

impl ErrorReply {
    pub fn new(code: ErrorCode, detail: u64) -> Self {
        ErrorReply {
            code,
            detail,
            message: String::new(),
        }
    }

    pub fn with_message(code: ErrorCode, detail: u64, message: impl Into<String>) -> Self {
        ErrorReply {
            code,
            detail,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ErrorReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code.describe())?;
        match self.code {
            ErrorCode::Locked => write!(f, " (lock expires in {} ms)", self.detail)?,
            ErrorCode::VersionMismatch => write!(f, " (stored version is {})", self.detail)?,
            ErrorCode::ObjectTooLarge
            | ErrorCode::KeyTooLong
            | ErrorCode::FrameTooLarge
            | ErrorCode::NameTooLong
            | ErrorCode::TooManyItems => write!(f, " (limit {})", self.detail)?,
            _ => {}
        }
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ErrorReply {}

/// Typed error codes. Stable numbers: never reuse one.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[rkyv(derive(Debug, PartialEq, Eq, Clone, Copy))]
#[repr(u8)]
pub enum ErrorCode {
    /// No such object (or it expired).
    NotFound = 1,
    /// `Add` found the object present.
    AlreadyExists = 2,
    /// Another holder has the lock; detail = ms until it expires.
    Locked = 3,
    /// The token does not hold the lock (it expired, was released, or was never taken).
    LockLost = 4,
    /// `UpdateIfVersion` found another version; detail = the stored version.
    VersionMismatch = 5,
    /// `max_memory` reached and nothing evictable is left; nothing was changed.
    LowMemory = 6,
    /// The value exceeds `object_bytes_max`; detail = the limit.
    ObjectTooLarge = 7,
    /// The key exceeds `key_bytes_max`; detail = the limit.
    KeyTooLong = 8,
    /// The frame exceeds `frame_bytes_max`; detail = the limit. The connection closes.
    FrameTooLarge = 9,
    /// More requests in flight on this connection than `inflight_per_conn_max`.
    TooManyInFlight = 10,
    /// The shard has `connections_per_shard_max` connections; detail = the limit.
    TooManyConnections = 11,
    /// A well-framed message that is not a valid request (bad archive, bad field).
    InvalidRequest = 12,
    /// The client's protocol version is not served; detail = the newest version served.
    UnsupportedVersion = 13,
    /// The first frame was not `Hello`.
    HandshakeRequired = 14,
    /// A namespace name exceeds `namespace_bytes_max`, or is empty.
    NameTooLong = 15,
    /// Two namespace names hash to one id; rename one.
    NamespaceCollision = 16,
    /// Too many items in one multi-read, bulk put or key page; detail = the limit.
    TooManyItems = 17,
    /// The host is shutting down; retry on another host.
    ShuttingDown = 18,
    /// A timeout above the 4,194,303 s maximum.
    BadTimeout = 19,
    /// A bug: the server could not do what it should. The message says what.
    Internal = 20,
    /// The bytes of a frame's header broke the framing rules; the connection closes.
    BadFrame = 21,
    /// This host belongs to no store yet (it is starting, or waits for `stategrid join`).
    NotJoined = 22,
    /// This host is not (or no longer, or not yet) the partition's primary; detail = its map
    /// epoch. Fetch the map and retry at the primary.
    NotPrimary = 23,
    /// The sender's map is older than the receiver's; detail = the receiver's epoch.
    StaleEpoch = 24,
    /// A replica did not confirm the change within `replication_timeout_ms`. The write may or
    /// may not have been applied; retry it.
    ReplicationFailed = 25,
    /// The request is not served by a multi-host store in this version (the message says which).
    Unsupported = 26,
    /// Host-to-host request on the client port.
    Forbidden = 27,
    /// The operation does not apply to the object's kind (a string read of a hash).
    WrongType = 28,
    /// The stored value (or the increment) is not a 64-bit integer, or the result overflows.
    NotInteger = 29,
    /// The server has client credentials configured and this connection has not sent a
    /// successful `Auth` yet.
    AuthRequired = 30,
    /// `Auth` named an unknown user or the wrong password.
    AuthFailed = 31,
    /// The connection's user's role does not allow the request; detail = the role needed
    /// (1 read, 2 read-write, 3 admin). The message names the user and the request.
    PermissionDenied = 32,
}

impl ErrorCode {
    /// One line for a person: what was wrong and what to do.
    pub fn describe(&self) -> &'static str {
        match self {
            ErrorCode::NotFound => "object not found (it never existed, was removed, or expired)",
            ErrorCode::AlreadyExists => "object already exists (use put to replace it)",
            ErrorCode::Locked => {
                "object is locked by another client; retry after the lock is released or expires"
            }
            ErrorCode::LockLost => {
                "this lock token does not hold the lock (it expired, was released, or is wrong); read-and-lock again"
            }
            ErrorCode::VersionMismatch => {
                "object changed since the version you read; read it again and retry"
            }
            ErrorCode::LowMemory => {
                "store is out of memory (max_memory) and nothing evictable is left; nothing was changed. Raise max_memory or remove objects"
            }
            ErrorCode::ObjectTooLarge => {
                "value is larger than object_bytes_max; raise the parameter or store smaller values"
            }
            ErrorCode::KeyTooLong => {
                "key is longer than key_bytes_max; use a shorter key (hash long ones)"
            }
            ErrorCode::FrameTooLarge => {
                "request frame is larger than frame_bytes_max; the connection was closed"
            }
            ErrorCode::TooManyInFlight => {
                "too many requests in flight on this connection (inflight_per_conn_max); wait for answers or use more connections"
            }
            ErrorCode::TooManyConnections => {
                "this shard has connections_per_shard_max connections; close idle ones or raise the limit"
            }
            ErrorCode::InvalidRequest => {
                "request is not a valid stategrid message (bad archive or field); check client and server versions"
            }
            ErrorCode::UnsupportedVersion => {
                "server does not speak this protocol version; upgrade the client or the server"
            }
            ErrorCode::HandshakeRequired => "first frame on a connection must be Hello",
            ErrorCode::NameTooLong => "namespace name is empty or longer than namespace_bytes_max",
            ErrorCode::NamespaceCollision => {
                "another namespace name has the same id; choose another name"
            }
            ErrorCode::TooManyItems => "too many items in one request; split it",
            ErrorCode::ShuttingDown => "host is shutting down; retry on another host",
            ErrorCode::BadTimeout => "timeout is above the maximum of 4194303 seconds",
            ErrorCode::Internal => {
                "internal server error (a bug); please report it with the server log"
            }
            ErrorCode::BadFrame => "bad frame header; the connection was closed",
            ErrorCode::NotJoined => {
                "host has not joined a store yet (starting up, or waiting for `stategrid join`); retry shortly"
            }
            ErrorCode::NotPrimary => {
                "host is not the primary of this object's partition (the map changed); fetch the map and retry"
            }
            ErrorCode::StaleEpoch => {
                "sender's partition map is out of date; fetch the map and retry"
            }
            ErrorCode::ReplicationFailed => {
                "a replica did not confirm the change in time (replication_timeout_ms); the write may or may not have been applied; retry it"
            }
            ErrorCode::Unsupported => {
                "request is not supported by a multi-host store in this version"
            }
            ErrorCode::Forbidden => "host-to-host request sent to the client port; refused",
            ErrorCode::WrongType => {
                "operation against an object holding the wrong kind of value (a Redis hash read as a string, or the reverse)"
            }
            ErrorCode::NotInteger => "value is not an integer or out of range",
            ErrorCode::AuthRequired => {
                "authentication required: this server has client users (requirepass or users_file); send Auth with a user and password after Hello (the client library's `credentials`, the CLI's STATEGRID_AUTH or --auth-file)"
            }
            ErrorCode::AuthFailed => "invalid username-password pair or user is disabled",
            ErrorCode::PermissionDenied => {
                "this user's role does not allow the request (roles: read, read-write, admin); use a user with a higher role"
            }
        }
    }

    /// Does retrying (after fetching the map) make sense? The store was changing hands.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ErrorCode::NotJoined
                | ErrorCode::NotPrimary
                | ErrorCode::StaleEpoch
                | ErrorCode::ReplicationFailed
                | ErrorCode::ShuttingDown
        )
    }
}

impl ArchivedErrorReply {
    pub fn to_reply(&self) -> ErrorReply {
        ErrorReply {
            code: self.code.to_native(),
            detail: self.detail.to_native(),
            message: self.message.as_str().to_owned(),
        }
    }
}

impl ArchivedTimeout {
    pub fn to_native(&self) -> Timeout {
        Timeout {
            timeout_s: self.timeout_s.to_native(),
            kind: match self.kind {
                ArchivedTimeoutKind::Absolute => TimeoutKind::Absolute,
                ArchivedTimeoutKind::Sliding => TimeoutKind::Sliding,
                ArchivedTimeoutKind::ResetOnUpdate => TimeoutKind::ResetOnUpdate,
            },
        }
    }
}

impl ArchivedWriteOpts {
    pub fn to_native(&self) -> WriteOpts {
        WriteOpts {
            timeout: self.timeout.as_ref().map(|t| t.to_native()),
            evictable: self.evictable,
            content_type_bytes: self.content_type_bytes,
        }
    }
}

impl ArchivedErrorCode {
    pub fn to_native(&self) -> ErrorCode {
        match self {
            ArchivedErrorCode::NotFound => ErrorCode::NotFound,
            ArchivedErrorCode::AlreadyExists => ErrorCode::AlreadyExists,
            ArchivedErrorCode::Locked => ErrorCode::Locked,
            ArchivedErrorCode::LockLost => ErrorCode::LockLost,
            ArchivedErrorCode::VersionMismatch => ErrorCode::VersionMismatch,
            ArchivedErrorCode::LowMemory => ErrorCode::LowMemory,
            ArchivedErrorCode::ObjectTooLarge => ErrorCode::ObjectTooLarge,
            ArchivedErrorCode::KeyTooLong => ErrorCode::KeyTooLong,
            ArchivedErrorCode::FrameTooLarge => ErrorCode::FrameTooLarge,
            ArchivedErrorCode::TooManyInFlight => ErrorCode::TooManyInFlight,
            ArchivedErrorCode::TooManyConnections => ErrorCode::TooManyConnections,
            ArchivedErrorCode::InvalidRequest => ErrorCode::InvalidRequest,
            ArchivedErrorCode::UnsupportedVersion => ErrorCode::UnsupportedVersion,
            ArchivedErrorCode::HandshakeRequired => ErrorCode::HandshakeRequired,
            ArchivedErrorCode::NameTooLong => ErrorCode::NameTooLong,
            ArchivedErrorCode::NamespaceCollision => ErrorCode::NamespaceCollision,
            ArchivedErrorCode::TooManyItems => ErrorCode::TooManyItems,
            ArchivedErrorCode::ShuttingDown => ErrorCode::ShuttingDown,
            ArchivedErrorCode::BadTimeout => ErrorCode::BadTimeout,
            ArchivedErrorCode::Internal => ErrorCode::Internal,
            ArchivedErrorCode::BadFrame => ErrorCode::BadFrame,
            ArchivedErrorCode::NotJoined => ErrorCode::NotJoined,
            ArchivedErrorCode::NotPrimary => ErrorCode::NotPrimary,
            ArchivedErrorCode::StaleEpoch => ErrorCode::StaleEpoch,
            ArchivedErrorCode::ReplicationFailed => ErrorCode::ReplicationFailed,
            ArchivedErrorCode::Unsupported => ErrorCode::Unsupported,
            ArchivedErrorCode::Forbidden => ErrorCode::Forbidden,
            ArchivedErrorCode::WrongType => ErrorCode::WrongType,
            ArchivedErrorCode::NotInteger => ErrorCode::NotInteger,
            ArchivedErrorCode::AuthRequired => ErrorCode::AuthRequired,
            ArchivedErrorCode::AuthFailed => ErrorCode::AuthFailed,
            ArchivedErrorCode::PermissionDenied => ErrorCode::PermissionDenied,
        }
    }
}
