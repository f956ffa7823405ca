"""The figures ``compare`` and ``sweep`` put in a row: how each comes out of one run's summary, how
the seeds of a row combine (sum, mean or max: each table and chart says which), its unit, and the
per-seed lowest and highest value shown beside it.

One table for the three places that show them (``experiments/compare.py`` builds the rows,
``text.py`` prints them, ``plots.py`` charts them), so a figure cannot be summed in one and
averaged in another.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

#: (unit, seconds per unit) for time figures, largest first
TIME_UNITS = [("s", 1.0), ("ms", 1e-3), ("us", 1e-6), ("ns", 1e-9)]

@dataclass(frozen=True)
class Figure:
    """One figure of a compare or sweep row."""

    key: str  #: the row's key (compare.json, sweep.json)
    label: str  #: its name in a table
    title: str  #: its name on a chart
    over_seeds: str  #: "sum", "mean" or "max" over the seeds of the row
    kind: str  #: "count", "time" (seconds), "ratio" or "rate" (per wall second)
    get: Callable[[dict], Any]  #: its value in one run's summary (None: the run has none)


def _at(*path: str) -> Callable[[dict], Any]:
    def get(s: dict) -> Any:
        for key in path:
            if not isinstance(s, dict):
                return None
            s = s.get(key)
        return s
    return get


FIGURES: list[Figure] = [
    Figure("uaf_exposures", "UAF", "UAF exposures", "sum", "count", _at("uaf_exposures")),
    Figure("uaf_reallocated", "UAF, page reallocated", "UAF exposures to a reallocated page", "sum", "count",
           _at("uaf_reallocated")),
    Figure("lazy_window_dma", "lazy-window DMA", "lazy-window DMA (lazy mode's window, by design)", "sum", "count",
           _at("lazy_window_dma")),
    Figure("healthy_p50", "healthy p50", "healthy unmap p50", "mean", "time", _at("healthy_unmap_latency_s", "p50")),
    Figure("healthy_p99", "healthy p99", "healthy unmap p99", "mean", "time", _at("healthy_unmap_latency_s", "p99")),
    Figure("healthy_max", "healthy max", "healthy unmap max", "max", "time", _at("healthy_unmap_latency_s", "max")),
    Figure("worst_stall_s", "worst stall", "worst healthy stall", "max", "time", _at("worst_stall_s")),
    Figure("sync_timeouts", "sync timeouts", "software sync timeouts", "sum", "count", _at("sync_timeouts")),
    Figure("hw_atc_timeouts", "hw ATC timeouts", "hardware ATC timeouts", "sum", "count", _at("hw_atc_timeouts")),
    Figure("fences", "fences", "fences", "sum", "count", _at("fence_count")),
    Figure("fenced_healthy", "healthy fenced", "healthy devices fenced", "sum", "count", _at("fenced_healthy")),
    Figure("fence_latency_s", "fence latency", "fence latency", "max", "time", _at("fence_latency_s", "max")),
    Figure("recovery_s", "recovery", "recovery", "max", "time", _at("recovery_s", "max")),
    Figure("lockup_s", "irqs-off total", "CPU time with interrupts off", "mean", "time", _at("lockup_s")),
    Figure("irqs_off_max_s", "longest irqs-off", "longest window with interrupts off", "max", "time",
           _at("irqs_off_max_s")),
    Figure("flush_max_s", "longest flush", "longest time inside one flush", "max", "time", _at("flush_max_s")),
    Figure("commands_per_unmap", "cmds/unmap", "commands per unmap", "mean", "ratio", _at("commands_per_unmap")),
    Figure("syncs_per_unmap", "syncs/unmap", "CMD_SYNCs per unmap", "mean", "ratio", _at("syncs_per_unmap")),
    Figure("unmaps_completed", "unmaps done", "unmaps completed", "sum", "count", _at("unmaps", "count")),
    Figure("unmaps_incomplete", "unmaps open", "unmaps incomplete at the end", "sum", "count",
           _at("unmaps", "incomplete")),
    Figure("events_per_s", "events/s", "simulation events per wall second", "mean", "rate", _at("wall", "events_per_s")),
]
BY_KEY = {f.key: f for f in FIGURES}


def combine(fig: Figure, values: list) -> Any:
    """The row's figure from its runs' values: a sum (0 with no run), or a mean or max of the runs
    that have one (None when none has: nothing was fenced, say)."""
    if fig.over_seeds == "sum":
        return sum(v for v in values if v is not None)
    xs = [v for v in values if v is not None]
    if not xs:
        return None
    return max(xs) if fig.over_seeds == "max" else sum(xs) / len(xs)


def spread(values: list) -> dict[str, Any] | None:
    """The per-run lowest and highest value and how many runs had one: ``{"min", "max", "of",
    "runs"}`` (None when no run had a value)."""
    xs = [v for v in values if v is not None]
    if not xs:
        return None
    return {"min": min(xs), "max": max(xs), "of": len(xs), "runs": len(values)}


def flush_modes(runs: list[dict]) -> str | None:
    """The runs' flush mode (strict or lazy); several joined by '/' (never within one compare row)."""
    modes = list(dict.fromkeys(m for m in (_at("flush", "mode")(r) for r in runs) if m))
    return "/".join(modes) or None


def row_figures(runs: list[dict]) -> dict[str, Any]:
    """Every figure of a row over ``runs`` (the runs that did not fail), and ``min_max``: each
    figure's ``spread`` over them."""
    row: dict[str, Any] = {"flush": flush_modes(runs)}
    spreads: dict[str, Any] = {}
    for fig in FIGURES:
        values = [fig.get(r) for r in runs]
        row[fig.key] = combine(fig, values) if runs else None
        spreads[fig.key] = spread(values)
    row["min_max"] = spreads
    return row


def figures_legend() -> dict[str, dict[str, str]]:
    """compare.json's and sweep.json's ``figures``: per key, how the seeds combine and its unit."""
    units = {"count": "count", "time": "s", "ratio": "per unmap", "rate": "per wall second"}
    return {f.key: {"title": f.title, "over_seeds": f.over_seeds, "unit": units[f.kind]} for f in FIGURES}


def time_unit(values: list) -> tuple[str, float]:
    """The unit of a column or panel of times: s from 1 s up, then ms, us, ns, chosen by the largest
    value (so 20,000 ms reads 20 s)."""
    nums = [abs(v) for v in values if isinstance(v, (int, float)) and v]
    ref = max(nums) if nums else 1.0
    return next(((u, k) for u, k in TIME_UNITS if ref >= k), TIME_UNITS[-1])


def chart_value(fig: Figure, row: dict) -> tuple[Any, dict | None]:
    """What a chart draws for ``fig`` of ``row``: (value, its spread over the seeds). A chart shows
    seed-to-seed spread as bars from the lowest to the highest seed, which bracket a mean or a max
    but not a sum: a summed count is drawn per run (the sum over the row's runs), with its spread."""
    value = row.get(fig.key)
    spread_ = (row.get("min_max") or {}).get(fig.key)
    if fig.over_seeds == "sum" and value is not None and row.get("runs"):
        value = value / row["runs"]
    return value, spread_


def chart_how(fig: Figure, seeds: int) -> str:
    """How a chart's figure combines the seeds, for its title: "per run, mean of 3 seeds"."""
    if seeds <= 1:
        return ""
    return {"sum": f"per run, mean of {seeds} seeds", "mean": f"mean of {seeds} seeds",
            "max": f"max of {seeds} seeds"}[fig.over_seeds]
