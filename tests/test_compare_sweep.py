"""compare and sweep say what they compare: policy variants as columns (NAME:key=value), --flush,
each figure's sum, mean or max over the seeds with its lowest and highest seed, a unit on every
figure; sweep's --policy, its record of --set, and its rows' policy. Real sim runs of a tiny
scenario in this process (--workers 1); the charts are checked on the figures themselves."""

from __future__ import annotations

import json

import matplotlib
import pytest
from typer.testing import CliRunner

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ats_stress.cluster.cli import app  # noqa: E402
from ats_stress.cluster.experiments.compare import (aggregate, parse_policies, parse_variant,  # noqa: E402
                                                    variants, with_flush)
from ats_stress.cluster.experiments.sweep import run_sweep  # noqa: E402
from ats_stress.cluster.results.figures import BY_KEY, time_unit  # noqa: E402
from ats_stress.cluster.results.plots import CHART_FIGURES, compare_chart, sweep_axis, sweep_chart, value_text  # noqa: E402
from ats_stress.cluster.runtime.sim import run_sim  # noqa: E402
from ats_stress.cluster.scenario import ScenarioError  # noqa: E402
from helpers import overridden, scenario  # noqa: E402
from test_cli import write  # noqa: E402

runner = CliRunner()
#: a hang of endpoint 5 from 0.5 s to 2.5 s of a 3 s run; the hardware gives an ATC_INV up after 50 ms
HANG = dict(duration=3, chaos=[{"at": 0.5, "fault": "hang", "endpoints": [5], "duration": 2}],
            hardware={"atc_inv_completion_timeout": "50ms", "command_queues": 1})
#: a policy that fences the hung device within the hang when the hardware gives up first: iommu-core on
#: VT-d, whose submitter reads the ITE and its ITESID itself (no interrupt to wait for)
FENCES = {"name": "iommu-core", "driver": "intel-vtd"}


# --- policy variants ------------------------------------------------------------------------------


def test_a_variant_is_a_policy_then_its_parameters_joined_by_colons_and_keeps_its_label():
    v = parse_variant("fence-on-timeout:culprit_search=linear:sync_timeout=100ms")
    assert (v.name, v.params, v.label) == ("fence-on-timeout", {"culprit_search": "linear", "sync_timeout": "100ms"},
                                           "fence-on-timeout:culprit_search=linear:sync_timeout=100ms")
    vs = parse_policies("quarantine:version=v1, quarantine:version=v4,arm-smmu-v3,quarantine:version=v1")
    assert [v.label for v in vs] == ["quarantine:version=v1", "quarantine:version=v4", "arm-smmu-v3"]  # a repeat once
    for bad in ("quarantine:version", ":version=v1", "quarantine:version=v1:version=v2", "quarantine:=v1"):
        with pytest.raises(ScenarioError, match="--policies"):
            parse_variant(bad)


@pytest.mark.parametrize("spec,named", [
    ("quarantin:version=v1", "unknown policy 'quarantin'"),
    ("quarantine:versoin=v1", "has no parameter 'versoin'"),
    ("quarantine:version=v9", "policy.version"),
    ("fence-on-timeout:sync_timeout=soon", "policy.sync_timeout"),
    ("quarantine:version", "is not key=value"),
])
def test_a_bad_variant_is_exit_2_in_one_paragraph_naming_it_before_any_run(tmp_path, spec, named):
    r = runner.invoke(app, ["compare", str(write(tmp_path, overridden(**HANG))), "--policies", f"arm-smmu-v3,{spec}",
                            "--workers", "1", "--out", str(tmp_path / "o"), "-q"])
    assert r.exit_code == 2, r.output
    assert named in r.output and repr(spec) in r.output.replace("\n", "")
    assert "Traceback" not in r.output and not (tmp_path / "o" / "compare.json").exists()


def test_flush_default_is_each_policys_kconfig_default_and_flush_forces_one_mode_for_all():
    sc = scenario(**HANG)
    names = parse_policies("arm-smmu-v3,amd-iommu,intel-vtd")
    assert [s.flush_mode() for s in variants(sc, names, 1)] == ["strict", "lazy", "lazy"]
    assert [s.flush_mode() for s in variants(with_flush(sc, "strict"), names, 1)] == ["strict"] * 3
    assert [s.flush_mode() for s in variants(with_flush(sc, "lazy"), names, 1)] == ["lazy"] * 3
    with pytest.raises(ScenarioError, match="--flush 'eager'"):
        with_flush(sc, "eager")


def test_compare_runs_variants_as_columns_and_each_row_says_how_its_seeds_combine(tmp_path):
    out = tmp_path / "cmp"
    r = runner.invoke(app, ["compare", str(write(tmp_path, overridden(**HANG))), "--policies",
                            "quarantine:version=v1,quarantine:version=v4,amd-iommu", "--flush", "strict",
                            "--seeds", "2", "--set", "workload.unmaps_per_s=300", "--workers", "1", "--out", str(out),
                            "-q"])
    assert r.exit_code == 0, r.output
    report = json.loads((out / "compare.json").read_text())
    v1, v4, amd = report["rows"]
    assert [row["policy"] for row in report["rows"]] == report["policies"] == [
        "quarantine:version=v1", "quarantine:version=v4", "amd-iommu"]
    assert (v1["policy_name"], v1["policy_params"], v4["policy_params"]) == ("quarantine", {"version": "v1"},
                                                                             {"version": "v4"})
    assert [(x["variant"], x["policy_params"]["version"]) for x in report["runs"][:4]] == [
        ("quarantine:version=v1", "v1")] * 2 + [("quarantine:version=v4", "v4")] * 2
    # what the versions do: v1 blames the SID one slot before the CMD_SYNC (a healthy device),
    # v4 retries per SID and never fences a healthy one
    assert v1["fenced_healthy"] > 0 and v4["fenced_healthy"] == 0
    assert [row["flush"] for row in report["rows"]] == ["strict"] * 3  # --flush strict, amd-iommu included
    assert report["flush"] == "strict" and report["flush_forced"] and report["sets"] == ["workload.unmaps_per_s=300"]
    # each figure: the sum, mean or max of the seeds, and their lowest and highest
    for row in report["rows"]:
        runs = [x for x in report["runs"] if x["variant"] == row["policy"]]
        uaf = [x["uaf_exposures"] for x in runs]
        p99 = [x["healthy_unmap_latency_s"]["p99"] for x in runs]
        stall = [x["worst_stall_s"] for x in runs]
        assert row["uaf_exposures"] == sum(uaf) and row["healthy_p99"] == pytest.approx(sum(p99) / 2)
        assert row["worst_stall_s"] == max(stall)
        assert row["min_max"]["uaf_exposures"] == {"min": min(uaf), "max": max(uaf), "of": 2, "runs": 2}
        assert row["min_max"]["worst_stall_s"]["min"] == min(stall)
    assert {k: report["figures"][k]["over_seeds"] for k in ("uaf_exposures", "healthy_p99", "worst_stall_s")} == {
        "uaf_exposures": "sum", "healthy_p99": "mean", "worst_stall_s": "max"}
    text = " ".join(r.output.split())  # the table: labels say how, cells show lowest-highest
    assert all(f"({how})" in text for how in ("sum", "mean", "max")) and "lowest and the highest seed" in text
    assert "flush: strict for every policy (--flush)" in text
    lo, hi = amd["min_max"]["uaf_exposures"]["min"], amd["min_max"]["uaf_exposures"]["max"]
    assert f"{lo}-{hi}" in text


def test_aggregate_leaves_out_a_value_a_seed_does_not_have_and_says_how_many_had_one():
    runs = [run_sim(scenario(**HANG, seed=s, policy=FENCES)) for s in (1, 2)]
    none = run_sim(scenario(**HANG, seed=3, policy={"name": "arm-smmu-v3"}))  # fences nothing
    row = aggregate("x", runs + [none])
    latencies = [x["fence_latency_s"]["max"] for x in runs]
    assert none["fence_latency_s"]["max"] is None and None not in latencies
    assert row["fence_latency_s"] == max(latencies)
    assert row["min_max"]["fence_latency_s"] == {"min": min(latencies), "max": max(latencies), "of": 2, "runs": 3}


def test_every_duration_in_the_table_has_a_unit_even_zero():
    from ats_stress.cluster.results.text import COMPARE_COLUMNS, _range

    fmt = {k: f for k, _, f in COMPARE_COLUMNS}
    assert fmt["healthy_p50"](0.0) == "0s" and fmt["healthy_p50"](3.2e-5) == "32us"
    assert fmt["events_per_s"](65169.33) == "65169"
    assert _range(BY_KEY["healthy_p99"], {"min": 0.7382, "max": 0.7736, "of": 2, "runs": 2}) == "738-774ms"
    assert _range(BY_KEY["fence_latency_s"], {"min": 0.15, "max": 0.15, "of": 1, "runs": 2}) == "150-150ms in 1/2"


# --- compare.png ------------------------------------------------------------------------------------


def _panels(fig) -> dict[str, object]:
    return dict(zip(CHART_FIGURES, fig.axes))


def _bar_texts(ax) -> list[str]:
    return [t.get_text() for t in ax.texts]


def test_compare_png_chooses_each_panels_unit_from_its_values_and_prints_every_bar():
    rows = []
    for policy in ({"name": "arm-smmu-v3"}, FENCES):
        runs = [run_sim(scenario(**HANG, seed=s, policy=policy)) for s in (1, 2)]
        rows.append(aggregate(policy["name"], runs))
    fig = compare_chart(rows, "t", seeds=2)
    panels = _panels(fig)
    for key in ("healthy_p99", "worst_stall_s", "fence_latency_s", "irqs_off_max_s"):
        f = BY_KEY[key]
        values = [r[key] for r in rows]
        unit, scale = time_unit(values + [r["min_max"][key]["max"] for r in rows if r["min_max"][key]])
        ax = panels[key]
        assert ax.get_title().startswith(f"{f.title} ({unit})"), ax.get_title()
        assert _bar_texts(ax) == [value_text(v, f, unit, scale) for v in values]
    # arm-smmu-v3 waits out its 1 s software timeout: seconds; iommu-core fences within a few 50 ms timeouts
    assert panels["worst_stall_s"].get_title().startswith("worst healthy stall (s)")
    assert panels["fence_latency_s"].get_title().startswith("fence latency (ms)")
    assert _bar_texts(panels["fence_latency_s"])[0] == "none"  # arm-smmu-v3 fences nothing
    assert "per run, mean of 2 seeds" in panels["uaf_exposures"].get_title()
    plt.close(fig)


def _row(name: str, uaf: float) -> dict:
    """A row of one run: every figure 0 but its UAF count."""
    return {"policy": name, "runs": 1, "failed": 0, "flush": "strict", **{k: 0 for k in BY_KEY},
            "uaf_exposures": uaf, "min_max": {}}


def test_a_bar_that_dwarfs_the_rest_keeps_a_linear_axis_with_every_value_printed_or_goes_log_and_says_so():
    fig = compare_chart([_row("amd-iommu", 54000), _row("arm-smmu-v3", 7600), _row("intel-vtd", 0)])
    ax = _panels(fig)["uaf_exposures"]
    assert ax.get_xscale() == "linear" and "log" not in ax.get_title()
    assert _bar_texts(ax) == ["54,000", "7,600", "0"]
    plt.close(fig)
    fig = compare_chart([_row("amd-iommu", 54000), _row("arm-smmu-v3", 12), _row("intel-vtd", 0)])
    ax = _panels(fig)["uaf_exposures"]
    assert ax.get_xscale() == "symlog" and ax.get_title().endswith("log scale")
    assert _bar_texts(ax) == ["54,000", "12", "0"] and ax.get_xlim()[0] == 0
    plt.close(fig)


# --- sweep ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("values,kind", [
    (["50ms", "500ms", "5s", "60s"], "log"),
    ([1, 9, 33], "log"),
    ([64, 128, 192], "linear"),
    (["100ms", "200ms", "300ms"], "linear"),
    (["bisect", "linear", "per-device-batches"], "categorical"),
    ([0, 1, 10], "categorical"),
    ([True, False], "categorical"),
    (["60s"], "categorical"),
])
def test_sweep_lays_numbers_out_linearly_when_evenly_spaced_else_on_a_log_axis_else_as_categories(values, kind):
    assert sweep_axis(values)[0] == kind


def test_sweep_png_keeps_every_point_on_every_panel_and_says_none_where_a_value_is_missing(tmp_path):
    sc = scenario(**HANG, policy=FENCES)
    params = ["hardware.atc_inv_completion_timeout=50ms,500ms,5s,60s"]
    report = run_sweep(sc, params, 2, None, workers=1)
    rows = report["rows"]
    # the ITE comes only when the hardware gives up within the 2 s hang: at 50 ms and 500 ms
    assert [r["fence_latency_s"] is None for r in rows] == [False, False, True, True]
    fig = sweep_chart(rows, report["params"], "t", seeds=2)
    panels = _panels(fig)
    fig.canvas.draw()
    assert all(list(ax.get_xticks()) == [0.05, 0.5, 5.0, 60.0] for ax in fig.axes)  # every point, every panel
    assert all([t.get_text() for t in ax.get_xticklabels()] == ["50ms", "500ms", "5s", "60s"] for ax in fig.axes[-3:])
    assert all(ax.get_xscale() == "log" for ax in fig.axes)
    assert "(log scale)" in fig.axes[-1].get_xlabel()
    assert _bar_texts(panels["fence_latency_s"]) == ["none"] * 2
    line = panels["fence_latency_s"].lines[0]  # one series, joined (a numeric axis), the missing points nan
    assert line.get_linestyle() == "-" and [y == y for y in line.get_ydata()] == [True, True, False, False]
    for key in ("uaf_exposures", "fences", "worst_stall_s"):
        assert panels[key].get_ylim()[0] == 0
    # error bars from the lowest to the highest seed
    stall = rows[0]["min_max"]["worst_stall_s"]
    segments = [seg for c in panels["worst_stall_s"].collections for seg in c.get_segments()]
    assert any(seg[0][1] == pytest.approx(stall["min"]) and seg[1][1] == pytest.approx(stall["max"])
               for seg in segments)
    plt.close(fig)


def test_sweep_of_policies_draws_categories_without_joining_lines():
    sc = scenario(**HANG)
    report = run_sweep(sc, ["policy.name=arm-smmu-v3,quarantine"], 1, None, workers=1)
    assert [r["policy"] for r in report["rows"]] == ["arm-smmu-v3", "quarantine"]
    fig = sweep_chart(report["rows"], report["params"], "t")
    assert fig.axes[0].get_xscale() == "linear" and "(categorical)" in fig.axes[-1].get_xlabel()
    assert all(line.get_linestyle() == "None" for ax in fig.axes for line in ax.lines)
    plt.close(fig)


def test_sweep_takes_policy_records_its_sets_and_names_the_policy_in_rows_directory_and_title(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["sweep", str(write(tmp_path, overridden(**HANG))), "--policy", "quarantine",
                            "--param", "policy.version=v1,v4", "--set", "workload.unmaps_per_s=300",
                            "--workers", "1", "-q"])
    assert r.exit_code == 0, r.output
    out = tmp_path / "runs" / "sweep-t-quarantine"
    report = json.loads((out / "sweep.json").read_text())
    assert report["sets"] == ["workload.unmaps_per_s=300"] and report["policy"] == "quarantine"
    assert [(row["policy"], row["point"], row["label"]) for row in report["rows"]] == [
        ("quarantine", {"policy.version": "v1"}, "policy.version=v1"),
        ("quarantine", {"policy.version": "v4"}, "policy.version=v4")]
    assert [row["policy_params"]["version"] for row in report["rows"]] == ["v1", "v4"]
    assert "policy quarantine" in r.output and (out / "sweep.png").exists()
    r = runner.invoke(app, ["sweep", str(write(tmp_path, overridden(**HANG))), "--policy", "quarantin",
                            "--param", "seed=1,2", "--workers", "1", "-q"])
    assert r.exit_code == 2 and "unknown policy 'quarantin'" in r.output and "Traceback" not in r.output
