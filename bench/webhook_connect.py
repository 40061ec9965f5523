#!/usr/bin/env python3
"""CONNECT/s through vmqtw with webhook authentication (vmq_webhooks), against
a local webhook service, uncached and cached.

    python3 bench/webhook_connect.py                 # 3,000 connects per case, 50 at once
    python3 bench/webhook_connect.py -n 10000 -c 100

Starts on free 127.0.0.1 ports: a twisted.web webhook service (its own
process, answering {"result": "ok"}, with ``cache-control: max-age=60`` for
the cached case) and a vmqtw broker (its own process) per case; then C
asyncio workers each CONNECT (user name and password), read CONNACK, send
DISCONNECT and close, until N connects are done.  Uncached: every connect has
a new client id, so every one is a webhook request.  Cached: each worker
reuses one client id, so after its first connect every answer comes from the
broker's cache.  A "none" case (allow_anonymous, no webhook) is the baseline.

One line per case:  case  N connects in S s = R CONNECT/s  (webhook requests: K)
Only the standard library plus Twisted (already a vmqtw dependency) is used.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"

WEBHOOK_SERVICE = r"""
import sys
from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import Site
cache = sys.argv[2] == "cached"
count = [0]
class Hook(Resource):
    isLeaf = True
    def render_POST(self, request):
        count[0] += 1
        request.content.read()
        request.setHeader(b"content-type", b"application/json")
        if cache:
            request.setHeader(b"cache-control", b"max-age=60")
        return b'{"result": "ok"}'
    def render_GET(self, request):
        return str(count[0]).encode()
site = Site(Hook())
site.noisy = False
reactor.listenTCP(int(sys.argv[1]), site, interface="127.0.0.1")
reactor.run()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {HOST}:{port} after {timeout:.0f}s")


def utf8(text: str) -> bytes:
    data = text.encode()
    return len(data).to_bytes(2, "big") + data


def connect_packet(client_id: str, username: str, password: str) -> bytes:
    body = utf8("MQTT") + bytes([4, 0xC2]) + (60).to_bytes(2, "big")
    body += utf8(client_id) + utf8(username) + utf8(password)
    assert len(body) < 128
    return bytes([0x10, len(body)]) + body


async def worker(port: int, worker_id: int, count: int, cached: bool, refused: list[int]) -> None:
    for i in range(count):
        client_id = f"w{worker_id}" if cached else f"w{worker_id}-{i}"
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(connect_packet(client_id, "bench", "secret"))
        connack = await asyncio.wait_for(reader.readexactly(4), 30)
        if connack != b"\x20\x02\x00\x00":
            refused.append(1)
        writer.write(b"\xe0\x00")
        writer.close()
        await writer.wait_closed()


async def drive(port: int, total: int, concurrency: int, cached: bool) -> tuple[float, int]:
    per = [total // concurrency + (1 if i < total % concurrency else 0)
           for i in range(concurrency)]
    refused: list[int] = []
    start = time.perf_counter()
    await asyncio.gather(*(worker(port, i, n, cached, refused) for i, n in enumerate(per)))
    return time.perf_counter() - start, len(refused)


def run_case(case: str, total: int, concurrency: int, workdir: Path) -> str:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"]
                                     if env.get("PYTHONPATH") else "")
    procs = []
    broker_port = free_port()
    lines = [f"listener.tcp.bench = {HOST}:{broker_port}", "log_level = warn",
             "listener.tcp.max_connections = 100000"]
    hook_port = None
    if case == "none":
        lines.append("allow_anonymous = on")
    else:
        hook_port = free_port()
        procs.append(subprocess.Popen([sys.executable, "-c", WEBHOOK_SERVICE, str(hook_port),
                                       case], env=env))
        wait_port(hook_port)
        lines += ["allow_anonymous = off", "plugins.vmq_webhooks = on",
                  "vmq_webhooks.bench.hook = auth_on_register",
                  f"vmq_webhooks.bench.endpoint = http://{HOST}:{hook_port}/auth"]
    conf = workdir / f"{case}.conf"
    conf.write_text("\n".join(lines) + "\n")
    log = open(workdir / f"{case}.log", "wb")
    procs.append(subprocess.Popen([sys.executable, "-m", "vmqtw", "-c", str(conf)],
                                  env=env, cwd=workdir, stdout=log, stderr=log))
    try:
        wait_port(broker_port)
        elapsed, refused = asyncio.run(drive(broker_port, total, concurrency,
                                             cached=(case == "cached")))
        requests = "-"
        if hook_port is not None:
            with socket.create_connection((HOST, hook_port), timeout=5) as s:
                s.sendall(b"GET / HTTP/1.0\r\n\r\n")
                answer = b""
                while chunk := s.recv(4096):
                    answer += chunk
            requests = answer.rsplit(b"\r\n\r\n", 1)[-1].decode()
        note = f", {refused} REFUSED" if refused else ""
        return (f"{case:8s} {total} connects in {elapsed:.2f} s = {total / elapsed:,.0f} "
                f"CONNECT/s  (webhook requests: {requests}{note})")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
        log.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--connects", type=int, default=3000)
    parser.add_argument("-c", "--concurrency", type=int, default=50)
    parser.add_argument("--case", action="append", choices=("none", "uncached", "cached"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vmqtw-bench-webhook-") as tmp:
        for case in args.case or ("none", "uncached", "cached"):
            print(run_case(case, args.connects, args.concurrency, Path(tmp)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
