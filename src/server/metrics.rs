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
        let i = LATENCY_BOUNDS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(LATENCY_BOUNDS_US.len());
        self.buckets[i] += 1;
        self.sum_us += us;
        self.count += 1;
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
        self.replication_ack.add(&o.replication_ack);
        self.migrations_done += o.migrations_done;
        self.replication_pending += o.replication_pending;
        self.migrations_incoming += o.migrations_incoming;
        self.migrations_outgoing += o.migrations_outgoing;
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
}
