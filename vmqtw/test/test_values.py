"""The value types the core and the stores share: ``SessionKey`` and ``DeliveryState``."""
from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

import vmqtw.core.session
import vmqtw.store.records
from vmqtw.config import parse
from vmqtw.core.broker import Broker
from vmqtw.core.values import (
    QUEUED, WAIT_PUBACK, WAIT_PUBCOMP, WAIT_PUBREC, DeliveryState, SessionKey,
)
from vmqtw.store.records import StoredSession


class SessionKeyTests(SynchronousTestCase):
    """``SessionKey`` is a named (mountpoint, client id) pair."""

    def test_fields(self) -> None:
        """The two fields are reachable by name and by position."""
        key = SessionKey("tenant", "dev-1")
        self.assertEqual((key.mountpoint, key.client_id), ("tenant", "dev-1"))
        self.assertEqual((key[0], key[1]), ("tenant", "dev-1"))
        mountpoint, client_id = key
        self.assertEqual((mountpoint, client_id), ("tenant", "dev-1"))

    def test_plain_tuple_finds_the_same_entry(self) -> None:
        """A plain tuple compares and hashes like the key, so old callers still
        find a session in a dict keyed by ``SessionKey``."""
        sessions = {SessionKey("", "c"): "session"}
        self.assertEqual(sessions[("", "c")], "session")
        self.assertEqual(SessionKey("", "c"), ("", "c"))
        self.assertNotEqual(SessionKey("m", "c"), SessionKey("", "c"))

    def test_broker_keys_sessions_by_session_key(self) -> None:
        """A session opened with a plain tuple gets a ``SessionKey``."""
        broker = Broker(parse("allow_anonymous = on\n"), Clock())
        session, present = broker.open_session(("m", "c"), True, 0, None)
        self.assertFalse(present)
        self.assertIsInstance(session.key, SessionKey)
        self.assertEqual(session.key, SessionKey("m", "c"))
        self.assertIsInstance(next(iter(broker.sessions)), SessionKey)

    def test_stored_session_key(self) -> None:
        """A session loaded from a store names itself with a ``SessionKey``."""
        stored = StoredSession("m", "c", None, 0.0)
        self.assertIsInstance(stored.key, SessionKey)
        self.assertEqual(stored.key, ("m", "c"))


class DeliveryStateTests(SynchronousTestCase):
    """One delivery-state enum serves the live session and the durable store."""

    def test_values_are_the_stored_integers(self) -> None:
        """The values are the integers already on disk: 0 queued, 1 waiting for
        PUBACK, 2 for PUBREC, 3 for PUBCOMP."""
        self.assertEqual([int(s) for s in DeliveryState], [0, 1, 2, 3])
        self.assertEqual((QUEUED, WAIT_PUBACK, WAIT_PUBREC, WAIT_PUBCOMP), (0, 1, 2, 3))
        self.assertIs(DeliveryState(2), WAIT_PUBREC)

    def test_core_and_store_share_the_members(self) -> None:
        """The names the session and the store records module export are the
        same enum members, not copies."""
        for name in ("QUEUED", "WAIT_PUBACK", "WAIT_PUBREC", "WAIT_PUBCOMP"):
            member = DeliveryState[name]
            self.assertIs(getattr(vmqtw.core.session, name), member)
            self.assertIs(getattr(vmqtw.store.records, name), member)
        self.assertIs(vmqtw.core.session.SessionKey, SessionKey)
        self.assertIs(vmqtw.store.records.SessionKey, SessionKey)
