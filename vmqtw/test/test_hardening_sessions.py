"""Security hardening (#14), part B: authorization holds for resumed sessions
and after ACL / password file reloads."""
from __future__ import annotations

import os
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from vmqtw.auth.acl import AclPlugin
from vmqtw.auth.context import PluginContext
from vmqtw.auth.passwd import PasswdPlugin, hash_password
from vmqtw.codec import Connect, Publish, Subscribe, SubOptions
from vmqtw.connection.reauth import watch_reloads
from vmqtw.test.connection_harness import BASE, Client, Rig, connack, disconnect5, puback, suback

NO_ANONYMOUS = BASE.replace("allow_anonymous = on", "allow_anonymous = off")
USERS = ("alice", "bob", "pub")
ACL = b"user alice\ntopic alice/#\nuser bob\ntopic bob/#\nuser pub\ntopic #\n"


class Files:
    """vmq_passwd and vmq_acl on real files that a test can rewrite and reload."""

    def __init__(self, case: SynchronousTestCase) -> None:
        self.directory = case.mktemp()
        os.makedirs(self.directory)
        self.passwd_path = os.path.join(self.directory, "passwd")
        self.acl_path = os.path.join(self.directory, "acl")
        self.write_users(USERS)
        self.write_acl(ACL)
        context = PluginContext(Clock(), self.directory)
        self.passwd = PasswdPlugin(self.passwd_path, 0, context)
        self.acl = AclPlugin(self.acl_path, 0, context)

    def write_users(self, users: tuple[str, ...], password: bytes | None = None) -> None:
        """Write the password file with ``users``: those already in it keep their
        line (as vmq-passwd does) unless ``password`` is given ("pw" for new ones)."""
        old = dict(getattr(self, "lines", {}))
        self.lines = {u: old[u] if u in old and password is None
                      else f"{u}:{hash_password(password or b'pw')}\n" for u in users}
        with open(self.passwd_path, "w") as f:
            f.writelines(self.lines.values())

    def write_acl(self, text: bytes) -> None:
        with open(self.acl_path, "wb") as f:
            f.write(text)

    @property
    def plugins(self) -> list[tuple[str, Any]]:
        return [("vmq_passwd", self.passwd), ("vmq_acl", self.acl)]


def login(rig: Rig, user: str, client_id: str, level: int = 4, clean: bool = True) -> Client:
    """A client logged in as ``user`` (password "pw"), its CONNACK taken."""
    c = rig.client(level)
    c.send(Connect(client_id, level, clean, 0, username=user, password=b"pw"))
    data = c.take()
    assert data[0] == 0x20 and data[3] == 0, data
    return c


def pub(c: Client, topic: str, pid: int) -> None:
    """A QoS 1 PUBLISH from ``c``, acknowledged."""
    c.send(Publish(topic, b"m" + str(pid).encode(), 1, False, False, pid))
    assert c.take() == puback(pid)


class SessionHijackTests(SynchronousTestCase):
    """Item 1: a client id reused by another user does not hand over the session."""

    def setUp(self) -> None:
        self.files = Files(self)
        self.rig = Rig(NO_ANONYMOUS, self.files.plugins)
        self.publisher = login(self.rig, "pub", "publisher")

    def alice_with_queued_messages(self) -> None:
        alice = login(self.rig, "alice", "alice-phone", clean=False)
        alice.send(Subscribe(1, [("alice/#", SubOptions(1))]))
        self.assertEqual(alice.take(), suback(1, 1))
        alice.lose()
        pub(self.publisher, "alice/inbox", 1)
        pub(self.publisher, "alice/inbox", 2)
        session = self.rig.broker.sessions[("", "alice-phone")]
        self.assertEqual(len(session.queue), 2)

    def test_other_user_gets_neither_queued_nor_live_messages(self) -> None:
        """The issue's probe (mosquitto 2.0's result): bob connects with alice's
        client id and clean session 0 while alice has QoS 1 messages queued
        under ``alice/#``: bob gets none of them and nothing published later,
        because alice's subscription is authorized again for bob and denied."""
        self.alice_with_queued_messages()
        bob = self.rig.client()
        bob.send(Connect("alice-phone", 4, False, 0, username="bob", password=b"pw"))
        self.assertEqual(bob.take(), connack(0, True))  # the session, emptied
        self.assertEqual(bob.session.subscriptions, {})
        self.assertFalse(bob.session.queue)
        pub(self.publisher, "alice/inbox", 3)
        self.assertEqual(bob.take(), b"")

    def test_inflight_messages_dropped_too(self) -> None:
        """Messages sent to alice but not acknowledged are not resent to bob."""
        alice = login(self.rig, "alice", "alice-phone", clean=False)
        alice.send(Subscribe(1, [("alice/#", SubOptions(1))]))
        alice.take()
        pub(self.publisher, "alice/inbox", 1)
        self.assertNotEqual(alice.take(), b"")  # sent, never acknowledged
        alice.lose()
        self.assertEqual(len(self.rig.broker.sessions[("", "alice-phone")].inflight), 1)
        bob = self.rig.client()
        bob.send(Connect("alice-phone", 4, False, 0, username="bob", password=b"pw"))
        self.assertEqual(bob.take(), connack(0, True))
        self.assertEqual(bob.session.inflight, {})

    def test_taking_over_a_live_connection_is_checked_too(self) -> None:
        """A takeover of alice's live connection by bob drops her subscription."""
        alice = login(self.rig, "alice", "alice-phone", clean=False)
        alice.send(Subscribe(1, [("alice/#", SubOptions(0)), ]))
        alice.take()
        bob = self.rig.client()
        bob.send(Connect("alice-phone", 4, False, 0, username="bob", password=b"pw"))
        self.assertEqual(bob.take(), connack(0, True))
        self.assertTrue(alice.closed)
        pub(self.publisher, "alice/x", 5)
        self.assertEqual(bob.take(), b"")

    def test_subscriptions_the_new_user_may_have_are_kept(self) -> None:
        """Only what the new owner may not read goes: a filter both may read stays."""
        self.files.write_acl(ACL + b"pattern read shared/#\n")
        self.files.acl.reload()
        alice = login(self.rig, "alice", "dev", clean=False)
        alice.send(Subscribe(1, [("alice/#", SubOptions(1)), ("shared/#", SubOptions(1))]))
        alice.take()
        alice.lose()
        pub(self.publisher, "shared/news", 1)
        pub(self.publisher, "alice/secret", 2)
        bob = self.rig.client()
        bob.send(Connect("dev", 4, False, 0, username="bob", password=b"pw"))
        data = bob.take()
        self.assertIn(b"shared/news", data)
        self.assertNotIn(b"alice/secret", data)
        self.assertEqual(set(bob.session.subscriptions), {"shared/#"})

    def test_same_user_resumes_everything(self) -> None:
        """Alice resuming her own session gets her queued messages (no check needed)."""
        self.alice_with_queued_messages()
        alice = self.rig.client()
        alice.send(Connect("alice-phone", 4, False, 0, username="alice", password=b"pw"))
        data = alice.take()
        self.assertTrue(data.startswith(connack(0, True)))
        self.assertEqual(data.count(b"alice/inbox"), 2)


class ReloadTests(SynchronousTestCase):
    """Item 6: ACL and password file reloads reach existing sessions."""

    def setUp(self) -> None:
        self.files = Files(self)
        self.rig = Rig(NO_ANONYMOUS, self.files.plugins)
        watch_reloads(self.rig.broker, {"tcp.t": self.rig.authorizer}, self.files.plugins)
        self.publisher = login(self.rig, "pub", "publisher")

    def test_acl_reload_drops_denied_subscriptions(self) -> None:
        """When alice's rule leaves the ACL file, a reload drops her live
        subscription: later messages are not delivered (they were before)."""
        alice = login(self.rig, "alice", "a")
        alice.send(Subscribe(1, [("alice/#", SubOptions(0))]))
        alice.take()
        self.files.write_acl(b"user bob\ntopic bob/#\nuser pub\ntopic #\n")
        self.assertTrue(self.files.acl.reload())
        self.assertEqual(alice.session.subscriptions, {})
        pub(self.publisher, "alice/x", 1)
        self.assertEqual(alice.take(), b"")
        self.assertFalse(alice.closed)

    def test_acl_reload_reaches_offline_sessions(self) -> None:
        """An offline persistent session loses the subscription and its queued
        messages of topics no longer readable."""
        alice = login(self.rig, "alice", "a", clean=False)
        alice.send(Subscribe(1, [("alice/#", SubOptions(1))]))
        alice.take()
        alice.lose()
        pub(self.publisher, "alice/x", 1)
        self.files.write_acl(b"user pub\ntopic #\n")
        self.files.acl.reload()
        session = self.rig.broker.sessions[("", "a")]
        self.assertEqual((session.subscriptions, session.queue), ({}, ()))

    def test_removed_user_disconnected(self) -> None:
        """A user removed from the password file is disconnected at the reload:
        3.x by closing, 5.0 with DISCONNECT 0x87; the others stay."""
        bob3 = login(self.rig, "bob", "b3")
        bob5 = login(self.rig, "bob", "b5", level=5)
        alice = login(self.rig, "alice", "a")
        self.files.write_users(("alice", "pub"))
        self.assertTrue(self.files.passwd.reload())
        self.assertTrue(bob3.closed)
        self.assertEqual(bob5.take(), disconnect5(0x87))
        self.assertTrue(bob5.closed)
        self.assertFalse(alice.closed)

    def test_changed_password_disconnects(self) -> None:
        """A changed password ends the user's connections too (it may have leaked)."""
        bob = login(self.rig, "bob", "b")
        self.files.write_users(USERS, password=b"new")
        self.files.passwd.reload()
        self.assertTrue(bob.closed)
