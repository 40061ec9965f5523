"""``twistd vmqtw`` in daemon mode (no ``-n``): startup errors as one readable line.

Without ``-n`` twistd forks: the daemon child binds the listeners
(``privilegedStartService``) and reports a failure to the waiting parent
through a status pipe.  Twisted's runner sends at most 100 bytes of
``module.Class: message`` and the parent prints their ``repr`` (``b'...'``,
cut in the middle) and a hint to read the log.  A ``StartupError``'s message
is already the line an operator needs (``FILE:LINE: key: reason``), so for
those the child sends the whole message and the parent prints it as
``vmqtw: FILE:LINE: key: reason``, exactly as in the foreground; any other
exception keeps twistd's own report (the traceback is in the log).  A child
that dies without a word (killed - by the OOM killer during a long store
restore, say - or exiting from ``startService``) would leave twistd's parent
waiting forever: twistd's ``daemonize`` keeps the pipe's write end open in
that parent (Twisted issue 7745).  Ours closes it, so the parent reads
end-of-file and says that the daemon exited while starting, naming the log
file.

This adjusts three methods of Twisted's ``UnixApplicationRunner`` (installed
by ``makeService`` in the parent before it forks, so the child has them too),
only when daemonizing.
"""
from __future__ import annotations

import errno
import os
import sys
from typing import Any

from twisted.python.util import untilConcludes

__all__ = ["report_startup_errors_in_one_line", "MARKER", "MAX_MESSAGE"]

#: How a vmqtw startup error starts on the status pipe ("1 " is twistd's "failed").
MARKER = b"1 vmqtw: "
#: Below PIPE_BUF (4096 on Linux): one write is atomic, so one read gets it
#: all, and the child never blocks writing it to the empty pipe.
MAX_MESSAGE = 4000


def format_startup_error(exception: BaseException) -> bytes:
    """The status-pipe message for a ``StartupError``: its text on one line."""
    text = " ".join(str(exception).split())
    return MARKER + text.encode("utf-8", "backslashreplace")[:MAX_MESSAGE - len(MARKER)]


def wait_for_start(read_pipe: int, logfile: str | None = None) -> int:
    """The parent's wait for the child (twistd's ``_waitForStart``): 0 when the
    child started; else print why and return 1.  ``logfile`` is twistd's
    ``--logfile`` (or ``syslog``), named when the child died without saying
    why."""
    data = untilConcludes(os.read, read_pipe, MAX_MESSAGE)
    if data == b"0":
        return 0
    stream: Any = sys.__stderr__ or sys.stderr
    if data.startswith(MARKER):
        message = "vmqtw: " + data[len(MARKER):].decode("utf-8", "replace") + "\n"
    elif not data:
        message = ("vmqtw: the daemon exited while starting, without a reason (see "
                   f"{logfile or 'its log'})\n")
    else:  # twistd's own report, for anything that is not a vmqtw startup error
        message = (f"An error has occurred: {data[2:]!r}\n"
                   "Please look at log file for more information.\n")
    untilConcludes(stream.write, message)
    untilConcludes(stream.flush)
    return 1


def daemonize(runner: Any, reactor: Any) -> int:
    """Twistd's double fork, returning the status pipe's write end in the
    daemon.  The first process waits on the read end (``_waitForStart``) and
    exits with its status, having closed its copy of the write end: when the
    daemon dies without writing, the read sees end-of-file instead of waiting
    forever."""
    from twisted.internet.interfaces import IReactorDaemonize
    hooks = IReactorDaemonize.providedBy(reactor)
    if hooks:
        reactor.beforeDaemonize()
    read_end, write_end = os.pipe()
    if os.fork():  # the process the operator started: report and leave
        os.close(write_end)
        status = runner._waitForStart(read_end)
        os.close(read_end)
        os._exit(status)
    os.close(read_end)
    os.setsid()  # a new session, no controlling terminal
    if os.fork():
        os._exit(0)  # the session leader goes; its child can never get a terminal
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        try:
            os.dup2(null, fd)
        except OSError as e:
            if e.errno != errno.EBADF:
                raise
    os.close(null)
    if hooks:
        reactor.afterDaemonize()
    return write_end


def report_startup_errors_in_one_line() -> None:
    """Make twistd's daemon-mode startup report print a vmqtw ``StartupError``
    as one readable line (idempotent)."""
    try:
        from twisted.scripts._twistd_unix import UnixApplicationRunner
    except ImportError:  # pragma: no cover (not on POSIX: no daemon mode)
        return
    if getattr(UnixApplicationRunner, "_vmqtw_one_line", False):
        return
    original = UnixApplicationRunner._formatChildException

    def _formatChildException(self: Any, exception: BaseException) -> bytes:
        from vmqtw.service import StartupError
        if isinstance(exception, StartupError):
            return format_startup_error(exception)
        return original(self, exception)

    def _waitForStart(self: Any, readPipe: int) -> int:
        config = self.config
        if config.get("syslog"):
            where = "syslog"
        else:  # twistd's default log file
            where = os.path.abspath(config.get("logfile") or "twistd.log")
        return wait_for_start(readPipe, where)

    UnixApplicationRunner._formatChildException = _formatChildException  # type: ignore[method-assign]
    UnixApplicationRunner._waitForStart = _waitForStart  # type: ignore[method-assign]
    UnixApplicationRunner.daemonize = daemonize  # type: ignore[method-assign]
    UnixApplicationRunner._vmqtw_one_line = True  # type: ignore[attr-defined]
