#!/usr/bin/env python3
"""Latency floor of waking a sleeping process over loopback TCP, on this machine.

A publish reaches a Herald client through three wake-ups of a sleeping thread, each woken by a
socket or an eventfd: the publisher's request wakes the gateway's admin thread, the admin thread
wakes a worker (tokio channel → eventfd), the worker's write wakes the client. No code path can
beat the cost of those wake-ups, so this script measures them alone: a chain of processes that do
nothing but pass a 16-byte timestamp on, paced like the benchmark (one message per millisecond,
so every process is asleep when its message arrives).

    python3 ops/bench/wake_floor.py [--hops 1,2,3] [--messages 5000] [--interval-us 1000]

For each chain length it prints the one-way latency from the source's send to the sink's
receive (CLOCK_MONOTONIC, the same clock in every process): p50, p90, p99. Relays and the sink
block in recv() (a sleeping thread woken by the socket, as epoll would be); TCP_NODELAY is set.
The interpreter adds a few µs per hop, so the figures are an upper bound of the kernel's floor,
within a few µs.

Every process it starts is a child, stopped by pid when the chain is done.
"""

import argparse
import os
import socket
import struct
import sys
import time

MSG = struct.Struct("<QQ")  # (sequence, send time in ns)


def listener():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    return s


def connect(port):
    c = socket.create_connection(("127.0.0.1", port))
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return c


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def relay(inbound, out_port):
    """Child: pass every message on as soon as it arrives."""
    out = connect(out_port)
    conn, _ = inbound.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while True:
        m = recv_exact(conn, MSG.size)
        if m is None:
            break
        out.sendall(m)
    out.close()
    os._exit(0)


def quantile(sorted_values, q):
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def source(port, messages, interval_ns):
    """Child: send a timestamp every interval, then close."""
    out = connect(port)
    for seq in range(messages):
        due = time.monotonic_ns() + interval_ns
        out.sendall(MSG.pack(seq, time.monotonic_ns()))
        time.sleep(max(0, (due - time.monotonic_ns()) / 1e9))
    out.close()
    os._exit(0)


def chain(hops, messages, interval_ns):
    """Source → (hops - 1) relays → sink (this process); returns one-way latencies in µs."""
    warmup = 100
    sink = listener()
    next_port = sink.getsockname()[1]
    children = []
    for _ in range(hops - 1):
        inbound = listener()
        pid = os.fork()
        if pid == 0:
            sink.close()
            relay(inbound, next_port)
        children.append(pid)
        next_port = inbound.getsockname()[1]
        inbound.close()
    pid = os.fork()
    if pid == 0:
        sink.close()
        source(next_port, messages + warmup, interval_ns)
    children.append(pid)
    conn, _ = sink.accept()
    latencies = []
    try:
        while True:
            m = recv_exact(conn, MSG.size)
            now = time.monotonic_ns()
            if m is None:
                break
            seq, sent = MSG.unpack(m)
            if seq >= warmup:
                latencies.append((now - sent) / 1000)
    finally:
        for pid in children:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)
    if len(latencies) != messages:
        raise RuntimeError(f"{len(latencies)} of {messages} messages arrived")
    return sorted(latencies)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hops", default="1,2,3")
    p.add_argument("--messages", type=int, default=5000)
    p.add_argument("--interval-us", type=int, default=1000)
    a = p.parse_args()
    print(f"load average at the start: {' '.join(open('/proc/loadavg').read().split()[:3])}")
    for hops in [int(h) for h in a.hops.split(",")]:
        lat = chain(hops, a.messages, a.interval_us * 1000)
        print(
            f"{hops} wake-up(s): p50 {quantile(lat, 0.5):.0f} µs, p90 {quantile(lat, 0.9):.0f} µs, "
            f"p99 {quantile(lat, 0.99):.0f} µs ({len(lat)} messages, one per {a.interval_us} µs)"
        )
    print(f"load average at the end: {' '.join(open('/proc/loadavg').read().split()[:3])}")


if __name__ == "__main__":
    sys.exit(main())
