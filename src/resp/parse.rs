//! The RESP request parser: multibulk (`*N` then `$len` bulk strings) and inline commands.
//!
//! Incremental: [`parse`] answers "a whole command", "not enough bytes yet (at least this
//! many in all)" or "these bytes are bad" (with Redis's own protocol error text; the
//! connection then closes, as Redis does). Nothing is allocated by a peer's claimed length: a
//! `$1000000` header reserves nothing; the receive buffer grows only as bytes arrive (the
//! size hint lets it grow once instead of in steps).
//!
//! Cost of a multibulk command: one pass over its header lines; arguments are returned as
//! ranges into the receive buffer (no copy, no allocation once `args` has capacity). Inline
//! commands (telnet, redis-cli's fallback) are unescaped into a scratch buffer.

use std::ops::Range;

/// The limits a parse enforces. Bulk length is `object_bytes_max` (Redis's
/// proto-max-bulk-len); the others are `resp_*` params.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub bulk_bytes_max: usize,
    pub items_max: usize,
    pub inline_bytes_max: usize,
}

/// The outcome of one parse.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Need at least this many bytes in the buffer in all (a hint: may need more later).
    Incomplete { need: usize },
    /// A command of `consumed` bytes; its arguments are in `args` (empty: nothing to do, as
    /// for `*0` or a blank line). `inline`: the ranges index the scratch, not the buffer.
    Command { consumed: usize, inline: bool },
}

/// Bad bytes: the text after `-ERR ` that Redis sends before closing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError(pub String);

fn err<T>(msg: &str) -> Result<T, ProtocolError> {
    Err(ProtocolError(format!("Protocol error: {msg}")))
}

/// Header lines (`*N`, `$len`) are short; Redis allows 64 KiB before it calls one too big.
const HEADER_LINE_BYTES_MAX: usize = 64 * 1024;

fn find_crlf(b: &[u8]) -> Option<usize> {
    memchr_crlf(b)
}

#[inline]
fn memchr_crlf(b: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i + 1 < b.len() {
        match b[i..].iter().position(|&c| c == b'\r') {
            Some(p) if i + p + 1 < b.len() => {
                if b[i + p + 1] == b'\n' {
                    return Some(i + p);
                }
                i += p + 1;
            }
            _ => return None,
        }
    }
    None
}

/// A decimal as Redis's `string2ll` reads it: optional '-', digits, no leading zeros, fits
/// i64 (what `store::parse_i64` accepts). Digit by digit, no UTF-8 check or `str::parse`:
/// every command has two or more of these header lines.
#[inline]
fn parse_len(b: &[u8]) -> Option<i64> {
    let (neg, digits) = match b {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, b),
    };
    if digits.is_empty() || digits.len() > 19 || (digits[0] == b'0' && (neg || digits.len() > 1)) {
        return None;
    }
    let mut n: u64 = 0;
    for &c in digits {
        if !c.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u64::from(c - b'0');
    }
    if neg {
        // -2^63 is the one negative without a positive twin.
        0i64.checked_sub_unsigned(n)
    } else {
        i64::try_from(n).ok()
    }
}

/// Parses one command from the front of `buf`.
pub fn parse(
    buf: &[u8],
    lim: &Limits,
    args: &mut Vec<Range<usize>>,
    scratch: &mut Vec<u8>,
) -> Result<Parsed, ProtocolError> {
    args.clear();
    match buf.first() {
        None => Ok(Parsed::Incomplete { need: 1 }),
        Some(b'*') => parse_multibulk(buf, lim, args),
        Some(_) => parse_inline(buf, lim, args, scratch),
    }
}

fn parse_multibulk(
    buf: &[u8],
    lim: &Limits,
    args: &mut Vec<Range<usize>>,
) -> Result<Parsed, ProtocolError> {
    let Some(end) = find_crlf(buf) else {
        if buf.len() > HEADER_LINE_BYTES_MAX {
            return err("too big mbulk count string");
        }
        return Ok(Parsed::Incomplete {
            need: buf.len() + 1,
        });
    };
    let n = match parse_len(&buf[1..end]) {
        Some(n) if n <= lim.items_max as i64 => n,
        _ => return err("invalid multibulk length"),
    };
    let mut pos = end + 2;
    if n <= 0 {
        return Ok(Parsed::Command {
            consumed: pos,
            inline: false,
        });
    }
    for _ in 0..n {
        let rest = &buf[pos..];
        let Some(&first) = rest.first() else {
            return Ok(Parsed::Incomplete { need: pos + 4 });
        };
        if first != b'$' {
            let got = first as char;
            return Err(ProtocolError(format!(
                "Protocol error: expected '$', got '{got}'"
            )));
        }
        let Some(end) = find_crlf(rest) else {
            if rest.len() > HEADER_LINE_BYTES_MAX {
                return err("too big bulk count string");
            }
            return Ok(Parsed::Incomplete {
                need: pos + rest.len() + 1,
            });
        };
        let len = match parse_len(&rest[1..end]) {
            Some(l) if l >= 0 && l as u64 <= lim.bulk_bytes_max as u64 => l as usize,
            _ => return err("invalid bulk length"),
        };
        let start = pos + end + 2;
        let need = start + len + 2;
        if buf.len() < need {
            return Ok(Parsed::Incomplete { need });
        }
        if &buf[start + len..need] != b"\r\n" {
            return err("expected CRLF after a bulk string");
        }
        args.push(start..start + len);
        pos = need;
    }
    Ok(Parsed::Command {
        consumed: pos,
        inline: false,
    })
}

fn parse_inline(
    buf: &[u8],
    lim: &Limits,
    args: &mut Vec<Range<usize>>,
    scratch: &mut Vec<u8>,
) -> Result<Parsed, ProtocolError> {
    // An inline command is text. Control bytes (other than tab, CR, LF) mean binary garbage on
    // the shared port: refuse at once rather than wait for a newline that may never come.
    let end = buf.iter().position(|&c| c == b'\n').unwrap_or(buf.len());
    if buf[..end]
        .iter()
        .any(|&c| (c < 0x20 && c != b'\t' && c != b'\r') || c == 0x7f)
    {
        return err("unexpected control byte in an inline command");
    }
    let Some(nl) = (end < buf.len()).then_some(end) else {
        if buf.len() > lim.inline_bytes_max {
            return err("too big inline request");
        }
        return Ok(Parsed::Incomplete {
            need: buf.len() + 1,
        });
    };
    if nl > lim.inline_bytes_max {
        return err("too big inline request");
    }
    let line = match buf[..nl].strip_suffix(b"\r") {
        Some(l) => l,
        None => &buf[..nl],
    };
    scratch.clear();
    split_args(line, args, scratch)?;
    if args.len() > lim.items_max {
        return err("invalid multibulk length");
    }
    Ok(Parsed::Command {
        consumed: nl + 1,
        inline: true,
    })
}

/// Splits an inline line as Redis's `sdssplitargs` does: spaces separate; "double quotes"
/// take \n \r \t \b \a \\ \" and \xHH escapes; 'single quotes' take \'. A closing quote must be
/// followed by a space or the end.
fn split_args(
    line: &[u8],
    args: &mut Vec<Range<usize>>,
    out: &mut Vec<u8>,
) -> Result<(), ProtocolError> {
    let mut i = 0;
    let unbalanced = || err("unbalanced quotes in request");
    loop {
        while i < line.len() && line[i].is_ascii_whitespace() {
            i += 1;
        }
        if i == line.len() {
            return Ok(());
        }
        let start = out.len();
        let (mut inq, mut insq) = (false, false);
        loop {
            if inq {
                let Some(&c) = line.get(i) else {
                    return unbalanced();
                };
                if c == b'\\' && line.get(i + 1) == Some(&b'x') {
                    let hex = line.get(i + 2..i + 4).and_then(|h| {
                        std::str::from_utf8(h)
                            .ok()
                            .and_then(|s| u8::from_str_radix(s, 16).ok())
                    });
                    if let Some(b) = hex {
                        out.push(b);
                        i += 4;
                        continue;
                    }
                }
                if c == b'\\' && i + 1 < line.len() {
                    out.push(match line[i + 1] {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 8,
                        b'a' => 7,
                        other => other,
                    });
                    i += 2;
                } else if c == b'"' {
                    if line.get(i + 1).is_some_and(|c| !c.is_ascii_whitespace()) {
                        return unbalanced();
                    }
                    i += 1;
                    break;
                } else {
                    out.push(c);
                    i += 1;
                }
            } else if insq {
                let Some(&c) = line.get(i) else {
                    return unbalanced();
                };
                if c == b'\\' && line.get(i + 1) == Some(&b'\'') {
                    out.push(b'\'');
                    i += 2;
                } else if c == b'\'' {
                    if line.get(i + 1).is_some_and(|c| !c.is_ascii_whitespace()) {
                        return unbalanced();
                    }
                    i += 1;
                    break;
                } else {
                    out.push(c);
                    i += 1;
                }
            } else {
                match line.get(i) {
                    None => break,
                    Some(c) if c.is_ascii_whitespace() => break,
                    Some(b'"') => {
                        inq = true;
                        i += 1;
                    }
                    Some(b'\'') => {
                        insq = true;
                        i += 1;
                    }
                    Some(&c) => {
                        out.push(c);
                        i += 1;
                    }
                }
            }
        }
        args.push(start..out.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIM: Limits = Limits {
        bulk_bytes_max: 100,
        items_max: 8,
        inline_bytes_max: 64,
    };

    fn run(buf: &[u8]) -> Result<(Parsed, Vec<Vec<u8>>), ProtocolError> {
        let (mut args, mut scratch) = (Vec::new(), Vec::new());
        let p = parse(buf, &LIM, &mut args, &mut scratch)?;
        let base = match p {
            Parsed::Command { inline: true, .. } => &scratch[..],
            _ => buf,
        };
        let a = args.iter().map(|r| base[r.clone()].to_vec()).collect();
        Ok((p, a))
    }

    fn cmd(buf: &[u8]) -> Vec<Vec<u8>> {
        match run(buf).unwrap() {
            (Parsed::Command { consumed, .. }, a) => {
                assert_eq!(consumed, buf.len());
                a
            }
            other => panic!("expected a command, got {other:?}"),
        }
    }

    #[test]
    fn multibulk() {
        assert_eq!(
            cmd(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n"),
            vec![b"SET".to_vec(), b"k".to_vec(), b"".to_vec()]
        );
        assert_eq!(cmd(b"*0\r\n"), Vec::<Vec<u8>>::new());
        assert_eq!(cmd(b"*-1\r\n"), Vec::<Vec<u8>>::new());
        // Binary-safe: CRLF inside a bulk string is data.
        assert_eq!(cmd(b"*1\r\n$4\r\na\r\nb\r\n"), vec![b"a\r\nb".to_vec()]);
    }

    #[test]
    fn every_prefix_is_incomplete_never_an_error() {
        let whole = b"*2\r\n$3\r\nGET\r\n$10\r\n0123456789\r\n";
        for cut in 0..whole.len() {
            match run(&whole[..cut]).unwrap().0 {
                Parsed::Incomplete { need } => {
                    assert!(need > cut && need <= whole.len(), "cut {cut} need {need}")
                }
                other => panic!("cut {cut}: {other:?}"),
            }
        }
        // A claimed length reserves nothing: the hint is what the header says.
        assert_eq!(
            run(b"*1\r\n$100\r\nab").unwrap().0,
            Parsed::Incomplete { need: 4 + 6 + 102 }
        );
    }

    #[test]
    fn bad_bytes_answer_redis_errors() {
        let e = |b: &[u8]| run(b).unwrap_err().0;
        assert_eq!(e(b"*x\r\n"), "Protocol error: invalid multibulk length");
        assert_eq!(e(b"*9\r\n"), "Protocol error: invalid multibulk length");
        assert_eq!(e(b"*1\r\n:1\r\n"), "Protocol error: expected '$', got ':'");
        assert_eq!(e(b"*1\r\n$-2\r\n"), "Protocol error: invalid bulk length");
        assert_eq!(e(b"*1\r\n$101\r\n"), "Protocol error: invalid bulk length");
        assert_eq!(
            e(b"*1\r\n$1\r\nabc\r\n"),
            "Protocol error: expected CRLF after a bulk string"
        );
        assert_eq!(e(&[b'a'; 65]), "Protocol error: too big inline request");
        assert_eq!(
            e(b"set \"a\n"),
            "Protocol error: unbalanced quotes in request"
        );
        assert_eq!(
            e(b"set \"a\"b\n"),
            "Protocol error: unbalanced quotes in request"
        );
        assert_eq!(
            e(b"ab\x00c"),
            "Protocol error: unexpected control byte in an inline command"
        );
    }

    #[test]
    fn lengths_read_as_redis_reads_them() {
        for text in [
            "0",
            "1",
            "-1",
            "16",
            "1024",
            "-0",
            "01",
            "+1",
            "",
            "-",
            "1a",
            " 1",
            "9223372036854775807",
            "9223372036854775808",
            "-9223372036854775808",
            "-9223372036854775809",
            "99999999999999999999",
        ] {
            assert_eq!(
                parse_len(text.as_bytes()),
                crate::store::parse_i64(text.as_bytes()),
                "{text:?}"
            );
        }
    }

    #[test]
    fn inline() {
        assert_eq!(cmd(b"PING\r\n"), vec![b"PING".to_vec()]);
        assert_eq!(
            cmd(b"  set  k   v\n"),
            vec![b"set".to_vec(), b"k".to_vec(), b"v".to_vec()]
        );
        assert_eq!(
            cmd(b"set \"a b\\n\\x41\" 'it\\'s'\r\n"),
            vec![b"set".to_vec(), b"a b\nA".to_vec(), b"it's".to_vec()]
        );
        assert_eq!(cmd(b"\r\n"), Vec::<Vec<u8>>::new());
        assert_eq!(run(b"PIN").unwrap().0, Parsed::Incomplete { need: 4 });
    }
}
