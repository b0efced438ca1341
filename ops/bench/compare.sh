#!/usr/bin/env bash
# Herald beside its peers, in one run on one machine, and BENCHMARKS.md written from it.
#
#   ops/bench/compare.sh [options]
#
# Runs the same workload (WebSocket connections, namespaces × subscribers, paced publishes and a
# burst) against, one after another:
#   standalone  herald-gateway with its embedded journal
#   nats        herald-gateway --nats behind nats-server -js and herald-relay
#   nats-ws     nats-server's WebSocket listener (core NATS; clients speak the NATS text protocol)
#   nats-ws-js  the same, with the publisher writing to a JetStream stream with the settings of
#               Herald's journal (what nats-ws costs with the durable journal Herald keeps)
#   node-ws     ops/bench/node-ws-server.js (Node `ws`)
# with `herald-loadgen fanout`; then the reconnect storm (`herald-loadgen storm`: every client
# dropped at once, changes published meanwhile; who catches up, who misses the last change) against
# Herald (standalone), nats-ws and node-ws, each of those among --paths; then writes the comparison
# block of BENCHMARKS.md with `herald-loadgen report` (text outside the block's markers is kept).
#
# Options (each also as an environment variable):
#   --conns N          HERALD_BENCH_CONNS       connections                    (15000)
#   --namespaces N     HERALD_BENCH_NAMESPACES  namespaces; subscribers = conns / namespaces (1000)
#   --rate N           HERALD_BENCH_RATE        paced publishes per second     (1000)
#   --seconds N        HERALD_BENCH_SECONDS     measured seconds of the paced phase (10)
#   --burst N          HERALD_BENCH_BURST       changes in the burst; 0: none  (100000)
#   --paths LIST       HERALD_BENCH_PATHS       which systems                  (standalone,nats,nats-ws,nats-ws-js,node-ws)
#   --time-limit S     HERALD_BENCH_TIME_LIMIT  stop the fan-out measuring after S seconds (900)
#   --storm-conns N    HERALD_BENCH_STORM_CONNS clients of each reconnect storm (--conns)
#   --storm-drop KIND  HERALD_BENCH_STORM_DROP  restart (SIGKILL the server, start it again) or cut
#                                               (every client drops its socket)        (restart)
#   --storm-publishes N HERALD_BENCH_STORM_PUBLISHES  changes published from the drop, at
#                                               1000/s (1000: one per namespace, in the first
#                                               second, mostly while the clients are away, so a
#                                               system without replay shows what it lost; more:
#                                               later changes hide the losses of peers)
#   --storm-time-limit S HERALD_BENCH_STORM_TIME_LIMIT  stop each storm after S seconds (240)
#   --no-storm                                  no reconnect storms
#   --out FILE         HERALD_BENCH_OUT         Markdown to write              (BENCHMARKS.md)
#   --no-report                                 measure and print, do not touch the Markdown
#   --note TEXT        HERALD_BENCH_NOTE        a sentence for the report (why this run, its size)
#
# The JSON reports (fanout.json, storm-<system>.json) and logs go to
# target/bench/compare-<UTC time>/ (git-ignored). The default size takes about 13 minutes on the
# 2-core development machine once the release binaries are built (the storms about 2 of them).
# What it installs when missing: nats-server 2.15 (via ops/test.sh --install-only) and the Node
# dependencies of ops/bench (npm ci). It needs cargo, node 18+ and npm. Every process it starts
# is stopped by pid on exit or on a signal (herald-loadgen stops its own servers and clients).
set -euo pipefail

die() {
    printf 'compare.sh: error: %s\n' "$*" >&2
    exit 1
}

CONNS="${HERALD_BENCH_CONNS:-15000}"
NAMESPACES="${HERALD_BENCH_NAMESPACES:-1000}"
RATE="${HERALD_BENCH_RATE:-1000}"
SECONDS_PACED="${HERALD_BENCH_SECONDS:-10}"
BURST="${HERALD_BENCH_BURST:-100000}"
PATHS="${HERALD_BENCH_PATHS:-standalone,nats,nats-ws,nats-ws-js,node-ws}"
TIME_LIMIT="${HERALD_BENCH_TIME_LIMIT:-900}"
OUT="${HERALD_BENCH_OUT:-BENCHMARKS.md}"
NOTE="${HERALD_BENCH_NOTE:-}"
STORM_CONNS="${HERALD_BENCH_STORM_CONNS:-}"
STORM_DROP="${HERALD_BENCH_STORM_DROP:-restart}"
STORM_PUBLISHES="${HERALD_BENCH_STORM_PUBLISHES:-1000}"
STORM_TIME_LIMIT="${HERALD_BENCH_STORM_TIME_LIMIT:-240}"
STORM=true
REPORT=true
ORIGINAL_ARGS=("$@")

while [[ $# -gt 0 ]]; do
    case "$1" in
    --conns) CONNS="$2"; shift 2 ;;
    --namespaces) NAMESPACES="$2"; shift 2 ;;
    --rate) RATE="$2"; shift 2 ;;
    --seconds) SECONDS_PACED="$2"; shift 2 ;;
    --burst) BURST="$2"; shift 2 ;;
    --paths) PATHS="$2"; shift 2 ;;
    --time-limit) TIME_LIMIT="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --note) NOTE="$2"; shift 2 ;;
    --storm-conns) STORM_CONNS="$2"; shift 2 ;;
    --storm-drop) STORM_DROP="$2"; shift 2 ;;
    --storm-publishes) STORM_PUBLISHES="$2"; shift 2 ;;
    --storm-time-limit) STORM_TIME_LIMIT="$2"; shift 2 ;;
    --no-storm) STORM=false; shift ;;
    --no-report) REPORT=false; shift ;;
    -h | --help)
        awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
        exit 0
        ;;
    *) die "unknown argument '$1' (try --help)" ;;
    esac
done
STORM_CONNS="${STORM_CONNS:-$CONNS}"
[[ "$STORM_DROP" == restart || "$STORM_DROP" == cut ]] ||
    die "--storm-drop must be restart or cut, not '$STORM_DROP'"
for n in CONNS NAMESPACES RATE SECONDS_PACED BURST TIME_LIMIT STORM_CONNS STORM_PUBLISHES \
    STORM_TIME_LIMIT; do
    [[ "${!n}" =~ ^[0-9]+$ ]] || die "$n must be a whole number, not '${!n}'"
done
(( NAMESPACES > 0 && CONNS > 0 )) || die "--conns and --namespaces must be above 0"
# A burst batch has distinct namespaces, at most 1000 changes per publish call.
BURST_BATCH=$(( NAMESPACES < 1000 ? NAMESPACES : 1000 ))

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
OUTDIR="$ROOT/target/bench/compare-$STAMP"
mkdir -p "$OUTDIR"

# ---------------------------------------------------------------------------------------------
# Processes started in the background, stopped by pid on exit (herald-loadgen SIGKILLs its own
# children when it gets SIGTERM).
LOADGEN_PID=""
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
    if [[ -n "$LOADGEN_PID" ]] && kill -0 "$LOADGEN_PID" 2>/dev/null; then
        kill -TERM "$LOADGEN_PID" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$LOADGEN_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$LOADGEN_PID" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

echo "==> tools"
command -v cargo >/dev/null || die "cargo not found (install Rust with rustup)"
command -v node >/dev/null || die "node not found (Node 18+ is needed for the node-ws peer)"
command -v npm >/dev/null || die "npm not found"
NATS_SERVER="$(ops/test.sh --install-only 2>&1 | sed -n 's/^HERALD_NATS_SERVER=\([^ ]*\) .*/\1/p' | tail -n 1)"
[[ -x "$NATS_SERVER" ]] || die "no nats-server 2.15 (ops/test.sh --install-only could not provide one)"
if [[ ! -f ops/bench/node_modules/ws/package.json ]]; then
    echo "installing the Node dependencies of ops/bench (npm ci)"
    npm ci --prefix ops/bench --no-audit --no-fund
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
(( $(ulimit -n) >= 20000 )) ||
    echo "warning: open-files limit $(ulimit -n) < 20000; receivers hold up to 15000 connections each" >&2

echo "==> cargo build --release -p herald-gateway -p herald-relay -p herald-loadgen"
cargo build --release -p herald-gateway -p herald-relay -p herald-loadgen
LOADGEN="$ROOT/target/release/herald-loadgen"

RUSTC_V="$(rustc --version)"
NATS_V="$("$NATS_SERVER" --version | sed 's/^nats-server: //')"
NODE_V="$(node --version)"
WS_V="$(node -p "require('./ops/bench/node_modules/ws/package.json').version")"
COMMIT="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [[ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]]; then
    COMMIT="$COMMIT (with uncommitted changes)"
fi

FANOUT=("$LOADGEN" fanout
    --paths "$PATHS"
    --conns "$CONNS" --namespaces "$NAMESPACES"
    --rate "$RATE" --seconds "$SECONDS_PACED"
    --burst "$BURST" --burst-batch "$BURST_BATCH"
    --nats-server "$NATS_SERVER"
    --node-ws-script "$ROOT/ops/bench/node-ws-server.js"
    --json "$OUTDIR/fanout.json")
COMMAND="ops/bench/compare.sh"
for a in "${ORIGINAL_ARGS[@]}"; do
    if [[ "$a" =~ ^[A-Za-z0-9_./,:=+-]+$ ]]; then
        COMMAND+=" $a"
    else
        COMMAND+=" '${a//\'/\'\\\'\'}'"
    fi
done
echo "==> $COMMAND"
echo "    ${FANOUT[*]}"
echo "    load average: $(cut -d' ' -f1-3 /proc/loadavg); output in $OUTDIR"

# In the background, so the trap can stop it by pid; `timeout` bounds it by --time-limit (it
# sends SIGTERM, on which herald-loadgen kills its servers and clients, then SIGKILL 30 s later).
timeout --signal=TERM --kill-after=30 "$TIME_LIMIT" "${FANOUT[@]}" > >(tee "$OUTDIR/fanout.txt") 2>&1 &
LOADGEN_PID=$!
status=0
wait "$LOADGEN_PID" || status=$?
LOADGEN_PID=""
(( status != 124 )) || echo "compare.sh: time limit of ${TIME_LIMIT} s reached, stopped" >&2

[[ -f "$OUTDIR/fanout.json" ]] || die "herald-loadgen fanout wrote no report (exit $status); see $OUTDIR/fanout.txt"
if (( status != 0 )); then
    echo "warning: herald-loadgen fanout exited with $status (some notifications missing or wrong: see the tables above); the report shows them" >&2
fi

# ---------------------------------------------------------------------------------------------
# The reconnect storms: Herald's own gateway (standalone) for either Herald path, and each peer.
STORM_JSONS=()
if $STORM; then
    TARGETS=()
    [[ ",$PATHS," == *,standalone,* || ",$PATHS," == *,nats,* ]] && TARGETS+=(herald)
    [[ ",$PATHS," == *,nats-ws,* ]] && TARGETS+=(nats-ws)
    [[ ",$PATHS," == *,node-ws,* ]] && TARGETS+=(node-ws)
    for target in "${TARGETS[@]}"; do
        STORM_CMD=("$LOADGEN" storm --target "$target"
            --conns "$STORM_CONNS" --namespaces "$NAMESPACES" --drop "$STORM_DROP"
            --publishes "$STORM_PUBLISHES"
            --nats-server "$NATS_SERVER"
            --node-ws-script "$ROOT/ops/bench/node-ws-server.js"
            --json "$OUTDIR/storm-$target.json")
        echo "==> reconnect storm: $target"
        echo "    ${STORM_CMD[*]}"
        timeout --signal=TERM --kill-after=30 "$STORM_TIME_LIMIT" "${STORM_CMD[@]}" \
            > >(tee "$OUTDIR/storm-$target.txt") 2>&1 &
        LOADGEN_PID=$!
        storm_status=0
        wait "$LOADGEN_PID" || storm_status=$?
        LOADGEN_PID=""
        (( storm_status != 124 )) || echo "compare.sh: storm $target: time limit of ${STORM_TIME_LIMIT} s reached, stopped" >&2
        if [[ -f "$OUTDIR/storm-$target.json" ]]; then
            STORM_JSONS+=(--storm "$OUTDIR/storm-$target.json")
        fi
        if (( storm_status != 0 )); then
            echo "warning: herald-loadgen storm --target $target exited with $storm_status; see $OUTDIR/storm-$target.txt" >&2
            (( status != 0 )) || status=$storm_status
        fi
    done
fi

if $REPORT; then
    "$LOADGEN" report --json "$OUTDIR/fanout.json" --out "$OUT" \
        "${STORM_JSONS[@]}" \
        --command "$COMMAND" \
        --note "$NOTE" \
        --version-of "Herald=$COMMIT" \
        --version-of "rustc=$RUSTC_V" \
        --version-of "nats-server=$NATS_V" \
        --version-of "node=$NODE_V" \
        --version-of "ws=$WS_V"
fi
if $REPORT; then
    echo "==> done: $OUTDIR, $OUT"
else
    echo "==> done: $OUTDIR"
fi
exit "$status"
