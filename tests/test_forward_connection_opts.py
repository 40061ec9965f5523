"""``forward_connection_opts`` over a real TLS connection: auth_on_register gets the
certificate the client presented, as DER."""
from __future__ import annotations

from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from zope.interface import implementer

from tests.certs import certs
from tests.support import CONNACK_OK, BrokerTestCase, connect_packet, stop_broker
from tests.tls_clients import client_context, tls_connect
from vmqtw.auth.api import OK, IAuthOnRegister
from vmqtw.config import load
from vmqtw.service import BrokerService


@implementer(IAuthOnRegister)
class Recorder:
    def __init__(self) -> None:
        self.requests: list[Any] = []

    def auth_on_register(self, request: Any) -> Any:
        self.requests.append(request)
        return OK


class ForwardConnectionOptsTLSTests(BrokerTestCase):
    timeout = 60

    @inlineCallbacks
    def test_client_certificate_reaches_auth_on_register(self):
        """On an ssl listener with ``forward_connection_opts = on`` (and client
        certificates asked for, ``require_certificate``) the request to
        auth_on_register carries the certificate the client presented (DER) and the
        listener's kind; on a listener without the option it does not."""
        c = certs()
        plugin = Recorder()
        text = "allow_anonymous = off\n"
        for name, forward in (("fwd", "on"), ("nofwd", "off")):
            text += (f"listener.ssl.{name} = 127.0.0.1:0\n"
                     f"listener.ssl.{name}.certfile = {c.server}\n"
                     f"listener.ssl.{name}.keyfile = {c.server_key}\n"
                     f"listener.ssl.{name}.cafile = {c.ca}\n"
                     f"listener.ssl.{name}.require_certificate = on\n"
                     f"listener.ssl.{name}.forward_connection_opts = {forward}\n")
        service = BrokerService(load(self.write_config(text)), reactor,
                                plugins=[("rec", plugin)])
        service.privilegedStartService()
        service.startService()
        self.addCleanup(stop_broker, service)
        cert, key = c.client("alice")
        for name in ("fwd", "nofwd"):
            client = yield tls_connect(self.port_of(service, f"ssl.{name}"),
                                       client_context(ca=c.ca, cert=cert, key=key), self)
            client.send(connect_packet(name, username="alice", password=b"x"))
            self.assertEqual((yield client.read(4)), CONNACK_OK)
        with open(cert, "rb") as f:
            expected = x509.load_pem_x509_certificate(f.read()).public_bytes(Encoding.DER)
        got = {r.client_id: (r.client_cert, r.listener_kind) for r in plugin.requests}
        self.assertEqual(got, {"fwd": (expected, "ssl"), "nofwd": (None, "ssl")})
