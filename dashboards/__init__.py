"""Grafana dashboards for bitbucket-mirror-exporter, written with grafanalib; ``python3 -m dashboards`` renders them
into dashboards/generated/."""
