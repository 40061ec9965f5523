# twistd plugin: `twistd -n vmqtw -c broker.conf`.  Kept import-light: the
# service maker imports vmqtw.tap only when the subcommand is used.
from twisted.application.service import ServiceMaker

vmqtw = ServiceMaker("vmqtw", "vmqtw.tap", "VerneMQ-compatible MQTT broker", "vmqtw")
