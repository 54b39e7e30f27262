//! Parameters.
//!
//! A params file in ScaleOut's format (`name value` per line, `#` comments), ScaleOut's names
//! where they apply, plus ours. Precedence: defaults < file < env `STATEGRID_<NAME>` < `--set`.
//! An unknown or invalid parameter stops start-up with its name, the bad value and what is
//! allowed. Every limit is a parameter with its unit in the name; ScaleOut's own names keep
//! their spelling and say their unit in the table below.
//!
//! The table [`PARAMS`] is the single source of truth: parsing, `stategrid show`, and the README
//! parameter table all come from it (`stategrid params` prints it as markdown).

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// One parameter's definition.
pub struct ParamSpec {
    pub name: &'static str,
    pub default: &'static str,
    /// What it does, its unit and its range.
    pub help: &'static str,
    /// Is it in effect in this build, or accepted for compatibility (multi-host, TLS) only?
    pub in_effect: bool,
    set: fn(&mut Config, &str) -> Result<(), String>,
    get: fn(&Config) -> String,
}

/// Where a value came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Default,
    File { path: PathBuf, line: usize },
    Env(String),
    Set,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::File { path, line } => write!(f, "{}:{}", path.display(), line),
            Source::Env(v) => write!(f, "environment variable {v}"),
            Source::Set => f.write_str("--set"),
        }
    }
}

/// A parameter that stops start-up.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("unknown parameter '{name}' (from {from}); `stategrid params` lists them all")]
    Unknown { name: String, from: Source },
    #[error("parameter {name} = '{value}' (from {from}) is invalid: {allowed}")]
    Invalid {
        name: String,
        value: String,
        from: Source,
        allowed: String,
    },
    #[error("cannot read params file {path}: {err}")]
    File { path: PathBuf, err: std::io::Error },
    #[error("{path}:{line}: expected 'name value', found '{text}'")]
    Syntax {
        path: PathBuf,
        line: usize,
        text: String,
    },
    #[error("{0}")]
    Inconsistent(String),
}

/// `STATEGRID_*` variables that are not parameters: the control program's addresses and
/// credentials, the log filter and the simulation's seed. A shell that sets them for the CLI
/// can still run `serve`.
const ENV_NOT_PARAMS: &[&str] = &[
    "STATEGRID_HOST",
    "STATEGRID_MGT",
    "STATEGRID_AUTH",
    "STATEGRID_LOG",
    "STATEGRID_SIM_SEED",
];

/// All parameters, typed. Field names follow the parameter names.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub net_interface: Ipv4Addr,
    pub svr_port: u16,
    pub mgt_port: u16,
    pub int_port: u16,
    pub secure_mgt_port: u16,
    pub secure_svr_port: u16,
    /// PEM certificate chain and private key for every TLS port; empty = no TLS.
    pub tls_cert_file: PathBuf,
    pub tls_key_file: PathBuf,
    /// PEM CA certificates of the store: host links verify each other against it.
    pub tls_ca_file: PathBuf,
    /// Host-to-host connections over mutual TLS under `tls_ca_file`: `int_port` links
    /// (`net::tls_cluster`) and `mgt_port` peers (`cluster::mgt_tls`).
    pub tls_cluster: bool,
    /// Serve `rest_port` and `mgt_http_port` over HTTPS.
    pub http_tls: bool,
    /// Bytes; 0 = unlimited.
    pub max_memory_bytes: u64,
    pub lru_threshold_pct: u8,
    pub lock_timeout_s: u32,
    pub max_replicas: u8,
    pub use_multicast: bool,
    pub mcast_ip: Ipv4Addr,
    pub store_weight: u32,
    pub auto_join: bool,
    pub hosts: String,
    /// The store's shared secret, inline (prefer `cluster_key_file`: never in `ps`).
    pub cluster_key: String,
    pub cluster_key_file: PathBuf,
    pub insecure_cluster: bool,
    /// A host the store declared failed rejoins in-process instead of exiting (`cluster::control`).
    pub rejoin_in_process: bool,
    /// The secret itself, read from `cluster_key_file` or `cluster_key` by [`Config::load`]
    /// (not a parameter).
    pub peer_key: Option<crate::auth::peer::ClusterKey>,
    /// Users and roles for clients (`users_file`), one line each.
    pub users_file: PathBuf,
    /// The user `default`'s password (role admin), as Redis's `requirepass`.
    pub requirepass: String,
    /// With no users configured, serve client ports to loopback clients only.
    pub protected_mode: bool,
    /// Slow password checks (argon2) a second, for the whole host.
    pub auth_checks_per_s_max: u32,
    /// The users read from `users_file` and `requirepass` by [`Config::load`] (not a
    /// parameter); None: no client credentials, every client is admin.
    pub users: Option<std::sync::Arc<crate::auth::users::Users>>,
    /// How long SWIM may take to declare a dead host down.
    pub failure_detection_ms: u64,
    /// How long a starting host looks for a store before the lowest id bootstraps one.
    pub discovery_wait_ms: u64,
    /// How long a write waits for a replica's acknowledgement (data plane).
    pub replication_timeout_ms: u64,
    /// How long a restarted sliding timeout (a read) may wait before the replicas learn of it.
    pub sliding_touch_replication_ms: u64,
    /// 0 = one per CPU this process may run on.
    pub shards: u32,
    pub log_dir: PathBuf,
    pub log_level: String,
    pub object_bytes_max: u64,
    pub key_bytes_max: u32,
    pub namespace_bytes_max: u32,
    pub frame_bytes_max: u64,
    pub unauth_frame_bytes_max: u64,
    pub conn_held_bytes_max: u64,
    pub mgt_connections_max: u32,
    pub mgt_frame_bytes_max: u64,
    pub connections_per_shard_max: u32,
    pub inflight_per_conn_max: u32,
    pub items_per_request_max: u32,
    /// Port where every connection speaks RESP; 0 = off (svr_port detects RESP anyway).
    pub resp_port: u16,
    /// Redis databases (`SELECT 0..N-1`), namespaces `redis-0`...
    pub resp_databases: u32,
    /// Items in one RESP command (`*N`).
    pub resp_multibulk_items_max: u32,
    /// Longest inline (telnet-style) RESP command line.
    pub resp_inline_bytes_max: u32,
    /// Fields one Redis hash may hold.
    pub hash_fields_max: u32,
    pub conn_out_bytes_max: u64,
    pub recv_buffer_bytes: u32,
    pub frame_timeout_ms: u64,
    pub sweep_interval_ms: u64,
    pub shutdown_timeout_ms: u64,
    pub leave_timeout_ms: u64,
    pub ring_entries: u32,
    pub io_memory_bytes: u64,
    /// The HTTP data API's port; 0 = off.
    pub rest_port: u16,
    pub http_connections_max: u32,
    pub http_header_bytes_max: u64,
    pub http_body_bytes_max: u64,
    pub http_read_timeout_ms: u64,
    /// Longest `Content-Type` the data API stores with an object (at most 255: the wire
    /// carries its length in one byte).
    pub content_type_bytes_max: u32,
    /// The management HTTP API's port; 0 = off.
    pub mgt_http_port: u16,
    pub mgt_http_interface: Ipv4Addr,
}

impl Default for Config {
    fn default() -> Self {
        let mut c = Config::zero();
        for p in PARAMS {
            (p.set)(&mut c, p.default).expect("defaults are valid");
        }
        c
    }
}

impl Config {
    /// One shard's store limits under this configuration: `max_memory` is split evenly
    /// over `shards`. The one place parameters become store limits (at start and when a
    /// store-wide parameter changes).
    pub fn store_limits(&self, shards: usize) -> crate::store::StoreLimits {
        assert!(shards > 0, "a host has at least one shard");
        crate::store::StoreLimits {
            object_bytes_max: self.object_bytes_max as u32,
            key_bytes_max: self.key_bytes_max,
            memory_bytes_max: self.max_memory_bytes / shards as u64,
            lru_threshold_pct: self.lru_threshold_pct as u32,
            lock_timeout_ms: self.lock_timeout_s as u64 * 1000,
        }
    }

    fn zero() -> Config {
        Config {
            net_interface: Ipv4Addr::LOCALHOST,
            svr_port: 0,
            mgt_port: 0,
            int_port: 0,
            secure_mgt_port: 0,
            secure_svr_port: 0,
            tls_cert_file: PathBuf::new(),
            tls_key_file: PathBuf::new(),
            tls_ca_file: PathBuf::new(),
            tls_cluster: false,
            http_tls: false,
            max_memory_bytes: 0,
            lru_threshold_pct: 0,
            lock_timeout_s: 0,
            max_replicas: 0,
            use_multicast: false,
            mcast_ip: Ipv4Addr::UNSPECIFIED,
            store_weight: 0,
            auto_join: false,
            hosts: String::new(),
            cluster_key: String::new(),
            cluster_key_file: PathBuf::new(),
            insecure_cluster: false,
            rejoin_in_process: true,
            peer_key: None,
            users_file: PathBuf::new(),
            requirepass: String::new(),
            protected_mode: false,
            auth_checks_per_s_max: 0,
            users: None,
            failure_detection_ms: 0,
            discovery_wait_ms: 0,
            replication_timeout_ms: 0,
            sliding_touch_replication_ms: 0,
            shards: 0,
            log_dir: PathBuf::new(),
            log_level: String::new(),
            object_bytes_max: 0,
            key_bytes_max: 0,
            namespace_bytes_max: 0,
            frame_bytes_max: 0,
            unauth_frame_bytes_max: 0,
            conn_held_bytes_max: 0,
            mgt_connections_max: 0,
            mgt_frame_bytes_max: 0,
            connections_per_shard_max: 0,
            inflight_per_conn_max: 0,
            items_per_request_max: 0,
            resp_port: 0,
            resp_databases: 0,
            resp_multibulk_items_max: 0,
            resp_inline_bytes_max: 0,
            hash_fields_max: 0,
            conn_out_bytes_max: 0,
            recv_buffer_bytes: 0,
            frame_timeout_ms: 0,
            sweep_interval_ms: 0,
            shutdown_timeout_ms: 0,
            leave_timeout_ms: 0,
            ring_entries: 0,
            io_memory_bytes: 0,
            rest_port: 0,
            http_connections_max: 0,
            http_header_bytes_max: 0,
            http_body_bytes_max: 0,
            http_read_timeout_ms: 0,
            content_type_bytes_max: 0,
            mgt_http_port: 0,
            mgt_http_interface: Ipv4Addr::LOCALHOST,
        }
    }

    /// Builds the configuration: defaults, then `file`, then `STATEGRID_*` from `env`, then `sets`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        sets: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        let mut c = Config::default();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|err| ConfigError::File {
                path: path.to_owned(),
                err,
            })?;
            c.apply_file_text(path, &text)?;
        }
        let mut env: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("STATEGRID_") && !ENV_NOT_PARAMS.contains(&k.as_str()))
            .collect();
        env.sort();
        for (k, v) in env {
            let name = k["STATEGRID_".len()..].to_ascii_lowercase();
            c.set(&name, &v, Source::Env(k.clone()))?;
        }
        for (k, v) in sets {
            c.set(k, v, Source::Set)?;
        }
        c.validate()?;
        c.peer_key =
            crate::auth::peer::ClusterKey::from_config(&c).map_err(ConfigError::Inconsistent)?;
        c.users = crate::auth::users::Users::from_config(
            &c.users_file,
            &c.requirepass,
            c.auth_checks_per_s_max,
        )
        .map_err(ConfigError::Inconsistent)?
        .map(std::sync::Arc::new);
        Ok(c)
    }

    /// Applies the text of a params file (`name value` lines, `#` comments), as
    /// [`Config::load`] does for `file`; `path` only names the file in errors. Public so the
    /// fuzz target `params` can drive the parser without touching the file system.
    pub fn apply_file_text(&mut self, path: &Path, text: &str) -> Result<(), ConfigError> {
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let (name, value) = match line.split_once(char::is_whitespace) {
                Some((n, v)) => (n.trim(), v.trim()),
                None => {
                    return Err(ConfigError::Syntax {
                        path: path.to_owned(),
                        line: i + 1,
                        text: raw.to_owned(),
                    });
                }
            };
            // ScaleOut files sometimes write `name = value`.
            let value = value.strip_prefix('=').map(str::trim).unwrap_or(value);
            let source = Source::File {
                path: path.to_owned(),
                line: i + 1,
            };
            self.set(name, value, source)?;
        }
        Ok(())
    }

    /// Sets one parameter by name.
    pub fn set(&mut self, name: &str, value: &str, source: Source) -> Result<(), ConfigError> {
        let spec = PARAMS
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| ConfigError::Unknown {
                name: name.to_owned(),
                from: source.clone(),
            })?;
        (spec.set)(self, value).map_err(|allowed| ConfigError::Invalid {
            name: name.to_owned(),
            value: value.to_owned(),
            from: source,
            allowed,
        })
    }

    /// Checks rules that involve more than one parameter.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let ports = [
            ("svr_port", self.svr_port),
            ("mgt_port", self.mgt_port),
            ("int_port", self.int_port),
            ("resp_port", self.resp_port),
            ("rest_port", self.rest_port),
            ("mgt_http_port", self.mgt_http_port),
            ("secure_svr_port", self.secure_svr_port),
            ("secure_mgt_port", self.secure_mgt_port),
        ];
        for (i, (a, pa)) in ports.iter().enumerate() {
            for (b, pb) in &ports[i + 1..] {
                if pa == pb && *pa != 0 {
                    return Err(ConfigError::Inconsistent(format!(
                        "{a} and {b} are both {pa}; give each its own port"
                    )));
                }
            }
        }
        let no_cert = self.tls_cert_file.as_os_str().is_empty();
        let tls_users = [
            ("secure_svr_port", self.secure_svr_port != 0),
            ("secure_mgt_port", self.secure_mgt_port != 0),
            ("http_tls", self.http_tls),
            ("tls_cluster", self.tls_cluster),
        ];
        for (name, on) in tls_users {
            if on && no_cert {
                return Err(ConfigError::Inconsistent(format!(
                    "{name} is set, but there is no certificate: set tls_cert_file and tls_key_file (PEM files; docs/security.md shows how to make them with openssl), or turn {name} off (0)"
                )));
            }
        }
        if self.tls_cluster && self.tls_ca_file.as_os_str().is_empty() {
            return Err(ConfigError::Inconsistent(
                "tls_cluster is 1 but tls_ca_file is not set: name the store CA's certificate (PEM) that signs every host's tls_cert_file (docs/security.md shows how to make them with openssl), or set tls_cluster 0".into(),
            ));
        }
        if !no_cert && self.tls_key_file.as_os_str().is_empty() {
            return Err(ConfigError::Inconsistent(
                "tls_cert_file is set but tls_key_file is not: name the certificate's private key (PEM)".into(),
            ));
        }
        let needed = self.object_bytes_max + 1024 * 1024;
        if self.frame_bytes_max < needed {
            return Err(ConfigError::Inconsistent(format!(
                "frame_bytes_max ({}) must be at least object_bytes_max + 1 MiB ({needed}) so the largest object fits in a frame",
                self.frame_bytes_max
            )));
        }
        if !self.net_interface.is_loopback()
            && self.cluster_key.is_empty()
            && self.cluster_key_file.as_os_str().is_empty()
            && !self.insecure_cluster
        {
            return Err(ConfigError::Inconsistent(format!(
                "net_interface {} is reachable from other machines, and no cluster key is set: anyone who reaches int_port or mgt_port could act as a host of this store. {}; or set insecure_cluster 1 on a network you trust completely",
                self.net_interface,
                crate::auth::peer::KEY_HOWTO
            )));
        }
        if self.max_memory_bytes != 0 && self.max_memory_bytes < self.object_bytes_max {
            return Err(ConfigError::Inconsistent(format!(
                "max_memory ({} bytes) is smaller than object_bytes_max ({} bytes); raise max_memory or lower object_bytes_max",
                self.max_memory_bytes, self.object_bytes_max
            )));
        }
        Ok(())
    }

    /// Every parameter with its current value, in table order.
    pub fn values(&self) -> Vec<(&'static str, String)> {
        PARAMS.iter().map(|p| (p.name, (p.get)(self))).collect()
    }
}

/// The parameter table as markdown (for the README and `stategrid params`).
pub fn params_markdown() -> String {
    let mut s = String::from("| parameter | default | meaning |\n|---|---|---|\n");
    for p in PARAMS {
        let note = if p.in_effect {
            ""
        } else {
            " *(accepted; takes effect with multi-host/TLS support)*"
        };
        let _ = writeln!(s, "| `{}` | `{}` | {}{} |", p.name, p.default, p.help, note);
    }
    s
}

fn parse_u64(v: &str, min: u64, max: u64) -> Result<u64, String> {
    let n: u64 = v
        .replace('_', "")
        .parse()
        .map_err(|_| format!("expected a whole number from {min} to {max}"))?;
    if n < min || n > max {
        return Err(format!("expected a whole number from {min} to {max}"));
    }
    Ok(n)
}

fn parse_bool(v: &str) -> Result<bool, String> {
    match v {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err("expected 1 or 0".into()),
    }
}

/// A byte size: a plain number is bytes; suffixes KB/MB/GB (powers of 1000) and
/// KiB/MiB/GiB (powers of 1024), K/M/G meaning KiB/MiB/GiB.
pub fn parse_bytes(v: &str) -> Result<u64, String> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| "expected a size such as 0, 1048576, 512MiB or 4GB".to_string())?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1000,
        "mb" => 1000 * 1000,
        "gb" => 1000 * 1000 * 1000,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        _ => return Err("unknown unit; use B, KB, MB, GB, KiB, MiB or GiB".into()),
    };
    n.checked_mul(mult)
        .ok_or_else(|| "size too large".to_string())
}

fn parse_ip(v: &str) -> Result<Ipv4Addr, String> {
    v.parse()
        .map_err(|_| "expected an IPv4 address such as 127.0.0.1".to_string())
}

macro_rules! param {
    ($name:literal, $default:literal, $in_effect:expr, $help:literal, |$c:ident, $v:ident| $set:expr, |$g:ident| $get:expr) => {
        ParamSpec {
            name: $name,
            default: $default,
            help: $help,
            in_effect: $in_effect,
            set: |$c: &mut Config, $v: &str| -> Result<(), String> {
                $set;
                Ok(())
            },
            get: |$g: &Config| -> String { $get },
        }
    };
}

/// What a secret parameter reads back as (`stategrid show`, `Stats`).
pub const REDACTED: &str = "<set>";

/// Every parameter: name, default, meaning. ScaleOut's names first.
pub static PARAMS: &[ParamSpec] = &[
    param!(
        "net_interface",
        "127.0.0.1",
        true,
        "IPv4 address this host binds and advertises (ScaleOut falls back to 127.0.0.1 too; set it to the NIC address for a multi-host store)",
        |c, v| c.net_interface = parse_ip(v)?,
        |c| c.net_interface.to_string()
    ),
    param!(
        "svr_port",
        "2721",
        true,
        "TCP port for clients (native protocol)",
        |c, v| c.svr_port = parse_u64(v, 1, 65535)? as u16,
        |c| c.svr_port.to_string()
    ),
    param!(
        "mgt_port",
        "2720",
        true,
        "TCP+UDP port for management, membership and discovery",
        |c, v| c.mgt_port = parse_u64(v, 1, 65535)? as u16,
        |c| c.mgt_port.to_string()
    ),
    param!(
        "int_port",
        "2722",
        true,
        "TCP port for host-to-host replication and migration",
        |c, v| c.int_port = parse_u64(v, 1, 65535)? as u16,
        |c| c.int_port.to_string()
    ),
    param!(
        "secure_mgt_port",
        "0",
        true,
        "TCP port for management over TLS (the CLI's `--tls`); 0 = off. ScaleOut uses 2723. Needs tls_cert_file and tls_key_file",
        |c, v| c.secure_mgt_port = parse_u64(v, 0, 65535)? as u16,
        |c| c.secure_mgt_port.to_string()
    ),
    param!(
        "secure_svr_port",
        "0",
        true,
        "TCP port for clients over TLS (native protocol and RESP, told apart as on svr_port); 0 = off. ScaleOut uses 2724. Needs tls_cert_file and tls_key_file",
        |c, v| c.secure_svr_port = parse_u64(v, 0, 65535)? as u16,
        |c| c.secure_svr_port.to_string()
    ),
    param!(
        "tls_cert_file",
        "",
        true,
        "PEM certificate chain (this host's certificate first) for every TLS port; read at start and again on SIGHUP",
        |c, v| c.tls_cert_file = PathBuf::from(v),
        |c| c.tls_cert_file.display().to_string()
    ),
    param!(
        "tls_key_file",
        "",
        true,
        "PEM private key (PKCS#8, PKCS#1 or SEC1) of tls_cert_file",
        |c, v| c.tls_key_file = PathBuf::from(v),
        |c| c.tls_key_file.display().to_string()
    ),
    param!(
        "tls_ca_file",
        "",
        true,
        "PEM CA certificates that sign the store's host certificates, for mutual TLS between hosts (tls_cluster)",
        |c, v| c.tls_ca_file = PathBuf::from(v),
        |c| c.tls_ca_file.display().to_string()
    ),
    param!(
        "tls_cluster",
        "0",
        true,
        "1: host-to-host connections (int_port links and mgt_port peers) over mutual TLS: each host presents tls_cert_file and verifies its peer's certificate against tls_ca_file. Every host of the store needs the same setting (1/0)",
        |c, v| c.tls_cluster = parse_bool(v)?,
        |c| (c.tls_cluster as u8).to_string()
    ),
    param!(
        "http_tls",
        "0",
        true,
        "1: serve rest_port and mgt_http_port over HTTPS with tls_cert_file (1/0)",
        |c, v| c.http_tls = parse_bool(v)?,
        |c| (c.http_tls as u8).to_string()
    ),
    param!(
        "max_memory",
        "0",
        true,
        "memory for objects on this host, split evenly across shards; 0 = unlimited. A size: plain bytes, or with KB/MB/GB/KiB/MiB/GiB",
        |c, v| c.max_memory_bytes = parse_bytes(v)?,
        |c| c.max_memory_bytes.to_string()
    ),
    param!(
        "lru_threshold",
        "90",
        true,
        "percent of max_memory above which evictable objects are evicted, least recently used first (1-100)",
        |c, v| c.lru_threshold_pct = parse_u64(v, 1, 100)? as u8,
        |c| c.lru_threshold_pct.to_string()
    ),
    param!(
        "lock_timeout",
        "90",
        true,
        "seconds after which an unreleased lock expires (1-86400)",
        |c, v| c.lock_timeout_s = parse_u64(v, 1, 86_400)? as u32,
        |c| c.lock_timeout_s.to_string()
    ),
    param!(
        "max_replicas",
        "1",
        true,
        "replicas of each object on other hosts (0-2)",
        |c, v| c.max_replicas = parse_u64(v, 0, 2)? as u8,
        |c| c.max_replicas.to_string()
    ),
    param!(
        "use_multicast",
        "1",
        true,
        "find other hosts by UDP multicast on mcast_ip:mgt_port (1/0)",
        |c, v| c.use_multicast = parse_bool(v)?,
        |c| (c.use_multicast as u8).to_string()
    ),
    param!(
        "mcast_ip",
        "224.0.0.17",
        true,
        "multicast group for discovery",
        |c, v| {
            let ip = parse_ip(v)?;
            if !ip.is_multicast() {
                return Err("expected a multicast group, 224.0.0.0 to 239.255.255.255".into());
            }
            c.mcast_ip = ip
        },
        |c| c.mcast_ip.to_string()
    ),
    param!(
        "store_weight",
        "100",
        true,
        "this host's share of objects relative to others (0 = holds none, up to 1000)",
        |c, v| c.store_weight = parse_u64(v, 0, 1000)? as u32,
        |c| c.store_weight.to_string()
    ),
    param!(
        "auto_join",
        "1",
        true,
        "join the store on start (1/0)",
        |c, v| c.auto_join = parse_bool(v)?,
        |c| (c.auto_join as u8).to_string()
    ),
    param!(
        "hosts",
        "",
        true,
        "static list of other hosts (ip:mgt_port or name:mgt_port, comma-separated; no port: this host's mgt_port; DNS names, e.g. compose services, are looked up again every 2 s) to find the store without multicast",
        |c, v| {
            crate::cluster::swim::parse_hosts(v, 1)?;
            c.hosts = v.to_owned()
        },
        |c| c.hosts.clone()
    ),
    param!(
        "cluster_key_file",
        "",
        true,
        "file holding the store's shared secret (at least 16 bytes; e.g. `head -c 32 /dev/urandom | base64 > cluster.key`): every host-to-host connection and datagram proves it holds the same key. Required when net_interface is not a loopback address (see insecure_cluster)",
        |c, v| c.cluster_key_file = PathBuf::from(v),
        |c| c.cluster_key_file.display().to_string()
    ),
    param!(
        "cluster_key",
        "",
        true,
        "the store's shared secret inline (at least 16 bytes); prefer cluster_key_file, which keeps it out of `ps` and out of params files. Shown as <set> when read back",
        |c, v| c.cluster_key = v.to_owned(),
        |c| if c.cluster_key.is_empty() {
            String::new()
        } else {
            REDACTED.to_owned()
        }
    ),
    param!(
        "insecure_cluster",
        "0",
        true,
        "1: let a host bound to a non-loopback address run without a cluster key (anyone who reaches int_port or mgt_port can then act as a host); only for networks you trust completely",
        |c, v| c.insecure_cluster = parse_bool(v)?,
        |c| (c.insecure_cluster as u8).to_string()
    ),
    param!(
        "rejoin_in_process",
        "1",
        true,
        "1: a host the store declared failed (after a pause or a network cut) rejoins in-process as a new, empty member, as ScaleOut's hosts do; 0: it exits with code 1 and its supervisor restarts it (1/0)",
        |c, v| c.rejoin_in_process = parse_bool(v)?,
        |c| (c.rejoin_in_process as u8).to_string()
    ),
    param!(
        "requirepass",
        "",
        true,
        "password of the client user `default` (role admin), as Redis's requirepass: native clients send Auth, Redis clients AUTH, HTTP clients Basic or Bearer. Empty: none. Shown as <set> when read back; prefer users_file (hashed) for more than one user",
        |c, v| c.requirepass = v.to_owned(),
        |c| if c.requirepass.is_empty() {
            String::new()
        } else {
            REDACTED.to_owned()
        }
    ),
    param!(
        "users_file",
        "",
        true,
        "file of client users, one `name role hash` per line (role read, read-write or admin; hash from `stategrid hash-password`); see docs/security.md",
        |c, v| c.users_file = PathBuf::from(v),
        |c| c.users_file.display().to_string()
    ),
    param!(
        "protected_mode",
        "1",
        true,
        "1: with no requirepass and no users_file, svr_port, resp_port and rest_port serve loopback clients only (others are told why and closed). 0: serve everyone without credentials (only on a network you trust completely)",
        |c, v| c.protected_mode = parse_bool(v)?,
        |c| (c.protected_mode as u8).to_string()
    ),
    param!(
        "auth_checks_per_s_max",
        "20",
        true,
        "slow (argon2) password checks this host makes per second, all clients together (1-10000): a check costs a shard about 20 ms of CPU, and only a (user, password) pair not yet verified needs one (a wrong one always does); beyond it Auth fails at once with a retry-later error",
        |c, v| c.auth_checks_per_s_max = parse_u64(v, 1, 10_000)? as u32,
        |c| c.auth_checks_per_s_max.to_string()
    ),
    param!(
        "failure_detection_ms",
        "1500",
        true,
        "a host that stops answering is declared down (and its partitions fail over) within this many milliseconds (300-60000)",
        |c, v| c.failure_detection_ms = parse_u64(v, 300, 60_000)?,
        |c| c.failure_detection_ms.to_string()
    ),
    param!(
        "discovery_wait_ms",
        "1000",
        true,
        "at start, how long to look for hosts already in a store before the host with the lowest id among those found creates one (0-60000)",
        |c, v| c.discovery_wait_ms = parse_u64(v, 0, 60_000)?,
        |c| c.discovery_wait_ms.to_string()
    ),
    param!(
        "replication_timeout_ms",
        "2000",
        true,
        "how long a write waits for a replica's acknowledgement before answering with a retryable error (10-60000)",
        |c, v| c.replication_timeout_ms = parse_u64(v, 10, 60_000)?,
        |c| c.replication_timeout_ms.to_string()
    ),
    param!(
        "sliding_touch_replication_ms",
        "250",
        true,
        "reads restart sliding timeouts on the primary; the replicas learn of those restarts in batches at most this many milliseconds later, so a session that is only read survives a failover (keep it well under the shortest sliding timeout; 10-10000)",
        |c, v| c.sliding_touch_replication_ms = parse_u64(v, 10, 10_000)?,
        |c| c.sliding_touch_replication_ms.to_string()
    ),
    param!(
        "shards",
        "0",
        true,
        "shards (one pinned thread each); 0 = one per CPU this process may run on",
        |c, v| c.shards = parse_u64(v, 0, 1024)? as u32,
        |c| c.shards.to_string()
    ),
    param!(
        "log_dir",
        "/var/log/stategrid",
        true,
        "directory for the log file stategrid.log (logs also go to stderr); skipped with a warning if not writable",
        |c, v| c.log_dir = PathBuf::from(v),
        |c| c.log_dir.display().to_string()
    ),
    param!(
        "log_level",
        "info",
        true,
        "error, warn, info, debug or trace",
        |c, v| {
            if !["error", "warn", "info", "debug", "trace"].contains(&v) {
                return Err("expected error, warn, info, debug or trace".into());
            }
            c.log_level = v.to_owned()
        },
        |c| c.log_level.clone()
    ),
    param!(
        "object_bytes_max",
        "64MiB",
        true,
        "largest value one object may hold",
        |c, v| c.object_bytes_max = parse_bytes(v)?.clamp(1, u32::MAX as u64 / 2),
        |c| c.object_bytes_max.to_string()
    ),
    param!(
        "key_bytes_max",
        "1024",
        true,
        "longest key, in bytes (1-65536); hash longer keys in the client",
        |c, v| c.key_bytes_max = parse_u64(v, 1, 65_536)? as u32,
        |c| c.key_bytes_max.to_string()
    ),
    param!(
        "namespace_bytes_max",
        "280",
        true,
        "longest namespace name, in bytes (ScaleOut allows 280 characters)",
        |c, v| c.namespace_bytes_max = parse_u64(v, 1, 4096)? as u32,
        |c| c.namespace_bytes_max.to_string()
    ),
    param!(
        "frame_bytes_max",
        "65MiB",
        true,
        "largest request frame; must be at least object_bytes_max + 1 MiB. A larger frame closes its connection",
        |c, v| c.frame_bytes_max = parse_bytes(v)?.clamp(64, u32::MAX as u64),
        |c| c.frame_bytes_max.to_string()
    ),
    param!(
        "unauth_frame_bytes_max",
        "64KiB",
        true,
        "largest frame a connection may send before it is trusted (before Hello on svr_port and int_port, and before Auth when client credentials are configured; it also caps a RESP argument before AUTH): a peer that proved nothing cannot make the server buffer more",
        |c, v| c.unauth_frame_bytes_max = parse_bytes(v)?.clamp(1024, 64 << 20),
        |c| c.unauth_frame_bytes_max.to_string()
    ),
    param!(
        "conn_held_bytes_max",
        "16MiB",
        true,
        "bytes of one connection's requests held as copies while they wait for another shard or host; above it the server stops reading that connection until answers drain (backpressure)",
        |c, v| c.conn_held_bytes_max = parse_bytes(v)?.max(4096),
        |c| c.conn_held_bytes_max.to_string()
    ),
    param!(
        "mgt_connections_max",
        "256",
        true,
        "connections mgt_port accepts at once (peers and admin clients); more are closed at once with a log line",
        |c, v| c.mgt_connections_max = parse_u64(v, 4, 65_536)? as u32,
        |c| c.mgt_connections_max.to_string()
    ),
    param!(
        "mgt_frame_bytes_max",
        "16MiB",
        true,
        "largest host-to-host frame on mgt_port (a Raft snapshot of the whole map must fit); a larger one closes the connection",
        |c, v| c.mgt_frame_bytes_max = parse_bytes(v)?.clamp(1 << 20, 1 << 30),
        |c| c.mgt_frame_bytes_max.to_string()
    ),
    param!(
        "connections_per_shard_max",
        "4096",
        true,
        "client connections one shard accepts; more are refused with TooManyConnections",
        |c, v| c.connections_per_shard_max = parse_u64(v, 1, 1 << 20)? as u32,
        |c| c.connections_per_shard_max.to_string()
    ),
    param!(
        "inflight_per_conn_max",
        "1024",
        true,
        "requests one connection may have waiting for an answer; more get TooManyInFlight",
        |c, v| c.inflight_per_conn_max = parse_u64(v, 1, 1 << 20)? as u32,
        |c| c.inflight_per_conn_max.to_string()
    ),
    param!(
        "resp_port",
        "0",
        true,
        "port where every connection speaks the Redis protocol (RESP); 0 = off. svr_port also accepts RESP, told apart by the first bytes",
        |c, v| c.resp_port = parse_u64(v, 0, 65535)? as u16,
        |c| c.resp_port.to_string()
    ),
    param!(
        "resp_databases",
        "16",
        true,
        "Redis databases a RESP client may SELECT (0 to N-1); database N is the namespace redis-N",
        |c, v| c.resp_databases = parse_u64(v, 1, 65536)? as u32,
        |c| c.resp_databases.to_string()
    ),
    param!(
        "resp_multibulk_items_max",
        "1048576",
        true,
        "arguments one RESP command may carry (its *N); more closes the connection with a protocol error",
        |c, v| c.resp_multibulk_items_max = parse_u64(v, 1, 1 << 24)? as u32,
        |c| c.resp_multibulk_items_max.to_string()
    ),
    param!(
        "resp_inline_bytes_max",
        "65536",
        true,
        "longest inline (telnet-style, not *N) RESP command line, in bytes; longer closes the connection",
        |c, v| c.resp_inline_bytes_max = parse_u64(v, 16, 1 << 26)? as u32,
        |c| c.resp_inline_bytes_max.to_string()
    ),
    param!(
        "hash_fields_max",
        "65536",
        true,
        "fields one Redis hash may hold; a write beyond it fails (TooManyItems) and changes nothing",
        |c, v| c.hash_fields_max = parse_u64(v, 1, 1 << 24)? as u32,
        |c| c.hash_fields_max.to_string()
    ),
    param!(
        "items_per_request_max",
        "10000",
        true,
        "items in one multi-read, bulk put or key page",
        |c, v| c.items_per_request_max = parse_u64(v, 1, 1 << 20)? as u32,
        |c| c.items_per_request_max.to_string()
    ),
    param!(
        "conn_out_bytes_max",
        "8MiB",
        true,
        "unsent answer bytes one connection may queue before the server stops reading its requests (backpressure)",
        |c, v| c.conn_out_bytes_max = parse_bytes(v)?.max(4096),
        |c| c.conn_out_bytes_max.to_string()
    ),
    param!(
        "recv_buffer_bytes",
        "64KiB",
        true,
        "initial receive buffer per connection (grows to fit one frame, up to frame_bytes_max)",
        |c, v| c.recv_buffer_bytes = parse_bytes(v)?.clamp(4096, 64 << 20) as u32,
        |c| c.recv_buffer_bytes.to_string()
    ),
    param!(
        "frame_timeout_ms",
        "30000",
        true,
        "a connection that leaves a frame half-sent this long is closed (slow or stuck senders)",
        |c, v| c.frame_timeout_ms = parse_u64(v, 100, 3_600_000)?,
        |c| c.frame_timeout_ms.to_string()
    ),
    param!(
        "sweep_interval_ms",
        "250",
        true,
        "how often each shard removes expired objects and expired locks",
        |c, v| c.sweep_interval_ms = parse_u64(v, 10, 60_000)?,
        |c| c.sweep_interval_ms.to_string()
    ),
    param!(
        "leave_timeout_ms",
        "5000",
        true,
        "on SIGTERM in a store of several hosts, how long to spend moving this host's partitions to the others before stopping (0: stop at once and let them fail over)",
        |c, v| c.leave_timeout_ms = parse_u64(v, 0, 600_000)?,
        |c| c.leave_timeout_ms.to_string()
    ),
    param!(
        "shutdown_timeout_ms",
        "10000",
        true,
        "on SIGTERM, how long to wait for in-flight requests and unsent answers before closing connections",
        |c, v| c.shutdown_timeout_ms = parse_u64(v, 0, 600_000)?,
        |c| c.shutdown_timeout_ms.to_string()
    ),
    param!(
        "ring_entries",
        "1024",
        true,
        "submission queue entries of each shard's network io_uring (power of two, 64-32768)",
        |c, v| {
            let n = parse_u64(v, 64, 32_768)?;
            if !n.is_power_of_two() {
                return Err("expected a power of two from 64 to 32768".into());
            }
            c.ring_entries = n as u32
        },
        |c| c.ring_entries.to_string()
    ),
    param!(
        "io_memory_bytes",
        "512KiB",
        true,
        "memory each shard's glommio executor registers with io_uring (locked memory: counts against RLIMIT_MEMLOCK)",
        |c, v| c.io_memory_bytes = parse_bytes(v)?.clamp(64 << 10, 1 << 30),
        |c| c.io_memory_bytes.to_string()
    ),
    param!(
        "rest_port",
        "0",
        true,
        "TCP port of the HTTP data REST API (docs/rest.md); 0 = off. The container image sets 4001, ScaleOut's REST port",
        |c, v| c.rest_port = parse_u64(v, 0, 65535)? as u16,
        |c| c.rest_port.to_string()
    ),
    param!(
        "http_connections_max",
        "1024",
        true,
        "HTTP connections one shard serves at once (per HTTP port); more are answered 503 and closed",
        |c, v| c.http_connections_max = parse_u64(v, 1, 1 << 20)? as u32,
        |c| c.http_connections_max.to_string()
    ),
    param!(
        "http_header_bytes_max",
        "16KiB",
        true,
        "largest HTTP request line plus headers (8KiB to 1MiB); larger is answered 431",
        |c, v| c.http_header_bytes_max = parse_bytes(v)?.clamp(8 << 10, 1 << 20),
        |c| c.http_header_bytes_max.to_string()
    ),
    param!(
        "http_body_bytes_max",
        "64MiB",
        true,
        "largest HTTP request body; a stored value is also bounded by object_bytes_max. Larger is answered 413",
        |c, v| c.http_body_bytes_max = parse_bytes(v)?.clamp(1, u32::MAX as u64 / 2),
        |c| c.http_body_bytes_max.to_string()
    ),
    param!(
        "http_read_timeout_ms",
        "30000",
        true,
        "an HTTP client must send a request's headers, and then its body, each within this long; a slower one gets 408 (body) or is closed (headers). Also the idle keep-alive limit",
        |c, v| c.http_read_timeout_ms = parse_u64(v, 100, 3_600_000)?,
        |c| c.http_read_timeout_ms.to_string()
    ),
    param!(
        "content_type_bytes_max",
        "255",
        true,
        "longest Content-Type the HTTP data API stores with an object (1 to 255 bytes); a longer one is answered 400",
        |c, v| c.content_type_bytes_max = parse_u64(v, 1, 255)? as u32,
        |c| c.content_type_bytes_max.to_string()
    ),
    param!(
        "mgt_http_port",
        "0",
        true,
        "TCP port of the management HTTP API (/healthz, /readyz, /metrics, /api/v1/...; docs/operations.md); 0 = off. ScaleOut's is 4000",
        |c, v| c.mgt_http_port = parse_u64(v, 0, 65535)? as u16,
        |c| c.mgt_http_port.to_string()
    ),
    param!(
        "mgt_http_interface",
        "127.0.0.1",
        true,
        "IPv4 address the management HTTP API listens on: loopback by default, as ScaleOut's management service",
        |c, v| c.mgt_http_interface = parse_ip(v)?,
        |c| c.mgt_http_interface.to_string()
    ),
];

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn defaults_are_valid() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.svr_port, 2721);
        assert_eq!(c.lock_timeout_s, 90);
        assert_eq!(c.object_bytes_max, 64 << 20);
        // Every parameter round-trips through its own printed value.
        for (name, value) in c.values() {
            let mut d = Config::default();
            d.set(name, &value, Source::Set).unwrap();
            assert_eq!(d, c, "{name}");
        }
    }

    #[test]
    fn precedence_file_env_set() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            f,
            "# comment\nsvr_port 3000\nlock_timeout = 10\nmax_memory 1GB  # trailing"
        )
        .unwrap();
        let env = vec![
            ("STATEGRID_SVR_PORT".to_string(), "3001".to_string()),
            ("STATEGRID_HOST".to_string(), "ignored:1".to_string()),
            // Before this was excluded, `STATEGRID_LOG=debug stategrid serve` refused to start
            // ("unknown parameter 'log'").
            ("STATEGRID_LOG".to_string(), "debug".to_string()),
            ("STATEGRID_MGT".to_string(), "ignored:2".to_string()),
            ("PATH".to_string(), "/bin".to_string()),
        ];
        let sets = vec![("lock_timeout".to_string(), "20".to_string())];
        let c = Config::load(Some(f.path()), env, &sets).unwrap();
        assert_eq!(c.svr_port, 3001);
        assert_eq!(c.lock_timeout_s, 20);
        assert_eq!(c.max_memory_bytes, 1_000_000_000);
    }

    #[test]
    fn errors_name_parameter_value_and_allowed() {
        let e = Config::load(None, vec![], &[("svr_port".into(), "99999".into())]).unwrap_err();
        let s = e.to_string();
        assert!(
            s.contains("svr_port") && s.contains("99999") && s.contains("1 to 65535"),
            "{s}"
        );
        let e = Config::load(None, vec![], &[("no_such".into(), "1".into())]).unwrap_err();
        assert!(e.to_string().contains("unknown parameter 'no_such'"));
        let e = Config::load(
            None,
            vec![("STATEGRID_LRU_THRESHOLD".into(), "0".into())],
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("STATEGRID_LRU_THRESHOLD"), "{e}");
        let e = Config::load(
            None,
            vec![],
            &[("object_bytes_max".into(), "128MiB".into())],
        )
        .unwrap_err();
        assert!(e.to_string().contains("frame_bytes_max"), "{e}");
        let e = Config::load(None, vec![], &[("ring_entries".into(), "100".into())]).unwrap_err();
        assert!(e.to_string().contains("power of two"), "{e}");
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_bytes("0").unwrap(), 0);
        assert_eq!(parse_bytes("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("4GB").unwrap(), 4_000_000_000);
        assert_eq!(parse_bytes("64k").unwrap(), 65536);
        assert!(parse_bytes("12XB").is_err());
        assert!(parse_bytes("abc").is_err());
    }

    #[test]
    fn markdown_lists_every_param() {
        let md = params_markdown();
        for p in PARAMS {
            assert!(md.contains(&format!("`{}`", p.name)));
        }
    }
}
