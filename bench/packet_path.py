#!/usr/bin/env python3
"""CPU cost of the packet path in-process, without sockets: what counting
metrics (or any change to connection/core) costs, with less noise than
``bench/run.py`` on a busy machine.

    PYTHONPATH=. python3 bench/packet_path.py            # this checkout
    PYTHONPATH=/other/checkout python3 bench/packet_path.py
    PYTHONPATH=. python3 bench/packet_path.py --compare  # counting on vs removed

One publisher's connection is fed batches of 100 QoS 0 PUBLISHes (one
``data_received`` each, as a read of 100 packets), routed to 1 or 50
subscribers, output flushed and dropped.  ``qos0_1to1`` and ``fanout_qos0``
run the connections on fake transports (``vmqtw.test.connection_harness``);
``fanout_proto`` runs them in the real Twisted adapter (``MQTTProtocol``, whose
flush counts ``bytes_sent``) on ``StringTransport``s, each subscriber flushed
once per batch.  Prints the best of several repeats in CPU ns (this
thread's CPU time, less disturbed by other processes than wall time) per
delivered message.

``--no-counting`` runs the same on a copy of the ``vmqtw`` package with every
counter increment removed (see ``strip_counting``): the floor the metrics are
measured against.  ``--compare`` alternates both builds ``--runs`` times and
prints the medians and the difference.
"""
from __future__ import annotations

import argparse
import ast
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

BATCH = 100
ROUNDS = 40
REPEATS = 30

#: What ``strip_counting`` removes: ``X[...] += n`` where X is named like one
#: of these (the metrics' counter list, wherever code keeps it) ...
COUNTER_LISTS = {"counters", "values"}
#: ... and ``obj.ATTR += n`` for the per-connection and per-session counts
#: the metrics sum at scrape time (``vmqtw.metrics``).
COUNTER_ATTRIBUTES = {"bytes_out"}


def scenario(subscribers: int) -> float:
    from vmqtw.codec import Publish, Subscribe, SubOptions, encode
    from vmqtw.test.connection_harness import Rig

    rig = Rig()
    subs = []
    for i in range(subscribers):
        c = rig.connected(f"sub{i}", 4)
        c.send(Subscribe(1, [("bench/t", SubOptions(0))]))
        c.take()
        subs.append(c)
    pub = rig.connected("pub", 4)
    chunk = encode(Publish("bench/t", b"x" * 64, 0), 4) * BATCH
    feed = pub.connection.data_received
    wires = [c.transport.wire for c in subs]

    def one_round() -> None:
        feed(chunk)
        for wire in wires:
            wire.clear()

    return best_of(one_round, subscribers)


def scenario_proto(subscribers: int) -> float:
    """The fan-out through ``MQTTProtocol`` (the real adapter) on
    ``StringTransport``s: what the per-flush counting costs too."""
    from twisted.internet.testing import StringTransport

    from vmqtw.codec import Connect, Publish, Subscribe, SubOptions, encode
    from vmqtw.test.connection_harness import Rig
    from vmqtw.transport.protocol import MQTTFactory

    rig = Rig()
    factory = MQTTFactory(rig.broker, rig.authorizer, rig.listener, rig.clock)

    def connected(client_id: str) -> Any:
        proto = factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        proto.dataReceived(encode(Connect(client_id, 4, True, 0), 4))
        return proto, transport

    transports = []
    for i in range(subscribers):
        proto, transport = connected(f"sub{i}")
        proto.dataReceived(encode(Subscribe(1, [("bench/t", SubOptions(0))]), 4))
        transports.append(transport)
    pub, _ = connected("pub")
    chunk = encode(Publish("bench/t", b"x" * 64, 0), 4) * BATCH
    feed = pub.dataReceived

    def one_round() -> None:
        feed(chunk)
        for transport in transports:
            transport.clear()

    return best_of(one_round, subscribers)


def best_of(one_round: Callable[[], None], subscribers: int) -> float:
    best = float("inf")
    for _ in range(REPEATS):
        start = time.thread_time()
        for _ in range(ROUNDS):
            one_round()
        best = min(best, time.thread_time() - start)
    return best / (ROUNDS * BATCH * subscribers) * 1e9


SCENARIOS: list[tuple[str, Callable[[], float]]] = [
    ("qos0_1to1", lambda: scenario(1)),
    ("fanout_qos0", lambda: scenario(50)),
    ("fanout_proto", lambda: scenario_proto(50)),
]


def measure() -> dict[str, float]:
    return {name: run() for name, run in SCENARIOS}


# -- the build without counting ------------------------------------------------------

def _is_counting(node: ast.stmt) -> bool:
    if not isinstance(node, ast.AugAssign):
        return False
    target = node.target
    if isinstance(target, ast.Subscript):
        base = target.value
        name = base.attr if isinstance(base, ast.Attribute) else getattr(base, "id", None)
        return name in COUNTER_LISTS
    return isinstance(target, ast.Attribute) and target.attr in COUNTER_ATTRIBUTES


def strip_counting(source: str) -> tuple[str, int]:
    """``source`` with every counter increment replaced by ``pass`` (line
    numbers kept), and how many were removed."""
    lines = source.splitlines(keepends=True)
    removed = 0
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.stmt) and _is_counting(node):
            start, end = node.lineno - 1, (node.end_lineno or node.lineno) - 1
            line = lines[start]
            if line[node.col_offset:].rstrip("\n").rstrip().endswith(";") or \
                    line[:node.col_offset].strip():
                continue  # not alone on its line: leave it
            lines[start] = line[:node.col_offset] + "pass\n"
            for i in range(start + 1, end + 1):
                lines[i] = "\n"
            removed += 1
    return "".join(lines), removed


def stripped_tree(source_root: Path, into: Path) -> int:
    """Copy the ``vmqtw`` package under ``source_root`` to ``into`` with the
    counting removed; returns the number of increments removed."""
    package = source_root / "vmqtw"
    shutil.copytree(package, into / "vmqtw", ignore=shutil.ignore_patterns("__pycache__"))
    removed = 0
    for path in (into / "vmqtw").rglob("*.py"):
        if "test" in path.relative_to(into / "vmqtw").parts[:1]:
            continue
        text, n = strip_counting(path.read_text())
        if n:
            path.write_text(text)
            removed += n
    return removed


def _run(pythonpath: str) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=pythonpath)
    out = subprocess.run([sys.executable, __file__, "--raw"], env=env, check=True,
                         capture_output=True, text=True).stdout
    figures = {}
    for line in out.splitlines():
        name, value = line.split()
        figures[name] = float(value)
    return figures


def _source_root() -> Path:
    import vmqtw
    return Path(vmqtw.__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-counting", action="store_true",
                        help="measure a copy of vmqtw with every counter increment removed")
    parser.add_argument("--compare", action="store_true",
                        help="alternate counting on and removed, print medians")
    parser.add_argument("--runs", type=int, default=3, help="runs per build for --compare")
    parser.add_argument("--raw", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.raw:
        for name, value in measure().items():
            print(name, value)
        return
    if not (args.no_counting or args.compare):
        for name, value in measure().items():
            print(f"{name:13s} {value:7.1f} ns per delivery")
        return
    root = _source_root()
    with tempfile.TemporaryDirectory(prefix="vmqtw-nocount-") as tmp:
        removed = stripped_tree(root, Path(tmp))
        print(f"counting removed: {removed} increments in {root}/vmqtw", file=sys.stderr)
        if args.no_counting:
            for name, value in _run(tmp).items():
                print(f"{name:13s} {value:7.1f} ns per delivery (no counting)")
            return
        on: dict[str, list[float]] = {}
        off: dict[str, list[float]] = {}
        for _ in range(args.runs):
            for figures, into in ((_run(str(root)), on), (_run(tmp), off)):
                for name, value in figures.items():
                    into.setdefault(name, []).append(value)
        print(f"{'scenario':13s} {'counting':>9s} {'removed':>9s}   cost  (ns per delivery, "
              f"medians of {args.runs})")
        for name in on:
            a, b = statistics.median(on[name]), statistics.median(off[name])
            print(f"{name:13s} {a:9.1f} {b:9.1f} {100 * (a - b) / b:+5.1f}%")


if __name__ == "__main__":
    main()
