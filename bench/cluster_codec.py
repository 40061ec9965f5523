#!/usr/bin/env python3
"""CPU cost of the vmq link's codec per record: encode (BatchEncoder) and decode
(RecordDecoder), at several batch sizes.

    python3 bench/cluster_codec.py                 # default: 200,000 records, 3 runs
    python3 bench/cluster_codec.py --records 50000 --runs 5
    python3 bench/cluster_codec.py --profile       # cProfile of encode+decode, top 15
    python3 bench/cluster_codec.py --link          # two processes over loopback TCP

Records are ``Msg`` publishes with a 64-byte payload and an 11-byte topic, the same
payload size as bench/run.py. "batch" is the number of records per BATCH frame (a
flush per reactor turn carries whatever arrived during the turn; 64 KiB is the default
flush threshold, about 690 such records). Decoding is fed in 64 KiB pieces, like
socket reads. Figures are process CPU time (``time.process_time``), median of the runs,
in microseconds per record; "rec/s" is 1 / (encode + decode), i.e. what one core could
push through the codec alone, an upper bound for the link.

``--link`` runs the real thing: a receiving node (a child process with a
``LinkServerFactory``) and a sending node (this process, a ``PeerLink`` fed as fast as
TCP back-pressure allows) over loopback TCP. It prints records/s and each side's CPU per
record (process CPU time, handshake and start-up excluded).
"""
from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vmqtw.cluster.codec import BatchEncoder, Msg, RecordDecoder

PAYLOAD = bytes(range(64))


def make_records(n: int) -> list[Msg]:
    return [Msg("", f"bench/{i % 1000:05d}", PAYLOAD, i % 2) for i in range(n)]


def encode(records: list[Msg], batch: int) -> list[bytes]:
    enc = BatchEncoder()
    frames: list[bytes] = []
    add = enc.add
    for i, r in enumerate(records, 1):
        add(r)
        if i % batch == 0:
            frames.extend(enc.take())
    frames.extend(enc.take())
    return frames


def decode(stream: bytes) -> int:
    dec = RecordDecoder()
    n = 0
    for p in range(0, len(stream), 65536):
        n += len(dec.feed(stream[p:p + 65536]))
    return n


def measure(records: list[Msg], batch: int) -> tuple[float, float, int]:
    t0 = time.process_time()
    frames = encode(records, batch)
    t1 = time.process_time()
    stream = b"".join(frames)
    t2 = time.process_time()
    n = decode(stream)
    t3 = time.process_time()
    assert n == len(records), (n, len(records))
    per = 1e6 / len(records)
    return (t1 - t0) * per, (t3 - t2) * per, len(stream)


def receiver(n: int) -> None:
    """The receiving node: print the port, count records, print CPU when all came."""
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ServerEndpoint

    from vmqtw.cluster.link import LinkServerFactory
    got = 0
    t0 = 0.0

    def deliver(node: str, records: list[Any]) -> None:
        nonlocal got, t0
        if not got:
            t0 = time.process_time()
        got += len(records)
        if got >= n:
            print(f"DONE {time.process_time() - t0:.6f}", flush=True)
            reactor.stop()

    def listening(port: object) -> None:
        print(f"PORT {port.getHost().port}", flush=True)  # type: ignore[attr-defined]
    factory = LinkServerFactory("receiver", "bench", deliver)
    TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory).addCallback(listening)
    reactor.run()


def link_bench(n: int) -> tuple[float, float, float]:
    """(records/s, sender us/record, receiver us/record) for ``n`` records."""
    import subprocess

    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint

    from vmqtw.cluster.link import PeerLink
    child = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--receiver", str(n)],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    port = int(child.stdout.readline().split()[1])
    records = make_records(min(n, 100_000))
    link = PeerLink("sender", "receiver", TCP4ClientEndpoint(reactor, "127.0.0.1", port),
                    "bench")
    sent = 0
    t0 = w0 = cpu = wall = 0.0

    def pump() -> None:
        nonlocal sent, t0, w0, cpu, wall
        if child.poll() is not None:
            wall = time.perf_counter() - w0
            reactor.stop()
            return
        if link.connected and sent < n:
            if not sent:
                t0, w0 = time.process_time(), time.perf_counter()
            if link.pending_bytes < 1 << 20:
                for _ in range(min(2000, n - sent)):
                    link.send(records[sent % len(records)])
                    sent += 1
            if sent >= n:
                cpu = time.process_time() - t0
        reactor.callLater(0 if sent < n else 0.01, pump)
    link.start()
    reactor.callLater(0, pump)
    reactor.run()
    out = child.stdout.read()
    child.wait(10)
    recv_cpu = float(out.split("DONE")[1].split()[0])
    return n / wall, cpu * 1e6 / n, recv_cpu * 1e6 / n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch", type=int, action="append",
                        help="records per frame (repeatable; default 1 16 64 690)")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--link", action="store_true",
                        help="two processes over loopback TCP instead of the codec alone")
    parser.add_argument("--receiver", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.receiver:
        receiver(args.receiver)
        return 0
    if args.link:
        rate, send_us, recv_us = link_bench(args.records * 5)
        print(f"vmq link over loopback TCP, {args.records * 5} records of {len(PAYLOAD)}-byte "
              f"payload: {rate / 1000:.0f}k rec/s; CPU per record: sender {send_us:.2f} us "
              f"(encode, batch, write), receiver {recv_us:.2f} us (read, split, decode)")
        return 0
    batches = args.batch or [1, 16, 64, 690]
    records = make_records(args.records)
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        decode(b"".join(encode(records, 64)))
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(15)
        return 0
    print(f"vmq link codec, {args.records} records of {len(PAYLOAD)}-byte payload, "
          f"median of {args.runs} runs, Python {sys.version.split()[0]}")
    for batch in batches:
        runs = [measure(records, batch) for _ in range(args.runs)]
        enc = statistics.median(r[0] for r in runs)
        dec = statistics.median(r[1] for r in runs)
        size = runs[0][2] / args.records
        print(f"batch={batch:<4d} encode={enc:5.2f} us/rec  decode={dec:5.2f} us/rec  "
              f"total={enc + dec:5.2f} us/rec  ({1e6 / (enc + dec) / 1000:6.0f}k rec/s, "
              f"{size:5.1f} wire bytes/rec)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
