#!/usr/bin/env python3
"""CPU cost of the connect path in-process, without sockets: what one
CONNECT -> CONNACK costs in Python, with less noise than ``bench/run.py``'s
``connect_10k`` on a busy machine.

    PYTHONPATH=. python3 bench/connect_path.py             # this checkout
    PYTHONPATH=/other/checkout python3 bench/connect_path.py
    PYTHONPATH=. python3 bench/connect_path.py --profile   # cProfile, top 30

Each round builds ``N`` connections (default 10,000, as ``connect_10k``)
through the listener's real factories (the connection limiter's
``WrappingFactory`` around ``MQTTFactory``) on ``StringTransport``s, feeds
each a 3.1.1 CONNECT (clean session, keep alive 60, as ``loadgen connect``
sends), checks the CONNACK, and at the end of the round closes them all.
Timers go on the (not running) global reactor, as in the broker; ``log_level``
is ``warn``, as in ``bench/run.py``; the garbage collector is set as the
broker sets it (``vmqtw.gcpolicy.tune``, if the checkout has it) unless
``--default-gc``.  Prints the best of several rounds in us of CPU time
(``time.process_time``: less sensitive to other processes than wall time)
per connection, for the connect and the close.
"""
from __future__ import annotations

import argparse
import cProfile
import gc
import pstats
import time

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.internet.error import ConnectionDone

from vmqtw import logs
from vmqtw.auth.chain import Authorizer, Chain
from vmqtw.codec import Connect, encode
from vmqtw.config import parse
from vmqtw.core.broker import Broker
from vmqtw.transport.limits import LimitedConnections
from vmqtw.transport.protocol import MQTTFactory

CONFIG = ("listener.tcp.t = 127.0.0.1:1883\nallow_anonymous = on\nlog_level = warn\n"
          "max_inflight_messages = 100\nmax_online_messages = 100000\n")
CONNACK = b"\x20\x02\x00\x00"


class Rig:
    def __init__(self) -> None:
        logs.set_level("warn")
        config = parse(CONFIG)
        self.broker = Broker(config, reactor)
        (listener,) = config.listeners
        authorizer = Authorizer(Chain([]), config.allow_anonymous)
        self.factory = LimitedConnections(MQTTFactory(self.broker, authorizer, listener,
                                                      reactor), None)
        self.round = 0

    def connect_all(self, n: int) -> list:
        self.round += 1
        factory = self.factory
        protos = []
        for i in range(n):
            addr = IPv4Address("TCP", "127.0.0.1", 10000 + i)
            proto = factory.buildProtocol(addr)
            assert proto is not None  # no max_connections here
            transport = StringTransport(peerAddress=addr)
            proto.makeConnection(transport)
            proto.dataReceived(encode(Connect(f"c{self.round}-{i}", keepalive=60), 4))
            protos.append((proto, transport))
        return protos

    @staticmethod
    def close_all(protos: list) -> None:
        done = Failure(ConnectionDone())
        for proto, _ in protos:
            proto.connectionLost(done)


def measure(n: int, rounds: int) -> tuple[float, float]:
    rig = Rig()
    best_connect = best_close = float("inf")
    for _ in range(rounds):
        gc.collect()
        start = time.process_time()
        protos = rig.connect_all(n)
        mid = time.process_time()
        for _, transport in protos:
            assert transport.value() == CONNACK, transport.value()
        mid2 = time.process_time()
        rig.close_all(protos)
        del protos
        end = time.process_time()
        best_connect = min(best_connect, (mid - start) / n)
        best_close = min(best_close, (end - mid2) / n)
    return best_connect * 1e6, best_close * 1e6


def profile(n: int, top: int) -> None:
    rig = Rig()
    rig.close_all(rig.connect_all(n))  # warm up
    prof = cProfile.Profile()
    prof.enable()
    protos = rig.connect_all(n)
    prof.disable()
    rig.close_all(protos)
    print(f"connect path, {n} connections:")
    pstats.Stats(prof).sort_stats("tottime").print_stats(top)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=10000, help="connections per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--default-gc", action="store_true",
                    help="keep CPython's collector settings (the broker tunes them)")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--top", type=int, default=30)
    args = ap.parse_args()
    if not args.default_gc:
        try:
            from vmqtw.gcpolicy import tune
        except ImportError:  # an older checkout
            print("(this checkout does not tune the garbage collector)")
        else:
            tune()
    if args.profile:
        profile(args.n, args.top)
        return
    connect, close = measure(args.n, args.rounds)
    print(f"connect {connect:7.1f} us per CONNECT -> CONNACK   close {close:6.1f} us "
          f"per connection  (best of {args.rounds} x {args.n})")


if __name__ == "__main__":
    main()
