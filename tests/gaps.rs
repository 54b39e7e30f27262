//! The gaps a session store cannot have (issue 11), each closed with a real-process test on a
//! store of 3 hosts on loopback (`tests/common/hosts.rs`: one 127.0.0.x per host, shared
//! ports). Times are printed for the record, never asserted; a generous bound only keeps a
//! test from hanging.

mod common;

use std::time::{Duration, Instant};

use stategrid_client::proto::ErrorCode;
use stategrid_client::{Error, WriteOptions};

use common::hosts::Store;
use common::store::{client, keys};

/// Issue 11, measured before the fix: 30 objects with a 4 s sliding timeout, read through the
/// store every second for 7 s, then `kill -9` of one of 3 hosts: 15 of 30 were gone, because
/// the replicas never heard of the reads and expired their copies 4 s after the last write.
/// Now the primaries send the restarted deadlines to the replicas in batches
/// (`sliding_touch_replication_ms`), so every session a user is still reading survives.
#[test]
fn sessions_that_are_only_read_survive_kill_9_of_a_host() {
    let mut store = Store::start(3, 131);
    let svrs = store.svr_addrs();
    // The client may be routed anywhere; it starts at the first host, which stays up.
    let c = client(&svrs[0], 15_000);
    let ns = c.namespace("sessions").unwrap();
    let keys = keys(30, "session");
    for k in &keys {
        ns.put(k, b"cart", WriteOptions::sliding(4)).unwrap();
    }
    let start = Instant::now();
    for second in 1..=7 {
        std::thread::sleep(Duration::from_secs(1));
        for k in &keys {
            ns.read(k).unwrap_or_else(|e| {
                panic!(
                    "read of {k} after {second} s failed: {e}\n{}",
                    store.outputs()
                )
            });
        }
    }
    store.hosts[2].kill9();
    let killed = Instant::now();
    // `meta` is a management read: it restarts no timeout, so it sees what the failover left.
    let mut missing = Vec::new();
    for k in &keys {
        match ns.meta(k) {
            Ok(_) => {}
            Err(Error::Server(r)) if r.code == ErrorCode::NotFound => missing.push(k.clone()),
            Err(e) => panic!("meta of {k} failed: {e}\n{}", store.outputs()),
        }
    }
    println!(
        "read for {:.1} s, then kill -9; every key checked {} ms after the kill; missing: {}",
        (killed - start).as_secs_f64(),
        killed.elapsed().as_millis(),
        missing.len()
    );
    assert!(
        missing.is_empty(),
        "{} of {} sessions read every second were lost by the failover: {missing:?}\n{}",
        missing.len(),
        keys.len(),
        store.outputs()
    );
}

/// Runs the `stategrid` CLI with `args`, giving up (and failing) after `bound`: a bound only
/// so that a regression hangs no test run, far above the budget under test.
fn cli_bounded(args: &[&str], bound: Duration) -> (Option<i32>, String) {
    use std::process::{Command, Stdio};
    let mut child = Command::new(common::bin())
        .env_remove("STATEGRID_HOST")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn stategrid");
    let give_up = Instant::now() + bound;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            return (status.code(), err);
        }
        if Instant::now() > give_up {
            let _ = child.kill();
            let _ = child.wait();
            return (None, String::new());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Issue 11: a CLI call to a host frozen with SIGSTOP was still waiting after 10 s, though its
/// budget is 3 s to connect and 5 s per request. Connecting (the store's map included) now
/// happens within the connect budget, and the call fails with a clear "cannot connect".
#[test]
fn the_cli_gives_up_on_a_frozen_host_within_its_budget() {
    let server = common::TestServer::start(&[]);
    let host = server.host();
    // SAFETY: a signal to our own child process.
    assert_eq!(
        unsafe { libc::kill(server.child.id() as i32, libc::SIGSTOP) },
        0
    );
    let started = Instant::now();
    let (code, stderr) = cli_bounded(
        &["--host", &host, "get", "sessions", "k"],
        Duration::from_secs(60),
    );
    let took = started.elapsed();
    // SAFETY: as above; the server is killed on drop either way.
    unsafe { libc::kill(server.child.id() as i32, libc::SIGCONT) };
    println!(
        "the CLI gave up on a frozen host after {} ms",
        took.as_millis()
    );
    assert_eq!(
        code,
        Some(5),
        "expected exit code 5 (unreachable) within the bound, got {code:?}: {stderr}"
    );
    assert!(
        stderr.contains("cannot connect") && stderr.contains("connect_timeout_ms"),
        "the error should say the host did not answer in time: {stderr}"
    );
}

/// Issue 11: a `put` whose host died mid-call failed with `Connect` after 5 s, because the
/// namespace open went only to the host named. Now a request any host serves goes to another
/// host of the store while the named one fails, and keyed requests follow the map.
#[test]
fn a_put_goes_through_another_host_when_the_named_host_dies() {
    let mut store = Store::start(3, 137);
    let svrs = store.svr_addrs();
    let c = client(&svrs[2], 15_000);
    // The client knows the store; then its host dies before the call.
    store.hosts[2].kill9();
    let started = Instant::now();
    let ns = c.namespace("after-death").unwrap_or_else(|e| {
        panic!(
            "namespace open with a dead host failed: {e}\n{}",
            store.outputs()
        )
    });
    for k in keys(20, "k") {
        ns.put(&k, b"v", WriteOptions::new()).unwrap_or_else(|e| {
            panic!(
                "put of {k} with a dead host failed: {e}\n{}",
                store.outputs()
            )
        });
    }
    println!(
        "namespace open and 20 puts through the other hosts took {} ms after the kill",
        started.elapsed().as_millis()
    );
    for k in keys(20, "k") {
        assert_eq!(ns.read(&k).unwrap().value, b"v");
    }
}

/// The established TCP connections to `port`, as (local, remote) addresses, from
/// /proc/net/tcp (every process of this network namespace; no tool needed).
fn connections_to(port: u16) -> Vec<(std::net::Ipv4Addr, std::net::Ipv4Addr)> {
    let text = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let addr = |s: &str| {
        let (ip, port) = s.split_once(':').unwrap();
        let ip = u32::from_str_radix(ip, 16).unwrap();
        // The kernel prints the address in host byte order of its network-order bytes.
        (
            std::net::Ipv4Addr::from(ip.to_le_bytes()),
            u16::from_str_radix(port, 16).unwrap(),
        )
    };
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (local, remote, state) = (addr(f[1]), addr(f[2]), f[3]);
            (state == "01" && remote.1 == port).then_some((local.0, remote.0))
        })
        .collect()
}

/// Issue 11: host-to-host data links left from 127.0.0.1 instead of the host's
/// `net_interface`. Every link to a host's `int_port` now comes from another host's address.
#[test]
fn host_links_leave_from_net_interface() {
    let store = Store::start(3, 141);
    let svrs = store.svr_addrs();
    let c = client(&svrs[0], 15_000);
    let ns = c.namespace("links").unwrap();
    // Writes replicate, so every host has links to the others' int_port.
    for k in keys(60, "k") {
        ns.put(&k, b"v", WriteOptions::new()).unwrap();
    }
    let ips: Vec<std::net::Ipv4Addr> = store.hosts.iter().map(|h| h.ip.parse().unwrap()).collect();
    let links: Vec<_> = connections_to(store.int_port)
        .into_iter()
        .filter(|(_, remote)| ips.contains(remote))
        .collect();
    println!("links to int_port {}: {links:?}", store.int_port);
    assert!(
        links.len() >= 3,
        "expected links between the hosts, found {links:?}\n{}",
        store.outputs()
    );
    for (local, remote) in &links {
        assert!(
            ips.contains(local) && local != remote,
            "a link to {remote} left from {local}, not from another host's net_interface ({ips:?})"
        );
    }
}

/// Issue 11: namespace `clear`, counts and key listings answered for one host (a `count` of
/// 40 objects on 3 hosts answered 29, the host's primaries and replicas), and a multi-host
/// store refused `clear`. Now any host answers for the whole store: each host counts and
/// lists the partitions it is primary of, the host asked sums the counts and walks the hosts
/// with one cursor; a clear empties the replicas too (checked after a failover).
#[test]
fn namespace_count_list_and_clear_are_store_wide() {
    let mut store = Store::start(3, 147);
    let svrs = store.svr_addrs();
    let c = client(&svrs[0], 15_000);
    let ns = c.namespace("wide").unwrap();
    let mut want = keys(40, "obj");
    for k in &want {
        ns.put(k, b"v", WriteOptions::new()).unwrap();
    }
    // Another namespace, so a clear is seen to stay in its own.
    let other = c.namespace("other").unwrap();
    for k in keys(5, "o") {
        other.put(&k, b"v", WriteOptions::new()).unwrap();
    }
    want.sort();
    for addr in &svrs {
        let c = client(addr, 15_000);
        let ns = c.namespace_unregistered("wide");
        assert_eq!(ns.count().unwrap(), 40, "count asked of {addr}");
        let mut listed: Vec<String> = ns
            .keys()
            .unwrap()
            .into_iter()
            .map(|k| String::from_utf8(k).unwrap())
            .collect();
        listed.sort();
        assert_eq!(listed, want, "keys listed by {addr}: each key once");
    }
    // A small page size walks every shard and host with one cursor.
    let mut cursor = 0;
    let mut paged = Vec::new();
    loop {
        let page = ns.list_keys(cursor, 7).unwrap();
        paged.extend(page.keys);
        if page.next_cursor == 0 {
            break;
        }
        cursor = page.next_cursor;
    }
    assert_eq!(paged.len(), 40, "paged listing");

    // Clear through another host: every host's part, replicas included.
    let c1 = client(&svrs[1], 15_000);
    c1.namespace_unregistered("wide").clear().unwrap();
    for addr in &svrs {
        let c = client(addr, 15_000);
        assert_eq!(
            c.namespace_unregistered("wide").count().unwrap(),
            0,
            "{addr}"
        );
        assert_eq!(
            c.namespace_unregistered("other").count().unwrap(),
            5,
            "{addr}"
        );
    }
    // The replicas were cleared too: after a failover the promoted copies hold nothing.
    store.hosts[2].kill9();
    let started = Instant::now();
    let left = loop {
        match ns.count() {
            Ok(n) => break n,
            Err(e) if started.elapsed() < Duration::from_secs(60) => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("count after the failover failed: {e}\n{}", store.outputs()),
        }
    };
    assert_eq!(
        left,
        0,
        "objects back after a failover\n{}",
        store.outputs()
    );
    for k in &want {
        match ns.meta(k) {
            Err(Error::Server(r)) if r.code == ErrorCode::NotFound => {}
            other => panic!("{k} after clear and failover: {other:?}"),
        }
    }
    assert_eq!(other.count().unwrap(), 5);
}

/// `ReplicationFailed` after `replication_timeout_ms`, reached on purpose: a replica frozen
/// with SIGSTOP makes its primary's writes answer the typed error (retryable; the change may
/// have been applied), and after SIGCONT no acknowledged write is lost, even when the primary
/// is then killed and the thawed replica takes over. Meanwhile a read of a write that failed
/// is held and fails too (the write is in doubt until the replica has it).
#[test]
fn a_frozen_replica_turns_writes_into_replication_failed_and_loses_nothing() {
    use common::raw::Raw;
    use stategrid_client::proto::{Key, Request, Response, WriteOpts};

    let mut store = Store::start_with(3, 151, |_| {
        vec![
            // Long enough that the frozen host is not declared failed during the freeze.
            ("failure_detection_ms", "8000".to_string()),
            ("replication_timeout_ms", "300".to_string()),
        ]
    });
    let svrs = store.svr_addrs();
    let c = client(&svrs[0], 30_000);
    let ns_name = "frozen";
    let ns = c.namespace(ns_name).unwrap();
    let m = common::store::map(&c).expect("map");
    // Freeze a host that does not lead the Raft group: this test is about a frozen replica,
    // not about the election a frozen leader causes (tests/control_plane.rs covers that).
    let mgt = format!("{}:{}", store.hosts[0].ip, store.mgt_port);
    let out = std::process::Command::new(common::bin())
        .args(["query", "--json", "--mgt", &mgt])
        .output()
        .unwrap();
    let q: serde_json::Value = serde_json::from_slice(&out.stdout).expect("query --json");
    let leader_ip = q["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["leader"] == true)
        .map(|h| {
            h["addr"]
                .as_str()
                .unwrap()
                .split(':')
                .next()
                .unwrap()
                .to_owned()
        });
    let frozen = (0..3)
        .find(|&i| Some(&store.hosts[i].ip) != leader_ip.as_ref())
        .unwrap();
    // Keys whose primary is one of the other two: the frozen host holds the replicas of some
    // of them (of which, the planner decides).
    let all = keys(600, "f");
    let groups: Vec<(usize, Vec<String>)> = (0..3)
        .filter(|&h| h != frozen)
        .map(|h| {
            let ks = common::store::keys_on(&m, ns_name, &all, &svrs[h], 16)
                .into_iter()
                .cloned()
                .collect();
            (h, ks)
        })
        .collect();
    let every: Vec<String> = groups.iter().flat_map(|(_, ks)| ks.clone()).collect();
    for k in &every {
        ns.put(k, b"before", WriteOptions::new()).unwrap();
    }
    store.hosts[frozen].signal(libc::SIGSTOP);
    let (mut acked, mut failed) = (Vec::new(), Vec::new());
    let mut failed_on = [0usize; 3];
    for (h, ks) in &groups {
        // Straight to the primary: the answer is the server's own, no client retry. All
        // at once, so the freeze lasts about one replication_timeout_ms, far below the
        // failure detection time.
        let mut raw = Raw::hello_to(svrs[*h].parse().unwrap());
        for (i, k) in ks.iter().enumerate() {
            let req = Request::Put {
                key: Key {
                    ns: ns.id(),
                    key: k.as_bytes().to_vec(),
                },
                opts: WriteOpts::default(),
            };
            raw.send(i as u32 + 10, &req, b"during");
        }
        for k in ks {
            match raw.recv().1 {
                Response::Written { .. } => acked.push(k.clone()),
                Response::Error(e) if e.code == ErrorCode::ReplicationFailed => {
                    failed.push(k.clone());
                    failed_on[*h] += 1;
                }
                other => panic!("put of {k} with a frozen replica answered {other:?}"),
            }
        }
    }
    // No read shows a change the store could still lose: a write that failed is in doubt while
    // its replica is frozen (the primary sends it again until the replica confirms it), so a
    // read of it through its primary is held and fails with ReplicationFailed. Before, it
    // answered "during" at once, a value the frozen replica might never get.
    if let Some(k) = failed.first() {
        let h = groups.iter().find(|(_, ks)| ks.contains(k)).unwrap().0;
        let mut raw = Raw::hello_to(svrs[h].parse().unwrap());
        let key = Key {
            ns: ns.id(),
            key: k.as_bytes().to_vec(),
        };
        raw.send(99, &Request::Read { key }, b"");
        match raw.recv().1 {
            Response::Error(e) if e.code == ErrorCode::ReplicationFailed => {}
            other => panic!(
                "a read of {k}, whose write is in doubt while its replica is frozen, answered {other:?}\n{}",
                store.outputs()
            ),
        }
    }
    store.hosts[frozen].signal(libc::SIGCONT);
    println!(
        "with host {frozen} frozen: {} writes acknowledged, {} ReplicationFailed (per host {failed_on:?})",
        acked.len(),
        failed.len(),
    );
    assert!(
        !failed.is_empty(),
        "no write waited for the frozen replica\n{}",
        store.outputs()
    );
    // Every acknowledged write reads back, and a failed one reads as either value.
    let check = |store: &Store, ns: &stategrid_client::blocking::Namespace, what: &str| {
        for k in &every {
            let v = ns
                .read(k)
                .unwrap_or_else(|e| panic!("{what}: read {k}: {e}\n{}", store.outputs()))
                .value;
            if acked.contains(k) {
                assert_eq!(v, b"during", "{what}: acknowledged write of {k} lost");
            } else {
                assert!(v == b"during" || v == b"before", "{what}: {k} = {v:?}");
            }
        }
    };
    check(&store, &ns, "after SIGCONT");
    // The thawed replica has every acknowledged write: kill the primary whose writes waited
    // for it, and read everything from the survivors.
    let victim = (0..3).max_by_key(|&h| failed_on[h]).unwrap();
    let survivor = (0..3).find(|&h| h != victim && h != frozen).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    store.hosts[victim].kill9();
    let c2 = client(&svrs[survivor], 30_000);
    check(
        &store,
        &c2.namespace_unregistered(ns_name),
        "after kill -9 of the primary",
    );
}

/// Issue 11: `set --all` changed `max_replicas` only. Every store-wide ScaleOut parameter
/// (`max_replicas`, `lock_timeout`, `max_memory`, `lru_threshold`) now goes through the Raft
/// log to every host and into every shard's store: set on one host, a lock taken on any host
/// then lasts the new `lock_timeout`, and every host's `show` reports it.
#[test]
fn set_all_reaches_every_host_and_its_store() {
    let store = Store::start(3, 155);
    let svrs = store.svr_addrs();
    let mgt = format!("{}:{}", store.hosts[1].ip, store.mgt_port);
    let out = std::process::Command::new(common::bin())
        .args(["set", "lock_timeout", "3", "--all", "--mgt", &mgt])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "set --all failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = std::process::Command::new(common::bin())
        .args(["set", "lru_threshold", "80", "--all", "--mgt", &mgt])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let param = |addr: &str, name: &str| -> String {
        let st = client(addr, 15_000).stats().unwrap();
        st.params
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.value.clone())
            .unwrap_or_default()
    };
    let give_up = Instant::now() + Duration::from_secs(30);
    for addr in &svrs {
        while param(addr, "lock_timeout") != "3" || param(addr, "lru_threshold") != "80" {
            assert!(
                Instant::now() < give_up,
                "{addr} never applied the parameters\n{}",
                store.outputs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // Locks taken now on every host's primaries last 3 s, not the default 90 s.
    let c = client(&svrs[0], 15_000);
    let ns = c.namespace("locks").unwrap();
    for k in keys(30, "l") {
        ns.put(&k, b"v", WriteOptions::new()).unwrap();
        let locked = ns.read_and_lock(&k).unwrap();
        let left = locked.meta.lock.expect("locked").expires_in_ms;
        assert!(left <= 3_000, "lock on {k} expires in {left} ms");
    }
}
