"""An example plug-in policy with a software timeout ("impatient-smmu"): mainline arm-smmu-v3's
hazard in 50 lines.

    ats-stress run single-hang --policy-file examples/policies/impatient.py --policy impatient-smmu
    ats-stress run single-hang --policy-file examples/policies/impatient.py --policy impatient-smmu \\
        --set policy.sync_timeout=10s

On ``UnmapStart`` it submits TLBI + one ATC_INV per ATS master + CMD_SYNC and sets a timer at
``now + sync_timeout``. Whichever comes first ends the flush: the CMD_SYNC's ``SyncDone`` (return 0)
or the timer (log the timeout with ``Note("sync_timeout")`` and return -ETIMEDOUT). Either way the
page is freed, so a device that has not answered its Invalidate Request by then may write through
its stale ATC entry: the UAF exposures the oracle counts. A timeout longer than the hang leaks
nothing (the second command), at the cost of a stall as long as the hang.
"""

from ats_stress.iommu_actor.commands import atc_inv_span, cmd_atc_inv, cmd_sync, cmd_tlbi_nh_va
from ats_stress.iommu_actor.policy import (
    AckCmdqError,
    CmdqError,
    CompleteUnmap,
    Note,
    Policy,
    PolicyParams,
    SetTimer,
    Submit,
    SyncDone,
    TimerFired,
    UnmapStart,
)
from ats_stress.iommu_actor.spec import ETIMEDOUT
from ats_stress.iommu_actor.units import Duration


class ImpatientParams(PolicyParams):
    """``policy.sync_timeout``: how long a flush waits for its CMD_SYNC (``1s``, ``100ms``, ...)."""

    sync_timeout: Duration = 1.0


class ImpatientSmmu(Policy):
    name = "impatient-smmu"
    summary = "example plug-in: one CMD_SYNC per unmap, given up after policy.sync_timeout (-ETIMEDOUT, page freed)"
    Params = ImpatientParams
    irqs_off_wait = True  # the CPU spins with interrupts off for the whole flush, as arm-smmu-v3's does
    can_fence = False  # no recovery: it only logs and returns

    def __init__(self, params, hw):
        super().__init__(params, hw)
        self.waiting: dict[int, int] = {}  # CMD_SYNC token (also its timer's) -> the unmap it completes
        self.next_token = 0

    def poll_timeout(self):
        return self.params.sync_timeout  # the host judges "could have caught" against this timeout

    def handle(self, now, event):
        if isinstance(event, UnmapStart):
            self.next_token += 1
            token = self.next_token
            base, log2 = atc_inv_span(event.addr, 1 << event.size)
            cmds = ([cmd_tlbi_nh_va(event.asid, event.addr)]
                    + [cmd_atc_inv(sid, base, log2) for sid in event.sids]
                    + [cmd_sync(token)])
            self.waiting[token] = event.unmap
            return [Submit(self.queue_of(event.cpu), tuple(cmds)),
                    SetTimer(now + self.params.sync_timeout, token)]  # absolute time: now + delay
        if isinstance(event, SyncDone) and event.token in self.waiting:
            return [CompleteUnmap(self.waiting.pop(event.token))]
        if isinstance(event, TimerFired) and event.token in self.waiting:  # else its CMD_SYNC came first
            unmap = self.waiting.pop(event.token)
            return [Note("sync_timeout", text=f"CMD_SYNC timeout (unmap {unmap})"),
                    CompleteUnmap(unmap, -ETIMEDOUT)]
        if isinstance(event, CmdqError):
            return [AckCmdqError(event.queue)]  # CERROR_ATC_INV_SYNC: acknowledge, the CMD_SYNC re-runs
        return []
