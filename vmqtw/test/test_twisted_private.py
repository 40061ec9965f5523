"""The Twisted internals ``vmqtw.transport._twisted_private`` relies on still exist
and still mean what it assumes.  If one of these fails after a Twisted upgrade,
update that module (the direct-socket fast path), not this test."""
from __future__ import annotations

import socket

from twisted.internet import tcp
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.trial.unittest import SynchronousTestCase

from vmqtw.transport import _twisted_private
from vmqtw.transport._twisted_private import (
    PRIVATE_ATTRIBUTES, send_if_idle, socket_under, write_now,
)

UPGRADE = ("Twisted {version} changed tcp.Connection: {what}; the direct-socket fast "
           "path in vmqtw/transport/_twisted_private.py must be updated")


def _version() -> str:
    import twisted
    return twisted.__version__


class PrivateTwistedTests(SynchronousTestCase):

    def setUp(self) -> None:
        self.ours, self.theirs = socket.socketpair()
        self.addCleanup(self.ours.close)
        self.addCleanup(self.theirs.close)
        self.theirs.settimeout(5)
        self.conn = tcp.Connection(self.ours, Protocol(), MemoryReactor())
        self.conn.connected = True  # as the reactor sets it once the socket is connected

    def received(self, n: int) -> bytes:
        data = b""
        for _ in range(n):  # bounded: the bytes are already in the kernel
            if len(data) >= n:
                break
            data += self.theirs.recv(n - len(data))
        return data

    def test_private_attributes_exist(self) -> None:
        """Every private attribute the fast path reads exists on a real
        ``tcp.Connection``; a missing one is reported with a clear message."""
        for name in PRIVATE_ATTRIBUTES:
            if not hasattr(self.conn, name):
                self.fail(UPGRADE.format(version=_version(), what=f"no attribute {name!r}"))

    def test_buffer_accounting(self) -> None:
        """``write()`` counts buffered bytes in ``_tempDataLen``; ``doWrite()``
        sends them and leaves ``offset == len(dataBuffer)`` (nothing buffered):
        the test the fast path uses before sending directly."""
        conn = self.conn
        if conn._tempDataLen or conn.offset != len(conn.dataBuffer):
            self.fail(UPGRADE.format(version=_version(),
                                     what="a new connection looks like it has buffered output"))
        conn.write(b"abc")
        if conn._tempDataLen != 3:
            self.fail(UPGRADE.format(version=_version(),
                                     what="write() no longer counts bytes in _tempDataLen"))
        conn.doWrite()
        self.assertEqual(self.received(3), b"abc")
        if conn._tempDataLen or conn.offset != len(conn.dataBuffer):
            self.fail(UPGRADE.format(version=_version(),
                                     what="doWrite() leaves output accounted as buffered"))

    def test_write_now_sends_without_a_reactor_turn(self) -> None:
        """``write_now`` on a direct connection puts the bytes on the socket at
        once, leaving nothing in Twisted's buffer."""
        write_now(self.conn, self.conn, True, b"hello")
        self.assertEqual(self.received(5), b"hello")
        self.assertEqual((self.conn._tempDataLen, self.conn.dataBuffer), (0, b""))

    def test_send_if_idle(self) -> None:
        """``send_if_idle`` sends at once when nothing is buffered below, and
        queues behind buffered output (without flushing it) when something is,
        so the bytes keep their order."""
        send_if_idle(self.conn, self.conn, b"first")
        self.assertEqual(self.received(5), b"first")
        self.assertEqual((self.conn._tempDataLen, self.conn.dataBuffer), (0, b""))
        self.conn.write(b"AB")
        send_if_idle(self.conn, self.conn, b"CD")
        self.assertEqual(self.conn._tempDataLen, 4)  # buffered, in order, not sent yet
        self.conn.doWrite()
        self.assertEqual(self.received(4), b"ABCD")

    def test_write_now_through_a_wrapper(self) -> None:
        """Through a non pass-through layer ``write_now`` writes via that layer
        and then flushes the socket with ``doWrite()``."""
        write_now(self.conn, self.conn, False, b"wrapped")
        self.assertEqual(self.received(7), b"wrapped")

    def test_socket_under(self) -> None:
        """``socket_under`` finds the ``tcp.Connection`` under pass-through
        ``ProtocolWrapper`` layers (direct) and nothing under other transports."""
        wrapper = ProtocolWrapper(WrappingFactory(None), Protocol())  # type: ignore[arg-type]
        wrapper.makeConnection(self.conn)
        self.assertEqual(socket_under(wrapper), (self.conn, True))
        self.assertEqual(socket_under(StringTransport()), (None, False))

    def test_the_module_is_the_only_user(self) -> None:
        """The adapter reaches Twisted internals only through this module."""
        import inspect

        from vmqtw.transport import protocol
        source = inspect.getsource(protocol)
        for name in PRIVATE_ATTRIBUTES[:3]:
            self.assertNotIn(name, source)
        self.assertIn("write_now", inspect.getsource(_twisted_private))
