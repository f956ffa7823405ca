"""Shared pieces of the scenario schema: the strict model base, latency distributions, limits."""

from __future__ import annotations

import math
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ats_stress.iommu_actor.units import Duration, parse_duration

#: The largest number anywhere in a scenario (counts, rates): beyond it, a typo.
MAX_COUNT = 10_000_000


class ScenarioError(Exception):
    """A scenario that cannot run. The message is one paragraph for a person."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Latency(Strict):
    median: Duration = Field(gt=0)
    p99: Duration = Field(gt=0)

    @model_validator(mode="after")
    def _p99_not_below_median(self):
        if self.p99 < self.median:
            raise ValueError(f"p99 ({self.p99:g} s) must not be below median ({self.median:g} s)")
        return self


def _bound_value(v: Any) -> float:
    if isinstance(v, str):
        return parse_duration(v)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError("a bound is a finite number or a duration such as '50ms'")
    return float(v)


class Bound(Strict):
    min: Optional[float] = None
    max: Optional[float] = None
    at: list[Duration] = Field(default_factory=list, description="also check at these scenario times")

    @field_validator("min", "max", mode="before")
    @classmethod
    def _value(cls, v):
        return None if v is None else _bound_value(v)

    @model_validator(mode="after")
    def _some(self):
        if self.min is None and self.max is None:
            raise ValueError("a bound needs min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min:g}) is above max ({self.max:g})")
        return self
