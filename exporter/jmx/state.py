"""What the JMX source last learned: one state per mirror node, by mirror and node name."""

from __future__ import annotations

from dataclasses import dataclass, field

from exporter.jmx.reading import NodeReading
from exporter.sources import SourceState


@dataclass
class JmxNodeState:
    """One mirror node's JMX, polled on its own interval (jmx.interval_seconds)."""

    url: str
    # Created with own_interval = jmx.interval_seconds: served by the one freshness rule (sources.freshness).
    source: SourceState[NodeReading] = field(default_factory=SourceState)


# Each mirror's JMX nodes by node name, by mirror name.
JmxState = dict[str, dict[str, JmxNodeState]]
