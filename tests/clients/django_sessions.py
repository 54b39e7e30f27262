"""Django sessions on the django-redis cache backend, with the server as the Redis.

usage: django_sessions.py HOST PORT

Minimal settings configured in-process; the session engine is
`django.contrib.sessions.backends.cache`, so every session operation is a django-redis call
(SET .. EX .. NX on create, GET, SET on save, DEL on flush, EXPIRE by cache.touch). Checks
create, read from a second SessionStore, modify, flush, expiry, and the cache API the sessions
sit on (add/get_many/set_many/incr/touch/ttl).
"""

import os
import time

import django
import redis
from django.conf import settings

from check import eq, true, target

host, port = target()
PREFIX = "djtest"
settings.configure(
    SECRET_KEY="test",
    INSTALLED_APPS=["django.contrib.sessions"],
    SESSION_ENGINE="django.contrib.sessions.backends.cache",
    CACHES={
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": f"redis://{host}:{port}/0",
            "KEY_PREFIX": PREFIX,
            "OPTIONS": {"CLIENT_CLASS": "django_redis.client.DefaultClient"},
        }
    },
)
django.setup()

from django.contrib.sessions.backends.cache import SessionStore  # noqa: E402  (needs setup)
from django.core.cache import cache  # noqa: E402

store = redis.Redis(host=host, port=port, socket_timeout=10)


def raw_key(session_key):
    """The key django-redis writes for a session: <prefix>:<version>:<session key prefix><sid>."""
    return f"{PREFIX}:1:django.contrib.sessions.cache{session_key}"


# --- create and read ------------------------------------------------------------------------
s = SessionStore()
s["user"] = "alice"
s["cart"] = [1, 2, 3]
s.set_expiry(300)
s.save()
sid = s.session_key
true("session key assigned", sid is not None and len(sid) > 8)
eq("session stored in the server", store.exists(raw_key(sid)), 1)
ttl = store.ttl(raw_key(sid))
true("session TTL from set_expiry", 295 <= ttl <= 300, f"ttl={ttl}")

read = SessionStore(session_key=sid)
eq("read from another SessionStore", (read["user"], read["cart"]), ("alice", [1, 2, 3]))

# --- modify ---------------------------------------------------------------------------------
read["cart"] = read["cart"] + [4]
read["user"] = "alice2"
read.save()
again = SessionStore(session_key=sid)
eq("modified session read back", (again["user"], again["cart"]), ("alice2", [1, 2, 3, 4]))
eq("exists", SessionStore().exists(sid), True)

# --- flush ----------------------------------------------------------------------------------
again.flush()
eq("flushed session gone from the server", store.exists(raw_key(sid)), 0)
eq("exists after flush", SessionStore().exists(sid), False)
eq("flushed session reads empty", dict(SessionStore(session_key=sid).items()), {})

# --- expiry ---------------------------------------------------------------------------------
short = SessionStore()
short["x"] = 1
short.set_expiry(1)
short.save()
eq("short session readable", SessionStore(session_key=short.session_key).get("x"), 1)
time.sleep(2.0)
eq("expired session gone from the server", store.exists(raw_key(short.session_key)), 0)
eq("expired session reads empty", SessionStore(session_key=short.session_key).get("x"), None)

# --- the cache API under the sessions ----------------------------------------------------------
eq("add new", cache.add("a", {"v": 1}, timeout=100), True)
eq("add existing", cache.add("a", {"v": 2}, timeout=100), False)
eq("get pickled", cache.get("a"), {"v": 1})
# set_many is one MULTI/EXEC (SET + EXPIRE per key): its keys share a hash tag so that it is
# atomic on a store of several hosts, as it must on Redis Cluster (stategrid refuses a
# transaction over keys of different partitions rather than run it non-atomically).
m1, m2 = "{m}1", "{m}2"
cache.set_many({m1: "x", m2: 7}, timeout=100)
eq("get_many", cache.get_many([m1, m2, "nothing"]), {m1: "x", m2: 7})
eq("incr", cache.incr(m2, 3), 10)
eq("ttl", 95 <= cache.ttl(m1) <= 100, True)
eq("touch", cache.touch(m1, 500), True)
eq("ttl after touch", 495 <= cache.ttl(m1) <= 500, True)
eq("persist", cache.persist(m1), True)
eq("ttl after persist", cache.ttl(m1), None)
eq("delete", cache.delete("a"), True)
eq("get deleted", cache.get("a", "default"), "default")
if "keyspace" in os.environ.get("SKIP", "").split(","):
    # cache.keys is a SCAN: through one host of a store of several it lists that host's keys.
    print("SKIPPED checks: keyspace (cache.keys) (see docs/redis.md)")
else:
    eq("keys by pattern", sorted(cache.keys("{m}*")), [m1, m2])
cache.delete_many([m1, m2])
eq("delete_many", cache.get_many([m1, m2]), {})

print("django_sessions: all checks passed")
