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
//! - **Data plane**: every installed map is published as a [`View`], the lease when it changes,
//!   migrations go down as [`DataCmd::Pull`], finished ones come up as events.
//!
//! # Why one thread that sleeps in `epoll` (mio)
//! One plain thread (unpinned: the shards own the CPUs) owns everything: nonblocking std
//! sockets, the node, the timers. It sleeps in [`mio::Poll`] until a socket is ready, the
//! [`Waker`] rings (a name lookup answered, shutdown), or the next deadline comes: the next
//! Raft tick that does something (a heartbeat, an election timer, a lease renewal: ticks in
//! between only count and are delivered late, in a row), a SWIM timer, or [`SLEEP_MS_MAX`]
//! (every other deadline here is coarser and checked on any pass). An idle follower so
//! wakes for the leader's heartbeats, and its renewals ride on those wake-ups; the leader
//! for its heartbeats and the answers (measured in perf/RESULTS.md, "idle CPU"). Each
//! wake-up runs one pass over the
//! handful of sockets (microseconds): no per-socket dispatch, so a socket can never be
//! forgotten, and one owner means a loop that reads top to bottom. mio is edge-triggered, so
//! a pass that stopped reading a socket at a per-pass bound runs again at once instead of
//! sleeping. Before (until issue 11) the thread polled every socket every 2 ms on a glommio
//! timer: 500 wake-ups a second on an idle host, up to 2 ms per hop.
//!
//! Name lookups (the `hosts` list) never run here: a slow name server would stall Raft ticks
//! and lease renewals. They run on [`super::resolver`]'s thread and come back as events.
//!
//! A host the store declares failed (`Output::Expelled`) cannot serve under its id again: its
//! objects and log are gone from the store's point of view. It rejoins in-process as a new,
//! empty member (`Ctl::rejoin`), or with `rejoin_in_process 0` exits with code 1
//! for a supervisor to restart.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use rand_foca::rngs::StdRng;
use rand_foca::{RngExt, SeedableRng};
use serde_json::Value;
use socket2::{Domain, Protocol, Socket, Type};

use super::admin::{self, HostReport, LocalReply, QueryReply, Request};
use super::map::{HostId, HostState, PARTITIONS, Role};
use super::mgt_tls::{MgtTls, Stream, TLS_HANDSHAKE_BYTE};
use super::node::{ClusterNode, Input, MemberEvent, NodeConfig, Output, PeerMsg};
use super::plane::{DataCmd, DataEvent, HostAddr, Plane, View, now_ms};
use super::resolver::Resolver;
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
    /// Wakes the loop out of its poll so it sees `stop` at once.
    waker: Arc<Waker>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ControlHandle {
    /// Leaves SWIM politely (peers see this host down at once), stops the thread, joins it.
    pub fn shutdown(mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.waker.wake();
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
        let _ = self.waker.wake();
    }
}

/// The poll token of the [`Waker`]; every TCP stream shares [`SOCKET`] (a wake-up runs a pass
/// over all of them, so which one woke us does not matter). The listener and the datagram
/// sockets have their own: a pass touches them only when they are ready, since every
/// `accept4` or `recvfrom` that finds nothing is a wasted syscall (an `accept4` even
/// allocates a socket inode before it says `EAGAIN`), and an idle host passes 30-90 times a
/// second.
const WAKER: Token = Token(0);
const SOCKET: Token = Token(1);
const LISTENER: Token = Token(2);
const UDP: Token = Token(3);
const MCAST: Token = Token(4);
/// Readiness events taken per poll (more wait for the next one, which comes at once).
const EVENTS_MAX: usize = 256;
/// Raft tick: one `Input::Tick` per tick. With the heartbeat every 2 ticks these are most of
/// an idle host's wake-ups (25 heartbeats and 50 ticks a second; each costs a context switch
/// and a pass), so the tick is no finer than the timeouts below need.
pub const TICK_MS: u64 = 20;
/// The longest the loop sleeps: how late the coarse deadlines (announcements, reconnect
/// backoffs, admin timeouts, idle connections) may be noticed. Raft and the lease sleep less.
const SLEEP_MS_MAX: u64 = 100;
/// Ticks delivered at once after a sleep at most (a host paused for seconds gets this many,
/// enough to run any election timer out, not a burst of thousands).
const TICKS_OWED_MAX: u64 = 16;
/// Raft heartbeat, in ticks (40 ms: 2.5 to 5 per election timeout).
const HEARTBEAT_TICKS: usize = 2;
/// Raft election timeout range in ticks (100-200 ms): drawn once per start.
const ELECTION_TICKS: std::ops::Range<usize> = 5..10;
/// Names in `hosts` are looked up again this often (on the resolver's thread).
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

/// Lease timing for a store that must serve a killed host's partitions again within about
/// `failure_detection_ms` plus a commit.
///
/// The leader proposes a map that takes a failed host's partitions only once that host's last
/// lease has surely ended (`lease_ms + lease_margin_ms` after its last grant, which was before
/// it died). With the lease at a third of the detection budget it has always ended by the time
/// SWIM declares the host down, so failover waits for detection only. Shorter would cost more
/// renewals for nothing; much longer would add to the failover time. Renewing 4 times per
/// lease survives a lost request or two, which is what a leader's death costs (a renewal
/// may also go a little early, riding on a wake-up the host has anyway, and wait up to a
/// heartbeat for the leader's round: see `ClusterNode::ticks_quiet`). `/ 3` was tried: the
/// leader-death test lost leases on a loaded machine. The margin covers clock-rate drift between hosts
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
    let runtime_err = |what: &str, e: io::Error| {
        (
            exit::RUNTIME,
            format!("cannot start the control plane ({what}): {e}"),
        )
    };
    let poll = Poll::new().map_err(|e| runtime_err("epoll", e))?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER).map_err(|e| runtime_err("waker", e))?);
    let register = |s: &dyn std::os::fd::AsRawFd, token| {
        poll.registry()
            .register(&mut SourceFd(&s.as_raw_fd()), token, Interest::READABLE)
            .map_err(|e| runtime_err("epoll", e))
    };
    register(&listener, LISTENER)?;
    register(&udp, UDP)?;
    if let Some(m) = &mcast {
        register(m, MCAST)?;
    }
    let dns_waker = waker.clone();
    let resolver = Resolver::start(Box::new(move || {
        let _ = dns_waker.wake();
    }))
    .map_err(|e| runtime_err("name lookup thread", e))?;
    let tls = MgtTls::from_config(&cfg).map_err(|e| (exit::USAGE, format!("tls_cluster: {e}")))?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let thread = std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            let io = Io {
                poll,
                resolver,
                tls,
            };
            let mut ctl = Ctl::new(cfg, plane, role, listener, udp, mcast, static_hosts, io);
            ctl.run(&stop2);
        })
        .map_err(|e| runtime_err("thread", e))?;
    Ok(ControlHandle {
        stop,
        waker,
        thread: Some(thread),
    })
}

/// A SWIM member for host `me`, started now (a newer start wins an address conflict, so a
/// host that rejoins under a new id replaces its old identity at once).
fn new_swim(
    cfg: &Config,
    me: HostId,
    mgt: SocketAddr,
    flags: u8,
    statics: usize,
    seed: u64,
) -> Swim {
    let started_wall_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let ident = Ident {
        id: me.0,
        mgt,
        started_ms: started_wall_ms,
        generation: 0,
        flags,
    };
    let foca_cfg = swim::foca_config(cfg.failure_detection_ms, statics as u32 + 1);
    Swim::new(ident, foca_cfg, seed)
}

/// Registers a TCP stream with the loop's poll: every stream shares one token (see [`SOCKET`]).
/// A closed socket leaves epoll by itself (each is its only descriptor), so nothing
/// deregisters.
fn watch(poll: &Poll, s: &impl std::os::fd::AsRawFd, interest: Interest) -> io::Result<()> {
    poll.registry()
        .register(&mut SourceFd(&s.as_raw_fd()), SOCKET, interest)
}

/// A TCP stream is watched for both directions: readable for bytes, writable for a
/// finished connect and for room after a full send buffer (edge-triggered: one event each).
const STREAM: Interest = Interest::READABLE.add(Interest::WRITABLE);

/// What the last poll said may be readable (see [`LISTENER`]).
#[derive(Clone, Copy)]
struct Ready {
    listener: bool,
    udp: bool,
    mcast: bool,
    streams: bool,
}

impl Ready {
    /// At start and after a pass that stopped at a per-pass bound: look at everything.
    const ALL: Ready = Ready {
        listener: true,
        udp: true,
        mcast: true,
        streams: true,
    };

    fn add(&mut self, token: Token) {
        match token {
            LISTENER => self.listener = true,
            UDP => self.udp = true,
            MCAST => self.mcast = true,
            SOCKET => self.streams = true,
            _ => {}
        }
    }
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

/// A nonblocking TCP connect from `net_interface` (so peers see the configured address),
/// watched by the loop's `poll` (its completion is a writable event).
fn connect_nonblocking(poll: &Poll, local: Ipv4Addr, to: SocketAddr) -> io::Result<TcpStream> {
    let s = Socket::new(Domain::IPV4, Type::STREAM.cloexec(), Some(Protocol::TCP))?;
    s.set_nonblocking(true)?;
    s.set_tcp_nodelay(true)?;
    s.bind(&SocketAddr::new(local.into(), 0).into())?;
    match s.connect(&to.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let s: TcpStream = s.into();
    watch(poll, &s, STREAM)?;
    Ok(s)
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
/// Sets `capped` when it stopped at the bound with bytes possibly left: readiness is
/// edge-triggered, so the loop must then pass again without waiting for a new event.
fn read_some(s: &mut impl Read, buf: &mut Vec<u8>, capped: &mut bool) -> io::Result<bool> {
    // 16 KiB on the stack per call: zeroing a 64 KiB chunk on every pass over every socket
    // was the idle loop's largest cost after the context switch itself (perf, issue 11).
    let mut chunk = [0u8; 16 << 10];
    let mut total = 0;
    loop {
        if total >= READ_BYTES_PER_PASS_MAX {
            *capped = true;
            break;
        }
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
fn write_some(s: &mut impl Write, buf: &mut Vec<u8>, off: &mut usize) -> io::Result<()> {
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
    stream: Stream,
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
    stream: Option<Stream>,
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

/// An outgoing admin request to another host (gathering counters, forwarding `set`): TLS
/// under the store CA with `tls_cluster 1`, as the peer links are.
struct Call {
    stream: Option<Stream>,
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

/// The loop's own I/O machinery, made on the caller's thread so that failures are reported
/// by [`start`].
struct Io {
    poll: Poll,
    resolver: Resolver,
    /// `tls_cluster 1`: peer links in both directions are mutual TLS.
    tls: Option<MgtTls>,
}

impl Io {
    /// Opens a connection from `local` to another host's `mgt_port` (a peer link or an admin
    /// call): nonblocking, watched by the poll, TLS under the store CA with `tls_cluster 1`.
    fn dial(&self, local: Ipv4Addr, to: SocketAddr) -> io::Result<Stream> {
        let s = connect_nonblocking(&self.poll, local, to)?;
        match &self.tls {
            Some(tls) => tls.connect(s, to.ip()),
            None => Ok(Stream::Plain(s)),
        }
    }
}

struct Ctl {
    cfg: Arc<Config>,
    io: Io,
    /// A pass stopped reading some socket at a per-pass bound: pass again without sleeping.
    capped: bool,
    plane: Arc<Plane>,
    role: ControlRole,
    me: HostId,
    node_cfg: NodeConfig,
    node: Option<ClusterNode>,
    swim: Swim,
    listener: TcpListener,
    udp: UdpSocket,
    mcast: Option<UdpSocket>,
    /// Which sockets may have something to read (edge-triggered: set by an event, cleared
    /// when a read finds nothing).
    ready: Ready,
    mcast_warned: bool,
    /// When a datagram was last dropped for a bad seal with a log line (rate-limited).
    bad_datagram_logged_ms: Option<u64>,
    static_hosts: Vec<swim::HostSpec>,
    /// What each entry of `static_hosts` resolved to last (IP literals at once, names as the
    /// resolver answers).
    static_resolved: Vec<Vec<SocketAddr>>,
    /// All of `static_resolved`, this host's own address left out.
    static_addrs: Vec<SocketAddr>,
    next_resolve_ms: u64,
    conns: BTreeMap<u64, Conn>,
    links: BTreeMap<HostId, Link>,
    calls: BTreeMap<u64, Call>,
    ops: Vec<Op>,
    next_id: u64,
    started_ms: u64,
    next_tick_ms: u64,
    /// The lease last handed to the shards.
    published_lease: (u64, u64),
    next_static_ms: u64,
    next_mcast_ms: u64,
    next_prune_ms: u64,
    wants_store: bool,
    inputs: VecDeque<Input>,
    last_epoch: u64,
    /// The store-wide parameters last handed to the shards (see [`DataCmd::SetParam`]).
    params_applied: std::collections::BTreeMap<String, String>,
    /// The node said the store declared this host failed: rejoin once its outputs are out.
    expelled: bool,
}

impl Ctl {
    #[allow(clippy::too_many_arguments)]
    fn new(
        cfg: Arc<Config>,
        plane: Arc<Plane>,
        role: ControlRole,
        listener: TcpListener,
        udp: UdpSocket,
        mcast: Option<UdpSocket>,
        static_hosts: Vec<swim::HostSpec>,
        io: Io,
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
        let swim = new_swim(
            &cfg,
            me,
            addr.mgt(),
            flags,
            static_hosts.len(),
            rng.random(),
        );
        let now = now_ms();
        tracing::info!(
            "control plane of host {} on {} ({:?}): {} static hosts, multicast {}",
            admin::id_text(me),
            addr,
            role,
            static_hosts.len(),
            if mcast.is_some() { "on" } else { "off" }
        );
        let static_resolved = static_hosts
            .iter()
            .map(|h| h.literal().into_iter().collect())
            .collect();
        Ctl {
            cfg,
            io,
            capped: false,
            plane,
            role,
            me,
            node_cfg,
            node: None,
            swim,
            listener,
            udp,
            mcast,
            ready: Ready::ALL,
            mcast_warned: false,
            bad_datagram_logged_ms: None,
            static_hosts,
            static_resolved,
            static_addrs: Vec::new(),
            next_resolve_ms: 0,
            conns: BTreeMap::new(),
            links: BTreeMap::new(),
            calls: BTreeMap::new(),
            ops: Vec::new(),
            next_id: 0,
            started_ms: now,
            next_tick_ms: now,
            published_lease: (0, 0),
            next_static_ms: now,
            next_mcast_ms: now,
            next_prune_ms: now,
            wants_store,
            inputs: VecDeque::new(),
            last_epoch: 0,
            params_applied: std::collections::BTreeMap::new(),
            expelled: false,
        }
    }

    fn run(&mut self, stop: &AtomicBool) {
        let mut events = Events::with_capacity(EVENTS_MAX);
        while !stop.load(Ordering::Acquire) {
            self.pass();
            let now = now_ms();
            let timeout_ms = if self.capped {
                0
            } else {
                self.next_deadline_ms(now).saturating_sub(now)
            };
            debug_assert!(timeout_ms <= SLEEP_MS_MAX, "coarse deadlines are checked");
            // Which sockets are ready does not matter: the next pass looks at all of them.
            match self
                .io
                .poll
                .poll(&mut events, Some(Duration::from_millis(timeout_ms)))
            {
                Ok(()) => {
                    for e in events.iter() {
                        self.ready.add(e.token());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => self.ready = Ready::ALL,
                Err(e) => {
                    self.ready = Ready::ALL;
                    // Cannot happen with a valid epoll descriptor; never spin on it.
                    tracing::error!("control plane poll failed: {e}");
                    std::thread::sleep(Duration::from_millis(TICK_MS));
                }
            }
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

    /// When the loop must wake at the latest: the tick Raft needs next (a heartbeat to send,
    /// an election timer to run out: [`ClusterNode::ticks_quiet`]), the tick a lease
    /// renewal needs, a SWIM timer, or [`SLEEP_MS_MAX`] from now. Ticks in between only
    /// count; they are delivered, in a row, by the next pass ([`Self::pass`]). So an idle
    /// follower wakes for the leader's heartbeats (and rides its renewals on them), not for
    /// every tick. Without a node (before joining) every tick wakes the loop.
    fn next_deadline_ms(&self, now: u64) -> u64 {
        let tick = self.next_tick_ms;
        let at_tick = |t: u64| tick + t.saturating_sub(tick).div_ceil(TICK_MS) * TICK_MS;
        let node = match &self.node {
            Some(n) => {
                let raft = tick + (n.ticks_quiet().min(TICKS_OWED_MAX) - 1) * TICK_MS;
                raft.min(at_tick(n.duty_due_ms().unwrap_or(0)))
            }
            None => tick,
        };
        let due = node.min(now + SLEEP_MS_MAX);
        let slack_ms = HEARTBEAT_TICKS as u64 * TICK_MS;
        self.swim
            .next_timer_ms(slack_ms)
            .map_or(due, |t| t.min(due))
    }

    fn pass(&mut self) {
        let now = now_ms();
        if self.capped {
            // The last pass left bytes or datagrams behind: no new edge announces them.
            self.ready = Ready::ALL;
        }
        self.capped = false;
        // Ticks first: they stand for time that passed before what arrived since.
        if now >= self.next_tick_ms {
            let owed = ((now - self.next_tick_ms) / TICK_MS + 1).min(TICKS_OWED_MAX);
            self.next_tick_ms = (self.next_tick_ms + owed * TICK_MS).max(now);
            self.tick(now, owed);
        }
        self.take_resolved(now);
        self.recv_datagrams(now);
        self.swim.on_time(now);
        self.swim_events();
        self.discovery(now);
        self.accept(now);
        self.read_conns(now);
        self.drain_inputs(now);
        self.publish_lease();
        self.progress_calls(now);
        self.progress_ops(now);
        self.flush_conns(now);
        self.progress_links(now);
        self.ready.streams = false;
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

    /// With a cluster key, checks an incoming datagram's seal and returns its body (decrypted:
    /// one copy); a datagram that fails is dropped before it is decoded, with a log line now
    /// and then.
    fn open<'a>(
        &mut self,
        dgram: &'a [u8],
        from: SocketAddr,
        now: u64,
    ) -> Option<std::borrow::Cow<'a, [u8]>> {
        let Some(k) = &self.cfg.peer_key else {
            return Some(dgram.into());
        };
        match k.open(dgram, peer::wall_ms()) {
            Ok(body) => Some(body.into()),
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
        // Edge-triggered readiness: a socket still holding datagrams at the per-pass bound
        // needs another pass at once, not a new event.
        let mut drained = !self.ready.udp;
        for _ in 0..DATAGRAMS_PER_PASS_MAX {
            if drained {
                break;
            }
            match self.udp.recv_from(&mut buf) {
                Ok((n, from)) => {
                    if let Some(body) = self.open(&buf[..n], from, now) {
                        self.swim.on_datagram(&body, from, now)
                    }
                }
                Err(e) => {
                    if e.kind() != io::ErrorKind::WouldBlock {
                        tracing::debug!("management UDP receive: {e}");
                    }
                    drained = true;
                    self.ready.udp = false;
                    break;
                }
            }
        }
        let mut heard = Vec::new();
        let mut mcast_drained = self.mcast.is_none() || !self.ready.mcast;
        for _ in 0..DATAGRAMS_PER_PASS_MAX {
            if mcast_drained {
                break;
            }
            let Some(m) = &self.mcast else { break };
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
                Err(e) => {
                    if e.kind() != io::ErrorKind::WouldBlock {
                        tracing::debug!("multicast receive: {e}");
                    }
                    mcast_drained = true;
                    self.ready.mcast = false;
                    break;
                }
            }
        }
        if !drained || !mcast_drained {
            self.capped = true;
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
            // Names are looked up again now and then (a container named in `hosts` may start
            // later, or come back with another address), off this thread: the answers arrive
            // in `take_resolved`. A round still running is not doubled.
            self.next_resolve_ms = now + STATIC_RESOLVE_MS;
            let names: Vec<(usize, swim::HostSpec)> = self
                .static_hosts
                .iter()
                .enumerate()
                .filter(|(_, h)| h.literal().is_none())
                .map(|(i, h)| (i, h.clone()))
                .collect();
            self.io.resolver.ask(names, now);
            self.update_static_addrs();
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

    /// Takes the name lookups that came back and updates the static addresses.
    fn take_resolved(&mut self, now: u64) {
        let answers = self.io.resolver.take(now);
        if answers.is_empty() {
            return;
        }
        for (i, addrs) in answers {
            let Some(spec) = self.static_hosts.get(i) else {
                continue;
            };
            if addrs.is_empty() {
                tracing::debug!(
                    "hosts entry {}:{} does not resolve (yet)",
                    spec.host,
                    spec.port
                );
                // A name that stopped resolving keeps its last addresses: a lookup that
                // failed (a slow or unreachable name server) says nothing about the host.
                continue;
            }
            self.static_resolved[i] = addrs;
        }
        self.update_static_addrs();
    }

    fn update_static_addrs(&mut self) {
        let me = self.swim.me().mgt;
        let bound = SocketAddr::new(self.cfg.net_interface.into(), self.cfg.mgt_port);
        let mut addrs: Vec<SocketAddr> = self
            .static_resolved
            .iter()
            .flatten()
            .copied()
            .filter(|a| *a != me && *a != bound)
            .collect();
        addrs.sort();
        addrs.dedup();
        self.static_addrs = addrs;
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

    /// `ticks` Raft ticks (more than one after a sleep through quiet ticks), the data
    /// plane's events, store-wide parameters.
    fn tick(&mut self, now: u64, ticks: u64) {
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
        for _ in 0..ticks {
            self.inputs.push_back(Input::Tick);
        }
        self.drain_inputs(now);
        self.publish_lease();
        self.hand_down_params();
    }

    /// Hands the node's lease to the shards when a grant changed it (any pass may bring one).
    fn publish_lease(&mut self) {
        if let Some(n) = &self.node {
            let lease = n.lease();
            if lease != self.published_lease {
                self.published_lease = lease;
                self.plane.set_lease(lease.0, lease.1);
            }
        }
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
            if self.expelled {
                self.expelled = false;
                if !self.cfg.rejoin_in_process {
                    let msg = format!(
                        "this host ({}) was declared failed by the store and cannot serve again under its id; exiting with code 1. Restart it (a supervisor should) and it joins as a new, empty member (or set rejoin_in_process 1)",
                        admin::id_text(self.me)
                    );
                    tracing::error!("{msg}");
                    eprintln!("stategrid: {msg}");
                    std::process::exit(exit::RUNTIME);
                }
                self.rejoin(now);
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
            // Handled once this batch of outputs is out (`drain_inputs`).
            Output::Expelled => self.expelled = true,
        }
    }

    /// The store declared this host failed (after a pause or a network cut): it cannot
    /// serve again under its id, whose objects the store has replaced. Instead of exiting,
    /// the process becomes a new, empty member: a new id, its copies dropped, and a join like
    /// any new host, which gets partitions by migration. Its old id is never reused (it would
    /// let the host vote on a log it no longer follows; see `docs/cluster.md`, "Identity").
    fn rejoin(&mut self, now: u64) {
        let mut rng = StdRng::seed_from_u64(entropy());
        let old = self.me;
        let me = HostId(rng.random_range(1..u64::MAX));
        tracing::warn!(
            "this host ({}) was declared failed by the store and cannot serve under its id again: rejoining in-process as a new, empty member {} (its objects are dropped; it gets partitions by migration like any joining host)",
            admin::id_text(old),
            admin::id_text(me)
        );
        // Lease first, then a view that names the new id and owns nothing: the shards drop
        // every copy, fail the writes still waiting for replicas (retryable) and close
        // their links. Nothing here can serve as primary from now on.
        self.plane.set_lease(0, 0);
        self.published_lease = (0, 0);
        self.plane.publish(View {
            me,
            epoch: 0,
            hosts: Vec::new(),
            owners: vec![Default::default(); PARTITIONS],
            primary_since: Vec::new(),
        });
        // The old identity leaves SWIM (peers mark it down at once), the new one joins.
        self.swim.leave(now);
        self.send_datagrams();
        let mgt = self.swim.me().mgt;
        let flags = self.swim.me().flags & !FLAG_IN_STORE;
        self.swim = new_swim(
            &self.cfg,
            me,
            mgt,
            flags,
            self.static_hosts.len(),
            rng.random(),
        );
        self.me = me;
        self.node_cfg.id = me;
        self.node_cfg.election_ticks = rng.random_range(ELECTION_TICKS);
        self.node = None;
        self.inputs.clear();
        // Outgoing links proved the old id; peers' connections to us stay (they prove theirs).
        self.links.clear();
        self.last_epoch = 0;
        self.started_ms = now;
        self.next_static_ms = now;
        self.next_mcast_ms = now;
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
            match self.io.dial(self.cfg.net_interface, addr) {
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
        let mut capped = false;
        for (id, l) in self.links.iter_mut() {
            let Some(s) = l.stream.as_mut() else { continue };
            let r = if l.connected {
                write_some(s, &mut l.out, &mut l.out_off).and_then(|()| s.flush_tls())
            } else {
                match connect_done(s.tcp()) {
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
                    if !read_some(s, &mut l.inbuf, &mut capped)? {
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
        self.capped |= capped;
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
        while self.ready.listener {
            match self.listener.accept() {
                Ok((stream, from)) => {
                    let max = self.cfg.mgt_connections_max as usize;
                    if self.conns.len() >= max {
                        tracing::warn!(
                            "management connection from {from} refused: mgt_connections_max ({max}) already open"
                        );
                        continue;
                    }
                    if stream.set_nonblocking(true).is_err()
                        || watch(&self.io.poll, &stream, STREAM).is_err()
                    {
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    self.next_id += 1;
                    self.conns.insert(
                        self.next_id,
                        Conn {
                            stream: Stream::Plain(stream),
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
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.ready.listener = false,
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
            let mut upgrade = false;
            {
                let c = self.conns.get_mut(&cid).expect("listed");
                if c.closing {
                    continue;
                }
                // No stream event since the last pass: nothing new to read (edge-triggered;
                // a pass that stopped at the bound made this one look at everything).
                let read = if self.ready.streams {
                    read_some(&mut c.stream, &mut c.inbuf, &mut self.capped)
                } else {
                    Ok(true)
                };
                match read {
                    Ok(true) => {}
                    Ok(false) => close = Some(String::new()),
                    Err(e) => close = Some(format!("read failed: {e}")),
                }
                // A TLS handshake (tls_cluster): its first bytes are in `inbuf`; the
                // connection continues over TLS (below, after this block).
                if c.kind.is_none()
                    && close.is_none()
                    && !c.stream.is_tls()
                    && c.inbuf.first() == Some(&TLS_HANDSHAKE_BYTE)
                {
                    if self.io.tls.is_none() {
                        close = Some(
                            "a TLS handshake, but this host does not use tls_cluster: set the same tls_cluster on every host".into(),
                        );
                    } else {
                        upgrade = true;
                    }
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
                if c.kind.is_none() && close.is_none() && !upgrade {
                    match wire::classify(&c.inbuf) {
                        Ok(Some(ConnKind::Peer)) if self.io.tls.is_some() && !c.stream.is_tls() => {
                            close = Some(
                                "a host connected without TLS, but this store uses tls_cluster 1: set tls_cluster 1 and its certificate on that host".into(),
                            );
                        }
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
            } else if upgrade {
                self.upgrade_to_tls(cid);
            }
        }
    }

    /// Continues an accepted connection over TLS (tls_cluster): the handshake bytes read so
    /// far go to rustls, the rest comes through it. The next pass runs at once (the bytes
    /// already read raise no new readiness event).
    fn upgrade_to_tls(&mut self, cid: u64) {
        let (Some(tls), Some(mut c)) = (&self.io.tls, self.conns.remove(&cid)) else {
            return;
        };
        let Stream::Plain(tcp) = c.stream else {
            unreachable!("only a plaintext connection is upgraded")
        };
        let first = std::mem::take(&mut c.inbuf);
        match tls.accept(tcp, &first) {
            Ok(stream) => {
                c.stream = stream;
                c.partial_since_ms = None;
                self.conns.insert(cid, c);
                self.capped = true;
            }
            Err(e) => tracing::warn!(
                "management connection from {} closed: TLS handshake failed: {e}",
                c.from
            ),
        }
    }

    fn flush_conns(&mut self, _now: u64) {
        let mut dead = Vec::new();
        for (id, c) in self.conns.iter_mut() {
            if c.out.is_empty() && !c.stream.is_tls() {
                continue;
            }
            let r = write_some(&mut c.stream, &mut c.out, &mut c.out_off)
                .and_then(|()| c.stream.flush_tls());
            if r.is_err() {
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
        // With tls_cluster the other host's mgt_port takes the admin line inside TLS (it
        // tells a handshake from a line by the first byte), so the counters and the `set`
        // with its forwarded credentials cross the network encrypted.
        let (stream, result) = match self.io.dial(self.cfg.net_interface, to) {
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
        let mut capped = false;
        for c in self.calls.values_mut() {
            if c.result.is_some() {
                continue;
            }
            let Some(s) = c.stream.as_mut() else { continue };
            let step = (|| -> io::Result<Option<Value>> {
                if !c.connected {
                    if !connect_done(s.tcp())? {
                        return Ok(None);
                    }
                    c.connected = true;
                }
                write_some(s, &mut c.out, &mut c.out_off)?;
                s.flush_tls()?;
                let open = read_some(s, &mut c.inbuf, &mut capped)?;
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
        self.capped |= capped;
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
