"""explore's pure parts, no runs: the scenario writer (minimal YAML as a person writes it), the
clocks of a scenario, boundary draws, the progress figure and when a run is long enough to judge it,
and which properties are checked."""

import math
import random
from pathlib import Path

import pytest
import yaml

from ats_stress.cluster import plugins
from ats_stress.cluster.experiments.clocks import clocks, longest
from ats_stress.cluster.experiments.explore import base_dict
from ats_stress.cluster.experiments.grammar import EPSILONS, MICROS, draw_variant, edge, grammar, nice
from ats_stress.cluster.experiments.properties import PROGRESS_MARGIN_S, decide_progress, select
from ats_stress.cluster.results.summary import progress_max, unmap_frontier
from ats_stress.cluster.scenario import Scenario, ScenarioError, load_scenario, scenario_from_dict
from ats_stress.cluster.scenario.plan import last_fault_end
from ats_stress.cluster.scenario.writing import LIBRARY_ORDER, duration_text, normalized, plain, scenario_yaml
from helpers import overridden

ROOT = Path(__file__).resolve().parent.parent
PLANTED = Path(__file__).resolve().parent / "plugins" / "planted.py"


# --- the minimal YAML ----------------------------------------------------------------------------


@pytest.mark.parametrize("seconds, text", [
    (4.9999999999999996e-06, "5us"), (5e-06, "5us"), (0.15, "150ms"), (2.0, "2s"), (1.000005, "1.000005s"),
    (0.0999, "99.9ms"), (60, "60s"), (1.5e-7, "150ns"), (0.001001, "1.001ms"), (0.0, "0s")])
def test_a_duration_is_written_in_the_largest_unit_it_fills_with_no_float_noise(seconds, text):
    assert duration_text(seconds) == text


def test_the_minimal_yaml_is_the_library_order_with_units_and_nothing_left_at_its_default():
    sc = scenario_from_dict(overridden(
        duration=6.000000000000001, hardware={"atc_inv_completion_timeout": 0.05, "command_queues": 1},
        policy={"name": "fence-on-timeout", "sync_timeout": "250ms"},
        chaos=[{"fault": "slow", "at": 1.0000049999999999, "endpoints": [3], "duration": 0.30000000000000004,
                "latency": {"median": 0.001, "p99": 0.004}}],
        expect={"uaf_exposures": {"max": 0}, "progress_max": {"max": 62}}))
    text = scenario_yaml(sc)
    assert not any(noise in text for noise in ("e-0", "0000000", "9999999"))  # no float noise, no exponents
    assert "duration: 6s" in text and "atc_inv_completion_timeout: 50ms" in text and "sync_timeout: 250ms" in text
    assert "- {at: 1.000005s, fault: slow, endpoints: [3], duration: 300ms, latency: {median: 1ms, p99: 4ms}}" in text
    assert "uaf_exposures: {max: 0}" in text and "progress_max: {max: 62s}" in text
    assert "inv_latency" not in text and "command_queues" not in text  # the defaults ('5us' parses as 4.999e-06)
    keys = [line.split(":")[0] for line in text.splitlines() if line and not line.startswith((" ", "-"))]
    assert keys == [k for k in LIBRARY_ORDER if k in keys]
    assert scenario_from_dict(yaml.safe_load(text)) == Scenario.model_validate(normalized(sc.model_dump()))


def test_normalized_is_what_the_yaml_reads_back_and_a_fixpoint():
    sc = load_scenario(ROOT / "examples/explore/small.yaml")
    g, base, edges = grammar(sc), base_dict(sc), sorted(clocks(sc).values())
    for i in range(60):
        v = draw_variant(base, g, 4, i, edges)
        n = normalized(v)
        back = Scenario.model_validate(yaml.safe_load(scenario_yaml(Scenario.model_validate(v))))
        assert n == back.model_dump(mode="json", exclude_none=True) and normalized(n) == n


def test_a_schedule_with_no_fault_is_written_as_an_empty_chaos_list():
    text = scenario_yaml(scenario_from_dict(overridden(chaos=[])))
    assert "chaos: []" in text and plain(scenario_from_dict(overridden(chaos=[]))).get("chaos", []) == []


# --- the clocks and boundary draws ---------------------------------------------------------------


def test_clocks_are_the_policys_duration_parameters_its_own_timeouts_and_the_hardwares():
    arm = clocks(scenario_from_dict(overridden(hardware={"atc_inv_completion_timeout": 5, "flr_time": 0.2})))
    assert arm == {"policy.sync_timeout = the driver's poll timeout": 1.0,
                   "hardware.atc_inv_completion_timeout": 5.0, "hardware.flr_time": 0.2,
                   "hardware.link_latency": 1e-6}
    amd = clocks(scenario_from_dict(overridden(policy={"name": "amd-iommu"})))  # lazy: the flush queue's timer
    assert amd["IOVA_DEFAULT_FQ_TIMEOUT"] == 0.01 and amd["the invalidation timeout the driver programs "
                                                          "(hw_inv_timeout)"] == 1.0  # CTRL_INV_TO, not the 60 s
    assert 60.0 not in amd.values() and amd["policy.loop_timeout = the driver's poll timeout = hardware.flr_time"] == 0.1
    plugins.load([PLANTED])  # a plug-in's own Duration parameters count, with no list of policy names
    race = clocks(scenario_from_dict(overridden(policy={"name": "test-grace-race", "grace": "3ms"})))
    assert race["policy.grace"] == 0.003
    assert longest(scenario_from_dict(overridden())) == ("hardware.atc_inv_completion_timeout", 60.0)


def _near_a_clock(x: float, edges) -> bool:
    return any(math.isclose(x, c * (1 + s * e), rel_tol=1e-9, abs_tol=1e-9) for c in edges for s in (-1, 1)
               for e in EPSILONS) or any(math.isclose(x, c + s * m * 1e-6, abs_tol=1e-9) for c in edges
                                         for s in (-1, 1) for m in MICROS)


def test_edge_lands_at_each_scale_either_side_of_a_clock():
    rng = random.Random(1)
    got = {edge(rng, 1.0) for _ in range(400)}
    assert {0.999, 1.001, 0.99, 1.01, 0.9, 1.1} <= got and {1.000001, 0.999995, 1.00005} <= got


def test_a_share_of_durations_lands_at_a_clocks_edge_and_steps_start_microseconds_after_another():
    sc = scenario_from_dict(overridden(duration=12, explore={"faults": ["hang"], "steps": [2, 2],
                                                             "fault_duration": ["10ms", "5s"], "settle": "1s"}))
    g, base, edges = grammar(sc), base_dict(sc), sorted(clocks(sc).values())
    assert g.boundary == 0.3  # the documented default
    steps = [draw_variant(base, g, 2, i, edges)["chaos"] for i in range(400)]
    durations = [st["duration"] for chaos in steps for st in chaos]
    at_edge = sum(_near_a_clock(d, edges) for d in durations) / len(durations)
    assert 0.2 < at_edge < 0.4
    assert sum(d > 1.0 and d < 1.002 for d in durations) > 10  # just past the 1 s software timeout
    close = sum(any(0 < b["at"] - (a["at"] + dur) <= 50e-6 or 0 < b["at"] - a["at"] <= 50e-6
                    for dur in (0, a["duration"])) for a, b in steps)
    assert close > 20  # two faults a few microseconds apart
    uniform = g.model_copy(update={"boundary": 0.0})
    drawn = [st["duration"] for i in range(400) for st in draw_variant(base, uniform, 2, i, edges)["chaos"]]
    assert sum(_near_a_clock(d, edges) for d in drawn) / len(drawn) < 0.03  # log-uniform: by chance only
    assert not any(d != nice(d) for d in drawn)  # and never finer than 3 digits
    assert draw_variant(base, g, 2, 7, edges) == draw_variant(base, g, 2, 7, edges)


# --- progress ------------------------------------------------------------------------------------


def test_the_last_fault_ends_with_its_duration_a_resets_flr_or_a_permanent_faults_start():
    def end(chaos, **over):
        return last_fault_end(scenario_from_dict(overridden(chaos=chaos, **over)))

    assert end([]) == 0.0
    assert end([{"at": 1, "fault": "hang", "endpoints": [1], "duration": 2},
                {"at": 2, "fault": "slow", "endpoints": [2], "duration": 0.5,
                 "latency": {"median": "1ms", "p99": "2ms"}}]) == 3.0
    assert end([{"at": 4, "fault": "reset", "endpoints": [1]}], hardware={"flr_time": 0.25}) == 4.25
    assert end([{"at": 4, "fault": "removed", "endpoints": [1]}]) == 4.0  # nothing changes after it
    assert end([{"at": 1, "fault": "hang", "endpoints": [1], "duration": 2, "repeat": {"every": 3, "times": 2}}]) == 6
    assert end([{"at": 8, "fault": "hang", "endpoints": [1], "duration": 5}]) is None  # still on at the end


def test_progress_is_the_longest_wait_after_the_last_fault_from_a_short_frontier():
    # (completion, latency, affected): one unmap waited 3 s across the fault's end at 5 s, a later one 0.5 s
    trace = [(1.0, 0.001, False), (6.0, 3.0, True), (6.2, 0.1, False), (7.0, 0.5, False), (7.1, 1e-5, False)]
    frontier = unmap_frontier(trace)
    assert frontier == [(7.1, 1e-5), (7.0, 0.5), (6.0, 3.0)]  # nothing beaten by a later completion
    assert progress_max([frontier], [], 5.0, 8.0) == 1.0  # 5 s -> 6 s, not its 3 s
    assert progress_max([frontier], [], 6.5, 8.0) == 0.5
    assert progress_max([frontier], [2.5], 6.5, 8.0) == 1.5  # one still open: 6.5 s to the end, a lower bound
    assert progress_max([frontier], [], None, 8.0) is None and progress_max([frontier], [], 8.0, 8.0) is None
    brute = max(min(lat, done - 5.5) for done, lat, _ in trace if done > 5.5)
    assert progress_max([frontier], [], 5.5, 8.0) == brute


def _summary(since, waited, incomplete, sim_time):
    return {"status": "complete", "progress": {"since_s": since, "max_s": waited},
            "unmaps": {"incomplete": incomplete}, "sim_time_s": sim_time}


def test_a_run_too_short_to_judge_progress_says_how_long_it_must_be():
    checks = [{"property": "progress", "figure": "progress_max", "bound": {"max": 62.0}}]
    assert decide_progress(_summary(3.0, 10.0, 5, 14.0), checks) == math.ceil(3 + 62 + PROGRESS_MARGIN_S)
    assert decide_progress(_summary(3.0, 70.0, 5, 80.0), checks) is None  # violated already
    assert decide_progress(_summary(3.0, 0.01, 0, 14.0), checks) is None  # every unmap completed: judged
    assert decide_progress(_summary(3.0, 10.0, 5, 70.0), checks) is None  # long enough
    assert decide_progress(_summary(3.0, 10.0, 5, 14.0), []) is None  # not checked


# --- which properties ----------------------------------------------------------------------------


def test_the_default_checks_are_progress_not_incomplete_and_the_scenarios_min_bounds_stay_out():
    sc = scenario_from_dict(overridden(expect={"uaf_exposures": {"min": 1}, "unmap_latency_max": {"max": "3s"}},
                                       explore={"settle": "2s"}))
    checks = select(sc, None)
    assert [c["property"] for c in checks] == ["uaf", "healthy-fenced", "progress", "lockup", "stall",
                                               "expect.unmap_latency_max"]
    progress = checks[2]
    assert progress["bound"] == {"max": 62.0}  # the 60 s hardware timeout + settle
    assert "hardware.atc_inv_completion_timeout 60s + settle 2s" in progress["means"]
    assert select(sc, ["incomplete"])[0]["figure"] == "unmaps_incomplete"  # still there for who asks
    assert select(sc, ["progress"], progress=5.0)[0]["bound"] == {"max": 5.0}
    with pytest.raises(ScenarioError, match="no bound on 'uaf_exposures'"):
        select(sc, ["expect.uaf_exposures"])  # the scenario's own min says what its own chaos causes


def test_explore_expect_asks_for_lower_bounds():
    sc = scenario_from_dict(overridden(explore={"expect": {"unmaps_completed": {"min": 500},
                                                           "flush_max": {"min": "1ms", "max": "5s"}}}))
    checks = {c["property"]: c for c in select(sc, ["expect"])}
    assert checks["expect.unmaps_completed"]["bound"] == {"min": 500.0}
    assert checks["expect.unmaps_completed"]["means"] == "explore.expect unmaps_completed >= 500"
    assert checks["expect.flush_max"]["means"] == "explore.expect 1ms <= flush_max <= 5s"
    assert base_dict(sc)["expect"]["unmaps_completed"] == {"min": 500.0}  # every variant carries it
    with pytest.raises(ScenarioError, match="explore.expect: unknown figure nope"):
        scenario_from_dict(overridden(explore={"expect": {"nope": {"max": 1}}}))
