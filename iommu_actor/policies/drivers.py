"""How each Linux IOMMU driver turns one unmap into command-queue submissions.

The model's queue is the SMMUv3 command queue. The AMD and VT-d drivers' commands map onto it
one to one, and keep their own names in the comments:

    SMMUv3           AMD IOMMU                  Intel VT-d (queued invalidation)
    TLBI_NH_VA       INVALIDATE_IOMMU_PAGES     IOTLB invalidate descriptor (PSI)
    ATC_INV          INVALIDATE_IOTLB_PAGES     Device-TLB invalidate descriptor
    CMD_SYNC         COMPLETION_WAIT            invalidation wait descriptor
    CERROR_ATC_INV   IOTLB_INV_TIMEOUT event    Invalidation Time-out Error (ITE)

A ``DriverHooks`` is pure data plus one builder: the mainline policies and the quarantine core both
use it, which is how the core "composes" with each driver.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..commands import Cmd, atc_inv_span, cmd_atc_inv, cmd_tlbi_nh_asid, cmd_tlbi_nh_va
from ..spec import (
    AMD_CMD_BUFFER_ENTRIES,
    AMD_CMD_BUFFER_SPARE,
    ARM_SMMU_CMDQ_ENTRIES,
    ATC_INV_SIZE_ALL,
    CMDQ_BATCH_ENTRIES,
    QI_LENGTH,
)


@dataclass(frozen=True)
class DriverHooks:
    name: str
    #: the driver's software wait before it gives up on a sync (None: waits forever)
    sync_timeout: float | None
    #: the IOTLB flush gets its own CMD_SYNC before the ATC flush (arm-smmu-v3), instead of
    #: sharing the ATC flush's (AMD, VT-d)
    separate_tlbi_sync: bool
    #: descriptors per sync (VT-d qi_batch: 16); None: all of an unmap's commands behind one sync
    descs_per_sync: int | None
    #: commands per queue write (arm-smmu-v3 CMDQ_BATCH_ENTRIES); informational for the others
    batch_entries: int
    #: the CPU spins with interrupts off while waiting
    irqs_off_wait: bool
    #: the hardware names the device of an invalidation time-out (VT-d IQER.ITESID, AMD's
    #: IOTLB_INV_TIMEOUT event); SMMUv3's CERROR_ATC_INV_SYNC does not
    hw_reports_ite_sid: bool
    #: the sync holds the queue until it completes (CMD_SYNC, COMPLETION_WAIT); False: VT-d's wait
    #: descriptor without the Fence flag, which Linux never sets (qi_submit_sync)
    fence_waits: bool = True
    #: what the IOMMU does with a timed-out invalidation: "cerror" (the next sync halts the queue:
    #: SMMUv3 CERROR_ATC_INV_SYNC, VT-d ITE) or "event" (AMD: an IOTLB_INV_TIMEOUT record, no halt)
    inv_timeout_action: str = "cerror"
    #: the invalidation timeout the driver programs at init (AMD CTRL_INV_TO_1S); None: the hardware's own
    inv_timeout: float | None = None
    #: the IOMMU can give CPUs command queues of their own (SMMUv3 ECMDQ, Tegra241 CMDQV); AMD has
    #: one command buffer and VT-d one invalidation queue per IOMMU, whatever the scenario offers
    per_cpu_queues: bool = False
    #: the queue's size on this driver's hardware (hardware.cmdq_entries: null)
    cmdq_entries: int = ARM_SMMU_CMDQ_ENTRIES
    #: slots the driver keeps free beyond what it writes (AMD: 2, "left <= 0x20"; VT-d: 1 of count + 2)
    cmdq_spare: int = 0

    def queues(self, offered: int) -> int:
        """How many of the scenario's ``hardware.command_queues`` this IOMMU really has."""
        return offered if self.per_cpu_queues else 1

    def tlbi(self, asid: int, addr: int, full: bool = False) -> Cmd:
        """The IOTLB invalidation: one page, or the whole ASID for a full flush (flush_iotlb_all)."""
        return cmd_tlbi_nh_asid(asid) if full else cmd_tlbi_nh_va(asid, addr)

    def atc_invs(self, sids, addr: int, size: int) -> list[Cmd]:
        """ATC_INV for each stream (arm_smmu_atc_inv_to_cmd / device_flush_iotlb / qi_flush_dev_iotlb);
        ``size`` ATC_INV_SIZE_ALL (a full flush) invalidates every translation."""
        if size >= ATC_INV_SIZE_ALL:
            return [cmd_atc_inv(sid, 0, ATC_INV_SIZE_ALL) for sid in sids]
        base, log2 = atc_inv_span(addr, 1 << size)
        return [cmd_atc_inv(sid, base, log2) for sid in sids]

    def writes(self, cmds: list[Cmd]) -> list[tuple[Cmd, ...]]:
        """One waited-on submission split into the queue writes the driver makes: arm-smmu-v3
        issues each full batch of CMDQ_BATCH_ENTRIES without a sync, then the rest with the
        CMD_SYNC (``cmds`` ends in it). The writes enter the queue in the same instant, so in the
        model this changes what a queue holds between writes, not when anything completes: other
        CPUs' writes do not land between the chunks (docs/policies.md, Sources)."""
        per = self.batch_entries
        if per is None or len(cmds) <= per + 1:
            return [tuple(cmds)]
        body = cmds[:-1]
        full = (len(body) - 1) // per  # batches that filled up before the last command was added
        return [tuple(body[i * per:(i + 1) * per]) for i in range(full)] + [tuple(cmds[full * per:])]


ARM_SMMU_V3 = DriverHooks(
    name="arm-smmu-v3",
    sync_timeout=1.0,  # ARM_SMMU_POLL_TIMEOUT_US
    separate_tlbi_sync=True,  # __arm_smmu_tlb_inv_range, then arm_smmu_atc_inv_domain
    descs_per_sync=None,
    batch_entries=CMDQ_BATCH_ENTRIES,
    # arm_smmu_cmdq_issue_cmdlist(): local_irq_save() before reserving space, local_irq_restore()
    # only after arm_smmu_cmdq_poll_until_sync()
    irqs_off_wait=True,
    hw_reports_ite_sid=False,
    per_cpu_queues=True,
)

AMD_IOMMU = DriverHooks(
    name="amd-iommu",
    sync_timeout=0.1,  # LOOP_TIMEOUT (100000) x udelay(1)
    separate_tlbi_sync=False,  # domain_flush_pages then domain_flush_complete
    descs_per_sync=None,
    batch_entries=None,
    # wait_on_sem() runs outside iommu->lock since 2026 (d2a0cac10597), but the unmap path holds
    # dom->lock with spin_lock_irqsave around domain_flush_complete()
    irqs_off_wait=True,
    inv_timeout_action="event",
    inv_timeout=1.0,  # iommu_init_flags(): CTRL_INV_TO_1S
    hw_reports_ite_sid=True,  # the IOTLB_INV_TIMEOUT event log entry carries the DeviceID
    cmdq_entries=AMD_CMD_BUFFER_ENTRIES,
    cmdq_spare=AMD_CMD_BUFFER_SPARE,
)

INTEL_VTD = DriverHooks(
    name="intel-vtd",
    sync_timeout=None,  # qi_submit_sync has no software timeout
    separate_tlbi_sync=False,
    descs_per_sync=16,  # QI_MAX_BATCHED_DESC_COUNT
    batch_entries=None,
    irqs_off_wait=True,  # qi_submit_sync spins under raw_spin_lock_irqsave(&qi->q_lock)
    hw_reports_ite_sid=True,  # DMAR_IQER_REG_ITESID
    fence_waits=False,  # wait_desc.qw0 has no QI_IWD_FENCE
    cmdq_entries=QI_LENGTH,
    cmdq_spare=1,  # qi_submit_sync(): while (qi->free_cnt < count + 2): its descriptors, the wait one, one empty
)

DRIVERS: dict[str, DriverHooks] = {d.name: d for d in (ARM_SMMU_V3, AMD_IOMMU, INTEL_VTD)}
