"""The broker's garbage collector settings (``vmqtw.gcpolicy``)."""
from __future__ import annotations

import gc

from twisted.trial.unittest import SynchronousTestCase

from vmqtw import gcpolicy


class TuneTests(SynchronousTestCase):

    def setUp(self) -> None:
        saved = gc.get_threshold()
        self.addCleanup(gc.set_threshold, *saved)
        self.addCleanup(gc.unfreeze)

    def test_full_collections_are_rarer_and_startup_objects_frozen(self) -> None:
        """``tune()`` keeps the young generations' thresholds, raises the number of
        middle-generation collections between two full runs to ``FULL_AFTER``, and
        freezes what exists at that moment (the start-up objects)."""
        young, middle, _ = gc.get_threshold()
        gcpolicy.tune()
        self.assertEqual(gc.get_threshold(), (young, middle, gcpolicy.FULL_AFTER))
        self.assertGreater(gc.get_freeze_count(), 0)
        self.assertGreater(gcpolicy.FULL_AFTER, 10)  # CPython's default
