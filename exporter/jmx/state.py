"""What the JMX source last learned: one state per mirror node, by mirror and node name."""

from __future__ import annotations

from dataclasses import dataclass, field

from exporter.jmx.reading import NodeReading
from exporter.sources import SourceState


@dataclass
class JmxNodeState:
    """One mirror node's JMX, polled on its own interval (jmx.interval_seconds)."""

    url: str
    # Its interval (jmx.interval_seconds), so its values are served by the one freshness rule (sources.freshness).
    interval_seconds: float = 30.0
    source: SourceState[NodeReading] = field(default_factory=SourceState)

    def __post_init__(self) -> None:
        self.source.own_interval = self.interval_seconds


# Each mirror's JMX nodes by node name, by mirror name.
JmxState = dict[str, dict[str, JmxNodeState]]
