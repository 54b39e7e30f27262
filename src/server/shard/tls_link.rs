//! TLS on a shard's connections: accepting a TLS peer (a client on `secure_svr_port`, another
//! host on `int_port` with `tls_cluster 1`) and dialling another host over mutual TLS.
//!
//! The record layer itself is `crate::net::tls`; the host links' certificates and CA are
//! `crate::net::tls_cluster`. What is here is only which connection gets which end.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use rustls::pki_types::ServerName;

use super::Shard;
use super::hosts::ConnKind;
use crate::net::TlsConn;

impl Shard {
    /// Adds an accepted connection whose bytes pass through TLS with `config`, and starts
    /// reading it. A handshake that never finishes is closed like a half-sent frame
    /// (`frame_timeout_ms`).
    pub(super) fn accept_tls(
        &mut self,
        fd: OwnedFd,
        kind: ConnKind,
        config: Arc<rustls::ServerConfig>,
    ) -> Option<u32> {
        let tls = match TlsConn::new(config) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(shard = self.core.shard, "TLS session setup: {e}");
                return None;
            }
        };
        let slot = self.insert_conn(fd, kind)?;
        let now = self.now_ms;
        let conn = &mut self.conns[slot as usize];
        conn.tls = Some(tls);
        conn.partial_since_ms = Some(now);
        self.want_recv(slot);
        Some(slot)
    }

    /// With `tls_cluster 1`, the mutual-TLS server configuration a connection accepted on
    /// `int_port` runs with (one read lock per accept); None: plaintext host links.
    pub(super) fn int_accept_tls(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.tls.as_ref()?.cluster().map(|c| c.server)
    }

    /// With `tls_cluster 1`, the TLS client end of a new link to the host at `addr`: it
    /// presents our certificate and accepts only a certificate of the store CA naming `addr`'s
    /// IP address. Ok(None): plaintext host links. Err: the session could not be set up (said
    /// in the log by the caller).
    pub(super) fn link_tls(
        &self,
        addr: std::net::SocketAddr,
    ) -> Result<Option<Box<TlsConn>>, crate::net::TlsError> {
        let Some(cluster) = self.tls.as_ref().and_then(|t| t.cluster()) else {
            return Ok(None);
        };
        let name = ServerName::IpAddress(addr.ip().into());
        TlsConn::client(cluster.client, name).map(Some)
    }
}
