"""Mirror node figures over JMX (sync timers, hosting tickets), read with jmxquery."""
