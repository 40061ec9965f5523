#!/usr/bin/env python3
"""TLS and WebSocket load for bench/run.py, speaking loadgen's output protocol.

    tlsload.py handshakes -p PORT [--seconds 5]
        TLS handshakes per second with ``openssl s_time -new`` (one client, full
        handshakes, no MQTT): the tool issue 18's table used.
    tlsload.py connect -p PORT --transport tls|ws|wss [-n 2000] [-c 50] [--keepalive 60]
        N MQTT 3.1.1 connections over TLS or WebSocket (asyncio), each CONNECT ->
        CONNACK, at most C between connect and CONNACK; then idle until standard
        input says ``q`` or closes, so run.py can read the broker's memory.

Output as loadgen's: ``MARK start``, ``MARK end``, ``RESULT key=value ...``,
and for ``connect`` ``IDLE n=N`` and ``CLOSED_WHILE_IDLE n=N``.  Standard library
and the ``openssl`` command only.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import os
import re
import resource
import ssl
import struct
import subprocess
import sys
import time


def mark(what: str) -> None:
    print(f"MARK {what}", flush=True)


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def handshakes(args: argparse.Namespace) -> int:
    cmd = ["openssl", "s_time", "-connect", f"{args.host}:{args.port}", "-new",
           "-time", str(args.seconds)]
    cpu0 = children_cpu()
    mark("start")
    t0 = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=args.seconds + 60)
    elapsed = time.monotonic() - t0
    mark("end")
    cpu = children_cpu() - cpu0
    m = re.search(r"(\d+) connections in ([\d.]+) real seconds", r.stdout)
    if not m:
        sys.stderr.write(r.stdout + r.stderr)
        print(f"RESULT mode=handshakes failed=1 elapsed={elapsed:.3f}", flush=True)
        return 1
    n, real = int(m.group(1)), float(m.group(2))
    print(f"RESULT mode=handshakes conns={n} elapsed={real:.3f} rate={n / real:.0f} "
          f"cpu={cpu:.3f} cpu_pct={100 * cpu / elapsed:.1f} failed=0", flush=True)
    return 0


def connect_packet(client_id: str, keepalive: int) -> bytes:
    cid = client_id.encode()
    body = b"\x00\x04MQTT\x04\x02" + struct.pack("!H", keepalive) + \
        struct.pack("!H", len(cid)) + cid
    return b"\x10" + bytes([len(body)]) + body


def ws_frame(payload: bytes) -> bytes:
    """One masked binary frame (client to server), payload < 126 bytes."""
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return bytes([0x82, 0x80 | len(payload)]) + key + masked


class Conns:
    def __init__(self) -> None:
        self.writers: list[asyncio.StreamWriter] = []
        self.connected = 0
        self.errors = 0
        self.closed_idle = 0
        self.idle = False


async def one(args: argparse.Namespace, i: int, state: Conns, sem: asyncio.Semaphore,
              ctx: ssl.SSLContext | None) -> None:
    async with sem:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(args.host, args.port, ssl=ctx,
                                        server_hostname=args.host if ctx else None), 30)
            packet = connect_packet(f"tl{os.getpid()}-{i}", args.keepalive)
            if args.transport in ("ws", "wss"):
                key = base64.b64encode(os.urandom(16)).decode()
                writer.write((f"GET /mqtt HTTP/1.1\r\nHost: {args.host}:{args.port}\r\n"
                              f"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                              f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                              f"Sec-WebSocket-Protocol: mqtt\r\n\r\n").encode())
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
                if b" 101 " not in head.split(b"\r\n", 1)[0]:
                    raise ConnectionError(head.split(b"\r\n", 1)[0].decode(errors="replace"))
                writer.write(ws_frame(packet))
                frame = await asyncio.wait_for(reader.readexactly(6), 30)
                connack = frame[2:]
            else:
                writer.write(packet)
                connack = await asyncio.wait_for(reader.readexactly(4), 30)
            if connack[:2] != b"\x20\x02" or connack[3] != 0:
                raise ConnectionError(f"CONNACK {connack!r}")
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError,
                ConnectionError) as e:
            state.errors += 1
            if state.errors <= 3:
                print(f"tlsload: connection {i}: {e!r}", file=sys.stderr)
            return
        state.connected += 1
        state.writers.append(writer)
    try:
        while await reader.read(4096):
            pass
    except (OSError, asyncio.IncompleteReadError):
        pass
    if state.idle:
        state.closed_idle += 1


async def connect(args: argparse.Namespace) -> int:
    ctx = None
    if args.transport in ("tls", "wss"):
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    state = Conns()
    sem = asyncio.Semaphore(args.concurrency)
    mark("start")
    t0 = time.monotonic()
    cpu0 = time.process_time()
    tasks = [asyncio.ensure_future(one(args, i, state, sem, ctx)) for i in range(args.n)]
    deadline = t0 + args.timeout
    while state.connected + state.errors < args.n and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    elapsed = time.monotonic() - t0
    cpu = time.process_time() - cpu0
    mark("end")
    failed = int(state.connected < args.n)
    print(f"RESULT mode=connect transport={args.transport} conns={args.n} "
          f"connected={state.connected} errors={state.errors} elapsed={elapsed:.3f} "
          f"rate={state.connected / elapsed:.0f} cpu={cpu:.3f} "
          f"cpu_pct={100 * cpu / elapsed:.1f} failed={failed}", flush=True)
    state.idle = True
    print(f"IDLE n={state.connected}", flush=True)
    loop = asyncio.get_running_loop()
    hold_until = time.monotonic() + args.hold
    line = loop.run_in_executor(None, sys.stdin.readline)
    try:
        await asyncio.wait_for(line, max(0.0, hold_until - time.monotonic()))
    except asyncio.TimeoutError:
        pass
    state.idle = False
    print(f"CLOSED_WHILE_IDLE n={state.closed_idle}", flush=True)
    for w in state.writers:
        w.transport.abort()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return failed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=["handshakes", "connect"])
    ap.add_argument("-H", "--host", default="127.0.0.1")
    ap.add_argument("-p", "--port", type=int, required=True)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--transport", choices=["tls", "ws", "wss"], default="tls")
    ap.add_argument("-n", type=int, default=2000)
    ap.add_argument("-c", "--concurrency", type=int, default=50)
    ap.add_argument("--keepalive", type=int, default=60)
    ap.add_argument("--hold", type=float, default=120.0)
    ap.add_argument("--timeout", type=float, default=120.0)
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.mode == "handshakes":
        return handshakes(args)
    return asyncio.run(connect(args))


if __name__ == "__main__":
    sys.exit(main())
