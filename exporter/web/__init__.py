"""The exporter's own HTTP side (core: it reads the state through ``server.Pages``, never a source's types):

- ``server``: ``Server`` (start-up, TLS), the routes (``/metrics``, ``/``, ``/runbooks``, ``/-/healthy``,
  ``/-/ready``, ``POST /-/reload``, the CI gate, ``/api/v1/refs``, ``/api/v1/behind``, ``/probe/node``) and the
  basic-auth middleware, around ``Served``; aiohttp alone parses HTTP, with the connection cap and the pause when
  descriptors run out;
- ``exposition``: ``Exposition``, the renderings the event loop keeps at most a second old;
- ``protocol``: aiohttp's request handler with a deadline for a request's head; ``refusals``: what was refused;
- ``auth``: ``BasicAuth``, bcrypt checks off the event loop;
- ``config``: ``WebConfig``, the exporter-toolkit web config (TLS, basic auth users);
- ``landing`` and ``runbooks``: the two HTML pages;
- ``probe``: ``ProbePolicy`` and the rate limit of ``/probe/node``, the load balancers' node check.
"""
