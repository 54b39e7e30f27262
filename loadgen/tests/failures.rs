//! How loadgen reports targets that fail: refused connections, the wrong protocol, a server
//! that stops answering, a server that hangs up. Each run must stop by itself, say which target
//! and what went wrong, and exit non-zero.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::Command;
use std::thread;

use common::*;

/// A fake memcached on a free loopback port: answers the `version` handshake on each
/// connection, then either never answers again (`hang_up` false) or closes the connection
/// after the first request (`hang_up` true). Serves `conns` connections, then stops.
fn fake_memcached(conns: usize, hang_up: bool) -> (String, thread::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let h = thread::spawn(move || {
        let mut held = Vec::new();
        for _ in 0..conns {
            let Ok((s, _)) = l.accept() else { return };
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            if r.read_line(&mut line).is_err() || line != "version\r\n" {
                continue;
            }
            let mut w = s;
            w.write_all(b"VERSION 0.0-test\r\n").unwrap();
            if hang_up {
                line.clear();
                let _ = r.read_line(&mut line);
                drop(w);
            } else {
                // Keep it open, silent, until loadgen closes it.
                held.push((r, w));
            }
        }
        for (mut r, _) in held {
            let mut sink = Vec::new();
            let _ = std::io::Read::read_to_end(&mut r, &mut sink);
        }
    });
    (addr, h)
}

#[test]
fn a_silent_server_times_out_and_the_run_still_ends() {
    let (addr, server) = fake_memcached(2, false);
    let (out, v) = loadgen(
        &[
            "--protocol",
            "memcache",
            "--targets",
            &addr,
            "--connections",
            "2",
            "--duration",
            "1",
            "--warmup",
            "0",
            "--timeout",
            "0.5",
        ],
        "silent.json",
    );
    assert_eq!(out.status.code(), Some(1), "completed with errors: exit 1");
    assert_eq!(v["outcome"].as_str(), Some("errors"));
    assert!(
        v["errors_by_kind"]["timeout"].as_u64().unwrap() >= 2,
        "{v:#}"
    );
    assert!(
        v["error_examples"]["timeout"]
            .as_str()
            .unwrap()
            .contains(&addr),
        "{v:#}"
    );
    assert_eq!(v["ops"].as_u64(), Some(0));
    server.join().unwrap();
}

#[test]
fn a_server_that_hangs_up_is_a_lost_connection() {
    let (addr, server) = fake_memcached(1, true);
    let (out, v) = loadgen(
        &[
            "--protocol",
            "memcache",
            "--targets",
            &addr,
            "--connections",
            "1",
            "--pipeline",
            "3",
            "--duration",
            "1",
            "--warmup",
            "0",
        ],
        "hangup.json",
    );
    assert_eq!(out.status.code(), Some(1));
    // Every request outstanding on the connection when it closed counts.
    assert_eq!(
        v["errors_by_kind"]["connection_lost"].as_u64(),
        Some(3),
        "{v:#}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&addr) && stderr.contains("closed"),
        "{stderr}"
    );
    server.join().unwrap();
}

#[test]
fn connection_refused_is_reported_with_the_target() {
    // A port nobody listens on (probed free, and outside the ephemeral range so the
    // client cannot connect to itself there).
    let port = free_port();
    let target = format!("127.0.0.1:{port}");
    let (out, v) = loadgen(
        &[
            "--protocol",
            "resp",
            "--targets",
            &target,
            "--duration",
            "1",
        ],
        "refused.json",
    );
    assert_eq!(out.status.code(), Some(2), "could not run: exit 2");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&target), "names the target: {stderr}");
    assert!(
        stderr.to_lowercase().contains("refused"),
        "says what failed: {stderr}"
    );
    assert_eq!(v["outcome"].as_str(), Some("connect_failed"));
    assert!(v["errors_by_kind"]["connect_failed"].as_u64().unwrap() > 0);
    assert!(v["failure"].as_str().unwrap().contains(&target));
}

#[test]
fn wrong_protocol_fails_the_handshake_clearly() {
    let echo = start_echo_floor();
    // A RESP client talking to a native server: echo-floor closes on the bad frame header.
    let out = Command::new(LOADGEN)
        .args([
            "--protocol",
            "resp",
            "--targets",
            &echo.addr,
            "--duration",
            "1",
            "--quiet",
        ])
        .args(["--connect-timeout", "2"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&echo.addr) && stderr.contains("handshake"),
        "{stderr}"
    );
}

#[test]
fn bad_arguments_exit_2_with_a_reason() {
    let out = Command::new(LOADGEN)
        .args(["--targets", "127.0.0.1:1", "--ratio", "0:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ratio"));
}
