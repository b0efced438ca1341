#!/usr/bin/env bash
# The chaos soak (issue #16 item 5, RELIABILITY.md): builds the binaries, then runs herald-chaos,
# which starts the loopback fleet (3-node nats-server cluster with the journal at R3, 2 relays,
# 2 gateways with ws + wss + QUIC), a steady journal publisher and managed clients over
# ws / wss / QUIC / long-poll, injects faults from a seeded schedule and prints the table.
#
#   ops/chaos.sh --minutes 30 [--seed S] [--clients 2000] [--rate 50] [--release]
#
# Exit status: 0 when nothing was missed, 1 when something was (or a client saw an unexpected
# RESET / DENIED), 2 when the run itself failed. Every process it starts is stopped by pid at the
# end, on Ctrl-C, and when its time bound (the minutes plus 4) expires.
# Needs nats-server 2.10+: $HERALD_NATS_SERVER, or on PATH (ops/test.sh --install-only installs
# 2.15 and prints its path).
set -euo pipefail
cd "$(dirname "$0")/.."

profile=debug
args=()
for a in "$@"; do
  case "$a" in
    --release) profile=release ;;
    *) args+=("$a") ;;
  esac
done

build=(cargo build -p herald-gateway -p herald-relay -p herald-e2e --bins)
[ "$profile" = release ] && build+=(--release)
"${build[@]}"

# 2,000 clients hold a socket each, and each gateway may hold all of them after a failover.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true

exec "target/$profile/herald-chaos" "${args[@]}"
