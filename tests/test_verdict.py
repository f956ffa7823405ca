"""The verdict names every failure a kernel would show (issue 24, item 1): UAF, hard lockup, soft
lockup / RCU stall, healthy devices fenced, no culprit fenced, saturation; SAFE only when none
applies; and when the policy fenced nothing, why."""

from __future__ import annotations

import pytest

from ats_stress.cluster.experiments import properties
from ats_stress.cluster.results import verdict as V
from helpers import HANG_5, run, scenario

#: a hang long enough for the one-queue proposal to spin past both lockup detectors
HANG_21 = [{"at": 1, "fault": "hang", "endpoints": [5], "duration": 21}]


def figures(**over):
    """A summary's figures as the verdict reads them, all quiet unless overridden."""
    s = {"status": "complete", "uaf_exposures": 0, "uaf_by_sid": {}, "first_uaf_s": None, "irqs_off_max_s": 1.0,
         "flush_max_s": 2.0, "fenced_healthy": 0, "unfenced_culprits": [], "fences": [], "transport": None,
         "sync_timeouts": 0, "hw_atc_timeouts": 0, "cmdq_errors": 0, "notes": {}, "command_queues": 1}
    s.update(over)
    return s


def test_the_bounds_are_explores_own_constants():
    assert V.LOCKUP_BOUND_S is properties.LOCKUP_BOUND_S and V.STALL_BOUND_S is properties.STALL_BOUND_S


def test_safe_only_when_nothing_applies_and_it_says_what_it_checked():
    v = V.verdict(None, figures())
    assert v["safe"] and v["modes"] == [] and v["line"].startswith("SAFE: no UAF exposure")
    assert "interrupts off at most 1s" in v["line"] and "at most 2s inside one flush" in v["line"]


@pytest.mark.parametrize("over,mode,words", [
    ({"uaf_exposures": 3, "uaf_by_sid": {"5": 3}, "first_uaf_s": 2.5}, "uaf", "3 UAF exposures"),
    ({"irqs_off_max_s": properties.LOCKUP_BOUND_S + 0.01}, "hard_lockup", "hard lockup"),
    ({"flush_max_s": properties.STALL_BOUND_S + 0.01}, "soft_lockup", "soft lockup / RCU stall"),
    ({"fenced_healthy": 2}, "healthy_fenced", "2 healthy devices fenced"),
    ({"unfenced_culprits": [{"sid": 17, "at_s": 6.0, "fault_start_s": 5.0}]}, "no_culprit_fenced",
     "no culprit fenced: stream 17"),
])
def test_each_failure_mode_alone_makes_the_run_unsafe_and_is_named(over, mode, words):
    v = V.verdict(None, figures(**over))
    assert v["modes"] == [mode] and not v["safe"]
    assert v["line"].startswith("UNSAFE: ") and words in v["line"]


def test_at_the_bound_is_not_a_lockup_past_it_is():
    at = V.failures(figures(irqs_off_max_s=properties.LOCKUP_BOUND_S, flush_max_s=properties.STALL_BOUND_S))
    assert at == []  # the detectors fire past watchdog_thresh, as explore's properties bound them


def test_saturation_alone_is_inconclusive_and_with_a_uaf_both_are_named():
    sat = {"saturated": True, "saturation": ["..."]}
    v = V.verdict(None, figures(transport=sat))
    assert v["modes"] == ["saturated"] and v["line"].startswith("INCONCLUSIVE: transport saturated")
    v = V.verdict(None, figures(transport=sat, uaf_exposures=1, uaf_by_sid={"5": 1}, first_uaf_s=1.0))
    assert v["modes"] == ["uaf", "saturated"] and v["line"].startswith("UNSAFE: 1 UAF exposure ")
    assert "transport saturated" in v["line"]


def test_a_run_cut_short_says_its_verdict_holds_so_far():
    v = V.verdict(None, figures(status="interrupted", sim_time_s=4.0))
    assert v["line"].endswith("(the run interrupted at 4s: so far)")


# --- on the simulator ------------------------------------------------------------------------------


def test_mainline_hang_is_uaf_and_no_culprit_fenced_because_it_has_no_recovery():
    s = run(chaos=HANG_5)
    v = s["verdict"]
    assert v["modes"] == ["uaf", "no_culprit_fenced"]
    assert [c["sid"] for c in s["unfenced_culprits"]] == [5]
    assert s["unfenced_culprits"][0]["fault_start_s"] == 2.0
    # caught at the first CMD_SYNC that timed out waiting on it: 1 s after its first ATC_INV
    assert 3.0 <= s["unfenced_culprits"][0]["at_s"] <= 3.1
    assert len(v["inaction"]) == 1 and "arm-smmu-v3 has no recovery" in v["inaction"][0]


def test_a_slow_device_that_answers_is_not_a_missed_culprit_though_a_timeout_saw_it_busy():
    # stream 6 answers every invalidation in ~2 ms: a CMD_SYNC that timed out on the hung 5 may
    # find one of 6's in flight, but 6 never kept one unanswered for the whole 1 s timeout
    chaos = HANG_5 + [{"at": 1, "fault": "slow", "endpoints": [6], "latency": {"median": "2ms", "p99": "4ms"},
                       "duration": 8}]
    s = run(chaos=chaos)
    assert [c["sid"] for c in s["unfenced_culprits"]] == [5]


def test_the_one_queue_proposal_spins_into_both_lockups_catches_nobody_and_says_why():
    s = run(policy={"name": "fence-on-timeout"}, chaos=HANG_21, duration=24)
    v = s["verdict"]
    assert v["modes"] == ["hard_lockup", "soft_lockup", "no_culprit_fenced"]
    assert s["uaf_exposures"] == 0 and s["fence_count"] == 0
    assert s["irqs_off_max_s"] > 20  # one window for the whole wedge: the proposal spins as written
    why = " ".join(v["inaction"])
    assert "named no culprit" in why and "With one command queue" in why
    assert "ATC_INV timeout (60s) is longer than the fault (21s)" in why


def test_the_proposal_with_spare_queues_fences_the_culprit_and_is_safe():
    s = run(policy={"name": "fence-on-timeout", "culprit_search": "per-device-batches"}, chaos=HANG_5,
            hardware={"atc_inv_completion_timeout": 60, "command_queues": 5})
    v = s["verdict"]
    assert v["safe"], v["line"]
    assert [f["sid"] for f in s["fences"]] == [5] and s["unfenced_culprits"] == []
    assert "every faulty device the driver timed out on fenced (1 fence)" in v["line"] and v["inaction"] == []


def test_the_series_never_acts_when_the_hardware_timeout_outlasts_the_hang():
    s = run(policy={"name": "quarantine"}, chaos=HANG_5)
    v = s["verdict"]
    assert "uaf" in v["modes"] and "no_culprit_fenced" in v["modes"]
    assert any("raised no CERROR_ATC_INV_SYNC: its ATC_INV timeout (60s) is longer than the fault (6s)" in w
               and "the series, which acts only on CERROR_ATC_INV_SYNC, had nothing to act on" in w
               for w in v["inaction"])
    fot = run(policy={"name": "fence-on-timeout"}, chaos=HANG_5)  # acts on the software timeout: not said of it
    assert not any("acts only on CERROR" in w for w in fot["verdict"]["inaction"])


def test_a_lying_device_leaks_but_is_never_a_missed_culprit_nothing_points_at_it():
    lie = [{"at": 1, "fault": "lie", "endpoints": [5], "duration": 3}]
    s = run(chaos=lie, duration=4)
    v = s["verdict"]
    assert v["modes"] == ["uaf"]
    assert v["inaction"] and "has no recovery" in v["inaction"][0]
    s = run(policy={"name": "fence-on-timeout"}, chaos=lie, duration=4)
    assert s["verdict"]["modes"] == ["uaf"]
    assert "The driver saw no error" in s["verdict"]["inaction"][0] and "lying device" in s["verdict"]["inaction"][0]


def test_inaction_names_a_gerror_that_waited_for_a_cpu_with_interrupts_off():
    sc = scenario(policy={"name": "quarantine"}, chaos=HANG_5)
    why = V.inaction(sc, figures(cmdq_errors=2, hw_atc_timeouts=2, gerror_irqs=2, gerror_irqs_late=1,
                                 gerror_irq_delay_max_s=0.95))
    assert why == ["1 of 2 GERROR interrupt(s) waited up to 950ms for their CPU (host.gerror_irq_cpu), which was "
                   "spinning inside a flush with interrupts off; the queue stayed halted meanwhile."]
    assert V.inaction(sc, figures(fences=[{"sid": 5}])) == []  # it acted
    assert V.inaction(scenario(), figures()) == []  # nothing was faulty


def test_done_when_report_md_of_single_hang_under_fence_on_timeout_names_the_lockup(tmp_path):
    # issue 24's own check, on the library scenario (its hang, topology and one queue; a tenth of
    # its unmap and DMA rates to keep the suite fast: the CPU spins all the same)
    from typer.testing import CliRunner

    from ats_stress.cluster.cli import app

    r = CliRunner().invoke(app, ["run", "single-hang", "--policy", "fence-on-timeout", "-q", "--out", str(tmp_path),
                                 "--set", "workload.unmaps_per_s=200", "--set", "workload.dma_per_endpoint_per_s=5"])
    assert r.exit_code == 1, r.output  # its expectations are mainline's leak: this policy does not leak
    assert "verdict: UNSAFE: hard lockup: a CPU kept interrupts off for 19.9s" in r.output
    md = (tmp_path / "report.md").read_text()
    verdict = md.split("## Verdict\n\n", 1)[1].splitlines()[0]
    assert verdict.startswith("- **UNSAFE: hard lockup: a CPU kept interrupts off for ")
    assert "(watchdog_thresh 10s)" in verdict and "no culprit fenced: stream 17" in verdict
    assert "SAFE: no UAF" not in md
