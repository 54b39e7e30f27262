//! The command line, validated into a [`Config`]. Every limit is named here with its unit.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use serde::Serialize;

use crate::sys;
use crate::workload::{KeyDist, Ratio, ValueSize};

pub const THREADS_MAX: usize = 256;
pub const CONNECTIONS_PER_THREAD_MAX: usize = 4096;
pub const PIPELINE_MAX: usize = 1024;
pub const DURATION_S_MAX: f64 = 86_400.0;
pub const WARMUP_S_MAX: f64 = 3_600.0;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// stategrid's native protocol (Hello + NsOpen first).
    Native,
    /// Redis's RESP2.
    Resp,
    /// memcached's text protocol.
    Memcache,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Native => "native",
            Protocol::Resp => "resp",
            Protocol::Memcache => "memcache",
        }
    }
}

const AFTER_HELP: &str = "\
SESSION MODE (--session)
  Each slot (connection x pipeline depth) plays one user of a session-state provider:
  read-and-lock a session, then write it back and unlock, on a key from --dist.
    native:   ReadAndLock  ->  UpdateAndUnlock(token)        (a missing session: Put)
    resp:     SET lock:KEY TOKEN NX PX LOCK_MS + GET KEY  ->  SET KEY VALUE PX SESSION_MS + DEL lock:KEY
    memcache: add lock:KEY 0 LOCK_S 16 TOKEN + get KEY    ->  set KEY 0 SESSION_S LEN + delete lock:KEY
  The two commands of a RESP/memcached step go back to back in one round trip and count as one
  operation. A lock held by another slot ('busy') or a missing session ('miss') is not an error.
  These are lower bounds on a Redis/memcached provider's cost (no token check on release).

OUTPUT
  A progress line each second (stderr), a table (stdout), --json FILE with at least
  ops_per_sec, errors, client_cpu_pct, latency_us{p50,p90,p99,p999,max}, duration_s, per-op
  breakdown and the configuration, and --plot FILE.svg|FILE.png.

EXIT STATUS
  0 run completed without errors; 1 completed with errors; 2 could not run (bad arguments,
  connection or handshake failed); 3 stopped by the hard deadline (--deadline).";

/// stategrid's load generator: native, RESP and memcached over io_uring, one pinned thread
/// per core, latency from HDR histograms, its own CPU use reported.
#[derive(Parser, Debug, Clone)]
#[command(name = "loadgen", version, after_long_help = AFTER_HELP, after_help = "See --help for session mode, output and exit status.")]
pub struct Args {
    /// Wire protocol.
    #[arg(long, value_enum, default_value = "native")]
    pub protocol: Protocol,
    /// Servers, HOST:PORT[,HOST:PORT...]; connections are spread over them round-robin.
    /// Traffic goes to these addresses only.
    #[arg(long, value_delimiter = ',', required = true, num_args = 1..)]
    pub targets: Vec<String>,
    /// Worker threads, one io_uring each, each pinned to one CPU.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// CPUs to pin the threads to (e.g. 0,2-3); default: the CPUs this process may use, in order.
    #[arg(long)]
    pub cpus: Option<String>,
    /// Connections per thread.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// Requests outstanding per connection.
    #[arg(long, default_value_t = 1)]
    pub pipeline: usize,
    /// Key space: keys lg:0000000000 .. lg:<keys-1>.
    #[arg(long, default_value_t = 100_000)]
    pub keys: u64,
    /// Value size in bytes, BYTES or MIN..MAX (uniform, inclusive).
    #[arg(long, default_value = "1024")]
    pub value_size: ValueSize,
    /// GET:PUT weights (e.g. 90:10, 1:0 for reads only). Ignored with --session.
    #[arg(long, default_value = "90:10")]
    pub ratio: Ratio,
    /// Session-provider cycle instead of GET/PUT (see below).
    #[arg(long)]
    pub session: bool,
    /// Sliding timeout written with each session, seconds (0: none).
    #[arg(long, default_value_t = 1200)]
    pub session_timeout: u32,
    /// Lock expiry for the RESP/memcached session lock keys, seconds.
    #[arg(long, default_value_t = 90)]
    pub lock_timeout: u32,
    /// Key distribution: uniform or zipf:THETA (e.g. zipf:0.99).
    #[arg(long, default_value = "uniform")]
    pub dist: KeyDist,
    /// Measured seconds (after --warmup). Default 10 unless --requests is given.
    #[arg(long, conflicts_with = "requests")]
    pub duration: Option<f64>,
    /// Measured requests in total (after --warmup), instead of --duration.
    #[arg(long)]
    pub requests: Option<u64>,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Write every key once before the warm-up (not measured).
    #[arg(long)]
    pub prefill: bool,
    /// Open loop: OPS requests per second in total, at fixed intervals; latency counts from
    /// each request's intended send time (no coordinated omission).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Seconds a request may wait for its reply before its connection is failed.
    #[arg(long, default_value_t = 5.0)]
    pub timeout: f64,
    /// Seconds to connect and finish the handshake, per connection.
    #[arg(long, default_value_t = 3.0)]
    pub connect_timeout: f64,
    /// Hard limit on the whole run, seconds; default: the planned length plus a margin.
    #[arg(long)]
    pub deadline: Option<f64>,
    /// RNG seed (thread i uses seed + i).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Namespace opened by the native protocol.
    #[arg(long, default_value = "loadgen")]
    pub namespace: String,
    /// Native protocol: do not route by shard. By default each connection asks to be served by
    /// one shard of the host (`HelloShard`, connections spread over the shards) and carries only
    /// keys that shard owns, as the client library does; with --naive connections land on
    /// whichever shard the kernel picks and most requests hop between the server's cores.
    #[arg(long)]
    pub naive: bool,
    /// A file holding `user:password` (or a password alone, for the user `default`) for a
    /// server with client users: native connections send `Auth` after `Hello`, RESP ones
    /// `AUTH` first. Otherwise the environment variable STATEGRID_AUTH, same format.
    #[arg(long, value_name = "FILE")]
    pub auth_file: Option<PathBuf>,
    /// Speak TLS (stategrid's `secure_svr_port`, Redis's `--tls-port`), trusting the CA in
    /// --cacert; the server's certificate must name the target's IP address.
    #[arg(long)]
    pub tls: bool,
    /// PEM CA certificate that signs the servers' certificates (implies --tls).
    #[arg(long, value_name = "FILE")]
    pub cacert: Option<PathBuf>,
    /// Write the results as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Draw throughput and latency over time to FILE.svg or FILE.png.
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,
    /// No progress line.
    #[arg(long)]
    pub quiet: bool,
}

/// A validated run configuration (echoed in the JSON).
#[derive(Clone, Debug, Serialize)]
pub struct Config {
    pub protocol: Protocol,
    pub targets: Vec<String>,
    #[serde(skip)]
    pub target_addrs: Vec<SocketAddr>,
    pub threads: usize,
    pub cpus: Vec<usize>,
    pub connections_per_thread: usize,
    pub pipeline: usize,
    pub keys: u64,
    pub value_size: ValueSize,
    /// `None` in session mode.
    pub ratio: Option<Ratio>,
    pub session: bool,
    pub session_timeout_s: u32,
    pub lock_timeout_s: u32,
    pub dist: KeyDist,
    pub duration_s: Option<f64>,
    pub requests: Option<u64>,
    pub warmup_s: f64,
    pub prefill: bool,
    pub rate: Option<f64>,
    pub timeout_s: f64,
    pub connect_timeout_s: f64,
    pub deadline_s: f64,
    pub seed: u64,
    pub namespace: String,
    /// Native protocol: connections ask for a shard and carry only its keys (not --naive).
    pub shard_aware: bool,
    /// (user, password) to authenticate with (`--auth-file` or STATEGRID_AUTH); never in
    /// the JSON.
    #[serde(skip)]
    pub auth: Option<(Option<String>, String)>,
    /// Over TLS (`--tls`/`--cacert`)?
    pub tls_enabled: bool,
    /// The TLS client configuration every connection uses.
    #[serde(skip)]
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

/// `user:password` or a password alone (the user `default`), without a trailing newline.
fn parse_auth(text: &str) -> (Option<String>, String) {
    let t = text.trim_end_matches(['\n', '\r']);
    match t.split_once(':') {
        Some((u, p)) => (Some(u.to_owned()), p.to_owned()),
        None => (None, t.to_owned()),
    }
}

fn positive(name: &str, v: f64, max: f64) -> Result<f64, String> {
    if v.is_finite() && v > 0.0 && v <= max {
        Ok(v)
    } else {
        Err(format!("--{name} {v} must be above 0 and at most {max}"))
    }
}

impl Config {
    pub fn from_args(a: &Args) -> Result<Config, String> {
        if a.threads == 0 || a.threads > THREADS_MAX {
            return Err(format!(
                "--threads {} must be in 1..={THREADS_MAX}",
                a.threads
            ));
        }
        if a.connections == 0 || a.connections > CONNECTIONS_PER_THREAD_MAX {
            return Err(format!(
                "--connections {} must be in 1..={CONNECTIONS_PER_THREAD_MAX} (per thread)",
                a.connections
            ));
        }
        if a.pipeline == 0 || a.pipeline > PIPELINE_MAX {
            return Err(format!(
                "--pipeline {} must be in 1..={PIPELINE_MAX}",
                a.pipeline
            ));
        }
        // Resolve each target once, up front: a typo fails here, not mid-run.
        let mut target_addrs = Vec::new();
        for t in &a.targets {
            let addr = t
                .to_socket_addrs()
                .map_err(|e| format!("target '{t}': {e} (expected HOST:PORT)"))?
                .next()
                .ok_or_else(|| format!("target '{t}' resolves to no address"))?;
            target_addrs.push(addr);
        }
        if target_addrs.is_empty() {
            return Err("--targets names no server".into());
        }
        let cpus = match &a.cpus {
            Some(list) => sys::parse_cpu_list(list)?,
            None => sys::allowed_cpus().map_err(|e| format!("sched_getaffinity: {e}"))?,
        };
        if a.cpus.is_some() && cpus.len() < a.threads {
            return Err(format!(
                "--cpus names {} CPU(s) for {} threads; name one per thread",
                cpus.len(),
                a.threads
            ));
        }
        let (duration_s, requests) = match (a.duration, a.requests) {
            (_, Some(0)) => return Err("--requests must be above 0".into()),
            (None, Some(n)) => (None, Some(n)),
            (Some(d), None) => (Some(positive("duration", d, DURATION_S_MAX)?), None),
            (None, None) => (Some(10.0), None),
            (Some(_), Some(_)) => unreachable!("clap rejects --duration with --requests"),
        };
        if !(a.warmup.is_finite() && (0.0..=WARMUP_S_MAX).contains(&a.warmup)) {
            return Err(format!(
                "--warmup {} must be in 0..={WARMUP_S_MAX}",
                a.warmup
            ));
        }
        let rate = a.rate.map(|r| positive("rate", r, 1e9)).transpose()?;
        if let Some(r) = rate.filter(|r| r / (a.threads as f64) < 1.0) {
            return Err(format!(
                "--rate {r} is below one request per second per thread"
            ));
        }
        let timeout_s = positive("timeout", a.timeout, 3600.0)?;
        let connect_timeout_s = positive("connect-timeout", a.connect_timeout, 3600.0)?;
        if a.session && a.lock_timeout == 0 {
            return Err("--lock-timeout must be at least 1 second".into());
        }
        // The planned length plus room to drain, and a generous allowance for the prefill
        // (at least 20k writes/s), so the default never cuts a healthy run short.
        let planned_s =
            a.warmup + duration_s.unwrap_or(600.0) + timeout_s + connect_timeout_s + 30.0;
        let prefill_s = if a.prefill {
            60.0 + a.keys as f64 / 20_000.0
        } else {
            0.0
        };
        let deadline_s = match a.deadline {
            Some(d) => positive("deadline", d, 7.0 * DURATION_S_MAX)?,
            None => planned_s + prefill_s,
        };
        // Check the workload pieces build (zipf over this many keys, etc.).
        crate::workload::KeySampler::new(a.keys, a.dist)?;
        if a.namespace.is_empty() {
            return Err("--namespace must not be empty".into());
        }
        let tls = match (&a.cacert, a.tls) {
            (Some(ca), _) => Some(crate::tls::client_config(ca)?),
            (None, true) => {
                return Err(
                    "--tls needs --cacert FILE: the PEM CA certificate that signs the server's certificate"
                        .into(),
                );
            }
            (None, false) => None,
        };
        Ok(Config {
            protocol: a.protocol,
            targets: target_addrs.iter().map(|t| t.to_string()).collect(),
            target_addrs,
            threads: a.threads,
            cpus,
            connections_per_thread: a.connections,
            pipeline: a.pipeline,
            keys: a.keys,
            value_size: a.value_size,
            ratio: (!a.session).then_some(a.ratio),
            session: a.session,
            session_timeout_s: a.session_timeout,
            lock_timeout_s: a.lock_timeout,
            dist: a.dist,
            duration_s,
            requests,
            warmup_s: a.warmup,
            prefill: a.prefill,
            rate,
            timeout_s,
            connect_timeout_s,
            deadline_s,
            seed: a.seed,
            namespace: a.namespace.clone(),
            shard_aware: !a.naive,
            auth: match &a.auth_file {
                Some(path) => {
                    Some(parse_auth(&std::fs::read_to_string(path).map_err(|e| {
                        format!("--auth-file {}: {e}", path.display())
                    })?))
                }
                None => std::env::var("STATEGRID_AUTH")
                    .ok()
                    .filter(|v| !v.is_empty())
                    .map(|v| parse_auth(&v)),
            },
            tls_enabled: tls.is_some(),
            tls,
        })
    }

    /// The CPU thread `i` is pinned to.
    pub fn cpu_of(&self, thread: usize) -> usize {
        self.cpus[thread % self.cpus.len()]
    }

    /// The target of connection `conn` of thread `thread`: round-robin over all connections.
    pub fn target_of(&self, thread: usize, conn: usize) -> usize {
        (thread * self.connections_per_thread + conn) % self.target_addrs.len()
    }

    /// A short title (plots).
    pub fn title(&self) -> String {
        let mix = match self.ratio {
            Some(r) => format!("GET:PUT {r}"),
            None => "session".to_string(),
        };
        format!(
            "loadgen {} | {} thr x {} conn x pipeline {} | {} B | {mix}",
            self.protocol.name(),
            self.threads,
            self.connections_per_thread,
            self.pipeline,
            self.value_size,
        )
    }

    /// One line describing the run.
    pub fn describe(&self) -> String {
        let mix = match self.ratio {
            Some(r) => format!("GET:PUT {r}"),
            None => "session cycle".to_string(),
        };
        let bound = match (self.duration_s, self.requests) {
            (Some(d), _) => format!("{d} s"),
            (None, Some(n)) => format!("{n} requests"),
            _ => String::new(),
        };
        let rate = match self.rate {
            Some(r) => format!(", open loop at {r} ops/s"),
            None => String::new(),
        };
        format!(
            "{} -> {} | {} thread(s) x {} conn(s) x pipeline {} | {} keys ({}), {} B values, {} | {} after {} s warm-up{}{}",
            self.protocol.name(),
            self.targets.join(","),
            self.threads,
            self.connections_per_thread,
            self.pipeline,
            self.keys,
            self.dist,
            self.value_size,
            mix,
            bound,
            self.warmup_s,
            if self.prefill { ", prefilled" } else { "" },
            rate,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(args: &[&str]) -> Result<Config, String> {
        let mut v = vec!["loadgen"];
        v.extend_from_slice(args);
        let a = Args::try_parse_from(v).map_err(|e| e.to_string())?;
        Config::from_args(&a)
    }

    #[test]
    fn defaults_and_validation() {
        let c = cfg(&["--targets", "127.0.0.1:1"]).unwrap();
        assert_eq!(c.duration_s, Some(10.0));
        assert_eq!(c.protocol, Protocol::Native);
        assert_eq!(c.ratio, Some(Ratio { get: 90, put: 10 }));
        assert!(c.deadline_s > 10.0);
        let c = cfg(&[
            "--targets",
            "127.0.0.1:1,127.0.0.1:2",
            "--connections",
            "3",
            "--threads",
            "2",
            "--cpus",
            "0,0",
        ])
        .unwrap();
        // Round-robin over every connection of every thread.
        let t: Vec<usize> = (0..2)
            .flat_map(|th| (0..3).map(move |i| (th, i)))
            .map(|(th, i)| c.target_of(th, i))
            .collect();
        assert_eq!(t, vec![0, 1, 0, 1, 0, 1]);
        assert!(
            cfg(&[
                "--targets",
                "127.0.0.1:1",
                "--duration",
                "1",
                "--requests",
                "5"
            ])
            .is_err()
        );
        assert!(cfg(&["--targets", "127.0.0.1:1", "--pipeline", "0"]).is_err());
        assert!(cfg(&["--targets", "127.0.0.1:1", "--threads", "2", "--cpus", "0"]).is_err());
        assert!(cfg(&["--targets", "nonsense"]).is_err());
        assert!(cfg(&["--targets", "127.0.0.1:1", "--rate", "0"]).is_err());
        assert!(cfg(&["--targets", "127.0.0.1:1", "--ratio", "0:0"]).is_err());
        assert!(cfg(&[]).is_err(), "--targets is required");
        let s = cfg(&[
            "--targets",
            "127.0.0.1:1",
            "--session",
            "--protocol",
            "resp",
        ])
        .unwrap();
        assert_eq!(s.ratio, None);
        assert!(s.describe().contains("session"));
    }
}
