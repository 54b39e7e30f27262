//! The Redis clients people use, unchanged, against stategrid's RESP front (issue 8): redis-py
//! (plain, pipelines, MULTI/EXEC, WATCH, and `RedisCluster`), Flask-Session, Django sessions on
//! django-redis, PHP's phpredis session handler, node-redis, ruby-redis and redis-cli.
//!
//! Each client is a small program in tests/clients/ that asserts the behaviour itself and exits
//! non-zero naming the first mismatch; these tests run it and print its output on failure. Every
//! program runs against:
//! - a real `redis-server` (and a real 3-node Redis Cluster for the cluster client): proves the
//!   program's expectations are Redis's, so a failure against stategrid is stategrid's;
//! - one stategrid host (RESP on its `svr_port`, told apart from the native protocol by the
//!   first bytes);
//! - a 3-host stategrid store: plain clients connect to one host and every key works (the host
//!   relays), the cluster client routes by `CLUSTER SLOTS` and reads every key from every host;
//! - and a 3-host store losing a host to `kill -9` under redis-py cluster load: every
//!   acknowledged write reads back.
//!
//! Interpreters and packages come from `scripts/install-test-deps.sh`. Outside CI a missing one
//! skips its client with a loud message; under `CI=true` it fails the test.

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::TestServer;
use common::hosts::Store;
use common::programs::{Run, Running, Tool, client_program, require, run};
use common::redis::{RedisCluster, RedisServer};

/// A client program of tests/clients and what it needs to run.
struct Client {
    /// What the failure message calls it.
    name: &'static str,
    tool: Tool,
    /// The program's file in tests/clients.
    program: &'static str,
    /// Arguments after HOST PORT.
    extra: &'static [&'static str],
}

/// The clients that connect to one address (no cluster protocol).
const PLAIN_CLIENTS: &[Client] = &[
    Client {
        name: "redis-py (RESP3)",
        tool: Tool::Python,
        program: "redis_py_plain.py",
        extra: &["3"],
    },
    Client {
        name: "redis-py (RESP2)",
        tool: Tool::Python,
        program: "redis_py_plain.py",
        extra: &["2"],
    },
    Client {
        name: "Flask + Flask-Session",
        tool: Tool::Python,
        program: "flask_session_app.py",
        extra: &[],
    },
    Client {
        name: "Django sessions on django-redis",
        tool: Tool::Python,
        program: "django_sessions.py",
        extra: &[],
    },
    Client {
        name: "PHP phpredis session handler",
        tool: Tool::Php,
        program: "php_session.php",
        extra: &[],
    },
    Client {
        name: "node-redis",
        tool: Tool::Node,
        program: "node_redis.js",
        extra: &[],
    },
    Client {
        name: "ruby-redis",
        tool: Tool::Ruby,
        program: "ruby_redis.rb",
        extra: &[],
    },
    Client {
        name: "redis-cli",
        tool: Tool::RedisCli,
        program: "redis_cli.sh",
        extra: &[],
    },
];

/// The command running `client` against `host:port`, or `None` (said why) when its
/// interpreter is missing outside CI.
fn command(client: &Client, test: &str, host: &str, port: u16) -> Option<Command> {
    let tool = require(client.tool, &format!("{test} / {}", client.name))?;
    // redis_cli.sh calls redis-cli itself; the others are scripts of their interpreter.
    let mut cmd = if client.tool == Tool::RedisCli {
        Command::new("bash")
    } else {
        Command::new(tool)
    };
    cmd.arg(client_program(client.program))
        .arg(host)
        .arg(port.to_string())
        .args(client.extra);
    Some(cmd)
}

/// Runs every client, one after the other, each against the address `target(i)` picks for the
/// i-th, with nothing left out (the programs' `SKIP` is for runs by hand); panics naming every
/// failed client with its output and `diagnostics()`.
fn run_all(
    test: &str,
    clients: &[Client],
    target: impl Fn(usize) -> (String, u16),
    diagnostics: impl Fn() -> String,
) {
    let mut failures = Vec::new();
    let mut ran = 0;
    for (i, client) in clients.iter().enumerate() {
        let (host, port) = target(i);
        let Some(cmd) = command(client, test, &host, port) else {
            continue;
        };
        let started = Instant::now();
        let r = run(cmd);
        ran += 1;
        println!(
            "{test}: {} against {host}:{port}: {} in {} ms",
            client.name,
            if r.ok() { "passed" } else { "FAILED" },
            started.elapsed().as_millis()
        );
        if !r.ok() {
            failures.push(failure(client.name, &host, port, &r));
        }
    }
    if !failures.is_empty() {
        panic!(
            "{test}: {} of {ran} clients failed\n\n{}\n\n{}",
            failures.len(),
            failures.join("\n\n"),
            diagnostics()
        );
    }
}

fn failure(name: &str, host: &str, port: u16, r: &Run) -> String {
    format!(
        "===== {name} against {host}:{port} exited with {} =====\n{}",
        r.status, r.output
    )
}

fn python_program(test: &str, program: &str) -> Option<(PathBuf, PathBuf)> {
    let py = require(Tool::Python, test)?;
    Some((py, client_program(program)))
}

// ---- real Redis: the programs' expectations are Redis's own --------------------------------------

#[test]
fn plain_clients_pass_against_redis_server() {
    let test = "plain_clients_pass_against_redis_server";
    let Some(bin) = require(Tool::RedisServer, test) else {
        return;
    };
    let redis = RedisServer::start(&bin, &[]);
    run_all(
        test,
        PLAIN_CLIENTS,
        |_| ("127.0.0.1".into(), redis.port),
        || redis.log(),
    );
}

#[test]
fn cluster_clients_pass_against_redis_cluster() {
    let test = "cluster_clients_pass_against_redis_cluster";
    let (Some(server), Some(cli)) = (
        require(Tool::RedisServer, test),
        require(Tool::RedisCli, test),
    ) else {
        return;
    };
    let Some((py, cluster)) = python_program(test, "redis_py_cluster.py") else {
        return;
    };
    let rc = RedisCluster::start(&server, &cli);
    let port = rc.nodes[1].port;
    let mut cmd = Command::new(&py);
    cmd.arg(&cluster).arg("127.0.0.1").arg(port.to_string());
    let r = run(cmd);
    assert!(
        r.ok(),
        "{}",
        failure("redis-py RedisCluster", "127.0.0.1", port, &r)
    );

    // The failover program with nothing killed (stdin closed): its bookkeeping and read-back
    // hold against Redis; the kill itself is stategrid's test below.
    let addrs: Vec<String> = rc
        .nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port))
        .collect();
    let mut cmd = Command::new(&py);
    cmd.arg(client_program("redis_py_failover.py"))
        .arg(addrs.join(","));
    let r = run(cmd);
    assert!(
        r.ok(),
        "{}",
        failure("redis-py failover (no kill)", "127.0.0.1", port, &r)
    );
}

/// The negative control: a server that differs from Redis in one command (GETDEL renamed away,
/// so it answers "unknown command") fails the program, and the failure names the step.
#[test]
fn a_client_program_fails_when_the_server_differs_from_redis() {
    let test = "a_client_program_fails_when_the_server_differs_from_redis";
    let Some(bin) = require(Tool::RedisServer, test) else {
        return;
    };
    let Some((py, plain)) = python_program(test, "redis_py_plain.py") else {
        return;
    };
    let redis = RedisServer::start(&bin, &["--rename-command", "GETDEL", ""]);
    let mut cmd = Command::new(py);
    cmd.arg(plain).arg("127.0.0.1").arg(redis.port.to_string());
    let r = run(cmd);
    assert!(
        !r.ok(),
        "the program passed against a server without GETDEL:\n{}",
        r.output
    );
    assert!(
        r.output
            .contains("FAIL unexpected ResponseError: unknown command 'GETDEL'")
            && r.output.contains(r#"eq("getdel", r.getdel(k), b"v7")"#),
        "the failure does not name the GETDEL step:\n{}",
        r.output
    );
}

// ---- stategrid --------------------------------------------------------------------------------

/// One host of two shards: a connection's transaction (redis-py pipelines with MULTI/EXEC,
/// django-redis's `set_many`) often has its keys on the other shard, where it runs whole.
#[test]
fn plain_clients_pass_against_one_host() {
    let server = TestServer::start(&[("shards", "2")]);
    run_all(
        "plain_clients_pass_against_one_host",
        PLAIN_CLIENTS,
        |_| ("127.0.0.1".into(), server.addr.port()),
        || server.output(),
    );
}

#[test]
fn plain_clients_pass_against_a_3_host_store() {
    let test = "plain_clients_pass_against_a_3_host_store";
    let resp_port = common::free_port();
    let store = Store::start_with(3, 61, |_| vec![("resp_port", resp_port.to_string())]);
    // Plain clients: each connects to one host, in turn, and every key works through it. On
    // resp_port (the face of a single Redis server) their SCAN, KEYS, DBSIZE and FLUSHDB cover
    // the whole store; svr_port answers those per node, as a Redis Cluster node does.
    run_all(
        test,
        PLAIN_CLIENTS,
        |i| (store.hosts[i % 3].ip.clone(), resp_port),
        || store.outputs(),
    );
}

#[test]
fn cluster_client_routes_over_a_3_host_store() {
    let test = "cluster_client_routes_over_a_3_host_store";
    // The cluster client routes by itself; and every host serves every key to a plain client.
    let Some((py, cluster)) = python_program(test, "redis_py_cluster.py") else {
        return;
    };
    let store = Store::start(3, 70);
    let ip = store.hosts[0].ip.clone();
    let mut cmd = Command::new(py);
    cmd.arg(cluster)
        .arg(&ip)
        .arg(store.svr_port.to_string())
        .arg("anywhere");
    let r = run(cmd);
    assert!(
        r.ok(),
        "{}\n\n{}",
        failure("redis-py RedisCluster", &ip, store.svr_port, &r),
        store.outputs()
    );
}

#[test]
fn cluster_client_keeps_every_acknowledged_write_through_kill_9() {
    let test = "cluster_client_keeps_every_acknowledged_write_through_kill_9";
    let Some((py, failover)) = python_program(test, "redis_py_failover.py") else {
        return;
    };
    let mut store = Store::start(3, 64);
    let mut cmd = Command::new(py);
    cmd.arg(failover).arg(store.svr_addrs().join(","));
    let mut writer = Running::spawn(cmd, Stdio::piped());

    // Kill a host once the writer has every key written and is still writing.
    let deadline = Instant::now() + Duration::from_millis(common::programs::PROGRAM_TIMEOUT_MS);
    while !writer.output().contains("LOADED") {
        if let Some(status) = writer.child.try_wait().expect("try_wait") {
            panic!(
                "the writer exited with {status} before loading:\n{}\n\n{}",
                writer.output(),
                store.outputs()
            );
        }
        assert!(
            Instant::now() < deadline,
            "the writer did not load in time:\n{}",
            writer.output()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let victim = 1;
    store.hosts[victim].kill9();
    println!("killed {} under load", store.hosts[victim].ip);
    let mut stdin = writer.child.stdin.take().expect("writer stdin");
    stdin.write_all(b"killed\n").expect("tell the writer");
    drop(stdin);

    let r = writer.wait();
    println!("{}", r.output);
    assert!(
        r.ok(),
        "{}\n\n{}",
        failure("redis-py failover", "3-host store", store.svr_port, &r),
        store.outputs()
    );
}
