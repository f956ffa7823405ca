"""Time series of a run, sampled from the model on scenario time (for report.md, compare charts, metrics.om).

``RunSampler`` is the sim runtime's ``sample`` hook (``run_sim(sc, sample=...)``); every call
reads queue depth, endpoint states, fences and UAF counts from the live objects, and every
``om_every`` scenario seconds also snapshots the Prometheus metric families into an OpenMetrics
file. Unmap latencies come from ``SmmuNode.latency_trace`` (one point per completed unmap).
``compact_series`` reduces the samples to what the compare charts draw.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ats_stress.device_actors.endpoint import MODE_NAMES

from .metrics import OpenMetricsRecorder, device_families, run_labels, smmu_families, step_faults

#: scenario seconds between report samples on the sim runtime
SAMPLE_EVERY = 0.25


def new_run_id(sc, started: float | None = None) -> str:
    stamp = datetime.fromtimestamp(started or time.time(), tz=timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{sc.name}-{sc.policy.name}-{stamp}"


class RunSampler:
    """Time series of one run, read from the model on scenario time (the sim ``sample`` hook)."""

    def __init__(self, sc, run_id: str | None = None, start_wall: float | None = None,
                 om_every: float | None = 1.0, runtime: str = "sim"):
        self.sc = sc
        self.start_wall = time.time() if start_wall is None else start_wall
        self.run_id = run_id or new_run_id(sc, self.start_wall)
        self.runtime = runtime
        self.om = OpenMetricsRecorder(self.start_wall) if om_every else None
        self.om_every = om_every or 0.0
        self._next_om = 0.0
        self._steps = step_faults(sc)
        self.t: list[float] = []
        self.smmus: list[dict[str, list]] = []
        self.endpoints: dict[str, list[int]] = {m: [] for m in MODE_NAMES}
        self.chaos_active: list[int] = []
        self.step_targets: list[list[int]] | None = None
        self._nodes: list = []

    def __call__(self, t: float, world) -> None:
        if self.step_targets is None:
            self.step_targets = [sorted(s) for s in world.plan.step_targets]
        self.take(t, world.nodes, world.oracles, world.groups)

    def take(self, t: float, nodes, oracles, groups) -> None:
        self._nodes = list(nodes)
        self.t.append(t)
        if not self.smmus:
            self.smmus = [{"index": n.spec.index, "cmdq_depth": [], "cmdq_depth_max": [], "halted_queues": [],
                           "oldest_sync_s": [], "oldest_open_s": [], "fenced": [], "uaf": []} for n in nodes]
        for row, node, oracle in zip(self.smmus, nodes, oracles):
            depths = node.smmu.queue_depths()
            row["cmdq_depth"].append(sum(depths))
            row["cmdq_depth_max"].append(max(depths) if depths else 0)
            row["halted_queues"].append(sum(1 for q in node.smmu.queues if q.err != 0))
            row["oldest_sync_s"].append(node.smmu.oldest_sync_age(t))
            h, a = node.open_unmap_ages(t)
            row["oldest_open_s"].append(max(h + a, default=0.0))
            row["fenced"].append(len(oracle.fenced))
            row["uaf"].append(oracle.uaf_exposures)
        states = dict.fromkeys(MODE_NAMES, 0)
        active = set()
        for g in groups:
            for ep in g.eps:
                states[MODE_NAMES[ep.mode]] += 1
                if ep.step >= 0 and ep.mode != 0:
                    active.add(ep.step)
        for m in MODE_NAMES:
            self.endpoints[m].append(states[m])
        self.chaos_active.append(len(active))
        if self.om is not None and t + 1e-9 >= self._next_om:
            self._next_om = t + self.om_every
            ts = self.om.timestamp(t)
            base = run_labels(self.run_id, self.sc)
            for node, oracle in zip(nodes, oracles):
                self.om.add(smmu_families(node, oracle, {**base, "smmu": str(node.spec.index)}, t, ts))
            for g in groups:
                self.om.add(device_families(g, {**base, "group": str(g.index)}, t, ts, self._steps))

    def write_openmetrics(self, path) -> Path | None:
        return self.om.write(path) if self.om is not None else None

    def samples(self) -> dict[str, Any]:
        trace = sorted((p for n in self._nodes for p in n.latency_trace), key=lambda p: p[0])
        return {"run": self.run_id, "t": list(self.t), "smmus": self.smmus, "endpoints": self.endpoints,
                "chaos_active": self.chaos_active, "step_targets": self.step_targets or [],
                "latency_trace": [list(p) for p in trace]}




def compact_series(samples: dict) -> dict[str, list]:
    """The report's time series reduced to what the compare charts draw (small enough to pickle back
    from a worker): per sample step, the worst unmap latency completed or still open (healthy domains
    and all), queue depth, oldest pending CMD_SYNC, endpoints not healthy, fenced streams, UAF."""
    t = list(samples["t"])
    smmus = samples["smmus"]
    worst_h = [0.0] * len(t)
    worst_all = [0.0] * len(t)
    for when, lat, affected in samples["latency_trace"]:
        i = min(bisect_left(t, when), len(t) - 1)
        worst_all[i] = max(worst_all[i], lat)
        if not affected:
            worst_h[i] = max(worst_h[i], lat)
    oldest = [max(v) for v in zip(*(s["oldest_open_s"] for s in smmus))] if smmus else [0.0] * len(t)
    eps = samples["endpoints"]
    return {
        "t": t,
        "worst_healthy_s": worst_h,
        "worst_s": [max(a, b) for a, b in zip(worst_all, oldest)],
        "cmdq_depth": [sum(v) for v in zip(*(s["cmdq_depth"] for s in smmus))],
        "oldest_sync_s": [max(v) for v in zip(*(s["oldest_sync_s"] for s in smmus))],
        "not_healthy": [sum(v) for v in zip(*(eps[m] for m in MODE_NAMES if m != "healthy"))],
        "fenced": [sum(v) for v in zip(*(s["fenced"] for s in smmus))],
        "uaf": [sum(v) for v in zip(*(s["uaf"] for s in smmus))],
    }
