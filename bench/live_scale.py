"""Live scale bench: 1,000 endpoints on the embedded local Ray for 60 scenario seconds, with chaos.

    python -m bench.live_scale [--time-scale N] [--duration S] [--no-kill]

Runs configs/scenarios/scale-1000-mixed.yaml (2 SMMU actors, 8 device actors of 125 endpoints,
hang / slow / flap / drop / removed chaos) plus a ``kill_actor`` step at 50 s, and records:

- peak memory: the summed RSS of every process of the Ray cluster (this driver, GCS, raylet, the
  actors' workers and the rest: the driver's process tree, sampled every 0.5 s with psutil);
- commands/s (SMMU commands submitted, per wall second and per scenario second);
- the raw Ray + msgpack transport ceiling measured in the same Ray instance right after the run:
  batches of the run's mean batch size sent back to back (each awaited, as the runtime does)
  between two bare actors; and the run's message rate as a fraction of it.

Writes bench/results/live_scale.json and prints the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SCENARIO = ROOT / "configs" / "scenarios" / "scale-1000-mixed.yaml"
OUT = ROOT / "bench" / "results" / "live_scale.json"


class RssSampler(threading.Thread):
    """Peak of the summed RSS of this process and all its descendants (the local Ray cluster)."""

    def __init__(self, every: float = 0.5):
        super().__init__(daemon=True)
        import psutil

        self.psutil = psutil
        self.me = psutil.Process(os.getpid())
        self.every = every
        self.peak = 0
        self.peak_procs = 0
        self.stop_flag = threading.Event()

    def sample(self) -> int:
        total, n = 0, 0
        procs = [self.me] + self.me.children(recursive=True)
        for p in procs:
            try:
                total += p.memory_info().rss
                n += 1
            except (self.psutil.NoSuchProcess, self.psutil.AccessDenied):
                pass
        if total > self.peak:
            self.peak, self.peak_procs = total, n
        return total

    def run(self) -> None:
        while not self.stop_flag.is_set():
            self.sample()
            self.stop_flag.wait(self.every)


def raw_ceiling(batch_size: int, seconds: float = 3.0) -> dict:
    """Back-to-back awaited msgpack batches between two bare async actors (one channel)."""
    import msgpack
    import ray

    @ray.remote(num_cpus=0)
    class Sink:
        async def deliver(self, payload: bytes) -> None:
            msgpack.unpackb(payload, use_list=False)

    @ray.remote(num_cpus=0)
    class Source:
        async def blast(self, sink, seconds: float, batch_size: int) -> dict:
            payload = msgpack.packb([(1, 17, 3, 1000, 0)] * batch_size)
            for _ in range(20):  # warm up
                await sink.deliver.remote(payload)
            n, t = 0, time.perf_counter()
            end = t + seconds
            while time.perf_counter() < end:
                await sink.deliver.remote(payload)
                n += 1
            dt = time.perf_counter() - t
            return {"batches_per_s": n / dt, "messages_per_s": n * batch_size / dt,
                    "round_trip_s": dt / n, "payload_bytes": len(payload)}

    sink, src = Sink.remote(), Source.remote()
    try:
        out = ray.get(src.blast.remote(sink, seconds, batch_size))
    finally:
        ray.kill(sink)
        ray.kill(src)
    out["batch_size"] = batch_size
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--time-scale", type=float, default=None, help="default: the scenario's runtime.time_scale")
    ap.add_argument("--duration", type=float, default=60.0, help="scenario seconds (default 60)")
    ap.add_argument("--no-kill", action="store_true", help="leave out the kill_actor step at 50 s")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args([] if argv is None else argv)

    import ray

    from ats_stress.cluster.scenario import load_scenario
    from ats_stress.cluster.runtime.ray_runtime import connect, run_ray

    from ats_stress.cluster.scenario import scenario_from_dict

    data = load_scenario(SCENARIO).model_dump(mode="json")
    data["duration"] = args.duration
    data["chaos"] = [c for c in data["chaos"] if c["at"] < args.duration]  # shorter runs: the steps that fit
    if args.time_scale is not None:
        data["runtime"]["time_scale"] = args.time_scale
    if not args.no_kill and args.duration > 50:
        data["chaos"].append({"at": 50, "fault": "kill_actor", "endpoints": [999]})
    sc = scenario_from_dict(data, str(SCENARIO))
    sampler = RssSampler()
    connect(None)  # the embedded local Ray: every process of it descends from this one
    try:
        sampler.start()
        sampler.sample()
        t = time.time()
        summary = run_ray(sc, quiet=False)
        wall_total = time.time() - t
        sampler.sample()
        tr = summary["transport"]
        msgs = tr["downstream"]["messages"] + tr["upstream"]["messages"]
        batches = tr["downstream"]["batches"] + tr["upstream"]["batches"]
        mean_batch = max(1, round(msgs / batches)) if batches else 1
        raw = raw_ceiling(mean_batch)
        sampler.sample()
    finally:
        sampler.stop_flag.set()
        ray.shutdown()
    run_wall = summary["wall"]["time_s"]
    cmds = summary["commands_total"]
    result = {
        "scenario": sc.name,
        "endpoints": sc.topology.endpoints,
        "device_actors": len([a for a in summary["placement"]["actors"] if a["kind"] == "device"]),
        "smmu_actors": sc.topology.smmus,
        "scenario_s": summary["sim_time_s"],
        "time_scale": sc.runtime.time_scale,
        "status": summary["status"],
        "wall_s": {"run": run_wall, "startup": summary["wall"].get("startup_s"), "total": wall_total},
        "peak_rss_bytes": sampler.peak,
        "peak_rss_mib": sampler.peak / 2**20,
        "processes_at_peak": sampler.peak_procs,
        "commands_total": cmds,
        "commands_per_wall_s": cmds / run_wall,
        "commands_per_scenario_s": cmds / summary["sim_time_s"],
        "messages": {"downstream": tr["downstream"], "upstream": tr["upstream"],
                     "per_wall_s": msgs / run_wall, "mean_batch": msgs / batches if batches else None},
        "round_trip_wall_s": tr["round_trip_wall_s"],
        "batch_round_trip_wall_s": tr["batch_round_trip_wall_s"],
        "ceiling": tr["ceiling"],
        "saturated": tr["saturated"],
        "saturation": tr["saturation"],
        "raw_transport": raw,
        "ratio_messages_to_raw": (msgs / run_wall) / raw["messages_per_s"],
        "ratio_batches_to_raw": (batches / run_wall) / raw["batches_per_s"],
        "ratio_commands_to_raw_messages": (cmds / run_wall) / raw["messages_per_s"],
        "verdicts": {"uaf_exposures": summary["uaf_exposures"], "fenced_healthy": summary["fenced_healthy"],
                     "fences": summary["fence_count"], "ok": summary["ok"],
                     "expectations": [(e["name"], e["ok"]) for e in summary["expectations"]]},
        "lost": {"actors": len(summary["lost"]["actors"]), "endpoints": len(summary["lost"]["endpoints"])},
        "machine": {"cpus": os.cpu_count()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"live scale: {result['endpoints']} endpoints, {result['device_actors']} device actors, "
          f"{result['scenario_s']:g} scenario s at time_scale {result['time_scale']:g} -> {run_wall:.1f} s wall "
          f"(+{result['wall_s']['startup'] or 0:.1f} s start-up), status {result['status']}")
    print(f"  peak RSS of the Ray cluster: {result['peak_rss_mib']:.0f} MiB over {sampler.peak_procs} processes")
    print(f"  commands: {cmds} = {result['commands_per_wall_s']:.0f}/s wall, {result['commands_per_scenario_s']:.0f}/s scenario")
    print(f"  messages: {msgs} in {batches} batches (mean {result['messages']['mean_batch']:.1f}) = "
          f"{result['messages']['per_wall_s']:.0f}/s wall")
    print(f"  raw Ray+msgpack ceiling (two bare actors, batches of {raw['batch_size']}): "
          f"{raw['batches_per_s']:.0f} batches/s = {raw['messages_per_s']:.0f} msgs/s "
          f"(round trip {raw['round_trip_s'] * 1e3:.2f} ms)")
    print(f"  run / raw: messages {result['ratio_messages_to_raw']:.2f}, batches {result['ratio_batches_to_raw']:.2f}, "
          f"commands per raw message {result['ratio_commands_to_raw_messages']:.2f}")
    print(f"  start-up round trip p50 {tr['round_trip_wall_s']['p50'] * 1e3:.2f} ms; ceiling "
          f"{tr['ceiling']['syncs_per_s_per_queue']:.0f} syncs/s per queue, "
          f"{tr['ceiling']['unmaps_per_s'] or 0:.0f} unmaps/s; saturated: {tr['saturated']}")
    print(f"  UAF {summary['uaf_exposures']}, fences {summary['fence_count']} (healthy {summary['fenced_healthy']}), ok {summary['ok']}")
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
