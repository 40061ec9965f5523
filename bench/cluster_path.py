#!/usr/bin/env python3
"""CPU per message of the vmq link on the publish path, as the nodes run it.

    python3 bench/cluster_path.py                  # 200,000 messages, 5 runs, medians
    python3 bench/cluster_path.py --properties     # messages with an MQTT 5 property

Sending node: a routed :class:`~vmqtw.core.message.Message` becomes record bytes in the
peer's batch (``link_bytes`` + ``BatchEncoder.add_encoded`` where the tree has them,
else ``to_record`` + ``encode_record`` as before), cut into frames once per 64 KiB.
Receiving node: the frames are split and decoded (``FrameDecoder`` + ``decode_batch``)
and each record becomes a ``Message`` again (``from_record``). Nothing else of the
broker runs (no MQTT parsing, no topic match, no socket), so the figures are the link's
own cost: process CPU time (``time.process_time``), microseconds per message, median of
the runs. Messages are those of bench/run.py's fan-in: topic ``bench/NNNNN``, 64-byte
payload, QoS 0. Runs against whatever ``vmqtw`` is first on ``sys.path`` (this tree).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vmqtw.cluster import router as R
from vmqtw.cluster.codec import (
    BATCH, BatchEncoder, FrameDecoder, decode_batch, encode_record,
)
from vmqtw.core.message import Message

PAYLOAD = bytes(range(64))
FLUSH = 64 * 1024


def messages(n: int, properties: bool) -> list[Message]:
    props = {"content_type": "application/octet-stream"} if properties else None
    return [Message(f"bench/{i % 1000:05d}", PAYLOAD, 0, False, props) for i in range(n)]


def send_side(msgs: list[Message]) -> list[bytes]:
    """What PeerLink.send does per message, and the frames at each flush."""
    enc = BatchEncoder()
    frames: list[bytes] = []
    link_bytes = getattr(R, "link_bytes", None)
    add = enc.add_encoded
    if link_bytes is not None:
        for m in msgs:
            add(link_bytes(m, "", 0.0))
            if enc.pending_bytes >= FLUSH:
                frames.extend(enc.take())
    else:  # the tree before link_bytes existed
        to_record = R.to_record
        for m in msgs:
            add(encode_record(to_record(m, "", 0.0)))
            if enc.pending_bytes >= FLUSH:
                frames.extend(enc.take())
    frames.extend(enc.take())
    return frames


def receive_side(stream: bytes) -> int:
    """What LinkServerProtocol + ClusterRouter.deliver do before Broker.publish."""
    dec = FrameDecoder()
    from_record = R.from_record
    n = 0
    for p in range(0, len(stream), 65536):
        for ftype, body in dec.feed(stream[p:p + 65536]):
            assert ftype == BATCH
            for record in decode_batch(body):
                from_record(record, 0.0)  # type: ignore[arg-type]
                n += 1
    return n


def measure(msgs: list[Message]) -> tuple[float, float]:
    t0 = time.process_time()
    frames = send_side(msgs)
    t1 = time.process_time()
    stream = b"".join(frames)
    t2 = time.process_time()
    got = receive_side(stream)
    t3 = time.process_time()
    assert got == len(msgs), (got, len(msgs))
    n = len(msgs)
    return (t1 - t0) / n * 1e6, (t3 - t2) / n * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--properties", action="store_true",
                    help="every message carries a content type (the general path)")
    args = ap.parse_args()
    msgs = messages(args.messages, args.properties)
    measure(msgs[:10_000])  # warm-up
    sends, recvs = [], []
    for _ in range(args.runs):
        s, r = measure(msgs)
        sends.append(s)
        recvs.append(r)
    s, r = statistics.median(sends), statistics.median(recvs)
    print(f"vmq link per message ({'with' if args.properties else 'no'} properties, "
          f"{args.messages} messages, median of {args.runs}): send {s:.2f} us, "
          f"receive {r:.2f} us, total {s + r:.2f} us "
          f"({'link_bytes' if hasattr(R, 'link_bytes') else 'to_record + encode_record'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
