//! Management-port peer frames (`src/cluster/wire.rs::decode_frame`): length, sender, kind,
//! then a Raft protobuf or a JSON control message.
//!
//! Holds: no panic; every proper prefix of a decodable frame is "incomplete", never an error;
//! a decoded message re-encodes (`encode_frame`) to a frame that decodes to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stategrid::cluster::wire::{decode_frame, encode_frame};

const FRAME_BYTES_MAX: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let Ok(Some((from, msg, used))) = decode_frame(data, FRAME_BYTES_MAX) else {
        return;
    };
    assert!(used <= data.len());
    for cut in 0..used {
        assert!(
            matches!(decode_frame(&data[..cut], FRAME_BYTES_MAX), Ok(None)),
            "a {cut}-byte prefix of a valid frame is not 'incomplete'"
        );
    }
    let again = encode_frame(from, &msg);
    let (from2, msg2, used2) = decode_frame(&again, usize::MAX)
        .expect("a re-encoded frame decodes")
        .expect("a re-encoded frame is complete");
    assert_eq!(used2, again.len());
    assert_eq!(from2, from);
    assert_eq!(
        format!("{msg:?}"),
        format!("{msg2:?}"),
        "round trip changed the message"
    );
});
