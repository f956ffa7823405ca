"""The run plots (latency.png, cmdq.png, endpoints.png) and the compare charts over time.

Every plot opens with the chaos timeline (one bar per step) and marks fences and unfences; the
data are the sampler's time series (``sampler.py``), never a wall clock.
"""

from __future__ import annotations

from pathlib import Path

from ats_stress.device_actors.endpoint import MODE_NAMES
from ats_stress.iommu_actor.units import format_duration

from .sampler import MAX_TRACE_POINTS, WEDGED_AFTER, thin, wedged_intervals


STATE_COLORS = {"slow": "#dd8452", "hang": "#c44e52", "flap": "#8172b3", "drop": "#937860",
                "lie": "#da8bc3", "itag_leak": "#8c8c8c", "removed": "#55a868", "resetting": "#ccb974",
                "dead": "#000000", "healthy": "#4c72b0"}



# --- plots ------------------------------------------------------------------------------------


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _step_spans(sc, end: float) -> list[tuple[int, str, float, float]]:
    """(step, fault, start, stop) for every occurrence of every chaos step (repeats and ramps from the
    plan); a step with no end lasts to the end of the run, a reset is an instant."""
    from ats_stress.cluster.scenario.plan import build_plan

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


def none_panel(ax, text: str = "none") -> None:
    """An empty panel that says so, instead of an axis around nothing."""
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=9, color="#777777")
    ax.tick_params(axis="y", left=False, labelleft=False)  # this panel only (others may share the axis)


def count_axis(ax, values: list[float]) -> None:
    """A count axis from zero: symmetric-log when the counts span two orders of magnitude or more
    (zero stays on the axis), linear otherwise with whole-number ticks and never an offset."""
    from matplotlib.ticker import MaxNLocator

    positive = [v for v in values if v and v > 0]
    if positive and max(positive) >= 100 * min(positive):
        ax.set_yscale("symlog", linthresh=1.0)
    else:
        plain_ticks(ax)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(bottom=0)


def plain_ticks(ax, values: list[float] | None = None) -> None:
    """Linear tick labels without an offset or a power (no '1e-5+1.99981e1'); flat data (within
    0.1%) is drawn against zero rather than magnified."""
    ax.ticklabel_format(axis="y", style="plain", useOffset=False)
    nums = [v for v in values or [] if v == v]  # not nan
    if nums and max(nums) - min(nums) <= 1e-3 * max(abs(v) for v in nums):
        top = max(nums)
        ax.set_ylim(*((0, top * 1.15) if top > 0 else (top * 1.15, 0) if top < 0 else (-1, 1)))


def _software_timeout(summary: dict) -> float | None:
    """The policy's software CMD_SYNC timeout (its parameters, else its default), if it has one."""
    from ats_stress.iommu_actor.policy import PolicyError, validate_params

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
    offered = (summary.get("trace") or {}).get("offered_per_s") or {}
    if offered.get("rate"):  # a replayed trace: its offered unmap rate in a panel below
        plt, fig, strip, (ax, rate_ax) = _figure(sc, 2, [4.0, 1.5], 5.6)
    else:
        plt, fig, strip, (ax,) = _figure(sc, 1, [4.0], 4.2)
    _timeline(strip, sc, samples, end)
    strip.set_title(f"{sc.name} · {summary['policy']}: unmap latency (arrival to reported complete)")
    pts = thin(samples.get("latency_trace") or [], MAX_TRACE_POINTS)
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
    if offered.get("rate"):
        ax.set_xlabel("")
        _offered_panel(rate_ax, sc, summary, offered, end)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _offered_panel(ax, sc, summary: dict, offered: dict, end: float) -> None:
    """The replayed trace's offered unmap rate (unmaps handed to the driver per scenario second, per bin)."""
    bin_s = float(offered["bin_s"])
    rate = offered["rate"]
    xs = [i * bin_s for i in range(len(rate) + 1)]
    ax.stairs(rate, xs, color="#55a868", fill=True, alpha=0.35, label=f"offered unmaps/s ({format_duration(bin_s)} bins)")
    ax.stairs(rate, xs, color="#55a868", lw=1.0)
    ax.axhline(offered.get("mean") or 0.0, color="#55a868", ls=":", lw=0.8, label="mean")
    _decorate(ax, sc, summary, end)
    count_axis(ax, rate)
    if ax.get_yscale() == "linear":
        from matplotlib.ticker import MaxNLocator

        ax.yaxis.set_major_locator(MaxNLocator(nbins=4, integer=True))
    name = (summary.get("trace") or {}).get("name", "trace")
    ax.set_ylabel("offered\nunmaps/s", fontsize=8)
    ax.set_xlabel(f"scenario time (s) · workload: {name} replayed")
    _legend(ax)


#: at most this many queues get a row of their own in cmdq.png (the longest wedged)
MAX_QUEUE_ROWS = 16


def plot_cmdq(sc, summary: dict, samples: dict, path: Path) -> None:
    """Commands queued per SMMU, and one row per wedged command queue: a bar from when the CMD_SYNC
    that wedged it was queued to when the queue was found clear, saying when (or that it never was)."""
    end = float(summary.get("sim_time_s") or sc.duration)
    wedged = wedged_intervals(samples)
    total: dict[tuple[int, int], float] = {}
    for w in wedged:
        key = (w["smmu"], w["queue"])
        total[key] = total.get(key, 0.0) + (w["end"] if w["end"] is not None else end) - w["start"]
    rows = sorted(sorted(total, key=lambda k: -total[k])[:MAX_QUEUE_ROWS])
    plt, fig, strip, (ax1, ax2) = _figure(sc, 2, [2.5, 0.6 + 0.3 * max(1, len(rows))],
                                          3.4 + 0.3 * max(1, len(rows)))
    _timeline(strip, sc, samples, end)
    strip.set_title(f"{sc.name} · {summary['policy']}: command queues")
    t = samples["t"]
    for s in samples["smmus"]:
        ax1.step(t, s["cmdq_depth"], where="post", lw=1.2, label=f"smmu {s['index']}")
    _decorate(ax1, sc, summary, end)
    ax1.set_ylabel("commands queued\n(PROD - CONS)")
    _legend(ax1)
    one_smmu = len(samples["smmus"]) == 1
    for w in wedged:
        if (w["smmu"], w["queue"]) not in rows:
            continue
        y = rows.index((w["smmu"], w["queue"]))
        stop = w["end"] if w["end"] is not None else end
        ax2.barh(y, max(stop - w["start"], end / 400), left=w["start"], height=0.6, color="#c44e52", alpha=0.8)
        if stop - w["start"] >= end / 50:  # say when it cleared, after the bar or inside it
            text = f"cleared at {stop:.1f} s" if w["end"] is not None else "still wedged at the end"
            inside = stop > end * 0.85
            ax2.text(stop - end / 200 if inside else stop + end / 200, y, text, va="center", fontsize=7,
                     ha="right" if inside else "left", color="white" if inside else "black")
    _decorate(ax2, sc, summary, end)
    ax2.set_ylim(max(1, len(rows)) - 0.5, -0.5)
    ax2.set_yticks(range(len(rows)), [f"queue {q}" if one_smmu else f"smmu {s} · queue {q}" for s, q in rows],
                   fontsize=7)
    more = len(total) - len(rows)
    ax2.set_title(f"wedged queues: a CMD_SYNC waited {WEDGED_AFTER * 1e3:.0f} ms or more; the queue clears when it "
                  f"completes (the device answers, or the hardware gives up after "
                  f"{format_duration(sc.hardware.atc_inv_completion_timeout)})"
                  + (f"; {more} more queue(s) not shown" if more > 0 else ""), fontsize=8, loc="left")
    if not rows:
        none_panel(ax2, "no queue was wedged")
    ax2.set_xlabel("scenario time (s)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_endpoints(sc, summary: dict, samples: dict, path: Path) -> None:
    from matplotlib.ticker import MaxNLocator

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
    ax1.yaxis.set_major_locator(MaxNLocator(integer=True))
    _legend(ax1)
    uaf = [sum(v) for v in zip(*(s["uaf"] for s in samples["smmus"]))]
    ax2.step(t, uaf, where="post", color="black", lw=1.2, label="UAF exposures\n(cumulative)")
    ax2.set_ylim(0, max(1, max(uaf, default=0)) * 1.1)
    ax2.yaxis.set_major_locator(MaxNLocator(integer=True))
    _decorate(ax2, sc, summary, end)
    ax2.set_ylabel("UAF")
    ax2.set_xlabel("scenario time (s)")
    _legend(ax2)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)



# --- compare: one chart per figure, one row of panels per policy -----------------------------------


#: (file, title, [(series key, column heading, "time" (seconds, log) or "count")])
COMPARE_SERIES_FIGURES = [
    ("compare-latency.png", "unmap latency", [("worst_healthy_s", "worst healthy unmap (s)", "time"),
                                              ("worst_s", "worst unmap, done or still open (s)", "time")]),
    ("compare-cmdq.png", "command queues", [("cmdq_depth", "commands queued", "count"),
                                            ("wedged_queues", f"queues wedged (a CMD_SYNC waiting >= "
                                                              f"{WEDGED_AFTER * 1e3:.0f} ms)", "count")]),
    ("compare-endpoints.png", "endpoints, fences and UAF", [("not_healthy", "endpoints not healthy", "count"),
                                                            ("fenced", "streams fenced", "count"),
                                                            ("uaf", "UAF exposures (cumulative)", "count")]),
]


def plot_compare_series(sc, runs: list[dict], series: list[dict | None], out_dir) -> list[Path]:
    """One chart per report figure (``compare_figure``) for the scenario's own seed of each policy."""
    out = Path(out_dir)
    first: dict[str, tuple[dict, dict]] = {}
    for r, s in zip(runs, series):
        column = r.get("variant", r["policy"])  # a policy, or a variant of one (quarantine:version=v1)
        if s and column not in first and r["seed"] == sc.seed:
            first[column] = (r, s)
    if not first:
        return []
    written = []
    for fname, title, columns in COMPARE_SERIES_FIGURES:
        fig = compare_figure(sc, first, title, columns)
        out.mkdir(parents=True, exist_ok=True)
        fig.savefig(out / fname, dpi=90)
        _plt().close(fig)
        written.append(out / fname)
    return written


def compare_figure(sc, runs: dict[str, tuple[dict, dict]], title: str, columns: list[tuple[str, str, str]]):
    """A row of panels per policy (``runs``: policy -> (summary, compact series)) on shared axes, a
    column per series under its own chaos timeline; times in seconds on a log axis, counts from
    zero (symmetric-log when they span orders of magnitude); a panel with nothing to draw says
    "none". Chaos shaded, each policy's own fences marked."""
    plt = _plt()
    end = max(float(r["sim_time_s"]) for r, _ in runs.values())
    strip_h = 0.35 + 0.22 * max(len(sc.chaos), 1)
    fig = plt.figure(figsize=(12, strip_h + 0.6 + 1.25 * len(runs)))
    grid = fig.add_gridspec(len(runs) + 1, len(columns), height_ratios=[strip_h] + [1.25] * len(runs))
    fig.suptitle(f"{sc.name}: {title} by policy (seed {sc.seed}; red lines: fences)")
    strip = None
    for j, (key, heading, kind) in enumerate(columns):
        strip = fig.add_subplot(grid[0, j], sharex=strip)  # every panel shares one time axis
        _timeline(strip, sc, None, end)
        strip.set_xlim(0, end)
        strip.tick_params(labelbottom=False)
        strip.set_title(heading, fontsize=9)
        if j:
            strip.set_ylabel("")
        values = [v for _, s in runs.values() for v in s[key]]
        top = None
        for i, (policy, (r, s)) in enumerate(runs.items()):
            ax = fig.add_subplot(grid[i + 1, j], sharex=strip, sharey=top)
            top = top or ax
            if any(v > 0 for v in s[key]):
                ys = [v if v > 0 else float("nan") for v in s[key]] if kind == "time" else s[key]
                ax.step(s["t"], ys, where="post", lw=1.3, color="#4c72b0")
            else:
                none_panel(ax)
            _decorate(ax, sc, r, end)
            if j == 0:
                ax.set_ylabel(policy, fontsize=9, rotation=0, ha="right", va="center")
            if i < len(runs) - 1:
                ax.tick_params(labelbottom=False)
            else:
                ax.set_xlabel("scenario time (s)")
        if kind == "time" and any(v > 0 for v in values):
            top.set_yscale("log")
        elif kind == "count":
            count_axis(top, values)
    fig.tight_layout()
    return fig



# --- compare.png and sweep.png: the figures of compare's and sweep's rows ---------------------------


#: the figures compare.png and sweep.png chart, a panel each (``figures.FIGURES`` keys), 3 x 3
CHART_FIGURES = ["uaf_exposures", "lazy_window_dma", "healthy_p99",
                 "worst_stall_s", "fences", "fenced_healthy",
                 "fence_latency_s", "irqs_off_max_s", "syncs_per_unmap"]
BAR_COLOR = "#4c72b0"
#: a panel whose positive values span this factor or more goes on a (symmetric) log axis
LOG_SPAN = 100.0


def _unit_of(fig, values: list) -> tuple[str, float]:
    """A panel's unit: s, ms, us or ns for times (chosen by its largest value), none otherwise."""
    from .figures import time_unit

    return time_unit(values) if fig.kind == "time" else ("", 1.0)


def value_text(v, fig, unit: str = "", scale: float = 1.0) -> str:
    """A value as a chart prints it: "none", "19.9 s", "7,438", "0.5", "2.01"."""
    if v is None:
        return "none"
    x = v / scale
    if fig.kind == "time":
        return f"{x:.3g} {unit}" if x else f"0 {unit}"
    if fig.kind == "count":
        if float(x).is_integer():
            return f"{int(x):,}"
        return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.2g}" if abs(x) < 1 else f"{x:.3g}"
    return f"{x:.3g}"


def _log_threshold(fig, positive: list[float]) -> float | None:
    """The linear threshold of a symmetric-log axis for these values, or None for a linear axis:
    counts keep 0..1 linear; times the decade below their smallest value."""
    import math

    if not positive or max(positive) < LOG_SPAN * min(positive):
        return None
    return 1.0 if fig.kind == "count" else 10 ** math.floor(math.log10(min(positive)))


def _plain_number(v: float, _pos=None) -> str:
    """A tick label: 0.5, 20, 500, 2.5k, 3M (never 1e4 or an offset)."""
    a = abs(v)
    if a >= 1e6:
        return f"{v / 1e6:g}M"
    if a >= 1e3:
        return f"{v / 1e3:g}k"
    return f"{v:,.0f}" if a >= 1 and float(v).is_integer() else f"{v:g}"


def _plain_log_labels(axis) -> None:
    """Tick labels of a log axis as plain numbers (1, 10, 100, 1,000, 10k), not powers of ten."""
    from matplotlib.ticker import FuncFormatter

    axis.set_major_formatter(FuncFormatter(_plain_number))


def _wrap_label(label: str, width: int = 28) -> str:
    """A long variant label (NAME:key=value:...) broken before its ':' parameters."""
    if len(label) <= width or ":" not in label:
        return label
    name, *params = label.split(":")
    return "\n".join([name] + [":" + p for p in params])


def plot_compare(rows: list[dict], path: Path, title: str = "", seeds: int = 1) -> None:
    fig = compare_chart(rows, title, seeds)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    _plt().close(fig)


def compare_chart(rows: list[dict], title: str = "", seeds: int = 1):
    """compare.png: a panel per figure (``CHART_FIGURES``), a horizontal bar per policy or variant
    (its flush mode beside its name), each bar's value printed at its end, the unit chosen per panel
    from its values, whiskers from the lowest to the highest seed, and a symmetric-log axis, said in
    the panel's title, when the values span two orders of magnitude or more."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    from .figures import BY_KEY, chart_how, chart_value

    plt = _plt()
    labels = [_wrap_label(str(r["policy"])) + (f"  ({r['flush']})" if r.get("flush") else "") for r in rows]
    lines = sum(max(1, lb.count("\n") + 1) for lb in labels)
    panel_h = 0.55 + 0.2 * lines + 0.12 * len(rows)
    fig, axes = plt.subplots(3, 3, figsize=(13, 0.9 + 3 * panel_h), sharey=True)
    ys = list(range(len(rows)))
    for ax, key in zip(axes.flat, CHART_FIGURES):
        f = BY_KEY[key]
        drawn = [chart_value(f, r) for r in rows]
        unit, scale = _unit_of(f, [v for v, _ in drawn] + [s["max"] for _, s in drawn if s])
        vals = [None if v is None else v / scale for v, _ in drawn]
        span = max([v or 0.0 for v in vals] + [s["max"] / scale for _, s in drawn if s] + [0.0])

        def visible(sp: dict) -> bool:  # a whisker shorter than a line's width says nothing
            return (sp["max"] - sp["min"]) / scale > 0.01 * span
        ax.barh(ys, [v or 0.0 for v in vals], height=0.6, color=BAR_COLOR)
        tops = []
        for y, v, (raw, sp) in zip(ys, vals, drawn):
            top = v or 0.0
            if sp and seeds > 1 and sp["max"] > sp["min"] and v is not None and visible(sp):
                lo, hi = sp["min"] / scale, sp["max"] / scale
                ax.errorbar(v, y, xerr=[[max(0.0, v - lo)], [max(0.0, hi - v)]], fmt="none", ecolor="black",
                            elinewidth=1, capsize=3)
                top = max(top, hi)
            tops.append(top)
            ax.annotate(value_text(raw, f, unit, scale), (top, y), xytext=(4, 0),
                        textcoords="offset points", va="center", ha="left", fontsize=8,
                        color="#777777" if not v else "black")
        positive = [t for t in tops if t > 0]
        thresh = _log_threshold(f, positive)
        how = [h for h in (chart_how(f, seeds), "log scale" if thresh else "") if h]
        ax.set_title(f.title + (f" ({unit})" if unit else "") + ("\n" + ", ".join(how) if how else ""), fontsize=9)
        if not positive:  # nothing to scale: the labels say 0 or none, the axis says nothing
            ax.set_xlim(0, 1)
            ax.tick_params(axis="x", bottom=False, labelbottom=False)
        elif thresh:
            import math

            ax.set_xscale("symlog", linthresh=thresh, linscale=0.5)
            decades = math.log10(max(positive) / thresh) + 1
            ax.set_xlim(0, max(positive) * 10 ** (0.35 * decades))  # room for the value labels
            _plain_log_labels(ax.xaxis)
        else:
            ax.set_xlim(0, max(positive) * 1.3)
            ax.xaxis.set_major_locator(MaxNLocator(5, steps=[1, 2, 2.5, 5, 10]))
            ax.xaxis.set_major_formatter(FuncFormatter(_plain_number))
        ax.grid(True, axis="x", alpha=0.3)
        ax.tick_params(axis="x", labelsize=8)
    axes[0][0].set_yticks(ys, labels)
    axes[0][0].set_ylim(len(rows) - 0.5, -0.5)  # the first policy on top
    for ax in axes[:, 0]:
        ax.tick_params(axis="y", labelsize=8)
    fig.suptitle(title, fontsize=10)
    if seeds > 1:
        fig.text(0.5, 0.005, "whiskers: the lowest and the highest seed, where they differ visibly. Counts are drawn "
                 "per run; the table and compare.json give their sums over the seeds.", ha="center", va="bottom", fontsize=8, color="#555555")
    fig.tight_layout(rect=(0, 0.02 if seeds > 1 else 0, 1, 1))
    return fig


def sweep_axis(values: list) -> tuple[str, list[float]]:
    """How sweep.png lays out the swept values (in the order given): ("linear", their numbers) when
    they are numbers or durations evenly spaced; ("log", their numbers) when positive and not
    evenly spaced (a hardware timeout of 50ms, 500ms, 5s, 60s); ("categorical", 0, 1, 2...) for
    anything else (names, modes, a single value, uneven values with a zero)."""
    from ats_stress.iommu_actor.units import parse_duration

    nums: list[float] = []
    for v in values:
        if isinstance(v, bool):
            break
        try:
            nums.append(float(v) if isinstance(v, (int, float)) else parse_duration(v))
        except (TypeError, ValueError):
            break
    if len(nums) == len(values) and len(set(nums)) == len(nums) >= 2:
        xs = sorted(nums)
        steps = [b - a for a, b in zip(xs, xs[1:])]
        if max(steps) - min(steps) <= 1e-9 * max(abs(x) for x in xs):
            return "linear", nums
        if xs[0] > 0:
            return "log", nums
    return "categorical", [float(i) for i in range(len(values))]


#: with more series than this, sweep.png marks a point with no value by an x on the axis, not "none"
MAX_NONE_TEXTS = 3


#: series colours of sweep.png (matplotlib's tab10, then tab20b for more)
def _series_colors(n: int) -> list:
    plt = _plt()
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def plot_sweep(rows: list[dict], params: list[str], path: Path, title: str = "", seeds: int = 1,
               sets: list[str] = ()) -> None:
    fig = sweep_chart(rows, params, title, seeds, sets)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    _plt().close(fig)


def sweep_chart(rows: list[dict], params: list[str], title: str = "", seeds: int = 1, sets: list[str] = ()):
    """sweep.png: a panel per figure (``CHART_FIGURES``) over the first swept key, one series per
    combination of the others. Every panel has every point on the same x ticks: numbers evenly
    spaced on a linear axis, otherwise positive numbers on a log axis, otherwise categories (said
    under the axis), whose points are not joined by lines. A point with no value (no fence, so no
    fence latency) says "none" where it would be. Counts (per run) and times start at 0, on a
    symmetric-log axis, said in the title, when they span two orders of magnitude or more; error
    bars go from the lowest to the highest seed."""
    import math

    from matplotlib.ticker import FuncFormatter, MaxNLocator, NullLocator

    from .figures import BY_KEY, chart_how, chart_value

    plt = _plt()
    x_key = params[0]
    values = list(dict.fromkeys(r["point"][x_key] for r in rows))
    texts = {v: str(v) for v in values}
    kind, pos = sweep_axis(values)
    at = dict(zip(values, pos))
    series: dict[str, list[dict]] = {}
    others = [k for k in params if k != x_key]
    short = [k.rsplit(".", 1)[-1] for k in others]
    for r in rows:  # the legend's title names the other keys; each entry their values
        rest = (str(r["point"][others[0]]) if len(others) == 1 else
                ", ".join(f"{s}={r['point'][k]}" for s, k in zip(short, others)) or "all")
        series.setdefault(rest, []).append(r)
    colors = _series_colors(len(series))
    width = 0.6 / max(1, len(series))  # categorical: the series side by side within a category
    fig, axes = plt.subplots(3, 3, figsize=(13, 9.6), sharex=True)
    for ax, key in zip(axes.flat, CHART_FIGURES):
        f = BY_KEY[key]
        drawn_all = [chart_value(f, r) for r in rows]
        unit, scale = _unit_of(f, [v for v, _ in drawn_all] + [s["max"] for _, s in drawn_all if s])
        tops: list[float] = []
        for j, (name, pts) in enumerate(series.items()):
            pts = sorted(pts, key=lambda r: at[r["point"][x_key]])
            shift = (j - (len(series) - 1) / 2) * width if kind == "categorical" else 0.0
            xs = [at[r["point"][x_key]] + shift for r in pts]
            drawn = [chart_value(f, r) for r in pts]
            ys = [float("nan") if v is None else v / scale for v, _ in drawn]
            lo = [0.0 if v is None or not sp else max(0.0, v - sp["min"]) / scale for v, sp in drawn]
            hi = [0.0 if v is None or not sp else max(0.0, sp["max"] - v) / scale for v, sp in drawn]
            ax.errorbar(xs, ys, yerr=[lo, hi] if seeds > 1 else None, color=colors[j], marker="o", ms=4,
                        lw=1.3, ls="none" if kind == "categorical" else "-", capsize=3, elinewidth=1, label=name)
            tops += [y + h for y, h in zip(ys, hi) if y == y]
            missing = [x for x, (v, _) in zip(xs, drawn) if v is None]
            if len(series) > MAX_NONE_TEXTS:  # too many series to stack words: an x on the axis each
                ax.plot(missing, [0.0] * len(missing), ls="none", marker="x", ms=6, mew=1.5, color=colors[j],
                        transform=ax.get_xaxis_transform(), clip_on=False)[0].set_in_layout(False)
            for x in missing:  # no value here: say so where the point would be
                if len(series) <= MAX_NONE_TEXTS:
                    ax.annotate("none", (x, 0), xycoords=ax.get_xaxis_transform(), textcoords="offset points",
                                xytext=(0, 3 + (0 if kind == "categorical" else 9 * j)), ha="center", va="bottom",
                                fontsize=7, color=colors[j])
        positive = [t for t in tops if t > 0]
        thresh = _log_threshold(f, positive)
        how = [h for h in (chart_how(f, seeds), "log scale" if thresh else "") if h]
        ax.set_title(f.title + (f" ({unit})" if unit else "") + ("\n" + ", ".join(how) if how else ""), fontsize=9)
        if not positive:  # every point 0 or none: the axis is only its 0
            ax.set_ylim(0, 1)
            ax.set_yticks([0])
        elif thresh:
            ax.set_yscale("symlog", linthresh=thresh, linscale=0.5)
            ax.set_ylim(0, max(positive) * 10 ** (0.15 * (math.log10(max(positive) / thresh) + 1)))
            _plain_log_labels(ax.yaxis)
        else:
            ax.set_ylim(0, max(positive) * 1.15)
            ax.yaxis.set_major_locator(MaxNLocator(5, steps=[1, 2, 2.5, 5, 10], integer=f.kind == "count"
                                                   and seeds == 1))
            ax.yaxis.set_major_formatter(FuncFormatter(_plain_number))
        ax.grid(True, alpha=0.3)
        ax.tick_params(labelsize=8)
    # one set of x ticks for every panel: every swept value, whether or not a panel has a value there
    ax0 = axes[0][0]
    if kind == "log":
        ax0.set_xscale("log")
        pad = 10 ** (0.06 * max(1.0, math.log10(max(pos) / min(pos))))
        ax0.set_xlim(min(pos) / pad, max(pos) * pad)
    elif kind == "linear":
        pad = 0.06 * (max(pos) - min(pos))
        ax0.set_xlim(min(pos) - pad, max(pos) + pad)
    else:
        ax0.set_xlim(-0.5, len(values) - 0.5)
    ax0.set_xticks(pos, [texts[v] for v in values])
    ax0.xaxis.set_minor_locator(NullLocator())
    note = {"linear": "", "log": " (log scale)",
            "categorical": " (categorical: the values are not evenly spaced)" if _numeric(values) else
            " (categorical)"}[kind]
    long_ticks = max(len(t) for t in texts.values()) * len(values) > 60
    for ax in axes[-1]:
        ax.set_xlabel(x_key + note, fontsize=9)
        if long_ticks:
            ax.tick_params(axis="x", labelrotation=25)
            for t in ax.get_xticklabels():
                t.set_ha("right")
    lines = [title]
    if sets:
        lines.append("with " + " ".join(f"--set {s}" for s in sets))
    fig.suptitle("\n".join(lines), fontsize=10)
    foot = []
    if seeds > 1:
        foot.append("error bars: the lowest and the highest seed; counts are drawn per run (sweep.json and the "
                    "table give their sums)")
    foot.append(('an x on the axis' if len(series) > MAX_NONE_TEXTS else '"none"')
                + ": no value at that point (nothing fenced has no fence latency)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    bottom = 0.03
    if len(series) > 1:
        ncol = min(len(series), 4)
        fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=8, frameon=False,
                   bbox_to_anchor=(0.5, 0.025), title=", ".join(others), title_fontsize=8)
        bottom += 0.03 * math.ceil(len(series) / ncol) + 0.02
    fig.text(0.5, 0.005, "; ".join(foot) + ".", ha="center", va="bottom", fontsize=8, color="#555555")
    fig.tight_layout(rect=(0, bottom, 1, 1))
    return fig


def _numeric(values: list) -> bool:
    from ats_stress.iommu_actor.units import parse_duration

    try:
        return all(not isinstance(v, bool) and (isinstance(v, (int, float)) or parse_duration(v) >= 0) for v in values)
    except (TypeError, ValueError):
        return False
