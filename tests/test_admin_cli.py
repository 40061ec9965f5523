"""vmq-admin as an operator runs it: the script in a child process, talking
over the admin socket to a real broker (a BrokerService, which serves its
admin channel, listeners on port 0) started by the test."""
from __future__ import annotations

import json
import os
import shutil
import stat
import sys
import tempfile
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import connectProtocol

from tests.support import (
    BrokerTestCase, RawClient, connect_packet, publish_packet, run_process,
)
from vmqtw.admin.ops import Operations


class AdminCliTestCase(BrokerTestCase):

    def setUp(self) -> None:
        # A short directory: a unix socket path must fit in 108 bytes.
        self.state = tempfile.mkdtemp(prefix="vmqtw-admin-")
        self.addCleanup(shutil.rmtree, self.state, True)
        self.text = ("allow_anonymous = on\nlistener.tcp.default = 127.0.0.1:0\n"
                     f"persistent_store.directory = {self.state}\n"
                     "nodename = VerneMQ@test\n")
        self.service = self.start_broker(self.text)
        self.config_path = self.service.config.path
        self.ops: Operations = self.service.ops
        self.channel = self.service.admin_channel

    def vmq_admin(self, *args: str, config: str | None = None) -> Any:
        """Run the vmq-admin script; fires with (stdout, stderr, exit code)."""
        return run_process(sys.executable, ["-m", "vmqtw.admin.cli", "-c",
                                            config or self.config_path, *args])

    @inlineCallbacks
    def ok(self, *args: str) -> Any:
        out, err, code = yield self.vmq_admin(*args)
        self.assertEqual(code, 0, (out, err))
        return out.decode()


class ChannelTests(AdminCliTestCase):

    def test_socket_is_private_and_next_to_the_store(self) -> None:
        """The admin socket is in the store's directory with mode 0600."""
        path = os.path.join(self.state, "vmq-admin.sock")
        self.assertEqual(self.ops.socket_path, path)
        mode = os.stat(path).st_mode
        self.assertTrue(stat.S_ISSOCK(mode))
        self.assertEqual(stat.S_IMODE(mode), 0o600)

    @inlineCallbacks
    def test_config_from_environment(self) -> None:
        """Without -c, $VMQTW_CONFIG names the configuration."""
        os.environ["VMQTW_CONFIG"] = self.config_path
        self.addCleanup(os.environ.pop, "VMQTW_CONFIG", None)
        out, err, code = yield run_process(sys.executable,
                                           ["-m", "vmqtw.admin.cli", "cluster", "show"])
        self.assertEqual(code, 0, err)
        self.assertIn(b"VerneMQ@test", out)

    @inlineCallbacks
    def test_unreachable_broker(self) -> None:
        """A configuration whose broker is not running: exit 3 and a message."""
        other = self.write_config(f"persistent_store.directory = {self.state}/none\n")
        out, err, code = yield self.vmq_admin("session", "show", config=other)
        self.assertEqual(code, 3)
        self.assertIn(b"cannot reach the broker", err)

    @inlineCallbacks
    def test_missing_config(self) -> None:
        """A configuration file that does not exist: exit 2 with the script's usage."""
        out, err, code = yield self.vmq_admin("session", "show", config="/nonexistent.conf")
        self.assertEqual(code, 2)
        self.assertIn(b"usage: vmq-admin", err)

    @inlineCallbacks
    def test_bad_commands_exit_non_zero(self) -> None:
        """Unknown commands and bad arguments print the usage and exit 1; the
        broker keeps answering."""
        out, err, code = yield self.vmq_admin("no", "such", "command")
        self.assertEqual(code, 1)
        self.assertIn(b"Unknown command: no such command", err)
        out, err, code = yield self.vmq_admin("session", "show", "--limit=many")
        self.assertEqual(code, 1)
        self.assertIn(b"Invalid value for --limit", err)
        out = yield self.ok("cluster", "show")
        self.assertIn("VerneMQ@test", out)

    @inlineCallbacks
    def test_garbage_on_the_socket(self) -> None:
        """A client sending garbage gets an error line and is disconnected; the
        channel keeps serving."""
        from twisted.internet.endpoints import UNIXClientEndpoint
        client = RawClient()
        yield connectProtocol(UNIXClientEndpoint(reactor, self.ops.socket_path), client)
        client.send(b"this is not json\n")
        start = yield client.read(9)
        self.assertEqual(start, b'{"code": ')
        yield client.when_closed()
        self.assertIn(b"bad request", client.buffer)
        out = yield self.ok("cluster", "show")
        self.assertIn("VerneMQ@test", out)


class CommandTests(AdminCliTestCase):

    @inlineCallbacks
    def test_session_show_and_disconnect(self) -> None:
        """session show lists connected clients; session disconnect closes one."""
        a = yield self.connected_raw_client(self.service, "client-a")
        yield self.connected_raw_client(self.service, "client-b")
        out = yield self.ok("session", "show", "--client_id", "--is_online")
        self.assertIn("| client-a  | true      |", out)
        self.assertIn("| client-b  | true      |", out)
        out = yield self.ok("session", "show", "--client_id=client-a", "--format=json")
        rows = json.loads(out)["table"]
        self.assertEqual([r["client_id"] for r in rows], ["client-a"])
        self.assertEqual(rows[0]["peer_host"], "127.0.0.1")
        out = yield self.ok("session", "disconnect", "client-id=client-a")
        self.assertEqual(out, "Done\n")
        yield a.when_closed()

    @inlineCallbacks
    def test_retain_show_and_delete(self) -> None:
        """retain show lists retained messages; retain delete removes one."""
        c = yield self.connected_raw_client(self.service, "pub")
        c.send(publish_packet("keep/me", b"kept", retain=True))
        c.send(publish_packet("drop/me", b"dropped", retain=True))
        c.send(b"\xc0\x00")  # PINGREQ: its PINGRESP comes after both are handled
        pong = yield c.read(2)
        self.assertEqual(pong, b"\xd0\x00")
        out = yield self.ok("retain", "show")
        self.assertIn("| kept    | keep/me |", out)
        yield self.ok("retain", "delete", "--topic=drop/me")
        out = yield self.ok("retain", "show", "--topic")
        self.assertNotIn("drop/me", out)

    @inlineCallbacks
    def test_listener_stop_restart_and_kill(self) -> None:
        """listener stop accepts no new connections but keeps existing ones;
        restart accepts again on the same port; stop -k closes the clients."""
        port = self.port_of(self.service)
        existing = yield self.connected_raw_client(self.service, "stays")
        out = yield self.ok("listener", "stop", "address=127.0.0.1", f"port={port}")
        self.assertEqual(out, "Done\n")
        out = yield self.ok("listener", "show")
        self.assertIn("suspended", out)
        # A new client's TCP handshake completes in the kernel's backlog, but the
        # broker does not accept it: its CONNECT gets no answer while suspended.
        waiting = yield self.raw_client(host="127.0.0.1", port=port)
        waiting.send(connect_packet("waiting"))
        existing.send(b"\xc0\x00")  # PINGREQ: the old connection still works
        pong = yield existing.read(2)
        self.assertEqual(pong, b"\xd0\x00")
        self.assertEqual(waiting.buffer, b"")
        self.assertNotIn(("", "waiting"), self.service.broker.sessions)
        yield self.ok("listener", "restart", "address=127.0.0.1", f"port={port}")
        connack = yield waiting.read(4)  # accepted now: its CONNECT is answered
        self.assertEqual(connack, b"\x20\x02\x00\x00")
        again = yield self.raw_client(host="127.0.0.1", port=port)
        again.send(b"\xc0\x00")
        yield self.ok("listener", "stop", "address=127.0.0.1", f"port={port}", "-k")
        yield existing.when_closed()
        yield again.when_closed()
        yield waiting.when_closed()
        out = yield self.ok("listener", "show", "--format=json")
        self.assertEqual(json.loads(out)["table"][0]["status"], "stopped")
        yield self.ok("listener", "start", "address=127.0.0.1", f"port={port}")
        out, err, code = yield self.vmq_admin("listener", "stop", "address=10.9.9.9", "port=1")
        self.assertEqual((code, err), (1, b"can't stop listener due to 'not_found'\n"))

    @inlineCallbacks
    def test_listener_start_new_and_delete(self) -> None:
        """listener start on a new address adds a working listener (with the
        file's settings and the given options); delete removes it; bad options
        are refused with VerneMQ's one-line error."""
        out = yield self.ok("listener", "start", "address=127.0.0.1", "port=0",
                            "--mountpoint=tenant", "--max_connections=5")
        self.assertEqual(out, "Done\n")
        out = yield self.ok("listener", "show", "--format=json")
        rows = json.loads(out)["table"]
        self.assertEqual(len(rows), 2)
        new = [r for r in rows if r["mountpoint"] == "tenant"][0]
        self.assertEqual((new["type"], new["status"], new["max_conns"]), ("mqtt", "running", 5))
        client = yield self.raw_client(host="127.0.0.1", port=int(new["port"]))
        client.send(connect_packet("on-new"))
        yield client.read(4)
        self.assertIn(("tenant", "on-new"), self.service.broker.sessions)
        yield self.ok("listener", "delete", "address=127.0.0.1", f"port={new['port']}", )
        yield client.when_closed()
        out = yield self.ok("listener", "show", "--format=json")
        self.assertEqual(len(json.loads(out)["table"]), 1)
        out, err, code = yield self.vmq_admin("listener", "start", "address=127.0.0.1",
                                              "port=0", "--max_connections=lots")
        self.assertEqual(code, 1)
        self.assertTrue(err.startswith(b"can't start listener due to '"), err)
        self.assertEqual(err.count(b"\n"), 1)
        import socket
        blocker = socket.socket()
        self.addCleanup(blocker.close)
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)
        taken = blocker.getsockname()[1]
        out, err, code = yield self.vmq_admin("listener", "start", "address=127.0.0.1",
                                              f"port={taken}")
        self.assertEqual(code, 1)
        self.assertIn(b"cannot listen", err)
        self.assertEqual(len(self.service.listeners), 1)

    @inlineCallbacks
    def test_metrics_plugin_cluster_and_log(self) -> None:
        """metrics show, plugin show, cluster show and log level answer."""
        self.ops.metrics.inc("mqtt_publish_received", 3, mqtt_version="4")
        out = yield self.ok("metrics", "show")
        self.assertIn("counter.mqtt_publish_received = 3\n", out)
        out = yield self.ok("plugin", "show")
        self.assertEqual(out, "")  # no plugins enabled: an empty table prints nothing
        out = yield self.ok("cluster", "show")
        self.assertIn("| VerneMQ@test | true    |", out)
        from vmqtw import logs
        from vmqtw.admin.commands import current_log_level
        self.addCleanup(logs.set_level, current_log_level())
        yield self.ok("log", "level", "logger=console", "level=warn")
        self.assertEqual(current_log_level(), "warn")

    @inlineCallbacks
    def test_trace_client(self) -> None:
        """vmq-admin trace client streams a client's packets until trace stop_all
        (the connection code reports them to the tracer; here the test does)."""
        from tests.support import RunningProcess
        from vmqtw.codec import Pingreq, Pingresp
        yield self.connected_raw_client(self.service, "traced")
        tracing = RunningProcess(sys.executable, ["-m", "vmqtw.admin.cli", "-c",
                                                  self.config_path, "trace", "client",
                                                  "client-id=traced"])
        self.addCleanup(tracing.stop)
        yield tracing.wait_for_output(rb'Starting trace for 1 existing sessions for client '
                                      rb'"traced"\n')
        tracer = self.ops.admin.tracer
        tracer.packet(("", "traced"), "RECV", Pingreq())
        tracer.packet(("", "traced"), "SEND", Pingresp())
        yield tracing.wait_for_output(rb'MQTT SEND: CID: "traced" PINGRESP\(\)\n')
        yield self.ok("trace", "stop_all")
        out, err, code = yield tracing.proto.ended
        self.assertEqual(code, 0, err)
        self.assertIn(b'MQTT RECV: CID: "traced" PINGREQ()\n', out)
        self.assertTrue(out.endswith(b"Trace stopped\n"), out)

    @inlineCallbacks
    def test_trace_client_sees_real_packets(self) -> None:
        """vmq-admin trace client streams the packets a traced client really sends and
        receives (reported by the connection), and only that client's."""
        from tests.support import RunningProcess
        traced = yield self.connected_raw_client(self.service, "traced")
        other = yield self.connected_raw_client(self.service, "other")
        tracing = RunningProcess(sys.executable, ["-m", "vmqtw.admin.cli", "-c",
                                                  self.config_path, "trace", "client",
                                                  "client-id=traced"])
        self.addCleanup(tracing.stop)
        yield tracing.wait_for_output(rb'Starting trace for 1 existing sessions')
        other.send(b"\xc0\x00")
        yield other.read(2)
        traced.send(publish_packet("t/x", b"hello"))
        traced.send(b"\xc0\x00")  # PINGREQ
        pong = yield traced.read(2)
        self.assertEqual(pong, b"\xd0\x00")
        yield tracing.wait_for_output(rb'MQTT SEND: CID: "traced" PINGRESP\(\)\n')
        yield self.ok("trace", "stop_all")
        out, err, code = yield tracing.proto.ended
        self.assertEqual(code, 0, err)
        self.assertIn(b'MQTT RECV: CID: "traced" PUBLISH(d0, q0, r0, mundefined, "t/x") with '
                      b'payload:\n    "hello"\n', out)
        self.assertIn(b'MQTT RECV: CID: "traced" PINGREQ()\n', out)
        self.assertNotIn(b'"other"', out)

    @inlineCallbacks
    def test_api_keys_persist(self) -> None:
        """api-key create stores the key in a 0600 file next to the store."""
        key = (yield self.ok("api-key", "create", "scope=status")).strip()
        self.assertRegex(key, r"^[A-Za-z0-9]{32}$")
        out = yield self.ok("api-key", "show", "scope=status")
        self.assertIn(key, out)
        path = os.path.join(self.state, "apikeys.json")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        with open(path) as f:
            self.assertEqual(json.load(f)["keys"][0]["key"], key)
