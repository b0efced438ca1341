"""Kernel floor of one fan-out delivery on this machine (BENCHMARKS.md, "Where the cycles go").

Paced rounds of 15 small TCP writes (1000 rounds/s, like `herald-loadgen fanout`), round-robin
over N loopback connections with TCP_NODELAY, read by another process with epoll. Prints the
sender's CPU per write (user + system; Python adds ~1 µs of its own): what any server pays in the kernel per recipient, at minimum,
before its own work. On loopback that includes the receiver's TCP input, which runs in the
sender's softirq.

    ulimit -n 20000; python3 ops/bench/tcp_floor.py [connections=3000] [rounds=8000]

Bounded: `rounds` rounds (8 s by default), then the reader process is told to exit.
"""
import os, socket, selectors, sys, time, resource
N_CONN = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 8000
PER = 15
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 0)); srv.listen(4096); port = srv.getsockname()[1]
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(w)
    sel = selectors.DefaultSelector()
    conns = []
    for i in range(N_CONN):
        # Several source addresses, so TIME_WAIT sockets of earlier runs do not exhaust ports.
        c = socket.socket(); c.bind((f"127.0.{1 + i // 10000}.2", 0)); c.connect(("127.0.0.1", port))
        c.setblocking(False)
        sel.register(c, selectors.EVENT_READ); conns.append(c)
    sel.register(r, selectors.EVENT_READ)
    while True:
        for key, _ in sel.select():
            if key.fileobj == r:
                os._exit(0)
            try:
                if not key.fileobj.recv(65536): sel.unregister(key.fileobj)
            except BlockingIOError:
                pass
os.close(r)
acc = []
srv.settimeout(30)  # bounded: a reader that failed to connect ends the run
for i in range(N_CONN):
    c, _ = srv.accept(); c.settimeout(None); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1); c.setblocking(False); acc.append(c)
msg = b"\x82\x0e" + b"x" * 14
time.sleep(1)
ru0 = resource.getrusage(resource.RUSAGE_SELF); t0 = time.monotonic(); k = 0
for i in range(ROUNDS):
    target = t0 + i * 0.001
    d = target - time.monotonic()
    if d > 0: time.sleep(d)
    for j in range(PER):
        acc[k % N_CONN].send(msg); k += 1
ru1 = resource.getrusage(resource.RUSAGE_SELF)
os.write(w, b"x"); os.waitpid(pid, 0)
sys_us = (ru1.ru_stime - ru0.ru_stime) * 1e6 / k
usr_us = (ru1.ru_utime - ru0.ru_utime) * 1e6 / k
# The user/system split comes from tick sampling and moves between runs; the sum holds still.
print(f"{k} writes over {N_CONN} connections in {time.monotonic()-t0:.1f} s: sender CPU {sys_us + usr_us:.2f} µs per write "
      f"(system {sys_us:.2f}, user {usr_us:.2f}; the user part is mostly the Python interpreter)")
