//! One connection's buffers and its blocking set-up (connect and handshake happen before the
//! measured loop, so they are done plainly, with timeouts).

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use crate::codec::Codec;
use crate::tls::{Tls, Wire};
use crate::workload::{Planned, Session};

/// Largest receive buffer a connection may grow to (one reply must fit).
pub const RECV_BYTES_MAX: usize = 64 << 20;

/// A receive buffer whose storage starts 8-aligned (it is a `Vec<u64>`), so native frames —
/// multiples of 8 bytes — always start aligned and rkyv can read their archives in place.
///
/// Bytes `start..end` are received but not yet parsed; `end..capacity` is free for the next
/// receive. The storage must not move or change while a receive into it is in flight: the
/// event loop only compacts or grows it right after that receive completed.
pub struct RecvBuf {
    store: Vec<u64>,
    start: usize,
    end: usize,
}

impl RecvBuf {
    pub fn new(bytes: usize) -> Self {
        RecvBuf {
            store: vec![0u64; bytes.div_ceil(8).max(1)],
            start: 0,
            end: 0,
        }
    }

    pub fn capacity(&self) -> usize {
        self.store.len() * 8
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: u64 storage viewed as bytes; every byte is initialised (zeroed at creation).
        unsafe { std::slice::from_raw_parts(self.store.as_ptr() as *const u8, self.capacity()) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, uniquely borrowed.
        unsafe {
            std::slice::from_raw_parts_mut(self.store.as_mut_ptr() as *mut u8, self.capacity())
        }
    }

    /// Received, unparsed bytes.
    #[inline]
    pub fn data(&self) -> &[u8] {
        &self.bytes()[self.start..self.end]
    }

    /// Marks `n` bytes parsed.
    #[inline]
    pub fn consume(&mut self, n: usize) {
        debug_assert!(self.start + n <= self.end);
        self.start += n;
        if self.start == self.end {
            // Everything parsed: start over at the aligned beginning, no copy needed.
            self.start = 0;
            self.end = 0;
        }
    }

    /// Moves a partial reply to the start of the buffer, so the next receive has the most
    /// room and a partial native frame stays 8-aligned. Costs a copy of the partial bytes only.
    pub fn compact(&mut self) {
        if self.start > 0 {
            let (s, e) = (self.start, self.end);
            self.bytes_mut().copy_within(s..e, 0);
            self.end -= s;
            self.start = 0;
        }
    }

    /// Free space for the next receive.
    #[inline]
    pub fn spare(&mut self) -> &mut [u8] {
        let e = self.end;
        &mut self.bytes_mut()[e..]
    }

    /// Records `n` bytes received into [`RecvBuf::spare`].
    #[inline]
    pub fn filled(&mut self, n: usize) {
        debug_assert!(self.end + n <= self.capacity());
        self.end += n;
    }

    /// Doubles the buffer when a reply does not fit. Returns false at [`RECV_BYTES_MAX`].
    pub fn grow(&mut self) -> bool {
        let want = self.capacity() * 2;
        if want > RECV_BYTES_MAX {
            return false;
        }
        self.store.resize(want / 8, 0);
        true
    }

    pub fn is_full(&self) -> bool {
        self.end == self.capacity()
    }
}

/// One virtual user on a connection: at most one request outstanding.
#[derive(Clone, Copy, Debug)]
pub struct Slot {
    pub op: Planned,
    pub session: Session,
    /// When the request should have been sent (open loop: its arrival; closed loop: when sent).
    pub intended_ns: u64,
    /// When it was put in the send buffer (timeouts count from here).
    pub sent_ns: u64,
    pub measured: bool,
    pub busy: bool,
}

impl Default for Slot {
    fn default() -> Self {
        Slot {
            op: Planned {
                kind: crate::workload::OpKind::Get,
                key: 0,
                token: 0,
            },
            session: Session::Idle,
            intended_ns: 0,
            sent_ns: 0,
            measured: false,
            busy: false,
        }
    }
}

/// A connection as the event loop drives it: one receive outstanding, one send outstanding.
pub struct Conn {
    pub target: usize,
    pub socket: Socket,
    pub recv: RecvBuf,
    pub recv_armed: bool,
    /// Bytes owned by the kernel while `send_armed`; `out_off` of them already sent.
    pub out: Vec<u8>,
    pub out_off: usize,
    pub send_armed: bool,
    /// Requests encoded since the last send: the next send carries all of them.
    pub pending: Vec<u8>,
    /// In the worker's list of connections to flush.
    pub queued: bool,
    /// Slot ids awaiting replies, oldest first (replies come in this order).
    pub fifo: VecDeque<u32>,
    pub slots: Vec<Slot>,
    pub dead: bool,
    /// Shard-aware: the keys this connection carries (those its serving shard owns).
    pub layout: Option<crate::codec::ShardLayout>,
    /// `--tls`: the session between the ring's buffers and the requests and replies.
    pub tls: Option<Box<Tls>>,
}

impl Conn {
    pub fn new(
        target: usize,
        socket: Socket,
        depth: usize,
        recv_bytes: usize,
        send_bytes: usize,
    ) -> Self {
        Conn {
            target,
            socket,
            recv: RecvBuf::new(recv_bytes),
            recv_armed: false,
            out: Vec::with_capacity(send_bytes),
            out_off: 0,
            send_armed: false,
            pending: Vec::with_capacity(send_bytes),
            queued: false,
            fifo: VecDeque::with_capacity(depth),
            slots: vec![Slot::default(); depth],
            dead: false,
            layout: None,
            tls: None,
        }
    }

    /// Stops the connection: pending I/O on it completes (with 0 or an error) and is ignored.
    pub fn kill(&mut self) {
        if !self.dead {
            self.dead = true;
            let _ = self.socket.shutdown(Shutdown::Both);
            self.pending.clear();
        }
    }
}

/// Opens a TCP connection with `TCP_NODELAY` (requests are batched by the loop already;
/// Nagle would only add delay).
pub fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.connect_timeout(&addr.into(), timeout)?;
    s.set_tcp_nodelay(true)?;
    Ok(s)
}

/// Sends the codec's handshake and reads its replies, blocking, within `timeout` (through
/// `tls` when the connection has a session).
pub fn handshake<C: Codec>(
    s: &mut Socket,
    mut tls: Option<&mut rustls::ClientConnection>,
    codec: &mut C,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut expect = codec.handshake(&mut out);
    Wire {
        sock: s,
        tls: tls.as_deref_mut(),
    }
    .write_all(&out)
    .map_err(|e| format!("sending the {} handshake: {e}", codec.name()))?;
    let mut buf = RecvBuf::new(4096);
    while expect > 0 {
        if let Some(used) = codec.parse_handshake(buf.data())? {
            buf.consume(used);
            expect -= 1;
            continue;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "no {} handshake reply within {:?}",
                codec.name(),
                timeout
            ));
        }
        s.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
        buf.compact();
        if buf.is_full() && !buf.grow() {
            return Err("handshake reply too large".into());
        }
        let mut wire = Wire {
            sock: s,
            tls: tls.as_deref_mut(),
        };
        match wire.read(buf.spare()) {
            Ok(0) => {
                return Err(format!(
                    "connection closed during the {} handshake",
                    codec.name()
                ));
            }
            Ok(n) => buf.filled(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(format!(
                    "no {} handshake reply within {:?}",
                    codec.name(),
                    timeout
                ));
            }
            Err(e) => return Err(format!("reading the {} handshake reply: {e}", codec.name())),
        }
    }
    if !buf.data().is_empty() {
        return Err(format!(
            "{} unexpected bytes after the handshake",
            buf.data().len()
        ));
    }
    s.set_read_timeout(None).map_err(|e| e.to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recv_buf_stays_aligned_and_compacts() {
        let mut b = RecvBuf::new(20);
        assert_eq!(b.capacity(), 24);
        assert_eq!(b.data().as_ptr() as usize % 8, 0);
        b.spare()[..10].copy_from_slice(b"0123456789");
        b.filled(10);
        b.consume(8);
        assert_eq!(b.data(), b"89");
        b.compact();
        assert_eq!(b.data(), b"89");
        assert_eq!(b.data().as_ptr() as usize % 8, 0);
        assert_eq!(b.spare().len(), 22);
        b.consume(2);
        assert_eq!(b.spare().len(), 24, "fully parsed: back to the start");
        b.spare().copy_from_slice(&[7u8; 24]);
        b.filled(24);
        assert!(b.is_full());
        assert!(b.grow());
        assert_eq!(b.capacity(), 48);
        assert_eq!(b.data(), &[7u8; 24][..], "growing keeps the data");
    }
}
