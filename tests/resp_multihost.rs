//! The Redis protocol on a store of 3 hosts (real processes on 127.0.0.x): a plain client gets
//! every key from any host (the host relays), a cluster client gets the slot map and -MOVED,
//! hashes survive a `kill -9` of their primary (the value kind is replicated), and native
//! clients route to the same objects.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::store::{SETTLE_TIMEOUT_MS, client, wait_settled};
use common::{bin, free_port};
use stategrid_client::proto::hash::redis_slot;

struct Host {
    ip: String,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Host {
    fn output(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.txt")).unwrap_or_default()
    }
    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let out = self.output();
            let tail: Vec<&str> = out.lines().rev().take(40).collect();
            eprintln!(
                "--- {} ---\n{}",
                self.ip,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        self.kill9();
    }
}

fn start_host(ip: &str, peers: &[String], mgt: u16, svr: u16, int: u16) -> Host {
    let dir = tempfile::tempdir().unwrap();
    let log_dir = dir.path().join("log");
    let hosts: Vec<String> = peers.iter().map(|h| format!("{h}:{mgt}")).collect();
    let mut cmd = Command::new(bin());
    cmd.arg("serve");
    for (n, v) in [
        ("net_interface", ip.to_string()),
        ("svr_port", svr.to_string()),
        ("mgt_port", mgt.to_string()),
        ("int_port", int.to_string()),
        ("use_multicast", "0".into()),
        ("hosts", hosts.join(",")),
        ("shards", "1".into()),
        ("max_replicas", "1".into()),
        ("log_dir", log_dir.display().to_string()),
    ] {
        cmd.arg("--set").arg(format!("{n}={v}"));
    }
    let stderr = std::fs::File::create(dir.path().join("stderr.txt")).unwrap();
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    Host {
        ip: ip.into(),
        child: Some(cmd.spawn().expect("spawn stategrid serve")),
        dir,
    }
}

/// A raw RESP connection that reads whole replies.
struct Conn {
    s: TcpStream,
}

impl Conn {
    fn open(addr: &str) -> Conn {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Conn { s }
    }

    fn call(&mut self, args: &[&str]) -> String {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend(format!("${}\r\n{a}\r\n", a.len()).bytes());
        }
        self.s.write_all(&out).unwrap();
        let mut r = Vec::new();
        self.value(&mut r);
        String::from_utf8(r).unwrap()
    }

    /// As `call`, retrying while the store answers `-TRYAGAIN` (its map is changing), as Redis
    /// client libraries do; bounded by the settle timeout.
    fn call_retry(&mut self, args: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_millis(SETTLE_TIMEOUT_MS);
        loop {
            let r = self.call(args);
            if !r.starts_with("-TRYAGAIN") || Instant::now() > deadline {
                return r;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn byte(&mut self) -> u8 {
        let mut b = [0u8];
        self.s.read_exact(&mut b).expect("reply");
        b[0]
    }

    fn value(&mut self, out: &mut Vec<u8>) {
        let start = out.len();
        while !out.ends_with(b"\r\n") || out.len() < start + 3 {
            let b = self.byte();
            out.push(b);
        }
        let line = String::from_utf8_lossy(&out[start..out.len() - 2]).into_owned();
        let n: i64 = line[1..].parse().unwrap_or(0);
        match line.as_bytes()[0] {
            b'$' | b'=' if n >= 0 => {
                let mut v = vec![0u8; n as usize + 2];
                self.s.read_exact(&mut v).unwrap();
                out.extend(v);
            }
            b'*' => (0..n.max(0)).for_each(|_| self.value(out)),
            b'%' => (0..2 * n).for_each(|_| self.value(out)),
            _ => {}
        }
    }
}

/// (start, end, ip:port of the primary) of a CLUSTER SLOTS reply.
fn parse_slots(reply: &str) -> Vec<(u16, u16, String)> {
    let lines: Vec<&str> = reply.split("\r\n").collect();
    let ranges: usize = lines[0][1..].parse().unwrap();
    let mut i = 1;
    let mut out = Vec::new();
    for _ in 0..ranges {
        let items: usize = lines[i][1..].parse().unwrap();
        let start: u16 = lines[i + 1][1..].parse().unwrap();
        let end: u16 = lines[i + 2][1..].parse().unwrap();
        // The primary: *3, $len, ip, :port, $40, id
        let ip = lines[i + 5];
        let port = &lines[i + 6][1..];
        out.push((start, end, format!("{ip}:{port}")));
        i += 3 + (items - 2) * 6;
    }
    out
}

#[test]
fn three_hosts_serve_plain_and_cluster_redis_clients() {
    let (mgt, svr, int) = (free_port(), free_port(), free_port());
    let ips: Vec<String> = [61, 62, 63]
        .iter()
        .map(|i| format!("127.0.0.{i}"))
        .collect();
    let mut hosts: Vec<Host> = ips
        .iter()
        .map(|me| {
            let peers: Vec<String> = ips.iter().filter(|o| *o != me).cloned().collect();
            start_host(me, &peers, mgt, svr, int)
        })
        .collect();
    let svrs: Vec<String> = ips.iter().map(|ip| format!("{ip}:{svr}")).collect();
    let native = client(&svrs[0], 10_000);
    let outputs = || {
        hosts
            .iter()
            .map(|h| h.output())
            .collect::<Vec<_>>()
            .join("\n")
    };
    wait_settled(&native, &svrs, 1, outputs);

    // A plain client: every key through every host.
    let mut plain: Vec<Conn> = svrs.iter().map(|a| Conn::open(a)).collect();
    for i in 0..60 {
        let k = format!("session:{i}");
        assert_eq!(
            plain[i % 3].call_retry(&["SET", &k, &format!("v{i}"), "EX", "600"]),
            "+OK\r\n"
        );
        assert_eq!(
            plain[(i + 1) % 3].call_retry(&["GET", &k]),
            format!("${}\r\nv{i}\r\n", format!("v{i}").len())
        );
        let h = format!("hash:{i}");
        assert_eq!(
            plain[i % 3].call_retry(&["HSET", &h, "a", "1", "b", "2"]),
            ":2\r\n"
        );
        assert_eq!(
            plain[(i + 2) % 3].call_retry(&["HGETALL", &h]),
            "*4\r\n$1\r\na\r\n$1\r\n1\r\n$1\r\nb\r\n$1\r\n2\r\n"
        );
    }
    // The native client routes to the same objects (same key hash, Redis slots inside).
    let ns = native.namespace("redis-0").unwrap();
    assert_eq!(ns.read("session:7").unwrap().value, b"v7");

    // A cluster client: the slot map covers every slot, once, with the hosts' svr ports.
    let mut cl = Conn::open(&svrs[0]);
    let slots = parse_slots(&cl.call(&["CLUSTER", "SLOTS"]));
    let mut covered = 0u32;
    let mut next = 0u32;
    for (start, end, addr) in &slots {
        assert_eq!(
            *start as u32, next,
            "slot ranges are sorted and contiguous: {slots:?}"
        );
        assert!(svrs.contains(addr), "{addr} is one of the hosts");
        covered += (*end - *start) as u32 + 1;
        next = *end as u32 + 1;
    }
    assert_eq!(covered, 16384);
    let owner = |key: &str| {
        let slot = redis_slot(key.as_bytes());
        slots
            .iter()
            .find(|(s, e, _)| (*s..=*e).contains(&slot))
            .map(|(_, _, a)| a.clone())
            .unwrap()
    };
    let mut moved = 0;
    for i in 0..60 {
        let k = format!("session:{i}");
        let slot = redis_slot(k.as_bytes());
        let got = cl.call(&["GET", &k]);
        if owner(&k) == svrs[0] {
            assert_eq!(got, format!("${}\r\nv{i}\r\n", format!("v{i}").len()));
        } else {
            assert_eq!(got, format!("-MOVED {slot} {}\r\n", owner(&k)));
            moved += 1;
            // Following the redirection works.
            let mut there = Conn::open(&owner(&k));
            assert_eq!(there.call(&["READONLY"]), "+OK\r\n");
            assert_eq!(
                there.call(&["GET", &k]),
                format!("${}\r\nv{i}\r\n", format!("v{i}").len())
            );
        }
    }
    assert!(moved > 0, "some of 60 keys live on the other two hosts");
    let nodes = cl.call(&["CLUSTER", "NODES"]);
    assert_eq!(nodes.matches("myself,master").count(), 1, "{nodes}");
    assert_eq!(nodes.matches(" connected").count(), 3, "{nodes}");

    // kill -9 the primary of a hash: after failover it is read back whole from another host.
    let h = "hash:5";
    let victim_addr = owner(h);
    let victim = svrs.iter().position(|a| *a == victim_addr).unwrap();
    let reader = (victim + 1) % 3;
    hosts[victim].kill9();
    let killed = Instant::now();
    let mut c = Conn::open(&svrs[reader]);
    loop {
        let r = c.call(&["HGETALL", h]);
        if r == "*4\r\n$1\r\na\r\n$1\r\n1\r\n$1\r\nb\r\n$1\r\n2\r\n" {
            break;
        }
        assert!(
            r.starts_with("-TRYAGAIN"),
            "only retryable errors during failover: {r}"
        );
        assert!(
            killed.elapsed() < Duration::from_millis(SETTLE_TIMEOUT_MS),
            "{h} not served {SETTLE_TIMEOUT_MS} ms after its primary died: {r}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    println!(
        "hash served again {} ms after kill -9 of its primary",
        killed.elapsed().as_millis()
    );
    assert_eq!(c.call(&["HGET", h, "b"]), "$1\r\n2\r\n");
    // Another key may be in a partition whose failover is still finishing: retry TRYAGAIN.
    let t: i64 = c
        .call_retry(&["TTL", "session:5"])
        .trim_start_matches(':')
        .trim()
        .parse()
        .unwrap();
    assert!(
        (500..=600).contains(&t),
        "the TTL survived the failover: {t}"
    );
}
