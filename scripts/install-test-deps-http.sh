#!/usr/bin/env bash
# The HTTP API tests' dependencies (issue 9), called by scripts/install-test-deps.sh:
# a Python venv at .test-venvs/http with schemathesis (tests/http/requirements.txt), which
# tests/http_schemathesis.rs runs against a live server. Idempotent: the venv is rebuilt only
# when the requirements file changed.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive

# python3 with venv and pip (Debian splits venv into python3-venv).
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    echo "install-test-deps-http: installing python3-venv"
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends python3 python3-venv
fi

venv=.test-venvs/http
req=tests/http/requirements.txt
stamp="$venv/.requirements"
if [ -x "$venv/bin/schemathesis" ] && cmp -s "$req" "$stamp"; then
    echo "install-test-deps-http: $venv is up to date"
    exit 0
fi
echo "install-test-deps-http: creating $venv from $req"
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check -r "$req"
cp "$req" "$stamp"
