#!/usr/bin/env bash
# Tools of the journal tailer's tests (tests/tests/tail_mariadb.rs): mariadbd and
# mariadb-install-db from the Debian package mariadb-server-core, installed when missing.
# The tests start their own private servers (temporary data directory, free loopback port) and
# never use a server the machine runs.
set -euo pipefail

have() {
    for dir in /usr/sbin /usr/bin /usr/local/sbin /usr/local/bin; do
        [[ -x "$dir/$1" ]] && return 0
    done
    command -v "$1" >/dev/null 2>&1
}

if have mariadbd && have mariadb-install-db; then
    echo "mariadbd: $( (/usr/sbin/mariadbd --version || mariadbd --version) 2>/dev/null | head -1)"
    exit 0
fi
command -v apt-get >/dev/null 2>&1 ||
    { echo "ops/test-tail.sh: mariadbd is missing and apt-get is not available: install MariaDB server binaries (mariadbd, mariadb-install-db)" >&2; exit 1; }
SUDO=""
[[ "$(id -u)" == 0 ]] || SUDO="sudo"
echo "installing mariadb-server-core (mariadbd, mariadb-install-db)"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends mariadb-server-core
/usr/sbin/mariadbd --version
