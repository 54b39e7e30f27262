//! Routing of a keyed request: served here, relayed to the primary, held until this host's
//! lease covers the partition, or refused.

use stategrid_proto::ErrorCode;

use super::DataPlane;
use crate::cluster::map::HostId;

/// Where a keyed request goes, decided on the shard (or simulated host) it arrived at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// This host is the partition's primary and its lease covers the partition.
    Here,
    /// Another host is the primary: relay the request there (client requests only).
    Remote(HostId),
    /// This host is the primary in its map but its lease does not cover the partition yet
    /// (it just became primary): hold the request until the lease arrives.
    Wait,
    /// Refused with this code and detail (the map's epoch, for `NotPrimary`).
    Refuse(ErrorCode, u64),
}

impl<T> DataPlane<T> {
    /// Where a keyed request for partition `p` goes. `internal`: it came from another host
    /// (relayed once already, so never relayed again: two hosts with different maps cannot
    /// bounce it). `can_hold`: the caller has room to hold one more request.
    ///
    /// Cost: one owners lookup and the lease compare; called for every keyed request.
    #[inline]
    pub fn route(&self, p: usize, internal: bool, can_hold: bool) -> Route {
        let Some(view) = &self.view else {
            return Route::Refuse(ErrorCode::NotJoined, 0);
        };
        match view.owners[p].primary() {
            Some(h) if h == view.me => {
                if self.serves(p) {
                    Route::Here
                } else if can_hold {
                    Route::Wait
                } else {
                    Route::Refuse(ErrorCode::NotPrimary, view.epoch)
                }
            }
            Some(h) if !internal => Route::Remote(h),
            _ => Route::Refuse(ErrorCode::NotPrimary, view.epoch),
        }
    }
}
