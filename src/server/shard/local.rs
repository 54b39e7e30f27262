//! Local submit: a task on this shard (the HTTP data API) sends a native request through the
//! shard's own routing and awaits its native answer, with no socket in between.
//!
//! A local caller gets a *local connection*: a slot in the shard's connection slab of kind
//! [`ConnKind::Local`] with no socket behind it. A request submitted on it goes through
//! `Dispatch::on_frame` exactly as a socket client's does (served here, forwarded to another
//! shard, relayed to the primary host, held while a lease is pending, refused, replicated
//! synchronously), and every answer ends in the connection's send batch as for a socket. The one
//! difference is `Conns::flush`: for a local connection it hands the batch to the waiting
//! task (`Conns::deliver_local`) instead of the kernel.
//!
//! This file holds what the caller's side sees (the mailbox, the future awaiting it); opening,
//! submitting on and closing a local connection are `Shard`'s public methods, over the
//! connection machinery in `conn`.
//!
//! One local connection serves one caller with one request at a time (an HTTP/1.1 connection
//! is serial), so an answer never waits behind another caller's.
//!
//! Costs per request: the caller encodes a frame (one copy of a written value into it); the
//! answer's head bytes move to the caller by swapping vectors (no copy), and a read value is
//! handed over as the store's own `Rc<[u8]>` (no copy).

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// One answer as the shard produced it: the encoded frame head(s) and archive(s), and the
/// values the batch referenced instead of copying (a read's value).
#[derive(Default)]
pub struct LocalAnswer {
    pub bytes: Vec<u8>,
    pub values: Vec<Rc<[u8]>>,
}

/// Where a local connection's answer waits for its task.
#[derive(Default)]
pub struct Mailbox {
    pub(super) answer: Option<LocalAnswer>,
    pub(super) waker: Option<Waker>,
    /// The shard closed the connection (shutdown): no answer will come.
    pub(super) closed: bool,
}

impl Mailbox {
    /// Drops an answer nobody waits for (its caller was cancelled).
    pub fn discard_answer(&mut self) {
        self.answer = None;
    }
}

/// A local connection's identity in the slab.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalConn {
    pub(super) slot: u32,
    pub(super) generation: u32,
}

/// Why a local request got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalError {
    /// The shard is draining for shutdown or has no free connection slot.
    Unavailable,
}

/// Awaits the answer in a local connection's mailbox.
pub struct Answer(pub Rc<RefCell<Mailbox>>);

impl Future for Answer {
    type Output = Result<LocalAnswer, LocalError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut m = self.0.borrow_mut();
        if let Some(a) = m.answer.take() {
            return Poll::Ready(Ok(a));
        }
        if m.closed {
            return Poll::Ready(Err(LocalError::Unavailable));
        }
        m.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}
