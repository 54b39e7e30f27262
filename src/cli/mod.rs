//! The `stategrid` control program: `serve` starts a host; every other command is a thin
//! client of a running host (through the blocking client library).
//!
//! - this file: the command line (clap derive), the exit codes, and the one place where a
//!   failure becomes an exit code and a line on stderr;
//! - [`commands`]: one function per command, each returning an [`Outcome`] that holds both
//!   its text and its `--json` form;
//! - [`output`]: rendering bytes, metadata and statistics for people and for JSON;
//! - [`cluster`]: the store-wide commands on the management port (`query`, `join`, `leave`,
//!   `set --all`) and `witness`.
//!
//! Exit codes: 0 ok · 1 not found · 2 usage · 3 conflict (already exists, locked, lock lost,
//! version mismatch) · 4 the server refused (low memory, a limit, invalid request, shutting
//! down, ...) · 5 cannot reach the server.

mod cluster;
mod commands;
mod output;

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use stategrid_client::{Error as ClientError, ErrorCode, TIMEOUT_S_MAX, TimeoutKind};

pub use output::Outcome;

/// The command succeeded.
pub const EXIT_OK: i32 = 0;
/// The object (or what the command needed) does not exist.
pub const EXIT_NOT_FOUND: i32 = 1;
/// The command line was wrong (clap's own errors exit 2 as well).
pub const EXIT_USAGE: i32 = 2;
/// The object's state did not allow it: already exists, locked, lock lost, version mismatch.
pub const EXIT_CONFLICT: i32 = 3;
/// The server refused: low memory, a size or count limit, an invalid request, shutting down.
pub const EXIT_REFUSED: i32 = 4;
/// The server could not be reached (or did not answer, or does not speak the protocol).
pub const EXIT_UNREACHABLE: i32 = 5;

const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  ok
  1  not found
  2  usage error
  3  conflict: already exists, locked, lock lost, version mismatch
  4  the server refused: low memory, a size or count limit, invalid request, shutting down
  5  cannot reach the server";

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "stategrid",
    version,
    about = "stategrid: a distributed in-memory object store for session state",
    after_help = EXIT_CODES_HELP
)]
pub struct Cli {
    /// The server to talk to (with --tls: its secure_svr_port).
    #[arg(
        long,
        global = true,
        env = "STATEGRID_HOST",
        default_value = "127.0.0.1:2721",
        value_name = "HOST:PORT"
    )]
    pub host: String,

    /// A host's management port, for query, join, leave and set (with --tls: its
    /// secure_mgt_port).
    #[arg(
        long,
        global = true,
        env = "STATEGRID_MGT",
        default_value = "127.0.0.1:2720",
        value_name = "HOST:PORT"
    )]
    pub mgt: String,

    /// Print one JSON object per command on stdout (errors too), instead of text.
    #[arg(long, global = true)]
    pub json: bool,

    /// Speak TLS to --host (a host's secure_svr_port) and --mgt (its secure_mgt_port).
    #[arg(long, global = true, env = "STATEGRID_TLS")]
    pub tls: bool,

    /// PEM file of the CA that signs the hosts' certificates (implies --tls).
    #[arg(long, global = true, env = "STATEGRID_CACERT", value_name = "FILE")]
    pub cacert: Option<std::path::PathBuf>,

    /// A file holding `user:password` (or a password alone, for the user `default`) for a
    /// server with client users. Otherwise the environment variable STATEGRID_AUTH, same
    /// format. Never on the command line: it would show in `ps`.
    #[arg(long, global = true, value_name = "FILE")]
    pub auth_file: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The CA file for TLS, when --tls or --cacert asks for TLS. --tls alone needs a CA:
    /// the hosts' certificates are signed by the store's own CA, not a public one.
    pub fn tls_ca(&self) -> Result<Option<std::path::PathBuf>, Failure> {
        match (&self.cacert, self.tls) {
            (Some(ca), _) => Ok(Some(ca.clone())),
            (None, false) => Ok(None),
            (None, true) => Err(Failure::Usage(
                "--tls needs --cacert FILE (or STATEGRID_CACERT): the PEM file of the CA that signs the hosts' certificates".into(),
            )),
        }
    }
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a host in the foreground until SIGTERM or SIGINT.
    Serve {
        /// A parameters file: one `name value` per line.
        #[arg(long, value_name = "FILE")]
        params: Option<PathBuf>,
        /// Set one parameter, over the file and the environment (repeatable).
        #[arg(long = "set", value_name = "NAME=VALUE", value_parser = parse_set)]
        sets: Vec<(String, String)>,
    },
    /// Every server parameter with its default and meaning (a markdown table).
    Params,
    /// Print an argon2id hash of a password read from stdin (one line), for a users_file
    /// line `name role HASH`. The password is never taken from the command line.
    HashPassword,
    /// This host's status: version, shards, partitions, objects, memory, parameters.
    Show,
    /// Store a value (create or replace unless --add / --update / --if-version).
    Put(PutArgs),
    /// Print a value's raw bytes (with --lock, lock it too and report the lock token).
    Get {
        /// The namespace (this command never creates one).
        ns: String,
        /// The object\'s key.
        key: String,
        /// Take the object's lock: the token goes to stderr (or to the JSON as `lock_token`);
        /// finish with `update-unlock` or `unlock`.
        #[arg(long)]
        lock: bool,
    },
    /// Replace a locked object's value and release its lock.
    UpdateUnlock {
        /// The namespace (this command never creates one).
        ns: String,
        /// The object\'s key.
        key: String,
        /// The lock token from `get --lock`.
        token: u64,
        /// The new value; `-` or absent reads stdin.
        #[arg(value_name = "VALUE|-")]
        value: Option<OsString>,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// Release a lock without changing the value.
    Unlock {
        /// The namespace (this command never creates one).
        ns: String,
        /// The object\'s key.
        key: String,
        /// The lock token from `get --lock`.
        token: u64,
    },
    /// Remove an object.
    Remove {
        /// The namespace (this command never creates one).
        ns: String,
        /// The object\'s key.
        key: String,
        /// Remove it even if it is locked.
        #[arg(long)]
        force: bool,
    },
    /// An object's metadata: size, version, timeout, lock (does not extend a sliding timeout).
    Meta {
        /// The namespace (this command never creates one).
        ns: String,
        /// The object's key.
        key: String,
    },
    /// Restart an object's timeout, or give it a new one.
    Touch {
        /// The namespace (this command never creates one).
        ns: String,
        /// The object\'s key.
        key: String,
        /// A new timeout in seconds (0 = never expires); absent restarts the current one.
        #[arg(long, value_name = "SECS", value_parser = timeout_s_parser())]
        timeout: Option<u32>,
        /// The new timeout's kind; absent keeps the object's current kind.
        #[arg(long, value_name = "KIND", requires = "timeout")]
        timeout_kind: Option<TimeoutKindArg>,
    },
    /// List a namespace's keys, one per line.
    Keys {
        /// The namespace (this command never creates one).
        ns: String,
    },
    /// Count a namespace's objects.
    Count {
        /// The namespace (this command never creates one).
        ns: String,
    },
    /// Remove every object of a namespace, locked ones included.
    Clear {
        /// The namespace (this command never creates one).
        ns: String,
    },
    /// List the namespaces with their object counts.
    Namespaces,
    /// The store: map epoch, leader, and every host's state, partitions, objects and memory
    /// (asks the host at --mgt).
    Query,
    /// Join the store (for a host started with auto_join 0).
    Join,
    /// Move this host's partitions to the others; it stays up, holding nothing.
    Leave {
        /// Return only when the host holds no partition (or --timeout passed: exit 4).
        #[arg(long)]
        wait: bool,
        /// How long --wait waits, in seconds.
        #[arg(long, value_name = "SECS", default_value_t = 120, requires = "wait")]
        timeout: u64,
    },
    /// Change a parameter on every host of the store, through consensus.
    Set {
        /// The parameter: max_replicas, lock_timeout, max_memory or lru_threshold (the
        /// store-wide ones; the others are set in each host's params file).
        name: String,
        /// Its new value.
        value: String,
        /// Apply to the whole store (required: a host-local change needs a restart).
        #[arg(long)]
        all: bool,
    },
    /// Run a witness: a voter without data that lets a 2-host store fail over.
    Witness {
        /// A parameters file: one `name value` per line.
        #[arg(long, value_name = "FILE")]
        params: Option<PathBuf>,
        /// Set one parameter, over the file and the environment (repeatable).
        #[arg(long = "set", value_name = "NAME=VALUE", value_parser = parse_set)]
        sets: Vec<(String, String)>,
    },
}

/// `stategrid put`.
#[derive(Debug, Args)]
pub struct PutArgs {
    /// The namespace (created if missing).
    pub ns: String,
    /// The object\'s key.
    pub key: String,
    /// The value; `-` or absent reads stdin.
    #[arg(value_name = "VALUE|-")]
    pub value: Option<OsString>,
    /// Create only: fail (exit 3) if the object exists.
    #[arg(long, conflicts_with_all = ["update", "if_version"])]
    pub add: bool,
    /// Replace only: fail (exit 1) if the object does not exist.
    #[arg(long)]
    pub update: bool,
    /// Replace only if the object's version is still V (exit 3 otherwise).
    #[arg(long, value_name = "V")]
    pub if_version: Option<u64>,
    #[command(flatten)]
    pub write: WriteArgs,
}

/// Options every write takes.
#[derive(Debug, Args)]
pub struct WriteArgs {
    /// Expire the object after SECS seconds (0 = never; at most 4194303). Absent keeps an
    /// existing object's timeout; a new object never expires.
    #[arg(long, value_name = "SECS", value_parser = timeout_s_parser())]
    pub timeout: Option<u32>,
    /// How the timeout runs (default absolute).
    #[arg(long, value_name = "KIND", requires = "timeout")]
    pub timeout_kind: Option<TimeoutKindArg>,
    /// Never evict this object when memory runs short (every write sets this; the default
    /// is evictable).
    #[arg(long)]
    pub not_evictable: bool,
}

/// `--timeout-kind` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TimeoutKindArg {
    /// Expires SECS after the write.
    Absolute,
    /// Every read and update restarts the timeout (sessions).
    Sliding,
    /// Updates restart the timeout; reads do not.
    ResetOnUpdate,
}

impl From<TimeoutKindArg> for TimeoutKind {
    fn from(k: TimeoutKindArg) -> TimeoutKind {
        match k {
            TimeoutKindArg::Absolute => TimeoutKind::Absolute,
            TimeoutKindArg::Sliding => TimeoutKind::Sliding,
            TimeoutKindArg::ResetOnUpdate => TimeoutKind::ResetOnUpdate,
        }
    }
}

fn timeout_s_parser() -> clap::builder::RangedI64ValueParser<u32> {
    clap::value_parser!(u32).range(0..=i64::from(TIMEOUT_S_MAX))
}

/// Parses `--set NAME=VALUE`; the value may contain `=`, the name may not be empty.
fn parse_set(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, value)) if !name.trim().is_empty() => {
            Ok((name.trim().to_owned(), value.to_owned()))
        }
        Some(_) => Err(format!("`{s}` has no parameter name before `=`")),
        None => Err(format!(
            "`{s}` is not NAME=VALUE (for example --set svr_port=2721)"
        )),
    }
}

impl Cli {
    /// The credentials to send: `--auth-file`'s contents, else `STATEGRID_AUTH`, else the
    /// user `default` with `STATEGRID_REQUIREPASS` when that is set (the server's own
    /// environment: a container's health check and `docker exec ... stategrid` work
    /// unchanged), else none.
    pub fn credentials(&self) -> Result<Option<stategrid_client::Credentials>, Failure> {
        if let Some(path) = &self.auth_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                Failure::Usage(format!(
                    "cannot read --auth-file {}: {e} (it holds `user:password`, or a password for the user `default`)",
                    path.display()
                ))
            })?;
            return Ok(Some(stategrid_client::Credentials::parse(&text)));
        }
        if let Some(v) = std::env::var("STATEGRID_AUTH")
            .ok()
            .filter(|v| !v.is_empty())
        {
            return Ok(Some(stategrid_client::Credentials::parse(&v)));
        }
        Ok(std::env::var("STATEGRID_REQUIREPASS")
            .ok()
            .filter(|v| !v.is_empty())
            .map(|password| stategrid_client::Credentials {
                user: None,
                password,
            }))
    }
}

/// Why a command failed; [`Failure::exit_code`] and [`Failure::report`] are the only places
/// that turn it into an exit code and a message.
#[derive(Debug)]
pub enum Failure {
    /// The command line or its input was wrong. Says what and how to fix it.
    Usage(String),
    /// The client library failed; `what` names the operation (`get sessions/k1`).
    Client { what: String, error: ClientError },
    /// A management-port request failed; `what` names the command.
    Admin {
        what: String,
        error: crate::cluster::admin::CallError,
    },
}

impl Failure {
    /// The process exit code for this failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            Failure::Usage(_) => EXIT_USAGE,
            Failure::Client { error, .. } => client_exit_code(error),
            Failure::Admin { error, .. } => match error {
                crate::cluster::admin::CallError::Refused(_) => EXIT_REFUSED,
                _ => EXIT_UNREACHABLE,
            },
        }
    }

    /// The error's code name for `--json` (`NotFound`, `Connect`, ...).
    fn code_name(&self) -> String {
        match self {
            Failure::Usage(_) => "Usage".into(),
            Failure::Client { error, .. } => match error {
                ClientError::Server(r) => format!("{:?}", r.code),
                ClientError::Connect { .. } => "Connect".into(),
                ClientError::UnsupportedVersion { .. } => "UnsupportedVersion".into(),
                ClientError::Io(_) => "Io".into(),
                ClientError::Protocol(_) => "Protocol".into(),
                ClientError::Timeout { .. } => "Timeout".into(),
                ClientError::Closed { .. } => "Closed".into(),
                ClientError::Config(_) => "Config".into(),
            },
            Failure::Admin { error, .. } => match error {
                crate::cluster::admin::CallError::Connect { .. } => "Connect".into(),
                crate::cluster::admin::CallError::Io { .. } => "Io".into(),
                crate::cluster::admin::CallError::Protocol { .. } => "Protocol".into(),
                crate::cluster::admin::CallError::Refused(_) => "Refused".into(),
            },
        }
    }

    /// One line for a person: what failed, why, and how to fix it.
    pub fn message(&self) -> String {
        match self {
            Failure::Usage(msg) => msg.clone(),
            Failure::Client {
                what,
                error: ClientError::Connect { addr, source },
            } => format!(
                "{what}: cannot connect to {addr}: {source} (is the server running? start one with `stategrid serve`, or point --host / STATEGRID_HOST at it)"
            ),
            Failure::Client { what, error } => format!("{what}: {error}"),
            Failure::Admin {
                what,
                error: error @ crate::cluster::admin::CallError::Connect { .. },
            } => format!(
                "{what}: {error} (is the host running? point --mgt / STATEGRID_MGT at its mgt_port)"
            ),
            Failure::Admin { what, error } => format!("{what}: {error}"),
        }
    }

    /// Prints the line on stderr and, with `--json`, the error object on stdout.
    fn report(&self, json: bool) {
        eprintln!("stategrid: {}", self.message());
        if json {
            let value = serde_json::json!({
                "error": {
                    "code": self.code_name(),
                    "exit_code": self.exit_code(),
                    "message": self.message(),
                }
            });
            let _ = writeln!(std::io::stdout().lock(), "{value}");
        }
    }
}

/// The exit code for a client-library error: the whole [`ErrorCode`] set, in one match.
pub fn client_exit_code(error: &ClientError) -> i32 {
    match error {
        ClientError::Server(reply) => match reply.code {
            ErrorCode::NotFound => EXIT_NOT_FOUND,
            ErrorCode::AlreadyExists
            | ErrorCode::Locked
            | ErrorCode::LockLost
            | ErrorCode::VersionMismatch => EXIT_CONFLICT,
            ErrorCode::LowMemory
            | ErrorCode::ObjectTooLarge
            | ErrorCode::KeyTooLong
            | ErrorCode::FrameTooLarge
            | ErrorCode::TooManyInFlight
            | ErrorCode::TooManyConnections
            | ErrorCode::InvalidRequest
            | ErrorCode::UnsupportedVersion
            | ErrorCode::HandshakeRequired
            | ErrorCode::NameTooLong
            | ErrorCode::NamespaceCollision
            | ErrorCode::TooManyItems
            | ErrorCode::ShuttingDown
            | ErrorCode::BadTimeout
            | ErrorCode::Internal
            | ErrorCode::BadFrame
            | ErrorCode::NotJoined
            | ErrorCode::NotPrimary
            | ErrorCode::StaleEpoch
            | ErrorCode::ReplicationFailed
            | ErrorCode::Unsupported
            | ErrorCode::Forbidden
            | ErrorCode::WrongType
            | ErrorCode::NotInteger
            | ErrorCode::AuthRequired
            | ErrorCode::AuthFailed
            | ErrorCode::PermissionDenied => EXIT_REFUSED,
        },
        // Reached the server, which refused to speak this protocol version.
        ClientError::UnsupportedVersion { .. } => EXIT_REFUSED,
        ClientError::Connect { .. }
        | ClientError::Timeout { .. }
        | ClientError::Closed { .. }
        | ClientError::Protocol(_) => EXIT_UNREACHABLE,
        ClientError::Io(_) | ClientError::Config(_) => EXIT_USAGE,
    }
}

/// Parses the process's arguments and runs the command; returns the exit code.
pub fn main() -> i32 {
    match Cli::try_parse() {
        Ok(cli) => run(cli),
        Err(e) => {
            // Help and --version print to stdout and exit 0; real usage errors exit 2.
            let _ = e.print();
            e.exit_code()
        }
    }
}

/// Runs a parsed command line; returns the exit code.
pub fn run(cli: Cli) -> i32 {
    match cli.command {
        Command::Serve { params, sets } => return crate::server::serve(params, sets),
        Command::Witness { params, sets } => return cluster::witness(params, sets),
        Command::Params => {
            print!("{}", crate::config::params_markdown());
            return EXIT_OK;
        }
        Command::HashPassword => return hash_password(),
        _ => {}
    }
    match commands::execute(&cli) {
        Ok(outcome) => {
            outcome.print(cli.json);
            EXIT_OK
        }
        Err(failure) => {
            failure.report(cli.json);
            failure.exit_code()
        }
    }
}

/// `stategrid hash-password`: stdin's first line (without its newline) to a PHC string.
fn hash_password() -> i32 {
    let mut line = String::new();
    if let Err(e) = std::io::stdin().read_line(&mut line) {
        eprintln!("error: cannot read the password from stdin: {e}");
        return EXIT_USAGE;
    }
    let password = line.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        eprintln!(
            "error: no password on stdin; for example: `printf '%s' \"$PASSWORD\" | stategrid hash-password`"
        );
        return EXIT_USAGE;
    }
    match crate::auth::users::hash_password(password.as_bytes()) {
        Ok(h) => {
            println!("{h}");
            EXIT_OK
        }
        Err(e) => {
            eprintln!("error: hashing failed: {e}");
            EXIT_USAGE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stategrid_client::ErrorReply;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("stategrid").chain(args.iter().copied()))
    }

    #[test]
    fn set_needs_a_name_and_an_equals_sign() {
        assert_eq!(parse_set("a=b=c").unwrap(), ("a".into(), "b=c".into()));
        assert_eq!(parse_set("shards=").unwrap(), ("shards".into(), "".into()));
        assert!(parse_set("novalue").is_err());
        assert!(parse_set("=1").is_err());
        let err = parse(&["serve", "--set", "svr_port"]).unwrap_err();
        assert_eq!(err.exit_code(), EXIT_USAGE);
        let cli = parse(&["serve", "--set", "svr_port=1", "--set", "shards=2"]).unwrap();
        match cli.command {
            Command::Serve { sets, params } => {
                assert_eq!(sets.len(), 2);
                assert!(params.is_none());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn help_exits_zero_and_mistakes_exit_two() {
        assert_eq!(parse(&["--help"]).unwrap_err().exit_code(), 0);
        assert_eq!(parse(&["put", "--help"]).unwrap_err().exit_code(), 0);
        assert_eq!(parse(&["--version"]).unwrap_err().exit_code(), 0);
        assert_eq!(parse(&[]).unwrap_err().exit_code(), EXIT_USAGE);
        assert_eq!(parse(&["get", "ns"]).unwrap_err().exit_code(), EXIT_USAGE);
        assert_eq!(
            parse(&["put", "ns", "k", "v", "--add", "--update"])
                .unwrap_err()
                .exit_code(),
            EXIT_USAGE
        );
        assert_eq!(
            parse(&["put", "ns", "k", "v", "--timeout", "4194304"])
                .unwrap_err()
                .exit_code(),
            EXIT_USAGE
        );
        assert_eq!(
            parse(&["put", "ns", "k", "v", "--timeout-kind", "sliding"])
                .unwrap_err()
                .exit_code(),
            EXIT_USAGE
        );
        assert_eq!(
            parse(&["unlock", "ns", "k", "notanumber"])
                .unwrap_err()
                .exit_code(),
            EXIT_USAGE
        );
    }

    #[test]
    fn globals_go_anywhere() {
        let cli = parse(&["get", "ns", "k", "--json", "--host", "h:1"]).unwrap();
        assert!(cli.json);
        assert_eq!(cli.host, "h:1");
        let cli = parse(&[
            "put",
            "ns",
            "k",
            "--timeout",
            "60",
            "--timeout-kind",
            "reset-on-update",
        ])
        .unwrap();
        match cli.command {
            Command::Put(p) => {
                assert!(p.value.is_none());
                assert_eq!(p.write.timeout, Some(60));
                assert_eq!(p.write.timeout_kind, Some(TimeoutKindArg::ResetOnUpdate));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_error_code_has_its_exit_code() {
        let code = |c| client_exit_code(&ClientError::Server(ErrorReply::new(c, 0)));
        assert_eq!(code(ErrorCode::NotFound), EXIT_NOT_FOUND);
        for c in [
            ErrorCode::AlreadyExists,
            ErrorCode::Locked,
            ErrorCode::LockLost,
            ErrorCode::VersionMismatch,
        ] {
            assert_eq!(code(c), EXIT_CONFLICT, "{c:?}");
        }
        for c in [
            ErrorCode::LowMemory,
            ErrorCode::ObjectTooLarge,
            ErrorCode::ShuttingDown,
        ] {
            assert_eq!(code(c), EXIT_REFUSED, "{c:?}");
        }
        let connect = ClientError::Connect {
            addr: "x:1".into(),
            source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        };
        assert_eq!(client_exit_code(&connect), EXIT_UNREACHABLE);
        assert_eq!(
            client_exit_code(&ClientError::Timeout { ms: 1 }),
            EXIT_UNREACHABLE
        );
        let failure = Failure::Client {
            what: "get a/b".into(),
            error: connect,
        };
        let msg = failure.message();
        assert!(msg.starts_with("get a/b: cannot connect to x:1"), "{msg}");
        assert!(msg.contains("STATEGRID_HOST"), "{msg}");
        assert_eq!(failure.code_name(), "Connect");
    }
}
