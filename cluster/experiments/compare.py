"""``ats-stress compare``: one scenario, several policies, several seeds, one table.

Runs are independent sim runs, so they go to a ``Pool`` (``pool.py``): Ray tasks on an embedded
local Ray or a cluster, or this process with one worker. Per-policy rows aggregate the seeds:
counts are totals over the seeds, maxima are the maximum over the seeds, typical latencies and
rates are means. An interruption keeps the runs finished so far (``interrupted`` in the report).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ats_stress.cluster.scenario import Scenario
from ats_stress.cluster.results.summary import write_json

from .pool import Pool, PoolError


def variants(sc: Scenario, policies: list[str], seeds: int) -> list[Scenario]:
    out = []
    for name in policies:
        for k in range(seeds):
            data = sc.model_dump(mode="python")
            # keep parameters that this policy knows; drop the others (they belong to another policy)
            data["policy"] = {"name": name, **policy_params_for(name, sc)}
            data["seed"] = sc.seed + k
            out.append(Scenario.model_validate(data))
    return out


def policy_params_for(name: str, sc: Scenario) -> dict[str, Any]:
    from ats_stress.iommu_actor.policy import get_policy

    if name != sc.policy.name:
        return {}
    known = get_policy(name).Params.model_fields
    return {k: v for k, v in sc.policy.params().items() if k in known}


def _mean(xs: list) -> float | None:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def _max(xs: list) -> float | None:
    xs = [x for x in xs if x is not None]
    return max(xs) if xs else None


def aggregate(label: str, runs: list[dict]) -> dict[str, Any]:
    """One row: sums, worsts and means over the runs that did not fail (a failed run's figures stop
    where its error struck); ``failed`` counts the others, and with none left every figure is None."""
    failed = sum(1 for r in runs if r.get("status") == "failed")
    runs = [r for r in runs if r.get("status") != "failed"]
    row = _figures(runs)
    if not runs:
        row = {k: None for k in row}
    return {"policy": label, "runs": len(runs), "failed": failed, **row, "verdict": _verdict(runs)}


def _verdict(runs: list[dict]) -> list[str] | None:
    """Every failure mode any of the runs showed (cluster/results/verdict.py), in its order; [] is SAFE."""
    from ats_stress.cluster.results.verdict import MODES

    if not runs:
        return None
    seen = {m for r in runs for m in (r.get("verdict") or {}).get("modes", [])}
    return [m for m in MODES if m in seen]


def _figures(runs: list[dict]) -> dict[str, Any]:
    h = [r["healthy_unmap_latency_s"] for r in runs]
    return {
        "uaf_exposures": sum(r["uaf_exposures"] for r in runs),
        "uaf_reallocated": sum(r["uaf_reallocated"] for r in runs),
        "healthy_p50": _mean([x["p50"] for x in h]),
        "healthy_p99": _mean([x["p99"] for x in h]),
        "healthy_max": _max([x["max"] for x in h]),
        "worst_stall_s": _max([r["worst_stall_s"] for r in runs]),
        "sync_timeouts": sum(r["sync_timeouts"] for r in runs),
        "hw_atc_timeouts": sum(r["hw_atc_timeouts"] for r in runs),
        "fences": sum(r["fence_count"] for r in runs),
        "fenced_healthy": sum(r["fenced_healthy"] for r in runs),
        "fence_latency_s": _max([r["fence_latency_s"]["max"] for r in runs]),
        "recovery_s": _max([r["recovery_s"]["max"] for r in runs]),
        "lockup_s": _mean([r["lockup_s"] for r in runs]),
        "commands_per_unmap": _mean([r["commands_per_unmap"] for r in runs]),
        "syncs_per_unmap": _mean([r["syncs_per_unmap"] for r in runs]),
        "unmaps_completed": sum(r["unmaps"]["count"] for r in runs),
        "unmaps_incomplete": sum(r["unmaps"]["incomplete"] for r in runs),
        "events_per_s": _mean([r["wall"]["events_per_s"] for r in runs]),
    }


def run_matrix(scenarios: list[Scenario], pool: Pool, on_result: Callable[[dict], None] | None = None,
               series: bool = False) -> tuple[list[dict | None], str | None]:
    """Run every scenario on the sim runtime through ``pool``: (summaries in scenario order, what
    cut it short: None, "interrupted" or the pool's error; then the runs not finished are None).
    ``series``: each summary also carries its compact time series under "series"."""
    jobs = [("summary", {"scenario": v.model_dump(mode="python"), "series": series}) for v in scenarios]
    results: list[dict | None] = [None] * len(jobs)

    def got(i: int, r: dict) -> None:
        results[i] = r
        if on_result:
            on_result(r)
    try:
        pool.map(jobs, got)
    except KeyboardInterrupt:
        pool.cancel()
        return results, "interrupted"
    except PoolError as exc:  # the runs gathered so far are still written
        pool.cancel()
        return results, str(exc)
    return results, None


def mark_stop(report: dict, stop: str | None) -> None:
    """What cut the runs short and which runs failed, as the CLI reports them (exit 130 or 3)."""
    if stop == "interrupted":
        report["interrupted"] = True
    elif stop:
        report["error"] = stop
    failed = [r for r in report["runs"] if r.get("status") == "failed"]
    if failed:
        report["failed_runs"] = len(failed)
        report["first_error"] = failed[0].get("error")


def run_compare(sc: Scenario, policies: list[str], seeds: int, out: Path | None, workers: int | None = None,
                on_result: Callable[[dict], None] | None = None, address: str | None = None,
                sources: tuple = ()) -> dict:
    """``report["files"]``: what was written under ``out``."""
    with Pool(workers, address, sources) as pool:
        results, stop = run_matrix(variants(sc, policies, seeds), pool, on_result, series=out is not None)
        requeued = pool.requeued
    done = [r for r in results if r is not None]
    series = [r.pop("series", None) for r in done]
    rows = [aggregate(name, [r for r in done if r["policy"] == name]) for name in policies]
    report = {"scenario": sc.name, "policies": policies, "seeds": [sc.seed + k for k in range(seeds)],
              "rows": rows, "runs": done, "requeued": requeued}
    mark_stop(report, stop)
    files: list[Path] = []
    if out is not None:
        write_json(out / "compare.json", report)
        plot_compare(rows, out / "compare.png", title=f"{sc.name}: {seeds} seed(s) per policy")
        files = [out / "compare.json", out / "compare.png"]
        from ats_stress.cluster.results.plots import plot_compare_series

        files += plot_compare_series(sc, done, series, out)  # compare-latency/cmdq/endpoints.png
    report["files"] = [str(f) for f in files]
    return report


CHART_FIGURES = [
    ("uaf_exposures", "UAF exposures (total)", 1.0, ""),
    ("healthy_p99", "healthy unmap p99", 1e3, "ms"),
    ("worst_stall_s", "worst healthy stall", 1.0, "s"),
    ("fence_latency_s", "fence latency (max)", 1.0, "s"),
    ("lockup_s", "CPU lockup (mean)", 1.0, "s"),
    ("syncs_per_unmap", "CMD_SYNCs per unmap", 1.0, ""),
]


def plot_compare(rows: list[dict], path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ats_stress.cluster.results.plots import none_panel

    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    names = [r["policy"] for r in rows]
    for ax, (key, label, scale, unit) in zip(axes.flat, CHART_FIGURES):
        values = [(r.get(key) or 0.0) * scale for r in rows]
        bars = ax.bar(range(len(names)), values, color="#4c72b0")
        ax.set_title(label + (f" ({unit})" if unit else ""), fontsize=10)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=25, ha="right", fontsize=8)
        for b, r in zip(bars, rows):  # a bar of height 0 is invisible: say 0 or n/a under it
            if not r.get(key):
                ax.annotate("n/a" if r.get(key) is None else "0", (b.get_x() + b.get_width() / 2, 0),
                            ha="center", va="bottom", fontsize=7)
        if not any(values):  # no scale to show: one sentence instead of an empty axis around 0
            ax.set_ylim(0, 1)
            none_panel(ax, "n/a under every policy" if all(r.get(key) is None for r in rows) else "0 under every policy")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
