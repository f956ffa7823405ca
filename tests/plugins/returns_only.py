"""Test-only plug-in: gives an unmap up after its own 100 ms software timeout and says so only by
what the flush returns (``CompleteUnmap(err=-ETIMEDOUT)``): no ``Note``, no ``SyncReturned``. The
host must still count its software timeouts (tests/test_plugins.py)."""

from ats_stress.iommu_actor.commands import atc_inv_span, cmd_atc_inv, cmd_sync
from ats_stress.iommu_actor.policy import (
    AckCmdqError,
    CmdqError,
    CompleteUnmap,
    Policy,
    SetTimer,
    Submit,
    SyncDone,
    TimerFired,
    UnmapStart,
)
from ats_stress.iommu_actor.spec import ETIMEDOUT


class ReturnsOnly(Policy):
    name = "test-returns-only"
    summary = "test only: a 100 ms software timeout said only by CompleteUnmap(err=-ETIMEDOUT)"

    def __init__(self, params, hw):
        super().__init__(params, hw)
        self.waiting: dict[int, int] = {}  # CMD_SYNC token (also the timer's) -> unmap
        self.token = 0

    def poll_timeout(self):
        return 0.1

    def handle(self, now, ev):
        if isinstance(ev, UnmapStart):
            self.token += 1
            base, log2 = atc_inv_span(ev.addr, 1 << ev.size)
            cmds = tuple(cmd_atc_inv(sid, base, log2) for sid in ev.sids) + (cmd_sync(self.token),)
            self.waiting[self.token] = ev.unmap
            return [Submit(self.queue_of(ev.cpu), cmds), SetTimer(now + 0.1, self.token)]
        if isinstance(ev, SyncDone) and ev.token in self.waiting:
            return [CompleteUnmap(self.waiting.pop(ev.token))]
        if isinstance(ev, TimerFired) and ev.token in self.waiting:
            return [CompleteUnmap(self.waiting.pop(ev.token), -ETIMEDOUT)]
        if isinstance(ev, CmdqError):
            return [AckCmdqError(ev.queue)]
        return []
