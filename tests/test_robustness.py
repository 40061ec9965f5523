"""Bad clients close only their own connection; slow and silent clients."""
from __future__ import annotations

from twisted.internet.defer import Deferred, inlineCallbacks

from tests.support import (
    CONNACK_OK, BrokerTestCase, connect_packet, in_thread, publish_packet,
    subscribe_packet, utf8, varint, with_timeout,
)

ROBUST = """\
allow_anonymous = on
listener.tcp.default = 127.0.0.1:0
max_message_size = 1024
mqtt_connect_timeout = 200
"""

PINGREQ = b"\xc0\x00"
PINGRESP = b"\xd0\x00"


class BadPacketTests(BrokerTestCase):
    """Each bad packet closes that connection; a paho subscriber on the same
    broker keeps receiving, and nothing from the bad packet is routed."""

    def setUp(self):
        self.broker = self.start_broker(ROBUST)
        port = self.port_of(self.broker)
        self.watch = self.paho(port, "watch")
        self.beat = self.paho(port, "beat")
        self.beats = 0

        def setup():
            self.watch.connect()
            self.watch.subscribe("#", 1)
            self.beat.connect()

        return in_thread(setup)

    @inlineCallbacks
    def assert_alive(self):
        """The next message the subscriber gets is a fresh heartbeat: the
        broker still routes, and routed nothing else in between."""
        self.beats += 1
        payload = f"beat {self.beats}".encode()

        def beat():
            self.beat.publish("alive", payload, 1)
            msg = self.watch.get()
            return msg.topic, msg.payload

        got = yield in_thread(beat)
        self.assertEqual(got, ("alive", payload))
        self.assertFalse(self.watch.disconnected.is_set())

    @inlineCallbacks
    def assert_closed_after(self, data: bytes, connect_first: bool = True, name: str = "bad"):
        if connect_first:
            client = yield self.connected_raw_client(self.broker, name)
        else:
            client = yield self.raw_client(self.broker)
        yield self.assert_alive()
        client.send(data)
        yield client.when_closed(what=f"the broker to close the connection after {data[:20]!r}")
        yield self.assert_alive()
        return client

    def test_garbage_after_connect(self):
        """Bytes that are no MQTT packet after a successful CONNECT close that connection
        only; the broker keeps routing for the other clients and routes nothing of the
        garbage."""
        return self.assert_closed_after(b"\x00\x01\x02\x03 garbage \xff\xff")

    def test_garbage_instead_of_connect(self):
        """An HTTP request where a CONNECT should be closes that connection only; other
        clients keep being served."""
        return self.assert_closed_after(b"GET /mqtt HTTP/1.1\r\nHost: x\r\n\r\n",
                                        connect_first=False)

    def test_publish_with_qos_3(self):
        """A PUBLISH with QoS 3 (a malformed packet) closes that connection and is not
        routed; other clients keep being served."""
        body = utf8("qos3") + b"\x00\x01" + b"payload"
        return self.assert_closed_after(b"\x36" + varint(len(body)) + body)

    def test_remaining_length_of_five_bytes(self):
        """A remaining length encoded in more than four bytes (malformed) closes that
        connection; other clients keep being served."""
        return self.assert_closed_after(b"\x30\xff\xff\xff\xff\x01")

    def test_oversize_publish(self):
        """A PUBLISH larger than max_message_size (1024) closes that connection and is not
        routed; other clients keep being served."""
        # 1024 is the limit; this packet is about 2 KB and must not be routed.
        return self.assert_closed_after(publish_packet("big", b"x" * 2000, qos=1))

    @inlineCallbacks
    def test_publish_under_the_size_limit_is_routed(self):
        """A PUBLISH under max_message_size is routed in full and its sender stays
        connected."""
        client = yield self.connected_raw_client(self.broker, "ok")
        client.send(publish_packet("fits", b"y" * 900))

        def receive():
            msg = self.watch.get()
            return msg.topic, len(msg.payload)

        self.assertEqual((yield in_thread(receive)), ("fits", 900))
        self.assertFalse(client.is_closed)

    def test_second_connect(self):
        """A second CONNECT on a connection is a protocol violation: that connection is
        closed, others keep being served."""
        return self.assert_closed_after(connect_packet("again"))

    def test_publish_before_connect(self):
        """A PUBLISH before CONNECT closes the connection without routing it; other clients
        keep being served."""
        return self.assert_closed_after(publish_packet("early", b"x"), connect_first=False)

    def test_invalid_topic_with_wildcard(self):
        """A PUBLISH to a topic name containing a wildcard closes the connection without
        routing it; other clients keep being served."""
        return self.assert_closed_after(publish_packet("a/+/b", b"x"))

    @inlineCallbacks
    def test_many_bad_clients_at_once(self):
        """Several clients sending different malformed packets at once are each closed and
        their sessions removed, while the broker keeps routing for the well-behaved
        clients."""
        bad = [
            b"\x00\x00",
            b"\x36\x05\x00\x01t\x00\x01",
            b"\x30\xff\xff\xff\xff\x01",
            publish_packet("big", b"z" * 4000),
        ]
        clients = []
        for i, _data in enumerate(bad):
            client = yield self.connected_raw_client(self.broker, f"bad{i}")
            clients.append(client)
        for client, data in zip(clients, bad, strict=True):
            client.send(data)
        for client in clients:
            yield client.when_closed()
        yield self.assert_alive()
        self.assertEqual(sorted(k[1] for k in self.broker.broker.sessions), ["beat", "watch"])


class ConnectTimeoutTests(BrokerTestCase):

    def setUp(self):
        self.broker = self.start_broker(ROBUST)

    @inlineCallbacks
    def test_silent_client_is_dropped(self):
        """A client that sends nothing after opening a connection is closed without any
        answer after mqtt_connect_timeout, while a connected client is unaffected (the timer
        applies only before CONNECT)."""
        connected = yield self.connected_raw_client(self.broker, "talker")
        silent = yield self.raw_client(self.broker)
        # mqtt_connect_timeout is 200 ms; allow plenty for a loaded machine.
        yield silent.when_closed(timeout=5, what="the silent client to be dropped")
        self.assertEqual(silent.buffer, b"")
        # The timer only applies before CONNECT.
        self.assertFalse(connected.is_closed)
        connected.send(PINGREQ)
        self.assertEqual((yield connected.read(2, what="PINGRESP")), PINGRESP)


class SlowClientTests(BrokerTestCase):

    @inlineCallbacks
    def send_byte_by_byte(self, client, server_chunks, data: bytes):
        """Send one byte at a time, each only after the broker has read the previous one."""
        for byte in data:
            n = len(server_chunks.chunks)
            client.send(bytes([byte]))
            yield server_chunks.wait_for(n + 1)

    @inlineCallbacks
    def test_connect_byte_by_byte(self):
        """CONNECT, SUBSCRIBE and PUBLISH sent one byte per read (each byte read by the
        broker before the next is sent) are reassembled and answered normally: CONNACK,
        SUBACK and the message delivered."""
        broker = self.start_broker()
        limiter = broker.listeners["tcp.default"].limiter
        client = yield self.raw_client(broker)
        yield with_timeout(limiter.when(lambda n: n == 1), what="the broker to accept")
        chunks = ServerChunks(next(iter(limiter.protocols)))
        connect = connect_packet("slowpoke")
        yield self.send_byte_by_byte(client, chunks, connect)
        self.assertEqual(chunks.chunks, [bytes([b]) for b in connect])
        self.assertEqual((yield client.read(4, what="CONNACK")), CONNACK_OK)
        # And a SUBSCRIBE and a PUBLISH, also byte by byte.
        yield self.send_byte_by_byte(client, chunks, subscribe_packet("slow", 0, 3))
        self.assertEqual((yield client.read(5, what="SUBACK")), b"\x90\x03\x00\x03\x00")
        publish = publish_packet("slow", b"one byte at a time")
        yield self.send_byte_by_byte(client, chunks, publish)
        self.assertEqual((yield client.read(len(publish), what="PUBLISH")), publish)


class ServerChunks:
    """Records what the broker's side of one connection reads, chunk by chunk."""

    def __init__(self, server_protocol) -> None:
        self.chunks: list[bytes] = []
        self.waiters: list[tuple[int, Deferred]] = []
        original = server_protocol.dataReceived

        def spy(data: bytes) -> None:
            self.chunks.append(data)
            original(data)
            for n, d in list(self.waiters):
                if len(self.chunks) >= n:
                    self.waiters.remove((n, d))
                    d.callback(None)

        server_protocol.dataReceived = spy

    def wait_for(self, n: int) -> Deferred:
        d: Deferred = Deferred()
        if len(self.chunks) >= n:
            d.callback(None)
        else:
            self.waiters.append((n, d))
        return with_timeout(d, what=f"the broker to read chunk {n}")
