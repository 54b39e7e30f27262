//! The value encoding of a Redis hash, and of a list of items in a `Response::Items` trailer.
//!
//! A hash is stored as ordinary value bytes (so memory accounting, the LRU, replication and
//! migration treat it as any object) in this layout, all integers little-endian:
//!
//! ```text
//! u32 field count, then per field: u32 name length, name bytes, u32 value length, value bytes
//! ```
//!
//! Fields keep insertion order (as Redis's small hashes do). A change decodes the field list
//! (borrowing, no copy), edits it, and encodes a new value: O(hash size) per write, which suits
//! session hashes of a few fields; `hash_fields_max` bounds the cost.
//!
//! A list (`Items`) is `u32 length, bytes` per item, `u32::MAX` for a null item, no count (the
//! response carries it).

/// The null item marker of a list.
pub const NIL_LEN: u32 = u32::MAX;

/// A hash's fields, borrowed from its value bytes.
pub type Fields<'a> = Vec<(&'a [u8], &'a [u8])>;

fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if b.len() < n {
        return None;
    }
    let (head, rest) = b.split_at(n);
    *b = rest;
    Some(head)
}

fn take_u32(b: &mut &[u8]) -> Option<u32> {
    take(b, 4).map(|x| u32::from_le_bytes(x.try_into().expect("4 bytes")))
}

/// Decodes a stored hash. None when the bytes are not a hash (a bug: the kind tag says they are).
pub fn decode(mut b: &[u8]) -> Option<Fields<'_>> {
    if b.is_empty() {
        return Some(Vec::new());
    }
    let n = take_u32(&mut b)? as usize;
    // Never trust the count for an allocation: each field takes at least 8 bytes.
    let mut out = Vec::with_capacity(n.min(b.len() / 8));
    for _ in 0..n {
        let fl = take_u32(&mut b)? as usize;
        let f = take(&mut b, fl)?;
        let vl = take_u32(&mut b)? as usize;
        let v = take(&mut b, vl)?;
        out.push((f, v));
    }
    b.is_empty().then_some(out)
}

/// Encodes fields as a stored hash.
pub fn encode(fields: &[(&[u8], &[u8])]) -> Vec<u8> {
    let len = 4 + fields
        .iter()
        .map(|(f, v)| 8 + f.len() + v.len())
        .sum::<usize>();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&(fields.len() as u32).to_le_bytes());
    for (f, v) in fields {
        out.extend_from_slice(&(f.len() as u32).to_le_bytes());
        out.extend_from_slice(f);
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        out.extend_from_slice(v);
    }
    out
}

/// Appends one list item (`None` = null).
pub fn push_item(out: &mut Vec<u8>, item: Option<&[u8]>) {
    match item {
        Some(b) => {
            out.extend_from_slice(&(b.len() as u32).to_le_bytes());
            out.extend_from_slice(b);
        }
        None => out.extend_from_slice(&NIL_LEN.to_le_bytes()),
    }
}

/// Decodes `count` list items; None when the bytes do not hold exactly that.
pub fn decode_items(mut b: &[u8], count: usize) -> Option<Vec<Option<&[u8]>>> {
    let mut out = Vec::with_capacity(count.min(b.len() / 4));
    for _ in 0..count {
        match take_u32(&mut b)? {
            NIL_LEN => out.push(None),
            n => out.push(Some(take(&mut b, n as usize)?)),
        }
    }
    b.is_empty().then_some(out)
}

/// Splits a request trailer that carries a list of items (fields, or field/value pairs).
pub fn decode_args(b: &[u8]) -> Option<Vec<&[u8]>> {
    let mut rest = b;
    let mut out = Vec::new();
    while !rest.is_empty() {
        let n = take_u32(&mut rest)?;
        out.push(take(&mut rest, n as usize)?);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_exact_bytes() {
        let fields: Vec<(&[u8], &[u8])> = vec![(b"a", b"1"), (b"data", b"")];
        let enc = encode(&fields);
        assert_eq!(
            enc,
            [
                &2u32.to_le_bytes()[..],
                &1u32.to_le_bytes(),
                b"a",
                &1u32.to_le_bytes(),
                b"1",
                &4u32.to_le_bytes(),
                b"data",
                &0u32.to_le_bytes(),
            ]
            .concat()
        );
        assert_eq!(decode(&enc).unwrap(), fields);
        assert_eq!(decode(b"").unwrap(), Vec::<(&[u8], &[u8])>::new());
    }

    #[test]
    fn bad_bytes_are_refused_not_trusted() {
        assert!(decode(&[255, 255, 255, 255]).is_none());
        assert!(decode(&[1, 0, 0, 0, 9, 0, 0, 0, b'x']).is_none());
        let mut enc = encode(&[(b"a", b"b")]);
        enc.push(0);
        assert!(decode(&enc).is_none());
    }

    #[test]
    fn items() {
        let mut out = Vec::new();
        push_item(&mut out, Some(b"x"));
        push_item(&mut out, None);
        assert_eq!(decode_items(&out, 2).unwrap(), vec![Some(&b"x"[..]), None]);
        assert!(decode_items(&out, 3).is_none());
        assert!(decode_items(&out, 1).is_none());
        let mut args = Vec::new();
        push_item(&mut args, Some(b"f"));
        push_item(&mut args, Some(b""));
        assert_eq!(decode_args(&args).unwrap(), vec![&b"f"[..], &b""[..]]);
    }
}
