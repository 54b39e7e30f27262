//! Host-to-host requests on the internal port (`int_port`): a native frame whose request is
//! `Replicate`, `MigratePull` or `MigrateEnd`, decoded and applied as
//! `server/shard/hosts.rs::execute_internal` does: the partition check, then a forged
//! `Replicate` state installed into a real store (`Store::install`).
//!
//! Holds: no panic; a state the store accepted can be read back by key (installing must not
//! corrupt the table); a key of another partition is refused before the store is touched.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stategrid::store::{KeyRef, Store, StoreLimits};
use stategrid_proto::codec::decode_request;
use stategrid_proto::frame;
use stategrid_proto::hash::{PARTITIONS, key_hash, partition_of};
use stategrid_proto::msg::ArchivedRequest;

const NOW_MS: u64 = 1_000_000;

fuzz_target!(|data: &[u8]| {
    let mut v = vec![0u64; data.len().div_ceil(8)];
    // SAFETY: the u64 storage holds at least `data.len()` bytes; the int_port buffer is
    // 8-aligned too (rkyv archives need it).
    let buf = unsafe {
        std::ptr::copy_nonoverlapping(data.as_ptr(), v.as_mut_ptr() as *mut u8, data.len());
        std::slice::from_raw_parts(v.as_ptr() as *const u8, data.len())
    };
    let Ok(Some(p)) = frame::parse(buf, 1 << 20) else {
        return;
    };
    let Ok(req) = decode_request(p.archive) else {
        return;
    };
    match req {
        ArchivedRequest::Replicate {
            partition,
            key,
            state,
            ..
        } => {
            let (ns, k) = (key.ns.to_native(), key.key.as_slice());
            let h = key_hash(ns, k);
            if partition_of(h) != partition.to_native() {
                return; // refused with InvalidRequest, store untouched
            }
            let mut store = Store::new(StoreLimits::default(), 7);
            let kr = KeyRef::with_hash(ns, k, h);
            match state.as_ref() {
                Some(st) => {
                    let st = st.to_native();
                    if store.install(kr, &st, p.value, NOW_MS).is_ok()
                        && (st.expires_at_ms == 0 || st.expires_at_ms > NOW_MS)
                    {
                        assert!(
                            store.remove_exact(KeyRef::with_hash(ns, k, h)),
                            "an installed object is not in the store"
                        );
                    }
                }
                None => {
                    assert!(!store.remove_exact(kr), "an empty store removed something");
                }
            }
        }
        ArchivedRequest::MigratePull { partition, .. }
        | ArchivedRequest::MigrateEnd { partition, .. } => {
            // The shard refuses an out-of-range partition before indexing anything with it.
            let _in_range = partition.to_native() < PARTITIONS;
        }
        _ => {}
    }
});
