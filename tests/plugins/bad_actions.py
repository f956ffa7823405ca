"""Test-only plug-in: at the first unmap it returns one bad action, chosen by ``mistake``, so that
the host's one-paragraph diagnosis of each can be checked (tests/test_plugins.py)."""

from ats_stress.iommu_actor.commands import cmd_sync
from ats_stress.iommu_actor.policy import (
    CompleteUnmap,
    DisableAts,
    LocalIrqRestore,
    LocalIrqSave,
    Policy,
    PolicyParams,
    QueryPresence,
    ResetDevice,
    SetTimer,
    Submit,
    UnmapStart,
    WaitCmdqSpace,
    WriteSte,
)


class BadParams(PolicyParams):
    mistake: str = "queue"


class BadActions(Policy):
    name = "test-bad-actions"
    summary = "test only: returns one bad action at the first unmap"
    Params = BadParams

    def handle(self, now, ev):
        if not isinstance(ev, UnmapStart):
            return []
        m = self.params.mistake
        return {
            "queue": [Submit(99, (cmd_sync(1),))],
            "queue-negative": [Submit(-1, (cmd_sync(1),))],  # not the last queue, as Python would index
            "cmds": [Submit(0, ("not a command",))],
            "unknown-unmap": [CompleteUnmap(12345)],
            "twice": [CompleteUnmap(ev.unmap), CompleteUnmap(ev.unmap)],
            "ste": [WriteSte(999, 0, 0)],
            "reset": [ResetDevice(999)],
            "disable-ats": [DisableAts(999)],
            "presence": [QueryPresence(999)],
            "timer-past": [SetTimer(now - 1.0, "t")],
            "timer-nan": [SetTimer(float("nan"), "t")],
            "timer-str": [SetTimer("soon", "t")],
            "irq-save": [LocalIrqSave(64)],
            "irq-restore": [LocalIrqRestore(-7)],
            "irq-save-negative": [LocalIrqSave(-1)],
            "space-queue": [WaitCmdqSpace(5, 1, "t")],
            "space-entries": [WaitCmdqSpace(0, 100000, "t")],
        }[m]
