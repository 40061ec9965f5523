"""The twistd plugin is found, and an installed vmqtw ships it."""
from __future__ import annotations

import os
import warnings

from twisted.trial import unittest

from tests.support import REPO


class PluginTests(unittest.TestCase):

    def test_twistd_finds_the_vmqtw_plugin(self):
        """twistd's plugin system finds the vmqtw service maker (tap name vmqtw, module
        vmqtw.tap, with its Options)."""
        from twisted.application.service import IServiceMaker
        from twisted.plugin import getPlugins

        makers = {p.tapname: p for p in getPlugins(IServiceMaker)}
        self.assertIn("vmqtw", makers)
        self.assertEqual(makers["vmqtw"].module, "vmqtw.tap")
        from vmqtw import tap
        self.assertIs(makers["vmqtw"].options, tap.Options)

    def test_distribution_includes_the_plugin_module(self):
        """``pip install .`` must install twisted/plugins/vmqtw_plugin.py, or
        ``twistd vmqtw`` only works from the source tree.  ``packages = find:``
        only finds directories with an ``__init__.py``, which twisted/plugins
        must not have, so its package_data entry is silently dropped."""
        try:
            from setuptools.config.setupcfg import read_configuration
        except ImportError:  # pragma: no cover
            raise unittest.SkipTest("setuptools is not installed") from None
        cwd = os.getcwd()
        os.chdir(REPO)  # find: / find_namespace: search relative to the cwd
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                options = read_configuration(os.path.join(REPO, "setup.cfg"))["options"]
        finally:
            os.chdir(cwd)
        self.assertIn("twisted.plugins", options["packages"])
        self.assertIn("vmqtw_plugin.py", options.get("package_data", {}).get("twisted.plugins", []))
        self.assertFalse(os.path.exists(os.path.join(REPO, "twisted", "__init__.py")),
                         "twisted/__init__.py would shadow the real twisted package")
        self.assertFalse(os.path.exists(os.path.join(REPO, "twisted", "plugins", "__init__.py")),
                         "twisted/plugins/__init__.py would shadow Twisted's own plugins")
