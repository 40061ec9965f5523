"""codec and core stay free of Twisted (zope.interface is allowed)."""
from __future__ import annotations

import os
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

import vmqtw

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(vmqtw.__file__)))

SCRIPT = """
import sys
import vmqtw.codec
import vmqtw.core.broker, vmqtw.core.session, vmqtw.core.interfaces, vmqtw.core.topics
import vmqtw.core.retained, vmqtw.core.values
import vmqtw.core.message
bad = sorted(m for m in sys.modules if m == "twisted" or m.startswith("twisted."))
print("\\n".join(bad))
print("zope.interface" in sys.modules)
"""


class ImportTests(SynchronousTestCase):

    def test_codec_and_core_do_not_import_twisted(self) -> None:
        """Importing the codec and the core modules in a fresh interpreter loads no twisted
        module, but does load zope.interface (the session interface uses it)."""
        env = dict(os.environ)
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
        out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr)
        lines = out.stdout.split()
        self.assertEqual(lines[:-1], [], "twisted modules imported by codec/core")
        self.assertEqual(lines[-1], "True")  # the session interface uses zope.interface


SANS_IO_SCRIPT = """
import importlib, pkgutil, sys
for package in ("vmqtw.codec", "vmqtw.core", "vmqtw.connection"):
    pkg = importlib.import_module(package)
    for info in pkgutil.walk_packages(pkg.__path__, package + "."):
        importlib.import_module(info.name)
print("\\n".join(sorted(m for m in sys.modules if m.startswith("twisted.internet"))))
"""

DEFERRED_SCRIPT = """
import sys
import twisted.internet.defer
print("\\n".join(sorted(m for m in sys.modules if m.startswith("twisted.internet"))))
"""


class SansIOImportTests(SynchronousTestCase):

    def _modules(self, script: str) -> set[str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
        out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr)
        return set(out.stdout.split())

    def test_codec_core_and_connection_use_only_deferreds_from_twisted_internet(self) -> None:
        """codec, core and connection import nothing from ``twisted.internet``
        beyond what ``twisted.internet.defer`` itself pulls in: no reactor, no
        transports, no endpoints."""
        allowed = self._modules(DEFERRED_SCRIPT)
        used = self._modules(SANS_IO_SCRIPT)
        self.assertEqual(sorted(used - allowed), [],
                         "twisted.internet modules imported by codec/core/connection")
        self.assertNotIn("twisted.internet.reactor", used)
