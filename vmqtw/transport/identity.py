"""Identity learned by lower layers (PROXY header, TLS), found by walking the
transport chain from the MQTT protocol downwards."""
from __future__ import annotations

from typing import Any, Iterator


def transports(transport: Any) -> Iterator[Any]:
    """The transport and every transport beneath it (wrappers expose ``.transport``)."""
    seen = 0
    while transport is not None and seen < 16:
        yield transport
        transport = getattr(transport, "transport", None)
        seen += 1


def peer_of(transport: Any) -> tuple[str, int]:
    """(host, port) of the client as the outermost layer that knows it reports it.

    A PROXY-protocol layer overrides ``getPeer()`` with the real client address,
    so the first transport in the chain wins.
    """
    try:
        addr = transport.getPeer()
    except Exception:
        return ("", 0)
    host = getattr(addr, "host", None)
    if host is None:  # unix sockets
        name = getattr(addr, "name", None)
        return ("local:" + (name.decode() if isinstance(name, bytes) else str(name or "")), 0)
    return (host, getattr(addr, "port", 0))


def certificate_cn(cert: Any) -> str | None:
    """The first CommonName of a pyOpenSSL X509 or cryptography Certificate."""
    if cert is None:
        return None
    to_crypto = getattr(cert, "to_cryptography", None)
    if to_crypto is not None:
        cert = to_crypto()
    from cryptography.x509.oid import NameOID
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not attrs:
        return None
    value = attrs[0].value
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def client_certificate_der(transport: Any) -> bytes | None:
    """The DER bytes of the TLS client certificate found down the transport
    chain (the first TLS layer that has one), else None."""
    for layer in transports(transport):
        get_cert = getattr(layer, "getPeerCertificate", None)
        if not callable(get_cert):
            continue
        try:
            cert = get_cert()
        except Exception:
            cert = None
        if cert is None:
            continue
        from cryptography.hazmat.primitives.serialization import Encoding
        to_crypto = getattr(cert, "to_cryptography", None)
        if to_crypto is not None:
            cert = to_crypto()
        return bytes(cert.public_bytes(Encoding.DER))
    return None


def preauth_username(transport: Any, listener: Any) -> str | None:
    """The one place where an identity vouched for below MQTT replaces the
    CONNECT username, before the auth chain runs (auth still runs, as in VerneMQ).

    Looked for down the transport chain, outermost first:
    - the CN header of a TLS-terminating HTTP proxy in front of a ws listener
      (``xff_cn``, set by the WebSocket layer under ``proxy_xff_use_cn_as_username``);
    - a PROXY v2 header's verified TLS client CN (``proxy_info.ssl_cn``), when
      the listener's ``proxy_protocol_use_cn_as_username`` is on;
    - with ``use_identity_as_username`` on: a TLS-PSK identity
      (``psk_identity`` on a layer), or the client certificate's CN.
    None means: keep the username from CONNECT.
    """
    for layer in transports(transport):
        # A WebSocket layer sets xff_cn only when proxy_xff_use_cn_as_username
        # applies (it refuses the upgrade when the header is missing).
        cn = getattr(layer, "xff_cn", None)
        if cn:
            return str(cn)
    proxy = getattr(listener, "proxy", None)
    use_proxy_cn = proxy is not None and proxy.enabled and proxy.use_cn_as_username
    tls = getattr(listener, "tls", None)
    use_identity = tls is not None and tls.use_identity_as_username
    if not (use_proxy_cn or use_identity):
        return None
    for layer in transports(transport):
        if use_proxy_cn:
            cn = getattr(getattr(layer, "proxy_info", None), "ssl_cn", None)
            if cn:
                return str(cn)
        if use_identity:
            psk = getattr(layer, "psk_identity", None)
            if psk:
                return str(psk)
            get_cert = getattr(layer, "getPeerCertificate", None)
            if callable(get_cert):
                try:
                    cn = certificate_cn(get_cert())
                except Exception:
                    cn = None
                if cn:
                    return cn
    return None
