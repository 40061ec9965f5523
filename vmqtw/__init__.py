"""vmqtw: a VerneMQ-compatible MQTT 3.1/3.1.1/5.0 broker on Twisted."""

#: The one place the version is written (setup.cfg reads it from here).
__version__ = "0.1.0"
