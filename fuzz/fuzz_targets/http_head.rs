//! The HTTP data API's own parsing (`src/http/rest.rs`, `src/http/multipart.rs`): the path
//! (`/data/{ns}/{key}`, strict percent-decoding, name and key limits), the query, the headers
//! a method reads (`If-Match`/`If-None-Match`, `Soss-TimeoutSec`/`Soss-TimeoutType`,
//! `Soss-LockToken`, `Content-Type`) and, for a form post, the `multipart/form-data` body.
//! hyper's own HTTP/1 parser is not the target: the input is shaped as the request hyper
//! hands over.
//!
//! Input: byte 0 picks the method; then lines: the request target (`/data/...?...`, kept only
//! when it is a URI hyper would accept), `Name: value` headers (kept when valid header
//! names and values), an empty line, and the body.
//!
//! Holds: no panic; an error is a 4xx with a stable name and a message, and renders; a path
//! that parsed names a namespace and key within their limits, and the same target parses
//! again from its canonical percent-encoding; a form that parsed has a key within its limit.
#![no_main]

use bytes::Bytes;
use hyper::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Uri};
use libfuzzer_sys::fuzz_target;
use stategrid::config::Config;
use stategrid::http::error::HttpError;
use stategrid::http::multipart::{boundary, parse_form};
use stategrid::http::rest::{Target, parse_head};

const METHODS: [Method; 6] = [
    Method::GET,
    Method::HEAD,
    Method::PUT,
    Method::DELETE,
    Method::POST,
    Method::PATCH,
];

fn typed(e: HttpError) {
    assert!(e.status.is_client_error(), "{e:?} is not a 4xx");
    assert!(
        !e.error.is_empty() && e.error.bytes().all(|b| b.is_ascii_alphanumeric()),
        "{e:?} has no stable name"
    );
    assert!(!e.message.is_empty(), "{e:?} says nothing");
    let _ = e.into_response();
}

/// Percent-encodes every byte but unreserved ones (what a careful client sends).
fn encode(b: &[u8]) -> String {
    let mut s = String::new();
    for &c in b {
        if c.is_ascii_alphanumeric() || b"-._~".contains(&c) {
            s.push(c as char);
        } else {
            s.push_str(&format!("%{c:02X}"));
        }
    }
    s
}

fuzz_target!(|data: &[u8]| {
    let Some((&m, rest)) = data.split_first() else {
        return;
    };
    let method = &METHODS[m as usize % METHODS.len()];
    let mut lines = rest.split(|b| *b == b'\n');
    let Some(target) = lines.next() else {
        return;
    };
    let Ok(uri) = Uri::try_from(target) else {
        return;
    };
    let mut headers = HeaderMap::new();
    let mut consumed = target.len() + 1;
    for line in lines.by_ref() {
        consumed += line.len() + 1;
        if line.is_empty() {
            break;
        }
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) {
            headers.append(n, v);
        }
    }
    let body = Bytes::copy_from_slice(rest.get(consumed..).unwrap_or(&[]));
    let cfg = Config::default();
    let path = uri.path();
    let query = uri.query().unwrap_or("");
    match parse_head(method, path, query, &headers, &cfg, 7) {
        Err(e) => typed(e),
        Ok(Target::Root) => {}
        Ok(Target::Namespace(ns)) => {
            assert!(!ns.is_empty() && ns.len() <= cfg.namespace_bytes_max as usize);
            let again = parse_head(
                &Method::GET,
                &format!("/data/{}", encode(ns.as_bytes())),
                "",
                &HeaderMap::new(),
                &cfg,
                7,
            );
            assert_eq!(again.ok(), Some(Target::Namespace(ns.clone())));
            if *method == Method::POST {
                let ct = headers
                    .get(CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                let b = boundary(ct).expect("parse_head checked the boundary");
                match futures_lite::future::block_on(parse_form(b, body, &cfg)) {
                    Err(e) => typed(e),
                    Ok(form) => assert!(
                        !form.key.is_empty() && form.key.len() <= cfg.key_bytes_max as usize
                    ),
                }
            }
        }
        Ok(Target::Object(ns, key)) => {
            assert!(!ns.is_empty() && ns.len() <= cfg.namespace_bytes_max as usize);
            assert!(!key.is_empty() && key.len() <= cfg.key_bytes_max as usize);
            let p = format!("/data/{}/{}", encode(ns.as_bytes()), encode(&key));
            let again = parse_head(&Method::GET, &p, "", &HeaderMap::new(), &cfg, 7);
            assert_eq!(again.ok(), Some(Target::Object(ns, key)));
        }
    }
});
