"""The one source of loggers and log destinations for vmqtw.

Every module logs through ``vmqtw.logs.Logger``.  The level is applied where
events are emitted: a ``Logger`` drops events below the configured level
before any formatting or observer work (twistd installs its own observers
after our service is built, so filtering only in observers would miss them).

``configure(config.log)`` applies the ``log.*`` keys, with VerneMQ's meaning:

- ``log.console``: ``console`` (standard output), ``file``
  (``log.console.file``), ``both`` or ``off``;
- ``log.console.level`` (or vmqtw's ``log_level``): the lowest level logged,
  for every logger;
- ``log.console.rotation.size`` / ``.keep``: the console file is rotated at
  that size and that many old files are kept;
- ``log.error.file`` (with ``log.error = on``): errors are also written there;
- ``log.console.file.format`` / ``log.error.file.format``: ``text`` (Twisted's
  text lines) or ``json`` (one JSON object per line, ``vmqtw.log_json``) for
  those two files; standard output is always text, as in VerneMQ;
- ``log.syslog``: events at ``log.syslog.level`` and above also go to the
  local syslog (``/dev/log``, facility daemon, ident ``vmqtw``), through the
  standard library's ``SysLogHandler``.

``observers()`` builds the observers for a ``LogConfig``; ``install()`` adds
them to a log publisher (the global one by default) and ``uninstall()``
removes them again.
"""
from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from typing import IO, Any, Callable

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    LogPublisher,
    formatEvent,
    globalLogPublisher,
    textFileLogObserver,
)
from twisted.logger import Logger as _TwistedLogger
from twisted.python.logfile import LogFile
from zope.interface import implementer

from vmqtw.config.settings import LogConfig
from vmqtw.log_json import json_file_log_observer

__all__ = ["Logger", "set_level", "observers", "install", "uninstall", "configure"]

_ORDER = [LogLevel.debug, LogLevel.info, LogLevel.warn, LogLevel.error, LogLevel.critical]
_NAMES = {"debug": LogLevel.debug, "info": LogLevel.info, "warn": LogLevel.warn,
          "warning": LogLevel.warn, "error": LogLevel.error, "critical": LogLevel.critical}
_enabled: set[Any] = set(_ORDER[1:])


def set_level(name: str) -> None:
    """Emit events at ``name`` (debug, info, warn, error, critical) and above."""
    level = _NAMES[name]
    _enabled.clear()
    _enabled.update(_ORDER[_ORDER.index(level):])


def info_enabled() -> bool:
    """Whether info events are emitted: a hot path (one line per CONNECT) asks
    before it builds an event's fields."""
    return LogLevel.info in _enabled


class Logger(_TwistedLogger):
    """``twisted.logger.Logger`` that drops events below the level of ``set_level``."""

    def emit(self, level: Any, format: str | None = None, **kwargs: Any) -> None:
        if level in _enabled:
            super().emit(level, format, **kwargs)


def _at_least(name: str, observer: Any) -> Any:
    """``observer`` behind a filter that lets events at ``name`` and above through
    (returns an ``ILogObserver``; typed ``Any`` as zope interfaces are not types)."""
    predicate: Any = LogLevelFilterPredicate(defaultLogLevel=_NAMES[name])
    return FilteringLogObserver(observer, [predicate])


def _file(path: str, rotate: int | None, keep: int) -> LogFile:
    """An append-mode log file at ``path`` that rotates at ``rotate`` bytes
    (None: never), keeping ``keep`` old files (``path.1`` ...)."""
    directory, name = os.path.split(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    return LogFile(name, directory, rotateLength=rotate, maxRotatedFiles=keep or None)


_SYSLOG_LEVELS = {LogLevel.debug: logging.DEBUG, LogLevel.info: logging.INFO,
                  LogLevel.warn: logging.WARNING, LogLevel.error: logging.ERROR,
                  LogLevel.critical: logging.CRITICAL}


@implementer(ILogObserver)
class SyslogObserver:
    """Sends each event as one syslog message through ``handler`` (a
    ``logging.handlers.SysLogHandler`` by default: ``/dev/log`` when it
    exists, else UDP to localhost:514; facility daemon)."""

    def __init__(self, handler: logging.Handler | None = None, ident: str = "vmqtw") -> None:
        if handler is None:
            address: Any = "/dev/log" if os.path.exists("/dev/log") else ("localhost", 514)
            handler = logging.handlers.SysLogHandler(
                address, facility=logging.handlers.SysLogHandler.LOG_DAEMON)
        handler.setFormatter(logging.Formatter(f"{ident}: %(message)s"))
        self.handler = handler

    def __call__(self, event: dict[str, Any]) -> None:
        text = formatEvent(event)
        if not text:
            return
        level = _SYSLOG_LEVELS.get(event.get("log_level"), logging.INFO)
        namespace = event.get("log_namespace", "vmqtw")
        record = logging.LogRecord(namespace, level, "", 0, f"[{namespace}] {text}", None,
                                   None)
        self.handler.handle(record)


def _file_observer(stream: Any, form: str, node: str) -> Any:
    """The observer writing ``stream`` in format ``form`` (``text`` or ``json``)."""
    if form == "json":
        return json_file_log_observer(stream, node)
    return textFileLogObserver(stream)


def observers(log: LogConfig, stdout: IO[str] | None = None, *,
              console: bool = True,
              syslog_factory: Callable[[], ILogObserver] | None = None,
              node: str = "") -> list[ILogObserver]:
    """The observers ``log`` asks for, each filtered at its level.

    ``console`` False leaves out the standard-output observer (twistd has its
    own).  ``syslog_factory`` makes the syslog observer (tests pass a fake).
    ``node`` (the node name) goes into every line of a JSON file.
    """
    out: list[ILogObserver] = []
    if console and log.console in ("console", "both"):
        out.append(_at_least(log.level, textFileLogObserver(stdout or sys.stdout)))
    if log.console in ("file", "both"):
        stream = _file(log.console_file, log.rotation_size, log.rotation_keep)
        out.append(_at_least(log.level, _file_observer(stream, log.console_format, node)))
    if log.error_file:
        stream = _file(log.error_file, log.error_rotation_size, log.error_rotation_keep)
        out.append(_at_least("error", _file_observer(stream, log.error_format, node)))
    if log.syslog:
        make = syslog_factory or SyslogObserver
        out.append(_at_least(log.syslog_level, make()))
    return out


def install(log: LogConfig, publisher: LogPublisher | None = None, *,
            console: bool = False, stdout: IO[str] | None = None,
            syslog_factory: Callable[[], ILogObserver] | None = None,
            node: str = "") -> list[ILogObserver]:
    """Set the level for every ``Logger`` and add the observers of ``log`` to
    ``publisher`` (the global one by default).  By default the console
    observer is left to whoever began logging (twistd, ``vmqtw`` main);
    ``console=True`` adds it too.  ``node`` labels JSON lines.  Returns the
    observers added."""
    set_level(log.level)
    added = observers(log, stdout, console=console, syslog_factory=syslog_factory,
                      node=node)
    target = globalLogPublisher if publisher is None else publisher
    for observer in added:
        target.addObserver(observer)
    return added


def uninstall(added: list[ILogObserver], publisher: LogPublisher | None = None) -> None:
    """Remove observers added by ``install``."""
    target = globalLogPublisher if publisher is None else publisher
    for observer in added:
        target.removeObserver(observer)


def configure(log: LogConfig, node: str = "") -> list[ILogObserver]:
    """``install(log)`` on the global publisher (the service calls it at startup)."""
    return install(log, node=node)
