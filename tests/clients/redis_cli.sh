#!/usr/bin/env bash
# redis-cli (Debian redis-tools) against the server: commands as arguments, commands on stdin,
# and the interactive formatting (--no-raw), each output compared exactly with what Redis prints.
#
# usage: redis_cli.sh HOST PORT
set -uo pipefail
host=${1:-127.0.0.1}
port=${2:-6379}
p="cli$$:"
cli() { redis-cli -h "$host" -p "$port" "$@" 2>&1; }

expect() { # expect STEP WANT GOT
    if [ "$3" != "$2" ]; then
        printf 'FAIL %s:\n--- got ---\n%s\n--- want ---\n%s\n' "$1" "$3" "$2" >&2
        exit 1
    fi
    echo "ok   $1"
}

# Arguments (stdout is not a terminal: raw replies, as scripts see them).
expect "ping" "PONG" "$(cli ping)"
expect "set" "OK" "$(cli set "${p}k" "hello world")"
expect "get" "hello world" "$(cli get "${p}k")"
expect "get missing (raw nil is an empty line)" "" "$(cli get "${p}missing")"
expect "incr" "1" "$(cli incr "${p}n")"
expect "incrby" "11" "$(cli incrby "${p}n" 10)"
expect "expire" "1" "$(cli expire "${p}k" 100)"
# Redis rounds TTL to the nearest second; a slow machine may cross one between the two calls.
ttl=$(cli ttl "${p}k")
case "$ttl" in 99 | 100) echo "ok   ttl ($ttl)" ;; *) expect "ttl" "100" "$ttl" ;; esac
expect "hset" "2" "$(cli hset "${p}h" f1 v1 f2 v2)"
expect "hgetall" $'f1\nv1\nf2\nv2' "$(cli hgetall "${p}h")"
expect "mget" $'hello world\n\n11' "$(cli mget "${p}k" "${p}missing" "${p}n")"
expect "echo" "a b" "$(cli echo "a b")"
expect "unknown command" "ERR unknown command 'nosuchcmd', with args beginning with: 'x' " "$(cli nosuchcmd x)"
expect "wrongtype" "WRONGTYPE Operation against a key holding the wrong kind of value" "$(cli hget "${p}k" f)"

# Commands on stdin, one per line (how people pipe a batch in).
got=$(printf 'SET %s v1\nGET %s\nAPPEND %s 23\nGET %s\nDEL %s\nEXISTS %s\n' \
    "${p}s" "${p}s" "${p}s" "${p}s" "${p}s" "${p}s" | redis-cli -h "$host" -p "$port" 2>&1)
expect "stdin batch" $'OK\nv1\n4\nv123\n1\n0' "$got"

# Interactive formatting: what a person at the prompt sees.
expect "no-raw integer" "(integer) 12" "$(cli --no-raw incr "${p}n")"
expect "no-raw string" '"hello world"' "$(cli --no-raw get "${p}k")"
expect "no-raw nil" "(nil)" "$(cli --no-raw get "${p}missing")"
expect "no-raw array" $'1) "f1"\n2) "v1"\n3) "f2"\n4) "v2"' "$(cli --no-raw hgetall "${p}h")"
expect "no-raw error" "(error) WRONGTYPE Operation against a key holding the wrong kind of value" \
    "$(cli --no-raw hget "${p}k" f)"
expect "no-raw empty array" "(empty array)" "$(cli --no-raw hgetall "${p}missing")"

# -n selects a database: separate keyspaces.
expect "db 1 set" "OK" "$(cli -n 1 set "${p}db" one)"
expect "db 0 does not see db 1" "" "$(cli get "${p}db")"
expect "db 1 get" "one" "$(cli -n 1 get "${p}db")"
expect "cleanup" "3" "$(cli del "${p}k" "${p}n" "${p}h" "${p}missing")"
expect "cleanup db 1" "1" "$(cli -n 1 del "${p}db")"
echo "redis_cli: all checks passed"
