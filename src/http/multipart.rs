//! `POST /data/{ns}` with `multipart/form-data`: ScaleOut's upload form.
//!
//! Fields: `Soss-Key` (the key, required), `Soss-TimeoutSec` and `Soss-TimeoutType` (optional,
//! as the headers of a PUT), and the object's value: the one other field (any name; a file
//! part in browsers' forms), whose part `Content-Type` is stored as the object's (as a PUT's
//! header is). The body is bounded by the same limits as a PUT's and parsed
//! by `multer`; a malformed form is a 400 and changes nothing.

use bytes::Bytes;
use hyper::StatusCode;
use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use stategrid_proto::Timeout;

use super::body::Body;
use super::error::HttpError;
use super::rest::{Cond, Rest, WriteHeaders, check_key, content_type, parse_timeout};
use crate::config::Config;
use crate::server::local_api::LocalSession;

pub async fn post(
    rest: &Rest,
    session: &LocalSession,
    ns: &str,
    req: hyper::Request<Incoming>,
) -> Result<hyper::Response<Body>, HttpError> {
    let (parts, incoming) = req.into_parts();
    let ct = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let boundary = boundary(ct)?;
    let body = rest.read_body(&parts.headers, incoming).await?;
    let form = parse_form(boundary, body, rest.cfg()).await?;
    let w = WriteHeaders {
        cond: Cond::None,
        timeout: form.timeout,
        lock_token: None,
        unlock: false,
        content_type: form.content_type,
    };
    let mut resp = rest.put(session, ns, form.key, w, form.value).await?;
    // A form post stores (or replaces) the object: 201 as ScaleOut's upload answers.
    *resp.status_mut() = StatusCode::CREATED;
    Ok(resp)
}

/// What an upload form holds.
#[derive(Debug)]
pub struct Form {
    pub key: Vec<u8>,
    pub timeout: Option<Timeout>,
    pub value: Bytes,
    /// The value part's `Content-Type`, checked as a PUT's header.
    pub content_type: Option<String>,
}

/// The boundary of a `multipart/form-data` content type.
pub fn boundary(content_type: &str) -> Result<String, HttpError> {
    multer::parse_boundary(content_type).map_err(|_| {
        HttpError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "NotMultipart",
            "POST /data/{ns} takes multipart/form-data with a boundary (fields Soss-Key, Soss-TimeoutSec, Soss-TimeoutType and the value)",
        )
    })
}

/// Reads an upload form from a whole body (already bounded by the body limits). No I/O:
/// the body is one chunk, so this never waits (the fuzz target `http_head` polls it with
/// `block_on`).
pub async fn parse_form(boundary: String, body: Bytes, cfg: &Config) -> Result<Form, HttpError> {
    let stream = futures_lite::stream::once(Ok::<Bytes, std::convert::Infallible>(body));
    let mut form = multer::Multipart::new(stream, boundary);
    let bad = |e: multer::Error| {
        HttpError::bad_request(
            "BadMultipart",
            format!("malformed multipart/form-data: {e}"),
        )
    };
    let (mut key, mut sec, mut kind, mut value) = (None, None, None, None);
    let mut value_type = None;
    while let Some(field) = form.next_field().await.map_err(bad)? {
        let name = field.name().unwrap_or("").to_owned();
        let part_type = field.content_type().map(|m| m.to_string());
        let data = field.bytes().await.map_err(bad)?;
        let text = || {
            String::from_utf8(data.to_vec()).map_err(|_| {
                HttpError::bad_request("BadMultipart", format!("field {name} is not UTF-8"))
            })
        };
        match name.to_ascii_lowercase().as_str() {
            "soss-key" => key = Some(data.to_vec()),
            "soss-timeoutsec" => sec = Some(text()?),
            "soss-timeouttype" => kind = Some(text()?),
            _ if value.is_none() => {
                value = Some(data);
                value_type = part_type;
            }
            _ => {
                return Err(HttpError::bad_request(
                    "BadMultipart",
                    format!(
                        "a second value field ({name}); the form takes Soss-Key, Soss-TimeoutSec, Soss-TimeoutType and one value"
                    ),
                ));
            }
        }
    }
    let key = key
        .filter(|k| !k.is_empty())
        .ok_or_else(|| HttpError::bad_request("BadMultipart", "the form has no Soss-Key field"))?;
    check_key(&key, cfg)?;
    let value = value
        .ok_or_else(|| HttpError::bad_request("BadMultipart", "the form has no value field"))?;
    Ok(Form {
        key,
        timeout: parse_timeout(sec.as_deref(), kind.as_deref())?,
        value,
        content_type: content_type(value_type.as_deref().map(str::as_bytes), cfg)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(body: &str) -> Result<Form, HttpError> {
        let b = boundary("multipart/form-data; boundary=XyZ")?;
        futures_lite::future::block_on(parse_form(
            b,
            Bytes::from(body.replace('\n', "\r\n")),
            &Config::default(),
        ))
    }

    #[test]
    fn an_upload_form_parses_without_a_shard() {
        let f = form("--XyZ\nContent-Disposition: form-data; name=\"Soss-Key\"\n\nuser1\n--XyZ\nContent-Disposition: form-data; name=\"Soss-TimeoutSec\"\n\n60\n--XyZ\nContent-Disposition: form-data; name=\"file\"\n\nhello\n--XyZ--\n")
            .expect("a valid form");
        assert_eq!(f.key, b"user1");
        assert_eq!(f.value, Bytes::from_static(b"hello"));
        assert_eq!(f.timeout.map(|t| t.timeout_s), Some(60));
        assert_eq!(f.content_type, None);
        let f = form("--XyZ\nContent-Disposition: form-data; name=\"Soss-Key\"\n\nu\n--XyZ\nContent-Disposition: form-data; name=\"file\"\nContent-Type: application/json\n\n{}\n--XyZ--\n")
            .expect("a valid form with a typed part");
        assert_eq!(f.content_type.as_deref(), Some("application/json"));
    }

    #[test]
    fn a_bad_form_is_a_typed_400() {
        for (body, error) in [
            (
                "--XyZ\nContent-Disposition: form-data; name=\"file\"\n\nhello\n--XyZ--\n",
                "BadMultipart",
            ),
            (
                "--XyZ\nContent-Disposition: form-data; name=\"Soss-Key\"\n\nk\n--XyZ\n",
                "BadMultipart",
            ),
            (
                "--XyZ\nContent-Disposition: form-data; name=\"Soss-Key\"\n\nk\n--XyZ\nContent-Disposition: form-data; name=\"Soss-TimeoutSec\"\n\nsoon\n--XyZ\nContent-Disposition: form-data; name=\"v\"\n\nx\n--XyZ--\n",
                "BadTimeout",
            ),
        ] {
            let e = form(body).expect_err(body);
            assert_eq!(
                (e.status, e.error.as_str()),
                (StatusCode::BAD_REQUEST, error),
                "{body}"
            );
        }
        let e = boundary("text/plain").expect_err("not a form");
        assert_eq!(e.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }
}
