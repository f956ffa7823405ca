"""Where `run` writes: runs/NAME-POLICY-RUNTIME by default, never beside an earlier run's files,
and it lists every file it wrote; its progress bar (sim) is on stderr and only when wanted."""

from __future__ import annotations

import json

import yaml
from typer.testing import CliRunner

from ats_stress.cluster.cli import app
from ats_stress.cluster.results.report import RUN_FILES
from helpers import BASE

runner = CliRunner()


def scenario_file(tmp_path, **over):
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump({**BASE, "duration": 2, **over}))
    return p


def listed(output: str) -> list[str]:
    return output[output.index("written:"):].split()[1:]


def test_the_default_directory_is_per_scenario_policy_and_runtime(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["run", str(scenario_file(tmp_path)), "-q"])
    assert r.exit_code == 0, r.output
    out = tmp_path / "runs" / "t-arm-smmu-v3-sim"
    assert json.loads((out / "summary.json").read_text())["runtime"] == "sim"
    assert listed(r.output)[0] == "runs/t-arm-smmu-v3-sim/summary.json"


def test_a_run_removes_an_earlier_runs_files_and_lists_exactly_what_it_wrote(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    # an earlier live run's leftovers, and a file that is not a run's
    (out / "prometheus-targets.json").write_text('[{"targets": ["127.0.0.1:1"]}]')
    (out / "summary.json").write_text('{"runtime": "ray"}')
    (out / "notes.txt").write_text("mine")
    r = runner.invoke(app, ["run", str(scenario_file(tmp_path)), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "removed the previous run's files" in r.stderr
    assert not (out / "prometheus-targets.json").exists()
    assert (out / "notes.txt").read_text() == "mine"
    files = sorted(p.name for p in out.iterdir() if p.name != "notes.txt")
    assert set(files) <= set(RUN_FILES)
    assert sorted(listed(r.output)) == sorted(str(out / f) for f in files)
    assert {"summary.json", "report.md", "latency.png", "cmdq.png", "endpoints.png", "metrics.om"} <= set(files)


def test_bad_input_leaves_an_earlier_run_alone(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "summary.json").write_text("{}")
    r = runner.invoke(app, ["run", str(scenario_file(tmp_path, duration=-1)), "--out", str(out)])
    assert r.exit_code == 2
    assert (out / "summary.json").read_text() == "{}"


def test_sim_progress_is_on_stderr_only_when_wanted(tmp_path):
    sc = str(scenario_file(tmp_path))
    forced = {"ATS_STRESS_PROGRESS": "1"}  # stderr is not a terminal here: lines instead of the bar
    r = runner.invoke(app, ["run", sc, "--out", str(tmp_path / "a")], env=forced)
    assert r.exit_code == 0
    assert "t=2.00/2 scenario s  fenced now=0 uaf=0" in r.stderr and "scenario s" not in r.stdout
    r = runner.invoke(app, ["run", sc, "--out", str(tmp_path / "b"), "--quiet"], env=forced)
    assert r.exit_code == 0 and "scenario s" not in r.output
    r = runner.invoke(app, ["run", sc, "--out", str(tmp_path / "c")])
    assert r.exit_code == 0 and "scenario s" not in r.output


def test_on_a_terminal_the_sim_progress_is_a_bar_of_scenario_seconds(tmp_path, monkeypatch):
    from ats_stress.cluster.cli.run import err_console

    monkeypatch.setattr(err_console, "_force_terminal", True)
    r = runner.invoke(app, ["run", str(scenario_file(tmp_path)), "--out", str(tmp_path / "a")],
                      env={"COLUMNS": "120"})
    assert r.exit_code == 0
    assert "2.0/2 scenario s" in r.stderr and "━" in r.stderr and "fenced now=0 uaf=0" in r.stderr
