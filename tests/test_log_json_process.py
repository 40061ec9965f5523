"""``log.console.file.format = json`` in a broker process (``python -m vmqtw``) with a
real paho client: the console file is JSON lines, standard output stays text."""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from typing import Any

from twisted.internet.defer import inlineCallbacks

from tests.support import BrokerTestCase, RunningProcess, in_thread

PROCESS_TIMEOUT = 30.0


class JsonLogProcessTests(BrokerTestCase):

    timeout = 120

    @inlineCallbacks
    def test_connect_and_disconnect_lines_are_json(self) -> None:
        """A broker with ``log.console = both`` and ``log.console.file.format = json``:
        every line of its console file parses with ``json.loads``; the connect and
        disconnect lines of a paho client carry client id, user name, peer, listener,
        the node name and the reason; standard output keeps the text format."""
        directory = tempfile.mkdtemp(prefix="vmqtw-logjson-")
        self.addCleanup(shutil.rmtree, directory, True)
        config = os.path.join(directory, "broker.conf")
        path = os.path.join(directory, "log", "console.log")
        with open(config, "w", encoding="utf-8") as f:
            f.write("allow_anonymous = on\nnodename = VerneMQ@logjson\n"
                    "listener.tcp.default = 127.0.0.1:0\n"
                    "log.console = both\nlog.console.file.format = json\n")
        proc = RunningProcess(sys.executable, ["-m", "vmqtw", "-c", config])
        stopped: list[Any] = []

        @inlineCallbacks
        def stop() -> Any:
            if not stopped:
                stopped.append((yield proc.stop(timeout=PROCESS_TIMEOUT)))
            return stopped[0]

        self.addCleanup(stop)
        m = yield proc.wait_for_output(rb"listener tcp\.default on 127\.0\.0\.1:(\d+)",
                                       timeout=PROCESS_TIMEOUT)
        client = self.paho(int(m.group(1)), "dev-ü9", username="alice")
        yield in_thread(client.connect)
        yield proc.wait_for_output(rb"connected from 127\.0\.0\.1:\d+", timeout=PROCESS_TIMEOUT)
        yield in_thread(client.close)
        yield proc.wait_for_output(rb"disconnected: ", timeout=PROCESS_TIMEOUT)
        out, err, code = yield stop()
        self.assertIn(code, (0, -15), (out[-2000:], err))
        self.assertNotIn(b"Traceback", out + err)

        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
        docs = [json.loads(line) for line in lines]
        self.assertTrue(docs)
        for doc in docs:
            self.assertEqual(doc["node"], "VerneMQ@logjson")
            self.assertIn(doc["level"], ("debug", "info", "warning", "error", "critical"))
            self.assertTrue(doc["time"].endswith("Z"), doc)
        self.assertTrue([d for d in docs if d["msg"].startswith("listener tcp.default on")])
        (connect,) = [d for d in docs if " connected from " in d["msg"]]
        (disconnect,) = [d for d in docs if "disconnected:" in d["msg"]]
        for doc in (connect, disconnect):
            self.assertEqual((doc["client_id"], doc["username"], doc["listener"]),
                             ("dev-ü9", "alice", "tcp.default"))
            self.assertRegex(doc["peer"], r"^127\.0\.0\.1:\d+$")
            self.assertEqual(doc["level"], "info")
        self.assertEqual(connect["peer"], disconnect["peer"])
        self.assertIn("reason", disconnect)

        text = out.decode("utf-8")
        self.assertIn("connected from 127.0.0.1:", text)
        self.assertNotIn('"client_id"', text)
