//! The cross-shard hop, batched: what a request costs when it arrives on a shard that does not
//! own its partition (a naive client's connection, the HTTP API, RESP without cluster routing).
//!
//! One [`HopBatch`] carries every request one shard forwards to another during one ring pass,
//! and comes back with their answers in the same allocation:
//!
//! 1. the origin copies each request frame into the batch for its owner shard (one memcpy of
//!    the frame; no allocation once the pooled batch has grown) and notes where its answer
//!    goes (connection, generation, queue seq, part) and the key's hash;
//! 2. at the end of the pass the origin sends each non-empty batch as one channel message
//!    ([`super::Msg::Hop`]): one message, and at most one eventfd write (glommio writes the
//!    peer's eventfd only when the peer executor is asleep), per destination per pass instead
//!    of per request;
//! 3. the owner serves the requests in order, appending each answer frame to the batch's answer
//!    buffer: no re-validation of the archive (the origin validated these very bytes), no
//!    second hash (the origin's rides along), no allocation;
//! 4. the owner sends the batch back ([`super::Msg::HopBack`]); the origin copies each answer
//!    into its connection's send batch, flushes each connection once, and keeps the batch in its
//!    pool: every buffer is freed (or reused) on the thread that allocated it.
//!
//! Whatever crosses threads is a `Box<HopBatch>`: no `Arc`, no per-request message.

use stategrid_proto::{ArchivedRequest, ErrorCode, ErrorReply, Response, codec, frame};

use super::exec::{Core, VecSink};
use crate::net::AlignedBuf;

/// A batch is sent as soon as its frames reach this many bytes, without waiting for the end
/// of the pass: bounds how much one message carries (a pass over many connections pipelining
/// large writes), so the owner starts early and one batch does not hold megabytes.
pub const HOP_BATCH_BYTES_MAX: usize = 256 << 10;

/// A returned batch whose buffers grew past this many bytes (after large values) is dropped
/// rather than pooled, so one burst does not pin memory for the shard's lifetime.
const HOP_POOLED_BYTES_MAX: usize = 1 << 20;

/// Pooled batches kept per shard: about one per peer in flight each way.
const HOP_POOL_BATCHES_MAX: usize = 16;

/// `answer_end` of a request whose answer comes later (a replicated write waits for its
/// copies; the answer then travels alone, as a [`super::Msg::Reply`]).
const DEFERRED: u32 = u32::MAX;

/// Where a forwarded request's answer goes on the origin shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HopTo {
    pub conn: u32,
    pub generation: u32,
    pub seq: u64,
    pub part: u32,
}

struct HopItem {
    to: HopTo,
    /// The request frame: `frames[frame_start..frame_end]`.
    frame_start: u32,
    frame_end: u32,
    /// The key's hash when the origin validated the archive and hashed its key (a keyed
    /// request); None for a frame the owner validates itself (parts of split requests).
    hash: Option<u64>,
    /// End of this request's answer in `answers` (the previous item's end is its start), or
    /// [`DEFERRED`].
    answer_end: u32,
}

/// Requests from one shard to another, and on the way back their answers.
pub struct HopBatch {
    /// The shard that sent the batch (and gets it back).
    pub origin: usize,
    /// Request frames back to back, each starting 8-aligned (frames are whole multiples of
    /// 8 bytes), so archives are read in place.
    frames: AlignedBuf,
    items: Vec<HopItem>,
    /// Answer frames back to back, filled by the owner.
    answers: Vec<u8>,
}

impl HopBatch {
    pub fn new(origin: usize) -> HopBatch {
        HopBatch {
            origin,
            frames: AlignedBuf::with_capacity(4096),
            items: Vec::with_capacity(64),
            answers: Vec::with_capacity(16 << 10),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Bytes of request frames queued (for [`HOP_BATCH_BYTES_MAX`]).
    pub fn frame_bytes(&self) -> usize {
        self.frames.len()
    }

    /// Queues one request frame. `hash`: the key's hash, given only when the caller validated
    /// `frame`'s archive (`codec::decode_request`) and hashed its key; the owner then trusts
    /// both. HOT PATH: one memcpy of the frame, no allocation once the batch has grown.
    pub fn push(&mut self, to: HopTo, frame: &[u8], hash: Option<u64>) {
        let start = self.frames.len().next_multiple_of(8);
        let end = start + frame.len();
        if end > self.frames.capacity() {
            self.frames
                .reserve_total(end.max(self.frames.capacity().saturating_mul(2)));
        }
        let pad = start - self.frames.len();
        let spare = self.frames.spare_mut();
        spare[..pad].fill(0);
        spare[pad..pad + frame.len()].copy_from_slice(frame);
        self.frames.advance(pad + frame.len());
        self.items.push(HopItem {
            to,
            frame_start: start as u32,
            frame_end: end as u32,
            hash,
            answer_end: DEFERRED,
        });
    }

    /// Serves every request in order on the owner shard: `serve(to, request, hash, value,
    /// request_id, out)` appends the whole answer frame to `out` and returns true, or returns
    /// false when the answer comes later (then `out` must be left as it was).
    ///
    /// HOT PATH, per request: a frame-header parse; no archive validation and no hash when the
    /// origin gave the hash (it validated these bytes); no allocation once `answers` has grown.
    pub fn serve_with(
        &mut self,
        mut serve: impl FnMut(HopTo, &ArchivedRequest, Option<u64>, &[u8], u32, &mut Vec<u8>) -> bool,
    ) {
        let frames = self.frames.as_slice();
        for item in &mut self.items {
            let bytes = &frames[item.frame_start as usize..item.frame_end as usize];
            let answers = &mut self.answers;
            let served = match frame::parse(bytes, usize::MAX) {
                Ok(Some(p)) => {
                    let req = match item.hash {
                        // SAFETY: the origin validated exactly these bytes with
                        // `codec::decode_request` before queueing them (the contract of
                        // `push` with a hash), and they sit at the same 8-byte alignment here.
                        Some(_) => {
                            Ok(unsafe { rkyv::access_unchecked::<ArchivedRequest>(p.archive) })
                        }
                        None => codec::decode_request(p.archive),
                    };
                    match req {
                        Ok(req) => serve(
                            item.to,
                            req,
                            item.hash,
                            p.value,
                            p.header.request_id,
                            answers,
                        ),
                        Err(e) => {
                            let err = Response::Error(ErrorReply::with_message(
                                ErrorCode::InvalidRequest,
                                0,
                                e.to_string(),
                            ));
                            codec::encode_response(answers, p.header.request_id, &err, &[]);
                            true
                        }
                    }
                }
                _ => {
                    let err = Response::Error(ErrorReply::with_message(
                        ErrorCode::Internal,
                        0,
                        "forwarded frame is not whole",
                    ));
                    codec::encode_response(answers, 0, &err, &[]);
                    true
                }
            };
            item.answer_end = if served {
                self.answers.len() as u32
            } else {
                DEFERRED
            };
        }
    }

    /// Serves every request against `core` (no replication): what a shard does for a batch
    /// when none of its partitions is replicated, and what `benches/cross_shard.rs` measures.
    pub fn serve(&mut self, core: &mut Core, now_ms: u64) {
        self.serve_with(|_, req, hash, value, id, out| {
            core.execute_with_hash(req, hash, value, now_ms, id, &mut VecSink(out));
            true
        });
    }

    /// Calls `f` for each request with its answer frame, in order (None: it comes later).
    pub fn for_each_answer(&self, mut f: impl FnMut(HopTo, Option<&[u8]>)) {
        let mut start = 0usize;
        for item in &self.items {
            if item.answer_end == DEFERRED {
                f(item.to, None);
            } else {
                let end = item.answer_end as usize;
                f(item.to, Some(&self.answers[start..end]));
                start = end;
            }
        }
    }

    /// Empties the batch for reuse; false when its buffers grew too large to keep pooled.
    pub fn recycle(&mut self) -> bool {
        self.frames.consume(self.frames.len());
        self.items.clear();
        self.answers.clear();
        self.frames.capacity() <= HOP_POOLED_BYTES_MAX
            && self.answers.capacity() <= HOP_POOLED_BYTES_MAX
    }
}

/// A shard's batches: one being filled per destination, and returned ones for reuse.
pub struct HopLanes {
    me: usize,
    filling: Vec<Option<Box<HopBatch>>>,
    /// Boxed because a batch travels through the mesh channel as a `Box` (a pointer in the
    /// message, not the batch moved): pooling the box reuses it as it came back.
    #[allow(clippy::vec_box)]
    pool: Vec<Box<HopBatch>>,
}

impl HopLanes {
    pub fn new(me: usize, shards: usize) -> HopLanes {
        HopLanes {
            me,
            filling: (0..shards).map(|_| None).collect(),
            pool: Vec::new(),
        }
    }

    /// Queues a request frame for shard `to`; returns the batch when it is full enough to send
    /// now (see [`HOP_BATCH_BYTES_MAX`]).
    pub fn push(
        &mut self,
        to: usize,
        dest: HopTo,
        frame: &[u8],
        hash: Option<u64>,
    ) -> Option<Box<HopBatch>> {
        let me = self.me;
        let pool = &mut self.pool;
        let b = self.filling[to]
            .get_or_insert_with(|| pool.pop().unwrap_or_else(|| Box::new(HopBatch::new(me))));
        b.push(dest, frame, hash);
        if b.frame_bytes() >= HOP_BATCH_BYTES_MAX {
            return self.filling[to].take();
        }
        None
    }

    /// The batch being filled for shard `to`, if any (to send it at the end of a pass).
    pub fn take(&mut self, to: usize) -> Option<Box<HopBatch>> {
        self.filling[to].take()
    }

    /// Is anything queued, not yet sent?
    pub fn pending(&self) -> bool {
        self.filling.iter().any(|b| b.is_some())
    }

    /// Takes a returned batch back into the pool.
    pub fn give_back(&mut self, mut b: Box<HopBatch>) {
        if b.recycle() && self.pool.len() < HOP_POOL_BATCHES_MAX {
            self.pool.push(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stategrid_proto::{Key, Request};

    fn to(seq: u64) -> HopTo {
        HopTo {
            conn: 3,
            generation: 9,
            seq,
            part: 0,
        }
    }

    #[test]
    fn answers_come_back_in_order_with_their_destinations() {
        let mut b = HopBatch::new(1);
        for i in 0..5u32 {
            let mut f = Vec::new();
            let req = Request::Read {
                key: Key {
                    ns: 1,
                    key: format!("k{i}").into_bytes(),
                },
            };
            codec::encode_request(&mut f, 100 + i, &req, b"");
            // Odd ones validated by the owner, even ones trusted.
            b.push(to(i as u64), &f, (i % 2 == 0).then_some(7));
        }
        let mut seen = Vec::new();
        b.serve_with(|_, req, hash, _v, id, out| {
            seen.push((req.name(), hash, id));
            if id == 102 {
                return false; // deferred
            }
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&[0u8; 4]);
            true
        });
        assert_eq!(seen.len(), 5);
        assert_eq!(seen[0].1, Some(7));
        assert_eq!(seen[1].1, None);
        let mut got = Vec::new();
        b.for_each_answer(|t, a| got.push((t.seq, a.map(|a| a[0]))));
        assert_eq!(
            got,
            vec![
                (0, Some(100)),
                (1, Some(101)),
                (2, None),
                (3, Some(103)),
                (4, Some(104))
            ]
        );
        assert!(b.recycle());
        assert!(b.is_empty());
    }

    #[test]
    fn a_bad_frame_is_answered_with_an_error_not_a_panic() {
        let mut b = HopBatch::new(0);
        b.push(to(0), &[1, 2, 3], None);
        b.serve_with(|_, _, _, _, _, _| panic!("not a request"));
        let mut n = 0;
        b.for_each_answer(|_, a| {
            n += 1;
            assert!(a.is_some_and(|a| !a.is_empty()));
        });
        assert_eq!(n, 1);
    }
}
