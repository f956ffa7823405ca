"""Benchmark 8: the sim runtime's speed, this tree against an older commit, side by side in one run.

    python -m bench.sim_speed [--old REF] [--repeat 2] [--explore-budget 30]

The old code is taken from git (``git archive REF``, default 8c40386, the commit issue 20 starts
from) into a temporary directory; each measurement is a child process that imports ``ats_stress``
from the old copy or from this tree, so both run on the same interpreter and libraries, alternating
old and new so the machine's load falls on both alike. Three workloads:

- the reference scenario, configs/scenarios/scale-1000-mixed.yaml (1,000 endpoints, 60 s, its chaos);
- 10,000 endpoints (640 domains, 8 device actors, 10 s, no chaos), with each child's peak RSS;
- explore on examples/explore/small.yaml: ``--budget`` variants in one process (``--workers 1``), runs/s
  counted as explore counts them (variants executed plus the runs it extended to judge progress).

Each figure is the best (shortest) of ``--repeat`` tries. The summaries of both (minus ``wall``) are
compared, and the explore's verdicts: the bench says whether they are identical.
Writes bench/results/sim_speed.json and prints the table (docs/performance.md, bench 8).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine, write_result  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OLD = "8c40386"
TEN_THOUSAND = ["topology.endpoints=10000", "topology.domains=640", "topology.endpoints_per_actor=1250",
                "duration=10s", "chaos=[]", "expect={}"]

RUN = r"""
import json, resource, sys, hashlib
import ats_stress
assert ats_stress.__file__.startswith({where!r}), ats_stress.__file__
from ats_stress.cluster.scenario import load_scenario
from ats_stress.cluster.runtime.sim import run_sim
s = run_sim(load_scenario({path!r}, {sets!r}))
wall = s.pop("wall")
digest = hashlib.sha256(json.dumps(s, sort_keys=True).encode()).hexdigest()
print(json.dumps({{"wall_s": wall["time_s"], "events": s["events"], "sim_time_s": s["sim_time_s"],
                  "digest": digest, "uaf": s["uaf_exposures"], "fences": s["fence_count"],
                  "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}}))
"""

EXPLORE = r"""
import json, resource, sys, time
import ats_stress
assert ats_stress.__file__.startswith({where!r}), ats_stress.__file__
from ats_stress.cluster.cli import main
sys.argv = ["ats-stress", "explore", {path!r}, "--budget", {budget!r}, "--workers", "1", "--shrink-max", "0",
            "--seed", "1", "-o", {out!r}, "-q"]
try:
    main()
except SystemExit:
    pass
d = json.load(open({out!r} + "/explore.json"))
runs = d["runs"]["executed"] + d["runs"]["extended"]
verdicts = sorted((v["property"], v.get("variant")) for v in d["violations"])
print(json.dumps({{"wall_s": d["wall_s"], "runs": runs, "runs_per_s": runs / d["wall_s"],
                  "digest": json.dumps(verdicts), "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}}))
"""


def checkout(ref: str, into: Path) -> Path:
    """``git archive REF`` of this repository into INTO/ats_stress (the repository root is the package)."""
    pkg = into / "ats_stress"
    pkg.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], capture_output=True, check=False)
    if archive.returncode:
        raise SystemExit(f"bench.sim_speed: git cannot archive {ref!r}: {archive.stderr.decode().strip()}")
    subprocess.run(["tar", "-x", "-C", str(pkg)], input=archive.stdout, check=True)
    return into


def here(into: Path) -> Path:
    """This tree, importable as ``ats_stress`` from INTO (a symlink: the repository root is the package)."""
    into.mkdir(parents=True)
    (into / "ats_stress").symlink_to(ROOT, target_is_directory=True)
    return into


def child(code: str, where: Path, env: dict[str, str] | None = None) -> dict:
    """Run ``code`` in a fresh interpreter that imports ``ats_stress`` from WHERE (and ``env`` set)."""
    env = dict(os.environ, PYTHONPATH=str(where), **(env or {}))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=str(where))
    if out.returncode:
        raise SystemExit(f"bench: a child run failed in {where}:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def best(tries: list[dict], key: str = "wall_s") -> dict:
    return min(tries, key=lambda d: d[key])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m bench.sim_speed", description=__doc__.split("\n")[0])
    ap.add_argument("--old", default=DEFAULT_OLD, help=f"git ref of the code to compare against (default {DEFAULT_OLD})")
    ap.add_argument("--repeat", type=int, default=2, help="tries of each figure; the best is kept (default 2)")
    ap.add_argument("--explore-budget", type=int, default=30, help="explore variants per try (default 30)")
    ap.add_argument("--only", default="reference,ten_thousand,explore",
                    help="comma-separated workloads (default all three)")
    args = ap.parse_args(argv if argv is not None else sys.argv[1:])
    only = set(args.only.split(","))
    reference = str(ROOT / "configs" / "scenarios" / "scale-1000-mixed.yaml")
    small = str(ROOT / "examples" / "explore" / "small.yaml")
    with tempfile.TemporaryDirectory(prefix="sim-speed-") as tmp:
        sides = {"old": checkout(args.old, Path(tmp) / "old"), "new": here(Path(tmp) / "new")}
        jobs = {
            "reference": lambda w, n: RUN.format(where=str(w), path=reference, sets=[]),
            "ten_thousand": lambda w, n: RUN.format(where=str(w), path=reference, sets=TEN_THOUSAND),
            "explore": lambda w, n: EXPLORE.format(where=str(w), path=small, budget=str(args.explore_budget),
                                                   out=str(Path(tmp) / f"explore-{n}")),
        }
        tries: dict[str, dict[str, list[dict]]] = {j: {"old": [], "new": []} for j in jobs if j in only}
        for _ in range(args.repeat):
            for job in tries:
                for side in ("old", "new"):
                    d = child(jobs[job](sides[side], f"{side}-{len(tries[job][side])}"), sides[side])
                    tries[job][side].append(d)
                    print(f"  {job:12s} {side}: {d['wall_s']:6.1f} s", flush=True)
    rows = {}
    for job, t in tries.items():
        old, new = best(t["old"]), best(t["new"])
        rows[job] = {"old": old, "new": new, "speedup": old["wall_s"] / new["wall_s"],
                     "identical": len({d["digest"] for d in t["old"] + t["new"]}) == 1,
                     "rss_ratio": max(d["maxrss_kib"] for d in t["new"]) / max(d["maxrss_kib"] for d in t["old"]),
                     "tries": t}
    result = {"benchmark": "sim_speed", "old": args.old, "repeat": args.repeat,
              "explore_budget": args.explore_budget, "rows": rows, "machine": machine()}
    print(f"sim speed: this tree against {args.old}, best of {args.repeat} (wall s; identical = same summary"
          " minus wall, or same explore verdicts)")
    print(f"  {'workload':34s} {'old':>8s} {'new':>8s} {'speedup':>8s} {'RSS new/old':>12s} identical")
    names = {"reference": "scale-1000-mixed, 60 s",
             "ten_thousand": "10,000 endpoints, 10 s",
             "explore": f"explore small.yaml, {args.explore_budget} variants"}
    for job, r in rows.items():
        o, n = r["old"], r["new"]
        extra = ""
        if job == "explore":
            extra = f"  ({o['runs_per_s']:.2f} -> {n['runs_per_s']:.2f} runs/s)"
        else:
            extra = (f"  ({o['sim_time_s'] / o['wall_s']:.2f}x -> {n['sim_time_s'] / n['wall_s']:.2f}x real time; "
                     f"peak RSS {o['maxrss_kib'] / 1024:.0f} -> {n['maxrss_kib'] / 1024:.0f} MiB)")
        print(f"  {names[job]:34s} {o['wall_s']:8.1f} {n['wall_s']:8.1f} {r['speedup']:7.2f}x {r['rss_ratio']:11.2f}x"
              f" {'yes' if r['identical'] else 'NO'}{extra}")
    print(f"  written {write_result('sim_speed', result)}")
    return result


if __name__ == "__main__":
    main()
