"""``ats-stress explore`` end to end on small scenarios, in this process (--workers 1): what it finds,
that every minimal scenario fails under ``run`` exactly on its property, exit codes, interruption."""

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from ats_stress.cluster.cli import app
from helpers import overridden, sigterm_once_under_way

EARLY = Path(__file__).resolve().parent / "plugins" / "early_complete.py"
runner = CliRunner()

#: 8 endpoints, 6 s: a run takes a few tens of milliseconds
SMALL = overridden(duration=6, topology={"smmus": 1, "endpoints": 8, "domains": 2, "cpus": 2, "endpoints_per_actor": 8,
                                         "pages_per_domain": 16, "spare_pages": 32, "atc_entries": 32},
                   workload={"unmaps_per_s": 100, "dma_per_endpoint_per_s": 40},
                   explore={"faults": ["hang", "slow", "flap"], "fault_duration": ["200ms", "4s"], "settle": "1s"})


def explore(tmp_path, data, *args, name="s.yaml"):
    sc = tmp_path / name
    sc.write_text(yaml.safe_dump(data))
    out = tmp_path / "out"
    r = runner.invoke(app, ["explore", str(sc), "--workers", "1", "--seed", "1", "--out", str(out), "-q", *args])
    report = json.loads((out / "explore.json").read_text()) if (out / "explore.json").exists() else None
    return r, report, out


def reproduces(out: Path, rec: dict, *args) -> None:
    """``run`` on the minimal YAML exits 1 with exactly the property's figure violated, as observed."""
    r = runner.invoke(app, ["run", str(out / rec["minimal_file"]), "-q", "--out", str(out / "rerun"), *args])
    assert r.exit_code == 1, r.output
    s = json.loads((out / "rerun" / "summary.json").read_text())
    assert [(e["name"], e["observed"]) for e in s["expectations"] if not e["ok"]] == \
        [(next(iter(rec["minimal"]["expect"])), rec["minimal_observed"])]


def test_arm_smmu_v3_leaks_and_the_minimal_schedule_is_one_hang_longer_than_its_timeout(tmp_path):
    r, report, out = explore(tmp_path, SMALL, "--check", "uaf", "--budget", "8", "--shrink-max", "1")
    assert r.exit_code == 1, r.output
    (rec,) = [v for v in report["violations"] if v["shrunk"]]
    (step,) = rec["minimal"]["chaos"]
    assert step["fault"] == "hang" and step["duration"] > 1.0  # ARM_SMMU_POLL_TIMEOUT_US: 1 s
    assert rec["shrink_complete"] and rec["minimal_steps"] <= rec["original_steps"]
    reproduces(out, rec)
    md = (out / "report.md").read_text()
    assert "## uaf" in md and rec["minimal_file"] in md


def test_a_plug_in_that_completes_before_its_fence_lands_leaks_in_at_most_two_steps(tmp_path):
    data = {**SMALL, "policy": {"name": "test-early-complete"}}
    r, report, out = explore(tmp_path, data, "--check", "uaf", "--budget", "8", "--shrink-max", "1",
                             "--policy-file", str(EARLY))
    assert r.exit_code == 1, r.output
    shrunk = [v for v in report["violations"] if v["shrunk"]]
    assert shrunk and all(v["minimal_steps"] <= 2 for v in shrunk)
    assert report["plugin_args"] == [f"--policy-file {EARLY.resolve()}"]
    for rec in shrunk:
        reproduces(out, rec, "--policy-file", str(EARLY))


def test_lockup_is_the_longest_interrupts_off_window_against_a_bound(tmp_path):
    data = {**SMALL, "policy": {"name": "amd-iommu"}}  # wait_on_sem: 100 ms with interrupts off
    r, report, out = explore(tmp_path, data, "--check", "lockup", "--lockup-bound", "50ms", "--budget", "2",
                             "--shrink-max", "1", "--shrink-runs", "20")
    assert r.exit_code == 1, r.output
    rec = next(v for v in report["violations"] if v["shrunk"])
    assert rec["minimal"]["expect"] == {"irqs_off_max": {"max": 0.05}} and rec["minimal_observed"] > 0.05
    reproduces(out, rec)


def test_nothing_violated_is_exit_0_and_still_written(tmp_path):
    r, report, out = explore(tmp_path, SMALL, "--check", "healthy-fenced", "--budget", "2")  # arm never fences
    assert r.exit_code == 0, r.output
    assert report["explored"] == 2 and report["violations"] == [] and not list(out.glob("minimal-*"))
    assert "| healthy-fenced | no healthy device fenced | 0 of 2 | 0 | - |" in (out / "report.md").read_text()
    for name in ("explore.json", "report.md"):
        assert str(out / name) in r.output  # the list of every file written


@pytest.mark.parametrize("args, data, says", [
    (["--check", "nope"], SMALL, "--check nope: the properties are"),
    (["--check", "expect.fences"], SMALL, "has no upper bound on 'fences'"),
    (["--time", "soon"], SMALL, "--time 'soon'"),
    (["--lockup-bound", "0"], SMALL, "must be above 0"),
    ([], {**SMALL, "explore": {"settle": "6s"}}, "explore.settle"),
    ([], {**SMALL, "explore": {"steps": [3, 1]}}, "explore.steps"),
    (["--address", "http://127.0.0.1:8265"], SMALL, "ray job submit"),  # refused before Ray starts
])
def test_bad_explore_input_is_exit_2_with_one_paragraph(tmp_path, args, data, says):
    r, _, _ = explore(tmp_path, data, *args)
    assert r.exit_code == 2 and says in r.output and "Traceback" not in r.output, r.output


def test_sigterm_mid_search_writes_what_was_found_and_exits_130(tmp_path):
    sc = tmp_path / "long.yaml"
    sc.write_text(yaml.safe_dump(SMALL))
    out = tmp_path / "out"
    # printed when the first violation is found: the search is under way
    sigterm_once_under_way(["explore", str(sc), "--workers", "1", "--check", "uaf", "--budget", "100000",
                            "--shrink-max", "1", "--seed", "1", "--out", str(out)],
                           lambda line: line.startswith("first uaf violation"))
    report = json.loads((out / "explore.json").read_text())
    assert report["interrupted"] and report["violations"][0]["property"] == "uaf"
    for rec in report["violations"]:
        if rec.get("minimal_file"):  # cut short or not, a minimal scenario written is one that fails
            reproduces(out, rec)


def test_a_time_limit_ends_the_search_and_says_so(tmp_path):
    from ats_stress.cluster.experiments.explore import run_explore
    from ats_stress.cluster.experiments.explore_report import write_outputs
    from ats_stress.cluster.experiments.pool import Pool
    from ats_stress.cluster.experiments.properties import select
    from ats_stress.cluster.scenario import scenario_from_dict

    sc = scenario_from_dict(SMALL)
    with Pool(1) as pool:
        s = run_explore(sc, pool, select(sc, ["uaf"]), seed=1, budget=None, time_limit=0.0)  # already past
    res, _ = write_outputs(s, tmp_path, "built-in", [])
    assert res["time_up"] and res["explored"] == 0 and not res["interrupted"]
    assert "The time limit (0) ended the search." in (tmp_path / "report.md").read_text()
