//! The one lease rule: when a host may act as primary of a partition. Production (the shards,
//! through [`super::DataPlane::serves`]), [`crate::cluster::ClusterNode::is_primary`] and the
//! simulation's checker all call [`covers`], so the simulation checks the rule the server
//! serves under.

use crate::cluster::map::{HostId, Owners, PARTITIONS};

/// `primary_since` of a partition this host is not primary of.
pub const NOT_PRIMARY: u64 = u64::MAX;

/// Does the lease `(lease_epoch, until_ms)` let a host whose installed map has `epoch` act as
/// primary of a partition it has been primary of without a break since `primary_since`, at
/// `now_ms` of its own clock?
///
/// A lease granted for epoch `L` covers every partition this host has been primary of without
/// a break since `L` or earlier, while the installed map is at least `L`. Why that is safe: no
/// other host was primary of such a partition in any epoch from `L` to ours; a host primary of
/// it before `L` had, by the time `L` was granted, installed `L` or lost its lease (the leader
/// grants `L` only then); and no epoch newer than ours is granted to anyone until this host
/// reports it. So a map change that leaves a partition where it was does not pause it; only
/// partitions that changed primary wait for the new epoch's lease.
///
/// Cost: three compares; called for every keyed request.
#[inline]
pub fn covers(lease: (u64, u64), epoch: u64, primary_since: u64, now_ms: u64) -> bool {
    let (lease_epoch, until_ms) = lease;
    lease_epoch <= epoch && lease_epoch >= primary_since && now_ms < until_ms
}

/// Per partition, the first epoch of `me`'s current unbroken run as primary ([`NOT_PRIMARY`]
/// where it is not primary), for the map `(epoch, owners)` installed after `prev`
/// (`(epoch, primary_since)` of the map installed before it, if any). A run continues only
/// from the epoch just before: a skipped epoch (as after a Raft snapshot) may have moved the
/// partition away and back.
pub fn primary_since(
    prev: Option<(u64, &[u64])>,
    epoch: u64,
    owners: &[Owners],
    me: HostId,
) -> Vec<u64> {
    assert_eq!(owners.len(), PARTITIONS, "a map covers every partition");
    let prev = prev.filter(|(e, since)| e + 1 == epoch && since.len() == PARTITIONS);
    (0..PARTITIONS)
        .map(|p| {
            if owners[p].primary() != Some(me) {
                NOT_PRIMARY
            } else {
                match prev.map(|(_, since)| since[p]) {
                    Some(since) if since != NOT_PRIMARY => since,
                    _ => epoch,
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_covers_runs_that_started_no_later_than_its_epoch() {
        // Installed epoch 7, lease for 5 until 100.
        assert!(covers((5, 100), 7, 5, 99));
        assert!(covers((5, 100), 7, 3, 99));
        // A run that started after the lease's epoch waits for a newer lease.
        assert!(!covers((5, 100), 7, 6, 99));
        // A lease for an epoch newer than the installed map covers nothing.
        assert!(!covers((8, 100), 7, 3, 99));
        // Ended.
        assert!(!covers((5, 100), 7, 5, 100));
        // Not primary.
        assert!(!covers((5, 100), 7, NOT_PRIMARY, 99));
    }
}
