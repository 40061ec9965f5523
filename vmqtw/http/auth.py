"""API-key guard for the HTTP modules (VerneMQ's ``vmq_auth_apikey``)."""
from __future__ import annotations

import base64
import binascii
from typing import Any

from twisted.web.resource import IResource, Resource
from zope.interface import implementer

from vmqtw.admin.apikeys import ApiKeys

REALM_HEADER = b'Authorization realm="VerneMQ"'


def header(request: Any, name: bytes) -> str | None:
    """A request header as text (None when absent)."""
    value = request.getHeader(name)
    if value is None:
        return None
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def request_key(request: Any) -> str | None:
    """The key a request presents: ``x-api-key``, else the Basic user name."""
    key = header(request, b"x-api-key")
    if key:
        return key.strip()
    auth = header(request, b"authorization") or ""
    scheme, _, value = auth.partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return decoded.partition(":")[0] or None


class Unauthorized(Resource):
    isLeaf = True

    def render(self, request: Any) -> bytes:
        request.setResponseCode(401)
        request.setHeader(b"www-authenticate", REALM_HEADER)
        request.setHeader(b"content-type", b"text/plain")
        return b"unauthorized"


@implementer(IResource)
class KeyGuard:
    """Lets a request reach ``wrapped`` only with a valid key of ``scope``."""

    def __init__(self, wrapped: Any, keys: ApiKeys, scope: str) -> None:
        self.wrapped = wrapped
        self.keys = keys
        self.scope = scope

    @property
    def isLeaf(self) -> bool:  # a leaf keeps the rest of the path for render
        return bool(self.wrapped.isLeaf)

    def _allowed(self, request: Any) -> bool:
        key = request_key(request)
        return key is not None and self.keys.valid(key, self.scope)

    def getChildWithDefault(self, path: bytes, request: Any) -> Any:
        if not self._allowed(request):
            return Unauthorized()
        return self.wrapped.getChildWithDefault(path, request)

    def render(self, request: Any) -> bytes:
        if not self._allowed(request):
            return Unauthorized().render(request)
        return self.wrapped.render(request)

    def putChild(self, path: bytes, child: Any) -> None:
        self.wrapped.putChild(path, child)


def guarded(resource: Any, keys: ApiKeys, scope: str, mode: str) -> Any:
    """``resource`` behind the key check when ``mode`` is ``apikey``."""
    return KeyGuard(resource, keys, scope) if mode == "apikey" else resource
