"""Prometheus exporter for Atlassian Bitbucket Data Center smart mirrors and mirror farms.

The map (docs/architecture.md draws it, with the import rules tests/unit/test_architecture.py checks):

- the composition root: ``app`` (the one module that knows every source: ``Settings``, ``ExporterState``,
  ``MirrorFarmCollector``, ``Polling``, ``Exporter``); entry points ``cli``, ``demo`` and ``__main__``;
- the core, which imports no source: ``config`` (the core's configuration and loading), ``strict`` (the strict
  configuration base), ``secret_files`` (passwords from files), ``tls`` (TLS contexts), ``reloading`` (the reload
  outcome and its gauges), ``logs`` (logfmt), ``sources`` (``FetchError``, ``SourceState``, ``run_source``, the poll
  loop, the freshness rule, the health families), ``supervisor`` (one TaskGroup, fleets of targets), ``workers``
  (worker processes for CPU-bound work), ``state`` (the rendering ``Policy``), ``drift`` (the pure comparison and
  lag), ``urls`` (URL checks), ``node_targets`` (a farm's nodes), ``processes`` (child processes with a time limit),
  ``steps`` (long work on the event loop in steps of bounded time), ``shards`` (a large mapping built on the loop
  without a long step),
  ``external_url`` (``--web.external-url``, the base of the links written) and ``web/`` (the exporter's HTTP side);
- the sources, each with its config, state, poller(s) and collector: ``rest/`` (Bitbucket's REST API), ``jmx/``
  (mirror nodes over JMX), ``git/`` (git reference mirrors and verify_refs), ``webhooks/`` (push-to-sync and the CI
  gate);
- ``simulator/`` a simulated primary and mirror farm for the demo and the tests.
"""

__version__ = "0.1.0"
