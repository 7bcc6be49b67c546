"""The JMX source: mirror node figures (sync timers, hosting tickets), read with jmxquery or from jmx_exporter pages.

``config`` (the ``jmx`` block), ``query`` (jmxquery in a JVM), ``exporter_text`` (jmx_exporter pages), ``reading``
(what a node's beans say), ``state`` (``JmxState``), ``poller`` (a fleet of node loops per mirror), ``collector``."""
