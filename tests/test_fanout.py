"""Sim runs fanned out as Ray tasks on a real local Ray: same results as in this process, plug-in
files reach the workers, and a worker killed mid-run has its run submitted again, never lost or
counted twice."""

from pathlib import Path

import pytest

from ats_stress.cluster import plugins
from ats_stress.cluster.experiments.compare import run_compare
from ats_stress.cluster.results.summary import deterministic_view
from helpers import HANG_5, scenario

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray

PLUGINS = Path(__file__).resolve().parent / "plugins"


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning", object_store_memory=200 * 1024 * 1024)
    try:
        yield
    finally:
        ray.shutdown()


def _runs(report: dict) -> list[dict]:
    return sorted((deterministic_view(r) for r in report["runs"]), key=lambda r: (r["policy"], r["seed"]))


def test_compare_on_ray_gives_what_this_process_gives_with_a_plug_in_policy_on_the_workers(local_ray):
    sources = plugins.load([PLUGINS / "early_complete.py"])
    sc = scenario(duration=6, chaos=[{"at": 1, "fault": "hang", "endpoints": [5], "duration": 3}])
    names = ["arm-smmu-v3", "test-early-complete"]
    sharded = run_compare(sc, names, 2, None, sources=sources)
    here = run_compare(sc, names, 2, None, workers=1)
    assert len(sharded["runs"]) == 4 and sharded["requeued"] == 0
    assert _runs(sharded) == _runs(here)
    assert sharded["rows"][1]["uaf_exposures"] > 0  # the plug-in really ran there


def test_a_worker_killed_mid_run_has_its_run_requeued_once(local_ray, tmp_path):
    sources = plugins.load([PLUGINS / "dies_once.py"])
    marker = tmp_path / "died"
    sc = scenario(duration=4, chaos=HANG_5, policy={"name": "test-dies-once", "marker": str(marker)})
    names = ["test-dies-once", "arm-smmu-v3"]
    sharded = run_compare(sc, names, 2, None, sources=sources)
    assert marker.exists() and sharded["requeued"] == 1  # one worker process died, once
    here = run_compare(sc, names, 2, None, workers=1)  # the marker exists: nobody dies now
    assert len(sharded["runs"]) == 4 and [r["runs"] for r in sharded["rows"]] == [2, 2]
    assert _runs(sharded) == _runs(here)


def test_explore_sharded_on_ray_finds_numbers_and_shrinks_what_a_serial_search_does(local_ray):
    from ats_stress.cluster.experiments.explore import run_explore
    from ats_stress.cluster.experiments.explore_report import violation_record
    from ats_stress.cluster.experiments.pool import Pool
    from ats_stress.cluster.experiments.properties import select
    from ats_stress.cluster.scenario import scenario_from_dict
    from test_explore import SMALL

    sc = scenario_from_dict({**SMALL, "explore": {**SMALL["explore"], "faults": ["hang", "slow", "drop"]}})
    checks = select(sc, ["uaf", "incomplete"])
    found = []
    for pool in (Pool(use_ray=True), Pool(1)):
        with pool:
            s = run_explore(sc, pool, checks, seed=2, budget=6, shrink_max=1, shrink_runs=20)
        found.append(([violation_record(v) for v in s.violations], s.explored, pool.use_ray, pool.capacity))
    (sharded, n1, ray_used, capacity), (serial, n2, _, _) = found
    assert ray_used and capacity == 2 and n1 == n2 == 6
    assert {v["property"] for v in serial} == {"uaf", "incomplete"} and any(v["shrunk"] for v in serial)
    assert sharded == serial
