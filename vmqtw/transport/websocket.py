"""MQTT over WebSocket: the ``ws`` and ``wss`` listeners, on autobahn.

    [PROXY] -> [TLS] -> MQTTWebSocketProtocol -> WebSocketTransport -> MQTTProtocol

``MQTTWebSocketProtocol`` speaks HTTP/WebSocket; once the upgrade is done it
builds the listener's normal ``MQTTProtocol`` (from the inner ``MQTTFactory``)
and connects it to a ``WebSocketTransport``: an adapter that looks like a TCP
transport, so the MQTT side never knows it runs over WebSocket.

What a client sees (VerneMQ's ``vmq_websocket``, ``vernemq.md`` 1.5):

- One path, ``/mqtt`` (``websocket_path`` changes it); any other path is a 404,
  WebSocket upgrade or not.  A request without ``Upgrade: websocket`` gets 426.
- ``Sec-WebSocket-Protocol`` must list ``mqtt`` or ``mqttv3.1``; the first of
  those the client lists is echoed.  Missing or unsupported: 400.
- MQTT bytes travel in binary frames.  The payload of every frame is handed to
  MQTT as soon as it arrives (no message reassembly), so packets may be split
  across frames and messages, and a frame may hold several packets.
- A text frame closes the connection at once (MQTT 5.0 section 6.0,
  [MQTT-6.0.0-1]; VerneMQ ignores them instead).
- ``max_ws_frame_size`` (broker-wide, default 256 MiB) limits a frame and, as
  in cowboy, a whole (reassembled, decompressed) message: over it the
  connection is failed with close code 1009.  It limits what clients send, not
  what the broker sends.  Other WebSocket protocol errors (e.g. an unmasked
  frame) get a close frame with their code too (1002...).
- Before login (until the broker has sent a successful CONNACK) a frame
  and a message are limited to ``PREAUTH_MAX_MESSAGE`` (100 kB, mosquitto's
  limit for a CONNECT before authentication), counted after decompression:
  over it the connection is failed with 1009 (security, #14: a 597 KiB
  deflate bomb used to make the broker inflate and hold 620 MiB).  autobahn
  bounds each inflate call by what is left of the message budget, so the
  broker never holds more than that from an unauthenticated client.
- permessage-deflate is accepted only with ``websocket_compression = on``
  (our option; VerneMQ always accepts it).  A client whose offer is declined
  talks uncompressed, so clients work either way.
- No WebSocket pings from the broker: MQTT's keep alive does that job.
- HTTP limits as cowboy's: a request line longer than
  ``max_request_line_length`` gets 414, a header value longer than
  ``max_header_value_length``, more than 100 headers or a head over 64 KiB
  gets 431.  The whole request must arrive within 10 s (TLS handshake
  included).

X-Forwarded-For (``ws`` listeners; ignored when ``proxy_protocol`` is on, as
in VerneMQ, where the PROXY header gives the address):

- ``proxy_xff_support = on``: the direct TCP peer must be listed in
  ``proxy_xff_trusted_intermediate`` (``;``-separated IPs; VerneMQ >= 2.1.2),
  else the upgrade is refused (403).  The client address is the first entry of
  ``X-Forwarded-For``; the port stays the TCP peer's.  A missing or malformed
  header is refused (400).
- ``proxy_xff_use_cn_as_username = on`` (with ``proxy_xff_support``): the
  header ``proxy_xff_cn_header`` (default ``x-ssl-client-cn``) must be present
  and non-empty (else 403); its value is offered as the pre-auth username in
  ``WebSocketTransport.xff_cn``.  Without ``proxy_xff_support`` the header is
  not trusted and not used (a warning is logged at startup).

Flow control: the MQTT protocol registers itself as the producer of the real
transport below (through the adapter), so a WebSocket client that stops
reading pauses it exactly as on TCP; its session then queues up to
``max_online_messages``.  Pausing the adapter pauses reading on the real
transport; frames autobahn has already buffered are still delivered (as the
TLS layer does), which MQTTProtocol handles.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Iterable
from urllib.parse import urlsplit

from autobahn.twisted.websocket import WebSocketServerFactory
from autobahn.websocket.compress import (
    PerMessageDeflateOffer, PerMessageDeflateOfferAccept,
)
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IConsumer, IPushProducer, ITransport
from twisted.internet.protocol import connectionDone
from vmqtw.logs import Logger
from vmqtw.transport.websocket_batch import ReadBatching
from twisted.python.failure import Failure
from zope.interface import implementer

from vmqtw.config import ListenerConfig, WebSocketConfig

__all__ = ["websocket_factory", "MQTTWebSocketFactory", "MQTTWebSocketProtocol",
           "WebSocketTransport", "WebSocketSettings", "Refused", "forwarded_for",
           "SUBPROTOCOLS"]

#: The subprotocols VerneMQ accepts.
SUBPROTOCOLS = ("mqtt", "mqttv3.1")

#: Largest HTTP request head (request line + headers) we buffer.
MAX_HEAD = 64 * 1024
#: Most header lines in a request (cowboy's max_headers).
MAX_HEADERS = 100
#: Seconds for the TLS handshake and the whole HTTP upgrade request.
OPEN_HANDSHAKE_TIMEOUT = 10
#: Seconds a client has to answer our close frame.
CLOSE_HANDSHAKE_TIMEOUT = 5
#: Largest frame and message (after decompression) before login (#14).
PREAUTH_MAX_MESSAGE = 100_000

_OPEN = WebSocketProtocol.STATE_OPEN
_CLOSED = WebSocketProtocol.STATE_CLOSED
_CONNECTING = WebSocketProtocol.STATE_CONNECTING

_REASONS = {400: "Bad Request", 403: "Forbidden", 404: "Not Found",
            414: "URI Too Long", 426: "Upgrade Required",
            431: "Request Header Fields Too Large"}


class Refused(Exception):
    """An upgrade request we answer with an HTTP error."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code} {reason}")
        self.code = code
        self.reason = reason


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        addr = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    mapped = getattr(addr, "ipv4_mapped", None)
    return mapped if mapped is not None else addr


@dataclass(frozen=True)
class WebSocketSettings:
    """What a ws/wss listener does, from its typed ``websocket`` settings and
    the broker config."""

    path: str = "/mqtt"
    compression: bool = False
    max_frame_size: int = 268435456
    max_request_line_length: int = 8000
    max_header_value_length: int = 4096
    xff: bool = False
    trusted: frozenset[Any] = frozenset()
    #: header carrying the client certificate's CN, when it is to be used
    cn_header: str | None = None
    #: proxy_xff_use_cn_as_username is on but cannot apply (startup warning)
    cn_header_ignored: bool = False
    #: proxy_xff_* options set but ignored because proxy_protocol is on
    xff_ignored: bool = False

    @classmethod
    def from_listener(cls, listener: ListenerConfig, config: Any = None) -> "WebSocketSettings":
        """The settings of ``listener`` (its ``websocket`` settings, defaults for
        a listener without them) and ``max_ws_frame_size`` from ``config``."""
        ws = listener.websocket or WebSocketConfig()
        frame = getattr(config, "max_ws_frame_size", None) or cls.max_frame_size
        xff, use_cn = ws.xff_support, ws.xff_use_cn_as_username
        xff_ignored = False
        if listener.proxy.enabled and (xff or use_cn):
            xff_ignored = True
            xff = use_cn = False
        trusted = frozenset(filter(None, (_ip(a) for a in ws.xff_trusted_intermediate)))
        cn_header = ws.xff_cn_header.lower() if use_cn and xff else None
        return cls(
            path=ws.path,
            compression=ws.compression,
            max_frame_size=int(frame),
            max_request_line_length=ws.max_request_line_length,
            max_header_value_length=ws.max_header_value_length,
            xff=xff,
            trusted=trusted,
            cn_header=cn_header,
            cn_header_ignored=use_cn and not xff and not xff_ignored,
            xff_ignored=xff_ignored,
        )

    def check_head(self, head: bytes) -> Refused | None:
        """Checks on the raw request head (without the final blank line), done
        before autobahn parses it: cowboy's size limits, and the path."""
        lines = head.split(b"\r\n")
        request_line = lines[0]
        if len(request_line) > self.max_request_line_length:
            return Refused(414, "URI Too Long")
        if len(lines) - 1 > MAX_HEADERS:
            return Refused(431, "Request Header Fields Too Large")
        for line in lines[1:]:
            _, _, value = line.partition(b":")
            if len(value.strip()) > self.max_header_value_length:
                return Refused(431, "Request Header Fields Too Large")
        parts = request_line.split()
        if len(parts) == 3:
            try:
                path = urlsplit(parts[1].decode("latin-1")).path
            except ValueError:
                return Refused(400, "Bad Request")
            if path != self.path:
                return Refused(404, "Not Found")
        return None


def select_subprotocol(offered: list[str]) -> str:
    """The first of the client's subprotocols that MQTT accepts."""
    for name in offered:
        if name in SUBPROTOCOLS:
            return name
    if not offered:
        raise Refused(400, "Sec-WebSocket-Protocol missing (expected mqtt or mqttv3.1)")
    raise Refused(400, "unsupported Sec-WebSocket-Protocol (expected mqtt or mqttv3.1)")


def forwarded_for(settings: WebSocketSettings, direct_host: str,
                  headers: dict[str, str]) -> tuple[str | None, str | None]:
    """Apply the proxy_xff_* rules to an upgrade request.

    ``headers`` has lower-case names (as autobahn gives them).  Returns
    ``(client_ip, cn)``: the X-Forwarded-For client address (None: keep the
    TCP peer) and the CN header's value (None: not used).  Raises Refused.
    """
    if not settings.xff:
        return None, None
    peer = _ip(direct_host)
    if peer is None or peer not in settings.trusted:
        raise Refused(403, "X-Forwarded-For: peer is not a trusted intermediate")
    raw = headers.get("x-forwarded-for", "")
    first = raw.split(",")[0].strip()
    client = _ip(first)
    if client is None:
        raise Refused(400, "X-Forwarded-For missing or malformed")
    cn = None
    if settings.cn_header is not None:
        cn = headers.get(settings.cn_header, "").strip()
        if not cn:
            raise Refused(403, f"{settings.cn_header} header missing or empty")
    return str(client), cn


@implementer(ITransport, IConsumer, IPushProducer)
class WebSocketTransport:
    """The transport MQTTProtocol writes to: bytes become binary messages.

    ``transport`` is the real transport under the WebSocket layer, so the
    identity helper can walk on to TLS and PROXY layers.  ``xff_cn`` is the
    CN header's value when ``proxy_xff_use_cn_as_username`` applies (else
    None): the pre-auth username.
    """

    def __init__(self, ws: "MQTTWebSocketProtocol", peer: Any, xff_cn: str | None) -> None:
        self.ws = ws
        #: duck-typed: TCP, TLS or PROXY, with TCP extras, handle and producer methods
        self.transport: Any = ws.transport
        self.xff_cn = xff_cn
        self.connected = True
        self.disconnecting = False
        self._peer = peer

    # -- ITransport --

    def write(self, data: bytes) -> None:
        if data and self.connected:
            self.ws.send_mqtt(data)

    def writeSequence(self, data: Iterable[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        """Close gracefully: a WebSocket close frame (1000), then TCP."""
        if not self.connected or self.disconnecting:
            return
        self.disconnecting = True
        self.ws.close_websocket()

    def abortConnection(self) -> None:
        if self.ws.state != _CLOSED:
            self.ws.dropConnection(abort=True)

    def getPeer(self) -> Any:
        """The client: the X-Forwarded-For address (with the TCP peer's port)
        when proxy_xff_support applies, else what the layer below says."""
        return self._peer

    def getHost(self) -> Any:
        return self.transport.getHost()

    # -- TCP-ish extras, passed down --

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.transport.setTcpNoDelay(enabled)

    def getTcpNoDelay(self) -> bool:
        return bool(self.transport.getTcpNoDelay())

    def setTcpKeepAlive(self, enabled: bool) -> None:
        self.transport.setTcpKeepAlive(enabled)

    def getTcpKeepAlive(self) -> bool:
        return bool(self.transport.getTcpKeepAlive())

    def getHandle(self) -> Any:
        return self.transport.getHandle()

    def getPeerCertificate(self) -> Any:
        """The TLS client certificate from the layer below (wss), else None."""
        layer = self.transport
        for _ in range(16):
            if layer is None:
                return None
            get = getattr(layer, "getPeerCertificate", None)
            if callable(get):
                return get()
            layer = getattr(layer, "transport", None)
        return None

    # -- IConsumer: the MQTT protocol's output flow control is the real one --

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        if self.transport is not None:
            self.transport.unregisterProducer()

    # -- IPushProducer: MQTT pausing its input pauses reading below --

    def pauseProducing(self) -> None:
        if self.connected:
            self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        if self.connected:
            self.transport.resumeProducing()

    def stopProducing(self) -> None:
        # as Twisted's TCP transports: stop for good, i.e. close
        self.loseConnection()


class MQTTWebSocketProtocol(ReadBatching):
    """One WebSocket connection carrying one MQTT connection."""

    vmq_log = Logger()

    #: The MQTT protocol, once the WebSocket is open (None before and after).
    mqtt: Any = None
    #: Its transport (the adapter).
    mqtt_transport: WebSocketTransport | None = None
    _head_checked = False
    _forwarded: str | None = None
    _xff_cn: str | None = None
    _binary = False
    #: True until a successful CONNACK went out (the pre-auth limits apply).
    preauth = True

    factory: "MQTTWebSocketFactory"
    maxMessagePayloadSize: int  # set by autobahn's setProtocolOptions

    # -- the HTTP request ------------------------------------------------------

    def processHandshake(self) -> None:
        if not self._head_checked:
            end = self.data.find(b"\r\n\r\n")
            if end < 0:
                first = self.data.find(b"\r\n")
                if first < 0 and len(self.data) > self.factory.settings.max_request_line_length:
                    self._refuse(Refused(414, "URI Too Long"))
                elif len(self.data) > MAX_HEAD:
                    self._refuse(Refused(431, "Request Header Fields Too Large"))
                return
            self._head_checked = True
            if end > MAX_HEAD:
                self._refuse(Refused(431, "Request Header Fields Too Large"))
                return
            refused = self.factory.settings.check_head(self.data[:end])
            if refused is not None:
                self._refuse(refused)
                return
        super().processHandshake()

    def _refuse(self, refused: Refused) -> None:
        self.failHandshake(refused.reason, refused.code)

    def sendHttpErrorResponse(self, code: int, reason: str,
                              responseHeaders: Any = None) -> None:
        # autobahn's own answer, made well-formed: a one-line reason phrase,
        # an empty body that says so, and the close that follows.
        phrase = "".join(c if " " <= c < "\x7f" else " " for c in str(reason))[:200]
        headers = list(responseHeaders or [])
        if code == 426:
            headers += [("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13")]
        headers += [("Server", "vmqtw"), ("Content-Length", "0"), ("Connection", "close")]
        lines = [f"HTTP/1.1 {int(code)} {phrase or _REASONS.get(code, 'Error')}"]
        lines += [f"{name}: {value}" for name, value in headers]
        self.sendData(("\r\n".join(lines) + "\r\n\r\n").encode("utf-8"))

    def onConnect(self, request: Any) -> str:
        settings = self.factory.settings
        try:
            if request.path != settings.path:
                raise Refused(404, "Not Found")
            subprotocol = select_subprotocol(list(request.protocols))
            assert self.transport is not None  # the handshake arrived on it
            direct = getattr(self.transport.getPeer(), "host", "")
            self._forwarded, self._xff_cn = forwarded_for(settings, direct, request.headers)
        except Refused as e:
            self.vmq_log.info("refusing WebSocket upgrade from {peer}: {code} {reason}",
                              peer=self.peer, code=e.code, reason=e.reason)
            raise ConnectionDeny(e.code, e.reason) from None
        return subprotocol

    # -- open: the MQTT protocol takes over ------------------------------------

    def onOpen(self) -> None:
        assert self.transport is not None  # the handshake arrived on it
        below = self.transport.getPeer()
        peer = below
        if self._forwarded is not None:
            kind = IPv6Address if ":" in self._forwarded else IPv4Address
            peer = kind("TCP", self._forwarded, getattr(below, "port", 0))
        adapter = WebSocketTransport(self, peer, self._xff_cn)
        mqtt = self.factory.inner.buildProtocol(peer)
        if mqtt is None:
            self.dropConnection(abort=True)
            return
        self.mqtt = mqtt
        self.mqtt_transport = adapter
        mqtt.makeConnection(adapter)

    def send_mqtt(self, data: bytes) -> None:
        """One binary message.  max_ws_frame_size limits what clients send, so
        autobahn's message limit is lifted while we send."""
        if self.state != _OPEN:
            return
        if self.preauth and _is_connack_ok(data):
            self.logged_in()
        limit = self.maxMessagePayloadSize
        self.maxMessagePayloadSize = 0
        try:
            self.sendMessage(data, isBinary=True)
        finally:
            self.maxMessagePayloadSize = limit

    def logged_in(self) -> None:
        """The client is authenticated: lift the pre-auth limits to
        ``max_ws_frame_size``."""
        self.preauth = False
        size = self.factory.settings.max_frame_size
        self.maxFramePayloadSize = self.maxMessagePayloadSize = size

    def close_websocket(self) -> None:
        """Start the closing handshake (autobahn drops TCP on the reply or
        after closeHandshakeTimeout); drop at once when not open."""
        if self.state == _OPEN:
            self.sendClose(1000)
        elif self.state != _CLOSED and self.state != WebSocketProtocol.STATE_CLOSING:
            self.dropConnection(abort=False)

    def close(self, reason_code: int | None = None) -> None:
        """Close this connection as the broker does on shutdown: through MQTT
        when it is running (a 5.0 client gets its DISCONNECT), else directly."""
        if self.mqtt is not None:
            self.mqtt.close(reason_code)
        elif self.state != _CLOSED:
            self.dropConnection(abort=False)

    # -- frames: a byte stream for MQTT -----------------------------------------

    def onMessageBegin(self, isBinary: bool) -> None:
        super().onMessageBegin(isBinary)
        self._binary = isBinary
        if not isBinary and self.state != _CLOSED:
            self.vmq_log.info("closing {peer}: text frame (MQTT needs binary frames)",
                              peer=self.peer)
            self.wasNotCleanReason = "text frame received"
            self.dropConnection(abort=True)

    def onMessageFrameData(self, payload: bytes) -> None:
        # Not accumulated into messages: autobahn counts sizes for its limits,
        # we pass the bytes on as they come (batched per read: ReadBatching).
        if payload and self._binary and self.state == _OPEN and not self.failedByMe:
            batch = self._batch
            if batch is not None:
                batch.append(payload)
                return
            mqtt = self.mqtt
            if mqtt is not None:
                mqtt.dataReceived(payload)

    def onMessageFrameEnd(self) -> None:
        # autobahn infers a list from its own ``[]``, yet resets it to None too
        self.frame_data = None  # type: ignore[assignment]

    def onMessageEnd(self) -> None:
        self.message_data = []

    # -- the end --------------------------------------------------------------------

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        try:
            super().connectionLost(reason)
        finally:
            call = getattr(self, "closeHandshakeTimeoutCall", None)
            if call is not None:
                try:
                    call.cancel()
                except Exception:
                    pass
                self.closeHandshakeTimeoutCall = None
            adapter, mqtt = self.mqtt_transport, self.mqtt
            self.mqtt = None
            if adapter is not None:
                adapter.connected = False
            if mqtt is not None:
                mqtt.connectionLost(reason)


def _is_connack_ok(data: bytes) -> bool:
    """Whether ``data`` (what MQTT writes) starts with a CONNACK whose return or
    reason code is 0: the first packet a server sends is CONNACK (or a 5.0
    AUTH while authenticating), so this is the moment login is done."""
    if len(data) < 4 or data[0] != 0x20:
        return False
    pos = 1
    for _ in range(4):  # remaining length: a variable byte integer
        byte = data[pos]
        pos += 1
        if not byte & 0x80:
            break
        if pos >= len(data):
            return False
    return len(data) > pos + 1 and data[pos + 1] == 0


class _Timers:
    """autobahn's timer interface on our reactor, one DelayedCall per timer
    (its batched timers leave calls behind that trial reports, and ignore the
    reactor a test passes in)."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor

    def call_later(self, delay: float, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return self.reactor.callLater(delay, fn, *args, **kwargs)


def _accept_deflate(offers: list[Any]) -> Any:
    for offer in offers:
        if isinstance(offer, PerMessageDeflateOffer):
            return PerMessageDeflateOfferAccept(offer)
    return None


class MQTTWebSocketFactory(WebSocketServerFactory):
    """The WebSocket layer of one ws/wss listener."""

    # autobahn's factory is not generic over its protocol, Twisted's Factory[P] is
    protocol = MQTTWebSocketProtocol  # type: ignore[assignment]
    log_ = Logger()

    def __init__(self, listener: ListenerConfig, inner: Any, reactor: Any) -> None:
        super().__init__(server="vmqtw", reactor=reactor)
        self._batched_timer = _Timers(reactor)
        self.listener = listener
        self.inner = inner
        #: the MQTTFactory, under the name wrapping factories use, so code
        #: walking a listener's chain (e.g. for broker settings) finds it
        self.wrappedFactory = inner
        config = getattr(getattr(inner, "broker", None), "config", None)
        self.settings = settings = WebSocketSettings.from_listener(listener, config)
        self.isSecure = listener.kind == "wss"
        self.setProtocolOptions(
            webStatus=False,
            utf8validateIncoming=False,      # text frames close the connection anyway
            # raised to max_ws_frame_size once the client is logged in
            maxFramePayloadSize=min(settings.max_frame_size, PREAUTH_MAX_MESSAGE),
            maxMessagePayloadSize=min(settings.max_frame_size, PREAUTH_MAX_MESSAGE),
            autoFragmentSize=0,
            openHandshakeTimeout=OPEN_HANDSHAKE_TIMEOUT,
            closeHandshakeTimeout=CLOSE_HANDSHAKE_TIMEOUT,
            autoPingInterval=0,
            autoPingTimeout=0,
            requireMaskedClientFrames=True,
            failByDrop=False,                # protocol errors: close frame, then TCP
            tcpNoDelay=True,
            allowNullOrigin=True,
            perMessageCompressionAccept=_accept_deflate if settings.compression
            else (lambda offers: None),
        )
        key = listener.key
        if settings.xff_ignored:
            self.log_.warn("{key}: proxy_xff_* options are ignored because proxy_protocol "
                           "is on (the PROXY header gives the client address)", key=key)
        if settings.cn_header_ignored:
            self.log_.warn("{key}: proxy_xff_use_cn_as_username needs proxy_xff_support "
                           "= on (only a trusted proxy's header is believed); ignored",
                           key=key)
        if settings.xff and not settings.trusted:
            self.log_.warn("{key}: proxy_xff_support is on but "
                           "proxy_xff_trusted_intermediate is empty: every upgrade will "
                           "be refused", key=key)


def websocket_factory(listener: ListenerConfig, inner: Any, reactor: Any) -> MQTTWebSocketFactory:
    """The WebSocket layer for a ws/wss listener around ``inner`` (the MQTTFactory)."""
    return MQTTWebSocketFactory(listener, inner, reactor)
