"""The metrics registry as Prometheus sees it (``vmqtw.metrics.Metrics``).

``MetricsCollector`` exposes the registry as prometheus-client metric
families, for any prometheus-client registry or the OpenMetrics writer.  The
classic text format (what VerneMQ serves and what its dashboards query) is
written by ``exposition()``: prometheus-client's own text writer appends
``_total`` to every counter name, which VerneMQ does not do (its names have no
suffix, and ``node`` is the first label).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

if TYPE_CHECKING:  # pragma: no cover
    from vmqtw.metrics import Metrics


class MetricsCollector(Collector):
    """The registry as prometheus-client metric families (``node`` label first,
    names with the namespace, counters without ``_total``)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        m = self.metrics
        families: dict[str, Metric] = {}
        for typ, name, labels, value in m.samples():
            full = m.namespace + name
            family = families.get(full)
            if family is None:
                family = families[full] = Metric(full, m.describe(name)[1], typ)
            family.add_sample(full, {"node": m.node, **dict(labels)}, value)
        return list(families.values())


def exposition(metrics: Metrics) -> bytes:
    """The Prometheus text format (0.0.4) as VerneMQ writes it: one ``# HELP``
    and ``# TYPE`` per name, one line per labelled series, ``node`` first."""
    out: list[str] = []
    for family in MetricsCollector(metrics).collect():
        doc = family.documentation.replace("\\", r"\\").replace("\n", r"\n")
        out.append(f"# HELP {family.name} {doc}\n# TYPE {family.name} {family.type}\n")
        for sample in family.samples:
            labels = ",".join(f'{k}="{_escape(v)}"' for k, v in sample.labels.items())
            out.append(f"{sample.name}{{{labels}}} {_number(sample.value)}\n")
    return "".join(out).encode()


def _number(value: float) -> str:
    """Integers as VerneMQ writes them (``12``), anything else as Go would."""
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return str(int(value))
    return floatToGoString(value)


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
