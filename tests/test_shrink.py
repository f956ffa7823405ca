"""Explore's grammar and shrinker as pure logic: no runs, a predicate stands in for the model."""

import random

import pytest

from ats_stress.cluster.experiments.grammar import draw_variant, grammar
from ats_stress.cluster.experiments.explore import base_dict
from ats_stress.cluster.experiments.shrink import Shrink
from ats_stress.cluster.scenario import ScenarioError, scenario_from_dict
from helpers import overridden, scenario


def test_variants_depend_only_on_seed_and_index_and_stay_inside_the_grammar():
    sc = scenario(duration=10, explore={"faults": ["hang", "slow", "reset"], "steps": [2, 3], "endpoints": [1, 3],
                                        "settle": "1.5s"})
    g, base = grammar(sc), base_dict(sc)
    drawn = [draw_variant(base, g, 5, i) for i in range(30)]
    assert drawn == [draw_variant(base, g, 5, i) for i in range(30)]
    assert drawn != [draw_variant(base, g, 6, i) for i in range(30)]
    for d in drawn:
        scenario_from_dict(d)  # a valid scenario
        assert 2 <= len(d["chaos"]) <= 3
        for st in d["chaos"]:
            assert st["fault"] in ("hang", "slow", "reset") and 1 <= len(st["endpoints"]) <= 3
            assert st["at"] + st.get("duration", 0) <= 10 - 1.5 + 1e-9  # every fault ends settle before the end
    assert {st["fault"] for d in drawn for st in d["chaos"]} == {"hang", "slow", "reset"}


def test_a_grammar_with_no_room_for_faults_is_bad_input():
    with pytest.raises(ScenarioError, match="explore.settle"):
        grammar(scenario(duration=2, explore={"settle": "3s"}))


def violates(d: dict):
    """Stand-in for a run: 'UAF' when endpoint 3 hangs for more than 1 s in a run of at least 4 endpoints."""
    hit = [st for st in d["chaos"] if st["fault"] == "hang" and 3 in st["endpoints"] and st.get("duration", 0) > 1.0]
    return len(hit) if hit and d["topology"]["endpoints"] >= 4 else None


def shrink(start: dict, parallel: int, order_seed: int, budget: int = 500) -> Shrink:
    """Drive a Shrink with up to ``parallel`` runs in flight, finishing in a shuffled order."""
    chain = Shrink(start, "uaf", settle=1.0, budget=budget)
    rng = random.Random(order_seed)
    flight = []
    while not chain.done:
        while len(flight) < parallel and (job := chain.next_job()) is not None:
            flight.append(job)
        assert flight, "the chain waits for nothing"
        key, cand = flight.pop(rng.randrange(len(flight)))
        chain.feed(key, violates(cand))
    return chain


START = overridden(duration=12, topology={"smmus": 1, "endpoints": 32, "domains": 4, "cpus": 4},
                   chaos=[{"at": 2.5, "fault": "slow", "endpoints": [1, 7], "duration": 3.0,
                           "latency": {"median": 0.2, "p99": 0.8}},
                          {"at": 4.0, "fault": "hang", "endpoints": [3, 9], "duration": 6.0},
                          {"at": 5.0, "fault": "drop", "endpoints": [12], "duration": 2.0, "loss": 0.5}])


def test_shrinking_keeps_the_violation_and_finds_the_same_minimum_whatever_the_parallelism():
    serial = shrink(START, 1, 0)
    assert serial.complete and violates(serial.best)  # never a scenario that does not fail
    (step,) = serial.best["chaos"]  # one step: a plain hang of endpoint 3, just over the 1 s that matters
    assert (step["fault"], step["endpoints"]) == ("hang", [3]) and 1.0 < step["duration"] <= 1.1
    assert serial.best["topology"]["endpoints"] == 4 and serial.best["duration"] <= step["at"] + 1.01 + 1.0 + 0.1
    for parallel, order in ((2, 1), (4, 2), (8, 3)):
        sharded = shrink(START, parallel, order)
        assert (sharded.best, sharded.spent, sharded.round_no) == (serial.best, serial.spent, serial.round_no)


def test_a_shrink_budget_cuts_the_search_with_a_violating_scenario():
    cut = shrink(START, 3, 4, budget=5)
    assert cut.spent <= 5 and not cut.complete
    assert cut.best is not None and violates(cut.best)


def test_a_violation_that_does_not_reproduce_yields_no_minimal():
    chain = shrink(overridden(chaos=[]), 2, 0)
    assert chain.best is None and chain.spent == 1


def test_the_example_explore_scenario_is_valid_with_room_for_a_lockup_past_the_threshold():
    from pathlib import Path

    from ats_stress.cluster.experiments.properties import LOCKUP_BOUND_S
    from ats_stress.cluster.scenario import load_scenario

    sc = load_scenario(Path(__file__).resolve().parent.parent / "examples/explore/small.yaml")
    g = grammar(sc)  # docs/explore.sh runs it under every built-in policy
    assert g.fault_duration[1] > LOCKUP_BOUND_S and sc.duration - g.settle > g.fault_duration[1]


def test_the_empty_schedule_is_the_first_thing_tried():
    from ats_stress.cluster.experiments.shrink import candidates

    assert next(candidates(START, 1.0))["chaos"] == []
    chain = Shrink(START, "uaf", settle=1.0, budget=500)
    key, first = chain.next_job()  # round 0: the violation itself, as it will be written
    chain.feed(key, 1)
    key, cand = chain.next_job()
    assert key == (1, 0) and cand["chaos"] == []
    chain.feed(key, 3)  # a policy that leaks on a healthy machine: nothing of the schedule is needed
    assert chain.best["chaos"] == [] and chain.spent == 2


def test_without_the_lying_device_is_tried_next():
    from ats_stress.cluster.experiments.shrink import candidates

    lie = {"at": 1.0, "fault": "lie", "endpoints": [3], "duration": 2.0}
    d = {**START, "chaos": [lie] + START["chaos"]}
    first, second = list(candidates(d, 1.0))[:2]
    assert first["chaos"] == [] and second["chaos"] == START["chaos"]
    alone = list(candidates({**START, "chaos": [lie]}, 1.0))
    assert sum(c["chaos"] == [] for c in alone) == 1  # a lie alone: only the empty schedule drops it
