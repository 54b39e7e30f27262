"""Acknowledged writes through redis-py's cluster client survive `kill -9` of a host.

usage: redis_py_failover.py HOST:PORT[,HOST:PORT...] [after_kill_writes]

Writes under load through `RedisCluster` (startup nodes: every host given), recording per key
the last step the server acknowledged. Protocol with the driver (tests/resp_clients.rs), which
kills a host in the middle:
  - prints `LOADED` once 2,000 writes are acknowledged, and keeps writing;
  - the driver kills a host, then writes a line to this program's stdin;
  - this program keeps writing until `after_kill_writes` (default 2,000) more are acknowledged,
    then reads every key back: each must hold its last acknowledged step, or a later step that
    was sent but whose answer was lost (never an older one, never a missing key).
Errors during the failover (connection refused, timeouts, MOVED storms, TRYAGAIN,
CLUSTERDOWN) are retried: they are expected; a lost acknowledged write is not.
With stdin at end of file already (no driver), nothing is killed and the checks still run.
"""

import sys
import threading
import time

import redis
from redis.cluster import ClusterNode, RedisCluster

KEYS = 500
LOADED_AFTER = 2_000
DEADLINE_S = 90  # the whole run; a store that never serves again fails here

nodes = [ClusterNode(h, int(p)) for h, p in (a.rsplit(":", 1) for a in sys.argv[1].split(","))]
after_kill_writes = int(sys.argv[2]) if len(sys.argv) > 2 else 2_000
started = time.monotonic()


def fail(msg):
    print(f"FAIL {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def connect():
    while True:
        try:
            return RedisCluster(startup_nodes=nodes, socket_timeout=5, socket_connect_timeout=2)
        except redis.RedisError as e:
            if time.monotonic() - started > DEADLINE_S:
                fail(f"cannot connect to the store: {e!r}")
            time.sleep(0.1)


killed = threading.Event()


def wait_for_driver():
    sys.stdin.readline()  # a line, or end of file
    killed.set()


threading.Thread(target=wait_for_driver, daemon=True).start()

rc = connect()
acked = {}  # key -> last acknowledged step
sent = {}  # key -> last step sent (acknowledged or not)
errors = {}  # error class -> count
step = 0
loaded_printed = False
acked_after_kill = 0
while acked_after_kill < after_kill_writes:
    if time.monotonic() - started > DEADLINE_S:
        fail(f"only {acked_after_kill} writes acknowledged after the kill in {DEADLINE_S} s; "
             f"errors {errors}")
    step += 1
    key = f"fo:{step % KEYS}"
    sent[key] = step
    try:
        ok = rc.set(key, str(step))
    except (redis.RedisError, OSError) as e:
        name = type(e).__name__
        errors[name] = errors.get(name, 0) + 1
        time.sleep(0.02)
        continue
    if ok is not True:
        fail(f"SET {key} {step} answered {ok!r}")
    acked[key] = step
    if killed.is_set():
        acked_after_kill += 1
    if not loaded_printed and len(acked) == KEYS and step >= LOADED_AFTER:
        print("LOADED", flush=True)
        loaded_printed = True

print(f"writes sent {step}, keys {len(acked)}, retryable errors {errors}", flush=True)


def read(key):
    for _ in range(100):
        try:
            return rc.get(key)
        except (redis.RedisError, OSError):
            time.sleep(0.05)
    fail(f"GET {key} kept failing")


lost = []
for key, step_acked in sorted(acked.items()):
    got = read(key)
    if got is None or not (step_acked <= int(got) <= sent[key]):
        lost.append((key, step_acked, sent[key], got))
if lost:
    fail(f"{len(lost)} acknowledged writes lost (key, acked step, last sent step, read): {lost[:10]}")
print(f"redis_py_failover: all {len(acked)} keys hold their last acknowledged write", flush=True)
