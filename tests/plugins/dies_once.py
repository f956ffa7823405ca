"""Test-only plug-in: the first run that builds this policy kills its own worker process (SIGKILL),
as a lost node would; every later run is the example's patient policy. ``marker`` is a path the
first run creates (O_EXCL), so exactly one run dies, whichever process gets it; with ``always``
every run dies."""

import os
import signal

from ats_stress.iommu_actor.commands import atc_inv_span, cmd_atc_inv, cmd_sync
from ats_stress.iommu_actor.policy import CompleteUnmap, Policy, PolicyParams, Submit, SyncDone, UnmapStart


class DiesOnceParams(PolicyParams):
    marker: str
    always: bool = False


class DiesOnce(Policy):
    name = "test-dies-once"
    summary = "test only: the first run's worker process dies"
    Params = DiesOnceParams

    def __init__(self, params, hw):
        super().__init__(params, hw)
        try:
            os.close(os.open(params.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            if params.always:
                os.kill(os.getpid(), signal.SIGKILL)
        else:
            os.kill(os.getpid(), signal.SIGKILL)
        self.waiting: dict[int, int] = {}
        self.token = 0

    def handle(self, now, ev):
        if isinstance(ev, UnmapStart):
            self.token += 1
            token = self.token
            base, log2 = atc_inv_span(ev.addr, 1 << ev.size)
            self.waiting[token] = ev.unmap
            cmds = tuple(cmd_atc_inv(s, base, log2) for s in ev.sids) + (cmd_sync(token),)
            return [Submit(self.queue_of(ev.cpu), cmds)]
        if isinstance(ev, SyncDone) and ev.token in self.waiting:
            return [CompleteUnmap(self.waiting.pop(ev.token))]
        return []
