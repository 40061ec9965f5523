"""The WebSocket layer with in-memory transports: the HTTP upgrade and its
errors, X-Forwarded-For rules, frames as a byte stream, and the adapter
transport the MQTT protocol sees.

The WebSocket bytes are built by hand in vmqtw.test.websocket_support, which
tests/test_websocket.py uses too.
"""
from __future__ import annotations

import struct
from types import SimpleNamespace
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from vmqtw.config import parse
from vmqtw.test.websocket_support import (
    OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, client_frame, parse_frame,
    split_response, upgrade_request,
)
from vmqtw.transport.identity import peer_of
from vmqtw.transport.websocket import (
    MQTTWebSocketFactory, Refused, WebSocketSettings, WebSocketTransport, forwarded_for,
    websocket_factory,
)

# ---------------------------------------------------------------------------
# In-memory connections
# ---------------------------------------------------------------------------

class TCPStringTransport(StringTransport):
    """A StringTransport with the TCP extras MQTT and autobahn call."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.nodelay = False
        self.aborted = False

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.nodelay = enabled

    def getTcpNoDelay(self) -> bool:
        return self.nodelay

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()

    def unregisterProducer(self) -> None:
        # like Twisted's real transports: no error without a producer
        if self.producer is not None:
            super().unregisterProducer()


class Recorder(Protocol):
    """Stands in for MQTTProtocol: records what reaches it."""

    def __init__(self, addr: Any) -> None:
        self.addr = addr
        self.received: list[bytes] = []
        self.lost: list[Failure] = []

    @property
    def data(self) -> bytes:
        return b"".join(self.received)

    def connectionMade(self) -> None:
        self.transport.registerProducer(self, True)

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        self.lost.append(reason)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class Inner(Factory):
    """Stands in for MQTTFactory (with ``broker.config`` when given a frame size)."""

    def __init__(self, max_ws_frame_size: int | None = None) -> None:
        self.built: list[Recorder] = []
        if max_ws_frame_size is not None:
            self.broker = SimpleNamespace(
                config=SimpleNamespace(max_ws_frame_size=max_ws_frame_size))

    def buildProtocol(self, addr: Any) -> Recorder:
        p = Recorder(addr)
        self.built.append(p)
        return p


def ws_listener(extra: str = "", kind: str = "ws") -> Any:
    text = f"listener.{kind}.w = 127.0.0.1:0\n{extra}"
    return parse(text, "t.conf").listeners[0]


class Conn:
    """One WebSocket server connection over a StringTransport."""

    def __init__(self, extra: str = "", inner: Inner | None = None,
                 peer: Any = None, kind: str = "ws") -> None:
        self.inner = inner if inner is not None else Inner()
        self.clock = Clock()
        self.listener = ws_listener(extra, kind)
        self.factory = websocket_factory(self.listener, self.inner, self.clock)
        peer = peer if peer is not None else IPv4Address("TCP", "127.0.0.1", 40000)
        self.proto = self.factory.buildProtocol(peer)
        self.transport = TCPStringTransport(
            peerAddress=peer, hostAddress=IPv4Address("TCP", "127.0.0.1", 8080))
        self.proto.makeConnection(self.transport)
        self._read = 0

    def send(self, data: bytes) -> None:
        self.proto.dataReceived(data)

    def output(self) -> bytes:
        return self.transport.value()

    def response(self) -> tuple[int, dict[str, str], bytes]:
        parsed = split_response(self.output())
        assert parsed is not None, f"no complete HTTP response in {self.output()!r}"
        return parsed

    def open(self, protocols: str = "mqtt", headers: tuple[tuple[str, str], ...] = (),
             path: str = "/mqtt") -> Recorder:
        self.send(upgrade_request(path, protocols, headers))
        status, hdrs, rest = self.response()
        assert status == 101, (status, hdrs)
        assert self.inner.built, "the MQTT protocol was not built"
        self._read = len(self.output()) - len(rest)
        return self.inner.built[-1]

    def frames(self) -> list[tuple[int, bool, bytes]]:
        """Server frames written since the last call."""
        data = self.output()[self._read:]
        out = []
        while True:
            parsed = parse_frame(data)
            if parsed is None:
                break
            opcode, fin, payload, used = parsed
            out.append((opcode, fin, payload))
            data = data[used:]
            self._read += used
        return out

    def lose(self) -> None:
        self.proto.connectionLost(Failure(ConnectionDone()))


# ---------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------

class HandshakeTests(SynchronousTestCase):

    def test_upgrade_echoes_mqtt(self) -> None:
        """
        An RFC 6455 upgrade offering the ``mqtt`` subprotocol is answered 101 with ``Sec-
        WebSocket-Protocol: mqtt`` and no extension, and the MQTT protocol is built on the
        WebSocket adapter transport.
        """
        c = Conn()
        c.send(upgrade_request())
        status, headers, _ = c.response()
        self.assertEqual(status, 101)
        self.assertEqual(headers["sec-websocket-protocol"], "mqtt")
        self.assertNotIn("sec-websocket-extensions", headers)
        self.assertEqual(len(c.inner.built), 1)
        self.assertIsInstance(c.inner.built[0].transport, WebSocketTransport)

    def test_mqttv31_echoed(self) -> None:
        """The MQTT 3.1 subprotocol name ``mqttv3.1`` is accepted and echoed."""
        c = Conn()
        c.send(upgrade_request(protocols="mqttv3.1"))
        self.assertEqual(c.response()[1]["sec-websocket-protocol"], "mqttv3.1")

    def test_first_supported_of_a_list_is_chosen(self) -> None:
        """
        From a list of offered subprotocols the first supported one in the client's order is
        chosen, whatever the spacing.
        """
        for offered, chosen in (("chat, mqtt", "mqtt"), ("mqttv3.1, mqtt", "mqttv3.1"),
                                ("chat,superchat, mqtt ,mqttv3.1", "mqtt")):
            c = Conn()
            c.send(upgrade_request(protocols=offered))
            status, headers, _ = c.response()
            self.assertEqual((status, headers["sec-websocket-protocol"]), (101, chosen),
                             offered)

    def assertRefused(self, c: Conn, code: int) -> dict[str, str]:
        status, headers, body = c.response()
        self.assertEqual(status, code, c.output())
        self.assertEqual(headers["content-length"], "0")
        self.assertEqual(headers["connection"], "close")
        self.assertEqual(body, b"")
        self.assertTrue(c.transport.disconnecting)
        self.assertEqual(c.inner.built, [])
        return headers

    def test_missing_subprotocol_is_400(self) -> None:
        """
        An upgrade without ``Sec-WebSocket-Protocol`` is refused with an empty 400 response and
        ``Connection: close``, and no MQTT protocol is built.
        """
        c = Conn()
        c.send(upgrade_request(protocols=None))
        self.assertRefused(c, 400)

    def test_unsupported_subprotocol_is_400(self) -> None:
        """
        Subprotocols other than ``mqtt`` and ``mqttv3.1`` (compared case-sensitively) are
        refused with 400.
        """
        for offered in ("chat", "MQTT", "mqttv5"):
            c = Conn()
            c.send(upgrade_request(protocols=offered))
            self.assertRefused(c, 400)

    def test_wrong_path_is_404(self) -> None:
        """
        A request for any path other than exactly ``/mqtt`` (case and trailing slash count) is
        refused with 404.
        """
        for path in ("/", "/other", "/mqtt/", "/MQTT", "/mqtt2"):
            c = Conn()
            c.send(upgrade_request(path=path))
            self.assertRefused(c, 404)

    def test_query_string_is_ignored(self) -> None:
        """A query string after the WebSocket path does not affect the path match."""
        c = Conn()
        c.send(upgrade_request(path="/mqtt?client=x"))
        self.assertEqual(c.response()[0], 101)

    def test_websocket_path_option(self) -> None:
        """``websocket_path`` replaces ``/mqtt`` as the only path accepted."""
        c = Conn("listener.ws.w.websocket_path = /ws/mqtt\n")
        c.send(upgrade_request(path="/ws/mqtt"))
        self.assertEqual(c.response()[0], 101)
        c = Conn("listener.ws.w.websocket_path = /ws/mqtt\n")
        c.send(upgrade_request(path="/mqtt"))
        self.assertRefused(c, 404)

    def test_plain_http_get_is_426(self) -> None:
        """
        A plain HTTP GET of the WebSocket path without upgrade headers is answered 426 with
        ``Upgrade: websocket``.
        """
        c = Conn()
        c.send(b"GET /mqtt HTTP/1.1\r\nHost: localhost\r\nAccept: text/html\r\n\r\n")
        headers = self.assertRefused(c, 426)
        self.assertEqual(headers["upgrade"], "websocket")

    def test_plain_http_to_another_path_is_404(self) -> None:
        """A plain HTTP GET of another path is answered 404."""
        c = Conn()
        c.send(b"GET /favicon.ico HTTP/1.1\r\nHost: localhost\r\n\r\n")
        self.assertRefused(c, 404)

    def test_other_http_errors(self) -> None:
        """
        A method other than GET is answered 405, HTTP/1.0 505, an unparsable request line 400
        and a request without ``Host`` 400.
        """
        for request, code in (
                (b"POST /mqtt HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 405),
                (b"GET /mqtt HTTP/1.0\r\nHost: x\r\n\r\n", 505),
                (b"hello\r\n\r\n", 400),
                (b"GET /mqtt HTTP/1.1\r\n\r\n", 400)):  # no Host
            c = Conn()
            c.send(request)
            self.assertRefused(c, code)

    def test_request_arriving_byte_by_byte(self) -> None:
        """An upgrade request arriving one byte at a time is accepted."""
        c = Conn()
        for byte in upgrade_request():
            c.send(bytes([byte]))
        self.assertEqual(c.response()[0], 101)

    def test_long_request_line_is_414(self) -> None:
        """
        A request line longer than the default ``max_request_line_length`` (8000) is answered
        414.
        """
        c = Conn()
        c.send(upgrade_request(path="/mqtt?" + "x" * 8000))
        self.assertRefused(c, 414)

    def test_long_request_line_is_refused_before_the_end_of_the_head(self) -> None:
        """
        An overlong request line is refused as soon as it exceeds the limit, without waiting
        for the end of the request head.
        """
        c = Conn("listener.ws.w.max_request_line_length = 100\n")
        c.send(b"GET /" + b"x" * 200)
        self.assertRefused(c, 414)

    def test_long_header_value_is_431(self) -> None:
        """
        A header value longer than ``max_header_value_length`` (4096 by default) is answered
        431; a larger setting admits it.
        """
        c = Conn()
        c.send(upgrade_request(headers=(("Cookie", "c" * 4097),)))
        self.assertRefused(c, 431)
        c = Conn("listener.ws.w.max_header_value_length = 5000\n")
        c.send(upgrade_request(headers=(("Cookie", "c" * 4097),)))
        self.assertEqual(c.response()[0], 101)

    def test_too_many_headers_is_431(self) -> None:
        """A request with more than 100 header lines (cowboy's max_headers) gets 431."""
        c = Conn()
        c.send(upgrade_request(headers=tuple((f"X-H{i}", "v") for i in range(100))))
        self.assertRefused(c, 431)

    def test_endless_head_is_431(self) -> None:
        """
        A request head that keeps growing without ending is answered 431 instead of being
        buffered forever.
        """
        c = Conn()
        c.send(b"GET /mqtt HTTP/1.1\r\n")
        for _ in range(20):
            c.send(b"X-Pad: " + b"p" * 4000 + b"\r\n")
        self.assertRefused(c, 431)

    def test_open_handshake_timeout(self) -> None:
        """
        A client that does not complete the upgrade request within 10 seconds is aborted, and
        no timer is left after the connection is lost.
        """
        c = Conn()
        c.send(b"GET /mqtt HTTP/1.1\r\n")
        c.clock.advance(9.9)
        self.assertFalse(c.transport.aborted)
        c.clock.advance(0.2)
        self.assertTrue(c.transport.aborted)
        c.lose()
        self.assertEqual(c.clock.getDelayedCalls(), [])

    def test_origin_null_is_accepted(self) -> None:
        """
        The ``Origin`` header is not checked: ``null`` and any other origin are accepted, as in
        VerneMQ.
        """
        c = Conn()
        c.send(upgrade_request(headers=(("Origin", "null"),)))
        self.assertEqual(c.response()[0], 101)
        c = Conn()
        c.send(upgrade_request(headers=(("Origin", "https://example.com:8443"),)))
        self.assertEqual(c.response()[0], 101)


class CompressionTests(SynchronousTestCase):
    OFFER = (("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits"),)

    def test_off_by_default(self) -> None:
        """Without ``websocket_compression`` a ``permessage-deflate`` offer is not accepted."""
        c = Conn()
        c.send(upgrade_request(headers=self.OFFER))
        status, headers, _ = c.response()
        self.assertEqual(status, 101)
        self.assertNotIn("sec-websocket-extensions", headers)

    def test_on_accepts_permessage_deflate(self) -> None:
        """
        With ``websocket_compression = on`` a ``permessage-deflate`` offer (RFC 7692) is
        accepted: compressed client messages reach MQTT inflated and the broker's output is
        sent compressed.
        """
        c = Conn("listener.ws.websocket_compression = on\n")
        mqtt = c.open(headers=self.OFFER)
        status, headers, _ = split_response(c.output())  # type: ignore[misc]
        self.assertIn("permessage-deflate", headers["sec-websocket-extensions"])
        # A compressed client message (RSV1) reaches MQTT inflated; the reply
        # is compressed.
        import zlib
        deflater = zlib.compressobj(wbits=-15)
        data = deflater.compress(b"\x10" * 1000) + deflater.flush(zlib.Z_SYNC_FLUSH)
        c.send(client_frame(OP_BINARY, data[:-4], rsv=4))
        self.assertEqual(mqtt.data, b"\x10" * 1000)
        mqtt.transport.write(b"\x20" * 1000)
        [(opcode, fin, payload)] = c.frames()
        self.assertEqual(opcode, OP_BINARY)
        self.assertLess(len(payload), 100)
        self.assertEqual(zlib.decompressobj(wbits=-15).decompress(payload + b"\x00\x00\xff\xff"),
                         b"\x20" * 1000)

    def test_on_still_serves_clients_without_an_offer(self) -> None:
        """
        With compression on, clients that offer no extension still connect and exchange
        uncompressed frames.
        """
        c = Conn("listener.ws.websocket_compression = on\n")
        mqtt = c.open()
        c.send(client_frame(OP_BINARY, b"\x10\x00"))
        self.assertEqual(mqtt.data, b"\x10\x00")


class FrameTests(SynchronousTestCase):

    def assertClosedWith(self, c: Conn, code: int) -> None:
        closes = [p for op, _, p in c.frames() if op == OP_CLOSE]
        self.assertEqual([struct.unpack("!H", p[:2])[0] for p in closes], [code])

    def test_binary_frames_are_a_byte_stream(self) -> None:
        """
        Binary frame payloads reach MQTT as one byte stream: consecutive frames, fragments of a
        message as each arrives, continuation frames with a ping in between (answered with a
        pong) and frames split across reads.
        """
        c = Conn()
        mqtt = c.open()
        c.send(client_frame(OP_BINARY, b"abc") + client_frame(OP_BINARY, b"de"))
        # a fragmented message: each frame's bytes go on as they come
        c.send(client_frame(OP_BINARY, b"fg", fin=False))
        self.assertEqual(mqtt.data, b"abcdefg")
        c.send(client_frame(OP_PING, b"p"))  # control frames may interleave
        c.send(client_frame(OP_CONT, b"hi", fin=False))
        c.send(client_frame(OP_CONT, b"j", fin=True))
        self.assertEqual(mqtt.data, b"abcdefghij")
        # a frame split across TCP reads
        frame = client_frame(OP_BINARY, b"klmnop")
        c.send(frame[:3])
        c.send(frame[3:9])
        c.send(frame[9:])
        self.assertEqual(mqtt.data, b"abcdefghijklmnop")
        self.assertEqual(c.frames(), [(OP_PONG, True, b"p")])

    def test_bytes_following_the_request_are_delivered(self) -> None:
        """
        Frames arriving in the same segment as the upgrade request are delivered after the
        upgrade.
        """
        c = Conn()
        c.send(upgrade_request() + client_frame(OP_BINARY, b"early"))
        self.assertEqual(c.response()[0], 101)
        self.assertEqual(c.inner.built[0].data, b"early")

    def test_text_frame_aborts(self) -> None:
        """
        A text frame aborts the connection (MQTT over WebSocket uses binary frames only); bytes
        before it were delivered, nothing after it, and MQTT learns of the loss once.
        """
        c = Conn()
        mqtt = c.open()
        c.send(client_frame(OP_BINARY, b"ok") + client_frame(OP_TEXT, b"text")
               + client_frame(OP_BINARY, b"after"))
        self.assertTrue(c.transport.aborted)
        self.assertEqual(mqtt.data, b"ok")
        c.lose()
        self.assertEqual(len(mqtt.lost), 1)

    def test_frame_over_max_ws_frame_size_fails_the_connection(self) -> None:
        """
        A frame whose payload exceeds ``max_ws_frame_size`` is not delivered and closes the
        connection with 1009 (message too big); frames arriving while closing are ignored.
        """
        c = Conn(inner=Inner(max_ws_frame_size=100))
        mqtt = c.open()
        c.send(client_frame(OP_BINARY, b"x" * 100))
        self.assertEqual(len(mqtt.data), 100)
        c.send(client_frame(OP_BINARY, b"y" * 101))
        self.assertEqual(len(mqtt.data), 100)
        self.assertClosedWith(c, 1009)
        c.send(client_frame(OP_BINARY, b"z"))  # ignored while closing
        self.assertEqual(len(mqtt.data), 100)

    def test_message_over_max_ws_frame_size_fails_the_connection(self) -> None:
        """
        As in cowboy, ``max_ws_frame_size`` also limits a message reassembled from fragments:
        the fragment that overflows it is not delivered and the connection is closed with 1009.
        """
        # As in cowboy, the limit also applies to a reassembled message.
        c = Conn(inner=Inner(max_ws_frame_size=100))
        mqtt = c.open()
        c.send(client_frame(OP_BINARY, b"x" * 60, fin=False))
        c.send(client_frame(OP_CONT, b"y" * 60, fin=True))
        self.assertEqual(mqtt.data, b"x" * 60)
        self.assertClosedWith(c, 1009)

    def login(self, c: Conn, mqtt: Recorder) -> None:
        """The MQTT side sends a successful CONNACK: the client is logged in."""
        mqtt.transport.write(b"\x20\x02\x00\x00")
        self.assertFalse(c.proto.preauth)
        c.frames()

    def test_frames_of_one_read_reach_mqtt_in_one_call_after_login(self) -> None:
        """
        Once the client is logged in, the payloads of all the frames in one read reach MQTT in
        one call, in order (one decode and one output flush per read); before login each frame
        goes through as it is parsed.
        """
        c = Conn()
        mqtt = c.open()
        c.send(client_frame(OP_BINARY, b"ab") + client_frame(OP_BINARY, b"cd"))
        self.assertEqual(mqtt.received, [b"ab", b"cd"])
        self.login(c, mqtt)
        c.send(client_frame(OP_BINARY, b"ef") + client_frame(OP_BINARY, b"gh")
               + client_frame(OP_PING, b"p") + client_frame(OP_BINARY, b"ij", fin=False))
        self.assertEqual(mqtt.received[2:], [b"efghij"])
        frame = client_frame(OP_CONT, b"klm")
        c.send(frame[:4])
        c.send(frame[4:])
        self.assertEqual(mqtt.data, b"abcdefghijklm")
        self.assertEqual(c.frames(), [(OP_PONG, True, b"p")])

    def test_after_login_frames_before_a_failure_in_the_same_read_are_delivered(self) -> None:
        """
        After login, frames that precede a text frame, an oversize frame or a close frame in the
        same read are still delivered (before the connection is failed or closed); nothing
        after it is.
        """
        c = Conn()
        mqtt = c.open()
        self.login(c, mqtt)
        c.send(client_frame(OP_BINARY, b"ok") + client_frame(OP_TEXT, b"text")
               + client_frame(OP_BINARY, b"after"))
        self.assertTrue(c.transport.aborted)
        self.assertEqual(mqtt.data, b"ok")

        c = Conn(inner=Inner(max_ws_frame_size=100))
        mqtt = c.open()
        self.login(c, mqtt)
        c.send(client_frame(OP_BINARY, b"x" * 10) + client_frame(OP_BINARY, b"y" * 101))
        self.assertEqual(mqtt.data, b"x" * 10)
        self.assertClosedWith(c, 1009)

        c = Conn()
        mqtt = c.open()
        self.login(c, mqtt)
        c.send(client_frame(OP_BINARY, b"last") + client_frame(OP_CLOSE, struct.pack("!H", 1000))
               + client_frame(OP_BINARY, b"ignored"))
        self.assertEqual(mqtt.data, b"last")
        self.assertClosedWith(c, 1000)

    def test_broker_output_is_not_limited_by_max_ws_frame_size(self) -> None:
        """
        ``max_ws_frame_size`` limits only what clients send: the broker's own messages go out
        in one frame whatever their size.
        """
        c = Conn(inner=Inner(max_ws_frame_size=100))
        mqtt = c.open()
        mqtt.transport.write(b"z" * 5000)
        self.assertEqual(c.frames(), [(OP_BINARY, True, b"z" * 5000)])
        self.assertEqual(c.proto.maxMessagePayloadSize, 100)

    def test_unmasked_client_frame_fails_the_connection(self) -> None:
        """
        An unmasked client frame (RFC 6455 section 5.1) is not delivered and closes the
        connection with 1002; a client that does not answer the close frame within 5 seconds is
        dropped.
        """
        c = Conn()
        mqtt = c.open()
        c.send(b"\x82\x02ab")
        self.assertEqual(mqtt.data, b"")
        self.assertClosedWith(c, 1002)
        c.clock.advance(5.1)  # no reply to our close frame: dropped
        self.assertTrue(c.transport.aborted)


class AdapterTests(SynchronousTestCase):

    def test_write_sends_one_binary_message(self) -> None:
        """
        Each ``write`` or ``writeSequence`` of the MQTT protocol becomes one binary message; an
        empty write sends nothing.
        """
        c = Conn()
        mqtt = c.open()
        mqtt.transport.write(b"\x20\x02\x00\x00")
        mqtt.transport.writeSequence([b"\xd0", b"\x00"])
        mqtt.transport.write(b"")
        self.assertEqual(c.frames(), [(OP_BINARY, True, b"\x20\x02\x00\x00"),
                                      (OP_BINARY, True, b"\xd0\x00")])

    def test_lose_connection_is_a_close_handshake(self) -> None:
        """
        ``loseConnection`` from MQTT sends one close frame with 1000 and waits for the client's
        close frame before dropping the TCP connection; later writes are ignored, MQTT learns
        of the loss once, and no timer is left.
        """
        c = Conn()
        mqtt = c.open()
        mqtt.transport.loseConnection()
        mqtt.transport.loseConnection()  # twice is fine
        mqtt.transport.write(b"late")    # ignored once closing
        self.assertEqual(c.frames(), [(OP_CLOSE, True, struct.pack("!H", 1000))])
        self.assertFalse(c.transport.disconnecting)
        c.send(client_frame(OP_CLOSE, struct.pack("!H", 1000)))
        self.assertTrue(c.transport.disconnecting or c.transport.aborted)
        c.lose()
        self.assertEqual(len(mqtt.lost), 1)
        self.assertFalse(mqtt.transport.connected)
        self.assertEqual(c.clock.getDelayedCalls(), [])

    def test_close_handshake_timeout(self) -> None:
        """
        When the client does not answer the close frame within 5 seconds the connection is
        aborted.
        """
        c = Conn()
        mqtt = c.open()
        mqtt.transport.loseConnection()
        c.clock.advance(5.1)
        self.assertTrue(c.transport.aborted)
        c.lose()
        self.assertEqual(len(mqtt.lost), 1)

    def test_client_close_reaches_mqtt_once(self) -> None:
        """
        A client's close frame is answered with a close frame and reaches MQTT as one
        connection loss, with no timer left.
        """
        c = Conn()
        mqtt = c.open()
        c.send(client_frame(OP_CLOSE, struct.pack("!H", 1000)))
        self.assertEqual(c.frames()[-1][0], OP_CLOSE)
        c.lose()
        self.assertEqual(len(mqtt.lost), 1)
        self.assertEqual(c.clock.getDelayedCalls(), [])

    def test_abort(self) -> None:
        """``abortConnection`` from MQTT aborts the TCP connection at once."""
        c = Conn()
        mqtt = c.open()
        mqtt.transport.abortConnection()
        self.assertTrue(c.transport.aborted)

    def test_producer_is_registered_with_the_real_transport(self) -> None:
        """
        The MQTT protocol's streaming producer is registered with the TCP transport, and can be
        unregistered through the adapter.
        """
        c = Conn()
        mqtt = c.open()
        self.assertIs(c.transport.producer, mqtt)
        self.assertTrue(c.transport.streaming)
        mqtt.transport.unregisterProducer()
        self.assertIsNone(c.transport.producer)

    def test_pause_and_resume_reading(self) -> None:
        """
        Pausing and resuming through the adapter pauses and resumes reading from the socket.
        """
        c = Conn()
        mqtt = c.open()
        mqtt.transport.pauseProducing()
        self.assertEqual(c.transport.producerState, "paused")
        mqtt.transport.resumeProducing()
        self.assertEqual(c.transport.producerState, "producing")

    def test_peer_host_and_chain(self) -> None:
        """
        The adapter reports the socket's peer and host, exposes the TCP transport as
        ``.transport`` for the identity chain, has no CN and no certificate of its own, and
        passes ``TCP_NODELAY`` through; the MQTT factory gets the peer address.
        """
        c = Conn(peer=IPv6Address("TCP", "::1", 5555))
        mqtt = c.open()
        adapter = mqtt.transport
        self.assertEqual(peer_of(adapter), ("::1", 5555))
        self.assertEqual(adapter.getHost().port, 8080)
        self.assertIs(adapter.transport, c.transport)
        self.assertIsNone(adapter.xff_cn)
        self.assertIsNone(adapter.getPeerCertificate())
        adapter.setTcpNoDelay(True)
        self.assertTrue(adapter.getTcpNoDelay())
        self.assertEqual(mqtt.addr.port, 5555)

    def test_peer_certificate_comes_from_below(self) -> None:
        """
        The adapter's ``getPeerCertificate`` returns the certificate of the transport below
        it (the TLS layer on a wss listener).
        """
        c = Conn()
        c.transport.getPeerCertificate = lambda: "CERT"  # type: ignore[attr-defined]
        mqtt = c.open()
        self.assertEqual(mqtt.transport.getPeerCertificate(), "CERT")

    def test_shutdown_close_goes_through_mqtt(self) -> None:
        """
        Closing the WebSocket connection with a reason code (as at broker shutdown) lets the
        MQTT protocol close it, so it can send its DISCONNECT.
        """
        c = Conn()
        mqtt = c.open()
        calls = []
        mqtt.close = calls.append  # type: ignore[attr-defined]
        c.proto.close(0x8B)
        self.assertEqual(calls, [0x8B])

    def test_shutdown_close_before_open_drops(self) -> None:
        """Closing a connection whose upgrade is not complete simply drops it."""
        c = Conn()
        c.send(b"GET /mqtt HTTP/1.1\r\n")
        c.proto.close(0x8B)
        self.assertTrue(c.transport.disconnecting)

    def test_inner_factory_refusing_drops_the_connection(self) -> None:
        """
        When the MQTT factory refuses the connection (``buildProtocol`` returns ``None``) the
        upgrade is aborted.
        """
        inner = Inner()
        inner.buildProtocol = lambda addr: None  # type: ignore[method-assign]
        c = Conn(inner=inner)
        c.send(upgrade_request())
        self.assertTrue(c.transport.aborted)


class SettingsTests(SynchronousTestCase):

    def test_defaults(self) -> None:
        """
        By default the path is ``/mqtt``, compression is off, frames may be 256 MB,
        X-Forwarded-For is not used, and request lines and header values are limited to 8000
        and 4096 bytes.
        """
        s = WebSocketSettings.from_listener(ws_listener())
        self.assertEqual((s.path, s.compression, s.max_frame_size, s.xff, s.cn_header),
                         ("/mqtt", False, 268435456, False, None))
        self.assertEqual((s.max_request_line_length, s.max_header_value_length), (8000, 4096))

    def test_wss_listener(self) -> None:
        """
        wss listeners take the same WebSocket settings, from the protocol level too, and their
        factory is marked secure.
        """
        listener = ws_listener("listener.wss.certfile = x\nlistener.wss.websocket_path = /w\n"
                               "listener.wss.websocket_compression = on\n", kind="wss")
        s = WebSocketSettings.from_listener(listener)
        self.assertEqual((s.path, s.compression, s.xff), ("/w", True, False))
        f = websocket_factory(listener, Inner(), Clock())
        self.assertTrue(f.isSecure)

    def test_max_ws_frame_size_from_the_broker_config(self) -> None:
        """
        The broker's ``max_ws_frame_size`` caps both frame and message payloads, and WebSocket
        auto-ping is off (MQTT keep-alive does that job).
        """
        f = websocket_factory(ws_listener(), Inner(max_ws_frame_size=1234), Clock())
        self.assertIsInstance(f, MQTTWebSocketFactory)
        self.assertEqual(f.settings.max_frame_size, 1234)
        self.assertEqual(f.maxFramePayloadSize, 1234)
        self.assertEqual(f.maxMessagePayloadSize, 1234)
        self.assertEqual(f.autoPingInterval, 0)

    def test_inner_factory_is_reachable(self) -> None:
        """The WebSocket factory exposes the MQTT factory it wraps as ``wrappedFactory``."""
        inner = Inner()
        f = websocket_factory(ws_listener(), inner, Clock())
        self.assertIs(f.wrappedFactory, inner)

    def test_cn_needs_xff_support(self) -> None:
        """
        ``proxy_xff_use_cn_as_username`` has no effect without ``proxy_xff_support`` (and is
        flagged as ignored); with it, ``proxy_xff_cn_header`` names the CN header, kept
        lower-case for a case-insensitive match.
        """
        s = WebSocketSettings.from_listener(ws_listener(
            "listener.ws.w.proxy_xff_use_cn_as_username = on\n"))
        self.assertIsNone(s.cn_header)
        self.assertTrue(s.cn_header_ignored)
        s = WebSocketSettings.from_listener(ws_listener(
            "listener.ws.proxy_xff_support = on\n"
            "listener.ws.w.proxy_xff_use_cn_as_username = on\n"
            "listener.ws.w.proxy_xff_cn_header = X-Client-CN\n"))
        self.assertEqual(s.cn_header, "x-client-cn")

    def test_proxy_protocol_turns_xff_off(self) -> None:
        """
        On a listener with ``proxy_protocol = on`` X-Forwarded-For support is off and flagged
        as ignored: the PROXY header already gives the client's address.
        """
        s = WebSocketSettings.from_listener(ws_listener(
            "listener.ws.proxy_protocol = on\nlistener.ws.proxy_xff_support = on\n"
            "listener.ws.proxy_xff_trusted_intermediate = 127.0.0.1\n"))
        self.assertFalse(s.xff)
        self.assertTrue(s.xff_ignored)


def xff_settings(trusted: str = "10.0.0.1;10.0.0.2", cn: bool = False) -> WebSocketSettings:
    extra = "listener.ws.proxy_xff_support = on\n"
    if trusted:
        extra += f"listener.ws.proxy_xff_trusted_intermediate = {trusted}\n"
    if cn:
        extra += "listener.ws.w.proxy_xff_use_cn_as_username = on\n"
    return WebSocketSettings.from_listener(ws_listener(extra))


class ForwardedForTests(SynchronousTestCase):

    def test_off(self) -> None:
        """Without ``proxy_xff_support`` the X-Forwarded-For header is not used."""
        s = WebSocketSettings.from_listener(ws_listener())
        self.assertEqual(forwarded_for(s, "1.2.3.4", {"x-forwarded-for": "9.9.9.9"}),
                         (None, None))

    def test_first_entry_from_a_trusted_peer(self) -> None:
        """
        From a trusted intermediate (IPv4-mapped IPv6 form included) the first X-Forwarded-For
        entry, IPv4 or IPv6, is the client's address.
        """
        s = xff_settings()
        headers = {"x-forwarded-for": "203.0.113.7, 198.51.100.1, 10.0.0.9"}
        self.assertEqual(forwarded_for(s, "10.0.0.2", headers), ("203.0.113.7", None))
        self.assertEqual(forwarded_for(s, "::ffff:10.0.0.1", headers), ("203.0.113.7", None))
        self.assertEqual(forwarded_for(s, "10.0.0.1", {"x-forwarded-for": " 2001:db8::1 "}),
                         ("2001:db8::1", None))

    def test_untrusted_peer_is_refused(self) -> None:
        """
        A peer that is not a trusted intermediate is refused with 403, even when a trusted
        address appears in the header.
        """
        s = xff_settings()
        with self.assertRaises(Refused) as e:
            forwarded_for(s, "10.0.0.3", {"x-forwarded-for": "203.0.113.7"})
        self.assertEqual(e.exception.code, 403)
        # the peer itself, not an entry of the header, must be trusted
        with self.assertRaises(Refused):
            forwarded_for(s, "192.0.2.1", {"x-forwarded-for": "203.0.113.7, 10.0.0.1"})

    def test_empty_trusted_list_refuses_everyone(self) -> None:
        """
        With X-Forwarded-For support on and no trusted intermediate, every upgrade is refused
        with 403.
        """
        s = xff_settings(trusted="")
        with self.assertRaises(Refused) as e:
            forwarded_for(s, "127.0.0.1", {"x-forwarded-for": "203.0.113.7"})
        self.assertEqual(e.exception.code, 403)

    def test_missing_or_bad_header_is_refused(self) -> None:
        """
        From a trusted peer, a missing, empty, ``unknown`` or invalid X-Forwarded-For is
        refused with 400.
        """
        s = xff_settings()
        for headers in ({}, {"x-forwarded-for": ""}, {"x-forwarded-for": "unknown"},
                        {"x-forwarded-for": "1.2.3.4.5, 10.0.0.1"}):
            with self.assertRaises(Refused) as e:
                forwarded_for(s, "10.0.0.1", headers)
            self.assertEqual(e.exception.code, 400)

    def test_cn_header(self) -> None:
        """
        With ``proxy_xff_use_cn_as_username`` the CN header (``X-SSL-Client-CN`` by default) is
        returned with the address; a missing or blank CN is refused with 403.
        """
        s = xff_settings(cn=True)
        headers = {"x-forwarded-for": "203.0.113.7", "x-ssl-client-cn": "alice"}
        self.assertEqual(forwarded_for(s, "10.0.0.1", headers), ("203.0.113.7", "alice"))
        for value in (None, "", "  "):
            h = {"x-forwarded-for": "203.0.113.7"}
            if value is not None:
                h["x-ssl-client-cn"] = value
            with self.assertRaises(Refused) as e:
                forwarded_for(s, "10.0.0.1", h)
            self.assertEqual(e.exception.code, 403)

    def test_through_the_protocol(self) -> None:
        """
        Through a real upgrade, a trusted proxy's X-Forwarded-For address becomes the MQTT peer
        and its CN header the adapter's ``xff_cn``; an untrusted peer or a missing CN gets 403
        and no MQTT protocol.
        """
        extra = ("listener.ws.proxy_xff_support = on\n"
                 "listener.ws.proxy_xff_trusted_intermediate = 10.0.0.1\n"
                 "listener.ws.w.proxy_xff_use_cn_as_username = on\n")
        c = Conn(extra, peer=IPv4Address("TCP", "10.0.0.1", 41000))
        mqtt = c.open(headers=(("X-Forwarded-For", "203.0.113.7, 10.0.0.1"),
                               ("X-SSL-Client-CN", "alice")))
        self.assertEqual(peer_of(mqtt.transport), ("203.0.113.7", 41000))
        self.assertEqual(mqtt.addr.host, "203.0.113.7")
        self.assertEqual(mqtt.transport.xff_cn, "alice")
        # an untrusted peer
        c = Conn(extra, peer=IPv4Address("TCP", "10.0.0.5", 41000))
        c.send(upgrade_request(headers=(("X-Forwarded-For", "203.0.113.7"),
                                        ("X-SSL-Client-CN", "alice"))))
        self.assertEqual(c.response()[0], 403)
        self.assertEqual(c.inner.built, [])
        # no CN
        c = Conn(extra, peer=IPv4Address("TCP", "10.0.0.1", 41000))
        c.send(upgrade_request(headers=(("X-Forwarded-For", "203.0.113.7"),)))
        self.assertEqual(c.response()[0], 403)

    def test_xff_header_is_ignored_when_off(self) -> None:
        """When X-Forwarded-For support is off, the header does not change the peer."""
        c = Conn()
        mqtt = c.open(headers=(("X-Forwarded-For", "203.0.113.7"),))
        self.assertEqual(peer_of(mqtt.transport), ("127.0.0.1", 40000))
