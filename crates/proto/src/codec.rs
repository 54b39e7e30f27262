//! Encoding messages into frames and validating archives read from the network.
//!
//! Encoding appends to a caller's `Vec<u8>` through rkyv's thread-local arena, so once the vector
//! has capacity an encode allocates nothing. Decoding validates the archive in place
//! (bytecheck), never with unchecked access, and allocates nothing unless validation fails.

use rkyv::api::high::HighSerializer;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::util::with_arena;

use crate::frame::{FrameHeader, HEADER_BYTES, pad8};
use crate::msg::{ArchivedRequest, ArchivedResponse, Request, Response};

/// Zeros for padding sections to 8 bytes.
pub const PADDING: [u8; 8] = [0; 8];

/// The zero padding that follows a value of `value_bytes`.
#[inline]
pub fn value_padding(value_bytes: usize) -> &'static [u8] {
    &PADDING[..pad8(value_bytes) - value_bytes]
}

/// An archive that failed validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("archive is not 8-byte aligned in the buffer (a framing bug)")]
    Misaligned,
    #[error("archive failed validation: not a valid stategrid message")]
    Invalid,
}

type Ser<'a> = HighSerializer<&'a mut Vec<u8>, ArenaHandle<'a>, rancor::Error>;

/// Appends a frame's header and archive (padded) to `out`, announcing `value_bytes` of trailer
/// that the caller must append (or send) next, followed by [`value_padding`].
///
/// `out.len()` must be a multiple of 8 (every frame is), so the archive lands 8-aligned.
/// Cost: one rkyv serialization into `out`; no allocation once `out` has capacity.
pub fn encode_head<T>(out: &mut Vec<u8>, request_id: u32, msg: &T, value_bytes: usize)
where
    T: for<'a> rkyv::Serialize<Ser<'a>>,
{
    debug_assert_eq!(out.len() % 8, 0, "frames must start 8-aligned");
    let start = out.len();
    out.extend_from_slice(&[0u8; HEADER_BYTES]);
    with_arena(|arena| {
        rkyv::api::high::to_bytes_in_with_alloc::<_, _, rancor::Error>(
            msg,
            &mut *out,
            arena.acquire(),
        )
        .expect("serializing into a Vec cannot fail");
    });
    let archive_bytes = out.len() - start - HEADER_BYTES;
    out.resize(start + HEADER_BYTES + pad8(archive_bytes), 0);
    let header = FrameHeader {
        archive_bytes: u32::try_from(archive_bytes).expect("archive under 4 GiB"),
        value_bytes: u32::try_from(value_bytes).expect("value under 4 GiB"),
        request_id,
    };
    header.write_to((&mut out[start..start + HEADER_BYTES]).try_into().unwrap());
}

/// Appends one whole request frame, value included, to `out`.
pub fn encode_request(out: &mut Vec<u8>, request_id: u32, req: &Request, value: &[u8]) {
    encode_head(out, request_id, req, value.len());
    out.extend_from_slice(value);
    out.extend_from_slice(value_padding(value.len()));
}

/// Appends a request whose trailer is several values back to back (`BulkPut`).
pub fn encode_request_parts(out: &mut Vec<u8>, request_id: u32, req: &Request, values: &[&[u8]]) {
    let total: usize = values.iter().map(|v| v.len()).sum();
    encode_head(out, request_id, req, total);
    for v in values {
        out.extend_from_slice(v);
    }
    out.extend_from_slice(value_padding(total));
}

/// Appends one whole response frame, value included, to `out`.
pub fn encode_response(out: &mut Vec<u8>, request_id: u32, resp: &Response, value: &[u8]) {
    encode_head(out, request_id, resp, value.len());
    out.extend_from_slice(value);
    out.extend_from_slice(value_padding(value.len()));
}

#[inline]
fn check_aligned(archive: &[u8]) -> Result<(), DecodeError> {
    if (archive.as_ptr() as usize) % 8 != 0 {
        return Err(DecodeError::Misaligned);
    }
    Ok(())
}

/// Validates and accesses a request archive in place. No copy; no allocation on success.
#[inline]
pub fn decode_request(archive: &[u8]) -> Result<&ArchivedRequest, DecodeError> {
    check_aligned(archive)?;
    rkyv::access::<ArchivedRequest, rancor::Failure>(archive).map_err(|_| DecodeError::Invalid)
}

/// Validates and accesses a response archive in place.
#[inline]
pub fn decode_response(archive: &[u8]) -> Result<&ArchivedResponse, DecodeError> {
    check_aligned(archive)?;
    rkyv::access::<ArchivedResponse, rancor::Failure>(archive).map_err(|_| DecodeError::Invalid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::parse;
    use crate::msg::*;

    fn aligned(bytes: &[u8]) -> Vec<u64> {
        let mut v = vec![0u64; bytes.len().div_ceil(8)];
        // SAFETY: u64 storage viewed as bytes, length within the allocation.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), v.as_mut_ptr() as *mut u8, bytes.len())
        };
        v
    }

    fn as_bytes(v: &[u64], len: usize) -> &[u8] {
        // SAFETY: reading initialized u64 storage as bytes.
        unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, len) }
    }

    #[test]
    fn request_round_trip_with_value() {
        let req = Request::Put {
            key: Key {
                ns: 3,
                key: b"k1".to_vec(),
            },
            opts: WriteOpts::default(),
        };
        let mut out = Vec::new();
        encode_request(&mut out, 42, &req, b"value bytes");
        encode_request(&mut out, 43, &Request::Stats, b"");
        let store = aligned(&out);
        let buf = as_bytes(&store, out.len());
        let p = parse(buf, 1 << 20).unwrap().unwrap();
        assert_eq!(p.header.request_id, 42);
        assert_eq!(p.value, b"value bytes");
        let a = decode_request(p.archive).unwrap();
        match a {
            ArchivedRequest::Put { key, .. } => {
                assert_eq!(key.ns.to_native(), 3);
                assert_eq!(key.key.as_slice(), b"k1");
            }
            other => panic!("{other:?}"),
        }
        let p2 = parse(&buf[p.frame_bytes..], 1 << 20).unwrap().unwrap();
        assert!(matches!(
            decode_request(p2.archive).unwrap(),
            ArchivedRequest::Stats
        ));
    }

    #[test]
    fn garbage_archive_is_invalid_not_a_panic() {
        let store = aligned(&[0xffu8; 64]);
        assert_eq!(
            decode_request(as_bytes(&store, 64)).unwrap_err(),
            DecodeError::Invalid
        );
        let store = aligned(&[0u8; 3]);
        assert!(decode_request(as_bytes(&store, 3)).is_err());
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let store = aligned(&bytes);
            let _ = decode_request(as_bytes(&store, bytes.len()));
            let _ = decode_response(as_bytes(&store, bytes.len()));
            let _ = parse(as_bytes(&store, bytes.len()), 1 << 16);
        }
    }
}
