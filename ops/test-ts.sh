#!/usr/bin/env bash
# Tests of the TypeScript client (clients/ts, npm package @herald/client), called by ops/test.sh
# after `cargo build --workspace --bins`:
#   npm ci (from the committed package-lock.json), build (tsc + esbuild; fails if the minified +
#   gzipped browser bundle is over 6000 bytes), unit tests (`node --test`: codec, shared corpus,
#   randomized round-trips, session logic), then end-to-end tests in Node and in headless Debian
#   Chromium (playwright-core, no browser download) against target/debug/herald-gateway.
# Needs Node >= 20 and npm; skips with a message otherwise. Installs Debian's `chromium` package
# with apt-get when /usr/bin/chromium is missing (set CHROMIUM=/path to use another build).
#   ops/test-ts.sh [--compare]   --compare also measures centrifuge and nats.ws for the README
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root="$PWD"

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "SKIPPED: TypeScript client tests: node and npm are not installed (Node >= 20 needed)"
    exit 0
fi
major="$(node -p 'process.versions.node.split(".")[0]')"
if ((major < 20)); then
    echo "SKIPPED: TypeScript client tests: node $(node --version) is older than 20 (needs fetch, AbortController and node --test)"
    exit 0
fi

if [[ -z "${CHROMIUM:-}" && ! -x /usr/bin/chromium ]]; then
    echo "installing Debian's chromium for the browser tests"
    sudo=""
    [[ "$(id -u)" == 0 ]] || sudo="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get install -y chromium || { $sudo apt-get update && $sudo apt-get install -y chromium; } ||
        { echo "ops/test-ts.sh: could not install chromium with apt-get; install it or set CHROMIUM=/path/to/chromium" >&2; exit 1; }
fi

gateway="${CARGO_TARGET_DIR:-$root/target}/debug/herald-gateway"
[[ -x "$gateway" ]] || { echo "ops/test-ts.sh: $gateway missing: run cargo build --workspace --bins first" >&2; exit 1; }
export HERALD_GATEWAY_BIN="$gateway"

cd clients/ts
npm ci --no-audit --no-fund
node scripts/build.mjs "$@"
node --test test/unit/
node --test --test-concurrency=1 test/e2e/
