//! Bytes on the management port's TCP side (`mgt_port`): host-to-host [`PeerMsg`] frames and
//! the line-based admin protocol share one listener; the first bytes of a connection say which.
//!
//! - A **peer** connection starts with [`PEER_MAGIC`], then frames: `u32` length (big endian,
//!   the bytes after it), the sender's `HostId` (`u64` big endian), a kind byte, and the body:
//!   raft-rs's protobuf for [`PeerMsg::Raft`] (via [`PeerMsg::encode_raft`]), JSON for the
//!   rest (rare, small, readable in a capture). Peer connections are one-way: a host answers
//!   on its own outgoing connection to the sender.
//! - An **admin** connection starts with `{`: one JSON request per line, one JSON answer per
//!   line (see `admin.rs`).
//!
//! Decoding separates "not enough bytes yet" (`Ok(None)`) from "bad bytes" (`Err`): the
//! first waits for more, the second closes the connection with the reason logged. Nothing
//! here panics on input.

use serde::{Deserialize, Serialize};

use super::map::{HostId, HostInfo};
use super::node::PeerMsg;

/// The first bytes of a peer connection ("stategrid peer", version 1).
pub const PEER_MAGIC: [u8; 4] = *b"SGP1";
/// Largest peer frame by default (`mgt_frame_bytes_max`). A Raft snapshot carries the whole cluster state (the map is about
/// 200 KiB of JSON for 1024 partitions) and raft-rs batches entries up to 1 MiB per message,
/// so 16 MiB leaves ample room while bounding what a broken peer can make us buffer.
pub const PEER_FRAME_BYTES_MAX: usize = 16 << 20;
/// Longest admin request or answer line (a `query` answer lists every host: a few hundred
/// bytes each).
pub const ADMIN_LINE_BYTES_MAX: usize = 1 << 20;
/// Sender id and kind byte.
const HEADER_BYTES: usize = 9;

const KIND_RAFT: u8 = 1;
const KIND_JSON: u8 = 2;

/// What a connection speaks, from its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnKind {
    Peer,
    Admin,
}

/// Why a connection's bytes were refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error(
        "neither a peer connection (starts with SGP1) nor an admin request (a JSON object per line); first bytes {0:02x?}"
    )]
    UnknownStart(Vec<u8>),
    #[error("peer frame of {0} bytes is over mgt_frame_bytes_max ({1} bytes)")]
    FrameTooLarge(usize, usize),
    #[error("peer frame of {0} bytes is shorter than its {HEADER_BYTES}-byte header")]
    FrameTooShort(usize),
    #[error("peer frame of unknown kind {0}")]
    UnknownKind(u8),
    #[error("peer frame body does not decode: {0}")]
    BadBody(String),
}

/// Decides what a connection speaks from its first bytes; `Ok(None)` until enough arrived.
pub fn classify(first: &[u8]) -> Result<Option<ConnKind>, WireError> {
    match first.first() {
        None => Ok(None),
        Some(b'{') => Ok(Some(ConnKind::Admin)),
        Some(_) => {
            let n = first.len().min(PEER_MAGIC.len());
            if first[..n] != PEER_MAGIC[..n] {
                Err(WireError::UnknownStart(first[..n].to_vec()))
            } else if n < PEER_MAGIC.len() {
                Ok(None)
            } else {
                Ok(Some(ConnKind::Peer))
            }
        }
    }
}

/// The non-Raft peer messages as JSON (raft-rs's `Message` is protobuf, not serde).
#[derive(Serialize, Deserialize)]
enum JsonMsg {
    JoinRequest {
        host: HostInfo,
        witness: bool,
    },
    LeaseRequest {
        seq: u64,
        applied_epoch: u64,
        /// Absent from hosts that predate it: no lease claimed.
        #[serde(default)]
        held_epoch: u64,
    },
    LeaseGrant {
        seq: u64,
        epoch: u64,
    },
    MigrationDone {
        partitions: Vec<u16>,
    },
    LeaveRequest,
    RejoinRequest,
    Expelled,
}

/// One frame for `msg` from `from`, length prefix included.
pub fn encode_frame(from: HostId, msg: &PeerMsg) -> Vec<u8> {
    let (kind, body) = match msg {
        PeerMsg::Raft(m) => (KIND_RAFT, PeerMsg::encode_raft(m)),
        other => {
            let j = match other {
                PeerMsg::Raft(_) => unreachable!("handled above"),
                PeerMsg::JoinRequest { host, witness } => JsonMsg::JoinRequest {
                    host: host.clone(),
                    witness: *witness,
                },
                PeerMsg::LeaseRequest {
                    seq,
                    applied_epoch,
                    held_epoch,
                } => JsonMsg::LeaseRequest {
                    seq: *seq,
                    applied_epoch: *applied_epoch,
                    held_epoch: *held_epoch,
                },
                PeerMsg::LeaseGrant { seq, epoch } => JsonMsg::LeaseGrant {
                    seq: *seq,
                    epoch: *epoch,
                },
                PeerMsg::MigrationDone { partitions } => JsonMsg::MigrationDone {
                    partitions: partitions.clone(),
                },
                PeerMsg::LeaveRequest => JsonMsg::LeaveRequest,
                PeerMsg::RejoinRequest => JsonMsg::RejoinRequest,
                PeerMsg::Expelled => JsonMsg::Expelled,
            };
            (
                KIND_JSON,
                serde_json::to_vec(&j).expect("peer message encodes"),
            )
        }
    };
    let len = HEADER_BYTES + body.len();
    let mut out = Vec::with_capacity(4 + len);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.extend_from_slice(&from.0.to_be_bytes());
    out.push(kind);
    out.extend_from_slice(&body);
    out
}

/// Decodes the first frame of `buf`: `Ok(Some((sender, message, bytes used)))`, `Ok(None)` if
/// the frame is not complete yet, `Err` if the bytes are bad (close the connection).
pub fn decode_frame(
    buf: &[u8],
    frame_bytes_max: usize,
) -> Result<Option<(HostId, PeerMsg, usize)>, WireError> {
    let Some(len_bytes) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(len_bytes.try_into().expect("4 bytes")) as usize;
    // Checked before waiting for the body: an oversized length is refused at once.
    if len > frame_bytes_max {
        return Err(WireError::FrameTooLarge(len, frame_bytes_max));
    }
    if len < HEADER_BYTES {
        return Err(WireError::FrameTooShort(len));
    }
    let Some(frame) = buf.get(4..4 + len) else {
        return Ok(None);
    };
    let from = HostId(u64::from_be_bytes(frame[..8].try_into().expect("8 bytes")));
    let body = &frame[HEADER_BYTES..];
    let msg = match frame[8] {
        KIND_RAFT => {
            PeerMsg::Raft(Box::new(PeerMsg::decode_raft(body).ok_or_else(|| {
                WireError::BadBody("not a raft protobuf message".into())
            })?))
        }
        KIND_JSON => match serde_json::from_slice::<JsonMsg>(body)
            .map_err(|e| WireError::BadBody(e.to_string()))?
        {
            JsonMsg::JoinRequest { host, witness } => PeerMsg::JoinRequest { host, witness },
            JsonMsg::LeaseRequest {
                seq,
                applied_epoch,
                held_epoch,
            } => PeerMsg::LeaseRequest {
                seq,
                applied_epoch,
                held_epoch,
            },
            JsonMsg::LeaseGrant { seq, epoch } => PeerMsg::LeaseGrant { seq, epoch },
            JsonMsg::MigrationDone { partitions } => PeerMsg::MigrationDone { partitions },
            JsonMsg::LeaveRequest => PeerMsg::LeaveRequest,
            JsonMsg::RejoinRequest => PeerMsg::RejoinRequest,
            JsonMsg::Expelled => PeerMsg::Expelled,
        },
        k => return Err(WireError::UnknownKind(k)),
    };
    Ok(Some((from, msg, 4 + len)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::map::HostState;

    fn round_trip(msg: PeerMsg) -> PeerMsg {
        let bytes = encode_frame(HostId(0xfeed), &msg);
        // Every strict prefix is incomplete, never an error.
        for cut in 0..bytes.len() {
            assert_eq!(
                decode_frame(&bytes[..cut], PEER_FRAME_BYTES_MAX)
                    .unwrap()
                    .map(|x| x.2),
                None
            );
        }
        let mut two = bytes.clone();
        two.extend_from_slice(&bytes);
        let (from, back, used) = decode_frame(&two, PEER_FRAME_BYTES_MAX).unwrap().unwrap();
        assert_eq!((from, used), (HostId(0xfeed), bytes.len()));
        back
    }

    #[test]
    fn every_message_round_trips() {
        let mut m = raft::prelude::Message::default();
        m.set_msg_type(raft::prelude::MessageType::MsgHeartbeat);
        m.to = 7;
        m.from = 9;
        m.term = 3;
        match round_trip(PeerMsg::Raft(Box::new(m.clone()))) {
            PeerMsg::Raft(b) => assert_eq!(*b, m),
            other => panic!("{other:?}"),
        }
        let host = HostInfo {
            id: HostId(5),
            addr: "127.0.0.2:1/2/3".into(),
            weight: 100,
            state: HostState::Joining,
        };
        match round_trip(PeerMsg::JoinRequest {
            host: host.clone(),
            witness: true,
        }) {
            PeerMsg::JoinRequest { host: h, witness } => assert!(h == host && witness),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            round_trip(PeerMsg::LeaseRequest {
                seq: 4,
                applied_epoch: 2,
                held_epoch: 1
            }),
            PeerMsg::LeaseRequest {
                seq: 4,
                applied_epoch: 2,
                held_epoch: 1
            }
        ));
        assert!(matches!(
            round_trip(PeerMsg::LeaseGrant { seq: 4, epoch: 2 }),
            PeerMsg::LeaseGrant { seq: 4, epoch: 2 }
        ));
        match round_trip(PeerMsg::MigrationDone {
            partitions: vec![1, 1023],
        }) {
            PeerMsg::MigrationDone { partitions } => assert_eq!(partitions, vec![1, 1023]),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            round_trip(PeerMsg::LeaveRequest),
            PeerMsg::LeaveRequest
        ));
    }

    fn err(buf: &[u8]) -> WireError {
        decode_frame(buf, PEER_FRAME_BYTES_MAX)
            .map(|_| ())
            .expect_err("bad frame")
    }

    #[test]
    fn oversized_and_malformed_frames_are_errors() {
        // Too large: refused from the length alone, before any body arrives.
        let big = ((PEER_FRAME_BYTES_MAX + 1) as u32).to_be_bytes();
        assert_eq!(
            err(&big),
            WireError::FrameTooLarge(PEER_FRAME_BYTES_MAX + 1, PEER_FRAME_BYTES_MAX)
        );
        assert_eq!(
            err(&[0xff, 0xff, 0xff, 0xff]),
            WireError::FrameTooLarge(u32::MAX as usize, PEER_FRAME_BYTES_MAX)
        );
        // Shorter than its header.
        assert_eq!(err(&[0, 0, 0, 3, 1, 2, 3]), WireError::FrameTooShort(3));
        // Unknown kind.
        let mut f = vec![0, 0, 0, 9];
        f.extend_from_slice(&1u64.to_be_bytes());
        f.push(77);
        assert_eq!(err(&f), WireError::UnknownKind(77));
        // Bad bodies of both kinds.
        for (kind, body) in [
            (KIND_JSON, &b"{\"Nope\":1}"[..]),
            (KIND_RAFT, &[0xff; 5][..]),
        ] {
            let mut f = ((HEADER_BYTES + body.len()) as u32).to_be_bytes().to_vec();
            f.extend_from_slice(&1u64.to_be_bytes());
            f.push(kind);
            f.extend_from_slice(body);
            assert!(matches!(err(&f), WireError::BadBody(_)), "kind {kind}");
        }
    }

    #[test]
    fn connections_are_told_apart_by_their_first_bytes() {
        assert_eq!(classify(b""), Ok(None));
        assert_eq!(classify(b"S"), Ok(None));
        assert_eq!(classify(b"SGP"), Ok(None));
        assert_eq!(classify(b"SGP1xyz"), Ok(Some(ConnKind::Peer)));
        assert_eq!(classify(b"{\"cmd\""), Ok(Some(ConnKind::Admin)));
        assert!(classify(b"GET / HTTP/1.1").is_err());
        assert!(classify(b"SGX").is_err());
    }
}
