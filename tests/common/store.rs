//! A store's client-side checks shared by the multi-host tests (processes on loopback, and
//! containers): wait for the map to settle, write with every acknowledgement recorded, and
//! check that every acknowledged write reads back. Never asserts on timing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use stategrid_client::ClientConfig;
use stategrid_client::blocking::Client;
use stategrid_client::proto::{MapInfo, Request, Response};

/// How long a store may take to form, fail over or settle before a test gives up.
pub const SETTLE_TIMEOUT_MS: u64 = 60_000;

/// Per key, the acknowledged write with the highest version: (writer step, version).
pub type Acked = HashMap<String, (u64, u64)>;

pub fn client(addr: &str, request_timeout_ms: u64) -> Client {
    let config = ClientConfig {
        request_timeout_ms,
        connect_timeout_ms: 2_000,
        ..ClientConfig::default()
    };
    let deadline = Instant::now() + Duration::from_millis(SETTLE_TIMEOUT_MS);
    loop {
        match Client::connect(addr, config.clone()) {
            Ok(c) => return c,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("cannot connect to {addr}: {e}"),
        }
    }
}

pub fn map(c: &Client) -> Option<MapInfo> {
    match c.raw_request(&Request::GetMap, &[]) {
        Ok(r) => match r.response {
            Response::Map(m) => Some(m),
            other => panic!("GetMap answered {other:?}"),
        },
        Err(_) => None,
    }
}

/// Waits until the map names exactly `want` hosts (by client address), every partition has a
/// primary and `replicas` full replicas, and nothing is moving. Returns the map.
pub fn wait_settled(
    c: &Client,
    want: &[String],
    replicas: u8,
    diagnostics: impl Fn() -> String,
) -> MapInfo {
    let deadline = Instant::now() + Duration::from_millis(SETTLE_TIMEOUT_MS);
    let mut last = None;
    loop {
        if let Some(m) = map(c) {
            // The active hosts are exactly `want` (a failed host is not listed; one that left
            // is listed, not active).
            let mut names: Vec<&String> = m
                .hosts
                .iter()
                .filter(|h| h.active)
                .map(|h| &h.svr_addr)
                .collect();
            names.sort();
            let mut want_sorted: Vec<&String> = want.iter().collect();
            want_sorted.sort();
            let used: std::collections::HashSet<u16> = m.primaries.iter().copied().collect();
            if names == want_sorted
                && m.primaries.iter().all(|&p| p != u16::MAX)
                && m.moving == 0
                && m.replicas_min >= replicas
                && want_sorted.iter().all(|w| {
                    m.hosts
                        .iter()
                        .position(|h| &h.svr_addr == *w)
                        .is_some_and(|i| used.contains(&(i as u16)))
                })
                && m.primaries
                    .iter()
                    .all(|&p| want.contains(&m.hosts[p as usize].svr_addr))
            {
                return m;
            }
            last = Some(m);
        }
        if Instant::now() > deadline {
            panic!(
                "store did not settle on {want:?} with {replicas} replicas within {SETTLE_TIMEOUT_MS} ms; last map: epoch {:?}, hosts {:?}, moving {:?}, replicas_min {:?}\n{}",
                last.as_ref().map(|m| m.epoch),
                last.as_ref().map(|m| m.hosts.clone()),
                last.as_ref().map(|m| m.moving),
                last.as_ref().map(|m| m.replicas_min),
                diagnostics()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn primaries_per_host(m: &MapInfo) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for &p in &m.primaries {
        *counts
            .entry(m.hosts[p as usize].svr_addr.clone())
            .or_insert(0) += 1;
    }
    counts
}

/// The value written for `key` at writer step `n`: lets a read tell which write it sees.
pub fn value_of(key: &str, n: u64) -> Vec<u8> {
    let mut v = format!("{key}:{n}:").into_bytes();
    v.resize(200, b'x');
    v
}

pub fn step_of(value: &[u8]) -> u64 {
    let s = std::str::from_utf8(value).expect("utf-8 value");
    s.split(':').nth(1).unwrap().parse().unwrap()
}

/// Writes `keys` (each once, step 0) from `threads` threads; returns acked (step, version).
pub fn write_all(c: &Client, ns: &str, keys: &[String]) -> Acked {
    let acked = Mutex::new(HashMap::new());
    let chunks: Vec<&[String]> = keys.chunks(keys.len().div_ceil(4)).collect();
    std::thread::scope(|s| {
        for chunk in chunks {
            let acked = &acked;
            s.spawn(move || {
                let n = c.namespace(ns).unwrap();
                for k in chunk {
                    let v = n
                        .put(k, value_of(k, 0), stategrid_client::WriteOptions::new())
                        .unwrap_or_else(|e| panic!("put {k}: {e}"));
                    acked.lock().unwrap().insert(k.clone(), (0, v));
                }
            });
        }
    });
    acked.into_inner().unwrap()
}

/// Reads every key and checks it shows at least its latest acknowledged write.
pub fn check_all(c: &Client, ns: &str, acked: &Acked) {
    let n = c.namespace(ns).unwrap();
    let mut lost = Vec::new();
    for (k, &(step, version)) in acked {
        match n.read(k) {
            Ok(r) => {
                // Writers race on keys: the newest acknowledged write is the one with the
                // highest version; a read must show it or a newer one.
                let got = step_of(&r.value);
                if r.meta.version < version || (r.meta.version == version && got != step) {
                    lost.push(format!(
                        "{k}: acked step {step} version {version}, read step {got} version {}",
                        r.meta.version
                    ));
                }
            }
            Err(e) => lost.push(format!("{k}: {e}")),
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost, e.g. {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(10)]
    );
}

/// Writers updating random keys of a store until stopped, each recording for every key the
/// acknowledged (step, version) with the highest version. Steps are unique across writers
/// (the writer's index in the high bits), so a read's step names the exact write it shows.
pub struct Load {
    /// What the writers had acknowledged so far (the test may add its own writes).
    pub acked: Arc<Mutex<Acked>>,
    stop: Arc<AtomicBool>,
    errors: Arc<Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    /// `writers` threads, each with its own client of `addr`, over `keys` of namespace `ns`,
    /// starting from what `acked` already holds.
    pub fn start(addr: &str, ns: &str, keys: &[String], acked: Acked, writers: u64) -> Load {
        let acked = Arc::new(Mutex::new(acked));
        let stop = Arc::new(AtomicBool::new(false));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let keys = Arc::new(keys.to_vec());
        let threads = (0..writers)
            .map(|i| {
                let c = client(addr, 10_000);
                let (ns, keys, acked, stop, errors) = (
                    ns.to_string(),
                    keys.clone(),
                    acked.clone(),
                    stop.clone(),
                    errors.clone(),
                );
                std::thread::spawn(move || {
                    let n = c.namespace(&ns).unwrap();
                    let mut x = (0x9E37_79B9 + i) | 1;
                    let mut step = ((i + 1) << 40) + 1;
                    while !stop.load(Ordering::Relaxed) {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let k = &keys[(x % keys.len() as u64) as usize];
                        match n.put(k, value_of(k, step), stategrid_client::WriteOptions::new()) {
                            Ok(v) => {
                                let mut a = acked.lock().unwrap();
                                let e = a.entry(k.clone()).or_insert((0, 0));
                                if v > e.1 {
                                    *e = (step, v);
                                }
                            }
                            Err(e) => errors.lock().unwrap().push(format!("put {k}: {e}")),
                        }
                        step += 1;
                    }
                })
            })
            .collect();
        Load {
            acked,
            stop,
            errors,
            threads,
        }
    }

    /// Stops the writers; returns every acknowledged write and the errors beyond retries.
    pub fn stop(self) -> (Acked, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        let errors = self.errors.lock().unwrap().clone();
        let acked = self.acked.lock().unwrap().clone();
        (acked, errors)
    }
}

/// Up to `n` of `keys` (namespace `ns`) whose primary is the host at `svr_addr` in map `m`.
pub fn keys_on<'a>(
    m: &MapInfo,
    ns: &str,
    keys: &'a [String],
    svr_addr: &str,
    n: usize,
) -> Vec<&'a String> {
    let id = stategrid_client::proto::hash::namespace_id(ns);
    let host = m
        .hosts
        .iter()
        .position(|h| h.svr_addr == svr_addr)
        .unwrap_or_else(|| panic!("{svr_addr} is not in the map")) as u16;
    keys.iter()
        .filter(|k| {
            let p = stategrid_client::proto::partition_of(stategrid_client::proto::key_hash(
                id,
                k.as_bytes(),
            ));
            m.primaries[p as usize] == host
        })
        .take(n)
        .collect()
}

pub fn keys(n: usize, prefix: &str) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i:06}")).collect()
}
