"""Errors of the transport layers (importable by every layer without cycles)."""


class LayerError(Exception):
    """A listener cannot be built (unsupported kind, bad TLS file...); the
    message names the config file, line and key."""
