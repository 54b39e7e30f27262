//! stategrid's native wire protocol, shared by the server, the client library and loadgen.
//!
//! The crate has no runtime dependency, so a client pulls in neither glommio nor io_uring.
//!
//! - [`frame`]: the byte layout of one frame: a 16-byte header, an rkyv archive, and an optional
//!   raw value trailer. Separates "not enough bytes yet" from "these bytes are bad".
//! - [`msg`]: the request and response types carried in the archive, and the typed error codes.
//! - [`codec`]: encode a message into a frame; decode and validate a frame's archive.
//! - [`hash`]: how (namespace, key) maps to a 64-bit hash and to one of [`PARTITIONS`] partitions.
//!   Server and client must agree on it, so it lives here.
//!
//! Values never pass through rkyv: a write carries its value as the frame's trailer, and a read's
//! response carries the stored bytes as its trailer, so the server copies a written value once
//! (receive buffer to store) and sends a read straight from the stored buffer.

pub mod codec;
pub mod frame;
pub mod hash;
pub mod msg;

pub use codec::{DecodeError, decode_request, decode_response, encode_request, encode_response};
pub use frame::{FrameError, FrameHeader, HEADER_BYTES, Parsed};
pub use hash::{PARTITIONS, key_hash, owner_shard, partition_of};
pub use msg::*;

/// The protocol version this build speaks. A client sends it in `Hello`; the server answers
/// `UnsupportedVersion` (and closes) when it cannot speak it.
pub const PROTOCOL_VERSION: u16 = 1;

/// The oldest client protocol version this build still serves.
pub const PROTOCOL_VERSION_MIN: u16 = 1;
