//! Clients prove who they are (issue 10): users and roles from a users file (hashes made by
//! `stategrid hash-password`), `requirepass`, and protected mode, on every client front: the
//! native protocol (client library and raw frames), RESP (real redis-cli and redis-py), the
//! HTTP data and management APIs, and the management commands on mgt_port.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::programs::{Tool, require};
use common::raw::Raw;
use common::{TestServer, bin, free_port};
use stategrid_client::blocking::Client;
use stategrid_client::{ClientConfig, Credentials, ErrorCode, WriteOptions};
use stategrid_proto::{PROTOCOL_VERSION, Request, Response};

const READER: (&str, &str) = ("reader", "reader-pw");
const WRITER: (&str, &str) = ("writer", "writer-pw");
const OPS: (&str, &str) = ("ops", "ops pw with spaces");

fn creds((user, password): (&str, &str)) -> Credentials {
    Credentials {
        user: Some(user.into()),
        password: password.into(),
    }
}

/// `stategrid hash-password`, the password on stdin.
fn hash(password: &str) -> String {
    let mut child = Command::new(bin())
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run stategrid hash-password");
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let h = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(h.starts_with("$argon2id$"), "{h}");
    assert!(!h.contains(password), "the hash must not hold the password");
    h
}

/// A server with three users (read, read-write, admin), RESP, REST and management HTTP on.
struct AuthServer {
    server: TestServer,
    resp_port: u16,
    rest_port: u16,
    mgt_http_port: u16,
    _users: tempfile::NamedTempFile,
}

fn auth_server(extra: &[(&str, &str)]) -> AuthServer {
    let mut users = tempfile::NamedTempFile::new().unwrap();
    writeln!(users, "# name role hash").unwrap();
    for ((name, pw), role) in [READER, WRITER, OPS]
        .into_iter()
        .zip(["read", "read-write", "admin"])
    {
        writeln!(users, "{name} {role} {}", hash(pw)).unwrap();
    }
    users.flush().unwrap();
    let (resp_port, rest_port, mgt_http_port) = (free_port(), free_port(), free_port());
    let path = users.path().display().to_string();
    let (rp, hp, mp) = (
        resp_port.to_string(),
        rest_port.to_string(),
        mgt_http_port.to_string(),
    );
    let mut sets = vec![
        ("users_file", path.as_str()),
        ("resp_port", rp.as_str()),
        ("rest_port", hp.as_str()),
        ("mgt_http_port", mp.as_str()),
    ];
    sets.extend_from_slice(extra);
    let server = TestServer::start_as(&sets, Some(creds(OPS)), |_| {});
    AuthServer {
        server,
        resp_port,
        rest_port,
        mgt_http_port,
        _users: users,
    }
}

fn client_as(server: &TestServer, who: Option<(&str, &str)>) -> stategrid_client::Result<Client> {
    Client::connect(
        &server.host(),
        ClientConfig {
            credentials: who.map(creds),
            request_timeout_ms: 10_000,
            ..ClientConfig::default()
        },
    )
}

fn code<T: std::fmt::Debug>(r: stategrid_client::Result<T>) -> Option<ErrorCode> {
    match r {
        Err(e) => e.code(),
        Ok(v) => panic!("expected a refusal, got {v:?}"),
    }
}

#[test]
fn native_users_and_roles() {
    let s = auth_server(&[]);
    let srv = &s.server;

    // Without credentials: Hello works, everything else is AuthRequired.
    let anon = client_as(srv, None).expect("Hello needs no credentials");
    assert_eq!(
        code(anon.namespace("sessions")),
        Some(ErrorCode::AuthRequired)
    );
    assert_eq!(code(anon.stats()), Some(ErrorCode::AuthRequired));

    // A wrong password, and an unknown user, fail the connection with AuthFailed.
    assert_eq!(
        code(client_as(srv, Some((WRITER.0, "nope")))),
        Some(ErrorCode::AuthFailed)
    );
    assert_eq!(
        code(client_as(srv, Some(("nobody", WRITER.1)))),
        Some(ErrorCode::AuthFailed)
    );

    // read-write writes; read reads and is refused writes; admin clears.
    let writer = client_as(srv, Some(WRITER)).unwrap();
    let ns = writer.namespace("sessions").unwrap();
    ns.put("k1", b"v1", WriteOptions::new()).unwrap();
    let reader = client_as(srv, Some(READER)).unwrap();
    let rns = reader.namespace("sessions").unwrap();
    assert_eq!(rns.read("k1").unwrap().value, b"v1");
    assert_eq!(rns.keys().unwrap().len(), 1);
    let e = rns.put("k2", b"v2", WriteOptions::new()).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::PermissionDenied), "{e}");
    assert!(e.to_string().contains("reader"), "{e}");
    assert_eq!(code(rns.remove("k1")), Some(ErrorCode::PermissionDenied));
    assert_eq!(
        code(rns.read_and_lock("k1")),
        Some(ErrorCode::PermissionDenied)
    );
    // Clearing a namespace is admin's.
    assert_eq!(code(ns.clear()), Some(ErrorCode::PermissionDenied));
    let ops = client_as(srv, Some(OPS)).unwrap();
    ops.namespace("sessions").unwrap().clear().unwrap();
    assert_eq!(code(rns.read("k1")), Some(ErrorCode::NotFound));
}

#[test]
fn native_before_auth_frames_are_small_and_auth_is_answered_in_order() {
    let s = auth_server(&[]);
    let srv = &s.server;
    // After Hello, a frame header claiming 1 MiB (over unauth_frame_bytes_max, 64 KiB) is
    // refused from its header: the connection closes without buffering it.
    let mut r = Raw::hello(srv);
    let mut big = Vec::new();
    stategrid_proto::codec::encode_request(
        &mut big,
        7,
        &Request::Put {
            key: stategrid_proto::Key {
                ns: 1,
                key: b"k".to_vec(),
            },
            opts: Default::default(),
        },
        &vec![b'x'; 1 << 20],
    );
    // The header and a little: the server reads it all, so its close is a clean FIN.
    r.s.write_all(&big[..4096]).unwrap();
    match r.recv() {
        (_, Response::Error(e)) => {
            assert_eq!(e.code, ErrorCode::FrameTooLarge, "{e}");
            assert!(e.message.contains("unauth_frame_bytes_max"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    r.expect_eof();

    // Pipelined: a request before Auth is refused, Auth succeeds, the next is served.
    let mut r = Raw::hello(srv);
    r.send(2, &Request::NsList, b"");
    r.send(
        3,
        &Request::Auth {
            user: Some(READER.0.into()),
            password: READER.1.into(),
        },
        b"",
    );
    r.send(4, &Request::NsList, b"");
    match r.recv() {
        (2, Response::Error(e)) => assert_eq!(e.code, ErrorCode::AuthRequired),
        other => panic!("{other:?}"),
    }
    assert_eq!(r.recv(), (3, Response::Ok));
    assert!(matches!(r.recv(), (4, Response::Namespaces { .. })));
}

#[test]
fn requirepass_is_the_default_users_admin_password() {
    let srv = TestServer::start_as(
        &[("requirepass", "s3cret-pass")],
        Some(Credentials {
            user: None,
            password: "s3cret-pass".into(),
        }),
        |_| {},
    );
    let c = srv.blocking_client();
    c.namespace("a").unwrap().clear().unwrap();
    // `stats` shows the parameter redacted.
    let st = c.stats().unwrap();
    let p = st.params.iter().find(|p| p.name == "requirepass").unwrap();
    assert_eq!(p.value, "<set>");
    // The CLI takes the password from STATEGRID_AUTH (never argv).
    let out = Command::new(bin())
        .args(["--host", &srv.host(), "put", "ns", "k", "v"])
        .env("STATEGRID_AUTH", "default:s3cret-pass")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let out = Command::new(bin())
        .args(["--host", &srv.host(), "get", "ns", "k"])
        .env_remove("STATEGRID_AUTH")
        .env_remove("STATEGRID_REQUIREPASS")
        .output()
        .unwrap();
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("authentication required"),
        "{out:?}"
    );
}

fn redis_cli(port: u16, auth: &[&str], cmd: &[&str]) -> (String, String) {
    let out = Command::new("redis-cli")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "--no-auth-warning",
        ])
        .args(auth)
        .args(cmd)
        .output()
        .expect("run redis-cli");
    (
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    )
}

#[test]
fn resp_auth_with_redis_cli_and_redis_py() {
    let s = auth_server(&[]);
    let port = s.resp_port;
    if require(Tool::RedisCli, "resp_auth_with_redis_cli_and_redis_py").is_some() {
        // No credentials: Redis's NOAUTH.
        let (out, _) = redis_cli(port, &[], &["get", "k"]);
        assert_eq!(out, "NOAUTH Authentication required.");
        // --user/--pass (AUTH user pass).
        let w = ["--user", WRITER.0, "--pass", WRITER.1];
        assert_eq!(redis_cli(port, &w, &["set", "k", "v"]).0, "OK");
        assert_eq!(redis_cli(port, &w, &["get", "k"]).0, "v");
        // A read user: reads, NOPERM on writes and FLUSHDB.
        let r = ["--user", READER.0, "--pass", READER.1];
        assert_eq!(redis_cli(port, &r, &["get", "k"]).0, "v");
        let (out, _) = redis_cli(port, &r, &["set", "k", "x"]);
        assert!(out.starts_with("NOPERM"), "{out}");
        assert!(out.contains("'set'"), "{out}");
        let (out, _) = redis_cli(port, &w, &["flushdb"]);
        assert!(out.starts_with("NOPERM"), "{out}");
        // A wrong password: redis-cli reports WRONGPASS, the command then gets NOAUTH.
        let (out, err) = redis_cli(port, &["--user", WRITER.0, "--pass", "bad"], &["get", "k"]);
        assert!(
            format!("{out}\n{err}").contains("WRONGPASS invalid username-password pair"),
            "{out} / {err}"
        );
        // HELLO 3 AUTH user pass (redis-cli -3).
        let (out, _) = redis_cli(
            port,
            &["-3", "--user", OPS.0, "--pass", OPS.1],
            &["flushdb"],
        );
        assert_eq!(out, "OK");
    }
    if let Some(py) = require(Tool::Python, "resp_auth_with_redis_cli_and_redis_py") {
        let script = format!(
            r#"
import redis
port = {port}
try:
    redis.Redis(port=port).get("k")
    raise SystemExit("no NOAUTH")
except redis.exceptions.AuthenticationError as e:
    # NOAUTH to the command, or (a redis-py that greets with HELLO 3) to HELLO, as Redis.
    assert "Authentication required" in str(e) or "already authenticated" in str(e), e
try:
    redis.Redis(port=port, username="writer", password="bad").ping()
    raise SystemExit("no WRONGPASS")
except redis.exceptions.AuthenticationError as e:
    assert "invalid username-password pair" in str(e), e
for proto in (2, 3):
    w = redis.Redis(port=port, username="writer", password="writer-pw", protocol=proto)
    assert w.set("py", "1") is True
    assert w.get("py") == b"1"
r = redis.Redis(port=port, username="reader", password="reader-pw")
assert r.get("py") == b"1"
try:
    r.set("py", "2")
    raise SystemExit("no NOPERM")
except redis.exceptions.NoPermissionError as e:
    assert "no permissions" in str(e), e
print("ok")
"#
        );
        let out = Command::new(py).args(["-c", &script]).output().unwrap();
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("ok"),
            "{out:?}"
        );
    }
}

/// (status, every `WWW-Authenticate` challenge, body) of a request with an optional
/// `Authorization` value.
fn http(
    method: &str,
    url: &str,
    auth: Option<&str>,
    body: Option<&[u8]>,
) -> (u16, Vec<String>, String) {
    let headers: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
    let a = common::http::send(method, url, &headers, body);
    (a.status, a.all("www-authenticate"), a.text())
}

fn basic((user, pw): (&str, &str)) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"))
    )
}

#[test]
fn http_basic_and_bearer() {
    let s = auth_server(&[]);
    let data = format!("http://127.0.0.1:{}/data/web/k1", s.rest_port);
    let mgt = format!("http://127.0.0.1:{}", s.mgt_http_port);

    let (st, challenges, body) = http("GET", &data, None, None);
    assert_eq!(st, 401, "{body}");
    assert!(
        challenges.iter().any(|c| c.starts_with("Basic")),
        "{challenges:?}"
    );
    assert!(
        challenges.iter().any(|c| c.starts_with("Bearer")),
        "{challenges:?}"
    );
    assert_eq!(
        http("GET", &data, Some(&basic((WRITER.0, "no"))), None).0,
        401
    );

    let (st, _, body) = http("PUT", &data, Some(&basic(WRITER)), Some(b"hello"));
    assert!((200..300).contains(&st), "{st} {body}");
    let (st, _, body) = http("GET", &data, Some(&basic(READER)), None);
    assert_eq!((st, body.as_str()), (200, "hello"));
    // Bearer: `user:password` (or the default user's password).
    let bearer = format!("Bearer {}:{}", READER.0, READER.1);
    assert_eq!(http("GET", &data, Some(&bearer), None).0, 200);
    // The read role may not write: 403.
    let (st, _, body) = http("PUT", &data, Some(&basic(READER)), Some(b"x"));
    assert_eq!(st, 403, "{body}");
    assert!(body.contains("PermissionDenied"), "{body}");

    // Management: probes open, the rest behind auth.
    assert_eq!(http("GET", &format!("{mgt}/healthz"), None, None).0, 200);
    assert_eq!(http("GET", &format!("{mgt}/readyz"), None, None).0, 200);
    assert_eq!(http("GET", &format!("{mgt}/metrics"), None, None).0, 401);
    assert_eq!(
        http("GET", &format!("{mgt}/api/v1/host"), None, None).0,
        401
    );
    let (st, _, body) = http("GET", &format!("{mgt}/metrics"), Some(&basic(READER)), None);
    assert_eq!(st, 200, "{body}");
}

#[test]
fn management_commands_need_the_admin_role() {
    let s = auth_server(&[]);
    let srv = &s.server;
    let mgt_port = srv
        .blocking_client()
        .stats()
        .unwrap()
        .params
        .into_iter()
        .find(|p| p.name == "mgt_port")
        .unwrap()
        .value;
    let cli = |auth: Option<&str>, args: &[&str]| {
        let mut cmd = Command::new(bin());
        cmd.args(["--mgt", &format!("127.0.0.1:{mgt_port}")])
            .args(args)
            .env_remove("STATEGRID_AUTH")
            .env_remove("STATEGRID_REQUIREPASS");
        if let Some(a) = auth {
            cmd.env("STATEGRID_AUTH", a);
        }
        cmd.output().unwrap()
    };
    let out = cli(None, &["join"]);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("role admin"),
        "{out:?}"
    );
    let out = cli(Some(&format!("{}:{}", WRITER.0, WRITER.1)), &["join"]);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("has role read-write"),
        "{out:?}"
    );
    // The auth file way, for the admin.
    let mut f = tempfile::NamedTempFile::new().unwrap();
    writeln!(f, "{}:{}", OPS.0, OPS.1).unwrap();
    let mut cmd = Command::new(bin());
    let out = cmd
        .args(["--mgt", &format!("127.0.0.1:{mgt_port}"), "--auth-file"])
        .arg(f.path())
        .args(["set", "max_replicas", "1", "--all"])
        .env_remove("STATEGRID_AUTH")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // query is read-only status: open.
    assert!(cli(None, &["query"]).status.success());
}

/// A non-loopback IPv4 address of this machine (eth0, docker0, ...).
fn non_loopback_ip() -> Ipv4Addr {
    let mut found = None;
    // SAFETY: getifaddrs allocates a list we walk read-only and free once.
    unsafe {
        let mut ifs: *mut libc::ifaddrs = std::ptr::null_mut();
        assert_eq!(libc::getifaddrs(&mut ifs), 0, "getifaddrs");
        let mut p = ifs;
        while !p.is_null() {
            let a = (*p).ifa_addr;
            if !a.is_null() && (*a).sa_family as i32 == libc::AF_INET {
                let sin = &*(a as *const libc::sockaddr_in);
                let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                if !ip.is_loopback() && found.is_none() {
                    found = Some(ip);
                }
            }
            p = (*p).ifa_next;
        }
        libc::freeifaddrs(ifs);
    }
    found.expect("this machine has no non-loopback IPv4 address to test protected mode from")
}

/// Connects to `ip:port` from `ip` (a non-loopback source) and returns what the server sent
/// after `first` until it closed.
fn from_outside(ip: Ipv4Addr, port: u16, first: &[u8]) -> Vec<u8> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::from((ip, 0)).into()).unwrap();
    sock.connect(&SocketAddr::from((ip, port)).into()).unwrap();
    let mut s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(first).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

fn hello_frame() -> Vec<u8> {
    let mut out = Vec::new();
    stategrid_proto::codec::encode_request(
        &mut out,
        1,
        &Request::Hello {
            version: PROTOCOL_VERSION,
            client: "outside".into(),
        },
        b"",
    );
    out
}

#[test]
fn protected_mode_serves_loopback_only_until_credentials_exist() {
    let ip = non_loopback_ip();
    let (resp_port, rest_port) = (free_port(), free_port());
    let (rp, hp) = (resp_port.to_string(), rest_port.to_string());
    let open = [
        ("net_interface", "0.0.0.0"),
        ("cluster_key", "protected-mode-test-key-0123456789"),
        ("resp_port", rp.as_str()),
        ("rest_port", hp.as_str()),
    ];
    let srv = TestServer::start(&open);
    let port = srv.addr.port();

    // Native: the first frame is answered with why, then the connection closes.
    let out = from_outside(ip, port, &hello_frame());
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("protected mode"), "{text}");
    assert!(text.contains("requirepass"), "{text}");
    // RESP, on svr_port and on resp_port: Redis's -DENIED.
    for p in [port, resp_port] {
        let out = from_outside(ip, p, b"*1\r\n$4\r\nPING\r\n");
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("-DENIED "), "{text}");
        assert!(text.contains("protected_mode 0"), "{text}");
    }
    // REST: 403 with the reason.
    let out = from_outside(ip, rest_port, b"GET /data/x/y HTTP/1.1\r\nhost: x\r\n\r\n");
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 403"), "{text}");
    assert!(text.contains("protected mode"), "{text}");
    // Loopback clients are served as before.
    let c = srv.blocking_client();
    c.namespace("n")
        .unwrap()
        .put("k", b"v", WriteOptions::new())
        .unwrap();
    drop(srv);

    // With a password configured, the same outside client is served (after Auth).
    let mut with_pass = open.to_vec();
    with_pass.push(("requirepass", "outside-pass"));
    let srv = TestServer::start_as(
        &with_pass,
        Some(Credentials {
            user: None,
            password: "outside-pass".into(),
        }),
        |_| {},
    );
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::from((ip, 0)).into()).unwrap();
    sock.connect(&SocketAddr::from((ip, srv.addr.port())).into())
        .unwrap();
    let mut r = Raw::from_stream(sock.into());
    r.s.write_all(&hello_frame()).unwrap();
    assert!(matches!(r.recv(), (1, Response::HelloOk { .. })));
    r.send(
        2,
        &Request::Auth {
            user: None,
            password: "outside-pass".into(),
        },
        b"",
    );
    assert_eq!(r.recv(), (2, Response::Ok));
    r.send(3, &Request::NsList, b"");
    assert!(matches!(r.recv(), (3, Response::Namespaces { .. })));

    // And with protected_mode 0, without credentials, too.
    drop(srv);
    let mut off = open.to_vec();
    off.push(("protected_mode", "0"));
    let srv = TestServer::start(&off);
    let out = from_outside(
        ip,
        srv.addr.port(),
        b"*1\r\n$4\r\nPING\r\n*1\r\n$4\r\nQUIT\r\n",
    );
    assert_eq!(String::from_utf8_lossy(&out), "+PONG\r\n+OK\r\n");
}
