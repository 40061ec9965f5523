"""Coarse timers shared by all connections on one clock: a timer wheel.

A keep alive timer per connection as a Twisted ``DelayedCall`` cost about
0.6 KiB per idle client (the call object with its attribute dict, its ``kw``
dict, its place in the reactor's heap; measured with ``bench/run.py``) and a
heap operation whenever it was re-armed.  Keep alive deadlines need no
sub-second precision, so they go into one wheel per clock instead: calls are
grouped in slots of
``GRANULARITY`` seconds, and a single ``DelayedCall`` wakes the wheel at the
earliest slot that holds a call.  A call never runs before its time and at
most one slot (``GRANULARITY`` seconds) after it.  A slot is a ``dict``
(insertion ordered, so calls of one slot run in the order they were made);
a call costs one small ``CoarseCall`` object and one entry in its slot.

The clock is injected, as everywhere in ``connection``: anything with
``seconds()`` and ``callLater()`` (the reactor, ``twisted.internet.task.Clock``).
``wheel_for(clock)`` returns the wheel of that clock, made on first use.
"""
from __future__ import annotations

import heapq
import math
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

from vmqtw.logs import Logger

#: Width of one slot in seconds: a power of two, so slot boundaries are exact floats.
GRANULARITY = 0.5

# A clock's reading may land a hair below a slot boundary (sums of decimal steps).
_EPSILON = 1e-9

_PENDING, _CALLED, _CANCELLED = 0, 1, 2


class _Call:
    """A pending call with ``active()`` and ``cancel()`` as on Twisted's
    ``IDelayedCall``, which is all a connection uses of a timer; the subclass
    says how its container forgets it (``_forget``)."""

    __slots__ = ("func", "state")

    def __init__(self, func: Callable[[], None]) -> None:
        self.func = func
        self.state = _PENDING

    def active(self) -> bool:
        """True until the call has run or been cancelled."""
        return self.state == _PENDING

    def cancel(self) -> None:
        """Forget the call; it must still be pending (as ``DelayedCall.cancel``)."""
        if self.state != _PENDING:
            raise ValueError("cancel() on a call that has already run or been cancelled")
        self.state = _CANCELLED
        self._forget()

    def _forget(self) -> None:
        raise NotImplementedError


class CoarseCall(_Call):
    """One pending call on a ``TimerWheel``."""

    __slots__ = ("wheel", "slot")

    def __init__(self, wheel: TimerWheel, slot: int, func: Callable[[], None]) -> None:
        super().__init__(func)
        self.wheel = wheel
        self.slot = slot

    def _forget(self) -> None:
        self.wheel._remove(self)

    def __repr__(self) -> str:
        state = ("pending", "called", "cancelled")[self.state]
        return f"<CoarseCall {state} at {self.slot * GRANULARITY:.1f} s: {self.func!r}>"


class TimerWheel:
    """Calls grouped in slots of ``granularity`` seconds, woken by one
    ``DelayedCall`` on ``clock`` while any call is pending."""

    log = Logger()

    def __init__(self, clock: Any, granularity: float = GRANULARITY) -> None:
        self.clock = clock
        self.granularity = granularity
        self.slots: dict[int, dict[CoarseCall, None]] = {}
        self.heap: list[int] = []          # slot numbers in ``slots``, a min-heap
        self.pending = 0
        self.wakeup: Any = None            # the DelayedCall, while anything is pending
        self.wakeup_slot = 0
        self.running = False               # inside _run: it schedules the next wakeup

    def call_later(self, delay: float, func: Callable[[], None]) -> CoarseCall:
        """Run ``func()`` no sooner than ``delay`` seconds from now and at most
        one granularity later."""
        when = self.clock.seconds() + max(delay, 0.0)
        slot = math.ceil(when / self.granularity - _EPSILON)
        call = CoarseCall(self, slot, func)
        calls = self.slots.get(slot)
        if calls is None:
            calls = self.slots[slot] = {}
            heapq.heappush(self.heap, slot)
        calls[call] = None
        self.pending += 1
        if not self.running and (self.wakeup is None or slot < self.wakeup_slot):
            self._schedule(slot)
        return call

    def __len__(self) -> int:
        return self.pending

    def _remove(self, call: CoarseCall) -> None:
        calls = self.slots.get(call.slot)
        if calls is not None and calls.pop(call, 0) is None:
            if not calls:
                del self.slots[call.slot]  # its heap entry goes when the wheel gets there
            self.pending -= 1
            if not self.pending:
                self._stop()

    def _schedule(self, slot: int) -> None:
        delay = max(slot * self.granularity - self.clock.seconds(), 0.0)
        if self.wakeup is not None and self.wakeup.active():
            self.wakeup.cancel()
        self.wakeup = self.clock.callLater(delay, self._run)
        self.wakeup_slot = slot

    def _stop(self) -> None:
        if self.wakeup is not None and self.wakeup.active():
            self.wakeup.cancel()
        self.wakeup = None
        self.heap.clear()
        self.slots.clear()

    def _run(self) -> None:
        """Run every call whose slot has begun, then sleep until the next slot."""
        self.wakeup = None
        now_slot = math.floor(self.clock.seconds() / self.granularity + _EPSILON)
        heap, slots = self.heap, self.slots
        self.running = True
        try:
            while heap and heap[0] <= now_slot:
                slot = heapq.heappop(heap)
                calls = slots.pop(slot, None)
                if not calls:
                    continue
                for call in calls:
                    call.state = _CALLED
                self.pending -= len(calls)
                for call in calls:
                    try:
                        call.func()
                    except Exception:
                        self.log.failure("timer {call!r} failed", call=call)
        finally:
            self.running = False
        while heap and heap[0] not in slots:   # slots emptied by cancel()
            heapq.heappop(heap)
        if heap and self.wakeup is None:
            self._schedule(heap[0])


_wheels: weakref.WeakKeyDictionary[Any, TimerWheel] = weakref.WeakKeyDictionary()


# The last clock asked for and its wheel: a broker has one clock, so the weak
# dictionary is looked up only when another clock (a test's) comes along.
_last: tuple[Any, TimerWheel | None] = (None, None)


def wheel_for(clock: Any) -> TimerWheel:
    """The one ``TimerWheel`` of ``clock`` (made on first use, forgotten with the clock)."""
    global _last
    last_clock, wheel = _last
    if clock is last_clock and wheel is not None:
        return wheel
    wheel = _wheels.get(clock)
    if wheel is None:
        wheel = _wheels[clock] = TimerWheel(clock)
    _last = (clock, wheel)
    return wheel


class QueuedCall(_Call):
    """One pending call on a ``DeadlineQueue``."""

    __slots__ = ("queue", "when")

    def __init__(self, queue: DeadlineQueue, when: float, func: Callable[[], None]) -> None:
        super().__init__(func)
        self.queue = queue
        self.when = when

    def _forget(self) -> None:
        self.queue._cancelled()


class DeadlineQueue:
    """Exact timers for calls that mostly share one delay (the CONNECT
    timeout: every connection starts one, and nearly all are cancelled a
    moment later by their CONNECT).

    Calls are kept in arrival order, which is deadline order as long as each
    deadline is no earlier than the last one's; a single ``DelayedCall`` waits
    for the earliest.  A call that would jump the queue (a shorter delay) gets
    its own ``callLater``.  Calls run at their time, as with ``callLater``;
    a cancelled call costs nothing until it reaches the head.  While no call
    is pending, nothing is scheduled on the clock."""

    log = Logger()

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.calls: deque[QueuedCall] = deque()
        self.pending = 0
        self.wakeup: Any = None

    def call_later(self, delay: float, func: Callable[[], None]) -> Any:
        """Run ``func()`` ``delay`` seconds from now; returns the call (or, out
        of deadline order, the clock's own ``DelayedCall``)."""
        when = self.clock.seconds() + max(delay, 0.0)
        calls = self.calls
        if calls and when < calls[-1].when:
            return self.clock.callLater(delay, func)
        call = QueuedCall(self, when, func)
        calls.append(call)
        self.pending += 1
        if self.wakeup is None:
            self.wakeup = self.clock.callLater(delay, self._run)
        return call

    def __len__(self) -> int:
        return self.pending

    def _cancelled(self) -> None:
        self.pending -= 1
        if not self.pending:
            self.calls.clear()
            if self.wakeup is not None:
                self.wakeup.cancel()
                self.wakeup = None

    def _run(self) -> None:
        """Run the calls that are due, then wait for the next pending one."""
        self.wakeup = None
        now = self.clock.seconds() + _EPSILON
        calls = self.calls
        while calls and (calls[0].state != _PENDING or calls[0].when <= now):
            call = calls.popleft()
            if call.state != _PENDING:
                continue
            call.state = _CALLED
            self.pending -= 1
            try:
                call.func()
            except Exception:
                self.log.failure("timer {call!r} failed", call=call.func)
        if calls and self.wakeup is None:
            self.wakeup = self.clock.callLater(max(calls[0].when - self.clock.seconds(), 0.0),
                                               self._run)


_queues: weakref.WeakKeyDictionary[Any, DeadlineQueue] = weakref.WeakKeyDictionary()


_last_queue: tuple[Any, DeadlineQueue | None] = (None, None)  # as _last, for the queues


def deadlines_for(clock: Any) -> DeadlineQueue:
    """The one ``DeadlineQueue`` of ``clock`` (made on first use, forgotten with the clock)."""
    global _last_queue
    last_clock, queue = _last_queue
    if clock is last_clock and queue is not None:
        return queue
    queue = _queues.get(clock)
    if queue is None:
        queue = _queues[clock] = DeadlineQueue(clock)
    _last_queue = (clock, queue)
    return queue
