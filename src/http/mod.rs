//! The HTTP services: the data REST API on `rest_port` ([`rest`]), served by every shard on
//! its own glommio executor with hyper 1.x (HTTP/1.1).
//!
//! - [`adapter`]: hyper's I/O and timer traits on glommio.
//! - [`rest`]: the data API: each request becomes one native request submitted through the
//!   shard's own routing (`server::local_api`), so it is served exactly like a native client's
//!   (forwarded to the owning shard, relayed to the primary host, replicated).
//! - [`error`]: error answers (JSON naming the error, the limit and what to do).
//! - [`body`]: response bodies, a read's value by reference.
//! - [`openapi`]: the data API's OpenAPI 3.1 document, served at `/openapi.json`.
//!
//! - [`mgmt`], [`metrics`] and [`console`]: the management API on `mgt_http_port` (shard 0
//!   only): probes, the store's hosts, the partition map, parameters, join and leave as JSON,
//!   `/metrics`, and the web console at `/console`.
//!
//! - [`auth`]: Basic / Bearer credentials when client users are configured (401, 403), and
//!   protected mode on `rest_port`.
//!
//! Limits (params): `http_connections_max` (per shard), `http_header_bytes_max`,
//! `http_body_bytes_max`, `http_read_timeout_ms`.

pub mod adapter;
pub mod auth;
pub mod body;
pub mod console;
pub mod error;
pub mod metrics;
pub mod mgmt;
pub mod multipart;
pub mod openapi;
pub mod rest;

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use futures_lite::AsyncWriteExt;
use hyper::server::conn::http1;

use crate::server::local_api::ShardHandle;

/// Which HTTP service a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    /// The data REST API (`rest_port`).
    Data,
    /// The management API (`mgt_http_port`).
    Management,
}

/// Accepts HTTP connections for `service` on this shard until the shard stops.
///
/// `listener` is this shard's socket on the service's port (bound at start-up, so a port in
/// use fails start-up).
///
/// With `tls` (`http_tls 1`) every connection is HTTPS: TLS (futures-rustls over glommio's
/// stream) before hyper sees a byte.
pub async fn serve(
    listener: socket2::Socket,
    shard: ShardHandle,
    service: Service,
    tls: Option<std::sync::Arc<crate::net::TlsSettings>>,
) {
    use std::os::fd::{FromRawFd, IntoRawFd};
    // SAFETY: the descriptor is a listening TCP socket we own; glommio takes it over.
    let listener = unsafe { glommio::net::TcpListener::from_raw_fd(listener.into_raw_fd()) };
    let state = Rc::new(rest::Rest::new(shard));
    let open = Rc::new(Cell::new(0u32));
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("rest_port: accept failed: {e}");
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if service == Service::Data && crate::auth::protect::refuse_fd(state.cfg(), &stream) {
            glommio::spawn_local(deny(stream)).detach();
            continue;
        }
        let max = state.cfg().http_connections_max;
        if open.get() >= max {
            glommio::spawn_local(refuse(stream, max, "http_connections_max")).detach();
            continue;
        }
        open.set(open.get() + 1);
        let (state, open, tls) = (state.clone(), open.clone(), tls.clone());
        glommio::spawn_local(async move {
            serve_conn(stream, state, service, tls).await;
            open.set(open.get() - 1);
        })
        .detach();
    }
}

/// Answers a connection over the limit `param` (`max`) with a 503 and closes it.
async fn refuse(mut stream: glommio::net::TcpStream, max: u32, param: &str) {
    let body = format!(
        "{{\"error\":\"TooManyConnections\",\"message\":\"this shard serves {max} connections at once ({param}); retry later\",\"limit\":{max},\"param\":\"{param}\"}}"
    );
    let msg = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\nretry-after: 1\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(msg.as_bytes()).await;
    let _ = stream.close().await;
}

/// Answers a client refused by protected mode with a 403 saying why, and closes it.
async fn deny(mut stream: glommio::net::TcpStream) {
    use futures_lite::AsyncReadExt;
    tracing::info!(
        "rest_port: refused a non-loopback client: protected mode (no requirepass or users_file)"
    );
    // Read the request first (briefly): closing with unread bytes would reset the
    // connection and the client might never see the answer.
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 4096];
    let _ = stream.read(&mut buf).await;
    let _ = stream.write_all(auth::denied_response().as_bytes()).await;
    let _ = stream.close().await;
}

async fn serve_conn(
    stream: glommio::net::TcpStream,
    state: Rc<rest::Rest>,
    kind: Service,
    tls: Option<std::sync::Arc<crate::net::TlsSettings>>,
) {
    let _ = stream.set_nodelay(true);
    let cfg = state.cfg().clone();
    let session = match state.shard().open() {
        Ok(s) => Rc::new(s),
        Err(_) => {
            // The shard is draining, or full of connections (HTTP ones count too).
            return refuse(
                stream,
                cfg.connections_per_shard_max,
                "connections_per_shard_max",
            )
            .await;
        }
    };
    let conn_auth = Rc::new(auth::ConnAuth::default());
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let (state, session, conn_auth) = (state.clone(), session.clone(), conn_auth.clone());
        async move {
            if let Some(users) = &state.cfg().users {
                // Orchestrators probe health and readiness without credentials.
                let open = kind == Service::Management
                    && matches!(req.uri().path(), "/healthz" | "/readyz");
                match conn_auth.check(users, req.headers()) {
                    Ok((role, user)) => session.set_role(Some(role), &user),
                    Err(_) if open => session.set_role(Some(crate::auth::users::Role::Read), ""),
                    Err(why) => return Ok(auth::unauthorized(why)),
                }
            }
            let resp = match kind {
                Service::Data => state.handle(&session, req).await,
                Service::Management => mgmt::handle(&state, &session, req).await,
            };
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    let builder = {
        let mut b = http1::Builder::new();
        b.timer(adapter::GlommioTimer)
            .header_read_timeout(Duration::from_millis(cfg.http_read_timeout_ms))
            .max_buf_size(cfg.http_header_bytes_max as usize);
        b
    };
    let ended = match tls {
        None => builder
            .serve_connection(adapter::GlommioIo::new(stream), service)
            .await
            .map_err(|e| e.to_string()),
        Some(tls) => {
            // The handshake gets the same time as the request head.
            let acceptor = futures_rustls::TlsAcceptor::from(tls.server());
            let timeout = Duration::from_millis(cfg.http_read_timeout_ms);
            let handshake = async { Some(acceptor.accept(stream).await) };
            let expired = async {
                glommio::timer::sleep(timeout).await;
                None
            };
            match futures_lite::future::or(handshake, expired).await {
                Some(Ok(stream)) => builder
                    .serve_connection(adapter::GlommioIo::new(stream), service)
                    .await
                    .map_err(|e| e.to_string()),
                Some(Err(e)) => Err(format!("TLS handshake: {e}")),
                None => Err(format!(
                    "no TLS handshake within http_read_timeout_ms ({} ms)",
                    cfg.http_read_timeout_ms
                )),
            }
        }
    };
    if let Err(e) = ended {
        tracing::debug!("HTTP connection ended: {e}");
    }
}
