"""Every scenario in the library runs on the sim runtime and its expectations hold, as do the
variants its comments suggest and the default scenario under other seeds.

The runs are independent and single-threaded, so they go through a pool of processes once per
module (one per core) and each test checks its own; a run that raised fails its own test only.
"""

import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
import yaml

from ats_stress.cluster.runtime.sim import run_sim
from ats_stress.cluster.scenario import load_scenario

LIBRARY = sorted((Path(__file__).resolve().parent.parent / "configs" / "scenarios").glob("*.yaml"))
WANTED = {"single-hang", "short-hang-no-fence", "slow-tail", "flapping-device", "lost-completions",
          "lying-device", "surprise-removal", "itag-exhaustion", "mass-hang", "invalidation-storm",
          "reset-fails", "scale-1000-mixed", "lazy-flush", "quarantine-fast-timeout"}
#: the commands the scenarios' comments suggest: (id, scenario, --policy, --set ...), each must hold
COMMENTED = [("single-hang --policy quarantine", "single-hang", "quarantine", []),
             ("lazy-flush --set host.flush=strict", "lazy-flush", None, ["host.flush=strict"])]
#: a live run interleaves events as another seed would: `make run` must not depend on seed 1's luck.
#: Seeds 8 and 10 stall a healthy unmap longest (two overlapping hangs), 9 finds the lossy device latest.
DEFAULT_SEEDS = [8, 9, 10]


def _run(job: tuple) -> dict:
    path, policy, sets, seed = job
    try:
        s = run_sim(load_scenario(path, sets, policy=policy, seed=seed))
    except Exception as exc:  # noqa: BLE001 - reported by the test that owns this run
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {"failed": [e for e in s["expectations"] if not e["ok"]], "ok": s["ok"], "status": s["status"]}


def _jobs() -> dict[str, tuple]:
    by_stem = {p.stem: str(p) for p in LIBRARY}
    jobs = {p.stem: (str(p), None, [], None) for p in LIBRARY}
    jobs.update({ident: (by_stem[stem], policy, sets, None) for ident, stem, policy, sets in COMMENTED})
    jobs.update({f"scale-1000-mixed seed {s}": (by_stem["scale-1000-mixed"], None, [], s) for s in DEFAULT_SEEDS})
    return jobs


@pytest.fixture(scope="module")
def outcomes() -> dict[str, dict]:
    jobs = _jobs()
    order = sorted(jobs, key=lambda k: "scale" not in k)  # the longest first, so the pool ends together
    with ProcessPoolExecutor(max_workers=max(1, min(2, os.cpu_count() or 1))) as pool:
        results = dict(zip(order, pool.map(_run, [jobs[k] for k in order])))
    return results


def check(outcome: dict, what: str) -> None:
    assert "error" not in outcome, f"{what}: {outcome.get('error')}"
    assert not outcome["failed"], f"{what}: {outcome['failed']}"
    assert outcome["ok"] and outcome["status"] == "complete"


def test_the_library_has_every_scenario_the_issue_names_each_with_a_comment_and_expectations():
    names = {p.stem for p in LIBRARY}
    assert WANTED <= names, WANTED - names
    for p in LIBRARY:
        text = p.read_text()
        assert text.startswith("#"), f"{p.name} starts without a comment saying what it shows"
        assert yaml.safe_load(text).get("expect"), f"{p.name} has no expectations"


@pytest.mark.parametrize("stem", [p.stem for p in LIBRARY])
def test_scenario_expectations_hold_on_the_sim_runtime(outcomes, stem):
    check(outcomes[stem], stem)


@pytest.mark.parametrize("ident", [c[0] for c in COMMENTED])
def test_the_commands_scenario_comments_suggest_hold_their_expectations(outcomes, ident):
    stem, options = ident.split(" ", 1)
    assert options in Path(_jobs()[stem][0]).read_text(), f"{stem}'s comment no longer suggests {options}"
    check(outcomes[ident], ident)


@pytest.mark.parametrize("seed", DEFAULT_SEEDS)
def test_the_default_scenarios_expectations_hold_for_other_timings(outcomes, seed):
    check(outcomes[f"scale-1000-mixed seed {seed}"], f"seed {seed}")
