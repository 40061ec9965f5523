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
from typing import Any, Callable

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


# -- the nodes' whole paths, in process ------------------------------------------------

#: PUBLISHes per read (one ``data_received``), and rounds / repeats of the node paths.
NODE_BATCH = 100
NODE_ROUNDS = 40
NODE_REPEATS = 15


class _Discard:
    """A link transport that drops what is written (and is not a TCP socket)."""

    def writeSequence(self, data: list[bytes]) -> None:
        pass

    def write(self, data: bytes) -> None:
        pass


class _Proto:
    """What a :class:`PeerLink` needs of its connected protocol."""

    paused = False
    socket = None
    direct = False
    transport = _Discard()


def _rig(gated: bool) -> Any:
    from twisted.internet.task import Clock

    from vmqtw.cluster.netsplit import NetsplitGate
    from vmqtw.cluster.registry import RegistrationGate
    from vmqtw.config import ClusterConfig
    from vmqtw.test.connection_harness import Rig
    rig = Rig()
    if gated:  # as ClusterNode.gate: readiness reused for 50 ms (ready_now)
        clock: Clock = rig.clock
        until = [0.0]

        def ready_now() -> bool:
            now = clock.seconds()
            if now < until[0]:
                return True
            until[0] = now + 0.05
            return True
        registration: Any = RegistrationGate(rig.authorizer, None)  # type: ignore[arg-type]
        gate: Any = NetsplitGate(registration, ready_now, ClusterConfig())
        rig.authorizer = gate
    return rig


def _chunk() -> bytes:
    from vmqtw.codec import Publish, encode
    return b"".join(encode(Publish(f"bench/{i:05d}", PAYLOAD, 0), 4)
                    for i in range(NODE_BATCH))


def _subscriber(rig: Any) -> Any:
    from vmqtw.codec import Subscribe, SubOptions
    sub = rig.connected("sub", 4)
    sub.send(Subscribe(1, [("bench/#", SubOptions(0))]))
    sub.take()
    return sub


def _best(run: Any) -> float:
    best = float("inf")
    for _ in range(NODE_REPEATS):
        t0 = time.process_time()
        for _ in range(NODE_ROUNDS):
            run()
        best = min(best, time.process_time() - t0)
    return best / (NODE_ROUNDS * NODE_BATCH) * 1e6


def _router(rig: Any, name: str, links: dict[str, Any]) -> Any:
    from vmqtw.cluster.memory_metadata import MemoryEngine, MemoryMetadata
    router = R.ClusterRouter(rig.broker, MemoryMetadata(MemoryEngine(rig.clock), name), links)
    router.attach()
    return router


def _one_process(chunk: bytes) -> Callable[[], None]:
    rig = _rig(False)
    wire = _subscriber(rig).transport.wire
    feed = rig.connected("pub", 4).connection.data_received

    def run() -> None:
        feed(chunk)
        wire.clear()
    return run


def _node1(chunk: bytes, frames: list[bytes]) -> Callable[[], None]:
    from twisted.internet.task import Clock

    from vmqtw.cluster.link import PeerLink
    from vmqtw.cluster.metadata import RouteChange
    rig = _rig(True)
    link = PeerLink("n1", "n2", None, "c", reactor=Clock())  # type: ignore[arg-type]
    link._proto = _Proto()  # type: ignore[assignment]
    router = _router(rig, "n1", {"n2": link})
    router.routes_changed([RouteChange("n2", "bench/#", True)])
    take = link._encoder.take
    feed = rig.connected("pub", 4).connection.data_received

    def run() -> None:
        feed(chunk)
        frames[:] = take()  # the link's flush at the end of the turn
        link._call = None
    return run


def _node2(body: bytes) -> Callable[[], None]:
    rig = _rig(False)
    wire = _subscriber(rig).transport.wire
    deliver = _router(rig, "n2", {}).deliver

    def run() -> None:
        deliver("n1", decode_batch(body))
        wire.clear()
    return run


def node_paths() -> dict[str, float]:
    """Microseconds of process CPU per message, best of the repeats, for: one process
    (a read of 100 PUBLISHes from one publisher, routed to a local subscriber on
    ``bench/#``, output written to a fake socket); node 1 (the same read behind the
    netsplit and registration gates, forwarded to a peer's route over a
    :class:`PeerLink` whose frames are dropped); node 2 (those records decoded and
    delivered to the local subscriber). No sockets, no reactor: code cost only."""
    chunk = _chunk()
    frames: list[bytes] = []
    out = {"one process": _best(_one_process(chunk))}
    out["node 1 (publishers, forward)"] = _best(_node1(chunk, frames))
    out["node 2 (link -> subscriber)"] = _best(_node2(frames[0][5:]))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--properties", action="store_true",
                    help="every message carries a content type (the general path)")
    ap.add_argument("--node-path", action="store_true",
                    help="also the nodes' whole paths in process: one process, node 1 "
                         "(MQTT in, link out), node 2 (link in, MQTT out)")
    args = ap.parse_args()
    if args.node_path:
        for name, us in node_paths().items():
            print(f"{name:<30} {us:5.2f} us per message (best of {NODE_REPEATS})")
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
