#!/usr/bin/env bash
# A PostgreSQL primary and an asynchronous streaming-replication standby on this machine, for
# the test of a standby promoted after it missed the last commits (loader/tests/standby.rs).
# Test clusters only: local trust authentication, on localhost.
#   pg-standby.sh up DIR PRIMARY_PORT STANDBY_PORT   both running; role and database etl
#   pg-standby.sh cut DIR                            stop the standby where it has replayed
#   pg-standby.sh promote DIR                        stop the primary, promote the standby
#   pg-standby.sh down DIR                           stop both, remove DIR
set -euo pipefail

die() { echo "pg-standby: $*" >&2; exit 1; }
bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
[ -x "$bin/pg_ctl" ] || die "no PostgreSQL server binaries (run scripts/dev-services.sh up first)"
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

cmd="${1:-}"; dir="${2:-}"
[ -n "$cmd" ] && [ -n "$dir" ] || die "usage: $0 up|cut|promote|down DIR [PRIMARY_PORT STANDBY_PORT]"
primary="$dir/primary"; standby="$dir/standby"

case "$cmd" in
  up)
    p1="${3:?primary port}"; p2="${4:?standby port}"
    mkdir -p "$dir"
    [ "$(id -u)" -eq 0 ] && chown postgres: "$dir"
    as_pg "$bin/initdb" -D "$primary" -U postgres --auth=trust >/dev/null
    cat <<EOF | as_pg tee -a "$primary/postgresql.conf" >/dev/null
port = $p1
listen_addresses = 'localhost'
unix_socket_directories = '$dir'
wal_level = replica
max_wal_senders = 4
hot_standby = on
EOF
    echo "host replication all 127.0.0.1/32 trust" | as_pg tee -a "$primary/pg_hba.conf" >/dev/null
    as_pg "$bin/pg_ctl" -D "$primary" -l "$dir/primary.log" -w -t 60 start >/dev/null
    as_pg "$bin/psql" -X -q -h "$dir" -p "$p1" -U postgres -d postgres \
      -c "CREATE ROLE etl LOGIN PASSWORD 'etl'" -c "CREATE DATABASE etl OWNER etl"
    as_pg "$bin/pg_basebackup" -h 127.0.0.1 -p "$p1" -U postgres -D "$standby" -R -X stream >/dev/null
    echo "port = $p2" | as_pg tee -a "$standby/postgresql.conf" >/dev/null
    as_pg "$bin/pg_ctl" -D "$standby" -l "$dir/standby.log" -w -t 60 start >/dev/null
    ;;
  cut)
    as_pg "$bin/pg_ctl" -D "$standby" -m fast -w -t 60 stop >/dev/null
    ;;
  promote)
    as_pg "$bin/pg_ctl" -D "$primary" -m immediate -w -t 60 stop >/dev/null
    as_pg "$bin/pg_ctl" -D "$standby" -l "$dir/standby.log" -w -t 60 start >/dev/null
    as_pg "$bin/pg_ctl" -D "$standby" -w -t 60 promote >/dev/null
    ;;
  down)
    for d in "$standby" "$primary"; do
      [ -f "$d/postmaster.pid" ] && as_pg "$bin/pg_ctl" -D "$d" -m immediate -w -t 60 stop >/dev/null 2>&1 || true
    done
    rm -rf "$dir"
    ;;
  *) die "unknown command $cmd" ;;
esac
