//! Migration as a plain state machine: which partitions this host is receiving, when to ask
//! their primary for them, and when a move is done — and, on the primary's side, whether a
//! pull may be served.
//!
//! A host the map names as a pending copy of a partition asks its primary to stream it
//! (`MigratePull`). The primary refuses while its own map does not list the new copy (its
//! changes would not reach it: [`accept_pull`]); otherwise it streams every object of the
//! partition and closes with `MigrateEnd`. Every object arrives through the fence like a
//! replicated change ([`super::fence`]); an object the fence refused marks the pull failed,
//! and its end then asks again instead of reporting the move. A stream that stops (the link
//! broke, the primary died) is asked again after [`PULL_IDLE_MS`] without an object of the
//! partition arriving, or [`PULL_ASK_MAX_MS`] after the ask without an end (the changes a
//! busy partition's primary replicates to its new copy count as progress too, and would keep a
//! lost stream waiting forever); a refused pull after [`PULL_RETRY_MS`]. The primary restarts
//! a stream asked again in its place in the queue (`hosts.rs`), so asking again never sends a
//! partition to the back of a long migration. Only a `MigrateEnd` of a pull with every object applied makes
//! the host report `MigrationDone` to the control plane, which then makes the copy a replica.
//!
//! The shard (`src/server/shard/hosts.rs`) turns [`Pulls::due`] into `MigratePull` frames and
//! feeds back what arrives; the simulation (`tests/cluster_sim.rs`) does the same over its
//! simulated links, so both run this code. The primary's stream itself (a walk over a snapshot
//! of the partition's slots, paced by the link's queue) is I/O and stays in the shard.

use std::collections::BTreeMap;

use stategrid_proto::ErrorCode;

use crate::cluster::map::{HostId, PARTITIONS, Role};
use crate::cluster::plane::View;

/// A pull with no object arriving for this long is asked again (the stream broke).
pub const PULL_IDLE_MS: u64 = 5_000;
/// A pull asked this long ago without an end is asked again, progress or not (a partition's
/// stream is 1/1024 of the store's data; a primary sends one stream at a time).
pub const PULL_ASK_MAX_MS: u64 = 60_000;
/// Wait before asking again after a refused, unsent or failed pull.
pub const PULL_RETRY_MS: u64 = 200;

/// One partition this host is receiving.
#[derive(Clone, Copy, Debug)]
struct Pull {
    /// The primary the last ask went to.
    source: Option<HostId>,
    /// An ask is out and its stream has not ended.
    asked: bool,
    /// An object of the current stream was refused: its end asks again.
    failed: bool,
    retry_at_ms: u64,
    asked_at_ms: u64,
    last_progress_ms: u64,
}

/// The partitions this host is receiving (at most [`PARTITIONS`]: one entry each).
#[derive(Debug)]
pub struct Pulls {
    pulls: BTreeMap<u16, Pull>,
    idle_ms: u64,
    ask_max_ms: u64,
    retry_ms: u64,
}

impl Default for Pulls {
    fn default() -> Self {
        Pulls::new(PULL_IDLE_MS, PULL_ASK_MAX_MS, PULL_RETRY_MS)
    }
}

impl Pulls {
    /// With the stream-idle, ask-again and retry times (the simulation shortens them).
    pub fn new(idle_ms: u64, ask_max_ms: u64, retry_ms: u64) -> Pulls {
        assert!(
            idle_ms > 0 && retry_ms > 0 && ask_max_ms >= idle_ms,
            "pull timers must run, and a stream may idle less than it may last"
        );
        Pulls {
            pulls: BTreeMap::new(),
            idle_ms,
            ask_max_ms,
            retry_ms,
        }
    }

    /// Partitions being received now.
    pub fn len(&self) -> usize {
        self.pulls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pulls.is_empty()
    }

    /// The control plane asks this host to fetch `p` (it is a pending copy). Asking twice
    /// changes nothing.
    pub fn want(&mut self, p: u16, now_ms: u64) {
        assert!((p as usize) < PARTITIONS, "partition {p} out of range");
        self.pulls.entry(p).or_insert(Pull {
            source: None,
            asked: false,
            failed: false,
            retry_at_ms: now_ms,
            asked_at_ms: now_ms,
            last_progress_ms: now_ms,
        });
    }

    /// A newer map was installed: forget `p` if this host is no longer a pending copy of it,
    /// and ask again if its primary changed (the old one dropped its stream). The caller names
    /// the partitions it owns (a shard: its own; the simulation: all).
    pub fn on_map(&mut self, view: &View, partitions: impl Iterator<Item = usize>) {
        for p in partitions {
            let key = p as u16;
            if view.owners[p].role_of(view.me) != Some(Role::Pending) {
                self.pulls.remove(&key);
            } else if let Some(pull) = self.pulls.get_mut(&key)
                && pull.asked
                && pull.source != view.owners[p].primary()
            {
                pull.asked = false;
                pull.failed = false;
            }
        }
    }

    /// The pulls to ask now, as `(partition, primary)`: each is marked asked (the caller sends
    /// them, and calls [`Pulls::refused`] for one it could not send). A stream idle for
    /// `idle_ms`, or asked `ask_max_ms` ago, is asked again.
    pub fn due(&mut self, view: &View, now_ms: u64) -> Vec<(u16, HostId)> {
        let mut asks = Vec::new();
        for (&p, pull) in self.pulls.iter_mut() {
            if pull.asked
                && (now_ms.saturating_sub(pull.last_progress_ms) >= self.idle_ms
                    || now_ms.saturating_sub(pull.asked_at_ms) >= self.ask_max_ms)
            {
                pull.asked = false;
            }
            if pull.asked || now_ms < pull.retry_at_ms {
                continue;
            }
            let Some(primary) = view.owners[p as usize].primary() else {
                continue;
            };
            if primary == view.me {
                continue;
            }
            // `failed` stays: an end of the stream asked before (stalled, not lost) may still
            // arrive, and must not report a move one of whose objects was refused. Only an end
            // (or a new primary, whose ends are the only ones counted) clears it.
            pull.asked = true;
            pull.source = Some(primary);
            pull.asked_at_ms = now_ms;
            pull.last_progress_ms = now_ms;
            asks.push((p, primary));
        }
        asks
    }

    /// The primary refused the pull, or it could not be sent: ask again after `retry_ms`.
    pub fn refused(&mut self, p: u16, now_ms: u64) {
        if let Some(pull) = self.pulls.get_mut(&p) {
            pull.asked = false;
            pull.retry_at_ms = now_ms + self.retry_ms;
        }
    }

    /// An object of `p` arrived from `from` and the fence `applied` it or not. Returns whether
    /// `p` is being received (for progress metrics). Only objects from the host the pull asked
    /// count: a refused change from anyone else (an old primary still repairing a change it
    /// could not confirm, which the fence refuses every time) says nothing about the stream,
    /// and counting it would fail every stream while that repair goes on.
    pub fn on_object(&mut self, p: u16, from: HostId, applied: bool, now_ms: u64) -> bool {
        let Some(pull) = self.pulls.get_mut(&p) else {
            return false;
        };
        if pull.source != Some(from) {
            return true;
        }
        pull.last_progress_ms = now_ms;
        pull.failed |= !applied;
        true
    }

    /// `from` closed its stream of `p`. Returns true when the move is done: every object
    /// of the stream was applied, and the host reports `MigrationDone`. An end from a host
    /// this pull did not ask is ignored; a failed stream is asked again after `retry_ms`.
    pub fn on_end(&mut self, p: u16, from: HostId, now_ms: u64) -> bool {
        let Some(pull) = self.pulls.get_mut(&p) else {
            return false;
        };
        if pull.source != Some(from) {
            return false;
        }
        if pull.failed {
            pull.asked = false;
            pull.failed = false;
            pull.retry_at_ms = now_ms + self.retry_ms;
            return false;
        }
        self.pulls.remove(&p);
        true
    }
}

/// May this host (the receiver of `MigratePull`) stream `p` to `to`, who asked with its map of
/// `epoch`? Refused with `StaleEpoch` while this host's map does not list `to` as a copy (its
/// changes would not reach the new copy, so objects written during the stream could be
/// missed), and `NotPrimary` when it is not the primary. The error's detail is this host's
/// epoch.
pub fn accept_pull(view: &View, epoch: u64, to: HostId, p: usize) -> Result<(), (ErrorCode, u64)> {
    if p >= PARTITIONS {
        return Err((ErrorCode::InvalidRequest, p as u64));
    }
    let o = &view.owners[p];
    if view.epoch < epoch || o.role_of(to).is_none() {
        return Err((ErrorCode::StaleEpoch, view.epoch));
    }
    if o.primary() != Some(view.me) {
        return Err((ErrorCode::NotPrimary, view.epoch));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::map::Owners;

    const ME: HostId = HostId(2);
    const SRC: HostId = HostId(1);
    const OTHER: HostId = HostId(3);

    /// A view where partition 0's primary is `primary` and `me` is pending on it.
    fn view(epoch: u64, primary: HostId, me_pending: bool) -> View {
        let mut owners = vec![Owners::default(); PARTITIONS];
        owners[0] = if me_pending {
            Owners::from_entries(&[(primary, Role::Full), (ME, Role::Pending)])
        } else {
            Owners::from_entries(&[(primary, Role::Full)])
        };
        View {
            me: ME,
            epoch,
            hosts: Vec::new(),
            owners,
            primary_since: vec![u64::MAX; PARTITIONS],
        }
    }

    #[test]
    fn a_pull_is_asked_once_and_done_by_a_clean_end() {
        let v = view(3, SRC, true);
        let mut p = Pulls::new(1000, 3000, 200);
        p.want(0, 10);
        p.want(0, 20);
        assert_eq!(p.due(&v, 10), vec![(0, SRC)]);
        assert!(p.due(&v, 500).is_empty(), "asked once while it streams");
        assert!(p.on_object(0, SRC, true, 600));
        assert!(
            !p.on_end(0, OTHER, 700),
            "an end from a host not asked is ignored"
        );
        assert!(p.on_end(0, SRC, 700));
        assert!(p.is_empty());
    }

    #[test]
    fn a_refused_object_makes_the_end_ask_again() {
        let v = view(3, SRC, true);
        let mut p = Pulls::new(1000, 3000, 200);
        p.want(0, 0);
        p.due(&v, 0);
        p.on_object(0, SRC, false, 10);
        assert!(!p.on_end(0, SRC, 20), "not done: an object was refused");
        assert!(p.due(&v, 100).is_empty(), "waits for the retry");
        assert_eq!(p.due(&v, 220), vec![(0, SRC)]);
        // The new stream starts clean: its own clean end completes the move.
        p.on_object(0, SRC, true, 230);
        assert!(p.on_end(0, SRC, 240));
    }

    #[test]
    fn a_refused_change_from_another_host_does_not_fail_the_stream() {
        let v = view(3, SRC, true);
        let mut p = Pulls::new(1000, 3000, 200);
        p.want(0, 0);
        p.due(&v, 0);
        assert!(p.on_object(0, OTHER, false, 10), "still receiving");
        p.on_object(0, SRC, true, 20);
        assert!(p.on_end(0, SRC, 30));
    }

    #[test]
    fn a_stalled_stream_with_a_refused_object_never_completes_the_move() {
        let v = view(3, SRC, true);
        let mut p = Pulls::new(1000, 3000, 200);
        p.want(0, 0);
        p.due(&v, 0);
        p.on_object(0, SRC, false, 10);
        // Idle: asked again; then the first stream's end, delayed on the link, arrives.
        assert_eq!(p.due(&v, 1010), vec![(0, SRC)]);
        assert!(
            !p.on_end(0, SRC, 1020),
            "the refused object was never applied"
        );
        assert_eq!(p.due(&v, 1220), vec![(0, SRC)]);
        assert!(p.on_end(0, SRC, 1300));
    }

    #[test]
    fn idle_refused_and_moved_pulls_are_asked_again() {
        let v = view(3, SRC, true);
        let mut p = Pulls::new(1000, 3000, 200);
        p.want(0, 0);
        p.due(&v, 0);
        p.on_object(0, SRC, true, 500);
        assert!(
            p.due(&v, 1400).is_empty(),
            "progress keeps the stream alive"
        );
        assert_eq!(p.due(&v, 1500), vec![(0, SRC)], "idle for 1000 ms");
        p.refused(0, 1500);
        assert!(p.due(&v, 1600).is_empty());
        assert_eq!(p.due(&v, 1700), vec![(0, SRC)]);
        // Changes replicated to the new copy keep it "in progress", but not past ask_max_ms.
        p.on_object(0, SRC, true, 2200);
        p.on_object(0, SRC, true, 3000);
        p.on_object(0, SRC, true, 3900);
        assert!(p.due(&v, 4600).is_empty());
        assert_eq!(
            p.due(&v, 4700),
            vec![(0, SRC)],
            "asked 3000 ms ago without an end"
        );
        // A new primary: the old one dropped its stream.
        let v2 = view(4, OTHER, true);
        p.on_map(&v2, 0..PARTITIONS);
        assert_eq!(p.due(&v2, 4701), vec![(0, OTHER)]);
        assert!(
            !p.on_end(0, SRC, 4702),
            "the old primary's end does not count"
        );
        // No longer pending: forgotten.
        p.on_map(&view(5, OTHER, false), 0..PARTITIONS);
        assert!(p.is_empty());
    }

    #[test]
    fn a_primary_streams_only_to_a_copy_its_map_lists() {
        let mut v = view(3, SRC, true);
        v.me = SRC;
        assert_eq!(accept_pull(&v, 3, ME, 0), Ok(()));
        assert_eq!(accept_pull(&v, 4, ME, 0), Err((ErrorCode::StaleEpoch, 3)));
        assert_eq!(
            accept_pull(&v, 3, OTHER, 0),
            Err((ErrorCode::StaleEpoch, 3))
        );
        v.me = OTHER;
        v.owners[0] =
            Owners::from_entries(&[(SRC, Role::Full), (ME, Role::Pending), (OTHER, Role::Full)]);
        assert_eq!(accept_pull(&v, 3, ME, 0), Err((ErrorCode::NotPrimary, 3)));
        assert_eq!(
            accept_pull(&v, 3, ME, PARTITIONS),
            Err((ErrorCode::InvalidRequest, PARTITIONS as u64))
        );
    }
}
