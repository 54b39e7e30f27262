//! The client library against a real server process: every `Namespace` call, key paging,
//! multi-read / bulk-put trailers, and many threads sharing one pipelined connection.

mod common;

use common::TestServer;
use stategrid_client::blocking::Client;
use stategrid_client::{
    ClientConfig, ErrorCode, KEY_PAGE_LIMIT, Timeout, TimeoutKind, WriteOptions,
};

fn client(server: &TestServer, connections: usize) -> Client {
    let config = ClientConfig {
        connections,
        ..ClientConfig::default()
    };
    Client::connect(&server.host(), config).expect("connect")
}

#[test]
fn every_namespace_call() {
    let server = TestServer::start(&[]);
    let c = client(&server, 2);
    assert!(c.server_info().partitions > 0);
    let ns = c.namespace("api").unwrap();

    let v1 = ns.add("k", b"one", WriteOptions::new()).unwrap();
    assert!(
        ns.add("k", b"again", WriteOptions::new())
            .unwrap_err()
            .is_already_exists()
    );
    let v2 = ns.put("k", b"two", WriteOptions::sliding(600)).unwrap();
    assert!(v2 > v1);
    let read = ns.read("k").unwrap();
    assert_eq!(read.value, b"two");
    assert_eq!(read.meta.version, v2);
    assert_eq!(read.meta.timeout.kind, TimeoutKind::Sliding);

    let v3 = ns.update("k", b"three", WriteOptions::new()).unwrap();
    assert!(
        ns.update("missing", b"x", WriteOptions::new())
            .unwrap_err()
            .is_not_found()
    );
    let err = ns
        .update_if_version("k", b"stale", WriteOptions::new(), v2)
        .unwrap_err();
    assert!(err.is_version_mismatch());
    assert_eq!(err.stored_version(), Some(v3));
    ns.update_if_version("k", b"four", WriteOptions::new(), v3)
        .unwrap();

    // Locks: take, refresh, update keeping the lock, update-and-unlock.
    let locked = ns.read_and_lock("k").unwrap();
    assert_eq!(locked.value, b"four");
    let err = ns.read_and_lock("k").unwrap_err();
    assert!(err.is_locked());
    assert!(err.lock_expires_in_ms().is_some());
    assert!(
        ns.update("k", b"no", WriteOptions::new())
            .unwrap_err()
            .is_locked()
    );
    ns.refresh_lock("k", locked.lock_token).unwrap();
    ns.update_with_lock("k", b"five", WriteOptions::new(), locked.lock_token)
        .unwrap();
    assert!(
        ns.meta("k").unwrap().lock.is_some(),
        "update_with_lock keeps the lock"
    );
    ns.update_and_unlock("k", b"six", WriteOptions::new(), locked.lock_token)
        .unwrap();
    assert!(ns.meta("k").unwrap().lock.is_none());
    assert!(
        ns.unlock("k", locked.lock_token)
            .unwrap_err()
            .is_lock_lost()
    );

    // unlock, remove_with_lock, remove_forced.
    let l = ns.read_and_lock("k").unwrap();
    ns.unlock("k", l.lock_token).unwrap();
    let l = ns.read_and_lock("k").unwrap();
    assert!(ns.remove("k").unwrap_err().is_locked());
    ns.remove_with_lock("k", l.lock_token).unwrap();
    assert!(ns.read("k").unwrap_err().is_not_found());
    ns.put("k", b"x", WriteOptions::new()).unwrap();
    ns.read_and_lock("k").unwrap();
    ns.remove_forced("k").unwrap();
    assert!(ns.remove("k").unwrap_err().is_not_found());

    // touch and meta.
    ns.put("t", b"", WriteOptions::new().not_evictable())
        .unwrap();
    ns.touch("t", None).unwrap();
    ns.touch(
        "t",
        Some(Timeout {
            timeout_s: 90,
            kind: TimeoutKind::ResetOnUpdate,
        }),
    )
    .unwrap();
    let meta = ns.meta("t").unwrap();
    assert_eq!(meta.value_bytes, 0);
    assert!(!meta.evictable);
    assert_eq!(meta.timeout.timeout_s, 90);
    assert_eq!(meta.timeout.kind, TimeoutKind::ResetOnUpdate);
    assert!(meta.expires_in_ms.is_some());

    assert_eq!(ns.count().unwrap(), 1);
    let listed = c.namespaces().unwrap();
    assert!(listed.iter().any(|n| n.name == "api" && n.id == ns.id()));
    assert!(c.stats().unwrap().objects >= 1);
    ns.clear().unwrap();
    assert_eq!(ns.count().unwrap(), 0);
}

#[test]
fn bulk_put_multi_read_and_key_paging() {
    let server = TestServer::start(&[]);
    let c = client(&server, 1);
    let ns = c.namespace("bulk").unwrap();
    // More keys than one page holds, written in batches of varied value sizes.
    let total = KEY_PAGE_LIMIT as usize * 2 + 37;
    let items: Vec<(String, Vec<u8>)> = (0..total)
        .map(|i| (format!("key-{i:05}"), vec![(i % 251) as u8; i % 50]))
        .collect();
    for batch in items.chunks(200) {
        let results = ns.bulk_put(batch, WriteOptions::new()).unwrap();
        assert_eq!(results.len(), batch.len());
        assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    }
    assert_eq!(ns.count().unwrap(), total as u64);

    let mut keys: Vec<Vec<u8>> = ns.keys().unwrap();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), total, "every key listed once");

    let page = ns.list_keys(0, 10).unwrap();
    assert!(page.keys.len() <= 10);

    let wanted = ["key-00003", "nope", "key-00000", "key-00049", "key-00100"];
    let got = ns.multi_read(&wanted).unwrap();
    assert_eq!(got.len(), wanted.len());
    assert_eq!(got[0].as_ref().unwrap().value, vec![3u8; 3]);
    assert_eq!(got[1].as_ref().unwrap_err().code, ErrorCode::NotFound);
    assert_eq!(got[2].as_ref().unwrap().value, Vec::<u8>::new());
    assert_eq!(got[3].as_ref().unwrap().value, vec![49u8; 49]);
    assert_eq!(got[4].as_ref().unwrap().value, vec![100u8; 0]);
}

#[test]
fn threads_share_one_pipelined_connection() {
    let server = TestServer::start(&[]);
    let c = client(&server, 1);
    let ns = c.namespace("shared").unwrap();
    std::thread::scope(|s| {
        for t in 0..8 {
            let ns = ns.clone();
            s.spawn(move || {
                for i in 0..200 {
                    let key = format!("t{t}-{i}");
                    let value = format!("value {t} {i}");
                    ns.put(&key, value.as_bytes(), WriteOptions::new()).unwrap();
                    assert_eq!(ns.read(&key).unwrap().value, value.as_bytes());
                }
            });
        }
    });
    assert_eq!(ns.count().unwrap(), 1600);
}

#[test]
fn a_value_over_the_limit_is_refused_typed() {
    let server = TestServer::start(&[("object_bytes_max", "1024")]);
    let c = client(&server, 1);
    let ns = c.namespace("big").unwrap();
    let err = ns
        .put("k", vec![0u8; 4096], WriteOptions::new())
        .unwrap_err();
    assert!(err.is_object_too_large(), "{err}");
    assert_eq!(err.reply().unwrap().detail, 1024);
    // The connection is still good.
    ns.put("k", vec![0u8; 1000], WriteOptions::new()).unwrap();
}
