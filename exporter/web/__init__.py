"""The exporter's own HTTP side:

- ``server``: ``Server`` (start-up, TLS), the routes (``/metrics``, ``/``, ``/runbooks``, ``/-/healthy``,
  ``/-/ready``, ``POST /-/reload``) and the basic-auth middleware, around ``Served`` (what they serve);
- ``scrape_thread``: ``ScrapeThreads``, which accept every connection, answer plain scrapes of /metrics on threads of
  their own and hand everything else, unread, to aiohttp on the event loop;
- ``exposition``: ``Exposition``, the renderings the event loop keeps fresh, lag lines written at each scrape;
- ``auth``: ``BasicAuth``, bcrypt checks off the event loop;
- ``config``: ``WebConfig``, the exporter-toolkit web config (TLS, basic auth users);
- ``landing`` and ``runbooks``: the two HTML pages.
"""
