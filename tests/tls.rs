//! TLS on every port (issue 10): `secure_svr_port` (native protocol and RESP over rustls's
//! unbuffered API on the shard's ring), `secure_mgt_port` (the CLI's admin calls), HTTPS on
//! `rest_port`. Each test makes its own CA and host certificate (rcgen) and talks to a real
//! `stategrid serve` with real clients: the client library, `redis-cli --tls`, `curl
//! --cacert`, the `stategrid` CLI.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::programs::{self, Tool};
use common::{TestServer, free_port};
use stategrid_client::{ClientConfig, TlsOptions, WriteOpts};

/// A CA and a host certificate it signed (for 127.0.0.1 and localhost), as PEM files.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().expect("temp dir");
        let (ca_pem, cert_pem, key_pem) = make_pki("stategrid test CA");
        std::fs::write(dir.path().join("ca.pem"), ca_pem).unwrap();
        std::fs::write(dir.path().join("cert.pem"), cert_pem).unwrap();
        std::fs::write(dir.path().join("key.pem"), key_pem).unwrap();
        Pki { dir }
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn cert(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    fn key(&self) -> PathBuf {
        self.dir.path().join("key.pem")
    }
}

/// A CA named `ca_name` and a certificate for 127.0.0.1 and localhost (`common::pki`).
fn make_pki(ca_name: &str) -> (String, String, String) {
    common::pki::make_pki(ca_name, &["127.0.0.1".to_owned(), "localhost".to_owned()])
}

/// A server with `secure_svr_port` on (and whatever `extra` adds); returns it and the port.
fn start_tls(pki: &Pki, extra: &[(&str, &str)]) -> (TestServer, u16) {
    let port = free_port();
    let (p, cert, key) = (
        port.to_string(),
        pki.cert().display().to_string(),
        pki.key().display().to_string(),
    );
    let mut sets = vec![
        ("secure_svr_port", p.as_str()),
        ("tls_cert_file", cert.as_str()),
        ("tls_key_file", key.as_str()),
        ("shards", "2"),
    ];
    sets.extend_from_slice(extra);
    (TestServer::start(&sets), port)
}

fn tls_client(port: u16, ca: &Path) -> stategrid_client::blocking::Client {
    let config = ClientConfig {
        tls: Some(TlsOptions::with_ca_file(ca)),
        connections: 3,
        ..ClientConfig::default()
    };
    stategrid_client::blocking::Client::connect(&format!("127.0.0.1:{port}"), config)
        .expect("TLS client connects")
}

#[test]
fn native_client_reads_and_writes_over_tls() {
    let pki = Pki::new();
    let (server, port) = start_tls(&pki, &[]);
    let c = tls_client(port, &pki.ca());
    let ns = c.namespace("tls").unwrap();
    ns.put("small", b"over tls", WriteOpts::default()).unwrap();
    assert_eq!(ns.read("small").unwrap().value, b"over tls");
    // Several records each way: a value larger than TLS's 16 KiB record, and pipelined
    // requests landing on both shards.
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    ns.put("big", &big, WriteOpts::default()).unwrap();
    assert_eq!(ns.read("big").unwrap().value, big);
    for i in 0..200 {
        ns.put(
            format!("k{i}"),
            format!("v{i}").as_bytes(),
            WriteOpts::default(),
        )
        .unwrap();
    }
    for i in 0..200 {
        assert_eq!(
            ns.read(format!("k{i}")).unwrap().value,
            format!("v{i}").as_bytes()
        );
    }
    // The plaintext port serves the same store.
    let plain = server.blocking_client();
    assert_eq!(
        plain.namespace("tls").unwrap().read("small").unwrap().value,
        b"over tls"
    );
}

#[test]
fn redis_cli_speaks_tls_to_secure_svr_port() {
    let Some(redis_cli) = programs::require(Tool::RedisCli, "redis_cli_speaks_tls") else {
        return;
    };
    let pki = Pki::new();
    let (_server, port) = start_tls(&pki, &[]);
    let cli = |args: &[&str]| {
        let mut cmd = Command::new(&redis_cli);
        cmd.args(["--tls", "--cacert"])
            .arg(pki.ca())
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args);
        let out = cmd.output().expect("run redis-cli");
        assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(cli(&["PING"]), "PONG");
    assert_eq!(cli(&["SET", "greeting", "hello over tls"]), "OK");
    assert_eq!(cli(&["GET", "greeting"]), "hello over tls");
    assert_eq!(cli(&["INCR", "counter"]), "1");
    assert_eq!(cli(&["DEL", "greeting"]), "1");
}

#[test]
fn curl_gets_and_puts_over_https() {
    let Some(curl) = which("curl") else {
        panic!("curl is needed (apt-get install curl)");
    };
    let pki = Pki::new();
    let rest = free_port();
    let rest_s = rest.to_string();
    let (_server, _port) = start_tls(&pki, &[("rest_port", &rest_s), ("http_tls", "1")]);
    let url = format!("https://127.0.0.1:{rest}/data/web/page");
    let run = |args: &[&str]| {
        let out = Command::new(&curl)
            .args(["-sS", "--max-time", "20", "--cacert"])
            .arg(pki.ca())
            .args(args)
            .output()
            .expect("run curl");
        assert!(out.status.success(), "curl {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let code = run(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-X",
        "PUT",
        "--data-binary",
        "hello https",
        &url,
    ]);
    assert!(code == "204" || code == "201", "PUT answered {code}");
    assert_eq!(run(&[&url]), "hello https");
    // Plain HTTP to the HTTPS port gets no answer as HTTP.
    let plain = Command::new(&curl)
        .args(["-sS", "--max-time", "10"])
        .arg(format!("http://127.0.0.1:{rest}/data/web/page"))
        .output()
        .unwrap();
    assert_ne!(String::from_utf8_lossy(&plain.stdout), "hello https");
}

#[test]
fn plaintext_and_untrusted_peers_are_closed_and_others_unaffected() {
    let pki = Pki::new();
    let (server, port) = start_tls(&pki, &[]);
    let good = tls_client(port, &pki.ca());
    let ns = good.namespace("bystander").unwrap();
    ns.put("k", b"v", WriteOpts::default()).unwrap();

    // Plaintext (a native Hello and a RESP PING) on the TLS port: the server closes.
    for bytes in [
        &b"GS\x01\x00\x00\x00\x00\x00 garbage that is not a TLS record"[..],
        b"*1\r\n$4\r\nPING\r\n",
    ] {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(bytes).unwrap();
        let mut buf = [0u8; 256];
        let mut got = Vec::new();
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!("the server neither answered nor closed: {e}"),
            }
        }
        assert!(
            !got.windows(4).any(|w| w == b"PONG"),
            "plaintext was served on the TLS port"
        );
    }

    // A client that trusts another CA refuses the server's certificate.
    let other = tempfile::tempdir().unwrap();
    let other_ca = other.path().join("other-ca.pem");
    std::fs::write(&other_ca, make_pki("another CA").0).unwrap();
    let config = ClientConfig {
        tls: Some(TlsOptions::with_ca_file(&other_ca)),
        connect_timeout_ms: 5_000,
        ..ClientConfig::default()
    };
    let refused = stategrid_client::blocking::Client::connect(&format!("127.0.0.1:{port}"), config);
    let err = refused.expect_err("a certificate from an untrusted CA is refused");
    assert!(err.to_string().contains("TLS"), "{err}");

    // A client naming a host the certificate does not cover refuses it too.
    let config = ClientConfig {
        tls: Some(TlsOptions {
            ca_file: pki.ca(),
            server_name: Some("not-this-host.example".into()),
        }),
        ..ClientConfig::default()
    };
    assert!(
        stategrid_client::blocking::Client::connect(&format!("127.0.0.1:{port}"), config).is_err()
    );

    // The connection opened before is still served.
    assert_eq!(ns.read("k").unwrap().value, b"v");
    assert!(!server.output().contains("panicked"), "{}", server.output());
}

/// VmRSS of the server process.
fn resident_bytes(server: &TestServer) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

#[test]
fn garbage_handshakes_do_not_grow_memory() {
    const CONNECTIONS: usize = 32;
    const GROWTH_BYTES_MAX: u64 = 64 << 20;
    let pki = Pki::new();
    let (server, port) = start_tls(&pki, &[]);
    let good = tls_client(port, &pki.ca());
    let ns = good.namespace("bystander").unwrap();
    ns.put("k", b"v", WriteOpts::default()).unwrap();
    let before = resident_bytes(&server);
    let mut held = Vec::new();
    for i in 0..CONNECTIONS {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        if i % 2 == 0 {
            // A handshake record claiming 16 KiB, then a ClientHello header claiming a
            // 16 MiB message, and nothing more.
            s.write_all(&[0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0xff, 0xff, 0xff])
                .unwrap();
            s.write_all(&[0u8; 4096]).unwrap();
        } else {
            // Many small handshake records of a message that never ends.
            let mut bytes = Vec::new();
            bytes.extend_from_slice(&[0x16, 0x03, 0x01, 0x00, 0x04, 0x01, 0x00, 0xff, 0xff]);
            for _ in 0..200 {
                bytes.extend_from_slice(&[0x16, 0x03, 0x01, 0x01, 0x00]);
                bytes.extend_from_slice(&[0x41; 256]);
            }
            let _ = s.write_all(&bytes);
        }
        held.push(s);
    }
    for round in 0..3 {
        // Served meanwhile, over TLS and in plaintext.
        assert_eq!(ns.read("k").unwrap().value, b"v");
        let plain = server.blocking_client();
        plain
            .namespace("bystander")
            .unwrap()
            .put(format!("p{round}"), b"x", WriteOpts::default())
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let growth = resident_bytes(&server).saturating_sub(before);
        assert!(
            growth < GROWTH_BYTES_MAX,
            "resident memory grew {growth} bytes with {CONNECTIONS} garbage handshakes\n{}",
            server.output()
        );
    }
    drop(held);
}

#[test]
fn cli_uses_tls_for_data_and_management() {
    let pki = Pki::new();
    let mgt_tls = free_port();
    let mgt_tls_s = mgt_tls.to_string();
    let (_server, port) = start_tls(&pki, &[("secure_mgt_port", &mgt_tls_s)]);
    let cli = |args: &[&str]| {
        let out = Command::new(common::bin())
            .arg("--cacert")
            .arg(pki.ca())
            .args(["--host", &format!("127.0.0.1:{port}")])
            .args(["--mgt", &format!("127.0.0.1:{mgt_tls}")])
            .args(args)
            .env_remove("STATEGRID_HOST")
            .env_remove("STATEGRID_MGT")
            .output()
            .expect("run stategrid");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, _, err) = cli(&["put", "cli", "k", "from the cli"]);
    assert_eq!(code, Some(0), "{err}");
    let (code, out, err) = cli(&["get", "cli", "k"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("from the cli"), "{out}");
    let (code, out, err) = cli(&["query", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("hosts"), "{out}");
    // --tls with no CA is a usage error that names the fix.
    let out = Command::new(common::bin())
        .args([
            "--tls",
            "--host",
            &format!("127.0.0.1:{port}"),
            "get",
            "cli",
            "k",
        ])
        .env_remove("STATEGRID_CACERT")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--cacert"));
}

#[test]
fn a_secure_port_without_a_certificate_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(common::bin())
        .arg("serve")
        .args(["--set", &format!("secure_svr_port={}", free_port())])
        .args(["--set", &format!("svr_port={}", free_port())])
        .args(["--set", &format!("log_dir={}", dir.path().display())])
        .output()
        .expect("run stategrid serve");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("secure_svr_port") && err.contains("tls_cert_file"),
        "{err}"
    );
    // A certificate file that is not PEM is named in the error.
    let bad = dir.path().join("bad.pem");
    std::fs::write(&bad, "not a certificate").unwrap();
    let out = Command::new(common::bin())
        .arg("serve")
        .args(["--set", &format!("secure_svr_port={}", free_port())])
        .args(["--set", &format!("svr_port={}", free_port())])
        .args(["--set", &format!("tls_cert_file={}", bad.display())])
        .args(["--set", &format!("tls_key_file={}", bad.display())])
        .args(["--set", &format!("log_dir={}", dir.path().display())])
        .output()
        .expect("run stategrid serve");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.pem"), "{err}");
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}

#[test]
fn sighup_reloads_the_certificate() {
    let pki = Pki::new();
    let (server, port) = start_tls(&pki, &[]);
    let first = tls_client(port, &pki.ca());
    first
        .namespace("reload")
        .unwrap()
        .put("k", b"before", WriteOpts::default())
        .unwrap();
    // A renewed certificate from another CA, written over the files the server names.
    let (new_ca, new_cert, new_key) = make_pki("renewed CA");
    let new_ca_file = pki.dir.path().join("new-ca.pem");
    std::fs::write(&new_ca_file, new_ca).unwrap();
    std::fs::write(pki.cert(), new_cert).unwrap();
    std::fs::write(pki.key(), new_key).unwrap();
    // SAFETY: plain kill(2) of our own child process.
    assert_eq!(
        unsafe { libc::kill(server.child.id() as i32, libc::SIGHUP) },
        0
    );
    // The signal is handled by the server's main thread: wait (bounded) until a client that
    // trusts only the new CA is served.
    let config = ClientConfig {
        tls: Some(TlsOptions::with_ca_file(&new_ca_file)),
        ..ClientConfig::default()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let renewed = loop {
        match stategrid_client::blocking::Client::connect(
            &format!("127.0.0.1:{port}"),
            config.clone(),
        ) {
            Ok(c) => break c,
            Err(e) if std::time::Instant::now() > deadline => {
                panic!(
                    "the new certificate was not served after SIGHUP: {e}\n{}",
                    server.output()
                )
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    assert_eq!(
        renewed
            .namespace("reload")
            .unwrap()
            .read("k")
            .unwrap()
            .value,
        b"before"
    );
    // New connections no longer get the old certificate; the open one keeps working.
    let old_config = ClientConfig {
        tls: Some(TlsOptions::with_ca_file(pki.ca())),
        ..ClientConfig::default()
    };
    assert!(
        stategrid_client::blocking::Client::connect(&format!("127.0.0.1:{port}"), old_config)
            .is_err()
    );
    assert_eq!(
        first.namespace("reload").unwrap().read("k").unwrap().value,
        b"before"
    );
}
