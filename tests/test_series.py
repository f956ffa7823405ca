"""``quarantine``: the posted series, version by version. Tests name the patch and function they mirror.

Unit tests drive the policy directly (events in, actions counted); the verdicts come from small sim
runs: one hung device (endpoint 5, in domain 1 with endpoints 1, 5, 9, ..., 29) for 6 s under a
hardware ATC timeout of 50 ms (shorter than the 1 s software one: the series sees the CERROR in
time) or 60 s (longer: the series sees nothing and behaves as mainline).
"""

import pytest

from ats_stress.iommu_actor.commands import cmd_atc_inv
from ats_stress.iommu_actor.policy import (
    AckCmdqError, CmdqError, CompleteUnmap, DisableAts, HwInfo, ReportBroken, ResetDevice, SetBusMaster, Submit,
    SyncDone, TimerFired, UnmapStart, WriteSte, make_policy,
)
from ats_stress.iommu_actor.spec import (
    CMDQ_ERR_CERROR_ATC_INV_IDX, CMDQ_OP_ATC_INV, CMDQ_OP_CFGI_STE, CMDQ_OP_CMD_SYNC, EIO, ETIMEDOUT,
    STRTAB_STE_0_CFG_S1_TRANS, STRTAB_STE_1_EATS_ABT,
)

from helpers import run

HW = HwInfo(command_queues=1, cpus=4, invalidate_queue_depth=32)
HANG = [{"at": 2, "fault": "hang", "endpoints": [5], "duration": 6}]
SHORT_HW, LONG_HW = {"atc_inv_completion_timeout": 0.05}, {"atc_inv_completion_timeout": 60}
#: the GERROR interrupt on a CPU that runs no flushes: taken the moment the SMMU raises it (the
#: series' best case; on CPU 0, the default, it waits for that CPU's own poll to end)
IDLE = {"gerror_irq_cpu": "idle"}


def only(actions, kind):
    return [a for a in actions if isinstance(a, kind)]


def ops(submit):
    return [c.op for c in submit.cmds]


class _Regs:
    """The driver's MMIO view, as a test sets it: the command one slot before CONS."""

    def __init__(self, before_cons=None):
        self.before_cons = before_cons

    def cmdq_entry_before_cons(self, queue):
        return self.before_cons


def atc_batch_failed(p, sids=(12, 10, 11)):
    """One unmap: the TLBI's CMD_SYNC completes, then the ATC batch's CMD_SYNC meets
    CERROR_ATC_INV_SYNC (acked, so it re-runs) and completes. Returns the actions after that."""
    (tlbi,) = only(p.handle(0.0, UnmapStart(0, 1, 3, 8, 0, sids)), Submit)
    (batch,) = only(p.handle(0.001, SyncDone(0, tlbi.cmds[-1].token)), Submit)
    assert [c.sid for c in batch.cmds[:-1]] == sorted(sids)
    token = batch.cmds[-1].token
    assert AckCmdqError(0) in p.handle(0.05, CmdqError(0, CMDQ_ERR_CERROR_ATC_INV_IDX, token))
    return p.handle(0.05, SyncDone(0, token))


def test_arm_smmu_cmdq_batch_retry_retries_each_sid_in_sorted_order_with_a_cmd_sync_of_its_own():
    p = make_policy("quarantine", {"version": "v4"}, HW)
    a = atc_batch_failed(p)
    retried = []
    while True:
        subs = only(a, Submit)
        if not subs:
            break
        (s,) = subs
        assert ops(s) == [CMDQ_OP_ATC_INV, CMDQ_OP_CMD_SYNC]  # one SID, one CMD_SYNC
        retried.append(s.cmds[0].sid)
        a = p.handle(0.06, SyncDone(0, s.cmds[-1].token))
    assert retried == [10, 11, 12]  # linear, in sorted order
    assert only(a, CompleteUnmap) == [CompleteUnmap(1, -EIO)]  # every SID answered: nobody quarantined
    assert not only(a, WriteSte)


def test_v1_arm_smmu_cmdq_skip_err_names_the_sid_one_slot_before_the_cmd_sync():
    p = make_policy("quarantine", {"version": "v1"}, HW)
    # the batch was ATC_INV 10, 11, 12 + CMD_SYNC: the entry before CONS is 12's, whoever timed out
    p.regs = _Regs(cmd_atc_inv(12, 8, 0))
    a = p.handle(0.05, CmdqError(0, CMDQ_ERR_CERROR_ATC_INV_IDX, 7))
    assert AckCmdqError(0) in a
    assert only(a, SetBusMaster) == [SetBusMaster(12, False)] and only(a, ResetDevice) == [ResetDevice(12)]


def test_v1_on_a_domain_with_several_ats_masters_fences_a_healthy_device_and_leaves_uaf():
    s = run(policy={"name": "quarantine", "version": "v1"}, hardware=SHORT_HW, chaos=HANG, host=IDLE)
    # the entry before CONS is the batch's last ATC_INV: master 29 of domain 1 (1, 5, 9, ..., 29),
    # not the hung 5; each named master leaves the batch while it is reset, so the next is named
    assert s["fences"][0]["sid"] == 29 and s["fenced_healthy"] > 0
    assert s["uaf_exposures"] > 0
    assert s["resets_requested"] > 0  # v1's recovery worker resets what it named
    assert s["sync_returns"].get(str(-EIO)) is None and s["completion_errors"] == {}  # the submitter saw 0


@pytest.mark.parametrize("version,code", [("v2", -ETIMEDOUT), ("v3", -EIO), ("v4", -EIO)])
def test_atc_sync_timeouts_bit_returns_etimedout_in_v2_and_eio_from_v3(version, code):
    p = make_policy("quarantine", {"version": version}, HW)
    a = atc_batch_failed(p, sids=(10,))
    (retry,) = only(a, Submit)
    a = p.handle(0.06, CmdqError(0, CMDQ_ERR_CERROR_ATC_INV_IDX, retry.cmds[-1].token))
    a = p.handle(0.1, SyncDone(0, retry.cmds[-1].token))  # the retry failed too: 10 is the culprit
    assert WriteSte(10, STRTAB_STE_0_CFG_S1_TRANS, STRTAB_STE_1_EATS_ABT) in a  # STE.EATS cleared in place
    (fence,) = only(a, Submit)
    assert ops(fence) == [CMDQ_OP_CFGI_STE, CMDQ_OP_CMD_SYNC]
    # pci_disable_ats() from v4, called in the invalidation context, not through an attach
    assert (DisableAts(10, deferred=False) in a) == (version == "v4")
    a = p.handle(0.11, SyncDone(0, fence.cmds[-1].token))
    assert (ReportBroken(10) in a) == (version != "v4")  # v4 dropped the core worker
    assert only(a, CompleteUnmap) == [CompleteUnmap(1, code)]


def test_v2_takes_a_software_poll_timeout_for_an_atc_timeout_and_retries_into_the_wedge():
    # v2 returned -ETIMEDOUT for both, so the retry also starts on the 1 s software timeout
    # (the v3 change to -EIO followed that review); v3 leaves it alone, as mainline does
    for version, retries in (("v2", True), ("v3", False)):
        p = make_policy("quarantine", {"version": version}, HW)
        (tlbi,) = only(p.handle(0.0, UnmapStart(0, 1, 3, 8, 0, (10, 11))), Submit)
        (batch,) = only(p.handle(0.001, SyncDone(0, tlbi.cmds[-1].token)), Submit)
        a = p.handle(1.001, TimerFired(batch.cmds[-1].token))
        assert bool(only(a, Submit)) == retries, version
        assert bool(only(a, CompleteUnmap)) != retries


def test_v2_quarantine_through_iommu_report_device_broken_counts_as_the_series_fence():
    # v2's software-timeout retry quarantines the hung device while its CFGI_STE waits behind the
    # wedge; the blocking domain iommu_report_device_broken() attaches is the series' fence, not a
    # reset's block, so the hung device is among the fences (with the healthy ones v2 takes too)
    s = run(policy={"name": "quarantine", "version": "v2"}, hardware=LONG_HW, chaos=HANG)
    assert 5 in [f["sid"] for f in s["fences"]] and s["fenced_healthy"] > 0
    assert s["reset_blocks"] == 0 and s["resets_requested"] == 0


def test_v3_keeps_the_device_quarantined_after_a_failed_reset():
    chaos = [{"at": 2, "fault": "hang", "endpoints": [5], "recover_on_reset": False},
             {"at": 5, "fault": "reset", "endpoints": [5], "ok": False}]
    s = run(policy={"name": "quarantine", "version": "v3"}, hardware=SHORT_HW, chaos=chaos, host=IDLE)
    assert [f["sid"] for f in s["fences"]] == [5] and s["unfence_count"] == 0
    assert s["fenced_at_end"] == [5]
    assert [(r["sid"], r["ok"]) for r in s["resets"]] == [(5, False)]
    assert s["uaf_exposures"] == 0


def test_v3_reset_device_done_lifts_the_quarantine_after_a_successful_outside_reset():
    chaos = HANG + [{"at": 9, "fault": "reset", "endpoints": [5]}]
    s = run(policy={"name": "quarantine", "version": "v3"}, hardware=SHORT_HW, chaos=chaos, host=IDLE)
    assert [f["sid"] for f in s["fences"]] == [5] and [u["sid"] for u in s["unfences"]] == [5]
    assert s["unfences"][0]["at_s"] > 9 and s["fenced_at_end"] == []


def test_v4_sends_no_atc_inv_to_a_broken_master():
    p = make_policy("quarantine", {"version": "v4"}, HW)
    a = atc_batch_failed(p, sids=(10, 11))
    (r10,) = only(a, Submit)
    p.handle(0.06, CmdqError(0, CMDQ_ERR_CERROR_ATC_INV_IDX, r10.cmds[-1].token))
    (fence,) = only(p.handle(0.1, SyncDone(0, r10.cmds[-1].token)), Submit)
    (r11,) = only(p.handle(0.11, SyncDone(0, fence.cmds[-1].token)), Submit)
    assert only(p.handle(0.12, SyncDone(0, r11.cmds[-1].token)), CompleteUnmap) == [CompleteUnmap(1, -EIO)]
    (tlbi,) = only(p.handle(1.0, UnmapStart(1, 2, 3, 9, 0, (10, 11))), Submit)
    (batch,) = only(p.handle(1.001, SyncDone(0, tlbi.cmds[-1].token)), Submit)
    assert [c.sid for c in batch.cmds if c.op == CMDQ_OP_ATC_INV] == [11]  # 10's invs entry is broken


@pytest.mark.parametrize("version", ["v3", "v4"])
def test_a_software_timeout_first_under_the_series_is_mainline_arm_smmu_v3(version):
    """Hardware ATC timeout (60 s) above the software one (1 s): the CMD_SYNC poll gives up first,
    no bit is set, and the series does what mainline does: log, free the page, UAF."""
    arm = run(policy={"name": "arm-smmu-v3"}, hardware=LONG_HW, chaos=HANG)
    s = run(policy={"name": "quarantine", "version": version}, hardware=LONG_HW, chaos=HANG)
    same = ("uaf_exposures", "sync_timeouts", "commands", "completion_errors", "sync_returns", "lockup_s")
    assert {k: s[k] for k in same} == {k: arm[k] for k in same}
    assert s["uaf_exposures"] > 0 and s["fence_count"] == 0


@pytest.mark.parametrize("version", ["v3", "v4"])
def test_a_hardware_timeout_first_quarantines_only_the_hung_device_without_uaf(version):
    """With the GERROR interrupt on an idle CPU: the best case, taken as the SMMU raises it."""
    s = run(policy={"name": "quarantine", "version": version}, hardware=SHORT_HW, chaos=HANG, host=IDLE)
    assert [f["sid"] for f in s["fences"]] == [5] and s["fenced_healthy"] == 0
    assert s["uaf_exposures"] == 0
    assert s["healthy_unmap_latency_s"]["max"] < 0.5  # well under a second
    assert s["gerror_irqs"] > 0 and s["gerror_irqs_late"] == 0 and s["gerror_irq_delay_max_s"] == 0


def test_v4_eats_0_and_ats_disabled_leave_untranslated_dma_to_the_page_walk():
    # pci_disable_ats: the device sends untranslated requests, the SMMU walks the page table;
    # they reach the current mappings or fault, never a freed page
    s = run(policy={"name": "quarantine", "version": "v4"}, hardware=SHORT_HW, chaos=HANG, host=IDLE)
    assert s["dma"]["untranslated_sent"] > 0 and s["untranslated_allowed"] > 0
    assert s["uaf_exposures"] == 0
    v3 = run(policy={"name": "quarantine", "version": "v3"}, hardware=SHORT_HW, chaos=HANG, host=IDLE)
    # v3 clears EATS (ATS stays on, translated requests blocked), then iommu_report_device_broken()'s
    # blocking domain is an attach: arm_smmu_attach_prepare() turns ATS off, and the untranslated
    # requests that follow meet the abort STE
    assert v3["untranslated_allowed"] == 0 and v3["untranslated_faulted"] > 0 and v3["uaf_exposures"] == 0


@pytest.mark.parametrize("version", ["v2", "v3", "v4"])
def test_the_series_never_resets_a_device_itself_from_v2_on(version):
    s = run(policy={"name": "quarantine", "version": version}, hardware=SHORT_HW, chaos=HANG, host=IDLE)
    assert s["fence_count"] == 1 and s["resets_requested"] == 0 and s["resets"] == []


def test_v2_per_sid_retry_is_many_issue_cmdlist_windows_inside_one_flush():
    # each retried SID is one arm_smmu_cmdq_issue_cmdlist() call, interrupts restored after its 1 s
    # poll: no window is longer than a poll, but the CPU stays inside the flush (under
    # read_lock(&invs->rwlock)) for the whole loop: a soft lockup / RCU stall risk, not a hard lockup
    s = run(policy={"name": "quarantine", "version": "v2"}, hardware=LONG_HW, chaos=HANG)
    assert s["irqs_off_max_s"] == pytest.approx(1.0, abs=1e-3)
    assert s["flush_max_s"] > 5


def test_quarantine_fast_timeout_fences_only_with_the_gerror_irq_on_an_idle_cpu():
    """The library scenario: with GERROR on CPU 0 (the default) the series misses every CERROR (its
    own expectations say so); with host.gerror_irq_cpu=idle, 17 alone is quarantined and nothing leaks."""
    from ats_stress.cluster.runtime.sim import run_sim
    from ats_stress.cluster.scenario import load_scenario

    s = run_sim(load_scenario("quarantine-fast-timeout", ["host.gerror_irq_cpu=idle"]))
    assert [f["sid"] for f in s["fences"]] == [17] and s["uaf_exposures"] == 0 and s["unfence_count"] == 1
    assert s["gerror_irq_delay_max_s"] == 0 and s["healthy_unmap_latency_s"]["max"] < 0.5
