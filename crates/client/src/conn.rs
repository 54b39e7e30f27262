//! One pipelined connection: a writer task, a reader task, and the table of requests waiting
//! for their answers.
//!
//! ```text
//!  callers ──frame──▶ mpsc ──▶ writer task ──▶ socket ──▶ server
//!     ▲                                                     │
//!     └── oneshot ◀── pending[request_id] ◀── reader task ◀─┘
//! ```
//!
//! - A caller takes an in-flight permit (at most `inflight_per_conn_max` per connection),
//!   encodes its frame, registers a oneshot under a fresh request id, and hands the frame to
//!   the writer task. Because whole frames go through the channel, a caller that is cancelled
//!   (timeout, dropped future) never leaves half a frame on the socket.
//! - The writer batches whatever frames are queued into one write.
//! - The reader parses frames out of an 8-aligned buffer, matches each answer to its request by
//!   id and completes the oneshot. Answers to requests nobody waits for any more (timed out)
//!   are dropped.
//! - When either side fails, the connection is marked closed and every waiting request fails
//!   with [`Error::Closed`] (or [`Error::Protocol`] when the server sent garbage). The pool
//!   replaces a closed connection on its next use.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use rkyv::rancor;
use rkyv::util::AlignedVec;
use stategrid_proto::codec::encode_request_parts;
use stategrid_proto::frame::{self, FrameError};
use stategrid_proto::{PROTOCOL_VERSION, Request, Response, decode_response, encode_request};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::error::{Error, Result};

/// The request id of `Hello`. Ordinary requests never use it.
const HELLO_REQUEST_ID: u32 = 0;
/// The writer stops adding queued frames to one write past this many bytes.
const WRITE_BATCH_BYTES_MAX: usize = 256 << 10;

/// An answer: the decoded response and its value trailer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawReply {
    /// The server's response message. Never `Response::Error`: that arrives as
    /// [`Error::Server`].
    pub response: Response,
    /// The frame's value trailer (a read's value, or a multi-read's values back to back).
    pub trailer: Vec<u8>,
}

/// What the server said in its `HelloOk`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    /// The protocol version the connection speaks.
    pub protocol_version: u16,
    /// The server's name and version.
    pub server: String,
    /// Shards (cores) serving on that host.
    pub shards: u32,
    /// Partitions in the store.
    pub partitions: u32,
    /// The shard that serves this connection, when the connection asked for one
    /// (`HelloShard`) and the server knows shard-aware connections; None otherwise.
    pub shard: Option<u32>,
}

/// A receive buffer whose bytes start 8-aligned, so every frame in it (frames are multiples
/// of 8 bytes) has its archive 8-aligned, as rkyv needs to validate it in place.
///
/// The storage is fully initialized; `start..end` is the unread part. Bytes are appended at
/// `end`; a consumed frame advances `start`; a partial frame is moved back to offset 0 when
/// the tail runs short of room.
pub(crate) struct RecvBuf {
    storage: AlignedVec<16>,
    start: usize,
    end: usize,
    initial_bytes: usize,
}

impl RecvBuf {
    /// Below this much free tail room, a read first compacts the unread bytes to the start.
    const READ_ROOM_MIN_BYTES: usize = 4096;

    pub(crate) fn new(initial_bytes: usize) -> Self {
        let initial_bytes = frame::pad8(initial_bytes.max(64));
        let mut storage = AlignedVec::<16>::with_capacity(initial_bytes);
        storage.resize(initial_bytes, 0);
        RecvBuf {
            storage,
            start: 0,
            end: 0,
            initial_bytes,
        }
    }

    /// The bytes received and not yet consumed.
    pub(crate) fn filled(&self) -> &[u8] {
        &self.storage.as_slice()[self.start..self.end]
    }

    /// Marks the first `bytes` of [`RecvBuf::filled`] as consumed (a whole frame).
    pub(crate) fn consume(&mut self, bytes: usize) {
        debug_assert_eq!(bytes % frame::FRAME_ALIGN, 0, "frames are multiples of 8");
        assert!(
            self.start + bytes <= self.end,
            "consumed more than received"
        );
        self.start += bytes;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            // A huge frame grew the buffer; give the memory back once it is consumed.
            if self.storage.len() > 4 * self.initial_bytes {
                let mut storage = AlignedVec::<16>::with_capacity(self.initial_bytes);
                storage.resize(self.initial_bytes, 0);
                self.storage = storage;
            }
        }
    }

    /// Free room at the tail for a read, making sure the frame at `start` (which needs
    /// `frame_bytes` in total) fits in the buffer.
    fn room(&mut self, frame_bytes: usize) -> &mut [u8] {
        let unread = self.end - self.start;
        let tail_room = self.storage.len() - self.end;
        if self.start > 0
            && (tail_room < Self::READ_ROOM_MIN_BYTES
                || self.start + frame_bytes > self.storage.len())
        {
            // Compact: the partial frame moves to offset 0, which is 16-aligned, so its
            // archive stays aligned.
            self.storage
                .as_mut_slice()
                .copy_within(self.start..self.end, 0);
            self.start = 0;
            self.end = unread;
        }
        if self.start + frame_bytes > self.storage.len() {
            let len = frame::pad8(frame_bytes.max(2 * self.storage.len()));
            self.storage.resize(len, 0);
        }
        // Never empty: a read into no room returns 0, which would look like end of stream.
        debug_assert!(self.end < self.storage.len());
        &mut self.storage.as_mut_slice()[self.end..]
    }

    /// Reads until a whole frame sits at the start of [`RecvBuf::filled`]; returns its size.
    /// Bytes already buffered are used first, so a read can fill several frames at once.
    pub(crate) async fn fill_frame<R: AsyncRead + Unpin>(
        &mut self,
        rd: &mut R,
        frame_bytes_max: usize,
    ) -> std::result::Result<usize, ReadFailure> {
        loop {
            if let Some(parsed) =
                frame::parse(self.filled(), frame_bytes_max).map_err(ReadFailure::Frame)?
            {
                return Ok(parsed.frame_bytes);
            }
            let needed =
                frame::needed_bytes(self.filled(), frame_bytes_max).map_err(ReadFailure::Frame)?;
            let room = self.room(needed);
            let n = rd.read(room).await.map_err(ReadFailure::Io)?;
            if n == 0 {
                return Err(if self.filled().is_empty() {
                    ReadFailure::Eof
                } else {
                    ReadFailure::EofMidFrame
                });
            }
            self.end += n;
        }
    }
}

/// Why a connection's read side stopped.
#[derive(Debug)]
pub(crate) enum ReadFailure {
    Eof,
    EofMidFrame,
    Io(std::io::Error),
    Frame(FrameError),
}

impl ReadFailure {
    /// The error the waiting requests get.
    fn to_error(&self) -> Error {
        match self {
            ReadFailure::Eof => Error::Closed {
                reason: "the server closed the connection".into(),
            },
            ReadFailure::EofMidFrame => Error::Closed {
                reason: "the server closed the connection in the middle of a frame".into(),
            },
            ReadFailure::Io(e) => Error::Closed {
                reason: format!("receive failed: {e}"),
            },
            ReadFailure::Frame(e) => Error::Protocol(e.to_string()),
        }
    }
}

/// Decodes one complete frame (header already checked) into an answer.
fn decode_frame(archive: &[u8], trailer: &[u8]) -> Result<RawReply> {
    let archived =
        decode_response(archive).map_err(|e| Error::Protocol(format!("response {e}")))?;
    let response = rkyv::deserialize::<Response, rancor::Error>(archived)
        .map_err(|e| Error::Protocol(format!("response could not be deserialized: {e}")))?;
    match response {
        Response::Error(reply) => Err(Error::Server(reply)),
        response => Ok(RawReply {
            response,
            trailer: trailer.to_vec(),
        }),
    }
}

/// A request waiting for its answer. Its in-flight permit is released with it.
struct Pending {
    tx: oneshot::Sender<Result<RawReply>>,
    _permit: OwnedSemaphorePermit,
}

#[derive(Default)]
struct State {
    pending: HashMap<u32, Pending>,
    /// Set once, when the connection fails: the error new requests get.
    closed: Option<ClosedWith>,
}

#[derive(Clone)]
enum ClosedWith {
    Closed(String),
    Protocol(String),
}

impl ClosedWith {
    fn from_error(e: &Error) -> Self {
        match e {
            Error::Protocol(m) => ClosedWith::Protocol(m.clone()),
            Error::Closed { reason } => ClosedWith::Closed(reason.clone()),
            other => ClosedWith::Closed(other.to_string()),
        }
    }

    fn to_error(&self) -> Error {
        match self {
            ClosedWith::Closed(reason) => Error::Closed {
                reason: reason.clone(),
            },
            ClosedWith::Protocol(m) => Error::Protocol(m.clone()),
        }
    }
}

/// What the caller side and both tasks share.
struct Shared {
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the map inconsistent (single inserts
        // and removes), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks the connection closed (first reason wins) and fails every waiting request.
    fn close(&self, error: &Error) {
        let (closed, drained) = {
            let mut state = self.lock();
            let closed = state
                .closed
                .get_or_insert_with(|| ClosedWith::from_error(error))
                .clone();
            let drained: Vec<Pending> = state.pending.drain().map(|(_, p)| p).collect();
            (closed, drained)
        };
        // Outside the lock: a woken caller may take it at once.
        for p in drained {
            let _ = p.tx.send(Err(closed.to_error()));
        }
    }

    /// Hands an answer to the request waiting for `request_id`, if any still waits.
    fn complete(&self, request_id: u32, reply: Result<RawReply>) {
        let pending = self.lock().pending.remove(&request_id);
        if let Some(p) = pending {
            let _ = p.tx.send(reply);
        }
    }
}

/// Removes a request's table entry when its caller stops waiting (answer, timeout, or a
/// dropped future), so an answer that never comes cannot hold an in-flight permit forever.
struct PendingGuard<'a> {
    shared: &'a Shared,
    request_id: u32,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.shared.lock().pending.remove(&self.request_id);
    }
}

/// One open, handshaken connection.
pub(crate) struct Conn {
    shared: Arc<Shared>,
    frames: mpsc::Sender<Vec<u8>>,
    inflight: Arc<Semaphore>,
    next_request_id: AtomicU32,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
    pub(crate) server: ServerInfo,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("server", &self.server)
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Nobody can send on this connection any more: stop both tasks (the socket closes).
        self.reader.abort();
        self.writer.abort();
    }
}

/// Connection settings the tasks need (a subset of `ClientConfig`).
#[derive(Debug, Clone)]
pub(crate) struct ConnSettings {
    pub(crate) inflight_per_conn_max: usize,
    pub(crate) frame_bytes_max: usize,
    pub(crate) recv_buffer_bytes: usize,
    pub(crate) client_name: String,
    /// Ask to be served by this shard of the host (`HelloShard`); None: plain `Hello`.
    pub(crate) shard: Option<u32>,
    /// Sent in `Auth` after `Hello`.
    pub(crate) credentials: Option<crate::config::Credentials>,
}

impl Conn {
    /// Sends `Hello` on a fresh byte stream, checks `HelloOk`, then starts the reader and
    /// writer tasks on the current tokio runtime. `addr` only names the peer in errors.
    pub(crate) async fn handshake<R, W>(
        mut rd: R,
        mut wr: W,
        addr: &str,
        settings: &ConnSettings,
    ) -> Result<Conn>
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let mut buf = RecvBuf::new(settings.recv_buffer_bytes);
        let mut ask_shard = settings.shard;
        let server = loop {
            let hello = match ask_shard {
                Some(shard) => Request::HelloShard {
                    version: PROTOCOL_VERSION,
                    client: settings.client_name.clone(),
                    shard,
                },
                None => Request::Hello {
                    version: PROTOCOL_VERSION,
                    client: settings.client_name.clone(),
                },
            };
            match Self::hello(&mut rd, &mut wr, &mut buf, addr, settings, &hello).await {
                // A server from before shard-aware connections does not know `HelloShard`
                // (and still waits for a Hello): greet it the old way on the same connection.
                Err(Error::Server(reply))
                    if ask_shard.is_some()
                        && reply.code == stategrid_proto::ErrorCode::InvalidRequest =>
                {
                    ask_shard = None;
                }
                other => break other?,
            }
        };
        if let Some(c) = &settings.credentials {
            let auth = Request::Auth {
                user: c.user.clone(),
                password: c.password.clone(),
            };
            Self::exchange(&mut rd, &mut wr, &mut buf, addr, settings, &auth).await?;
        }

        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
        });
        let (frames_tx, frames_rx) = mpsc::channel(settings.inflight_per_conn_max);
        let reader = tokio::spawn(read_loop(
            rd,
            buf,
            Arc::clone(&shared),
            settings.frame_bytes_max,
        ));
        let writer = tokio::spawn(write_loop(wr, frames_rx, Arc::clone(&shared)));
        Ok(Conn {
            shared,
            frames: frames_tx,
            inflight: Arc::new(Semaphore::new(settings.inflight_per_conn_max)),
            next_request_id: AtomicU32::new(1),
            reader,
            writer,
            server,
        })
    }

    /// Sends one handshake request (`Hello`, `HelloShard`, `Auth`) as request 0 and reads
    /// its answer.
    async fn exchange<R, W>(
        rd: &mut R,
        wr: &mut W,
        buf: &mut RecvBuf,
        addr: &str,
        settings: &ConnSettings,
        req: &Request,
    ) -> Result<RawReply>
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let mut out = Vec::with_capacity(256);
        encode_request(&mut out, HELLO_REQUEST_ID, req, &[]);
        let closed = |e: std::io::Error| Error::Closed {
            reason: format!("handshake with {addr} failed: {e}"),
        };
        wr.write_all(&out).await.map_err(closed)?;
        wr.flush().await.map_err(closed)?;
        let frame_bytes =
            buf.fill_frame(rd, settings.frame_bytes_max)
                .await
                .map_err(|f| match f.to_error() {
                    Error::Closed { reason } => Error::Closed {
                        reason: format!("handshake with {addr}: {reason}"),
                    },
                    e => e,
                })?;
        let parsed = frame::parse(buf.filled(), settings.frame_bytes_max)
            .expect("fill_frame checked the header")
            .expect("fill_frame found a whole frame");
        let request_id = parsed.header.request_id;
        let answer = decode_frame(parsed.archive, parsed.value);
        buf.consume(frame_bytes);
        let answer = answer?;
        if request_id != HELLO_REQUEST_ID {
            return Err(Error::Protocol(format!(
                "expected the answer to request 0 from {addr}, got {:?} for request {request_id}",
                answer.response
            )));
        }
        Ok(answer)
    }

    /// Sends one `Hello` (or `HelloShard`) and reads its answer (through [`Self::exchange`]).
    async fn hello<R, W>(
        rd: &mut R,
        wr: &mut W,
        buf: &mut RecvBuf,
        addr: &str,
        settings: &ConnSettings,
        hello: &Request,
    ) -> Result<ServerInfo>
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let answer = Self::exchange(rd, wr, buf, addr, settings, hello).await;
        let (version, server, shards, partitions, shard) = match answer {
            Ok(RawReply {
                response:
                    Response::HelloOk {
                        version,
                        server,
                        shards,
                        partitions,
                    },
                ..
            }) => (version, server, shards, partitions, None),
            Ok(RawReply {
                response:
                    Response::HelloShardOk {
                        version,
                        server,
                        shards,
                        partitions,
                        shard,
                    },
                ..
            }) => (version, server, shards, partitions, Some(shard)),
            Err(Error::Server(reply))
                if reply.code == stategrid_proto::ErrorCode::UnsupportedVersion =>
            {
                return Err(Error::UnsupportedVersion {
                    addr: addr.to_owned(),
                    client_version: PROTOCOL_VERSION,
                    server_version: reply.detail,
                });
            }
            Err(e) => return Err(e),
            Ok(other) => {
                return Err(Error::Protocol(format!(
                    "expected HelloOk from {addr}, got {:?}",
                    other.response
                )));
            }
        };
        if version != PROTOCOL_VERSION {
            return Err(Error::UnsupportedVersion {
                addr: addr.to_owned(),
                client_version: PROTOCOL_VERSION,
                server_version: u64::from(version),
            });
        }
        Ok(ServerInfo {
            protocol_version: version,
            server,
            shards,
            partitions,
            shard,
        })
    }

    /// Has this connection failed? A closed connection never opens again.
    pub(crate) fn is_closed(&self) -> bool {
        self.shared.lock().closed.is_some()
    }

    /// A fresh request id; never [`HELLO_REQUEST_ID`]. Ids wrap after 2^32 requests, by which
    /// time the at most `inflight_per_conn_max` requests in flight have long been answered.
    fn request_id(&self) -> u32 {
        loop {
            let id = self.next_request_id.fetch_add(1, Ordering::Relaxed);
            if id != HELLO_REQUEST_ID {
                return id;
            }
        }
    }

    /// Sends one request (its trailer being `values` back to back) and waits for the answer.
    /// No timeout here: the caller wraps the whole call in one.
    pub(crate) async fn call(&self, req: &Request, values: &[&[u8]]) -> Result<RawReply> {
        let permit = Arc::clone(&self.inflight)
            .acquire_owned()
            .await
            .expect("the in-flight semaphore is never closed");
        let request_id = self.request_id();
        let value_bytes: usize = values.iter().map(|v| v.len()).sum();
        let mut frame = Vec::with_capacity(128 + frame::pad8(value_bytes));
        match values {
            [one] => encode_request(&mut frame, request_id, req, one),
            _ => encode_request_parts(&mut frame, request_id, req, values),
        }
        debug_assert_eq!(frame.len() % frame::FRAME_ALIGN, 0);

        let (tx, rx) = oneshot::channel();
        {
            let mut state = self.shared.lock();
            if let Some(closed) = &state.closed {
                return Err(closed.to_error());
            }
            let previous = state.pending.insert(
                request_id,
                Pending {
                    tx,
                    _permit: permit,
                },
            );
            assert!(
                previous.is_none(),
                "request id {request_id} reused while in flight"
            );
        }
        let _guard = PendingGuard {
            shared: &self.shared,
            request_id,
        };
        if self.frames.send(frame).await.is_err() {
            return Err(self.closed_error());
        }
        match rx.await {
            Ok(answer) => answer,
            Err(_) => Err(self.closed_error()),
        }
    }

    fn closed_error(&self) -> Error {
        match &self.shared.lock().closed {
            Some(c) => c.to_error(),
            None => Error::Closed {
                reason: "the connection's tasks stopped".into(),
            },
        }
    }
}

/// The reader task: parse answers, complete waiting requests, fail them all on the way out.
async fn read_loop<R: AsyncRead + Unpin>(
    mut rd: R,
    mut buf: RecvBuf,
    shared: Arc<Shared>,
    frame_bytes_max: usize,
) {
    loop {
        let frame_bytes = match buf.fill_frame(&mut rd, frame_bytes_max).await {
            Ok(n) => n,
            Err(failure) => {
                shared.close(&failure.to_error());
                return;
            }
        };
        let parsed = frame::parse(buf.filled(), frame_bytes_max)
            .expect("fill_frame checked the header")
            .expect("fill_frame found a whole frame");
        let request_id = parsed.header.request_id;
        // A bad archive inside a good frame spoils only that answer; the stream stays in step.
        let answer = decode_frame(parsed.archive, parsed.value);
        buf.consume(frame_bytes);
        shared.complete(request_id, answer);
    }
}

/// The writer task: write queued frames, batching what is already queued into one write.
async fn write_loop<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut frames: mpsc::Receiver<Vec<u8>>,
    shared: Arc<Shared>,
) {
    let mut batch = Vec::new();
    while let Some(first) = frames.recv().await {
        let result = match frames.try_recv() {
            // The common case under light load: one frame, written without a copy.
            Err(_) => wr.write_all(&first).await,
            Ok(second) => {
                batch.clear();
                batch.extend_from_slice(&first);
                batch.extend_from_slice(&second);
                while batch.len() < WRITE_BATCH_BYTES_MAX {
                    match frames.try_recv() {
                        Ok(next) => batch.extend_from_slice(&next),
                        Err(_) => break,
                    }
                }
                let r = wr.write_all(&batch).await;
                if batch.capacity() > 4 * WRITE_BATCH_BYTES_MAX {
                    batch = Vec::new();
                }
                r
            }
        };
        let result = match result {
            Ok(()) => wr.flush().await,
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            shared.close(&Error::Closed {
                reason: format!("send failed: {e}"),
            });
            return;
        }
    }
}
