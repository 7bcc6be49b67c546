"""What jmx_exporter serves for a simulated mirror node, as Atlassian's Helm chart configures it.

With ``monitoring.exposeJmxMetrics`` the chart runs jmx_exporter in each Bitbucket JVM (port 9999) and in the Mesh
sidecar's (9998) with one catch-all rule and **no** ``lowercaseOutputName`` (atlassian/data-center-helm-charts,
``templates/configmap-jmx-config.yaml``), so every MBean attribute comes out in jmx_exporter's default format with its
case kept: ``<domain>_<first key's value>_<Attribute>`` with the other ObjectName keys as labels. The chart's own
dashboards query ``com_atlassian_bitbucket_metrics_Mean{category00="http",…}`` and
``metrics_throttling_Value{section="tickets",throttledResource="scm-hosting",name="available"}`` (fact sheet,
section 8; tests/fixtures/jmx_exporter/atlassian-chart-families.txt). Bitbucket does not publish its sync timers'
ObjectNames; these follow Atlassian's convention (``type=metrics,category00=…,name=…``, optional ``tag.*`` keys), and
the exporter finds them by pattern, as it does over JMX.
"""

from __future__ import annotations

from exporter.simulator.farm import FarmNode

TIMER_DOMAIN = "com_atlassian_bitbucket_metrics"
TIMER_LABELS = 'category00="mirroring",category01="sync"'
# Milliseconds, as Bitbucket's Dropwizard timers report over JMX (jmx_exporter drops the DurationUnit string).
TIMER_MILLISECONDS = {
    "Mean": 120.0,
    "Max": 900.0,
    "Min": 15.0,
    "StdDev": 40.0,
    "50thPercentile": 100.0,
    "75thPercentile": 150.0,
    "95thPercentile": 400.0,
    "98thPercentile": 600.0,
    "99thPercentile": 800.0,
    "999thPercentile": 900.0,
}
TICKET_RESOURCES = ("scm-hosting", "scm-command", "scm-refs", "git-lfs")
TICKETS_TOTAL = 50


def _family(name: str, samples: list[tuple[str, float]]) -> list[str]:
    lines = [f"# HELP {name} (simulated jmx_exporter default format)", f"# TYPE {name} untyped"]
    # jmx_exporter's text ends each label set with a comma; Prometheus' parser accepts it.
    lines += [f"{name}{{{labels},}} {value:.1f}" if labels else f"{name} {value:.1f}" for labels, value in samples]
    return lines


def bitbucket_text(node: FarmNode) -> str:
    """The node's Bitbucket JVM: a sync timer per kind (and a per-upstream copy of the incremental one, tagged, which
    the exporter must not take for the total), plus a bean that is not a timer."""
    kinds = {"incremental": "incremental", "snapshot": "snapshot", "farm_vet": "farmvet"}
    timers = [(f'{TIMER_LABELS},name="{label}"', float(node.syncs[kind])) for kind, label in kinds.items()]
    # Half the incremental syncs, as a per-upstream slice would count them.
    tagged = (f'{TIMER_LABELS},name="incremental",tag_upstream="primary"', float(node.syncs["incremental"] // 2))
    timers.append(tagged)
    lines: list[str] = []
    lines += _family(f"{TIMER_DOMAIN}_Count", timers)
    for attribute, milliseconds in TIMER_MILLISECONDS.items():
        lines += _family(f"{TIMER_DOMAIN}_{attribute}", [(labels, milliseconds) for labels, _ in timers])
    lines += _family(f"{TIMER_DOMAIN}_OneMinuteRate", [(labels, 0.5) for labels, _ in timers])
    lines += _family("java_lang_Threading_ThreadCount", [("", 120.0)])
    return "\n".join(lines) + "\n"


def mesh_text(node: FarmNode) -> str:
    """The node's Mesh sidecar JVM: ``metrics_throttling_Value{section="tickets",throttledResource=…,name=…}``."""
    used = {resource: float(i + (1 if node.frozen else 0)) for i, resource in enumerate(TICKET_RESOURCES)}
    samples = []
    for resource in TICKET_RESOURCES:
        for name, figure in (("available", TICKETS_TOTAL - used[resource]), ("used", used[resource])):
            samples.append((f'section="tickets",throttledResource="{resource}",name="{name}"', figure))
    return "\n".join(_family("metrics_throttling_Value", samples)) + "\n"
