//! Failure detection and discovery: SWIM (foca) over UDP on `mgt_port`, plus the pure rules
//! the control plane needs around it (the static `hosts` list, foca's tuning, and who
//! bootstraps a new store).
//!
//! foca has no runtime: [`Swim`] feeds it datagrams and due timers and collects what it wants
//! sent, scheduled and reported. Its membership events become [`SwimEvent`]s keyed by
//! [`HostId`], which the control plane turns into `Input::Member` for the Raft node.
//!
//! # Identity
//! A foca identity is `(host id, mgt address, start time, generation, flags)`. foca keys
//! members by address (`Identity::Addr` = the mgt `SocketAddr`), so a host restarted on the
//! same address (new random id, later start time) replaces its old identity; we report that
//! as the old id down and the new one up. The flags say whether the host is already a member
//! of a store ([`FLAG_IN_STORE`]), is a witness, or wants a store (auto_join or `join`); a flag
//! change is published with `change_identity` (a higher generation wins the address).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::num::{NonZeroU8, NonZeroUsize};
use std::time::Duration;

use foca::{AccumulatingRuntime, Config as FocaConfig, Foca, OwnedNotification, PostcardCodec};
use foca::{NoCustomBroadcast, PeriodicParams, Timer};
use rand_foca::SeedableRng;
use rand_foca::rngs::StdRng;
use serde::{Deserialize, Serialize};

use super::map::HostId;

/// The host already belongs to a store (bootstrapped it, or its join was applied).
pub const FLAG_IN_STORE: u8 = 1;
/// A witness: a voter without data; never bootstraps a store.
pub const FLAG_WITNESS: u8 = 2;
/// The host wants to be in a store (auto_join 1, or `stategrid join` was run).
pub const FLAG_WANTS_STORE: u8 = 4;

/// Largest SWIM datagram foca produces and accepts (below a 1500-byte Ethernet MTU).
pub const DATAGRAM_BYTES_MAX: usize = 1400;
/// Static `hosts` entries at most (each is probed and announced to).
pub const STATIC_HOSTS_MAX: usize = 256;
/// Timers foca may have scheduled at once: a few per member; a bound against a bug looping.
const TIMERS_MAX: usize = 4096;

/// One host as SWIM knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Ident {
    pub id: u64,
    pub mgt: SocketAddr,
    /// Wall-clock start time in milliseconds: a restarted host (same address) wins.
    pub started_ms: u64,
    /// Bumped by every identity change of one process.
    pub generation: u16,
    pub flags: u8,
}

impl Ident {
    pub fn host(&self) -> HostId {
        HostId(self.id)
    }
    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
    /// A stand-in for a host known only by address (a static `hosts` entry, a multicast
    /// sender): foca accepts an announce sent to any identity with its address.
    pub fn placeholder(mgt: SocketAddr) -> Ident {
        Ident {
            id: 0,
            mgt,
            started_ms: 0,
            generation: 0,
            flags: 0,
        }
    }
}

impl foca::Identity for Ident {
    type Addr = SocketAddr;

    /// Declared down while alive (a false suspicion, a pause): come back under a newer
    /// generation so SWIM sees the host again. Whether the store still has it is Raft's
    /// decision (a host declared failed is expelled and must restart).
    fn renew(&self) -> Option<Self> {
        Some(Ident {
            generation: self.generation.wrapping_add(1),
            ..*self
        })
    }

    fn addr(&self) -> SocketAddr {
        self.mgt
    }

    fn win_addr_conflict(&self, other: &Self) -> bool {
        (self.started_ms, self.generation, self.id) > (other.started_ms, other.generation, other.id)
    }
}

/// What SWIM reports, per host id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SwimEvent {
    Up(Ident),
    Down(HostId),
}

/// foca's settings for a store that must declare a dead host down within
/// `failure_detection_ms`.
///
/// A dead host is noticed when some live host probes it: with every host probing one member
/// per `probe_period` (round-robin over a shuffled list), the first probe of it comes within
/// about one period; that probe fails at the end of its period (after the direct and indirect
/// pings), the host is suspected, and declared down `suspect_to_down_after` later. So
/// detection takes about `2 × probe_period + suspect_to_down_after`: with the period at 1/5 of
/// the budget and the suspicion at 1/2, that is 0.9 of it, leaving a margin for scheduling.
/// `probe_rtt` at 1/3 of the period leaves time for the indirect round. Gossip every
/// period/3 spreads a suspicion fast enough for a live suspect to refute it.
pub fn foca_config(failure_detection_ms: u64, expected_hosts: u32) -> FocaConfig {
    assert!(
        failure_detection_ms >= 300,
        "config validation keeps it >= 300 ms"
    );
    let period_ms = failure_detection_ms / 5;
    let mut c = FocaConfig::new_lan(std::num::NonZeroU32::new(expected_hosts.max(3)).unwrap());
    c.probe_period = Duration::from_millis(period_ms);
    c.probe_rtt = Duration::from_millis(period_ms / 3);
    c.suspect_to_down_after = Duration::from_millis(failure_detection_ms / 2);
    assert!(
        2 * c.probe_period + c.suspect_to_down_after < Duration::from_millis(failure_detection_ms),
        "detection must fit the budget"
    );
    c.max_packet_size = NonZeroUsize::new(DATAGRAM_BYTES_MAX).unwrap();
    c.max_transmissions = NonZeroU8::new(8).unwrap();
    c.notify_down_members = true;
    c.periodic_gossip = Some(PeriodicParams {
        frequency: Duration::from_millis((period_ms / 3).max(10)),
        num_members: NonZeroUsize::new(3).unwrap(),
    });
    // Every few seconds ask one member for its member list: a host that joined through a
    // different seed learns the rest of the store.
    c.periodic_announce = Some(PeriodicParams {
        frequency: Duration::from_secs(5),
        num_members: NonZeroUsize::new(1).unwrap(),
    });
    c.periodic_announce_to_down_members = None;
    c
}

/// One entry of the `hosts` parameter: an IPv4 address or a DNS name (a compose service, a
/// Kubernetes headless service), and the host's `mgt_port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostSpec {
    pub host: String,
    pub port: u16,
}

impl HostSpec {
    /// The address of an entry that is an IP literal (no lookup needed), else `None`.
    pub fn literal(&self) -> Option<SocketAddr> {
        let ip = self.host.parse::<Ipv4Addr>().ok()?;
        Some(SocketAddr::new(ip.into(), self.port))
    }

    /// The addresses the entry names now: the IP itself, or what DNS answers (IPv4 only; empty
    /// when the name does not resolve yet, for example a container that has not started).
    /// A DNS lookup blocks: never on the control thread (see `cluster::resolver`).
    pub fn resolve(&self) -> Vec<SocketAddr> {
        if let Ok(ip) = self.host.parse::<Ipv4Addr>() {
            return vec![SocketAddr::new(ip.into(), self.port)];
        }
        use std::net::ToSocketAddrs;
        (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map(|it| it.filter(|a| a.is_ipv4()).collect())
            .unwrap_or_default()
    }
}

/// Parses `hosts`: entries `host:mgt_port` or `host` (this host's `mgt_port`), separated by
/// commas or spaces, where `host` is an IPv4 address or a DNS name. The error names the entry.
pub fn parse_hosts(list: &str, default_port: u16) -> Result<Vec<HostSpec>, String> {
    let mut out = Vec::new();
    for entry in list.split([',', ' ', '\t', '\n']).filter(|e| !e.is_empty()) {
        let bad = |why: &str| {
            format!(
                "'{entry}' is not a host: {why}; expected ip:mgt_port, name:mgt_port, ip or name, for example 10.0.0.2:2720 or host2:2720"
            )
        };
        let (host, port) = match entry.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .map_err(|_| bad("the port is not a number"))?,
            ),
            None => (entry, default_port),
        };
        let is_ip = host.parse::<Ipv4Addr>().is_ok();
        let is_name = !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            })
            && !host.chars().all(|c| c.is_ascii_digit() || c == '.');
        if !is_ip && !is_name {
            return Err(bad("neither an IPv4 address nor a DNS name"));
        }
        if port == 0 {
            return Err(format!("'{entry}' has port 0: give the host's mgt_port"));
        }
        let spec = HostSpec {
            host: host.to_owned(),
            port,
        };
        if !out.contains(&spec) {
            out.push(spec);
        }
    }
    if out.len() > STATIC_HOSTS_MAX {
        return Err(format!(
            "{} hosts listed; at most {STATIC_HOSTS_MAX} (the others are found through them)",
            out.len()
        ));
    }
    Ok(out)
}

/// What a host that is not in a store yet should do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// Keep looking.
    Wait,
    /// Create a new store with this host as its only member.
    Bootstrap,
    /// Ask the store's members to add this host.
    Join,
}

/// The bootstrap rule (see `docs/cluster.md`, "Bootstrap or join").
///
/// - nothing can be discovered (no multicast, no static hosts): bootstrap at once;
/// - any host found is already in a store: join it;
/// - a witness never creates a store: it waits for one;
/// - once `discovery_wait_ms` has passed: the host with the lowest id among itself and the
///   found hosts that want a store and are not witnesses bootstraps; the others wait for it
///   (it appears with [`FLAG_IN_STORE`], then they join).
pub fn decide_start(
    me: &Ident,
    found: &[Ident],
    elapsed_ms: u64,
    discovery_wait_ms: u64,
    can_discover: bool,
) -> Start {
    if found.iter().any(|h| h.has(FLAG_IN_STORE)) {
        return Start::Join;
    }
    if me.has(FLAG_WITNESS) {
        return Start::Wait;
    }
    if !can_discover {
        return Start::Bootstrap;
    }
    if elapsed_ms < discovery_wait_ms {
        return Start::Wait;
    }
    let lowest = found
        .iter()
        .filter(|h| h.has(FLAG_WANTS_STORE) && !h.has(FLAG_WITNESS))
        .all(|h| me.id < h.id);
    if lowest {
        Start::Bootstrap
    } else {
        Start::Wait
    }
}

type FocaT = Foca<Ident, PostcardCodec, StdRng, NoCustomBroadcast>;

/// foca with its timers and the host table built from its notifications.
pub struct Swim {
    foca: FocaT,
    rt: AccumulatingRuntime<Ident>,
    /// (due ms, sequence) → timer.
    timers: BTreeMap<(u64, u64), Timer<Ident>>,
    timer_seq: u64,
    /// Live hosts by id, with their current identity.
    live: BTreeMap<HostId, Ident>,
    events: Vec<SwimEvent>,
}

impl Swim {
    pub fn new(me: Ident, cfg: FocaConfig, seed: u64) -> Swim {
        Swim {
            foca: Foca::new(me, cfg, StdRng::seed_from_u64(seed), PostcardCodec),
            rt: AccumulatingRuntime::new(),
            timers: BTreeMap::new(),
            timer_seq: 0,
            live: BTreeMap::new(),
            events: Vec::new(),
        }
    }

    pub fn me(&self) -> &Ident {
        self.foca.identity()
    }

    /// Live hosts other than this one.
    pub fn live(&self) -> impl Iterator<Item = &Ident> {
        self.live.values()
    }

    pub fn addr_of(&self, id: HostId) -> Option<SocketAddr> {
        self.live.get(&id).map(|i| i.mgt)
    }

    /// Sends an announce (a join request at the SWIM level) to whoever listens at `mgt`.
    pub fn announce(&mut self, mgt: SocketAddr, now_ms: u64) {
        if let Err(e) = self.foca.announce(Ident::placeholder(mgt), &mut self.rt) {
            tracing::debug!("swim: announce to {mgt} failed: {e}");
        }
        self.drain(now_ms);
    }

    /// A datagram arrived. Junk from the network is expected on a UDP port: logged at debug.
    pub fn on_datagram(&mut self, data: &[u8], from: SocketAddr, now_ms: u64) {
        if let Err(e) = self.foca.handle_data(data, &mut self.rt) {
            tracing::debug!("swim: datagram from {from} refused: {e}");
        }
        self.drain(now_ms);
    }

    /// When the next timer is due (the control loop sleeps until then at most).
    /// When the next timer must run. Timers that only keep a rhythm (start the next probe,
    /// gossip when there is nothing to spread, announce, forget a dead member) may run up to
    /// `slack_ms` late, so that they ride on a wake-up the host has anyway (the Raft
    /// heartbeat) instead of costing one each: on an idle 3-host store those are about 15 of
    /// a host's wake-ups a second. The timers of a probe in progress (the indirect round,
    /// suspect to down) run on time, so detection stays within its budget (one probe start
    /// later by at most `slack_ms`).
    pub fn next_timer_ms(&self, slack_ms: u64) -> Option<u64> {
        let idle = self.foca.updates_backlog() == 0;
        self.timers
            .iter()
            .map(|((due, _), t)| {
                let lazy = match t {
                    foca::Timer::PeriodicGossip(_) => idle,
                    foca::Timer::ProbeRandomMember(_)
                    | foca::Timer::PeriodicAnnounce(_)
                    | foca::Timer::PeriodicAnnounceDown(_)
                    | foca::Timer::RemoveDown(_) => true,
                    _ => false,
                };
                if lazy { due + slack_ms } else { *due }
            })
            .min()
    }

    /// Runs the timers due at `now_ms`.
    pub fn on_time(&mut self, now_ms: u64) {
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now_ms {
                break;
            }
            let t = entry.remove();
            if let Err(e) = self.foca.handle_timer(t, &mut self.rt) {
                tracing::debug!("swim: timer failed: {e}");
            }
            self.drain(now_ms);
        }
    }

    /// Publishes new flags under a new generation.
    pub fn set_flags(&mut self, flags: u8, now_ms: u64) {
        let me = *self.foca.identity();
        if me.flags == flags {
            return;
        }
        let next = Ident {
            flags,
            generation: me.generation.wrapping_add(1),
            ..me
        };
        let peers: Vec<SocketAddr> = self.live.values().map(|i| i.mgt).collect();
        if let Err(e) = self.foca.change_identity(next, &mut self.rt) {
            tracing::warn!("swim: cannot publish flags {flags:#x}: {e}");
        }
        // foca leaves a member that changed identity disconnected (no probes, no timers)
        // until a message addressed to its new identity arrives. Its own news goes to the
        // identities it knew; a peer that changed identity at the same moment drops it
        // (wrong address-holder), and if the one peer that did learn the new identity dies
        // first, this host never probes again and never sees it die. CI saw exactly that
        // twice: after `kill -9` of the leader, neither survivor declared it down (both had
        // just set FLAG_IN_STORE). An announce is accepted by whoever holds the address now,
        // and its answer reconnects this host at once.
        for addr in peers {
            if let Err(e) = self.foca.announce(Ident::placeholder(addr), &mut self.rt) {
                tracing::debug!("swim: announce to {addr} after a flag change: {e}");
            }
        }
        self.drain(now_ms);
    }

    /// Leaves the SWIM group politely (peers see us down at once instead of after a timeout).
    pub fn leave(&mut self, now_ms: u64) {
        if let Err(e) = self.foca.leave_cluster(&mut self.rt) {
            tracing::debug!("swim: leave failed: {e}");
        }
        self.drain(now_ms);
    }

    /// Datagrams to send: `(to, bytes)`.
    pub fn take_sends(&mut self) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some((to, data)) = self.rt.to_send() {
            out.push((to.mgt, data.to_vec()));
        }
        out
    }

    pub fn take_events(&mut self) -> Vec<SwimEvent> {
        std::mem::take(&mut self.events)
    }

    fn drain(&mut self, now_ms: u64) {
        while let Some((after, t)) = self.rt.to_schedule() {
            if self.timers.len() >= TIMERS_MAX {
                tracing::error!("swim: {TIMERS_MAX} timers pending; dropping one (a bug)");
                continue;
            }
            self.timer_seq += 1;
            let due = now_ms + after.as_millis() as u64;
            self.timers.insert((due, self.timer_seq), t);
        }
        while let Some(n) = self.rt.to_notify() {
            match n {
                OwnedNotification::MemberUp(m) => self.up(m),
                OwnedNotification::MemberDown(m) => self.down(m.host()),
                OwnedNotification::Rename(old, new) => {
                    if old.id != new.id {
                        // A restart on the same address: the old incarnation is gone.
                        self.down(old.host());
                    }
                    if self.live.contains_key(&old.host()) || old.id != new.id {
                        self.up(new);
                    }
                }
                _ => {}
            }
        }
    }

    fn up(&mut self, m: Ident) {
        if m.id == 0 || m.id == self.foca.identity().id {
            return;
        }
        let changed = self.live.insert(m.host(), m) != Some(m);
        if changed {
            self.events.push(SwimEvent::Up(m));
        }
    }

    fn down(&mut self, h: HostId) {
        if self.live.remove(&h).is_some() {
            self.events.push(SwimEvent::Down(h));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ident(id: u64, flags: u8) -> Ident {
        Ident {
            id,
            mgt: format!("127.0.0.{}:2720", id % 250 + 1).parse().unwrap(),
            started_ms: 1,
            generation: 0,
            flags,
        }
    }

    #[test]
    fn hosts_lists_parse_and_name_the_bad_entry() {
        let spec = |h: &str, port| HostSpec {
            host: h.into(),
            port,
        };
        assert_eq!(parse_hosts("", 2720).unwrap(), Vec::<HostSpec>::new());
        assert_eq!(
            parse_hosts("127.0.0.2:30, 127.0.0.3 127.0.0.2:30", 2720).unwrap(),
            vec![spec("127.0.0.2", 30), spec("127.0.0.3", 2720)]
        );
        // DNS names, as compose and Kubernetes give them.
        assert_eq!(
            parse_hosts("host2:2720,host3,db-1.svc.local", 2720).unwrap(),
            vec![
                spec("host2", 2720),
                spec("host3", 2720),
                spec("db-1.svc.local", 2720)
            ]
        );
        assert_eq!(
            spec("127.0.0.9", 5).resolve(),
            vec!["127.0.0.9:5".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(
            spec("localhost", 7).resolve().first(),
            Some(&"127.0.0.1:7".parse::<SocketAddr>().unwrap())
        );
        for bad in ["bo gus!:1", "host:x", "999.1.1.1", "a..b", ":5"] {
            let e = parse_hosts(bad, 2720).unwrap_err();
            assert!(
                e.contains("is not a host") || e.contains("port 0"),
                "{bad}: {e}"
            );
        }
        let e = parse_hosts("127.0.0.2:30,bog/us:1", 2720).unwrap_err();
        assert!(e.contains("'bog/us:1'"), "{e}");
        let e = parse_hosts("10.0.0.1:0", 2720).unwrap_err();
        assert!(e.contains("port 0"), "{e}");
        let many: Vec<String> = (0..300)
            .map(|i| format!("10.0.{}.{}:1", i / 200, i % 200))
            .collect();
        assert!(
            parse_hosts(&many.join(","), 1)
                .unwrap_err()
                .contains("at most")
        );
    }

    #[test]
    fn bootstrap_rule() {
        let want = FLAG_WANTS_STORE;
        let me = ident(5, want);
        // Nothing to discover: at once.
        assert_eq!(decide_start(&me, &[], 0, 1000, false), Start::Bootstrap);
        // Looking: wait out the discovery time, then the lowest id bootstraps.
        assert_eq!(decide_start(&me, &[], 10, 1000, true), Start::Wait);
        assert_eq!(decide_start(&me, &[], 1000, 1000, true), Start::Bootstrap);
        let higher = [ident(9, want), ident(7, want)];
        assert_eq!(
            decide_start(&me, &higher, 1000, 1000, true),
            Start::Bootstrap
        );
        let lower = [ident(9, want), ident(3, want)];
        assert_eq!(decide_start(&me, &lower, 5000, 1000, true), Start::Wait);
        // A lower host that does not want a store, or a witness, does not hold us back.
        let idle = [ident(3, 0), ident(2, want | FLAG_WITNESS)];
        assert_eq!(decide_start(&me, &idle, 1000, 1000, true), Start::Bootstrap);
        // Any host in a store: join, even before the wait ends, even if we are lowest.
        let store = [ident(9, want | FLAG_IN_STORE)];
        assert_eq!(decide_start(&me, &store, 0, 1000, true), Start::Join);
        // A witness never bootstraps, even alone.
        let w = ident(1, want | FLAG_WITNESS);
        assert_eq!(decide_start(&w, &[], 5000, 1000, false), Start::Wait);
        assert_eq!(decide_start(&w, &store, 0, 1000, true), Start::Join);
    }

    #[test]
    fn detection_fits_the_budget() {
        for ms in [300, 1500, 60_000] {
            let c = foca_config(ms, 3);
            assert!(c.probe_rtt < c.probe_period);
            assert!(2 * c.probe_period + c.suspect_to_down_after < Duration::from_millis(ms));
        }
    }

    /// Three in-memory SWIM members (ids 1-3, 127.0.0.2-4) that find each other through the
    /// first, exchanging datagrams every 5 ms of simulated time until 10 s. `at(now, swims,
    /// alive)` runs before each step (to kill a member or change its flags); returns every
    /// member's events with the time each was reported.
    fn run_three(
        budget_ms: u64,
        mut at: impl FnMut(u64, &mut [Swim], &mut [bool; 3]),
    ) -> Vec<Vec<(u64, SwimEvent)>> {
        let ids: Vec<Ident> = (1..=3).map(|i| ident(i, FLAG_WANTS_STORE)).collect();
        let mut swims: Vec<Swim> = ids
            .iter()
            .map(|i| Swim::new(*i, foca_config(budget_ms, 3), i.id))
            .collect();
        let mut alive = [true; 3];
        let mut now = 0u64;
        swims[1].announce(ids[0].mgt, now);
        swims[2].announce(ids[0].mgt, now);
        let mut events = vec![Vec::new(); 3];
        while now < 10_000 {
            now += 5;
            at(now, &mut swims, &mut alive);
            for i in 0..3 {
                if !alive[i] {
                    continue;
                }
                swims[i].on_time(now);
                for (to, data) in swims[i].take_sends() {
                    if let Some(j) = ids.iter().position(|x| x.mgt == to)
                        && alive[j]
                    {
                        let from = ids[i].mgt;
                        swims[j].on_datagram(&data, from, now);
                    }
                }
                events[i].extend(swims[i].take_events().into_iter().map(|e| (now, e)));
            }
        }
        events
    }

    /// When `host` was first reported down in `events`, counted from `since`.
    fn down_after(events: &[(u64, SwimEvent)], host: u64, since: u64) -> Option<u64> {
        events
            .iter()
            .find(|(t, e)| *t > since && *e == SwimEvent::Down(HostId(host)))
            .map(|(t, _)| t - since)
    }

    /// They find each other through one seed, and a silent one is reported down within the
    /// detection budget.
    #[test]
    fn members_find_each_other_and_a_silent_one_goes_down() {
        let budget_ms = 1500;
        let events = run_three(budget_ms, |now, swims, alive| {
            if now == 3000 {
                for s in swims.iter() {
                    assert_eq!(s.live().count(), 2, "everyone sees the other two");
                }
                alive[2] = false;
            }
        });
        let took = down_after(&events[0], 3, 3000).expect("host 3 reported down");
        // Not a timing assertion on wall time: this is simulated time, deterministic.
        assert!(took <= budget_ms, "declared down after {took} ms");
    }

    /// CI (tests/control.rs, twice): two hosts set a flag at the same moment (both had just
    /// joined the store) and the third, the only one that heard both new identities, was
    /// killed right after. Their news to each other went to identities they no longer had
    /// and was dropped, and foca keeps a member that changed identity disconnected (no
    /// probes) until something reaches its new one: neither ever declared the dead host
    /// down. Each now announces itself to the addresses it knew after a change.
    #[test]
    fn hosts_that_change_flags_together_still_see_a_death() {
        let budget_ms = 1500;
        let events = run_three(budget_ms, |now, swims, alive| {
            if now == 3000 {
                for s in swims.iter() {
                    assert_eq!(s.live().count(), 2, "everyone sees the other two");
                }
                swims[1].set_flags(FLAG_WANTS_STORE | FLAG_IN_STORE, now);
                swims[2].set_flags(FLAG_WANTS_STORE | FLAG_IN_STORE, now);
                alive[0] = false;
            }
        });
        // A change of identity restarts foca's probe cycle (first probe a period after the
        // reconnection, round-robin over the members), so a death at that very moment is
        // seen later than the budget, but it is seen.
        for i in [1, 2] {
            let took = down_after(&events[i], 1, 3000)
                .unwrap_or_else(|| panic!("host {} never saw host 1 die", i + 1));
            assert!(took <= 2 * budget_ms, "host {} took {took} ms", i + 1);
        }
    }
}
