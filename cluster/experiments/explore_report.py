"""What ``explore`` writes: ``explore.json``, a ``minimal-<property>-<n>.yaml`` per shrunk violation, ``report.md``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml

from ats_stress.cluster.results.summary import write_json
from ats_stress.cluster.scenario import Scenario
from ats_stress.iommu_actor.units import format_duration

from .explore import Search, Violation


class _Flow(dict):
    """A mapping written on one line (a chaos step)."""


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(_Flow, lambda d, data: d.represent_mapping("tag:yaml.org,2002:map", data, flow_style=True))


def compact(d: dict) -> dict:
    """A scenario dict as a person would write it: the fields that differ from their defaults, in
    the order of the format, each chaos step starting with its time and fault."""
    sc = Scenario.model_validate(d)
    dumped = sc.model_dump(mode="json", exclude_defaults=True, exclude={"explore"})
    dumped["policy"] = {"name": sc.policy.name, **sc.policy.params()}
    dumped["chaos"] = [{"at": st["at"], "fault": st["fault"], **st} for st in dumped.get("chaos", [])]
    return {k: dumped[k] for k in Scenario.model_fields if k in dumped}


def _steps(d: dict | None) -> int | None:
    return None if d is None else len(d["chaos"])


def minimal_name(v: Violation) -> str:
    return f"minimal-{v.prop}-{v.n}.yaml"


def violation_record(v: Violation) -> dict[str, Any]:
    c = v.chain
    rec: dict[str, Any] = {"property": v.prop, "n": v.n, "variant": v.variant, "seed": v.seed,
                           "observed": v.observed, "original_steps": _steps(v.original),
                           "shrunk": bool(c and c.best is not None)}
    if c is not None:
        rec.update(shrink_runs=c.spent, shrink_steps=max(0, c.round_no - 1), shrink_complete=c.complete,
                   minimal_steps=_steps(c.best), minimal_observed=c.best_observed,
                   minimal_file=minimal_name(v) if c.best is not None else None)
    rec["original"] = compact(v.original)
    rec["minimal"] = compact(c.best) if c is not None and c.best is not None else None
    return rec


def result(s: Search, policy_origin: str, plugin_args: list[str]) -> dict[str, Any]:
    return {
        "scenario": s.sc.name, "policy": s.sc.policy.name, "policy_origin": policy_origin,
        "plugin_args": plugin_args, "seed": s.seed, "budget": s.budget, "time_limit_s": s.time_limit,
        "checks": s.checks, "shrink_runs": s.shrink_runs, "shrink_max": s.shrink_max,
        "explored": s.explored, "violating": {p: sum(1 for v in s.violations if v.prop == p)
                                              for p in dict.fromkeys(v.prop for v in s.violations)},
        "failed_runs": s.failed_runs, "first_error": s.first_error,
        "interrupted": s.interrupted, "error": s.error, "time_up": s.time_up,
        "runs": {"variants": s.explored, "shrinking": sum(v.chain.spent for v in s.violations if v.chain),
                 "executed": s.executed, "requeued": s.requeued},
        "wall_s": time.monotonic() - s.started,
        "violations": [violation_record(v) for v in s.violations],
    }


def _yaml(d: dict) -> str:
    d = {**d, "chaos": [_Flow(st) for st in d["chaos"]]}
    return yaml.dump(d, Dumper=_Dumper, sort_keys=False, default_flow_style=None, width=110)


def write_minimal(path: Path, rec: dict, res: dict) -> None:
    check = next(c for c in res["checks"] if c["property"] == rec["property"])
    head = [f"# Found by ats-stress explore on {res['scenario']} under {res['policy']} (explore seed {res['seed']}, "
            f"variant {rec['variant']}):",
            f"# property {rec['property']} ({check['means']}) violated: {check['figure']} = {rec['minimal_observed']}.",
            f"# Shrunk from {rec['original_steps']} to {rec['minimal_steps']} chaos step(s) "
            f"in {rec['shrink_runs']} runs"
            + ("" if rec["shrink_complete"] else " (cut short: a smaller one may exist)") + ".",
            f"# Reproduce: ats-stress run {path.name}{''.join(' ' + a for a in res['plugin_args'])} "
            f"(exits 1 on expect {check['figure']})."]
    minimal = {**rec["minimal"], "name": f"{res['scenario']}-{rec['property']}-{rec['n']}"[:120]}
    path.write_text("\n".join(head) + "\n" + _yaml(minimal))


def step_text(step: dict) -> str:
    """``hang of endpoint(s) [3] at 1.2s for 2s``, then the fault's parameters."""
    extra = {k: v for k, v in step.items() if k not in ("at", "fault", "endpoints", "duration")}
    dur = f" for {format_duration(step['duration'])}" if "duration" in step else ""
    params = "".join(f", {k} {v}" for k, v in extra.items())
    return f"{step['fault']} of endpoint(s) {step.get('endpoints')} at {format_duration(step['at'])}{dur}{params}"


def smallest(res: dict, prop: str) -> dict | None:
    """The shrunk violation of ``prop`` with the fewest chaos steps (the first such), from explore.json."""
    shrunk = [v for v in res["violations"] if v["property"] == prop and v["shrunk"]]
    return min(shrunk, key=lambda v: (v["minimal_steps"], v["n"]), default=None)


def report_md(res: dict) -> str:
    md = [f"# explore: {res['scenario']} under {res['policy']}", "",
          f"Policy `{res['policy']}` ({res['policy_origin']}); explore seed {res['seed']}; "
          f"{res['explored']} variant(s) run" + (f" of a budget of {res['budget']}" if res["budget"] else "")
          + f"; {res['runs']['shrinking']} run(s) spent shrinking; {res['wall_s']:.0f} s."]
    if res["interrupted"]:
        md.append("**Interrupted**: this covers what was found up to then.")
    if res["time_up"]:
        md.append(f"The time limit ({format_duration(res['time_limit_s'])}) ended the search.")
    if res["error"]:
        md.append(f"**Stopped by an error**: {res['error']} This covers what was found up to then.")
    if res["failed_runs"]:
        md.append(f"{res['failed_runs']} variant run(s) failed with an error (first: `{res['first_error']}`).")
    md += ["", "| property | holds when | violating variants | shrunk | smallest schedule |", "|---|---|---|---|---|"]
    for c in res["checks"]:
        vs = [v for v in res["violations"] if v["property"] == c["property"]]
        best = smallest(res, c["property"])
        schedule = "; ".join(step_text(st) for st in best["minimal"]["chaos"]) if best else "-"
        md.append(f"| {c['property']} | {c['means']} | {len(vs)} of {res['explored']} | "
                  f"{sum(v['shrunk'] for v in vs)} | {schedule} |")
    for c in res["checks"]:
        vs = [v for v in res["violations"] if v["property"] == c["property"]]
        if not vs:
            continue
        md += ["", f"## {c['property']}: {len(vs)} violating variant(s)", ""]
        for v in vs:
            if not v["shrunk"]:
                md.append(f"- variant {v['variant']} (seed {v['seed']}): {c['figure']} = {v['observed']}, "
                          f"{v['original_steps']} step(s); not shrunk")
                continue
            m = v["minimal"]
            top = m.get("topology", {})
            md += [f"- variant {v['variant']} (seed {v['seed']}): {c['figure']} = {v['observed']}; minimal "
                   f"`{v['minimal_file']}` ({v['original_steps']} -> {v['minimal_steps']} step(s), "
                   f"{v['shrink_runs']} runs{'' if v['shrink_complete'] else ', cut short'}): "
                   f"{format_duration(m['duration'])} run, {top.get('endpoints', 'default')} endpoints, "
                   f"{c['figure']} = {v['minimal_observed']}"]
            md += [f"  - {step_text(st)}" for st in m["chaos"]]
            md.append(f"  - reproduce: `ats-stress run {v['minimal_file']}"
                      f"{''.join(' ' + a for a in res['plugin_args'])}`")
    return "\n".join(md) + "\n"


def write_outputs(s: Search, out: Path, policy_origin: str, plugin_args: list[str]) -> tuple[dict, list[Path]]:
    """Write everything; (the explore.json content, the files written)."""
    res = result(s, policy_origin, plugin_args)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("minimal-*.yaml"):  # never leave an earlier search's findings beside this one's
        old.unlink()
    files = [out / "explore.json"]
    write_json(files[0], res)
    for rec in res["violations"]:
        if rec.get("minimal_file"):
            files.append(out / rec["minimal_file"])
            write_minimal(files[-1], rec, res)
    files.append(out / "report.md")
    files[-1].write_text(report_md(res))
    return res, files
