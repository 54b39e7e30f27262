//! Writes the seed corpora under `fuzz/corpus/<target>/`: a handful of valid inputs per
//! target, each made by the real encoder (or a real exchange between in-process nodes), so
//! the fuzzer starts from messages the product actually sends.
//!
//! Run from `fuzz/`: `cargo run --example gen_corpus [TARGET...]` (deterministic except the
//! nonces and SWIM's randomness; re-running rewrites the files).

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
                    content_type_bytes: 0,
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
        content_type_bytes: 0,
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

/// One Redis connection's bytes; the first byte is where the target cuts the stream in two
/// reads.
fn resp_exec() {
    let seeds: [(&str, &[u8]); 12] = [
        (
            "strings",
            b"\x20SET k v\r\nGET k\r\nAPPEND k more\r\nSTRLEN k\r\nGETSET k 10\r\nINCR k\r\nINCRBY k 5\r\nDECR k\r\nDECRBY k 2\r\nSETNX k x\r\nSETNX n 1\r\nGETDEL n\r\nGETEX k PX 500\r\nSETEX s 10 v\r\nPSETEX p 100 v\r\nMSET a 1 b 2\r\nMGET a b c\r\nEXISTS a b c\r\nDEL a b\r\nUNLINK k\r\nTOUCH s p\r\n",
        ),
        (
            "expiry",
            b"\x08SET k v EX 1 GET\r\nSET k v PX 1000 NX\r\nSET k w XX KEEPTTL\r\nTTL k\r\nPTTL k\r\nEXPIRE k 100 GT\r\nEXPIRE k 5 LT\r\nPEXPIRE k 1 NX\r\nEXPIREAT k 1800000000 XX\r\nPEXPIREAT k 1800000000000\r\nEXPIRETIME k\r\nPEXPIRETIME k\r\nPERSIST k\r\nSET k v EXAT 1\r\nGET k\r\n",
        ),
        (
            "hashes",
            b"\x00*4\r\n$4\r\nHSET\r\n$1\r\nh\r\n$1\r\nf\r\n$1\r\n1\r\nHSET h g 2 i 3\r\nHGET h f\r\nHMGET h f g x\r\nHMSET h a 1\r\nHGETALL h\r\nHDEL h a x\r\nHEXISTS h f\r\nHLEN h\r\nHKEYS h\r\nHVALS h\r\nHINCRBY h f 9\r\nHSETNX h f 0\r\nHSTRLEN h g\r\nHSCAN h 0 MATCH * COUNT 10\r\nHSCAN h 0 NOVALUES\r\n",
        ),
        (
            "keyspace",
            b"\x10SET a 1\r\nHSET b f v\r\nTYPE a\r\nTYPE b\r\nTYPE c\r\nKEYS *\r\nSCAN 0 MATCH [ab] COUNT 100 TYPE string\r\nDBSIZE\r\nSELECT 3\r\nSET a 2\r\nFLUSHDB\r\nSELECT 0\r\nFLUSHALL ASYNC\r\nDBSIZE\r\n",
        ),
        (
            "multi",
            b"\x30WATCH k\r\nMULTI\r\nSET k 1\r\nINCR k\r\nHSET h f 1\r\nGET k\r\nEXEC\r\nMULTI\r\nLPUSH l x\r\nEXEC\r\nMULTI\r\nDISCARD\r\nWATCH k\r\nSET k 2\r\nUNWATCH\r\nEXEC\r\n",
        ),
        (
            "connection",
            b"\x05HELLO 3 SETNAME app\r\nCLIENT SETNAME x\r\nCLIENT GETNAME\r\nCLIENT ID\r\nCLIENT INFO\r\nCLIENT LIST\r\nCLIENT SETINFO LIB-NAME redis-py\r\nHGETALL nope\r\nINFO\r\nINFO keyspace\r\nCOMMAND COUNT\r\nCOMMAND INFO get\r\nCOMMAND DOCS set\r\nCONFIG GET maxmemory\r\nTIME\r\nECHO hi\r\nPING\r\nPING x\r\nAUTH pw\r\nHELLO 2\r\nRESET\r\nQUIT\r\nPING\r\n",
        ),
        (
            "cluster",
            b"\x0cCLUSTER INFO\r\nCLUSTER SLOTS\r\nCLUSTER SHARDS\r\nCLUSTER NODES\r\nCLUSTER MYID\r\nCLUSTER KEYSLOT user{1}\r\nREADONLY\r\nMGET {u}a {u}b\r\nMGET a b\r\nREADWRITE\r\nASKING\r\n",
        ),
        (
            "locks",
            b"\x11SET s v\r\nSG.LOCK s\r\nGET s\r\nSET s w\r\nSG.UNLOCK s 1\r\nSG.SETUNLOCK s v2 1\r\nSG.LOCK nope\r\n",
        ),
        (
            "wrongtype",
            b"\x02SET s v\r\nHGET s f\r\nHSET h f v\r\nGET h\r\nINCR h\r\nHINCRBY h f 1\r\nSET n 9223372036854775807\r\nINCR n\r\nSET k v EX -1\r\nEXPIRE k abc\r\nGET\r\nNOSUCH a\r\nSADD s x\r\n",
        ),
        (
            "multibulk_split",
            b"\x0b*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$10\r\n0123456789\r\n*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n",
        ),
        ("protocol_error", b"\x00GET a\r\n*1\r\n$-5\r\n"),
        ("inline_quotes", b"\x00SET \"a b\" 'c\\'d'\r\nGET \"a b\"\r\nECHO \"\\x41\\n\"\r\n"),
    ];
    for (name, b) in seeds {
        write("resp_exec", name, b);
    }
}

/// An HTTP request as the data API sees it: method index (GET, HEAD, PUT, DELETE, POST,
/// PATCH), the request target, headers, an empty line, the body.
fn http_head() {
    let seeds: [(&str, &[u8]); 10] = [
        ("root", b"\x00/data/\n\n"),
        ("page", b"\x00/data/sessions?count=10&cursor=4294967296\n\n"),
        (
            "get_if_none_match",
            b"\x00/data/sessions/user%2F1\nIf-None-Match: \"3\", W/\"7\"\n\n",
        ),
        ("get_lock", b"\x00/data/sessions/u1?lock=true\n\n"),
        ("head", b"\x01/data/caf%C3%A9/k%00%FF\n\n"),
        (
            "put",
            b"\x02/data/sessions/u1?unlock=true\nIf-Match: \"7\"\nSoss-TimeoutSec: 60\nSoss-TimeoutType: Sliding\nSoss-LockToken: 12\n\nvalue",
        ),
        (
            "put_create_only",
            b"\x02/data/sessions/u1\nIf-None-Match: *\nSoss-TimeoutSec: 0\n\n",
        ),
        ("delete", b"\x03/data/sessions/u1\nSoss-LockToken: 5\n\n"),
        (
            "lock_op",
            b"\x04/data/sessions/u1?op=refresh\nSoss-LockToken: 99\n\n",
        ),
        (
            "form",
            b"\x04/data/sessions\nContent-Type: multipart/form-data; boundary=XyZ\n\n--XyZ\r\nContent-Disposition: form-data; name=\"Soss-Key\"\r\n\r\nuser1\r\n--XyZ\r\nContent-Disposition: form-data; name=\"Soss-TimeoutSec\"\r\n\r\n60\r\n--XyZ\r\nContent-Disposition: form-data; name=\"Soss-TimeoutType\"\r\n\r\nAbsolute\r\n--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.bin\"\r\nContent-Type: application/octet-stream\r\n\r\nhello\r\n--XyZ--\r\n",
        ),
    ];
    for (name, b) in seeds {
        write("http_head", name, b);
    }
}

/// With target names as arguments, writes only those corpora (the others hold nonces and
/// would change on every run).
fn main() {
    let gens: [(&str, fn()); 9] = [
        ("native_frame", native),
        ("host_msg", host_msg),
        ("peer_auth", peer_auth),
        ("swim", swim),
        ("mgmt_wire+raft", mgmt_and_raft),
        ("resp", resp),
        ("params", params),
        ("resp_exec", resp_exec),
        ("http_head", http_head),
    ];
    let only: Vec<String> = std::env::args().skip(1).collect();
    for (name, generate) in gens {
        if only.is_empty() || only.iter().any(|o| name.split('+').any(|n| n == o)) {
            generate();
        }
    }
}
