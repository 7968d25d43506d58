"""Exposes the engine's metrics to Prometheus: a collector read at scrape time.

`/metrics` is prometheus-async's aiohttp handler over the default registry, so the process
collector (RSS, CPU, open files) comes with it. The collector is registered while the app runs.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import REGISTRY
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from engine.metrics import Counter, Gauge, Histogram, LabeledGauge, Metrics


class EngineCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        for m in self._metrics.all():
            if isinstance(m, Counter):
                family = CounterMetricFamily(m.name, m.help, labels=list(m.labelnames))
                for labels, value in list(m.values.items()):
                    family.add_metric(list(labels), value)
                yield family
            elif isinstance(m, Gauge):
                yield GaugeMetricFamily(m.name, m.help, value=m.read())
            elif isinstance(m, LabeledGauge):
                gauge = GaugeMetricFamily(m.name, m.help, labels=list(m.labelnames))
                for labels, value in m.read().items():
                    gauge.add_metric(list(labels), value)
                yield gauge
            elif isinstance(m, Histogram):
                cumulative, buckets = 0, []
                for bound, count in zip((*m.buckets, float("inf")), m.counts, strict=True):
                    cumulative += count
                    buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
                yield HistogramMetricFamily(m.name, m.help, buckets=buckets, sum_value=m.sum)
                yield GaugeMetricFamily(
                    f"{m.name}_max", f"Largest observation of {m.name}", value=m.max
                )

    def register(self) -> None:
        REGISTRY.register(self)

    def unregister(self) -> None:
        REGISTRY.unregister(self)
