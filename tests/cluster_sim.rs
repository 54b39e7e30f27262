//! Deterministic simulation of the whole cluster: per simulated host the production
//! `ClusterNode` (map, Raft, leases), the production `Plane` it publishes to, and the production
//! data-plane machine `DataPlane` (routing, the lease rule, pending replicated writes, epoch
//! fencing) and migration machine `Pulls` (when a new copy asks for its partition, asks again,
//! and reports the move done; whether a primary serves the pull) over the real `Store`, all in
//! one process on a seeded scheduler (a priority queue of timed events). The primary's stream
//! is modelled: the whole partition is sent at once, in order on the link.
//!
//! Faults: control messages are lost, delayed, reordered and duplicated; data links behave as
//! TCP connections do (in order; a cut stalls them and, past the dead-peer timeout, breaks
//! them; a loss resets one); symmetric and one-way partitions; crashes and restarts (a
//! restarted host gets a new id and joins fresh); pauses longer than failure detection (a
//! frozen process); clocks that run at different rates (within the lease margin) from
//! different origins. SWIM is simulated from the scheduler's ground truth with a detection
//! delay.
//!
//! Simulated clients issue writes, reads, removes, locks and unlocks to the host their map
//! names (sometimes another, which redirects them) and record every invocation and answer.
//!
//! Checked after every event:
//! - (a) no two hosts serve a partition as primary at the same instant, by the production
//!   lease rule (`DataPlane::serves`, and `ClusterNode::is_primary`, which is the same rule);
//! - (b) every node that installed epoch e has the identical map for e;
//! - (c) a node's installed epochs only grow;
//!   and at the end of every run:
//! - (d) after the faults heal, all live nodes converge on one epoch and map, every partition
//!   has a live primary and min(max_replicas, live hosts - 1) replicas, within a bounded time;
//! - (f) per key, the whole history, reads included (with a final read of every key after the
//!   heal, so every acknowledged write must still be visible unless overwritten), is
//!   linearizable (`sim/check.rs`);
//! - (g) a lock is never granted to a second holder while the first surely holds it.
//!
//! Scenario tests check (e): 2 hosts + witness fail over; 2 hosts alone do not, and still never
//! run two primaries; and reach `ReplicationFailed` and the `StaleEpoch` fence on purpose.
//!
//! A failure prints the seed, the event trace and the command that replays it
//! (`STATEGRID_SIM_SEED=<n>`). `STATEGRID_SIM_SEEDS=<n>` runs n seeds in the `soak` test:
//! `STATEGRID_SIM_SEEDS=1000000 cargo test --release --test cluster_sim -- --ignored soak`.

#[path = "sim/check.rs"]
mod check;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::rc::Rc;

use check::{Call, Grant, Op, Ret};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use stategrid::cluster::data::{Begin, Completed, DataPlane, Pulls, Read, Refusal, accept_pull};
use stategrid::cluster::map::{HostId, HostState, PARTITIONS, PartitionMap};
use stategrid::cluster::node::{ClusterNode, Input, MemberEvent, NodeConfig, Output, PeerMsg};
use stategrid::cluster::plane::{Plane, View};
use stategrid::store::{KeyRef, Store, StoreLimits};
use stategrid_proto::{ErrorCode, ObjectState, WriteOpts, key_hash, partition_of};

const TICK_MS: u64 = 10;
const LEASE_MS: u64 = 300;
const LEASE_MARGIN_MS: u64 = 20;
const DETECT_MS: u64 = 150;
const SWIM_PERIOD_MS: u64 = 25;
const TRACE_LINES_MAX: usize = 4000;
/// Clock rates differ by at most this much from true time (parts per million): two hosts
/// differ by twice this, well within the lease margin (20 ms of 300: 6.7%).
const CLOCK_DRIFT_PPM_MAX: i64 = 20_000;
/// Wall clocks (object and lock times) agree within this (NTP), as docs/cluster.md requires.
const WALL_SKEW_MS_MAX: i64 = 5;
/// A data link cut for longer than this breaks (`TCP_USER_TIMEOUT` in production).
const LINK_DEAD_MS: u64 = 1_500;
/// A pull with no object arriving for this long is asked again (production: 5 s; shorter
/// here so runs converge within the check's bound after a link breaks).
const PULL_IDLE_MS: u64 = 1_000;
/// A pull asked this long ago without an end is asked again (production: 60 s).
const PULL_ASK_MAX_MS: u64 = 3_000;
const PULL_RETRY_MS: u64 = stategrid::cluster::data::pulls::PULL_RETRY_MS;
/// A client gives up on an answer after this long (the operation is then indeterminate).
const CLIENT_TIMEOUT_MS: u64 = 1_200;
/// Keys of the register history, and keys clients lock.
const REGISTER_KEYS: usize = 4;
const LOCK_KEYS: usize = 2;
const LOCK_TIMEOUT_MS: u64 = 400;
/// Operations per register key at most (keeps the linearizability search small).
const OPS_PER_KEY_MAX: usize = 40;
const NS: u32 = 7;

#[derive(Clone, Copy, Debug)]
struct Faults {
    loss_pct: u32,
    dup_pct: u32,
    delay_ms_max: u64,
    crashes: bool,
    partitions: bool,
    pauses: bool,
    /// Faults happen in [500 ms, fault_end_ms); then everything heals.
    fault_end_ms: u64,
    /// Convergence must be reached this long after the heal.
    converge_ms_max: u64,
    /// `replication_timeout_ms` of every host.
    replication_timeout_ms: u64,
    clients: usize,
}

/// A message on a host-to-host data link.
#[derive(Clone, Debug)]
enum DataMsg {
    /// A change: a replicated write's object (`Confirm::Write`), or a migration stream's
    /// (`Confirm::Stream`). Each is confirmed, as every request on a production link is.
    Replicate {
        epoch: u64,
        partition: u32,
        key: Vec<u8>,
        state: Option<ObjectState>,
        value: Vec<u8>,
        ack: Confirm,
    },
    Ack {
        idx: u32,
        refused: Option<Refusal>,
    },
    /// A stream's object arrived and was applied (`ok`) or refused.
    StreamAck {
        stream: u64,
        ok: bool,
    },
    Pull {
        epoch: u64,
        partition: u16,
    },
    PullRefused {
        partition: u16,
    },
    MigrateEnd {
        partition: u16,
    },
}

/// Whom a `Replicate` is confirmed to.
#[derive(Clone, Copy, Debug)]
enum Confirm {
    /// A replicated write's pending entry.
    Write(u32),
    /// A migration stream (the primary sends `MigrateEnd` only once every object of it is
    /// confirmed, as the shard does: an object lost with a reset link must not be followed by
    /// an end that reports the move done).
    Stream(u64),
}

/// A partition this host streams to a new copy (the shard's `Stream`, without pacing).
#[derive(Clone, Copy, Debug)]
struct SimStream {
    to: HostId,
    partition: u16,
    unconfirmed: usize,
    failed: bool,
}

/// What a client asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ask {
    Write(u64),
    Read,
    Remove,
    Lock,
    Unlock(u64),
}

/// What a host answers a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reply {
    Written,
    Value(Option<u64>),
    Removed(bool),
    Granted(u64),
    /// A definite refusal or error: nothing changed.
    Refused(ErrorCode),
    /// Not served here: try that host (nothing changed).
    Redirect(HostId),
    /// The change was applied here but not confirmed by every copy (`ReplicationFailed`,
    /// `StaleEpoch` from a copy): indeterminate.
    Unsure(ErrorCode),
}

/// What a pending write answers: the client and its operation, and the answer if all went well.
#[derive(Clone, Copy, Debug)]
struct Answer {
    client: usize,
    op: u64,
    reply: Reply,
}

/// One simulated host's data plane: the production machine and store, fed like a shard.
struct DataHost {
    plane: Plane,
    plane_gen: u64,
    dp: DataPlane<Answer>,
    store: Store,
    /// Partitions this host is receiving: the production machine.
    pulls: Pulls,
    /// Partitions this host is streaming, by stream id.
    streams: BTreeMap<u64, SimStream>,
    next_stream: u64,
}

enum Ev {
    Tick {
        slot: usize,
        id: HostId,
    },
    Deliver {
        slot: usize,
        id: HostId,
        from: HostId,
        msg: PeerMsg,
    },
    /// Deliver what is due on the data link `from -> to` (of generation `gen`).
    Link {
        from: HostId,
        to: HostId,
        generation: u64,
    },
    Swim,
    Fault,
    Heal {
        all: bool,
    },
    Restart {
        slot: usize,
    },
    Resume {
        slot: usize,
    },
    ClientNext {
        client: usize,
    },
    ClientArrive {
        slot: usize,
        id: HostId,
        client: usize,
        op: u64,
    },
    ClientAnswer {
        client: usize,
        op: u64,
        reply: Reply,
    },
    ClientTimeout {
        client: usize,
        op: u64,
    },
}

struct Proc {
    node: Option<ClusterNode>,
    data: Option<DataHost>,
    witness: bool,
    /// The last epoch this incarnation installed (invariant c).
    epoch: u64,
    /// SWIM: what this process believes of every other slot, and since when the truth differs.
    view: BTreeMap<HostId, (bool, u64)>,
    /// Frozen (SIGSTOP) until then: it handles nothing, its peers see it silent.
    paused_until_ms: u64,
    /// Its monotonic clock: `now * (1 + drift) + offset`.
    drift_ppm: i64,
    mono_offset_ms: u64,
    /// Its wall clock (object times): `now + skew`.
    wall_skew_ms: i64,
}

/// A data link: FIFO, with a generation that changes when it breaks.
#[derive(Default)]
struct Link {
    generation: u64,
    queue: VecDeque<(u64, DataMsg)>,
    cut_since_ms: Option<u64>,
}

/// One client's operation in flight.
#[derive(Clone, Copy, Debug)]
struct Inflight {
    op: u64,
    key: usize,
    ask: Ask,
    invoke_ms: u64,
    redirects: u32,
}

#[derive(Default)]
struct Client {
    inflight: Option<Inflight>,
    next_op: u64,
    /// A lock this client holds: (key, token, index into `grants`).
    held: Option<(usize, u64, usize)>,
    stopped: bool,
}

struct Sim {
    seed: u64,
    rng: StdRng,
    now_ms: u64,
    seq: u64,
    queue: BTreeMap<(u64, u64), Ev>,
    procs: Vec<Proc>,
    ids: BTreeMap<HostId, usize>,
    blocked: BTreeSet<(usize, usize)>,
    links: BTreeMap<(HostId, HostId), Link>,
    faults: Faults,
    max_replicas: u8,
    epochs: BTreeMap<u64, Rc<PartitionMap>>,
    trace: VecDeque<String>,
    /// No automatic restarts of crashed slots (scenario tests).
    no_restart: bool,
    clients: Vec<Client>,
    next_value: u64,
    history: Vec<Vec<Op>>,
    grants: Vec<Grant>,
    /// What the lease check last saw: per slot (id, epoch, lease epoch, lease valid).
    lease_print: Vec<(u64, u64, u64, bool)>,
    /// Counters the scenario tests look at.
    replication_failed: u64,
    stale_epoch_refusals: u64,
    acknowledged_writes: u64,
}

fn key_bytes(k: usize) -> Vec<u8> {
    format!("key-{k}").into_bytes()
}

fn partition_of_key(k: usize) -> usize {
    partition_of(key_hash(NS, &key_bytes(k))) as usize
}

impl Sim {
    fn new(seed: u64, hosts: usize, witness: bool, max_replicas: u8, faults: Faults) -> Sim {
        let mut sim = Sim {
            seed,
            rng: StdRng::seed_from_u64(seed),
            now_ms: 0,
            seq: 0,
            queue: BTreeMap::new(),
            procs: Vec::new(),
            ids: BTreeMap::new(),
            blocked: BTreeSet::new(),
            links: BTreeMap::new(),
            faults,
            max_replicas,
            epochs: BTreeMap::new(),
            trace: VecDeque::new(),
            no_restart: false,
            clients: (0..faults.clients).map(|_| Client::default()).collect(),
            next_value: 1,
            history: vec![Vec::new(); REGISTER_KEYS],
            grants: Vec::new(),
            lease_print: Vec::new(),
            replication_failed: 0,
            stale_epoch_refusals: 0,
            acknowledged_writes: 0,
        };
        let total = hosts + witness as usize;
        for slot in 0..total {
            let drift_ppm = sim
                .rng
                .random_range(-CLOCK_DRIFT_PPM_MAX..=CLOCK_DRIFT_PPM_MAX);
            let mono_offset_ms = sim.rng.random_range(0..100_000);
            let wall_skew_ms = sim.rng.random_range(-WALL_SKEW_MS_MAX..=WALL_SKEW_MS_MAX);
            sim.procs.push(Proc {
                node: None,
                data: None,
                witness: witness && slot == total - 1,
                epoch: 0,
                view: BTreeMap::new(),
                paused_until_ms: 0,
                drift_ppm,
                mono_offset_ms,
                wall_skew_ms,
            });
        }
        for slot in 0..total {
            sim.start(slot, slot == 0);
        }
        sim.at(0, Ev::Swim);
        if faults.crashes || faults.partitions || faults.pauses {
            let t = 500 + sim.rng.random_range(0..300);
            sim.at(t, Ev::Fault);
        }
        for client in 0..faults.clients {
            let t = 300 + sim.rng.random_range(0..100);
            sim.at(t, Ev::ClientNext { client });
        }
        sim
    }

    fn log(&mut self, s: String) {
        if self.trace.len() == TRACE_LINES_MAX {
            self.trace.pop_front();
        }
        self.trace.push_back(format!("{:>6} {s}", self.now_ms));
    }

    fn at(&mut self, t: u64, ev: Ev) {
        self.seq += 1;
        self.queue.insert((t, self.seq), ev);
    }

    /// `slot`'s monotonic clock now (leases are measured on it).
    fn mono(&self, slot: usize) -> u64 {
        let p = &self.procs[slot];
        let t = self.now_ms as i128 * (1_000_000 + p.drift_ppm as i128) / 1_000_000;
        t as u64 + p.mono_offset_ms
    }

    /// `slot`'s wall clock now (object and lock times).
    fn wall(&self, slot: usize) -> u64 {
        (1_700_000_000_000i64 + self.now_ms as i64 + self.procs[slot].wall_skew_ms) as u64
    }

    fn paused(&self, slot: usize) -> bool {
        self.now_ms < self.procs[slot].paused_until_ms
    }

    fn config(&mut self, slot: usize) -> NodeConfig {
        let id = loop {
            let id = HostId(self.rng.random_range(1..u64::MAX));
            if !self.ids.contains_key(&id) {
                break id;
            }
        };
        NodeConfig {
            id,
            addr: format!("10.0.0.{slot}:2720/2721/2722"),
            weight: 100,
            witness: self.procs[slot].witness,
            max_replicas: self.max_replicas,
            tick_ms: TICK_MS,
            election_ticks: self.rng.random_range(10..20),
            heartbeat_ticks: 2,
            lease_ms: LEASE_MS,
            lease_margin_ms: LEASE_MARGIN_MS,
            lease_renew_ms: 60,
        }
    }

    fn start(&mut self, slot: usize, first: bool) {
        let cfg = self.config(slot);
        let id = cfg.id;
        self.ids.insert(id, slot);
        let now = self.mono(slot);
        let node = if first {
            ClusterNode::bootstrap(cfg, now)
        } else {
            ClusterNode::joining(cfg)
        };
        self.log(format!(
            "start slot {slot} as {:x}{}",
            id.0,
            if first { " (bootstrap)" } else { "" }
        ));
        let witness = self.procs[slot].witness;
        let seed = self.rng.random();
        let p = &mut self.procs[slot];
        p.node = Some(node);
        p.data = (!witness).then(|| DataHost {
            plane: Plane::new(1),
            plane_gen: u64::MAX,
            dp: DataPlane::default(),
            store: Store::new(
                StoreLimits {
                    lock_timeout_ms: LOCK_TIMEOUT_MS,
                    ..StoreLimits::default()
                },
                seed,
            ),
            pulls: Pulls::new(PULL_IDLE_MS, PULL_ASK_MAX_MS, PULL_RETRY_MS),
            streams: BTreeMap::new(),
            next_stream: 1,
        });
        p.epoch = 0;
        p.view.clear();
        p.paused_until_ms = 0;
        if !first {
            self.input(slot, Input::Join);
        }
        let t = self.now_ms + self.rng.random_range(1..=TICK_MS);
        self.at(t, Ev::Tick { slot, id });
    }

    /// Stops a slot's process (crash or exit): its links reset.
    fn kill(&mut self, slot: usize) {
        if let Some(id) = self.id_of(slot) {
            self.links.retain(|&(a, b), _| a != id && b != id);
        }
        let p = &mut self.procs[slot];
        p.node = None;
        p.data = None;
        p.paused_until_ms = 0;
    }

    fn alive(&self, slot: usize) -> bool {
        self.procs[slot]
            .node
            .as_ref()
            .is_some_and(|n| !n.is_expelled())
    }

    fn id_of(&self, slot: usize) -> Option<HostId> {
        self.procs[slot].node.as_ref().map(|n| n.id())
    }

    fn input(&mut self, slot: usize, input: Input) {
        let now = self.mono(slot);
        let Some(node) = self.procs[slot].node.as_mut() else {
            return;
        };
        let outs = node.handle(now, input);
        self.outputs(slot, outs);
    }

    fn outputs(&mut self, slot: usize, outs: Vec<Output>) {
        let me = self.id_of(slot).expect("live");
        for o in outs {
            match o {
                Output::Send { to, msg } => {
                    let Some(&dst) = self.ids.get(&to) else {
                        continue;
                    };
                    if self.blocked.contains(&(slot, dst))
                        || self.rng.random_range(0..100) < self.faults.loss_pct
                    {
                        continue;
                    }
                    let copies = if self.rng.random_range(0..100) < self.faults.dup_pct {
                        2
                    } else {
                        1
                    };
                    for _ in 0..copies {
                        let d = self.rng.random_range(1..=self.faults.delay_ms_max);
                        self.at(
                            self.now_ms + d,
                            Ev::Deliver {
                                slot: dst,
                                id: to,
                                from: me,
                                msg: msg.clone(),
                            },
                        );
                    }
                }
                Output::Installed(map) => {
                    let tracked: Vec<String> = (0..REGISTER_KEYS + LOCK_KEYS)
                        .map(|k| {
                            let p = partition_of_key(k);
                            let o: Vec<String> = map.owners[p]
                                .entries()
                                .iter()
                                .map(|(h, r)| format!("{:x}:{r:?}", h.0 >> 48))
                                .collect();
                            format!("{p}={}", o.join(","))
                        })
                        .collect();
                    self.log(format!(
                        "slot {slot} installs epoch {} [{}]",
                        map.epoch,
                        tracked.join(" ")
                    ));
                    let p = &mut self.procs[slot];
                    assert!(
                        map.epoch > p.epoch,
                        "(c) slot {slot} epoch {} after {}",
                        map.epoch,
                        p.epoch
                    );
                    p.epoch = map.epoch;
                    // What the control plane does: publish the map to the data plane.
                    if let Some(d) = p.data.as_ref() {
                        d.plane.publish(View {
                            me,
                            epoch: map.epoch,
                            hosts: map.hosts.clone(),
                            owners: map.owners.clone(),
                            primary_since: Vec::new(),
                        });
                    }
                    match self.epochs.get(&map.epoch) {
                        Some(m) => assert!(**m == *map, "(b) two maps for epoch {}", map.epoch),
                        None => {
                            self.epochs.insert(map.epoch, map);
                        }
                    }
                }
                Output::Migrate { partition, .. } => {
                    let now = self.mono(slot);
                    if let Some(d) = self.procs[slot].data.as_mut() {
                        d.pulls.want(partition, now);
                    }
                }
                Output::Expelled => self.log(format!("slot {slot} expelled")),
            }
        }
    }

    // ---- the data plane ----------------------------------------------------------------

    /// A shard's pass: the time and lease, and a new map if the plane has one.
    fn data_pass(&mut self, slot: usize) {
        let now = self.mono(slot);
        let Some(d) = self.procs[slot].data.as_mut() else {
            return;
        };
        d.dp.set_time(now, d.plane.lease());
        let generation = d.plane.generation();
        if generation == d.plane_gen {
            return;
        }
        d.plane_gen = generation;
        let Some(view) = d.plane.view() else {
            return;
        };
        let (newer, done) = d.dp.set_view(view.clone());
        let mut drops = Vec::new();
        if newer {
            // Drop copies this host no longer has a role in, and pulls no longer wanted (as
            // the shard does on a new map).
            for p in 0..PARTITIONS {
                let role = view.owners[p].role_of(view.me);
                if role.is_none() && d.store.partition_len(p as u32) > 0 {
                    let n = d.store.drop_partition(p as u32);
                    drops.push((p, n));
                }
            }
            d.pulls.on_map(&view, 0..PARTITIONS);
            d.streams.retain(|_, s| {
                view.owners[s.partition as usize]
                    .copies()
                    .any(|c| c == s.to)
            });
        }
        for (p, n) in drops {
            self.log(format!("slot {slot} drops partition {p} ({n} objects)"));
        }
        self.complete(slot, done);
    }

    /// Releases answers of writes whose waiting is over.
    fn complete(&mut self, slot: usize, done: Vec<Completed<Answer>>) {
        for c in done {
            let reply = match c.failed {
                None => c.answer.reply,
                Some((code, _)) => {
                    if code == ErrorCode::ReplicationFailed && !c.read {
                        self.replication_failed += 1;
                    }
                    Reply::Unsure(code)
                }
            };
            self.answer(slot, c.answer.client, c.answer.op, reply);
        }
    }

    fn answer(&mut self, _slot: usize, client: usize, op: u64, reply: Reply) {
        let d = self.rng.random_range(1..=5);
        self.at(self.now_ms + d, Ev::ClientAnswer { client, op, reply });
    }

    /// A data-plane tick: expire writes, ask for partitions.
    fn data_tick(&mut self, slot: usize) {
        self.data_pass(slot);
        let now = self.mono(slot);
        let wall = self.wall(slot);
        let timeout = self.faults.replication_timeout_ms;
        let Some(d) = self.procs[slot].data.as_mut() else {
            return;
        };
        let (done, resend) = d.dp.expire(now, timeout);
        let mut asks = Vec::new();
        // Changes in doubt go again to the copies that did not confirm them (as the shard).
        for r in resend {
            for (ns, key) in &r.objects {
                let state = d.store.export(KeyRef::new(*ns, key), wall);
                let msg = DataMsg::Replicate {
                    epoch: r.epoch,
                    partition: r.partition as u32,
                    key: key.to_vec(),
                    state: state.as_ref().map(|(s, _)| *s),
                    value: state.map_or(Vec::new(), |(_, v)| v.to_vec()),
                    ack: Confirm::Write(r.idx),
                };
                for &h in &r.copies {
                    asks.push((h, msg.clone()));
                }
            }
        }
        if let Some(view) = d.dp.view.clone() {
            for (p, primary) in d.pulls.due(&view, now) {
                asks.push((
                    primary,
                    DataMsg::Pull {
                        epoch: view.epoch,
                        partition: p,
                    },
                ));
            }
        }
        self.complete(slot, done);
        let me = self.id_of(slot).expect("live");
        for (to, msg) in asks {
            self.send_data(me, to, msg);
        }
    }

    /// Queues `msg` on the link `from -> to`: in order, after what is queued.
    fn send_data(&mut self, from: HostId, to: HostId, msg: DataMsg) {
        let Some(&dst) = self.ids.get(&to) else {
            return;
        };
        let src = self.ids[&from];
        let loss = self.rng.random_range(0..400) < self.faults.loss_pct;
        let d = self.rng.random_range(1..=self.faults.delay_ms_max);
        let now = self.now_ms;
        let blocked = self.blocked.contains(&(src, dst));
        let fresh = !self.links.contains_key(&(from, to));
        let link = self.links.entry((from, to)).or_default();
        if loss {
            // A connection reset: what was queued is lost, the next send opens a new link.
            link.generation += 1;
            link.queue.clear();
            return;
        }
        if blocked && fresh {
            // Cannot connect while cut; an open link stalls instead (below).
            self.links.remove(&(from, to));
            return;
        }
        let at = link.queue.back().map_or(now + d, |&(t, _)| t.max(now + d));
        let first = link.queue.is_empty();
        link.queue.push_back((at, msg));
        let generation = link.generation;
        if first {
            self.at(
                at,
                Ev::Link {
                    from,
                    to,
                    generation,
                },
            );
        }
    }

    fn pump_link(&mut self, from: HostId, to: HostId, generation: u64) {
        let Some(link) = self.links.get(&(from, to)) else {
            return;
        };
        if link.generation != generation {
            return;
        }
        let (Some(&src), Some(&dst)) = (self.ids.get(&from), self.ids.get(&to)) else {
            return;
        };
        if self.id_of(dst) != Some(to) || self.id_of(src) != Some(from) {
            self.links.remove(&(from, to));
            return;
        }
        let now = self.now_ms;
        let retry_at = if self.blocked.contains(&(src, dst)) {
            let link = self.links.get_mut(&(from, to)).unwrap();
            let since = *link.cut_since_ms.get_or_insert(now);
            if now >= since + LINK_DEAD_MS {
                link.generation += 1;
                link.queue.clear();
                link.cut_since_ms = None;
                return;
            }
            Some(now + 20)
        } else if self.paused(dst) {
            Some(self.procs[dst].paused_until_ms)
        } else {
            None
        };
        if let Some(t) = retry_at {
            self.at(
                t,
                Ev::Link {
                    from,
                    to,
                    generation,
                },
            );
            return;
        }
        let mut due = Vec::new();
        let link = self.links.get_mut(&(from, to)).unwrap();
        link.cut_since_ms = None;
        while link.queue.front().is_some_and(|&(t, _)| t <= now) {
            due.push(link.queue.pop_front().unwrap().1);
        }
        if let Some(&(t, _)) = link.queue.front() {
            self.at(
                t,
                Ev::Link {
                    from,
                    to,
                    generation,
                },
            );
        }
        for msg in due {
            // A message may end the receiver (never here) or break nothing else: deliver on.
            self.on_data(dst, from, msg);
        }
    }

    /// A host-to-host message arrives at `slot` from host `from`.
    fn on_data(&mut self, slot: usize, from: HostId, msg: DataMsg) {
        self.data_pass(slot);
        let now = self.wall(slot);
        let mono = self.mono(slot);
        let me = self.id_of(slot).expect("live");
        let Some(d) = self.procs[slot].data.as_mut() else {
            return;
        };
        match msg {
            DataMsg::Replicate {
                epoch,
                partition,
                key,
                state,
                value,
                ack,
            } => {
                let r = d.dp.on_replicate(
                    &mut d.store,
                    epoch,
                    from,
                    partition,
                    NS,
                    &key,
                    state.as_ref(),
                    &value,
                    now,
                );
                d.pulls.on_object(partition as u16, from, r.is_ok(), mono);
                if matches!(ack, Confirm::Write(_)) || r.is_err() {
                    self.log(format!(
                        "slot {slot} replica of partition {partition} from {:x} e{epoch}: {r:?}",
                        from.0
                    ));
                }
                if let Err((ErrorCode::StaleEpoch, _)) = r {
                    self.stale_epoch_refusals += 1;
                    self.log(format!("slot {slot} fences a change from {:x}", from.0));
                }
                let reply = match ack {
                    Confirm::Write(idx) => DataMsg::Ack {
                        idx,
                        refused: r.err(),
                    },
                    Confirm::Stream(stream) => DataMsg::StreamAck {
                        stream,
                        ok: r.is_ok(),
                    },
                };
                self.send_data(me, from, reply);
            }
            DataMsg::StreamAck { stream, ok } => {
                let Some(s) = d.streams.get_mut(&stream) else {
                    return;
                };
                s.failed |= !ok;
                s.unconfirmed -= 1;
                if s.unconfirmed == 0 {
                    self.stream_done(slot, stream);
                }
            }
            DataMsg::Ack { idx, refused } => {
                let done = d.dp.confirm(idx, from, refused);
                self.complete(slot, done);
            }
            DataMsg::Pull { epoch, partition } => {
                let view = d.dp.view.clone().expect("a pull reaches a member");
                // The shard's rule: refused while our map does not list the new copy (our
                // writes would not reach it) or we are not the primary.
                if accept_pull(&view, epoch, from, partition as usize).is_err() {
                    self.send_data(me, from, DataMsg::PullRefused { partition });
                    return;
                }
                // A new pull replaces the stream to the same copy (as the shard).
                d.streams
                    .retain(|_, s| !(s.to == from && s.partition == partition));
                let id = d.next_stream;
                d.next_stream += 1;
                d.streams.insert(
                    id,
                    SimStream {
                        to: from,
                        partition,
                        unconfirmed: 0,
                        failed: false,
                    },
                );
                self.stream_send(slot, id);
            }
            DataMsg::PullRefused { partition } => {
                let now = self.mono(slot);
                let d = self.procs[slot].data.as_mut().unwrap();
                d.pulls.refused(partition, now);
            }
            DataMsg::MigrateEnd { partition } => {
                let now = self.mono(slot);
                let d = self.procs[slot].data.as_mut().unwrap();
                if !d.pulls.on_end(partition, from, now) {
                    return;
                }
                self.log(format!("slot {slot} received partition {partition}"));
                self.input(slot, Input::MigrationDone { partition });
            }
        }
    }

    /// Sends stream `id`'s partition from a snapshot of its objects (all at once: the shard
    /// paces them, which changes no order on the link); an empty partition ends at once.
    fn stream_send(&mut self, slot: usize, id: u64) {
        let now = self.wall(slot);
        let me = self.id_of(slot).expect("live");
        let d = self.procs[slot].data.as_mut().expect("a primary has data");
        let view = d.dp.view.clone().expect("a primary has a map");
        let s = d.streams[&id];
        let p = s.partition as u32;
        let mut objects = Vec::new();
        for slot_ in d.store.partition_slots(p) {
            if let Some(obj) = d.store.export_slot(slot_, p, now) {
                objects.push(DataMsg::Replicate {
                    epoch: view.epoch,
                    partition: p,
                    key: obj.key,
                    state: Some(obj.state),
                    value: obj.value.to_vec(),
                    ack: Confirm::Stream(id),
                });
            }
        }
        let n = objects.len();
        d.streams.get_mut(&id).expect("exists").unconfirmed = n;
        self.log(format!(
            "slot {slot} streams partition {p} ({n} objects) to {:x} at e{}",
            s.to.0, view.epoch
        ));
        for m in objects {
            self.send_data(me, s.to, m);
        }
        if n == 0 {
            self.stream_done(slot, id);
        }
    }

    /// Every object of stream `id` is confirmed: end it, or (one was refused) send the
    /// partition again from a fresh snapshot, as the shard does. A host no longer the
    /// partition's primary drops the stream (the new primary serves the pull again).
    fn stream_done(&mut self, slot: usize, id: u64) {
        let me = self.id_of(slot).expect("live");
        let d = self.procs[slot].data.as_mut().expect("a primary has data");
        let s = d.streams[&id];
        let primary =
            d.dp.view
                .as_ref()
                .and_then(|v| v.owners[s.partition as usize].primary());
        if primary != Some(me) {
            d.streams.remove(&id);
            return;
        }
        if s.failed {
            d.streams.get_mut(&id).expect("exists").failed = false;
            self.stream_send(slot, id);
            return;
        }
        d.streams.remove(&id);
        self.send_data(
            me,
            s.to,
            DataMsg::MigrateEnd {
                partition: s.partition,
            },
        );
    }

    /// A client's request arrives at `slot`: route it, serve it, replicate it.
    fn on_client(&mut self, slot: usize, client: usize, op: u64) {
        let Some(f) = self.clients[client].inflight.filter(|f| f.op == op) else {
            return;
        };
        self.data_pass(slot);
        let now = self.wall(slot);
        let mono = self.mono(slot);
        let timeout = self.faults.replication_timeout_ms;
        let Some(d) = self.procs[slot].data.as_mut() else {
            return self.answer(slot, client, op, Reply::Refused(ErrorCode::NotJoined));
        };
        let key = key_bytes(f.key);
        let p = partition_of_key(f.key);
        match d.dp.route(p, false, false) {
            stategrid::cluster::data::Route::Here => {}
            stategrid::cluster::data::Route::Remote(h) => {
                return self.answer(slot, client, op, Reply::Redirect(h));
            }
            stategrid::cluster::data::Route::Wait => unreachable!("nothing is held here"),
            stategrid::cluster::data::Route::Refuse(code, _) => {
                return self.answer(slot, client, op, Reply::Refused(code));
            }
        }
        let k = KeyRef::new(NS, &key);
        let before = d.store.stamp(k);
        let value_of = |v: &[u8]| u64::from_le_bytes(v.try_into().expect("8-byte values"));
        let reply = match f.ask {
            Ask::Write(v) => match d.store.put(k, &v.to_le_bytes(), WriteOpts::default(), now) {
                Ok(_) => Reply::Written,
                Err(e) => Reply::Refused(e.code),
            },
            Ask::Read => match d.store.read(k, now) {
                Ok((_, v)) => Reply::Value(Some(value_of(&v))),
                Err(e) if e.code == ErrorCode::NotFound => Reply::Value(None),
                Err(e) => Reply::Refused(e.code),
            },
            Ask::Remove => match d.store.remove(k, None, false, now) {
                Ok(()) => Reply::Removed(true),
                Err(e) if e.code == ErrorCode::NotFound => Reply::Removed(false),
                Err(e) => Reply::Refused(e.code),
            },
            Ask::Lock => match d.store.read_and_lock(k, now) {
                Ok((_, _, token)) => Reply::Granted(token),
                Err(e) => Reply::Refused(e.code),
            },
            Ask::Unlock(token) => match d.store.unlock(k, token, now) {
                Ok(_) => Reply::Written,
                Err(e) => Reply::Refused(e.code),
            },
        };
        let epoch = d.dp.view.as_ref().map_or(0, |v| v.epoch);
        let changed = d.store.stamp(k) != before;
        self.log(format!(
            "slot {slot} serves client {client} op {op}: {:?} key {} (partition {p}, epoch {epoch}) -> {reply:?}",
            f.ask, f.key
        ));
        let d = self.procs[slot].data.as_mut().unwrap();
        let answer = Answer { client, op, reply };
        if !changed {
            // As the shard: held behind changes of the partition still waiting for copies.
            return match d.dp.begin_read(p, answer) {
                (Read::Held, _) => {}
                (Read::Now, Some(a)) => self.answer(slot, a.client, a.op, a.reply),
                (Read::Refuse((code, _)), Some(a)) => {
                    self.answer(slot, a.client, a.op, Reply::Unsure(code))
                }
                (_, None) => unreachable!("begin_read returns the answer unless it holds it"),
            };
        }
        let objects = vec![(NS, Box::from(&key[..]))];
        let (begin, now_answer) = d.dp.begin_write(p, objects, answer, mono, timeout);
        let (idx, epoch, me, copies) = match begin {
            Begin::Replicate {
                idx,
                epoch,
                me,
                copies,
            } => (idx, epoch, me, copies),
            Begin::Local => return self.answer(slot, client, op, reply),
            Begin::Refuse((code, _)) => {
                let a = now_answer.expect("refused");
                return self.answer(slot, a.client, a.op, Reply::Unsure(code));
            }
        };
        let state = d.store.export(k, now);
        let msg = DataMsg::Replicate {
            epoch,
            partition: p as u32,
            key,
            state: state.as_ref().map(|(s, _)| *s),
            value: state.map_or(Vec::new(), |(_, v)| v.to_vec()),
            ack: Confirm::Write(idx),
        };
        for h in copies {
            self.send_data(me, h, msg.clone());
        }
    }

    // ---- clients ------------------------------------------------------------------------

    /// The host a client sends a key to: the primary in the map of a host it asked (as the
    /// client library does with `GetMap`), sometimes any host (which redirects it).
    fn pick_host(&mut self, key: usize) -> Option<usize> {
        let live: Vec<usize> = (0..self.procs.len())
            .filter(|&s| self.procs[s].data.is_some())
            .collect();
        if live.is_empty() {
            return None;
        }
        let asked = live[self.rng.random_range(0..live.len())];
        if self.rng.random_bool(0.2) {
            return Some(asked);
        }
        let map = self.procs[asked].node.as_ref()?.map().clone();
        let primary = map.primary(partition_of_key(key))?;
        self.ids.get(&primary).copied().or(Some(asked))
    }

    fn client_next(&mut self, client: usize) {
        let c = &self.clients[client];
        if c.stopped || c.inflight.is_some() {
            return;
        }
        let (key, ask) = if let Some((key, token, _)) = c.held {
            (key, Ask::Unlock(token))
        } else if self.rng.random_bool(0.2) {
            (
                REGISTER_KEYS + self.rng.random_range(0..LOCK_KEYS),
                Ask::Lock,
            )
        } else {
            let key = self.rng.random_range(0..REGISTER_KEYS);
            if self.history[key].len() >= OPS_PER_KEY_MAX {
                let t = self.now_ms + 50;
                return self.at(t, Ev::ClientNext { client });
            }
            let ask = match self.rng.random_range(0..10) {
                0..=4 => {
                    self.next_value += 1;
                    Ask::Write(self.next_value)
                }
                5..=8 => Ask::Read,
                _ => Ask::Remove,
            };
            (key, ask)
        };
        let c = &mut self.clients[client];
        let op = c.next_op;
        c.next_op += 1;
        let f = Inflight {
            op,
            key,
            ask,
            invoke_ms: self.now_ms,
            redirects: 0,
        };
        c.inflight = Some(f);
        if let Ask::Unlock(_) = ask {
            // The holder lets go from here on: its sure holding ends.
            let (_, _, g) = c.held.take().expect("held");
            let g = &mut self.grants[g];
            g.held_until_ms = g.held_until_ms.min(self.now_ms);
        }
        self.at(
            self.now_ms + CLIENT_TIMEOUT_MS,
            Ev::ClientTimeout { client, op },
        );
        self.client_send(client, None);
    }

    fn client_send(&mut self, client: usize, to: Option<HostId>) {
        let f = self.clients[client].inflight.expect("in flight");
        let slot = match to.and_then(|h| self.ids.get(&h).copied()) {
            Some(s) => Some(s),
            None => self.pick_host(f.key),
        };
        let Some(slot) = slot else {
            return; // nobody to ask: the timeout settles it
        };
        let Some(id) = self.id_of(slot) else {
            return;
        };
        let d = self.rng.random_range(1..=5);
        self.at(
            self.now_ms + d,
            Ev::ClientArrive {
                slot,
                id,
                client,
                op: f.op,
            },
        );
    }

    /// An answer (or the client's own timeout: `None`) ends the operation in flight.
    fn client_done(&mut self, client: usize, op: u64, reply: Option<Reply>) {
        let Some(f) = self.clients[client].inflight.filter(|f| f.op == op) else {
            return;
        };
        if let Some(Reply::Redirect(h)) = reply {
            if f.redirects < 3 {
                self.clients[client].inflight.as_mut().unwrap().redirects += 1;
                return self.client_send(client, Some(h));
            }
        }
        self.clients[client].inflight = None;
        let now = self.now_ms;
        let ret = match reply {
            None | Some(Reply::Unsure(_)) => Some(Ret::Unknown),
            Some(Reply::Written) => Some(Ret::Ok),
            Some(Reply::Value(v)) => Some(Ret::Value(v)),
            Some(Reply::Removed(existed)) => Some(Ret::Removed(existed)),
            Some(Reply::Granted(token)) => {
                self.acknowledged_writes += 1;
                let g = Grant {
                    key: f.key,
                    client,
                    token,
                    invoke_ms: f.invoke_ms,
                    return_ms: now,
                    held_until_ms: f.invoke_ms + LOCK_TIMEOUT_MS - 2 * WALL_SKEW_MS_MAX as u64 - 1,
                };
                self.grants.push(g);
                self.clients[client].held = Some((f.key, token, self.grants.len() - 1));
                None
            }
            // A definite refusal changed nothing; a redirect loop never reached the store.
            Some(Reply::Refused(_) | Reply::Redirect(_)) => None,
        };
        if f.key < REGISTER_KEYS
            && let Some(ret) = ret
        {
            let call = match f.ask {
                Ask::Write(v) => Call::Write(v),
                Ask::Read => Call::Read,
                Ask::Remove => Call::Remove,
                Ask::Lock | Ask::Unlock(_) => unreachable!("lock keys are not registers"),
            };
            if ret == Ret::Ok {
                self.acknowledged_writes += 1;
            }
            self.history[f.key].push(Op {
                client,
                call,
                ret,
                invoke_ms: f.invoke_ms,
                return_ms: now,
            });
        }
        if let Some(Reply::Refused(ErrorCode::NotFound)) = reply
            && matches!(f.ask, Ask::Lock)
        {
            // Create the lock key first next time: a lock needs an object.
            self.next_value += 1;
            let v = self.next_value;
            let c = &mut self.clients[client];
            let op = c.next_op;
            c.next_op += 1;
            c.inflight = Some(Inflight {
                op,
                key: f.key,
                ask: Ask::Write(v),
                invoke_ms: now,
                redirects: 0,
            });
            self.at(now + CLIENT_TIMEOUT_MS, Ev::ClientTimeout { client, op });
            return self.client_send(client, None);
        }
        let think = self.rng.random_range(0..40);
        self.at(now + think, Ev::ClientNext { client });
    }

    // ---- faults and membership ----------------------------------------------------------

    fn reachable(&self, a: usize, b: usize) -> bool {
        self.alive(a)
            && self.alive(b)
            && !self.paused(a)
            && !self.paused(b)
            && !self.blocked.contains(&(a, b))
            && !self.blocked.contains(&(b, a))
    }

    /// SWIM from ground truth: a change seen for `DETECT_MS` is reported. Every id ever used
    /// is watched, so the old id of a crashed or restarted host is reported down.
    fn swim(&mut self) {
        let all: Vec<(HostId, usize)> = self.ids.iter().map(|(&id, &s)| (id, s)).collect();
        for o in 0..self.procs.len() {
            if !self.alive(o) || self.paused(o) {
                continue;
            }
            let me = self.id_of(o).unwrap();
            for &(tid, t) in &all {
                if tid == me {
                    continue;
                }
                let truth = self.id_of(t) == Some(tid) && self.reachable(o, t);
                let now = self.now_ms;
                let (believed, since) = *self.procs[o].view.get(&tid).unwrap_or(&(false, now));
                let since = if truth == believed { now } else { since };
                let delay = if truth { SWIM_PERIOD_MS } else { DETECT_MS };
                if truth != believed && now >= since + delay {
                    self.procs[o].view.insert(tid, (truth, now));
                    let event = if truth {
                        MemberEvent::Up
                    } else {
                        MemberEvent::Down
                    };
                    self.input(o, Input::Member { host: tid, event });
                } else {
                    self.procs[o].view.insert(tid, (believed, since));
                }
            }
        }
    }

    fn fault(&mut self) {
        if self.now_ms >= self.faults.fault_end_ms {
            return;
        }
        let n = self.procs.len();
        let kind = self.rng.random_range(0..5);
        // One fault episode at a time, on a healthy group: a partitioned host gets declared
        // failed and comes back under a new id, like a crashed one, and Raft cannot survive
        // losing a majority of its voters before they are replaced (see docs/cluster.md).
        if !self.group_is_healthy() {
            let t = self.now_ms + self.rng.random_range(150..600);
            self.at(t, Ev::Fault);
            return;
        }
        if kind == 0 && self.faults.crashes {
            let slot = self.rng.random_range(0..n);
            if self.alive(slot) {
                self.log(format!("FAULT crash slot {slot}"));
                self.kill(slot);
                let t = self.now_ms + self.rng.random_range(200..1000);
                self.at(t, Ev::Restart { slot });
            }
        } else if kind == 1 && self.faults.partitions {
            let mut side: Vec<bool> = (0..n).map(|_| self.rng.random_bool(0.5)).collect();
            // The store promises to survive `max_replicas` hosts lost at once. A cut that
            // leaves a majority and cuts off more hosts than that can isolate every copy of
            // a partition: the majority fails them all and they restart empty, a multi-host
            // failure beyond the promise (seeds 482 and 1213 drew one; see docs/cluster.md,
            // "Known gaps"). Such a cut keeps only the first `max_replicas` hosts of the
            // minority (no new random draws, so the other seeds' runs are unchanged).
            let on = side.iter().filter(|&&s| s).count();
            if on * 2 != n {
                let minority = on * 2 < n;
                let mut kept = 0;
                for s in side.iter_mut() {
                    if *s == minority {
                        if kept < self.max_replicas as usize {
                            kept += 1;
                        } else {
                            *s = !minority;
                        }
                    }
                }
            }
            for a in 0..n {
                for b in 0..n {
                    if side[a] != side[b] {
                        self.blocked.insert((a, b));
                    }
                }
            }
            self.log(format!("FAULT partition {side:?}"));
            let t = self.now_ms + self.rng.random_range(200..1200);
            self.at(t, Ev::Heal { all: false });
        } else if kind == 2 && self.faults.partitions {
            let (a, b) = (self.rng.random_range(0..n), self.rng.random_range(0..n));
            if a != b {
                self.blocked.insert((a, b));
                self.log(format!("FAULT one-way {a} -> {b} blocked"));
                let t = self.now_ms + self.rng.random_range(200..1200);
                self.at(t, Ev::Heal { all: false });
            }
        } else if kind == 3 && self.faults.pauses {
            let slot = self.rng.random_range(0..n);
            // Sometimes shorter than failure detection, mostly longer.
            let d = self.rng.random_range(50..1000);
            self.pause(slot, d);
        }
        let t = self.now_ms + self.rng.random_range(150..600);
        self.at(t, Ev::Fault);
    }

    /// Freezes `slot` for `d` ms (SIGSTOP): its events wait, its clocks run on.
    fn pause(&mut self, slot: usize, d: u64) {
        if self.alive(slot) && !self.paused(slot) {
            self.log(format!("FAULT pause slot {slot} for {d} ms"));
            self.procs[slot].paused_until_ms = self.now_ms + d;
            self.at(self.now_ms + d, Ev::Resume { slot });
        }
    }

    /// Every slot alive, no link cut, every host an active member, a leader.
    fn group_is_healthy(&self) -> bool {
        if !self.blocked.is_empty() || (0..self.procs.len()).any(|s| self.paused(s)) {
            return false;
        }
        let Some(leader) = (0..self.procs.len())
            .find(|&s| self.alive(s) && self.procs[s].node.as_ref().unwrap().is_leader())
        else {
            return false;
        };
        let node = self.procs[leader].node.as_ref().unwrap();
        // Every partition has its copies (no migration under way): the store promises to
        // survive one failure once its replicas exist, and a partition whose new copy is
        // still pending has one full copy only.
        let settled = node
            .map()
            .owners
            .iter()
            .all(|o| o.pending().next().is_none());
        let st = node.state();
        let live: usize = (0..self.procs.len()).filter(|&s| self.alive(s)).count();
        settled
            && live == self.procs.len()
            && st.hosts.len() == self.procs.len()
            && st.hosts.iter().all(|h| h.state == HostState::Active)
    }

    /// The slot an event is for, if the event waits while that slot is frozen.
    fn target(&self, ev: &Ev) -> Option<usize> {
        match ev {
            Ev::Tick { slot, .. } | Ev::Deliver { slot, .. } | Ev::ClientArrive { slot, .. } => {
                Some(*slot)
            }
            _ => None,
        }
    }

    fn step(&mut self) -> bool {
        let Some(((t, _), ev)) = self.queue.pop_first() else {
            return false;
        };
        self.now_ms = t;
        if let Some(slot) = self.target(&ev)
            && self.paused(slot)
        {
            let until = self.procs[slot].paused_until_ms;
            self.at(until, ev);
            return true;
        }
        match ev {
            Ev::Tick { slot, id } => {
                if self.id_of(slot) == Some(id) {
                    self.input(slot, Input::Tick);
                    // What the control plane does every tick: hand the lease to the shards.
                    if let (Some(n), Some(d)) = (&self.procs[slot].node, &self.procs[slot].data) {
                        let (epoch, until) = n.lease();
                        d.plane.set_lease(epoch, until);
                    }
                    if self.id_of(slot) == Some(id) {
                        self.data_tick(slot);
                    }
                    self.at(t + TICK_MS, Ev::Tick { slot, id });
                }
            }
            Ev::Deliver {
                slot,
                id,
                from,
                msg,
            } => {
                let from_slot = self.ids.get(&from).copied();
                let cut = from_slot.is_some_and(|f| self.blocked.contains(&(f, slot)));
                if self.id_of(slot) == Some(id) && !cut {
                    if !matches!(msg, PeerMsg::Raft(_)) {
                        self.log(format!("{:x} -> slot {slot}: {}", from.0, short(&msg)));
                    }
                    self.input(slot, Input::Peer { from, msg });
                }
            }
            Ev::Link {
                from,
                to,
                generation,
            } => self.pump_link(from, to, generation),
            Ev::Swim => {
                self.swim();
                self.restart_expelled();
                self.at(t + SWIM_PERIOD_MS, Ev::Swim);
            }
            Ev::Fault => self.fault(),
            Ev::Heal { all } => {
                if all || self.now_ms >= self.faults.fault_end_ms || self.rng.random_bool(0.7) {
                    self.log("HEAL partitions".into());
                    self.blocked.clear();
                }
            }
            Ev::Restart { slot } => {
                if self.procs[slot].node.is_none() && !self.no_restart {
                    self.start(slot, false);
                }
            }
            Ev::Resume { slot } => self.log(format!("slot {slot} resumes")),
            Ev::ClientNext { client } => self.client_next(client),
            Ev::ClientArrive {
                slot,
                id,
                client,
                op,
            } => {
                if self.id_of(slot) == Some(id) {
                    self.on_client(slot, client, op);
                }
            }
            Ev::ClientAnswer { client, op, reply } => self.client_done(client, op, Some(reply)),
            Ev::ClientTimeout { client, op } => self.client_done(client, op, None),
        }
        self.check_leases();
        true
    }

    /// A live host the group declared failed (it may not know, if it was cut off) exits and
    /// comes back with a new id, as the real process would.
    fn restart_expelled(&mut self) {
        if self.no_restart {
            return;
        }
        let leader = (0..self.procs.len())
            .find(|&s| self.alive(s) && self.procs[s].node.as_ref().unwrap().is_leader());
        for slot in 0..self.procs.len() {
            if self.paused(slot) {
                continue;
            }
            let Some(node) = self.procs[slot].node.as_ref() else {
                continue;
            };
            let me = node.id();
            let expelled = node.is_expelled()
                || leader.is_some_and(|l| {
                    let was_member = node.state().host(me).is_some();
                    let st = self.procs[l].node.as_ref().unwrap().state();
                    was_member && st.host(me).is_none_or(|h| h.state == HostState::Failed)
                });
            if expelled {
                self.log(format!("slot {slot} ({:x}) restarts after expulsion", me.0));
                self.kill(slot);
                let t = self.now_ms + self.rng.random_range(50..300);
                self.at(t, Ev::Restart { slot });
            }
        }
    }

    /// (a): no two hosts serve one partition as primary at this instant, by the production
    /// rule: each host's data plane (as its shard would serve at its next pass) and its
    /// `ClusterNode`. The set of serving hosts only grows at an event that changes a host's
    /// map or lease, so the full comparison runs only when one of those changed.
    fn check_leases(&mut self) {
        let mut print = Vec::with_capacity(self.procs.len());
        for slot in 0..self.procs.len() {
            let mono = self.mono(slot);
            let p = &self.procs[slot];
            let (Some(n), false) = (p.node.as_ref(), self.paused(slot)) else {
                print.push((0, 0, 0, false));
                continue;
            };
            let (le, until) = n.lease();
            let dl = p.data.as_ref().map_or((0, 0), |d| d.plane.lease());
            print.push((
                n.id().0,
                n.map().epoch ^ (le << 20) ^ (dl.0 << 40),
                p.data.as_ref().map_or(0, |d| d.plane.generation()),
                mono < until || mono < dl.1,
            ));
        }
        if print == self.lease_print {
            return;
        }
        self.lease_print = print;
        for slot in 0..self.procs.len() {
            if !self.paused(slot) && self.procs[slot].data.is_some() {
                self.data_pass(slot);
            }
        }
        let serving: Vec<usize> = (0..self.procs.len())
            .filter(|&s| self.procs[s].node.is_some() && !self.paused(s))
            .collect();
        for p in 0..PARTITIONS {
            let mut primaries = Vec::new();
            for &s in &serving {
                let proc = &self.procs[s];
                let node = proc.node.as_ref().unwrap();
                if node.is_primary(p, self.mono(s)) {
                    primaries.push(format!("{:x} (node)", node.id().0));
                }
                if proc.data.as_ref().is_some_and(|d| d.dp.serves(p)) {
                    primaries.push(format!("{:x} (data plane)", node.id().0));
                }
            }
            primaries.sort();
            primaries.dedup_by(|a, b| a.split(' ').next() == b.split(' ').next());
            assert!(
                primaries.len() <= 1,
                "(a) partition {p} served by {primaries:?} at once"
            );
        }
    }

    /// (d): one epoch and map on every live node, a live primary and the right replica count
    /// everywhere, nothing pending, every live host active and holding its lease.
    fn converged(&self) -> Result<(), String> {
        let live: Vec<&ClusterNode> = (0..self.procs.len())
            .filter(|&s| self.alive(s))
            .map(|s| self.procs[s].node.as_ref().unwrap())
            .collect();
        let map = live[0].map();
        for n in &live {
            if n.map() != map {
                return Err(format!(
                    "{:x} at epoch {} vs {}",
                    n.id().0,
                    n.map().epoch,
                    map.epoch
                ));
            }
        }
        let data_hosts: BTreeSet<HostId> = (0..self.procs.len())
            .filter(|&s| self.alive(s) && !self.procs[s].witness)
            .map(|s| self.id_of(s).unwrap())
            .collect();
        for h in &data_hosts {
            if map.host(*h).is_none_or(|x| x.state != HostState::Active) {
                return Err(format!("host {:x} not active in epoch {}", h.0, map.epoch));
            }
        }
        let replicas = (self.max_replicas as usize).min(data_hosts.len() - 1);
        for (p, o) in map.owners.iter().enumerate() {
            let pr = o.primary().ok_or(format!("partition {p} has no primary"))?;
            if !data_hosts.contains(&pr)
                || o.pending().next().is_some()
                || o.replicas().count() != replicas
            {
                return Err(format!("partition {p}: {:?}", o.entries()));
            }
        }
        for n in &live {
            if !n.holds_lease(self.mono(self.ids[&n.id()]))
                && !self.procs[self.ids[&n.id()]].witness
            {
                return Err(format!("{:x} holds no lease", n.id().0));
            }
        }
        Ok(())
    }

    /// Runs to the heal, then until converged or the deadline; then lets the clients finish,
    /// reads every key once more and checks the histories.
    fn run(&mut self, end_ms: u64) -> Result<u64, String> {
        while self.now_ms < self.faults.fault_end_ms {
            assert!(self.step(), "queue ran dry");
        }
        self.log("HEAL everything".into());
        self.blocked.clear();
        self.faults.loss_pct = 0;
        self.faults.dup_pct = 0;
        let heal = self.now_ms;
        let mut next_check = heal;
        let took = loop {
            assert!(self.step(), "queue ran dry");
            if self.now_ms >= next_check {
                next_check += 100;
                if self.converged().is_ok() {
                    break self.now_ms - heal;
                }
            }
            if self.now_ms > end_ms.max(heal + self.faults.converge_ms_max) {
                return Err(format!(
                    "(d) not converged {} ms after the heal: {}",
                    self.now_ms - heal,
                    self.converged().unwrap_err()
                ));
            }
        };
        self.final_check()?;
        Ok(took)
    }

    /// (f) and (g): stop the clients, let what is in flight end, read every key through the
    /// production routing once more, and check the histories.
    fn final_check(&mut self) -> Result<(), String> {
        if self.clients.is_empty() {
            return Ok(());
        }
        for c in &mut self.clients {
            c.stopped = true;
        }
        let until = self.now_ms + CLIENT_TIMEOUT_MS + 10;
        while self.now_ms < until && self.clients.iter().any(|c| c.inflight.is_some()) {
            assert!(self.step(), "queue ran dry");
        }
        // Client 0 reads each key until it gets an answer.
        for key in 0..REGISTER_KEYS {
            let deadline = self.now_ms + 3_000;
            loop {
                let len = self.history[key].len();
                let c = &mut self.clients[0];
                let op = c.next_op;
                c.next_op += 1;
                c.inflight = Some(Inflight {
                    op,
                    key,
                    ask: Ask::Read,
                    invoke_ms: self.now_ms,
                    redirects: 0,
                });
                self.at(
                    self.now_ms + CLIENT_TIMEOUT_MS,
                    Ev::ClientTimeout { client: 0, op },
                );
                self.client_send(0, None);
                while self.clients[0].inflight.is_some() {
                    assert!(self.step(), "queue ran dry");
                }
                let answered = self.history[key]
                    .get(len)
                    .is_some_and(|o| o.ret != Ret::Unknown);
                if answered {
                    break;
                }
                if self.now_ms > deadline {
                    return Err(format!("(f) key {key} cannot be read after the heal"));
                }
                let t = self.now_ms + 50;
                while self.now_ms < t {
                    self.step();
                }
            }
        }
        for (key, ops) in self.history.iter().enumerate() {
            check::linearizable(ops).map_err(|e| format!("(f) key {key}: {e}"))?;
        }
        check::locks_exclusive(&self.grants).map_err(|e| format!("(g) {e}"))
    }
}

fn short(m: &PeerMsg) -> String {
    match m {
        PeerMsg::Raft(_) => "raft".into(),
        PeerMsg::JoinRequest { host, .. } => format!("join {:x}", host.id.0),
        PeerMsg::LeaseRequest {
            seq,
            applied_epoch,
            held_epoch,
        } => format!("lease? #{seq} e{applied_epoch} held e{held_epoch}"),
        PeerMsg::LeaseGrant { seq, epoch } => format!("lease #{seq} e{epoch}"),
        PeerMsg::MigrationDone { partitions } => {
            format!("migrated {} partitions", partitions.len())
        }
        PeerMsg::LeaveRequest => "leave?".into(),
        PeerMsg::RejoinRequest => "rejoin?".into(),
        PeerMsg::Expelled => "expelled".into(),
    }
}

/// The test binary's name and test filter, for the replay command.
fn replay_command(seed: u64) -> String {
    let test = std::thread::current()
        .name()
        .unwrap_or("")
        .rsplit("::")
        .next()
        .unwrap_or("")
        .to_string();
    format!(
        "STATEGRID_SIM_SEED={seed} cargo test --release --locked --test cluster_sim -- --exact {test} --include-ignored --nocapture"
    )
}

/// Runs `f` on a fresh simulation; on a failure prints the seed and the trace, then fails.
fn with_trace(mut sim: Sim, f: impl FnOnce(&mut Sim) -> Result<u64, String>) -> u64 {
    let seed = sim.seed;
    let r = catch_unwind(AssertUnwindSafe(|| f(&mut sim)));
    let msg = match r {
        Ok(Ok(t)) => return t,
        Ok(Err(e)) => e,
        Err(p) => p
            .downcast_ref::<String>()
            .cloned()
            .or(p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default(),
    };
    for line in &sim.trace {
        eprintln!("{line}");
    }
    for p in &sim.procs {
        if let Some(n) = p.node.as_ref() {
            eprintln!("  node {}", n.debug_status());
        }
    }
    panic!(
        "seed {seed} failed at {} ms: {msg}\nreplay: {}",
        sim.now_ms,
        replay_command(seed)
    );
}

/// The seeds a test runs: `STATEGRID_SIM_SEED` alone when set, else `count` from `first`
/// (a fifth in debug builds).
fn seeds(first: u64, count: u64) -> Vec<u64> {
    match std::env::var("STATEGRID_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("STATEGRID_SIM_SEED is a number")],
        Err(_) => {
            let n = if cfg!(debug_assertions) {
                count / 5
            } else {
                count
            };
            (first..first + n).collect()
        }
    }
}

fn faults(rng: &mut StdRng) -> Faults {
    Faults {
        loss_pct: rng.random_range(0..6),
        dup_pct: rng.random_range(0..4),
        delay_ms_max: rng.random_range(1..30),
        crashes: true,
        partitions: true,
        pauses: true,
        fault_end_ms: 2500 + rng.random_range(0..1500),
        converge_ms_max: 8000,
        replication_timeout_ms: if rng.random_bool(0.5) { 80 } else { 400 },
        clients: 3,
    }
}

/// One random run of `seed`: 3 to 5 hosts, 1 or 2 replicas, random faults, clients.
fn random_run(seed: u64) -> u64 {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5EED);
    let hosts = rng.random_range(3..=5);
    let max_replicas = rng.random_range(1..=2);
    let f = faults(&mut rng);
    let sim = Sim::new(seed, hosts, false, max_replicas, f);
    with_trace(sim, |s| s.run(0))
}

/// The CI run: 1000 seeds over four tests (the test harness runs them in parallel).
const CI_SEEDS_PER_SHARD: u64 = 250;

fn random_shard(shard: u64) {
    let mut worst = 0;
    let mut failed = Vec::new();
    for seed in seeds(shard * CI_SEEDS_PER_SHARD, CI_SEEDS_PER_SHARD) {
        match catch_unwind(|| random_run(seed)) {
            Ok(t) => worst = worst.max(t),
            Err(_) => failed.push(seed),
        }
    }
    eprintln!("worst convergence after the heal: {worst} ms");
    assert!(failed.is_empty(), "seeds failed: {failed:?}");
}

/// Seeds past the CI's range that failed once (found by `soak`), kept as regression cases.
/// 1213: a cut of 2 of 5 hosts with one replica (see `Sim::fault`). Every seed of the CI's
/// range passes; none is set aside (48, 126, 547, 730 and 759 failed until a leader stopped
/// acting on stale SWIM verdicts after a heal, 482 until the fault schedule stopped cutting
/// off more hosts than the store promises to survive). Since reads are checked too, 19, 110,
/// 343 and 933 are in the CI's range for a reason: they failed while a primary answered
/// reads from changes its copies had not confirmed (19: a change still waiting; 110, 343,
/// 933: a change that had failed and so stayed applied only on the primary), see
/// `cluster::data::pending`. 228 and 839 are in the range for a reason too: 839 never
/// finished a migration while an old primary's refused repairs failed every stream
/// (`Pulls::on_object` now counts only the stream's source); 228 lost the Raft quorum for good
/// when the leader marked a second host of four `Failed` before removing the first from the
/// voters. (278, with lease grants deferred to the next heartbeat, lost an acknowledged write
/// because this simulation's stream sent its end without waiting for its objects to be
/// confirmed, which the shard does: a reset link lost the object. The stream now waits.)
const REGRESSION_SEEDS: &[u64] = &[1213];

#[test]
fn regression_seeds() {
    for &seed in REGRESSION_SEEDS {
        random_run(seed);
    }
}

#[test]
fn random_faults_seeds_0_to_249() {
    random_shard(0);
}

#[test]
fn random_faults_seeds_250_to_499() {
    random_shard(1);
}

#[test]
fn random_faults_seeds_500_to_749() {
    random_shard(2);
}

#[test]
fn random_faults_seeds_750_to_999() {
    random_shard(3);
}

/// Millions of seeds: `STATEGRID_SIM_SEEDS=1000000 cargo test --release --test cluster_sim --
/// --ignored soak` (from `STATEGRID_SIM_FIRST`, default 1000: after the CI's seeds).
#[test]
#[ignore]
fn soak() {
    let count: u64 = std::env::var("STATEGRID_SIM_SEEDS")
        .map(|s| s.parse().expect("STATEGRID_SIM_SEEDS is a number"))
        .unwrap_or(10_000);
    let first: u64 = std::env::var("STATEGRID_SIM_FIRST")
        .map(|s| s.parse().expect("STATEGRID_SIM_FIRST is a number"))
        .unwrap_or(1_000);
    for seed in seeds(first, count) {
        random_run(seed);
    }
}

#[test]
fn witness_with_random_faults() {
    for seed in seeds(0, 50) {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x1717);
        let mut f = faults(&mut rng);
        f.crashes = false; // a crash of one of 2 hosts is the scenario test below
        f.pauses = false; // so is a pause longer than detection
        let sim = Sim::new(seed + 1_000_000, 2, true, 1, f);
        with_trace(sim, |s| s.run(0));
    }
}

fn calm() -> Faults {
    Faults {
        loss_pct: 0,
        dup_pct: 0,
        delay_ms_max: 5,
        crashes: false,
        partitions: false,
        pauses: false,
        fault_end_ms: 1500,
        converge_ms_max: 3000,
        replication_timeout_ms: 400,
        clients: 0,
    }
}

/// (e) 2 hosts + witness: killing one host fails over to the other.
#[test]
fn two_hosts_with_witness_fail_over() {
    for seed in seeds(0, 20) {
        let sim = Sim::new(seed + 2_000_000, 2, true, 1, calm());
        with_trace(sim, |s| {
            s.run(0)?;
            s.no_restart = true;
            let victim = if s.procs[0].node.as_ref().unwrap().is_leader() {
                0
            } else {
                1
            };
            s.log(format!("kill slot {victim}"));
            s.kill(victim);
            let killed = s.now_ms;
            let survivor = 1 - victim;
            while s.now_ms < killed + 3000 {
                s.step();
                let n = s.procs[survivor].node.as_ref().unwrap();
                let now = s.mono(survivor);
                if (0..PARTITIONS).all(|p| n.is_primary(p, now)) {
                    let t = s.now_ms - killed;
                    s.log(format!("failover after {t} ms"));
                    return Ok(t);
                }
            }
            Err("the survivor never became primary for every partition".into())
        });
    }
}

/// (e) 2 hosts, no witness: no failover (no majority), and never two primaries.
#[test]
fn two_hosts_without_witness_do_not_fail_over() {
    for seed in seeds(0, 20) {
        let sim = Sim::new(seed + 3_000_000, 2, false, 1, calm());
        with_trace(sim, |s| {
            s.run(0)?;
            s.no_restart = true;
            let epoch = s.procs[0].node.as_ref().unwrap().map().epoch;
            s.kill(0);
            let killed = s.now_ms;
            while s.now_ms < killed + 3000 {
                s.step(); // check_leases runs inside
            }
            let n = s.procs[1].node.as_ref().unwrap();
            if n.map().epoch != epoch {
                return Err(format!(
                    "a map was installed without a majority: {}",
                    n.map().epoch
                ));
            }
            Ok(0)
        });
    }
}

/// Runs a calm 3-host store with one replica to convergence, then returns the slots of the
/// primary and the replica of register key 0's partition.
fn settled_three_hosts(seed: u64, replication_timeout_ms: u64) -> Sim {
    let mut f = calm();
    f.replication_timeout_ms = replication_timeout_ms;
    f.clients = 1;
    let mut sim = Sim::new(seed, 3, false, 1, f);
    sim.run(0).expect("a calm store converges");
    for c in &mut sim.clients {
        c.stopped = false;
    }
    sim
}

fn roles_of_key0(s: &Sim) -> (usize, usize) {
    let map = s.procs[0].node.as_ref().unwrap().map().clone();
    let o = &map.owners[partition_of_key(0)];
    let primary = s.ids[&o.primary().unwrap()];
    let replica = s.ids[&o.replicas().next().unwrap()];
    (primary, replica)
}

/// Issues one write of key 0 from client 0 and runs until it is answered.
fn write_key0(s: &mut Sim) -> Option<Ret> {
    write_key0_to(s, None)
}

/// As [`write_key0`], sent to host `to` first (a scenario whose host must not be the one the
/// client would pick at random, such as a paused one).
fn write_key0_to(s: &mut Sim, to: Option<HostId>) -> Option<Ret> {
    s.next_value += 1;
    let v = s.next_value;
    let c = &mut s.clients[0];
    let op = c.next_op;
    c.next_op += 1;
    c.inflight = Some(Inflight {
        op,
        key: 0,
        ask: Ask::Write(v),
        invoke_ms: s.now_ms,
        redirects: 0,
    });
    c.stopped = true; // no next operation after this one
    let len = s.history[0].len();
    s.at(
        s.now_ms + CLIENT_TIMEOUT_MS,
        Ev::ClientTimeout { client: 0, op },
    );
    s.client_send(0, to);
    while s.clients[0].inflight.is_some() {
        s.step();
    }
    s.history[0].get(len).map(|o| o.ret)
}

/// A replica frozen longer than `replication_timeout_ms` (but shorter than failure detection,
/// so the map keeps it) turns a write into `ReplicationFailed`; nothing acknowledged is lost.
#[test]
fn a_frozen_replica_makes_writes_fail_with_replication_failed() {
    for seed in seeds(4_000_000, 10) {
        let sim = settled_three_hosts(seed, 60);
        with_trace(sim, |s| {
            let (primary, replica) = roles_of_key0(s);
            s.pause(replica, 120);
            // To the primary: a client that picked the paused replica would wait out the pause.
            let to = s.id_of(primary);
            let ret = write_key0_to(s, to);
            if s.replication_failed == 0 || ret != Some(Ret::Unknown) {
                return Err(format!(
                    "no ReplicationFailed (answer {ret:?}, {} failures)",
                    s.replication_failed
                ));
            }
            s.run(0)
        });
    }
}

/// A primary whose replication is stalled by a one-way cut, then frozen past failure
/// detection: the store fails over, and when the cut heals the old primary's change reaches
/// the new primary, which fences it (`StaleEpoch`) instead of applying it.
#[test]
fn a_deposed_primary_is_fenced_with_stale_epoch() {
    for seed in seeds(5_000_000, 10) {
        let sim = settled_three_hosts(seed, 5_000);
        with_trace(sim, |s| {
            let (primary, replica) = roles_of_key0(s);
            // A first write opens the data link from the primary to the replica.
            write_key0(s);
            s.blocked.insert((primary, replica));
            s.log(format!("cut {primary} -> {replica}"));
            // The write is applied on the primary and its change waits in the stalled link.
            s.next_value += 1;
            let v = s.next_value;
            let c = &mut s.clients[0];
            let op = c.next_op;
            c.next_op += 1;
            c.inflight = Some(Inflight {
                op,
                key: 0,
                ask: Ask::Write(v),
                invoke_ms: s.now_ms,
                redirects: 0,
            });
            c.stopped = true;
            s.at(
                s.now_ms + CLIENT_TIMEOUT_MS,
                Ev::ClientTimeout { client: 0, op },
            );
            let pid = s.id_of(primary).unwrap();
            s.client_send(0, Some(pid));
            let t = s.now_ms + 20;
            while s.now_ms < t {
                s.step();
            }
            s.no_restart = true;
            s.pause(primary, 1_100);
            // The cut heals before the link's dead-peer timeout: the stalled change arrives.
            let t = s.now_ms + 1_000;
            while s.now_ms < t {
                s.step();
            }
            s.blocked.clear();
            s.log("heal the cut".into());
            let t = s.now_ms + 200;
            while s.now_ms < t {
                s.step();
            }
            if s.stale_epoch_refusals == 0 {
                return Err("the deposed primary's change was not fenced".into());
            }
            s.no_restart = false;
            s.run(0)
        });
    }
}
