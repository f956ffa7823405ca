"""``ats-stress compare``: one scenario, several policies or policy variants, several seeds, one table.

Runs are independent sim runs, so they go to a ``Pool`` (``pool.py``): Ray tasks on an embedded
local Ray or a cluster, or this process with one worker. A column is a policy, or a variant of one
(``quarantine:version=v1``: NAME, then ``:key=value`` for each parameter). Its row combines the
seeds figure by figure, as ``cluster/results/figures.py`` says (counts summed, worst cases the
maximum, typical latencies and rates the mean) and keeps each figure's lowest and highest seed
(``min_max``). An interruption keeps the runs finished so far (``interrupted`` in the report).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from ats_stress.iommu_actor.suggest import did_you_mean
from ats_stress.cluster.scenario import Scenario, ScenarioError
from ats_stress.cluster.results.figures import figures_legend, row_figures
from ats_stress.cluster.results.summary import write_json

from .pool import Pool, PoolError

FLUSH_MODES = ("strict", "lazy", "default")


@dataclass(frozen=True)
class PolicyVariant:
    """One column of compare: a policy and the parameters given for it on the command line;
    ``label`` names the column as the command line wrote it (``NAME`` or ``NAME:key=value:...``)."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    label: str = ""

    def __post_init__(self):
        if not self.label:
            object.__setattr__(self, "label", ":".join([self.name] + [f"{k}={v}" for k, v in self.params.items()]))


def parse_variant(spec: str) -> PolicyVariant:
    """``NAME`` or ``NAME:key=value[:key=value...]``; ScenarioError naming the spec when malformed.
    The policy and its parameters are checked by ``check_variant``."""
    name, *pairs = [p.strip() for p in spec.split(":")]
    if not name:
        raise ScenarioError(f"--policies {spec!r}: a policy name comes first, then :key=value for each parameter "
                            "(for example quarantine:version=v1).")
    params: dict[str, Any] = {}
    texts: list[str] = []
    for pair in pairs:
        key, eq, value = (s.strip() for s in pair.partition("="))
        if not eq or not key or not value:
            raise ScenarioError(f"--policies {spec!r}: {pair!r} is not key=value; write NAME:key=value, several "
                                "joined by ':' (for example fence-on-timeout:culprit_search=linear:sync_timeout=100ms).")
        if key in params:
            raise ScenarioError(f"--policies {spec!r}: parameter {key!r} is given twice.")
        try:
            params[key] = yaml.safe_load(value)
        except yaml.YAMLError:
            params[key] = value
        texts.append(f"{key}={value}")
    return PolicyVariant(name, params, ":".join([name] + texts))


def parse_policies(text: str) -> list[PolicyVariant]:
    """``--policies``: comma-separated variants, a repeat (same label) run once."""
    out: dict[str, PolicyVariant] = {}
    for spec in text.split(","):
        if spec.strip():
            v = parse_variant(spec)
            out.setdefault(v.label, v)
    return list(out.values())


def variant_params(v: PolicyVariant, sc: Scenario) -> dict[str, Any]:
    """The scenario's parameters that the variant's policy has (its own policy's, when it names
    that), overridden by the variant's own."""
    return {**policy_params_for(v.name, sc), **v.params}


def check_variant(v: PolicyVariant, sc: Scenario) -> None:
    """ScenarioError naming the variant when its policy is unknown or a parameter is wrong."""
    from ats_stress.iommu_actor.policy import PolicyError, validate_params

    try:
        validate_params(v.name, variant_params(v, sc))
    except PolicyError as exc:
        raise ScenarioError(f"--policies {v.label!r}: {str(exc).replace('Value error, ', '')}.") from None


def with_flush(sc: Scenario, flush: str | None) -> Scenario:
    """The scenario with ``host.flush`` forced (``--flush``), or as it is."""
    if flush is None:
        return sc
    if flush not in FLUSH_MODES:
        raise ScenarioError(f"--flush {flush!r}: {did_you_mean(flush, ('strict', 'lazy', 'default'))}the modes are strict, lazy and default (each policy's Kconfig "
                            "default).")
    data = sc.model_dump(mode="python")
    data["host"]["flush"] = flush
    return Scenario.model_validate(data)


def flush_text(sc: Scenario, forced: bool) -> str:
    """What decided the flush mode of every column, for titles."""
    if sc.host.flush == "default":
        return "flush: each policy's Kconfig default" + (" (--flush default)" if forced else "")
    return f"flush: {sc.host.flush} for every policy" + (" (--flush)" if forced else " (the scenario's host.flush)")


def variants(sc: Scenario, policies: list, seeds: int) -> list[Scenario]:
    """Every (variant, seed) scenario, variant by variant, seeds consecutive."""
    out = []
    for v in policies:
        v = v if isinstance(v, PolicyVariant) else parse_variant(v)
        for k in range(seeds):
            data = sc.model_dump(mode="python")
            # keep parameters that this policy knows; drop the others (they belong to another policy)
            data["policy"] = {"name": v.name, **variant_params(v, sc)}
            data["seed"] = sc.seed + k
            out.append(Scenario.model_validate(data))
    return out


def policy_params_for(name: str, sc: Scenario) -> dict[str, Any]:
    from ats_stress.iommu_actor.policy import get_policy

    if name != sc.policy.name:
        return {}
    known = get_policy(name).Params.model_fields
    return {k: v for k, v in sc.policy.params().items() if k in known}


def aggregate(label: str, runs: list[dict]) -> dict[str, Any]:
    """One row: each figure over the runs that did not fail (a failed run's figures stop where its
    error struck), combined as ``figures.FIGURES`` says, with ``min_max`` per figure; ``failed``
    counts the others, and with none left every figure is None."""
    failed = sum(1 for r in runs if r.get("status") == "failed")
    runs = [r for r in runs if r.get("status") != "failed"]
    return {"policy": label, "runs": len(runs), "failed": failed, **row_figures(runs), "verdict": _verdict(runs)}


def _verdict(runs: list[dict]) -> list[str] | None:
    """Every failure mode any of the runs showed (cluster/results/verdict.py), in its order; [] is SAFE."""
    from ats_stress.cluster.results.verdict import MODES

    if not runs:
        return None
    seen = {m for r in runs for m in (r.get("verdict") or {}).get("modes", [])}
    return [m for m in MODES if m in seen]


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


def run_compare(sc: Scenario, policies: list, seeds: int, out: Path | None, workers: int | None = None,
                on_result: Callable[[dict], None] | None = None, address: str | None = None,
                sources: tuple = (), flush: str | None = None, sets: list[str] = ()) -> dict:
    """Every policy (a name or a ``PolicyVariant``) on every seed; ``flush`` forces host.flush for
    all (``--flush``); ``sets``: the --set options the scenario was loaded with, for the record.
    ``report["files"]``: what was written under ``out``."""
    sc = with_flush(sc, flush)
    vs = [v if isinstance(v, PolicyVariant) else parse_variant(v) for v in policies]
    for v in vs:  # a bad variant is bad input before any run, not a validation traceback in a worker
        check_variant(v, sc)
    with Pool(workers, address, sources) as pool:
        results, stop = run_matrix(variants(sc, vs, seeds), pool, on_result, series=out is not None)
        requeued = pool.requeued
    rows = []
    for i, v in enumerate(vs):
        runs = [r for r in results[i * seeds:(i + 1) * seeds] if r is not None]
        for r in runs:
            r["variant"] = v.label
        rows.append({**aggregate(v.label, runs), "policy_name": v.name, "policy_params": variant_params(v, sc)})
    done = [r for r in results if r is not None]
    series = [r.pop("series", None) for r in done]
    report = {"scenario": sc.name, "policies": [v.label for v in vs], "seeds": [sc.seed + k for k in range(seeds)],
              "flush": sc.host.flush, "flush_forced": flush is not None, "sets": list(sets),
              "figures": figures_legend(), "rows": rows, "runs": done, "requeued": requeued}
    mark_stop(report, stop)
    files: list[Path] = []
    if out is not None:
        from ats_stress.cluster.results.plots import plot_compare, plot_compare_series

        write_json(out / "compare.json", report)
        plot_compare(rows, out / "compare.png", title=compare_title(sc, vs, seeds, flush is not None), seeds=seeds)
        files = [out / "compare.json", out / "compare.png"]
        files += plot_compare_series(sc, done, series, out)  # compare-latency/cmdq/endpoints.png
    report["files"] = [str(f) for f in files]
    return report


def compare_title(sc: Scenario, vs: list[PolicyVariant], seeds: int, forced: bool) -> str:
    """What the chart compares: scenario, columns, seeds, flush mode, runtime."""
    seed_text = f"seed {sc.seed}" if seeds == 1 else f"{seeds} seeds ({sc.seed}-{sc.seed + seeds - 1})"
    return (f"{sc.name}: {len(vs)} {'policy' if len(vs) == 1 else 'policies'}, {seed_text} each · "
            f"{flush_text(sc, forced)} · sim runtime")
