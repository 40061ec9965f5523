#!/usr/bin/env python3
"""Benchmark vmqtw against mosquitto on loopback, in the same run.

    python3 bench/run.py                      # every scenario, 3 runs each (medians)
    python3 bench/run.py --quick              # smoke run, well under a minute
    python3 bench/run.py --scenario qos0_1to1 --scenario latency_2k
    python3 bench/run.py --profile            # vmqtw under cProfile, top 25 by tottime

For each scenario and each broker a fresh broker is started on a free
127.0.0.1 port, the C load generator (bench/loadgen.c, built with gcc -O2 into
bench/build/) runs against it, and the broker is stopped (SIGTERM, then
SIGKILL; every wait is bounded).  CPU time of broker and load generator comes
from /proc/PID/stat (utime+stime) between the generator's "MARK start" and
"MARK end" lines, i.e. over the measurement window only.  Memory per idle
connection is (VmRSS with N idle connections - VmRSS before) / N.

One line per scenario:

    scenario  mosquitto=...  vmqtw=...  ratio=vmqtw/mosquitto  (broker cpu %, loadgen cpu %)

Only Python's standard library is used.  Logs, generated configs, profiles and
results.json go to bench/build/ (git-ignored).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import random
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
BUILD = BENCH / "build"
LOADGEN_SRC = BENCH / "loadgen.c"
TLSLOAD = BENCH / "tlsload.py"       # TLS/WebSocket clients and openssl s_time
TLS_DIR = BUILD / "tls"
LOADGEN = BUILD / "loadgen"
VMQTW_TREE = REPO  # the checkout whose vmqtw is measured (--vmqtw-tree: before/after runs)
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
HOST = "127.0.0.1"  # loopback only, always
NOISY = 30.0        # % of a core used by other processes during a window: a noisy run
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024

NOT_POSSIBLE = ("mosquitto over WebSocket (Debian builds it without websockets): the ws_ "
                "scenarios measure vmqtw alone")


# -- scenarios ---------------------------------------------------------------------------

@dataclass
class Scenario:
    name: str
    mode: str                      # pubsub | connect | latency
    args: list[str]
    unit: str
    target: str                    # from issue 8, for the verdict column
    mosquitto_nodelay: bool        # mosquitto's faster setting for this kind of load
    describe: str = ""
    vmqtw_options: list[str] = field(default_factory=list)  # KEY=VALUE for this scenario
    transport: str = "tcp"         # the listener both brokers open: tcp | tls | ws
    program: str = "loadgen"       # loadgen | tlsload (bench/tlsload.py)


KEEPALIVE = ["--keepalive", "60"]  # as real clients: PINGREQ after 60 s without output


def scenarios(quick: bool) -> list[Scenario]:
    warm, dur = ("0.5", "2") if quick else ("1", "5")
    timing = ["--warmup", warm, "--duration", dur, "--timeout", "15"] + KEEPALIVE
    conns = "2000" if quick else "10000"
    many = "5000" if quick else "100000"
    persistent_args = ["--topology", "exact", "--pubs", "1", "--subs", "1", "-q", "1",
                       "--window", "100", "--e2e-window", "1000", "--persistent-subs"]
    return [
        Scenario("qos0_1to1", "pubsub",
                 ["--topology", "exact", "--pubs", "1", "--subs", "1", "-q", "0",
                  "--e2e-window", "1000"] + timing,
                 "msg/s", ">=1.0", False, "QoS 0, 1 publisher -> 1 subscriber"),
        Scenario("qos1_1to1", "pubsub",
                 ["--topology", "exact", "--pubs", "1", "--subs", "1", "-q", "1",
                  "--window", "100", "--e2e-window", "1000"] + timing,
                 "msg/s", ">=1.0", False, "QoS 1, 1 -> 1 (100 PUBACKs outstanding)"),
        Scenario("fanout_qos0", "pubsub",
                 ["--topology", "fanout", "--pubs", "1", "--subs", "50", "-q", "0",
                  "--e2e-window", "100"] + timing,
                 "deliveries/s", ">=1.0", False, "QoS 0, 1 -> 50 subscribers, one topic"),
        Scenario("fanin_qos0", "pubsub",
                 ["--topology", "fanin", "--pubs", "50", "--subs", "1", "-q", "0",
                  "--e2e-window", "20"] + timing,
                 "msg/s", ">=1.0", False, "QoS 0, 50 publishers bench/<i> -> 1 on bench/#"),
        Scenario("qos1_window1000", "pubsub",
                 ["--topology", "exact", "--pubs", "1", "--subs", "1", "-q", "1",
                  "--window", "1000", "--e2e-window", "2000"] + timing,
                 "msg/s", ">=1.0", False, "QoS 1, 1 -> 1, 1,000 PUBACKs outstanding"),
        Scenario("connect_10k", "connect",
                 ["-n", conns, "-c", "100"] + KEEPALIVE, "conn/s", ">=0.5", False,
                 f"{conns} connections, CONNECT/CONNACK, 100 at a time; then idle"),
        # 100,000 idle clients with keep alive 60: spread over 8 source addresses
        # (one has ~28k ephemeral ports towards the listener); one PINGREQ on each
        # once all are up shows keep alive is still served under that load.
        Scenario("idle_100k", "connect",
                 ["-n", many, "-c", "100", "--sources", "8", "--ping-check",
                  "--timeout", "240"] + KEEPALIVE, "conn/s", "-", False,
                 f"{many} idle connections, keep alive 60: RSS, time to connect, pings"),
        # TLS (RSA 2048 self-signed, TLS 1.3) and WebSocket, with bench/tlsload.py
        Scenario("tls_handshakes", "handshakes", ["--seconds", "3" if quick else "5"],
                 "hs/s", ">=0.8", False, "full TLS handshakes/s, openssl s_time -new, one client",
                 transport="tls", program="tlsload"),
        Scenario("tls_idle", "connect",
                 ["--transport", "tls", "-n", "500" if quick else "2000", "-c", "50"]
                 + KEEPALIVE, "conn/s", "-", False,
                 "idle MQTT connections over TLS: KiB per connection",
                 transport="tls", program="tlsload"),
        Scenario("ws_idle", "connect",
                 ["--transport", "ws", "-n", "500" if quick else "2000", "-c", "50"]
                 + KEEPALIVE, "conn/s", "-", False,
                 "idle MQTT connections over WebSocket: KiB per connection",
                 transport="ws", program="tlsload"),
        # Throughput over TLS (both brokers' TLS listeners) and over WebSocket
        # (vmqtw alone when mosquitto has no websockets): loadgen --transport.
        Scenario("tls_qos0_1to1", "pubsub",
                 ["--transport", "tls", "--topology", "exact", "--pubs", "1", "--subs", "1",
                  "-q", "0", "--e2e-window", "1000"] + timing,
                 "msg/s", "-", False, "QoS 0, 1 -> 1 over TLS", transport="tls"),
        Scenario("tls_fanin_qos0", "pubsub",
                 ["--transport", "tls", "--topology", "fanin", "--pubs", "50", "--subs", "1",
                  "-q", "0", "--e2e-window", "20"] + timing,
                 "msg/s", "-", False, "QoS 0, 50 -> 1 on bench/# over TLS", transport="tls"),
        Scenario("ws_qos0_1to1", "pubsub",
                 ["--transport", "ws", "--topology", "exact", "--pubs", "1", "--subs", "1",
                  "-q", "0", "--e2e-window", "1000"] + timing,
                 "msg/s", "-", False,
                 "QoS 0, 1 -> 1 over WebSocket (a frame per packet, as MQTT.js)", transport="ws"),
        Scenario("ws_fanin_qos0", "pubsub",
                 ["--transport", "ws", "--topology", "fanin", "--pubs", "50", "--subs", "1",
                  "-q", "0", "--e2e-window", "20"] + timing,
                 "msg/s", "-", False, "QoS 0, 50 -> 1 on bench/# over WebSocket",
                 transport="ws"),
        Scenario("latency_2k", "latency",
                 ["--rate", "2000"] + timing, "us", "p99 <=1.0x", True,
                 "QoS 0 at 2,000 msg/s, 1 -> 1, p50/p99"),
        # Issue 9: what the durable store costs.  The subscriber's session is
        # persistent, so vmqtw records every message and holds each PUBACK until
        # the record is committed, or (issue 18) cancelled because the subscriber
        # acknowledged the message first (mosquitto keeps it in memory).
        Scenario("qos1_persistent", "pubsub", persistent_args + timing,
                 "msg/s", "-", False,
                 "QoS 1, 1 -> 1 persistent subscriber; vmqtw store on (sync = group)"),
        Scenario("qos1_persistent_nostore", "pubsub", persistent_args + timing,
                 "msg/s", "-", False,
                 "the same with vmqtw's store off (persistent_store.enabled = off)",
                 ["persistent_store.enabled=off"]),
    ]


# -- helpers -----------------------------------------------------------------------------

NOFILE_WANTED = 262144  # idle_100k: 100k sockets in the broker, 100k in the load generator


def raise_nofile() -> None:
    """Raise RLIMIT_NOFILE: to NOFILE_WANTED where allowed (root may raise the hard
    limit up to fs.nr_open), else the soft limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < NOFILE_WANTED:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE_WANTED, NOFILE_WANTED))
            return
        except (ValueError, OSError):
            pass
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def free_port() -> int:
    """A free loopback port below the ephemeral range.

    Ports the kernel hands out for port 0 and for outgoing connections (ours, and
    other test suites' on the same machine) come from ip_local_port_range; choosing
    below it avoids a race between closing this probe socket and the broker's bind.
    """
    lo = 32768
    try:
        lo = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    rng = random.Random()
    if lo > 12000:
        for _ in range(50):
            port = rng.randrange(10000, lo)
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind((HOST, port))
                except OSError:
                    continue
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def cpu_ticks(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    except (OSError, IndexError, ValueError):
        return None


def machine_busy_ticks() -> tuple[int, int] | None:
    """(busy, irq+softirq) jiffies of the whole machine (all CPUs), from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        # user nice system idle iowait irq softirq steal; guest is inside user
        return sum(v[:8]) - v[3] - v[4], v[5] + v[6]
    except (OSError, ValueError, IndexError):
        return None


def wait_quiet(limit: float, threshold: float = 30.0) -> float | None:
    """Wait (at most ``limit`` s) until other processes use < ``threshold`` % of a core.

    Returns the last sample (percent of a core used by everything on the machine
    over 0.5 s), or None if /proc/stat is unreadable.  Used before each run: other
    work on a 2-core machine distorts the figures, the latency ones most.
    """
    deadline = time.monotonic() + limit
    busy = None
    while True:
        a = machine_busy_ticks()
        t0 = time.monotonic()
        time.sleep(0.5)
        b = machine_busy_ticks()
        if a is None or b is None:
            return None
        busy = 100.0 * (b[0] - a[0]) / CLK_TCK / (time.monotonic() - t0)
        if busy < threshold or time.monotonic() >= deadline:
            return busy
        time.sleep(1.0)


def git_revision() -> str:
    try:
        rev = subprocess.run(["git", "-C", str(VMQTW_TREE), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(VMQTW_TREE), "status", "--porcelain", "--",
                                "vmqtw"],
                               capture_output=True, text=True, timeout=10).stdout.splitlines()
        return f"{rev or '?'}" + (f" ({len(dirty)} changed file(s) under vmqtw/)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "?"


def rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def tail(path: Path, n: int = 15) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join("    | " + l for l in lines[-n:]) or "    | (empty log)"


def build_loadgen() -> None:
    BUILD.mkdir(parents=True, exist_ok=True)
    if LOADGEN.exists() and LOADGEN.stat().st_mtime >= LOADGEN_SRC.stat().st_mtime:
        return
    # With OpenSSL's headers (libssl-dev) the generator also speaks TLS (--transport
    # tls/wss, the tls_ throughput scenarios); without them, everything else.
    cmd = ["gcc", "-O2", "-Wall", "-DLOADGEN_TLS", "-o", str(LOADGEN), str(LOADGEN_SRC),
           "-lssl", "-lcrypto"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        print("NOTE: building the load generator with TLS failed (libssl-dev missing?): "
              "the tls_ throughput scenarios will fail", flush=True)
        cmd = ["gcc", "-O2", "-Wall", "-o", str(LOADGEN), str(LOADGEN_SRC)]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        sys.exit(f"run.py: building the load generator failed:\n{r.stderr}")


def make_tls_material() -> None:
    """A self-signed RSA 2048 certificate for 127.0.0.1 in bench/build/tls/ (once)."""
    TLS_DIR.mkdir(parents=True, exist_ok=True)
    if (TLS_DIR / "cert.pem").exists() and (TLS_DIR / "key.pem").exists():
        return
    r = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                        "-keyout", str(TLS_DIR / "key.pem"), "-out", str(TLS_DIR / "cert.pem"),
                        "-days", "3650", "-subj", "/CN=127.0.0.1"],
                       capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        sys.exit(f"run.py: making the TLS certificate failed:\n{r.stderr}")


_mosquitto_ws: bool | None = None


def mosquitto_has_websockets(workdir: Path) -> bool:
    """Whether this mosquitto can open a websockets listener (Debian 12's cannot)."""
    global _mosquitto_ws
    if _mosquitto_ws is None:
        probe = Mosquitto(workdir, "ws-probe", [], False, "ws")
        try:
            probe.start(timeout=5, attempts=1)
            _mosquitto_ws = True
        except Exception:
            _mosquitto_ws = False
        finally:
            probe.stop()
    return _mosquitto_ws


def fmt_num(v: float | None, unit: str) -> str:
    if v is None:
        return "FAILED"
    if unit == "us":
        return f"{v:.0f}us"
    if unit == "KiB":
        return f"{v:.2f}KiB"
    if v >= 10000:
        return f"{v / 1000:.1f}k"
    return f"{v:.0f}"


# -- brokers -----------------------------------------------------------------------------

class PortInUse(RuntimeError):
    pass


class Broker:
    """A broker process on a free loopback port; always stop() it."""

    name = "?"

    def __init__(self, workdir: Path, tag: str, options: list[str],
                 transport: str = "tcp") -> None:
        self.transport = transport
        self.workdir = workdir
        self.tag = tag
        self.options = options
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / f"{tag}-{self.name}.log"
        self._logf: Any = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str] | None:
        return None

    def cwd(self) -> Path | None:
        return None

    def stop_signal(self) -> int:
        return signal.SIGTERM

    def start(self, timeout: float = 15.0, attempts: int = 3) -> None:
        """Start and wait until the port accepts; on a lost port race, retry elsewhere."""
        for attempt in range(attempts):
            try:
                self._start(timeout)
                return
            except PortInUse:
                if attempt == attempts - 1:
                    raise
                self.stop()
                self.port = free_port()
                self.write_conf()

    def write_conf(self) -> None:
        raise NotImplementedError

    def _start(self, timeout: float) -> None:
        self._logf = open(self.log, "wb")
        self.proc = subprocess.Popen(self.command(), stdout=self._logf, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, preexec_fn=raise_nofile,
                                     env=self.env(), cwd=self.cwd())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = tail(self.log)
                if "in use" in log:  # "Address already in use" (both brokers say so)
                    raise PortInUse(log)
                raise RuntimeError(f"{self.name} exited at startup (status {self.proc.returncode})"
                                   f"\n{log}")
            try:
                with socket.create_connection((HOST, self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not listen on {HOST}:{self.port} "
                           f"within {timeout:.0f} s\n{tail(self.log)}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        """Stop signal, then SIGKILL after ``timeout``; sets ``self.hung`` if it came to that."""
        proc = self.proc
        self.hung = False
        if proc is None:
            return None
        try:
            if proc.poll() is None:
                proc.send_signal(self.stop_signal())
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self.hung = True
                    proc.kill()
                    proc.wait(timeout=5)
        finally:
            if self._logf is not None:
                self._logf.close()
                self._logf = None
        return proc.returncode


class Mosquitto(Broker):
    name = "mosquitto"

    def __init__(self, workdir: Path, tag: str, options: list[str], nodelay: bool,
                 transport: str = "tcp") -> None:
        super().__init__(workdir, tag, options, transport)
        self.nodelay = nodelay
        self.conf = workdir / f"{tag}-mosquitto.conf"
        self.write_conf()

    def write_conf(self) -> None:
        nodelay, options = self.nodelay, self.options
        settings = {
            "allow_anonymous": "true",
            "persistence": "false",
            "log_dest": "stderr",
            "log_type": "error",
            "max_connections": "-1",
            "max_inflight_messages": "100",
            "max_queued_messages": "100000",
            "set_tcp_nodelay": "true" if nodelay else "false",
        }
        for opt in options:
            k, _, v = opt.partition("=")
            settings[k.strip()] = v.strip()
        lines = [f"listener {self.port} {HOST}"]
        if self.transport == "tls":
            lines += [f"certfile {TLS_DIR / 'cert.pem'}", f"keyfile {TLS_DIR / 'key.pem'}"]
            if os.geteuid() == 0:  # or it drops to user mosquitto, who cannot read the key
                settings["user"] = "root"
        elif self.transport == "ws":
            lines += ["protocol websockets"]
        lines += [f"{k} {v}" for k, v in settings.items()]
        self.conf.write_text("\n".join(lines) + "\n")

    def command(self) -> list[str]:
        return [MOSQUITTO, "-c", str(self.conf)]


class Vmqtw(Broker):
    name = "vmqtw"

    def __init__(self, workdir: Path, tag: str, options: list[str], profile: Path | None,
                 transport: str = "tcp") -> None:
        super().__init__(workdir, tag, options, transport)
        self.profile = profile
        self.conf = workdir / f"{tag}-vmqtw.conf"
        self.write_conf()

    def write_conf(self) -> None:
        options = self.options
        settings = {
            "allow_anonymous": "on",
            "listener.max_connections": "infinity",
            "max_inflight_messages": "100",
            "max_online_messages": "100000",
            "max_offline_messages": "100000",
            "log_level": "warn",
            # the durable store (on by default) in a directory of this run's own
            "persistent_store.directory": f"{self.tag}-data",
        }
        for opt in options:
            k, _, v = opt.partition("=")
            settings[k.strip()] = v.strip()
        kind = {"tcp": "tcp", "tls": "ssl", "ws": "ws"}[self.transport]
        lines = [f"listener.{kind}.bench = {HOST}:{self.port}"]
        if self.transport == "tls":
            lines += [f"listener.ssl.bench.certfile = {TLS_DIR / 'cert.pem'}",
                      f"listener.ssl.bench.keyfile = {TLS_DIR / 'key.pem'}"]
        lines += [f"{k} = {v}" for k, v in settings.items()]
        self.conf.write_text("\n".join(lines) + "\n")

    def command(self) -> list[str]:
        if self.profile is not None:
            return [sys.executable, "-m", "cProfile", "-o", str(self.profile),
                    "-m", "vmqtw", "-c", str(self.conf)]
        return [sys.executable, "-m", "vmqtw", "-c", str(self.conf)]

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(VMQTW_TREE) + (os.pathsep + env["PYTHONPATH"]
                                         if env.get("PYTHONPATH") else "")
        return env

    def cwd(self) -> Path:
        return VMQTW_TREE

    def stop_signal(self) -> int:
        # SIGINT lets cProfile write its file (KeyboardInterrupt unwinds the reactor).
        return signal.SIGINT if self.profile is not None else signal.SIGTERM


# -- one run -----------------------------------------------------------------------------

@dataclass
class Run:
    ok: bool
    value: float | None = None              # the headline figure
    extra: dict[str, Any] = field(default_factory=dict)
    broker_cpu: float | None = None         # % of one core over the window
    loadgen_cpu: float | None = None
    error: str = ""


def parse_result(line: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in line.split()[1:]:
        k, _, v = item.partition("=")
        try:
            out[k] = int(v)
        except ValueError:
            try:
                out[k] = float(v)
            except ValueError:
                out[k] = v
    return out


class LineReader:
    """Lines from a pipe via a thread, so every wait can have a deadline."""

    def __init__(self, stream: Any) -> None:
        self.q: queue.Queue[str | None] = queue.Queue()
        self.t = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self.t.start()

    def _pump(self, stream: Any) -> None:
        for raw in iter(stream.readline, b""):
            self.q.put(raw.decode(errors="replace").rstrip("\n"))
        self.q.put(None)

    def get(self, deadline: float) -> str | None:
        """Next line; None at EOF; raises TimeoutError past the deadline."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        try:
            return self.q.get(timeout=left)
        except queue.Empty:
            raise TimeoutError from None


def run_once(sc: Scenario, broker: Broker, budget: float) -> Run:
    """Run the load generator once against a started broker."""
    if sc.program == "tlsload":
        cmd = [sys.executable, str(TLSLOAD), sc.mode, "-H", HOST, "-p", str(broker.port)]
    else:
        cmd = [str(LOADGEN), sc.mode, "-H", HOST, "-p", str(broker.port)]
    cmd += sc.args
    rss0 = rss_kib(broker.pid)
    errf = open(broker.workdir / f"{broker.tag}-{broker.name}-loadgen.err", "w+b")
    lg = subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.PIPE, stderr=errf,
                          preexec_fn=raise_nofile)
    reader = LineReader(lg.stdout)
    deadline = time.monotonic() + budget
    marks: dict[str, tuple[float, int | None, int | None, tuple[int, int] | None]] = {}
    result: dict[str, Any] | None = None
    extra: dict[str, Any] = {}
    error = ""
    try:
        while True:
            try:
                line = reader.get(deadline)
            except TimeoutError:
                error = f"load generator timed out after {budget:.0f} s"
                break
            if line is None:
                break
            if line.startswith("MARK "):
                marks[line.split()[1]] = (time.monotonic(), cpu_ticks(broker.pid),
                                          cpu_ticks(lg.pid), machine_busy_ticks())
            elif line.startswith("RESULT "):
                result = parse_result(line)
            elif line.startswith("IDLE "):
                # all connections are up and idle: let the broker settle, then measure
                time.sleep(1.5)
                rss1 = rss_kib(broker.pid)
                n = int(line.split("=")[1])
                extra["rss_before_kib"] = rss0
                extra["rss_idle_kib"] = rss1
                if rss0 is not None and rss1 is not None and n:
                    extra["kib_per_conn"] = (rss1 - rss0) / n
                extra["broker_alive_when_idle"] = broker.alive()
                try:
                    assert lg.stdin is not None
                    lg.stdin.write(b"q\n")
                    lg.stdin.close()
                except OSError:
                    pass
            elif line.startswith("CLOSED_WHILE_IDLE "):
                info = parse_result(line)
                extra["closed_while_idle"] = int(info.get("n", 0))
                extra["idle_pings_sent"] = info.get("pings_sent")
                extra["idle_pings_answered"] = info.get("pings_answered")
            elif line.startswith("PINGCHECK "):
                info = parse_result(line)
                extra["ping_check_sent"] = info.get("sent")
                extra["ping_check_answered"] = info.get("answered")
                extra["ping_check_s"] = info.get("elapsed")
    finally:
        if lg.poll() is None:
            try:
                lg.wait(timeout=max(1.0, min(10.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                lg.kill()
                lg.wait(timeout=5)
        errf.seek(0)
        stderr = errf.read().decode(errors="replace").strip()
        errf.close()
    run = Run(ok=False, extra=extra)
    if "start" in marks and "end" in marks:
        (t0, b0, l0, m0), (t1, b1, l1, m1) = marks["start"], marks["end"]
        wall = max(t1 - t0, 1e-6)
        if b0 is not None and b1 is not None:
            run.broker_cpu = 100.0 * (b1 - b0) / CLK_TCK / wall
        if l0 is not None and l1 is not None:
            run.loadgen_cpu = 100.0 * (l1 - l0) / CLK_TCK / wall
        if None not in (b0, b1, l0, l1, m0, m1):
            # the rest of the machine: kernel interrupt work (loopback TCP is largely
            # softirq) and other processes (e.g. a test suite running beside us)
            soft = m1[1] - m0[1]  # type: ignore[index]
            other = (m1[0] - m0[0]) - soft - (b1 - b0) - (l1 - l0)  # type: ignore[index,operator]
            run.extra["softirq_cpu_pct"] = max(0.0, round(100.0 * soft / CLK_TCK / wall, 1))
            run.extra["other_cpu_pct"] = max(0.0, round(100.0 * other / CLK_TCK / wall, 1))
    if result is not None:
        run.extra.update(result)
        if result.get("cpu_pct") is not None:
            run.loadgen_cpu = float(result["cpu_pct"])  # getrusage over the exact window
        if sc.mode == "latency":
            run.value = float(result["p99_us"])
        else:
            run.value = float(result["rate"])
    if not broker.alive():
        error = (error + "; " if error else "") + \
            f"{broker.name} died (status {broker.proc.returncode if broker.proc else '?'})"
    if result is None and not error:
        error = "no result from the load generator"
    if result is not None and result.get("failed"):
        error = (error + "; " if error else "") + "load generator reported a failure"
    if error and stderr:
        error += "\n    loadgen stderr:\n" + "\n".join("    | " + l for l in
                                                    stderr.splitlines()[-8:])
    run.error = error
    run.ok = not error and run.value is not None
    return run


def budget_for(sc: Scenario, quick: bool) -> float:
    if sc.name == "idle_100k":
        return 420.0
    if sc.mode == "connect":
        return 120.0
    return 60.0 if not quick else 30.0


# -- orchestration -----------------------------------------------------------------------

@dataclass
class Outcome:
    runs: dict[str, list[Run]] = field(default_factory=dict)

    def ok_runs(self, broker: str) -> list[Run]:
        return [r for r in self.runs.get(broker, []) if r.ok]

    def median(self, broker: str, key: Callable[[Run], float | None]) -> float | None:
        vals = [v for v in (key(r) for r in self.ok_runs(broker)) if v is not None]
        return statistics.median(vals) if vals else None


def one_run(sc: Scenario, args: argparse.Namespace, workdir: Path, bname: str, tag: str) -> Run:
    """Start a fresh broker, run the load generator once, stop the broker (always)."""
    nodelay = {"auto": sc.mosquitto_nodelay, "on": True, "off": False}[args.mosquitto_nodelay]
    if bname == "mosquitto":
        broker: Broker = Mosquitto(workdir, tag, args.mosquitto_option, nodelay,
                                   sc.transport)
    else:
        prof = (workdir / f"{sc.name}.prof") if args.profile else None
        broker = Vmqtw(workdir, tag, sc.vmqtw_options + args.vmqtw_option, prof,
                       sc.transport)
    run: Run
    log_tail = ""
    busy_before = wait_quiet(args.wait_quiet) if args.wait_quiet > 0 else None
    try:
        broker.start()
        run = run_once(sc, broker, budget_for(sc, args.quick))
        if not run.ok:
            log_tail = tail(broker.log)  # as it was when the run failed
    except Exception as e:  # a failed scenario must not stop the rest
        run = Run(ok=False, error=str(e))
    finally:
        status = broker.stop()
    if broker.hung:
        run.ok = False
        run.error = (run.error + "; " if run.error else "") + \
            f"{broker.name} did not exit within 10 s of its stop signal (hung?): killed"
        log_tail = log_tail or tail(broker.log)
    if not run.ok:
        rel = broker.log.relative_to(REPO) if broker.log.is_relative_to(REPO) else broker.log
        run.error += (f"\n    {broker.name} exit status after stop: {status}; "
                      f"log {rel}, last lines at failure:\n{log_tail or tail(broker.log)}")
    if busy_before is not None:
        run.extra["machine_busy_before_pct"] = round(busy_before, 1)
    return run


def scenario_brokers(sc: Scenario, args: argparse.Namespace, workdir: Path) -> list[str]:
    brokers = list(args.brokers)
    if sc.transport == "ws" and "mosquitto" in brokers and \
            not mosquitto_has_websockets(workdir):
        print(f"  {sc.name}: mosquitto at {MOSQUITTO} has no websockets support (built "
              f"without libwebsockets): vmqtw alone", flush=True)
        brokers.remove("mosquitto")
    return brokers


def run_scenario(sc: Scenario, args: argparse.Namespace, workdir: Path,
                 brokers: list[str]) -> Outcome:
    out = Outcome()
    for rep in range(args.repeat):
        for bname in brokers:
            for attempt in range(1 + max(0, args.retry_noisy)):
                tag = f"{sc.name}-{rep}" + (f"-retry{attempt}" if attempt else "")
                run = one_run(sc, args, workdir, bname, tag)
                noisy = (run.extra.get("other_cpu_pct") or 0) > NOISY
                if args.verbose:
                    print(f"  [{sc.name} #{rep + 1} {bname}] ok={run.ok} value={run.value} "
                          f"broker_cpu={run.broker_cpu} loadgen_cpu={run.loadgen_cpu} "
                          f"{json.dumps(run.extra)}", flush=True)
                if run.ok and noisy and attempt < args.retry_noisy:
                    print(f"  [{sc.name} #{rep + 1} {bname}] other processes used "
                          f"{run.extra['other_cpu_pct']:.0f}% of a core: run again", flush=True)
                    continue
                break
            out.runs.setdefault(bname, []).append(run)
            if run.error:
                print(f"  [{sc.name} #{rep + 1} {bname}] FAILED: {run.error}", flush=True)
    return out


def pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}%"


def report(sc: Scenario, out: Outcome, brokers: list[str]) -> list[dict[str, Any]]:
    """Print the scenario's line(s); return rows for results.json."""
    rows = []
    lines: list[tuple[str, str, Callable[[Run], float | None], str, str, bool]] = []
    if sc.name == "idle_100k":
        lines.append((sc.name, "conn/s", lambda r: r.value, "-", "higher", False))
        lines.append(("idle_100k_mem", "KiB", lambda r: r.extra.get("kib_per_conn"),
                      "<=4 KiB", "lower", True))
        lines.append(("idle_100k_rss", "MiB", lambda r: (r.extra.get("rss_idle_kib") or 0) / 1024
                      or None, "-", "lower", True))
        lines.append(("idle_100k_time", "s", lambda r: r.extra.get("elapsed"),
                      "-", "lower", True))
        lines.append(("idle_100k_ping", "s", lambda r: r.extra.get("ping_check_s"),
                      "-", "lower", True))
    elif sc.mode == "connect" and sc.program == "tlsload":
        lines.append((sc.name, "conn/s", lambda r: r.value, "-", "higher", False))
        lines.append((f"{sc.name}_mem", "KiB", lambda r: r.extra.get("kib_per_conn"),
                      "<=1.5x" if sc.transport == "tls" else "-", "lower", True))
    elif sc.mode == "connect":
        lines.append((sc.name, "conn/s", lambda r: r.value, ">=0.5", "higher", False))
        lines.append(("idle_conn_mem", "KiB", lambda r: r.extra.get("kib_per_conn"),
                      "<=4 KiB", "lower", True))
    elif sc.mode == "latency":
        lines.append((sc.name, "us", lambda r: r.value, sc.target, "lower", False))
    else:
        lines.append((sc.name, sc.unit, lambda r: r.value, sc.target, "higher", False))
    for name, unit, key, target, better, absolute in lines:
        vals = {b: out.median(b, key) for b in brokers}
        cpu_b = {b: out.median(b, lambda r: r.broker_cpu) for b in brokers}
        cpu_l = {b: out.median(b, lambda r: r.loadgen_cpu) for b in brokers}
        m, v = vals.get("mosquitto"), vals.get("vmqtw")
        ratio = (v / m) if (m and v is not None) else None
        parts = [f"{name:<15}"]
        for b in brokers:
            val = vals[b]
            if sc.mode == "latency":
                p50 = out.median(b, lambda r: r.extra.get("p50_us"))
                s = "FAILED" if val is None else f"p50 {p50:.0f}/p99 {val:.0f}us"
            elif unit in ("s", "MiB") and val is not None:
                s = f"{val:.1f} {unit}"
            else:
                s = fmt_num(val, unit) + ("" if val is None or unit in ("KiB",) else f" {unit}")
            nok = len(out.ok_runs(b))
            nall = len(out.runs.get(b, []))
            if nall and nok < nall:
                s += f" ({nall - nok}/{nall} runs failed)"
            parts.append(f"{b}={s}")
        parts.append(f"ratio={ratio:.3g}" if ratio is not None else "ratio=-")
        if not absolute:
            cpu_o = {b: out.median(b, lambda r: r.extra.get("other_cpu_pct")) for b in brokers}
            cpu_s = {b: out.median(b, lambda r: r.extra.get("softirq_cpu_pct")) for b in brokers}
            parts.append("(broker cpu " + " ".join(f"{b} {pct(cpu_b[b])}" for b in brokers) +
                         "; loadgen cpu " + " ".join(f"{b} {pct(cpu_l[b])}" for b in brokers) +
                         "; softirq " + " ".join(f"{b} {pct(cpu_s[b])}" for b in brokers) +
                         "; other processes " + " ".join(f"{b} {pct(cpu_o[b])}" for b in brokers)
                         + ")")
        verdict = "-"
        if target == "-":
            pass  # informational (e.g. the cost of the durable store)
        elif target == "<=1.5x":
            verdict = "-" if ratio is None else "ok" if ratio <= 1.5 else "MISS"
        elif absolute and v is not None:
            verdict = "ok" if v <= 4.0 else "MISS"
        elif ratio is not None:
            if name == "latency_2k":
                verdict = "ok" if ratio <= 1.0 else "MISS"
            elif name == "connect_10k":
                verdict = "ok" if ratio >= 0.5 else "MISS"
            elif name == "tls_handshakes":
                verdict = "ok" if ratio >= 0.8 else "MISS"
            else:
                verdict = "ok" if ratio >= 1.0 else "MISS"
        parts.append(f"[target {target}: {verdict}]")
        print("  ".join(parts), flush=True)
        for b in brokers:
            if (cpu := cpu_l[b]) is not None and cpu > 90 and not absolute:
                user = out.median(b, lambda r: r.extra.get("cpu_user_pct"))
                why = ""
                if user is not None:
                    why = (f" ({user:.0f}% in user space, the rest in the kernel: on loopback "
                           f"the connecting side is charged with the TCP handshake work)")
                print(f"  WARNING: {name}/{b}: load generator used {cpu_l[b]:.0f}% of a core "
                      f"- it may be the bottleneck{why}", flush=True)
        per_core = {}
        for b in brokers:
            effs = [v / (r.broker_cpu / 100.0) for r in out.ok_runs(b)
                    if (v := key(r)) is not None and r.broker_cpu and unit not in ("KiB", "us")]
            per_core[b] = statistics.median(effs) if effs else None
        rows.append({"scenario": name, "unit": unit, "better": better, "target": target,
                     "per_broker_cpu_second": per_core,
                     "values": vals, "ratio": ratio, "verdict": verdict,
                     "broker_cpu": cpu_b, "loadgen_cpu": cpu_l,
                     "runs": {b: [{"ok": r.ok, "value": key(r) if r.ok else None,
                                   "broker_cpu": r.broker_cpu, "loadgen_cpu": r.loadgen_cpu,
                                   "extra": r.extra, "error": r.error}
                                  for r in out.runs.get(b, [])] for b in brokers}})
    # anomalies worth a line of their own
    for b in brokers:
        for i, r in enumerate(out.runs.get(b, [])):
            x = r.extra
            notes = []
            if sc.mode == "pubsub":
                if x.get("qos") == 1 and (x.get("lost", 0) or x.get("unacked", 0)):
                    notes.append(f"QoS 1 LOST {x.get('lost')} message(s), "
                                 f"{x.get('unacked')} PUBLISH(es) never acknowledged")
                elif x.get("lost", 0):
                    notes.append(f"dropped {x['lost']} of {x.get('total_expected')} "
                                 "QoS 0 deliveries")
                if x.get("wrong_qos"):
                    notes.append(f"{x['wrong_qos']} deliveries at a QoS other than {x.get('qos')}")
                if x.get("bad"):
                    notes.append(f"{x['bad']} malformed or unexpected PUBLISH payloads")
                if x.get("dups"):
                    notes.append(f"{x['dups']} duplicate/out-of-order deliveries")
                if x.get("drained") == 0:
                    notes.append("in-flight messages were still missing 3 s after the window "
                                 "(lost, or the broker stopped delivering)")
                if x.get("stalls"):
                    notes.append(f"{x['stalls']} publisher stall(s) of >1 s without progress")
            if (x.get("other_cpu_pct") or 0) > NOISY:
                notes.append(f"other processes used {x['other_cpu_pct']:.0f}% of a core "
                             f"during the window: figures are noisy")
            if sc.mode == "latency" and x.get("lost"):
                notes.append(f"{x['lost']} message(s) lost")
            if sc.mode == "connect" and x.get("closed_while_idle"):
                notes.append(f"{x['closed_while_idle']} idle connection(s) closed by the broker")
            if x.get("ping_check_sent") is not None and \
                    x.get("ping_check_answered") != x.get("ping_check_sent"):
                notes.append(f"only {x.get('ping_check_answered')} of {x['ping_check_sent']} "
                             "PINGREQs answered within 30 s")
            if x.get("idle_pings_sent") and x.get("idle_pings_answered") != x["idle_pings_sent"]:
                notes.append(f"{x['idle_pings_sent']} keep alive PINGREQs while idle, "
                             f"{x.get('idle_pings_answered')} answered")
            if notes:
                print(f"  NOTE: {sc.name}/{b} run {i + 1}: " + "; ".join(notes), flush=True)
    return rows


def print_profile(path: Path, title: str, top: int) -> None:
    import pstats
    if not path.exists():
        print(f"  (no profile written for {title}: {path})")
        return
    print(f"\n--- cProfile of vmqtw, {title}: top {top} by tottime ({path}) ---")
    st = pstats.Stats(str(path))
    st.sort_stats("tottime").print_stats(top)


def machine() -> str:
    model = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{os.cpu_count()} cpus, {model}, Linux {platform.release()}, "
            f"Python {platform.python_version()}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="short windows (0.5 s warm-up + 2 s), 2,000 connections, 1 run")
    ap.add_argument("--scenario", action="append", default=[],
                    help="run only this scenario (repeatable; comma lists allowed)")
    ap.add_argument("--repeat", type=int, default=None,
                    help="runs per scenario and broker, medians reported (default 3, --quick 1)")
    ap.add_argument("--brokers", default="mosquitto,vmqtw",
                    help="comma list from mosquitto,vmqtw (default both)")
    ap.add_argument("--mosquitto-nodelay", choices=["auto", "on", "off"], default="auto",
                    help="mosquitto's set_tcp_nodelay: auto = its faster setting per scenario "
                         "(off for throughput and connects, on for latency)")
    ap.add_argument("--mosquitto-option", action="append", default=[], metavar="KEY=VALUE",
                    help="extra/overriding mosquitto.conf setting")
    ap.add_argument("--vmqtw-option", action="append", default=[], metavar="KEY=VALUE",
                    help="extra/overriding vmqtw config setting, e.g. log_level=info")
    ap.add_argument("--profile", action="store_true",
                    help="run vmqtw under cProfile (SIGINT at the end) and print the top "
                         "functions by tottime per scenario; figures are then not comparable")
    ap.add_argument("--profile-top", type=int, default=25)
    ap.add_argument("--json", default=str(BUILD / "results.json"),
                    help="where to write the full results (default bench/build/results.json; "
                         "every run also writes results.json in its log directory)")
    ap.add_argument("--wait-quiet", type=float, default=30.0, metavar="SECONDS",
                    help="before each run, wait up to this long for the machine to be idle "
                         "(< 30%% of a core busy); 0 = don't wait (default 30)")
    ap.add_argument("--retry-noisy", type=int, default=2, metavar="N",
                    help="run again (up to N times) when other processes took more than 30%% "
                         "of a core during the window (default 2; the last attempt counts)")
    ap.add_argument("--vmqtw-tree", default=str(REPO), metavar="PATH",
                    help="measure the vmqtw of another checkout (e.g. the commit before a "
                         "change), with this bench; default: this checkout")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every run")
    ap.add_argument("--list", action="store_true", help="list the scenarios and exit")
    args = ap.parse_args()
    global VMQTW_TREE
    VMQTW_TREE = Path(args.vmqtw_tree).resolve()

    all_sc = scenarios(args.quick)
    if args.list:
        for sc in all_sc:
            print(f"{sc.name:<13} {sc.describe}  [target {sc.target}]")
            print(f"{'':<13} loadgen {sc.mode} {' '.join(sc.args)}")
        return 0
    names = [n for s in args.scenario for n in s.split(",") if n]
    known = {s.name for s in all_sc}
    for n in names:
        if n not in known:
            ap.error(f"unknown scenario {n!r}; choose from {', '.join(sorted(known))}")
    selected = [s for s in all_sc if not names or s.name in names]
    args.brokers = [b for b in args.brokers.split(",") if b]
    for b in args.brokers:
        if b not in ("mosquitto", "vmqtw"):
            ap.error(f"unknown broker {b!r}")
    if args.profile:
        args.brokers = [b for b in args.brokers if b == "vmqtw"] or ["vmqtw"]
    if args.repeat is None:
        args.repeat = 1 if (args.quick or args.profile) else 3
    if "mosquitto" in args.brokers and not Path(MOSQUITTO).exists():
        sys.exit(f"run.py: mosquitto not found at {MOSQUITTO}")

    raise_nofile()
    build_loadgen()
    if any(s.transport == "tls" for s in selected):
        make_tls_material()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    workdir = BUILD / f"run-{stamp}"
    workdir.mkdir(parents=True, exist_ok=True)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    print(f"vmqtw benchmark {time.strftime('%Y-%m-%d %H:%M:%S %Z')}  ({machine()})")
    rev_start = git_revision()
    print(f"vmqtw revision {rev_start}; {Path(MOSQUITTO).name} at {MOSQUITTO}")
    print(f"RLIMIT_NOFILE {soft}/{hard}; {args.repeat} run(s) per scenario and broker, "
          f"medians; logs in {workdir.relative_to(REPO)}")
    for sc in selected:
        if sc.name == "idle_100k" and hard < int(sc.args[sc.args.index("-n") + 1]) + 300:
            # each process (broker, load generator) holds one descriptor per connection
            n = max(1000, hard - 300)
            sc.args[sc.args.index("-n") + 1] = str(n)
            print(f"WARNING: idle_100k scaled down to {n} connections: the file-descriptor "
                  f"hard limit is {hard} and this process may not raise it (no "
                  f"CAP_SYS_RESOURCE; as root: ulimit -Hn 262144, or LimitNOFILE=)")
    need = max([int(s.args[s.args.index("-n") + 1]) + 100 for s in selected
                if s.mode == "connect"] or [0])
    if hard < need:
        print(f"WARNING: the file-descriptor hard limit {hard} is below {need}: "
              f"{', '.join(s.name for s in selected if s.mode == 'connect')} may fail")
    print(f"not measured: {NOT_POSSIBLE}")
    rows: list[dict[str, Any]] = []
    t_all = time.monotonic()
    for sc in selected:
        try:
            brokers = scenario_brokers(sc, args, workdir)
            out = run_scenario(sc, args, workdir, brokers)
            rows += report(sc, out, brokers)
        except KeyboardInterrupt:
            print("interrupted")
            return 130
        if args.profile:
            print_profile(workdir / f"{sc.name}.prof", sc.name, args.profile_top)
    by_name = {r["scenario"]: r for r in rows}
    on, off = by_name.get("qos1_persistent"), by_name.get("qos1_persistent_nostore")
    if on and off and on["values"].get("vmqtw") and off["values"].get("vmqtw"):
        ratio = on["values"]["vmqtw"] / off["values"]["vmqtw"]
        # Per broker CPU second too: on a shared machine the raw rates follow
        # how much CPU each run got, not what the store costs.
        cpu_on = (on.get("per_broker_cpu_second") or {}).get("vmqtw")
        cpu_off = (off.get("per_broker_cpu_second") or {}).get("vmqtw")
        per_cpu = f", per broker CPU second {cpu_on / cpu_off:.2f}" if cpu_on and cpu_off else ""
        print(f"durable store cost (QoS 1 to a persistent subscriber): vmqtw store on / off "
              f"= {ratio:.2f}{per_cpu}  [target >=0.7 (issue 18): "
              f"{'ok' if ratio >= 0.7 else 'MISSED'}]", flush=True)
    print(f"done in {time.monotonic() - t_all:.0f} s")
    rev_end = git_revision()
    if rev_end != rev_start:
        print(f"WARNING: the vmqtw revision changed during the run ({rev_start} -> {rev_end}): "
              f"later scenarios may have measured other code")
    info = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": machine(),
            "vmqtw_revision": rev_start, "vmqtw_revision_end": rev_end,
            "quick": args.quick, "repeat": args.repeat,
            "mosquitto_nodelay": args.mosquitto_nodelay, "rows": rows,
            "not_measured": NOT_POSSIBLE}
    text = json.dumps(info, indent=1, default=str) + "\n"
    (workdir / "results.json").write_text(text)
    if not args.profile:  # profiled figures are not comparable: keep them out of the latest
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text)
    failed = [r["scenario"] for r in rows if any(v is None for v in r["values"].values())]
    partial = sorted({f"{r['scenario']}/{b}" for r in rows for b, runs in r["runs"].items()
                      if any(not x["ok"] for x in runs)} - {f"{n}/{b}" for n in failed
                                                           for b in args.brokers})
    if failed:
        print(f"FAILED scenarios: {', '.join(failed)}")
    if partial:
        print(f"scenarios with some failed runs (medians of the others): {', '.join(partial)}")
    return 1 if failed or partial else 0


if __name__ == "__main__":
    sys.exit(main())
