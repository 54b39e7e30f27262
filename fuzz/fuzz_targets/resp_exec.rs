//! Redis command execution: the bytes a Redis client sends, parsed (`resp::parse`), run
//! through the command table (`resp::commands::execute`), each native request applied by a
//! real in-memory shard (`server::exec::Core` with its store) and each answer rendered
//! (`resp::render`), on one thread with no I/O (`resp::standalone::Standalone`). The input
//! is one connection's byte stream, fed in two pieces (the first byte picks the cut), so a
//! command split across reads and state kept between reads (MULTI, WATCH, SELECT, HELLO 3)
//! are reached.
//!
//! Holds: no panic; no command makes a request a client may not send; every reply is
//! well-formed RESP, one per command, and every error reply is typed (a code word first,
//! never an internal error); memory stays bounded (`-rss_limit_mb`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use stategrid::config::Config;
use stategrid::resp::standalone::Standalone;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let mut conn = Standalone::new(Config::default());
    let cut = (cut as usize).min(rest.len());
    // The connection keeps the bytes a command did not finish in (as the receive buffer
    // does) and sees them again with the next read.
    let mut buf = rest[..cut].to_vec();
    let mut left = &rest[cut..];
    loop {
        let fed = conn.feed(&buf).unwrap_or_else(|v| panic!("{}", v.0));
        buf.drain(..fed.consumed);
        if fed.closed || left.is_empty() {
            break;
        }
        buf.extend_from_slice(left);
        left = &[];
    }
});
