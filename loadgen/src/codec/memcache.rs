//! memcached's text protocol.
//!
//! | workload op       | commands (pipelined back to back)                     | ok                  |
//! |-------------------|-------------------------------------------------------|---------------------|
//! | get               | `get key`                                             | `VALUE …` `END`; bare `END` = miss |
//! | put               | `set key 0 0 len` + data                              | `STORED`            |
//! | read-and-lock     | `add lock:key 0 lock_s 16` + token, then `get key`    | `STORED` + value; `NOT_STORED` = busy, `END` = miss |
//! | update-and-unlock | `set key 0 session_s len` + data, then `delete lock:key` | `STORED` + `DELETED`; `NOT_FOUND` = the lock was lost |
//! | session-create    | as update-and-unlock (the lock was taken by read-and-lock) |                 |
//!
//! `add` only stores a missing key, so it is memcached's lock: the nearest equivalent of
//! ReadAndLock's atomic lock-and-read, at the cost of two commands in one round trip. The
//! release does not compare the token (plain memcached cannot compare-and-delete), so this is a
//! lower bound on a memcached session provider's cost. Reads do not slide the expiry (that would
//! be a `touch` per read).

use super::{
    Codec, Parsed, ProtocolError, Reply, Request, ServerError, Status, find_crlf, parse_decimal,
    push_decimal, push_token, quote,
};
use crate::codec::resp::LOCK_PREFIX;
use crate::workload::{OpKind, VALUE_BYTES_MAX};

/// Longest reply line accepted before calling the stream broken.
const LINE_BYTES_MAX: usize = 64 << 10;

pub struct Memcache {
    lock_s: u64,
    /// 0: session writes never expire.
    session_s: u64,
}

impl Memcache {
    pub fn new(lock_s: u64, session_s: u64) -> Self {
        Memcache { lock_s, session_s }
    }
}

/// One reply line (without CRLF) and the bytes it used, or incomplete.
fn line(buf: &[u8]) -> Result<Option<(&[u8], usize)>, ProtocolError> {
    match find_crlf(buf) {
        Some(eol) => Ok(Some((&buf[..eol], eol + 2))),
        None if buf.len() > LINE_BYTES_MAX => Err(ProtocolError(format!(
            "no line end in {LINE_BYTES_MAX} bytes: {}",
            quote(buf)
        ))),
        None => Ok(None),
    }
}

fn is_error(l: &[u8]) -> bool {
    l == b"ERROR" || l.starts_with(b"CLIENT_ERROR") || l.starts_with(b"SERVER_ERROR")
}

fn unexpected(l: &[u8], to: &str) -> ProtocolError {
    ProtocolError(format!("unexpected reply '{}' to {to}", quote(l)))
}

/// What a `get` of one key answered.
#[derive(Debug, PartialEq, Eq)]
enum Got<'a> {
    Value,
    Miss,
    Error(&'a [u8]),
}

fn get_reply(buf: &[u8]) -> Result<Option<(Got<'_>, usize)>, ProtocolError> {
    let Some((l, n)) = line(buf)? else {
        return Ok(None);
    };
    if l == b"END" {
        return Ok(Some((Got::Miss, n)));
    }
    if is_error(l) {
        return Ok(Some((Got::Error(l), n)));
    }
    // VALUE <key> <flags> <bytes> [<cas>]
    let mut parts = l.split(|&b| b == b' ');
    if parts.next() != Some(b"VALUE") {
        return Err(unexpected(l, "get"));
    }
    let bytes = parts
        .nth(2)
        .and_then(parse_decimal)
        .filter(|&b| b as usize <= VALUE_BYTES_MAX)
        .ok_or_else(|| ProtocolError(format!("bad VALUE line: {}", quote(l))))?
        as usize;
    let end = n + bytes;
    const TAIL: &[u8] = b"\r\nEND\r\n";
    if buf.len() < end + TAIL.len() {
        return Ok(None);
    }
    if &buf[end..end + TAIL.len()] != TAIL {
        return Err(ProtocolError(format!(
            "value of {bytes} bytes not followed by END (one key per get): {}",
            quote(&buf[end..])
        )));
    }
    Ok(Some((Got::Value, end + TAIL.len())))
}

#[inline]
fn storage(out: &mut Vec<u8>, verb: &[u8], lock: bool, key: &[u8], exptime_s: u64, len: usize) {
    out.extend_from_slice(verb);
    if lock {
        out.extend_from_slice(LOCK_PREFIX);
    }
    out.extend_from_slice(key);
    out.extend_from_slice(b" 0 ");
    push_decimal(out, exptime_s);
    out.push(b' ');
    push_decimal(out, len as u64);
    out.extend_from_slice(b"\r\n");
}

fn get(out: &mut Vec<u8>, key: &[u8]) {
    out.extend_from_slice(b"get ");
    out.extend_from_slice(key);
    out.extend_from_slice(b"\r\n");
}

fn complete(status: Status, used: usize) -> Parsed {
    Parsed::Complete {
        reply: Reply::status(status),
        used,
    }
}

impl Codec for Memcache {
    fn name(&self) -> &'static str {
        "memcache"
    }

    fn handshake(&mut self, out: &mut Vec<u8>) -> usize {
        out.extend_from_slice(b"version\r\n");
        1
    }

    fn parse_handshake(&mut self, buf: &[u8]) -> Result<Option<usize>, String> {
        match line(buf) {
            Ok(None) => Ok(None),
            Ok(Some((l, n))) if l.starts_with(b"VERSION ") => Ok(Some(n)),
            Ok(Some((l, _))) => Err(format!(
                "expected 'VERSION …' to 'version', got '{}' (is this a memcached text-protocol server?)",
                quote(l)
            )),
            Err(e) => Err(format!("{e} (is this a memcached text-protocol server?)")),
        }
    }

    #[inline]
    fn encode(&mut self, req: &Request<'_>, out: &mut Vec<u8>) {
        match req.kind {
            OpKind::Get => get(out, req.key),
            OpKind::Put => {
                storage(out, b"set ", false, req.key, 0, req.value.len());
                out.extend_from_slice(req.value);
                out.extend_from_slice(b"\r\n");
            }
            OpKind::LockRead => {
                storage(out, b"add ", true, req.key, self.lock_s, 16);
                push_token(out, req.token);
                out.extend_from_slice(b"\r\n");
                get(out, req.key);
            }
            OpKind::UpdateUnlock | OpKind::SessionCreate => {
                storage(
                    out,
                    b"set ",
                    false,
                    req.key,
                    self.session_s,
                    req.value.len(),
                );
                out.extend_from_slice(req.value);
                out.extend_from_slice(b"\r\ndelete ");
                out.extend_from_slice(LOCK_PREFIX);
                out.extend_from_slice(req.key);
                out.extend_from_slice(b"\r\n");
            }
        }
    }

    #[inline]
    fn parse(&mut self, buf: &[u8], expect: OpKind) -> Result<Parsed, ProtocolError> {
        let error = |l: &[u8]| Status::Error(ServerError::from_bytes(l));
        match expect {
            OpKind::Get => {
                let Some((g, used)) = get_reply(buf)? else {
                    return Ok(Parsed::Incomplete);
                };
                let status = match g {
                    Got::Value => Status::Ok,
                    Got::Miss => Status::Miss,
                    Got::Error(l) => error(l),
                };
                Ok(complete(status, used))
            }
            OpKind::Put => {
                let Some((l, used)) = line(buf)? else {
                    return Ok(Parsed::Incomplete);
                };
                let status = match l {
                    b"STORED" => Status::Ok,
                    l if is_error(l) => error(l),
                    l => return Err(unexpected(l, "set")),
                };
                Ok(complete(status, used))
            }
            OpKind::LockRead => {
                let Some((l, n)) = line(buf)? else {
                    return Ok(Parsed::Incomplete);
                };
                let Some((g, m)) = get_reply(&buf[n..])? else {
                    return Ok(Parsed::Incomplete);
                };
                let status = match (l, g) {
                    (l, _) if is_error(l) => error(l),
                    (_, Got::Error(e)) => error(e),
                    (b"NOT_STORED", _) => Status::Busy,
                    (b"STORED", Got::Miss) => Status::Miss,
                    (b"STORED", Got::Value) => Status::Ok,
                    (l, _) => return Err(unexpected(l, "add")),
                };
                Ok(complete(status, n + m))
            }
            OpKind::UpdateUnlock | OpKind::SessionCreate => {
                let Some((w, n)) = line(buf)? else {
                    return Ok(Parsed::Incomplete);
                };
                let Some((d, m)) = line(&buf[n..])? else {
                    return Ok(Parsed::Incomplete);
                };
                let status = match (w, d) {
                    (w, _) if is_error(w) => error(w),
                    (b"STORED", b"DELETED") => Status::Ok,
                    // The lock key was gone: it expired (lock_s) before the write-back.
                    (b"STORED", b"NOT_FOUND") => {
                        Status::Error(ServerError::new("lock lost (delete lock:key = NOT_FOUND)"))
                    }
                    (b"STORED", d) if is_error(d) => error(d),
                    (b"STORED", d) => return Err(unexpected(d, "delete")),
                    (w, _) => return Err(unexpected(w, "set")),
                };
                Ok(complete(status, n + m))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(c: &mut Memcache, kind: OpKind, key: &[u8], value: &[u8], token: u64) -> Vec<u8> {
        let mut out = Vec::new();
        c.encode(
            &Request {
                kind,
                key,
                value,
                token,
                id: 0,
            },
            &mut out,
        );
        out
    }

    #[test]
    fn encodes_exact_commands() {
        let mut c = Memcache::new(90, 1200);
        assert_eq!(enc(&mut c, OpKind::Get, b"k1", b"", 0), b"get k1\r\n");
        assert_eq!(
            enc(&mut c, OpKind::Put, b"k1", b"hello", 0),
            b"set k1 0 0 5\r\nhello\r\n"
        );
        assert_eq!(
            enc(&mut c, OpKind::LockRead, b"k1", b"", 0xab),
            b"add lock:k1 0 90 16\r\n00000000000000ab\r\nget k1\r\n"
        );
        assert_eq!(
            enc(&mut c, OpKind::UpdateUnlock, b"k1", b"v", 0xab),
            b"set k1 0 1200 1\r\nv\r\ndelete lock:k1\r\n"
        );
        assert_eq!(
            enc(&mut c, OpKind::SessionCreate, b"k1", b"v", 0xab),
            b"set k1 0 1200 1\r\nv\r\ndelete lock:k1\r\n"
        );
        let mut hs = Vec::new();
        assert_eq!(c.handshake(&mut hs), 1);
        assert_eq!(hs, b"version\r\n");
    }

    fn parse(bytes: &[u8], expect: OpKind) -> Result<Parsed, ProtocolError> {
        let mut c = Memcache::new(90, 0);
        for cut in 0..bytes.len() {
            assert_eq!(
                c.parse(&bytes[..cut], expect),
                Ok(Parsed::Incomplete),
                "cut {cut} of {}",
                quote(bytes)
            );
        }
        c.parse(bytes, expect)
    }

    fn ok(status: Status, used: usize) -> Result<Parsed, ProtocolError> {
        Ok(complete(status, used))
    }

    #[test]
    fn parses_get_and_set_replies() {
        let hit = b"VALUE k1 0 5\r\nhello\r\nEND\r\n";
        assert_eq!(parse(hit, OpKind::Get), ok(Status::Ok, hit.len()));
        // With a CAS field, and a value holding "\r\nEND\r\n" itself.
        let tricky = b"VALUE k1 0 7 99\r\n\r\nEND\r\n\r\nEND\r\n";
        assert_eq!(parse(tricky, OpKind::Get), ok(Status::Ok, tricky.len()));
        assert_eq!(parse(b"END\r\n", OpKind::Get), ok(Status::Miss, 5));
        assert_eq!(parse(b"STORED\r\n", OpKind::Put), ok(Status::Ok, 8));
        assert_eq!(
            parse(
                b"SERVER_ERROR out of memory storing object\r\n",
                OpKind::Put
            ),
            ok(
                Status::Error(ServerError::new(
                    "SERVER_ERROR out of memory storing object"
                )),
                43
            )
        );
        assert_eq!(
            parse(b"ERROR\r\n", OpKind::Get),
            ok(Status::Error(ServerError::new("ERROR")), 7)
        );
        // Only the first reply is used.
        assert_eq!(
            Memcache::new(1, 0).parse(b"END\r\nEND\r\n", OpKind::Get),
            ok(Status::Miss, 5)
        );
    }

    #[test]
    fn parses_session_pairs() {
        let got = b"STORED\r\nVALUE k1 0 1\r\nv\r\nEND\r\n";
        assert_eq!(parse(got, OpKind::LockRead), ok(Status::Ok, got.len()));
        assert_eq!(
            parse(b"STORED\r\nEND\r\n", OpKind::LockRead),
            ok(Status::Miss, 13)
        );
        let busy = b"NOT_STORED\r\nVALUE k1 0 1\r\nv\r\nEND\r\n";
        assert_eq!(parse(busy, OpKind::LockRead), ok(Status::Busy, busy.len()));
        assert_eq!(
            parse(b"STORED\r\nDELETED\r\n", OpKind::UpdateUnlock),
            ok(Status::Ok, 17)
        );
        assert_eq!(
            parse(b"STORED\r\nDELETED\r\n", OpKind::SessionCreate),
            ok(Status::Ok, 17)
        );
        assert!(matches!(
            parse(b"STORED\r\nNOT_FOUND\r\n", OpKind::UpdateUnlock),
            Ok(Parsed::Complete { reply: Reply { status: Status::Error(e), .. }, used: 19 }) if e.as_str().starts_with("lock lost")
        ));
        assert_eq!(
            parse(b"SERVER_ERROR busy\r\nEND\r\n", OpKind::LockRead),
            ok(Status::Error(ServerError::new("SERVER_ERROR busy")), 24)
        );
    }

    #[test]
    fn broken_or_unexpected_bytes_are_protocol_errors() {
        let mut c = Memcache::new(1, 0);
        assert!(c.parse(b"+OK\r\n", OpKind::Get).is_err());
        assert!(c.parse(b"VALUE k1 0 x\r\n", OpKind::Get).is_err());
        assert!(c.parse(b"VALUE k1 0 1\r\nvXXEND\r\n", OpKind::Get).is_err());
        // Two values: loadgen asks for one key per get.
        assert!(
            c.parse(
                b"VALUE k1 0 1\r\nv\r\nVALUE k2 0 1\r\nv\r\nEND\r\n",
                OpKind::Get
            )
            .is_err()
        );
        assert!(
            c.parse(b"DELETED\r\n", OpKind::Put)
                .unwrap_err()
                .0
                .contains("to set")
        );
        assert!(
            c.parse(b"STORED\r\nSTORED\r\n", OpKind::UpdateUnlock)
                .is_err()
        );
        assert!(c.parse(b"EXISTS\r\nEND\r\n", OpKind::LockRead).is_err());
        let long = vec![b'x'; LINE_BYTES_MAX + 1];
        assert!(c.parse(&long, OpKind::Put).is_err());
    }

    #[test]
    fn handshake_replies() {
        let mut c = Memcache::new(1, 0);
        assert_eq!(c.parse_handshake(b"VERSION 1.6"), Ok(None));
        assert_eq!(c.parse_handshake(b"VERSION 1.6.18\r\n"), Ok(Some(16)));
        let e = c
            .parse_handshake(b"-ERR unknown command 'version'\r\n")
            .unwrap_err();
        assert!(e.contains("memcached"), "{e}");
    }
}
