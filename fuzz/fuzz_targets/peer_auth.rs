//! The host-authentication handshake (`src/auth/peer.rs`) fed hostile bytes from both sides:
//! the responder reads `C1` + `C2` from an unauthenticated connection, the initiator reads
//! the responder's challenge `S1`.
//!
//! Holds: no panic; a forged proof never authenticates (the fuzzer does not know the key, so
//! `Done` is impossible); "need more" for every prefix of an input the responder acted on.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stategrid::auth::peer::{ClusterKey, Initiator, Responder, Step};

fuzz_target!(|data: &[u8]| {
    let key = ClusterKey::new(b"fuzz-cluster-key-0123456789abcdef").expect("a valid key");
    let mut r = Responder::new(&key, 2);
    let mut at = 0;
    // A responder is driven as the connection does: consume what it used, feed the rest.
    for _ in 0..4 {
        match r.on_bytes(&data[at..]) {
            Ok(Step::More) | Err(_) => break,
            Ok(Step::Send { used, .. }) => {
                assert!(
                    used > 0 && used <= data.len() - at,
                    "used {used} out of range"
                );
                at += used;
            }
            Ok(Step::Done { .. }) => panic!("a forged proof authenticated"),
        }
    }
    let (i, _c1) = Initiator::start(&key, 1, Some(2));
    match i.on_challenge(data) {
        Ok(Some(_)) => panic!("a forged challenge was accepted"),
        Ok(None) | Err(_) => {}
    }
});
