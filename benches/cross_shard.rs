//! The cross-shard hop: what a request costs when it arrives on a shard that does not own its
//! partition. One glommio executor per shard, pinned like the server's; the origin copies the
//! request frame into a message, the owner validates it, executes it against its store and
//! sends the answer frame back. One request in flight, so the figure is the round trip.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use glommio::channels::shared_channel;
use glommio::{LocalExecutorBuilder, Placement};
use stategrid::config::Config;
use stategrid::net::AlignedBuf;
use stategrid::server::{Core, VecSink};
use stategrid::store::{KeyRef, Store, StoreLimits};
use stategrid_proto::{Key, Request, WriteOpts, codec, frame};

/// Runs `iters` round trips between two shards; returns the time they took.
fn hops(iters: u64, value_bytes: usize) -> Duration {
    let (to_owner, owner_rx) = shared_channel::new_bounded::<AlignedBuf>(64);
    let (to_origin, origin_rx) = shared_channel::new_bounded::<Vec<u8>>(64);
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
            let core = Rc::new(RefCell::new(Core {
                shard: 0,
                shards: 1,
                store,
                registry: None,
                cfg: Arc::new(Config::default()),
                requests: 0,
                connections: 0,
                ring_waits: 0,
                serve_allocations: 0,
                primary_partitions: None,
                forwarded_requests: 0,
                handed_off_connections: 0,
                list_host: None,
                cleared: Vec::new(),
                metrics: Default::default(),
            }));
            while let Some(frame_buf) = rx.recv().await {
                let p = frame::parse(frame_buf.as_slice(), usize::MAX)
                    .unwrap()
                    .unwrap();
                let req = codec::decode_request(p.archive).unwrap();
                let mut out = Vec::with_capacity(256 + value_bytes);
                core.borrow_mut().execute(
                    req,
                    p.value,
                    1,
                    p.header.request_id,
                    &mut VecSink(&mut out),
                );
                if tx.send(out).await.is_err() {
                    break;
                }
            }
        })
        .unwrap();
    let origin = LocalExecutorBuilder::new(Placement::Fixed(0))
        .io_memory(512 << 10)
        .spawn(move || async move {
            let tx = to_owner.connect().await;
            let rx = origin_rx.connect().await;
            let mut request = Vec::new();
            codec::encode_request(
                &mut request,
                1,
                &Request::Read {
                    key: Key {
                        ns: 1,
                        key: b"session".to_vec(),
                    },
                },
                b"",
            );
            let start = Instant::now();
            for _ in 0..iters {
                // The origin's copy of the frame into the message, as the server makes it.
                tx.send(AlignedBuf::from_slice(&request))
                    .await
                    .ok()
                    .unwrap();
                let answer = rx.recv().await.unwrap();
                assert!(answer.len() > value_bytes);
            }
            start.elapsed()
        })
        .unwrap();
    let took = origin.join().unwrap();
    owner.join().unwrap();
    took
}

fn cross_shard(c: &mut Criterion) {
    let mut g = c.benchmark_group("cross_shard_hop");
    g.sample_size(10).measurement_time(Duration::from_secs(3));
    g.bench_function("read_1k_round_trip", |b| {
        b.iter_custom(|iters| hops(iters, 1024))
    });
    g.finish();
}

criterion_group!(benches, cross_shard);
criterion_main!(benches);
