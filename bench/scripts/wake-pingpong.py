#!/usr/bin/env python3
"""What one cross-process wake-up costs on this machine.

Two processes ping-pong over loopback TCP (TCP_NODELAY): the client sends
SIZE bytes, the server answers an 8-byte reply; the client times each
round trip. Run once with both processes on the same CPU and once on two
different CPUs, and once more with a pause between round trips so the
other side is asleep (halted vCPU) when the request comes, as in a node at
moderate load. Each round trip is two wake-ups, so half of it is what a
hop between two tern processes (primary -> shadow, shadow -> primary)
costs before either does any work. Bounded: ROUNDS round trips per case.

Usage: bench/scripts/wake-pingpong.py [ROUNDS] [SIZE]   (defaults 5000, 4096)
"""
import os
import socket
import sys
import time

ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
SIZE = int(sys.argv[2]) if len(sys.argv) > 2 else 4096


def case(server_cpu, client_cpu, pause_s):
    lsn = socket.socket()
    lsn.bind(("127.0.0.1", 0))
    lsn.listen(1)
    port = lsn.getsockname()[1]
    pid = os.fork()
    if pid == 0:
        os.sched_setaffinity(0, {server_cpu})
        conn, _ = lsn.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            got = conn.recv(65536)
            if not got:
                break
            conn.sendall(b"250 ok\r\n")
        os._exit(0)
    lsn.close()
    os.sched_setaffinity(0, {client_cpu})
    c = socket.create_connection(("127.0.0.1", port))
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    msg = b"x" * SIZE
    lat = []
    for _ in range(ROUNDS):
        t = time.perf_counter_ns()
        c.sendall(msg)
        c.recv(100)
        lat.append(time.perf_counter_ns() - t)
        if pause_s:
            time.sleep(pause_s)
    c.close()
    os.waitpid(pid, 0)
    lat.sort()
    pct = lambda q: lat[min(len(lat) - 1, int(len(lat) * q))] / 1e3
    return pct(0.5), pct(0.9), pct(0.99)


def main():
    cpus = sorted(os.sched_getaffinity(0))
    other = cpus[1] if len(cpus) > 1 else cpus[0]
    print(f"round trip of {SIZE} bytes + 8-byte reply over loopback, {ROUNDS} rounds each (us)")
    print("| server CPU | client CPU | pause between | p50 | p90 | p99 |")
    print("|---|---|---|---:|---:|---:|")
    for server, client, pause in [
        (cpus[0], cpus[0], 0),
        (other, cpus[0], 0),
        (other, cpus[0], 0.0002),
    ]:
        p50, p90, p99 = case(server, client, pause)
        print(f"| {server} | {client} | {pause * 1e6:.0f} us | {p50:.1f} | {p90:.1f} | {p99:.1f} |")


if __name__ == "__main__":
    main()
