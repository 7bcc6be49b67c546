"""Prometheus exporter for Atlassian Bitbucket Data Center smart mirrors and mirror farms.

The map (docs/architecture.md tells one poll and one scrape, and how to add a source or a metric):

- ``cli`` the command line (run, demo, rules, check-config); ``app`` wires one configuration's pollers, the web
  server and reloads (``Exporter``, ``Polling``); ``demo`` the exporter against the simulated farm;
- ``config`` the YAML/environment configuration; ``secret_files`` passwords from files; ``tls`` TLS contexts;
  ``reloading`` the reload outcome and its gauges; ``logs`` logfmt logging;
- ``sources`` what every source shares: ``FetchError`` and its reasons, ``SourceState``, ``run_source``, the poll
  loop, the health self-metrics, freeing replaced values off the event loop;
- ``state`` what the pollers learned, target by target (``ExporterState``), read by collectors and pages;
- ``drift`` the pure comparison of a mirror's hashes with the primary's, and lag;
- ``rest/`` the Bitbucket REST side: ``client`` (HTTP), ``api`` (endpoints, API family), ``models`` and ``listings``
  (decoding), ``poller`` (a poll per target), ``collector`` (its metrics);
- ``jmx/`` mirror nodes over JMX, shaped the same way (config, query, reading, poller, collector);
- ``web/`` the exporter's own HTTP side: ``server`` (routes, start-up), ``auth`` (basic auth), ``config`` (web config),
  ``landing`` (the ``/`` page), ``runbooks`` (``/runbooks``);
- ``simulator/`` a simulated primary and mirror farm for the demo and the tests.
"""

__version__ = "0.1.0"
