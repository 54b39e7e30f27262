//! The boundary between the control plane and the data plane of one host.
//!
//! The control plane (`control.rs`: one thread with SWIM, the Raft node and the management
//! port) decides; the data plane (the shards) serves. They share only this [`Plane`]: the
//! installed map as an immutable [`View`], the primary lease, migration commands going down and
//! migration events coming up. Everything here is control-path traffic (a few changes per
//! second at most), so plain mutexes and atomics are fine: a shard reads the generation once
//! per ring pass, and takes the mutexes only when it changed.

use std::collections::VecDeque;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use super::map::{HostId, HostInfo, Owners, PARTITIONS};

/// Milliseconds of a monotonic clock shared by the whole process (control plane and shards
/// compare lease ends against it).
pub fn now_ms() -> u64 {
    static START: OnceLock<std::time::Instant> = OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
        + 1
}

/// Where a host listens: one address, its management, client and internal ports.
/// Written `ip:mgt_port/svr_port/int_port` (the `addr` of [`HostInfo`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HostAddr {
    pub ip: Ipv4Addr,
    pub mgt_port: u16,
    pub svr_port: u16,
    pub int_port: u16,
}

impl HostAddr {
    pub fn mgt(&self) -> SocketAddr {
        SocketAddr::new(self.ip.into(), self.mgt_port)
    }
    pub fn svr(&self) -> SocketAddr {
        SocketAddr::new(self.ip.into(), self.svr_port)
    }
    pub fn int(&self) -> SocketAddr {
        SocketAddr::new(self.ip.into(), self.int_port)
    }
}

impl fmt::Display for HostAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}/{}/{}",
            self.ip, self.mgt_port, self.svr_port, self.int_port
        )
    }
}

impl FromStr for HostAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<HostAddr, String> {
        let bad =
            || format!("'{s}' is not a host address (expected ip:mgt_port/svr_port/int_port)");
        let (ip, ports) = s.split_once(':').ok_or_else(bad)?;
        let mut it = ports.split('/').map(|p| p.parse::<u16>());
        let (Some(Ok(mgt_port)), Some(Ok(svr_port)), Some(Ok(int_port)), None) =
            (it.next(), it.next(), it.next(), it.next())
        else {
            return Err(bad());
        };
        Ok(HostAddr {
            ip: ip.parse().map_err(|_| bad())?,
            mgt_port,
            svr_port,
            int_port,
        })
    }
}

/// The installed map as the shards see it. Immutable; a new map is a new `View`.
#[derive(Clone, Debug)]
pub struct View {
    pub me: HostId,
    pub epoch: u64,
    /// Every host the map knows, with `addr` a [`HostAddr`].
    pub hosts: Vec<HostInfo>,
    /// `PARTITIONS` entries: primary first, then replicas, pending and outgoing copies.
    pub owners: Vec<Owners>,
    /// Per partition, the first epoch of this host's current unbroken run as its primary
    /// (`u64::MAX`: not primary). Filled in by [`Plane::publish`], which sees every installed
    /// map in order; a shard may miss some when several arrive between two of its passes.
    pub primary_since: Vec<u64>,
}

impl View {
    /// A host's parsed address, if the map knows it.
    pub fn addr(&self, id: HostId) -> Option<HostAddr> {
        self.hosts
            .iter()
            .find(|h| h.id == id)
            .and_then(|h| h.addr.parse().ok())
    }

    pub fn check(&self) {
        assert_eq!(
            self.owners.len(),
            PARTITIONS,
            "a view covers every partition"
        );
        assert_eq!(self.primary_since.len(), PARTITIONS);
    }
}

/// Work the control plane hands to the data plane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataCmd {
    /// Copy `partition` from host `from` to this host (we are a pending owner under `epoch`);
    /// report [`DataEvent::MigrationDone`] when its last object has arrived.
    Pull {
        partition: u16,
        from: HostId,
        epoch: u64,
    },
    /// A store-wide parameter set through the Raft log (`stategrid set NAME VALUE --all`):
    /// every shard applies it to its store.
    SetParam { name: String, value: String },
}

/// What the data plane reports to the control plane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataEvent {
    MigrationDone {
        partition: u16,
    },
    /// The process is stopping (SIGTERM): move this host's partitions away first.
    Leave,
}

/// Per-shard numbers the control plane reads for `stategrid query`.
#[derive(Default)]
pub struct ShardCounters {
    pub objects: AtomicU64,
    pub memory_bytes: AtomicU64,
}

/// Shared by the control plane and every shard of one host. See the module doc.
pub struct Plane {
    view: Mutex<Option<Arc<View>>>,
    /// Bumped on every new view and every new command; shards compare it once per pass.
    generation: AtomicU64,
    /// The primary lease: valid for `lease_epoch` until `lease_until_ms` ([`now_ms`] clock).
    lease_epoch: AtomicU64,
    lease_until_ms: AtomicU64,
    /// Commands per shard (the shard that owns the partition takes it).
    cmds: Vec<Mutex<VecDeque<DataCmd>>>,
    events: Mutex<Vec<DataEvent>>,
    wakers: Mutex<Vec<Box<dyn Fn() + Send>>>,
    pub counters: Vec<ShardCounters>,
    /// For `/metrics`, counted as maps are installed (off the request path).
    pub failovers: FailoverCounters,
}

/// Failovers as this host saw them in the maps it installed.
#[derive(Default)]
pub struct FailoverCounters {
    /// Partitions this host became primary of because their primary had failed (declared
    /// failed, or dropped from the map while still primary).
    pub promotions: AtomicU64,
    /// Hosts the store declared failed.
    pub hosts_failed: AtomicU64,
}

impl FailoverCounters {
    /// Counts what changed from `prev` to `next` (two maps installed one after the other).
    fn count(&self, prev: &View, next: &View) {
        use crate::cluster::map::HostState;
        let failed = |v: &View, id| {
            v.hosts
                .iter()
                .any(|h| h.id == id && h.state == HostState::Failed)
        };
        let gone = |v: &View, id| !v.hosts.iter().any(|h| h.id == id);
        // Marked failed now, or dropped from the map without having failed or left first.
        let newly = next
            .hosts
            .iter()
            .filter(|h| h.state == HostState::Failed && !failed(prev, h.id))
            .count()
            + prev
                .hosts
                .iter()
                .filter(|h| gone(next, h.id))
                .filter(|h| !matches!(h.state, HostState::Failed | HostState::Leaving))
                .count();
        self.hosts_failed.fetch_add(newly as u64, Ordering::Relaxed);
        let promoted = (0..PARTITIONS)
            .filter(|&p| {
                let (was, now) = (prev.owners[p].primary(), next.owners[p].primary());
                now == Some(next.me)
                    && was.is_some_and(|w| w != next.me && (failed(next, w) || gone(next, w)))
            })
            .count();
        self.promotions
            .fetch_add(promoted as u64, Ordering::Relaxed);
    }
}

impl Plane {
    pub fn new(shards: usize) -> Plane {
        Plane {
            view: Mutex::new(None),
            generation: AtomicU64::new(0),
            lease_epoch: AtomicU64::new(0),
            lease_until_ms: AtomicU64::new(0),
            cmds: (0..shards).map(|_| Mutex::new(VecDeque::new())).collect(),
            events: Mutex::new(Vec::new()),
            wakers: Mutex::new(Vec::new()),
            counters: (0..shards).map(|_| ShardCounters::default()).collect(),
            failovers: FailoverCounters::default(),
        }
    }

    pub fn shards(&self) -> usize {
        self.cmds.len()
    }

    // ---- control plane side ------------------------------------------------------------

    /// Installs a new map for the shards and wakes them. Call it for every installed map, in
    /// order: `primary_since` is computed from the previous one. A run as primary continues
    /// only from the epoch just before (a skipped epoch, as after a snapshot, may have moved the
    /// partition away and back).
    pub fn publish(&self, mut view: View) {
        let mut slot = self.view.lock().unwrap();
        if let Some(old) = slot.as_ref() {
            self.failovers.count(old, &view);
        }
        let prev = slot.as_ref().map(|p| (p.epoch, p.primary_since.as_slice()));
        view.primary_since =
            super::data::lease::primary_since(prev, view.epoch, &view.owners, view.me);
        view.check();
        *slot = Some(Arc::new(view));
        drop(slot);
        self.bump();
    }

    /// Records the lease the leader granted (or `until_ms` 0 to drop it).
    pub fn set_lease(&self, epoch: u64, until_ms: u64) {
        // Order: the shards read until after epoch; a reader that sees the new end with the
        // old epoch refuses (epochs differ), never the reverse.
        let old_epoch = self.lease_epoch.load(Ordering::Acquire);
        self.lease_until_ms.store(0, Ordering::Release);
        self.lease_epoch.store(epoch, Ordering::Release);
        self.lease_until_ms.store(until_ms, Ordering::Release);
        if epoch != old_epoch {
            // A lease for a new epoch releases requests the shards hold for moved partitions.
            self.wake();
        }
    }

    /// Queues a command for the shard that owns `partition`.
    pub fn push_cmd(&self, shard: usize, cmd: DataCmd) {
        self.cmds[shard].lock().unwrap().push_back(cmd);
        self.bump();
    }

    pub fn take_events(&self) -> Vec<DataEvent> {
        std::mem::take(&mut *self.events.lock().unwrap())
    }

    // ---- data plane side ---------------------------------------------------------------

    /// Could another host take this one's partitions (an active host with a weight)?
    pub fn others_can_take(&self) -> bool {
        self.view().is_some_and(|v| {
            v.hosts
                .iter()
                .any(|h| h.id != v.me && h.weight > 0 && h.state == super::map::HostState::Active)
        })
    }

    /// Does this host still hold a copy of any partition in the installed map?
    pub fn holds_partitions(&self) -> bool {
        self.view()
            .is_some_and(|v| v.owners.iter().any(|o| o.role_of(v.me).is_some()))
    }

    /// Registers how to wake a shard's loop (its ring's eventfd).
    pub fn add_waker(&self, wake: Box<dyn Fn() + Send>) {
        self.wakers.lock().unwrap().push(wake);
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn view(&self) -> Option<Arc<View>> {
        self.view.lock().unwrap().clone()
    }

    /// The lease as `(epoch, until_ms)`.
    pub fn lease(&self) -> (u64, u64) {
        let until = self.lease_until_ms.load(Ordering::Acquire);
        let epoch = self.lease_epoch.load(Ordering::Acquire);
        (epoch, until)
    }

    pub fn take_cmds(&self, shard: usize) -> Vec<DataCmd> {
        self.cmds[shard].lock().unwrap().drain(..).collect()
    }

    pub fn push_event(&self, e: DataEvent) {
        self.events.lock().unwrap().push(e);
    }

    fn bump(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.wake();
    }

    fn wake(&self) {
        for w in self.wakers.lock().unwrap().iter() {
            w();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(me: u64, epoch: u64, primary: &[u64]) -> View {
        use super::super::map::Role;
        View {
            me: HostId(me),
            epoch,
            hosts: Vec::new(),
            owners: (0..PARTITIONS)
                .map(|p| Owners::from_entries(&[(HostId(primary[p % primary.len()]), Role::Full)]))
                .collect(),
            primary_since: Vec::new(),
        }
    }

    #[test]
    fn primary_runs_continue_over_consecutive_epochs_only() {
        let plane = Plane::new(1);
        plane.publish(view(1, 5, &[1, 2]));
        let v = plane.view().unwrap();
        assert_eq!((v.primary_since[0], v.primary_since[1]), (5, u64::MAX));
        // Epoch 6: partition 0 stays here, 1 moves here.
        plane.publish(view(1, 6, &[1, 1]));
        let v = plane.view().unwrap();
        assert_eq!((v.primary_since[0], v.primary_since[1]), (5, 6));
        // Epoch 9 skips 7 and 8 (a snapshot): every run starts again.
        plane.publish(view(1, 9, &[1, 1]));
        let v = plane.view().unwrap();
        assert_eq!((v.primary_since[0], v.primary_since[1]), (9, 9));
    }

    #[test]
    fn host_addr_round_trips_and_rejects_junk() {
        let a: HostAddr = "127.0.0.2:2720/2721/2722".parse().unwrap();
        assert_eq!(a.svr(), "127.0.0.2:2721".parse::<SocketAddr>().unwrap());
        assert_eq!(a.to_string(), "127.0.0.2:2720/2721/2722");
        for bad in [
            "127.0.0.2",
            "127.0.0.2:1/2",
            "x:1/2/3",
            "1.2.3.4:1/2/3/4",
            "1.2.3.4:1/2/99999",
        ] {
            assert!(bad.parse::<HostAddr>().is_err(), "{bad}");
        }
    }
}
