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
from ats_stress.cluster.results.figures import figures_legend
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
            out.append((point, scenario_from_dict(data, f"{source} [{point_label(point)}]")))
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


def point_label(point: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in point.items())


def policies_of(points: list[tuple[dict, Scenario]]) -> list[str]:
    """The policies a sweep runs, in order (several when it sweeps policy.name)."""
    return list(dict.fromkeys(s.policy.name for _, s in points))


def policy_text(sc: Scenario, points: list[tuple[dict, Scenario]], params: list[str]) -> str:
    """"policy quarantine (version=v2)" or "policies amd-iommu, intel-vtd (swept)", for titles: the
    policy's own parameters the scenario sets and the sweep does not."""
    names = policies_of(points)
    if len(names) > 1:
        return "policies " + ", ".join(names)
    swept = {k.split(".", 1)[1] for k in params if k.startswith("policy.")}
    fixed = {k: v for k, v in sc.policy.params().items() if k not in swept}
    return f"policy {names[0]}" + (f" ({', '.join(f'{k}={v}' for k, v in fixed.items())})" if fixed else "")


def run_sweep(sc: Scenario, params: list[str], seeds: int, out: Path | None, source: str = "<scenario>",
              workers: int | None = None, runtime: str = "sim", address: str | None = None,
              sources: tuple = (), on_result: Callable[[dict], None] | None = None,
              points: list[tuple[dict, Scenario]] | None = None, sets: list[str] = ()) -> dict:
    """``report["files"]``: what was written under ``out``. ``points``: ``grid``'s, if already built;
    ``sets``: the --set options the scenario was loaded with, recorded in sweep.json."""
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
    first: dict[str, tuple[dict, Scenario]] = {}
    for (point, s), r in zip(points, results):
        label = point_label(point)
        first.setdefault(label, (point, s))
        if r is not None:
            by_label.setdefault(label, []).append(r)
    for label, runs in by_label.items():
        point, s = first[label]
        row = aggregate(s.policy.name, runs)  # each row's policy is the policy its runs ran
        rows.append({**row, "policy_params": s.policy.params(), "point": point, "label": label})
    keys = [parse_param(p)[0] for p in params]
    report = {"scenario": sc.name, "runtime": runtime, "policy": sc.policy.name, "policies": policies_of(points),
              "params": keys, "sets": list(sets), "seeds": [sc.seed + k for k in range(seeds)],
              "figures": figures_legend(), "rows": rows,
              "runs": [r for r in results if r is not None], "requeued": requeued}
    mark_stop(report, stop)
    files: list[Path] = []
    if out is not None:
        write_json(out / "sweep.json", report)
        files.append(out / "sweep.json")
        if rows:
            from ats_stress.cluster.results.plots import plot_sweep

            plot_sweep(rows, keys, out / "sweep.png", title=sweep_title(sc, points, keys, seeds, runtime),
                       seeds=seeds, sets=list(sets))
            files.append(out / "sweep.png")
    report["files"] = [str(f) for f in files]
    return report


def sweep_title(sc: Scenario, points: list[tuple[dict, Scenario]], keys: list[str], seeds: int, runtime: str) -> str:
    n = len({point_label(p) for p, _ in points})
    seed_text = f"seed {sc.seed}" if seeds == 1 else f"{seeds} seeds ({sc.seed}-{sc.seed + seeds - 1})"
    return f"{sc.name} · {policy_text(sc, points, keys)} · {n} points, {seed_text} each · {runtime} runtime"
