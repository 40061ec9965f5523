"""A refused CONNECT is logged with the client id, the user name and the reason; a
protocol-version refusal also names the setting that would allow it."""
from __future__ import annotations

from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from vmqtw.codec import Connect
from vmqtw.test.connection_harness import BASE, Rig, connack

NO_ANONYMOUS = BASE.replace("allow_anonymous = on", "allow_anonymous = off")


def refusals(events: list[dict]) -> list[str]:
    return [formatEvent(e) for e in events if "refusing CONNECT" in (e.get("log_format") or "")]


class RefusalLogTests(SynchronousTestCase):

    def test_protocol_version_refusal_names_the_key(self) -> None:
        """A CONNECT at a level the listener does not allow is logged with its client id,
        user name, the allowed levels and the key to change
        (``listener.<kind>.<name>.allowed_protocol_versions``)."""
        rig = Rig(BASE.replace("3,4,5", "4"))
        c = rig.client(level=5)
        with capturedLogs() as events:
            c.send(Connect("dev-7", 5, username="alice"))
        self.assertEqual(c.take(), connack(1))
        (line,) = refusals(events)
        self.assertIn("client 'dev-7'", line)
        self.assertIn("username 'alice'", line)
        self.assertIn("protocol level 5 not allowed", line)
        self.assertIn("allowed: 4", line)
        self.assertIn("listener.tcp.t.allowed_protocol_versions", line)

    def test_authentication_refusal_names_client_username_and_reason(self) -> None:
        """A CONNECT refused by authentication is logged with the client id, the user
        name and the reason."""
        rig = Rig(NO_ANONYMOUS)
        c = rig.client()
        with capturedLogs() as events:
            c.send(Connect("dev-8", 4, username="bob", password=b"x"))
        self.assertEqual(c.take()[:3], connack(5)[:3])
        (line,) = refusals(events)
        self.assertIn("client 'dev-8'", line)
        self.assertIn("username 'bob'", line)
        self.assertIn("authentication", line)
