//! Changes applied on the primary and waiting for their copies to confirm.
//!
//! A change is answered only after every other host with a copy of its partition (replicas,
//! pending and outgoing copies) confirmed it, once per changed object. A copy that refuses
//! turns the answer into that refusal; a copy that does not confirm within the deadline
//! (`replication_timeout_ms`) turns it into `ReplicationFailed` (retryable: the change may
//! have been applied); a copy the next map no longer names (declared failed, or moved away)
//! is not waited for, which is how writes continue through a failover.

use slab::Slab;
use stategrid_proto::ErrorCode;

use super::DataPlane;
use super::fence::Refusal;
use crate::cluster::map::HostId;

/// Writes waiting for their copies at most per shard: a bound on memory when copies stop
/// answering (each also holds its answer until the deadline).
pub const PENDING_WRITES_MAX: usize = 1 << 20;

/// One change applied here and waiting for its copies.
struct Pending<T> {
    answer: T,
    partition: u16,
    waiting: Vec<HostId>,
    failed: Option<Refusal>,
    deadline_ms: u64,
}

/// A write whose waiting is over: answer with `answer` unless `failed`.
pub struct Completed<T> {
    pub answer: T,
    pub partition: u16,
    pub failed: Option<Refusal>,
    /// The copies that had not confirmed (a timeout).
    pub unconfirmed: Vec<HostId>,
}

/// What [`DataPlane::begin_write`] decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Begin {
    /// No other copy (or no map): answer now.
    Local,
    /// Send each changed object's state to every one of `copies`, under `epoch` from `me`,
    /// each expecting a confirmation for `idx` ([`DataPlane::confirm`]).
    Replicate {
        idx: u32,
        epoch: u64,
        me: HostId,
        copies: Vec<HostId>,
    },
    /// Too many writes wait already: answer this error instead (nothing was sent).
    Refuse(Refusal),
}

/// The pending writes of one data plane.
pub struct PendingWrites<T> {
    slab: Slab<Pending<T>>,
}

impl<T> Default for PendingWrites<T> {
    fn default() -> Self {
        PendingWrites { slab: Slab::new() }
    }
}

impl<T> PendingWrites<T> {
    pub fn len(&self) -> usize {
        self.slab.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }

    fn complete(&mut self, idx: usize) -> Completed<T> {
        let p = self.slab.remove(idx);
        Completed {
            answer: p.answer,
            partition: p.partition,
            failed: p.failed,
            unconfirmed: p.waiting,
        }
    }
}

impl<T> DataPlane<T> {
    /// A change of `objects` objects of partition `p` was applied here at `now_ms`: does it
    /// wait for copies? Cost: one allocation (the waiting list) when it does.
    pub fn begin_write(
        &mut self,
        p: usize,
        objects: usize,
        answer: T,
        now_ms: u64,
        timeout_ms: u64,
    ) -> (Begin, Option<T>) {
        let Some(view) = &self.view else {
            return (Begin::Local, Some(answer));
        };
        let copies: Vec<HostId> = view.owners[p].copies().filter(|&h| h != view.me).collect();
        if copies.is_empty() || objects == 0 {
            return (Begin::Local, Some(answer));
        }
        if self.pending.slab.len() >= PENDING_WRITES_MAX {
            return (
                Begin::Refuse((ErrorCode::ReplicationFailed, timeout_ms)),
                Some(answer),
            );
        }
        // One confirmation per changed object per copy (a host appears once per object).
        let waiting = (0..objects).flat_map(|_| copies.iter().copied()).collect();
        let idx = self.pending.slab.insert(Pending {
            answer,
            partition: p as u16,
            waiting,
            failed: None,
            deadline_ms: now_ms + timeout_ms,
        }) as u32;
        let begin = Begin::Replicate {
            idx,
            epoch: view.epoch,
            me: view.me,
            copies,
        };
        (begin, None)
    }

    /// Copy `host` confirmed (or refused) one object of write `idx`. Returns the write when
    /// that was the last confirmation it waited for.
    pub fn confirm(
        &mut self,
        idx: u32,
        host: HostId,
        refused: Option<Refusal>,
    ) -> Option<Completed<T>> {
        let pw = self.pending.slab.get_mut(idx as usize)?;
        if let Some(r) = refused {
            pw.failed.get_or_insert(r);
        }
        if let Some(i) = pw.waiting.iter().position(|&h| h == host) {
            pw.waiting.swap_remove(i);
        }
        pw.waiting
            .is_empty()
            .then(|| self.pending.complete(idx as usize))
    }

    /// Writes whose copies did not confirm by their deadline: `ReplicationFailed`, detail
    /// `timeout_ms`.
    pub fn expire(&mut self, now_ms: u64, timeout_ms: u64) -> Vec<Completed<T>> {
        let late: Vec<usize> = self
            .pending
            .slab
            .iter()
            .filter(|(_, pw)| now_ms >= pw.deadline_ms)
            .map(|(i, _)| i)
            .collect();
        late.into_iter()
            .map(|i| {
                let pw = &mut self.pending.slab[i];
                pw.failed = Some((ErrorCode::ReplicationFailed, timeout_ms));
                self.pending.complete(i)
            })
            .collect()
    }

    /// Every waiting write, failed with `refusal` (this host rejoined as a new member).
    pub(super) fn fail_all(&mut self, refusal: Refusal) -> Vec<Completed<T>> {
        let all: Vec<usize> = self.pending.slab.iter().map(|(i, _)| i).collect();
        all.into_iter()
            .map(|i| {
                self.pending.slab[i].failed = Some(refusal);
                self.pending.complete(i)
            })
            .collect()
    }

    /// A new map: copies it no longer names are not waited for. Returns the writes that
    /// thereby completed.
    pub(super) fn settle_dropped_copies(&mut self) -> Vec<Completed<T>> {
        let Some(view) = &self.view else {
            return Vec::new();
        };
        let mut done = Vec::new();
        for (i, pw) in self.pending.slab.iter_mut() {
            let o = &view.owners[pw.partition as usize];
            pw.waiting.retain(|&h| o.copies().any(|c| c == h));
            if pw.waiting.is_empty() {
                done.push(i);
            }
        }
        done.into_iter().map(|i| self.pending.complete(i)).collect()
    }
}
