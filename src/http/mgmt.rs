//! The management HTTP API on `mgt_http_port` (loopback by default: `mgt_http_interface`):
//! health and readiness probes, this host's status and the partition map as JSON, and
//! Prometheus metrics ([`super::metrics`]).
//!
//! Management traffic is rare, so it takes the simple path: one listener, served by shard 0,
//! asking through the same local session as the data API. The answers come from the requests
//! the CLI's `show` uses (`Stats`, gathered from every shard) and that clients route by
//! (`GetMap`); nothing is re-implemented here.

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, StatusCode};
use serde_json::json;
use stategrid_proto::{ErrorCode, Key, Request, Response};

use super::body::{self, Body};
use super::error::HttpError;
use super::rest::Rest;
use crate::server::local_api::LocalSession;

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

async fn route(
    rest: &Rest,
    session: &LocalSession,
    req: hyper::Request<Incoming>,
) -> Result<hyper::Response<Body>, HttpError> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut e = HttpError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "the management API is read-only in this version: GET",
        );
        e.allow = Some("GET, HEAD");
        return Err(e);
    }
    match req.uri().path() {
        "/healthz" => Ok(json_ok(json!({"status": "ok"}))),
        "/readyz" => ready(rest, session).await,
        "/api/v1/host" => {
            let st = stats(rest, session).await?;
            Ok(json_ok(stats_json(&st)))
        }
        "/api/v1/map" => map(rest, session).await,
        "/metrics" => {
            let st = stats(rest, session).await?;
            let text = super::metrics::render(&st, rest.cfg());
            let mut r = hyper::Response::new(body::bytes(text));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            Ok(r)
        }
        other => Err(HttpError::new(
            StatusCode::NOT_FOUND,
            "NoSuchEndpoint",
            format!(
                "no endpoint {other}; the management API has /healthz, /readyz, /metrics, /api/v1/host, /api/v1/map"
            ),
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
        other => Err(HttpError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Internal",
            format!("unexpected answer {other:?}"),
        )),
    }
}

async fn stats(rest: &Rest, session: &LocalSession) -> Result<stategrid_proto::Stats, HttpError> {
    match rest.call_native(session, &Request::Stats, &[]).await? {
        Response::Stats(s) => Ok(s),
        Response::Error(e) => Err(HttpError::from_native(&e)),
        other => Err(HttpError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Internal",
            format!("unexpected answer {other:?}"),
        )),
    }
}

fn stats_json(s: &stategrid_proto::Stats) -> serde_json::Value {
    let params: serde_json::Map<String, serde_json::Value> = s
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
        "params": params,
    })
}

async fn map(rest: &Rest, session: &LocalSession) -> Result<hyper::Response<Body>, HttpError> {
    let m = match rest.call_native(session, &Request::GetMap, &[]).await? {
        Response::Map(m) => m,
        Response::Error(e) => return Err(HttpError::from_native(&e)),
        other => {
            return Err(HttpError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal",
                format!("unexpected answer {other:?}"),
            ));
        }
    };
    let hosts: Vec<serde_json::Value> = m
        .hosts
        .iter()
        .map(
            |h| json!({"id": format!("{:016x}", h.id), "svr_addr": h.svr_addr, "active": h.active}),
        )
        .collect();
    let primaries: Vec<Option<u16>> = m
        .primaries
        .iter()
        .map(|&p| (p != u16::MAX).then_some(p))
        .collect();
    Ok(json_ok(json!({
        "epoch": m.epoch,
        "hosts": hosts,
        "primaries": primaries,
        "moving": m.moving,
        "replicas_min": m.replicas_min,
    })))
}

fn json_ok(v: serde_json::Value) -> hyper::Response<Body> {
    let mut r = hyper::Response::new(body::bytes(Bytes::from(
        serde_json::to_vec(&v).expect("JSON values serialize"),
    )));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}
