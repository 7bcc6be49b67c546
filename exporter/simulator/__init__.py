"""A simulated Bitbucket primary and mirror farm, so the exporter can be run and tested without Bitbucket.

``farm`` (the state: repositories, mirrors, nodes, pushes), ``server`` (the aiohttp apps of the primary and each
mirror and node), ``runner`` (``SimulatedFarm``: starts them on loopback), ``accounts`` (credentials and the CAPTCHA
lock), ``jmx_text`` (jmx_exporter pages), ``webhook_api`` and ``webhook_target`` (the webhook REST API, deliveries
and the circuit breaker)."""

from exporter.simulator.farm import Farm, Scenario
from exporter.simulator.runner import SimulatedFarm

__all__ = ["Farm", "Scenario", "SimulatedFarm"]
