"""The admin channel over a real unix socket, and how vmq-admin finds it."""
from __future__ import annotations

import os
import shutil
import socket
import stat
import tempfile

from twisted.internet import threads
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase

from vmqtw.admin.channel import (
    AdminChannelService, ChannelError, remove_stale_socket, request,
)
from vmqtw.admin.cli import main, read_keys, socket_path
from vmqtw.admin.commands import Admin
from vmqtw.test.test_protocol import Harness


class ChannelTests(TestCase):

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="vmqtw-ch-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.path = os.path.join(self.dir, "sub", "admin.sock")
        self.hn = Harness()
        self.service = AdminChannelService(Admin(self.hn.broker), self.path)
        self.service.startService()
        self.addCleanup(self.service.stopService)

    def test_socket_mode(self) -> None:
        """The socket is created (with its directory) with mode 0600."""
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)

    @inlineCallbacks
    def test_request_and_answer(self) -> None:
        """A command line goes in, exit code and rendered output come back;
        --format=json selects the JSON writer."""
        self.hn.connected("c1")
        code, out = yield threads.deferToThread(request, self.path, ["session", "show"])
        self.assertEqual(code, 0)
        self.assertIn("| c1 ", out)
        code, out = yield threads.deferToThread(request, self.path,
                                                ["cluster", "show", "--format=json"])
        self.assertEqual((code, out), (0, '{"type": "table", "table": [{"Node": '
                                          '"VerneMQ@127.0.0.1", "Running": true}]}\n'))
        code, out = yield threads.deferToThread(request, self.path, ["bogus"])
        self.assertEqual(code, 1)

    @inlineCallbacks
    def test_bad_requests(self) -> None:
        """Non-JSON, a wrong shape and an overlong line get an error answer."""
        def raw(data: bytes) -> bytes:
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(10)
            s.connect(self.path)
            s.sendall(data)
            got = b""
            while not got.endswith(b"\n"):
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
            s.close()
            return got

        for data in (b"nope\n", b'{"argv": "session show"}\n', b'{"argv": [1]}\n',
                     b"x" * 70000 + b"\n"):
            answer = yield threads.deferToThread(raw, data)
            self.assertIn(b'"code": 1', answer)
            self.assertIn(b"bad request", answer)

    @inlineCallbacks
    def test_a_crashing_command_does_not_reach_the_reactor(self) -> None:
        """An exception inside a command is logged and answered as an internal error."""
        def boom(argv: list[str], console: object = None) -> None:
            raise RuntimeError("boom")

        self.service.admin.run = boom  # type: ignore[method-assign]
        code, out = yield threads.deferToThread(request, self.path, ["cluster", "show"])
        self.assertEqual((code, out), (1, "internal error, see the broker's log\n"))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    @inlineCallbacks
    def test_trace_streams_until_stopped(self) -> None:
        """A trace's lines stream to the console as they come; trace stop_all
        ends it with exit code 0; a console that goes away stops its trace."""
        from twisted.internet import reactor
        from twisted.internet.defer import Deferred
        from vmqtw.codec import Pingreq

        tracer = self.service.admin.tracer
        lines: list[str] = []
        started: Deferred = Deferred()

        def on_stream(line: str) -> None:
            lines.append(line)
            if len(lines) == 1:
                reactor.callFromThread(started.callback, None)

        d = threads.deferToThread(request, self.path, ["trace", "client", "client-id=c1"],
                                  10, on_stream)
        yield started
        self.assertEqual(lines, ['Starting trace for 0 existing sessions for client "c1"'])
        tracer.packet(("", "c1"), "RECV", Pingreq())
        code, _ = yield threads.deferToThread(request, self.path, ["trace", "stop_all"])
        self.assertEqual(code, 0)
        code, out = yield d
        self.assertEqual(code, 0)
        self.assertTrue(lines[1].endswith('MQTT RECV: CID: "c1" PINGREQ()'), lines)
        self.assertEqual(lines[2], "Trace stopped")

        def vanish() -> None:
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(10)
            s.connect(self.path)
            s.sendall(b'{"argv": ["trace", "client", "client-id=c2"]}\n')
            s.recv(4096)
            s.close()

        stopped: Deferred = Deferred()
        real_stop = tracer.stop

        def stop(trace: object) -> None:
            real_stop(trace)  # type: ignore[arg-type]
            stopped.callback(None)

        tracer.stop = stop  # type: ignore[method-assign]
        yield threads.deferToThread(vanish)
        yield stopped.addTimeout(10, reactor)
        self.assertIsNone(tracer.trace)

    def test_second_broker_refused(self) -> None:
        """A socket a live broker answers on is not taken over."""
        self.assertRaises(OSError, remove_stale_socket, self.path)


class StaleSocketTests(SynchronousTestCase):

    def test_stale_socket_removed_and_other_files_kept(self) -> None:
        """A socket nobody listens on is removed; a regular file is refused."""
        d = tempfile.mkdtemp(prefix="vmqtw-st-")
        self.addCleanup(shutil.rmtree, d, True)
        path = os.path.join(d, "s")
        s = socket.socket(socket.AF_UNIX)
        s.bind(path)
        s.close()
        remove_stale_socket(path)
        self.assertFalse(os.path.exists(path))
        with open(path, "w") as f:
            f.write("x")
        self.assertRaises(OSError, remove_stale_socket, path)
        remove_stale_socket(os.path.join(d, "absent"))  # nothing to do

    def test_unreachable(self) -> None:
        """request() on a missing socket raises ChannelError."""
        self.assertRaises(ChannelError, request, "/nonexistent/admin.sock", ["x"])


class FindSocketTests(SynchronousTestCase):

    def write(self, text: str) -> str:
        d = tempfile.mkdtemp(prefix="vmqtw-cf-")
        self.addCleanup(shutil.rmtree, d, True)
        path = os.path.join(d, "broker.conf")
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_default_is_in_the_store_directory(self) -> None:
        """Without settings the socket is data/vmq-admin.sock next to the file."""
        path = self.write("# comment\nallow_anonymous = on\n")
        self.assertEqual(socket_path(path),
                         os.path.join(os.path.dirname(path), "data", "vmq-admin.sock"))

    def test_store_directory_and_explicit_socket(self) -> None:
        """persistent_store.directory moves it; admin_socket names it (relative
        paths are taken from the file's directory)."""
        path = self.write("persistent_store.directory = /var/lib/vmqtw\n")
        self.assertEqual(socket_path(path), "/var/lib/vmqtw/vmq-admin.sock")
        path = self.write("persistent_store.directory = st\nadmin_socket = run/a.sock\n")
        self.assertEqual(socket_path(path), os.path.join(os.path.dirname(path), "run/a.sock"))
        self.assertEqual(read_keys(path)["admin_socket"], "run/a.sock")

    def test_main_usage_errors(self) -> None:
        """The script's own bad usage exits 2; an unreachable broker exits 3."""
        self.assertEqual(main(["-c"]), 2)
        self.assertEqual(main(["-c", "/nonexistent/broker.conf", "session", "show"]), 2)
        self.assertEqual(main(["--socket", "/nonexistent/a.sock", "session", "show"]), 3)
