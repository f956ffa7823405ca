"""Chaos steps of a scenario: one pydantic model per fault, discriminated on ``fault``."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import Field, model_validator

from ats_stress.iommu_actor.units import Duration, format_duration as _s

from .fields import MAX_COUNT, Latency, Strict

class Repeat(Strict):
    every: Duration = Field(gt=0)
    times: int = Field(ge=1, le=10_000, description="how many times in all, the first included")


class Ramp(Strict):
    to: float = Field(gt=0, le=1, description="the fraction reached at the last stage")
    stages: int = Field(ge=2, le=1000)
    every: Duration = Field(gt=0)


class _Step(Strict):
    at: Duration
    endpoints: Optional[list[Annotated[int, Field(ge=0)]]] = None
    count: Optional[int] = Field(None, ge=1, le=MAX_COUNT)
    fraction: Optional[float] = Field(None, gt=0, le=1)
    domain: Optional[int] = Field(None, ge=0)
    smmu: Optional[int] = Field(None, ge=0)
    probability: float = Field(1.0, ge=0, le=1, description="each selected endpoint is hit with this probability")
    duration: Optional[Duration] = Field(None, gt=0)
    recover_on_reset: bool = Field(True, description="an FLR during this fault brings the device back")
    repeat: Optional[Repeat] = Field(None, description="run the step again every `every`, `times` times in all "
                                     "(selectors are drawn anew each time)")
    ramp: Optional[Ramp] = Field(None, description="grow `fraction` to `ramp.to` in `stages` stages, one every "
                                 "`ramp.every`; endpoints hit early stay hit")

    @model_validator(mode="after")
    def _one_selector(self):
        if self.ramp is not None:
            if self.fraction is None:
                raise ValueError("ramp: needs fraction: (the starting fraction)")
            if self.ramp.to < self.fraction:
                raise ValueError(f"ramp.to ({self.ramp.to:g}) must not be below fraction ({self.fraction:g})")
            if self.repeat is not None:
                raise ValueError("give either repeat or ramp, not both")
            last = self.ramp.every * (self.ramp.stages - 1)
            if self.duration is not None and self.duration <= last:
                raise ValueError(f"duration ({_s(self.duration)}) ends the step before its last ramp stage starts "
                                 f"({_s(last)} after at: ramp.every x (stages - 1)); every stage ends at at + "
                                 "duration, so make duration longer")
        if self.repeat is not None and self.duration is not None and self.duration >= self.repeat.every:
            raise ValueError(f"duration ({_s(self.duration)}) must be shorter than repeat.every "
                             f"({_s(self.repeat.every)}): one occurrence must end before the next starts")
        explicit = self.endpoints is not None
        if explicit and (self.count is not None or self.fraction is not None):
            raise ValueError("give either endpoints: [ids] or count/fraction, not both")
        if self.count is not None and self.fraction is not None:
            raise ValueError("give either count or fraction, not both")
        if not explicit and self.count is None and self.fraction is None and self.domain is None and self.smmu is None:
            raise ValueError("a step needs a target: endpoints: [ids], count: N, fraction: F, domain: D or smmu: S")
        if explicit and not self.endpoints:
            raise ValueError("endpoints: [] selects nothing")
        return self

    def params(self) -> dict[str, Any]:
        return {"recover_on_reset": self.recover_on_reset}


class HangStep(_Step):
    fault: Literal["hang"]


class SlowStep(_Step):
    fault: Literal["slow"]
    latency: Latency

    def params(self):
        return {**super().params(), "latency": {"median": self.latency.median, "p99": self.latency.p99}}


class FlapStep(_Step):
    fault: Literal["flap"]
    period: Duration = Field(gt=0)
    hang_for: Duration = Field(gt=0)

    @model_validator(mode="after")
    def _hang_shorter_than_period(self):
        if self.hang_for >= self.period:
            raise ValueError(f"hang_for ({self.hang_for:g} s) must be shorter than period ({self.period:g} s)")
        return self

    def params(self):
        return {**super().params(), "period": self.period, "hang_for": self.hang_for}


class DropStep(_Step):
    fault: Literal["drop"]
    loss: float = Field(gt=0, le=1, description="fraction of Invalidate Completions lost")

    def params(self):
        return {**super().params(), "fraction": self.loss}


class LieStep(_Step):
    fault: Literal["lie"]


class ItagLeakStep(_Step):
    fault: Literal["itag_leak"]
    tags: int = Field(ge=1, le=32, description="how many ITags never complete")

    def params(self):
        return {**super().params(), "tags": self.tags}


class RemovedStep(_Step):
    fault: Literal["removed"]


class ResetStep(_Step):
    fault: Literal["reset"]
    ok: bool = Field(True, description="whether the device comes back from the FLR")

    @model_validator(mode="after")
    def _no_duration(self):
        if self.duration is not None:
            raise ValueError("a reset has no duration (it takes hardware.flr_time)")
        return self

    def params(self):
        return {"ok": self.ok}


class StormStep(Strict):
    """An invalidation storm: the unmap rate of the selected SMMUs (all by default) is multiplied
    by ``factor`` for ``duration``."""

    fault: Literal["storm"]
    at: Duration
    duration: Duration = Field(gt=0)
    factor: float = Field(gt=1, le=1000)
    smmu: Optional[int] = Field(None, ge=0)
    repeat: Optional[Repeat] = None

    def params(self) -> dict[str, Any]:
        return {"factor": self.factor}


class KillActorStep(_Step):
    """Ray-level fault: the device actors hosting the selected endpoints die (surprise removal)."""

    fault: Literal["kill_actor"]


class KillNodeStep(_Step):
    """Ray-level fault: the cluster node hosting the selected endpoints' actors dies."""

    fault: Literal["kill_node"]


ChaosStep = Annotated[
    Union[HangStep, SlowStep, FlapStep, DropStep, LieStep, ItagLeakStep, RemovedStep, ResetStep,
          StormStep, KillActorStep, KillNodeStep],
    Field(discriminator="fault"),
]
FAULTS = ("hang", "slow", "flap", "drop", "lie", "itag_leak", "removed", "reset", "storm", "kill_actor",
          "kill_node")
