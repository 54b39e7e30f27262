//! The admin protocol on `mgt_port` (TCP): what `stategrid query/join/leave/set` send, and
//! what hosts ask each other to answer a `query`.
//!
//! One JSON object per line each way. A request is `{"cmd": NAME, ...}`; an answer is
//! `{"ok": true, ...}` or `{"ok": false, "error": "what was wrong and how to fix it"}`.
//!
//! | request | answer (besides `"ok": true`) |
//! |---|---|
//! | `{"cmd":"query"}` | [`QueryReply`]: the store as this host sees it, with every host's own counters |
//! | `{"cmd":"local"}` | [`LocalReply`]: this host's counters only (what `query` gathers) |
//! | `{"cmd":"join"}` | `{"state": "joining" \| "member"}` |
//! | `{"cmd":"leave","wait":B,"timeout_ms":N}` | `{"partitions_left": N, "done": B}` |
//! | `{"cmd":"set","name":S,"value":S}` | `{"name": S, "value": S}` once committed |
//! | `{"cmd":"set_local","name":S,"value":S}` | `{}` (a `set` forwarded to every host; the leader proposes it) |
//!
//! Host ids are 16-digit hex strings (JSON numbers would lose bits in many tools).
//!
//! Credentials: when the host has client users (`requirepass`, `users_file`), `join`,
//! `leave`, `set` and `set_local` need a user with role admin, given in the same line as
//! `"user": S` (optional: `default`) and `"password": S`; otherwise the answer is
//! `{"ok": false, "error": "..."}` naming what is missing. `query` and `local` (read-only
//! status, which hosts ask each other for) need none. A host forwards the credentials of a
//! `set` to the other hosts in its `set_local`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::map::{HostId, HostState};
use super::wire::ADMIN_LINE_BYTES_MAX;

/// Parameters `stategrid set NAME VALUE --all` may change while the store runs: ScaleOut's
/// store-wide object parameters. They go through the Raft log and every host applies the same
/// value, hosts that join later included: `max_replicas` is read by the planner; the others
/// reach every shard's store (`DataCmd::SetParam`). The rest are per host (addresses, ports,
/// `store_weight`, discovery) or need a restart: set them in each host's params file.
pub const SETTABLE_PARAMS: &[&str] = &[
    "max_replicas",
    "lock_timeout",
    "max_memory",
    "lru_threshold",
];

/// An admin request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Query,
    Local,
    Join,
    Leave {
        #[serde(default)]
        wait: bool,
        #[serde(default = "leave_timeout_default_ms")]
        timeout_ms: u64,
    },
    Set {
        name: String,
        value: String,
    },
    SetLocal {
        name: String,
        value: String,
    },
}

/// Credentials sent with an admin request (fields of the same JSON object).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminAuth {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

impl std::fmt::Debug for AdminAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminAuth")
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<secret>"))
            .finish()
    }
}

impl Request {
    /// Does this request change the store (and so need the admin role)?
    pub fn needs_admin(&self) -> bool {
        !matches!(self, Request::Query | Request::Local)
    }
}

/// Checks an admin request's credentials against the host's users; Err says what to fix.
pub fn authorize(
    users: Option<&crate::auth::users::Users>,
    req: &Request,
    auth: &AdminAuth,
) -> Result<(), String> {
    let Some(users) = users else {
        return Ok(());
    };
    if !req.needs_admin() {
        return Ok(());
    }
    let Some(password) = &auth.password else {
        return Err("this host has client users (requirepass or users_file): join, leave and set need a user with role admin; give the CLI `--auth-file FILE` or STATEGRID_AUTH=user:password".into());
    };
    match users.verify(auth.user.as_deref().map(str::as_bytes), password.as_bytes()) {
        Ok(crate::auth::users::Role::Admin) => Ok(()),
        Ok(role) => Err(format!(
            "user '{}' has role {}; join, leave and set need role admin",
            auth.user.as_deref().unwrap_or("default"),
            role.name()
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// How long `leave --wait` waits by default for the host's partitions to move away.
pub const LEAVE_TIMEOUT_DEFAULT_MS: u64 = 120_000;
/// Longest `leave --wait` a request may ask for.
pub const LEAVE_TIMEOUT_MAX_MS: u64 = 3_600_000;

fn leave_timeout_default_ms() -> u64 {
    LEAVE_TIMEOUT_DEFAULT_MS
}

/// One host in a [`QueryReply`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostReport {
    pub id: String,
    /// `ip:mgt_port/svr_port/int_port`.
    pub addr: String,
    /// joining, active, leaving or failed.
    pub state: String,
    pub primaries: usize,
    pub replicas: usize,
    /// Copies it is still receiving (migration).
    pub pending: usize,
    /// Whether it answered the query's counter request (objects and memory are null if not).
    pub answered: bool,
    pub objects: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub leader: bool,
}

/// The answer to `query`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryReply {
    /// The answering host's id.
    pub me: String,
    /// Whether the answering host is a member of a store yet.
    pub member: bool,
    /// Epoch of the map installed on the answering host (0 = none yet).
    pub epoch: u64,
    /// The Raft leader's id, if a host that answered says it leads.
    pub leader: Option<String>,
    pub hosts: Vec<HostReport>,
}

/// The answer to `local`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalReply {
    pub id: String,
    pub member: bool,
    pub epoch: u64,
    pub leader: bool,
    pub objects: u64,
    pub memory_bytes: u64,
}

pub fn id_text(h: HostId) -> String {
    format!("{:016x}", h.0)
}

pub fn state_text(s: HostState) -> &'static str {
    match s {
        HostState::Joining => "joining",
        HostState::Active => "active",
        HostState::Leaving => "leaving",
        HostState::Failed => "failed",
    }
}

/// An answer line: `value`'s fields plus `"ok": true`.
pub fn ok_line(value: impl Serialize) -> String {
    let mut v = serde_json::to_value(value).expect("answer encodes");
    if !v.is_object() {
        v = serde_json::json!({});
    }
    v["ok"] = true.into();
    let mut s = v.to_string();
    s.push('\n');
    s
}

pub fn error_line(msg: impl Into<String>) -> String {
    let mut s = serde_json::json!({"ok": false, "error": msg.into()}).to_string();
    s.push('\n');
    s
}

/// Why an admin call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{addr} did not answer: {source}")]
    Io {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{addr} answered something that is not an admin answer: {text}")]
    Protocol { addr: SocketAddr, text: String },
    /// The host answered `"ok": false`.
    #[error("{0}")]
    Refused(String),
}

/// Sends one request to `addr` and waits up to `timeout` for its answer (a blocking call,
/// for the CLI).
///
/// With `tls` (a client configuration and the name the host's certificate must carry), the
/// call goes over TLS, to the host's `secure_mgt_port`.
pub fn call(
    addr: SocketAddr,
    req: &Request,
    timeout: Duration,
    tls: Option<(std::sync::Arc<rustls::ClientConfig>, String)>,
) -> Result<serde_json::Value, CallError> {
    call_as(addr, req, &AdminAuth::default(), timeout, tls)
}

/// As [`call`], with credentials in the request line.
pub fn call_as(
    addr: SocketAddr,
    req: &Request,
    auth: &AdminAuth,
    timeout: Duration,
    tls: Option<(std::sync::Arc<rustls::ClientConfig>, String)>,
) -> Result<serde_json::Value, CallError> {
    let s = TcpStream::connect_timeout(&addr, timeout.min(Duration::from_secs(5)))
        .map_err(|source| CallError::Connect { addr, source })?;
    let io = |source| CallError::Io { addr, source };
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    s.set_write_timeout(Some(timeout)).map_err(io)?;
    match tls {
        None => call_on(s, addr, req, auth),
        Some((config, name)) => {
            let server_name =
                rustls::pki_types::ServerName::try_from(name.clone()).map_err(|e| {
                    CallError::Connect {
                        addr,
                        source: std::io::Error::new(
                            std::io::ErrorKind::InvalidInput,
                            format!("TLS server name '{name}': {e}"),
                        ),
                    }
                })?;
            let conn = rustls::ClientConnection::new(config, server_name).map_err(|e| {
                CallError::Connect {
                    addr,
                    source: std::io::Error::other(format!("TLS: {e}")),
                }
            })?;
            call_on(rustls::StreamOwned::new(conn, s), addr, req, auth)
        }
    }
}

/// One request and its answer line on a connected stream (plain or TLS).
fn call_on<S: Read + Write>(
    mut s: S,
    addr: SocketAddr,
    req: &Request,
    auth: &AdminAuth,
) -> Result<serde_json::Value, CallError> {
    let io = |source| CallError::Io { addr, source };
    let mut line = request_line(req, auth);
    line.push('\n');
    s.write_all(line.as_bytes()).map_err(io)?;
    let mut answer = String::new();
    BufReader::new(s.take(ADMIN_LINE_BYTES_MAX as u64))
        .read_line(&mut answer)
        .map_err(io)?;
    let v: serde_json::Value =
        serde_json::from_str(answer.trim()).map_err(|_| CallError::Protocol {
            addr,
            text: answer.chars().take(200).collect(),
        })?;
    match v.get("ok").and_then(|o| o.as_bool()) {
        Some(true) => Ok(v),
        Some(false) => Err(CallError::Refused(
            v.get("error")
                .and_then(|e| e.as_str())
                .unwrap_or("refused without a reason")
                .to_owned(),
        )),
        None => Err(CallError::Protocol {
            addr,
            text: answer.chars().take(200).collect(),
        }),
    }
}

/// A request and its credentials as one JSON object (no newline).
pub fn request_line(req: &Request, auth: &AdminAuth) -> String {
    let mut v = serde_json::to_value(req).expect("request encodes");
    if let (Some(o), Ok(serde_json::Value::Object(a))) =
        (v.as_object_mut(), serde_json::to_value(auth))
    {
        o.extend(a);
    }
    v.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_the_documented_shapes() {
        let r: Request = serde_json::from_str(r#"{"cmd":"leave","wait":true}"#).unwrap();
        assert_eq!(
            r,
            Request::Leave {
                wait: true,
                timeout_ms: LEAVE_TIMEOUT_DEFAULT_MS
            }
        );
        let r: Request =
            serde_json::from_str(r#"{"cmd":"set","name":"max_replicas","value":"2"}"#).unwrap();
        assert!(matches!(r, Request::Set { .. }));
        assert_eq!(
            serde_json::to_string(&Request::Query).unwrap(),
            r#"{"cmd":"query"}"#
        );
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"reboot"}"#).is_err());
        // Credentials ride in the same object; the request parses as before.
        let auth = AdminAuth {
            user: Some("ops".into()),
            password: Some("pw".into()),
        };
        let line = request_line(&Request::Join, &auth);
        assert_eq!(
            serde_json::from_str::<Request>(&line).unwrap(),
            Request::Join
        );
        assert_eq!(serde_json::from_str::<AdminAuth>(&line).unwrap(), auth);
        assert!(!format!("{auth:?}").contains("pw"));
        let line = ok_line(serde_json::json!({"x": 1}));
        assert_eq!(line, "{\"ok\":true,\"x\":1}\n");
        assert!(error_line("nope").contains("\"ok\":false"));
    }
}
