"""From a validated scenario to a concrete plan: who owns which endpoint, and the chaos timeline.

Both runtimes run the same plan, so the sim and ray runtimes agree on placement of endpoints in
domains, SMMUs and device-actor groups, and on which endpoint each chaos step hits (selectors are
drawn once, here, with the scenario seed).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from ats_stress.iommu_actor.host import DomainSpec, NodeSpec

from .config import Scenario


@dataclass(frozen=True)
class ChaosAction:
    """One thing to do at ``at``: ``phase`` is "start" or "end" of chaos step ``step``."""

    at: float
    step: int
    phase: str
    fault: str
    sids: tuple[int, ...]
    params: dict


@dataclass(frozen=True)
class GroupSpec:
    index: int
    endpoints: tuple[tuple[int, int], ...]  # (sid, asid)


@dataclass
class Plan:
    scenario: Scenario
    nodes: list[NodeSpec]
    groups: list[GroupSpec]
    actions: list[ChaosAction]
    sid_node: dict[int, int]
    sid_group: dict[int, int]
    sid_asid: dict[int, int]
    fault_starts: dict[int, list[float]] = field(default_factory=dict)
    step_targets: list[tuple[int, ...]] = field(default_factory=list)
    #: workload.trace: what the runtime replays in place of the synthetic unmaps (trace.py), and
    #: what scanning the file found
    trace: Any = None
    trace_info: Any = None

    @property
    def seed(self) -> str:
        return str(self.scenario.seed)


def _span(i: int, n: int, parts: int) -> range:
    return range(i * n // parts, (i + 1) * n // parts)


def placement(top) -> tuple[dict[int, int], dict[int, int], list[list[tuple[int, list[int]]]]]:
    """Endpoints and domains split evenly over the SMMUs, each SMMU's endpoints dealt round-robin
    into its domains: (SMMU of each SID, domain of each SID, each SMMU's (domain, SIDs))."""
    sid_node: dict[int, int] = {}
    sid_asid: dict[int, int] = {}
    node_domains: list[list[tuple[int, list[int]]]] = []
    for s in range(top.smmus):
        eps = list(_span(s, top.endpoints, top.smmus))
        doms = list(_span(s, top.domains, top.smmus))
        members: dict[int, list[int]] = {d: [] for d in doms}
        for i, sid in enumerate(eps):
            asid = doms[i % len(doms)]
            members[asid].append(sid)
            sid_node[sid] = s
            sid_asid[sid] = asid
        node_domains.append([(d, members[d]) for d in doms])
    return sid_node, sid_asid, node_domains


def step_pool(step, sid_node: dict[int, int], sid_asid: dict[int, int], endpoints: int) -> list[int]:
    """The endpoints a chaos step draws from: its list (or all), narrowed to its SMMU and domain."""
    pool = list(range(endpoints)) if step.endpoints is None else list(step.endpoints)
    if step.smmu is not None:
        pool = [e for e in pool if sid_node[e] == step.smmu]
    if step.domain is not None:
        pool = [e for e in pool if sid_asid[e] == step.domain]
    return pool


def build_plan(sc: Scenario) -> Plan:
    top = sc.topology
    seed = str(sc.seed)
    sid_node, sid_asid, node_domains = placement(top)

    groups = []
    sid_group: dict[int, int] = {}
    per = top.endpoints_per_actor
    for g, start in enumerate(range(0, top.endpoints, per)):
        members = tuple((sid, sid_asid[sid]) for sid in range(start, min(start + per, top.endpoints)))
        for sid, _ in members:
            sid_group[sid] = g
        groups.append(GroupSpec(g, members))

    # chaos selectors, drawn with the seed
    rng = random.Random(f"{seed}:chaos")
    actions: list[ChaosAction] = []
    step_targets: list[tuple[int, ...]] = []
    fault_starts: dict[int, list[float]] = {}

    def select(step, pool: list[int], fraction: float | None) -> list[int]:
        if step.count is not None:
            return sorted(rng.sample(pool, min(step.count, len(pool))))
        if fraction is not None:
            return sorted(rng.sample(pool, max(1, round(fraction * len(pool))) if pool else 0))
        return sorted(set(pool))

    def emit(i: int, step, at: float, sids: list[int], end: float | None) -> None:
        if step.probability < 1.0:
            sids = [e for e in sids if rng.random() < step.probability]
        if step.fault == "kill_actor":  # the whole actor dies, with every endpoint it hosts
            hit = {sid_group[e] for e in sids}
            sids = [sid for g in sorted(hit) for sid, _ in groups[g].endpoints]
        if not sids or at >= sc.duration:
            return
        params = step.params()
        actions.append(ChaosAction(at, i, "start", step.fault, tuple(sids), params))
        if end is not None and end < sc.duration:
            actions.append(ChaosAction(end, i, "end", step.fault, tuple(sids), params))
        if step.fault != "reset" or not params.get("ok", True):
            for sid in sids:
                fault_starts.setdefault(sid, []).append(at)
        targets.update(sids)

    for i, step in enumerate(sc.chaos):
        targets: set[int] = set()
        if step.fault == "storm":
            smmus = [step.smmu] if step.smmu is not None else list(range(top.smmus))
            times = step.repeat.times if step.repeat else 1
            every = step.repeat.every if step.repeat else 0.0
            for k in range(times):
                at = step.at + k * every
                if at >= sc.duration:
                    break
                params = {"factor": step.factor, "smmus": smmus}
                actions.append(ChaosAction(at, i, "start", "storm", (), params))
                if at + step.duration < sc.duration:
                    actions.append(ChaosAction(at + step.duration, i, "end", "storm", (), params))
            step_targets.append(())
            continue
        pool = step_pool(step, sid_node, sid_asid, top.endpoints)
        if step.ramp is not None:
            order = rng.sample(pool, len(pool))  # one draw: each stage adds the next endpoints
            end = None if step.duration is None else step.at + step.duration
            done = 0
            for k in range(step.ramp.stages):
                frac = step.fraction + (step.ramp.to - step.fraction) * k / (step.ramp.stages - 1)
                upto = max(1, round(frac * len(order)))
                emit(i, step, step.at + k * step.ramp.every, sorted(order[done:upto]), end)
                done = max(done, upto)
        else:
            times = step.repeat.times if step.repeat else 1
            every = step.repeat.every if step.repeat else 0.0
            for k in range(times):
                at = step.at + k * every
                end = None if step.duration is None else at + step.duration
                emit(i, step, at, select(step, pool, step.fraction), end)
        step_targets.append(tuple(sorted(targets)))
    actions.sort(key=lambda a: (a.at, a.step, a.phase != "end"))

    affected_asids = {sid_asid[s] for targets in step_targets for s in targets}
    flush = sc.flush_mode()
    trace = trace_info = None
    unmaps_per_s = sc.workload.unmaps_per_s / top.smmus
    if sc.workload.trace is not None:  # the trace's unmaps replace the synthetic Poisson process
        from .trace import build_spec

        trace, trace_info = build_spec(sc)
        unmaps_per_s = 0.0
    cmdq_entries = sc.hardware.cmdq_entries or sc.policy_class().cmdq_entries(sc.policy_params())
    irq_cpu = -1 if sc.host.gerror_irq_cpu == "idle" else sc.host.gerror_irq_cpu
    nodes = []
    for s in range(top.smmus):
        doms = tuple(DomainSpec(asid, tuple(sids), asid in affected_asids) for asid, sids in node_domains[s])
        nodes.append(NodeSpec(
            index=s, domains=doms, cpus=top.cpus, command_queues=sc.hardware.command_queues,
            invalidate_queue_depth=top.invalidate_queue_depth,
            atc_inv_completion_timeout=sc.hardware.atc_inv_completion_timeout,
            pages_per_domain=top.pages_per_domain, spare_pages=top.spare_pages,
            unmaps_per_s=unmaps_per_s, seed=seed, tag_stride=top.smmus, flush=flush,
            cmdq_entries=cmdq_entries, gerror_irq_cpu=irq_cpu))

    return Plan(sc, nodes, groups, actions, sid_node, sid_group, sid_asid, fault_starts, step_targets, trace,
                trace_info)



def last_fault_end(sc: Scenario) -> float | None:
    """When the last chaos fault of ``sc`` ends: from then on nothing the scenario does changes any
    more (0 with no chaos). A fault with no duration (a device removed or hung for good, an actor
    killed) changes nothing after it begins, so it counts from its start; a ``reset`` ends with its
    FLR (``at`` + ``hardware.flr_time``: a failed one leaves the device dead from then on). None when a
    fault is still going on at the end of the run. Times as written (selectors play no part)."""
    last = 0.0
    for step in sc.chaos:
        if step.fault == "storm" or step.ramp is None:
            times = step.repeat.times if step.repeat else 1
            every = step.repeat.every if step.repeat else 0.0
            starts = [step.at + k * every for k in range(times)]
            ends = [None if step.duration is None else s + step.duration for s in starts]
        else:  # every stage of a ramp ends together (build_plan)
            starts = [step.at + k * step.ramp.every for k in range(step.ramp.stages)]
            ends = [None if step.duration is None else step.at + step.duration] * len(starts)
        for start, end in zip(starts, ends):
            if start >= sc.duration:
                continue  # never happens
            if step.fault == "reset":
                end = start + sc.hardware.flr_time
            elif end is None:
                end = start
            if end >= sc.duration:
                return None
            last = max(last, end)
    return last
