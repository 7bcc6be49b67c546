"""What jmx_exporter serves for a simulated mirror node, as Atlassian's Helm chart configures it.

With ``monitoring.exposeJmxMetrics`` the chart runs jmx_exporter in each Bitbucket JVM (port 9999) and in the Mesh
sidecar's (9998) with ``lowercaseOutputName``, ``lowercaseOutputLabelNames`` and one catch-all rule, so every MBean
attribute comes out in jmx_exporter's default format: ``<domain>_<first key's value>_<attribute>`` with the other
ObjectName keys as labels, lower-cased. Bitbucket does not publish its sync timers' ObjectNames; these follow
Atlassian's convention (``type=metrics,category00=…,name=…``, optional ``tag.*`` keys), and the exporter finds them by
pattern, as it does over JMX.
"""

from __future__ import annotations

from exporter.simulator.farm import FarmNode

TIMER_DOMAIN = "com_atlassian_bitbucket_metrics"
TIMER_LABELS = 'category00="mirroring",category01="sync"'
# Milliseconds, as Bitbucket's Dropwizard timers report over JMX (jmx_exporter drops the DurationUnit string).
TIMER_MILLISECONDS = {
    "mean": 120.0,
    "max": 900.0,
    "min": 15.0,
    "stddev": 40.0,
    "50thpercentile": 100.0,
    "75thpercentile": 150.0,
    "95thpercentile": 400.0,
    "98thpercentile": 600.0,
    "99thpercentile": 800.0,
    "999thpercentile": 900.0,
}
TICKET_RESOURCES = ("scm-hosting", "scm-command", "scm-refs", "git-lfs")
TICKETS_TOTAL = 50


def _family(name: str, samples: list[tuple[str, float]]) -> list[str]:
    lines = [f"# HELP {name} (simulated jmx_exporter default format)", f"# TYPE {name} untyped"]
    # jmx_exporter's text ends each label set with a comma; Prometheus' parser accepts it.
    lines += [f"{name}{{{labels},}} {value:.1f}" for labels, value in samples]
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
    lines += _family(f"{TIMER_DOMAIN}_count", timers)
    for attribute, milliseconds in TIMER_MILLISECONDS.items():
        lines += _family(f"{TIMER_DOMAIN}_{attribute}", [(labels, milliseconds) for labels, _ in timers])
    lines += _family(f"{TIMER_DOMAIN}_oneminuterate", [(labels, 0.5) for labels, _ in timers])
    lines += _family("java_lang_threading_threadcount", [('type="Threading"', 120.0)])
    return "\n".join(lines) + "\n"


def mesh_text(node: FarmNode) -> str:
    """The node's Mesh sidecar JVM: ``metrics:section=tickets,throttledResource=…,name=available|used``."""
    used = {resource: float(i + (1 if node.frozen else 0)) for i, resource in enumerate(TICKET_RESOURCES)}
    samples = []
    for resource in TICKET_RESOURCES:
        samples.append((f'throttledresource="{resource}",name="available"', TICKETS_TOTAL - used[resource]))
        samples.append((f'throttledresource="{resource}",name="used"', used[resource]))
    return "\n".join(_family("metrics_tickets_value", samples)) + "\n"
