"""The publish path's shortcuts on the vmq link give the same bytes and messages as the
general record path: ``encode_msg``, ``link_bytes``, ``from_record`` without properties,
``PeerLink.send_encoded``, and the netsplit gate's cached readiness."""
from __future__ import annotations

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from vmqtw.cluster.codec import Msg, decode_batch, encode_msg, encode_record
from vmqtw.cluster.link import PeerLink
from vmqtw.cluster.router import from_record, link_bytes, to_record
from vmqtw.core.message import Message


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
