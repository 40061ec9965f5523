"""mosquitto_pub / mosquitto_sub (libmosquitto) against a broker in this process."""
from __future__ import annotations

import random
import shutil
import string

from twisted.internet.defer import Deferred, inlineCallbacks

from tests.support import (
    BrokerTestCase, SubscriptionWatcher, need_mosquitto_clients, run_process,
)

PUB = shutil.which("mosquitto_pub")
SUB = shutil.which("mosquitto_sub")


class MosquittoClientTests(BrokerTestCase):

    def setUp(self):
        need_mosquitto_clients()
        self.broker = self.start_broker()
        self.port = self.port_of(self.broker)
        self.watcher = SubscriptionWatcher(self.broker)

    def common(self, version: str) -> list[str]:
        return ["-h", "127.0.0.1", "-p", str(self.port), "-V", version]

    def sub(self, version: str, topic: str, qos: int, count: int = 1,
            fmt: str = "%q %r %t %p") -> Deferred:
        args = self.common(version) + ["-t", topic, "-q", str(qos), "-C", str(count),
                                       "-W", "10"]
        if fmt:
            args += ["-F", fmt]
        return run_process(SUB, args, timeout=15)

    def pub(self, version: str, topic: str, qos: int, *extra: str):
        return run_process(PUB, self.common(version) + ["-t", topic, "-q", str(qos), *extra])

    @inlineCallbacks
    def _round_trip(self, version: str, qos: int):
        topic = f"mosq/{version}/{qos}"
        received = self.sub(version, topic, qos)
        yield self.watcher.wait(topic)
        out, err, code = yield self.pub(version, topic, qos, "-m", f"hello {qos}")
        self.assertEqual((code, err), (0, b""), out)
        out, err, code = yield received
        self.assertEqual((code, err), (0, b""))
        self.assertEqual(out, f"{qos} 0 {topic} hello {qos}\n".encode())

    def test_v31_qos0(self):
        """mosquitto_sub and mosquitto_pub speaking MQTT 3.1 exchange a QoS 0 message:
        received at QoS 0, not retained, with its topic and payload."""
        return self._round_trip("mqttv31", 0)

    def test_v31_qos1(self):
        """mosquitto_sub and mosquitto_pub speaking MQTT 3.1 exchange a QoS 1 message:
        received at QoS 1, not retained, with its topic and payload."""
        return self._round_trip("mqttv31", 1)

    def test_v31_qos2(self):
        """mosquitto_sub and mosquitto_pub speaking MQTT 3.1 exchange a QoS 2 message:
        received at QoS 2, not retained, with its topic and payload."""
        return self._round_trip("mqttv31", 2)

    def test_v311_qos0(self):
        """mosquitto_sub and mosquitto_pub speaking MQTT 3.1.1 exchange a QoS 0 message:
        received at QoS 0, not retained, with its topic and payload."""
        return self._round_trip("mqttv311", 0)

    def test_v311_qos1(self):
        """mosquitto_sub and mosquitto_pub speaking MQTT 3.1.1 exchange a QoS 1 message:
        received at QoS 1, not retained, with its topic and payload."""
        return self._round_trip("mqttv311", 1)

    def test_v311_qos2(self):
        """mosquitto_sub and mosquitto_pub speaking MQTT 3.1.1 exchange a QoS 2 message:
        received at QoS 2, not retained, with its topic and payload."""
        return self._round_trip("mqttv311", 2)

    @inlineCallbacks
    def test_retained(self):
        """A retained QoS 1 message from mosquitto_pub is delivered to a mosquitto_sub
        started afterwards, with the retain flag set, for MQTT 3.1 and 3.1.1."""
        for version in ("mqttv31", "mqttv311"):
            topic = f"mosq/retained/{version}"
            # QoS 1: mosquitto_pub exits only after the broker's PUBACK, so the
            # message is stored before the subscriber starts.
            out, err, code = yield self.pub(version, topic, 1, "-r", "-m", "kept")
            self.assertEqual((code, err), (0, b""))
            out, err, code = yield self.sub(version, topic, 1)
            self.assertEqual((code, err), (0, b""))
            self.assertEqual(out, f"1 1 {topic} kept\n".encode())

    @inlineCallbacks
    def test_100k_payload(self):
        """A 100 KiB payload published from a file by mosquitto_pub reaches mosquitto_sub
        byte for byte."""
        payload = "".join(random.choice(string.ascii_letters) for _ in range(100 * 1024))
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(payload)
        topic = "mosq/big"
        received = self.sub("mqttv311", topic, 1, fmt="")
        yield self.watcher.wait(topic)
        out, err, code = yield self.pub("mqttv311", topic, 1, "-f", path)
        self.assertEqual((code, err), (0, b""))
        out, err, code = yield received
        self.assertEqual((code, err), (0, b""))
        self.assertEqual(len(out), len(payload) + 1)
        self.assertEqual(out, payload.encode() + b"\n")

    @inlineCallbacks
    def test_many_messages_in_order(self):
        """mosquitto_pub -l sends one message per stdin line; all arrive in order."""
        topic = "mosq/lines"
        lines = [f"line {i}" for i in range(50)]
        received = self.sub("mqttv311", topic, 1, count=len(lines), fmt="%p")
        yield self.watcher.wait(topic)
        out, err, code = yield run_process(
            PUB, self.common("mqttv311") + ["-t", topic, "-q", "1", "-l"],
            stdin=("\n".join(lines) + "\n").encode())
        self.assertEqual((code, err), (0, b""))
        out, err, code = yield received
        self.assertEqual((code, err), (0, b""))
        self.assertEqual(out.decode().splitlines(), lines)
