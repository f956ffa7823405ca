"""The optional ``explore:`` section: the fault grammar ``ats-stress explore`` draws chaos schedules from.

Ranges are ``[min, max]``; durations, latencies and periods are drawn log-uniformly (a hang of 10 ms
and one of 10 s are equally likely to be tried), counts and fractions uniformly, except for a share
(``boundary``) of durations and gaps, drawn at the protocol's clocks (``experiments/clocks.py``) times
(1 +- a small epsilon) or a few microseconds either side of one, and of steps placed a few
microseconds (or a clock) after the previous one: recovery bugs live at those edges. ``expect``
holds bounds every variant must keep, lower bounds included (the scenario's own ``min`` bounds say
what its own chaos must cause, and explore replaces that chaos).
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import Field, field_validator

from ats_stress.iommu_actor.units import Duration

from .fields import Bound, Strict

ExploreFault = Literal["hang", "slow", "flap", "drop", "lie", "itag_leak", "removed", "reset"]
#: every endpoint fault. ``lie`` (a device that answers without invalidating) defeats every policy by
#: construction: nothing a driver sees tells it apart. Its findings are real, and the report says
#: plainly when one needs a lying device.
DEFAULT_FAULTS: tuple[str, ...] = ("hang", "slow", "flap", "drop", "lie", "itag_leak", "removed", "reset")
#: the share of durations and gaps drawn at a clock's edge
DEFAULT_BOUNDARY = 0.3


class Explore(Strict):
    faults: list[ExploreFault] = Field(default_factory=lambda: list(DEFAULT_FAULTS), min_length=1)
    steps: tuple[int, int] = Field((1, 4), description="chaos steps per variant")
    endpoints: tuple[int, int] = Field((1, 2), description="endpoints each step hits")
    at: Optional[tuple[Duration, Duration]] = Field(None, description="when steps start (default: from 0 to the "
                                                    "end of the run less settle)")
    fault_duration: tuple[Duration, Duration] = Field((0.01, 20.0), description="how long a fault lasts")
    settle: Duration = Field(2.0, description="every fault ends at least this long before the end of the run")
    latency: tuple[Duration, Duration] = Field((0.001, 2.0), description="slow: the median (p99 = 4 x median)")
    loss: tuple[float, float] = Field((0.05, 1.0), description="drop: the fraction of completions lost")
    flap_period: tuple[Duration, Duration] = Field((0.01, 2.0), description="flap: period (hang_for 20-80% of it)")
    tags: tuple[int, int] = Field((1, 32), description="itag_leak: ITags that never complete")
    reset_fails: float = Field(0.2, ge=0, le=1, description="reset: the probability that the device does not come back")
    boundary: float = Field(DEFAULT_BOUNDARY, ge=0, le=1, description=(
        "the share of durations, latencies and gaps between steps drawn at the edge of a clock of the policy or "
        "the hardware (c x (1 +- 1e-3, 1e-2, 1e-1) or c +- a few us), and of steps placed a few us after the "
        "previous one; 0: every draw uniform"))
    expect: dict[str, Bound] = Field(default_factory=dict, description=(
        "bounds every variant must keep (min, max or both; checked as expect.FIGURE), beside the scenario's "
        "own upper bounds"))

    @field_validator("expect", mode="before")
    @classmethod
    def _figures(cls, v: Any) -> Any:
        from .config import known_figures

        return known_figures(v)

    @field_validator("steps", "endpoints", "tags", "at", "fault_duration", "latency", "loss", "flap_period")
    @classmethod
    def _ordered(cls, v, info):
        if v is None:
            return v
        lo, hi = v
        limits = {"steps": (1, 50), "endpoints": (1, 1000), "tags": (1, 32), "loss": (0.0, 1.0)}
        if info.field_name in limits:
            least, most = limits[info.field_name]
            if lo < least or hi > most or (info.field_name == "loss" and lo <= 0):
                raise ValueError(f"[{lo:g}, {hi:g}] is outside {'(' if info.field_name == 'loss' else '['}"
                                 f"{least:g}, {most:g}]")
        elif info.field_name != "at" and lo <= 0:
            raise ValueError(f"the lower end ({lo:g} s) must be above 0")
        if lo > hi:
            raise ValueError(f"write [min, max]: {lo:g} is above {hi:g}")
        return v
