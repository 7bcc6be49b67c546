"""Turns a jmx_exporter page into the rows a JMX query gives, so both paths share one reading (exporter/jmx/reading.py).

Atlassian's Helm chart runs jmx_exporter with one catch-all rule, so every numeric MBean attribute comes out in
jmx_exporter's default format: ``<domain>_<first key's value>_<attribute>``, the other ObjectName keys as labels, case
kept (the chart sets no ``lowercaseOutputName``; a page that does is read the same, names compared without case:
``metrics_throttling_Value{section="tickets",throttledResource=…}``). The ObjectName cannot be
rebuilt exactly from that, but the reading only needs a stable name to search with the same patterns
(``jmx.match``), the key properties as labels, and the attribute: this module gives each sample the name
``<metric name without the attribute>:<label>=<value>,…`` and the attribute's configured spelling. String attributes
(a timer's ``DurationUnit``) never reach jmx_exporter's output, so timers read this way are taken in milliseconds,
Bitbucket's documented unit.
"""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from exporter.jmx.config import TimerAttributes
from exporter.jmx.query import JmxRow
from exporter.sources import INVALID_RESPONSE, FetchError

# Attributes of the ticket beans, before and after Mesh (the sidecar's carry their figure in ``Value``).
TICKET_ATTRIBUTES = ("Value", "Available", "Used", "Total", "QueuedRequests")


def known_attributes(attrs: TimerAttributes) -> list[str]:
    """The attribute names to recognise at the end of a metric name, longest first (so ``999thPercentile`` is not
    taken for a shorter name that ends the same way)."""
    names = {attrs.count, attrs.mean, attrs.max, attrs.min, attrs.stddev, attrs.rate, *attrs.quantiles.values()}
    return sorted(names | set(TICKET_ATTRIBUTES), key=len, reverse=True)


def parse_exporter_text(text: str, attrs: TimerAttributes) -> list[JmxRow]:
    """Every sample whose name ends with a known attribute, as a row; the rest (JVM and other beans) are skipped."""
    attributes = known_attributes(attrs)
    rows: list[JmxRow] = []
    try:
        families = list(text_string_to_metric_families(text))
    except ValueError as exc:
        raise FetchError(INVALID_RESPONSE, f"not Prometheus text: {str(exc)[:120]}") from None
    for family in families:
        for sample in family.samples:
            lowered = sample.name.lower()
            attribute = next((a for a in attributes if lowered.endswith("_" + a.lower())), None)
            if attribute is None:
                continue
            prefix = sample.name[: -len(attribute) - 1]
            properties = ",".join(f"{key}={value}" for key, value in sample.labels.items())
            rows.append(JmxRow(f"{prefix}:{properties}", attribute, sample.value))
    return rows
