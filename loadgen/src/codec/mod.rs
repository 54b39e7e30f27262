//! Protocol codecs: one workload, three wire formats.
//!
//! A codec turns one [`Request`] into bytes appended to a send buffer, and turns the bytes at
//! the start of a receive buffer into one reply ([`Parsed::Complete`] with the bytes it used),
//! [`Parsed::Incomplete`] ("receive more"), or a [`ProtocolError`] ("these bytes cannot be
//! trusted": the connection is closed). The three are kept apart as in mini-redis's frame layer:
//! an incomplete reply is normal, a broken one is not.
//!
//! Some workload operations are two wire commands for RESP and memcached (the session cycle's
//! lock + read, write + unlock); the codec sends both back to back and parses both replies as
//! one operation, so latency and counts stay per workload operation across protocols.
//!
//! Replies must come back in request order (Redis and memcached guarantee it). The native
//! protocol echoes a request id, which the caller uses to find the slot even out of order.

pub mod memcache;
pub mod native;
pub mod resp;

use std::fmt;

use crate::workload::OpKind;

pub use memcache::Memcache;
pub use native::Native;
pub use resp::Resp;

/// One operation to encode. Borrowed: encoding allocates nothing once buffers have capacity.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    pub kind: OpKind,
    pub key: &'a [u8],
    /// The value to write (empty for reads).
    pub value: &'a [u8],
    /// Lock token (session operations).
    pub token: u64,
    /// Echoed by the native protocol; ignored by the others.
    pub id: u32,
}

/// A server error, kept small and `Copy` so counting one never allocates: the server's code
/// (native `ErrorCode`, RESP's error line, memcached's error line), cut to 47 bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ServerError {
    len: u8,
    text: [u8; 47],
}

impl ServerError {
    pub fn new(text: &str) -> Self {
        Self::from_bytes(text.as_bytes())
    }

    pub fn from_bytes(text: &[u8]) -> Self {
        let mut out = [0u8; 47];
        // Cut on a char boundary so `as_str` stays valid UTF-8 (errors are rare: the String
        // allocated here is off the hot path).
        let s = String::from_utf8_lossy(&text[..text.len().min(out.len())]);
        let s = s.trim_end_matches('\u{fffd}');
        let mut n = s.len().min(out.len());
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        out[..n].copy_from_slice(&s.as_bytes()[..n]);
        ServerError {
            len: n as u8,
            text: out,
        }
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.text[..self.len as usize]).unwrap_or("?")
    }
}

impl fmt::Debug for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServerError({:?})", self.as_str())
    }
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the server answered one operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Done as asked.
    Ok,
    /// The key does not exist (a read or a session lock of a missing key). Not an error.
    Miss,
    /// The session lock is held by another slot. Not an error: the cycle starts over.
    Busy,
    /// The server refused; counted as an error under this code.
    Error(ServerError),
}

/// One complete reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: Status,
    /// The lock token the server granted (native read-and-lock).
    pub token: Option<u64>,
    /// The request id the server echoed (native only).
    pub id: Option<u32>,
}

impl Reply {
    pub const fn status(status: Status) -> Self {
        Reply {
            status,
            token: None,
            id: None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Not enough bytes for the whole reply yet; nothing was consumed.
    Incomplete,
    /// One reply, which used the first `used` bytes of the buffer.
    Complete { reply: Reply, used: usize },
}

/// Bytes that break the protocol: the stream cannot be resynchronised, so the connection closes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProtocolError(pub String);

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A wire protocol. One instance per worker thread, shared by its connections.
pub trait Codec {
    /// The protocol's name in messages.
    fn name(&self) -> &'static str;

    /// Appends what a new connection sends before any workload request (native: `Hello` and
    /// `NsOpen`; RESP: `PING`; memcached: `version`), so a target that speaks another protocol
    /// is reported at connect time. Returns how many replies to expect.
    fn handshake(&mut self, out: &mut Vec<u8>) -> usize;

    /// Parses one handshake reply: `Ok(Some(used))`, `Ok(None)` for incomplete, or what was
    /// wrong, in words for a person.
    fn parse_handshake(&mut self, buf: &[u8]) -> Result<Option<usize>, String>;

    /// Appends `req`'s bytes to `out`.
    fn encode(&mut self, req: &Request<'_>, out: &mut Vec<u8>);

    /// Parses the reply at the start of `buf` to a request of kind `expect` (the oldest one
    /// outstanding on the connection).
    fn parse(&mut self, buf: &[u8], expect: OpKind) -> Result<Parsed, ProtocolError>;

    /// Makes the next [`Codec::handshake`] ask to be served by shard `shard` of the host
    /// (None: do not ask). Only the native protocol knows shards; the others ignore it.
    fn ask_shard(&mut self, _shard: Option<u32>) {}

    /// After a handshake that asked for a shard: how the server routes keys to shards, when
    /// it said. None for the other protocols and for servers that do not route by shard.
    fn shard_layout(&self) -> Option<ShardLayout> {
        None
    }
}

/// What a shard-aware handshake learned: keys owned by `shard` (of `shards`) are served on
/// the connection without a hop between the server's cores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardLayout {
    /// Shards of the host.
    pub shards: u32,
    /// The shard serving the connection.
    pub shard: u32,
    /// The namespace id keys are hashed with.
    pub ns: u32,
}

/// Appends `n` in decimal. No allocation (`write!` on a Vec would do the same, slower).
#[inline]
pub(crate) fn push_decimal(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    out.extend_from_slice(decimal(&mut digits, n));
}

/// Formats `n` in decimal into `digits`, returning the used tail.
#[inline]
pub(crate) fn decimal(digits: &mut [u8; 20], mut n: u64) -> &[u8] {
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &digits[i..]
}

/// Appends a lock token as 16 lowercase hex digits (a fixed-width client-chosen token).
#[inline]
pub(crate) fn push_token(out: &mut Vec<u8>, token: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut t = [0u8; 16];
    for (i, b) in t.iter_mut().enumerate() {
        *b = HEX[((token >> (60 - 4 * i)) & 0xf) as usize];
    }
    out.extend_from_slice(&t);
}

/// Parses an unsigned decimal; `None` on anything else (empty, sign, overflow).
#[inline]
pub(crate) fn parse_decimal(b: &[u8]) -> Option<u64> {
    if b.is_empty() || b.len() > 19 {
        return None;
    }
    let mut n: u64 = 0;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        n = n * 10 + (c - b'0') as u64;
    }
    Some(n)
}

/// Position of the first `\r\n` in `buf`, if any.
#[inline]
pub(crate) fn find_crlf(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i + 1 < buf.len() {
        match buf[i + 1] {
            b'\n' if buf[i] == b'\r' => return Some(i),
            b'\r' => i += 1,
            _ => i += 2,
        }
    }
    None
}

/// Shows the start of some bytes in a message (protocol errors quote what they saw).
pub(crate) fn quote(buf: &[u8]) -> String {
    let n = buf.len().min(40);
    let mut s = String::from_utf8_lossy(&buf[..n])
        .escape_debug()
        .to_string();
    if buf.len() > n {
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_and_token_formatting() {
        let mut v = Vec::new();
        push_decimal(&mut v, 0);
        v.push(b' ');
        push_decimal(&mut v, 1024);
        v.push(b' ');
        push_decimal(&mut v, u64::MAX);
        assert_eq!(v, b"0 1024 18446744073709551615");
        let mut t = Vec::new();
        push_token(&mut t, 0x0123_4567_89ab_cdef);
        assert_eq!(t, b"0123456789abcdef");
        assert_eq!(parse_decimal(b"1024"), Some(1024));
        assert_eq!(parse_decimal(b""), None);
        assert_eq!(parse_decimal(b"-1"), None);
        assert_eq!(parse_decimal(b"12a"), None);
    }

    #[test]
    fn crlf_search() {
        assert_eq!(find_crlf(b"+OK\r\n"), Some(3));
        assert_eq!(find_crlf(b"\r\n"), Some(0));
        assert_eq!(find_crlf(b"a\r\r\n"), Some(2));
        assert_eq!(find_crlf(b"+OK\r"), None);
        assert_eq!(find_crlf(b"+OK\n"), None);
        assert_eq!(find_crlf(b""), None);
        for n in 0..8 {
            let mut b = vec![b'x'; n];
            b.extend_from_slice(b"\r\n");
            assert_eq!(find_crlf(&b), Some(n));
        }
    }

    #[test]
    fn server_error_is_cut_safely() {
        let e = ServerError::new("ERR unknown command");
        assert_eq!(e.as_str(), "ERR unknown command");
        let long = "é".repeat(40); // 80 bytes of 2-byte chars
        let e = ServerError::new(&long);
        assert!(e.as_str().len() <= 47);
        assert!(e.as_str().chars().all(|c| c == 'é'));
    }
}
