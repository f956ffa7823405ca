"""The live ``ray`` runtime on a real local Ray (started once for the module), and sim runs fanned out
over it as Ray tasks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from ats_stress.cluster import plugins
from ats_stress.cluster.cli import app
from ats_stress.cluster.experiments.compare import run_compare
from ats_stress.cluster.results.summary import deterministic_view
from ats_stress.cluster.runtime.sim import run_sim
from helpers import HANG_5, scenario
from live_helpers import POLICIES, ROOT, hang_scenario, verdict

ray = pytest.importorskip("ray")
PLUGINS = Path(__file__).resolve().parent / "plugins"


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning",
             object_store_memory=200 * 1024 * 1024)
    try:
        yield
    finally:
        ray.shutdown()


# --- no Ray needed ---------------------------------------------------------------------------------


@pytest.mark.parametrize("address", ["http://127.0.0.1:8265", "127.0.0.1:1", "ray://127.0.0.1:1", "no-port", "ftp://x:1"])
def test_bad_address_is_exit_2(tmp_path, address):
    sc = tmp_path / "s.yaml"
    sc.write_text(yaml.safe_dump({"name": "bad-address", "duration": 1,
                                  "topology": {"endpoints": 4, "domains": 1, "endpoints_per_actor": 4}}))
    result = CliRunner().invoke(app, ["run", str(sc), "--runtime", "ray", "--address", address, "-q",
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert address.split("://")[-1].split(":")[0] in result.output
    if address.startswith("http"):
        assert "ray job submit" in result.output


def test_bad_address_raises_runtime_input_error():
    from ats_stress.cluster.runtime.ray_runtime import RuntimeInputError, run_ray

    with pytest.raises(RuntimeInputError, match="nothing answers"):
        run_ray(hang_scenario("arm-smmu-v3"), address="127.0.0.1:1", quiet=True)


# --- live ------------------------------------------------------------------------------------------


@pytest.mark.ray
@pytest.mark.parametrize("policy", POLICIES)
def test_hang_verdicts_match_sim(local_ray, policy, tmp_path):
    from ats_stress.cluster.runtime.ray_runtime import run_ray

    sc = hang_scenario(policy)
    live = run_ray(sc, quiet=True, out_dir=tmp_path)
    sim = run_sim(sc)
    assert live["status"] == "complete"
    assert live["runtime"] == "ray"
    assert verdict(live) == verdict(sim), (live["transport"]["saturation"], live.get("failure"))
    assert (tmp_path / "summary.json").exists()
    # the live-only sections
    assert live["transport"]["kind"] == "stream"  # the default: one connection per actor pair
    # one node: every actor pair talks over Unix sockets (SMMU -> device and back: 2 x 1 x 2)
    assert live["transport"]["links"] == {"unix": 4, "tcp": 0}
    assert live["transport"]["downstream"]["messages"] > 0 and live["transport"]["upstream"]["messages"] > 0
    assert live["transport"]["batch_round_trip_wall_s"]["p50"] > 0  # frames are acknowledged
    assert live["transport"]["round_trip_wall_s"]["p50"] > 0
    assert live["transport"]["ceiling"]["syncs_per_s_per_queue"] > 0
    assert {a["kind"] for a in live["placement"]["actors"]} == {"smmu", "device"}
    assert live["lost"] == {"actors": [], "endpoints": [], "nodes": []}
    assert set(sim) - {"wall"} <= set(live)  # same fields as the sim runtime's
    # the verdict names the same failures (saturation aside, which only a live run can have)
    assert [m for m in live["verdict"]["modes"] if m != "saturated"] == sim["verdict"]["modes"]
    if policy == "arm-smmu-v3":  # the UAF's story travels from the SMMU actor to uaf-trace.jsonl
        tr = live["uaf_trace"]
        assert tr["exposures"] == live["uaf_exposures"] > 0 and tr["stories"][0]["sid"] == 5
        first = tr["stories"][0]
        assert first["unmap"]["err"] == -110 and [c["code"] for c in first["sync_codes"]][-1] == -110
        assert first["atc"]["invalidation"] == "pending" and first["freed_s"] < first["dma_s"]
        assert len((tmp_path / "uaf-trace.jsonl").read_text().splitlines()) == tr["recorded"]
        assert "stories" not in json.loads((tmp_path / "summary.json").read_text())["uaf_trace"]


@pytest.mark.ray
def test_a_live_run_samples_the_time_series_in_the_actors_and_draws_the_three_plots(local_ray, tmp_path):
    from ats_stress.cluster.results.report import write_report
    from ats_stress.cluster.results.sampler import SAMPLE_EVERY, LiveSeries
    from ats_stress.cluster.runtime.ray_runtime import run_ray

    sc = hang_scenario("arm-smmu-v3")
    series = LiveSeries(sc)
    s = run_ray(sc, quiet=True, sampler=series)
    assert s["status"] == "complete"
    samples = series.samples()
    t = samples["t"]
    assert t == [k * SAMPLE_EVERY for k in range(int(sc.duration / SAMPLE_EVERY) + 1)]  # scenario time, to the end
    hang = samples["endpoints"]["hang"]
    assert hang[t.index(0.5)] == 0 and hang[t.index(3.0)] == 1 and hang[-1] == 0  # endpoint 5, 1 s to 7 s
    assert sum(samples["endpoints"][m][-1] for m in samples["endpoints"]) == 16
    ages = [max(q) for q in samples["smmus"][0]["queue_sync_s"]]
    assert max(ages) >= 1.0 and ages[0] == 0.0  # the hang wedges a queue
    assert len(samples["latency_trace"]) == s["unmaps"]["count"]
    assert samples["step_targets"] == [[5]]
    written = write_report(sc, s, samples, tmp_path)
    assert [p.name for p in written] == ["report.md", "latency.png", "cmdq.png", "endpoints.png"]
    assert "no time plots" not in written[0].read_text()
    # the hang's irqs-off spins: the report says the live lockup total carries the transport's round trips
    from ats_stress.cluster.results.text import live_lockup_note
    assert s["lockup_s"] > 0 and live_lockup_note(s) in written[0].read_text()
    assert "one transport round trip" in live_lockup_note(s) and live_lockup_note({**s, "runtime": "sim"}) is None


@pytest.mark.ray
def test_a_live_cli_run_names_its_start_up_stages_and_lists_every_file(local_ray, tmp_path):
    scenario_file = tmp_path / "s.yaml"
    scenario_file.write_text(yaml.safe_dump(hang_scenario("arm-smmu-v3", duration=3, chaos=[]).model_dump(mode="json")))
    out = tmp_path / "live"
    r = CliRunner().invoke(app, ["run", str(scenario_file), "--runtime", "ray", "--out", str(out)])
    assert r.exit_code == 0, r.output
    stages = [line.split("] ", 1)[1] for line in r.stderr.splitlines() if line.startswith("[")]
    assert len(stages) == 6, stages
    assert stages[0].startswith("measuring arm-smmu-v3's CMD_SYNCs per unmap")
    assert stages[1] == "using the Ray this process already joined"  # the module's local Ray
    assert stages[2] == "placing 3 actors: 1 SMMU, 2 device (16 endpoints)"
    assert stages[3].startswith("connecting the actors (stream transport)")
    assert stages[4].startswith("measuring the SMMU <-> device actor round trip")
    assert stages[5].startswith("running 3 scenario s at time_scale 0.4")
    listed = r.stdout[r.stdout.index("written:"):].split()[1:]
    assert listed == [str(out / n) for n in ("summary.json", "uaf-trace.jsonl", "report.md", "latency.png",
                                             "cmdq.png", "endpoints.png", "prometheus-targets.json")]


@pytest.mark.ray
def test_a_policy_that_raises_fails_the_live_run_which_names_the_error(local_ray, tmp_path):
    scenario_file = tmp_path / "s.yaml"
    scenario_file.write_text(yaml.safe_dump(hang_scenario("arm-smmu-v3", duration=3, chaos=[]).model_dump(mode="json")))
    out = tmp_path / "live"
    r = CliRunner().invoke(app, ["run", str(scenario_file), "--runtime", "ray", "--policy", "test-raises", "-q",
                                 "--policy-file", str(PLUGINS / "raises.py"), "--out", str(out)])
    assert r.exit_code == 3, r.output
    assert "the run failed" in r.stderr and "test-raises: a bug in the policy" in r.stderr
    s = json.loads((out / "summary.json").read_text())
    assert s["status"] == "failed" and "test-raises: a bug in the policy" in s["error"]
    assert f"(raised at {PLUGINS / 'raises.py'}:" in s["error"]  # the plug-in's own line, from the SMMU actor
    assert "**The run failed**" in (out / "report.md").read_text()


@pytest.mark.ray
def test_a_bad_action_fails_the_live_run_naming_the_action(local_ray, tmp_path):
    from ats_stress.cluster.runtime.ray_runtime import run_ray

    sources = plugins.load([PLUGINS / "bad_actions.py"])
    sc = hang_scenario("test-bad-actions", duration=1, chaos=[])
    s = run_ray(sc, quiet=True, out_dir=tmp_path, plugins=sources)
    assert s["status"] == "failed", s.get("error")
    assert "PolicyActionError: policy 'test-bad-actions' returned Submit(queue=99" in s["error"], s["error"]


@pytest.mark.ray
def test_hang_verdicts_match_sim_on_the_ray_call_transport(local_ray):
    from ats_stress.cluster.runtime.ray_runtime import run_ray

    sc = hang_scenario("fence-on-timeout")
    sc = sc.model_copy(update={"runtime": sc.runtime.model_copy(update={"transport": "ray"})})
    live = run_ray(sc, quiet=True)
    assert live["status"] == "complete"
    assert live["transport"]["kind"] == "ray"
    assert verdict(live) == verdict(run_sim(sc)), live["transport"]["saturation"]
    # the SMMU actor stamps each fence with its wall clock (scenario s) next to the model's time
    assert live["fences"] and all(abs(f["wall_at_s"] - f["at_s"]) < 0.5 for f in live["fences"])
    assert live["transport"]["downstream"]["messages"] > 0 and live["transport"]["upstream"]["messages"] > 0


@pytest.mark.ray
@pytest.mark.parametrize("transport", ["stream", "ray"])
def test_kill_actor_mid_run(local_ray, tmp_path, transport):
    from ats_stress.cluster.results.sampler import LiveSeries
    from ats_stress.cluster.runtime.ray_runtime import run_ray

    chaos = [{"at": 1, "fault": "hang", "endpoints": [5], "duration": 2},
             {"at": 2, "fault": "kill_actor", "endpoints": [9]}]
    sc = hang_scenario("fence-on-timeout", chaos=chaos, duration=5)
    sc = sc.model_copy(update={"runtime": sc.runtime.model_copy(update={"transport": transport})})
    series = LiveSeries(sc)
    s = run_ray(sc, quiet=True, out_dir=tmp_path, sampler=series)
    assert s["status"] == "complete"
    assert s["transport"]["kind"] == transport
    removed = series.samples()["endpoints"]["removed"]
    assert removed[0] == 0 and removed[-1] == 8  # the lost actor's endpoints, from the kill on
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["status"] == "complete"
    lost = s["lost"]
    assert [(a["kind"], a["index"]) for a in lost["actors"]] == [("device", 1)]
    assert lost["endpoints"] == list(range(8, 16))
    assert s["endpoints_by_state"].get("removed", 0) == 8
    assert s["transport"]["downstream"]["messages"] > 0


@pytest.mark.ray
def test_kill_node_without_killer_kills_its_device_actors(local_ray, tmp_path, capsys):
    from ats_stress.cluster.runtime.ray_runtime import run_ray

    sc = hang_scenario("arm-smmu-v3", chaos=[{"at": 1, "fault": "kill_node", "endpoints": [2]}], duration=3)
    s = run_ray(sc, quiet=False, out_dir=tmp_path)
    assert s["status"] == "complete"
    assert (tmp_path / "summary.json").exists()
    assert len(s["lost"]["nodes"]) == 1
    node = s["lost"]["nodes"][0]
    assert "device actors killed" in node["how"]
    # a single-node cluster: every device actor was on it
    assert sorted(a["index"] for a in s["lost"]["actors"]) == [0, 1]
    assert s["lost"]["endpoints"] == list(range(16))
    assert "kill_node" in capsys.readouterr().err


def _stream_frame(obj) -> bytes:
    import msgpack

    payload = msgpack.packb(obj, use_bin_type=True)
    return len(payload).to_bytes(4, "little") + payload


def _device_actor():
    from ats_stress.cluster.runtime.ray_runtime import remote
    from ats_stress.device_actors.actor import DeviceActor

    gkw = {"atc_entries": 8, "pages_per_domain": 4, "dma_per_endpoint_per_s": 0, "inv_latency_median": 5e-6,
           "inv_latency_p99": 5e-5, "flr_time": 0.1, "seed": 1}
    return remote(DeviceActor, num_cpus=0).remote(0, [(0, 0), (1, 0)], gkw, {0: 0, 1: 0})


@pytest.mark.ray
@pytest.mark.parametrize("link", ["tcp", "unix"])
@pytest.mark.parametrize("token", [b"this-run-token!!", b"another-token!!!"])
def test_stream_applies_frames_only_from_a_peer_with_the_run_token(local_ray, token, link):
    import socket

    actor = _device_actor()
    try:
        where = ray.get(actor.listen.remote(b"this-run-token!!"))
        if link == "tcp":
            host, port = where["tcp"].rsplit(":", 1)
            s = socket.create_connection((host, int(port)), timeout=60)
        else:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(60)
            s.connect(where["unix"])
        with s:
            s.sendall(_stream_frame((token, 0)) + _stream_frame((0, 0, (), ())) + _stream_frame((0, 1, (), ())))
            try:
                answer = s.recv(8)
            except ConnectionResetError:
                answer = b""
        stats = ray.get(actor.stats.remote())["transport"]
    finally:
        ray.kill(actor)
    if token == b"this-run-token!!":
        assert answer and int.from_bytes(answer, "little") in (0, 1)  # a cumulative ack
        assert stats["batches_received"] >= 1 and stats["errors"] == []
    else:
        assert answer == b""  # refused: closed without an ack
        assert stats["batches_received"] == 0
        assert "did not carry this run's token" in stats["errors"][0]


@pytest.mark.ray
def test_a_batch_that_arrives_before_start_is_applied_at_start_not_lost(local_ray):
    # on a busy machine a peer's clock can start before the driver's start() reaches this actor
    import time

    from ats_stress.cluster.runtime.wire import pack
    from ats_stress.device_actors.pcie import MSG_INV_REQ

    actor, sink = _device_actor(), _device_actor()
    try:
        ray.get([actor.connect.remote([sink]), sink.connect.remote([actor])])
        ray.get(actor.deliver.remote(pack((0, 0, [(MSG_INV_REQ, 1, 0, 0x1000, 0)], ()))))
        t0 = time.time()
        ray.get([a.start.remote(t0, 1.0, 0.2, []) for a in (actor, sink)])
        assert ray.get(actor.wait_done.remote(60))
        stats = ray.get(actor.stats.remote())
    finally:
        ray.kill(actor)
        ray.kill(sink)
    assert stats["group"]["inv_received"] == 1
    assert stats["transport"]["dropped_after_end"] == 0


@pytest.mark.ray
def test_device_actor_that_will_not_start(local_ray):
    from ats_stress.cluster.runtime.ray_runtime import RuntimeInputError, run_ray

    with pytest.raises(RuntimeInputError, match="did not start"):
        run_ray(hang_scenario("arm-smmu-v3"), quiet=True, startup_timeout=2,
                device_options={"resources": {"no_such_resource": 1}})


def test_cluster_configs_parse():
    """cluster/ray-cluster.yaml is a valid `ray up` config (Ray's own schema) that installs and
    starts ats-stress; cluster/kuberay-rayjob.yaml is a RayJob with the same entrypoint."""
    import os

    ray_up = yaml.safe_load((ROOT / "cluster" / "ray-cluster.yaml").read_text())
    schema_path = Path(os.path.dirname(ray.__file__)) / "autoscaler" / "ray-schema.json"
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(ray_up, json.loads(schema_path.read_text()))
    assert ray_up["provider"]["type"] == "local"
    assert ray_up["max_workers"] == len(ray_up["provider"]["worker_ips"])
    assert any("ats-stress" in c and "pip install" in c for c in ray_up["setup_commands"])
    assert any("ray start --head" in c and "--port=6379" in c for c in ray_up["head_start_ray_commands"])
    assert any("ray start --address=$RAY_HEAD_IP:6379" in c for c in ray_up["worker_start_ray_commands"])

    job = yaml.safe_load((ROOT / "cluster" / "kuberay-rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert job["metadata"]["name"]
    spec = job["spec"]
    words = spec["entrypoint"].split()
    assert words[:2] == ["ats-stress", "run"] and words[words.index("--runtime") + 1] == "ray"
    assert words[2].endswith("configs/scenarios/scale-1000-mixed.yaml")
    assert "--address" not in words  # inside a job, ray.init() joins the job's cluster
    rc = spec["rayClusterSpec"]
    head = rc["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    assert head["template"]["spec"]["containers"][0]["image"]
    workers = rc["workerGroupSpecs"]
    assert workers and all(w["groupName"] and "rayStartParams" in w and w["template"]["spec"]["containers"][0]["image"]
                           for w in workers)
    assert all(w["minReplicas"] <= w["replicas"] <= w["maxReplicas"] for w in workers)


@pytest.mark.ray
def test_sweep_on_the_ray_runtime_runs_each_point_live(local_ray, tmp_path):
    from ats_stress.cluster.experiments.sweep import run_sweep

    sc = hang_scenario("fence-on-timeout", duration=4, chaos=[{"at": 1, "fault": "hang", "endpoints": [5], "duration": 2}])
    report = run_sweep(sc, ["policy.culprit_search=bisect,per-device-batches"], 1, tmp_path, runtime="ray")
    assert report["runtime"] == "ray" and [r["runtime"] for r in report["runs"]] == ["ray", "ray"]
    rows = {r["point"]["policy.culprit_search"]: r for r in report["rows"]}
    assert rows["per-device-batches"]["syncs_per_unmap"] > rows["bisect"]["syncs_per_unmap"]
    assert all(r["uaf_exposures"] == 0 for r in report["rows"])
    assert (tmp_path / "sweep.json").exists() and (tmp_path / "sweep.png").exists()


@pytest.mark.ray
def test_expect_at_is_checked_during_a_live_run(local_ray, tmp_path):
    from ats_stress.cluster.runtime.ray_runtime import run_ray

    sc = hang_scenario("fence-on-timeout", duration=4, chaos=[])
    data = sc.model_dump(mode="python")
    data["expect"] = {"uaf_exposures": {"max": 0, "at": [2.0]}, "unmaps_completed": {"min": 1, "at": [1.0]}}
    from ats_stress.cluster.scenario import scenario_from_dict

    summary = run_ray(scenario_from_dict(data), quiet=True)
    names = [e["name"] for e in summary["expectations"]]
    assert names[:2] == ["unmaps_completed@1s", "uaf_exposures@2s"]
    assert all(e["ok"] for e in summary["expectations"][:2])


# --- sim runs fanned out as Ray tasks (cluster/experiments/pool.py): the same results as in this
# process, plug-in files reach the workers, and a worker killed mid-run has its run submitted
# again, never lost or counted twice


def _runs(report: dict) -> list[dict]:
    return sorted((deterministic_view(r) for r in report["runs"]),
                  key=lambda r: (r.get("variant", r["policy"]), r["seed"]))


@pytest.mark.ray
def test_compare_on_ray_gives_what_this_process_gives_with_a_plug_in_policy_on_the_workers(local_ray):
    sources = plugins.load([PLUGINS / "early_complete.py"])
    sc = scenario(duration=6, chaos=[{"at": 1, "fault": "hang", "endpoints": [5], "duration": 3}])
    names = ["arm-smmu-v3", "test-early-complete", "arm-smmu-v3:sync_timeout=100ms"]  # a variant: its own column
    sharded = run_compare(sc, names, 2, None, sources=sources)
    here = run_compare(sc, names, 2, None, workers=1)
    assert len(sharded["runs"]) == 6 and sharded["requeued"] == 0
    assert _runs(sharded) == _runs(here)
    assert sharded["rows"][1]["uaf_exposures"] > 0  # the plug-in really ran there
    variant = [r for r in sharded["runs"] if r["variant"] == names[2]]
    assert [r["policy_params"]["sync_timeout"] for r in variant] == [0.1, 0.1]
    assert sharded["rows"][2]["sync_timeouts"] > sharded["rows"][0]["sync_timeouts"]  # it gave up 10 x sooner


@pytest.mark.ray
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


@pytest.mark.ray
def test_a_run_that_keeps_losing_its_worker_stops_compare_and_keeps_the_runs_gathered(local_ray, tmp_path):
    from ats_stress.cluster.experiments.pool import MAX_REQUEUES

    sources = plugins.load([PLUGINS / "dies_once.py"])
    policy = {"name": "test-dies-once", "marker": str(tmp_path / "died"), "always": True}
    sc = scenario(duration=4, chaos=HANG_5, policy=policy)
    report = run_compare(sc, ["arm-smmu-v3", "test-dies-once"], 1, tmp_path, sources=sources)
    assert f"lost its worker {MAX_REQUEUES + 1} times" in report["error"] and report["requeued"] == MAX_REQUEUES
    assert {r["policy"] for r in report["runs"]} <= {"arm-smmu-v3"}  # what finished is kept, nothing invented
    assert json.loads((tmp_path / "compare.json").read_text())["error"] == report["error"]


@pytest.mark.ray
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


@pytest.mark.ray
def test_a_plug_in_policy_file_runs_live_in_the_smmu_actors(local_ray):
    # the SMMU actors register the --policy-file source before they build the policy
    from ats_stress.cluster.runtime.ray_runtime import run_ray

    sources = plugins.load([ROOT / "examples" / "policies" / "patient.py"])
    sc = hang_scenario("arm-smmu-v3", duration=5, chaos=[{"at": 1, "fault": "hang", "endpoints": [5], "duration": 2}])
    sc = sc.model_copy(update={"policy": sc.policy.model_copy(update={"name": "patient-smmu"})})
    live = run_ray(sc, quiet=True, plugins=sources)
    assert live["status"] == "complete" and live["policy"] == "patient-smmu"
    assert live["unmaps"]["count"] > 0 and live["uaf_exposures"] == 0  # it never frees a page early


@pytest.mark.ray
def test_a_trace_replays_live_each_smmu_actor_streaming_its_own_domains_unmaps(local_ray, tmp_path):
    from ats_stress.cluster.runtime.ray_runtime import run_ray
    from ats_stress.cluster.scenario import trace as tr
    from ats_stress.cluster.scenario import tracegen as tg

    path = tg.write(tmp_path / "perf.txt", tg.nic_rate(seed=1, duration=1.0, unmaps=200, cpus=2), tr.FORMAT_PERF, "t")
    sc = scenario(duration=1.5, topology={"smmus": 2, "endpoints": 8, "domains": 4, "cpus": 2, "endpoints_per_actor": 4,
                                          "pages_per_domain": 32, "spare_pages": 32, "atc_entries": 64},
                  workload={"trace": str(path), "dma_per_endpoint_per_s": 40}, runtime={"time_scale": 1.0})
    live = run_ray(sc, quiet=True, out_dir=tmp_path)
    sim = run_sim(sc)
    assert live["status"] == "complete", live.get("error")
    assert live["trace"]["unmaps_replayed"] == sim["trace"]["unmaps_replayed"] == 200
    assert live["unmaps"]["count"] == sim["unmaps"]["count"] == 200
    assert live["trace"]["mapping"] == sim["trace"]["mapping"] and live["trace"]["format"] == "perf script"
    assert sum(live["trace"]["offered_per_s"]["rate"]) * live["trace"]["offered_per_s"]["bin_s"] == pytest.approx(200)


@pytest.mark.ray
def test_the_time_scale_a_saturated_run_suggests_carries_that_run(local_ray, tmp_path):
    """The hint comes from what the run measured (the round trip grows under load, so the idle
    start-up figure alone undershoots); the same scenario at the suggested time_scale is not
    saturated. Short runs: 0.3 scenario s, the second at the hint."""
    from ats_stress.cluster.runtime.ray_runtime import run_ray

    over = {"duration": 0.3, "topology": {"smmus": 1, "endpoints": 8, "domains": 2, "cpus": 2,
                                          "endpoints_per_actor": 8, "pages_per_domain": 32, "spare_pages": 64},
            "chaos": [], "workload": {"unmaps_per_s": 20000, "dma_per_endpoint_per_s": 10}}
    first = run_ray(scenario(**over, runtime={"time_scale": 1}), quiet=True, out_dir=tmp_path / "a")
    hint = first["transport"]["time_scale_hint"]
    assert first["transport"]["saturated"] and hint and hint > 1, first["transport"]["saturation"]
    assert f"--set runtime.time_scale={hint:g} should do" in " ".join(first["warnings"])
    again = run_ray(scenario(**over, runtime={"time_scale": hint}), quiet=True, out_dir=tmp_path / "b")
    assert not again["transport"]["saturated"], (hint, again["transport"]["saturation"])
    assert again["transport"]["time_scale_hint"] is None


@pytest.mark.ray
def test_an_embedded_local_ray_does_not_print_the_token_authentication_warning(tmp_path):
    """Ray warns "Token authentication is enabled for this Ray cluster" whenever it starts a local
    cluster; on our own embedded one (no --address) it is noise on every run."""
    import subprocess
    import sys

    sc = tmp_path / "s.yaml"
    sc.write_text(yaml.safe_dump({"name": "quiet-ray", "duration": 0.1, "workload": {"unmaps_per_s": 10},
                                  "topology": {"endpoints": 4, "domains": 1, "endpoints_per_actor": 4}}))
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    r = subprocess.run([sys.executable, "-m", "ats_stress.cluster.cli", "run", str(sc), "--runtime", "ray", "-q",
                        "--out", str(tmp_path / "o")], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Token authentication" not in r.stderr + r.stdout
    assert (tmp_path / "o" / "summary.json").is_file()
