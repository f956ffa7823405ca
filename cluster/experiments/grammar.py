"""Drawing explore's variants: the scenario's topology and workload with a chaos schedule from its grammar.

Variant ``i`` of explore seed ``s`` depends on nothing else (``random.Random(f"explore:{s}:{i}")``
and the scenario), so any worker can draw it and a sharded search finds what a serial one finds.
Uniform draws are rounded (times to the millisecond, the rest to 3 significant digits) so minimal
scenarios read well.

Boundary sampling: a share ``explore.boundary`` of the draws of a fault's duration, a slow device's
latency and a flap's hang lands at the edge of one of the protocol's clocks ``c`` (``clocks.py``: the
policy's timeouts, the hardware's ATC timeout and reset time, the flush-queue timer): ``c x (1 +- e)``
for ``e`` in ``EPSILONS``, or ``c +- k`` microseconds for ``k`` in ``MICROS``. The same share of the
steps after the first start right after the previous one (its start or its end), a few microseconds
later or a clock's edge later: two faults around one CMD_SYNC. Those values are kept to the
microsecond.
"""

from __future__ import annotations

import math
import random
from typing import Any, Sequence

from ats_stress.cluster.scenario import Scenario, ScenarioError
from ats_stress.cluster.scenario.explore import Explore

#: relative distances from a clock that boundary draws land at (either side)
EPSILONS = (1e-3, 1e-2, 1e-1)
#: absolute distances in microseconds (either side): a completion a few us before or after a timer
MICROS = (1, 2, 5, 10, 20, 50)


def nice(x: float) -> float:
    """3 significant digits."""
    return float(f"{x:.3g}")


def ms(x: float) -> float:
    return round(x, 3)


def us(x: float) -> float:
    """To the microsecond (a boundary value: its few microseconds are the point)."""
    return round(x, 6)


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


def edge(rng: random.Random, c: float) -> float:
    """A value at the edge of clock ``c``: ``c x (1 +- e)`` or ``c +- k us``."""
    sign = rng.choice((-1, 1))
    kind = rng.randrange(len(EPSILONS) + 1)
    if kind < len(EPSILONS):
        return us(c * (1 + sign * EPSILONS[kind]))
    return us(c + sign * rng.choice(MICROS) * 1e-6)


def _at_edge(rng: random.Random, edges: Sequence[float], lo: float, hi: float) -> float | None:
    """A boundary value inside [lo, hi] near a clock inside it, or None when no clock is."""
    near = [c for c in edges if lo <= c <= hi]
    if not near:
        return None
    c = rng.choice(near)
    v = edge(rng, c)
    if not lo <= v <= hi:  # the other side of the clock fits (a clock at the range's end)
        v = us(2 * c - v)
    return v if lo <= v <= hi and v > 0 else us(c)


def _draw(rng: random.Random, g: Explore, edges: Sequence[float], lo: float, hi: float) -> float:
    """A duration in [lo, hi]: at a clock's edge (a share ``g.boundary``) or log-uniform, 3 digits."""
    if rng.random() < g.boundary:
        v = _at_edge(rng, edges, lo, hi)
        if v is not None:
            return v
    return nice(_log_uniform(rng, lo, hi))


def _start(rng: random.Random, g: Explore, edges: Sequence[float], prev: dict | None, lo: float,
           hi: float) -> float:
    """When a step starts: uniform in [lo, hi], or (a share ``g.boundary`` of the steps after the
    first) right after the previous step's start or end, a few microseconds or a clock's edge later."""
    if prev is not None and rng.random() < g.boundary:
        anchor = prev["at"] + (prev.get("duration", 0.0) if rng.random() < 0.5 else 0.0)
        gap = rng.choice(MICROS) * 1e-6
        if rng.random() < 0.5 and edges:
            c = rng.choice(edges)
            gap = edge(rng, c) if c > 1e-3 else gap  # a clock's edge later (a link latency is a few us already)
        at = us(anchor + gap)
        if lo <= at <= hi:
            return at
    return ms(rng.uniform(lo, hi))


def draw_step(rng: random.Random, g: Explore, endpoints: int, duration: float, edges: Sequence[float] = (),
              prev: dict | None = None) -> dict[str, Any]:
    """One chaos step. A fault's duration is drawn first (from ``fault_duration``, at most what the
    run leaves), then its start, so that it ends ``settle`` before the end of the run."""
    last = duration - g.settle
    lo, hi = g.at if g.at is not None else (0.0, last)
    hi = min(hi, last)
    fault = rng.choice(g.faults)
    k = min(rng.randint(*g.endpoints), endpoints)
    targets = sorted(rng.sample(range(endpoints), k))
    if fault == "reset":
        return {"at": _start(rng, g, edges, prev, lo, hi), "fault": fault, "endpoints": targets,
                "ok": rng.random() >= g.reset_fails}
    longest = max(0.001, last - lo)
    span = _draw(rng, g, edges, min(g.fault_duration[0], longest), min(g.fault_duration[1], longest))
    step: dict[str, Any] = {"at": _start(rng, g, edges, prev, lo, max(lo, min(hi, last - span))), "fault": fault,
                            "endpoints": targets, "duration": max(0.001, span)}
    if fault == "slow":
        median = _draw(rng, g, edges, *g.latency)
        step["latency"] = {"median": median, "p99": float(f"{4 * median:.7g}")}
    elif fault == "flap":
        if rng.random() < g.boundary and (hang := _at_edge(rng, edges, 0.2 * g.flap_period[0],
                                                            0.8 * g.flap_period[1])) is not None:
            share = rng.uniform(0.2, 0.8)  # the hang is at the edge; the period follows from it
            step["period"] = us(min(max(hang / share, g.flap_period[0]), g.flap_period[1]))
            step["hang_for"] = min(hang, us(0.8 * step["period"]))
        else:
            period = nice(_log_uniform(rng, *g.flap_period))
            step["period"] = period
            step["hang_for"] = nice(period * rng.uniform(0.2, 0.8))
    elif fault == "drop":
        step["loss"] = nice(rng.uniform(*g.loss))
    elif fault == "itag_leak":
        step["tags"] = rng.randint(*g.tags)
    return step


def draw_variant(base: dict, g: Explore, seed: int, index: int, edges: Sequence[float] = ()) -> dict:
    """Variant ``index``: ``base`` (a scenario dump) with its own run seed and a drawn chaos schedule;
    ``edges``: the scenario's clocks (``clocks.clocks``) for boundary draws."""
    rng = random.Random(f"explore:{seed}:{index}")
    data = dict(base)
    data["seed"] = rng.getrandbits(31)
    endpoints, duration = base["topology"]["endpoints"], base["duration"]
    steps: list[dict] = []
    for _ in range(rng.randint(*g.steps)):
        steps.append(draw_step(rng, g, endpoints, duration, edges, steps[-1] if steps else None))
    data["chaos"] = sorted(steps, key=lambda s: s["at"])
    return data
