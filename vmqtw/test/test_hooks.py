"""Notification hooks (vmqtw.auth.hooks.Notifier)."""
from __future__ import annotations

from typing import Any

from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from vmqtw.auth import api
from vmqtw.auth.api import NEXT, OK, error, ok
from vmqtw.auth.chain import PluginResultError
from vmqtw.auth.hooks import Notifier
from vmqtw.auth.modifiers import ModifierError

NOTIFICATIONS = (api.IOnRegister, api.IOnPublish, api.IOnSubscribe, api.IOnClientWakeup,
                 api.IOnClientOffline, api.IOnClientGone, api.IOnSessionExpired)


class Session:
    def __init__(self, mountpoint: str = "mp", client_id: str = "c1",
                 username: str | None = "u") -> None:
        self.mountpoint = mountpoint
        self.client_id = client_id
        self.username = username


@implementer(*NOTIFICATIONS)
class Recorder:
    """Records every notification; raises instead when ``fail`` is set."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.calls: list[tuple[Any, ...]] = []

    def _record(self, *call: Any) -> Any:
        self.calls.append(call)
        if self.fail:
            raise ZeroDivisionError(f"plugin bug in {call[0]}")
        return "ignored"  # return values of notifications do not matter

    def on_register(self, client: Any) -> Any:
        return self._record("on_register", client.client_id)

    def on_publish(self, client: Any, topic: str, payload: bytes, qos: int,
                   retain: bool) -> Any:
        return self._record("on_publish", client.client_id, topic, payload, qos, retain)

    def on_subscribe(self, client: Any, topics: list[tuple[str, int]]) -> Any:
        return self._record("on_subscribe", client.client_id, topics)

    def on_client_wakeup(self, mountpoint: str, client_id: str) -> Any:
        return self._record("on_client_wakeup", mountpoint, client_id)

    def on_client_offline(self, mountpoint: str, client_id: str) -> Any:
        return self._record("on_client_offline", mountpoint, client_id)

    def on_client_gone(self, mountpoint: str, client_id: str) -> Any:
        return self._record("on_client_gone", mountpoint, client_id)

    def on_session_expired(self, mountpoint: str, client_id: str) -> Any:
        return self._record("on_session_expired", mountpoint, client_id)


@implementer(api.IOnClientGone)
class GoneOnly:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def on_client_gone(self, mountpoint: str, client_id: str) -> None:
        self.calls.append((mountpoint, client_id))


@implementer(api.IOnUnsubscribe)
class Unsub:
    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.calls: list[list[str]] = []

    def on_unsubscribe(self, client: Any, topics: list[str]) -> Any:
        self.calls.append(list(topics))
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer(topics) if callable(self.answer) else self.answer


def fire_all(n: Notifier, s: Session) -> None:
    n.on_register(s)
    n.on_publish(s, "a/b", b"p", 1, True)
    n.on_subscribe(s, [("a/#", 1)])
    for event in ("wakeup", "offline", "gone", "expired"):
        n.session_event(event, s)


ALL_CALLS = [
    ("on_register", "c1"),
    ("on_publish", "c1", "a/b", b"p", 1, True),
    ("on_subscribe", "c1", [("a/#", 1)]),
    ("on_client_wakeup", "mp", "c1"),
    ("on_client_offline", "mp", "c1"),
    ("on_client_gone", "mp", "c1"),
    ("on_session_expired", "mp", "c1"),
]


class NotificationTests(SynchronousTestCase):

    def test_every_provider_is_called_in_order(self) -> None:
        """A notification reaches the plugins in the order they were configured."""
        order: list[str] = []
        a, b = Recorder(), Recorder()
        a.on_register = lambda c: order.append("a")  # type: ignore[method-assign]
        b.on_register = lambda c: order.append("b")  # type: ignore[method-assign]
        Notifier([("a", a), ("b", b)]).on_register(Session())
        self.assertEqual(order, ["a", "b"])

    def test_all_hooks_reach_every_plugin(self) -> None:
        """Every notification hook (on_register, on_publish, on_subscribe and the four
        session events) reaches every plugin that provides it, with the client's id,
        mountpoint and arguments."""
        a, b = Recorder(), Recorder()
        fire_all(Notifier([("a", a), ("b", b)]), Session())
        self.assertEqual(a.calls, ALL_CALLS)
        self.assertEqual(b.calls, ALL_CALLS)

    def test_plugins_without_the_hook_are_not_called(self) -> None:
        """A plugin is called only for the hooks it declares: one providing only
        on_client_gone gets only that, and the Notifier has no providers for the hooks
        nobody implements."""
        gone = GoneOnly()
        n = Notifier([("gone", gone), ("unsub", Unsub(NEXT))])
        fire_all(n, Session())
        self.assertEqual(gone.calls, [("mp", "c1")])
        self.assertEqual((n.register, n.publish, n.subscribe), ([], [], []))

    def test_no_plugins(self) -> None:
        """Without plugins every notification is a no-op and on_unsubscribe keeps the topics
        unchanged."""
        n = Notifier([])
        fire_all(n, Session())  # nothing to call, nothing fails
        self.assertEqual(n.on_unsubscribe(Session(), ["a"]), ["a"])

    def test_raising_plugin_is_logged_and_others_still_run(self) -> None:
        """A plugin raising in a notification hook has its error logged once per hook, and
        the plugins after it are still notified."""
        bad, good = Recorder(fail=True), Recorder()
        fire_all(Notifier([("bad", bad), ("good", good)]), Session())
        self.assertEqual(good.calls, ALL_CALLS)
        self.assertEqual(bad.calls, ALL_CALLS)  # each hook was tried once
        errors = self.flushLoggedErrors(ZeroDivisionError)
        self.assertEqual(len(errors), len(ALL_CALLS))

    def test_failure_names_the_plugin_and_hook(self) -> None:
        """The logged failure of a notification hook names the plugin and the hook and
        carries the exception."""
        events: list[dict[str, Any]] = []
        self.patch(Notifier, "log", Logger(observer=events.append))
        Notifier([("buggy", Recorder(fail=True))]).session_event("gone", Session())
        (event,) = events
        self.assertEqual((event["plugin"], event["hook"]), ("buggy", "on_client_gone"))
        self.assertTrue(event["log_failure"].check(ZeroDivisionError))

    def test_unknown_session_event_is_ignored(self) -> None:
        """Session events without a notification hook ("register", unknown names) call no
        plugin."""
        rec = Recorder()
        Notifier([("r", rec)]).session_event("register", Session())
        Notifier([("r", rec)]).session_event("something-new", Session())
        self.assertEqual(rec.calls, [])


class SessionEventMappingTests(SynchronousTestCase):
    """Broker session events -> hooks, with (mountpoint, client id)."""

    def test_mapping(self) -> None:
        """Broker session events map to hooks: wakeup to on_client_wakeup, offline to
        on_client_offline, gone to on_client_gone, expired to on_session_expired, each
        called with the session's mountpoint and client id."""
        mapping = {"wakeup": "on_client_wakeup", "offline": "on_client_offline",
                   "gone": "on_client_gone", "expired": "on_session_expired"}
        for event, hook in mapping.items():
            rec = Recorder()
            Notifier([("r", rec)]).session_event(event, Session("tenant", "dev-7"))
            self.assertEqual(rec.calls, [(hook, "tenant", "dev-7")], event)

    def test_empty_mountpoint(self) -> None:
        """The default mountpoint is passed to hooks as the empty string."""
        rec = Recorder()
        Notifier([("r", rec)]).session_event("gone", Session("", "x"))
        self.assertEqual(rec.calls, [("on_client_gone", "", "x")])

    def test_with_a_broker(self) -> None:
        """As a Broker.session_observers callback, through real sessions."""
        from twisted.internet.task import Clock

        from vmqtw.config import parse
        from vmqtw.core.broker import Broker

        config = parse("listener.tcp.t = 127.0.0.1:1883\n"
                       "persistent_client_expiration = 1h\n")
        clock = Clock()
        broker = Broker(config, clock)
        rec = Recorder()
        broker.session_observers.append(Notifier([("r", rec)]).session_event)

        class Conn:
            def session_taken_over(self) -> None:
                pass

            def write(self, data: bytes) -> None:
                pass

            def flush(self) -> None:
                pass

        clean, _ = broker.open_session(("m", "clean"), True, 0, Conn())
        broker.connection_closed(clean)
        persistent, _ = broker.open_session(("m", "p"), False, 3600, Conn())
        broker.connection_closed(persistent)
        persistent, present = broker.open_session(("m", "p"), False, 3600, Conn())
        self.assertTrue(present)
        broker.connection_closed(persistent)
        clock.advance(3601)
        self.assertEqual(rec.calls, [
            ("on_client_gone", "m", "clean"),
            ("on_client_offline", "m", "p"),
            ("on_client_wakeup", "m", "p"),
            ("on_client_offline", "m", "p"),
            ("on_session_expired", "m", "p"),
        ])


class UnsubscribeTests(SynchronousTestCase):
    """on_unsubscribe is a chain: the first answer that is not NEXT decides."""

    def test_rewrite(self) -> None:
        """ok(topics=...) from on_unsubscribe replaces the topics the client unsubscribes
        from; the plugin sees the topics the client sent."""
        p = Unsub(lambda topics: ok(topics=[t.replace("old/", "new/") for t in topics]))
        n = Notifier([("p", p)])
        self.assertEqual(n.on_unsubscribe(Session(), ["old/a", "b"]), ["new/a", "b"])
        self.assertEqual(p.calls, [["old/a", "b"]])

    def test_rewrite_to_nothing(self) -> None:
        """ok(topics=[]) from on_unsubscribe leaves no topic to unsubscribe from."""
        n = Notifier([("p", Unsub(ok(topics=[])))])
        self.assertEqual(n.on_unsubscribe(Session(), ["a"]), [])

    def test_ok_and_next_keep_the_topics(self) -> None:
        """OK, NEXT and ok() without modifiers keep the client's topics unchanged."""
        for answer in (OK, NEXT, ok()):
            n = Notifier([("p", Unsub(answer))])
            self.assertEqual(n.on_unsubscribe(Session(), ["a", "b"]), ["a", "b"], answer)

    def test_next_passes_to_the_next_plugin(self) -> None:
        """NEXT hands on_unsubscribe to the next plugin, whose answer decides; both plugins
        see the client's topics."""
        first, second = Unsub(NEXT), Unsub(ok(topics=["z"]))
        n = Notifier([("first", first), ("second", second)])
        self.assertEqual(n.on_unsubscribe(Session(), ["a"]), ["z"])
        self.assertEqual((first.calls, second.calls), ([["a"]], [["a"]]))

    def test_first_answer_wins(self) -> None:
        """The first answer that is not NEXT ends the chain and later plugins are not asked:
        OK and error keep the client's topics, ok(topics=...) replaces them."""
        for answer in (OK, error("no"), ok(topics=["x"])):
            later = Unsub(ok(topics=["later"]))
            n = Notifier([("first", Unsub(answer)), ("later", later)])
            got = n.on_unsubscribe(Session(), ["a"])
            self.assertEqual(got, ["x"] if answer.__class__.__name__ == "Ok"
                             and answer.modifiers else ["a"], answer)
            self.assertEqual(later.calls, [], answer)

    def test_raising_plugin_keeps_the_topics_and_is_logged(self) -> None:
        """A plugin raising in on_unsubscribe is logged, the client's topics are kept, and
        later plugins are not asked."""
        later = Unsub(ok(topics=["later"]))
        n = Notifier([("bad", Unsub(ZeroDivisionError("bug"))), ("later", later)])
        self.assertEqual(n.on_unsubscribe(Session(), ["a"]), ["a"])
        self.assertEqual(later.calls, [])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_non_result_is_logged(self) -> None:
        """An on_unsubscribe answer that is not a plugin result (True, None, a list) is
        logged as a PluginResultError and the client's topics are kept."""
        for value in (True, None, ["x"]):
            n = Notifier([("p", Unsub(value))])
            self.assertEqual(n.on_unsubscribe(Session(), ["a"]), ["a"])
            self.assertEqual(len(self.flushLoggedErrors(PluginResultError)), 1, value)

    def test_bad_topics_modifier_is_logged(self) -> None:
        """A topics modifier that is not a list of str (a str, bytes or int items, None, a
        tuple) is logged as a ModifierError and the client's topics are kept."""
        for topics in ("a", [b"a"], [1], None, ("a",)):
            n = Notifier([("p", Unsub(ok(topics=topics)))])
            self.assertEqual(n.on_unsubscribe(Session(), ["a"]), ["a"])
            self.assertEqual(len(self.flushLoggedErrors(ModifierError)), 1, topics)
