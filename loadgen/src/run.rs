//! Orchestration: start the workers, move them through connect → prefill → run, show progress,
//! enforce the hard deadline, gather and report the results.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::cli::{Args, Config};
use crate::report::{self, RunFacts, SecondSample};
use crate::stats::{ThreadStats, Tick, second_hist};
use crate::sys::{self, CpuTime};
use crate::worker::{STAGE_ABORT, STAGE_PREFILL, STAGE_RUN, Shared, WorkerSpec, run_worker};

pub const EXIT_OK: i32 = 0;
pub const EXIT_ERRORS: i32 = 1;
pub const EXIT_CANNOT_RUN: i32 = 2;
pub const EXIT_DEADLINE: i32 = 3;

/// Time the main thread allows worker threads past the hard deadline before it exits anyway.
const WATCHDOG_GRACE: Duration = Duration::from_secs(5);
/// How often the main thread looks at the workers.
const POLL: Duration = Duration::from_millis(20);

pub fn main() -> i32 {
    let args = Args::parse();
    let cfg = match Config::from_args(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("loadgen: {e}");
            return EXIT_CANNOT_RUN;
        }
    };
    run(cfg, args.json.as_deref(), args.plot.as_deref(), args.quiet)
}

/// The progress line: a spinner on a terminal, plain lines otherwise, nothing with --quiet.
struct Progress {
    bar: Option<ProgressBar>,
    plain: bool,
    last: Instant,
    last_done: u64,
}

impl Progress {
    fn new(quiet: bool) -> Self {
        let tty = std::io::stderr().is_terminal();
        let bar = (!quiet && tty).then(|| {
            let b = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            b.set_style(ProgressStyle::with_template("{spinner} {msg}").expect("valid template"));
            b
        });
        Progress {
            bar,
            plain: !quiet && !tty,
            last: Instant::now(),
            last_done: 0,
        }
    }

    /// Shows a line at most once a second.
    fn tick(&mut self, what: &str, done: u64, errors: u64) {
        let dt = self.last.elapsed();
        if dt < Duration::from_secs(1) {
            return;
        }
        let rate = done.saturating_sub(self.last_done) as f64 / dt.as_secs_f64();
        self.last = Instant::now();
        self.last_done = done;
        let line = format!("{what} | {rate:>10.0} ops/s | errors {errors}");
        if let Some(b) = &self.bar {
            b.set_message(line);
            b.tick();
        } else if self.plain {
            eprintln!("loadgen: {line}");
        }
    }

    fn reset_rate(&mut self, done: u64) {
        self.last_done = done;
        self.last = Instant::now();
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

fn totals(shared: &Shared) -> (u64, u64) {
    shared.progress.iter().fold((0, 0), |(d, e), p| {
        (
            d + p.done.load(Ordering::Relaxed),
            e + p.errors.load(Ordering::Relaxed),
        )
    })
}

/// Exits the process if the workers are stuck past the hard deadline (they stop by
/// themselves at the deadline; this is the backstop).
fn watchdog(watchdog_at: Instant, cfg: &Config, json: Option<&Path>) {
    if Instant::now() < watchdog_at {
        return;
    }
    let msg = format!(
        "hard deadline of {} s passed and worker threads did not stop; exiting",
        cfg.deadline_s
    );
    eprintln!("loadgen: {msg}");
    if let Some(path) = json {
        let v = serde_json::json!({
            "outcome": "deadline", "failure": msg, "ops_per_sec": 0.0, "ops": 0, "errors": 1,
            "client_cpu_pct": 0.0, "duration_s": 0.0,
            "latency_us": {"p50": 0.0, "p90": 0.0, "p99": 0.0, "p999": 0.0, "max": 0.0},
            "config": cfg,
        });
        let _ = std::fs::write(path, serde_json::to_string_pretty(&v).unwrap_or_default());
    }
    std::process::exit(EXIT_DEADLINE);
}

/// Runs the whole benchmark; returns the exit status.
pub fn run(cfg: Config, json: Option<&Path>, plot: Option<&Path>, quiet: bool) -> i32 {
    let cfg = Arc::new(cfg);
    let base = Instant::now();
    let shared = Arc::new(Shared::new(cfg.threads));
    let (tx, rx) = mpsc::channel::<Tick>();
    let mut handles = Vec::with_capacity(cfg.threads);
    for index in 0..cfg.threads {
        let spec = WorkerSpec {
            index,
            cfg: cfg.clone(),
            base,
            shared: shared.clone(),
            ticks: tx.clone(),
        };
        let h = thread::Builder::new()
            .name(format!("loadgen-{index}"))
            .spawn(move || run_worker(spec))
            .expect("spawning a worker thread");
        handles.push(h);
    }
    drop(tx);
    let watchdog_at = base + Duration::from_secs_f64(cfg.deadline_s) + WATCHDOG_GRACE;
    let mut progress = Progress::new(quiet);

    // Connect (each worker connects and handshakes its own connections).
    while shared.ready.load(Ordering::SeqCst) < cfg.threads {
        watchdog(watchdog_at, &cfg, json);
        thread::sleep(POLL);
    }
    let aborted = shared.abort.load(Ordering::SeqCst);
    let mut prefill_s = 0.0;
    if aborted {
        shared.stage.store(STAGE_ABORT, Ordering::SeqCst);
    } else {
        let t = Instant::now();
        shared.stage.store(STAGE_PREFILL, Ordering::SeqCst);
        while shared.prefilled.load(Ordering::SeqCst) < cfg.threads {
            watchdog(watchdog_at, &cfg, json);
            let (done, errors) = totals(&shared);
            progress.tick(&format!("prefill {done}/{}", cfg.keys), done, errors);
            thread::sleep(POLL);
        }
        if cfg.prefill {
            prefill_s = t.elapsed().as_secs_f64();
        }
        // Start a moment from now so every worker sees the start before it comes.
        let start_ns = base.elapsed().as_nanos() as u64 + 2_000_000;
        shared.start_ns.store(start_ns, Ordering::SeqCst);
        shared.stage.store(STAGE_RUN, Ordering::SeqCst);
    }

    let start_ns = shared.start_ns.load(Ordering::SeqCst);
    let measure_start =
        base + Duration::from_nanos(start_ns) + Duration::from_secs_f64(cfg.warmup_s);
    let mut cpu0: Option<(CpuTime, Instant)> = None;
    let mut seconds: BTreeMap<u64, (u64, u64, Histogram<u64>)> = BTreeMap::new();
    progress.reset_rate(totals(&shared).0);
    while !handles.iter().all(|h| h.is_finished()) {
        watchdog(watchdog_at, &cfg, json);
        if !aborted && cpu0.is_none() && Instant::now() >= measure_start {
            cpu0 = Some((sys::process_cpu(), Instant::now()));
        }
        collect_ticks(&rx, &mut seconds);
        if !aborted {
            let (done, errors) = totals(&shared);
            let what = if Instant::now() < measure_start {
                "warm-up".to_string()
            } else {
                let t = measure_start.elapsed().as_secs_f64();
                match cfg.duration_s {
                    Some(d) => format!("measuring {:.0}/{d:.0} s", t.min(d)),
                    None => format!("measuring {t:.0} s"),
                }
            };
            progress.tick(&what, done, errors);
        }
        let to_measure = measure_start.saturating_duration_since(Instant::now());
        thread::sleep(if to_measure.is_zero() {
            POLL
        } else {
            to_measure.min(POLL)
        });
    }
    let cpu1 = (sys::process_cpu(), Instant::now());
    progress.finish();
    let per_thread: Vec<ThreadStats> = handles
        .into_iter()
        .map(|h| h.join().expect("a worker thread panicked"))
        .collect();
    collect_ticks(&rx, &mut seconds);
    let mut total = ThreadStats::new();
    for t in &per_thread {
        total.merge(t);
    }

    let failure = aborted.then(|| shared.failures.lock().unwrap().join("; "));
    let deadline_hit = shared.deadline_hit.load(Ordering::SeqCst);
    let measure_start_ns = start_ns + (cfg.warmup_s * 1e9) as u64;
    let duration_s = match cfg.duration_s {
        Some(d) => d,
        None => total.measured_end_ns.saturating_sub(measure_start_ns) as f64 / 1e9,
    };
    let (cpu, cpu_wall_s) = match cpu0 {
        Some((c0, t0)) => (cpu1.0.since(&c0), cpu1.1.duration_since(t0).as_secs_f64()),
        None => (CpuTime::default(), 0.0),
    };
    let timeline = seconds
        .into_iter()
        .filter(|(s, _)| cfg.duration_s.is_none_or(|d| (*s as f64) < d.floor()))
        .map(|(t_s, (ops, errors, h))| sample(t_s, ops, errors, &h))
        .collect();
    let summary = report::summarize(
        &cfg,
        &total,
        &per_thread,
        RunFacts {
            duration_s,
            cpu,
            cpu_wall_s,
            prefill_s,
            timeline,
            failure: failure.clone(),
            deadline_hit,
        },
    );

    let mut code = if aborted {
        eprintln!("loadgen: cannot run: {}", failure.as_deref().unwrap_or("?"));
        EXIT_CANNOT_RUN
    } else {
        print!("{}", report::table(&summary));
        if deadline_hit {
            eprintln!(
                "loadgen: stopped by the hard deadline ({} s)",
                cfg.deadline_s
            );
            EXIT_DEADLINE
        } else if summary.errors > 0 {
            EXIT_ERRORS
        } else {
            EXIT_OK
        }
    };
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(&summary).expect("the summary serializes");
        if let Err(e) = std::fs::write(path, text + "\n") {
            eprintln!("loadgen: cannot write {}: {e}", path.display());
            code = code.max(EXIT_CANNOT_RUN);
        }
    }
    if let (Some(path), false) = (plot, aborted) {
        let title = cfg.title();
        if let Err(e) = crate::plot::draw(path, &title, &summary.timeline) {
            eprintln!("loadgen: cannot draw {}: {e}", path.display());
            code = code.max(EXIT_CANNOT_RUN);
        }
    }
    code
}

fn collect_ticks(rx: &Receiver<Tick>, seconds: &mut BTreeMap<u64, (u64, u64, Histogram<u64>)>) {
    while let Ok(t) = rx.try_recv() {
        let e = seconds
            .entry(t.second)
            .or_insert_with(|| (0, 0, second_hist()));
        e.0 += t.ops;
        e.1 += t.errors;
        e.2.add(&t.hist).expect("equal bounds");
    }
}

fn sample(t_s: u64, ops: u64, errors: u64, h: &Histogram<u64>) -> SecondSample {
    let us = |q: f64| {
        if h.is_empty() {
            0.0
        } else {
            h.value_at_quantile(q) as f64 / 1000.0
        }
    };
    SecondSample {
        t_s,
        ops,
        errors,
        p50_us: us(0.5),
        p90_us: us(0.9),
        p99_us: us(0.99),
        p999_us: us(0.999),
        max_us: if h.is_empty() {
            0.0
        } else {
            h.max() as f64 / 1000.0
        },
    }
}
