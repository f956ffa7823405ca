"""Run reports: DIR/report.md with PNG plots, and the sampler that feeds them (and metrics.om).

The time series come from the model on scenario time, never from a wall clock: ``RunSampler`` is
the sim runtime's ``sample`` hook (``run_sim(sc, sample=...)``); every call reads queue depth,
endpoint states, fences and UAF counts from the live objects, and every ``om_every`` scenario
seconds also snapshots the Prometheus metric families into an OpenMetrics file. Unmap latencies
come from ``SmmuNode.latency_trace`` (one point per completed unmap).

``write_report(sc, summary, samples, out_dir)`` writes ``report.md`` and ``latency.png``,
``cmdq.png`` and ``endpoints.png`` beside ``summary.json``; without samples (a runtime that
gives none) the report has the text and no time plots.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from device_actors.endpoint import MODE_NAMES
from iommu_actor.units import format_duration

from .metrics import OpenMetricsRecorder, device_families, run_labels, smmu_families, step_faults

#: scenario seconds between report samples on the sim runtime
SAMPLE_EVERY = 0.25
#: at most this many unmap-latency points per plot (evenly thinned, extremes kept)
MAX_TRACE_POINTS = 40000

STATE_COLORS = {"slow": "#dd8452", "hang": "#c44e52", "flap": "#8172b3", "drop": "#937860",
                "lie": "#da8bc3", "itag_leak": "#8c8c8c", "removed": "#55a868", "resetting": "#ccb974",
                "dead": "#000000", "healthy": "#4c72b0"}


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


# --- plots ------------------------------------------------------------------------------------


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _step_spans(sc, end: float) -> list[tuple[int, str, float, float]]:
    """(step, fault, start, stop) for every occurrence of every chaos step (repeats and ramps from the
    plan); a step with no end lasts to the end of the run, a reset is an instant."""
    from .plan import build_plan

    try:
        actions = build_plan(sc).actions
    except Exception:  # noqa: BLE001 - the plot falls back to the scenario's own step list
        actions = []
    starts: dict[int, list[float]] = {}
    ends: dict[int, list[float]] = {}
    faults: dict[int, str] = {}
    for a in actions:
        (starts if a.phase == "start" else ends).setdefault(a.step, []).append(float(a.at))
        faults[a.step] = str(a.fault)
    out = []
    for i, step in enumerate(sc.chaos):
        fault = faults.get(i, str(step.fault))
        occ = sorted(starts.get(i, [])) or [float(step.at)]
        stops = sorted(ends.get(i, []))
        spans: list[list[float]] = []
        for a in occ:
            stop = next((e for e in stops if e >= a), None)
            if stop is None:
                stop = a if fault == "reset" else end
            if spans and a <= spans[-1][1] and stop >= spans[-1][0]:
                spans[-1][1] = max(spans[-1][1], stop)
            else:
                spans.append([a, stop])
        out += [(i, fault, a, min(b, end)) for a, b in spans]
    return out


def _targets(sc, samples: dict | None, i: int) -> str:
    step = sc.chaos[i]
    targets = (samples or {}).get("step_targets") or []
    if i < len(targets) and targets[i]:
        sids = targets[i]
        return ", ".join(map(str, sids[:6])) + (f" (+{len(sids) - 6})" if len(sids) > 6 else "")
    if getattr(step, "endpoints", None):
        return ", ".join(map(str, step.endpoints))
    sel = []
    for key in ("count", "fraction", "domain", "smmu"):
        v = getattr(step, key, None)
        if v is not None:
            sel.append(f"{key} {v}")
    return ", ".join(sel) or "-"


FAULT_COLORS = {"hang": "#c44e52", "slow": "#dd8452", "flap": "#8172b3", "drop": "#937860", "lie": "#da8bc3",
                "itag_leak": "#8c8c8c", "removed": "#55a868", "reset": "#ccb974", "kill_actor": "#000000",
                "kill_node": "#000000"}


def _figure(sc, rows: int, ratios: list[float], height: float):
    """A figure whose top strip is the chaos timeline (one bar per step), then ``rows`` data axes."""
    plt = _plt()
    n = len(sc.chaos)
    strip = 0.35 + 0.22 * max(n, 1)
    fig, axes = plt.subplots(rows + 1, 1, figsize=(12, height + strip), sharex=True,
                             gridspec_kw={"height_ratios": [strip] + ratios})
    return plt, fig, axes[0], list(axes[1:])


def _timeline(ax, sc, samples: dict | None, end: float) -> None:
    spans = _step_spans(sc, end)
    last_stop = {i: stop for i, _, _, stop in spans}
    labelled = set()
    for i, fault, start, stop in spans:
        c = FAULT_COLORS.get(fault, "#999999")
        width = max(stop - start, end / 400)
        ax.barh(i, width, left=start, height=0.7, color=c, alpha=0.8)
        if i not in labelled:
            labelled.add(i)
            after = max(last_stop[i], start + width) + end / 200
            x = after if after < end * 0.8 else start + end / 200  # after the bar, or inside it
            ax.text(x, i, f"{i}: {fault} [{_targets(sc, samples, i)}]", va="center", fontsize=7,
                    color="black" if after < end * 0.8 else "white", fontweight="bold")
    ax.set_ylim(len(sc.chaos) - 0.4, -0.6)
    ax.set_yticks([])
    ax.set_ylabel("chaos", fontsize=8)
    ax.grid(True, axis="x", alpha=0.3)


def _decorate(ax, sc, summary: dict, end: float) -> None:
    """Chaos steps lightly shaded, fences (red) and unfences (green dashed) marked."""
    for i, fault, start, stop in _step_spans(sc, end):
        if stop > start:
            ax.axvspan(start, stop, color=FAULT_COLORS.get(fault, "#999999"), alpha=0.06, lw=0)
    for k, f in enumerate(summary.get("fences") or []):
        ax.axvline(f["at_s"], color="red", lw=1.0, alpha=0.8, label="fence" if k == 0 else None)
    for k, f in enumerate(summary.get("unfences") or []):
        ax.axvline(f["at_s"], color="green", lw=1.0, ls="--", alpha=0.8, label="unfence" if k == 0 else None)
    ax.set_xlim(0, end)
    ax.grid(True, alpha=0.3)


def _legend(ax) -> None:
    ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=7, markerscale=3, borderaxespad=0)


def _thin(points: list, limit: int) -> list:
    if len(points) <= limit:
        return points
    step = len(points) / limit
    keep = {int(i * step) for i in range(limit)}
    # keep the slowest unmaps: the stall must not vanish in the thinning
    worst = sorted(range(len(points)), key=lambda i: points[i][1])[-limit // 20:]
    keep.update(worst)
    return [points[i] for i in sorted(keep)]


def _software_timeout(summary: dict) -> float | None:
    """The policy's software CMD_SYNC timeout (its parameters, else its default), if it has one."""
    from iommu_actor.policy import PolicyError, validate_params

    try:
        params = validate_params(summary["policy"], dict(summary.get("policy_params") or {})).model_dump()
    except (PolicyError, KeyError):
        return None
    for key in ("sync_timeout", "loop_timeout"):
        if isinstance(params.get(key), (int, float)):
            return float(params[key])
    return None


def plot_latency(sc, summary: dict, samples: dict, path: Path) -> None:
    end = float(summary.get("sim_time_s") or sc.duration)
    plt, fig, strip, (ax,) = _figure(sc, 1, [4.0], 4.2)
    _timeline(strip, sc, samples, end)
    strip.set_title(f"{sc.name} · {summary['policy']}: unmap latency (arrival to reported complete)")
    pts = _thin(samples.get("latency_trace") or [], MAX_TRACE_POINTS)
    for affected, color, name in ((False, "#4c72b0", "healthy"), (True, "#c44e52", "affected")):
        fast = [p for p in pts if bool(p[2]) == affected and p[1] < 1e-2]
        slow = [p for p in pts if bool(p[2]) == affected and p[1] >= 1e-2]
        ax.scatter([p[0] for p in fast], [max(p[1], 1e-7) for p in fast], s=2, color=color, alpha=0.3,
                   label=f"unmap done, {name} domain", rasterized=True)
        if slow:
            ax.scatter([p[0] for p in slow], [p[1] for p in slow], s=9, color=color, alpha=0.8,
                       edgecolors="none", rasterized=True)
    t = samples.get("t") or []
    if t:
        oldest = [max(vals) for vals in zip(*(s["oldest_open_s"] for s in samples["smmus"]))]
        ax.plot(t, [v if v >= 1e-3 else float("nan") for v in oldest], color="black", lw=1.2,
                label="oldest unmap still open\n(a stall, as it grows)")
    ax.set_yscale("log")
    ax.set_ylim(1e-6, max(2.0, max((p[1] for p in pts), default=1.0) * 2))
    timeout = _software_timeout(summary)
    if isinstance(timeout, (int, float)):
        ax.axhline(timeout, color="gray", ls="-.", lw=0.8, label=f"software sync timeout ({format_duration(timeout)})")
    _decorate(ax, sc, summary, end)
    ax.set_xlabel("scenario time (s)")
    ax.set_ylabel("unmap latency (s, log)")
    _legend(ax)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_cmdq(sc, summary: dict, samples: dict, path: Path) -> None:
    end = float(summary.get("sim_time_s") or sc.duration)
    plt, fig, strip, (ax1, ax2) = _figure(sc, 2, [2.5, 2.5], 5.5)
    _timeline(strip, sc, samples, end)
    strip.set_title(f"{sc.name} · {summary['policy']}: command queues")
    t = samples["t"]
    for s in samples["smmus"]:
        ax1.step(t, s["cmdq_depth"], where="post", lw=1.2, label=f"smmu {s['index']}")
        ax2.step(t, s["oldest_sync_s"], where="post", lw=1.2, label=f"smmu {s['index']}")
    _decorate(ax1, sc, summary, end)
    _decorate(ax2, sc, summary, end)
    ax1.set_ylabel("commands queued\n(PROD - CONS)")
    ax2.set_ylabel("oldest pending\nCMD_SYNC age (s)")
    ax2.set_xlabel("scenario time (s)")
    _legend(ax1)
    _legend(ax2)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_endpoints(sc, summary: dict, samples: dict, path: Path) -> None:
    end = float(summary.get("sim_time_s") or sc.duration)
    plt, fig, strip, (ax1, ax2) = _figure(sc, 2, [3.0, 1.2], 5.0)
    _timeline(strip, sc, samples, end)
    strip.set_title(f"{sc.name} · {summary['policy']}: endpoints not healthy, by state; fenced streams; UAF "
                    f"({summary.get('endpoints', '?')} endpoints in all)")
    t = samples["t"]
    eps = samples["endpoints"]
    states = [m for m in MODE_NAMES if m != "healthy" and any(eps.get(m, []))]
    if states:
        ax1.stackplot(t, *[eps[m] for m in states], labels=states, step="post",
                      colors=[STATE_COLORS.get(m, "#999999") for m in states], alpha=0.85)
    fenced = [sum(v) for v in zip(*(s["fenced"] for s in samples["smmus"]))]
    ax1.step(t, fenced, where="post", color="black", lw=1.5, label="streams fenced")
    _decorate(ax1, sc, summary, end)
    ax1.set_ylabel("endpoints")
    _legend(ax1)
    uaf = [sum(v) for v in zip(*(s["uaf"] for s in samples["smmus"]))]
    ax2.step(t, uaf, where="post", color="black", lw=1.2, label="UAF exposures\n(cumulative)")
    ax2.set_ylim(0, max(1, max(uaf, default=0)) * 1.1)
    _decorate(ax2, sc, summary, end)
    ax2.set_ylabel("UAF")
    ax2.set_xlabel("scenario time (s)")
    _legend(ax2)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# --- the report ----------------------------------------------------------------------------------


def _d(v) -> str:
    return "-" if v is None else format_duration(v)


def _bound(b: dict) -> str:
    return ", ".join(f"{'<=' if k == 'max' else '>='} {v:g}" for k, v in b.items())


def _obs(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _queue_story(samples: dict | None) -> str | None:
    """How long command queues stayed wedged, from the sampled oldest pending CMD_SYNC."""
    if not samples or not samples.get("t"):
        return None
    t = samples["t"]
    parts = []
    for sm in samples["smmus"]:
        ages = sm["oldest_sync_s"]
        worst = max(ages, default=0.0)
        if worst < 1.0:
            continue
        at = t[ages.index(worst)]
        tail = " and was still pending at the end" if ages[-1] >= 1.0 else ""
        parts.append(f"smmu {sm['index']}: a CMD_SYNC waited up to {_d(worst)} (at {_d(at)}){tail}")
    if not parts:
        return "No command queue was wedged for a second or more."
    return ("Command queue wedged by an unanswered ATC_INV: " + "; ".join(parts) +
            ". Work queued behind it waits (or, with spare queues, the driver moves off it).")


def _verdict(s: dict, samples: dict | None = None) -> list[str]:
    lines = []
    if s["uaf_exposures"]:
        by = ", ".join(f"stream {sid} ({n})" for sid, n in sorted(s["uaf_by_sid"].items(), key=lambda kv: -kv[1])[:5])
        lines.append(f"**UNSAFE: {s['uaf_exposures']} UAF exposure(s)**, {s['uaf_reallocated']} of them to a page "
                     f"already given to another mapping; the first at {_d(s['first_uaf_s'])}; by {by}. A device "
                     "wrote through a stale ATC entry after its unmap was reported complete.")
    else:
        lines.append("**SAFE: no UAF exposure.** No translated request reached memory after its unmap was "
                     "reported complete.")
    if s["fence_count"]:
        lines.append(f"{s['fence_count']} fence(s), {s['fenced_healthy']} of a healthy device; fence latency max "
                     f"{_d(s['fence_latency_s']['max'])}; {s['unfence_count']} unfence(s) after reset, recovery max "
                     f"{_d(s['recovery_s']['max'])}; still fenced at the end: "
                     f"{', '.join(map(str, s['fenced_at_end'])) or 'none'}.")
    else:
        lines.append("No stream was fenced.")
    h = s["healthy_unmap_latency_s"]
    lines.append(f"Healthy unmaps: p50 {_d(h['p50'])}, p99 {_d(h['p99'])}, worst stall {_d(s['worst_stall_s'])}; "
                 f"{s['sync_timeouts']} software CMD_SYNC timeout(s), {s['hw_atc_timeouts']} hardware ATC_INV "
                 f"timeout(s) ({s['cmdq_errors']} CERROR_ATC_INV_SYNC); CPU lockup {_d(s['lockup_s'])}.")
    story = _queue_story(samples)
    if story:
        lines.append(story)
    return lines


def write_report(sc, summary: dict, samples: dict | None, out_dir) -> Path:
    """Write ``out_dir/report.md`` (and the PNG plots when there are samples); return its path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    s = summary
    md: list[str] = [f"# {s['scenario']} · policy {s['policy']} · {s['runtime']} runtime · seed {s['seed']}", ""]
    status = s["status"]
    md.append(f"Status: **{status}**; {_d(s['sim_time_s'])} of scenario time; expectations "
              f"{'all held' if s['ok'] else 'NOT all held'}.")
    md += ["", "## Verdict", ""] + [f"- {line}" for line in _verdict(s, samples)]
    top = sc.topology
    md += ["", "## What the scenario did", "",
           f"{top.endpoints} ATS endpoints behind {top.smmus} SMMU(s) with {sc.hardware.command_queues} command "
           f"queue(s) each, {top.domains} domains, {top.cpus} CPUs; {sc.workload.unmaps_per_s:g} unmaps/s, "
           f"{sc.workload.dma_per_endpoint_per_s:g} DMA/s per endpoint; hardware ATC_INV completion timeout "
           f"{_d(sc.hardware.atc_inv_completion_timeout)}; policy `{s['policy']}` "
           f"{s['policy_params'] or ''}.", ""]
    if sc.chaos:
        md += ["| step | at | fault | endpoints | until |", "|---|---|---|---|---|"]
        for i, step in enumerate(sc.chaos):
            duration = getattr(step, "duration", None)
            until = _d(float(step.at) + float(duration)) if duration else (
                "-" if step.fault == "reset" else "end of run")
            if getattr(step, "repeat", None) is not None or getattr(step, "ramp", None) is not None:
                until += " (repeated: see the plots)"
            md.append(f"| {i} | {_d(float(step.at))} | {step.fault} | {_targets(sc, samples, i)} | {until} |")
    else:
        md.append("No chaos steps.")
    md += ["", "## Fences, resets and recovery", ""]
    if s["fences"]:
        md += ["| stream | fenced at | fault began | fence latency | verdict |", "|---|---|---|---|---|"]
        for f in s["fences"]:
            md.append(f"| {f['sid']} | {_d(f['at_s'])} | {_d(f['fault_start_s'])} | {_d(f['latency_s'])} | "
                      f"{'culprit' if f['fault_start_s'] is not None else '**healthy device fenced**'} |")
    else:
        md.append("No stream was fenced.")
    if s["unfences"]:
        md += ["", "| stream | unfenced at | was fenced for | recovery (reset to unfence) |", "|---|---|---|---|"]
        for f in s["unfences"]:
            md.append(f"| {f['sid']} | {_d(f['at_s'])} | {_d(f['fenced_s'])} | {_d(f['recovery_s'])} |")
    if s["resets"]:
        md += ["", "Resets (FLR): " + "; ".join(
            f"stream {r['sid']} {'ok' if r['ok'] else 'FAILED'} ({_d(r['started_s'])} to {_d(r['done_s'])})"
            for r in s["resets"][:20]) + ("; ..." if len(s["resets"]) > 20 else "") + "."]
    un = s["unmaps"]
    a = s["affected_unmap_latency_s"]
    md += ["", "## Stall and cost", "",
           f"- unmaps completed {un['count']} of {un['arrived']} arrived ({un['incomplete']} still open at the end)",
           f"- healthy domains: p50 {_d(s['healthy_unmap_latency_s']['p50'])}, p99 "
           f"{_d(s['healthy_unmap_latency_s']['p99'])}, max {_d(s['healthy_unmap_latency_s']['max'])}",
           f"- affected domains: p50 {_d(a['p50'])}, p99 {_d(a['p99'])}, max {_d(a['max'])}",
           f"- translated requests: {s['translated_allowed']} reached memory, {s['translated_blocked']} blocked by a fence",
           f"- commands per unmap {s['commands_per_unmap'] or 0:.3g}, CMD_SYNCs per unmap {s['syncs_per_unmap'] or 0:.3g}"]
    if s.get("runtime") == "ray":
        lost = s.get("lost") or {}
        sat = (s.get("transport") or {}).get("saturation") or []
        md += ["", "## Live runtime", "",
               f"- actors lost: {len(lost.get('actors') or [])}, endpoints lost with them: "
               f"{len(lost.get('endpoints') or [])}, nodes lost: {len(lost.get('nodes') or [])}",
               "- transport: " + ("; ".join(map(str, sat)) if sat else "kept up with the scenario (no saturation)")]
    md += ["", "## Expectations", ""]
    if s["expectations"]:
        md += ["| expectation | bound | observed | result |", "|---|---|---|---|"]
        for e in s["expectations"]:
            md.append(f"| {e['name']} | {_bound(e['bound'])} | {_obs(e['observed'])} | "
                      f"{'ok' if e['ok'] else '**VIOLATED**'} |")
    else:
        md.append("The scenario sets none.")
    md += ["", "## Plots", ""]
    if samples and samples.get("t"):
        plot_latency(sc, s, samples, out / "latency.png")
        plot_cmdq(sc, s, samples, out / "cmdq.png")
        plot_endpoints(sc, s, samples, out / "endpoints.png")
        md += ["Shaded: chaos steps; red lines: a fence took effect; green dashed: an unfence.", "",
               "Unmap latency over time (each dot one completed unmap; the black line is the oldest unmap still "
               "waiting, so a stall shows while it grows):", "", "![unmap latency](latency.png)", "",
               "Command queues: commands queued, and how long the oldest CMD_SYNC has waited (a wedged queue "
               "climbs until the device answers, is fenced, or the hardware gives up):", "", "![command queues](cmdq.png)", "",
               "Endpoints by state, streams fenced, and UAF exposures:", "", "![endpoints](endpoints.png)"]
    else:
        md.append("This runtime gave no time series, so there are no time plots.")
    if s.get("log"):
        md += ["", "## Driver log (first lines)", "", "```"] + s["log"][:12] + ["```"]
    path = out / "report.md"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n".join(md) + "\n")
    tmp.replace(path)
    return path


def load_samples(out_dir) -> dict | None:
    """Time series a runtime left in ``out_dir/samples.json`` (the sim runtime passes its sampler instead)."""
    import json

    path = Path(out_dir) / "samples.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_run_outputs(sc, summary: dict, sampler: RunSampler | None, out_dir, console=None, err_console=None) -> list[Path]:
    """After summary.json: metrics.om (sim runs), report.md and its plots. A failure here is reported
    in one line and never changes the run's result."""
    out = Path(out_dir)
    written: list[Path] = []
    try:
        if sampler is not None:
            om = sampler.write_openmetrics(out / "metrics.om")
            if om is not None:
                written.append(om)
        samples = sampler.samples() if sampler is not None else load_samples(out)
        written.append(write_report(sc, summary, samples, out))
    except Exception as exc:  # noqa: BLE001 - a report must never take the run's result down
        if err_console is not None:
            err_console.print(f"warning: the run report was not written: {type(exc).__name__}: {exc}",
                              highlight=False, soft_wrap=True)
        return written
    if console is not None:
        console.print("report: " + ", ".join(str(p) for p in written), highlight=False, soft_wrap=True)
    return written


# --- compare: one chart per figure across policies ---------------------------------------------------


def compact_series(samples: dict) -> dict[str, list]:
    """The report's time series reduced to what the compare charts draw (small enough to pickle back
    from a worker): per sample step, the worst unmap latency completed or still open (healthy domains
    and all), queue depth, oldest pending CMD_SYNC, endpoints not healthy, fenced streams, UAF."""
    t = list(samples["t"])
    smmus = samples["smmus"]
    worst_h = [0.0] * len(t)
    worst_all = [0.0] * len(t)
    from bisect import bisect_left

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


COMPARE_SERIES_FIGURES = [
    ("compare-latency.png", "unmap latency", [("worst_healthy_s", "worst healthy unmap (s, log)", True),
                                              ("worst_s", "worst unmap, done or open (s, log)", True)]),
    ("compare-cmdq.png", "command queues", [("cmdq_depth", "commands queued", False),
                                            ("oldest_sync_s", "oldest pending CMD_SYNC (s)", False)]),
    ("compare-endpoints.png", "endpoints, fences and UAF", [("not_healthy", "endpoints not healthy", False),
                                                            ("fenced", "streams fenced", False),
                                                            ("uaf", "UAF exposures (cumulative)", False)]),
]


def plot_compare_series(sc, runs: list[dict], series: list[dict | None], out_dir) -> list[Path]:
    """One chart per report figure with one line per policy (the scenario's own seed), chaos shaded."""
    out = Path(out_dir)
    first: dict[str, tuple[dict, dict]] = {}
    for r, s in zip(runs, series):
        if s and r["policy"] not in first and r["seed"] == sc.seed:
            first[r["policy"]] = (r, s)
    if not first:
        return []
    end = max(float(r["sim_time_s"]) for r, _ in first.values())
    written = []
    for fname, title, rows in COMPARE_SERIES_FIGURES:
        plt, fig, strip, axes = _figure(sc, len(rows), [2.2] * len(rows), 2.4 * len(rows))
        _timeline(strip, sc, None, end)
        strip.set_title(f"{sc.name}: {title} by policy (seed {sc.seed})")
        for ax, (key, label, log) in zip(axes, rows):
            for k, (policy, (r, s)) in enumerate(first.items()):
                ys = s[key]
                if log:
                    ys = [v if v > 0 else float("nan") for v in ys]
                ax.step(s["t"], ys, where="post", lw=1.6 - 0.2 * (k % 4), ls=("-", "--", ":", "-.")[k % 4],
                        label=policy)
            if log:
                ax.set_yscale("log")
            _decorate(ax, sc, {}, end)
            ax.set_ylabel(label, fontsize=8)
            _legend(ax)
        axes[-1].set_xlabel("scenario time (s)")
        fig.tight_layout()
        out.mkdir(parents=True, exist_ok=True)
        fig.savefig(out / fname, dpi=90)
        plt.close(fig)
        written.append(out / fname)
    return written
