"""Every scenario in the library runs on the sim runtime and its expectations hold."""

from pathlib import Path

import pytest
import yaml

from ats_stress.cluster.scenario import load_scenario
from ats_stress.cluster.runtime.sim import run_sim

LIBRARY = sorted((Path(__file__).resolve().parent.parent / "configs" / "scenarios").glob("*.yaml"))
WANTED = {"single-hang", "short-hang-no-fence", "slow-tail", "flapping-device", "lost-completions",
          "lying-device", "surprise-removal", "itag-exhaustion", "mass-hang", "invalidation-storm",
          "reset-fails", "scale-1000-mixed"}


def test_the_library_has_every_scenario_the_issue_names_each_with_a_comment_and_expectations():
    names = {p.stem for p in LIBRARY}
    assert WANTED <= names, WANTED - names
    for p in LIBRARY:
        text = p.read_text()
        assert text.startswith("#"), f"{p.name} starts without a comment saying what it shows"
        assert yaml.safe_load(text).get("expect"), f"{p.name} has no expectations"


@pytest.mark.parametrize("path", LIBRARY, ids=[p.stem for p in LIBRARY])
def test_scenario_expectations_hold_on_the_sim_runtime(path):
    summary = run_sim(load_scenario(path))
    failed = [e for e in summary["expectations"] if not e["ok"]]
    assert not failed, f"{path.name}: {failed}"
    assert summary["ok"] and summary["status"] == "complete"


@pytest.mark.parametrize("seed", [8, 9, 10])
def test_the_default_scenarios_expectations_hold_for_other_timings(seed):
    # a live run interleaves events as another seed would: `make run` must not depend on seed 1's
    # luck. Seeds 8 and 10 stall a healthy unmap longest (two overlapping hangs), 9 finds the lossy
    # device latest.
    path = next(p for p in LIBRARY if p.stem == "scale-1000-mixed")
    sc = load_scenario(path)
    summary = run_sim(sc.model_copy(update={"seed": seed}))
    failed = [e for e in summary["expectations"] if not e["ok"]]
    assert not failed, failed
