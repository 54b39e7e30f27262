//! hyper 1.x on glommio: the I/O adapter and the timer hyper needs for its header timeout.
//!
//! glommio's `TcpStream` speaks futures-io (`AsyncRead`/`AsyncWrite`); hyper 1.x has its own
//! `hyper::rt::Read`/`Write` traits. [`GlommioIo`] bridges the two. hyper's HTTP/1 server needs
//! no executor (it spawns nothing), only a [`hyper::rt::Timer`] for `header_read_timeout`,
//! which [`GlommioTimer`] provides from glommio's timers.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncWrite};
use hyper::rt::{Read, ReadBufCursor, Write};

/// Largest answer (head and body together) [`GlommioIo`] copies into one send.
pub const GATHER_COPY_BYTES_MAX: usize = 16 << 10;

/// A futures-io stream seen as hyper I/O.
pub struct GlommioIo<T> {
    io: T,
    /// Where a small gathered answer is put together (grows to at most
    /// [`GATHER_COPY_BYTES_MAX`]; kept for the connection's life).
    scratch: Vec<u8>,
}

impl<T> GlommioIo<T> {
    pub fn new(io: T) -> GlommioIo<T> {
        GlommioIo {
            io,
            scratch: Vec::new(),
        }
    }
}

impl<T: AsyncRead + Unpin> Read for GlommioIo<T> {
    /// Cost: hyper hands uninitialized memory; futures-io wants initialized bytes, so the
    /// spare part of hyper's read buffer is zeroed before each read (a memset of at most the
    /// buffer's free space, typically 8 KiB).
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        // SAFETY: we only write initialized bytes into the cursor's spare memory and advance
        // by exactly what the read filled.
        let spare = unsafe { buf.as_mut() };
        for b in spare.iter_mut() {
            b.write(0);
        }
        // SAFETY: every byte of `spare` was just initialized.
        let init: &mut [u8] =
            unsafe { &mut *(spare as *mut [std::mem::MaybeUninit<u8>] as *mut [u8]) };
        match Pin::new(&mut self.io).poll_read(cx, init) {
            Poll::Ready(Ok(n)) => {
                // SAFETY: the read initialized (wrote) `n` bytes at the cursor.
                unsafe { buf.advance(n) };
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncWrite + Unpin> Write for GlommioIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_close(cx)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    /// glommio's stream has no vectored write: futures-io's default sends only the first
    /// slice, so an answer's head and its value went out in two sends and, with `TCP_NODELAY`,
    /// two segments (measured: a GET cost more server CPU than a PUT). Slices totalling at most
    /// [`GATHER_COPY_BYTES_MAX`] are copied into one buffer and sent at once (a memcpy of at
    /// most 16 KiB instead of a syscall and a segment); larger answers keep the value
    /// uncopied and go slice by slice.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let first = bufs.iter().find(|b| !b.is_empty());
        match first {
            None => Poll::Ready(Ok(0)),
            Some(b) if total <= GATHER_COPY_BYTES_MAX && b.len() < total => {
                this.scratch.clear();
                for b in bufs {
                    this.scratch.extend_from_slice(b);
                }
                Pin::new(&mut this.io).poll_write(cx, &this.scratch)
            }
            Some(b) => Pin::new(&mut this.io).poll_write(cx, b),
        }
    }
}

/// hyper's timer on glommio's timers.
#[derive(Clone, Copy, Debug, Default)]
pub struct GlommioTimer;

/// A glommio timer as a hyper `Sleep`.
///
/// hyper's `Sleep` must be `Send + Sync` because hyper's own executors may be multi-threaded.
/// Here every connection future runs on the shard's glommio executor, created by
/// `spawn_local`, and never leaves that thread; the timer is created, polled and dropped on
/// it. The bounds are satisfied by assertion, not by moving anything across threads.
struct LocalSleep(glommio::timer::Timer);

// SAFETY: see the type's doc: never sent to or shared with another thread.
unsafe impl Send for LocalSleep {}
// SAFETY: as above.
unsafe impl Sync for LocalSleep {}

impl Future for LocalSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.0).poll(cx).map(|_| ())
    }
}

impl hyper::rt::Sleep for LocalSleep {}

impl hyper::rt::Timer for GlommioTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(LocalSleep(glommio::timer::Timer::new(duration)))
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep(deadline.saturating_duration_since(Instant::now()))
    }
}
