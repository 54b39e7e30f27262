//! The Redis protocol on a store of 3 hosts (real processes on 127.0.0.x): a plain client gets
//! every key from any host (the host relays), a cluster client gets the slot map and -MOVED,
//! hashes survive a `kill -9` of their primary (the value kind is replicated), and native
//! clients route to the same objects.

mod common;

use std::time::{Duration, Instant};

use common::hosts::Store;
use common::resp::Conn;
use common::store::SETTLE_TIMEOUT_MS;
use stategrid_client::proto::hash::redis_slot;

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

/// The bulk strings of a RESP2 reply, in order (keys and cursors here hold no CR LF).
fn bulk_strings(reply: &str) -> Vec<String> {
    let lines: Vec<&str> = reply.split("\r\n").collect();
    lines
        .windows(2)
        .filter(|w| w[0].starts_with('$') && w[0] != "$-1")
        .map(|w| w[1].to_string())
        .collect()
}

#[test]
fn three_hosts_serve_plain_and_cluster_redis_clients() {
    let resp_port = common::free_port();
    let mut store = Store::start_with(3, 61, |_| vec![("resp_port", resp_port.to_string())]);
    let svrs = store.svr_addrs();
    let native = common::store::client(&svrs[0], 10_000);

    // A plain client: every key through every host.
    let mut plain: Vec<Conn> = svrs.iter().map(|a| Conn::connect(a)).collect();
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
    let mut cl = Conn::connect(&svrs[0]);
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
            let mut there = Conn::connect(&owner(&k));
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

    // The keyspace: on resp_port (a single Redis server's face) a plain client's DBSIZE, KEYS,
    // SCAN and FLUSHDB through any host cover the whole store; on svr_port (the cluster face)
    // a client's, plain or cluster, cover the node asked, as in Redis Cluster.
    let mine = (0..60)
        .flat_map(|i| [format!("session:{i}"), format!("hash:{i}")])
        .filter(|k| owner(k) == svrs[0])
        .count();
    let mut whole: Vec<Conn> = store
        .hosts
        .iter()
        .map(|h| Conn::connect(&format!("{}:{resp_port}", h.ip)))
        .collect();
    assert_eq!(whole[1].call_retry(&["DBSIZE"]), ":120\r\n");
    assert_eq!(cl.call(&["DBSIZE"]), format!(":{mine}\r\n"));
    assert_eq!(plain[0].call(&["DBSIZE"]), format!(":{mine}\r\n"));
    let keys = bulk_strings(&whole[2].call_retry(&["KEYS", "session:*"]));
    assert_eq!(
        keys.len(),
        60,
        "KEYS through one host lists every host's keys: {keys:?}"
    );
    assert_eq!(bulk_strings(&cl.call(&["KEYS", "*"])).len(), mine);
    assert_eq!(bulk_strings(&plain[0].call(&["KEYS", "*"])).len(), mine);
    let mut seen = Vec::new();
    let mut cursor = "0".to_string();
    let mut pages = 0;
    loop {
        let page = bulk_strings(&whole[1].call_retry(&["SCAN", &cursor, "COUNT", "7"]));
        cursor = page[0].clone();
        seen.extend(page[1..].iter().cloned());
        pages += 1;
        assert!(pages < 1000, "SCAN ends");
        if cursor == "0" {
            break;
        }
        assert!(
            cursor.parse::<u64>().unwrap() < 1 << 53,
            "cursors fit a JavaScript number: {cursor}"
        );
    }
    seen.sort();
    let mut all: Vec<String> = (0..60)
        .flat_map(|i| [format!("session:{i}"), format!("hash:{i}")])
        .collect();
    all.sort();
    assert_eq!(
        seen, all,
        "SCAN through one host visits every key of the store once"
    );
    // FLUSHDB from a plain client on resp_port empties the database on every host.
    for c in whole.iter_mut() {
        assert_eq!(c.call(&["SELECT", "5"]), "+OK\r\n");
    }
    for i in 0..30 {
        assert_eq!(
            whole[i % 3].call_retry(&["SET", &format!("f{i}"), "1"]),
            "+OK\r\n"
        );
    }
    assert_eq!(whole[0].call_retry(&["DBSIZE"]), ":30\r\n");
    assert_eq!(whole[1].call_retry(&["FLUSHDB"]), "+OK\r\n");
    assert_eq!(whole[2].call_retry(&["DBSIZE"]), ":0\r\n");
    assert_eq!(whole[0].call_retry(&["GET", "f7"]), "$-1\r\n");
    assert_eq!(whole[1].call_retry(&["SELECT", "0"]), "+OK\r\n");
    assert_eq!(
        whole[1].call_retry(&["DBSIZE"]),
        ":120\r\n",
        "other databases keep their keys"
    );

    // kill -9 the primary of a hash: after failover it is read back whole from another host.
    let h = "hash:5";
    let victim_addr = owner(h);
    let victim = svrs.iter().position(|a| *a == victim_addr).unwrap();
    let reader = (victim + 1) % 3;
    store.hosts[victim].kill9();
    let killed = Instant::now();
    let mut c = Conn::connect(&svrs[reader]);
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

/// Through every host of a 3-host store, a plain client's transactions, WATCH and RENAME on
/// keys whose primary is another host run whole at that primary (relayed as one request), and
/// what they wrote is replicated: after `kill -9` of the keys' primary it reads back whole.
#[test]
fn transactions_watch_and_rename_through_any_host_of_3() {
    let mut store = Store::start(3, 74);
    let svrs = store.svr_addrs();
    let slots = parse_slots(&Conn::connect(&svrs[0]).call(&["CLUSTER", "SLOTS"]));
    let owner = |key: &str| {
        let slot = redis_slot(key.as_bytes());
        let addr = slots
            .iter()
            .find(|(s, e, _)| (*s..=*e).contains(&slot))
            .map(|(_, _, a)| a.clone())
            .unwrap();
        svrs.iter().position(|a| *a == addr).unwrap()
    };
    // For each host, a tag whose primary is another host.
    let tags: Vec<String> = (0..3)
        .map(|via| {
            (0..)
                .map(|i| format!("{{tx{via}-{i}}}"))
                .find(|t| owner(t) != via)
                .unwrap()
        })
        .collect();
    for (via, t) in tags.iter().enumerate() {
        let k = |s: &str| format!("{t}{s}");
        let mut c = Conn::connect(&svrs[via]);
        let mut other = Conn::connect(&svrs[(via + 1) % 3]);
        assert_eq!(c.call(&["MULTI"]), "+OK\r\n");
        assert_eq!(c.call(&["SET", &k("a"), "1", "EX", "600"]), "+QUEUED\r\n");
        assert_eq!(c.call(&["INCR", &k("n")]), "+QUEUED\r\n");
        assert_eq!(c.call(&["HSET", &k("h"), "f", "v"]), "+QUEUED\r\n");
        assert_eq!(c.call(&["GET", &k("a")]), "+QUEUED\r\n");
        assert_eq!(
            c.call_retry(&["EXEC"]),
            "*4\r\n+OK\r\n:1\r\n:1\r\n$1\r\n1\r\n",
            "{}",
            store.outputs()
        );
        // WATCH of a key on another host: its stamp comes back in WATCH's answer.
        assert_eq!(c.call(&["WATCH", &k("n")]), "+OK\r\n");
        assert_eq!(other.call_retry(&["INCR", &k("n")]), ":2\r\n");
        assert_eq!(c.call(&["MULTI"]), "+OK\r\n");
        assert_eq!(c.call(&["INCR", &k("n")]), "+QUEUED\r\n");
        assert_eq!(c.call_retry(&["EXEC"]), "*-1\r\n");
        assert_eq!(c.call(&["WATCH", &k("n")]), "+OK\r\n");
        assert_eq!(c.call(&["MULTI"]), "+OK\r\n");
        assert_eq!(c.call(&["INCR", &k("n")]), "+QUEUED\r\n");
        assert_eq!(c.call_retry(&["EXEC"]), "*1\r\n:3\r\n");
        // RENAME on the keys' primary, the TTL with it.
        assert_eq!(c.call_retry(&["RENAME", &k("a"), &k("b")]), "+OK\r\n");
        assert_eq!(other.call_retry(&["GET", &k("b")]), "$1\r\n1\r\n");
        assert_eq!(other.call_retry(&["EXISTS", &k("a")]), ":0\r\n");
        // Keys of two partitions: refused, never run in part.
        let far = (0..)
            .map(|i| format!("elsewhere-{i}"))
            .find(|f| redis_slot(f.as_bytes()) / 16 != redis_slot(t.as_bytes()) / 16)
            .unwrap();
        assert_eq!(c.call(&["MULTI"]), "+OK\r\n");
        assert_eq!(c.call(&["SET", &k("x"), "1"]), "+QUEUED\r\n");
        assert_eq!(c.call(&["SET", &far, "1"]), "+QUEUED\r\n");
        let e = c.call_retry(&["EXEC"]);
        assert!(e.starts_with("-CROSSSLOT"), "{e}");
        let e = c.call_retry(&["RENAME", &k("b"), &far]);
        assert!(e.starts_with("-CROSSSLOT"), "{e}");
        assert_eq!(other.call_retry(&["EXISTS", &k("x"), &k("a")]), ":0\r\n");
    }
    // kill -9 the primary of the first tag: its transaction's and rename's writes were
    // replicated before they were acknowledged, so another host serves them.
    let t = &tags[0];
    let victim = owner(t);
    store.hosts[victim].kill9();
    let reader = (victim + 1) % 3;
    let mut c = Conn::connect(&svrs[reader]);
    let want = [
        (vec!["GET".to_string(), format!("{t}b")], "$1\r\n1\r\n"),
        (vec!["GET".to_string(), format!("{t}n")], "$1\r\n3\r\n"),
        (
            vec!["HGET".to_string(), format!("{t}h"), "f".to_string()],
            "$1\r\nv\r\n",
        ),
        (vec!["EXISTS".to_string(), format!("{t}a")], ":0\r\n"),
    ];
    for (args, expect) in want {
        let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let deadline = Instant::now() + Duration::from_millis(SETTLE_TIMEOUT_MS);
        loop {
            let r = c.call(&args);
            if r == expect {
                break;
            }
            assert!(
                r.starts_with("-TRYAGAIN") && Instant::now() < deadline,
                "{args:?} after kill -9 of its primary: {r}\n{}",
                store.outputs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let ttl: i64 = c
        .call_retry(&["TTL", &format!("{t}b")])
        .trim_start_matches(':')
        .trim()
        .parse()
        .unwrap();
    assert!((500..=600).contains(&ttl), "the renamed key's TTL: {ttl}");
}
