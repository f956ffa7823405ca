"""The three drivers as they are in mainline Linux: no fencing anywhere.

- ``arm-smmu-v3``: arm_smmu_domain_inv_range(): the TLBI batch and its CMD_SYNC, then one batch
  with an ATC_INV for every ATS master of the domain and one CMD_SYNC (issued in 64-entry chunks
  when longer). arm_smmu_cmdq_issue_cmdlist() spins on each CMD_SYNC with interrupts off for up to
  ARM_SMMU_POLL_TIMEOUT_US (1 s), then logs "CMD_SYNC timeout" and returns -ETIMEDOUT, which the
  unmap path ignores: the page is freed. On CERROR_ATC_INV_SYNC the GERROR handler leaves CONS at
  the CMD_SYNC and lets it re-run ("we might well end up back here").
- ``amd-iommu``: INVALIDATE_IOMMU_PAGES, INVALIDATE_IOTLB_PAGES per ATS device, COMPLETION_WAIT;
  wait_on_sem() gives up after LOOP_TIMEOUT x 1 us = 100 ms with "Completion-Wait loop timed out"
  and -EIO, ignored by the flush path; interrupts are off (dom->lock). The driver programs the
  hardware's IOTLB invalidation timeout to 1 s (CTRL_INV_TO_1S): then the hardware gives the
  invalidation up and logs an IOTLB_INV_TIMEOUT event naming the DeviceID. Nothing recovers; ATS
  stays on.
- ``intel-vtd``: qi_submit_sync() appends a wait descriptor (one per 16 descriptors, qi_batch)
  and spins with interrupts off, with no software timeout. On an Invalidation Time-out Error the
  CPU that reads it first (qi_check_fault) clears it and every pending wait descriptor is aborted;
  every submitter restarts, forever, unless the ITE names a source device (IQER.ITESID) that is no
  longer present: then the CPU that handled it returns -ETIMEDOUT.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..commands import Cmd
from ..policy import AckCmdqError, LocalIrqRestore, LocalIrqSave, Note, PolicyParams, Submit, SyncReturned, register
from ..spec import EIO, ETIMEDOUT, EVT_ID_AMD_IOTLB_INV_TO
from ..units import Duration
from .drivers import AMD_IOMMU, ARM_SMMU_V3, INTEL_VTD
from .flusher import POLL_ABORTED, POLL_DONE, POLL_TIMEOUT, FlushDriver, Probe, Room

#: ARM_SMMU_POLL_TIMEOUT_US: arm_smmu_cmdq_poll_until_not_full() gives up after it and logs "CMDQ timeout"
ARM_SMMU_POLL_TIMEOUT = 1.0


class ArmSmmuV3Params(PolicyParams):
    sync_timeout: Duration = Field(1.0, gt=0, description="ARM_SMMU_POLL_TIMEOUT_US")


@register
class ArmSmmuV3(FlushDriver):
    name = "arm-smmu-v3"
    summary = ("mainline arm-smmu-v3: CMD_SYNC polled with interrupts off for 1 s, -ETIMEDOUT ignored (page "
               "freed), CERROR_ATC_INV_SYNC re-runs the CMD_SYNC; no fencing")
    Params = ArmSmmuV3Params
    hooks = ARM_SMMU_V3
    can_fence = False  # mainline: no recovery, the timeout is logged and the page freed

    def flush(self, ev):
        """arm_smmu_domain_inv_range(): "ATS must be after a sync of the S1/S2 invalidations"."""
        err = yield from self.issue_cmdlist(ev.cpu, [self.hooks.tlbi(ev.asid, ev.addr, ev.full)])
        sids = self.ats_sids(ev)
        if sids:  # no ATS master: no ATC batch
            ret = yield from self.atc_batch(ev, sids)
            err = err or ret
        return err

    def ats_sids(self, ev) -> list[int]:
        """The domain's ATS masters in the order of its sorted invalidation array (arm_smmu_invs)."""
        return sorted(ev.sids)

    def atc_batch(self, ev, sids: list[int]):
        """One batch with an ATC_INV per master and one CMD_SYNC."""
        return (yield from self.issue_cmdlist(ev.cpu, self.hooks.atc_invs(sids, ev.addr, ev.size)))

    def issue_cmdlist(self, cpu: int, cmds: list[Cmd]):
        """arm_smmu_cmdq_issue_cmdlist(..., sync=true): local_irq_save(), room for the commands and
        the CMD_SYNC, write, arm_smmu_cmdq_poll_until_sync(), local_irq_restore(): one interrupts-off
        window per call (a GERROR held for this CPU is taken at its end, after the poll)."""
        queue = self.queue_of(cpu)
        yield LocalIrqSave(cpu)
        yield from self.wait_for_room(cpu, queue, len(cmds) + 1, ARM_SMMU_POLL_TIMEOUT, "CMDQ timeout")
        result, token = yield from self.poll(queue, cmds, self.params.sync_timeout)
        ret = self.sync_return(result, token)
        yield LocalIrqRestore(cpu)
        yield SyncReturned(ret)
        if result == POLL_TIMEOUT:
            yield Note("sync_timeout", text="CMD_SYNC timeout")
        return ret

    def poll_timeout(self) -> float | None:
        return self.params.sync_timeout

    def sync_return(self, result: str, token: int) -> int:
        """What arm_smmu_cmdq_poll_until_sync() hands back: 0, or -ETIMEDOUT after the poll timeout."""
        return 0 if result == POLL_DONE else -ETIMEDOUT


#: the IOMMU Control register's invalidation timeout field (CTRL_INV_TO_*, amd_iommu_types.h)
CTRL_INV_TO: dict[str, float | None] = {"none": None, "1ms": 1e-3, "10ms": 1e-2, "100ms": 0.1, "1s": 1.0,
                                        "10s": 10.0, "100s": 100.0}


class AmdIommuParams(PolicyParams):
    loop_timeout: Duration = Field(0.1, gt=0, description="LOOP_TIMEOUT x udelay(1) in wait_on_sem")
    inv_timeout: Literal["none", "1ms", "10ms", "100ms", "1s", "10s", "100s"] = Field(
        "1s", description="the hardware IOTLB invalidation timeout the driver programs (CTRL_INV_TO_1S in "
                          "init.c); it replaces hardware.atc_inv_completion_timeout")


@register
class AmdIommu(FlushDriver):
    name = "amd-iommu"
    summary = ("mainline AMD IOMMU: COMPLETION_WAIT polled 100 ms with interrupts off, 'Completion-Wait loop "
               "timed out' and -EIO ignored (page freed); hardware gives up after CTRL_INV_TO (1 s) and logs "
               "IOTLB_INV_TIMEOUT; ATS stays on")
    Params = AmdIommuParams
    hooks = AMD_IOMMU
    can_fence = False  # mainline: no recovery, the timeout is logged and the page freed
    default_flush = "lazy"
    inv_timeout_action = AMD_IOMMU.inv_timeout_action
    wants_events = True

    def hw_inv_timeout(self, scenario_timeout):
        return CTRL_INV_TO[self.params.inv_timeout]

    def flush(self, ev):
        """amd_iommu_domain_flush_pages() then domain_flush_complete(): one COMPLETION_WAIT, all under
        spin_lock_irqsave(&dom->lock): one interrupts-off window for the whole iotlb_sync."""
        cmds = [self.hooks.tlbi(ev.asid, ev.addr, ev.full)] + self.hooks.atc_invs(ev.sids, ev.addr, ev.size)
        queue = self.queue_of(ev.cpu)
        spare = self.hooks.cmdq_spare
        yield LocalIrqSave(ev.cpu)
        if self.room(queue) >= len(cmds) + 1 + spare:  # room for every command: written as they come
            result, _ = yield from self.poll(queue, cmds, self.params.loop_timeout)
        else:
            for cmd in cmds:  # iommu_queue_command() each; a command that finds no room may be dropped
                yield from self.queue_command(queue, cmd)
            if (yield from self.wait_for_buffer(queue)):  # iommu_completion_wait() returns the error
                yield LocalIrqRestore(ev.cpu)
                yield SyncReturned(-EIO)
                return -EIO
            result, _ = yield from self.poll(queue, [], self.params.loop_timeout)
        yield LocalIrqRestore(ev.cpu)
        if result == POLL_TIMEOUT:  # wait_on_sem()
            yield Note("sync_timeout", text="Completion-Wait loop timed out")
            yield SyncReturned(-EIO)
            return -EIO
        yield SyncReturned(0)
        return 0

    def queue_command(self, queue: int, cmd):
        """iommu_queue_command(): write one command once the buffer has room, or drop it."""
        if (yield from self.wait_for_buffer(queue)):
            return -EIO
        yield Submit(queue, (cmd,))
        return 0

    def wait_for_buffer(self, queue: int):
        """__iommu_queue_command_sync(): while the buffer would keep no more than 0x20 bytes free,
        udelay(1) and read the head again, LOOP_TIMEOUT times; then "Command buffer timeout", -EIO:
        the caller's command is dropped. Interrupts stay off (iommu->lock, dom->lock)."""
        need = 1 + self.hooks.cmdq_spare
        if self.room(queue) >= need:
            return 0
        yield Note("cmdq_full")
        deadline = self.now + self.params.loop_timeout
        while self.room(queue) < need:
            if self.now >= deadline or (yield Room(queue, need, deadline - self.now)) == POLL_TIMEOUT:
                yield Note("cmd_dropped", text="Command buffer timeout")
                return -EIO
        return 0

    def poll_timeout(self) -> float | None:
        return self.params.loop_timeout

    def gerror(self, ev):  # not raised: this IOMMU logs an event instead (inv_timeout_action "event")
        return [AckCmdqError(ev.queue)]

    def on_event(self, ev):
        """iommu_print_event(): EVENT_TYPE_IOTLB_INV_TO is logged with the DeviceID, nothing more."""
        if ev.evt_id == EVT_ID_AMD_IOTLB_INV_TO:
            return [Note("log", sid=ev.sid, text=f"Event logged [IOTLB_INV_TIMEOUT device={ev.sid}]")]
        return []


class IntelVtdParams(PolicyParams):
    itesid: bool = Field(True, description="the IOMMU records the source of an ITE in IQER.ITESID (older "
                                           "hardware leaves it 0: then submitters retry for ever)")


@register
class IntelVtd(FlushDriver):
    name = "intel-vtd"
    summary = ("mainline VT-d: qi_submit_sync spins with interrupts off and no timeout; an ITE aborts every "
               "pending wait and all submitters retry, unless the ITE's device is gone")
    Params = IntelVtdParams
    hooks = INTEL_VTD
    can_fence = False  # mainline: no recovery, the timeout is logged and the page freed
    default_flush = "lazy"

    def flush(self, ev):
        """cache_tag_flush_range(): IOTLB and device-TLB descriptors, a wait per 16 (qi_batch)."""
        descs = [self.hooks.tlbi(ev.asid, ev.addr, ev.full)] + self.hooks.atc_invs(ev.sids, ev.addr, ev.size)
        per = self.hooks.descs_per_sync
        err = 0
        for i in range(0, len(descs), per):
            ret = yield from self.qi_submit_sync(ev.cpu, descs[i:i + per])
            err = err or ret
        return err

    def qi_submit_sync(self, cpu: int, descs: list[Cmd]):
        """One interrupts-off window per attempt: raw_spin_lock_irqsave(&qi->q_lock) at restart:,
        raw_spin_unlock_irqrestore() before it returns or restarts."""
        queue = self.queue_of(cpu)
        while True:  # restart:
            yield LocalIrqSave(cpu)
            yield from self.wait_for_room(cpu, queue, len(descs) + 1 + self.hooks.cmdq_spare, None, "")
            result, _ = yield from self.poll(queue, descs, None)
            yield LocalIrqRestore(cpu)
            if result == POLL_DONE:
                yield SyncReturned(0)
                return 0
            if isinstance(result, tuple):  # this CPU's qi_check_fault() read the ITE first
                ite_sid = result[1]
                if ite_sid >= 0 and not (yield Probe(ite_sid)):  # pci_device_is_present()
                    yield Note("log", sid=ite_sid, text="ITE on a device no longer present: -ETIMEDOUT")
                    yield SyncReturned(-ETIMEDOUT)
                    return -ETIMEDOUT
            yield Note("retry", text="qi_submit_sync: wait descriptor aborted, retrying")  # -EAGAIN

    def gerror(self, ev):
        """qi_check_fault(): the CPU that reads DMA_FSTS_ITE first clears it and marks every pending
        wait descriptor QI_ABORT. Which spinning CPU that is, is a race; the model takes the
        lowest-numbered one (not the one whose wait is at the head of the queue)."""
        actions: list = [Note("log", sid=ev.ite_sid, text="Invalidation Time-out Error (ITE) cleared"),
                         AckCmdqError(ev.queue)]
        ite_sid = ev.ite_sid if self.params.itesid else -1
        for k, f in enumerate(self.abort_waits(ev.queue)):
            actions += self._resume(f, ("ite", ite_sid) if k == 0 else POLL_ABORTED)
        return actions
