"""The command line, in-process with typer's CliRunner."""

import json
from pathlib import Path

import yaml
from typer.testing import CliRunner

from ats_stress.cluster.cli import app
from helpers import BASE

runner = CliRunner()


def write(tmp_path, data, name="s.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


def test_run_writes_summary_json_with_the_documented_fields_and_exits_0(tmp_path):
    sc = write(tmp_path, {**BASE, "expect": {"uaf_exposures": {"max": 0}}})
    r = runner.invoke(app, ["run", str(sc), "--out", str(tmp_path / "out"), "--quiet"])
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    for field in ("scenario", "policy", "runtime", "seed", "endpoints", "sim_time_s", "wall", "events", "commands",
                  "unmaps", "healthy_unmap_latency_s", "sync_timeouts", "hw_atc_timeouts", "fences", "fenced_healthy",
                  "unfences", "uaf_exposures", "uaf_reallocated", "translated_blocked", "expectations", "ok"):
        assert field in s, field
    assert set(s["unmaps"]["latency_s"]) >= {"p50", "p99", "max"}
    assert s["expectations"] == [{"name": "uaf_exposures", "ok": True, "observed": 0, "bound": {"max": 0.0}}]


def test_run_exits_1_and_names_the_violated_expectation(tmp_path):
    data = {**BASE, "chaos": [{"at": 2, "fault": "hang", "endpoints": [5], "duration": 6}],
            "expect": {"uaf_exposures": {"max": 0}, "fences": {"max": 5}}}
    r = runner.invoke(app, ["run", str(write(tmp_path, data)), "--out", str(tmp_path / "o"), "--quiet"])
    assert r.exit_code == 1
    assert "uaf_exposures" in r.output and "VIOLATED" in r.output


def test_policy_and_seed_options_override_the_scenario(tmp_path):
    sc = write(tmp_path, {**BASE, "policy": {"name": "arm-smmu-v3", "sync_timeout": "2s"}})
    r = runner.invoke(app, ["run", str(sc), "--policy", "quarantine", "--seed", "9", "--set", "duration=3",
                            "--out", str(tmp_path / "o"), "--quiet"])
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert (s["policy"], s["seed"], s["sim_time_s"]) == ("quarantine", 9, 3.0)
    assert s["policy_params"]["sync_timeout"] == 2.0  # a parameter both policies have is kept
    assert s["policy_params"]["version"] == "v4"  # the rest are the new policy's defaults


def test_unknown_policy_is_bad_input_exit_2_with_one_paragraph(tmp_path):
    r = runner.invoke(app, ["run", str(write(tmp_path, BASE)), "--policy", "linux-9000"])
    assert r.exit_code == 2
    assert "unknown policy 'linux-9000'" in r.output and "quarantine" in r.output
    assert "Traceback" not in r.output


def test_validate_exits_0_on_a_valid_file_and_2_naming_file_and_field_otherwise(tmp_path):
    good = write(tmp_path, BASE)
    assert runner.invoke(app, ["validate", str(good)]).exit_code == 0
    bad = write(tmp_path, {**BASE, "chaos": [{"at": 1, "fault": "slow", "endpoints": [1],
                                              "latency": {"median": "-5ms", "p99": "1ms"}}]}, "bad.yaml")
    r = runner.invoke(app, ["validate", str(bad)])
    assert r.exit_code == 2
    assert "bad.yaml" in r.output and "chaos.0.latency.median" in r.output


def test_policies_lists_every_policy_with_its_parameters():
    r = runner.invoke(app, ["policies"])
    assert r.exit_code == 0
    for name in ("arm-smmu-v3", "amd-iommu", "intel-vtd", "quarantine", "fence-on-timeout", "iommu-core"):
        assert name in r.output
    assert "culprit_search" in r.output and "loop_timeout" in r.output
    assert "version" in r.output and "hypothetical_scrub_halted_queue" in r.output and "inv_timeout" in r.output


def test_a_parameter_the_policy_does_not_have_is_exit_2_naming_it_and_the_ones_it_has(tmp_path):
    sc = write(tmp_path, {**BASE, "policy": {"name": "quarantine", "culprit_search": "bisect"}})
    r = runner.invoke(app, ["validate", str(sc)])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "culprit_search" in r.output and "version" in r.output and "sync_timeout" in r.output


def test_compare_prints_one_table_and_writes_json_and_png(tmp_path):
    data = {**BASE, "duration": 6, "chaos": [{"at": 1, "fault": "hang", "endpoints": [5], "duration": 4}]}
    out = tmp_path / "cmp"
    r = runner.invoke(app, ["compare", str(write(tmp_path, data)), "--policies", "arm-smmu-v3,fence-on-timeout",
                            "--seeds", "2", "--out", str(out), "--workers", "1"])
    assert r.exit_code == 0, r.output
    written = r.output[r.output.index("written:"):].split()[1:]
    assert written == [str(out / f) for f in ("compare.json", "compare.png", "compare-latency.png", "compare-cmdq.png",
                                              "compare-endpoints.png")]
    assert all(Path(f).stat().st_size > 0 for f in written)
    report = json.loads((out / "compare.json").read_text())
    assert [row["policy"] for row in report["rows"]] == ["arm-smmu-v3", "fence-on-timeout"]
    assert len(report["runs"]) == 4
    by = {row["policy"]: row for row in report["rows"]}
    assert by["arm-smmu-v3"]["uaf_exposures"] > 0 and by["fence-on-timeout"]["uaf_exposures"] == 0
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "arm-smmu-v3" in r.output and "UAF" in r.output
    # one verdict per policy, every failure any of its seeds showed; the stories stay with `run`
    assert by["arm-smmu-v3"]["verdict"] == ["uaf", "no_culprit_fenced"]
    assert "verdict arm-smmu-v3       UNSAFE: UAF, no culprit fenced" in r.output
    assert all("stories" not in run["uaf_trace"] for run in report["runs"])
    # one queue: its culprit search waits behind the wedged CMD_SYNC and the 4 s hang ends first
    assert by["fence-on-timeout"]["verdict"] == ["no_culprit_fenced"]


def test_sweep_on_sim_writes_json_and_chart_and_lists_them(tmp_path):
    data = {**BASE, "duration": 3}
    out = tmp_path / "sw"
    r = runner.invoke(app, ["sweep", str(write(tmp_path, data)), "--param", "policy.sync_timeout=100ms,1s",
                            "--out", str(out), "--workers", "1"])
    assert r.exit_code == 0, r.output
    report = json.loads((out / "sweep.json").read_text())
    assert [row["point"] for row in report["rows"]] == [{"policy.sync_timeout": "100ms"}, {"policy.sync_timeout": "1s"}]
    assert r.output[r.output.index("written:"):].split()[1:] == [str(out / "sweep.json"), str(out / "sweep.png")]


def test_compare_rejects_an_unknown_policy(tmp_path):
    r = runner.invoke(app, ["compare", str(write(tmp_path, BASE)), "--policies", "arm-smmu-v3,nope"])
    assert r.exit_code == 2 and "unknown policy 'nope'" in r.output


def test_the_progress_bar_is_off_without_a_terminal_and_under_quiet(tmp_path, monkeypatch):
    sc = str(write(tmp_path, {**BASE, "duration": 3}))
    args = ["explore", sc, "--check", "healthy-fenced", "--budget", "2", "--workers", "1", "--out", str(tmp_path / "e")]
    assert "runs/s" not in runner.invoke(app, args).output  # CliRunner's stderr is no terminal
    monkeypatch.setenv("ATS_STRESS_PROGRESS", "1")  # as if it were one
    shown = runner.invoke(app, args).output
    assert "2/2" in shown and "runs/s" in shown and "violations 0" in shown
    assert "runs/s" not in runner.invoke(app, args + ["--quiet"]).output
