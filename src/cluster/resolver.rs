//! Name lookups for the control plane, on a thread of their own.
//!
//! A DNS lookup (`getaddrinfo`) blocks for as long as the resolver takes: seconds when a
//! name server swallows queries (glibc's default is 5 s per try). On the control thread that
//! stalled Raft ticks and lease renewals, so every partition of the host paused. Here the
//! control thread only hands a round of names to the [`Resolver`]'s thread and picks the
//! answers up as events (the thread wakes the control loop through a callback); meanwhile it
//! keeps using the addresses it had.
//!
//! Bounds: one round in flight at most (a round asked while one runs is refused, and the
//! caller asks again at its next period), so the request queue holds one entry and the
//! answer queue at most one answer per name plus the end of the round. A lookup cannot be
//! cancelled (`getaddrinfo` has no timeout of its own beyond the resolver's): a round that
//! runs past [`RESOLVE_SLOW_MS`] is reported once in the log, and its names keep their last
//! addresses until it ends. IP literals never come here: they need no lookup.

use std::net::SocketAddr;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError};

use super::swim::HostSpec;

/// A round of lookups running longer than this is logged (once per round).
pub const RESOLVE_SLOW_MS: u64 = 3000;

/// What the lookup thread sends back.
#[derive(Debug)]
pub enum Resolved {
    /// The addresses entry `index` of the round names now (empty: does not resolve).
    One {
        index: usize,
        addrs: Vec<SocketAddr>,
    },
    /// Every entry of the round was looked up.
    RoundDone,
}

/// The control plane's side of the lookup thread.
pub struct Resolver {
    requests: SyncSender<Vec<(usize, HostSpec)>>,
    results: Receiver<Resolved>,
    /// When the round in flight was asked for.
    busy_since_ms: Option<u64>,
    slow_logged: bool,
}

impl Resolver {
    /// Starts the lookup thread; `wake` is called after each answer (it wakes the control
    /// loop, which then calls [`Resolver::take`]).
    pub fn start(wake: Box<dyn Fn() + Send>) -> std::io::Result<Resolver> {
        // One round queued at most: `ask` refuses a second while one is in flight.
        let (requests, rounds) = std::sync::mpsc::sync_channel::<Vec<(usize, HostSpec)>>(1);
        // Unbounded type, bounded by construction: one round in flight, one answer per name.
        let (answers, results) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("control-dns".into())
            .spawn(move || {
                // Ends when the control plane drops its `Resolver` (the sender).
                for round in rounds {
                    for (index, spec) in round {
                        let addrs = spec.resolve();
                        if answers.send(Resolved::One { index, addrs }).is_err() {
                            return;
                        }
                        wake();
                    }
                    if answers.send(Resolved::RoundDone).is_err() {
                        return;
                    }
                    wake();
                }
            })?;
        Ok(Resolver {
            requests,
            results,
            busy_since_ms: None,
            slow_logged: false,
        })
    }

    /// Asks for a round of lookups (entry index, name) unless one is still running: `false`
    /// then (ask again later; the running round's answers still arrive).
    pub fn ask(&mut self, round: Vec<(usize, HostSpec)>, now_ms: u64) -> bool {
        if self.busy_since_ms.is_some() || round.is_empty() {
            return false;
        }
        match self.requests.try_send(round) {
            Ok(()) => {
                self.busy_since_ms = Some(now_ms);
                self.slow_logged = false;
                true
            }
            Err(TrySendError::Full(_)) => false,
            Err(TrySendError::Disconnected(_)) => {
                tracing::error!("the name lookup thread is gone: hosts names are not looked up");
                false
            }
        }
    }

    /// The answers that arrived (without waiting), and a log line for a slow round.
    pub fn take(&mut self, now_ms: u64) -> Vec<(usize, Vec<SocketAddr>)> {
        let mut out = Vec::new();
        loop {
            match self.results.try_recv() {
                Ok(Resolved::One { index, addrs }) => out.push((index, addrs)),
                Ok(Resolved::RoundDone) => self.busy_since_ms = None,
                Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => break,
            }
        }
        if let Some(t) = self.busy_since_ms
            && now_ms >= t + RESOLVE_SLOW_MS
            && !self.slow_logged
        {
            self.slow_logged = true;
            tracing::warn!(
                "looking up the names in hosts has taken over {RESOLVE_SLOW_MS} ms: the name server is slow or unreachable (see /etc/resolv.conf); the control plane keeps running with the addresses it has"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn a_round_answers_each_name_then_ends_and_a_second_waits_for_it() {
        let woken = Arc::new(AtomicUsize::new(0));
        let w = woken.clone();
        let mut r = Resolver::start(Box::new(move || {
            w.fetch_add(1, Ordering::SeqCst);
        }))
        .unwrap();
        let spec = |h: &str| HostSpec {
            host: h.into(),
            port: 7,
        };
        assert!(r.ask(vec![(0, spec("localhost")), (3, spec("127.0.0.9"))], 0));
        assert!(
            !r.ask(vec![(0, spec("localhost"))], 0),
            "one round at a time"
        );
        let mut got = Vec::new();
        while r.busy_since_ms.is_some() {
            got.extend(r.take(0));
            std::thread::yield_now();
        }
        got.sort();
        assert_eq!(got.len(), 2);
        assert_eq!(got[1], (3, vec!["127.0.0.9:7".parse().unwrap()]));
        assert_eq!(
            woken.load(Ordering::SeqCst),
            3,
            "one wake per answer and the end"
        );
        assert!(
            r.ask(vec![(1, spec("127.0.0.8"))], 1),
            "the next round starts"
        );
    }
}
