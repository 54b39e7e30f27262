#!/usr/bin/env bash
# Installs what the test suites need beyond cargo. Idempotent: installs only what is missing.
# Debian/Ubuntu (apt-get); run as root or with sudo available.
#
# 1. Real servers that loadgen's integration tests and the RESP client tests measure against:
#    redis-server, memcached.
# 2. The real Redis clients of other languages that tests/resp_clients.rs drives against
#    stategrid (issue 8, "Tests with the real clients people use"): redis-cli, PHP with phpredis,
#    node-redis, ruby-redis (Debian packages: npm is not reachable from CI), and a Python
#    virtualenv `.venv-tests` with the pinned PyPI packages of tests/clients/requirements.txt
#    (redis-py, Flask + Flask-Session, Django + django-redis).
set -euo pipefail
cd "$(dirname "$0")/.."

# 3. The HTTP API tests (schemathesis, prometheus_client in their own Python venv).
bash scripts/install-test-deps-http.sh

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

need=()
# --- 1. servers -------------------------------------------------------------------------------
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v memcached >/dev/null 2>&1 || need+=(memcached)
# tcpdump: tests/tls_cluster.rs captures int_port to show host links carry no plaintext.
command -v tcpdump >/dev/null 2>&1 || need+=(tcpdump)

# --- 2. Redis clients of other languages (tests/clients/) --------------------------------------
# redis-tools: redis-cli (and redis-benchmark), usually pulled in by redis-server already.
command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
# PHP CLI and phpredis, whose `session.save_handler = redis` is what PHP sites use.
command -v php >/dev/null 2>&1 || need+=(php-cli)
installed php-redis || need+=(php-redis)
# node-redis 4.x: Debian installs it under /usr/share/nodejs/redis (tests require it from there).
command -v node >/dev/null 2>&1 || need+=(nodejs)
[ -e /usr/share/nodejs/redis/package.json ] || need+=(node-redis)
# Ruby and the redis gem as Debian packages it.
command -v ruby >/dev/null 2>&1 || need+=(ruby)
installed ruby-redis || need+=(ruby-redis)
# --- 4. The web console test (tests/http_mgmt.rs) loads /console in headless Chromium ---------
command -v chromium >/dev/null 2>&1 || need+=(chromium)

# --- 5. unshare(1) and mount(8): tests/control_plane.rs runs a host in a mount namespace ------
command -v unshare >/dev/null 2>&1 || need+=(util-linux)
command -v mount >/dev/null 2>&1 || need+=(mount)

# python3 -m venv needs Debian's python3-venv (ensurepip) when python3 is Debian's own.
command -v python3 >/dev/null 2>&1 || need+=(python3)
python3 -c 'import ensurepip' >/dev/null 2>&1 || need+=(python3-venv)

if [ "${#need[@]}" -eq 0 ]; then
    echo "install-test-deps: all Debian packages are installed"
else
    echo "install-test-deps: installing ${need[*]}"
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
    # The packages' own service units may start a server on the default ports; the tests start
    # their own on free ports and do not depend on (or talk to) those.
fi

# --- 3. Python virtualenv of the client tests ---------------------------------------------------
# .venv-tests (gitignored) holds redis-py, Flask-Session, django-redis... at the pinned versions.
# The requirements file is copied into the venv once installed: an unchanged file means nothing
# to do, a changed one reinstalls.
venv=.venv-tests
req=tests/clients/requirements.txt
if [ ! -x "$venv/bin/python" ]; then
    echo "install-test-deps: creating $venv"
    python3 -m venv "$venv"
fi
if ! cmp -s "$req" "$venv/installed-requirements.txt"; then
    echo "install-test-deps: installing $req into $venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check --no-input -r "$req"
    cp "$req" "$venv/installed-requirements.txt"
else
    echo "install-test-deps: $venv is up to date with $req"
fi
