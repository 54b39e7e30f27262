//! Host-to-host management links over mutual TLS (`tls_cluster 1`).
//!
//! With `tls_cluster 1` every peer connection on `mgt_port` (Raft, joins, leases) is TLS in
//! both directions under the store's CA (`tls_ca_file`): the connecting host verifies the
//! other's certificate for the address it dialled, the accepting host requires a client
//! certificate signed by the same CA (rustls `WebPkiClientVerifier`), and each presents its
//! own `tls_cert_file`/`tls_key_file`. A host whose certificate another CA signed cannot
//! complete a handshake, so it cannot join or send a frame. Plaintext peer connections are
//! refused. The admin calls hosts make to each other (`query`'s counters, a forwarded `set`)
//! are TLS too; the CLI's admin lines may stay plaintext on `mgt_port` (TLS for it is
//! `secure_mgt_port`).
//!
//! What TLS proves is "a host of this store", not which one: with a `cluster_key` the
//! key handshake (`auth::peer`) still runs inside TLS and binds the connection to a host id.
//! SWIM and discovery datagrams are not TLS; they carry membership only (no session data)
//! and are encrypted and authenticated under the cluster key when one is set (`auth::peer`).
//!
//! The control loop uses nonblocking std sockets, so a TLS link is rustls's `StreamOwned`
//! over the socket: reads and writes return `WouldBlock` until the handshake and the socket
//! allow, and the plaintext buffer inside rustls is unlimited because the control plane
//! bounds what it queues per peer itself.

use std::io::{self, Read, Write};
use std::net::{IpAddr, TcpStream};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

use crate::config::Config;
use crate::net::tls::{load_certs, provider};

/// The first byte of a TLS handshake record: how an accepted connection is told from the
/// admin protocol (`{`) and plaintext peer frames.
pub const TLS_HANDSHAKE_BYTE: u8 = 0x16;

/// Both sides' TLS configurations of one host.
pub struct MgtTls {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

impl MgtTls {
    /// With `tls_cluster 1`: the store CA and this host's certificate; `None` otherwise.
    pub fn from_config(cfg: &Config) -> Result<Option<MgtTls>, String> {
        if !cfg.tls_cluster {
            return Ok(None);
        }
        let mut roots = RootCertStore::empty();
        for cert in load_certs(&cfg.tls_ca_file)? {
            roots
                .add(cert)
                .map_err(|e| format!("tls_ca_file {}: {e}", cfg.tls_ca_file.display()))?;
        }
        let roots = Arc::new(roots);
        let certs = load_certs(&cfg.tls_cert_file)?;
        let key = || {
            PrivateKeyDer::from_pem_file(&cfg.tls_key_file).map_err(|e| {
                format!(
                    "cannot read a PEM private key from tls_key_file {}: {e}",
                    cfg.tls_key_file.display()
                )
            })
        };
        let unusable = |e: rustls::Error| {
            format!(
                "tls_cert_file {} and tls_key_file {} do not make a usable certificate for tls_cluster: {e}",
                cfg.tls_cert_file.display(),
                cfg.tls_key_file.display()
            )
        };
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(|e| format!("tls_ca_file {}: {e}", cfg.tls_ca_file.display()))?;
        let server = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs.clone(), key()?)
            .map_err(unusable)?;
        let client = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key()?)
            .map_err(unusable)?;
        Ok(Some(MgtTls {
            server: Arc::new(server),
            client: Arc::new(client),
        }))
    }

    /// The server side of an accepted connection whose first bytes (`first`, already read
    /// from the socket) open a TLS handshake.
    pub fn accept(&self, tcp: TcpStream, first: &[u8]) -> io::Result<Stream> {
        let mut conn = ServerConnection::new(self.server.clone()).map_err(io::Error::other)?;
        conn.set_buffer_limit(None);
        let mut rest = first;
        while !rest.is_empty() {
            conn.read_tls(&mut rest)?;
            conn.process_new_packets()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        }
        Ok(Stream::Server(Box::new(rustls::StreamOwned::new(
            conn, tcp,
        ))))
    }

    /// The client side of a connection this host opened to the peer at `ip`, whose
    /// certificate must name that address.
    pub fn connect(&self, tcp: TcpStream, ip: IpAddr) -> io::Result<Stream> {
        let mut conn = ClientConnection::new(self.client.clone(), ServerName::IpAddress(ip.into()))
            .map_err(io::Error::other)?;
        conn.set_buffer_limit(None);
        Ok(Stream::Client(Box::new(rustls::StreamOwned::new(
            conn, tcp,
        ))))
    }
}

/// A management connection: plaintext, or TLS over the same nonblocking socket.
pub enum Stream {
    Plain(TcpStream),
    /// A link this host opened.
    Client(Box<rustls::StreamOwned<ClientConnection, TcpStream>>),
    /// A connection this host accepted.
    Server(Box<rustls::StreamOwned<ServerConnection, TcpStream>>),
}

/// Runs `$e` on whichever stream `$s` holds, bound as `$t`.
macro_rules! each {
    ($s:expr, $t:ident => $e:expr) => {
        match $s {
            Stream::Plain($t) => $e,
            Stream::Client($t) => $e,
            Stream::Server($t) => $e,
        }
    };
}

impl Stream {
    /// The socket under it (connect state, readiness registration).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Client(t) => &t.sock,
            Stream::Server(t) => &t.sock,
        }
    }

    pub fn is_tls(&self) -> bool {
        !matches!(self, Stream::Plain(_))
    }

    /// Sends what TLS holds encrypted and not yet written (records rustls buffered when the
    /// socket was full); a no-op for plaintext. `WouldBlock` is not an error here.
    pub fn flush_tls(&mut self) -> io::Result<()> {
        if !self.is_tls() {
            return Ok(());
        }
        match self.flush() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            r => r,
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // A TLS peer that closed without close_notify (killed) is an end, not an error.
        match each!(self, s => s.read(buf)) {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && self.is_tls() => Ok(0),
            r => r,
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        each!(self, s => s.write(buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        each!(self, s => s.flush())
    }
}
