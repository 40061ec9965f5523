"""The vmq link over Twisted: ``listener.vmq.<name>`` and one outgoing connection per peer.

Records travel one way on a connection: a node *sends* on the connection it opened to
a peer (:class:`PeerLink`) and *receives* on the connections its peers opened to it
(:class:`LinkServerFactory`), as VerneMQ's ``vmq_cluster_node`` / ``vmq_cluster_com``.

Outgoing records are encoded at once into a per-peer :class:`BatchEncoder` and written
as frames at the end of the reactor turn (``callLater(0)``, armed once per turn) or as
soon as ``outgoing_clustering_flush_threshold`` bytes are pending. While the peer is
unreachable, or its socket is paused by TCP back-pressure, records stay buffered up to
``outgoing_clustering_buffer_size``; beyond it they are dropped and counted.
"""
from __future__ import annotations

import random
from typing import Any, Callable

from twisted.application.internet import backoffPolicy
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IPushProducer, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from vmqtw.cluster.codec import (
    BATCH, DEFAULT_MAX_FRAME_SIZE, HANDSHAKE_MAX_FRAME_SIZE, BatchEncoder, FrameDecoder,
    LinkError, Record, RecordTooLarge, decode_batch, encode_record,
)
from vmqtw.cluster.handshake import (
    ClientHandshake, CookieMismatch, HandshakeError, ServerHandshake,
)
from vmqtw.logs import Logger
from vmqtw.transport._twisted_private import socket_under, write_now

#: VerneMQ defaults.
DEFAULT_BUFFER_SIZE = 64 * 1024 * 1024          # outgoing_clustering_buffer_size
DEFAULT_FLUSH_THRESHOLD = 64 * 1024             # outgoing_clustering_flush_threshold
DEFAULT_HANDSHAKE_TIMEOUT = 5.0

Deliver = Callable[[str, list[Record]], None]


def _peer(transport: Any) -> str:
    try:
        addr = transport.getPeer()
        return f"{addr.host}:{addr.port}"
    except Exception:
        return "?"


# ---------------------------------------------------------------------------
# Receiving side.


def _no_delay(transport: Any) -> None:
    """Turn Nagle's algorithm off: records are batched per reactor turn already, and
    Nagle plus delayed ACKs would hold a small batch back for tens of milliseconds."""
    try:
        transport.setTcpNoDelay(True)
    except Exception:  # a transport without Nagle to turn off (memory, some wrappers)
        pass

class LinkServerProtocol(Protocol):
    """One incoming link: runs the server handshake, then hands every decoded batch to
    the factory's ``deliver(peer_node_name, records)``."""

    log = Logger()
    transport: Any

    def __init__(self, factory: LinkServerFactory) -> None:
        self.factory = factory
        self.handshake = ServerHandshake(factory.node_name, factory.cookie)
        self.decoder = FrameDecoder(HANDSHAKE_MAX_FRAME_SIZE)
        self.peer_name: str | None = None
        self._timer: Any = None
        self._closing = False

    def connectionMade(self) -> None:
        self.factory.protocols.add(self)
        _no_delay(self.transport)
        self._timer = self.factory.reactor.callLater(self.factory.handshake_timeout,
                                                     self._handshake_timed_out)

    def _handshake_timed_out(self) -> None:
        self._timer = None
        self.log.warn("vmq link from {peer}: no handshake within {timeout}s; closing",
                      peer=_peer(self.transport), timeout=self.factory.handshake_timeout)
        self._fail()

    def _fail(self) -> None:
        self._closing = True
        self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        try:
            frames = self.decoder.feed(data)
            for ftype, body in frames:
                if self.peer_name is not None:
                    if ftype != BATCH:
                        raise HandshakeError(f"frame type {ftype} after the handshake")
                    records = decode_batch(body)
                    self.factory.records_received += len(records)
                    self.factory.bytes_received += len(body) + 5
                    self._deliver(records)
                else:
                    self._handshake(ftype, body)
        except CookieMismatch as e:
            self.factory.refused += 1
            self.log.warn("vmq link from {peer}: node {node} sent a wrong cookie; refused",
                          peer=_peer(self.transport), node=self.handshake.claimed_name)
            if e.refusal:
                self.transport.write(e.refusal)
            self._closing = True
            self.transport.loseConnection()
        except LinkError as e:
            self.log.warn("vmq link from {peer} ({node}): {reason}; closing",
                          peer=_peer(self.transport), node=self.peer_name
                          or self.handshake.claimed_name, reason=str(e))
            self._fail()

    def _handshake(self, ftype: int, body: bytes) -> None:
        reply = self.handshake.receive(ftype, body)
        self.transport.write(reply)
        if self.handshake.done:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self.peer_name = self.handshake.peer_name
            self.decoder.max_frame_size = self.factory.max_frame_size
            if self.factory.paused:
                self.transport.pauseProducing()
            self.log.info("vmq link from node {node} ({peer}) established",
                          node=self.peer_name, peer=_peer(self.transport))

    def _deliver(self, records: list[Record]) -> None:
        assert self.peer_name is not None
        try:
            self.factory.deliver(self.peer_name, records)
        except Exception:
            self.log.failure("vmq link from node {node}: delivering records failed",
                             node=self.peer_name)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.factory.protocols.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.peer_name is not None:
            self.log.info("vmq link from node {node} closed", node=self.peer_name)


class LinkServerFactory(Factory):
    """The factory for a ``listener.vmq.<name>`` endpoint.

    :param deliver: called with the sending node's name and each decoded batch.
    :param max_frame_size: ``incoming_clustering_buffer_size``: the largest frame read.

    :meth:`pause` / :meth:`resume` stop and restart reading from every incoming link,
    for a receiver that cannot keep up (TCP then pushes back on the senders).
    """

    noisy = False

    def __init__(self, node_name: str, cookie: str | bytes, deliver: Deliver, *,
                 max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
                 handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
                 reactor: IReactorTime | None = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor
            reactor = _reactor
        self.node_name = node_name
        self.cookie = cookie
        self.deliver = deliver
        self.max_frame_size = max_frame_size
        self.handshake_timeout = handshake_timeout
        self.reactor = reactor
        self.protocols: set[LinkServerProtocol] = set()
        self.paused = False
        self.records_received = 0
        self.bytes_received = 0
        self.refused = 0

    def buildProtocol(self, addr: Any) -> LinkServerProtocol:
        return LinkServerProtocol(self)

    def pause(self) -> None:
        self.paused = True
        for p in self.protocols:
            if p.peer_name is not None:
                p.transport.pauseProducing()

    def resume(self) -> None:
        self.paused = False
        for p in self.protocols:
            if p.peer_name is not None:
                p.transport.resumeProducing()


# ---------------------------------------------------------------------------
# Sending side.

@implementer(IPushProducer)
class LinkClientProtocol(Protocol):
    """The connection a :class:`PeerLink` opened: runs the client handshake, then
    carries the link's frames. It is the transport's push producer, so TCP
    back-pressure pauses and resumes the :class:`PeerLink`'s writing."""

    log = Logger()
    transport: Any

    def __init__(self, link: PeerLink) -> None:
        self.link = link
        self.handshake = ClientHandshake(link.node_name, link.cookie)
        self.decoder = FrameDecoder(HANDSHAKE_MAX_FRAME_SIZE)
        self.ready: Deferred[LinkClientProtocol] = Deferred()
        self.paused = False
        self.on_lost: list[Deferred[None]] = []
        self._timer: Any = None
        #: The TCP connection under the transport (None: another kind), and whether
        #: only pass-through layers sit above it (see :func:`write_now`).
        self.socket: Any = None
        self.direct = False

    def connectionMade(self) -> None:
        self.link._live.add(self)
        _no_delay(self.transport)
        self.socket, self.direct = socket_under(self.transport)
        self.transport.registerProducer(self, True)
        self._timer = self.link.reactor.callLater(self.link.handshake_timeout, self._timeout)
        self.transport.write(self.handshake.start())

    def _timeout(self) -> None:
        self._timer = None
        self._failed(HandshakeError(f"no handshake answer within "
                                    f"{self.link.handshake_timeout}s"))

    def _failed(self, error: Exception) -> None:
        if not self.ready.called:
            self.ready.errback(error)
        self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        try:
            for ftype, body in self.decoder.feed(data):
                if self.handshake.done:
                    raise HandshakeError(f"unexpected frame type {ftype} from the server")
                reply = self.handshake.receive(ftype, body)
                if reply is not None:
                    self.transport.write(reply)
                if self.handshake.done:
                    if self.handshake.peer_name != self.link.peer_name:
                        # A stale address now used by another node of the cluster.
                        raise HandshakeError(f"reached node {self.handshake.peer_name!r} "
                                             f"instead of {self.link.peer_name!r}")
                    if self._timer is not None:
                        self._timer.cancel()
                        self._timer = None
                    self.ready.callback(self)
        except CookieMismatch as e:
            self.log.warn("vmq link to node {node} ({peer}): cookie mismatch: {reason}",
                          node=self.link.peer_name, peer=_peer(self.transport), reason=str(e))
            self._failed(e)
        except LinkError as e:
            self.log.warn("vmq link to node {node} ({peer}): {reason}",
                          node=self.link.peer_name, peer=_peer(self.transport), reason=str(e))
            self._failed(e)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.ready.called:
            self.ready.errback(reason)
        self.link._lost(self)
        waiting, self.on_lost = self.on_lost, []
        for d in waiting:
            d.callback(None)

    # IPushProducer: called by the transport.
    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self.link._writable()

    def stopProducing(self) -> None:
        self.paused = True


class _LinkClientFactory(Factory):
    noisy = False

    def __init__(self, link: PeerLink) -> None:
        self.link = link

    def buildProtocol(self, addr: Any) -> LinkClientProtocol:
        return LinkClientProtocol(self.link)


class PeerLink:
    """The outgoing link to one peer node: buffered, batched, reconnecting.

    :param endpoint: how to reach the peer's ``listener.vmq``.
    :param buffer_size: ``outgoing_clustering_buffer_size``: bytes held while the peer
        is away or slow; records beyond it are dropped and counted.
    :param flush_threshold: ``outgoing_clustering_flush_threshold``: pending bytes that
        trigger a write at once instead of at the end of the reactor turn.
    :param max_frame_size: the largest frame written (the peers'
        ``incoming_clustering_buffer_size``).
    :param retry_policy: seconds to wait before reconnect attempt N (exponential backoff
        by default).
    """

    log = Logger()

    def __init__(self, node_name: str, peer_name: str, endpoint: IStreamClientEndpoint,
                 cookie: str | bytes, *, reactor: Any = None,
                 buffer_size: int = DEFAULT_BUFFER_SIZE,
                 flush_threshold: int = DEFAULT_FLUSH_THRESHOLD,
                 max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
                 handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
                 retry_policy: Callable[[int], float] | None = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor
            reactor = _reactor
        self.node_name = node_name
        self.peer_name = peer_name
        self.endpoint = endpoint
        self.cookie = cookie
        self.reactor = reactor
        self.buffer_size = buffer_size
        self.flush_threshold = flush_threshold
        self.handshake_timeout = handshake_timeout
        self.retry_policy = retry_policy or backoffPolicy(
            0.1, 10.0, 2.0, jitter=lambda: random.uniform(0, 0.1))
        self.factory = _LinkClientFactory(self)
        self._encoder = BatchEncoder(max_frame_size)
        self._proto: LinkClientProtocol | None = None
        self._call: Any = None
        self._dropping = False
        self._running = False
        self._attempt: Deferred[Any] | None = None
        self._retry: Any = None
        self._failures = 0
        self._live: set[LinkClientProtocol] = set()
        #: Called (no arguments) whenever the link comes up, is lost or an attempt fails.
        self.on_change: Callable[[], None] | None = None
        self.records_sent = 0
        self.bytes_sent = 0
        self.records_dropped = 0
        self.bytes_dropped = 0
        #: Called with True once the handshake succeeded and with False when that
        #: connection is lost (netsplit accounting, :mod:`vmqtw.cluster.monitor`).
        self.state_observer: Callable[[bool], None] | None = None

    # -- lifecycle ------------------------------------------------------------
    # A small reconnect loop of our own: ClientService cannot express "the
    # connection was lost while prepareConnection (our handshake) was pending".

    def start(self) -> None:
        """Connect, and keep reconnecting with backoff until :meth:`stop`."""
        if self._running:
            return
        self._running = True
        self._connect()

    def stop(self) -> Deferred[None]:
        """Stop reconnecting and close the connection; buffered records are kept."""
        self._running = False
        for call in (self._call, self._retry):
            if call is not None and call.active():
                call.cancel()
        self._call = self._retry = None
        if self._attempt is not None:
            self._attempt.cancel()
        waits = []
        for proto in list(self._live):
            d: Deferred[None] = Deferred()
            proto.on_lost.append(d)
            proto.transport.abortConnection()
            waits.append(d)
        return DeferredList(waits).addCallback(lambda _: None)

    def _connect(self) -> None:
        self._retry = None
        if not self._running:
            return
        attempt: Deferred[Any] = self.endpoint.connect(self.factory)
        self._attempt = attempt
        attempt.addCallback(self._handshake)
        attempt.addCallbacks(self._ready, self._attempt_failed)

    @staticmethod
    def _handshake(proto: LinkClientProtocol) -> Deferred[LinkClientProtocol]:
        return proto.ready

    def _attempt_failed(self, failure: Failure) -> None:
        self._attempt = None
        self._failures += 1
        self._changed()
        if not self._running:
            return
        delay = self.retry_policy(self._failures)
        if self._failures == 1 or failure.check(CookieMismatch):
            self.log.warn("vmq link to node {node}: {reason}; retrying in {delay:.2f}s",
                          node=self.peer_name, reason=failure.getErrorMessage(), delay=delay)
        self._retry = self.reactor.callLater(delay, self._connect)

    def _ready(self, proto: LinkClientProtocol) -> None:
        self._attempt = None
        self._failures = 0
        if not self._running:
            proto.transport.abortConnection()
            return
        self._proto = proto
        self._changed()
        self.log.info("vmq link to node {node} established", node=self.peer_name)
        if self.state_observer is not None:
            self.state_observer(True)
        self._writable()

    def _lost(self, proto: LinkClientProtocol) -> None:
        self._live.discard(proto)
        if self._proto is not proto:
            return
        self._proto = None
        if self.state_observer is not None:
            self.state_observer(False)
        if self._running:
            self.log.warn("vmq link to node {node} lost; buffering up to {size} bytes",
                          node=self.peer_name, size=self.buffer_size)
            self._failures = 1
            self._changed()
            self._retry = self.reactor.callLater(self.retry_policy(1), self._connect)

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    @property
    def connected(self) -> bool:
        """True once the handshake with the peer succeeded, until the connection ends."""
        return self._proto is not None

    @property
    def failed_attempts(self) -> int:
        """Connection attempts failed in a row (0 once connected)."""
        return self._failures

    @property
    def pending_bytes(self) -> int:
        """Encoded bytes buffered for the peer, not yet written."""
        return self._encoder.pending_bytes

    # -- sending ------------------------------------------------------------

    def send(self, record: Record) -> bool:
        """Queue ``record`` for the peer; ``False`` if it was dropped (buffer full)."""
        return self.send_encoded(encode_record(record))

    def send_encoded(self, data: bytes) -> bool:
        """:meth:`send` for a record already encoded (``encode_record``/``encode_msg``):
        the router encodes a publish once for every peer it goes to."""
        size = len(data)
        enc = self._encoder
        if enc.pending_bytes + size > self.buffer_size:
            return self._drop(size)
        try:
            enc.add_encoded(data)
        except RecordTooLarge:
            return self._drop(size)
        proto = self._proto
        if proto is not None and not proto.paused:
            if enc.pending_bytes >= self.flush_threshold:
                self.flush()
            elif self._call is None:
                self._call = self.reactor.callLater(0, self._turn_end)
        return True

    def _drop(self, size: int) -> bool:
        self.records_dropped += 1
        self.bytes_dropped += size
        if not self._dropping:
            self._dropping = True
            self.log.warn("vmq link to node {node}: outgoing buffer full ({size} bytes); "
                          "dropping records", node=self.peer_name, size=self.buffer_size)
        return False

    def _turn_end(self) -> None:
        self._call = None
        self.flush()

    def _writable(self) -> None:
        if self._encoder.pending_bytes:
            self.flush()

    def flush(self) -> None:
        """Write everything buffered now, if the peer is connected and not paused."""
        if self._call is not None:
            self._call.cancel()
            self._call = None
        proto = self._proto
        if proto is None or proto.paused:
            return
        enc = self._encoder
        if not enc.pending_bytes:
            return
        self.records_sent += enc.pending_records
        self.bytes_sent += enc.pending_bytes
        frames = enc.take()
        bottom = proto.socket
        if bottom is None:
            proto.transport.writeSequence(frames)
        else:
            # Onto the socket now, as the MQTT connections write: Twisted's write()
            # would arm EPOLLOUT and send on the next reactor turn, two epoll_ctl
            # calls and a turn per flush.
            write_now(proto.transport, bottom, proto.direct,
                      frames[0] if len(frames) == 1 else b"".join(frames))
        if self._dropping and enc.pending_bytes == 0:
            self._dropping = False
