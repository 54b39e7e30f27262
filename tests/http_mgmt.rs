//! The management HTTP API (`mgt_http_port`) against real servers (one host, and a 3-host store):
//! probes, the store's hosts, one host, the partition map with replicas, parameters, join and
//! leave; `/metrics` parsed by `prometheus_client`'s OpenMetrics parser (PyPI, in
//! `.test-venvs/http`), whose counters move when requests are made; and the web console loaded
//! in headless Chromium (Debian's `chromium`), with a screenshot in `target/test-artifacts/`.
//!
//! Under `CI=true` a missing venv or Chromium fails the test; elsewhere that part is skipped
//! with a loud note.

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{TestServer, free_port};

fn get(url: &str) -> (u16, String, String) {
    let a = common::http::send("GET", url, &[], None);
    let ct = a.header("content-type").unwrap_or("").to_owned();
    (a.status, ct, a.text())
}

fn python() -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".test-venvs/http/bin/python");
    if p.exists() {
        return Some(p);
    }
    let why = format!(
        "{} is missing: run scripts/install-test-deps.sh",
        p.display()
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{why}");
    }
    eprintln!("SKIPPED (metrics parsing): {why}");
    None
}

/// The metrics text parsed by prometheus_client: sample name -> value.
fn parse_metrics(py: &PathBuf, text: &str) -> serde_json::Value {
    let script = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = {}
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        labels = ",".join('%s="%s"' % kv for kv in sorted(s.labels.items()))
        out[s.name + ("{" + labels + "}" if labels else "")] = s.value
print(json.dumps(out))
"#;
    let mut child = Command::new(py)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client could not parse /metrics:\n{}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn probes_status_map_and_metrics() {
    let (rest, mgt) = (free_port().to_string(), free_port().to_string());
    let s = TestServer::start(&[
        ("rest_port", rest.as_str()),
        ("mgt_http_port", mgt.as_str()),
        ("shards", "2"),
    ]);
    let m = format!("http://127.0.0.1:{mgt}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if ureq::get(&format!("{m}/readyz")).call().is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "/readyz never answered 200");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (st, ct, body) = get(&format!("{m}/healthz"));
    assert_eq!((st, ct.as_str()), (200, "application/json"));
    assert!(body.contains("ok"));

    let (st, _, body) = get(&format!("{m}/api/v1/host"));
    assert_eq!(st, 200);
    let host: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(host["shards"], 2);
    assert_eq!(host["params"]["mgt_http_port"], mgt.as_str());

    let (st, _, body) = get(&format!("{m}/api/v1/map"));
    assert_eq!(st, 200);
    let map: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(map["hosts"].as_array().unwrap().len(), 1);
    let primaries = map["primaries"].as_array().unwrap();
    assert_eq!(primaries.len(), 1024);
    assert!(primaries.iter().all(|p| p == 0));

    assert_eq!(get(&format!("{m}/nothing")).0, 404);
    let r = ureq::post(&format!("{m}/healthz")).call();
    assert!(matches!(r, Err(ureq::Error::Status(405, _))));

    let (st, ct, before) = get(&format!("{m}/metrics"));
    assert_eq!(st, 200);
    assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
    let Some(py) = python() else { return };
    let b = parse_metrics(&py, &before);
    for i in 0..20 {
        let r = ureq::put(&format!("http://127.0.0.1:{rest}/data/m/k{i}")).send_bytes(b"value");
        assert_eq!(r.unwrap().status(), 204);
    }
    // The shards publish their counters at housekeeping (sweep_interval_ms): wait for them.
    let deadline = Instant::now() + Duration::from_secs(20);
    let n = |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_f64()).unwrap_or(0.0);
    let puts = r#"stategrid_operations_total{op="put",result="ok"}"#;
    let put_count = r#"stategrid_http_request_duration_seconds_count{op="put"}"#;
    let a = loop {
        let a = parse_metrics(&py, &get(&format!("{m}/metrics")).2);
        if a["stategrid_objects"] == 20.0
            && n(&a, puts) >= n(&b, puts) + 20.0
            && n(&a, put_count) >= n(&b, put_count) + 20.0
        {
            break a;
        }
        assert!(
            Instant::now() < deadline,
            "objects never reached 20, or the put counters never moved by 20: {b} -> {a}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let req = |v: &serde_json::Value| v["stategrid_requests_total"].as_f64().unwrap();
    assert!(
        req(&a) >= req(&b) + 20.0,
        "requests did not move: {b} -> {a}"
    );
    assert!(a["stategrid_memory_used_bytes"].as_f64().unwrap() > 0.0);
    // By operation and result, and the HTTP latency histogram, summed over both shards (the
    // loop above waited for them to move).
    let inf = r#"stategrid_http_request_duration_seconds_bucket{le="+Inf",op="put"}"#;
    assert_eq!(n(&a, inf), n(&a, put_count), "+Inf bucket = count: {a}");
    assert!(n(&a, r#"stategrid_http_responses_total{code="2xx"}"#) >= 20.0);
    // A miss counts as not_found.
    let r = ureq::get(&format!("http://127.0.0.1:{rest}/data/m/missing")).call();
    assert!(matches!(r, Err(ureq::Error::Status(404, _))));
    let misses = r#"stategrid_operations_total{op="read",result="not_found"}"#;
    let deadline = Instant::now() + Duration::from_secs(20);
    while n(&parse_metrics(&py, &get(&format!("{m}/metrics")).2), misses) < 1.0 {
        assert!(Instant::now() < deadline, "{misses} never counted the miss");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        n(&a, r#"stategrid_partitions{role="primary"}"#),
        1024.0,
        "{a}"
    );
    assert_eq!(n(&a, r#"stategrid_hosts{state="active"}"#), 1.0, "{a}");
    for name in [
        "stategrid_relayed_requests_total",
        "stategrid_forwarded_requests_total",
        "stategrid_replication_pending_writes",
        "stategrid_replication_ack_seconds_count",
        "stategrid_migrations_done_total",
        "stategrid_partitions_moving",
        "stategrid_map_epoch",
        "stategrid_ring_waits_total",
        "stategrid_memory_limit_bytes",
        "stategrid_connections",
        "stategrid_evictions_total",
        "stategrid_expirations_total",
        "stategrid_failover_promotions_total",
        "stategrid_hosts_failed_total",
        "stategrid_migrated_objects_in_total",
        "stategrid_migrated_bytes_in_total",
        "stategrid_migrated_objects_out_total",
        "stategrid_migrated_bytes_out_total",
    ] {
        assert!(a.get(name).is_some(), "{name} missing: {a}");
    }

    // Native and RESP latency by operation, connections by protocol, the rings' counters and
    // glommio's executor counters: each moves when native and RESP clients are served.
    let native = s.blocking_client();
    let ns = native.namespace("m").unwrap();
    let mut resp = common::resp::Conn::open(&s);
    for i in 0..20 {
        ns.read(format!("k{i}")).unwrap();
        assert_eq!(resp.call(&["GET", &format!("k{i}")]), "$-1\r\n");
    }
    let native_reads = r#"stategrid_request_duration_seconds_count{op="read"}"#;
    let resp_ops = r#"stategrid_request_duration_seconds_count{op="redis"}"#;
    let native_conns = r#"stategrid_connections_by_protocol{protocol="native"}"#;
    let resp_conns = r#"stategrid_connections_by_protocol{protocol="resp"}"#;
    let moved = [
        "stategrid_ring_submissions_total",
        "stategrid_ring_completions_total",
        "stategrid_ring_enters_total",
        "stategrid_executor_tasks_total",
        "stategrid_executor_scheduler_runs_total",
    ];
    let deadline = Instant::now() + Duration::from_secs(20);
    let c = loop {
        let c = parse_metrics(&py, &get(&format!("{m}/metrics")).2);
        if n(&c, native_reads) >= n(&a, native_reads) + 20.0
            && n(&c, resp_ops) >= n(&a, resp_ops) + 20.0
            && n(&c, native_conns) >= 1.0
            && n(&c, resp_conns) >= 1.0
            && moved.iter().all(|k| n(&c, k) > n(&a, k))
        {
            break c;
        }
        assert!(
            Instant::now() < deadline,
            "native/RESP latency, connections or ring counters never moved: {a} -> {c}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let inf = r#"stategrid_request_duration_seconds_bucket{le="+Inf",op="read"}"#;
    assert_eq!(n(&c, inf), n(&c, native_reads), "+Inf bucket = count: {c}");
    assert!(n(&c, r#"stategrid_request_duration_seconds_sum{op="read"}"#) > 0.0);
    // The HTTP connections of this test's own requests are sessions too.
    assert!(
        c.get(r#"stategrid_connections_by_protocol{protocol="http"}"#)
            .is_some()
    );
}

/// Any HTTP method, any body; answers with (status, body) whatever the status.
fn send(method: &str, url: &str, body: Option<&str>) -> (u16, String) {
    let json = [("content-type", "application/json")];
    let headers: &[(&str, &str)] = if body.is_some() { &json } else { &[] };
    let a = common::http::send(method, url, headers, body.map(str::as_bytes));
    (a.status, a.text())
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

fn wait_ready(base: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while ureq::get(&format!("{base}/readyz")).call().is_err() {
        assert!(
            Instant::now() < deadline,
            "{base}/readyz never answered 200"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn management_json_api_on_one_host() {
    let (rest, mgt) = (free_port().to_string(), free_port().to_string());
    let _s = TestServer::start(&[
        ("rest_port", rest.as_str()),
        ("mgt_http_port", mgt.as_str()),
        ("shards", "2"),
    ]);
    let m = format!("http://127.0.0.1:{mgt}");
    wait_ready(&m);

    // Bound to loopback by default (mgt_http_interface 127.0.0.1), as ScaleOut's management
    // service is: the kernel's table of listening sockets has this port on 127.0.0.1 only.
    let port_hex = format!("{:04X}", mgt.parse::<u16>().unwrap());
    let listening: Vec<String> = std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (addr, port) = f.get(1)?.split_once(':')?;
            (port == port_hex && f.get(3) == Some(&"0A")).then(|| addr.to_owned())
        })
        .collect();
    assert!(!listening.is_empty(), "no listening socket on {mgt}");
    assert!(
        listening.iter().all(|a| a == "0100007F"),
        "mgt_http_port must listen on 127.0.0.1 only by default: {listening:?}"
    );

    // The store's hosts: what `stategrid query` shows.
    let (st, body) = send("GET", &format!("{m}/api/v1/hosts"), None);
    assert_eq!(st, 200, "{body}");
    let q = json(&body);
    assert_eq!(q["member"], true, "{q}");
    let hosts = q["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 1, "{q}");
    assert_eq!(hosts[0]["state"], "active");
    assert_eq!(hosts[0]["primaries"], 1024);
    let me = q["me"].as_str().unwrap().to_owned();
    assert_eq!(me.len(), 16, "{me}");

    // One host: its query line and `show`'s details, by id and as `self`.
    for id in [me.as_str(), "self"] {
        let (st, body) = send("GET", &format!("{m}/api/v1/hosts/{id}"), None);
        assert_eq!(st, 200, "{body}");
        let h = json(&body);
        assert_eq!(h["id"], me.as_str());
        assert_eq!(h["me"], true);
        assert_eq!(h["details"]["shards"], 2, "{h}");
        assert_eq!(h["details"]["params"]["rest_port"], rest.as_str());
    }
    let (st, body) = send("GET", &format!("{m}/api/v1/hosts/00000000deadbeef"), None);
    assert_eq!(st, 404, "{body}");
    assert_eq!(json(&body)["error"], "NoSuchHost");

    // The map with every copy: one host holds every primary and no replica.
    let (st, body) = send("GET", &format!("{m}/api/v1/map"), None);
    assert_eq!(st, 200);
    let map = json(&body);
    assert_eq!(map["hosts"].as_array().unwrap().len(), 1);
    assert_eq!(map["hosts"][0]["id"], me.as_str());
    assert_eq!(map["hosts"][0]["state"], "active");
    for field in ["primaries", "replicas", "pending"] {
        assert_eq!(map[field].as_array().unwrap().len(), 1024, "{field}");
    }
    assert!(map["primaries"].as_array().unwrap().iter().all(|p| p == 0));
    assert!(
        map["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r.as_array().unwrap().is_empty())
    );

    // Parameters: read; store-wide ones change, others say how to change them.
    let (st, body) = send("GET", &format!("{m}/api/v1/params"), None);
    assert_eq!(st, 200);
    let p = json(&body);
    assert_eq!(p["params"]["mgt_http_port"], mgt.as_str());
    assert!(
        p["store_wide"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n == "max_replicas")
    );
    let url = format!("{m}/api/v1/params/max_replicas");
    let (st, body) = send("PUT", &url, Some(r#"{"value": "2"}"#));
    assert_eq!(st, 200, "{body}");
    assert_eq!(json(&body)["value"], "2");
    let (st, body) = send("PUT", &url, Some(r#"{"value": 9}"#));
    assert_eq!(
        st, 409,
        "an out-of-range value is refused by the host: {body}"
    );
    let (st, body) = send("PUT", &url, Some("not json"));
    assert_eq!(st, 400, "{body}");
    assert_eq!(json(&body)["error"], "BadParameterChange");
    let (st, body) = send(
        "PUT",
        &format!("{m}/api/v1/params/svr_port"),
        Some(r#"{"value": "1"}"#),
    );
    assert_eq!(st, 409, "{body}");
    assert_eq!(json(&body)["error"], "NotSettable");
    let (st, body) = send("PUT", &url, Some(r#"{"value": "1", "scope": "host"}"#));
    assert_eq!(st, 409, "{body}");
    assert_eq!(json(&body)["error"], "NeedsRestart");
    let big = format!(r#"{{"value": "{}"}}"#, "9".repeat(10_000));
    assert_eq!(send("PUT", &url, Some(&big)).0, 413);

    // Join on a member says so; methods are checked.
    let (st, body) = send("POST", &format!("{m}/api/v1/join"), None);
    assert_eq!(st, 200, "{body}");
    assert_eq!(json(&body)["state"], "member");
    assert_eq!(send("GET", &format!("{m}/api/v1/join"), None).0, 405);
    assert_eq!(send("DELETE", &format!("{m}/api/v1/hosts"), None).0, 405);
    assert_eq!(
        send("POST", &format!("{m}/api/v1/params/max_replicas"), None).0,
        405
    );

    // The console's files are served with their types.
    for (path, ct) in [
        ("/console", "text/html"),
        ("/console/app.js", "text/javascript"),
        ("/console/style.css", "text/css"),
    ] {
        let (st, ctype, body) = get(&format!("{m}{path}"));
        assert_eq!(st, 200, "{path}");
        assert!(ctype.starts_with(ct), "{path}: {ctype}");
        assert!(!body.is_empty());
    }
}

/// Chromium from Debian's `chromium` package, or None after saying why (panics under CI).
fn chromium() -> Option<PathBuf> {
    for p in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if std::path::Path::new(p).is_file() {
            return Some(PathBuf::from(p));
        }
    }
    let why = "chromium is not installed: run scripts/install-test-deps.sh";
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{why}");
    }
    eprintln!("\n!!! SKIPPED (console in Chromium): {why} !!!\n");
    None
}

/// Headless Chromium on `url`: the DOM after the page's scripts ran, and a screenshot.
fn chromium_dom(chromium: &PathBuf, url: &str, screenshot: &std::path::Path) -> String {
    let profile = tempfile::tempdir().unwrap();
    let common = |cmd: &mut Command| {
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            "--window-size=1200,1500",
            "--virtual-time-budget=8000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .stdin(Stdio::null());
    };
    let mut dump = Command::new(chromium);
    common(&mut dump);
    let out = dump.arg("--dump-dom").arg(url).output().unwrap();
    assert!(
        out.status.success(),
        "chromium --dump-dom failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut shot = Command::new(chromium);
    common(&mut shot);
    let s = shot
        .arg(format!("--screenshot={}", screenshot.display()))
        .arg(url)
        .output()
        .unwrap();
    assert!(
        s.status.success() && screenshot.is_file(),
        "chromium --screenshot failed: {}",
        String::from_utf8_lossy(&s.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn three_host_store_management_api_and_console() {
    let (mgt_http, rest) = (free_port(), free_port());
    let store = common::hosts::Store::start_with(3, 151, |ip| {
        vec![
            ("mgt_http_port", mgt_http.to_string()),
            ("mgt_http_interface", ip.to_owned()),
            ("rest_port", rest.to_string()),
        ]
    });
    let bases: Vec<String> = store
        .hosts
        .iter()
        .map(|h| format!("http://{}:{mgt_http}", h.ip))
        .collect();
    for b in &bases {
        wait_ready(b);
    }

    // Every host lists the three hosts, all active, each holding primaries and replicas.
    let (st, body) = send("GET", &format!("{}/api/v1/hosts", bases[1]), None);
    assert_eq!(st, 200, "{body}");
    let q = json(&body);
    let hosts = q["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 3, "{q}\n{}", store.outputs());
    for h in hosts {
        assert_eq!(h["state"], "active", "{q}");
        assert!(h["primaries"].as_u64().unwrap() > 0, "{q}");
        assert!(h["replicas"].as_u64().unwrap() > 0, "{q}");
    }
    let ids: Vec<String> = hosts
        .iter()
        .map(|h| h["id"].as_str().unwrap().to_owned())
        .collect();
    let me1 = q["me"].as_str().unwrap().to_owned();
    let other = ids.iter().find(|i| **i != me1).unwrap();
    let (st, body) = send("GET", &format!("{}/api/v1/hosts/{other}", bases[1]), None);
    assert_eq!(st, 200, "{body}");
    let h = json(&body);
    assert_eq!(
        (h["me"].clone(), h["answered"].clone()),
        (false.into(), true.into())
    );

    // The map: every partition has a primary and one replica on another host.
    let (st, body) = send("GET", &format!("{}/api/v1/map", bases[2]), None);
    assert_eq!(st, 200);
    let map = json(&body);
    assert_eq!(map["hosts"].as_array().unwrap().len(), 3);
    let prim = map["primaries"].as_array().unwrap();
    let reps = map["replicas"].as_array().unwrap();
    assert_eq!((prim.len(), reps.len()), (1024, 1024));
    for (p, r) in prim.iter().zip(reps) {
        let r = r.as_array().unwrap();
        assert_eq!(r.len(), 1, "{map}");
        assert_ne!(p, &r[0]);
    }
    for i in 0..3u64 {
        assert!(
            prim.iter().any(|p| p.as_u64() == Some(i)),
            "host {i} has no primary"
        );
        assert!(
            reps.iter().any(|r| r[0].as_u64() == Some(i)),
            "host {i} has no replica"
        );
    }

    // A store-wide parameter change, through any host.
    let (st, body) = send(
        "PUT",
        &format!("{}/api/v1/params/max_replicas", bases[0]),
        Some(r#"{"value": "1"}"#),
    );
    assert_eq!(st, 200, "{body}");

    // The console in headless Chromium: no script error, three hosts, 1024 map cells.
    if let Some(chromium) = chromium() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
        std::fs::create_dir_all(&dir).unwrap();
        let shot = dir.join("console-3-hosts.png");
        let _ = std::fs::remove_file(&shot);
        let dom = chromium_dom(&chromium, &format!("{}/console", bases[0]), &shot);
        assert!(
            dom.contains(r#"<pre id="errors" data-count="0"></pre>"#),
            "the console recorded script errors:\n{dom}"
        );
        assert!(
            dom.contains(r#"data-loaded="1""#),
            "the console never loaded:\n{dom}"
        );
        assert_eq!(dom.matches(r#"<tr class="host""#).count(), 3, "{dom}");
        assert_eq!(dom.matches(r#"<div class="cell"#).count(), 1024, "{dom}");
        for id in &ids {
            assert!(dom.contains(id.as_str()), "host {id} is not shown");
        }
        eprintln!("console screenshot: {}", shot.display());
    }

    // Leave through the API: the host's partitions move away; join takes a share back.
    let leaver = &bases[2];
    let (st, body) = send("POST", &format!("{leaver}/api/v1/leave"), None);
    assert_eq!(st, 202, "{body}");
    assert!(json(&body)["partitions_left"].as_u64().is_some(), "{body}");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let q = json(&send("GET", &format!("{}/api/v1/hosts", bases[0]), None).1);
        let left = q["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["addr"].as_str().unwrap().starts_with(&store.hosts[2].ip))
            .cloned()
            .unwrap();
        if left["state"] == "leaving" && left["primaries"] == 0 && left["replicas"] == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the host never finished leaving: {q}\n{}",
            store.outputs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (st, body) = send("POST", &format!("{leaver}/api/v1/join"), None);
    assert_eq!(st, 200, "{body}");
    assert_eq!(json(&body)["state"], "rejoining");
}

/// The failover, failed-host and migration-progress counters move when a host of a 3-host
/// store is killed (`kill -9`): the survivors promote the dead host's partitions' replicas,
/// declare it failed, and stream the lost copies to each other.
#[test]
fn failover_and_migration_metrics_move_when_a_host_of_3_dies() {
    let Some(py) = python() else { return };
    let (mgt_http, rest) = (free_port(), free_port());
    let mut store = common::hosts::Store::start_with(3, 165, |ip| {
        vec![
            ("mgt_http_port", mgt_http.to_string()),
            ("mgt_http_interface", ip.to_owned()),
            ("rest_port", rest.to_string()),
        ]
    });
    let bases: Vec<String> = store
        .hosts
        .iter()
        .map(|h| format!("http://{}:{mgt_http}", h.ip))
        .collect();
    for b in &bases {
        wait_ready(b);
    }
    // Objects in every partition, so the re-created copies have something to stream.
    for i in 0..300 {
        let url = format!("http://{}:{rest}/data/f/k{i}", store.hosts[0].ip);
        let a = common::http::send("PUT", &url, &[], Some(b"some value"));
        assert_eq!(a.status, 204, "{}", a.text());
    }
    let n = |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_f64()).unwrap_or(0.0);
    let scrape = |h: usize| parse_metrics(&py, &get(&format!("{}/metrics", bases[h])).2);
    let before: Vec<serde_json::Value> = (0..2).map(scrape).collect();
    for b in &before {
        assert_eq!(n(b, "stategrid_hosts_failed_total"), 0.0, "{b}");
        assert_eq!(n(b, "stategrid_failover_promotions_total"), 0.0, "{b}");
    }
    store.hosts[2].kill9();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let now: Vec<serde_json::Value> = (0..2).map(scrape).collect();
        let sum = |k: &str| now.iter().map(|v| n(v, k)).sum::<f64>();
        let sum_before = |k: &str| before.iter().map(|v| n(v, k)).sum::<f64>();
        let done = now
            .iter()
            .all(|v| n(v, "stategrid_hosts_failed_total") >= 1.0)
            && sum("stategrid_failover_promotions_total") > 0.0
            && sum("stategrid_migrated_objects_in_total")
                > sum_before("stategrid_migrated_objects_in_total")
            && sum("stategrid_migrated_bytes_out_total")
                > sum_before("stategrid_migrated_bytes_out_total");
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "failover/migration counters never moved after kill -9: {before:?} -> {now:?}\n{}",
            store.outputs()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}
