"""Drivers whose flush is straight-line code: each flush is a coroutine, as the kernel function is.

A driver's flush (``flush(ev)``) is a generator that reads like the C it mirrors: it yields
``Poll`` to submit commands ending in a CMD_SYNC (or wait descriptor) and spin until it completes,
and gets back ``POLL_DONE``, ``POLL_TIMEOUT`` (its software timeout expired) or ``POLL_ABORTED``
(VT-d: the wait was aborted by an ITE); it yields ``Probe`` for a config read
(pci_device_is_present) and gets back whether the device answered; it yields any other action
(a Note, a WriteSte, ...) to have it carried out at once. Its return value is what the flush
returns to the unmap path (which ignores it). One flush per CPU at a time: the CPU spins, with
interrupts off where the driver says so, from the first command to the return.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generator

from ..commands import Cmd, cmd_sync
from ..policy import (
    AckCmdqError,
    CmdqError,
    CompleteUnmap,
    EventRecord,
    Note,
    Policy,
    PresenceReply,
    QueryPresence,
    ResetDone,
    SetTimer,
    Submit,
    SyncDone,
    TimerFired,
    UnmapStart,
)
from ..spec import CERROR_TEXT
from .drivers import DriverHooks

POLL_DONE = "done"
POLL_TIMEOUT = "timeout"
POLL_ABORTED = "aborted"


@dataclass(frozen=True, slots=True)
class Poll:
    """Write ``cmds`` (ending in a CMD_SYNC) to ``queue`` and spin until it completes, for at most
    ``timeout`` seconds (None: for ever)."""

    queue: int
    cmds: tuple[Cmd, ...]
    timeout: float | None


@dataclass(frozen=True, slots=True)
class Probe:
    """A config read of the device behind ``sid`` (pci_device_is_present)."""

    sid: int


Flush = Generator[Any, Any, int]


class _Running:
    __slots__ = ("cpu", "unmap", "gen", "queue", "token", "probe")

    def __init__(self, cpu: int, unmap: int, gen: Flush, queue: int):
        self.cpu = cpu
        self.unmap = unmap
        self.gen = gen
        self.queue = queue
        self.token = -1
        self.probe = -1


class FlushDriver(Policy):
    """Runs each CPU's flush coroutine; subclasses write ``flush`` and their GERROR handling."""

    hooks: DriverHooks

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

    # --- the runner ---------------------------------------------------------------------------------

    def handle(self, now, ev):
        self.now = now
        t = type(ev)
        if t is SyncDone:
            f = self.polling.pop(ev.token, None)
            return self._resume(f, POLL_DONE) if f is not None else []
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
                f.queue = item.queue
                f.token = item.cmds[-1].token
                self.polling[f.token] = f
                actions += [Submit(item.queue, w) for w in self.hooks.writes(list(item.cmds))]
                if item.timeout is not None:
                    actions.append(SetTimer(self.now + item.timeout, f.token))
                return actions
            if type(item) is Probe:
                f.probe = item.sid
                actions.append(QueryPresence(item.sid))
                return actions
            actions.append(item)
            value = None

    def abort_waits(self, queue: int) -> list[_Running]:
        """Every flush spinning on a CMD_SYNC of ``queue`` stops waiting for it (VT-d QI_ABORT)."""
        aborted = sorted((f for f in self.polling.values() if f.queue == queue), key=lambda f: f.cpu)
        for f in aborted:
            del self.polling[f.token]
        return aborted
