"""TLS on the vmq link (``listener.vmqs.NAME``).

The server side is the usual TLS endpoint wrapper of a listener
(:func:`vmqtw.transport.endpoints.listener_endpoint`, with the listener's SSL options).
A node whose link listener is ``vmqs`` announces its address as ``tls:HOST:PORT``, and
the other nodes connect to it with TLS: they check its certificate against the
``cafile`` of their own ``vmqs`` listener (the system's trust store without one) and
present their own ``certfile`` / ``keyfile`` as client certificate (so
``require_certificate = on`` works when the certificate is signed directly by a CA in
the peer's ``cafile``).
"""
from __future__ import annotations

from typing import Any, Callable

from OpenSSL import crypto
from twisted.internet import ssl

from vmqtw.config import ListenerConfig
from vmqtw.transport.tls import OptionError, load_material, read_settings

#: The prefix of an announced address that wants TLS.
TLS_PREFIX = "tls:"

ClientCreator = Callable[[str], Any]


def split_address(address: str) -> tuple[bool, str, int]:
    """``(tls, host, port)`` of an announced member address."""
    tls = address.startswith(TLS_PREFIX)
    if tls:
        address = address[len(TLS_PREFIX):]
    host, _, port = address.rpartition(":")
    return tls, host.strip("[]"), int(port)


def client_creator(listener: ListenerConfig | None) -> ClientCreator:
    """A function from a peer's host name to the TLS options to connect to it with,
    built from this node's ``vmqs`` ``listener`` (None: trust the system's CAs and
    present no certificate).  Raises :class:`OptionError` for an unusable file."""
    trust: Any = None
    client_cert: Any = None
    if listener is not None:
        material = load_material(read_settings(listener))
        if material.ca:
            trust = ssl.trustRootFromCertificates(
                [ssl.Certificate(crypto.X509.from_cryptography(c)) for c in material.ca])
        if material.leaf is not None and material.key is not None:
            client_cert = ssl.PrivateCertificate.fromCertificateAndKeyPair(
                ssl.Certificate(crypto.X509.from_cryptography(material.leaf)),
                ssl.KeyPair(crypto.PKey.from_cryptography_key(material.key)))

    def creator(host: str) -> Any:
        return ssl.optionsForClientTLS(host, trustRoot=trust, clientCertificate=client_cert)
    return creator


__all__ = ["TLS_PREFIX", "OptionError", "client_creator", "split_address"]
