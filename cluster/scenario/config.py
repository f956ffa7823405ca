"""Scenario format v1: the typed scenario (topology, hardware, policy, workload, chaos, expect).

``Scenario`` validates a whole scenario; a mistake becomes one paragraph through
``loading.format_validation_error``. Loading files (``extends:``, ``--set``) is ``loading.py``;
the chaos step models are ``chaos.py``. Nothing here runs anything.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ats_stress.iommu_actor.policy import PolicyError, validate_params
from ats_stress.iommu_actor.spec import ARM_SMMU_CMDQ_MIN_ENTRIES
from ats_stress.iommu_actor.suggest import did_you_mean
from ats_stress.iommu_actor.units import Duration, parse_duration

from .chaos import ChaosStep
from .explore import Explore
from .fields import MAX_COUNT, Bound, Latency, ScenarioError, Strict

__all__ = ["Scenario", "ScenarioError", "EXPECTABLE", "Bound", "Topology", "Hardware", "Workload", "Host",
           "PolicySpec", "Runtime", "Latency", "MAX_COUNT"]


class Topology(Strict):
    smmus: int = Field(1, ge=1, le=256)
    endpoints: int = Field(256, ge=1, le=1_000_000)
    domains: int = Field(16, ge=1, le=1_000_000)
    cpus: int = Field(8, ge=1, le=4096)
    invalidate_queue_depth: int = Field(32, ge=1, le=32, description="ATS Invalidate Queue Depth (0 encodes 32)")
    atc_entries: int = Field(512, ge=1, le=MAX_COUNT)
    endpoints_per_actor: int = Field(64, ge=1, le=100_000)
    pages_per_domain: int = Field(64, ge=1, le=1 << 20)
    spare_pages: int = Field(256, ge=0, le=MAX_COUNT, description="free pages beyond the mapped ones")

    @model_validator(mode="after")
    def _consistent(self):
        if self.domains > self.endpoints:
            raise ValueError(f"domains ({self.domains}) cannot exceed endpoints ({self.endpoints}): "
                             "every domain needs at least one endpoint")
        if self.smmus > self.domains:
            raise ValueError(f"smmus ({self.smmus}) cannot exceed domains ({self.domains}): "
                             "every SMMU needs at least one domain")
        for s in range(self.smmus):
            eps = (s + 1) * self.endpoints // self.smmus - s * self.endpoints // self.smmus
            doms = (s + 1) * self.domains // self.smmus - s * self.domains // self.smmus
            if doms > eps:
                raise ValueError(f"SMMU {s} would get {doms} domains but only {eps} endpoints; "
                                 "use fewer domains or more endpoints")
        return self


class Hardware(Strict):
    atc_inv_completion_timeout: Duration = Field(60.0, gt=0, description="hardware ATC invalidation completion timeout")
    command_queues: int = Field(1, ge=1, le=4096, description="1: classic CMDQ; more: ECMDQ/CMDQV, one per CPU")
    link_latency: Duration = Field(1e-6, ge=0, le=1.0, description="one-way PCIe latency (sim runtime)")
    flr_time: Duration = Field(0.1, gt=0, description="function-level reset duration")
    cmdq_entries: Optional[int] = Field(
        None, ge=ARM_SMMU_CMDQ_MIN_ENTRIES, le=1 << 19, description=(
            "entries per command queue; null: the driver's own (arm-smmu-v3 65,536: IDR1.CMDQS 19 capped by "
            "Linux's CMDQ_MAX_SZ_SHIFT 16; AMD's 512-entry command buffer; VT-d's 256-descriptor QI)"))


class Workload(Strict):
    unmaps_per_s: float = Field(2000.0, ge=0, le=MAX_COUNT)
    dma_per_endpoint_per_s: float = Field(50.0, ge=0, le=MAX_COUNT)
    inv_latency: Latency = Field(default_factory=lambda: Latency(median=5e-6, p99=50e-6))
    # a recorded trace in place of the synthetic unmap process (cluster/scenario/trace.py)
    trace: Optional[str] = Field(None, min_length=1, max_length=4096, description=(
        "a text trace of the kernel's iommu unmap (and map) events (raw ftrace, trace-cmd report or perf script) "
        "replayed in place of unmaps_per_s; relative to the scenario file"))
    trace_speed: float = Field(1.0, gt=0, le=1000, description="replay speed: 2.0 plays the trace twice as fast")
    trace_loop: bool = Field(False, description="repeat the trace until the end of the run")
    trace_domains: dict[str, int] = Field(default_factory=dict, description=(
        "task (or dev=) name pattern (fnmatch) -> domain id, for unmaps whose line has no domain=N"))

    @field_validator("unmaps_per_s", "dma_per_endpoint_per_s")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v

    @model_validator(mode="after")
    def _trace_keys_need_a_trace(self):
        if self.trace is None:
            given = [k for k, v in (("trace_speed", self.trace_speed != 1.0), ("trace_loop", self.trace_loop),
                                    ("trace_domains", bool(self.trace_domains))) if v]
            if given:
                raise ValueError(f"workload.{given[0]}: applies to a replayed trace; set workload.trace too")
        for pattern, dom in self.trace_domains.items():
            if not pattern or dom < 0:
                raise ValueError(f"workload.trace_domains: {pattern!r}: {dom} is not a domain id (0 or more)")
        return self


class PolicySpec(BaseModel):
    """``name`` plus that policy's own parameters (checked against the policy's schema)."""

    model_config = ConfigDict(extra="allow")
    name: str = "arm-smmu-v3"

    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class Host(Strict):
    """The host's software around the driver."""

    flush: Literal["strict", "lazy", "default"] = Field(
        "default", description="strict: every unmap flushed before it returns; lazy: dma-iommu's flush queue "
        "(256 IOVAs per CPU, one flush of the domain after 10 ms or when a CPU's queue is full); default: the "
        "Kconfig default of the driver's architecture (lazy on x86: amd-iommu, intel-vtd; strict on arm64)")
    gerror_irq_cpu: Union[int, Literal["idle"]] = Field(
        0, description="the CPU the IOMMU's error and event interrupts are routed to (GERROR, the event queue, "
        "AMD's event log, CMDQV's queue errors): taken only when that CPU's interrupts are on, so a CPU spinning "
        "in a flush with interrupts off takes it only after its own poll; 'idle': a CPU that runs no flushes "
        "(the interrupt is taken at once, the best case)")

    @field_validator("gerror_irq_cpu")
    @classmethod
    def _cpu(cls, v):
        if isinstance(v, int) and not isinstance(v, bool) and v < 0:
            raise ValueError("a CPU number is 0 or more (or 'idle')")
        return v


class Runtime(Strict):
    time_scale: float = Field(1.0, gt=0, le=1000, description="ray runtime: wall seconds per scenario second")
    transport: Literal["stream", "ray"] = Field(
        "stream", description="ray runtime: how batches travel between actors: 'stream', one TCP connection per "
        "actor pair set up through Ray, or 'ray', one Ray actor call per batch")


# --- expectations ------------------------------------------------------------------------------

#: figure name -> (summary path, is a duration)
EXPECTABLE: dict[str, tuple[tuple[str, ...], bool]] = {
    "uaf_exposures": (("uaf_exposures",), False),
    "uaf_reallocated": (("uaf_reallocated",), False),
    "healthy_unmap_latency_p50": (("healthy_unmap_latency_s", "p50"), True),
    "healthy_unmap_latency_p99": (("healthy_unmap_latency_s", "p99"), True),
    "healthy_unmap_latency_max": (("healthy_unmap_latency_s", "max"), True),
    "unmap_latency_p99": (("unmaps", "latency_s", "p99"), True),
    "unmap_latency_max": (("unmaps", "latency_s", "max"), True),
    "unmaps_completed": (("unmaps", "count"), False),
    "unmaps_incomplete": (("unmaps", "incomplete"), False),
    "progress_max": (("progress", "max_s"), True),
    "sync_timeouts": (("sync_timeouts",), False),
    "hw_atc_timeouts": (("hw_atc_timeouts",), False),
    "fences": (("fence_count",), False),
    "fenced_healthy": (("fenced_healthy",), False),
    "unfences": (("unfence_count",), False),
    "translated_blocked": (("translated_blocked",), False),
    "fence_latency_max": (("fence_latency_s", "max"), True),
    "fence_after_sync_max": (("fence_latency_s", "after_sync_max"), True),
    "recovery_time_max": (("recovery_s", "max"), True),
    "lockup_s": (("lockup_s",), True),
    "irqs_off_max": (("irqs_off_max_s",), True),
    "lockup_max": (("irqs_off_max_s",), True),  # the name irqs_off_max had before windows were per call
    "flush_max": (("flush_max_s",), True),
    "gerror_irq_delay_max": (("gerror_irq_delay_max_s",), True),
    "cmdq_full_waits": (("cmdq_full_waits",), False),
    "lazy_window_dma": (("lazy_window_dma",), False),
    "flushes": (("flush", "flushes"), False),
    "iovas_per_flush": (("flush", "iovas_per_flush"), False),
    "commands_per_unmap": (("commands_per_unmap",), False),
    "syncs_per_unmap": (("syncs_per_unmap",), False),
}


#: between the problems of one check across fields (``Scenario._steps_fit``): loading.py says each
PROBLEMS_SEP = "\n"


def known_figures(v: Any) -> Any:
    """An ``expect:`` mapping's figure names checked (also ``explore.expect``)."""
    if not isinstance(v, dict):
        return v  # pydantic says what it should be
    unknown = sorted(set(map(str, v)) - set(EXPECTABLE))
    if unknown:
        raise ValueError(f"unknown figure {', '.join(unknown)}; {did_you_mean(unknown[0], EXPECTABLE)}"
                         "figures that can be bounded: "
                         f"{', '.join(sorted(EXPECTABLE))}")
    for name, bound in v.items():  # a count bounded by a duration ('5ms') is a slip, not 0.005
        if not EXPECTABLE[name][1] and isinstance(bound, dict):
            for side in ("min", "max"):
                if isinstance(bound.get(side), str):
                    raise ValueError(f"{name}.{side}: {name} is a count, not a duration: give a number, "
                                     f"not {bound[side]!r}")
    return v


class Scenario(Strict):
    name: str = Field(min_length=1, max_length=120, pattern=r"^[A-Za-z0-9][A-Za-z0-9._ -]*$")
    description: str = ""
    seed: int = Field(0, ge=0, le=2**63 - 1)
    duration: Duration = Field(gt=0)
    topology: Topology = Field(default_factory=Topology)
    hardware: Hardware = Field(default_factory=Hardware)
    policy: PolicySpec = Field(default_factory=PolicySpec)
    workload: Workload = Field(default_factory=Workload)
    host: Host = Field(default_factory=Host)
    runtime: Runtime = Field(default_factory=Runtime)
    chaos: list[ChaosStep] = Field(default_factory=list)
    expect: dict[str, Bound] = Field(default_factory=dict)
    explore: Optional[Explore] = Field(None, description="ats-stress explore: the fault grammar (cluster/scenario/explore.py)")

    @field_validator("expect", mode="before")
    @classmethod
    def _known_figures(cls, v: Any) -> Any:
        return known_figures(v)

    def policy_class(self):
        from ats_stress.iommu_actor.policy import get_policy

        return get_policy(self.policy.name)

    def policy_params(self):
        return validate_params(self.policy.name, self.policy.params())

    def flush_mode(self) -> str:
        """``host.flush`` resolved: strict or lazy (default: the policy's Kconfig default)."""
        if self.host.flush != "default":
            return self.host.flush
        return self.policy_class().kconfig_flush(self.policy_params())

    @model_validator(mode="after")
    def _steps_fit(self):
        """The checks across fields; every problem is said, one a line (split again by loading.py)."""
        problems: list[str] = []
        top = self.topology
        irq_cpu = self.host.gerror_irq_cpu
        if irq_cpu != "idle" and irq_cpu >= top.cpus:
            problems.append(f"host.gerror_irq_cpu: no CPU {irq_cpu} (topology.cpus is {top.cpus}: CPUs 0..{top.cpus - 1}, "
                            "or 'idle')")
        for name, bound in self.expect.items():
            late = [t for t in bound.at if t <= 0 or t >= self.duration]
            if late:
                problems.append(f"expect.{name}.at: {late[0]:g} s is not inside the run (0 to {self.duration:g} s, exclusive)")
        layout = None  # the placement, worked out once if a step needs it
        for i, step in enumerate(self.chaos):
            where = f"chaos.{i}"
            if step.at >= self.duration:
                problems.append(f"{where}.at: {step.at:g} s is not before the end of the run "
                                f"(duration {self.duration:g} s)")
            if step.fault == "storm":
                if self.workload.trace is not None:
                    problems.append(f"{where}: storm multiplies the synthetic unmap rate, and workload.trace replaces "
                                    "it; to replay the trace faster use workload.trace_speed")
                if step.smmu is not None and step.smmu >= top.smmus:
                    problems.append(f"{where}.smmu: no SMMU {step.smmu} (ids are 0..{top.smmus - 1})")
                continue
            if step.endpoints:
                bad = [e for e in step.endpoints if e >= top.endpoints]
                if bad:
                    problems.append(f"{where}.endpoints: no endpoint {bad[0]} (ids are 0..{top.endpoints - 1})")
            if step.domain is not None and step.domain >= top.domains:
                problems.append(f"{where}.domain: no domain {step.domain} (ids are 0..{top.domains - 1})")
            if step.smmu is not None and step.smmu >= top.smmus:
                problems.append(f"{where}.smmu: no SMMU {step.smmu} (ids are 0..{top.smmus - 1})")
            if step.count is not None and step.count > top.endpoints:
                problems.append(f"{where}.count: {step.count} is more than the {top.endpoints} endpoints")
            in_range = ((step.smmu is None or step.smmu < top.smmus)
                        and (step.domain is None or step.domain < top.domains))
            if in_range and (step.smmu is not None or step.domain is not None):  # selectors that narrow each other
                from .plan import placement, step_pool

                layout = layout or placement(top)
                pool = step_pool(step, layout[0], layout[1], top.endpoints)
                said = ", ".join(f"{k} {v}" for k, v in (("smmu", step.smmu), ("domain", step.domain))
                                 if v is not None)
                if not pool:
                    problems.append(f"{where}: selects no endpoint: none of its endpoints is on {said} (domains "
                                    "and endpoints are split evenly over the SMMUs)")
                if step.count is not None and step.count > len(pool):
                    problems.append(f"{where}.count: {step.count} is more than the {len(pool)} endpoint(s) on {said}")
        for pattern, dom in self.workload.trace_domains.items():
            if dom >= top.domains:
                problems.append(f"workload.trace_domains: {pattern!r} maps to domain {dom}, but there are "
                                f"{top.domains} domains (0..{top.domains - 1})")
        try:
            validate_params(self.policy.name, self.policy.params())
        except PolicyError as exc:
            msg = str(exc)
            problems.append(f"policy.name: {msg}" if msg.startswith("unknown policy") else msg)
        if problems:
            raise ValueError(PROBLEMS_SEP.join(problems))
        return self
