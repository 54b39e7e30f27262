//! [`ClusterNode`]: one host's member of the Raft group that agrees on the partition map.
//!
//! A pure state machine around raft-rs's `RawNode`: [`ClusterNode::handle`] takes the time and
//! one [`Input`] (a tick, a peer message, a membership event from SWIM, a local request, a
//! finished migration) and returns [`Output`]s (messages to peers, a newly installed map, lease
//! changes, migrations to start). No sockets, threads or clock; the server and the simulation
//! drive it the same way.
//!
//! # The log
//! Entries are [`Command`]s in JSON (tiny, rare, readable in a dump) plus Raft `ConfChange`s.
//! Every node applies the same log, so every node that installs epoch `e` has the same map:
//! `InstallMap` is applied only if its epoch is exactly the current one plus one (a proposal
//! planned from an older state is dropped the same way everywhere).
//!
//! # The leader decides, one proposal at a time
//! Only the leader turns inputs into proposals, from its own view of membership (level, not
//! edge triggered, so a new leader picks up where the old one stopped), in this order: a
//! `Failed` voter leaves the voters (before any other host is marked: two dead voters of four
//! would leave no quorum); a host its SWIM view reports down becomes `Failed` (suspicion alone
//! changes nothing); join requests
//! become `AddHost`; Raft membership follows the hosts (one `ConfChange` at a time: learners
//! first, then up to [`VOTERS_MAX`] voters by join order plus witnesses); joined members become
//! `Active`; then the planner's next map, if it differs; then failed hosts no map names are
//! removed. Followers decide nothing.
//!
//! # Leases: never two primaries
//! A host acts as primary of a partition only while a lease covers it
//! ([`ClusterNode::is_primary`], by the one rule the shards serve under,
//! [`super::data::lease::covers`]: a lease for epoch `L`, with an installed map of `L` or newer,
//! covers the partitions this host has been primary of without a break since `L`). It asks the
//! leader every `lease_renew_ms`; its lease runs from the moment it *sent* the request, so it
//! ends no later than the leader believes. The leader
//! answers only after a Raft ReadIndex round proves it was still leader after the request was
//! sent (so a deposed leader cannot grant). Routine renewals wait for the next heartbeat and
//! share one round, sent with it (an idle store's messages are mostly heartbeats and
//! renewals: one round per heartbeat instead of one per request halves its wake-ups); a
//! request for a new epoch's lease starts its round at once. The leader grants epoch `E` only once every host has either
//! reported having installed `E` (its older leases are dead) or had its last possible lease run
//! out (`lease_ms + lease_margin_ms` after the leader's last grant to it, or after the leader
//! took office, since an older leader may have granted just before). A map that removes a
//! failed host's copies is proposed only after that host's lease has run out, so the other hosts
//! keep serving under the old epoch meanwhile.
//!
//! # Witness
//! A witness node is a voter with weight 0 that never asks for a lease: it breaks ties in a
//! 2-host store and owns nothing.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::rc::Rc;

use protobuf::Message as _;
use raft::prelude::{
    ConfChange, ConfChangeType, ConfState, Entry, EntryType, Message, MessageType, Snapshot,
};
use raft::storage::MemStorage;
use raft::{RawNode, StateRole, Storage};
use serde::{Deserialize, Serialize};

use super::map::{HostId, HostInfo, HostState, Owners, PARTITIONS, PartitionMap, plan_with_ready};

/// Voters of the Raft group at most, witnesses aside (the design: up to 5 active hosts).
pub const VOTERS_MAX: usize = 5;
/// Outstanding lease requests remembered (older answers are ignored).
const LEASE_REQUESTS_MAX: usize = 8;
/// Join requests the leader remembers at once.
const JOINS_MAX: usize = 64;
/// Removed hosts remembered (to tell one that comes back that it was expelled).
const REMOVED_REMEMBERED_MAX: usize = 1024;
/// A host declared failed is told so at most this often.
const EXPELLED_NOTICE_MS: u64 = 500;
/// Heartbeat rounds a leader trusts its own contact with a host over SWIM's "down"
/// ([`ClusterNode::presumed_down`]): long enough to outlast a stale verdict after a heal,
/// short against SWIM's detection time (at least 300 ms at 40 ms heartbeats: 160 ms).
const CONTACT_GRACE_HEARTBEATS: u64 = 4;
/// Log entries kept after compaction (lagging members get a snapshot instead).
const LOG_ENTRIES_MAX: u64 = 64;

/// A node's parameters. Times in milliseconds of the caller's clock.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub id: HostId,
    pub addr: String,
    pub weight: u32,
    /// A data-less voter (forces weight 0, never asks for leases).
    pub witness: bool,
    pub max_replicas: u8,
    /// How often the caller sends `Input::Tick`; one Raft tick each.
    pub tick_ms: u64,
    /// Raft election timeout in ticks, drawn by the caller from a seeded RNG (raft-rs would
    /// draw it from a thread RNG; pinning it keeps runs reproducible).
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    pub lease_ms: u64,
    /// Clock-rate drift allowance added before the leader treats a lease as run out.
    pub lease_margin_ms: u64,
    pub lease_renew_ms: u64,
}

/// A membership event from the failure detector (SWIM).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberEvent {
    Up,
    Suspect,
    Down,
}

/// Everything that can happen to a node.
#[derive(Clone, Debug)]
pub enum Input {
    Tick,
    Peer {
        from: HostId,
        msg: PeerMsg,
    },
    Member {
        host: HostId,
        event: MemberEvent,
    },
    /// Ask to join (sent to every host SWIM reports up until the node is a member).
    Join,
    /// Move this host's partitions away, then stay a member without data.
    Leave,
    /// The data of `partition` has arrived here (the migration the node asked for is done).
    MigrationDone {
        partition: u16,
    },
    /// `stategrid set NAME VALUE --all`.
    SetParam {
        name: String,
        value: String,
    },
}

/// What a node asks its driver to do.
#[derive(Clone, Debug)]
pub enum Output {
    Send {
        to: HostId,
        msg: PeerMsg,
    },
    /// A new map is in force on this host (from now on, fence traffic by its epoch).
    Installed(Rc<PartitionMap>),
    /// Copy `partition` from `from` to this host, then report `Input::MigrationDone`.
    Migrate {
        partition: u16,
        from: HostId,
        epoch: u64,
    },
    /// This host was declared failed: it must restart with a new id (its store is gone).
    Expelled,
}

/// Messages between nodes. `Raft` carries raft-rs's protobuf message (see [`PeerMsg::encode`]).
#[derive(Clone, Debug)]
pub enum PeerMsg {
    Raft(Box<Message>),
    JoinRequest {
        host: HostInfo,
        witness: bool,
    },
    LeaseRequest {
        seq: u64,
        applied_epoch: u64,
        /// The epoch of the newest lease this host was ever granted (0: none). A lease for
        /// epoch `E` proves that some leader once opened the gate for `E`, so a new leader
        /// may grant `E` at once instead of waiting out the old leader's leases.
        held_epoch: u64,
    },
    LeaseGrant {
        seq: u64,
        epoch: u64,
    },
    MigrationDone {
        partitions: Vec<u16>,
    },
    /// A follower asks the leader to move its partitions away (`Input::Leave` on that host).
    LeaveRequest,
    /// A leaving (or left) host asks to take its share again (`Input::Join` on that host).
    RejoinRequest,
    /// "The store declared you failed": sent to a host that the sender's applied (so
    /// committed) state lists as failed or removed, when it speaks up again: after a network
    /// cut long enough for the group to remove it, it would never hear so through Raft.
    Expelled,
}

impl PeerMsg {
    /// The Raft part in bytes (the others are plain data for the wire layer to frame).
    pub fn encode_raft(m: &Message) -> Vec<u8> {
        m.write_to_bytes().expect("raft message encodes")
    }
    pub fn decode_raft(bytes: &[u8]) -> Option<Message> {
        Message::parse_from_bytes(bytes).ok()
    }
}

/// A map command: the data of one Raft log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    AddHost {
        id: HostId,
        addr: String,
        weight: u32,
        witness: bool,
    },
    SetHostState {
        id: HostId,
        state: HostState,
    },
    RemoveHost {
        id: HostId,
    },
    SetParam {
        name: String,
        value: String,
    },
    InstallMap {
        epoch: u64,
        owners: Vec<Owners>,
    },
}

/// The replicated state: the result of applying the log. Also the snapshot a new member gets.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ClusterState {
    pub applied_index: u64,
    /// Hosts sorted by id; `join_seq` orders voters by join.
    pub hosts: Vec<HostInfo>,
    pub join_seq: BTreeMap<HostId, u64>,
    pub witnesses: BTreeSet<HostId>,
    pub params: BTreeMap<String, String>,
    pub map: PartitionMap,
    /// Hosts removed after being declared failed (at most `REMOVED_REMEMBERED_MAX`).
    #[serde(default)]
    pub removed: BTreeSet<HostId>,
    next_join_seq: u64,
}

impl ClusterState {
    /// Checks a snapshot's state from another host before it replaces this host's: a map of
    /// every partition, hosts sorted by id without duplicates, an epoch that does not go back
    /// (what the code reading the state assumes; each [`Owners`] was checked as it decoded).
    fn well_formed(&self, installed_epoch: u64) -> Result<(), String> {
        if self.map.owners.len() != PARTITIONS {
            return Err(format!(
                "its map has {} partitions, not {PARTITIONS}",
                self.map.owners.len()
            ));
        }
        if self.map.epoch < installed_epoch {
            return Err(format!(
                "its map's epoch {} is older than the installed {installed_epoch}",
                self.map.epoch
            ));
        }
        let sorted = |h: &[HostInfo]| h.windows(2).all(|w| w[0].id < w[1].id);
        if !sorted(&self.hosts) || !sorted(&self.map.hosts) {
            return Err("its hosts are not sorted by id, or repeat".into());
        }
        Ok(())
    }

    fn apply(&mut self, c: Command) -> bool {
        match c {
            Command::AddHost {
                id,
                addr,
                weight,
                witness,
            } => {
                if self.hosts.iter().any(|h| h.id == id) {
                    return false;
                }
                let w = if witness { 0 } else { weight };
                self.hosts.push(HostInfo {
                    id,
                    addr,
                    weight: w,
                    state: HostState::Joining,
                });
                self.hosts.sort_by_key(|h| h.id);
                self.join_seq.insert(id, self.next_join_seq);
                self.next_join_seq += 1;
                if witness {
                    self.witnesses.insert(id);
                }
            }
            Command::SetHostState { id, state } => {
                if let Some(h) = self.hosts.iter_mut().find(|h| h.id == id) {
                    // Failed is final: a host never comes back under the same id.
                    if h.state != HostState::Failed {
                        h.state = state;
                    }
                }
            }
            Command::RemoveHost { id } => {
                // Only failed hosts are removed: remember them, to tell them if they return.
                if self.removed.len() >= REMOVED_REMEMBERED_MAX {
                    let oldest = *self.removed.iter().next().expect("not empty");
                    self.removed.remove(&oldest);
                }
                self.removed.insert(id);
                self.hosts.retain(|h| h.id != id);
                self.join_seq.remove(&id);
                self.witnesses.remove(&id);
            }
            Command::SetParam { name, value } => {
                self.params.insert(name, value);
            }
            Command::InstallMap { epoch, owners } => {
                if epoch != self.map.epoch + 1 || owners.len() != PARTITIONS {
                    return false;
                }
                self.map = PartitionMap {
                    epoch,
                    hosts: self.hosts.clone(),
                    owners,
                };
                return true;
            }
        }
        false
    }

    pub fn host(&self, id: HostId) -> Option<&HostInfo> {
        self.hosts.iter().find(|h| h.id == id)
    }
}

/// raft-rs storage: `MemStorage` for the log, plus the applied [`ClusterState`] as the
/// snapshot's data (MemStorage's own snapshots carry no data).
struct NodeStorage {
    mem: MemStorage,
    state: Rc<RefCell<ClusterState>>,
}

impl Storage for NodeStorage {
    fn initial_state(&self) -> raft::Result<raft::RaftState> {
        self.mem.initial_state()
    }
    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: raft::GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.mem.entries(low, high, max_size, context)
    }
    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.mem.term(idx)
    }
    fn first_index(&self) -> raft::Result<u64> {
        self.mem.first_index()
    }
    fn last_index(&self) -> raft::Result<u64> {
        self.mem.last_index()
    }
    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let mut snap = self.mem.snapshot(request_index, to)?;
        let st = self.state.borrow();
        // The snapshot's index is the commit index; the state must be exactly that far.
        if snap.get_metadata().index != st.applied_index {
            return Err(raft::Error::Store(
                raft::StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        snap.set_data(serde_json::to_vec(&*st).expect("state encodes").into());
        Ok(snap)
    }
}

/// The planner's inputs (epoch, hosts, finished moves, max_replicas) and its owners if they
/// changed.
type PlanCache = (u64, Vec<HostInfo>, usize, u8, Option<Vec<Owners>>);

/// What the leader knows about one host's leases.
#[derive(Clone, Copy, Debug, Default)]
struct LeaseBook {
    last_grant_ms: u64,
    reported_epoch: u64,
    /// The newest epoch this host says it was ever granted a lease for.
    held_epoch: u64,
}

/// One lease request waiting for the leader's next ReadIndex round: `(seq, applied_epoch,
/// held_epoch)`, keyed by the asking host (a newer request replaces an older one).
type LeaseAsk = (u64, u64, u64);

/// Bytes of one request in a ReadIndex round's context: host, seq, applied and held epoch.
const LEASE_CTX_BYTES: usize = 32;

/// One host's member of the cluster. See the module doc.
pub struct ClusterNode {
    cfg: NodeConfig,
    raw: RawNode<NodeStorage>,
    state: Rc<RefCell<ClusterState>>,
    /// The map this host has installed (shared with `Output::Installed`).
    map: Rc<PartitionMap>,
    /// Per partition of `map`, the first epoch of this host's unbroken run as its primary
    /// (the lease rule's input, see [`super::data::lease::primary_since`]).
    primary_since: Vec<u64>,
    /// SWIM's view: hosts reported down (until reported up again).
    down: BTreeSet<HostId>,
    /// SWIM's view: hosts reported up (join requests go there).
    up: BTreeSet<HostId>,
    /// When each member last answered this host's Raft messages (members only, so bounded
    /// by the map's hosts). A leader fails a host SWIM reports down only once it has had no
    /// answer from it for [`Self::contact_grace_ms`] (see [`Self::presumed_down`]).
    heard_ms: BTreeMap<HostId, u64>,
    joining: bool,
    leave_requested: bool,
    rejoin_requested: bool,
    expelled: bool,
    // Host side of leases.
    lease_seq: u64,
    lease_requests: VecDeque<(u64, u64)>,
    lease_epoch: u64,
    lease_until_ms: u64,
    last_renew_ms: Option<u64>,
    /// The leader the last lease request went to: a new one is asked at once, so leases
    /// are renewed by a new leader before they run out (see [`Self::host_duties`]).
    renew_leader: u64,
    migrations_done: BTreeSet<u16>,
    // Leader side.
    leader_since_ms: Option<u64>,
    leases: BTreeMap<HostId, LeaseBook>,
    /// Renewals waiting for the next heartbeat's ReadIndex round (members only, so bounded by
    /// the map's hosts).
    lease_asks: BTreeMap<HostId, LeaseAsk>,
    /// Requests that could not start their round yet (no entry of this term committed).
    lease_retry: bool,
    joins: BTreeMap<HostId, (HostInfo, bool)>,
    /// Hosts (this one included) that asked to leave and are still Active.
    leaves: BTreeSet<HostId>,
    /// When each failed host was last told it was expelled.
    expelled_notices: BTreeMap<HostId, u64>,
    /// Leaving hosts that asked to become active again (leader only).
    rejoins: BTreeSet<HostId>,
    ready_moves: BTreeSet<(u16, HostId)>,
    proposed_at_ms: Option<u64>,
    /// The last planner run: (epoch, hosts, finished moves) and its result if it changed
    /// anything. The planner is the leader's costliest step; it reruns only on new inputs.
    plan_cache: Option<PlanCache>,
    out: Vec<Output>,
}

impl ClusterNode {
    /// The first host of a new store: a one-voter group with this host in it.
    pub fn bootstrap(cfg: NodeConfig, now_ms: u64) -> ClusterNode {
        let mut st = ClusterState::default();
        st.apply(Command::AddHost {
            id: cfg.id,
            addr: cfg.addr.clone(),
            weight: cfg.weight,
            witness: cfg.witness,
        });
        // Index 1 so that every later member starts from a snapshot, which carries the state.
        st.applied_index = 1;
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = 1;
        snap.mut_metadata().term = 1;
        snap.mut_metadata()
            .set_conf_state(ConfState::from((vec![cfg.id.0], vec![])));
        let mem = MemStorage::new();
        mem.wl().apply_snapshot(snap).expect("fresh storage");
        let mut n = ClusterNode::with_storage(cfg, mem, st);
        n.joining = false;
        n.raw.campaign().expect("single voter campaigns");
        n.pump(now_ms);
        let _ = std::mem::take(&mut n.out);
        n
    }

    /// A host joining an existing store: no log, no state until the leader's snapshot.
    pub fn joining(cfg: NodeConfig) -> ClusterNode {
        let mut n = ClusterNode::with_storage(cfg, MemStorage::new(), ClusterState::default());
        n.joining = true;
        n
    }

    fn with_storage(mut cfg: NodeConfig, mem: MemStorage, st: ClusterState) -> ClusterNode {
        assert!(cfg.id.0 != 0, "host id 0 is Raft's 'none'");
        assert!(
            cfg.lease_renew_ms * 2 < cfg.lease_ms,
            "renew at least twice per lease"
        );
        assert!(cfg.max_replicas <= super::map::REPLICAS_MAX);
        if cfg.witness {
            cfg.weight = 0;
        }
        let state = Rc::new(RefCell::new(st));
        let config = raft::Config {
            id: cfg.id.0,
            election_tick: cfg.election_ticks,
            heartbeat_tick: cfg.heartbeat_ticks,
            min_election_tick: cfg.election_ticks,
            max_election_tick: cfg.election_ticks + 1,
            check_quorum: true,
            pre_vote: true,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 64,
            ..Default::default()
        };
        config.validate().expect("raft config");
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let storage = NodeStorage {
            mem,
            state: state.clone(),
        };
        let raw = RawNode::new(&config, storage, &logger).expect("raft node");
        let map = Rc::new(state.borrow().map.clone());
        ClusterNode {
            cfg,
            raw,
            state,
            map,
            primary_since: Vec::new(),
            down: BTreeSet::new(),
            up: BTreeSet::new(),
            heard_ms: BTreeMap::new(),
            joining: false,
            leave_requested: false,
            rejoin_requested: false,
            expelled: false,
            lease_seq: 0,
            lease_requests: VecDeque::new(),
            lease_epoch: 0,
            lease_until_ms: 0,
            last_renew_ms: None,
            renew_leader: 0,
            migrations_done: BTreeSet::new(),
            leader_since_ms: None,
            leases: BTreeMap::new(),
            lease_asks: BTreeMap::new(),
            lease_retry: false,
            joins: BTreeMap::new(),
            leaves: BTreeSet::new(),
            expelled_notices: BTreeMap::new(),
            rejoins: BTreeSet::new(),
            ready_moves: BTreeSet::new(),
            proposed_at_ms: None,
            plan_cache: None,
            out: Vec::new(),
        }
    }

    pub fn id(&self) -> HostId {
        self.cfg.id
    }
    pub fn map(&self) -> &Rc<PartitionMap> {
        &self.map
    }
    pub fn state(&self) -> std::cell::Ref<'_, ClusterState> {
        self.state.borrow()
    }
    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }
    pub fn term(&self) -> u64 {
        self.raw.raft.term
    }
    /// One line for traces: role, term, log positions, group and hosts.
    pub fn debug_status(&self) -> String {
        let r = &self.raw.raft;
        let conf = r.prs().conf().to_conf_state();
        let st = self.state.borrow();
        let hosts: Vec<String> = st
            .hosts
            .iter()
            .map(|h| format!("{:x}:{:?}", h.id.0, h.state))
            .collect();
        format!(
            "{:x} {:?} term {} commit {} applied {} pending_conf {} proposed_at {:?} voters {:x?} learners {:x?} hosts {hosts:?} epoch {}",
            self.cfg.id.0,
            r.state,
            r.term,
            r.raft_log.committed,
            st.applied_index,
            r.has_pending_conf(),
            self.proposed_at_ms,
            conf.voters,
            conf.learners,
            self.map.epoch
        )
    }

    pub fn is_expelled(&self) -> bool {
        self.expelled
    }

    /// This host's lease as `(epoch, until_ms)`: valid for the map of `epoch` until `until_ms`
    /// of the caller's clock (0 = none yet). The driver hands it to the data plane each tick.
    pub fn lease(&self) -> (u64, u64) {
        (self.lease_epoch, self.lease_until_ms)
    }

    /// The replica count the planner uses: `max_replicas` set store-wide through the log
    /// (`stategrid set max_replicas N --all`) wins over this host's start-up value.
    fn max_replicas(&self, st: &ClusterState) -> u8 {
        st.params
            .get("max_replicas")
            .and_then(|v| v.parse::<u8>().ok())
            .filter(|&r| r <= super::map::REPLICAS_MAX)
            .unwrap_or(self.cfg.max_replicas)
    }

    /// How early a renewal may go: up to a heartbeat (when a host is awake anyway), at most a
    /// quarter of the renewal period.
    fn renew_early_ms(&self) -> u64 {
        (self.cfg.heartbeat_ticks as u64 * self.cfg.tick_ms).min(self.cfg.lease_renew_ms / 4)
    }

    /// How many ticks the caller may sleep through: the ticks before the returned one only
    /// advance Raft's counters (no heartbeat is due, no election timer runs out), so they may
    /// be delivered late, in a row, with the next input. At least 1 (the next tick matters).
    /// Together with [`Self::duty_due_ms`] this lets an idle follower sleep until the next
    /// heartbeat instead of waking for every tick; the next tick is due at once while a new
    /// leader has not been asked for a lease.
    pub fn ticks_quiet(&self) -> u64 {
        let r = &self.raw.raft;
        let left = |timeout: usize, elapsed: usize| timeout.saturating_sub(elapsed).max(1) as u64;
        let raft = if self.is_leader() {
            left(r.heartbeat_timeout(), r.heartbeat_elapsed())
                .min(left(r.election_timeout(), r.election_elapsed))
        } else if r.promotable() {
            left(r.randomized_election_timeout(), r.election_elapsed)
        } else {
            u64::MAX
        };
        let new_leader = r.leader_id != 0 && r.leader_id != self.renew_leader;
        if new_leader || self.lease_retry {
            1
        } else {
            raft
        }
    }

    /// When [`Self::host_duties`] next has something to do (a lease renewal or a join
    /// request): the latest time a tick must be delivered for it, or `None` for now.
    pub fn duty_due_ms(&self) -> Option<u64> {
        self.last_renew_ms.map(|t| t + self.cfg.lease_renew_ms)
    }

    /// Whether this host holds a lease for the epoch of its installed map at `now_ms`.
    pub fn holds_lease(&self, now_ms: u64) -> bool {
        !self.cfg.witness
            && !self.expelled
            && self.lease_epoch == self.map.epoch
            && now_ms < self.lease_until_ms
    }

    /// Whether this host may act as primary for `partition` at `now_ms`: the rule the shards
    /// serve under ([`super::data::lease::covers`]).
    pub fn is_primary(&self, partition: usize, now_ms: u64) -> bool {
        let since = self.primary_since.get(partition).copied();
        !self.cfg.witness
            && !self.expelled
            && self.map.primary(partition) == Some(self.cfg.id)
            && since.is_some_and(|s| {
                super::data::lease::covers(self.lease(), self.map.epoch, s, now_ms)
            })
    }

    /// The one entry point: apply `input` at `now_ms`, return what to do.
    pub fn handle(&mut self, now_ms: u64, input: Input) -> Vec<Output> {
        if self.expelled {
            return Vec::new();
        }
        match input {
            Input::Tick => {
                self.raw.tick();
                // A heartbeat left on this tick: the renewals asked since share one round,
                // whose messages leave with it.
                let beat = self.is_leader() && self.raw.raft.heartbeat_elapsed() == 0;
                self.host_duties(now_ms);
                if beat || self.lease_retry {
                    self.start_lease_round();
                }
            }
            Input::Peer { from, msg } => self.on_peer(now_ms, from, msg),
            Input::Member { host, event } => match event {
                MemberEvent::Up => {
                    self.down.remove(&host);
                    self.up.insert(host);
                }
                MemberEvent::Suspect => {}
                MemberEvent::Down => {
                    self.up.remove(&host);
                    self.down.insert(host);
                }
            },
            Input::Join => {
                let state = self.state.borrow().host(self.cfg.id).map(|h| h.state);
                match state {
                    // A member that left (or is leaving) takes its share again.
                    Some(HostState::Leaving) => {
                        self.rejoin_requested = true;
                        self.leave_requested = false;
                    }
                    Some(_) => {}
                    None => self.joining = true,
                }
            }
            Input::Leave => {
                self.leave_requested = true;
                self.rejoin_requested = false;
            }
            Input::MigrationDone { partition } => {
                self.migrations_done.insert(partition);
            }
            Input::SetParam { name, value } => {
                if self.is_leader() {
                    self.propose(now_ms, Command::SetParam { name, value });
                }
            }
        }
        self.pump(now_ms);
        if self.is_leader() {
            self.leader_duties(now_ms);
            self.pump(now_ms);
        }
        std::mem::take(&mut self.out)
    }

    /// Checks what raft-rs asserts (panicking) rather than checks: the entries of an append
    /// follow its `index` one by one with terms between `log_term` and the message's term, and
    /// a heartbeat does not commit past this log's end (a real leader sends
    /// `min(match, commit)`), a proposal proposes something, an append (after index 0), a
    /// snapshot and a vote request have a real term. Costs one pass over the entries; no allocation on success.
    fn raft_msg_well_formed(&self, from: HostId, m: &Message) -> Result<(), String> {
        if m.from != from.0 {
            return Err(format!("sent by {} on {from:?}'s link", m.from));
        }
        let mut term = m.log_term;
        for (i, e) in m.entries.iter().enumerate() {
            if e.index != m.index.wrapping_add(1 + i as u64) {
                return Err(format!("entry {i} has index {} after {}", e.index, m.index));
            }
            if e.term < term || e.term > m.term {
                return Err(format!(
                    "entry {i} has term {} (message term {})",
                    e.term, m.term
                ));
            }
            term = e.term;
        }
        if m.get_msg_type() == MessageType::MsgAppend && m.index > 0 && m.log_term == 0 {
            // The same for an append: a `log_term` of 0 "matches" any index past this log's
            // end, the entries land after a gap and raft-rs panics slicing its log. Only index
            // 0 has term 0 in a real log.
            return Err(format!("an append after index {} with term 0", m.index));
        }
        if m.get_msg_type() == MessageType::MsgSnapshot {
            // raft-rs reads term 0 for an index past its log, so a term-0 snapshot "matches"
            // and is committed past the log's end; a real one has the term of its last entry.
            let meta = m.get_snapshot().get_metadata();
            if meta.term == 0 || meta.term > m.term {
                return Err(format!(
                    "snapshot term {} (message term {})",
                    meta.term, m.term
                ));
            }
        }
        if matches!(
            m.get_msg_type(),
            MessageType::MsgRequestVote | MessageType::MsgRequestPreVote
        ) && m.term == 0
        {
            // raft-rs answers with the request's term and asserts it is set.
            return Err("a vote request with term 0".into());
        }
        if m.get_msg_type() == MessageType::MsgTransferLeader && m.term != 0 {
            // A local message (term 0) that a follower forwards to its leader; raft-rs
            // asserts, as it forwards, that no term is set.
            return Err(format!("a leader transfer with term {}", m.term));
        }
        if m.get_msg_type() == MessageType::MsgPropose && m.entries.is_empty() {
            return Err("a proposal with no entries".into());
        }
        if m.get_msg_type() == MessageType::MsgPropose && m.term != 0 {
            // As a leader transfer: a follower forwards proposals as local messages (term
            // 0), and raft-rs asserts so as it forwards one (found by fuzz/raft, 2026-12-02).
            return Err(format!("a proposal with term {}", m.term));
        }
        if m.get_msg_type() == MessageType::MsgHeartbeat
            && m.commit > self.raw.raft.raft_log.last_index()
        {
            return Err(format!(
                "heartbeat commits {} past this log's end",
                m.commit
            ));
        }
        Ok(())
    }

    fn send(&mut self, to: HostId, msg: PeerMsg) {
        self.out.push(Output::Send { to, msg });
    }

    fn on_peer(&mut self, now_ms: u64, from: HostId, msg: PeerMsg) {
        let declared_failed = {
            let st = self.state.borrow();
            st.removed.contains(&from)
                || st.host(from).is_some_and(|h| h.state == HostState::Failed)
        };
        if declared_failed && !matches!(msg, PeerMsg::Expelled) {
            let due = self
                .expelled_notices
                .get(&from)
                .is_none_or(|&t| now_ms >= t + EXPELLED_NOTICE_MS);
            if due {
                if self.expelled_notices.len() >= REMOVED_REMEMBERED_MAX {
                    self.expelled_notices.clear();
                }
                self.expelled_notices.insert(from, now_ms);
                self.send(from, PeerMsg::Expelled);
            }
            return;
        }
        // Only an answer to our own Raft message proves contact both ways: a host cut off one
        // way (it reaches the leader, the leader does not reach it) keeps sending lease
        // requests it never gets grants for, and must still be failed over.
        let answer = matches!(&msg, PeerMsg::Raft(m) if matches!(
            m.get_msg_type(),
            MessageType::MsgHeartbeatResponse | MessageType::MsgAppendResponse
        ));
        let contact = answer && self.state.borrow().host(from).is_some();
        self.on_peer_msg(now_ms, from, msg);
        if contact {
            self.heard_ms.insert(from, now_ms);
            if self.heard_ms.len() > 2 * self.state.borrow().hosts.len() + 8 {
                // Hosts that left the map over the store's life (each restart is a new id).
                let st = self.state.borrow();
                self.heard_ms.retain(|h, _| st.host(*h).is_some());
            }
        }
    }

    fn on_peer_msg(&mut self, now_ms: u64, from: HostId, msg: PeerMsg) {
        match msg {
            PeerMsg::Raft(m) => {
                // raft-rs trusts its peers' arithmetic and panics on some malformed messages
                // (found by fuzz/raft): those are refused here, before `step`.
                if m.to != self.cfg.id.0 {
                    // Links go to addresses: a host that rejoined in-process under a new id
                    // still receives what the leader sends its old id until the old member
                    // is removed. raft-rs does not check `to`; stepping those would mix the
                    // old member's log into the new member's. Expected, so not a warning.
                    tracing::debug!(
                        "raft message for host {:x} dropped: this host is {:x} (an earlier member at this address)",
                        m.to,
                        self.cfg.id.0
                    );
                    return;
                }
                if let Err(why) = self.raft_msg_well_formed(from, &m) {
                    tracing::warn!("raft message from {from:?} refused: {why}");
                    return;
                }
                // A message for an older incarnation or another group is dropped by raft-rs
                // itself (term checks); an error here is a stale or unknown peer.
                let _ = self.raw.step(*m);
            }
            PeerMsg::JoinRequest { host, witness } => {
                if self.is_leader()
                    && self.joins.len() < JOINS_MAX
                    && self.state.borrow().host(host.id).is_none()
                {
                    self.joins.insert(host.id, (host, witness));
                }
            }
            PeerMsg::LeaseRequest {
                seq,
                applied_epoch,
                held_epoch,
            } => self.on_lease_request(now_ms, from, seq, applied_epoch, held_epoch),
            PeerMsg::LeaseGrant { seq, epoch } => self.on_lease_grant(seq, epoch),
            PeerMsg::LeaveRequest => {
                if self.is_leader() && self.state.borrow().host(from).is_some() {
                    self.rejoins.remove(&from);
                    self.leaves.insert(from);
                }
            }
            PeerMsg::Expelled => {
                // The sender's applied state is committed: if it lists this host as failed,
                // it is, for good. A host that is not a member yet ignores it (it may be a
                // message meant for an earlier incarnation's id, which cannot be this one).
                let member = self.state.borrow().host(self.cfg.id).is_some();
                if member && !self.expelled {
                    self.expelled = true;
                    self.out.push(Output::Expelled);
                }
            }
            PeerMsg::RejoinRequest => {
                if self.is_leader() && self.state.borrow().host(from).is_some() {
                    self.leaves.remove(&from);
                    self.rejoins.insert(from);
                }
            }
            PeerMsg::MigrationDone { partitions } => {
                if self.is_leader() {
                    for p in partitions {
                        if (p as usize) < PARTITIONS
                            && self.map.owners[p as usize].pending().any(|h| h == from)
                        {
                            self.ready_moves.insert((p, from));
                        }
                    }
                }
            }
        }
        let _ = now_ms;
    }

    /// Every tick on every host: ask to join, renew the lease, report finished migrations.
    fn host_duties(&mut self, now_ms: u64) {
        let me = self.cfg.id;
        let member = self.state.borrow().host(me).is_some();
        if self.joining && member {
            self.joining = false;
        }
        // A new leader is asked at once rather than at the next period: the requests sent to
        // a dead leader were lost, and the lease must be renewed before it runs out.
        let leader_changed = self.raw.raft.leader_id != 0
            && self.raw.raft.leader_id != self.renew_leader
            && member
            && !self.joining;
        // Up to one heartbeat early: a host wakes for every heartbeat anyway, and a renewal
        // sent while it is awake costs no wake-up of its own (see `ticks_quiet`).
        let renew_due = leader_changed
            || self
                .last_renew_ms
                .is_none_or(|t| now_ms + self.renew_early_ms() >= t + self.cfg.lease_renew_ms);
        if !renew_due {
            return;
        }
        self.last_renew_ms = Some(now_ms);
        if self.joining {
            let host = HostInfo {
                id: me,
                addr: self.cfg.addr.clone(),
                weight: self.cfg.weight,
                state: HostState::Joining,
            };
            let peers: Vec<HostId> = self.up.iter().copied().filter(|&h| h != me).collect();
            for h in peers {
                self.send(
                    h,
                    PeerMsg::JoinRequest {
                        host: host.clone(),
                        witness: self.cfg.witness,
                    },
                );
            }
            return;
        }
        let leader = HostId(self.raw.raft.leader_id);
        if leader.0 == 0 || !member {
            return;
        }
        if self.leave_requested {
            // Asked until the log says Leaving: a request lost on the way or to a deposed
            // leader is simply sent again.
            let state = self.state.borrow().host(me).map(|h| h.state);
            match state {
                Some(HostState::Active) | Some(HostState::Joining) if leader != me => {
                    self.send(leader, PeerMsg::LeaveRequest)
                }
                Some(HostState::Active) | Some(HostState::Joining) => {}
                _ => self.leave_requested = false,
            }
        }
        if self.rejoin_requested {
            // Asked until the log says Active again, like a leave.
            let state = self.state.borrow().host(me).map(|h| h.state);
            match state {
                Some(HostState::Leaving) if leader != me => {
                    self.send(leader, PeerMsg::RejoinRequest)
                }
                Some(HostState::Leaving) => {}
                _ => self.rejoin_requested = false,
            }
        }
        if !self.cfg.witness {
            self.lease_seq += 1;
            let seq = self.lease_seq;
            if self.lease_requests.len() == LEASE_REQUESTS_MAX {
                self.lease_requests.pop_front();
            }
            self.lease_requests.push_back((seq, now_ms));
            let applied_epoch = self.map.epoch;
            let held_epoch = self.lease_epoch;
            self.renew_leader = leader.0;
            if leader == me {
                self.on_lease_request(now_ms, me, seq, applied_epoch, held_epoch);
            } else {
                self.send(
                    leader,
                    PeerMsg::LeaseRequest {
                        seq,
                        applied_epoch,
                        held_epoch,
                    },
                );
            }
        }
        // Finished migrations still pending in the installed map go to the leader until it
        // installs a map that makes them full copies.
        let done: Vec<u16> = self
            .migrations_done
            .iter()
            .copied()
            .filter(|&p| self.map.owners[p as usize].pending().any(|h| h == me))
            .collect();
        self.migrations_done = done.iter().copied().collect();
        if !done.is_empty() {
            if leader == me {
                for p in done {
                    self.ready_moves.insert((p, me));
                }
            } else {
                self.send(leader, PeerMsg::MigrationDone { partitions: done });
            }
        }
    }

    fn on_lease_request(
        &mut self,
        now_ms: u64,
        from: HostId,
        seq: u64,
        applied_epoch: u64,
        held_epoch: u64,
    ) {
        if !self.is_leader() {
            return;
        }
        let ok = self
            .state
            .borrow()
            .host(from)
            .is_some_and(|h| h.state != HostState::Failed);
        if !ok || self.presumed_down(from, now_ms) {
            return;
        }
        // Prove leadership after the request was sent: a ReadIndex round with a quorum,
        // started after it arrived. A renewal of the lease the host holds waits for the next
        // heartbeat's round; a host without a lease for this leader's epoch cannot serve
        // until it has one, so its round starts now (with whatever else waits).
        // Bounded by the members (checked above; one entry per host): a fixed cap here would
        // drop members' renewals in a store of many hosts (voters are few, members not).
        self.lease_asks
            .insert(from, (seq, applied_epoch, held_epoch));
        // A host without a grant from this leader yet (it just took office: the old
        // leader's leases are running out) is urgent too.
        let first = self.leases.get(&from).is_none_or(|b| b.last_grant_ms == 0);
        if held_epoch != self.map.epoch || first {
            self.start_lease_round();
        }
    }

    /// One ReadIndex round for every lease request waiting: its context lists them
    /// ([`LEASE_CTX_BYTES`] each); [`Self::on_lease_confirmed`] grants them when a quorum
    /// has answered.
    fn start_lease_round(&mut self) {
        if self.lease_asks.is_empty() {
            return;
        }
        if !self.raw.raft.commit_to_current_term() {
            // raft-rs drops a ReadIndex until the leader has committed an entry of its term
            // (its first round trip after the election): keep the requests and try again on
            // every tick until then, instead of losing them to the host's next renewal
            // period (a new leader's first grants are what keep the survivors' leases).
            self.lease_retry = true;
            return;
        }
        self.lease_retry = false;
        let mut ctx = Vec::with_capacity(self.lease_asks.len() * LEASE_CTX_BYTES);
        for (from, (seq, applied_epoch, held_epoch)) in std::mem::take(&mut self.lease_asks) {
            ctx.extend_from_slice(&from.0.to_le_bytes());
            ctx.extend_from_slice(&seq.to_le_bytes());
            ctx.extend_from_slice(&applied_epoch.to_le_bytes());
            ctx.extend_from_slice(&held_epoch.to_le_bytes());
        }
        self.raw.read_index(ctx);
    }

    /// How long a leader keeps trusting its own contact with a host over SWIM's word that
    /// it is down: four heartbeat rounds. Followers answer every heartbeat, so a host cut off
    /// from the leader falls silent for this long well inside SWIM's detection time (at
    /// least 300 ms), and a real failure is not failed over later than before.
    fn contact_grace_ms(&self) -> u64 {
        CONTACT_GRACE_HEARTBEATS * self.cfg.heartbeat_ticks as u64 * self.cfg.tick_ms
    }

    /// SWIM reports `h` down and this host has not heard from it for
    /// [`Self::contact_grace_ms`]. SWIM alone is not enough: after a partition heals, the
    /// cut-off side's verdicts (every host it could not reach is "down") spread to the
    /// majority before the hosts refute them, and a leader acting on one would expel a
    /// host it was talking to a heartbeat ago (CI found this: the container partition test
    /// lost the store's quorum to it). Checked on every tick, so a host SWIM reported down
    /// while it still answered is failed once it stops answering.
    fn presumed_down(&self, h: HostId, now_ms: u64) -> bool {
        self.down.contains(&h)
            && self
                .heard_ms
                .get(&h)
                .is_none_or(|&t| now_ms >= t + self.contact_grace_ms())
    }

    fn on_lease_confirmed(&mut self, now_ms: u64, ctx: &[u8]) {
        if !self.is_leader() || ctx.is_empty() || ctx.len() % LEASE_CTX_BYTES != 0 {
            return;
        }
        let asks = || {
            ctx.chunks_exact(LEASE_CTX_BYTES).map(|c| {
                let word = |i: usize| u64::from_le_bytes(c[i * 8..i * 8 + 8].try_into().unwrap());
                (HostId(word(0)), word(1), word(2), word(3))
            })
        };
        // What every request reports first: the gate below may open on any of them.
        for (from, _, applied_epoch, held_epoch) in asks() {
            let book = self.leases.entry(from).or_default();
            book.reported_epoch = book.reported_epoch.max(applied_epoch);
            book.held_epoch = book.held_epoch.max(held_epoch);
        }
        let epoch = self.map.epoch;
        if epoch == 0 || !self.epoch_gate_open(now_ms, epoch) {
            return;
        }
        for (from, seq, _, _) in asks() {
            self.leases.entry(from).or_default().last_grant_ms = now_ms;
            if from == self.cfg.id {
                self.on_lease_grant(seq, epoch);
            } else {
                self.send(from, PeerMsg::LeaseGrant { seq, epoch });
            }
        }
    }

    /// The time after which `h` surely holds no lease granted so far (by us or earlier leaders).
    fn lease_bound_ms(&self, h: HostId) -> u64 {
        let since = self.leader_since_ms.unwrap_or(u64::MAX / 4);
        let last = self.leases.get(&h).map_or(0, |b| b.last_grant_ms);
        since.max(last) + self.cfg.lease_ms + self.cfg.lease_margin_ms
    }

    /// Leases for `epoch` may be granted once no host can still hold a lease for an older one.
    ///
    /// Across a leader change: the first lease ever granted for `epoch` was granted only once
    /// every host had installed `epoch` or held no lease, and no leader grants an older epoch
    /// after that (every later leader has `epoch` committed). So a host that says it holds a
    /// lease for exactly `epoch` proves the gate was opened before, and a new leader renews
    /// at once instead of waiting out the dead leader's leases: only the partitions of a dead
    /// host pause when the leader dies. (A claim for a *newer* epoch proves nothing about
    /// `epoch`: this leader's map is behind, and granting it could revive an old primary.)
    fn epoch_gate_open(&self, now_ms: u64, epoch: u64) -> bool {
        if self.leases.values().any(|b| b.held_epoch == epoch) {
            return true;
        }
        let st = self.state.borrow();
        st.hosts.iter().all(|h| {
            st.witnesses.contains(&h.id)
                || self
                    .leases
                    .get(&h.id)
                    .is_some_and(|b| b.reported_epoch >= epoch)
                || now_ms >= self.lease_bound_ms(h.id)
        })
    }

    fn on_lease_grant(&mut self, seq: u64, epoch: u64) {
        let Some(&(_, sent_ms)) = self.lease_requests.iter().find(|(s, _)| *s == seq) else {
            return;
        };
        let until = sent_ms + self.cfg.lease_ms;
        if epoch > self.lease_epoch {
            self.lease_epoch = epoch;
            self.lease_until_ms = until;
        } else if epoch == self.lease_epoch {
            self.lease_until_ms = self.lease_until_ms.max(until);
        }
    }

    fn propose(&mut self, now_ms: u64, c: Command) {
        let data = serde_json::to_vec(&c).expect("command encodes");
        if self.raw.propose(Vec::new(), data).is_ok() {
            self.proposed_at_ms = Some(now_ms);
        }
    }

    fn propose_conf(&mut self, now_ms: u64, kind: ConfChangeType, id: HostId) {
        let mut cc = ConfChange::default();
        cc.set_change_type(kind);
        cc.node_id = id.0;
        if self.raw.propose_conf_change(Vec::new(), cc).is_ok() {
            self.proposed_at_ms = Some(now_ms);
        }
    }

    /// The leader's decisions, one proposal in flight at a time (see the module doc).
    fn leader_duties(&mut self, now_ms: u64) {
        if self.leader_since_ms.is_none() {
            self.leader_since_ms = Some(now_ms);
            self.leases.clear();
            self.ready_moves.clear();
        }
        let election_ms = self.cfg.election_ticks as u64 * self.cfg.tick_ms;
        if let Some(t) = self.proposed_at_ms {
            if now_ms < t + 2 * election_ms {
                return;
            }
            self.proposed_at_ms = None; // lost (e.g. dropped on a term change): decide again
        }
        if self.raw.raft.has_pending_conf() {
            return;
        }
        // Raft only lets a new leader commit after an entry of its own term; wait for that.
        let committed_term = self
            .raw
            .raft
            .raft_log
            .term(self.raw.raft.raft_log.committed)
            .unwrap_or(0);
        if committed_term != self.raw.raft.term {
            return;
        }
        // A shared borrow, not a copy: the state holds the whole map (tens of KiB), and this
        // runs on every tick of the leader. Nothing below applies entries (proposals are
        // applied later, in `pump`), so no mutable borrow can meet it.
        let state = self.state.clone();
        let st = state.borrow();
        let me = self.cfg.id;

        // 0. A Failed voter leaves the voters before another host is marked Failed. Marking
        //    two in a row could leave two dead voters of four: no quorum ever again, since a
        //    failed host comes back under a new id (simulation seed 228).
        let conf = self.raw.raft.prs().conf().to_conf_state();
        let voters: BTreeSet<u64> = conf.voters.iter().copied().collect();
        let learners: BTreeSet<u64> = conf.learners.iter().copied().collect();
        let live = |h: &HostInfo| h.state != HostState::Failed;
        for &v in voters.iter().chain(learners.iter()) {
            if st.host(HostId(v)).is_none_or(|h| !live(h)) && v != me.0 {
                return self.propose_conf(now_ms, ConfChangeType::RemoveNode, HostId(v));
            }
        }
        // 1. Down hosts become Failed.
        if let Some(h) = st.hosts.iter().find(|h| {
            h.state != HostState::Failed && h.id != me && self.presumed_down(h.id, now_ms)
        }) {
            let id = h.id;
            return self.propose(
                now_ms,
                Command::SetHostState {
                    id,
                    state: HostState::Failed,
                },
            );
        }
        // 2. Join requests.
        self.joins.retain(|id, _| st.host(*id).is_none());
        if let Some((_, (h, witness))) = self.joins.iter().find(|(id, _)| !self.down.contains(id)) {
            let c = Command::AddHost {
                id: h.id,
                addr: h.addr.clone(),
                weight: h.weight,
                witness: *witness,
            };
            return self.propose(now_ms, c);
        }
        // 3. Raft membership follows the hosts (failed ones left in 0), one change at a time.
        for h in st.hosts.iter().filter(|h| live(h)) {
            if !voters.contains(&h.id.0) && !learners.contains(&h.id.0) {
                return self.propose_conf(now_ms, ConfChangeType::AddLearnerNode, h.id);
            }
        }
        let mut by_join: Vec<&HostInfo> = st
            .hosts
            .iter()
            .filter(|h| {
                live(h) && !st.witnesses.contains(&h.id) && !self.presumed_down(h.id, now_ms)
            })
            .collect();
        by_join.sort_by_key(|h| st.join_seq.get(&h.id).copied().unwrap_or(u64::MAX));
        let mut want: BTreeSet<u64> = by_join.iter().take(VOTERS_MAX).map(|h| h.id.0).collect();
        want.extend(
            st.witnesses
                .iter()
                .filter(|w| st.host(**w).is_some_and(live))
                .map(|w| w.0),
        );
        // Keep current voters that are merely unreachable (only Failed removes a voter).
        for h in want.clone() {
            if !voters.contains(&h)
                && learners.contains(&h)
                && voters.len() < VOTERS_MAX + st.witnesses.len()
            {
                return self.propose_conf(now_ms, ConfChangeType::AddNode, HostId(h));
            }
        }
        // 4. Members become Active (a witness too: it holds nothing by weight 0).
        if let Some(h) = st.hosts.iter().find(|h| {
            h.state == HostState::Joining
                && (voters.contains(&h.id.0) || learners.contains(&h.id.0))
        }) {
            let id = h.id;
            return self.propose(
                now_ms,
                Command::SetHostState {
                    id,
                    state: HostState::Active,
                },
            );
        }
        if self.leave_requested {
            self.leaves.insert(me);
        }
        if self.rejoin_requested {
            self.rejoins.insert(me);
        }
        self.rejoins
            .retain(|id| st.host(*id).is_some_and(|h| h.state == HostState::Leaving));
        if let Some(&id) = self.rejoins.iter().next() {
            return self.propose(
                now_ms,
                Command::SetHostState {
                    id,
                    state: HostState::Active,
                },
            );
        }
        // Joining hosts stay in the set until Active; Leaving, Failed or gone ones are done.
        self.leaves.retain(|id| {
            st.host(*id)
                .is_some_and(|h| matches!(h.state, HostState::Active | HostState::Joining))
        });
        if let Some(&id) = self
            .leaves
            .iter()
            .find(|id| st.host(**id).is_some_and(|h| h.state == HostState::Active))
        {
            return self.propose(
                now_ms,
                Command::SetHostState {
                    id,
                    state: HostState::Leaving,
                },
            );
        }
        // 5. The next map, once every failed host that still holds copies has no lease left.
        let ready: Vec<(u16, HostId)> = self.ready_moves.iter().copied().collect();
        let max_replicas = self.max_replicas(&st);
        let fresh = self.plan_cache.as_ref().is_some_and(|(e, h, r, m, _)| {
            *e == st.map.epoch && *h == st.hosts && *r == ready.len() && *m == max_replicas
        });
        if !fresh {
            let next = plan_with_ready(&st.map, &st.hosts, max_replicas, &ready);
            let changed = (next.owners != st.map.owners).then_some(next.owners);
            self.plan_cache = Some((
                st.map.epoch,
                st.hosts.clone(),
                ready.len(),
                max_replicas,
                changed,
            ));
        }
        if let Some(owners) = self.plan_cache.as_ref().and_then(|c| c.4.clone()) {
            let waiting = st.map.owners.iter().any(|o| {
                o.holders().any(|h| {
                    st.host(h).is_none_or(|x| x.state == HostState::Failed)
                        && now_ms < self.lease_bound_ms(h)
                })
            });
            if !waiting {
                self.ready_moves.clear();
                let c = Command::InstallMap {
                    epoch: st.map.epoch + 1,
                    owners,
                };
                return self.propose(now_ms, c);
            }
            return;
        }
        // 6. Failed hosts no map names any more leave the host list.
        if let Some(h) = st.hosts.iter().find(|h| {
            h.state == HostState::Failed
                && !voters.contains(&h.id.0)
                && !learners.contains(&h.id.0)
                && !st
                    .map
                    .owners
                    .iter()
                    .any(|o| o.entries().iter().any(|e| e.0 == h.id))
        }) {
            let id = h.id;
            self.propose(now_ms, Command::RemoveHost { id });
        }
    }

    /// Drains raft-rs's ready state: send, persist, apply, answer confirmed lease reads.
    fn pump(&mut self, now_ms: u64) {
        while self.raw.has_ready() {
            let mut rd = self.raw.ready();
            self.send_raft(rd.take_messages());
            if !rd.snapshot().is_empty() {
                // Bytes from another host: a snapshot that does not decode or apply is
                // dropped with an error, never a panic (the leader sends another).
                let snap = rd.snapshot().clone();
                let installed_epoch = self.state.borrow().map.epoch;
                let decoded = serde_json::from_slice::<ClusterState>(snap.get_data())
                    .map_err(|e| e.to_string())
                    .and_then(|st| st.well_formed(installed_epoch).map(|()| st));
                match decoded {
                    Ok(mut st) => {
                        st.applied_index = snap.get_metadata().index;
                        let index = st.applied_index;
                        let applied = self.raw.mut_store().mem.wl().apply_snapshot(snap);
                        match applied {
                            Ok(()) => {
                                *self.state.borrow_mut() = st;
                                self.after_apply(true);
                            }
                            Err(e) => tracing::error!(
                                "dropped a Raft snapshot at index {index} that does not apply: {e}"
                            ),
                        }
                    }
                    Err(e) => {
                        tracing::error!("dropped a Raft snapshot whose state is not valid: {e}")
                    }
                }
            }
            let committed = rd.take_committed_entries();
            self.apply_entries(now_ms, committed);
            if !rd.entries().is_empty()
                && let Err(e) = self.raw.mut_store().mem.wl().append(rd.entries())
            {
                tracing::error!("dropped Raft entries that do not append: {e}");
            }
            if let Some(hs) = rd.hs() {
                self.raw.mut_store().mem.wl().set_hardstate(hs.clone());
            }
            self.send_raft(rd.take_persisted_messages());
            let reads = rd.take_read_states();
            let mut light = self.raw.advance(rd);
            if let Some(c) = light.commit_index() {
                self.raw.mut_store().mem.wl().mut_hard_state().set_commit(c);
            }
            self.send_raft(light.take_messages());
            let committed = light.take_committed_entries();
            self.apply_entries(now_ms, committed);
            self.raw.advance_apply();
            for r in reads {
                self.on_lease_confirmed(now_ms, &r.request_ctx);
            }
        }
        if !self.is_leader() {
            self.leader_since_ms = None;
            self.lease_asks.clear();
            self.lease_retry = false;
            self.joins.clear();
            self.leaves.clear();
        }
        self.compact();
    }

    fn send_raft(&mut self, msgs: Vec<Message>) {
        for m in msgs {
            if m.get_msg_type() == raft::prelude::MessageType::MsgSnapshot {
                // Fire and forget: if the snapshot is lost, the probe that follows sends
                // another; otherwise raft-rs would wait for a report that never comes.
                self.raw.report_snapshot(m.to, raft::SnapshotStatus::Finish);
            }
            self.out.push(Output::Send {
                to: HostId(m.to),
                msg: PeerMsg::Raft(Box::new(m)),
            });
        }
    }

    fn apply_entries(&mut self, _now_ms: u64, entries: Vec<Entry>) {
        let mut installed = false;
        for e in entries {
            if e.get_entry_type() == EntryType::EntryConfChange {
                if !e.data.is_empty() {
                    // Committed entries came from the leader's log: one that does not decode
                    // or apply is dropped with an error, never a panic.
                    match ConfChange::parse_from_bytes(&e.data)
                        .map_err(|e| e.to_string())
                        .and_then(|cc| self.raw.apply_conf_change(&cc).map_err(|e| e.to_string()))
                    {
                        Ok(cs) => self.raw.mut_store().mem.wl().set_conf_state(cs),
                        Err(why) => tracing::error!(
                            index = e.index,
                            "dropped a Raft membership change: {why}"
                        ),
                    }
                }
                self.proposed_at_ms = None;
            } else if !e.data.is_empty() {
                match serde_json::from_slice::<Command>(&e.data) {
                    Ok(c) => installed |= self.state.borrow_mut().apply(c),
                    Err(why) => tracing::error!(
                        index = e.index,
                        "dropped a Raft entry whose command does not decode: {why}"
                    ),
                }
                self.proposed_at_ms = None;
            } else if self.is_leader() {
                // The leader's empty entry of a new term: it may propose now.
                self.proposed_at_ms = None;
            }
            self.state.borrow_mut().applied_index = e.index;
        }
        self.after_apply(installed);
    }

    fn after_apply(&mut self, maybe_installed: bool) {
        let me = self.cfg.id;
        let epoch = self.state.borrow().map.epoch;
        if maybe_installed && epoch != self.map.epoch {
            assert!(epoch > self.map.epoch, "epochs only grow");
            let old = std::mem::replace(&mut self.map, Rc::new(self.state.borrow().map.clone()));
            self.primary_since = super::data::lease::primary_since(
                Some((old.epoch, &self.primary_since)),
                self.map.epoch,
                &self.map.owners,
                me,
            );
            self.out.push(Output::Installed(self.map.clone()));
            // A host that became primary of a partition asks for a lease on the new epoch at
            // the next tick rather than at the next renewal: requests for that partition wait
            // for it. Only then: asking on every install flooded the leader with ReadIndex
            // rounds while migrations installed a map per tick, and in the simulation (seed
            // 44) elections then stopped converging. (Asking within a quarter of the renewal
            // period instead was tried: it did not shorten a move's NotPrimary window, see
            // perf/RESULTS.md.)
            let gained = self
                .map
                .owners
                .iter()
                .zip(old.owners.iter())
                .any(|(n, o)| n.primary() == Some(me) && o.primary() != Some(me));
            if gained {
                self.last_renew_ms = None;
            }
            for (p, o) in self.map.owners.iter().enumerate() {
                if o.pending().any(|h| h == me) && !self.migrations_done.contains(&(p as u16)) {
                    let Some(from) = o.primary() else {
                        tracing::error!(
                            partition = p,
                            "a pending copy without a primary to copy from"
                        );
                        continue;
                    };
                    self.out.push(Output::Migrate {
                        partition: p as u16,
                        from,
                        epoch,
                    });
                }
            }
        }
        let st = self.state.borrow();
        let failed = st.host(me).is_some_and(|h| h.state == HostState::Failed);
        drop(st);
        if failed && !self.expelled {
            self.expelled = true;
            self.out.push(Output::Expelled);
        }
    }

    /// Keeps the in-memory log short: lagging members catch up from a snapshot.
    fn compact(&mut self) {
        let applied = self.state.borrow().applied_index;
        let store = &self.raw.store().mem;
        let first = store.first_index().unwrap_or(1);
        if applied > first + 2 * LOG_ENTRIES_MAX {
            let _ = store.wl().compact(applied - LOG_ENTRIES_MAX);
        }
    }
}

#[cfg(test)]
#[path = "node_tests.rs"]
mod tests;
