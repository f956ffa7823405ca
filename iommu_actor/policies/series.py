"""``quarantine``: the posted arm-smmu-v3 series, version by version, on the mainline flush path.

Nicolin Chen, "iommu/arm-smmu-v3: Recover ATC invalidate timeouts" (v1, March 2026), then
"Quarantine device upon ATC invalidation timeout" (v2 March, v3 April, v4 May; v5/v6 known by
title only, so v4 is the latest modelled). Not merged. Everything else is mainline arm-smmu-v3
(``ArmSmmuV3``): the same batches, the same 1 s poll with interrupts off, the same ignored
-ETIMEDOUT; the series acts only on the hardware's CERROR_ATC_INV_SYNC, which arrives in time
only when the hardware ATC timeout is shorter than the software one.

- v1: the GERROR handler reads the queue entry one slot before CONS (the CMD_SYNC) and takes its
  SID for the culprit: with a domain's masters batched together that is whichever is last. A
  recovery worker clears its bus mastering and resets it (``pci_reset_function``); bus mastering
  comes back after a successful reset. The submitter sees 0.
- v2: the GERROR handler sets the CMD_SYNC's bit in the queue's ``atc_sync_timeouts`` bitmap;
  the submitter tests and clears it after polling and returns -ETIMEDOUT. On -ETIMEDOUT the
  submitting thread (still spinning with interrupts off) retries the batch one SID at a time in
  sorted order, each with its own CMD_SYNC; a SID that fails again is the culprit: STE.EATS
  cleared in place (CFGI_STE + CMD_SYNC), ``ats_broken`` (no more ATC_INV to it), reported to
  the core (``iommu_report_device_broken``: the blocking domain). v2 returns the same -ETIMEDOUT
  for a software poll timeout, so a software timeout starts the retry too (inferred from the v2
  review: docs/policies.md).
- v3: -EIO for an ATC timeout, so the 1 s software timeout stays unhandled, as mainline; the
  quarantine lifts in ``reset_device_done`` after a successful outside reset. (That op is new in
  v3; how v2's quarantine ended is not in the sources, and v2 lifts at the same point here rather
  than keep a re-attached master out of invalidations: docs/policies.md, "Sources".)
- v4: per-SID retry, then ``pci_disable_ats`` + EATS=0 + the domain's ATS invalidation entries
  marked broken + ``ats_broken``; no core worker. An outside FLR through the reset path reverts it.

From v2 on the policy never resets a device itself: the quarantine waits for AER, sysfs or VFIO
(a chaos ``reset`` step).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..commands import cmd_cfgi_ste
from ..policy import (
    DisableAts,
    Note,
    PolicyParams,
    ReportBroken,
    ResetDevice,
    SetBusMaster,
    WriteSte,
    register,
)
from ..spec import (
    CMDQ_ERR_CERROR_ATC_INV_IDX,
    CMDQ_OP_ATC_INV,
    EIO,
    ETIMEDOUT,
    STRTAB_STE_0_CFG_S1_TRANS,
    STRTAB_STE_1_EATS_ABT,
)
from ..units import Duration
from .mainline import ArmSmmuV3


class QuarantineParams(PolicyParams):
    version: Literal["v1", "v2", "v3", "v4"] = Field(
        "v4", description="the posted version (v4: the latest whose mechanism is public)")
    sync_timeout: Duration = Field(1.0, gt=0, description="ARM_SMMU_POLL_TIMEOUT_US")


@register
class Quarantine(ArmSmmuV3):
    name = "quarantine"
    summary = ("the posted series 'Quarantine device upon ATC invalidation timeout' (version: v1..v4) on "
               "mainline arm-smmu-v3: acts on the hardware CERROR_ATC_INV_SYNC only; v2+ retry per SID and "
               "clear STE.EATS (v4: pci_disable_ats, invs entries broken); an outside reset lifts it")
    Params = QuarantineParams
    can_fence = True  # unlike the mainline driver it builds on

    def __init__(self, params, hw):
        super().__init__(params, hw)
        self.version = int(params.version[1])
        #: v2+: the CMD_SYNCs the GERROR handler marked (by token: the queue slot the submitter polls)
        self.atc_sync_timeouts: set[int] = set()
        self.ats_broken: set[int] = set()  # v2+: master->ats_broken (v4: and its invs entries)
        self.recovering: set[int] = set()  # v1: devices the recovery worker is resetting
        #: the code that starts the per-SID retry: v2 -ETIMEDOUT, v3 and v4 -EIO
        self.atc_timeout_code = -ETIMEDOUT if self.version == 2 else -EIO
        #: v3 has pci_dev_reset_iommu_done() run only after a successful reset (and call
        #: reset_device_done); v1 and v2 sit on the core of their day, which calls it whatever the outcome
        self.reset_done_on_failure = self.version <= 2

    # --- the GERROR handler (arm_smmu_cmdq_skip_err) ----------------------------------------------

    def gerror(self, ev):
        actions = super().gerror(ev)  # logged, acknowledged: the CMD_SYNC re-runs
        if ev.cerror != CMDQ_ERR_CERROR_ATC_INV_IDX:
            return actions
        if self.version >= 2:
            self.atc_sync_timeouts.add(ev.token)  # the bit of the faulting CMD_SYNC's slot
            return actions
        cmd = self.regs.cmdq_entry_before_cons(ev.queue) if self.regs is not None else None
        if cmd is None or cmd.op != CMDQ_OP_ATC_INV or cmd.sid in self.recovering:
            return actions
        sid = cmd.sid  # "Read the ATC_INV command that led to the timeouts"
        self.recovering.add(sid)
        return actions + [Note("culprit", sid, f"v1: ATC_INV timeout, SID {sid} (one slot before CONS): "
                                              "recovery worker resets it"),
                          SetBusMaster(sid, False), ResetDevice(sid)]

    # --- the submitter ---------------------------------------------------------------------------

    def sync_return(self, result, token):
        if self.version >= 2 and token in self.atc_sync_timeouts:
            self.atc_sync_timeouts.discard(token)  # test_and_clear_bit(Q_IDX(&llq, sync_prod), ...)
            return self.atc_timeout_code  # "override any generic timeout"
        return super().sync_return(result, token)

    def ats_sids(self, ev):
        return [s for s in sorted(ev.sids) if s not in self.ats_broken]

    def atc_batch(self, ev, sids):
        ret = yield from super().atc_batch(ev, sids)
        if self.version >= 2 and ret == self.atc_timeout_code:
            yield Note("atc_timeout", text=f"ATC invalidation timeout ({ret}): retrying the batch per SID")
            yield from self.retry_per_sid(ev, sids)
        return ret

    def retry_per_sid(self, ev, sids):
        """Each SID of the failed batch again, in sorted order, with a CMD_SYNC of its own (linear,
        in the submitting thread, one arm_smmu_cmdq_issue_cmdlist() window each); a SID that fails
        again is quarantined. A retry that itself hits the 1 s software timeout (-ETIMEDOUT, which
        from v3 on is not the -EIO of an ATC timeout) quarantines nothing and the loop goes on: an
        assumption, the posted code does not say (docs/policies.md, Sources)."""
        for sid in sids:
            if sid in self.ats_broken:
                continue
            since = self.now
            ret = yield from self.issue_cmdlist(ev.cpu, self.hooks.atc_invs([sid], ev.addr, ev.size))
            if ret == self.atc_timeout_code:
                yield from self.quarantine(ev.cpu, sid, since)

    def quarantine(self, cpu: int, sid: int, since: float):
        self.ats_broken.add(sid)
        yield Note("culprit", sid, f"SID {sid}: ATC invalidation timed out again: quarantined", since=since)
        if self.version >= 4:
            yield DisableAts(sid, deferred=False)  # pci_disable_ats(), here in the invalidation context
        yield WriteSte(sid, STRTAB_STE_0_CFG_S1_TRANS, STRTAB_STE_1_EATS_ABT)  # STE.EATS cleared in place
        yield from self.issue_cmdlist(cpu, [cmd_cfgi_ste(sid)])
        if self.version <= 3:
            yield ReportBroken(sid)  # iommu_report_device_broken(): the core's blocking domain

    # --- reset_device_done / the v1 worker's outcome -----------------------------------------------

    def on_reset_done(self, ev):
        sid = ev.sid
        if self.version == 1:
            if sid not in self.recovering:
                return []
            self.recovering.discard(sid)
            if not ev.ok:
                return [Note("reset_failed", sid, f"SID {sid}: reset failed, left in the blocking domain")]
            return [SetBusMaster(sid, True)]  # "If reset succeeds, set BME back"
        if ev.ok and sid in self.ats_broken:
            self.ats_broken.discard(sid)  # reset_device_done: the quarantine is lifted
            return [Note("unfence", sid, f"SID {sid}: reset_device_done lifts the quarantine")]
        return []
