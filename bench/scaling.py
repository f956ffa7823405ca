"""Scaling bench (bench 6): SMMU commands per wall second for 1, 2 and 4 SMMUs on a multi-node Ray cluster.

    python -m bench.scaling [--smmus 1,2,4] [--workers 2] [--duration S] [--time-scales 30,20,12,8] [--transport stream|ray]

Starts a ``ray.cluster_utils.Cluster`` (as tests/test_ray_cluster.py does): a head node with no
CPUs, which holds the driver and, by the runtime's node affinity, the SMMU actors, and --workers
worker nodes of 1 CPU each, over which the device actors spread (SPREAD scheduling). On it, for
each SMMU count N, the live-throughput workload of bench/live_throughput.py (its ``scenario()``):
quarantine policy with per-device batches, no DMA, no chaos, 256 CPUs and 257 command queues per
SMMU, 0.5 scenario s, scaled so each SMMU gets exactly the 1-SMMU workload: 256 endpoints, 64
domains and 2 device actors of 128 endpoints per SMMU, and 200,000 unmaps/s per SMMU, on the
stream transport (--transport ray: one Ray call per batch).

The scenario is fixed in scenario time, so time_scale sets the offered load (N x ~2 M commands
per scenario s): too large a time_scale measures the offered load (every unmap done, the queues
idle part of the time), too small a one overloads the actors (flagged saturated). So each N runs
at each of --time-scales, light to heavy load, and its figure
is its best run that completed unsaturated (bench/live_throughput.py's run_once and best_run: the
same runs as bench 3); a figure whose run finished every unmap is marked as the offered load (a
lower bound). Default time scales 30, 20, 12, 8: the heavier loads overload 1 SMMU, the lighter ones
leave 4 SMMUs room (on 2 shared cores they carry less each).

Measured per N: SMMU commands submitted per wall second of the run (all SMMUs together), the
ratio to the 1-SMMU figure of the same cluster (the baseline, same process), the per-SMMU
efficiency (ratio / N), the machine's mean CPU use during the run, and where every actor ran (the
run summary's placement: it must show the device actors on several nodes; recorded per run).

Honest caveat: the Cluster's nodes are processes on this one machine and share its CPUs (2 here).
Each SMMU actor and its device actors need CPU; once the cores are full (the CPU % column: the
machine's mean use over the run_ray call) more SMMUs cannot add commands/s, so on 2 cores the
ratio at 4 SMMUs shows the CPU ceiling of the machine, not how the design scales. Ideal is N;
only a machine with spare cores per SMMU (or a real multi-machine cluster) can show it.

Writes bench/results/scaling.json and prints the figures and the ratio.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import machine, number_list, write_result  # noqa: E402
from bench.live_throughput import DEVICE_ACTORS_PER_SMMU, DOMAINS_PER_SMMU, ENDPOINTS_PER_SMMU  # noqa: E402

SMMUS = (1, 2, 4)
TIME_SCALES = (30, 20, 12, 8)
OBJECT_STORE = 100 * 1024 * 1024


def start_cluster(workers: int):
    """Head (no CPUs: driver and SMMU actors) + ``workers`` nodes of 1 CPU; the driver connected."""
    import ray
    from ray.cluster_utils import Cluster

    cur = os.environ.get("PYTHONPATH", "")  # the nodes' workers inherit it: the project must import there
    if str(ROOT) not in cur.split(os.pathsep):
        os.environ["PYTHONPATH"] = str(ROOT) + (os.pathsep + cur if cur else "")
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False,
                                                      "object_store_memory": OBJECT_STORE})
    try:
        for _ in range(workers):
            c.add_node(num_cpus=1, object_store_memory=OBJECT_STORE)
        c.wait_for_nodes()
        ray.init(address=c.address, logging_level="warning")
    except BaseException:
        c.shutdown()
        raise
    return c


def placement(summary: dict) -> dict:
    p = summary["placement"]
    head = p["driver_node_id"]
    nodes = {nid: {"head": nid == head, "smmu_actors": n["smmu_actors"], "device_actors": n["device_actors"],
                   "endpoints": n["endpoints"]} for nid, n in p["nodes"].items()}
    dev_nodes = {a["node_id"] for a in p["actors"] if a["kind"] == "device"}
    return {"driver_node_id": head, "nodes": nodes, "device_actor_nodes": len(dev_nodes),
            "device_actors_on_head": sum(1 for a in p["actors"] if a["kind"] == "device" and a["node_id"] == head)}


def measure(smmus: int, args) -> dict:
    """Every time scale, light to heavy load; the figure is the best run that completed unsaturated
    (bench/live_throughput.best_run). A run that finished every unmap only shows the offered load
    (a lower bound of what the runtime carries)."""
    from bench.live_throughput import best_run, run_once

    tries = []
    for ts in sorted(args.time_scales, reverse=True):
        r, summary = run_once(ts, args, smmus=smmus, transport=args.transport)
        r["device_actors"] = sum(1 for a in summary["placement"]["actors"] if a["kind"] == "device")
        r["placement"] = placement(summary)
        tries.append(r)
        print(f"    {smmus} SMMU, time_scale {ts:g}: {r['commands_per_wall_s']:>9,.0f} commands/s, "
              f"{r['unmaps']['incomplete']} unmaps left, CPU {r['cpu_percent_mean']:.0f}%, status {r['status']}"
              f"{', SATURATED' if r['saturated'] else ''}", flush=True)
    best = best_run(tries)
    return {"smmus": smmus, "ok": best is not None,
            "offered_load_bound": bool(best and not best["unmaps"]["incomplete"]),
            "best": best, "tries": tries}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smmus", type=number_list(1), default=list(SMMUS), help="comma-separated SMMU counts (default 1,2,4)")
    ap.add_argument("--workers", type=int, default=2, help="worker nodes of 1 CPU each (default 2)")
    ap.add_argument("--duration", type=float, default=0.5, help="scenario seconds per run (default 0.5)")
    ap.add_argument("--transport", choices=("stream", "ray"), default="stream",
                    help="runtime.transport (default stream)")
    ap.add_argument("--time-scales", type=number_list(0.01, float), default=list(TIME_SCALES),
                    help="time scales tried per SMMU count, light to heavy load "
                         "(default 30,20,12,8)")
    ap.add_argument("--unmaps-per-s", type=float, default=200_000.0, help="per SMMU (default 200,000)")
    ap.add_argument("--cpus", type=int, default=256, help="topology.cpus, per SMMU (default 256)")
    ap.add_argument("--queues", type=int, default=257, help="hardware.command_queues, per SMMU (default 257)")
    args = ap.parse_args([] if argv is None else argv)
    if args.workers < 1:
        ap.error("--workers: at least 1 worker node")

    import ray

    if ray.is_initialized() or os.environ.get("RAY_ADDRESS"):
        print("bench.scaling starts its own ray.cluster_utils.Cluster: run it with no Ray initialised and "
              "RAY_ADDRESS unset.", file=sys.stderr)
        return 2
    cpus = os.cpu_count() or 1
    print(f"  cluster: head (0 CPUs: driver + SMMU actors) + {args.workers} worker nodes of 1 CPU, "
          f"all on this machine's {cpus} CPUs", flush=True)
    c = start_cluster(args.workers)
    runs = []
    try:
        for n in args.smmus:
            r = measure(n, args)
            runs.append(r)
            b = r["best"]
            if b is None:
                print(f"  {n} SMMU: no run completed unsaturated (try larger --time-scales)", flush=True)
                continue
            p = b["placement"]
            print(f"  {n} SMMU: {b['commands_per_wall_s']:,.0f} commands/s (time_scale {b['time_scale']:g}); "
                  f"{b['device_actors']} device actors on {p['device_actor_nodes']} node(s)", flush=True)
    finally:
        ray.shutdown()
        c.shutdown()
    base = next((r["best"] for r in runs if r["smmus"] == 1 and r["best"]), None)
    for r in runs:
        b = r["best"]
        r["commands_per_wall_s"] = b["commands_per_wall_s"] if b else None
        r["ratio_to_1_smmu"] = b["commands_per_wall_s"] / base["commands_per_wall_s"] if b and base else None
        r["per_smmu_efficiency"] = r["ratio_to_1_smmu"] / r["smmus"] if r["ratio_to_1_smmu"] else None
    spread = all(t["placement"]["device_actor_nodes"] >= min(args.workers, t["device_actors"])
                 for r in runs for t in r["tries"])
    result = {
        "workload": {"from": "bench/live_throughput.py run_once()", "endpoints_per_smmu": ENDPOINTS_PER_SMMU,
                     "device_actors_per_smmu": DEVICE_ACTORS_PER_SMMU, "domains_per_smmu": DOMAINS_PER_SMMU,
                     "unmaps_per_s_per_smmu": args.unmaps_per_s, "cpus_per_smmu": args.cpus,
                     "command_queues_per_smmu": args.queues, "dma_per_endpoint_per_s": 0,
                     "policy": "quarantine/per-device-batches", "duration_s": args.duration,
                     "time_scales": args.time_scales, "transport": args.transport},
        "cluster": {"head": {"num_cpus": 0}, "workers": args.workers, "worker_num_cpus": 1,
                    "machine_cpus": cpus, "one_machine": True},
        "runs": runs,
        "device_actors_spread_over_workers": spread,
        "cpu_bound_note": (f"all {args.workers + 1} nodes share this machine's {cpus} CPUs: the ratio shows the "
                           "CPU ceiling, not the design's scaling (ideal: ratio = number of SMMUs)"),
        "ray": ray.__version__,
        "machine": machine(),
    }
    path = write_result("scaling", result)
    print(f"scaling: live-throughput workload per SMMU on a ray.cluster_utils.Cluster (head + {args.workers} workers), "
          f"Ray {ray.__version__}; best unsaturated run per SMMU count")
    print(f"  {'SMMUs':>5} {'endpoints':>9} {'commands/s':>11} {'ratio':>6} {'per SMMU':>8} {'scale':>5} {'CPU %':>5}  "
          "nodes (SMMU/device actors)")
    for r in runs:
        b = r["best"]
        if b is None:
            print(f"  {r['smmus']:>5} {'-':>9} {'no unsaturated run':>11}")
            continue
        nodes = ", ".join(f"{nid[:8]}{'(head)' if n['head'] else ''} {len(n['smmu_actors'])}/{len(n['device_actors'])}"
                          for nid, n in b["placement"]["nodes"].items())
        ratio = f"{r['ratio_to_1_smmu']:.2f}" if base else "-"
        eff = f"{r['per_smmu_efficiency']:.2f}" if base else "-"
        bound = "  (every unmap done: offered load, a lower bound)" if r["offered_load_bound"] else ""
        print(f"  {r['smmus']:>5} {b['endpoints']:>9} {b['commands_per_wall_s']:>11,.0f} {ratio:>6} {eff:>8} "
              f"{b['time_scale']:>5g} {b['cpu_percent_mean']:>5.0f}  {nodes}{bound}")
    if not base:
        print("  no 1-SMMU figure: no ratio (include 1 in --smmus)")
    if not spread:
        print("  WARNING: the device actors did not spread over every worker node (see placement in the JSON)")
    print(f"  note: {result['cpu_bound_note']}; CPU % is the machine's mean over the run_ray call, all work on it")
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
