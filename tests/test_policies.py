"""Each policy does what its driver does. Tests are named after the driver behaviour they check.

Mainline drivers are driven directly (events in, actions counted); the quarantine policies, whose
decisions read CMDQ_CONS, run on the sim runtime with small scenarios.
"""

import pytest

from ats_stress.iommu_actor.policy import (
    AckCmdqError, CmdqError, CompleteUnmap, EventRecord, HwInfo, Note, PresenceReply, QueryPresence, SetTimer, Submit,
    SyncDone, SyncReturned, TimerFired, UnmapStart, WriteSte, make_policy,
)
from ats_stress.iommu_actor.spec import (
    ATC_INV_SIZE_ALL, CMDQ_ERR_CERROR_ATC_INV_IDX, CMDQ_OP_ATC_INV, CMDQ_OP_CMD_SYNC, CMDQ_OP_TLBI_NH_VA, EIO,
    ETIMEDOUT, EVT_ID_AMD_IOTLB_INV_TO, STRTAB_STE_0_CFG_ABORT, STRTAB_STE_1_EATS_ABT,
)

from helpers import HANG_5, run

HW = HwInfo(command_queues=1, cpus=4, invalidate_queue_depth=32)
FAST_HW = {"atc_inv_completion_timeout": 0.05}


def ops(submit):
    return [c.op for c in submit.cmds]


def only(actions, kind):
    return [a for a in actions if isinstance(a, kind)]


def sync_token(submit):
    return submit.cmds[-1].token


# --- arm-smmu-v3 (mainline) ----------------------------------------------------------------------


def test_arm_smmu_domain_inv_range_syncs_the_tlbi_before_one_atc_batch_with_one_cmd_sync():
    p = make_policy("arm-smmu-v3", {}, HW)
    a = p.handle(0.0, UnmapStart(cpu=0, unmap=1, asid=3, addr=8, size=0, sids=(11, 10)))
    (s1,) = only(a, Submit)
    assert ops(s1) == [CMDQ_OP_TLBI_NH_VA, CMDQ_OP_CMD_SYNC]
    assert only(a, SetTimer)[0].at == pytest.approx(1.0)  # ARM_SMMU_POLL_TIMEOUT_US
    a = p.handle(0.001, SyncDone(0, sync_token(s1)))
    (s2,) = only(a, Submit)
    assert ops(s2) == [CMDQ_OP_ATC_INV, CMDQ_OP_ATC_INV, CMDQ_OP_CMD_SYNC]
    assert [c.sid for c in s2.cmds[:2]] == [10, 11]  # the sorted invalidation array (arm_smmu_invs)
    a = p.handle(0.002, SyncDone(0, sync_token(s2)))
    assert only(a, CompleteUnmap) == [CompleteUnmap(1, 0)]
    # what the ATC batch's CMD_SYNC returned, on whose CPU, written when (the UAF trace's sync_codes)
    assert only(a, SyncReturned) == [SyncReturned(0, cpu=0, issued=0.001)]


def test_arm_smmu_domain_inv_range_skips_the_atc_batch_for_a_domain_with_no_ats_master():
    p = make_policy("arm-smmu-v3", {}, HW)
    a = p.handle(0.0, UnmapStart(0, 1, 3, 8, 0, ()))
    a = p.handle(0.001, SyncDone(0, sync_token(only(a, Submit)[0])))
    assert only(a, CompleteUnmap) == [CompleteUnmap(1, 0)] and not only(a, Submit)


def test_arm_sync_timeout_logs_cmd_sync_timeout_and_frees_the_page_anyway():
    p = make_policy("arm-smmu-v3", {}, HW)
    a = p.handle(0.0, UnmapStart(0, 1, 3, 8, 0, (10,)))
    a = p.handle(1.0, TimerFired(sync_token(only(a, Submit)[0])))
    assert only(a, Note)[0].text == "CMD_SYNC timeout"
    a = p.handle(2.0, TimerFired(sync_token(only(a, Submit)[0])))
    assert a[-1] == CompleteUnmap(1, -ETIMEDOUT)  # returned to an unmap path that ignores it


def test_arm_late_completion_after_the_timeout_is_ignored():
    p = make_policy("arm-smmu-v3", {}, HW)
    a = p.handle(0.0, UnmapStart(0, 1, 3, 8, 0, (10,)))
    tok = sync_token(only(a, Submit)[0])
    p.handle(1.0, TimerFired(tok))
    assert p.handle(1.5, SyncDone(0, tok)) == []


def test_arm_cerror_atc_inv_sync_acknowledges_and_lets_the_cmd_sync_rerun():
    p = make_policy("arm-smmu-v3", {}, HW)
    a = p.handle(60.0, CmdqError(0, CMDQ_ERR_CERROR_ATC_INV_IDX, 7))
    assert only(a, AckCmdqError) == [AckCmdqError(0)]
    assert "ATC invalidate timeout" in only(a, Note)[0].text
    assert not only(a, WriteSte)  # no fencing in mainline


def test_arm_sync_timeout_is_a_parameter():
    p = make_policy("arm-smmu-v3", {"sync_timeout": "250ms"}, HW)
    a = p.handle(0.0, UnmapStart(0, 1, 3, 8, 0, (10,)))
    assert only(a, SetTimer)[0].at == pytest.approx(0.25)


# --- amd-iommu ---------------------------------------------------------------------------------------


def test_amd_invalidates_iotlb_pages_per_ats_device_then_one_completion_wait():
    p = make_policy("amd-iommu", {}, HW)
    a = p.handle(0.0, UnmapStart(0, 1, 3, 8, 0, (10, 11, 12)))
    (s,) = only(a, Submit)
    assert ops(s) == [CMDQ_OP_TLBI_NH_VA] + [CMDQ_OP_ATC_INV] * 3 + [CMDQ_OP_CMD_SYNC]


def test_amd_completion_wait_loop_times_out_after_100ms_with_eio_and_frees_the_page():
    p = make_policy("amd-iommu", {}, HW)
    a = p.handle(0.0, UnmapStart(0, 1, 3, 8, 0, (10,)))
    assert only(a, SetTimer)[0].at == pytest.approx(0.1)  # LOOP_TIMEOUT x udelay(1)
    a = p.handle(0.1, TimerFired(sync_token(only(a, Submit)[0])))
    assert only(a, Note)[0].text == "Completion-Wait loop timed out"
    assert a[-1] == CompleteUnmap(1, -EIO)


def test_amd_keeps_ats_on_and_spins_with_interrupts_off():
    s = run(policy={"name": "amd-iommu"}, chaos=HANG_5)
    assert s["translated_blocked"] == 0 and s["fence_count"] == 0  # ATS stays on
    assert s["uaf_exposures"] > 0
    assert s["completion_errors"].get(str(-EIO), 0) > 0
    assert 0 < s["lockup_s"]


# --- intel-vtd ---------------------------------------------------------------------------------------


def test_vtd_waits_with_no_software_timeout_and_batches_16_descriptors_per_wait():
    p = make_policy("intel-vtd", {}, HW)
    a = p.handle(0.0, UnmapStart(0, 1, 3, 8, 0, tuple(range(20))))
    assert not only(a, SetTimer)
    (s,) = only(a, Submit)
    assert len(s.cmds) == 17 and s.cmds[-1].op == CMDQ_OP_CMD_SYNC  # QI_MAX_BATCHED_DESC_COUNT + wait
    a = p.handle(0.001, SyncDone(0, sync_token(s)))
    (s2,) = only(a, Submit)
    assert len(s2.cmds) == 6  # the remaining 5 device-TLB descriptors + wait


def test_vtd_ite_aborts_all_pending_waits_and_retries():
    hw = HwInfo(command_queues=1, cpus=4, invalidate_queue_depth=32)
    p = make_policy("intel-vtd", {}, hw)
    s0 = only(p.handle(0.0, UnmapStart(0, 1, 3, 8, 0, (10,))), Submit)[0]
    s1 = only(p.handle(0.0, UnmapStart(1, 2, 4, 9, 0, (20,))), Submit)[0]
    a = p.handle(60.0, CmdqError(0, CMDQ_ERR_CERROR_ATC_INV_IDX, sync_token(s0), ite_sid=10))
    assert AckCmdqError(0) in a  # ITE cleared
    assert only(a, QueryPresence) == [QueryPresence(10)]  # the submitter that met the ITE checks the device
    (retry1,) = only(a, Submit)  # the other submitter's wait was aborted: it resubmits
    assert ops(retry1) == ops(s1) and sync_token(retry1) != sync_token(s1)
    assert p.handle(60.0, SyncDone(0, sync_token(s1))) == []  # the aborted wait's completion is void
    a = p.handle(60.0, PresenceReply(10, True))
    (retry0,) = only(a, Submit)  # device present: retry, forever
    assert ops(retry0) == ops(s0)
    assert not only(a, CompleteUnmap)


def test_vtd_ite_for_a_device_no_longer_present_returns_etimedout():
    p = make_policy("intel-vtd", {}, HW)
    s0 = only(p.handle(0.0, UnmapStart(0, 1, 3, 8, 0, (10,))), Submit)[0]
    p.handle(60.0, CmdqError(0, CMDQ_ERR_CERROR_ATC_INV_IDX, sync_token(s0), ite_sid=10))
    a = p.handle(60.0, PresenceReply(10, False))
    assert a[-1] == CompleteUnmap(1, -ETIMEDOUT)


def test_vtd_hang_gives_no_uaf_but_cpu_lockup_for_the_whole_hang():
    s = run(policy={"name": "intel-vtd"}, chaos=HANG_5)
    assert s["uaf_exposures"] == 0
    assert s["sync_timeouts"] == 0
    # every CPU sat spinning with interrupts off behind the hung device for the 6 s hang
    assert s["lockup_s"] >= 4 * 5.5


def test_vtd_surprise_removal_ends_in_etimedout_after_the_ite():
    s = run(policy={"name": "intel-vtd"}, duration=20, hardware={"atc_inv_completion_timeout": 2},
            chaos=[{"at": 2, "fault": "removed", "endpoints": [5]}])
    # each flush that meets the ITE of the absent device gives up with -ETIMEDOUT instead of
    # retrying forever (the others retry, meet it again, and give up in their turn)
    assert s["completion_errors"].get(str(-ETIMEDOUT), 0) >= 3
    assert s["uaf_exposures"] == 0  # a removed device does no DMA


# --- quarantine ----------------------------------------------------------------------------------------


def test_fence_on_timeout_per_device_batches_put_one_device_behind_each_cmd_sync():
    p = make_policy("fence-on-timeout", {"culprit_search": "per-device-batches"}, HW)
    a = p.handle(0.0, UnmapStart(0, 1, 3, 8, 0, (10, 11, 12)))
    subs = only(a, Submit)
    assert [ops(s) for s in subs] == [[CMDQ_OP_TLBI_NH_VA, CMDQ_OP_CMD_SYNC]] + \
        [[CMDQ_OP_ATC_INV, CMDQ_OP_CMD_SYNC]] * 3
    assert [s.cmds[0].sid for s in subs[1:]] == [10, 11, 12]


def test_fence_on_timeout_bisect_batches_all_devices_behind_one_cmd_sync():
    p = make_policy("fence-on-timeout", {}, HW)
    subs = only(p.handle(0.0, UnmapStart(0, 1, 3, 8, 0, (10, 11, 12))), Submit)
    assert [len(s.cmds) for s in subs] == [2, 4]


def test_fence_on_timeout_never_reports_a_flush_complete_on_a_bare_timeout():
    s = run(policy={"name": "fence-on-timeout"}, chaos=HANG_5)  # one queue, hang ends before the HW timeout
    assert s["sync_timeouts"] > 0
    assert s["completion_errors"] == {}
    assert s["uaf_exposures"] == 0
    assert s["affected_unmap_latency_s"]["max"] >= 5.5  # the hung device's unmaps waited for it


def test_fence_on_timeout_hang_shorter_than_the_timeout_fences_nobody():
    s = run(policy={"name": "fence-on-timeout"}, hardware={"command_queues": 9},
            chaos=[{"at": 2, "fault": "hang", "endpoints": [5], "duration": 0.4}])
    assert s["fence_count"] == 0 and s["uaf_exposures"] == 0


ONE_QUEUE_HANG = dict(duration=30, hardware={"command_queues": 1, "atc_inv_completion_timeout": 5},
                      chaos=[{"at": 2, "fault": "hang", "endpoints": [5], "duration": 25}])


@pytest.mark.parametrize("scrub,timeouts", [(False, 2), (True, 1)])
def test_fence_on_timeout_with_one_queue_fences_only_after_the_hw_timeout_is_handled(scrub, timeouts):
    # one queue, per-device batches: nothing passes the wedged CMD_SYNC before CERROR_ATC_INV_SYNC.
    # Linux cannot touch the ATC_INVs already queued for the hung device, so each costs another
    # hardware timeout before the fence command's turn; the hypothetical scrub rewrites them. The
    # GERROR interrupt on an idle CPU: taken as the SMMU raises it (the best case)
    s = run(policy={"name": "fence-on-timeout", "culprit_search": "per-device-batches",
                    "hypothetical_scrub_halted_queue": scrub}, host={"gerror_irq_cpu": "idle"}, **ONE_QUEUE_HANG)
    assert [f["sid"] for f in s["fences"]] == [5]
    assert s["fences"][0]["latency_s"] == pytest.approx(5.0 * timeouts, abs=0.1)
    # and one more: the reset's arm_smmu_attach_commit() sends the hung device an ATC_INV of its
    # whole ATC, which its FLR drops unanswered
    assert s["hw_atc_timeouts"] == timeouts + 1
    assert s["uaf_exposures"] == 0 and s["fenced_healthy"] == 0 and s["gerror_irqs_late"] == 0


def test_fence_on_timeout_spinning_on_the_gerror_cpu_with_interrupts_off_never_takes_the_cerror_it_waits_for():
    # arm_smmu_gerror_handler is a hard IRQ on CPU 0 (the default); the proposal as first written
    # spins with interrupts off until the flush may return. CPU 0's flush waits for the fence, the
    # fence waits behind the CMD_SYNC halted by CERROR_ATC_INV_SYNC, which waits for GERRORN, which
    # waits for CPU 0: nothing moves until the run ends
    s = run(policy={"name": "fence-on-timeout", "culprit_search": "per-device-batches"}, **ONE_QUEUE_HANG)
    assert s["fence_count"] == 0 and s["uaf_exposures"] == 0
    assert s["gerror_irqs"] == 1 and s["gerror_irqs_late"] == 1
    assert s["gerror_irq_delay_max_s"] == pytest.approx(30 - (2 + 5), abs=0.1)  # still held at the end
    assert s["unmaps"]["incomplete"] > 10 and s["irqs_off_max_s"] > 20  # a hard lockup


def test_fence_on_timeout_poll_window_takes_the_gerror_between_windows_but_the_flush_still_stalls():
    # the variant that polls in 1 s windows, interrupts on between them (as arm_smmu_cmdq_issue_cmdlist
    # does per call): CPU 0 takes the GERROR at its next window's end, the fence follows; no window
    # is longer than 1 s (no hard lockup), but the CPU stays inside the flush for the fence (soft lockup)
    s = run(policy={"name": "fence-on-timeout", "culprit_search": "per-device-batches", "poll_window": 1.0},
            **ONE_QUEUE_HANG)
    assert [f["sid"] for f in s["fences"]] == [5] and s["uaf_exposures"] == 0
    # the idle case's 10 s, plus at most one window for each of the two CERROR_ATC_INV_SYNC before it
    assert 10.0 < s["fences"][0]["latency_s"] <= 10.0 + 2 * 1.0 + 0.1
    assert 0 < s["gerror_irq_delay_max_s"] <= 1.0 + 1e-6 and s["gerror_irqs_late"] == s["gerror_irqs"]
    assert s["irqs_off_max_s"] <= 1.0 + 1e-6 and s["flush_max_s"] > 10


@pytest.mark.parametrize("search,rounds", [("per-device-batches", 1), ("bisect", 4)])
def test_fence_on_timeout_with_several_queues_fences_within_the_software_timeout_plus_the_search(search, rounds):
    # 4 CPUs on 9 queues: 4 CPU queues, 4 spare, 1 kept for fences. 8 devices in the domain.
    s = run(policy={"name": "fence-on-timeout", "culprit_search": search}, hardware={"command_queues": 9},
            chaos=HANG_5)
    assert [f["sid"] for f in s["fences"]] == [5]
    assert s["fences"][0]["latency_s"] <= 1.0 * rounds + 0.1
    assert s["uaf_exposures"] == 0 and s["fenced_healthy"] == 0


@pytest.mark.parametrize("search", ["per-device-batches", "bisect"])
def test_fence_record_times_the_fence_from_the_cmd_sync_that_named_the_culprit(search):
    s = run(policy={"name": "fence-on-timeout", "culprit_search": search, "sync_timeout": 0.7},
            hardware={"command_queues": 9}, chaos=HANG_5)
    f = s["fences"][0]
    # per-device batches: its own CMD_SYNC timed out and named it; bisect: the search's last round
    # did. Either way the fence follows that CMD_SYNC's timeout at once.
    assert f["after_sync_s"] == pytest.approx(0.7, abs=1e-3)
    if search == "bisect":
        assert f["latency_s"] > 1.4  # the rounds before the last one took a timeout each
    assert f["after_sync_s"] <= f["latency_s"]


class _Heads:
    """Stands in for SmmuRegisters: the command at CONS of each queue, as the test moves it."""

    def __init__(self):
        self.head: dict[int, object] = {}

    def cmdq_cons_cmd(self, queue):
        return self.head.get(queue)

    def cmdq_depth(self, queue):
        return 1 if queue in self.head else 0


@pytest.mark.parametrize("answers", [True, False])
def test_fence_on_timeout_times_a_cmd_sync_from_when_it_reached_the_head_of_its_queue(answers):
    # 1 CPU queue + the fence queue, per-device batches: SID 11's batch waits behind SID 10's,
    # whose device hangs. SID 10 is fenced at the first timeout; 11's timer is restarted (no other
    # queue to move to). SID 10's hang ends a millisecond before 11's second timeout, so 11's
    # batch reaches CONS then, its answer still in flight: that is no culprit, until it has had a
    # whole timeout at the head of the queue.
    p = make_policy("fence-on-timeout", {"culprit_search": "per-device-batches"},
                    HwInfo(command_queues=2, cpus=1, invalidate_queue_depth=32))
    p.regs = heads = _Heads()
    tlbi, *subs = only(p.handle(0.0, UnmapStart(0, 1, 3, 8, 0, (10, 11))), Submit)
    assert ops(tlbi) == [CMDQ_OP_TLBI_NH_VA, CMDQ_OP_CMD_SYNC]
    p.handle(0.0, SyncDone(0, sync_token(tlbi)))
    by_sid = {s.cmds[0].sid: s for s in subs}
    heads.head[0] = by_sid[10].cmds[0]
    first = p.handle(1.0, TimerFired(("job", 1)))
    assert [w.sid for w in only(first, WriteSte)] == [10]
    assert only(first, SetTimer)[-1].at == pytest.approx(2.0)  # 11 waits on
    heads.head[0] = by_sid[11].cmds[0]  # 10's hang ends: its CMD_SYNC completes, CONS moves on
    p.handle(1.999, SyncDone(0, sync_token(by_sid[10])))
    second = p.handle(2.0, TimerFired(("job", 1)))
    assert only(second, WriteSte) == []
    assert [t.at for t in only(second, SetTimer)] == [pytest.approx(2.999)]
    if answers:
        done = p.handle(2.0003, SyncDone(0, sync_token(by_sid[11])))
        assert only(done, CompleteUnmap)
    else:  # it really does not answer: one whole timeout at the head, then it is the culprit
        third = p.handle(2.999, TimerFired(("job", 1)))
        assert [w.sid for w in only(third, WriteSte)] == [11]


def test_fence_on_timeout_fence_is_an_abort_ste_made_effective_by_cfgi_ste_and_cmd_sync():
    s = run(policy={"name": "fence-on-timeout", "recover": False}, hardware={"command_queues": 9}, chaos=HANG_5)
    assert s["fenced_at_end"] == [5]
    assert s["commands"]["CFGI_STE"] == 1
    assert s["translated_blocked"] > 0  # the fenced device's DMA is blocked from then on


def test_fence_on_timeout_unfences_only_after_a_successful_reset():
    s = run(policy={"name": "fence-on-timeout"}, hardware={"command_queues": 9}, chaos=HANG_5)
    (fence,) = s["fences"]
    (unfence,) = s["unfences"]
    reset = [r for r in s["resets"] if r["sid"] == 5][0]
    assert reset["ok"] and fence["at_s"] < reset["started_s"] < reset["done_s"] <= unfence["at_s"]
    assert unfence["recovery_s"] == pytest.approx(unfence["at_s"] - reset["started_s"])
    assert s["fenced_at_end"] == []


def test_fence_on_timeout_failed_reset_keeps_the_stream_fenced():
    chaos = [{"at": 2, "fault": "hang", "endpoints": [5], "recover_on_reset": False}]
    s = run(policy={"name": "fence-on-timeout"}, hardware={"command_queues": 9, "atc_inv_completion_timeout": 3},
            chaos=chaos)
    assert s["fenced_at_end"] == [5] and s["unfence_count"] == 0
    assert s["notes"].get("reset_failed") == 1
    assert s["uaf_exposures"] == 0


def test_fence_on_timeout_unfences_after_a_reset_started_by_the_scenario():
    s = run(policy={"name": "fence-on-timeout", "recover": False}, hardware={"command_queues": 9},
            chaos=HANG_5 + [{"at": 7, "fault": "reset", "endpoints": [5]}])
    assert [u["sid"] for u in s["unfences"]] == [5]
    assert s["unfences"][0]["at_s"] > 7


@pytest.mark.parametrize("search,queues", [("per-device-batches", 9), ("bisect", 33)])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_fence_on_timeout_fences_no_healthy_device_under_mixed_faults(seed, search, queues):
    # bisect needs spare queues for concurrent searches: with 4 CPU queues + 4 spare it runs out
    # when three devices fail at once (docs/queues-and-search.md), so it gets 28 spare here
    chaos = [
        {"at": 1, "fault": "hang", "endpoints": [5], "duration": 5},
        {"at": 2, "fault": "slow", "fraction": 0.2, "latency": {"median": "1ms", "p99": "5ms"}, "duration": 5},
        {"at": 3, "fault": "drop", "endpoints": [12], "loss": 0.5, "duration": 4},
        {"at": 4, "fault": "removed", "endpoints": [22]},
    ]
    s = run(policy={"name": "fence-on-timeout", "culprit_search": search}, seed=seed, duration=20,
            hardware={"command_queues": queues}, chaos=chaos)
    assert s["fenced_healthy"] == 0
    assert s["uaf_exposures"] == 0
    assert {5, 22} <= {f["sid"] for f in s["fences"]}


@pytest.mark.parametrize("policy", ["arm-smmu-v3", "amd-iommu", "intel-vtd", "fence-on-timeout", "iommu-core"])
def test_a_lying_device_gives_uaf_under_every_policy(policy):
    s = run(policy={"name": policy}, hardware={"command_queues": 9},
            chaos=[{"at": 1, "fault": "lie", "endpoints": [5]}])
    assert s["uaf_exposures"] > 0  # it answers without invalidating: no fence can catch it
    assert s["fence_count"] == 0
    assert set(s["uaf_by_sid"]) == {"5"}


# --- iommu-core ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("driver,timeout", [("arm-smmu-v3", 1.0), ("amd-iommu", 0.1), ("intel-vtd", 1.0)])
def test_iommu_core_composes_with_each_driver_and_uses_its_timeout(driver, timeout):
    p = make_policy("iommu-core", {"driver": driver}, HW)
    assert p.sync_timeout == timeout
    # a 50 ms hardware timeout: each driver's hardware names the hang in time (AMD's own is 1 s)
    s = run(policy={"name": "iommu-core", "driver": driver}, hardware={"command_queues": 9, **FAST_HW}, chaos=HANG_5)
    assert [f["sid"] for f in s["fences"]] == [5]
    assert s["uaf_exposures"] == 0 and s["fenced_healthy"] == 0
    assert s["unfence_count"] == 1


def test_iommu_core_on_vtd_has_one_invalidation_queue_so_no_fence_passes_the_wedge_before_the_ite():
    # VT-d has one invalidation queue per IOMMU (AMD one command buffer): the 9 queues the scenario
    # offers are SMMUv3's ECMDQ/CMDQV, so with a 60 s hardware timeout the culprit search waits
    # behind the hung device's wait descriptor, the hang ends first, nothing is fenced, nothing leaks
    s = run(policy={"name": "iommu-core", "driver": "intel-vtd"}, hardware={"command_queues": 9}, chaos=HANG_5)
    assert s["fence_count"] == 0 and s["uaf_exposures"] == 0
    # qi_submit_sync() has no timeout: each CPU behind it spins one attempt, interrupts off, for the hang
    assert s["irqs_off_max_s"] > 5


def test_iommu_core_spins_with_interrupts_off_while_a_flush_is_held_unless_hypothetically_asleep():
    # iotlb_sync may run in atomic context: a held flush keeps its CPU spinning, as VT-d's does
    vtd = run(policy={"name": "intel-vtd"}, chaos=HANG_5)
    core = run(policy={"name": "iommu-core", "driver": "intel-vtd"}, chaos=HANG_5)
    asleep = run(policy={"name": "iommu-core", "driver": "intel-vtd", "hypothetical_sleep_while_held": True},
                 chaos=HANG_5)
    assert core["lockup_s"] == pytest.approx(vtd["lockup_s"], rel=0.05)
    assert asleep["lockup_s"] < vtd["lockup_s"] / 2
    assert core["uaf_exposures"] == asleep["uaf_exposures"] == 0


def test_iommu_core_on_vtd_uses_the_ite_source_id_instead_of_searching():
    hw = HwInfo(command_queues=1, cpus=4, invalidate_queue_depth=32)
    p = make_policy("iommu-core", {"driver": "intel-vtd"}, hw)
    subs = only(p.handle(0.0, UnmapStart(0, 1, 3, 8, 0, (10, 11, 12))), Submit)
    a = p.handle(60.0, CmdqError(0, CMDQ_ERR_CERROR_ATC_INV_IDX, sync_token(subs[0]), ite_sid=11))
    assert WriteSte(11, STRTAB_STE_0_CFG_ABORT, 0) in a  # fenced straight away
    probes = [s for s in only(a, Submit) if s.cmds[0].op == CMDQ_OP_ATC_INV]
    assert [sorted(c.sid for c in s.cmds[:-1]) for s in probes] == [[10, 12]]  # the rest, not halves
    assert all(c.size == ATC_INV_SIZE_ALL for s in probes for c in s.cmds[:-1])


def test_iommu_core_on_amd_holds_the_unmap_after_iotlb_inv_timeout_until_the_fence_is_in_effect():
    # amd_iommu: the IOMMU gives the invalidation up (CTRL_INV_TO), logs IOTLB_INV_TIMEOUT, then
    # completes the COMPLETION_WAIT behind it: that completion is no answer from the device's ATC
    p = make_policy("iommu-core", {"driver": "amd-iommu"}, HW)
    subs = only(p.handle(0.0, UnmapStart(0, 1, 3, 8, 0, (5,))), Submit)
    a = p.handle(1.0, EventRecord(EVT_ID_AMD_IOTLB_INV_TO, 5, 8))
    fence = [s for s in only(a, Submit) if s.cmds[0].op != CMDQ_OP_ATC_INV]
    assert WriteSte(5, STRTAB_STE_0_CFG_ABORT, STRTAB_STE_1_EATS_ABT) in a and fence
    a = [x for s in subs for x in p.handle(1.0, SyncDone(0, sync_token(s)))]
    assert not only(a, CompleteUnmap)  # the page is not freed while the stale ATC entry can be used
    a = p.handle(1.001, SyncDone(0, sync_token(fence[0])))
    assert only(a, CompleteUnmap) == [CompleteUnmap(1, 0)]  # freed once the abort STE is in effect


def test_iommu_core_on_amd_fences_the_device_its_iotlb_inv_timeout_event_names():
    # one queue: the search cannot pass the wedge, but AMD's hardware gives the invalidation up
    # after CTRL_INV_TO (1 s) and its event log names the device, so the core fences it at once
    s = run(policy={"name": "iommu-core", "driver": "amd-iommu"}, hardware={"command_queues": 1}, chaos=HANG_5)
    assert [f["sid"] for f in s["fences"]] == [5] and s["fenced_healthy"] == 0
    assert s["fences"][0]["at_s"] >= s["event_records"][0]["at_s"] >= 3.0  # after the first event, 1 s in
    assert s["uaf_exposures"] == 0
