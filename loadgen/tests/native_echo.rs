//! loadgen's native protocol against `echo-floor` (which answers Hello, NsOpen, reads, writes
//! and the session pair with minimal native replies). The test against a real stategrid server
//! is added with the server.

mod common;

use common::*;

#[test]
fn native_get_put_against_echo_floor() {
    let echo = start_echo_floor();
    let (out, v) = loadgen(
        &[
            "--protocol",
            "native",
            "--targets",
            &echo.addr,
            "--duration",
            "2",
            "--warmup",
            "0.2",
            "--connections",
            "4",
            "--pipeline",
            "8",
            "--ratio",
            "90:10",
            "--value-size",
            "1..4096",
        ],
        "echo-getput.json",
    );
    assert_complete_and_clean(&out, &v);
    assert!(ops_of(&v, "get") > 0 && ops_of(&v, "put") > 0);
    assert_eq!(v["config"]["protocol"].as_str(), Some("native"));
    assert_eq!(
        v["ring"].as_str(),
        Some("single_issuer+defer_taskrun"),
        "kernel 6.1+ expected here"
    );
}

#[test]
fn native_session_cycle_and_two_threads_against_echo_floor() {
    let echo = start_echo_floor();
    let (out, v) = loadgen(
        &[
            "--protocol",
            "native",
            "--targets",
            &format!("{0},{0}", echo.addr),
            "--threads",
            "2",
            "--requests",
            "30000",
            "--warmup",
            "0.1",
            "--connections",
            "3",
            "--pipeline",
            "4",
            "--session",
            "--prefill",
            "--keys",
            "1000",
        ],
        "echo-session.json",
    );
    assert_complete_and_clean(&out, &v);
    assert_eq!(v["ops"].as_u64(), Some(30000));
    assert_eq!(v["prefill_ops"].as_u64(), Some(1000));
    // echo-floor grants every lock, so each read-and-lock is followed by an update-and-unlock.
    let (locks, updates) = (ops_of(&v, "read-and-lock"), ops_of(&v, "update-and-unlock"));
    assert!(
        locks.abs_diff(updates) <= 2 * 3 * 4,
        "{locks} locks, {updates} updates"
    );
}
