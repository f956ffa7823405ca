"""Live memory bench (bench 4): peak RSS of the whole local Ray cluster for 250, 1,000 and 2,000 endpoints.

    python -m bench.live_memory [--endpoints 250,1000,2000] [--duration S] [--time-scale N] [--idle S]

For each endpoint count N, a fresh embedded local Ray (``cluster.ray_runtime.connect(None)``, shut
down after) runs configs/scenarios/scale-1000-mixed.yaml scaled to N endpoints: 2 SMMU actors,
device actors of 125 endpoints each (2 at 250, 8 at 1,000, 16 at 2,000), the quarantine policy
with per-device batches, 10 scenario seconds by default, the scenario's chaos steps that fit (those
naming an endpoint >= N are left out) and no expectations.

The per-endpoint workload is the default scenario's at every N: 300 unmaps/s and 64 domains per
1,000 endpoints (so ~16 endpoints a domain and the same CMD_SYNCs per unmap), 5 DMA/s per endpoint.
What the runtime must carry per scenario second then grows with N, so time_scale does too: the
default scenario's (1: real time, verified unsaturated for 1,000 endpoints on this 2-core machine)
per 1,000 endpoints, at least 1: 1 at 250 and 1,000, 2 at 2,000. That asks the two cores for at
most the default run's work per wall second at every N (rather than keeping the unmap rate and
letting larger N saturate the transport, which would measure queues piling up, not endpoints).
--time-scale sets one value for every N.

Measured per N, with bench/live_scale.RssSampler (the summed RSS of this driver and every process
descending from it: GCS, raylet, the actors' workers and the rest, every 0.5 s):

- idle baseline: the peak over --idle wall seconds (default 5) right after connect, before the
  run, the same way;
- peak RSS during the run, and the processes at the peak;
- memory per endpoint = (peak - idle baseline) / N, and the slope (peak difference / endpoint
  difference) between successive N, which leaves out the fixed cost of the 2 SMMU actors;
- the run's status, whether its transport was saturated, wall time.

Summed RSS counts pages shared between processes (Ray's object store, shared libraries) once per
process that touches them, so it overstates what the cluster really occupies: an upper bound.

Target: 2,000 endpoints within 16 GiB of summed RSS on this machine (the baseline: the same
run's idle cluster, and the 250-endpoint run for the slope). Writes bench/results/live_memory.json.
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
ENDPOINTS = (250, 1000, 2000)
TARGET_ENDPOINTS = 2000
TARGET_BYTES = 16 * 2**30
GIB, MIB = 2**30, 2**20


def default_time_scale(endpoints: int) -> float:
    from ats_stress.cluster.scenario import load_scenario

    base = load_scenario(SCENARIO).runtime.time_scale
    return base * max(1.0, endpoints / 1000)


def scenario(endpoints: int, duration: float, time_scale: float):
    """scale-1000-mixed.yaml at ``endpoints`` endpoints with the default scenario's per-endpoint workload."""
    from ats_stress.cluster.scenario import load_scenario, scenario_from_dict

    data = load_scenario(SCENARIO).model_dump(mode="json")
    base = data["topology"]["endpoints"]
    data["name"] = f"live-memory-{endpoints}"
    data["duration"] = duration
    data["expect"] = {}
    data["topology"].update({"endpoints": endpoints,
                             "domains": max(data["topology"]["smmus"], round(data["topology"]["domains"] * endpoints / base))})
    data["workload"]["unmaps_per_s"] = data["workload"]["unmaps_per_s"] * endpoints / base
    data["runtime"]["time_scale"] = time_scale
    data["chaos"] = [c for c in data["chaos"]
                     if c["at"] < duration and all(e < endpoints for e in c.get("endpoints") or ())]
    return scenario_from_dict(data, str(SCENARIO))


def _settle_children(timeout: float = 15.0) -> None:
    """Wait for the previous Ray's processes to be gone, so the next baseline does not count them."""
    import psutil

    me = psutil.Process()
    end = time.time() + timeout
    while time.time() < end:
        alive = 0
        for p in me.children(recursive=True):
            try:
                alive += p.status() != psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                pass
        if not alive:
            return
        time.sleep(0.5)


def measure(endpoints: int, duration: float, time_scale: float, idle: float) -> dict:
    import ray

    from bench.live_scale import RssSampler
    from ats_stress.cluster.runtime.ray_runtime import connect, run_ray

    sc = scenario(endpoints, duration, time_scale)
    _settle_children()
    t = time.time()
    if not connect(None):
        raise RuntimeError("Ray was already initialised in this process: the bench needs a fresh local Ray per "
                           "endpoint count (unset RAY_ADDRESS and run it on its own).")
    try:
        connect_s = time.time() - t
        idle_sampler = RssSampler()
        idle_sampler.start()
        time.sleep(idle)
        idle_sampler.stop_flag.set()
        idle_sampler.join()
        idle_sampler.sample()
        sampler = RssSampler()
        sampler.start()
        t = time.time()
        summary = run_ray(sc, quiet=True)
        wall_total = time.time() - t
        sampler.stop_flag.set()
        sampler.join()
        sampler.sample()
    finally:
        ray.shutdown()
    placement = summary["placement"]["actors"]
    peak, base = sampler.peak, idle_sampler.peak
    return {
        "endpoints": endpoints,
        "smmu_actors": sum(1 for a in placement if a["kind"] == "smmu"),
        "device_actors": sum(1 for a in placement if a["kind"] == "device"),
        "domains": sc.topology.domains,
        "unmaps_per_s": sc.workload.unmaps_per_s,
        "dma_per_endpoint_per_s": sc.workload.dma_per_endpoint_per_s,
        "chaos": [c.fault for c in sc.chaos],
        "duration_s": duration,
        "time_scale": time_scale,
        "status": summary["status"],
        "failure": summary.get("failure"),
        "saturated": summary["transport"]["saturated"],
        "saturation": summary["transport"]["saturation"],
        "load": summary["transport"]["ceiling"].get("load"),
        "wall_s": {"connect": connect_s, "idle": idle, "run": summary["wall"]["time_s"],
                   "startup": summary["wall"].get("startup_s"), "total": wall_total},
        "idle_rss_bytes": base,
        "idle_processes": idle_sampler.peak_procs,
        "peak_rss_bytes": peak,
        "peak_rss_gib": peak / GIB,
        "processes_at_peak": sampler.peak_procs,
        "peak_to_idle": peak / base if base else None,
        "per_endpoint_mib": (peak - base) / endpoints / MIB,
        "commands_total": summary["commands_total"],
        "uaf_exposures": summary["uaf_exposures"],
        "fences": summary["fence_count"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--endpoints", type=number_list(2), default=list(ENDPOINTS),
                    help="comma-separated endpoint counts (default 250,1000,2000)")
    ap.add_argument("--duration", type=float, default=10.0, help="scenario seconds per run (default 10)")
    ap.add_argument("--time-scale", type=float, default=None,
                    help="wall s per scenario s for every run (default: 10 per 1,000 endpoints, at least 5)")
    ap.add_argument("--idle", type=float, default=5.0, help="wall s of idle cluster sampled for the baseline (default 5)")
    args = ap.parse_args([] if argv is None else argv)

    import ray

    runs = []
    for n in args.endpoints:
        ts = args.time_scale if args.time_scale is not None else default_time_scale(n)
        print(f"  {n} endpoints: time_scale {ts:g}, {args.duration:g} scenario s ...", flush=True)
        r = measure(n, args.duration, ts, args.idle)
        runs.append(r)
        print(f"  {n:>5} endpoints: peak {r['peak_rss_gib']:.2f} GiB over {r['processes_at_peak']} processes "
              f"({r['smmu_actors']} SMMU + {r['device_actors']} device actors), idle {r['idle_rss_bytes'] / GIB:.2f} GiB "
              f"-> {r['per_endpoint_mib']:.2f} MiB per endpoint; status {r['status']}, saturated {r['saturated']}, "
              f"{r['wall_s']['total']:.0f} s wall", flush=True)
        if r["failure"]:
            print(f"    the run failed: {r['failure']}", flush=True)
    slopes = [{"from": a["endpoints"], "to": b["endpoints"],
               "mib_per_endpoint": (b["peak_rss_bytes"] - a["peak_rss_bytes"]) / (b["endpoints"] - a["endpoints"]) / MIB}
              for a, b in zip(runs, runs[1:])]
    at_target = next((r for r in runs if r["endpoints"] == TARGET_ENDPOINTS), None)
    result = {
        "scenario": str(SCENARIO.relative_to(ROOT)),
        "endpoints_per_actor": 125,
        "runs": runs,
        "slopes": slopes,
        "target": {"endpoints": TARGET_ENDPOINTS, "peak_rss_bytes_max": TARGET_BYTES,
                   "measured": at_target is not None,
                   "peak_rss_gib": at_target["peak_rss_gib"] if at_target else None,
                   "ratio_to_budget": at_target["peak_rss_bytes"] / TARGET_BYTES if at_target else None,
                   "ok": (at_target["peak_rss_bytes"] <= TARGET_BYTES) if at_target else None},
        "ray": ray.__version__,
        "machine": machine(),
    }
    path = write_result("live_memory", result)
    print(f"live memory: summed RSS of the local Ray cluster (driver + descendants), Ray {ray.__version__}")
    print(f"  {'endpoints':>9} {'actors':>6} {'procs':>5} {'idle GiB':>8} {'peak GiB':>8} {'x idle':>6} {'MiB/ep':>7} "
          f"{'wall s':>6}  status")
    for r in runs:
        print(f"  {r['endpoints']:>9} {r['smmu_actors'] + r['device_actors']:>6} {r['processes_at_peak']:>5} "
              f"{r['idle_rss_bytes'] / GIB:>8.2f} {r['peak_rss_gib']:>8.2f} {r['peak_to_idle']:>6.2f} {r['per_endpoint_mib']:>7.2f} "
              f"{r['wall_s']['total']:>6.0f}  {r['status']}{', SATURATED' if r['saturated'] else ''}")
    for s in slopes:
        print(f"  slope {s['from']} -> {s['to']} endpoints: {s['mib_per_endpoint']:.2f} MiB per endpoint")
    t = result["target"]
    if t["measured"]:
        print(f"  target: {TARGET_ENDPOINTS} endpoints within 16 GiB: {'yes' if t['ok'] else 'NO'} "
              f"({t['peak_rss_gib']:.2f} GiB = {t['ratio_to_budget']:.2f} of the budget)")
    else:
        print(f"  target: {TARGET_ENDPOINTS} endpoints within 16 GiB: not measured (run with --endpoints including 2000)")
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
