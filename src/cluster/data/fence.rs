//! The replica side: epoch fencing of changes from other hosts, and applying them to the
//! store.
//!
//! A replica whose map is at least as new as the sender's accepts a change only from the
//! partition's primary in its own map, and only for a partition it has a copy of; a primary
//! takes no change from another host at all (a host that claims a newer map is refused until
//! this host has installed that map too, and then it is not the primary any more). So a
//! deposed primary cannot get a write acknowledged, and no change reaches a primary's copy
//! without being replicated from it. The refusal is `StaleEpoch` with this host's epoch.

use stategrid_proto::{ErrorCode, NsId, ObjectState, PARTITIONS, key_hash, partition_of};

use super::DataPlane;
use crate::cluster::map::HostId;
use crate::store::{KeyRef, Store};

/// A refusal: the error code and its detail.
pub type Refusal = (ErrorCode, u64);

/// One restarted sliding timeout, as `ReplicateTouches` carries it.
pub struct Touch<'a> {
    pub ns: NsId,
    pub key: &'a [u8],
    pub version: u64,
    pub expires_at_ms: u64,
}

impl<T> DataPlane<T> {
    /// May host `from`, whose map has `epoch`, change this host's copy of partition `p`?
    /// The same fence for `Replicate`, `ReplicateTouches` and `NsClearPartition`.
    pub fn fence(&self, epoch: u64, from: HostId, p: u32) -> Result<(), Refusal> {
        let Some(view) = &self.view else {
            return Err((ErrorCode::NotJoined, 0));
        };
        if p >= PARTITIONS {
            return Err((ErrorCode::InvalidRequest, p as u64));
        }
        let o = &view.owners[p as usize];
        let primary_here = o.primary() == Some(view.me);
        if primary_here
            || (view.epoch >= epoch && (o.primary() != Some(from) || o.role_of(view.me).is_none()))
        {
            return Err((ErrorCode::StaleEpoch, view.epoch));
        }
        Ok(())
    }

    /// `Replicate`: sets (or with `state` None removes) one object of partition `p` to
    /// exactly the primary's state, after the fence. A resend or a late duplicate is harmless:
    /// it carries a whole state, never an operation.
    #[allow(clippy::too_many_arguments)]
    pub fn on_replicate(
        &self,
        store: &mut Store,
        epoch: u64,
        from: HostId,
        p: u32,
        ns: NsId,
        key: &[u8],
        state: Option<&ObjectState>,
        value: &[u8],
        now_ms: u64,
    ) -> Result<(), Refusal> {
        let h = key_hash(ns, key);
        let actual = partition_of(h);
        if actual != p {
            return Err((ErrorCode::InvalidRequest, actual as u64));
        }
        self.fence(epoch, from, p)?;
        let k = KeyRef::with_hash(ns, key, h);
        match state {
            Some(st) => store
                .install(k, st, value, now_ms)
                .map_err(|e| (e.code, e.detail)),
            None => {
                store.remove_exact(k);
                Ok(())
            }
        }
    }

    /// `ReplicateTouches`: moves the deadlines of restarted sliding timeouts (only later, only
    /// for a live object at exactly the version named: see `Store::apply_touch`). Returns how
    /// many applied; items of another partition are skipped.
    pub fn on_touches<'a>(
        &self,
        store: &mut Store,
        epoch: u64,
        from: HostId,
        p: u32,
        items: impl Iterator<Item = Touch<'a>>,
        now_ms: u64,
    ) -> Result<u64, Refusal> {
        self.fence(epoch, from, p)?;
        let mut applied = 0u64;
        for t in items {
            let h = key_hash(t.ns, t.key);
            if partition_of(h) != p {
                continue;
            }
            applied += store.apply_touch(
                KeyRef::with_hash(t.ns, t.key, h),
                t.version,
                t.expires_at_ms,
                now_ms,
            ) as u64;
        }
        Ok(applied)
    }
}
