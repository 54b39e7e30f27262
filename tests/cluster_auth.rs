//! Hosts prove they hold the store's cluster key: real `stategrid serve` processes on
//! 127.0.0.x with `cluster_key_file`, and a test process without the key that forges every
//! host-to-host message it can (int_port: Replicate, MigratePull, MigrateEnd; mgt_port:
//! Expelled, JoinRequest, LeaseGrant, a Raft message). None of it changes anything. A 4th host
//! with the wrong key cannot join and reads nothing; with the right key it joins as before.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use stategrid::cluster::map::{HostId, HostInfo, HostState};
use stategrid::cluster::node::PeerMsg;
use stategrid::cluster::wire;
use stategrid_client::proto::hash::namespace_id;
use stategrid_client::proto::{
    Key, ObjectState, PROTOCOL_VERSION, Request, key_hash, partition_of,
};

use common::hosts::{Host, Ports};
use common::raw::Raw;
use common::store::*;
use common::{bin, free_port};

/// One host of these tests: a store host with the cluster key file `key_file`.
fn start_host(ip: &str, peers: &[String], p: Ports, key_file: &Path) -> Host {
    Host::spawn(
        ip,
        peers,
        p,
        &[("cluster_key_file", key_file.display().to_string())],
    )
}

fn write_key(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn addr(ip: &str, port: u16) -> SocketAddr {
    format!("{ip}:{port}").parse().unwrap()
}

/// Reads until the server closes the connection (or resets it); panics after 10 s.
fn expect_closed(s: &mut TcpStream) {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut tmp = [0u8; 4096];
    loop {
        match s.read(&mut tmp) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(e) => panic!("expected the server to close the connection, got {e}"),
        }
    }
}

/// The forged host-to-host requests of one attack on `int_port`: a Replicate that would
/// overwrite `key` on its primary with a newer epoch, a pull of the whole partition to
/// `thief`, and a MigrateEnd that would promote an incomplete copy.
fn forged_int_frames(epoch: u64, from: u64, thief: u64, partition: u32, key: &Key) -> Vec<u8> {
    let mut out = Vec::new();
    let hello = Request::Hello {
        version: PROTOCOL_VERSION,
        client: "forger".into(),
    };
    stategrid_proto::codec::encode_request(&mut out, 1, &hello, &[]);
    let state = ObjectState {
        version: 1_000,
        created_ms: 1,
        updated_ms: 2,
        expires_at_ms: 0,
        lock_token: 0,
        lock_expires_at_ms: 0,
        timeout: Default::default(),
        evictable: true,
        kind: Default::default(),
        content_type_bytes: 0,
    };
    let reqs = [
        Request::Replicate {
            epoch,
            from,
            partition,
            key: key.clone(),
            state: Some(state),
        },
        Request::MigratePull {
            epoch,
            to: thief,
            partition,
        },
        Request::MigrateEnd {
            epoch,
            from,
            partition,
            objects: 0,
        },
    ];
    for (i, r) in reqs.iter().enumerate() {
        let value: &[u8] = if i == 0 { b"forged" } else { b"" };
        stategrid_proto::codec::encode_request(&mut out, 2 + i as u32, r, value);
    }
    out
}

#[test]
fn without_the_key_forged_host_messages_change_nothing_and_a_wrong_key_cannot_join() {
    let keys_dir = tempfile::tempdir().unwrap();
    let key = write_key(
        keys_dir.path(),
        "cluster.key",
        "c2VjcmV0LWtleS1vZi10aGUtc3RvcmUtMDEyMzQ1Ng==\n",
    );
    let wrong = write_key(
        keys_dir.path(),
        "wrong.key",
        "YW5vdGhlci1zdG9yZXMta2V5LTAxMjM0NTY3ODk=\n",
    );
    let p = Ports::free();
    let ips: Vec<String> = [41, 42, 43, 44, 45]
        .iter()
        .map(|i| format!("127.0.0.{i}"))
        .collect();
    let peers_of =
        |me: &String| -> Vec<String> { ips.iter().filter(|o| *o != me).cloned().collect() };
    let mut hosts: Vec<Host> = ips[..3]
        .iter()
        .map(|me| start_host(me, &peers_of(me), p, &key))
        .collect();
    let svrs: Vec<String> = ips.iter().map(|i| format!("{i}:{}", p.svr)).collect();
    let c = client(&svrs[0], 10_000);
    let m = wait_settled(&c, &svrs[..3], 1, String::new);

    // A planted object, and where it lives.
    let ns = c.namespace("planted").unwrap();
    ns.put("k", b"precious", stategrid_client::WriteOptions::new())
        .unwrap();
    let version = ns.read("k").unwrap().meta.version;
    let k = Key {
        ns: namespace_id("planted"),
        key: b"k".to_vec(),
    };
    let partition = partition_of(key_hash(k.ns, &k.key));
    let primary = &m.hosts[m.primaries[partition as usize] as usize];
    let other = m.hosts.iter().find(|h| h.id != primary.id).unwrap();
    let primary_ip = primary.svr_addr.split(':').next().unwrap().to_string();
    let forged = forged_int_frames(m.epoch + 100, other.id, other.id, partition, &k);

    // 1. int_port, frames straight away: refused before a frame is decoded.
    let mut raw = Raw::connect_to(addr(&primary_ip, p.int));
    raw.s.write_all(&forged).unwrap();
    raw.expect_eof();

    // 2. int_port, a handshake with a made-up proof: refused at the proof.
    let mut s = TcpStream::connect(addr(&primary_ip, p.int)).unwrap();
    let mut hello = b"SGH1".to_vec();
    hello.extend_from_slice(&other.id.to_be_bytes());
    hello.extend_from_slice(&[7u8; 16]);
    s.write_all(&hello).unwrap();
    let mut challenge = [0u8; 56];
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.read_exact(&mut challenge)
        .expect("the responder answers a hello with its challenge");
    s.write_all(&[0u8; 32]).unwrap();
    let _ = s.write_all(&forged);
    expect_closed(&mut s);

    // 3. mgt_port: Expelled, JoinRequest, LeaseGrant and a Raft message claiming a new term,
    //    "from" another host of the store.
    let leader_like = HostId(other.id);
    let mut msgs = wire::PEER_MAGIC.to_vec();
    let mut raft_msg = raft::prelude::Message::default();
    raft_msg.set_msg_type(raft::prelude::MessageType::MsgHeartbeat);
    raft_msg.from = other.id;
    raft_msg.to = primary.id;
    raft_msg.term = 1_000_000;
    for msg in [
        PeerMsg::Expelled,
        PeerMsg::JoinRequest {
            host: HostInfo {
                id: HostId(0xbad),
                addr: format!("127.0.0.99:{}:{}:{}", p.mgt, p.svr, p.int),
                weight: 100,
                state: HostState::Joining,
            },
            witness: false,
        },
        PeerMsg::LeaseGrant {
            seq: 1,
            epoch: m.epoch + 100,
        },
        PeerMsg::Raft(Box::new(raft_msg)),
    ] {
        msgs.extend_from_slice(&wire::encode_frame(leader_like, &msg));
    }
    for h in &hosts {
        let mut s = TcpStream::connect(addr(&h.ip, p.mgt)).unwrap();
        let _ = s.write_all(&msgs);
        expect_closed(&mut s);
    }

    // Nothing changed: every host still up, the same map, the object as it was.
    std::thread::sleep(Duration::from_millis(1_500));
    for h in hosts.iter_mut() {
        assert!(h.running(), "host {} exited after forged messages", h.ip);
    }
    let m2 = wait_settled(&c, &svrs[..3], 1, String::new);
    assert_eq!(
        m2.hosts.len(),
        3,
        "a forged join added a host: {:?}",
        m2.hosts
    );
    let r = ns.read("k").unwrap();
    assert_eq!(r.value, b"precious");
    assert_eq!(r.meta.version, version);
    let primary_host = hosts.iter().find(|h| h.ip == primary_ip).unwrap();
    let log = primary_host.log();
    assert!(
        log.contains("cluster_key_file"),
        "the refusal names the fix in the log:\n{log}"
    );

    // 4. A 4th host with the wrong key: never joins, reads nothing.
    hosts.push(start_host(&ips[3], &peers_of(&ips[3]), p, &wrong));
    let outsider = client(&svrs[3], 500);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(6) {
        let m = map(&c).expect("the store answers GetMap");
        assert_eq!(
            m.hosts.len(),
            3,
            "a host with the wrong key entered the map: {:?}",
            m.hosts
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let got = outsider.namespace_unregistered("planted").read("k");
    assert!(got.is_err(), "the wrong-key host read {got:?}");
    assert!(
        hosts[3].log().contains("cluster_key"),
        "the outsider's log says why it is not let in:\n{}",
        hosts[3].log()
    );
    drop(outsider);
    hosts[3].kill9();

    // 5. A host with the right key joins as before and serves the data. (On another address:
    //    the killed outsider's client connections may hold its port in TIME_WAIT.)
    let peers: Vec<String> = ips[..3].to_vec();
    hosts.push(start_host(&ips[4], &peers, p, &key));
    let members = [&svrs[..3], &svrs[4..]].concat();
    wait_settled(&c, &members, 1, String::new);
    let through_new = client(&svrs[4], 10_000);
    let r = through_new.namespace("planted").unwrap().read("k").unwrap();
    assert_eq!(r.value, b"precious");
}

#[test]
fn a_host_reachable_from_other_machines_needs_a_cluster_key() {
    let out = Command::new(bin())
        .args(["serve", "--set", "net_interface=0.0.0.0"])
        .arg("--set")
        .arg(format!("svr_port={}", free_port()))
        .output()
        .expect("run stategrid serve");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cluster_key_file") && err.contains("insecure_cluster"),
        "the refusal names the fix: {err}"
    );
    // A short key is refused with the way to make a good one.
    let dir = tempfile::tempdir().unwrap();
    let short = write_key(dir.path(), "short.key", "tiny");
    let out = Command::new(bin())
        .args(["serve", "--set"])
        .arg(format!("cluster_key_file={}", short.display()))
        .output()
        .expect("run stategrid serve");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/dev/urandom"), "{err}");
}

/// With the key, a connection is bound to the host it proved to be: a frame naming another
/// sender is refused, and a primary refuses a `Replicate` whatever newer epoch it claims.
#[test]
fn a_proven_host_cannot_speak_for_another_nor_bypass_fencing() {
    let keys_dir = tempfile::tempdir().unwrap();
    let key_text = "dGhlLWtleS1vZi10aGUtc2Vjb25kLXN0b3JlLTAx\n";
    let key = write_key(keys_dir.path(), "cluster.key", key_text);
    let p = Ports::free();
    let ips: Vec<String> = [51, 52].iter().map(|i| format!("127.0.0.{i}")).collect();
    let peers_of =
        |me: &String| -> Vec<String> { ips.iter().filter(|o| *o != me).cloned().collect() };
    let _hosts: Vec<Host> = ips
        .iter()
        .map(|me| start_host(me, &peers_of(me), p, &key))
        .collect();
    let svrs: Vec<String> = ips.iter().map(|i| format!("{i}:{}", p.svr)).collect();
    let c = client(&svrs[0], 10_000);
    let m = wait_settled(&c, &svrs, 1, String::new);
    let ns = c.namespace("fenced").unwrap();
    ns.put("k", b"original", stategrid_client::WriteOptions::new())
        .unwrap();
    let version = ns.read("k").unwrap().meta.version;
    let k = Key {
        ns: namespace_id("fenced"),
        key: b"k".to_vec(),
    };
    let partition = partition_of(key_hash(k.ns, &k.key));
    let primary = &m.hosts[m.primaries[partition as usize] as usize];
    let other = m.hosts.iter().find(|h| h.id != primary.id).unwrap();
    let primary_ip = primary.svr_addr.split(':').next().unwrap().to_string();

    // Prove the key as host 0x1234 (this process holds the key, as a host would).
    let ck = stategrid::auth::peer::ClusterKey::new(key_text.as_bytes()).unwrap();
    let me = 0x1234u64;
    let mut raw = Raw::connect_to(addr(&primary_ip, p.int));
    let (init, hello) = stategrid::auth::peer::Initiator::start(&ck, me, None);
    raw.s.write_all(&hello).unwrap();
    let mut challenge = [0u8; stategrid::auth::peer::CHALLENGE_BYTES];
    raw.s.read_exact(&mut challenge).unwrap();
    let (proof, id) = init.on_challenge(&challenge).unwrap().unwrap();
    assert_eq!(
        id, primary.id,
        "the responder proves it is the host we reached"
    );
    raw.s.write_all(&proof).unwrap();
    raw.send(
        1,
        &Request::Hello {
            version: PROTOCOL_VERSION,
            client: "proven".into(),
        },
        b"",
    );
    let (_, resp) = raw.recv();
    assert!(
        matches!(resp, stategrid_proto::Response::HelloOk { .. }),
        "{resp:?}"
    );
    let state = ObjectState {
        version: 1_000,
        created_ms: 1,
        updated_ms: 2,
        expires_at_ms: 0,
        lock_token: 0,
        lock_expires_at_ms: 0,
        timeout: Default::default(),
        evictable: true,
        kind: Default::default(),
        content_type_bytes: 0,
    };
    let replicate = |from: u64| Request::Replicate {
        epoch: m.epoch + 100,
        from,
        partition,
        key: k.clone(),
        state: Some(state),
    };
    // Speaking for the other host: Forbidden.
    raw.send(2, &replicate(other.id), b"forged");
    let (id, resp) = raw.recv();
    assert_eq!(id, 2);
    match resp {
        stategrid_proto::Response::Error(e) => {
            assert_eq!(e.code, stategrid_proto::ErrorCode::Forbidden, "{e:?}")
        }
        other => panic!("expected Forbidden, got {other:?}"),
    }
    // As itself, with a newer epoch, to the partition's primary: fenced (StaleEpoch).
    raw.send(3, &replicate(me), b"forged");
    let (id, resp) = raw.recv();
    assert_eq!(id, 3);
    match resp {
        stategrid_proto::Response::Error(e) => {
            assert_eq!(e.code, stategrid_proto::ErrorCode::StaleEpoch, "{e:?}")
        }
        other => panic!("expected StaleEpoch, got {other:?}"),
    }
    let r = ns.read("k").unwrap();
    assert_eq!(r.value, b"original");
    assert_eq!(r.meta.version, version);
}
