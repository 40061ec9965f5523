#!/usr/bin/env python3
"""CPU cost of the QoS 1 path in-process, without sockets: the two shapes of
``bench/run.py``'s ``qos1_1to1`` and ``qos1_window1000``.

    PYTHONPATH=. python3 bench/qos1_path.py              # this checkout
    PYTHONPATH=/other/checkout python3 bench/qos1_path.py
    PYTHONPATH=. python3 bench/qos1_path.py --profile    # cProfile of each, top 25

One publisher and one subscriber (QoS 1 subscription, ``max_inflight_messages
= 100``) on fake transports (``vmqtw.test.connection_harness``).  A round is
what the broker reads in one turn at steady state: the subscriber's 100
PUBACKs (one ``data_received``), then the publisher's next 100 QoS 1
PUBLISHes (one ``data_received``).

- ``window100``: nothing waits in the broker; the PUBACKs empty the inflight
  window and the PUBLISHes go straight out.
- ``window1000``: the publisher is 1,000 messages ahead (its window in
  ``qos1_window1000``), so 900 wait in the subscriber's session queue: each
  round's PUBACKs free 100 slots that the queue refills, and the new
  PUBLISHes join the back of the queue.

Prints the best of several repeats in ns of CPU time per message (one
PUBLISH in, one PUBLISH out, both PUBACKs).  The garbage collector is set as
the broker sets it (``vmqtw.gcpolicy.tune``, if the checkout has it) unless
``--default-gc``.
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import time

from vmqtw.codec import Publish, Subscribe, SubOptions, encode
from vmqtw.test.connection_harness import BASE, Rig

BATCH = 100
ROUNDS = 200
REPEATS = 7
PUB_IDS = 2001  # the publisher's packet ids: 1..2000
CONFIG = BASE + "max_inflight_messages = 100\nmax_online_messages = 100000\n"


def puback_chunk(first: int) -> bytes:
    """PUBACKs for the ``BATCH`` packet ids from ``first`` (ids wrap at 65535)."""
    out = bytearray()
    for i in range(BATCH):
        pid = (first + i - 1) % 65535 + 1
        out += bytes((0x40, 2, pid >> 8, pid & 0xFF))
    return bytes(out)


class Pair:
    def __init__(self, ahead: int) -> None:
        rig = Rig(CONFIG)
        self.sub = rig.connected("sub", 4)
        self.sub.send(Subscribe(1, [("bench/t", SubOptions(1))]))
        self.sub.take()
        self.pub = rig.connected("pub", 4)
        self.pub_pid = 1   # next packet id the publisher uses
        self.sub_pid = 1   # next packet id the subscriber acknowledges
        # Every chunk made up front: the publisher's ids cycle through 1..2000,
        # the broker's (acknowledged by the subscriber) through 1..65535.
        self.acks = {first: puback_chunk(first) for first in range(1, 65536, BATCH)}
        self.publishes = {first: b"".join(
            encode(Publish("bench/t", b"x" * 64, 1, packet_id=first + i), 4)
            for i in range(BATCH)) for first in range(1, PUB_IDS, BATCH)}
        self.session = self.sub.session
        # The publisher gets ``ahead`` messages in before the subscriber acknowledges.
        for _ in range(ahead // BATCH):
            self.publish_batch()
        self.pub.take()
        self.sub.take()

    def publish_batch(self) -> None:
        pid = self.pub_pid
        self.pub.connection.data_received(self.publishes[pid])
        self.pub_pid = (pid + BATCH - 1) % (PUB_IDS - 1) + 1

    def ack_batch(self) -> None:
        pid = self.sub_pid
        chunk = self.acks.get(pid)
        if chunk is None:  # the broker's ids wrapped at 65535
            chunk = self.acks[pid] = puback_chunk(pid)
        self.sub.connection.data_received(chunk)
        self.sub_pid = (pid + BATCH - 1) % 65535 + 1

    def rounds(self, n: int) -> None:
        pub_wire, sub_wire = self.pub.transport.wire, self.sub.transport.wire
        for _ in range(n):
            self.ack_batch()
            self.publish_batch()
            pub_wire.clear()
            sub_wire.clear()


def measure(ahead: int) -> float:
    pair = Pair(ahead)
    pair.rounds(20)  # warm up: every chunk encoded once
    best = float("inf")
    for _ in range(REPEATS):
        start = time.process_time()
        pair.rounds(ROUNDS)
        best = min(best, time.process_time() - start)
    assert len(pair.session.inflight) == 100, len(pair.session.inflight)
    assert len(pair.session.queue) == ahead - 100, len(pair.session.queue)
    return best / (ROUNDS * BATCH) * 1e9


def profile(ahead: int, top: int) -> None:
    pair = Pair(ahead)
    pair.rounds(20)
    prof = cProfile.Profile()
    prof.enable()
    pair.rounds(ROUNDS)
    prof.disable()
    print(f"--- {ahead} ahead, {ROUNDS * BATCH} messages")
    pstats.Stats(prof).sort_stats("tottime").print_stats(top)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--default-gc", action="store_true",
                    help="keep CPython's collector settings (the broker tunes them)")
    args = ap.parse_args()
    if not args.default_gc:
        try:
            from vmqtw.gcpolicy import tune
        except ImportError:  # an older checkout
            print("(this checkout does not tune the garbage collector)")
        else:
            tune()
    for ahead, name in ((100, "window100"), (1000, "window1000")):
        if args.profile:
            profile(ahead, args.top)
        else:
            print(f"{name:11s} {measure(ahead):7.0f} ns per message")


if __name__ == "__main__":
    main()
