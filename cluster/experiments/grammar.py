"""Drawing explore's variants: the scenario's topology and workload with a chaos schedule from its grammar.

Variant ``i`` of explore seed ``s`` depends on nothing else (``random.Random(f"explore:{s}:{i}")``),
so any worker can draw it and a sharded search finds what a serial one finds. Values are rounded
(times to the millisecond, the rest to 3 significant digits) so minimal scenarios read well.
"""

from __future__ import annotations

import math
import random
from typing import Any

from ats_stress.cluster.scenario import Scenario, ScenarioError
from ats_stress.cluster.scenario.explore import Explore


def nice(x: float) -> float:
    """3 significant digits."""
    return float(f"{x:.3g}")


def ms(x: float) -> float:
    return round(x, 3)


def _log_uniform(rng: random.Random, lo: float, hi: float) -> float:
    if hi <= lo:
        return hi
    return math.exp(rng.uniform(math.log(lo), math.log(hi)))


def grammar(sc: Scenario) -> Explore:
    """The scenario's grammar (defaults without an ``explore:`` section), checked against its duration."""
    g = sc.explore or Explore()
    last = sc.duration - g.settle
    if last <= 0:
        raise ScenarioError(f"explore.settle: {g.settle:g} s leaves no time for faults in a {sc.duration:g} s run; "
                            "use a smaller settle or a longer duration.")
    if g.at is not None and g.at[0] >= last:
        raise ScenarioError(f"explore.at: steps would start at {g.at[0]:g} s or later, but every fault must end "
                            f"by {last:g} s (duration less explore.settle).")
    return g


def draw_step(rng: random.Random, g: Explore, endpoints: int, duration: float) -> dict[str, Any]:
    last = duration - g.settle
    lo, hi = g.at if g.at is not None else (0.0, last)
    fault = rng.choice(g.faults)
    k = min(rng.randint(*g.endpoints), endpoints)
    step: dict[str, Any] = {"at": ms(rng.uniform(lo, min(hi, last))), "fault": fault,
                            "endpoints": sorted(rng.sample(range(endpoints), k))}
    if fault == "reset":
        step["ok"] = rng.random() >= g.reset_fails
        return step
    room = last - step["at"]
    step["duration"] = max(0.001, nice(min(_log_uniform(rng, g.fault_duration[0], min(g.fault_duration[1], room)),
                                           room)))
    if fault == "slow":
        median = nice(_log_uniform(rng, *g.latency))
        step["latency"] = {"median": median, "p99": nice(4 * median)}
    elif fault == "flap":
        period = nice(_log_uniform(rng, *g.flap_period))
        step["period"] = period
        step["hang_for"] = nice(period * rng.uniform(0.2, 0.8))
    elif fault == "drop":
        step["loss"] = nice(rng.uniform(*g.loss))
    elif fault == "itag_leak":
        step["tags"] = rng.randint(*g.tags)
    return step


def draw_variant(base: dict, g: Explore, seed: int, index: int) -> dict:
    """Variant ``index``: ``base`` (a scenario dump) with its own run seed and a drawn chaos schedule."""
    rng = random.Random(f"explore:{seed}:{index}")
    data = dict(base)
    data["seed"] = rng.getrandbits(31)
    endpoints, duration = base["topology"]["endpoints"], base["duration"]
    steps = [draw_step(rng, g, endpoints, duration) for _ in range(rng.randint(*g.steps))]
    data["chaos"] = sorted(steps, key=lambda s: s["at"])
    return data
