"""Prometheus exporter for Atlassian Bitbucket Data Center smart mirrors and mirror farms."""

__version__ = "0.1.0"
