"""Live throughput bench (bench 3): commands/s one SMMU actor processes end to end on the live runtime.

    python -m bench.live_throughput [--stream-scales 12,10,9,8] [--ray-scales 60,40,30] [--no-ray]

One SMMU actor and 256 endpoints in 2 device actors, quarantine policy with per-device batches
(ATC_INV out to the devices, completions back, CMD_SYNCs retired), no DMA and no chaos, 256 CPUs
on 257 command queues (each queue has one CMD_SYNC waiting on the devices at a time, so the
number of queues is how many device round trips are in flight; --cpus 8 --queues 33 shows the
default scenario's concurrency) and 200,000 unmaps/s (about 10 commands each).

The scenario is fixed in scenario time, so time_scale sets the offered load: 0.5 scenario s at
time_scale 10 offers ~1 M commands in 5 s wall (~200k/s). Too large a time_scale measures the
offered load, not the runtime (every command done, the queues idle part of the time); too small
a one overloads the actors and the run is flagged saturated (and carries less: backlogs cost).
So each transport is run at a few time scales, and its figure is its best run that completed
without being flagged saturated. Both transports run in the same Ray instance, one after the
other: ``stream`` (the default: one TCP connection per actor pair) and ``ray`` (one Ray call per
batch). Against them, in the same Ray instance: the raw throughput of msgpack batches of 64 and
256 five-field messages sent back to back (each awaited) between two bare actors
(bench/live_scale.raw_ceiling).

Target: >= 100,000 commands/s and >= 50% of the raw ceiling for batches of 64 and of 256.
Writes bench/results/live_throughput.json and prints the figures and the ratios.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import machine, number_list, write_result  # noqa: E402

SCENARIO = ROOT / "configs" / "scenarios" / "scale-1000-mixed.yaml"


def scenario(duration: float, time_scale: float, unmaps_per_s: float, endpoints: int = 256,
             per_actor: int = 128, smmus: int = 1, cpus: int = 8, queues: int = 33,
             domains: int | None = None):
    """The throughput workload; ``domains`` None keeps the scenario's 64 (topology.cpus and
    hardware.command_queues are per SMMU, unmaps_per_s is split among the SMMUs)."""
    from ats_stress.cluster.scenario import load_scenario, scenario_from_dict

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


#: the workload per SMMU (bench/scaling.py multiplies it by the number of SMMUs)
ENDPOINTS_PER_SMMU = 256
DEVICE_ACTORS_PER_SMMU = 2
DOMAINS_PER_SMMU = 64


def run_once(time_scale: float, args, *, smmus: int = 1, transport: str = "stream") -> tuple[dict, dict]:
    """One live run of the workload (``smmus`` times over) on the Ray instance this process is
    connected to: (the figures, the run summary)."""
    import psutil

    from ats_stress.cluster.runtime.ray_runtime import run_ray

    sc = scenario(args.duration, time_scale, args.unmaps_per_s * smmus, endpoints=ENDPOINTS_PER_SMMU * smmus,
                  per_actor=ENDPOINTS_PER_SMMU // DEVICE_ACTORS_PER_SMMU, smmus=smmus, cpus=args.cpus,
                  queues=args.queues, domains=DOMAINS_PER_SMMU * smmus)
    sc = sc.model_copy(update={"runtime": sc.runtime.model_copy(update={"transport": transport})})
    psutil.cpu_percent(None)
    t = time.time()
    summary = run_ray(sc, quiet=True)
    total = time.time() - t
    cpu = psutil.cpu_percent(None)  # the machine's mean since the call above: start-up, run and gather
    wall = summary["wall"]["time_s"]
    tr = summary["transport"]
    msgs = tr["downstream"]["messages"] + tr["upstream"]["messages"]
    batches = tr["downstream"]["batches"] + tr["upstream"]["batches"]
    u = summary["unmaps"]
    return {"transport": transport, "time_scale": time_scale, "smmus": smmus, "endpoints": sc.topology.endpoints,
            "unmaps_per_s": sc.workload.unmaps_per_s, "status": summary["status"], "saturated": tr["saturated"],
            "wall_s": {"run": wall, "total": total}, "cpu_percent_mean": cpu,
            "commands_total": summary["commands_total"], "commands_per_wall_s": summary["commands_total"] / wall,
            "messages_per_wall_s": msgs / wall, "mean_batch": msgs / batches if batches else None,
            # arrival timers the SMMU actor got to by the end (of the scenario's Poisson arrivals):
            # fewer than at a light load means it ran behind, the runtime was the limit
            "unmaps": {"arrived": u.get("arrived"), "completed": u.get("count"), "incomplete": u.get("incomplete")},
            "batch_round_trip_wall_s": tr["batch_round_trip_wall_s"],
            "device_round_trip_wall_s": {k: tr["device_round_trip_wall_s"].get(k) for k in ("p50", "p99")}}, summary


def best_run(runs: list[dict]) -> dict | None:
    """The run with the most commands/s among those that completed without being flagged saturated
    (a saturated run's figures measure a backlog, and the runtime says its verdicts are suspect)."""
    ok = [r for r in runs if r["status"] == "complete" and not r["saturated"]]
    return max(ok, key=lambda r: r["commands_per_wall_s"]) if ok else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=0.5, help="scenario seconds per run (default 0.5)")
    ap.add_argument("--stream-scales", type=number_list(0.01, float), default=[12.0, 10.0, 9.0, 8.0],
                    help="time scales tried on the stream transport (default 12,10,9,8)")
    ap.add_argument("--ray-scales", type=number_list(0.01, float), default=[60.0, 40.0, 30.0],
                    help="time scales tried on the ray-call transport (default 60,40,30)")
    ap.add_argument("--no-ray", action="store_true", help="leave out the ray-call transport")
    ap.add_argument("--unmaps-per-s", type=float, default=200_000.0)
    ap.add_argument("--cpus", type=int, default=256, help="topology.cpus: CPUs unmapping at once (default 256)")
    ap.add_argument("--queues", type=int, default=257, help="hardware.command_queues (default 257)")
    args = ap.parse_args([] if argv is None else argv)

    import ray

    from bench.live_scale import raw_ceiling
    from ats_stress.cluster.runtime.ray_runtime import connect

    plan = [("stream", ts) for ts in args.stream_scales]
    if not args.no_ray:
        plan += [("ray", ts) for ts in args.ray_scales]
    connect(None)
    runs = []
    try:
        raw = {n: raw_ceiling(n) for n in (64, 256)}
        for transport, ts in sorted(plan, key=lambda p: (p[0] != "stream", -p[1])):
            r, _ = run_once(ts, args, transport=transport)
            runs.append(r)
            print(f"  {transport:6} time_scale {ts:>4g}: {r['commands_per_wall_s']:>9,.0f} commands/s, mean batch "
                  f"{r['mean_batch'] or 0:6.1f}, {r['unmaps']['incomplete']} unmaps left, "
                  f"{'SATURATED' if r['saturated'] else 'not saturated'}", flush=True)
    finally:
        ray.shutdown()
    best = {t: best_run([r for r in runs if r["transport"] == t]) for t in ("stream", "ray")}
    top = best["stream"]
    rate = top["commands_per_wall_s"] if top else 0.0
    ratios = {str(n): rate / raw[n]["messages_per_s"] for n in raw}
    result = {
        "scenario": {"endpoints": 256, "smmus": 1, "device_actors": 2, "policy": "quarantine/per-device-batches",
                     "unmaps_per_s": args.unmaps_per_s, "cpus": args.cpus, "command_queues": args.queues,
                     "dma_per_endpoint_per_s": 0, "duration_s": args.duration},
        "runs": runs,
        "best": {t: (None if b is None else {"time_scale": b["time_scale"],
                                             "commands_per_wall_s": b["commands_per_wall_s"],
                                             "mean_batch": b["mean_batch"]}) for t, b in best.items()},
        "commands_per_wall_s": rate,
        "raw": {str(n): r for n, r in raw.items()},
        "ratio_commands_to_raw": ratios,
        "stream_over_ray_calls": (rate / best["ray"]["commands_per_wall_s"]) if top and best["ray"] else None,
        "targets": {"commands_per_s": 100_000, "ratio_to_raw": 0.5,
                    "met": rate >= 100_000 and all(v >= 0.5 for v in ratios.values())},
        "machine": machine(),
        "ray": ray.__version__,
    }
    path = write_result("live_throughput", result)
    print(f"live throughput: 1 SMMU actor, 256 endpoints in 2 device actors, {args.cpus} CPUs / {args.queues} queues, "
          f"{args.duration:g} scenario s per run; best run without saturation per transport:")
    for t, b in best.items():
        if b is None:
            print(f"  {t}: no run both complete and unsaturated")
        else:
            print(f"  {t}: {b['commands_per_wall_s']:,.0f} commands/s (time_scale {b['time_scale']:g}, "
                  f"mean batch {b['mean_batch'] or 0:.1f})")
    for n, r in raw.items():
        print(f"  raw Ray+msgpack, batches of {n}: {r['messages_per_s']:,.0f} msgs/s "
              f"({r['batches_per_s']:,.0f} batches/s); stream commands/raw = {ratios[str(n)]:.2f}")
    if result["stream_over_ray_calls"]:
        print(f"  stream transport / ray-call transport: {result['stream_over_ray_calls']:.2f}x")
    print(f"  targets (>= 100,000 commands/s and >= 0.5 of both raw ceilings): "
          f"{'met' if result['targets']['met'] else 'missed'}")
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
