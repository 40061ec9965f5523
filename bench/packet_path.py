#!/usr/bin/env python3
"""CPU cost of the packet path in-process, without sockets: what counting
metrics (or any change to connection/core) costs, with less noise than
``bench/run.py`` on a busy machine.

    PYTHONPATH=. python3 bench/packet_path.py            # this checkout
    PYTHONPATH=/other/checkout python3 bench/packet_path.py

One publisher's connection is fed batches of 100 QoS 0 PUBLISHes (one
``data_received`` each, as a read of 100 packets), routed to 1 or 50
subscribers on fake transports (``vmqtw.test.connection_harness``), output
flushed and dropped.  Prints the best of several repeats in ns per delivered
message.
"""
from __future__ import annotations

import time

from vmqtw.codec import Publish, Subscribe, SubOptions, encode
from vmqtw.test.connection_harness import Rig

BATCH = 100
ROUNDS = 40
REPEATS = 30


def scenario(subscribers: int) -> float:
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
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        for _ in range(ROUNDS):
            feed(chunk)
            for wire in wires:
                wire.clear()
        best = min(best, time.perf_counter() - start)
    return best / (ROUNDS * BATCH * subscribers) * 1e9


def main() -> None:
    for n, name in ((1, "qos0_1to1"), (50, "fanout_qos0")):
        print(f"{name:12s} {scenario(n):7.1f} ns per delivery")


if __name__ == "__main__":
    main()
