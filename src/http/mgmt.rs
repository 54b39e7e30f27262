//! The management HTTP API on `mgt_http_port` (loopback by default: `mgt_http_interface`):
//! health and readiness probes, the store's hosts, this host's status, the partition map with
//! every copy, parameters, join and leave as JSON; Prometheus metrics ([`super::metrics`]);
//! and the web console ([`super::console`]).
//!
//! Management traffic is rare, so it takes the simple path: one listener, served by shard 0.
//! Nothing is re-implemented here:
//! - this host's status is the `Stats` request `stategrid show` sends (gathered from every
//!   shard), asked through the same local session as the data API;
//! - the store's hosts, join, leave and `set --all` are the admin requests `stategrid query`,
//!   `join`, `leave` and `set` send to the host's own `mgt_port` (`cluster::admin`), sent here
//!   over loopback by the same protocol;
//! - the partition map is the installed map the shards route by (`Plane::view`).
//!
//! | method and path | answer |
//! |---|---|
//! | `GET /healthz`, `GET /readyz` | probes |
//! | `GET /api/v1/hosts` | the store's hosts and their state (`stategrid query`) |
//! | `GET /api/v1/hosts/{id}` | one host (and for this host, `stategrid show`'s details) |
//! | `GET /api/v1/host` | this host's details (`stategrid show`) |
//! | `GET /api/v1/map` | the partition map: primaries, replicas and pending copies |
//! | `GET /api/v1/params` | this host's parameters and which can change at run time |
//! | `PUT /api/v1/params/{name}` | change one: `{"value": "2"}` store-wide (`set --all`) |
//! | `POST /api/v1/join`, `POST /api/v1/leave` | `stategrid join`, `stategrid leave` |
//! | `GET /metrics` | Prometheus text |
//! | `GET /console` | the web console |

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use futures_lite::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use stategrid_proto::{ErrorCode, Key, Request, Response};

use super::body::{self, Body};
use super::error::HttpError;
use super::rest::Rest;
use crate::cluster::admin::{self, SETTABLE_PARAMS};
use crate::cluster::map::Role;
use crate::server::local_api::LocalSession;

/// How long an admin request to this host's own `mgt_port` may take (a query gathers from
/// every host for up to a second; a store-wide `set` waits for consensus).
const ADMIN_CALL_TIMEOUT_MS: u64 = 10_000;

/// Largest request body the management API reads (a parameter change is a few bytes).
const MGMT_BODY_BYTES_MAX: usize = 4096;

const ENDPOINTS: &str = "/healthz, /readyz, /metrics, /console, /api/v1/hosts, /api/v1/hosts/{id}, /api/v1/host, /api/v1/map, /api/v1/params, /api/v1/params/{name}, /api/v1/join, /api/v1/leave";

/// Serves one management request.
pub async fn handle(
    rest: &Rest,
    session: &LocalSession,
    req: hyper::Request<Incoming>,
) -> hyper::Response<Body> {
    match route(rest, session, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

fn method_not_allowed(allow: &'static str) -> HttpError {
    let mut e = HttpError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        format!("this endpoint takes {allow}"),
    );
    e.allow = Some(allow);
    e
}

async fn route(
    rest: &Rest,
    session: &LocalSession,
    req: hyper::Request<Incoming>,
) -> Result<hyper::Response<Body>, HttpError> {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let headers = req.headers().clone();
    let read = method == Method::GET || method == Method::HEAD;
    if let Some(r) = super::console::serve(&path) {
        return if read {
            Ok(r)
        } else {
            Err(method_not_allowed("GET, HEAD"))
        };
    }
    match path.as_str() {
        "/healthz" | "/readyz" | "/metrics" | "/api/v1/hosts" | "/api/v1/host" | "/api/v1/map"
        | "/api/v1/params"
            if !read =>
        {
            Err(method_not_allowed("GET, HEAD"))
        }
        "/api/v1/join" | "/api/v1/leave" if method != Method::POST => {
            Err(method_not_allowed("POST"))
        }
        "/healthz" => Ok(json_ok(json!({"status": "ok"}))),
        "/readyz" => ready(rest, session).await,
        "/api/v1/host" => {
            let st = stats(rest, session).await?;
            Ok(json_ok(stats_json(&st)))
        }
        "/api/v1/hosts" => Ok(json_ok(
            admin_call(rest, &admin::Request::Query, &admin::AdminAuth::default()).await?,
        )),
        "/api/v1/map" => map(rest),
        "/api/v1/params" => params(rest, session).await,
        "/api/v1/join" => Ok(json_ok(
            admin_call(rest, &admin::Request::Join, &forwarded_auth(&headers)).await?,
        )),
        "/api/v1/leave" => {
            let req = admin::Request::Leave {
                wait: false,
                timeout_ms: 0,
            };
            let v = admin_call(rest, &req, &forwarded_auth(&headers)).await?;
            let mut r = json_ok(v);
            *r.status_mut() = StatusCode::ACCEPTED;
            Ok(r)
        }
        "/metrics" => {
            let st = stats(rest, session).await?;
            let m = rest.shard().shared().metrics.sum();
            let plane = rest.shard().plane();
            let view = plane.view();
            let f = &plane.failovers;
            let failovers = super::metrics::Failovers {
                promotions: f.promotions.load(std::sync::atomic::Ordering::Relaxed),
                hosts_failed: f.hosts_failed.load(std::sync::atomic::Ordering::Relaxed),
            };
            let text = super::metrics::render(&st, &m, view.as_deref(), failovers, rest.cfg());
            let mut r = hyper::Response::new(body::bytes(text));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            Ok(r)
        }
        p if p.starts_with("/api/v1/hosts/") => {
            if !read {
                return Err(method_not_allowed("GET, HEAD"));
            }
            host(rest, session, &p["/api/v1/hosts/".len()..]).await
        }
        p if p.starts_with("/api/v1/params/") => {
            if method != Method::PUT {
                return Err(method_not_allowed("PUT"));
            }
            let name = p["/api/v1/params/".len()..].to_owned();
            set_param(rest, &name, req).await
        }
        other => Err(HttpError::new(
            StatusCode::NOT_FOUND,
            "NoSuchEndpoint",
            format!("no endpoint {other}; the management API has {ENDPOINTS}"),
        )),
    }
}

/// Ready when this host serves keyed requests: it has joined a store and holds its leases.
/// Asks exactly what a client would (`Meta` of a key nobody writes).
async fn ready(rest: &Rest, session: &LocalSession) -> Result<hyper::Response<Body>, HttpError> {
    let probe = Request::Meta {
        key: Key {
            ns: stategrid_proto::hash::namespace_id("stategrid.readyz"),
            key: b"probe".to_vec(),
        },
    };
    let r = rest.call_native(session, &probe, &[]).await?;
    match r {
        Response::Meta { .. } => Ok(json_ok(json!({"status": "ready"}))),
        Response::Error(e) if e.code == ErrorCode::NotFound => {
            Ok(json_ok(json!({"status": "ready"})))
        }
        Response::Error(e) => {
            let mut err = HttpError::from_native(&e);
            err.status = StatusCode::SERVICE_UNAVAILABLE;
            Err(err)
        }
        other => Err(unexpected(&other)),
    }
}

fn unexpected(other: &Response) -> HttpError {
    HttpError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Internal",
        format!("unexpected answer {other:?}"),
    )
}

async fn stats(rest: &Rest, session: &LocalSession) -> Result<stategrid_proto::Stats, HttpError> {
    match rest.call_native(session, &Request::Stats, &[]).await? {
        Response::Stats(s) => Ok(s),
        Response::Error(e) => Err(HttpError::from_native(&e)),
        other => Err(unexpected(&other)),
    }
}

fn stats_json(s: &stategrid_proto::Stats) -> Value {
    let params: serde_json::Map<String, Value> = s
        .params
        .iter()
        .map(|p| (p.name.clone(), json!(p.value)))
        .collect();
    json!({
        "version": s.version,
        "shards": s.shards,
        "partitions": s.partitions,
        "uptime_s": s.uptime_s,
        "objects": s.objects,
        "object_bytes": s.object_bytes,
        "resident_bytes": s.resident_bytes,
        "connections": s.connections,
        "requests": s.requests,
        "evictions": s.evictions,
        "expirations": s.expirations,
        "forwarded_requests": s.forwarded_requests,
        "params": params,
    })
}

/// Where this host's own admin listener answers: `mgt_port` on `net_interface` (loopback
/// when it listens on every interface).
fn admin_addr(rest: &Rest) -> SocketAddr {
    let cfg = rest.cfg();
    let ip = if cfg.net_interface.is_unspecified() {
        Ipv4Addr::LOCALHOST
    } else {
        cfg.net_interface
    };
    SocketAddr::new(ip.into(), cfg.mgt_port)
}

/// The HTTP request's own credentials, passed on to `mgt_port` with an admin request (which
/// checks the admin role itself when the host has users): the HTTP service holds no
/// credential of its own, so it can do nothing its caller could not.
fn forwarded_auth(headers: &hyper::HeaderMap) -> admin::AdminAuth {
    match headers
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| super::auth::credentials(v.as_bytes()))
    {
        Some((user, password)) => admin::AdminAuth {
            user: user.map(|u| String::from_utf8_lossy(&u).into_owned()),
            password: Some(String::from_utf8_lossy(&password).into_owned()),
        },
        None => admin::AdminAuth::default(),
    }
}

/// Sends one admin request to this host's `mgt_port` (what the CLI sends) and returns the
/// answer without its `ok` field. A refusal is 409 with the host's reason; no answer is 503.
async fn admin_call(
    rest: &Rest,
    req: &admin::Request,
    auth: &admin::AdminAuth,
) -> Result<Value, HttpError> {
    let addr = admin_addr(rest);
    let unavailable = |what: String| {
        HttpError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ManagementUnavailable",
            format!(
                "the host's management port {addr} (mgt_port) {what}; is the control plane running?"
            ),
        )
    };
    let call = async {
        let mut s = glommio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("refused the connection: {e}"))?;
        let mut line = admin::request_line(req, auth);
        line.push('\n');
        s.write_all(line.as_bytes())
            .await
            .map_err(|e| format!("did not take the request: {e}"))?;
        let mut answer = String::new();
        futures_lite::io::BufReader::new(s.take(crate::cluster::wire::ADMIN_LINE_BYTES_MAX as u64))
            .read_line(&mut answer)
            .await
            .map_err(|e| format!("did not answer: {e}"))?;
        Ok::<String, String>(answer)
    };
    let timeout = async {
        glommio::timer::sleep(Duration::from_millis(ADMIN_CALL_TIMEOUT_MS)).await;
        Err(format!("did not answer within {ADMIN_CALL_TIMEOUT_MS} ms"))
    };
    let answer = futures_lite::future::or(call, timeout)
        .await
        .map_err(unavailable)?;
    let mut v: Value = serde_json::from_str(answer.trim())
        .map_err(|_| unavailable("answered something that is not an admin answer".into()))?;
    match v.get("ok").and_then(Value::as_bool) {
        Some(true) => {
            if let Some(o) = v.as_object_mut() {
                o.remove("ok");
            }
            Ok(v)
        }
        Some(false) => Err(HttpError::new(
            StatusCode::CONFLICT,
            "Refused",
            v.get("error")
                .and_then(Value::as_str)
                .unwrap_or("refused without a reason")
                .to_owned(),
        )),
        None => Err(unavailable(
            "answered something that is not an admin answer".into(),
        )),
    }
}

/// One host of the store: its line of `query`, and for this host `show`'s details.
async fn host(
    rest: &Rest,
    session: &LocalSession,
    id: &str,
) -> Result<hyper::Response<Body>, HttpError> {
    let q = admin_call(rest, &admin::Request::Query, &admin::AdminAuth::default()).await?;
    let me = q["me"].as_str().unwrap_or_default().to_owned();
    let id = if id == "self" { me.as_str() } else { id };
    let entry = q["hosts"]
        .as_array()
        .and_then(|hs| hs.iter().find(|h| h["id"] == id))
        .cloned();
    let mut out = match entry {
        Some(e) => e,
        // A host not in a store yet still describes itself.
        None if id == me => json!({"id": me, "state": "not in a store"}),
        None => {
            return Err(HttpError::new(
                StatusCode::NOT_FOUND,
                "NoSuchHost",
                format!(
                    "no host {id} in this store; GET /api/v1/hosts lists them (ids are 16 hex digits), or use `self`"
                ),
            ));
        }
    };
    if id == me {
        let st = stats(rest, session).await?;
        out["details"] = stats_json(&st);
        out["me"] = true.into();
    } else {
        out["me"] = false.into();
    }
    Ok(json_ok(out))
}

/// The partition map the shards route by, with every copy: per partition the index (in
/// `hosts`) of its primary, its full replicas and its pending (still receiving) copies.
fn map(rest: &Rest) -> Result<hyper::Response<Body>, HttpError> {
    let Some(v) = rest.shard().plane().view() else {
        return Err(HttpError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "NotJoined",
            "this host has no partition map yet: it is starting, or waits for `stategrid join` (POST /api/v1/join)",
        ));
    };
    let hosts: Vec<Value> = v
        .hosts
        .iter()
        .map(|h| {
            let addr = v.addr(h.id);
            json!({
                "id": admin::id_text(h.id),
                "addr": h.addr,
                "svr_addr": addr.map(|a| a.svr().to_string()),
                "state": admin::state_text(h.state),
                "active": h.state == crate::cluster::HostState::Active,
                "weight": h.weight,
                "me": h.id == v.me,
            })
        })
        .collect();
    let index = |id| v.hosts.iter().position(|h| h.id == id);
    let primaries: Vec<Option<usize>> = v
        .owners
        .iter()
        .map(|o| o.primary().and_then(index))
        .collect();
    let replicas: Vec<Vec<usize>> = v
        .owners
        .iter()
        .map(|o| o.replicas().filter_map(index).collect())
        .collect();
    let pending: Vec<Vec<usize>> = v
        .owners
        .iter()
        .map(|o| o.pending().filter_map(index).collect())
        .collect();
    let outgoing: Vec<Vec<usize>> = v
        .owners
        .iter()
        .map(|o| {
            o.entries()
                .into_iter()
                .skip(1)
                .filter(|&(_, r)| r == Role::Outgoing)
                .filter_map(|(h, _)| index(h))
                .collect()
        })
        .collect();
    let moving = v
        .owners
        .iter()
        .filter(|o| o.copies().count() != o.targets().count() || o.pending().next().is_some())
        .count();
    let replicas_min = replicas.iter().map(Vec::len).min().unwrap_or(0);
    Ok(json_ok(json!({
        "epoch": v.epoch,
        "hosts": hosts,
        "primaries": primaries,
        "replicas": replicas,
        "pending": pending,
        "outgoing": outgoing,
        "moving": moving,
        "replicas_min": replicas_min,
    })))
}

/// This host's parameters (as `show` lists them) and which ones change at run time.
async fn params(rest: &Rest, session: &LocalSession) -> Result<hyper::Response<Body>, HttpError> {
    let st = stats(rest, session).await?;
    let values: serde_json::Map<String, Value> = st
        .params
        .iter()
        .map(|p| (p.name.clone(), json!(p.value)))
        .collect();
    Ok(json_ok(json!({
        "params": values,
        "store_wide": SETTABLE_PARAMS,
        "host_local": [],
        "note": "store_wide parameters change on every host through consensus (PUT /api/v1/params/{name}); every other parameter is read at start-up: set it in the host's params file and restart it",
    })))
}

/// `PUT /api/v1/params/{name}` with `{"value": V}` (optionally `"scope": "store"`): a
/// store-wide change, exactly `stategrid set NAME V --all`.
async fn set_param(
    rest: &Rest,
    name: &str,
    req: hyper::Request<Incoming>,
) -> Result<hyper::Response<Body>, HttpError> {
    let auth = forwarded_auth(req.headers());
    let body = Limited::new(req.into_body(), MGMT_BODY_BYTES_MAX)
        .collect()
        .await
        .map_err(|_| {
            HttpError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "BodyTooLarge",
                format!("a parameter change is a small JSON object such as {{\"value\": \"2\"}}; this body is over {MGMT_BODY_BYTES_MAX} bytes"),
            )
            .limit(MGMT_BODY_BYTES_MAX as u64, "MGMT_BODY_BYTES_MAX")
        })?
        .to_bytes();
    let bad = |why: &str| {
        HttpError::bad_request(
            "BadParameterChange",
            format!("{why}; send {{\"value\": \"2\"}} (optionally with \"scope\": \"store\")"),
        )
    };
    let v: Value = serde_json::from_slice(&body).map_err(|_| bad("the body is not JSON"))?;
    let value = match &v["value"] {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return Err(bad("no \"value\" string or number")),
    };
    match v.get("scope").and_then(Value::as_str).unwrap_or("store") {
        "store" => {}
        "host" => {
            return Err(HttpError::new(
                StatusCode::CONFLICT,
                "NeedsRestart",
                format!(
                    "{name} cannot change on one running host: every host-local parameter is read at start-up; set it in this host's params file and restart it"
                ),
            ));
        }
        other => return Err(bad(&format!("scope `{other}` is neither store nor host"))),
    }
    if !SETTABLE_PARAMS.contains(&name) {
        return Err(HttpError::new(
            StatusCode::CONFLICT,
            "NotSettable",
            format!(
                "{name} cannot change while the store runs (only {} can); set it in every host's params file and restart them",
                SETTABLE_PARAMS.join(", ")
            ),
        ));
    }
    let req = admin::Request::Set {
        name: name.to_owned(),
        value,
    };
    Ok(json_ok(admin_call(rest, &req, &auth).await?))
}

fn json_ok(v: Value) -> hyper::Response<Body> {
    let mut r = hyper::Response::new(body::bytes(Bytes::from(
        serde_json::to_vec(&v).expect("JSON values serialize"),
    )));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}
