//! The multi-host store with real processes: several `stategrid serve` on loopback, each bound
//! to its own 127.0.0.x address with the same ports, finding each other through the static
//! `hosts` list. Every acknowledged write must survive `kill -9` of a host; a new host takes its
//! share; a leaving host loses nothing. Times are measured and printed, never asserted.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use stategrid_client::proto::hash::namespace_id;
use stategrid_client::proto::{key_hash, partition_of};

use common::store::*;
use common::{bin, free_port};

/// One host: its process, its address and its files.
struct Host {
    ip: String,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Host {
    fn svr(&self, ports: &Ports) -> String {
        format!("{}:{}", self.ip, ports.svr)
    }
    fn mgt(&self, ports: &Ports) -> String {
        format!("{}:{}", self.ip, ports.mgt)
    }
    fn output(&self) -> String {
        let read = |n: &str| std::fs::read_to_string(self.dir.path().join(n)).unwrap_or_default();
        format!(
            "--- {} stderr ---\n{}",
            self.ip,
            read("stderr.txt")
                .lines()
                .rev()
                .take(60)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        )
    }
    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill(); // SIGKILL
            let _ = c.wait();
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.output());
        }
        self.kill9();
    }
}

#[derive(Clone, Copy)]
struct Ports {
    mgt: u16,
    svr: u16,
    int: u16,
}

fn ports() -> Ports {
    Ports {
        mgt: free_port(),
        svr: free_port(),
        int: free_port(),
    }
}

/// Starts a host on `ip` that knows the others through `peers` (their ips).
fn start_host(ip: &str, peers: &[&str], p: Ports, extra: &[(&str, &str)]) -> Host {
    let dir = tempfile::tempdir().unwrap();
    let log_dir = dir.path().join("log");
    let hosts: Vec<String> = peers.iter().map(|h| format!("{h}:{}", p.mgt)).collect();
    let mut cmd = Command::new(bin());
    cmd.arg("serve");
    let mut sets: Vec<(String, String)> = vec![
        ("net_interface".into(), ip.into()),
        ("svr_port".into(), p.svr.to_string()),
        ("mgt_port".into(), p.mgt.to_string()),
        ("int_port".into(), p.int.to_string()),
        ("use_multicast".into(), "0".into()),
        ("hosts".into(), hosts.join(",")),
        ("shards".into(), "1".into()),
        ("max_replicas".into(), "1".into()),
        ("log_dir".into(), log_dir.display().to_string()),
        ("log_level".into(), "info".into()),
    ];
    for (n, v) in extra {
        sets.retain(|(k, _)| k != n);
        sets.push((n.to_string(), v.to_string()));
    }
    for (n, v) in &sets {
        cmd.arg("--set").arg(format!("{n}={v}"));
    }
    let stderr = std::fs::File::create(dir.path().join("stderr.txt")).unwrap();
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    let child = cmd.spawn().expect("spawn stategrid serve");
    Host {
        ip: ip.into(),
        child: Some(child),
        dir,
    }
}

fn outputs(hosts: &[&Host]) -> String {
    hosts
        .iter()
        .map(|h| h.output())
        .collect::<Vec<_>>()
        .join("\n")
}

fn ip(last: u8) -> String {
    format!("127.0.0.{last}")
}

#[test]
fn three_hosts_keep_every_acknowledged_write_through_kill_9() {
    let p = ports();
    let ips: Vec<String> = [21, 22, 23].iter().map(|&i| ip(i)).collect();
    let mut hosts: Vec<Host> = ips
        .iter()
        .map(|me| {
            let peers: Vec<&str> = ips
                .iter()
                .filter(|o| *o != me)
                .map(|s| s.as_str())
                .collect();
            start_host(me, &peers, p, &[])
        })
        .collect();
    let svrs: Vec<String> = hosts.iter().map(|h| h.svr(&p)).collect();
    let c = client(&svrs[0], 10_000);
    let refs: Vec<&Host> = hosts.iter().collect();
    let m = wait_settled(&c, &svrs, 1, || outputs(&refs));
    let counts = primaries_per_host(&m);
    println!("3 hosts formed: epoch {}, primaries {counts:?}", m.epoch);
    for (h, &n) in &counts {
        assert!(
            (340..=343).contains(&n),
            "{h} is primary of {n} partitions, not about 1024/3"
        );
    }

    // 10,000 objects, every acknowledgement recorded.
    let ns = "sessions";
    let all = keys(10_000, "k");
    // Load while a host dies: two writers through the first host.
    let load = Load::start(&svrs[0], ns, &all, write_all(&c, ns, &all), 2);
    std::thread::sleep(Duration::from_millis(500));

    // Keys whose primary is the host about to die: they measure the failover.
    let victim = 1;
    let probes = keys_on(&m, ns, &all, &svrs[victim], 64);
    assert!(!probes.is_empty());

    // A session on the doomed host, locked, with a sliding timeout: the lock (same token),
    // version and timeout must survive the failover.
    let sessions = c.namespace("locked").unwrap();
    let candidates = keys(10_000, "s");
    let locked_key = keys_on(&m, "locked", &candidates, &svrs[victim], 1)[0].clone();
    sessions
        .put(
            &locked_key,
            b"cart",
            stategrid_client::WriteOptions::sliding(600),
        )
        .unwrap();
    let lock = sessions.read_and_lock(&locked_key).unwrap();

    let killed_at = Instant::now();
    hosts[victim].kill9();
    // Poll the victim's keys with a client that gives up quickly, until every one reads.
    let quick = client(&svrs[0], 100);
    let qn = quick.namespace_unregistered(ns);
    let mut waiting: Vec<&String> = probes.clone();
    while !waiting.is_empty() {
        waiting.retain(|k| qn.read(k).is_err());
        assert!(
            killed_at.elapsed() < Duration::from_millis(SETTLE_TIMEOUT_MS),
            "{} keys of the killed host still unreadable after {SETTLE_TIMEOUT_MS} ms",
            waiting.len()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let recovered = killed_at.elapsed();
    println!(
        "kill -9 of {}: every key served again after {} ms",
        svrs[victim],
        recovered.as_millis()
    );
    std::thread::sleep(Duration::from_millis(500));
    let (acked, errors) = load.stop();
    println!(
        "writer errors beyond retries during the failover: {}",
        errors.len()
    );
    assert!(
        errors.is_empty(),
        "writes failed beyond retries: {:?}",
        &errors[..errors.len().min(5)]
    );

    // Replicas re-made on the survivors; every acknowledged write readable.
    let survivors: Vec<String> = vec![svrs[0].clone(), svrs[2].clone()];
    let refs: Vec<&Host> = hosts.iter().collect();
    let m2 = wait_settled(&c, &survivors, 1, || outputs(&refs));
    println!(
        "after the failure: epoch {}, primaries {:?}",
        m2.epoch,
        primaries_per_host(&m2)
    );
    check_all(&c, ns, &acked);
    // The lock survived: another client is refused, the holder's token still works.
    let meta = sessions.meta(&locked_key).unwrap();
    assert!(
        meta.lock.is_some(),
        "the lock was lost in the failover: {meta:?}"
    );
    assert_eq!(meta.version, lock.meta.version);
    assert_eq!(meta.timeout.timeout_s, 600);
    let e = sessions
        .update(&locked_key, b"other", stategrid_client::WriteOptions::new())
        .unwrap_err();
    assert_eq!(e.code(), Some(stategrid_client::ErrorCode::Locked), "{e}");
    sessions
        .update_and_unlock(
            &locked_key,
            b"cart2",
            stategrid_client::WriteOptions::sliding(600),
            lock.lock_token,
        )
        .unwrap();
    // Through the other survivor as well (its own pool, server-side forwarding aside).
    check_all(&client(&svrs[2], 10_000), ns, &acked);
}

#[test]
fn a_fourth_host_takes_its_share_and_a_leaving_host_loses_nothing() {
    let p = ports();
    let ips: Vec<String> = [31, 32, 33, 34].iter().map(|&i| ip(i)).collect();
    let peers_of =
        |me: &String| -> Vec<String> { ips.iter().filter(|o| *o != me).cloned().collect() };
    let mut hosts: Vec<Host> = ips[..3]
        .iter()
        .map(|me| {
            let peers = peers_of(me);
            let peers: Vec<&str> = peers.iter().map(|s| s.as_str()).collect();
            start_host(me, &peers, p, &[("shards", "2")])
        })
        .collect();
    let svrs: Vec<String> = ips.iter().map(|i| format!("{i}:{}", p.svr)).collect();
    let c = client(&svrs[0], 10_000);
    let refs: Vec<&Host> = hosts.iter().collect();
    wait_settled(&c, &svrs[..3], 1, || outputs(&refs));
    let ns = "carts";
    let all = keys(5_000, "c");

    // A 4th host joins while a writer runs.
    let load = Load::start(&svrs[0], ns, &all, write_all(&c, ns, &all), 1);
    let joined_at = Instant::now();
    let peers = peers_of(&ips[3]);
    let peers: Vec<&str> = peers.iter().map(|s| s.as_str()).collect();
    hosts.push(start_host(&ips[3], &peers, p, &[("shards", "2")]));
    let refs: Vec<&Host> = hosts.iter().collect();
    let m = wait_settled(&c, &svrs, 1, || outputs(&refs));
    let took = joined_at.elapsed();
    let counts = primaries_per_host(&m);
    println!(
        "4th host joined: settled in {} ms ({} objects moved at most), primaries {counts:?}",
        took.as_millis(),
        all.len()
    );
    for (h, &n) in &counts {
        assert!(
            (255..=257).contains(&n),
            "{h} is primary of {n} partitions, not about 1024/4"
        );
    }

    // The second host leaves, waiting until its partitions moved away.
    let out = Command::new(bin())
        .args(["leave", "--wait", "--mgt", &hosts[1].mgt(&p)])
        .output()
        .expect("run stategrid leave");
    assert!(
        out.status.success(),
        "stategrid leave --wait failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let remaining: Vec<String> = vec![svrs[0].clone(), svrs[2].clone(), svrs[3].clone()];
    let refs: Vec<&Host> = hosts.iter().collect();
    let m = wait_settled(&c, &remaining, 1, || outputs(&refs));
    println!("after leave: primaries {:?}", primaries_per_host(&m));
    let (acked, errors) = load.stop();
    assert!(
        errors.is_empty(),
        "writes failed beyond retries: {:?}",
        &errors[..errors.len().min(5)]
    );
    check_all(&c, ns, &acked);

    // Multi-key requests span hosts: the client splits them per key.
    let n = c.namespace("bulk").unwrap();
    let items: Vec<(String, Vec<u8>)> = (0..200)
        .map(|i| (format!("b{i}"), format!("v{i}").into_bytes()))
        .collect();
    let written = n
        .bulk_put(&items, stategrid_client::WriteOptions::new())
        .unwrap();
    assert!(written.iter().all(|r| r.is_ok()), "{written:?}");
    let keys: Vec<&String> = items.iter().map(|(k, _)| k).collect();
    let read = n.multi_read(&keys).unwrap();
    for ((_, v), r) in items.iter().zip(&read) {
        assert_eq!(&r.as_ref().unwrap().value, v);
    }
    // A namespace-wide clear and count span the store (the host that left answers too).
    assert_eq!(n.count().unwrap(), 200);
    n.clear().unwrap();
    assert_eq!(n.count().unwrap(), 0);
    // The host that left holds nothing and is still up; `join` makes it take a share again
    // (before that was handled, it answered "already a member" and stayed leaving).
    assert!(
        hosts[1]
            .child
            .as_mut()
            .unwrap()
            .try_wait()
            .unwrap()
            .is_none()
    );
    let out = Command::new(bin())
        .args(["join", "--mgt", &hosts[1].mgt(&p)])
        .output()
        .expect("run stategrid join");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let refs: Vec<&Host> = hosts.iter().collect();
    let m = wait_settled(&c, &svrs, 1, || outputs(&refs));
    println!("after join: primaries {:?}", primaries_per_host(&m));
    check_all(&c, ns, &acked);

    // Copies made by migration are complete: with a host gone, the promoted ones serve all.
    hosts[2].kill9();
    let rest: Vec<String> = vec![svrs[0].clone(), svrs[1].clone(), svrs[3].clone()];
    let refs: Vec<&Host> = hosts.iter().collect();
    wait_settled(&c, &rest, 1, || outputs(&refs));
    check_all(&c, ns, &acked);

    // SIGTERM leaves cleanly: the host hands its partitions over before it stops.
    let mut child = hosts[3].child.take().unwrap();
    // SAFETY: signalling our own child, still running (not yet waited for).
    assert_eq!(
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) },
        0
    );
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}\n{}", hosts[3].output());
    assert!(
        hosts[3].output().contains("left the store"),
        "{}",
        hosts[3].output()
    );
    let rest: Vec<String> = vec![svrs[0].clone(), svrs[1].clone()];
    let refs: Vec<&Host> = hosts.iter().collect();
    wait_settled(&c, &rest, 1, || outputs(&refs));
    check_all(&c, ns, &acked);
}

#[test]
fn writes_relayed_both_ways_between_replicating_hosts_do_not_stall() {
    use common::raw::Raw;
    use stategrid_client::proto::{Key, Request, Response, WriteOpts};

    // Two hosts, each the other's replica. Each gets pipelined writes for keys whose primary is
    // the other, so both relay writes to each other while replicating to each other. With
    // relayed writes and replication acknowledgements on one in-order link, each host's
    // acknowledgement waited behind a relayed write that waited for the other's: writes
    // stalled until replication_timeout_ms and failed with ReplicationFailed.
    let p = ports();
    let ips = [ip(41), ip(42)];
    let hosts: Vec<Host> = (0..2)
        .map(|i| start_host(&ips[i], &[&ips[1 - i]], p, &[]))
        .collect();
    let svrs: Vec<String> = hosts.iter().map(|h| h.svr(&p)).collect();
    let c = client(&svrs[0], 10_000);
    let refs: Vec<&Host> = hosts.iter().collect();
    let m = wait_settled(&c, &svrs, 1, || outputs(&refs));
    let ns = namespace_id("relay");
    let index_of = |addr: &str| m.hosts.iter().position(|h| h.svr_addr == addr).unwrap() as u16;
    let keys_on = |host: usize| -> Vec<String> {
        (0..)
            .map(|i| format!("r{i}"))
            .filter(|k| {
                m.primaries[partition_of(key_hash(ns, k.as_bytes())) as usize]
                    == index_of(&svrs[host])
            })
            .take(2_000)
            .collect()
    };
    // Through the routing (and retrying) client first: every key's primary then holds its
    // lease, so what follows tests the links, not how soon a new primary gets its lease.
    let warm = c.namespace("relay").unwrap();
    for host in 0..2 {
        for k in keys_on(host) {
            warm.put(&k, b"first", stategrid_client::WriteOptions::new())
                .unwrap();
        }
    }
    const PIPELINE: usize = 64;
    let threads: Vec<_> = (0..2)
        .map(|i| {
            // Host i gets the keys host 1 - i is primary of.
            let addr: std::net::SocketAddr = svrs[i].parse().unwrap();
            let keys = keys_on(1 - i);
            std::thread::spawn(move || {
                let mut raw = Raw::hello_to(addr);
                let mut failed = Vec::new();
                for chunk in keys.chunks(PIPELINE) {
                    for (j, k) in chunk.iter().enumerate() {
                        raw.send(
                            10 + j as u32,
                            &Request::Put {
                                key: Key {
                                    ns,
                                    key: k.as_bytes().to_vec(),
                                },
                                opts: WriteOpts::default(),
                            },
                            &[7u8; 512],
                        );
                    }
                    for _ in chunk {
                        match raw.recv().1 {
                            Response::Written { .. } => {}
                            other => failed.push(format!("{other:?}")),
                        }
                    }
                }
                failed
            })
        })
        .collect();
    for t in threads {
        let failed = t.join().unwrap();
        assert!(
            failed.is_empty(),
            "{} relayed writes failed, e.g. {:?}",
            failed.len(),
            &failed[..failed.len().min(3)]
        );
    }
}

/// Host links ask for their own shard number (issue 12): with equal shard counts, a shard-aware
/// client's writes reach their primary's owner shard, and the `Replicate` frames they cause reach
/// the replica's owner shard, so neither host passes anything between its shards.
#[test]
fn replication_between_sharded_hosts_lands_on_the_owning_shard() {
    use stategrid_client::proto::WriteOpts;
    let p = ports();
    let ips = [ip(47), ip(48)];
    let hosts: Vec<Host> = (0..2)
        .map(|i| start_host(&ips[i], &[&ips[1 - i]], p, &[("shards", "2")]))
        .collect();
    let svrs: Vec<String> = hosts.iter().map(|h| h.svr(&p)).collect();
    let c = client(&svrs[0], 10_000);
    let refs: Vec<&Host> = hosts.iter().collect();
    wait_settled(&c, &svrs, 1, || outputs(&refs));
    // One client per host, for that host's own counters.
    let each: Vec<_> = svrs.iter().map(|s| client(s, 10_000)).collect();
    let before: Vec<_> = each.iter().map(|h| h.stats().unwrap()).collect();
    let ns = c.namespace("links").unwrap();
    let n = 400u64;
    for i in 0..n {
        ns.put(format!("l{i}"), b"value", WriteOpts::default())
            .unwrap();
    }
    let after: Vec<_> = each.iter().map(|h| h.stats().unwrap()).collect();
    let objects: u64 = after.iter().map(|s| s.objects).sum::<u64>()
        - before.iter().map(|s| s.objects).sum::<u64>();
    assert_eq!(
        objects,
        2 * n,
        "every write is held by its primary and its replica"
    );
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(a.shards, 2);
        assert_eq!(
            a.forwarded_requests - b.forwarded_requests,
            0,
            "no write nor replication frame hopped between shards: {}",
            outputs(&refs)
        );
    }
}
