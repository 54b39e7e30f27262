#!/usr/bin/env bash
# Installs what the test suites need beyond cargo: real servers that loadgen's integration tests
# measure against (redis-server, memcached). Idempotent: installs only what is missing.
# Debian/Ubuntu (apt-get); run as root or with sudo available.
set -euo pipefail

# The HTTP API tests (schemathesis in a Python venv): their own script, always run.
bash "$(dirname "$0")/install-test-deps-http.sh"

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v memcached >/dev/null 2>&1 || need+=(memcached)

if [ "${#need[@]}" -eq 0 ]; then
    echo "install-test-deps: redis-server and memcached are installed"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
echo "install-test-deps: installing ${need[*]}"
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
# The packages' own service units may start a server on the default ports; the tests start
# their own on free ports and do not depend on (or talk to) those.
