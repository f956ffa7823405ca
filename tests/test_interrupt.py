"""A run that is interrupted writes the summary gathered so far, marked, before it exits."""

import json

import yaml

from helpers import BASE, sigterm_once_under_way



def test_sigterm_mid_run_writes_the_summary_so_far_marked_interrupted(tmp_path):
    sc = tmp_path / "long.yaml"
    sc.write_text(yaml.safe_dump({**BASE, "duration": 3600}))
    out = tmp_path / "out"
    # the first progress line: the run is under way
    stderr = sigterm_once_under_way(["run", str(sc), "--out", str(out)], lambda line: "t=" in line,
                                    env={"ATS_STRESS_PROGRESS": "1"})
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["ok"] is False
    assert 0 < summary["sim_time_s"] < 3600
    assert summary["unmaps"]["count"] > 0  # what was gathered is there
    assert "interrupted" in stderr
