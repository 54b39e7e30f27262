//! Overlapping the store's cache misses across the requests one ring pass reaps.
//!
//! At 100K objects and more each keyed request takes a few dependent DRAM misses in
//! `Store::find` (control bytes, bucket, entry) and one on its value. Profiled at pipeline 1
//! (RESP GET, 64 connections, one shard), `Store::find` and `Store::string` were 16% of the
//! shard thread, the largest user-space cost. One pass reaps the receives of many connections
//! at once, so before serving a window of them the shard looks up every key they carry, back
//! to back: the lookups are independent, so the CPU runs their misses in parallel, and the
//! requests then find their entries and values in cache. Before, only one connection's own
//! pipeline was looked up ahead, so a pipeline-1 client (one request per receive) got nothing.
//!
//! HOT PATH. Cost per request looked up ahead: a native frame's header parse, archive
//! validation and hash (repeated when it is served), or a RESP command's parse and hash; one
//! table probe whose misses are then hits. No allocation (the RESP parse reuses the shard's
//! scratch). A window holds at most [`WINDOW_KEYS_MAX`] keys, so the lines it brings in are
//! still in cache (L1/L2) when its requests run; a window with a single key is not looked up
//! (nothing to overlap, and its validation would be paid twice).

use std::ops::Range;

use stategrid_proto::{codec, frame, key_hash, partition_of};

use super::conn::{ConnKind, Conns};
use crate::net::{Completion, Op};
use crate::resp::commands;
use crate::resp::parse::{self, Limits, Parsed};
use crate::server::exec::{Core, owner_shard};
use crate::store::KeyRef;

/// Keys one window looks up before its requests are served: 64 lookups bring in about 64 x 5
/// cache lines (20 KiB), well inside L2, and enough misses in flight to fill the memory
/// pipeline.
const WINDOW_KEYS_MAX: usize = 64;

/// The shard's scratch for the RESP parse of a look-ahead (reused: no allocation per pass).
#[derive(Default)]
pub(super) struct Lookahead {
    args: Vec<Range<usize>>,
    scratch: Vec<u8>,
}

/// A key of a window: its namespace, where its bytes are, and its hash.
type WindowKey<'a> = (u32, &'a [u8], u64);

/// Looks up the keys of the receives at the front of `batch`, up to [`WINDOW_KEYS_MAX`] keys;
/// returns how many completions the window covers (at least one).
pub(super) fn lookahead(
    conns: &Conns,
    core: &Core,
    la: &mut Lookahead,
    batch: &[Completion],
) -> usize {
    let mut keys: [WindowKey<'_>; WINDOW_KEYS_MAX] = [(0, &[], 0); WINDOW_KEYS_MAX];
    let mut n = 0;
    let mut covered = 0;
    for c in batch {
        if n == WINDOW_KEYS_MAX {
            break;
        }
        covered += 1;
        if c.token.op() != Some(Op::Recv) || c.result <= 0 {
            continue;
        }
        let Some(conn) = conns
            .get(c.token.slot() as usize)
            .filter(|conn| conn.generation == c.token.generation())
        else {
            continue;
        };
        // Only a connection whose bytes are requests this shard will serve now: not before
        // Hello (or RESP detection), authentication or a link handshake, not ciphertext.
        if conn.tls.is_some()
            || !conn.hello_done
            || conn.role.is_none()
            || conn.denied
            || conn.handoff.is_some()
            || conn.auth.pending()
            || matches!(conn.kind, ConnKind::Outbound(..))
        {
            continue;
        }
        let bytes = conn.rbuf.received(c.result as usize);
        let room = &mut keys[n..];
        n += match conn.resp.as_deref() {
            Some(r) => resp_keys(core, la, bytes, r.session.db, room),
            None => native_keys(core, bytes, conn.frame_max(&core.cfg), room),
        };
    }
    if n > 1 {
        for &(ns, key, h) in &keys[..n] {
            core.store.prefetch(KeyRef::with_hash(ns, key, h));
        }
    }
    covered.max(1)
}

/// The keys of this shard among the whole frames at the front of `buf`, into `out`; returns
/// how many. Costs a validation of each frame's archive and a hash.
fn native_keys<'a>(
    core: &Core,
    buf: &'a [u8],
    frame_max: usize,
    out: &mut [WindowKey<'a>],
) -> usize {
    let (mut n, mut pos) = (0, 0);
    while n < out.len() {
        let Ok(Some(p)) = frame::parse(&buf[pos..], frame_max) else {
            break;
        };
        pos += p.frame_bytes;
        if let Some(key) = codec::decode_request(p.archive).ok().and_then(|r| r.key()) {
            let (ns, k) = (key.ns.to_native(), key.key.as_slice());
            let h = key_hash(ns, k);
            if owner_shard(partition_of(h), core.shards) == core.shard {
                out[n] = (ns, k, h);
                n += 1;
            }
        }
    }
    n
}

/// The keys of this shard among the whole RESP commands at the front of `buf` whose first
/// argument is a key, into `out`; returns how many. `db`: the connection's database (a SELECT
/// in the pipeline only makes later look-ups miss). Inline commands are skipped (their
/// arguments live in the scratch buffer).
fn resp_keys<'a>(
    core: &Core,
    la: &mut Lookahead,
    buf: &'a [u8],
    db: u16,
    out: &mut [WindowKey<'a>],
) -> usize {
    let cfg = &core.cfg;
    let lim = Limits {
        bulk_bytes_max: cfg.object_bytes_max as usize,
        items_max: cfg.resp_multibulk_items_max as usize,
        inline_bytes_max: cfg.resp_inline_bytes_max as usize,
    };
    let ns = stategrid_proto::hash::redis_ns(db);
    let (mut n, mut pos) = (0, 0);
    while n < out.len() {
        let bytes = &buf[pos..];
        let Ok(Parsed::Command {
            consumed,
            inline: false,
        }) = parse::parse(bytes, &lim, &mut la.args, &mut la.scratch)
        else {
            break;
        };
        if la.args.len() >= 2 {
            let mut name = [0u8; 16];
            let raw = &bytes[la.args[0].clone()];
            if raw.len() <= name.len() {
                for (d, c) in name.iter_mut().zip(raw) {
                    *d = c.to_ascii_lowercase();
                }
                if commands::lookup(&name[..raw.len()]).is_some_and(|sp| sp.first == 1) {
                    let key = &bytes[la.args[1].clone()];
                    let h = key_hash(ns, key);
                    if owner_shard(partition_of(h), core.shards) == core.shard {
                        out[n] = (ns, key, h);
                        n += 1;
                    }
                }
            }
        }
        pos += consumed;
    }
    n
}
