"""Drivers whose flush is straight-line code: each flush is a coroutine, as the kernel function is.

A driver's flush (``flush(ev)``) is a generator that reads like the C it mirrors: it yields
``Poll`` to submit commands ending in a CMD_SYNC (or wait descriptor) and spin until it completes,
and gets back ``POLL_DONE``, ``POLL_TIMEOUT`` (its software timeout expired) or ``POLL_ABORTED``
(VT-d: the wait was aborted by an ITE); it yields ``Room`` to wait until its command queue has
room (``ROOM`` or ``POLL_TIMEOUT`` back); it yields ``Probe`` for a config read
(pci_device_is_present) and gets back whether the device answered; it yields any other action
(a Note, a WriteSte, a LocalIrqSave, ...) to have it carried out at once. Its return value is what
the flush returns to the unmap path (which ignores it). One flush per CPU at a time; the CPU's
interrupts are off where the driver turns them off (LocalIrqSave / LocalIrqRestore: per
arm_smmu_cmdq_issue_cmdlist() call on arm, per qi_submit_sync() attempt on VT-d, the whole
iotlb_sync under dom->lock on AMD).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generator

from ..commands import Cmd, cmd_sync
from ..policy import (
    AckCmdqError,
    CmdqError,
    CmdqSpace,
    CompleteUnmap,
    EventRecord,
    LocalIrqRestore,
    LocalIrqSave,
    Note,
    Policy,
    PresenceReply,
    QueryPresence,
    ResetDone,
    SetTimer,
    Submit,
    SyncDone,
    SyncReturned,
    TimerFired,
    UnmapStart,
    WaitCmdqSpace,
)
from ..spec import CERROR_TEXT
from .drivers import DriverHooks

POLL_DONE = "done"
POLL_TIMEOUT = "timeout"
POLL_ABORTED = "aborted"
ROOM = "room"


@dataclass(frozen=True, slots=True)
class Poll:
    """Write ``cmds`` (ending in a CMD_SYNC) to ``queue`` and spin until it completes, for at most
    ``timeout`` seconds (None: for ever)."""

    queue: int
    cmds: tuple[Cmd, ...]
    timeout: float | None


@dataclass(frozen=True, slots=True)
class Room:
    """Wait until ``entries`` slots of ``queue`` are free, for at most ``timeout`` seconds (None:
    for ever): the driver's loop on CMDQ_CONS (or the AMD command buffer's head, VT-d's free_cnt)."""

    queue: int
    entries: int
    timeout: float | None


@dataclass(frozen=True, slots=True)
class Probe:
    """A config read of the device behind ``sid`` (pci_device_is_present)."""

    sid: int


Flush = Generator[Any, Any, int]


class _Running:
    __slots__ = ("cpu", "unmap", "gen", "queue", "token", "probe", "room", "polled_at")

    def __init__(self, cpu: int, unmap: int, gen: Flush, queue: int):
        self.cpu = cpu
        self.unmap = unmap
        self.gen = gen
        self.queue = queue
        self.token = -1
        self.probe = -1
        self.room = False  # waiting for room in its queue (``token``), not polling a CMD_SYNC
        self.polled_at = -1.0  # when its latest CMD_SYNC was written


class FlushDriver(Policy):
    """Runs each CPU's flush coroutine; subclasses write ``flush`` and their GERROR handling."""

    hooks: DriverHooks
    irqs_off_windows = "explicit"

    def __init__(self, params, hw):
        super().__init__(params, hw)
        self.queue_count = self.hooks.queues(hw.command_queues)
        self.irqs_off_wait = self.hooks.irqs_off_wait
        self.hw_reports_ite_sid = self.hooks.hw_reports_ite_sid
        self.fence_waits = self.hooks.fence_waits
        self.now = 0.0
        self._next_token = 0
        self.running: dict[int, _Running] = {}  # cpu -> its flush
        self.polling: dict[int, _Running] = {}  # CMD_SYNC token -> the flush spinning on it

    def queue_of(self, cpu: int) -> int:
        """One queue per CPU where the IOMMU has them (arm-smmu-v3 on ECMDQ/CMDQV), else queue 0."""
        return cpu % self.queue_count

    @classmethod
    def cmdq_entries(cls, params) -> int:
        return cls.hooks.cmdq_entries

    def poll_timeout(self) -> float | None:
        return self.hooks.sync_timeout

    # --- what subclasses write ------------------------------------------------------------------

    def flush(self, ev: UnmapStart) -> Flush:
        raise NotImplementedError  # every registered driver writes its own

    def gerror(self, ev: CmdqError) -> list:
        """GERROR.CMDQ_ERR: log it and let the queue restart at CONS (the CMD_SYNC re-runs)."""
        return [Note("log", text=f"CMDQ error (cons token {ev.token}): {CERROR_TEXT.get(ev.cerror, ev.cerror)}"),
                AckCmdqError(ev.queue)]

    def on_event(self, ev: EventRecord) -> list:
        return []

    def on_reset_done(self, ev: ResetDone) -> list:
        return []

    # --- helpers for flush coroutines -------------------------------------------------------------

    def sync(self) -> Cmd:
        """A CMD_SYNC with a token of its own (the queue index the driver polls on, in Linux)."""
        self._next_token += 1
        return cmd_sync(self._next_token)

    def poll(self, queue: int, cmds: list[Cmd], timeout: float | None) -> Generator[Any, Any, tuple[str, int]]:
        """Submit ``cmds`` plus a CMD_SYNC and spin on it: (poll result, the CMD_SYNC's token)."""
        sync = self.sync()
        result = yield Poll(queue, tuple(cmds) + (sync,), timeout)
        return result, sync.token

    def room(self, queue: int) -> int:
        """Free slots of ``queue`` as the driver reads them (CMDQ_CONS against its PROD)."""
        return self.regs.cmdq_space(queue) if self.regs is not None else 1 << 30

    def wait_for_room(self, cpu: int, queue: int, entries: int, timeout: float | None, log: str):
        """Wait until ``entries`` slots are free with interrupts on between polls: arm's
        arm_smmu_cmdq_issue_cmdlist() (local_irq_restore, arm_smmu_cmdq_poll_until_not_full() for
        ARM_SMMU_POLL_TIMEOUT_US, "CMDQ timeout" each time, local_irq_save, again) and VT-d's
        qi_submit_sync() (raw_spin_unlock_irqrestore, cpu_relax, raw_spin_lock_irqsave, again)."""
        if self.room(queue) >= entries:
            return
        yield Note("cmdq_full")
        while self.room(queue) < entries:
            yield LocalIrqRestore(cpu)
            got = yield Room(queue, entries, timeout)
            if got == POLL_TIMEOUT and log:
                yield Note("cmdq_timeout", text=log)
            yield LocalIrqSave(cpu)

    # --- the runner ---------------------------------------------------------------------------------

    def handle(self, now, ev):
        self.now = now
        t = type(ev)
        if t is SyncDone:
            f = self.polling.pop(ev.token, None)
            return self._resume(f, POLL_DONE) if f is not None else []
        if t is CmdqSpace:
            f = self.polling.pop(ev.token, None)
            return self._resume(f, ROOM) if f is not None else []
        if t is UnmapStart:
            f = _Running(ev.cpu, ev.unmap, self.flush(ev), self.queue_of(ev.cpu))
            self.running[ev.cpu] = f
            return self._resume(f, None)
        if t is TimerFired:
            f = self.polling.get(ev.token)
            if f is None:
                return []
            del self.polling[ev.token]
            return self._resume(f, POLL_TIMEOUT)
        if t is CmdqError:
            return self.gerror(ev)
        if t is PresenceReply:
            actions: list = []
            for f in [f for f in self.running.values() if f.probe == ev.sid]:
                f.probe = -1
                actions += self._resume(f, ev.present)
            return actions
        if t is EventRecord:
            return self.on_event(ev)
        if t is ResetDone:
            return self.on_reset_done(ev)
        return super().handle(now, ev)

    def _resume(self, f: _Running, value) -> list:
        actions: list = []
        while True:
            try:
                item = f.gen.send(value)
            except StopIteration as stop:
                del self.running[f.cpu]
                actions.append(CompleteUnmap(f.unmap, stop.value or 0))
                return actions
            if type(item) is Poll:
                f.room = False
                f.queue = item.queue
                f.token = item.cmds[-1].token
                f.polled_at = self.now
                self.polling[f.token] = f
                actions += [Submit(item.queue, w) for w in self.hooks.writes(list(item.cmds))]
                if item.timeout is not None:
                    actions.append(SetTimer(self.now + item.timeout, f.token))
                return actions
            if type(item) is Room:
                self._next_token += 1
                f.room = True
                f.queue = item.queue
                f.token = self._next_token
                self.polling[f.token] = f
                until = self.now + item.timeout if item.timeout is not None else float("inf")
                actions.append(WaitCmdqSpace(item.queue, item.entries, f.token, until))
                if item.timeout is not None:
                    actions.append(SetTimer(until, f.token))
                return actions
            if type(item) is Probe:
                f.probe = item.sid
                actions.append(QueryPresence(item.sid))
                return actions
            if type(item) is SyncReturned and item.cpu < 0:  # whose flush, and since when: for the UAF story
                item = SyncReturned(item.code, f.cpu, f.polled_at)
            actions.append(item)
            value = None

    def abort_waits(self, queue: int) -> list[_Running]:
        """Every flush spinning on a CMD_SYNC of ``queue`` stops waiting for it (VT-d QI_ABORT)."""
        aborted = sorted((f for f in self.polling.values() if f.queue == queue and not f.room), key=lambda f: f.cpu)
        for f in aborted:
            del self.polling[f.token]
        return aborted
