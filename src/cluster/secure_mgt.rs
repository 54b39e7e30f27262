//! `secure_mgt_port`: the admin protocol ([`super::admin`]) over TLS, for the CLI's `--tls`.
//!
//! A small TLS front on its own threads, apart from the control plane's polled loop: each
//! connection's TLS session is terminated here (rustls `StreamOwned`, blocking), and each
//! admin line it carries is relayed to this host's own `mgt_port` and the answer line sent
//! back. Admin traffic is a few lines per CLI run, so a thread per connection (at most
//! `mgt_connections_max`) and a loopback hop per line cost nothing that matters, and the
//! control plane needs no second transport. Host-to-host frames are not served here.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::wire::ADMIN_LINE_BYTES_MAX;
use crate::net::TlsSettings;

/// An idle TLS admin connection is closed after this long (as on `mgt_port`).
const IDLE_TIMEOUT_MS: u64 = 60_000;

/// How long one relayed admin request may take (a `leave --wait` waits up to an hour).
const RELAY_TIMEOUT_MS: u64 = 3_700_000;

/// Binds `secure_mgt_port` and serves it from a thread of its own until the process exits.
pub fn start(cfg: &crate::config::Config, tls: Arc<TlsSettings>) -> Result<(), String> {
    let addr = SocketAddr::new(cfg.net_interface.into(), cfg.secure_mgt_port);
    let listener = TcpListener::bind(addr).map_err(|e| {
        format!(
            "cannot listen on {addr} (secure_mgt_port / net_interface): {e}. Choose another port with --set secure_mgt_port=N, or 0 for none"
        )
    })?;
    let mgt = SocketAddr::new(cfg.net_interface.into(), cfg.mgt_port);
    let max = cfg.mgt_connections_max;
    let open = Arc::new(AtomicU32::new(0));
    std::thread::Builder::new()
        .name("secure-mgt".into())
        .spawn(move || {
            for s in listener.incoming() {
                let Ok(s) = s else { continue };
                if open.load(Ordering::Acquire) >= max {
                    tracing::warn!(
                        "secure_mgt_port: refused a connection, mgt_connections_max ({max}) reached"
                    );
                    continue;
                }
                open.fetch_add(1, Ordering::AcqRel);
                let (tls, open) = (tls.clone(), open.clone());
                let spawned = std::thread::Builder::new()
                    .name("secure-mgt-conn".into())
                    .spawn(move || {
                        if let Err(e) = serve(s, tls, mgt) {
                            tracing::debug!("secure_mgt_port connection: {e}");
                        }
                        open.fetch_sub(1, Ordering::AcqRel);
                    });
                if spawned.is_err() {
                    tracing::warn!("secure_mgt_port: cannot start a connection thread");
                }
            }
        })
        .map_err(|e| format!("cannot start the secure_mgt_port thread: {e}"))?;
    Ok(())
}

/// Serves one TLS connection: every line in is relayed to `mgt`, every answer line out.
fn serve(s: TcpStream, tls: Arc<TlsSettings>, mgt: SocketAddr) -> std::io::Result<()> {
    s.set_read_timeout(Some(Duration::from_millis(IDLE_TIMEOUT_MS)))?;
    s.set_write_timeout(Some(Duration::from_millis(IDLE_TIMEOUT_MS)))?;
    let conn = rustls::ServerConnection::new(tls.server()).map_err(std::io::Error::other)?;
    let mut stream = rustls::StreamOwned::new(conn, s);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(i) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            let answer = relay(mgt, &line)?;
            stream.write_all(&answer)?;
            stream.flush()?;
            continue;
        }
        if buf.len() >= ADMIN_LINE_BYTES_MAX {
            let msg = crate::cluster::admin::error_line(format!(
                "admin request longer than {ADMIN_LINE_BYTES_MAX} bytes"
            ));
            stream.write_all(msg.as_bytes())?;
            return stream.flush();
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Sends one admin line to this host's `mgt_port` and reads the answer line.
fn relay(mgt: SocketAddr, line: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect_timeout(&mgt, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_millis(RELAY_TIMEOUT_MS)))?;
    s.write_all(line)?;
    let mut answer = Vec::new();
    BufReader::new(s.take(ADMIN_LINE_BYTES_MAX as u64)).read_until(b'\n', &mut answer)?;
    Ok(answer)
}
