#!/usr/bin/env bash
# Start a throwaway local PostgreSQL server (installing Debian's package if no server is on the machine) and
# print the export line for the store tests:  eval "$(.ci/postgres.sh)"
set -euo pipefail
bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
if [ -z "$bindir" ] || [ ! -x "$bindir/initdb" ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >&2
    bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
fi
run=()
if [ "$(id -u)" = 0 ]; then  # the server refuses to run as root
    id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
    run=(runuser -u postgres --)
fi
dir=$(mktemp -d /tmp/evolkv-pg.XXXXXX)
chmod 755 "$dir"
[ "$(id -u)" = 0 ] && chown postgres "$dir"
port=${EVOLKV_PG_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
"${run[@]}" "$bindir/initdb" -D "$dir/data" -A trust -U postgres >&2
"${run[@]}" "$bindir/pg_ctl" -D "$dir/data" -l "$dir/log" -w \
    -o "-k $dir -p $port -c listen_addresses='' -c fsync=off" start >&2
echo "export EVOLKV_TEST_PG_URL='postgresql+psycopg://postgres@/postgres?host=$dir&port=$port'"
echo "export EVOLKV_TEST_PG_STOP='${run[*]} $bindir/pg_ctl -D $dir/data -m immediate stop'"
