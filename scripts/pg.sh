#!/usr/bin/env bash
# Starts a throwaway PostgreSQL for the tests: initdb in a temporary
# directory, a random free port on 127.0.0.1 only, password authentication.
#
#   eval "$(scripts/pg.sh start)"   # exports BACKFILL_TEST_PG_URL and BACKFILL_TEST_PG_DIR
#   scripts/pg.sh stop "$BACKFILL_TEST_PG_DIR"
#
# Installs Debian's postgresql package when no server binaries are found.
# initdb refuses to run as root, so as root the server runs as `postgres`.
set -euo pipefail

find_bindir() {
  local d
  for d in /usr/lib/postgresql/*/bin /usr/local/pgsql/bin; do
    if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then echo "$d"; return 0; fi
  done
  if command -v initdb >/dev/null && command -v pg_ctl >/dev/null; then
    dirname "$(command -v initdb)"; return 0
  fi
  return 1
}

as_server() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start() {
  local bindir
  if ! bindir="$(find_bindir)"; then
    echo "installing PostgreSQL server binaries (apt-get install postgresql)" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >&2 \
      || { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >&2; }
    bindir="$(find_bindir)" || { echo "error: no initdb/pg_ctl after installing postgresql" >&2; exit 1; }
  fi
  if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
    useradd --system --no-create-home postgres
  fi
  local dir port password
  dir="$(mktemp -d /tmp/backfill-pg.XXXXXX)"
  chmod 755 "$dir"
  [ "$(id -u)" -eq 0 ] && chown postgres "$dir"
  # A password with characters that need URL care, so masking is exercised.
  password="pw$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
  printf '%s\n' "$password" > "$dir/pwfile"
  [ "$(id -u)" -eq 0 ] && chown postgres "$dir/pwfile"
  as_server "$bindir/initdb" -D "$dir/data" -U backfill --pwfile="$dir/pwfile" \
    --auth=scram-sha-256 --encoding=UTF8 --locale=C >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log" >&2; exit 1; }
  rm -f "$dir/pwfile"
  tls "$dir"
  # A free port: bind port 0 and read what the kernel chose.
  port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  as_server "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off -c max_connections=200 \
       -c ssl=on -c ssl_cert_file=$dir/tls/server.crt -c ssl_key_file=$dir/tls/server.key \
       -c ssl_ca_file=$dir/tls/ca.crt" start >&2 \
    || { cat "$dir/server.log" >&2; exit 1; }
  echo "$bindir" > "$dir/bindir"
  echo "export BACKFILL_TEST_PG_URL='postgres://backfill:$password@127.0.0.1:$port/postgres'"
  echo "export BACKFILL_TEST_PG_DIR='$dir'"
  echo "export BACKFILL_TEST_PG_TLS='$dir/tls'"
}

# TLS for the TLS tests: a CA, a server certificate for "localhost" only (so
# connecting to 127.0.0.1 with verify-full must fail), a second CA that
# signed nothing, and a client certificate for the role backfill_cert.
# Roles in pg_hba.conf: backfill_tls only over TLS (like RDS's force_ssl),
# backfill_cert by client certificate; everyone else as before.
tls() {
  local dir="$1" t="$1/tls"
  command -v openssl >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q openssl >&2
  mkdir -p "$t"
  local ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
  local ca
  for ca in ca other-ca; do
    openssl req -x509 "${ec[@]}" -days 3 -subj "/CN=backfill test $ca" \
      -keyout "$t/$ca.key" -out "$t/$ca.crt" 2>/dev/null
  done
  sign() { # name, subject, extensions
    openssl req "${ec[@]}" -subj "$2" -keyout "$t/$1.key" -out "$t/$1.csr" 2>/dev/null
    printf '%s\n' "$3" > "$t/$1.ext"
    openssl x509 -req -in "$t/$1.csr" -CA "$t/ca.crt" -CAkey "$t/ca.key" -CAcreateserial \
      -days 3 -extfile "$t/$1.ext" -out "$t/$1.crt" 2>/dev/null
  }
  sign server "/CN=localhost" \
    "subjectAltName=DNS:localhost
basicConstraints=CA:FALSE
keyUsage=digitalSignature
extendedKeyUsage=serverAuth"
  sign client "/CN=backfill_cert" \
    "basicConstraints=CA:FALSE
keyUsage=digitalSignature
extendedKeyUsage=clientAuth"
  chmod 600 "$t"/*.key
  chmod 755 "$t"
  [ "$(id -u)" -eq 0 ] && chown postgres "$t/server.key" "$t/server.crt" "$t/ca.crt"
  local hba="$dir/data/pg_hba.conf"
  { printf 'hostnossl all backfill_tls all reject\nhostssl all backfill_cert all cert\n'
    cat "$hba"; } > "$hba.new"
  mv "$hba.new" "$hba"
  [ "$(id -u)" -eq 0 ] && chown postgres "$hba"
  return 0
}

stop() {
  local dir="$1"
  [ -d "$dir" ] || return 0
  if [ -f "$dir/bindir" ]; then
    as_server "$(cat "$dir/bindir")/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
  fi
  rm -rf "$dir"
}

case "${1:-}" in
  start) start ;;
  stop) stop "${2:?usage: scripts/pg.sh stop DIR}" ;;
  *) echo "usage: scripts/pg.sh start | stop DIR" >&2; exit 2 ;;
esac
