//! Hosts prove they hold the store's secret.
//!
//! Every host of a store is given the same secret (`cluster_key_file`, or `cluster_key`). It
//! is never sent: hosts prove they know it with HMAC-SHA256 over fresh random nonces, so a
//! captured exchange cannot be replayed and a process without the secret learns nothing it
//! could use.
//!
//! **TCP (`int_port` links, `mgt_port` peer connections)**: before any frame, a mutual
//! challenge-response (the dialling side is the *initiator*):
//!
//! ```text
//! initiator -> responder  C1 = "SGH1" | initiator id (u64 BE) | nonce_i (16 bytes)
//! responder -> initiator  S1 = responder id (u64 BE) | nonce_r (16) | HMAC(k, "server" | T)
//! initiator -> responder  C2 = HMAC(k, "client" | T)
//!         where T = nonce_i | nonce_r | initiator id | responder id
//! ```
//!
//! Each side checks the other's tag (constant-time) before it decodes a single frame. The
//! responder then binds the initiator's id to the connection: a later frame's sender is that
//! id, never a sender id written in the frame. The initiator can also check that the responder
//! is the host it meant to dial; the store does not ask for that (a host restarted on the same
//! address has a new id and still belongs to the store).
//!
//! **UDP (SWIM, discovery)**: each datagram is encrypted and authenticated with
//! ChaCha20-Poly1305 (ring) under a key derived from the secret (`HMAC(k, "datagram-aead-v1")`):
//! `sent_ms (u64 BE) | nonce (12 random bytes) | ciphertext | tag (16 bytes)`, with `"SGD1" |
//! sent_ms` as associated data. A datagram whose tag does not verify, or sent more than
//! [`DATAGRAM_WINDOW_MS`] from our clock, is dropped before it is decoded. So membership (host
//! ids, addresses, flags) is not readable on the wire either. The window bounds replay; within
//! it a replayed SWIM message only repeats what its sender said (SWIM's incarnation numbers
//! order what it says).
//!
//! Cost: one handshake per connection (two HMACs a side); per datagram one ChaCha20-Poly1305
//! pass over at most 1.4 KiB and one allocation for the other side's copy. Nothing per request.

use hmac::{Hmac, Mac};
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// First bytes of an initiator's hello ("stategrid host handshake", version 1).
pub const MAGIC: [u8; 4] = *b"SGH1";
const NONCE_BYTES: usize = 16;
const TAG_BYTES: usize = 32;
/// `C1`: magic, id, nonce.
pub const HELLO_BYTES: usize = 4 + 8 + NONCE_BYTES;
/// `S1`: id, nonce, tag.
pub const CHALLENGE_BYTES: usize = 8 + NONCE_BYTES + TAG_BYTES;
/// `C2`: tag.
pub const PROOF_BYTES: usize = TAG_BYTES;
/// Bytes a datagram's seal adds: timestamp, nonce and tag.
pub const SEAL_BYTES: usize = 8 + NONCE_LEN + 16;
/// Associated data of a sealed datagram, before its timestamp ("stategrid datagram", v1).
const DATAGRAM_AAD: [u8; 4] = *b"SGD1";
/// How far a datagram's timestamp may be from our clock (both ways): hosts' clocks must
/// agree this well, and a captured datagram replays only within it.
pub const DATAGRAM_WINDOW_MS: u64 = 30_000;
/// Shortest accepted secret.
pub const KEY_BYTES_MIN: usize = 16;

/// How to make a key, for error messages.
pub const KEY_HOWTO: &str = "make one with `head -c 32 /dev/urandom | base64 > cluster.key` and set cluster_key_file to it on every host";

/// Why a peer was not accepted. Each message names what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(
        "the peer did not start the host handshake (first bytes {0:02x?}): it has no cluster_key, or is not a stategrid host; give every host the same cluster_key_file"
    )]
    NoHandshake(Vec<u8>),
    #[error(
        "host {0:#x} failed the cluster_key proof: its key differs from ours; give every host the same cluster_key_file"
    )]
    BadProof(u64),
    #[error("we dialled host {expected:#x} but host {found:#x} answered (a stale address?)")]
    WrongHost { expected: u64, found: u64 },
    #[error(
        "datagram dropped: its tag does not verify with our cluster_key (a host with another key, or none); give every host the same cluster_key_file"
    )]
    BadTag,
    #[error(
        "datagram dropped: sent at {sent_ms} ms, {skew_ms} ms from our clock (more than {DATAGRAM_WINDOW_MS} ms): a replay, or the hosts' clocks disagree (run NTP)"
    )]
    Stale { sent_ms: u64, skew_ms: u64 },
    #[error("datagram of {0} bytes is shorter than its {SEAL_BYTES}-byte seal")]
    Short(usize),
}

/// The store's shared secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterKey {
    bytes: Vec<u8>,
    /// The datagrams' ChaCha20-Poly1305 key, derived from `bytes`.
    datagram_key: [u8; 32],
}

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey(<secret>)")
    }
}

impl ClusterKey {
    /// A key from its text (surrounding whitespace ignored). At least [`KEY_BYTES_MIN`] bytes.
    pub fn new(text: &[u8]) -> Result<ClusterKey, String> {
        let t = text.trim_ascii();
        if t.len() < KEY_BYTES_MIN {
            return Err(format!(
                "the cluster key is {} bytes; at least {KEY_BYTES_MIN} are needed: {KEY_HOWTO}",
                t.len()
            ));
        }
        let mut m = HmacSha256::new_from_slice(t).expect("HMAC takes any key length");
        m.update(b"datagram-aead-v1");
        let datagram_key: [u8; 32] = m.finalize().into_bytes().into();
        Ok(ClusterKey {
            bytes: t.to_vec(),
            datagram_key,
        })
    }

    /// The configured key: `cluster_key_file`'s contents, else `cluster_key`, else none.
    pub fn from_config(cfg: &crate::config::Config) -> Result<Option<ClusterKey>, String> {
        if !cfg.cluster_key_file.as_os_str().is_empty() {
            let text = std::fs::read(&cfg.cluster_key_file).map_err(|e| {
                format!(
                    "cannot read cluster_key_file {}: {e}; {KEY_HOWTO}",
                    cfg.cluster_key_file.display()
                )
            })?;
            return ClusterKey::new(&text)
                .map(Some)
                .map_err(|e| format!("cluster_key_file {}: {e}", cfg.cluster_key_file.display()));
        }
        if !cfg.cluster_key.is_empty() {
            return ClusterKey::new(cfg.cluster_key.as_bytes()).map(Some);
        }
        Ok(None)
    }

    fn mac(&self, label: &[u8], parts: &[&[u8]]) -> HmacSha256 {
        let mut m = HmacSha256::new_from_slice(&self.bytes).expect("HMAC takes any key length");
        m.update(label);
        for p in parts {
            m.update(p);
        }
        m
    }

    /// Seals a datagram body for sending at `now_ms` (wall clock): encrypted under a fresh
    /// random nonce.
    pub fn seal(&self, body: &[u8], now_ms: u64) -> Vec<u8> {
        let mut n = [0u8; NONCE_LEN];
        getrandom::fill(&mut n).expect("the kernel's random source (getrandom) is available");
        self.seal_with_nonce(body, now_ms, n)
    }

    /// [`Self::seal`] with a given nonce (a nonce must never repeat under one key: only
    /// `seal` and tests that check a seal's exact bytes call this).
    pub fn seal_with_nonce(&self, body: &[u8], now_ms: u64, nonce: [u8; NONCE_LEN]) -> Vec<u8> {
        // One allocation: the body is copied in once and encrypted where it lies.
        let ts = now_ms.to_be_bytes();
        let mut out = Vec::with_capacity(body.len() + SEAL_BYTES);
        out.extend_from_slice(&ts);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(body);
        let tag = self
            .aead()
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(Self::aad(&ts)),
                &mut out[8 + NONCE_LEN..],
            )
            .expect("a datagram is far below ChaCha20-Poly1305's length limit");
        out.extend_from_slice(tag.as_ref());
        out
    }

    /// Checks a sealed datagram and returns its body, decrypted.
    pub fn open(&self, dgram: &[u8], now_ms: u64) -> Result<Vec<u8>, AuthError> {
        if dgram.len() < SEAL_BYTES {
            return Err(AuthError::Short(dgram.len()));
        }
        let (ts, rest) = dgram.split_at(8);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().expect("NONCE_LEN bytes");
        let ts: [u8; 8] = ts.try_into().expect("8 bytes");
        let mut in_out = sealed.to_vec();
        let body_len = self
            .aead()
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(Self::aad(&ts)),
                &mut in_out,
            )
            .map_err(|_| AuthError::BadTag)?
            .len();
        in_out.truncate(body_len);
        let sent_ms = u64::from_be_bytes(ts);
        let skew_ms = sent_ms.abs_diff(now_ms);
        if skew_ms > DATAGRAM_WINDOW_MS {
            return Err(AuthError::Stale { sent_ms, skew_ms });
        }
        Ok(in_out)
    }

    /// A datagram's sent time, readable without the key (it is associated data, not secret).
    pub fn datagram_sent_ms(dgram: &[u8]) -> Option<u64> {
        Some(u64::from_be_bytes(dgram.get(..8)?.try_into().ok()?))
    }

    /// A datagram's nonce, readable without the key.
    pub fn datagram_nonce(dgram: &[u8]) -> Option<[u8; NONCE_LEN]> {
        dgram.get(8..8 + NONCE_LEN)?.try_into().ok()
    }

    fn aad(ts: &[u8; 8]) -> [u8; 12] {
        let mut a = [0u8; 12];
        a[..4].copy_from_slice(&DATAGRAM_AAD);
        a[4..].copy_from_slice(ts);
        a
    }

    fn aead(&self) -> LessSafeKey {
        LessSafeKey::new(
            UnboundKey::new(&CHACHA20_POLY1305, &self.datagram_key)
                .expect("a 32-byte ChaCha20-Poly1305 key"),
        )
    }
}

fn nonce() -> [u8; NONCE_BYTES] {
    let mut n = [0u8; NONCE_BYTES];
    getrandom::fill(&mut n).expect("the kernel's random source (getrandom) is available");
    n
}

fn transcript(ni: &[u8], nr: &[u8], id_i: u64, id_r: u64) -> [u8; 2 * NONCE_BYTES + 16] {
    let mut t = [0u8; 2 * NONCE_BYTES + 16];
    t[..NONCE_BYTES].copy_from_slice(ni);
    t[NONCE_BYTES..2 * NONCE_BYTES].copy_from_slice(nr);
    t[2 * NONCE_BYTES..2 * NONCE_BYTES + 8].copy_from_slice(&id_i.to_be_bytes());
    t[2 * NONCE_BYTES + 8..].copy_from_slice(&id_r.to_be_bytes());
    t
}

/// The dialling side of the handshake.
pub struct Initiator {
    key: ClusterKey,
    me: u64,
    /// The host we meant to reach, if known.
    expect: Option<u64>,
    nonce: [u8; NONCE_BYTES],
}

impl Initiator {
    /// Starts a handshake; the bytes returned (`C1`) go first on the connection.
    pub fn start(key: &ClusterKey, me: u64, expect: Option<u64>) -> (Initiator, Vec<u8>) {
        let n = nonce();
        let mut c1 = Vec::with_capacity(HELLO_BYTES);
        c1.extend_from_slice(&MAGIC);
        c1.extend_from_slice(&me.to_be_bytes());
        c1.extend_from_slice(&n);
        let i = Initiator {
            key: key.clone(),
            me,
            expect,
            nonce: n,
        };
        (i, c1)
    }

    /// Reads the responder's challenge from the front of `buf`: `Ok(None)` until
    /// [`CHALLENGE_BYTES`] arrived; then the proof to send (`C2`) and the responder's id.
    /// The caller consumes [`CHALLENGE_BYTES`].
    pub fn on_challenge(&self, buf: &[u8]) -> Result<Option<(Vec<u8>, u64)>, AuthError> {
        let Some(s1) = buf.get(..CHALLENGE_BYTES) else {
            return Ok(None);
        };
        let id_r = u64::from_be_bytes(s1[..8].try_into().expect("8 bytes"));
        let nr = &s1[8..8 + NONCE_BYTES];
        let tag = &s1[8 + NONCE_BYTES..];
        let t = transcript(&self.nonce, nr, self.me, id_r);
        self.key
            .mac(b"server", &[&t])
            .verify_slice(tag)
            .map_err(|_| AuthError::BadProof(id_r))?;
        if let Some(expected) = self.expect
            && expected != id_r
        {
            return Err(AuthError::WrongHost {
                expected,
                found: id_r,
            });
        }
        let proof = self.key.mac(b"client", &[&t]).finalize().into_bytes();
        Ok(Some((proof.to_vec(), id_r)))
    }
}

/// What the responder does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Read more bytes.
    More,
    /// Send these bytes (`S1`); `used` bytes of the input were consumed.
    Send { used: usize, bytes: Vec<u8> },
    /// The peer proved itself as host `peer`; `used` bytes were consumed. Frames follow.
    Done { used: usize, peer: u64 },
}

/// The accepting side of the handshake.
pub struct Responder {
    key: ClusterKey,
    me: u64,
    /// After `C1`: the initiator's id and nonce, and ours.
    sent: Option<(u64, [u8; NONCE_BYTES], [u8; NONCE_BYTES])>,
}

impl Responder {
    pub fn new(key: &ClusterKey, me: u64) -> Responder {
        Responder {
            key: key.clone(),
            me,
            sent: None,
        }
    }

    /// Feeds the bytes at the front of the connection's buffer.
    pub fn on_bytes(&mut self, buf: &[u8]) -> Result<Step, AuthError> {
        match self.sent {
            None => {
                let n = buf.len().min(MAGIC.len());
                if buf[..n] != MAGIC[..n] {
                    return Err(AuthError::NoHandshake(buf[..n].to_vec()));
                }
                let Some(c1) = buf.get(..HELLO_BYTES) else {
                    return Ok(Step::More);
                };
                let id_i = u64::from_be_bytes(c1[4..12].try_into().expect("8 bytes"));
                let ni: [u8; NONCE_BYTES] = c1[12..].try_into().expect("nonce");
                let nr = nonce();
                let t = transcript(&ni, &nr, id_i, self.me);
                let tag = self.key.mac(b"server", &[&t]).finalize().into_bytes();
                let mut s1 = Vec::with_capacity(CHALLENGE_BYTES);
                s1.extend_from_slice(&self.me.to_be_bytes());
                s1.extend_from_slice(&nr);
                s1.extend_from_slice(&tag);
                self.sent = Some((id_i, ni, nr));
                Ok(Step::Send {
                    used: HELLO_BYTES,
                    bytes: s1,
                })
            }
            Some((id_i, ni, nr)) => {
                let Some(c2) = buf.get(..PROOF_BYTES) else {
                    return Ok(Step::More);
                };
                let t = transcript(&ni, &nr, id_i, self.me);
                self.key
                    .mac(b"client", &[&t])
                    .verify_slice(c2)
                    .map_err(|_| AuthError::BadProof(id_i))?;
                Ok(Step::Done {
                    used: PROOF_BYTES,
                    peer: id_i,
                })
            }
        }
    }
}

/// Wall-clock milliseconds, for datagram seals.
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> ClusterKey {
        ClusterKey::new(s.as_bytes()).unwrap()
    }

    /// Runs a handshake between two keys; returns what each side concluded.
    fn run(ki: &ClusterKey, kr: &ClusterKey) -> (Result<u64, AuthError>, Result<u64, AuthError>) {
        let (init, c1) = Initiator::start(ki, 11, Some(22));
        let mut resp = Responder::new(kr, 22);
        let Step::Send { used, bytes: s1 } = resp.on_bytes(&c1).unwrap() else {
            panic!("the responder answers a whole hello");
        };
        assert_eq!(used, HELLO_BYTES);
        let (c2, id) = match init.on_challenge(&s1) {
            Ok(Some(x)) => x,
            Ok(None) => panic!("a whole challenge"),
            Err(e) => return (Err(e), Err(AuthError::Short(0))),
        };
        let done = match resp.on_bytes(&c2) {
            Ok(Step::Done { peer, .. }) => Ok(peer),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e),
        };
        (Ok(id), done)
    }

    #[test]
    fn same_key_proves_both_ways() {
        let k = key("0123456789abcdef-secret");
        assert_eq!(run(&k, &k), (Ok(22), Ok(11)));
    }

    #[test]
    fn a_different_key_fails_on_both_sides() {
        let (a, b) = (key("0123456789abcdef-one"), key("0123456789abcdef-two"));
        // The initiator sees a responder without our key...
        assert_eq!(run(&a, &b).0, Err(AuthError::BadProof(22)));
        // ...and a responder is never convinced by a proof made without its key.
        let (init, c1) = Initiator::start(&a, 11, None);
        let mut resp = Responder::new(&b, 22);
        let Step::Send { .. } = resp.on_bytes(&c1).unwrap() else {
            panic!()
        };
        let _ = init;
        assert_eq!(
            resp.on_bytes(&[0u8; PROOF_BYTES]),
            Err(AuthError::BadProof(11))
        );
    }

    #[test]
    fn partial_input_waits_and_bad_start_is_refused() {
        let k = key("0123456789abcdef-secret");
        let (_, c1) = Initiator::start(&k, 1, None);
        let mut r = Responder::new(&k, 2);
        for cut in 0..HELLO_BYTES {
            assert_eq!(r.on_bytes(&c1[..cut]).unwrap(), Step::More, "cut {cut}");
        }
        let mut r = Responder::new(&k, 2);
        assert!(matches!(
            r.on_bytes(b"\x53\x47\x00\x00frame"),
            Err(AuthError::NoHandshake(_))
        ));
    }

    #[test]
    fn the_wrong_host_is_noticed() {
        let k = key("0123456789abcdef-secret");
        let (init, c1) = Initiator::start(&k, 11, Some(99));
        let mut resp = Responder::new(&k, 22);
        let Step::Send { bytes, .. } = resp.on_bytes(&c1).unwrap() else {
            panic!()
        };
        assert_eq!(
            init.on_challenge(&bytes),
            Err(AuthError::WrongHost {
                expected: 99,
                found: 22
            })
        );
    }

    #[test]
    fn datagrams_open_only_with_the_key_and_in_the_window() {
        let k = key("0123456789abcdef-secret");
        let sealed = k.seal(b"swim", 1_000_000);
        assert_eq!(k.open(&sealed, 1_000_500).unwrap(), b"swim");
        // Encrypted: the body is not in the datagram, and two seals of it differ.
        assert!(!sealed.windows(4).any(|w| w == b"swim"));
        assert_ne!(sealed, k.seal(b"swim", 1_000_000));
        // The time is associated data: changing it breaks the tag, not just the window.
        let mut retimed = sealed.clone();
        retimed[7] ^= 1;
        assert_eq!(k.open(&retimed, 1_000_000), Err(AuthError::BadTag));
        assert_eq!(
            key("0123456789abcdef-other").open(&sealed, 1_000_000),
            Err(AuthError::BadTag)
        );
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(k.open(&tampered, 1_000_000), Err(AuthError::BadTag));
        assert!(matches!(
            k.open(&sealed, 1_000_000 + DATAGRAM_WINDOW_MS + 1),
            Err(AuthError::Stale { .. })
        ));
        assert_eq!(k.open(b"short", 0), Err(AuthError::Short(5)));
    }

    #[test]
    fn short_keys_are_refused_with_the_fix() {
        let e = ClusterKey::new(b"  short \n").unwrap_err();
        assert!(e.contains("head -c 32 /dev/urandom"), "{e}");
    }
}
