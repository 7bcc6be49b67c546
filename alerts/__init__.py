"""Prometheus alert rules for bitbucket-mirror-exporter, generated from alerts/rules.py."""
