//! The management HTTP API (`mgt_http_port`) against a real server: probes, host status, the
//! partition map, and `/metrics` parsed by `prometheus_client`'s OpenMetrics parser (PyPI, in
//! `.test-venvs/http`), whose counters move when requests are made.
//!
//! Under `CI=true` a missing venv fails the test; elsewhere the metrics part is skipped with a
//! note.

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{TestServer, free_port};

fn get(url: &str) -> (u16, String, String) {
    let r = match ureq::get(url).call() {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("GET {url}: {e}"),
    };
    let status = r.status();
    let ct = r.header("content-type").unwrap_or("").to_owned();
    (status, ct, r.into_string().unwrap())
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
        out[s.name] = s.value
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
    let _s = TestServer::start(&[
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
    let a = loop {
        let a = parse_metrics(&py, &get(&format!("{m}/metrics")).2);
        if a["stategrid_objects"] == 20.0 {
            break a;
        }
        assert!(Instant::now() < deadline, "objects never reached 20: {a}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let req = |v: &serde_json::Value| v["stategrid_requests_total"].as_f64().unwrap();
    assert!(
        req(&a) >= req(&b) + 20.0,
        "requests did not move: {b} -> {a}"
    );
    assert!(a["stategrid_memory_used_bytes"].as_f64().unwrap() > 0.0);
    for name in [
        "stategrid_memory_limit_bytes",
        "stategrid_connections",
        "stategrid_evictions_total",
        "stategrid_expirations_total",
    ] {
        assert!(a.get(name).is_some(), "{name} missing: {a}");
    }
}
