"""Listener settings: mountpoints, max_connections, allowed protocol versions,
unix sockets and IPv6."""
from __future__ import annotations

import os
import shutil
import socket
import tempfile

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial.unittest import SkipTest

from tests.support import (
    CONNACK_OK, MQTTv311, MQTTv5, BrokerTestCase, connect_packet, in_thread,
    payloads, publish_packet, quiet_period, stop_broker, subscribe_packet, with_timeout,
)

MOUNTPOINTS = """\
allow_anonymous = on
listener.tcp.a = 127.0.0.1:0
listener.tcp.a.mountpoint = site-a
listener.tcp.b = 127.0.0.1:0
listener.tcp.b.mountpoint = site-b/
"""


class MountpointTests(BrokerTestCase):

    def setUp(self):
        self.broker = self.start_broker(MOUNTPOINTS)
        self.a = self.port_of(self.broker, "tcp.a")
        self.b = self.port_of(self.broker, "tcp.b")

    @inlineCallbacks
    def test_listeners_do_not_see_each_others_messages(self):
        """Listeners with different mountpoints are separate namespaces: a subscriber to #
        gets only the messages published through its own listener, under topics without the
        mountpoint."""
        a_sub = self.paho(self.a, "a-sub")
        a_pub = self.paho(self.a, "a-pub")
        b_sub = self.paho(self.b, "b-sub")
        b_pub = self.paho(self.b, "b-pub")

        def scenario():
            for c in (a_sub, a_pub, b_sub, b_pub):
                c.connect()
            a_sub.subscribe("#", 1)
            b_sub.subscribe("#", 1)
            a_pub.publish("t/x", b"a-live", 1)
            b_pub.publish("t/x", b"b-live", 1)
            # Markers, published after both: a leaked message would be routed
            # (and arrive) before the marker of the same listener.
            a_pub.publish("t/marker", b"a-marker", 1)
            b_pub.publish("t/marker", b"b-marker", 1)
            got_a = [(m.topic, m.payload) for m in a_sub.get_many(2)]
            got_b = [(m.topic, m.payload) for m in b_sub.get_many(2)]
            return got_a, got_b

        got_a, got_b = yield in_thread(scenario)
        # Clients see their topics without the mountpoint.
        self.assertEqual(got_a, [("t/x", b"a-live"), ("t/marker", b"a-marker")])
        self.assertEqual(got_b, [("t/x", b"b-live"), ("t/marker", b"b-marker")])

    @inlineCallbacks
    def test_retained_messages_stay_in_their_mountpoint(self):
        """A retained message is kept per mountpoint: later subscribers on each listener get
        their own mountpoint's retained message for the same topic, not the other's."""
        a_pub = self.paho(self.a, "a-pub")
        b_pub = self.paho(self.b, "b-pub")
        a_late = self.paho(self.a, "a-late")
        a_late2 = self.paho(self.a, "a-late2")
        b_late = self.paho(self.b, "b-late")

        def scenario():
            a_pub.connect()
            b_pub.connect()
            a_pub.publish("r", b"a-ret", 1, retain=True)
            b_pub.publish("r", b"b-ret", 1, retain=True)
            results = []
            for late, pub, marker in ((a_late, a_pub, b"a-marker"),
                                      (a_late2, a_pub, b"a-marker2"),
                                      (b_late, b_pub, b"b-marker")):
                late.connect()
                late.subscribe("#", 1)
                # Retained messages are sent at subscribe time, before this marker.
                pub.publish("m", marker, 1)
                results.append([(m.payload, m.retain) for m in late.get_many(2)])
            return results

        a1, a2, b1 = yield in_thread(scenario)
        self.assertEqual(a1, [(b"a-ret", True), (b"a-marker", False)])
        self.assertEqual(a2, [(b"a-ret", True), (b"a-marker2", False)])
        self.assertEqual(b1, [(b"b-ret", True), (b"b-marker", False)])

    @inlineCallbacks
    def test_same_client_id_in_two_mountpoints_is_two_sessions(self):
        """Sessions are keyed by (mountpoint, client id): no takeover across listeners."""
        on_a = self.paho(self.a, "same")
        on_b = self.paho(self.b, "same")

        def scenario():
            on_a.connect()
            on_b.connect()
            on_a.subscribe("x", 1)
            on_a.publish("x", b"a still connected", 1)
            return on_a.get().payload, on_a.disconnected.is_set()

        payload, dropped = yield in_thread(scenario)
        self.assertEqual((payload, dropped), (b"a still connected", False))
        sessions = self.broker.broker.sessions
        self.assertIn(("site-a", "same"), sessions)
        self.assertIn(("site-b/", "same"), sessions)  # kept as written, as in VerneMQ
        self.assertIsNotNone(sessions[("site-a", "same")].conn)
        self.assertIsNotNone(sessions[("site-b/", "same")].conn)


class MaxConnectionsTests(BrokerTestCase):

    @inlineCallbacks
    def test_third_client_waits_for_a_free_slot(self):
        """With max_connections = 2 a third client is not accepted (its CONNECT is not
        answered and it is not closed) until one of the two disconnects; then it gets its
        CONNACK. Nothing is refused and at most two were open."""
        broker = self.start_broker(
            "allow_anonymous = on\n"
            "listener.tcp.default = 127.0.0.1:0\n"
            "listener.tcp.default.max_connections = 2\n")
        limiter = broker.listeners["tcp.default"].limiter
        c1 = yield self.connected_raw_client(broker, "c1")
        yield self.connected_raw_client(broker, "c2")
        # The kernel completes the TCP handshake (backlog), but the broker does
        # not accept the socket, so the CONNECT is not read.
        c3 = yield self.raw_client(broker)
        c3.send(connect_packet("c3"))
        yield quiet_period(0.3)
        self.assertEqual(c3.buffer, b"")
        self.assertFalse(c3.is_closed, "the broker closed the third client")
        self.assertEqual(limiter.count, 2)
        yield c1.close()
        connack = yield c3.read(4, what="CONNACK after a slot was freed")
        self.assertEqual(connack, CONNACK_OK)
        self.assertEqual(limiter.high_water, 2)
        self.assertEqual(limiter.refused, 0)

    @inlineCallbacks
    def test_burst_never_exceeds_the_cap(self):
        """A burst of ten clients against max_connections = 3 never has more than three
        served at once; each one closed lets another in, until all ten have been
        served, none refused."""
        cap, total = 3, 10
        broker = self.start_broker(
            "allow_anonymous = on\n"
            "listener.tcp.default = 127.0.0.1:0\n"
            f"listener.tcp.default.max_connections = {cap}\n")
        limiter = broker.listeners["tcp.default"].limiter
        clients = yield gather([self.raw_client(broker) for _ in range(total)])
        served: list = []
        closed_by_us: list = []
        waiters: list[tuple[int, Deferred]] = []
        peaks: list[int] = []

        def on_connack(data, client):
            self.assertEqual(data, CONNACK_OK)
            served.append(client)
            peaks.append(len(served) - len(closed_by_us))
            for n, d in list(waiters):
                if len(served) >= n:
                    waiters.remove((n, d))
                    d.callback(None)

        def served_count(n):
            d = Deferred()
            if len(served) >= n:
                d.callback(None)
            else:
                waiters.append((n, d))
            return with_timeout(d, what=f"{n} clients to be served")

        def on_failure(failure):
            # e.g. the broker accepted a client past the cap and closed it:
            # fail the test now rather than time out.
            for n, d in list(waiters):
                waiters.remove((n, d))
                d.errback(failure)
            return failure

        reads = []
        for i, client in enumerate(clients):
            client.send(connect_packet(f"burst{i}"))
            reads.append(client.read(4, timeout=30, what="CONNACK").addCallbacks(
                on_connack, on_failure, callbackArgs=(client,)))

        yield served_count(cap)
        yield quiet_period(0.3)
        self.assertEqual(len(served), cap, "more clients served than max_connections")
        for n in range(cap + 1, total + 1):
            victim = next(c for c in served if c not in closed_by_us)
            closed_by_us.append(victim)
            yield victim.close()
            yield served_count(n)
        yield gather(reads)
        self.assertEqual(len(served), total)
        self.assertLessEqual(max(peaks), cap)
        self.assertEqual(limiter.high_water, cap)
        self.assertEqual(limiter.refused, 0)


class ZeroMaxConnectionsTests(BrokerTestCase):

    @inlineCallbacks
    def test_max_connections_zero_accepts_nobody(self):
        """Like ranch: no connection is accepted (the client waits in the
        backlog); the listener is paused rather than spinning on a readable
        socket it never accepts from."""
        from twisted.internet import reactor
        broker = self.start_broker(
            "allow_anonymous = on\n"
            "listener.tcp.default = 127.0.0.1:0\n"
            "listener.tcp.default.max_connections = 0\n")
        listener = broker.listeners["tcp.default"]
        client = yield self.raw_client(broker)
        client.send(connect_packet("nobody"))
        yield quiet_period(0.3)
        self.assertEqual((client.buffer, client.is_closed), (b"", False))
        self.assertEqual(listener.limiter.count, 0)
        self.assertTrue(listener.limiter.paused)
        self.assertNotIn(listener.port, reactor.getReaders())


def gather(ds):
    from twisted.internet.defer import gatherResults
    return gatherResults(ds, consumeErrors=True).addErrback(lambda f: f.value.subFailure)


class ProtocolVersionTests(BrokerTestCase):

    def setUp(self):
        self.broker = self.start_broker(
            "allow_anonymous = on\n"
            "listener.tcp.default = 127.0.0.1:0\n"
            "listener.tcp.default.allowed_protocol_versions = 3,4\n"
            "listener.tcp.only311 = 127.0.0.1:0\n"
            "listener.tcp.only311.allowed_protocol_versions = 4\n")

    @inlineCallbacks
    def test_default_refuses_mqtt5_raw(self):
        """A listener with allowed_protocol_versions = 3,4 refuses an MQTT 5.0
        CONNECT with an unsupported-version CONNACK (5.0 reason 0x84 or 3.x code 1), closes
        the connection and keeps no session."""
        client = yield self.raw_client(self.broker)
        client.send(connect_packet("v5", level=5))
        connack = yield client.read(2, what="CONNACK")
        connack += yield client.read(connack[1], what="CONNACK")
        # Either a 5.0 CONNACK (reason 0x84, no properties) or, as a server
        # that does not speak 5.0, the 3.x CONNACK 0x01 (which a 5.0 client
        # reads as 0x84).
        self.assertIn(connack, (b"\x20\x03\x00\x84\x00", b"\x20\x02\x00\x01"))
        yield client.when_closed()
        self.assertEqual(client.buffer, b"")
        self.assertEqual(self.broker.broker.sessions, {})

    @inlineCallbacks
    def test_default_refuses_mqtt5_paho(self):
        """A paho MQTT 5.0 client connecting to a listener that does not allow version 5 is
        refused with reason 0x84 (Unsupported Protocol Version)."""
        client = self.paho(self.port_of(self.broker), "paho5", MQTTv5)

        def scenario():
            reason, _ = client.connect(expect_success=False)
            client.wait_disconnected()
            return reason

        reason = yield in_thread(scenario)
        self.assertEqual(reason, 0x84)

    @inlineCallbacks
    def test_listener_limited_to_311_refuses_31(self):
        """A listener with allowed_protocol_versions = 4 refuses an MQTT 3.1 CONNECT with
        CONNACK 1 (unacceptable protocol version) and closes the connection."""
        client = yield self.raw_client(self.broker, "tcp.only311")
        client.send(connect_packet("old", level=3))
        connack = yield client.read(4, what="CONNACK")
        self.assertEqual(connack, b"\x20\x02\x00\x01")
        yield client.when_closed()

    @inlineCallbacks
    def test_listener_limited_to_311_accepts_311(self):
        """A listener with allowed_protocol_versions = 4 accepts an MQTT 3.1.1 client."""
        yield self.connected_raw_client(self.broker, "new", "tcp.only311")

    @inlineCallbacks
    def test_unknown_protocol_level_refused(self):
        """A CONNECT with an unknown protocol level (6) is refused with CONNACK 1 and the
        connection closed."""
        client = yield self.raw_client(self.broker)
        client.send(connect_packet("v6", level=6))
        connack = yield client.read(4, what="CONNACK")
        self.assertEqual(connack, b"\x20\x02\x00\x01")
        yield client.when_closed()


class UnixSocketTests(BrokerTestCase):

    @inlineCallbacks
    def test_unix_listener_serves_raw_client(self):
        """A listener on local:PATH:0 serves MQTT over a unix socket (subscribe, publish,
        get the message back) and removes the socket file when the broker stops."""
        tmp = tempfile.mkdtemp(prefix="vmqtw-")  # short: sun_path is 108 bytes
        self.addCleanup(shutil.rmtree, tmp, True)
        path = os.path.join(tmp, "broker.sock")
        broker = self.start_broker(
            "allow_anonymous = on\n"
            f"listener.tcp.local = local:{path}:0\n")
        self.assertEqual(broker.listeners["tcp.local"].address(), (f"local:{path}", 0))
        self.assertTrue(os.path.exists(path))
        client = yield self.connected_raw_client(broker, "unix", "tcp.local")
        client.send(subscribe_packet("u/t", 0, packet_id=7))
        suback = yield client.read(5, what="SUBACK")
        self.assertEqual(suback, b"\x90\x03\x00\x07\x00")
        client.send(publish_packet("u/t", b"over a unix socket"))
        echoed = yield client.read(len(publish_packet("u/t", b"over a unix socket")),
                                   what="PUBLISH")
        self.assertEqual(echoed, publish_packet("u/t", b"over a unix socket"))
        yield client.close()
        yield stop_broker(broker)
        self.assertFalse(os.path.exists(path), "the socket file was left behind")


class IPv6Tests(BrokerTestCase):

    def setUp(self):
        try:
            s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        except OSError as e:
            raise SkipTest(f"no IPv6 sockets on this machine: {e}") from e
        try:
            s.bind(("::1", 0))
        except OSError as e:
            raise SkipTest(f"cannot bind the IPv6 loopback ::1: {e}") from e
        finally:
            s.close()
        self.broker = self.start_broker(
            "allow_anonymous = on\n"
            "listener.tcp.v6 = ::1:0\n")

    @inlineCallbacks
    def test_ipv6_loopback_listener(self):
        """A listener on ::1:0 serves raw and paho clients over IPv6: CONNACK, and a QoS 2
        message round-trips."""
        host, port = self.broker.listeners["tcp.v6"].address()
        self.assertEqual(host, "::1")
        client = yield self.raw_client(host="::1", port=port)
        client.send(connect_packet("raw6"))
        self.assertEqual((yield client.read(4, what="CONNACK")), CONNACK_OK)
        sub = self.paho(port, "sub6", MQTTv311, host="::1")
        pub = self.paho(port, "pub6", MQTTv311, host="::1")

        def scenario():
            sub.connect()
            sub.subscribe("six", 2)
            pub.connect()
            pub.publish("six", b"over ipv6", 2)
            return payloads([sub.get()])

        self.assertEqual((yield in_thread(scenario)), [b"over ipv6"])



class EndpointDescriptionTests(BrokerTestCase):
    """Listener addresses written as Twisted endpoint descriptions."""

    @inlineCallbacks
    def test_tcp_description_serves_and_keeps_max_connections(self):
        """listener.tcp.x = tcp:0:interface=127.0.0.1 serves clients, and its
        max_connections holds exactly as for an IP:PORT address: the third
        client waits until a slot frees."""
        broker = self.start_broker(
            "allow_anonymous = on\n"
            "listener.tcp.default = tcp:0:interface=127.0.0.1\n"
            "listener.tcp.default.max_connections = 2\n")
        listener = broker.listeners["tcp.default"]
        self.assertEqual(listener.address()[0], "127.0.0.1")
        c1 = yield self.connected_raw_client(broker, "d1")
        yield self.connected_raw_client(broker, "d2")
        c3 = yield self.raw_client(broker)
        c3.send(connect_packet("d3"))
        yield quiet_period(0.3)
        self.assertEqual((c3.buffer, c3.is_closed), (b"", False))
        self.assertTrue(listener.limiter.paused)
        yield c1.close()
        self.assertEqual((yield c3.read(4, what="CONNACK after a slot was freed")), CONNACK_OK)
        self.assertEqual((listener.limiter.high_water, listener.limiter.refused), (2, 0))

    @inlineCallbacks
    def test_unix_description_serves_and_cleans_up(self):
        """listener.tcp.x = unix:PATH serves clients on the socket and removes
        the socket file when the broker stops."""
        tmp = tempfile.mkdtemp(prefix="vmqtw-")
        self.addCleanup(shutil.rmtree, tmp, True)
        path = os.path.join(tmp, "d.sock")
        broker = self.start_broker(f"allow_anonymous = on\nlistener.tcp.u = unix:{path}\n")
        self.assertEqual(broker.listeners["tcp.u"].address(), (f"local:{path}", 0))
        client = yield self.connected_raw_client(broker, "unix-desc", "tcp.u")
        yield client.close()
        yield stop_broker(broker)
        self.assertFalse(os.path.exists(path), "the socket file was left behind")

    @inlineCallbacks
    def test_proxy_description_needs_the_header(self):
        """listener.tcp.x = proxy:tcp:... is a PROXY listener: the client
        address comes from the header, and a client without one is closed."""
        broker = self.start_broker(
            "allow_anonymous = on\n"
            "listener.tcp.default = proxy:tcp:0:interface=127.0.0.1\n")
        self.assertEqual(type(broker.listeners["tcp.default"].layers[0]).__name__,
                         "ProxyProtocolFactory")
        client = yield self.raw_client(broker)
        client.send(b"PROXY TCP4 198.51.100.9 127.0.0.1 4242 1883\r\n" + connect_packet("pd"))
        self.assertEqual((yield client.read(4, what="CONNACK")), CONNACK_OK)
        self.assertEqual(broker.broker.sessions[("", "pd")].peer, ("198.51.100.9", 4242))
        bypass = yield self.raw_client(broker)
        bypass.send(connect_packet("bypass"))
        yield bypass.when_closed()
        self.assertEqual(bypass.buffer, b"")

    def test_systemd_description_without_socket_activation(self):
        """Outside socket activation a systemd: listener fails to start with
        FILE:LINE and a reason, and nothing is left listening."""
        from twisted.internet import reactor

        from vmqtw.config import load
        from vmqtw.service import BrokerService, StartupError
        config = self.write_config("allow_anonymous = on\n"
                                   "listener.tcp.first = 127.0.0.1:0\n"
                                   "listener.tcp.sd = systemd:domain=INET:index=0\n")
        service = BrokerService(load(config), reactor)
        e = self.assertRaises(StartupError, service.privilegedStartService)
        self.assertTrue(str(e).startswith(
            f"{config}:3: listener.tcp.sd: cannot listen on systemd:domain=INET:index=0: "
            "no socket inherited from systemd"), str(e))
        self.assertIsNone(service.listeners["tcp.first"].port)
