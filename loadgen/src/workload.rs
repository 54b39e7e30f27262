//! The workload: what one connection slot sends next. No I/O and no protocol: a codec turns a
//! [`Planned`] operation into bytes, and the event loop feeds replies back through
//! [`session_after`]. Everything here is driven by a seeded RNG, so a seed reproduces a run's
//! sequence of keys, sizes and operations exactly (per thread).

use std::fmt;
use std::str::FromStr;

use rand::Rng;
use rand::rngs::SmallRng;
use rand_distr::{Distribution, Zipf};
use serde::Serialize;

use crate::codec::Status;

/// Keys are `lg:` and ten decimal digits: every key has the same length, so key length never
/// skews one protocol against another.
pub const KEY_PREFIX: &[u8] = b"lg:";
pub const KEY_DIGITS: usize = 10;
pub const KEY_BYTES: usize = KEY_PREFIX.len() + KEY_DIGITS;
/// The largest key space the fixed-width key format can name.
pub const KEYS_MAX: u64 = 10_000_000_000;
/// The largest value; memcached's default item limit is 1 MiB, Redis's 512 MiB.
pub const VALUE_BYTES_MAX: usize = 16 << 20;

/// Writes key `index` (`lg:0000000042`) into `out`. No allocation.
#[inline]
pub fn write_key(out: &mut [u8; KEY_BYTES], index: u64) {
    debug_assert!(index < KEYS_MAX, "key index {index} beyond KEYS_MAX");
    out[..KEY_PREFIX.len()].copy_from_slice(KEY_PREFIX);
    let mut n = index;
    for i in (KEY_PREFIX.len()..KEY_BYTES).rev() {
        out[i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

/// One operation of the workload, as the event loop tracks it and the report names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OpKind {
    /// Read a value (native `Read`, RESP `GET`, memcached `get`).
    Get,
    /// Write a value (native `Put`, RESP `SET`, memcached `set`). Prefill uses it too.
    Put,
    /// Session start: read and take the lock (see the codecs for the RESP/memcached pairs).
    LockRead,
    /// Session end: write back and release the lock.
    UpdateUnlock,
    /// Session start found no session: create it (and release the lock if one was taken).
    SessionCreate,
}

impl OpKind {
    pub const COUNT: usize = 5;
    pub const ALL: [OpKind; OpKind::COUNT] = [
        OpKind::Get,
        OpKind::Put,
        OpKind::LockRead,
        OpKind::UpdateUnlock,
        OpKind::SessionCreate,
    ];

    #[inline]
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            OpKind::Get => "get",
            OpKind::Put => "put",
            OpKind::LockRead => "read-and-lock",
            OpKind::UpdateUnlock => "update-and-unlock",
            OpKind::SessionCreate => "session-create",
        }
    }

    /// Does the request carry a value?
    #[inline]
    pub fn writes(self) -> bool {
        matches!(
            self,
            OpKind::Put | OpKind::UpdateUnlock | OpKind::SessionCreate
        )
    }
}

/// How keys are drawn from `0..keys`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum KeyDist {
    Uniform,
    /// Zipf with exponent `theta` (YCSB's 0.99 is the usual "skewed"): rank 1 is key 0.
    Zipf {
        theta: f64,
    },
}

impl FromStr for KeyDist {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "uniform" {
            return Ok(KeyDist::Uniform);
        }
        if let Some(t) = s.strip_prefix("zipf:") {
            let theta: f64 = t
                .parse()
                .map_err(|_| format!("zipf theta '{t}' is not a number"))?;
            if !(theta.is_finite() && theta > 0.0 && theta <= 10.0) {
                return Err(format!("zipf theta {theta} must be in (0, 10]"));
            }
            return Ok(KeyDist::Zipf { theta });
        }
        Err(format!(
            "key distribution '{s}': expected 'uniform' or 'zipf:THETA' (e.g. zipf:0.99)"
        ))
    }
}

impl fmt::Display for KeyDist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyDist::Uniform => f.write_str("uniform"),
            KeyDist::Zipf { theta } => write!(f, "zipf:{theta}"),
        }
    }
}

/// Draws key indexes. Zipf uses rejection-inversion (rand_distr): O(1) memory and time, so a
/// billion-key space costs nothing to set up.
#[derive(Clone, Debug)]
pub struct KeySampler {
    keys: u64,
    zipf: Option<Zipf<f64>>,
}

impl KeySampler {
    pub fn new(keys: u64, dist: KeyDist) -> Result<Self, String> {
        if keys == 0 || keys > KEYS_MAX {
            return Err(format!("--keys {keys} must be in 1..={KEYS_MAX}"));
        }
        let zipf = match dist {
            KeyDist::Uniform => None,
            KeyDist::Zipf { theta } => Some(
                Zipf::new(keys as f64, theta).map_err(|e| format!("zipf({keys}, {theta}): {e}"))?,
            ),
        };
        Ok(KeySampler { keys, zipf })
    }

    #[inline]
    pub fn sample(&self, rng: &mut SmallRng) -> u64 {
        match &self.zipf {
            None => rng.random_range(0..self.keys),
            // Zipf yields ranks 1..=keys as floats; rank 1 is the hottest.
            Some(z) => (z.sample(rng) as u64).clamp(1, self.keys) - 1,
        }
    }
}

/// GET:PUT weights, e.g. `90:10`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Ratio {
    pub get: u32,
    pub put: u32,
}

impl FromStr for Ratio {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (g, p) = s
            .split_once(':')
            .ok_or_else(|| format!("ratio '{s}': expected GET:PUT, e.g. 90:10 or 1:0"))?;
        let get: u32 = g
            .trim()
            .parse()
            .map_err(|_| format!("ratio '{s}': '{g}' is not a whole number"))?;
        let put: u32 = p
            .trim()
            .parse()
            .map_err(|_| format!("ratio '{s}': '{p}' is not a whole number"))?;
        if get == 0 && put == 0 {
            return Err(format!("ratio '{s}': GET and PUT cannot both be 0"));
        }
        if get > 1_000_000 || put > 1_000_000 {
            return Err(format!("ratio '{s}': weights above 1000000 are not useful"));
        }
        Ok(Ratio { get, put })
    }
}

impl fmt::Display for Ratio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.get, self.put)
    }
}

impl Ratio {
    #[inline]
    pub fn choose(&self, rng: &mut SmallRng) -> OpKind {
        if self.put == 0 {
            return OpKind::Get;
        }
        if self.get == 0 {
            return OpKind::Put;
        }
        if rng.random_range(0..self.get + self.put) < self.get {
            OpKind::Get
        } else {
            OpKind::Put
        }
    }
}

/// Value size: fixed, or uniform over an inclusive range (`MIN..MAX`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ValueSize {
    pub min: usize,
    pub max: usize,
}

impl FromStr for ValueSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parse = |t: &str| -> Result<usize, String> {
            t.trim()
                .parse::<usize>()
                .map_err(|_| format!("value size '{s}': '{t}' is not a byte count"))
        };
        let (min, max) = match s.split_once("..") {
            Some((a, b)) => (parse(a)?, parse(b.strip_prefix('=').unwrap_or(b))?),
            None => {
                let n = parse(s)?;
                (n, n)
            }
        };
        if min > max {
            return Err(format!("value size '{s}': MIN {min} is above MAX {max}"));
        }
        if max > VALUE_BYTES_MAX {
            return Err(format!(
                "value size '{s}': above the {VALUE_BYTES_MAX}-byte limit"
            ));
        }
        if max == 0 {
            return Err(format!(
                "value size '{s}': values must have at least one byte"
            ));
        }
        Ok(ValueSize { min, max })
    }
}

impl fmt::Display for ValueSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.min == self.max {
            write!(f, "{}", self.min)
        } else {
            write!(f, "{}..{}", self.min, self.max)
        }
    }
}

impl ValueSize {
    #[inline]
    pub fn sample(&self, rng: &mut SmallRng) -> usize {
        if self.min == self.max {
            self.min
        } else {
            rng.random_range(self.min..=self.max)
        }
    }
}

/// Where one slot is in the session-provider cycle. A slot is one virtual user: with
/// `--pipeline D` a connection carries D slots, each with at most one request outstanding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Session {
    /// Holds nothing; next, read-and-lock a fresh key.
    #[default]
    Idle,
    /// Holds `key`'s lock with `token`; next, write the session back and unlock.
    Locked { key: u64, token: u64 },
    /// `key` had no session; next, create it (releasing the lock if the protocol took one:
    /// RESP and memcached lock before they read, native does not lock a missing object).
    Missing { key: u64, token: u64 },
}

/// One operation to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Planned {
    pub kind: OpKind,
    pub key: u64,
    /// The lock token: the server's (native) or one this client chose (RESP, memcached).
    pub token: u64,
}

/// The operation mix, shared by every slot of a thread.
#[derive(Clone, Debug)]
pub struct Workload {
    pub sampler: KeySampler,
    pub ratio: Ratio,
    pub value: ValueSize,
    pub session: bool,
}

impl Workload {
    /// The next operation for a slot in state `session`.
    #[inline]
    pub fn next(&self, session: Session, rng: &mut SmallRng) -> Planned {
        if !self.session {
            return Planned {
                kind: self.ratio.choose(rng),
                key: self.sampler.sample(rng),
                token: 0,
            };
        }
        match session {
            Session::Idle => Planned {
                kind: OpKind::LockRead,
                key: self.sampler.sample(rng),
                // Non-zero so a token is never mistaken for "no token" in a dump.
                token: rng.random::<u64>() | 1,
            },
            Session::Locked { key, token } => Planned {
                kind: OpKind::UpdateUnlock,
                key,
                token,
            },
            Session::Missing { key, token } => Planned {
                kind: OpKind::SessionCreate,
                key,
                token,
            },
        }
    }
}

/// The session state after `op` was answered with `status` (and, for native, the server's
/// lock token). Non-session operations leave the state `Idle`.
///
/// A lock that another slot holds (`Busy`) or a failed lock ends the cycle: the slot starts
/// over on a new key, as a session provider's request would give up and retry later.
#[inline]
pub fn session_after(op: &Planned, status: &Status, server_token: Option<u64>) -> Session {
    match (op.kind, status) {
        (OpKind::LockRead, Status::Ok) => Session::Locked {
            key: op.key,
            token: server_token.unwrap_or(op.token),
        },
        (OpKind::LockRead, Status::Miss) => Session::Missing {
            key: op.key,
            token: op.token,
        },
        _ => Session::Idle,
    }
}

/// The open-loop arrival schedule of one thread: arrival `i` is intended at
/// `start_ns + i * period`, rounded up to the nanosecond. Integer arithmetic in femtoseconds, so
/// a long run does not drift (under 1 ns per million arrivals), and no queue is kept: the arrivals not yet sent are just the index range
/// `sent..due(now)`, whatever the backlog.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    start_ns: u64,
    period_fs: u64,
}

impl Schedule {
    /// `rate` arrivals per second for this thread (at least 1); `offset_ns` staggers threads
    /// so their arrivals interleave instead of landing together.
    pub fn new(start_ns: u64, rate: f64, offset_ns: u64) -> Self {
        assert!(
            rate >= 1.0 && rate.is_finite(),
            "rate must be at least 1 per second"
        );
        let period_fs = (1e15 / rate).round().max(1.0) as u64;
        Schedule {
            start_ns: start_ns + offset_ns,
            period_fs,
        }
    }

    /// Nanoseconds between arrivals (rounded).
    pub fn period_ns(&self) -> u64 {
        self.period_fs / 1_000_000
    }

    /// When arrival `i` should be sent.
    #[inline]
    pub fn intended_ns(&self, i: u64) -> u64 {
        self.start_ns + (i as u128 * self.period_fs as u128).div_ceil(1_000_000) as u64
    }

    /// How many arrivals are due by `now_ns` (arrivals `0..due` have intended time <= now).
    #[inline]
    pub fn due(&self, now_ns: u64) -> u64 {
        if now_ns < self.start_ns {
            return 0;
        }
        (((now_ns - self.start_ns) as u128 * 1_000_000) / self.period_fs as u128) as u64 + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::ServerError;
    use rand::SeedableRng;

    fn rng() -> SmallRng {
        SmallRng::seed_from_u64(7)
    }

    #[test]
    fn keys_are_fixed_width() {
        let mut k = [0u8; KEY_BYTES];
        write_key(&mut k, 42);
        assert_eq!(&k, b"lg:0000000042");
        write_key(&mut k, KEYS_MAX - 1);
        assert_eq!(&k, b"lg:9999999999");
    }

    #[test]
    fn parse_ratio_dist_value_size() {
        assert_eq!(
            "90:10".parse::<Ratio>().unwrap(),
            Ratio { get: 90, put: 10 }
        );
        assert_eq!("1:0".parse::<Ratio>().unwrap(), Ratio { get: 1, put: 0 });
        assert!("0:0".parse::<Ratio>().is_err());
        assert!("90".parse::<Ratio>().is_err());
        assert!("a:b".parse::<Ratio>().is_err());
        assert_eq!("uniform".parse::<KeyDist>().unwrap(), KeyDist::Uniform);
        assert_eq!(
            "zipf:0.99".parse::<KeyDist>().unwrap(),
            KeyDist::Zipf { theta: 0.99 }
        );
        assert!("zipf:".parse::<KeyDist>().is_err());
        assert!("zipf:-1".parse::<KeyDist>().is_err());
        assert!("gauss".parse::<KeyDist>().is_err());
        assert_eq!(
            "1024".parse::<ValueSize>().unwrap(),
            ValueSize {
                min: 1024,
                max: 1024
            }
        );
        assert_eq!(
            "10..20".parse::<ValueSize>().unwrap(),
            ValueSize { min: 10, max: 20 }
        );
        assert_eq!(
            "10..=20".parse::<ValueSize>().unwrap(),
            ValueSize { min: 10, max: 20 }
        );
        assert!("20..10".parse::<ValueSize>().is_err());
        assert!("0".parse::<ValueSize>().is_err());
        assert!("1..99999999999".parse::<ValueSize>().is_err());
    }

    #[test]
    fn ratio_mix_matches_weights() {
        let r: Ratio = "90:10".parse().unwrap();
        let mut rng = rng();
        let n = 100_000;
        let gets = (0..n).filter(|_| r.choose(&mut rng) == OpKind::Get).count();
        // 90% of 100k; the binomial standard deviation is ~95, so 1000 is > 10 sigma.
        assert!((89_000..=91_000).contains(&gets), "gets {gets}");
        let only_get: Ratio = "1:0".parse().unwrap();
        assert!((0..1000).all(|_| only_get.choose(&mut rng) == OpKind::Get));
        let only_put: Ratio = "0:3".parse().unwrap();
        assert!((0..1000).all(|_| only_put.choose(&mut rng) == OpKind::Put));
    }

    #[test]
    fn value_sizes_stay_in_range_and_cover_it() {
        let v: ValueSize = "100..103".parse().unwrap();
        let mut rng = rng();
        let mut seen = [false; 4];
        for _ in 0..10_000 {
            let n = v.sample(&mut rng);
            assert!((100..=103).contains(&n));
            seen[n - 100] = true;
        }
        assert!(
            seen.iter().all(|s| *s),
            "both ends of an inclusive range are drawn"
        );
        let f: ValueSize = "1024".parse().unwrap();
        assert!((0..100).all(|_| f.sample(&mut rng) == 1024));
    }

    #[test]
    fn uniform_keys_cover_the_space() {
        let s = KeySampler::new(10, KeyDist::Uniform).unwrap();
        let mut rng = rng();
        let mut counts = [0u32; 10];
        for _ in 0..100_000 {
            counts[s.sample(&mut rng) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (9_000..=11_000).contains(&c)),
            "{counts:?}"
        );
        assert!(KeySampler::new(0, KeyDist::Uniform).is_err());
    }

    #[test]
    fn zipf_is_skewed_toward_low_keys() {
        let keys = 100_000;
        let s = KeySampler::new(keys, KeyDist::Zipf { theta: 0.99 }).unwrap();
        let mut rng = rng();
        let n = 200_000;
        let mut hot = 0; // the hottest 1% of keys
        let mut key0 = 0;
        for _ in 0..n {
            let k = s.sample(&mut rng);
            assert!(k < keys);
            if k < keys / 100 {
                hot += 1;
            }
            if k == 0 {
                key0 += 1;
            }
        }
        // With theta 0.99 over 100k keys the top 1% of keys draw about 60% of accesses and
        // key 0 alone about 8%; uniform would give 1% and 0.001%.
        assert!(hot > n / 2, "hot {hot}");
        assert!(key0 > n / 20, "key0 {key0}");
        // Higher theta, more skew.
        let s2 = KeySampler::new(keys, KeyDist::Zipf { theta: 1.2 }).unwrap();
        let key0_b = (0..n).filter(|_| s2.sample(&mut rng) == 0).count();
        assert!(key0_b > key0, "{key0_b} vs {key0}");
    }

    #[test]
    fn same_seed_same_sequence() {
        let w = Workload {
            sampler: KeySampler::new(1000, KeyDist::Zipf { theta: 0.99 }).unwrap(),
            ratio: "50:50".parse().unwrap(),
            value: "10..100".parse().unwrap(),
            session: false,
        };
        let (mut a, mut b) = (rng(), rng());
        for _ in 0..1000 {
            assert_eq!(w.next(Session::Idle, &mut a), w.next(Session::Idle, &mut b));
        }
    }

    #[test]
    fn session_cycle_state_machine() {
        let w = Workload {
            sampler: KeySampler::new(1000, KeyDist::Uniform).unwrap(),
            ratio: "1:0".parse().unwrap(),
            value: "16".parse().unwrap(),
            session: true,
        };
        let mut rng = rng();
        // Idle -> read-and-lock a key with a fresh non-zero token.
        let lock = w.next(Session::Idle, &mut rng);
        assert_eq!(lock.kind, OpKind::LockRead);
        assert_ne!(lock.token, 0);
        // Locked (server token wins over ours) -> update-and-unlock with that token and key.
        let s = session_after(&lock, &Status::Ok, Some(99));
        assert_eq!(
            s,
            Session::Locked {
                key: lock.key,
                token: 99
            }
        );
        let upd = w.next(s, &mut rng);
        assert_eq!(
            (upd.kind, upd.key, upd.token),
            (OpKind::UpdateUnlock, lock.key, 99)
        );
        assert_eq!(session_after(&upd, &Status::Ok, None), Session::Idle);
        // RESP/memcached: no server token, ours is kept.
        assert_eq!(
            session_after(&lock, &Status::Ok, None),
            Session::Locked {
                key: lock.key,
                token: lock.token
            }
        );
        // Missing session -> create it with the same key and token, then idle.
        let s = session_after(&lock, &Status::Miss, None);
        let create = w.next(s, &mut rng);
        assert_eq!(
            (create.kind, create.key, create.token),
            (OpKind::SessionCreate, lock.key, lock.token)
        );
        assert_eq!(session_after(&create, &Status::Ok, None), Session::Idle);
        // Held by someone else, or failed: give up on this key.
        assert_eq!(session_after(&lock, &Status::Busy, None), Session::Idle);
        let err = Status::Error(ServerError::new("ERR"));
        assert_eq!(session_after(&lock, &err, None), Session::Idle);
        // A failed update still ends the cycle (the lock expires server-side).
        assert_eq!(session_after(&upd, &err, None), Session::Idle);
        // Non-session workloads never leave Idle.
        let get = Planned {
            kind: OpKind::Get,
            key: 1,
            token: 0,
        };
        assert_eq!(session_after(&get, &Status::Ok, None), Session::Idle);
    }

    #[test]
    fn open_loop_schedule_is_exact() {
        // 1000 ops/s starting at 5 ms: one arrival per millisecond.
        let s = Schedule::new(5_000_000, 1000.0, 0);
        assert_eq!(s.intended_ns(0), 5_000_000);
        assert_eq!(s.intended_ns(1), 6_000_000);
        assert_eq!(s.intended_ns(1_000_000), 5_000_000 + 1_000_000_000_000);
        assert_eq!(s.due(4_999_999), 0);
        assert_eq!(s.due(5_000_000), 1);
        assert_eq!(s.due(5_999_999), 1);
        assert_eq!(s.due(6_000_000), 2);
        // Every intended time is due by itself and not a nanosecond earlier.
        let s = Schedule::new(0, 3.0e6, 0); // 333.333 ns period: not a whole number of ns
        assert_eq!(s.period_ns(), 333);
        for i in 1..10_000 {
            let t = s.intended_ns(i);
            assert!(s.due(t) > i, "arrival {i} due at its own time");
            assert!(s.due(t - 1) <= i, "arrival {i} not due before it");
        }
        // No drift: three million arrivals at 3M/s take one second, to the nanosecond.
        assert!(s.intended_ns(3_000_000).abs_diff(1_000_000_000) <= 1);
        // Threads are staggered by their offset.
        let a = Schedule::new(0, 1000.0, 0);
        let b = Schedule::new(0, 1000.0, 500_000); // half a period
        assert_eq!(b.intended_ns(0) - a.intended_ns(0), 500_000);
    }
}
