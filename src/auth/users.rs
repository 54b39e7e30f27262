//! Clients prove who they are: users, their roles and how a password is checked.
//!
//! Two ways to configure clients' credentials (both may be used together):
//!
//! - `requirepass PASSWORD`: one password for the user `default`, role `admin` (Redis's
//!   `requirepass`). Compared as SHA-256 digests in constant time: no slow hash, the
//!   password is in the params anyway.
//! - `users_file PATH`: one user per line, `name role hash`, `#` comments:
//!
//!   ```text
//!   # name   role        password hash (stategrid hash-password)
//!   app      read-write  $argon2id$v=19$m=19456,t=2,p=1$...$...
//!   report   read        $argon2id$v=19$m=19456,t=2,p=1$...$...
//!   ops      admin       $argon2id$v=19$m=19456,t=2,p=1$...$...
//!   ```
//!
//!   Roles: `read` (reads, key listings, stats), `read-write` (and every write and lock),
//!   `admin` (and clearing a namespace / FLUSHDB, the management commands `join`, `leave`,
//!   `set`). Hashes are argon2id PHC strings (`stategrid hash-password` makes one, reading
//!   the password from stdin).
//!
//! With neither, every client is `admin` (and protected mode limits the client ports to
//! loopback clients, see `docs/security.md`).
//!
//! Cost: argon2id is slow on purpose (about 20-30 ms for the default parameters, see
//! [`HASH_PARAMS`]), and it runs on the thread that asked (a shard). It runs once per
//! connection at most: a (user, password) pair that verified once is remembered as an
//! HMAC-SHA256 under a per-process random key ([`Users::verify`]), so reconnects and the
//! several connections of a shard-aware client cost one HMAC each. After the handshake a
//! request costs one comparison of the connection's role (nothing else).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// What a client may do. Ordered: each role may do what the ones before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Reads, key listings, counts, stats, the map.
    Read,
    /// And every write, lock and removal of an object.
    ReadWrite,
    /// And clearing a namespace (FLUSHDB/FLUSHALL), and the management commands.
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "read" => Some(Role::Read),
            "read-write" => Some(Role::ReadWrite),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::ReadWrite => "read-write",
            Role::Admin => "admin",
        }
    }
}

/// The argon2id parameters `stategrid hash-password` uses: OWASP's recommended minimum
/// (19 MiB, 2 passes, 1 lane). A hash carries its own parameters, so hashes made with
/// other ones verify too.
pub const HASH_PARAMS: (u32, u32, u32) = (19 * 1024, 2, 1);

/// Entries the verified-credentials cache keeps before it starts over.
const VERIFIED_CACHE_ENTRIES_MAX: usize = 4096;

/// Longest user name and password accepted (longer ones fail without hashing).
pub const CREDENTIAL_BYTES_MAX: usize = 1024;

/// Why credentials were refused. The messages say what to fix, never which part was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthFail {
    #[error("invalid username-password pair or user is disabled")]
    WrongPass,
    /// More slow password checks this second than `auth_checks_per_s_max`: refused without
    /// checking, so wrong passwords cannot keep the shards busy hashing.
    #[error(
        "too many password checks on this host right now (auth_checks_per_s_max); retry in a second"
    )]
    Busy,
}

/// One line of the users file. `Debug` leaves the hash out.
#[derive(Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub role: Role,
    /// An argon2 PHC string.
    hash: String,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "User({} {})", self.name, self.role.name())
    }
}

/// The configured users. Shared by every shard (`Arc` in the config).
pub struct Users {
    users: Vec<User>,
    /// SHA-256 of `requirepass`, the user `default`'s password (role admin).
    requirepass: Option<[u8; 32]>,
    /// HMAC key for the verified-credentials cache (random per process).
    cache_key: [u8; 32],
    /// HMAC(user, password) -> role, for pairs that verified.
    verified: Mutex<HashMap<[u8; 32], Role>>,
    /// Slow (argon2) checks allowed per second in this process, and the current second's
    /// (second, checks made).
    checks_per_s_max: u32,
    checks: Mutex<(u64, u32)>,
}

impl PartialEq for Users {
    fn eq(&self, other: &Users) -> bool {
        self.users == other.users && self.requirepass == other.requirepass
    }
}

impl std::fmt::Debug for Users {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<(&str, &str)> = self
            .users
            .iter()
            .map(|u| (u.name.as_str(), u.role.name()))
            .collect();
        f.debug_struct("Users")
            .field("users", &names)
            .field("requirepass", &self.requirepass.map(|_| "<set>"))
            .finish()
    }
}

/// A hash to verify against when the user does not exist, so an unknown name takes as long
/// as a wrong password (names are not revealed by timing).
fn dummy_hash() -> &'static str {
    static H: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    H.get_or_init(|| hash_password(b"stategrid-no-such-user").expect("hashing works"))
}

fn argon2_default() -> Argon2<'static> {
    let (m, t, p) = HASH_PARAMS;
    Argon2::new(
        Algorithm::Argon2id,
        Version::V0x13,
        Params::new(m, t, p, None).expect("valid argon2 parameters"),
    )
}

/// An argon2id PHC string for `password`, with a fresh random salt and [`HASH_PARAMS`].
pub fn hash_password(password: &[u8]) -> Result<String, String> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| format!("no random salt: {e}"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    argon2_default()
        .hash_password(password, &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    // Digests of equal length: fold the differences, no early exit.
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Users {
    /// The users of `users_file` (if any) plus `default` for `requirepass` (if set); None
    /// when neither is configured (every client is admin).
    pub fn from_config(
        users_file: &Path,
        requirepass: &str,
        checks_per_s_max: u32,
    ) -> Result<Option<Users>, String> {
        let mut users = Vec::new();
        if !users_file.as_os_str().is_empty() {
            let text = std::fs::read_to_string(users_file).map_err(|e| {
                format!(
                    "cannot read users_file {}: {e}; see docs/security.md for its format",
                    users_file.display()
                )
            })?;
            users = parse_users(&text)
                .map_err(|e| format!("users_file {}: {e}", users_file.display()))?;
        }
        if users.is_empty() && requirepass.is_empty() {
            return Ok(None);
        }
        if !requirepass.is_empty() && users.iter().any(|u| u.name == "default") {
            return Err(
                "requirepass sets the password of the user `default`, and users_file names `default` too; keep one of them".into(),
            );
        }
        let mut cache_key = [0u8; 32];
        getrandom::fill(&mut cache_key).map_err(|e| format!("no random key: {e}"))?;
        Ok(Some(Users {
            users,
            requirepass: (!requirepass.is_empty())
                .then(|| Sha256::digest(requirepass.as_bytes()).into()),
            cache_key,
            verified: Mutex::new(HashMap::new()),
            checks_per_s_max,
            checks: Mutex::new((0, 0)),
        }))
    }

    /// Users with the given (name, role, PHC hash), for tests and tools.
    pub fn with_users(list: &[(&str, Role, &str)], requirepass: &str) -> Users {
        Users {
            users: list
                .iter()
                .map(|(n, r, h)| User {
                    name: (*n).to_owned(),
                    role: *r,
                    hash: (*h).to_owned(),
                })
                .collect(),
            requirepass: (!requirepass.is_empty())
                .then(|| Sha256::digest(requirepass.as_bytes()).into()),
            cache_key: [7u8; 32],
            verified: Mutex::new(HashMap::new()),
            checks_per_s_max: u32::MAX,
            checks: Mutex::new((0, 0)),
        }
    }

    /// How many users are configured (`requirepass` counts as one).
    pub fn len(&self) -> usize {
        self.users.len() + self.requirepass.is_some() as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks `password` for `user` (`None`: the user `default`, as Redis's one-argument
    /// `AUTH`) and returns the user's role.
    ///
    /// Cost: an argon2 verification (tens of milliseconds, on this thread) the first time a
    /// pair verifies and on every failure; one HMAC-SHA256 for a pair that verified before.
    pub fn verify(&self, user: Option<&[u8]>, password: &[u8]) -> Result<Role, AuthFail> {
        let user = user.unwrap_or(b"default");
        if user.len() > CREDENTIAL_BYTES_MAX || password.len() > CREDENTIAL_BYTES_MAX {
            return Err(AuthFail::WrongPass);
        }
        if user == b"default"
            && let Some(want) = &self.requirepass
        {
            let got: [u8; 32] = Sha256::digest(password).into();
            return if ct_eq(&got, want) {
                Ok(Role::Admin)
            } else {
                Err(AuthFail::WrongPass)
            };
        }
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.cache_key).expect("any key length");
        mac.update(&(user.len() as u64).to_le_bytes());
        mac.update(user);
        mac.update(password);
        let tag: [u8; 32] = mac.finalize().into_bytes().into();
        if let Some(role) = self.verified.lock().expect("not poisoned").get(&tag) {
            return Ok(*role);
        }
        // The slow check: bounded per second for the whole process (a client guessing
        // passwords costs the shards at most `checks_per_s_max` argon2 runs a second).
        {
            let now_s = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let mut c = self.checks.lock().expect("not poisoned");
            if c.0 != now_s {
                *c = (now_s, 0);
            }
            if c.1 >= self.checks_per_s_max {
                return Err(AuthFail::Busy);
            }
            c.1 += 1;
        }
        let found = self.users.iter().find(|u| u.name.as_bytes() == user);
        let hash = found.map_or(dummy_hash(), |u| u.hash.as_str());
        let ok = PasswordHash::new(hash)
            .ok()
            .is_some_and(|h| Argon2::default().verify_password(password, &h).is_ok());
        match found {
            Some(u) if ok => {
                let mut v = self.verified.lock().expect("not poisoned");
                if v.len() >= VERIFIED_CACHE_ENTRIES_MAX {
                    v.clear();
                }
                v.insert(tag, u.role);
                Ok(u.role)
            }
            _ => Err(AuthFail::WrongPass),
        }
    }
}

/// Parses a users file's text (see the module doc for the format).
pub fn parse_users(text: &str) -> Result<Vec<User>, String> {
    let mut users: Vec<User> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [name, role, hash] = fields[..] else {
            return Err(format!(
                "line {}: expected `name role hash` (3 fields), found {}",
                i + 1,
                fields.len()
            ));
        };
        let role = Role::parse(role).ok_or_else(|| {
            format!(
                "line {}: role '{role}' is not one of read, read-write, admin",
                i + 1
            )
        })?;
        if let Err(e) = PasswordHash::new(hash) {
            return Err(format!(
                "line {}: the hash of user '{name}' is not an argon2 PHC string ({e}); make one with `stategrid hash-password`",
                i + 1
            ));
        }
        if users.iter().any(|u| u.name == name) {
            return Err(format!("line {}: user '{name}' is listed twice", i + 1));
        }
        users.push(User {
            name: name.to_owned(),
            role,
            hash: hash.to_owned(),
        });
    }
    Ok(users)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_and_parsed() {
        assert!(Role::Read < Role::ReadWrite && Role::ReadWrite < Role::Admin);
        for r in [Role::Read, Role::ReadWrite, Role::Admin] {
            assert_eq!(Role::parse(r.name()), Some(r));
        }
        assert_eq!(Role::parse("root"), None);
    }

    #[test]
    fn passwords_verify_against_their_hash_only() {
        let h = hash_password(b"s3cret").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        let u = Users::with_users(&[("app", Role::ReadWrite, &h)], "");
        assert_eq!(u.verify(Some(b"app"), b"s3cret"), Ok(Role::ReadWrite));
        // The second time comes from the cache, with the same answer.
        assert_eq!(u.verify(Some(b"app"), b"s3cret"), Ok(Role::ReadWrite));
        assert_eq!(u.verify(Some(b"app"), b"wrong"), Err(AuthFail::WrongPass));
        assert_eq!(
            u.verify(Some(b"nobody"), b"s3cret"),
            Err(AuthFail::WrongPass)
        );
        assert_eq!(u.verify(None, b"s3cret"), Err(AuthFail::WrongPass));
    }

    #[test]
    fn slow_checks_are_bounded_per_second() {
        let h = hash_password(b"pw").unwrap();
        let mut u = Users::with_users(&[("app", Role::Read, &h)], "");
        u.checks_per_s_max = 1;
        // Whatever the second, at most one slow check runs in it: of three wrong tries in
        // a row at least one is refused without checking (two if no second boundary passed).
        let busy = (0..3)
            .filter(|_| u.verify(Some(b"app"), b"wrong") == Err(AuthFail::Busy))
            .count();
        assert!(busy >= 1, "{busy}");
    }

    #[test]
    fn requirepass_is_the_default_users_admin_password() {
        let u = Users::with_users(&[], "hunter2");
        assert_eq!(u.verify(None, b"hunter2"), Ok(Role::Admin));
        assert_eq!(u.verify(Some(b"default"), b"hunter2"), Ok(Role::Admin));
        assert_eq!(u.verify(None, b"hunter3"), Err(AuthFail::WrongPass));
    }

    #[test]
    fn users_file_errors_name_the_line_and_fix() {
        let h = hash_password(b"x").unwrap();
        let ok = parse_users(&format!("# c\n\napp read {h}  # trailing\n")).unwrap();
        assert_eq!(ok.len(), 1);
        let e = parse_users("app read\n").unwrap_err();
        assert!(e.contains("line 1") && e.contains("3 fields"), "{e}");
        let e = parse_users(&format!("app root {h}\n")).unwrap_err();
        assert!(e.contains("read, read-write, admin"), "{e}");
        let e = parse_users("app read plaintext\n").unwrap_err();
        assert!(e.contains("stategrid hash-password"), "{e}");
        let e = parse_users(&format!("a read {h}\na admin {h}\n")).unwrap_err();
        assert!(e.contains("twice"), "{e}");
    }
}
