//! One shard's network io_uring, and the glommio side of waiting on it.

use std::io;
use std::os::fd::{FromRawFd, RawFd};

use io_uring::{IoUring, cqueue, opcode, squeue, types};

/// `IORING_ENTER_GETEVENTS` (the io-uring crate keeps its sys module private).
const IORING_ENTER_GETEVENTS: u32 = 1;

/// `IORING_RECVSEND_POLL_FIRST` (Linux 5.19): arm the socket's poll at once instead of trying
/// the receive first.
const IORING_RECVSEND_POLL_FIRST: u16 = 1;

/// What a submission was for; packed into its user_data with the connection slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    Accept = 1,
    Recv = 2,
    Send = 3,
    /// An outgoing connection to another host's `int_port` completed (or failed).
    Connect = 4,
}

/// user_data layout: op (8 bits) | connection slot (24 bits) | slot generation (32 bits).
/// The generation lets a completion for a closed-and-reused slot be recognised and dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token(pub u64);

impl Token {
    pub const SLOTS_MAX: u32 = 1 << 24;

    #[inline]
    pub fn new(op: Op, slot: u32, generation: u32) -> Token {
        debug_assert!(slot < Self::SLOTS_MAX);
        Token(((op as u64) << 56) | ((slot as u64) << 32) | generation as u64)
    }

    #[inline]
    pub fn op(self) -> Option<Op> {
        match (self.0 >> 56) as u8 {
            1 => Some(Op::Accept),
            2 => Some(Op::Recv),
            3 => Some(Op::Send),
            4 => Some(Op::Connect),
            _ => None,
        }
    }

    #[inline]
    pub fn slot(self) -> u32 {
        ((self.0 >> 32) & 0xff_ffff) as u32
    }

    #[inline]
    pub fn generation(self) -> u32 {
        self.0 as u32
    }
}

/// A completion copied out of the CQ, so handlers may push new SQEs while they run.
#[derive(Debug, Clone, Copy)]
pub struct Completion {
    pub token: Token,
    pub result: i32,
    pub flags: u32,
}

impl Completion {
    /// Will this multishot request post more completions?
    #[inline]
    pub fn more(&self) -> bool {
        cqueue::more(self.flags)
    }
}

/// The ring. Its eventfd is waited on through [`Waiter`], which lives outside the shard's
/// `RefCell` so the driver can await it without holding a borrow.
pub struct Ring {
    ring: IoUring,
    eventfd: RawFd,
    /// SQEs pushed since the last enter.
    unsubmitted: u32,
    /// For `/metrics`: plain adds, once per enter and per reap.
    pub counters: crate::server::metrics::RingCounters,
}

/// The glommio side of a ring: awaits its eventfd.
pub struct Waiter {
    eventfd: glommio::io::BufferedFile,
}

impl Waiter {
    /// Waits until the kernel has completion work for the ring. Costs one glommio read of the
    /// eventfd (a small allocation inside glommio, once per wake-up, not per request).
    pub async fn wait(&self) {
        if let Err(e) = self.eventfd.read_at(0, 8).await {
            tracing::error!("waiting on the ring's eventfd failed: {e}");
        }
    }

    pub async fn close(self) {
        let _ = self.eventfd.close().await;
    }
}

impl Ring {
    /// Creates the ring with `SINGLE_ISSUER` + `DEFER_TASKRUN` (completion work runs only when
    /// this thread enters the ring: no inter-processor interrupt per completion) and registers
    /// an eventfd that the kernel signals when completion work is pending.
    pub fn new(entries: u32) -> io::Result<(Ring, Waiter)> {
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_cqsize(entries * 4)
            .build(entries)?;
        // A blocking eventfd: io_uring (glommio's) then polls it instead of returning EAGAIN.
        // SAFETY: plain syscall; the fd is owned by the BufferedFile below.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(io::Error::last_os_error());
        }
        ring.submitter().register_eventfd(efd)?;
        // SAFETY: efd is a fresh descriptor nothing else owns.
        let eventfd = unsafe { glommio::io::BufferedFile::from_raw_fd(efd) };
        Ok((
            Ring {
                ring,
                eventfd: efd,
                unsubmitted: 0,
                counters: Default::default(),
            },
            Waiter { eventfd },
        ))
    }

    /// Queues one SQE; when the SQ is full, submits first.
    ///
    /// # Safety
    /// Every buffer the entry points at must stay valid until its completion arrives.
    #[inline]
    pub unsafe fn push(&mut self, sqe: &squeue::Entry) {
        loop {
            // SAFETY: the caller guarantees the buffers outlive the operation.
            if unsafe { self.ring.submission().push(sqe) }.is_ok() {
                self.unsubmitted += 1;
                return;
            }
            // SQ full: hand what is queued to the kernel and retry.
            if let Err(e) = self.ring.submit() {
                tracing::error!("io_uring submit failed: {e}");
            }
            self.counters.enters += 1;
            self.counters.submissions += self.unsubmitted as u64;
            self.unsubmitted = 0;
        }
    }

    /// Multishot accept on a listening socket: one SQE for every future connection.
    pub fn accept_multi(&mut self, listener: RawFd, token: Token) {
        let sqe = opcode::AcceptMulti::new(types::Fd(listener))
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(token.0);
        // SAFETY: accept writes no user memory (no sockaddr requested).
        unsafe { self.push(&sqe) };
    }

    /// Connects `fd` (a nonblocking stream socket) to the address at `addr`.
    ///
    /// # Safety
    /// `addr..addr+len` must stay valid until the completion.
    pub unsafe fn connect(
        &mut self,
        fd: RawFd,
        addr: *const libc::sockaddr,
        len: libc::socklen_t,
        token: Token,
    ) {
        let sqe = opcode::Connect::new(types::Fd(fd), addr, len)
            .build()
            .user_data(token.0);
        // SAFETY: forwarded from the caller.
        unsafe { self.push(&sqe) };
    }

    /// Receives into `len` bytes at `buf`.
    ///
    /// HOT PATH, once per connection per pass. The receive is armed right after the answers to
    /// what the last one brought were queued, so the socket is almost always empty then: a
    /// client waits for those answers (all of them at pipeline 1) before it sends more. Hence
    /// `POLL_FIRST`: without it the kernel first tries the receive (socket lock,
    /// `tcp_recvmsg`, EAGAIN) and only then arms the poll, a wasted attempt per request at
    /// pipeline 1; with it the poll is armed at once, and when data did arrive meanwhile the
    /// poll fires immediately and the receive runs then (a little dearer than trying first).
    ///
    /// # Safety
    /// `buf..buf+len` must stay valid and untouched until the completion.
    pub unsafe fn recv(&mut self, fd: RawFd, buf: *mut u8, len: u32, token: Token) {
        let sqe = opcode::Recv::new(types::Fd(fd), buf, len)
            .ioprio(IORING_RECVSEND_POLL_FIRST)
            .build()
            .user_data(token.0);
        // SAFETY: forwarded from the caller.
        unsafe { self.push(&sqe) };
    }

    /// Sends a message (gather list).
    ///
    /// # Safety
    /// `msg`, its iovecs and every buffer they name must stay valid until the completion.
    pub unsafe fn sendmsg(&mut self, fd: RawFd, msg: *const libc::msghdr, token: Token) {
        let sqe = opcode::SendMsg::new(types::Fd(fd), msg)
            .flags(libc::MSG_NOSIGNAL as u32)
            .build()
            .user_data(token.0);
        // SAFETY: forwarded from the caller.
        unsafe { self.push(&sqe) };
    }

    /// Submits what is queued and runs pending completion work, without blocking.
    /// One `io_uring_enter` for the whole batch.
    pub fn enter(&mut self) -> io::Result<()> {
        let to_submit = self.unsubmitted;
        self.unsubmitted = 0;
        self.counters.enters += 1;
        self.counters.submissions += to_submit as u64;
        // SAFETY: no timeout argument; flags are valid for this ring.
        let r = unsafe {
            self.ring.submitter().enter::<libc::sigset_t>(
                to_submit,
                0,
                IORING_ENTER_GETEVENTS,
                None,
            )
        };
        match r {
            Ok(_) => Ok(()),
            // EINTR/EBUSY/EAGAIN: nothing lost; the next pass retries.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR | libc::EBUSY | libc::EAGAIN)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Submits queued SQEs without reaping (used by tasks other than the driver).
    pub fn submit(&mut self) {
        if self.unsubmitted > 0 {
            if let Err(e) = self.enter() {
                tracing::error!("io_uring submit failed: {e}");
            }
        }
    }

    /// Moves every available completion into `out` (cleared first). No allocation once `out`
    /// has grown to the largest batch.
    pub fn drain(&mut self, out: &mut Vec<Completion>) {
        out.clear();
        for cqe in self.ring.completion() {
            out.push(Completion {
                token: Token(cqe.user_data()),
                result: cqe.result(),
                flags: cqe.flags(),
            });
        }
        self.counters.completions += out.len() as u64;
    }

    /// Wakes the driver from any thread: used by shutdown. Writes the ring's eventfd.
    pub fn waker(&self) -> RingWaker {
        // SAFETY: dup of our own descriptor; the waker owns the copy.
        let fd = unsafe { libc::dup(self.eventfd) };
        RingWaker { fd }
    }
}

/// A `Send` handle that wakes a shard's ring driver.
#[derive(Debug)]
pub struct RingWaker {
    fd: RawFd,
}

impl RingWaker {
    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writing 8 bytes to an eventfd we own.
        unsafe { libc::write(self.fd, &one as *const u64 as *const libc::c_void, 8) };
    }
}

impl Drop for RingWaker {
    fn drop(&mut self) {
        // SAFETY: closing the dup we own.
        unsafe { libc::close(self.fd) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trip() {
        let t = Token::new(Op::Send, 0xab_cdef, 0xdead_beef);
        assert_eq!(t.op(), Some(Op::Send));
        assert_eq!(t.slot(), 0xab_cdef);
        assert_eq!(t.generation(), 0xdead_beef);
        assert_eq!(Token(0).op(), None);
    }
}
