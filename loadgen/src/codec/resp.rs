//! RESP2 (Redis and any server that speaks it).
//!
//! | workload op       | commands (pipelined back to back)                  | ok                 |
//! |-------------------|----------------------------------------------------|--------------------|
//! | get               | `GET key`                                          | bulk; nil = miss   |
//! | put               | `SET key value`                                    | `+OK`              |
//! | read-and-lock     | `SET lock:key TOKEN NX PX lock_ms` + `GET key`     | `+OK` + bulk; nil lock = busy, nil value = miss |
//! | update-and-unlock | `SET key value PX session_ms` + `DEL lock:key`     | `+OK` + `:1`; `:0` = the lock was lost |
//! | session-create    | as update-and-unlock (the lock was taken by read-and-lock) |            |
//!
//! The session pair is the nearest plain-command equivalent of stategrid's ReadAndLock /
//! UpdateAndUnlock: a lock key with a client token and an expiry, taken with `SET NX PX`, read
//! in the same round trip, released with `DEL`. It is a lower bound on what a Redis session
//! provider costs: real ones (e.g. ASP.NET's RedisSessionStateProvider) run Lua scripts that
//! also compare the token before releasing, which costs Redis more per operation. Reads do not
//! slide the session's expiry (that would be one more `PEXPIRE` per read).

use super::{
    Codec, Parsed, ProtocolError, Reply, Request, ServerError, Status, decimal, find_crlf,
    parse_decimal, push_decimal, push_token, quote,
};
use crate::workload::{OpKind, VALUE_BYTES_MAX};

/// Longest status, error or length line accepted before calling the stream broken.
const LINE_BYTES_MAX: usize = 64 << 10;
/// Prefix of the lock keys of the session cycle.
pub const LOCK_PREFIX: &[u8] = b"lock:";

pub struct Resp {
    lock_ms: u64,
    /// 0: session writes carry no expiry.
    session_ms: u64,
    /// `AUTH` sent before `PING`, when credentials were given.
    auth: Option<Vec<u8>>,
    /// The handshake replies read so far.
    handshake_step: u8,
}

impl Resp {
    pub fn new(lock_ms: u64, session_ms: u64) -> Self {
        Resp {
            lock_ms,
            session_ms,
            auth: None,
            handshake_step: 0,
        }
    }

    /// Send `AUTH [user] password` first on every connection.
    pub fn with_auth(mut self, auth: Option<(Option<String>, String)>) -> Self {
        self.auth = auth.map(|(user, password)| {
            let args: Vec<&[u8]> = match &user {
                Some(u) => vec![b"AUTH", u.as_bytes(), password.as_bytes()],
                None => vec![b"AUTH", password.as_bytes()],
            };
            let mut out = format!("*{}\r\n", args.len()).into_bytes();
            for a in args {
                out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
                out.extend_from_slice(a);
                out.extend_from_slice(b"\r\n");
            }
            out
        });
        self
    }
}

/// One RESP2 reply, borrowed from the receive buffer.
#[derive(Debug, PartialEq, Eq)]
enum Value<'a> {
    Simple(&'a [u8]),
    Error(&'a [u8]),
    Int(i64),
    Bulk(Option<&'a [u8]>),
}

impl Value<'_> {
    fn describe(&self) -> String {
        match self {
            Value::Simple(s) => format!("+{}", quote(s)),
            Value::Error(e) => format!("-{}", quote(e)),
            Value::Int(n) => format!(":{n}"),
            Value::Bulk(None) => "nil".into(),
            Value::Bulk(Some(b)) => format!("a {}-byte bulk string", b.len()),
        }
    }
}

/// Parses one reply at the start of `buf`: `Ok(None)` when incomplete.
fn reply(buf: &[u8]) -> Result<Option<(Value<'_>, usize)>, ProtocolError> {
    let Some(eol) = find_crlf(buf) else {
        if buf.len() > LINE_BYTES_MAX {
            return Err(ProtocolError(format!(
                "no line end in {LINE_BYTES_MAX} bytes: {}",
                quote(buf)
            )));
        }
        return Ok(None);
    };
    if eol == 0 {
        return Err(ProtocolError("empty reply line: not RESP".into()));
    }
    let line = &buf[1..eol];
    let after = eol + 2;
    let v = match buf[0] {
        b'+' => Value::Simple(line),
        b'-' => Value::Error(line),
        b':' => {
            let (neg, digits) = match line.strip_prefix(b"-") {
                Some(d) => (true, d),
                None => (false, line),
            };
            let n = parse_decimal(digits)
                .ok_or_else(|| ProtocolError(format!("bad integer reply: {}", quote(buf))))?;
            Value::Int(if neg { -(n as i64) } else { n as i64 })
        }
        b'$' => {
            if line == b"-1" {
                return Ok(Some((Value::Bulk(None), after)));
            }
            let len = parse_decimal(line)
                .filter(|&n| n as usize <= VALUE_BYTES_MAX)
                .ok_or_else(|| ProtocolError(format!("bad bulk length: {}", quote(buf))))?
                as usize;
            let end = after + len;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(ProtocolError(format!(
                    "bulk string of {len} bytes not followed by CRLF"
                )));
            }
            return Ok(Some((Value::Bulk(Some(&buf[after..end])), end + 2)));
        }
        b'*' => {
            return Err(ProtocolError(format!(
                "unexpected array reply: {}",
                quote(buf)
            )));
        }
        _ => return Err(ProtocolError(format!("not a RESP reply: {}", quote(buf)))),
    };
    Ok(Some((v, after)))
}

/// The two replies of a two-command operation, or incomplete.
fn two(buf: &[u8]) -> Result<Option<(Value<'_>, Value<'_>, usize)>, ProtocolError> {
    let Some((a, n)) = reply(buf)? else {
        return Ok(None);
    };
    let Some((b, m)) = reply(&buf[n..])? else {
        return Ok(None);
    };
    Ok(Some((a, b, n + m)))
}

fn unexpected(v: &Value<'_>, to: &str) -> ProtocolError {
    ProtocolError(format!("unexpected reply {} to {to}", v.describe()))
}

#[inline]
fn crlf(out: &mut Vec<u8>) {
    out.extend_from_slice(b"\r\n");
}

#[inline]
fn bulk_header(out: &mut Vec<u8>, len: usize) {
    out.push(b'$');
    push_decimal(out, len as u64);
    crlf(out);
}

#[inline]
fn bulk(out: &mut Vec<u8>, b: &[u8]) {
    bulk_header(out, b.len());
    out.extend_from_slice(b);
    crlf(out);
}

#[inline]
fn bulk_decimal(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    bulk(out, decimal(&mut digits, n));
}

#[inline]
fn lock_key(out: &mut Vec<u8>, key: &[u8]) {
    bulk_header(out, LOCK_PREFIX.len() + key.len());
    out.extend_from_slice(LOCK_PREFIX);
    out.extend_from_slice(key);
    crlf(out);
}

fn get(out: &mut Vec<u8>, key: &[u8]) {
    out.extend_from_slice(b"*2\r\n$3\r\nGET\r\n");
    bulk(out, key);
}

fn set(out: &mut Vec<u8>, key: &[u8], value: &[u8], px_ms: u64) {
    out.extend_from_slice(if px_ms > 0 {
        b"*5\r\n$3\r\nSET\r\n"
    } else {
        b"*3\r\n$3\r\nSET\r\n"
    });
    bulk(out, key);
    bulk(out, value);
    if px_ms > 0 {
        out.extend_from_slice(b"$2\r\nPX\r\n");
        bulk_decimal(out, px_ms);
    }
}

impl Codec for Resp {
    fn name(&self) -> &'static str {
        "resp"
    }

    fn handshake(&mut self, out: &mut Vec<u8>) -> usize {
        self.handshake_step = 0;
        if let Some(a) = &self.auth {
            out.extend_from_slice(a);
        }
        out.extend_from_slice(b"*1\r\n$4\r\nPING\r\n");
        1 + self.auth.is_some() as usize
    }

    fn parse_handshake(&mut self, buf: &[u8]) -> Result<Option<usize>, String> {
        if self.auth.is_some() && self.handshake_step == 0 {
            return match reply(buf) {
                Ok(None) => Ok(None),
                Ok(Some((Value::Simple(b"OK"), n))) => {
                    self.handshake_step = 1;
                    Ok(Some(n))
                }
                Ok(Some((Value::Error(e), _))) => Err(format!(
                    "server refused AUTH: {}",
                    String::from_utf8_lossy(e)
                )),
                Ok(Some((v, _))) => Err(format!("expected +OK to AUTH, got {}", v.describe())),
                Err(e) => Err(format!("{e} (is this a RESP server?)")),
            };
        }
        match reply(buf) {
            Ok(None) => Ok(None),
            Ok(Some((Value::Simple(b"PONG"), n))) => Ok(Some(n)),
            Ok(Some((Value::Error(e), _))) => Err(format!(
                "server refused PING: {}",
                String::from_utf8_lossy(e)
            )),
            Ok(Some((v, _))) => Err(format!("expected +PONG, got {}", v.describe())),
            Err(e) => Err(format!("{e} (is this a RESP server?)")),
        }
    }

    #[inline]
    fn encode(&mut self, req: &Request<'_>, out: &mut Vec<u8>) {
        match req.kind {
            OpKind::Get => get(out, req.key),
            OpKind::Put => set(out, req.key, req.value, 0),
            OpKind::LockRead => {
                out.extend_from_slice(b"*6\r\n$3\r\nSET\r\n");
                lock_key(out, req.key);
                bulk_header(out, 16);
                push_token(out, req.token);
                crlf(out);
                out.extend_from_slice(b"$2\r\nNX\r\n$2\r\nPX\r\n");
                bulk_decimal(out, self.lock_ms);
                get(out, req.key);
            }
            OpKind::UpdateUnlock | OpKind::SessionCreate => {
                set(out, req.key, req.value, self.session_ms);
                out.extend_from_slice(b"*2\r\n$3\r\nDEL\r\n");
                lock_key(out, req.key);
            }
        }
    }

    #[inline]
    fn parse(&mut self, buf: &[u8], expect: OpKind) -> Result<Parsed, ProtocolError> {
        let error = |e: &[u8]| Status::Error(ServerError::from_bytes(e));
        let (status, used) = match expect {
            OpKind::Get | OpKind::Put => {
                let Some((v, used)) = reply(buf)? else {
                    return Ok(Parsed::Incomplete);
                };
                let status = match (expect, &v) {
                    (_, Value::Error(e)) => error(e),
                    (OpKind::Get, Value::Bulk(Some(_))) => Status::Ok,
                    (OpKind::Get, Value::Bulk(None)) => Status::Miss,
                    (OpKind::Put, Value::Simple(b"OK")) => Status::Ok,
                    _ => {
                        return Err(unexpected(
                            &v,
                            if expect == OpKind::Get { "GET" } else { "SET" },
                        ));
                    }
                };
                (status, used)
            }
            OpKind::LockRead => {
                let Some((lock, read, used)) = two(buf)? else {
                    return Ok(Parsed::Incomplete);
                };
                let locked = match &lock {
                    Value::Simple(b"OK") => true,
                    Value::Bulk(None) => false,
                    Value::Error(e) => return Ok(complete(error(e), used)),
                    v => return Err(unexpected(v, "SET NX")),
                };
                let found = match &read {
                    Value::Bulk(Some(_)) => true,
                    Value::Bulk(None) => false,
                    Value::Error(e) => return Ok(complete(error(e), used)),
                    v => return Err(unexpected(v, "GET")),
                };
                let status = match (locked, found) {
                    (false, _) => Status::Busy,
                    (true, false) => Status::Miss,
                    (true, true) => Status::Ok,
                };
                (status, used)
            }
            OpKind::UpdateUnlock | OpKind::SessionCreate => {
                let Some((write, unlock, used)) = two(buf)? else {
                    return Ok(Parsed::Incomplete);
                };
                match &write {
                    Value::Simple(b"OK") => {}
                    Value::Error(e) => return Ok(complete(error(e), used)),
                    v => return Err(unexpected(v, "SET")),
                }
                let status = match &unlock {
                    Value::Int(1) => Status::Ok,
                    // The lock key was gone: it expired (lock_ms) before the write-back.
                    Value::Int(0) => {
                        Status::Error(ServerError::new("lock lost (DEL lock:key = 0)"))
                    }
                    Value::Error(e) => error(e),
                    v => return Err(unexpected(v, "DEL")),
                };
                (status, used)
            }
        };
        Ok(complete(status, used))
    }
}

fn complete(status: Status, used: usize) -> Parsed {
    Parsed::Complete {
        reply: Reply::status(status),
        used,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(kind: OpKind, key: &[u8], value: &[u8], token: u64, c: &mut Resp) -> Vec<u8> {
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
        let mut c = Resp::new(90_000, 0);
        assert_eq!(
            enc(OpKind::Get, b"k1", b"", 0, &mut c),
            b"*2\r\n$3\r\nGET\r\n$2\r\nk1\r\n"
        );
        assert_eq!(
            enc(OpKind::Put, b"k1", b"hello", 0, &mut c),
            b"*3\r\n$3\r\nSET\r\n$2\r\nk1\r\n$5\r\nhello\r\n"
        );
        assert_eq!(
            enc(OpKind::LockRead, b"k1", b"", 0xab, &mut c),
            &b"*6\r\n$3\r\nSET\r\n$7\r\nlock:k1\r\n$16\r\n00000000000000ab\r\n$2\r\nNX\r\n$2\r\nPX\r\n$5\r\n90000\r\n\
               *2\r\n$3\r\nGET\r\n$2\r\nk1\r\n"[..]
        );
        assert_eq!(
            enc(OpKind::UpdateUnlock, b"k1", b"v", 0xab, &mut c),
            &b"*3\r\n$3\r\nSET\r\n$2\r\nk1\r\n$1\r\nv\r\n*2\r\n$3\r\nDEL\r\n$7\r\nlock:k1\r\n"[..]
        );
        let mut c = Resp::new(90_000, 1_200_000);
        assert_eq!(
            enc(OpKind::SessionCreate, b"k1", b"v", 1, &mut c),
            &b"*5\r\n$3\r\nSET\r\n$2\r\nk1\r\n$1\r\nv\r\n$2\r\nPX\r\n$7\r\n1200000\r\n*2\r\n$3\r\nDEL\r\n$7\r\nlock:k1\r\n"[..]
        );
        let mut hs = Vec::new();
        assert_eq!(c.handshake(&mut hs), 1);
        assert_eq!(hs, b"*1\r\n$4\r\nPING\r\n");
    }

    /// Parses `bytes` as the reply to `expect`, checking every strict prefix is incomplete.
    fn parse(bytes: &[u8], expect: OpKind) -> Result<Parsed, ProtocolError> {
        let mut c = Resp::new(90_000, 0);
        for cut in 0..bytes.len() {
            assert_eq!(
                c.parse(&bytes[..cut], expect),
                Ok(Parsed::Incomplete),
                "cut {cut} of {:?}",
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
        assert_eq!(parse(b"$5\r\nhello\r\n", OpKind::Get), ok(Status::Ok, 11));
        assert_eq!(parse(b"$0\r\n\r\n", OpKind::Get), ok(Status::Ok, 6));
        assert_eq!(parse(b"$-1\r\n", OpKind::Get), ok(Status::Miss, 5));
        // A value that contains CRLF is taken by its length, not by its content.
        assert_eq!(
            parse(b"$4\r\n\r\n\r\n\r\n", OpKind::Get),
            ok(Status::Ok, 10)
        );
        assert_eq!(parse(b"+OK\r\n", OpKind::Put), ok(Status::Ok, 5));
        assert_eq!(
            parse(b"-OOM command not allowed\r\n", OpKind::Put),
            ok(
                Status::Error(ServerError::new("OOM command not allowed")),
                26
            )
        );
        // Only the first reply is used; the rest stays for the next request.
        assert_eq!(
            Resp::new(1, 0).parse(b"+OK\r\n$-1\r\n", OpKind::Put),
            ok(Status::Ok, 5)
        );
    }

    #[test]
    fn parses_session_pairs() {
        assert_eq!(
            parse(b"+OK\r\n$3\r\nabc\r\n", OpKind::LockRead),
            ok(Status::Ok, 14)
        );
        assert_eq!(
            parse(b"+OK\r\n$-1\r\n", OpKind::LockRead),
            ok(Status::Miss, 10)
        );
        assert_eq!(
            parse(b"$-1\r\n$3\r\nabc\r\n", OpKind::LockRead),
            ok(Status::Busy, 14)
        );
        assert_eq!(
            parse(b"$-1\r\n$-1\r\n", OpKind::LockRead),
            ok(Status::Busy, 10)
        );
        assert_eq!(
            parse(b"-ERR x\r\n$-1\r\n", OpKind::LockRead),
            ok(Status::Error(ServerError::new("ERR x")), 13)
        );
        assert_eq!(
            parse(b"+OK\r\n:1\r\n", OpKind::UpdateUnlock),
            ok(Status::Ok, 9)
        );
        assert_eq!(
            parse(b"+OK\r\n:1\r\n", OpKind::SessionCreate),
            ok(Status::Ok, 9)
        );
        assert!(matches!(
            parse(b"+OK\r\n:0\r\n", OpKind::UpdateUnlock),
            Ok(Parsed::Complete { reply: Reply { status: Status::Error(e), .. }, used: 9 }) if e.as_str().starts_with("lock lost")
        ));
    }

    #[test]
    fn broken_or_unexpected_bytes_are_protocol_errors() {
        let mut c = Resp::new(1, 0);
        assert!(c.parse(b"HTTP/1.1 400\r\n", OpKind::Get).is_err());
        assert!(c.parse(b"$abc\r\n", OpKind::Get).is_err());
        assert!(c.parse(b"$3\r\nabcXY", OpKind::Get).is_err());
        assert!(
            c.parse(b"*2\r\n$1\r\na\r\n$1\r\nb\r\n", OpKind::Get)
                .is_err()
        );
        assert!(c.parse(b":x\r\n", OpKind::Get).is_err());
        assert!(c.parse(b"\r\n", OpKind::Get).is_err());
        // Well-formed but not an answer to this request.
        assert!(
            c.parse(b"+OK\r\n", OpKind::Get)
                .unwrap_err()
                .0
                .contains("to GET")
        );
        assert!(c.parse(b"$1\r\na\r\n", OpKind::Put).is_err());
        assert!(c.parse(b"+OK\r\n+OK\r\n", OpKind::UpdateUnlock).is_err());
        // A line that never ends is bounded.
        let long = vec![b'+'; LINE_BYTES_MAX + 1];
        assert!(c.parse(&long, OpKind::Put).is_err());
    }

    #[test]
    fn handshake_replies() {
        let mut c = Resp::new(1, 0);
        assert_eq!(c.parse_handshake(b"+PO"), Ok(None));
        assert_eq!(c.parse_handshake(b"+PONG\r\n"), Ok(Some(7)));
        let e = c
            .parse_handshake(b"-NOAUTH Authentication required.\r\n")
            .unwrap_err();
        assert!(e.contains("refused PING: NOAUTH"), "{e}");
        let e = c.parse_handshake(b"VERSION 1.6.18\r\n").unwrap_err();
        assert!(e.contains("RESP"), "{e}");
    }
}
