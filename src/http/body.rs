//! Response bodies: bytes we built, or a stored value handed over by reference.

use std::rc::Rc;

use bytes::{Buf, Bytes};
use http_body_util::Full;

/// A response body's one chunk. A read's value stays the store's own `Rc<[u8]>` until hyper
/// writes it to the socket (no copy in user space on our side).
pub enum Chunk {
    Bytes(Bytes),
    /// `value[pos..end]`: a stored buffer holds the value and then its content type.
    Value {
        value: Rc<[u8]>,
        pos: usize,
        end: usize,
    },
}

impl Buf for Chunk {
    fn remaining(&self) -> usize {
        match self {
            Chunk::Bytes(b) => b.remaining(),
            Chunk::Value { pos, end, .. } => end - pos,
        }
    }

    fn chunk(&self) -> &[u8] {
        match self {
            Chunk::Bytes(b) => b.chunk(),
            Chunk::Value { value, pos, end } => &value[*pos..*end],
        }
    }

    fn advance(&mut self, n: usize) {
        match self {
            Chunk::Bytes(b) => b.advance(n),
            Chunk::Value { pos, end, .. } => {
                assert!(*pos + n <= *end, "advance past the end of a value");
                *pos += n;
            }
        }
    }
}

/// Every response body of the HTTP services.
pub type Body = Full<Chunk>;

pub fn empty() -> Body {
    Full::new(Chunk::Bytes(Bytes::new()))
}

pub fn bytes(b: impl Into<Bytes>) -> Body {
    Full::new(Chunk::Bytes(b.into()))
}

/// The first `len` bytes of a stored buffer (the value; its content type follows).
pub fn value(v: Rc<[u8]>, len: usize) -> Body {
    assert!(len <= v.len(), "a value's length is within its buffer");
    Full::new(Chunk::Value {
        value: v,
        pos: 0,
        end: len,
    })
}
