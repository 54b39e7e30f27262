//! Receive and send buffers.

use std::rc::Rc;

use stategrid_proto::codec::value_padding;

/// Largest gather list one sendmsg takes (Linux IOV_MAX).
const IOV_MAX: usize = 1024;

/// A byte buffer whose start is 8-aligned, so rkyv archives inside frames can be validated in
/// place (every frame is a multiple of 8 bytes). Filled at the end, consumed from the front.
pub struct AlignedBuf {
    words: Vec<u64>,
    /// Filled bytes.
    len: usize,
}

impl AlignedBuf {
    pub fn with_capacity(bytes: usize) -> AlignedBuf {
        AlignedBuf {
            words: vec![0u64; bytes.div_ceil(8)],
            len: 0,
        }
    }

    /// Copies `bytes` into a new buffer (used for frames forwarded between shards).
    pub fn from_slice(bytes: &[u8]) -> AlignedBuf {
        let mut b = AlignedBuf::with_capacity(bytes.len());
        b.spare_mut()[..bytes.len()].copy_from_slice(bytes);
        b.len = bytes.len();
        b
    }

    #[inline]
    pub fn capacity(&self) -> usize {
        self.words.len() * 8
    }

    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline]
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the u64 storage is initialised and at least `len` bytes long.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr() as *const u8, self.len) }
    }

    /// The unfilled tail, for a recv to write into.
    #[inline]
    pub fn spare_mut(&mut self) -> &mut [u8] {
        let cap = self.capacity();
        // SAFETY: in bounds of the initialised u64 storage.
        unsafe {
            std::slice::from_raw_parts_mut(
                (self.words.as_mut_ptr() as *mut u8).add(self.len),
                cap - self.len,
            )
        }
    }

    /// The filled bytes and the `n` after them that a completed recv wrote but [`advance`]
    /// has not counted yet: lets a pass look at what arrived before it serves it
    /// (`server/shard/prefetch.rs`). Panics when `n` goes past the capacity.
    ///
    /// [`advance`]: AlignedBuf::advance
    #[inline]
    pub fn received(&self, n: usize) -> &[u8] {
        let end = self.len + n;
        assert!(end <= self.capacity(), "recv wrote past the buffer");
        // SAFETY: in bounds of the u64 storage, which is initialised (zeroed, then written).
        unsafe { std::slice::from_raw_parts(self.words.as_ptr() as *const u8, end) }
    }

    /// Marks `n` more bytes as filled (after a recv wrote them).
    #[inline]
    pub fn advance(&mut self, n: usize) {
        assert!(
            self.len + n <= self.capacity(),
            "recv wrote past the buffer"
        );
        self.len += n;
    }

    /// Drops the first `n` bytes, moving the rest to the start (keeps 8-alignment of frames:
    /// `n` is always a whole number of frames). One memmove of the partial frame, if any.
    pub fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.len);
        if n == self.len {
            self.len = 0;
            return;
        }
        let bytes = self.capacity();
        // SAFETY: both ranges lie in the storage; copy handles the overlap.
        unsafe {
            let base = self.words.as_mut_ptr() as *mut u8;
            debug_assert!(self.len <= bytes);
            std::ptr::copy(base.add(n), base, self.len - n);
        }
        self.len -= n;
    }

    /// Grows the capacity to at least `bytes` (for a frame larger than the buffer).
    pub fn reserve_total(&mut self, bytes: usize) {
        if bytes > self.capacity() {
            self.words.resize(bytes.div_ceil(8), 0);
        }
    }

    /// Shrinks back to `bytes` when empty-ish and much larger (after one huge frame).
    pub fn shrink_to(&mut self, bytes: usize) {
        if self.capacity() > bytes * 4 && self.len <= bytes {
            self.words.truncate(bytes.div_ceil(8));
            self.words.shrink_to_fit();
        }
    }
}

/// A piece of a send batch.
enum Seg {
    /// `bytes[start..end]` of the batch.
    Bytes { start: usize, end: usize },
    /// A stored value, sent from the store's own buffer (no copy in user space).
    Value(Rc<[u8]>),
    /// Zero padding after a value, from a static buffer. Not written into `bytes`: that would
    /// shift every later archive in `bytes` off 8-byte alignment relative to the wire.
    Pad(usize),
}

/// Source of [`Seg::Pad`] bytes.
static ZEROS: [u8; 8] = [0; 8];

impl Seg {
    #[inline]
    fn len(&self) -> usize {
        match self {
            Seg::Bytes { start, end } => end - start,
            Seg::Value(v) => v.len(),
            Seg::Pad(n) => *n,
        }
    }
}

/// Responses queued for one sendmsg: encoded headers and archives in `bytes`, values by
/// reference. A connection has two: one the kernel is sending, one being filled.
pub struct SendBatch {
    bytes: Vec<u8>,
    segs: Vec<Seg>,
    /// Start of the bytes not yet covered by a segment.
    mark: usize,
    value_bytes: usize,
    iov: Vec<libc::iovec>,
    msg: libc::msghdr,
    /// Progress of a partial send: segment index and offset into it.
    sent_seg: usize,
    sent_off: usize,
}

impl Default for SendBatch {
    fn default() -> Self {
        SendBatch {
            bytes: Vec::with_capacity(16 * 1024),
            segs: Vec::with_capacity(64),
            mark: 0,
            value_bytes: 0,
            iov: Vec::with_capacity(64),
            // SAFETY: msghdr is plain old data; all-zero is a valid empty message.
            msg: unsafe { std::mem::zeroed() },
            sent_seg: 0,
            sent_off: 0,
        }
    }
}

impl SendBatch {
    /// Where responses are encoded (`stategrid_proto::codec::encode_head`).
    #[inline]
    pub fn bytes_mut(&mut self) -> &mut Vec<u8> {
        &mut self.bytes
    }

    /// Appends a stored value (and its padding) after the head just encoded. No copy: the
    /// batch holds a reference until the send completes.
    pub fn push_value(&mut self, value: Rc<[u8]>) {
        if value.is_empty() {
            return;
        }
        self.close_bytes();
        let len = value.len();
        self.segs.push(Seg::Value(value));
        self.value_bytes += len;
        let pad = value_padding(len).len();
        if pad > 0 {
            self.segs.push(Seg::Pad(pad));
            self.value_bytes += pad;
        }
        debug_assert_eq!(
            self.bytes.len() % 8,
            0,
            "archives in `bytes` stay 8-aligned"
        );
    }

    /// Appends a stored value with no padding (the Redis protocol's framing has none). No
    /// copy: the batch holds a reference until the send completes.
    pub fn push_value_unpadded(&mut self, value: Rc<[u8]>) {
        if value.is_empty() {
            return;
        }
        self.close_bytes();
        self.value_bytes += value.len();
        self.segs.push(Seg::Value(value));
    }

    fn close_bytes(&mut self) {
        if self.bytes.len() > self.mark {
            self.segs.push(Seg::Bytes {
                start: self.mark,
                end: self.bytes.len(),
            });
            self.mark = self.bytes.len();
        }
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty() && self.segs.is_empty()
    }

    /// Bytes queued (for backpressure).
    pub fn queued_bytes(&self) -> usize {
        self.bytes.len() + self.value_bytes
    }

    /// Calls `f` with every queued piece, in order (for a TLS connection, which encrypts them
    /// instead of sending them). Progress of a partial send is ignored: call it on a batch
    /// not yet sent.
    pub fn for_each_chunk(&mut self, mut f: impl FnMut(&[u8])) {
        self.close_bytes();
        for seg in &self.segs {
            match seg {
                Seg::Bytes { start, end } => f(&self.bytes[*start..*end]),
                Seg::Value(v) => f(v),
                Seg::Pad(n) => f(&ZEROS[..*n]),
            }
        }
    }

    /// Builds the gather list from the current progress and returns the msghdr to submit.
    /// The batch must not change until the send completes.
    pub fn prepare(&mut self) -> *const libc::msghdr {
        self.close_bytes();
        self.iov.clear();
        for (i, seg) in self.segs.iter().enumerate().skip(self.sent_seg) {
            if self.iov.len() == IOV_MAX {
                break;
            }
            let off = if i == self.sent_seg { self.sent_off } else { 0 };
            let (ptr, len) = match seg {
                Seg::Bytes { start, .. } => (self.bytes[*start..].as_ptr(), seg.len()),
                Seg::Value(v) => (v.as_ptr(), v.len()),
                Seg::Pad(n) => (ZEROS.as_ptr(), *n),
            };
            self.iov.push(libc::iovec {
                // SAFETY: off < len for the current segment (advance keeps it so).
                iov_base: unsafe { ptr.add(off) } as *mut libc::c_void,
                iov_len: len - off,
            });
        }
        self.msg.msg_iov = self.iov.as_mut_ptr();
        self.msg.msg_iovlen = self.iov.len();
        &self.msg
    }

    /// Records that the kernel sent `n` bytes. Returns true when the whole batch is sent.
    pub fn advance(&mut self, mut n: usize) -> bool {
        while n > 0 && self.sent_seg < self.segs.len() {
            let len = self.segs[self.sent_seg].len();
            let left = len - self.sent_off;
            if n >= left {
                n -= left;
                self.sent_seg += 1;
                self.sent_off = 0;
            } else {
                self.sent_off += n;
                n = 0;
            }
        }
        assert_eq!(n, 0, "kernel reported more bytes sent than queued");
        self.sent_seg == self.segs.len()
    }

    /// Takes what was queued, for a receiver that is not a socket (a local connection):
    /// the encoded bytes (moved out, no copy) and the values referenced beside them, in order.
    /// The bytes hold each answer's head and archive; a value held by reference is not in
    /// them (its padding neither). Leaves the batch empty.
    pub fn take_parts(&mut self) -> (Vec<u8>, Vec<Rc<[u8]>>) {
        let values = self
            .segs
            .drain(..)
            .filter_map(|s| match s {
                Seg::Value(v) => Some(v),
                _ => None,
            })
            .collect();
        let bytes = std::mem::take(&mut self.bytes);
        self.clear();
        (bytes, values)
    }

    /// Empties the batch for reuse, keeping its capacity (dropping value references).
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.segs.clear();
        self.mark = 0;
        self.value_bytes = 0;
        self.sent_seg = 0;
        self.sent_off = 0;
        // One huge answer should not pin its memory forever.
        if self.bytes.capacity() > 1 << 20 {
            self.bytes.shrink_to(64 * 1024);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_buf_consume_keeps_partial_frame() {
        let mut b = AlignedBuf::with_capacity(64);
        b.spare_mut()[..20].copy_from_slice(&[7u8; 20]);
        b.advance(20);
        b.consume(16);
        assert_eq!(b.as_slice(), &[7u8; 4]);
        assert_eq!(b.as_slice().as_ptr() as usize % 8, 0);
        b.reserve_total(1000);
        assert!(b.capacity() >= 1000);
        assert_eq!(b.as_slice(), &[7u8; 4]);
    }

    #[test]
    fn send_batch_gathers_values_and_handles_partial_sends() {
        let mut s = SendBatch::default();
        s.bytes_mut().extend_from_slice(b"HEAD0000");
        s.push_value(Rc::from(&b"abc"[..]));
        s.bytes_mut().extend_from_slice(b"HEAD1111");
        let msg = s.prepare();
        // SAFETY: msg points into s, which is alive.
        let iovlen = unsafe { (*msg).msg_iovlen };
        assert_eq!(iovlen, 4, "head, value, padding, head");
        assert_eq!(
            s.bytes.len() % 8,
            0,
            "padding stays out of the archive bytes"
        );
        let total = 8 + 3 + 5 + 8;
        assert_eq!(s.queued_bytes(), total);
        assert!(!s.advance(9)); // header + 1 byte of the value
        s.prepare();
        assert_eq!(s.iov.len(), 3, "rest of the value, padding, head");
        assert_eq!(s.iov[0].iov_len, 2);
        assert!(s.advance(total - 9));
        s.clear();
        assert!(s.is_empty());
    }
}
