"""Terminal output: expectation lines with units, and compare/sweep tables that fit the console
(transposed when that fits, else split into tables that repeat the policy or point)."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from ats_stress.cluster.results.figures import BY_KEY
from ats_stress.cluster.results.text import COMPARE_COLUMNS, expectation_line, print_compare, print_summary
from ats_stress.cluster.runtime.sim import run_sim
from helpers import scenario


@pytest.mark.parametrize("e,line", [
    ({"name": "fence_after_sync_max", "ok": True, "observed": 1.0, "bound": {"max": 1.1}},
     "fence_after_sync_max <= 1.1 s: observed 1.0 s, ok"),
    ({"name": "healthy_unmap_latency_p99", "ok": True, "observed": 0.000123, "bound": {"max": 0.05}},
     "healthy_unmap_latency_p99 <= 50.0 ms: observed 0.123 ms, ok"),
    ({"name": "healthy_unmap_latency_p99", "ok": False, "observed": 3.931, "bound": {"max": 0.05}},
     "healthy_unmap_latency_p99 <= 50.0 ms: observed 3931 ms, VIOLATED"),
    ({"name": "uaf_exposures", "ok": False, "observed": 7, "bound": {"max": 0.0}},
     "uaf_exposures <= 0: observed 7, VIOLATED"),
    ({"name": "fences", "ok": True, "observed": 3, "bound": {"max": 5.0, "min": 1.0}},
     "fences >= 1 and <= 5: observed 3, ok"),
    ({"name": "syncs_per_unmap", "ok": True, "observed": 2.0123, "bound": {"max": 2.5}},
     "syncs_per_unmap <= 2.5: observed 2.01, ok"),
    ({"name": "fence_latency_max@10s", "ok": False, "observed": None, "bound": {"max": 2.0}},
     "fence_latency_max@10s <= 2.0 s: observed -, VIOLATED"),
    ({"name": "transport_not_saturated", "ok": False, "observed": ["lagged 300 ms"], "bound": {"saturated": False}},
     "transport_not_saturated saturated = False: observed lagged 300 ms, VIOLATED"),
])
def test_expectation_lines_name_the_bound_and_observation_in_one_unit(e, line):
    assert expectation_line(e) == line


def test_the_summary_prints_expectation_lines_not_dicts():
    sc = scenario(duration=3, expect={"uaf_exposures": {"max": 0}, "healthy_unmap_latency_max": {"max": "2s"}})
    con = Console(file=io.StringIO(), width=100)
    print_summary(run_sim(sc), con)
    out = con.file.getvalue()
    assert "expect uaf_exposures <= 0: observed 0, ok" in out
    assert "expect healthy_unmap_latency_max <= 2.0 s: observed " in out
    assert "{" not in out


def rows(n: int, point: bool = False) -> list[dict]:
    out = []
    for i in range(n):
        r = {key: (123456 + i if BY_KEY[key].kind == "count" else 1.234567 + i) for key, _, fmt in COMPARE_COLUMNS}
        r["policy"] = f"policy-number-{i}"
        if point:
            r["point"] = {"policy.sync_timeout": f"{i}00ms", "topology.endpoints": 1024 + i}
            r["policy"] = ", ".join(f"{k}={v}" for k, v in r["point"].items())
        out.append(r)
    return out


def printed(rows_: list[dict], width: int) -> str:
    con = Console(file=io.StringIO(), width=width)
    print_compare(rows_, con, title="a title")
    return con.file.getvalue()


@pytest.mark.parametrize("n,point,width", [(2, False, 100), (5, False, 100), (5, False, 80), (9, True, 100),
                                           (3, True, 100), (12, False, 60)])
def test_compare_and_sweep_tables_fit_the_console_and_show_every_cell_whole(n, point, width):
    text = printed(rows(n, point), width)
    assert max(len(line) for line in text.splitlines()) <= width, text
    assert "…" not in text
    for r in rows(n, point):
        for key, _, fmt in COMPARE_COLUMNS:
            assert fmt(r[key]) in text
        if point:
            for v in r["point"].values():
                assert str(v) in text
        else:
            assert r["policy"] in text


def test_compare_is_transposed_when_it_fits_and_split_when_not():
    narrow = printed(rows(5), 80)
    assert "(1/" in narrow and "figure" not in narrow  # one row per policy, split over tables
    wide = printed(rows(2), 100)
    assert "(1/" not in wide and "figure" in wide  # figures down, policies across
    assert wide.count("policy-number-0") == 1


def test_a_sweep_over_three_long_keys_lists_its_points_once_and_numbers_them_in_the_figure_tables():
    keys = ("hardware.atc_inv_completion_timeout", "policy.culprit_search", "hardware.command_queues")
    many = rows(45)
    for i, r in enumerate(many):
        r["point"] = dict(zip(keys, (f"{i // 9}s", ("bisect", "linear", "per-device-batches")[i % 3], 1 + i % 9)))
    text = printed(many, 80)
    assert max(len(line) for line in text.splitlines()) <= 80 and "…" not in text, text
    assert "the points" in text and all(k in text for k in keys)
    for key, _, fmt in COMPARE_COLUMNS:  # every figure of every point, whole
        assert all(fmt(r[key]) in text for r in many)


def test_a_sweep_table_is_headed_by_the_swept_keys_not_policy():
    text = printed(rows(9, point=True), 100)
    assert "policy.sync_timeout" in text and "topology.endpoints" in text
    assert "┃ policy " not in text


@pytest.mark.parametrize("n,point,width", [(6, False, 100), (6, False, 80), (4, True, 100), (2, False, 100)])
def test_over_several_seeds_every_figure_says_sum_mean_or_max_and_shows_its_lowest_and_highest_seed(n, point, width):
    from ats_stress.cluster.results.text import _range

    many = rows(n, point)
    for r in many:
        r.update(runs=2, failed=0, flush="lazy")
        r["min_max"] = {key: {"min": r[key] * 0.9, "max": r[key] * 1.1, "of": 2, "runs": 2} for key, _, _ in COMPARE_COLUMNS}
    text = printed(many, width)
    assert max(len(line) for line in text.splitlines()) <= width and "…" not in text, text
    flat = " ".join(text.split())
    for key, _, fmt in COMPARE_COLUMNS:
        assert f"({BY_KEY[key].over_seeds})" in flat
        assert all(fmt(r[key]) in text and _range(BY_KEY[key], r["min_max"][key]) in text for r in many), key
    assert "lowest and the highest seed" in flat and "lazy" in text


# --- --format text: plain-ASCII tables, for mail ------------------------------------------------------


def _tiny(tmp_path):
    import yaml

    from helpers import overridden

    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(overridden(duration=0.2)))
    return str(path)


@pytest.mark.parametrize("command", [
    ["run", "{tiny}", "-q", "--out", "{tmp}/r"],
    ["compare", "{tiny}", "--policies", "arm-smmu-v3,quarantine", "--workers", "1", "-q", "--out", "{tmp}/c"],
    ["sweep", "{tiny}", "--param", "policy.sync_timeout=100ms,1s", "--workers", "1", "-q", "--out", "{tmp}/s"],
    ["policies"],
    ["scenarios"],
    ["examples"],
])
def test_format_text_prints_plain_ascii_tables_without_colour(tmp_path, command):
    from typer.testing import CliRunner

    from ats_stress.cluster.cli import app

    args = [a.format(tiny=_tiny(tmp_path), tmp=tmp_path) for a in command]
    text = CliRunner().invoke(app, args + ["--format", "text"])
    rich = CliRunner().invoke(app, args)  # after a text one: the default is back
    assert text.exit_code == rich.exit_code == 0, text.output
    assert text.output.isascii() and "\x1b" not in text.output, text.output
    if command[0] in ("run", "compare", "sweep"):
        assert "+----" in text.output and "| " in text.output, text.output
        assert not rich.output.isascii()  # boxes
    assert all(line == line.rstrip() for line in text.output.splitlines())


def test_an_unknown_format_is_bad_input():
    from typer.testing import CliRunner

    from ats_stress.cluster.cli import app

    r = CliRunner().invoke(app, ["policies", "--format", "html"])
    assert r.exit_code == 2 and "--format 'html'" in r.output and "text" in r.output


def test_skipped_arrivals_are_explained_in_the_terminal_and_in_report_md(tmp_path):
    """unmaps.skipped_no_mapping: arrivals that found no page mapped in their domain."""
    from ats_stress.cluster.results.report import write_report

    sc = scenario(duration=0.3, topology__pages_per_domain=2, workload__unmaps_per_s=5000)
    s = run_sim(sc)
    skipped = s["unmaps"]["skipped_no_mapping"]
    assert skipped > 0
    buf = io.StringIO()
    print_summary(s, Console(file=buf, width=100))
    (row,) = [ln for ln in buf.getvalue().splitlines() if "arrivals skipped: no page mapped" in ln]
    assert row.split("│")[2].strip() == str(skipped), row
    md = write_report(sc, s, None, tmp_path)[0].read_text()
    assert f"{skipped:,} arrivals skipped: each found no page mapped in its domain" in md
    quiet = run_sim(scenario(duration=0.3))  # none skipped: no line about it
    buf = io.StringIO()
    print_summary(quiet, Console(file=buf, width=100))
    assert quiet["unmaps"]["skipped_no_mapping"] == 0 and "skipped" not in buf.getvalue()


def test_every_command_of_the_help_is_described_in_one_line_each():
    """`ats-stress --help` lists each command's first sentence; a docstring broken mid-sentence
    (explain's "each CMD_SYNC it / waited on") showed as two lines."""
    from typer.testing import CliRunner

    from ats_stress.cluster.cli import app

    r = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0
    rows = [ln for ln in r.output.splitlines() if ln.startswith("│ ") and "─" not in ln]
    names = [ln[2:].split()[0] for ln in rows if ln[2:3].strip()]
    assert "explain" in names and "examples" in names
    assert len(rows) == len(names), r.output  # no continuation lines at 200 columns
