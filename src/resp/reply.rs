//! RESP2/RESP3 reply encoding into a byte vector. Each function appends one element.
//!
//! RESP3 differs from RESP2 only where a client can tell: null (`_` vs `$-1`), maps (`%` vs a
//! flat array), booleans are not used. Numbers are written with `itoa`-free formatting into
//! the vector directly (no temporary String).

use std::io::Write;

pub fn simple(out: &mut Vec<u8>, s: &str) {
    out.push(b'+');
    out.extend_from_slice(s.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// An error line; `s` starts with its code (`ERR`, `WRONGTYPE`...). CR/LF in it become spaces.
pub fn error(out: &mut Vec<u8>, s: &str) {
    out.push(b'-');
    out.extend(
        s.bytes()
            .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
    );
    out.extend_from_slice(b"\r\n");
}

/// `prefix`, the decimal `n`, CRLF: the line every length and integer reply is. Formatted on
/// the stack (no `fmt` machinery: this runs for every bulk reply on the hot path).
#[inline]
fn line(out: &mut Vec<u8>, prefix: u8, n: i64) {
    let mut buf = [0u8; 24];
    let mut i = buf.len();
    let mut m = n.unsigned_abs();
    loop {
        i -= 1;
        buf[i] = b'0' + (m % 10) as u8;
        m /= 10;
        if m == 0 {
            break;
        }
    }
    if n < 0 {
        i -= 1;
        buf[i] = b'-';
    }
    out.reserve(buf.len() - i + 3);
    out.push(prefix);
    out.extend_from_slice(&buf[i..]);
    out.extend_from_slice(b"\r\n");
}

pub fn int(out: &mut Vec<u8>, n: i64) {
    line(out, b':', n);
}

/// The header of a bulk string of `len` bytes (the bytes and `\r\n` follow).
pub fn bulk_head(out: &mut Vec<u8>, len: usize) {
    line(out, b'$', len as i64);
}

pub fn bulk(out: &mut Vec<u8>, b: &[u8]) {
    bulk_head(out, b.len());
    out.extend_from_slice(b);
    out.extend_from_slice(b"\r\n");
}

pub fn null(out: &mut Vec<u8>, resp3: bool) {
    out.extend_from_slice(if resp3 { b"_\r\n" } else { b"$-1\r\n" });
}

pub fn null_array(out: &mut Vec<u8>, resp3: bool) {
    out.extend_from_slice(if resp3 { b"_\r\n" } else { b"*-1\r\n" });
}

pub fn array(out: &mut Vec<u8>, n: usize) {
    line(out, b'*', n as i64);
}

/// A map of `n` pairs: `%n` in RESP3, an array of 2n in RESP2.
pub fn map(out: &mut Vec<u8>, n: usize, resp3: bool) {
    if resp3 {
        let _ = write!(out, "%{n}\r\n");
    } else {
        array(out, 2 * n);
    }
}

/// A verbatim text (INFO, CLIENT INFO): a bulk string in RESP2, `=` with `txt:` in RESP3.
pub fn verbatim(out: &mut Vec<u8>, text: &str, resp3: bool) {
    if resp3 {
        let _ = write!(out, "={}\r\ntxt:", text.len() + 4);
        out.extend_from_slice(text.as_bytes());
        out.extend_from_slice(b"\r\n");
    } else {
        bulk(out, text.as_bytes());
    }
}

pub fn ok(out: &mut Vec<u8>) {
    out.extend_from_slice(b"+OK\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_bytes() {
        let mut o = Vec::new();
        simple(&mut o, "OK");
        error(&mut o, "ERR a\r\nb");
        int(&mut o, -5);
        int(&mut o, 0);
        int(&mut o, i64::MIN);
        array(&mut o, 12);
        bulk_head(&mut o, 1024);
        bulk(&mut o, b"hi");
        null(&mut o, false);
        null(&mut o, true);
        map(&mut o, 1, false);
        map(&mut o, 1, true);
        verbatim(&mut o, "x", true);
        assert_eq!(
            o,
            b"+OK\r\n-ERR a  b\r\n:-5\r\n:0\r\n:-9223372036854775808\r\n*12\r\n$1024\r\n$2\r\nhi\r\n$-1\r\n_\r\n*2\r\n%1\r\n=5\r\ntxt:x\r\n"
        );
    }
}
