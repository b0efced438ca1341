#!/usr/bin/env python3
"""Restart time of a standalone gateway's embedded journal at N namespaces (BENCHMARKS.md).

Starts `herald-gateway` (release build) on loopback with a throwaway data dir, publishes one change
to each of N distinct namespaces through the admin API (10,000 per request), then kills it with
SIGKILL and starts it again R times, timing each start from spawn to its ready line and reading
the journal's own `journal loaded` log line (replay_ms: reading the snapshot and the segments;
open_ms: that plus the new snapshot written at start).

    python3 ops/bench/journal_restart.py [--binary target/release/herald-gateway]
        [--namespaces 1000000] [--restarts 3]
"""

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request


def start(binary, data_dir, log, extra=()):
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [binary, "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
         "--data-dir", data_dir, "--stop-grace-ms", "0", *extra],
        stdout=subprocess.PIPE, stderr=log, text=True,
        env=dict(os.environ, NO_COLOR="1"))
    deadline = t0 + 120
    for line in proc.stdout:
        if line.startswith("herald-gateway ready "):
            took = time.monotonic() - t0
            admin = re.search(r"admin=(\S+)", line).group(1)
            return proc, admin, took
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise SystemExit("the gateway did not print its ready line")


def publish(admin, changes):
    body = json.dumps({"changes": [{"ns": n, "sjid": s} for n, s in changes]}).encode()
    req = urllib.request.Request(f"http://{admin}/v1/publish", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        assert r.status == 202, r.status


def metric(admin, name):
    with urllib.request.urlopen(f"http://{admin}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def steady(admin, namespaces, requests, per_request):
    """Publishes `requests` batches of `per_request` changes to spread namespaces, one at a
    time; returns the sorted latencies (s)."""
    lat = []
    sjid = 2
    for i in range(requests):
        changes = [((i * 7919 + k * 104729) % namespaces + 1, sjid) for k in range(per_request)]
        sjid += 1
        t = time.monotonic()
        publish(admin, changes)
        lat.append(time.monotonic() - t)
    return sorted(lat)


def dir_bytes(d):
    return sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default="target/release/herald-gateway")
    ap.add_argument("--namespaces", type=int, default=1_000_000)
    ap.add_argument("--restarts", type=int, default=3)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="herald-journal-bench-")
    data = os.path.join(work, "data")
    log_path = os.path.join(work, "gateway.log")
    try:
        with open(log_path, "a") as log:
            proc, admin, _ = start(args.binary, data, log)
            t0 = time.monotonic()
            for first in range(1, args.namespaces + 1, 10_000):
                last = min(first + 10_000, args.namespaces + 1)
                publish(admin, [(n, 1) for n in range(first, last)])
            print(f"published {args.namespaces} namespaces in {time.monotonic() - t0:.1f} s; "
                  f"data dir {dir_bytes(data)} B")
            for i in range(args.restarts):
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                proc, admin, took = start(args.binary, data, log)
                log.flush()
                loaded = [l for l in open(log_path) if "journal loaded" in l][-1]
                fields = dict(re.findall(r"(\w+)=(\S+)", loaded))
                print(f"restart {i + 1}: ready after {took:.3f} s; journal: "
                      f"{fields.get('namespaces')} namespaces, replay {fields.get('replay_ms')} ms, "
                      f"open (replay + snapshot) {fields.get('open_ms')} ms; "
                      f"data dir {dir_bytes(data)} B")
            # Publish latency while the compactor snapshots the whole table (1 MiB segments, so
            # a 16 MB snapshot every ~65 requests), against the same load with no compaction.
            for label, compact in (("no compaction", str(1 << 40)), ("compacting", str(1 << 20))):
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                proc, admin, _ = start(args.binary, data, log,
                                       ("--journal-compact-bytes", compact))
                lat = steady(admin, args.namespaces, 400, 1000)
                time.sleep(1)
                n = metric(admin, "herald_journal_compactions_total")
                q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1000
                print(f"{label}: 400 publishes of 1000 changes: p50 {q(0.5):.1f} ms, "
                      f"p99 {q(0.99):.1f} ms, max {lat[-1] * 1000:.1f} ms; "
                      f"{n:.0f} background compactions of {args.namespaces} namespaces")
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
