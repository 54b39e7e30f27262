//! CLUSTER commands: the partition map as Redis Cluster clients read it.
//!
//! 16384 slots over 1024 partitions: partition p holds slots 16p..16p+15. Adjacent partitions
//! with the same primary (and replicas) are merged into one slot range. A node's id is its
//! stategrid host id as 40 hex digits (stable for the host's life). A connection that asks for
//! the slot map (SLOTS, SHARDS, NODES) or sends READONLY is a cluster client from then on: a
//! key served by another host answers `-MOVED slot ip:port` instead of being relayed.

use super::commands::{Args, Host, Session, Topology};
use super::reply;
use stategrid_proto::hash::redis_slot;

pub fn node_id(id: u64) -> String {
    format!("{id:040x}")
}

fn eq(a: &[u8], b: &str) -> bool {
    a.eq_ignore_ascii_case(b.as_bytes())
}

pub fn ok(s: &mut Session, _a: &Args<'_>, h: &mut dyn Host) {
    let _ = s;
    h.reply(b"+OK\r\n");
}

pub fn readonly(s: &mut Session, _a: &Args<'_>, h: &mut dyn Host) {
    s.cluster = true;
    h.reply(b"+OK\r\n");
}

/// The replicas of a range that a Redis Cluster client may be shown: only hosts that are
/// primary of no range. A stategrid host is primary of some partitions and replica of others;
/// a Redis node is one or the other, and clients keep the first role they see for a node
/// (redis-py 8: a host first listed as a replica is then missing from `get_primaries()`, so
/// SCAN/DBSIZE over "all primaries" skip it). Replicas that are also primaries are left out.
fn shown_replicas(t: &Topology, replicas: &[usize]) -> Vec<usize> {
    replicas
        .iter()
        .copied()
        .filter(|&n| !t.ranges.iter().any(|r| r.primary == n))
        .collect()
}

fn slots(o: &mut Vec<u8>, t: &Topology) {
    reply::array(o, t.ranges.len());
    for r in &t.ranges {
        let replicas = shown_replicas(t, &r.replicas);
        reply::array(o, 3 + replicas.len());
        reply::int(o, r.start as i64);
        reply::int(o, r.end as i64);
        for &n in std::iter::once(&r.primary).chain(&replicas) {
            let node = &t.nodes[n];
            reply::array(o, 3);
            reply::bulk(o, node.ip.as_bytes());
            reply::int(o, node.port as i64);
            reply::bulk(o, node_id(node.id).as_bytes());
        }
    }
}

fn nodes(t: &Topology) -> String {
    let mut s = String::new();
    for (i, n) in t.nodes.iter().enumerate() {
        let primary_of: Vec<String> = t
            .ranges
            .iter()
            .filter(|r| r.primary == i)
            .map(|r| {
                if r.start == r.end {
                    r.start.to_string()
                } else {
                    format!("{}-{}", r.start, r.end)
                }
            })
            .collect();
        let myself = if n.id == t.me { "myself," } else { "" };
        // A host that is primary of nothing shows as a replica of the first primary it copies.
        let master_of = t
            .ranges
            .iter()
            .find(|r| r.replicas.contains(&i))
            .map(|r| node_id(t.nodes[r.primary].id));
        let (role, master) = match (primary_of.is_empty(), master_of) {
            (true, Some(m)) => ("slave", m),
            _ => ("master", "-".to_string()),
        };
        s.push_str(&format!(
            "{} {}:{}@{} {myself}{role} {master} 0 0 {} connected",
            node_id(n.id),
            n.ip,
            n.port,
            n.port,
            t.epoch
        ));
        for r in primary_of {
            s.push(' ');
            s.push_str(&r);
        }
        s.push('\n');
    }
    s
}

fn shards(o: &mut Vec<u8>, t: &Topology, resp3: bool) {
    // One shard per primary: its slot ranges, then the primary and its replicas.
    let primaries: Vec<usize> = {
        let mut p: Vec<usize> = t.ranges.iter().map(|r| r.primary).collect();
        p.sort_unstable();
        p.dedup();
        p
    };
    reply::array(o, primaries.len());
    for p in primaries {
        let ranges: Vec<_> = t.ranges.iter().filter(|r| r.primary == p).collect();
        let mut replicas: Vec<usize> = ranges
            .iter()
            .flat_map(|r| shown_replicas(t, &r.replicas))
            .collect();
        replicas.sort_unstable();
        replicas.dedup();
        reply::map(o, 2, resp3);
        reply::bulk(o, b"slots");
        reply::array(o, ranges.len() * 2);
        for r in &ranges {
            reply::int(o, r.start as i64);
            reply::int(o, r.end as i64);
        }
        reply::bulk(o, b"nodes");
        reply::array(o, 1 + replicas.len());
        for (i, &n) in std::iter::once(&p).chain(&replicas).enumerate() {
            let node = &t.nodes[n];
            reply::map(o, 7, resp3);
            reply::bulk(o, b"id");
            reply::bulk(o, node_id(node.id).as_bytes());
            reply::bulk(o, b"port");
            reply::int(o, node.port as i64);
            reply::bulk(o, b"ip");
            reply::bulk(o, node.ip.as_bytes());
            reply::bulk(o, b"endpoint");
            reply::bulk(o, node.ip.as_bytes());
            reply::bulk(o, b"role");
            reply::bulk(o, if i == 0 { b"master" } else { b"replica" });
            reply::bulk(o, b"replication-offset");
            reply::int(o, 0);
            reply::bulk(o, b"health");
            reply::bulk(o, b"online");
        }
    }
}

pub fn cluster(s: &mut Session, a: &Args<'_>, h: &mut dyn Host) {
    let sub = a.get(1);
    let resp3 = s.resp3;
    let mut o = Vec::new();
    if eq(sub, "slots") {
        s.cluster = true;
        slots(&mut o, &h.topology());
    } else if eq(sub, "shards") {
        s.cluster = true;
        shards(&mut o, &h.topology(), resp3);
    } else if eq(sub, "nodes") {
        s.cluster = true;
        reply::verbatim(&mut o, &nodes(&h.topology()), resp3);
    } else if eq(sub, "myid") {
        reply::bulk(&mut o, node_id(h.topology().me).as_bytes());
    } else if eq(sub, "keyslot") && a.len() == 3 {
        reply::int(&mut o, redis_slot(a.get(2)) as i64);
    } else if eq(sub, "info") {
        let t = h.topology();
        let assigned: u32 = t.ranges.iter().map(|r| (r.end - r.start) as u32 + 1).sum();
        let state = if assigned == 16384 { "ok" } else { "fail" };
        let text = format!(
            "cluster_enabled:1\r\ncluster_state:{state}\r\ncluster_slots_assigned:{assigned}\r\ncluster_slots_ok:{assigned}\r\ncluster_slots_pfail:0\r\ncluster_slots_fail:0\r\ncluster_known_nodes:{}\r\ncluster_size:{}\r\ncluster_current_epoch:{}\r\ncluster_my_epoch:{}\r\n",
            t.nodes.len(),
            t.nodes.len(),
            t.epoch,
            t.epoch
        );
        reply::verbatim(&mut o, &text, resp3);
    } else {
        reply::error(
            &mut o,
            &format!(
                "ERR unknown subcommand or wrong number of arguments for '{}'. Try CLUSTER HELP.",
                String::from_utf8_lossy(sub)
            ),
        );
    }
    h.reply(&o);
}

/// Merges per-partition owners (primary index, replica indexes) into slot ranges.
pub fn ranges_of(owners: &[(Option<usize>, Vec<usize>)]) -> Vec<super::commands::SlotRange> {
    let per = stategrid_proto::hash::SLOTS_PER_PARTITION as u16;
    let mut out: Vec<super::commands::SlotRange> = Vec::new();
    for (p, (primary, replicas)) in owners.iter().enumerate() {
        let Some(primary) = *primary else { continue };
        let start = p as u16 * per;
        match out.last_mut() {
            Some(r) if r.end + 1 == start && r.primary == primary && r.replicas == *replicas => {
                r.end = start + per - 1
            }
            _ => out.push(super::commands::SlotRange {
                start,
                end: start + per - 1,
                primary,
                replicas: replicas.clone(),
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adjacent_partitions_merge() {
        let mut owners = vec![(Some(0), vec![1]); 1024];
        for o in owners.iter_mut().skip(512) {
            *o = (Some(1), vec![0]);
        }
        owners[1023] = (None, vec![]);
        let r = ranges_of(&owners);
        assert_eq!(r.len(), 2);
        assert_eq!((r[0].start, r[0].end, r[0].primary), (0, 8191, 0));
        assert_eq!((r[1].start, r[1].end, r[1].primary), (8192, 16367, 1));
    }
}
