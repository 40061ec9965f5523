"""PROXY protocol listeners, end to end.

- ``ProxyListenerTests``: raw sockets that write PROXY headers by hand to a
  running broker (no haproxy needed).
- ``HAProxyTests``: a real haproxy (``tests/proxy_support.py``) between paho
  clients and the broker: ``send-proxy`` (v1), ``send-proxy-v2`` (with
  CRC32C and unique-id TLVs), TLS termination with client certificates and
  ``send-proxy-v2-ssl-cn``, health checks (v2 LOCAL), and WebSocket
  listeners.  Skipped only if haproxy is not installed.

The broker's view of a client is read from its session (``session.peer``,
``session.conn.transport.proxy_info``) and from an auth plugin that records
every RegisterRequest.
"""
from __future__ import annotations

import os
import shutil
import socket
import struct
import tempfile
from typing import Any

import paho.mqtt.client as mqtt
import trustme
from paho.mqtt.enums import CallbackAPIVersion
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.logger import formatEvent, globalLogPublisher
from zope.interface import implementer

from tests.proxy_support import HAProxy, haproxy_path
from tests.support import (
    CONNACK_OK, TIMEOUT, BrokerTestCase, Paho, connect_packet, in_thread, stop_broker,
    with_timeout,
)
from vmqtw.auth.api import OK, IAuthOnRegister
from vmqtw.config import load
from vmqtw.service import BrokerService
from vmqtw.transport.identity import preauth_username

SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def v2_header(src: str, dst: str, sport: int, dport: int, tlvs: bytes = b"",
              command: int = 1) -> bytes:
    """A v2 header built by hand (TCP over IPv4 or IPv6)."""
    family = socket.AF_INET6 if ":" in src else socket.AF_INET
    block = socket.inet_pton(family, src) + socket.inet_pton(family, dst) + \
        struct.pack("!HH", sport, dport) + tlvs
    fam = 0x21 if family == socket.AF_INET6 else 0x11
    return SIG + bytes([0x20 | command, fam]) + struct.pack("!H", len(block)) + block


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + struct.pack("!H", len(value)) + value


def ssl_cn_tlv(cn: str, verify: int = 0) -> bytes:
    return tlv(0x20, bytes([0x07]) + struct.pack("!I", verify) + tlv(0x21, b"TLSv1.3") +
               tlv(0x22, cn.encode()))


def proxy_config(extra: str = "", allow_anonymous: bool = True, kind: str = "tcp") -> str:
    """A PROXY listener ``edge`` that trusts headers from 127.0.0.1 (where haproxy
    runs), so proxy_protocol_use_cn_as_username is on by default."""
    return (f"allow_anonymous = {'on' if allow_anonymous else 'off'}\n"
            f"listener.{kind}.edge = 127.0.0.1:0\n"
            f"listener.{kind}.edge.proxy_protocol = on\n"
            f"listener.{kind}.edge.proxy_protocol_trusted_sources = 127.0.0.1\n" + extra)


@implementer(IAuthOnRegister)
class RecordRegister:
    """An auth plugin that accepts everyone and records what it was asked."""

    def __init__(self) -> None:
        self.requests: list[Any] = []

    def auth_on_register(self, request: Any) -> Any:
        self.requests.append(request)
        return OK


class ProxyCase(BrokerTestCase):

    def start(self, text: str, plugins: list[tuple[str, Any]] | None = None) -> BrokerService:
        """Like start_broker, optionally with plugin objects."""
        if plugins is None:
            return self.start_broker(text)
        service = BrokerService(load(self.write_config(text)), reactor, plugins=plugins)
        service.privilegedStartService()
        service.startService()
        self.addCleanup(stop_broker, service)
        return service

    def unix_broker(self) -> tuple[BrokerService, str]:
        tmp = tempfile.mkdtemp(prefix="vmqtw-")  # short: sun_path is 108 bytes
        self.addCleanup(shutil.rmtree, tmp, True)
        path = os.path.join(tmp, "broker.sock")
        broker = self.start("allow_anonymous = on\n"
                            f"listener.tcp.local = local:{path}:0\n"
                            "listener.tcp.local.proxy_protocol = on\n")
        return broker, path

    def proxy_log(self) -> list[str]:
        """Lines the PROXY layer logs from now until the test ends."""
        lines: list[str] = []

        def observer(event: dict[str, Any]) -> None:
            if str(event.get("log_namespace", "")).startswith("vmqtw.transport.proxy"):
                lines.append(formatEvent(event))

        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        return lines

    def session(self, service: BrokerService, client_id: str) -> Any:
        return service.broker.sessions[("", client_id)]

    def proxy_layer(self, service: BrokerService, listener: str) -> Any:
        layer = service.listeners[listener].layers[0]
        self.assertEqual(type(layer).__name__, "ProxyProtocolFactory")
        return layer


# ---------------------------------------------------------------------------
# Raw sockets, headers written by hand
# ---------------------------------------------------------------------------

class ProxyListenerTests(ProxyCase):

    def setUp(self) -> None:
        self.log = self.proxy_log()
        self.broker = self.start(proxy_config())

    @inlineCallbacks
    def test_v1_header_then_connect_in_one_segment(self):
        """A PROXY v1 header followed by CONNECT in the same segment is parsed: the client
        is served and its session's peer is the address in the header; nothing is logged."""
        client = yield self.raw_client(self.broker, "tcp.edge")
        client.send(b"PROXY TCP4 198.51.100.22 127.0.0.1 35646 1883\r\n" + connect_packet("v1"))
        self.assertEqual((yield client.read(4, what="CONNACK")), CONNACK_OK)
        self.assertEqual(self.session(self.broker, "v1").peer, ("198.51.100.22", 35646))
        self.assertEqual(self.log, [])

    @inlineCallbacks
    def test_v2_header_one_byte_per_write(self):
        """A PROXY v2 header (IPv6, with an SSL TLV carrying a CN) written one byte at a
        time is reassembled: the session's peer is the header's address and the CN becomes
        the pre-auth user name."""
        client = yield self.raw_client(self.broker, "tcp.edge")
        header = v2_header("2001:db8::7", "::1", 50000, 1883, ssl_cn_tlv("alice"))
        for i in range(len(header)):
            client.send(header[i:i + 1])
        client.send(connect_packet("v2"))
        self.assertEqual((yield client.read(4, what="CONNACK")), CONNACK_OK)
        session = self.session(self.broker, "v2")
        self.assertEqual(session.peer, ("2001:db8::7", 50000))
        transport = session.conn.transport
        self.assertEqual(transport.proxy_info.ssl_cn, "alice")
        listener = self.broker.listeners["tcp.edge"].listener
        self.assertEqual(preauth_username(transport, listener), "alice")

    @inlineCallbacks
    def test_local_command_uses_the_socket_peer(self):
        """A PROXY v2 header with the LOCAL command (a health check) is accepted and the
        session's peer is the socket's own address."""
        client = yield self.raw_client(self.broker, "tcp.edge")
        client.send(SIG + b"\x20\x00\x00\x00" + connect_packet("local"))
        self.assertEqual((yield client.read(4, what="CONNACK")), CONNACK_OK)
        me = client.transport.getHost()
        self.assertEqual(self.session(self.broker, "local").peer, (me.host, me.port))

    @inlineCallbacks
    def test_connect_without_header_is_refused(self):
        """A client that bypasses the proxy cannot claim any address: its
        CONNECT is never read as MQTT and the connection is closed."""
        client = yield self.raw_client(self.broker, "tcp.edge")
        me = client.transport.getHost()
        client.send(connect_packet("bypass"))
        yield client.when_closed()
        self.assertEqual(client.buffer, b"")          # no CONNACK, nothing at all
        self.assertNotIn(("", "bypass"), self.broker.broker.sessions)
        self.assertEqual(len(self.log), 1, self.log)
        self.assertIn(f"127.0.0.1:{me.port}", self.log[0])
        self.assertIn("tcp.edge", self.log[0])
        self.assertIn("not a PROXY protocol header", self.log[0])
        limiter = self.broker.listeners["tcp.edge"].limiter
        yield with_timeout(limiter.when(lambda n: n == 0), what="the count to drop to 0")

    @inlineCallbacks
    def test_spoofed_header_inside_mqtt_is_not_trusted(self):
        """The header must be the very first bytes: after a CONNECT it is garbage."""
        client = yield self.raw_client(self.broker, "tcp.edge")
        client.send(connect_packet("x") + b"PROXY TCP4 10.0.0.1 10.0.0.2 1 2\r\n")
        yield client.when_closed()
        self.assertEqual(client.buffer, b"")

    @inlineCallbacks
    def test_garbled_header_is_refused(self):
        """A PROXY v1 header with an out-of-range port closes the connection without any
        answer, and the broker logs one line saying bad port."""
        client = yield self.raw_client(self.broker, "tcp.edge")
        client.send(b"PROXY TCP4 10.0.0.1 10.0.0.2 1 65536\r\n" + connect_packet("g"))
        yield client.when_closed()
        self.assertEqual(client.buffer, b"")
        self.assertEqual(len(self.log), 1)
        self.assertIn("bad port", self.log[0])

    @inlineCallbacks
    def test_unix_socket_listener(self):
        """A unix socket listener with proxy_protocol on takes the client address from the
        PROXY header (IPv6 here), and a client without a header is closed without an answer,
        with one log line naming the local: listener."""
        broker, _ = self.unix_broker()
        client = yield self.raw_client(broker, "tcp.local")
        client.send(b"PROXY TCP6 2001:db8::9 ::1 4242 1883\r\n" + connect_packet("u"))
        self.assertEqual((yield client.read(4, what="CONNACK")), CONNACK_OK)
        self.assertEqual(self.session(broker, "u").peer, ("2001:db8::9", 4242))
        bypass = yield self.raw_client(broker, "tcp.local")
        bypass.send(connect_packet("bypass"))
        yield bypass.when_closed()
        self.assertEqual(bypass.buffer, b"")
        self.assertEqual(len(self.log), 1, self.log)
        self.assertIn("local:", self.log[0])

    @inlineCallbacks
    def test_header_timeout_on_a_real_socket(self):
        """A client that sends only part of a PROXY header is closed after the layer's
        timeout, with a log line giving the timeout and how many bytes arrived."""
        # 10 s in production; shortened on this listener's layer for the test
        self.proxy_layer(self.broker, "tcp.edge").timeout = 0.3
        client = yield self.raw_client(self.broker, "tcp.edge")
        client.send(SIG[:5])
        yield client.when_closed(timeout=TIMEOUT)
        self.assertEqual(len(self.log), 1)
        self.assertIn("no complete PROXY header within 0.3 s (5 bytes received)", self.log[0])


# ---------------------------------------------------------------------------
# Behind a real haproxy
# ---------------------------------------------------------------------------

def paho_in_thread_local_port(client: Paho) -> int:
    sock = client.client.socket()
    sock = getattr(sock, "_socket", sock)  # paho's WebSocket wrapper
    return sock.getsockname()[1]


class HAProxyTests(ProxyCase):

    def setUp(self) -> None:
        haproxy_path()  # skips (fails under CI) when haproxy is not installed

    @inlineCallbacks
    def test_unix_socket_listener_behind_send_proxy_v2(self):
        """haproxy on the same host, talking to the broker's unix socket."""
        broker, path = self.unix_broker()
        proxy = self.haproxy(0, "send-proxy-v2", server_address=f"unix@{path}")
        client = self.paho(proxy.port, "via-unix")

        def scenario():
            client.connect()
            return paho_in_thread_local_port(client)

        port = yield proxy.guard(in_thread(scenario))
        self.assertEqual(self.session(broker, "via-unix").peer, ("127.0.0.1", port))

    def haproxy(self, backend_port: int, server_options: str, **kwargs: Any) -> HAProxy:
        proxy = HAProxy(os.path.abspath(self.mktemp()), backend_port, server_options, **kwargs)
        proxy.start()
        self.addCleanup(proxy.stop)
        return proxy

    def certs(self) -> dict[str, str]:
        """trustme CA, haproxy's server.pem (cert + key) and client alice."""
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        ca = trustme.CA()
        server = ca.issue_cert("127.0.0.1", "localhost")
        alice = ca.issue_cert(common_name="alice")
        files = {"ca": "ca.pem", "server": "server.pem", "alice": "alice.pem",
                 "alice_key": "alice.key"}
        paths = {k: os.path.join(directory, v) for k, v in files.items()}
        ca.cert_pem.write_to_path(paths["ca"])
        server.private_key_and_cert_chain_pem.write_to_path(paths["server"])
        alice.cert_chain_pems[0].write_to_path(paths["alice"])
        alice.private_key_pem.write_to_path(paths["alice_key"])
        return paths

    @inlineCallbacks
    def test_send_proxy_v1(self):
        """Behind haproxy with send-proxy (v1) the session's peer is the paho client's
        address and port, not haproxy's outgoing socket, and the destination is haproxy's
        frontend port."""
        broker = self.start(proxy_config())
        proxy = self.haproxy(self.port_of(broker, "tcp.edge"), "send-proxy")
        client = self.paho(proxy.port, "through-v1")

        def scenario():
            client.connect()
            return paho_in_thread_local_port(client)

        port = yield proxy.guard(in_thread(scenario))
        session = self.session(broker, "through-v1")
        # the socket peer is haproxy's outgoing port; the session has paho's
        self.assertEqual(session.peer, ("127.0.0.1", port))
        info = session.conn.transport.proxy_info
        self.assertEqual((info.version, info.command), (1, "PROXY"))
        self.assertEqual(info.destination.port, proxy.port)
        haproxy_side = session.conn.transport.transport.getPeer()
        self.assertNotEqual(haproxy_side.port, port)

    @inlineCallbacks
    def test_send_proxy_v2_with_crc32c_and_unique_id(self):
        """Behind haproxy with send-proxy-v2, crc32c and unique-id, the client exchanges
        messages, its session's peer is the client's address, the CRC32C TLV is present (and
        was verified) and the unique id arrives; there is no SSL information."""
        broker = self.start(proxy_config())
        proxy = self.haproxy(self.port_of(broker, "tcp.edge"),
                             "send-proxy-v2 proxy-v2-options crc32c,unique-id",
                             frontend_lines="    unique-id-format vmqtw-%cp")
        client = self.paho(proxy.port, "through-v2")

        def scenario():
            client.connect()
            client.subscribe("t", 1)
            client.publish("t", b"hello", 1)
            return paho_in_thread_local_port(client), client.get().payload

        port, payload = yield proxy.guard(in_thread(scenario))
        self.assertEqual(payload, b"hello")
        session = self.session(broker, "through-v2")
        self.assertEqual(session.peer, ("127.0.0.1", port))
        info = session.conn.transport.proxy_info
        self.assertEqual((info.version, info.command, info.family), (2, "PROXY", "AF_INET"))
        self.assertIn(0x03, info.tlvs)   # haproxy's CRC32C, verified by the parser
        self.assertEqual(info.unique_id, f"vmqtw-{port}".encode())
        self.assertIsNone(info.ssl)

    @inlineCallbacks
    def test_direct_connection_to_the_proxy_listener_is_refused(self):
        """While haproxy's clients are served, a client connecting directly to the
        proxy_protocol listener is closed without an answer or session, and one line is
        logged."""
        log = self.proxy_log()
        broker = self.start(proxy_config())
        proxy = self.haproxy(self.port_of(broker, "tcp.edge"), "send-proxy-v2")
        through = self.paho(proxy.port, "through")
        yield proxy.guard(in_thread(through.connect))
        direct = yield self.raw_client(broker, "tcp.edge")
        direct.send(connect_packet("direct"))
        yield direct.when_closed()
        self.assertEqual(direct.buffer, b"")
        self.assertNotIn(("", "direct"), broker.broker.sessions)
        self.assertEqual(len(log), 1, log)
        self.assertIn("not a PROXY protocol header", log[0])

    @inlineCallbacks
    def test_health_checks_send_local(self):
        """haproxy's checks with send-proxy-v2 use the LOCAL command; the
        broker accepts them (socket addresses) without logging errors."""
        log = self.proxy_log()
        broker = self.start(proxy_config())
        layer = self.proxy_layer(broker, "tcp.edge")
        seen: Deferred = Deferred()
        original = layer.header_parsed

        def header_parsed(wrapper: Any, info: Any) -> None:
            original(wrapper, info)
            if info.command == "LOCAL" and not seen.called:
                seen.callback(wrapper.getPeer())

        layer.header_parsed = header_parsed
        proxy = self.haproxy(self.port_of(broker, "tcp.edge"),
                             "send-proxy-v2 check check-send-proxy inter 200ms")
        peer = yield proxy.guard(with_timeout(seen, what="a LOCAL health check"))
        self.assertEqual(peer.host, "127.0.0.1")  # haproxy's own socket address
        self.assertGreaterEqual(layer.accepted[(2, "LOCAL")], 1)
        self.assertEqual(log, [])

    def tls_proxy(self, broker: BrokerService, certs: dict[str, str], listener: str,
                  verify: str = "required") -> HAProxy:
        return self.haproxy(
            self.port_of(broker, listener), "send-proxy-v2-ssl-cn proxy-v2-options ssl-cipher",
            bind_options=f"ssl crt {certs['server']} ca-file {certs['ca']} verify {verify}")

    def tls_paho(self, port: int, client_id: str, certs: dict[str, str],
                 with_cert: bool = True) -> Paho:
        client = self.paho(port, client_id)
        client.client.tls_set(ca_certs=certs["ca"],
                              certfile=certs["alice"] if with_cert else None,
                              keyfile=certs["alice_key"] if with_cert else None)
        client.client.username_pw_set("bob", "bobs-password")
        return client

    @inlineCallbacks
    def test_tls_termination_with_client_certificate(self):
        """With haproxy terminating TLS (send-proxy-v2-ssl-cn), the client certificate's CN,
        the verify result, TLS version and cipher reach the broker; the CN is the pre-auth
        user name and auth plugins see the client's address as the peer."""
        certs = self.certs()
        plugin = RecordRegister()
        broker = self.start(proxy_config(allow_anonymous=False), [("record", plugin)])
        proxy = self.tls_proxy(broker, certs, "tcp.edge")
        client = self.tls_paho(proxy.port, "alice-device", certs)

        def scenario():
            client.connect()
            return paho_in_thread_local_port(client)

        port = yield proxy.guard(in_thread(scenario))
        session = self.session(broker, "alice-device")
        self.assertEqual(session.peer, ("127.0.0.1", port))
        info = session.conn.transport.proxy_info
        self.assertEqual(info.ssl_cn, "alice")
        self.assertEqual(info.ssl.verify, 0)
        self.assertTrue(info.ssl.version.startswith("TLSv1."), info.ssl.version)
        self.assertTrue(info.ssl.cipher)
        listener = broker.listeners["tcp.edge"].listener
        self.assertEqual(preauth_username(session.conn.transport, listener), "alice")
        (request,) = plugin.requests
        self.assertEqual(request.peer, ("127.0.0.1", port))   # auth hooks see the client

    @inlineCallbacks
    def test_tls_cn_replaces_the_connect_username_in_auth(self):
        """With proxy_protocol_use_cn_as_username on (the default with trusted sources) the
        certificate CN
        replaces the CONNECT user name given to auth plugins; with it off the CONNECT user
        name stays; the password is passed either way."""
        certs = self.certs()
        plugin = RecordRegister()
        broker = self.start(proxy_config(allow_anonymous=False) +
                            "listener.tcp.off = 127.0.0.1:0\n"
                            "listener.tcp.off.proxy_protocol = on\n"
                            "listener.tcp.off.proxy_protocol_use_cn_as_username = off\n",
                            [("record", plugin)])
        on = self.tls_proxy(broker, certs, "tcp.edge")
        off = self.tls_proxy(broker, certs, "tcp.off")
        c_on = self.tls_paho(on.port, "cn-on", certs)
        c_off = self.tls_paho(off.port, "cn-off", certs)

        def scenario():
            c_on.connect()
            c_off.connect()

        yield on.guard(in_thread(scenario))
        users = {r.client_id: (r.username, r.password) for r in plugin.requests}
        self.assertEqual(users["cn-on"][0], "alice")
        self.assertEqual(users["cn-off"][0], "bob")
        self.assertEqual(users["cn-on"][1], users["cn-off"][1])  # password still passed

    @inlineCallbacks
    def test_tls_without_client_certificate_gives_no_cn(self):
        """When haproxy terminates TLS for a client without a certificate (verify optional),
        the SSL TLV says TLS without a certificate, there is no CN and no pre-auth user
        name."""
        certs = self.certs()
        broker = self.start(proxy_config())
        proxy = self.tls_proxy(broker, certs, "tcp.edge", verify="optional")
        client = self.tls_paho(proxy.port, "no-cert", certs, with_cert=False)
        yield proxy.guard(in_thread(client.connect))
        transport = self.session(broker, "no-cert").conn.transport
        info = transport.proxy_info
        self.assertTrue(info.ssl.ssl)
        self.assertFalse(info.ssl.certificate)
        self.assertIsNone(info.ssl_cn)
        listener = broker.listeners["tcp.edge"].listener
        self.assertIsNone(preauth_username(transport, listener))

    # -- WebSocket listeners ------------------------------------------------------

    def start_ws(self, extra: str = "", plugins: Any = None) -> BrokerService:
        return self.start(proxy_config(extra, allow_anonymous=plugins is None, kind="ws"),
                          plugins)

    def ws_paho(self, port: int, client_id: str, certs: dict[str, str] | None = None) -> Paho:
        client = self.paho(port, client_id)
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                        protocol=mqtt.MQTTv311, clean_session=True,
                        reconnect_on_failure=False, transport="websockets")
        c.ws_set_options(path="/mqtt")
        c.on_connect = client._on_connect
        c.on_message = client._on_message
        c.on_disconnect = client._on_disconnect
        c.on_subscribe = client._on_subscribe
        if certs is not None:
            c.tls_set(ca_certs=certs["ca"], certfile=certs["alice"], keyfile=certs["alice_key"])
            c.username_pw_set("bob", "bobs-password")
        client.client = c
        return client

    @inlineCallbacks
    def test_ws_listener_behind_send_proxy_v2(self):
        """A ws listener with proxy_protocol on, behind haproxy's send-proxy-v2, serves a
        paho WebSocket client with the client's own address as its session's peer."""
        broker = self.start_ws()
        proxy = self.haproxy(self.port_of(broker, "ws.edge"), "send-proxy-v2")
        client = self.ws_paho(proxy.port, "ws-through")

        def scenario():
            client.connect()
            return paho_in_thread_local_port(client)

        port = yield proxy.guard(in_thread(scenario))
        self.assertEqual(self.session(broker, "ws-through").peer, ("127.0.0.1", port))

    @inlineCallbacks
    def test_ws_listener_tls_termination_cn(self):
        """A ws listener behind haproxy terminating TLS takes the certificate CN as the user
        name (proxy_protocol_use_cn_as_username defaults to on for ws too, with trusted
        sources set): pre-auth user
        name and the auth plugin's request both say alice, with the client's address as
        peer."""
        certs = self.certs()
        plugin = RecordRegister()
        broker = self.start_ws(plugins=[("record", plugin)])
        proxy = self.tls_proxy(broker, certs, "ws.edge")
        client = self.ws_paho(proxy.port, "ws-alice", certs)

        def scenario():
            client.connect()
            return paho_in_thread_local_port(client)

        port = yield proxy.guard(in_thread(scenario))
        session = self.session(broker, "ws-alice")
        self.assertEqual(session.peer, ("127.0.0.1", port))
        listener = broker.listeners["ws.edge"].listener
        # default on for ws listeners too (VerneMQ only honours it on tcp)
        self.assertTrue(listener.proxy_protocol_use_cn_as_username)
        self.assertEqual(preauth_username(session.conn.transport, listener), "alice")
        (request,) = plugin.requests
        self.assertEqual(request.peer, ("127.0.0.1", port))
        self.assertEqual(request.username, "alice")

    @inlineCallbacks
    def test_ws_direct_connection_is_refused(self):
        """A direct WebSocket upgrade to a ws listener with proxy_protocol on, without a
        PROXY header, is closed without even an HTTP answer, and one line is logged."""
        log = self.proxy_log()
        broker = self.start_ws()
        client = yield self.raw_client(broker, "ws.edge")
        client.send(b"GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n")
        yield client.when_closed()
        self.assertEqual(client.buffer, b"")   # not even an HTTP answer
        self.assertEqual(len(log), 1, log)
