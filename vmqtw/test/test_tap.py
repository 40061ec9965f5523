"""``vmqtw.tap.Options``: the options of ``vmqtw`` and ``twistd vmqtw``, in process."""
from __future__ import annotations

import io
import os
import sys
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from vmqtw import __version__
from vmqtw.data import read_sample
from vmqtw.tap import Options


class OptionsTests(SynchronousTestCase):

    def parse(self, *args: str) -> tuple[int, str, str]:
        """Parse ``args``; the exit status and what was printed on stdout and stderr."""
        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", out)
        self.patch(sys, "stderr", err)
        with self.assertRaises(SystemExit) as caught:
            Options().parseOptions(list(args))
        code: Any = caught.exception.code
        return code, out.getvalue(), err.getvalue()

    def test_version(self) -> None:
        """``--version`` prints vmqtw's own version and exits 0."""
        self.assertEqual(self.parse("--version"), (0, f"vmqtw {__version__}\n", ""))

    def test_sample_config(self) -> None:
        """``--sample-config`` prints the shipped sample configuration and exits 0."""
        self.assertEqual(self.parse("--sample-config"), (0, read_sample("broker.conf"), ""))

    def test_no_config_here(self) -> None:
        """Without ``-c`` and without etc/broker.conf in the working directory, the
        options exit 2 with a message that points at ``--sample-config``."""
        empty = os.path.abspath(self.mktemp())
        os.makedirs(empty)
        cwd = os.getcwd()
        os.chdir(empty)
        self.addCleanup(os.chdir, cwd)
        code, out, err = self.parse()
        self.assertEqual((code, out), (2, ""))
        self.assertIn("etc/broker.conf does not exist", err)
        self.assertIn("vmqtw --sample-config > broker.conf", err)

    def test_shipped_sample_is_valid(self) -> None:
        """The shipped sample configuration loads from the package's data directory,
        with the vmq.passwd and vmq.acl it names next to it."""
        from vmqtw import config
        from vmqtw.data import sample_path
        cfg = config.load(sample_path("broker.conf"))
        self.assertEqual([lc.key for lc in cfg.listeners], ["listener.tcp.default"])
        for name in ("vmq.passwd", "vmq.acl"):
            self.assertTrue(os.path.exists(sample_path(name)))
