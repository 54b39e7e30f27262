//! The results: one [`Summary`], printed as a table and written as JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::cli::Config;
use crate::stats::{ThreadStats, latency_hist};
use crate::sys::CpuTime;
use crate::workload::OpKind;

/// The client was the bottleneck when it used at least this share of its threads' CPUs.
pub const CLIENT_BOTTLENECK_PCT_PER_THREAD: f64 = 90.0;

/// Latency percentiles in microseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
    pub count: u64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Latency {
            p50: us(h.value_at_quantile(0.50)),
            p90: us(h.value_at_quantile(0.90)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
            mean: h.mean() / 1000.0,
            count: h.len(),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct KindSummary {
    /// Measured replies (ok + miss + busy).
    pub ops: u64,
    pub ops_per_sec: f64,
    pub ok: u64,
    pub miss: u64,
    pub busy: u64,
    pub latency_us: Latency,
}

/// One second of the measured window (all threads).
#[derive(Clone, Debug, Serialize)]
pub struct SecondSample {
    pub t_s: u64,
    pub ops: u64,
    pub errors: u64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// "ok", "errors", "connect_failed" or "deadline".
    pub outcome: &'static str,
    /// Why the run could not start or finish, in words.
    pub failure: Option<String>,
    pub ops_per_sec: f64,
    /// Measured replies (ok + miss + busy), every kind.
    pub ops: u64,
    /// Errors in every phase (connect, prefill, warm-up, measurement).
    pub errors: u64,
    pub errors_by_kind: BTreeMap<String, u64>,
    /// The first error of each kind in words (which target, what happened).
    pub error_examples: BTreeMap<String, String>,
    pub misses: u64,
    pub lock_busy: u64,
    /// Process CPU (user + sys) over the measured window, as % of one core.
    pub client_cpu_pct: f64,
    pub client_cpu_us_per_op: f64,
    pub client_cpu_user_s: f64,
    pub client_cpu_sys_s: f64,
    /// The busiest worker thread's CPU over its measured window, % of one core.
    pub client_thread_cpu_pct_max: f64,
    /// client_cpu_pct >= 90% x threads: the numbers understate the server.
    pub client_bottleneck: bool,
    pub latency_us: Latency,
    pub ops_by_kind: BTreeMap<&'static str, KindSummary>,
    /// The measured window: --duration, or first to last measured reply with --requests.
    pub duration_s: f64,
    pub warmup_s: f64,
    pub prefill_ops: u64,
    pub prefill_s: f64,
    /// Open loop: arrivals due in the window that never found a free slot (rate not held).
    pub unsent: u64,
    /// Completions reaped per io_uring_enter: the batching the loop achieved.
    pub completions_per_enter: f64,
    pub ring: &'static str,
    pub timeline: Vec<SecondSample>,
    pub config: Config,
    pub loadgen_version: &'static str,
}

/// Inputs the main thread gathered besides the workers' stats.
pub struct RunFacts {
    pub duration_s: f64,
    pub cpu: CpuTime,
    pub cpu_wall_s: f64,
    pub prefill_s: f64,
    pub timeline: Vec<SecondSample>,
    pub failure: Option<String>,
    pub deadline_hit: bool,
}

pub fn summarize(
    cfg: &Config,
    stats: &ThreadStats,
    per_thread: &[ThreadStats],
    facts: RunFacts,
) -> Summary {
    let d = facts.duration_s.max(1e-9);
    let mut all = latency_hist();
    let mut by_kind = BTreeMap::new();
    for kind in OpKind::ALL {
        let k = kind.index();
        let ops = stats.ok[k] + stats.miss[k] + stats.busy[k];
        if ops == 0 && stats.hist[k].is_empty() {
            continue;
        }
        all.add(&stats.hist[k]).expect("equal bounds");
        by_kind.insert(
            kind.name(),
            KindSummary {
                ops,
                ops_per_sec: ops as f64 / d,
                ok: stats.ok[k],
                miss: stats.miss[k],
                busy: stats.busy[k],
                latency_us: Latency::of(&stats.hist[k]),
            },
        );
    }
    let ops = stats.measured_ops();
    let errors = stats.error_total();
    let cpu_s = facts.cpu.total_us() as f64 / 1e6;
    let client_cpu_pct = if facts.cpu_wall_s > 0.0 {
        100.0 * cpu_s / facts.cpu_wall_s
    } else {
        0.0
    };
    let thread_max = per_thread
        .iter()
        .map(|t| 100.0 * t.cpu.total_us() as f64 / 1e6 / facts.cpu_wall_s.max(1e-9))
        .fold(0.0, f64::max);
    let outcome = if facts.failure.is_some() {
        "connect_failed"
    } else if facts.deadline_hit {
        "deadline"
    } else if errors > 0 {
        "errors"
    } else {
        "ok"
    };
    Summary {
        outcome,
        failure: facts.failure,
        ops_per_sec: ops as f64 / d,
        ops,
        errors,
        errors_by_kind: stats
            .errors
            .iter()
            .map(|e| (e.kind.key(), e.count))
            .collect(),
        error_examples: stats
            .errors
            .iter()
            .map(|e| (e.kind.key(), e.example.clone()))
            .collect(),
        misses: stats.miss.iter().sum(),
        lock_busy: stats.busy.iter().sum(),
        client_cpu_pct,
        client_cpu_us_per_op: if ops > 0 {
            facts.cpu.total_us() as f64 / ops as f64
        } else {
            0.0
        },
        client_cpu_user_s: facts.cpu.user_us as f64 / 1e6,
        client_cpu_sys_s: facts.cpu.sys_us as f64 / 1e6,
        client_thread_cpu_pct_max: thread_max,
        client_bottleneck: ops > 0
            && client_cpu_pct >= CLIENT_BOTTLENECK_PCT_PER_THREAD * cfg.threads as f64,
        latency_us: Latency::of(&all),
        ops_by_kind: by_kind,
        duration_s: facts.duration_s,
        warmup_s: cfg.warmup_s,
        prefill_ops: stats.prefill_ops,
        prefill_s: facts.prefill_s,
        unsent: stats.unsent,
        completions_per_enter: if stats.enters > 0 {
            stats.completions as f64 / stats.enters as f64
        } else {
            0.0
        },
        ring: stats.ring_mode,
        timeline: facts.timeline,
        config: cfg.clone(),
        loadgen_version: env!("CARGO_PKG_VERSION"),
    }
}

/// The final table, for a person.
pub fn table(s: &Summary) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "loadgen {}: {}", s.loadgen_version, s.config.describe());
    if s.prefill_ops > 0 {
        let _ = writeln!(
            o,
            "prefill: {} writes in {:.1} s",
            s.prefill_ops, s.prefill_s
        );
    }
    let _ = writeln!(
        o,
        "measured {:.2} s | ring {} | {:.1} completions per io_uring_enter",
        s.duration_s, s.ring, s.completions_per_enter
    );
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "{:<18} {:>10} {:>11} {:>9} {:>9} {:>9} {:>9} {:>10} {:>8} {:>8}",
        "op", "ops", "ops/s", "p50 us", "p90 us", "p99 us", "p99.9 us", "max us", "miss", "busy"
    );
    let row =
        |o: &mut String, name: &str, ops: u64, rate: f64, l: &Latency, miss: u64, busy: u64| {
            let _ = writeln!(
                o,
                "{:<18} {:>10} {:>11.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>10.1} {:>8} {:>8}",
                name, ops, rate, l.p50, l.p90, l.p99, l.p999, l.max, miss, busy
            );
        };
    for (name, k) in &s.ops_by_kind {
        row(
            &mut o,
            name,
            k.ops,
            k.ops_per_sec,
            &k.latency_us,
            k.miss,
            k.busy,
        );
    }
    row(
        &mut o,
        "all",
        s.ops,
        s.ops_per_sec,
        &s.latency_us,
        s.misses,
        s.lock_busy,
    );
    let _ = writeln!(o);
    if s.errors == 0 {
        let _ = writeln!(o, "errors: none");
    } else {
        let _ = writeln!(o, "errors: {}", s.errors);
        for (kind, n) in &s.errors_by_kind {
            let ex = s.error_examples.get(kind).map(String::as_str).unwrap_or("");
            let _ = writeln!(o, "  {n:>10}  {kind}  (first: {ex})");
        }
    }
    if s.unsent > 0 {
        let _ = writeln!(
            o,
            "open loop: {} arrivals were never sent (no free slot): the target rate was not held",
            s.unsent
        );
    }
    let _ = writeln!(
        o,
        "client CPU: {:.1}% of one core ({} thread(s); busiest thread {:.1}%), {:.2} us/op (user {:.2} s, sys {:.2} s)",
        s.client_cpu_pct,
        s.config.threads,
        s.client_thread_cpu_pct_max,
        s.client_cpu_us_per_op,
        s.client_cpu_user_s,
        s.client_cpu_sys_s
    );
    if s.client_bottleneck {
        let _ = writeln!(
            o,
            "WARNING: the client was the bottleneck (CPU >= {CLIENT_BOTTLENECK_PCT_PER_THREAD}% x {} thread(s)): \
             throughput and latency understate the server. Add --threads/CPUs or compare server CPU per op.",
            s.config.threads
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Args;
    use clap::Parser;

    fn cfg() -> Config {
        Config::from_args(
            &Args::try_parse_from([
                "loadgen",
                "--targets",
                "127.0.0.1:1",
                "--threads",
                "1",
                "--cpus",
                "0",
            ])
            .unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn summary_has_the_promised_fields() {
        let mut t = ThreadStats::new();
        for v in 1..=1000u64 {
            t.hist[OpKind::Get.index()].record(v * 1000).unwrap();
        }
        t.ok[OpKind::Get.index()] = 1000;
        t.cpu = CpuTime {
            user_us: 950_000,
            sys_us: 0,
        };
        let facts = RunFacts {
            duration_s: 2.0,
            cpu: CpuTime {
                user_us: 1_000_000,
                sys_us: 900_000,
            },
            cpu_wall_s: 2.0,
            prefill_s: 0.0,
            timeline: vec![],
            failure: None,
            deadline_hit: false,
        };
        let per = vec![t];
        let s = summarize(&cfg(), &per[0], &per, facts);
        assert_eq!(s.ops, 1000);
        assert_eq!(s.ops_per_sec, 500.0);
        assert_eq!(s.outcome, "ok");
        assert!((s.latency_us.p50 - 500.0).abs() < 1.0, "{:?}", s.latency_us);
        assert!((s.latency_us.max - 1000.0).abs() < 1.0);
        assert!((s.client_cpu_pct - 95.0).abs() < 1e-9);
        assert!(s.client_bottleneck, "95% of one thread's core");
        assert!((s.client_thread_cpu_pct_max - 47.5).abs() < 1e-9);
        let v = serde_json::to_value(&s).unwrap();
        for k in [
            "ops_per_sec",
            "errors",
            "client_cpu_pct",
            "duration_s",
            "ops_by_kind",
            "config",
        ] {
            assert!(v.get(k).is_some(), "{k}");
        }
        for k in ["p50", "p90", "p99", "p999", "max"] {
            assert!(v["latency_us"].get(k).is_some(), "{k}");
        }
        assert!(v["ops_by_kind"]["get"]["latency_us"]["p99"].is_number());
        let text = table(&s);
        assert!(
            text.contains("WARNING: the client was the bottleneck"),
            "{text}"
        );
        assert!(text.contains("errors: none"));
    }
}
