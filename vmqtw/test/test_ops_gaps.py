"""Small operations behaviours (#15): the reason of a close for an unauthorized
3.x PUBLISH, ``mqtt_invalid_msg_size_error``, traces of output held for the
store, and the connect/disconnect lines in the JSON and syslog formats."""
from __future__ import annotations

import io
import logging
from typing import Any

from twisted.logger import (
    LogPublisher, capturedLogs, eventsFromJSONLogFile, globalLogPublisher,
    jsonFileLogObserver,
)
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from vmqtw import logs
from vmqtw.admin.trace import Tracer
from vmqtw.auth.api import IAuthOnPublish, Error
from vmqtw.codec import Connect, Disconnect, Publish
from vmqtw.config.settings import LogConfig
from vmqtw.test.connection_harness import BASE, Rig
from vmqtw.test.test_durable_wiring import harness


@implementer(IAuthOnPublish)
class DenyPublish:
    def auth_on_publish(self, *args: Any) -> Any:
        return Error("not_allowed")


def disconnect_lines(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if "disconnected:" in (e.get("log_format") or "")]


class UnauthorizedPublishTests(SynchronousTestCase):

    def test_disconnect_line_says_not_authorized(self) -> None:
        """A 3.1 PUBLISH refused with disconnect_on_unauthorized_publish_v3 (and a
        refused 3.1.1 one, which always closes) ends with the reason "not
        authorized", not "closed by the broker"."""
        for level, extra in ((3, "disconnect_on_unauthorized_publish_v3 = on\n"), (4, "")):
            rig = Rig(BASE + extra, plugins=[("deny", DenyPublish())])
            c = rig.connected("c", level)
            with capturedLogs() as events:
                c.send(Publish("t", b"x", 1, packet_id=1))
                self.assertTrue(c.closed)
                c.lose()
            (line,) = disconnect_lines(events)
            self.assertEqual(line["reason"], "not authorized", level)


class InvalidMessageSizeTests(SynchronousTestCase):

    def count(self, rig: Rig, version: str) -> int:
        return rig.broker.metrics.value("mqtt_invalid_msg_size_error", mqtt_version=version)

    def test_packet_over_max_message_size_is_counted(self) -> None:
        """A PUBLISH over max_message_size closes the connection and counts one
        mqtt_invalid_msg_size_error under the client's MQTT version."""
        for level, version in ((4, "4"), (5, "5")):
            rig = Rig(BASE + "max_message_size = 100\n")
            c = rig.connected("c", level)
            c.send(Publish("t", b"x" * 50, 0))
            self.assertFalse(c.closed)
            self.assertEqual(self.count(rig, version), 0)
            c.send(Publish("t", b"x" * 200, 0))
            self.assertTrue(c.closed)
            self.assertEqual(self.count(rig, version), 1)
            self.assertEqual(self.count(rig, "5" if version == "4" else "4"), 0)

    def test_oversized_connect_counts_under_its_version(self) -> None:
        """A CONNECT over the pre-authentication limit counts under the version
        it names."""
        rig = Rig(BASE + "max_preauth_packet_size = 64\n")
        c = rig.client(5)
        c.send(Connect("c" * 100, 5, True, 0))
        self.assertTrue(c.closed)
        self.assertEqual(self.count(rig, "5"), 1)


class TraceHeldOutputTests(SynchronousTestCase):

    def test_output_released_by_the_store_is_traced(self) -> None:
        """``vmq-admin trace client``: a PUBACK held until the store is durable
        is traced as sent when it is released, once."""
        hn, store = harness()
        tracer = Tracer(clock=lambda: 0.0)
        hn.broker.tracer, hn.broker.traced = tracer, tracer.watching
        lines: list[str] = []
        tracer.start("p", "", lines.append, lambda: None, rate_max=100)
        hn.subscriber("s", ("t", 1), clean=False)  # what it records holds the PUBACK
        p = hn.connected("p")
        store.commit()
        p.take()
        del lines[:]
        p.publish("t", b"x", qos=1, pid=7)
        self.assertEqual(p.take(), b"")  # held for the store
        self.assertEqual([line for line in lines if "SEND" in line], [])
        store.commit()
        self.assertEqual(p.take(), b"\x40\x02\x00\x07")
        sent = [line for line in lines if "SEND" in line]
        self.assertEqual(len(sent), 1, lines)
        self.assertIn("PUBACK(m7)", sent[0])
        hn.broker.flush()
        self.assertEqual(len([line for line in lines if "SEND" in line]), 1)


class LogFormatTests(SynchronousTestCase):
    """The connect and disconnect lines keep their fields in every format."""

    FIELDS = ("client_id", "username", "peer", "listener")

    def session(self) -> None:
        rig = Rig()
        c = rig.connected("dev-9", username="alice")
        c.send(Disconnect())
        c.lose()

    def test_json_lines_have_the_fields(self) -> None:
        """As JSON events (Twisted's JSON log format), the connect and disconnect
        lines carry client id, user name, peer, listener and the reason."""
        out = io.StringIO()
        observer = jsonFileLogObserver(out)
        globalLogPublisher.addObserver(observer)
        try:
            self.session()
        finally:
            globalLogPublisher.removeObserver(observer)
        out.seek(0)
        events = list(eventsFromJSONLogFile(out))
        (connect,) = [e for e in events if "connected from" in (e.get("log_format") or "")]
        (disconnect,) = disconnect_lines(events)
        for event in (connect, disconnect):
            self.assertEqual(event["client_id"], "dev-9")
            self.assertEqual(event["username"], "alice")
            self.assertEqual(event["peer"], "192.0.2.7:50000")
            self.assertEqual(event["listener"], "tcp.t")
        self.assertEqual(disconnect["reason"], "client DISCONNECT")

    def test_syslog_lines_have_the_fields(self) -> None:
        """Through the syslog observer, the lines name the client id, user name,
        peer and reason, at syslog's info severity."""
        records: list[logging.LogRecord] = []

        class Handler(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                records.append(record)

        publisher = LogPublisher()
        added = logs.install(LogConfig(console="off", syslog=True, syslog_level="info"),
                             publisher, console=False,
                             syslog_factory=lambda: logs.SyslogObserver(Handler()))
        globalLogPublisher.addObserver(publisher)
        try:
            self.session()
        finally:
            globalLogPublisher.removeObserver(publisher)
            logs.uninstall(added, publisher)
        texts = [r.getMessage() for r in records if r.levelno == logging.INFO]
        (connect,) = [t for t in texts if "connected from" in t]
        (disconnect,) = [t for t in texts if "disconnected:" in t]
        for text in (connect, disconnect):
            self.assertIn("'dev-9'", text)
            self.assertIn("'alice'", text)
            self.assertIn("192.0.2.7:50000", text)
        self.assertIn("disconnected: client DISCONNECT", disconnect)
