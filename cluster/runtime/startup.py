"""Start-up of a live run: the actors, their stream links, the round trip and the transport ceiling.

A command queue is consumed in order and a CMD_SYNC waits for its devices, so a queue retires at
most one CMD_SYNC per round trip between the SMMU actor and a device actor: the runtime carries
at most ``time_scale / round_trip`` syncs per scenario second per queue. ``transport_ceiling``
turns a measured round trip into that ceiling and the scenario's demand (at the policy's
CMD_SYNCs per unmap, from a short sim probe); ``Startup.measure`` warns when the scenario asks
for more. ``Startup`` is mixed into ``LiveRun`` (``ray_runtime.py``).
"""

from __future__ import annotations

import math
import secrets
import time
from typing import Any

from ats_stress.cluster.results.sampler import SAMPLE_EVERY
from ats_stress.cluster.results.summary import percentile
from ats_stress.cluster.scenario import Scenario

from .connect import RuntimeInputError, last_line, remote, say as _say

#: device actors ask for this much CPU (so hundreds fit on 2 cores, and a head started with
#: --num-cpus=0 hosts none); SMMU actors ask for none
DEVICE_NUM_CPUS = 0.01
#: start-up round trips measured per (SMMU actor, device actor) pair
RTT_SAMPLES = 20


def policy_timeout(sc: Scenario) -> float:
    """The software timeout that turns a late device into a verdict (scenario s): the policy's
    CMD_SYNC timeout, or the hardware ATC completion timeout when the policy has none (VT-d)."""
    from ats_stress.iommu_actor.policy import HwInfo, make_policy

    pol = make_policy(sc.policy.name, sc.policy.params(),
                      HwInfo(sc.hardware.command_queues, sc.topology.cpus, sc.topology.invalidate_queue_depth))
    t = getattr(pol, "sync_timeout", None)
    if callable(t):
        t = t()
    if t is None:
        hooks = getattr(pol, "hooks", None)
        t = getattr(hooks, "sync_timeout", None)
    return float(t) if t else float(sc.hardware.atc_inv_completion_timeout)


def probe_syncs_per_unmap(sc: Scenario) -> float | None:
    """The policy's CMD_SYNCs per unmap on this scenario without faults, from a short sim run."""
    from ats_stress.cluster.scenario.trace import offered_rate

    rate = offered_rate(sc)
    if rate <= 0:
        return None
    from .sim import run_sim

    dur = min(sc.duration, 1.0, max(0.05, 400.0 / rate))
    probe = sc.model_copy(update={"chaos": [], "expect": {}, "duration": dur})
    s = run_sim(probe)
    return s["syncs_per_unmap"]


def transport_ceiling(sc: Scenario, rtt_wall: float, spu: float | None) -> dict[str, Any]:
    top = sc.topology
    scale = sc.runtime.time_scale
    active = min(top.cpus, sc.hardware.command_queues)  # CPU c submits to queue c mod n
    per_queue = scale / rtt_wall if rtt_wall > 0 else math.inf  # syncs per scenario second
    total = per_queue * active * top.smmus
    from ats_stress.cluster.scenario.trace import offered_rate

    demand_unmaps = offered_rate(sc)  # a replayed trace: its mean rate (bursts go above it)
    unmaps = total / spu if spu else None
    demand_syncs = demand_unmaps * spu if spu else 0.0
    return {
        "round_trip_scenario_s": rtt_wall / scale,
        "syncs_per_s_per_queue": per_queue,
        "queues_in_use_per_smmu": active,
        "syncs_per_s": total,
        "syncs_per_unmap": spu,
        "unmaps_per_s": unmaps,
        "demand_unmaps_per_s": demand_unmaps,
        "demand_syncs_per_s": demand_syncs,
        "load": (demand_syncs / total) if total and math.isfinite(total) else 0.0,
    }


def _knobs() -> str:
    return ("raise runtime.time_scale (e.g. --set runtime.time_scale=N), lower workload.unmaps_per_s / "
            "workload.dma_per_endpoint_per_s, or spread the load over more hardware.command_queues or "
            "topology.smmus")


#: a run's verdicts are not trusted when transport lag reaches this fraction of the policy's
#: software timeout (scenario s)
STALL_FRACTION = 0.25
#: consecutive ~3 s windows of live load above the ceiling that make a run saturated
SUSTAINED = 3


class _Actor:
    __slots__ = ("kind", "index", "handle", "info", "alive", "endpoints", "last", "lost_cause")

    def __init__(self, kind: str, index: int, handle, endpoints: list[int]):
        self.kind = kind
        self.index = index
        self.handle = handle
        self.info: dict[str, Any] = {}
        self.alive = True
        self.endpoints = endpoints
        self.last: dict[str, Any] | None = None  # latest progress()
        self.lost_cause: str | None = None



class Startup:
    """Creating the actors, connecting them, measuring the round trip, starting the clocks."""

    def create(self) -> None:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from ats_stress.device_actors.actor import DeviceActor
        from ats_stress.iommu_actor.actor import SmmuActor

        sc, plan = self.sc, self.plan
        try:
            self.driver_node = ray.get_runtime_context().get_node_id()
        except Exception:
            self.driver_node = None
        smmu_opts: dict[str, Any] = {"num_cpus": 0, "max_restarts": 0, "max_concurrency": 1000}
        if self.driver_node:
            smmu_opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(self.driver_node, soft=False)
        smmu_opts.update(self.smmu_options)
        dev_opts: dict[str, Any] = {"num_cpus": DEVICE_NUM_CPUS, "max_restarts": 0, "max_concurrency": 1000,
                                    "scheduling_strategy": "SPREAD"}
        dev_opts.update(self.device_options)
        self.stage(f"placing {len(plan.nodes) + len(plan.groups)} actors: {len(plan.nodes)} SMMU, "
                   f"{len(plan.groups)} device ({sc.topology.endpoints} endpoints)")
        SmmuCls = remote(SmmuActor, **smmu_opts)
        DevCls = remote(DeviceActor, **dev_opts)
        hw = {"command_queues": sc.hardware.command_queues, "cpus": sc.topology.cpus,
              "invalidate_queue_depth": sc.topology.invalidate_queue_depth}
        from ats_stress.cluster.results.sampler import new_run_id

        base = {"run": new_run_id(sc), "scenario": sc.name, "policy": sc.policy.name}
        for spec in plan.nodes:
            sids = set(spec.sids)
            group_sids: dict[int, list[int]] = {}
            for sid in spec.sids:
                group_sids.setdefault(plan.sid_group[sid], []).append(sid)
            h = SmmuCls.remote(spec, sc.policy.name, sc.policy.params(), hw,
                               {s: t for s, t in plan.fault_starts.items() if s in sids},
                               dict(plan.sid_group), group_sids, sc.hardware.flr_time,
                               metrics_bind=self.metrics_bind,
                               labels={**base, "kind": "smmu", "index": str(spec.index)}, plugins=self.plugins,
                               trace=plan.trace)
            self.smmus.append(_Actor("smmu", spec.index, h, sorted(sids)))
        lat = sc.workload.inv_latency
        gkw = {"atc_entries": sc.topology.atc_entries, "pages_per_domain": sc.topology.pages_per_domain,
               "dma_per_endpoint_per_s": sc.workload.dma_per_endpoint_per_s,
               "inv_latency_median": lat.median, "inv_latency_p99": lat.p99,
               "flr_time": sc.hardware.flr_time, "seed": plan.seed}
        for g in plan.groups:
            sid_node = {sid: plan.sid_node[sid] for sid, _ in g.endpoints}
            h = DevCls.remote(g.index, [list(e) for e in g.endpoints], gkw, sid_node,
                              metrics_bind=self.metrics_bind,
                              labels={**base, "kind": "device", "index": str(g.index)})
            self.devices.append(_Actor("device", g.index, h, [sid for sid, _ in g.endpoints]))
        self._await_ready()
        dev_handles = [d.handle for d in self.devices]
        smmu_handles = [s.handle for s in self.smmus]
        self.stage(f"connecting the actors ({sc.runtime.transport} transport)")
        if sc.runtime.transport == "stream":
            # every actor listens on its node; each then opens one TCP connection per peer, and
            # batches travel as frames on it instead of one Ray call each (cluster/runtime/stream.py)
            token = secrets.token_bytes(16)
            addrs = self._get([a.handle.listen.remote(token) for a in self.smmus + self.devices], 60,
                              "listen (the stream transport)")
            smmu_addrs, dev_addrs = addrs[:len(self.smmus)], addrs[len(self.smmus):]
            self._get([s.handle.connect.remote(dev_handles, dev_addrs, token) for s in self.smmus]
                      + [d.handle.connect.remote(smmu_handles, smmu_addrs, token) for d in self.devices], 60,
                      "connect (the stream transport: every actor must reach the other actors' nodes on any "
                      "TCP port; where a firewall forbids it, set runtime.transport: ray)")
        else:
            self._get([s.handle.connect.remote(dev_handles) for s in self.smmus]
                      + [d.handle.connect.remote(smmu_handles) for d in self.devices], 60, "connect")

    def _await_ready(self) -> None:
        import ray
        from ray.exceptions import RayActorError

        everyone = self.smmus + self.devices
        refs = {a.handle.ready.remote(): a for a in everyone}
        deadline = time.time() + self.startup_timeout
        pending = list(refs)
        while pending:
            left = deadline - time.time()
            done, pending = ray.wait(pending, num_returns=len(pending), timeout=max(0.0, left))
            for ref in done:
                a = refs[ref]
                try:
                    a.info = ray.get(ref)
                except (RayActorError, Exception) as exc:
                    cause = last_line(exc)
                    self.kill_all()
                    raise RuntimeInputError(
                        f"the {a.kind} actor {a.index} could not start ({cause}). The project must be "
                        "importable on every node of the cluster (install it in the image or the "
                        "`ray up` setup commands, or submit with `ray job submit --working-dir .`), and "
                        "a metrics bind address must be free.") from None
            if pending and time.time() >= deadline:
                a = refs[pending[0]]
                self.kill_all()
                opts = self.device_options if a.kind == "device" else self.smmu_options
                raise RuntimeInputError(
                    f"{len(pending)} of {len(refs)} actors (first: the {a.kind} actor {a.index}) did not start "
                    f"within {self.startup_timeout:g} s. The cluster may lack the resources they ask for "
                    f"(device actors: num_cpus={opts.get('num_cpus', DEVICE_NUM_CPUS)} each, plus "
                    f"{opts.get('resources') or 'no custom resources'}), or its nodes cannot start workers; "
                    "check `ray status` and the raylet logs.") from None

    def _get(self, refs, timeout: float, what: str):
        import ray

        try:
            return ray.get(refs, timeout=timeout)
        except Exception as exc:
            self.kill_all()
            raise RuntimeInputError(f"the actors failed during {what} ({last_line(exc)}); the cluster "
                                    "may be overloaded or losing nodes (check `ray status`).") from None

    def measure(self, spu: float | None) -> None:
        sample = [(1, 0, 3, 1000, 0)] * 16  # a downstream batch of 16 Invalidate Requests
        per = max(3, RTT_SAMPLES // max(1, len(self.smmus)))
        # warm every pair once, then measure
        self._get([s.handle.measure_rtt.remote(1, sample) for s in self.smmus], 60, "the round-trip warm-up")
        res = self._get([s.handle.measure_rtt.remote(per, sample) for s in self.smmus], 120,
                        "the round-trip measurement")
        self.rtt = sorted(x for r in res for x in r)
        p50 = percentile(self.rtt, 0.5) or 0.0
        self.ceiling = transport_ceiling(self.sc, p50, spu)
        c = self.ceiling
        if c["load"] > 1.0:
            need = self.scale * c["load"] * 1.25
            self._warn(
                f"transport floor: the SMMU<->device-actor round trip is {p50 * 1e3:.2f} ms wall "
                f"({c['round_trip_scenario_s'] * 1e3:.3f} ms scenario at time_scale {self.scale:g}), so a "
                f"queue retires at most {c['syncs_per_s_per_queue']:.0f} CMD_SYNC/s; this scenario asks for "
                f"{c['demand_syncs_per_s']:.0f} syncs/s over {c['queues_in_use_per_smmu']} queue(s) x "
                f"{self.sc.topology.smmus} SMMU(s) ({c['syncs_per_unmap']:.3g} syncs per unmap), "
                f"{c['load']:.1f}x what the live runtime can carry. Unmaps will queue up behind the "
                f"transport, not behind devices; {_knobs()} (time_scale {need:.3g} at the very least: the round "
                f"trip grows under load, and the end of the run says what it measured).")
        p99 = percentile(self.rtt, 0.99) or 0.0
        if p99 / self.scale > self.stall_budget:
            self._warn(
                f"transport floor: a round trip ({p99 * 1e3:.1f} ms wall p99) is {p99 / self.scale:.3g} s of "
                f"scenario time, beyond {STALL_FRACTION:g} x the policy's software timeout "
                f"({self.stall_budget / STALL_FRACTION:g} s): transport delay could pass for a late device. "
                f"{_knobs()}.")

    def _warn(self, text: str) -> None:
        self.warnings.append(text)
        _say(f"warning: {text}")

    # running --------------------------------------------------------------------------------------

    def start(self) -> None:
        lead = 1.0 + 0.02 * (len(self.smmus) + len(self.devices))
        self.t0 = time.time() + lead
        dev_actions: dict[int, dict] = {}
        smmu_actions: dict[int, list] = {}
        for a in self.plan.actions:
            if a.fault in ("kill_actor", "kill_node"):
                continue
            row = (a.at, a.step, a.phase, a.fault, a.sids, a.params)
            if a.fault == "storm":  # the host's unmap rate: the SMMU actors' side
                for s in a.params["smmus"]:
                    smmu_actions.setdefault(s, []).append(row)
            elif a.fault == "reset":  # pci_reset_function: the host's reset path, on the SMMU actor
                for sid in a.sids:
                    smmu_actions.setdefault(self.plan.sid_node[sid], []).append(row[:4] + ((sid,), a.params))
            else:
                for sid in a.sids:
                    dev_actions.setdefault(self.plan.sid_group[sid], {}).setdefault(id(a), (a, []))[1].append(sid)
        every = SAMPLE_EVERY if self.sampler is not None else None
        refs = [s.handle.start.remote(self.t0, self.scale, self.sc.duration, smmu_actions.get(s.index, []), every)
                for s in self.smmus]
        for d in self.devices:
            acts = [(a.at, a.step, a.phase, a.fault, tuple(sids), a.params)
                    for a, sids in dev_actions.get(d.index, {}).values()]
            refs.append(d.handle.start.remote(self.t0, self.scale, self.sc.duration, acts, every))
        self._get(refs, 60, "start")
        if time.time() > self.t0:
            self._warn(f"the actors were told to start {time.time() - self.t0:.2f} s wall late; "
                       "the first timers fire late")
