"""`ats-stress observe` picks what the last run into DIR wrote, says which, and stops with one
paragraph when its shipped config, rules or dashboard are missing (no Prometheus is started here:
tests/test_prometheus.py runs the real one)."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from ats_stress.cluster.cli import app
from ats_stress.cluster.results import observe


@pytest.fixture
def fake_prometheus(monkeypatch):
    monkeypatch.setattr(observe.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(observe, "_import", lambda om, storage, promtool: None)


def summary(run_dir, runtime):
    run_dir.mkdir(exist_ok=True)
    (run_dir / "summary.json").write_text(json.dumps({"runtime": runtime, "scenario": "s", "policy": "arm-smmu-v3",
                                                      "seed": 3, "status": "complete"}))


@pytest.mark.parametrize("missing", ["CONFIG", "ALERTS", "DASHBOARD"])
def test_observe_without_its_shipped_files_is_a_clear_exit_2(tmp_path, monkeypatch, fake_prometheus, missing):
    monkeypatch.setattr(observe, missing, tmp_path / "gone" / "file")
    r = CliRunner().invoke(app, ["observe", str(tmp_path)])
    assert r.exit_code == 2
    flat = " ".join(r.output.split())
    assert "is missing (looked for" in flat and str(tmp_path / "gone" / "file") in flat and "Reinstall" in flat
    assert "Traceback" not in r.output


def test_the_config_is_the_shipped_one_with_absolute_rules_and_this_runs_targets(tmp_path, fake_prometheus):
    p = observe.plan(tmp_path, 1)
    cfg = yaml.safe_load(p.config.read_text())
    shipped = yaml.safe_load(observe.CONFIG.read_text())
    assert cfg["global"] == shipped["global"]
    assert cfg["rule_files"] == [str(observe.ALERTS)] and observe.ALERTS.is_file()
    assert cfg["scrape_configs"][0]["file_sd_configs"][0]["files"] == [str(tmp_path.resolve() / observe.TARGETS)]
    assert p.mode == "live" and "the live run to come" in p.source


def test_observe_serves_what_the_last_run_wrote_and_says_which(tmp_path, fake_prometheus):
    d = tmp_path / "run"
    summary(d, "sim")
    (d / observe.OPENMETRICS).write_text("# EOF\n")
    (d / observe.TARGETS).write_text("[]")  # a leftover of an earlier live run: not the last run's
    p = observe.plan(d, 1)
    assert p.mode == "sim" and "the sim run of s (policy arm-smmu-v3, seed 3, complete)" in p.source
    assert "scrape_configs" not in yaml.safe_load(p.config.read_text())
    summary(d, "ray")
    p = observe.plan(d, 1)
    assert p.mode == "live" and "the ray run of s" in p.source and "actors are gone" in p.source
    assert any(p.source in line for line in observe.instructions(p, d))


def test_a_sim_run_without_metrics_is_named(tmp_path, fake_prometheus):
    summary(tmp_path, "sim")
    r = CliRunner().invoke(app, ["observe", str(tmp_path)])
    assert r.exit_code == 2 and "left no metrics.om" in " ".join(r.output.split())
