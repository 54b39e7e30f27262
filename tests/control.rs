//! The control plane with real processes on loopback addresses: three `stategrid serve` hosts
//! on 127.0.0.1-3 (the same ports on each address) find each other through the static `hosts`
//! list, form a store and spread the partitions; a `kill -9` fails over; `leave --wait`
//! drains a host. And a 2-host store with a `stategrid witness` fails over to the survivor.
//!
//! Every wait is bounded polling of `stategrid query --json`; nothing asserts on time. The
//! times observed are printed (`cargo test --test control -- --nocapture`).

mod common;

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Upper bound for the store to reach a state (a liveness bound, not a timing assertion:
/// generous for a loaded 2-core CI machine).
const WAIT_MS_MAX: u64 = 90_000;
const PARTITIONS: u64 = 1024;

/// One process (`serve` or `witness`), killed when dropped.
struct Proc {
    name: String,
    child: Child,
    dir: tempfile::TempDir,
}

impl Proc {
    fn output(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default();
        format!(
            "--- {} stdout ---\n{}--- {} stderr ---\n{}",
            self.name,
            read("stdout.txt"),
            self.name,
            read("stderr.txt")
        )
    }

    fn kill9(&mut self) {
        self.child.kill().expect("kill -9");
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.output());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Clone, Copy)]
struct Ports {
    svr: u16,
    mgt: u16,
    int: u16,
}

fn ports() -> Ports {
    Ports {
        svr: common::free_port(),
        mgt: common::free_port(),
        int: common::free_port(),
    }
}

fn spawn(cmd: &str, ip: &str, p: Ports, others: &[&str], extra: &[(&str, &str)]) -> Proc {
    let dir = tempfile::tempdir().expect("temp dir");
    let log_dir = dir.path().join("log");
    let hosts: Vec<String> = others.iter().map(|o| format!("{o}:{}", p.mgt)).collect();
    let mut sets = vec![
        ("net_interface".to_string(), ip.to_string()),
        ("svr_port".into(), p.svr.to_string()),
        ("mgt_port".into(), p.mgt.to_string()),
        ("int_port".into(), p.int.to_string()),
        ("shards".into(), "1".into()),
        ("use_multicast".into(), "0".into()),
        ("hosts".into(), hosts.join(",")),
        ("log_dir".into(), log_dir.display().to_string()),
    ];
    for (k, v) in extra {
        sets.push((k.to_string(), v.to_string()));
    }
    let mut c = Command::new(common::bin());
    c.arg(cmd);
    for (k, v) in &sets {
        c.arg("--set").arg(format!("{k}={v}"));
    }
    let out = std::fs::File::create(dir.path().join("stdout.txt")).unwrap();
    let err = std::fs::File::create(dir.path().join("stderr.txt")).unwrap();
    c.stdin(Stdio::null()).stdout(out).stderr(err);
    let child = c.spawn().expect("spawn stategrid");
    Proc {
        name: format!("{cmd} {ip}"),
        child,
        dir,
    }
}

fn cli(args: &[&str]) -> Output {
    Command::new(common::bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run stategrid")
}

/// `stategrid query --json` at `mgt`, or None while it cannot answer.
fn query(mgt: &str) -> Option<Value> {
    let out = cli(&["query", "--json", "--mgt", mgt]);
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// Polls `query` at `mgt` until `done` accepts the answer; panics with the last answer and
/// the processes' output after [`WAIT_MS_MAX`].
fn wait_for(what: &str, mgt: &str, procs: &[&Proc], done: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    let mut last = None;
    while start.elapsed() < Duration::from_millis(WAIT_MS_MAX) {
        if let Some(v) = query(mgt) {
            if done(&v) {
                return v;
            }
            last = Some(v);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let outputs: Vec<String> = procs.iter().map(|p| p.output()).collect();
    panic!(
        "{what}: not reached within {WAIT_MS_MAX} ms; last query answer: {}\n{}",
        last.map(|v| v.to_string()).unwrap_or_else(|| "none".into()),
        outputs.join("\n")
    );
}

fn hosts(v: &Value) -> Vec<Value> {
    v["hosts"].as_array().cloned().unwrap_or_default()
}

fn by_ip(v: &Value, ip: &str) -> Option<Value> {
    hosts(v).into_iter().find(|h| {
        h["addr"]
            .as_str()
            .is_some_and(|a| a.starts_with(&format!("{ip}:")))
    })
}

fn n(h: &Value, field: &str) -> u64 {
    h[field].as_u64().unwrap_or(0)
}

/// Every listed host active, `count` of them, primaries within ±1 of an even share, nothing
/// pending.
fn spread(v: &Value, count: usize, data_hosts: u64) -> bool {
    let hs = hosts(v);
    let share = PARTITIONS as f64 / data_hosts as f64;
    v["member"] == true
        && hs.len() == count
        && hs
            .iter()
            .all(|h| h["state"] == "active" && n(h, "pending") == 0)
        && hs
            .iter()
            .filter(|h| n(h, "primaries") > 0)
            .all(|h| (n(h, "primaries") as f64 - share).abs() <= 1.0)
        && hs.iter().map(|h| n(h, "primaries")).sum::<u64>() == PARTITIONS
        && hs.iter().filter(|h| n(h, "primaries") > 0).count() as u64 == data_hosts
}

/// The host at `ip` is failed or gone, and no partition names it.
fn failed_over(v: &Value, ip: &str) -> bool {
    let gone = match by_ip(v, ip) {
        None => true,
        Some(h) => {
            h["state"] == "failed" && n(&h, "primaries") + n(&h, "replicas") + n(&h, "pending") == 0
        }
    };
    gone && hosts(v).iter().map(|h| n(h, "primaries")).sum::<u64>() == PARTITIONS
}

fn exited(p: &mut Proc) -> bool {
    p.child.try_wait().ok().flatten().is_some()
}

#[test]
fn three_hosts_spread_fail_over_and_leave() {
    let p = ports();
    let ips = ["127.0.0.1", "127.0.0.2", "127.0.0.3"];
    let mut procs: Vec<Proc> = ips
        .iter()
        .map(|ip| {
            let others: Vec<&str> = ips.iter().copied().filter(|o| o != ip).collect();
            spawn("serve", ip, p, &others, &[])
        })
        .collect();
    let mgt = |i: usize| format!("{}:{}", ips[i], p.mgt);
    let started = Instant::now();
    let refs: Vec<&Proc> = procs.iter().collect();
    let v = wait_for(
        "3 active hosts sharing the primaries",
        &mgt(0),
        &refs,
        |v| spread(v, 3, 3),
    );
    println!(
        "store formed and spread in {} ms: {}",
        started.elapsed().as_millis(),
        v
    );
    assert!(v["leader"].is_string(), "a leader is known: {v}");

    // kill -9 the third host: it is declared failed and loses every partition.
    procs[2].kill9();
    let killed = Instant::now();
    let refs: Vec<&Proc> = procs[..2].iter().collect();
    let v = wait_for("the killed host failed over", &mgt(0), &refs, |v| {
        failed_over(v, ips[2])
    });
    println!(
        "failover observed {} ms after kill -9 (new map epoch {}): {}",
        killed.elapsed().as_millis(),
        v["epoch"],
        v
    );
    for p in procs[..2].iter_mut() {
        assert!(!exited(p), "{} exited", p.name);
    }

    // The second host leaves and ends up owning nothing; the first keeps everything.
    let out = cli(&[
        "leave",
        "--wait",
        "--timeout",
        "90",
        "--mgt",
        &mgt(1),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "leave --wait: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["partitions_left"], 0, "{answer}");
    assert_eq!(answer["done"], true, "{answer}");
    let refs: Vec<&Proc> = procs[..2].iter().collect();
    let v = wait_for("the leaving host owns nothing", &mgt(0), &refs, |v| {
        by_ip(v, ips[1]).is_some_and(|h| {
            h["state"] == "leaving"
                && n(&h, "primaries") + n(&h, "replicas") + n(&h, "pending") == 0
        })
    });
    let first = by_ip(&v, ips[0]).unwrap();
    assert_eq!(n(&first, "primaries"), PARTITIONS, "{v}");
}

#[test]
fn two_hosts_and_a_witness_fail_over_to_the_survivor() {
    let p = ports();
    let ips = ["127.0.0.1", "127.0.0.2", "127.0.0.3"];
    let mut a = spawn("serve", ips[0], p, &[ips[1], ips[2]], &[]);
    let mut b = spawn("serve", ips[1], p, &[ips[0], ips[2]], &[]);
    let w = spawn("witness", ips[2], p, &[ips[0], ips[1]], &[]);
    let mgt_a = format!("{}:{}", ips[0], p.mgt);
    let v = wait_for(
        "2 hosts sharing the primaries, plus the witness",
        &mgt_a,
        &[&a, &b, &w],
        |v| spread(v, 3, 2) && by_ip(v, ips[2]).is_some_and(|h| n(&h, "primaries") == 0),
    );
    println!("2 hosts + witness: {v}");
    let witness = by_ip(&v, ips[2]).unwrap();
    assert_eq!(n(&witness, "replicas"), 0, "the witness holds nothing: {v}");

    b.kill9();
    let killed = Instant::now();
    let v = wait_for(
        "the survivor is primary of everything",
        &mgt_a,
        &[&a, &w],
        |v| {
            failed_over(v, ips[1])
                && by_ip(v, ips[0]).is_some_and(|h| n(&h, "primaries") == PARTITIONS)
        },
    );
    println!(
        "witness failover observed {} ms after kill -9: {v}",
        killed.elapsed().as_millis()
    );
    assert!(!exited(&mut a), "the survivor keeps running");
}

/// A lone host with nothing to discover has a map at once; `set --all` reaches the planner
/// and an unsettable parameter is refused with the list of settable ones.
#[test]
fn lone_host_query_and_set() {
    let p = ports();
    let h = spawn("serve", "127.0.0.1", p, &[], &[]);
    let mgt = format!("127.0.0.1:{}", p.mgt);
    wait_for("a lone host owns everything", &mgt, &[&h], |v| {
        spread(v, 1, 1)
    });
    let out = cli(&["set", "store_weight", "5", "--all", "--mgt", &mgt]);
    assert_eq!(out.status.code(), Some(4), "refused");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("settable: max_replicas"), "{err}");
    let out = cli(&["set", "max_replicas", "2", "--mgt", &mgt]);
    assert_eq!(out.status.code(), Some(2), "--all is required");
    let out = cli(&["set", "max_replicas", "2", "--all", "--mgt", &mgt, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["value"], "2", "{v}");
    // Nothing to reach: exit 5 with the fix in the message.
    let out = cli(&[
        "query",
        "--mgt",
        &format!("127.0.0.1:{}", common::free_port()),
    ]);
    assert_eq!(out.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--mgt"));
}
