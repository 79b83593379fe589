#!/usr/bin/env bash
# PostgreSQL and Redis for the server-mode tests and the benchmarks, started by the suite
# itself: a database cluster and a Redis of their own, on ports of their own, in a folder
# of their own, so nothing depends on whether the machine runs (or how it set up) its own.
# `make test-packages` installs Debian's postgresql and redis-server when they are missing.
#
#   services.sh start   start both unless they already answer (idempotent)
#   services.sh stop    stop both
set -euo pipefail

DIR=${KSTUDIO_SERVICES_DIR:-${TMPDIR:-/tmp}/kstudio-services-$(id -u)}
PG_PORT=${KSTUDIO_PG_PORT:-54329}
REDIS_PORT=${KSTUDIO_REDIS_PORT:-63799}

pg_bin() {
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
  [ -n "$dir" ] || { echo "PostgreSQL is not installed (apt-get install postgresql)" >&2; exit 1; }
  echo "$dir"
}

# PostgreSQL refuses to run as root: as root, the cluster belongs to Debian's postgres user.
as_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start_postgres() {
  local bin data=$DIR/postgres
  bin=$(pg_bin)
  if "$bin/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"; then return; fi
  mkdir -p "$DIR"
  chmod 0755 "$DIR"
  if [ ! -f "$data/PG_VERSION" ]; then
    rm -rf "$data"
    mkdir -p "$data"
    [ "$(id -u)" = 0 ] && chown postgres: "$data"
    # Trust on loopback only: the cluster is the tests', listening on 127.0.0.1 alone.
    as_owner "$bin/initdb" -D "$data" -U postgres --auth=trust -E UTF8 --no-sync >/dev/null
  fi
  # Durability is not what these tests are about; speed is.
  as_owner "$bin/pg_ctl" -D "$data" -l "$data/server.log" -w -t 60 start -o \
    "-p $PG_PORT -k $data -c listen_addresses=127.0.0.1 -c max_connections=300 \
     -c fsync=off -c synchronous_commit=off -c full_page_writes=off" >/dev/null \
    || { tail -n 20 "$data/server.log" >&2; exit 1; }
  echo "PostgreSQL on 127.0.0.1:$PG_PORT ($data)"
}

start_redis() {
  command -v redis-server >/dev/null || { echo "Redis is not installed (apt-get install redis-server)" >&2; exit 1; }
  if redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping >/dev/null 2>&1; then return; fi
  mkdir -p "$DIR/redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$DIR/redis" \
    --pidfile "$DIR/redis/redis.pid" --logfile "$DIR/redis/server.log" \
    --save "" --appendonly no
  for _ in $(seq 100); do
    redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
    sleep 0.1
  done
  redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping >/dev/null \
    || { tail -n 20 "$DIR/redis/server.log" >&2; exit 1; }
  echo "Redis on 127.0.0.1:$REDIS_PORT ($DIR/redis)"
}

case "${1:-}" in
  start)
    start_postgres
    start_redis
    ;;
  stop)
    if [ -f "$DIR/postgres/postmaster.pid" ]; then
      as_owner "$(pg_bin)/pg_ctl" -D "$DIR/postgres" -m fast -w stop >/dev/null || true
    fi
    redis-cli -h 127.0.0.1 -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
    ;;
  *)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
