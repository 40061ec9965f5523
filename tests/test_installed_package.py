"""vmqtw stands alone: built as setuptools installs it, its own test suite
(``trial vmqtw``) passes from another directory with nothing of the checkout on
the path, and its command line finds the shipped sample configuration."""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks

from tests.support import REPO, BrokerTestCase, _Collect, _kill_on_timeout

#: What setuptools needs to build the distribution (setup.cfg reads README.md).
SOURCES = ("setup.cfg", "pyproject.toml", "README.md", "vmqtw", os.path.join("twisted", "plugins"))

#: ``trial vmqtw`` takes about a minute on an idle machine.
SUITE_TIMEOUT = 600.0


def run(args: list[str], cwd: str, pythonpath: str | None, timeout: float) -> Deferred:
    """Run ``python ARGS`` in ``cwd`` with exactly ``pythonpath`` on PYTHONPATH (the
    checkout is NOT added, unlike ``tests.support.run_process``)."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    proto = _Collect()
    transport = reactor.spawnProcess(proto, sys.executable, [sys.executable, *args],
                                     env=env, path=cwd)
    transport.closeStdin()
    return _kill_on_timeout(proto, transport, timeout, f"python {' '.join(args[:3])} to exit")


class InstalledPackageTests(BrokerTestCase):
    timeout = SUITE_TIMEOUT + 120

    def tmpdir(self, prefix: str) -> str:
        path = tempfile.mkdtemp(prefix=prefix)
        self.addCleanup(shutil.rmtree, path, True)
        return path

    @inlineCallbacks
    def build(self) -> Any:
        """The package as installed: setuptools' ``build_py`` (what a wheel holds:
        the packages and their package_data) from a copy of the sources, into a
        directory of its own.  Offline, and without the ``wheel`` package."""
        src = self.tmpdir("vmqtw-src-")
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "_trial_temp*", "*.egg-info")
        for name in SOURCES:
            path = os.path.join(REPO, name)
            if os.path.isdir(path):
                shutil.copytree(path, os.path.join(src, name), ignore=ignore)
            else:
                shutil.copy(path, src)
        target = self.tmpdir("vmqtw-installed-")
        out, err, code = yield run(["-c", "import setuptools; setuptools.setup()", "-q",
                                    "build_py", "--build-lib", target],
                                   cwd=src, pythonpath=None, timeout=120)
        self.assertEqual(code, 0, (out + err).decode(errors="replace"))
        return target

    @inlineCallbacks
    def test_trial_vmqtw_passes_from_an_installed_package(self):
        """Built as setuptools installs it (with the twistd plugin and the sample files
        as package data), ``python -m twisted.trial vmqtw`` run from an unrelated
        directory with only that build on PYTHONPATH imports vmqtw from the build and
        passes; ``python -m vmqtw --sample-config`` and ``--version`` work there too."""
        target = yield self.build()
        for name in (("vmqtw", "data", "broker.conf"), ("vmqtw", "data", "vmq.passwd"),
                     ("vmqtw", "data", "vmq.acl"), ("twisted", "plugins", "vmqtw_plugin.py")):
            self.assertTrue(os.path.isfile(os.path.join(target, *name)), name)
        elsewhere = self.tmpdir("vmqtw-elsewhere-")

        out, err, code = yield run(["-c", "import vmqtw.test; print(vmqtw.test.__file__)"],
                                   cwd=elsewhere, pythonpath=target, timeout=60)
        self.assertEqual(code, 0, err)
        self.assertTrue(out.decode().strip().startswith(target), out)

        out, err, code = yield run(["-m", "vmqtw", "--sample-config"], cwd=elsewhere,
                                   pythonpath=target, timeout=60)
        self.assertEqual((err, code), (b"", 0))
        self.assertIn(b"listener.tcp.default = ", out)
        out, err, code = yield run(["-m", "vmqtw", "--version"], cwd=elsewhere,
                                   pythonpath=target, timeout=60)
        self.assertEqual((err, code), (b"", 0))
        self.assertTrue(out.startswith(b"vmqtw "), out)

        out, err, code = yield run(
            ["-m", "twisted.trial", "--temp-directory", os.path.join(elsewhere, "_trial"),
             "vmqtw"], cwd=elsewhere, pythonpath=target, timeout=SUITE_TIMEOUT)
        tail = out[-3000:].decode(errors="replace") + err[-2000:].decode(errors="replace")
        self.assertEqual(code, 0, tail)
        self.assertIn(b"PASSED", out[-500:], tail)
