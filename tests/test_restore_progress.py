"""Progress lines while a large durable store is restored at startup
(``vmqtw.store.progress``): a store with enough rows, a progress interval of
0 and a clock that ticks once per reading, so the lines are deterministic and
nothing depends on how fast the machine is."""
from __future__ import annotations

import os
import re
import shutil
import sqlite3
import tempfile
from typing import Any

from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from vmqtw.config import parse
from vmqtw.service import BrokerService
from vmqtw.store.progress import RestoreProgress, rate_text
from vmqtw.store.sqlite import FILENAME, SQLiteStore

SESSIONS = 50
MESSAGES = 1000   # one queued delivery each, spread over the sessions
RETAINED = 300


class Ticks:
    """A clock that advances one second at every reading."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def fill_store(directory: str) -> None:
    """A store of SESSIONS persistent sessions (one subscription each),
    MESSAGES queued messages and RETAINED retained messages, written directly
    (as a broker that ran a while would have left it)."""
    SQLiteStore(directory, Clock()).close()
    conn = sqlite3.connect(os.path.join(directory, FILENAME))
    with conn:
        conn.executemany("INSERT INTO sessions VALUES ('', ?, 3600.0, NULL, NULL)",
                         ((f"c{i}",) for i in range(SESSIONS)))
        conn.executemany("INSERT INTO subscriptions VALUES ('', ?, ?, 1, 0, 0, 0, NULL)",
                         ((f"c{i}", f"t/{i}/#") for i in range(SESSIONS)))
        conn.executemany("INSERT INTO messages VALUES (?, ?, ?, 1, 0, NULL, NULL)",
                         ((i + 1, f"t/{i % SESSIONS}/x", b"p" * 16) for i in range(MESSAGES)))
        conn.executemany("INSERT INTO deliveries VALUES (?, '', ?, ?, 1, 0, NULL, 0, NULL)",
                         ((i + 1, f"c{i % SESSIONS}", i + 1) for i in range(MESSAGES)))
        conn.executemany("INSERT INTO retained VALUES ('', ?, ?, 1, NULL, NULL)",
                         ((f"r/{i}", b"r") for i in range(RETAINED)))
    conn.close()


class Captured:
    """The text of every event published while installed."""

    def __init__(self, case: unittest.TestCase) -> None:
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        case.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def lines(self, pattern: str) -> list[str]:
        texts = [formatEvent(e) for e in self.events]
        return [t for t in texts if re.search(pattern, t)]


class RestoreProgressTests(unittest.TestCase):

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="vmqtw-progress-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        fill_store(self.dir)

    def test_rate_text(self) -> None:
        """Rates read as ``52 k/s`` from a thousand up, else ``800/s``."""
        self.assertEqual(rate_text(52_400.0), "52 k/s")
        self.assertEqual(rate_text(800.0), "800/s")
        self.assertEqual(rate_text(0.0), "0/s")

    def test_load_reports_every_table_with_counts(self) -> None:
        """Loading with a progress logs, for each table being read, how many
        rows of how many are done, the percentage and the rate, every
        ``check_every`` rows once ``interval`` has passed."""
        captured = Captured(self)
        store = SQLiteStore(self.dir, Clock())
        self.addCleanup(store.close)
        progress = RestoreProgress(store.path, interval=0, clock=Ticks(), check_every=250)
        loaded = store.load(0.0, progress=progress)
        self.assertEqual(len(loaded.sessions), SESSIONS)
        lines = captured.lines(r"^store .*: read ")
        prefix = f"store {store.path}: read "
        self.assertTrue(all(line.startswith(prefix) for line in lines), lines)
        found = [re.match(r"(\d+) of (\d+) (.+) \((\d+)%, (.+)\)$", line[len(prefix):])
                 for line in lines]
        self.assertNotIn(None, found)
        got = [(int(m[1]), int(m[2]), m[3], int(m[4])) for m in found if m]
        self.assertEqual(got, [
            (250, RETAINED, "retained messages", 83),
            (250, MESSAGES, "stored messages", 25), (500, MESSAGES, "stored messages", 50),
            (750, MESSAGES, "stored messages", 75), (1000, MESSAGES, "stored messages", 100),
            *[(n, MESSAGES, "queued or inflight messages", n * 100 // MESSAGES)
              for n in (250, 500, 750, 1000)],
        ])
        self.assertEqual(progress.lines, len(lines))
        # The rate is the rows done over the clock's seconds since the table began.
        self.assertTrue(lines[0].endswith("(83%, 250/s)"), lines[0])

    def test_interval_limits_the_lines(self) -> None:
        """With the default 2 s interval and a clock that reads 1 s further at
        each check, at most every second check logs a line."""
        captured = Captured(self)
        store = SQLiteStore(self.dir, Clock())
        self.addCleanup(store.close)
        progress = RestoreProgress(store.path, interval=2.0, clock=Ticks(), check_every=100)
        store.load(0.0, progress=progress)
        lines = captured.lines(r"^store .*: read ")
        checks = RETAINED // 100 + 2 * (MESSAGES // 100) + SESSIONS // 100
        self.assertGreater(len(lines), 0)
        self.assertLessEqual(len(lines), checks // 2 + 1)

    def test_no_progress_no_lines(self) -> None:
        """Without a progress (the default), loading logs nothing of the kind."""
        captured = Captured(self)
        store = SQLiteStore(self.dir, Clock())
        self.addCleanup(store.close)
        loaded = store.load(0.0)
        self.assertEqual(sum(len(s.deliveries) for s in loaded.sessions), MESSAGES)
        self.assertEqual(captured.lines(r"^store .*: read "), [])

    def test_service_restore_logs_progress_and_one_summary(self) -> None:
        """The broker's startup restore logs the progress of reading the store
        and of rebuilding the sessions, then one summary line with the counts
        and the seconds it took."""
        captured = Captured(self)
        config = parse(f"allow_anonymous = on\nplugins.vmq_passwd = off\n"
                       f"plugins.vmq_acl = off\npersistent_store.directory = {self.dir}\n",
                       os.path.join(self.dir, "broker.conf"))
        store = SQLiteStore(self.dir, Clock())
        service = BrokerService(config, Clock(), store=store)
        self.addCleanup(store.close)
        service.restore_progress_interval = 0.0
        original = RestoreProgress.__init__

        def small_checks(progress: RestoreProgress, *args: Any, **kwargs: Any) -> None:
            original(progress, *args, **kwargs)
            progress.check_every = 20

        self.patch(RestoreProgress, "__init__", small_checks)
        service.restore()
        self.assertEqual(len(service.broker.sessions), SESSIONS)
        read = captured.lines(r"^store .*: read \d+ of 1000 queued or inflight messages")
        self.assertEqual(len(read), MESSAGES // 20)
        restored = captured.lines(r"^store .*: restored \d+ of 50 sessions \(\d+%, .+\)$")
        self.assertEqual(len(restored), SESSIONS // 20)
        (summary,) = captured.lines(r"restored \d+ sessions, ")
        self.assertRegex(summary, rf"^store {re.escape(store.path)}: restored 50 sessions, "
                                  r"1000 queued or inflight messages, 300 retained messages; "
                                  r"purged 0 expired sessions and 0 expired messages "
                                  r"\(\d+\.\d s\)$")
