//! The store-wide commands, spoken to a host's management port (`--mgt`): `query`, `join`,
//! `leave`, `set --all`; and `witness`, which runs a control plane without data.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::output::bytes_text;
use super::{Cli, Failure, Outcome};
use crate::cluster::admin::{self, QueryReply, Request};
use crate::cluster::control::{self, ControlRole};
use crate::cluster::plane::Plane;
use crate::config::Config;
use crate::preflight::exit;

/// How long the CLI waits for a quick admin answer (a `query` gathers from every host for up
/// to a second).
const ADMIN_TIMEOUT_MS: u64 = 10_000;

fn mgt_addr(cli: &Cli) -> Result<SocketAddr, Failure> {
    cli.mgt
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| {
            Failure::Usage(format!(
                "--mgt {} is not HOST:PORT (for example 127.0.0.1:2720, the host's mgt_port)",
                cli.mgt
            ))
        })
}

fn call(cli: &Cli, what: &str, req: &Request, timeout_ms: u64) -> Result<Value, Failure> {
    let addr = mgt_addr(cli)?;
    let tls = match cli.tls_ca()? {
        Some(ca) => {
            let host = cli
                .mgt
                .rsplit_once(':')
                .map_or(cli.mgt.as_str(), |(h, _)| h);
            let config = crate::net::tls::client_config(&ca).map_err(Failure::Usage)?;
            Some((config, host.trim_matches(['[', ']']).to_owned()))
        }
        None => None,
    };
    let auth = match cli.credentials()? {
        Some(c) => admin::AdminAuth {
            user: c.user,
            password: Some(c.password),
        },
        None => admin::AdminAuth::default(),
    };
    admin::call_as(addr, req, &auth, Duration::from_millis(timeout_ms), tls).map_err(|error| {
        Failure::Admin {
            what: what.to_owned(),
            error,
        }
    })
}

/// Drops the protocol's `ok` field from an answer for `--json`.
fn strip_ok(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.remove("ok");
    }
    v
}

pub(super) fn query(cli: &Cli) -> Result<Outcome, Failure> {
    let v = call(cli, "query", &Request::Query, ADMIN_TIMEOUT_MS)?;
    let v = strip_ok(v);
    let r: QueryReply = serde_json::from_value(v.clone()).map_err(|e| Failure::Admin {
        what: "query".into(),
        error: admin::CallError::Protocol {
            addr: mgt_addr(cli).expect("checked by call"),
            text: e.to_string(),
        },
    })?;
    Ok(Outcome::lines(query_text(&r), v))
}

/// `query` for a person: the store line, then a table of hosts.
pub fn query_text(r: &QueryReply) -> String {
    if !r.member {
        return format!(
            "host {} is not in a store yet (auto_join 0? run `stategrid join`; or it is still looking for one)\n",
            r.me
        );
    }
    let mut s = format!(
        "store epoch {}, leader {}, {} hosts (answered by {})\n",
        r.epoch,
        r.leader.as_deref().unwrap_or("none"),
        r.hosts.len(),
        r.me
    );
    let width = r
        .hosts
        .iter()
        .map(|h| h.addr.len())
        .max()
        .unwrap_or(4)
        .max(4);
    s.push_str(&format!(
        "{:16}  {:width$}  {:8}  {:>9}  {:>8}  {:>7}  {:>10}  {:>10}\n",
        "ID", "ADDR", "STATE", "PRIMARIES", "REPLICAS", "PENDING", "OBJECTS", "MEMORY"
    ));
    for h in &r.hosts {
        let objects = h.objects.map_or("-".to_owned(), |o| o.to_string());
        let memory = h.memory_bytes.map_or("-".to_owned(), bytes_text);
        let mut state = h.state.clone();
        if h.leader {
            state.push('*');
        }
        s.push_str(&format!(
            "{:16}  {:width$}  {:8}  {:>9}  {:>8}  {:>7}  {:>10}  {:>10}{}\n",
            h.id,
            h.addr,
            state,
            h.primaries,
            h.replicas,
            h.pending,
            objects,
            memory,
            if h.answered || h.state == "failed" {
                ""
            } else {
                "  (did not answer)"
            }
        ));
    }
    s.push_str("* leader\n");
    s
}

pub(super) fn join(cli: &Cli) -> Result<Outcome, Failure> {
    let v = strip_ok(call(cli, "join", &Request::Join, ADMIN_TIMEOUT_MS)?);
    let state = v["state"].as_str().unwrap_or("joining").to_owned();
    let text = match state.as_str() {
        "member" => "already an active member of the store".to_owned(),
        "rejoining" => "taking a share of the partitions again (see `stategrid query`)".to_owned(),
        _ => "joining the store (see `stategrid query`)".to_owned(),
    };
    Ok(Outcome::lines(text, v))
}

pub(super) fn leave(cli: &Cli, wait: bool, timeout_s: u64) -> Result<Outcome, Failure> {
    let timeout_ms = timeout_s.saturating_mul(1000);
    let req = Request::Leave { wait, timeout_ms };
    // The host answers by its own deadline; give the connection a little more.
    let v = strip_ok(call(cli, "leave", &req, timeout_ms + ADMIN_TIMEOUT_MS)?);
    let left = v["partitions_left"].as_u64().unwrap_or(0);
    if !wait {
        return Ok(Outcome::lines(
            format!(
                "leaving: {left} partitions to move away (`stategrid leave --wait` waits for them)"
            ),
            v,
        ));
    }
    if v["done"].as_bool() != Some(true) {
        return Err(Failure::Admin {
            what: "leave --wait".into(),
            error: admin::CallError::Refused(format!(
                "{left} partitions still on this host after {timeout_s} s; it keeps leaving: wait longer (--timeout) or check `stategrid query`"
            )),
        });
    }
    Ok(Outcome::lines("left: this host holds no partitions", v))
}

pub(super) fn set(cli: &Cli, name: &str, value: &str, all: bool) -> Result<Outcome, Failure> {
    if !all {
        return Err(Failure::Usage(format!(
            "`stategrid set` changes a parameter on every host of the store and needs --all (stategrid set {name} {value} --all)"
        )));
    }
    let req = Request::Set {
        name: name.to_owned(),
        value: value.to_owned(),
    };
    let v = strip_ok(call(cli, "set", &req, ADMIN_TIMEOUT_MS)?);
    Ok(Outcome::lines(format!("{name} = {value} on every host"), v))
}

/// `stategrid witness`: the control plane alone as a Raft voter, until SIGTERM or SIGINT.
/// Returns the process exit code.
pub fn witness(params: Option<PathBuf>, sets: Vec<(String, String)>) -> i32 {
    let cfg = match Config::load(params.as_deref(), std::env::vars(), &sets) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("stategrid: {e}");
            return exit::USAGE;
        }
    };
    let _guard = crate::server::init_logging(&cfg);
    // No io_uring preflight: the control plane is a plain thread on epoll (a witness runs
    // where io_uring is blocked, e.g. Docker's default seccomp profile).
    let plane = Arc::new(Plane::new(1));
    let handle = match control::start(Arc::new(cfg), plane, ControlRole::Witness) {
        Ok(h) => h,
        Err((code, msg)) => {
            eprintln!("stategrid: {msg}");
            tracing::error!("{msg}");
            return code;
        }
    };
    use signal_hook::consts::{SIGINT, SIGTERM};
    match signal_hook::iterator::Signals::new([SIGTERM, SIGINT]) {
        Ok(mut signals) => {
            if let Some(sig) = signals.forever().next() {
                tracing::info!(signal = sig, "signal received: stopping the witness");
            }
        }
        Err(e) => {
            tracing::error!("cannot install signal handlers: {e}");
            return exit::RUNTIME;
        }
    }
    handle.shutdown();
    exit::OK
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::admin::HostReport;

    #[test]
    fn query_text_lists_hosts_and_marks_the_leader() {
        let h = |id: &str, leader: bool, answered: bool| HostReport {
            id: id.into(),
            addr: "127.0.0.1:2720/2721/2722".into(),
            state: "active".into(),
            primaries: 512,
            replicas: 512,
            pending: 0,
            answered,
            objects: answered.then_some(3),
            memory_bytes: answered.then_some(2048),
            leader,
        };
        let r = QueryReply {
            me: "a".into(),
            member: true,
            epoch: 7,
            leader: Some("a".into()),
            hosts: vec![h("a", true, true), h("b", false, false)],
        };
        let t = query_text(&r);
        assert!(t.starts_with("store epoch 7, leader a, 2 hosts"), "{t}");
        assert!(t.contains("active*"), "{t}");
        assert!(t.contains("(did not answer)"), "{t}");
    }
}
