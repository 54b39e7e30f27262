//! Changes applied on the primary and waiting for their copies to confirm.
//!
//! A change is answered only after every other host with a copy of its partition (replicas,
//! pending and outgoing copies) confirmed it, once per changed object. A copy that refuses
//! turns the answer into that refusal; a copy that does not confirm within the deadline
//! (`replication_timeout_ms`) turns it into `ReplicationFailed` (retryable: the change may
//! have been applied); a copy the next map no longer names (declared failed, or moved away)
//! is not waited for, which is how writes continue through a failover.
//!
//! No read may see a change before it is safe. The primary applies a change at once, so a
//! read answered at once could see a value the store then loses (its copies never got it and
//! the primary died): not linearizable. Two rules close that:
//! - A read of a partition with changes still waiting (or a change that changed nothing, such
//!   as a remove that found nothing) is held until the changes waiting at its arrival are
//!   settled, and fails with them ([`DataPlane::begin_read`]). Reads of a partition with
//!   nothing in flight, the common case, are answered at once: the check is one load.
//! - A change that failed (a copy refused it or did not confirm in time) was still applied
//!   here, so it stays in doubt: it becomes a *repair* that sends the objects' current state
//!   again to the copies that did not confirm, every `replication_timeout_ms`
//!   ([`DataPlane::expire`] returns the [`Resend`]s), until they confirm, the map no longer
//!   names them, or this host is no longer the partition's primary. Reads of the partition
//!   wait behind a repair like behind any waiting change. Found by the simulation
//!   (`reads_are_linearizable`, seeds 19, 110, 343 and 933).

use slab::Slab;
use stategrid_proto::{ErrorCode, NsId};

use super::DataPlane;
use super::fence::Refusal;
use crate::cluster::map::HostId;

/// Changes waiting for their copies (repairs included) and reads held behind them, at most,
/// per data plane: a bound on memory when copies stop answering.
pub const PENDING_WRITES_MAX: usize = 1 << 20;

/// The objects of a change: (namespace, key), each sent to every copy.
pub type Objects = Vec<(NsId, Box<[u8]>)>;

/// One change applied here and waiting for its copies.
struct Pending<T> {
    /// The client's answer; `None` once answered (a repair: see the module doc).
    answer: Option<T>,
    partition: u16,
    objects: Objects,
    /// One entry per object per copy still to confirm.
    waiting: Vec<HostId>,
    /// Copies that refused (once each).
    refused_by: Vec<HostId>,
    /// A repair's copies in doubt, until it is sent again at `deadline_ms` (confirmations
    /// meanwhile are of the failed send: not counted).
    doubt: Vec<HostId>,
    failed: Option<Refusal>,
    deadline_ms: u64,
    /// Held reads of the same partition that arrived while it waited (indexes into `held`).
    readers: Vec<u32>,
}

/// A read held behind changes of its partition that wait for their copies.
struct Held<T> {
    answer: T,
    partition: u16,
    /// The changes it waits for (indexes of `PendingWrites::slab`; an index is removed when
    /// its change settles or is retried, before the slab can reuse it).
    after: Vec<u32>,
    failed: Option<Refusal>,
}

/// A write (or a held read) whose waiting is over: answer with `answer` unless `failed`.
pub struct Completed<T> {
    pub answer: T,
    pub partition: u16,
    pub failed: Option<Refusal>,
    /// The copies that had not confirmed (a timeout).
    pub unconfirmed: Vec<HostId>,
    /// A held read ([`DataPlane::begin_read`]), not a write.
    pub read: bool,
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

/// A repair to send ([`DataPlane::expire`]): each object's current state to every one of
/// `copies`, expecting a confirmation for `idx`, as for [`Begin::Replicate`].
#[derive(Debug, PartialEq, Eq)]
pub struct Resend {
    pub idx: u32,
    pub partition: u16,
    pub epoch: u64,
    pub me: HostId,
    pub copies: Vec<HostId>,
    pub objects: Objects,
}

/// What [`DataPlane::begin_read`] decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Read {
    /// Nothing of the partition waits: answer now.
    Now,
    /// Held: answered by a later [`Completed`] (from `confirm`, `expire` or a new map).
    Held,
    /// Too many requests wait already: answer this error instead.
    Refuse(Refusal),
}

/// The pending writes (and the reads held behind them) of one data plane.
pub struct PendingWrites<T> {
    slab: Slab<Pending<T>>,
    held: Slab<Held<T>>,
    /// Changes waiting per partition, repairs included (empty until the first waits).
    per_partition: Vec<u32>,
}

impl<T> Default for PendingWrites<T> {
    fn default() -> Self {
        PendingWrites {
            slab: Slab::new(),
            held: Slab::new(),
            per_partition: Vec::new(),
        }
    }
}

impl<T> Pending<T> {
    /// The copies that have not confirmed: still waited for, refused, or in doubt.
    fn in_doubt(&self) -> Vec<HostId> {
        let mut hosts: Vec<HostId> = (self.waiting.iter())
            .chain(&self.refused_by)
            .chain(&self.doubt)
            .copied()
            .collect();
        hosts.sort_unstable_by_key(|h| h.0);
        hosts.dedup();
        hosts
    }
}

impl<T> PendingWrites<T> {
    /// Changes waiting for copies (repairs included).
    pub fn len(&self) -> usize {
        self.slab.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }

    /// Reads held behind waiting changes.
    pub fn held_len(&self) -> usize {
        self.held.len()
    }

    /// Do changes of partition `p` wait for their copies? Cost: one load.
    #[inline]
    pub fn waiting_in(&self, p: usize) -> bool {
        self.per_partition.get(p).is_some_and(|&n| n > 0)
    }

    fn full(&self) -> bool {
        self.slab.len() + self.held.len() >= PENDING_WRITES_MAX
    }

    /// Releases the reads held behind change `idx`, failed with `failed` if given, to `out`.
    fn release_readers(
        &mut self,
        idx: usize,
        failed: Option<Refusal>,
        out: &mut Vec<Completed<T>>,
    ) {
        let readers = std::mem::take(&mut self.slab[idx].readers);
        for r in readers {
            let h = &mut self.held[r as usize];
            if let Some(f) = failed {
                h.failed.get_or_insert(f);
            }
            let i = h
                .after
                .iter()
                .position(|&w| w as usize == idx)
                .expect("a held read lists the changes it waits for");
            h.after.swap_remove(i);
            if h.after.is_empty() {
                let h = self.held.remove(r as usize);
                out.push(Completed {
                    answer: h.answer,
                    partition: h.partition,
                    failed: h.failed,
                    unconfirmed: Vec::new(),
                    read: true,
                });
            }
        }
    }

    /// Removes change `idx` for good (confirmed, or no longer this host's to repair), with the
    /// reads behind it (failed with `failed` if given).
    fn remove(&mut self, idx: usize, failed: Option<Refusal>, out: &mut Vec<Completed<T>>) {
        let pw = &mut self.slab[idx];
        if let Some(answer) = pw.answer.take() {
            out.push(Completed {
                answer,
                partition: pw.partition,
                failed: pw.failed,
                unconfirmed: std::mem::take(&mut pw.waiting),
                read: false,
            });
        }
        self.release_readers(idx, failed, out);
        let pw = self.slab.remove(idx);
        let n = &mut self.per_partition[pw.partition as usize];
        assert!(*n > 0, "a waiting change is counted in its partition");
        *n -= 1;
    }

    /// Change `idx` has no confirmation left to wait for (or its deadline passed): answered
    /// and removed when every copy confirmed; else its client (if still waiting) gets the
    /// failure, the reads behind it fail, and it stays as a repair of the copies that did not
    /// confirm, sent again at its deadline.
    fn settle(&mut self, idx: usize, out: &mut Vec<Completed<T>>) {
        let pw = &mut self.slab[idx];
        let doubt = pw.in_doubt();
        if doubt.is_empty() && pw.failed.is_none() {
            return self.remove(idx, None, out);
        }
        if doubt.is_empty() {
            // Failed, but by copies the map no longer names: nothing left to repair.
            let failed = pw.failed;
            return self.remove(idx, failed, out);
        }
        let failed = pw
            .failed
            .take()
            .unwrap_or((ErrorCode::ReplicationFailed, 0));
        if let Some(answer) = pw.answer.take() {
            out.push(Completed {
                answer,
                partition: pw.partition,
                failed: Some(failed),
                unconfirmed: pw.waiting.clone(),
                read: false,
            });
        }
        pw.doubt = doubt;
        pw.waiting.clear();
        pw.refused_by.clear();
        self.release_readers(idx, Some(failed), out);
    }
}

impl<T> DataPlane<T> {
    /// A change of `objects` of partition `p` was applied here at `now_ms`: does it wait for
    /// copies? Cost when it does: the waiting list and the objects' keys (kept for a repair).
    pub fn begin_write(
        &mut self,
        p: usize,
        objects: Objects,
        answer: T,
        now_ms: u64,
        timeout_ms: u64,
    ) -> (Begin, Option<T>) {
        let Some(view) = &self.view else {
            return (Begin::Local, Some(answer));
        };
        let copies: Vec<HostId> = view.owners[p].copies().filter(|&h| h != view.me).collect();
        if copies.is_empty() || objects.is_empty() {
            return (Begin::Local, Some(answer));
        }
        if self.pending.full() {
            return (
                Begin::Refuse((ErrorCode::ReplicationFailed, timeout_ms)),
                Some(answer),
            );
        }
        // One confirmation per changed object per copy (a host appears once per object).
        let waiting = (0..objects.len())
            .flat_map(|_| copies.iter().copied())
            .collect();
        let pending = &mut self.pending;
        if pending.per_partition.is_empty() {
            pending
                .per_partition
                .resize(crate::cluster::map::PARTITIONS, 0);
        }
        pending.per_partition[p] += 1;
        let idx = pending.slab.insert(Pending {
            answer: Some(answer),
            partition: p as u16,
            objects,
            waiting,
            refused_by: Vec::new(),
            doubt: Vec::new(),
            failed: None,
            deadline_ms: now_ms + timeout_ms,
            readers: Vec::new(),
        }) as u32;
        let begin = Begin::Replicate {
            idx,
            epoch: view.epoch,
            me: view.me,
            copies,
        };
        (begin, None)
    }

    /// A read of partition `p` (or a change that changed nothing) was served here: may it be
    /// answered now? Held while changes of `p` wait for their copies (see the module doc).
    /// Cost when nothing of `p` waits: one load. When held: one allocation (the list of
    /// changes it waits for), and one push per such change.
    pub fn begin_read(&mut self, p: usize, answer: T) -> (Read, Option<T>) {
        let pending = &mut self.pending;
        if !pending.waiting_in(p) {
            return (Read::Now, Some(answer));
        }
        if pending.full() {
            return (
                Read::Refuse((ErrorCode::ReplicationFailed, 0)),
                Some(answer),
            );
        }
        let r = pending.held.vacant_key() as u32;
        let mut after = Vec::new();
        for (i, pw) in pending.slab.iter_mut() {
            if pw.partition as usize == p {
                pw.readers.push(r);
                after.push(i as u32);
            }
        }
        assert!(
            !after.is_empty(),
            "the partition's count said a change waits"
        );
        let key = pending.held.insert(Held {
            answer,
            partition: p as u16,
            after,
            failed: None,
        });
        assert_eq!(key as u32, r, "a slab inserts at its vacant key");
        (Read::Held, None)
    }

    /// Copy `host` confirmed (or refused) one object of change `idx`. Returns the write when
    /// that was the last confirmation it waited for, with the reads it released. A repair a
    /// copy refused stays until its deadline and is sent again then.
    pub fn confirm(
        &mut self,
        idx: u32,
        host: HostId,
        refused: Option<Refusal>,
    ) -> Vec<Completed<T>> {
        let mut out = Vec::new();
        let Some(pw) = self.pending.slab.get_mut(idx as usize) else {
            return out;
        };
        let Some(i) = pw.waiting.iter().position(|&h| h == host) else {
            // A late or duplicate confirmation (after a resend, or of a copy already settled).
            return out;
        };
        pw.waiting.swap_remove(i);
        if let Some(r) = refused {
            pw.failed.get_or_insert(r);
            if !pw.refused_by.contains(&host) {
                pw.refused_by.push(host);
            }
        }
        // A repair a copy refused waits for its deadline to go again (no resend storm).
        let repair_refused = pw.answer.is_none() && !pw.refused_by.is_empty();
        if pw.waiting.is_empty() && !repair_refused {
            self.pending.settle(idx as usize, &mut out);
        }
        out
    }

    /// Changes whose copies did not confirm by their deadline: a waiting client is answered
    /// `ReplicationFailed` (detail `timeout_ms`), the reads behind fail alike, and the change
    /// is sent again to the copies in doubt (the [`Resend`]s, to be sent by the caller with a
    /// new deadline `now_ms + timeout_ms`).
    pub fn expire(&mut self, now_ms: u64, timeout_ms: u64) -> (Vec<Completed<T>>, Vec<Resend>) {
        let late: Vec<usize> = self
            .pending
            .slab
            .iter()
            .filter(|(_, pw)| now_ms >= pw.deadline_ms)
            .map(|(i, _)| i)
            .collect();
        let mut out = Vec::new();
        let mut resend = Vec::new();
        let Some(view) = &self.view else {
            return (out, resend);
        };
        for i in late {
            let pending = &mut self.pending;
            let timed_out = (ErrorCode::ReplicationFailed, timeout_ms);
            let pw = &mut pending.slab[i];
            let doubt = pw.in_doubt();
            if doubt.is_empty() {
                // Nothing unconfirmed (cannot stay so; settled when it became so).
                pending.remove(i, None, &mut out);
                continue;
            }
            if view.owners[pw.partition as usize].primary() != Some(view.me) {
                // No longer the primary (the map moved it while the change waited): every
                // copy's fence refuses this host's changes, so a repair would go on forever,
                // failing the new copy's migration streams; the new primary's copy is the
                // partition's state. The client, if it still waits, gets the failure.
                pw.failed = Some(timed_out);
                pending.remove(i, Some(timed_out), &mut out);
                continue;
            }
            if pw.answer.is_some() {
                pw.failed = Some(timed_out);
                pending.settle(i, &mut out);
            } else {
                pending.release_readers(i, Some(timed_out), &mut out);
            }
            let pw = &mut pending.slab[i];
            pw.waiting = (0..pw.objects.len())
                .flat_map(|_| doubt.iter().copied())
                .collect();
            pw.refused_by.clear();
            pw.doubt.clear();
            pw.failed = None;
            pw.deadline_ms = now_ms + timeout_ms;
            resend.push(Resend {
                idx: i as u32,
                partition: pw.partition,
                epoch: view.epoch,
                me: view.me,
                copies: doubt,
                objects: pw.objects.clone(),
            });
        }
        (out, resend)
    }

    /// Every waiting change, failed with `refusal` (this host rejoined as a new member), with
    /// the reads behind them; repairs are dropped (the store has moved on without this host).
    pub(super) fn fail_all(&mut self, refusal: Refusal) -> Vec<Completed<T>> {
        let all: Vec<usize> = self.pending.slab.iter().map(|(i, _)| i).collect();
        let mut out = Vec::new();
        for i in all {
            self.pending.slab[i].failed = Some(refusal);
            self.pending.remove(i, Some(refusal), &mut out);
        }
        assert!(
            self.pending.held.is_empty(),
            "every held read waits for a change"
        );
        out
    }

    /// A new map: copies it no longer names are not waited for, and repairs of partitions
    /// this host is no longer the primary of are dropped (the new primary's copy is the
    /// store's; the reads behind them fail). Returns what thereby completed.
    pub(super) fn settle_dropped_copies(&mut self) -> Vec<Completed<T>> {
        let Some(view) = &self.view else {
            return Vec::new();
        };
        let mut done = Vec::new();
        let mut dropped = Vec::new();
        for (i, pw) in self.pending.slab.iter_mut() {
            let o = &view.owners[pw.partition as usize];
            if pw.answer.is_none() && o.primary() != Some(view.me) {
                dropped.push(i);
                continue;
            }
            pw.waiting.retain(|&h| o.copies().any(|c| c == h));
            pw.refused_by.retain(|&h| o.copies().any(|c| c == h));
            pw.doubt.retain(|&h| o.copies().any(|c| c == h));
            let repair_left = !pw.refused_by.is_empty() || !pw.doubt.is_empty();
            if pw.waiting.is_empty() && (pw.answer.is_some() || !repair_left) {
                done.push(i);
            }
        }
        let mut out = Vec::new();
        for i in dropped {
            self.pending
                .remove(i, Some((ErrorCode::ReplicationFailed, 0)), &mut out);
        }
        for i in done {
            self.pending.settle(i, &mut out);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::cluster::map::{Owners, PARTITIONS, Role};
    use crate::cluster::plane::View;

    const ME: HostId = HostId(1);
    const REPLICA: HostId = HostId(2);

    /// Every partition: primary here, one replica.
    fn plane() -> DataPlane<&'static str> {
        let mut d = DataPlane::default();
        let owners = Owners::from_entries(&[(ME, Role::Full), (REPLICA, Role::Full)]);
        d.set_view(view(3, owners));
        d
    }

    /// Epoch `epoch`, every partition owned by `owners`, seen from `ME`.
    fn view(epoch: u64, owners: Owners) -> Arc<View> {
        Arc::new(View {
            me: ME,
            epoch,
            hosts: Vec::new(),
            owners: vec![owners; PARTITIONS],
            primary_since: vec![3; PARTITIONS],
        })
    }

    fn write(d: &mut DataPlane<&'static str>, p: usize, answer: &'static str) -> u32 {
        let objects = vec![(7, Box::from(answer.as_bytes()))];
        match d.begin_write(p, objects, answer, 0, 100) {
            (Begin::Replicate { idx, .. }, None) => idx,
            other => panic!("a write with a replica waits: {:?}", other.0),
        }
    }

    fn answers(done: &[Completed<&'static str>]) -> Vec<(&'static str, bool)> {
        done.iter()
            .map(|c| (c.answer, c.failed.is_some()))
            .collect()
    }

    #[test]
    fn a_read_of_a_partition_without_waiting_changes_is_answered_at_once() {
        let mut d = plane();
        write(&mut d, 5, "w");
        // Another partition: nothing waits there.
        assert_eq!(d.begin_read(6, "r"), (Read::Now, Some("r")));
        assert_eq!(d.held_len(), 0);
    }

    /// Before, a read was answered at once from a change its copies had not confirmed, which
    /// the store could then lose with the primary (the simulation's `reads_are_linearizable`).
    #[test]
    fn a_read_waits_for_the_changes_before_it_and_not_for_later_ones() {
        let mut d = plane();
        let w1 = write(&mut d, 5, "w1");
        let w2 = write(&mut d, 5, "w2");
        assert_eq!(d.begin_read(5, "r"), (Read::Held, None));
        let w3 = write(&mut d, 5, "w3");
        // w2 confirms first: r still waits for w1.
        assert_eq!(answers(&d.confirm(w2, REPLICA, None)), [("w2", false)]);
        assert_eq!(
            answers(&d.confirm(w1, REPLICA, None)),
            [("w1", false), ("r", false)]
        );
        // w3 came after r: r did not wait for it.
        assert!(d.waiting_in(5));
        assert_eq!(answers(&d.confirm(w3, REPLICA, None)), [("w3", false)]);
        assert!(!d.waiting_in(5));
        assert_eq!((d.pending_len(), d.held_len()), (0, 0));
    }

    #[test]
    fn a_read_held_behind_a_change_that_fails_fails_with_it() {
        let mut d = plane();
        let w = write(&mut d, 7, "w");
        assert_eq!(d.begin_read(7, "r"), (Read::Held, None));
        let refused = Some((ErrorCode::StaleEpoch, 4));
        let done = d.confirm(w, REPLICA, refused);
        assert_eq!(answers(&done), [("w", true), ("r", true)]);
        assert!(done[1].read && !done[0].read);
        // By timeout too.
        let mut d = plane();
        write(&mut d, 7, "w2");
        assert_eq!(d.begin_read(7, "r2"), (Read::Held, None));
        let (done, _) = d.expire(1_000, 100);
        assert_eq!(answers(&done), [("w2", true), ("r2", true)]);
        assert_eq!(done[1].failed, Some((ErrorCode::ReplicationFailed, 100)));
    }

    /// Before, a failed change was forgotten although it stayed applied on the primary: a
    /// later read saw it, and lost it with the primary (simulation seeds 110, 343, 933).
    #[test]
    fn a_failed_change_is_sent_again_until_confirmed_and_reads_wait_for_it() {
        let mut d = plane();
        let w = write(&mut d, 7, "w");
        // The copy never answers: the client gets ReplicationFailed, the change is resent.
        let (done, resend) = d.expire(100, 100);
        assert_eq!(answers(&done), [("w", true)]);
        assert_eq!(
            resend,
            [Resend {
                idx: w,
                partition: 7,
                epoch: 3,
                me: ME,
                copies: vec![REPLICA],
                objects: vec![(7, Box::from(&b"w"[..]))],
            }]
        );
        // Reads of the partition wait for the repair; other partitions do not.
        assert!(d.waiting_in(7));
        assert_eq!(d.begin_read(7, "r"), (Read::Held, None));
        assert_eq!(d.begin_read(8, "r8"), (Read::Now, Some("r8")));
        // Not confirmed again by the next deadline: the read fails, the repair goes again.
        let (done, resend) = d.expire(200, 100);
        assert_eq!(answers(&done), [("r", true)]);
        assert_eq!(resend.len(), 1);
        // A refusal is retried at the deadline, not at once.
        assert!(
            d.confirm(w, REPLICA, Some((ErrorCode::LowMemory, 0)))
                .is_empty()
        );
        assert!(d.waiting_in(7));
        let (_, resend) = d.expire(300, 100);
        assert_eq!(resend.len(), 1);
        // Confirmed: the repair ends, and the reads held behind it are answered.
        assert_eq!(d.begin_read(7, "r2"), (Read::Held, None));
        assert_eq!(answers(&d.confirm(w, REPLICA, None)), [("r2", false)]);
        assert!(!d.waiting_in(7));
        assert_eq!((d.pending_len(), d.held_len()), (0, 0));
    }

    #[test]
    fn a_repair_ends_when_the_map_drops_the_copy_or_this_host_stops_being_primary() {
        let alone = Owners::from_entries(&[(ME, Role::Full)]);
        let moved = Owners::from_entries(&[(REPLICA, Role::Full), (ME, Role::Full)]);
        for (owners, read_fails) in [(alone, false), (moved, true)] {
            let mut d = plane();
            write(&mut d, 7, "w");
            let (_, resend) = d.expire(100, 100);
            assert_eq!(resend.len(), 1);
            assert_eq!(d.begin_read(7, "r"), (Read::Held, None));
            let (_, done) = d.set_view(view(4, owners));
            assert_eq!(answers(&done), [("r", read_fails)]);
            assert_eq!((d.pending_len(), d.held_len()), (0, 0));
        }
    }

    /// A change still waiting for its client when the map moved the partition away stayed as
    /// a repair the fence refuses every time, sent again forever (simulation seed 839).
    #[test]
    fn a_change_that_times_out_after_the_partition_moved_is_not_repaired() {
        let mut d = plane();
        write(&mut d, 7, "w");
        let moved = Owners::from_entries(&[(REPLICA, Role::Full), (ME, Role::Full)]);
        let (_, done) = d.set_view(view(4, moved));
        assert!(done.is_empty(), "the client still waits for its copies");
        let (done, resend) = d.expire(100, 100);
        assert_eq!(answers(&done), [("w", true)]);
        assert!(
            resend.is_empty(),
            "no repair from a host that is not the primary"
        );
        assert_eq!((d.pending_len(), d.held_len()), (0, 0));
    }

    #[test]
    fn held_reads_are_released_when_a_new_map_drops_the_copy() {
        let mut d = plane();
        write(&mut d, 9, "w");
        assert_eq!(d.begin_read(9, "r"), (Read::Held, None));
        let alone = Owners::from_entries(&[(ME, Role::Full)]);
        let (_, done) = d.set_view(view(4, alone));
        assert_eq!(answers(&done), [("w", false), ("r", false)]);
        assert_eq!((d.pending_len(), d.held_len()), (0, 0));
    }
}
