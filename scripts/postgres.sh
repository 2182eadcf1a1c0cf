#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the tests (PostgreSQL 15's Debian binaries; run as the `postgres` user when
# invoked as root, since initdb refuses root).
#   scripts/postgres.sh start DIR   create and start a cluster in DIR (Unix socket only, password auth);
#                                   prints its SQLAlchemy URL (database `tunelab`, superuser `tunelab`)
#   scripts/postgres.sh stop DIR    stop it and remove DIR
set -euo pipefail

bindir() {
    for dir in "${PG_BINDIR:-}" /usr/lib/postgresql/15/bin "$(pg_config --bindir 2>/dev/null || true)"; do
        if [ -n "$dir" ] && [ -x "$dir/initdb" ]; then
            echo "$dir"
            return
        fi
    done
    echo "no PostgreSQL binaries (initdb) in /usr/lib/postgresql/15/bin or on PATH" >&2
    exit 3
}

as_owner() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

command=${1:?usage: postgres.sh start|stop DIR}
dir=${2:?usage: postgres.sh start|stop DIR}
bin=$(bindir)
case "$command" in
start)
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres: "$dir"
    password=tunelab-$RANDOM$RANDOM
    echo "$password" >"$dir/password"
    [ "$(id -u)" = 0 ] && chown postgres: "$dir/password"
    as_owner "$bin/initdb" -D "$dir/data" -U tunelab --pwfile="$dir/password" --auth=scram-sha-256 \
        --encoding=UTF8 --no-sync >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start \
        -o "-c listen_addresses='' -c unix_socket_directories='$dir' -p $port -c max_connections=200 -c fsync=off" \
        >/dev/null || { cat "$dir/server.log" >&2; exit 1; }
    PGPASSWORD=$password "$bin/psql" -h "$dir" -p "$port" -U tunelab -d postgres -qc "CREATE DATABASE tunelab" >/dev/null
    echo "postgresql+psycopg://tunelab:$password@/tunelab?host=$dir&port=$port"
    ;;
stop)
    if [ -d "$dir/data" ]; then
        as_owner "$bin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$dir"
    ;;
*)
    echo "usage: postgres.sh start|stop DIR" >&2
    exit 2
    ;;
esac
