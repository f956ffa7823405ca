"""The optional ``explore:`` section: the fault grammar ``ats-stress explore`` draws chaos schedules from.

Ranges are ``[min, max]``; durations, latencies and periods are drawn log-uniformly (a hang of 10 ms
and one of 10 s are equally likely to be tried), counts and fractions uniformly.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, field_validator

from ats_stress.iommu_actor.units import Duration

from .fields import Strict

ExploreFault = Literal["hang", "slow", "flap", "drop", "lie", "itag_leak", "removed", "reset"]
#: every endpoint fault but ``lie``: a device that answers without invalidating defeats every
#: policy by construction (nothing a driver sees tells it apart), so it would be every policy's
#: first finding; list it in ``explore.faults`` to include it
DEFAULT_FAULTS: tuple[str, ...] = ("hang", "slow", "flap", "drop", "itag_leak", "removed", "reset")


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
