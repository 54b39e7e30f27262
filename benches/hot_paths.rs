//! Benchmarks of the paths every request takes. One function per group; add a group by
//! writing its function and listing it in `criterion_group!` at the bottom.
//!
//! - `store/*`: one shard's object store with 100K objects of 1 KiB (hashes precomputed, as
//!   the network layer computes them once to route a request), read and written in a
//!   scattered order; `get_1k_pinned` reads objects that are not on the LRU list.
//! - `store_window/*`: 64 scattered reads served one after another or after looking all 64 up
//!   first, as a ring pass now does for the requests it reaped (`server/shard/prefetch.rs`).
//! - `proto/decode_validate/*`: finding a frame in a receive buffer and validating its rkyv
//!   archive in place, the first thing a shard does with every request.
//!
//! Run quickly with `cargo bench --bench hot_paths -- --quick`.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use stategrid::store::{KeyRef, Store, StoreLimits};
use stategrid_proto::{Key, Request, WriteOpts, decode_request, encode_request, frame, key_hash};

const NS: u32 = 1;
const OBJECTS: usize = 100_000;
const VALUE_BYTES: usize = 1024;
/// The millisecond clock the store benches run at (fixed: no timeouts are set).
const NOW_MS: u64 = 1_700_000_000_000;

/// Session-id-like keys with their hashes, and an access order that jumps around the store the
/// way independent sessions do (a fixed xorshift permutation, so runs compare).
fn keys_and_order() -> (Vec<(Vec<u8>, u64)>, Vec<usize>) {
    let keys: Vec<(Vec<u8>, u64)> = (0..OBJECTS)
        .map(|i| {
            let key = format!("session-{i:012}").into_bytes();
            let hash = key_hash(NS, &key);
            (key, hash)
        })
        .collect();
    let mut order: Vec<usize> = (0..OBJECTS).collect();
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for i in (1..order.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    (keys, order)
}

/// A store holding every key with a 1 KiB value.
fn populated_store(keys: &[(Vec<u8>, u64)], evictable: bool) -> Store {
    let value = vec![0xA5u8; VALUE_BYTES];
    let opts = WriteOpts {
        timeout: None,
        evictable,
        content_type_bytes: 0,
    };
    let mut store = Store::new(StoreLimits::default(), 1);
    for (key, hash) in keys {
        let k = KeyRef::with_hash(NS, key, *hash);
        store
            .put(k, &value, opts, NOW_MS)
            .expect("an unlimited store accepts every put");
    }
    store
}

fn store_hot_paths(c: &mut Criterion) {
    let (keys, order) = keys_and_order();
    let value = vec![0xA5u8; VALUE_BYTES];
    let mut g = c.benchmark_group("store");
    g.throughput(Throughput::Elements(1));

    let mut store = populated_store(&keys, true);
    let mut next = 0;
    g.bench_function("get_1k", |b| {
        b.iter(|| {
            let (key, hash) = &keys[order[next]];
            next = (next + 1) % OBJECTS;
            let read = store.read(KeyRef::with_hash(NS, key, *hash), NOW_MS);
            black_box(read.expect("every key is present"))
        })
    });

    let mut next = 0;
    g.bench_function("put_1k", |b| {
        b.iter(|| {
            let (key, hash) = &keys[order[next]];
            next = (next + 1) % OBJECTS;
            let k = KeyRef::with_hash(NS, key, *hash);
            black_box(store.put(k, black_box(&value), WriteOpts::default(), NOW_MS))
        })
    });
    drop(store);

    // The same reads of objects that are not evictable, so not on the LRU list: the
    // difference from get_1k is what the exact LRU costs a read (moving to the head writes
    // the entry's two neighbours and the old head).
    let mut store = populated_store(&keys, false);
    let mut next = 0;
    g.bench_function("get_1k_pinned", |b| {
        b.iter(|| {
            let (key, hash) = &keys[order[next]];
            next = (next + 1) % OBJECTS;
            let read = store.read(KeyRef::with_hash(NS, key, *hash), NOW_MS);
            black_box(read.expect("every key is present"))
        })
    });
    g.finish();
}

/// Keys a ring pass looks up ahead of serving them (`server/shard/prefetch.rs`'s window).
const WINDOW_KEYS: usize = 64;

/// What the pass's look-ahead buys: a window of 64 reads of scattered keys (as 64 pipeline-1
/// connections bring them in one pass), served one after another (`serial`, what a pass did
/// before) or after `Store::prefetch` of all 64 (`prefetched`, what it does now). Throughput
/// is per read; the difference is the overlap of the DRAM misses (wall time: noisy on a
/// loaded machine, compare within one run).
fn store_window(c: &mut Criterion) {
    let (keys, order) = keys_and_order();
    let mut store = populated_store(&keys, true);
    let mut g = c.benchmark_group("store_window");
    g.throughput(Throughput::Elements(WINDOW_KEYS as u64));
    for prefetched in [false, true] {
        let mut next = 0;
        let name = if prefetched { "prefetched" } else { "serial" };
        g.bench_function(name, |b| {
            b.iter(|| {
                let window: [usize; WINDOW_KEYS] =
                    std::array::from_fn(|i| order[(next + i) % OBJECTS]);
                next = (next + WINDOW_KEYS) % OBJECTS;
                if prefetched {
                    for &i in &window {
                        let (key, hash) = &keys[i];
                        store.prefetch(KeyRef::with_hash(NS, key, *hash));
                    }
                }
                let mut bytes = 0;
                for &i in &window {
                    let (key, hash) = &keys[i];
                    let (_, v) = store
                        .read(KeyRef::with_hash(NS, key, *hash), NOW_MS)
                        .expect("every key is present");
                    // The value's first line, as the send path's refcount bump touches it.
                    bytes += v[0] as usize;
                }
                black_box(bytes)
            })
        });
    }
    g.finish();
}

/// `bytes` copied into 8-aligned storage, as a shard's receive buffer is.
struct AlignedFrame {
    words: Vec<u64>,
    len: usize,
}

impl AlignedFrame {
    fn new(bytes: &[u8]) -> Self {
        let mut words = vec![0u64; bytes.len().div_ceil(8)];
        for (word, chunk) in words.iter_mut().zip(bytes.chunks(8)) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            *word = u64::from_ne_bytes(b);
        }
        AlignedFrame {
            words,
            len: bytes.len(),
        }
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: the u64 storage is initialized and at least `len` bytes long; u8 has no
        // alignment or validity requirements.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.len) }
    }
}

fn proto_hot_paths(c: &mut Criterion) {
    const FRAME_BYTES_MAX: usize = 1 << 20;
    let key = Key {
        ns: NS,
        key: b"session-000000000042".to_vec(),
    };
    let mut read = Vec::new();
    encode_request(&mut read, 1, &Request::Read { key: key.clone() }, &[]);
    let mut put = Vec::new();
    let put_req = Request::Put {
        key,
        opts: WriteOpts::default(),
    };
    encode_request(&mut put, 2, &put_req, &[0xA5; VALUE_BYTES]);

    let mut g = c.benchmark_group("proto");
    g.throughput(Throughput::Elements(1));
    for (name, encoded) in [
        ("decode_validate/read", read),
        ("decode_validate/put_1k", put),
    ] {
        let buf = AlignedFrame::new(&encoded);
        g.bench_function(name, |b| {
            b.iter(|| {
                let parsed = frame::parse(black_box(buf.bytes()), FRAME_BYTES_MAX)
                    .expect("valid header")
                    .expect("whole frame");
                let req = decode_request(parsed.archive).expect("valid archive");
                black_box((req, parsed.value.len()))
            })
        });
    }
    g.finish();
}

// Groups run in this order. Another group (e.g. `cross_shard_hop`) goes in as one more
// function in this list.
criterion_group!(benches, store_hot_paths, store_window, proto_hot_paths);
criterion_main!(benches);
