"""The exporter's own HTTP side:

- ``server``: ``Server`` (start-up, TLS), the routes (``/metrics``, ``/``, ``/runbooks``, ``/-/healthy``,
  ``/-/ready``, ``POST /-/reload``) and the basic-auth middleware, around ``Served`` (what they serve);
- ``auth``: ``BasicAuth``, bcrypt checks off the event loop;
- ``config``: ``WebConfig``, the exporter-toolkit web config (TLS, basic auth users);
- ``landing`` and ``runbooks``: the two HTML pages.
"""
