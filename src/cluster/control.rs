//! The control plane of one host: one thread that runs SWIM, the Raft node ([`ClusterNode`])
//! and the management port, and talks to the data plane only through the [`Plane`].
//!
//! # What it does
//! - **Membership**: foca (SWIM) over UDP on `mgt_port` ([`super::swim`]); its up/down
//!   reports become `Input::Member`. Discovery: the static `hosts` list (announced to every
//!   [`STATIC_ANNOUNCE_MS`] until they answer) and, with `use_multicast 1`, a small
//!   announcement on `mcast_ip:mgt_port` every [`MCAST_ANNOUNCE_MS`].
//! - **Bootstrap or join**: [`super::swim::decide_start`] (documented in `docs/cluster.md`).
//! - **Raft transport**: [`PeerMsg`] frames ([`super::wire`]) over TCP to each peer's
//!   `mgt_port`, one outgoing connection per peer, reconnected with backoff; messages for a
//!   peer that is not connected are dropped (Raft retransmits, joins and leases are re-sent).
//! - **Admin**: the same TCP listener answers the CLI ([`super::admin`]).
//! - **Data plane**: every installed map is published as a [`View`], the lease every tick,
//!   migrations go down as [`DataCmd::Pull`], finished ones come up as events.
//!
//! # Why std sockets polled from a glommio timer
//! The thread runs a glommio `LocalExecutor` (unpinned: the shards own the CPUs) with one task
//! that owns everything: it drains nonblocking std sockets, runs due timers, and sleeps
//! [`POLL_MS`] on a glommio timer. One owner means no `RefCell` borrowed across await
//! points and a loop that reads top to bottom; the control plane handles a few messages per
//! tick, so a pass over its handful of sockets costs microseconds. glommio's own sockets
//! would need a task per connection sharing the node, and glommio 0.9's reactor can miss a
//! wake-up on connect (see `server/mod.rs`); polling cannot. The cost is up to [`POLL_MS`]
//! of latency per hop, small against a 10 ms Raft tick.
//!
//! A host the store declares failed (`Output::Expelled`) exits with code 1: its objects and
//! log are gone from the store's point of view, and it must restart as a new member (a
//! supervisor does that).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rand_foca::rngs::StdRng;
use rand_foca::{RngExt, SeedableRng};
use serde_json::Value;
use socket2::{Domain, Protocol, Socket, Type};

use super::admin::{self, HostReport, LocalReply, QueryReply, Request};
use super::map::{HostId, HostState, PARTITIONS, Role};
use super::node::{ClusterNode, Input, MemberEvent, NodeConfig, Output, PeerMsg};
use super::plane::{DataCmd, DataEvent, HostAddr, Plane, View, now_ms};
use super::swim::{self, FLAG_IN_STORE, FLAG_WANTS_STORE, FLAG_WITNESS, Ident, Start, Swim};
use super::wire::{self, ConnKind};
use crate::auth::peer::{self, Initiator, Responder};
use crate::config::Config;
use crate::preflight::exit;

/// What this process is in the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlRole {
    /// A host with a data plane: takes its weighted share of partitions.
    Host,
    /// A Raft voter without data or client port (`stategrid witness`).
    Witness,
}

/// The running control plane; [`ControlHandle::shutdown`] stops it.
pub struct ControlHandle {
    stop: Arc<AtomicBool>,
    thread: Option<glommio::ExecutorJoinHandle<()>>,
}

impl ControlHandle {
    /// Leaves SWIM politely (peers see this host down at once), stops the thread, joins it.
    pub fn shutdown(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!("control plane thread failed while stopping");
        }
    }
}

impl Drop for ControlHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// One pass of the loop at most this often (the latency a message can wait).
pub const POLL_MS: u64 = 2;
/// Raft tick: one `Input::Tick` per tick.
pub const TICK_MS: u64 = 10;
/// Raft heartbeat, in ticks.
const HEARTBEAT_TICKS: usize = 2;
/// Raft election timeout range in ticks (100-200 ms): drawn once per start.
const ELECTION_TICKS: std::ops::Range<usize> = 10..20;
/// Names in `hosts` are looked up again this often (a lookup blocks the control thread).
pub const STATIC_RESOLVE_MS: u64 = 2000;
/// Static `hosts` not yet seen by SWIM are announced to this often.
pub const STATIC_ANNOUNCE_MS: u64 = 500;
/// A multicast announcement this often.
pub const MCAST_ANNOUNCE_MS: u64 = 1000;
/// First bytes of a multicast announcement (followed by the sender's JSON [`Ident`]).
const MCAST_MAGIC: &[u8; 4] = b"SGD1";
/// Reconnect backoff to a peer: first wait and cap.
const BACKOFF_FIRST_MS: u64 = 50;
const BACKOFF_MAX_MS: u64 = 1000;
/// A TCP connect that has not completed in this long is abandoned.
const CONNECT_TIMEOUT_MS: u64 = 1000;
/// Bytes read from one socket per pass (a fast sender cannot starve the others).
const READ_BYTES_PER_PASS_MAX: usize = 4 << 20;
/// A dropped datagram is logged at most this often.
const BAD_DATAGRAM_LOG_MS: u64 = 10_000;
/// Datagrams handled per pass.
const DATAGRAMS_PER_PASS_MAX: usize = 256;
/// How long `query` waits for the other hosts' counters.
pub const QUERY_GATHER_TIMEOUT_MS: u64 = 1000;
/// How long `set --all` waits for the value to be committed.
const SET_TIMEOUT_MS: u64 = 5000;
/// An admin connection idle this long is closed.
const ADMIN_IDLE_MS: u64 = 60_000;
/// glommio's smallest io memory: the control thread's ring does timers only.
const IO_MEMORY_BYTES: usize = 64 << 10;

/// Lease timing for a store that must serve a killed host's partitions again within about
/// `failure_detection_ms` plus a commit.
///
/// The leader proposes a map that takes a failed host's partitions only once that host's last
/// lease has surely ended (`lease_ms + lease_margin_ms` after its last grant, which was before
/// it died). With the lease at a third of the detection budget it has always ended by the time
/// SWIM declares the host down, so failover waits for detection only. Shorter would cost more
/// renewals for nothing; much longer would add to the failover time. Renewing 4 times per
/// lease survives a lost request or two. The margin covers clock-rate drift between hosts
/// (10 % of a lease is far above real crystal drift).
pub fn lease_timing(failure_detection_ms: u64) -> (u64, u64, u64) {
    let lease_ms = failure_detection_ms / 3;
    let lease_margin_ms = lease_ms / 10;
    let lease_renew_ms = lease_ms / 4;
    assert!(
        lease_ms + lease_margin_ms < failure_detection_ms,
        "a dead host's lease ends before it is declared down"
    );
    assert!(
        lease_renew_ms * 2 < lease_ms,
        "renew at least twice per lease"
    );
    assert!(lease_renew_ms >= TICK_MS, "renewals happen on ticks");
    (lease_ms, lease_margin_ms, lease_renew_ms)
}

/// Binds `mgt_port` (TCP and UDP) on `net_interface` and starts the control-plane thread.
pub fn start(
    cfg: Arc<Config>,
    plane: Arc<Plane>,
    role: ControlRole,
) -> Result<ControlHandle, (i32, String)> {
    let ip = cfg.net_interface;
    let mgt = SocketAddr::new(ip.into(), cfg.mgt_port);
    let bind_err = |what: &str, e: io::Error| {
        (
            exit::BIND,
            format!(
                "cannot bind the management port {mgt} ({what}; mgt_port / net_interface): {e}. Is another stategrid using it? Choose another port with --set mgt_port=N"
            ),
        )
    };
    let listener = bind_tcp(mgt).map_err(|e| bind_err("TCP", e))?;
    let udp = bind_udp(mgt).map_err(|e| bind_err("UDP", e))?;
    udp.set_nonblocking(true)
        .map_err(|e| (exit::RUNTIME, format!("management UDP socket: {e}")))?;
    let static_hosts = swim::parse_hosts(&cfg.hosts, cfg.mgt_port)
        .map_err(|e| (exit::USAGE, format!("parameter hosts: {e}")))?;
    let mcast = if cfg.use_multicast {
        match join_multicast(&cfg, &udp) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(
                    "multicast discovery on {}:{} is unavailable ({e}); finding hosts through the hosts parameter only",
                    cfg.mcast_ip,
                    cfg.mgt_port
                );
                None
            }
        }
    } else {
        None
    };
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let thread = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .name("control")
        .io_memory(IO_MEMORY_BYTES)
        .spawn(move || async move {
            let mut ctl = Ctl::new(cfg, plane, role, listener, udp, mcast, static_hosts);
            ctl.run(&stop2).await;
        })
        .map_err(|e| {
            (
                exit::RUNTIME,
                format!("cannot start the control plane thread: {e}"),
            )
        })?;
    Ok(ControlHandle {
        stop,
        thread: Some(thread),
    })
}

fn bind_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    let s = Socket::new(Domain::IPV4, Type::STREAM.cloexec(), Some(Protocol::TCP))?;
    // SO_REUSEADDR only (a restart may bind while old connections linger in TIME_WAIT); no
    // SO_REUSEPORT, so a second process on the port fails here.
    s.set_reuse_address(true)?;
    s.bind(&addr.into())?;
    s.listen(128)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// A socket receiving the multicast group on `mgt_port`; also sets the unicast socket up to
/// send to the group on `net_interface` (loop on, TTL 1: the local network only).
/// The management UDP socket. SO_REUSEADDR so the multicast socket can bind the group's
/// address on the same port: without it, with `net_interface` 0.0.0.0 (the container image's
/// default), that bind failed with EADDRINUSE and multicast discovery was off. The TCP
/// listener on the same port (bound first, without it) still keeps a second host off the port.
fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM.cloexec(), Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.bind(&addr.into())?;
    Ok(s.into())
}

fn join_multicast(cfg: &Config, udp: &UdpSocket) -> io::Result<UdpSocket> {
    let group = SocketAddr::new(cfg.mcast_ip.into(), cfg.mgt_port);
    let s = Socket::new(Domain::IPV4, Type::DGRAM.cloexec(), Some(Protocol::UDP))?;
    // Several hosts on one machine share the group's port.
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.bind(&group.into())?;
    s.join_multicast_v4(&cfg.mcast_ip, &cfg.net_interface)?;
    s.set_nonblocking(true)?;
    udp.set_multicast_loop_v4(true)?;
    udp.set_multicast_ttl_v4(1)?;
    socket2::SockRef::from(udp).set_multicast_if_v4(&cfg.net_interface)?;
    Ok(s.into())
}

/// The address other hosts reach this one at: `net_interface`, or, when that is 0.0.0.0 (every
/// address; the container image's default), the address the kernel would send from toward the
/// multicast group, i.e. the interface of the default route. Found by connecting a UDP socket,
/// which sends nothing.
fn advertised_ip(cfg: &Config) -> Ipv4Addr {
    if !cfg.net_interface.is_unspecified() {
        return cfg.net_interface;
    }
    let found = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .and_then(|s| {
            s.connect((cfg.mcast_ip, cfg.mgt_port))?;
            s.local_addr()
        })
        .ok()
        .and_then(|a| match a.ip() {
            std::net::IpAddr::V4(ip) if !ip.is_unspecified() => Some(ip),
            _ => None,
        });
    match found {
        Some(ip) => {
            tracing::info!("net_interface is 0.0.0.0: advertising {ip} to other hosts");
            ip
        }
        None => {
            tracing::warn!(
                "net_interface is 0.0.0.0 and no route tells this host's address: other hosts cannot reach it; set net_interface to this host's address"
            );
            cfg.net_interface
        }
    }
}

/// A nonblocking TCP connect from `net_interface` (so peers see the configured address).
fn connect_nonblocking(local: Ipv4Addr, to: SocketAddr) -> io::Result<TcpStream> {
    let s = Socket::new(Domain::IPV4, Type::STREAM.cloexec(), Some(Protocol::TCP))?;
    s.set_nonblocking(true)?;
    s.set_tcp_nodelay(true)?;
    s.bind(&SocketAddr::new(local.into(), 0).into())?;
    match s.connect(&to.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(s.into())
}

/// Whether a nonblocking connect finished: `Ok(true)` connected, `Ok(false)` still going.
fn connect_done(s: &TcpStream) -> io::Result<bool> {
    if let Some(e) = s.take_error()? {
        return Err(e);
    }
    Ok(s.peer_addr().is_ok())
}

/// Random bits for the host id and the RNG seeds: the kernel's, else time and pid.
fn entropy() -> u64 {
    let mut b = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_ok()
    {
        return u64::from_le_bytes(b);
    }
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    t ^ ((std::process::id() as u64) << 32)
}

/// Reads what `s` has (up to a per-pass bound) into `buf`; `Ok(false)` when the peer closed.
fn read_some(s: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<bool> {
    let mut chunk = [0u8; 64 << 10];
    let mut total = 0;
    while total < READ_BYTES_PER_PASS_MAX {
        match s.read(&mut chunk) {
            Ok(0) => return Ok(false),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                total += n;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Writes what it can of `buf[*off..]`; clears `buf` once all is out.
fn write_some(s: &mut TcpStream, buf: &mut Vec<u8>, off: &mut usize) -> io::Result<()> {
    while *off < buf.len() {
        match s.write(&buf[*off..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => *off += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.clear();
    *off = 0;
    Ok(())
}

/// An accepted management connection.
struct Conn {
    stream: TcpStream,
    from: SocketAddr,
    kind: Option<ConnKind>,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    out_off: usize,
    /// An admin request is being answered: read no further request meanwhile.
    busy: bool,
    last_ms: u64,
    /// When the unfinished bytes at the front of `inbuf` began waiting for the rest.
    partial_since_ms: Option<u64>,
    closing: bool,
    /// A peer connection's cluster-key handshake (`auth::peer`): frames are decoded only
    /// once the peer is proven, and must then come from the proven host.
    auth: PeerAuth,
}

/// Where an accepted peer connection is in the cluster-key handshake.
enum PeerAuth {
    /// No cluster key: the sender id in each frame is believed (loopback-only stores).
    Open,
    Responder(Box<Responder>),
    Proven(HostId),
}

/// The outgoing connection to one peer.
struct Link {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    connected: bool,
    since_ms: u64,
    out: Vec<u8>,
    out_off: usize,
    backoff_ms: u64,
    next_attempt_ms: u64,
    /// With a cluster key: our side of the handshake until the peer has proven itself;
    /// frames wait in `held` meanwhile, the peer's challenge arrives in `inbuf`.
    init: Option<Initiator>,
    held: Vec<u8>,
    inbuf: Vec<u8>,
}

/// An outgoing admin request to another host (gathering counters, forwarding `set`).
struct Call {
    stream: Option<TcpStream>,
    connected: bool,
    out: Vec<u8>,
    out_off: usize,
    inbuf: Vec<u8>,
    deadline_ms: u64,
    result: Option<Result<Value, String>>,
}

/// An admin request waiting for something before it can be answered.
enum Op {
    Query {
        conn: u64,
        reply: QueryReply,
        calls: Vec<(usize, u64)>,
        deadline_ms: u64,
    },
    Leave {
        conn: u64,
        deadline_ms: u64,
    },
    Set {
        conn: u64,
        name: String,
        value: String,
        calls: Vec<u64>,
        deadline_ms: u64,
    },
}

struct Ctl {
    cfg: Arc<Config>,
    plane: Arc<Plane>,
    role: ControlRole,
    me: HostId,
    node_cfg: NodeConfig,
    node: Option<ClusterNode>,
    swim: Swim,
    listener: TcpListener,
    udp: UdpSocket,
    mcast: Option<UdpSocket>,
    mcast_warned: bool,
    /// When a datagram was last dropped for a bad seal with a log line (rate-limited).
    bad_datagram_logged_ms: Option<u64>,
    static_hosts: Vec<swim::HostSpec>,
    /// What `static_hosts` resolved to last (this host's own address left out).
    static_addrs: Vec<SocketAddr>,
    next_resolve_ms: u64,
    conns: BTreeMap<u64, Conn>,
    links: BTreeMap<HostId, Link>,
    calls: BTreeMap<u64, Call>,
    ops: Vec<Op>,
    next_id: u64,
    started_ms: u64,
    next_tick_ms: u64,
    next_static_ms: u64,
    next_mcast_ms: u64,
    next_prune_ms: u64,
    wants_store: bool,
    inputs: VecDeque<Input>,
    last_epoch: u64,
    /// The store-wide parameters last handed to the shards (see [`DataCmd::SetParam`]).
    params_applied: std::collections::BTreeMap<String, String>,
}

impl Ctl {
    fn new(
        cfg: Arc<Config>,
        plane: Arc<Plane>,
        role: ControlRole,
        listener: TcpListener,
        udp: UdpSocket,
        mcast: Option<UdpSocket>,
        static_hosts: Vec<swim::HostSpec>,
    ) -> Ctl {
        let mut rng = StdRng::seed_from_u64(entropy());
        let me = HostId(rng.random_range(1..u64::MAX));
        let addr = HostAddr {
            ip: advertised_ip(&cfg),
            mgt_port: cfg.mgt_port,
            svr_port: cfg.svr_port,
            int_port: cfg.int_port,
        };
        let (lease_ms, lease_margin_ms, lease_renew_ms) = lease_timing(cfg.failure_detection_ms);
        let witness = role == ControlRole::Witness;
        let node_cfg = NodeConfig {
            id: me,
            addr: addr.to_string(),
            weight: if witness { 0 } else { cfg.store_weight },
            witness,
            max_replicas: cfg.max_replicas,
            tick_ms: TICK_MS,
            election_ticks: rng.random_range(ELECTION_TICKS),
            heartbeat_ticks: HEARTBEAT_TICKS,
            lease_ms,
            lease_margin_ms,
            lease_renew_ms,
        };
        let wants_store = cfg.auto_join;
        let mut flags = 0;
        if wants_store {
            flags |= FLAG_WANTS_STORE;
        }
        if witness {
            flags |= FLAG_WITNESS;
        }
        let started_wall_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let ident = Ident {
            id: me.0,
            mgt: addr.mgt(),
            started_ms: started_wall_ms,
            generation: 0,
            flags,
        };
        let foca_cfg = swim::foca_config(cfg.failure_detection_ms, static_hosts.len() as u32 + 1);
        let swim = Swim::new(ident, foca_cfg, rng.random());
        let now = now_ms();
        tracing::info!(
            "control plane of host {} on {} ({:?}): {} static hosts, multicast {}",
            admin::id_text(me),
            addr,
            role,
            static_hosts.len(),
            if mcast.is_some() { "on" } else { "off" }
        );
        Ctl {
            cfg,
            plane,
            role,
            me,
            node_cfg,
            node: None,
            swim,
            listener,
            udp,
            mcast,
            mcast_warned: false,
            bad_datagram_logged_ms: None,
            static_hosts,
            static_addrs: Vec::new(),
            next_resolve_ms: 0,
            conns: BTreeMap::new(),
            links: BTreeMap::new(),
            calls: BTreeMap::new(),
            ops: Vec::new(),
            next_id: 0,
            started_ms: now,
            next_tick_ms: now,
            next_static_ms: now,
            next_mcast_ms: now,
            next_prune_ms: now,
            wants_store,
            inputs: VecDeque::new(),
            last_epoch: 0,
            params_applied: std::collections::BTreeMap::new(),
        }
    }

    async fn run(&mut self, stop: &AtomicBool) {
        while !stop.load(Ordering::Acquire) {
            self.pass();
            glommio::timer::sleep(Duration::from_millis(POLL_MS)).await;
        }
        // Leave politely: peers mark us down now instead of after the detection time.
        let now = now_ms();
        self.swim.leave(now);
        self.send_datagrams();
        for (_, l) in self.links.iter_mut() {
            if let Some(s) = l.stream.as_mut() {
                let _ = write_some(s, &mut l.out, &mut l.out_off);
            }
        }
        tracing::info!("control plane stopped");
    }

    fn pass(&mut self) {
        let now = now_ms();
        self.recv_datagrams(now);
        self.swim.on_time(now);
        self.swim_events();
        self.discovery(now);
        self.accept(now);
        self.read_conns(now);
        if now >= self.next_tick_ms {
            self.next_tick_ms = (self.next_tick_ms + TICK_MS).max(now);
            self.tick(now);
        }
        self.drain_inputs(now);
        self.progress_calls(now);
        self.progress_ops(now);
        self.flush_conns(now);
        self.progress_links(now);
        self.send_datagrams();
        if now >= self.next_prune_ms {
            self.next_prune_ms = now + 1000;
            self.prune_links();
        }
    }

    // ---- SWIM and discovery ----------------------------------------------------------

    /// With a cluster key, seals an outgoing datagram (`auth::peer`); else returns it as is.
    fn seal(&self, body: Vec<u8>) -> Vec<u8> {
        match &self.cfg.peer_key {
            Some(k) => k.seal(&body, peer::wall_ms()),
            None => body,
        }
    }

    /// With a cluster key, checks an incoming datagram's seal and returns its body; a
    /// datagram that fails is dropped before it is decoded, with a log line now and then.
    fn open<'a>(&mut self, dgram: &'a [u8], from: SocketAddr, now: u64) -> Option<&'a [u8]> {
        let Some(k) = &self.cfg.peer_key else {
            return Some(dgram);
        };
        match k.open(dgram, peer::wall_ms()) {
            Ok(body) => Some(body),
            Err(e) => {
                if self
                    .bad_datagram_logged_ms
                    .is_none_or(|t| now >= t + BAD_DATAGRAM_LOG_MS)
                {
                    self.bad_datagram_logged_ms = Some(now);
                    tracing::warn!("datagram from {from} dropped: {e}");
                }
                None
            }
        }
    }

    fn recv_datagrams(&mut self, now: u64) {
        let mut buf = [0u8; 2048];
        for _ in 0..DATAGRAMS_PER_PASS_MAX {
            match self.udp.recv_from(&mut buf) {
                Ok((n, from)) => {
                    if let Some(body) = self.open(&buf[..n], from, now) {
                        self.swim.on_datagram(body, from, now)
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::debug!("management UDP receive: {e}");
                    break;
                }
            }
        }
        let mut heard = Vec::new();
        for _ in 0..DATAGRAMS_PER_PASS_MAX {
            let Some(m) = &self.mcast else { break };
            {
                match m.recv_from(&mut buf) {
                    Ok((n, from)) => {
                        let Some(d) = self.open(&buf[..n], from, now) else {
                            continue;
                        };
                        match d
                            .strip_prefix(MCAST_MAGIC)
                            .and_then(|b| serde_json::from_slice::<Ident>(b).ok())
                        {
                            Some(i) => heard.push(i),
                            None => tracing::debug!("multicast datagram from {from} ignored"),
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        tracing::debug!("multicast receive: {e}");
                        break;
                    }
                }
            }
        }
        for i in heard {
            let known = self.swim.live().any(|l| l.mgt == i.mgt);
            if i.id != self.me.0 && !known {
                self.swim.announce(i.mgt, now);
            }
        }
    }

    fn send_datagrams(&mut self) {
        for (to, data) in self.swim.take_sends() {
            let data = self.seal(data);
            if let Err(e) = self.udp.send_to(&data, to) {
                tracing::debug!("swim datagram to {to}: {e}");
            }
        }
    }

    fn swim_events(&mut self) {
        for e in self.swim.take_events() {
            let (host, event) = match e {
                swim::SwimEvent::Up(i) => {
                    tracing::info!("host {} at {} is up", admin::id_text(i.host()), i.mgt);
                    (i.host(), MemberEvent::Up)
                }
                swim::SwimEvent::Down(h) => {
                    tracing::warn!("host {} is down", admin::id_text(h));
                    (h, MemberEvent::Down)
                }
            };
            self.inputs.push_back(Input::Member { host, event });
        }
    }

    fn discovery(&mut self, now: u64) {
        if now >= self.next_resolve_ms && !self.static_hosts.is_empty() {
            // Names are looked up again now and then: a container named in `hosts` may start
            // later, or come back with another address.
            self.next_resolve_ms = now + STATIC_RESOLVE_MS;
            let me = self.swim.me().mgt;
            let bound = SocketAddr::new(self.cfg.net_interface.into(), self.cfg.mgt_port);
            let mut addrs = Vec::new();
            for spec in &self.static_hosts {
                let found = spec.resolve();
                if found.is_empty() {
                    tracing::debug!(
                        "hosts entry {}:{} does not resolve (yet)",
                        spec.host,
                        spec.port
                    );
                }
                addrs.extend(found.into_iter().filter(|a| *a != me && *a != bound));
            }
            addrs.sort();
            addrs.dedup();
            self.static_addrs = addrs;
        }
        if now >= self.next_static_ms {
            self.next_static_ms = now + STATIC_ANNOUNCE_MS;
            let unseen: Vec<SocketAddr> = self
                .static_addrs
                .iter()
                .copied()
                .filter(|a| !self.swim.live().any(|l| l.mgt == *a))
                .collect();
            for a in unseen {
                self.swim.announce(a, now);
            }
        }
        if now >= self.next_mcast_ms && self.mcast.is_some() {
            self.next_mcast_ms = now + MCAST_ANNOUNCE_MS;
            let mut d = MCAST_MAGIC.to_vec();
            d.extend_from_slice(&serde_json::to_vec(self.swim.me()).expect("ident encodes"));
            let d = self.seal(d);
            let group = SocketAddrV4::new(self.cfg.mcast_ip, self.cfg.mgt_port);
            if let Err(e) = self.udp.send_to(&d, group)
                && !self.mcast_warned
            {
                self.mcast_warned = true;
                tracing::warn!(
                    "cannot send multicast announcements to {group} ({e}); finding hosts through the hosts parameter only"
                );
            }
        }
        if self.node.is_some() {
            return;
        }
        if !self.wants_store {
            return; // auto_join 0: wait for `stategrid join`
        }
        let found: Vec<Ident> = self.swim.live().copied().collect();
        let can_discover = self.mcast.is_some() || !self.static_hosts.is_empty();
        let decision = swim::decide_start(
            self.swim.me(),
            &found,
            now - self.started_ms,
            self.cfg.discovery_wait_ms,
            can_discover,
        );
        match decision {
            Start::Wait => {}
            Start::Bootstrap => {
                tracing::info!(
                    "no store found among {} hosts: creating one (host {} has the lowest id)",
                    found.len(),
                    admin::id_text(self.me)
                );
                self.node = Some(ClusterNode::bootstrap(self.node_cfg.clone(), now));
                self.after_node_created(&found, now);
            }
            Start::Join => {
                tracing::info!("joining the store found through SWIM");
                self.node = Some(ClusterNode::joining(self.node_cfg.clone()));
                self.inputs.push_back(Input::Join);
                self.after_node_created(&found, now);
            }
        }
    }

    fn after_node_created(&mut self, found: &[Ident], now: u64) {
        // The node missed the SWIM reports so far: replay the live hosts.
        for i in found {
            self.inputs.push_front(Input::Member {
                host: i.host(),
                event: MemberEvent::Up,
            });
        }
        self.drain_inputs(now);
        self.update_flags(now);
    }

    fn update_flags(&mut self, now: u64) {
        let mut flags = 0;
        if self.wants_store {
            flags |= FLAG_WANTS_STORE;
        }
        if self.role == ControlRole::Witness {
            flags |= FLAG_WITNESS;
        }
        if self
            .node
            .as_ref()
            .is_some_and(|n| n.state().host(self.me).is_some())
        {
            flags |= FLAG_IN_STORE;
        }
        self.swim.set_flags(flags, now);
    }

    // ---- the Raft node -----------------------------------------------------------------

    fn tick(&mut self, now: u64) {
        for e in self.plane.take_events() {
            match e {
                DataEvent::MigrationDone { partition } => {
                    self.inputs.push_back(Input::MigrationDone { partition })
                }
                DataEvent::Leave => {
                    if self.node.is_some() && self.role == ControlRole::Host {
                        self.inputs.push_back(Input::Leave);
                    }
                }
            }
        }
        self.inputs.push_back(Input::Tick);
        self.drain_inputs(now);
        if let Some(n) = &self.node {
            let (epoch, until) = n.lease();
            self.plane.set_lease(epoch, until);
        }
        self.hand_down_params();
    }

    /// Hands store-wide parameters the log changed (or that a joining host found in its
    /// snapshot) to every shard. Cost per tick: one map comparison of a few entries.
    fn hand_down_params(&mut self) {
        let Some(n) = &self.node else {
            return;
        };
        let changed: Vec<(String, String)> = n
            .state()
            .params
            .iter()
            .filter(|(k, v)| {
                k.as_str() != "max_replicas" && self.params_applied.get(*k) != Some(*v)
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (name, value) in changed {
            tracing::info!("store-wide parameter {name} = {value} (set --all)");
            for shard in 0..self.plane.shards() {
                self.plane.push_cmd(
                    shard,
                    DataCmd::SetParam {
                        name: name.clone(),
                        value: value.clone(),
                    },
                );
            }
            self.params_applied.insert(name, value);
        }
    }

    fn drain_inputs(&mut self, now: u64) {
        while let Some(input) = self.inputs.pop_front() {
            let Some(node) = self.node.as_mut() else {
                self.inputs.clear();
                return;
            };
            let outs = node.handle(now, input);
            for o in outs {
                self.output(o, now);
            }
        }
        let in_store = self
            .node
            .as_ref()
            .is_some_and(|n| n.state().host(self.me).is_some());
        if in_store != self.swim.me().has(FLAG_IN_STORE) {
            self.update_flags(now);
        }
    }

    fn output(&mut self, o: Output, now: u64) {
        match o {
            Output::Send { to, msg } => self.send_peer(to, &msg, now),
            Output::Installed(map) => {
                let mine = map.primaries_of(self.me);
                tracing::info!(
                    "installed map epoch {} ({} hosts): {} primaries here",
                    map.epoch,
                    map.hosts.len(),
                    mine
                );
                self.last_epoch = map.epoch;
                self.plane.publish(View {
                    me: self.me,
                    epoch: map.epoch,
                    hosts: map.hosts.clone(),
                    owners: map.owners.clone(),
                    primary_since: Vec::new(), // filled in by publish
                });
            }
            Output::Migrate {
                partition,
                from,
                epoch,
            } => {
                let shard = partition as usize % self.plane.shards();
                self.plane.push_cmd(
                    shard,
                    DataCmd::Pull {
                        partition,
                        from,
                        epoch,
                    },
                );
            }
            Output::Expelled => {
                let msg = format!(
                    "this host ({}) was declared failed by the store and cannot serve again under its id; exiting with code 1. Restart it (a supervisor should) and it joins as a new, empty member",
                    admin::id_text(self.me)
                );
                tracing::error!("{msg}");
                eprintln!("stategrid: {msg}");
                std::process::exit(exit::RUNTIME);
            }
        }
    }

    // ---- peer transport ----------------------------------------------------------------

    fn peer_addr(&self, to: HostId) -> Option<SocketAddr> {
        self.swim.addr_of(to).or_else(|| {
            let node = self.node.as_ref()?;
            let st = node.state();
            let a: HostAddr = st.host(to)?.addr.parse().ok()?;
            Some(a.mgt())
        })
    }

    fn send_peer(&mut self, to: HostId, msg: &PeerMsg, now: u64) {
        let Some(addr) = self.peer_addr(to) else {
            tracing::debug!(
                "no address for host {}: message dropped",
                admin::id_text(to)
            );
            return;
        };
        let link = self.links.entry(to).or_insert_with(|| Link {
            addr,
            stream: None,
            connected: false,
            since_ms: now,
            out: Vec::new(),
            out_off: 0,
            backoff_ms: BACKOFF_FIRST_MS,
            next_attempt_ms: now,
            init: None,
            held: Vec::new(),
            inbuf: Vec::new(),
        });
        if link.stream.is_none() {
            if now < link.next_attempt_ms {
                return; // backing off: dropped, Raft retransmits
            }
            link.addr = addr;
            match connect_nonblocking(self.cfg.net_interface, addr) {
                Ok(s) => {
                    link.stream = Some(s);
                    link.connected = false;
                    link.since_ms = now;
                    link.out.clear();
                    link.out_off = 0;
                    link.out.extend_from_slice(&wire::PEER_MAGIC);
                    link.held.clear();
                    link.inbuf.clear();
                    link.init = None;
                    // Any host of the store may answer (a restarted host has a new id on
                    // the old address), as without a key.
                    if let Some(key) = &self.cfg.peer_key {
                        let (init, hello) = Initiator::start(key, self.me.0, None);
                        link.out.extend_from_slice(&hello);
                        link.init = Some(init);
                    }
                }
                Err(e) => {
                    tracing::debug!("connect to {addr}: {e}");
                    link.next_attempt_ms = now + link.backoff_ms;
                    link.backoff_ms = (link.backoff_ms * 2).min(BACKOFF_MAX_MS);
                    return;
                }
            }
        }
        let frame = wire::encode_frame(self.me, msg);
        // Outgoing bytes queued for one peer: room for the largest frame twice; more are
        // dropped (Raft retransmits).
        let queue_max = 2 * self.cfg.mgt_frame_bytes_max as usize;
        if link.out.len() + link.held.len() + frame.len() > queue_max {
            tracing::debug!("queue to {addr} full: message dropped");
            return;
        }
        if link.init.is_some() {
            link.held.extend_from_slice(&frame);
        } else {
            link.out.extend_from_slice(&frame);
        }
    }

    fn progress_links(&mut self, now: u64) {
        for (id, l) in self.links.iter_mut() {
            let Some(s) = l.stream.as_mut() else { continue };
            let r = if l.connected {
                write_some(s, &mut l.out, &mut l.out_off)
            } else {
                match connect_done(s) {
                    Ok(true) => {
                        l.connected = true;
                        l.backoff_ms = BACKOFF_FIRST_MS;
                        write_some(s, &mut l.out, &mut l.out_off)
                    }
                    Ok(false) if now > l.since_ms + CONNECT_TIMEOUT_MS => {
                        Err(io::ErrorKind::TimedOut.into())
                    }
                    Ok(false) => Ok(()),
                    Err(e) => Err(e),
                }
            };
            // The peer's challenge: answer it, then release what waited.
            let r = r.and_then(|()| match &l.init {
                Some(init) if l.connected => {
                    let s = l.stream.as_mut().expect("checked above");
                    if !read_some(s, &mut l.inbuf)? {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                    match init.on_challenge(&l.inbuf) {
                        Ok(None) => Ok(()),
                        Ok(Some((proof, _))) => {
                            l.init = None;
                            l.inbuf = Vec::new();
                            l.out.extend_from_slice(&proof);
                            l.out.append(&mut l.held);
                            write_some(s, &mut l.out, &mut l.out_off)
                        }
                        Err(e) => {
                            tracing::warn!("management link to {} refused: {e}", l.addr);
                            Err(io::ErrorKind::PermissionDenied.into())
                        }
                    }
                }
                _ => Ok(()),
            });
            if let Err(e) = r {
                tracing::debug!("link to {} ({}): {e}", admin::id_text(*id), l.addr);
                l.stream = None;
                l.connected = false;
                l.out.clear();
                l.out_off = 0;
                l.held.clear();
                l.inbuf.clear();
                l.init = None;
                l.next_attempt_ms = now + l.backoff_ms;
                l.backoff_ms = (l.backoff_ms * 2).min(BACKOFF_MAX_MS);
            }
        }
    }

    /// Links only to hosts SWIM or the store still knows: the table stays bounded.
    fn prune_links(&mut self) {
        let known: BTreeSet<HostId> = self
            .node
            .as_ref()
            .map(|n| {
                n.state()
                    .hosts
                    .iter()
                    .filter(|h| h.state != HostState::Failed)
                    .map(|h| h.id)
                    .collect()
            })
            .unwrap_or_default();
        let live: BTreeSet<HostId> = self.swim.live().map(|i| i.host()).collect();
        self.links
            .retain(|id, _| known.contains(id) || live.contains(id));
    }

    // ---- the management listener -------------------------------------------------------

    fn accept(&mut self, now: u64) {
        loop {
            match self.listener.accept() {
                Ok((stream, from)) => {
                    let max = self.cfg.mgt_connections_max as usize;
                    if self.conns.len() >= max {
                        tracing::warn!(
                            "management connection from {from} refused: mgt_connections_max ({max}) already open"
                        );
                        continue;
                    }
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    self.next_id += 1;
                    self.conns.insert(
                        self.next_id,
                        Conn {
                            stream,
                            from,
                            kind: None,
                            inbuf: Vec::new(),
                            out: Vec::new(),
                            out_off: 0,
                            busy: false,
                            last_ms: now,
                            partial_since_ms: None,
                            closing: false,
                            auth: PeerAuth::Open,
                        },
                    );
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::debug!("accept on the management port: {e}");
                    break;
                }
            }
        }
    }

    fn read_conns(&mut self, now: u64) {
        let frame_max = self.cfg.mgt_frame_bytes_max as usize;
        let frame_timeout_ms = self.cfg.frame_timeout_ms;
        let me = self.me.0;
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        for cid in ids {
            let mut requests = Vec::new();
            let mut frames = Vec::new();
            let mut close: Option<String> = None;
            {
                let c = self.conns.get_mut(&cid).expect("listed");
                if c.closing {
                    continue;
                }
                match read_some(&mut c.stream, &mut c.inbuf) {
                    Ok(true) => {}
                    Ok(false) => close = Some(String::new()),
                    Err(e) => close = Some(format!("read failed: {e}")),
                }
                if c.inbuf.is_empty() && close.is_none() {
                    // An idle admin connection, or one that never said what it speaks, holds
                    // one of `mgt_connections_max` slots: closed after a while.
                    let unproven =
                        c.kind != Some(ConnKind::Peer) || matches!(c.auth, PeerAuth::Responder(_));
                    if unproven && !c.busy && now > c.last_ms + ADMIN_IDLE_MS {
                        close = Some(String::new());
                    }
                } else {
                    c.last_ms = now;
                }
                // A frame left half-sent holds its bytes: as on svr_port, not for ever.
                if c.inbuf.is_empty() || c.busy {
                    c.partial_since_ms = None;
                } else if now > *c.partial_since_ms.get_or_insert(now) + frame_timeout_ms {
                    close = Some(format!(
                        "a frame was left half-sent for over frame_timeout_ms ({frame_timeout_ms} ms)"
                    ));
                }
                if c.kind.is_none() && close.is_none() {
                    match wire::classify(&c.inbuf) {
                        Ok(Some(ConnKind::Peer)) => {
                            c.kind = Some(ConnKind::Peer);
                            c.inbuf.drain(..wire::PEER_MAGIC.len());
                            if let Some(key) = &self.cfg.peer_key {
                                c.auth = PeerAuth::Responder(Box::new(Responder::new(key, me)));
                            }
                        }
                        Ok(Some(ConnKind::Admin)) => c.kind = Some(ConnKind::Admin),
                        Ok(None) => {}
                        Err(e) => close = Some(e.to_string()),
                    }
                }
                if c.kind == Some(ConnKind::Peer) && close.is_none() {
                    // Nothing is decoded before the peer proves it holds the cluster key.
                    while let PeerAuth::Responder(r) = &mut c.auth {
                        match r.on_bytes(&c.inbuf) {
                            Ok(peer::Step::More) => break,
                            Ok(peer::Step::Send { used, bytes }) => {
                                c.inbuf.drain(..used);
                                c.out.extend_from_slice(&bytes);
                            }
                            Ok(peer::Step::Done { used, peer }) => {
                                c.inbuf.drain(..used);
                                c.auth = PeerAuth::Proven(HostId(peer));
                            }
                            Err(e) => {
                                close = Some(format!("host handshake failed: {e}"));
                                break;
                            }
                        }
                    }
                }
                let proven = match c.auth {
                    PeerAuth::Proven(h) => Some(h),
                    PeerAuth::Open | PeerAuth::Responder(_) => None,
                };
                // Still proving (or refused): decode nothing.
                let decodable = !matches!(c.auth, PeerAuth::Responder(_)) && close.is_none();
                match c.kind {
                    Some(ConnKind::Peer) if decodable => {
                        let mut used = 0;
                        loop {
                            match wire::decode_frame(&c.inbuf[used..], frame_max) {
                                Ok(Some((from, _, _))) if proven.is_some_and(|h| h != from) => {
                                    close = Some(format!(
                                        "a frame claims to come from host {} but this connection proved it is host {}",
                                        admin::id_text(from),
                                        admin::id_text(proven.expect("checked"))
                                    ));
                                    break;
                                }
                                Ok(Some((from, msg, n))) => {
                                    used += n;
                                    frames.push((from, msg));
                                }
                                Ok(None) => break,
                                Err(e) => {
                                    close = Some(e.to_string());
                                    break;
                                }
                            }
                        }
                        c.inbuf.drain(..used);
                    }
                    Some(ConnKind::Peer) => {}
                    Some(ConnKind::Admin) => {
                        if !c.busy
                            && let Some(nl) = c.inbuf.iter().position(|&b| b == b'\n')
                        {
                            let line: Vec<u8> = c.inbuf.drain(..=nl).collect();
                            requests.push(line);
                            c.busy = true;
                        } else if c.inbuf.len() > wire::ADMIN_LINE_BYTES_MAX {
                            close = Some(format!(
                                "admin request longer than {} bytes",
                                wire::ADMIN_LINE_BYTES_MAX
                            ));
                        }
                    }
                    None => {}
                }
            }
            for (from, msg) in frames {
                if self.node.is_some() {
                    self.inputs.push_back(Input::Peer { from, msg });
                }
            }
            self.drain_inputs(now);
            for line in requests {
                self.admin_request(cid, &line, now);
            }
            if let Some(why) = close {
                if let Some(c) = self.conns.remove(&cid)
                    && !why.is_empty()
                {
                    tracing::warn!("management connection from {} closed: {why}", c.from);
                }
            }
        }
    }

    fn flush_conns(&mut self, _now: u64) {
        let mut dead = Vec::new();
        for (id, c) in self.conns.iter_mut() {
            if c.out.is_empty() {
                continue;
            }
            if write_some(&mut c.stream, &mut c.out, &mut c.out_off).is_err() {
                dead.push(*id);
            }
        }
        for id in dead {
            self.conns.remove(&id);
        }
    }

    fn answer(&mut self, conn: u64, line: String) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.out.extend_from_slice(line.as_bytes());
            c.busy = false;
        }
    }

    // ---- admin -------------------------------------------------------------------------

    fn admin_request(&mut self, conn: u64, line: &[u8], now: u64) {
        let req: Request = match serde_json::from_slice(line) {
            Ok(r) => r,
            Err(e) => {
                let msg = format!(
                    "not an admin request ({e}); expected one JSON object per line such as {{\"cmd\":\"query\"}}"
                );
                return self.answer(conn, admin::error_line(msg));
            }
        };
        // Changes need an admin user when client users are configured (the argon2 check
        // runs here, on the control thread, not on a shard).
        let auth: admin::AdminAuth = serde_json::from_slice(line).unwrap_or_default();
        if let Err(msg) = admin::authorize(self.cfg.users.as_deref(), &req, &auth) {
            tracing::info!("refused an admin request: {msg}");
            return self.answer(conn, admin::error_line(msg));
        }
        match req {
            Request::Local => {
                let r = self.local_reply();
                self.answer(conn, admin::ok_line(r));
            }
            Request::Query => self.start_query(conn, now),
            Request::Join => {
                if self.node.is_some() {
                    let state = self
                        .node
                        .as_ref()
                        .and_then(|n| n.state().host(self.me).map(|h| h.state));
                    let state = match state {
                        // A host that left takes its share again.
                        Some(HostState::Leaving) => {
                            self.inputs.push_back(Input::Join);
                            "rejoining"
                        }
                        Some(_) => "member",
                        None => "joining",
                    };
                    return self.answer(conn, admin::ok_line(serde_json::json!({"state": state})));
                }
                self.wants_store = true;
                self.update_flags(now);
                self.answer(
                    conn,
                    admin::ok_line(serde_json::json!({"state": "joining"})),
                );
            }
            Request::Leave { wait, timeout_ms } => {
                if self.node.is_none() || self.role == ControlRole::Witness {
                    let msg = if self.node.is_none() {
                        "this host is not in a store: nothing to leave"
                    } else {
                        "a witness holds no partitions: stop it with SIGTERM instead"
                    };
                    return self.answer(conn, admin::error_line(msg));
                }
                self.inputs.push_back(Input::Leave);
                self.drain_inputs(now);
                let left = self.partitions_held();
                if !wait {
                    return self.answer(
                        conn,
                        admin::ok_line(serde_json::json!({"partitions_left": left, "done": false})),
                    );
                }
                let timeout_ms = timeout_ms.min(admin::LEAVE_TIMEOUT_MAX_MS);
                self.ops.push(Op::Leave {
                    conn,
                    deadline_ms: now + timeout_ms,
                });
            }
            Request::Set { name, value } => self.start_set(conn, name, value, auth, now),
            Request::SetLocal { name, value } => {
                if let Err(msg) = check_settable(&name, &value) {
                    return self.answer(conn, admin::error_line(msg));
                }
                if self.node.is_some() {
                    self.inputs.push_back(Input::SetParam { name, value });
                    self.drain_inputs(now);
                }
                self.answer(conn, admin::ok_line(serde_json::json!({})));
            }
        }
    }

    fn local_reply(&self) -> LocalReply {
        let objects = self
            .plane
            .counters
            .iter()
            .map(|c| c.objects.load(Ordering::Relaxed))
            .sum();
        let memory_bytes = self
            .plane
            .counters
            .iter()
            .map(|c| c.memory_bytes.load(Ordering::Relaxed))
            .sum();
        let node = self.node.as_ref();
        LocalReply {
            id: admin::id_text(self.me),
            member: node.is_some_and(|n| n.state().host(self.me).is_some()),
            epoch: node.map_or(0, |n| n.map().epoch),
            leader: node.is_some_and(|n| n.is_leader()),
            objects,
            memory_bytes,
        }
    }

    /// Partitions whose owners name this host in any role.
    fn partitions_held(&self) -> usize {
        let Some(n) = self.node.as_ref() else {
            return 0;
        };
        n.map()
            .owners
            .iter()
            .filter(|o| o.role_of(self.me).is_some())
            .count()
    }

    fn start_query(&mut self, conn: u64, now: u64) {
        let local = self.local_reply();
        let Some(node) = self.node.as_ref() else {
            let reply = QueryReply {
                me: local.id,
                member: false,
                epoch: 0,
                leader: None,
                hosts: Vec::new(),
            };
            return self.answer(conn, admin::ok_line(reply));
        };
        let map = node.map().clone();
        let st = node.state();
        let mut hosts = Vec::new();
        let mut targets = Vec::new();
        for h in &st.hosts {
            let (mut primaries, mut replicas, mut pending) = (0, 0, 0);
            for o in &map.owners {
                if o.primary() == Some(h.id) {
                    primaries += 1;
                } else {
                    match o.role_of(h.id) {
                        Some(Role::Full) => replicas += 1,
                        Some(Role::Pending) => pending += 1,
                        _ => {}
                    }
                }
            }
            let me = h.id == self.me;
            hosts.push(HostReport {
                id: admin::id_text(h.id),
                addr: h.addr.clone(),
                state: admin::state_text(h.state).to_owned(),
                primaries,
                replicas,
                pending,
                answered: me,
                objects: me.then_some(local.objects),
                memory_bytes: me.then_some(local.memory_bytes),
                leader: me && local.leader,
            });
            if !me
                && h.state != HostState::Failed
                && let Ok(a) = h.addr.parse::<HostAddr>()
            {
                targets.push((hosts.len() - 1, a.mgt()));
            }
        }
        drop(st);
        let leader = local.leader.then(|| local.id.clone());
        let reply = QueryReply {
            me: local.id,
            member: local.member,
            epoch: map.epoch,
            leader,
            hosts,
        };
        debug_assert_eq!(map.owners.len(), PARTITIONS);
        let deadline_ms = now + QUERY_GATHER_TIMEOUT_MS;
        let calls = targets
            .into_iter()
            .map(|(i, a)| (i, self.start_call(a, &Request::Local, deadline_ms)))
            .collect();
        self.ops.push(Op::Query {
            conn,
            reply,
            calls,
            deadline_ms,
        });
    }

    fn start_set(
        &mut self,
        conn: u64,
        name: String,
        value: String,
        auth: admin::AdminAuth,
        now: u64,
    ) {
        if let Err(msg) = check_settable(&name, &value) {
            return self.answer(conn, admin::error_line(msg));
        }
        let Some(node) = self.node.as_ref() else {
            return self.answer(
                conn,
                admin::error_line("this host is not in a store yet; run `stategrid join` first"),
            );
        };
        // Only the leader proposes: hand the request to every host, ourselves included.
        let others: Vec<SocketAddr> = node
            .state()
            .hosts
            .iter()
            .filter(|h| h.id != self.me && h.state != HostState::Failed)
            .filter_map(|h| h.addr.parse::<HostAddr>().ok().map(|a| a.mgt()))
            .collect();
        let deadline_ms = now + SET_TIMEOUT_MS;
        let req = Request::SetLocal {
            name: name.clone(),
            value: value.clone(),
        };
        let calls = others
            .into_iter()
            .map(|a| self.start_call_as(a, &req, &auth, deadline_ms))
            .collect();
        self.inputs.push_back(Input::SetParam {
            name: name.clone(),
            value: value.clone(),
        });
        self.drain_inputs(now);
        self.ops.push(Op::Set {
            conn,
            name,
            value,
            calls,
            deadline_ms,
        });
    }

    fn start_call(&mut self, to: SocketAddr, req: &Request, deadline_ms: u64) -> u64 {
        self.start_call_as(to, req, &admin::AdminAuth::default(), deadline_ms)
    }

    /// Starts an admin call to another host carrying `auth` (a `set`'s own credentials,
    /// forwarded with its `set_local`).
    fn start_call_as(
        &mut self,
        to: SocketAddr,
        req: &Request,
        auth: &admin::AdminAuth,
        deadline_ms: u64,
    ) -> u64 {
        self.next_id += 1;
        let mut out = admin::request_line(req, auth).into_bytes();
        out.push(b'\n');
        let (stream, result) = match connect_nonblocking(self.cfg.net_interface, to) {
            Ok(s) => (Some(s), None),
            Err(e) => (None, Some(Err(format!("cannot connect to {to}: {e}")))),
        };
        self.calls.insert(
            self.next_id,
            Call {
                stream,
                connected: false,
                out,
                out_off: 0,
                inbuf: Vec::new(),
                deadline_ms,
                result,
            },
        );
        self.next_id
    }

    fn progress_calls(&mut self, now: u64) {
        for c in self.calls.values_mut() {
            if c.result.is_some() {
                continue;
            }
            let Some(s) = c.stream.as_mut() else { continue };
            let step = (|| -> io::Result<Option<Value>> {
                if !c.connected {
                    if !connect_done(s)? {
                        return Ok(None);
                    }
                    c.connected = true;
                }
                write_some(s, &mut c.out, &mut c.out_off)?;
                let open = read_some(s, &mut c.inbuf)?;
                if let Some(nl) = c.inbuf.iter().position(|&b| b == b'\n') {
                    let v: Value = serde_json::from_slice(&c.inbuf[..nl])
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                    return Ok(Some(v));
                }
                if !open {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                if c.inbuf.len() > wire::ADMIN_LINE_BYTES_MAX {
                    return Err(io::ErrorKind::InvalidData.into());
                }
                Ok(None)
            })();
            match step {
                Ok(Some(v)) => c.result = Some(Ok(v)),
                Ok(None) if now >= c.deadline_ms => c.result = Some(Err("no answer".into())),
                Ok(None) => {}
                Err(e) => c.result = Some(Err(e.to_string())),
            }
            if c.result.is_some() {
                c.stream = None;
            }
        }
    }

    fn call_result(&self, id: u64) -> Option<&Result<Value, String>> {
        self.calls.get(&id).and_then(|c| c.result.as_ref())
    }

    fn progress_ops(&mut self, now: u64) {
        let ops = std::mem::take(&mut self.ops);
        for op in ops {
            match op {
                Op::Query {
                    conn,
                    mut reply,
                    calls,
                    deadline_ms,
                } => {
                    let done = calls.iter().all(|(_, c)| self.call_result(*c).is_some());
                    if !done && now < deadline_ms {
                        self.ops.push(Op::Query {
                            conn,
                            reply,
                            calls,
                            deadline_ms,
                        });
                        continue;
                    }
                    for (i, c) in &calls {
                        if let Some(Ok(v)) = self.call_result(*c)
                            && let Ok(l) = serde_json::from_value::<LocalReply>(v.clone())
                        {
                            let h = &mut reply.hosts[*i];
                            h.answered = true;
                            h.objects = Some(l.objects);
                            h.memory_bytes = Some(l.memory_bytes);
                            h.leader = l.leader;
                            if l.leader {
                                reply.leader = Some(l.id);
                            }
                        }
                        self.calls.remove(c);
                    }
                    self.answer(conn, admin::ok_line(reply));
                }
                Op::Leave { conn, deadline_ms } => {
                    let held = self.partitions_held();
                    let leaving = self.node.as_ref().is_none_or(|n| {
                        n.state()
                            .host(self.me)
                            .is_none_or(|h| h.state != HostState::Active)
                    });
                    if (held == 0 && leaving) || now >= deadline_ms {
                        let done = held == 0 && leaving;
                        self.answer(
                            conn,
                            admin::ok_line(
                                serde_json::json!({"partitions_left": held, "done": done}),
                            ),
                        );
                    } else {
                        self.ops.push(Op::Leave { conn, deadline_ms });
                    }
                }
                Op::Set {
                    conn,
                    name,
                    value,
                    calls,
                    deadline_ms,
                } => {
                    let committed = self
                        .node
                        .as_ref()
                        .is_some_and(|n| n.state().params.get(&name).is_some_and(|v| *v == value));
                    if committed || now >= deadline_ms {
                        for c in &calls {
                            self.calls.remove(c);
                        }
                        let line = if committed {
                            tracing::info!("parameter {name} set to {value} store-wide");
                            admin::ok_line(serde_json::json!({"name": name, "value": value}))
                        } else {
                            admin::error_line(format!(
                                "{name} = {value} was not committed within {SET_TIMEOUT_MS} ms: the store has no leader (see `stategrid query`); try again"
                            ))
                        };
                        self.answer(conn, line);
                    } else {
                        self.ops.push(Op::Set {
                            conn,
                            name,
                            value,
                            calls,
                            deadline_ms,
                        });
                    }
                }
            }
        }
        // Calls whose op is gone (its connection closed) still end by their deadline.
        self.calls
            .retain(|_, c| c.result.is_none() || now < c.deadline_ms);
    }
}

/// Refuses parameters that cannot change store-wide at runtime, and invalid values.
fn check_settable(name: &str, value: &str) -> Result<(), String> {
    if !admin::SETTABLE_PARAMS.contains(&name) {
        return Err(format!(
            "{name} cannot be set store-wide while the store runs; settable: {}. Set others in each host's params file and restart it",
            admin::SETTABLE_PARAMS.join(", ")
        ));
    }
    let mut c = Config::default();
    c.set(name, value, crate::config::Source::Set)
        .map_err(|e| e.to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_timing_fits_failover_budget() {
        for ms in [300, 1500, 60_000] {
            let (lease, margin, renew) = lease_timing(ms);
            assert!(lease + margin < ms && renew * 2 < lease, "{ms}");
        }
        assert_eq!(lease_timing(1500), (500, 50, 125));
    }

    #[test]
    fn only_known_params_are_settable() {
        assert!(check_settable("max_replicas", "2").is_ok());
        let e = check_settable("max_replicas", "9").unwrap_err();
        assert!(e.contains("0 to 2"), "{e}");
        let e = check_settable("svr_port", "1").unwrap_err();
        assert!(e.contains("settable: max_replicas"), "{e}");
    }
}
