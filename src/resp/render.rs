//! Native answers rendered as RESP replies.
//!
//! A RESP command becomes one or more native requests (see `commands`), each pushed here with
//! the [`Shape`] its answer takes. Answers reach a connection strictly in request order (the
//! shard's ordering guarantee), so the shapes are a FIFO: each answer pops the front one.
//! Multi-key commands (MGET, DEL, MSET...) send one request per key and combine the answers
//! in the accumulator here, replying once at the last part.

use std::collections::VecDeque;
use std::rc::Rc;

use stategrid_proto::{ErrorCode, ErrorReply, Response};

use super::reply;
use crate::net::SendBatch;
use crate::store::hash;

/// How several parts of one command combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Combine {
    /// An array with one element per part (MGET): a value, or null for anything else.
    Array,
    /// The sum of the parts' integers (DEL, EXISTS, TOUCH).
    Sum,
    /// `+OK` when every part succeeded (MSET, FLUSHALL).
    AllOk,
    /// The keys of every part's page, concatenated (KEYS).
    Keys,
}

/// How one native answer is rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Ok/Written +OK, Nil null, Int/Count integer, Value bulk, Items/Keys array.
    Plain,
    /// Items as a map (HGETALL): `%` in RESP3.
    Map,
    /// TYPE: 0 none, 1 string, 2 hash.
    Type,
    /// Any success is +OK (HMSET, FLUSHDB).
    Ok,
    /// Ok is :1, Nil is :0 (SETNX).
    OkAsOne,
    /// TTL/PTTL/EXPIRETIME/PEXPIRETIME from `Meta`.
    Ttl { ms: bool, absolute: bool },
    /// SG.LOCK: the lock token as a bulk string.
    LockToken,
    /// SCAN: [cursor, keys matching the pending pattern].
    Scan,
    /// HSCAN: ["0", fields and values matching the pending pattern].
    HScan { novalues: bool },
    /// INFO: the pending text plus the keyspace section from `NsList`.
    Info,
    /// As `Plain`, with `NotFound` as `-ERR no such key` (RENAME).
    NeedsKey,
    /// A whole RESP reply made elsewhere (a transaction's `EXEC`), in a `Value`: sent as is.
    Raw,
    /// WATCH of a key not on the connection's shard: its `Meta` is the key's stamp, kept for
    /// EXEC under `id`; `+OK` at the `last` key.
    Watch { id: u64, last: bool },
    /// Part `first`..`last` of a command of `n` parts.
    Part {
        how: Combine,
        first: bool,
        last: bool,
        n: u32,
    },
}

/// A shape and the text it needs (a MATCH pattern, INFO's other sections).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub shape: Shape,
    pub text: Option<Rc<[u8]>>,
}

impl Pending {
    pub fn of(shape: Shape) -> Pending {
        Pending { shape, text: None }
    }
}

/// A value to render: a stored buffer (sent by reference) or bytes of a forwarded answer.
#[derive(Clone, Copy)]
pub enum ValRef<'a> {
    Stored(&'a crate::store::Value),
    Bytes(&'a [u8]),
}

impl ValRef<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            ValRef::Stored(v) => v,
            ValRef::Bytes(b) => b,
        }
    }
}

/// The rendering half of a RESP connection: what its in-flight requests' answers look like.
#[derive(Default)]
pub struct RespOut {
    pub resp3: bool,
    pending: VecDeque<Pending>,
    acc_int: i64,
    acc_err: Option<String>,
    acc_keys: Vec<Vec<u8>>,
    /// Stamps of WATCHed keys that arrived as answers, by watch id (see `Shape::Watch`);
    /// EXEC, UNWATCH, DISCARD and RESET take them.
    watch: Vec<(u64, Option<(u64, u64)>)>,
}

/// `ErrorReply::detail` of the `InvalidRequest` that refuses keys spread over partitions
/// (RENAME, a transaction): rendered as Redis Cluster's `-CROSSSLOT`.
pub const CROSS_PARTITION: u64 = 0xC5;

/// The RESP error line for a native error (without `-` and CRLF).
pub fn error_text(e: &ErrorReply) -> String {
    match e.code {
        ErrorCode::WrongType => {
            "WRONGTYPE Operation against a key holding the wrong kind of value".into()
        }
        ErrorCode::NotInteger => match e.detail {
            1 => "ERR increment or decrement would overflow".into(),
            2 => "ERR hash value is not an integer".into(),
            _ => "ERR value is not an integer or out of range".into(),
        },
        ErrorCode::Locked => format!(
            "LOCKED the object is locked by a stategrid client (SG.LOCK or a native read-and-lock); the lock frees in {} ms unless released first",
            e.detail
        ),
        ErrorCode::LowMemory => "OOM command not allowed when used memory > 'maxmemory'.".into(),
        ErrorCode::ObjectTooLarge => format!(
            "ERR string exceeds maximum allowed size (object_bytes_max = {} bytes)",
            e.detail
        ),
        ErrorCode::KeyTooLong => format!(
            "ERR key is longer than key_bytes_max ({} bytes); use a shorter key",
            e.detail
        ),
        ErrorCode::TooManyItems => format!(
            "ERR too many items (limit {}: hash_fields_max for a hash, items_per_request_max for a page)",
            e.detail
        ),
        ErrorCode::NotPrimary | ErrorCode::StaleEpoch | ErrorCode::NotJoined => format!(
            "TRYAGAIN {} (the store's map is changing; retry)",
            e.code.describe()
        ),
        ErrorCode::ReplicationFailed | ErrorCode::ShuttingDown => {
            format!("TRYAGAIN {}", e.code.describe())
        }
        ErrorCode::TooManyInFlight => format!("ERR {}", e.code.describe()),
        ErrorCode::InvalidRequest if e.detail == CROSS_PARTITION => {
            format!(
                "CROSSSLOT Keys in request don't hash to the same slot: {}",
                e.message
            )
        }
        ErrorCode::AuthRequired => "NOAUTH Authentication required.".into(),
        ErrorCode::AuthFailed => {
            "WRONGPASS invalid username-password pair or user is disabled.".into()
        }
        ErrorCode::PermissionDenied => format!("NOPERM {}", e.message),
        _ => {
            let mut s = format!("ERR {}", e.code.describe());
            if !e.message.is_empty() {
                s.push_str(": ");
                s.push_str(&e.message);
            }
            s
        }
    }
}

fn push_bulk(b: &mut SendBatch, v: ValRef<'_>) {
    reply::bulk_head(b.bytes_mut(), v.bytes().len());
    match v {
        // The stored buffer goes to sendmsg by reference, as on the native path.
        ValRef::Stored(rc) => b.push_value_unpadded(rc.clone()),
        ValRef::Bytes(bytes) => b.bytes_mut().extend_from_slice(bytes),
    }
    b.bytes_mut().extend_from_slice(b"\r\n");
}

fn items<'a>(v: Option<ValRef<'a>>, count: u32) -> Option<Vec<Option<&'a [u8]>>> {
    let bytes = match v {
        Some(ValRef::Stored(rc)) => &rc[..],
        Some(ValRef::Bytes(b)) => b,
        None => &[],
    };
    hash::decode_items(bytes, count as usize)
}

impl RespOut {
    pub fn push(&mut self, p: Pending) {
        self.pending.push_back(p);
    }

    /// The stamp of watch `id` if its answer arrived (`None`: not yet). Never-matching when
    /// the key's `Meta` failed, so EXEC aborts rather than trust an unknown state.
    pub fn watch_stamp(&self, id: u64) -> Option<Option<(u64, u64)>> {
        self.watch.iter().find(|(i, _)| *i == id).map(|(_, s)| *s)
    }

    /// Forgets every watch stamp (the watch ended).
    pub fn clear_watch(&mut self) {
        self.watch.clear();
    }

    /// Renders the answer of the oldest in-flight request into `b`.
    /// Cost: for a GET, the bulk header and CRLF are written, the value is referenced.
    pub fn render(&mut self, b: &mut SendBatch, resp: &Response, val: Option<ValRef<'_>>) {
        let Some(p) = self.pending.pop_front() else {
            // An answer nobody asked for is a bug; say so to the client rather than panic.
            reply::error(
                b.bytes_mut(),
                "ERR internal: an answer arrived with no request",
            );
            return;
        };
        self.render_as(p, b, resp, val)
    }

    /// Renders an answer whose shape is `p`, which the caller holds instead of queueing it:
    /// a command served at once while earlier answers still wait, rendered now and queued
    /// as bytes. Not for `Shape::Part`: the parts of a multi-key command combine in order
    /// through the queue.
    pub fn render_alone(
        &mut self,
        p: Pending,
        b: &mut SendBatch,
        resp: &Response,
        val: Option<ValRef<'_>>,
    ) {
        debug_assert!(
            !matches!(p.shape, Shape::Part { .. }),
            "parts render in order"
        );
        self.render_as(p, b, resp, val)
    }

    fn render_as(
        &mut self,
        p: Pending,
        b: &mut SendBatch,
        resp: &Response,
        val: Option<ValRef<'_>>,
    ) {
        let resp3 = self.resp3;
        match p.shape {
            Shape::Plain => self.plain(b, resp, val),
            Shape::Map => match resp {
                Response::Items { count } => match items(val, *count) {
                    Some(list) => {
                        let o = b.bytes_mut();
                        reply::map(o, list.len() / 2, resp3);
                        for i in list {
                            item(o, i, resp3);
                        }
                    }
                    None => bad_answer(b),
                },
                _ => self.plain(b, resp, val),
            },
            Shape::Type => match resp {
                Response::Int { n } => reply::simple(
                    b.bytes_mut(),
                    match n {
                        1 => "string",
                        2 => "hash",
                        _ => "none",
                    },
                ),
                _ => self.plain(b, resp, val),
            },
            Shape::Ok => match resp {
                Response::Error(_) => self.plain(b, resp, val),
                _ => reply::ok(b.bytes_mut()),
            },
            Shape::OkAsOne => match resp {
                Response::Ok => reply::int(b.bytes_mut(), 1),
                Response::Nil => reply::int(b.bytes_mut(), 0),
                _ => self.plain(b, resp, val),
            },
            Shape::Ttl { ms, absolute } => match resp {
                Response::Meta { meta } => {
                    let n = match meta.expires_in_ms {
                        None => -1,
                        Some(left) if absolute => {
                            let at = now_ms() + left;
                            if ms { at as i64 } else { (at / 1000) as i64 }
                        }
                        Some(left) if ms => left as i64,
                        // Redis rounds to the nearest second.
                        Some(left) => left.saturating_add(500) as i64 / 1000,
                    };
                    reply::int(b.bytes_mut(), n)
                }
                Response::Error(e) if e.code == ErrorCode::NotFound => {
                    reply::int(b.bytes_mut(), -2)
                }
                _ => self.plain(b, resp, val),
            },
            Shape::LockToken => match resp {
                Response::Value {
                    lock_token: Some(t),
                    ..
                } => reply::bulk(b.bytes_mut(), t.to_string().as_bytes()),
                Response::Error(e) if e.code == ErrorCode::NotFound => {
                    reply::error(b.bytes_mut(), "ERR no such key")
                }
                _ => self.plain(b, resp, val),
            },
            Shape::Scan => match resp {
                Response::Keys { keys, next_cursor } => {
                    let pat = p.text.as_deref();
                    let o = b.bytes_mut();
                    reply::array(o, 2);
                    let cursor = super::cursor::to_resp(*next_cursor);
                    reply::bulk(o, cursor.to_string().as_bytes());
                    let keep: Vec<&Vec<u8>> = keys
                        .iter()
                        .filter(|k| pat.is_none_or(|p| super::glob::matches(p, k)))
                        .collect();
                    reply::array(o, keep.len());
                    for k in keep {
                        reply::bulk(o, k);
                    }
                }
                _ => self.plain(b, resp, val),
            },
            Shape::HScan { novalues } => match resp {
                Response::Items { count } => match items(val, *count) {
                    Some(list) => {
                        let pat = p.text.as_deref();
                        let pairs: Vec<&[Option<&[u8]>]> = list
                            .chunks(2)
                            .filter(|c| {
                                pat.is_none_or(|p| super::glob::matches(p, c[0].unwrap_or(b"")))
                            })
                            .collect();
                        let o = b.bytes_mut();
                        reply::array(o, 2);
                        reply::bulk(o, b"0");
                        let per = if novalues { 1 } else { 2 };
                        reply::array(o, pairs.len() * per);
                        for c in pairs {
                            for i in &c[..per] {
                                item(o, *i, resp3);
                            }
                        }
                    }
                    None => bad_answer(b),
                },
                _ => self.plain(b, resp, val),
            },
            Shape::Info => {
                let mut text =
                    String::from_utf8_lossy(p.text.as_deref().unwrap_or(b"")).into_owned();
                if let Response::Namespaces { items } = resp {
                    text.push_str("# Keyspace\r\n");
                    let mut dbs: Vec<(u32, u64)> = items
                        .iter()
                        .filter(|i| stategrid_proto::hash::is_redis_ns(i.id) && i.objects > 0)
                        .map(|i| (i.id - stategrid_proto::hash::REDIS_NS_BASE, i.objects))
                        .collect();
                    dbs.sort_unstable();
                    for (db, n) in dbs {
                        text.push_str(&format!("db{db}:keys={n},expires=0,avg_ttl=0\r\n"));
                    }
                }
                reply::verbatim(b.bytes_mut(), &text, resp3);
            }
            Shape::NeedsKey => match resp {
                Response::Error(e) if e.code == ErrorCode::NotFound => {
                    reply::error(b.bytes_mut(), "ERR no such key")
                }
                _ => self.plain(b, resp, val),
            },
            Shape::Raw => match (resp, val) {
                (Response::Value { .. }, Some(v)) => b.bytes_mut().extend_from_slice(v.bytes()),
                _ => self.plain(b, resp, val),
            },
            Shape::Watch { id, last } => {
                let stamp = match resp {
                    Response::Meta { meta } => Some((meta.version, meta.created_ms)),
                    Response::Error(e) if e.code == ErrorCode::NotFound => None,
                    _ => Some((u64::MAX, u64::MAX)),
                };
                self.watch.push((id, stamp));
                if last {
                    reply::ok(b.bytes_mut());
                }
            }
            Shape::Part {
                how,
                first,
                last,
                n,
            } => self.part(b, resp, val, how, first, last, n, p.text.as_deref()),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn part(
        &mut self,
        b: &mut SendBatch,
        resp: &Response,
        val: Option<ValRef<'_>>,
        how: Combine,
        first: bool,
        last: bool,
        n: u32,
        pattern: Option<&[u8]>,
    ) {
        if first {
            self.acc_int = 0;
            self.acc_err = None;
            self.acc_keys.clear();
            if how == Combine::Array {
                reply::array(b.bytes_mut(), n as usize);
            }
        }
        match (how, resp) {
            (Combine::Array, Response::Value { .. }) => match val {
                Some(v) => push_bulk(b, v),
                None => reply::bulk(b.bytes_mut(), b""),
            },
            (Combine::Array, _) => reply::null(b.bytes_mut(), self.resp3),
            (_, Response::Error(e)) if self.acc_err.is_none() => {
                self.acc_err = Some(error_text(e));
            }
            (Combine::Sum, Response::Int { n }) => self.acc_int += n,
            (Combine::Keys, Response::Keys { keys, .. }) => self.acc_keys.extend(
                keys.iter()
                    .filter(|k| pattern.is_none_or(|p| super::glob::matches(p, k)))
                    .cloned(),
            ),
            _ => {}
        }
        if !last {
            return;
        }
        let o = b.bytes_mut();
        match (&self.acc_err, how) {
            (_, Combine::Array) => {}
            (Some(e), _) => reply::error(o, e),
            (None, Combine::Sum) => reply::int(o, self.acc_int),
            (None, Combine::AllOk) => reply::ok(o),
            (None, Combine::Keys) => {
                reply::array(o, self.acc_keys.len());
                for k in &self.acc_keys {
                    reply::bulk(o, k);
                }
            }
        }
        self.acc_keys.clear();
        self.acc_err = None;
    }

    fn plain(&mut self, b: &mut SendBatch, resp: &Response, val: Option<ValRef<'_>>) {
        let resp3 = self.resp3;
        match resp {
            Response::Ok | Response::Written { .. } => reply::ok(b.bytes_mut()),
            Response::Nil => reply::null(b.bytes_mut(), resp3),
            Response::Int { n } => reply::int(b.bytes_mut(), *n),
            Response::Count { objects } => reply::int(b.bytes_mut(), *objects as i64),
            Response::Value { .. } => match val {
                Some(v) => push_bulk(b, v),
                None => reply::bulk(b.bytes_mut(), b""),
            },
            Response::Items { count } => match items(val, *count) {
                Some(list) => {
                    let o = b.bytes_mut();
                    reply::array(o, list.len());
                    for i in list {
                        item(o, i, resp3);
                    }
                }
                None => bad_answer(b),
            },
            Response::Keys { keys, .. } => {
                let o = b.bytes_mut();
                reply::array(o, keys.len());
                for k in keys {
                    reply::bulk(o, k);
                }
            }
            Response::Error(e) => reply::error(b.bytes_mut(), &error_text(e)),
            _ => bad_answer(b),
        }
    }
}

fn item(o: &mut Vec<u8>, i: Option<&[u8]>, resp3: bool) {
    match i {
        Some(x) => reply::bulk(o, x),
        None => reply::null(o, resp3),
    }
}

fn bad_answer(b: &mut SendBatch) {
    reply::error(
        b.bytes_mut(),
        "ERR internal: the server's answer did not have the expected form (a bug; please report it)",
    );
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
