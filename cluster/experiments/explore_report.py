"""What ``explore`` writes: ``explore.json``, a ``minimal-<property>-<n>.yaml`` per shrunk violation, ``report.md``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ats_stress.cluster.results.summary import write_json
from ats_stress.cluster.scenario import EXPECTABLE, Scenario
from ats_stress.cluster.scenario.writing import as_json, duration_text, plain, scenario_yaml
from ats_stress.iommu_actor.units import format_duration

from ats_stress.cluster.scenario.explore import Explore

from .explore import Search, Violation


def compact(d: dict) -> dict:
    """A scenario dict as a person would write it (``scenario.writing.plain``): the fields that
    differ from their defaults, in the library's order, each chaos step starting with its time and
    fault, no float noise; durations in seconds (explore.json is for programs; the YAML has units)."""
    out = as_json(plain(Scenario.model_validate(d)))
    out.setdefault("chaos", [])
    return out


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
    if rec["minimal"] is not None:
        rec["needs_lie"] = needs_lie(rec["minimal"])
    return rec


def needs_lie(scenario: dict) -> bool:
    """Whether a (minimal) schedule has a lying device: the shrinker tries a plain hang in place of
    every other fault, so a lie left in a minimal schedule is one the violation needs."""
    return any(st["fault"] == "lie" for st in scenario["chaos"])


def shown(figure: str, value: Any) -> str:
    """An observed figure as the report writes it (a time with its unit)."""
    if isinstance(value, float) and EXPECTABLE.get(figure, ((), False))[1]:
        return format_duration(value)
    return f"{value:g}" if isinstance(value, float) else str(value)


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
                 "executed": s.executed, "requeued": s.requeued, "extended": s.extended},
        "boundary": (s.sc.explore.boundary if s.sc.explore else Explore().boundary),
        "clocks": s.clocks,
        "wall_s": time.monotonic() - s.started,
        "violations": [violation_record(v) for v in s.violations],
    }


def write_minimal(path: Path, rec: dict, res: dict) -> None:
    check = next(c for c in res["checks"] if c["property"] == rec["property"])
    head = [f"# Found by ats-stress explore on {res['scenario']} under {res['policy']} (explore seed {res['seed']}, "
            f"variant {rec['variant']}):",
            f"# property {rec['property']} ({check['means']}) violated: {check['figure']} = "
            f"{shown(check['figure'], rec['minimal_observed'])}.",
            *([f"# It fails with no fault at all (chaos: []): the policy breaks on a healthy machine."]
              if rec["minimal_steps"] == 0 else []),
            *([f"# It needs a lying device (answers invalidations without invalidating): nothing a driver sees "
               "tells one apart, so every policy fails this way."] if rec.get("needs_lie") else []),
            f"# Shrunk from {rec['original_steps']} to {rec['minimal_steps']} chaos step(s) "
            f"in {rec['shrink_runs']} runs"
            + ("" if rec["shrink_complete"] else " (cut short: a smaller one may exist)") + ".",
            f"# Reproduce: ats-stress run {path.name}{''.join(' ' + a for a in res['plugin_args'])} "
            f"(exits 1 on expect {check['figure']})."]
    minimal = Scenario.model_validate({**rec["minimal"], "name": f"{res['scenario']}-{rec['property']}-{rec['n']}"[:120]})
    path.write_text("\n".join(head) + "\n" + scenario_yaml(minimal))


def step_text(step: dict) -> str:
    """``hang of endpoint(s) [3] at 1.2s for 2s``, then the fault's parameters."""
    def value(k: str, v: Any) -> str:
        if k == "latency":
            return f"median {duration_text(v['median'])} p99 {duration_text(v['p99'])}"
        return duration_text(v) if k in ("period", "hang_for") else str(v)

    extra = {k: v for k, v in step.items() if k not in ("at", "fault", "endpoints", "duration")}
    dur = f" for {duration_text(step['duration'])}" if "duration" in step else ""
    params = "".join(f", {k} {value(k, v)}" for k, v in extra.items())
    return f"{step['fault']} of endpoint(s) {step.get('endpoints')} at {duration_text(step['at'])}{dur}{params}"


def schedule_text(v: dict) -> str:
    """A shrunk violation's minimal schedule in words (``no fault`` when it has none)."""
    steps = v["minimal"]["chaos"]
    return "; ".join(step_text(st) for st in steps) if steps else "no fault"


def smallest(res: dict, prop: str) -> dict | None:
    """The shrunk violation of ``prop`` with the fewest chaos steps (the first such; one that needs no
    lying device before one that does), from explore.json."""
    shrunk = [v for v in res["violations"] if v["property"] == prop and v["shrunk"]]
    return min(shrunk, key=lambda v: (bool(v.get("needs_lie")), v["minimal_steps"], v["n"]), default=None)


def findings(res: dict) -> list[str]:
    """One sentence per property whose smallest schedule says something on its own: it fails with no
    fault at all, or only with a lying device."""
    out = []
    for c in res["checks"]:
        best = smallest(res, c["property"])
        if best is None:
            continue
        if best["minimal_steps"] == 0:
            out.append(f"{c['property']} fails with no fault at all: {best['minimal_file']} (chaos: []) violates it "
                       "on a healthy machine.")
        elif best.get("needs_lie"):
            out.append(f"{c['property']} was found only with a lying device (answers invalidations without "
                       f"invalidating, {best['minimal_file']}): nothing a driver sees tells one apart, so every "
                       "policy fails this way; expected, not a flaw of this policy.")
    return out


def report_md(res: dict) -> str:
    md = [f"# explore: {res['scenario']} under {res['policy']}", "",
          f"Policy `{res['policy']}` ({res['policy_origin']}); explore seed {res['seed']}; "
          f"{res['explored']} variant(s) run" + (f" of a budget of {res['budget']}" if res["budget"] else "")
          + f"; {res['runs']['shrinking']} run(s) spent shrinking; {res['wall_s']:.0f} s."]
    if res["runs"].get("extended"):
        md.append(f"{res['runs']['extended']} variant(s) still had an unmap waiting when the run ended, before "
                  "progress could be judged: progress was judged on each run again until the last fault's end plus "
                  "the bound (plus 1 s); the other properties on the run as drawn.")
    if res.get("clocks") and res.get("boundary"):
        md.append(f"Boundary sampling: {res['boundary']:.0%} of durations, latencies and gaps between steps were "
                  "drawn at the edge of a clock (x (1 +- 1e-3, 1e-2, 1e-1) or +- a few us): "
                  + ", ".join(f"{k} {format_duration(v)}" for k, v in res["clocks"].items()) + ".")
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
        schedule = schedule_text(best) if best else "-"
        md.append(f"| {c['property']} | {c['means']} | {len(vs)} of {res['explored']} | "
                  f"{sum(v['shrunk'] for v in vs)} | {schedule} |")
    said = findings(res)
    if said:
        md += [""] + [f"**{line}**" for line in said]
    for c in res["checks"]:
        vs = [v for v in res["violations"] if v["property"] == c["property"]]
        if not vs:
            continue
        md += ["", f"## {c['property']}: {len(vs)} violating variant(s)", ""]
        for v in vs:
            if not v["shrunk"]:
                md.append(f"- variant {v['variant']} (seed {v['seed']}): {c['figure']} = "
                          f"{shown(c['figure'], v['observed'])}, {v['original_steps']} step(s); not shrunk")
                continue
            m = v["minimal"]
            top = m.get("topology", {})
            md += [f"- variant {v['variant']} (seed {v['seed']}): {c['figure']} = {shown(c['figure'], v['observed'])}; "
                   f"minimal `{v['minimal_file']}` ({v['original_steps']} -> {v['minimal_steps']} step(s), "
                   f"{v['shrink_runs']} runs{'' if v['shrink_complete'] else ', cut short'}): "
                   f"{format_duration(m['duration'])} run, {top.get('endpoints', 'default')} endpoints, "
                   f"{c['figure']} = {shown(c['figure'], v['minimal_observed'])}"
                   + ("; needs a lying device" if v.get("needs_lie") else "")]
            md += [f"  - {step_text(st)}" for st in m["chaos"]] or ["  - no fault at all (chaos: [])"]
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
