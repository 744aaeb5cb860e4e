#!/usr/bin/env bash
# A throwaway PostgreSQL server for the test suite, in its own folder, on a free loopback port.
#
#   scripts/postgres.sh start   create the cluster if needed, start it (idempotent); prints the admin URL
#   scripts/postgres.sh url     print the admin URL of the running server (exit 1 when it is not running)
#   scripts/postgres.sh stop    stop the server (the folder stays; delete it to start from scratch)
#
# Folder: ${UUSIC_PG_DIR:-/tmp/uusic-pg} (data/, the socket, server.log, url). Trust authentication, loopback
# and the folder's own socket only. As root the server runs as the `postgres` OS user (PostgreSQL refuses root),
# so the folder must be reachable by that user. Only the URL goes to stdout.
set -euo pipefail

PG_DIR="$(realpath -m "${UUSIC_PG_DIR:-/tmp/uusic-pg}")"
DATA="$PG_DIR/data"
SOCKET_DIR="$PG_DIR/socket"
URL_FILE="$PG_DIR/url"
PYTHON="${PYTHON:-python3}"

die() { echo "postgres.sh: $*" >&2; exit 1; }

pg_bin_dir() {  # the newest /usr/lib/postgresql/<version>/bin, else wherever initdb is on PATH
  local version
  if [ -d /usr/lib/postgresql ]; then
    for version in $(ls /usr/lib/postgresql | sort -V -r); do
      if [ -x "/usr/lib/postgresql/$version/bin/initdb" ]; then
        echo "/usr/lib/postgresql/$version/bin"
        return
      fi
    done
  fi
  command -v initdb >/dev/null 2>&1 || die "initdb not found: install the postgresql package"
  dirname "$(command -v initdb)"
}

as_owner() {  # run a PostgreSQL binary as the folder's owner (the postgres user when we are root)
  if [ "$(id -u)" = 0 ]; then
    (cd / && runuser -u postgres -- "$@")
  else
    "$@"
  fi
}

is_running() { [ -f "$DATA/PG_VERSION" ] && as_owner "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; }

running_url() {  # the port is line 4 of postmaster.pid
  local port
  port="$(sed -n 4p "$DATA/postmaster.pid")"
  echo "postgresql+psycopg://postgres@127.0.0.1:$port/postgres"
}

free_port() {
  "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

make_folder() {
  mkdir -p "$PG_DIR"
  if [ "$(id -u)" = 0 ]; then
    chown postgres:postgres "$PG_DIR"
    runuser -u postgres -- test -w "$PG_DIR" || die "user postgres cannot write $PG_DIR (set UUSIC_PG_DIR)"
  fi
  chmod 700 "$PG_DIR"
}

init_cluster() {
  as_owner "$BIN/initdb" -D "$DATA" -U postgres --auth=trust --encoding=UTF8 --no-locale \
    >"$PG_DIR/initdb.log" 2>&1 || die "initdb failed, see $PG_DIR/initdb.log"
  cat >"$DATA/pg_hba.conf" <<'EOF'
# uusic test server: trust on its own socket and on 127.0.0.1 only
local all all              trust
host  all all 127.0.0.1/32 trust
EOF
}

start_server() {
  local attempt port
  as_owner mkdir -p "$SOCKET_DIR"
  for attempt in 1 2 3; do  # another program may take the free port before the server binds it
    port="$(free_port)"
    if as_owner "$BIN/pg_ctl" -D "$DATA" -l "$PG_DIR/server.log" -w -t 60 \
         -o "-p $port -k $SOCKET_DIR -c listen_addresses=127.0.0.1" start >/dev/null; then
      return
    fi
  done
  die "the server did not start, see $PG_DIR/server.log"
}

cmd_start() {
  if ! is_running; then
    make_folder
    [ -f "$DATA/PG_VERSION" ] || init_cluster
    start_server
  fi
  running_url | tee "$URL_FILE"
}

cmd_url() {
  is_running || die "not running (scripts/postgres.sh start)"
  running_url
}

cmd_stop() {
  if is_running; then
    as_owner "$BIN/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null
  fi
  rm -f "$URL_FILE"
}

BIN="$(pg_bin_dir)"
case "${1:-}" in
  start) cmd_start ;;
  url) cmd_url ;;
  stop) cmd_stop ;;
  *) die "usage: $0 start|stop|url" ;;
esac
