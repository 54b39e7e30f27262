//! One shard's operational counters for `GET /metrics`: plain numbers the shard adds to on its
//! own thread, published to a per-shard slot of [`MetricsBoard`] at housekeeping (every
//! `sweep_interval_ms`), and summed over the slots when Prometheus scrapes.
//!
//! Why not shared atomics: an atomic add is a locked instruction and its cache line bounces
//! between cores when two shards count the same thing; a plain add is one instruction on a
//! line only this thread writes. Why not a message per scrape: the slots cost one short mutex
//! per shard per housekeeping tick, off the request path, and a scrape never waits for a busy
//! shard. The price is staleness of at most one `sweep_interval_ms`.
//!
//! Cost on the request path (`Core::execute`): one match on the request's kind, one on the
//! answer's error code (both jump tables), and one add to a counter in a 21×5 array this shard
//! owns. HTTP requests also read the clock twice (`Instant::now`, a vDSO call of ~20 ns) and
//! add to one histogram bucket; replicated writes read it twice as well (their round trip to a
//! replica costs tens of microseconds, so the clock is noise there).
//!
//! Native and RESP latency costs nothing per request: the ring pass reads the clock twice
//! (after reaping its completions, and after handing the answers to the kernel), and at the
//! end of the pass every request it executed is put in the bucket of that pass's duration
//! (`observe_pass`: 21 subtractions against a snapshot of the per-operation totals taken at
//! the start of the pass). That is the time the server held the request: answers leave in one
//! `io_uring_enter` at the end of the pass, so no request of the pass was answered earlier.
//! Requests served for another shard (a hop batch, a forwarded request) are timed the same way
//! per message on the shard that serves them.

use std::sync::Mutex;

use stategrid_proto::{ArchivedRequest, ErrorCode};

/// Request kinds, as the `op` label of `stategrid_requests_total`.
pub const OPS: [&str; 21] = [
    "read",
    "read_and_lock",
    "add",
    "put",
    "update",
    "update_if_version",
    "update_and_unlock",
    "unlock",
    "refresh_lock",
    "remove",
    "touch",
    "meta",
    "list_keys",
    "multi_read",
    "bulk_put",
    "ns_open",
    "ns_list",
    "ns_clear",
    "ns_count",
    "redis",
    "other",
];

/// Answer classes, as the `result` label.
pub const RESULTS: [&str; 5] = ["ok", "not_found", "conflict", "refused", "error"];

/// Upper bounds of the latency histograms' buckets, in microseconds (the last bucket is +Inf).
pub const LATENCY_BOUNDS_US: [u64; 14] = [
    25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
];

/// HTTP data API operations, as the `op` label of `stategrid_http_request_duration_seconds`.
pub const HTTP_OPS: [&str; 6] = ["get", "head", "put", "delete", "post", "other"];

/// Connection protocols, as the `protocol` label of `stategrid_connections_by_protocol`:
/// native and RESP clients on the client ports, HTTP (data and management API sessions), and
/// host-to-host links accepted on `int_port` (`host_in`) or opened by this host (`host_out`).
pub const PROTOCOLS: [&str; 5] = ["native", "resp", "http", "host_in", "host_out"];

/// The shard's socket ring (`net::Ring`), counted by the ring itself: plain adds, one per
/// `io_uring_enter` and per reap, not per request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingCounters {
    /// SQEs handed to the kernel.
    pub submissions: u64,
    /// CQEs reaped.
    pub completions: u64,
    /// `io_uring_enter` calls (each pass makes one or two; a full SQ one more).
    pub enters: u64,
}

/// [`OPS`] indexes of the RESP front's direct path (which has no native request).
pub const OP_META: usize = 11;
pub const OP_REDIS: usize = 19;

/// The index of a request's kind in [`OPS`]. A jump table.
#[inline]
pub fn op_index(req: &ArchivedRequest) -> usize {
    match req {
        ArchivedRequest::Read { .. } => 0,
        ArchivedRequest::ReadAndLock { .. } => 1,
        ArchivedRequest::Add { .. } => 2,
        ArchivedRequest::Put { .. } => 3,
        ArchivedRequest::Update { .. } => 4,
        ArchivedRequest::UpdateIfVersion { .. } => 5,
        ArchivedRequest::UpdateAndUnlock { .. } => 6,
        ArchivedRequest::Unlock { .. } => 7,
        ArchivedRequest::RefreshLock { .. } => 8,
        ArchivedRequest::Remove { .. } => 9,
        ArchivedRequest::Touch { .. } => 10,
        ArchivedRequest::Meta { .. } => OP_META,
        ArchivedRequest::ListKeys { .. } | ArchivedRequest::ListKeysOfKind { .. } => 12,
        ArchivedRequest::MultiRead { .. } => 13,
        ArchivedRequest::BulkPut { .. } => 14,
        ArchivedRequest::NsOpen { .. } => 15,
        ArchivedRequest::NsList => 16,
        ArchivedRequest::NsClear { .. } => 17,
        ArchivedRequest::NsCount { .. } => 18,
        ArchivedRequest::Redis { .. } => OP_REDIS,
        _ => 20,
    }
}

/// The index of an answer's class in [`RESULTS`] (`None`: success).
#[inline]
pub fn result_index(code: Option<ErrorCode>) -> usize {
    match code {
        None => 0,
        Some(ErrorCode::NotFound) => 1,
        Some(
            ErrorCode::AlreadyExists
            | ErrorCode::Locked
            | ErrorCode::LockLost
            | ErrorCode::VersionMismatch
            | ErrorCode::WrongType,
        ) => 2,
        Some(
            ErrorCode::LowMemory
            | ErrorCode::ObjectTooLarge
            | ErrorCode::KeyTooLong
            | ErrorCode::TooManyItems
            | ErrorCode::TooManyInFlight
            | ErrorCode::TooManyConnections
            | ErrorCode::ShuttingDown
            | ErrorCode::NotJoined
            | ErrorCode::NotPrimary
            | ErrorCode::StaleEpoch,
        ) => 3,
        Some(_) => 4,
    }
}

/// A latency histogram with the buckets of [`LATENCY_BOUNDS_US`] (not cumulative here;
/// the scrape makes them cumulative).
#[derive(Clone, Copy, Debug, Default)]
pub struct Histogram {
    pub buckets: [u64; LATENCY_BOUNDS_US.len() + 1],
    pub sum_us: u64,
    pub count: u64,
}

impl Histogram {
    /// Cost: a scan of at most 14 bounds and three adds.
    #[inline]
    pub fn observe_us(&mut self, us: u64) {
        self.observe_n(us, 1);
    }

    /// `n` observations of `us` each (every request of one ring pass).
    #[inline]
    pub fn observe_n(&mut self, us: u64, n: u64) {
        let i = LATENCY_BOUNDS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(LATENCY_BOUNDS_US.len());
        self.buckets[i] += n;
        self.sum_us += us * n;
        self.count += n;
    }

    pub fn add(&mut self, o: &Histogram) {
        for (a, b) in self.buckets.iter_mut().zip(o.buckets.iter()) {
            *a += b;
        }
        self.sum_us += o.sum_us;
        self.count += o.count;
    }
}

/// One shard's counters (see the module doc). Counters only grow; gauges are set when
/// published.
#[derive(Clone, Debug, Default)]
pub struct ShardMetrics {
    /// Requests executed on this shard, by [`OPS`] and [`RESULTS`] (native, RESP turned into
    /// native requests, and HTTP; a forwarded request counts on the shard that served it).
    pub requests: [[u64; RESULTS.len()]; OPS.len()],
    /// HTTP data API answers by status class (index 0 = 1xx ... 4 = 5xx).
    pub http_responses: [u64; 5],
    /// HTTP data API request durations (request parsed to answer ready), by [`HTTP_OPS`].
    pub http_latency: [Histogram; HTTP_OPS.len()],
    /// Client requests relayed to the partition's primary on another host.
    pub relayed_requests: u64,
    /// Writes that waited for replicas.
    pub replicated_writes: u64,
    /// Of those, the ones answered with an error (a replica did not confirm in time).
    pub replication_failures: u64,
    /// Changes in doubt (failed) sent again to the copies that had not confirmed them.
    pub replication_resends: u64,
    /// Time from applying a write to the last replica's confirmation.
    pub replication_ack: Histogram,
    /// Partition moves this host finished receiving.
    pub migrations_done: u64,
    /// Gauge: writes waiting for their replicas now.
    pub replication_pending: u64,
    /// Gauge: partitions this shard is receiving now.
    pub migrations_incoming: u64,
    /// Gauge: partitions this shard is streaming to a new copy now.
    pub migrations_outgoing: u64,
    /// Native and RESP requests served in this shard's ring passes, by [`OPS`]: see the module
    /// doc (a pass's duration, measured twice per pass).
    pub request_latency: [Histogram; OPS.len()],
    /// Gauge: open connections by [`PROTOCOLS`] (counted at publish, off the request path).
    pub connections: [u64; PROTOCOLS.len()],
    /// The socket ring's counters (copied at publish).
    pub ring: RingCounters,
    /// glommio's executor: tasks run and scheduler loops (taken from
    /// `executor_stats()`, which resets them, and added here at publish).
    pub executor_tasks: u64,
    pub executor_scheduler_runs: u64,
    /// Objects and value bytes this shard installed from migration streams (new copies of
    /// partitions it receives), and streamed out to new copies.
    pub migrated_in_objects: u64,
    pub migrated_in_bytes: u64,
    pub migrated_out_objects: u64,
    pub migrated_out_bytes: u64,
}

impl ShardMetrics {
    /// Counts one executed request.
    #[inline]
    pub fn count(&mut self, op: usize, code: Option<ErrorCode>) {
        self.requests[op][result_index(code)] += 1;
    }

    /// Counts one HTTP data API answer.
    #[inline]
    pub fn http(&mut self, op: usize, status: u16, us: u64) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.http_responses[class] += 1;
        self.http_latency[op.min(HTTP_OPS.len() - 1)].observe_us(us);
    }

    /// Requests executed so far per operation (every result): the snapshot a ring pass takes
    /// before it handles its completions. Cost: 105 adds, once per pass.
    #[inline]
    pub fn op_totals(&self) -> [u64; OPS.len()] {
        std::array::from_fn(|op| self.requests[op].iter().sum())
    }

    /// Puts every request executed since `before` (an [`op_totals`](Self::op_totals) snapshot)
    /// in the latency bucket of `us`, the pass's duration.
    #[inline]
    pub fn observe_pass(&mut self, before: &[u64; OPS.len()], us: u64) {
        for (op, was) in before.iter().enumerate() {
            let n = self.requests[op].iter().sum::<u64>() - was;
            if n > 0 {
                self.request_latency[op].observe_n(us, n);
            }
        }
    }

    /// Adds another shard's numbers (at scrape time).
    pub fn add(&mut self, o: &ShardMetrics) {
        for (a, b) in self.requests.iter_mut().zip(o.requests.iter()) {
            for (x, y) in a.iter_mut().zip(b.iter()) {
                *x += y;
            }
        }
        for (a, b) in self.http_responses.iter_mut().zip(o.http_responses.iter()) {
            *a += b;
        }
        for (a, b) in self.http_latency.iter_mut().zip(o.http_latency.iter()) {
            a.add(b);
        }
        self.relayed_requests += o.relayed_requests;
        self.replicated_writes += o.replicated_writes;
        self.replication_failures += o.replication_failures;
        self.replication_resends += o.replication_resends;
        self.replication_ack.add(&o.replication_ack);
        self.migrations_done += o.migrations_done;
        self.replication_pending += o.replication_pending;
        self.migrations_incoming += o.migrations_incoming;
        self.migrations_outgoing += o.migrations_outgoing;
        for (a, b) in self
            .request_latency
            .iter_mut()
            .zip(o.request_latency.iter())
        {
            a.add(b);
        }
        for (a, b) in self.connections.iter_mut().zip(o.connections.iter()) {
            *a += b;
        }
        self.ring.submissions += o.ring.submissions;
        self.ring.completions += o.ring.completions;
        self.ring.enters += o.ring.enters;
        self.executor_tasks += o.executor_tasks;
        self.executor_scheduler_runs += o.executor_scheduler_runs;
        self.migrated_in_objects += o.migrated_in_objects;
        self.migrated_in_bytes += o.migrated_in_bytes;
        self.migrated_out_objects += o.migrated_out_objects;
        self.migrated_out_bytes += o.migrated_out_bytes;
    }
}

/// The published copies, one slot per shard (in `Shared`).
pub struct MetricsBoard {
    slots: Vec<Mutex<ShardMetrics>>,
}

impl MetricsBoard {
    pub fn new(shards: usize) -> MetricsBoard {
        MetricsBoard {
            slots: (0..shards).map(|_| Mutex::default()).collect(),
        }
    }

    /// Shard `shard` publishes its numbers (housekeeping: one short lock, one copy).
    pub fn publish(&self, shard: usize, m: &ShardMetrics) {
        if let Some(slot) = self.slots.get(shard) {
            slot.lock().unwrap_or_else(|e| e.into_inner()).clone_from(m);
        }
    }

    /// Every shard's last published numbers, summed (at scrape time).
    pub fn sum(&self) -> ShardMetrics {
        let mut total = ShardMetrics::default();
        for s in &self.slots {
            total.add(&s.lock().unwrap_or_else(|e| e.into_inner()));
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_bucket_by_upper_bound_and_sum() {
        let mut h = Histogram::default();
        h.observe_us(25);
        h.observe_us(26);
        h.observe_us(5_000_000);
        assert_eq!(h.buckets[0], 1);
        assert_eq!(h.buckets[1], 1);
        assert_eq!(h.buckets[LATENCY_BOUNDS_US.len()], 1);
        assert_eq!((h.count, h.sum_us), (3, 5_000_051));
    }

    #[test]
    fn the_board_sums_every_shard() {
        let board = MetricsBoard::new(2);
        let mut a = ShardMetrics::default();
        a.count(0, None);
        a.count(0, Some(ErrorCode::NotFound));
        a.http(2, 204, 40);
        let mut b = ShardMetrics::default();
        b.count(0, None);
        b.relayed_requests = 3;
        board.publish(0, &a);
        board.publish(1, &b);
        board.publish(7, &b); // no such shard: ignored
        let s = board.sum();
        assert_eq!(s.requests[0], [2, 1, 0, 0, 0]);
        assert_eq!(s.http_responses, [0, 1, 0, 0, 0]);
        assert_eq!(s.http_latency[2].count, 1);
        assert_eq!(s.relayed_requests, 3);
        assert_eq!(result_index(Some(ErrorCode::VersionMismatch)), 2);
        assert_eq!(result_index(Some(ErrorCode::LowMemory)), 3);
        assert_eq!(result_index(Some(ErrorCode::Internal)), 4);
    }

    #[test]
    fn a_pass_puts_each_request_it_executed_in_its_duration_bucket() {
        let mut m = ShardMetrics::default();
        m.count(0, None);
        let before = m.op_totals();
        m.count(0, None);
        m.count(0, Some(ErrorCode::NotFound));
        m.count(OP_REDIS, None);
        m.observe_pass(&before, 30);
        assert_eq!(m.request_latency[0].count, 2);
        assert_eq!(
            m.request_latency[0].buckets[1], 2,
            "30 us is in the 50 us bucket"
        );
        assert_eq!(m.request_latency[OP_REDIS].sum_us, 30);
        assert_eq!(m.request_latency[1].count, 0);
    }
}
