"""Loggers that honour the broker's ``log_level`` setting.

twistd installs its own log observers after our service is built, so the level
is applied where events are emitted: a ``vmqtw.logs.Logger`` drops events below
the configured level before any formatting or observer work.
"""
from __future__ import annotations

from typing import Any

from twisted.logger import Logger as _TwistedLogger
from twisted.logger import LogLevel

_ORDER = [LogLevel.debug, LogLevel.info, LogLevel.warn, LogLevel.error, LogLevel.critical]
_NAMES = {"debug": LogLevel.debug, "info": LogLevel.info, "warn": LogLevel.warn,
          "warning": LogLevel.warn, "error": LogLevel.error, "critical": LogLevel.critical}
_enabled: set[Any] = set(_ORDER[1:])


def set_level(name: str) -> None:
    """Emit events at ``name`` (debug, info, warn, error, critical) and above."""
    level = _NAMES[name]
    _enabled.clear()
    _enabled.update(_ORDER[_ORDER.index(level):])


class Logger(_TwistedLogger):
    def emit(self, level: Any, format: str | None = None, **kwargs: Any) -> None:
        if level in _enabled:
            super().emit(level, format, **kwargs)
