//! Client settings. Every limit is named, with its unit last.

use crate::error::{Error, Result};

/// The server's client port when an address names none (ScaleOut's `svr_port`).
pub const DEFAULT_PORT: u16 = 2721;

/// How a [`crate::Client`] connects, pipelines and gives up.
///
/// ```
/// use stategrid_client::ClientConfig;
/// let config = ClientConfig {
///     connections: 4,
///     request_timeout_ms: 2_000,
///     ..ClientConfig::default()
/// };
/// assert_eq!(config.inflight_per_conn_max, 128);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Connections in the pool, used round-robin (ScaleOut's `max_svr_conn`). At least 1.
    pub connections: usize,
    /// Requests in flight on one connection before callers wait. At least 1. Keep it at or
    /// under the server's `inflight_per_conn_max`, or the server answers `TooManyInFlight`.
    pub inflight_per_conn_max: usize,
    /// Time for one request from call to answer, reconnecting included (ScaleOut's
    /// `max_access_time`). At least 1.
    pub request_timeout_ms: u64,
    /// Time to open a connection and finish the `Hello` handshake. At least 1.
    pub connect_timeout_ms: u64,
    /// The largest response frame accepted. A larger frame header means the stream cannot be
    /// trusted, and the connection closes. Raise it for values over a few hundred MiB.
    pub frame_bytes_max: usize,
    /// Initial size of each connection's receive buffer; it grows for larger frames and
    /// shrinks back once they are consumed.
    pub recv_buffer_bytes: usize,
    /// Sent to the server in `Hello`, for its logs.
    pub client_name: String,
    /// How long sent bytes may go unacknowledged before a connection is declared dead
    /// (`TCP_USER_TIMEOUT`). A host that vanished from the network (a cable cut, a container
    /// disconnected) sends no reset: without this a request to it would wait all of
    /// `request_timeout_ms` instead of failing over. At least 1.
    pub dead_peer_timeout_ms: u64,
    /// Send each keyed request on a connection served by the shard that owns its key, so no
    /// server core passes it to another (the pool then holds `connections` connections per
    /// shard of the host, rounded up: at least one per shard, opened on first use). Off: the
    /// pool's connections land on whichever shard the kernel picks, and most requests take a
    /// hop between shards on the server.
    pub shard_aware: bool,
    /// Speak TLS (to a server's `secure_svr_port`). None: plaintext.
    pub tls: Option<TlsOptions>,
    /// Who the client is, for a server with client users (`requirepass`, `users_file`): sent
    /// in an `Auth` request right after `Hello` on every connection the pool opens. None:
    /// send nothing (a server with users then answers `AuthRequired`).
    pub credentials: Option<Credentials>,
}

/// How a client checks the server's certificate.
///
/// ```no_run
/// use stategrid_client::{ClientConfig, TlsOptions};
/// let config = ClientConfig {
///     tls: Some(TlsOptions::with_ca_file("/etc/stategrid/ca.pem")),
///     ..ClientConfig::default()
/// };
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsOptions {
    /// PEM file of the CA certificates that sign the servers' certificates.
    pub ca_file: std::path::PathBuf,
    /// The name the server's certificate must carry; None: the host part of the address
    /// connected to (a DNS name or an IP address).
    pub server_name: Option<String>,
}

impl TlsOptions {
    pub fn with_ca_file(path: impl Into<std::path::PathBuf>) -> TlsOptions {
        TlsOptions {
            ca_file: path.into(),
            server_name: None,
        }
    }
}

/// A user and password for [`ClientConfig::credentials`]. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// None: the user `default` (whose password is the server's `requirepass`).
    pub user: Option<String>,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"<secret>")
            .finish()
    }
}

impl Credentials {
    /// `user:password`, or a password alone for the user `default` (what `STATEGRID_AUTH`
    /// and the CLI's `--auth-file` hold). Line ends around it (a file's newline) are
    /// dropped; spaces are kept (they may belong to the password).
    pub fn parse(text: &str) -> Credentials {
        let t = text.trim_matches(|c| c == '\n' || c == '\r');
        match t.split_once(':') {
            Some((u, p)) => Credentials {
                user: Some(u.to_owned()),
                password: p.to_owned(),
            },
            None => Credentials {
                user: None,
                password: t.to_owned(),
            },
        }
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            connections: 2,
            inflight_per_conn_max: 128,
            request_timeout_ms: 5_000,
            connect_timeout_ms: 5_000,
            frame_bytes_max: 256 << 20,
            recv_buffer_bytes: 64 << 10,
            client_name: concat!("stategrid-client/", env!("CARGO_PKG_VERSION")).to_owned(),
            dead_peer_timeout_ms: 2_000,
            shard_aware: true,
            tls: None,
            credentials: None,
        }
    }
}

impl ClientConfig {
    /// Checks every field's range; the error names the field.
    pub fn validate(&self) -> Result<()> {
        let fail = |msg: &str| Err(Error::Config(msg.to_owned()));
        if self.connections == 0 {
            return fail("connections must be at least 1");
        }
        if self.inflight_per_conn_max == 0 {
            return fail("inflight_per_conn_max must be at least 1");
        }
        if self.request_timeout_ms == 0 {
            return fail("request_timeout_ms must be at least 1");
        }
        if self.connect_timeout_ms == 0 {
            return fail("connect_timeout_ms must be at least 1");
        }
        if self.frame_bytes_max < 4096 {
            return fail("frame_bytes_max must be at least 4096");
        }
        if self.recv_buffer_bytes < 64 {
            return fail("recv_buffer_bytes must be at least 64");
        }
        if self.dead_peer_timeout_ms == 0 {
            return fail("dead_peer_timeout_ms must be at least 1");
        }
        Ok(())
    }
}

/// Adds the default port to an address that names none (`"10.0.0.5"` → `"10.0.0.5:2721"`).
/// IPv6 is understood bracketed (`"[::1]"`, `"[::1]:2721"`) and bare (`"::1"`, which cannot
/// carry a port and gets brackets).
pub fn with_default_port(addr: &str) -> String {
    if let Some(rest) = addr.strip_prefix('[') {
        let has_port = rest
            .split_once(']')
            .is_some_and(|(_, tail)| tail.starts_with(':'));
        return if has_port {
            addr.to_owned()
        } else {
            format!("{addr}:{DEFAULT_PORT}")
        };
    }
    match addr.matches(':').count() {
        0 => format!("{addr}:{DEFAULT_PORT}"),
        1 => addr.to_owned(),
        _ => format!("[{addr}]:{DEFAULT_PORT}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_port_is_added_only_when_missing() {
        assert_eq!(with_default_port("127.0.0.1"), "127.0.0.1:2721");
        assert_eq!(with_default_port("127.0.0.1:9000"), "127.0.0.1:9000");
        assert_eq!(with_default_port("localhost"), "localhost:2721");
        assert_eq!(with_default_port("[::1]"), "[::1]:2721");
        assert_eq!(with_default_port("[::1]:80"), "[::1]:80");
        assert_eq!(with_default_port("::1"), "[::1]:2721");
    }

    #[test]
    fn credentials_parse_and_hide_the_password() {
        let c = Credentials::parse("app:pa:ss\n");
        assert_eq!(c.user.as_deref(), Some("app"));
        assert_eq!(c.password, "pa:ss");
        assert_eq!(Credentials::parse("only").user, None);
        assert!(!format!("{c:?}").contains("pa:ss"));
    }

    #[test]
    fn validate_names_the_field() {
        assert!(ClientConfig::default().validate().is_ok());
        let bad = ClientConfig {
            connections: 0,
            ..ClientConfig::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("connections")
        );
        let bad = ClientConfig {
            inflight_per_conn_max: 0,
            ..ClientConfig::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("inflight_per_conn_max")
        );
    }
}
