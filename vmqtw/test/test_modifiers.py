"""Validation of the modifiers plugins hand back in ``ok(**modifiers)`` (vmqtw.auth.modifiers)."""
from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from vmqtw.auth.api import ok
from vmqtw.auth.modifiers import PUBLISH, REGISTER, ModifierError, check, check_subscribe

#: Per register modifier: values that pass (with the value they become) and values that fail.
REGISTER_CASES: dict[str, tuple[list[tuple[Any, Any]], list[Any]]] = {
    "mountpoint": ([("tenant-a", "tenant-a"), ("", ""), ("a/b/", "a/b/"), ("x//", "x//")],
                   [None, 1, b"tenant", "a/+", "a/#"]),
    "client_id": ([("new-id", "new-id"), ("ü", "ü")], ["", None, 7, b"id"]),
    "username": ([("bob", "bob"), (None, None), ("", "")], [1, b"bob", ["bob"]]),
    "clean_session": ([(True, True), (False, False)], [1, 0, "on", None]),
    "clean_start": ([(True, True), (False, False)], [1, "true", None]),
    "max_message_size": ([(0, 0), (1024, 1024)], [-1, 1.5, "1024", True, None]),
    "max_inflight_messages": ([(0, 0), (65535, 65535)], [-1, 65536, False, "20"]),
    "max_online_messages": ([(-1, -1), (0, 0), (10**6, 10**6)], [-2, True, 1.0]),
    "max_offline_messages": ([(-1, -1), (5, 5)], [-2, "5", None]),
    "max_connection_lifetime": ([(0, 0), (3600, 3600)], [-1, True, "1h"]),
    "max_message_rate": ([(0, 0), (100, 100)], [-1, True, "10/s"]),
    "retry_interval": ([(0, 0), (20, 20)], [-5, 2.5]),
    "upgrade_qos": ([(True, True), (False, False)], [1, "off"]),
}

PUBLISH_CASES: dict[str, tuple[list[tuple[Any, Any]], list[Any]]] = {
    "topic": ([("a/b", "a/b"), ("/", "/"), ("$SYS/x", "$SYS/x")],
              ["", "a/+", "a/#", "a\x00b", None, b"a/b"]),
    "payload": ([(b"raw", b"raw"), ("text é", "text é".encode()), (bytearray(b"x"), b"x"),
                 (b"", b"")],
                [None, 3, ["x"]]),
    "qos": ([(0, 0), (1, 1), (2, 2)], [-1, 3, True, "1", None]),
    "retain": ([(True, True), (False, False)], [1, None, "yes"]),
    "mountpoint": ([("m", "m"), ("", ""), ("m/", "m/")], ["m/+", None]),
    "properties": ([({}, {}),
                    ({"user_property": [("k", "v")], "content_type": "t"},
                     {"user_property": [("k", "v")], "content_type": "t"}),
                    ({"message_expiry_interval": 5}, {"message_expiry_interval": 5})],
                   [None, [("k", "v")], {"topic_alias": 1}, {"subscription_identifier": [1]},
                    {"content_type": 7}, {"session_expiry_interval": 5},
                    {"payload_format_indicator": 2}, {"nonsense": 1}]),
}


class RegisterModifierTests(SynchronousTestCase):

    def test_every_modifier_is_covered(self) -> None:
        """The table of cases covers exactly the auth_on_register modifiers the broker
        accepts, so a new modifier cannot go untested."""
        self.assertEqual(set(REGISTER), set(REGISTER_CASES))

    def test_valid_values(self) -> None:
        """Valid auth_on_register modifier values are accepted and normalised, with the
        expected type: a mountpoint is kept as written (trailing slashes too, as the
        listener option keeps them), username may be None,
        integer limits accept their boundaries (-1 meaning unlimited for the message
        queues)."""
        for name, (good, _bad) in REGISTER_CASES.items():
            for value, expected in good:
                got = check(REGISTER, {name: value}, "auth_on_register")
                self.assertEqual(got, {name: expected}, f"{name}={value!r}")
                self.assertIs(type(got[name]), type(expected), f"{name}={value!r}")

    def test_invalid_values(self) -> None:
        """Invalid auth_on_register modifier values (wrong type, bool for an integer, out of
        range, wildcards in a mountpoint, an empty client id) raise ModifierError whose
        message names the hook and the modifier."""
        for name, (_good, bad) in REGISTER_CASES.items():
            for value in bad:
                with self.assertRaises(ModifierError, msg=f"{name}={value!r}") as cm:
                    check(REGISTER, {name: value}, "auth_on_register")
                # the message names the hook and the modifier, for the log
                self.assertIn(f"auth_on_register: modifier {name}:", str(cm.exception))

    def test_unknown_modifier(self) -> None:
        """An unknown auth_on_register modifier raises ModifierError naming it and listing
        the known names."""
        with self.assertRaises(ModifierError) as cm:
            check(REGISTER, {"mountpiont": "x"}, "auth_on_register")
        message = str(cm.exception)
        self.assertIn("unknown modifier 'mountpiont'", message)
        self.assertIn("mountpoint", message)  # the known names are listed

    def test_several_at_once(self) -> None:
        """Several auth_on_register modifiers returned together are all checked and
        normalised."""
        mods = ok(mountpoint="t/", client_id="c2", username=None, max_inflight_messages=5)
        self.assertEqual(check(REGISTER, mods.modifiers, "auth_on_register"),
                         {"mountpoint": "t/", "client_id": "c2", "username": None,
                          "max_inflight_messages": 5})

    def test_one_bad_modifier_fails_all(self) -> None:
        """One invalid modifier makes the whole set fail, even next to valid ones."""
        self.assertRaises(ModifierError, check, REGISTER,
                          {"mountpoint": "ok", "max_message_size": -1}, "auth_on_register")

    def test_empty(self) -> None:
        """No modifiers check to an empty dict."""
        self.assertEqual(check(REGISTER, {}, "auth_on_register"), {})

    def test_publish_modifiers_are_not_register_modifiers(self) -> None:
        """A publish modifier (topic) is refused in an auth_on_register result."""
        self.assertRaises(ModifierError, check, REGISTER, {"topic": "a"}, "auth_on_register")

    def test_modifier_error_is_a_value_error(self) -> None:
        """ModifierError is a ValueError."""
        self.assertTrue(issubclass(ModifierError, ValueError))


class PublishModifierTests(SynchronousTestCase):

    def test_every_modifier_is_covered(self) -> None:
        """The table of cases covers exactly the auth_on_publish modifiers the broker
        accepts."""
        self.assertEqual(set(PUBLISH), set(PUBLISH_CASES))

    def test_valid_values(self) -> None:
        """Valid auth_on_publish modifier values are accepted and normalised: a str or
        bytearray payload becomes bytes (UTF-8), a mountpoint is kept as written,
        5.0 properties that a plugin may set pass unchanged."""
        for name, (good, _bad) in PUBLISH_CASES.items():
            for value, expected in good:
                got = check(PUBLISH, {name: value}, "auth_on_publish")
                self.assertEqual(got, {name: expected}, f"{name}={value!r}")
                self.assertIs(type(got[name]), type(expected), f"{name}={value!r}")

    def test_invalid_values(self) -> None:
        """Invalid auth_on_publish modifier values raise ModifierError naming the hook and
        the modifier: a value of the wrong type, a topic with wildcards, NUL or empty, a
        QoS outside 0-2, a mountpoint with wildcards, and properties a plugin may not set
        (topic alias, subscription identifier, session expiry), of the wrong type or
        unknown."""
        for name, (_good, bad) in PUBLISH_CASES.items():
            for value in bad:
                with self.assertRaises(ModifierError, msg=f"{name}={value!r}") as cm:
                    check(PUBLISH, {name: value}, "auth_on_publish")
                self.assertIn(f"auth_on_publish: modifier {name}:", str(cm.exception))

    def test_unknown_modifier(self) -> None:
        """A modifier that auth_on_publish does not know (a register modifier, an invented
        name) raises ModifierError."""
        for name in ("client_id", "throttle"):
            self.assertRaises(ModifierError, check, PUBLISH, {name: 1}, "auth_on_publish")

    def test_whole_rewrite(self) -> None:
        """Topic, payload, QoS, retain and mountpoint may all be rewritten at once."""
        self.assertEqual(
            check(PUBLISH, {"topic": "new/t", "payload": "p", "qos": 1, "retain": True,
                            "mountpoint": "other"}, "auth_on_publish"),
            {"topic": "new/t", "payload": b"p", "qos": 1, "retain": True,
             "mountpoint": "other"})


class SubscribeModifierTests(SynchronousTestCase):

    requested = [("a/b", 1), ("c/#", 2)]

    def test_no_topics_keeps_the_request(self) -> None:
        """Without a topics modifier the subscription request is kept as the client sent it."""
        self.assertEqual(check_subscribe({}, self.requested), self.requested)

    def test_rewrite(self) -> None:
        """A topics modifier replaces the filters and QoS of the request, one entry per
        requested filter."""
        self.assertEqual(check_subscribe({"topics": [("x/b", 0), ("c/#", 1)]}, self.requested),
                         [("x/b", 0), ("c/#", 1)])

    def test_lists_accepted_as_entries(self) -> None:
        """Topics entries may be lists as well as tuples; they come back as tuples."""
        self.assertEqual(check_subscribe({"topics": [["a/b", 1], ["c/+", 2]]}, self.requested),
                         [("a/b", 1), ("c/+", 2)])

    def test_deny_single_entries(self) -> None:
        """A topics entry with QoS 0x80 refuses that one filter while the others are
        granted; any QoS outside 0-2 also becomes 0x80."""
        got = check_subscribe({"topics": [("a/b", 0x80), ("c/#", 2)]}, self.requested)
        self.assertEqual(got, [("a/b", 0x80), ("c/#", 2)])
        for q in (3, -1, 127, 256):
            got = check_subscribe({"topics": [("a/b", q), ("c/#", 0)]}, self.requested)
            self.assertEqual(got[0], ("a/b", 0x80), q)

    def test_shared_filter(self) -> None:
        """A topics entry may rewrite a filter into a shared subscription
        ($share/group/filter)."""
        self.assertEqual(
            check_subscribe({"topics": [("$share/g/a/b", 1), ("c/#", 2)]}, self.requested),
            [("$share/g/a/b", 1), ("c/#", 2)])

    def test_wrong_shape(self) -> None:
        """A topics modifier that is not a list with exactly one (str filter, int QoS) pair
        per requested filter raises ModifierError."""
        bad = [
            {"topics": "a/b"},
            {"topics": [("a/b", 1)]},                        # one entry short
            {"topics": [("a/b", 1), ("c", 1), ("d", 1)]},    # one too many
            {"topics": [("a/b", 1), "c/#"]},
            {"topics": [("a/b", 1), ("c/#",)]},
            {"topics": [("a/b", 1), ("c/#", 1, 2)]},
            {"topics": [("a/b", 1), (b"c/#", 1)]},
            {"topics": [("a/b", 1), ("c/#", "1")]},
            {"topics": [("a/b", 1), ("c/#", True)]},
            {"topics": [("a/b", 1), ("c/#", None)]},
            {"topics": (("a/b", 1), ("c/#", 1))},            # a tuple, not a list
        ]
        for mods in bad:
            self.assertRaises(ModifierError, check_subscribe, mods, self.requested)

    def test_invalid_rewritten_filter(self) -> None:
        """A rewritten filter that is not a valid topic filter (empty, "#" not last, "+"
        inside a level, NUL, a malformed $share) raises ModifierError saying so."""
        for f in ("", "a/#/b", "a+", "x\x00", "$share/g", "$share//a", "$share/g+/a"):
            with self.assertRaises(ModifierError, msg=repr(f)) as cm:
                check_subscribe({"topics": [(f, 1), ("c/#", 1)]}, self.requested)
            self.assertIn("invalid topic filter", str(cm.exception))

    def test_unknown_modifier(self) -> None:
        """A subscribe modifier other than topics raises ModifierError naming it."""
        with self.assertRaises(ModifierError) as cm:
            check_subscribe({"topics": [("a/b", 1), ("c/#", 1)], "qos": 1}, self.requested)
        self.assertIn("qos", str(cm.exception))
