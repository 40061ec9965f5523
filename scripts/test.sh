#!/usr/bin/env bash
# Install vmqtw with its test extras (a regular install, so twistd finds the
# plugin) and run every test: the package's unit tests and tests/ integration.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --disable-pip-version-check '.[test]'
python3 -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"
exec python3 -m twisted.trial --temp-directory=/tmp/vmqtw-trial vmqtw tests
