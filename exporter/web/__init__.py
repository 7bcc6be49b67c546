"""The exporter's own HTTP side (core: it reads the state through ``server.Pages``, never a source's types):

- ``server``: ``Server`` (start-up, TLS), the routes (``/metrics``, ``/``, ``/runbooks``, ``/-/healthy``,
  ``/-/ready``, ``POST /-/reload``, the CI gate, ``/api/v1/refs``) and the basic-auth middleware, around ``Served``;
- ``scrape_thread``: ``ScrapeThreads``, which accept every connection, answer plain scrapes of /metrics on threads of
  their own and hand everything else, unread, to aiohttp on the event loop;
- ``exposition``: ``Exposition``, the renderings the event loop keeps fresh, lag lines written at each scrape;
- ``protocol``: aiohttp's request handler with a deadline for a request's head; ``refusals``: what was refused;
- ``auth``: ``BasicAuth``, bcrypt checks off the event loop;
- ``config``: ``WebConfig``, the exporter-toolkit web config (TLS, basic auth users);
- ``landing`` and ``runbooks``: the two HTML pages.
"""
