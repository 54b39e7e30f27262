//! The data REST API (docs/rest.md): `/data/...` on `rest_port`.
//!
//! Each HTTP request becomes one native [`Request`] (plus its value) submitted on the HTTP
//! connection's local session, so it takes the shard's existing path: served here, forwarded
//! to the shard that owns the key, relayed to the primary host, held while a lease is pending,
//! or refused; writes are replicated before they are answered. There is no second routing path.
//!
//! Costs per request beyond the native path's: one frame encode (rkyv) and, for a write, one
//! copy of the body into the frame (hyper's buffer -> frame; the store then copies the frame's
//! value as for a native write). A read's value goes from the store to hyper by reference.

use std::cell::RefCell;
use std::collections::HashSet;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{
    CONTENT_LENGTH, CONTENT_TYPE, ETAG, HeaderMap, HeaderValue, IF_MATCH, IF_NONE_MATCH,
};
use hyper::{Method, StatusCode};
use serde::Serialize;
use stategrid_proto::{
    Key, Meta, NsId, Request, Response, TIMEOUT_S_MAX, Timeout, TimeoutKind, WriteOpts, codec,
    frame,
};

use super::body::{self, Body};
use super::error::HttpError;
use crate::config::Config;
use crate::net::AlignedBuf;
use crate::server::local_api::{LocalAnswer, LocalSession, ShardHandle};

/// Header carrying a lock token (read-and-lock answers it; lock operations take it).
pub const LOCK_TOKEN: &str = "soss-locktoken";
/// ScaleOut's timeout headers (and multipart fields).
pub const TIMEOUT_SEC: &str = "soss-timeoutsec";
pub const TIMEOUT_TYPE: &str = "soss-timeouttype";

/// How long a request refused with NotPrimary (a partition changing hands) is retried.
const NOT_PRIMARY_RETRY_MS: u64 = 2_000;

/// Keys per page of `GET /data/{ns}` when `count` is not given.
const KEYS_PER_PAGE_DEFAULT: u32 = 100;

/// The data API's state on one shard.
pub struct Rest {
    shard: ShardHandle,
    /// Namespaces this shard has opened (registered by name) already: a write to a new
    /// namespace opens it once (`NsOpen`), later writes go straight on.
    opened: RefCell<HashSet<String>>,
}

/// A decoded answer: the native response and, for a read, its value.
struct Reply {
    resp: Response,
    value: Option<Value>,
}

/// A read's trailer: the store's buffer, or a slice of an answer that crossed threads. Either
/// holds the value and then the object's content type (`Meta::content_type_bytes`).
enum Value {
    Rc(Rc<[u8]>),
    Bytes(Bytes),
}

/// Served when an object was stored without a `Content-Type` (by a native or Redis client, or
/// an HTTP client that sent none).
pub const CONTENT_TYPE_DEFAULT: &str = "application/octet-stream";

impl Value {
    fn bytes(&self) -> &[u8] {
        match self {
            Value::Rc(v) => v,
            Value::Bytes(b) => b,
        }
    }

    /// The body (the first `value_bytes`, by reference) and the `Content-Type` stored behind
    /// it (the default when there is none). Cost: no copy of the value.
    fn into_parts(self, meta: &Meta) -> Result<(Body, HeaderValue), HttpError> {
        let value_bytes = meta.value_bytes as usize;
        let ct_bytes = meta.content_type_bytes as usize;
        let len = self.bytes().len();
        if len != value_bytes + ct_bytes {
            return Err(internal(&format!(
                "the shard answered {len} bytes for a value of {value_bytes} and a content type of {ct_bytes}"
            )));
        }
        let ct = match ct_bytes {
            0 => HeaderValue::from_static(CONTENT_TYPE_DEFAULT),
            _ => HeaderValue::from_bytes(&self.bytes()[value_bytes..])
                .map_err(|_| internal("a stored content type is not a valid header value"))?,
        };
        let body = match self {
            Value::Rc(v) => body::value(v, value_bytes),
            Value::Bytes(b) => body::bytes(b.slice(..value_bytes)),
        };
        Ok((body, ct))
    }
}

/// Where a request points.
#[derive(Debug, PartialEq, Eq)]
pub enum Target {
    /// `/data/`: namespaces.
    Root,
    /// `/data/{ns}`.
    Namespace(String),
    /// `/data/{ns}/{key}`.
    Object(String, Vec<u8>),
}

impl Rest {
    pub fn new(shard: ShardHandle) -> Rest {
        Rest {
            shard,
            opened: RefCell::new(HashSet::new()),
        }
    }

    pub fn cfg(&self) -> &Arc<Config> {
        &self.shard.cfg
    }

    pub fn shard(&self) -> &ShardHandle {
        &self.shard
    }

    /// Serves one request; every failure is an answer.
    pub async fn handle(
        &self,
        session: &LocalSession,
        req: hyper::Request<Incoming>,
    ) -> hyper::Response<Body> {
        // Metrics: two clock reads (vDSO, ~20 ns each) and a few adds on this shard's counters.
        let started = std::time::Instant::now();
        let op = match *req.method() {
            Method::GET => 0,
            Method::HEAD => 1,
            Method::PUT => 2,
            Method::DELETE => 3,
            Method::POST => 4,
            _ => 5,
        };
        let resp = match self.route(session, req).await {
            Ok(r) => r,
            Err(e) => e.into_response(),
        };
        self.shard.record_http(
            op,
            resp.status().as_u16(),
            started.elapsed().as_micros() as u64,
        );
        resp
    }

    async fn route(
        &self,
        session: &LocalSession,
        req: hyper::Request<Incoming>,
    ) -> Result<hyper::Response<Body>, HttpError> {
        let path = req.uri().path().to_owned();
        if path == "/openapi.json" {
            return match *req.method() {
                Method::GET | Method::HEAD => Ok(json_response(
                    StatusCode::OK,
                    Bytes::from_static(super::openapi::DOCUMENT.as_bytes()),
                )),
                _ => Err(method_not_allowed("GET, HEAD")),
            };
        }
        let target = parse_path(&path, self.cfg())?;
        let query = Query::parse(req.uri().query().unwrap_or(""))?;
        match (target, req.method().clone()) {
            (Target::Root, Method::GET) => self.list_namespaces(session).await,
            (Target::Root, _) => Err(method_not_allowed("GET")),
            (Target::Namespace(ns), Method::GET) => self.list_keys(session, &ns, &query).await,
            (Target::Namespace(ns), Method::POST) => {
                super::multipart::post(self, session, &ns, req).await
            }
            (Target::Namespace(_), _) => Err(method_not_allowed("GET, POST")),
            (Target::Object(ns, key), Method::GET) => {
                self.get(session, &ns, key, req.headers(), &query).await
            }
            (Target::Object(ns, key), Method::HEAD) => self.head(session, &ns, key).await,
            (Target::Object(ns, key), Method::PUT) => {
                let (parts, incoming) = req.into_parts();
                let value = self.read_body(&parts.headers, incoming).await?;
                let w = WriteHeaders::parse(&parts.headers, &query, self.cfg())?;
                self.put(session, &ns, key, w, value).await
            }
            (Target::Object(ns, key), Method::DELETE) => {
                self.delete(session, &ns, key, req.headers()).await
            }
            (Target::Object(ns, key), Method::POST) => {
                self.lock_op(session, &ns, key, req.headers(), &query).await
            }
            (Target::Object(..), _) => Err(method_not_allowed("GET, HEAD, PUT, DELETE, POST")),
        }
    }

    // ---- the native round trip ---------------------------------------------------------------

    /// Encodes `req` (+ `value`) as a frame, submits it on the session, decodes the answer.
    async fn call(
        &self,
        session: &LocalSession,
        req: &Request,
        value: &[u8],
    ) -> Result<Reply, HttpError> {
        self.call_typed(session, req, value, &[]).await
    }

    /// `call` with a write's content type behind the value in the trailer (the request's
    /// `WriteOpts::content_type_bytes` says how long it is).
    async fn call_typed(
        &self,
        session: &LocalSession,
        req: &Request,
        value: &[u8],
        content_type: &[u8],
    ) -> Result<Reply, HttpError> {
        let id = session.next_request_id();
        let trailer_bytes = value.len() + content_type.len();
        let mut head = Vec::with_capacity(128);
        codec::encode_head(&mut head, id, req, trailer_bytes);
        // One copy of the value: into the frame the shard parses (and may forward as is).
        let total = head.len() + frame::pad8(trailer_bytes);
        let mut f = AlignedBuf::with_capacity(total);
        let spare = f.spare_mut();
        let (h, v) = (head.len(), head.len() + value.len());
        spare[..h].copy_from_slice(&head);
        spare[h..v].copy_from_slice(value);
        spare[v..v + content_type.len()].copy_from_slice(content_type);
        spare[v + content_type.len()..total].fill(0);
        f.advance(total);
        // An HTTP client cannot fetch the map and retry at the new primary as a native client
        // does, so a request refused because the map is changing (NotPrimary: nothing was
        // applied) is retried here for a short while, as the native client would.
        let deadline = std::time::Instant::now() + Duration::from_millis(NOT_PRIMARY_RETRY_MS);
        loop {
            let answer = session.call(&f, id).await.map_err(|_| {
                HttpError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ShuttingDown",
                    "this host is shutting down; retry on another host",
                )
            })?;
            let r = decode(answer)?;
            let moving = matches!(&r.resp, Response::Error(e) if e.code == stategrid_proto::ErrorCode::NotPrimary);
            if !moving || std::time::Instant::now() > deadline {
                return Ok(r);
            }
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
    }

    /// One native round trip for the management API: the native answer as it is.
    pub(super) async fn call_native(
        &self,
        session: &LocalSession,
        req: &Request,
        value: &[u8],
    ) -> Result<Response, HttpError> {
        Ok(self.call(session, req, value).await?.resp)
    }

    /// `call`, with a native error turned into its HTTP error.
    async fn call_ok(
        &self,
        session: &LocalSession,
        req: &Request,
        value: &[u8],
    ) -> Result<Reply, HttpError> {
        let r = self.call(session, req, value).await?;
        match &r.resp {
            Response::Error(e) => Err(HttpError::from_native(e)),
            _ => Ok(r),
        }
    }

    /// The namespace's id, opening (registering) it by name first when `create`.
    async fn namespace(
        &self,
        session: &LocalSession,
        name: &str,
        create: bool,
    ) -> Result<NsId, HttpError> {
        if !create || self.opened.borrow().contains(name) {
            return Ok(stategrid_proto::hash::namespace_id(name));
        }
        let r = self
            .call_ok(
                session,
                &Request::NsOpen {
                    name: name.to_owned(),
                },
                &[],
            )
            .await?;
        match r.resp {
            Response::Namespace { id } => {
                self.opened.borrow_mut().insert(name.to_owned());
                Ok(id)
            }
            other => Err(unexpected(&other)),
        }
    }

    // ---- endpoints ---------------------------------------------------------------------------

    async fn list_namespaces(
        &self,
        session: &LocalSession,
    ) -> Result<hyper::Response<Body>, HttpError> {
        #[derive(Serialize)]
        struct Ns {
            name: String,
            objects: u64,
        }
        let r = self.call_ok(session, &Request::NsList, &[]).await?;
        let Response::Namespaces { items } = r.resp else {
            return Err(unexpected(&r.resp));
        };
        let list: Vec<Ns> = items
            .into_iter()
            .map(|n| Ns {
                name: n.name,
                objects: n.objects,
            })
            .collect();
        Ok(json_response(
            StatusCode::OK,
            to_json(&serde_json::json!({ "namespaces": list })),
        ))
    }

    async fn list_keys(
        &self,
        session: &LocalSession,
        ns: &str,
        q: &Query,
    ) -> Result<hyper::Response<Body>, HttpError> {
        let count = page_count(q, self.cfg())?;
        let id = stategrid_proto::hash::namespace_id(ns);
        let r = self
            .call_ok(
                session,
                &Request::ListKeys {
                    ns: id,
                    cursor: q.cursor.unwrap_or(0),
                    limit: count,
                },
                &[],
            )
            .await?;
        let Response::Keys { keys, next_cursor } = r.resp else {
            return Err(unexpected(&r.resp));
        };
        let keys: Vec<String> = keys
            .iter()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect();
        let next = (next_cursor != 0).then(|| next_cursor.to_string());
        Ok(json_response(
            StatusCode::OK,
            to_json(&serde_json::json!({ "keys": keys, "next_cursor": next })),
        ))
    }

    async fn get(
        &self,
        session: &LocalSession,
        ns: &str,
        key: Vec<u8>,
        headers: &HeaderMap,
        q: &Query,
    ) -> Result<hyper::Response<Body>, HttpError> {
        let key = Key {
            ns: self.namespace(session, ns, false).await?,
            key,
        };
        let req = if q.lock {
            Request::ReadAndLock { key }
        } else {
            Request::Read { key }
        };
        let r = self.call_ok(session, &req, &[]).await?;
        let Response::Value { meta, lock_token } = r.resp else {
            return Err(unexpected(&r.resp));
        };
        let etag = etag(meta.version);
        if let Some(inm) = headers.get(IF_NONE_MATCH)
            && !q.lock
            && etag_matches(inm, meta.version)?
        {
            let mut resp = hyper::Response::new(body::empty());
            *resp.status_mut() = StatusCode::NOT_MODIFIED;
            resp.headers_mut().insert(ETAG, etag);
            return Ok(resp);
        }
        let value = r.value.unwrap_or(Value::Bytes(Bytes::new()));
        let (body, content_type) = value.into_parts(&meta)?;
        let mut resp = hyper::Response::new(body);
        meta_headers(resp.headers_mut(), &meta, content_type);
        if let Some(t) = lock_token {
            resp.headers_mut().insert(LOCK_TOKEN, HeaderValue::from(t));
        }
        Ok(resp)
    }

    async fn head(
        &self,
        session: &LocalSession,
        ns: &str,
        key: Vec<u8>,
    ) -> Result<hyper::Response<Body>, HttpError> {
        let key = Key {
            ns: self.namespace(session, ns, false).await?,
            key,
        };
        // A GET without the body (as HTTP defines HEAD): a `Read`, because only a read's
        // answer carries the content type. So a HEAD restarts a sliding timeout as a GET does.
        // The value stays where it is (locally, by reference); only its headers are sent.
        let r = self.call_ok(session, &Request::Read { key }, &[]).await?;
        let Response::Value { meta, .. } = r.resp else {
            return Err(unexpected(&r.resp));
        };
        let value = r.value.unwrap_or(Value::Bytes(Bytes::new()));
        let (_, content_type) = value.into_parts(&meta)?;
        let mut resp = hyper::Response::new(body::empty());
        meta_headers(resp.headers_mut(), &meta, content_type);
        resp.headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from(meta.value_bytes));
        Ok(resp)
    }

    /// Reads a request body, bounded by `http_body_bytes_max` and `object_bytes_max` and by
    /// `http_read_timeout_ms`. Cost: none for a body that arrives in one piece (hyper's bytes
    /// are kept); a body in several pieces is gathered (one copy).
    pub(super) async fn read_body(
        &self,
        headers: &HeaderMap,
        incoming: Incoming,
    ) -> Result<Bytes, HttpError> {
        let cfg = self.cfg();
        let (max, param) = if cfg.http_body_bytes_max <= cfg.object_bytes_max {
            (cfg.http_body_bytes_max, "http_body_bytes_max")
        } else {
            (cfg.object_bytes_max, "object_bytes_max")
        };
        let too_large = || {
            HttpError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "BodyTooLarge",
                format!("the request body is larger than {param} ({max} bytes); send a smaller value or raise {param}"),
            )
            .limit(max, param)
        };
        if let Some(len) = headers.get(CONTENT_LENGTH) {
            let len: u64 = len
                .to_str()
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| {
                    HttpError::bad_request("BadContentLength", "Content-Length is not a number")
                })?;
            if len > max {
                return Err(too_large());
            }
        }
        let timeout = Duration::from_millis(cfg.http_read_timeout_ms);
        let collect = async {
            Limited::new(incoming, max as usize)
                .collect()
                .await
                .map(|c| Ok(c.to_bytes()))
                .unwrap_or_else(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        Err(too_large())
                    } else {
                        Err(HttpError::bad_request(
                            "BadBody",
                            format!("could not read the request body: {e}"),
                        ))
                    }
                })
        };
        let expire = async {
            glommio::timer::sleep(timeout).await;
            Err(HttpError::new(
                StatusCode::REQUEST_TIMEOUT,
                "BodyTimeout",
                format!(
                    "the request body did not arrive within http_read_timeout_ms ({} ms)",
                    timeout.as_millis()
                ),
            )
            .limit(timeout.as_millis() as u64, "http_read_timeout_ms"))
        };
        futures_lite::future::or(collect, expire).await
    }

    pub(super) async fn put(
        &self,
        session: &LocalSession,
        ns: &str,
        key: Vec<u8>,
        w: WriteHeaders,
        value: Bytes,
    ) -> Result<hyper::Response<Body>, HttpError> {
        let key = Key {
            ns: self.namespace(session, ns, true).await?,
            key,
        };
        let content_type = w.content_type.as_deref().unwrap_or("").as_bytes();
        let opts = WriteOpts {
            timeout: w.timeout,
            evictable: true,
            // At most content_type_bytes_max (<= 255), checked when the header was parsed.
            content_type_bytes: u8::try_from(content_type.len())
                .expect("content_type_bytes_max is at most 255"),
        };
        let created = matches!(w.cond, Cond::CreateOnly);
        let req = match (w.cond, w.lock_token, w.unlock) {
            (Cond::None, Some(t), true) | (Cond::Exists, Some(t), true) => {
                Request::UpdateAndUnlock {
                    key,
                    opts,
                    lock_token: t,
                }
            }
            (_, None, true) => {
                return Err(HttpError::bad_request(
                    "LockTokenRequired",
                    "unlock=true needs the Soss-LockToken header that read-and-lock returned",
                ));
            }
            (Cond::Version(_), Some(_), true) => {
                return Err(HttpError::bad_request(
                    "BadConditions",
                    "unlock=true cannot be combined with If-Match: \"version\"",
                ));
            }
            (Cond::CreateOnly, Some(_), _) => {
                return Err(HttpError::bad_request(
                    "BadConditions",
                    "If-None-Match: * creates a new object; a lock token makes no sense with it",
                ));
            }
            (Cond::CreateOnly, None, false) => Request::Add { key, opts },
            (Cond::Version(version), lock_token, false) => Request::UpdateIfVersion {
                key,
                opts,
                version,
                lock_token,
            },
            (Cond::Exists, lock_token, false) => Request::Update {
                key,
                opts,
                lock_token,
            },
            (Cond::None, Some(t), false) => Request::Update {
                key,
                opts,
                lock_token: Some(t),
            },
            (Cond::None, None, false) => Request::Put { key, opts },
        };
        let r = self.call_typed(session, &req, &value, content_type).await?;
        if let Response::Error(e) = &r.resp {
            return Err(HttpError::from_native(e));
        }
        let Response::Written { version } = r.resp else {
            return Err(unexpected(&r.resp));
        };
        let mut resp = hyper::Response::new(body::empty());
        *resp.status_mut() = if created {
            StatusCode::CREATED
        } else {
            StatusCode::NO_CONTENT
        };
        resp.headers_mut().insert(ETAG, etag(version));
        Ok(resp)
    }

    async fn delete(
        &self,
        session: &LocalSession,
        ns: &str,
        key: Vec<u8>,
        headers: &HeaderMap,
    ) -> Result<hyper::Response<Body>, HttpError> {
        let key = Key {
            ns: self.namespace(session, ns, false).await?,
            key,
        };
        let lock_token = lock_token(headers)?;
        let r = self
            .call_ok(
                session,
                &Request::Remove {
                    key,
                    lock_token,
                    force: false,
                },
                &[],
            )
            .await?;
        match r.resp {
            Response::Ok => Ok(no_content()),
            other => Err(unexpected(&other)),
        }
    }

    /// `POST /data/{ns}/{key}?op=unlock|refresh` with `Soss-LockToken`.
    async fn lock_op(
        &self,
        session: &LocalSession,
        ns: &str,
        key: Vec<u8>,
        headers: &HeaderMap,
        q: &Query,
    ) -> Result<hyper::Response<Body>, HttpError> {
        let Some(lock_token) = lock_token(headers)? else {
            return Err(HttpError::bad_request(
                "LockTokenRequired",
                "this operation needs the Soss-LockToken header that read-and-lock (GET ?lock=true) returned",
            ));
        };
        let unlock = lock_op_is_unlock(q)?;
        let key = Key {
            ns: self.namespace(session, ns, false).await?,
            key,
        };
        let req = if unlock {
            Request::Unlock { key, lock_token }
        } else {
            Request::RefreshLock { key, lock_token }
        };
        self.call_ok(session, &req, &[]).await?;
        Ok(no_content())
    }
}

// ---- decoding ----------------------------------------------------------------------------------

/// The native answer as a [`Reply`]. The archive is read in place when the answer's bytes are
/// 8-aligned (always, with the system allocator), else from an aligned copy.
fn decode(a: LocalAnswer) -> Result<Reply, HttpError> {
    let LocalAnswer { bytes, mut values } = a;
    let h = bytes
        .get(..frame::HEADER_BYTES)
        .and_then(|h| frame::FrameHeader::read_from(h.try_into().ok()?, usize::MAX).ok())
        .ok_or_else(|| internal("the shard's answer has no frame header"))?;
    let archive_end = frame::HEADER_BYTES + h.archive_bytes as usize;
    let archive = bytes
        .get(frame::HEADER_BYTES..archive_end)
        .ok_or_else(|| internal("the shard's answer is cut short"))?;
    let aligned;
    let archive = if (archive.as_ptr() as usize) % 8 == 0 {
        archive
    } else {
        aligned = AlignedBuf::from_slice(archive);
        aligned.as_slice()
    };
    let arch = codec::decode_response(archive).map_err(|e| internal(&e.to_string()))?;
    let resp: Response = rkyv::deserialize::<Response, rkyv::rancor::Error>(arch)
        .map_err(|e| internal(&e.to_string()))?;
    let value = if h.value_bytes == 0 {
        None
    } else if values.len() == 1 {
        values.pop().map(Value::Rc)
    } else {
        let start = h.value_offset();
        let end = start + h.value_bytes as usize;
        if bytes.len() < end {
            return Err(internal("the shard's answer is missing its value"));
        }
        Some(Value::Bytes(Bytes::from(bytes).slice(start..end)))
    };
    Ok(Reply { resp, value })
}

fn internal(what: &str) -> HttpError {
    HttpError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Internal",
        format!("{what} (a bug; please report it)"),
    )
}

fn unexpected(resp: &Response) -> HttpError {
    match resp {
        Response::Error(e) => HttpError::from_native(e),
        other => internal(&format!("unexpected answer {other:?}")),
    }
}

// ---- request parsing ---------------------------------------------------------------------------

/// Splits `/data/{ns}/{key}` and percent-decodes the parts (strictly: a `%` not followed by two
/// hex digits is a 400, as is a namespace that is not UTF-8 or a name or key over its limit).
fn parse_path(path: &str, cfg: &Config) -> Result<Target, HttpError> {
    let Some(rest) = path.strip_prefix("/data") else {
        return Err(HttpError::new(
            StatusCode::NOT_FOUND,
            "NoSuchEndpoint",
            format!("no endpoint {path}; the data API is under /data/ (see /openapi.json)"),
        ));
    };
    let rest = match rest.strip_prefix('/') {
        Some(r) => r,
        None if rest.is_empty() => return Ok(Target::Root),
        None => {
            return Err(HttpError::new(
                StatusCode::NOT_FOUND,
                "NoSuchEndpoint",
                format!("no endpoint {path}; the data API is under /data/"),
            ));
        }
    };
    if rest.is_empty() {
        return Ok(Target::Root);
    }
    let (ns, key) = match rest.split_once('/') {
        Some((ns, key)) => (ns, Some(key)),
        None => (rest, None),
    };
    let ns = percent_decode(ns, "namespace")?;
    let ns = String::from_utf8(ns).map_err(|_| {
        HttpError::bad_request(
            "BadNamespace",
            "the namespace name is not UTF-8 after percent-decoding",
        )
    })?;
    if ns.is_empty() {
        return Err(HttpError::bad_request(
            "BadNamespace",
            "the namespace name is empty",
        ));
    }
    if ns.len() > cfg.namespace_bytes_max as usize {
        return Err(HttpError::bad_request(
            "NameTooLong",
            format!(
                "the namespace name is {} bytes; at most namespace_bytes_max ({}) are allowed",
                ns.len(),
                cfg.namespace_bytes_max
            ),
        )
        .limit(cfg.namespace_bytes_max as u64, "namespace_bytes_max"));
    }
    match key {
        None | Some("") => Ok(Target::Namespace(ns)),
        Some(k) => {
            let key = percent_decode(k, "key")?;
            check_key(&key, cfg)?;
            Ok(Target::Object(ns, key))
        }
    }
}

/// Runs every parser the data API applies to a request's head, in the order `route` and the
/// handlers apply them, without a shard: the path (percent-decoding, names, limits), the
/// query, and the headers the method reads (`If-Match`/`If-None-Match`, `Soss-TimeoutSec`/
/// `Soss-TimeoutType`, `Soss-LockToken`, a form's `Content-Type`). `version` stands for the
/// stored object's version a GET's `If-None-Match` is compared with. Pure (no I/O): the fuzz
/// target `http_head` drives it with a peer's bytes.
pub fn parse_head(
    method: &Method,
    path: &str,
    query: &str,
    headers: &HeaderMap,
    cfg: &Config,
    version: u64,
) -> Result<Target, HttpError> {
    let target = parse_path(path, cfg)?;
    let q = Query::parse(query)?;
    match (&target, method) {
        (Target::Namespace(_), &Method::GET) => {
            page_count(&q, cfg)?;
        }
        (Target::Namespace(_), &Method::POST) => {
            let ct = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok());
            super::multipart::boundary(ct.unwrap_or(""))?;
        }
        (Target::Object(..), &Method::GET) => {
            if let Some(inm) = headers.get(IF_NONE_MATCH)
                && !q.lock
            {
                etag_matches(inm, version)?;
            }
        }
        (Target::Object(..), &Method::PUT) => {
            WriteHeaders::parse(headers, &q, cfg)?;
        }
        (Target::Object(..), &Method::DELETE) => {
            lock_token(headers)?;
        }
        (Target::Object(..), &Method::POST) => {
            lock_token(headers)?;
            lock_op_is_unlock(&q)?;
        }
        _ => {}
    }
    Ok(target)
}

/// A key page's size: `count`, 1 to `items_per_request_max`.
fn page_count(q: &Query, cfg: &Config) -> Result<u32, HttpError> {
    let max = cfg.items_per_request_max;
    let count = q.count.unwrap_or(KEYS_PER_PAGE_DEFAULT);
    if count == 0 || count > max {
        return Err(HttpError::bad_request(
            "BadCount",
            format!("count must be 1 to {max} keys per page"),
        )
        .limit(max as u64, "items_per_request_max"));
    }
    Ok(count)
}

/// `?op=unlock` (true) or `?op=refresh` (false) on `POST /data/{ns}/{key}`.
fn lock_op_is_unlock(q: &Query) -> Result<bool, HttpError> {
    match q.op.as_deref() {
        Some("unlock") => Ok(true),
        Some("refresh") => Ok(false),
        _ => Err(HttpError::bad_request(
            "BadOperation",
            "POST on an object needs ?op=unlock or ?op=refresh",
        )),
    }
}

pub(super) fn check_key(key: &[u8], cfg: &Config) -> Result<(), HttpError> {
    if key.len() > cfg.key_bytes_max as usize {
        return Err(HttpError::bad_request(
            "KeyTooLong",
            format!(
                "the key is {} bytes; at most key_bytes_max ({}) are allowed: use a shorter key",
                key.len(),
                cfg.key_bytes_max
            ),
        )
        .limit(cfg.key_bytes_max as u64, "key_bytes_max"));
    }
    Ok(())
}

fn percent_decode(s: &str, what: &str) -> Result<Vec<u8>, HttpError> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let ok =
                b.len() >= i + 3 && b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit();
            if !ok {
                return Err(HttpError::bad_request(
                    "BadPercentEncoding",
                    format!(
                        "the {what} has a '%' not followed by two hex digits; encode '%' as %25"
                    ),
                ));
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    Ok(percent_encoding::percent_decode(b).collect())
}

/// The query parameters the data API knows; others are refused (a typo must not be ignored).
#[derive(Default)]
struct Query {
    cursor: Option<u64>,
    count: Option<u32>,
    lock: bool,
    unlock: bool,
    op: Option<String>,
}

impl Query {
    fn parse(q: &str) -> Result<Query, HttpError> {
        let mut out = Query::default();
        for pair in q.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = String::from_utf8(percent_decode(value, "query")?)
                .map_err(|_| HttpError::bad_request("BadQuery", "a query value is not UTF-8"))?;
            let bad = |what: &str| {
                HttpError::bad_request("BadQuery", format!("query parameter {name}: {what}"))
            };
            match name {
                "cursor" => {
                    out.cursor = Some(
                        value
                            .parse()
                            .map_err(|_| bad("expected the next_cursor of the previous page"))?,
                    )
                }
                "count" => {
                    out.count = Some(
                        value
                            .parse()
                            .map_err(|_| bad("expected a number of keys"))?,
                    )
                }
                "lock" => {
                    out.lock = parse_bool(&value).ok_or_else(|| bad("expected true or false"))?
                }
                "unlock" => {
                    out.unlock = parse_bool(&value).ok_or_else(|| bad("expected true or false"))?
                }
                "op" => out.op = Some(value),
                _ => {
                    return Err(HttpError::bad_request(
                        "BadQuery",
                        format!("unknown query parameter '{name}'; see /openapi.json"),
                    ));
                }
            }
        }
        Ok(out)
    }
}

fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "" | "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    }
}

/// The precondition of a write.
pub(super) enum Cond {
    None,
    /// `If-None-Match: *`.
    CreateOnly,
    /// `If-Match: *`.
    Exists,
    /// `If-Match: "v"`.
    Version(u64),
}

/// A write's headers (or multipart fields).
pub(super) struct WriteHeaders {
    pub cond: Cond,
    pub timeout: Option<Timeout>,
    pub lock_token: Option<u64>,
    pub unlock: bool,
    /// The object's `Content-Type` (None: not given; the object then has none, and reads
    /// answer `application/octet-stream`).
    pub content_type: Option<String>,
}

impl WriteHeaders {
    fn parse(h: &HeaderMap, q: &Query, cfg: &Config) -> Result<WriteHeaders, HttpError> {
        let text = |name| -> Result<Option<&str>, HttpError> {
            h.get(name)
                .map(|v| {
                    v.to_str().map_err(|_| {
                        HttpError::bad_request("BadHeader", format!("{name} is not ASCII"))
                    })
                })
                .transpose()
        };
        let cond = match (text(IF_NONE_MATCH.as_str())?, text(IF_MATCH.as_str())?) {
            (Some(_), Some(_)) => {
                return Err(HttpError::bad_request(
                    "BadConditions",
                    "If-None-Match and If-Match cannot be combined on a write",
                ));
            }
            (Some(v), None) if v.trim() == "*" => Cond::CreateOnly,
            (Some(_), None) => {
                return Err(HttpError::bad_request(
                    "BadConditions",
                    "on a write, If-None-Match takes only * (create only)",
                ));
            }
            (None, Some(v)) if v.trim() == "*" => Cond::Exists,
            (None, Some(v)) => Cond::Version(parse_etag(v)?),
            (None, None) => Cond::None,
        };
        Ok(WriteHeaders {
            cond,
            timeout: parse_timeout(text(TIMEOUT_SEC)?, text(TIMEOUT_TYPE)?)?,
            lock_token: lock_token(h)?,
            unlock: q.unlock,
            content_type: content_type(h.get(CONTENT_TYPE).map(|v| v.as_bytes()), cfg)?,
        })
    }
}

/// A write's `Content-Type` (header, or a form part's), checked before anything is stored:
/// printable ASCII (what a header may carry and a reader can be served back) and at most
/// `content_type_bytes_max` bytes. Empty counts as absent.
pub(super) fn content_type(v: Option<&[u8]>, cfg: &Config) -> Result<Option<String>, HttpError> {
    let Some(v) = v.map(|v| v.trim_ascii()).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let max = cfg.content_type_bytes_max;
    if v.len() > max as usize {
        return Err(HttpError::bad_request(
            "ContentTypeTooLong",
            format!(
                "the Content-Type is {} bytes; at most content_type_bytes_max ({max}) are stored: send a shorter one",
                v.len()
            ),
        )
        .limit(max as u64, "content_type_bytes_max"));
    }
    if !v.iter().all(|b| (0x20..0x7f).contains(b) || *b == b'\t') {
        return Err(HttpError::bad_request(
            "BadContentType",
            "the Content-Type must be printable ASCII (such as application/json)",
        ));
    }
    Ok(Some(
        String::from_utf8(v.to_vec()).expect("printable ASCII is UTF-8"),
    ))
}

/// `Soss-TimeoutSec` and `Soss-TimeoutType` (also the multipart fields).
pub(super) fn parse_timeout(
    sec: Option<&str>,
    kind: Option<&str>,
) -> Result<Option<Timeout>, HttpError> {
    let kind = match kind.map(|k| k.trim().to_ascii_lowercase()) {
        None => None,
        Some(k) => Some(match k.as_str() {
            "absolute" => TimeoutKind::Absolute,
            "sliding" => TimeoutKind::Sliding,
            "resetonupdate" => TimeoutKind::ResetOnUpdate,
            _ => {
                return Err(HttpError::bad_request(
                    "BadTimeoutType",
                    "Soss-TimeoutType must be Absolute, Sliding or ResetOnUpdate",
                ));
            }
        }),
    };
    match (sec, kind) {
        (None, None) => Ok(None),
        (None, Some(_)) => Err(HttpError::bad_request(
            "BadTimeout",
            "Soss-TimeoutType needs Soss-TimeoutSec",
        )),
        (Some(s), kind) => {
            let s: u32 = s
                .trim()
                .parse()
                .ok()
                .filter(|s| *s <= TIMEOUT_S_MAX)
                .ok_or_else(|| {
                    HttpError::bad_request(
                        "BadTimeout",
                        format!("Soss-TimeoutSec must be 0 (never) to {TIMEOUT_S_MAX} seconds"),
                    )
                    .limit(TIMEOUT_S_MAX as u64, "Soss-TimeoutSec")
                })?;
            Ok(Some(Timeout {
                timeout_s: s,
                kind: kind.unwrap_or_default(),
            }))
        }
    }
}

fn lock_token(h: &HeaderMap) -> Result<Option<u64>, HttpError> {
    h.get(LOCK_TOKEN)
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .ok_or_else(|| {
                    HttpError::bad_request(
                        "BadLockToken",
                        "Soss-LockToken must be the number read-and-lock returned",
                    )
                })
        })
        .transpose()
}

fn parse_etag(v: &str) -> Result<u64, HttpError> {
    let v = v.trim();
    let v = v.strip_prefix("W/").unwrap_or(v);
    v.strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| {
            HttpError::bad_request(
                "BadETag",
                "expected an ETag as this API returns it, such as \"7\", or *",
            )
        })
}

/// Does an `If-None-Match` list match `version`?
fn etag_matches(v: &HeaderValue, version: u64) -> Result<bool, HttpError> {
    let s = v
        .to_str()
        .map_err(|_| HttpError::bad_request("BadETag", "If-None-Match is not ASCII"))?;
    if s.trim() == "*" {
        return Ok(true);
    }
    for tag in s.split(',') {
        if parse_etag(tag)? == version {
            return Ok(true);
        }
    }
    Ok(false)
}

// ---- answers -----------------------------------------------------------------------------------

fn etag(version: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).expect("digits and quotes are a valid header")
}

fn meta_headers(h: &mut HeaderMap, meta: &Meta, content_type: HeaderValue) {
    h.insert(ETAG, etag(meta.version));
    h.insert(CONTENT_TYPE, content_type);
    if meta.timeout.timeout_s > 0 {
        h.insert(TIMEOUT_SEC, HeaderValue::from(meta.timeout.timeout_s));
        h.insert(
            TIMEOUT_TYPE,
            HeaderValue::from_static(match meta.timeout.kind {
                TimeoutKind::Absolute => "Absolute",
                TimeoutKind::Sliding => "Sliding",
                TimeoutKind::ResetOnUpdate => "ResetOnUpdate",
            }),
        );
    }
    if let Some(l) = meta.lock {
        h.insert("soss-lockexpiresinms", HeaderValue::from(l.expires_in_ms));
    }
}

fn no_content() -> hyper::Response<Body> {
    let mut r = hyper::Response::new(body::empty());
    *r.status_mut() = StatusCode::NO_CONTENT;
    r
}

fn json_response(status: StatusCode, json: Bytes) -> hyper::Response<Body> {
    let mut r = hyper::Response::new(body::bytes(json));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn to_json(v: &serde_json::Value) -> Bytes {
    Bytes::from(serde_json::to_vec(v).expect("JSON values serialize"))
}

fn method_not_allowed(allowed: &'static str) -> HttpError {
    let mut e = HttpError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        format!("this resource takes {allowed}"),
    );
    e.allow = Some(allowed);
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(
        method: Method,
        path: &str,
        query: &str,
        headers: &[(&str, &str)],
    ) -> Result<Target, HttpError> {
        let mut h = HeaderMap::new();
        for (n, v) in headers {
            h.insert(
                hyper::header::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        parse_head(&method, path, query, &h, &Config::default(), 7)
    }

    #[test]
    fn a_request_head_parses_without_a_shard() {
        assert_eq!(
            head(
                Method::PUT,
                "/data/caf%C3%A9/a%2Fb",
                "unlock=true",
                &[
                    ("if-match", "W/\"7\""),
                    (TIMEOUT_SEC, "60"),
                    (TIMEOUT_TYPE, "sliding")
                ]
            )
            .unwrap(),
            Target::Object("café".into(), b"a/b".to_vec())
        );
        assert_eq!(head(Method::GET, "/data", "", &[]).unwrap(), Target::Root);
        assert_eq!(
            head(Method::GET, "/data/ns/", "count=5", &[]).unwrap(),
            Target::Namespace("ns".into())
        );
    }

    #[test]
    fn a_bad_head_is_a_typed_error() {
        type Case<'a> = (Method, &'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);
        let cases: [Case; 7] = [
            (Method::GET, "/data/ns/k%2", "", &[], "BadPercentEncoding"),
            (Method::GET, "/data/%FF/k", "", &[], "BadNamespace"),
            (Method::GET, "/data/ns", "count=0", &[], "BadCount"),
            (Method::GET, "/data/ns/k", "lokc=1", &[], "BadQuery"),
            (
                Method::GET,
                "/data/ns/k",
                "",
                &[("if-none-match", "7")],
                "BadETag",
            ),
            (
                Method::PUT,
                "/data/ns/k",
                "",
                &[(TIMEOUT_TYPE, "Sliding")],
                "BadTimeout",
            ),
            (
                Method::POST,
                "/data/ns/k",
                "op=unlock",
                &[(LOCK_TOKEN, "x")],
                "BadLockToken",
            ),
        ];
        for (m, path, q, h, error) in cases {
            let e = head(m, path, q, h).expect_err(path);
            assert_eq!(e.error, error, "{path}?{q}");
            assert!(e.status.is_client_error());
        }
        let long = format!("application/{}", "x".repeat(250));
        let e = head(Method::PUT, "/data/ns/k", "", &[("content-type", &long)]).unwrap_err();
        assert_eq!(
            (e.status, e.error.as_str()),
            (StatusCode::BAD_REQUEST, "ContentTypeTooLong")
        );
        assert!(
            head(
                Method::PUT,
                "/data/ns/k",
                "",
                &[("content-type", &long[..255])]
            )
            .is_ok()
        );
    }
}
