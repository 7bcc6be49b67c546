"""The outcome of configuration reloads, as Prometheus itself reports its own."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from exporter.config import CoreSettings
from exporter.web.config import WebConfig

SettingsT = TypeVar("SettingsT", bound=CoreSettings)
# Reads the configuration (file and environment) and the web config again; raises ConfigError when invalid.
ConfigLoader = Callable[[], tuple[SettingsT, WebConfig]]


@dataclass
class ReloadStatus:
    successful: bool = True
    # The start counts as the first successful load.
    last_success_timestamp: float = field(default_factory=time.time)

    def succeeded(self) -> None:
        self.successful = True
        self.last_success_timestamp = time.time()

    def failed(self) -> None:
        self.successful = False


class ReloadCollector(Collector):
    def __init__(self, status: ReloadStatus) -> None:
        self._status = status

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "bitbucket_mirror_exporter_config_last_reload_successful",
            "1 when the last configuration reload (SIGHUP or POST /-/reload) succeeded, 0 when it was refused and the "
            "previous configuration kept running.",
            value=1.0 if self._status.successful else 0.0,
        )
        yield GaugeMetricFamily(
            "bitbucket_mirror_exporter_config_last_reload_success_timestamp_seconds",
            "When the configuration was last loaded successfully (at start or by a reload), in seconds since epoch.",
            value=self._status.last_success_timestamp,
        )
