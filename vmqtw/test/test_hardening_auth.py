"""Security hardening (#14), part B, at CONNECT: a claimed user name is verified
even where anonymous access is allowed, unknown users and wrong passwords get
the same answer, and nothing big is buffered before authentication."""
from __future__ import annotations

import os
import tracemalloc
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from vmqtw.auth.acl import AclPlugin
from vmqtw.auth.api import OK, IAuthOnRegister, IOnAuth, ok
from vmqtw.auth.context import PluginContext
from vmqtw.auth.passwd import PasswdPlugin, hash_password
from vmqtw.codec import Connect, Publish, Subscribe, SubOptions, Will, encode
from vmqtw.core.message import Message
from vmqtw.core.mqtt5 import Outbound
from vmqtw.test.connection_harness import BASE, Rig, connack, puback, suback

ACL = b"user admin\ntopic #\npattern read public/#\n"


def file_plugins(case: SynchronousTestCase) -> list[tuple[str, Any]]:
    """vmq_passwd (admin / right) and vmq_acl (admin may do anything) from real files."""
    directory = case.mktemp()
    os.makedirs(directory)
    with open(os.path.join(directory, "passwd"), "w") as f:
        f.write("admin:" + hash_password(b"right") + "\n")
    with open(os.path.join(directory, "acl"), "wb") as f:
        f.write(ACL)
    context = PluginContext(Clock(), directory)
    return [("vmq_passwd", PasswdPlugin(os.path.join(directory, "passwd"), 0, context)),
            ("vmq_acl", AclPlugin(os.path.join(directory, "acl"), 0, context))]


def connack5(code: int) -> bytes:
    """A refused 5.0 CONNACK: no flags, ``code``, no properties (MQTT 5.0 s3.2)."""
    return bytes((0x20, 0x03, 0x00, code, 0x00))


class AnonymousVerifiesUsernameTests(SynchronousTestCase):
    """Item 2: ``allow_anonymous`` no longer trusts the claimed user name."""

    def rig(self, text: str = BASE) -> Rig:
        return Rig(text, file_plugins(self))

    def test_wrong_password_refused_with_anonymous_on(self) -> None:
        """The issue's probe: ``username=admin`` with a wrong password on a broker
        with ``allow_anonymous = on`` gets CONNACK 4 (it got 0 and admin's ``#``)."""
        c = self.rig().client()
        c.send(Connect("c", 4, username="admin", password=b"wrong"))
        self.assertEqual(c.take(), connack(4))
        self.assertTrue(c.closed)

    def test_wrong_password_refused_with_the_listener_override(self) -> None:
        """The same with anonymous access allowed only by the listener's
        ``allow_anonymous_override``; the 5.0 answer is 0x86."""
        text = BASE.replace("allow_anonymous = on", "allow_anonymous = off") + \
            "listener.tcp.t.allow_anonymous_override = on\n"
        rig = self.rig(text)
        c = rig.client()
        c.send(Connect("c", 4, username="admin", password=b"wrong"))
        self.assertEqual(c.take(), connack(4))
        c5 = rig.client(5)
        c5.send(Connect("c5", 5, username="admin", password=b"wrong"))
        self.assertEqual(c5.take(), connack5(0x86))

    def test_right_password_accepted_with_the_user_name(self) -> None:
        """The right password still logs in as that user, with its ACL rights."""
        c = self.rig().client()
        c.send(Connect("c", 4, username="admin", password=b"right"))
        self.assertEqual(c.take(), connack(0))
        self.assertEqual(c.session.username, "admin")
        c.send(Subscribe(1, [("secret/#", SubOptions(1))]))
        self.assertEqual(c.take(), suback(1, 1))

    def test_no_user_name_is_anonymous(self) -> None:
        """``allow_anonymous = on`` with no user name keeps working."""
        c = self.rig().client()
        c.send(Connect("c", 4))
        self.assertEqual(c.take(), connack(0))
        self.assertIsNone(c.session.username)

    def test_unknown_user_name_is_dropped(self) -> None:
        """A user name no authentication plugin knows is connected as anonymous:
        the name is dropped, so it gets none of that name's ACL rights."""
        c = self.rig().client()
        c.send(Connect("c", 4, username="mallory", password=b"x"))
        self.assertEqual(c.take(), connack(0))
        self.assertIsNone(c.session.username)
        c.send(Subscribe(1, [("secret/#", SubOptions(0))]),
               Subscribe(2, [("public/a", SubOptions(0))]))
        self.assertEqual(c.take(), suback(1, 0x80) + suback(2, 0))

    def test_without_an_authentication_plugin_the_name_is_kept(self) -> None:
        """With nothing that could verify a user name (no auth_on_register plugin),
        the claimed name is kept, as before (and as mosquitto without a password file)."""
        rig = Rig(BASE)
        c = rig.client()
        c.send(Connect("c", 4, username="someone", password=b"x"))
        self.assertEqual(c.take(), connack(0))
        self.assertEqual(c.session.username, "someone")


class SameAnswerTests(SynchronousTestCase):
    """Item 11 (auth part): no user name enumeration through CONNACK codes."""

    def test_unknown_user_and_wrong_password_look_the_same(self) -> None:
        """With anonymous access off, an unknown user and a wrong password get the
        same CONNACK: 4 for 3.x, 0x86 for 5.0 (an unknown user got 5 / 0x87)."""
        rig = Rig(BASE.replace("allow_anonymous = on", "allow_anonymous = off"),
                  file_plugins(self))
        answers = []
        for level, name in ((4, "admin"), (4, "nobody"), (5, "admin"), (5, "nobody")):
            c = rig.client(level)
            c.send(Connect("c-" + name, level, username=name, password=b"wrong"))
            answers.append(c.take())
            self.assertTrue(c.closed)
        self.assertEqual(answers, [connack(4), connack(4), connack5(0x86), connack5(0x86)])

    def test_no_user_name_still_not_authorized(self) -> None:
        """Without a user name there is nothing to enumerate: CONNACK 5, as before."""
        rig = Rig(BASE.replace("allow_anonymous = on", "allow_anonymous = off"),
                  file_plugins(self))
        c = rig.client()
        c.send(Connect("c", 4))
        self.assertEqual(c.take(), connack(5))


def connect_header(remaining: int) -> bytes:
    """The fixed header of a CONNECT claiming ``remaining`` bytes (MQTT s2.1.4)."""
    return header(0x10, remaining)


def header(b0: int, remaining: int) -> bytes:
    """A fixed header: first byte ``b0`` and the remaining length (MQTT s2.1.4)."""
    out = bytearray((b0,))
    while True:
        byte, remaining = remaining % 128, remaining // 128
        out.append(byte | (0x80 if remaining else 0))
        if not remaining:
            return bytes(out)


class PreauthPacketLimitTests(SynchronousTestCase):
    """Item 5: a small packet limit until the client is authenticated."""

    def test_huge_connect_refused_from_its_header(self) -> None:
        """A CONNECT claiming 200 MB is refused as soon as its fixed header and
        protocol name arrived: the 3.x connection closes, nothing is buffered
        (before: up to 256 MiB were buffered until the connect timeout)."""
        c = Rig().client()
        c.send(connect_header(200_000_000) + b"\x00\x04MQTT\x04\x02\x00\x3c")
        self.assertTrue(c.closed)
        self.assertEqual(c.connection.decoder._have, 0)

    def test_huge_5_connect_gets_packet_too_large(self) -> None:
        """A 5.0 client is told why: CONNACK 0x95 (packet too large), then closed."""
        c = Rig().client(5)
        c.send(connect_header(200_000_000) + b"\x00\x04MQTT\x05\x02\x00\x3c\x00")
        self.assertEqual(c.take(), connack5(0x95))
        self.assertTrue(c.closed)

    def test_connect_just_under_the_limit_accepted(self) -> None:
        """A CONNECT of up to ``max_preauth_packet_size`` (a big will) is accepted."""
        c = Rig().client()
        data = encode(Connect("c", 4, will=Will("w", b"x" * 60_000, 0, False),
                              username="u", password=b"p" * 40_000), 4)
        self.assertGreater(len(data), 100_000)
        self.assertLessEqual(len(data), 102400)
        c.send(data)
        self.assertEqual(c.take(), connack(0))

    def test_big_publish_right_behind_connect_accepted(self) -> None:
        """The limit ends with authentication: a 500 kB PUBLISH sent right behind
        the CONNECT, in the same read, is handled after CONNACK."""
        c = Rig().client()
        c.send(Connect("c", 4), Publish("t", b"x" * 500_000, 1, False, False, 7))
        self.assertEqual(c.take(), connack(0) + puback(7))
        self.assertFalse(c.closed)

    def test_big_auth_refused_during_enhanced_authentication(self) -> None:
        """Between an enhanced-auth CONNECT and its success, packets have the small
        limit too: a 1 MB AUTH is refused from its header."""
        plugin = Challenge()
        rig = Rig(BASE, [("chal", plugin)])
        c = rig.client(5)
        c.send(Connect("c", 5, properties={"authentication_method": "CHAL"}))
        plugin.pending[0].callback(ok(continue_authentication=True))
        c.take()
        c.send(header(0xF0, 1_000_000) + b"\x18")
        self.assertTrue(c.closed)

    def test_configurable(self) -> None:
        """``max_preauth_packet_size = 0`` leaves only ``max_message_size``."""
        rig = Rig(BASE + "max_preauth_packet_size = 0\n")
        c = rig.client()
        c.send(Connect("c", 4, will=Will("w", b"x" * 65_000, 0, False), username="u",
                       password=b"p" * 65_000))
        self.assertEqual(c.take(), connack(0))


@implementer(IOnAuth, IAuthOnRegister)
class Challenge:
    """Enhanced authentication that answers when the test fires ``pending``."""

    def __init__(self) -> None:
        self.pending: list[Deferred[Any]] = []

    def on_auth(self, request: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.pending.append(d)
        return d

    def auth_on_register(self, request: Any) -> Any:
        return OK


class SubscriptionIdentifierCacheTests(SynchronousTestCase):
    """Item 4: encoded copies per subscription identifier do not pile up."""

    def test_cache_bounded_whatever_the_identifiers(self) -> None:
        """600 deliveries of one 1 MiB message, each with another subscription
        identifier (the issue's 600 re-subscribes), keep at most a few encodings:
        the memory held by the message grows by less than 4 MiB (it was 600 MiB)."""
        message = Message("t", b"x" * (1 << 20), 0, True)
        out = Outbound()
        clock = Clock()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for sub_id in range(1, 601):
                data = out.publish(message, 0, True, None, False, (sub_id,), clock)
                assert data is not None
                del data
            held = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        self.assertLessEqual(len(message._cache or {}), 3)
        self.assertLess(held, 4 << 20)

    def test_shared_identifiers_still_encoded_once(self) -> None:
        """Recipients with the same identifiers share one encoding."""
        message = Message("t", b"payload")
        first = message.encoded5_qos0_cached(False, (5,))
        self.assertIs(message.encoded5_qos0_cached(False, (5,)), first)
        self.assertIsNot(message.encoded5_qos0_cached(False, (6,)), first)
