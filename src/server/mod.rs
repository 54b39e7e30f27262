//! The shard-per-core server: `stategrid serve`.
//!
//! Start-up: parameters → preflight → one pinned glommio executor per shard, each with its own
//! store, its own network ring and its own SO_REUSEPORT listener on `svr_port` (the kernel
//! spreads connections), and a bounded channel to every other shard. A request whose partition
//! another shard owns is forwarded there and its answer relayed back in order ([`shard`]).
//!
//! Shutdown: SIGTERM or SIGINT sets a flag and wakes every ring; each shard stops accepting,
//! stops reading, sends what is queued, waits for the others, and the process exits 0.

pub(crate) mod exec; // crate-wide for `resp::standalone` (a shard without I/O, for fuzzing)
mod gather;
pub mod hop;
pub mod local_api;
pub mod metrics;
mod resp_tx;
mod shard;

use std::cell::RefCell;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use glommio::channels::shared_channel::{self, SharedReceiver, SharedSender};
use glommio::{LocalExecutorBuilder, Placement};

use crate::config::Config;
use crate::net::{AlignedBuf, Ring, RingWaker};
use crate::preflight::{self, exit};
use crate::store::Store;

pub use exec::{Core, Route, Sink, VecSink, owner_shard, route};

/// A message between shards.
pub enum Msg {
    /// Serve this request frame and answer `origin`.
    Forward {
        origin: usize,
        conn: u32,
        generation: u32,
        seq: u64,
        part: u32,
        frame: AlignedBuf,
    },
    /// The answer frame to a forwarded request.
    Reply {
        conn: u32,
        generation: u32,
        seq: u64,
        part: u32,
        frame: Vec<u8>,
    },
    /// Serve this connection from now on: its `HelloShard` asked for the receiving shard. The
    /// socket moves as it is (descriptors are process-wide), with the bytes received after
    /// the `Hello` frame; the receiver answers `HelloShardOk` with request id `hello_id`.
    /// `internal`: another host's link, accepted on `int_port`.
    Adopt {
        fd: std::os::fd::OwnedFd,
        rest: AlignedBuf,
        hello_id: u32,
        internal: bool,
        /// The host a host-to-host connection proved it is (cluster-key handshake) on the
        /// shard that accepted it: the proof stays with the socket, it is not asked again.
        proven_host: Option<u64>,
    },
    /// Requests this shard owns, forwarded by `batch.origin` during one of its passes
    /// ([`hop`]): serve them in order and send the batch back as `HopBack`.
    Hop(Box<hop::HopBatch>),
    /// A batch this shard sent, back with its answers.
    HopBack(Box<hop::HopBatch>),
}

/// State every shard shares: only control-path flags, never data.
pub struct Shared {
    pub shutdown: AtomicBool,
    pub drained: AtomicUsize,
    pub shards: usize,
    pub started: std::time::Instant,
    /// Every shard's published counters for `/metrics`.
    pub metrics: metrics::MetricsBoard,
}

/// Connections the kernel may queue per shard's listener before the shard accepts them.
const LISTEN_BACKLOG_CONNECTIONS: i32 = 1024;

/// Messages one shard may queue to another before senders wait.
const MESH_CHANNEL_MESSAGES: usize = 4096;

/// Runs `stategrid serve` until SIGTERM/SIGINT; returns the process exit code.
pub fn serve(params_file: Option<PathBuf>, sets: Vec<(String, String)>) -> i32 {
    let cfg = match Config::load(params_file.as_deref(), std::env::vars(), &sets) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("stategrid: {e}");
            return exit::USAGE;
        }
    };
    let _log_guard = init_logging(&cfg);
    let cpus = allowed_cpus();
    let shards = if cfg.shards == 0 {
        cpus.len().max(1)
    } else {
        cfg.shards as usize
    };
    // One glommio executor per shard plus the control plane's: the locked-memory budget is
    // planned for all of them (the control plane's, with less io memory, fits in its share).
    let plan = match preflight::check(shards as u32 + 1, cfg.io_memory_bytes) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("stategrid: {e}");
            tracing::error!("preflight failed: {e}");
            return e.exit_code;
        }
    };
    if let Some(note) = &plan.io_memory_note {
        tracing::warn!("{note}");
    }
    if shards > cpus.len() {
        tracing::warn!(
            shards,
            cpus = cpus.len(),
            "more shards than CPUs: shards will share CPUs"
        );
    }
    match run(Arc::new(cfg), shards, &cpus, plan.io_memory_bytes as usize) {
        Ok(()) => exit::OK,
        Err((code, msg)) => {
            eprintln!("stategrid: {msg}");
            tracing::error!("{msg}");
            code
        }
    }
}

fn run(
    cfg: Arc<Config>,
    shards: usize,
    cpus: &[usize],
    io_memory_bytes: usize,
) -> Result<(), (i32, String)> {
    let addr = SocketAddr::new(cfg.net_interface.into(), cfg.svr_port);
    // SO_REUSEPORT would let a second stategrid share the port silently (and take half the
    // connections), so first prove the port is free with a plain bind.
    probe_port(addr).map_err(|e| {
        (
            exit::BIND,
            format!("cannot listen on {addr} (svr_port / net_interface): {e}. Is another stategrid or another program using it? Choose another port with --set svr_port=N"),
        )
    })?;
    // Bind every listener before starting: a port in use fails start-up, not a shard.
    let mut listeners = Vec::with_capacity(shards);
    for _ in 0..shards {
        listeners.push(listen(addr).map_err(|e| {
            (
                exit::BIND,
                format!("cannot listen on {addr} (svr_port / net_interface): {e}. Is another stategrid running? Choose another port with --set svr_port=N"),
            )
        })?);
    }
    // int_port: other hosts' replication, migration and relayed requests, one SO_REUSEPORT
    // listener per shard as for clients.
    let int_addr = SocketAddr::new(cfg.net_interface.into(), cfg.int_port);
    probe_port(int_addr).map_err(|e| {
        (
            exit::BIND,
            format!("cannot listen on {int_addr} (int_port / net_interface): {e}. Is another stategrid using it? Choose another port with --set int_port=N"),
        )
    })?;
    let mut int_listeners = Vec::with_capacity(shards);
    for _ in 0..shards {
        int_listeners.push(listen(int_addr).map_err(|e| {
            (
                exit::BIND,
                format!("cannot listen on {int_addr} (int_port / net_interface): {e}"),
            )
        })?);
    }
    // resp_port (optional): every connection there speaks RESP.
    let mut resp_listeners: Vec<Option<socket2::Socket>> = (0..shards).map(|_| None).collect();
    if cfg.resp_port != 0 {
        let resp_addr = SocketAddr::new(cfg.net_interface.into(), cfg.resp_port);
        let bind_err = |e: std::io::Error| {
            (
                exit::BIND,
                format!(
                    "cannot listen on {resp_addr} (resp_port / net_interface): {e}. Is Redis or another program using it? Choose another port with --set resp_port=N, or 0 for none"
                ),
            )
        };
        probe_port(resp_addr).map_err(bind_err)?;
        for l in resp_listeners.iter_mut() {
            *l = Some(listen(resp_addr).map_err(bind_err)?);
        }
    }
    // secure_svr_port (optional): clients over TLS, one listener per shard as for svr_port.
    let tls = crate::net::TlsSettings::from_config(&cfg)
        .map_err(|e| (exit::USAGE, format!("{e}. See docs/security.md")))?;
    let mut secure_listeners: Vec<Option<socket2::Socket>> = (0..shards).map(|_| None).collect();
    if cfg.secure_svr_port != 0 {
        let secure_addr = SocketAddr::new(cfg.net_interface.into(), cfg.secure_svr_port);
        let bind_err = |e: std::io::Error| {
            (
                exit::BIND,
                format!(
                    "cannot listen on {secure_addr} (secure_svr_port / net_interface): {e}. Choose another port with --set secure_svr_port=N, or 0 for none"
                ),
            )
        };
        probe_port(secure_addr).map_err(bind_err)?;
        for l in secure_listeners.iter_mut() {
            *l = Some(listen(secure_addr).map_err(bind_err)?);
        }
    }
    let rest_listeners = http_listeners(&cfg, cfg.rest_port, "rest_port", shards)?;
    // The management API: one listener, served by shard 0 (rare, simple traffic).
    let mut mgt_http_listener = if cfg.mgt_http_port == 0 {
        None
    } else {
        let addr = SocketAddr::new(cfg.mgt_http_interface.into(), cfg.mgt_http_port);
        let fail = |e: std::io::Error| {
            (
                exit::BIND,
                format!(
                    "cannot listen on {addr} (mgt_http_port / mgt_http_interface): {e}. Choose another port with --set mgt_http_port=N, or 0 to turn it off"
                ),
            )
        };
        probe_port(addr).map_err(fail)?;
        Some(listen(addr).map_err(fail)?)
    };
    let plane = Arc::new(crate::cluster::plane::Plane::new(shards));
    let control = crate::cluster::control::start(
        cfg.clone(),
        plane.clone(),
        crate::cluster::control::ControlRole::Host,
    )?;
    if cfg.secure_mgt_port != 0
        && let Some(tls) = &tls
    {
        crate::cluster::secure_mgt::start(&cfg, tls.clone()).map_err(|e| (exit::BIND, e))?;
    }
    let shared = Arc::new(Shared {
        shutdown: AtomicBool::new(false),
        drained: AtomicUsize::new(0),
        shards,
        started: std::time::Instant::now(),
        metrics: metrics::MetricsBoard::new(shards),
    });
    // The mesh: a bounded channel for every ordered pair of shards.
    let mut senders: Vec<Vec<Option<SharedSender<Msg>>>> = (0..shards)
        .map(|_| (0..shards).map(|_| None).collect())
        .collect();
    let mut receivers: Vec<Vec<SharedReceiver<Msg>>> = (0..shards).map(|_| Vec::new()).collect();
    for (from, row) in senders.iter_mut().enumerate() {
        for (to, slot) in row.iter_mut().enumerate() {
            if from != to {
                let (tx, rx) = shared_channel::new_bounded(MESH_CHANNEL_MESSAGES);
                *slot = Some(tx);
                receivers[to].push(rx);
            }
        }
    }
    let (waker_tx, waker_rx) = std::sync::mpsc::channel::<Result<RingWaker, String>>();
    let mut handles = Vec::with_capacity(shards);
    let mut rest_listeners = rest_listeners.into_iter();
    let mut secure_listeners = secure_listeners.into_iter();
    for (id, (((listener, int_listener), resp_listener), (tx_row, rx_row))) in listeners
        .into_iter()
        .zip(int_listeners)
        .zip(resp_listeners)
        .zip(senders.into_iter().zip(receivers))
        .enumerate()
    {
        let rest_listener = rest_listeners.next().flatten();
        let secure_listener = secure_listeners.next().flatten();
        let tls = tls.clone();
        let mgt_http_listener = mgt_http_listener.take();
        let cfg = cfg.clone();
        let plane = plane.clone();
        let shared = shared.clone();
        let waker_tx = waker_tx.clone();
        let cpu = cpus[id % cpus.len()];
        let builder = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(&format!("shard-{id}"))
            .io_memory(io_memory_bytes);
        let handle = builder
            .spawn(move || async move {
                let (ring, waiter) = match Ring::new(cfg.ring_entries) {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = waker_tx
                            .send(Err(format!("shard {id}: cannot create its io_uring: {e}")));
                        return;
                    }
                };
                let _ = waker_tx.send(Ok(ring.waker()));
                let plane_waker = ring.waker();
                plane.add_waker(Box::new(move || plane_waker.wake()));
                let limits = cfg.store_limits(shards);
                let core = Core::new(
                    id,
                    shards,
                    Store::new(limits, seed(id)),
                    (id == 0).then(Default::default),
                    cfg.clone(),
                );
                let shard = Rc::new(RefCell::new(shard::Shard::new(
                    core,
                    ring,
                    listener,
                    int_listener,
                    plane,
                    shared.clone(),
                )));
                shard.borrow_mut().set_resp_listener(resp_listener);
                shard
                    .borrow_mut()
                    .set_secure_listener(secure_listener, tls.clone());
                // Connect the mesh: every connect waits for its peer, so run them together.
                // glommio 0.9's connect parks a waker that its reactor re-checks only when it
                // wakes for another reason; the peer connecting does not wake it. Without a
                // timer a shard could sleep for seconds here, so tick until connected.
                let ticker = glommio::spawn_local(async {
                    loop {
                        glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
                    }
                });
                let mut tasks = Vec::new();
                for (to, tx) in tx_row.into_iter().enumerate() {
                    if let Some(tx) = tx {
                        let s = shard.clone();
                        tasks.push(glommio::spawn_local(async move {
                            let c = tx.connect().await;
                            s.borrow_mut().set_peer(to, c);
                            None
                        }));
                    }
                }
                for rx in rx_row {
                    tasks.push(glommio::spawn_local(
                        async move { Some(rx.connect().await) },
                    ));
                }
                let mut connected = Vec::new();
                for t in tasks {
                    if let Some(rx) = t.await {
                        connected.push(rx);
                    }
                }
                drop(ticker);
                use crate::http::{Service, serve};
                let http_tls = if cfg.http_tls { tls.clone() } else { None };
                if let Some(l) = rest_listener {
                    let handle = local_api::ShardHandle::new(shard.clone());
                    glommio::spawn_local(serve(l, handle, Service::Data, http_tls.clone()))
                        .detach();
                }
                if let Some(l) = mgt_http_listener {
                    let handle = local_api::ShardHandle::new(shard.clone());
                    glommio::spawn_local(serve(l, handle, Service::Management, http_tls)).detach();
                }
                tracing::debug!(shard = id, cpu, "serving");
                shard::run(shard, waiter, connected, shared).await;
            })
            .map_err(|e| {
                (
                    exit::RUNTIME,
                    format!("cannot start shard {id} on CPU {cpu}: {e}"),
                )
            })?;
        handles.push(handle);
    }
    drop(waker_tx);
    let mut wakers = Vec::with_capacity(shards);
    for _ in 0..shards {
        match waker_rx.recv() {
            Ok(Ok(w)) => wakers.push(w),
            Ok(Err(msg)) => {
                shared.shutdown.store(true, Ordering::Release);
                for w in &wakers {
                    w.wake();
                }
                return Err((exit::RUNTIME, msg));
            }
            Err(_) => return Err((exit::RUNTIME, "a shard stopped during start-up".into())),
        }
    }
    // A lone host with nothing to discover forms its store at once: say "serving" only when
    // it can serve keyed requests, so scripts that wait for the line need no retries.
    if cfg.auto_join && !cfg.use_multicast && cfg.hosts.trim().is_empty() {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while plane.view().is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }
    tracing::info!(
        "stategrid {} serving on {addr}: {shards} shards, max_memory {} bytes, log_dir {}",
        env!("CARGO_PKG_VERSION"),
        cfg.max_memory_bytes,
        cfg.log_dir.display()
    );
    wait_for_signal(
        &shared,
        wakers,
        &plane,
        cfg.leave_timeout_ms,
        tls.as_deref(),
    );
    let mut failed = false;
    for h in handles {
        if h.join().is_err() {
            failed = true;
        }
    }
    control.shutdown();
    if failed {
        return Err((exit::RUNTIME, "a shard failed; see the log".into()));
    }
    tracing::info!("stopped cleanly");
    Ok(())
}

/// A listening socket on `addr` with SO_REUSEPORT, so every shard can have its own.
fn listen(addr: SocketAddr) -> std::io::Result<socket2::Socket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.cloexec(),
        Some(Protocol::TCP),
    )?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_tcp_nodelay(true)?;
    s.bind(&addr.into())?;
    s.listen(LISTEN_BACKLOG_CONNECTIONS)?;
    Ok(s)
}

/// One SO_REUSEPORT listener per shard on an HTTP port (`param`), or none when it is 0.
fn http_listeners(
    cfg: &Config,
    port: u16,
    param: &str,
    shards: usize,
) -> Result<Vec<Option<socket2::Socket>>, (i32, String)> {
    if port == 0 {
        return Ok((0..shards).map(|_| None).collect());
    }
    let addr = SocketAddr::new(cfg.net_interface.into(), port);
    let fail = |e: std::io::Error| {
        (
            exit::BIND,
            format!(
                "cannot listen on {addr} ({param} / net_interface): {e}. Is another program using it? Choose another port with --set {param}=N, or 0 to turn it off"
            ),
        )
    };
    probe_port(addr).map_err(fail)?;
    (0..shards)
        .map(|_| listen(addr).map(Some).map_err(fail))
        .collect()
}

/// Binds `addr` without SO_REUSEPORT and closes it again: fails if anyone listens there.
fn probe_port(addr: SocketAddr) -> std::io::Result<()> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.cloexec(),
        Some(Protocol::TCP),
    )?;
    s.set_reuse_address(true)?;
    s.bind(&addr.into())?;
    Ok(())
}

/// Blocks the main thread until SIGTERM or SIGINT, then leaves the store (its partitions move
/// to the other hosts, bounded by `leave_timeout_ms`) and starts the drain.
fn wait_for_signal(
    shared: &Arc<Shared>,
    wakers: Vec<RingWaker>,
    plane: &crate::cluster::plane::Plane,
    leave_timeout_ms: u64,
    tls: Option<&crate::net::TlsSettings>,
) {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = match signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP]) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot install signal handlers: {e}");
            return;
        }
    };
    for sig in signals.forever() {
        if sig != SIGHUP {
            tracing::info!(signal = sig, "signal received");
            break;
        }
        // SIGHUP: read the certificate again (renewed certificates without a restart); new
        // TLS connections get it, open ones keep theirs.
        match tls.map(|t| t.reload()) {
            Some(Ok(())) => tracing::info!("SIGHUP: reloaded tls_cert_file and tls_key_file"),
            Some(Err(e)) => {
                tracing::error!("SIGHUP: TLS reload failed, keeping the old certificate: {e}")
            }
            None => tracing::info!("SIGHUP: no TLS certificate configured; nothing to reload"),
        }
    }
    // Leaving cleanly: hand the partitions over while still serving, so the store keeps every
    // replica and no partition waits for a failover. Bounded: a store that cannot move them in
    // time (no other host, a huge host) fails them over as for a crash.
    if leave_timeout_ms > 0 && plane.holds_partitions() && plane.others_can_take() {
        let started = std::time::Instant::now();
        plane.push_event(crate::cluster::plane::DataEvent::Leave);
        while plane.holds_partitions()
            && started.elapsed() < std::time::Duration::from_millis(leave_timeout_ms)
        {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        if plane.holds_partitions() {
            tracing::warn!(
                "partitions not moved away within leave_timeout_ms ({leave_timeout_ms} ms): the others fail them over"
            );
        } else {
            tracing::info!(
                "left the store in {} ms: this host holds no partitions",
                started.elapsed().as_millis()
            );
        }
    }
    tracing::info!("draining");
    shared.shutdown.store(true, Ordering::Release);
    for w in &wakers {
        w.wake();
    }
}

/// The CPUs this process may run on.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return vec![0];
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

fn seed(shard: usize) -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    t ^ ((std::process::id() as u64) << 32) ^ (shard as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Logs to stderr and, when `log_dir` is writable, to `log_dir/stategrid.log` (`serve` and
/// `witness`).
pub(crate) fn init_logging(cfg: &Config) -> Option<tracing_appender::non_blocking::WorkerGuard> {
    use tracing_subscriber::{EnvFilter, fmt, prelude::*};
    let filter = || {
        EnvFilter::try_from_env("STATEGRID_LOG").unwrap_or_else(|_| EnvFilter::new(&cfg.log_level))
    };
    // Colour only for a person at a terminal: `docker logs` and log collectors get plain text.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let stderr = fmt::layer()
        .with_ansi(colour)
        .with_writer(std::io::stderr)
        .with_filter(filter());
    let file = std::fs::create_dir_all(&cfg.log_dir).and_then(|_| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(cfg.log_dir.join("stategrid.log"))
    });
    match file {
        Ok(f) => {
            let (writer, guard) = tracing_appender::non_blocking(f);
            let layer = fmt::layer()
                .with_ansi(false)
                .with_writer(writer)
                .with_filter(filter());
            let _ = tracing_subscriber::registry()
                .with(stderr)
                .with(layer)
                .try_init();
            Some(guard)
        }
        Err(e) => {
            let _ = tracing_subscriber::registry().with(stderr).try_init();
            tracing::warn!(
                "not logging to {}: {e} (set log_dir to a writable directory)",
                cfg.log_dir.display()
            );
            None
        }
    }
}
