//! `GET /metrics` (management port): Prometheus/OpenMetrics text built with
//! `prometheus-client` at scrape time.
//!
//! Three sources, none of them on the request path:
//! - the `Stats` request `stategrid show` uses (a message to every shard; objects, memory,
//!   connections, totals);
//! - every shard's published [`ShardMetrics`] (plain per-shard counters, published at
//!   housekeeping, summed here; see `server::metrics` for what they cost);
//! - the installed partition map (`Plane::view`): hosts by state, partitions held, copies
//!   still moving.
//!
//! A fresh registry per scrape costs a few allocations, once per scrape.

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::cluster::map::{HostState, Role};
use crate::cluster::plane::View;
use crate::config::Config;
use crate::server::metrics::{
    HTTP_OPS, Histogram, LATENCY_BOUNDS_US, OPS, PROTOCOLS, RESULTS, ShardMetrics,
};

/// Failovers this host saw in the maps it installed (`cluster::plane::FailoverCounters`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Failovers {
    pub promotions: u64,
    pub hosts_failed: u64,
}

/// A labelled family whose values are already known at scrape time (prometheus-client's own
/// `Family` keeps live metrics; these are sums of the shards' published numbers).
#[derive(Debug)]
struct Fixed {
    kind: MetricType,
    rows: Vec<(Vec<(&'static str, String)>, Row)>,
}

#[derive(Debug)]
enum Row {
    Counter(u64),
    Gauge(i64),
    /// Seconds: sum, count, and per-bucket (not cumulative) counts with their upper bounds.
    Histogram(f64, u64, Vec<(f64, u64)>),
}

impl Fixed {
    fn new(kind: MetricType) -> Fixed {
        Fixed {
            kind,
            rows: Vec::new(),
        }
    }

    fn row(mut self, labels: Vec<(&'static str, String)>, row: Row) -> Fixed {
        self.rows.push((labels, row));
        self
    }
}

impl EncodeMetric for Fixed {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (labels, row) in &self.rows {
            // No labels: no family, or the text would carry an empty `{}`.
            if labels.is_empty() {
                encode_row(&mut encoder, row)?;
            } else {
                encode_row(&mut encoder.encode_family(labels)?, row)?;
            }
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        self.kind
    }
}

fn encode_row(e: &mut MetricEncoder, row: &Row) -> Result<(), std::fmt::Error> {
    match row {
        Row::Counter(v) => e.encode_counter::<NoLabelSet, _, u64>(v, None),
        Row::Gauge(v) => e.encode_gauge(v),
        Row::Histogram(sum, count, buckets) => {
            e.encode_histogram::<NoLabelSet>(*sum, *count, buckets, None)
        }
    }
}

fn histogram_row(h: &Histogram) -> Row {
    let mut buckets: Vec<(f64, u64)> = LATENCY_BOUNDS_US
        .iter()
        .zip(h.buckets.iter())
        .map(|(&b, &n)| (b as f64 / 1e6, n))
        .collect();
    buckets.push((f64::MAX, h.buckets[LATENCY_BOUNDS_US.len()]));
    Row::Histogram(h.sum_us as f64 / 1e6, h.count, buckets)
}

/// The metrics text for one scrape.
pub fn render(
    s: &stategrid_proto::Stats,
    m: &ShardMetrics,
    view: Option<&View>,
    failovers: Failovers,
    cfg: &Config,
) -> String {
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
        "Requests served by the shards (native and HTTP), every kind and result",
        s.requests,
    );
    let mut by_op = Fixed::new(MetricType::Counter);
    for (op, row) in OPS.iter().zip(m.requests.iter()) {
        for (result, &n) in RESULTS.iter().zip(row.iter()) {
            if n > 0 {
                by_op = by_op.row(
                    vec![("op", (*op).to_owned()), ("result", (*result).to_owned())],
                    Row::Counter(n),
                );
            }
        }
    }
    reg.register(
        "operations",
        "Requests executed on this host's shards by operation and result (published every sweep_interval_ms)",
        by_op,
    );
    let mut http = Fixed::new(MetricType::Counter);
    for (i, &n) in m.http_responses.iter().enumerate() {
        http = http.row(vec![("code", format!("{}xx", i + 1))], Row::Counter(n));
    }
    reg.register(
        "http_responses",
        "HTTP data API answers by status class",
        http,
    );
    let mut lat = Fixed::new(MetricType::Histogram);
    for (op, h) in HTTP_OPS.iter().zip(m.http_latency.iter()) {
        lat = lat.row(vec![("op", (*op).to_owned())], histogram_row(h));
    }
    reg.register(
        "http_request_duration_seconds",
        "HTTP data API request durations on the server (request parsed to answer ready), by method",
        lat,
    );
    let mut lat = Fixed::new(MetricType::Histogram);
    for (op, h) in OPS.iter().zip(m.request_latency.iter()) {
        if h.count > 0 {
            lat = lat.row(vec![("op", (*op).to_owned())], histogram_row(h));
        }
    }
    reg.register(
        "request_duration_seconds",
        "Native and RESP requests served in a shard's ring pass, by operation: from taking the request off the ring to handing its answer to the kernel (every request of one pass gets that pass's duration)",
        lat,
    );
    let mut conns = Fixed::new(MetricType::Gauge);
    for (p, &n) in PROTOCOLS.iter().zip(m.connections.iter()) {
        conns = conns.row(
            vec![("protocol", (*p).to_owned())],
            Row::Gauge(n.min(i64::MAX as u64) as i64),
        );
    }
    reg.register(
        "connections_by_protocol",
        "Open connections by protocol (native, resp, http sessions, host links in and out; published every sweep_interval_ms)",
        conns,
    );
    counter(
        &mut reg,
        "failover_promotions",
        "Partitions this host took over as primary because their primary had failed",
        failovers.promotions,
    );
    counter(
        &mut reg,
        "hosts_failed",
        "Hosts the store declared failed, as seen in the maps this host installed",
        failovers.hosts_failed,
    );
    counter(
        &mut reg,
        "migrated_objects_in",
        "Objects this host received while pulling partitions (migration streams)",
        m.migrated_in_objects,
    );
    counter(
        &mut reg,
        "migrated_bytes_in",
        "Value bytes this host received while pulling partitions",
        m.migrated_in_bytes,
    );
    counter(
        &mut reg,
        "migrated_objects_out",
        "Objects this host streamed to new copies of its partitions",
        m.migrated_out_objects,
    );
    counter(
        &mut reg,
        "migrated_bytes_out",
        "Value bytes this host streamed to new copies of its partitions",
        m.migrated_out_bytes,
    );
    counter(
        &mut reg,
        "ring_submissions",
        "SQEs the shards' socket rings (io_uring) handed to the kernel",
        m.ring.submissions,
    );
    counter(
        &mut reg,
        "ring_completions",
        "CQEs the shards' socket rings reaped",
        m.ring.completions,
    );
    counter(
        &mut reg,
        "ring_enters",
        "io_uring_enter calls on the shards' socket rings",
        m.ring.enters,
    );
    counter(
        &mut reg,
        "executor_tasks",
        "Tasks glommio's executors ran (its executor_stats)",
        m.executor_tasks,
    );
    counter(
        &mut reg,
        "executor_scheduler_runs",
        "Times glommio's schedulers picked a task queue",
        m.executor_scheduler_runs,
    );
    counter(
        &mut reg,
        "forwarded_requests",
        "Keyed requests a shard sent to the shard that owns their partition",
        s.forwarded_requests,
    );
    counter(
        &mut reg,
        "relayed_requests",
        "Client requests relayed to the partition's primary on another host",
        m.relayed_requests,
    );
    counter(
        &mut reg,
        "replicated_writes",
        "Writes that waited for their replicas before being answered",
        m.replicated_writes,
    );
    counter(
        &mut reg,
        "replication_failures",
        "Replicated writes answered with an error (a replica did not confirm within replication_timeout_ms)",
        m.replication_failures,
    );
    counter(
        &mut reg,
        "replication_resends",
        "Failed changes sent again to the replicas that had not confirmed them (until they do or leave the map)",
        m.replication_resends,
    );
    gauge(
        &mut reg,
        "replication_pending_writes",
        "Writes waiting for their replicas now (the replication queue)",
        m.replication_pending,
    );
    let ack = Fixed::new(MetricType::Histogram).row(Vec::new(), histogram_row(&m.replication_ack));
    reg.register(
        "replication_ack_seconds",
        "Time from applying a write to the last replica's acknowledgement",
        ack,
    );
    counter(
        &mut reg,
        "migrations_done",
        "Partitions this host finished receiving",
        m.migrations_done,
    );
    gauge(
        &mut reg,
        "migrations_incoming",
        "Partitions this host is receiving now",
        m.migrations_incoming,
    );
    gauge(
        &mut reg,
        "migrations_outgoing",
        "Partitions this host is streaming to a new copy now",
        m.migrations_outgoing,
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
        "Times a shard's network loop (io_uring) went idle and waited for the kernel",
        s.ring_waits,
    );
    counter(
        &mut reg,
        "handed_off_connections",
        "Connections handed to the shard their HelloShard asked for",
        s.handed_off_connections,
    );
    counter(
        &mut reg,
        "uptime_seconds",
        "Seconds since the process started",
        s.uptime_s,
    );
    if let Some(v) = view {
        map_metrics(&mut reg, v);
    }
    let mut out = String::new();
    encode(&mut out, &reg).expect("writing to a String cannot fail");
    out
}

/// The installed map as this host sees it: the store's shape, failovers and moves.
fn map_metrics(reg: &mut Registry, v: &View) {
    let epoch: Gauge = Gauge::default();
    epoch.set(v.epoch.min(i64::MAX as u64) as i64);
    reg.register(
        "map_epoch",
        "Epoch of the partition map installed on this host (every change bumps it)",
        epoch,
    );
    let mut hosts = Fixed::new(MetricType::Gauge);
    for (state, name) in [
        (HostState::Joining, "joining"),
        (HostState::Active, "active"),
        (HostState::Leaving, "leaving"),
        (HostState::Failed, "failed"),
    ] {
        let n = v.hosts.iter().filter(|h| h.state == state).count();
        hosts = hosts.row(vec![("state", name.to_owned())], Row::Gauge(n as i64));
    }
    reg.register(
        "hosts",
        "Hosts in the store's map by state (failed: declared dead, its partitions failed over)",
        hosts,
    );
    let (mut primary, mut replica, mut pending, mut moving) = (0i64, 0i64, 0i64, 0i64);
    for o in &v.owners {
        if o.primary() == Some(v.me) {
            primary += 1;
        } else {
            match o.role_of(v.me) {
                Some(Role::Full) => replica += 1,
                Some(Role::Pending) => pending += 1,
                _ => {}
            }
        }
        if o.pending().next().is_some() {
            moving += 1;
        }
    }
    let held = Fixed::new(MetricType::Gauge)
        .row(vec![("role", "primary".into())], Row::Gauge(primary))
        .row(vec![("role", "replica".into())], Row::Gauge(replica))
        .row(vec![("role", "pending".into())], Row::Gauge(pending));
    reg.register(
        "partitions",
        "Partitions this host holds, by role (pending: still receiving it)",
        held,
    );
    let moving_g: Gauge = Gauge::default();
    moving_g.set(moving);
    reg.register(
        "partitions_moving",
        "Partitions of the store with a copy still being migrated",
        moving_g,
    );
}
