//! TLS for loadgen's connections (`--tls`, `--cacert FILE`): rustls's buffered client, fed
//! from and drained into the event loop's own buffers, so the ring still does every receive
//! and send (one of each per connection per loop iteration, as in plaintext).
//!
//! Costs on loadgen's side, per byte: one copy into rustls (plaintext), the cipher, and one
//! copy out of it (decrypted replies into the receive buffer). They show in loadgen's own
//! CPU use, which the report prints; the server's CPU per request is what `perf/` compares.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection};
use socket2::Socket;

use crate::conn::RecvBuf;

/// Bytes of ciphertext one receive takes: four full records and their overhead.
pub const CIPHER_RECV_BYTES: usize = 4 * (16 * 1024 + 256);

/// A client configuration trusting only the CA certificates in `ca_file` (PEM), with the
/// ring provider (as the server and the client library).
pub fn client_config(ca_file: &Path) -> Result<Arc<ClientConfig>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(ca_file)
        .map_err(|e| format!("--cacert {}: {e}", ca_file.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("--cacert {} is not PEM: {e}", ca_file.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "--cacert {} holds no certificate (expected PEM '-----BEGIN CERTIFICATE-----')",
            ca_file.display()
        ));
    }
    let mut roots = rustls::RootCertStore::empty();
    for c in certs {
        roots
            .add(c)
            .map_err(|e| format!("--cacert {}: {e}", ca_file.display()))?;
    }
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(Arc::new(config))
}

/// One connection's TLS session and the buffer its ciphertext is received into.
pub struct Tls {
    pub session: ClientConnection,
    /// Ciphertext receives land here (fixed size; the ring holds it while a receive is armed).
    pub cipher_in: Vec<u8>,
}

impl Tls {
    /// Runs the TLS handshake on the blocking socket `s`, within `timeout`. The server's
    /// certificate must chain to the CA and name `addr`'s IP address.
    pub fn handshake(
        s: &mut Socket,
        config: Arc<ClientConfig>,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<Tls, String> {
        let name = ServerName::IpAddress(addr.ip().into());
        let mut session = ClientConnection::new(config, name).map_err(|e| e.to_string())?;
        // Requests of a whole pipeline go in at once: no limit on what waits to be sent.
        session.set_buffer_limit(None);
        let deadline = Instant::now() + timeout;
        while session.is_handshaking() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("no TLS handshake within {timeout:?}"));
            }
            s.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
            session.complete_io(s).map_err(|e| {
                format!("TLS handshake: {e} (is this a TLS port, and does --cacert sign its certificate for {}?)", addr.ip())
            })?;
        }
        Ok(Tls {
            session,
            cipher_in: vec![0; CIPHER_RECV_BYTES],
        })
    }

    /// Encrypts `plain` (then empty) and any record rustls wants sent into `out`.
    pub fn seal(&mut self, plain: &mut Vec<u8>, out: &mut Vec<u8>) -> io::Result<()> {
        if !plain.is_empty() {
            self.session.writer().write_all(plain)?;
            plain.clear();
        }
        while self.session.wants_write() {
            self.session.write_tls(out)?;
        }
        Ok(())
    }

    /// Decrypts `n` bytes received into `cipher_in`, appending the plaintext to `recv`
    /// (grown as needed). Err: a TLS error, or a reply larger than the buffer may grow.
    pub fn open(&mut self, n: usize, recv: &mut RecvBuf) -> Result<(), String> {
        let mut rest = &self.cipher_in[..n];
        while !rest.is_empty() {
            self.session
                .read_tls(&mut rest)
                .map_err(|e| format!("TLS: {e}"))?;
            self.session
                .process_new_packets()
                .map_err(|e| format!("TLS: {e}"))?;
            loop {
                if recv.spare().is_empty() {
                    recv.compact();
                    if recv.spare().is_empty() && !recv.grow() {
                        return Err(format!(
                            "a reply larger than {} bytes",
                            crate::conn::RECV_BYTES_MAX
                        ));
                    }
                }
                match self.session.reader().read(recv.spare()) {
                    Ok(0) => break,
                    Ok(k) => recv.filled(k),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(format!("TLS: {e}")),
                }
            }
        }
        Ok(())
    }
}

/// The bytes of a blocking connection, through TLS when it has a session (set-up only).
pub struct Wire<'a> {
    pub sock: &'a mut Socket,
    pub tls: Option<&'a mut ClientConnection>,
}

impl Read for Wire<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.tls.as_deref_mut() {
            Some(t) => rustls::Stream::new(t, self.sock).read(buf),
            None => self.sock.read(buf),
        }
    }
}

impl Write for Wire<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.tls.as_deref_mut() {
            Some(t) => rustls::Stream::new(t, self.sock).write(buf),
            None => self.sock.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.tls.as_deref_mut() {
            Some(t) => rustls::Stream::new(t, self.sock).flush(),
            None => self.sock.flush(),
        }
    }
}
