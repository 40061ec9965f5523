"""The PROXY protocol (v1 and v2), laid out like Twisted's ``haproxy`` package.

- ``parser``: the sans-IO header parser, ``ProxyInfo`` and the errors;
- ``wrapper``: ``ProxyProtocolFactory``, the wrapping protocol and factory;
- ``endpoint``: ``ProxyServerEndpoint`` and the ``proxy:`` description parser.

Everything public is re-exported here (``vmqtw.transport.proxy`` was one module).
"""
from vmqtw.transport.proxy.endpoint import ProxyServerEndpoint, ProxyServerParser
from vmqtw.transport.proxy.parser import (
    HEADER_TIMEOUT, LOCAL, PROXY, V1_MAX_LENGTH, V1_PREFIX, V2_MAX_LENGTH, V2_SIGNATURE,
    MalformedProxyHeader, NotAProxyHeader, ProxyHeaderError, ProxyHeaderParser,
    ProxyHeaderTooLong, ProxyInfo, SSLInfo, UnsupportedProxyHeader, crc32c, parse_header,
)
from vmqtw.transport.proxy.wrapper import (
    ProxyProtocolFactory, ProxyProtocolWrapper, proxy_factory,
)

__all__ = [
    "HEADER_TIMEOUT", "LOCAL", "PROXY", "V1_MAX_LENGTH", "V1_PREFIX", "V2_MAX_LENGTH",
    "V2_SIGNATURE", "MalformedProxyHeader", "NotAProxyHeader", "ProxyHeaderError",
    "ProxyHeaderParser", "ProxyHeaderTooLong", "ProxyInfo", "SSLInfo",
    "UnsupportedProxyHeader", "crc32c", "parse_header", "ProxyProtocolFactory",
    "ProxyProtocolWrapper", "proxy_factory", "ProxyServerEndpoint", "ProxyServerParser",
]
