//! The Redis protocol over real sockets against a real `stategrid serve`: exact bytes in,
//! exact replies out (issue 8). Real Redis client libraries are tested in `resp_clients*`.

mod common;

use std::net::TcpStream;

use common::TestServer;
use common::resp::{Conn, REPLY_TIMEOUT, mb};
use stategrid_client::Error as ClientError;
use stategrid_proto::ErrorCode;

fn server() -> TestServer {
    TestServer::start(&[])
}

#[test]
fn strings_and_keys_answer_exact_bytes() {
    let srv = server();
    let mut c = Conn::open(&srv);
    c.cmd(&["PING"], "+PONG\r\n");
    c.cmd(&["ping", "hi"], "$2\r\nhi\r\n");
    c.cmd(&["SET", "k", "v"], "+OK\r\n");
    c.cmd(&["GET", "k"], "$1\r\nv\r\n");
    c.cmd(&["GET", "missing"], "$-1\r\n");
    c.cmd(&["SET", "k", "v2", "NX"], "$-1\r\n");
    c.cmd(&["SET", "k", "v2", "XX", "GET"], "$1\r\nv\r\n");
    c.cmd(&["SET", "nope", "x", "XX"], "$-1\r\n");
    c.cmd(&["SETNX", "k", "x"], ":0\r\n");
    c.cmd(&["SETNX", "k2", "x"], ":1\r\n");
    c.cmd(&["GETSET", "k2", "y"], "$1\r\nx\r\n");
    c.cmd(&["GETDEL", "k2"], "$1\r\ny\r\n");
    c.cmd(&["EXISTS", "k", "k2", "k"], ":2\r\n");
    c.cmd(&["INCR", "n"], ":1\r\n");
    c.cmd(&["INCRBY", "n", "41"], ":42\r\n");
    c.cmd(&["DECRBY", "n", "2"], ":40\r\n");
    c.cmd(&["DECR", "n"], ":39\r\n");
    c.cmd(
        &["INCR", "k"],
        "-ERR value is not an integer or out of range\r\n",
    );
    c.cmd(&["SET", "big", "9223372036854775807"], "+OK\r\n");
    c.cmd(
        &["INCR", "big"],
        "-ERR increment or decrement would overflow\r\n",
    );
    c.cmd(&["APPEND", "k", "xy"], ":4\r\n");
    c.cmd(&["STRLEN", "k"], ":4\r\n");
    c.cmd(&["MSET", "a", "1", "b", "2"], "+OK\r\n");
    c.cmd(
        &["MGET", "a", "nope", "b"],
        "*3\r\n$1\r\n1\r\n$-1\r\n$1\r\n2\r\n",
    );
    c.cmd(&["DEL", "a", "b", "nope"], ":2\r\n");
    c.cmd(&["UNLINK", "k"], ":1\r\n");
    c.cmd(&["TYPE", "n"], "+string\r\n");
    c.cmd(&["TYPE", "nope"], "+none\r\n");
    // Binary-safe values, empty values.
    c.check(
        b"*3\r\n$3\r\nSET\r\n$3\r\nbin\r\n$4\r\na\r\n\x00\r\n",
        b"+OK\r\n",
    );
    c.check(b"*2\r\n$3\r\nGET\r\n$3\r\nbin\r\n", b"$4\r\na\r\n\x00\r\n");
    c.cmd(&["SET", "e", ""], "+OK\r\n");
    c.cmd(&["GET", "e"], "$0\r\n\r\n");
    // Inline commands, as telnet and redis-cli's fallback send them.
    c.check(b"SET inl \"a b\"\r\n", b"+OK\r\n");
    c.check(b"GET inl\n", b"$3\r\na b\r\n");
    // Pipelined: one write, replies in order.
    c.check(
        &[
            mb(&["SET", "p", "1"]),
            mb(&["INCR", "p"]),
            mb(&["GET", "p"]),
            mb(&["PING"]),
        ]
        .concat(),
        b"+OK\r\n:2\r\n$1\r\n2\r\n+PONG\r\n",
    );
}

#[test]
fn errors_are_redis_errors() {
    let srv = server();
    let mut c = Conn::open(&srv);
    c.cmd(
        &["FOO", "a", "b"],
        "-ERR unknown command 'FOO', with args beginning with: 'a' 'b' \r\n",
    );
    c.cmd(
        &["GET"],
        "-ERR wrong number of arguments for 'get' command\r\n",
    );
    c.cmd(
        &["SET", "k", "v", "EX", "0"],
        "-ERR invalid expire time in 'set' command\r\n",
    );
    c.cmd(
        &["SET", "k", "v", "EX", "x"],
        "-ERR value is not an integer or out of range\r\n",
    );
    c.cmd(&["SET", "k", "v", "NX", "XX"], "-ERR syntax error\r\n");
    c.cmd(&["HSET", "h", "f", "v"], ":1\r\n");
    c.cmd(
        &["GET", "h"],
        "-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
    );
    c.cmd(&["HGET", "s", "f"], "$-1\r\n");
    c.cmd(&["SET", "s", "1"], "+OK\r\n");
    c.cmd(
        &["HGET", "s", "f"],
        "-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
    );
    c.cmd(
        &["LPUSH", "l", "x"],
        "-ERR command 'LPUSH' is not supported by stategrid: lists are out of scope (see docs/redis.md)\r\n",
    );
    c.cmd(
        &["EVAL", "return 1", "0"],
        "-ERR command 'EVAL' is not supported by stategrid: Lua scripting and functions are out of scope (see docs/redis.md)\r\n",
    );
    c.cmd(&["SELECT", "16"], "-ERR DB index is out of range\r\n");
    c.cmd(
        &["AUTH", "pw"],
        "-ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?\r\n",
    );
    c.cmd(&["AUTH", "default", "pw"], "+OK\r\n");
    c.cmd(&["HELLO", "4"], "-NOPROTO unsupported protocol version\r\n");
    // Still serving after all of those.
    c.cmd(&["GET", "s"], "$1\r\n1\r\n");
}

#[test]
fn expiry_follows_redis() {
    let srv = server();
    let mut c = Conn::open(&srv);
    c.cmd(&["SET", "k", "v", "EX", "100"], "+OK\r\n");
    let ttl = c.read_reply_of(&["TTL", "k"]);
    assert!(
        ttl == b":100\r\n" || ttl == b":99\r\n",
        "{:?}",
        String::from_utf8_lossy(&ttl)
    );
    c.cmd(&["TTL", "nope"], ":-2\r\n");
    c.cmd(&["SET", "p", "v"], "+OK\r\n");
    c.cmd(&["TTL", "p"], ":-1\r\n");
    c.cmd(&["EXPIRE", "p", "100", "XX"], ":0\r\n");
    c.cmd(&["EXPIRE", "p", "100", "NX"], ":1\r\n");
    c.cmd(&["EXPIRE", "p", "50", "GT"], ":0\r\n");
    c.cmd(&["EXPIRE", "p", "200", "GT"], ":1\r\n");
    c.cmd(&["EXPIRE", "p", "300", "LT"], ":0\r\n");
    c.cmd(
        &["EXPIRE", "p", "1", "NX", "XX"],
        "-ERR NX and XX, GT or LT options at the same time are not compatible\r\n",
    );
    c.cmd(&["PERSIST", "p"], ":1\r\n");
    c.cmd(&["PERSIST", "p"], ":0\r\n");
    c.cmd(&["TTL", "p"], ":-1\r\n");
    // KEEPTTL keeps it; a plain SET drops it.
    c.cmd(&["SET", "k", "w", "KEEPTTL"], "+OK\r\n");
    let t = c.read_reply_of(&["TTL", "k"]);
    assert!(t == b":100\r\n" || t == b":99\r\n");
    c.cmd(&["SET", "k", "w"], "+OK\r\n");
    c.cmd(&["TTL", "k"], ":-1\r\n");
    // GETEX sets one; EXPIREAT in the past deletes.
    c.cmd(&["GETEX", "k", "PX", "100000"], "$1\r\nw\r\n");
    let pt = c.read_reply_of(&["PTTL", "k"]);
    let ms: i64 = std::str::from_utf8(&pt[1..pt.len() - 2])
        .unwrap()
        .parse()
        .unwrap();
    assert!((90_000..=100_000).contains(&ms), "{ms}");
    let et = c.read_reply_of(&["EXPIRETIME", "k"]);
    let at: i64 = std::str::from_utf8(&et[1..et.len() - 2])
        .unwrap()
        .parse()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((now + 90..=now + 101).contains(&at), "{at} vs {now}");
    c.cmd(&["GETEX", "k", "PERSIST"], "$1\r\nw\r\n");
    c.cmd(&["TTL", "k"], ":-1\r\n");
    c.cmd(&["EXPIREAT", "k", "1"], ":1\r\n");
    c.cmd(&["GET", "k"], "$-1\r\n");
    c.cmd(&["EXISTS", "k"], ":0\r\n");
    c.cmd(&["SETEX", "s", "100", "v"], "+OK\r\n");
    c.cmd(
        &["SETEX", "s", "0", "v"],
        "-ERR invalid expire time in 'setex' command\r\n",
    );
    c.cmd(&["PSETEX", "s", "100000", "v"], "+OK\r\n");
}

#[test]
fn hashes_field_by_field_resp2_and_resp3() {
    let srv = server();
    let mut c = Conn::open(&srv);
    c.cmd(&["HSET", "h", "a", "1", "b", "2"], ":2\r\n");
    c.cmd(&["HSET", "h", "a", "9", "c", "3"], ":1\r\n");
    c.cmd(&["HGET", "h", "a"], "$1\r\n9\r\n");
    c.cmd(&["HGET", "h", "zz"], "$-1\r\n");
    c.cmd(
        &["HMGET", "h", "a", "zz", "c"],
        "*3\r\n$1\r\n9\r\n$-1\r\n$1\r\n3\r\n",
    );
    c.cmd(
        &["HGETALL", "h"],
        "*6\r\n$1\r\na\r\n$1\r\n9\r\n$1\r\nb\r\n$1\r\n2\r\n$1\r\nc\r\n$1\r\n3\r\n",
    );
    c.cmd(&["HKEYS", "h"], "*3\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n");
    c.cmd(&["HVALS", "h"], "*3\r\n$1\r\n9\r\n$1\r\n2\r\n$1\r\n3\r\n");
    c.cmd(&["HLEN", "h"], ":3\r\n");
    c.cmd(&["HEXISTS", "h", "b"], ":1\r\n");
    c.cmd(&["HSTRLEN", "h", "a"], ":1\r\n");
    c.cmd(&["HINCRBY", "h", "a", "-10"], ":-1\r\n");
    c.cmd(&["HSETNX", "h", "a", "x"], ":0\r\n");
    c.cmd(&["HSETNX", "h", "d", "x"], ":1\r\n");
    c.cmd(&["HMSET", "h", "e", "5"], "+OK\r\n");
    c.cmd(&["HDEL", "h", "d", "e", "zz"], ":2\r\n");
    c.cmd(
        &["HSCAN", "h", "0", "MATCH", "[ab]"],
        "*2\r\n$1\r\n0\r\n*4\r\n$1\r\na\r\n$2\r\n-1\r\n$1\r\nb\r\n$1\r\n2\r\n",
    );
    c.cmd(&["HGETALL", "nope"], "*0\r\n");
    c.cmd(&["TYPE", "h"], "+hash\r\n");
    c.cmd(
        &["HSET", "h", "odd"],
        "-ERR wrong number of arguments for 'hset' command\r\n",
    );
    // RESP3: HELLO 3 makes maps and nulls typed.
    let hello = c.read_reply_of(&["HELLO", "3", "SETNAME", "me"]);
    let text = String::from_utf8_lossy(&hello);
    assert!(text.starts_with("%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$5\r\n7.2.4\r\n$5\r\nproto\r\n:3\r\n"), "{text}");
    c.cmd(&["HGET", "h", "zz"], "_\r\n");
    c.cmd(&["HDEL", "h", "a", "b"], ":2\r\n");
    c.cmd(&["HGETALL", "h"], "%1\r\n$1\r\nc\r\n$1\r\n3\r\n");
    c.cmd(&["CLIENT", "GETNAME"], "$2\r\nme\r\n");
    // Deleting the last field removes the hash.
    c.cmd(&["HDEL", "h", "c"], ":1\r\n");
    c.cmd(&["EXISTS", "h"], ":0\r\n");
}

#[test]
fn native_clients_see_the_same_objects() {
    let srv = server();
    let mut c = Conn::open(&srv);
    let native = srv.blocking_client();
    let ns = native.namespace("redis-0").unwrap();
    c.cmd(&["SET", "shared", "from-redis"], "+OK\r\n");
    assert_eq!(ns.read("shared").unwrap().value, b"from-redis");
    ns.put(
        "native",
        b"from-native",
        stategrid_proto::WriteOpts::default(),
    )
    .unwrap();
    c.cmd(&["GET", "native"], "$11\r\nfrom-native\r\n");
    // Database 1 is namespace redis-1.
    c.cmd(&["SELECT", "1"], "+OK\r\n");
    c.cmd(&["GET", "native"], "$-1\r\n");
    c.cmd(&["SET", "one", "1"], "+OK\r\n");
    assert_eq!(
        native
            .namespace("redis-1")
            .unwrap()
            .read("one")
            .unwrap()
            .value,
        b"1"
    );
    c.cmd(&["SELECT", "0"], "+OK\r\n");
    // A native read of a hash is a typed error, not bytes of an encoding.
    c.cmd(&["HSET", "h", "f", "v"], ":1\r\n");
    match ns.read("h") {
        Err(ClientError::Server(e)) => assert_eq!(e.code, ErrorCode::WrongType),
        other => panic!("expected WrongType, got {other:?}"),
    }
    // A lock a native client holds is respected, not broken, by Redis writes.
    let locked = ns.read_and_lock("shared").unwrap();
    let r = c.read_reply_of(&["SET", "shared", "x"]);
    assert!(
        r.starts_with(b"-LOCKED "),
        "{}",
        String::from_utf8_lossy(&r)
    );
    let r = c.read_reply_of(&["DEL", "shared"]);
    assert!(
        r.starts_with(b"-LOCKED "),
        "{}",
        String::from_utf8_lossy(&r)
    );
    c.cmd(&["GET", "shared"], "$10\r\nfrom-redis\r\n");
    ns.unlock("shared", locked.lock_token).unwrap();
    c.cmd(&["SET", "shared", "x"], "+OK\r\n");
    // SG.LOCK / SG.SETUNLOCK: ScaleOut's pessimistic locking over RESP.
    let tok = c.read_reply_of(&["SG.LOCK", "shared"]);
    let tok = String::from_utf8(tok).unwrap();
    let token = tok.split("\r\n").nth(1).unwrap().to_string();
    assert!(
        ns.update("shared", b"no", stategrid_proto::WriteOpts::default())
            .is_err()
    );
    let r = c.read_reply_of(&["SG.LOCK", "shared"]);
    assert!(
        r.starts_with(b"-LOCKED "),
        "{}",
        String::from_utf8_lossy(&r)
    );
    // A wrong token does not release it.
    let r = c.read_reply_of(&["SG.SETUNLOCK", "shared", "done", "12345"]);
    assert!(
        r.starts_with(b"-LOCKED "),
        "{}",
        String::from_utf8_lossy(&r)
    );
    c.cmd(&["SG.SETUNLOCK", "shared", "done", &token], "+OK\r\n");
    assert_eq!(ns.read("shared").unwrap().value, b"done");
    c.cmd(&["SG.LOCK", "nope"], "-ERR no such key\r\n");
}

/// Every key a SCAN with `opts` (after the cursor) lists, following the cursor to 0; sorted.
fn scan_all(c: &mut Conn, opts: &[&str]) -> Vec<String> {
    let mut cursor = "0".to_string();
    let mut seen = Vec::new();
    loop {
        let mut args = vec!["SCAN", cursor.as_str()];
        args.extend_from_slice(opts);
        let r = c.read_reply_of(&args);
        let parts: Vec<String> = String::from_utf8(r)
            .unwrap()
            .split("\r\n")
            .map(String::from)
            .collect();
        let next = parts[2].clone();
        seen.extend(
            parts
                .iter()
                .skip(5)
                .step_by(2)
                .filter(|s| !s.is_empty())
                .cloned(),
        );
        cursor = next;
        if cursor == "0" {
            break;
        }
    }
    seen.sort();
    seen
}

#[test]
fn scan_type_filters_by_value_kind() {
    let srv = server();
    let mut c = Conn::open(&srv);
    for i in 0..12 {
        c.cmd(&["SET", &format!("s:{i:02}"), "v"], "+OK\r\n");
    }
    for i in 0..9 {
        c.cmd(&["HSET", &format!("h:{i:02}"), "f", "v"], ":1\r\n");
    }
    let strings: Vec<String> = (0..12).map(|i| format!("s:{i:02}")).collect();
    let hashes: Vec<String> = (0..9).map(|i| format!("h:{i:02}")).collect();
    // Small pages: the filter holds on every page, and the cursor still reaches every key.
    assert_eq!(scan_all(&mut c, &["TYPE", "string", "COUNT", "4"]), strings);
    assert_eq!(scan_all(&mut c, &["TYPE", "HASH", "COUNT", "3"]), hashes);
    assert_eq!(
        scan_all(&mut c, &["MATCH", "h:0[0-4]", "TYPE", "hash"]),
        hashes[..5].to_vec()
    );
    assert_eq!(
        scan_all(&mut c, &["MATCH", "h:*", "TYPE", "string"]),
        Vec::<String>::new()
    );
    // Types stategrid does not store, and unknown ones, list nothing (as Redis does).
    c.cmd(&["SCAN", "0", "TYPE", "list"], "*2\r\n$1\r\n0\r\n*0\r\n");
    c.cmd(
        &["SCAN", "0", "TYPE", "nonsense"],
        "*2\r\n$1\r\n0\r\n*0\r\n",
    );
    c.cmd(&["SCAN", "0", "TYPE"], "-ERR syntax error\r\n");
    // Cursors this server did not hand out: beyond the packed range (resp::cursor), a host
    // part on a node's own listing (svr_port), and not a number.
    for bad in ["18446744073709551615", "4398046511104", "x"] {
        c.cmd(&["SCAN", bad], "-ERR invalid cursor\r\n");
    }
    // A type change moves the key between listings.
    c.cmd(&["DEL", "h:00"], ":1\r\n");
    c.cmd(&["SET", "h:00", "v"], "+OK\r\n");
    assert_eq!(scan_all(&mut c, &["TYPE", "hash"]), hashes[1..].to_vec());
    assert!(scan_all(&mut c, &["TYPE", "string"]).contains(&"h:00".to_string()));
    // KEYS is unaffected: every kind.
    let keys = String::from_utf8(c.read_reply_of(&["KEYS", "*"])).unwrap();
    assert!(keys.starts_with("*21\r\n"), "{keys}");
}

#[test]
fn databases_scan_keys_flush() {
    let srv = server();
    let mut c = Conn::open(&srv);
    for i in 0..25 {
        c.cmd(&["SET", &format!("sess:{i:02}"), "v"], "+OK\r\n");
    }
    c.cmd(&["SET", "other", "v"], "+OK\r\n");
    c.cmd(&["DBSIZE"], ":26\r\n");
    let keys = c.read_reply_of(&["KEYS", "sess:1*"]);
    let text = String::from_utf8_lossy(&keys);
    assert!(text.starts_with("*10\r\n"), "{text}");
    // SCAN visits every key once, whatever the page size.
    let mut cursor = "0".to_string();
    let mut seen = Vec::new();
    loop {
        let r = c.read_reply_of(&["SCAN", &cursor, "MATCH", "sess:*", "COUNT", "7"]);
        let parts: Vec<String> = String::from_utf8(r)
            .unwrap()
            .split("\r\n")
            .map(String::from)
            .collect();
        cursor = parts[2].clone();
        seen.extend(
            parts
                .iter()
                .skip(5)
                .step_by(2)
                .filter(|s| !s.is_empty())
                .cloned(),
        );
        if cursor == "0" {
            break;
        }
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 25, "{seen:?}");
    c.cmd(&["SELECT", "2"], "+OK\r\n");
    c.cmd(&["DBSIZE"], ":0\r\n");
    c.cmd(&["SET", "x", "1"], "+OK\r\n");
    c.cmd(&["FLUSHDB"], "+OK\r\n");
    c.cmd(&["DBSIZE"], ":0\r\n");
    c.cmd(&["SELECT", "0"], "+OK\r\n");
    c.cmd(&["DBSIZE"], ":26\r\n");
    let info = String::from_utf8(c.read_reply_of(&["INFO"])).unwrap();
    assert!(info.contains("redis_version:7.2.4\r\n"), "{info}");
    assert!(info.contains("db0:keys=26,"), "{info}");
    c.cmd(&["FLUSHALL"], "+OK\r\n");
    c.cmd(&["DBSIZE"], ":0\r\n");
}

#[test]
fn transactions_and_cluster_commands_on_one_host() {
    let srv = server();
    let mut c = Conn::open(&srv);
    c.cmd(&["MULTI"], "+OK\r\n");
    c.cmd(&["SET", "t", "1"], "+QUEUED\r\n");
    c.cmd(&["INCR", "t"], "+QUEUED\r\n");
    c.cmd(&["GET", "t"], "+QUEUED\r\n");
    c.cmd(&["EXEC"], "*3\r\n+OK\r\n:2\r\n$1\r\n2\r\n");
    c.cmd(&["MULTI"], "+OK\r\n");
    c.cmd(
        &["NOSUCH"],
        "-ERR unknown command 'NOSUCH', with args beginning with: \r\n",
    );
    c.cmd(
        &["EXEC"],
        "-EXECABORT Transaction discarded because of previous errors.\r\n",
    );
    c.cmd(&["EXEC"], "-ERR EXEC without MULTI\r\n");
    c.cmd(&["MULTI"], "+OK\r\n");
    c.cmd(&["SET", "t", "9"], "+QUEUED\r\n");
    c.cmd(&["DISCARD"], "+OK\r\n");
    c.cmd(&["GET", "t"], "$1\r\n2\r\n");
    // WATCH: a change by another client between WATCH and EXEC aborts (null reply).
    let mut other = Conn::open(&srv);
    c.cmd(&["WATCH", "w"], "+OK\r\n");
    other.cmd(&["SET", "w", "theirs"], "+OK\r\n");
    c.cmd(&["MULTI"], "+OK\r\n");
    c.cmd(&["SET", "w", "mine"], "+QUEUED\r\n");
    c.cmd(&["EXEC"], "*-1\r\n");
    c.cmd(&["GET", "w"], "$6\r\ntheirs\r\n");
    // Unchanged: it runs. And EXEC ends the watch.
    c.cmd(&["WATCH", "w"], "+OK\r\n");
    c.cmd(&["MULTI"], "+OK\r\n");
    c.cmd(&["SET", "w", "mine"], "+QUEUED\r\n");
    c.cmd(&["EXEC"], "*1\r\n+OK\r\n");
    other.cmd(&["SET", "w", "again"], "+OK\r\n");
    c.cmd(&["MULTI"], "+OK\r\n");
    c.cmd(&["GET", "w"], "+QUEUED\r\n");
    c.cmd(&["EXEC"], "*1\r\n$5\r\nagain\r\n");
    // A deleted and re-created key counts as changed.
    c.cmd(&["WATCH", "w"], "+OK\r\n");
    other.cmd(&["DEL", "w"], ":1\r\n");
    other.cmd(&["SET", "w", "again"], "+OK\r\n");
    c.cmd(&["MULTI"], "+OK\r\n");
    c.cmd(&["GET", "w"], "+QUEUED\r\n");
    c.cmd(&["EXEC"], "*-1\r\n");
    c.cmd(&["UNWATCH"], "+OK\r\n");
    c.cmd(&["CLUSTER", "KEYSLOT", "foo"], ":12182\r\n");
    c.cmd(&["CLUSTER", "KEYSLOT", "{foo}.bar"], ":12182\r\n");
    let slots = String::from_utf8(c.read_reply_of(&["CLUSTER", "SLOTS"])).unwrap();
    let want = format!(
        "*1\r\n*3\r\n:0\r\n:16383\r\n*3\r\n$9\r\n127.0.0.1\r\n:{}\r\n$40\r\n",
        srv.addr.port()
    );
    assert!(slots.starts_with(&want), "{slots}");
    c.cmd(&["READWRITE"], "+OK\r\n");
    c.cmd(&["ASKING"], "+OK\r\n");
    // A cluster client on one host: every key is here.
    c.cmd(&["GET", "t"], "$1\r\n2\r\n");
    c.cmd(
        &["MGET", "a", "b"],
        "-CROSSSLOT Keys in request don't hash to the same slot\r\n",
    );
    c.cmd(&["MGET", "{a}1", "{a}2"], "*2\r\n$-1\r\n$-1\r\n");
}

#[test]
fn connection_commands_for_client_libraries() {
    let srv = server();
    let mut c = Conn::open(&srv);
    c.cmd(&["CLIENT", "SETNAME", "app"], "+OK\r\n");
    c.cmd(&["CLIENT", "GETNAME"], "$3\r\napp\r\n");
    c.cmd(&["CLIENT", "SETINFO", "LIB-NAME", "redis-py"], "+OK\r\n");
    c.cmd(
        &["CLIENT", "SETNAME", "a b"],
        "-ERR Client names cannot contain spaces, newlines or special characters.\r\n",
    );
    c.cmd(
        &["CONFIG", "GET", "databases"],
        "*2\r\n$9\r\ndatabases\r\n$2\r\n16\r\n",
    );
    c.cmd(
        &["CONFIG", "GET", "replica-read-only"],
        "*2\r\n$17\r\nreplica-read-only\r\n$3\r\nyes\r\n",
    );
    c.cmd(&["ECHO", "x"], "$1\r\nx\r\n");
    let count = c.read_reply_of(&["COMMAND", "COUNT"]);
    assert!(count.starts_with(b":"));
    let cmd = String::from_utf8(c.read_reply_of(&["COMMAND", "INFO", "get"])).unwrap();
    assert_eq!(
        cmd,
        "*1\r\n*10\r\n$3\r\nget\r\n:2\r\n*2\r\n+readonly\r\n+fast\r\n:1\r\n:1\r\n:1\r\n*0\r\n*0\r\n*0\r\n*0\r\n"
    );
    c.cmd(&["COMMAND", "DOCS"], "*0\r\n");
    let t = c.read_reply_of(&["TIME"]);
    assert!(t.starts_with(b"*2\r\n$"));
    c.cmd(&["RESET"], "+RESET\r\n");
    c.cmd(&["CLIENT", "GETNAME"], "$-1\r\n");
    c.cmd(&["QUIT"], "+OK\r\n");
    c.expect_closed();
}

#[test]
fn bad_input_closes_only_that_connection() {
    // Every limit set low, by its parameter, so each case below shows that parameter at work.
    let srv = TestServer::start(&[
        ("frame_timeout_ms", "500"),
        ("object_bytes_max", "1024"),
        ("frame_bytes_max", &(1024 + (1 << 20)).to_string()),
        ("resp_multibulk_items_max", "4"),
        ("resp_inline_bytes_max", "128"),
    ]);
    let mut good = Conn::open(&srv);
    good.cmd(&["SET", "keep", "safe"], "+OK\r\n");
    let cases: &[(&[u8], &str)] = &[
        (
            b"*x\r\n",
            "-ERR Protocol error: invalid multibulk length\r\n",
        ),
        (
            b"*1\r\n:5\r\n",
            "-ERR Protocol error: expected '$', got ':'\r\n",
        ),
        // Nesting: a command is one array of bulk strings.
        (
            b"*1\r\n*1\r\n$4\r\nPING\r\n",
            "-ERR Protocol error: expected '$', got '*'\r\n",
        ),
        // More arguments than resp_multibulk_items_max (4).
        (
            b"*5\r\n",
            "-ERR Protocol error: invalid multibulk length\r\n",
        ),
        // A claimed length over object_bytes_max is refused before any byte of it arrives.
        (
            b"*2\r\n$3\r\nSET\r\n$999999999\r\n",
            "-ERR Protocol error: invalid bulk length\r\n",
        ),
        (
            b"*1\r\n$3\r\nGETxx",
            "-ERR Protocol error: expected CRLF after a bulk string\r\n",
        ),
        (
            b"SET \"unbalanced\r\n",
            "-ERR Protocol error: unbalanced quotes in request\r\n",
        ),
    ];
    for (bytes, want) in cases {
        let mut bad = Conn::open(&srv);
        bad.check(bytes, want.as_bytes());
        bad.expect_closed();
    }
    // An inline line over resp_inline_bytes_max (128) without a newline.
    let mut bad = Conn::open(&srv);
    bad.send(&[b'a'; 200]);
    bad.check(b"", b"-ERR Protocol error: too big inline request\r\n");
    bad.expect_closed();
    // Truncated and then silent: closed after frame_timeout_ms.
    let mut slow = Conn::open(&srv);
    slow.send(b"*2\r\n$3\r\nGET\r\n$4\r\nke");
    slow.expect_closed();
    // A bulk at object_bytes_max (1024) is accepted: the limit is the claim, not less.
    good.cmd(&["SET", "big", &"x".repeat(1024)], "+OK\r\n");
    // A transaction travels as one frame: its queued commands are bounded by frame_bytes_max
    // less 1 MiB (here 1024 bytes), refused when queued, never half-run.
    good.cmd(&["MULTI"], "+OK\r\n");
    good.cmd(&["SET", "keep", &"y".repeat(600)], "+QUEUED\r\n");
    let e = good.call(&["SET", "keep", &"z".repeat(600)]);
    assert!(
        e.starts_with("-ERR the transaction's queued commands exceed 1024 bytes"),
        "{e}"
    );
    good.cmd(
        &["EXEC"],
        "-EXECABORT Transaction discarded because of previous errors.\r\n",
    );
    // A native client on the same port, and the good connection, are unaffected.
    good.cmd(&["GET", "keep"], "$4\r\nsafe\r\n");
    let native = srv.blocking_client();
    assert_eq!(
        native
            .namespace("redis-0")
            .unwrap()
            .read("keep")
            .unwrap()
            .value,
        b"safe"
    );
}

#[test]
fn resp_port_serves_resp_only() {
    let port = common::free_port();
    let srv = TestServer::start(&[("resp_port", &port.to_string())]);
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect resp_port");
    s.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
    let mut c = Conn { s };
    // Even "GS" first is RESP here (an inline command).
    c.check(
        b"GS\r\n",
        b"-ERR unknown command 'GS', with args beginning with: \r\n",
    );
    c.cmd(&["SET", "k", "v"], "+OK\r\n");
    let mut d = Conn::open(&srv);
    d.cmd(&["GET", "k"], "$1\r\nv\r\n");
}

// ---- transactions and RENAME on a host of several shards ---------------------------------------

/// A `{hash tag}` whose keys live on `shard` of a host of `shards` shards.
fn tag_on_shard(shard: usize, shards: usize) -> String {
    use stategrid_proto::hash::redis_ns;
    use stategrid_proto::{key_hash, owner_shard, partition_of};
    (0..)
        .map(|i| format!("{{t{i}}}"))
        .find(|t| owner_shard(partition_of(key_hash(redis_ns(0), t.as_bytes())), shards) == shard)
        .unwrap()
}

/// A connection lands on one of the host's 2 shards; its transactions on both shards' keys
/// run whole where the keys are (one of the two is always another shard than the
/// connection's), WATCH included, in RESP2 and RESP3.
#[test]
fn transactions_run_whole_on_the_keys_shard() {
    let srv = TestServer::start(&[("shards", "2")]);
    let mut c = Conn::open(&srv);
    let mut other = Conn::open(&srv);
    for shard in 0..2 {
        let t = tag_on_shard(shard, 2);
        let k = |s: &str| format!("{t}{s}");
        c.cmd(&["MULTI"], "+OK\r\n");
        c.cmd(&["SET", &k("a"), "1"], "+QUEUED\r\n");
        c.cmd(&["INCR", &k("n")], "+QUEUED\r\n");
        c.cmd(&["INCR", &k("n")], "+QUEUED\r\n");
        c.cmd(&["HSET", &k("h"), "f", "v"], "+QUEUED\r\n");
        c.cmd(&["MGET", &k("a"), &k("n")], "+QUEUED\r\n");
        c.cmd(&["PING"], "+QUEUED\r\n");
        c.cmd(
            &["EXEC"],
            "*6\r\n+OK\r\n:1\r\n:2\r\n:1\r\n*2\r\n$1\r\n1\r\n$1\r\n2\r\n+PONG\r\n",
        );
        other.cmd(&["GET", &k("n")], "$1\r\n2\r\n");
        // An error inside EXEC is that command's reply; the others apply (as in Redis).
        c.cmd(&["MULTI"], "+OK\r\n");
        c.cmd(&["SET", &k("b"), "x"], "+QUEUED\r\n");
        c.cmd(&["HGET", &k("b"), "f"], "+QUEUED\r\n");
        c.cmd(&["SET", &k("c"), "y"], "+QUEUED\r\n");
        c.cmd(
            &["EXEC"],
            "*3\r\n+OK\r\n-WRONGTYPE Operation against a key holding the wrong kind of value\r\n+OK\r\n",
        );
        other.cmd(&["GET", &k("c")], "$1\r\ny\r\n");
        // WATCH: a change by another connection aborts; none lets it run.
        c.cmd(&["WATCH", &k("w"), &k("a")], "+OK\r\n");
        other.cmd(&["SET", &k("w"), "theirs"], "+OK\r\n");
        c.cmd(&["MULTI"], "+OK\r\n");
        c.cmd(&["SET", &k("w"), "mine"], "+QUEUED\r\n");
        c.cmd(&["EXEC"], "*-1\r\n");
        c.cmd(&["GET", &k("w")], "$6\r\ntheirs\r\n");
        c.cmd(&["WATCH", &k("w")], "+OK\r\n");
        c.cmd(&["MULTI"], "+OK\r\n");
        c.cmd(&["SET", &k("w"), "mine"], "+QUEUED\r\n");
        c.cmd(&["EXEC"], "*1\r\n+OK\r\n");
        c.cmd(&["GET", &k("w")], "$4\r\nmine\r\n");
        // A watched key that does not exist and is then created counts as changed.
        c.cmd(&["WATCH", &k("new")], "+OK\r\n");
        other.cmd(&["SET", &k("new"), "1"], "+OK\r\n");
        c.cmd(&["MULTI"], "+OK\r\n");
        c.cmd(&["GET", &k("new")], "+QUEUED\r\n");
        c.cmd(&["EXEC"], "*-1\r\n");
        // RESP3: replies inside EXEC take the connection's protocol (a map for HGETALL).
        let _ = c.read_reply_of(&["HELLO", "3"]);
        c.cmd(&["MULTI"], "+OK\r\n");
        c.cmd(&["HGETALL", &k("h")], "+QUEUED\r\n");
        c.cmd(&["GET", &k("none")], "+QUEUED\r\n");
        c.cmd(&["EXEC"], "*2\r\n%1\r\n$1\r\nf\r\n$1\r\nv\r\n_\r\n");
        let _ = c.read_reply_of(&["HELLO", "2"]);
    }
    // Keys on two shards: refused whole, nothing applied.
    let (t0, t1) = (tag_on_shard(0, 2), tag_on_shard(1, 2));
    c.cmd(&["MULTI"], "+OK\r\n");
    c.cmd(&["SET", &format!("{t0}x"), "1"], "+QUEUED\r\n");
    c.cmd(&["SET", &format!("{t1}x"), "1"], "+QUEUED\r\n");
    let e = c.call(&["EXEC"]);
    assert!(
        e.starts_with("-CROSSSLOT Keys in request don't hash to the same slot")
            && e.contains("{hash tag}"),
        "{e}"
    );
    other.cmd(&["EXISTS", &format!("{t0}x"), &format!("{t1}x")], ":0\r\n");
}

/// Isolation: while another connection increments a counter as fast as it can, every
/// transaction `GET n; INCR n; GET n` sees its own increment and nothing else in between.
#[test]
fn a_transaction_is_isolated_from_concurrent_writers() {
    let srv = TestServer::start(&[("shards", "2")]);
    let t = tag_on_shard(1, 2);
    let n = format!("{t}n");
    let addr = srv.addr.to_string();
    let writer_key = n.clone();
    let writer = std::thread::spawn(move || {
        let mut w = Conn::connect(&addr);
        // Pipelined in batches: many increments land between any two transactions.
        for _ in 0..40 {
            let batch: Vec<u8> = (0..50).flat_map(|_| mb(&["INCR", &writer_key])).collect();
            w.send(&batch);
            for _ in 0..50 {
                let r = w.read_reply();
                assert!(r.starts_with(b":"), "{}", String::from_utf8_lossy(&r));
            }
        }
    });
    let mut c = Conn::open(&srv);
    for _ in 0..200 {
        let mut tx = mb(&["MULTI"]);
        tx.extend(mb(&["GET", &n]));
        tx.extend(mb(&["INCR", &n]));
        tx.extend(mb(&["GET", &n]));
        tx.extend(mb(&["EXEC"]));
        c.send(&tx);
        for _ in 0..4 {
            c.read_reply(); // +OK and three +QUEUED
        }
        let r = String::from_utf8(c.read_reply()).unwrap();
        let parts: Vec<&str> = r.split("\r\n").collect();
        // *3, $len, before, :after, $len, after
        let before: i64 = if parts[1] == "$-1" {
            0
        } else {
            parts[2].parse().unwrap()
        };
        let incr: i64 = parts[parts.len() - 4][1..].parse().unwrap();
        let after: i64 = parts[parts.len() - 2].parse().unwrap();
        assert_eq!(incr, before + 1, "{r}");
        assert_eq!(after, incr, "{r}");
    }
    writer.join().unwrap();
}

/// RENAME and RENAMENX: the value, its kind and its TTL move in one step when both names are
/// served together; names on different shards are refused naming hash tags; native locks hold.
#[test]
fn rename_moves_value_and_ttl_in_one_step() {
    let srv = TestServer::start(&[("shards", "2")]);
    let mut c = Conn::open(&srv);
    for shard in 0..2 {
        let t = tag_on_shard(shard, 2);
        let k = |s: &str| format!("{t}{s}");
        c.cmd(&["SET", &k("a"), "v", "EX", "100"], "+OK\r\n");
        c.cmd(&["RENAME", &k("a"), &k("b")], "+OK\r\n");
        c.cmd(&["GET", &k("a")], "$-1\r\n");
        c.cmd(&["GET", &k("b")], "$1\r\nv\r\n");
        let ttl = c.call(&["TTL", &k("b")]);
        assert!(
            ttl == ":100\r\n" || ttl == ":99\r\n",
            "the TTL moved: {ttl}"
        );
        c.cmd(&["HSET", &k("h"), "f", "v"], ":1\r\n");
        c.cmd(&["RENAME", &k("h"), &k("b")], "+OK\r\n");
        c.cmd(&["TYPE", &k("b")], "+hash\r\n");
        c.cmd(&["TTL", &k("b")], ":-1\r\n");
        c.cmd(&["SET", &k("c"), "x"], "+OK\r\n");
        c.cmd(&["RENAMENX", &k("b"), &k("c")], ":0\r\n");
        c.cmd(&["RENAMENX", &k("b"), &k("d")], ":1\r\n");
        c.cmd(&["HGET", &k("d"), "f"], "$1\r\nv\r\n");
        c.cmd(&["RENAME", &k("d"), &k("d")], "+OK\r\n");
        c.cmd(&["RENAME", &k("nothing"), &k("x")], "-ERR no such key\r\n");
        c.cmd(
            &["RENAMENX", &k("nothing"), &k("x")],
            "-ERR no such key\r\n",
        );
        // A native lock on either name refuses it and changes nothing.
        let token = String::from_utf8(c.read_reply_of(&["SG.LOCK", &k("c")])).unwrap();
        assert!(token.starts_with('$'), "{token}");
        let e = c.call(&["RENAME", &k("c"), &k("e")]);
        assert!(e.starts_with("-LOCKED"), "{e}");
        let e = c.call(&["RENAME", &k("d"), &k("c")]);
        assert!(e.starts_with("-LOCKED"), "{e}");
        c.cmd(&["EXISTS", &k("c"), &k("d"), &k("e")], ":2\r\n");
    }
    let (t0, t1) = (tag_on_shard(0, 2), tag_on_shard(1, 2));
    c.cmd(&["SET", &format!("{t0}s"), "v"], "+OK\r\n");
    let e = c.call(&["RENAME", &format!("{t0}s"), &format!("{t1}s")]);
    assert!(
        e.starts_with("-CROSSSLOT Keys in request don't hash to the same slot")
            && e.contains("{hash tag}"),
        "{e}"
    );
    c.cmd(&["GET", &format!("{t0}s")], "$1\r\nv\r\n");
    c.cmd(
        &["RENAME", "a"],
        "-ERR wrong number of arguments for 'rename' command\r\n",
    );
}

/// With several shards, a pipeline mixes commands the connection's shard serves itself (the
/// direct path) with commands another shard serves (forwarded as native requests): every
/// reply still comes back in request order, including direct answers that wait behind a
/// forwarded one, multi-key commands spread over both shards, TTL and a key over
/// `key_bytes_max`.
#[test]
fn pipelines_mixing_own_and_other_shards_answer_in_order() {
    let srv = TestServer::start(&[("shards", "2"), ("key_bytes_max", "64")]);
    for conn in 0..4 {
        // Connections land on either shard; a few of them cover both cases.
        let mut c = Conn::open(&srv);
        let keys: Vec<String> = (0..64).map(|i| format!("order:{conn}:{i}")).collect();
        let mut cmds = Vec::new();
        let mut want = String::new();
        for (i, k) in keys.iter().enumerate() {
            let v = format!("value-{i}-{}", "x".repeat(i * 16));
            cmds.push(mb(&["SET", k, &v]));
            want.push_str("+OK\r\n");
            cmds.push(mb(&["GET", k]));
            want.push_str(&format!("${}\r\n{v}\r\n", v.len()));
            cmds.push(mb(&["TTL", k]));
            want.push_str(":-1\r\n");
            cmds.push(mb(&["EXPIRE", k, "1000"]));
            want.push_str(":1\r\n");
            cmds.push(mb(&["HSET", &format!("h{k}"), "f", &v]));
            want.push_str(":1\r\n");
            cmds.push(mb(&["HGET", &format!("h{k}"), "f"]));
            want.push_str(&format!("${}\r\n{v}\r\n", v.len()));
        }
        let refs: Vec<&str> = keys.iter().map(|k| k.as_str()).collect();
        cmds.push(mb(&[&["EXISTS"][..], &refs].concat()));
        want.push_str(&format!(":{}\r\n", keys.len()));
        cmds.push(mb(&[&["MGET"][..], &refs[..3], &["order:none"]].concat()));
        want.push_str("*4\r\n$8\r\nvalue-0-\r\n$24\r\nvalue-1-xxxxxxxxxxxxxxxx\r\n");
        want.push_str(&format!("$40\r\nvalue-2-{}\r\n$-1\r\n", "x".repeat(32)));
        let long = "k".repeat(65);
        cmds.push(mb(&["SET", &long, "v"]));
        want.push_str("-ERR key is longer than key_bytes_max (64 bytes); use a shorter key\r\n");
        cmds.push(mb(&["GET", &long]));
        want.push_str("-ERR key is longer than key_bytes_max (64 bytes); use a shorter key\r\n");
        cmds.push(mb(&[&["DEL"][..], &refs].concat()));
        want.push_str(&format!(":{}\r\n", keys.len()));
        cmds.push(mb(&["GET", &keys[0]]));
        want.push_str("$-1\r\n");
        c.check(&cmds.concat(), want.as_bytes());
    }
}

/// Reading a 1 KiB string over RESP on the shard that holds it allocates nothing while it is
/// served (the value goes to sendmsg by reference), and a SET of an existing key allocates
/// once per write (the store's copy of the value): the Redis protocol's hot path keeps the
/// native path's allocation-free read. Counted by the shard (`serve_allocations`); what two
/// back-to-back stats requests cost is subtracted.
#[test]
fn resp_reads_do_not_allocate_and_writes_allocate_once() {
    let srv = server();
    let client = srv.blocking_client();
    let mut c = Conn::open(&srv);
    let value = "v".repeat(1024);
    c.cmd(&["SET", "obj", &value], "+OK\r\n");
    let n = 2000;
    let gets = mb(&["GET", "obj"]).repeat(n);
    let one = format!("$1024\r\n{value}\r\n");
    let sets = mb(&["SET", "obj", &value]).repeat(n);
    let stats = || client.stats().expect("stats").serve_allocations;
    let get_all = |c: &mut Conn| {
        c.send(&gets);
        let got = c.read_n(one.len() * n);
        assert!(got == one.repeat(n).as_bytes(), "GET answers");
    };
    let set_all = |c: &mut Conn| c.check(&sets, "+OK\r\n".repeat(n).as_bytes());
    // Warm up: buffers grow to their steady size on first use.
    for _ in 0..4 {
        get_all(&mut c);
        set_all(&mut c);
        stats();
    }
    let a0 = stats();
    let a1 = stats();
    get_all(&mut c);
    let a2 = stats();
    set_all(&mut c);
    let a3 = stats();
    let (stats_only, gets_cost, sets_cost) = (a1 - a0, a2 - a1, a3 - a2);
    println!("allocations: stats alone {stats_only}, {n} GETs {gets_cost}, {n} SETs {sets_cost}");
    assert!(
        gets_cost <= stats_only + 2,
        "{n} GETs allocated {} times while being served",
        gets_cost - stats_only
    );
    assert!(
        sets_cost <= stats_only + n as u64 + 2,
        "{n} SETs allocated {} times while being served (one each expected)",
        sets_cost - stats_only
    );
}
