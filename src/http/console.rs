//! The web console at `/console` on the management port: plain HTML, CSS and JavaScript files
//! (`src/http/console/`) built into the binary. No CDN, no JavaScript build step. The page
//! polls the management JSON API ([`super::mgmt`]) on the same port.

use hyper::StatusCode;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue, LOCATION};

use super::body::{self, Body};

const INDEX_HTML: &str = include_str!("console/index.html");
const APP_JS: &str = include_str!("console/app.js");
const STYLE_CSS: &str = include_str!("console/style.css");

/// The console's answer for `path`, or None when the path is not the console's.
pub fn serve(path: &str) -> Option<hyper::Response<Body>> {
    let (text, kind) = match path {
        "/" => {
            let mut r = hyper::Response::new(body::empty());
            *r.status_mut() = StatusCode::FOUND;
            r.headers_mut()
                .insert(LOCATION, HeaderValue::from_static("/console/"));
            return Some(r);
        }
        "/console" | "/console/" | "/console/index.html" => {
            (INDEX_HTML, "text/html; charset=utf-8")
        }
        "/console/app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        "/console/style.css" => (STYLE_CSS, "text/css; charset=utf-8"),
        _ => return None,
    };
    let mut r = hyper::Response::new(body::bytes(text));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(kind));
    // The files change only with the binary; a short cache keeps an upgrade visible.
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("max-age=60"));
    Some(r)
}
