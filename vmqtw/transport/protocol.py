"""MQTT over a byte stream: the Twisted adapter around ``vmqtw.connection``.

``MQTTProtocol`` is a plain ``Protocol``: it never knows whether TLS, PROXY or
WebSocket layers sit under it.  The MQTT rules live in a sans-IO
``vmqtw.connection.Connection``; this module only moves bytes: it feeds input
to the connection, keeps the output buffer (written once per input batch by
``Broker.flush``, held back while the store is not yet durable where the
rules ask for it), and is the producer its transport pauses and resumes.
"""
from __future__ import annotations

from collections import deque
from typing import Any

from twisted.internet.error import ConnectionAborted, ConnectionDone
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from vmqtw.auth.chain import Authorizer
from vmqtw.auth.hooks import Notifier
from vmqtw.codec.decoder import Decoder
from vmqtw.codec.errors import CodecError
from vmqtw.config import ListenerConfig
from vmqtw.connection import Connection
from vmqtw.connection.state import (  # noqa: F401  (re-exported: tests and tools use them)
    AUTHENTICATING, AWAIT_AUTH, AWAIT_CONNECT, CLOSED, CONNECTED, MAX_PACKET, ClientView,
)
from vmqtw.connection.transport import IConnectionTransport
from vmqtw.core.broker import Broker
from vmqtw.core.mqtt5 import Outbound
from vmqtw.core.session import IClientConnection, Session
from vmqtw.metrics import SOCKET_ERROR
from vmqtw.transport._twisted_private import socket_under, write_now
from vmqtw.transport.identity import client_certificate_der, peer_of, preauth_username

ABORT_AFTER = 5  # seconds a closing peer may take to read what we still send


@implementer(IClientConnection, IConnectionTransport)
class MQTTProtocol(Protocol):
    """One client connection: Twisted I/O on the outside, a ``Connection`` inside.

    It is also the object the core writes deliveries to (a session's ``conn``).
    """

    def __init__(self, factory: MQTTFactory) -> None:
        self.factory = factory
        self.broker = factory.broker
        self.protocol_level = 4           # set by the connection once CONNECT is accepted
        self.out5: Outbound | None = None  # MQTT 5.0: what the client lets us send it
        self.paused = False
        self.peer: tuple[str, int] = ("", 0)
        self._closing = False
        self._out: list[bytes] = []
        self._socket: Any = None  # the TCP/unix connection at the bottom (see flush)
        self._direct = False      # nothing but pass-through wrappers above it
        # Output held until the store is durable (see write_durable): segments
        # [durable() requested, durable, chunks], oldest first.
        # (an empty tuple until first needed: an empty deque costs ~600 bytes)
        self._gates: deque[list[Any]] | tuple[()] = ()
        self._abort: Any = None
        self.counters = factory.broker.counters
        #: Bytes flushed to the transport: ``bytes_sent``, summed by the metrics
        #: at scrape time (an attribute costs less per flush than a list slot).
        self.bytes_out = 0
        self.connection = connection = Connection(
            self, factory.broker, factory.authorizer, factory.listener, factory.clock,
            factory.notifier, factory.max_packet_size)
        # Input goes straight to the MQTT rules (no extra call per read).
        self.dataReceived = connection.data_received  # type: ignore[method-assign]

    # -- what tests and tools read of the connection ---------------------------------------

    @property
    def state(self) -> int:
        return self.connection.state

    @property
    def session(self) -> Session | None:
        return self.connection.session

    @property
    def client(self) -> ClientView | None:
        return self.connection.client

    # -- connection lifecycle -------------------------------------------------------

    def connectionMade(self) -> None:
        transport = self.transport
        self.peer = peer_of(transport)
        self._socket, self._direct = socket_under(transport)
        try:
            # On the TCP connection itself when there is one: no lookup
            # through the layers above it (the limiter's wrapper forwards
            # unknown attributes with a __getattr__ per call).
            (self._socket or transport).setTcpNoDelay(True)  # type: ignore[union-attr]
        except Exception:  # unix sockets and some wrappers have no Nagle to turn off
            pass
        transport.registerProducer(self, True)  # type: ignore[union-attr]
        self.broker.metrics.connection_opened(self)
        self.connection.connection_made()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if reason.check(ConnectionDone, ConnectionAborted) is None:
            self.counters[SOCKET_ERROR] += 1  # reset by the peer, timed out...
        self._closing = True
        if self._abort is not None and self._abort.active():
            self._abort.cancel()
        self._abort = None
        self._out = []
        self._gates = ()
        self.broker.metrics.connection_closed(self)
        connection = self.connection
        connection.connection_lost()
        # The connection and this adapter point at each other: once closed, the
        # connection talks to a stand-in, so both are freed by reference
        # counting when the last reference goes, not by a full run of the cyclic
        # garbage collector (see ``vmqtw.gcpolicy``: full runs are rare).
        connection.transport = GONE
        connection.write = connection.write_durable = GONE.write

    # -- IClientConnection: what the core calls -----------------------------------------

    def session_taken_over(self) -> None:
        """Another connection claimed our session: publish the will, close."""
        self.connection.session_taken_over()

    def close(self, reason_code: int | None = None) -> None:
        """Close as the MQTT rules say (a DISCONNECT with ``reason_code`` to a
        connected 5.0 client)."""
        self.connection.close(reason_code)

    # -- IConnectionTransport: output ----------------------------------------------------

    def write(self, data: bytes) -> None:
        gates = self._gates
        if gates:  # behind output that waits for the store: keep the order
            gates[-1][2].append(data)
            return
        if not self._out:
            self.broker.dirty.append(self)
        self._out.append(data)

    def write_durable(self, data: bytes) -> None:
        """Write ``data`` once everything the store has recorded so far is
        durable (a PUBACK/PUBREC for a message recorded for a persistent
        session, ...).  Everything written after it waits too, so the client
        sees output in order.  The store is asked once per input batch (in
        ``flush``), not once per packet."""
        if not self.broker.store.unsynced():
            self.write(data)
            return
        gates = self._gates
        if not gates or gates[-1][0]:  # a new segment: durable() is asked at the next flush
            if gates.__class__ is tuple:
                gates = self._gates = deque()
            gates.append([False, False, []])  # type: ignore[union-attr]
            self.broker.dirty.append(self)
        gates[-1][2].append(data)  # type: ignore[misc]

    def _gate_durable(self, _: Any, segment: list[Any]) -> None:
        """The store is durable up to ``segment``: release the segments that may go."""
        segment[1] = True
        gates = self._gates
        if not gates or not gates[0][1]:  # closed meanwhile, or an older one still waits
            return
        released: list[bytes] = []
        while gates and gates[0][1]:
            released.extend(gates.popleft()[2])
        if self.broker.traced:  # Broker.flush traced _out before these joined it
            self._trace_sent(released)
        self._out.extend(released)
        if not self._flushing:
            self.flush()

    def _gate_failed(self, failure: Failure, segment: list[Any]) -> None:
        """The store could not write: the held acknowledgements are never sent;
        the client will send its messages again."""
        if self._closing:
            return
        self._gates = ()
        self.connection.store_failed(failure.getErrorMessage())

    _flushing = False

    def flush(self) -> None:
        gates = self._gates
        if gates and not gates[-1][0]:
            self._flushing = True
            try:
                for segment in gates:
                    if not segment[0]:
                        segment[0] = True
                        self.broker.store.durable().addCallbacks(
                            self._gate_durable, self._gate_failed,
                            callbackArgs=(segment,), errbackArgs=(segment,))
            finally:
                self._flushing = False
        out = self._out
        if out:
            self._out = []
            transport = self.transport
            if transport is not None and not self._closing:
                data = out[0] if len(out) == 1 else b"".join(out)
                self.bytes_out += len(data)
                bottom = self._socket
                if bottom is None or self.paused:
                    transport.write(data)
                else:
                    write_now(transport, bottom, self._direct, data)

    def trace_output(self) -> None:
        """Report the packets about to be flushed to ``vmq-admin trace client`` if
        this connection's client is traced (``Broker.flush`` calls it while a trace
        runs; the packets are decoded again, off the hot path)."""
        self._trace_sent(self._out)

    def _trace_sent(self, chunks: list[bytes]) -> None:
        """Report the packets in ``chunks`` as sent, if the client is traced."""
        client = self.connection.client
        if not chunks or client is None or \
                (client.mountpoint, client.client_id) not in self.broker.traced:
            return
        try:
            packets = Decoder(protocol_level=self.protocol_level).feed(b"".join(chunks))
        except CodecError:
            return
        for packet in packets:
            self.connection.trace("SEND", packet)

    def close_connection(self, final: bytes = b"") -> None:
        if self._closing:
            return
        # Output still waiting for the store is dropped: the client sends its
        # unacknowledged messages again (the service lets the store catch up
        # before it closes connections at shutdown).
        self._gates = ()
        if final:
            self.write(final)
        self.flush()
        self._closing = True
        transport = self.transport
        if transport is None:
            return
        try:
            transport.unregisterProducer()  # type: ignore[attr-defined]
        except Exception:
            pass
        # A peer that stops reading must not keep the socket forever.  Scheduled
        # before loseConnection() (which may call connectionLost() at once) so
        # connectionLost() cancels it.
        self._abort = self.factory.clock.callLater(ABORT_AFTER, self._abort_if_open, transport)
        transport.loseConnection()

    def abort_connection(self) -> None:
        self._closing = True
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    @staticmethod
    def _abort_if_open(transport: Any) -> None:
        if getattr(transport, "connected", False):
            transport.abortConnection()

    # -- IConnectionTransport: input and identity -------------------------------------------

    def pause_reading(self) -> None:
        self.transport.pauseProducing()  # type: ignore[union-attr]

    def resume_reading(self) -> None:
        if self.transport is not None:
            self.transport.resumeProducing()  # type: ignore[attr-defined]

    def preauth_username(self) -> str | None:
        if self._direct:
            # Plain TCP under pass-through wrappers only: no TLS, PROXY or
            # WebSocket layer that could vouch for an identity (and no walk
            # through the wrappers' __getattr__ for attributes none has).
            return None
        return preauth_username(self.transport, self.factory.listener)

    def client_certificate(self) -> bytes | None:
        return client_certificate_der(self.transport)

    # -- IPushProducer: the transport tells us when its write buffer is full -----------

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self.connection.output_resumed()

    def stopProducing(self) -> None:
        self.paused = True


@implementer(IClientConnection, IConnectionTransport)
class _Gone:
    """The transport of a ``Connection`` whose stream has ended: nothing it is
    asked to do has any effect any more."""

    protocol_level = 4
    out5 = None
    paused = True
    peer: tuple[str, int] = ("", 0)

    def write(self, data: bytes) -> None:
        pass

    def write_durable(self, data: bytes) -> None:
        pass

    def flush(self) -> None:
        pass

    def close_connection(self, final: bytes = b"") -> None:
        pass

    def abort_connection(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def session_taken_over(self) -> None:
        pass

    def close(self, reason_code: int | None = None) -> None:
        pass

    def preauth_username(self) -> str | None:
        return None

    def client_certificate(self) -> bytes | None:
        return None


#: The one stand-in for the transports of closed connections.
GONE = _Gone()


class MQTTFactory(Factory):
    """Builds MQTT protocols for one listener."""

    noisy = False  # the listener service logs the listener once, with its settings

    def __init__(self, broker: Broker, authorizer: Authorizer, listener: ListenerConfig,
                 clock: Any, notifier: Notifier | None = None) -> None:
        self.broker = broker
        self.authorizer = authorizer
        self.notifier = notifier if notifier is not None else Notifier([])
        self.listener = listener
        self.listener_name = f"{listener.kind}.{listener.name}"
        self.clock = clock
        size = broker.config.max_message_size
        self.max_packet_size = size if size > 0 else MAX_PACKET

    def buildProtocol(self, addr: Any) -> MQTTProtocol:
        return MQTTProtocol(self)
