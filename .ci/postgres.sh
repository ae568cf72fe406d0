#!/usr/bin/env bash
# Starts a throwaway PostgreSQL server on loopback for the tests (or reuses the
# one already running) and prints its URL. `.ci/postgres.sh stop` stops it.
#
# Needs Debian's postgresql package (`apt-get install -y postgresql`). As root,
# the server runs as the `postgres` user, since PostgreSQL refuses root.
set -euo pipefail

root="${MODELRELAY_TEST_PG_DIR:-${TMPDIR:-/tmp}/modelrelay-test-postgres}"
bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "$bindir" ] || [ ! -x "$bindir/initdb" ]; then
    echo "PostgreSQL server programs not found: apt-get install -y postgresql" >&2
    exit 1
fi

as_owner() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

mkdir -p "$root"
[ "$(id -u)" = 0 ] && chown postgres "$root"
exec 9>"$root.lock"
flock 9

data="$root/data"
if [ "${1:-}" = stop ]; then
    as_owner "$bindir/pg_ctl" -D "$data" -m fast stop >/dev/null 2>&1 9>&- || true
    exit 0
fi

if [ ! -f "$data/PG_VERSION" ]; then
    as_owner "$bindir/initdb" -D "$data" -U postgres -A trust --no-sync >"$root/initdb.log" 2>&1 \
        || { cat "$root/initdb.log" >&2; exit 1; }
fi

if ! as_owner "$bindir/pg_ctl" -D "$data" status >/dev/null 2>&1; then
    # A free loopback port.
    while :; do
        port=$((20000 + RANDOM % 40000))
        (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null || break
    done
    echo "$port" >"$root/port"
    # The server must not inherit the lock or this script's output.
    as_owner "$bindir/pg_ctl" -D "$data" -l "$root/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $root -c fsync=off -c max_connections=200" start \
        >/dev/null 2>&1 9>&- </dev/null \
        || { cat "$root/server.log" >&2; exit 1; }
fi

echo "postgres://postgres@127.0.0.1:$(cat "$root/port")/postgres"
