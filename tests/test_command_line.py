"""The ``vmqtw`` command line as an operator meets it: ``--version``, ``--sample-config``,
a bare ``vmqtw`` without a configuration, and startup errors in twistd's daemon mode
(no ``-n``) as one readable line."""
from __future__ import annotations

import filecmp
import os
import shutil
import socket
import sys
import tempfile

from twisted.internet import reactor, task
from twisted.internet.defer import inlineCallbacks

from tests.support import REPO, TWISTD, BrokerTestCase, run_process

PYTHON_M_VMQTW = [sys.executable, "-m", "vmqtw"]
PROCESS_TIMEOUT = 30.0


def version() -> str:
    from vmqtw import __version__
    return __version__


class CommandLineTests(BrokerTestCase):
    timeout = 120

    def tmpdir(self) -> str:
        path = tempfile.mkdtemp(prefix="vmqtw-cl-")
        self.addCleanup(shutil.rmtree, path, True)
        return path

    def vmqtw(self, *args: str, cwd: str | None = None):
        return run_process(PYTHON_M_VMQTW[0], [*PYTHON_M_VMQTW[1:], *args],
                           timeout=PROCESS_TIMEOUT, cwd=cwd or self.tmpdir())

    def twistd(self, *args: str, cwd: str | None = None):
        return run_process(TWISTD[0], [*TWISTD[1:], *args], timeout=PROCESS_TIMEOUT,
                           cwd=cwd or self.tmpdir())

    @inlineCallbacks
    def test_version(self):
        """``vmqtw --version`` and ``twistd vmqtw --version`` print vmqtw's version (not
        Twisted's) and exit 0."""
        want = f"vmqtw {version()}\n".encode()
        out, err, code = yield self.vmqtw("--version")
        self.assertEqual((out, err, code), (want, b"", 0))
        out, err, code = yield self.twistd("vmqtw", "--version")
        self.assertEqual((out, err, code), (want, b"", 0))

    @inlineCallbacks
    def test_sample_config(self):
        """``vmqtw --sample-config`` prints the sample configuration shipped with the
        package (the same as etc/broker.conf), and that file, saved with the shipped
        vmq.passwd and vmq.acl next to it, passes ``--check``."""
        out, err, code = yield self.vmqtw("--sample-config")
        self.assertEqual((err, code), (b"", 0))
        with open(os.path.join(REPO, "etc", "broker.conf"), "rb") as f:
            self.assertEqual(out, f.read())
        tmp = self.tmpdir()
        with open(os.path.join(tmp, "broker.conf"), "wb") as f:
            f.write(out)
        from vmqtw.data import sample_path
        for name in ("vmq.passwd", "vmq.acl"):
            shutil.copy(sample_path(name), tmp)
        out, err, code = yield self.vmqtw("-c", "broker.conf", "--check", cwd=tmp)
        self.assertEqual((err, code), (b"", 0), out)

    @inlineCallbacks
    def test_bare_vmqtw_says_where_to_get_a_config(self):
        """A bare ``vmqtw`` in a directory without etc/broker.conf exits 2, names the file
        it looked for and tells how to get the sample (``--sample-config``), with no
        traceback."""
        tmp = self.tmpdir()
        out, err, code = yield self.vmqtw(cwd=tmp)
        self.assertEqual(code, 2, err)
        self.assertIn(b"etc/broker.conf does not exist", err)
        self.assertIn(b"vmqtw --sample-config > broker.conf", err)
        self.assertNotIn(b"Traceback", out + err)
        self.assertEqual(os.listdir(tmp), [])

    @inlineCallbacks
    def test_daemon_mode_startup_error_is_one_line(self):
        """In daemon mode (twistd without ``-n``) a port in use ends startup with exit
        status 1 and a bad configuration line with exit status 2 (as ``--check``), each
        with exactly one readable line on stderr naming FILE:LINE and the key, not the
        repr of truncated bytes or a traceback; no pid file is left behind."""
        busy = socket.socket()
        self.addCleanup(busy.close)
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        tmp = self.tmpdir()
        busy_conf = self.write_config(
            "allow_anonymous = on\n"
            "## a long comment line, so that the path and the message are long\n"
            f"listener.tcp.a_rather_long_listener_name_for_the_test = 127.0.0.1:{port}\n")
        bad_conf = self.write_config("allow_anonymous = on\n"
                                     "listener.tcp.default = 127.0.0.1:0\n"
                                     "max_client_id_size = lots\n")
        for config, status, expected in (
                (busy_conf, 1, f"vmqtw: {busy_conf}:3: listener.tcp.a_rather_long_listener_"
                               f"name_for_the_test: cannot listen on 127.0.0.1:{port}"),
                (bad_conf, 2, f"vmqtw: configuration error: {bad_conf}:3: "
                              f"max_client_id_size: ")):
            pidfile = os.path.join(tmp, "twistd.pid")
            out, err, code = yield self.twistd(
                f"--pidfile={pidfile}", f"--logfile={os.path.join(tmp, 'twistd.log')}",
                "vmqtw", "-c", config, cwd=tmp)
            self.assertEqual(code, status, f"{out!r} {err!r}")
            lines = err.decode().splitlines()
            self.assertEqual(len(lines), 1, err)
            self.assertTrue(lines[0].startswith(expected), lines[0])
            self.assertNotIn("b'", lines[0])
            self.assertNotIn(b"Traceback", out + err)
            # The daemon child removes its pid file just after it has told the
            # parent (which has exited by now): no event to wait for, so poll.
            for _ in range(100):
                if not os.path.exists(pidfile):
                    break
                yield task.deferLater(reactor, 0.05, lambda: None)
            self.assertFalse(os.path.exists(pidfile))


class ShippedSampleTests(BrokerTestCase):

    def test_package_samples_are_the_etc_files(self):
        """The samples shipped in the package (``vmqtw/data``) are the files in etc/,
        byte for byte, so the documented etc/broker.conf and ``--sample-config`` agree."""
        from vmqtw.data import SAMPLES, sample_path
        for name in SAMPLES:
            self.assertTrue(filecmp.cmp(sample_path(name), os.path.join(REPO, "etc", name),
                                        shallow=False),
                            f"vmqtw/data/{name} differs from etc/{name}: copy one to the other")
