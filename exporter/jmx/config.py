"""The ``jmx`` block of a mirror: which nodes to read, how to run jmxquery, and which MBeans and attributes mean what.

Bitbucket does not publish the ObjectNames of its mirror sync timers, so the defaults query a broad pattern and
classify the beans it returns by regular expressions on their names; every name here can be pinned in the config
once an admin has seen the real ones (the exporter exports the ObjectName it chose for each kind).
"""

from __future__ import annotations

import re
from typing import Self

from pydantic import Field, field_validator, model_validator

from exporter.secret_files import UserPassword
from exporter.strict import StrictModel
from exporter.urls import check_node_template

DEFAULT_URL_TEMPLATE = "service:jmx:rmi:///jndi/rmi://{address}:{port}/jmxrmi"
# Measured in bench/jmx_poll.py: these options cut jmxquery's JVM start-up CPU (C1 only, serial GC, small heap).
DEFAULT_JAVA_OPTIONS = ["-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", "-Xms16m", "-Xmx64m", "-Xss512k"]
DEFAULT_QUANTILES = {
    "0.5": "50thPercentile",
    "0.75": "75thPercentile",
    "0.95": "95thPercentile",
    "0.98": "98thPercentile",
    "0.99": "99thPercentile",
    "0.999": "999thPercentile",
}


class JmxCredentials(UserPassword):
    """JMX remote authentication (jmxremote.password): a username with password or password_file."""

    @model_validator(mode="after")
    def _complete(self) -> Self:
        has_password = self.password_given()
        if has_password and self.username is None:
            raise ValueError("username is required with password")
        if self.username is not None and not has_password:
            raise ValueError("password or password_file is required with username")
        return self

    @property
    def is_set(self) -> bool:
        return self.username is not None


def _check_service_url(url: str | None) -> str | None:
    if url is not None and not url.startswith("service:jmx:"):
        raise ValueError("must be a JMX service URL (service:jmx:...)")
    return url


class JmxNodeConfig(JmxCredentials):
    name: str = Field(min_length=1, max_length=128)
    url: str
    # The node's Mesh sidecar JVM (its hosting tickets on 8.x and 9.x), read with the same credentials.
    mesh_url: str | None = None

    _service_urls = field_validator("url", "mesh_url")(_check_service_url)


def _check_pattern(pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"is not a regular expression: {exc}") from None
    return pattern


class JmxMatch(StrictModel):
    """Regular expressions searched in each returned MBean's ObjectName; the first kind that matches wins."""

    incremental: str = r"(?i)incremental"
    snapshot: str = r"(?i)snapshot"
    farm_vet: str = r"(?i)farm.?vet|vet"
    tickets: str = r"(?i)ticket"

    _check = field_validator("incremental", "snapshot", "farm_vet", "tickets")(_check_pattern)


class TimerAttributes(StrictModel):
    """The attribute names of a Dropwizard-style timer MBean."""

    count: str = "Count"
    mean: str = "Mean"
    max: str = "Max"
    min: str = "Min"
    stddev: str = "StdDev"
    rate: str = "OneMinuteRate"
    duration_unit: str = "DurationUnit"
    rate_unit: str = "RateUnit"
    quantiles: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_QUANTILES))

    @field_validator("quantiles")
    @classmethod
    def _quantile_keys(cls, quantiles: dict[str, str]) -> dict[str, str]:
        for key in quantiles:
            try:
                value = float(key)
            except ValueError:
                raise ValueError(f"{key!r} is not a number between 0 and 1") from None
            if not 0 <= value <= 1:
                raise ValueError(f"{key!r} is not a number between 0 and 1")
        return quantiles


class JmxConfig(JmxCredentials):
    # Over JMX with jmxquery: either the nodes, each with its service URL, or a port: one URL per node the mirror's
    # farmNodes lists.
    nodes: list[JmxNodeConfig] = Field(default_factory=list)
    port: int | None = Field(default=None, ge=1, le=65535)
    # With port: the Mesh sidecar's JMX port on every node too (a second JVM per node per poll).
    mesh_port: int | None = Field(default=None, ge=1, le=65535)
    url_template: str = DEFAULT_URL_TEMPLATE
    # Or from jmx_exporter's Prometheus text, where Atlassian's Helm chart already serves it
    # (monitoring.exposeJmxMetrics): one page per node of the mirror's nodes (nodes.static, else farmNodes), for
    # Bitbucket's JVM (port 9999) and for the Mesh sidecar's (9998, the hosting tickets). No JVM is started.
    exporter_url_template: str | None = None
    mesh_exporter_url_template: str | None = None
    interval_seconds: float = Field(default=60.0, ge=1, le=86400)
    timeout_seconds: float = Field(default=20.0, gt=0, le=600)
    java: str = Field(default="java", min_length=1)
    java_options: list[str] = Field(default_factory=lambda: list(DEFAULT_JAVA_OPTIONS))
    object_names: list[str] = Field(default_factory=lambda: ["com.atlassian.bitbucket*:*"], min_length=1)
    # What is asked of a node's Mesh sidecar (mesh_port or a node's mesh_url): its ticket beans.
    mesh_object_names: list[str] = Field(default_factory=lambda: ["metrics:section=tickets,*"], min_length=1)
    match: JmxMatch = Field(default_factory=JmxMatch)
    attributes: TimerAttributes = Field(default_factory=TimerAttributes)

    @field_validator("url_template")
    @classmethod
    def _template(cls, template: str) -> str:
        try:
            url = template.format(address="node.example", port=1)
        except (KeyError, IndexError, ValueError):
            raise ValueError("may use only the placeholders {address} and {port}") from None
        if not url.startswith("service:jmx:") or "{address}" not in template:
            raise ValueError("must be a JMX service URL (service:jmx:...) with {address}")
        return template

    @field_validator("exporter_url_template", "mesh_exporter_url_template")
    @classmethod
    def _exporter_template(cls, template: str | None) -> str | None:
        return None if template is None else check_node_template(template, base_url=False)

    @property
    def from_exporter(self) -> bool:
        """Read from jmx_exporter pages rather than over JMX."""
        return self.exporter_url_template is not None or self.mesh_exporter_url_template is not None

    @field_validator("object_names", "mesh_object_names")
    @classmethod
    def _object_names(cls, names: list[str]) -> list[str]:
        for name in names:
            # jmxquery separates queries with ';' and an attribute with '/'.
            if ":" not in name or name.endswith(":") or ";" in name or "/" in name:
                raise ValueError(f"{name!r} is not an ObjectName pattern (domain:key=value,... without ; or /)")
        return names

    @model_validator(mode="after")
    def _nodes_or_port(self) -> Self:
        if self.from_exporter:
            if self.nodes or self.port is not None or self.mesh_port is not None:
                raise ValueError("set nodes or port (over JMX) or the exporter URL templates (jmx_exporter), not both")
            return self
        if self.mesh_port is not None and self.port is None:
            raise ValueError("mesh_port goes with port (with nodes, give each node a mesh_url)")
        if self.nodes and self.port is not None:
            raise ValueError("set nodes or port, not both")
        if not self.nodes and self.port is None:
            raise ValueError(
                "set nodes (each with a url) or port (to use the mirror's farmNodes addresses), or "
                "exporter_url_template (jmx_exporter)"
            )
        names = [node.name for node in self.nodes]
        if len(set(names)) != len(names):
            raise ValueError("node names must be unique")
        return self

    def credentials_for(self, node: JmxNodeConfig | None) -> JmxCredentials:
        """A node's own credentials, else the block's."""
        return node if node is not None and node.is_set else self
