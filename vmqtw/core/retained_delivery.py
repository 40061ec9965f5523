"""Retained messages for a new subscription, a bounded amount of work at a time.

A wildcard SUBSCRIBE may match a large part of the retained messages (the
issue's probe: 200,000 of them, 6.7 s with every other client frozen).  So
the matches are found and delivered ``steps`` trie steps per input batch or
reactor turn, over all new subscriptions together (one job after the other,
``clock.callLater(0, ...)`` between slices): other clients' packets are
handled between two slices.  The first slice runs at once, so a small
lookup still ends before the SUBSCRIBE's input batch is flushed.

A slice stops the job when the subscription is gone or replaced (unsubscribe,
a new SUBSCRIBE of the same filter, a session taken over or ended).

The quotas ``max_retained_messages`` and ``max_retained_bytes`` (payload
bytes) are checked here too (``RetainedSender.allowed``).
"""
from __future__ import annotations

from collections import deque
from itertools import islice
from typing import TYPE_CHECKING, Any, Iterator

from vmqtw.codec.packets import SubOptions
from vmqtw.core.message import Message

if TYPE_CHECKING:  # pragma: no cover
    from vmqtw.core.broker import Broker, Subscription
    from vmqtw.core.retained import RetainedTree
    from vmqtw.core.session import Session

__all__ = ["RetainedSender", "STEPS_PER_TURN"]

#: Trie steps (or matches) per reactor turn: about a millisecond of work.
STEPS_PER_TURN = 1000


class _Job:
    __slots__ = ("session", "inner", "sub", "options", "matches")

    def __init__(self, session: "Session", inner: str, sub: "Subscription",
                 options: SubOptions, matches: Iterator[Message | None]) -> None:
        self.session = session
        self.inner = inner
        self.sub = sub
        self.options = options
        self.matches = matches


class RetainedSender:
    """Delivers retained messages to new subscriptions in slices; checks the quotas."""

    def __init__(self, broker: "Broker", steps: int = STEPS_PER_TURN) -> None:
        self.broker = broker
        #: Trie steps per input batch or reactor turn, over all subscriptions.
        self.steps = steps
        self.budget = steps
        self.jobs: deque[_Job] = deque()
        self.call: Any = None
        #: Retained messages refused for a quota, since the start.
        self.refused = 0

    def _tree(self) -> "RetainedTree | None":
        get_tree = getattr(self.broker.store, "retained_tree", None)
        return get_tree() if get_tree is not None else None

    # -- quotas ----------------------------------------------------------------------------

    def allowed(self, mountpoint: str, message: Message) -> bool:
        """Whether retaining ``message`` stays within ``max_retained_messages``
        and ``max_retained_bytes`` (replacing a topic's message counts the
        difference; clearing one is always allowed)."""
        config = self.broker.config
        max_count, max_bytes = config.max_retained_messages, config.max_retained_bytes
        if not message.payload or not (max_count or max_bytes):
            return True
        tree = self._tree()
        if tree is None:
            count = self.broker.store.retained_count()
            return not max_count or count < max_count
        old = tree.get(mountpoint, message.topic)
        if max_count and old is None and len(tree) >= max_count:
            return False
        if max_bytes:
            grown = len(message.payload) - (len(old.payload) if old is not None else 0)
            if tree.nbytes + grown > max_bytes:
                return False
        return True

    def refuse(self, mountpoint: str, message: Message, client_id: str | None) -> None:
        """Count (and log, the first time and then every 1000th) a refused retain."""
        self.refused += 1
        if self.refused % 1000 == 1:
            self.broker.log.warn(
                "retained message quota reached (max_retained_messages {count}, "
                "max_retained_bytes {nbytes}): {topic!r} from {client_id!r} is not retained "
                "({refused} refused so far)", count=self.broker.config.max_retained_messages,
                nbytes=self.broker.config.max_retained_bytes, topic=message.topic,
                client_id=client_id, refused=self.refused)

    # -- delivery --------------------------------------------------------------------------

    def start(self, session: "Session", inner: str, sub: "Subscription",
              options: SubOptions) -> None:
        """Deliver the retained messages ``inner`` matches to ``session``: now
        while this input batch's budget lasts, the rest on later turns."""
        mountpoint = session.mountpoint
        tree = self._tree()
        if tree is not None:
            matches: Iterator[Message | None] = tree.iter_match(mountpoint, inner)
        else:  # a store without a tree: one lookup, delivered in slices
            matches = iter(self.broker.store.retained_match(mountpoint, inner))
        self.jobs.append(_Job(session, inner, sub, options, matches))
        self._run()

    @property
    def pending(self) -> int:
        """Jobs not finished yet."""
        return len(self.jobs)

    def new_batch(self) -> None:
        """An input batch (or timer) was handled: the next one gets a new budget."""
        self.budget = self.steps

    def _run(self) -> None:
        jobs = self.jobs
        while jobs and self.budget > 0:
            job = jobs[0]
            used, done = self._slice(job, self.budget)
            self.budget -= used
            if done:
                jobs.popleft()
        if jobs and self.call is None:
            self.call = self.broker.clock.callLater(0, self._turn)

    def _turn(self) -> None:
        self.call = None
        self.budget = self.steps
        self._run()
        self.broker.flush()

    def _current(self, job: _Job) -> bool:
        """Whether the job's subscription is still the one in the topic tree."""
        broker = self.broker
        session = job.session
        if broker.sessions.get(session.key) is not session:
            return False
        tree = broker.trees.get(session.mountpoint)
        return tree is not None and tree.get(job.inner, session.key) is job.sub

    def _slice(self, job: _Job, budget: int) -> tuple[int, bool]:
        """Up to ``budget`` steps of the job: (steps taken, is it over)."""
        if not self._current(job):
            return 1, True
        session, options = job.session, job.options
        store = self.broker.store
        now: float | None = None
        steps = 0
        for msg in islice(job.matches, budget):
            steps += 1
            if msg is None:
                continue
            if msg.expires_at is not None:
                if now is None:
                    now = self.broker.clock.seconds()
                if now >= msg.expires_at:  # expired: forget it (checked lazily)
                    store.retained_set(session.mountpoint, msg.topic, None)
                    continue
            qos = options.qos if session.upgrade_qos else min(msg.qos, options.qos)
            session.deliver(msg, qos, True, job.sub.sub_ids)
        return max(steps, 1), steps < budget
