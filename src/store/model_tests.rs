//! Random operation sequences checked against a plain reference model.
//!
//! The model is a `BTreeMap` that states the rules of `store/mod.rs` and `lock.rs` as directly
//! as possible (no slab, no tables, no LRU); the store must agree with it on every result
//! (values, versions, metadata, error codes and details) and on which objects exist, with a
//! fake clock that moves across timeouts and lock expiries. A failing case shrinks to a
//! short sequence, and proptest prints the seed that reproduces it.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use stategrid_proto::{LockInfo, Meta, NsId, Timeout, TimeoutKind, WriteOpts};

use super::error::StoreError;
use super::{KeyRef, Store, StoreLimits};

/// The addresses ops pick from: few, so ops collide often.
const ADDRS: [(NsId, &[u8]); 5] = [(1, b"a"), (1, b"b"), (1, b"c"), (2, b"a"), (2, b"b")];
const LOCK_TIMEOUT_MS: u64 = 1500;
const BOGUS_TOKEN: u64 = 0xDEAD_BEEF;

fn addr(i: usize) -> KeyRef<'static> {
    KeyRef::new(ADDRS[i].0, ADDRS[i].1)
}

fn value_of(seed: u8) -> Vec<u8> {
    vec![seed; (seed % 5) as usize]
}

#[derive(Debug, Clone, Copy)]
enum Tok {
    None,
    /// The last token the store issued for this address, even if released or expired.
    Last,
    Bogus,
}

#[derive(Debug, Clone)]
enum Op {
    Add(usize, u8),
    Put(usize, u8, Option<Timeout>),
    Update(usize, u8, Tok),
    UpdateIfVersion(usize, u8, bool, Tok),
    UpdateAndUnlock(usize, u8, Tok),
    Read(usize),
    ReadAndLock(usize),
    Unlock(usize, Tok),
    RefreshLock(usize, Tok),
    Remove(usize, Tok, bool),
    Touch(usize, Option<Timeout>),
    Meta(usize),
    Advance(u64),
    Sweep(usize),
    NsClear(NsId),
}

fn timeout_strategy() -> impl Strategy<Value = Option<Timeout>> {
    prop_oneof![
        Just(None),
        Just(Some(Timeout {
            timeout_s: 0,
            kind: TimeoutKind::Absolute
        })),
        Just(Some(Timeout {
            timeout_s: 2,
            kind: TimeoutKind::Absolute
        })),
        Just(Some(Timeout {
            timeout_s: 2,
            kind: TimeoutKind::Sliding
        })),
        Just(Some(Timeout {
            timeout_s: 2,
            kind: TimeoutKind::ResetOnUpdate
        })),
    ]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let a = 0..ADDRS.len();
    let tok = prop_oneof![1 => Just(Tok::None), 3 => Just(Tok::Last), 1 => Just(Tok::Bogus)];
    prop_oneof![
        1 => (a.clone(), any::<u8>()).prop_map(|(a, v)| Op::Add(a, v)),
        1 => (a.clone(), any::<u8>(), timeout_strategy()).prop_map(|(a, v, t)| Op::Put(a, v, t)),
        1 => (a.clone(), any::<u8>(), tok.clone()).prop_map(|(a, v, t)| Op::Update(a, v, t)),
        1 => (a.clone(), any::<u8>(), any::<bool>(), tok.clone())
            .prop_map(|(a, v, r, t)| Op::UpdateIfVersion(a, v, r, t)),
        1 => (a.clone(), any::<u8>(), tok.clone()).prop_map(|(a, v, t)| Op::UpdateAndUnlock(a, v, t)),
        2 => a.clone().prop_map(Op::Read),
        2 => a.clone().prop_map(Op::ReadAndLock),
        1 => (a.clone(), tok.clone()).prop_map(|(a, t)| Op::Unlock(a, t)),
        1 => (a.clone(), tok.clone()).prop_map(|(a, t)| Op::RefreshLock(a, t)),
        1 => (a.clone(), tok, any::<bool>()).prop_map(|(a, t, f)| Op::Remove(a, t, f)),
        1 => (a.clone(), timeout_strategy()).prop_map(|(a, t)| Op::Touch(a, t)),
        1 => a.prop_map(Op::Meta),
        2 => (0u64..2500).prop_map(Op::Advance),
        1 => (1usize..8).prop_map(Op::Sweep),
        1 => (1u32..3).prop_map(Op::NsClear),
    ]
}

#[derive(Debug, Clone)]
struct MObj {
    value: Vec<u8>,
    version: u64,
    created_ms: u64,
    updated_ms: u64,
    timeout: Timeout,
    expires_at_ms: u64,
    /// (token, expires_at_ms)
    lock: Option<(u64, u64)>,
}

#[derive(Debug, Clone, Copy)]
enum Mode {
    Add,
    Put,
    Update(Option<u64>),
    UpdateIfVersion(u64, Option<u64>),
    UpdateAndUnlock(u64),
}

struct Model {
    objs: BTreeMap<usize, MObj>,
    now_ms: u64,
}

fn deadline(now_ms: u64, t: Timeout) -> u64 {
    if t.timeout_s == 0 {
        0
    } else {
        now_ms + t.timeout_s as u64 * 1000
    }
}

impl Model {
    /// The object at `i` if present and unexpired; an expired one is dropped.
    fn live(&mut self, i: usize) -> Option<&mut MObj> {
        let now = self.now_ms;
        if self
            .objs
            .get(&i)
            .is_some_and(|o| o.expires_at_ms != 0 && now >= o.expires_at_ms)
        {
            self.objs.remove(&i);
        }
        self.objs.get_mut(&i)
    }

    fn held(o: &MObj, now_ms: u64) -> Option<(u64, u64)> {
        o.lock.filter(|&(_, exp)| exp > now_ms)
    }

    fn holder(o: &MObj, tok: u64, now_ms: u64) -> Result<(), StoreError> {
        match Self::held(o, now_ms) {
            Some((t, _)) if t == tok => Ok(()),
            Some((_, exp)) => Err(StoreError::locked(exp - now_ms)),
            None => Err(StoreError::LOCK_LOST),
        }
    }

    fn permit(o: &MObj, tok: Option<u64>, now_ms: u64) -> Result<(), StoreError> {
        match (tok, Self::held(o, now_ms)) {
            (Some(t), _) => Self::holder(o, t, now_ms),
            (None, Some((_, exp))) => Err(StoreError::locked(exp - now_ms)),
            (None, None) => Ok(()),
        }
    }

    fn meta(o: &MObj, now_ms: u64) -> Meta {
        Meta {
            value_bytes: o.value.len() as u32,
            version: o.version,
            created_ms: o.created_ms,
            updated_ms: o.updated_ms,
            timeout: o.timeout,
            expires_in_ms: (o.expires_at_ms != 0).then(|| o.expires_at_ms - now_ms),
            lock: Self::held(o, now_ms).map(|(_, exp)| LockInfo {
                expires_in_ms: exp - now_ms,
            }),
            evictable: true,
            content_type_bytes: 0,
        }
    }

    fn write(
        &mut self,
        i: usize,
        value: Vec<u8>,
        timeout: Option<Timeout>,
        mode: Mode,
    ) -> Result<u64, StoreError> {
        let now = self.now_ms;
        let Some(o) = self.live(i) else {
            if !matches!(mode, Mode::Add | Mode::Put) {
                return Err(StoreError::NOT_FOUND);
            }
            let t = timeout.unwrap_or_default();
            let o = MObj {
                value,
                version: 1,
                created_ms: now,
                updated_ms: now,
                timeout: t,
                expires_at_ms: deadline(now, t),
                lock: None,
            };
            self.objs.insert(i, o);
            return Ok(1);
        };
        let renewed = |tok: Option<u64>| tok.map(|t| (t, now + LOCK_TIMEOUT_MS));
        let lock = match mode {
            Mode::Add => return Err(StoreError::ALREADY_EXISTS),
            Mode::Put => None,
            Mode::Update(tok) => {
                Self::permit(o, tok, now)?;
                renewed(tok)
            }
            Mode::UpdateIfVersion(v, tok) => {
                Self::permit(o, tok, now)?;
                if o.version != v {
                    return Err(StoreError::version_mismatch(o.version));
                }
                renewed(tok)
            }
            Mode::UpdateAndUnlock(tok) => {
                Self::holder(o, tok, now)?;
                None
            }
        };
        o.value = value;
        o.version += 1;
        o.updated_ms = now;
        match timeout {
            Some(t) => {
                o.timeout = t;
                o.expires_at_ms = deadline(now, t);
            }
            None if o.timeout.kind != TimeoutKind::Absolute => {
                o.expires_at_ms = deadline(now, o.timeout)
            }
            None => {}
        }
        o.lock = lock;
        Ok(o.version)
    }

    fn read(&mut self, i: usize) -> Option<&mut MObj> {
        let now = self.now_ms;
        let o = self.live(i)?;
        if o.timeout.kind == TimeoutKind::Sliding {
            o.expires_at_ms = deadline(now, o.timeout);
        }
        Some(o)
    }
}

fn check_same<T: PartialEq + std::fmt::Debug>(
    op: &Op,
    store: T,
    model: T,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(store, model, "op {:?}", op);
    Ok(())
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let limits = StoreLimits {
        lock_timeout_ms: LOCK_TIMEOUT_MS,
        ..StoreLimits::default()
    };
    let mut s = Store::new(limits, 7);
    let mut m = Model {
        objs: BTreeMap::new(),
        now_ms: 1_000_000,
    };
    let mut last_token: [Option<u64>; ADDRS.len()] = [None; ADDRS.len()];
    let opts = |timeout| WriteOpts {
        timeout,
        evictable: true,
        content_type_bytes: 0,
    };
    for op in &ops {
        let now = m.now_ms;
        let token = |i: usize, t: Tok| match t {
            Tok::None => None,
            Tok::Last => Some(last_token[i].unwrap_or(BOGUS_TOKEN)),
            Tok::Bogus => Some(BOGUS_TOKEN),
        };
        match *op {
            Op::Add(i, v) => {
                let got = s.add(addr(i), &value_of(v), opts(None), now);
                check_same(op, got, m.write(i, value_of(v), None, Mode::Add))?;
            }
            Op::Put(i, v, t) => {
                let got = s.put(addr(i), &value_of(v), opts(t), now);
                check_same(op, got, m.write(i, value_of(v), t, Mode::Put))?;
            }
            Op::Update(i, v, t) => {
                let tok = token(i, t);
                let got = s.update(addr(i), &value_of(v), opts(None), tok, now);
                check_same(op, got, m.write(i, value_of(v), None, Mode::Update(tok)))?;
            }
            Op::UpdateIfVersion(i, v, right, t) => {
                let tok = token(i, t);
                let stored = m.objs.get(&i).map_or(1, |o| o.version);
                let version = if right { stored } else { stored + 1 };
                let got = s.update_if_version(addr(i), &value_of(v), opts(None), version, tok, now);
                let want = m.write(i, value_of(v), None, Mode::UpdateIfVersion(version, tok));
                check_same(op, got, want)?;
            }
            Op::UpdateAndUnlock(i, v, t) => {
                let tok = token(i, t).unwrap_or(0);
                let got = s.update_and_unlock(addr(i), &value_of(v), opts(None), tok, now);
                check_same(
                    op,
                    got,
                    m.write(i, value_of(v), None, Mode::UpdateAndUnlock(tok)),
                )?;
            }
            Op::Read(i) => {
                let got = s.read(addr(i), now).map(|(meta, v)| (meta, v.to_vec()));
                let want = m
                    .read(i)
                    .map(|o| (Model::meta(o, now), o.value.clone()))
                    .ok_or(StoreError::NOT_FOUND);
                check_same(op, got, want)?;
            }
            Op::ReadAndLock(i) => {
                let got = s.read_and_lock(addr(i), now);
                // A refused read-and-lock is no read: it restarts no sliding timeout.
                let want = match m.live(i).map(|o| Model::held(o, now)) {
                    None => Err(StoreError::NOT_FOUND),
                    Some(Some((_, exp))) => Err(StoreError::locked(exp - now)),
                    Some(None) => Ok(m.read(i).expect("live")),
                };
                match (got, want) {
                    (Ok((meta, v, tok)), Ok(o)) => {
                        // The model cannot predict a token: it adopts the store's.
                        o.lock = Some((tok, now + LOCK_TIMEOUT_MS));
                        o.version += 1;
                        last_token[i] = Some(tok);
                        check_same(
                            op,
                            (meta, v.to_vec()),
                            (Model::meta(o, now), o.value.clone()),
                        )?;
                    }
                    (got, want) => check_same(op, got.map(|_| ()), want.map(|_| ()))?,
                }
            }
            Op::Unlock(i, t) => {
                let tok = token(i, t).unwrap_or(0);
                let got = s.unlock(addr(i), tok, now);
                let want = match m.live(i) {
                    None => Err(StoreError::NOT_FOUND),
                    Some(o) => Model::holder(o, tok, now).map(|()| {
                        o.lock = None;
                        o.version += 1;
                        Model::meta(o, now)
                    }),
                };
                check_same(op, got, want)?;
            }
            Op::RefreshLock(i, t) => {
                let tok = token(i, t).unwrap_or(0);
                let got = s.refresh_lock(addr(i), tok, now);
                let want = match m.live(i) {
                    None => Err(StoreError::NOT_FOUND),
                    Some(o) => Model::holder(o, tok, now).map(|()| {
                        o.lock = Some((tok, now + LOCK_TIMEOUT_MS));
                        Model::meta(o, now)
                    }),
                };
                check_same(op, got, want)?;
            }
            Op::Remove(i, t, force) => {
                let tok = token(i, t);
                let got = s.remove(addr(i), tok, force, now);
                let want = match m.live(i) {
                    None => Err(StoreError::NOT_FOUND),
                    Some(_) if force => Ok(()),
                    Some(o) => Model::permit(o, tok, now),
                };
                if want.is_ok() {
                    m.objs.remove(&i);
                }
                check_same(op, got, want)?;
            }
            Op::Touch(i, t) => {
                let got = s.touch(addr(i), t, now);
                let want = match m.live(i) {
                    None => Err(StoreError::NOT_FOUND),
                    Some(o) => {
                        if let Some(t) = t {
                            o.timeout = t;
                            o.version += 1;
                        }
                        o.expires_at_ms = deadline(now, o.timeout);
                        Ok(Model::meta(o, now))
                    }
                };
                check_same(op, got, want)?;
            }
            Op::Meta(i) => {
                let got = s.meta(addr(i), now);
                let want = m
                    .live(i)
                    .map(|o| Model::meta(o, now))
                    .ok_or(StoreError::NOT_FOUND);
                check_same(op, got, want)?;
            }
            Op::Advance(ms) => m.now_ms += ms,
            Op::Sweep(budget) => {
                s.sweep(now, budget);
            }
            Op::NsClear(ns) => {
                let got = s.ns_clear(ns, now);
                let mine: Vec<usize> = m
                    .objs
                    .keys()
                    .copied()
                    .filter(|&i| ADDRS[i].0 == ns)
                    .collect();
                let live = mine.iter().filter(|&&i| m.live(i).is_some()).count() as u64;
                for i in mine {
                    m.objs.remove(&i);
                }
                check_same(op, got, live)?;
            }
        }
        s.assert_invariants();
        // Existence, value and version of every address, read without side effects.
        let now = m.now_ms;
        for i in 0..ADDRS.len() {
            let got = s
                .find(addr(i))
                .map(|slot| &s.slab[slot as usize])
                .filter(|e| !e.is_expired(now))
                .map(|e| (e.value.to_vec(), e.version));
            let want = m.live(i).map(|o| (o.value.clone(), o.version));
            prop_assert_eq!(got, want, "address {} after {:?}", i, op);
        }
    }
    // A full listing of each namespace is exactly the model's live keys.
    let now = m.now_ms;
    for ns in [1, 2] {
        let (keys, next) = s.list_keys(ns, 0, usize::MAX, usize::MAX, now);
        prop_assert_eq!(next, None);
        let got: BTreeSet<Vec<u8>> = keys.into_iter().collect();
        let want: BTreeSet<Vec<u8>> = (0..ADDRS.len())
            .filter(|&i| ADDRS[i].0 == ns && m.live(i).is_some())
            .map(|i| ADDRS[i].1.to_vec())
            .collect();
        prop_assert_eq!(got, want);
    }
    Ok(())
}

#[derive(Debug, Clone)]
enum MemOp {
    Put {
        key: u8,
        value_bytes: usize,
        evictable: bool,
    },
    Read(u8),
    Remove(u8),
}

fn mem_op_strategy() -> impl Strategy<Value = MemOp> {
    prop_oneof![
        3 => (0u8..24, 0usize..3000, any::<bool>())
            .prop_map(|(key, value_bytes, evictable)| MemOp::Put { key, value_bytes, evictable }),
        2 => (0u8..24).prop_map(MemOp::Read),
        1 => (0u8..24).prop_map(MemOp::Remove),
    ]
}

/// Under a memory limit: the invariants hold, the limit is never exceeded, and a `LowMemory`
/// write changes nothing at all.
fn run_memory(
    ops: Vec<MemOp>,
    memory_bytes_max: u64,
    lru_threshold_pct: u32,
) -> Result<(), TestCaseError> {
    let limits = StoreLimits {
        memory_bytes_max,
        lru_threshold_pct,
        ..StoreLimits::default()
    };
    let mut s = Store::new(limits, 11);
    for (t, op) in ops.iter().enumerate() {
        let now = t as u64;
        match *op {
            MemOp::Put {
                key,
                value_bytes,
                evictable,
            } => {
                let before = (
                    s.stats(),
                    s.meta(KeyRef::new(1, &[key]), now).ok(),
                    s.lru.check(&s.slab),
                );
                let opts = WriteOpts {
                    timeout: None,
                    evictable,
                    content_type_bytes: 0,
                };
                match s.put(KeyRef::new(1, &[key]), &vec![key; value_bytes], opts, now) {
                    Ok(_) => {}
                    Err(e) => {
                        prop_assert_eq!(e, StoreError::LOW_MEMORY);
                        let after = (
                            s.stats(),
                            s.meta(KeyRef::new(1, &[key]), now).ok(),
                            s.lru.check(&s.slab),
                        );
                        prop_assert_eq!(before, after, "LowMemory changed something");
                    }
                }
            }
            MemOp::Read(key) => {
                let _ = s.read(KeyRef::new(1, &[key]), now);
            }
            MemOp::Remove(key) => {
                let _ = s.remove(KeyRef::new(1, &[key]), None, false, now);
            }
        }
        s.assert_invariants();
    }
    Ok(())
}

proptest! {
    // 512 cases unless PROPTEST_CASES asks for more (a long local run: PROPTEST_CASES=100000).
    #![proptest_config(ProptestConfig {
        cases: ProptestConfig::default().cases.max(512),
        ..ProptestConfig::default()
    })]

    #[test]
    fn store_matches_the_model(ops in proptest::collection::vec(op_strategy(), 1..80)) {
        run(ops)?;
    }

    #[test]
    fn memory_limit_holds(
        ops in proptest::collection::vec(mem_op_strategy(), 1..120),
        memory_bytes_max in 2_000u64..40_000,
        lru_threshold_pct in 30u32..=100,
    ) {
        run_memory(ops, memory_bytes_max, lru_threshold_pct)?;
    }
}
