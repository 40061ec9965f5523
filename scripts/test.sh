#!/usr/bin/env bash
# Install everything the tests need and run every test: the package's unit
# tests (vmqtw/test) and the integration tests with real clients (tests/).
#
# System packages (Debian): mosquitto-clients, mosquitto, haproxy, chromium,
# nodejs/npm, systemd (for systemd-socket-activate), prometheus -- installed with apt-get
# when missing (needs root or sudo).
# MQTT.js for the WebSocket tests comes from the npm registry (tests/node).
# vmqtw itself is pip-installed regularly, so twistd finds its plugin.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
# Database auth tests (vmq_diversity): real postgresql, mariadb-server and redis-server.
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need+=(postgresql)
command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ] || need+=(mariadb-server)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v mosquitto_pub >/dev/null 2>&1 || need+=(mosquitto-clients)
command -v mosquitto >/dev/null 2>&1 || need+=(mosquitto)
command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v npm >/dev/null 2>&1 || need+=(nodejs npm)
command -v systemd-socket-activate >/dev/null 2>&1 || need+=(systemd)
# tests/test_prometheus.py runs its own prometheus on a free port.  The package's
# postinst starts its service (systemd, or invoke-rc.d, which a container's
# policy-rc.d may refuse): at most an unused extra daemon on :9090.
command -v prometheus >/dev/null 2>&1 || [ -x /usr/bin/prometheus ] || need+=(prometheus)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq >/dev/null
  $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

if [ -f tests/node/package-lock.json ]; then
  (cd tests/node && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi

python3 -m pip install -q --disable-pip-version-check '.[test]'
# Build twistd's plugin cache once, where pip put the plugin.
python3 -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"
# Everything the tests need is installed above: under CI a test whose program
# is missing fails instead of skipping (tests/support.py: missing()).
export CI="${CI:-true}"
exec python3 -m twisted.trial --temp-directory=/tmp/vmqtw-trial vmqtw tests
