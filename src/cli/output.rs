//! What commands print: each [`Outcome`] holds its text form and its `--json` form.
//!
//! Bytes in JSON: a value that is valid UTF-8 is a JSON string with `"encoding": "utf8"`;
//! any other value is lowercase hex with `"encoding": "hex"` (no base64 dependency, and hex is
//! easy to decode in a shell: `xxd -r -p`). Keys are printed as UTF-8 when they are, and as
//! Rust-style escaped ASCII (`\xff`) otherwise. Lock tokens are JSON strings of decimal
//! digits, because JSON tools that read numbers as doubles (jq, JavaScript) would round a
//! 64-bit token.

use std::io::Write;

use serde_json::{Value, json};
use stategrid_client::{Meta, NsInfo, Stats, TimeoutKind};

/// What a successful command prints.
#[derive(Debug)]
pub struct Outcome {
    /// The `--json` form: one object.
    pub json: Value,
    /// The text form, on stdout.
    pub text: Text,
    /// An extra line on stderr in text mode (the lock token of `get --lock`), so stdout keeps
    /// only the value's bytes.
    pub note: Option<String>,
}

/// A command's text output.
#[derive(Debug)]
pub enum Text {
    /// Lines for a person; a newline is added at the end when missing.
    Lines(String),
    /// Raw bytes, written as they are (`get`).
    Bytes(Vec<u8>),
}

impl Outcome {
    /// An outcome printing `text` (lines) or `json`.
    pub fn lines(text: impl Into<String>, json: Value) -> Outcome {
        Outcome {
            json,
            text: Text::Lines(text.into()),
            note: None,
        }
    }

    /// Prints the outcome. A closed stdout (`| head`) is not an error worth reporting.
    pub fn print(&self, json: bool) {
        let mut out = std::io::stdout().lock();
        let _ = if json {
            writeln!(out, "{}", self.json)
        } else {
            if let Some(note) = &self.note {
                eprintln!("stategrid: {note}");
            }
            match &self.text {
                Text::Lines(s) if s.is_empty() || s.ends_with('\n') => out.write_all(s.as_bytes()),
                Text::Lines(s) => writeln!(out, "{s}"),
                Text::Bytes(b) => out.write_all(b),
            }
        };
        let _ = out.flush();
    }
}

/// `(value, encoding)` for JSON: UTF-8 text as is, anything else as hex.
pub fn bytes_json(bytes: &[u8]) -> (Value, &'static str) {
    match std::str::from_utf8(bytes) {
        Ok(s) => (Value::String(s.to_owned()), "utf8"),
        Err(_) => (Value::String(hex(bytes)), "hex"),
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// A key for a person or a JSON string: UTF-8 as is, otherwise escaped ASCII.
pub fn key_text(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(s) => s.to_owned(),
        Err(_) => key.escape_ascii().to_string(),
    }
}

/// The CLI's and JSON's name for a timeout kind (the `--timeout-kind` spelling).
pub fn kind_name(kind: TimeoutKind) -> &'static str {
    match kind {
        TimeoutKind::Absolute => "absolute",
        TimeoutKind::Sliding => "sliding",
        TimeoutKind::ResetOnUpdate => "reset-on-update",
    }
}

/// An object's metadata as JSON fields.
pub fn meta_json(meta: &Meta) -> Value {
    json!({
        "value_bytes": meta.value_bytes,
        "version": meta.version,
        "created_ms": meta.created_ms,
        "updated_ms": meta.updated_ms,
        "timeout_s": meta.timeout.timeout_s,
        "timeout_kind": kind_name(meta.timeout.kind),
        "expires_in_ms": meta.expires_in_ms,
        "locked": meta.lock.is_some(),
        "lock_expires_in_ms": meta.lock.map(|l| l.expires_in_ms),
        "evictable": meta.evictable,
    })
}

/// An object's metadata for a person, one `name value` per line.
pub fn meta_text(meta: &Meta) -> String {
    let timeout = if meta.timeout.timeout_s == 0 {
        "none".to_owned()
    } else {
        format!(
            "{} s {}",
            meta.timeout.timeout_s,
            kind_name(meta.timeout.kind)
        )
    };
    let expires = match meta.expires_in_ms {
        Some(ms) => format!("in {ms} ms"),
        None => "never".to_owned(),
    };
    let lock = match meta.lock {
        Some(l) => format!("locked, expires in {} ms", l.expires_in_ms),
        None => "unlocked".to_owned(),
    };
    format!(
        "value_bytes  {}\nversion      {}\ncreated_ms   {}\nupdated_ms   {}\ntimeout      {timeout}\nexpires      {expires}\nlock         {lock}\nevictable    {}\n",
        meta.value_bytes, meta.version, meta.created_ms, meta.updated_ms, meta.evictable
    )
}

/// Bytes for a person: `1536 (1.5 KiB)`.
pub fn bytes_text(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut size = bytes as f64;
    let mut unit = 0;
    while size >= 1024.0 && unit + 1 < UNITS.len() {
        size /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{bytes} ({size:.1} {})", UNITS[unit])
    }
}

/// `stategrid show` as JSON.
pub fn stats_json(host: &str, stats: &Stats) -> Value {
    let params: serde_json::Map<String, Value> = stats
        .params
        .iter()
        .map(|p| (p.name.clone(), Value::String(p.value.clone())))
        .collect();
    json!({
        "host": host,
        "version": stats.version,
        "shards": stats.shards,
        "partitions": stats.partitions,
        "uptime_s": stats.uptime_s,
        "objects": stats.objects,
        "object_bytes": stats.object_bytes,
        "resident_bytes": stats.resident_bytes,
        "connections": stats.connections,
        "requests": stats.requests,
        "evictions": stats.evictions,
        "expirations": stats.expirations,
        "shard_allocations": stats.shard_allocations,
        "forwarded_requests": stats.forwarded_requests,
        "handed_off_connections": stats.handed_off_connections,
        "params": params,
    })
}

/// `stategrid show` for a person.
pub fn stats_text(host: &str, stats: &Stats) -> String {
    let mut s = format!(
        "host               {host}\nversion            {}\nshards             {}\npartitions         {}\nuptime_s           {}\nobjects            {}\nobject memory      {}\nresident memory    {}\nconnections        {}\nrequests           {}\nevictions          {}\nexpirations        {}\nshard allocations  {}\nforwarded requests {}\nhanded-off conns   {}\nparameters:\n",
        stats.version,
        stats.shards,
        stats.partitions,
        stats.uptime_s,
        stats.objects,
        bytes_text(stats.object_bytes),
        bytes_text(stats.resident_bytes),
        stats.connections,
        stats.requests,
        stats.evictions,
        stats.expirations,
        stats.shard_allocations,
        stats.forwarded_requests,
        stats.handed_off_connections,
    );
    let width = stats.params.iter().map(|p| p.name.len()).max().unwrap_or(0);
    for p in &stats.params {
        s.push_str(&format!("  {:width$}  {}\n", p.name, p.value));
    }
    s
}

/// `stategrid namespaces` for a person: a table.
pub fn namespaces_text(items: &[NsInfo]) -> String {
    let width = items.iter().map(|n| n.name.len()).max().unwrap_or(0).max(4);
    let mut s = format!("{:width$}  {:>10}  {:>12}\n", "NAME", "ID", "OBJECTS");
    for n in items {
        s.push_str(&format!(
            "{:width$}  {:>10}  {:>12}\n",
            n.name, n.id, n.objects
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use stategrid_client::{LockInfo, Timeout};

    #[test]
    fn bytes_are_utf8_or_hex() {
        assert_eq!(bytes_json(b"hello"), (json!("hello"), "utf8"));
        assert_eq!(bytes_json(&[0xff, 0x00, 0x10]), (json!("ff0010"), "hex"));
        assert_eq!(key_text(b"k1"), "k1");
        assert_eq!(key_text(&[b'a', 0xff]), "a\\xff");
    }

    #[test]
    fn meta_renders_both_ways() {
        let meta = Meta {
            value_bytes: 5,
            version: 3,
            created_ms: 10,
            updated_ms: 20,
            timeout: Timeout {
                timeout_s: 60,
                kind: TimeoutKind::Sliding,
            },
            expires_in_ms: Some(59_000),
            lock: Some(LockInfo { expires_in_ms: 900 }),
            evictable: false,
            content_type_bytes: 0,
        };
        let j = meta_json(&meta);
        assert_eq!(j["timeout_kind"], "sliding");
        assert_eq!(j["locked"], true);
        assert_eq!(j["lock_expires_in_ms"], 900);
        let t = meta_text(&meta);
        assert!(
            t.contains("60 s sliding") && t.contains("locked, expires in 900 ms"),
            "{t}"
        );
        assert_eq!(bytes_text(1536), "1536 (1.5 KiB)");
        assert_eq!(bytes_text(10), "10 B");
    }
}
