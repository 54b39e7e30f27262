"""A real Flask app keeping its sessions in the server through Flask-Session's Redis backend.

usage: flask_session_app.py HOST PORT

Requests go through Flask's test client (the full WSGI stack, cookies included); the session
store is the server under test. Checks: a session is created, read back on the next request,
changed, stored under `session:<sid>` with a TTL, destroyed on logout, and gone once its
PERMANENT_SESSION_LIFETIME has passed (the next request then starts an empty session).
"""

import time
from datetime import timedelta

import redis
from flask import Flask, session
from flask_session import Session

from check import eq, true, target

host, port = target()
store = redis.Redis(host=host, port=port, socket_timeout=10)
LIFETIME_S = 2

app = Flask(__name__)
app.config.update(
    SECRET_KEY="test",
    SESSION_TYPE="redis",
    SESSION_REDIS=redis.Redis(host=host, port=port, socket_timeout=10),
    SESSION_PERMANENT=True,
    PERMANENT_SESSION_LIFETIME=timedelta(seconds=LIFETIME_S),
)
Session(app)


@app.route("/login/<user>")
def login(user):
    session["user"] = user
    session["visits"] = 0
    return "ok"


@app.route("/visit")
def visit():
    if "user" not in session:
        return "anonymous"
    session["visits"] += 1
    return f"{session['user']}:{session['visits']}"


@app.route("/logout")
def logout():
    session.clear()
    return "bye"


def session_key(client):
    cookie = client.get_cookie("session")
    true("session cookie set", cookie is not None)
    return f"session:{cookie.value}"


alice = app.test_client()
bob = app.test_client()
eq("no session yet", alice.get("/visit").text, "anonymous")
eq("login", alice.get("/login/alice").text, "ok")
key = session_key(alice)
eq("session stored in the server", store.exists(key), 1)
ttl = store.ttl(key)
true("session has the lifetime as TTL", 0 < ttl <= LIFETIME_S, f"ttl={ttl}")
eq("session read back", alice.get("/visit").text, "alice:1")
eq("session changed", alice.get("/visit").text, "alice:2")

eq("second user", bob.get("/login/bob").text, "ok")
eq("second user's session is its own", bob.get("/visit").text, "bob:1")
eq("first user unaffected", alice.get("/visit").text, "alice:3")
bob_key = session_key(bob)
true("two session keys", bob_key != key)

eq("logout", bob.get("/logout").text, "bye")
eq("after logout", bob.get("/visit").text, "anonymous")

# Expiry: no request for longer than the lifetime; the server drops the key itself.
time.sleep(LIFETIME_S + 1.0)
eq("expired session key gone from the server", store.exists(key), 0)
eq("expired session is empty", alice.get("/visit").text, "anonymous")

print("flask_session_app: all checks passed")
