//! `GET /metrics` (management port): Prometheus/OpenMetrics text built with
//! `prometheus-client` at scrape time.
//!
//! The numbers are the shards' own plain counters (`Core`, the store), gathered and summed by
//! the same `Stats` request `stategrid show` uses (a message to every shard): nothing on the
//! request path is shared or atomic. A fresh registry per scrape costs a few allocations, once
//! per scrape.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::config::Config;

/// The metrics text for one scrape.
pub fn render(s: &stategrid_proto::Stats, cfg: &Config) -> String {
    let mut reg = Registry::with_prefix("stategrid");
    let gauge = |reg: &mut Registry, name: &str, help: &str, v: u64| {
        let g: Gauge = Gauge::default();
        g.set(v.min(i64::MAX as u64) as i64);
        reg.register(name, help, g);
    };
    let counter = |reg: &mut Registry, name: &str, help: &str, v: u64| {
        let c: Counter = Counter::default();
        c.inc_by(v);
        reg.register(name, help, c);
    };
    gauge(
        &mut reg,
        "objects",
        "Objects stored on this host (primaries and replicas)",
        s.objects,
    );
    gauge(
        &mut reg,
        "memory_used_bytes",
        "Bytes the store accounts to objects (what max_memory limits)",
        s.object_bytes,
    );
    gauge(
        &mut reg,
        "memory_limit_bytes",
        "max_memory: bytes for objects on this host; 0 = unlimited",
        cfg.max_memory_bytes,
    );
    gauge(
        &mut reg,
        "resident_bytes",
        "Resident memory of the process",
        s.resident_bytes,
    );
    gauge(
        &mut reg,
        "connections",
        "Open connections (native clients, host links and HTTP data connections)",
        s.connections,
    );
    gauge(&mut reg, "shards", "Shards (one per core)", s.shards as u64);
    counter(
        &mut reg,
        "requests",
        "Requests served by the shards (native and HTTP)",
        s.requests,
    );
    counter(
        &mut reg,
        "evictions",
        "Objects evicted by the LRU under max_memory",
        s.evictions,
    );
    counter(
        &mut reg,
        "expirations",
        "Objects removed by their timeout",
        s.expirations,
    );
    counter(
        &mut reg,
        "ring_waits",
        "Times a shard's network loop went idle and waited for the kernel",
        s.ring_waits,
    );
    counter(
        &mut reg,
        "uptime_seconds",
        "Seconds since the process started",
        s.uptime_s,
    );
    let mut out = String::new();
    encode(&mut out, &reg).expect("writing to a String cannot fail");
    out
}
