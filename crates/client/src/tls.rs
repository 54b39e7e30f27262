//! TLS to a server's `secure_svr_port` (rustls through tokio-rustls, ring provider).

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::config::TlsOptions;
use crate::error::{Error, Result};

/// The rustls configuration for `opts`: trusts the CA certificates in `opts.ca_file`.
pub(crate) fn client_config(opts: &TlsOptions) -> Result<Arc<rustls::ClientConfig>> {
    let bad = |what: String| Error::Config(what);
    let path = &opts.ca_file;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(format!("cannot read CA file {}: {e}", path.display())))?
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| bad(format!("CA file {} is not PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(bad(format!(
            "CA file {} holds no certificate (expected PEM '-----BEGIN CERTIFICATE-----')",
            path.display()
        )));
    }
    let mut roots = rustls::RootCertStore::empty();
    for c in certs {
        roots
            .add(c)
            .map_err(|e| bad(format!("CA file {}: {e}", path.display())))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| bad(format!("TLS setup: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The host part of `HOST:PORT` (brackets of an IPv6 address removed).
fn host_of(addr: &str) -> &str {
    let host = match addr.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => addr,
    };
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Runs the TLS handshake on a connected socket. The certificate must be signed by a CA in
/// `opts.ca_file` and name `opts.server_name` (or the host connected to).
pub(crate) async fn connect(
    stream: TcpStream,
    addr: &str,
    opts: &TlsOptions,
) -> Result<TlsStream<TcpStream>> {
    let config = client_config(opts)?;
    let name = opts
        .server_name
        .clone()
        .unwrap_or_else(|| host_of(addr).to_owned());
    let server_name = ServerName::try_from(name.clone())
        .map_err(|e| Error::Config(format!("TLS server name '{name}': {e}")))?;
    tokio_rustls::TlsConnector::from(config)
        .connect(server_name, stream)
        .await
        .map_err(|source| Error::Connect {
            addr: addr.to_owned(),
            source: std::io::Error::new(
                source.kind(),
                format!("TLS handshake failed: {source} (is this the server's secure_svr_port, and does tls CA file sign its certificate for '{name}'?)"),
            ),
        })
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn host_of_strips_port_and_brackets() {
        assert_eq!(host_of("127.0.0.1:2724"), "127.0.0.1");
        assert_eq!(host_of("[::1]:2724"), "::1");
        assert_eq!(host_of("db.example"), "db.example");
    }
}
