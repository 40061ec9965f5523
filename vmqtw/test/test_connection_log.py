"""One info line per accepted CONNECT and one per disconnect, with stable field
names (``client_id``, ``username``, ``peer``, ``listener``, ``reason``) and the
reason the connection ended; never a password, nothing per message."""
from __future__ import annotations

from typing import Any

from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from vmqtw.codec import Connect, reasons
from vmqtw.codec.packets import Disconnect
from vmqtw.test.connection_harness import BASE, Rig, disconnect5, publish

NO_ANONYMOUS = BASE.replace("allow_anonymous = on", "allow_anonymous = off")


def lines(events: list[dict[str, Any]], word: str) -> list[dict[str, Any]]:
    """The connect (``word="connected from"``) or disconnect (``"disconnected:"``)
    events among ``events``."""
    return [e for e in events if word in (e.get("log_format") or "")]


def connects(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return lines(events, "connected from")


def disconnects(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return lines(events, "disconnected:")


class ConnectLineTests(SynchronousTestCase):

    def test_accepted_connect_is_one_info_line_with_its_fields(self) -> None:
        """An accepted 3.1.1 CONNECT logs one info event with the client id, user
        name, peer, listener, protocol level, clean session and keep alive, and
        never the password."""
        rig = Rig()
        with capturedLogs() as events:
            rig.connected("dev-1", username="alice", password=b"s3cret", keepalive=30,
                          clean=False)
        (event,) = connects(events)
        self.assertEqual(event["log_level"], LogLevel.info)
        self.assertEqual(event["client_id"], "dev-1")
        self.assertEqual(event["username"], "alice")
        self.assertEqual(event["peer"], "192.0.2.7:50000")
        self.assertEqual(event["listener"], "tcp.t")
        self.assertEqual(event["protocol_level"], 4)
        self.assertIs(event["clean"], False)
        self.assertEqual(event["keepalive"], 30)
        text = formatEvent(event)
        self.assertIn("clean session False", text)
        for e in events:
            self.assertNotIn("s3cret", repr(e))

    def test_mqtt5_connect_says_clean_start(self) -> None:
        """A 5.0 CONNECT's line names the flag clean start and level 5."""
        rig = Rig()
        with capturedLogs() as events:
            rig.connected("dev-5", level=5)
        (event,) = connects(events)
        self.assertEqual(event["protocol_level"], 5)
        self.assertIn("clean start True", formatEvent(event))

    def test_refused_connect_logs_neither_line(self) -> None:
        """A refused CONNECT keeps its refusal line only: no connect line, and no
        disconnect line when its socket closes."""
        rig = Rig(NO_ANONYMOUS)
        c = rig.client()
        with capturedLogs() as events:
            c.send(Connect("dev-2", 4, username="bob", password=b"pw"))
            c.lose()
        self.assertEqual(connects(events), [])
        self.assertEqual(disconnects(events), [])

    def test_nothing_is_logged_per_message(self) -> None:
        """PUBLISHes and PINGREQs of a connected client log nothing at info."""
        rig = Rig()
        c = rig.connected("dev-3")
        with capturedLogs() as events:
            for _ in range(5):
                c.send(publish("a/b", b"payload-xyz", qos=1, pid=1))
                c.send(b"\xc0\x00")
        self.assertEqual([e for e in events if e["log_level"] >= LogLevel.info], [])


class DisconnectLineTests(SynchronousTestCase):

    def assertOneDisconnect(self, events: list[dict[str, Any]], reason: str,
                            client_id: str = "c", username: str | None = None
                            ) -> dict[str, Any]:
        (event,) = disconnects(events)
        self.assertEqual(event["log_level"], LogLevel.info)
        self.assertEqual(event["reason"], reason)
        self.assertEqual(event["client_id"], client_id)
        self.assertEqual(event["username"], username)
        self.assertEqual(event["peer"], "192.0.2.7:50000")
        self.assertEqual(event["listener"], "tcp.t")
        return event

    def test_client_disconnect(self) -> None:
        """A 3.1.1 DISCONNECT then the socket closing: one line, reason
        "client DISCONNECT", with the user name."""
        rig = Rig()
        c = rig.connected(username="alice")
        with capturedLogs() as events:
            c.send(Disconnect())
            c.lose()
        event = self.assertOneDisconnect(events, "client DISCONNECT", username="alice")
        self.assertIn("client 'c' (user 'alice') from 192.0.2.7:50000 on tcp.t "
                      "disconnected: client DISCONNECT", formatEvent(event))

    def test_client_disconnect_mqtt5_reason_code(self) -> None:
        """A 5.0 DISCONNECT's reason code is in the reason."""
        rig = Rig()
        c = rig.connected(level=5)
        with capturedLogs() as events:
            c.send(disconnect5(reasons.DISCONNECT_WITH_WILL))
            c.lose()
        self.assertOneDisconnect(events, "client DISCONNECT (0x04)")

    def test_keepalive_timeout(self) -> None:
        """A client silent for 1.5 x its keep alive: reason "keep alive timeout"."""
        rig = Rig()
        c = rig.connected(keepalive=10)
        with capturedLogs() as events:
            rig.clock.advance(16)
            self.assertTrue(c.closed)
            c.lose()
        self.assertOneDisconnect(events, "keep alive timeout")

    def test_session_taken_over(self) -> None:
        """The first connection of a client id taken over by a second: its line
        says "session taken over" (and the second gets a connect line)."""
        rig = Rig()
        first = rig.connected("dup")
        with capturedLogs() as events:
            rig.connected("dup")
            first.lose()
        self.assertOneDisconnect(events, "session taken over", client_id="dup")
        self.assertEqual(len(connects(events)), 1)

    def test_protocol_violation(self) -> None:
        """A second CONNECT: reason "protocol violation: ..." naming it."""
        rig = Rig()
        c = rig.connected()
        with capturedLogs() as events:
            c.send(Connect("c", 4))
            c.lose()
        (event,) = disconnects(events)
        self.assertTrue(event["reason"].startswith("protocol violation: "), event["reason"])

    def test_socket_closed(self) -> None:
        """The stream ends without a DISCONNECT: reason "socket closed"."""
        rig = Rig()
        c = rig.connected()
        with capturedLogs() as events:
            c.lose()
        self.assertOneDisconnect(events, "socket closed")

    def test_server_shutdown(self) -> None:
        """The broker closes with 0x8B: reason "server shutdown"."""
        rig = Rig()
        c = rig.connected(level=5)
        with capturedLogs() as events:
            c.transport.close(reasons.SERVER_SHUTTING_DOWN)
            c.lose()
        self.assertOneDisconnect(events, "server shutdown")

    def test_administrative_action(self) -> None:
        """``vmq-admin session disconnect`` (0x98): reason names the administrator."""
        rig = Rig()
        c = rig.connected()
        with capturedLogs() as events:
            c.transport.close(reasons.ADMINISTRATIVE_ACTION)
            c.lose()
        self.assertOneDisconnect(events, "disconnected by an administrator")

    def test_max_connection_lifetime(self) -> None:
        """The listener's max_connection_lifetime: that is the reason."""
        rig = Rig(BASE + "listener.tcp.t.max_connection_lifetime = 5\n")
        c = rig.connected()
        with capturedLogs() as events:
            rig.clock.advance(6)
            c.lose()
        self.assertOneDisconnect(events, "max_connection_lifetime reached")

    def test_first_reason_stands(self) -> None:
        """A close after a DISCONNECT (e.g. a shutdown racing it) keeps the
        client's reason, and the line is logged once."""
        rig = Rig()
        c = rig.connected()
        with capturedLogs() as events:
            c.send(Disconnect())
            c.transport.close(reasons.SERVER_SHUTTING_DOWN)
            c.lose()
            c.connection.connection_lost()
        self.assertOneDisconnect(events, "client DISCONNECT")
