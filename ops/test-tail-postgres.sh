#!/usr/bin/env bash
# Tools of the PostgreSQL tailer tests (tests/tests/tail_postgres.rs): initdb, postgres and psql
# from the Debian package postgresql-15 (and the `postgres` system user it creates, which the
# servers run as under root), installed when missing. The tests start their own private servers
# (initdb into a temporary directory, a free loopback port, wal_level=logical) and never use a
# server the machine runs; the install is told not to create or start a cluster of its own.
set -euo pipefail

have() {
    for dir in /usr/local/bin /usr/lib/postgresql/17/bin /usr/lib/postgresql/16/bin /usr/lib/postgresql/15/bin /usr/bin; do
        [[ -x "$dir/$1" ]] && return 0
    done
    return 1
}

if have initdb && have postgres && have psql && id postgres >/dev/null 2>&1; then
    for dir in /usr/local/bin /usr/lib/postgresql/17/bin /usr/lib/postgresql/16/bin /usr/lib/postgresql/15/bin; do
        [[ -x "$dir/postgres" ]] && { echo "postgres: $("$dir/postgres" --version)"; break; }
    done
    exit 0
fi
command -v apt-get >/dev/null 2>&1 ||
    { echo "ops/test-tail-postgres.sh: PostgreSQL server binaries are missing and apt-get is not available: install initdb, postgres and psql" >&2; exit 1; }
SUDO=""
[[ "$(id -u)" == 0 ]] || SUDO="sudo"
# No main cluster on 5432: the tests need only the binaries.
$SUDO mkdir -p /etc/postgresql-common
[[ -f /etc/postgresql-common/createcluster.conf ]] ||
    echo "create_main_cluster = false" | $SUDO tee /etc/postgresql-common/createcluster.conf >/dev/null
echo "installing postgresql-15 (initdb, postgres, psql)"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    -o Dpkg::Options::=--force-confold postgresql-15
/usr/lib/postgresql/15/bin/postgres --version
