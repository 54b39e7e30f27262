//! The worker: one pinned thread, one io_uring, many connections.
//!
//! HOT PATH. Each loop iteration costs exactly one system call, `io_uring_enter`, which
//! submits every send and receive queued since the last one and waits (with a timeout) for
//! completions; every completion then available is reaped in the same pass. Per connection at
//! most one receive and one send are in flight; all requests encoded during an iteration go out
//! in that connection's one send. The ring is SINGLE_ISSUER + DEFER_TASKRUN (see `sys`), so the
//! kernel runs completion work only inside that one call, never by interrupting the thread.
//!
//! Known ways to make it slower, to avoid: allocating per request (requests are encoded into
//! reused buffers; errors, which are rare, may allocate), logging per request, a second system
//! call per request (e.g. reading the clock through a syscall: `Instant::now` is a vDSO call,
//! taken once per iteration and shared by every completion reaped in it), touching shared
//! atomics per request (progress is published once per iteration with plain stores).

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use io_uring::{IoUring, opcode, squeue, types};
use rand::SeedableRng;
use rand::rngs::SmallRng;

use crate::cli::{Config, Protocol};
use crate::codec::{Codec, Memcache, Native, Parsed, Reply, Request, Resp, Status};
use crate::conn::{self, Conn};
use crate::stats::{
    self, ErrorKind, PHASE_DONE, PHASE_PREFILL, PHASE_RUNNING, Progress, ThreadStats, Tick,
};
use crate::sys;
use crate::tls::Tls;
use crate::workload::{
    KEY_BYTES, KeySampler, OpKind, Planned, Schedule, Session, Workload, session_after, write_key,
};

/// Stages the main thread moves the workers through.
pub const STAGE_WAIT: u64 = 0;
pub const STAGE_PREFILL: u64 = 1;
pub const STAGE_RUN: u64 = 2;
pub const STAGE_ABORT: u64 = 99;

/// Housekeeping (timeouts, deadline) runs at least this often, even when nothing completes.
const HOUSEKEEPING_NS: u64 = 100_000_000;
/// How often every connection is checked for a late reply (the timeout's resolution).
const SCAN_NS: u64 = 10_000_000;
/// How long the end of a run waits for the kernel to finish I/O on closed sockets.
const SHUTDOWN_DRAIN_NS: u64 = 1_000_000_000;
/// Connection failures printed per thread as they happen (all are counted and reported).
const FAILURES_PRINTED_MAX: u32 = 3;

const TAG_RECV: u64 = 1;
const TAG_SEND: u64 = 2;

/// What the main thread and the workers share. Nothing here is touched per request.
pub struct Shared {
    pub progress: Vec<Progress>,
    pub stage: AtomicU64,
    /// Workers that finished connecting (successfully or not).
    pub ready: AtomicUsize,
    /// Workers that finished the prefill.
    pub prefilled: AtomicUsize,
    /// Set when any worker could not connect; the run does not start.
    pub abort: AtomicBool,
    /// Start of the warm-up, nanoseconds since `base`, set before `STAGE_RUN`.
    pub start_ns: AtomicU64,
    /// A worker stopped at the hard deadline.
    pub deadline_hit: AtomicBool,
    /// Connection failures at start-up, in words.
    pub failures: Mutex<Vec<String>>,
}

impl Shared {
    pub fn new(threads: usize) -> Self {
        Shared {
            progress: (0..threads).map(|_| Progress::default()).collect(),
            stage: AtomicU64::new(STAGE_WAIT),
            ready: AtomicUsize::new(0),
            prefilled: AtomicUsize::new(0),
            abort: AtomicBool::new(false),
            start_ns: AtomicU64::new(0),
            deadline_hit: AtomicBool::new(false),
            failures: Mutex::new(Vec::new()),
        }
    }
}

pub struct WorkerSpec {
    pub index: usize,
    pub cfg: Arc<Config>,
    /// Every time in the run is nanoseconds since this instant.
    pub base: Instant,
    pub shared: Arc<Shared>,
    pub ticks: Sender<Tick>,
}

/// Runs one worker thread to the end and returns what it measured.
pub fn run_worker(spec: WorkerSpec) -> ThreadStats {
    let cfg = spec.cfg.clone();
    match cfg.protocol {
        Protocol::Native => Worker::run(
            spec,
            Native::new(&cfg.namespace, cfg.session_timeout_s).with_auth(cfg.auth.clone()),
        ),
        Protocol::Resp => Worker::run(
            spec,
            Resp::new(
                cfg.lock_timeout_s as u64 * 1000,
                cfg.session_timeout_s as u64 * 1000,
            )
            .with_auth(cfg.auth.clone()),
        ),
        Protocol::Memcache => Worker::run(
            spec,
            Memcache::new(cfg.lock_timeout_s as u64, cfg.session_timeout_s as u64),
        ),
    }
}

/// Where the next operations come from.
enum Source {
    /// Write keys `next, next + step, …` below `keys`, once each.
    Prefill { next: u64, step: u64, keys: u64 },
    /// Each slot sends its next request as soon as its reply arrives.
    Closed,
    /// Arrivals at fixed intervals take a free slot; `next` is the first arrival not yet sent.
    Open { schedule: Schedule, next: u64 },
}

/// The bounds of one phase, in nanoseconds since `base`.
struct Phase {
    source: Source,
    issuing: bool,
    /// Requests issued at or after this are measured (closed loop: issue time; open loop:
    /// intended time).
    measure_start_ns: u64,
    /// No request is issued at or after this (`u64::MAX` with `--requests`).
    measure_end_ns: u64,
    /// Measured requests this thread may still issue (`--requests`), else `u64::MAX`.
    quota: u64,
    hard_deadline_ns: u64,
    /// Set when issuing stops: replies still missing then are timeouts.
    drain_deadline_ns: u64,
}

/// One second of measured replies, flushed to the main thread when the second changes.
struct Second {
    second: u64,
    ops: u64,
    errors: u64,
    hist: hdrhistogram::Histogram<u64>,
}

// Field order matters for drop: the ring goes before the buffers it may still point into.
struct Worker<C: Codec> {
    ring: IoUring,
    conns: Vec<Conn>,
    index: usize,
    cfg: Arc<Config>,
    base: Instant,
    shared: Arc<Shared>,
    ticks: Sender<Tick>,
    codec: C,
    rng: SmallRng,
    workload: Workload,
    /// Value bytes: a write of n bytes sends the first n.
    value: Vec<u8>,
    key: [u8; KEY_BYTES],
    stats: ThreadStats,
    /// Connections with bytes to send, flushed once per iteration.
    flush: Vec<u32>,
    /// Open loop: idle (connection, slot) pairs, round-robin over connections.
    free: VecDeque<(u32, u32)>,
    cqes: Vec<(u64, i32)>,
    /// Requests sent and not yet answered.
    outstanding: usize,
    /// Replies received in any phase (progress line).
    done: u64,
    errors: u64,
    failures_printed: u32,
    /// When `housekeeping` next scans every connection.
    next_scan_ns: u64,
    /// The kernel knows IORING_RECVSEND_POLL_FIRST.
    poll_first: bool,
    phase: Phase,
    second: Option<Second>,
    /// Thread CPU time when the measured window opened.
    cpu_at_measure_start: Option<sys::CpuTime>,
    measured_end_ns: u64,
}

#[inline]
fn user_data(conn: usize, tag: u64) -> u64 {
    ((conn as u64) << 8) | tag
}

impl<C: Codec> Worker<C> {
    fn run(spec: WorkerSpec, codec: C) -> ThreadStats {
        let shared = spec.shared.clone();
        let index = spec.index;
        let progress = &shared.progress[index];
        let mut worker = match Self::setup(spec, codec) {
            Ok(w) => w,
            Err((msg, failed)) => {
                shared.failures.lock().unwrap().push(msg.clone());
                shared.abort.store(true, Ordering::SeqCst);
                shared.ready.fetch_add(1, Ordering::SeqCst);
                progress.phase.store(PHASE_DONE, Ordering::Relaxed);
                let mut s = ThreadStats::new();
                s.error(ErrorKind::ConnectFailed, failed, || msg);
                return s;
            }
        };
        shared.ready.fetch_add(1, Ordering::SeqCst);
        let stage = wait_stage(&shared, STAGE_PREFILL);
        if stage == STAGE_PREFILL && worker.cfg.prefill {
            progress.phase.store(PHASE_PREFILL, Ordering::Relaxed);
            worker.prefill();
        }
        shared.prefilled.fetch_add(1, Ordering::SeqCst);
        if stage != STAGE_ABORT && wait_stage(&shared, STAGE_RUN) == STAGE_RUN {
            progress.phase.store(PHASE_RUNNING, Ordering::Relaxed);
            worker.main_phase();
        }
        worker.shutdown();
        progress.phase.store(PHASE_DONE, Ordering::Relaxed);
        worker.stats
    }

    /// Pins the thread, builds the ring, connects and handshakes every connection. On failure:
    /// what went wrong in words, and how many connections that leaves unopened.
    fn setup(spec: WorkerSpec, mut codec: C) -> Result<Self, (String, u64)> {
        let cfg = spec.cfg.clone();
        let i = spec.index;
        let n = cfg.connections_per_thread;
        let all = n as u64;
        let cpu = cfg.cpu_of(i);
        sys::pin_current_thread(cpu)
            .map_err(|e| (format!("thread {i}: cannot pin to CPU {cpu}: {e}"), all))?;
        sys::tight_timer_slack();
        // Two entries per connection (one receive, one send) is the most ever queued.
        let entries = (2 * n + 16).next_power_of_two().max(64) as u32;
        let (ring, mode) = sys::build_ring(entries)
            .map_err(|e| (format!("thread {i}: io_uring_setup: {e}"), all))?;
        sys::check_ext_arg(&ring).map_err(|e| (e.to_string(), all))?;
        let depth = cfg.pipeline;
        let reply_bytes = cfg.value_size.max + 256;
        let recv_bytes = (depth * reply_bytes)
            .next_power_of_two()
            .clamp(64 << 10, 4 << 20);
        let send_bytes = depth * reply_bytes;
        let connect_timeout = Duration::from_secs_f64(cfg.connect_timeout_s);
        let mut conns = Vec::with_capacity(n);
        // Shard-aware: per target, the shard count its first connection learned; connection c
        // then asks for shard c mod that count, so connections spread evenly over the shards.
        let mut target_shards: Vec<Option<u32>> = vec![None; cfg.target_addrs.len()];
        for c in 0..n {
            let t = cfg.target_of(i, c);
            let addr = cfg.target_addrs[t];
            if cfg.shard_aware {
                let shards = target_shards[t].unwrap_or(1);
                codec.ask_shard(Some(((c + i) % shards as usize) as u32));
            }
            let left = (n - c) as u64;
            let mut s = conn::connect(addr, connect_timeout).map_err(|e| {
                (
                    format!("cannot connect to {addr} (thread {i}, connection {c}): {e}"),
                    left,
                )
            })?;
            let mut tls = match &cfg.tls {
                Some(config) => Some(Box::new(
                    Tls::handshake(&mut s, config.clone(), addr, connect_timeout)
                        .map_err(|e| (format!("{addr} (thread {i}, connection {c}): {e}"), left))?,
                )),
                None => None,
            };
            let session = tls.as_deref_mut().map(|t| &mut t.session);
            conn::handshake(&mut s, session, &mut codec, connect_timeout)
                .map_err(|e| (format!("{addr} (thread {i}, connection {c}): {e}"), left))?;
            let mut conn = Conn::new(t, s, depth, recv_bytes, send_bytes);
            conn.tls = tls;
            conn.layout = codec.shard_layout().filter(|l| l.shards > 1);
            if let Some(l) = conn.layout {
                target_shards[t].get_or_insert(l.shards);
            }
            conns.push(conn);
        }
        // Registered files spare the kernel an fd-table lookup (and reference count) per I/O.
        let fds: Vec<RawFd> = conns.iter().map(|c| c.socket.as_raw_fd()).collect();
        ring.submitter()
            .register_files(&fds)
            .map_err(|e| (format!("thread {i}: io_uring register_files: {e}"), all))?;
        let workload = Workload {
            sampler: KeySampler::new(cfg.keys, cfg.dist).map_err(|e| (e, all))?,
            ratio: cfg
                .ratio
                .unwrap_or(crate::workload::Ratio { get: 1, put: 0 }),
            value: cfg.value_size,
            session: cfg.session,
        };
        let value = (0..cfg.value_size.max)
            .map(|j| b'a' + (j % 26) as u8)
            .collect();
        let mut stats = ThreadStats::new();
        stats.ring_mode = mode;
        let mut w = Worker {
            ring,
            conns,
            index: i,
            rng: SmallRng::seed_from_u64(cfg.seed.wrapping_add(i as u64)),
            workload,
            value,
            key: [0; KEY_BYTES],
            stats,
            flush: Vec::with_capacity(n),
            free: VecDeque::with_capacity(n * depth),
            cqes: Vec::with_capacity(entries as usize * 2),
            outstanding: 0,
            done: 0,
            errors: 0,
            failures_printed: 0,
            next_scan_ns: 0,
            poll_first: sys::poll_first_supported(mode)
                && std::env::var_os("LOADGEN_NO_POLL_FIRST").is_none(),
            phase: Phase {
                source: Source::Closed,
                issuing: false,
                measure_start_ns: 0,
                measure_end_ns: 0,
                quota: 0,
                hard_deadline_ns: 0,
                drain_deadline_ns: u64::MAX,
            },
            second: None,
            cpu_at_measure_start: None,
            measured_end_ns: 0,
            cfg,
            base: spec.base,
            shared: spec.shared,
            ticks: spec.ticks,
            codec,
        };
        for c in 0..w.conns.len() {
            w.arm_recv(c, true);
        }
        Ok(w)
    }

    #[inline]
    fn now(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    fn hard_deadline_ns(&self) -> u64 {
        (self.cfg.deadline_s * 1e9) as u64
    }

    /// Writes every key of this thread's share once (keys i, i + threads, …). Not measured.
    fn prefill(&mut self) {
        self.phase = Phase {
            source: Source::Prefill {
                next: self.index as u64,
                step: self.cfg.threads as u64,
                keys: self.cfg.keys,
            },
            issuing: true,
            measure_start_ns: u64::MAX,
            measure_end_ns: u64::MAX,
            quota: 0,
            hard_deadline_ns: self.hard_deadline_ns(),
            drain_deadline_ns: u64::MAX,
        };
        self.start_all_slots();
        self.event_loop();
    }

    /// Warm-up, then the measured window, then draining the replies still due.
    fn main_phase(&mut self) {
        let cfg = self.cfg.clone();
        let start_ns = self.shared.start_ns.load(Ordering::SeqCst);
        let measure_start_ns = start_ns + (cfg.warmup_s * 1e9) as u64;
        let (measure_end_ns, quota) = match (cfg.duration_s, cfg.requests) {
            (Some(d), _) => (measure_start_ns + (d * 1e9) as u64, u64::MAX),
            (None, Some(n)) => {
                let t = cfg.threads as u64;
                (u64::MAX, n / t + u64::from((self.index as u64) < n % t))
            }
            (None, None) => unreachable!("Config always sets a bound"),
        };
        let source = match cfg.rate {
            None => Source::Closed,
            Some(rate) => {
                let per_thread = rate / cfg.threads as f64;
                let period_ns = Schedule::new(0, per_thread, 0).period_ns();
                let offset_ns = period_ns / cfg.threads as u64 * self.index as u64;
                Source::Open {
                    schedule: Schedule::new(start_ns, per_thread, offset_ns),
                    next: 0,
                }
            }
        };
        self.phase = Phase {
            source,
            issuing: quota > 0,
            measure_start_ns,
            measure_end_ns,
            quota,
            hard_deadline_ns: self.hard_deadline_ns(),
            drain_deadline_ns: u64::MAX,
        };
        // Wait for the common start so every thread's schedule begins together.
        let now = self.now();
        if start_ns > now {
            std::thread::sleep(Duration::from_nanos(start_ns - now));
        }
        if matches!(self.phase.source, Source::Open { .. }) {
            // Interleave connections so consecutive arrivals go to different connections.
            for s in 0..cfg.pipeline {
                for c in 0..self.conns.len() {
                    self.free.push_back((c as u32, s as u32));
                }
            }
        } else if self.phase.issuing {
            self.start_all_slots();
        }
        self.event_loop();
        self.flush_second();
        if let Some(cpu0) = self.cpu_at_measure_start {
            self.stats.cpu = sys::thread_cpu().since(&cpu0);
        }
        self.stats.measured_end_ns = self.measured_end_ns;
    }

    fn start_all_slots(&mut self) {
        let now = self.now();
        for s in 0..self.cfg.pipeline {
            for c in 0..self.conns.len() {
                if !self.conns[c].dead && !self.start_slot(c, s, now) {
                    return;
                }
            }
        }
    }

    /// Decides whether a request intended at `t` may go out, and whether it is measured.
    /// `None` stops issuing for the rest of the phase.
    #[inline]
    fn admit(&mut self, t: u64, now: u64) -> Option<bool> {
        let p = &mut self.phase;
        if now >= p.hard_deadline_ns || now >= p.measure_end_ns || t >= p.measure_end_ns {
            return None;
        }
        if t < p.measure_start_ns {
            return Some(false);
        }
        if p.quota == 0 {
            return None;
        }
        if p.quota != u64::MAX {
            p.quota -= 1;
        }
        Some(true)
    }

    /// Closed loop and prefill: gives slot `s` of connection `c` its next request. Returns
    /// false when the phase issues no more.
    #[inline]
    fn start_slot(&mut self, c: usize, s: usize, now: u64) -> bool {
        if !self.phase.issuing {
            return false;
        }
        let (op, measured) = match &mut self.phase.source {
            Source::Prefill { next, step, keys } => {
                if *next >= *keys || now >= self.phase.hard_deadline_ns {
                    self.stop_issuing(now);
                    return false;
                }
                let key = *next;
                *next += *step;
                (
                    Planned {
                        kind: OpKind::Put,
                        key,
                        token: 0,
                    },
                    false,
                )
            }
            Source::Closed => {
                let Some(measured) = self.admit(now, now) else {
                    self.stop_issuing(now);
                    return false;
                };
                (self.plan(c, s), measured)
            }
            Source::Open { .. } => unreachable!("open-loop slots are started by arrivals"),
        };
        self.issue(c, s, op, now, now, measured);
        true
    }

    /// The next operation for slot `s` of connection `c`. Shard-aware, a new key is drawn
    /// until its owner shard is the one serving the connection (about `shards` draws, each a
    /// key hash: tens of nanoseconds), so across the connections, spread evenly over the
    /// shards, the key distribution is kept; after `SHARD_DRAWS_MAX` misses (a key space too
    /// small to cover every shard) the key goes as drawn and the server forwards it.
    #[inline]
    fn plan(&mut self, c: usize, s: usize) -> Planned {
        const SHARD_DRAWS_MAX: usize = 64;
        let session = self.conns[c].slots[s].session;
        let mut op = self.workload.next(session, &mut self.rng);
        let Some(l) = self.conns[c].layout else {
            return op;
        };
        if session != Session::Idle {
            return op; // a session's second step keeps its key (already drawn for this shard)
        }
        for _ in 0..SHARD_DRAWS_MAX {
            write_key(&mut self.key, op.key);
            let p = stategrid_proto::partition_of(stategrid_proto::key_hash(l.ns, &self.key));
            if stategrid_proto::owner_shard(p, l.shards as usize) == l.shard as usize {
                break;
            }
            op = self.workload.next(session, &mut self.rng);
        }
        op
    }

    /// Encodes one request into the connection's pending bytes (no system call).
    #[inline]
    fn issue(
        &mut self,
        c: usize,
        s: usize,
        op: Planned,
        intended_ns: u64,
        now: u64,
        measured: bool,
    ) {
        write_key(&mut self.key, op.key);
        let value_len = if op.kind.writes() {
            self.workload.value.sample(&mut self.rng)
        } else {
            0
        };
        let conn = &mut self.conns[c];
        self.codec.encode(
            &Request {
                kind: op.kind,
                key: &self.key,
                value: &self.value[..value_len],
                token: op.token,
                id: s as u32,
            },
            &mut conn.pending,
        );
        let slot = &mut conn.slots[s];
        debug_assert!(!slot.busy, "a slot has one request outstanding at most");
        slot.op = op;
        slot.intended_ns = intended_ns;
        slot.sent_ns = now;
        slot.measured = measured;
        slot.busy = true;
        conn.fifo.push_back(s as u32);
        self.outstanding += 1;
        if !conn.queued {
            conn.queued = true;
            self.flush.push(c as u32);
        }
    }

    fn stop_issuing(&mut self, now: u64) {
        if !self.phase.issuing {
            return;
        }
        self.phase.issuing = false;
        self.phase.drain_deadline_ns = now.saturating_add((self.cfg.timeout_s * 1e9) as u64);
        if let Source::Open { schedule, next } = &self.phase.source {
            if self.phase.measure_end_ns != u64::MAX {
                // Arrivals intended inside the window that never found a free slot.
                let due = schedule.due(self.phase.measure_end_ns.min(now).saturating_sub(1));
                self.stats.unsent += due.saturating_sub(*next);
            }
        }
    }

    /// Open loop: hands every arrival due by `now` to a free slot, oldest first. Arrivals
    /// without a free slot wait (their latency keeps counting from their intended time).
    #[inline]
    fn dispatch_arrivals(&mut self, now: u64) {
        let Source::Open { schedule, next } = self.phase.source else {
            return;
        };
        let due = schedule.due(now);
        let mut n = next;
        while self.phase.issuing && n < due {
            let Some((c, s)) = self.pop_free() else { break };
            let t = schedule.intended_ns(n);
            let Some(measured) = self.admit(t, now) else {
                self.free.push_front((c, s));
                if let Source::Open { next, .. } = &mut self.phase.source {
                    *next = n;
                }
                self.stop_issuing(now);
                return;
            };
            let op = self.plan(c as usize, s as usize);
            self.issue(c as usize, s as usize, op, t, now, measured);
            n += 1;
        }
        if let Source::Open { next, .. } = &mut self.phase.source {
            *next = n;
        }
    }

    fn pop_free(&mut self) -> Option<(u32, u32)> {
        while let Some((c, s)) = self.free.pop_front() {
            if !self.conns[c as usize].dead {
                return Some((c, s));
            }
        }
        None
    }

    /// The loop. Per iteration: flush sends, one `io_uring_enter` (submit + wait), reap all
    /// completions, handle them (which encodes the next requests), house-keep.
    fn event_loop(&mut self) {
        let progress_index = self.index;
        loop {
            let now = self.now();
            self.housekeeping(now);
            if !self.phase.issuing && self.outstanding == 0 {
                break;
            }
            self.flush_sends();
            let wake = self.next_wakeup(now);
            if let Err(e) = self.enter(wake.saturating_sub(now)) {
                // A ring that cannot be entered cannot go on; say so and stop the thread.
                eprintln!("loadgen: thread {}: io_uring_enter: {e}", self.index);
                self.fail_all(
                    ErrorKind::ConnectionLost,
                    &format!("io_uring_enter failed: {e}"),
                );
                break;
            }
            let now = self.now();
            self.reap();
            let measuring =
                now >= self.phase.measure_start_ns && self.phase.measure_start_ns != u64::MAX;
            if measuring {
                self.stats.enters += 1;
                self.stats.completions += self.cqes.len() as u64;
            }
            for i in 0..self.cqes.len() {
                let (ud, res) = self.cqes[i];
                let c = (ud >> 8) as usize;
                match ud & 0xff {
                    TAG_RECV => self.on_recv(c, res, now),
                    TAG_SEND => self.on_send(c, res),
                    _ => unreachable!("unknown completion tag"),
                }
            }
            if self.phase.issuing {
                self.dispatch_arrivals(now);
            }
            self.shared.progress[progress_index].publish(self.done, self.errors);
        }
        self.shared.progress[progress_index].publish(self.done, self.errors);
    }

    /// One system call: submits everything queued, waits up to `wait_ns` for a completion.
    #[inline]
    fn enter(&mut self, wait_ns: u64) -> io::Result<()> {
        let ts = types::Timespec::new()
            .sec(wait_ns / 1_000_000_000)
            .nsec((wait_ns % 1_000_000_000) as u32);
        let args = types::SubmitArgs::new().timespec(&ts);
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    #[inline]
    fn reap(&mut self) {
        self.cqes.clear();
        let mut cq = self.ring.completion();
        cq.sync();
        for cqe in &mut cq {
            self.cqes.push((cqe.user_data(), cqe.result()));
        }
    }

    /// When the loop must wake even if nothing completes.
    fn next_wakeup(&self, now: u64) -> u64 {
        let p = &self.phase;
        let mut t = now + HOUSEKEEPING_NS;
        t = t.min(p.hard_deadline_ns);
        if p.issuing {
            t = t.min(p.measure_end_ns);
            if let Source::Open { schedule, next } = &p.source {
                if !self.free.is_empty() {
                    t = t.min(schedule.intended_ns(*next));
                }
            }
        } else {
            t = t.min(p.drain_deadline_ns);
        }
        t.max(now)
    }

    /// Deadlines, timeouts and the start of the measured window. Cheap when nothing is due.
    fn housekeeping(&mut self, now: u64) {
        if self.cpu_at_measure_start.is_none() && now >= self.phase.measure_start_ns {
            self.cpu_at_measure_start = Some(sys::thread_cpu());
        }
        if now >= self.phase.hard_deadline_ns {
            if self.phase.issuing || self.outstanding > 0 {
                self.shared.deadline_hit.store(true, Ordering::Relaxed);
            }
            self.stop_issuing(now);
            self.fail_all(
                ErrorKind::Timeout,
                "no reply before the hard deadline (--deadline)",
            );
            return;
        }
        if self.phase.issuing && now >= self.phase.measure_end_ns {
            self.stop_issuing(now);
        }
        if !self.phase.issuing && now >= self.phase.drain_deadline_ns && self.outstanding > 0 {
            self.fail_all(
                ErrorKind::Timeout,
                "no reply before the end of the run (--timeout after the last request)",
            );
            return;
        }
        // The rest looks at every connection: every SCAN_NS, not every iteration.
        if now < self.next_scan_ns {
            return;
        }
        self.next_scan_ns = now + SCAN_NS;
        if self.phase.issuing && self.conns.iter().all(|c| c.dead) {
            self.stop_issuing(now);
        }
        // Per-request timeouts: the oldest request of each connection. Replies come in
        // order, so if the oldest is not late, none is.
        let timeout_ns = (self.cfg.timeout_s * 1e9) as u64;
        for c in 0..self.conns.len() {
            let conn = &self.conns[c];
            if conn.dead {
                continue;
            }
            let late = match conn.fifo.front() {
                Some(&s) => now.saturating_sub(conn.slots[s as usize].sent_ns) > timeout_ns,
                None => false,
            };
            if late {
                let msg = format!("no reply within --timeout {} s", self.cfg.timeout_s);
                self.fail_conn(c, ErrorKind::Timeout, &msg);
            }
        }
    }

    fn fail_all(&mut self, kind: ErrorKind, why: &str) {
        for c in 0..self.conns.len() {
            if !self.conns[c].fifo.is_empty() {
                self.fail_conn(c, kind, why);
            }
        }
    }

    /// Closes a connection that can no longer be trusted. Every request outstanding on it
    /// counts as one error of `kind` (at least one error per failed connection).
    fn fail_conn(&mut self, c: usize, kind: ErrorKind, why: &str) {
        let conn = &mut self.conns[c];
        if conn.dead {
            return;
        }
        let lost = conn.fifo.len();
        while let Some(s) = conn.fifo.pop_front() {
            let slot = &mut conn.slots[s as usize];
            slot.busy = false;
            slot.session = Session::Idle;
        }
        conn.kill();
        self.outstanding -= lost;
        let n = lost.max(1) as u64;
        self.errors += n;
        let msg = format!(
            "{} (thread {}, connection {c}): {why}",
            self.cfg.targets[conn.target], self.index
        );
        if self.failures_printed < FAILURES_PRINTED_MAX {
            self.failures_printed += 1;
            eprintln!("loadgen: {kind}: {msg}");
        }
        self.stats.error(kind, n, || msg);
    }

    #[inline]
    fn push(&mut self, e: squeue::Entry) {
        // SAFETY: every entry points into a connection buffer that stays put until its
        // completion is reaped (see conn::RecvBuf and the send double buffer).
        unsafe {
            while self.ring.submission().push(&e).is_err() {
                // Full submission queue: hand it to the kernel now (no wait).
                self.ring.submit().expect("io_uring_enter (submit)");
            }
        }
    }

    /// Arms the connection's one receive. `poll_first` when the socket is probably empty (the
    /// last receive did not fill the buffer), to skip a receive attempt that would find nothing.
    fn arm_recv(&mut self, c: usize, poll_first: bool) {
        let conn = &mut self.conns[c];
        debug_assert!(!conn.recv_armed);
        let spare = match conn.tls.as_deref_mut() {
            // Ciphertext goes to the session's buffer; `on_recv` decrypts it into `recv`.
            Some(t) => t.cipher_in.as_mut_slice(),
            None => conn.recv.spare(),
        };
        let ioprio = if poll_first && self.poll_first {
            sys::RECV_POLL_FIRST
        } else {
            0
        };
        let e = opcode::Recv::new(
            types::Fixed(c as u32),
            spare.as_mut_ptr(),
            spare.len() as u32,
        )
        .ioprio(ioprio)
        .build()
        .user_data(user_data(c, TAG_RECV));
        conn.recv_armed = true;
        self.push(e);
    }

    fn arm_send(&mut self, c: usize) {
        let conn = &mut self.conns[c];
        debug_assert!(!conn.send_armed && conn.out_off < conn.out.len());
        let rest = &conn.out[conn.out_off..];
        let e = opcode::Send::new(types::Fixed(c as u32), rest.as_ptr(), rest.len() as u32)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(user_data(c, TAG_SEND));
        conn.send_armed = true;
        self.push(e);
    }

    /// One send per connection per iteration, carrying every request encoded since the last.
    fn flush_sends(&mut self) {
        for i in 0..self.flush.len() {
            let c = self.flush[i] as usize;
            let conn = &mut self.conns[c];
            conn.queued = false;
            let tls_wants = conn.tls.as_ref().is_some_and(|t| t.session.wants_write());
            if conn.dead || conn.send_armed || (conn.pending.is_empty() && !tls_wants) {
                // A send in flight re-queues the connection when it completes.
                continue;
            }
            conn.out_off = 0;
            if let Some(t) = conn.tls.as_deref_mut() {
                conn.out.clear();
                if let Err(e) = t.seal(&mut conn.pending, &mut conn.out) {
                    self.fail_conn(c, ErrorKind::Protocol, &format!("TLS: {e}"));
                    continue;
                }
            } else {
                std::mem::swap(&mut conn.out, &mut conn.pending);
            }
            self.arm_send(c);
        }
        self.flush.clear();
    }

    fn on_send(&mut self, c: usize, res: i32) {
        let conn = &mut self.conns[c];
        conn.send_armed = false;
        if conn.dead {
            return;
        }
        if res < 0 {
            let e = io::Error::from_raw_os_error(-res);
            self.fail_conn(c, ErrorKind::ConnectionLost, &format!("send: {e}"));
            return;
        }
        conn.out_off += res as usize;
        if conn.out_off < conn.out.len() {
            // Partial send (socket buffer full): send the rest before anything newer.
            self.arm_send(c);
            return;
        }
        conn.out.clear();
        conn.out_off = 0;
        if !conn.pending.is_empty() && !conn.queued {
            conn.queued = true;
            self.flush.push(c as u32);
        }
    }

    fn on_recv(&mut self, c: usize, res: i32, now: u64) {
        let conn = &mut self.conns[c];
        conn.recv_armed = false;
        if conn.dead {
            return;
        }
        if res <= 0 {
            let why = if res == 0 {
                "connection closed by the server".to_string()
            } else {
                format!("recv: {}", io::Error::from_raw_os_error(-res))
            };
            self.fail_conn(c, ErrorKind::ConnectionLost, &why);
            return;
        }
        let drained;
        if let Some(t) = conn.tls.as_deref_mut() {
            drained = (res as usize) < t.cipher_in.len();
            if let Err(why) = t.open(res as usize, &mut conn.recv) {
                self.fail_conn(c, ErrorKind::Protocol, &why);
                return;
            }
            if t.session.wants_write() && !conn.queued {
                // A TLS message of its own to answer (a key update): the next flush sends it.
                conn.queued = true;
                self.flush.push(c as u32);
            }
        } else {
            drained = (res as usize) < conn.recv.spare().len();
            conn.recv.filled(res as usize);
        }
        if !self.parse_replies(c, now) {
            return;
        }
        let conn = &mut self.conns[c];
        conn.recv.compact();
        if conn.recv.is_full() && !conn.recv.grow() {
            let why = format!("a reply larger than {} bytes", conn::RECV_BYTES_MAX);
            self.fail_conn(c, ErrorKind::Protocol, &why);
            return;
        }
        self.arm_recv(c, drained);
    }

    /// Parses every complete reply in the receive buffer. False if the connection failed.
    #[inline]
    fn parse_replies(&mut self, c: usize, now: u64) -> bool {
        loop {
            let conn = &mut self.conns[c];
            if conn.recv.data().is_empty() {
                return true;
            }
            let Some(&front) = conn.fifo.front() else {
                let why = format!(
                    "{} bytes arrived with no request outstanding",
                    conn.recv.data().len()
                );
                self.fail_conn(c, ErrorKind::Protocol, &why);
                return false;
            };
            let expect = conn.slots[front as usize].op.kind;
            match self.codec.parse(conn.recv.data(), expect) {
                Ok(Parsed::Incomplete) => return true,
                Ok(Parsed::Complete { reply, used }) => {
                    conn.recv.consume(used);
                    let s = match reply.id {
                        None => conn.fifo.pop_front(),
                        Some(id) if id == front => conn.fifo.pop_front(),
                        // Out of order (native only): find it by the echoed id.
                        Some(id) => conn
                            .fifo
                            .iter()
                            .position(|&s| s == id)
                            .and_then(|p| conn.fifo.remove(p)),
                    };
                    let Some(s) = s else {
                        let why = format!(
                            "reply to request id {:?}, which is not outstanding",
                            reply.id
                        );
                        self.fail_conn(c, ErrorKind::Protocol, &why);
                        return false;
                    };
                    self.complete(c, s as usize, reply, now);
                }
                Err(e) => {
                    self.fail_conn(c, ErrorKind::Protocol, &e.0);
                    return false;
                }
            }
        }
    }

    /// Records one reply and gives the slot its next request.
    #[inline]
    fn complete(&mut self, c: usize, s: usize, reply: Reply, now: u64) {
        self.outstanding -= 1;
        self.done += 1;
        let slot = &mut self.conns[c].slots[s];
        slot.busy = false;
        let op = slot.op;
        let measured = slot.measured;
        let latency_ns = now.saturating_sub(slot.intended_ns).max(1);
        slot.session = session_after(&op, &reply.status, reply.token);
        let k = op.kind.index();
        let failed = match reply.status {
            Status::Ok => {
                self.stats.ok[k] += measured as u64;
                false
            }
            Status::Miss => {
                self.stats.miss[k] += measured as u64;
                false
            }
            Status::Busy => {
                self.stats.busy[k] += measured as u64;
                false
            }
            Status::Error(code) => {
                self.errors += 1;
                let target = &self.cfg.targets[self.conns[c].target];
                let idx = self.index;
                self.stats.error(ErrorKind::Server(code), 1, || {
                    format!(
                        "{target} (thread {idx}, connection {c}): {code} in reply to {}",
                        op.kind.name()
                    )
                });
                true
            }
        };
        if matches!(self.phase.source, Source::Prefill { .. }) {
            self.stats.prefill_ops += 1;
        }
        if measured {
            if !failed {
                self.stats.hist[k].saturating_record(latency_ns);
            }
            self.measured_end_ns = now;
            self.record_second(now, latency_ns, failed);
        }
        match self.phase.source {
            Source::Open { .. } => self.free.push_back((c as u32, s as u32)),
            _ => {
                self.start_slot(c, s, now);
            }
        }
    }

    /// Adds one measured reply to the current second, sending the previous second on.
    #[inline]
    fn record_second(&mut self, now: u64, latency_ns: u64, failed: bool) {
        let second = now.saturating_sub(self.phase.measure_start_ns) / 1_000_000_000;
        if self.second.as_ref().is_some_and(|s| s.second != second) {
            self.flush_second();
        }
        let cur = self.second.get_or_insert_with(|| Second {
            second,
            ops: 0,
            errors: 0,
            hist: stats::second_hist(),
        });
        if failed {
            cur.errors += 1;
        } else {
            cur.ops += 1;
            cur.hist.saturating_record(latency_ns);
        }
    }

    fn flush_second(&mut self) {
        if let Some(s) = self.second.take() {
            // The main thread may have stopped listening (it only stops after the workers).
            let _ = self.ticks.send(Tick {
                second: s.second,
                ops: s.ops,
                errors: s.errors,
                hist: s.hist,
            });
        }
    }

    /// Closes every connection and waits (bounded) for the kernel to finish the I/O still
    /// pointing into their buffers, so nothing is freed under it.
    fn shutdown(&mut self) {
        for c in &mut self.conns {
            c.kill();
        }
        let until = self.now() + SHUTDOWN_DRAIN_NS;
        while self.conns.iter().any(|c| c.recv_armed || c.send_armed) && self.now() < until {
            if self.enter(10_000_000).is_err() {
                break;
            }
            self.reap();
            for i in 0..self.cqes.len() {
                let (ud, _) = self.cqes[i];
                let conn = &mut self.conns[(ud >> 8) as usize];
                match ud & 0xff {
                    TAG_RECV => conn.recv_armed = false,
                    _ => conn.send_armed = false,
                }
            }
        }
    }
}

/// Waits (sleeping, outside any measured window) until the main thread moves past
/// `STAGE_WAIT`; returns the stage reached or `STAGE_ABORT`.
fn wait_stage(shared: &Shared, at_least: u64) -> u64 {
    loop {
        let s = shared.stage.load(Ordering::SeqCst);
        if s >= at_least {
            return s;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}
