"""The PROXY protocol (v1 text and v2 binary), as sent by HAProxy and cloud
load balancers in front of the broker: the sans-IO parser.

- a parser (``ProxyHeaderParser`` / ``parse_header``) that detects v1
  or v2 from the first byte, accepts a header split across any number of
  reads, is bounded (v1: 107 bytes including CRLF; v2: ``V2_MAX_LENGTH`` bytes
  after the fixed 16) and returns a ``ProxyInfo`` or raises a
  ``ProxyHeaderError`` subclass;
  ``ProxyHeaderError`` subclass.

The wrapping factory is in ``vmqtw.transport.proxy.wrapper``, the endpoint
wrapper and the ``proxy:`` description parser in ``.endpoint``.

Spec: haproxy's ``doc/proxy-protocol.txt``.  VerneMQ (Ranch) behaviour: a LOCAL
command (health checks) and v1 ``UNKNOWN`` fall back to the socket's own
addresses; the header timeout is 10 s.
"""
from __future__ import annotations

import ipaddress
import re
import socket
import struct
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, Mapping

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress

__all__ = [
    "HEADER_TIMEOUT", "V1_MAX_LENGTH", "V2_MAX_LENGTH", "V2_SIGNATURE",
    "ProxyHeaderError", "NotAProxyHeader", "UnsupportedProxyHeader",
    "MalformedProxyHeader", "ProxyHeaderTooLong",
    "SSLInfo", "ProxyInfo", "ProxyHeaderParser", "parse_header", "crc32c",
]

#: Seconds a new connection has to deliver its whole PROXY header (VerneMQ/Ranch: 10 s).
HEADER_TIMEOUT = 10.0
#: The longest v1 line, CRLF included (the spec's worst case).
V1_MAX_LENGTH = 107
#: Cap on the v2 length field (address block + TLVs).  The field allows 65535;
#: HAProxy's largest headers (UNIX addresses plus SSL, ALPN, authority, unique
#: id TLVs) stay well under 1 KiB.
V2_MAX_LENGTH = 4096

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "

# v2 TLV types (doc/proxy-protocol.txt 2.2)
PP2_TYPE_ALPN = 0x01
PP2_TYPE_AUTHORITY = 0x02
PP2_TYPE_CRC32C = 0x03
PP2_TYPE_NOOP = 0x04
PP2_TYPE_UNIQUE_ID = 0x05
PP2_TYPE_SSL = 0x20
PP2_SUBTYPE_SSL_VERSION = 0x21
PP2_SUBTYPE_SSL_CN = 0x22
PP2_SUBTYPE_SSL_CIPHER = 0x23
PP2_SUBTYPE_SSL_SIG_ALG = 0x24
PP2_SUBTYPE_SSL_KEY_ALG = 0x25
PP2_TYPE_NETNS = 0x30

PP2_CLIENT_SSL = 0x01
PP2_CLIENT_CERT_CONN = 0x02
PP2_CLIENT_CERT_SESS = 0x04

LOCAL = "LOCAL"
PROXY = "PROXY"


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------

class ProxyHeaderError(Exception):
    """The bytes are not a valid PROXY header; ``str(error)`` is the reason."""


class NotAProxyHeader(ProxyHeaderError):
    """The first bytes match neither the v1 ``PROXY `` prefix nor the v2 signature
    (e.g. a client speaking MQTT directly to a PROXY listener)."""


class UnsupportedProxyHeader(ProxyHeaderError):
    """A v2 version, command, family/transport or a v1 protocol we must refuse."""


class MalformedProxyHeader(ProxyHeaderError):
    """Right signature, wrong contents (bad address, port, TLV, checksum...)."""


class ProxyHeaderTooLong(ProxyHeaderError):
    """v1 line without CRLF within 107 bytes, or v2 length over the cap."""


# ---------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------

def _empty() -> Mapping[int, bytes]:
    return MappingProxyType({})


@dataclass(frozen=True)
class SSLInfo:
    """The v2 PP2_TYPE_SSL TLV: what the TLS-terminating proxy saw."""

    client: int
    verify: int
    version: str | None = None
    cn: str | None = None
    cipher: str | None = None
    sig_alg: str | None = None
    key_alg: str | None = None

    @property
    def ssl(self) -> bool:
        """The client connected to the proxy over TLS."""
        return bool(self.client & PP2_CLIENT_SSL)

    @property
    def certificate(self) -> bool:
        """The client presented a certificate (on this connection or its session)."""
        return bool(self.client & (PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS))

    @property
    def verified_cn(self) -> str | None:
        """The CN, but only if the proxy verified the client's certificate."""
        if self.ssl and self.certificate and self.verify == 0 and self.cn:
            return self.cn
        return None


@dataclass(frozen=True)
class ProxyInfo:
    """A parsed PROXY header.

    ``source``/``destination`` are Twisted addresses, or None when the header
    says to use the connection's own (v2 LOCAL, v1 UNKNOWN, v2 AF_UNSPEC).
    ``tlvs`` maps each v2 TLV type to its value (first occurrence).
    """

    version: int
    command: str = PROXY
    family: str = "AF_UNSPEC"      # AF_INET, AF_INET6, AF_UNIX, AF_UNSPEC
    transport: str = "UNSPEC"      # STREAM, DGRAM, UNSPEC
    source: Any = None
    destination: Any = None
    tlvs: Mapping[int, bytes] = field(default_factory=_empty)
    ssl: SSLInfo | None = None
    length: int = 0                # bytes the header took on the wire

    @property
    def ssl_cn(self) -> str | None:
        """The TLS client CN, only when the proxy says the client used TLS,
        presented a certificate and the certificate was verified (verify == 0)."""
        return self.ssl.verified_cn if self.ssl is not None else None

    @property
    def authority(self) -> str | None:
        value = self.tlvs.get(PP2_TYPE_AUTHORITY)
        return value.decode("utf-8", "replace") if value is not None else None

    @property
    def alpn(self) -> bytes | None:
        return self.tlvs.get(PP2_TYPE_ALPN)

    @property
    def unique_id(self) -> bytes | None:
        return self.tlvs.get(PP2_TYPE_UNIQUE_ID)

    def describe(self) -> str:
        """One line for logs: ``v2 PROXY 10.0.0.1:1234 -> 10.0.0.2:1883``."""
        def addr(a: Any) -> str:
            if a is None:
                return "?"
            host = getattr(a, "host", None)
            if host is None:
                return f"local:{getattr(a, 'name', '')}"
            return f"[{host}]:{a.port}" if ":" in host else f"{host}:{a.port}"
        if self.source is None:
            return f"v{self.version} {self.command} (connection's own addresses)"
        return f"v{self.version} {self.command} {addr(self.source)} -> {addr(self.destination)}"


# ---------------------------------------------------------------------------
# CRC32C (Castagnoli, RFC 4960 appendix B), for the PP2_TYPE_CRC32C TLV
# ---------------------------------------------------------------------------

def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C = _crc32c_table()


def crc32c_python(data: bytes) -> int:
    """CRC32C in pure Python: the fallback when the ``crc32c`` package (C,
    hardware-accelerated; an install requirement) cannot be imported.  About
    1 us per byte: a 64 KiB header costs ~60 ms of the reactor thread."""
    crc = 0xFFFFFFFF
    table = _CRC32C
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _c_crc32c() -> Any:
    try:
        from crc32c import crc32c as c_crc32c
    except ImportError:
        return None
    return c_crc32c


#: The C implementation (``crc32c`` package), or None when it is missing.
crc32c_c = _c_crc32c()
#: CRC32C of a whole buffer: the C implementation when available (#14).
crc32c = crc32c_c if crc32c_c is not None else crc32c_python


# ---------------------------------------------------------------------------
# The parser
# ---------------------------------------------------------------------------

_PORT_RE = re.compile(rb"0|[1-9][0-9]{0,4}")


def _excerpt(data: bytes, n: int = 16) -> str:
    return repr(data[:n]) + ("..." if len(data) > n else "")


def _v1_port(raw: bytes) -> int:
    if not _PORT_RE.fullmatch(raw) or int(raw) > 65535:
        raise MalformedProxyHeader(f"v1: bad port {raw!r}")
    return int(raw)


def _v1_address(raw: bytes, family: bytes) -> str:
    try:
        text = raw.decode("ascii")
        if family == b"TCP4":
            return str(ipaddress.IPv4Address(text))  # rejects leading zeros
        if "%" in text:  # no scope ids
            raise ValueError(text)
        return str(ipaddress.IPv6Address(text))
    except ValueError:
        raise MalformedProxyHeader(f"v1: bad {family.decode()} address {raw!r}") from None


def _parse_v1(buf: bytes) -> tuple[ProxyInfo, int] | None:
    end = buf.find(b"\n", 0, V1_MAX_LENGTH)
    if end < 0:
        if len(buf) >= V1_MAX_LENGTH:
            raise ProxyHeaderTooLong(f"v1: no CRLF within {V1_MAX_LENGTH} bytes")
        if b"\r" in buf[:-1]:  # a CR that is not the last byte so far
            raise MalformedProxyHeader("v1: CR without LF")
        return None
    if b"\r" in buf[:end - 1]:
        raise MalformedProxyHeader("v1: CR without LF")
    if end == 0 or buf[end - 1:end] != b"\r":
        raise MalformedProxyHeader("v1: LF without CR")
    line = buf[:end - 1]
    if any(b < 0x20 or b > 0x7E for b in line):
        raise MalformedProxyHeader("v1: not printable US-ASCII")
    parts = line.split(b" ")
    proto = parts[1] if len(parts) > 1 else b""
    length = end + 1
    if proto == b"UNKNOWN":  # the rest of the line is to be ignored
        return ProxyInfo(version=1, command=PROXY, length=length), length
    if proto not in (b"TCP4", b"TCP6"):
        raise UnsupportedProxyHeader(f"v1: unknown protocol {proto!r}")
    if len(parts) != 6:
        raise MalformedProxyHeader(f"v1: {len(parts)} fields instead of 6")
    src = _v1_address(parts[2], proto)
    dst = _v1_address(parts[3], proto)
    sport, dport = _v1_port(parts[4]), _v1_port(parts[5])
    cls: Any = IPv4Address if proto == b"TCP4" else IPv6Address
    return ProxyInfo(
        version=1, command=PROXY, family="AF_INET" if proto == b"TCP4" else "AF_INET6",
        transport="STREAM", source=cls("TCP", src, sport), destination=cls("TCP", dst, dport),
        length=length,
    ), length


def _tlvs(data: bytes, base: int, what: str) -> list[tuple[int, int, bytes]]:
    """(type, offset of the value relative to ``base``, value) for each TLV."""
    out = []
    i = 0
    while i < len(data):
        if len(data) - i < 3:
            raise MalformedProxyHeader(f"v2: truncated {what} TLV header")
        kind = data[i]
        (n,) = struct.unpack_from("!H", data, i + 1)
        start = i + 3
        if start + n > len(data):
            raise MalformedProxyHeader(f"v2: {what} TLV 0x{kind:02x} longer than the header")
        out.append((kind, base + start, data[start:start + n]))
        i = start + n
    return out


def _text(value: bytes | None, encoding: str = "ascii") -> str | None:
    if value is None:
        return None
    return value.decode(encoding, "replace")


def _ssl_info(value: bytes) -> SSLInfo:
    if len(value) < 5:
        raise MalformedProxyHeader("v2: SSL TLV shorter than 5 bytes")
    client = value[0]
    (verify,) = struct.unpack_from("!I", value, 1)
    subs: dict[int, bytes] = {}
    for kind, _, sub in _tlvs(value[5:], 0, "SSL sub"):
        subs.setdefault(kind, sub)
    cn_raw = subs.get(PP2_SUBTYPE_SSL_CN)
    cn: str | None = None
    if cn_raw is not None:
        try:
            cn = cn_raw.decode("utf-8")
        except UnicodeDecodeError:
            cn = None  # never an identity we cannot represent exactly
    return SSLInfo(
        client=client, verify=verify,
        version=_text(subs.get(PP2_SUBTYPE_SSL_VERSION)), cn=cn or None,
        cipher=_text(subs.get(PP2_SUBTYPE_SSL_CIPHER)),
        sig_alg=_text(subs.get(PP2_SUBTYPE_SSL_SIG_ALG)),
        key_alg=_text(subs.get(PP2_SUBTYPE_SSL_KEY_ALG)),
    )


# family/transport byte -> (family, transport, address block length)
_V2_FAMILIES = {
    0x00: ("AF_UNSPEC", "UNSPEC", 0),
    0x11: ("AF_INET", "STREAM", 12),
    0x12: ("AF_INET", "DGRAM", 12),
    0x21: ("AF_INET6", "STREAM", 36),
    0x22: ("AF_INET6", "DGRAM", 36),
    0x31: ("AF_UNIX", "STREAM", 216),
    0x32: ("AF_UNIX", "DGRAM", 216),
}


def _unix_name(raw: bytes) -> str:
    if raw[:1] == b"\x00":  # abstract namespace: keep the leading NUL
        name = b"\x00" + raw[1:].rstrip(b"\x00")
    else:
        name = raw.split(b"\x00", 1)[0]
    return name.decode("utf-8", "replace")


def _parse_v2(buf: bytes, max_length: int) -> tuple[ProxyInfo, int] | None:
    if len(buf) < 16:
        return None
    ver_cmd, fam = buf[12], buf[13]
    (length,) = struct.unpack_from("!H", buf, 14)
    if ver_cmd >> 4 != 2:
        raise UnsupportedProxyHeader(f"v2: unsupported version {ver_cmd >> 4}")
    command = ver_cmd & 0x0F
    if command not in (0, 1):
        raise UnsupportedProxyHeader(f"v2: unknown command {command}")
    if length > max_length:
        raise ProxyHeaderTooLong(f"v2: length {length} over the limit of {max_length}")
    total = 16 + length
    if len(buf) < total:
        return None
    if command == 0:
        # LOCAL (health checks): use the connection's own addresses and ignore
        # the protocol block, family included.
        return ProxyInfo(version=2, command=LOCAL, length=total), total
    if fam not in _V2_FAMILIES:
        raise UnsupportedProxyHeader(f"v2: unknown family/transport 0x{fam:02x}")
    family, transport, alen = _V2_FAMILIES[fam]
    body = buf[16:total]
    if family == "AF_UNSPEC":
        # Nothing says where addresses would end: ignore the whole block.
        return ProxyInfo(version=2, command=PROXY, length=total), total
    if length < alen:
        raise MalformedProxyHeader(f"v2: {family} needs {alen} address bytes, "
                                   f"the header has {length}")
    kind: Literal["TCP", "UDP"] = "TCP" if transport == "STREAM" else "UDP"
    src: Any
    dst: Any
    if family == "AF_INET":
        sport, dport = struct.unpack_from("!HH", body, 8)
        src = IPv4Address(kind, socket.inet_ntop(socket.AF_INET, body[0:4]), sport)
        dst = IPv4Address(kind, socket.inet_ntop(socket.AF_INET, body[4:8]), dport)
    elif family == "AF_INET6":
        sport, dport = struct.unpack_from("!HH", body, 32)
        src = IPv6Address(kind, socket.inet_ntop(socket.AF_INET6, body[0:16]), sport)
        dst = IPv6Address(kind, socket.inet_ntop(socket.AF_INET6, body[16:32]), dport)
    else:
        src = UNIXAddress(_unix_name(body[0:108]))
        dst = UNIXAddress(_unix_name(body[108:216]))
    tlvs: dict[int, bytes] = {}
    ssl: SSLInfo | None = None
    for t, offset, value in _tlvs(body[alen:], 16 + alen, ""):
        if t == PP2_TYPE_CRC32C:
            if len(value) != 4:
                raise MalformedProxyHeader("v2: CRC32C TLV is not 4 bytes")
            zeroed = buf[:offset] + b"\x00\x00\x00\x00" + buf[offset + 4:total]
            if crc32c(zeroed) != struct.unpack("!I", value)[0]:
                raise MalformedProxyHeader("v2: CRC32C checksum mismatch")
        if t in tlvs:
            continue
        tlvs[t] = value
        if t == PP2_TYPE_SSL:
            ssl = _ssl_info(value)
    return ProxyInfo(
        version=2, command=PROXY, family=family, transport=transport, source=src,
        destination=dst, tlvs=MappingProxyType(tlvs), ssl=ssl, length=total,
    ), total


def _check_prefix(buf: bytes) -> int:
    """1 or 2 if ``buf`` may start a v1 or v2 header; raises otherwise."""
    first = buf[:1]
    if first == b"P":
        prefix = V1_PREFIX
        version = 1
    elif first == b"\r":
        prefix = V2_SIGNATURE
        version = 2
    else:
        raise NotAProxyHeader(f"not a PROXY protocol header: {_excerpt(buf)}")
    n = min(len(buf), len(prefix))
    if buf[:n] != prefix[:n]:
        raise NotAProxyHeader(f"not a PROXY protocol header: {_excerpt(buf)}")
    return version


def parse_header(buf: bytes, max_v2_length: int = V2_MAX_LENGTH
                 ) -> tuple[ProxyInfo, int] | None:
    """Parse a PROXY header at the start of ``buf``.

    Returns ``(info, header length)``, or None if ``buf`` is a valid beginning
    but the header is not complete yet.  Raises a ``ProxyHeaderError`` as soon
    as the bytes cannot be a valid header.
    """
    if not buf:
        return None
    version = _check_prefix(buf)
    if version == 1:
        if len(buf) < len(V1_PREFIX):
            return None
        return _parse_v1(buf)
    if len(buf) < len(V2_SIGNATURE):
        return None
    return _parse_v2(buf, max_v2_length)


class ProxyHeaderParser:
    """Incremental: ``feed()`` bytes as they come; returns the ``ProxyInfo``
    once the header is complete (then ``leftover`` holds the bytes after it),
    None while more bytes are needed, and raises ``ProxyHeaderError``."""

    def __init__(self, max_v2_length: int = V2_MAX_LENGTH) -> None:
        self.max_v2_length = max_v2_length
        self.info: ProxyInfo | None = None
        self.leftover = b""
        self._buf = b""

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> ProxyInfo | None:
        if self.info is not None:
            raise ValueError("the header is already complete")
        buf = self._buf + data
        result = parse_header(buf, self.max_v2_length)
        if result is None:
            self._buf = buf
            return None
        self.info, n = result
        self.leftover = buf[n:]
        self._buf = b""
        return self.info
