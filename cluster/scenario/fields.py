"""Shared pieces of the scenario schema: the strict model base, latency distributions, limits."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ats_stress.iommu_actor.units import Duration

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
