"""The three drivers as they are in mainline Linux: no fencing anywhere.

- ``arm-smmu-v3``: TLBI + CMD_SYNC, then every ATS master's ATC_INV + CMD_SYNC. Each sync is
  polled for ARM_SMMU_POLL_TIMEOUT_US (1 s); on expiry it logs "CMD_SYNC timeout" and returns
  -ETIMEDOUT, which the unmap path ignores: the page is freed. On CERROR_ATC_INV_SYNC the GERROR
  handler leaves CONS at the CMD_SYNC and lets it re-run ("we might well end up back here").
- ``amd-iommu``: INVALIDATE_IOMMU_PAGES, INVALIDATE_IOTLB_PAGES per ATS device, COMPLETION_WAIT;
  wait_on_sem gives up after LOOP_TIMEOUT x 1 us = 100 ms with "Completion-Wait loop timed out"
  and -EIO, ignored by the flush path. ATS stays on.
- ``intel-vtd``: qi_submit_sync appends a wait descriptor and spins with interrupts off, with no
  software timeout. On an Invalidation Time-out Error every pending wait descriptor is aborted and
  every submitter retries, forever, unless the ITE's source device is no longer present (then the
  submitter that met the ITE returns -ETIMEDOUT).
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from ..commands import Cmd, cmd_sync
from ..policy import (
    AckCmdqError,
    CmdqError,
    CompleteUnmap,
    Note,
    Policy,
    PolicyParams,
    PresenceReply,
    QueryPresence,
    ResetDone,
    SetTimer,
    Submit,
    SyncDone,
    TimerFired,
    UnmapStart,
    EventRecord,
    register,
)
from ..spec import CERROR_TEXT, EIO, ETIMEDOUT
from ..units import Duration
from .drivers import AMD_IOMMU, ARM_SMMU_V3, INTEL_VTD, DriverHooks


class _Flush:
    """One CPU inside iotlb_sync: the waited-on submissions still to go."""

    __slots__ = ("cpu", "unmap", "steps", "i", "token", "err", "queue")

    def __init__(self, cpu: int, unmap: int, steps: list[list[Cmd]], queue: int):
        self.cpu = cpu
        self.unmap = unmap
        self.steps = steps
        self.i = 0
        self.token = -1
        self.err = 0
        self.queue = queue


class MainlinePolicy(Policy):
    """Submit each step, wait for its CMD_SYNC (with the driver's timeout, if any), go on."""

    hooks: ClassVar[DriverHooks]
    timeout_err: ClassVar[int] = 0
    timeout_text: ClassVar[str] = ""

    def __init__(self, params, hw):
        super().__init__(params, hw)
        self.irqs_off_wait = self.hooks.irqs_off_wait
        self.hw_reports_ite_sid = self.hooks.hw_reports_ite_sid
        self._next_token = 0
        self.flushes: dict[int, _Flush] = {}  # cpu -> its flush
        self.by_token: dict[int, _Flush] = {}

    def sync_timeout(self) -> float | None:
        return self.hooks.sync_timeout

    def new_token(self) -> int:
        self._next_token += 1
        return self._next_token

    def handle(self, now, ev):
        t = type(ev)
        if t is SyncDone:
            f = self.by_token.pop(ev.token, None)
            if f is not None and f.token == ev.token:
                return self._step_done(now, f, 0)
            return []
        if t is UnmapStart:
            steps = self.hooks.flush_steps(ev.asid, ev.addr, ev.size, ev.sids, self.new_token)
            f = _Flush(ev.cpu, ev.unmap, steps, self.queue_of(ev.cpu))
            self.flushes[ev.cpu] = f
            return self._submit(now, f)
        if t is TimerFired:
            f = self.by_token.get(ev.token)
            if f is None or f.token != ev.token:
                return []
            del self.by_token[ev.token]
            return [Note("sync_timeout", text=self.timeout_text)] + self._step_done(now, f, -self.timeout_err)
        if t is CmdqError:
            return self.on_cmdq_error(now, ev)
        if t is PresenceReply:
            return self.on_presence(now, ev)
        if t in (ResetDone, EventRecord):
            return []
        return super().handle(now, ev)

    def _submit(self, now: float, f: _Flush, cmds: list[Cmd] | None = None) -> list:
        if cmds is None:
            if f.i >= len(f.steps):
                return self._finish(f)
            cmds = f.steps[f.i]
        f.token = cmds[-1].token
        self.by_token[f.token] = f
        actions: list = [Submit(f.queue, tuple(cmds))]
        timeout = self.sync_timeout()
        if timeout is not None:
            actions.append(SetTimer(now + timeout, f.token))
        return actions

    def _step_done(self, now: float, f: _Flush, err: int) -> list:
        if err and not f.err:
            f.err = err
        f.i += 1
        return self._submit(now, f)

    def _finish(self, f: _Flush) -> list:
        del self.flushes[f.cpu]
        return [CompleteUnmap(f.unmap, f.err)]

    def on_cmdq_error(self, now: float, ev: CmdqError) -> list:
        return [Note("log", text=f"CMDQ error (cons token {ev.token}): {CERROR_TEXT.get(ev.cerror, ev.cerror)}"),
                AckCmdqError(ev.queue)]

    def on_presence(self, now: float, ev: PresenceReply) -> list:
        return []


class ArmSmmuV3Params(PolicyParams):
    sync_timeout: Duration = Field(1.0, gt=0, description="ARM_SMMU_POLL_TIMEOUT_US")


@register
class ArmSmmuV3(MainlinePolicy):
    name = "arm-smmu-v3"
    summary = ("mainline arm-smmu-v3: 1 s CMD_SYNC poll timeout, -ETIMEDOUT ignored (page freed), "
               "CERROR_ATC_INV_SYNC re-runs the CMD_SYNC; no fencing")
    Params = ArmSmmuV3Params
    hooks = ARM_SMMU_V3
    timeout_err = ETIMEDOUT
    timeout_text = "CMD_SYNC timeout"

    def sync_timeout(self):
        return self.params.sync_timeout


class AmdIommuParams(PolicyParams):
    loop_timeout: Duration = Field(0.1, gt=0, description="LOOP_TIMEOUT x udelay(1) in wait_on_sem")


@register
class AmdIommu(MainlinePolicy):
    name = "amd-iommu"
    summary = ("mainline AMD IOMMU: COMPLETION_WAIT polled 100 ms with interrupts off, "
               "'Completion-Wait loop timed out' and -EIO ignored (page freed); ATS stays on")
    Params = AmdIommuParams
    hooks = AMD_IOMMU
    timeout_err = EIO
    timeout_text = "Completion-Wait loop timed out"

    def sync_timeout(self):
        return self.params.loop_timeout

    def on_cmdq_error(self, now, ev):
        dev = f" device={ev.ite_sid}" if ev.ite_sid >= 0 else ""
        return [Note("log", sid=ev.ite_sid, text=f"Event logged [IOTLB_INV_TIMEOUT{dev}]"),
                AckCmdqError(ev.queue)]


class IntelVtdParams(PolicyParams):
    pass


@register
class IntelVtd(MainlinePolicy):
    name = "intel-vtd"
    summary = ("mainline VT-d: qi_submit_sync spins with interrupts off and no timeout; an ITE aborts "
               "every pending wait and all submitters retry, unless the ITE's device is gone")
    Params = IntelVtdParams
    hooks = INTEL_VTD

    def __init__(self, params, hw):
        super().__init__(params, hw)
        self._ite_handler: dict[int, _Flush] = {}  # ite sid -> the submitter that met the ITE

    def on_cmdq_error(self, now, ev):
        # qi_check_fault(): clear ITE, mark every pending wait descriptor QI_ABORT.
        actions: list = [Note("log", sid=ev.ite_sid, text="Invalidation Time-out Error (ITE) cleared"),
                         AckCmdqError(ev.queue)]
        aborted = [f for f in self.flushes.values() if f.queue == ev.queue and f.token in self.by_token]
        # whichever submitter's qi_check_fault() sees the ITE first handles it: the one whose wait is
        # at the head if it is still waiting, else the first one spinning
        handler = next((f for f in aborted if f.token == ev.token), aborted[0] if aborted else None)
        for f in aborted:
            del self.by_token[f.token]
        for f in aborted:
            if f is handler and ev.ite_sid >= 0:
                # the submitter that met the ITE checks whether the device is still there
                self._ite_handler[ev.ite_sid] = f
                actions.append(QueryPresence(ev.ite_sid))
            else:
                actions += self._retry(now, f)
        return actions

    def _retry(self, now: float, f: _Flush) -> list:
        cmds = f.steps[f.i]
        cmds = cmds[:-1] + [cmd_sync(self.new_token())]
        f.steps[f.i] = cmds
        return [Note("retry", text="qi_submit_sync: wait descriptor aborted, retrying")] + self._submit(now, f)

    def on_presence(self, now, ev):
        f = self._ite_handler.pop(ev.sid, None)
        if f is None or self.flushes.get(f.cpu) is not f:
            return []
        if not ev.present:
            return [Note("log", sid=ev.sid, text="ITE on a device no longer present: -ETIMEDOUT")] + \
                self._step_done(now, f, -ETIMEDOUT)
        return self._retry(now, f)
