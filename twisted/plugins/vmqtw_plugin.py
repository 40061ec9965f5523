# twistd plugin: `twistd -n vmqtw -c broker.conf`.  Kept import-light: the
# service maker imports vmqtw.tap only when the subcommand is used.
#
# Also the `proxy:` endpoint description for any Twisted application:
# serverFromString(reactor, "proxy:tcp:1883") listens on tcp:1883 and expects
# a PROXY protocol v1/v2 header first on every connection.
from twisted.application.service import ServiceMaker

from vmqtw.transport.proxy.endpoint import ProxyServerParser

vmqtw = ServiceMaker("vmqtw", "vmqtw.tap", "VerneMQ-compatible MQTT broker", "vmqtw")
proxy = ProxyServerParser()
