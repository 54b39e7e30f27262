//! HTTP errors: a status, and a JSON body naming the error, the limit involved and what to do.

use hyper::StatusCode;
use hyper::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use serde::Serialize;
use stategrid_proto::{ErrorCode, ErrorReply};

use super::body::{self, Body};

/// An error answer of the HTTP services.
#[derive(Debug)]
pub struct HttpError {
    pub status: StatusCode,
    /// Stable name: a native `ErrorCode`'s name or one of the HTTP layer's own.
    pub error: String,
    /// What was wrong, for a person.
    pub message: String,
    /// The limit that was exceeded, when one was.
    pub limit: Option<u64>,
    /// The parameter that sets that limit.
    pub param: Option<&'static str>,
    /// Milliseconds until a held lock frees by itself (423).
    pub retry_after_ms: Option<u64>,
    /// The methods a resource takes (405's `Allow`).
    pub allow: Option<&'static str>,
}

#[derive(Serialize)]
struct Json<'a> {
    error: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    limit: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    param: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after_ms: Option<u64>,
}

impl HttpError {
    pub fn new(status: StatusCode, error: &str, message: impl Into<String>) -> HttpError {
        HttpError {
            status,
            error: error.to_owned(),
            message: message.into(),
            limit: None,
            param: None,
            retry_after_ms: None,
            allow: None,
        }
    }

    pub fn bad_request(error: &str, message: impl Into<String>) -> HttpError {
        HttpError::new(StatusCode::BAD_REQUEST, error, message)
    }

    pub fn limit(mut self, limit: u64, param: &'static str) -> HttpError {
        self.limit = Some(limit);
        self.param = Some(param);
        self
    }

    /// A native error as HTTP (ScaleOut's REST mapping where it has one).
    pub fn from_native(e: &ErrorReply) -> HttpError {
        use ErrorCode as C;
        let status = match e.code {
            C::NotFound => StatusCode::NOT_FOUND,
            C::AlreadyExists | C::VersionMismatch => StatusCode::PRECONDITION_FAILED,
            C::Locked => StatusCode::LOCKED,
            // WrongType: the object is a Redis hash (read it over RESP); NotInteger is a Redis
            // answer no REST request causes.
            C::LockLost | C::NamespaceCollision | C::WrongType | C::NotInteger => {
                StatusCode::CONFLICT
            }
            C::ObjectTooLarge | C::FrameTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            C::KeyTooLong
            | C::NameTooLong
            | C::BadTimeout
            | C::InvalidRequest
            | C::TooManyItems => StatusCode::BAD_REQUEST,
            C::LowMemory
            | C::ShuttingDown
            | C::NotJoined
            | C::NotPrimary
            | C::StaleEpoch
            | C::ReplicationFailed
            | C::TooManyInFlight
            | C::TooManyConnections => StatusCode::SERVICE_UNAVAILABLE,
            C::Unsupported => StatusCode::NOT_IMPLEMENTED,
            C::Forbidden | C::PermissionDenied => StatusCode::FORBIDDEN,
            C::AuthRequired | C::AuthFailed => StatusCode::UNAUTHORIZED,
            C::Internal | C::BadFrame | C::UnsupportedVersion | C::HandshakeRequired => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        let (limit, param) = match e.code {
            C::ObjectTooLarge => (Some(e.detail), Some("object_bytes_max")),
            C::KeyTooLong => (Some(e.detail), Some("key_bytes_max")),
            C::NameTooLong => (Some(e.detail), Some("namespace_bytes_max")),
            C::FrameTooLarge => (Some(e.detail), Some("frame_bytes_max")),
            C::TooManyItems => (Some(e.detail), Some("items_per_request_max")),
            C::TooManyInFlight => (Some(e.detail), Some("inflight_per_conn_max")),
            C::TooManyConnections => (Some(e.detail), Some("connections_per_shard_max")),
            C::BadTimeout => (Some(stategrid_proto::TIMEOUT_S_MAX as u64), None),
            _ => (None, None),
        };
        let mut message = e.code.describe().to_owned();
        if !e.message.is_empty() {
            message = format!("{}: {message}", e.message);
        }
        HttpError {
            status,
            error: format!("{:?}", e.code),
            message,
            limit,
            param,
            retry_after_ms: (e.code == C::Locked).then_some(e.detail),
            allow: None,
        }
    }

    pub fn into_response(self) -> hyper::Response<Body> {
        let json = serde_json::to_vec(&Json {
            error: &self.error,
            message: &self.message,
            limit: self.limit,
            param: self.param,
            retry_after_ms: self.retry_after_ms,
        })
        .expect("serializing plain fields cannot fail");
        let mut r = hyper::Response::new(body::bytes(json));
        *r.status_mut() = self.status;
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(allow) = self.allow {
            r.headers_mut()
                .insert(hyper::header::ALLOW, HeaderValue::from_static(allow));
        }
        if let Some(ms) = self.retry_after_ms {
            r.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(ms.div_ceil(1000).max(1)));
        }
        r
    }
}
