//! The control plane under faults (issue 11), with real processes on loopback: a name server
//! that hangs, the Raft leader killed, a host frozen past failure detection. Each test asserts
//! outcomes (every write acknowledged, the same process a member again), never durations;
//! times are printed for the record.

mod common;

use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use stategrid_client::proto::{ErrorCode, Key, Request, Response, WriteOpts};

use common::hosts::{Host, Ports, Store};
use common::raw::Raw;
use common::store::{Load, check_all, client, keys, keys_on, wait_settled, write_all};

/// The address of the host that leads the Raft group, asked through `mgt`.
fn leader_ip(mgt: &str) -> Option<String> {
    let out = std::process::Command::new(common::bin())
        .args(["query", "--json", "--mgt", mgt])
        .output()
        .unwrap();
    let q: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    q["hosts"]
        .as_array()?
        .iter()
        .find(|h| h["leader"] == true)
        .and_then(|h| h["addr"].as_str())
        .and_then(|a| a.split(':').next())
        .map(str::to_owned)
}

/// The leader's IP, waiting until the store names one.
fn wait_leader(mgt: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(ip) = leader_ip(mgt) {
            return ip;
        }
        assert!(Instant::now() < deadline, "no leader named through {mgt}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sends a `Put` of each key straight to `raw`'s host (pipelined) and returns the keys whose
/// answer was not `Written`, with the answer: the server's own word, no client retry.
fn put_all(raw: &mut Raw, ns: u32, ks: &[String], value: &[u8]) -> Vec<(String, Response)> {
    for (i, k) in ks.iter().enumerate() {
        let req = Request::Put {
            key: Key {
                ns,
                key: k.as_bytes().to_vec(),
            },
            opts: WriteOpts::default(),
        };
        raw.send(i as u32 + 10, &req, value);
    }
    let mut bad = Vec::new();
    for k in ks {
        match raw.recv().1 {
            Response::Written { .. } => {}
            other => bad.push((k.clone(), other)),
        }
    }
    bad
}

/// Issue 11: "when the Raft leader dies, every write in the store stops for about 1.15 s":
/// leases came from the leader, and a new leader waited out the old one's leases before
/// granting any. Now a new leader renews the leases of the map's epoch at once (a host that
/// holds one proves the epoch was granted before), so writes to the partitions of the hosts
/// that live on never pause: through the election and the failover each is acknowledged on
/// its first try, except a write whose replication crosses the failover's new map, which the
/// epoch fence answers at once with `StaleEpoch` (retryable; it happens when any host fails,
/// leader or not), and a write to a partition the failover's rebalancing then moved to the
/// other survivor. None to a partition that kept its primary is held and refused
/// (`NotPrimary`: a lapsed lease) or left unanswered. The dead leader's partitions fail over
/// to their replicas.
#[test]
fn writes_to_surviving_primaries_go_on_while_the_leader_is_killed() {
    let mut store = Store::start_with(3, 171, |_| {
        // Generous: a write whose replica was the leader waits for the map that drops it
        // (detection plus a commit), and must not time out meanwhile.
        vec![("replication_timeout_ms", "10000".to_string())]
    });
    let svrs = store.svr_addrs();
    let mgt = format!("{}:{}", store.hosts[0].ip, store.mgt_port);
    let leader = wait_leader(&mgt);
    let dead = store.hosts.iter().position(|h| h.ip == leader).unwrap();
    let c = client(&svrs[(dead + 1) % 3], 30_000);
    let ns_name = "leaderless";
    let ns = c.namespace(ns_name).unwrap();
    let m = common::store::map(&c).expect("map");
    let all = keys(3000, "l");
    let on_dead: Vec<String> = keys_on(&m, ns_name, &all, &svrs[dead], 30)
        .into_iter()
        .cloned()
        .collect();
    let before = write_all(&c, ns_name, &on_dead);
    let mut groups: Vec<(usize, Vec<String>, Raw)> = (0..3)
        .filter(|&h| h != dead)
        .map(|h| {
            let ks = keys_on(&m, ns_name, &all, &svrs[h], 20)
                .into_iter()
                .cloned()
                .collect();
            (h, ks, Raw::hello_to(svrs[h].parse().unwrap()))
        })
        .collect();
    // A round of writes before the kill: the connections and leases are warm.
    for (h, ks, raw) in &mut groups {
        let bad = put_all(raw, ns.id(), ks, b"before");
        assert!(bad.is_empty(), "host {h} before the kill: {bad:?}");
    }
    let epoch_before = m.epoch;
    store.hosts[dead].kill9();
    let killed = Instant::now();
    // Rounds until the store has failed the dead leader over, and a few more.
    let (mut rounds, mut writes, mut failures) = (0, 0, Vec::new());
    let mut failed_over_after = None;
    while failed_over_after.is_none_or(|t: Duration| killed.elapsed() < t + Duration::from_secs(1))
    {
        for (h, ks, raw) in &mut groups {
            let value = format!("round {rounds}");
            let bad = put_all(raw, ns.id(), ks, value.as_bytes());
            writes += ks.len();
            failures.extend(bad.into_iter().map(|(k, r)| (*h, k, r)));
        }
        rounds += 1;
        if failed_over_after.is_none()
            && let Some(m) = common::store::map(&c)
            && m.hosts.iter().filter(|h| h.active).count() == 2
            && m.primaries
                .iter()
                .all(|&p| p != u16::MAX && m.hosts[p as usize].svr_addr != svrs[dead])
        {
            failed_over_after = Some(killed.elapsed());
        }
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "the dead leader was not failed over\n{}",
            store.outputs()
        );
    }
    // The dead leader's partitions are served again.
    let survivors: Vec<String> = (0..3)
        .filter(|&h| h != dead)
        .map(|h| svrs[h].clone())
        .collect();
    let settled = wait_settled(&c, &survivors, 1, || store.outputs());
    // Outcomes apart from a paused lease: a fence of the failover's map (an immediate
    // retryable answer), and a partition the failover's rebalancing moved to the other
    // survivor (its new primary waits for the new epoch's lease, as at any map change).
    let id = stategrid_client::proto::hash::namespace_id(ns_name);
    let moved = |h: usize, k: &str| {
        let p = stategrid_client::proto::partition_of(stategrid_client::proto::key_hash(
            id,
            k.as_bytes(),
        ));
        let now = settled.primaries[p as usize];
        now == u16::MAX || settled.hosts[now as usize].svr_addr != svrs[h]
    };
    let mut fenced = Vec::new();
    let mut rebalanced = 0;
    let mut paused = Vec::new();
    for (h, k, r) in failures {
        if matches!(&r, Response::Error(e) if e.code == ErrorCode::StaleEpoch && e.detail > epoch_before)
        {
            fenced.push((h, k));
        } else if moved(h, &k) {
            rebalanced += 1;
        } else {
            paused.push((h, k, r));
        }
    }
    println!(
        "leader killed: {writes} writes to the surviving primaries in {rounds} rounds; {} fenced by the failover's map (StaleEpoch), {rebalanced} refused in partitions the failover moved, {} otherwise not acknowledged; failed over after {failed_over_after:?}",
        fenced.len(),
        paused.len()
    );
    assert!(
        paused.is_empty(),
        "{} of {writes} writes to surviving primaries were refused while the leader died, e.g. {:?}\n{}",
        paused.len(),
        &paused[..paused.len().min(5)],
        store.outputs()
    );
    // Each fenced write goes through when sent again (as the client library does).
    for (h, k) in &fenced {
        let raw = &mut groups.iter_mut().find(|g| g.0 == *h).unwrap().2;
        let bad = put_all(raw, ns.id(), std::slice::from_ref(k), b"again");
        assert!(bad.is_empty(), "{k} sent again: {bad:?}");
    }
    // Every acknowledged write survived.
    check_all(&c, ns_name, &before);
}

/// Issue 11: "a host declared failed exits with code 1 and needs a supervisor to come back".
/// Now it rejoins in-process as a new, empty member: frozen with SIGSTOP past failure
/// detection while writers overwrite every key, then thawed, the same process is a member
/// again, no acknowledged write is lost, and what it serves is the store's newest value, not
/// the stale copy it held when it froze.
#[test]
fn a_host_declared_failed_rejoins_in_process_as_a_new_member() {
    let mut store = Store::start_with(3, 181, |_| vec![("rejoin_in_process", "1".into())]);
    let svrs = store.svr_addrs();
    let c = client(&svrs[0], 30_000);
    let ns_name = "rejoin";
    let all = keys(300, "r");
    let first = write_all(&c, ns_name, &all);
    // Host 2 holds copies of these keys now; freeze it past failure detection (1.5 s) and
    // lease, while writers go on through the others.
    let frozen = 2;
    let pid = store.hosts[frozen].pid().unwrap();
    store.hosts[frozen].signal(libc::SIGSTOP);
    let others: Vec<String> = svrs[..2].to_vec();
    wait_settled(&c, &others, 1, || store.outputs());
    // New clients, with the map without the frozen host: a frozen host's kernel still
    // acknowledges TCP, so a request an older client routed to it would wait for its whole
    // request_timeout_ms (a client-side limit, not the subject here).
    let c = client(&svrs[0], 30_000);
    let load = Load::start(&svrs[0], ns_name, &all, first, 2);
    // Every key gets a value the frozen host never saw.
    let mut acked = write_all(&c, ns_name, &all);
    store.hosts[frozen].signal(libc::SIGCONT);
    let thawed = Instant::now();
    wait_settled(&c, &svrs, 1, || store.outputs());
    println!(
        "thawed host a member again {} ms after SIGCONT",
        thawed.elapsed().as_millis()
    );
    let (during, errors) = load.stop();
    assert!(
        errors.is_empty(),
        "writers failed: {:?}\n{}",
        &errors[..errors.len().min(5)],
        store.outputs()
    );
    assert!(
        store.hosts[frozen].running() && store.hosts[frozen].pid() == Some(pid),
        "the thawed host exited instead of rejoining\n{}",
        store.hosts[frozen].output()
    );
    let log = store.hosts[frozen].log();
    assert!(
        log.contains("rejoining in-process as a new, empty member"),
        "the thawed host does not say it rejoins\n{}",
        store.hosts[frozen].output()
    );
    // No acknowledged write lost (the writers' and the overwrite's newest).
    for (k, v) in during {
        let e = acked.entry(k).or_insert(v);
        if v.1 > e.1 {
            *e = v;
        }
    }
    check_all(&c, ns_name, &acked);
    // Through the returned host (its own primaries, relays for the rest): never the stale
    // value it held before the freeze (step 0 of the first `write_all`, version 1).
    let ns = c.namespace(ns_name).unwrap();
    let mut raw = Raw::hello_to(svrs[frozen].parse().unwrap());
    let mut stale = Vec::new();
    for (i, k) in all.iter().enumerate() {
        let req = Request::Read {
            key: Key {
                ns: ns.id(),
                key: k.as_bytes().to_vec(),
            },
        };
        raw.send(i as u32 + 10, &req, b"");
        let (_, archive, _) = raw.try_recv_frame().expect("an answer");
        match common::raw::decode(&archive) {
            Response::Value { meta, .. } if meta.version >= acked[k].1 => {}
            other => stale.push((k.clone(), other)),
        }
    }
    assert!(
        stale.is_empty(),
        "the returned host answered {} keys with an old value or an error, e.g. {:?}",
        stale.len(),
        &stale[..stale.len().min(5)]
    );
}

/// A UDP "name server" on `addr` that reads every query and answers none: a resolver that
/// hangs. Counts the queries it swallowed.
struct BlackHole {
    queries: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl BlackHole {
    fn start(addr: &str) -> BlackHole {
        let s = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let queries = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (q, st) = (queries.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !st.load(Ordering::Relaxed) {
                if s.recv_from(&mut buf).is_ok() {
                    q.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        BlackHole { queries, stop }
    }
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Issue 11: the control plane resolved the names in `hosts` on its own thread, so a slow
/// name server stalled Raft ticks and lease renewals. One host of three runs in a mount
/// namespace whose /etc/resolv.conf names a server that swallows every query (each lookup
/// hangs 5 s), with a name among its `hosts`. Its leases never lapse: every write sent
/// straight to its primaries, round after round through several hung lookups, is
/// acknowledged on its first try.
#[test]
fn a_hanging_name_server_delays_no_lease() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || which("unshare").is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "this test needs root and unshare(1) (util-linux) under CI"
        );
        eprintln!("skipped: needs root and unshare(1)");
        return;
    }
    let dns = "127.0.0.77:53";
    let hole = BlackHole::start(dns);
    let dir = tempfile::tempdir().unwrap();
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(
        &resolv,
        "nameserver 127.0.0.77\noptions timeout:5 attempts:1\n",
    )
    .unwrap();
    let ports = Ports::free();
    let ips: Vec<String> = (191..194).map(|i| format!("127.0.0.{i}")).collect();
    let slow = 2;
    let hosts: Vec<Host> = ips
        .iter()
        .enumerate()
        .map(|(i, me)| {
            let peers: Vec<String> = ips.iter().filter(|o| *o != me).cloned().collect();
            // Leases of 2 s (a third of it), renewed every 500 ms: far shorter than one hung
            // lookup (5 s), long enough that a busy test machine's scheduling delays cannot
            // make one lapse.
            let detection = ("failure_detection_ms", "6000".to_string());
            if i != slow {
                return Host::spawn(me, &peers, ports, &[detection]);
            }
            // Its seed list starts with a name only the hung server could answer.
            let list = std::iter::once(format!("seed.stategrid.test:{}", ports.mgt))
                .chain(peers.iter().map(|p| format!("{p}:{}", ports.mgt)))
                .collect::<Vec<_>>()
                .join(",");
            let script = "mount --bind \"$0\" /etc/resolv.conf && exec \"$@\"";
            let resolv = resolv.display().to_string();
            Host::spawn_wrapped(
                &[
                    "unshare",
                    "--mount",
                    "--propagation",
                    "private",
                    "sh",
                    "-c",
                    script,
                    &resolv,
                ],
                me,
                &peers,
                ports,
                &[("hosts", list), detection],
            )
        })
        .collect();
    let store = Store::settled(hosts, ports);
    let svrs = store.svr_addrs();
    let c = client(&svrs[0], 30_000);
    let ns_name = "dns";
    let ns = c.namespace(ns_name).unwrap();
    let m = common::store::map(&c).expect("map");
    let all = keys(3000, "d");
    let ks: Vec<String> = keys_on(&m, ns_name, &all, &svrs[slow], 20)
        .into_iter()
        .cloned()
        .collect();
    let mut raw = Raw::hello_to(svrs[slow].parse().unwrap());
    // Until the host serves its primaries (its first lease for the settled map's epoch comes
    // at a renewal, up to 500 ms after the map).
    let serving = Instant::now();
    while !put_all(&mut raw, ns.id(), &ks, b"v").is_empty() {
        assert!(
            serving.elapsed() < Duration::from_secs(30),
            "the slow-resolver host never served its primaries\n{}",
            store.outputs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // 12 s of rounds: lookups are asked every 2 s and each hangs 5 s.
    let start = Instant::now();
    let (mut rounds, mut failures) = (0, Vec::new());
    while start.elapsed() < Duration::from_secs(12) {
        failures.extend(put_all(&mut raw, ns.id(), &ks, b"v"));
        rounds += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    let swallowed = hole.queries.load(Ordering::SeqCst);
    println!(
        "{rounds} rounds of {} writes to the slow-resolver host's primaries, {} not acknowledged; {swallowed} DNS queries swallowed",
        ks.len(),
        failures.len()
    );
    assert!(
        swallowed > 0,
        "the host never asked the hung name server: the test did not test anything\n{}",
        store.hosts[slow].output()
    );
    assert!(
        failures.is_empty(),
        "{} writes to the primaries of the host whose name server hangs were not acknowledged, e.g. {:?}\n{}",
        failures.len(),
        &failures[..failures.len().min(5)],
        store.outputs()
    );
    let log = store.hosts[slow].log();
    assert!(
        !log.contains("is down"),
        "the host with the hung resolver lost sight of its peers\n{}",
        store.hosts[slow].output()
    );
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    })
}

/// A store CA with one certificate for every test host address, and a foreign CA with a
/// certificate for the same addresses: PEM files in a temp dir.
struct ClusterPki {
    dir: tempfile::TempDir,
}

impl ClusterPki {
    fn new(ips: &[String]) -> ClusterPki {
        let dir = tempfile::tempdir().unwrap();
        for (name, ca_name) in [("store", "stategrid store CA"), ("foreign", "another CA")] {
            let (ca, host, host_key) = common::pki::make_pki(ca_name, ips);
            let p = dir.path();
            std::fs::write(p.join(format!("{name}-ca.pem")), ca).unwrap();
            std::fs::write(p.join(format!("{name}-cert.pem")), host).unwrap();
            std::fs::write(p.join(format!("{name}-key.pem")), host_key).unwrap();
        }
        ClusterPki { dir }
    }

    /// The `--set`s of a host with `tls_cluster 1` under the store CA, presenting the
    /// certificate `which` ("store" or "foreign") signed.
    fn sets(&self, which: &str) -> Vec<(&'static str, String)> {
        let f = |n: String| self.dir.path().join(n).display().to_string();
        vec![
            ("tls_cluster", "1".to_string()),
            ("tls_ca_file", f("store-ca.pem".into())),
            ("tls_cert_file", f(format!("{which}-cert.pem"))),
            ("tls_key_file", f(format!("{which}-key.pem"))),
        ]
    }
}

/// Issue 10 (mgt_port between hosts over mutual TLS): a 3-host store with `tls_cluster 1`
/// forms and fails a killed host over with no acknowledged write lost; a 4th host whose
/// certificate another CA signed finds the store (SWIM) but cannot complete a handshake, so
/// it never becomes a member.
#[test]
fn a_tls_cluster_store_forms_fails_over_and_refuses_a_foreign_certificate() {
    let ips: Vec<String> = (201..205).map(|i| format!("127.0.0.{i}")).collect();
    let pki = ClusterPki::new(&ips);
    let mut store = Store::start_with(3, 201, |_| pki.sets("store"));
    let svrs = store.svr_addrs();
    let c = client(&svrs[0], 30_000);
    let all = keys(200, "t");
    let acked = write_all(&c, "tls", &all);
    let ports = Ports {
        mgt: store.mgt_port,
        svr: store.svr_port,
        int: store.int_port,
    };
    let mut outsider = Host::spawn(&ips[3], &ips[..3], ports, &pki.sets("foreign"));
    // The store refuses its handshakes (evidence it tried), and it never joins.
    let deadline = Instant::now() + Duration::from_secs(60);
    let refused = |store: &Store| {
        store.hosts.iter().any(|h| {
            let log = h.log();
            log.contains(&format!("from {}:", ips[3]))
                && (log.contains("UnknownIssuer") || log.contains("invalid peer certificate"))
        })
    };
    while !refused(&store) {
        assert!(
            Instant::now() < deadline && outsider.running(),
            "no host of the store logged refusing the outsider's certificate\n{}\n{}",
            store.outputs(),
            outsider.output()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let m = common::store::map(&c).expect("map");
    assert_eq!(
        m.hosts.len(),
        3,
        "the outsider got into the map: {:?}\n{}",
        m.hosts,
        outsider.output()
    );
    let out = std::process::Command::new(common::bin())
        .args([
            "query",
            "--json",
            "--mgt",
            &format!("{}:{}", ips[3], ports.mgt),
        ])
        .output()
        .unwrap();
    let q: serde_json::Value = serde_json::from_slice(&out.stdout).expect("query --json");
    assert_eq!(q["member"], false, "{q}");
    outsider.kill9();
    // Fail over over TLS links.
    store.hosts[2].kill9();
    wait_settled(&c, &svrs[..2], 1, || store.outputs());
    check_all(&c, "tls", &acked);
}
