//! Host-to-host links over mutual TLS (`tls_cluster 1`, issue 10): real `stategrid serve`
//! processes on 127.0.0.x, each with its own certificate from a store CA the test makes
//! (rcgen), replicate, migrate and relay over TLS on the shard's ring; the cluster-key
//! handshake runs inside it. A peer without a certificate of the store CA, or speaking
//! plaintext, gets nothing from `int_port`; a capture of `int_port` traffic holds no byte of
//! what was written.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::hosts::{Host, Ports, Store};
use common::store::*;
use common::{START_TIMEOUT_MS, bin};
use stategrid_client::proto::{PROTOCOL_VERSION, Request};

/// A store CA and the certificates it signs, as PEM files in a temp dir.
struct StorePki {
    dir: tempfile::TempDir,
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

impl StorePki {
    fn new(name: &str) -> StorePki {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = params.self_signed(&ca_key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        StorePki { dir, ca, ca_key }
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// (certificate, key) files of a host whose certificate names `ip` (made on first use).
    fn host(&self, ip: &str) -> (PathBuf, PathBuf) {
        let (cert, key) = (
            self.dir.path().join(format!("{ip}.pem")),
            self.dir.path().join(format!("{ip}.key")),
        );
        if !cert.exists() {
            let params = rcgen::CertificateParams::new(vec![ip.to_owned()]).unwrap();
            let host_key = rcgen::KeyPair::generate().unwrap();
            let signed = params.signed_by(&host_key, &self.ca, &self.ca_key).unwrap();
            std::fs::write(&cert, signed.pem()).unwrap();
            std::fs::write(&key, host_key.serialize_pem()).unwrap();
        }
        (cert, key)
    }

    /// The `--set`s that put the host at `ip` in a `tls_cluster` store of this CA.
    fn sets(&self, ip: &str) -> Vec<(&'static str, String)> {
        let (cert, key) = self.host(ip);
        vec![
            ("tls_cluster", "1".into()),
            ("tls_cert_file", cert.display().to_string()),
            ("tls_key_file", key.display().to_string()),
            ("tls_ca_file", self.ca_file().display().to_string()),
        ]
    }
}

/// `tcpdump` capturing TCP on loopback (a port, or a pcap filter) into a file until stopped.
struct Capture {
    child: std::process::Child,
    file: PathBuf,
}

impl Capture {
    /// Starts capturing; None (after saying why) when tcpdump cannot, which fails under CI.
    fn start(dir: &Path, port: u16) -> Option<Capture> {
        Capture::start_filter(dir, "int", &format!("tcp port {port}"))
    }

    fn start_filter(dir: &Path, name: &str, filter: &str) -> Option<Capture> {
        let file = dir.join(format!("{name}.pcap"));
        let log = dir.join(format!("{name}-tcpdump.txt"));
        // --immediate-mode: every packet reaches the file at once, not when a kernel buffer
        // block fills, so what went before `stop` is all there.
        let spawned = Command::new("tcpdump")
            .args(["-i", "lo", "--immediate-mode", "-U", "-s", "0", "-w"])
            .arg(&file)
            .arg(filter)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn();
        let why = match spawned {
            Ok(mut child) => {
                // tcpdump says "listening on" once it captures.
                let deadline = Instant::now() + Duration::from_secs(10);
                loop {
                    let said = std::fs::read_to_string(&log).unwrap_or_default();
                    if said.contains("listening on") {
                        return Some(Capture { child, file });
                    }
                    let exited = child.try_wait().unwrap().is_some();
                    if exited || Instant::now() > deadline {
                        let _ = child.kill();
                        let _ = child.wait();
                        break format!("tcpdump did not start: {said}");
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            Err(e) => format!("tcpdump is not usable ({e}); run scripts/install-test-deps.sh"),
        };
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true: the {name} capture must not be skipped: {why}"
        );
        eprintln!("\n!!! SKIPPED the {name} capture: {why} !!!\n");
        None
    }

    /// Stops capturing; returns the capture file's bytes.
    fn stop(mut self) -> Vec<u8> {
        // SAFETY: a signal to our own child; SIGINT makes tcpdump flush and exit.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
        std::fs::read(&self.file).unwrap()
    }
}

/// The UDP payloads of a pcap file tcpdump wrote on `lo` (Ethernet framing, IPv4).
fn udp_payloads(pcap: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut at = 24; // the file header
    while let Some(head) = pcap.get(at..at + 16) {
        let caught = u32::from_le_bytes(head[8..12].try_into().unwrap()) as usize;
        let Some(frame) = pcap.get(at + 16..at + 16 + caught) else {
            break;
        };
        at += 16 + caught;
        // Ethernet (14 bytes), then IPv4 with its header length, then UDP (8 bytes).
        let Some(ip) = frame.get(14..) else { continue };
        if ip.first().is_none_or(|b| b >> 4 != 4) || ip.get(9) != Some(&17) {
            continue;
        }
        let ihl = (ip[0] & 0x0f) as usize * 4;
        if let Some(payload) = ip.get(ihl + 8..) {
            out.push(payload.to_vec());
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Three hosts with `tls_cluster 1` and a cluster key form a store (partitions migrate over
/// TLS links), replicate every write, and keep every acknowledged write through `kill -9` of
/// one of them; what went over `int_port` meanwhile holds none of the keys written.
#[test]
fn three_tls_hosts_replicate_encrypted_and_keep_acknowledged_writes_through_kill_9() {
    let pki = StorePki::new("stategrid store CA");
    let key_file = pki.dir.path().join("cluster.key");
    std::fs::write(&key_file, "tls-cluster-test-key-0123456789abcdef\n").unwrap();
    let mut store = Store::start_with(3, 221, |ip| {
        let mut sets = pki.sets(ip);
        sets.push(("cluster_key_file", key_file.display().to_string()));
        sets
    });
    let svrs = store.svr_addrs();
    let c = client(&svrs[0], 10_000);
    let m = wait_settled(&c, &svrs, 1, || store.outputs());

    // Writes through the first host: its replicas, and the primaries of keys it does not own
    // (the write is relayed), get them over int_port links.
    let ns = "tlscluster";
    let all = keys(3_000, "tlscanary");
    let capture = Capture::start(pki.dir.path(), store.int_port);
    let acked = write_all(&c, ns, &all);
    if let Some(capture) = capture {
        let bytes = capture.stop();
        // About 3,000 relayed or replicated 200-byte values went through: the capture saw
        // the traffic, encrypted.
        assert!(
            bytes.len() > 300_000,
            "the capture saw only {} bytes of int_port traffic",
            bytes.len()
        );
        assert!(
            !contains(&bytes, b"tlscanary"),
            "a key written went over int_port in plaintext"
        );
        assert!(
            !contains(&bytes, b"xxxxxxxxxxxxxxxx"),
            "a value went in plaintext"
        );
        println!(
            "int_port capture: {} bytes, no plaintext key or value",
            bytes.len()
        );
    }

    // Admin calls between hosts go inside TLS too: `query` at the first host gathers every
    // host's counters, `set --all` reaches every host. A capture of what the first host and
    // the second exchange on mgt_port (the CLI talks to the first host only) holds neither
    // the counters' field names nor the parameter.
    let mgt0 = format!("{}:{}", store.hosts[0].ip, store.mgt_port);
    let filter = format!("tcp port {} and host {}", store.mgt_port, store.hosts[1].ip);
    let capture = Capture::start_filter(pki.dir.path(), "mgt", &filter);
    let cli = |args: &[&str]| {
        let out = Command::new(bin())
            .args(args)
            .output()
            .expect("run stategrid");
        assert!(
            out.status.success(),
            "stategrid {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            store.outputs()
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let q: serde_json::Value =
        serde_json::from_str(&cli(&["query", "--json", "--mgt", &mgt0])).unwrap();
    let hosts = q["hosts"].as_array().expect("hosts");
    assert_eq!(hosts.len(), 3, "{q}");
    assert!(
        hosts.iter().all(|h| h["objects"].is_u64()),
        "a host's counters did not come back over the TLS admin call: {q}"
    );
    cli(&["set", "lock_timeout", "77", "--all", "--mgt", &mgt0]);
    let lock_timeout_at_1 = || {
        let st = client(&svrs[1], 10_000).stats().unwrap();
        st.params
            .iter()
            .find(|p| p.name == "lock_timeout")
            .map(|p| p.value.clone())
            .unwrap_or_default()
    };
    let give_up = Instant::now() + Duration::from_millis(SETTLE_TIMEOUT_MS);
    while lock_timeout_at_1() != "77" {
        assert!(
            Instant::now() < give_up,
            "set --all never reached the second host\n{}",
            store.outputs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    if let Some(capture) = capture {
        let bytes = capture.stop();
        assert!(!bytes.is_empty(), "the mgt_port capture saw nothing");
        for plain in [&b"memory_bytes"[..], b"lock_timeout", b"objects"] {
            assert!(
                !contains(&bytes, plain),
                "{:?} crossed mgt_port between hosts in plaintext",
                String::from_utf8_lossy(plain)
            );
        }
        println!(
            "mgt_port capture between hosts: {} bytes, no plaintext admin line",
            bytes.len()
        );
    }

    // SWIM and discovery datagrams are encrypted under the cluster key: a capture of
    // mgt_port's UDP (probes, acks and gossip naming every member) holds no host's address
    // in any datagram's payload, as a plaintext SWIM message would.
    let filter = format!("udp port {}", store.mgt_port);
    if let Some(capture) = Capture::start_filter(pki.dir.path(), "swim", &filter) {
        std::thread::sleep(Duration::from_millis(1_500));
        let payloads = udp_payloads(&capture.stop());
        assert!(
            payloads.len() >= 5,
            "only {} SWIM datagrams in 1.5 s",
            payloads.len()
        );
        for h in &store.hosts {
            let ip: std::net::Ipv4Addr = h.ip.parse().unwrap();
            for p in &payloads {
                assert!(
                    !contains(p, &ip.octets()),
                    "a SWIM datagram names host {} in plaintext: {p:02x?}",
                    h.ip
                );
            }
        }
        println!(
            "mgt_port UDP capture: {} datagrams, no host address in plaintext",
            payloads.len()
        );
    }

    // Failover over TLS links: load through the first host, kill -9 the second.
    let load = Load::start(&svrs[0], ns, &all, acked, 2);
    std::thread::sleep(Duration::from_millis(500));
    let victim = 1;
    let probes = keys_on(&m, ns, &all, &svrs[victim], 32);
    assert!(!probes.is_empty());
    let killed_at = Instant::now();
    store.hosts[victim].kill9();
    let quick = client(&svrs[0], 100);
    let qn = quick.namespace_unregistered(ns);
    let mut waiting = probes.clone();
    while !waiting.is_empty() {
        waiting.retain(|k| qn.read(k).is_err());
        assert!(
            killed_at.elapsed() < Duration::from_millis(SETTLE_TIMEOUT_MS),
            "{} keys of the killed host still unreadable after {SETTLE_TIMEOUT_MS} ms\n{}",
            waiting.len(),
            store.outputs()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    println!(
        "kill -9 of {}: its keys served again after {} ms",
        svrs[victim],
        killed_at.elapsed().as_millis()
    );
    std::thread::sleep(Duration::from_millis(300));
    let (acked, errors) = load.stop();
    assert!(
        errors.is_empty(),
        "writes failed beyond retries: {:?}",
        &errors[..errors.len().min(5)]
    );
    let survivors = vec![svrs[0].clone(), svrs[2].clone()];
    wait_settled(&c, &survivors, 1, || store.outputs());
    check_all(&c, ns, &acked);
    for h in &store.hosts {
        let log = h.log();
        assert!(!log.contains("panicked"), "{}", h.output());
        assert!(
            !log.contains("host-to-host connection refused"),
            "a store host refused another:\n{}",
            h.output()
        );
    }
}

/// What a TLS client with `client_cert` (a store certificate or not) gets from `int_port`:
/// Ok(bytes answered to a native Hello) or Err(why the connection failed).
fn hello_over_tls(
    addr: &str,
    ca: &Path,
    client_cert: Option<(&Path, &Path)>,
) -> Result<Vec<u8>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let config = match client_cert {
        Some((cert, key)) => {
            let certs: Vec<_> = CertificateDer::pem_file_iter(cert)
                .unwrap()
                .map(|c| c.unwrap())
                .collect();
            builder
                .with_client_auth_cert(certs, PrivateKeyDer::from_pem_file(key).unwrap())
                .unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    let ip = addr.split(':').next().unwrap();
    let name = ServerName::try_from(ip.to_owned()).unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    let mut hello = Vec::new();
    stategrid_proto::codec::encode_request(
        &mut hello,
        1,
        &Request::Hello {
            version: PROTOCOL_VERSION,
            client: "tls test".into(),
        },
        &[],
    );
    tls.write_all(&hello).map_err(|e| e.to_string())?;
    let mut got = vec![0u8; 4096];
    match tls.read(&mut got) {
        Ok(0) => Err("closed".into()),
        Ok(n) => Ok(got[..n].to_vec()),
        Err(e) => Err(e.to_string()),
    }
}

/// `int_port` with `tls_cluster 1`: a certificate of the store CA gets its Hello answered; a
/// certificate of another CA, no certificate, or plaintext get nothing, and the host logs why.
#[test]
fn int_port_refuses_plaintext_and_certificates_of_another_ca() {
    let pki = StorePki::new("stategrid store CA");
    let ip = "127.0.0.226";
    let ports = Ports::free();
    let mut host = Host::spawn(ip, &[], ports, &pki.sets(ip));
    let int = format!("{ip}:{}", ports.int);
    let deadline = Instant::now() + Duration::from_millis(START_TIMEOUT_MS);
    while TcpStream::connect(&int).is_err() {
        assert!(host.running(), "the host exited:\n{}", host.output());
        assert!(Instant::now() < deadline, "int_port never accepted");
        std::thread::sleep(Duration::from_millis(20));
    }

    // Plaintext: a native Hello frame is never answered.
    let mut s = TcpStream::connect(&int).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut hello = Vec::new();
    stategrid_proto::codec::encode_request(
        &mut hello,
        1,
        &Request::Hello {
            version: PROTOCOL_VERSION,
            client: "plaintext".into(),
        },
        &[],
    );
    s.write_all(&hello).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the host neither answered nor closed: {e}"),
        }
    }
    assert!(
        got.is_empty() || got[0] == 0x15,
        "plaintext got {} bytes that are not a TLS alert",
        got.len()
    );

    // Another CA's host certificate (for the same address), and no certificate at all.
    let other = StorePki::new("another store's CA");
    let (other_cert, other_key) = other.host(ip);
    let refused = hello_over_tls(&int, &pki.ca_file(), Some((&other_cert, &other_key)));
    assert!(refused.is_err(), "another CA's certificate was served");
    let refused = hello_over_tls(&int, &pki.ca_file(), None);
    assert!(refused.is_err(), "a peer without a certificate was served");

    // The control: the store's own certificate gets its Hello answered.
    let (cert, key) = pki.host(ip);
    let answer = hello_over_tls(&int, &pki.ca_file(), Some((&cert, &key)))
        .unwrap_or_else(|e| panic!("a store certificate was refused: {e}\n{}", host.output()));
    assert!(answer.len() >= 16, "a frame answered the Hello");
    let log = host.log();
    assert!(
        log.contains("host-to-host connection refused"),
        "the refusals are logged:\n{}",
        host.output()
    );
    assert!(host.running(), "{}", host.output());
}

/// `tls_cluster 1` without a certificate, or without the CA, refuses to start and names the fix.
#[test]
fn tls_cluster_without_certificate_or_ca_refuses_to_start() {
    let pki = StorePki::new("stategrid store CA");
    let (cert, key) = pki.host("127.0.0.1");
    let cases: [(Vec<(&str, String)>, &str); 2] = [
        (vec![("tls_cluster", "1".into())], "tls_cert_file"),
        (
            vec![
                ("tls_cluster", "1".into()),
                ("tls_cert_file", cert.display().to_string()),
                ("tls_key_file", key.display().to_string()),
            ],
            "tls_ca_file",
        ),
    ];
    for (sets, named) in cases {
        let mut cmd = Command::new(bin());
        cmd.arg("serve");
        for (n, v) in &sets {
            cmd.arg("--set").arg(format!("{n}={v}"));
        }
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "started with {sets:?}");
        assert!(
            err.contains(named) && err.contains("tls_cluster"),
            "the error names {named}: {err}"
        );
    }
}
