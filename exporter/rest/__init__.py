"""The Bitbucket REST side, one module per step of a poll:

- ``client``: ``BitbucketClient``, one aiohttp session with retries, paging, size caps and clock readings;
- ``api``: ``MirrorApi`` and ``PrimaryApi``, the mirroring endpoints of both API families (8.x nested, 9.x flat);
- ``models`` and ``listings``: tolerant pydantic models of every answer, and fast msgspec decoders for the two
  listings that grow with the repository count;
- ``poller``: ``MirrorPoller`` and ``PrimaryPoller``, one poll cycle per target, drift included;
- ``collector``: ``MirrorFarmCollector``, the metric families rendered from the latest poll.
"""
