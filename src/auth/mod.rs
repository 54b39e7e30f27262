//! Who may talk to this host.
//!
//! - [`peer`]: other hosts prove they hold the store's secret (`cluster_key` or
//!   `cluster_key_file`): a mutual challenge-response handshake on every host-to-host TCP
//!   connection (`int_port` links, `mgt_port` peer connections) and an HMAC tag on every
//!   discovery and SWIM datagram. The one place the cluster secret is used.
//! - [`users`]: clients prove who they are (`requirepass`, `users_file`: users, argon2id
//!   password hashes, roles read / read-write / admin); the protocol fronts (native `Auth`,
//!   RESP `AUTH`/`HELLO ... AUTH`, HTTP Basic/Bearer, management lines) all ask it.
//! - [`protect`]: protected mode (no users configured: client ports serve loopback only).
//!
//! TLS is not built here; `docs/security.md` says what is and is not protected.

pub mod peer;
pub mod protect;
pub mod users;
