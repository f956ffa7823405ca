"""What the plots decide, checked on the figures themselves: compare charts draw a row of panels
per policy on shared axes and say "none" for a panel with nothing in it, counts spanning orders of
magnitude go on a log axis, and no tick label carries an offset."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ats_stress.cluster.results.plots import COMPARE_SERIES_FIGURES, compare_figure, count_axis, plain_ticks  # noqa: E402
from ats_stress.cluster.results.sampler import SAMPLE_EVERY, RunSampler, compact_series  # noqa: E402
from ats_stress.cluster.runtime.sim import run_sim  # noqa: E402
from helpers import HANG_5, scenario  # noqa: E402


def series_of(sc):
    sampler = RunSampler(sc, run_id="t", om_every=None)
    summary = run_sim(sc, progress_every=SAMPLE_EVERY, sample=sampler)
    return summary, compact_series(sampler.samples())


def texts(ax) -> list[str]:
    return [t.get_text() for t in ax.texts]


def test_compare_charts_give_each_policy_its_panels_on_shared_axes_and_say_none_for_nothing():
    sc = scenario(duration=6, chaos=HANG_5)
    runs = {p: series_of(scenario(duration=6, chaos=HANG_5, policy={"name": p}))
            for p in ("arm-smmu-v3", "amd-iommu", "intel-vtd")}
    (_, title, columns), = [f for f in COMPARE_SERIES_FIGURES if f[0] == "compare-endpoints.png"]
    fig = compare_figure(sc, runs, title, columns)
    n = len(runs)
    assert len(fig.axes) == (n + 1) * len(columns)  # each column: its chaos strip, then a panel per policy
    by_column = [fig.axes[j * (n + 1) + 1:(j + 1) * (n + 1)] for j in range(len(columns))]
    uaf = by_column[[c[0] for c in columns].index("uaf")]
    fenced = by_column[[c[0] for c in columns].index("fenced")]
    assert [ax.get_ylabel() for ax in by_column[0]] == list(runs)  # one row per policy
    assert all(texts(ax) == ["none"] for ax in fenced)  # nobody fences: every panel says so
    vtd = uaf[list(runs).index("intel-vtd")]
    assert texts(vtd) == ["none"] and texts(uaf[0]) == []  # VT-d leaks nothing; mainline arm does
    assert all(ax.get_shared_y_axes().joined(uaf[0], ax) for ax in uaf)
    assert all(ax.get_shared_x_axes().joined(uaf[0], ax) for column in by_column for ax in column)
    plt.close(fig)


def test_counts_spanning_orders_of_magnitude_go_on_a_symmetric_log_axis_others_on_a_linear_one():
    fig, (a, b) = plt.subplots(1, 2)
    count_axis(a, [0, 1, 5, 2000])
    count_axis(b, [0, 3, 40])
    assert (a.get_yscale(), b.get_yscale()) == ("symlog", "linear")
    plt.close(fig)


def test_flat_data_gets_no_offset_tick_labels():
    fig, (a, b) = plt.subplots(1, 2)
    ys = [19.99811, 19.99812, 19.99810]
    a.plot([0, 1, 2], ys)
    b.plot([0, 1, 2], ys)
    plain_ticks(b, ys)
    fig.canvas.draw()
    assert a.yaxis.get_offset_text().get_text() != ""  # what matplotlib does by itself
    assert b.yaxis.get_offset_text().get_text() == ""
    assert b.get_ylim()[0] == 0 and all("e" not in t.get_text() for t in b.get_yticklabels())
    plt.close(fig)
