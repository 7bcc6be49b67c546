"""A simulated Bitbucket primary and mirror farm, so the exporter can be run and tested without Bitbucket."""

from exporter.simulator.farm import Farm, Scenario
from exporter.simulator.runner import SimulatedFarm

__all__ = ["Farm", "Scenario", "SimulatedFarm"]
