"""redis-py's cluster client (`redis.cluster.RedisCluster`) against a store of several hosts.

usage: redis_py_cluster.py HOST PORT [anywhere]

HOST:PORT is one startup node; the client discovers the others with CLUSTER SLOTS and routes
each key to the primary of its slot (CRC16 of the key or of its {hash tag}, mod 16384). Checks:
every primary is discovered and receives keys, each key reads back through the cluster client
and through a plain connection to the node owning its slot, hash-tagged pipelines with and
without a transaction, MOVED-free multi-key commands within one slot, and CROSSSLOT for
multi-key commands across slots.

With `anywhere` (stategrid only: a plain connection is relayed by the host to the key's primary)
every key is also read through a plain connection to every node. Redis Cluster answers -MOVED
there instead, so that check is not made against it.
"""

import sys

import redis
from redis.cluster import RedisCluster

from check import eq, raises, target, true

host, port = target()
anywhere = "anywhere" in sys.argv[3:]
N = 300

rc = RedisCluster(host=host, port=port, socket_timeout=10)
primaries = rc.get_primaries()
print("primaries:", sorted(n.name for n in primaries))
eq("three primaries discovered", len(primaries), 3)

keys = [f"cl:{i}" for i in range(N)]
tag = "{cart42}"
tagged = [tag + s for s in ("a", "b", "n", "h", "x", "y")]
for k in tagged:  # left by an earlier, failed run
    rc.delete(k)
for i, k in enumerate(keys):
    rc.set(k, f"v{i}")
    rc.hset(f"clh:{i}", mapping={"i": str(i), "name": k})

# Keys spread over every primary (CRC16 puts 300 keys on all three with near certainty).
by_node = {}
for k in keys:
    by_node.setdefault(rc.get_node_from_key(k).name, []).append(k)
eq("keys routed to every primary", sorted(by_node), sorted(n.name for n in primaries))
for name, ks in by_node.items():
    print(f"  {name}: {len(ks)} keys")

eq("every key reads back through the cluster client", [rc.get(k) for k in keys],
   [f"v{i}".encode() for i in range(N)])
eq("every hash reads back", [rc.hget(f"clh:{i}", "i") for i in range(N)],
   [str(i).encode() for i in range(N)])

# A plain connection to the node owning the slot serves the key without redirection.
plain = {n.name: redis.Redis(host=n.host, port=n.port, socket_timeout=10) for n in primaries}
for name, ks in by_node.items():
    eq(f"owner {name} serves its keys to a plain client", [plain[name].get(k) for k in ks],
       [f"v{keys.index(k)}".encode() for k in ks])

if anywhere:
    for name, conn in plain.items():
        eq(f"plain client on {name} reads every key (relayed)", [conn.get(k) for k in keys],
           [f"v{i}".encode() for i in range(N)])

# SCAN through the cluster client visits every primary: each key once over the whole store.
eq("cluster scan sees every key", sorted(rc.scan_iter(match="cl:*", count=50)),
   sorted(k.encode() for k in keys))

eq("keyslot is Redis's CRC16", rc.keyslot("foo"), 12182)
eq("hash tag decides the slot", rc.keyslot("{user1}.a"), rc.keyslot("{user1}.b"))

# Hash-tagged pipelines: every key in one slot, so one node.
pipe = rc.pipeline()
pipe.set(tag + "a", "1").incr(tag + "n").incr(tag + "n").hset(tag + "h", "f", "v").get(tag + "a")
eq("cluster pipeline without transaction", pipe.execute(), [True, 1, 2, 1, b"1"])
pipe = rc.pipeline(transaction=True)
pipe.incr(tag + "n").set(tag + "b", "2").hget(tag + "h", "f").get(tag + "b")
eq("cluster pipeline with transaction (MULTI/EXEC)", pipe.execute(), [3, b"OK", b"v", b"2"])  # redis-py leaves SET raw in a cluster MULTI

# A non-transactional pipeline over many slots is split per node by the client.
pipe = rc.pipeline()
for k in keys[:50]:
    pipe.get(k)
eq("pipeline across nodes", pipe.execute(), [f"v{i}".encode() for i in range(50)])

eq("mset within one slot", rc.mset_nonatomic({tag + "x": "1", tag + "y": "2"}), [True])
eq("mget within one slot", rc.execute_command("MGET", tag + "x", tag + "y"), [b"1", b"2"])
# Sent as one command to one node by a connection in cluster mode (it asked CLUSTER SLOTS, as
# cluster clients do), keys of different slots are refused as Redis Cluster does.
node = rc.get_node_from_key("cl:0")
owner = redis.Redis(host=node.host, port=node.port, socket_timeout=10, single_connection_client=True)
true("cluster slots on the owner", len(owner.execute_command("CLUSTER", "SLOTS")) >= 3)
raises("multi-key command across slots", redis.exceptions.ClusterCrossSlotError, owner.execute_command,
       "MSET", "cl:0", "a", "cl:1", "b")
true("cross-slot refusal changed nothing", rc.get("cl:0") == b"v0" and rc.get("cl:1") == b"v1")

eq("delete routed", sum(rc.delete(k) for k in keys), N)
eq("deleted keys gone", [rc.exists(k) for k in keys[:20]], [0] * 20)
for i in range(N):
    rc.delete(f"clh:{i}")
rc.delete(*tagged)
rc.close()
print("redis_py_cluster: all checks passed")
