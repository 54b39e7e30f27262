//! Per-thread counters and latency histograms. Each worker owns its own (no shared atomics on
//! the hot path); they are summed once at the end, and per-second samples travel to the main
//! thread over a channel once a second.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use hdrhistogram::Histogram;

use crate::codec::ServerError;
use crate::sys::CpuTime;
use crate::workload::OpKind;

/// Latencies are recorded in nanoseconds up to an hour; longer ones saturate.
pub const LATENCY_NS_MAX: u64 = 3_600 * 1_000_000_000;

/// The run's histograms: 3 significant digits (0.1% resolution), about 200 KiB each.
pub fn latency_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_NS_MAX, 3).expect("valid histogram bounds")
}

/// Per-second histograms for the plot and timeline: 2 significant digits (1%), ~30 KiB each.
pub fn second_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_NS_MAX, 2).expect("valid histogram bounds")
}

/// What went wrong, as the report groups errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// A connection could not be opened or its handshake failed (the run does not start).
    ConnectFailed,
    /// An established connection closed or failed; every request outstanding on it counts.
    ConnectionLost,
    /// The server answered with an error.
    Server(ServerError),
    /// The server's bytes broke the protocol; the connection was closed.
    Protocol,
    /// No reply within `--timeout`; the connection was closed.
    Timeout,
}

impl ErrorKind {
    /// A stable key for JSON.
    pub fn key(&self) -> String {
        match self {
            ErrorKind::ConnectFailed => "connect_failed".into(),
            ErrorKind::ConnectionLost => "connection_lost".into(),
            ErrorKind::Server(code) => format!("server:{code}"),
            ErrorKind::Protocol => "protocol".into(),
            ErrorKind::Timeout => "timeout".into(),
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorKind::ConnectFailed => f.write_str("connect failed"),
            ErrorKind::ConnectionLost => f.write_str("connection lost"),
            ErrorKind::Server(code) => write!(f, "server error {code}"),
            ErrorKind::Protocol => f.write_str("protocol error"),
            ErrorKind::Timeout => f.write_str("timeout"),
        }
    }
}

/// Errors of one kind, with the first occurrence in words (which target, what happened).
#[derive(Clone, Debug)]
pub struct ErrorCount {
    pub kind: ErrorKind,
    pub count: u64,
    pub example: String,
}

/// Everything one worker thread measured.
pub struct ThreadStats {
    /// Latency of measured operations by kind, nanoseconds (ok, miss and busy replies;
    /// errors are counted, not timed).
    pub hist: Vec<Histogram<u64>>,
    pub ok: [u64; OpKind::COUNT],
    pub miss: [u64; OpKind::COUNT],
    pub busy: [u64; OpKind::COUNT],
    /// Errors in any phase (prefill, warm-up, measurement): a test wants none at all.
    pub errors: Vec<ErrorCount>,
    pub prefill_ops: u64,
    /// Open loop: arrivals that were due but never sent (no free slot before the end).
    pub unsent: u64,
    /// `io_uring_enter` calls and completions during the measured phase.
    pub enters: u64,
    pub completions: u64,
    /// This thread's CPU time during the main phase.
    pub cpu: CpuTime,
    /// When the last measured reply arrived, ns since the run's base instant.
    pub measured_end_ns: u64,
    pub ring_mode: &'static str,
}

impl Default for ThreadStats {
    fn default() -> Self {
        Self::new()
    }
}

impl ThreadStats {
    pub fn new() -> Self {
        ThreadStats {
            hist: (0..OpKind::COUNT).map(|_| latency_hist()).collect(),
            ok: [0; OpKind::COUNT],
            miss: [0; OpKind::COUNT],
            busy: [0; OpKind::COUNT],
            errors: Vec::new(),
            prefill_ops: 0,
            unsent: 0,
            enters: 0,
            completions: 0,
            cpu: CpuTime::default(),
            measured_end_ns: 0,
            ring_mode: "",
        }
    }

    /// Counts `n` errors of `kind`; `example` is called only for the first of a kind.
    pub fn error(&mut self, kind: ErrorKind, n: u64, example: impl FnOnce() -> String) {
        if let Some(e) = self.errors.iter_mut().find(|e| e.kind == kind) {
            e.count += n;
        } else {
            self.errors.push(ErrorCount {
                kind,
                count: n,
                example: example(),
            });
        }
    }

    pub fn error_total(&self) -> u64 {
        self.errors.iter().map(|e| e.count).sum()
    }

    /// Measured replies (ok + miss + busy) of every kind.
    pub fn measured_ops(&self) -> u64 {
        (0..OpKind::COUNT)
            .map(|i| self.ok[i] + self.miss[i] + self.busy[i])
            .sum()
    }

    pub fn merge(&mut self, o: &ThreadStats) {
        for i in 0..OpKind::COUNT {
            self.hist[i]
                .add(&o.hist[i])
                .expect("histograms with equal bounds add");
            self.ok[i] += o.ok[i];
            self.miss[i] += o.miss[i];
            self.busy[i] += o.busy[i];
        }
        for e in &o.errors {
            let ex = e.example.clone();
            self.error(e.kind, e.count, || ex);
        }
        self.prefill_ops += o.prefill_ops;
        self.unsent += o.unsent;
        self.enters += o.enters;
        self.completions += o.completions;
        self.cpu = CpuTime {
            user_us: self.cpu.user_us + o.cpu.user_us,
            sys_us: self.cpu.sys_us + o.cpu.sys_us,
        };
        self.measured_end_ns = self.measured_end_ns.max(o.measured_end_ns);
        if self.ring_mode.is_empty() {
            self.ring_mode = o.ring_mode;
        }
    }
}

/// One second of one thread's measured phase, sent to the main thread.
pub struct Tick {
    pub second: u64,
    pub ops: u64,
    pub errors: u64,
    pub hist: Histogram<u64>,
}

/// Live counters for the progress line: written by one worker (plain stores of its own
/// totals, once per loop), read by the main thread once a second. Padded so two workers never
/// share a cache line.
#[repr(align(128))]
#[derive(Default)]
pub struct Progress {
    pub done: AtomicU64,
    pub errors: AtomicU64,
    /// 0 connecting, 1 prefill, 2 running, 3 finished.
    pub phase: AtomicU64,
}

pub const PHASE_CONNECTING: u64 = 0;
pub const PHASE_PREFILL: u64 = 1;
pub const PHASE_RUNNING: u64 = 2;
pub const PHASE_DONE: u64 = 3;

impl Progress {
    #[inline]
    pub fn publish(&self, done: u64, errors: u64) {
        self.done.store(done, Ordering::Relaxed);
        self.errors.store(errors, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_group_by_kind_and_keep_the_first_example() {
        let mut s = ThreadStats::new();
        s.error(ErrorKind::Timeout, 2, || "first".into());
        s.error(ErrorKind::Timeout, 3, || "second".into());
        s.error(ErrorKind::Server(ServerError::new("ERR x")), 1, || {
            "srv".into()
        });
        assert_eq!(s.error_total(), 6);
        assert_eq!(s.errors[0].example, "first");
        let mut t = ThreadStats::new();
        t.error(ErrorKind::Timeout, 1, || "other".into());
        t.hist[0].record(1000).unwrap();
        t.ok[0] = 1;
        t.merge(&s);
        assert_eq!(t.error_total(), 7);
        assert_eq!(t.errors.len(), 2);
        assert_eq!(t.measured_ops(), 1);
        assert_eq!(
            ErrorKind::Server(ServerError::new("ERR x")).key(),
            "server:ERR x"
        );
        assert_eq!(ErrorKind::ConnectionLost.to_string(), "connection lost");
    }
}
