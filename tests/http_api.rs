//! The HTTP data REST API (docs/rest.md) against real servers with a real HTTP client (ureq):
//! every endpoint, its status codes and headers, on a one-host store of two shards (so keys
//! are forwarded between shards) and on a 3-host store (a key whose primary is another host).
//! Bad input (oversized headers and bodies, slow clients, malformed multipart, bad percent
//! encoding, keys over the limit) gets a clear 4xx, changes nothing, and others are served.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::http::send;
use common::store::{client, keys, keys_on, wait_settled};
use common::{TestServer, bin, free_port};

/// A one-host store of two shards with the data API on a free port.
fn server(extra: &[(&str, &str)]) -> (TestServer, String) {
    let port = free_port().to_string();
    let mut sets = vec![("rest_port", port.as_str()), ("shards", "2")];
    sets.extend_from_slice(extra);
    let s = TestServer::start(&sets);
    let base = format!("http://127.0.0.1:{port}");
    // The shards' HTTP listeners are bound before start; wait until one answers.
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(format!("127.0.0.1:{port}")).is_err() {
        assert!(Instant::now() < deadline, "rest_port never accepted");
        std::thread::sleep(Duration::from_millis(20));
    }
    (s, base)
}

#[test]
fn put_get_head_delete_with_etags_and_conditions() {
    let (_s, base) = server(&[]);
    let url = format!("{base}/data/sessions/user-42");

    let a = send("PUT", &url, &[], Some(b"hello world"));
    assert_eq!(a.status, 204, "{}", a.text());
    assert_eq!(a.header("etag"), Some("\"1\""));

    let a = send("GET", &url, &[], None);
    assert_eq!(a.status, 200);
    assert_eq!(a.body, b"hello world");
    assert_eq!(a.header("etag"), Some("\"1\""));
    assert_eq!(a.header("content-type"), Some("application/octet-stream"));

    let a = send("HEAD", &url, &[], None);
    assert_eq!(a.status, 200);
    assert_eq!(a.header("content-length"), Some("11"));
    assert_eq!(a.header("etag"), Some("\"1\""));
    assert!(a.body.is_empty());

    // If-None-Match on GET: 304 when it matches, the object otherwise.
    let a = send("GET", &url, &[("If-None-Match", "\"1\"")], None);
    assert_eq!(a.status, 304);
    assert_eq!(a.header("etag"), Some("\"1\""));
    let a = send("GET", &url, &[("If-None-Match", "\"9\", \"8\"")], None);
    assert_eq!(a.status, 200);

    // If-None-Match: * creates only.
    let a = send("PUT", &url, &[("If-None-Match", "*")], Some(b"x"));
    assert_eq!(a.status, 412);
    assert_eq!(a.json()["error"], "AlreadyExists");
    assert_eq!(
        send("GET", &url, &[], None).body,
        b"hello world",
        "unchanged"
    );
    let fresh = format!("{base}/data/sessions/fresh");
    let a = send("PUT", &fresh, &[("If-None-Match", "*")], Some(b"new"));
    assert_eq!(a.status, 201);

    // If-Match: * updates only.
    let missing = format!("{base}/data/sessions/missing");
    let a = send("PUT", &missing, &[("If-Match", "*")], Some(b"x"));
    assert_eq!(a.status, 404);
    assert_eq!(a.json()["error"], "NotFound");
    assert_eq!(send("GET", &missing, &[], None).status, 404);
    let a = send("PUT", &url, &[("If-Match", "*")], Some(b"v2"));
    assert_eq!(a.status, 204);
    assert_eq!(a.header("etag"), Some("\"2\""));

    // If-Match: "v": optimistic concurrency.
    let a = send("PUT", &url, &[("If-Match", "\"2\"")], Some(b"v3"));
    assert_eq!(a.status, 204);
    assert_eq!(a.header("etag"), Some("\"3\""));
    let a = send("PUT", &url, &[("If-Match", "\"2\"")], Some(b"stale"));
    assert_eq!(a.status, 412);
    assert_eq!(a.json()["error"], "VersionMismatch");
    assert_eq!(send("GET", &url, &[], None).body, b"v3");
    let a = send("PUT", &url, &[("If-Match", "seven")], Some(b"x"));
    assert_eq!(a.status, 400);
    assert_eq!(a.json()["error"], "BadETag");

    // Empty values are values.
    let empty = format!("{base}/data/sessions/empty");
    assert_eq!(send("PUT", &empty, &[], Some(b"")).status, 204);
    let a = send("GET", &empty, &[], None);
    assert_eq!((a.status, a.body.len()), (200, 0));

    let a = send("DELETE", &url, &[], None);
    assert_eq!(a.status, 204);
    let a = send("GET", &url, &[], None);
    assert_eq!(a.status, 404);
    assert_eq!(a.header("content-type"), Some("application/json"));
    assert!(a.json()["message"].as_str().unwrap().contains("not found"));
    assert_eq!(send("DELETE", &url, &[], None).status, 404);
    assert_eq!(send("HEAD", &url, &[], None).status, 404);
}

#[test]
fn values_written_over_http_are_the_native_clients_objects() {
    let (s, base) = server(&[]);
    // Many keys: both shards own some, so requests are forwarded between shards.
    let c = s.blocking_client();
    let ns = c.namespace("shared").unwrap();
    for i in 0..64 {
        let a = send(
            "PUT",
            &format!("{base}/data/shared/k{i}"),
            &[],
            Some(format!("value {i}").as_bytes()),
        );
        assert_eq!(a.status, 204);
        assert_eq!(
            ns.read(format!("k{i}")).unwrap().value,
            format!("value {i}").as_bytes()
        );
    }
    ns.put(
        "native",
        b"from the native client",
        stategrid_client::WriteOptions::default(),
    )
    .unwrap();
    let a = send("GET", &format!("{base}/data/shared/native"), &[], None);
    assert_eq!(a.body, b"from the native client");
    // Keys are bytes: percent-encoded bytes arrive as they are, '/' included.
    let a = send(
        "PUT",
        &format!("{base}/data/shared/a%2Fb%20c/d"),
        &[],
        Some(b"x"),
    );
    assert_eq!(a.status, 204);
    assert_eq!(ns.read("a/b c/d").unwrap().value, b"x");
}

#[test]
fn timeouts_by_soss_headers() {
    let (_s, base) = server(&[("sweep_interval_ms", "50")]);
    let url = format!("{base}/data/t/short");
    let a = send(
        "PUT",
        &url,
        &[("Soss-TimeoutSec", "1"), ("Soss-TimeoutType", "Absolute")],
        Some(b"x"),
    );
    assert_eq!(a.status, 204);
    let a = send("GET", &url, &[], None);
    assert_eq!(a.header("soss-timeoutsec"), Some("1"));
    assert_eq!(a.header("soss-timeouttype"), Some("Absolute"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while send("GET", &url, &[], None).status != 404 {
        assert!(Instant::now() < deadline, "the object never expired");
        std::thread::sleep(Duration::from_millis(100));
    }
    let sliding = format!("{base}/data/t/sliding");
    let a = send(
        "PUT",
        &sliding,
        &[("Soss-TimeoutSec", "600"), ("Soss-TimeoutType", "sliding")],
        Some(b"x"),
    );
    assert_eq!(a.status, 204);
    assert_eq!(
        send("HEAD", &sliding, &[], None).header("soss-timeouttype"),
        Some("Sliding")
    );
    for (sec, kind, error) in [
        ("1", "Forever", "BadTimeoutType"),
        ("4194304", "Absolute", "BadTimeout"),
        ("-1", "Absolute", "BadTimeout"),
    ] {
        let a = send(
            "PUT",
            &format!("{base}/data/t/bad"),
            &[("Soss-TimeoutSec", sec), ("Soss-TimeoutType", kind)],
            Some(b"x"),
        );
        assert_eq!(a.status, 400, "{sec} {kind}");
        assert_eq!(a.json()["error"], error);
    }
    assert_eq!(
        send("GET", &format!("{base}/data/t/bad"), &[], None).status,
        404
    );
}

#[test]
fn locks_over_http() {
    let (_s, base) = server(&[("lock_timeout", "30")]);
    let url = format!("{base}/data/sessions/cart");
    assert_eq!(send("PUT", &url, &[], Some(b"v1")).status, 204);

    let a = send("GET", &format!("{url}?lock=true"), &[], None);
    assert_eq!(a.status, 200);
    assert_eq!(a.body, b"v1");
    let token = a.header("soss-locktoken").expect("a lock token").to_owned();

    // Held: 423 with when it frees.
    let a = send("GET", &format!("{url}?lock=true"), &[], None);
    assert_eq!(a.status, 423);
    assert_eq!(a.json()["error"], "Locked");
    assert!(a.json()["retry_after_ms"].as_u64().unwrap() > 0);
    assert!(a.header("retry-after").unwrap().parse::<u64>().unwrap() >= 1);
    let a = send("DELETE", &url, &[], None);
    assert_eq!(
        a.status, 423,
        "a locked object is not removed without its token"
    );
    let a = send("PUT", &url, &[("If-Match", "*")], Some(b"intruder"));
    assert_eq!(a.status, 423);
    // A plain read still reads.
    assert_eq!(send("GET", &url, &[], None).body, b"v1");

    // Refresh, then update-and-unlock.
    let a = send(
        "POST",
        &format!("{url}?op=refresh"),
        &[("Soss-LockToken", &token)],
        None,
    );
    assert_eq!(a.status, 204);
    let a = send(
        "PUT",
        &format!("{url}?unlock=true"),
        &[("Soss-LockToken", &token)],
        Some(b"v2"),
    );
    assert_eq!(a.status, 204, "{}", a.text());
    assert_eq!(send("GET", &url, &[], None).body, b"v2");

    // Lock again, release without change; the old token no longer works.
    let a = send("GET", &format!("{url}?lock"), &[], None);
    let token2 = a.header("soss-locktoken").unwrap().to_owned();
    let a = send(
        "POST",
        &format!("{url}?op=unlock"),
        &[("Soss-LockToken", &token2)],
        None,
    );
    assert_eq!(a.status, 204);
    let a = send(
        "POST",
        &format!("{url}?op=unlock"),
        &[("Soss-LockToken", &token2)],
        None,
    );
    assert_eq!(a.status, 409);
    assert_eq!(a.json()["error"], "LockLost");
    let a = send("POST", &format!("{url}?op=unlock"), &[], None);
    assert_eq!(a.status, 400);
    assert_eq!(a.json()["error"], "LockTokenRequired");
    let a = send(
        "POST",
        &format!("{url}?op=explode"),
        &[("Soss-LockToken", "1")],
        None,
    );
    assert_eq!(a.status, 400);
    let a = send("PUT", &url, &[("Soss-LockToken", "abc")], Some(b"x"));
    assert_eq!(a.status, 400);
    assert_eq!(a.json()["error"], "BadLockToken");

    // Lock, then remove with the token.
    let a = send("GET", &format!("{url}?lock=1"), &[], None);
    let token3 = a.header("soss-locktoken").unwrap().to_owned();
    assert_eq!(
        send("DELETE", &url, &[("Soss-LockToken", &token3)], None).status,
        204
    );

    // A token on an object that is not locked (any more) is refused, and the refusal is one the
    // served OpenAPI document lists for the operation (schemathesis found it missing there).
    assert_eq!(send("PUT", &url, &[], Some(b"v3")).status, 204);
    let a = send("DELETE", &url, &[("Soss-LockToken", &token3)], None);
    assert_eq!(a.status, 409, "{}", a.text());
    assert_eq!(a.json()["error"], "LockLost");
    assert_eq!(send("GET", &url, &[], None).body, b"v3", "nothing removed");
    let spec = send("GET", &format!("{base}/openapi.json"), &[], None).json();
    for (method, status) in [("delete", "409"), ("delete", "423"), ("post", "409")] {
        assert!(
            spec["paths"]["/data/{ns}/{key}"][method]["responses"][status].is_object(),
            "the OpenAPI document does not list {status} for {method} /data/{{ns}}/{{key}}"
        );
    }
}

#[test]
fn namespaces_and_keys_listed_in_pages() {
    let (_s, base) = server(&[]);
    for i in 0..50 {
        assert_eq!(
            send(
                "PUT",
                &format!("{base}/data/listed/key-{i:02}"),
                &[],
                Some(b"x")
            )
            .status,
            204
        );
    }
    send("PUT", &format!("{base}/data/other/one"), &[], Some(b"x"));
    let a = send("GET", &format!("{base}/data/"), &[], None);
    assert_eq!(a.status, 200);
    let list = a.json()["namespaces"].as_array().unwrap().clone();
    let listed = list.iter().find(|n| n["name"] == "listed").expect("listed");
    assert_eq!(listed["objects"], 50);
    assert!(list.iter().any(|n| n["name"] == "other"));
    assert_eq!(send("GET", &format!("{base}/data"), &[], None).status, 200);

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let url = match &cursor {
            Some(c) => format!("{base}/data/listed?count=7&cursor={c}"),
            None => format!("{base}/data/listed?count=7"),
        };
        let a = send("GET", &url, &[], None);
        assert_eq!(a.status, 200, "{}", a.text());
        let j = a.json();
        let page = j["keys"].as_array().unwrap();
        assert!(page.len() <= 7);
        seen.extend(page.iter().map(|k| k.as_str().unwrap().to_owned()));
        pages += 1;
        match j["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
        assert!(pages < 100, "paging does not end");
    }
    seen.sort();
    let want: Vec<String> = (0..50).map(|i| format!("key-{i:02}")).collect();
    assert_eq!(seen, want);
    let a = send("GET", &format!("{base}/data/listed?count=0"), &[], None);
    assert_eq!(a.status, 400);
    let a = send("GET", &format!("{base}/data/listed?cursor=abc"), &[], None);
    assert_eq!(a.status, 400);
    let a = send("GET", &format!("{base}/data/listed?colour=blue"), &[], None);
    assert_eq!(a.status, 400);
    assert_eq!(a.json()["error"], "BadQuery");
}

fn multipart(boundary: &str, fields: &[(&str, Option<&str>, &[u8])]) -> Vec<u8> {
    let mut b = Vec::new();
    for (name, filename, value) in fields {
        write!(
            b,
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\""
        )
        .unwrap();
        if let Some(f) = filename {
            write!(
                b,
                "; filename=\"{f}\"\r\nContent-Type: application/octet-stream"
            )
            .unwrap();
        }
        b.extend_from_slice(b"\r\n\r\n");
        b.extend_from_slice(value);
        b.extend_from_slice(b"\r\n");
    }
    write!(b, "--{boundary}--\r\n").unwrap();
    b
}

#[test]
fn multipart_post_stores_an_object() {
    let (_s, base) = server(&[]);
    let ct = "multipart/form-data; boundary=XyZ";
    let body = multipart(
        "XyZ",
        &[
            ("Soss-Key", None, b"uploaded"),
            ("Soss-TimeoutSec", None, b"600"),
            ("Soss-TimeoutType", None, b"Sliding"),
            ("file", Some("cart.bin"), b"\x00\x01binary\xff"),
        ],
    );
    let a = send(
        "POST",
        &format!("{base}/data/forms"),
        &[("Content-Type", ct)],
        Some(&body),
    );
    assert_eq!(a.status, 201, "{}", a.text());
    assert_eq!(a.header("etag"), Some("\"1\""));
    let a = send("GET", &format!("{base}/data/forms/uploaded"), &[], None);
    assert_eq!(a.body, b"\x00\x01binary\xff");
    assert_eq!(a.header("soss-timeouttype"), Some("Sliding"));

    // Malformed: nothing stored.
    let a = send(
        "POST",
        &format!("{base}/data/forms"),
        &[("Content-Type", ct)],
        Some(b"--XyZ\r\nContent-Disposition: form-data; name=\"Soss-Key\"\r\n\r\nhalf"),
    );
    assert_eq!(a.status, 400, "{}", a.text());
    assert_eq!(a.json()["error"], "BadMultipart");
    assert_eq!(
        send("GET", &format!("{base}/data/forms/half"), &[], None).status,
        404
    );
    let no_key = multipart("XyZ", &[("file", Some("f"), b"v")]);
    let a = send(
        "POST",
        &format!("{base}/data/forms"),
        &[("Content-Type", ct)],
        Some(&no_key),
    );
    assert_eq!(a.status, 400);
    let a = send(
        "POST",
        &format!("{base}/data/forms"),
        &[("Content-Type", "text/plain")],
        Some(b"x"),
    );
    assert_eq!(a.status, 415);
    let bad_timeout = multipart(
        "XyZ",
        &[
            ("Soss-Key", None, b"bt"),
            ("Soss-TimeoutSec", None, b"soon"),
            ("v", None, b"x"),
        ],
    );
    let a = send(
        "POST",
        &format!("{base}/data/forms"),
        &[("Content-Type", ct)],
        Some(&bad_timeout),
    );
    assert_eq!(a.status, 400);
    assert_eq!(
        send("GET", &format!("{base}/data/forms/bt"), &[], None).status,
        404
    );
}

/// Sends raw bytes on a new connection and returns what the server answered before closing
/// (or within `wait`).
fn raw(port: &str, bytes: &[u8], wait: Duration) -> String {
    let mut s = TcpStream::connect(format!("127.0.0.1:{port}")).unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn bad_input_gets_a_clear_4xx_and_changes_nothing() {
    let (_s, base) = server(&[
        ("http_body_bytes_max", "4KiB"),
        ("key_bytes_max", "64"),
        ("http_read_timeout_ms", "500"),
    ]);
    let port = base.rsplit(':').next().unwrap().to_owned();
    let url = format!("{base}/data/bad/k");
    assert_eq!(send("PUT", &url, &[], Some(b"original")).status, 204);

    // A body over http_body_bytes_max.
    let a = send("PUT", &url, &[], Some(&vec![7u8; 5000]));
    assert_eq!(a.status, 413);
    let j = a.json();
    assert_eq!(j["error"], "BodyTooLarge");
    assert_eq!(j["limit"], 4096);
    assert_eq!(j["param"], "http_body_bytes_max");
    // The same, chunked (no Content-Length).
    let mut chunked =
        b"PUT /data/bad/k HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..5 {
        chunked.extend_from_slice(b"400\r\n");
        chunked.extend_from_slice(&[b'z'; 1024]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let out = raw(&port, &chunked, Duration::from_secs(5));
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");

    // Headers over http_header_bytes_max (16 KiB by default).
    let big = "a".repeat(20_000);
    let out = raw(
        &port,
        format!("GET /data/bad/k HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n").as_bytes(),
        Duration::from_secs(5),
    );
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");

    // Bad percent-encoding, non-UTF-8 namespace, a key over key_bytes_max.
    let a = send("PUT", &format!("{base}/data/bad/k%zz"), &[], Some(b"x"));
    assert_eq!(a.status, 400);
    assert_eq!(a.json()["error"], "BadPercentEncoding");
    let a = send("GET", &format!("{base}/data/b%FFad/k"), &[], None);
    assert_eq!(a.status, 400);
    assert_eq!(a.json()["error"], "BadNamespace");
    let long = "k".repeat(65);
    let a = send("PUT", &format!("{base}/data/bad/{long}"), &[], Some(b"x"));
    assert_eq!(a.status, 400);
    assert_eq!(a.json()["error"], "KeyTooLong");
    assert_eq!(a.json()["limit"], 64);
    let a = send("PATCH", &url, &[], Some(b"x"));
    assert_eq!(a.status, 405);
    assert!(a.header("allow").unwrap().contains("PUT"));
    let a = send("GET", &format!("{base}/nothing"), &[], None);
    assert_eq!(a.status, 404);
    let a = send(
        "PUT",
        &url,
        &[("If-None-Match", "*"), ("If-Match", "*")],
        Some(b"x"),
    );
    assert_eq!(a.status, 400);

    // A slow client: headers never finished. It is closed after http_read_timeout_ms, and
    // others are served meanwhile.
    let mut slow = TcpStream::connect(format!("127.0.0.1:{port}")).unwrap();
    slow.write_all(b"GET /data/bad/k HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    assert_eq!(send("GET", &url, &[], None).body, b"original");
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = Vec::new();
    let started = Instant::now();
    let _ = slow.read_to_end(&mut buf);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "a client that never finishes its headers is closed"
    );
    // A slow body: 408.
    let out = raw(
        &port,
        b"PUT /data/bad/k HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab",
        Duration::from_secs(10),
    );
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");

    // Nothing changed.
    let a = send("GET", &url, &[], None);
    assert_eq!((a.status, a.body.as_slice()), (200, &b"original"[..]));
    assert_eq!(a.header("etag"), Some("\"1\""));
}

#[test]
fn the_openapi_document_is_served() {
    let (_s, base) = server(&[]);
    let a = send("GET", &format!("{base}/openapi.json"), &[], None);
    assert_eq!(a.status, 200);
    assert_eq!(a.header("content-type"), Some("application/json"));
    let j = a.json();
    assert_eq!(j["openapi"], "3.1.0");
    assert!(j["paths"]["/data/{ns}/{key}"]["put"].is_object());
}

// ---- a 3-host store ----------------------------------------------------------------------------

struct Host {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn any_host_answers_for_any_key_in_a_three_host_store() {
    let (mgt, svr, int, rest) = (free_port(), free_port(), free_port(), free_port());
    let mgt_http = free_port();
    let ips: Vec<String> = [41, 42, 43]
        .iter()
        .map(|i| format!("127.0.0.{i}"))
        .collect();
    let _hosts: Vec<Host> = ips
        .iter()
        .map(|me| {
            let dir = tempfile::tempdir().unwrap();
            let peers: Vec<String> = ips
                .iter()
                .filter(|o| *o != me)
                .map(|o| format!("{o}:{mgt}"))
                .collect();
            let mut cmd = Command::new(bin());
            cmd.arg("serve");
            for (n, v) in [
                ("net_interface", me.clone()),
                ("svr_port", svr.to_string()),
                ("mgt_port", mgt.to_string()),
                ("int_port", int.to_string()),
                ("rest_port", rest.to_string()),
                ("mgt_http_port", mgt_http.to_string()),
                ("mgt_http_interface", me.clone()),
                ("use_multicast", "0".into()),
                ("hosts", peers.join(",")),
                ("shards", "1".into()),
                ("max_replicas", "1".into()),
                ("log_dir", dir.path().display().to_string()),
            ] {
                cmd.arg("--set").arg(format!("{n}={v}"));
            }
            cmd.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            Host {
                child: cmd.spawn().unwrap(),
                _dir: dir,
            }
        })
        .collect();
    let svrs: Vec<String> = ips.iter().map(|ip| format!("{ip}:{svr}")).collect();
    let c = client(&svrs[0], 10_000);
    let m = wait_settled(&c, &svrs, 1, String::new);
    let rests: Vec<String> = ips.iter().map(|ip| format!("http://{ip}:{rest}")).collect();
    // The management API of any host shows the 3 hosts and a primary for every partition.
    let a = send(
        "GET",
        &format!("http://{}:{mgt_http}/api/v1/map", ips[1]),
        &[],
        None,
    );
    assert_eq!(a.status, 200);
    let j = a.json();
    assert_eq!(j["hosts"].as_array().unwrap().len(), 3);
    let prim = j["primaries"].as_array().unwrap();
    assert_eq!(prim.len(), 1024);
    for h in 0..3u64 {
        assert!(
            prim.iter().any(|p| p.as_u64() == Some(h)),
            "host {h} is primary of nothing"
        );
    }

    // A key whose primary is host 2, written through host 0, read through host 1.
    let candidates = keys(2000, "cart");
    let key = keys_on(&m, "sessions", &candidates, &svrs[2], 1)[0].clone();
    let url = |h: usize| format!("{}/data/sessions/{key}", rests[h]);
    let a = send("PUT", &url(0), &[("If-None-Match", "*")], Some(b"remote"));
    assert_eq!(a.status, 201, "{}", a.text());
    for h in 0..3 {
        let a = send("GET", &url(h), &[], None);
        assert_eq!(
            (a.status, a.body.as_slice()),
            (200, &b"remote"[..]),
            "host {h}"
        );
        assert_eq!(a.header("etag"), Some("\"1\""));
        assert_eq!(
            send("HEAD", &url(h), &[], None).header("content-length"),
            Some("6")
        );
    }
    // The native client at the primary sees it.
    let primary = client(&svrs[2], 10_000);
    assert_eq!(
        primary
            .namespace("sessions")
            .unwrap()
            .read(&key)
            .unwrap()
            .value,
        b"remote"
    );
    // Conditions and locks through a host that is not the primary.
    let a = send("PUT", &url(1), &[("If-Match", "\"1\"")], Some(b"v2"));
    assert_eq!(a.status, 204);
    let a = send("PUT", &url(0), &[("If-Match", "\"1\"")], Some(b"v3"));
    assert_eq!(a.status, 412);
    let a = send("GET", &format!("{}?lock=true", url(1)), &[], None);
    assert_eq!(a.status, 200);
    let token = a.header("soss-locktoken").unwrap().to_owned();
    assert_eq!(
        send("GET", &format!("{}?lock=true", url(0)), &[], None).status,
        423
    );
    let a = send(
        "PUT",
        &format!("{}?unlock=true", url(0)),
        &[("Soss-LockToken", &token)],
        Some(b"v4"),
    );
    assert_eq!(a.status, 204);
    assert_eq!(send("DELETE", &url(1), &[], None).status, 204);
    for h in 0..3 {
        assert_eq!(send("GET", &url(h), &[], None).status, 404, "host {h}");
    }
}

/// The object's `Content-Type` is object metadata: written through one host, it is stored with
/// the value on the primary, replicated, and after the primary is killed (`kill -9`) the
/// promoted replica serves it through any surviving host. Native and Redis reads see the
/// value alone.
#[test]
fn the_content_type_survives_replication_and_failover() {
    let rest = free_port();
    let mut store = common::hosts::Store::start_with(3, 161, |ip| {
        let _ = ip;
        vec![("rest_port", rest.to_string())]
    });
    let svrs = store.svr_addrs();
    let c = client(&svrs[0], 10_000);
    let m = wait_settled(&c, &svrs, 1, || store.outputs());
    let rests: Vec<String> = store
        .hosts
        .iter()
        .map(|h| format!("http://{}:{rest}", h.ip))
        .collect();
    // Keys whose primary is host 2; written through host 0.
    let candidates = keys(4000, "typed");
    let on2 = keys_on(&m, "docs", &candidates, &svrs[2], 3);
    let url = |h: usize, k: &str| format!("{}/data/docs/{k}", rests[h]);
    let json = "application/json; charset=utf-8";
    let a = send(
        "PUT",
        &url(0, on2[0]),
        &[("Content-Type", json)],
        Some(b"{\"a\":1}"),
    );
    assert_eq!(a.status, 204, "{}", a.text());
    // A form post's part type is stored too.
    let mut body = multipart("B0undary", &[("Soss-Key", None, on2[1].as_bytes())]);
    body.truncate(body.len() - b"--B0undary--\r\n".len());
    body.extend_from_slice(b"--B0undary\r\nContent-Disposition: form-data; name=\"file\"; filename=\"p.png\"\r\nContent-Type: image/png\r\n\r\n\x89PNG\r\n--B0undary--\r\n");
    let a = send(
        "POST",
        &format!("{}/data/docs", rests[0]),
        &[("Content-Type", "multipart/form-data; boundary=B0undary")],
        Some(&body),
    );
    assert_eq!(a.status, 201, "{}", a.text());
    // Written without one: the default is served.
    assert_eq!(send("PUT", &url(0, on2[2]), &[], Some(b"raw")).status, 204);
    for h in 0..3 {
        let a = send("GET", &url(h, on2[0]), &[], None);
        assert_eq!((a.status, a.body.as_slice()), (200, &b"{\"a\":1}"[..]));
        assert_eq!(a.header("content-type"), Some(json), "host {h}");
        let a = send("HEAD", &url(h, on2[0]), &[], None);
        assert_eq!(a.header("content-type"), Some(json), "HEAD via host {h}");
        assert_eq!(a.header("content-length"), Some("7"));
        let a = send("GET", &url(h, on2[1]), &[], None);
        assert_eq!(a.header("content-type"), Some("image/png"), "host {h}");
        let a = send("GET", &url(h, on2[2]), &[], None);
        assert_eq!(a.header("content-type"), Some("application/octet-stream"));
    }
    // Keys are listed store-wide, in pages, through any host (a cursor walks every host).
    let mut listed = Vec::new();
    let mut cursor = String::new();
    loop {
        let a = send(
            "GET",
            &format!("{}/data/docs?count=1{cursor}", rests[1]),
            &[],
            None,
        );
        assert_eq!(a.status, 200, "{}", a.text());
        let j = a.json();
        listed.extend(
            j["keys"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k.as_str().unwrap().to_owned()),
        );
        match j["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    listed.sort();
    let mut want: Vec<String> = on2.iter().map(|k| k.to_string()).collect();
    want.sort();
    assert_eq!(
        listed, want,
        "every key once, listed through a host that is not their primary"
    );
    // The native client reads the value alone (one read and a multi-read).
    let ns = c.namespace("docs").unwrap();
    assert_eq!(ns.read(on2[0]).unwrap().value, b"{\"a\":1}");
    let many = ns
        .multi_read(&[on2[0].as_str(), on2[1].as_str(), on2[2].as_str()])
        .unwrap();
    let values: Vec<Vec<u8>> = many.into_iter().map(|r| r.unwrap().value).collect();
    assert_eq!(values, [&b"{\"a\":1}"[..], b"\x89PNG", b"raw"]);

    // kill -9 the primary: a surviving host serves the promoted replica, type included.
    store.hosts[2].kill9();
    let deadline = Instant::now() + Duration::from_secs(60);
    let a = loop {
        let a = send("GET", &url(1, on2[0]), &[], None);
        if a.status == 200 {
            break a;
        }
        assert!(
            Instant::now() < deadline,
            "no answer after failover: {} {}\n{}",
            a.status,
            a.text(),
            store.outputs()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(a.body, b"{\"a\":1}");
    assert_eq!(a.header("content-type"), Some(json));
    for h in 0..2 {
        let a = send("GET", &url(h, on2[1]), &[], None);
        assert_eq!(a.header("content-type"), Some("image/png"), "host {h}");
    }
    // After the store re-created the lost copies (a migration stream to the new replicas),
    // the type is still there; an update without Content-Type clears it (documented).
    let survivors = svrs[..2].to_vec();
    wait_settled(&c, &survivors, 1, || store.outputs());
    let a = send("GET", &url(0, on2[0]), &[], None);
    assert_eq!(a.header("content-type"), Some(json));
    assert_eq!(send("PUT", &url(1, on2[0]), &[], Some(b"{}")).status, 204);
    let a = send("GET", &url(0, on2[0]), &[], None);
    assert_eq!(a.header("content-type"), Some("application/octet-stream"));
}
