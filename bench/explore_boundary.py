"""Boundary-sampling bench (bench 9): explore's runs to the first UAF, uniform draws against boundary draws.

    python -m bench.explore_boundary [--seeds 5] [--cap 200] [--workers 1] [--policies a,b]

For each planted-bug plug-in of tests/plugins/planted.py, each explore seed and each way of drawing (``explore.boundary: 0``, every duration log-uniform; and
the default share, 0.3, at the edges of the policy's and the hardware's clocks), explore's variants
are run in order, exactly as explore draws and checks them (``--check uaf``), until the first that
violates; the figure is how many runs that took (``> cap`` when none of the first ``cap`` did). The
ratio is uniform / boundary per seed: above 1, boundary sampling needed fewer runs.

The scenario is small on purpose (2 endpoints in one domain, one CPU with its command queue and a
second queue for the plug-ins' fence commands (two CPUs for the CERROR race), 1,000 unmaps/s, 1.8 s
runs; the grammar draws one hang per variant, its duration in the decade around the clock that
matters): a run takes a tenth to a fifth of a second, the whole bench about six minutes on this
shared machine. What it shows:

- ``test-grace-race`` fails only when a hang ends within its ``grace`` (2 ms) after its 1 s software
  timeout (counted from the first CMD_SYNC behind the hang, about a millisecond after it starts):
  boundary draws put hangs at 1 s x (1 + 1e-3), where log-uniform ones rarely go.
- ``test-cerror-race``: the same bug after the hardware's CERROR_ATC_INV_SYNC, with
  ``hardware.atc_inv_completion_timeout`` 50 ms: a short clock, already dense under log-uniform, and
  a window (within 2 ms of the first CERROR, before the other queue's) its edges hit less often.
- ``test-skip-last-master`` leaks with no fault at all: a bug with no window, where the draws spent
  at the edges cost nothing.

Writes bench/results/explore_boundary.json and prints the table (docs/performance.md, bench 9).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import machine, write_result  # noqa: E402

PLANTED = ROOT / "tests" / "plugins" / "planted.py"
#: policy -> (CPUs, hardware, the grammar's fault durations): the decade around the clock that matters
#: (with wider ranges the counts grow for both ways of drawing). The race after CERROR needs a second
#: CPU (the other queue's answer is its false alarm) and a hardware timeout short enough to meet.
POLICIES = {"test-grace-race": (1, {}, ["200ms", "1500ms"]),
            "test-cerror-race": (2, {"atc_inv_completion_timeout": "50ms"}, ["20ms", "150ms"]),
            "test-skip-last-master": (1, {}, ["200ms", "1500ms"])}
MODES = {"uniform": 0.0, "boundary": None}  # None: the grammar's default share


def scenario(policy: str, boundary: float | None):
    from ats_stress.cluster.scenario import scenario_from_dict

    cpus, hardware, durations = POLICIES[policy]
    explore = {"faults": ["hang"], "steps": [1, 1], "fault_duration": durations, "settle": "300ms"}
    if boundary is not None:
        explore["boundary"] = boundary
    return scenario_from_dict({
        "name": "explore-boundary", "seed": 1, "duration": "1.8s",
        "topology": {"smmus": 1, "endpoints": 2, "domains": 1, "cpus": cpus, "endpoints_per_actor": 2,
                     "pages_per_domain": 8, "spare_pages": 16, "atc_entries": 16},
        "hardware": {"command_queues": cpus + 1, **hardware}, "policy": {"name": policy},
        "workload": {"unmaps_per_s": 1000, "dma_per_endpoint_per_s": 20}, "explore": explore})


def runs_to_first(pool, sc, seed: int, cap: int) -> int | None:
    """Explore's variants of ``seed``, in order, ``pool.capacity`` at a time: how many runs up to and
    including the first that violates ``uaf`` (None: none of the first ``cap``)."""
    from ats_stress.cluster.experiments.clocks import clocks
    from ats_stress.cluster.experiments.explore import base_dict
    from ats_stress.cluster.experiments.grammar import draw_variant, grammar
    from ats_stress.cluster.experiments.properties import select
    from ats_stress.cluster.scenario.writing import normalized

    g, base, checks = grammar(sc), base_dict(sc), select(sc, ["uaf"])
    edges = sorted(clocks(sc).values())
    i = 0
    while i < cap:
        batch = range(i, min(cap, i + pool.capacity))
        jobs = [("check", {"scenario": normalized(draw_variant(base, g, seed, k, edges)), "checks": checks})
                for k in batch]
        hits = [k for k, r in zip(batch, pool.map(jobs)) if "uaf" in r["violated"]]
        if hits:
            return min(hits) + 1
        i = batch.stop
    return None


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=5, help="explore seeds 1..N")
    ap.add_argument("--cap", type=int, default=200, help="runs tried per seed and way before giving up")
    ap.add_argument("--workers", type=int, default=1, help="runs in flight (1: in this process, no Ray)")
    ap.add_argument("--policies", default=",".join(POLICIES), help="comma-separated, of: " + ", ".join(POLICIES))
    args = ap.parse_args(argv if argv is not None else [])
    from ats_stress.cluster import plugins
    from ats_stress.cluster.experiments.clocks import clocks
    from ats_stress.cluster.experiments.pool import Pool

    sources = plugins.load([PLANTED])
    rows = []
    t0 = time.perf_counter()
    with Pool(args.workers, None, sources) as pool:
        for policy in [p for p in args.policies.split(",") if p]:
            shown = {k: v for k, v in clocks(scenario(policy, None)).items()}
            print(f"  {policy}: clocks {', '.join(f'{k} {v:g}s' for k, v in shown.items())}", flush=True)
            for seed in range(1, args.seeds + 1):
                row = {"policy": policy, "seed": seed}
                for mode, share in MODES.items():
                    t = time.perf_counter()
                    row[mode] = runs_to_first(pool, scenario(policy, share), seed, args.cap)
                    row[f"{mode}_wall_s"] = round(time.perf_counter() - t, 1)
                u, b = (row[m] if row[m] is not None else args.cap + 1 for m in MODES)
                row["ratio"] = round(u / b, 2)
                row["ratio_is_lower_bound"] = row["uniform"] is None and row["boundary"] is not None
                rows.append(row)
                fmt = {m: str(row[m]) if row[m] is not None else f">{args.cap}" for m in MODES}
                print(f"  {policy:<22} seed {seed}: uniform {fmt['uniform']:>5}  boundary {fmt['boundary']:>5}  "
                      f"ratio {'>=' if row['ratio_is_lower_bound'] else ''}{row['ratio']:g}", flush=True)
    summary = {}
    for policy in dict.fromkeys(r["policy"] for r in rows):
        rs = [r for r in rows if r["policy"] == policy]
        summary[policy] = {"seeds": len(rs), "boundary_fewer_runs": sum(r["ratio"] > 1 for r in rs),
                           "boundary_more_runs": sum(r["ratio"] < 1 for r in rs),
                           "ratio_geomean": round(_geomean([r["ratio"] for r in rs]), 2)}
        s = summary[policy]
        print(f"  {policy:<22} boundary needed fewer runs on {s['boundary_fewer_runs']} of {s['seeds']} seeds, more "
              f"on {s['boundary_more_runs']}; geometric mean ratio {s['ratio_geomean']:g}")
    data = {"machine": machine(), "cap": args.cap, "workers": args.workers, "wall_s": round(time.perf_counter() - t0, 1),
            "scenario": "2 endpoints in 1 domain, 1 CPU (2 for test-cerror-race) + a fence queue, 1000 unmaps/s, "
                        "20 DMA/s per endpoint, 1.8 s; explore faults [hang], 1 step, durations "
                        "200 ms-1.5 s (20-150 ms for test-cerror-race), settle 300 ms; --check uaf",
            "rows": rows, "summary": summary}
    print(f"  written {write_result('explore_boundary', data)} ({data['wall_s']:.0f} s)")
    return data


def _geomean(xs: list[float]) -> float:
    import math

    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else float("nan")


if __name__ == "__main__":
    main(sys.argv[1:])
