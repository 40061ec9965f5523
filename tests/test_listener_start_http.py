"""``vmq-admin listener start --http`` against a running broker: an HTTP
listener created at runtime serves the same modules as a configured one, is
listed, and can be suspended, resumed and deleted like any listener."""
from __future__ import annotations

import json
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.ssl import Certificate
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, readBody

from tests.certs import certs
from tests.support import with_timeout
from tests.test_admin_cli import AdminCliTestCase


class RuntimeHttpListenerTests(AdminCliTestCase):

    @inlineCallbacks
    def get(self, port: int, path: str, scheme: str = "http") -> Any:
        """GET ``path`` on 127.0.0.1:``port``; fires with (status, body).
        https is checked against the test CA."""
        if scheme == "https":
            with open(certs().ca, "rb") as f:
                trust = Certificate.loadPEM(f.read())
            agent = Agent(reactor, BrowserLikePolicyForHTTPS(trustRoot=trust))
        else:
            agent = Agent(reactor)
        response = yield with_timeout(
            agent.request(b"GET", f"{scheme}://127.0.0.1:{port}{path}".encode()),
            what=f"GET {path}")
        body = yield with_timeout(readBody(response), what=f"the body of {path}")
        return response.code, body

    @inlineCallbacks
    def http_row(self, kind: str = "http") -> Any:
        out = yield self.ok("listener", "show", "--format=json")
        rows = [r for r in json.loads(out)["table"] if r["type"] == kind]
        return rows

    @inlineCallbacks
    def test_start_http_listener_serve_health_stop_and_delete(self) -> None:
        """``listener start --http`` creates an HTTP listener (type http in
        ``listener show``) answering ``/health`` and ``/metrics``; stopping it
        refuses new requests (and turns ``/health`` of another HTTP listener
        DOWN, as any stopped listener does), restart serves again, delete
        removes it."""
        out = yield self.ok("listener", "start", "address=127.0.0.1", "port=0", "--http")
        self.assertEqual(out, "Done\n")
        (row,) = yield self.http_row()
        self.assertEqual(row["status"], "running")
        port = int(row["port"])
        self.assertNotEqual(port, 0)
        code, body = yield self.get(port, "/health")
        self.assertEqual((code, json.loads(body)), (200, {"status": "OK"}))
        code, body = yield self.get(port, "/metrics")
        self.assertEqual(code, 200)
        self.assertIn(b"mqtt_connect_received", body)
        # A second runtime HTTP listener with only the health module: its
        # /health sees the first one stopped.
        yield self.ok("listener", "start", "address=127.0.0.1", "port=0", "--http",
                      "--http_modules=vmq_health_http")
        rows = yield self.http_row()
        (other,) = [r for r in rows if int(r["port"]) != port]
        other_port = int(other["port"])
        code, _ = yield self.get(other_port, "/metrics")
        self.assertEqual(code, 404)
        yield self.ok("listener", "stop", "address=127.0.0.1", f"port={port}", "-k")
        code, body = yield self.get(other_port, "/health")
        self.assertEqual(code, 503)
        self.assertEqual(json.loads(body)["status"], "DOWN")
        yield self.ok("listener", "restart", "address=127.0.0.1", f"port={port}")
        code, _ = yield self.get(port, "/health")
        self.assertEqual(code, 200)
        for p in (port, other_port):
            yield self.ok("listener", "delete", "address=127.0.0.1", f"port={p}")
        rows = yield self.http_row()
        self.assertEqual(rows, [])
        self.assertEqual(len(self.service.listeners), 1)

    @inlineCallbacks
    def test_bad_http_options_are_refused(self) -> None:
        """An unknown HTTP module is refused with VerneMQ's one-line error and
        exit 1; nothing is added."""
        out, err, code = yield self.vmq_admin("listener", "start", "address=127.0.0.1",
                                              "port=0", "--http", "--http_modules=nosuch")
        self.assertEqual(code, 1, (out, err))
        self.assertTrue(err.startswith(b"can't start listener due to '"), err)
        self.assertEqual(err.count(b"\n"), 1)
        self.assertEqual(len(self.service.listeners), 1)

    @inlineCallbacks
    def test_start_https_listener(self) -> None:
        """``--ssl --http`` with a certificate and key creates an https
        listener (type https) serving ``/health`` over TLS with that
        certificate; delete removes it."""
        c = certs()
        yield self.ok("listener", "start", "address=127.0.0.1", "port=0", "--ssl", "--http",
                      f"--certfile={c.server}", f"--keyfile={c.server_key}")
        (row,) = yield self.http_row("https")
        port = int(row["port"])
        code, body = yield self.get(port, "/health", scheme="https")
        self.assertEqual((code, json.loads(body)), (200, {"status": "OK"}))
        yield self.ok("listener", "delete", "address=127.0.0.1", f"port={port}")
        rows = yield self.http_row("https")
        self.assertEqual(rows, [])
