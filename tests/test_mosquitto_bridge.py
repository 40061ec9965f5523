"""A real mosquitto broker bridged to vmqtw with ``try_private true`` (protocol level
132): messages flow both ways and none loops back."""
from __future__ import annotations

import os
import shutil
import socket
from typing import Any

from twisted.internet.defer import inlineCallbacks

from tests.support import (
    BrokerTestCase, RunningProcess, SubscriptionWatcher, in_thread, missing, quiet_period,
)

MOSQUITTO = shutil.which("mosquitto") or (
    "/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK) else None)

VMQTW = """\
allow_anonymous = on
listener.tcp.default = 127.0.0.1:0
listener.tcp.default.allowed_protocol_versions = 3,4,5,131,132
"""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for mosquitto's listener)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MosquittoBridgeTests(BrokerTestCase):

    timeout = 90

    @inlineCallbacks
    def test_bridge_both_ways_without_loops(self) -> Any:
        """mosquitto bridges ``#`` both ways to vmqtw with ``try_private true``: vmqtw
        accepts its level 132 CONNECT, a message published on either broker reaches a
        subscriber on the other one, and within a bounded wait every subscriber got
        each message exactly once (vmqtw sends the bridge none of its own messages
        back, so mosquitto does not deliver them a second time); a retained message
        keeps its retain flag across the bridge."""
        if MOSQUITTO is None:
            missing("the mosquitto broker is not installed (apt-get install mosquitto)")
        service = self.start_broker(VMQTW)
        watcher = SubscriptionWatcher(service)
        bridged = watcher.wait("#")
        vport = self.port_of(service)
        mport = free_port()
        conf = self.write_config(
            f"listener {mport} 127.0.0.1\n"
            "allow_anonymous true\n"
            "log_dest stdout\n"
            "log_type all\n"
            "connection vmqtw\n"
            f"address 127.0.0.1:{vport}\n"
            "bridge_protocol_version mqttv311\n"
            "try_private true\n"
            "cleansession true\n"
            "restart_timeout 1\n"
            "topic # both 0\n")
        mosquitto = RunningProcess(MOSQUITTO, ["-c", conf])
        self.addCleanup(mosquitto.stop)
        # mosquitto opens its listener before it starts its bridges (its log on a
        # pipe is block-buffered, so we wait for the bridge, not for a log line).
        yield bridged  # the bridge connected (at level 132) and subscribed to '#'
        sessions = [s for s in service.broker.sessions.values() if s.conn is not None]
        self.assertEqual(len(sessions), 1)
        self.assertEqual(sessions[0].conn.protocol_level, 4)  # spoken as 3.1.1

        on_mosq = self.paho(mport, "on-mosquitto")
        on_vmq = self.paho(vport, "on-vmqtw")
        yield in_thread(on_mosq.connect)
        yield in_thread(on_vmq.connect)
        yield in_thread(on_mosq.subscribe, "#")
        yield in_thread(on_vmq.subscribe, "#")

        yield in_thread(on_mosq.publish, "from/mosquitto", b"m")
        yield in_thread(on_vmq.publish, "from/vmqtw", b"v")
        # Each subscriber sees both messages (its own one through its own broker).
        got_m = yield in_thread(on_mosq.get_many, 2)
        got_v = yield in_thread(on_vmq.get_many, 2)
        self.assertEqual(sorted(m.topic for m in got_m), ["from/mosquitto", "from/vmqtw"])
        self.assertEqual(sorted(m.topic for m in got_v), ["from/mosquitto", "from/vmqtw"])

        yield in_thread(on_mosq.publish, "retained/m", b"r", 0, True)
        msg = yield in_thread(on_vmq.get)
        self.assertEqual(msg.topic, "retained/m")

        # A loop would deliver copies now: nothing more may arrive.
        yield quiet_period(1.5)
        self.assertEqual([m.topic for m in _drain(on_mosq)], ["retained/m"])
        self.assertEqual(_drain(on_vmq), [])
        bridge = sessions[0]
        self.assertTrue(all(o.no_local and o.retain_as_published
                            for o in bridge.subscriptions.values()),
                        bridge.subscriptions)


def _drain(client: Any) -> list[Any]:
    """Every message ``client`` has received and nobody read yet."""
    out = []
    for _ in range(100):
        if client.messages.empty():
            break
        out.append(client.messages.get_nowait())
    return out
