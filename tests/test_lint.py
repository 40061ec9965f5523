"""The source tree passes the project's linters, configured in pyproject.toml:
ruff (pycodestyle, pyflakes, bugbear) over every Python file, and mypy with the
mypy-zope plugin over the broker's modules.  Each runs as a subprocess on the
checkout, so a lint failure shows up in the test count like any other."""
from __future__ import annotations

import shutil
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from tests.support import REPO, missing


def _run(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=timeout)


class LintTests(SynchronousTestCase):

    def test_ruff_is_clean(self) -> None:
        """``ruff check`` finds nothing anywhere in the repository."""
        ruff = shutil.which("ruff")
        if ruff is None:
            missing("ruff is not installed (pip install '.[test]')")
        out = _run([ruff, "check", "--no-cache", "."], 120)
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)

    def test_mypy_is_clean(self) -> None:
        """mypy (with mypy-zope) reports no error in the broker's modules,
        the example plugins and the benchmarks."""
        try:
            import mypy  # noqa: F401
            import mypy_zope  # noqa: F401
        except ImportError:
            missing("mypy and mypy-zope are not installed (pip install '.[test]')")
        out = _run([sys.executable, "-m", "mypy", "--cache-dir", "/tmp/vmqtw-mypy-cache"], 540)
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
