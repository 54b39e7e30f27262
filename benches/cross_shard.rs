//! The cross-shard hop: what a request costs when it arrives on a shard that does not own its
//! partition. Two glommio executors pinned like the server's shards, connected by the mesh's
//! own channel type (`shared_channel` of [`Msg`]); the code that crosses is the server's:
//! the origin queues request frames with [`HopLanes::push`] (as `Shard::queue_hop` does) and
//! sends the batch as `Msg::Hop`; the owner serves it with [`HopBatch::serve`] (the store's
//! `Core::execute_with_hash`, no re-validation, no second hash) and sends it back as
//! `Msg::HopBack`; the origin reads the answers with [`HopBatch::for_each_answer`] and
//! returns the batch to its pool ([`HopLanes::give_back`]).
//!
//! Not included: the connection's answer queue and send batch on the origin (`fill_slot`,
//! one memcpy per answer) and the ring driver.
//!
//! - `read_1k_round_trip`: one request in flight, a batch of one (a naive client at pipeline 1).
//! - `read_1k_p16_batched`: 16 requests in one batch (a naive client's pipeline of 16 for one
//!   other shard, read in one receive); the figure is per request.
//!
//! `CROSS_SHARD_ITERS=N [CROSS_SHARD_PIPELINE=P] <bench binary>` runs N requests once without
//! criterion and exits: for instruction counts under `valgrind --tool=callgrind` (run two N
//! and take the difference, which cancels the executors' start-up).

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group};
use glommio::channels::shared_channel;
use glommio::{LocalExecutorBuilder, Placement};
use stategrid::config::Config;
use stategrid::server::hop::{HopLanes, HopTo};
use stategrid::server::{Core, Msg};
use stategrid::store::{KeyRef, Store, StoreLimits};
use stategrid_proto::{Key, Request, WriteOpts, codec};

/// CPU time this thread has used: the figure that matters (server CPU per request), and one
/// that idle waiting and other tenants' load on the machine do not inflate as they do wall time.
fn thread_cpu() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// Runs `iters` requests between two shards, `pipeline` per batch; returns the wall time
/// taken and the CPU time both shards used.
fn hops(iters: u64, value_bytes: usize, pipeline: u64) -> (Duration, Duration) {
    let (to_owner, owner_rx) = shared_channel::new_bounded::<Msg>(64);
    let (to_origin, origin_rx) = shared_channel::new_bounded::<Msg>(64);
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let owner = LocalExecutorBuilder::new(Placement::Fixed(1 % cpus))
        .io_memory(512 << 10)
        .spawn(move || async move {
            let rx = owner_rx.connect().await;
            let tx = to_origin.connect().await;
            let mut store = Store::new(StoreLimits::default(), 7);
            store
                .put(
                    KeyRef::new(1, b"session"),
                    &vec![9u8; value_bytes],
                    WriteOpts::default(),
                    0,
                )
                .unwrap();
            let core = Rc::new(RefCell::new(Core::new(
                0,
                1,
                store,
                None,
                Arc::new(Config::default()),
            )));
            let mut cpu_start = None;
            while let Some(msg) = rx.recv().await {
                cpu_start.get_or_insert_with(thread_cpu);
                let Msg::Hop(mut batch) = msg else {
                    panic!("the origin sends only batches")
                };
                batch.serve(&mut core.borrow_mut(), 1);
                if tx.send(Msg::HopBack(batch)).await.is_err() {
                    break;
                }
            }
            cpu_start.map(|s| thread_cpu() - s).unwrap_or_default()
        })
        .unwrap();
    let origin = LocalExecutorBuilder::new(Placement::Fixed(0))
        .io_memory(512 << 10)
        .spawn(move || async move {
            let tx = to_owner.connect().await;
            let rx = origin_rx.connect().await;
            let mut request = Vec::new();
            let key = b"session".to_vec();
            codec::encode_request(
                &mut request,
                1,
                &Request::Read {
                    key: Key {
                        ns: 1,
                        key: key.clone(),
                    },
                },
                b"",
            );
            // The origin validated and hashed the request before routing it.
            let hash = stategrid_proto::key_hash(1, &key);
            let mut lanes = HopLanes::new(1, 2);
            let (start, cpu0) = (Instant::now(), thread_cpu());
            let mut seq = 0u64;
            for _ in 0..iters.div_ceil(pipeline) {
                for _ in 0..pipeline {
                    let to = HopTo {
                        conn: 0,
                        generation: 1,
                        seq,
                        part: 0,
                    };
                    seq += 1;
                    assert!(lanes.push(0, to, &request, Some(hash)).is_none());
                }
                let batch = lanes.take(0).expect("a batch was filled");
                if tx.send(Msg::Hop(batch)).await.is_err() {
                    panic!("owner stopped");
                }
                let Some(Msg::HopBack(batch)) = rx.recv().await else {
                    panic!("the owner answers with the batch")
                };
                let mut answers = 0;
                batch.for_each_answer(|_, a| {
                    assert!(a.expect("answered now").len() > value_bytes);
                    answers += 1;
                });
                assert_eq!(answers, pipeline);
                lanes.give_back(batch);
            }
            (start.elapsed(), thread_cpu() - cpu0)
        })
        .unwrap();
    let (wall, origin_cpu) = origin.join().unwrap();
    let owner_cpu = owner.join().unwrap();
    (wall, origin_cpu + owner_cpu)
}

fn cross_shard(c: &mut Criterion) {
    let mut g = c.benchmark_group("cross_shard_hop_cpu");
    g.sample_size(10).measurement_time(Duration::from_secs(3));
    g.bench_function("read_1k_round_trip", |b| {
        b.iter_custom(|iters| hops(iters, 1024, 1).1)
    });
    g.bench_function("read_1k_p16_batched", |b| {
        b.iter_custom(|iters| hops(iters, 1024, 16).1)
    });
    g.finish();
}

criterion_group!(benches, cross_shard);

fn main() {
    if let Ok(n) = std::env::var("CROSS_SHARD_ITERS") {
        let iters: u64 = n.parse().expect("CROSS_SHARD_ITERS is a number");
        let pipeline: u64 = std::env::var("CROSS_SHARD_PIPELINE")
            .ok()
            .map(|p| p.parse().expect("CROSS_SHARD_PIPELINE is a number"))
            .unwrap_or(1);
        let (wall, cpu) = hops(iters, 1024, pipeline);
        println!(
            "{iters} requests, {pipeline} per batch: {:.0} ns wall, {:.0} ns CPU (both shards) each",
            wall.as_nanos() as f64 / iters as f64,
            cpu.as_nanos() as f64 / iters as f64
        );
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
