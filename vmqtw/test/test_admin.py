"""vmq-admin commands on a real Broker with protocol connections (in memory)."""
from __future__ import annotations

import json
import os
import stat
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from vmqtw import logs
from vmqtw.admin import output
from vmqtw.admin.apikeys import ApiKeyError, ApiKeys
from vmqtw.admin.commands import Admin, current_log_level
from vmqtw.admin.listeners import ListenerError, ServiceListeners, view
from vmqtw.admin.systree import SysTree, systree_topic
from vmqtw.auth.api import IAuthOnPublish, OK
from vmqtw.codec import Disconnect, Publish
from vmqtw.metrics import Metrics
from vmqtw.test.test_protocol import BASE, Harness
from zope.interface import implementer

NOW = 1_800_000_000.0


class AdminTestCase(SynchronousTestCase):

    def setUp(self) -> None:
        self.hn = Harness()
        self.metrics = Metrics(broker=self.hn.broker)
        self.keys = ApiKeys(None, clock=lambda: NOW)
        self.admin = Admin(self.hn.broker, self.metrics, apikeys=self.keys, clock=lambda: NOW)

    def run_ok(self, line: str) -> str:
        reply = self.admin.run(line.split())
        self.assertEqual(reply.code, 0, reply.render())
        return reply.render()

    def run_json(self, line: str) -> Any:
        reply = self.admin.run(line.split() + ["--format=json"])
        self.assertEqual(reply.code, 0, reply.render())
        return json.loads(reply.render("json"))

    def run_fails(self, line: str) -> str:
        reply = self.admin.run(line.split())
        self.assertEqual(reply.code, 1)
        return reply.render()


class UsageTests(AdminTestCase):

    def test_unknown_command_is_a_usage_error(self) -> None:
        """An unknown command prints the usage and exits non-zero."""
        text = self.run_fails("frobnicate now")
        self.assertIn("Unknown command: frobnicate now", text)
        self.assertIn("session show", text)

    def test_group_without_subcommand(self) -> None:
        """A command group alone lists its commands, exit non-zero."""
        text = self.run_fails("session")
        self.assertIn("session disconnect client-id=<ClientId>", text)
        self.assertNotIn("api-key", text)

    def test_bad_arguments(self) -> None:
        """Unknown keys, unknown flags, missing values and extra words are usage errors."""
        self.assertIn("Invalid argument: foo", self.run_fails("session disconnect foo=1"))
        self.assertIn("Invalid flag: --nope", self.run_fails("listener show --nope"))
        self.assertIn("Missing argument: client-id", self.run_fails("session disconnect"))
        self.assertIn("Invalid value for --limit", self.run_fails("session show --limit=0"))
        self.assertIn("Invalid argument: extra", self.run_fails("cluster show extra"))
        self.assertIn("needs a value", self.run_fails("retain delete -t"))
        self.assertIn("Invalid flag: --bogus", self.run_fails("session show --bogus"))
        self.assertIn("Invalid regex", self.run_fails("session show --client_id=~("))

    def test_empty_command_line(self) -> None:
        """No words at all is a usage error, not a crash."""
        self.assertIn("Unknown command: (none)", self.run_fails(""))


class SessionTests(AdminTestCase):

    def test_session_show_default_columns(self) -> None:
        """session show prints VerneMQ's default columns, alphabetically."""
        self.hn.connected("c1")
        text = self.run_ok("session show")
        header = text.splitlines()[1]
        self.assertEqual([c.strip() for c in header.strip("|").split("|")],
                         ["client_id", "is_online", "mountpoint", "peer_host", "peer_port",
                          "user"])
        self.assertIn("| c1 ", text)
        self.assertIn("192.0.2.1", text)
        self.assertIn("undefined", text)  # no user name

    def test_session_show_empty_prints_nothing(self) -> None:
        """An empty table prints nothing at all."""
        self.assertEqual(self.run_ok("session show"), "")

    def test_session_show_columns_filters_and_limit(self) -> None:
        """Bare flags choose the columns; --col=v filters; ~ is a regex; --limit caps."""
        self.hn.connected("alpha")
        self.hn.connected("beta")
        gone = self.hn.connected("gamma", clean=False)
        gone.lose()
        rows = self.run_json("session show --client_id --is_online")["table"]
        self.assertEqual(sorted(r["client_id"] for r in rows), ["alpha", "beta", "gamma"])
        self.assertEqual(set(rows[0]), {"client_id", "is_online"})
        rows = self.run_json("session show --client_id --is_online=false")["table"]
        self.assertEqual(rows, [{"client_id": "gamma"}])
        rows = self.run_json("session show --client_id --client_id=~^[ab]")["table"]
        self.assertEqual(sorted(r["client_id"] for r in rows), ["alpha", "beta"])
        self.assertEqual(len(self.run_json("session show --limit=2")["table"]), 2)

    def test_session_show_subscriptions(self) -> None:
        """Subscription columns give one row per subscription."""
        self.hn.subscriber("s", ("a/#", 1), ("b", 0))
        rows = self.run_json("session show --client_id --topic --qos")["table"]
        self.assertEqual(sorted((r["topic"], r["qos"]) for r in rows), [("a/#", 1), ("b", 0)])

    def test_disconnect_keeps_the_session(self) -> None:
        """session disconnect closes the connection; a persistent session stays."""
        c = self.hn.connected("p", clean=False)
        self.hn.subscriber("q", ("x", 1), clean=False)
        self.assertEqual(self.run_ok("session disconnect client-id=p"), "Done\n")
        self.assertTrue(c.closed)
        session = self.hn.broker.sessions[("", "p")]
        self.assertIsNone(session.conn)

    def test_disconnect_with_cleanup_drops_the_session(self) -> None:
        """--cleanup also drops the queue and the subscriptions."""
        c = self.hn.subscriber("q", ("x", 1), clean=False)
        self.run_ok("session disconnect client-id=q --cleanup")
        self.assertTrue(c.closed)
        self.assertNotIn(("", "q"), self.hn.broker.sessions)
        self.assertEqual(len(self.hn.broker.trees), 0)

    def test_disconnect_mqtt5_sends_administrative_action(self) -> None:
        """An MQTT 5.0 client gets DISCONNECT 0x98 (administrative action)."""
        self.hn = Harness(BASE + "listener.tcp.allowed_protocol_versions = 3,4,5\n")
        self.admin.broker = self.hn.broker
        c = self.hn.client(level=5)
        c.connect("five")
        self.assertEqual(c.packets()[0].reason_code, 0)
        self.run_ok("session disconnect client-id=five -c")
        packets = c.packets()
        self.assertEqual(packets, [Disconnect(0x98)])

    def test_disconnect_unknown_client_says_done(self) -> None:
        """As VerneMQ: Done even when nothing matched."""
        self.assertEqual(self.run_ok("session disconnect client-id=nobody"), "Done\n")

    def test_disconnect_clients(self) -> None:
        """disconnect clients client-ids=a,b closes each of them."""
        a, b = self.hn.connected("a"), self.hn.connected("b")
        self.run_ok("disconnect clients client-ids=a,b")
        self.assertTrue(a.closed and b.closed)

    def test_session_unsubscribe(self) -> None:
        """session unsubscribe removes one subscription; unknown ones say so."""
        self.hn.subscriber("s", ("a", 0))
        self.assertEqual(self.run_ok("session unsubscribe client-id=s topic=a"), "Done\n")
        self.assertEqual(self.run_ok("session unsubscribe client-id=s topic=a"),
                         "Not successfull\n")


class RetainTests(AdminTestCase):

    def test_retain_show_and_delete(self) -> None:
        """retain show lists payload and topic; retain delete -t removes one."""
        p = self.hn.connected("p")
        p.publish("r/1", b"one", retain=True)
        p.publish("r/2", b"two", retain=True)
        rows = self.run_json("retain show")["table"]
        self.assertEqual(sorted((r["topic"], r["payload"]) for r in rows),
                         [("r/1", "one"), ("r/2", "two")])
        self.assertEqual(self.run_json("retain show --topic --topic=r/2")["table"],
                         [{"topic": "r/2"}])
        self.run_ok("retain delete -t r/1")
        self.assertEqual([r["topic"] for r in self.run_json("retain show")["table"]], ["r/2"])

    def test_retain_delete_needs_topic(self) -> None:
        """retain delete without --topic is a usage error."""
        self.assertIn("Missing flag: --topic", self.run_fails("retain delete"))


class MetricsCommandTests(AdminTestCase):

    def test_metrics_show_aggregated(self) -> None:
        """metrics show prints <type>.<name> = <value>, summed over labels."""
        self.metrics.inc("mqtt_publish_received", 2, mqtt_version="4")
        self.metrics.inc("mqtt_publish_received", 1, mqtt_version="5")
        text = self.run_ok("metrics show")
        self.assertIn("counter.mqtt_publish_received = 3\n", text)
        self.assertIn("gauge.retain_messages = 0\n", text)

    def test_metrics_show_with_labels_and_descriptions(self) -> None:
        """Label flags keep matching series; -d adds descriptions; -a false
        shows series one by one."""
        self.metrics.inc("mqtt_publish_received", 2, mqtt_version="4")
        text = self.run_ok("metrics show --mqtt_version=4 -d")
        self.assertIn("# The number of PUBLISH packets received.\n"
                      "counter.mqtt_publish_received = 2\n", text)
        self.assertNotIn("socket_open", text)
        text = self.run_ok("metrics show --aggregate=false --mqtt_version=4")
        self.assertIn("counter.mqtt_publish_received.mqtt_version.4 = 2", text)

    def test_metrics_reset(self) -> None:
        """metrics reset zeroes the counters."""
        self.metrics.inc("socket_open", 4)
        self.assertEqual(self.run_ok("metrics reset"), "Done\n")
        self.assertIn("counter.socket_open = 0\n", self.run_ok("metrics show"))


class ApiKeyTests(AdminTestCase):

    def test_create_show_delete(self) -> None:
        """create prints a 32-character key; show lists it; delete removes it."""
        key = self.run_ok("api-key create scope=metrics").strip()
        self.assertRegex(key, r"^[A-Za-z0-9]{32}$")
        rows = self.run_json("api-key show")["table"]
        self.assertEqual(rows, [{"Key": key, "Scope": "metrics", "Expires (UTC)": "never",
                                 "has expired": False}])
        self.assertEqual(self.run_fails(f"api-key delete key={key}"), "{error,key_not_found}\n")
        self.assertEqual(self.run_ok(f"api-key delete key={key} scope=metrics"), "ok\n")
        self.assertEqual(self.run_ok("api-key show"), "")

    def test_add_errors(self) -> None:
        """add refuses duplicates, bad scopes and past expiry dates."""
        self.assertEqual(self.run_ok("api-key add key=abc"), "ok\n")
        self.assertEqual(self.run_fails("api-key add key=abc"), "{error,key_already_exists}\n")
        self.assertEqual(self.run_fails("api-key add key=x scope=root"),
                         "{error,invalid_scope}\n")
        self.assertEqual(self.run_fails("api-key add key=y expires=2001-01-01T00:00:00"),
                         "{error,invalid_expiry_date}\n")
        self.assertEqual(self.run_fails("api-key add key=y expires=tomorrow"),
                         "{error,invalid_expiry_date}\n")

    def test_expiry_shown_in_utc(self) -> None:
        """expires is local time, shown in UTC; the key stops working after it."""
        self.run_ok("api-key add key=k1 expires=2030-01-01T00:00:00")
        row = self.run_json("api-key show scope=mgmt")["table"][0]
        self.assertRegex(row["Expires (UTC)"], r"^20(29-12-3\d|30-01-0\d) \d\d:\d\d:\d\d$")
        self.assertTrue(self.keys.valid("k1", "mgmt"))
        self.keys.clock = lambda: 2_000_000_000.0
        self.assertFalse(self.keys.valid("k1", "mgmt"))

    def test_min_length_and_max_expiry(self) -> None:
        """min_apikey_length and max_apikey_expiry_days are enforced."""
        keys = ApiKeys(None, min_length=40, max_expiry_days=30, clock=lambda: NOW)
        self.assertEqual(str(self.assertRaises(ApiKeyError, keys.add, "short")),
                         "invalid_key_length")
        # no expiry while a maximum is set
        self.assertEqual(str(self.assertRaises(ApiKeyError, keys.create)), "invalid_expiry_date")
        key = keys.create(expires=NOW + 86400)
        self.assertEqual(len(key), 40)

    def test_keys_persist_in_a_private_file(self) -> None:
        """The key file is 0600 and read back by a new ApiKeys."""
        path = os.path.join(self.mktemp() + "-keys.json")
        keys = ApiKeys(path, clock=lambda: NOW)
        key = keys.create("status")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertTrue(ApiKeys(path, clock=lambda: NOW).valid(key, "status"))
        self.assertFalse(ApiKeys(path, clock=lambda: NOW).valid(key, "mgmt"))


class FakeAddress:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port


class FakePort:
    def __init__(self, port: int) -> None:
        self.port = port
        self.listening = True
        self.reading = True

    def getHost(self) -> FakeAddress:
        return FakeAddress("127.0.0.1", self.port)

    def stopListening(self) -> None:
        self.listening = self.reading = False

    def stopReading(self) -> None:
        self.reading = False

    def startReading(self) -> None:
        self.reading = True


class FakeLimiter:
    def __init__(self, port: FakePort) -> None:
        self.protocols = {1, 2}
        self.port: FakePort | None = port
        self.paused = False


class FakeListenerService:
    """Stands in for vmqtw.service.ListenerService."""

    def __init__(self, listener: Any, port: int) -> None:
        self.listener = listener
        self.port: Any = FakePort(port)
        self.limiter = FakeLimiter(self.port)
        self.closed = 0
        self.binds = 0

    def bind(self) -> None:
        self.binds += 1
        self.port = FakePort(self.listener.address.port)

    def close_connections(self) -> None:
        self.closed += 1


class ListenerTests(AdminTestCase):

    def setUp(self) -> None:
        super().setUp()
        (cfg,) = self.hn.config.listeners
        self.svc = FakeListenerService(cfg, 1883)
        self.controller = ServiceListeners({"tcp.t": self.svc})
        self.admin.listeners = self.controller

    def test_listener_show(self) -> None:
        """listener show has VerneMQ's columns in order; -t and -m add theirs."""
        rows = self.run_json("listener show")["table"]
        self.assertEqual(rows, [{"type": "mqtt", "status": "running", "address": "127.0.0.1",
                                 "port": "1883", "mountpoint": "", "max_conns": 10000,
                                 "active_conns": 2, "all_conns": 2}])
        row = self.run_json("listener show --tls -m")["table"][0]
        self.assertIn("certfile", row)
        self.assertIn("allowed_protocol_versions", row)

    def test_stop_suspends_and_restart_resumes(self) -> None:
        """stop stops accepting but keeps the connections and the socket (the
        connection limiter may not resume it meanwhile); restart accepts again."""
        port = self.svc.port
        self.run_ok("listener stop address=127.0.0.1 port=1883")
        self.assertEqual(self.svc.closed, 0)
        self.assertEqual((port.reading, port.listening), (False, True))
        self.assertIsNone(self.svc.limiter.port)
        self.assertEqual(view(self.controller)[0]["status"], "suspended")
        self.run_ok("listener restart address=127.0.0.1 port=1883")
        self.assertEqual(self.svc.binds, 0)
        self.assertTrue(port.reading)
        self.assertIs(self.svc.limiter.port, port)
        self.assertEqual(view(self.controller)[0]["status"], "running")

    def test_restart_by_name(self) -> None:
        """restart_named (what `cluster join` uses after a leave) binds a stopped
        listener again by its name, even when its address no longer matches the bound
        one (a port-0 listener); an unknown name is VerneMQ's not_found error."""
        self.svc.port = None  # stopped: closed its socket, as leave does
        self.controller.restart_named("tcp.t")
        self.assertEqual(self.svc.binds, 1)
        self.assertEqual(view(self.controller)[0]["status"], "running")
        with self.assertRaises(ListenerError) as e:
            self.controller.restart_named("tcp.nope")
        self.assertIn("not_found", str(e.exception))

    def test_restart_at_the_connection_cap(self) -> None:
        """A listener paused at max_connections stays paused on restart: the
        limiter resumes it when a connection closes."""
        port = self.svc.port
        self.run_ok("listener stop address=127.0.0.1 port=1883")
        self.svc.limiter.paused = True
        self.run_ok("listener restart address=127.0.0.1 port=1883")
        self.assertFalse(port.reading)
        self.assertEqual(view(self.controller)[0]["status"], "running")

    def test_stop_kill_closes_connections(self) -> None:
        """stop -k also closes the listener's connections."""
        self.run_ok("listener stop address=127.0.0.1 port=1883 -k")
        self.assertEqual(self.svc.closed, 1)
        self.assertEqual(view(self.controller)[0]["status"], "stopped")
        self.run_ok("listener start address=127.0.0.1 port=1883")
        self.assertEqual(view(self.controller)[0]["status"], "running")
        self.assertTrue(self.svc.port.reading)

    def test_delete_and_unknown(self) -> None:
        """delete closes the connections and the socket and forgets the listener;
        unknown addresses fail with VerneMQ's text."""
        port = self.svc.port
        self.run_ok("listener delete address=127.0.0.1 port=1883")
        self.assertEqual(self.svc.closed, 1)
        self.assertFalse(port.listening)
        self.assertEqual(self.controller.rows(), [])
        self.assertEqual(self.run_fails("listener stop address=127.0.0.1 port=1883"),
                         "can't stop listener due to 'not_found'\n")
        self.assertIn("Invalid value for port",
                      self.run_fails("listener stop address=127.0.0.1 port=x"))

    def test_start_new_listener_through_the_builder(self) -> None:
        """start on a new address builds a listener of the kind the flags name."""
        built = []

        def builder(kind: str, host: str, port: int, options: dict[str, Any]) -> Any:
            built.append((kind, host, port, options))
            return FakeListenerService(self.svc.listener, port)

        self.controller.builder = builder
        self.run_ok("listener start address=127.0.0.1 port=9001 --websocket -m /mp")
        self.assertEqual(built, [("ws", "127.0.0.1", 9001, {"mountpoint": "/mp"})])
        self.assertEqual(len(self.controller.rows()), 2)

    def test_start_without_builder_fails_cleanly(self) -> None:
        """Without a builder a new listener cannot be started: an error, exit 1."""
        self.assertEqual(self.run_fails("listener start address=127.0.0.1 port=9001"),
                         "can't start listener due to 'not_supported'\n")


@implementer(IAuthOnPublish)
class AllowAll:
    def auth_on_publish(self, *args: Any) -> Any:
        return OK


class MiscTests(AdminTestCase):

    def test_plugin_show(self) -> None:
        """plugin show lists each plugin with its hooks."""
        self.admin.plugins = [("vmq_acl", AllowAll())]
        rows = self.run_json("plugin show")["table"]
        self.assertEqual(rows[0]["Plugin"], "vmq_acl")
        self.assertEqual(rows[0]["Hook(s)"], "auth_on_publish")
        self.assertEqual(self.run_json("plugin show --hook=on_register")["table"], [])

    def test_cluster_show(self) -> None:
        """cluster show: this node, running."""
        self.assertEqual(self.run_json("cluster show")["table"],
                         [{"Node": "VerneMQ@127.0.0.1", "Running": True}])

    def test_log_level(self) -> None:
        """log level changes the level the loggers honour; bad levels are refused."""
        before = current_log_level()
        self.addCleanup(logs.set_level, before)
        self.run_ok("log level logger=console level=debug")
        self.assertEqual(current_log_level(), "debug")
        self.assertEqual(self.run_json("log show config")["table"][0]["level"], "debug")
        self.assertIn("Invalid log level", self.run_fails("log level level=loud"))

    def test_json_writer_shapes(self) -> None:
        """The JSON writer: one element an object, several an array, none []."""
        self.assertEqual(output.as_json([output.Text("Done")]),
                         {"type": "text", "text": "Done"})
        self.assertEqual(output.as_json([]), [])
        self.assertEqual(output.as_json([output.Table([{"a": " x ", "b": None}]),
                                         output.Text("t")]),
                         [{"type": "table", "table": [{"a": "x", "b": None}]},
                          {"type": "text", "text": "t"}])


class Console:
    """Stands in for the admin channel's console."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.ended = 0
        self.trace = None

    def write(self, text: str) -> None:
        self.lines.append(text)

    def end(self) -> None:
        self.ended += 1


class TraceTests(AdminTestCase):

    def start(self, line: str = "trace client client-id=c1") -> Console:
        console = Console()
        reply = self.admin.run(line.split(), console=console)
        self.assertEqual(reply.code, 0, reply.render())
        self.assertTrue(reply.streaming)
        return console

    def test_trace_formats_packets(self) -> None:
        """Traced packets are written in VerneMQ's form with a UTC timestamp;
        other clients are not traced."""
        from vmqtw.codec import Connect, Subscribe, SubOptions, Puback, Pingreq
        c = self.hn.connected("c1")
        console = self.start()
        self.assertEqual(self.admin.tracer.watching, {("", "c1")})
        tracer = self.admin.tracer
        tracer.packet(("", "c1"), "RECV", Connect("c1", 4, True, 30, username="u",
                                                  password=b"secret"))
        tracer.packet(("", "c1"), "RECV", Publish("a/b", b"hello", 1, False, False, 7))
        tracer.packet(("", "c1"), "RECV", Subscribe(3, [("x/#", SubOptions(1))]))
        tracer.packet(("", "c1"), "SEND", Puback(7))
        tracer.packet(("", "c1"), "RECV", Pingreq())
        tracer.packet(("", "other"), "RECV", Pingreq())
        lines = [line.split(" ", 1)[1] for line in console.lines]
        self.assertEqual(lines, [
            'MQTT RECV: CID: "c1" CONNECT(c: c1, v: 4, u: u, p: ********, cs: 1, ka: 30)',
            'MQTT RECV: CID: "c1" PUBLISH(d0, q1, r0, m7, "a/b") with payload:\n    "hello"',
            'MQTT RECV: CID: "c1" SUBSCRIBE(m3) with topics:\n    "x/#" q:1',
            'MQTT SEND: CID: "c1" PUBACK(m7)',
            'MQTT RECV: CID: "c1" PINGREQ()',
        ])
        self.assertRegex(console.lines[0], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3} ")
        self.assertNotIn("secret", "".join(console.lines))
        del c

    def test_rate_limit_and_truncation(self) -> None:
        """Over --rate-max lines per --rate-interval are dropped and reported;
        payloads are cut to --trunc-payload bytes."""
        now = [1000.0]
        self.admin.tracer.clock = lambda: now[0]
        console = self.start("trace client client-id=c1 --rate-max=2 --rate-interval=1000 "
                             "--trunc-payload=3")
        for _ in range(5):
            self.admin.tracer.packet(("", "c1"), "RECV", Publish("t", b"abcdef", 0))
        self.assertEqual(len(console.lines), 2)
        self.assertTrue(console.lines[0].endswith('"abc"... (6 bytes)'))
        now[0] += 1.0
        self.admin.tracer.packet(("", "c1"), "RECV", Publish("t", b"x", 0))
        self.assertEqual(console.lines[2], "*** rate limit: 3 trace lines dropped ***")
        self.assertEqual(len(console.lines), 4)

    def test_one_trace_at_a_time_and_stop_all(self) -> None:
        """A second trace is refused; trace stop_all ends the first and tells its console."""
        console = self.start()
        reply = self.admin.run("trace client client-id=c2".split(), console=Console())
        self.assertEqual(reply.code, 1)
        self.assertIn("already running", reply.render())
        self.assertEqual(self.run_ok("trace stop_all"), "Done\n")
        self.assertEqual((console.lines, console.ended), (["Trace stopped"], 1))
        self.assertEqual(self.admin.tracer.watching, set())
        self.assertEqual(self.run_ok("trace stop_all"), "Done\n")

    def test_trace_needs_a_console(self) -> None:
        """Without a console (the HTTP API) trace client is refused."""
        self.assertIn("needs the vmq-admin console",
                      self.run_fails("trace client client-id=c1"))
        self.assertIn("Invalid value for --rate-max",
                      self.run_fails("trace client client-id=c1 --rate-max=0"))


class SysTreeTests(SynchronousTestCase):

    def test_publishes_every_interval_to_subscribers(self) -> None:
        """Every systree_interval the aggregated metrics go to $SYS/<node>/..."""
        hn = Harness()
        metrics = Metrics(broker=hn.broker)
        metrics.inc("mqtt_publish_received", 3, mqtt_version="4")
        reader = hn.subscriber("reader", ("$SYS/#", 0))
        tree = SysTree(hn.broker, metrics, hn.clock, interval_ms=1000)
        tree.startService()
        self.addCleanup(tree.stopService)
        hn.clock.advance(0.5)
        self.assertEqual(reader.take(), b"")
        hn.clock.advance(0.5)
        topic = systree_topic("VerneMQ@127.0.0.1", "mqtt_publish_received")
        self.assertEqual(topic, "$SYS/VerneMQ@127.0.0.1/mqtt/publish/received")
        got = {p.topic: p.payload for p in reader.packets() if isinstance(p, Publish)}
        self.assertEqual(got[topic], b"3")
        self.assertEqual(len(got), len(metrics.aggregated()))
        hn.clock.advance(1)
        self.assertTrue(reader.packets())

    def test_hash_does_not_see_sys(self) -> None:
        """A '#' subscriber does not get $SYS topics (MQTT-4.7.2-1)."""
        hn = Harness()
        reader = hn.subscriber("reader", ("#", 0))
        SysTree(hn.broker, Metrics(broker=hn.broker), hn.clock).publish()
        self.assertEqual(reader.take(), b"")

    def test_disabled_and_runtime_changes(self) -> None:
        """systree_enabled=off publishes nothing; configure() changes it at runtime;
        interval 0 means off."""
        hn = Harness()
        reader = hn.subscriber("reader", ("$SYS/#", 0))
        tree = SysTree.from_settings(hn.broker, Metrics(broker=hn.broker), hn.clock,
                                     {"systree_enabled": "off", "systree_interval": "1000"})
        tree.startService()
        self.addCleanup(tree.stopService)
        hn.clock.advance(5)
        self.assertEqual(reader.take(), b"")
        tree.configure(enabled=True)
        hn.clock.advance(1)
        self.assertNotEqual(reader.take(), b"")
        tree.configure(interval_ms=0)
        hn.clock.advance(5)
        self.assertEqual(reader.take(), b"")
        self.assertEqual(hn.clock.getDelayedCalls(), [])
