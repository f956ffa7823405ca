"""Mainline drivers as they run today: interrupts-off spinning, AMD's hardware timeout, lazy flush
queues, the PCI reset path, VT-d's ITE. Each test names the kernel function it mirrors."""

import pytest

from ats_stress.cluster.results.summary import deterministic_view
from ats_stress.iommu_actor.flushq import IOVA_DEFAULT_FQ_SIZE, FlushQueue
from ats_stress.iommu_actor.policy import (
    CmdqError, CmdqSpace, CompleteUnmap, HwInfo, LocalIrqRestore, LocalIrqSave, Note, QueryPresence, SetTimer,
    Submit, SyncDone, TimerFired, UnmapStart, WaitCmdqSpace, make_policy,
)
from ats_stress.iommu_actor.spec import CMDQ_ERR_CERROR_ATC_INV_IDX, CMDQ_OP_ATC_INV, CMDQ_OP_CMD_SYNC

from helpers import run

HW = HwInfo(command_queues=1, cpus=4, invalidate_queue_depth=32)
HANG = [{"at": 2, "fault": "hang", "endpoints": [5], "duration": 6}]
POLICIES = ["arm-smmu-v3", "amd-iommu", "intel-vtd", "quarantine", "fence-on-timeout", "iommu-core"]


def only(actions, kind):
    return [a for a in actions if isinstance(a, kind)]


# --- arm-smmu-v3 -------------------------------------------------------------------------------------


def test_arm_smmu_cmdq_issue_cmdlist_spins_with_interrupts_off_about_a_second_per_timed_out_cmd_sync():
    s = run(policy={"name": "arm-smmu-v3"}, chaos=HANG)  # a 6 s hang, 1 s poll timeout, 4 CPUs
    assert s["sync_timeouts"] > 4
    # every timed-out CMD_SYNC cost its CPU the whole second with interrupts off; CPUs also spin on
    # syncs that complete when the hang ends (at most one second each, one per CPU)
    assert s["sync_timeouts"] * 1.0 <= s["lockup_s"] <= s["sync_timeouts"] * 1.0 + 4 * 1.0 + 0.1
    # local_irq_save() ... local_irq_restore() per call: no window is longer than one poll, but a
    # flush is two calls (the TLBI's CMD_SYNC, then the ATC batch's), so a CPU is inside it 2 s
    assert s["irqs_off_max_s"] == pytest.approx(1.0, abs=0.01)
    assert s["flush_max_s"] == pytest.approx(2.0, abs=0.01)


def test_arm_smmu_cmdq_batch_add_issues_a_full_batch_of_64_without_a_sync():
    p = make_policy("arm-smmu-v3", {}, HW)
    (tlbi,) = only(p.handle(0.0, UnmapStart(0, 1, 3, 8, 0, tuple(range(100, 170)))), Submit)
    writes = only(p.handle(0.001, SyncDone(0, tlbi.cmds[-1].token)), Submit)
    assert [len(w.cmds) for w in writes] == [64, 7]  # CMDQ_BATCH_ENTRIES, then the rest and the CMD_SYNC
    assert all(c.op == CMDQ_OP_ATC_INV for c in writes[0].cmds)
    assert [c.op for c in writes[1].cmds][-1] == CMDQ_OP_CMD_SYNC
    assert only(p.handle(0.002, SyncDone(0, writes[1].cmds[-1].token)), CompleteUnmap) == [CompleteUnmap(1, 0)]


# --- AMD -----------------------------------------------------------------------------------------------


def test_amd_ctrl_inv_to_1s_logs_iotlb_inv_timeout_naming_the_hung_device_and_uaf_stays():
    s = run(policy={"name": "amd-iommu"}, chaos=HANG)  # inv_timeout default: 1 s (iommu_init_flags)
    assert s["hw_atc_timeouts"] > 0 and s["cmdq_errors"] == 0  # an event, not a halted queue
    records = s["event_records"]
    assert records and {r["event"] for r in records} == {"IOTLB_INV_TIMEOUT"} and {r["sid"] for r in records} == {5}
    assert min(r["at_s"] for r in records) >= 3.0  # one second after the first invalidation to it
    assert s["smmu_events"]["IOTLB_INV_TIMEOUT"] == s["hw_atc_timeouts"]
    assert s["uaf_exposures"] > 0 and s["fence_count"] == 0  # nothing recovers
    none = run(policy={"name": "amd-iommu", "inv_timeout": "none"}, chaos=HANG)
    assert none["hw_atc_timeouts"] == 0 and none["event_records"] == []


def test_amd_iommu_init_ctrl_inv_to_replaces_the_scenarios_hardware_timeout():
    s = run(policy={"name": "amd-iommu", "inv_timeout": "100ms"}, hardware={"atc_inv_completion_timeout": 60},
            chaos=HANG)
    assert s["hw_atc_timeouts"] > run(policy={"name": "amd-iommu"}, chaos=HANG)["hw_atc_timeouts"]


# --- dma-iommu's flush queue ---------------------------------------------------------------------------


def test_fq_ring_free_locked_frees_only_what_a_flush_started_after_it_covers():
    fq = FlushQueue(0, cpus=2)
    assert fq.add(0, "a") is True  # the first entry arms the timer
    fq.flush_started()  # fq_flush_iotlb(): start count 1
    assert fq.add(1, "b") is False  # queued during the flush: the next flush covers it
    fq.flush_finished()
    assert fq.free_all() == ["a"] and fq.pending() == 1
    fq.flush_started()
    fq.flush_finished()
    assert fq.free(1) == ["b"]
    for k in range(IOVA_DEFAULT_FQ_SIZE - 1):
        fq.add(0, k)
    assert fq.full(0) and not fq.full(1)


@pytest.mark.parametrize("policy", ["arm-smmu-v3", "amd-iommu", "intel-vtd"])
def test_queue_iova_and_fq_flush_timeout_cut_cmd_syncs_per_unmap_to_a_fraction_of_strict(policy):
    # 300 unmaps/s per domain: about three IOVAs per 10 ms flush of the whole domain
    load = {"workload": {"unmaps_per_s": 1200, "dma_per_endpoint_per_s": 40}, "duration": 3}
    strict = run(policy={"name": policy}, host={"flush": "strict"}, **load)
    lazy = run(policy={"name": policy}, host={"flush": "lazy"}, **load)
    assert lazy["flush"]["mode"] == "lazy" and lazy["flush"]["iovas_per_flush"] > 2
    assert lazy["syncs_per_unmap"] < strict["syncs_per_unmap"] / 2
    assert lazy["unmaps"]["count"] >= strict["unmaps"]["count"] * 0.95


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("flush", ["strict", "lazy"])
@pytest.mark.parametrize("policy", POLICIES)
def test_a_fault_free_run_never_shows_uaf_or_a_fence_with_iommu_dma_strict_or_the_flush_queue(policy, flush, seed):
    s = run(policy={"name": policy}, host={"flush": flush}, seed=seed, duration=2)
    assert s["uaf_exposures"] == 0 and s["fence_count"] == 0 and s["unmaps"]["incomplete"] <= 4


def test_dma_between_queue_iova_and_fq_flush_timeout_is_the_lazy_window_not_uaf():
    # DMA busy enough to hit its ATC between two flushes of the whole ATC (every ~10 ms per domain)
    busy = {"workload": {"unmaps_per_s": 400, "dma_per_endpoint_per_s": 2000}, "duration": 2}
    lazy = run(policy={"name": "arm-smmu-v3"}, host={"flush": "lazy"}, **busy)
    strict = run(policy={"name": "arm-smmu-v3"}, host={"flush": "strict"}, **busy)
    assert lazy["lazy_window_dma"] > 0 and lazy["uaf_exposures"] == 0  # the window lazy mode accepts
    assert strict["lazy_window_dma"] == 0 and strict["uaf_exposures"] == 0


@pytest.mark.parametrize("policy,default", [("amd-iommu", "lazy"), ("intel-vtd", "lazy"),
                                            ("arm-smmu-v3", "strict"), ("quarantine", "strict"),
                                            ("fence-on-timeout", "strict")])
def test_host_flush_default_is_config_iommu_default_dma_lazy_on_x86_and_strict_on_arm64(policy, default):
    a = run(policy={"name": policy}, host={"flush": "default"}, duration=3, chaos=HANG)
    b = run(policy={"name": policy}, host={"flush": default}, duration=3, chaos=HANG)
    assert deterministic_view(a) == deterministic_view(b)


def test_fq_flush_iotlb_after_arm_smmu_cmdq_poll_until_sync_times_out_frees_the_pages_and_the_uaf_follows():
    s = run(policy={"name": "arm-smmu-v3"}, host={"flush": "lazy"}, chaos=HANG)
    assert s["sync_timeouts"] > 0 and s["uaf_exposures"] > 0
    assert s["flush"]["latency_s"]["max"] >= 1.0  # a timer flush held a CPU for the poll timeout


def test_arm_smmu_gerror_handler_is_taken_by_its_cpu_only_once_that_cpus_poll_restores_interrupts():
    # a 50 ms hardware timeout raises CERROR_ATC_INV_SYNC long before the 1 s software one; the hard
    # IRQ goes to CPU 0, which is itself spinning in arm_smmu_cmdq_issue_cmdlist() behind the halted
    # queue: it takes it at its local_irq_restore(), at most one poll later. On an idle CPU, at once
    fast = {"atc_inv_completion_timeout": 0.05}
    busy = run(policy={"name": "arm-smmu-v3"}, hardware=fast, chaos=HANG)
    idle = run(policy={"name": "arm-smmu-v3"}, hardware=fast, chaos=HANG, host={"gerror_irq_cpu": "idle"})
    assert busy["gerror_irqs_late"] > 0 and 0.5 < busy["gerror_irq_delay_max_s"] <= 1.0 + 1e-6
    assert idle["gerror_irqs"] > 0 and idle["gerror_irqs_late"] == 0 and idle["gerror_irq_delay_max_s"] == 0
    # the queue stays halted until GERRORN: the late handler costs every CPU behind it its poll
    assert busy["sync_timeouts"] > idle["sync_timeouts"] == 0


def test_arm_smmu_cmdq_poll_until_not_full_waits_for_room_with_interrupts_on_and_logs_cmdq_timeout():
    # 128 entries (the least Linux runs with): each CPU's timed-out flushes leave their commands in
    # the wedged queue until it fills; issue_cmdlist() then waits for room with interrupts on,
    # logging "CMDQ timeout" every second, inside the flush
    s = run(policy={"name": "arm-smmu-v3"}, hardware={"cmdq_entries": 128}, duration=16,
            chaos=[{"at": 2, "fault": "hang", "endpoints": [5], "duration": 12}])
    assert s["cmdq_entries"] == 128 and s["cmdq_full_waits"] > 0 and s["cmdq_timeouts"] > 0
    assert s["cmdq_full_wait_s"] > 1.0
    assert s["irqs_off_max_s"] <= 1.0 + 1e-6 < s["flush_max_s"]  # waiting for room: interrupts on
    default = run(policy={"name": "arm-smmu-v3"}, duration=16,
                  chaos=[{"at": 2, "fault": "hang", "endpoints": [5], "duration": 12}])
    assert default["cmdq_entries"] == 1 << 16 and default["cmdq_full_waits"] == 0  # min(2^CMDQS, Linux's cap)


class _Buffer:
    """The driver's view of the AMD command buffer: free slots (head against tail)."""

    def __init__(self, free):
        self.free = free

    def cmdq_space(self, queue):
        return self.free


def test_amd_iommu_queue_command_sync_drops_a_command_after_loop_timeout_in_a_full_buffer():
    p = make_policy("amd-iommu", {}, HW)
    p.regs = _Buffer(2)  # "left <= 0x20": no room for a command
    a = p.handle(0.0, UnmapStart(0, 1, 3, 8, 0, (10, 11)))
    assert a[0] == LocalIrqSave(0) and not only(a, Submit)  # spin_lock_irqsave(&dom->lock), then it waits
    (wait,) = only(a, WaitCmdqSpace)
    (timer,) = only(a, SetTimer)
    assert wait.entries == 3 and timer.at == pytest.approx(0.1)  # LOOP_TIMEOUT x udelay(1)
    a = p.handle(0.1, TimerFired(timer.token))  # "Command buffer timeout": INVALIDATE_IOMMU_PAGES dropped
    assert [n.kind for n in only(a, Note)][:1] == ["cmd_dropped"] and not only(a, Submit)
    (wait,) = only(a, WaitCmdqSpace)  # the next command, INVALIDATE_IOTLB_PAGES for 10, waits its turn
    p.regs.free = 64
    a = p.handle(0.15, CmdqSpace(0, wait.token))
    subs = only(a, Submit)
    assert [[c.sid for c in s.cmds] for s in subs[:2]] == [[10], [11]]  # written one by one, as they come
    assert [c.op for c in subs[2].cmds] == [CMDQ_OP_CMD_SYNC]  # then the COMPLETION_WAIT, polled
    a = p.handle(0.16, SyncDone(0, subs[2].cmds[-1].token))
    # the dropped TLBI is not seen: the COMPLETION_WAIT completes, interrupts on, the flush returns 0
    assert only(a, LocalIrqRestore) == [LocalIrqRestore(0)] and only(a, CompleteUnmap) == [CompleteUnmap(1, 0)]


def test_amd_iommu_completion_wait_that_cannot_be_queued_returns_eio_without_waiting():
    p = make_policy("amd-iommu", {}, HW)
    p.regs = _Buffer(2)
    a = p.handle(0.0, UnmapStart(0, 1, 3, 8, 0, (10,)))
    for t in (0.1, 0.2, 0.3):  # the TLBI, the IOTLB invalidation, the COMPLETION_WAIT: each dropped
        (timer,) = only(a, SetTimer)
        a = p.handle(t, TimerFired(timer.token))
    assert only(a, CompleteUnmap) == [CompleteUnmap(1, -5)] and LocalIrqRestore(0) in a
    assert not any(isinstance(x, Submit) for x in a)


# --- the reset path --------------------------------------------------------------------------------------


def test_pci_dev_reset_iommu_prepare_waits_for_the_invs_readers_and_its_own_polls_not_the_hardware_timeout():
    """prepare() attaches the blocking domain: arm_smmu_attach_prepare()'s pci_disable_ats() waits for
    the arm_smmu_invs rwlock's readers (CPUs inside a flush that includes the device: at most their
    two 1 s polls), then the abort STE's CMD_SYNC and arm_smmu_attach_commit()'s whole-ATC ATC_INV,
    each polled 1 s and given up behind the wedge. The FLR follows, long before the 60 s hardware
    timeout of the ATC_INVs still in the queue (the FLR makes the device drop them)."""
    hang = [{"at": 2, "fault": "hang", "endpoints": [5], "duration": 20},
            {"at": 2.5, "fault": "reset", "endpoints": [5]}]
    s = run(policy={"name": "arm-smmu-v3"}, chaos=hang, duration=12)
    (reset,) = s["resets"]
    assert 2.5 < reset["started_s"] <= 2.5 + 2 * 1.0 + 1.0 + 1.0 + 0.01 and reset["ok"]
    assert s["ats_disables_deferred"] == 1 and s["hw_atc_timeouts"] == 0
    healthy = run(policy={"name": "arm-smmu-v3"}, duration=5, chaos=[{"at": 2.5, "fault": "reset", "endpoints": [5]}])
    assert healthy["resets"][0]["started_s"] < 2.51  # no reader, every CMD_SYNC answered: the FLR goes at once
    assert healthy["commands"]["ATC_INV"] > 0 and healthy["sync_timeouts"] == 0


def test_arm_smmu_attach_commit_sends_the_whole_atc_atc_inv_that_costs_a_hung_device_a_hardware_timeout():
    # no workload: the only commands are the reset's. The blocking domain's attach is the abort STE
    # (CFGI_STE + CMD_SYNC) and arm_smmu_attach_commit()'s "ATS is being switched off, invalidate the
    # entire ATC" (ATC_INV + CMD_SYNC); done() re-attaches: the STE, then arm_smmu_enable_ats()'s ATC_INV
    quiet = {"workload": {"unmaps_per_s": 0, "dma_per_endpoint_per_s": 10}, "duration": 10}
    healthy = run(chaos=[{"at": 3, "fault": "reset", "endpoints": [5]}], **quiet)
    assert healthy["commands"] == {"ATC_INV": 2, "CFGI_STE": 2, "CMD_SYNC": 4}
    assert healthy["hw_atc_timeouts"] == 0 and healthy["resets"][0]["started_s"] < 3.01
    # a hung device holds the commit's ATC_INV; the attach's 1 s poll gives up, the FLR goes and the
    # device drops it; the SMMU gives it up after its own timeout (3 s): CERROR_ATC_INV_SYNC
    hung = run(chaos=[{"at": 2, "fault": "hang", "endpoints": [5], "duration": 20},
                      {"at": 3, "fault": "reset", "endpoints": [5]}],
               hardware={"atc_inv_completion_timeout": 3}, **quiet)
    assert hung["resets"][0]["started_s"] == pytest.approx(4.0, abs=0.01)
    assert hung["hw_atc_timeouts"] == 1 and hung["cmdq_errors"] == 1


def test_pci_dev_reset_iommu_done_runs_after_a_failed_reset_in_mainline_7_0_not_from_the_series_v3():
    """Mainline 7.0 calls pci_dev_reset_iommu_done() whatever the reset's outcome: a device whose reset
    failed is back in its domain, its invalidation list and ATS on, and every ATC_INV to it goes
    unanswered (sync timeouts, pages freed under the flushes that gave up). From v3 the series runs
    it only after a successful reset: the dead device stays in the blocking domain."""
    failed = [{"at": 2, "fault": "reset", "endpoints": [5], "ok": False}]
    arm = run(policy={"name": "arm-smmu-v3"}, duration=6, chaos=failed)
    v3 = run(policy={"name": "quarantine", "version": "v3"}, duration=6, chaos=failed)
    assert arm["reset_blocks"] == v3["reset_blocks"] == 1  # the blocking domain for the reset
    assert arm["fence_count"] == v3["fence_count"] == 0  # the core's blocking domain is no fence
    assert arm["endpoints_by_state"]["dead"] == v3["endpoints_by_state"]["dead"] == 1
    assert arm["sync_timeouts"] > 0 and v3["sync_timeouts"] == 0
    ok = run(policy={"name": "arm-smmu-v3"}, duration=6, chaos=[{"at": 2, "fault": "reset", "endpoints": [5]}])
    assert ok["sync_timeouts"] == 0 and ok["dma"]["untranslated_sent"] == 0  # back in its domain, ATS on


# --- VT-d ------------------------------------------------------------------------------------------------


def test_qi_check_fault_the_cpu_that_reads_the_ite_first_handles_it_not_the_one_at_the_head():
    p = make_policy("intel-vtd", {}, HW)
    (head,) = only(p.handle(0.0, UnmapStart(3, 1, 3, 8, 0, (10,))), Submit)  # CPU 3's wait is first
    (other,) = only(p.handle(0.0, UnmapStart(2, 2, 4, 9, 0, (20,))), Submit)
    a = p.handle(5.0, CmdqError(0, CMDQ_ERR_CERROR_ATC_INV_IDX, -1, ite_sid=10))
    assert only(a, QueryPresence) == [QueryPresence(10)]  # CPU 2 (lowest) handled it: pci_device_is_present()
    resubmitted = only(a, Submit)
    assert [[c.sid for c in s.cmds if c.op == CMDQ_OP_ATC_INV] for s in resubmitted] == [[10]]  # CPU 3: -EAGAIN
    assert p.handle(5.0, SyncDone(0, other.cmds[-1].token)) == []  # its aborted wait is void


def test_qi_check_fault_with_no_itesid_recorded_retries_for_ever():
    removed = [{"at": 2, "fault": "removed", "endpoints": [5]}]
    hw = {"atc_inv_completion_timeout": 2}
    s = run(policy={"name": "intel-vtd", "itesid": False}, host={"flush": "strict"}, hardware=hw, duration=12,
            chaos=removed)
    named = run(policy={"name": "intel-vtd"}, host={"flush": "strict"}, hardware=hw, duration=12, chaos=removed)
    assert s["completion_errors"] == {} and s["notes"]["retry"] > 0  # nobody ever gives up
    assert named["completion_errors"] and s["unmaps"]["count"] < named["unmaps"]["count"]


@pytest.mark.parametrize("policy,queue", [("arm-smmu-v3", 3), ("amd-iommu", 0), ("intel-vtd", 0), ("quarantine", 3)])
def test_iommu_cmd_buf_and_qi_are_one_queue_per_iommu_only_arm_smmu_v3_gives_cpus_their_own(policy, queue):
    # AMD's command buffer (iommu->cmd_buf) and VT-d's invalidation queue (iommu->qi) are one per
    # IOMMU; the scenario's extra queues are SMMUv3 ECMDQ/CMDQV, which only the arm driver uses
    p = make_policy(policy, {}, HwInfo(command_queues=9, cpus=4, invalidate_queue_depth=32))
    (first, *_) = only(p.handle(0.0, UnmapStart(3, 1, 3, 8, 0, (10, 11))), Submit)
    assert first.queue == queue
