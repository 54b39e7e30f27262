//! The Redis operations of the store: each one atomic on the shard, on strings and hashes.
//!
//! Every write here respects a lock held by a native client (`Locked`, detail = ms until it
//! frees) instead of breaking it: a Redis client cannot present a lock token, and a session
//! locked by an ASP.NET-style client must not be overwritten behind its back. Reads ignore
//! locks, as native reads do. Writes go through the store's one write path (limits, memory,
//! LRU, versions), then set the value kind and expiry, so replication (which copies the whole
//! object state) and migration carry them.

use std::rc::Rc;

use stategrid_proto::{
    ExpireCond, RedisOp, SetCond, SetExpire, TIMEOUT_S_MAX, Timeout, TimeoutKind, ValueKind,
    WriteOpts,
};

use super::hash::{self, Fields};
use super::lock::permit;
use super::{KeyRef, Store, StoreError, Value, WriteMode};

/// What a Redis operation answers (the network layer renders it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisOut {
    Ok,
    Nil,
    Int(i64),
    /// One value, passed by reference (no copy).
    Value(Value),
    /// A list in `hash`'s item encoding, and its length.
    Items(Vec<u8>, u32),
}

/// Parses a stored string as Redis does for INCR: optional '-', digits, no spaces, fits i64.
pub fn parse_i64(b: &[u8]) -> Option<i64> {
    if b.is_empty() || b.len() > 20 {
        return None;
    }
    let s = std::str::from_utf8(b).ok()?;
    if s.starts_with('+') || (s.len() > 1 && (s.starts_with('0') || s.starts_with("-0"))) {
        return None;
    }
    s.parse().ok()
}

/// The timeout that records an absolute Redis expiry: Absolute, its seconds rounded up (the
/// exact deadline is kept in the entry; the timeout only says it is absolute).
fn absolute_timeout(at_ms: u64, now_ms: u64) -> Timeout {
    let s = at_ms
        .saturating_sub(now_ms)
        .div_ceil(1000)
        .clamp(1, TIMEOUT_S_MAX as u64);
    Timeout {
        timeout_s: s as u32,
        kind: TimeoutKind::Absolute,
    }
}

impl Store {
    /// Runs one Redis operation. `args` is the request's trailer (a value, or a list of
    /// fields). Cost: one table probe; a write as `put` (one value allocation and copy); a
    /// hash write also decodes and re-encodes the hash.
    pub fn redis(
        &mut self,
        k: KeyRef<'_>,
        op: RedisOp,
        args: &[u8],
        hash_fields_max: usize,
        now_ms: u64,
    ) -> Result<RedisOut, StoreError> {
        match op {
            RedisOp::Get => Ok(match self.string(k, now_ms)? {
                Some(v) => RedisOut::Value(v),
                None => RedisOut::Nil,
            }),
            RedisOp::Set { cond, expire, get } => self.r_set(k, args, cond, expire, get, now_ms),
            RedisOp::IncrBy { by } => {
                let old = self.string(k, now_ms)?;
                let n = match &old {
                    Some(v) => parse_i64(v).ok_or(StoreError::NOT_INTEGER)?,
                    None => 0,
                };
                let n = n.checked_add(by).ok_or(StoreError::OVERFLOW)?;
                let text = n.to_string();
                self.r_write(
                    k,
                    text.as_bytes(),
                    ValueKind::String,
                    SetExpire::Keep,
                    now_ms,
                )?;
                Ok(RedisOut::Int(n))
            }
            RedisOp::Append => {
                let old = self.string(k, now_ms)?;
                let new = match &old {
                    Some(v) => [&v[..], args].concat(),
                    None => args.to_vec(),
                };
                self.r_write(k, &new, ValueKind::String, SetExpire::Keep, now_ms)?;
                Ok(RedisOut::Int(new.len() as i64))
            }
            RedisOp::Strlen => Ok(RedisOut::Int(
                self.string(k, now_ms)?.map_or(0, |v| v.len() as i64),
            )),
            RedisOp::GetDel => {
                let Some(v) = self.string(k, now_ms)? else {
                    return Ok(RedisOut::Nil);
                };
                self.r_remove(k, now_ms)?;
                Ok(RedisOut::Value(v))
            }
            RedisOp::GetEx { expire } => {
                let Some(v) = self.string(k, now_ms)? else {
                    return Ok(RedisOut::Nil);
                };
                if expire != SetExpire::Keep {
                    self.writable(k, now_ms)?;
                    self.r_set_expiry(k, expire, now_ms);
                }
                Ok(RedisOut::Value(v))
            }
            RedisOp::Expire { at_ms, cond } => {
                let Some(slot) = self.find_live(k, now_ms) else {
                    return Ok(RedisOut::Int(0));
                };
                let cur = self.slab[slot as usize].expires_at_ms;
                let ok = match cond {
                    ExpireCond::Always => true,
                    ExpireCond::Nx => cur == 0,
                    ExpireCond::Xx => cur != 0,
                    ExpireCond::Gt => cur != 0 && at_ms > cur,
                    ExpireCond::Lt => cur == 0 || at_ms < cur,
                };
                if !ok {
                    return Ok(RedisOut::Int(0));
                }
                self.writable(k, now_ms)?;
                if at_ms <= now_ms {
                    self.r_remove(k, now_ms)?;
                } else {
                    self.r_set_expiry(k, SetExpire::AtMs(at_ms), now_ms);
                }
                Ok(RedisOut::Int(1))
            }
            RedisOp::Persist => {
                let Some(slot) = self.find_live(k, now_ms) else {
                    return Ok(RedisOut::Int(0));
                };
                if self.slab[slot as usize].expires_at_ms == 0 {
                    return Ok(RedisOut::Int(0));
                }
                self.writable(k, now_ms)?;
                self.r_set_expiry(k, SetExpire::Clear, now_ms);
                Ok(RedisOut::Int(1))
            }
            RedisOp::Type => Ok(RedisOut::Int(match self.find_live(k, now_ms) {
                None => 0,
                Some(s) => match self.slab[s as usize].kind {
                    ValueKind::String => 1,
                    ValueKind::Hash => 2,
                },
            })),
            RedisOp::Exists => Ok(RedisOut::Int(self.find_live(k, now_ms).is_some() as i64)),
            RedisOp::Del => {
                if self.find_live(k, now_ms).is_none() {
                    return Ok(RedisOut::Int(0));
                }
                self.r_remove(k, now_ms)?;
                Ok(RedisOut::Int(1))
            }
            RedisOp::HSet { nx } => {
                let pairs = hash::decode_args(args).ok_or(StoreError::new(
                    stategrid_proto::ErrorCode::InvalidRequest,
                    0,
                ))?;
                if pairs.is_empty() || pairs.len() % 2 != 0 {
                    return Err(StoreError::new(
                        stategrid_proto::ErrorCode::InvalidRequest,
                        0,
                    ));
                }
                let old = self.hash_value(k, now_ms)?;
                let mut fields: Fields<'_> = match &old {
                    Some(v) => decode_stored(v)?,
                    None => Vec::new(),
                };
                let mut added = 0;
                for pair in pairs.chunks(2) {
                    match fields.iter_mut().find(|(f, _)| *f == pair[0]) {
                        Some(_) if nx => {}
                        Some(fv) => fv.1 = pair[1],
                        None => {
                            fields.push((pair[0], pair[1]));
                            added += 1;
                        }
                    }
                }
                if fields.len() > hash_fields_max {
                    return Err(StoreError::new(
                        stategrid_proto::ErrorCode::TooManyItems,
                        hash_fields_max as u64,
                    ));
                }
                if added > 0 || !nx {
                    let enc = hash::encode(&fields);
                    self.r_write(k, &enc, ValueKind::Hash, SetExpire::Keep, now_ms)?;
                }
                Ok(RedisOut::Int(added))
            }
            RedisOp::HIncrBy { by } => {
                let field = one_field(args)?;
                let old = self.hash_value(k, now_ms)?;
                let mut fields: Fields<'_> = match &old {
                    Some(v) => decode_stored(v)?,
                    None => Vec::new(),
                };
                let cur = match fields.iter().find(|(f, _)| *f == field) {
                    Some((_, v)) => parse_i64(v)
                        .ok_or(StoreError::new(stategrid_proto::ErrorCode::NotInteger, 2))?,
                    None => 0,
                };
                let n = cur.checked_add(by).ok_or(StoreError::OVERFLOW)?;
                let text = n.to_string();
                match fields.iter_mut().find(|(f, _)| *f == field) {
                    Some(fv) => fv.1 = text.as_bytes(),
                    None => fields.push((field, text.as_bytes())),
                }
                if fields.len() > hash_fields_max {
                    return Err(StoreError::new(
                        stategrid_proto::ErrorCode::TooManyItems,
                        hash_fields_max as u64,
                    ));
                }
                let enc = hash::encode(&fields);
                self.r_write(k, &enc, ValueKind::Hash, SetExpire::Keep, now_ms)?;
                Ok(RedisOut::Int(n))
            }
            RedisOp::HDel => {
                let names = hash::decode_args(args).ok_or(StoreError::new(
                    stategrid_proto::ErrorCode::InvalidRequest,
                    0,
                ))?;
                let Some(old) = self.hash_value(k, now_ms)? else {
                    return Ok(RedisOut::Int(0));
                };
                let mut fields = decode_stored(&old)?;
                let before = fields.len();
                fields.retain(|(f, _)| !names.contains(f));
                let removed = (before - fields.len()) as i64;
                if removed > 0 {
                    if fields.is_empty() {
                        // Redis removes a hash with no fields left.
                        self.r_remove(k, now_ms)?;
                    } else {
                        let enc = hash::encode(&fields);
                        self.r_write(k, &enc, ValueKind::Hash, SetExpire::Keep, now_ms)?;
                    }
                }
                Ok(RedisOut::Int(removed))
            }
            RedisOp::HGet
            | RedisOp::HMGet
            | RedisOp::HGetAll
            | RedisOp::HKeys
            | RedisOp::HVals
            | RedisOp::HExists
            | RedisOp::HLen
            | RedisOp::HStrlen => self.hash_read(k, op, args, now_ms),
            RedisOp::Rename { nx } => self.r_rename(k, KeyRef::new(k.ns, args), nx, now_ms),
        }
    }

    /// RENAME / RENAMENX within this store (the caller checked both names are served here):
    /// the value, its kind and its exact expiry move to `to` in one step, so no reader sees
    /// both names or neither. A native lock on either name refuses it (`Locked`), as every
    /// Redis write does. Cost: one copy of the value (the new object gets its own buffer).
    fn r_rename(
        &mut self,
        from: KeyRef<'_>,
        to: KeyRef<'_>,
        nx: bool,
        now_ms: u64,
    ) -> Result<RedisOut, StoreError> {
        let Some(slot) = self.find_live(from, now_ms) else {
            return Err(StoreError::new(stategrid_proto::ErrorCode::NotFound, 0));
        };
        let done = if nx { RedisOut::Int(1) } else { RedisOut::Ok };
        if from.key == to.key {
            // Redis: renaming a key to itself succeeds and changes nothing (RENAMENX says 0).
            return Ok(if nx { RedisOut::Int(0) } else { done });
        }
        if nx && self.find_live(to, now_ms).is_some() {
            return Ok(RedisOut::Int(0));
        }
        self.writable(from, now_ms)?;
        self.writable(to, now_ms)?;
        let e = &self.slab[slot as usize];
        let (value, kind, at, timeout) = (e.value.clone(), e.kind, e.expires_at_ms, e.timeout);
        // The whole buffer moves: the value and the content type behind it (an HTTP object
        // renamed keeps its type).
        let ct = e.content_type_bytes;
        let found = self.find_live(to, now_ms);
        self.r_write_found(to, found, &value, ct, kind, SetExpire::Clear, now_ms)?;
        let s = self.find(to).expect("just written");
        let e = &mut self.slab[s as usize];
        e.expires_at_ms = at;
        e.timeout = timeout;
        self.r_remove(from, now_ms)?;
        Ok(done)
    }

    fn hash_read(
        &mut self,
        k: KeyRef<'_>,
        op: RedisOp,
        args: &[u8],
        now_ms: u64,
    ) -> Result<RedisOut, StoreError> {
        let old = self.hash_value(k, now_ms)?;
        let fields = match &old {
            Some(v) => decode_stored(v)?,
            None => Vec::new(),
        };
        let find = |name: &[u8]| fields.iter().find(|(f, _)| *f == name).map(|(_, v)| *v);
        let list = |items: &mut dyn Iterator<Item = Option<&[u8]>>| {
            let mut out = Vec::new();
            let mut n = 0u32;
            for i in items {
                hash::push_item(&mut out, i);
                n += 1;
            }
            RedisOut::Items(out, n)
        };
        Ok(match op {
            RedisOp::HGet => match find(one_field(args)?) {
                Some(v) => RedisOut::Value(Rc::from(v)),
                None => RedisOut::Nil,
            },
            RedisOp::HExists => RedisOut::Int(find(one_field(args)?).is_some() as i64),
            RedisOp::HStrlen => RedisOut::Int(find(one_field(args)?).map_or(0, |v| v.len() as i64)),
            RedisOp::HLen => RedisOut::Int(fields.len() as i64),
            RedisOp::HMGet => {
                let names = hash::decode_args(args).ok_or(StoreError::new(
                    stategrid_proto::ErrorCode::InvalidRequest,
                    0,
                ))?;
                list(&mut names.iter().map(|n| find(n)))
            }
            RedisOp::HGetAll => list(&mut fields.iter().flat_map(|(f, v)| [Some(*f), Some(*v)])),
            RedisOp::HKeys => list(&mut fields.iter().map(|(f, _)| Some(*f))),
            RedisOp::HVals => list(&mut fields.iter().map(|(_, v)| Some(*v))),
            _ => unreachable!("hash_read serves hash reads"),
        })
    }

    fn r_set(
        &mut self,
        k: KeyRef<'_>,
        value: &[u8],
        cond: SetCond,
        expire: SetExpire,
        get: bool,
        now_ms: u64,
    ) -> Result<RedisOut, StoreError> {
        let slot = self.find_live(k, now_ms);
        let old = match slot {
            Some(s) if get => {
                let e = &self.slab[s as usize];
                if e.kind != ValueKind::String {
                    return Err(StoreError::WRONG_TYPE);
                }
                Some(string_value(e))
            }
            _ => None,
        };
        let skip = match cond {
            SetCond::Always => false,
            SetCond::IfAbsent => slot.is_some(),
            SetCond::IfPresent => slot.is_none(),
        };
        let answer = |old: Option<Value>, done: bool| match (get, old) {
            (true, Some(v)) => RedisOut::Value(v),
            (true, None) => RedisOut::Nil,
            (false, _) if done => RedisOut::Ok,
            (false, _) => RedisOut::Nil,
        };
        if skip {
            return Ok(answer(old, false));
        }
        // The slot found above is still k's: a plain SET probes the table once.
        self.r_write_found(k, slot, value, 0, ValueKind::String, expire, now_ms)?;
        Ok(answer(old, true))
    }

    /// The object's value if it is a live string; `WrongType` if it is another kind.
    fn string(&mut self, k: KeyRef<'_>, now_ms: u64) -> Result<Option<Value>, StoreError> {
        let Some(slot) = self.find_live(k, now_ms) else {
            return Ok(None);
        };
        self.note_read(slot, now_ms);
        let e = &self.slab[slot as usize];
        if e.kind != ValueKind::String {
            return Err(StoreError::WRONG_TYPE);
        }
        Ok(Some(string_value(e)))
    }

    /// The object's value if it is a live hash; `WrongType` if it is another kind.
    fn hash_value(&mut self, k: KeyRef<'_>, now_ms: u64) -> Result<Option<Value>, StoreError> {
        let Some(slot) = self.find_live(k, now_ms) else {
            return Ok(None);
        };
        self.note_read(slot, now_ms);
        let e = &self.slab[slot as usize];
        if e.kind != ValueKind::Hash {
            return Err(StoreError::WRONG_TYPE);
        }
        Ok(Some(e.value.clone()))
    }

    /// Fails with `Locked` when a native client holds the object's lock.
    fn writable(&self, k: KeyRef<'_>, now_ms: u64) -> Result<(), StoreError> {
        match self.find(k) {
            Some(s) => permit(&self.slab[s as usize], None, now_ms),
            None => Ok(()),
        }
    }

    /// Creates or replaces the object with `value` of `kind`, respecting locks, then applies
    /// `expire`. One version bump.
    fn r_write(
        &mut self,
        k: KeyRef<'_>,
        value: &[u8],
        kind: ValueKind,
        expire: SetExpire,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        // A Redis write stores bytes of no declared type: it clears an HTTP content type.
        let found = self.find_live(k, now_ms);
        self.r_write_found(k, found, value, 0, kind, expire, now_ms)
    }

    /// `r_write` given `found`, what `find_live(k)` returned just before (no change to the
    /// store in between), of a trailer whose last `content_type_bytes` are a content type
    /// (RENAME keeps it). HOT PATH of SET: no table probe of its own (it made five before: the
    /// lock check, the kept deadline, the write, the kind, the expiry).
    #[allow(clippy::too_many_arguments)]
    fn r_write_found(
        &mut self,
        k: KeyRef<'_>,
        found: Option<u32>,
        value: &[u8],
        content_type_bytes: u8,
        kind: ValueKind,
        expire: SetExpire,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        // Keep the deadline across the write when asked to: `put` without a timeout keeps an
        // Absolute one, but a Sliding one set natively would restart; restore it exactly.
        let kept = match found {
            Some(s) => {
                let e = &self.slab[s as usize];
                permit(e, None, now_ms)?;
                Some((e.expires_at_ms, e.timeout))
            }
            None => None,
        };
        let opts = WriteOpts {
            timeout: None,
            evictable: true,
            content_type_bytes,
        };
        let (slot, _) = self.write_found(k, found, value, opts, WriteMode::Put, now_ms)?;
        let e = &mut self.slab[slot as usize];
        e.kind = kind;
        match expire {
            SetExpire::Keep => {
                if let Some((at, t)) = kept {
                    e.expires_at_ms = at;
                    e.timeout = t;
                }
            }
            other => self.set_expiry_at(slot, other, now_ms),
        }
        Ok(())
    }

    /// Sets the live object's expiry (checks done by the caller). Bumps the version: the
    /// change must replicate.
    fn r_set_expiry(&mut self, k: KeyRef<'_>, expire: SetExpire, now_ms: u64) {
        if let Some(slot) = self.find(k) {
            self.set_expiry_at(slot, expire, now_ms);
        }
    }

    /// [`Store::r_set_expiry`] of the object in `slot`.
    fn set_expiry_at(&mut self, slot: u32, expire: SetExpire, now_ms: u64) {
        let e = &mut self.slab[slot as usize];
        match expire {
            SetExpire::Keep => return,
            SetExpire::Clear => {
                e.expires_at_ms = 0;
                e.timeout = Timeout::default();
            }
            SetExpire::AtMs(at) => {
                e.expires_at_ms = at.max(1);
                e.timeout = absolute_timeout(at, now_ms);
            }
        }
        e.version += 1;
    }

    fn r_remove(&mut self, k: KeyRef<'_>, now_ms: u64) -> Result<(), StoreError> {
        self.writable(k, now_ms)?;
        if let Some(s) = self.find(k) {
            self.remove_slot(s);
        }
        Ok(())
    }
}

/// A string object's value as Redis sees it: the stored buffer by reference, or, for an object
/// written over HTTP with a content type behind its value, a copy of the value alone (one
/// allocation; RESP never sees the content type).
fn string_value(e: &super::entry::Entry) -> Value {
    if e.content_type_bytes == 0 {
        e.value.clone()
    } else {
        Value::from(e.value_only())
    }
}

fn decode_stored(v: &[u8]) -> Result<Fields<'_>, StoreError> {
    hash::decode(v).ok_or(StoreError::new(stategrid_proto::ErrorCode::Internal, 0))
}

fn one_field(args: &[u8]) -> Result<&[u8], StoreError> {
    match hash::decode_args(args).as_deref() {
        Some([f]) => Ok(f),
        _ => Err(StoreError::new(
            stategrid_proto::ErrorCode::InvalidRequest,
            0,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreLimits;
    use stategrid_proto::hash::redis_ns;

    const NOW: u64 = 1_000_000;

    fn store() -> Store {
        Store::new(StoreLimits::default(), 1)
    }

    fn k(key: &[u8]) -> KeyRef<'_> {
        KeyRef::new(redis_ns(0), key)
    }

    fn args(items: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for i in items {
            hash::push_item(&mut out, Some(i));
        }
        out
    }

    fn set(s: &mut Store, key: &[u8], v: &[u8]) -> RedisOut {
        let op = RedisOp::Set {
            cond: SetCond::Always,
            expire: SetExpire::Clear,
            get: false,
        };
        s.redis(k(key), op, v, 100, NOW).unwrap()
    }

    #[test]
    fn strings_incr_append_and_wrongtype() {
        let mut s = store();
        assert_eq!(set(&mut s, b"n", b"41"), RedisOut::Ok);
        assert_eq!(
            s.redis(k(b"n"), RedisOp::IncrBy { by: 1 }, b"", 100, NOW),
            Ok(RedisOut::Int(42))
        );
        assert_eq!(
            s.redis(k(b"n"), RedisOp::Append, b"x", 100, NOW),
            Ok(RedisOut::Int(3))
        );
        assert_eq!(
            s.redis(k(b"n"), RedisOp::IncrBy { by: 1 }, b"", 100, NOW),
            Err(StoreError::NOT_INTEGER)
        );
        set(&mut s, b"big", i64::MAX.to_string().as_bytes());
        assert_eq!(
            s.redis(k(b"big"), RedisOp::IncrBy { by: 1 }, b"", 100, NOW),
            Err(StoreError::OVERFLOW)
        );
        let hs = args(&[b"f", b"v"]);
        assert_eq!(
            s.redis(k(b"h"), RedisOp::HSet { nx: false }, &hs, 100, NOW),
            Ok(RedisOut::Int(1))
        );
        assert_eq!(
            s.redis(k(b"h"), RedisOp::Get, b"", 100, NOW),
            Err(StoreError::WRONG_TYPE)
        );
        // A native read of a hash is a typed error too.
        assert_eq!(
            s.read(k(b"h"), NOW).unwrap_err().code,
            stategrid_proto::ErrorCode::WrongType
        );
        assert_eq!(
            s.redis(k(b"n"), RedisOp::HLen, b"", 100, NOW),
            Err(StoreError::WRONG_TYPE)
        );
    }

    #[test]
    fn hash_fields_and_kind_in_state() {
        let mut s = store();
        let hs = args(&[b"a", b"1", b"b", b"2"]);
        assert_eq!(
            s.redis(k(b"h"), RedisOp::HSet { nx: false }, &hs, 3, NOW),
            Ok(RedisOut::Int(2))
        );
        assert_eq!(
            s.redis(
                k(b"h"),
                RedisOp::HSet { nx: true },
                &args(&[b"a", b"9"]),
                3,
                NOW
            ),
            Ok(RedisOut::Int(0))
        );
        assert_eq!(
            s.redis(k(b"h"), RedisOp::HGet, &args(&[b"a"]), 3, NOW),
            Ok(RedisOut::Value(Rc::from(&b"1"[..])))
        );
        assert_eq!(
            s.redis(k(b"h"), RedisOp::HIncrBy { by: 5 }, &args(&[b"a"]), 3, NOW),
            Ok(RedisOut::Int(6))
        );
        // The limit counts fields.
        let many = args(&[b"c", b"3", b"d", b"4"]);
        assert_eq!(
            s.redis(k(b"h"), RedisOp::HSet { nx: false }, &many, 3, NOW)
                .unwrap_err()
                .code,
            stategrid_proto::ErrorCode::TooManyItems
        );
        let RedisOut::Items(items, 4) = s.redis(k(b"h"), RedisOp::HGetAll, b"", 3, NOW).unwrap()
        else {
            panic!("HGETALL answers 4 items")
        };
        assert_eq!(
            hash::decode_items(&items, 4).unwrap(),
            vec![Some(&b"a"[..]), Some(b"6"), Some(b"b"), Some(b"2")]
        );
        // Replication carries the kind.
        let (state, value) = s.export(k(b"h"), NOW).unwrap();
        assert_eq!(state.kind, ValueKind::Hash);
        let mut replica = store();
        replica.install(k(b"h"), &state, &value, NOW).unwrap();
        assert_eq!(
            replica.redis(k(b"h"), RedisOp::HLen, b"", 3, NOW),
            Ok(RedisOut::Int(2))
        );
        // Deleting every field removes the hash.
        assert_eq!(
            s.redis(k(b"h"), RedisOp::HDel, &args(&[b"a", b"b", b"zz"]), 3, NOW),
            Ok(RedisOut::Int(2))
        );
        assert_eq!(
            s.redis(k(b"h"), RedisOp::Exists, b"", 3, NOW),
            Ok(RedisOut::Int(0))
        );
    }

    #[test]
    fn set_conditions_expiry_and_locks() {
        let mut s = store();
        let nx = RedisOp::Set {
            cond: SetCond::IfAbsent,
            expire: SetExpire::AtMs(NOW + 1500),
            get: false,
        };
        assert_eq!(s.redis(k(b"a"), nx, b"1", 9, NOW), Ok(RedisOut::Ok));
        assert_eq!(s.redis(k(b"a"), nx, b"2", 9, NOW), Ok(RedisOut::Nil));
        assert_eq!(s.meta(k(b"a"), NOW).unwrap().expires_in_ms, Some(1500));
        // KEEPTTL keeps the deadline; a plain SET clears it.
        let keep = RedisOp::Set {
            cond: SetCond::Always,
            expire: SetExpire::Keep,
            get: true,
        };
        assert_eq!(
            s.redis(k(b"a"), keep, b"3", 9, NOW + 100),
            Ok(RedisOut::Value(Rc::from(&b"1"[..])))
        );
        assert_eq!(
            s.meta(k(b"a"), NOW + 100).unwrap().expires_in_ms,
            Some(1400)
        );
        let gt = RedisOp::Expire {
            at_ms: NOW + 1000,
            cond: ExpireCond::Gt,
        };
        assert_eq!(s.redis(k(b"a"), gt, b"", 9, NOW), Ok(RedisOut::Int(0)));
        assert_eq!(
            s.redis(k(b"a"), RedisOp::Persist, b"", 9, NOW),
            Ok(RedisOut::Int(1))
        );
        assert_eq!(s.meta(k(b"a"), NOW).unwrap().expires_in_ms, None);
        // Expired objects are gone.
        let soon = RedisOp::Expire {
            at_ms: NOW + 10,
            cond: ExpireCond::Always,
        };
        assert_eq!(s.redis(k(b"a"), soon, b"", 9, NOW), Ok(RedisOut::Int(1)));
        assert_eq!(
            s.redis(k(b"a"), RedisOp::Get, b"", 9, NOW + 10),
            Ok(RedisOut::Nil)
        );
        // A native lock is respected by Redis writes, not broken.
        set(&mut s, b"l", b"v");
        let (_, _, _token) = s.read_and_lock(k(b"l"), NOW).unwrap();
        assert_eq!(set_err(&mut s, b"l"), stategrid_proto::ErrorCode::Locked);
        assert_eq!(
            s.redis(k(b"l"), RedisOp::Del, b"", 9, NOW)
                .unwrap_err()
                .code,
            stategrid_proto::ErrorCode::Locked
        );
        assert_eq!(
            s.redis(k(b"l"), RedisOp::Get, b"", 9, NOW),
            Ok(RedisOut::Value(Rc::from(&b"v"[..])))
        );
    }

    fn set_err(s: &mut Store, key: &[u8]) -> stategrid_proto::ErrorCode {
        let op = RedisOp::Set {
            cond: SetCond::Always,
            expire: SetExpire::Clear,
            get: false,
        };
        s.redis(k(key), op, b"x", 9, NOW).unwrap_err().code
    }

    #[test]
    fn integers_parse_as_redis_does() {
        assert_eq!(parse_i64(b"-12"), Some(-12));
        assert_eq!(parse_i64(b"0"), Some(0));
        for bad in [
            &b""[..],
            b" 1",
            b"+1",
            b"01",
            b"1.0",
            b"-0",
            b"99999999999999999999",
        ] {
            assert_eq!(parse_i64(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn rename_moves_value_kind_and_expiry_and_respects_locks() {
        let mut s = store();
        let ren = |nx| RedisOp::Rename { nx };
        // Absent: NotFound, nothing created.
        let e = s.redis(k(b"a"), ren(false), b"b", 100, NOW).unwrap_err();
        assert_eq!(e.code, stategrid_proto::ErrorCode::NotFound);
        assert_eq!(s.find_live(k(b"b"), NOW), None);
        // A string with an expiry: value and exact deadline move; the old name is gone.
        let op = RedisOp::Set {
            cond: SetCond::Always,
            expire: SetExpire::AtMs(NOW + 5_000),
            get: false,
        };
        s.redis(k(b"a"), op, b"v", 100, NOW).unwrap();
        assert_eq!(
            s.redis(k(b"a"), ren(false), b"b", 100, NOW),
            Ok(RedisOut::Ok)
        );
        assert_eq!(s.find_live(k(b"a"), NOW), None);
        let slot = s.find_live(k(b"b"), NOW).unwrap();
        assert_eq!(s.slab[slot as usize].expires_at_ms, NOW + 5_000);
        assert_eq!(&s.slab[slot as usize].value[..], b"v");
        // Past the deadline the renamed key expires as the original would have.
        assert_eq!(s.find_live(k(b"b"), NOW + 5_001), None);
        // A hash keeps its kind, replacing what the new name held.
        s.redis(
            k(b"h"),
            RedisOp::HSet { nx: false },
            &args(&[b"f", b"v"]),
            100,
            NOW,
        )
        .unwrap();
        set(&mut s, b"c", b"old");
        assert_eq!(
            s.redis(k(b"h"), ren(false), b"c", 100, NOW),
            Ok(RedisOut::Ok)
        );
        let slot = s.find_live(k(b"c"), NOW).unwrap();
        assert_eq!(s.slab[slot as usize].kind, ValueKind::Hash);
        assert_eq!(s.slab[slot as usize].expires_at_ms, 0);
        // RENAMENX: 0 onto an existing name, 1 to a free one; to itself 0 (RENAME: OK).
        set(&mut s, b"d", b"x");
        assert_eq!(
            s.redis(k(b"c"), ren(true), b"d", 100, NOW),
            Ok(RedisOut::Int(0))
        );
        assert_eq!(
            s.redis(k(b"c"), ren(true), b"e", 100, NOW),
            Ok(RedisOut::Int(1))
        );
        assert_eq!(
            s.redis(k(b"e"), ren(true), b"e", 100, NOW),
            Ok(RedisOut::Int(0))
        );
        assert_eq!(
            s.redis(k(b"e"), ren(false), b"e", 100, NOW),
            Ok(RedisOut::Ok)
        );
        // A native lock on either name refuses it; nothing changes.
        let _ = s.read_and_lock(k(b"d"), NOW).unwrap();
        let e = s.redis(k(b"d"), ren(false), b"z", 100, NOW).unwrap_err();
        assert_eq!(e.code, stategrid_proto::ErrorCode::Locked);
        let e = s.redis(k(b"e"), ren(false), b"d", 100, NOW).unwrap_err();
        assert_eq!(e.code, stategrid_proto::ErrorCode::Locked);
        assert!(s.find_live(k(b"e"), NOW).is_some());
        assert!(s.find_live(k(b"z"), NOW).is_none());
    }
}
