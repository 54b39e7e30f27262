//! Hostile peers cannot make the server allocate what they only claim: many connections
//! that each announce a maximal frame and then send nothing leave the server's resident
//! memory bounded, on `svr_port`, `int_port` and `mgt_port`, and another client is served
//! meanwhile. Real server process, real sockets; memory is read from /proc/PID/status.
//!
//! The bound is generous (256 MiB of growth): before receive buffers grew with the bytes that
//! actually arrived, the svr_port case alone grew the server by over 1.4 GB (24 × 60 MiB).

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::TestServer;
use common::raw::Raw;
use stategrid_proto::frame::{FrameHeader, HEADER_BYTES};
use stategrid_proto::{ErrorCode, PROTOCOL_VERSION, Request, Response, WriteOpts};

/// Connections per port, each claiming a maximal frame.
const CONNECTIONS: usize = 24;
/// Resident growth allowed while they wait.
const GROWTH_BYTES_MAX: u64 = 256 << 20;
/// A claimed frame just under the default `frame_bytes_max` (65 MiB).
const CLAIM_BYTES: u32 = 60 << 20;

fn resident_bytes(server: &TestServer) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id()))
        .expect("server process status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kb * 1024
}

/// A native frame header announcing `archive_bytes` of archive, and nothing after it.
fn claim_header(archive_bytes: u32) -> [u8; HEADER_BYTES] {
    let mut h = [0u8; HEADER_BYTES];
    FrameHeader {
        archive_bytes,
        value_bytes: 0,
        request_id: 7,
    }
    .write_to(&mut h);
    h
}

/// Serves a put and a read on a fresh client connection: the server still serves others.
fn served(server: &TestServer, round: usize) {
    let c = server.blocking_client();
    let ns = c.namespace("bystander").unwrap();
    let k = format!("k{round}");
    ns.put(&k, b"still served", WriteOpts::default()).unwrap();
    assert_eq!(ns.read(&k).unwrap().value, b"still served");
}

/// Lets the server read what was sent, then checks memory and service.
fn check_bounded(server: &TestServer, before: u64, what: &str) {
    // The server reads asynchronously; serving a client after the sends means it has had
    // passes to handle them. A second look later catches a slow growth.
    for round in 0..3 {
        served(server, round);
        std::thread::sleep(Duration::from_millis(300));
        let now = resident_bytes(server);
        let growth = now.saturating_sub(before);
        assert!(
            growth < GROWTH_BYTES_MAX,
            "{what}: resident memory grew {growth} bytes ({before} -> {now}) with {CONNECTIONS} connections claiming {CLAIM_BYTES}-byte frames\n{}",
            server.output()
        );
    }
}

fn ports() -> (u16, u16) {
    loop {
        let (a, b) = (common::free_port(), common::free_port());
        if a != b {
            return (a, b);
        }
    }
}

#[test]
fn frames_claimed_after_hello_on_svr_port_do_not_grow_memory() {
    let server = TestServer::start(&[("shards", "2")]);
    served(&server, 99);
    let before = resident_bytes(&server);
    let mut conns = Vec::new();
    for _ in 0..CONNECTIONS {
        let mut r = Raw::hello(&server);
        r.s.write_all(&claim_header(CLAIM_BYTES)).unwrap();
        // A few real bytes of the announced frame: it is only ever partly sent.
        r.s.write_all(&[0u8; 4096]).unwrap();
        conns.push(r);
    }
    check_bounded(&server, before, "svr_port after Hello");
    drop(conns);
}

#[test]
fn a_large_frame_before_hello_is_refused_at_once() {
    let server = TestServer::start(&[]);
    let mut r = Raw::connect(&server);
    r.s.write_all(&claim_header(1 << 20)).unwrap();
    let (id, resp) = r.recv();
    assert_eq!(id, 7);
    match resp {
        Response::Error(e) => {
            assert_eq!(e.code, ErrorCode::FrameTooLarge);
            assert!(
                e.message.contains("unauth_frame_bytes_max"),
                "the error names the limit: {e:?}"
            );
        }
        other => panic!("expected FrameTooLarge, got {other:?}"),
    }
    r.expect_eof();
    served(&server, 0);
}

#[test]
fn frames_claimed_on_int_port_do_not_grow_memory() {
    let (int_port, _) = ports();
    let int_text = int_port.to_string();
    let server = TestServer::start(&[("shards", "2"), ("int_port", &int_text)]);
    served(&server, 99);
    let before = resident_bytes(&server);
    let int_addr = SocketAddr::from(([127, 0, 0, 1], int_port));
    let mut conns = Vec::new();
    for i in 0..CONNECTIONS {
        let mut s = TcpStream::connect(int_addr).unwrap();
        if i % 2 == 0 {
            // Half say Hello first (then the full frame limit applies), half do not.
            let mut out = Vec::new();
            stategrid_proto::codec::encode_request(
                &mut out,
                1,
                &Request::Hello {
                    version: PROTOCOL_VERSION,
                    client: "hostile".into(),
                },
                b"",
            );
            s.write_all(&out).unwrap();
        }
        let _ = s.write_all(&claim_header(CLAIM_BYTES));
        let _ = s.write_all(&[0u8; 4096]);
        conns.push(s);
    }
    check_bounded(&server, before, "int_port");
    drop(conns);
}

#[test]
fn frames_claimed_on_mgt_port_do_not_grow_memory() {
    let (mgt_port, _) = ports();
    let mgt_text = mgt_port.to_string();
    let server = TestServer::start(&[("mgt_port", &mgt_text), ("mgt_connections_max", "16")]);
    served(&server, 99);
    let before = resident_bytes(&server);
    let mgt_addr = SocketAddr::from(([127, 0, 0, 1], mgt_port));
    let mut conns = Vec::new();
    // More than mgt_connections_max: the rest are closed at accept.
    for _ in 0..CONNECTIONS {
        let mut s = TcpStream::connect(mgt_addr).unwrap();
        let mut claim = b"SGP1".to_vec();
        claim.extend_from_slice(&((16u32 << 20) - 1).to_be_bytes());
        claim.extend_from_slice(&[0u8; 4096]);
        let _ = s.write_all(&claim);
        conns.push(s);
    }
    check_bounded(&server, before, "mgt_port");
    drop(conns);
}
