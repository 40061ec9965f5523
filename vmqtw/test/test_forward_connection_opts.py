"""``forward_connection_opts`` (VerneMQ): with it on, auth_on_register also gets the
client's TLS certificate; the listener's name, address and kind are always there."""
from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from vmqtw.auth.api import OK, IAuthOnRegister
from vmqtw.codec import Connect
from vmqtw.test.connection_harness import BASE, Rig, connack

DER = b"0\x82\x01\x00fake-der-certificate"


@implementer(IAuthOnRegister)
class Recorder:
    def __init__(self) -> None:
        self.requests: list[Any] = []

    def auth_on_register(self, request: Any) -> Any:
        self.requests.append(request)
        return OK


class ForwardConnectionOptsTests(SynchronousTestCase):

    def register(self, config: str, certificate: bytes | None) -> Any:
        plugin = Recorder()
        rig = Rig(config.replace("allow_anonymous = on", "allow_anonymous = off"),
                  [("rec", plugin)])
        c = rig.client()
        c.transport.certificate = certificate
        c.send(Connect("c1", 4, username="u", password=b"p"))
        self.assertEqual(c.take(), connack(0))
        (request,) = plugin.requests
        return request

    def test_on_forwards_the_client_certificate(self) -> None:
        """With ``forward_connection_opts = on`` the request carries the client
        certificate (DER) and the listener's name, address and kind."""
        request = self.register(BASE + "listener.tcp.t.forward_connection_opts = on\n", DER)
        self.assertEqual(request.client_cert, DER)
        self.assertEqual((request.listener, request.listener_address, request.listener_kind),
                         ("tcp.t", "127.0.0.1:1883", "tcp"))

    def test_on_without_a_certificate(self) -> None:
        """With it on and no client certificate, ``client_cert`` is None."""
        request = self.register(BASE + "listener.tcp.t.forward_connection_opts = on\n", None)
        self.assertIsNone(request.client_cert)

    def test_off_by_default(self) -> None:
        """By default (off, as in VerneMQ) the certificate is not passed on."""
        request = self.register(BASE, DER)
        self.assertIsNone(request.client_cert)
