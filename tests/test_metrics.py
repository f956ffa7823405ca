"""Exporters and the model's histograms: names, units, labels, the exporter contract, file_sd,
and the OpenMetrics recording of a sim run."""

from __future__ import annotations

import inspect
import json
import re
import urllib.request

import pytest
from prometheus_client.exposition import generate_latest

from ats_stress.cluster.results.metrics import (
    ALL_METRICS,
    DeviceExporter,
    MetricsError,
    SmmuExporter,
    parse_bind,
    run_labels,
    write_file_sd,
)
from ats_stress.cluster.results.sampler import RunSampler
from ats_stress.cluster.runtime.sim import run_sim
from helpers import HANG_5, Recorder, scenario
from ats_stress.iommu_actor.commands import cmd_atc_inv, cmd_sync
from ats_stress.iommu_actor.smmu import Smmu
from ats_stress.iommu_actor.stats import DURATION_BUCKETS, Histogram


def fence_run(**over):
    """A small fence-on-timeout run with a hang on endpoint 5 that gets fenced; returns (scenario, world, summary)."""
    sc = scenario(duration=8, policy={"name": "fence-on-timeout", "culprit_search": "per-device-batches"},
                  hardware={"atc_inv_completion_timeout": 60, "command_queues": 4}, chaos=HANG_5, **over)
    seen = {}
    summary = run_sim(sc, sample=lambda t, w: seen.setdefault("w", w))
    return sc, seen["w"], summary


@pytest.fixture(scope="module")
def world():
    return fence_run()


def exposition(exporter) -> str:
    return generate_latest(exporter.registry).decode()


def samples(text: str) -> list[tuple[str, dict, float]]:
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)", line)
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(3) or ""))
        out.append((m.group(1), labels, float(m.group(4))))
    return out


# --- the model's histograms ------------------------------------------------------------------------


def test_histogram_buckets_span_1us_to_120s_and_resolve_the_timeouts():
    assert DURATION_BUCKETS[0] == 1e-6 and DURATION_BUCKETS[-1] == 120.0
    for timeout in (0.1, 1.0, 60.0):
        i = DURATION_BUCKETS.index(timeout)
        assert DURATION_BUCKETS[i + 1] <= timeout * 1.5  # "at the timeout" and "past it" differ
    h = Histogram()
    for v in (5e-6, 0.1, 0.1001, 1.0, 61.0, 500.0):
        h.observe(v)
    cum = dict(h.cumulative())
    assert cum[5e-6] == 1 and cum[0.1] == 2 and cum[0.15] == 3 and cum[1.0] == 4 and cum[90.0] == 5
    assert cum[float("inf")] == h.count == 6
    with pytest.raises(ValueError):
        Histogram((1.0, 0.5))


def test_cmd_sync_duration_is_observed_from_submission_to_retirement():
    rec = Recorder()
    smmu = Smmu(rec, command_queues=1, invalidate_queue_depth=32, atc_inv_completion_timeout=60,
                page_tables={1: [None] * 4})
    smmu.add_stream(7, 0b100, 1, 1)
    smmu.submit(0, [cmd_sync(1)], now=0.0)  # nothing before it: retires at once
    smmu.submit(0, [cmd_atc_inv(7, 0, 0), cmd_sync(2)], now=1.0)
    assert smmu.oldest_sync_age(3.5) == 2.5  # waiting on the ATC_INV
    (_, _, itag, _, _) = rec.sent[-1]
    smmu.inv_completion(7, itag, now=4.0)
    assert smmu.sync_duration.count == 2
    cum = dict(smmu.sync_duration.cumulative())
    assert cum[1e-6] == 1 and cum[2.0] == 1 and cum[5.0] == 2
    assert smmu.oldest_sync_age(5.0) == 0.0


def test_unmap_duration_histograms_match_the_summary(world):
    sc, w, summary = world
    node = w.nodes[0]
    assert node.unmap_duration[False].count == len(node.latencies_healthy)
    assert node.unmap_duration[True].count == len(node.latencies_affected)
    assert node.unmap_duration[True].sum == pytest.approx(sum(node.latencies_affected))


# --- the exporters -------------------------------------------------------------------------------------


def test_exporter_contract_signatures():
    assert list(inspect.signature(SmmuExporter).parameters)[:4] == ["node", "oracle", "labels", "bind"]
    assert list(inspect.signature(DeviceExporter).parameters)[:3] == ["group", "labels", "bind"]
    assert inspect.signature(SmmuExporter).parameters["bind"].default == "127.0.0.1"
    for cls in (SmmuExporter, DeviceExporter):
        assert callable(cls.start) and callable(cls.set_time)


def test_smmu_exporter_metrics_names_units_and_labels(world):
    sc, w, summary = world
    e = SmmuExporter(w.nodes[0], w.oracles[0], run_labels("run-1", sc, smmu="0"))
    e.set_time(summary["sim_time_s"])
    got = samples(exposition(e))
    names = {n for n, _, _ in got}
    for name, (typ, _) in ALL_METRICS.items():
        if name in ("ats_endpoints", "ats_chaos_step_endpoints", "ats_dma_requests_total", "ats_inv_requests_total"):
            continue
        if typ == "histogram":
            assert {name + "_bucket", name + "_sum", name + "_count"} <= names, name
        else:
            assert name in names, name
        if typ == "counter":
            assert name.endswith("_total")
    for n, labels, _ in got:
        assert {"run", "scenario", "policy", "smmu"} <= set(labels), n
        assert labels["run"] == "run-1" and labels["policy"] == "fence-on-timeout"
        assert not ({"sid", "endpoint", "stream"} & set(labels)), f"{n} has a per-endpoint label"
        if n.endswith("_seconds") or "_seconds_" in n:
            pass  # base unit: seconds
        assert not re.search(r"_(ms|us|milliseconds|microseconds)\b", n)
    value = {(n, tuple(sorted(lab.items()))): v for n, lab, v in got}

    def one(name, **extra):
        matches = [v for (n, lab), v in value.items() if n == name and all((k, x) in lab for k, x in extra.items())]
        assert len(matches) == 1, (name, extra, matches)
        return matches[0]

    assert one("ats_uaf_exposures_total") == summary["uaf_exposures"]
    assert one("ats_fences_total") == summary["fence_count"] >= 1
    assert one("ats_unfences_total") == summary["unfence_count"]
    assert one("ats_fenced_healthy_total") == summary["fenced_healthy"] == 0
    assert one("ats_fenced_streams") == len(summary["fenced_at_end"])
    assert one("ats_sync_timeouts_total") == summary["sync_timeouts"]
    assert one("ats_hw_atc_inv_timeouts_total") == summary["hw_atc_timeouts"]
    assert one("ats_cmdq_errors_total", cerror="CERROR_ATC_INV_SYNC") == summary["cmdq_errors"]
    assert one("ats_commands_total", opcode="CMD_SYNC") == summary["syncs"]
    assert one("ats_translated_requests_total", outcome="blocked") == summary["translated_blocked"]
    assert (one("ats_translated_requests_total", outcome="allowed") + one("ats_translated_requests_total", outcome="uaf")
            == summary["translated_allowed"])
    assert one("ats_fence_latency_seconds_count") == summary["fence_count"]
    assert one("ats_unmap_duration_seconds_count", **{"class": "healthy"}) == summary["healthy_unmap_latency_s"]["count"] \
        - len(w.nodes[0].open_unmap_ages(summary["sim_time_s"])[0])
    assert one("ats_scenario_time_seconds") == summary["sim_time_s"]


def test_device_exporter_endpoint_states_and_active_chaos_steps(world):
    sc, w, summary = world
    g = w.groups[0]
    e = DeviceExporter(g, run_labels("run-1", sc, group="0"), step_faults={0: "hang"})
    got = samples(exposition(e))
    states = {lab["state"]: v for n, lab, v in got if n == "ats_endpoints"}
    assert set(states) >= {"healthy", "hang", "removed", "resetting", "dead"}
    assert sum(states.values()) == len(g.eps)
    # force a step active on endpoint 5 and see it
    g.apply_fault(g.now, 5, "hang", {}, 0)
    steps = [(lab["step"], lab["fault"], v) for n, lab, v in samples(exposition(e)) if n == "ats_chaos_step_endpoints"]
    assert steps == [("0", "hang", 1.0)]


def test_exporter_serves_metrics_over_http_on_a_port_it_picks(world):
    sc, w, _ = world
    e = SmmuExporter(w.nodes[0], w.oracles[0], run_labels("http", sc, smmu="0"))
    host, port = e.start()
    try:
        assert host == "127.0.0.1" and port > 0
        body = urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10).read().decode()
        assert 'ats_uaf_exposures_total{' in body and 'run="http"' in body
    finally:
        e.stop()


def test_bind_addresses_and_a_clear_error_for_a_bad_one():
    assert parse_bind("127.0.0.1") == ("127.0.0.1", 0)
    assert parse_bind("0.0.0.0:9100") == ("0.0.0.0", 9100)
    assert parse_bind("[::1]:0") == ("::1", 0)
    with pytest.raises(MetricsError, match="host:port"):
        parse_bind("localhost:http")


def test_write_file_sd_is_atomic_and_valid(tmp_path):
    path = tmp_path / "sd" / "prometheus-targets.json"
    targets = [{"targets": ["127.0.0.1:1234"], "labels": {"job": "ats-stress", "actor": "smmu-0"}}]
    write_file_sd(path, targets)
    assert json.loads(path.read_text()) == targets
    write_file_sd(path, [])
    assert json.loads(path.read_text()) == []
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind


def test_openmetrics_recording_is_on_scenario_time_with_each_series_contiguous():
    # (promtool imports the file for real in test_prometheus.py; prometheus_client's own OpenMetrics
    # parser cannot group histogram points with several timestamps, so the structure is checked here)
    sc = scenario(duration=4, chaos=HANG_5)
    sampler = RunSampler(sc, run_id="om", start_wall=1_000_000.0)
    run_sim(sc, progress_every=0.5, sample=sampler)
    text = sampler.om.render().decode()
    assert text.endswith("# EOF\n")
    types = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
    assert len(types) == len(set(types)), "a family appears twice"
    series_seen: dict[str, float] = {}
    closed: set[str] = set()
    current = None
    times = set()
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+) (\S+)$", line)
        assert m, f"no timestamp: {line}"
        name, labels, ts = m.group(1), m.group(2) or "", float(m.group(4))
        key = re.sub(r"_(bucket|count|sum)$", "", name) + re.sub(r'le="[^"]*",?', "", labels)
        if key != current:
            assert key not in closed, f"series {key} is not contiguous"
            if current is not None:
                closed.add(current)
            current = key
        assert ts >= series_seen.get(key, 0.0), f"{key} goes back in time"
        series_seen[key] = ts
        if name == "ats_scenario_time_seconds":
            times.add(ts - 1_000_000.0)
            assert float(m.group(3)) == ts - 1_000_000.0  # the value is the scenario time of its stamp
    assert sorted(times) == [0.0, 1.0, 2.0, 3.0, 4.0]  # sampled every scenario second


def test_cli_ray_runs_serve_metrics_by_default_and_a_bad_bind_is_exit_2(tmp_path, monkeypatch):
    import ats_stress.cluster.runtime.ray_runtime as rr
    from typer.testing import CliRunner

    from ats_stress.cluster.cli import app

    seen = {}

    def fake_run_ray(sc, **kw):
        seen.update(kw)
        return run_sim(sc)

    monkeypatch.setattr(rr, "run_ray", fake_run_ray)
    scen = tmp_path / "s.yaml"
    scen.write_text("name: s\nduration: 2\ntopology: {endpoints: 8, domains: 2, cpus: 2}\npolicy: {name: arm-smmu-v3}\n")
    runner = CliRunner()
    r = runner.invoke(app, ["run", str(scen), "-r", "ray", "-q", "-o", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    assert seen["metrics_bind"] == "127.0.0.1"
    r = runner.invoke(app, ["run", str(scen), "-r", "ray", "-q", "-o", str(tmp_path / "b"), "--address", "auto"])
    assert seen["metrics_bind"] == "0.0.0.0"
    r = runner.invoke(app, ["run", str(scen), "-r", "ray", "-q", "-o", str(tmp_path / "c"), "--metrics-bind", "off"])
    assert seen["metrics_bind"] is None
    r = runner.invoke(app, ["run", str(scen), "-r", "ray", "-q", "--metrics-bind", "localhost:http"])
    assert r.exit_code == 2 and "--metrics-bind" in r.output and "Traceback" not in r.output
