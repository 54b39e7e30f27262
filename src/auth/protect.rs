//! Protected mode (Redis's idea): a store with no client credentials configured serves its
//! client ports (`svr_port`, `resp_port`, `rest_port`) to loopback clients only, so a host
//! bound to a public address by mistake does not hand its data to the network.
//!
//! On when `protected_mode 1` (the default) and neither `requirepass` nor `users_file` is
//! set. A refused client gets an answer in its own protocol saying why and how to fix it,
//! then the connection closes. Cost: one `getpeername` per accepted connection, only while
//! protected mode is on; nothing per request.

use std::net::IpAddr;
use std::os::fd::AsRawFd;

use crate::config::Config;

/// What a refused client is told (after a protocol's own prefix, e.g. RESP's `-DENIED `).
pub const DENIED: &str = "stategrid is running in protected mode: no client credentials are configured (requirepass or users_file), so client ports accept only loopback clients. To reach it from other machines: 1) set requirepass (or users_file, see docs/security.md) and authenticate; or 2) set protected_mode 0 if every machine that can reach this host is trusted (a private network or firewall); or 3) connect from this machine (127.0.0.1)";

/// Is protected mode in effect (on, and no credentials configured)?
pub fn active(cfg: &Config) -> bool {
    cfg.protected_mode && cfg.users.is_none()
}

/// Is the address a loopback one (127.0.0.0/8, ::1, or IPv4 mapped into IPv6)?
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// Should the client connected on `fd` be refused? False when protected mode is off, or
/// the peer is on loopback (a peer address that cannot be read is refused).
pub fn refuse_fd(cfg: &Config, fd: &impl AsRawFd) -> bool {
    if !active(cfg) {
        return false;
    }
    // SAFETY: the descriptor is open for the duration of this call (the caller holds it).
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd.as_raw_fd()) };
    let Ok(peer) = socket2::SockRef::from(&fd).peer_addr() else {
        return true;
    };
    !peer.as_socket().is_some_and(|a| is_loopback(a.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_addresses() {
        assert!(is_loopback("127.0.0.1".parse().unwrap()));
        assert!(is_loopback("127.4.5.6".parse().unwrap()));
        assert!(is_loopback("::1".parse().unwrap()));
        assert!(is_loopback("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!is_loopback("10.0.0.1".parse().unwrap()));
        assert!(!is_loopback("172.17.0.1".parse().unwrap()));
    }

    #[test]
    fn active_only_without_credentials() {
        let mut c = Config::default();
        assert!(active(&c));
        c.protected_mode = false;
        assert!(!active(&c));
        c.protected_mode = true;
        c.users = Some(std::sync::Arc::new(super::super::users::Users::with_users(
            &[],
            "pw",
        )));
        assert!(!active(&c));
    }
}
