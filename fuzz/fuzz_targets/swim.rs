//! SWIM/discovery datagrams as the control plane takes them (`cluster/control.rs`): the
//! cluster-key seal is checked first (`ClusterKey::open`: ChaCha20-Poly1305 tag and time
//! window), then the body goes to foca (`Swim::on_datagram`). Both layers get the raw bytes:
//! the fuzzer cannot forge a tag, so the SWIM layer is also fed directly (what a cluster
//! without a key does).
//!
//! Holds: no panic; only a datagram the key sealed opens; the member list stays bounded.
#![no_main]

use std::net::SocketAddr;

use libfuzzer_sys::fuzz_target;
use stategrid::auth::peer::ClusterKey;
use stategrid::cluster::swim::{Ident, Swim, foca_config};

fuzz_target!(|data: &[u8]| {
    let key = ClusterKey::new(b"fuzz-cluster-key-0123456789abcdef").expect("a valid key");
    let now_ms = 1_000_000;
    // The corpus holds one genuine seal (`corpus/swim/sealed`), so opening may succeed; what
    // must hold is that only the key's own seal opens: the same body, time and nonce seal to
    // exactly these bytes.
    if let Ok(body) = key.open(data, now_ms) {
        let sent_ms = ClusterKey::datagram_sent_ms(data).expect("an opened datagram has a time");
        let nonce = ClusterKey::datagram_nonce(data).expect("an opened datagram has a nonce");
        assert_eq!(
            key.seal_with_nonce(&body, sent_ms, nonce),
            data,
            "a datagram opened that the key did not seal"
        );
    }

    let me_addr: SocketAddr = "127.0.0.1:2722".parse().unwrap();
    let from: SocketAddr = "127.0.0.2:2722".parse().unwrap();
    let me = Ident {
        id: 1,
        mgt: me_addr,
        started_ms: 1,
        generation: 0,
        flags: 0,
    };
    let mut s = Swim::new(me, foca_config(1_000, 8), 42);
    s.on_datagram(data, from, now_ms);
    s.on_time(now_ms + 10_000);
    let _ = s.take_sends();
    let _ = s.take_events();
    assert!(
        s.live().count() <= 256,
        "one datagram made too many members"
    );
});
