"""HTTP listener settings from VerneMQ's keys, and the request limits."""
from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource

from vmqtw.http.settings import http_settings, module_list
from vmqtw.http.site import DEFAULT_MODULES, make_site


class SettingsTests(SynchronousTestCase):

    def test_defaults(self) -> None:
        """No keys: VerneMQ's default modules, no auth overrides, on-behalf-of."""
        s = http_settings({}, {})
        self.assertEqual(s.modules, DEFAULT_MODULES)
        self.assertNotIn("vmq_http_pub", s.modules)
        self.assertEqual(dict(s.auth_modes), {})
        self.assertEqual((s.pub.mode, s.pub.client_id), ("on-behalf-of", "http-pub"))
        self.assertEqual((s.max_request_line_length, s.max_header_value_length), (8000, 4096))

    def test_module_lists(self) -> None:
        """Brackets are optional; [] means the global list; unknown names are errors."""
        self.assertEqual(module_list("[vmq_metrics_http, vmq_health_http]", "k"),
                         ("vmq_metrics_http", "vmq_health_http"))
        self.assertEqual(module_list("vmq_http_pub", "k"), ("vmq_http_pub",))
        s = http_settings({"http_modules": "[vmq_health_http]"}, {"http_modules": "[]"})
        self.assertEqual(s.modules, ("vmq_health_http",))
        s = http_settings({"http_modules": "[vmq_health_http]"},
                          {"http_modules": "vmq_status_http"})
        self.assertEqual(s.modules, ("vmq_status_http",))
        with self.assertRaises(ValueError) as e:
            module_list("[vmq_mgmt_http]", "listener.http.x.http_modules")
        self.assertIn("vmq_mgmt_http", str(e.exception))

    def test_auth_modes(self) -> None:
        """http_module.M.auth.mode globally and per listener (the listener wins)."""
        s = http_settings({"http_module.vmq_metrics_http.auth.mode": "apikey",
                           "http_module.vmq_http_mgmt_api.auth.mode": "noauth"},
                          {"http_module.vmq_http_mgmt_api.auth.mode": "apikey"})
        self.assertEqual(dict(s.auth_modes), {"vmq_metrics_http": "apikey",
                                              "vmq_http_mgmt_api": "apikey"})
        self.assertRaises(ValueError, http_settings,
                          {"http_module.vmq_metrics_http.auth.mode": "basic"}, {})

    def test_pub_settings(self) -> None:
        """vmq_http_pub.* globally, http_modules.vmq_http_pub.* per listener (only
        values longer than 3 characters count there, as in VerneMQ)."""
        s = http_settings({"vmq_http_pub.mqtt_auth.mode": "predefined",
                           "vmq_http_pub.mqtt_auth.user": "svc",
                           "vmq_http_pub.mqtt_auth.password": "pw",
                           "vmq_http_pub.mqtt_auth.client-id": "http-client",
                           "vmq_http_pub.mountpoint": "mp"},
                          {"http_modules.vmq_http_pub.mqtt_auth.user": "listener-user",
                           "http_modules.vmq_http_pub.mountpoint": "x"})
        self.assertEqual((s.pub.mode, s.pub.user, s.pub.password, s.pub.client_id,
                          s.pub.mountpoint),
                         ("predefined", "listener-user", "pw", "http-client", "mp"))
        self.assertRaises(ValueError, http_settings, {"vmq_http_pub.mqtt_auth.mode": "x"}, {})

    def test_limits(self) -> None:
        """The request limits are positive whole numbers."""
        s = http_settings({}, {"max_request_line_length": "100",
                               "max_header_value_length": "50"})
        self.assertEqual((s.max_request_line_length, s.max_header_value_length), (100, 50))
        self.assertRaises(ValueError, http_settings, {}, {"max_request_line_length": "0"})
        self.assertRaises(ValueError, http_settings, {}, {"max_header_value_length": "x"})


class Hello(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        return b"hello"


class Raw(Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.closed: Deferred = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any = None) -> None:
        self.closed.callback(self.data)


class LimitTests(TestCase):

    def setUp(self) -> None:
        self.port = reactor.listenTCP(0, make_site(Hello(), 200, 40), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)

    @inlineCallbacks
    def send(self, request: bytes) -> Any:
        client = Raw()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port.getHost().port)
        yield connectProtocol(endpoint, client)
        client.transport.write(request)
        data = yield client.closed.addTimeout(10, reactor)
        return data

    @inlineCallbacks
    def test_within_limits(self) -> None:
        """A request within both limits is served."""
        data = yield self.send(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        self.assertTrue(data.startswith(b"HTTP/1.1 200"), data)
        self.assertTrue(data.endswith(b"hello"))

    @inlineCallbacks
    def test_long_header_value(self) -> None:
        """A header value over max_header_value_length gets 400 and a close."""
        data = yield self.send(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 41 +
                               b"\r\n\r\n")
        self.assertTrue(data.startswith(b"HTTP/1.1 400"), data)

    @inlineCallbacks
    def test_long_request_line(self) -> None:
        """A request line over max_request_line_length is not served."""
        data = yield self.send(b"GET /" + b"a" * 300 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertNotIn(b"hello", data)
        self.assertFalse(data.startswith(b"HTTP/1.1 200"))
