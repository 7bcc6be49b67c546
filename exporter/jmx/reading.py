"""Turns the MBean attributes one jmxquery run returned into what a mirror node reports: pure, no I/O.

Timers are Dropwizard-style (Count, Mean, percentiles, Max, Min, DurationUnit, OneMinuteRate, RateUnit); durations
are converted from the timer's DurationUnit to seconds and rates from its RateUnit to per second. A timer whose unit
is not understood keeps its count and rate but loses its durations, with a warning, rather than exporting a wrong
number.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from exporter.jmx.config import JmxMatch, TimerAttributes
from exporter.jmx.query import JmxRow

TIMER_KINDS = ("incremental", "snapshot", "farm_vet")

_SECONDS = {
    "nanosecond": 1e-9,
    "ns": 1e-9,
    "microsecond": 1e-6,
    "us": 1e-6,
    "µs": 1e-6,
    "millisecond": 1e-3,
    "ms": 1e-3,
    "second": 1.0,
    "s": 1.0,
    "sec": 1.0,
    "minute": 60.0,
    "min": 60.0,
    "m": 60.0,
    "hour": 3600.0,
    "h": 3600.0,
    "day": 86400.0,
    "d": 86400.0,
}
_KEY_PROPERTY = re.compile(r'([^=,:]+)=("(?:[^"\\]|\\.)*"|[^,]*)')


def unit_seconds(unit: object) -> float | None:
    """Seconds in one unit as Java's TimeUnit or Dropwizard spell it ("milliseconds", "MILLISECONDS", "ms")."""
    if not isinstance(unit, str):
        return None
    word = unit.strip().lower()
    return _SECONDS.get(word) or _SECONDS.get(word.removesuffix("s"))


def per_second(rate_unit: object) -> float | None:
    """Factor from a Dropwizard rate unit ("events/second", "calls/minute") to events per second."""
    if not isinstance(rate_unit, str):
        return None
    seconds = unit_seconds(rate_unit.rpartition("/")[2])
    return 1.0 / seconds if seconds else None


def number(value: object) -> float | None:
    """JMX numbers arrive as JSON numbers, or as strings from some beans; NaN and infinities are left out."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        result = float(value)
    elif isinstance(value, str):
        try:
            result = float(value)
        except ValueError:
            return None
    else:
        return None
    return result if math.isfinite(result) else None


def key_property(object_name: str, key: str) -> str | None:
    """A key property's value; keys compare without case (jmx_exporter's ``lowercaseOutputLabelNames``)."""
    _, _, properties = object_name.partition(":")
    for match in _KEY_PROPERTY.finditer(properties):
        if match.group(1).strip().lower() == key.lower():
            return match.group(2).strip('"')
    return None


def _tag_keys(object_name: str) -> int:
    """How many ``tag.*`` keys the name has (``tag_*`` once through jmx_exporter): a tagged timer is one slice of the
    untagged one."""
    _, _, properties = object_name.partition(":")
    return sum(1 for m in _KEY_PROPERTY.finditer(properties) if m.group(1).strip().lower().startswith(("tag.", "tag_")))


def _untagged(object_name: str) -> tuple[str, frozenset[str]]:
    """The name with its ``tag.*`` keys left out: the timer a tagged bean is a slice of."""
    domain, _, properties = object_name.partition(":")
    keys = (m.group(0).strip() for m in _KEY_PROPERTY.finditer(properties))
    return domain, frozenset(k for k in keys if not k.lower().startswith(("tag.", "tag_")))


def _ticket(object_name: str, attribute: str) -> tuple[str, str]:
    """(resource, attribute) of a ticket figure. The Mesh sidecar's beans
    (``metrics:section=tickets,throttledResource=scm-hosting,name=available``, attribute ``Value``) name the resource
    in ``throttledResource`` and the figure in ``name``; before Mesh, ``name=HostingTickets`` with attributes
    ``Available``, ``Used``, ...: the ``name`` key alone would collapse the sidecar's four resources into one."""
    throttled = key_property(object_name, "throttledResource")
    if throttled is not None:
        return throttled, key_property(object_name, "name") or attribute
    return key_property(object_name, "name") or key_property(object_name, "type") or object_name, attribute


@dataclass(frozen=True)
class TimerReading:
    object_name: str
    count: float | None
    rate_per_second: float | None
    # In seconds; empty when the DurationUnit was not understood.
    quantiles: dict[str, float] = field(default_factory=dict)
    mean: float | None = None
    max: float | None = None
    min: float | None = None
    stddev: float | None = None


@dataclass(frozen=True)
class TicketReading:
    object_name: str
    resource: str
    attribute: str
    value: float


@dataclass(frozen=True)
class NodeReading:
    beans: int
    timers: dict[str, TimerReading]
    tickets: list[TicketReading]
    # Problems worth a log line (logged when they change): ambiguous matches, units not understood.
    warnings: tuple[str, ...] = ()


def _group(rows: Iterable[JmxRow]) -> dict[str, dict[str, object]]:
    beans: dict[str, dict[str, object]] = {}
    for row in rows:
        beans.setdefault(row.object_name, {})[row.attribute] = row.value
    return beans


def _is_timer(values: dict[str, object], attrs: TimerAttributes) -> bool:
    timing = (attrs.mean, attrs.max, *attrs.quantiles.values())
    return attrs.count in values and any(name in values for name in timing)


def _timer(object_name: str, values: dict[str, object], attrs: TimerAttributes, warnings: list[str]) -> TimerReading:
    unit_attr = values.get(attrs.duration_unit)
    # Bitbucket documents its timers in milliseconds; a timer without a DurationUnit is read as such.
    scale = unit_seconds(unit_attr) if unit_attr is not None else 1e-3
    rate_attr = values.get(attrs.rate_unit)
    rate_scale = per_second(rate_attr) if rate_attr is not None else 1.0
    rate = number(values.get(attrs.rate))
    if rate_scale is None:
        warnings.append(f"{object_name}: rate unit {rate_attr!r} not understood, rate left out")
    if scale is None:
        warnings.append(f"{object_name}: duration unit {unit_attr!r} not understood, durations left out")
        return TimerReading(object_name, number(values.get(attrs.count)), None if rate_scale is None else rate)

    def seconds(name: str) -> float | None:
        value = number(values.get(name))
        return None if value is None or scale is None else value * scale

    quantiles = {q: scaled for q, name in attrs.quantiles.items() if (scaled := seconds(name)) is not None}
    return TimerReading(
        object_name,
        count=number(values.get(attrs.count)),
        rate_per_second=None if rate is None or rate_scale is None else rate * rate_scale,
        quantiles=quantiles,
        mean=seconds(attrs.mean),
        max=seconds(attrs.max),
        min=seconds(attrs.min),
        stddev=seconds(attrs.stddev),
    )


def read_node(rows: Iterable[JmxRow], match: JmxMatch, attrs: TimerAttributes) -> NodeReading:
    """Classify the returned MBeans: a timer whose ObjectName matches a sync kind's expression becomes that kind (the
    bean with the fewest ``tag.*`` keys wins, then the first in name order; the others are reported as ambiguous, with
    the ObjectName chosen, unless they are slices of it: its name with tags), other beans matching ``tickets`` give
    their numeric attributes as ticket figures."""
    beans = _group(rows)
    kinds = {kind: re.compile(getattr(match, kind)) for kind in TIMER_KINDS}
    tickets_re = re.compile(match.tickets)
    timers: dict[str, TimerReading] = {}
    tickets: list[TicketReading] = []
    ticket_series: set[tuple[str, str]] = set()
    warnings: list[str] = []
    for object_name in sorted(beans, key=lambda name: (_tag_keys(name), name)):
        values = beans[object_name]
        if _is_timer(values, attrs):
            kind = next((k for k, pattern in kinds.items() if pattern.search(object_name)), None)
            if kind is None:
                continue
            if kind in timers:
                chosen = timers[kind].object_name
                # A slice of the chosen timer (the same name with tags: Bitbucket's timers come per tag as well as
                # whole) is expected; another timer matching the same expression is a question for the admin.
                if _untagged(object_name) != _untagged(chosen):
                    warnings.append(f"{object_name} also matches {kind}; using {chosen}")
                continue
            timers[kind] = _timer(object_name, values, attrs, warnings)
        elif tickets_re.search(object_name):
            for bean_attribute, raw in sorted(values.items()):
                if (value := number(raw)) is None:
                    continue
                resource, attribute = _ticket(object_name, bean_attribute)
                if (resource, attribute) in ticket_series:
                    # Two beans with the same name key in different domains: keep the first, never a duplicate series.
                    warnings.append(f"{object_name}: {resource}/{attribute} already read from another bean")
                    continue
                ticket_series.add((resource, attribute))
                tickets.append(TicketReading(object_name, resource, attribute, value))
    return NodeReading(len(beans), timers, tickets, tuple(warnings))
