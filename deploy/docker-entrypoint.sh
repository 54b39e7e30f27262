#!/bin/sh
# The image's entry point: runs `stategrid "$@"` (default `serve`) by exec, so stategrid is
# PID 1 and `docker stop` (SIGTERM) reaches the server itself, which drains and exits 0.
#
# For `serve` it adds five container defaults, each only where the user has not chosen:
# - `--params /etc/stategrid/params.txt` when that file exists (mount a params file there)
#   and no `--params` was given.
# - net_interface 0.0.0.0 when neither STATEGRID_NET_INTERFACE nor the params file in use sets
#   it: on a bridge network the server must listen on the container's own address, which is
#   not known when the image is built. It is exported here rather than baked into the image
#   with ENV because the environment outranks the params file: an image ENV would silently
#   override a `net_interface` line in a mounted params file.
# - rest_port 4001 (the HTTP data API) and mgt_http_port 4000 (the management HTTP API, on
#   loopback unless mgt_http_interface says otherwise): ScaleOut's REST ports, exported for
#   the same reason.
# - protected_mode 0 when no client credentials are configured (see below, and
#   docs/security.md: a container's clients never come from loopback).
# Any other first argument (`show`, `put`, `params`, ...) runs that command unchanged.
#
# POSIX sh with builtins only: the offline image (deploy/offline-image.sh) has no coreutils.
set -eu

default_params=/etc/stategrid/params.txt

# Does params file $1 set parameter $2? (`name value` or `name = value`, `#` comments.)
sets_param() {
    file=$1
    name=$2
    [ -r "$file" ] || return 1
    while IFS= read -r line || [ -n "$line" ]; do
        line=${line%%#*}
        set -f
        # shellcheck disable=SC2086 # split the line into words on purpose
        set -- $line
        set +f
        case "${1:-}" in
            "$name" | "$name"=*) return 0 ;;
        esac
    done <"$file"
    return 1
}

if [ "${1:-serve}" = serve ]; then
    [ $# -gt 0 ] && shift
    params=
    next_is_params=
    for a in "$@"; do
        if [ -n "$next_is_params" ]; then
            params=$a
            next_is_params=
        fi
        case "$a" in
            --params) next_is_params=1 ;;
            --params=*) params=${a#--params=} ;;
        esac
    done
    if [ -z "$params" ] && [ -f "$default_params" ]; then
        params=$default_params
        set -- --params "$params" "$@"
    fi
    if [ -z "${STATEGRID_NET_INTERFACE:-}" ] && ! sets_param "$params" net_interface; then
        export STATEGRID_NET_INTERFACE=0.0.0.0
    fi
    # The data REST API on ScaleOut's port 4001 (off by default outside the container).
    if [ -z "${STATEGRID_REST_PORT:-}" ] && ! sets_param "$params" rest_port; then
        export STATEGRID_REST_PORT=4001
    fi
    # The management HTTP API on ScaleOut's port 4000 (on loopback unless mgt_http_interface).
    if [ -z "${STATEGRID_MGT_HTTP_PORT:-}" ] && ! sets_param "$params" mgt_http_port; then
        export STATEGRID_MGT_HTTP_PORT=4000
    fi
    # Protected mode (client ports serve loopback only while no credentials are configured)
    # cannot work in a container: published ports and the bridge network reach the server
    # from the bridge's address, never from loopback. As Redis's official image does, turn it
    # off unless credentials (STATEGRID_REQUIREPASS / STATEGRID_USERS_FILE or the params file)
    # or protected_mode itself are set; the cluster key still guards int_port and mgt_port.
    # Set STATEGRID_REQUIREPASS (or a users_file) to make clients authenticate.
    if [ -z "${STATEGRID_PROTECTED_MODE:-}" ] && [ -z "${STATEGRID_REQUIREPASS:-}" ] \
        && [ -z "${STATEGRID_USERS_FILE:-}" ] && ! sets_param "$params" protected_mode \
        && ! sets_param "$params" requirepass && ! sets_param "$params" users_file; then
        export STATEGRID_PROTECTED_MODE=0
        echo "docker-entrypoint: no requirepass or users_file: clients connect without credentials (protected_mode 0); set STATEGRID_REQUIREPASS to require a password" >&2
    fi
    set -- serve "$@"
fi

exec /usr/local/bin/stategrid "$@"
