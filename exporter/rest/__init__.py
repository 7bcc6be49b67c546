"""The Bitbucket REST source, one module per step of a poll:

- ``config``: its section (``lag``); ``state``: ``FarmState`` (the primary, each mirror and node, source by source);
- ``client``: ``BitbucketClient``, one aiohttp session with retries, paging, size caps and clock readings;
- ``api``: ``MirrorApi`` and ``PrimaryApi``, the mirroring endpoints of both API families (8.x nested, 9.x flat);
- ``models`` and ``listings``: tolerant pydantic models of every answer, and fast msgspec decoders for the two
  listings that grow with the repository count;
- ``feed`` and ``listing_work``: a listing's page bytes on their way to a worker process, and what the worker does
  with them (decode and keep by page, compare with the primary's, the farm's union);
- ``poller``: ``MirrorPoller`` and ``PrimaryPoller``, one poll cycle per target, drift included; ``nodes``: each farm
  node read at its own URL, and the mirror's union; ``push_dating``: each divergence dated from its push;
  ``polling``: ``RestPolling``, every REST loop of one configuration on one grid, discovery included;
- ``collector``: the REST families from the latest state; ``landing``: the landing page's rows; ``behind``: the
  repositories whose content lags longest (``/api/v1/behind``); ``probe``: a node's verdict for a load balancer
  (``/probe/node``).
"""
