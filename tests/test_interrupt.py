"""A run that is interrupted writes the summary gathered so far, marked, before it exits."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import yaml

from helpers import BASE

ROOT = Path(__file__).resolve().parent.parent


def test_sigterm_mid_run_writes_the_summary_so_far_marked_interrupted(tmp_path):
    sc = tmp_path / "long.yaml"
    sc.write_text(yaml.safe_dump({**BASE, "duration": 3600}))
    out = tmp_path / "out"
    env = {**os.environ, "ATS_STRESS_PROGRESS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "ats_stress.cluster.cli", "run", str(sc), "--out", str(out)],
                            cwd=ROOT, env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()  # the first progress line: the run is under way
        assert "t=" in line, line
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["ok"] is False
    assert 0 < summary["sim_time_s"] < 3600
    assert summary["unmaps"]["count"] > 0  # what was gathered is there
    assert "interrupted" in stderr
