"""Small live scenarios for the ray runtime tests: few endpoints, a few wall seconds each.

Verdicts are chosen to be robust to timing jitter: the hang lasts 6 s, six times the 1 s CMD_SYNC
timeout (and sixty times AMD's 100 ms), far shorter than the 60 s hardware timeout.
"""

from __future__ import annotations

from pathlib import Path

from helpers import scenario

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ["arm-smmu-v3", "amd-iommu", "intel-vtd", "quarantine", "fence-on-timeout", "iommu-core"]


def hang_scenario(policy: str, *, time_scale: float = 0.4, endpoints: int = 16, per_actor: int = 8,
                  chaos: list | None = None, duration: float = 8):
    params = {"name": policy}
    if policy in ("fence-on-timeout", "iommu-core"):
        params["culprit_search"] = "per-device-batches"
    return scenario(
        duration=duration,
        topology={"smmus": 1, "endpoints": endpoints, "domains": 4, "cpus": 2, "endpoints_per_actor": per_actor,
                  "pages_per_domain": 16, "spare_pages": 32, "atc_entries": 64},
        hardware={"atc_inv_completion_timeout": 60, "command_queues": 3},
        workload={"unmaps_per_s": 20, "dma_per_endpoint_per_s": 40,
                  "inv_latency": {"median": "5us", "p99": "50us"}},
        chaos=chaos if chaos is not None else [{"at": 1, "fault": "hang", "endpoints": [5], "duration": 6}],
        policy=params, runtime={"time_scale": time_scale})


def verdict(summary: dict) -> dict:
    """What must agree between the runtimes: UAF or not, and who got fenced."""
    return {"uaf": summary["uaf_exposures"] > 0,
            "fenced": sorted({f["sid"] for f in summary["fences"]}),
            "fenced_healthy": summary["fenced_healthy"]}
