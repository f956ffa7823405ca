"""An example plug-in policy: every unmap waits for its CMD_SYNC however long it takes ("patient-smmu").

    ats-stress run configs/scenarios/single-hang.yaml --policy-file examples/policies/patient.py --policy patient-smmu

Events in, actions out: on ``UnmapStart`` it submits TLBI + one ATC_INV per ATS master of the domain +
CMD_SYNC to the CPU's queue; on that CMD_SYNC's ``SyncDone`` it completes the unmap (the page is
freed only then); on CERROR_ATC_INV_SYNC (``CmdqError``) it acknowledges GERROR so the CMD_SYNC
re-runs. No software timeout and no fence: no UAF exposure, but an unmap behind a hung device
stalls until the device answers or the hardware gives up.
"""

from ats_stress.iommu_actor.commands import atc_inv_span, cmd_atc_inv, cmd_sync, cmd_tlbi_nh_va
from ats_stress.iommu_actor.policy import (
    AckCmdqError,
    CmdqError,
    CompleteUnmap,
    Policy,
    PolicyParams,
    Submit,
    SyncDone,
    UnmapStart,
)


class PatientParams(PolicyParams):
    """No parameters (unknown keys under policy: are still errors)."""


class PatientSmmu(Policy):
    name = "patient-smmu"
    summary = "example plug-in: TLBI + ATC_INVs + one CMD_SYNC per unmap, waited for with no software timeout"
    Params = PatientParams

    def __init__(self, params, hw):
        super().__init__(params, hw)
        self.waiting: dict[int, int] = {}  # CMD_SYNC token -> the unmap it completes
        self.next_token = 0

    def handle(self, now, event):
        if isinstance(event, UnmapStart):
            self.next_token += 1
            base, log2 = atc_inv_span(event.addr, 1 << event.size)
            cmds = ([cmd_tlbi_nh_va(event.asid, event.addr)]
                    + [cmd_atc_inv(sid, base, log2) for sid in event.sids]
                    + [cmd_sync(self.next_token)])
            self.waiting[self.next_token] = event.unmap
            return [Submit(self.queue_of(event.cpu), tuple(cmds))]
        if isinstance(event, SyncDone) and event.token in self.waiting:
            return [CompleteUnmap(self.waiting.pop(event.token))]
        if isinstance(event, CmdqError):
            return [AckCmdqError(event.queue)]
        return []  # timers, event records, resets, presence: nothing to do
