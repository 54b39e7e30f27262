//! Loopback ports for test servers, shared by the root and loadgen test suites.
//!
//! Why not "bind port 0 and release it": such a port comes from the kernel's ephemeral range,
//! where every outgoing client connection also takes its source port. Between the release and
//! the server's bind, a client socket of a parallel test (or another test's server drawing the
//! same number) can take it; worse, a connect from an ephemeral port to itself succeeds on
//! Linux (TCP simultaneous open), so "the port accepts" can be true with no server at all.
//! CI once failed that way: a Redis started for one test was killed by another that had drawn
//! the same port. So ports here come from below the ephemeral range (32768 on Linux), are never
//! handed out twice by one test process, and are probed for TCP and UDP before use.

use std::net::{TcpListener, UdpSocket};
use std::sync::atomic::{AtomicU32, Ordering};

/// First and one-past-last port handed out: below Linux's default ephemeral range.
const PORT_FIRST: u32 = 20_000;
const PORT_END: u32 = 32_000;

/// Next offset into the range; starts at a pid-derived point so test binaries that happen to
/// run at the same time (two checkouts, two CI jobs) start far apart.
static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);

/// A loopback port no other test of this process was given, and free for TCP and UDP now.
pub fn free_port() -> u16 {
    let span = PORT_END - PORT_FIRST;
    let _ = NEXT.compare_exchange(
        u32::MAX,
        (std::process::id().wrapping_mul(7919)) % span,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..span {
        let port = (PORT_FIRST + NEXT.fetch_add(1, Ordering::SeqCst) % span) as u16;
        let tcp = TcpListener::bind(("127.0.0.1", port));
        let udp = UdpSocket::bind(("127.0.0.1", port));
        if tcp.is_ok() && udp.is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {PORT_FIRST}..{PORT_END}");
}
