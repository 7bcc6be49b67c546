"""How one polled source's health is rendered: success, duration, age and errors by reason. Shared by the REST
sources' self-metrics and the JMX nodes', so both follow the same rules (success and duration absent before the
first poll ends; errors counted per reason)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from exporter.state import SourceState


@dataclass(frozen=True)
class SourceFamilies:
    success: GaugeMetricFamily
    duration: GaugeMetricFamily
    last_success: GaugeMetricFamily
    errors: CounterMetricFamily

    def add(self, labels: list[str], source: SourceState[Any]) -> None:
        if source.polled:
            self.success.add_metric(labels, 1.0 if source.success else 0.0)
            self.duration.add_metric(labels, source.duration_seconds)
        if source.last_success_timestamp is not None:
            self.last_success.add_metric(labels, source.last_success_timestamp)
        for reason, count in sorted(source.errors_total.items()):
            self.errors.add_metric([*labels, reason], count)
