"""The handshake callbacks of a TLS listener's context.

``_Verifier`` is the verify callback: OpenSSL's verdict plus VerneMQ's rules
(no self-signed client leaf; the CRL file is only a list of revoked
certificates, unless ``crl_fail_closed``).  ``_make_psk_callback`` builds the
TLS-PSK server callback, which looks the client's identity up in the PSK file's
table and records it in ``PSK_IDENTITIES``.  ``vmqtw.transport.tls`` installs
both on the contexts it builds and re-exports ``PSK_IDENTITIES``.
"""
from __future__ import annotations

import weakref
from typing import Any

from cryptography.hazmat.bindings.openssl.binding import Binding
from OpenSSL import SSL, crypto

from vmqtw.logs import Logger
from vmqtw.transport.identity import certificate_cn, peer_of

__all__ = ["PSK_IDENTITIES"]

_binding = Binding()
_ffi, _lib = _binding.ffi, _binding.lib

# The namespace of vmqtw.transport.tls: these lines are the listener's TLS log.
log = Logger(namespace="vmqtw.tls")


#: pyOpenSSL Connection -> the PSK identity its client sent (captured in the
#: PSK callback; there is no SSL_get_psk_identity in the bindings).
PSK_IDENTITIES: "weakref.WeakKeyDictionary[SSL.Connection, str]" = weakref.WeakKeyDictionary()

# X509 verify errors that only say the CRL file has no (current) CRL for an
# issuer.  VerneMQ treats crlfile as a list of revoked certificates, so these
# do not refuse a client.
_X509_V_ERR_UNABLE_TO_GET_CRL = 3
_X509_V_ERR_CRL_NOT_YET_VALID = 11
_X509_V_ERR_CRL_HAS_EXPIRED = 12
_CRL_FRESHNESS_ERRORS = frozenset({_X509_V_ERR_UNABLE_TO_GET_CRL, _X509_V_ERR_CRL_NOT_YET_VALID,
                                   _X509_V_ERR_CRL_HAS_EXPIRED})


def _self_signed(cert: crypto.X509) -> bool:
    c = cert.to_cryptography()
    if c.issuer != c.subject:
        return False
    try:
        c.verify_directly_issued_by(c)
    except Exception:
        return False
    return True


def _verify_error(errno: int) -> str:
    try:
        return _ffi.string(_lib.X509_verify_cert_error_string(errno)).decode()
    except Exception:
        return f"error {errno}"


class _Verifier:
    """The verify callback: OpenSSL's verdict, plus VerneMQ's rules (no
    self-signed leaf; the CRL file is only a list of revoked certificates)."""

    def __init__(self, name: str, crl: bool, fail_closed: bool = False) -> None:
        self.name = name
        self.crl = crl
        #: crl_fail_closed: CRL freshness errors refuse too.
        self.fail_closed = fail_closed
        #: With fail_closed: why the CRL file is unusable now (every client
        #: certificate is refused while set), else None.
        self.broken: str | None = None

    def __call__(self, conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int,
                 ok: int) -> bool:
        try:
            if self.broken is not None:
                self._refuse(conn, cert, depth, f"crl_fail_closed: {self.broken}")
                return False
            if ok:
                if depth == 0 and _self_signed(cert):
                    self._refuse(conn, cert, depth, "self-signed client certificate")
                    return False
                return True
            if self.crl and errno in _CRL_FRESHNESS_ERRORS and not self.fail_closed:
                return True
            self._refuse(conn, cert, depth, _verify_error(errno))
            return False
        except Exception:
            log.failure("listener {listener}: error while verifying a client certificate",
                        listener=self.name)
            return False

    def _refuse(self, conn: SSL.Connection, cert: crypto.X509, depth: int,
                reason: str) -> None:
        try:
            cn = certificate_cn(cert)
        except Exception:
            cn = None
        proto = conn.get_app_data()
        peer = peer_of(proto) if proto is not None else ("", 0)
        log.info("listener {listener}: client certificate refused ({peer}): {reason} "
                 "(depth {depth}, CN {cn!r})", listener=self.name, peer=f"{peer[0]}:{peer[1]}",
                 reason=reason, depth=depth, cn=cn)


def _make_psk_callback(table: dict[bytes, bytes], name: str) -> Any:
    def server_cb(ssl: Any, identity: Any, psk_out: Any, max_len: int) -> int:
        if identity == _ffi.NULL:
            return 0
        ident = _ffi.string(identity)
        key = table.get(ident)
        conn = SSL.Connection._reverse_mapping.get(ssl)
        if key is None or len(key) > max_len:
            proto = conn.get_app_data() if conn is not None else None
            host, port = peer_of(proto) if proto is not None else ("", 0)
            log.info("listener {listener}: unknown PSK identity {identity!r} from {peer}",
                     listener=name, identity=ident.decode("utf-8", "replace"),
                     peer=f"{host}:{port}")
            return 0  # the handshake fails
        _ffi.memmove(psk_out, key, len(key))
        if conn is not None:
            PSK_IDENTITIES[conn] = ident.decode("utf-8", "replace")
        return len(key)

    return _ffi.callback("unsigned int(SSL *, const char *, unsigned char *, unsigned int)",
                         server_cb, onerror=lambda *exc: 0)
