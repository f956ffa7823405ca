"""Scenario format v1: YAML validated into typed objects; every mistake becomes one paragraph.

``load_scenario(path, sets)`` reads a file (following ``extends:``), applies ``--set a.b=value``
overrides, validates it, and raises ``ScenarioError`` with a message that names the file, the field
path and what is allowed. Nothing here runs anything.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from iommu_actor.policy import PolicyError, get_policy, validate_params
from iommu_actor.units import Duration, parse_duration

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


class Workload(Strict):
    unmaps_per_s: float = Field(2000.0, ge=0, le=MAX_COUNT)
    dma_per_endpoint_per_s: float = Field(50.0, ge=0, le=MAX_COUNT)
    inv_latency: Latency = Field(default_factory=lambda: Latency(median=5e-6, p99=50e-6))

    @field_validator("unmaps_per_s", "dma_per_endpoint_per_s")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v


class PolicySpec(BaseModel):
    """``name`` plus that policy's own parameters (checked against the policy's schema)."""

    model_config = ConfigDict(extra="allow")
    name: str = "arm-smmu-v3"

    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class Runtime(Strict):
    time_scale: float = Field(1.0, gt=0, le=1000, description="ray runtime: wall seconds per scenario second")
    transport: Literal["stream", "ray"] = Field(
        "stream", description="ray runtime: how batches travel between actors: 'stream', one TCP connection per "
        "actor pair set up through Ray, or 'ray', one Ray actor call per batch")


# --- chaos steps ---------------------------------------------------------------------------


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
    "commands_per_unmap": (("commands_per_unmap",), False),
    "syncs_per_unmap": (("syncs_per_unmap",), False),
}


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


class Scenario(Strict):
    name: str = Field(min_length=1, max_length=120, pattern=r"^[A-Za-z0-9][A-Za-z0-9._ -]*$")
    description: str = ""
    seed: int = Field(0, ge=0, le=2**63 - 1)
    duration: Duration = Field(gt=0)
    topology: Topology = Field(default_factory=Topology)
    hardware: Hardware = Field(default_factory=Hardware)
    policy: PolicySpec = Field(default_factory=PolicySpec)
    workload: Workload = Field(default_factory=Workload)
    runtime: Runtime = Field(default_factory=Runtime)
    chaos: list[ChaosStep] = Field(default_factory=list)
    expect: dict[str, Bound] = Field(default_factory=dict)

    @field_validator("expect")
    @classmethod
    def _known_figures(cls, v: dict[str, Bound]) -> dict[str, Bound]:
        unknown = sorted(set(v) - set(EXPECTABLE))
        if unknown:
            raise ValueError(f"unknown figure {', '.join(unknown)}; figures that can be bounded: "
                             f"{', '.join(sorted(EXPECTABLE))}")
        return v

    @model_validator(mode="after")
    def _steps_fit(self):
        top = self.topology
        for name, bound in self.expect.items():
            late = [t for t in bound.at if t <= 0 or t >= self.duration]
            if late:
                raise ValueError(f"expect.{name}.at: {late[0]:g} s is not inside the run (0 to {self.duration:g} s, exclusive)")
        for i, step in enumerate(self.chaos):
            where = f"chaos.{i}"
            if step.at >= self.duration:
                raise ValueError(f"{where}.at: {step.at:g} s is not before the end of the run "
                                 f"(duration {self.duration:g} s)")
            if step.fault == "storm":
                if step.smmu is not None and step.smmu >= top.smmus:
                    raise ValueError(f"{where}.smmu: no SMMU {step.smmu} (ids are 0..{top.smmus - 1})")
                continue
            if step.endpoints:
                bad = [e for e in step.endpoints if e >= top.endpoints]
                if bad:
                    raise ValueError(f"{where}.endpoints: no endpoint {bad[0]} (ids are 0..{top.endpoints - 1})")
            if step.domain is not None and step.domain >= top.domains:
                raise ValueError(f"{where}.domain: no domain {step.domain} (ids are 0..{top.domains - 1})")
            if step.smmu is not None and step.smmu >= top.smmus:
                raise ValueError(f"{where}.smmu: no SMMU {step.smmu} (ids are 0..{top.smmus - 1})")
            if step.count is not None and step.count > top.endpoints:
                raise ValueError(f"{where}.count: {step.count} is more than the {top.endpoints} endpoints")
        try:
            validate_params(self.policy.name, self.policy.params())
        except PolicyError as exc:
            msg = str(exc)
            raise ValueError(f"policy.name: {msg}" if msg.startswith("unknown policy") else msg) from None
        return self


# --- loading -----------------------------------------------------------------------------------

MAX_FILE_BYTES = 4 * 1024 * 1024
MAX_EXTENDS_DEPTH = 16


def _read_yaml(path: Path) -> dict:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ScenarioError(f"{path}: no such file. Give the path of a scenario YAML file "
                            "(the library is in configs/scenarios/).") from None
    except IsADirectoryError:
        raise ScenarioError(f"{path}: is a directory, not a scenario file.") from None
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot be read ({exc.strerror}).") from None
    if len(raw) > MAX_FILE_BYTES:
        raise ScenarioError(f"{path}: {len(raw)} bytes is too large for a scenario (limit {MAX_FILE_BYTES}).")
    if b"\x00" in raw:
        raise ScenarioError(f"{path}: is a binary file, not a YAML scenario.")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ScenarioError(f"{path}: is not UTF-8 text; a scenario is a YAML file.") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ScenarioError(f"{path}: is not valid YAML{where}: {problem}.") from None
    if data is None:
        raise ScenarioError(f"{path}: is empty; a scenario needs at least name and duration.")
    if not isinstance(data, dict):
        raise ScenarioError(f"{path}: the top level must be a mapping (name: ..., duration: ...), "
                            f"not a {type(data).__name__}.")
    return data


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _load_tree(path: Path, chain: tuple[Path, ...]) -> dict:
    resolved = path.resolve()
    if resolved in chain:
        cycle = " -> ".join(str(p) for p in chain + (resolved,))
        raise ScenarioError(f"{chain[0]}: extends: forms a cycle ({cycle}).")
    if len(chain) >= MAX_EXTENDS_DEPTH:
        raise ScenarioError(f"{chain[0]}: extends: nests deeper than {MAX_EXTENDS_DEPTH} files.")
    data = _read_yaml(path)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str) or not parent:
        raise ScenarioError(f"{path}: extends: must be the path of another scenario file (relative to this one).")
    parent_path = path.parent / parent
    if not parent_path.is_file():
        raise ScenarioError(f"{path}: extends: {parent!r} is not a scenario file (looked for {parent_path}); "
                            "the path is relative to the file that extends it.")
    base = _load_tree(parent_path, chain + (resolved,))
    return _merge(base, data)


def _parse_set(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ScenarioError(f"--set {item!r}: write --set key.path=value, for example --set policy.sync_timeout=100ms.")
    key, _, value = item.partition("=")
    parts = key.strip().split(".")
    if not all(parts):
        raise ScenarioError(f"--set {item!r}: the key path {key!r} has an empty part.")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return parts, parsed


def apply_sets(data: dict, sets: list[str]) -> dict:
    for item in sets:
        parts, value = _parse_set(item)
        node: Any = data
        for i, part in enumerate(parts[:-1]):
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ScenarioError(f"--set {item!r}: {'.'.join(parts[:i + 1])} is not an index of the list.")
                node = node[int(part)]
            else:
                if not isinstance(node, dict):
                    raise ScenarioError(f"--set {item!r}: {'.'.join(parts[:i])} is not a mapping.")
                node = node.setdefault(part, {})
        last = parts[-1]
        if isinstance(node, list):
            if not last.isdigit() or int(last) >= len(node):
                raise ScenarioError(f"--set {item!r}: {last} is not an index of the list.")
            node[int(last)] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise ScenarioError(f"--set {item!r}: {'.'.join(parts[:-1])} is not a mapping.")
    return data


def _loc(loc: tuple) -> str:
    # pydantic puts the union tag in the path (chaos.0.hang.at): drop it
    parts = [str(p) for p in loc if not (isinstance(p, str) and p in FAULTS)]
    return ".".join(parts) or "(top level)"


def format_validation_error(source: str, exc: ValidationError) -> str:
    problems = []
    for e in exc.errors():
        msg = e["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "union_tag_invalid":
            msg = f"unknown fault; faults are {', '.join(FAULTS)}"
        elif e["type"] == "union_tag_not_found":
            msg = f"a chaos step needs fault: one of {', '.join(FAULTS)}"
        elif e["type"] == "missing":
            msg = "required field is missing"
        loc = _loc(e["loc"])
        problems.append(msg if loc == "(top level)" else f"{loc}: {msg}")
    return f"{source}: invalid scenario: " + "; ".join(problems) + "."


def scenario_from_dict(data: dict, source: str = "<scenario>") -> Scenario:
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        raise ScenarioError(format_validation_error(source, exc)) from None


def load_scenario(path: str | Path, sets: list[str] | None = None, *, policy: str | None = None,
                  seed: int | None = None) -> Scenario:
    """Read, extend, override and validate a scenario; ScenarioError on anything wrong.

    ``policy`` replaces policy.name and keeps only the parameters the new policy has (so a
    scenario written for one policy can be replayed under another); ``seed`` replaces the seed.
    ``sets`` (``key.path=value``) apply last.
    """
    path = Path(path)
    data = _load_tree(path, ())
    if policy is not None:
        try:
            known = get_policy(policy).Params.model_fields
        except PolicyError as exc:
            raise ScenarioError(f"--policy: {exc}.") from None
        old = data.get("policy") if isinstance(data.get("policy"), dict) else {}
        data["policy"] = {"name": policy, **{k: v for k, v in old.items() if k in known}}
    if seed is not None:
        data["seed"] = seed
    data = apply_sets(data, list(sets or []))
    return scenario_from_dict(data, str(path))
