//! Unit tests: framing and request-id matching over in-memory streams, and the pool's
//! timeout / reconnect behaviour against a scripted server on loopback. (Tests against the
//! real server live in the workspace's `tests/`.)

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rkyv::rancor;
use stategrid_proto::frame::{self, HEADER_BYTES};
use stategrid_proto::{
    ErrorCode, ErrorReply, ItemResult, Meta, PROTOCOL_VERSION, PutResult, Request, Response,
    Timeout, decode_request, encode_response,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpListener;

use crate::conn::{Conn, ConnSettings, RecvBuf};
use crate::{Client, ClientConfig, Error, WriteOptions};

const FRAME_BYTES_MAX: usize = 1 << 24;

fn settings(inflight_per_conn_max: usize) -> ConnSettings {
    ConnSettings {
        inflight_per_conn_max,
        frame_bytes_max: FRAME_BYTES_MAX,
        recv_buffer_bytes: 64,
        client_name: "unit-test".into(),
        shard: None,
        credentials: None,
    }
}

fn meta(value_bytes: usize, version: u64) -> Meta {
    Meta {
        value_bytes: value_bytes as u32,
        version,
        created_ms: 1,
        updated_ms: 2,
        timeout: Timeout::default(),
        expires_in_ms: None,
        lock: None,
        evictable: true,
        content_type_bytes: 0,
    }
}

fn hello_ok() -> Response {
    Response::HelloOk {
        version: PROTOCOL_VERSION,
        server: "fake".into(),
        shards: 1,
        partitions: 1024,
    }
}

/// Reads one request frame on the server side: (request id, request, trailer).
async fn read_request<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut RecvBuf,
) -> Option<(u32, Request, Vec<u8>)> {
    let n = buf.fill_frame(rd, FRAME_BYTES_MAX).await.ok()?;
    let p = frame::parse(buf.filled(), FRAME_BYTES_MAX)
        .unwrap()
        .unwrap();
    assert_eq!(
        p.archive.as_ptr() as usize % 8,
        0,
        "server-side archive misaligned"
    );
    let req =
        rkyv::deserialize::<Request, rancor::Error>(decode_request(p.archive).unwrap()).unwrap();
    let out = (p.header.request_id, req, p.value.to_vec());
    buf.consume(n);
    Some(out)
}

async fn write_response<W: AsyncWrite + Unpin>(wr: &mut W, id: u32, resp: &Response, value: &[u8]) {
    let mut out = Vec::new();
    encode_response(&mut out, id, resp, value);
    wr.write_all(&out).await.unwrap();
}

/// Answers the client's Hello on the server side of a stream.
async fn accept_hello<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    rd: &mut R,
    wr: &mut W,
    buf: &mut RecvBuf,
) {
    let (id, req, _) = read_request(rd, buf).await.expect("hello");
    assert_eq!(id, 0);
    // Shard-aware clients ask for a shard; this fake answers as a server with one shard that
    // does not route by shard (HelloOk), so the client does not either.
    assert!(matches!(
        req,
        Request::Hello {
            version: PROTOCOL_VERSION,
            ..
        } | Request::HelloShard {
            version: PROTOCOL_VERSION,
            ..
        }
    ));
    write_response(wr, 0, &hello_ok(), b"").await;
}

/// A server from before shard-aware connections answers `HelloShard` with `InvalidRequest`
/// and still waits for a Hello: the client greets it again with `Hello` on the same stream.
#[tokio::test]
async fn hello_shard_falls_back_to_hello_on_an_old_server() {
    let (client_side, server_side) = tokio::io::duplex(1 << 16);
    let (crd, cwr) = tokio::io::split(client_side);
    let (mut srd, mut swr) = tokio::io::split(server_side);
    let server = tokio::spawn(async move {
        let mut buf = RecvBuf::new(64);
        let (id, req, _) = read_request(&mut srd, &mut buf).await.expect("hello-shard");
        assert_eq!(id, 0);
        assert!(
            matches!(req, Request::HelloShard { shard: 3, .. }),
            "{req:?}"
        );
        let refusal = Response::Error(ErrorReply::new(ErrorCode::InvalidRequest, 0));
        write_response(&mut swr, 0, &refusal, b"").await;
        let (id, req, _) = read_request(&mut srd, &mut buf).await.expect("hello");
        assert_eq!(id, 0);
        assert!(matches!(req, Request::Hello { .. }), "{req:?}");
        write_response(&mut swr, 0, &hello_ok(), b"").await;
        (srd, swr)
    });
    let mut s = settings(8);
    s.shard = Some(3);
    let conn = Conn::handshake(crd, cwr, "old", &s)
        .await
        .expect("handshake");
    assert_eq!(
        conn.server.shard, None,
        "an old server serves where it lands"
    );
    let _keep = server.await.unwrap();
}

/// An `AsyncRead` that hands out its bytes `chunk_bytes` at a time.
struct Chunked {
    bytes: Vec<u8>,
    pos: usize,
    chunk_bytes: usize,
}

impl AsyncRead for Chunked {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let n = self
            .chunk_bytes
            .min(out.remaining())
            .min(self.bytes.len() - self.pos);
        let pos = self.pos;
        out.put_slice(&self.bytes[pos..pos + n]);
        self.pos += n;
        std::task::Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn frames_split_anywhere_arrive_whole_and_aligned() {
    let sizes = [0usize, 1, 7, 8, 9, 100, 5000, 70_000, 3];
    let mut stream = Vec::new();
    for (i, size) in sizes.iter().enumerate() {
        let value: Vec<u8> = (0..*size).map(|b| (b * 7 + i) as u8).collect();
        let resp = Response::Value {
            meta: meta(*size, i as u64),
            lock_token: None,
        };
        encode_response(&mut stream, i as u32, &resp, &value);
    }
    for chunk_bytes in [1, 3, 8, 13, 4096, 1 << 20] {
        let mut rd = Chunked {
            bytes: stream.clone(),
            pos: 0,
            chunk_bytes,
        };
        // A tiny buffer forces both compaction and growth.
        let mut buf = RecvBuf::new(64);
        for (i, size) in sizes.iter().enumerate() {
            let n = buf.fill_frame(&mut rd, FRAME_BYTES_MAX).await.unwrap();
            let p = frame::parse(buf.filled(), FRAME_BYTES_MAX)
                .unwrap()
                .unwrap();
            assert_eq!(
                p.archive.as_ptr() as usize % 8,
                0,
                "chunk {chunk_bytes} frame {i}"
            );
            assert_eq!(p.header.request_id, i as u32);
            assert_eq!(p.value.len(), *size);
            assert!(
                p.value
                    .iter()
                    .enumerate()
                    .all(|(b, v)| *v == (b * 7 + i) as u8)
            );
            let a = stategrid_proto::decode_response(p.archive).unwrap();
            assert!(matches!(a, stategrid_proto::ArchivedResponse::Value { .. }));
            buf.consume(n);
        }
        assert!(matches!(
            buf.fill_frame(&mut rd, FRAME_BYTES_MAX).await,
            Err(crate::conn::ReadFailure::Eof)
        ));
    }
}

#[tokio::test]
async fn eof_inside_a_frame_and_bad_headers_are_told_apart() {
    let mut stream = Vec::new();
    encode_response(&mut stream, 1, &Response::Ok, b"abc");
    stream.truncate(stream.len() - 4);
    let mut rd = Chunked {
        bytes: stream,
        pos: 0,
        chunk_bytes: 5,
    };
    let mut buf = RecvBuf::new(64);
    assert!(matches!(
        buf.fill_frame(&mut rd, FRAME_BYTES_MAX).await,
        Err(crate::conn::ReadFailure::EofMidFrame)
    ));

    let mut rd = Chunked {
        bytes: b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec(),
        pos: 0,
        chunk_bytes: 64,
    };
    let mut buf = RecvBuf::new(64);
    assert!(matches!(
        buf.fill_frame(&mut rd, FRAME_BYTES_MAX).await,
        Err(crate::conn::ReadFailure::Frame(
            frame::FrameError::BadMagic { .. }
        ))
    ));
}

/// Starts a connection over an in-memory duplex; returns it and the server's halves.
async fn duplex_conn(
    inflight_per_conn_max: usize,
) -> (
    Arc<Conn>,
    tokio::io::ReadHalf<tokio::io::DuplexStream>,
    tokio::io::WriteHalf<tokio::io::DuplexStream>,
    RecvBuf,
) {
    let (client_side, server_side) = tokio::io::duplex(1 << 16);
    let (crd, cwr) = tokio::io::split(client_side);
    let (mut srd, mut swr) = tokio::io::split(server_side);
    let server = tokio::spawn(async move {
        let mut buf = RecvBuf::new(4096);
        accept_hello(&mut srd, &mut swr, &mut buf).await;
        (srd, swr, buf)
    });
    let conn = Conn::handshake(crd, cwr, "duplex", &settings(inflight_per_conn_max))
        .await
        .unwrap();
    assert_eq!(conn.server.server, "fake");
    let (srd, swr, buf) = server.await.unwrap();
    (Arc::new(conn), srd, swr, buf)
}

fn count_req(n: u64) -> Request {
    Request::NsCount { ns: n as u32 }
}

#[tokio::test]
async fn answers_out_of_order_reach_their_own_callers() {
    let (conn, mut srd, mut swr, mut buf) = duplex_conn(64).await;
    let mut calls = tokio::task::JoinSet::new();
    for n in 0..50u64 {
        let conn = Arc::clone(&conn);
        calls.spawn(async move {
            let reply = conn.call(&count_req(n), &[]).await.unwrap();
            assert_eq!(reply.response, Response::Count { objects: n * 10 });
            assert_eq!(reply.trailer, n.to_le_bytes());
        });
    }
    let mut received = Vec::new();
    while received.len() < 50 {
        let (id, req, _) = read_request(&mut srd, &mut buf).await.unwrap();
        let Request::NsCount { ns } = req else {
            panic!("{req:?}")
        };
        received.push((id, ns as u64));
    }
    let mut ids: Vec<u32> = received.iter().map(|r| r.0).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 50, "request ids must be unique");
    assert!(!ids.contains(&0), "id 0 is Hello's");
    for (id, n) in received.into_iter().rev() {
        let resp = Response::Count { objects: n * 10 };
        write_response(&mut swr, id, &resp, &n.to_le_bytes()).await;
    }
    while let Some(done) = calls.join_next().await {
        done.unwrap();
    }
}

#[tokio::test]
async fn in_flight_requests_never_exceed_the_limit() {
    const LIMIT: usize = 4;
    const CALLS: usize = 11;
    let (conn, mut srd, mut swr, mut buf) = duplex_conn(LIMIT).await;
    let mut calls = tokio::task::JoinSet::new();
    for n in 0..CALLS as u64 {
        let conn = Arc::clone(&conn);
        calls.spawn(async move { conn.call(&count_req(n), &[]).await.unwrap() });
    }
    let mut answered = 0;
    let mut peak = 0;
    while answered < CALLS {
        // Collect what arrives until the client goes quiet, then answer all of it.
        let mut batch = Vec::new();
        loop {
            match tokio::time::timeout(Duration::from_millis(50), read_request(&mut srd, &mut buf))
                .await
            {
                Ok(Some((id, _, _))) => batch.push(id),
                Ok(None) => panic!("client closed"),
                Err(_) => break,
            }
        }
        assert!(
            batch.len() <= LIMIT,
            "{} in flight, limit {LIMIT}",
            batch.len()
        );
        peak = peak.max(batch.len());
        for id in batch {
            write_response(&mut swr, id, &Response::Count { objects: 0 }, b"").await;
            answered += 1;
        }
    }
    assert_eq!(peak, LIMIT, "the pipeline should fill up to the limit");
    while let Some(done) = calls.join_next().await {
        done.unwrap();
    }
}

#[tokio::test]
async fn a_dead_connection_fails_waiting_and_later_requests() {
    let (conn, mut srd, swr, mut buf) = duplex_conn(8).await;
    let waiting = {
        let conn = Arc::clone(&conn);
        tokio::spawn(async move { conn.call(&Request::NsList, &[]).await })
    };
    read_request(&mut srd, &mut buf).await.unwrap();
    drop((srd, swr));
    let err = waiting.await.unwrap().unwrap_err();
    assert!(matches!(err, Error::Closed { .. }), "{err}");
    assert!(conn.is_closed());
    let err = conn.call(&Request::NsList, &[]).await.unwrap_err();
    assert!(matches!(err, Error::Closed { .. }), "{err}");
}

#[tokio::test]
async fn garbage_from_the_server_is_a_protocol_error() {
    let (conn, mut srd, mut swr, mut buf) = duplex_conn(8).await;
    let waiting = {
        let conn = Arc::clone(&conn);
        tokio::spawn(async move { conn.call(&Request::NsList, &[]).await })
    };
    read_request(&mut srd, &mut buf).await.unwrap();
    swr.write_all(&[0xEE; 32]).await.unwrap();
    let err = waiting.await.unwrap().unwrap_err();
    assert!(matches!(err, Error::Protocol(_)), "{err}");
    assert!(conn.is_closed());
}

#[tokio::test]
async fn a_bad_archive_spoils_only_its_own_answer() {
    let (conn, mut srd, mut swr, mut buf) = duplex_conn(8).await;
    let first = {
        let conn = Arc::clone(&conn);
        tokio::spawn(async move { conn.call(&Request::NsList, &[]).await })
    };
    let (id, _, _) = read_request(&mut srd, &mut buf).await.unwrap();
    // A well-formed frame whose archive is junk.
    let mut out = vec![0u8; HEADER_BYTES + 16];
    frame::FrameHeader {
        archive_bytes: 16,
        value_bytes: 0,
        request_id: id,
    }
    .write_to((&mut out[..HEADER_BYTES]).try_into().unwrap());
    out[HEADER_BYTES..].fill(0xFF);
    swr.write_all(&out).await.unwrap();
    let err = first.await.unwrap().unwrap_err();
    assert!(matches!(err, Error::Protocol(_)), "{err}");
    assert!(!conn.is_closed());

    let second = {
        let conn = Arc::clone(&conn);
        tokio::spawn(async move { conn.call(&Request::NsList, &[]).await })
    };
    let (id, _, _) = read_request(&mut srd, &mut buf).await.unwrap();
    write_response(&mut swr, id, &Response::Namespaces { items: vec![] }, b"").await;
    assert!(second.await.unwrap().is_ok());
}

#[tokio::test]
async fn server_errors_arrive_typed() {
    let (conn, mut srd, mut swr, mut buf) = duplex_conn(8).await;
    let waiting = {
        let conn = Arc::clone(&conn);
        tokio::spawn(async move { conn.call(&Request::NsList, &[]).await })
    };
    let (id, _, _) = read_request(&mut srd, &mut buf).await.unwrap();
    let reply = ErrorReply::new(ErrorCode::LowMemory, 0);
    write_response(&mut swr, id, &Response::Error(reply.clone()), b"").await;
    let err = waiting.await.unwrap().unwrap_err();
    assert!(err.is_low_memory() && !err.is_connection());
    assert_eq!(err.reply(), Some(&reply));
}

async fn handshake_answered_with(resp: Response) -> Error {
    let (client_side, server_side) = tokio::io::duplex(4096);
    let (crd, cwr) = tokio::io::split(client_side);
    let (mut srd, mut swr) = tokio::io::split(server_side);
    tokio::spawn(async move {
        let mut buf = RecvBuf::new(4096);
        read_request(&mut srd, &mut buf).await.unwrap();
        write_response(&mut swr, 0, &resp, b"").await;
    });
    Conn::handshake(crd, cwr, "peer:1", &settings(8))
        .await
        .unwrap_err()
}

#[tokio::test]
async fn handshake_refusals_are_typed() {
    let err = handshake_answered_with(Response::Error(ErrorReply::new(
        ErrorCode::UnsupportedVersion,
        7,
    )))
    .await;
    assert!(
        matches!(
            err,
            Error::UnsupportedVersion {
                server_version: 7,
                client_version: PROTOCOL_VERSION,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("peer:1"));

    let err = handshake_answered_with(Response::Error(ErrorReply::new(
        ErrorCode::TooManyConnections,
        10,
    )))
    .await;
    assert_eq!(err.code(), Some(ErrorCode::TooManyConnections));

    let err = handshake_answered_with(Response::Ok).await;
    assert!(matches!(err, Error::Protocol(_)), "{err}");
}

// ---------------------------------------------------------------------------------------
// A scripted server on loopback, for the pool (TCP, timeouts, reconnects) and the typed API.

/// What the scripted server does with one request.
enum Action {
    Reply(Response, Vec<u8>),
    /// Answers after a delay, without holding up later requests.
    ReplyAfter(Duration, Response, Vec<u8>),
    /// Closes the connection.
    Close,
}

type Handler = dyn Fn(Request, Vec<u8>) -> Action + Send + Sync;

/// Runs on its own thread and runtime, so blocking clients can use it as well.
struct FakeServer {
    addr: String,
    connections: Arc<AtomicUsize>,
}

impl FakeServer {
    fn start(handler: impl Fn(Request, Vec<u8>) -> Action + Send + Sync + 'static) -> FakeServer {
        let handler: Arc<Handler> = Arc::new(handler);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&connections);
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = TcpListener::from_std(listener).unwrap();
                loop {
                    let (stream, _) = listener.accept().await.unwrap();
                    counter.fetch_add(1, Ordering::SeqCst);
                    let handler = Arc::clone(&handler);
                    tokio::spawn(async move {
                        let (mut rd, wr) = stream.into_split();
                        let wr = Arc::new(tokio::sync::Mutex::new(wr));
                        let mut buf = RecvBuf::new(4096);
                        {
                            let mut w = wr.lock().await;
                            accept_hello(&mut rd, &mut *w, &mut buf).await;
                        }
                        while let Some((id, req, value)) = read_request(&mut rd, &mut buf).await {
                            match handler(req, value) {
                                Action::Reply(resp, v) => {
                                    write_response(&mut *wr.lock().await, id, &resp, &v).await
                                }
                                Action::ReplyAfter(delay, resp, v) => {
                                    let wr = Arc::clone(&wr);
                                    tokio::spawn(async move {
                                        tokio::time::sleep(delay).await;
                                        let mut out = Vec::new();
                                        encode_response(&mut out, id, &resp, &v);
                                        let _ = wr.lock().await.write_all(&out).await;
                                    });
                                }
                                Action::Close => return,
                            }
                        }
                    });
                }
            });
        });
        FakeServer { addr, connections }
    }
}

fn config(connections: usize, request_timeout_ms: u64) -> ClientConfig {
    ClientConfig {
        connections,
        request_timeout_ms,
        ..ClientConfig::default()
    }
}

/// A tiny store for the scripted server: enough to check the typed API's encoding.
fn store_handler() -> impl Fn(Request, Vec<u8>) -> Action + Send + Sync + 'static {
    let objects: Mutex<std::collections::HashMap<Vec<u8>, Vec<u8>>> = Mutex::default();
    move |req, value| {
        let mut objects = objects.lock().unwrap();
        let reply = |r| Action::Reply(r, Vec::new());
        match req {
            Request::NsOpen { name } => reply(Response::Namespace {
                id: stategrid_proto::hash::namespace_id(&name),
            }),
            Request::Put { key, .. } => {
                objects.insert(key.key, value);
                reply(Response::Written { version: 1 })
            }
            Request::Read { key } => match objects.get(&key.key) {
                Some(v) => Action::Reply(
                    Response::Value {
                        meta: meta(v.len(), 1),
                        lock_token: None,
                    },
                    v.clone(),
                ),
                None => reply(Response::Error(ErrorReply::new(ErrorCode::NotFound, 0))),
            },
            Request::ReadAndLock { key } => match objects.get(&key.key) {
                Some(v) => Action::Reply(
                    Response::Value {
                        meta: meta(v.len(), 1),
                        lock_token: Some(99),
                    },
                    v.clone(),
                ),
                None => reply(Response::Error(ErrorReply::new(ErrorCode::NotFound, 0))),
            },
            Request::MultiRead { keys, .. } => {
                let mut trailer = Vec::new();
                let items = keys
                    .iter()
                    .map(|k| match objects.get(k) {
                        Some(v) => {
                            trailer.extend_from_slice(v);
                            ItemResult::Found(meta(v.len(), 1))
                        }
                        None => ItemResult::Failed(ErrorReply::new(ErrorCode::NotFound, 0)),
                    })
                    .collect();
                Action::Reply(Response::Multi { items }, trailer)
            }
            Request::BulkPut { items, .. } => {
                let mut offset = 0;
                let mut results = Vec::new();
                for item in items {
                    let end = offset + item.value_bytes as usize;
                    objects.insert(item.key, value[offset..end].to_vec());
                    offset = end;
                    results.push(PutResult::Written { version: 1 });
                }
                assert_eq!(offset, value.len(), "bulk trailer is exactly the values");
                reply(Response::Bulk { items: results })
            }
            Request::ListKeys { cursor, limit, .. } => {
                if limit > 2 {
                    return reply(Response::Error(ErrorReply::new(ErrorCode::TooManyItems, 2)));
                }
                let mut keys: Vec<Vec<u8>> = objects.keys().cloned().collect();
                keys.sort();
                let start = cursor as usize;
                let end = (start + limit as usize).min(keys.len());
                let next_cursor = if end == keys.len() { 0 } else { end as u64 };
                reply(Response::Keys {
                    keys: keys[start..end].to_vec(),
                    next_cursor,
                })
            }
            Request::Meta { key } if key.key == b"slow" => Action::ReplyAfter(
                Duration::from_millis(400),
                Response::Meta { meta: meta(0, 1) },
                Vec::new(),
            ),
            Request::Meta { key } if key.key == b"hang-up" => Action::Close,
            Request::NsCount { .. } => reply(Response::Count {
                objects: objects.len() as u64,
            }),
            Request::Unlock { .. } => reply(Response::Ok),
            // A server that predates `GetMap` (the client must then just not route).
            Request::GetMap => reply(Response::Error(ErrorReply::new(
                ErrorCode::InvalidRequest,
                0,
            ))),
            other => panic!("fake server got {other:?}"),
        }
    }
}

#[tokio::test]
async fn typed_api_round_trips() {
    let server = FakeServer::start(store_handler());
    let client = Client::connect(&server.addr, config(2, 2000))
        .await
        .unwrap();
    assert_eq!(
        server.connections.load(Ordering::SeqCst),
        2,
        "the pool opens eagerly"
    );
    assert_eq!(client.server_info().partitions, 1024);
    let ns = client.namespace("sessions").await.unwrap();
    assert_eq!(ns.id(), stategrid_proto::hash::namespace_id("sessions"));

    assert_eq!(
        ns.put("a", b"alpha", WriteOptions::sliding(60))
            .await
            .unwrap(),
        1
    );
    let read = ns.read("a").await.unwrap();
    assert_eq!(read.value, b"alpha");
    assert!(ns.read("missing").await.unwrap_err().is_not_found());

    let locked = ns.read_and_lock("a").await.unwrap();
    assert_eq!(
        (locked.value.as_slice(), locked.lock_token),
        (&b"alpha"[..], 99)
    );
    ns.unlock("a", locked.lock_token).await.unwrap();

    let results = ns
        .bulk_put(
            &[("b", &b"bravo"[..]), ("c", b""), ("d", b"delta!")],
            WriteOptions::new(),
        )
        .await
        .unwrap();
    assert_eq!(results, vec![Ok(1), Ok(1), Ok(1)]);
    let multi = ns.multi_read(&["d", "nope", "c", "b"]).await.unwrap();
    assert_eq!(multi[0].as_ref().unwrap().value, b"delta!");
    assert_eq!(multi[1].as_ref().unwrap_err().code, ErrorCode::NotFound);
    assert_eq!(multi[2].as_ref().unwrap().value, b"");
    assert_eq!(multi[3].as_ref().unwrap().value, b"bravo");

    // The fake pages 2 keys at a time and refuses bigger pages: keys() adapts.
    let keys = ns.keys().await.unwrap();
    assert_eq!(
        keys,
        vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec(), b"d".to_vec()]
    );
    assert_eq!(ns.count().await.unwrap(), 4);
}

#[tokio::test]
async fn a_slow_answer_times_out_and_the_late_answer_is_ignored() {
    let server = FakeServer::start(store_handler());
    let client = Client::connect(&server.addr, config(1, 150)).await.unwrap();
    let ns = client.namespace("t").await.unwrap();
    let err = ns.meta("slow").await.unwrap_err();
    assert!(matches!(err, Error::Timeout { ms: 150 }), "{err}");
    // The same connection keeps working, before and after the late answer arrives.
    assert_eq!(ns.count().await.unwrap(), 0);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(ns.count().await.unwrap(), 0);
    assert_eq!(server.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_closed_connection_is_replaced_on_next_use() {
    let server = FakeServer::start(store_handler());
    let client = Client::connect(&server.addr, config(1, 2000))
        .await
        .unwrap();
    let ns = client.namespace("t").await.unwrap();
    let err = ns.meta("hang-up").await.unwrap_err();
    assert!(matches!(err, Error::Closed { .. }), "{err}");
    assert_eq!(ns.count().await.unwrap(), 0);
    assert_eq!(server.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn nothing_listening_is_a_connect_error() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let addr = format!("127.0.0.1:{port}");
    let err = Client::connect(&addr, ClientConfig::default())
        .await
        .unwrap_err();
    match &err {
        Error::Connect { addr: a, .. } => assert_eq!(a, &addr),
        other => panic!("{other}"),
    }
    assert!(err.to_string().contains("cannot connect"));
}

#[tokio::test]
async fn a_bad_config_is_refused_before_connecting() {
    let err = Client::connect("127.0.0.1:1", config(0, 100))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");
}

#[cfg(feature = "blocking")]
#[test]
fn blocking_client_wraps_the_async_one() {
    let server = FakeServer::start(store_handler());
    let client = crate::blocking::Client::connect(&server.addr, config(2, 2000)).unwrap();
    let ns = client.namespace("b").unwrap();
    ns.put("k", b"v", WriteOptions::new()).unwrap();
    assert_eq!(ns.read("k").unwrap().value, b"v");
    assert!(ns.read("x").unwrap_err().is_not_found());
    // Used from several threads at once.
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..20 {
                    assert_eq!(ns.read("k").unwrap().value, b"v");
                }
            });
        }
    });
}
