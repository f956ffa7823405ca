"""Live throughput bench (bench 3): commands/s one SMMU actor processes end to end on the live runtime.

    python -m bench.live_throughput [--duration S] [--time-scale N] [--unmaps-per-s N]

One SMMU actor and 256 endpoints in 2 device actors, quarantine policy with per-device batches
(ATC_INV out to the devices, completions back, CMD_SYNCs retired), no DMA and no chaos, an unmap
rate far above what the transport can carry, a large time_scale and 256 CPUs on 257 command
queues (each queue has one CMD_SYNC waiting on the devices at a time, so the number of queues is
how many device round trips are in flight: with the default scenario's 8 the SMMU actor waits on
the round trip, not on the CPU; --cpus 8 --queues 33 shows it), so the queues are never idle: the commands the SMMU submitted per wall second is what the live runtime carries. Against it,
in the same Ray instance: the raw throughput of msgpack batches of 64 and 256 five-field messages
sent back to back (each awaited) between two bare actors (bench/live_scale.raw_ceiling).

Writes bench/results/live_throughput.json and prints the figures and the ratio.
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

SCENARIO = ROOT / "configs" / "scenarios" / "scale-1000-mixed.yaml"


def scenario(duration: float, time_scale: float, unmaps_per_s: float, endpoints: int = 256,
             per_actor: int = 128, smmus: int = 1, cpus: int = 8, queues: int = 33,
             domains: int | None = None):
    """The throughput workload; ``domains`` None keeps the scenario's 64 (topology.cpus and
    hardware.command_queues are per SMMU, unmaps_per_s is split among the SMMUs)."""
    from cluster.config import load_scenario, scenario_from_dict

    data = load_scenario(SCENARIO).model_dump(mode="json")
    data["name"] = "live-throughput"
    data["duration"] = duration
    data["chaos"] = []
    data["expect"] = {}
    data["topology"].update({"smmus": smmus, "endpoints": endpoints, "endpoints_per_actor": per_actor,
                             "cpus": cpus})
    if domains is not None:
        data["topology"]["domains"] = domains
    data["hardware"]["command_queues"] = queues
    data["workload"]["unmaps_per_s"] = unmaps_per_s
    data["workload"]["dma_per_endpoint_per_s"] = 0
    data["runtime"]["time_scale"] = time_scale
    return scenario_from_dict(data, str(SCENARIO))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=0.5, help="scenario seconds (default 0.5)")
    ap.add_argument("--time-scale", type=float, default=40.0, help="wall s per scenario s (default 40)")
    ap.add_argument("--unmaps-per-s", type=float, default=200_000.0)
    ap.add_argument("--cpus", type=int, default=256, help="topology.cpus: CPUs unmapping at once (default 256)")
    ap.add_argument("--queues", type=int, default=257, help="hardware.command_queues (default 257)")
    args = ap.parse_args([] if argv is None else argv)

    import ray

    from bench.live_scale import raw_ceiling
    from cluster.ray_runtime import connect, run_ray

    sc = scenario(args.duration, args.time_scale, args.unmaps_per_s, cpus=args.cpus, queues=args.queues)
    connect(None)
    try:
        t = time.time()
        summary = run_ray(sc, quiet=True)
        total = time.time() - t
        raw = {n: raw_ceiling(n) for n in (64, 256)}
    finally:
        ray.shutdown()
    wall = summary["wall"]["time_s"]
    tr = summary["transport"]
    cmds = summary["commands_total"]
    msgs = tr["downstream"]["messages"] + tr["upstream"]["messages"]
    batches = tr["downstream"]["batches"] + tr["upstream"]["batches"]
    rate = cmds / wall
    best = max(r["messages_per_s"] for r in raw.values())
    result = {
        "scenario": {"endpoints": sc.topology.endpoints, "smmus": 1, "device_actors": 2,
                     "policy": "quarantine/per-device-batches", "unmaps_per_s": args.unmaps_per_s,
                     "cpus": args.cpus, "command_queues": args.queues,
                     "dma_per_endpoint_per_s": 0, "duration_s": args.duration, "time_scale": args.time_scale},
        "status": summary["status"],
        "wall_s": {"run": wall, "total": total},
        "commands_total": cmds,
        "commands_per_wall_s": rate,
        "syncs": summary.get("sync_count") or None,
        "messages_total": msgs,
        "batches_total": batches,
        "mean_batch": msgs / batches if batches else None,
        "messages_per_wall_s": msgs / wall,
        "raw": {str(n): r for n, r in raw.items()},
        "ratio_commands_to_raw_64": rate / raw[64]["messages_per_s"],
        "ratio_commands_to_raw_256": rate / raw[256]["messages_per_s"],
        "ratio_commands_to_best_raw": rate / best,
        "machine": machine(),
    }
    path = write_result("live_throughput", result)
    print(f"live throughput: 1 SMMU actor, {sc.topology.endpoints} endpoints, {args.duration:g} scenario s at "
          f"time_scale {args.time_scale:g} -> {wall:.1f} s wall, status {summary['status']}")
    print(f"  commands: {cmds} = {rate:,.0f}/s wall; messages {msgs} in {batches} batches "
          f"(mean {result['mean_batch'] or 0:.1f}) = {msgs / wall:,.0f}/s")
    for n, r in raw.items():
        print(f"  raw Ray+msgpack, batches of {n}: {r['messages_per_s']:,.0f} msgs/s "
              f"({r['batches_per_s']:,.0f} batches/s); commands/raw = {rate / r['messages_per_s']:.2f}")
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
