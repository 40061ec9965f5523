"""Publish/subscribe hooks that may answer later (Chain.run_deferrable and the
Authorizer's ``deferrable`` switch), which the webhook plugin relies on."""
from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from vmqtw.auth.api import (
    NEXT, OK, Error, IAuthOnPublish, IAuthOnPublishM5, IAuthOnSubscribe, Ok, error, ok,
)
from vmqtw.auth.chain import CANCELLED, PLUGIN_ERROR, Authorizer, Chain, PluginResultError


@implementer(IAuthOnPublish, IAuthOnSubscribe)
class Answering:
    """Answers auth_on_publish/subscribe with ``answer`` (or what a callable returns)."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.calls = 0

    def _answer(self) -> Any:
        self.calls += 1
        return self.answer() if callable(self.answer) else self.answer

    def auth_on_publish(self, client: Any, topic: str, payload: bytes, qos: int,
                        retain: bool) -> Any:
        return self._answer()

    def auth_on_subscribe(self, client: Any, topics: Any) -> Any:
        return self._answer()


@implementer(IAuthOnPublishM5)
class AnsweringM5:
    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.properties: Any = None

    def auth_on_publish_m5(self, client: Any, topic: str, payload: bytes, qos: int,
                           retain: bool, properties: Any) -> Any:
        self.properties = properties
        return self.answer


def publish(chain: Chain) -> Any:
    return chain.run_deferrable(IAuthOnPublish, "auth_on_publish", None, "t", b"", 0, False)


class RunDeferrableTests(SynchronousTestCase):

    def test_synchronous_answers_stay_synchronous(self) -> None:
        """When every plugin answers at once the result is a plain Result, no Deferred."""
        result = publish(Chain([("a", Answering(NEXT)), ("b", Answering(ok(qos=1)))]))
        self.assertIsInstance(result, Ok)
        self.assertEqual(result.modifiers, {"qos": 1})

    def test_deferred_answer_is_waited_for(self) -> None:
        """A Deferred answer gives a Deferred that fires with that plugin's verdict."""
        pending: defer.Deferred[Any] = defer.Deferred()
        after = Answering(OK)
        d = publish(Chain([("slow", Answering(pending)), ("after", after)]))
        self.assertIsInstance(d, defer.Deferred)
        self.assertNoResult(d)
        pending.callback(error("nope"))
        self.assertEqual(self.successResultOf(d).reason, "nope")
        self.assertEqual(after.calls, 0)

    def test_next_after_deferred_goes_on_with_the_chain(self) -> None:
        """NEXT from a late answer asks the following plugins, in order, once each."""
        pending: defer.Deferred[Any] = defer.Deferred()
        second: defer.Deferred[Any] = defer.Deferred()
        first = Answering(NEXT)
        last = Answering(OK)
        d = publish(Chain([("first", first), ("slow", Answering(pending)),
                           ("slow2", Answering(second)), ("last", last)]))
        pending.callback(NEXT)
        self.assertNoResult(d)
        second.callback(NEXT)
        self.assertIs(self.successResultOf(d), OK)
        self.assertEqual((first.calls, last.calls), (1, 1))

    def test_exhausted_after_deferred_denies(self) -> None:
        """A late NEXT from the last plugin is an exhausted chain: denied."""
        pending: defer.Deferred[Any] = defer.Deferred()
        d = publish(Chain([("slow", Answering(pending))]))
        pending.callback(NEXT)
        self.assertIsInstance(self.successResultOf(d), Error)

    def test_failing_deferred_is_a_logged_error(self) -> None:
        """A Deferred that fails is the plugin's error (logged), never an unhandled failure."""
        pending: defer.Deferred[Any] = defer.Deferred()
        d = publish(Chain([("slow", Answering(pending)), ("after", Answering(OK))]))
        pending.errback(ZeroDivisionError("late bug"))
        self.assertEqual(self.successResultOf(d).reason, PLUGIN_ERROR)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_deferred_with_non_result_is_an_error(self) -> None:
        """A Deferred firing with True (not a Result) counts as the plugin's error."""
        pending: defer.Deferred[Any] = defer.Deferred()
        d = publish(Chain([("bad", Answering(pending))]))
        pending.callback(True)
        self.assertEqual(self.successResultOf(d).reason, PLUGIN_ERROR)
        self.assertEqual(len(self.flushLoggedErrors(PluginResultError)), 1)

    def test_cancel_cancels_the_plugin_answer(self) -> None:
        """Cancelling the chain's Deferred cancels the plugin's and fires with
        Error('cancelled'), logging nothing."""
        cancelled = []
        pending: defer.Deferred[Any] = defer.Deferred(cancelled.append)
        d = publish(Chain([("slow", Answering(pending))]))
        d.cancel()
        self.assertEqual(cancelled, [pending])
        self.assertEqual(self.successResultOf(d).reason, CANCELLED)

    def test_m5_variant_gets_the_properties(self) -> None:
        """run_deferrable_m5 asks a plugin's _m5 hook with the properties."""
        plugin = AnsweringM5(defer.succeed(OK))
        d = Chain([("m5", plugin)]).run_deferrable_m5(
            IAuthOnPublishM5, "auth_on_publish_m5", IAuthOnPublish, "auth_on_publish",
            (None, "t", b"", 0, False), {"content_type": "x"})
        self.assertIs(self.successResultOf(d), OK)
        self.assertEqual(plugin.properties, {"content_type": "x"})


class AuthorizerDeferrableTests(SynchronousTestCase):

    def test_default_refuses_a_deferred_answer_with_a_log_line(self) -> None:
        """Callers that cannot wait (deferrable=False, today's connection code) get
        a refusal and a logged error; the plugin's Deferred is cancelled."""
        cancelled = []
        pending: defer.Deferred[Any] = defer.Deferred(cancelled.append)
        auth = Authorizer(Chain([("hook", Answering(pending))]))
        for verdict in (auth.publish(None, "t", b"", 0, False),
                        auth.subscribe(None, [("t", 0)]),
                        auth.publish_m5(None, "t", b"", 0, False, {}),
                        auth.subscribe_m5(None, [("t", 0)], {})):
            self.assertIsInstance(verdict, Error)
            self.assertEqual(verdict.reason, PLUGIN_ERROR)
        self.assertEqual(cancelled, [pending])
        self.assertEqual(len(self.flushLoggedErrors(PluginResultError)), 4)

    def test_deferrable_returns_the_deferred(self) -> None:
        """With deferrable=True every authorize call passes a Deferred answer on."""
        auth = Authorizer(Chain([("hook", Answering(lambda: defer.succeed(OK)))]))
        for verdict in (auth.publish(None, "t", b"", 0, False, deferrable=True),
                        auth.subscribe(None, [("t", 0)], deferrable=True),
                        auth.publish_m5(None, "t", b"", 0, False, {}, deferrable=True),
                        auth.subscribe_m5(None, [("t", 0)], {}, deferrable=True)):
            self.assertIs(self.successResultOf(verdict), OK)

    def test_deferrable_synchronous_plugin_is_synchronous(self) -> None:
        """deferrable=True with synchronous plugins still answers a plain Result."""
        auth = Authorizer(Chain([("hook", Answering(OK))]))
        self.assertIs(auth.publish(None, "t", b"", 0, False, deferrable=True), OK)
        self.assertIs(auth.subscribe_m5(None, [("t", 0)], {}, deferrable=True), OK)
