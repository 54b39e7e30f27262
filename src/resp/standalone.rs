//! A RESP connection served by one in-memory shard, without sockets or threads: the bytes a
//! client sent go through the same parser, command table and renderer as on `svr_port`, and
//! each native request a command makes is applied by a real [`Core`] (store, namespace
//! registry) as a one-shard, one-host store would.
//!
//! Not used by the server. It exists so that Redis command execution can be fuzzed
//! (`fuzz/fuzz_targets/resp_exec.rs`) and crash inputs kept as unit tests, with every layer a
//! peer's bytes reach, but no I/O. What it checks, as [`Violation`]s: a command must never
//! make a request a client may not send (host-to-host, `Hello`, a value on a request that
//! carries none), the renderer must never answer "internal" (an answer with no request, an
//! answer that does not decode), and every reply must be well-formed RESP whose errors are
//! typed (a code word such as `ERR` or `WRONGTYPE` first), one reply per command.
//!
//! The answers take the path of answers that crossed a shard (`render_native` in the shard's
//! RESP glue): encoded into bytes, decoded, rendered with the value copied.

use std::ops::Range;
use std::sync::Arc;

use stategrid_proto::{ArchivedRequest, ErrorCode, ErrorReply, RedisOp, Request, Response};
use stategrid_proto::{Key, codec, frame};

use super::commands::{self, Args, OffShard, Owner, SlotRange, Stamp, TopoNode, Topology};
use super::parse::{self, Limits, Parsed};
use super::{RespOut, Session, ValRef, reply};
use crate::config::Config;
use crate::net::{AlignedBuf, SendBatch};
use crate::server::exec::{Core, VecSink};
use crate::store::{KeyRef, Store};

/// Milliseconds the clock advances per command (so expiry paths are reached).
const CLOCK_STEP_MS: u64 = 250;

/// Something a command or the renderer did that a client must never see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation(pub String);

/// What one [`Standalone::feed`] did.
#[derive(Debug, Default)]
pub struct Fed {
    /// Commands executed (a blank line or `*0` is not a command).
    pub commands: usize,
    /// Bytes of the input used; the rest is an incomplete command, to be fed again with
    /// what follows it.
    pub consumed: usize,
    /// The connection was closed (QUIT, or bad bytes answered with an error).
    pub closed: bool,
    /// Everything written to the client, in order.
    pub replies: Vec<u8>,
}

/// One RESP connection on a one-shard store. See the module doc.
pub struct Standalone {
    core: Core,
    session: Session,
    out: RespOut,
    batch: SendBatch,
    now_ms: u64,
    started_ms: u64,
    closed: bool,
    violations: Vec<Violation>,
    /// Replies expected: one per command, plus the error before a close on bad bytes.
    expected_replies: usize,
}

impl Standalone {
    /// A fresh connection on an empty store with `cfg`'s limits.
    pub fn new(cfg: Config) -> Standalone {
        let limits = cfg.store_limits(1);
        let now_ms = 1_700_000_000_000;
        Standalone {
            core: Core::new(
                0,
                1,
                Store::new(limits, 7),
                Some(Default::default()),
                Arc::new(cfg),
            ),
            session: Session::new(1, now_ms),
            out: RespOut::default(),
            batch: SendBatch::default(),
            now_ms,
            started_ms: now_ms,
            closed: false,
            violations: Vec::new(),
            expected_replies: 0,
        }
    }

    /// Serves every whole command in `input` as the shard's receive loop does (stopping at
    /// an incomplete one, or at a close). Returns what was written, or the first violation.
    /// Replies are counted per call: feed the unconsumed rest again, with more bytes.
    pub fn feed(&mut self, input: &[u8]) -> Result<Fed, Violation> {
        let cfg = self.core.cfg.clone();
        let lim = Limits {
            bulk_bytes_max: cfg.object_bytes_max as usize,
            items_max: cfg.resp_multibulk_items_max as usize,
            inline_bytes_max: cfg.resp_inline_bytes_max as usize,
        };
        let (mut args, mut scratch): (Vec<Range<usize>>, Vec<u8>) = (Vec::new(), Vec::new());
        let mut fed = Fed::default();
        let mut pos = 0;
        self.expected_replies = 0;
        while pos < input.len() && !self.closed {
            let bytes = &input[pos..];
            match parse::parse(bytes, &lim, &mut args, &mut scratch) {
                Ok(Parsed::Incomplete { .. }) => break,
                Ok(Parsed::Command { consumed, inline }) => {
                    pos += consumed;
                    if args.is_empty() {
                        continue;
                    }
                    let a = Args {
                        base: if inline { &scratch[..] } else { bytes },
                        ranges: &args,
                    };
                    fed.commands += 1;
                    self.expected_replies += 1;
                    self.now_ms += CLOCK_STEP_MS;
                    let mut session = std::mem::take(&mut self.session);
                    commands::execute(&mut session, &a, self);
                    self.session = session;
                }
                Err(e) => {
                    let mut out = Vec::new();
                    reply::error(&mut out, &format!("ERR {}", e.0));
                    commands::Host::reply(self, &out);
                    self.expected_replies += 1;
                    self.closed = true;
                }
            }
            if let Some(v) = self.violations.first() {
                return Err(v.clone());
            }
        }
        fed.closed = self.closed;
        fed.consumed = pos;
        fed.replies = self.batch.take_parts().0;
        let n = check_replies(&fed.replies)?;
        if n != self.expected_replies {
            return Err(Violation(format!(
                "{} commands (and protocol errors) got {n} replies",
                self.expected_replies
            )));
        }
        Ok(fed)
    }

    fn violation(&mut self, what: String) {
        self.violations.push(Violation(what));
    }

    /// Applies a native request as `Dispatch::on_frame` (`server::shard::dispatch`) does on a one-shard, one-host store and
    /// renders its answer.
    fn serve(&mut self, req: &Request, value: &[u8]) {
        let mut frame_bytes = Vec::new();
        codec::encode_request(&mut frame_bytes, 0, req, value);
        let buf = AlignedBuf::from_slice(&frame_bytes);
        let Ok(Some(parsed)) = frame::parse(buf.as_slice(), usize::MAX) else {
            return self.violation(format!("{req:?}: its frame does not parse"));
        };
        let r = match codec::decode_request(parsed.archive) {
            Ok(r) => r,
            Err(e) => return self.violation(format!("{req:?}: its archive does not decode: {e}")),
        };
        if r.is_internal()
            || matches!(
                r,
                ArchivedRequest::Hello { .. } | ArchivedRequest::HelloShard { .. }
            )
        {
            return self.violation(format!(
                "a command sent {}, which clients may not send",
                r.name()
            ));
        }
        if !r.carries_value() && !parsed.value.is_empty() {
            return self.violation(format!("{} carries no value, yet got one", r.name()));
        }
        let mut answer = Vec::new();
        if matches!(r, ArchivedRequest::GetMap) {
            let e = Response::Error(ErrorReply::new(ErrorCode::Unsupported, 0));
            codec::encode_head(&mut answer, 0, &e, 0);
        } else if r.carries_value()
            && parsed.value.len() as u64 > self.core.cfg.object_bytes_max
            && !matches!(r, ArchivedRequest::BulkPut { .. })
        {
            let e = Response::Error(ErrorReply::new(
                ErrorCode::ObjectTooLarge,
                self.core.cfg.object_bytes_max,
            ));
            codec::encode_head(&mut answer, 0, &e, 0);
        } else {
            self.core
                .execute(r, parsed.value, self.now_ms, 0, &mut VecSink(&mut answer));
        }
        self.render(&answer);
    }

    /// As the shard's `render_native`, but a frame that does not decode is a violation.
    fn render(&mut self, answer: &[u8]) {
        let buf = AlignedBuf::from_slice(answer);
        let Ok(Some(p)) = frame::parse(buf.as_slice(), usize::MAX) else {
            return self.violation("the shard's answer is not one whole frame".into());
        };
        let resp = codec::decode_response(p.archive)
            .ok()
            .and_then(|a| rkyv::deserialize::<Response, rkyv::rancor::Error>(a).ok());
        match resp {
            Some(resp) => self
                .out
                .render(&mut self.batch, &resp, Some(ValRef::Bytes(p.value))),
            None => self.violation("the shard's answer does not decode".into()),
        }
    }
}

impl commands::Host for Standalone {
    fn reply(&mut self, bytes: &[u8]) {
        self.batch.bytes_mut().extend_from_slice(bytes);
    }

    fn request(&mut self, req: &Request, value: &[u8], p: super::Pending) {
        self.out.push(p);
        self.serve(req, value);
    }

    fn redis(&mut self, ns: u32, key: &[u8], op: RedisOp, value: &[u8], p: super::Pending) {
        let req = Request::Redis {
            key: Key {
                ns,
                key: key.to_vec(),
            },
            op,
        };
        self.request(&req, value, p);
    }

    fn close(&mut self) {
        self.closed = true;
    }

    fn set_resp3(&mut self, on: bool) {
        self.out.resp3 = on;
    }

    fn cfg(&self) -> &Config {
        &self.core.cfg
    }

    fn now_ms(&self) -> u64 {
        self.now_ms
    }

    fn shards(&self) -> usize {
        1
    }

    fn counters(&self) -> (u64, u64) {
        (1, 0)
    }

    fn uptime_s(&self) -> u64 {
        (self.now_ms - self.started_ms) / 1000
    }

    fn topology(&self) -> Topology {
        Topology {
            me: 0,
            epoch: 0,
            nodes: vec![TopoNode {
                id: 0,
                ip: "127.0.0.1".into(),
                port: self.core.cfg.svr_port,
            }],
            ranges: vec![SlotRange {
                start: 0,
                end: 16383,
                primary: 0,
                replicas: Vec::new(),
            }],
        }
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

    fn stamp_here(&self, ns: u32, key: &[u8]) -> Result<Stamp, OffShard> {
        Ok(self
            .core
            .store
            .export(KeyRef::new(ns, key), self.now_ms)
            .map(|(st, _)| (st.version, st.created_ms)))
    }

    fn watch_stamp(&self, id: u64) -> Option<Stamp> {
        self.out.watch_stamp(id)
    }

    fn clear_watch(&mut self) {
        self.out.clear_watch();
    }

    // The fuzz harness has no users: every command is allowed.
    fn role(&self) -> Option<crate::auth::users::Role> {
        Some(crate::auth::users::Role::Admin)
    }

    fn login(&mut self, _user: Option<&[u8]>, _password: &[u8]) -> Result<(), &'static str> {
        Ok(())
    }
}

/// Checks that `out` is a run of whole, well-formed RESP2/RESP3 replies whose error lines
/// start with a code word (`ERR`, `WRONGTYPE`, ...), none of them an internal error. Returns
/// how many top-level replies there are.
pub fn check_replies(out: &[u8]) -> Result<usize, Violation> {
    let mut pos = 0;
    let mut n = 0;
    while pos < out.len() {
        pos = one_reply(out, pos, 0)?;
        n += 1;
    }
    Ok(n)
}

/// Replies nest no deeper than this (EXEC of HGETALLs is 3).
const REPLY_DEPTH_MAX: usize = 8;

fn one_reply(out: &[u8], pos: usize, depth: usize) -> Result<usize, Violation> {
    let bad = |what: &str| {
        Violation(format!(
            "malformed reply at byte {pos}: {what}: {:?}",
            String::from_utf8_lossy(&out[pos..out.len().min(pos + 80)])
        ))
    };
    if depth > REPLY_DEPTH_MAX {
        return Err(bad("nested too deep"));
    }
    let end = out[pos..]
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|i| pos + i)
        .ok_or_else(|| bad("no CRLF"))?;
    let line = &out[pos + 1..end];
    let next = end + 2;
    let number = || -> Result<i64, Violation> {
        std::str::from_utf8(line)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("not a number"))
    };
    match out[pos] {
        b'+' => Ok(next),
        b'-' => {
            let code_len = line.iter().position(|b| *b == b' ').unwrap_or(line.len());
            let code = &line[..code_len];
            if code.is_empty() || !code.iter().all(|b| b.is_ascii_uppercase()) {
                return Err(bad("an error without a code word"));
            }
            if line.starts_with(b"ERR internal") {
                return Err(bad("an internal error"));
            }
            Ok(next)
        }
        b':' => number().map(|_| next),
        b'_' if line.is_empty() => Ok(next),
        b'$' | b'=' => match number()? {
            -1 if out[pos] == b'$' => Ok(next),
            len if len >= 0 => {
                let stop = next + len as usize;
                if out.get(stop..stop + 2) != Some(&b"\r\n"[..]) {
                    return Err(bad("a bulk string of the wrong length"));
                }
                Ok(stop + 2)
            }
            _ => Err(bad("a negative length")),
        },
        b'*' | b'%' => {
            let items = match number()? {
                -1 if out[pos] == b'*' => return Ok(next),
                n if n >= 0 => n as usize * if out[pos] == b'%' { 2 } else { 1 },
                _ => return Err(bad("a negative count")),
            };
            let mut p = next;
            for _ in 0..items {
                if p >= out.len() {
                    return Err(bad("fewer elements than announced"));
                }
                p = one_reply(out, p, depth + 1)?;
            }
            Ok(p)
        }
        _ => Err(bad("an unknown type byte")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(input: &[u8]) -> Fed {
        let mut s = Standalone::new(Config::default());
        s.feed(input)
            .unwrap_or_else(|v| panic!("{input:?}: {}", v.0))
    }

    #[test]
    fn commands_are_served_by_the_in_memory_shard() {
        let fed = run(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\nGET k\r\nHSET h f 1\r\nHINCRBY h f 2\r\nHGETALL h\r\n");
        assert_eq!(fed.commands, 5);
        assert_eq!(
            fed.replies,
            b"+OK\r\n$1\r\nv\r\n:1\r\n:3\r\n*2\r\n$1\r\nf\r\n$1\r\n3\r\n"
        );
    }

    #[test]
    fn errors_are_typed_and_bad_bytes_close() {
        let fed = run(b"INCR\r\nGET a b\r\nLPUSH l x\r\n*1\r\n$x\r\n");
        assert!(fed.closed);
        assert_eq!(check_replies(&fed.replies), Ok(4));
        assert!(fed.replies.starts_with(b"-ERR wrong number of arguments"));
    }

    #[test]
    fn the_reply_checker_refuses_untyped_errors_and_short_replies() {
        assert!(check_replies(b"-oops\r\n").is_err());
        assert!(check_replies(b"-ERR internal: x\r\n").is_err());
        assert!(check_replies(b"*2\r\n:1\r\n").is_err());
        assert!(check_replies(b"$3\r\nab\r\n").is_err());
        assert_eq!(check_replies(b"%1\r\n+a\r\n_\r\n=7\r\ntxt:abc\r\n"), Ok(2));
    }
}
