"""``ats-stress sweep``: a grid over scenario parameters and seeds, with a table and a chart.

Each ``--param key.path=v1,v2,...`` is one axis; every combination runs with every seed (on the
sim runtime as Ray tasks through ``pool.py``, like ``compare``; on the ray runtime one live run
after another). Rows aggregate the seeds the way ``compare`` does.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Callable

import yaml

from ats_stress.cluster.scenario import Scenario, ScenarioError, apply_sets, scenario_from_dict
from ats_stress.cluster.results.summary import without_stories, write_json

from .compare import aggregate, mark_stop, run_matrix
from .pool import Pool

MAX_RUNS = 2000


def parse_param(text: str) -> tuple[str, list[Any]]:
    if "=" not in text:
        raise ScenarioError(f"--param {text!r}: write --param key.path=v1,v2,... "
                            "(for example --param policy.sync_timeout=100ms,1s,10s).")
    key, _, values = text.partition("=")
    key = key.strip()
    items = [v.strip() for v in values.split(",") if v.strip()]
    if not key or not items:
        raise ScenarioError(f"--param {text!r}: needs a key path and at least one value.")
    parsed = []
    for v in items:
        try:
            parsed.append(yaml.safe_load(v))
        except yaml.YAMLError:
            parsed.append(v)
    return key, parsed


def grid(sc: Scenario, params: list[str], seeds: int, source: str) -> list[tuple[dict[str, Any], Scenario]]:
    axes = [parse_param(p) for p in params]
    keys = [k for k, _ in axes]
    if len(set(keys)) != len(keys):
        raise ScenarioError("--param: each key may be swept only once.")
    combos = list(itertools.product(*[vals for _, vals in axes]))
    if len(combos) * seeds > MAX_RUNS:
        raise ScenarioError(f"the sweep asks for {len(combos) * seeds} runs; at most {MAX_RUNS} are allowed.")
    out = []
    base = sc.model_dump(mode="python")
    for combo in combos:
        point = dict(zip(keys, combo))
        for k in range(seeds):
            data = yaml.safe_load(yaml.safe_dump(base))  # a deep copy with plain types
            data = apply_sets(data, [f"{key}={yaml.safe_dump(value, default_flow_style=True).strip()}"
                                     for key, value in point.items()] + [f"seed={sc.seed + k}"])
            label = ", ".join(f"{key}={value}" for key, value in point.items())
            out.append((point, scenario_from_dict(data, f"{source} [{label}]")))
    return out


def run_points_live(scenarios: list[Scenario], address: str | None, sources: tuple = (),
                    on_result: Callable[[dict], None] | None = None) -> tuple[list[dict | None], str | None]:
    """The ray runtime: the points one after another on one Ray connection (each point is a
    whole live cluster run; running two at once would share the transport and skew both). Like
    ``run_matrix``: (summaries, None or "interrupted"); a point cut short by Ctrl-C ends the sweep
    with its summary (marked interrupted) and None for the points after it."""
    import ray

    from ats_stress.cluster.runtime.connect import RuntimeInputError
    from ats_stress.cluster.runtime.ray_runtime import connect, run_ray

    results: list[dict | None] = [None] * len(scenarios)
    owned = connect(address)
    try:
        for i, s in enumerate(scenarios):
            try:
                results[i] = without_stories(run_ray(s, address=address, quiet=True, plugins=sources))
            except RuntimeInputError as exc:  # the cluster failed us mid-sweep: keep the points done
                if i == 0:
                    raise
                return results, f"point {i + 1} of {len(scenarios)} could not run live: {exc}"
            if on_result:
                on_result(results[i])
            if results[i].get("status") == "interrupted":  # run_ray caught our Ctrl-C or SIGTERM
                return results, "interrupted"
        return results, None
    finally:
        if owned:
            ray.shutdown()


def run_sweep(sc: Scenario, params: list[str], seeds: int, out: Path | None, source: str = "<scenario>",
              workers: int | None = None, runtime: str = "sim", address: str | None = None,
              sources: tuple = (), on_result: Callable[[dict], None] | None = None,
              points: list[tuple[dict, Scenario]] | None = None) -> dict:
    """``report["files"]``: what was written under ``out``. ``points``: ``grid``'s, if already built."""
    points = points if points is not None else grid(sc, params, seeds, source)
    requeued = 0
    if runtime == "ray":
        results, stop = run_points_live([s for _, s in points], address, sources, on_result)
    else:
        with Pool(workers, address, sources) as pool:
            results, stop = run_matrix([s for _, s in points], pool, on_result)
            requeued = pool.requeued
    rows: list[dict] = []
    by_label: dict[str, list[dict]] = {}
    labels: dict[str, dict] = {}
    for (point, _), r in zip(points, results):
        if r is None:
            continue
        label = ", ".join(f"{k}={v}" for k, v in point.items())
        by_label.setdefault(label, []).append(r)
        labels[label] = point
    for label, runs in by_label.items():
        row = aggregate(label, runs)
        row["point"] = labels[label]
        rows.append(row)
    report = {"scenario": sc.name, "runtime": runtime, "params": [parse_param(p)[0] for p in params],
              "seeds": [sc.seed + k for k in range(seeds)], "rows": rows,
              "runs": [r for r in results if r is not None], "requeued": requeued}
    mark_stop(report, stop)
    files: list[Path] = []
    if out is not None:
        write_json(out / "sweep.json", report)
        files.append(out / "sweep.json")
        if rows:
            plot_sweep(rows, report["params"], out / "sweep.png", title=f"{sc.name}: sweep, {seeds} seed(s) per point")
            files.append(out / "sweep.png")
    report["files"] = [str(f) for f in files]
    return report


SWEEP_FIGURES = [
    ("uaf_exposures", "UAF exposures (total)"),
    ("worst_stall_s", "worst healthy stall (s)"),
    ("fence_latency_s", "fence latency, max (s)"),
    ("syncs_per_unmap", "CMD_SYNCs per unmap"),
]


def plot_sweep(rows: list[dict], params: list[str], path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ats_stress.cluster.results.plots import none_panel, plain_ticks

    x_key = params[0]
    series: dict[str, list[dict]] = {}
    for r in rows:
        rest = ", ".join(f"{k}={v}" for k, v in r["point"].items() if k != x_key) or "all"
        series.setdefault(rest, []).append(r)
    fig, axes = plt.subplots(1, len(SWEEP_FIGURES), figsize=(4.2 * len(SWEEP_FIGURES), 3.8))
    for ax, (key, label) in zip(axes, SWEEP_FIGURES):
        ax.set_title(label, fontsize=10)
        ax.set_xlabel(x_key, fontsize=8)
        values = [r.get(key) for r in rows]
        if not any(values):  # all zero or missing: say so rather than draw an empty axis
            none_panel(ax)
            ax.set_xticks([])
            continue
        for name, pts in series.items():
            xs = [str(p["point"][x_key]) for p in pts]
            ys = [p.get(key) if p.get(key) is not None else float("nan") for p in pts]
            ax.plot(xs, ys, marker="o", label=name)
        plain_ticks(ax, [v for v in values if v is not None])  # no offset labels (1e-5+1.99981e1)
    if len(series) > 1:
        axes[0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
