"""compare, sweep and explore when things go wrong (in this process, --workers 1): runs that fail
with an error are not passed off as figures, a bad --out is found before any run, and what was
gathered is written before the non-zero exit."""

import json
from pathlib import Path

import yaml
from typer.testing import CliRunner

from ats_stress.cluster.cli import app
from test_explore import SMALL

runner = CliRunner()
RAISES = Path(__file__).resolve().parent / "plugins" / "raises.py"


def write(tmp_path, data=SMALL):
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_compare_with_a_policy_that_raises_writes_the_runs_then_exits_3_naming_the_error(tmp_path):
    out = tmp_path / "out"
    r = runner.invoke(app, ["compare", str(write(tmp_path)), "--policies", "arm-smmu-v3,test-raises", "--workers", "1",
                            "--policy-file", str(RAISES), "--out", str(out), "-q"])
    assert r.exit_code == 3, r.output
    assert "1 run(s) failed with an error" in r.output and "test-raises: a bug in the policy" in r.output
    report = json.loads((out / "compare.json").read_text())
    assert [x["status"] for x in report["runs"]] == ["complete", "failed"] and report["failed_runs"] == 1
    arm, raises = report["rows"]
    assert (arm["runs"], arm["failed"]) == (1, 0) and arm["unmaps_completed"] > 0
    assert (raises["runs"], raises["failed"]) == (0, 1) and raises["uaf_exposures"] is None  # no figure, not 0
    assert "Traceback" not in r.output


def test_sweep_with_a_policy_that_raises_exits_3_after_writing(tmp_path):
    out = tmp_path / "out"
    r = runner.invoke(app, ["sweep", str(write(tmp_path)), "--param", "policy.name=arm-smmu-v3,test-raises",
                            "--workers", "1", "--policy-file", str(RAISES), "--out", str(out), "-q"])
    assert r.exit_code == 3, r.output
    assert json.loads((out / "sweep.json").read_text())["failed_runs"] == 1


def test_explore_of_a_policy_that_raises_checks_nothing_and_says_so_with_exit_3(tmp_path):
    out = tmp_path / "out"
    r = runner.invoke(app, ["explore", str(write(tmp_path)), "--policy", "test-raises", "--budget", "2",
                            "--workers", "1", "--policy-file", str(RAISES), "--out", str(out), "-q"])
    assert r.exit_code == 3, r.output  # not 0, "nothing violated"
    assert "2 variant run(s) failed with an error" in r.output
    assert json.loads((out / "explore.json").read_text())["failed_runs"] == 2


def test_an_out_that_is_a_file_is_exit_2_before_any_run(tmp_path):
    taken = tmp_path / "taken"
    taken.write_text("not a directory")
    for cmd in (["compare", "--policies", "arm-smmu-v3"], ["sweep", "--param", "seed=1,2"], ["explore"]):
        r = runner.invoke(app, [cmd[0], str(write(tmp_path)), *cmd[1:], "--workers", "1", "--out", str(taken), "-q"])
        assert r.exit_code == 2 and "--out" in r.output and str(taken) in r.output, (cmd, r.output)
        assert "Traceback" not in r.output and taken.read_text() == "not a directory"


def test_a_policy_named_twice_is_run_once(tmp_path):
    out = tmp_path / "out"
    r = runner.invoke(app, ["compare", str(write(tmp_path)), "--policies", "arm-smmu-v3,arm-smmu-v3", "--seeds", "2",
                            "--workers", "1", "--out", str(out), "-q"])
    assert r.exit_code == 0, r.output
    report = json.loads((out / "compare.json").read_text())
    assert report["policies"] == ["arm-smmu-v3"] and len(report["runs"]) == 2 and report["rows"][0]["runs"] == 2


def test_kill_node_on_the_sim_runtime_is_exit_2_before_the_run_starts(tmp_path):
    # the step comes at 5 s of a 6 s run: said up front, not after simulating up to it
    data = {**SMALL, "chaos": [{"at": 5, "fault": "kill_node", "endpoints": [2]}]}
    for cmd in (["run", "--runtime", "sim"], ["compare", "--policies", "arm-smmu-v3", "--workers", "1"]):
        r = runner.invoke(app, [cmd[0], str(write(tmp_path, data)), *cmd[1:], "--out", str(tmp_path / "o"), "-q"])
        assert r.exit_code == 2 and "chaos.0: kill_node needs the ray runtime" in r.output, (cmd, r.output)
        assert "Traceback" not in r.output
