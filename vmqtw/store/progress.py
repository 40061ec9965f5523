"""Progress lines while a large durable store is restored at startup.

Restoring half a million queued messages takes seconds to tens of seconds
(reading the rows and building the messages dominates), during which the
broker does not listen yet.  ``RestoreProgress`` lets an operator see that it
is working and how long is left: every ``interval`` seconds (2 by default) it
logs one line for the table or step in progress, e.g.::

    store /var/lib/vmqtw/vmqtw.db: read 120000 of 480000 queued or inflight messages (25%, 52 k/s)
    store /var/lib/vmqtw/vmqtw.db: restored 9000 of 20000 sessions (45%, 12 k/s)

A restore shorter than ``interval`` logs no progress line at all.  The cost is
a clock read every ``check_every`` rows (rows pass in chunks).
"""
from __future__ import annotations

import time
from itertools import chain, islice
from typing import Callable, Iterable, Iterator, TypeVar

from vmqtw.logs import Logger

__all__ = ["RestoreProgress", "rate_text"]

T = TypeVar("T")


def rate_text(per_second: float) -> str:
    """``52 k/s`` from 52000.0, ``800/s`` below a thousand."""
    if per_second >= 1000:
        return f"{per_second / 1000:.0f} k/s"
    return f"{per_second:.0f}/s"


class RestoreProgress:
    """Reports how far a restore has got.

    :param path: the store file, named in every line.
    :param interval: seconds between two progress lines (0: a line at every check).
    :param clock: a monotonic clock (injected by tests).
    :param check_every: rows between two reads of the clock.
    :param log: where the lines go (at info).
    """

    def __init__(self, path: str, interval: float = 2.0,
                 clock: Callable[[], float] = time.monotonic, check_every: int = 4096,
                 log: Logger | None = None) -> None:
        self.path = path
        self.interval = interval
        self.clock = clock
        self.check_every = max(1, check_every)
        self.log = log if log is not None else Logger(namespace="vmqtw.store")
        self.started = clock()
        self._last = self.started
        #: progress lines logged so far
        self.lines = 0

    def over(self, rows: Iterable[T], total: int, what: str, verb: str = "read"
             ) -> Iterator[T]:
        """Yield ``rows`` unchanged, logging ``{verb} N of {total} {what}`` while
        they take long.  The rows pass through ``itertools.chain`` in chunks of
        ``check_every``, so Python code runs once per chunk, not per row."""
        return chain.from_iterable(self._chunks(iter(rows), total, what, verb))

    def _chunks(self, rows: Iterator[T], total: int, what: str, verb: str
                ) -> Iterator[list[T]]:
        check = self.check_every
        begun = self.clock()
        done = 0
        while True:
            chunk = list(islice(rows, check))
            if not chunk:
                return
            yield chunk  # resumed once the consumer has handled the whole chunk
            done += len(chunk)
            if len(chunk) == check:
                now = self.clock()
                if now - self._last >= self.interval:
                    self._last = now
                    self._report(verb, what, done, total, now - begun)

    def _report(self, verb: str, what: str, done: int, total: int, elapsed: float) -> None:
        self.lines += 1
        percent = 100 * done // total if total else 100
        rate = done / elapsed if elapsed > 0 else 0.0
        self.log.info("store {path}: {verb} {done} of {total} {what} ({percent}%, {rate})",
                      path=self.path, verb=verb, done=done, total=total, what=what,
                      percent=percent, rate=rate_text(rate))

    def elapsed(self) -> float:
        """Seconds since this progress began."""
        return self.clock() - self.started
