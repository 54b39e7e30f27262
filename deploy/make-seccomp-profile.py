#!/usr/bin/env python3
"""Writes deploy/seccomp-io_uring.json: Docker's default seccomp profile plus io_uring.

Why: stategrid's shards run on io_uring, and Docker's default seccomp profile blocks the three
io_uring system calls (since Docker 25; Docker 20.10-24 allowed them). The profile this script
writes is Docker's own default with `io_uring_setup`, `io_uring_enter` and `io_uring_register`
in its unconditional allow list, and nothing else changed, so a container keeps every other
restriction Docker gives it.

Provenance: the default profile is taken from Debian's package `golang-github-docker-docker-dev`
(Docker's source as Debian ships it), file `profiles/seccomp/default.json`, fetched with
`apt-get download` and unpacked with `dpkg -x` into a temporary directory. The package version
and the SHA-256 of that file are printed on every run. With `--from FILE` any other
`default.json` (for example a newer Docker's) is used instead. Run it again to regenerate;
`--check` says whether the committed profile matches what it would write.

Usage: deploy/make-seccomp-profile.py [--from DEFAULT_JSON] [--out FILE] [--check]
"""

import argparse
import bisect
import hashlib
import json
import os
import pathlib
import subprocess
import sys
import tempfile

PACKAGE = "golang-github-docker-docker-dev"
PROFILE_SUFFIX = "profiles/seccomp/default.json"
IO_URING = ["io_uring_enter", "io_uring_register", "io_uring_setup"]
HERE = pathlib.Path(__file__).resolve().parent


def fail(msg):
    print(f"make-seccomp-profile: {msg}", file=sys.stderr)
    sys.exit(1)


def fetch_default_profile(tmp):
    """Downloads the Debian package and returns (default.json bytes, where it came from)."""
    try:
        subprocess.run(
            ["apt-get", "download", PACKAGE],
            cwd=tmp,
            check=True,
            stdout=subprocess.DEVNULL,
        )
    except (OSError, subprocess.CalledProcessError) as e:
        fail(f"apt-get download {PACKAGE} failed ({e}); run 'apt-get update' first, or pass --from FILE")
    debs = sorted(pathlib.Path(tmp).glob(f"{PACKAGE}_*.deb"))
    if len(debs) != 1:
        fail(f"expected one {PACKAGE} .deb in {tmp}, found {len(debs)}")
    version = subprocess.run(
        ["dpkg-deb", "--field", str(debs[0]), "Version"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    root = pathlib.Path(tmp, "pkg")
    subprocess.run(["dpkg", "-x", str(debs[0]), str(root)], check=True)
    found = [p for p in root.rglob("default.json") if p.as_posix().endswith(PROFILE_SUFFIX)]
    if len(found) != 1:
        fail(f"expected one {PROFILE_SUFFIX} in {PACKAGE} {version}, found {len(found)}")
    rel = found[0].relative_to(root)
    return found[0].read_bytes(), f"Debian package {PACKAGE} {version}, /{rel}"


def add_io_uring(profile):
    """Puts the io_uring calls into the first unconditional allow rule; returns those added."""
    if profile.get("defaultAction") not in ("SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS"):
        fail(f"unexpected defaultAction {profile.get('defaultAction')!r}: not a default-deny profile")
    for rule in profile.get("syscalls", []):
        unconditional = (
            rule.get("action") == "SCMP_ACT_ALLOW"
            and not rule.get("args")
            and not rule.get("includes")
            and not rule.get("excludes")
        )
        if unconditional:
            names = rule["names"]
            added = []
            for name in IO_URING:
                if name not in names:
                    # Docker keeps the list sorted; keep it that way.
                    bisect.insort(names, name)
                    added.append(name)
            return added
    fail("the profile has no unconditional SCMP_ACT_ALLOW rule to extend")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--from", dest="source", type=pathlib.Path, help="use this default.json instead of the Debian package's")
    ap.add_argument("--out", type=pathlib.Path, default=HERE / "seccomp-io_uring.json")
    ap.add_argument("--check", action="store_true", help="compare with --out instead of writing it")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="stategrid-seccomp-") as tmp:
        # apt-get download runs as the unprivileged _apt user where it can: let it write here.
        os.chmod(tmp, 0o755)
        if args.source:
            raw, origin = args.source.read_bytes(), str(args.source)
        else:
            raw, origin = fetch_default_profile(tmp)
    profile = json.loads(raw)
    added = add_io_uring(profile)
    # Docker writes its profile with tabs; so do we, with a final newline.
    text = json.dumps(profile, indent="\t") + "\n"

    print(f"source:  {origin}")
    print(f"sha256:  {hashlib.sha256(raw).hexdigest()}")
    if added:
        print(f"added:   {', '.join(added)}")
    else:
        print("added:   nothing: this default profile already allows io_uring (Docker before 25 did)")

    if args.check:
        current = args.out.read_text() if args.out.exists() else ""
        if current != text:
            fail(f"{args.out} differs from what this script generates; run it without --check")
        print(f"check:   {args.out} is up to date")
        return
    args.out.write_text(text)
    print(f"wrote:   {args.out}")


if __name__ == "__main__":
    main()
