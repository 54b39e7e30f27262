//! TLS on the shard's ring (`secure_svr_port`, and host links with `tls_cluster 1`): rustls's
//! unbuffered API.
//!
//! rustls's unbuffered connection does no I/O and keeps no buffers of its own, which fits a
//! completion ring: the ring receives ciphertext into [`TlsConn`]'s receive buffer, [`TlsConn`]
//! decrypts every whole record into the connection's frame buffer (the same [`AlignedBuf`]
//! a plaintext connection receives into, so the frame decoder and the RESP parser run
//! unchanged), and before a send it encrypts the connection's filled [`SendBatch`] into one
//! ciphertext buffer that the ring's sendmsg takes. A plaintext connection has no
//! `TlsConn` and pays one `Option` check per receive and per send.
//!
//! Costs per byte over plaintext: one copy in (record payload -> frame buffer, after rustls
//! decrypts the record in place), one copy out (send batch -> 16 KiB plaintext chunks, then
//! AES-GCM or ChaCha20 into the ciphertext buffer), and the cipher itself. Values read from
//! the store are no longer sent by reference: the cipher must read them anyway.
//!
//! Memory is bounded by what arrived, never by what a peer claims: the ciphertext buffer
//! starts at [`TLS_RECV_BYTES_MIN`] and doubles only when a record (or a handshake message)
//! does not fit, up to [`TLS_RECV_BYTES_MAX`]; a peer that needs more is closed.
//!
//! Kernel TLS (kTLS: handing the record layer to the kernel after the handshake) is not used
//! yet; see docs/security.md.

use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::ServerConfig;
use rustls::client::UnbufferedClientConnection;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedStatus,
};

use super::tls_cluster::ClusterTls;
use super::{AlignedBuf, SendBatch};

/// First size of a connection's ciphertext receive buffer: a client's first flight fits.
pub const TLS_RECV_BYTES_MIN: usize = 8 * 1024;

/// Largest ciphertext receive buffer: a whole handshake message (rustls accepts up to 64 KiB)
/// plus one record (16 KiB and its overhead). A peer that needs more is closed.
pub const TLS_RECV_BYTES_MAX: usize = 96 * 1024;

/// Plaintext bytes per record the server writes (TLS's maximum): fewer records, less overhead.
const RECORD_PLAIN_BYTES: usize = 16 * 1024;

/// Upper bound of one record's overhead (header, explicit nonce, tag, content type), used to
/// size the ciphertext buffer before encrypting (rustls says if it was not enough).
const RECORD_OVERHEAD_BYTES: usize = 64;

/// Why a TLS connection was closed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The peer broke the protocol: not TLS at all (plaintext on the TLS port), a certificate
    /// it refused, a bad record.
    #[error("TLS: {0}")]
    Protocol(#[from] rustls::Error),
    #[error(
        "TLS: a record or handshake message needs more than {TLS_RECV_BYTES_MAX} bytes of buffer"
    )]
    TooLarge,
    /// The first bytes are not a TLS handshake record (0x16): plaintext sent to the TLS
    /// port. Said at once instead of waiting for a record length that garbage "claims".
    #[error("TLS: the peer's first bytes are not a TLS handshake (plaintext on secure_svr_port?)")]
    NotTls,
    #[error("TLS: could not encrypt: {0}")]
    Encrypt(String),
}

/// The certificate settings every shard accepts TLS with. Readable from any thread; replaced
/// as a whole by [`TlsSettings::reload`] (new connections get the new certificate, open ones
/// keep theirs).
pub struct TlsSettings {
    server: RwLock<Arc<ServerConfig>>,
    /// With `tls_cluster 1`: the mutual-TLS configurations of host links (see
    /// [`super::tls_cluster`]).
    cluster: Option<RwLock<ClusterTls>>,
    cert_file: std::path::PathBuf,
    key_file: std::path::PathBuf,
    ca_file: std::path::PathBuf,
}

impl TlsSettings {
    /// Reads `tls_cert_file` and `tls_key_file` (and `tls_ca_file` with `tls_cluster 1`);
    /// None when no certificate is configured.
    pub fn from_config(cfg: &crate::config::Config) -> Result<Option<Arc<TlsSettings>>, String> {
        if cfg.tls_cert_file.as_os_str().is_empty() {
            return Ok(None);
        }
        let server = server_config(&cfg.tls_cert_file, &cfg.tls_key_file)?;
        let cluster = if cfg.tls_cluster {
            let c = ClusterTls::load(&cfg.tls_cert_file, &cfg.tls_key_file, &cfg.tls_ca_file)?;
            Some(RwLock::new(c))
        } else {
            None
        };
        Ok(Some(Arc::new(TlsSettings {
            server: RwLock::new(server),
            cluster,
            cert_file: cfg.tls_cert_file.clone(),
            key_file: cfg.tls_key_file.clone(),
            ca_file: cfg.tls_ca_file.clone(),
        })))
    }

    /// The current server configuration (one uncontended read lock: once per accept).
    pub fn server(&self) -> Arc<ServerConfig> {
        self.server.read().expect("tls settings lock").clone()
    }

    /// With `tls_cluster 1`, the current host-link configurations (one uncontended read lock:
    /// once per link opened or accepted).
    pub fn cluster(&self) -> Option<ClusterTls> {
        self.cluster
            .as_ref()
            .map(|c| c.read().expect("tls settings lock").clone())
    }

    /// Reads the certificate, key (and CA) files again (SIGHUP). On error the old ones stay.
    pub fn reload(&self) -> Result<(), String> {
        let new = server_config(&self.cert_file, &self.key_file)?;
        if let Some(cluster) = &self.cluster {
            let c = ClusterTls::load(&self.cert_file, &self.key_file, &self.ca_file)?;
            *cluster.write().expect("tls settings lock") = c;
        }
        *self.server.write().expect("tls settings lock") = new;
        Ok(())
    }
}

/// The crypto provider every TLS endpoint of the process uses (ring: no C toolchain beyond
/// what `ring` needs, no cmake).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a PEM certificate chain (the host's certificate first).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read certificate file {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("certificate file {} is not PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "certificate file {} holds no certificate (expected PEM '-----BEGIN CERTIFICATE-----')",
            path.display()
        ));
    }
    Ok(certs)
}

/// Reads a PEM private key (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(key_file: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(key_file).map_err(|e| {
        format!(
            "cannot read a PEM private key from tls_key_file {}: {e}",
            key_file.display()
        )
    })
}

/// A TLS server configuration from PEM files (no client certificates asked for: clients
/// prove who they are at the protocol layer).
pub fn server_config(cert_file: &Path, key_file: &Path) -> Result<Arc<ServerConfig>, String> {
    if key_file.as_os_str().is_empty() {
        return Err(
            "tls_cert_file is set but tls_key_file is not: name the certificate's private key (PEM)"
                .into(),
        );
    }
    let certs = load_certs(cert_file)?;
    let key = load_key(key_file)?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            format!(
                "tls_cert_file {} and tls_key_file {} do not make a usable certificate: {e}",
                cert_file.display(),
                key_file.display()
            )
        })?;
    Ok(Arc::new(config))
}

/// The CA certificates in `ca_file` (PEM) as a trust store.
pub fn load_roots(ca_file: &Path) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certs(ca_file)? {
        roots
            .add(cert)
            .map_err(|e| format!("CA file {}: {e}", ca_file.display()))?;
    }
    Ok(roots)
}

/// A client configuration trusting the CA certificates in `ca_file` (PEM).
pub fn client_config(ca_file: &Path) -> Result<Arc<rustls::ClientConfig>, String> {
    let roots = load_roots(ca_file)?;
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Which end of the handshake this connection is: a server for clients and for hosts dialling
/// `int_port`, a client for our own host links (`tls_cluster`).
enum Side {
    Server(UnbufferedServerConnection),
    Client(UnbufferedClientConnection),
}

/// Where [`TlsConn::pump`] writes: kept apart from the rustls state and the receive buffer,
/// which a connection state borrows while it is handled.
#[derive(Default)]
struct Out {
    /// Ciphertext for the peer (handshake records, encrypted answers), in order.
    wire: Vec<u8>,
    /// Small answer segments gathered into one record.
    scratch: Vec<u8>,
    /// Plaintext that must go before the connection's answers, and before its peer proved
    /// the cluster key: the cluster-key handshake messages of a host link.
    urgent: Vec<u8>,
    established: bool,
    peer_closed: bool,
}

/// One connection's TLS state: rustls's state machine, the ciphertext received and not yet
/// decrypted, and the ciphertext waiting to be sent.
pub struct TlsConn {
    side: Side,
    /// Ciphertext from the peer; `used` bytes are filled (a partial record at most, after
    /// [`TlsConn::pump`]). Zero-filled storage, so the ring may write into the tail.
    incoming: Vec<u8>,
    used: usize,
    out: Out,
    /// Has the first byte (the first record's type) been checked?
    first_checked: bool,
}

impl TlsConn {
    /// The server end (a client on `secure_svr_port`, a host on `int_port`).
    pub fn new(config: Arc<ServerConfig>) -> Result<Box<TlsConn>, TlsError> {
        Ok(Self::with_side(Side::Server(
            UnbufferedServerConnection::new(config)?,
        )))
    }

    /// The client end: our link to another host, whose certificate must name `name` (its
    /// address) and chain to the store CA in `config`.
    pub fn client(
        config: Arc<rustls::ClientConfig>,
        name: ServerName<'static>,
    ) -> Result<Box<TlsConn>, TlsError> {
        Ok(Self::with_side(Side::Client(
            UnbufferedClientConnection::new(config, name)?,
        )))
    }

    fn with_side(side: Side) -> Box<TlsConn> {
        Box::new(TlsConn {
            side,
            incoming: vec![0; TLS_RECV_BYTES_MIN],
            used: 0,
            out: Out::default(),
            first_checked: false,
        })
    }

    /// Where the next receive writes: the unfilled tail of the ciphertext buffer, grown
    /// (doubling) when a partial record fills it. None: the peer needs more than
    /// [`TLS_RECV_BYTES_MAX`] buffered, which no honest peer does.
    pub fn recv_buf(&mut self) -> Option<&mut [u8]> {
        if self.used == self.incoming.len() {
            if self.incoming.len() >= TLS_RECV_BYTES_MAX {
                return None;
            }
            let grown = (self.incoming.len() * 2).min(TLS_RECV_BYTES_MAX);
            self.incoming.resize(grown, 0);
        }
        Some(&mut self.incoming[self.used..])
    }

    /// Records that a receive wrote `n` bytes into [`TlsConn::recv_buf`].
    pub fn received(&mut self, n: usize) {
        assert!(
            self.used + n <= self.incoming.len(),
            "recv wrote past the TLS buffer"
        );
        self.used += n;
    }

    /// Has the handshake finished (application data may flow)?
    pub fn established(&self) -> bool {
        self.out.established
    }

    /// Did the peer send close_notify (no more data will come)?
    pub fn peer_closed(&self) -> bool {
        self.out.peer_closed
    }

    /// Is part of a record waiting for the rest?
    pub fn has_partial(&self) -> bool {
        self.used > 0
    }

    /// Ciphertext bytes queued for the peer (for backpressure).
    pub fn wire_bytes(&self) -> usize {
        self.out.wire.len()
    }

    /// Queues `bytes` to be encrypted ahead of any answer at the next [`TlsConn::pump`], even
    /// while the connection's answers are held back (a host link's cluster-key handshake runs
    /// inside TLS this way).
    pub fn send_urgent(&mut self, bytes: &[u8]) {
        self.out.urgent.extend_from_slice(bytes);
    }

    /// Is plaintext waiting in [`TlsConn::send_urgent`]'s queue?
    pub fn has_urgent(&self) -> bool {
        !self.out.urgent.is_empty()
    }

    /// Moves the queued ciphertext into `out` (empty: a cleared send batch's bytes), leaving
    /// `out`'s old allocation here for reuse. No copy.
    pub fn take_wire(&mut self, out: &mut Vec<u8>) {
        debug_assert!(out.is_empty());
        std::mem::swap(out, &mut self.out.wire);
    }

    /// Runs the state machine as far as it goes: decrypts every whole record received into
    /// `plain`, answers the handshake, and once the handshake is done encrypts the urgent
    /// queue and then everything in `app_out` (which is then empty) into the ciphertext
    /// queue. `app_out` None (answers held back) or a handshake not done leave answers queued.
    pub fn pump(
        &mut self,
        plain: &mut AlignedBuf,
        mut app_out: Option<&mut SendBatch>,
    ) -> Result<(), TlsError> {
        if !self.first_checked && self.used > 0 {
            // Either side's first record is a handshake one (content type 22): ClientHello,
            // ServerHello.
            if self.incoming[0] != 0x16 {
                return Err(TlsError::NotTls);
            }
            self.first_checked = true;
        }
        // Records rustls is done with are dropped from the front by moving `start` past them
        // (what rustls asks before it is called again); the partial record left moves to the
        // buffer's front once at the end: one copy per pump, not one per record.
        let mut start = 0;
        let result = loop {
            match self.pump_once(start, plain, app_out.as_deref_mut()) {
                Ok((discard, stop)) => {
                    start += discard;
                    if stop {
                        break Ok(());
                    }
                }
                Err(e) => break Err(e),
            }
        };
        if start > 0 {
            self.incoming.copy_within(start..self.used, 0);
            self.used -= start;
        }
        result
    }

    /// One step of the state machine over the ciphertext from `start`: the bytes it used up
    /// and whether to stop.
    fn pump_once(
        &mut self,
        start: usize,
        plain: &mut AlignedBuf,
        app_out: Option<&mut SendBatch>,
    ) -> Result<(usize, bool), TlsError> {
        let incoming = &mut self.incoming[start..self.used];
        match &mut self.side {
            Side::Server(conn) => {
                let UnbufferedStatus { discard, state, .. } = conn.process_tls_records(incoming);
                match state {
                    Ok(ConnectionState::ReadEarlyData(mut r)) => {
                        // Early data is off (max_early_data_size 0); read it as ordinary data
                        // should a configuration turn it on.
                        let mut discard = discard;
                        while let Some(rec) = r.next_record() {
                            let rec = rec?;
                            discard += rec.discard;
                            append(plain, rec.payload);
                        }
                        Ok((discard, false))
                    }
                    state => step(state, discard, plain, app_out, &mut self.out),
                }
            }
            Side::Client(conn) => {
                let UnbufferedStatus { discard, state, .. } = conn.process_tls_records(incoming);
                step(state, discard, plain, app_out, &mut self.out)
            }
        }
    }
}

/// Handles one state of either side's state machine; returns the ciphertext bytes it used
/// up and whether to stop (waiting for the peer, or all our data is encrypted).
fn step<Data>(
    state: Result<ConnectionState<'_, '_, Data>, rustls::Error>,
    mut discard: usize,
    plain: &mut AlignedBuf,
    app_out: Option<&mut SendBatch>,
    out: &mut Out,
) -> Result<(usize, bool), TlsError> {
    let mut stop = false;
    match state? {
        ConnectionState::ReadTraffic(mut r) => {
            while let Some(rec) = r.next_record() {
                let rec = rec?;
                discard += rec.discard;
                append(plain, rec.payload);
            }
        }
        ConnectionState::EncodeTlsData(mut e) => {
            write_out(&mut out.wire, 1024, |buf| match e.encode(buf) {
                Ok(n) => Ok(n),
                Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
                    Err(Some(required_size))
                }
                Err(EncodeError::AlreadyEncoded) => Err(None),
            })
            .map_err(|()| TlsError::Encrypt("handshake record encoding failed".into()))?;
        }
        ConnectionState::TransmitTlsData(t) => {
            // The records are in `wire`, which the next flush sends, in order.
            t.done();
        }
        ConnectionState::BlockedHandshake => stop = true,
        ConnectionState::WriteTraffic(mut w) => {
            out.established = true;
            let Out {
                wire,
                scratch,
                urgent,
                ..
            } = out;
            let mut failed = false;
            let mut seal = |bytes: &[u8]| {
                let size = bytes.len() + RECORD_OVERHEAD_BYTES;
                let r = write_out(wire, size, |buf| match w.encrypt(bytes, buf) {
                    Ok(n) => Ok(n),
                    Err(EncryptError::InsufficientSize(InsufficientSizeError {
                        required_size,
                    })) => Err(Some(required_size)),
                    Err(EncryptError::EncryptExhausted) => Err(None),
                });
                failed |= r.is_err();
            };
            // Gather small segments (heads, short values) into full records; a large value
            // goes record by record straight from its buffer.
            let mut gather = |mut chunk: &[u8]| {
                while !chunk.is_empty() {
                    if scratch.is_empty() && chunk.len() >= RECORD_PLAIN_BYTES {
                        seal(&chunk[..RECORD_PLAIN_BYTES]);
                        chunk = &chunk[RECORD_PLAIN_BYTES..];
                        continue;
                    }
                    let take = (RECORD_PLAIN_BYTES - scratch.len()).min(chunk.len());
                    scratch.extend_from_slice(&chunk[..take]);
                    chunk = &chunk[take..];
                    if scratch.len() == RECORD_PLAIN_BYTES {
                        seal(scratch.as_slice());
                        scratch.clear();
                    }
                }
            };
            if !urgent.is_empty() {
                gather(urgent.as_slice());
                urgent.clear();
            }
            if let Some(app_out) = app_out {
                app_out.for_each_chunk(&mut gather);
                app_out.clear();
            }
            if !scratch.is_empty() {
                seal(scratch.as_slice());
                scratch.clear();
            }
            if failed {
                return Err(TlsError::Encrypt(
                    "the connection's keys are exhausted".into(),
                ));
            }
            stop = true;
        }
        ConnectionState::PeerClosed => out.peer_closed = true,
        ConnectionState::Closed => {
            out.peer_closed = true;
            stop = true;
        }
        _ => stop = true,
    }
    Ok((discard, stop))
}

/// Appends decrypted bytes to the frame buffer, growing it by what arrived.
fn append(plain: &mut AlignedBuf, bytes: &[u8]) {
    let len = plain.len();
    plain.reserve_total(len + bytes.len());
    plain.spare_mut()[..bytes.len()].copy_from_slice(bytes);
    plain.advance(bytes.len());
}

/// Lets `f` write at the end of `wire` into `guess` bytes (more when it asks: `Err(Some(n))`).
fn write_out(
    wire: &mut Vec<u8>,
    guess: usize,
    mut f: impl FnMut(&mut [u8]) -> Result<usize, Option<usize>>,
) -> Result<(), ()> {
    let start = wire.len();
    wire.resize(start + guess, 0);
    let n = match f(&mut wire[start..]) {
        Ok(n) => n,
        Err(Some(required)) => {
            wire.resize(start + required, 0);
            match f(&mut wire[start..]) {
                Ok(n) => n,
                Err(_) => {
                    wire.truncate(start);
                    return Err(());
                }
            }
        }
        Err(None) => {
            wire.truncate(start);
            return Err(());
        }
    };
    wire.truncate(start + n);
    Ok(())
}
