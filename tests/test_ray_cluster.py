"""The live ``ray`` runtime on a 3-node ``ray.cluster_utils.Cluster`` (started once for the module).

The head has no CPUs: it runs the driver and the SMMU actors; the device actors (num_cpus=0.01)
are spread over the two workers, so ``kill_node`` can remove a worker node for real.
"""

from __future__ import annotations

import json

import pytest

from ats_stress.cluster.runtime.sim import run_sim
from live_helpers import hang_scenario, verdict

ray = pytest.importorskip("ray")
cluster_utils = pytest.importorskip("ray.cluster_utils")

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def cluster():
    c = cluster_utils.Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False, "object_store_memory": 100 * 1024 * 1024,
        # a removed node is noticed within a second or two, not the default 15 s
        "_system_config": {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500,
                           "health_check_failure_threshold": 3}})
    try:
        for _ in range(2):
            c.add_node(num_cpus=1, object_store_memory=100 * 1024 * 1024)
        c.wait_for_nodes()
        ray.init(address=c.address, logging_level="warning")
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


def _killer(c):
    killed = []

    def kill(node_id: str) -> None:
        for n in list(c.worker_nodes):
            if n.node_id == node_id:
                c.remove_node(n)
                killed.append(node_id)
                return
        raise LookupError(f"no worker node {node_id}")
    return kill, killed


#: one policy of each kind of flush path (the drivers' flush coroutines, which the posted series
#: runs on too, and the fence-on-timeout state machine): test_ray_runtime checks every policy's
#: verdict live on a one-node Ray; here the point is the spread over nodes, the same for every policy
CLUSTER_POLICIES = ["arm-smmu-v3", "fence-on-timeout"]


@pytest.mark.parametrize("policy", CLUSTER_POLICIES)
def test_hang_verdicts_match_sim_and_endpoints_spread(cluster, policy):
    from ats_stress.cluster.runtime.ray_runtime import run_ray

    # 4 device actors of 8 endpoints on 3 Ray nodes sharing 2 cores: real time (time_scale 1), so a
    # device round trip stays far below the 1 s software timeout even when the machine is busy
    sc = hang_scenario(policy, endpoints=32, time_scale=1.0)
    live = run_ray(sc, quiet=True)
    assert live["status"] == "complete"
    assert verdict(live) == verdict(run_sim(sc)), live["transport"]["saturation"]
    placement = live["placement"]
    head = placement["driver_node_id"]
    dev_nodes = {a["node_id"] for a in placement["actors"] if a["kind"] == "device"}
    assert len(dev_nodes) == 2 and head not in dev_nodes  # spread over both workers
    assert {a["node_id"] for a in placement["actors"] if a["kind"] == "smmu"} == {head}
    assert sum(n["endpoints"] for n in placement["nodes"].values()) == 32
    # the SMMU actor (head) and the 4 device actors (workers) are on different nodes: TCP each way
    assert live["transport"]["links"] == {"unix": 0, "tcp": 8}


def test_kill_node_removes_a_worker_and_the_run_goes_on(cluster, tmp_path):
    from ats_stress.cluster.runtime.ray_runtime import run_ray

    kill, killed = _killer(cluster)
    chaos = [{"at": 1, "fault": "hang", "endpoints": [5], "duration": 2},
             {"at": 2, "fault": "kill_node", "endpoints": [20]}]
    sc = hang_scenario("fence-on-timeout", endpoints=32, chaos=chaos, duration=5)
    s = run_ray(sc, quiet=True, out_dir=tmp_path, node_killer=kill)
    assert s["status"] == "complete"
    assert json.loads((tmp_path / "summary.json").read_text())["lost"] == s["lost"]
    assert len(killed) == 1
    lost = s["lost"]
    assert [n["node_id"] for n in lost["nodes"]] == killed
    assert lost["nodes"][0]["how"] == "node killed by the node killer"
    # every device actor of that node went with it, endpoint 20's among them
    on_node = {a["index"] for a in s["placement"]["actors"] if a["kind"] == "device" and a["node_id"] == killed[0]}
    assert {a["index"] for a in lost["actors"]} == on_node and 20 in lost["endpoints"]
    assert len(lost["endpoints"]) == 8 * len(on_node)
    assert s["endpoints_by_state"]["removed"] == len(lost["endpoints"])


def test_interrupted_run_still_has_a_summary(cluster, tmp_path):
    """A Ctrl-C in the middle of the run (raised here by the node killer, in the driver's loop)."""
    from ats_stress.cluster.runtime.ray_runtime import run_ray

    def interrupt(node_id: str) -> None:
        raise KeyboardInterrupt

    sc = hang_scenario("arm-smmu-v3", endpoints=32, chaos=[{"at": 1, "fault": "kill_node", "endpoints": [9]}],
                       duration=4)
    s = run_ray(sc, quiet=True, out_dir=tmp_path, node_killer=interrupt)
    assert s["status"] == "interrupted" and s["ok"] is False
    assert s["sim_time_s"] < 4
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "interrupted"
    assert s["commands_total"] > 0


def test_cli_joins_the_cluster_like_a_ray_job(cluster, tmp_path):
    """Inside a Ray Job the entrypoint sees RAY_ADDRESS; `ats-stress run --runtime ray` with no
    --address then joins that cluster instead of starting its own."""
    import os
    import subprocess
    import sys

    import yaml

    from live_helpers import ROOT

    sc = tmp_path / "job.yaml"
    sc.write_text(yaml.safe_dump({
        "name": "as-a-job", "seed": 3, "duration": 2, "runtime": {"time_scale": 0.5},
        "topology": {"endpoints": 16, "domains": 4, "cpus": 2, "endpoints_per_actor": 8},
        "workload": {"unmaps_per_s": 20, "dma_per_endpoint_per_s": 20},
        "expect": {"uaf_exposures": {"max": 0}}}))
    env = {**os.environ, "RAY_ADDRESS": cluster.address}
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "ats_stress.cluster.cli", "run", str(sc), "--runtime", "ray", "-q",
                        "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    s = json.loads((out / "summary.json").read_text())
    assert s["runtime"] == "ray" and s["status"] == "complete"
    cluster_nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert {a["node_id"] for a in s["placement"]["actors"]} <= cluster_nodes
