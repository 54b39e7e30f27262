"""Assertions shared by the Python client programs of tests/clients/.

Each program exits non-zero with a message naming the step, the value the server gave and the
value Redis gives, so a failing Rust test prints exactly what differed.
"""

import os
import sys
import traceback


def _unexpected(exc_type, exc, tb):
    """An exception no check expected (a server error reply, a dropped connection): the
    traceback shows the step's line; the FAIL line says what the server did."""
    traceback.print_exception(exc_type, exc, tb)
    print(f"FAIL unexpected {exc_type.__name__}: {exc}", file=sys.stderr)
    sys.exit(1)


sys.excepthook = _unexpected


def target():
    """(host, port) to test, from argv[1:3] or REDIS_HOST / REDIS_PORT."""
    host = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("REDIS_HOST", "127.0.0.1")
    port = int(sys.argv[2] if len(sys.argv) > 2 else os.environ.get("REDIS_PORT", "6379"))
    return host, port


def fail(step, message):
    print(f"FAIL {step}: {message}", file=sys.stderr)
    sys.exit(1)


def eq(step, got, want):
    """Asserts got == want (the value Redis answers)."""
    if got != want:
        fail(step, f"got {got!r}, want {want!r}")
    print(f"ok   {step}")


def true(step, cond, detail=""):
    if not cond:
        fail(step, f"condition false {detail}")
    print(f"ok   {step}")


def raises(step, exc_type, fn, *args, contains=None):
    """Asserts fn(*args) raises exc_type whose message contains `contains` (case-insensitive)."""
    try:
        got = fn(*args)
    except exc_type as e:
        if contains is not None and contains.lower() not in str(e).lower():
            fail(step, f"error {e!r} does not mention {contains!r}")
        print(f"ok   {step} ({type(e).__name__}: {e})")
        return e
    except Exception as e:  # a different error class is a mismatch too
        fail(step, f"raised {type(e).__name__}: {e!r}, want {exc_type.__name__}")
    fail(step, f"returned {got!r}, want {exc_type.__name__}")
