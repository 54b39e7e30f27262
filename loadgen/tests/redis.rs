//! loadgen against real servers: redis-server (RESP) and memcached (text protocol).
//! Needs `scripts/install-test-deps.sh`; under CI=true a missing server fails the test.

mod common;

use common::*;

#[test]
fn resp_against_redis_get_put_prefilled() {
    let Some(redis) = start_redis() else { return };
    let plot = tmp("redis.svg");
    let (out, v) = loadgen(
        &[
            "--protocol",
            "resp",
            "--targets",
            &redis.addr,
            "--duration",
            "2",
            "--warmup",
            "0.2",
            "--connections",
            "4",
            "--pipeline",
            "4",
            "--keys",
            "2000",
            "--prefill",
            "--ratio",
            "90:10",
            "--value-size",
            "16..1024",
            "--plot",
            plot.to_str().unwrap(),
        ],
        "redis-getput.json",
    );
    assert_complete_and_clean(&out, &v);
    assert_eq!(
        v["prefill_ops"].as_u64(),
        Some(2000),
        "every key written once"
    );
    assert!(ops_of(&v, "get") > 0 && ops_of(&v, "put") > 0);
    // Every key exists after the prefill: no GET misses.
    assert_eq!(v["misses"].as_u64(), Some(0), "{v:#}");
    let svg = std::fs::read_to_string(&plot).expect("the plot was written");
    assert!(
        svg.contains("<svg") && svg.contains("throughput"),
        "the SVG has its text"
    );
}

#[test]
fn resp_against_redis_session_cycle() {
    let Some(redis) = start_redis() else { return };
    let plot = tmp("redis.png");
    let (out, v) = loadgen(
        &[
            "--protocol",
            "resp",
            "--targets",
            &redis.addr,
            "--duration",
            "2",
            "--warmup",
            "0.2",
            "--connections",
            "4",
            "--pipeline",
            "2",
            "--keys",
            "500",
            "--session",
            "--dist",
            "zipf:0.99",
            "--plot",
            plot.to_str().unwrap(),
        ],
        "redis-session.json",
    );
    assert_complete_and_clean(&out, &v);
    assert!(ops_of(&v, "read-and-lock") > 0);
    // Sessions are created on first use, then updated.
    assert!(
        ops_of(&v, "update-and-unlock") + ops_of(&v, "session-create") > 0,
        "{v:#}"
    );
    let png = std::fs::read(&plot).expect("the plot was written");
    assert_eq!(&png[1..4], b"PNG");
}

#[test]
fn memcache_against_memcached_get_put_and_session() {
    let Some(mc) = start_memcached() else { return };
    let (out, v) = loadgen(
        &[
            "--protocol",
            "memcache",
            "--targets",
            &mc.addr,
            "--duration",
            "2",
            "--warmup",
            "0.2",
            "--connections",
            "4",
            "--pipeline",
            "4",
            "--keys",
            "2000",
            "--prefill",
            "--ratio",
            "50:50",
        ],
        "memcached-getput.json",
    );
    assert_complete_and_clean(&out, &v);
    assert!(ops_of(&v, "get") > 0 && ops_of(&v, "put") > 0);
    assert_eq!(v["misses"].as_u64(), Some(0), "{v:#}");

    let (out, v) = loadgen(
        &[
            "--protocol",
            "memcache",
            "--targets",
            &mc.addr,
            "--requests",
            "20000",
            "--warmup",
            "0",
            "--connections",
            "4",
            "--pipeline",
            "2",
            "--keys",
            "500",
            "--session",
        ],
        "memcached-session.json",
    );
    assert_complete_and_clean(&out, &v);
    // --requests: exactly that many measured operations.
    assert_eq!(v["ops"].as_u64(), Some(20000), "{v:#}");
    assert!(ops_of(&v, "read-and-lock") > 0);
}

#[test]
fn open_loop_against_redis_holds_a_modest_rate() {
    let Some(redis) = start_redis() else { return };
    let (out, v) = loadgen(
        &[
            "--protocol",
            "resp",
            "--targets",
            &redis.addr,
            "--duration",
            "2",
            "--warmup",
            "0.2",
            "--connections",
            "4",
            "--rate",
            "2000",
            "--ratio",
            "1:1",
        ],
        "redis-open.json",
    );
    assert_complete_and_clean(&out, &v);
    // Arrivals are counted, not timed: 2 s at 2000/s is 4000 intended requests, give or
    // take the one at each edge of the window.
    let ops = v["ops"].as_u64().unwrap() + v["unsent"].as_u64().unwrap();
    assert!(
        (3998..=4002).contains(&ops),
        "{ops} arrivals in the window\n{v:#}"
    );
}
