//! The partition map and its planner.
//!
//! [`PartitionMap`] says, for each of the [`PARTITIONS`] partitions, which host is primary,
//! which hosts are replicas, which hosts are still *receiving* the partition (pending, by
//! migration) and which hosts still hold it only until those finish (outgoing). [`plan`] is the
//! pure, deterministic function every host could run to get the next map; in practice only the
//! consensus leader runs it and proposes the result, and everyone installs the committed copy.
//!
//! # Roles of a copy
//! Every entry of [`Owners`] is a host with a [`Role`]:
//! - `Full`: a planned copy that holds the data. The first entry is the primary.
//! - `Pending`: a planned copy that does not hold the data yet; it is receiving it by migration
//!   (and every new write). Never the primary.
//! - `Outgoing`: holds the data but is not planned to keep it; kept while some copy of the
//!   partition is still pending, so moving a copy never lowers the number of full copies.
//!   It is primary only when no `Full` copy exists (a partition whose only copy is moving).
//!
//! So a map never names a host as owner of data it lacks (the design's migration rule), and a
//! host that finishes receiving becomes `Full` in a later map ([`plan_with_ready`]).
//!
//! # The planner, in order
//! 1. Drop copies on hosts that are gone or `Failed`; an ineligible host (`Leaving`, weight 0,
//!    `Joining`) keeps its data as `Outgoing`. If the primary is gone, the first surviving
//!    replica is promoted (it has every acknowledged write).
//! 2. Targets: copies per partition = `min(max_replicas + 1, eligible hosts)`; each eligible
//!    host's share of copies and of primaries is proportional to its weight (largest
//!    remainder, ties to the lower host id; no host gets two copies of one partition).
//! 3. Fill missing copies on the most under-loaded hosts, then move copies from over- to
//!    under-loaded hosts one at a time, preferring moves that cost nothing (a copy still pending)
//!    or little (a replica, not the primary); then hand primaries to full replicas on hosts
//!    below their primary share. Every loop strictly lowers an imbalance, so it ends.
//!
//! Determinism: hosts are sorted by id, partitions are scanned in order, ties go to the lower
//! id. Nothing depends on the order of the input slice or on any hash seed.

use serde::{Deserialize, Serialize};

/// Partitions in a store (the protocol's constant, as a `usize`).
pub const PARTITIONS: usize = stategrid_proto::hash::PARTITIONS as usize;
/// Replicas of a partition at most (ScaleOut: `max_replicas` 1 or 2).
pub const REPLICAS_MAX: u8 = 2;
/// Planned copies of a partition at most: a primary and `REPLICAS_MAX` replicas.
pub const COPIES_MAX: usize = 1 + REPLICAS_MAX as usize;
/// Entries of one partition at most: planned copies plus outgoing ones.
pub const OWNER_SLOTS: usize = 2 * COPIES_MAX;

/// A host's identity: random at every start (a restarted host is a new member).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct HostId(pub u64);

/// A host's membership state, as agreed through consensus.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum HostState {
    /// Known to the group, takes no partitions yet.
    Joining,
    /// Takes its weighted share of partitions.
    Active,
    /// Its partitions move away; it keeps serving them until they have.
    Leaving,
    /// Declared dead by the leader; its copies are dropped.
    Failed,
}

/// One host of the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostInfo {
    pub id: HostId,
    /// `int_port` address for replication and migration (opaque here).
    pub addr: String,
    /// `store_weight`: share of partitions; 0 holds nothing.
    pub weight: u32,
    pub state: HostState,
}

/// What one entry of [`Owners`] holds (see the module doc).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    #[default]
    Full,
    Pending,
    Outgoing,
}

/// The hosts of one partition: primary first, then full replicas, pending and outgoing copies.
/// Fixed size (no allocation per partition); `len` entries are valid.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "OwnersWire")]
pub struct Owners {
    ids: [HostId; OWNER_SLOTS],
    roles: [Role; OWNER_SLOTS],
    len: u8,
}

/// [`Owners`] as another host sends it (in a Raft entry or snapshot): checked before it becomes
/// one, because everything that reads a map indexes by `len` and trusts the invariants (found by
/// `fuzz/raft`: a snapshot whose `len` exceeded the slots panicked the joining host).
#[derive(Deserialize)]
struct OwnersWire {
    ids: [HostId; OWNER_SLOTS],
    roles: [Role; OWNER_SLOTS],
    len: u8,
}

impl TryFrom<OwnersWire> for Owners {
    type Error = String;

    fn try_from(w: OwnersWire) -> Result<Owners, String> {
        if w.len as usize > OWNER_SLOTS {
            return Err(format!(
                "a partition lists {} copies; a map holds at most {OWNER_SLOTS}",
                w.len
            ));
        }
        let o = Owners {
            ids: w.ids,
            roles: w.roles,
            len: w.len,
        };
        match o.broken() {
            Some(why) => Err(why),
            None => Ok(o),
        }
    }
}

impl Owners {
    /// Builds from entries (primary first). Panics on a broken invariant: that is a planner bug.
    pub fn from_entries(entries: &[(HostId, Role)]) -> Owners {
        assert!(entries.len() <= OWNER_SLOTS, "too many copies: {entries:?}");
        let mut o = Owners::default();
        for (i, &(h, r)) in entries.iter().enumerate() {
            o.ids[i] = h;
            o.roles[i] = r;
        }
        o.len = entries.len() as u8;
        o.check();
        o
    }

    /// The invariants every installed map holds. Panics on a broken one.
    pub fn check(&self) {
        if let Some(why) = self.broken() {
            panic!("{why}");
        }
    }

    /// The first invariant this entry breaks, if any.
    pub fn broken(&self) -> Option<String> {
        let e = self.entries();
        for (i, (h, _)) in e.iter().enumerate() {
            if e[..i].iter().any(|(o, _)| o == h) {
                return Some(format!("two copies on {h:?}: {e:?}"));
            }
        }
        if let Some(&(_, r)) = e.first() {
            if r == Role::Pending {
                return Some(format!("a pending host is primary: {e:?}"));
            }
            if r == Role::Outgoing && e.iter().any(|&(_, r)| r == Role::Full) {
                return Some(format!("outgoing primary beside a full copy: {e:?}"));
            }
        }
        if e.iter().filter(|(_, r)| *r != Role::Outgoing).count() > COPIES_MAX {
            return Some(format!("more than {COPIES_MAX} planned copies: {e:?}"));
        }
        None
    }

    pub fn entries(&self) -> Vec<(HostId, Role)> {
        (0..self.len as usize)
            .map(|i| (self.ids[i], self.roles[i]))
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The host that serves the partition (holds its data), if any.
    pub fn primary(&self) -> Option<HostId> {
        (self.len > 0).then_some(self.ids[0])
    }

    /// Full copies other than the primary: the replicas every write is applied to.
    pub fn replicas(&self) -> impl Iterator<Item = HostId> + '_ {
        (1..self.len as usize)
            .filter(|&i| self.roles[i] == Role::Full)
            .map(|i| self.ids[i])
    }

    /// Planned copies (full and pending): what the planner balances.
    pub fn targets(&self) -> impl Iterator<Item = HostId> + '_ {
        (0..self.len as usize)
            .filter(|&i| self.roles[i] != Role::Outgoing)
            .map(|i| self.ids[i])
    }

    /// Hosts receiving the partition by migration.
    pub fn pending(&self) -> impl Iterator<Item = HostId> + '_ {
        (0..self.len as usize)
            .filter(|&i| self.roles[i] == Role::Pending)
            .map(|i| self.ids[i])
    }

    /// Every host with a copy in any role: where a change must go.
    pub fn copies(&self) -> impl Iterator<Item = HostId> + '_ {
        self.ids[..self.len as usize].iter().copied()
    }

    /// Hosts that hold the partition's data (full and outgoing).
    pub fn holders(&self) -> impl Iterator<Item = HostId> + '_ {
        (0..self.len as usize)
            .filter(|&i| self.roles[i] != Role::Pending)
            .map(|i| self.ids[i])
    }

    pub fn role_of(&self, h: HostId) -> Option<Role> {
        (0..self.len as usize)
            .find(|&i| self.ids[i] == h)
            .map(|i| self.roles[i])
    }
}

/// The agreed assignment of partitions to hosts at one epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionMap {
    /// Bumped by every installed map; fences all data, replication and migration traffic.
    pub epoch: u64,
    /// Every known host, sorted by id.
    pub hosts: Vec<HostInfo>,
    /// `PARTITIONS` entries.
    pub owners: Vec<Owners>,
}

impl Default for PartitionMap {
    fn default() -> Self {
        PartitionMap::empty()
    }
}

impl PartitionMap {
    /// Epoch 0: no hosts, no owners (the state before the first map).
    pub fn empty() -> PartitionMap {
        PartitionMap {
            epoch: 0,
            hosts: Vec::new(),
            owners: vec![Owners::default(); PARTITIONS],
        }
    }

    pub fn host(&self, id: HostId) -> Option<&HostInfo> {
        self.hosts.iter().find(|h| h.id == id)
    }

    pub fn primary(&self, partition: usize) -> Option<HostId> {
        self.owners[partition].primary()
    }

    /// Partitions whose primary is `h`.
    pub fn primaries_of(&self, h: HostId) -> usize {
        self.owners
            .iter()
            .filter(|o| o.primary() == Some(h))
            .count()
    }

    /// Planned copies (full or pending) on `h`.
    pub fn targets_of(&self, h: HostId) -> usize {
        self.owners
            .iter()
            .filter(|o| o.targets().any(|t| t == h))
            .count()
    }

    /// Every (partition, host) still receiving data.
    pub fn pending_moves(&self) -> Vec<(u16, HostId)> {
        let mut v = Vec::new();
        for (p, o) in self.owners.iter().enumerate() {
            v.extend(o.pending().map(|h| (p as u16, h)));
        }
        v
    }

    /// Panics if any partition breaks an [`Owners`] invariant.
    pub fn check(&self) {
        assert_eq!(self.owners.len(), PARTITIONS);
        assert!(
            self.hosts.windows(2).all(|w| w[0].id < w[1].id),
            "hosts not sorted or duplicated"
        );
        for o in &self.owners {
            o.check();
        }
    }
}

/// Splits `total` among `weights` proportionally, capping each at `cap` and giving the excess to
/// the others (water filling); remainders go to the largest fractional parts, ties to the lower
/// index (callers pass hosts sorted by id). Weights must be positive.
pub fn apportion(total: u64, weights: &[u32], cap: u64) -> Vec<u64> {
    let mut out = vec![0u64; weights.len()];
    let mut capped = vec![false; weights.len()];
    let mut left = total.min(cap * weights.len() as u64);
    loop {
        let open: Vec<usize> = (0..weights.len()).filter(|&i| !capped[i]).collect();
        let w_sum: u64 = open.iter().map(|&i| weights[i] as u64).sum();
        if open.is_empty() || w_sum == 0 {
            return out;
        }
        let mut share: Vec<(usize, u64, u64)> = open
            .iter()
            .map(|&i| {
                let exact = left as u128 * weights[i] as u128;
                (
                    i,
                    (exact / w_sum as u128) as u64,
                    (exact % w_sum as u128) as u64,
                )
            })
            .collect();
        let mut rest = left - share.iter().map(|s| s.1).sum::<u64>();
        share.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0)));
        for s in share.iter_mut() {
            if rest == 0 {
                break;
            }
            s.1 += 1;
            rest -= 1;
        }
        let over: Vec<usize> = share.iter().filter(|s| s.1 > cap).map(|s| s.0).collect();
        if over.is_empty() {
            for s in share {
                out[s.0] = s.1;
            }
            return out;
        }
        for i in over {
            capped[i] = true;
            out[i] = cap;
            left -= cap;
        }
    }
}

/// [`plan_with_ready`] with no finished migrations.
pub fn plan(prev: &PartitionMap, hosts: &[HostInfo], max_replicas: u8) -> PartitionMap {
    plan_with_ready(prev, hosts, max_replicas, &[])
}

/// The next map from `prev`, the current `hosts` and `max_replicas`, after the migrations in
/// `ready` (partition, receiving host) have finished. Pure and deterministic. The result's
/// epoch is `prev.epoch + 1`; callers compare `owners` to see whether anything changed.
pub fn plan_with_ready(
    prev: &PartitionMap,
    hosts: &[HostInfo],
    max_replicas: u8,
    ready: &[(u16, HostId)],
) -> PartitionMap {
    assert!(
        max_replicas <= REPLICAS_MAX,
        "max_replicas {max_replicas} > {REPLICAS_MAX}"
    );
    assert_eq!(prev.owners.len(), PARTITIONS);
    let mut hosts = hosts.to_vec();
    hosts.sort_by_key(|h| h.id);
    assert!(
        hosts.windows(2).all(|w| w[0].id < w[1].id),
        "duplicate host id"
    );

    let eligible: Vec<&HostInfo> = hosts
        .iter()
        .filter(|h| h.state == HostState::Active && h.weight > 0)
        .collect();
    let ids: Vec<HostId> = eligible.iter().map(|h| h.id).collect();
    let weights: Vec<u32> = eligible.iter().map(|h| h.weight).collect();
    let idx = |h: HostId| ids.binary_search(&h).ok();
    let alive = |h: HostId| {
        hosts
            .binary_search_by_key(&h, |x| x.id)
            .is_ok_and(|i| hosts[i].state != HostState::Failed)
    };
    if ids.is_empty() {
        // Nothing can take partitions (every host left, failed or weighs 0): keep the surviving
        // data where it is rather than drop it; pending copies stop.
        let owners = prev
            .owners
            .iter()
            .map(|o| {
                let e: Vec<(HostId, Role)> = o
                    .entries()
                    .into_iter()
                    .filter(|&(h, r)| alive(h) && r != Role::Pending)
                    .collect();
                let full = e.iter().any(|&(_, r)| r == Role::Full);
                let e: Vec<(HostId, Role)> = e
                    .into_iter()
                    .map(|(h, r)| (h, if full { Role::Full } else { r }))
                    .filter(|&(_, r)| full || r == Role::Outgoing)
                    .collect();
                Owners::from_entries(&e)
            })
            .collect();
        return PartitionMap {
            epoch: prev.epoch + 1,
            hosts,
            owners,
        };
    }
    let copies = (max_replicas as usize + 1).min(ids.len());
    let copies_target = apportion((PARTITIONS * copies) as u64, &weights, PARTITIONS as u64);
    let primaries_target = apportion(PARTITIONS as u64, &weights, PARTITIONS as u64);

    // Step 1: surviving entries, finished migrations, ineligible holders become outgoing.
    let mut work: Vec<Vec<(HostId, Role)>> = Vec::with_capacity(PARTITIONS);
    for (p, o) in prev.owners.iter().enumerate() {
        let mut e: Vec<(HostId, Role)> = Vec::with_capacity(OWNER_SLOTS + 1);
        for (h, mut r) in o.entries() {
            if !alive(h) {
                continue;
            }
            if r == Role::Pending && ready.contains(&(p as u16, h)) {
                r = Role::Full;
            }
            match (r, idx(h).is_some()) {
                (Role::Pending, false) => continue,
                (Role::Full, false) => r = Role::Outgoing,
                _ => {}
            }
            e.push((h, r));
        }
        if !e.iter().any(|&(_, r)| r != Role::Pending) {
            // No full copy survives. A pending copy still holds every change made since it was
            // named (changes are replicated to it, and acknowledged only once it confirmed),
            // and the whole partition if its stream ended but the leader that heard of it
            // died: it is the best data left, so it becomes a full copy instead of the
            // partition starting over empty on some other host (found by the simulation, seed
            // 250: acknowledged writes lost when the only full copy and the leader failed
            // together). With no copy at all (a new store, or more than max_replicas lost),
            // whatever is planned starts empty and full.
            for x in e.iter_mut() {
                x.1 = Role::Full;
            }
        }
        // Too many planned copies (max_replicas lowered): drop pending, then the last replicas.
        while e.iter().filter(|(_, r)| *r != Role::Outgoing).count() > copies {
            let pos = e
                .iter()
                .rposition(|(_, r)| *r == Role::Pending)
                .or_else(|| e.iter().rposition(|(_, r)| *r == Role::Full))
                .expect("a planned copy");
            e.remove(pos);
        }
        work.push(e);
    }

    let mut count = vec![0i64; ids.len()];
    for e in &work {
        for &(h, r) in e {
            if r != Role::Outgoing {
                count[idx(h).expect("planned copies are on eligible hosts")] += 1;
            }
        }
    }
    let deficit = |count: &[i64], i: usize| copies_target[i] as i64 - count[i];

    // Step 2: fill missing copies on the most under-loaded hosts.
    // shared[a * n + b]: partitions with planned copies on both a and b. Filling prefers hosts
    // that share few partitions with the copies already there, so a host's replicas spread over
    // all the others and a failure spreads its load instead of landing on one partner.
    let n = ids.len();
    let mut shared = vec![0i64; n * n];
    for e in &work {
        let t: Vec<usize> = e
            .iter()
            .filter(|(_, r)| *r != Role::Outgoing)
            .filter_map(|&(h, _)| idx(h))
            .collect();
        for &a in &t {
            for &b in &t {
                shared[a * n + b] += 1;
            }
        }
    }
    let fresh: Vec<bool> = work.iter().map(|e| e.is_empty()).collect();
    for (p, e) in work.iter_mut().enumerate() {
        let has_data = !fresh[p];
        while e.iter().filter(|(_, r)| *r != Role::Outgoing).count() < copies {
            let planned: Vec<usize> = e
                .iter()
                .filter(|(_, r)| *r != Role::Outgoing)
                .filter_map(|&(h, _)| idx(h))
                .collect();
            let key = |i: usize| {
                let held = e.iter().any(|&(h, _)| h == ids[i]);
                let pair: i64 = planned.iter().map(|&a| shared[a * n + i]).sum();
                (
                    deficit(&count, i) > 0,
                    -pair,
                    deficit(&count, i),
                    held,
                    std::cmp::Reverse(i),
                )
            };
            let best = (0..n)
                .filter(|&i| !planned.contains(&i))
                .max_by_key(|&i| key(i))
                .expect("copies <= eligible hosts");
            add_copy(e, ids[best], has_data);
            count[best] += 1;
            for &a in &planned {
                shared[a * n + best] += 1;
                shared[best * n + a] += 1;
            }
            shared[best * n + best] += 1;
        }
    }

    // Step 3: move copies from over- to under-loaded hosts, cheapest move first.
    loop {
        let mut overs: Vec<usize> = (0..ids.len()).filter(|&i| deficit(&count, i) < 0).collect();
        let mut unders: Vec<usize> = (0..ids.len()).filter(|&i| deficit(&count, i) > 0).collect();
        overs.sort_by_key(|&i| (deficit(&count, i), i));
        unders.sort_by_key(|&i| (-deficit(&count, i), i));
        let mut moved = false;
        'pairs: for &x in &overs {
            for &y in &unders {
                let (hx, hy) = (ids[x], ids[y]);
                // Rank: 0 = x only pending there, 1 = x a full replica, 2 = x the primary.
                let mut best: Option<(u8, usize)> = None;
                for (p, e) in work.iter().enumerate() {
                    let Some(pos) = e.iter().position(|&(h, r)| h == hx && r != Role::Outgoing)
                    else {
                        continue;
                    };
                    if e.iter().any(|&(h, r)| h == hy && r != Role::Outgoing) {
                        continue;
                    }
                    let rank = match e[pos].1 {
                        Role::Pending => 0,
                        _ if pos > 0 => 1,
                        _ => 2,
                    };
                    if best.is_none_or(|(b, _)| rank < b) {
                        best = Some((rank, p));
                        if rank == 0 {
                            break;
                        }
                    }
                }
                if let Some((_, p)) = best {
                    let e = &mut work[p];
                    let pos = e
                        .iter()
                        .position(|&(h, r)| h == hx && r != Role::Outgoing)
                        .unwrap();
                    if e[pos].1 == Role::Pending || fresh[p] {
                        e.remove(pos);
                    } else {
                        e[pos].1 = Role::Outgoing;
                    }
                    add_copy(e, hy, !fresh[p]);
                    count[x] -= 1;
                    count[y] += 1;
                    moved = true;
                    break 'pairs;
                }
            }
        }
        if !moved {
            break;
        }
    }

    // Step 4: outgoing copies go once nothing is pending; a primary that holds data.
    let mut primaries = vec![0i64; ids.len()];
    for e in work.iter_mut() {
        if !e.iter().any(|&(_, r)| r == Role::Pending) {
            e.retain(|&(_, r)| r != Role::Outgoing);
        }
        while e.len() > OWNER_SLOTS {
            // Keep the first outgoing copy (a holder), drop the latest ones.
            let pos = e
                .iter()
                .rposition(|&(_, r)| r == Role::Outgoing)
                .expect("outgoing");
            e.remove(pos);
        }
        // Primary: the current one if it is still a full copy, else the first full replica,
        // else (no full copy: its only copies are moving) the first outgoing holder.
        let pos = e
            .iter()
            .position(|&(_, r)| r == Role::Full)
            .or_else(|| e.iter().position(|&(_, r)| r == Role::Outgoing));
        if let Some(pos) = pos {
            let entry = e.remove(pos);
            e.insert(0, entry);
            if let Some(i) = idx(entry.0).filter(|_| entry.1 == Role::Full) {
                primaries[i] += 1;
            }
        }
    }

    // Step 5: balance primaries by handing the role to full replicas. A direct hand-over from an
    // over- to an under-loaded host may not exist, so search a chain: over-loaded `a` gives a
    // partition to `b`, `b` gives another to `c`, ... until an under-loaded host; every host in
    // between keeps its count. Breadth-first over hosts, ties to the lower index.
    let pdef = |primaries: &[i64], i: usize| primaries_target[i] as i64 - primaries[i];
    loop {
        // edge[a * n + b]: the first partition with primary `a` and a full replica on `b`.
        let mut edge: Vec<Option<usize>> = vec![None; n * n];
        for (p, e) in work.iter().enumerate() {
            let Some(&(p0, Role::Full)) = e.first() else {
                continue;
            };
            let Some(a) = idx(p0) else { continue };
            for &(h, r) in &e[1..] {
                if let (Role::Full, Some(b)) = (r, idx(h)) {
                    edge[a * n + b].get_or_insert(p);
                }
            }
        }
        let mut from: Vec<Option<usize>> = vec![None; n];
        let mut seen = vec![false; n];
        let mut queue: std::collections::VecDeque<usize> =
            (0..n).filter(|&i| pdef(&primaries, i) < 0).collect();
        queue
            .make_contiguous()
            .sort_by_key(|&i| (pdef(&primaries, i), i));
        for &i in queue.iter() {
            seen[i] = true;
        }
        let mut end = None;
        while let Some(a) = queue.pop_front() {
            if pdef(&primaries, a) > 0 {
                end = Some(a);
                break;
            }
            for b in 0..n {
                if !seen[b] && edge[a * n + b].is_some() {
                    seen[b] = true;
                    from[b] = Some(a);
                    queue.push_back(b);
                }
            }
        }
        let Some(mut b) = end else { break };
        primaries[b] += 1;
        while let Some(a) = from[b] {
            let p = edge[a * n + b].expect("edge on the path");
            let e = &mut work[p];
            let k = e
                .iter()
                .position(|&(h, _)| h == ids[b])
                .expect("replica on the path");
            let entry = e.remove(k);
            e.insert(0, entry);
            b = a;
        }
        primaries[b] -= 1;
    }

    // Order: primary, full replicas, pending, outgoing (a stable order keeps promotions stable).
    let owners = work
        .into_iter()
        .map(|mut e| {
            let rank = |r: Role| match r {
                Role::Full => 0,
                Role::Pending => 1,
                Role::Outgoing => 2,
            };
            if e.len() > 1 {
                e[1..].sort_by_key(|&(_, r)| rank(r));
            }
            Owners::from_entries(&e)
        })
        .collect();
    let map = PartitionMap {
        epoch: prev.epoch + 1,
        hosts,
        owners,
    };
    map.check();
    map
}

/// Adds `h` as a planned copy: back to `Full` if it still holds the data as outgoing, `Pending`
/// if the data must be migrated to it, `Full` if the partition has no data anywhere.
fn add_copy(e: &mut Vec<(HostId, Role)>, h: HostId, has_data: bool) {
    if let Some(x) = e.iter_mut().find(|(o, _)| *o == h) {
        debug_assert_eq!(x.1, Role::Outgoing);
        x.1 = Role::Full;
    } else {
        e.push((h, if has_data { Role::Pending } else { Role::Full }));
    }
}

#[cfg(test)]
#[path = "map_tests.rs"]
mod tests;
