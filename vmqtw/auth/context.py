"""What the plugin loader hands to a plugin, and a helper for file-backed plugins.

Every built-in plugin module exposes::

    make_plugin(settings: Mapping[str, str], context: PluginContext) -> object

``settings`` holds the plugin's own keys from broker.conf (for
``vmq_passwd.password_file = x`` the key is ``password_file``).  Settings
errors raise ``ValueError``.

``ReloadingFile`` is shared by vmq_passwd and vmq_acl: it loads a file at
startup (any problem is a ``ValueError``), re-reads it every N seconds when
its mtime, size or inode changed, and on a reload keeps the last good table
when the file is missing or broken.
"""
from __future__ import annotations

import os
from typing import Any, Generic, Mapping, TypeVar

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted import logger as twisted_logger

from vmqtw.logs import Logger

__all__ = ["PluginContext", "FileFormatError", "ReloadingFile", "resolve_path",
           "parse_interval", "check_settings"]

T = TypeVar("T")


class PluginContext:
    """What a plugin gets from the loader besides its settings."""

    def __init__(self, reactor: IReactorTime, config_dir: str,
                 log: twisted_logger.Logger | None = None) -> None:
        #: Used for periodic reloads (callLater, seconds).
        self.reactor = reactor
        #: Relative paths in the plugin's settings resolve against this directory.
        self.config_dir = config_dir
        self.log = log if log is not None else Logger()


class FileFormatError(Exception):
    """A line of a plugin's file fits no accepted form."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(f"line {line}: {reason}")
        self.line = line
        self.reason = reason


def resolve_path(value: str, config_dir: str) -> str:
    """A path from the settings, relative ones taken against ``config_dir``."""
    if os.path.isabs(value):
        return value
    return os.path.join(config_dir, value)


def parse_interval(settings: Mapping[str, Any], key: str, prefix: str,
                   default: int = 10) -> int:
    """A reload interval in whole seconds, 0 meaning off."""
    raw = settings.get(key, default)
    if isinstance(raw, bool):
        raise ValueError(f"{prefix}.{key} must be a whole number of seconds, got {raw!r}")
    if isinstance(raw, int):
        value = raw
    else:
        text = str(raw).strip()
        try:
            value = int(text, 10)
        except ValueError:
            raise ValueError(
                f"{prefix}.{key} must be a whole number of seconds (0 = off), "
                f"got {text!r}") from None
    if value < 0:
        raise ValueError(f"{prefix}.{key} must be 0 (off) or more seconds, got {value}")
    return value


def check_settings(settings: Mapping[str, Any], known: tuple[str, ...], prefix: str) -> None:
    """Refuse keys the plugin does not know (typos would otherwise be ignored)."""
    for key in settings:
        if key not in known:
            names = ", ".join(f"{prefix}.{k}" for k in known)
            raise ValueError(f"unknown setting {prefix}.{key} (known: {names})")


_Stamp = tuple[int, int, int]


def _stamp(st: os.stat_result) -> _Stamp:
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class ReloadingFile(Generic[T]):
    """A table parsed from a file, reloaded periodically and on demand.

    Subclasses implement ``parse`` (bytes to table, raising ``FileFormatError``)
    and ``install`` (make a table current).  The first load happens in the
    constructor.
    """

    #: Used in messages, e.g. "password file".
    what = "file"

    def __init__(self, path: str, interval: int, context: PluginContext) -> None:
        self.path = path
        self.interval = interval
        self.reactor = context.reactor
        self.log = context.log
        self._call: IDelayedCall | None = None
        self._stamp: _Stamp | None = None
        self._missing_logged = False
        try:
            st = os.stat(path)
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise ValueError(f"{path}: {self.what} not found") from None
        except OSError as e:
            raise ValueError(f"{path}: cannot read {self.what}: {e.strerror or e}") from None
        try:
            table = self.parse(data)
        except FileFormatError as e:
            raise ValueError(f"{path}:{e.line}: {e.reason}") from None
        self._stamp = _stamp(st)
        self.install(table)

    # -- for subclasses -------------------------------------------------------

    def parse(self, data: bytes) -> T:
        raise NotImplementedError

    def install(self, table: T) -> None:
        raise NotImplementedError

    def warn(self, line: int, message: str) -> None:
        """Log a tolerated oddity of the file, naming FILE:LINE."""
        self.log.warn("{path}:{line}: {message}", path=self.path, line=line, message=message)

    # -- reloading ------------------------------------------------------------

    def start(self) -> None:
        """Begin periodic reloads (nothing when the interval is 0)."""
        if self.interval > 0 and self._call is None:
            self._call = self.reactor.callLater(self.interval, self._tick)

    def stop(self) -> None:
        """Cancel the periodic reloads."""
        if self._call is not None:
            if self._call.active():
                self._call.cancel()
            self._call = None

    @property
    def running(self) -> bool:
        return self._call is not None

    def _tick(self) -> None:
        self._call = None
        try:
            self._reload(force=False)
        except Exception:
            self.log.failure("reloading {path} failed", path=self.path)
        if self.interval > 0:
            self._call = self.reactor.callLater(self.interval, self._tick)

    def reload(self) -> bool:
        """Re-read the file now (SIGHUP).  True when a new table was installed.

        Never raises: problems are logged and the last good table stays.
        """
        try:
            return self._reload(force=True)
        except Exception:
            self.log.failure("reloading {path} failed", path=self.path)
            return False

    def _reload(self, force: bool) -> bool:
        try:
            st = os.stat(self.path)
        except OSError as e:
            if force or not self._missing_logged:
                self.log.warn("{path}: cannot read {what} ({reason}); keeping the last good one",
                              path=self.path, what=self.what,
                              reason=e.strerror or str(e))
                self._missing_logged = True
            return False
        self._missing_logged = False
        stamp = _stamp(st)
        if not force and stamp == self._stamp:
            return False
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except OSError as e:
            self.log.warn("{path}: cannot read {what} ({reason}); keeping the last good one",
                          path=self.path, what=self.what, reason=e.strerror or str(e))
            return False
        # The stamp was taken before reading, so a write racing with the read
        # is seen at the next tick.  It is remembered even when the file is
        # broken, so a broken file is reported once rather than every interval.
        self._stamp = stamp
        try:
            table = self.parse(data)
        except FileFormatError as e:
            self.log.error("{path}:{line}: {reason}; keeping the last good {what}",
                           path=self.path, line=e.line, reason=e.reason, what=self.what)
            return False
        self.install(table)
        self.log.info("{path}: {what} reloaded", path=self.path, what=self.what)
        return True
