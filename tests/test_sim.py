"""The sim runtime: deterministic, and the safety property on the baseline cases."""

import json

import pytest

from ats_stress.cluster.results.summary import deterministic_view
from helpers import HANG_5, run

POLICIES = ["arm-smmu-v3", "amd-iommu", "intel-vtd", "quarantine", "fence-on-timeout", "iommu-core"]


def test_same_scenario_and_seed_give_a_byte_identical_summary_apart_from_wall_time():
    a = run(chaos=HANG_5, policy={"name": "fence-on-timeout"}, hardware={"command_queues": 5})
    b = run(chaos=HANG_5, policy={"name": "fence-on-timeout"}, hardware={"command_queues": 5})
    assert json.dumps(deterministic_view(a), sort_keys=True) == json.dumps(deterministic_view(b), sort_keys=True)
    assert a["events"] > 10_000


def test_a_different_seed_gives_a_different_run():
    a = run(seed=1)
    b = run(seed=2)
    assert a["unmaps"]["latency_s"] != b["unmaps"]["latency_s"]


def test_wall_figures_live_under_wall_and_events_per_second_is_reported():
    s = run()
    assert set(s["wall"]) == {"time_s", "events_per_s"}
    assert s["wall"]["events_per_s"] > 0


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_no_fault_scenario_never_gives_uaf(policy, seed):
    s = run(policy={"name": policy}, seed=seed)
    assert s["uaf_exposures"] == 0
    assert s["translated_allowed"] > 1000  # DMA really ran through ATC entries
    assert s["fence_count"] == 0 and s["sync_timeouts"] == 0
    assert s["unmaps"]["count"] > 2000


def test_arm_hang_longer_than_the_software_timeout_with_dma_gives_uaf():
    culprits = 0
    for seed in (1, 2, 3):
        s = run(policy={"name": "arm-smmu-v3"}, seed=seed, chaos=HANG_5)
        assert s["sync_timeouts"] > 0
        assert s["uaf_exposures"] > 0, seed
        assert s["completion_errors"].get("-110", 0) > 0  # -ETIMEDOUT, ignored by the unmap path
        culprits += s["uaf_by_sid"].get("5", 0)
    assert culprits > 0  # the hung device itself writes through its stale entries


def test_arm_timeout_also_exposes_healthy_devices_whose_invalidations_wait_behind_the_wedge():
    # A page is freed after the timeout although its ATC_INVs never left the wedged queue: healthy
    # devices of other domains still hold the translation, and their DMA is a UAF too.
    s = run(policy={"name": "arm-smmu-v3"}, chaos=HANG_5)
    healthy = {sid for sid in s["uaf_by_sid"] if int(sid) % 4 != 5 % 4}  # not in the hung device's domain
    assert healthy


def test_hang_shorter_than_the_software_timeout_gives_no_uaf_under_arm():
    s = run(policy={"name": "arm-smmu-v3"}, chaos=[{"at": 2, "fault": "hang", "endpoints": [5], "duration": 0.4}])
    assert s["sync_timeouts"] == 0
    assert s["uaf_exposures"] == 0
    assert s["affected_unmap_latency_s"]["max"] >= 0.3  # it did stall the queue meanwhile


def test_stalled_healthy_unmaps_are_measured():
    s = run(policy={"name": "arm-smmu-v3"}, chaos=HANG_5)
    assert s["worst_stall_s"] >= 0.9  # healthy domains waited behind the wedged single queue
    assert s["healthy_unmap_latency_s"]["p50"] < 1e-3
