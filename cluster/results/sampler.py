"""Time series of a run, sampled from the model on scenario time (for report.md, compare charts, metrics.om).

Both runtimes take the same samples every ``SAMPLE_EVERY`` scenario seconds: ``smmu_row`` of each
SmmuNode and its oracle (queue depths, each queue's oldest pending CMD_SYNC, the oldest open unmap,
fences, UAF) and ``group_row`` of each EndpointGroup (endpoints by state).

- ``RunSampler`` is the sim runtime's ``sample`` hook (``run_sim(sc, sample=...)``); every
  ``om_every`` scenario seconds it also snapshots the Prometheus metric families into an
  OpenMetrics file.
- ``LiveSeries`` gathers the rows the live actors took on their own clocks (``cluster/runtime/live.py``).

``samples()`` gives the same dict on both; unmap latencies come from ``SmmuNode.latency_trace``
(one point per completed unmap). ``compact_series`` reduces it to what the compare charts draw.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ats_stress.device_actors.endpoint import MODE_NAMES

#: scenario seconds between report samples (both runtimes)
SAMPLE_EVERY = 0.25
#: at most this many unmap-latency points leave a live SMMU actor (evenly thinned, slowest kept)
MAX_TRACE_POINTS = 40000
#: a command queue is wedged while its oldest pending CMD_SYNC has waited this long (scenario s)
WEDGED_AFTER = 0.1
#: the per-sample fields of an SMMU row that become one series each
SMMU_SERIES = ("cmdq_depth", "queue_sync_s", "oldest_open_s", "oldest_open_healthy_s", "fenced", "uaf")


def new_run_id(sc, started: float | None = None) -> str:
    stamp = datetime.fromtimestamp(started or time.time(), tz=timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{sc.name}-{sc.policy.name}-{stamp}"


def smmu_row(node, oracle, t: float) -> dict[str, Any]:
    """One sample of an SMMU: its queues (each queue's oldest pending CMD_SYNC age: a wedged queue
    is one whose age keeps growing), its oldest open unmap, its fences and UAF exposures."""
    smmu = node.smmu
    depths = smmu.queue_depths()
    ages = [t - q.sync_submitted[0][1] if q.sync_submitted else 0.0 for q in smmu.queues]
    h, a = node.open_unmap_ages(t)
    return {"t": t, "cmdq_depth": sum(depths), "queue_sync_s": [max(0.0, x) for x in ages],
            "oldest_open_s": max(h + a, default=0.0), "oldest_open_healthy_s": max(h, default=0.0),
            "fenced": len(oracle.fenced), "uaf": oracle.uaf_exposures}


def group_row(group, t: float) -> dict[str, Any]:
    """One sample of an EndpointGroup: its endpoints by state."""
    return {"t": t, "modes": group.modes()}


def thin(points: list, limit: int) -> list:
    """At most about ``limit`` points, evenly spaced, keeping the slowest twentieth (a stall must
    not vanish in the thinning)."""
    if len(points) <= limit:
        return points
    step = len(points) / limit
    keep = {int(i * step) for i in range(limit)}
    keep.update(sorted(range(len(points)), key=lambda i: points[i][1])[-limit // 20:])
    return [points[i] for i in sorted(keep)]


def assemble(run_id: str, smmu_rows: dict[int, list[dict]], group_rows: dict[int, list[dict]],
             group_sizes: dict[int, int], trace: list, step_targets: list) -> dict[str, Any]:
    """The samples dict from per-SMMU and per-group rows (as many samples as every SMMU has; a
    group short of rows, lost with its actor, counts its endpoints as removed from then on)."""
    n = min((len(rows) for rows in smmu_rows.values()), default=0)
    first = next(iter(smmu_rows.values()), [])
    smmus = [{"index": index, **{k: [r[k] for r in rows[:n]] for k in SMMU_SERIES}}
             for index, rows in sorted(smmu_rows.items())]
    endpoints = {m: [0] * n for m in MODE_NAMES}
    for g, rows in group_rows.items():
        for i in range(n):
            modes = rows[i]["modes"] if i < len(rows) else {"removed": group_sizes.get(g, 0)}
            for m, count in modes.items():
                endpoints[m][i] += count
    return {"run": run_id, "t": [r["t"] for r in first[:n]], "smmus": smmus, "endpoints": endpoints,
            "step_targets": [sorted(s) for s in step_targets],
            "latency_trace": [list(p) for p in sorted(trace, key=lambda p: p[0])]}


class RunSampler:
    """Time series of one run, read from the model on scenario time (the sim ``sample`` hook)."""

    def __init__(self, sc, run_id: str | None = None, start_wall: float | None = None,
                 om_every: float | None = 1.0, runtime: str = "sim"):
        self.sc = sc
        self.start_wall = time.time() if start_wall is None else start_wall
        self.run_id = run_id or new_run_id(sc, self.start_wall)
        self.runtime = runtime
        self.om = None
        if om_every:
            from .metrics import OpenMetricsRecorder, step_faults  # prometheus_client: only when wanted

            self.om = OpenMetricsRecorder(self.start_wall)
            self._steps = step_faults(sc)
        self.om_every = om_every or 0.0
        self._next_om = 0.0
        self.smmu_rows: dict[int, list[dict]] = {}
        self.group_rows: dict[int, list[dict]] = {}
        self.group_sizes: dict[int, int] = {}
        self.step_targets: list = []
        self._nodes: list = []

    def __call__(self, t: float, world) -> None:
        self.step_targets = world.plan.step_targets
        self.take(t, world.nodes, world.oracles, world.groups)

    def take(self, t: float, nodes, oracles, groups) -> None:
        self._nodes = list(nodes)
        for node, oracle in zip(nodes, oracles):
            self.smmu_rows.setdefault(node.spec.index, []).append(smmu_row(node, oracle, t))
        for g in groups:
            self.group_rows.setdefault(g.index, []).append(group_row(g, t))
            self.group_sizes[g.index] = len(g.eps)
        if self.om is not None and t + 1e-9 >= self._next_om:
            from .metrics import device_families, run_labels, smmu_families

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
        trace = [p for n in self._nodes for p in n.latency_trace]
        return assemble(self.run_id, self.smmu_rows, self.group_rows, self.group_sizes, trace, self.step_targets)


class LiveSeries:
    """The live runtime's time series: the rows each actor sampled on its own clock, sent with its
    progress reports and its final statistics (``run_ray(sc, sampler=...)``)."""

    def __init__(self, sc, run_id: str | None = None):
        self.sc = sc
        self.run_id = run_id or new_run_id(sc)
        self.smmu_rows: dict[int, list[dict]] = {}
        self.group_rows: dict[int, list[dict]] = {}
        self.group_sizes: dict[int, int] = {}
        self.trace: list = []
        self.step_targets: list = []

    def add(self, kind: str, index: int, rows: list[dict]) -> None:
        (self.smmu_rows if kind == "smmu" else self.group_rows).setdefault(index, []).extend(rows)

    def write_openmetrics(self, path) -> None:
        return None  # a live run's metrics are scraped from its actors while it runs

    def samples(self) -> dict[str, Any]:
        return assemble(self.run_id, self.smmu_rows, self.group_rows, self.group_sizes, self.trace,
                        self.step_targets)


def wedged_intervals(samples: dict) -> list[dict[str, Any]]:
    """Every stretch of samples in which a command queue was wedged (its oldest pending CMD_SYNC
    had waited WEDGED_AFTER or more): smmu, queue, start (when the CMD_SYNC that wedged it was
    queued), end (the first sample that found it clear; None: still wedged at the end) and the
    longest wait seen. In start order."""
    t = samples["t"]
    out = []
    for sm in samples["smmus"]:
        rows = sm.get("queue_sync_s") or []
        for q in range(max((len(r) for r in rows), default=0)):
            cur = None
            for ti, ages in zip(t, rows):
                age = ages[q] if q < len(ages) else 0.0
                if age >= WEDGED_AFTER:
                    if cur is None:
                        cur = {"smmu": sm["index"], "queue": q, "start": ti - age, "end": None, "longest_s": 0.0}
                        out.append(cur)
                    cur["longest_s"] = max(cur["longest_s"], age)
                elif cur is not None:
                    cur["end"] = ti
                    cur = None
    return sorted(out, key=lambda w: (w["start"], w["smmu"], w["queue"]))


def _wedged_counts(samples: dict) -> list[int]:
    """Per sample, how many command queues (all SMMUs) were wedged."""
    counts = [0] * len(samples["t"])
    for sm in samples["smmus"]:
        for i, ages in enumerate(sm.get("queue_sync_s") or []):
            counts[i] += sum(1 for age in ages if age >= WEDGED_AFTER)
    return counts


def compact_series(samples: dict) -> dict[str, list]:
    """The report's time series reduced to what the compare charts draw (small enough to pickle back
    from a worker): per sample step, the worst unmap latency completed or still open (healthy domains
    and all), queue depth, wedged queues, endpoints not healthy, fenced streams, UAF."""
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
    oldest_h = [max(v) for v in zip(*(s["oldest_open_healthy_s"] for s in smmus))] if smmus else [0.0] * len(t)
    eps = samples["endpoints"]
    return {
        "t": t,
        "worst_healthy_s": [max(a, b) for a, b in zip(worst_h, oldest_h)],
        "worst_s": [max(a, b) for a, b in zip(worst_all, oldest)],
        "cmdq_depth": [sum(v) for v in zip(*(s["cmdq_depth"] for s in smmus))],
        "wedged_queues": _wedged_counts(samples),
        "not_healthy": [sum(v) for v in zip(*(eps[m] for m in MODE_NAMES if m != "healthy"))],
        "fenced": [sum(v) for v in zip(*(s["fenced"] for s in smmus))],
        "uaf": [sum(v) for v in zip(*(s["uaf"] for s in smmus))],
    }
