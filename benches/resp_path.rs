//! The Redis protocol's request path on the shard that owns the keys: parse a pipeline of 16
//! RESP commands from a receive buffer, execute each against the shard's store, render the
//! replies into a send batch (issue 8's "RESP path" cost, without the socket).
//!
//! Two ways the keyed work reaches the store, measured side by side (same machine, same run):
//! - `direct`: what a RESP connection does for a key its shard serves
//!   (`server/shard/resp_conn.rs`): `Core::execute_redis` on the parsed arguments, the answer
//!   rendered as RESP into the send batch.
//! - `native_request`: what it did before (and still does for a key served elsewhere): the
//!   command is serialized as a native `Request::Redis` frame, the frame found and its archive
//!   validated, then `Core::execute` on the archived request.
//!
//! Store: one shard, 100K string objects of 1 KiB in Redis database 0, read and written in a
//! scattered order. Run quickly with `cargo bench --bench resp_path -- --quick`.

use std::hint::black_box;
use std::ops::Range;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use stategrid::config::Config;
use stategrid::net::{AlignedBuf, SendBatch};
use stategrid::resp::commands::{self, Args, Host, OffShard, Owner, Stamp, Topology};
use stategrid::resp::parse::{self, Limits, Parsed};
use stategrid::resp::{Pending, RespOut, Session, ValRef};
use stategrid::server::{Core, Sink};
use stategrid::store::{KeyRef, Store, StoreLimits, Value};
use stategrid_proto::hash::redis_ns;
use stategrid_proto::{Key, RedisOp, Request, Response, codec, frame};

const OBJECTS: usize = 100_000;
const VALUE_BYTES: usize = 1024;
const PIPELINE: usize = 16;
const NOW_MS: u64 = 1_700_000_000_000;

/// Renders answers as a RESP connection's send batch does (`BatchSink` in server/shard.rs).
struct RespSink<'a>(&'a mut SendBatch, &'a mut RespOut);

impl Sink for RespSink<'_> {
    fn respond(&mut self, _id: u32, resp: &Response, values: &[Value]) {
        let v = values.first().map(ValRef::Stored);
        self.1.render(self.0, resp, v);
    }
}

/// The shard side of one RESP connection, reduced to what GET and SET use.
struct Bench {
    core: Core,
    batch: SendBatch,
    out: RespOut,
    /// `native_request` mode: the reused native frame and key buffers.
    native: bool,
    frame: Vec<u8>,
    key: Vec<u8>,
    topology: Topology,
}

impl Bench {
    fn new(native: bool) -> Bench {
        let cfg = Arc::new(Config::default());
        let mut core = Core::new(0, 1, Store::new(StoreLimits::default(), 1), None, cfg);
        let value = vec![0xA5u8; VALUE_BYTES];
        let mut sink_bytes = Vec::new();
        for i in 0..OBJECTS {
            let key = key_of(i);
            let op = set_op();
            core.execute_redis(
                KeyRef::new(redis_ns(0), &key),
                op,
                &value,
                NOW_MS,
                0,
                &mut stategrid::server::VecSink(&mut sink_bytes),
            );
            sink_bytes.clear();
        }
        Bench {
            core,
            batch: SendBatch::default(),
            out: RespOut::default(),
            native,
            frame: Vec::new(),
            key: Vec::new(),
            topology: Topology::default(),
        }
    }
}

fn set_op() -> RedisOp {
    RedisOp::Set {
        cond: stategrid_proto::SetCond::Always,
        expire: stategrid_proto::SetExpire::Clear,
        get: false,
    }
}

impl Host for Bench {
    fn watch_stamp(&self, _id: u64) -> Option<Stamp> {
        None
    }

    fn clear_watch(&mut self) {}

    // No users: every command is allowed, as on a server without credentials.
    fn role(&self) -> Option<stategrid::auth::users::Role> {
        Some(stategrid::auth::users::Role::Admin)
    }

    fn login(&mut self, _user: Option<&[u8]>, _password: &[u8]) -> Result<(), &'static str> {
        Ok(())
    }

    fn reply(&mut self, bytes: &[u8]) {
        self.batch.bytes_mut().extend_from_slice(bytes);
    }

    fn request(&mut self, _req: &Request, _value: &[u8], _p: Pending) {
        unreachable!("GET and SET send Request::Redis only");
    }

    fn redis(&mut self, ns: u32, key: &[u8], op: RedisOp, value: &[u8], p: Pending) {
        self.out.push(p);
        let mut sink = RespSink(&mut self.batch, &mut self.out);
        if !self.native {
            let k = KeyRef::new(ns, key);
            return self.core.execute_redis(k, op, value, NOW_MS, 0, &mut sink);
        }
        // The former glue: a native request serialized, found and validated, then executed.
        let mut k = std::mem::take(&mut self.key);
        k.clear();
        k.extend_from_slice(key);
        let req = Request::Redis {
            key: Key { ns, key: k },
            op,
        };
        self.frame.clear();
        codec::encode_request(&mut self.frame, 0, &req, value);
        let copy;
        let buf = if (self.frame.as_ptr() as usize) % 8 == 0 {
            &self.frame[..]
        } else {
            copy = AlignedBuf::from_slice(&self.frame);
            copy.as_slice()
        };
        let parsed = frame::parse(buf, usize::MAX)
            .ok()
            .flatten()
            .expect("a frame just encoded parses");
        let archived = codec::decode_request(parsed.archive).expect("valid");
        self.core
            .execute(archived, parsed.value, NOW_MS, 0, &mut sink);
        if let Request::Redis { key, .. } = req {
            self.key = key.key;
        }
    }

    fn close(&mut self) {}
    fn set_resp3(&mut self, _on: bool) {}
    fn cfg(&self) -> &Config {
        &self.core.cfg
    }
    fn now_ms(&self) -> u64 {
        NOW_MS
    }
    fn shards(&self) -> usize {
        1
    }
    fn counters(&self) -> (u64, u64) {
        (1, 0)
    }
    fn uptime_s(&self) -> u64 {
        0
    }
    fn topology(&self) -> Topology {
        self.topology.clone()
    }
    fn owner(&self, _ns: u32, _key: &[u8]) -> Owner {
        Owner::Here
    }
    fn shard_of(&self, _ns: u32, _key: &[u8]) -> usize {
        0
    }
    fn own_shard(&self) -> usize {
        0
    }
    fn stamp_here(&self, _ns: u32, _key: &[u8]) -> Result<Stamp, OffShard> {
        Ok(None)
    }
}

fn key_of(i: usize) -> Vec<u8> {
    format!("key:{i:012}").into_bytes()
}

/// A scattered order over the keys (a fixed xorshift permutation, so runs compare).
fn order() -> Vec<usize> {
    let mut order: Vec<usize> = (0..OBJECTS).collect();
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for i in (1..order.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    order
}

fn multibulk(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// Receive buffers of `PIPELINE` commands each, covering every key once in scattered order.
fn pipelines(set: bool) -> Vec<AlignedBuf> {
    let value = vec![0x5Au8; VALUE_BYTES];
    order()
        .chunks(PIPELINE)
        .map(|chunk| {
            let mut b = Vec::new();
            for &i in chunk {
                let key = key_of(i);
                if set {
                    multibulk(&mut b, &[b"SET", &key, &value]);
                } else {
                    multibulk(&mut b, &[b"GET", &key]);
                }
            }
            AlignedBuf::from_slice(&b)
        })
        .collect()
}

/// Serves one receive buffer as `process_resp` does: parse, execute, render; then empties
/// the send batch as a completed send would.
fn serve(bench: &mut Bench, session: &mut Session, args: &mut Vec<Range<usize>>, rbuf: &[u8]) {
    let lim = Limits {
        bulk_bytes_max: bench.core.cfg.object_bytes_max as usize,
        items_max: bench.core.cfg.resp_multibulk_items_max as usize,
        inline_bytes_max: bench.core.cfg.resp_inline_bytes_max as usize,
    };
    let mut scratch = Vec::new();
    let mut pos = 0;
    while pos < rbuf.len() {
        let bytes = &rbuf[pos..];
        match parse::parse(bytes, &lim, args, &mut scratch) {
            Ok(Parsed::Command { consumed, .. }) => {
                let a = Args {
                    base: bytes,
                    ranges: args,
                };
                commands::execute(session, &a, bench);
                pos += consumed;
            }
            other => panic!("a whole command: {other:?}"),
        }
    }
    black_box(bench.batch.queued_bytes());
    bench.batch.clear();
}

fn resp_path(c: &mut Criterion) {
    let mut g = c.benchmark_group("resp_path");
    g.throughput(Throughput::Elements(PIPELINE as u64));
    for (name, set) in [("get_1k_p16", false), ("set_1k_p16", true)] {
        let bufs = pipelines(set);
        for (mode, native) in [("direct", false), ("native_request", true)] {
            let mut bench = Bench::new(native);
            let mut session = Session::new(1, NOW_MS);
            let mut args = Vec::new();
            let mut next = 0;
            g.bench_function(format!("{name}/{mode}"), |b| {
                b.iter(|| {
                    let rbuf = &bufs[next];
                    next = (next + 1) % bufs.len();
                    serve(&mut bench, &mut session, &mut args, rbuf.as_slice());
                })
            });
            assert_eq!(
                bench.core.requests as usize % PIPELINE,
                0,
                "every command reached the store"
            );
        }
    }
    g.finish();
}

criterion_group!(benches, resp_path);
criterion_main!(benches);
