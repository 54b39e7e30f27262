//! Bad input, slow peers, shutdown, allocation and memory behaviour, and preflight failures,
//! all against real server processes over real sockets.

mod common;

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use common::TestServer;
use common::raw::{Raw, decode};
use stategrid_proto::frame::{FrameHeader, HEADER_BYTES};
use stategrid_proto::{ErrorCode, Key, PROTOCOL_VERSION, Request, Response, WriteOpts, codec};

fn error_code(resp: &Response) -> ErrorCode {
    match resp {
        Response::Error(e) => e.code,
        other => panic!("expected an error, got {other:?}"),
    }
}

fn key(ns: u32, k: &str) -> Key {
    Key {
        ns,
        key: k.as_bytes().to_vec(),
    }
}

/// Puts a known object and returns a check that it is unchanged.
fn plant(server: &TestServer) -> impl Fn() {
    let c = server.blocking_client();
    let ns = c.namespace("planted").unwrap();
    ns.put("k", b"precious value", WriteOpts::default())
        .unwrap();
    let v = ns.read("k").unwrap().meta.version;
    move || {
        let r = ns.read("k").unwrap();
        assert_eq!(r.value, b"precious value");
        assert_eq!(r.meta.version, v, "bad input changed stored data");
        assert_eq!(ns.count().unwrap(), 1);
    }
}

#[test]
fn random_bytes_close_only_that_connection() {
    let server = TestServer::start(&[("shards", "2")]);
    let check = plant(&server);
    let mut good = Raw::hello(&server);
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..50 {
        let mut bad = Raw::connect(&server);
        // At least a header's worth: fewer bytes are an incomplete frame, not a bad one.
        let mut junk = vec![0u8; HEADER_BYTES + round * 37 % 3000];
        for b in junk.iter_mut() {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            *b = rng as u8;
        }
        let _ = bad.s.write_all(&junk);
        bad.expect_eof();
    }
    // The good connection, and the data, are untouched.
    good.send(
        9,
        &Request::Read {
            key: key(stategrid_proto::hash::namespace_id("planted"), "k"),
        },
        b"",
    );
    let (id, resp) = good.recv();
    assert_eq!(id, 9);
    assert!(matches!(resp, Response::Value { .. }), "{resp:?}");
    check();
}

#[test]
fn invalid_archive_in_a_valid_frame_is_answered_and_the_connection_goes_on() {
    let server = TestServer::start(&[]);
    let check = plant(&server);
    let mut c = Raw::hello(&server);
    let mut rng = 12345u64;
    for i in 0..500u32 {
        let len = 8 + (i as usize * 13) % 200;
        let mut archive = vec![0u8; len];
        for b in archive.iter_mut() {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            *b = (rng >> 33) as u8;
        }
        let h = FrameHeader {
            archive_bytes: len as u32,
            value_bytes: 0,
            request_id: 1000 + i,
        };
        let mut out = vec![0u8; h.frame_bytes()];
        h.write_to((&mut out[..HEADER_BYTES]).try_into().unwrap());
        out[HEADER_BYTES..HEADER_BYTES + len].copy_from_slice(&archive);
        c.s.write_all(&out).unwrap();
        let (id, resp) = c.recv();
        assert_eq!(id, 1000 + i);
        // Random bytes may happen to be a valid request; then it is served like any other.
        if let Response::Error(e) = &resp {
            assert!(
                matches!(
                    e.code,
                    ErrorCode::InvalidRequest
                        // A host-to-host request (valid by chance) on the client port.
                        | ErrorCode::Forbidden
                        | ErrorCode::NotFound
                        | ErrorCode::KeyTooLong
                        | ErrorCode::TooManyItems
                        | ErrorCode::NameTooLong
                        | ErrorCode::ObjectTooLarge
                ),
                "{e:?}"
            );
        }
    }
    check();
}

#[test]
fn oversized_frame_gets_frame_too_large_then_close() {
    let server = TestServer::start(&[("object_bytes_max", "1024"), ("frame_bytes_max", "2MiB")]);
    let check = plant(&server);
    let mut c = Raw::hello(&server);
    let h = FrameHeader {
        archive_bytes: 64,
        value_bytes: 512 << 20,
        request_id: 77,
    };
    let mut out = [0u8; HEADER_BYTES];
    h.write_to(&mut out);
    c.s.write_all(&out).unwrap();
    let (id, resp) = c.recv();
    assert_eq!(id, 77);
    assert_eq!(error_code(&resp), ErrorCode::FrameTooLarge);
    c.expect_eof();
    check();
}

#[test]
fn host_to_host_requests_on_the_client_port_are_forbidden() {
    let server = TestServer::start(&[]);
    let check = plant(&server);
    let mut c = Raw::hello(&server);
    // A client must not be able to overwrite an object as if it were the primary replicating.
    c.send(
        3,
        &Request::Replicate {
            epoch: u64::MAX,
            from: 1,
            partition: stategrid_proto::partition_of(stategrid_proto::key_hash(
                stategrid_proto::hash::namespace_id("planted"),
                b"k",
            )),
            key: key(stategrid_proto::hash::namespace_id("planted"), "k"),
            state: None,
        },
        b"",
    );
    let (id, resp) = c.recv();
    assert_eq!(id, 3);
    assert_eq!(error_code(&resp), ErrorCode::Forbidden, "{resp:?}");
    c.send(
        4,
        &Request::MigratePull {
            epoch: 1,
            to: 1,
            partition: 0,
        },
        b"",
    );
    assert_eq!(error_code(&c.recv().1), ErrorCode::Forbidden);
    // The connection goes on, and the object is untouched.
    c.send(5, &Request::GetMap, b"");
    assert!(matches!(c.recv().1, Response::Map(_)));
    check();
}

#[test]
fn value_over_object_bytes_max_is_refused_and_the_connection_goes_on() {
    let server = TestServer::start(&[("object_bytes_max", "1024")]);
    let mut c = Raw::hello(&server);
    let ns = stategrid_proto::hash::namespace_id("x");
    c.send(
        5,
        &Request::Put {
            key: key(ns, "big"),
            opts: WriteOpts::default(),
        },
        &[7u8; 2000],
    );
    let (id, resp) = c.recv();
    assert_eq!(id, 5);
    assert_eq!(error_code(&resp), ErrorCode::ObjectTooLarge);
    c.send(
        6,
        &Request::Read {
            key: key(ns, "big"),
        },
        b"",
    );
    assert_eq!(error_code(&c.recv().1), ErrorCode::NotFound);
}

#[test]
fn handshake_is_required_and_versions_are_checked() {
    let server = TestServer::start(&[]);
    let mut c = Raw::connect(&server);
    c.send(3, &Request::Stats, b"");
    let (id, resp) = c.recv();
    assert_eq!(id, 3);
    assert_eq!(error_code(&resp), ErrorCode::HandshakeRequired);
    c.expect_eof();

    let mut c = Raw::connect(&server);
    c.send(
        4,
        &Request::Hello {
            version: PROTOCOL_VERSION + 100,
            client: "future".into(),
        },
        b"",
    );
    match c.recv().1 {
        Response::Error(e) => {
            assert_eq!(e.code, ErrorCode::UnsupportedVersion);
            assert_eq!(e.detail, PROTOCOL_VERSION as u64);
        }
        other => panic!("{other:?}"),
    }
    c.expect_eof();
}

#[test]
fn a_value_on_a_request_that_carries_none_is_invalid() {
    let server = TestServer::start(&[]);
    let mut c = Raw::hello(&server);
    c.send(8, &Request::Read { key: key(1, "k") }, b"unexpected");
    assert_eq!(error_code(&c.recv().1), ErrorCode::InvalidRequest);
}

#[test]
fn truncated_frames_and_abrupt_closes_do_not_disturb_others() {
    let server = TestServer::start(&[("shards", "2")]);
    let check = plant(&server);
    for cut in [1usize, 7, 15, 16, 17, 40] {
        let mut c = Raw::hello(&server);
        let mut out = Vec::new();
        codec::encode_request(
            &mut out,
            1,
            &Request::Put {
                key: key(1, "t"),
                opts: WriteOpts::default(),
            },
            &[1u8; 100],
        );
        c.s.write_all(&out[..cut.min(out.len() - 1)]).unwrap();
        drop(c);
    }
    check();
}

#[test]
fn a_stuck_half_frame_is_closed_after_frame_timeout_while_others_are_served() {
    let server = TestServer::start(&[("frame_timeout_ms", "300"), ("sweep_interval_ms", "50")]);
    let check = plant(&server);
    let mut slow = Raw::hello(&server);
    let mut out = Vec::new();
    codec::encode_request(&mut out, 1, &Request::Stats, b"");
    slow.s.write_all(&out[..10]).unwrap();
    // Meanwhile another client is served normally.
    let c = server.blocking_client();
    for _ in 0..20 {
        c.stats().unwrap();
    }
    slow.expect_eof();
    check();
}

#[test]
fn a_slow_sender_that_finishes_is_served() {
    let server = TestServer::start(&[]);
    let mut c = Raw::hello(&server);
    let mut out = Vec::new();
    codec::encode_request(
        &mut out,
        42,
        &Request::Put {
            key: key(1, "slow"),
            opts: WriteOpts::default(),
        },
        b"trickled",
    );
    for b in &out {
        c.s.write_all(std::slice::from_ref(b)).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    let (id, resp) = c.recv();
    assert_eq!(id, 42);
    assert!(matches!(resp, Response::Written { version: 1 }), "{resp:?}");
}

#[test]
fn sigterm_finishes_in_flight_requests_and_exits_0() {
    let mut server = TestServer::start(&[("shards", "2")]);
    let mut c = Raw::hello(&server);
    let ns = stategrid_proto::hash::namespace_id("drain");
    let mut out = Vec::new();
    let n = 300u32;
    for i in 0..n {
        codec::encode_request(
            &mut out,
            i,
            &Request::Put {
                key: key(ns, &format!("k{i}")),
                opts: WriteOpts::default(),
            },
            b"v",
        );
    }
    c.s.write_all(&out).unwrap();
    // Once the first answer is here the server has read the batch; then stop it.
    let (first, _) = c.recv();
    assert_eq!(first, 0);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) };
    let mut answered = 1;
    while let Some((id, archive, _)) = c.try_recv_frame() {
        assert_eq!(id, answered, "answers stay in order through shutdown");
        assert!(matches!(decode(&archive), Response::Written { .. }));
        answered += 1;
    }
    assert_eq!(answered, n, "every request read before SIGTERM is answered");
    let status = server.stop_graceful();
    assert!(status.success(), "exit status {status}");
}

/// Serving a read of a 1 KiB object that lives on the receiving shard allocates nothing.
///
/// The shard counts the allocations its thread makes while handling socket completions
/// (parsing, executing, answering: `serve_allocations`), apart from the runtime's own (glommio
/// timers and wake-ups). Stats requests bracket the reads; what two back-to-back stats
/// requests cost is subtracted, and the rest must be zero.
#[test]
fn local_reads_do_not_allocate() {
    let server = TestServer::start(&[("shards", "1")]);
    let mut c = Raw::hello(&server);
    let ns = stategrid_proto::hash::namespace_id("alloc");
    c.send(
        1,
        &Request::Put {
            key: key(ns, "obj"),
            opts: WriteOpts::default(),
        },
        &[5u8; 1024],
    );
    c.recv();
    let stats = |c: &mut Raw| -> u64 {
        c.send(2, &Request::Stats, b"");
        match c.recv().1 {
            Response::Stats(s) => s.serve_allocations,
            other => panic!("{other:?}"),
        }
    };
    let n = 2000u32;
    let mut reads = Vec::new();
    for i in 0..n {
        codec::encode_request(
            &mut reads,
            10 + i,
            &Request::Read {
                key: key(ns, "obj"),
            },
            b"",
        );
    }
    let read_all = |c: &mut Raw| {
        c.s.write_all(&reads).unwrap();
        for _ in 0..n {
            let (_, r) = c.recv();
            assert!(matches!(r, Response::Value { .. }), "{r:?}");
        }
    };
    // Warm up: buffers grow to their steady size on first use.
    for _ in 0..4 {
        read_all(&mut c);
        stats(&mut c);
    }
    let a0 = stats(&mut c);
    let a1 = stats(&mut c);
    read_all(&mut c);
    let a2 = stats(&mut c);
    let (stats_only, with_reads) = (a1 - a0, a2 - a1);
    println!("serving allocations: stats alone {stats_only}, stats + {n} reads {with_reads}");
    assert!(
        with_reads <= stats_only + 2,
        "{n} reads allocated {} times while being served",
        with_reads - stats_only
    );
}

/// With max_memory set, resident memory tracks it: fill far past the limit with evictable
/// 1 KiB objects and check the growth of the process's resident memory.
#[test]
fn resident_memory_stays_within_10_percent_of_max_memory() {
    let max: u64 = 64 << 20;
    let server = TestServer::start(&[("shards", "1"), ("max_memory", "64MiB")]);
    let c = server.blocking_client();
    let before = c.stats().unwrap().resident_bytes;
    let ns = c.namespace("fill").unwrap();
    let value = vec![3u8; 1024];
    let batch = 500;
    for b in 0..(200_000 / batch) {
        let items: Vec<(String, &[u8])> = (0..batch)
            .map(|i| (format!("key-{b}-{i}"), &value[..]))
            .collect();
        let res = ns.bulk_put(&items, WriteOpts::default()).unwrap();
        assert!(
            res.iter().all(|r| r.is_ok()),
            "evictable writes must not fail"
        );
    }
    let st = c.stats().unwrap();
    assert!(st.evictions > 0, "filling 200 MB into 64 MiB must evict");
    assert!(
        st.object_bytes <= max,
        "accounted {} > max {max}",
        st.object_bytes
    );
    let growth = st.resident_bytes.saturating_sub(before);
    println!(
        "max_memory {max}, accounted {}, objects {}, resident growth {growth} ({:.1}% of max_memory)",
        st.object_bytes,
        st.objects,
        growth as f64 * 100.0 / max as f64
    );
    assert!(
        growth as f64 <= max as f64 * 1.10,
        "resident memory grew {growth} bytes for max_memory {max}"
    );
}

fn serve_output(cmd: &mut Command) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    cmd.arg("serve")
        .arg("--set")
        .arg(format!("svr_port={}", common::free_port()))
        .arg("--set")
        .arg(format!("log_dir={}", dir.path().display()))
        .arg("--set")
        .arg("shards=1");
    cmd.output().unwrap()
}

#[test]
fn preflight_memlock_too_low_exits_13_with_the_fix() {
    let mut cmd = Command::new(common::bin());
    // SAFETY: setrlimit is async-signal-safe; runs in the child before exec.
    unsafe {
        cmd.pre_exec(|| {
            let rl = libc::rlimit {
                rlim_cur: 128 * 1024,
                rlim_max: 128 * 1024,
            };
            if libc::setrlimit(libc::RLIMIT_MEMLOCK, &rl) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = serve_output(&mut cmd);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(13), "stderr: {err}");
    assert!(
        err.contains("RLIMIT_MEMLOCK") && err.contains("ulimit -l"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

/// Blocks io_uring_setup with EPERM, as Docker's default seccomp profile does.
#[test]
fn preflight_io_uring_blocked_by_seccomp_exits_12_with_the_fix() {
    let mut cmd = Command::new(common::bin());
    // SAFETY: prctl calls only, in the child before exec.
    unsafe {
        cmd.pre_exec(|| {
            const SYS_IO_URING_SETUP: u32 = 425;
            const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
            const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
            let filter = [
                // A = syscall number
                libc::sock_filter {
                    code: 0x20,
                    jt: 0,
                    jf: 0,
                    k: 0,
                },
                // if A == io_uring_setup fall through, else skip one
                libc::sock_filter {
                    code: 0x15,
                    jt: 0,
                    jf: 1,
                    k: SYS_IO_URING_SETUP,
                },
                libc::sock_filter {
                    code: 0x06,
                    jt: 0,
                    jf: 0,
                    k: SECCOMP_RET_ERRNO | libc::EPERM as u32,
                },
                libc::sock_filter {
                    code: 0x06,
                    jt: 0,
                    jf: 0,
                    k: SECCOMP_RET_ALLOW,
                },
            ];
            let prog = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_ptr() as *mut _,
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::prctl(
                libc::PR_SET_SECCOMP,
                2, /* SECCOMP_MODE_FILTER */
                &prog as *const _ as usize,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = serve_output(&mut cmd);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(12), "stderr: {err}");
    assert!(
        err.contains("seccomp") && err.contains("--ulimit memlock=-1"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bad_parameters_stop_start_up_with_name_value_and_allowed() {
    let out = Command::new(common::bin())
        .args(["serve", "--set", "lru_threshold=150"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("lru_threshold") && err.contains("150") && err.contains("1 to 100"),
        "{err}"
    );
    let out = Command::new(common::bin())
        .args(["serve", "--set", "no_such_param=1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown parameter 'no_such_param'"));
}

#[test]
fn a_port_in_use_exits_14() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(common::bin())
        .args([
            "serve",
            "--set",
            &format!("svr_port={port}"),
            "--set",
            &format!("log_dir={}", dir.path().display()),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(14), "{err}");
    assert!(err.contains("svr_port"), "{err}");
}

#[test]
fn a_second_server_on_the_same_port_exits_14() {
    let first = TestServer::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(common::bin())
        .args([
            "serve",
            "--set",
            &format!("svr_port={}", first.addr.port()),
            "--set",
            &format!("log_dir={}", dir.path().display()),
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(14),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn connections_over_connections_per_shard_max_are_refused_with_a_typed_error() {
    let server = TestServer::start(&[("shards", "1"), ("connections_per_shard_max", "2")]);
    let _a = Raw::hello(&server);
    let _b = Raw::hello(&server);
    // The third is accepted by the kernel, then answered with the limit and closed.
    let mut c = Raw::connect(&server);
    match c.recv().1 {
        Response::Error(e) => {
            assert_eq!(e.code, ErrorCode::TooManyConnections);
            assert_eq!(e.detail, 2, "the error names the limit");
        }
        other => panic!("{other:?}"),
    }
    c.expect_eof();
    // The connections within the limit still work.
    let mut a = _a;
    a.send(7, &Request::Stats, b"");
    assert_eq!(a.recv().0, 7);
}

/// Requests that wait for another shard count against `inflight_per_conn_max`: a burst of
/// forwarded writes gets TooManyInFlight past the limit, every answer stays in order, and
/// the writes that were refused changed nothing.
#[test]
fn forwarded_requests_over_inflight_per_conn_max_get_too_many_in_flight() {
    let server = TestServer::start(&[("shards", "2"), ("inflight_per_conn_max", "1")]);
    let ns = stategrid_proto::hash::namespace_id("inflight");
    // Keys shard 0 does not own, whichever shard this connection lands on: both kinds.
    let keys: Vec<String> = (0..64).map(|i| format!("k{i}")).collect();
    let mut c = Raw::hello(&server);
    let mut out = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        codec::encode_request(
            &mut out,
            100 + i as u32,
            &Request::Put {
                key: key(ns, k),
                opts: WriteOpts::default(),
            },
            b"v",
        );
    }
    c.s.write_all(&out).unwrap();
    let (mut written, mut refused) = (Vec::new(), 0);
    for (i, k) in keys.iter().enumerate() {
        let (id, resp) = c.recv();
        assert_eq!(id, 100 + i as u32, "answers stay in request order");
        match resp {
            Response::Written { version } => {
                assert_eq!(version, 1);
                written.push(k.clone());
            }
            Response::Error(e) => {
                assert_eq!(e.code, ErrorCode::TooManyInFlight, "{e:?}");
                assert_eq!(e.detail, 1, "the error names the limit");
                refused += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(
        refused > 0,
        "a burst of forwarded writes with a limit of 1 must hit it"
    );
    let client = server.blocking_client();
    let n = client.namespace("inflight").unwrap();
    assert_eq!(
        n.count().unwrap(),
        written.len() as u64,
        "refused writes stored nothing"
    );
    for k in &written {
        assert_eq!(n.read(k).unwrap().value, b"v");
    }
}
