#!/usr/bin/env python3
"""Floods against one tern node (issue 16): memory stays bounded.

Starts `tern serve` (release build, 2 cores, fresh data directory under
/tmp, delivery held) and runs, one after the other:

  idle   N_IDLE connections (from 127.0.0.2.. so that
         smtp.connections_per_ip_max = 100 admits them; the config raises
         connections_per_core_max to N_IDLE / 2) that read the greeting and
         then say nothing for HOLD seconds;
  slow   N_SLOW connections that send their commands one byte per second
         for SLOW_SECS seconds, while a normal client sends messages
         (its per-message time is printed);
  big    N_BIG clients sending a BIG_MIB MiB message each at once
         (smtp.message_memory_max: the session that crosses it gets 421).

For each phase: tern's VmRSS before, during (peak of samples every 100 ms)
and after, VmHWM, tern CPU seconds, and the replies the clients got.
Every loop is bounded in count and time; tern is stopped (SIGTERM, then
SIGKILL) at the end, by PID.

Usage: bench/scripts/flood.py   (env: N_IDLE 10000, HOLD 10, N_SLOW 1000,
SLOW_SECS 30, N_BIG 100, BIG_MIB 34, PORT 2925, ADMIN 2926)
"""

import asyncio
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
N_IDLE = int(os.environ.get("N_IDLE", 10000))
HOLD = float(os.environ.get("HOLD", 10))
N_SLOW = int(os.environ.get("N_SLOW", 1000))
SLOW_SECS = int(os.environ.get("SLOW_SECS", 30))
N_BIG = int(os.environ.get("N_BIG", 100))
BIG_MIB = int(os.environ.get("BIG_MIB", 34))
PORT = int(os.environ.get("PORT", 2925))
ADMIN = int(os.environ.get("ADMIN", 2926))
PER_IP = 90  # below connections_per_ip_max (100)


def status(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Sampler:
    """Peak VmRSS of `pid`, sampled every 100 ms while running."""

    def __init__(self, pid):
        self.pid, self.peak, self.task = pid, 0, None

    async def run(self):
        while True:
            self.peak = max(self.peak, status(self.pid, "VmRSS"))
            await asyncio.sleep(0.1)

    def __enter__(self):
        self.task = asyncio.get_event_loop().create_task(self.run())
        return self

    def __exit__(self, *a):
        self.task.cancel()


def src(i):
    return f"127.0.0.{2 + i // PER_IP}"


async def connect(i):
    return await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", PORT, local_addr=(src(i), 0)), 10
    )


async def reply(reader, limit=30):
    """One SMTP reply (multi-line joined); its code."""
    while True:
        line = await asyncio.wait_for(reader.readline(), limit)
        if not line:
            return "closed"
        if len(line) < 4 or line[3:4] != b"-":
            return line[:3].decode()


async def idle_phase(pid):
    replies = Counter()
    conns = []

    async def one(i):
        try:
            r, w = await connect(i)
            replies[await reply(r, 15)] += 1
            conns.append(w)
        except Exception as e:  # noqa: BLE001 - counted, not raised
            replies[type(e).__name__] += 1

    with Sampler(pid) as s:
        for start in range(0, N_IDLE, 500):
            await asyncio.gather(*(one(i) for i in range(start, min(start + 500, N_IDLE))))
        await asyncio.sleep(HOLD)
        during = status(pid, "VmRSS")
        for w in conns:
            w.close()
        await asyncio.sleep(1)
    return replies, during, s.peak


async def normal_client(times, stop):
    """Messages one after the other from one client; seconds per message."""
    r, w = await asyncio.open_connection("127.0.0.1", PORT, local_addr=("127.0.0.250", 0))
    await reply(r)
    w.write(b"EHLO normal\r\n")
    await reply(r)
    while not stop.is_set():
        t = time.monotonic()
        w.write(b"MAIL FROM:<a@example.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n")
        for _ in range(3):
            await reply(r)
        w.write(b"Subject: normal\r\n\r\nhello\r\n.\r\n")
        code = await reply(r)
        times.append((code, time.monotonic() - t))
        await asyncio.sleep(0.2)
    w.close()


async def slow_phase(pid):
    replies = Counter()
    script = b"EHLO slow.example\r\nMAIL FROM:<slow@example.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n"

    async def one(i):
        try:
            r, w = await connect(i)
            await reply(r, 15)
            for b in script[:SLOW_SECS]:
                w.write(bytes([b]))
                await w.drain()
                await asyncio.sleep(1)
            replies["held to the end"] += 1
            w.close()
        except Exception as e:  # noqa: BLE001
            replies[type(e).__name__] += 1

    times, stop = [], asyncio.Event()
    with Sampler(pid) as s:
        normal = asyncio.get_event_loop().create_task(normal_client(times, stop))
        await asyncio.gather(*(one(i) for i in range(N_SLOW)))
        during = status(pid, "VmRSS")
        stop.set()
        await normal
    return replies, during, s.peak, times


async def big_phase(pid):
    replies = Counter()
    line = b"x" * 998 + b"\r\n"
    body = line * (BIG_MIB * 1024 * 1024 // len(line))

    async def one(i):
        try:
            r, w = await connect(i)
            await reply(r)
            w.write(b"EHLO big\r\n")
            await reply(r)
            w.write(b"MAIL FROM:<big@example.test>\r\n")
            if (c := await reply(r)) != "250":
                replies["MAIL " + c] += 1
                return
            w.write(b"RCPT TO:<b@example.test>\r\nDATA\r\n")
            await reply(r)
            await reply(r)
            w.write(b"Subject: big\r\n\r\n")
            for at in range(0, len(body), 1 << 20):
                w.write(body[at : at + (1 << 20)])
                await w.drain()
            w.write(b".\r\n")
            await w.drain()
            replies["end of data " + await reply(r, 120)] += 1
            w.close()
        except (ConnectionError, asyncio.IncompleteReadError) as e:
            replies["closed by tern: " + type(e).__name__] += 1
        except Exception as e:  # noqa: BLE001
            replies[type(e).__name__] += 1

    with Sampler(pid) as s:
        await asyncio.gather(*(one(i) for i in range(N_BIG)))
    return replies, s.peak


def mib(b):
    return f"{b / 2**20:.0f} MiB"


async def main():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    tern = os.path.join(ROOT, "target/release/tern")
    if not os.path.exists(tern):
        sys.exit("build first: cargo build --release")
    work = tempfile.mkdtemp(prefix="tern-flood-")
    cfg = os.path.join(work, "config.toml")
    with open(cfg, "w") as f:
        f.write(
            f"[smtp]\nconnections_per_core_max = {max(2000, N_IDLE // 2 + 100)}\n"
            "[delivery]\nhold = true\n"
        )
    log = open(os.path.join(work, "tern.log"), "w")
    proc = subprocess.Popen(
        [tern, "serve", "--config", cfg, "--data-dir", os.path.join(work, "data"),
         "--cores", "2", "--listen", f"127.0.0.1:{PORT}", "--admin-listen", f"127.0.0.1:{ADMIN}"],
        stdout=log, stderr=log,
    )
    try:
        for _ in range(100):
            try:
                _, w = await asyncio.open_connection("127.0.0.1", PORT)
                w.close()
                break
            except OSError:
                await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        pid = proc.pid
        base = status(pid, "VmRSS")
        print(f"tern idle: VmRSS {mib(base)}")
        cpu = cpu_seconds(pid)
        replies, during, peak = await idle_phase(pid)
        print(f"idle  {N_IDLE} connections held {HOLD:.0f}s: greetings {dict(replies)}; "
              f"VmRSS during {mib(during)} (peak {mib(peak)}, {(during - base) / max(1, replies['220']):.0f} B "
              f"per connection over idle); after {mib(status(pid, 'VmRSS'))}; CPU {cpu_seconds(pid) - cpu:.2f}s")
        cpu = cpu_seconds(pid)
        replies, during, peak, times = await slow_phase(pid)
        ok = [t for c, t in times if c == "250"]
        ok.sort()
        p50 = ok[len(ok) // 2] * 1000 if ok else float("nan")
        print(f"slow  {N_SLOW} connections at 1 byte/s for {SLOW_SECS}s: {dict(replies)}; VmRSS during "
              f"{mib(during)} (peak {mib(peak)}); a normal client meanwhile: {len(ok)} of {len(times)} "
              f"messages 250, p50 {p50:.1f} ms, max {max(ok) * 1000 if ok else float('nan'):.1f} ms; CPU {cpu_seconds(pid) - cpu:.2f}s")
        cpu = cpu_seconds(pid)
        replies, peak = await big_phase(pid)
        print(f"big   {N_BIG} clients x {BIG_MIB} MiB at once: {dict(replies)}; VmRSS peak {mib(peak)}, "
              f"VmHWM {mib(status(pid, 'VmHWM'))}; CPU {cpu_seconds(pid) - cpu:.2f}s")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(work, ignore_errors=True)


asyncio.run(main())
