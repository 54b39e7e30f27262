"""redis-py (plain `redis.Redis`) against one address: strings, keys, hashes, SELECT, pipelines
with and without MULTI/EXEC, WATCH, and the errors Redis answers.

usage: redis_py_plain.py HOST PORT [PROTOCOL]   (PROTOCOL 2 or 3; redis-py 8 defaults to 3)

SKIP (environment, comma-separated) leaves out checks of what stategrid documents as not done
yet, so the rest still runs against it: `rename` (RENAME), `watch` (WATCH), `scan-type`
(SCAN .. TYPE), `keyspace` (SCAN/KEYS listing every key: on a store of several hosts they list
the host asked, as a Redis Cluster node does; the cluster client's SCAN covers the store),
`transactions` (MULTI/EXEC). Each name stays accepted so older runners keep working.
Every skip is printed; tests/resp_clients.rs runs the full program too.

Keys live under a per-run prefix so the program can run twice against one server; every value
asserted is the one a real redis-server gives (tests/resp_clients.rs runs this against both).
"""

import os
import sys
import time
import warnings

import redis

from check import eq, fail, raises, target, true

# redis-py marks SETEX deprecated; session handlers still send it, so it is tested here.
warnings.filterwarnings("ignore", category=DeprecationWarning)

host, port = target()
protocol = int(sys.argv[3]) if len(sys.argv) > 3 else 3
p = f"py{os.getpid()}:"  # per-run key prefix
skip = {s for s in os.environ.get("SKIP", "").split(",") if s}
for s in sorted(skip):
    print(f"SKIPPED checks: {s} (see docs/redis.md)")

r = redis.Redis(host=host, port=port, protocol=protocol, socket_timeout=10)
eq("ping", r.ping(), True)

# --- strings --------------------------------------------------------------------------------
k = p + "s"
eq("set", r.set(k, "v1"), True)
eq("get", r.get(k), b"v1")
eq("set nx on existing", r.set(k, "v2", nx=True), None)
eq("get after nx", r.get(k), b"v1")
eq("set xx on missing", r.set(p + "missing", "x", xx=True), None)
eq("exists after xx", r.exists(p + "missing"), 0)
eq("set xx on existing", r.set(k, "v2", xx=True), True)
eq("set get", r.set(k, "v3", get=True), b"v2")
eq("get after set get", r.get(k), b"v3")
eq("set ex", r.set(k, "v4", ex=100), True)
ttl = r.ttl(k)
true("ttl after set ex", 98 <= ttl <= 100, f"ttl={ttl}")
eq("set keepttl", r.set(k, "v5", keepttl=True), True)
ttl = r.ttl(k)
true("ttl kept", 95 <= ttl <= 100, f"ttl={ttl}")
eq("set without keepttl clears ttl", r.set(k, "v6"), True)
eq("ttl cleared", r.ttl(k), -1)
eq("set px", r.set(k, "v7", px=50_000), True)
pttl = r.pttl(k)
true("pttl after set px", 45_000 <= pttl <= 50_000, f"pttl={pttl}")
eq("getex ex", r.getex(k, ex=200), b"v7")
ttl = r.ttl(k)
true("ttl after getex", 195 <= ttl <= 200, f"ttl={ttl}")
eq("getex persist", r.getex(k, persist=True), b"v7")
eq("ttl after getex persist", r.ttl(k), -1)
eq("getdel", r.getdel(k), b"v7")
eq("get after getdel", r.get(k), None)
eq("getdel missing", r.getdel(k), None)

c = p + "counter"
eq("incr missing", r.incr(c), 1)
eq("incrby", r.incrby(c, 10), 11)
eq("decr", r.decr(c), 10)
eq("decrby", r.decrby(c, 4), 6)
eq("get counter", r.get(c), b"6")
r.set(p + "notnum", "abc")
raises("incr non-integer", redis.ResponseError, r.incr, p + "notnum", contains="not an integer")

a = p + "app"
eq("append missing", r.append(a, "hello"), 5)
eq("append", r.append(a, " world"), 11)
eq("strlen", r.strlen(a), 11)
eq("strlen missing", r.strlen(p + "nothing"), 0)
eq("get appended", r.get(a), b"hello world")
eq("mset", r.mset({p + "m1": "a", p + "m2": "b"}), True)
eq("mget", r.mget([p + "m1", p + "nothing", p + "m2"]), [b"a", None, b"b"])
eq("setex", r.setex(p + "se", 30, "x"), True)
true("ttl after setex", 28 <= r.ttl(p + "se") <= 30)
eq("setnx", r.setnx(p + "se", "y"), False)
eq("binary-safe value", (r.set(p + "bin", b"\x00\r\n\xff"), r.get(p + "bin")), (True, b"\x00\r\n\xff"))

# --- keys -----------------------------------------------------------------------------------
k = p + "k"
r.set(k, "v")
eq("ttl no expiry", r.ttl(k), -1)
eq("ttl missing", r.ttl(p + "nothing"), -2)
eq("pttl missing", r.pttl(p + "nothing"), -2)
eq("expire", r.expire(k, 100), True)
true("ttl", 98 <= r.ttl(k) <= 100)
eq("expire nx when ttl set", r.expire(k, 50, nx=True), False)
eq("expire gt smaller", r.expire(k, 50, gt=True), False)
eq("expire lt smaller", r.expire(k, 50, lt=True), True)
true("ttl after lt", 48 <= r.ttl(k) <= 50)
eq("pexpire", r.pexpire(k, 20_000), True)
true("pttl", 15_000 <= r.pttl(k) <= 20_000)
at = int(time.time()) + 300
eq("expireat", r.expireat(k, at), True)
true("ttl after expireat", 295 <= r.ttl(k) <= 300)
eq("expiretime", r.expiretime(k), at)
eq("persist", r.persist(k), True)
eq("persist again", r.persist(k), False)
eq("ttl after persist", r.ttl(k), -1)
eq("expire missing", r.expire(p + "nothing", 10), False)
eq("type string", r.type(k), b"string")
eq("type none", r.type(p + "nothing"), b"none")
r.hset(p + "h0", "f", "v")
eq("type hash", r.type(p + "h0"), b"hash")

if "rename" not in skip:
    # Both names share a {hash tag}: one partition, hence one atomic step on a store of several
    # hosts too (Redis Cluster has the same rule; stategrid refuses other pairs with CROSSSLOT).
    rk = "{" + p + "ren}"
    r.set(rk + "a", "v", ex=100)
    eq("rename", r.rename(rk + "a", rk + "b"), True)
    eq("old name gone", r.exists(rk + "a"), 0)
    eq("new name", r.get(rk + "b"), b"v")
    true("rename keeps the ttl", 98 <= r.ttl(rk + "b") <= 100)
    r.set(rk + "c", "other")
    eq("renamenx onto an existing key", r.renamenx(rk + "b", rk + "c"), False)
    eq("renamenx to a free name", r.renamenx(rk + "b", rk + "d"), True)
    eq("renamenx moved the value", (r.get(rk + "b"), r.get(rk + "d")), (None, b"v"))
    r.hset(rk + "h", "f", "v")
    eq("rename a hash", r.rename(rk + "h", rk + "h2"), True)
    eq("renamed hash", r.hgetall(rk + "h2"), {b"f": b"v"})
    raises("rename missing", redis.ResponseError, r.rename, rk + "nothing", rk + "x", contains="no such key")

# An expiry actually removes the key.
r.set(p + "short", "x", px=300)
time.sleep(0.8)
eq("expired key gone", r.get(p + "short"), None)
eq("expired key not counted", r.exists(p + "short"), 0)

scan_keys = {f"{p}scan:{i}".encode() for i in range(25)}
for key in scan_keys:
    r.set(key, "1")
if "keyspace" not in skip:
    seen = set(r.scan_iter(match=p + "scan:*", count=7))
    eq("scan match/count sees every key", seen, scan_keys)
    want = {k for k in scan_keys if k.startswith((p + "scan:1").encode())}
    eq("keys pattern", set(r.keys(p + "scan:1*")), want)
if "scan-type" not in skip and "keyspace" not in skip:
    # TYPE filters (Redis 6+): hashes are not strings. A listing of the keyspace, so
    # `keyspace` leaves it out too.
    eq("scan type", set(r.scan_iter(match=p + "*", _type="hash")), {(p + "h0").encode()})
eq("exists counts", r.exists(p + "scan:1", p + "scan:2", p + "nothing", p + "scan:1"), 3)
eq("del", r.delete(p + "scan:1", p + "scan:2", p + "nothing"), 2)
eq("unlink", r.unlink(p + "scan:3", p + "nothing"), 1)
eq("exists after del", r.exists(p + "scan:1", p + "scan:3"), 0)

# --- hashes ---------------------------------------------------------------------------------
h = p + "h"
eq("hset new fields", r.hset(h, mapping={"a": "1", "b": "2"}), 2)
eq("hset update + new", r.hset(h, mapping={"a": "10", "c": "3"}), 1)
eq("hget", r.hget(h, "a"), b"10")
eq("hget missing field", r.hget(h, "zz"), None)
eq("hmget", r.hmget(h, ["a", "zz", "c"]), [b"10", None, b"3"])
eq("hgetall", r.hgetall(h), {b"a": b"10", b"b": b"2", b"c": b"3"})
eq("hlen", r.hlen(h), 3)
eq("hexists", (r.hexists(h, "b"), r.hexists(h, "zz")), (True, False))
eq("hkeys", sorted(r.hkeys(h)), [b"a", b"b", b"c"])
eq("hvals", sorted(r.hvals(h)), [b"10", b"2", b"3"])
eq("hincrby", r.hincrby(h, "n", 5), 5)
eq("hincrby again", r.hincrby(h, "n", -2), 3)
eq("hsetnx existing", r.hsetnx(h, "a", "x"), False)
eq("hsetnx new", r.hsetnx(h, "d", "4"), True)
eq("hdel", r.hdel(h, "a", "zz"), 1)
fields = dict(r.hscan_iter(h, count=2))
eq("hscan", fields, {b"b": b"2", b"c": b"3", b"n": b"3", b"d": b"4"})
eq("hgetall missing", r.hgetall(p + "nothing"), {})
eq("hdel all fields deletes key", r.hdel(h, "b", "c", "n", "d"), 4)
eq("hash gone", r.exists(h), 0)
r.set(p + "str", "x")
raises("hget on string", redis.ResponseError, r.hget, p + "str", "f", contains="WRONGTYPE")
raises("get on hash", redis.ResponseError, r.get, p + "h0", contains="WRONGTYPE")
eq("wrongtype changed nothing", r.get(p + "str"), b"x")

# --- SELECT: databases are separate -------------------------------------------------------------
r1 = redis.Redis(host=host, port=port, db=1, protocol=protocol, socket_timeout=10)
r.set(p + "db", "zero")
eq("db1 does not see db0", r1.get(p + "db"), None)
r1.set(p + "db", "one")
eq("db0 unchanged", r.get(p + "db"), b"zero")
eq("db1 value", r1.get(p + "db"), b"one")
r1.delete(p + "db")
eq("db0 after db1 delete", r.get(p + "db"), b"zero")

# --- pipelines ------------------------------------------------------------------------------
pipe = r.pipeline(transaction=False)
pipe.set(p + "p1", "a").get(p + "p1").incr(p + "p2").incr(p + "p2").hset(p + "p3", "f", "v").hget(p + "p3", "f")
eq("pipeline without transaction", pipe.execute(), [True, b"a", 1, 2, 1, b"v"])

tag = "{" + p + "tx}"
if "transactions" not in skip:
    pipe = r.pipeline(transaction=True)
    pipe.set(tag + "a", "1").incr(tag + "n").incr(tag + "n").hset(tag + "h", "f", "v").get(tag + "a")
    eq("pipeline with transaction (MULTI/EXEC)", pipe.execute(), [True, 1, 2, 1, b"1"])
    eq("transaction applied", (r.get(tag + "n"), r.hget(tag + "h", "f")), (b"2", b"v"))

    # An error inside EXEC is reported for that command only; the others apply (Redis semantics).
    pipe = r.pipeline(transaction=True)
    pipe.set(tag + "b", "x").hget(tag + "b", "f").set(tag + "c", "y")
    try:
        pipe.execute()
        fail("exec with wrongtype inside", "no error raised")
    except redis.ResponseError as e:
        true("exec reports wrongtype", "WRONGTYPE" in str(e), str(e))
    eq("other commands of the transaction applied", (r.get(tag + "b"), r.get(tag + "c")), (b"x", b"y"))

if "watch" not in skip:
    # WATCH: a write by another connection between WATCH and EXEC aborts the transaction.
    other = redis.Redis(host=host, port=port, protocol=protocol, socket_timeout=10)
    r.set(tag + "w", "0")
    with r.pipeline(transaction=True) as pipe:
        pipe.watch(tag + "w")
        eq("watched read", pipe.get(tag + "w"), b"0")
        other.set(tag + "w", "changed")
        pipe.multi()
        pipe.set(tag + "w", "mine")
        raises("watch conflict aborts exec", redis.WatchError, pipe.execute)
    eq("conflicting write kept", r.get(tag + "w"), b"changed")

    # Without a conflict the watched transaction applies.
    with r.pipeline(transaction=True) as pipe:
        pipe.watch(tag + "w")
        pipe.multi()
        pipe.set(tag + "w", "mine")
        eq("watch without conflict", pipe.execute(), [True])
    eq("watched write applied", r.get(tag + "w"), b"mine")

# DISCARD drops the queued commands (by hand: redis-py's pipeline only queues client-side).
d = redis.Redis(host=host, port=port, protocol=protocol, socket_timeout=10, single_connection_client=True)
# execute_command("X") applies redis-py's reply callback for X; INCR has none, so QUEUED shows.
eq("multi", d.execute_command("MULTI"), b"OK")
eq("queued", d.execute_command("INCR", tag + "d"), b"QUEUED")
eq("discard", d.execute_command("DISCARD"), b"OK")
eq("discarded command not applied", r.get(tag + "d"), None)
d.close()

# --- errors ---------------------------------------------------------------------------------
raises("unknown command", redis.ResponseError, r.execute_command, "NOSUCHCOMMAND", "x", contains="unknown command")
raises("wrong arity", redis.ResponseError, r.execute_command, "GET", contains="wrong number of arguments")
eq("connection still usable after errors", r.ping(), True)

print(f"redis_py_plain: all checks passed (protocol {protocol})")
