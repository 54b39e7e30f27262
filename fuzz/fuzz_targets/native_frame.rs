//! Native protocol: frame parse (`stategrid_proto::frame`) then request validation
//! (`codec::decode_request`), as a shard's client connection reads them.
//!
//! Holds: no panic; every proper prefix of a buffer whose first frame parses is "incomplete"
//! (`Ok(None)`), never an error; a request that validates survives deserialize, encode, parse,
//! validate and deserialize again unchanged (compared by `Debug`, the types have no `PartialEq`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use stategrid_proto::codec::{decode_request, encode_request};
use stategrid_proto::frame::{self, FrameError};
use stategrid_proto::msg::Request;

const FRAME_BYTES_MAX: usize = 1 << 20;

/// The connection keeps its receive buffer 8-aligned (rkyv archives need it): so does this.
fn aligned(bytes: &[u8]) -> Vec<u64> {
    let mut v = vec![0u64; bytes.len().div_ceil(8)];
    // SAFETY: the u64 storage holds at least `bytes.len()` bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), v.as_mut_ptr() as *mut u8, bytes.len())
    };
    v
}

fn view(v: &[u64], len: usize) -> &[u8] {
    // SAFETY: initialized u64 storage read as bytes, `len` within it.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, len) }
}

fuzz_target!(|data: &[u8]| {
    let store = aligned(data);
    let buf = view(&store, data.len());
    let parsed = frame::parse(buf, FRAME_BYTES_MAX);
    // `needed_bytes` must agree with `parse` about errors.
    assert_eq!(
        frame::needed_bytes(buf, FRAME_BYTES_MAX).is_err(),
        parsed.is_err(),
        "needed_bytes and parse disagree"
    );
    let Ok(Some(p)) = parsed else {
        if let Err(FrameError::TooLarge { frame_bytes, .. }) = parsed {
            assert!(frame_bytes > FRAME_BYTES_MAX);
        }
        return;
    };
    assert!(p.frame_bytes <= buf.len() && p.frame_bytes % frame::FRAME_ALIGN == 0);
    for cut in 0..p.frame_bytes {
        assert!(
            matches!(frame::parse(&buf[..cut], FRAME_BYTES_MAX), Ok(None)),
            "a {cut}-byte prefix of a valid frame is not 'incomplete'"
        );
    }
    let Ok(req) = decode_request(p.archive) else {
        return;
    };
    let native: Request = rkyv::deserialize::<Request, rkyv::rancor::Error>(req)
        .expect("validated archive deserializes");
    let mut out = Vec::new();
    encode_request(&mut out, p.header.request_id, &native, p.value);
    let store2 = aligned(&out);
    let again = frame::parse(view(&store2, out.len()), FRAME_BYTES_MAX)
        .expect("re-encoded frame parses")
        .expect("re-encoded frame is complete");
    assert_eq!(again.header.request_id, p.header.request_id);
    assert_eq!(again.value, p.value);
    let req2 = decode_request(again.archive).expect("re-encoded request validates");
    let native2: Request = rkyv::deserialize::<Request, rkyv::rancor::Error>(req2).unwrap();
    assert_eq!(
        format!("{native:?}"),
        format!("{native2:?}"),
        "round trip changed the request"
    );
});
