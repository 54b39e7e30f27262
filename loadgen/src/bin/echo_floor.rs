//! `echo-floor`: the cost floor of a stategrid server. It speaks the native protocol's framing
//! and answers every request with a minimal, pre-encoded reply, storing nothing: a server that
//! does no work. What it costs per request is what the socket path, the framing and request
//! validation cost on this machine, so stategrid's own CPU per request can be compared with it.
//!
//! One thread (pin it with `--cpu`), one io_uring with the best set-up (SINGLE_ISSUER +
//! DEFER_TASKRUN, falling back as `loadgen` does), a SO_REUSEPORT listener (several instances
//! may share a port, one per core), multishot accept. Per loop iteration, one `io_uring_enter`
//! submits every send and receive and reaps every completion; each connection gets one send per
//! iteration carrying all its replies.
//!
//! Replies: `Hello` → `HelloOk`; `NsOpen` → `Namespace` (the id stategrid would derive from the
//! name); `Read` → `Value` with `--value-size` bytes; `ReadAndLock` → the same with lock token 1;
//! writes (`Add`, `Put`, `Update`, `UpdateIfVersion`, `UpdateAndUnlock`) → `Written`; anything
//! else → `Ok`. Each request archive is validated (as any server must before trusting it); a
//! broken frame header closes the connection, as stategrid does.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use clap::Parser;
use io_uring::{IoUring, cqueue, opcode, squeue, types};
use socket2::{Domain, Protocol, Socket, Type};
use stategrid_proto::frame;
use stategrid_proto::hash::namespace_id;
use stategrid_proto::{
    ArchivedRequest, ErrorCode, ErrorReply, Meta, PARTITIONS, PROTOCOL_VERSION, Response, Timeout,
    decode_request, encode_response,
};

use loadgen::conn::RecvBuf;
use loadgen::sys;

/// Largest request frame accepted (a bigger one closes the connection).
const FRAME_BYTES_MAX: usize = 64 << 20;
const RECV_BYTES: usize = 64 << 10;
const LISTEN_BACKLOG: i32 = 1024;

const TAG_ACCEPT: u64 = 1;
const TAG_RECV: u64 = 2;
const TAG_SEND: u64 = 3;

/// A stategrid-framed responder that does no work: the cost floor for the native protocol.
#[derive(Parser, Debug)]
#[command(name = "echo-floor", version)]
struct Args {
    /// Address to listen on (port 0 picks a free one; the chosen address is printed first).
    #[arg(long, default_value = "127.0.0.1:7400")]
    listen: SocketAddr,
    /// CPU to pin the thread to.
    #[arg(long)]
    cpu: Option<usize>,
    /// Bytes of value in each read reply.
    #[arg(long, default_value_t = 1024)]
    value_size: usize,
    /// Connections served at once; more are closed on accept.
    #[arg(long, default_value_t = 4096)]
    connections_max: usize,
    /// Exit by itself after this many seconds (tests use it as a safety net).
    #[arg(long)]
    max_runtime: Option<f64>,
}

/// Pre-encoded reply frames; only the request id (bytes 12..16) is patched per reply.
struct Replies {
    hello: Vec<u8>,
    ok: Vec<u8>,
    written: Vec<u8>,
    value: Vec<u8>,
    value_locked: Vec<u8>,
}

impl Replies {
    fn new(value_bytes: usize) -> Self {
        let enc = |r: &Response, v: &[u8]| {
            let mut out = Vec::new();
            encode_response(&mut out, 0, r, v);
            out
        };
        let meta = Meta {
            value_bytes: value_bytes as u32,
            version: 1,
            created_ms: 0,
            updated_ms: 0,
            timeout: Timeout::default(),
            expires_in_ms: None,
            lock: None,
            evictable: true,
            content_type_bytes: 0,
        };
        let value = vec![b'v'; value_bytes];
        Replies {
            hello: enc(
                &Response::HelloOk {
                    version: PROTOCOL_VERSION,
                    server: "echo-floor".into(),
                    shards: 1,
                    partitions: PARTITIONS,
                },
                &[],
            ),
            ok: enc(&Response::Ok, &[]),
            written: enc(&Response::Written { version: 1 }, &[]),
            value: enc(
                &Response::Value {
                    meta,
                    lock_token: None,
                },
                &value,
            ),
            value_locked: enc(
                &Response::Value {
                    meta,
                    lock_token: Some(1),
                },
                &value,
            ),
        }
    }
}

#[inline]
fn push_reply(out: &mut Vec<u8>, frame: &[u8], id: u32) {
    let at = out.len();
    out.extend_from_slice(frame);
    out[at + 12..at + 16].copy_from_slice(&id.to_le_bytes());
}

struct Conn {
    fd: OwnedFd,
    recv: RecvBuf,
    recv_armed: bool,
    out: Vec<u8>,
    out_off: usize,
    send_armed: bool,
    pending: Vec<u8>,
    queued: bool,
    closing: bool,
}

struct Server {
    ring: IoUring,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    flush: Vec<usize>,
    replies: Replies,
    listen_fd: RawFd,
    cqes: Vec<(u64, i32, u32)>,
    requests: u64,
    accept_errors_printed: bool,
    /// The kernel knows IORING_RECVSEND_POLL_FIRST.
    poll_first: bool,
}

#[inline]
fn ud(conn: usize, tag: u64) -> u64 {
    ((conn as u64) << 8) | tag
}

impl Server {
    fn push(&mut self, e: squeue::Entry) {
        // SAFETY: entries point into connection buffers that stay put until their completion
        // is reaped: a connection is freed only when nothing is armed on it.
        unsafe {
            while self.ring.submission().push(&e).is_err() {
                self.ring.submit().expect("io_uring_enter (submit)");
            }
        }
    }

    fn arm_accept(&mut self) {
        let e = opcode::AcceptMulti::new(types::Fd(self.listen_fd))
            .build()
            .user_data(ud(0, TAG_ACCEPT));
        self.push(e);
    }

    /// Arms the connection's receive; `poll_first` when the socket is probably empty (the next
    /// request comes only after the client has our replies), skipping a receive that would fail.
    fn arm_recv(&mut self, c: usize, poll_first: bool) {
        let conn = self.conns[c].as_mut().expect("live connection");
        let spare = conn.recv.spare();
        let ioprio = if poll_first && self.poll_first {
            sys::RECV_POLL_FIRST
        } else {
            0
        };
        let e = opcode::Recv::new(
            types::Fd(conn.fd.as_raw_fd()),
            spare.as_mut_ptr(),
            spare.len() as u32,
        )
        .ioprio(ioprio)
        .build()
        .user_data(ud(c, TAG_RECV));
        conn.recv_armed = true;
        self.push(e);
    }

    fn arm_send(&mut self, c: usize) {
        let conn = self.conns[c].as_mut().expect("live connection");
        let rest = &conn.out[conn.out_off..];
        let e = opcode::Send::new(
            types::Fd(conn.fd.as_raw_fd()),
            rest.as_ptr(),
            rest.len() as u32,
        )
        .flags(libc::MSG_NOSIGNAL)
        .build()
        .user_data(ud(c, TAG_SEND));
        conn.send_armed = true;
        self.push(e);
    }

    fn on_accept(&mut self, res: i32, flags: u32, connections_max: usize) {
        if !cqueue::more(flags) {
            // The multishot accept ended (e.g. after an error): arm it again.
            self.arm_accept();
        }
        if res < 0 {
            if !self.accept_errors_printed {
                self.accept_errors_printed = true;
                eprintln!("echo-floor: accept: {}", io::Error::from_raw_os_error(-res));
            }
            return;
        }
        // SAFETY: the kernel just gave us this descriptor; nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(res) };
        let live = self.conns.len() - self.free.len();
        if live >= connections_max {
            return; // dropping fd closes it
        }
        let one: libc::c_int = 1;
        // SAFETY: setsockopt with a valid fd and a c_int option value.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                &one as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        let conn = Conn {
            fd,
            recv: RecvBuf::new(RECV_BYTES),
            recv_armed: false,
            out: Vec::with_capacity(RECV_BYTES),
            out_off: 0,
            send_armed: false,
            pending: Vec::with_capacity(RECV_BYTES),
            queued: false,
            closing: false,
        };
        let c = match self.free.pop() {
            Some(c) => {
                self.conns[c] = Some(conn);
                c
            }
            None => {
                self.conns.push(Some(conn));
                self.conns.len() - 1
            }
        };
        self.arm_recv(c, true);
    }

    /// Starts closing: shut the socket so armed I/O completes, free once nothing is armed.
    fn close(&mut self, c: usize) {
        let Some(conn) = self.conns[c].as_mut() else {
            return;
        };
        if !conn.closing {
            conn.closing = true;
            // SAFETY: valid fd; shutdown only wakes the I/O armed on it.
            unsafe { libc::shutdown(conn.fd.as_raw_fd(), libc::SHUT_RDWR) };
        }
        if !conn.recv_armed && !conn.send_armed {
            self.conns[c] = None;
            self.free.push(c);
        }
    }

    fn on_recv(&mut self, c: usize, res: i32) {
        let Some(conn) = self.conns[c].as_mut() else {
            return;
        };
        conn.recv_armed = false;
        if conn.closing || res <= 0 {
            self.close(c);
            return;
        }
        let drained = (res as usize) < conn.recv.spare().len();
        conn.recv.filled(res as usize);
        loop {
            let p = match frame::parse(conn.recv.data(), FRAME_BYTES_MAX) {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(e) => {
                    eprintln!("echo-floor: closing a connection: {e}");
                    self.close(c);
                    return;
                }
            };
            let id = p.header.request_id;
            let r = &self.replies;
            match decode_request(p.archive) {
                Ok(ArchivedRequest::Read { .. }) => push_reply(&mut conn.pending, &r.value, id),
                Ok(ArchivedRequest::ReadAndLock { .. }) => {
                    push_reply(&mut conn.pending, &r.value_locked, id)
                }
                Ok(
                    ArchivedRequest::Put { .. }
                    | ArchivedRequest::Add { .. }
                    | ArchivedRequest::Update { .. }
                    | ArchivedRequest::UpdateIfVersion { .. }
                    | ArchivedRequest::UpdateAndUnlock { .. },
                ) => push_reply(&mut conn.pending, &r.written, id),
                // A shard-aware greeting gets the plain answer: one "shard", nothing to route.
                Ok(ArchivedRequest::Hello { .. } | ArchivedRequest::HelloShard { .. }) => {
                    push_reply(&mut conn.pending, &r.hello, id)
                }
                Ok(ArchivedRequest::NsOpen { name }) => {
                    let ns = Response::Namespace {
                        id: namespace_id(name.as_str()),
                    };
                    encode_response(&mut conn.pending, id, &ns, &[]);
                }
                Ok(_) => push_reply(&mut conn.pending, &r.ok, id),
                Err(_) => {
                    let e = Response::Error(ErrorReply::new(ErrorCode::InvalidRequest, 0));
                    encode_response(&mut conn.pending, id, &e, &[]);
                }
            }
            self.requests += 1;
            conn.recv.consume(p.frame_bytes);
        }
        conn.recv.compact();
        if conn.recv.is_full() && !conn.recv.grow() {
            eprintln!("echo-floor: closing a connection: request larger than the receive limit");
            self.close(c);
            return;
        }
        if !conn.pending.is_empty() && !conn.queued {
            conn.queued = true;
            self.flush.push(c);
        }
        self.arm_recv(c, drained);
    }

    fn on_send(&mut self, c: usize, res: i32) {
        let Some(conn) = self.conns[c].as_mut() else {
            return;
        };
        conn.send_armed = false;
        if conn.closing || res < 0 {
            self.close(c);
            return;
        }
        conn.out_off += res as usize;
        if conn.out_off < conn.out.len() {
            self.arm_send(c);
            return;
        }
        conn.out.clear();
        conn.out_off = 0;
        if !conn.pending.is_empty() && !conn.queued {
            conn.queued = true;
            self.flush.push(c);
        }
    }

    fn flush_sends(&mut self) {
        for i in 0..self.flush.len() {
            let c = self.flush[i];
            let Some(conn) = self.conns[c].as_mut() else {
                continue;
            };
            conn.queued = false;
            if conn.closing || conn.send_armed || conn.pending.is_empty() {
                continue;
            }
            std::mem::swap(&mut conn.out, &mut conn.pending);
            conn.out_off = 0;
            self.arm_send(c);
        }
        self.flush.clear();
    }
}

fn listen(addr: SocketAddr) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    // Several echo-floor processes (one per core) may share the port; the kernel spreads
    // connections over them.
    s.set_reuse_port(true)?;
    s.bind(&addr.into())?;
    s.listen(LISTEN_BACKLOG)?;
    Ok(s)
}

fn main() {
    let args = Args::parse();
    if let Some(cpu) = args.cpu {
        if let Err(e) = sys::pin_current_thread(cpu) {
            eprintln!("echo-floor: cannot pin to CPU {cpu}: {e}");
            std::process::exit(2);
        }
    }
    let listener = match listen(args.listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("echo-floor: cannot listen on {}: {e}", args.listen);
            std::process::exit(2);
        }
    };
    let local = listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .unwrap_or(args.listen);
    let (ring, mode) = match sys::build_ring(4096) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("echo-floor: io_uring_setup: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = sys::check_ext_arg(&ring) {
        eprintln!("echo-floor: {e}");
        std::process::exit(2);
    }
    println!(
        "echo-floor listening on {local} (ring {mode}, {}-byte values)",
        args.value_size
    );
    let _ = io::stdout().flush();

    let started = Instant::now();
    let stop_at = args
        .max_runtime
        .map(|s| started + Duration::from_secs_f64(s));
    let cpu0 = sys::process_cpu();
    let mut srv = Server {
        ring,
        conns: Vec::new(),
        free: Vec::new(),
        flush: Vec::new(),
        replies: Replies::new(args.value_size),
        listen_fd: listener.as_raw_fd(),
        cqes: Vec::with_capacity(8192),
        requests: 0,
        accept_errors_printed: false,
        poll_first: sys::poll_first_supported(mode),
    };
    srv.arm_accept();
    loop {
        srv.flush_sends();
        let wait = match stop_at {
            Some(t) => {
                let left = t.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                left.min(Duration::from_secs(1))
            }
            None => Duration::from_secs(1),
        };
        let ts = types::Timespec::from(wait);
        let args_ = types::SubmitArgs::new().timespec(&ts);
        // The one system call of the iteration: submit everything, wait for completions.
        match srv.ring.submitter().submit_with_args(1, &args_) {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN)
                ) => {}
            Err(e) => {
                eprintln!("echo-floor: io_uring_enter: {e}");
                std::process::exit(1);
            }
        }
        srv.cqes.clear();
        {
            let mut cq = srv.ring.completion();
            cq.sync();
            for cqe in &mut cq {
                srv.cqes.push((cqe.user_data(), cqe.result(), cqe.flags()));
            }
        }
        for i in 0..srv.cqes.len() {
            let (u, res, flags) = srv.cqes[i];
            let c = (u >> 8) as usize;
            match u & 0xff {
                TAG_ACCEPT => srv.on_accept(res, flags, args.connections_max),
                TAG_RECV => srv.on_recv(c, res),
                TAG_SEND => srv.on_send(c, res),
                _ => unreachable!("unknown completion tag"),
            }
        }
    }
    let cpu = sys::process_cpu().since(&cpu0);
    eprintln!(
        "echo-floor: {} requests in {:.1} s, CPU user {:.2} s sys {:.2} s",
        srv.requests,
        started.elapsed().as_secs_f64(),
        cpu.user_us as f64 / 1e6,
        cpu.sys_us as f64 / 1e6
    );
}
