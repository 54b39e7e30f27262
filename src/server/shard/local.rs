//! Local submit: a task on this shard (the HTTP data API) sends a native request through the
//! shard's own routing and awaits its native answer, with no socket in between.
//!
//! A local caller gets a *local connection*: a slot in the shard's connection slab of kind
//! [`ConnKind::Local`] with no socket behind it. A request submitted on it goes through
//! [`Shard::on_frame`] exactly as a socket client's does (served here, forwarded to another
//! shard, relayed to the primary host, held while a lease is pending, refused, replicated
//! synchronously), and every answer ends in the connection's send batch as for a socket. The one
//! difference is [`Shard::flush`]: for a local connection it hands the batch to the waiting
//! task ([`Shard::deliver_local`]) instead of the kernel.
//!
//! One local connection serves one caller with one request at a time (an HTTP/1.1 connection
//! is serial), so an answer never waits behind another caller's.
//!
//! Costs per request: the caller encodes a frame (one copy of a written value into it); the
//! answer's head bytes move to the caller by swapping vectors (no copy), and a read value is
//! handed over as the store's own `Rc<[u8]>` (no copy).

use std::cell::RefCell;
use std::future::Future;
use std::os::fd::{FromRawFd, OwnedFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use stategrid_proto::frame;

use super::hosts::ConnKind;
use super::{Conn, SendBatch, Shard};
use crate::net::{AlignedBuf, Token};

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
    answer: Option<LocalAnswer>,
    waker: Option<Waker>,
    /// The shard closed the connection (shutdown): no answer will come.
    closed: bool,
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
    slot: u32,
    generation: u32,
}

/// Why a local request got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalError {
    /// The shard is draining for shutdown or has no free connection slot.
    Unavailable,
}

impl Shard {
    /// The control plane's shared state (the installed map), for the management API.
    pub fn plane(&self) -> std::sync::Arc<crate::cluster::plane::Plane> {
        self.hosts.plane.clone()
    }

    /// The process's shared state (every shard's published metrics), for `/metrics`.
    pub fn shared(&self) -> std::sync::Arc<crate::server::Shared> {
        self.shared.clone()
    }

    /// Opens a local connection; `Unavailable` while draining or when the shard is at
    /// `connections_per_shard_max`.
    pub fn open_local(&mut self) -> Result<(LocalConn, Rc<RefCell<Mailbox>>), LocalError> {
        let max = self.core.cfg.connections_per_shard_max as usize;
        if self.draining || self.conns.len() >= max.min(Token::SLOTS_MAX as usize) {
            return Err(LocalError::Unavailable);
        }
        // A Conn owns a descriptor; a local one has no socket, so it holds an eventfd that
        // nothing reads or writes (one syscall per HTTP connection, not per request).
        // SAFETY: eventfd returns a new descriptor we own, or -1.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if raw < 0 {
            return Err(LocalError::Unavailable);
        }
        // SAFETY: `raw` is a fresh descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        self.next_generation = self.next_generation.wrapping_add(1).max(1);
        let generation = self.next_generation;
        let mailbox = Rc::new(RefCell::new(Mailbox::default()));
        let conn = Box::new(Conn {
            fd,
            generation,
            rbuf: AlignedBuf::with_capacity(0),
            recv_inflight: false,
            send_inflight: false,
            sending: SendBatch::default(),
            filling: SendBatch::default(),
            hello_done: true,
            slots: Default::default(),
            slot_base: 0,
            waiting: 0,
            held_bytes: 0,
            read_closed: false,
            close_after_flush: false,
            partial_since_ms: None,
            kind: ConnKind::Local,
            connecting: false,
            expect: Default::default(),
            peer_addr: None,
            resp: None,
            auth: super::LinkAuth::Open,
            handoff: None,
            local: Some(mailbox.clone()),
            tls: None,
            spare: Vec::new(),
            role: Some(crate::auth::users::Role::Admin),
            user: None,
            denied: false,
        });
        let slot = self.conns.insert(conn) as u32;
        self.core.connections = self.conns.len() as u64;
        Ok((LocalConn { slot, generation }, mailbox))
    }

    /// Serves one whole request frame (built by [`stategrid_proto::codec::encode_request`])
    /// on a local connection. The answer arrives in the connection's mailbox, now or later.
    pub fn submit_local(&mut self, c: LocalConn, frame: &AlignedBuf) -> Result<(), LocalError> {
        self.now_ms = super::now_ms();
        if self.conn_mut(c.slot, c.generation).is_none() {
            return Err(LocalError::Unavailable);
        }
        let bytes = frame.as_slice();
        let p = frame::parse(bytes, usize::MAX)
            .ok()
            .flatten()
            .expect("a local caller submits one whole frame");
        debug_assert_eq!(p.frame_bytes, bytes.len(), "one frame per submit");
        self.on_frame(
            c.slot,
            c.generation,
            p.header.request_id,
            p.archive,
            p.value,
            p.frame_bytes,
            bytes,
        );
        self.flush(c.slot);
        // A request for another shard waits in a batch: send it now (no pass ends here).
        self.flush_hops();
        // A relay or a replication may have queued sends on the ring: hand them over now.
        self.ring.submit();
        Ok(())
    }

    /// Sets what a local connection's caller may do (the HTTP services authenticate each
    /// request and set its user's role here; the shard's ordinary role check then applies).
    pub fn set_local_role(
        &mut self,
        c: LocalConn,
        role: Option<crate::auth::users::Role>,
        user: &str,
    ) {
        if let Some(conn) = self.conn_mut(c.slot, c.generation) {
            conn.role = role;
            if conn.user.as_deref() != Some(user) {
                conn.user = Some(user.into());
            }
        }
    }

    /// Closes a local connection when its caller is gone; an answer still due is dropped
    /// when it arrives (the slot's generation no longer matches).
    pub fn close_local(&mut self, c: LocalConn) {
        if let Some(conn) = self.conn_mut(c.slot, c.generation) {
            conn.read_closed = true;
            conn.local = None;
            // Answers still due (forwarded, relayed) keep the slot until they arrive.
            conn.slots.clear();
            conn.waiting = 0;
            conn.filling.clear();
            self.maybe_close(c.slot);
        }
    }

    /// [`Shard::flush`] for a local connection: move the filled batch to the mailbox and wake
    /// the caller. No copy: the batch's byte vector is swapped out.
    pub(super) fn deliver_local(&mut self, slot: u32) {
        let Some(conn) = self.conns.get_mut(slot as usize) else {
            return;
        };
        if conn.filling.is_empty() {
            return;
        }
        let (bytes, values) = conn.filling.take_parts();
        let Some(mailbox) = &conn.local else {
            return;
        };
        let mut m = mailbox.borrow_mut();
        debug_assert!(
            m.answer.is_none(),
            "one request at a time per local connection"
        );
        m.answer = Some(LocalAnswer { bytes, values });
        if let Some(w) = m.waker.take() {
            w.wake();
        }
    }

    /// Tells a local connection's caller that no answer will come (the shard is stopping).
    pub(super) fn local_closed(conn: &Conn) {
        if let Some(mailbox) = &conn.local {
            let mut m = mailbox.borrow_mut();
            m.closed = true;
            if let Some(w) = m.waker.take() {
                w.wake();
            }
        }
    }
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
