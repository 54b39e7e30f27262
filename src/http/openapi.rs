//! The data API's OpenAPI 3.1 document (`docs/openapi.json`), built into the binary and served
//! at `/openapi.json` on `rest_port`. The tests run schemathesis against a live server with it.

/// The document, as committed.
pub const DOCUMENT: &str = include_str!("../../docs/openapi.json");
