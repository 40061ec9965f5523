"""
Tests for ``vmqtw.auth.acl``: the vmq_acl plugin.
"""
from __future__ import annotations

import os

from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel, formatEvent
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from vmqtw.auth.acl import AclPlugin, make_plugin
from vmqtw.auth.api import NEXT, OK, IAuthOnPublish, IAuthOnSubscribe, IClient
from vmqtw.auth.context import PluginContext


@implementer(IClient)
class Client:
    def __init__(self, client_id: str = "c1", username: str | None = None,
                 mountpoint: str = "") -> None:
        self.client_id = client_id
        self.username = username
        self.mountpoint = mountpoint
        self.peer = ("127.0.0.1", 40000)
        self.listener = "tcp.default"


ANON = Client("anon-client")
ALICE = Client("alice-phone", "alice")
BOB = Client("bob-laptop", "bob")


class AclTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.clock = Clock()
        self.events: list[dict] = []
        self.context = PluginContext(self.clock, self.dir, Logger(observer=self.events.append))
        self.path = os.path.join(self.dir, "vmq.acl")

    def write(self, text: str | bytes) -> None:
        with open(self.path, "wb") as f:
            f.write(text.encode("utf-8") if isinstance(text, str) else text)

    def plugin(self, *lines: str, **settings: str) -> AclPlugin:
        self.write("".join(line + "\n" for line in lines))
        return make_plugin(settings, self.context)

    def logged(self, level: LogLevel) -> list[str]:
        return [formatEvent(e) for e in self.events if e["log_level"] == level]

    def pub(self, plugin: AclPlugin, client: Client, topic: str) -> bool:
        result = plugin.auth_on_publish(client, topic, b"payload", 0, False)
        self.assertIn(result, (OK, NEXT))
        return result is OK

    def sub(self, plugin: AclPlugin, client: Client, *filters: str) -> bool:
        result = plugin.auth_on_subscribe(client, [(f, 1) for f in filters])
        self.assertIn(result, (OK, NEXT))
        return result is OK


class EvaluationTests(AclTestCase):
    def test_interfaces(self) -> None:
        """The plugin provides both ``IAuthOnPublish`` and ``IAuthOnSubscribe``."""
        plugin = self.plugin("topic #")
        self.assertTrue(verifyObject(IAuthOnPublish, plugin))
        self.assertTrue(verifyObject(IAuthOnSubscribe, plugin))

    def test_all_table_applies_to_everyone(self) -> None:
        """topic lines before the first user line apply to every client (VerneMQ's code)."""
        plugin = self.plugin("topic public/#", "user alice", "topic private/alice")
        for client in (ANON, ALICE, BOB):
            self.assertTrue(self.pub(plugin, client, "public/x"))
            self.assertTrue(self.sub(plugin, client, "public/#"))
        self.assertTrue(self.pub(plugin, ALICE, "private/alice"))
        self.assertFalse(self.pub(plugin, BOB, "private/alice"))
        self.assertFalse(self.pub(plugin, ANON, "private/alice"))

    def test_user_is_username_not_client_id(self) -> None:
        """
        A ``user`` block matches the CONNECT username only; a client id equal to the name does
        not match it.
        """
        plugin = self.plugin("user alice", "topic a")
        self.assertFalse(self.pub(plugin, Client("alice"), "a"))
        self.assertFalse(self.pub(plugin, Client("alice", "bob"), "a"))
        self.assertTrue(self.pub(plugin, Client("other", "alice"), "a"))

    def test_user_blocks(self) -> None:
        """
        Rules of a ``user`` block apply only to that user, and a user named in several blocks
        gets the rules of all of them.
        """
        plugin = self.plugin("user alice", "topic a", "user bob", "topic b", "user alice",
                             "topic c")
        self.assertTrue(self.pub(plugin, ALICE, "a"))
        self.assertTrue(self.pub(plugin, ALICE, "c"))
        self.assertFalse(self.pub(plugin, ALICE, "b"))
        self.assertTrue(self.pub(plugin, BOB, "b"))
        self.assertFalse(self.pub(plugin, BOB, "c"))

    def test_access_words(self) -> None:
        """
        ``read`` grants subscribe only, ``write`` publish only, and ``readwrite`` or no access
        word both.
        """
        plugin = self.plugin("topic read r", "topic write w", "topic readwrite rw", "topic both")
        self.assertTrue(self.sub(plugin, ANON, "r"))
        self.assertFalse(self.pub(plugin, ANON, "r"))
        self.assertFalse(self.sub(plugin, ANON, "w"))
        self.assertTrue(self.pub(plugin, ANON, "w"))
        for topic in ("rw", "both"):
            self.assertTrue(self.sub(plugin, ANON, topic))
            self.assertTrue(self.pub(plugin, ANON, topic))

    def test_pattern_access_words(self) -> None:
        """
        ``pattern`` lines take the same access words as ``topic`` lines, with the same meaning.
        """
        plugin = self.plugin("pattern read r/%c", "pattern write w/%c", "pattern x/%c",
                             "pattern readwrite y/%c")
        c = Client("me")
        self.assertTrue(self.sub(plugin, c, "r/me"))
        self.assertFalse(self.pub(plugin, c, "r/me"))
        self.assertFalse(self.sub(plugin, c, "w/me"))
        self.assertTrue(self.pub(plugin, c, "w/me"))
        for t in ("x/me", "y/me"):
            self.assertTrue(self.sub(plugin, c, t))
            self.assertTrue(self.pub(plugin, c, t))

    def test_patterns_apply_after_user_lines(self) -> None:
        """
        ``pattern`` lines apply to every client, even when they follow a ``user`` block, and
        grant only the topics their substitution gives for that client.
        """
        plugin = self.plugin("user alice", "topic a", "pattern devices/%c/#")
        for client in (ANON, ALICE, BOB):
            self.assertTrue(self.pub(plugin, client, f"devices/{client.client_id}/temp"))
            self.assertTrue(self.sub(plugin, client, f"devices/{client.client_id}/#"))
            self.assertFalse(self.pub(plugin, client, "devices/someone-else/temp"))
        self.assertFalse(self.pub(plugin, BOB, "a"))

    def test_substitutions(self) -> None:
        """
        ``%u``, ``%c`` and ``%m`` are replaced by username, client id and mountpoint; a pattern
        with ``%u`` never matches a client without a username, while ``%c`` and ``%m`` still
        apply (an empty mountpoint gives an empty level).
        """
        plugin = self.plugin("pattern u/%u/#", "pattern c/%c", "pattern m/%m/x",
                             "pattern all/%m/%u/%c")
        alice = Client("cid", "alice", "tenant")
        self.assertTrue(self.pub(plugin, alice, "u/alice/inbox"))
        self.assertTrue(self.pub(plugin, alice, "u/alice"))
        self.assertFalse(self.pub(plugin, alice, "u/bob/inbox"))
        self.assertTrue(self.pub(plugin, alice, "c/cid"))
        self.assertTrue(self.pub(plugin, alice, "m/tenant/x"))
        self.assertTrue(self.pub(plugin, alice, "all/tenant/alice/cid"))
        self.assertFalse(self.pub(plugin, alice, "all/tenant/cid/alice"))
        # %u patterns are skipped without a user name; %c and %m still apply
        anon = Client("cid", None, "")
        self.assertFalse(self.pub(plugin, anon, "u/undefined/x"))
        self.assertFalse(self.pub(plugin, anon, "u//x"))
        self.assertTrue(self.pub(plugin, anon, "c/cid"))
        self.assertTrue(self.pub(plugin, anon, "m//x"))  # no mountpoint: an empty level
        self.assertFalse(self.pub(plugin, anon, "all//cid"))

    def test_substituted_values_are_literal(self) -> None:
        """A client id or user name never acts as a wildcard or spans levels."""
        plugin = self.plugin("pattern devices/%c/#", "pattern users/%u/inbox")
        plus = Client("+", "#")
        self.assertFalse(self.sub(plugin, plus, "devices/+/#"))
        self.assertFalse(self.pub(plugin, plus, "devices/other/x"))
        self.assertFalse(self.sub(plugin, plus, "users/#"))
        self.assertFalse(self.sub(plugin, plus, "users/+/inbox"))
        slash = Client("a/b", "x/y")
        self.assertFalse(self.pub(plugin, slash, "devices/a/b/c"))
        self.assertFalse(self.pub(plugin, slash, "users/x/y/inbox"))

    def test_percent_only_as_whole_level(self) -> None:
        """
        ``%c``/``%u``/``%m`` are substituted only as a whole level of a ``pattern`` line;
        elsewhere they are kept as literal text, with a warning naming ``PATH:LINE``.
        """
        plugin = self.plugin("pattern dev/%c-x", "topic t/%u")
        warnings = self.logged(LogLevel.warn)
        self.assertTrue(any(f"{self.path}:1:" in w and "whole topic level" in w
                            for w in warnings))
        self.assertTrue(any(f"{self.path}:2:" in w and "pattern lines" in w for w in warnings))
        self.assertFalse(self.pub(plugin, Client("c1"), "dev/c1-x"))
        self.assertTrue(self.pub(plugin, Client("c1"), "dev/%c-x"))
        self.assertTrue(self.pub(plugin, ALICE, "t/%u"))
        self.assertFalse(self.pub(plugin, ALICE, "t/alice"))

    def test_order_all_user_pattern(self) -> None:
        """Any of the three tables grants; none denies what another grants."""
        plugin = self.plugin("topic read x/#", "user alice", "topic write x/a",
                             "pattern write x/%u")
        self.assertTrue(self.sub(plugin, ALICE, "x/a"))   # all
        self.assertTrue(self.pub(plugin, ALICE, "x/a"))   # user
        self.assertTrue(self.pub(plugin, BOB, "x/bob"))   # pattern
        self.assertFalse(self.pub(plugin, BOB, "x/a"))

    def test_publish_matching(self) -> None:
        """
        A publish topic is matched against ACL filters with MQTT wildcard rules (``#`` also
        matching the parent level), case-sensitively and with empty levels significant; a
        ``write`` line never grants the same topic for subscribing.
        """
        cases = {
            "a/b": ["a/b", "a/+", "a/#", "#", "+/b", "+/+", "a/b/#"],
            "a": ["a", "a/#", "#", "+"],
        }
        denied = {
            "a/b": ["a", "a/c", "a/b/c", "+", "a/+/+", "b/#", "A/b", "a/b/"],
            "a": ["a/b", "a/+", "+/+", "b"],
        }
        for topic, grants in cases.items():
            for acl in grants:
                plugin = self.plugin(f"topic write {acl}")
                self.assertTrue(self.pub(plugin, ANON, topic), (acl, topic))
                self.assertFalse(self.sub(plugin, ANON, topic), (acl, topic))
        for topic, refusals in denied.items():
            for acl in refusals:
                plugin = self.plugin(f"topic {acl}")
                self.assertFalse(self.pub(plugin, ANON, topic), (acl, topic))

    def test_subscription_matching(self) -> None:
        """The request is matched against the ACL filter, wildcards as plain words."""
        granted = [
            ("a/#", "a/+"), ("a/+", "a/+"), ("#", "a/+"), ("+/+", "a/+"),
            ("a/#", "a/#"), ("#", "#"), ("#", "a/#"), ("a/#", "a/+/c"), ("a/+/c", "a/+/c"),
            ("+/+/c", "a/+/c"), ("a/b", "a/b"), ("a/#", "a"),
        ]
        refused = [
            ("a/b", "a/+"), ("a/b", "a/#"), ("a/+", "a/#"), ("a/+/#", "a/#"), ("+", "#"),
            ("a/+", "a/+/c"), ("a/b/c", "a/+/c"), ("a/+/d", "a/+/c"), ("b/#", "a/#"),
            ("a", "a/#"), ("a/b/#", "a/#"),
        ]
        for acl, request in granted:
            plugin = self.plugin(f"topic read {acl}")
            self.assertTrue(self.sub(plugin, ANON, request), (acl, request))
        for acl, request in refused:
            plugin = self.plugin(f"topic read {acl}")
            self.assertFalse(self.sub(plugin, ANON, request), (acl, request))

    def test_dollar_topics(self) -> None:
        """As in VerneMQ, '$' topics are not special: ACL '#' grants $SYS."""
        plugin = self.plugin("topic #")
        self.assertTrue(self.sub(plugin, ANON, "$SYS/#"))
        self.assertTrue(self.pub(plugin, ANON, "$SYS/x"))
        plugin = self.plugin("topic read +/broker/#")
        self.assertTrue(self.sub(plugin, ANON, "$SYS/broker/uptime"))
        plugin = self.plugin("topic read $SYS/#")
        self.assertTrue(self.sub(plugin, ANON, "$SYS/broker/uptime"))
        self.assertFalse(self.sub(plugin, ANON, "#"))

    def test_mountpoint_not_part_of_topic(self) -> None:
        """
        ACL filters are matched against the topic without the client's mountpoint; ``%m`` is
        how a rule names the mountpoint.
        """
        plugin = self.plugin("topic a/b", "pattern %m/own")
        tenant = Client("c", "u", "tenant")
        self.assertTrue(self.pub(plugin, tenant, "a/b"))
        self.assertFalse(self.pub(plugin, tenant, "tenant/a/b"))
        self.assertTrue(self.pub(plugin, tenant, "tenant/own"))

    def test_multi_topic_subscribe(self) -> None:
        """
        A SUBSCRIBE is granted only when every filter in it is granted; an empty list is
        granted.
        """
        plugin = self.plugin("topic read a/#", "topic read b")
        self.assertTrue(self.sub(plugin, ANON, "a/x", "b", "a/+"))
        self.assertFalse(self.sub(plugin, ANON, "a/x", "c", "b"))
        self.assertFalse(self.sub(plugin, ANON, "c", "a/x"))
        self.assertIs(plugin.auth_on_subscribe(ANON, []), OK)

    def test_shared_subscription(self) -> None:
        """
        For a ``$share/GROUP/FILTER`` subscription the ACL is checked on the inner filter; an
        invalid shared form is refused, and an ACL line naming ``$share/...`` grants nothing.
        """
        plugin = self.plugin("topic read a/#")
        self.assertTrue(self.sub(plugin, ANON, "$share/group/a/b"))
        self.assertTrue(self.sub(plugin, ANON, "$share/group/a/#"))
        self.assertFalse(self.sub(plugin, ANON, "$share/a/b"))   # inner filter is "b"
        self.assertFalse(self.sub(plugin, ANON, "$share/group/b"))
        self.assertFalse(self.sub(plugin, ANON, "$share/group"))  # invalid
        plugin = self.plugin("topic read $share/group/a")
        self.assertFalse(self.sub(plugin, ANON, "$share/group/a"))

    def test_empty_file_grants_nothing(self) -> None:
        """A file with only comments and blank lines grants neither publish nor subscribe."""
        plugin = self.plugin("# nothing", "")
        self.assertFalse(self.pub(plugin, ALICE, "a"))
        self.assertFalse(self.sub(plugin, ALICE, "a"))

    def test_spaces_inside_topic(self) -> None:
        """A filter may contain spaces (VerneMQ keeps them too)."""
        plugin = self.plugin("topic read my topic/x y", "user john smith", "topic z")
        self.assertTrue(self.sub(plugin, ANON, "my topic/x y"))
        self.assertTrue(self.pub(plugin, Client("c", "john smith"), "z"))
        self.assertEqual(self.logged(LogLevel.warn), [])


class ParseTests(AclTestCase):
    def test_crlf_and_whitespace_tolerated(self) -> None:
        """
        CRLF line ends, leading and trailing blanks, repeated spaces and tabs between words are
        tolerated and parsed as intended; each such line is warned about with ``PATH:LINE``,
        CRLF only once, and nothing is an error.
        """
        self.write("# CRLF file\r\n"
                   "topic read a\r\n"
                   "  topic write b\r\n"
                   "topic  read c\r\n"
                   "topic read   d  \r\n"
                   "user\talice\r\n"
                   "\t# indented comment\r\n"
                   "pattern\t\treadwrite\tp/%u\r\n"
                   "   \r\n")
        plugin = make_plugin({}, self.context)
        self.assertTrue(self.sub(plugin, ANON, "a"))
        self.assertFalse(self.pub(plugin, ANON, "a"))
        self.assertTrue(self.pub(plugin, ANON, "b"))
        self.assertTrue(self.sub(plugin, ANON, "c"))
        self.assertFalse(self.sub(plugin, ANON, "read c"))
        self.assertTrue(self.sub(plugin, ANON, "d"))
        self.assertTrue(self.pub(plugin, ALICE, "p/alice"))
        warnings = self.logged(LogLevel.warn)
        for line in (1, 3, 4, 5, 6, 7, 8):
            self.assertTrue(any(w.startswith(f"{self.path}:{line}: ") for w in warnings),
                            (line, warnings))
        self.assertEqual(sum("CRLF" in w for w in warnings), 1)
        self.assertEqual(self.logged(LogLevel.error), [])

    def test_byte_order_mark(self) -> None:
        """
        A UTF-8 byte order mark at the start of the file is skipped with a warning on line 1.
        """
        self.write(b"\xef\xbb\xbftopic read a\r\n")
        plugin = make_plugin({}, self.context)
        self.assertTrue(self.sub(plugin, ANON, "a"))
        warnings = self.logged(LogLevel.warn)
        self.assertTrue(any(w.startswith(f"{self.path}:1: UTF-8 byte order mark")
                            for w in warnings))

    def test_clean_file_no_warnings(self) -> None:
        """A well-formed file loads without any log event."""
        self.plugin("# comment", "topic read a/#", "", "user x", "topic b", "pattern c/%c")
        self.assertEqual(self.events, [])

    def test_access_word_without_filter(self) -> None:
        """'topic read' alone is the topic 'read', as in VerneMQ, with a warning."""
        plugin = self.plugin("topic read")
        self.assertTrue(self.pub(plugin, ANON, "read"))
        self.assertTrue(any(f"{self.path}:1:" in w for w in self.logged(LogLevel.warn)))

    def test_errors_at_start(self) -> None:
        """
        An unknown or wrongly capitalised keyword, ``user`` without a name, ``topic`` without a
        filter, an invalid filter or invalid UTF-8 refuses plugin start with ``PATH:LINE:`` and
        the reason.
        """
        cases = [
            (["topic a", "topics b"], 2, "unknown keyword"),
            (["Topic a"], 1, "unknown keyword"),
            (["topic a", "", "user"], 3, "without a user name"),
            (["topic"], 1, "without a topic filter"),
            (["pattern read a/#/b"], 1, "'#'"),
            (["topic a+"], 1, "'+'"),
            (["# ok", "allow all"], 2, "unknown keyword"),
        ]
        for lines, line, reason in cases:
            with self.assertRaises(ValueError) as cm:
                self.plugin(*lines)
            self.assertIn(f"{self.path}:{line}: ", str(cm.exception))
            self.assertIn(reason, str(cm.exception))
        self.write(b"topic \xff\n")
        with self.assertRaises(ValueError) as cm:
            make_plugin({}, self.context)
        self.assertIn(f"{self.path}:1: ", str(cm.exception))

    def test_missing_at_start(self) -> None:
        """A missing ACL file refuses plugin start with an error naming its full path."""
        with self.assertRaises(ValueError) as cm:
            make_plugin({"acl_file": "missing.acl"}, self.context)
        self.assertIn(os.path.join(self.dir, "missing.acl"), str(cm.exception))

    def test_settings(self) -> None:
        """
        ``acl_file`` defaults to ``vmq.acl`` in the configuration directory and
        ``acl_reload_interval`` to 10 seconds; a negative, non-numeric or hexadecimal
        interval and an unknown ``vmq_acl.*`` setting are refused with the setting's name.
        """
        self.write("topic #\n")
        plugin = make_plugin({"acl_file": self.path, "acl_reload_interval": "30"},
                             self.context)
        self.assertEqual((plugin.path, plugin.interval), (self.path, 30))
        plugin = make_plugin({}, self.context)
        self.assertEqual((plugin.path, plugin.interval), (self.path, 10))
        for bad in ["-5", "x", "0x10"]:
            with self.assertRaises(ValueError) as cm:
                make_plugin({"acl_reload_interval": bad}, self.context)
            self.assertIn("vmq_acl.acl_reload_interval", str(cm.exception))
        with self.assertRaises(ValueError) as cm:
            make_plugin({"aclfile": "x"}, self.context)
        self.assertIn("vmq_acl.aclfile", str(cm.exception))


class ReloadTests(AclTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.acl = self.plugin("topic a", acl_reload_interval="10")
        self.acl.start()
        self.addCleanup(self.acl.stop)

    def rewrite(self, *lines: str) -> None:
        self.write("".join(line + "\n" for line in lines))
        st = os.stat(self.path)
        os.utime(self.path, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000_000))

    def test_changed_file(self) -> None:
        """
        A changed ACL file replaces the rules at the next reload interval, not before, and one
        timer stays scheduled.
        """
        self.rewrite("topic b")
        self.clock.advance(9)
        self.assertTrue(self.pub(self.acl, ANON, "a"))
        self.clock.advance(1)
        self.assertFalse(self.pub(self.acl, ANON, "a"))
        self.assertTrue(self.pub(self.acl, ANON, "b"))
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_broken_file_keeps_rules(self) -> None:
        """
        A file that becomes malformed leaves the previous rules in force and is logged once as
        an error with ``PATH:LINE``, not again at every interval.
        """
        self.rewrite("topic b", "bogus line")
        self.clock.advance(10)
        self.assertTrue(self.pub(self.acl, ANON, "a"))
        self.assertFalse(self.pub(self.acl, ANON, "b"))
        errors = self.logged(LogLevel.error)
        self.assertEqual(len(errors), 1)
        self.assertIn(f"{self.path}:2: ", errors[0])
        self.clock.advance(10)
        self.assertEqual(len(self.logged(LogLevel.error)), 1)

    def test_deleted_file_keeps_rules(self) -> None:
        """A deleted ACL file leaves the previous rules in force, with one warning."""
        os.remove(self.path)
        self.clock.advance(10)
        self.assertTrue(self.pub(self.acl, ANON, "a"))
        self.assertEqual(len(self.logged(LogLevel.warn)), 1)

    def test_forced_reload(self) -> None:
        """
        An explicit reload (as on SIGHUP) applies the file even when the plugin is stopped, and
        does not schedule a timer.
        """
        self.acl.stop()
        self.write("topic c\n")
        self.assertTrue(self.acl.reload())
        self.assertTrue(self.pub(self.acl, ANON, "c"))
        self.assertEqual(self.clock.getDelayedCalls(), [])


class SampleFileTests(SynchronousTestCase):
    def test_shipped_sample_loads(self) -> None:
        """The shipped sample vmq.acl (``vmqtw.data``, the same as etc/vmq.acl) loads
        without warnings and grants everything."""
        from vmqtw.data import sample_dir
        etc = sample_dir()
        events: list[dict] = []
        plugin = make_plugin({}, PluginContext(Clock(), etc, Logger(observer=events.append)))
        self.assertEqual(events, [])
        self.assertIs(plugin.auth_on_publish(ANON, "any/topic", b"", 0, False), OK)
        self.assertIs(plugin.auth_on_subscribe(ALICE, [("x/#", 0)]), OK)
