//! loadgen: stategrid's load generator, and `echo-floor`, the cost floor it measures against.
//!
//! Layout (the wire apart from the workload, the workload apart from the event loop):
//!
//! - [`cli`]: the command line, validated into a [`cli::Config`] with every limit named.
//! - [`workload`]: what a connection slot sends next: key distribution, GET:PUT mix, value
//!   sizes, the session cycle's state machine, the open-loop arrival schedule. No I/O.
//! - [`codec`]: one small trait, three protocols (stategrid native, RESP2, memcached text):
//!   encode an operation into bytes; parse reply bytes into "complete (ok, miss, busy, server
//!   error) and how many bytes it used", "incomplete", or a protocol error.
//! - [`conn`]: one connection's buffers: an 8-aligned receive buffer (rkyv reads native
//!   archives in place) and a double send buffer, so one send per loop carries every request.
//! - [`worker`]: the hot loop. One pinned thread, one io_uring, many connections; one
//!   `io_uring_enter` per loop iteration submits every send and receive and reaps every completion.
//! - [`stats`]: per-thread counters and HDR histograms, merged once at the end.
//! - [`report`]: the final table, the JSON file, and the client-CPU verdict.
//! - [`plot`]: throughput and latency percentiles over time, SVG or PNG.
//! - [`run`]: the orchestration: threads, barriers, progress line, deadlines, exit codes.
//! - [`tls`]: `--tls`: a rustls session per connection between the ring's buffers and the
//!   codec (set-up handshake blocking, then encrypt before each send, decrypt after each receive).
//! - [`sys`]: the few system calls done by hand: CPU affinity, `getrusage`, ring set-up.

pub mod cli;
pub mod codec;
pub mod conn;
pub mod plot;
pub mod report;
pub mod run;
pub mod stats;
pub mod sys;
pub mod tls;
pub mod worker;
pub mod workload;
