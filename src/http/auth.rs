//! Who an HTTP request comes from, on `rest_port` and `mgt_http_port`, when client
//! credentials are configured (`requirepass` / `users_file`).
//!
//! - `Authorization: Basic base64(user:password)` (curl `-u user:password`).
//! - `Authorization: Bearer TOKEN`, where the token is `user:password`, or a password alone
//!   for the user `default` (the `requirepass`): the same secret as Basic, for clients that
//!   only speak bearer tokens. There are no separate API tokens in this version.
//!
//! No or bad credentials: 401 with `WWW-Authenticate` (Basic and Bearer); a role too low
//! for the request: 403 (the shard's role check, as for native clients). `/healthz` and
//! `/readyz` stay open (orchestrators probe them without credentials); every other path,
//! `/metrics` included, needs a user (any role).
//!
//! Cost: the password check (argon2, see `auth::users`) runs once per connection: the
//! connection remembers the last `Authorization` value that verified and its role, so a
//! keep-alive client's later requests cost one comparison.

use std::cell::RefCell;

use base64::Engine as _;
use hyper::StatusCode;
use hyper::header::{AUTHORIZATION, HeaderMap, HeaderValue, WWW_AUTHENTICATE};

use super::body::Body;
use super::error::HttpError;
use crate::auth::users::{Role, Users};

/// The last `Authorization` value that verified on one HTTP connection, and its user.
#[derive(Default)]
pub struct ConnAuth {
    verified: RefCell<Option<(Vec<u8>, Role, String)>>,
}

/// Why a request has no user.
pub enum Refusal {
    /// No `Authorization` header, or not one we read.
    Missing,
    /// Credentials that did not verify.
    Wrong,
    /// `auth_checks_per_s_max` reached: not checked.
    Busy,
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// (user, password) from an `Authorization` value.
pub fn credentials(value: &[u8]) -> Option<(Option<Vec<u8>>, Vec<u8>)> {
    let text = std::str::from_utf8(value).ok()?.trim();
    let (scheme, rest) = text.split_once(' ')?;
    let pair = if scheme.eq_ignore_ascii_case("basic") {
        base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .ok()?
    } else if scheme.eq_ignore_ascii_case("bearer") {
        rest.trim().as_bytes().to_vec()
    } else {
        return None;
    };
    match pair.iter().position(|&b| b == b':') {
        Some(i) => Some((Some(pair[..i].to_vec()), pair[i + 1..].to_vec())),
        None if scheme.eq_ignore_ascii_case("bearer") => Some((None, pair)),
        None => None,
    }
}

impl ConnAuth {
    /// The request's user and role, checking the password only when this connection has not
    /// verified this exact `Authorization` value before.
    pub fn check(&self, users: &Users, headers: &HeaderMap) -> Result<(Role, String), Refusal> {
        let value = headers
            .get(AUTHORIZATION)
            .ok_or(Refusal::Missing)?
            .as_bytes();
        if let Some((v, role, user)) = self.verified.borrow().as_ref()
            && ct_eq(v, value)
        {
            return Ok((*role, user.clone()));
        }
        let (user, password) = credentials(value).ok_or(Refusal::Missing)?;
        let role = users
            .verify(user.as_deref(), &password)
            .map_err(|e| match e {
                crate::auth::users::AuthFail::Busy => Refusal::Busy,
                crate::auth::users::AuthFail::WrongPass => Refusal::Wrong,
            })?;
        let name = String::from_utf8_lossy(user.as_deref().unwrap_or(b"default")).into_owned();
        *self.verified.borrow_mut() = Some((value.to_vec(), role, name.clone()));
        Ok((role, name))
    }
}

/// The 401 answer: what was wrong and how to send credentials.
pub fn unauthorized(why: Refusal) -> hyper::Response<Body> {
    if let Refusal::Busy = why {
        let mut e = HttpError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "AuthBusy",
            crate::auth::users::AuthFail::Busy.to_string(),
        );
        e.retry_after_ms = Some(1000);
        return e.into_response();
    }
    let (error, message) = match why {
        Refusal::Missing => (
            "AuthRequired",
            "this server has client users (requirepass or users_file): send `Authorization: Basic base64(user:password)` (curl -u user:password) or `Authorization: Bearer user:password`",
        ),
        Refusal::Wrong | Refusal::Busy => (
            "AuthFailed",
            "invalid username-password pair or user is disabled",
        ),
    };
    let mut r = HttpError::new(StatusCode::UNAUTHORIZED, error, message).into_response();
    let h = r.headers_mut();
    h.append(
        WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"stategrid\", charset=\"UTF-8\""),
    );
    h.append(
        WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"stategrid\""),
    );
    r
}

/// The 403 a client refused by protected mode gets before its connection closes.
pub fn denied_response() -> String {
    let body = serde_json::json!({
        "error": "ProtectedMode",
        "message": crate::auth::protect::DENIED,
    })
    .to_string();
    format!(
        "HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_and_bearer_credentials() {
        let b64 = base64::engine::general_purpose::STANDARD.encode("app:pa:ss");
        assert_eq!(
            credentials(format!("Basic {b64}").as_bytes()),
            Some((Some(b"app".to_vec()), b"pa:ss".to_vec()))
        );
        assert_eq!(
            credentials(b"Bearer app:pw"),
            Some((Some(b"app".to_vec()), b"pw".to_vec()))
        );
        assert_eq!(credentials(b"bearer pw"), Some((None, b"pw".to_vec())));
        assert_eq!(credentials(b"Digest x"), None);
        assert_eq!(credentials(b"Basic !!!"), None);
    }
}
