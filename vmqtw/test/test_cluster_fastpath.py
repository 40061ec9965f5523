"""The publish path's shortcuts on the vmq link give the same bytes and messages as the
general record path: ``encode_msg``, ``link_bytes``, ``from_record`` without properties,
``PeerLink.send_encoded``, and the netsplit gate's cached readiness; the gates' hooks
bound once, the link's frames written onto the socket at flush, the router's one-route
shortcut."""
from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from vmqtw.cluster.codec import BatchEncoder, Msg, decode_batch, encode_msg, encode_record
from vmqtw.cluster.link import PeerLink
from vmqtw.cluster.memory_metadata import MemoryEngine, MemoryMetadata
from vmqtw.cluster.metadata import RouteChange
from vmqtw.cluster.netsplit import NETSPLIT, NetsplitGate
from vmqtw.cluster.registry import RegistrationGate
from vmqtw.cluster.router import ClusterRouter, from_record, link_bytes, to_record
from vmqtw.config import ClusterConfig, parse
from vmqtw.core.broker import Broker
from vmqtw.core.message import Message
from vmqtw.test.harness import BASE


class EncodeTests(SynchronousTestCase):

    def test_encode_msg_matches_encode_record(self) -> None:
        """encode_msg gives the bytes encode_record gives for the same Msg, with and
        without a mountpoint, properties, retain flag, every QoS, non-ASCII topics."""
        for mp in ("", "mp/é"):
            for qos in (0, 1, 2):
                for retain in (False, True):
                    for props in (b"", b"\x01\x01"):
                        args = (mp, "a/ü/c", b"payload", qos, retain, props)
                        self.assertEqual(encode_msg(*args), encode_record(Msg(*args)), args)

    def test_link_bytes_matches_the_record_path(self) -> None:
        """link_bytes is encode_record(to_record(...)) for a plain message and for one
        with forwarded properties and an expiry interval."""
        plain = Message("t/1", b"x", 1, True)
        rich = Message("t/2", b"y", 0, False,
                       {"content_type": "text/plain", "message_expiry_interval": 60})
        rich.start_expiry(100.0)
        for message in (plain, rich):
            self.assertEqual(link_bytes(message, "mp", 110.0),
                             encode_record(to_record(message, "mp", 110.0)))

    def test_from_record_without_properties(self) -> None:
        """A record without properties becomes a Message with no properties and no
        expiry; with properties the expiry starts at ``now``."""
        [plain] = decode_batch(encode_msg("", "t", b"p", 2, True))
        m = from_record(plain, 5.0)  # type: ignore[arg-type]
        self.assertEqual((m.topic, m.payload, m.qos, m.retain, m.properties, m.expires_at),
                         ("t", b"p", 2, True, {}, None))
        rich = Message("t", b"p", 0, False, {"message_expiry_interval": 30})
        rich.start_expiry(0.0)
        [record] = decode_batch(link_bytes(rich, "", 10.0))
        m = from_record(record, 10.0)  # type: ignore[arg-type]
        self.assertEqual((m.properties, m.expires_at), ({"message_expiry_interval": 20}, 30.0))


class SendEncodedTests(SynchronousTestCase):

    def test_send_encoded_buffers_like_send(self) -> None:
        """send_encoded queues bytes as send queues the record (buffered while the peer
        is away) and drops beyond the buffer size, counted."""
        link = PeerLink("a", "b", None, "c", reactor=Clock(),  # type: ignore[arg-type]
                        buffer_size=200)
        data = encode_msg("", "t", b"x" * 50, 0, False)
        self.assertTrue(link.send_encoded(data))
        self.assertTrue(link.send(Msg("", "t", b"x" * 50)))
        self.assertEqual(link.pending_bytes, 5 + 2 * len(data))
        self.assertFalse(link.send_encoded(data + b"x" * 100))
        self.assertEqual(link.records_dropped, 1)


class Refusing:
    """An endpoint whose connection attempts fail at once."""

    def connect(self, factory: object) -> defer.Deferred[object]:
        return defer.fail(ConnectionRefusedError("refused"))


class OnChangeTests(SynchronousTestCase):

    def test_failed_attempt_calls_on_change(self) -> None:
        """PeerLink.on_change is called when a connection attempt fails (and so the
        node's cached readiness is dropped)."""
        calls: list[int] = []
        link = PeerLink("a", "b", Refusing(), "c", reactor=Clock())  # type: ignore[arg-type]
        link.on_change = lambda: calls.append(link.failed_attempts)
        link.start()
        self.assertEqual(calls, [1])
        link.stop()


class Authorizing:
    """An inner authorizer that records the publish and subscribe hooks it answers."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[object, ...]]] = []

    def publish(self, *args: object) -> str:
        self.calls.append(("publish", args))
        return "ok"

    def publish_m5(self, *args: object) -> str:
        self.calls.append(("publish_m5", args))
        return "ok5"

    def subscribe(self, *args: object) -> str:
        self.calls.append(("subscribe", args))
        return "sub"


class GateBindingTests(SynchronousTestCase):

    def test_registration_gate_passes_hooks_straight_through(self) -> None:
        """RegistrationGate's publish/subscribe hooks are the inner authorizer's own
        bound methods (no __getattr__ per PUBLISH), and answer as the inner does."""
        inner = Authorizing()
        gate = RegistrationGate(inner, None)  # type: ignore[arg-type]
        self.assertEqual(gate.publish, inner.publish)
        self.assertIn("publish", vars(gate))
        self.assertEqual(gate.publish("c", "t", b"", 0, False, True), "ok")
        self.assertEqual(gate.subscribe("c", [("t", 0)]), "sub")
        self.assertEqual(inner.calls, [("publish", ("c", "t", b"", 0, False, True)),
                                       ("subscribe", ("c", [("t", 0)]))])

    def test_netsplit_gate_over_a_registration_gate(self) -> None:
        """The netsplit gate calls the inner hooks it bound at creation while ready, and
        refuses (counted) without calling them while not ready."""
        inner = Authorizing()
        ready = [True]
        gate = NetsplitGate(RegistrationGate(inner, None), lambda: ready[0],  # type: ignore
                            ClusterConfig())
        self.assertEqual(gate.publish("c", "t", b"", 1, False), "ok")
        self.assertEqual(gate.publish_m5("c", "t", b"", 1, False, {}), "ok5")
        ready[0] = False
        self.assertEqual(gate.publish("c", "t", b"", 1, False).reason, NETSPLIT)
        self.assertEqual(gate.publish_m5("c", "t", b"", 1, False, {}).reason, NETSPLIT)
        self.assertEqual(gate.refused, 2)
        self.assertEqual([name for name, _ in inner.calls], ["publish", "publish_m5"])

    def test_inner_without_publish_fails_when_called(self) -> None:
        """A gate around an authorizer without publish hooks can still be built (as
        before); calling the missing hook raises AttributeError then."""

        class RegisterOnly:
            pass
        gate = NetsplitGate(RegistrationGate(RegisterOnly(), None), lambda: True,  # type: ignore
                            ClusterConfig())
        self.assertRaises(AttributeError, gate.publish, "c", "t", b"", 0, False)
        self.assertRaises(AttributeError, gate.publish_m5, "c", "t", b"", 0, False, {})


class FakeSocket:
    """A socket whose kernel takes at most ``room`` bytes per send."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> int:
        taken = bytes(data[:self.room])
        self.sent.append(taken)
        return len(taken)


class FakeTCP:
    """The private state of a ``tcp.Connection`` that ``write_now`` reads."""

    def __init__(self, room: int) -> None:
        self.socket = FakeSocket(room)
        self._tempDataLen = 0
        self.offset = 0
        self.dataBuffer = b""
        self.disconnecting = False
        self.buffered: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.buffered.append(data)

    def writeSequence(self, data: list[bytes]) -> None:
        self.buffered.extend(data)

    def doWrite(self) -> None:
        pass


class DirectWriteTests(SynchronousTestCase):

    def link(self, room: int) -> tuple[PeerLink, FakeTCP]:
        link = PeerLink("a", "b", None, "c", reactor=Clock())  # type: ignore[arg-type]
        tcp = FakeTCP(room)

        class Proto:
            paused = False
            socket = tcp
            direct = True
            transport = tcp
        link._proto = Proto()  # type: ignore[assignment]
        return link, tcp

    def test_flush_sends_on_the_socket_at_once(self) -> None:
        """With nothing buffered by Twisted, a flush hands the frames to the socket
        itself (one send), not to the transport's buffer."""
        link, tcp = self.link(1 << 20)
        data = encode_msg("", "t", b"x" * 10, 0, False)
        link.send_encoded(data)
        link.send_encoded(data)
        link.flush()
        self.assertEqual(tcp.buffered, [])
        self.assertEqual(len(tcp.socket.sent), 1)
        self.assertEqual(decode_batch(tcp.socket.sent[0][5:]), decode_batch(data) * 2)
        self.assertEqual((link.records_sent, link.pending_bytes), (2, 0))

    def test_what_the_socket_does_not_take_is_buffered(self) -> None:
        """A partial send leaves the rest, in order, to the transport's buffer."""
        link, tcp = self.link(7)
        link.send_encoded(encode_msg("", "t", b"x" * 10, 0, False))
        link.flush()
        self.assertEqual(len(tcp.socket.sent[0]), 7)
        self.assertEqual(tcp.socket.sent[0] + b"".join(tcp.buffered),
                         b"".join(frames_of(encode_msg("", "t", b"x" * 10, 0, False))))

    def test_a_paused_link_writes_nothing(self) -> None:
        """While TCP back-pressure pauses the link, a flush keeps the records."""
        link, tcp = self.link(1 << 20)
        link._proto.paused = True  # type: ignore[union-attr]
        link.send_encoded(encode_msg("", "t", b"x", 0, False))
        link.flush()
        self.assertEqual((tcp.socket.sent, tcp.buffered), ([], []))
        self.assertGreater(link.pending_bytes, 0)


def frames_of(*records: bytes) -> list[bytes]:
    """The frames a fresh BatchEncoder makes of ``records`` (already encoded)."""
    enc = BatchEncoder()
    for data in records:
        enc.add_encoded(data)
    return enc.take()


class ForwardTests(SynchronousTestCase):

    def router(self, links: dict[str, Any]) -> Any:
        clock = Clock()
        broker = Broker(parse(BASE), clock)
        router = ClusterRouter(broker, MemoryMetadata(MemoryEngine(clock), "a"), links)
        router.attach()
        router.routes_changed([RouteChange("b", "t/#", True), RouteChange("c", "t/+", True),
                               RouteChange("c", "t/x", True)])
        return router

    def test_one_route_and_several_routes_send_once_per_node(self) -> None:
        """A topic matching one node's route is sent there once; one matching two
        routes of node c and one of node b is sent once to each; counters agree."""
        links = {n: PeerLink("a", n, None, "c", reactor=Clock())  # type: ignore[arg-type]
                 for n in ("b", "c")}
        router = self.router(links)
        router.publish(Message("t/x/y", b"1"), "")  # only t/# (node b)
        router.publish(Message("t/x", b"2"), "")    # t/# (b), t/+ and t/x (c)
        got = {n: [r.payload for f in link._encoder.take() for r in decode_batch(f[5:])]
               for n, link in links.items()}
        self.assertEqual(got, {"b": [b"1", b"2"], "c": [b"2"]})
        self.assertEqual((router.forwarded, router.matches_remote), (3, 2))

    def test_one_route_without_a_link_or_on_a_plain_link(self) -> None:
        """One matching route whose node has no link sends nothing and counts nothing;
        a link with only ``send`` gets the record (the general path)."""
        sent: list[object] = []

        class Plain:
            def send(self, record: object) -> bool:
                sent.append(record)
                return True
        links: dict[str, Any] = {}
        router = self.router(links)
        router.publish(Message("t/x/y", b"1"), "")
        self.assertEqual((router.forwarded, router.matches_remote), (0, 0))
        links["b"] = Plain()
        router.publish(Message("t/x/y", b"2"), "")
        self.assertEqual([r.payload for r in sent], [b"2"])  # type: ignore[attr-defined]
        self.assertEqual((router.forwarded, router.matches_remote), (1, 1))
