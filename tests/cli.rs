//! The `stategrid` CLI against a real server process: every command, every exit code, the
//! lock cycle, and the shape of `--json` output.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{TestServer, bin, free_port};
use serde_json::Value;

/// One finished CLI run.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: Vec<u8>,
    stderr: String,
}

impl Run {
    fn stdout(&self) -> String {
        String::from_utf8(self.stdout.clone()).expect("stdout is UTF-8")
    }

    /// Asserts exit 0 and returns stdout.
    fn ok(&self) -> String {
        assert_eq!(self.code, 0, "expected success: {self:?}");
        self.stdout()
    }

    /// Asserts the exit code, and that a failure printed exactly one `stategrid: ` line.
    fn code(&self, code: i32) -> &Self {
        assert_eq!(self.code, code, "{self:?}");
        if code != 0 {
            let lines: Vec<&str> = self.stderr.lines().collect();
            assert_eq!(lines.len(), 1, "one line on stderr: {self:?}");
            assert!(lines[0].starts_with("stategrid: "), "{self:?}");
        }
        self
    }

    /// Stdout as the one JSON object it must be.
    fn json(&self) -> Value {
        let out = self.stdout();
        assert_eq!(out.lines().count(), 1, "one JSON line: {self:?}");
        let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
        assert!(v.is_object(), "{v}");
        v
    }
}

fn run(host: &str, args: &[&str], stdin: Option<&[u8]>) -> Run {
    let mut cmd = Command::new(bin());
    cmd.env_remove("STATEGRID_HOST")
        .arg("--host")
        .arg(host)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn stategrid");
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input).unwrap();
    }
    let out = child.wait_with_output().expect("wait");
    Run {
        code: out.status.code().expect("exited, not killed"),
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `stategrid --host <server> args...`
fn sg(server: &TestServer, args: &[&str]) -> Run {
    run(&server.host(), args, None)
}

/// The same, with `stdin` piped in.
fn sg_in(server: &TestServer, args: &[&str], stdin: &[u8]) -> Run {
    run(&server.host(), args, Some(stdin))
}

fn version_of(run: &Run) -> u64 {
    run.json()["version"].as_u64().expect("version")
}

#[test]
fn usage_errors_exit_2_and_help_exits_0() {
    let host = "127.0.0.1:1";
    let help = run(host, &["--help"], None);
    assert_eq!(help.code, 0, "{help:?}");
    assert!(help.stdout().contains("Exit codes"));
    assert_eq!(run(host, &["get", "--help"], None).code, 0);
    assert_eq!(run(host, &["--version"], None).code, 0);
    for args in [
        &[][..],
        &["frobnicate"],
        &["get", "ns"],
        &["serve", "--set", "svr_port"],
        &["put", "ns", "k", "v", "--add", "--update"],
        &["put", "ns", "k", "v", "--timeout", "99999999"],
        &[
            "put",
            "ns",
            "k",
            "v",
            "--timeout-kind",
            "sideways",
            "--timeout",
            "1",
        ],
        &["unlock", "ns", "k", "not-a-token"],
    ] {
        let r = run(host, args, None);
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
        assert!(!r.stderr.is_empty(), "{args:?}");
    }
}

#[test]
fn nothing_listening_exits_5() {
    let host = format!("127.0.0.1:{}", free_port());
    let r = run(&host, &["get", "ns", "k"], None);
    r.code(5);
    assert!(r.stderr.contains("cannot connect"), "{r:?}");
    assert!(r.stderr.contains(&host), "{r:?}");

    let r = run(&host, &["--json", "count", "ns"], None);
    r.code(5);
    let err = &r.json()["error"];
    assert_eq!(err["exit_code"], 5);
    assert_eq!(err["code"], "Connect");
    assert!(err["message"].as_str().unwrap().contains("cannot connect"));
}

#[test]
fn put_get_meta_touch_remove() {
    let server = TestServer::start(&[]);

    assert!(
        sg(&server, &["put", "web", "k1", "hello"])
            .ok()
            .starts_with("version ")
    );
    let r = sg(&server, &["get", "web", "k1"]);
    r.code(0);
    assert_eq!(r.stdout, b"hello", "get prints the raw value, nothing more");

    // --json get: value, encoding, version, meta.
    let j = sg(&server, &["--json", "get", "web", "k1"]).json();
    assert_eq!(j["namespace"], "web");
    assert_eq!(j["key"], "k1");
    assert_eq!(j["value"], "hello");
    assert_eq!(j["encoding"], "utf8");
    assert!(j["version"].as_u64().is_some());
    assert_eq!(j["meta"]["value_bytes"], 5);
    assert!(j.get("lock_token").is_none());

    // A value from stdin, both with `-` and with no value argument; binary stays binary.
    let binary = [0u8, 0xff, 0x10, b'\n'];
    sg_in(&server, &["put", "web", "bin", "-"], &binary).code(0);
    assert_eq!(sg(&server, &["get", "web", "bin"]).stdout, binary);
    let j = sg(&server, &["--json", "get", "web", "bin"]).json();
    assert_eq!(j["encoding"], "hex");
    assert_eq!(j["value"], "00ff100a");
    sg_in(&server, &["put", "web", "piped"], b"from stdin").code(0);
    assert_eq!(sg(&server, &["get", "web", "piped"]).stdout, b"from stdin");

    // --json put.
    let j = sg(&server, &["--json", "put", "web", "k1", "hello again"]).json();
    assert_eq!(j["namespace"], "web");
    assert_eq!(j["key"], "k1");
    assert_eq!(j["mode"], "put");
    assert_eq!(j["value_bytes"], 11);
    let v1 = j["version"].as_u64().unwrap();

    // meta, text and JSON.
    let text = sg(&server, &["meta", "web", "k1"]).ok();
    assert!(
        text.contains("value_bytes") && text.contains("11"),
        "{text}"
    );
    let j = sg(&server, &["--json", "meta", "web", "k1"]).json();
    assert_eq!(j["namespace"], "web");
    assert_eq!(j["value_bytes"], 11);
    assert_eq!(j["version"].as_u64(), Some(v1));
    assert_eq!(j["locked"], false);
    assert_eq!(j["evictable"], true);
    assert_eq!(j["timeout_s"], 0);
    assert!(j["expires_in_ms"].is_null());

    // touch: restart, then a new timeout with its kind.
    assert!(
        sg(&server, &["touch", "web", "k1"])
            .ok()
            .contains("touched")
    );
    let j = sg(
        &server,
        &[
            "--json",
            "touch",
            "web",
            "k1",
            "--timeout",
            "600",
            "--timeout-kind",
            "sliding",
        ],
    )
    .json();
    assert_eq!(j["touched"], true);
    let j = sg(&server, &["--json", "meta", "web", "k1"]).json();
    assert_eq!(j["timeout_s"], 600);
    assert_eq!(j["timeout_kind"], "sliding");
    assert!(j["expires_in_ms"].as_u64().is_some_and(|ms| ms <= 600_000));
    // A new length without a kind keeps the object's kind.
    sg(&server, &["touch", "web", "k1", "--timeout", "300"]).code(0);
    let j = sg(&server, &["--json", "meta", "web", "k1"]).json();
    assert_eq!(
        (j["timeout_s"].as_u64(), j["timeout_kind"].as_str()),
        (Some(300), Some("sliding"))
    );

    // remove, then everything about k1 is "not found": exit 1.
    let j = sg(&server, &["--json", "remove", "web", "k1"]).json();
    assert_eq!(j["removed"], true);
    for args in [
        &["get", "web", "k1"][..],
        &["get", "web", "k1", "--lock"],
        &["meta", "web", "k1"],
        &["touch", "web", "k1"],
        &["remove", "web", "k1"],
        &["put", "web", "k1", "x", "--update"],
    ] {
        let r = sg(&server, args);
        r.code(1);
        assert!(r.stderr.contains("not found"), "{args:?}: {r:?}");
    }
    let j = sg(&server, &["--json", "get", "web", "k1"]).code(1).json();
    assert_eq!(j["error"]["code"], "NotFound");
    assert_eq!(j["error"]["exit_code"], 1);
}

#[test]
fn put_modes_and_version_conflicts_exit_3() {
    let server = TestServer::start(&[]);

    let j = sg(&server, &["--json", "put", "ns", "a", "1", "--add"]).json();
    assert_eq!(j["mode"], "add");
    let r = sg(&server, &["put", "ns", "a", "2", "--add"]);
    r.code(3);
    assert!(r.stderr.contains("already exists"), "{r:?}");
    assert_eq!(sg(&server, &["get", "ns", "a"]).stdout, b"1");

    let v = version_of(&sg(&server, &["--json", "put", "ns", "a", "3", "--update"]));
    let v2 = version_of(&sg(
        &server,
        &[
            "--json",
            "put",
            "ns",
            "a",
            "4",
            "--if-version",
            &v.to_string(),
        ],
    ));
    assert!(v2 > v);
    // The version we read is stale now.
    let r = sg(
        &server,
        &[
            "--json",
            "put",
            "ns",
            "a",
            "5",
            "--if-version",
            &v.to_string(),
        ],
    );
    r.code(3);
    assert_eq!(r.json()["error"]["code"], "VersionMismatch");
    assert_eq!(sg(&server, &["get", "ns", "a"]).stdout, b"4");

    // Write options reach the object.
    sg(
        &server,
        &[
            "put",
            "ns",
            "b",
            "x",
            "--timeout",
            "120",
            "--timeout-kind",
            "reset-on-update",
            "--not-evictable",
        ],
    )
    .code(0);
    let j = sg(&server, &["--json", "meta", "ns", "b"]).json();
    assert_eq!(j["timeout_s"], 120);
    assert_eq!(j["timeout_kind"], "reset-on-update");
    assert_eq!(j["evictable"], false);
    sg(&server, &["put", "ns", "c", "x", "--timeout", "60"]).code(0);
    assert_eq!(
        sg(&server, &["--json", "meta", "ns", "c"]).json()["timeout_kind"],
        "absolute"
    );
}

#[test]
fn lock_update_unlock_cycle() {
    let server = TestServer::start(&[]);
    sg(&server, &["put", "sess", "s1", "v1"]).code(0);

    // get --lock --json: value, version and the token (a string of digits).
    let j = sg(&server, &["--json", "get", "sess", "s1", "--lock"]).json();
    assert_eq!(j["value"], "v1");
    assert!(j["version"].as_u64().is_some());
    assert_eq!(j["meta"]["locked"], true);
    let token = j["lock_token"]
        .as_str()
        .expect("lock_token is a string")
        .to_owned();
    assert!(token.parse::<u64>().is_ok(), "{token}");

    // While locked: another lock, a plain remove, and a wrong token are conflicts (exit 3).
    let r = sg(&server, &["get", "sess", "s1", "--lock"]);
    r.code(3);
    assert!(r.stderr.contains("locked"), "{r:?}");
    assert_eq!(
        sg(&server, &["--json", "get", "sess", "s1", "--lock"]).json()["error"]["code"],
        "Locked"
    );
    sg(&server, &["remove", "sess", "s1"]).code(3);
    let wrong = (token.parse::<u64>().unwrap() ^ 1).to_string();
    let r = sg(
        &server,
        &["--json", "update-unlock", "sess", "s1", &wrong, "nope"],
    );
    r.code(3);
    // Another token holds the lock: Locked (LockLost is for a token when nobody holds it).
    assert_eq!(r.json()["error"]["code"], "Locked");
    assert_eq!(
        sg(&server, &["--json", "meta", "sess", "s1"]).json()["locked"],
        true
    );
    // A plain read still works while locked.
    assert_eq!(sg(&server, &["get", "sess", "s1"]).stdout, b"v1");

    // update-unlock with the token, the value on stdin.
    let j = sg_in(
        &server,
        &["--json", "update-unlock", "sess", "s1", &token],
        b"v2",
    )
    .json();
    assert_eq!(j["unlocked"], true);
    assert!(j["version"].as_u64().is_some());
    assert_eq!(sg(&server, &["get", "sess", "s1"]).stdout, b"v2");
    assert_eq!(
        sg(&server, &["--json", "meta", "sess", "s1"]).json()["locked"],
        false
    );
    // The token is spent: nobody holds the lock, so the token has lost it.
    let r = sg(
        &server,
        &["--json", "update-unlock", "sess", "s1", &token, "v3"],
    );
    r.code(3);
    assert_eq!(r.json()["error"]["code"], "LockLost");

    // Text mode: the raw value on stdout, the token on stderr; then unlock.
    let r = sg(&server, &["get", "sess", "s1", "--lock"]);
    r.code(0);
    assert_eq!(r.stdout, b"v2");
    let token = r
        .stderr
        .split_whitespace()
        .skip_while(|w| *w != "lock_token")
        .nth(1)
        .unwrap_or_else(|| panic!("no lock_token on stderr: {r:?}"))
        .to_owned();
    let j = sg(&server, &["--json", "unlock", "sess", "s1", &token]).json();
    assert_eq!(j["unlocked"], true);
    sg(&server, &["unlock", "sess", "s1", &token]).code(3);

    // remove --force takes a locked object away.
    sg(&server, &["get", "sess", "s1", "--lock"]).code(0);
    sg(&server, &["remove", "sess", "s1"]).code(3);
    sg(&server, &["remove", "sess", "s1", "--force"]).code(0);
    sg(&server, &["get", "sess", "s1"]).code(1);
}

#[test]
fn a_lock_expires_after_lock_timeout() {
    let server = TestServer::start(&[("lock_timeout", "1")]);
    sg(&server, &["put", "sess", "s", "v"]).code(0);
    let old = sg(&server, &["--json", "get", "sess", "s", "--lock"]).json()["lock_token"]
        .as_str()
        .unwrap()
        .to_owned();
    sg(&server, &["get", "sess", "s", "--lock"]).code(3);
    std::thread::sleep(Duration::from_millis(2_500));
    let new = sg(&server, &["--json", "get", "sess", "s", "--lock"]).json()["lock_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(old, new);
    let r = sg(&server, &["update-unlock", "sess", "s", &old, "late"]);
    r.code(3);
    sg(&server, &["update-unlock", "sess", "s", &new, "on time"]).code(0);
    assert_eq!(sg(&server, &["get", "sess", "s"]).stdout, b"on time");
}

/// Commands that only read or remove must not create the namespace they name: a typo used to
/// register an empty namespace that `namespaces` then listed.
#[test]
fn reading_a_namespace_that_does_not_exist_does_not_create_it() {
    let server = TestServer::start(&[]);
    sg(&server, &["put", "real", "k", "v"]).code(0);
    sg(&server, &["get", "typo", "k"]).code(1);
    sg(&server, &["meta", "typo", "k"]).code(1);
    sg(&server, &["remove", "typo", "k"]).code(1);
    sg(&server, &["touch", "typo", "k"]).code(1);
    assert_eq!(sg(&server, &["count", "typo"]).ok().trim(), "0");
    assert_eq!(sg(&server, &["keys", "typo"]).ok().trim(), "");
    let listed = sg(&server, &["namespaces"]).ok();
    assert!(listed.contains("real"), "{listed}");
    assert!(
        !listed.contains("typo"),
        "reading created the namespace:\n{listed}"
    );
    // The same name written to is found by the commands that do not register it.
    assert_eq!(sg(&server, &["get", "real", "k"]).ok(), "v");
}

#[test]
fn namespaces_keys_count_clear() {
    let server = TestServer::start(&[]);
    for key in ["k3", "k1", "k2"] {
        sg(&server, &["put", "alpha", key, "v"]).code(0);
    }
    sg(&server, &["put", "beta", "only", "v"]).code(0);

    let mut keys: Vec<String> = sg(&server, &["keys", "alpha"])
        .ok()
        .lines()
        .map(String::from)
        .collect();
    keys.sort();
    assert_eq!(keys, ["k1", "k2", "k3"]);
    let j = sg(&server, &["--json", "keys", "alpha"]).json();
    assert_eq!(j["namespace"], "alpha");
    assert_eq!(j["count"], 3);
    let mut keys: Vec<&str> = j["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    keys.sort();
    assert_eq!(keys, ["k1", "k2", "k3"]);

    assert_eq!(sg(&server, &["count", "alpha"]).ok().trim(), "3");
    let j = sg(&server, &["--json", "count", "beta"]).json();
    assert_eq!(
        (j["namespace"].as_str(), j["objects"].as_u64()),
        (Some("beta"), Some(1))
    );

    let text = sg(&server, &["namespaces"]).ok();
    assert!(text.contains("alpha") && text.contains("beta"), "{text}");
    let j = sg(&server, &["--json", "namespaces"]).json();
    let list = j["namespaces"].as_array().unwrap();
    let alpha = list
        .iter()
        .find(|n| n["name"] == "alpha")
        .expect("alpha listed");
    assert_eq!(alpha["objects"], 3);
    assert!(alpha["id"].as_u64().is_some());
    assert!(list.iter().any(|n| n["name"] == "beta"));

    let j = sg(&server, &["--json", "clear", "alpha"]).json();
    assert_eq!(j["cleared"], true);
    assert_eq!(sg(&server, &["count", "alpha"]).ok().trim(), "0");
    assert_eq!(sg(&server, &["keys", "alpha"]).ok(), "");
    assert_eq!(
        sg(&server, &["count", "beta"]).ok().trim(),
        "1",
        "clear touches one namespace"
    );
}

#[test]
fn show_reports_this_host() {
    let server = TestServer::start(&[]);
    sg(&server, &["put", "ns", "k", "v"]).code(0);
    let text = sg(&server, &["show"]).ok();
    for field in [
        "version",
        "shards",
        "partitions",
        "objects",
        "memory",
        "connections",
        "parameters",
    ] {
        assert!(text.contains(field), "show lacks {field}: {text}");
    }
    let j = sg(&server, &["--json", "show"]).json();
    assert_eq!(j["host"], server.host());
    assert_eq!(j["shards"], 1);
    assert!(j["partitions"].as_u64().is_some_and(|p| p > 0));
    assert!(j["objects"].as_u64().is_some_and(|n| n >= 1));
    assert!(j["object_bytes"].as_u64().is_some());
    assert!(
        j["connections"].as_u64().is_some_and(|n| n >= 1),
        "this CLI is connected"
    );
    assert!(j["version"].is_string());
    assert_eq!(j["params"]["svr_port"], server.addr.port().to_string());
}

#[test]
fn a_value_over_object_bytes_max_exits_4() {
    let server = TestServer::start(&[("object_bytes_max", "1024")]);
    sg_in(&server, &["put", "ns", "small", "-"], &[b'a'; 1000]).code(0);
    let r = sg_in(&server, &["put", "ns", "big", "-"], &[b'a'; 2000]);
    r.code(4);
    assert!(r.stderr.contains("object_bytes_max"), "{r:?}");
    let r = sg_in(&server, &["--json", "put", "ns", "big", "-"], &[b'a'; 2000]);
    r.code(4);
    assert_eq!(r.json()["error"]["code"], "ObjectTooLarge");
    sg(&server, &["get", "ns", "big"]).code(1);
}

#[test]
fn the_host_comes_from_stategrid_host_too() {
    let server = TestServer::start(&[]);
    let out = Command::new(bin())
        .env("STATEGRID_HOST", server.host())
        .args(["put", "ns", "k", "from env"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(sg(&server, &["get", "ns", "k"]).stdout, b"from env");
}

#[test]
fn serve_stops_cleanly_on_sigterm() {
    let mut server = TestServer::start(&[]);
    sg(&server, &["put", "ns", "k", "v"]).code(0);
    let status = server.stop_graceful();
    assert!(status.success(), "serve exited with {status}");
    // Nobody listens any more: the CLI says it cannot connect.
    sg(&server, &["get", "ns", "k"]).code(5);
}
