"""What the JMX source last learned: one state per mirror node, by mirror and node name."""

from __future__ import annotations

from dataclasses import dataclass, field

from exporter.jmx.reading import NodeReading
from exporter.sources import SourceState


@dataclass
class JmxNodeState:
    """One mirror node's JMX, polled on its own interval (jmx.interval_seconds)."""

    url: str
    # The larger of poll.stale_after_seconds and 3 x jmx.interval_seconds: JMX is polled less often.
    stale_after_seconds: float = 90.0
    source: SourceState[NodeReading] = field(default_factory=SourceState)


# Each mirror's JMX nodes by node name, by mirror name.
JmxState = dict[str, dict[str, JmxNodeState]]
