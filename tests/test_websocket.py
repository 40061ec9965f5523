"""ws and wss listeners with real clients on a port-0 broker: paho-mqtt
(transport="websockets"), MQTT.js under Node, a headless Chromium, and a raw
in-reactor WebSocket client for the error cases, frame splitting,
X-Forwarded-For and back-pressure.

Needs (installed by .ci/run): Debian's ``chromium``, and MQTT.js in
tests/node (``npm ci --prefix tests/node``).  A missing one fails its tests
with the command to run; nothing is skipped.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import tempfile
from typing import Any, Callable

import paho.mqtt.client as mqtt
import trustme
from paho.mqtt.enums import CallbackAPIVersion
from twisted.internet import defer, reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web import server, static

from tests.support import (
    CONNACK_OK, MQTTv31, MQTTv311, MQTTv5, TIMEOUT, BrokerTestCase, Paho, RunningProcess,
    connect_packet, in_thread, publish_packet, run_process, subscribe_packet,
    when_session_event, with_timeout,
)
from vmqtw.test.websocket_support import (
    OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, client_frame, parse_frame,
    split_response, upgrade_request,
)
from vmqtw.transport.identity import peer_of, preauth_username
from vmqtw.transport.limits import LimitedConnections

HERE = os.path.dirname(os.path.abspath(__file__))
NODE_DIR = os.path.join(HERE, "node")
BROWSER_DIR = os.path.join(HERE, "browser")
MQTT_JS_BUNDLE = os.path.join(NODE_DIR, "node_modules", "mqtt", "dist", "mqtt.min.js")
NPM_HINT = "MQTT.js is not installed: run `npm ci --prefix tests/node`"

WS_CONFIG = """\
allow_anonymous = on
listener.tcp.default = 127.0.0.1:0
listener.ws.default = 127.0.0.1:0
listener.ws.default.allowed_protocol_versions = 3,4,5
"""


def need_mqtt_js() -> None:
    if not os.path.exists(MQTT_JS_BUNDLE):
        raise AssertionError(NPM_HINT)


def need_program(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise AssertionError(f"{name} is not installed: run `apt-get install -y {package}`")
    return path


# ---------------------------------------------------------------------------
# A raw WebSocket client in the reactor
# ---------------------------------------------------------------------------

class RawWebSocket(Protocol):
    """Sends hand-made requests and frames; collects the response, control
    frames and the MQTT byte stream (binary payloads joined)."""

    def __init__(self) -> None:
        self.buffer = b""
        self.response: tuple[int, dict[str, str], bytes] | None = None
        self.mqtt = b""
        self.control: list[tuple[int, bytes]] = []
        self.is_closed = False
        self.reply_to_close = True
        self.close_sent = False
        self._waiters: list[tuple[Callable[[], Any], Deferred]] = []

    # -- input --

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if self.response is None:
            parsed = split_response(self.buffer)
            if parsed is None:
                self._check()
                return
            self.response = parsed
            self.buffer = parsed[2]
        if self.response[0] == 101:
            while True:
                frame = parse_frame(self.buffer)
                if frame is None:
                    break
                opcode, _, payload, used = frame
                self.buffer = self.buffer[used:]
                if opcode in (OP_BINARY, OP_CONT):
                    self.mqtt += payload
                else:
                    self.control.append((opcode, payload))
                if opcode == OP_CLOSE and self.reply_to_close and not self.close_sent:
                    self.close_sent = True  # as a real client does
                    self.frame(OP_CLOSE, payload[:2])
        self._check()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.is_closed = True
        self._check()
        waiters, self._waiters = self._waiters, []
        for _, d in waiters:
            d.errback(ConnectionError(f"connection closed; got {self.mqtt!r} "
                                      f"{self.control!r} {self.buffer[:200]!r}"))

    def _check(self) -> None:
        for item in list(self._waiters):
            predicate, d = item
            value = predicate()
            if value is not None and value is not False:
                self._waiters.remove(item)
                d.callback(value)

    def wait(self, predicate: Callable[[], Any], what: str,
             timeout: float = TIMEOUT) -> Deferred:
        """Fires with ``predicate()`` once it is truthy."""
        value = predicate()
        if value is not None and value is not False:
            return defer.succeed(value)
        if self.is_closed:
            return defer.fail(ConnectionError(f"connection closed before {what}"))
        d: Deferred = Deferred(lambda d: self._waiters.remove(entry)
                               if entry in self._waiters else None)
        entry = (predicate, d)
        self._waiters.append(entry)
        return with_timeout(d, timeout, what)

    # -- output --

    def send(self, data: bytes) -> None:
        self.transport.write(data)

    def upgrade(self, path: str = "/mqtt", protocols: str | None = "mqtt",
                headers: tuple[tuple[str, str], ...] = ()) -> Deferred:
        """Send the upgrade request; fires with (status, headers, rest)."""
        self.send(upgrade_request(path, protocols, headers))
        return self.wait(lambda: self.response, "the HTTP response")

    def frame(self, opcode: int, payload: bytes, fin: bool = True) -> None:
        self.send(client_frame(opcode, payload, fin))

    def read_mqtt(self, n: int, what: str = "MQTT bytes") -> Deferred:
        """Fires with the next ``n`` bytes of the MQTT stream."""
        def ready() -> bytes | None:
            if len(self.mqtt) >= n:
                chunk, self.mqtt = self.mqtt[:n], self.mqtt[n:]
                return chunk
            return None
        return self.wait(ready, what)

    def when_closed(self, timeout: float = TIMEOUT) -> Deferred:
        if self.is_closed:
            return defer.succeed(None)
        d: Deferred = Deferred()
        self._waiters.append((lambda: self.is_closed, d))
        return with_timeout(d, timeout, "the connection to close")

    def close(self) -> Deferred:
        if self.is_closed:
            return defer.succeed(None)
        d = self.when_closed()
        self.transport.abortConnection()
        return d


class WsPaho(Paho):
    """tests.support.Paho over WebSocket (and TLS with ``ca``)."""

    def __init__(self, port: int, client_id: str, protocol: int = MQTTv311, *,
                 path: str = "/mqtt", headers: dict[str, str] | None = None,
                 ca: str | None = None, cert: tuple[str, str] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(port, client_id, protocol, **kwargs)
        old = self.client
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=protocol,
                             clean_session=None if protocol == MQTTv5 else True,
                             transport="websockets", reconnect_on_failure=False)
        client.ws_set_options(path=path, headers=headers)
        if ca is not None:
            certfile, keyfile = cert if cert is not None else (None, None)
            client.tls_set(ca_certs=ca, certfile=certfile, keyfile=keyfile)
        for name in ("on_connect", "on_message", "on_disconnect", "on_subscribe"):
            setattr(client, name, getattr(old, name))
        self.client = client


class TLSFiles:
    """A CA, a server certificate for 127.0.0.1 and a client "alice"."""

    def __init__(self, directory: str) -> None:
        ca = trustme.CA()
        server_cert = ca.issue_cert("127.0.0.1", "localhost")
        client = ca.issue_cert("alice.example", common_name="alice")
        self.ca = os.path.join(directory, "ca.pem")
        self.cert = os.path.join(directory, "server.pem")
        self.key = os.path.join(directory, "server.key")
        self.client = (os.path.join(directory, "alice.pem"), os.path.join(directory, "alice.key"))
        ca.cert_pem.write_to_path(self.ca)
        server_cert.cert_chain_pems[0].write_to_path(self.cert)
        server_cert.private_key_pem.write_to_path(self.key)
        client.cert_chain_pems[0].write_to_path(self.client[0])
        client.private_key_pem.write_to_path(self.client[1])


class WebSocketTestCase(BrokerTestCase):

    def _dir(self) -> str:
        path = os.path.abspath(self.mktemp())
        os.makedirs(path)
        return path

    def ws_paho(self, port: int, client_id: str, protocol: int = MQTTv311,
                **kwargs: Any) -> WsPaho:
        client = WsPaho(port, client_id, protocol, **kwargs)
        self.addCleanup(lambda: in_thread(client.close))
        return client

    @inlineCallbacks
    def raw_ws(self, service: Any, listener: str = "ws.default", *,
               port: int | None = None, before: bytes = b""):
        """A connected RawWebSocket (not upgraded yet); ``before`` is sent first
        (e.g. a PROXY header)."""
        if port is None:
            port = self.port_of(service, listener)
        client = RawWebSocket()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=TIMEOUT)
        yield with_timeout(connectProtocol(endpoint, client), what="TCP connect")
        self.addCleanup(client.close)
        if before:
            client.send(before)
        return client

    @inlineCallbacks
    def mqtt_over_ws(self, service: Any, client_id: str, listener: str = "ws.default",
                     headers: tuple[tuple[str, str], ...] = ()):
        """A RawWebSocket that is upgraded and has its CONNACK."""
        ws = yield self.raw_ws(service, listener)
        status, _, _ = yield ws.upgrade(headers=headers)
        self.assertEqual(status, 101)
        ws.frame(OP_BINARY, connect_packet(client_id))
        connack = yield ws.read_mqtt(4, "CONNACK")
        self.assertEqual(connack, CONNACK_OK)
        return ws

    def session(self, service: Any, client_id: str, mountpoint: str = "") -> Any:
        return service.broker.sessions[(mountpoint, client_id)]


# ---------------------------------------------------------------------------
# paho-mqtt over ws and wss
# ---------------------------------------------------------------------------

class PahoTests(WebSocketTestCase):

    def setUp(self) -> None:
        self.broker = self.start_broker(WS_CONFIG)
        self.port = self.port_of(self.broker, "ws.default")

    def roundtrip(self, client: Paho, peer: Paho | None = None) -> list[Any]:
        peer = peer or client
        client.connect()
        if peer is not client:
            peer.connect()
        self.assertEqual(client.subscribe("ws/+", 1), [1])
        big = bytes(range(256)) * 300  # 76 800 bytes: several frames' worth
        peer.publish("ws/small", b"hello", 1)
        peer.publish("ws/big", big, 1)
        got = client.get_many(2)
        client.disconnect()
        return [(m.topic, m.payload == big or m.payload) for m in got]

    @inlineCallbacks
    def test_mqtt311(self):
        """A paho MQTT 3.1.1 client over ws subscribes and gets its own QoS 1 messages back:
        a small one and a 76,800-byte one that spans several WebSocket frames, both
        intact."""
        client = self.ws_paho(self.port, "ws311")
        got = yield in_thread(self.roundtrip, client)
        self.assertEqual(got, [("ws/small", b"hello"), ("ws/big", True)])

    @inlineCallbacks
    def test_mqtt31(self):
        """A paho MQTT 3.1 client over ws subscribes and gets its own QoS 1 messages back, a
        small one and a several-frame one, both intact."""
        client = self.ws_paho(self.port, "ws31", MQTTv31)
        got = yield in_thread(self.roundtrip, client)
        self.assertEqual(got, [("ws/small", b"hello"), ("ws/big", True)])

    @inlineCallbacks
    def test_mqtt5(self):
        """A paho MQTT 5.0 client over ws subscribes and gets its own QoS 1 messages back, a
        small one and a several-frame one, both intact."""
        client = self.ws_paho(self.port, "ws5", MQTTv5)
        got = yield in_thread(self.roundtrip, client)
        self.assertEqual(got, [("ws/small", b"hello"), ("ws/big", True)])

    @inlineCallbacks
    def test_ws_and_tcp_clients_share_topics(self):
        """A ws subscriber receives what a plain TCP client publishes: both listeners route
        through the same broker."""
        tcp_port = self.port_of(self.broker, "tcp.default")
        sub = self.ws_paho(self.port, "ws-sub")
        pub = self.paho(tcp_port, "tcp-pub")
        got = yield in_thread(self.roundtrip, sub, pub)
        self.assertEqual(got, [("ws/small", b"hello"), ("ws/big", True)])

    @inlineCallbacks
    def test_session_sees_the_tcp_peer(self):
        """A ws client's session records the TCP peer address of the WebSocket connection
        (127.0.0.1 and the client's own port, not the listener's)."""
        client = self.ws_paho(self.port, "peer")
        yield in_thread(client.connect)
        session = self.session(self.broker, "peer")
        host, port = session.peer
        self.assertEqual(host, "127.0.0.1")
        self.assertNotEqual(port, self.port)

    @inlineCallbacks
    def test_wrong_path_fails_to_connect(self):
        """A WebSocket upgrade on a path other than /mqtt is not upgraded, so paho fails to
        connect."""
        client = self.ws_paho(self.port, "lost", path="/nope")

        def scenario():
            try:
                client.client.connect("127.0.0.1", self.port)
            except Exception as e:  # paho raises on a failed upgrade
                return str(e)
            return "connected"

        result = yield in_thread(scenario)
        self.assertIn("not upgraded", result)  # paho does not say which status


class WssTests(WebSocketTestCase):

    def setUp(self) -> None:
        self.tls = TLSFiles(self._dir())
        self.broker = self.start_broker(
            "allow_anonymous = on\n"
            "listener.wss.certfile = {c.cert}\nlistener.wss.keyfile = {c.key}\n"
            "listener.wss.cafile = {c.ca}\n"
            "listener.wss.allowed_protocol_versions = 3,4,5\n"
            "listener.wss.default = 127.0.0.1:0\n"
            "listener.wss.mtls = 127.0.0.1:0\n"
            "listener.wss.mtls.require_certificate = on\n"
            "listener.wss.mtls.use_identity_as_username = on\n".format(c=self.tls))
        self.port = self.port_of(self.broker, "wss.default")

    @inlineCallbacks
    def test_mqtt311(self):
        """A paho MQTT 3.1.1 client over wss (TLS, verifying the broker with the CA) gets
        its own small and several-frame QoS 1 messages back intact."""
        client = self.ws_paho(self.port, "wss311", ca=self.tls.ca)
        got = yield in_thread(PahoTests.roundtrip, self, client)
        self.assertEqual(got, [("ws/small", b"hello"), ("ws/big", True)])

    @inlineCallbacks
    def test_mqtt5(self):
        """A paho MQTT 5.0 client over wss gets its own small and several-frame QoS 1
        messages back intact."""
        client = self.ws_paho(self.port, "wss5", MQTTv5, ca=self.tls.ca)
        got = yield in_thread(PahoTests.roundtrip, self, client)
        self.assertEqual(got, [("ws/small", b"hello"), ("ws/big", True)])

    @inlineCallbacks
    def test_client_certificate_is_found_through_the_websocket_layer(self):
        """On a wss listener with require_certificate and use_identity_as_username, the
        client certificate's CN (alice) is found through the WebSocket layer as the pre-auth
        user name, and the connection's peer is the TCP client."""
        port = self.port_of(self.broker, "wss.mtls")
        client = self.ws_paho(port, "cert-client", ca=self.tls.ca, cert=self.tls.client)
        yield in_thread(client.connect)
        conn = self.session(self.broker, "cert-client").conn
        listener = self.broker.listeners["wss.mtls"].listener
        self.assertEqual(preauth_username(conn.transport, listener), "alice")
        self.assertEqual(peer_of(conn.transport)[0], "127.0.0.1")
        self.assertIsNotNone(conn.transport.getPeerCertificate())

    @inlineCallbacks
    def test_client_without_certificate_is_refused(self):
        """A wss listener with require_certificate on refuses a client that presents no
        certificate: paho cannot connect."""
        port = self.port_of(self.broker, "wss.mtls")
        client = self.ws_paho(port, "no-cert", ca=self.tls.ca)

        def scenario():
            try:
                client.client.connect("127.0.0.1", port)
            except Exception as e:
                return type(e).__name__
            return "connected"

        result = yield in_thread(scenario)
        self.assertNotEqual(result, "connected")


# ---------------------------------------------------------------------------
# MQTT.js under Node, and a headless Chromium
# ---------------------------------------------------------------------------

class MQTTjsTests(WebSocketTestCase):

    @inlineCallbacks
    def run_mqttjs(self, url: str, topic: str, version: int, ca: str | None = None):
        need_mqtt_js()
        node = need_program("node", "nodejs")
        args = [os.path.join(NODE_DIR, "roundtrip.js"), url, topic, str(version)]
        if ca is not None:
            args.append(ca)
        out, err, code = yield run_process(node, args, timeout=20, cwd=NODE_DIR)
        self.assertEqual(code, 0, (out, err))
        return json.loads(out.decode().strip().splitlines()[-1])

    @inlineCallbacks
    def test_ws_311_and_5(self):
        """MQTT.js under Node connects over ws with MQTT 3.1.1 and with 5.0 and gets its
        published message back with the protocol version it asked for."""
        broker = self.start_broker(WS_CONFIG)
        url = f"ws://127.0.0.1:{self.port_of(broker, 'ws.default')}/mqtt"
        for version in (4, 5):
            result = yield self.run_mqttjs(url, f"js/{version}", version)
            self.assertEqual(result, {"topic": f"js/{version}", "protocolVersion": version,
                                      "payload": f"hello from mqtt.js {version}"})

    @inlineCallbacks
    def test_wss_with_compression(self):
        """With websocket_compression on, MQTT.js over wss negotiates permessage-deflate
        (the only extension in use on its one connection) and its message still
        round-trips."""
        # MQTT.js (the ws package) offers permessage-deflate; this listener
        # accepts it, so the traffic is really compressed.
        tls = TLSFiles(self._dir())
        broker = self.start_broker(
            "allow_anonymous = on\n"
            f"listener.wss.default = 127.0.0.1:0\nlistener.wss.certfile = {tls.cert}\n"
            f"listener.wss.keyfile = {tls.key}\n"
            "listener.wss.websocket_compression = on\n")
        compressed = []
        factory = broker.listeners["wss.default"].layers[1]
        original = factory.protocol.onOpen

        def onOpen(proto):
            compressed.append(proto.websocket_extensions_in_use)
            original(proto)

        self.patch(factory.protocol, "onOpen", onOpen)
        url = f"wss://127.0.0.1:{self.port_of(broker, 'wss.default')}/mqtt"
        result = yield self.run_mqttjs(url, "js/wss", 4, ca=tls.ca)
        self.assertEqual(result["payload"], "hello from mqtt.js 4")
        self.assertEqual(len(compressed), 1)
        self.assertEqual([e.EXTENSION_NAME for e in compressed[0]], ["permessage-deflate"])


class BrowserTests(WebSocketTestCase):
    """One real browser: Debian's chromium, headless, loads tests/browser/
    index.html (with MQTT.js's browser bundle), which connects over ws,
    subscribes, publishes, gets its message back, shows it in the page and
    publishes what it got to TOPIC/done; the test reads that with paho."""

    timeout = 90

    @inlineCallbacks
    def test_chromium_roundtrip(self):
        """A headless Chromium page using MQTT.js's browser bundle connects over ws,
        subscribes, gets its own message back and reports it on TOPIC/done, which a paho
        client on the tcp listener receives with the browser's user agent in it."""
        need_mqtt_js()
        chromium = need_program("chromium", "chromium")
        broker = self.start_broker(WS_CONFIG)
        ws_port = self.port_of(broker, "ws.default")
        observer = self.paho(self.port_of(broker, "tcp.default"), "observer")
        yield in_thread(lambda: (observer.connect(), observer.subscribe("browser/t/done", 1)))

        # A tiny static web server for the page and the bundle; its
        # connections are counted so the test can wait until they are gone.
        root = static.File(BROWSER_DIR)
        root.putChild(b"mqtt.min.js", static.File(MQTT_JS_BUNDLE))
        web = LimitedConnections(server.Site(root), None)
        port = reactor.listenTCP(0, web, interface="127.0.0.1")
        url = (f"http://127.0.0.1:{port.getHost().port}/index.html"
               f"?port={ws_port}&topic=browser/t")
        profile = tempfile.mkdtemp(prefix="vmqtw-chromium-")
        browser = RunningProcess(chromium, [
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", f"--user-data-dir={profile}", url])

        @inlineCallbacks
        def stop_browser_and_site():
            try:
                yield browser.stop()
            finally:
                for wrapper in list(web.protocols):
                    wrapper.transport.abortConnection()
                yield with_timeout(web.when(lambda n: n == 0), what="the page's connections")
                yield port.stopListening()
                shutil.rmtree(profile, True)

        self.addCleanup(stop_browser_and_site)
        message = yield in_thread(observer.get, 45)
        self.assertEqual(message.topic, "browser/t/done")
        self.assertTrue(message.payload.startswith(b"received: hello from Mozilla/"),
                        message.payload)


# ---------------------------------------------------------------------------
# Raw WebSocket: errors, frames, limits
# ---------------------------------------------------------------------------

class HandshakeErrorTests(WebSocketTestCase):

    def setUp(self) -> None:
        self.broker = self.start_broker(WS_CONFIG)

    @inlineCallbacks
    def assertHttpError(self, request: bytes, code: int):
        ws = yield self.raw_ws(self.broker)
        ws.send(request)
        status, headers, body = yield ws.wait(lambda: ws.response, "an HTTP response")
        self.assertEqual(status, code)
        self.assertEqual(headers["content-length"], "0")
        yield ws.when_closed()
        self.assertEqual(self.broker.broker.sessions, {})
        return headers

    def test_wrong_path_is_404(self):
        """An upgrade request for a path other than /mqtt gets HTTP 404 with an empty body,
        the connection is closed and no session is created."""
        return self.assertHttpError(upgrade_request(path="/other"), 404)

    @inlineCallbacks
    def test_plain_http_is_426(self):
        """A plain HTTP GET (no upgrade) on /mqtt gets 426 Upgrade Required with Upgrade:
        websocket and an empty body; the connection is closed without a session."""
        headers = yield self.assertHttpError(
            b"GET /mqtt HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: curl/8\r\n\r\n", 426)
        self.assertEqual(headers["upgrade"], "websocket")

    def test_plain_http_elsewhere_is_404(self):
        """A plain HTTP GET on another path gets 404 with an empty body; the connection is
        closed without a session."""
        return self.assertHttpError(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 404)

    def test_missing_subprotocol_is_400(self):
        """An upgrade request without a Sec-WebSocket-Protocol header gets 400 with an empty
        body; the connection is closed without a session."""
        return self.assertHttpError(upgrade_request(protocols=None), 400)

    def test_unsupported_subprotocol_is_400(self):
        """An upgrade request offering only a non-MQTT subprotocol (wamp.2.json) gets 400;
        the connection is closed without a session."""
        return self.assertHttpError(upgrade_request(protocols="wamp.2.json"), 400)

    def test_garbage_is_400(self):
        """Bytes that are not an HTTP request (a raw MQTT CONNECT) on a ws listener get 400
        and the connection is closed without a session."""
        return self.assertHttpError(b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\r\n\r\n", 400)

    @inlineCallbacks
    def test_subprotocol_list_picks_mqtt(self):
        """From a list of offered subprotocols the broker picks the MQTT one ("chat, mqtt"
        gives mqtt) and accepts mqttv3.1 too, echoing its choice in the 101 response."""
        for offered, chosen in (("chat, mqtt", "mqtt"), ("mqttv3.1", "mqttv3.1")):
            ws = yield self.raw_ws(self.broker)
            status, headers, _ = yield ws.upgrade(protocols=offered)
            self.assertEqual((status, headers["sec-websocket-protocol"]), (101, chosen))
            yield ws.close()


class FrameTests(WebSocketTestCase):

    def setUp(self) -> None:
        self.broker = self.start_broker(WS_CONFIG + "max_ws_frame_size = 4096\n")

    @inlineCallbacks
    def test_packets_split_across_frames(self):
        """MQTT packets are a byte stream over WebSocket: packets cut across binary frames,
        several in one frame, and a fragmented message with a ping between its fragments are
        all read; the replies arrive in order and the ping gets a pong with the same
        payload."""
        ws = yield self.raw_ws(self.broker)
        status, _, _ = yield ws.upgrade()
        self.assertEqual(status, 101)
        connect = connect_packet("splitter")
        sub = subscribe_packet("s/t", 0, packet_id=7)
        pub1 = publish_packet("s/t", b"one")
        pub2 = publish_packet("s/t", b"two")
        ping = b"\xc0\x00"
        stream = connect + sub + pub1 + pub2 + ping
        # frame 1: CONNECT + SUBSCRIBE + first 5 bytes of a PUBLISH; frame 2:
        # the rest, another PUBLISH, half a PINGREQ; then a message in two
        # fragments (binary + continuation) holding the last byte.
        cut1 = len(connect + sub) + 5
        cut2 = len(stream) - 1
        ws.frame(OP_BINARY, stream[:cut1])
        ws.frame(OP_BINARY, stream[cut1:cut2])
        ws.frame(OP_BINARY, b"", fin=False)
        ws.frame(OP_PING, b"keep")
        ws.frame(OP_CONT, stream[cut2:], fin=True)
        expected = (CONNACK_OK + b"\x90\x03\x00\x07\x00" + publish_packet("s/t", b"one")
                    + publish_packet("s/t", b"two") + b"\xd0\x00")
        got = yield ws.read_mqtt(len(expected), "CONNACK, SUBACK, 2 PUBLISH, PINGRESP")
        self.assertEqual(got, expected)
        self.assertIn((OP_PONG, b"keep"), ws.control)

    @inlineCallbacks
    def test_several_packets_in_one_frame(self):
        """CONNECT, SUBSCRIBE, PUBLISH and PINGREQ in one binary frame are all handled:
        CONNACK, SUBACK, the PUBLISH and PINGRESP come back in order."""
        ws = yield self.raw_ws(self.broker)
        yield ws.upgrade()
        ws.frame(OP_BINARY, connect_packet("many") + subscribe_packet("m", 0)
                 + publish_packet("m", b"x") + b"\xc0\x00")
        expected = CONNACK_OK + b"\x90\x03\x00\x01\x00" + publish_packet("m", b"x") + b"\xd0\x00"
        got = yield ws.read_mqtt(len(expected))
        self.assertEqual(got, expected)

    @inlineCallbacks
    def test_text_frame_closes_the_connection(self):
        """MQTT over WebSocket must use binary frames: a text frame closes the connection
        and its session goes away."""
        ws = yield self.mqtt_over_ws(self.broker, "texter")
        ws.frame(OP_TEXT, b"\x10\x00")
        yield ws.when_closed()
        yield with_timeout(self._gone("texter"), what="the session to go")

    def _gone(self, client_id: str) -> Deferred:
        if ("", client_id) not in self.broker.broker.sessions:
            return defer.succeed(None)
        return when_session_event(self.broker, client_id, ["gone", "offline"])

    @inlineCallbacks
    def test_frame_over_max_ws_frame_size_closes(self):
        """A frame larger than max_ws_frame_size (4096) closes the connection with close
        code 1009 (message too big)."""
        ws = yield self.mqtt_over_ws(self.broker, "big")
        ws.frame(OP_BINARY, publish_packet("b", b"x" * 4096))
        yield ws.when_closed()
        self.assertIn(OP_CLOSE, [op for op, _ in ws.control])
        code = [struct.unpack("!H", p[:2])[0] for op, p in ws.control if op == OP_CLOSE]
        self.assertEqual(code, [1009])

    @inlineCallbacks
    def test_mqtt_disconnect_closes_the_websocket(self):
        """An MQTT DISCONNECT makes the broker send a WebSocket close frame with code 1000
        (and nothing else) and close once the client replies."""
        ws = yield self.mqtt_over_ws(self.broker, "leaver")
        ws.frame(OP_BINARY, b"\xe0\x00")
        yield ws.wait(lambda: any(op == OP_CLOSE for op, _ in ws.control), "a close frame")
        yield ws.when_closed()  # after our reply to the close frame
        self.assertEqual(ws.control, [(OP_CLOSE, struct.pack("!H", 1000))])

    @inlineCallbacks
    def test_broker_shutdown_closes_websockets(self):
        """Stopping the broker closes both an established MQTT-over-WebSocket connection and
        one still in the middle of its HTTP upgrade."""
        ws = yield self.mqtt_over_ws(self.broker, "stay")
        pending = yield self.raw_ws(self.broker)  # not upgraded yet
        pending.send(b"GET /mqtt HTTP/1.1\r\n")
        yield self.broker.stopService()
        yield ws.when_closed()
        yield pending.when_closed()


# ---------------------------------------------------------------------------
# Listener options: mountpoint, max_connections, protocol versions, PROXY
# ---------------------------------------------------------------------------

class ListenerOptionTests(WebSocketTestCase):

    @inlineCallbacks
    def test_mountpoint_and_versions(self):
        """A ws listener's mountpoint prefixes its sessions (tenant, client id), and its
        allowed_protocol_versions = 4 refuses an MQTT 3.1 CONNECT with CONNACK 0x01 and
        closes the connection."""
        broker = self.start_broker(
            "allow_anonymous = on\nlistener.ws.default = 127.0.0.1:0\n"
            "listener.ws.default.mountpoint = tenant\n"
            "listener.ws.default.allowed_protocol_versions = 4\n")
        ws = yield self.mqtt_over_ws(broker, "mounted")
        self.assertIn(("tenant", "mounted"), broker.broker.sessions)
        old = yield self.raw_ws(broker)
        yield old.upgrade()
        old.frame(OP_BINARY, connect_packet("old", level=3))
        connack = yield old.read_mqtt(4)
        self.assertEqual(connack, b"\x20\x02\x00\x01")
        yield old.when_closed()
        yield ws.close()

    @inlineCallbacks
    def test_max_connections(self):
        """With max_connections = 1 on a ws listener a second client waits in the backlog
        and its upgrade is answered (101) only once the first disconnects; at most one
        connection was open."""
        broker = self.start_broker(
            "allow_anonymous = on\nlistener.ws.default = 127.0.0.1:0\n"
            "listener.ws.default.max_connections = 1\n")
        limiter = broker.listeners["ws.default"].limiter
        first = yield self.mqtt_over_ws(broker, "first")
        second = yield self.raw_ws(broker)  # queued in the kernel's backlog
        second.send(upgrade_request())
        yield first.close()
        status, _, _ = yield second.wait(lambda: second.response, "the second upgrade")
        self.assertEqual(status, 101)
        self.assertEqual(limiter.high_water, 1)

    @inlineCallbacks
    def test_proxy_protocol(self):
        """On a ws listener with proxy_protocol on, the PROXY v1 header before the HTTP
        upgrade sets the session's peer to the client address it carries."""
        broker = self.start_broker(
            "allow_anonymous = on\nlistener.ws.default = 127.0.0.1:0\n"
            "listener.ws.default.proxy_protocol = on\n")
        ws = yield self.raw_ws(broker, before=b"PROXY TCP4 203.0.113.9 127.0.0.1 5555 8080\r\n")
        yield ws.upgrade()
        ws.frame(OP_BINARY, connect_packet("proxied"))
        connack = yield ws.read_mqtt(4)
        self.assertEqual(connack, CONNACK_OK)
        self.assertEqual(self.session(broker, "proxied").peer, ("203.0.113.9", 5555))


class ForwardedForTests(WebSocketTestCase):

    def start(self, trusted: str, cn: bool = False) -> Any:
        text = ("allow_anonymous = on\nlistener.ws.default = 127.0.0.1:0\n"
                "listener.ws.proxy_xff_support = on\n"
                f"listener.ws.proxy_xff_trusted_intermediate = {trusted}\n")
        if cn:
            text += "listener.ws.default.proxy_xff_use_cn_as_username = on\n"
        return self.start_broker(text)

    @inlineCallbacks
    def test_trusted_intermediate(self):
        """With proxy_xff_support on, X-Forwarded-For through trusted intermediates gives
        the session the original client address (the port stays the TCP peer's)."""
        broker = self.start("10.1.1.1;127.0.0.1")
        yield self.mqtt_over_ws(broker, "behind-proxy", headers=(
            ("X-Forwarded-For", "198.51.100.23, 10.1.1.1"),))
        session = self.session(broker, "behind-proxy")
        host, port = session.peer
        self.assertEqual(host, "198.51.100.23")
        self.assertEqual(peer_of(session.conn.transport), (host, port))
        # the port is the TCP peer's
        self.assertEqual(port, session.conn.transport.transport.getPeer().port)

    @inlineCallbacks
    def test_untrusted_intermediate_is_refused(self):
        """An X-Forwarded-For header arriving from a peer that is not a trusted intermediate
        gets the upgrade refused with 403 and the connection closed."""
        broker = self.start("10.1.1.1")
        ws = yield self.raw_ws(broker)
        status, _, _ = yield ws.upgrade(headers=(("X-Forwarded-For", "198.51.100.23"),))
        self.assertEqual(status, 403)
        yield ws.when_closed()

    @inlineCallbacks
    def test_paho_through_a_trusted_intermediate(self):
        """A paho client sending X-Forwarded-For from a trusted address gets the forwarded
        address as its session's peer."""
        broker = self.start("127.0.0.1")
        client = self.ws_paho(self.port_of(broker, "ws.default"), "paho-xff",
                              headers={"X-Forwarded-For": "192.0.2.44"})
        yield in_thread(client.connect)
        self.assertEqual(self.session(broker, "paho-xff").peer[0], "192.0.2.44")

    @inlineCallbacks
    def test_cn_header(self):
        """With proxy_xff_use_cn_as_username on, the X-SSL-Client-CN header is kept on the
        connection as its CN, and an upgrade without that header is refused with 403."""
        broker = self.start("127.0.0.1", cn=True)
        yield self.mqtt_over_ws(broker, "with-cn", headers=(
            ("X-Forwarded-For", "198.51.100.23"), ("X-SSL-Client-CN", "carol")))
        self.assertEqual(self.session(broker, "with-cn").conn.transport.xff_cn, "carol")
        ws = yield self.raw_ws(broker)
        status, _, _ = yield ws.upgrade(headers=(("X-Forwarded-For", "198.51.100.23"),))
        self.assertEqual(status, 403)


# ---------------------------------------------------------------------------
# Back-pressure
# ---------------------------------------------------------------------------

class BackPressureTests(WebSocketTestCase):

    @inlineCallbacks
    def test_slow_reader_is_bounded_by_max_online_messages(self):
        """A ws subscriber that stops reading while a publisher floods 24 MiB is paused, its
        queue stays within max_online_messages (excess dropped as queue_full) and the broker
        buffers under 2 MiB for it; when it reads again its queue drains and a later message
        reaches it."""
        broker = self.start_broker(
            "allow_anonymous = on\nmax_online_messages = 10\n"
            "listener.tcp.default = 127.0.0.1:0\nlistener.ws.default = 127.0.0.1:0\n")
        sub = yield self.mqtt_over_ws(broker, "slow")
        sub.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        sub.frame(OP_BINARY, subscribe_packet("flood", 0))
        suback = yield sub.read_mqtt(5, "SUBACK")
        self.assertEqual(suback, b"\x90\x03\x00\x01\x00")
        sub.transport.pauseProducing()  # the subscriber stops reading

        dropped: Deferred = Deferred()
        original = broker.broker.message_dropped

        def message_dropped(session, message, reason):
            original(session, message, reason)
            if session.client_id == "slow" and not dropped.called:
                dropped.callback(reason)

        self.patch(broker.broker, "message_dropped", message_dropped)
        pub = yield self.connected_raw_client(broker, "flooder")
        chunk = publish_packet("flood", b"p" * 65536)
        total = 0
        while total < 24 * 1024 * 1024:
            pub.send(chunk)
            total += len(chunk)
        # A QoS 1 publish after the flood: its PUBACK means the broker has
        # routed (or dropped) every message of the flood.
        pub.send(publish_packet("sync", b"", qos=1, packet_id=9))
        puback = yield pub.read(4, timeout=30, what="PUBACK after the flood")
        self.assertEqual(puback, b"\x40\x02\x00\x09")
        self.assertTrue(dropped.called)
        self.assertEqual(dropped.result, "queue_full")

        session = self.session(broker, "slow")
        conn = session.conn
        self.assertTrue(conn.paused)
        self.assertLessEqual(len(session.queue), 10)
        tcp = conn.transport.transport
        while getattr(tcp, "transport", None) is not None:
            tcp = tcp.transport
        buffered = len(tcp.dataBuffer) + tcp._tempDataLen
        self.assertLess(buffered, 2 * 1024 * 1024, "the broker buffered the flood")

        # The subscriber reads again: once its queue has drained, a marker
        # published after the flood reaches it (the connection still works).
        drained: Deferred = Deferred()
        resume = conn.resumeProducing

        def resumeProducing():
            resume()
            if not conn.paused and not session.queue and not drained.called:
                drained.callback(None)

        self.patch(conn, "resumeProducing", resumeProducing)
        sub.transport.resumeProducing()
        yield with_timeout(drained, 30, "the subscriber's queue to drain")
        marker = publish_packet("flood", b"the-end")
        pub.send(marker)
        yield sub.wait(lambda: sub.mqtt.endswith(marker) or None, "the marker", timeout=30)
        self.assertGreater(session.dropped, 0)
