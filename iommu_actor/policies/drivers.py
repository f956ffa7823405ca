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

from ..commands import Cmd, atc_inv_span, cmd_atc_inv, cmd_sync, cmd_tlbi_nh_va
from ..spec import CMDQ_BATCH_ENTRIES


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

    def tlbi(self, asid: int, addr: int) -> Cmd:
        return cmd_tlbi_nh_va(asid, addr)

    def atc_invs(self, sids, addr: int, size: int) -> list[Cmd]:
        """ATC_INV for each stream (arm_smmu_atc_inv_domain / device_flush_iotlb / qi_flush_dev_iotlb)."""
        base, log2 = atc_inv_span(addr, 1 << size)
        return [cmd_atc_inv(sid, base, log2) for sid in sids]

    def flush_steps(self, asid: int, addr: int, size: int, sids, next_token) -> list[list[Cmd]]:
        """The sequence of waited-on submissions one unmap costs, each ending in its CMD_SYNC."""
        steps: list[list[Cmd]] = []
        invs = self.atc_invs(sids, addr, size)
        if self.separate_tlbi_sync:
            steps.append([self.tlbi(asid, addr), cmd_sync(next_token())])
            if invs:  # arm_smmu_atc_inv_domain returns early with no ATS master
                steps.append(invs + [cmd_sync(next_token())])
            return steps
        descs = [self.tlbi(asid, addr)] + invs
        per = self.descs_per_sync or len(descs)
        for i in range(0, len(descs), per):
            steps.append(descs[i:i + per] + [cmd_sync(next_token())])
        return steps


ARM_SMMU_V3 = DriverHooks(
    name="arm-smmu-v3",
    sync_timeout=1.0,  # ARM_SMMU_POLL_TIMEOUT_US
    separate_tlbi_sync=True,  # __arm_smmu_tlb_inv_range, then arm_smmu_atc_inv_domain
    descs_per_sync=None,
    batch_entries=CMDQ_BATCH_ENTRIES,
    irqs_off_wait=False,  # arm_smmu_cmdq_poll_until_sync runs after local_irq_restore
    hw_reports_ite_sid=False,
)

AMD_IOMMU = DriverHooks(
    name="amd-iommu",
    sync_timeout=0.1,  # LOOP_TIMEOUT (100000) x udelay(1)
    separate_tlbi_sync=False,  # domain_flush_pages then domain_flush_complete
    descs_per_sync=None,
    batch_entries=CMDQ_BATCH_ENTRIES,
    irqs_off_wait=True,  # wait_on_sem under raw_spin_lock_irqsave(&iommu->lock)
    hw_reports_ite_sid=True,  # the IOTLB_INV_TIMEOUT event log entry carries the DeviceID
)

INTEL_VTD = DriverHooks(
    name="intel-vtd",
    sync_timeout=None,  # qi_submit_sync has no software timeout
    separate_tlbi_sync=False,
    descs_per_sync=16,  # QI_MAX_BATCHED_DESC_COUNT
    batch_entries=16,
    irqs_off_wait=True,  # qi_submit_sync spins under raw_spin_lock_irqsave(&qi->q_lock)
    hw_reports_ite_sid=True,  # DMAR_IQER_REG_ITESID
)

DRIVERS: dict[str, DriverHooks] = {d.name: d for d in (ARM_SMMU_V3, AMD_IOMMU, INTEL_VTD)}
