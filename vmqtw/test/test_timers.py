"""The shared timer wheel (``vmqtw.connection.timers``) and the keep alive
timeout that runs on it, and the deadline queue of the CONNECT timeout, with
``twisted.internet.task.Clock``."""
from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from vmqtw.codec import Pingreq
from vmqtw.connection.timers import GRANULARITY, DeadlineQueue, TimerWheel, wheel_for
from vmqtw.test.connection_harness import PINGRESP, Rig


class TimerWheelTests(SynchronousTestCase):

    def setUp(self) -> None:
        self.clock = Clock()
        self.wheel = TimerWheel(self.clock)
        self.ran: list[str] = []

    def later(self, delay: float, name: str) -> object:
        return self.wheel.call_later(delay, lambda: self.ran.append(name))

    def test_never_early_at_most_one_granularity_late(self) -> None:
        """A call runs no sooner than its delay and no later than its delay plus
        ``GRANULARITY``, wherever the delay falls inside a slot."""
        for start in (0.0, 0.1, 0.25, 0.49, 0.5, 7.3):
            for delay in (0.0, 0.01, 0.5, 1.0, 1.26, 90.0):
                clock = Clock()
                clock.advance(start)
                wheel = TimerWheel(clock)
                ran: list[float] = []
                wheel.call_later(delay, lambda r=ran, k=clock: r.append(k.seconds()))
                step = GRANULARITY / 50
                for _ in range(int((delay + 2 * GRANULARITY) / step) + 2):
                    if ran:
                        break
                    clock.advance(step)
                self.assertEqual(len(ran), 1, (start, delay))
                self.assertGreaterEqual(ran[0] + 1e-6, start + delay, (start, delay))
                self.assertLessEqual(ran[0], start + delay + GRANULARITY + step + 1e-6,
                                     (start, delay))

    def test_one_delayed_call_for_many_timers(self) -> None:
        """However many calls are pending, the wheel keeps one ``DelayedCall`` on the
        clock, and none once nothing is pending."""
        for i in range(1000):
            self.later(60 + i / 1000, str(i))
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.assertEqual(len(self.wheel), 1000)
        self.clock.advance(61)
        self.assertEqual(len(self.ran), 1000)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.wheel), 0)

    def test_order_within_a_slot(self) -> None:
        """Calls that fall in one slot run in the order they were made; slots run in
        time order."""
        self.later(2.0, "late")
        self.later(1.1, "a")
        self.later(1.2, "b")
        self.clock.advance(5)
        self.assertEqual(self.ran, ["a", "b", "late"])

    def test_cancel(self) -> None:
        """A cancelled call never runs; cancelling the last pending call takes the
        wheel's ``DelayedCall`` off the clock; ``active()`` tells the state."""
        a = self.wheel.call_later(5, lambda: self.ran.append("a"))
        b = self.wheel.call_later(5, lambda: self.ran.append("b"))
        a.cancel()
        self.assertFalse(a.active())
        self.assertTrue(b.active())
        self.clock.advance(10)
        self.assertEqual(self.ran, ["b"])
        self.assertFalse(b.active())
        c = self.wheel.call_later(5, lambda: self.ran.append("c"))
        c.cancel()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertRaises(ValueError, c.cancel)

    def test_earlier_call_moves_the_wakeup(self) -> None:
        """A call earlier than every pending one is not delayed to the later wakeup."""
        self.later(60, "late")
        self.later(1, "early")
        self.clock.advance(1)
        self.assertEqual(self.ran, ["early"])
        self.clock.advance(59)
        self.assertEqual(self.ran, ["early", "late"])

    def test_rearm_from_a_call(self) -> None:
        """A call may schedule further calls (as the keep alive check does) without
        delaying calls already pending in earlier slots."""
        def again() -> None:
            self.ran.append("again")
            if self.ran.count("again") < 3:
                self.wheel.call_later(10, again)
        self.wheel.call_later(1, again)
        self.later(5, "five")
        self.clock.advance(1)
        self.assertEqual(self.ran, ["again"])
        self.clock.advance(4)
        self.assertEqual(self.ran, ["again", "five"])
        self.clock.pump([1] * 30)
        self.assertEqual(self.ran, ["again", "five", "again", "again"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_failing_call_does_not_stop_the_others(self) -> None:
        """An exception in one call is logged; the other calls of the slot still run."""
        def boom() -> None:
            raise RuntimeError("boom")
        self.wheel.call_later(1, boom)
        self.later(1, "after")
        self.clock.advance(1)
        self.assertEqual(self.ran, ["after"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_one_wheel_per_clock(self) -> None:
        """``wheel_for`` hands out one wheel per clock."""
        other = Clock()
        self.assertIs(wheel_for(self.clock), wheel_for(self.clock))
        self.assertIsNot(wheel_for(self.clock), wheel_for(other))


class KeepAliveOnTheWheelTests(SynchronousTestCase):

    def test_silent_client_closed_at_one_and_a_half_keepalive(self) -> None:
        """A silent client is closed no sooner than 1.5 x keep alive after its last
        packet and at most ``GRANULARITY`` later, wherever within a slot it spoke."""
        for offset in (0.0, 0.1, 0.3, 0.45):
            rig = Rig()
            rig.clock.advance(offset)
            c = rig.connected("c1", keepalive=60)
            rig.clock.advance(90 - 0.01)
            self.assertFalse(c.closed, offset)
            rig.clock.advance(GRANULARITY + 0.02)
            self.assertTrue(c.closed, offset)

    def test_active_client_never_closed(self) -> None:
        """A client that sends a PINGREQ every keep alive period stays connected for
        many periods, and its check costs no ``DelayedCall`` of its own."""
        rig = Rig()
        clients = [rig.connected(f"c{i}", keepalive=10) for i in range(50)]
        self.assertEqual(len(rig.clock.getDelayedCalls()), 1)
        for _ in range(100):
            rig.clock.advance(10)
            for c in clients:
                c.send(Pingreq())
                self.assertEqual(c.take(), PINGRESP)
        self.assertFalse(any(c.closed for c in clients))
        self.assertEqual(len(rig.clock.getDelayedCalls()), 1)

    def test_many_silent_clients_closed_together(self) -> None:
        """Silent clients whose deadlines share a slot are all closed by one wakeup;
        their keep alive timers leave nothing on the clock."""
        rig = Rig()
        clients = []
        for i in range(20):
            clients.append(rig.connected(f"c{i}", keepalive=10))
            rig.clock.advance(0.02)
        rig.clock.advance(15 + GRANULARITY)
        self.assertTrue(all(c.closed for c in clients))
        self.assertEqual(rig.clock.getDelayedCalls(), [])


class DeadlineQueueTests(SynchronousTestCase):

    def setUp(self) -> None:
        self.clock = Clock()
        self.queue = DeadlineQueue(self.clock)
        self.ran: list[tuple[str, float]] = []

    def later(self, delay: float, name: str) -> Any:
        return self.queue.call_later(delay, lambda: self.ran.append((name, self.clock.seconds())))

    def test_calls_run_exactly_on_time_in_order(self) -> None:
        """Calls with the same delay, started at different times, each run at
        exactly their time (not before, not one wakeup later), in order."""
        self.later(5, "a")
        self.clock.advance(0.3)
        self.later(5, "b")
        self.clock.advance(4.69)
        self.assertEqual(self.ran, [])
        self.clock.advance(0.01)
        self.assertEqual(self.ran, [("a", 5.0)])
        self.clock.advance(0.3)
        self.assertEqual(self.ran, [("a", 5.0), ("b", 5.3)])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancelled_calls_never_run_and_leave_nothing_scheduled(self) -> None:
        """A cancelled call does not run; once every call is cancelled nothing is
        left on the clock, and active()/cancel() behave as on a DelayedCall."""
        a = self.later(5, "a")
        b = self.later(5, "b")
        self.assertTrue(a.active())
        a.cancel()
        self.assertFalse(a.active())
        self.assertRaises(ValueError, a.cancel)
        self.clock.advance(5)
        self.assertEqual(self.ran, [("b", 5.0)])
        self.assertFalse(b.active())
        c = self.later(5, "c")
        c.cancel()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.queue), 0)

    def test_a_shorter_delay_still_runs_on_time(self) -> None:
        """A call whose deadline is earlier than the last queued one (the delay
        was changed) still runs at its own time."""
        self.later(5, "long")
        self.later(1, "short")
        self.clock.advance(1)
        self.assertEqual(self.ran, [("short", 1.0)])
        self.clock.advance(4)
        self.assertEqual(self.ran, [("short", 1.0), ("long", 5.0)])

    def test_connect_timeout_closes_on_time_and_connect_cancels_it(self) -> None:
        """A connection without CONNECT is closed at exactly mqtt_connect_timeout;
        one that sends CONNECT in time stays open and leaves no timer behind
        (keep alive 0)."""
        rig = Rig()
        silent = rig.client()
        rig.clock.advance(1)
        ok = rig.connected("ok", keepalive=0)
        timeout = rig.broker.config.mqtt_connect_timeout / 1000.0
        rig.clock.advance(timeout - 1 - 0.001)
        self.assertFalse(silent.closed)
        rig.clock.advance(0.001)
        self.assertTrue(silent.closed)
        self.assertFalse(ok.closed)
        self.assertEqual(rig.clock.getDelayedCalls(), [])
