//! The shard's socket path.
//!
//! glommio 0.9 creates its rings without `DEFER_TASKRUN`/`SINGLE_ISSUER` and calls recv/send
//! once per request, which measured here at 2.6x Redis's CPU per request (see
//! docs/design.md). So each shard owns a second io_uring, set up the way this VM rewards,
//! and a glommio task drives it:
//!
//! 1. push SQEs (accept, recv, sendmsg) as connections need them;
//! 2. `io_uring_enter(GETEVENTS, min_complete 0)`: submits them and runs the deferred
//!    completion work without blocking (one syscall for the whole batch);
//! 3. handle every CQE;
//! 4. with nothing to do, await the ring's registered eventfd through glommio (the ring
//!    signals it as soon as completion work is pending), so timers and cross-shard
//!    messages keep running on the same executor.
//!
//! [`Ring`] is the small interface the rest of the server sees; [`AlignedBuf`] and
//! [`SendBatch`] are the buffers it reads into and writes from; [`tls`] is the TLS record
//! layer a `secure_svr_port` connection (and, with `tls_cluster 1`, a host link: [`tls_cluster`])
//! runs between them and the socket.

mod buf;
mod ring;
pub mod tls;
pub mod tls_cluster;

pub use buf::{AlignedBuf, SendBatch};
pub use ring::{Completion, Op, Ring, RingWaker, Token, Waiter};
pub use tls::{TlsConn, TlsError, TlsSettings};
