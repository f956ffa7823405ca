"""Run reports: report.md tells the story (scenario, verdict, fences, stall, expectations) and the
plots come from the model's own time series; `run` writes them, `compare` adds per-figure charts."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from ats_stress.cluster.cli import app
from ats_stress.cluster.experiments.compare import run_compare
from ats_stress.cluster.results.sampler import SAMPLE_EVERY, WEDGED_AFTER, RunSampler, compact_series, wedged_intervals
from ats_stress.cluster.results.report import write_report
from ats_stress.cluster.runtime.sim import run_sim
from helpers import BASE, HANG_5, scenario

PNG = b"\x89PNG\r\n\x1a\n"


def sampled(sc):
    sampler = RunSampler(sc, run_id="t", om_every=None)
    summary = run_sim(sc, progress_every=SAMPLE_EVERY, sample=sampler)
    return summary, sampler.samples()


def fence_scenario():
    return scenario(duration=8, policy={"name": "fence-on-timeout", "culprit_search": "per-device-batches",
                                        "reset_delay": 1.0},
                    hardware={"atc_inv_completion_timeout": 60, "command_queues": 4}, chaos=HANG_5,
                    expect={"uaf_exposures": {"max": 0}, "fenced_healthy": {"max": 0}})


def test_samples_are_on_scenario_time_and_follow_the_model():
    sc = fence_scenario()
    summary, s = sampled(sc)
    assert s["t"][0] == 0.0 and s["t"][-1] == sc.duration
    assert all(abs(b - a - SAMPLE_EVERY) < 1e-9 for a, b in zip(s["t"], s["t"][1:]))
    fenced = s["smmus"][0]["fenced"]
    assert max(fenced) >= 1 and fenced[0] == 0  # the fence shows up in the time series
    hang = s["endpoints"]["hang"]
    assert hang[s["t"].index(3.0)] == 1 and hang[0] == 0  # endpoint 5 hangs from 2 s
    assert len(s["latency_trace"]) == summary["unmaps"]["count"]
    assert s["step_targets"] == [[5]]
    c = compact_series(s)
    assert len(c["t"]) == len(c["cmdq_depth"]) == len(c["fenced"]) == len(s["t"])
    assert max(c["wedged_queues"]) >= 1 and c["wedged_queues"][0] == 0  # the hang wedges a queue


def test_report_of_a_fenced_hang_tells_who_was_fenced_and_that_nothing_leaked(tmp_path):
    sc = fence_scenario()
    summary, samples = sampled(sc)
    path = write_report(sc, summary, samples, tmp_path)[0]
    md = path.read_text()
    assert "SAFE: no UAF exposure" in md
    assert "| 0 | 2s | hang | 5 |" in md  # what the scenario did
    assert "| stream | fenced at | fault began |" in md and "| 5 |" in md and "culprit" in md
    assert "worst stall" in md and "software CMD_SYNC timeout" in md
    assert "| uaf_exposures | <= 0 | 0 | ok |" in md and "| fenced_healthy | <= 0 | 0 | ok |" in md
    for name in ("latency.png", "cmdq.png", "endpoints.png"):
        assert f"]({name})" in md
        assert (tmp_path / name).read_bytes()[:8] == PNG


def test_report_of_a_mainline_hang_says_unsafe_with_first_uaf_and_culprit_stream(tmp_path):
    sc = scenario(duration=8, chaos=HANG_5)
    summary, samples = sampled(sc)
    assert summary["uaf_exposures"] > 0
    md = write_report(sc, summary, samples, tmp_path)[0].read_text()
    # the verdict line first, naming every failure; then the detail and why nothing was fenced
    assert f"## Verdict\n\n- **UNSAFE: {summary['uaf_exposures']} UAF exposures (first at " in md
    assert "; no culprit fenced: stream 5 (faulty from 2s, " in md
    assert "- Why nothing was fenced: arm-smmu-v3 has no recovery" in md
    assert "stream 5" in md and "No stream was fenced." in md
    assert "is in uaf-trace.jsonl: `ats-stress explain " in md


def test_report_without_time_series_still_has_the_story(tmp_path):
    sc = scenario(duration=4, chaos=HANG_5)
    summary = run_sim(sc)
    md = write_report(sc, summary, None, tmp_path)[0].read_text()
    assert "Verdict" in md and "no time plots" in md
    assert not list(tmp_path.glob("*.png"))


def test_cli_run_writes_summary_report_plots_and_openmetrics(tmp_path):
    data = json.loads(json.dumps(BASE))
    data.update(duration=5, chaos=HANG_5)
    scen = tmp_path / "hang.yaml"
    scen.write_text(yaml.safe_dump(data))
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["run", str(scen), "-q", "-o", str(out)])
    assert r.exit_code == 0, r.output
    names = ("summary.json", "uaf-trace.jsonl", "report.md", "latency.png", "cmdq.png", "endpoints.png", "metrics.om")
    for name in names:
        assert (out / name).exists(), name
    listed = [line.strip() for line in r.output[r.output.index("written:"):].splitlines()[1:] if line.startswith("  ")]
    assert listed == [str(out / name) for name in names]  # every file it wrote, the PNGs too
    assert f"the story of a UAF: ats-stress explain {out} --uaf 1" in r.output
    om = (out / "metrics.om").read_text()
    assert om.endswith("# EOF\n") and "ats_uaf_exposures_total{" in om
    assert json.loads((out / "summary.json").read_text())["uaf_exposures"] > 0


def test_compare_adds_a_chart_per_figure_across_policies(tmp_path):
    sc = scenario(duration=5, chaos=HANG_5)
    report = run_compare(sc, ["arm-smmu-v3", "amd-iommu"], 1, tmp_path, workers=1)
    assert "series" not in report["runs"][0]  # the time series feed the charts, not compare.json
    for name in ("compare.png", "compare-latency.png", "compare-cmdq.png", "compare-endpoints.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG, name


def test_report_of_a_live_run_names_lost_actors_and_transport_saturation(tmp_path):
    sc = scenario(duration=4, chaos=HANG_5)
    summary = dict(run_sim(sc), runtime="ray",
                   lost={"actors": [{"kind": "device", "index": 1}], "endpoints": [16, 17], "nodes": []},
                   transport={"saturation": ["the actors ran up to 265 ms wall behind"]})
    md = write_report(sc, summary, None, tmp_path)[0].read_text()
    assert "actors lost: 1, endpoints lost with them: 2" in md
    assert "265 ms wall behind" in md


def test_wedged_intervals_say_which_queue_a_hang_wedged_from_when_and_until_when(tmp_path):
    sc = scenario(duration=10, hardware={"atc_inv_completion_timeout": 60, "command_queues": 2},
                  chaos=[{"at": 2, "fault": "hang", "endpoints": [5], "duration": 4}])
    summary, samples = sampled(sc)
    wedged = wedged_intervals(samples)
    assert wedged and {w["smmu"] for w in wedged} == {0}
    first = wedged[0]
    assert 2.0 <= first["start"] < 2.25  # when the CMD_SYNC that wedged it was queued, not a sample time
    assert 6.0 <= first["end"] <= 6.5  # clear once the device answers again (the hang ends at 6 s)
    assert 3.5 <= first["longest_s"] <= 4.5
    fenced_run = fence_scenario()  # quarantine: the wedged queue stays wedged after the fence
    summary, samples = sampled(fenced_run)
    wedged = wedged_intervals(samples)
    assert summary["fences"] and all(w["end"] is None for w in wedged if w["start"] < summary["fences"][0]["at_s"])
    md = write_report(fenced_run, summary, samples, tmp_path)[0].read_text()
    assert "smmu 0 queue" in md and "to the end of the run" in md


def test_a_queue_is_wedged_only_while_a_cmd_sync_waits_long():
    samples = {"t": [0.0, 0.25, 0.5, 0.75, 1.0],
               "smmus": [{"index": 0, "queue_sync_s": [[0, 0], [0.2, 0], [0.45, WEDGED_AFTER / 2], [0, 0], [0.3, 0]]}]}
    assert wedged_intervals(samples) == [
        {"smmu": 0, "queue": 0, "start": pytest.approx(0.05), "end": 0.75, "longest_s": 0.45},
        {"smmu": 0, "queue": 0, "start": pytest.approx(0.7), "end": None, "longest_s": 0.3}]


def test_the_compare_charts_worst_healthy_unmap_counts_the_ones_still_open():
    # one queue: from the hang at 2 s every healthy unmap waits behind the wedged CMD_SYNC, and for
    # a second none completes; the chart must show that stall as it grows, not only once it ends
    from ats_stress.cluster.experiments.pool import run_job

    sc = scenario(chaos=HANG_5, hardware={"command_queues": 1, "atc_inv_completion_timeout": 60})
    series = run_job(("summary", {"scenario": sc.model_dump(mode="python"), "series": True}))["series"]
    at = dict(zip(series["t"], series["worst_healthy_s"]))
    assert at[2.0] < 0.01 and 0.7 < at[2.75] < 0.76 and 0.95 < at[3.0]
