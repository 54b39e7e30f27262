//! Mutual TLS between hosts (`tls_cluster 1`): the configurations a host link uses.
//!
//! Every host holds a certificate signed by the store's CA (`tls_ca_file`) and presents it in
//! both directions: the host that dials `int_port` is a TLS client offering its certificate,
//! the host that accepts asks for it and verifies it against the CA
//! ([`WebPkiClientVerifier`]); the dialling host verifies the acceptor's certificate against
//! the same CA and the address it dialled (an `IP:` subjectAltName). A peer without a
//! certificate of the store's CA is refused in the handshake, before any frame is read.
//!
//! The cluster-key handshake (`auth::peer`) still runs, inside TLS, when a key is set: it
//! binds the connection to a host id, which a certificate does not name.

use std::path::Path;
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ServerConfig};

use super::tls::{load_certs, load_key, load_roots, provider};

/// How to fix a host link refused in the TLS handshake (said in the log).
pub const HOWTO: &str = "Every host of the store needs tls_cluster 1, the same tls_ca_file, and a tls_cert_file signed by that CA whose subjectAltName lists the host's address (IP:...); see docs/security.md";

/// Both ends of a host link's TLS, built from the same certificate, key and CA.
#[derive(Clone)]
pub struct ClusterTls {
    /// For connections accepted on `int_port`: asks for and verifies the peer's certificate.
    pub server: Arc<ServerConfig>,
    /// For our links: presents our certificate, verifies the peer's.
    pub client: Arc<ClientConfig>,
}

impl ClusterTls {
    /// Reads the host's certificate chain, its key and the store CA (all PEM).
    pub fn load(cert_file: &Path, key_file: &Path, ca_file: &Path) -> Result<ClusterTls, String> {
        if ca_file.as_os_str().is_empty() {
            return Err(
                "tls_cluster is 1 but tls_ca_file is not set: name the store CA's certificate (PEM) that signs every host's tls_cert_file"
                    .into(),
            );
        }
        let roots = Arc::new(load_roots(ca_file)?);
        let certs = load_certs(cert_file)?;
        let key = load_key(key_file)?;
        let unusable = |e: rustls::Error| {
            format!(
                "tls_cert_file {} and tls_key_file {} do not make a usable certificate: {e}",
                cert_file.display(),
                key_file.display()
            )
        };
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(|e| format!("tls_ca_file {}: {e}", ca_file.display()))?;
        let server = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs.clone(), key.clone_key())
            .map_err(unusable)?;
        let client = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)
            .map_err(unusable)?;
        Ok(ClusterTls {
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }
}
