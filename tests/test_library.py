"""The built-in scenario library: `ats-stress scenarios` lists it, and every command takes a
library name wherever it takes a scenario file (``library.resolve`` inside ``load_scenario``)."""

from __future__ import annotations

import json

import yaml
from typer.testing import CliRunner

from ats_stress.cluster.cli import app
from ats_stress.cluster.scenario import library, load_scenario
from helpers import BASE

runner = CliRunner()


def test_scenarios_lists_every_library_file_with_the_first_sentence_of_its_comment():
    files = sorted(library.LIBRARY.glob("*.yaml"))
    assert len(files) >= 10 and library.names() == [p.stem for p in files]
    r = runner.invoke(app, ["scenarios"], env={"COLUMNS": "100"})
    assert r.exit_code == 0, r.output
    flat = " ".join(r.output.split())
    for path in files:
        assert path.stem in r.output
        words = library.describe(path).split()
        assert words and " ".join(words[:6]) in flat, path.stem
    assert max(len(line) for line in r.output.splitlines()) <= 100


def test_describe_takes_the_first_sentence_of_the_opening_comment(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text("# One thing: it hangs\n# for 2 s. Then more.\nname: x\n# not this\n")
    assert library.describe(p) == "One thing: it hangs for 2 s."
    p.write_text("name: x\n")
    assert library.describe(p) == ""


def test_a_library_name_loads_the_library_file_with_or_without_yaml(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing of that name here
    for arg in ("single-hang", "single-hang.yaml"):
        assert library.resolve(arg) == library.LIBRARY / "single-hang.yaml"
        assert load_scenario(arg).name == "single-hang"


def test_a_file_in_the_working_directory_wins_over_the_library_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "single-hang.yaml").write_text(yaml.safe_dump({**BASE, "name": "mine"}))
    assert load_scenario("single-hang.yaml").name == "mine"
    assert load_scenario("single-hang").name == "single-hang"  # no file called that: the library's


def test_run_and_validate_take_a_library_name(tmp_path):
    r = runner.invoke(app, ["validate", "short-hang-no-fence"])
    assert r.exit_code == 0 and "valid: 'short-hang-no-fence'" in r.output, r.output
    out = tmp_path / "o"
    r = runner.invoke(app, ["run", "short-hang-no-fence", "--set", "duration=1", "--set", "chaos=[]",
                            "--set", "topology.endpoints=32", "--set", "topology.domains=4", "--quiet",
                            "--out", str(out)])
    assert r.exit_code in (0, 1), r.output
    assert json.loads((out / "summary.json").read_text())["scenario"] == "short-hang-no-fence"


def test_an_unknown_name_is_bad_input_listing_the_library(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for command in (["validate", "single-hangg"], ["run", "single-hangg", "-q"],
                    ["compare", "single-hangg", "--policies", "arm-smmu-v3"],
                    ["sweep", "single-hangg", "--param", "seed=1,2"], ["explore", "single-hangg"]):
        r = runner.invoke(app, command)
        assert r.exit_code == 2, (command, r.output)
        flat = " ".join(r.output.split())
        assert "single-hangg: no such file, and no scenario of that name" in flat
        assert "single-hang," in flat and "ats-stress scenarios" in flat
        assert "Traceback" not in r.output
