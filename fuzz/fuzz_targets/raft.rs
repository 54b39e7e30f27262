//! Raft and control messages as a node applies them (`src/cluster/node.rs`): the input is a
//! run of management-wire frames (`wire::decode_frame`, as the control plane reads them); each
//! decoded message goes to `ClusterNode::handle` as `Input::Peer`, with a tick between. The
//! first byte picks the node: a bootstrapped leader (id 1) or a host still joining (id 2,
//! which takes a forged snapshot as its whole state).
//!
//! Holds: no panic (a forged entry or snapshot is refused, never fatal).
#![no_main]

use libfuzzer_sys::fuzz_target;
use stategrid::cluster::map::HostId;
use stategrid::cluster::node::{ClusterNode, Input, NodeConfig};
use stategrid::cluster::wire::decode_frame;

fn config(id: u64) -> NodeConfig {
    NodeConfig {
        id: HostId(id),
        addr: format!("127.0.0.{id}:2720/2721/2722"),
        weight: 100,
        witness: false,
        max_replicas: 1,
        tick_ms: 100,
        election_ticks: 10,
        heartbeat_ticks: 2,
        lease_ms: 300,
        lease_margin_ms: 20,
        lease_renew_ms: 60,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, mut rest)) = data.split_first() else {
        return;
    };
    let mut node = if pick & 1 == 0 {
        ClusterNode::bootstrap(config(1), 0)
    } else {
        ClusterNode::joining(config(2))
    };
    let mut now_ms = 0;
    // A handful of frames is enough to reach any state a forged message can cause; the bound
    // keeps one input's cost small.
    for _ in 0..8 {
        let Ok(Some((from, msg, used))) = decode_frame(rest, 1 << 20) else {
            break;
        };
        rest = &rest[used..];
        let _ = node.handle(now_ms, Input::Peer { from, msg });
        now_ms += 100;
        let _ = node.handle(now_ms, Input::Tick);
    }
});
