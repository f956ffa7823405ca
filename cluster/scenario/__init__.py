"""Scenarios: the YAML format (config, chaos steps), loading it, and the plan both runtimes run."""

from .chaos import FAULTS
from .config import EXPECTABLE, Scenario
from .fields import ScenarioError
from .loading import apply_sets, load_scenario, scenario_from_dict

__all__ = ["EXPECTABLE", "FAULTS", "Scenario", "ScenarioError", "apply_sets", "load_scenario", "scenario_from_dict"]
