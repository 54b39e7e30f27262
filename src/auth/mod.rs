//! Who may talk to this host.
//!
//! - [`peer`]: other hosts prove they hold the store's secret (`cluster_key` or
//!   `cluster_key_file`): a mutual challenge-response handshake on every host-to-host TCP
//!   connection (`int_port` links, `mgt_port` peer connections) and an HMAC tag on every
//!   discovery and SWIM datagram. The one place the cluster secret is used.
//!
//! Client authentication (users, roles) and TLS are not built yet; `docs/security.md` says
//! what is and is not protected.

pub mod peer;
