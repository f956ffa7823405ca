"""Test-only plug-in: fences on a CMD_SYNC timeout but reports the flush complete before the fence
has taken effect (its CFGI_STE + CMD_SYNC queue behind the wedged CMD_SYNC), so the page is freed
while the device can still use its stale ATC entries: explore must find the UAF."""

from pydantic import Field

from ats_stress.iommu_actor.commands import atc_inv_span, cmd_atc_inv, cmd_cfgi_ste, cmd_sync, cmd_tlbi_nh_va
from ats_stress.iommu_actor.policy import (
    AckCmdqError,
    CmdqError,
    CompleteUnmap,
    Policy,
    PolicyParams,
    SetTimer,
    Submit,
    SyncDone,
    TimerFired,
    UnmapStart,
    WriteSte,
)
from ats_stress.iommu_actor.spec import ETIMEDOUT, STRTAB_STE_0_CFG_ABORT, STRTAB_STE_1_EATS_ABT
from ats_stress.iommu_actor.units import Duration


class EarlyParams(PolicyParams):
    sync_timeout: Duration = Field(1.0, gt=0)


class EarlyComplete(Policy):
    name = "test-early-complete"
    summary = "test only: on a CMD_SYNC timeout, fence the domain's masters and complete the unmap at once"
    Params = EarlyParams

    def __init__(self, params, hw):
        super().__init__(params, hw)
        self.pending: dict[int, tuple[int, tuple[int, ...], int]] = {}  # token -> (unmap, sids, queue)
        self.token = 0

    def _sync(self) -> int:
        self.token += 1
        return self.token

    def handle(self, now, ev):
        if isinstance(ev, UnmapStart):
            base, log2 = atc_inv_span(ev.addr, 1 << ev.size)
            t = self._sync()
            q = self.queue_of(ev.cpu)
            self.pending[t] = (ev.unmap, ev.sids, q)
            cmds = [cmd_tlbi_nh_va(ev.asid, ev.addr)] + [cmd_atc_inv(s, base, log2) for s in ev.sids] + [cmd_sync(t)]
            return [Submit(q, tuple(cmds)), SetTimer(now + self.params.sync_timeout, t)]
        if isinstance(ev, SyncDone) and ev.token in self.pending:
            return [CompleteUnmap(self.pending.pop(ev.token)[0])]
        if isinstance(ev, TimerFired) and ev.token in self.pending:
            unmap, sids, q = self.pending.pop(ev.token)
            fence = [WriteSte(s, STRTAB_STE_0_CFG_ABORT, STRTAB_STE_1_EATS_ABT) for s in sids]
            cfgi = tuple(cmd_cfgi_ste(s) for s in sids) + (cmd_sync(self._sync()),)
            return fence + [Submit(q, cfgi), CompleteUnmap(unmap, -ETIMEDOUT)]  # the bug: not yet in effect
        if isinstance(ev, CmdqError):
            return [AckCmdqError(ev.queue)]
        return []
