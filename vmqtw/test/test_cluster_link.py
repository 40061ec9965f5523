"""The vmq link over Twisted: handshake, delivery, batching, buffering, reconnect.

Timing rules (flush per turn, threshold, back-pressure, handshake timeout) are tested
on StringTransport + Clock; delivery, refusal and reconnect over real loopback TCP."""
from __future__ import annotations

import socket
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from vmqtw.cluster import link as link_module
from vmqtw.cluster.codec import (
    BATCH, BatchEncoder, FrameDecoder, Msg, decode_batch, encode_frame, encode_record,
)
from vmqtw.cluster.handshake import ClientHandshake, ServerHandshake
from vmqtw.cluster.link import LinkServerFactory, LinkServerProtocol, PeerLink
from vmqtw.logs import Logger

TIMEOUT = 10.0


def msg(i: int, size: int = 10) -> Msg:
    return Msg("", f"t/{i}", b"x" * size, i % 3)


def capture_logs(case: Any, cls: Any) -> list[dict]:
    events: list[dict] = []
    case.patch(cls, "log", Logger(observer=events.append))
    return events


def texts(events: list[dict]) -> list[str]:
    from twisted.logger import formatEvent
    return [formatEvent(e) for e in events]


# ---------------------------------------------------------------------------
# In memory.

class FakePeer:
    """Plays the server side of the handshake by hand for a client protocol on a
    StringTransport."""

    def __init__(self, cookie: str = "k") -> None:
        self.hs = ServerHandshake("peer", cookie)
        self.decoder = FrameDecoder()

    def complete(self, proto: Any, transport: StringTransport) -> None:
        (hello,) = self.decoder.feed(transport.value())
        transport.clear()
        proto.dataReceived(self.hs.receive(*hello))
        (response,) = self.decoder.feed(transport.value())
        transport.clear()
        proto.dataReceived(self.hs.receive(*response))

    def records(self, transport: StringTransport) -> list[Any]:
        out = []
        for ftype, body in self.decoder.feed(transport.value()):
            assert ftype == BATCH
            out.append(decode_batch(body))
        transport.clear()
        return out


class MemoryEndpoint:
    """A client endpoint whose connections are StringTransports."""

    def __init__(self) -> None:
        self.connections: list[tuple[Any, StringTransport]] = []

    def connect(self, factory: Any) -> Deferred:
        proto = factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        self.connections.append((proto, transport))
        return succeed(proto)


class PeerLinkTimingTests(SynchronousTestCase):

    def connect(self, **kwargs: Any) -> tuple[PeerLink, Any, StringTransport, Clock]:
        clock = Clock()
        endpoint = MemoryEndpoint()
        link = PeerLink("me", "peer", endpoint, "k", reactor=clock, **kwargs)
        link.start()
        proto, transport = endpoint.connections[-1]
        self.assertFalse(link.connected)
        peer = FakePeer()
        peer.complete(proto, transport)
        self.assertTrue(link.connected)
        self.peer = peer
        return link, proto, transport, clock

    def test_flushed_once_per_reactor_turn(self) -> None:
        """Records sent during one reactor turn are written together as one frame
        when the turn ends, not one write per record."""
        link, proto, transport, clock = self.connect()
        for i in range(5):
            self.assertTrue(link.send(msg(i)))
        self.assertEqual(transport.value(), b"")
        clock.advance(0)
        self.assertEqual(self.peer.records(transport), [[msg(i) for i in range(5)]])
        self.assertEqual((link.records_sent, link.pending_bytes), (5, 0))

    def test_flush_threshold_writes_at_once(self) -> None:
        """Reaching outgoing_clustering_flush_threshold writes without waiting for the
        end of the turn."""
        size = len(encode_record(msg(0, 100)))
        link, proto, transport, clock = self.connect(flush_threshold=size * 3)
        link.send(msg(0, 100))
        link.send(msg(1, 100))
        self.assertEqual(transport.value(), b"")
        link.send(msg(2, 100))
        self.assertEqual(self.peer.records(transport), [[msg(i, 100) for i in range(3)]])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_paused_transport_holds_records_until_resumed(self) -> None:
        """While TCP back-pressure pauses the link, records are buffered; on resume
        they are written."""
        link, proto, transport, clock = self.connect()
        self.assertIs(transport.producer, proto)
        proto.pauseProducing()
        link.send(msg(1))
        clock.advance(0)
        self.assertEqual(transport.value(), b"")
        self.assertGreater(link.pending_bytes, 0)
        proto.resumeProducing()
        self.assertEqual(self.peer.records(transport), [[msg(1)]])

    def test_buffer_bound_drops_and_counts(self) -> None:
        """Beyond outgoing_clustering_buffer_size records are dropped and counted."""
        size = len(encode_record(msg(0)))
        link, proto, transport, clock = self.connect(buffer_size=5 + size * 2)
        proto.pauseProducing()
        self.assertEqual([link.send(msg(i)) for i in range(4)], [True, True, False, False])
        self.assertEqual((link.records_dropped, link.bytes_dropped), (2, 2 * size))
        proto.resumeProducing()
        self.assertEqual(self.peer.records(transport), [[msg(0), msg(1)]])

    def test_handshake_timeout_aborts(self) -> None:
        """A server that never answers the HELLO is abandoned after the timeout."""
        clock = Clock()
        endpoint = MemoryEndpoint()
        link = PeerLink("me", "peer", endpoint, "k", reactor=clock, handshake_timeout=2.0,
                        retry_policy=lambda n: 7.0)
        link.start()
        proto, transport = endpoint.connections[-1]
        clock.advance(2.0)
        self.assertTrue(transport.disconnecting or transport.disconnected)
        self.assertFalse(link.connected)
        # The next attempt follows the retry policy.
        clock.advance(6.9)
        self.assertEqual(len(endpoint.connections), 1)
        clock.advance(0.1)
        self.assertEqual(len(endpoint.connections), 2)

    def test_other_node_at_the_address_is_not_used(self) -> None:
        """A link that reaches a node with another name than the peer it is for (a
        stale address) does not become connected and closes."""
        clock = Clock()
        endpoint = MemoryEndpoint()
        link = PeerLink("me", "node-x", endpoint, "k", reactor=clock)
        capture_logs(self, link_module.LinkClientProtocol)
        link.start()
        proto, transport = endpoint.connections[-1]
        FakePeer().complete(proto, transport)    # the fake server is called "peer"
        self.assertFalse(link.connected)
        self.assertTrue(transport.disconnecting or transport.disconnected)

    def test_records_from_the_server_close_the_client(self) -> None:
        """The server sends nothing after ACCEPT; anything else aborts the connection."""
        link, proto, transport, clock = self.connect()
        self.capture = capture_logs(self, link_module.LinkClientProtocol)
        proto.dataReceived(encode_frame(BATCH, b""))
        self.assertTrue(transport.disconnected or transport.disconnecting)


class ServerProtocolTests(SynchronousTestCase):

    def setUp(self) -> None:
        self.clock = Clock()
        self.got: list[tuple[str, list]] = []
        self.factory = LinkServerFactory("srv", "k", lambda n, r: self.got.append((n, r)),
                                         reactor=self.clock, handshake_timeout=3.0,
                                         max_frame_size=10_000)
        self.events = capture_logs(self, LinkServerProtocol)
        self.proto = self.factory.buildProtocol(None)
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)

    def handshake(self, cookie: str = "k") -> ClientHandshake:
        client = ClientHandshake("node-a", cookie)
        dec = FrameDecoder()
        self.proto.dataReceived(client.start())
        (challenge,) = dec.feed(self.transport.value())
        self.transport.clear()
        self.proto.dataReceived(client.receive(*challenge))
        for frame in dec.feed(self.transport.value()):
            try:
                client.receive(*frame)
            except Exception:
                pass
        return client

    def test_records_delivered_with_the_peer_name(self) -> None:
        """After the handshake each batch reaches deliver() with the sender's name."""
        self.handshake()
        self.assertEqual(self.proto.peer_name, "node-a")
        e = BatchEncoder()
        e.add(msg(1))
        e.add(msg(2))
        self.proto.dataReceived(b"".join(e.take()))
        self.assertEqual(self.got, [("node-a", [msg(1), msg(2)])])
        self.assertEqual(self.factory.records_received, 2)

    def test_wrong_cookie_refused_and_logged(self) -> None:
        """A node with another cookie gets REFUSE, the connection closes, nothing is
        delivered, and a warning names the node."""
        self.handshake(cookie="other")
        self.assertFalse(self.transport.connected and not self.transport.disconnecting)
        self.assertEqual(self.factory.refused, 1)
        self.assertTrue(any("node-a sent a wrong cookie" in t for t in texts(self.events)))
        self.proto.dataReceived(encode_frame(BATCH, encode_record(msg(1))))
        self.assertEqual(self.got, [])

    def test_handshake_timeout(self) -> None:
        """A connection that does not complete the handshake in time is aborted."""
        self.clock.advance(3.0)
        self.assertTrue(self.transport.disconnected)
        self.assertTrue(any("no handshake" in t for t in texts(self.events)))

    def test_garbage_aborts(self) -> None:
        """Bytes that are not a vmq link HELLO abort the connection and are logged."""
        self.proto.dataReceived(b"GET / HTTP/1.1\r\n\r\n")
        self.assertTrue(self.transport.disconnected)
        self.assertEqual(self.got, [])

    def test_oversize_frame_after_handshake(self) -> None:
        """A frame above incoming_clustering_buffer_size aborts the link."""
        self.handshake()
        self.proto.dataReceived(b"\x00\x01\x00\x00")
        self.assertTrue(self.transport.disconnected)

    def test_pause_and_resume_reading(self) -> None:
        """pause()/resume() on the factory stop and restart reading on every
        established link, including links established while paused."""
        self.handshake()
        self.factory.pause()
        self.assertEqual(self.transport.producerState, "paused")
        self.factory.resume()
        self.assertEqual(self.transport.producerState, "producing")
        self.factory.pause()
        other = self.factory.buildProtocol(None)
        t2 = StringTransport()
        other.makeConnection(t2)
        self.proto, self.transport = other, t2
        self.handshake()
        self.assertEqual(t2.producerState, "paused")

    def test_deliver_errors_do_not_kill_the_link(self) -> None:
        """An exception in deliver() is logged; the link keeps delivering."""
        calls: list[Any] = []

        def deliver(node: str, records: list) -> None:
            calls.append(records)
            if len(calls) == 1:
                raise RuntimeError("boom")
        self.factory.deliver = deliver
        self.handshake()
        self.proto.dataReceived(encode_frame(BATCH, encode_record(msg(1))))
        self.proto.dataReceived(encode_frame(BATCH, encode_record(msg(2))))
        self.assertEqual(calls, [[msg(1)], [msg(2)]])
        self.assertFalse(self.transport.disconnecting)
        self.flushLoggedErrors(RuntimeError)


# ---------------------------------------------------------------------------
# Real loopback TCP.

def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def drop_connections(factory: LinkServerFactory) -> None:
    """Abort every incoming link of ``factory``."""
    for p in list(factory.protocols):
        p.transport.abortConnection()


class Collector:
    def __init__(self) -> None:
        self.records: list[Any] = []
        self.waiting: list[tuple[int, Deferred]] = []

    def __call__(self, node: str, records: list) -> None:
        self.records.extend(records)
        for n, d in list(self.waiting):
            if len(self.records) >= n:
                self.waiting.remove((n, d))
                d.callback(None)

    def wait_for(self, n: int) -> Deferred:
        d: Deferred = Deferred()
        if len(self.records) >= n:
            d.callback(None)
        else:
            self.waiting.append((n, d))
        return d.addTimeout(TIMEOUT, reactor)


def until(predicate: Any, what: str) -> Deferred:
    """Poll ``predicate`` every 10 ms, at most TIMEOUT seconds."""
    @inlineCallbacks
    def poll() -> Any:
        for _ in range(int(TIMEOUT / 0.01)):
            if predicate():
                return
            yield deferLater(reactor, 0.01, lambda: None)
        raise AssertionError(f"timed out waiting for {what}")
    return poll()


class LoopbackTests(TestCase):

    timeout = 30

    @inlineCallbacks
    def listen(self, cookie: str = "k", port: int = 0) -> Any:
        self.collector = Collector()
        factory = LinkServerFactory("node-b", cookie, self.collector)
        listening = yield TCP4ServerEndpoint(reactor, port, interface="127.0.0.1").listen(factory)
        self.addCleanup(listening.stopListening)
        self.addCleanup(drop_connections, factory)
        return factory, listening.getHost().port

    def peer_link(self, port: int, cookie: str = "k", **kwargs: Any) -> PeerLink:
        link = PeerLink("node-a", "node-b", TCP4ClientEndpoint(reactor, "127.0.0.1", port),
                        cookie, retry_policy=lambda n: 0.05, **kwargs)
        link.start()
        self.addCleanup(link.stop)
        return link

    @inlineCallbacks
    def test_records_cross_the_link_in_order(self) -> None:
        """1000 records sent over loopback TCP arrive in order at the other node."""
        factory, port = yield self.listen()
        link = self.peer_link(port)
        sent = [msg(i, 50) for i in range(1000)]
        for r in sent:
            link.send(r)
        yield self.collector.wait_for(1000)
        self.assertEqual(self.collector.records, sent)
        self.assertEqual(link.records_dropped, 0)

    @inlineCallbacks
    def test_wrong_cookie_refused_over_tcp(self) -> None:
        """A peer with a different cookie never gets a link: the server refuses and
        logs it, and nothing is delivered."""
        events = capture_logs(self, LinkServerProtocol)
        factory, port = yield self.listen(cookie="right")
        link = self.peer_link(port, cookie="wrong")
        link.send(msg(1))
        yield until(lambda: factory.refused >= 1, "a refusal")
        self.assertFalse(link.connected)
        self.assertEqual(self.collector.records, [])
        self.assertTrue(any("wrong cookie" in t for t in texts(events)))

    @inlineCallbacks
    def test_peer_away_buffers_drops_then_reconnect_delivers(self) -> None:
        """While the peer is down records are buffered up to the limit and the rest
        dropped and counted; when the peer comes up the buffered ones are delivered."""
        port = free_port()
        size = len(encode_record(msg(0)))
        link = self.peer_link(port, buffer_size=10 * size + 5)
        results = [link.send(msg(i)) for i in range(15)]
        self.assertEqual(results, [True] * 10 + [False] * 5)
        self.assertEqual(link.records_dropped, 5)
        yield until(lambda: link.failed_attempts >= 2, "two failed connection attempts")
        self.assertFalse(link.connected)
        yield self.listen(port=port)
        yield self.collector.wait_for(10)
        self.assertEqual(self.collector.records, [msg(i) for i in range(10)])
        link.send(msg(99))
        yield self.collector.wait_for(11)
        self.assertEqual(self.collector.records[-1], msg(99))

    @inlineCallbacks
    def test_link_reconnects_after_connection_loss(self) -> None:
        """When the established connection drops, the link reconnects by itself and
        later records arrive."""
        factory, port = yield self.listen()
        link = self.peer_link(port)
        link.send(msg(1))
        yield self.collector.wait_for(1)
        drop_connections(factory)
        yield until(lambda: not link.connected, "the link to notice the loss")
        yield until(lambda: link.connected, "the link to reconnect")
        link.send(msg(2))
        yield self.collector.wait_for(2)
        self.assertEqual(self.collector.records, [msg(1), msg(2)])


class TLSLoopbackTests(TestCase):
    """``listener.vmqs``: the same protocols over TLS endpoints."""

    timeout = 30

    @inlineCallbacks
    def test_records_cross_a_tls_link(self) -> Any:
        """With TLS endpoints on both sides (server certificate checked by the
        connecting node) the handshake succeeds and records arrive in order."""
        import trustme
        from twisted.internet.endpoints import SSL4ServerEndpoint, wrapClientTLS
        from twisted.internet.ssl import Certificate, PrivateCertificate, optionsForClientTLS
        ca = trustme.CA()
        leaf = ca.issue_cert("localhost")
        server_options = PrivateCertificate.loadPEM(
            leaf.private_key_and_cert_chain_pem.bytes()).options()
        collector = Collector()
        factory = LinkServerFactory("node-b", "k", collector)
        listening = yield SSL4ServerEndpoint(reactor, 0, server_options,
                                             interface="127.0.0.1").listen(factory)
        self.addCleanup(listening.stopListening)
        self.addCleanup(drop_connections, factory)
        client_options = optionsForClientTLS("localhost", Certificate.loadPEM(ca.cert_pem.bytes()))
        endpoint = wrapClientTLS(client_options, TCP4ClientEndpoint(
            reactor, "127.0.0.1", listening.getHost().port))
        link = PeerLink("node-a", "node-b", endpoint, "k", retry_policy=lambda n: 0.05)
        link.start()
        self.addCleanup(link.stop)
        sent = [msg(i, 200) for i in range(500)]
        for r in sent:
            link.send(r)
        yield collector.wait_for(500)
        self.assertEqual(collector.records, sent)
