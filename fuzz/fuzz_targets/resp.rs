//! The RESP parser (`src/resp/parse.rs`): multibulk and inline commands, as a RESP
//! connection reads them with the server's default limits.
//!
//! Holds: no panic; argument ranges lie inside the buffer (or the scratch, for inline
//! commands); `consumed` is within the buffer; every proper prefix of a command that parsed is
//! "incomplete", never an error, and never a different command.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stategrid::resp::parse::{Limits, Parsed, parse};

const LIM: Limits = Limits {
    bulk_bytes_max: 1 << 20,
    items_max: 1024,
    inline_bytes_max: 64 << 10,
};

fuzz_target!(|data: &[u8]| {
    let mut args = Vec::new();
    let mut scratch = Vec::new();
    let Ok(Parsed::Command { consumed, inline }) = parse(data, &LIM, &mut args, &mut scratch)
    else {
        return;
    };
    assert!(
        consumed > 0 && consumed <= data.len(),
        "consumed {consumed} of {}",
        data.len()
    );
    let within = if inline { scratch.len() } else { consumed };
    for r in &args {
        assert!(
            r.start <= r.end && r.end <= within,
            "argument {r:?} outside 0..{within}"
        );
    }
    for cut in 0..consumed {
        match parse(&data[..cut], &LIM, &mut args, &mut scratch) {
            Ok(Parsed::Incomplete { .. }) => {}
            other => panic!("a {cut}-byte prefix of a command gave {other:?}"),
        }
    }
});
