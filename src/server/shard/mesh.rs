//! Between shards: this shard's channels to every other shard, the outboxes that keep a full
//! channel's messages in order, and the lanes that batch the requests one pass forwards
//! ([`super::super::hop`]), one message per destination shard.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use glommio::channels::shared_channel::ConnectedSender;

use crate::server::Msg;
use crate::server::hop::{HopBatch, HopLanes, HopTo};

/// This shard's ends of the message mesh. See the module doc.
pub(super) struct Mesh {
    shard: usize,
    shards: usize,
    peers: Vec<Option<Rc<ConnectedSender<Msg>>>>,
    /// Messages that found a peer's channel full, in order; drained by a task per peer.
    outbox: Vec<Rc<RefCell<VecDeque<Msg>>>>,
    /// Requests queued for other shards during this pass, sent once per destination at its
    /// end ([`crate::server::hop`]), and the pool of batches that came back.
    hops: HopLanes,
    /// Connections that got answers from a returned batch (reused scratch).
    pub touched: Vec<u32>,
}

impl Mesh {
    pub fn new(shard: usize, shards: usize) -> Mesh {
        Mesh {
            shard,
            shards,
            peers: (0..shards).map(|_| None).collect(),
            outbox: (0..shards)
                .map(|_| Rc::new(RefCell::new(VecDeque::new())))
                .collect(),
            hops: HopLanes::new(shard, shards),
            touched: Vec::new(),
        }
    }

    pub fn set_peer(&mut self, shard: usize, sender: ConnectedSender<Msg>) {
        self.peers[shard] = Some(Rc::new(sender));
    }

    pub fn send_to(&self, to: usize, msg: Msg) {
        let peer = self.peers[to]
            .as_ref()
            .expect("mesh is connected before serving")
            .clone();
        let outbox = self.outbox[to].clone();
        if outbox.borrow().is_empty() {
            match peer.try_send(msg) {
                Ok(()) => return,
                Err(glommio::GlommioError::WouldBlock(glommio::ResourceType::Channel(msg))) => {
                    outbox.borrow_mut().push_back(msg)
                }
                Err(e) => {
                    // Closed: the peer shard has stopped (only during shutdown).
                    tracing::debug!(
                        shard = self.shard,
                        "message to stopped shard {to} dropped: {e}"
                    );
                    return;
                }
            }
            // The channel is full: keep order by draining the outbox from a task.
            glommio::spawn_local(async move {
                loop {
                    let Some(msg) = outbox.borrow_mut().pop_front() else {
                        break;
                    };
                    if peer.send(msg).await.is_err() {
                        break;
                    }
                }
            })
            .detach();
        } else {
            outbox.borrow_mut().push_back(msg);
        }
    }

    /// Queues a request frame for shard `to`; it leaves at the end of this pass (or now, when
    /// the batch is full). HOT PATH for a naive client: one memcpy of the frame.
    pub fn queue_hop(&mut self, to: usize, dest: HopTo, frame: &[u8], hash: Option<u64>) {
        if let Some(full) = self.hops.push(to, dest, frame, hash) {
            self.send_to(to, Msg::Hop(full));
        }
    }

    /// Sends every batch queued during this pass: one message per destination shard.
    pub fn flush_hops(&mut self) {
        if !self.hops.pending() {
            return;
        }
        for to in 0..self.shards {
            if let Some(b) = self.hops.take(to) {
                self.send_to(to, Msg::Hop(b));
            }
        }
    }

    /// Keeps a batch that came back for reuse (its buffers were allocated on this thread).
    pub fn give_back(&mut self, batch: Box<HopBatch>) {
        self.hops.give_back(batch);
    }
}
