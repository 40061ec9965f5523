"""The packet path counts VerneMQ's metrics (``vmqtw.metrics``) in the broker's
registry: connections on fake transports (``connection_harness``), read back by
series name and labels."""
from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from vmqtw.codec import Connect, Disconnect, Puback, Publish, Subscribe, SubOptions
from vmqtw.codec import reasons
from vmqtw.test.connection_harness import BASE, Rig


class CountingTests(SynchronousTestCase):

    def setUp(self) -> None:
        self.rig = Rig(BASE + "max_client_id_size = 8\n")
        self.metrics = self.rig.broker.metrics

    def count(self, name: str, **labels: str) -> int:
        return self.metrics.value(name, **labels)

    def test_connect_and_connack_by_version_and_code(self) -> None:
        """CONNECT is counted under the mqtt_version it asks for, and each CONNACK under
        its return code (3.x) or reason code (5.0), refusals included."""
        self.rig.connected("a", 4)
        self.rig.connected("b", 5)
        refused = self.rig.client(4)
        refused.send(Connect("much-too-long-id", 4, True, 0))
        refused5 = self.rig.client(5)
        refused5.send(Connect("much-too-long-id", 5, True, 0))
        self.assertEqual(self.count("mqtt_connect_received", mqtt_version="4"), 2)
        self.assertEqual(self.count("mqtt_connect_received", mqtt_version="5"), 2)
        self.assertEqual(self.count("mqtt_connack_sent", mqtt_version="4",
                                    return_code="success"), 1)
        self.assertEqual(self.count("mqtt_connack_sent", mqtt_version="4",
                                    return_code="client_identifier_not_valid"), 1)
        self.assertEqual(self.count("mqtt_connack_sent", mqtt_version="5",
                                    reason_code="success"), 1)
        self.assertEqual(self.count("mqtt_connack_sent", mqtt_version="5",
                                    reason_code="client_identifier_not_valid"), 1)
        self.assertEqual(self.count("socket_open"), 4)

    def test_publish_flow_counts_both_directions(self) -> None:
        """A QoS 1 PUBLISH from a 3.1.1 client to a 5.0 subscriber counts PUBLISH
        received (v4), PUBACK sent (v4), one router match, PUBLISH sent (v5) and the
        subscriber's PUBACK received with its reason code; bytes are counted per read."""
        sub = self.rig.connected("sub", 5)
        sub.send(Subscribe(1, [("t/#", SubOptions(1))]))
        sub.take()
        pub = self.rig.connected("pub", 4)
        before = self.count("bytes_received")
        data = Publish("t/x", b"hello", 1, packet_id=7)
        pub.send(data)
        self.assertEqual(self.count("mqtt_publish_received", mqtt_version="4"), 1)
        self.assertEqual(self.count("mqtt_puback_sent", mqtt_version="4"), 1)
        self.assertEqual(self.count("router_matches_local"), 1)
        self.assertEqual(self.count("mqtt_publish_sent", mqtt_version="5"), 1)
        self.assertEqual(self.count("mqtt_subscribe_received", mqtt_version="5"), 1)
        self.assertEqual(self.count("mqtt_suback_sent", mqtt_version="5"), 1)
        self.assertGreater(self.count("bytes_received"), before)
        (delivered,) = sub.packets()
        sub.send(Puback(delivered.packet_id, reasons.NO_MATCHING_SUBSCRIBERS))
        self.assertEqual(self.count("mqtt_puback_received", mqtt_version="5",
                                    reason_code="no_matching_subscribers"), 1)
        sub.send(Puback(999))  # nothing inflight with that id
        self.assertEqual(self.count("mqtt_puback_invalid_error", mqtt_version="5"), 1)

    def test_disconnect_keepalive_and_close(self) -> None:
        """DISCONNECT received (5.0 by reason code), a keep alive timeout (counted and
        answered with DISCONNECT 0x8D), and every closed stream as socket_close."""
        c5 = self.rig.connected("c5", 5)
        c5.send(Disconnect(reasons.DISCONNECT_WITH_WILL))
        c5.lose()
        self.assertEqual(self.count("mqtt_disconnect_received", mqtt_version="5",
                                    reason_code="disconnect_with_will_msg"), 1)
        idle = self.rig.connected("idle", 5, keepalive=10)
        self.rig.clock.advance(16)
        self.assertTrue(idle.closed)
        idle.lose()
        self.assertEqual(self.count("client_keepalive_expired", mqtt_version="5"), 1)
        self.assertEqual(self.count("mqtt_disconnect_sent", mqtt_version="5",
                                    reason_code="keep_alive_timeout"), 1)
        self.assertEqual(self.count("socket_close"), 2)

    def test_no_connect_in_time(self) -> None:
        """A connection that sends no CONNECT within mqtt_connect_timeout counts as
        socket_close_timeout."""
        self.rig.client(4)
        self.rig.clock.advance(6)
        self.assertEqual(self.count("socket_close_timeout"), 1)
