//! The server as applications see it: real `stategrid serve` processes on loopback, driven
//! through the client library over real sockets.
//!
//! Every operation with its typed results and errors, the session-provider lock cycle and lock
//! contention across shards, lock expiry, the three timeout kinds, LRU eviction and
//! `LowMemory`, forwarding between shards under pipelining, and the size limits.
//!
//! Each test starts its own server (tests run in parallel; the harness picks free ports).
//! Timing: sleeps only let a timeout pass, with margins of at least 200 ms on both sides of
//! each deadline. Where a test checks a remaining time the server reports (`expires_in_ms`,
//! a `Locked` detail), it bounds it by what the test measured around the requests, so the
//! assertion is exact however slow the machine is.
//!
//! The async client needs a tokio runtime, and tokio is not a dependency of this package, so
//! concurrency comes from threads: each thread either owns a blocking client (separate
//! connections, spread over the shards by the kernel) or shares one blocking client with a
//! single connection (its current-thread runtime accepts `block_on` from several threads at
//! once, so their requests are pipelined on that connection).

mod common;

use std::collections::{BTreeSet, HashSet};
use std::fmt::Debug;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::TestServer;
use stategrid_client::blocking::{Client, Namespace};
use stategrid_client::{
    ClientConfig, Error, ErrorCode, ErrorReply, Stats, TIMEOUT_S_MAX, Timeout, TimeoutKind,
    WriteOptions,
};
use stategrid_proto::{key_hash, partition_of};

// ---- helpers ----------------------------------------------------------------------------------

/// How far the server's millisecond clock (`SystemTime`, read once per batch) may sit from
/// this process's measurements of the same instants: truncation to whole milliseconds.
const CLOCK_SLACK_MS: u64 = 3;

/// Starts a server: the harness retries on new ports after a clash and proves the server
/// answering is its own (see `TestServer::start`).
fn start(sets: &[(&str, &str)]) -> TestServer {
    TestServer::start(sets)
}

/// A blocking client with `connections` connections in its pool, NOT shard-aware: these
/// tests check what the server does with requests that land on any shard (forwarding,
/// ordering, per-item answers across shards, limits on whole multi-key requests); the
/// shard-aware client, which splits and steers them, is tested in tests/shard_aware.rs.
fn connect(server: &TestServer, connections: usize) -> Client {
    let config = ClientConfig {
        connections,
        shard_aware: false,
        ..ClientConfig::default()
    };
    Client::connect(&server.host(), config).expect("connect")
}

/// The server's refusal of a call; panics if the call succeeded or failed otherwise.
#[track_caller]
fn refusal<T: Debug>(result: stategrid_client::Result<T>) -> ErrorReply {
    match result {
        Ok(v) => panic!("expected the server to refuse, got Ok({v:?})"),
        Err(Error::Server(reply)) => reply,
        Err(e) => panic!("expected a server refusal, got {e}"),
    }
}

/// Asserts the call was refused with `code`; returns the refusal's detail.
#[track_caller]
fn refused<T: Debug>(result: stategrid_client::Result<T>, code: ErrorCode) -> u64 {
    let reply = refusal(result);
    assert_eq!(reply.code, code, "{reply}");
    reply.detail
}

/// The shard of `shards` that owns `key` of `ns` (what the server routes by).
fn owner(ns: &Namespace, key: &[u8], shards: usize) -> usize {
    stategrid::server::owner_shard(partition_of(key_hash(ns.id(), key)), shards)
}

/// `count` keys `{prefix}-{i}` that shard `shard` of `shards` owns.
fn keys_owned_by(
    ns: &Namespace,
    prefix: &str,
    shard: usize,
    shards: usize,
    count: usize,
) -> Vec<String> {
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .filter(|k| owner(ns, k.as_bytes(), shards) == shard)
        .take(count)
        .collect()
}

/// A value of `len` bytes that differs for every `seed`.
fn value_of(seed: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|j| (seed.wrapping_mul(31).wrapping_add(j * 7) % 251) as u8)
        .collect()
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

fn ms_between(from: Instant, to: Instant) -> u64 {
    to.saturating_duration_since(from).as_millis() as u64
}

fn sleep_until(deadline: Instant) {
    let now = Instant::now();
    if deadline > now {
        thread::sleep(deadline - now);
    }
}

/// Asserts a remaining time the server reported (`expires_in_ms`, a `Locked` detail) for a
/// deadline of `total_ms` after an event the test bracketed between `event_sent` and
/// `event_done`, reported by a request the test bracketed between `seen_sent` and
/// `seen_done`. The server saw the event in the first bracket and answered in the second.
#[track_caller]
fn assert_remaining(
    remaining_ms: u64,
    total_ms: u64,
    event: (Instant, Instant),
    seen: (Instant, Instant),
) {
    let (event_sent, event_done) = event;
    let (seen_sent, seen_done) = seen;
    let most = total_ms.saturating_sub(ms_between(event_done, seen_sent)) + CLOCK_SLACK_MS;
    let least = total_ms
        .saturating_sub(ms_between(event_sent, seen_done))
        .saturating_sub(CLOCK_SLACK_MS);
    assert!(
        (least..=most).contains(&remaining_ms),
        "remaining {remaining_ms} ms, expected {least}..={most} ms"
    );
}

fn stats(client: &Client) -> Stats {
    client.stats().expect("stats")
}

// ---- namespaces -------------------------------------------------------------------------------

#[test]
fn namespaces_open_list_count_and_clear() {
    let server = start(&[("shards", "2"), ("namespace_bytes_max", "40")]);
    let client = server.blocking_client();
    let carts = client.namespace("carts").unwrap();
    let sessions = client.namespace("sessions").unwrap();
    assert_eq!(
        carts.id(),
        stategrid_proto::hash::namespace_id("carts"),
        "a namespace's id is derived from its name"
    );
    assert_ne!(carts.id(), sessions.id());
    assert_eq!(client.namespace("carts").unwrap().id(), carts.id());
    assert_eq!(carts.name(), "carts");

    // The same key in two namespaces names two objects.
    carts.put("k", "cart", WriteOptions::new()).unwrap();
    sessions.put("k", "session", WriteOptions::new()).unwrap();
    for i in 0..9 {
        carts
            .put(format!("c{i}"), "x", WriteOptions::new())
            .unwrap();
    }
    for i in 0..4 {
        sessions
            .put(format!("s{i}"), "y", WriteOptions::new())
            .unwrap();
    }
    assert_eq!(carts.read("k").unwrap().value, b"cart");
    assert_eq!(sessions.read("k").unwrap().value, b"session");
    assert_eq!(carts.count().unwrap(), 10);
    assert_eq!(sessions.count().unwrap(), 5);

    let listed: Vec<(String, u32, u64)> = client
        .namespaces()
        .unwrap()
        .into_iter()
        .map(|n| (n.name, n.id, n.objects))
        .collect();
    assert_eq!(
        listed,
        vec![
            ("carts".to_owned(), carts.id(), 10),
            ("sessions".to_owned(), sessions.id(), 5)
        ]
    );

    // Clearing removes every object of one namespace, locked ones included, and no other.
    let locked = carts.read_and_lock("c0").unwrap();
    assert_ne!(locked.lock_token, 0);
    carts.clear().unwrap();
    assert_eq!(carts.count().unwrap(), 0);
    assert_eq!(sessions.count().unwrap(), 5);
    refused(carts.read("k"), ErrorCode::NotFound);
    refused(carts.read("c0"), ErrorCode::NotFound);
    assert_eq!(sessions.read("k").unwrap().value, b"session");
    assert_eq!(carts.keys().unwrap(), Vec::<Vec<u8>>::new());
    // The name stays known with no objects.
    let listed: Vec<(String, u64)> = client
        .namespaces()
        .unwrap()
        .into_iter()
        .map(|n| (n.name, n.objects))
        .collect();
    assert_eq!(
        listed,
        vec![("carts".to_owned(), 0), ("sessions".to_owned(), 5)]
    );
    assert_eq!(stats(&client).objects, 5);

    // Names: 1..=namespace_bytes_max bytes.
    let longest = "n".repeat(40);
    client.namespace(&longest).unwrap();
    let detail = refused(client.namespace(&"n".repeat(41)), ErrorCode::NameTooLong);
    assert_eq!(detail, 40, "the detail names the limit");
    refused(client.namespace(""), ErrorCode::NameTooLong);
    // The refusals did not break the connection.
    assert_eq!(sessions.count().unwrap(), 5);
}

// ---- single-object operations -----------------------------------------------------------------

#[test]
fn add_put_update_read_and_versions() {
    let server = start(&[("shards", "2")]);
    let client = server.blocking_client();
    let ns = client.namespace("objects").unwrap();

    // add creates at version 1; a second add changes nothing.
    let before_ms = unix_ms();
    assert_eq!(ns.add("k", "v1", WriteOptions::new()).unwrap(), 1);
    let after_ms = unix_ms();
    assert_eq!(
        refused(
            ns.add("k", "other", WriteOptions::new()),
            ErrorCode::AlreadyExists
        ),
        0
    );
    let read = ns.read("k").unwrap();
    assert_eq!(read.value, b"v1");
    let m = read.meta;
    assert_eq!(m.value_bytes, 2);
    assert_eq!(m.version, 1);
    assert!(
        (before_ms..=after_ms).contains(&m.created_ms),
        "created_ms {} outside {before_ms}..={after_ms}",
        m.created_ms
    );
    assert_eq!(m.updated_ms, m.created_ms);
    assert_eq!(
        m.timeout,
        Timeout {
            timeout_s: 0,
            kind: TimeoutKind::Absolute
        }
    );
    assert_eq!(m.expires_in_ms, None, "no timeout given: never expires");
    assert_eq!(m.lock, None);
    assert!(m.evictable);
    assert_eq!(ns.meta("k").unwrap(), m, "meta is the read's metadata");

    // put replaces (and creates when missing).
    thread::sleep(Duration::from_millis(5));
    assert_eq!(ns.put("k", "value two", WriteOptions::new()).unwrap(), 2);
    let m2 = ns.meta("k").unwrap();
    assert_eq!((m2.version, m2.value_bytes), (2, 9));
    assert_eq!(m2.created_ms, m.created_ms);
    assert!(m2.updated_ms > m.updated_ms);
    assert_eq!(ns.put("p", "new", WriteOptions::new()).unwrap(), 1);
    assert_eq!(ns.read("p").unwrap().value, b"new");

    // update needs the object.
    refused(
        ns.update("missing", "x", WriteOptions::new()),
        ErrorCode::NotFound,
    );
    refused(ns.read("missing"), ErrorCode::NotFound);
    refused(ns.meta("missing"), ErrorCode::NotFound);
    assert_eq!(ns.update("k", "v3", WriteOptions::new()).unwrap(), 3);

    // update_if_version: the stored version in the refusal; nothing changed.
    let e = ns
        .update_if_version("k", "v4", WriteOptions::new(), 2)
        .unwrap_err();
    assert!(e.is_version_mismatch() && e.is_conflict(), "{e}");
    assert_eq!(e.stored_version(), Some(3));
    let read = ns.read("k").unwrap();
    assert_eq!((read.value.as_slice(), read.meta.version), (&b"v3"[..], 3));
    assert_eq!(
        ns.update_if_version("k", "v4", WriteOptions::new(), 3)
            .unwrap(),
        4
    );
    refused(
        ns.update_if_version("missing", "x", WriteOptions::new(), 1),
        ErrorCode::NotFound,
    );

    // Every write sets evictability.
    ns.put("k", "pinned", WriteOptions::new().not_evictable())
        .unwrap();
    assert!(!ns.meta("k").unwrap().evictable);
    assert_eq!(ns.update("k", "free", WriteOptions::new()).unwrap(), 6);
    assert!(ns.meta("k").unwrap().evictable);

    // Reads and meta do not bump the version.
    ns.read("k").unwrap();
    ns.meta("k").unwrap();
    assert_eq!(ns.meta("k").unwrap().version, 6);

    // An empty value is a value.
    assert_eq!(ns.put("empty", "", WriteOptions::new()).unwrap(), 1);
    let read = ns.read("empty").unwrap();
    assert_eq!((read.value.len(), read.meta.value_bytes), (0, 0));

    // A timeout above the maximum is refused and changes nothing.
    let too_long = WriteOptions::absolute(TIMEOUT_S_MAX + 1);
    assert_eq!(
        refused(ns.put("k", "x", too_long), ErrorCode::BadTimeout),
        u64::from(TIMEOUT_S_MAX)
    );
    assert_eq!(ns.meta("k").unwrap().version, 6);
    ns.put("max", "x", WriteOptions::absolute(TIMEOUT_S_MAX))
        .unwrap();

    // remove, then a re-created object starts again at version 1.
    ns.remove("k").unwrap();
    refused(ns.read("k"), ErrorCode::NotFound);
    refused(ns.remove("k"), ErrorCode::NotFound);
    assert_eq!(ns.add("k", "again", WriteOptions::new()).unwrap(), 1);
    assert_eq!(ns.count().unwrap(), 4);
}

#[test]
fn touch_sets_or_restarts_the_timeout_and_meta_changes_nothing() {
    let server = start(&[("shards", "2")]);
    let client = server.blocking_client();
    let ns = client.namespace("touch").unwrap();
    ns.put("k", "v", WriteOptions::new()).unwrap();

    // Restarting bumps nothing; setting a timeout is a change and bumps the version.
    ns.touch("k", None).unwrap();
    assert_eq!(ns.meta("k").unwrap().version, 1);
    let sent = Instant::now();
    let sliding = Timeout {
        timeout_s: 600,
        kind: TimeoutKind::Sliding,
    };
    ns.touch("k", Some(sliding)).unwrap();
    let done = Instant::now();
    let m = ns.meta("k").unwrap();
    let seen = (done, Instant::now());
    assert_eq!((m.version, m.timeout), (2, sliding));
    assert_remaining(m.expires_in_ms.unwrap(), 600_000, (sent, done), seen);
    assert_eq!(ns.meta("k").unwrap().version, 2, "meta changes nothing");

    // Back to never expiring.
    ns.touch(
        "k",
        Some(Timeout {
            timeout_s: 0,
            kind: TimeoutKind::Absolute,
        }),
    )
    .unwrap();
    let m = ns.meta("k").unwrap();
    assert_eq!((m.version, m.expires_in_ms), (3, None));

    // A write without a timeout keeps the object's timeout; with one, replaces it.
    ns.put("t", "v", WriteOptions::reset_on_update(300))
        .unwrap();
    ns.put("t", "v2", WriteOptions::new()).unwrap();
    assert_eq!(
        ns.meta("t").unwrap().timeout,
        Timeout {
            timeout_s: 300,
            kind: TimeoutKind::ResetOnUpdate
        }
    );
    ns.update("t", "v3", WriteOptions::new().never_expires())
        .unwrap();
    let m = ns.meta("t").unwrap();
    assert_eq!((m.timeout.timeout_s, m.expires_in_ms), (0, None));

    refused(ns.touch("missing", None), ErrorCode::NotFound);
    let bad = Timeout {
        timeout_s: TIMEOUT_S_MAX + 1,
        kind: TimeoutKind::Sliding,
    };
    refused(ns.touch("k", Some(bad)), ErrorCode::BadTimeout);
    assert_eq!(ns.meta("k").unwrap().version, 3);
}

#[test]
fn locks_tokens_and_who_may_change_a_locked_object() {
    let server = start(&[("shards", "2")]);
    let client = server.blocking_client();
    let other = connect(&server, 1);
    let ns = client.namespace("locks").unwrap();
    let ns2 = other.namespace("locks").unwrap();
    assert_eq!(ns.put("s", "v", WriteOptions::new()).unwrap(), 1);

    // read-and-lock returns the value and a token, and bumps the version.
    let sent = Instant::now();
    let l = ns.read_and_lock("s").unwrap();
    let locked_at = (sent, Instant::now());
    assert_eq!(l.value, b"v");
    assert_eq!(l.meta.version, 2);
    assert_ne!(l.lock_token, 0);
    let m = ns.meta("s").unwrap();
    assert_eq!(m.version, 2);
    assert!(m.lock.is_some());

    // Another holder is refused with the lock's remaining time (lock_timeout = 90 s).
    for attempt in [&ns, &ns2] {
        let seen_sent = Instant::now();
        let e = attempt.read_and_lock("s").unwrap_err();
        let seen = (seen_sent, Instant::now());
        assert!(e.is_locked() && e.is_conflict() && e.is_transient(), "{e}");
        assert_remaining(e.lock_expires_in_ms().unwrap(), 90_000, locked_at, seen);
    }
    // read and meta ignore the lock.
    assert_eq!(ns2.read("s").unwrap().value, b"v");

    // Without the token: no update, no versioned update, no remove.
    refused(ns2.update("s", "x", WriteOptions::new()), ErrorCode::Locked);
    refused(
        ns2.update_if_version("s", "x", WriteOptions::new(), 2),
        ErrorCode::Locked,
    );
    refused(ns2.remove("s"), ErrorCode::Locked);
    let wrong = l.lock_token ^ 1;
    refused(ns2.remove_with_lock("s", wrong), ErrorCode::Locked);
    refused(ns2.unlock("s", wrong), ErrorCode::Locked);
    refused(ns2.refresh_lock("s", wrong), ErrorCode::Locked);
    refused(
        ns2.update_and_unlock("s", "x", WriteOptions::new(), wrong),
        ErrorCode::Locked,
    );
    let m = ns.meta("s").unwrap();
    assert_eq!(m.version, 2, "refused requests changed nothing");

    // The holder updates and keeps the lock; refresh_lock restarts it without a bump.
    assert_eq!(
        ns.update_with_lock("s", "v3", WriteOptions::new(), l.lock_token)
            .unwrap(),
        3
    );
    assert!(ns.meta("s").unwrap().lock.is_some());
    refused(ns2.read_and_lock("s"), ErrorCode::Locked);
    ns.refresh_lock("s", l.lock_token).unwrap();
    assert_eq!(ns.meta("s").unwrap().version, 3);
    // touch ignores locks (restarting a timeout is not a change of the object).
    ns2.touch("s", None).unwrap();

    // update-and-unlock: one bump for both.
    assert_eq!(
        ns.update_and_unlock("s", "v4", WriteOptions::new(), l.lock_token)
            .unwrap(),
        4
    );
    let m = ns.meta("s").unwrap();
    assert_eq!((m.version, m.lock), (4, None));

    // A released token is stale: LockLost for every use, and nothing changes.
    let stale = l.lock_token;
    let e = ns.unlock("s", stale).unwrap_err();
    assert!(
        e.is_lock_lost() && e.is_conflict() && !e.is_transient(),
        "{e}"
    );
    refused(ns.refresh_lock("s", stale), ErrorCode::LockLost);
    refused(
        ns.update_and_unlock("s", "x", WriteOptions::new(), stale),
        ErrorCode::LockLost,
    );
    refused(
        ns.update_with_lock("s", "x", WriteOptions::new(), stale),
        ErrorCode::LockLost,
    );
    refused(ns.remove_with_lock("s", stale), ErrorCode::LockLost);
    let read = ns.read("s").unwrap();
    assert_eq!((read.value.as_slice(), read.meta.version), (&b"v4"[..], 4));

    // unlock releases (and bumps); the next lock gets a new token.
    let l2 = ns2.read_and_lock("s").unwrap();
    assert_eq!(l2.meta.version, 5);
    assert_ne!(l2.lock_token, stale);
    ns2.unlock("s", l2.lock_token).unwrap();
    let m = ns.meta("s").unwrap();
    assert_eq!((m.version, m.lock), (6, None));

    // put ignores and clears the lock: the holder's token is then stale.
    let l3 = ns.read_and_lock("s").unwrap();
    assert_eq!(ns2.put("s", "overwritten", WriteOptions::new()).unwrap(), 8);
    assert_eq!(ns.meta("s").unwrap().lock, None);
    refused(ns.unlock("s", l3.lock_token), ErrorCode::LockLost);
    let l4 = ns2.read_and_lock("s").unwrap();
    assert_eq!(l4.value, b"overwritten");

    // remove: forced ignores the lock; with the holder's token it is allowed.
    ns.remove_forced("s").unwrap();
    refused(ns2.unlock("s", l4.lock_token), ErrorCode::NotFound);
    refused(ns.read_and_lock("s"), ErrorCode::NotFound);
    ns.put("r", "v", WriteOptions::new()).unwrap();
    let l5 = ns.read_and_lock("r").unwrap();
    ns.remove_with_lock("r", l5.lock_token).unwrap();
    refused(ns.read("r"), ErrorCode::NotFound);
    refused(ns.remove_forced("r"), ErrorCode::NotFound);
    // A token presented to an unlocked object is stale too.
    ns.put("u", "v", WriteOptions::new()).unwrap();
    refused(ns.remove_with_lock("u", l5.lock_token), ErrorCode::LockLost);
    assert_eq!(ns.count().unwrap(), 1);
}

// ---- key listing, multi-read, bulk put --------------------------------------------------------

#[test]
fn list_keys_pages_return_every_key_once() {
    let server = start(&[("shards", "2"), ("items_per_request_max", "50")]);
    let client = server.blocking_client();
    let big = client.namespace("big").unwrap();
    let other = client.namespace("other").unwrap();
    let empty = client.namespace("empty").unwrap();
    let expected: BTreeSet<Vec<u8>> = (0..300).map(|i| format!("key-{i}").into_bytes()).collect();
    for k in &expected {
        big.put(k, "v", WriteOptions::new()).unwrap();
    }
    for i in 0..20 {
        other
            .put(format!("other-{i}"), "v", WriteOptions::new())
            .unwrap();
    }
    let on_shard_0 = expected.iter().filter(|k| owner(&big, k, 2) == 0).count();
    assert!(
        on_shard_0 > 0 && on_shard_0 < expected.len(),
        "the keys must span both shards so the cursor crosses from one to the other"
    );

    let mut listed = Vec::new();
    let mut cursor = 0;
    let mut pages = 0;
    loop {
        let page = big.list_keys(cursor, 37).unwrap();
        assert!(page.keys.len() <= 37, "a page of {} keys", page.keys.len());
        listed.extend(page.keys);
        pages += 1;
        assert!(pages <= 300, "the cursor does not advance");
        if page.next_cursor == 0 {
            break;
        }
        cursor = page.next_cursor;
    }
    assert!(pages >= 300usize.div_ceil(37));
    assert_eq!(listed.len(), 300, "every key exactly once");
    let listed_set: BTreeSet<Vec<u8>> = listed.into_iter().collect();
    assert_eq!(listed_set, expected);

    // The whole-namespace helper lowers its page size to the server's limit.
    let all: BTreeSet<Vec<u8>> = big.keys().unwrap().into_iter().collect();
    assert_eq!(all, expected);
    assert_eq!(other.keys().unwrap().len(), 20);
    let mut cursor = 0;
    loop {
        let page = empty.list_keys(cursor, 50).unwrap();
        assert_eq!(page.keys, Vec::<Vec<u8>>::new());
        if page.next_cursor == 0 {
            break;
        }
        cursor = page.next_cursor;
    }

    // Page limits: 1..=items_per_request_max.
    assert_eq!(refused(big.list_keys(0, 51), ErrorCode::TooManyItems), 50);
    assert_eq!(refused(big.list_keys(0, 0), ErrorCode::TooManyItems), 50);
    assert_eq!(big.list_keys(0, 50).unwrap().keys.len(), 50);
    // A cursor naming a shard this host does not have.
    refused(big.list_keys(u64::MAX, 10), ErrorCode::InvalidRequest);
}

#[test]
fn multi_read_and_bulk_put_answer_per_item_across_shards() {
    let server = start(&[
        ("shards", "2"),
        ("items_per_request_max", "50"),
        ("key_bytes_max", "64"),
        ("object_bytes_max", "4KiB"),
    ]);
    let client = connect(&server, 1);
    let ns = client.namespace("bulk").unwrap();
    let shard0 = keys_owned_by(&ns, "item", 0, 2, 30);
    let shard1 = keys_owned_by(&ns, "item", 1, 2, 30);

    // 20 new objects spread over both shards, interleaved.
    let first: Vec<(String, Vec<u8>)> = (0..20)
        .map(|i| {
            let k = if i % 2 == 0 { &shard0[i] } else { &shard1[i] };
            (k.clone(), value_of(i, 10 + i))
        })
        .collect();
    let results = ns.bulk_put(&first, WriteOptions::new()).unwrap();
    assert_eq!(results, vec![Ok(1); 20]);
    assert_eq!(ns.count().unwrap(), 20);

    // Existing items get version 2, new ones 1, in item order.
    let second: Vec<(String, Vec<u8>)> = (0..10)
        .map(|i| (first[i].0.clone(), value_of(100 + i, 5)))
        .chain((20..25).map(|i| (shard0[i].clone(), value_of(i, 7))))
        .chain((20..25).map(|i| (shard1[i].clone(), value_of(i, 7))))
        .collect();
    let results = ns.bulk_put(&second, WriteOptions::sliding(600)).unwrap();
    let expected: Vec<Result<u64, ErrorReply>> =
        (0..20).map(|i| Ok(if i < 10 { 2 } else { 1 })).collect();
    assert_eq!(results, expected);
    assert_eq!(ns.count().unwrap(), 30);

    // Bad items fail alone; the others are written.
    let long_key = "k".repeat(65);
    let mixed: Vec<(String, Vec<u8>)> = vec![
        (shard0[25].clone(), b"ok-0".to_vec()),
        (long_key.clone(), b"too long a key".to_vec()),
        (shard1[25].clone(), vec![7; 4097]),
        (shard1[26].clone(), vec![8; 4096]),
    ];
    let results = ns.bulk_put(&mixed, WriteOptions::new()).unwrap();
    assert_eq!(results.len(), 4);
    assert_eq!(results[0], Ok(1));
    assert_eq!(results[1], Err(ErrorReply::new(ErrorCode::KeyTooLong, 64)));
    assert_eq!(
        results[2],
        Err(ErrorReply::new(ErrorCode::ObjectTooLarge, 4096))
    );
    assert_eq!(results[3], Ok(1));
    refused(ns.read(&shard1[25]), ErrorCode::NotFound);
    assert_eq!(ns.count().unwrap(), 32);

    // A multi-read mixing found and missing keys on both shards answers in key order.
    let mut keys: Vec<String> = Vec::new();
    let mut want: Vec<Option<(Vec<u8>, u64)>> = Vec::new();
    for i in 0..20 {
        keys.push(first[i].0.clone());
        want.push(Some(if i < 10 {
            (second[i].1.clone(), 2)
        } else {
            (first[i].1.clone(), 1)
        }));
        let missing = if i % 2 == 0 { &shard1[29] } else { &shard0[29] };
        keys.push(format!("{missing}-absent-{i}"));
        want.push(None);
    }
    keys.push(long_key.clone());
    let results = ns.multi_read(&keys).unwrap();
    assert_eq!(results.len(), keys.len());
    for (i, (got, want)) in results.iter().zip(&want).enumerate() {
        match (got, want) {
            (Ok(read), Some((value, version))) => {
                assert_eq!(&read.value, value, "item {i} ({})", keys[i]);
                assert_eq!(read.meta.version, *version, "item {i}");
                assert_eq!(read.meta.value_bytes as usize, value.len());
            }
            (Err(e), None) => assert_eq!(e.code, ErrorCode::NotFound, "item {i}"),
            _ => panic!("item {i} ({}): got {got:?}, expected {want:?}", keys[i]),
        }
    }
    assert_eq!(
        results.last().unwrap(),
        &Err(ErrorReply::new(ErrorCode::KeyTooLong, 64))
    );
    assert_eq!(ns.multi_read::<&str>(&[]).unwrap(), vec![]);

    // items_per_request_max: refused whole, whether the items share a shard or not, and a
    // refused bulk put writes nothing.
    let spread: Vec<String> = shard0.iter().chain(&shard1).take(51).cloned().collect();
    let one_shard: Vec<String> = keys_owned_by(&ns, "solo", 1, 2, 51);
    for keys in [&spread, &one_shard] {
        assert_eq!(refused(ns.multi_read(keys), ErrorCode::TooManyItems), 50);
        let items: Vec<(String, &str)> = keys.iter().map(|k| (format!("{k}-new"), "v")).collect();
        assert_eq!(
            refused(
                ns.bulk_put(&items, WriteOptions::new()),
                ErrorCode::TooManyItems
            ),
            50
        );
    }
    assert_eq!(ns.count().unwrap(), 32);
    assert_eq!(ns.multi_read(&spread[..50]).unwrap().len(), 50);
}

// ---- the session provider ---------------------------------------------------------------------

#[test]
fn session_provider_cycle_on_both_shards() {
    let server = start(&[("shards", "2")]);
    let client = server.blocking_client();
    let ns = client.namespace("sessions").unwrap();
    let keys = [
        keys_owned_by(&ns, "session", 0, 2, 1).remove(0),
        keys_owned_by(&ns, "session", 1, 2, 1).remove(0),
    ];
    for key in &keys {
        assert_eq!(
            ns.add(key, "state-0", WriteOptions::sliding(1200)).unwrap(),
            1
        );

        // A request that changes the session: lock, read, write back and unlock.
        let l = ns.read_and_lock(key).unwrap();
        assert_eq!((l.value.as_slice(), l.meta.version), (&b"state-0"[..], 2));
        refused(ns.read_and_lock(key), ErrorCode::Locked);
        let v = ns
            .update_and_unlock(key, "state-1", WriteOptions::new(), l.lock_token)
            .unwrap();
        assert_eq!(v, 3);
        let m = ns.meta(key).unwrap();
        assert_eq!(m.lock, None);
        assert_eq!(
            m.timeout,
            Timeout {
                timeout_s: 1200,
                kind: TimeoutKind::Sliding
            },
            "a write without a timeout keeps the session's"
        );

        // A read-only request: lock, read, unlock.
        let l = ns.read_and_lock(key).unwrap();
        assert_eq!((l.value.as_slice(), l.meta.version), (&b"state-1"[..], 4));
        ns.unlock(key, l.lock_token).unwrap();
        let read = ns.read(key).unwrap();
        assert_eq!(
            (read.value.as_slice(), read.meta.version),
            (&b"state-1"[..], 5)
        );

        // Abandon: lock and remove.
        let l = ns.read_and_lock(key).unwrap();
        ns.remove_with_lock(key, l.lock_token).unwrap();
        refused(ns.read(key), ErrorCode::NotFound);
        refused(ns.unlock(key, l.lock_token), ErrorCode::NotFound);
    }
    assert_eq!(ns.count().unwrap(), 0);
}

#[test]
fn lock_contention_admits_one_holder_at_a_time() {
    const THREADS: usize = 8;
    const ROUNDS: u64 = 20;
    let server = start(&[("shards", "2")]);
    let setup = server.blocking_client();
    let ns = setup.namespace("counters").unwrap();
    // Two counters per shard: every connection, whichever shard accepted it, reaches some
    // counters through forwarding.
    let keys: Vec<String> = keys_owned_by(&ns, "counter", 0, 2, 2)
        .into_iter()
        .chain(keys_owned_by(&ns, "counter", 1, 2, 2))
        .collect();
    for key in &keys {
        ns.put(key, "0", WriteOptions::new()).unwrap();
    }

    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let client = connect(&server, 1);
            let keys = keys.clone();
            thread::spawn(move || {
                let ns = client.namespace("counters").unwrap();
                let mut waits = 0u64;
                for round in 0..ROUNDS as usize {
                    for i in 0..keys.len() {
                        let key = &keys[(t + round + i) % keys.len()];
                        let l = loop {
                            match ns.read_and_lock(key) {
                                Ok(l) => break l,
                                Err(e) if e.is_locked() => {
                                    let left = e.lock_expires_in_ms().unwrap();
                                    assert!(left <= 90_000, "{left} ms");
                                    waits += 1;
                                    thread::sleep(Duration::from_millis(1));
                                }
                                Err(e) => panic!("read_and_lock {key}: {e}"),
                            }
                        };
                        let n: u64 = std::str::from_utf8(&l.value).unwrap().parse().unwrap();
                        // Hold the lock a moment, so holders overlap with waiters.
                        thread::sleep(Duration::from_millis(1));
                        ns.update_and_unlock(
                            key,
                            (n + 1).to_string(),
                            WriteOptions::new(),
                            l.lock_token,
                        )
                        .unwrap();
                    }
                }
                waits
            })
        })
        .collect();
    let waits: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();

    let total = THREADS as u64 * ROUNDS;
    for key in &keys {
        let read = ns.read(key).unwrap();
        assert_eq!(
            std::str::from_utf8(&read.value).unwrap(),
            total.to_string(),
            "{key}: increments were lost"
        );
        // Each increment bumped twice: the lock taken, then the update that released it.
        assert_eq!(read.meta.version, 1 + 2 * total, "{key}");
        assert_eq!(read.meta.lock, None);
    }
    assert!(
        waits > 0,
        "no thread ever found a counter locked: the test did not exercise contention"
    );
}

#[test]
fn an_unreleased_lock_expires_after_lock_timeout() {
    let server = start(&[("shards", "2"), ("lock_timeout", "1")]);
    let a = connect(&server, 1).namespace("expiry").unwrap();
    let b = connect(&server, 1).namespace("expiry").unwrap();
    for key in [
        keys_owned_by(&a, "lock", 0, 2, 1).remove(0),
        keys_owned_by(&a, "lock", 1, 2, 1).remove(0),
    ] {
        a.put(&key, "original", WriteOptions::new()).unwrap();
        let sent = Instant::now();
        let held = a.read_and_lock(&key).unwrap();
        let locked_at = (sent, Instant::now());
        let seen_sent = Instant::now();
        let e = b.read_and_lock(&key).unwrap_err();
        let seen = (seen_sent, Instant::now());
        assert_remaining(e.lock_expires_in_ms().unwrap(), 1000, locked_at, seen);

        sleep_until(locked_at.1 + Duration::from_millis(1200));
        assert_eq!(a.meta(&key).unwrap().lock, None, "the lock expired");
        // The holder learns it lost the lock, and its late write changes nothing.
        refused(
            a.update_and_unlock(&key, "late", WriteOptions::new(), held.lock_token),
            ErrorCode::LockLost,
        );
        refused(a.refresh_lock(&key, held.lock_token), ErrorCode::LockLost);
        assert_eq!(b.read(&key).unwrap().value, b"original");

        // Another client takes the lock; the old token now meets a live lock of another.
        let taken = b.read_and_lock(&key).unwrap();
        assert_ne!(taken.lock_token, held.lock_token);
        refused(a.unlock(&key, held.lock_token), ErrorCode::Locked);
        b.update_and_unlock(&key, "new owner", WriteOptions::new(), taken.lock_token)
            .unwrap();
        refused(a.unlock(&key, held.lock_token), ErrorCode::LockLost);
        assert_eq!(a.read(&key).unwrap().value, b"new owner");
    }
}

#[test]
fn refreshing_or_updating_with_the_token_keeps_a_lock_alive() {
    let server = start(&[("shards", "2"), ("lock_timeout", "2")]);
    let a = connect(&server, 1).namespace("refresh").unwrap();
    let b = connect(&server, 1).namespace("refresh").unwrap();
    a.put("k", "v", WriteOptions::new()).unwrap();
    let held = a.read_and_lock("k").unwrap();
    let locked_done = Instant::now();

    // 1.2 s + 1.2 s: past the 2 s lock timeout only if the refresh did not restart it.
    sleep_until(locked_done + Duration::from_millis(1200));
    let sent = Instant::now();
    a.refresh_lock("k", held.lock_token).unwrap();
    let refreshed = (sent, Instant::now());
    sleep_until(refreshed.1 + Duration::from_millis(1200));
    let seen_sent = Instant::now();
    let e = b.read_and_lock("k").unwrap_err();
    assert!(e.is_locked(), "{e}");
    assert_remaining(
        e.lock_expires_in_ms().unwrap(),
        2000,
        refreshed,
        (seen_sent, Instant::now()),
    );

    // An update by the holder restarts it too.
    let sent = Instant::now();
    a.update_with_lock("k", "v2", WriteOptions::new(), held.lock_token)
        .unwrap();
    let updated = (sent, Instant::now());
    sleep_until(updated.1 + Duration::from_millis(1200));
    let seen_sent = Instant::now();
    let m = b.meta("k").unwrap();
    let lock = m.lock.expect("still locked 3.6 s after the lock was taken");
    assert_remaining(
        lock.expires_in_ms,
        2000,
        updated,
        (seen_sent, Instant::now()),
    );
    a.update_and_unlock("k", "v3", WriteOptions::new(), held.lock_token)
        .unwrap();
    assert_eq!(b.read("k").unwrap().value, b"v3");
}

// ---- timeouts ---------------------------------------------------------------------------------
//
// These servers sweep once a minute, so an expired object is still in the store when the test
// reads it: only the check on access keeps it from being returned.

const NO_SWEEP: (&str, &str) = ("sweep_interval_ms", "60000");

#[test]
fn absolute_timeout_expires_even_if_read_or_updated() {
    let server = start(&[NO_SWEEP]);
    let client = server.blocking_client();
    let ns = client.namespace("absolute").unwrap();

    let sent = Instant::now();
    ns.put("read", "v", WriteOptions::absolute(1)).unwrap();
    ns.put("updated", "v", WriteOptions::absolute(1)).unwrap();
    let written = (sent, Instant::now());
    for step in 1..=2 {
        sleep_until(written.1 + Duration::from_millis(300 * step));
        let seen_sent = Instant::now();
        let read = ns.read("read").unwrap();
        let seen = (seen_sent, Instant::now());
        assert_eq!(
            read.meta.timeout,
            Timeout {
                timeout_s: 1,
                kind: TimeoutKind::Absolute
            }
        );
        assert_remaining(read.meta.expires_in_ms.unwrap(), 1000, written, seen);
        // An update without a timeout keeps the deadline.
        ns.update("updated", format!("v{step}"), WriteOptions::new())
            .unwrap();
    }

    sleep_until(written.1 + Duration::from_millis(1050));
    let before = stats(&client);
    assert_eq!(
        (before.objects, before.expirations),
        (2, 0),
        "expired but not yet removed"
    );
    refused(ns.read("read"), ErrorCode::NotFound);
    refused(ns.read("updated"), ErrorCode::NotFound);
    let after = stats(&client);
    assert_eq!((after.objects, after.expirations), (0, 2));
}

#[test]
fn sliding_timeout_survives_reads_and_expires_when_left_alone() {
    let server = start(&[NO_SWEEP]);
    let client = server.blocking_client();
    let ns = client.namespace("sliding").unwrap();

    ns.put("s", "v", WriteOptions::sliding(1)).unwrap();
    let mut last_read = (Instant::now(), Instant::now());
    // 5 reads 400 ms apart: 2 s, twice the timeout.
    for _ in 0..5 {
        sleep_until(last_read.1 + Duration::from_millis(400));
        let sent = Instant::now();
        let read = ns.read("s").unwrap();
        last_read = (sent, Instant::now());
        assert_eq!(read.value, b"v");
        assert_eq!(
            read.meta.expires_in_ms,
            Some(1000),
            "a read restarts a sliding timeout"
        );
    }

    // meta does not restart it.
    sleep_until(last_read.1 + Duration::from_millis(500));
    let seen_sent = Instant::now();
    let m = ns.meta("s").unwrap();
    assert_remaining(
        m.expires_in_ms.unwrap(),
        1000,
        last_read,
        (seen_sent, Instant::now()),
    );
    sleep_until(last_read.1 + Duration::from_millis(1050));
    refused(ns.meta("s"), ErrorCode::NotFound);
    refused(ns.read("s"), ErrorCode::NotFound);
    assert_eq!(stats(&client).expirations, 1);

    // touch and updates restart it too.
    ns.put("t", "v", WriteOptions::sliding(1)).unwrap();
    let mut last = Instant::now();
    for i in 0..3 {
        sleep_until(last + Duration::from_millis(600));
        if i % 2 == 0 {
            ns.touch("t", None).unwrap();
        } else {
            ns.update("t", "v2", WriteOptions::new()).unwrap();
        }
        last = Instant::now();
    }
    assert_eq!(ns.read("t").unwrap().value, b"v2");
}

#[test]
fn reset_on_update_timeout_survives_updates_but_not_reads() {
    let server = start(&[NO_SWEEP]);
    let client = server.blocking_client();
    let ns = client.namespace("reset").unwrap();

    let sent = Instant::now();
    ns.put("r", "v0", WriteOptions::reset_on_update(1)).unwrap();
    let mut updated = (sent, Instant::now());
    // 3 updates 400 ms apart: 1.2 s, past the timeout.
    for i in 1..=3 {
        sleep_until(updated.1 + Duration::from_millis(400));
        let sent = Instant::now();
        ns.update("r", format!("v{i}"), WriteOptions::new())
            .unwrap();
        updated = (sent, Instant::now());
    }
    // Reads see the object but do not restart the timeout.
    for step in 1..=2 {
        sleep_until(updated.1 + Duration::from_millis(300 * step));
        let seen_sent = Instant::now();
        let read = ns.read("r").unwrap();
        let seen = (seen_sent, Instant::now());
        assert_eq!(read.value, b"v3");
        assert_eq!(read.meta.timeout.kind, TimeoutKind::ResetOnUpdate);
        assert_remaining(read.meta.expires_in_ms.unwrap(), 1000, updated, seen);
    }
    sleep_until(updated.1 + Duration::from_millis(1050));
    refused(ns.read("r"), ErrorCode::NotFound);
    assert_eq!(stats(&client).expirations, 1);
}

#[test]
fn expired_objects_are_absent_to_every_operation() {
    let server = start(&[NO_SWEEP, ("shards", "2")]);
    let client = server.blocking_client();
    let ns = client.namespace("expired").unwrap();
    let keys: Vec<String> = (0..7).map(|i| format!("k{i}")).collect();
    ns.put("keep", "v", WriteOptions::new()).unwrap();
    for k in &keys {
        ns.put(k, "old", WriteOptions::absolute(1)).unwrap();
    }
    let written = Instant::now();
    sleep_until(written + Duration::from_millis(1050));

    let before = stats(&client);
    assert_eq!((before.objects, before.expirations), (8, 0));
    refused(ns.read(&keys[0]), ErrorCode::NotFound);
    refused(ns.meta(&keys[1]), ErrorCode::NotFound);
    refused(ns.read_and_lock(&keys[2]), ErrorCode::NotFound);
    refused(
        ns.update(&keys[3], "x", WriteOptions::new()),
        ErrorCode::NotFound,
    );
    refused(ns.touch(&keys[4], None), ErrorCode::NotFound);
    let multi = ns.multi_read(&[&keys[5], &"keep".to_owned()]).unwrap();
    assert_eq!(multi[0], Err(ErrorReply::new(ErrorCode::NotFound, 0)));
    assert_eq!(multi[1].as_ref().unwrap().value, b"v");
    // add over an expired object creates a new one at version 1.
    assert_eq!(ns.add(&keys[6], "new", WriteOptions::new()).unwrap(), 1);
    assert_eq!(ns.read(&keys[6]).unwrap().value, b"new");

    let listed: BTreeSet<Vec<u8>> = ns.keys().unwrap().into_iter().collect();
    let want: BTreeSet<Vec<u8>> = [b"keep".to_vec(), keys[6].clone().into_bytes()].into();
    assert_eq!(listed, want);
    let after = stats(&client);
    assert_eq!((after.objects, after.expirations), (2, 7));
    assert_eq!(ns.count().unwrap(), 2);
}

// ---- memory: LRU eviction and LowMemory -------------------------------------------------------

#[test]
fn lru_evicts_least_recently_used_then_low_memory_changes_nothing() {
    const MAX_MEMORY: u64 = 4 << 20;
    const THRESHOLD: u64 = MAX_MEMORY * 90 / 100;
    const FILL: usize = 10_000;
    const HOT: usize = 10;
    const BATCH: usize = 100;
    let server = start(&[
        ("max_memory", "4MiB"),
        ("lru_threshold", "90"),
        ("object_bytes_max", "1MiB"),
    ]);
    let client = server.blocking_client();
    let ns = client.namespace("lru").unwrap();
    let key = |i: usize| format!("e-{i}");

    // 10,000 evictable 1 KiB objects, about three times what fits. Objects 0..10 are read
    // after every batch, so they stay recently used.
    for batch in 0..FILL / BATCH {
        let items: Vec<(String, Vec<u8>)> = (batch * BATCH..(batch + 1) * BATCH)
            .map(|i| (key(i), value_of(i, 1024)))
            .collect();
        let results = ns.bulk_put(&items, WriteOptions::new()).unwrap();
        assert_eq!(
            results,
            vec![Ok(1); BATCH],
            "batch {batch}: writes keep succeeding"
        );
        for i in 0..HOT {
            assert_eq!(ns.read(key(i)).unwrap().value, value_of(i, 1024));
        }
    }
    let st = stats(&client);
    assert!(st.evictions > 0);
    assert_eq!(st.objects + st.evictions, FILL as u64, "{st:?}");
    assert_eq!(st.expirations, 0);
    assert!(
        st.object_bytes <= THRESHOLD,
        "{} accounted bytes, above the LRU threshold {THRESHOLD}",
        st.object_bytes
    );

    // Survivors: the hot objects, and exactly the most recently written others.
    let all: Vec<String> = (0..FILL).map(key).collect();
    let mut present = vec![false; FILL];
    for chunk in (0..FILL).collect::<Vec<_>>().chunks(1000) {
        let keys: Vec<&String> = chunk.iter().map(|&i| &all[i]).collect();
        for (&i, r) in chunk.iter().zip(ns.multi_read(&keys).unwrap()) {
            match r {
                Ok(read) => {
                    assert_eq!(read.value, value_of(i, 1024), "{}", all[i]);
                    present[i] = true;
                }
                Err(e) => assert_eq!(e.code, ErrorCode::NotFound, "{}", all[i]),
            }
        }
    }
    assert!(
        present[..HOT].iter().all(|&p| p),
        "a recently read object was evicted"
    );
    let cut = (HOT..FILL)
        .find(|&i| present[i])
        .expect("the newest objects survive");
    assert!(
        present[cut..].iter().all(|&p| p) && present[HOT..cut].iter().all(|&p| !p),
        "eviction did not follow least-recent use: survivors are not exactly {cut}..{FILL}"
    );
    assert!(cut > FILL / 2, "only {cut} objects were evicted");
    assert_eq!(
        (FILL - cut + HOT) as u64,
        st.objects,
        "every survivor is accounted"
    );

    // Now objects the LRU may not evict, until the store is full of them.
    let pinned = WriteOptions::new().not_evictable();
    assert_eq!(ns.put("victim", "small", pinned).unwrap(), 1);
    let mut acknowledged = 0usize;
    let failed_at = 'fill: loop {
        assert!(acknowledged < 20_000, "max_memory never refused a write");
        let items: Vec<(String, Vec<u8>)> = (acknowledged..acknowledged + BATCH)
            .map(|i| (format!("pin-{i}"), value_of(FILL + i, 1024)))
            .collect();
        let results = ns.bulk_put(&items, pinned).unwrap();
        for (j, r) in results.iter().enumerate() {
            match r {
                Ok(version) => assert_eq!(*version, 1),
                Err(e) => {
                    assert_eq!(e.code, ErrorCode::LowMemory, "{e}");
                    // Nothing changed, so the later items of the batch fail alike.
                    for later in &results[j..] {
                        assert_eq!(later, &Err(ErrorReply::new(ErrorCode::LowMemory, 0)));
                    }
                    break 'fill acknowledged + j;
                }
            }
        }
        acknowledged += BATCH;
    };
    acknowledged = failed_at;
    let st = stats(&client);
    assert!(st.object_bytes <= MAX_MEMORY, "{st:?}");
    assert_eq!(
        st.objects,
        acknowledged as u64 + 1,
        "only pinned objects are left"
    );

    // A failed write changes nothing: no new object, no change to an existing one.
    refused(ns.read(format!("pin-{failed_at}")), ErrorCode::NotFound);
    let e = ns.put("victim", vec![1u8; 64 << 10], pinned).unwrap_err();
    assert!(e.is_low_memory() && e.is_transient(), "{e}");
    refused(
        ns.put("evictable", vec![1u8; 1024], WriteOptions::new()),
        ErrorCode::LowMemory,
    );
    let victim = ns.read("victim").unwrap();
    assert_eq!(
        (victim.value.as_slice(), victim.meta.version),
        (&b"small"[..], 1)
    );
    // A write that does not grow the object always fits.
    assert_eq!(ns.put("victim", "SMALL", pinned).unwrap(), 2);

    // Every acknowledged pinned object reads back exactly.
    let pins: Vec<String> = (0..acknowledged).map(|i| format!("pin-{i}")).collect();
    for (c, chunk) in pins.chunks(1000).enumerate() {
        for (j, r) in ns.multi_read(chunk).unwrap().into_iter().enumerate() {
            let i = c * 1000 + j;
            let read = r.unwrap_or_else(|e| panic!("pin-{i}: {e}"));
            assert_eq!(read.value, value_of(FILL + i, 1024), "pin-{i}");
            assert!(!read.meta.evictable);
        }
    }

    // Removing objects makes room again.
    for i in 0..10 {
        ns.remove(format!("pin-{i}")).unwrap();
    }
    assert_eq!(
        ns.put(format!("pin-{failed_at}"), value_of(0, 1024), pinned)
            .unwrap(),
        1
    );
}

// ---- forwarding between shards ----------------------------------------------------------------

#[test]
fn pipelined_requests_on_one_connection_reach_both_shards() {
    const KEYS: usize = 2000;
    const THREADS: usize = 16;
    let server = start(&[("shards", "2")]);
    // One connection, shared by every thread: their requests are in flight together on it.
    let client = connect(&server, 1);
    assert_eq!(client.server_info().shards, 2);
    let ns = client.namespace("pipeline").unwrap();
    let key = |i: usize| format!("user:{i}");
    let value = |i: usize| format!("value of {i}|").repeat(1 + i % 40).into_bytes();
    let on_shard_0 = (0..KEYS)
        .filter(|&i| owner(&ns, key(i).as_bytes(), 2) == 0)
        .count();
    assert!(
        (KEYS / 4..KEYS * 3 / 4).contains(&on_shard_0),
        "{on_shard_0} of {KEYS} keys on shard 0"
    );

    let run = |work: fn(&Namespace, usize, &[u8])| {
        thread::scope(|s| {
            for t in 0..THREADS {
                let ns = ns.clone();
                s.spawn(move || {
                    for i in (t..KEYS).step_by(THREADS) {
                        work(&ns, i, &value(i));
                    }
                });
            }
        });
    };
    run(|ns, i, v| {
        assert_eq!(
            ns.put(format!("user:{i}"), v, WriteOptions::new()).unwrap(),
            1
        );
    });
    run(|ns, i, v| {
        let read = ns.read(format!("user:{i}")).unwrap();
        assert_eq!(read.value, v, "user:{i} got another key's answer");
        assert_eq!(read.meta.version, 1);
    });

    let st = stats(&client);
    assert_eq!(st.objects, KEYS as u64);
    assert_eq!(st.shards, 2);
    assert_eq!(
        st.connections, 1,
        "every request went over the one connection"
    );
    assert_eq!(ns.count().unwrap(), KEYS as u64);
    let listed: HashSet<Vec<u8>> = ns.keys().unwrap().into_iter().collect();
    assert_eq!(listed.len(), KEYS);

    // Multi-reads split over both shards come back in key order.
    let keys: Vec<String> = (0..KEYS).rev().map(key).collect();
    for chunk in keys.chunks(500) {
        for (k, r) in chunk.iter().zip(ns.multi_read(chunk).unwrap()) {
            let i: usize = k["user:".len()..].parse().unwrap();
            assert_eq!(r.unwrap().value, value(i), "{k}");
        }
    }
}

// ---- limits -----------------------------------------------------------------------------------

#[test]
fn size_limits_refuse_the_request_and_keep_the_connection() {
    let server = start(&[
        ("shards", "2"),
        ("object_bytes_max", "64KiB"),
        ("key_bytes_max", "64"),
    ]);
    let client = connect(&server, 1);
    let ns = client.namespace("limits").unwrap();
    for shard in 0..2 {
        let key = keys_owned_by(&ns, "limit", shard, 2, 1).remove(0);
        let largest = value_of(shard, 64 << 10);
        assert_eq!(ns.put(&key, &largest, WriteOptions::new()).unwrap(), 1);
        assert_eq!(ns.read(&key).unwrap().value, largest);

        let too_large = vec![0u8; (64 << 10) + 1];
        let e = ns.put(&key, &too_large, WriteOptions::new()).unwrap_err();
        assert!(e.is_object_too_large(), "{e}");
        assert_eq!(
            e.reply().unwrap().detail,
            64 << 10,
            "the detail names the limit"
        );
        refused(
            ns.add("fresh", &too_large, WriteOptions::new()),
            ErrorCode::ObjectTooLarge,
        );
        refused(
            ns.update(&key, &too_large, WriteOptions::new()),
            ErrorCode::ObjectTooLarge,
        );
        let l = ns.read_and_lock(&key).unwrap();
        refused(
            ns.update_and_unlock(&key, &too_large, WriteOptions::new(), l.lock_token),
            ErrorCode::ObjectTooLarge,
        );
        // Nothing changed, and the one connection still serves requests.
        ns.unlock(&key, l.lock_token).unwrap();
        let read = ns.read(&key).unwrap();
        assert_eq!(read.value, largest);
        assert_eq!(read.meta.version, 3, "locked and unlocked, never rewritten");
        refused(ns.read("fresh"), ErrorCode::NotFound);
    }

    let longest = "k".repeat(64);
    let too_long = "k".repeat(65);
    ns.put(&longest, "v", WriteOptions::new()).unwrap();
    assert_eq!(ns.read(&longest).unwrap().value, b"v");
    assert_eq!(
        refused(
            ns.put(&too_long, "v", WriteOptions::new()),
            ErrorCode::KeyTooLong
        ),
        64
    );
    refused(
        ns.add(&too_long, "v", WriteOptions::new()),
        ErrorCode::KeyTooLong,
    );
    refused(ns.read(&too_long), ErrorCode::KeyTooLong);
    refused(ns.meta(&too_long), ErrorCode::KeyTooLong);
    refused(ns.remove(&too_long), ErrorCode::KeyTooLong);

    let name_max = "n".repeat(280);
    client.namespace(&name_max).unwrap();
    assert_eq!(
        refused(client.namespace(&"n".repeat(281)), ErrorCode::NameTooLong),
        280
    );

    assert_eq!(ns.count().unwrap(), 3);
}
