//! The checker of a simulated run's client history: per key, is the history of a single-key
//! register linearizable (a Wing–Gong search with Lowe's memoisation, as Porcupine and Knossos
//! do), and was a lock ever granted to two holders at once?
//!
//! An operation whose answer never came, or came as a timeout or `ReplicationFailed` (the
//! change may have been applied), is *indeterminate*: it may take effect at any point after
//! its invocation, or never. A read whose answer never came is left out (it changes nothing).
//! Histories are kept small per key (a run issues a few dozen operations per key), so the
//! search stays fast.

use std::collections::HashSet;

/// A register's value: absent, or the unique number a write stored.
pub type Val = Option<u64>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    Write(u64),
    Read,
    Remove,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ret {
    /// A write's acknowledgement.
    Ok,
    /// A read's answer.
    Value(Val),
    /// A remove's answer: whether the object was there.
    Removed(bool),
    /// Indeterminate (see the module doc).
    Unknown,
}

/// One operation: invoked at `invoke_ms`, answered at `return_ms` (ignored when `Unknown`).
#[derive(Clone, Copy, Debug)]
pub struct Op {
    pub client: usize,
    pub call: Call,
    pub ret: Ret,
    pub invoke_ms: u64,
    pub return_ms: u64,
}

impl Op {
    fn determinate(&self) -> bool {
        self.ret != Ret::Unknown
    }

    /// Applies the operation to `state` if its answer is possible there.
    fn step(&self, state: Val) -> Option<Val> {
        match (self.call, self.ret) {
            (Call::Write(v), Ret::Ok | Ret::Unknown) => Some(Some(v)),
            (Call::Read, Ret::Value(x)) => (x == state).then_some(state),
            (Call::Remove, Ret::Removed(existed)) => (existed == state.is_some()).then_some(None),
            (Call::Remove, Ret::Unknown) => Some(None),
            _ => None,
        }
    }
}

/// Decides whether `ops` (one key's history, starting from an absent object) is
/// linearizable. On failure, says which determinate operations could not be placed.
pub fn linearizable(ops: &[Op]) -> Result<(), String> {
    // Unanswered reads change nothing and constrain nothing.
    let ops: Vec<Op> = ops
        .iter()
        .copied()
        .filter(|o| !(o.call == Call::Read && o.ret == Ret::Unknown))
        .collect();
    let n = ops.len();
    let words = n.div_ceil(64).max(1);
    let must: usize = ops.iter().filter(|o| o.determinate()).count();
    let mut seen: HashSet<(Vec<u64>, Val)> = HashSet::new();
    // Depth-first search over (linearized set, register state).
    let mut stack: Vec<(Vec<u64>, Val, usize)> = vec![(vec![0; words], None, 0)];
    let mut best = 0;
    while let Some((done, state, placed)) = stack.pop() {
        if placed == must {
            return Ok(());
        }
        best = best.max(placed);
        if !seen.insert((done.clone(), state)) {
            continue;
        }
        let is_done = |i: usize| done[i / 64] >> (i % 64) & 1 == 1;
        // The earliest answer among determinate operations not yet placed: nothing invoked
        // after it can come before it.
        let horizon = (0..n)
            .filter(|&i| !is_done(i) && ops[i].determinate())
            .map(|i| ops[i].return_ms)
            .min()
            .unwrap_or(u64::MAX);
        for i in 0..n {
            if is_done(i) || ops[i].invoke_ms > horizon {
                continue;
            }
            if let Some(next) = ops[i].step(state) {
                let mut d = done.clone();
                d[i / 64] |= 1 << (i % 64);
                stack.push((d, next, placed + ops[i].determinate() as usize));
            }
        }
    }
    let mut sorted = ops.clone();
    sorted.sort_by_key(|o| o.invoke_ms);
    let lines: Vec<String> = sorted
        .iter()
        .map(|o| {
            format!(
                "  [{:>6}, {:>6}] client {}: {:?} -> {:?}",
                o.invoke_ms, o.return_ms, o.client, o.call, o.ret
            )
        })
        .collect();
    Err(format!(
        "not linearizable: at most {best} of {must} answered operations can be placed; history:\n{}",
        lines.join("\n")
    ))
}

/// A lock granted to a client: applied somewhere in `[invoke_ms, return_ms]`, then held
/// surely until `held_until_ms` (the holder's unlock was invoked then, or the lock timeout
/// ran out, less the clock skew allowed).
#[derive(Clone, Copy, Debug)]
pub struct Grant {
    pub key: usize,
    pub client: usize,
    pub token: u64,
    pub invoke_ms: u64,
    pub return_ms: u64,
    pub held_until_ms: u64,
}

/// No grant was made while another holder surely held the same key's lock.
pub fn locks_exclusive(grants: &[Grant]) -> Result<(), String> {
    for a in grants {
        for b in grants {
            // b applied surely within a's sure holding: after a's answer, before it ended.
            if a.key == b.key
                && a.token != b.token
                && b.invoke_ms >= a.return_ms
                && b.return_ms < a.held_until_ms
            {
                return Err(format!(
                    "lock on key {} granted to client {} while client {} surely held it: {a:?} and {b:?}",
                    a.key, b.client, a.client
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(call: Call, ret: Ret, invoke_ms: u64, return_ms: u64) -> Op {
        Op {
            client: 0,
            call,
            ret,
            invoke_ms,
            return_ms,
        }
    }

    #[test]
    fn the_checker_accepts_and_refuses() {
        // A write then a read of it.
        let ok = [
            op(Call::Write(1), Ret::Ok, 0, 10),
            op(Call::Read, Ret::Value(Some(1)), 11, 12),
        ];
        assert!(linearizable(&ok).is_ok());
        // An acknowledged write lost: a later read sees nothing.
        let lost = [
            op(Call::Write(1), Ret::Ok, 0, 10),
            op(Call::Read, Ret::Value(None), 11, 12),
        ];
        assert!(linearizable(&lost).is_err());
        // An indeterminate write may take effect late...
        let late = [
            op(Call::Write(1), Ret::Unknown, 0, 0),
            op(Call::Read, Ret::Value(None), 5, 6),
            op(Call::Read, Ret::Value(Some(1)), 7, 8),
        ];
        assert!(linearizable(&late).is_ok());
        // ...but not come back once overwritten and read.
        let resurrected = [
            op(Call::Write(1), Ret::Unknown, 0, 0),
            op(Call::Write(2), Ret::Ok, 1, 2),
            op(Call::Read, Ret::Value(Some(1)), 3, 4),
            op(Call::Read, Ret::Value(Some(2)), 5, 6),
        ];
        assert!(linearizable(&resurrected).is_err());
        // Concurrent operations may go either way.
        let concurrent = [
            op(Call::Write(1), Ret::Ok, 0, 10),
            op(Call::Remove, Ret::Removed(false), 1, 9),
            op(Call::Read, Ret::Value(Some(1)), 11, 12),
        ];
        assert!(linearizable(&concurrent).is_ok());
        let grants = [
            Grant {
                key: 0,
                client: 0,
                token: 1,
                invoke_ms: 0,
                return_ms: 5,
                held_until_ms: 100,
            },
            Grant {
                key: 0,
                client: 1,
                token: 2,
                invoke_ms: 10,
                return_ms: 20,
                held_until_ms: 200,
            },
        ];
        assert!(locks_exclusive(&grants).is_err());
        assert!(locks_exclusive(&grants[..1]).is_ok());
    }
}
