//! stategrid's native protocol, through the project's own types (`stategrid-proto`).
//!
//! | workload op       | request            | ok reply                 | miss / busy               |
//! |-------------------|--------------------|--------------------------|---------------------------|
//! | get               | `Read`             | `Value` (+ trailer)      | `Error(NotFound)` = miss  |
//! | put               | `Put`              | `Written`                |                           |
//! | read-and-lock     | `ReadAndLock`      | `Value { lock_token }`   | `NotFound` = miss, `Locked` = busy |
//! | update-and-unlock | `UpdateAndUnlock`  | `Written`                |                           |
//! | session-create    | `Add`              | `Written`                | `AlreadyExists` = busy    |
//!
//! Session writes carry a sliding timeout (`--session-timeout`), as a session provider's do.
//! A connection first sends `Hello` and `NsOpen` (namespace `loadgen` unless told otherwise) and
//! addresses every key in the namespace id the server returns. Shard-aware (the default), the
//! greeting is `HelloShard` asking for one shard, and the worker sends the connection only keys
//! that shard owns (see [`Codec::shard_layout`]).
//!
//! Cost per request: one rkyv serialization into the send buffer (the request structs are
//! kept and only their key bytes rewritten, so nothing allocates), one validated in-place read
//! of the reply archive. The receive buffer must start 8-aligned (see `conn::RecvBuf`).

use stategrid_proto::frame;
use stategrid_proto::{
    ArchivedResponse, ErrorCode, Key, PROTOCOL_VERSION, Request as Msg, Timeout, TimeoutKind,
    WriteOpts, decode_response, encode_request,
};

use super::{Codec, Parsed, ProtocolError, Reply, Request, ServerError, ShardLayout, Status};
use crate::workload::{OpKind, VALUE_BYTES_MAX};

/// Largest reply frame accepted: the largest value plus room for the archive.
pub const FRAME_BYTES_MAX: usize = VALUE_BYTES_MAX + (1 << 16);

/// Request ids of the handshake frames (workload requests use their slot index).
const ID_HELLO: u32 = u32::MAX;
const ID_NS_OPEN: u32 = u32::MAX - 1;
const ID_AUTH: u32 = u32::MAX - 2;

pub struct Native {
    namespace: String,
    ns: u32,
    handshake_step: u8,
    server: String,
    /// The shard the next handshake asks for.
    ask_shard: Option<u32>,
    /// (shards, shard) from the last `HelloShardOk`.
    served_by: Option<(u32, u32)>,
    /// `Auth` sent between `Hello` and `NsOpen`, when credentials were given.
    auth: Option<Msg>,
    // Kept between requests so encoding only rewrites the key (no allocation).
    read: Msg,
    put: Msg,
    lock: Msg,
    update: Msg,
    create: Msg,
}

fn key() -> Key {
    Key {
        ns: 0,
        key: Vec::with_capacity(64),
    }
}

impl Native {
    /// `session_timeout_s` 0 means session writes carry no timeout.
    pub fn new(namespace: &str, session_timeout_s: u32) -> Self {
        let session_opts = WriteOpts {
            timeout: (session_timeout_s > 0).then_some(Timeout {
                timeout_s: session_timeout_s,
                kind: TimeoutKind::Sliding,
            }),
            evictable: true,
            content_type_bytes: 0,
        };
        Native {
            namespace: namespace.to_owned(),
            ns: 0,
            handshake_step: 0,
            server: String::new(),
            ask_shard: None,
            served_by: None,
            auth: None,
            read: Msg::Read { key: key() },
            put: Msg::Put {
                key: key(),
                opts: WriteOpts::default(),
            },
            lock: Msg::ReadAndLock { key: key() },
            update: Msg::UpdateAndUnlock {
                key: key(),
                opts: session_opts,
                lock_token: 0,
            },
            // Create only, as a session provider does: a put would clear the lock another
            // connection just took on a session both found missing (its update-and-unlock then
            // fails with LockLost).
            create: Msg::Add {
                key: key(),
                opts: session_opts,
            },
        }
    }

    /// Authenticate every connection as `user` (None: `default`) after `Hello`.
    pub fn with_auth(mut self, auth: Option<(Option<String>, String)>) -> Self {
        self.auth = auth.map(|(user, password)| Msg::Auth { user, password });
        self
    }

    /// The namespace id the server returned to `NsOpen`.
    pub fn namespace_id(&self) -> u32 {
        self.ns
    }

    /// The server's name from `HelloOk`.
    pub fn server(&self) -> &str {
        &self.server
    }
}

/// Points `msg`'s key at (`ns`, `bytes`), reusing its buffer.
#[inline]
fn set_key(msg: &mut Msg, ns: u32, bytes: &[u8]) {
    let k = match msg {
        Msg::Read { key }
        | Msg::ReadAndLock { key }
        | Msg::Put { key, .. }
        | Msg::Add { key, .. }
        | Msg::UpdateAndUnlock { key, .. } => key,
        _ => unreachable!("only keyed requests are kept"),
    };
    k.ns = ns;
    k.key.clear();
    k.key.extend_from_slice(bytes);
}

fn variant(r: &ArchivedResponse) -> &'static str {
    match r {
        ArchivedResponse::HelloOk { .. } => "HelloOk",
        ArchivedResponse::Ok => "Ok",
        ArchivedResponse::Namespace { .. } => "Namespace",
        ArchivedResponse::Namespaces { .. } => "Namespaces",
        ArchivedResponse::Count { .. } => "Count",
        ArchivedResponse::Written { .. } => "Written",
        ArchivedResponse::Value { .. } => "Value",
        ArchivedResponse::Meta { .. } => "Meta",
        ArchivedResponse::Keys { .. } => "Keys",
        ArchivedResponse::Multi { .. } => "Multi",
        ArchivedResponse::Bulk { .. } => "Bulk",
        ArchivedResponse::Stats(_) => "Stats",
        ArchivedResponse::Map(_) => "Map",
        ArchivedResponse::Error(_) => "Error",
        ArchivedResponse::Int { .. } => "Int",
        ArchivedResponse::Nil => "Nil",
        ArchivedResponse::Items { .. } => "Items",
        ArchivedResponse::HelloShardOk { .. } => "HelloShardOk",
    }
}

impl Codec for Native {
    fn name(&self) -> &'static str {
        "native"
    }

    fn handshake(&mut self, out: &mut Vec<u8>) -> usize {
        self.handshake_step = 0;
        self.served_by = None;
        let client = "loadgen".to_owned();
        let hello = match self.ask_shard {
            Some(shard) => Msg::HelloShard {
                version: PROTOCOL_VERSION,
                client,
                shard,
            },
            None => Msg::Hello {
                version: PROTOCOL_VERSION,
                client,
            },
        };
        encode_request(out, ID_HELLO, &hello, &[]);
        if let Some(auth) = &self.auth {
            encode_request(out, ID_AUTH, auth, &[]);
        }
        let open = Msg::NsOpen {
            name: self.namespace.clone(),
        };
        encode_request(out, ID_NS_OPEN, &open, &[]);
        2 + self.auth.is_some() as usize
    }

    fn parse_handshake(&mut self, buf: &[u8]) -> Result<Option<usize>, String> {
        let p = match frame::parse(buf, FRAME_BYTES_MAX) {
            Ok(Some(p)) => p,
            Ok(None) => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        let r = decode_response(p.archive).map_err(|e| format!("handshake reply: {e}"))?;
        // Steps: 0 Hello, then Auth (when sent), then NsOpen (step 1 below).
        if self.auth.is_some() && self.handshake_step == 1 {
            return match r {
                ArchivedResponse::Ok => {
                    self.handshake_step = 2;
                    Ok(Some(p.frame_bytes))
                }
                ArchivedResponse::Error(e) => Err(format!("server refused Auth: {}", e.to_reply())),
                other => Err(format!("expected Ok to Auth, got {}", variant(other))),
            };
        }
        let step = if self.auth.is_some() && self.handshake_step == 2 {
            1
        } else {
            self.handshake_step
        };
        match (step, r) {
            (0, ArchivedResponse::HelloOk { server, .. }) => {
                self.server = server.as_str().to_owned()
            }
            (
                0,
                ArchivedResponse::HelloShardOk {
                    server,
                    shards,
                    shard,
                    ..
                },
            ) => {
                self.server = server.as_str().to_owned();
                self.served_by = Some((shards.to_native(), shard.to_native()));
            }
            (1, ArchivedResponse::Namespace { id }) => self.ns = id.to_native(),
            (step, ArchivedResponse::Error(e)) => {
                let what = if step == 0 { "Hello" } else { "NsOpen" };
                return Err(format!("server refused {what}: {}", e.to_reply()));
            }
            (step, other) => {
                let want = if step == 0 { "HelloOk" } else { "Namespace" };
                return Err(format!("expected {want}, got {}", variant(other)));
            }
        }
        self.handshake_step += 1;
        Ok(Some(p.frame_bytes))
    }

    #[inline]
    fn encode(&mut self, req: &Request<'_>, out: &mut Vec<u8>) {
        let msg = match req.kind {
            OpKind::Get => &mut self.read,
            OpKind::Put => &mut self.put,
            OpKind::LockRead => &mut self.lock,
            OpKind::UpdateUnlock => {
                if let Msg::UpdateAndUnlock { lock_token, .. } = &mut self.update {
                    *lock_token = req.token;
                }
                &mut self.update
            }
            OpKind::SessionCreate => &mut self.create,
        };
        set_key(msg, self.ns, req.key);
        let value = if req.kind.writes() { req.value } else { &[] };
        encode_request(out, req.id, msg, value);
    }

    fn ask_shard(&mut self, shard: Option<u32>) {
        self.ask_shard = shard;
    }

    fn shard_layout(&self) -> Option<ShardLayout> {
        let (shards, shard) = self.served_by?;
        Some(ShardLayout {
            shards,
            shard,
            ns: self.ns,
        })
    }

    /// Classifies by the reply alone (`expect` is not needed: the echoed id names the request).
    #[inline]
    fn parse(&mut self, buf: &[u8], _expect: OpKind) -> Result<Parsed, ProtocolError> {
        let p = match frame::parse(buf, FRAME_BYTES_MAX) {
            Ok(Some(p)) => p,
            Ok(None) => return Ok(Parsed::Incomplete),
            Err(e) => return Err(ProtocolError(e.to_string())),
        };
        let id = p.header.request_id;
        let r = decode_response(p.archive)
            .map_err(|e| ProtocolError(format!("reply to request {id}: {e}")))?;
        let (status, token) = match r {
            ArchivedResponse::Value { lock_token, .. } => {
                (Status::Ok, lock_token.as_ref().map(|t| t.to_native()))
            }
            ArchivedResponse::Written { .. } | ArchivedResponse::Ok => (Status::Ok, None),
            ArchivedResponse::Error(e) => match e.code.to_native() {
                ErrorCode::NotFound => (Status::Miss, None),
                // Locked by another; or, for a session create, created by another meanwhile.
                ErrorCode::Locked | ErrorCode::AlreadyExists => (Status::Busy, None),
                code => (Status::Error(ServerError::new(&format!("{code:?}"))), None),
            },
            other => {
                return Err(ProtocolError(format!(
                    "unexpected {} reply to request {id}",
                    variant(other)
                )));
            }
        };
        Ok(Parsed::Complete {
            reply: Reply {
                status,
                token,
                id: Some(id),
            },
            used: p.frame_bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::RecvBuf;
    use stategrid_proto::{
        ArchivedRequest, ErrorReply, HEADER_BYTES, Meta, Response, decode_request, encode_response,
    };

    fn meta(value_bytes: u32) -> Meta {
        Meta {
            value_bytes,
            version: 1,
            created_ms: 0,
            updated_ms: 0,
            timeout: Timeout::default(),
            expires_in_ms: None,
            lock: None,
            evictable: true,
            content_type_bytes: 0,
        }
    }

    fn aligned(bytes: &[u8]) -> RecvBuf {
        let mut b = RecvBuf::new(bytes.len().max(64));
        b.spare()[..bytes.len()].copy_from_slice(bytes);
        b.filled(bytes.len());
        b
    }

    fn req(
        kind: OpKind,
        key: &'static [u8],
        value: &'static [u8],
        token: u64,
        id: u32,
    ) -> Request<'static> {
        Request {
            kind,
            key,
            value,
            token,
            id,
        }
    }

    #[test]
    fn handshake_sends_hello_then_ns_open_and_takes_the_id() {
        let mut c = Native::new("loadgen", 0);
        let mut out = Vec::new();
        assert_eq!(c.handshake(&mut out), 2);
        let b = aligned(&out);
        let p = frame::parse(b.data(), 1 << 20).unwrap().unwrap();
        assert!(
            matches!(decode_request(p.archive).unwrap(), ArchivedRequest::Hello { version, client }
            if version.to_native() == PROTOCOL_VERSION && client.as_str() == "loadgen")
        );
        let p2 = frame::parse(&b.data()[p.frame_bytes..], 1 << 20)
            .unwrap()
            .unwrap();
        assert!(
            matches!(decode_request(p2.archive).unwrap(), ArchivedRequest::NsOpen { name } if name.as_str() == "loadgen")
        );

        let mut replies = Vec::new();
        let hello = Response::HelloOk {
            version: 1,
            server: "echo".into(),
            shards: 1,
            partitions: 1024,
        };
        encode_response(&mut replies, ID_HELLO, &hello, &[]);
        encode_response(
            &mut replies,
            ID_NS_OPEN,
            &Response::Namespace { id: 77 },
            &[],
        );
        let b = aligned(&replies);
        // Every strict prefix of the first reply is incomplete.
        let first = frame::parse(b.data(), 1 << 20)
            .unwrap()
            .unwrap()
            .frame_bytes;
        for cut in 0..first {
            assert_eq!(c.parse_handshake(&b.data()[..cut]), Ok(None));
        }
        assert_eq!(c.parse_handshake(b.data()), Ok(Some(first)));
        assert_eq!(c.server(), "echo");
        let used = c.parse_handshake(&b.data()[first..]).unwrap().unwrap();
        assert_eq!(first + used, replies.len());
        assert_eq!(c.namespace_id(), 77);
    }

    #[test]
    fn handshake_refusal_is_reported_in_words() {
        let mut c = Native::new("loadgen", 0);
        c.handshake(&mut Vec::new());
        let mut r = Vec::new();
        let e = ErrorReply::new(ErrorCode::UnsupportedVersion, 0);
        encode_response(&mut r, ID_HELLO, &Response::Error(e), &[]);
        let err = c.parse_handshake(aligned(&r).data()).unwrap_err();
        assert!(err.contains("refused Hello"), "{err}");
        assert!(err.contains("protocol version"), "{err}");
        let err = Native::new("x", 0)
            .parse_handshake(aligned(b"+PONG\r\n+PONG\r\n+PONG\r\n").data())
            .unwrap_err();
        assert!(err.contains("magic"), "{err}");
    }

    #[test]
    fn encodes_each_op_as_the_right_request() {
        let mut c = Native::new("loadgen", 1200);
        c.ns = 5;
        let mut out = Vec::new();
        c.encode(
            &req(OpKind::Get, b"lg:0000000001", b"ignored", 0, 1),
            &mut out,
        );
        c.encode(
            &req(OpKind::Put, b"lg:0000000002", b"hello", 0, 2),
            &mut out,
        );
        c.encode(
            &req(OpKind::LockRead, b"lg:0000000003", b"", 0, 3),
            &mut out,
        );
        c.encode(
            &req(OpKind::UpdateUnlock, b"lg:0000000003", b"world!", 0xabc, 4),
            &mut out,
        );
        c.encode(
            &req(OpKind::SessionCreate, b"lg:0000000004", b"new", 9, 5),
            &mut out,
        );
        let b = aligned(&out);
        let mut buf = b.data();
        let mut seen = Vec::new();
        while !buf.is_empty() {
            let p = frame::parse(buf, 1 << 20).unwrap().unwrap();
            // Header bytes: magic "SG", no flags, the slot id last.
            assert_eq!(&buf[..4], &[0x47, 0x53, 0, 0]);
            assert_eq!(&buf[12..HEADER_BYTES], &p.header.request_id.to_le_bytes());
            let r = decode_request(p.archive).unwrap();
            let key = r.key().unwrap();
            assert_eq!(key.ns.to_native(), 5);
            let summary = match r {
                ArchivedRequest::Read { .. } => "read".to_string(),
                ArchivedRequest::Put { opts, .. } => format!(
                    "put timeout={:?}",
                    opts.to_native().timeout.map(|t| t.timeout_s)
                ),
                ArchivedRequest::Add { opts, .. } => format!(
                    "add timeout={:?}",
                    opts.to_native().timeout.map(|t| t.timeout_s)
                ),
                ArchivedRequest::ReadAndLock { .. } => "lock".to_string(),
                ArchivedRequest::UpdateAndUnlock {
                    lock_token, opts, ..
                } => {
                    let t = opts.to_native().timeout.unwrap();
                    assert_eq!(t.kind, TimeoutKind::Sliding);
                    format!(
                        "update token={:#x} timeout={}",
                        lock_token.to_native(),
                        t.timeout_s
                    )
                }
                other => panic!("{other:?}"),
            };
            seen.push((
                p.header.request_id,
                key.key.as_slice().to_vec(),
                p.value.to_vec(),
                summary,
            ));
            buf = &buf[p.frame_bytes..];
        }
        let want: Vec<(u32, Vec<u8>, Vec<u8>, String)> = vec![
            (1, b"lg:0000000001".to_vec(), b"".to_vec(), "read".into()),
            (
                2,
                b"lg:0000000002".to_vec(),
                b"hello".to_vec(),
                "put timeout=None".into(),
            ),
            (3, b"lg:0000000003".to_vec(), b"".to_vec(), "lock".into()),
            (
                4,
                b"lg:0000000003".to_vec(),
                b"world!".to_vec(),
                "update token=0xabc timeout=1200".into(),
            ),
            (
                5,
                b"lg:0000000004".to_vec(),
                b"new".to_vec(),
                "add timeout=Some(1200)".into(),
            ),
        ];
        assert_eq!(seen, want);
    }

    fn reply_of(resp: &Response, value: &[u8], id: u32) -> Result<Parsed, ProtocolError> {
        let mut r = Vec::new();
        encode_response(&mut r, id, resp, value);
        let b = aligned(&r);
        let mut c = Native::new("loadgen", 0);
        for cut in 0..r.len() {
            assert_eq!(
                c.parse(&b.data()[..cut], OpKind::Get),
                Ok(Parsed::Incomplete),
                "cut {cut}"
            );
        }
        c.parse(b.data(), OpKind::Get)
    }

    fn complete(
        status: Status,
        token: Option<u64>,
        id: u32,
        used: usize,
    ) -> Result<Parsed, ProtocolError> {
        Ok(Parsed::Complete {
            reply: Reply {
                status,
                token,
                id: Some(id),
            },
            used,
        })
    }

    #[test]
    fn parses_replies_to_statuses() {
        let value = Response::Value {
            meta: meta(5),
            lock_token: None,
        };
        // header 16 + archive padded + value 5 padded to 8
        let Ok(Parsed::Complete { used, .. }) = reply_of(&value, b"12345", 3) else {
            panic!()
        };
        assert_eq!(used % 8, 0);
        assert_eq!(
            reply_of(&value, b"12345", 3),
            complete(Status::Ok, None, 3, used)
        );
        let locked = Response::Value {
            meta: meta(0),
            lock_token: Some(42),
        };
        let r = reply_of(&locked, b"", 7).unwrap();
        assert!(matches!(
            r,
            Parsed::Complete {
                reply: Reply {
                    status: Status::Ok,
                    token: Some(42),
                    id: Some(7)
                },
                ..
            }
        ));
        let w = reply_of(&Response::Written { version: 3 }, b"", 1).unwrap();
        assert!(matches!(
            w,
            Parsed::Complete {
                reply: Reply {
                    status: Status::Ok,
                    token: None,
                    ..
                },
                ..
            }
        ));
        let err = |code| Response::Error(ErrorReply::new(code, 0));
        let status = |p: Parsed| match p {
            Parsed::Complete { reply, .. } => reply.status,
            Parsed::Incomplete => panic!(),
        };
        assert_eq!(
            status(reply_of(&err(ErrorCode::NotFound), b"", 1).unwrap()),
            Status::Miss
        );
        assert_eq!(
            status(reply_of(&err(ErrorCode::Locked), b"", 1).unwrap()),
            Status::Busy
        );
        // A session another connection created first.
        assert_eq!(
            status(reply_of(&err(ErrorCode::AlreadyExists), b"", 1).unwrap()),
            Status::Busy
        );
        assert_eq!(
            status(reply_of(&err(ErrorCode::LowMemory), b"", 1).unwrap()),
            Status::Error(ServerError::new("LowMemory"))
        );
        // A well-framed reply of a kind no workload request gets is a protocol error.
        let e = reply_of(&Response::Count { objects: 1 }, b"", 1).unwrap_err();
        assert!(e.0.contains("unexpected Count"), "{e}");
    }

    #[test]
    fn two_replies_in_one_buffer_parse_one_at_a_time() {
        let mut r = Vec::new();
        encode_response(&mut r, 1, &Response::Written { version: 1 }, &[]);
        let first = r.len();
        encode_response(
            &mut r,
            2,
            &Response::Value {
                meta: meta(3),
                lock_token: None,
            },
            b"abc",
        );
        let b = aligned(&r);
        let mut c = Native::new("loadgen", 0);
        let Ok(Parsed::Complete { used, reply }) = c.parse(b.data(), OpKind::Put) else {
            panic!()
        };
        assert_eq!((used, reply.id), (first, Some(1)));
        let Ok(Parsed::Complete { used, reply }) = c.parse(&b.data()[first..], OpKind::Get) else {
            panic!()
        };
        assert_eq!((first + used, reply.id), (r.len(), Some(2)));
    }

    #[test]
    fn broken_bytes_are_protocol_errors() {
        let mut c = Native::new("loadgen", 0);
        // A RESP server answering on the native port.
        let b = aligned(b"-ERR unknown command\r\n\0\0");
        assert!(
            c.parse(b.data(), OpKind::Get)
                .unwrap_err()
                .0
                .contains("magic")
        );
        // A good header over a garbage archive.
        let mut r = Vec::new();
        encode_response(&mut r, 1, &Response::Ok, &[]);
        for x in &mut r[HEADER_BYTES..] {
            *x = 0xff;
        }
        let b = aligned(&r);
        assert!(c.parse(b.data(), OpKind::Get).is_err());
    }
}
