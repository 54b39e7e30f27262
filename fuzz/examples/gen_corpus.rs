//! Writes the seed corpora under `fuzz/corpus/<target>/`: a handful of valid inputs per
//! target, each made by the real encoder (or a real exchange between in-process nodes), so
//! the fuzzer starts from messages the product actually sends.
//!
//! Run from `fuzz/`: `cargo run --example gen_corpus` (deterministic except the nonces and
//! SWIM's randomness; re-running rewrites the files).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use stategrid::auth::peer::{ClusterKey, Initiator};
use stategrid::cluster::map::HostId;
use stategrid::cluster::node::{ClusterNode, Input, MemberEvent, NodeConfig, Output, PeerMsg};
use stategrid::cluster::swim::{Ident, Swim, foca_config};
use stategrid::cluster::wire::encode_frame;
use stategrid_proto::codec::encode_request;
use stategrid_proto::hash::{key_hash, partition_of};
use stategrid_proto::msg::*;

fn dir(target: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    std::fs::create_dir_all(&d).expect("corpus dir");
    d
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    std::fs::write(dir(target).join(name), bytes).expect("write seed");
}

fn key(k: &[u8]) -> Key {
    Key {
        ns: 1,
        key: k.to_vec(),
    }
}

fn frame(req: &Request, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_request(&mut out, 7, req, value);
    out
}

fn native() {
    let seeds: Vec<(&str, Request, &[u8])> = vec![
        (
            "hello",
            Request::Hello {
                version: 1,
                client: "seed".into(),
            },
            b"",
        ),
        (
            "ns_open",
            Request::NsOpen {
                name: "sessions".into(),
            },
            b"",
        ),
        (
            "put",
            Request::Put {
                key: key(b"user:1"),
                opts: WriteOpts {
                    timeout: Some(Timeout {
                        timeout_s: 60,
                        kind: TimeoutKind::Sliding,
                    }),
                    evictable: true,
                },
            },
            b"hello world",
        ),
        (
            "read",
            Request::Read {
                key: key(b"user:1"),
            },
            b"",
        ),
        (
            "multi_read",
            Request::MultiRead {
                ns: 1,
                keys: vec![b"a".to_vec(), b"b".to_vec()],
            },
            b"",
        ),
        ("stats", Request::Stats, b""),
    ];
    for (name, req, value) in &seeds {
        write("native_frame", name, &frame(req, value));
    }
}

fn host_msg() {
    let k = key(b"user:1");
    let partition = partition_of(key_hash(k.ns, &k.key));
    let state = ObjectState {
        version: 3,
        created_ms: 1,
        updated_ms: 2,
        expires_at_ms: 0,
        lock_token: 0,
        lock_expires_at_ms: 0,
        timeout: Timeout {
            timeout_s: 0,
            kind: TimeoutKind::Absolute,
        },
        evictable: true,
        kind: ValueKind::String,
    };
    let seeds = [
        (
            "replicate",
            Request::Replicate {
                epoch: 2,
                from: 1,
                partition,
                key: k.clone(),
                state: Some(state),
            },
        ),
        (
            "replicate_remove",
            Request::Replicate {
                epoch: 2,
                from: 1,
                partition,
                key: k.clone(),
                state: None,
            },
        ),
        (
            "migrate_pull",
            Request::MigratePull {
                epoch: 2,
                to: 2,
                partition,
            },
        ),
        (
            "migrate_end",
            Request::MigrateEnd {
                epoch: 2,
                from: 1,
                partition,
                objects: 1,
            },
        ),
    ];
    for (name, req) in &seeds {
        write("host_msg", name, &frame(req, b"value"));
    }
}

fn cluster_key() -> ClusterKey {
    ClusterKey::new(b"fuzz-cluster-key-0123456789abcdef").expect("key")
}

fn peer_auth() {
    let (_i, c1) = Initiator::start(&cluster_key(), 1, Some(2));
    write("peer_auth", "hello", &c1);
    let mut c1c2 = c1.clone();
    c1c2.extend_from_slice(&[0u8; 32]);
    write("peer_auth", "hello_proof", &c1c2);
    write("peer_auth", "challenge", &[0u8; 8 + 16 + 32]);
}

fn swim() {
    let a: SocketAddr = "127.0.0.1:2722".parse().unwrap();
    let b: SocketAddr = "127.0.0.2:2722".parse().unwrap();
    let ident = |id, mgt| Ident {
        id,
        mgt,
        started_ms: 1,
        generation: 0,
        flags: 0,
    };
    let mut s1 = Swim::new(ident(1, a), foca_config(1_000, 8), 1);
    let mut s2 = Swim::new(ident(2, b), foca_config(1_000, 8), 2);
    let mut n = 0;
    let mut now = 1_000_000;
    s1.announce(b, now);
    for _ in 0..4 {
        for (to, d) in s1.take_sends() {
            if to == b && n < 6 {
                write("swim", &format!("dgram{n}"), &d);
                n += 1;
            }
            s2.on_datagram(&d, a, now);
        }
        for (_, d) in s2.take_sends() {
            if n < 6 {
                write("swim", &format!("dgram{n}"), &d);
                n += 1;
            }
            s1.on_datagram(&d, b, now);
        }
        now += 500;
        s1.on_time(now);
        s2.on_time(now);
    }
    write("swim", "sealed", &cluster_key().seal(b"body", 1_000_000));
}

fn wire_seeds() -> Vec<(HostId, HostId, PeerMsg)> {
    let cfg = |id: u64| NodeConfig {
        id: HostId(id),
        addr: format!("127.0.0.{id}:2720/2721/2722"),
        weight: 100,
        witness: false,
        max_replicas: 1,
        tick_ms: 100,
        election_ticks: 10,
        heartbeat_ticks: 2,
        lease_ms: 300,
        lease_margin_ms: 20,
        lease_renew_ms: 60,
    };
    let mut nodes = [
        ClusterNode::bootstrap(cfg(1), 0),
        ClusterNode::joining(cfg(2)),
    ];
    let mut sent = Vec::new();
    let mut queue = Vec::new();
    for (i, other) in [(0, 2), (1, 1)] {
        let outs = nodes[i].handle(
            0,
            Input::Member {
                host: HostId(other),
                event: MemberEvent::Up,
            },
        );
        queue.extend(outs.into_iter().map(|o| (nodes[i].id(), o)));
    }
    queue.extend(
        nodes[1]
            .handle(0, Input::Join)
            .into_iter()
            .map(|o| (HostId(2), o)),
    );
    let mut now = 0;
    for _ in 0..60 {
        for (from, o) in std::mem::take(&mut queue) {
            if let Output::Send { to, msg } = o {
                sent.push((from, to, msg.clone()));
                let i = (to.0 - 1) as usize;
                let outs = nodes[i].handle(now, Input::Peer { from, msg });
                queue.extend(outs.into_iter().map(|o| (to, o)));
            }
        }
        now += 100;
        for n in nodes.iter_mut() {
            let id = n.id();
            queue.extend(n.handle(now, Input::Tick).into_iter().map(|o| (id, o)));
        }
    }
    sent
}

fn mgmt_and_raft() {
    let sent = wire_seeds();
    // One seed per message kind (Debug's first word), the first of each.
    let mut kinds = std::collections::BTreeSet::new();
    let mut to_joiner = vec![1u8];
    let mut frames_to_joiner = 0;
    for (from, to, msg) in &sent {
        let f = encode_frame(*from, msg);
        let dbg = format!("{msg:?}");
        let kind: String = dbg
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .take(if dbg.starts_with("Raft") { 4 } else { 1 })
            .collect::<Vec<_>>()
            .join("_");
        if kinds.insert((to.0, kind.clone())) {
            write("mgmt_wire", &format!("{kind}_to{}", to.0), &f);
            let mut r = vec![if to.0 == 1 { 0u8 } else { 1u8 }];
            r.extend_from_slice(&f);
            write("raft", &format!("{kind}_to{}", to.0), &r);
        }
        if to.0 == 2 && frames_to_joiner < 8 {
            to_joiner.extend_from_slice(&f);
            frames_to_joiner += 1;
        }
    }
    write("raft", "joiner_sequence", &to_joiner);
}

fn resp() {
    let seeds: [(&str, &[u8]); 6] = [
        ("ping_inline", b"PING\r\n"),
        ("set", b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n"),
        ("get", b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"),
        ("empty", b"*0\r\n"),
        ("inline_quoted", b"SET \"a b\" 'c\\'d'\r\n"),
        (
            "mset",
            b"*5\r\n$4\r\nMSET\r\n$1\r\na\r\n$1\r\n1\r\n$1\r\nb\r\n$1\r\n2\r\n",
        ),
    ];
    for (name, b) in seeds {
        write("resp", name, b);
    }
}

fn params() {
    write(
        "params",
        "basic",
        b"# ScaleOut-style params\nshards 2\nmax_memory 64MB\nframe_bytes_max = 1048576\nhosts 127.0.0.1,127.0.0.2:2722\n",
    );
    write(
        "params",
        "ports",
        b"svr_port 2721\nint_port 2723\nmgt_port 2722\nresp_port 6379\nlog_level debug\n",
    );
    write("params", "empty", b"");
}

fn main() {
    native();
    host_msg();
    peer_auth();
    swim();
    mgmt_and_raft();
    resp();
    params();
}
