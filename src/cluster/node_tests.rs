//! Small deterministic runs of a few [`ClusterNode`]s with instant, lossless delivery: the
//! behaviour the real-process tests (`tests/control.rs`) found missing, pinned down here.
//! (`tests/cluster_sim.rs` covers faults, loss and invariants.)

use std::collections::{BTreeSet, VecDeque};

use super::*;

const TICK_MS: u64 = 10;

struct Mini {
    nodes: Vec<ClusterNode>,
    now_ms: u64,
    queue: VecDeque<(HostId, HostId, PeerMsg)>,
    /// Crashed nodes: not ticked, their messages (both ways) lost.
    dead: Vec<bool>,
    /// One-way cuts: messages from the first host to the second are lost.
    cut: Vec<(HostId, HostId)>,
    /// Every message sent, as `(from, to, msg)`, for tests that count them.
    sent: Vec<(HostId, HostId, PeerMsg)>,
}

fn config(i: usize, max_replicas: u8) -> NodeConfig {
    NodeConfig {
        id: HostId(100 + i as u64),
        addr: format!("10.0.0.{i}:2720/2721/2722"),
        weight: 100,
        witness: false,
        max_replicas,
        tick_ms: TICK_MS,
        election_ticks: 10 + i,
        heartbeat_ticks: 2,
        lease_ms: 300,
        lease_margin_ms: 20,
        lease_renew_ms: 60,
    }
}

impl Mini {
    fn new(hosts: usize, max_replicas: u8) -> Mini {
        let mut nodes = vec![ClusterNode::bootstrap(config(0, max_replicas), 0)];
        for i in 1..hosts {
            nodes.push(ClusterNode::joining(config(i, max_replicas)));
        }
        let mut m = Mini {
            nodes,
            now_ms: 0,
            queue: VecDeque::new(),
            dead: vec![false; hosts],
            cut: Vec::new(),
            sent: Vec::new(),
        };
        let ids: Vec<HostId> = m.nodes.iter().map(|n| n.id()).collect();
        for i in 0..hosts {
            for &h in &ids {
                if h != ids[i] {
                    m.input(
                        i,
                        Input::Member {
                            host: h,
                            event: MemberEvent::Up,
                        },
                    );
                }
            }
            if i > 0 {
                m.input(i, Input::Join);
            }
        }
        m
    }

    fn input(&mut self, i: usize, input: Input) {
        let me = self.nodes[i].id();
        let outs = self.nodes[i].handle(self.now_ms, input);
        for o in outs {
            match o {
                Output::Send { to, msg } => {
                    self.sent.push((me, to, msg.clone()));
                    self.queue.push_back((to, me, msg))
                }
                Output::Migrate { partition, .. } => {
                    // The data plane finishes at once: no objects to copy.
                    self.input(i, Input::MigrationDone { partition });
                }
                Output::Installed(_) | Output::Expelled => {}
            }
        }
    }

    fn step(&mut self) {
        self.now_ms += TICK_MS;
        for i in 0..self.nodes.len() {
            if !self.dead[i] {
                self.input(i, Input::Tick);
            }
        }
        while let Some((to, from, msg)) = self.queue.pop_front() {
            let sender_dead = self
                .nodes
                .iter()
                .position(|n| n.id() == from)
                .is_some_and(|i| self.dead[i]);
            if let Some(i) = self.nodes.iter().position(|n| n.id() == to)
                && !self.dead[i]
                && !sender_dead
                && !self.cut.contains(&(from, to))
            {
                self.input(i, Input::Peer { from, msg });
            }
        }
    }

    /// Steps until `done` holds (true) or `ms_max` of simulated time passed (false).
    fn run_until(&mut self, ms_max: u64, done: impl Fn(&Mini) -> bool) -> bool {
        let end = self.now_ms + ms_max;
        while self.now_ms < end {
            self.step();
            if done(self) {
                return true;
            }
        }
        false
    }

    fn leader(&self) -> usize {
        self.nodes
            .iter()
            .enumerate()
            .position(|(i, n)| n.is_leader() && !self.dead[i])
            .expect("a leader")
    }

    /// Every host active, every node on the same map, nothing pending.
    fn settled(&self) -> bool {
        let m = self.nodes[0].map();
        self.nodes.iter().all(|n| {
            n.map().epoch == m.epoch
                && n.state().hosts.iter().all(|h| h.state == HostState::Active)
                && n.state().hosts.len() == self.nodes.len()
        }) && m.owners.iter().all(|o| o.pending().count() == 0)
            && m.epoch > 0
    }
}

#[test]
fn a_follower_that_leaves_ends_up_owning_nothing() {
    let mut m = Mini::new(3, 1);
    assert!(m.run_until(20_000, Mini::settled), "the store settles");
    let leader = m.leader();
    let f = (leader + 1) % 3;
    let fid = m.nodes[f].id();
    assert!(m.nodes[f].map().primaries_of(fid) > 0);
    m.input(f, Input::Leave);
    let gone = m.run_until(20_000, |m| {
        let n = &m.nodes[m.leader()];
        n.state().host(fid).map(|h| h.state) == Some(HostState::Leaving)
            && n.map().owners.iter().all(|o| o.role_of(fid).is_none())
    });
    assert!(gone, "{}", m.nodes[m.leader()].debug_status());
}

/// Issue 11: when the leader died, every host's lease ran out and every write in the store
/// paused until the new leader had waited out the old one's leases. Now the new leader sees
/// that the epoch's leases were granted before and renews them at once: the surviving hosts
/// never lose their lease, so only the dead host's partitions pause.
#[test]
fn a_leader_death_lapses_no_surviving_lease() {
    let mut m = Mini::new(3, 1);
    assert!(m.run_until(20_000, Mini::settled), "the store settles");
    // Every host holds a lease before the crash.
    assert!(m.run_until(2_000, |m| m.nodes.iter().all(|n| n.holds_lease(m.now_ms))));
    let old = m.leader();
    m.dead[old] = true;
    let survivors: Vec<usize> = (0..3).filter(|&i| i != old).collect();
    let mut lapses = Vec::new();
    let end = m.now_ms + 3_000;
    while m.now_ms < end {
        m.step();
        for &i in &survivors {
            if !m.nodes[i].holds_lease(m.now_ms) {
                lapses.push((i, m.now_ms));
            }
        }
    }
    let new = m.leader();
    assert_ne!(new, old, "a new leader was elected");
    assert!(lapses.is_empty(), "leases lapsed at {lapses:?}");
}

/// Idle CPU (issue 11): an idle store's messages were mostly heartbeats and lease renewals,
/// each renewal its own ReadIndex round (a heartbeat to every follower and their answers).
/// Now routine renewals wait for the next heartbeat and share one round sent with it: the
/// rounds' contexts carry several requests, no round starts between heartbeats, and no lease
/// lapses. (Before: one request per context, and a round whenever a request arrived.)
#[test]
fn renewals_share_one_read_index_round_per_heartbeat() {
    let mut m = Mini::new(3, 1);
    assert!(m.run_until(20_000, Mini::settled), "the store settles");
    assert!(m.run_until(2_000, |m| m.nodes.iter().all(|n| n.holds_lease(m.now_ms))));
    let leader = m.nodes[m.leader()].id();
    let (mut rounds, mut asks, mut off_beat, mut lapses) = (BTreeSet::new(), 0, 0, 0);
    let end = m.now_ms + 3_000;
    while m.now_ms < end {
        m.sent.clear();
        m.step();
        // The leader beat on this step's tick (its counter restarts at every beat).
        let li = m.nodes.iter().position(|n| n.id() == leader).unwrap();
        let beat = m.nodes[li].raw.raft.heartbeat_elapsed() == 0;
        for (from, _, msg) in &m.sent {
            if let PeerMsg::Raft(r) = msg
                && *from == leader
                && r.get_msg_type() == MessageType::MsgHeartbeat
                && !r.context.is_empty()
                && rounds.insert(r.context.to_vec())
            {
                asks += r.context.len() / LEASE_CTX_BYTES;
                if !beat {
                    off_beat += 1;
                }
            }
        }
        lapses += m.nodes.iter().filter(|n| !n.holds_lease(m.now_ms)).count();
    }
    assert!(
        rounds.len() > 10,
        "leases are renewed: {} rounds",
        rounds.len()
    );
    assert_eq!(off_beat, 0, "rounds started between heartbeats");
    assert!(
        asks as f64 / rounds.len() as f64 > 1.5,
        "{asks} requests in {} rounds",
        rounds.len()
    );
    assert_eq!(lapses, 0, "a lease lapsed");
}

#[test]
fn max_replicas_set_through_the_log_reaches_the_planner() {
    let mut m = Mini::new(3, 1);
    assert!(m.run_until(20_000, Mini::settled), "the store settles");
    let replicas = |m: &Mini, n: usize| {
        m.nodes[m.leader()]
            .map()
            .owners
            .iter()
            .all(|o| o.replicas().count() == n)
    };
    assert!(replicas(&m, 1));
    // An invalid value is stored but ignored by the planner.
    let l = m.leader();
    m.input(
        l,
        Input::SetParam {
            name: "max_replicas".into(),
            value: "9".into(),
        },
    );
    m.run_until(1000, |_| false);
    assert!(replicas(&m, 1));
    let l = m.leader();
    m.input(
        l,
        Input::SetParam {
            name: "max_replicas".into(),
            value: "2".into(),
        },
    );
    let two = m.run_until(20_000, |m| m.settled() && replicas(m, 2));
    assert!(two, "{}", m.nodes[m.leader()].debug_status());
}

/// Found by `fuzz/raft`: an append whose entries do not follow its index made raft-rs panic
/// (`unstable.slice[1, 6] out of bound`) in a joining host. It must be refused instead.
#[test]
fn a_forged_append_with_gapped_entries_is_refused_not_fatal() {
    let crash: &[u8] = &[
        0, 0, 0, 37, 0, 0, 0, 0, 0, 0, 0, 1, 1, 8, 3, 16, 2, 24, 1, 160, 2, 168, 2, 48, 5, 58, 12,
        8, 1, 16, 2, 24, 6, 34, 4, 16, 2, 24, 2, 64, 6,
    ];
    let (from, msg, used) = crate::cluster::wire::decode_frame(crash, 1 << 20)
        .expect("the frame decodes")
        .expect("the frame is complete");
    assert_eq!(used, crash.len());
    let mut n = ClusterNode::joining(config(1, 1));
    let _ = n.handle(0, Input::Peer { from, msg });
    let _ = n.handle(TICK_MS, Input::Tick);
}

/// A heartbeat committing past the log's end made raft-rs panic in `commit_to`.
#[test]
fn a_forged_heartbeat_committing_past_the_log_is_refused() {
    let mut n = ClusterNode::joining(config(1, 1));
    let mut m = Message::default();
    m.set_msg_type(raft::prelude::MessageType::MsgHeartbeat);
    m.from = 100;
    m.to = 101;
    m.term = 5;
    m.commit = 1_000;
    let _ = n.handle(
        0,
        Input::Peer {
            from: HostId(100),
            msg: PeerMsg::Raft(Box::new(m)),
        },
    );
    let _ = n.handle(TICK_MS, Input::Tick);
}

/// Found by `fuzz/raft`: a peer's proposal with no entries made the leader's raft-rs panic
/// ("stepped empty MsgProp").
#[test]
fn a_forged_empty_proposal_is_refused_not_fatal() {
    let mut n = ClusterNode::bootstrap(config(0, 1), 0);
    let mut m = Message::default();
    m.set_msg_type(raft::prelude::MessageType::MsgPropose);
    m.from = 101;
    m.to = 100;
    m.term = 2;
    let _ = n.handle(
        0,
        Input::Peer {
            from: HostId(101),
            msg: PeerMsg::Raft(Box::new(m)),
        },
    );
    let _ = n.handle(TICK_MS, Input::Tick);
}

/// Found by `fuzz/raft`: a snapshot whose metadata says term 0 "matched" a joining host's empty
/// log (raft-rs reads term 0 past the end) and raft-rs panicked committing past its log.
#[test]
fn a_forged_term_zero_snapshot_is_refused_not_fatal() {
    let mut n = ClusterNode::joining(config(1, 1));
    let mut m = Message::default();
    m.set_msg_type(raft::prelude::MessageType::MsgSnapshot);
    m.from = 100;
    m.to = 101;
    m.term = 2;
    m.mut_snapshot().mut_metadata().index = 7;
    m.mut_snapshot().mut_metadata().term = 0;
    let _ = n.handle(
        0,
        Input::Peer {
            from: HostId(100),
            msg: PeerMsg::Raft(Box::new(m)),
        },
    );
    let _ = n.handle(TICK_MS, Input::Tick);
}

/// Found by `fuzz/raft`: a vote request with term 0 made raft-rs panic ("term should be set
/// when sending MsgRequestVoteResponse").
#[test]
fn a_forged_term_zero_vote_request_is_refused_not_fatal() {
    for t in [
        raft::prelude::MessageType::MsgRequestVote,
        raft::prelude::MessageType::MsgRequestPreVote,
    ] {
        let mut n = ClusterNode::joining(config(1, 1));
        let mut m = Message::default();
        m.set_msg_type(t);
        m.from = 100;
        m.to = 101;
        let _ = n.handle(
            0,
            Input::Peer {
                from: HostId(100),
                msg: PeerMsg::Raft(Box::new(m)),
            },
        );
        let _ = n.handle(TICK_MS, Input::Tick);
    }
}

/// A snapshot from the leader (100) to a joining host (101) whose state is `json`.
fn snapshot_to_joiner(json: String) -> ClusterNode {
    let mut n = ClusterNode::joining(config(1, 1));
    let mut m = Message::default();
    m.set_msg_type(raft::prelude::MessageType::MsgSnapshot);
    m.from = 100;
    m.to = 101;
    m.term = 2;
    let snap = m.mut_snapshot();
    snap.set_data(json.into_bytes().into());
    snap.mut_metadata().index = 7;
    snap.mut_metadata().term = 2;
    snap.mut_metadata().mut_conf_state().voters = vec![100];
    snap.mut_metadata().mut_conf_state().learners = vec![101];
    let _ = n.handle(
        0,
        Input::Peer {
            from: HostId(100),
            msg: PeerMsg::Raft(Box::new(m)),
        },
    );
    let _ = n.handle(TICK_MS, Input::Tick);
    n
}

/// A leader's state at epoch 1: host 100 primary of every partition, 101 joining.
fn state_json() -> String {
    let host = |id, state| HostInfo {
        id: HostId(id),
        addr: format!("127.0.0.{id}:2720/2721/2722"),
        weight: 100,
        state,
    };
    let mut st = ClusterState {
        hosts: vec![host(100, HostState::Active), host(101, HostState::Joining)],
        ..Default::default()
    };
    st.map = PartitionMap {
        epoch: 1,
        hosts: vec![host(100, HostState::Active)],
        owners: vec![
            Owners::from_entries(&[(HostId(100), crate::cluster::map::Role::Full)]);
            PARTITIONS
        ],
    };
    serde_json::to_string(&st).expect("state encodes")
}

/// Found by `fuzz/raft` (campaign of 2026-12-02): a snapshot whose partition entry claimed
/// more copies (`len`) than an entry has slots made the joining host index past them
/// ("index out of bounds: the len is 6 but the index is 6" in `Owners::pending`).
#[test]
fn a_forged_snapshot_with_too_many_copies_is_refused_not_fatal() {
    // The well-formed snapshot is installed: the forged ones below reach the same path.
    let n = snapshot_to_joiner(state_json());
    assert_eq!(n.state().map.epoch, 1, "a well-formed snapshot installs");

    let forged = state_json().replacen("\"len\":1", "\"len\":7", 1);
    let n = snapshot_to_joiner(forged);
    assert_eq!(n.state().map.epoch, 0, "the forged snapshot was installed");
}

/// Beside the slot count, a peer's map must keep the invariants code reading it assumes: one
/// entry per partition, hosts sorted and unique, no host twice in a partition, no pending
/// primary.
#[test]
fn forged_maps_in_snapshots_are_refused() {
    let forgeries = [
        // Two copies on one host.
        state_json().replacen("\"ids\":[100,0,", "\"ids\":[100,100,", 1).replacen(
            "\"len\":1",
            "\"len\":2",
            1,
        ),
        // A pending primary.
        state_json().replacen("\"roles\":[\"Full\"", "\"roles\":[\"Pending\"", 1),
        // A partition missing.
        state_json().replacen(
            "{\"ids\":[100,0,0,0,0,0],\"roles\":[\"Full\",\"Full\",\"Full\",\"Full\",\"Full\",\"Full\"],\"len\":1},",
            "",
            1,
        ),
    ];
    for forged in forgeries {
        assert_ne!(forged, state_json(), "the forgery changed nothing");
        let n = snapshot_to_joiner(forged.clone());
        assert_eq!(n.state().map.epoch, 0, "installed: {}", &forged[..200]);
    }
}

/// Found by `fuzz/raft` (campaign of 2026-12-02, after 1.1 million inputs): two appends to a
/// joining host with `log_term` 0 after index 5 of its empty log. raft-rs reads term 0 for an
/// index past the log's end, so the first "matched" and its entry landed after a gap; the
/// second made raft-rs panic slicing its log ("unstable.slice[1, 6] out of bound[1, 1]").
/// The input is the fuzz target's, fed as `fuzz/fuzz_targets/raft.rs` does.
#[test]
fn a_forged_append_with_term_zero_past_the_log_is_refused_not_fatal() {
    const INPUT: &[u8] = b"\x01\x00\x00\x00%\x00\x00\x00\x00\x00\x00\x00\x01\x01\x08\x03\x10\x02\x18\x01 \x020\x030\x05:\x0c\x08\x01\x10\x02\x18\x06\"\x04\x10\x02\x18\x02@\x06\x00\x00\x00%\x00\x00\x00\x00\x00\x00\x00\x01\x01\x08\x03\x10\x02\x18\x01 \x02(\x030\x05:\x0c\x08\x01\x10\x02\x18\x06\"\x04\x10\x02\x18\x02@\x06\x00\x00\x00++\x00\x00,";
    let (n, fed) = feed_fuzz_input(INPUT);
    assert_eq!(fed, 2, "both forged appends decode and reach the node");
    assert_eq!(
        n.raw.raft.raft_log.last_index(),
        0,
        "a forged entry was appended"
    );
}

/// Found by `fuzz/raft` (campaign of 2026-12-02, after 950,000 inputs): a forged
/// `MsgTransferLeader` carrying a term made a joining host's raft-rs panic as it forwarded it
/// ("term should not be set when sending MsgTransferLeader"). Fed as the fuzz target does.
#[test]
fn a_forged_leader_transfer_with_a_term_is_refused_not_fatal() {
    feed_fuzz_input(include_bytes!(
        "../../fuzz/corpus/raft/crash-transfer-leader-with-term"
    ));
}

/// A 10-million-execution campaign of fuzz/raft found this: a proposal that arrives with a
/// term set reached raft-rs's assertion as a follower forwarded it ("term should not be set
/// when sending MsgPropose"). Fed as the fuzz target does.
#[test]
fn a_forged_proposal_with_a_term_is_refused_not_fatal() {
    feed_fuzz_input(include_bytes!(
        "../../fuzz/corpus/raft/crash-propose-with-term"
    ));
}

/// Feeds a fuzz/raft input to a node as the target does: the first byte picks the node
/// (even: a bootstrapped leader, id 1; odd: a joining host, id 2), then up to 8 frames, each
/// with a tick after it. Returns the node and how many frames reached it (at least one).
fn feed_fuzz_input(input: &[u8]) -> (ClusterNode, usize) {
    let (&pick, mut rest) = input.split_first().expect("a non-empty input");
    let node_config = |id: u64| NodeConfig {
        id: HostId(id),
        addr: format!("127.0.0.{id}:2720/2721/2722"),
        ..config(0, 1)
    };
    let mut n = if pick & 1 == 0 {
        ClusterNode::bootstrap(node_config(1), 0)
    } else {
        ClusterNode::joining(node_config(2))
    };
    let (mut now_ms, mut fed) = (0, 0);
    for _ in 0..8 {
        let Ok(Some((from, msg, used))) = super::super::wire::decode_frame(rest, 1 << 20) else {
            break;
        };
        rest = &rest[used..];
        let _ = n.handle(now_ms, Input::Peer { from, msg });
        now_ms += 100;
        let _ = n.handle(now_ms, Input::Tick);
        fed += 1;
    }
    assert!(fed > 0, "no frame of the input decodes");
    (n, fed)
}

/// CI found this in the container partition test: when a partition heals, the cut-off
/// side's SWIM verdicts ("every host I could not reach is down") reach the majority a moment
/// before the hosts refute them. The leader failed a host it had heard from a heartbeat
/// earlier; that host exited, and with the cut-off host already failed the store had lost
/// its Raft quorum for good. A SWIM "down" now fails a host only once the leader has not
/// heard from it for a few heartbeats; a host that then really stops answering is failed.
#[test]
fn a_stale_swim_verdict_does_not_fail_a_host_the_leader_hears() {
    let mut m = Mini::new(3, 1);
    assert!(m.run_until(20_000, Mini::settled), "the store settles");
    let leader = m.leader();
    let f = (leader + 1) % 3;
    let fid = m.nodes[f].id();
    m.input(
        leader,
        Input::Member {
            host: fid,
            event: MemberEvent::Down,
        },
    );
    let state_of = |m: &Mini| m.nodes[m.leader()].state().host(fid).map(|h| h.state);
    // The host keeps answering: it stays in the store (and keeps its vote and its lease).
    let failed = m.run_until(2_000, |m| state_of(m) != Some(HostState::Active));
    assert!(
        !failed,
        "a host the leader hears was failed: {:?}",
        state_of(&m)
    );
    assert!(
        m.nodes[f].holds_lease(m.now_ms),
        "its lease is still renewed"
    );
    // Now it really stops: the same (never refuted) SWIM report fails it.
    m.dead[f] = true;
    let failed = m.run_until(2_000, |m| state_of(m) == Some(HostState::Failed));
    assert!(failed, "a silent host reported down is failed");
}

/// The other side of the rule above: a host the leader cannot reach (a one-way cut) may
/// still send it messages (lease requests, votes), yet must be failed, or its partitions,
/// whose lease it cannot get back, stay unserved until the cut heals. Only an answer to the
/// leader's own Raft messages counts as contact.
#[test]
fn a_host_the_leader_cannot_reach_is_failed_though_it_still_sends() {
    let mut m = Mini::new(3, 1);
    assert!(m.run_until(20_000, Mini::settled), "the store settles");
    let leader = m.leader();
    let (lid, f) = (m.nodes[leader].id(), (leader + 1) % 3);
    let fid = m.nodes[f].id();
    m.cut.push((lid, fid));
    m.input(
        leader,
        Input::Member {
            host: fid,
            event: MemberEvent::Down,
        },
    );
    let failed = m.run_until(3_000, |m| {
        m.nodes[m.leader()].state().host(fid).map(|h| h.state) == Some(HostState::Failed)
    });
    assert!(
        failed,
        "a host cut off from the leader one way is never failed"
    );
}

/// A host that rejoined in-process under a new id still receives, on its address, the Raft
/// messages the leader sends its old id until the old member is removed. Those are dropped:
/// stepped, a heartbeat for the old id would make the new member follow that term as if it
/// were the addressee.
#[test]
fn a_raft_message_for_an_earlier_id_at_this_address_is_dropped() {
    let mut n = ClusterNode::joining(config(1, 1));
    let message_to = |to: u64| {
        let mut m = Message::default();
        m.set_msg_type(raft::prelude::MessageType::MsgHeartbeat);
        m.from = 100;
        m.to = to;
        m.term = 5;
        Input::Peer {
            from: HostId(100),
            msg: PeerMsg::Raft(Box::new(m)),
        }
    };
    let _ = n.handle(0, message_to(999));
    assert_eq!(n.raw.raft.term, 0, "a message for host 999 was stepped");
    // The same message addressed to this host is stepped (the check is on `to` alone).
    let _ = n.handle(0, message_to(101));
    assert_eq!(
        n.raw.raft.term, 5,
        "a message for this host was not stepped"
    );
}
