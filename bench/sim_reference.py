"""Benchmark 2: the sim runtime on the reference scenario, and 10,000 endpoints in memory.

- configs/scenarios/scale-1000-mixed.yaml (1,000 endpoints, 60 scenario seconds, mixed chaos):
  simulated seconds per wall second (target >= 2x real time), events per second, peak RSS.
- The same topology at 10,000 endpoints (640 domains, 10 s, no chaos): peak RSS (target within 4 GiB).

Each run is a child process, so its peak RSS is its own (ru_maxrss of the child).
Run: python -m bench.sim_reference
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine, write_result  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "configs" / "scenarios" / "scale-1000-mixed.yaml"

CHILD = r"""
import json, resource, sys
sys.path.insert(0, {root!r})
from ats_stress.cluster.scenario import load_scenario
from ats_stress.cluster.runtime.sim import run_sim
s = run_sim(load_scenario({path!r}, {sets!r}))
print(json.dumps({{"wall": s["wall"], "events": s["events"], "sim_time_s": s["sim_time_s"], "ok": s["ok"],
                  "uaf": s["uaf_exposures"], "fences": s["fence_count"],
                  "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}}))
"""


def run_child(sets: list[str]) -> dict:
    code = CHILD.format(root=str(ROOT), path=str(REFERENCE), sets=sets)
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    data = json.loads(out.stdout.strip().splitlines()[-1])
    data["process_wall_s"] = time.perf_counter() - t0
    return data


def main() -> dict:
    ref = run_child([])
    big = run_child(["topology.endpoints=10000", "topology.domains=640", "topology.endpoints_per_actor=1250",
                     "duration=10s", "chaos=[]", "expect={}"])
    speed = ref["sim_time_s"] / ref["wall"]["time_s"]
    result = {
        "benchmark": "sim_reference",
        "reference": {"scenario": "scale-1000-mixed", "endpoints": 1000, "sim_time_s": ref["sim_time_s"],
                      "wall_s": ref["wall"]["time_s"], "sim_s_per_wall_s": speed,
                      "events": ref["events"], "events_per_s": ref["wall"]["events_per_s"],
                      "peak_rss_mib": ref["maxrss_kib"] / 1024, "expectations_ok": ref["ok"]},
        "ten_thousand": {"endpoints": 10000, "sim_time_s": big["sim_time_s"], "wall_s": big["wall"]["time_s"],
                         "sim_s_per_wall_s": big["sim_time_s"] / big["wall"]["time_s"],
                         "events_per_s": big["wall"]["events_per_s"], "peak_rss_mib": big["maxrss_kib"] / 1024},
        "targets": {"sim_s_per_wall_s": ">= 2", "ten_thousand_peak_rss_mib": "<= 4096"},
        "machine": machine(),
    }
    r, b = result["reference"], result["ten_thousand"]
    print("sim runtime, reference scenario scale-1000-mixed (1,000 endpoints, 60 s, mixed chaos)")
    print(f"  {r['sim_time_s']:.0f} scenario s in {r['wall_s']:.1f} wall s = {r['sim_s_per_wall_s']:.2f}x real time "
          f"(target >= 2x); {r['events_per_s']:,.0f} events/s; peak RSS {r['peak_rss_mib']:.0f} MiB")
    print(f"10,000 endpoints, 10 s: {b['sim_s_per_wall_s']:.2f}x real time; peak RSS {b['peak_rss_mib']:.0f} MiB "
          f"(target <= 4096 MiB)")
    write_result("sim_reference", result)
    return result


if __name__ == "__main__":
    main()
