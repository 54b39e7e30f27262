//! Frame layout.
//!
//! ```text
//! offset 0   u16 magic  0x5347 ("SG", little endian)
//! offset 2   u16 flags  (0; reserved, must be 0)
//! offset 4   u32 archive_bytes   exact length of the rkyv archive (> 0)
//! offset 8   u32 value_bytes     exact length of the raw value trailer (may be 0)
//! offset 12  u32 request_id      chosen by the client, echoed in the response
//! offset 16  archive, zero-padded to a multiple of 8
//!            value trailer, zero-padded to a multiple of 8
//! ```
//!
//! Every frame is a multiple of 8 bytes, so when a receive buffer starts 8-aligned every archive
//! in it is 8-aligned too and can be validated and read in place (rkyv needs the alignment).
//! A header that breaks these rules means the byte stream can no longer be trusted: the reader
//! closes that connection. A well-framed archive that fails validation is only a bad request:
//! the reader answers it with an error and goes on.

/// Bytes in a frame header.
pub const HEADER_BYTES: usize = 16;
/// First two bytes of every frame.
pub const MAGIC: u16 = 0x5347;
/// Archive and value sections are padded to this alignment.
pub const FRAME_ALIGN: usize = 8;

#[inline]
pub const fn pad8(n: usize) -> usize {
    (n + (FRAME_ALIGN - 1)) & !(FRAME_ALIGN - 1)
}

/// Where a frame's request id sits in its header (little-endian `u32`).
pub const REQUEST_ID_RANGE: std::ops::Range<usize> = 12..16;

/// Rewrites the request id of the frame that starts `frame` (a relayed request takes its
/// link's id; its answer takes back the client's). Panics on fewer than a header's bytes.
#[inline]
pub fn set_request_id(frame: &mut [u8], id: u32) {
    frame[REQUEST_ID_RANGE].copy_from_slice(&id.to_le_bytes());
}

/// The request id of the frame that starts `frame`; None when a header has not arrived.
#[inline]
pub fn request_id(frame: &[u8]) -> Option<u32> {
    let b = frame.get(REQUEST_ID_RANGE)?;
    Some(u32::from_le_bytes(b.try_into().expect("4 bytes")))
}

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub archive_bytes: u32,
    pub value_bytes: u32,
    pub request_id: u32,
}

impl FrameHeader {
    /// Total bytes of the frame this header starts, padding included.
    #[inline]
    pub fn frame_bytes(&self) -> usize {
        HEADER_BYTES + pad8(self.archive_bytes as usize) + pad8(self.value_bytes as usize)
    }

    /// Offset of the value trailer from the start of the frame.
    #[inline]
    pub fn value_offset(&self) -> usize {
        HEADER_BYTES + pad8(self.archive_bytes as usize)
    }

    pub fn write_to(&self, out: &mut [u8; HEADER_BYTES]) {
        out[0..2].copy_from_slice(&MAGIC.to_le_bytes());
        out[2..4].copy_from_slice(&0u16.to_le_bytes());
        out[4..8].copy_from_slice(&self.archive_bytes.to_le_bytes());
        out[8..12].copy_from_slice(&self.value_bytes.to_le_bytes());
        out[REQUEST_ID_RANGE].copy_from_slice(&self.request_id.to_le_bytes());
    }

    /// Reads and checks a header. `frame_bytes_max` bounds the whole frame.
    pub fn read_from(b: &[u8; HEADER_BYTES], frame_bytes_max: usize) -> Result<Self, FrameError> {
        let magic = u16::from_le_bytes([b[0], b[1]]);
        let flags = u16::from_le_bytes([b[2], b[3]]);
        if magic != MAGIC || flags != 0 {
            return Err(FrameError::BadMagic {
                found: magic,
                flags,
            });
        }
        let h = FrameHeader {
            archive_bytes: u32::from_le_bytes(b[4..8].try_into().unwrap()),
            value_bytes: u32::from_le_bytes(b[8..12].try_into().unwrap()),
            request_id: u32::from_le_bytes(b[12..16].try_into().unwrap()),
        };
        if h.archive_bytes == 0 {
            return Err(FrameError::EmptyArchive);
        }
        let frame_bytes = h.frame_bytes();
        if frame_bytes > frame_bytes_max {
            return Err(FrameError::TooLarge {
                frame_bytes,
                frame_bytes_max,
                request_id: h.request_id,
            });
        }
        Ok(h)
    }
}

/// A broken frame header: the stream cannot be trusted past it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error(
        "bad frame header (magic {found:#06x}, flags {flags:#06x}): the peer does not speak the stategrid native protocol on this port"
    )]
    BadMagic { found: u16, flags: u16 },
    #[error("frame header announces an empty archive; every frame carries a message")]
    EmptyArchive,
    #[error(
        "frame of {frame_bytes} bytes exceeds frame_bytes_max ({frame_bytes_max} bytes); raise frame_bytes_max or send smaller values"
    )]
    TooLarge {
        frame_bytes: usize,
        frame_bytes_max: usize,
        request_id: u32,
    },
}

/// One complete frame found at the start of a buffer.
#[derive(Debug)]
pub struct Parsed<'a> {
    pub header: FrameHeader,
    /// The archive, exactly `archive_bytes` long, starting 16 bytes into the frame.
    pub archive: &'a [u8],
    /// The value trailer, exactly `value_bytes` long.
    pub value: &'a [u8],
    /// How many bytes of the buffer this frame used (padding included).
    pub frame_bytes: usize,
}

/// Looks for one frame at the start of `buf`.
///
/// `Ok(None)` means incomplete: read more bytes (at least up to `needed_bytes(buf)`).
/// Costs no copy and no allocation.
#[inline]
pub fn parse(buf: &[u8], frame_bytes_max: usize) -> Result<Option<Parsed<'_>>, FrameError> {
    if buf.len() < HEADER_BYTES {
        return Ok(None);
    }
    let header = FrameHeader::read_from(buf[..HEADER_BYTES].try_into().unwrap(), frame_bytes_max)?;
    let frame_bytes = header.frame_bytes();
    if buf.len() < frame_bytes {
        return Ok(None);
    }
    let archive = &buf[HEADER_BYTES..HEADER_BYTES + header.archive_bytes as usize];
    let voff = header.value_offset();
    let value = &buf[voff..voff + header.value_bytes as usize];
    Ok(Some(Parsed {
        header,
        archive,
        value,
        frame_bytes,
    }))
}

/// How many bytes the frame at the start of `buf` needs in total, once its header is in.
#[inline]
pub fn needed_bytes(buf: &[u8], frame_bytes_max: usize) -> Result<usize, FrameError> {
    if buf.len() < HEADER_BYTES {
        return Ok(HEADER_BYTES);
    }
    Ok(
        FrameHeader::read_from(buf[..HEADER_BYTES].try_into().unwrap(), frame_bytes_max)?
            .frame_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(archive: &[u8], value: &[u8], id: u32) -> Vec<u8> {
        let h = FrameHeader {
            archive_bytes: archive.len() as u32,
            value_bytes: value.len() as u32,
            request_id: id,
        };
        let mut out = vec![0u8; h.frame_bytes()];
        h.write_to((&mut out[..HEADER_BYTES]).try_into().unwrap());
        out[HEADER_BYTES..HEADER_BYTES + archive.len()].copy_from_slice(archive);
        let vo = h.value_offset();
        out[vo..vo + value.len()].copy_from_slice(value);
        out
    }

    #[test]
    fn round_trip_and_padding() {
        let f = frame(b"abc", b"hello world", 7);
        assert_eq!(f.len() % FRAME_ALIGN, 0);
        let p = parse(&f, 1 << 20).unwrap().unwrap();
        assert_eq!(p.archive, b"abc");
        assert_eq!(p.value, b"hello world");
        assert_eq!(p.header.request_id, 7);
        assert_eq!(p.frame_bytes, f.len());
    }

    #[test]
    fn incomplete_is_not_an_error() {
        let f = frame(b"abcdefgh", b"v", 1);
        for cut in 0..f.len() {
            assert!(parse(&f[..cut], 1 << 20).unwrap().is_none(), "cut at {cut}");
        }
    }

    #[test]
    fn bad_headers_are_errors() {
        let mut f = frame(b"abc", b"", 1);
        f[0] = 0;
        assert!(matches!(
            parse(&f, 1 << 20),
            Err(FrameError::BadMagic { .. })
        ));
        let f = frame(b"", b"", 1);
        assert_eq!(parse(&f, 1 << 20).unwrap_err(), FrameError::EmptyArchive);
        let f = frame(b"a", &[0u8; 100], 9);
        assert!(matches!(
            parse(&f, 64),
            Err(FrameError::TooLarge { request_id: 9, .. })
        ));
    }
}
