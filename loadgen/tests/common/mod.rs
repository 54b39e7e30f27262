//! Helpers for the integration tests: start a real server on a free loopback port, run the
//! loadgen binary against it, and check its JSON. Every wait is bounded; nothing asserts on
//! timing. Servers are killed when their guard drops, even when a test fails.

#![allow(dead_code)] // each test file uses a different part

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread::sleep;
use std::time::Duration;

use serde_json::Value;

pub const LOADGEN: &str = env!("CARGO_BIN_EXE_loadgen");
pub const ECHO_FLOOR: &str = env!("CARGO_BIN_EXE_echo-floor");

/// Kills the child when dropped.
pub struct Server {
    pub child: Child,
    pub addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Finds `bin` on PATH. Missing under CI (`CI=true`) fails the test: CI must never skip
/// silently. Elsewhere the test is skipped with the reason printed.
pub fn require(bin: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(bin))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        let why = format!("{bin} is not installed; run scripts/install-test-deps.sh");
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{why} (CI=true: this test must not be skipped)");
        }
        eprintln!("SKIPPED: {why}");
    }
    found
}

#[path = "../../../tests/support/ports.rs"]
mod ports;
pub use ports::free_port;

/// Waits until `addr` accepts connections, up to 200 tries (about 10 s).
pub fn wait_listening(addr: &str, child: &mut Child) {
    for _ in 0..200 {
        if TcpStream::connect(addr).is_ok() {
            // Whoever accepted must be our child: one that failed to bind has exited.
            sleep(Duration::from_millis(20));
            if let Ok(Some(status)) = child.try_wait() {
                panic!("server for {addr} exited after something else accepted there: {status}");
            }
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("server for {addr} exited before listening: {status}");
        }
        sleep(Duration::from_millis(50));
    }
    panic!("server did not listen on {addr}");
}

pub fn start_redis() -> Option<Server> {
    let bin = require("redis-server")?;
    let port = free_port();
    let mut child = Command::new(bin)
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start redis-server");
    let addr = format!("127.0.0.1:{port}");
    wait_listening(&addr, &mut child);
    Some(Server { child, addr })
}

pub fn start_memcached() -> Option<Server> {
    let bin = require("memcached")?;
    let port = free_port();
    let mut cmd = Command::new(bin);
    cmd.args([
        "-p",
        &port.to_string(),
        "-l",
        "127.0.0.1",
        "-U",
        "0",
        "-t",
        "1",
        "-m",
        "256",
    ]);
    // memcached refuses to run as root unless told which user to run as.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        cmd.args(["-u", "root"]);
    }
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start memcached");
    let addr = format!("127.0.0.1:{port}");
    wait_listening(&addr, &mut child);
    Some(Server { child, addr })
}

/// Starts echo-floor on a free port it picks itself, reading the address it prints.
pub fn start_echo_floor() -> Server {
    let mut child = Command::new(ECHO_FLOOR)
        .args(["--listen", "127.0.0.1:0", "--max-runtime", "300"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start echo-floor");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .expect("echo-floor prints its address");
    let addr = line
        .split_whitespace()
        .find(|w| w.starts_with("127.0.0.1:"))
        .unwrap_or_else(|| panic!("no address in echo-floor's first line: {line:?}"))
        .to_string();
    wait_listening(&addr, &mut child);
    Server { child, addr }
}

/// A file in cargo's per-test temporary directory.
pub fn tmp(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("loadgen-tests");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(format!("{}-{name}", std::process::id()))
}

/// Runs loadgen with `args` plus `--json FILE --quiet`; returns its output and the JSON.
pub fn loadgen(args: &[&str], json_name: &str) -> (Output, Value) {
    let json = tmp(json_name);
    let _ = std::fs::remove_file(&json);
    let out = Command::new(LOADGEN)
        .args(args)
        .arg("--json")
        .arg(&json)
        .arg("--quiet")
        .output()
        .expect("run loadgen");
    let text = std::fs::read_to_string(&json).unwrap_or_else(|e| {
        panic!(
            "loadgen wrote no JSON ({e}); status {}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let v: Value = serde_json::from_str(&text).expect("loadgen's JSON parses");
    (out, v)
}

/// The JSON has every promised field, the run measured something, and nothing failed.
pub fn assert_complete_and_clean(out: &Output, v: &Value) {
    let ctx = || {
        format!(
            "status {}\nstdout:\n{}\nstderr:\n{}\njson:\n{v:#}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    for k in [
        "ops_per_sec",
        "ops",
        "errors",
        "client_cpu_pct",
        "duration_s",
        "ops_by_kind",
        "config",
        "timeline",
    ] {
        assert!(v.get(k).is_some(), "JSON lacks {k}\n{}", ctx());
    }
    for k in ["p50", "p90", "p99", "p999", "max"] {
        assert!(
            v["latency_us"][k].is_number(),
            "JSON lacks latency_us.{k}\n{}",
            ctx()
        );
    }
    assert!(v["latency_us"]["max"].as_f64().unwrap() > 0.0, "{}", ctx());
    assert!(
        v["ops"].as_u64().unwrap() > 0,
        "no operations measured\n{}",
        ctx()
    );
    assert!(v["ops_per_sec"].as_f64().unwrap() > 0.0, "{}", ctx());
    assert_eq!(v["errors"].as_u64(), Some(0), "errors\n{}", ctx());
    assert_eq!(v["outcome"].as_str(), Some("ok"), "{}", ctx());
    assert!(out.status.success(), "loadgen failed\n{}", ctx());
    assert!(v["client_cpu_pct"].as_f64().unwrap() > 0.0, "{}", ctx());
}

/// The ops of one kind in the JSON (0 when absent).
pub fn ops_of(v: &Value, kind: &str) -> u64 {
    v["ops_by_kind"][kind]["ops"].as_u64().unwrap_or(0)
}
