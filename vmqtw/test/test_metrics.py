"""The metrics registry: VerneMQ's names, labels and the Prometheus text."""
from __future__ import annotations

import re

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry
from twisted.trial.unittest import SynchronousTestCase

from vmqtw.codec import reasons
from vmqtw.metrics import (
    BOTH_VERSIONS, V5_REASONS, Metrics, MetricsCollector, exposition, metrics_settings,
)
from vmqtw.test.test_protocol import Harness


def families(metrics: Metrics) -> dict[str, object]:
    return {f.name: f for f in text_string_to_metric_families(exposition(metrics).decode())}


def series(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value, as the Prometheus parser reads them."""
    out = {}
    for family in text_string_to_metric_families(exposition(metrics).decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


class CatalogueTests(SynchronousTestCase):

    def test_versioned_counters_have_both_versions(self) -> None:
        """Every counter VerneMQ labels with mqtt_version 4 and 5 has both series
        from the start, at zero."""
        m = Metrics()
        for name in BOTH_VERSIONS:
            self.assertEqual(m.values[m.slot(name, mqtt_version="4")], 0)
            self.assertEqual(m.values[m.slot(name, mqtt_version="5")], 0)

    def test_reason_code_series_exist_from_the_start(self) -> None:
        """Every MQTT 5.0 reason_code series VerneMQ lists is exported at zero."""
        m = Metrics()
        found = series(m)
        for name, (_doc, labels) in V5_REASONS.items():
            for label in labels:
                key = ("vernemq_" + name + "_total",
                       tuple(sorted({"node": m.node, "mqtt_version": "5",
                                     "reason_code": label}.items())))
                self.assertIn(key, found)

    def test_version_slots_count_into_the_right_series(self) -> None:
        """MQTT 3.1 and 3.1.1 count as mqtt_version 4, 5.0 as 5."""
        m = Metrics()
        for level in (3, 4, 5):
            m.values[m.version_slots(level).mqtt_publish_received] += 1
        self.assertEqual(m.values[m.slot("mqtt_publish_received", mqtt_version="4")], 2)
        self.assertEqual(m.values[m.slot("mqtt_publish_received", mqtt_version="5")], 1)

    def test_connack_and_reason_slots(self) -> None:
        """CONNACK return codes map to return_code (3.x) or reason_code (5.0);
        a code VerneMQ has no series for lands in the spare slot, never exported."""
        m = Metrics()
        v4, v5 = m.version_slots(4), m.version_slots(5)
        m.values[v4.connack(reasons.CONNACK_BAD_CREDENTIALS)] += 1
        m.values[v5.connack(reasons.BANNED)] += 1
        m.values[v5.reason("mqtt_disconnect_sent", reasons.ADMINISTRATIVE_ACTION)] += 1
        m.values[v5.reason("mqtt_disconnect_received", 0)] += 1
        m.values[v5.connack(0x04)] += 1  # not a CONNACK reason
        m.values[v4.reason("mqtt_disconnect_received", 0)] += 1  # 3.x: version 4 series
        self.assertEqual(m.values[m.slot("mqtt_connack_sent", mqtt_version="4",
                                         return_code="bad_username_or_password")], 1)
        self.assertEqual(m.values[m.slot("mqtt_connack_sent", mqtt_version="5",
                                         reason_code="banned")], 1)
        self.assertEqual(m.values[m.slot("mqtt_disconnect_sent", mqtt_version="5",
                                         reason_code="administrative_action")], 1)
        self.assertEqual(m.values[m.slot("mqtt_disconnect_received", mqtt_version="5",
                                         reason_code="normal_disconnect")], 1)
        self.assertEqual(m.values[m.slot("mqtt_disconnect_received", mqtt_version="4")], 1)
        self.assertEqual(m.values[m.spare], 1)
        self.assertNotIn("1", [str(v) for k, v in series(m).items() if "spare" in k[0]])

    def test_unknown_series_is_a_key_error(self) -> None:
        """Asking for a series VerneMQ does not have fails at wiring time."""
        m = Metrics()
        self.assertRaises(KeyError, m.slot, "mqtt_publish_received", mqtt_version="6")
        self.assertRaises(KeyError, m.slot, "no_such_metric")


class ExpositionTests(SynchronousTestCase):

    def test_names_have_namespace_and_no_total_suffix(self) -> None:
        """The text has VerneMQ's names: namespace prefix, no _total, node first."""
        m = Metrics(node="VerneMQ@10.0.0.1")
        m.inc("mqtt_publish_received", 12, mqtt_version="4")
        text = exposition(m).decode()
        self.assertIn("# TYPE vernemq_mqtt_publish_received counter\n", text)
        self.assertIn('vernemq_mqtt_publish_received{node="VerneMQ@10.0.0.1",'
                      'mqtt_version="4"} 12\n', text)
        suffixed = [line for line in text.splitlines() if re.search(r"_total[{ ]", line)
                    and "total_active_connections" not in line
                    and "vm_memory_total" not in line]
        self.assertEqual(suffixed, [])

    def test_help_and_type_once_per_name(self) -> None:
        """Series of one name are grouped under a single HELP and TYPE line
        (VerneMQ may interleave v4 and v5 mqtt_connack_sent; we do not)."""
        text = exposition(Metrics()).decode()
        types = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")]
        self.assertEqual(len(types), len(set(types)))
        lines = text.splitlines()
        seen: list[str] = []
        for line in lines:
            if not line.startswith("#"):
                name = line.split("{")[0]
                if not seen or seen[-1] != name:
                    self.assertNotIn(name, seen)
                    seen.append(name)

    def test_parsed_by_prometheus_client(self) -> None:
        """prometheus_client's parser reads every family with its type."""
        fams = families(Metrics())
        self.assertEqual(fams["vernemq_socket_open"].type, "counter")
        self.assertEqual(fams["vernemq_retain_messages"].type, "gauge")
        self.assertEqual(fams["vernemq_active_mqtt_connections"].type, "gauge")

    def test_empty_namespace(self) -> None:
        """prometheus_namespace = "" writes bare names."""
        text = exposition(Metrics(namespace="")).decode()
        self.assertIn("\nsocket_open{", text)

    def test_settings_from_config_keys(self) -> None:
        """nodename and prometheus_namespace come from the raw config keys."""
        self.assertEqual(metrics_settings({}), ("VerneMQ@127.0.0.1", "vernemq_"))
        self.assertEqual(metrics_settings({"nodename": "n1", "prometheus_namespace": ""}),
                         ("n1", ""))

    def test_collector_in_a_prometheus_client_registry(self) -> None:
        """The collector works in a prometheus-client registry (values by name)."""
        m = Metrics()
        m.inc("socket_open", 3)
        registry = CollectorRegistry()
        registry.register(MetricsCollector(m))
        self.assertEqual(registry.get_sample_value("vernemq_socket_open",
                                                   {"node": m.node}), 3)

    def test_label_values_escaped(self) -> None:
        """A node name with quotes or backslashes stays a valid exposition."""
        m = Metrics(node='a"b\\c')
        fams = families(m)
        sample = fams["vernemq_socket_open"].samples[0]
        self.assertEqual(sample.labels["node"], 'a"b\\c')


class BrokerGaugeTests(SynchronousTestCase):

    def test_gauges_read_from_the_broker(self) -> None:
        """Connections, sessions, subscriptions and retained messages are read
        from a real broker at scrape time."""
        hn = Harness("listener.tcp.t = 127.0.0.1:1883\nlistener.ws.w = 127.0.0.1:8080\n"
                     "allow_anonymous = on\n")
        m = Metrics(broker=hn.broker)
        hn.subscriber("a", ("x/#", 0), clean=False, listener="t")
        w = hn.connected("w", listener="w")
        w.publish("r/1", b"hello", retain=True)
        gone = hn.connected("gone", clean=False, listener="t")
        gone.lose()
        g = m.gauges()
        self.assertEqual(g["active_mqtt_connections"], 1)
        self.assertEqual(g["active_mqttws_connections"], 1)
        self.assertEqual(g["total_active_connections"], 2)
        self.assertEqual(g["queue_processes"], 3)
        self.assertEqual(g["router_subscriptions"], 1)
        self.assertEqual(g["retain_messages"], 1)
        self.assertEqual(g["retain_memory"], len("r/1") + len("hello"))
        self.assertGreater(g["vm_memory_total"], 0)

    def test_queue_setup_and_teardown_from_session_events(self) -> None:
        """A new session counts as queue_setup, its end as queue_teardown; a
        resumed session is neither."""
        hn = Harness()
        m = Metrics(broker=hn.broker)
        m.watch_sessions(hn.broker)
        c = hn.connected("a")
        p = hn.connected("p", clean=False)
        p.lose()
        hn.connected("p", clean=False, session_present=True)
        c.lose()
        totals = m.aggregated()
        self.assertEqual(totals["queue_setup"], ("counter", 2))
        self.assertEqual(totals["queue_teardown"], ("counter", 1))

    def test_dropped_messages_and_reset(self) -> None:
        """queue_message_drop follows Broker.dropped; reset() zeroes every
        counter, including those kept by the broker."""
        hn = Harness()
        m = Metrics(broker=hn.broker)
        m.inc("socket_open")
        hn.broker.dropped = 5
        self.assertEqual(m.aggregated()["queue_message_drop"], ("counter", 5))
        m.reset()
        self.assertEqual(m.aggregated()["queue_message_drop"], ("counter", 0))
        self.assertEqual(m.aggregated()["socket_open"], ("counter", 0))
        hn.broker.dropped = 7
        self.assertEqual(m.aggregated()["queue_message_drop"], ("counter", 2))

    def test_derived_queue_counters(self) -> None:
        """queue_message_in follows router_matches_local and queue_message_out
        follows mqtt_publish_sent (all versions), so the hot path counts less."""
        m = Metrics()
        m.inc("router_matches_local", 4)
        m.inc("mqtt_publish_sent", 2, mqtt_version="4")
        m.inc("mqtt_publish_sent", 1, mqtt_version="5")
        totals = m.aggregated()
        self.assertEqual(totals["queue_message_in"], ("counter", 4))
        self.assertEqual(totals["queue_message_out"], ("counter", 3))
        m.reset()
        self.assertEqual(m.aggregated()["queue_message_out"], ("counter", 0))

    def test_registered_counters(self) -> None:
        """Counters kept elsewhere are exported by name, added up when several
        readers register the same name, and zeroed by reset()."""
        m = Metrics()
        spare = m.spare
        box = {"a": 2, "b": 3}
        m.register_counter("http_pub_published", "Published over HTTP.", lambda: box["a"])
        m.register_counter("http_pub_published", "Published over HTTP.", lambda: box["b"])
        self.assertEqual(m.spare, spare)  # slots resolved earlier stay valid
        self.assertIn('vernemq_http_pub_published{node="VerneMQ@127.0.0.1"} 5\n',
                      exposition(m).decode())
        m.reset()
        box["a"] += 1
        self.assertEqual(m.aggregated()["http_pub_published"], ("counter", 1))

    def test_aggregated_sums_labels(self) -> None:
        """The aggregated view ($SYS, metrics show) sums a name over its labels."""
        m = Metrics()
        m.inc("mqtt_publish_received", 2, mqtt_version="4")
        m.inc("mqtt_publish_received", 3, mqtt_version="5")
        self.assertEqual(m.aggregated()["mqtt_publish_received"], ("counter", 5))
