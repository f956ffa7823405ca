"""Test-only plug-ins with planted bugs, for explore's tests and its boundary-sampling bench
(bench/explore_boundary.py). Each is safe but for one bug, and each bug needs a different schedule:

- ``test-skip-last-master``: the ATC batch leaves out the domain's last ATS master (an off-by-one
  in the loop over the invalidation array). It leaks on a healthy machine: explore must shrink it to
  no fault at all (``chaos: []``).
- ``test-grace-race``: on a CMD_SYNC timeout (``sync_timeout``) it quarantines the batch's masters:
  fences them (STE abort, on a command queue of its own, so the fence lands at once), completes the
  unmap, and marks their entries of the invalidation array broken: no more ATC_INVs to them (a
  quarantined device's translated requests are blocked, and its ATC goes with its reset). Safe so
  far. The bug: if the timed-out CMD_SYNC completes after all within ``grace`` of the timeout, it
  calls the timeout a false alarm and restores the STE, but leaves the entries broken: the device
  translates again, and its ATC is never invalidated. A race: only a completion within a few ms
  *after* the software timeout triggers it.
- ``test-cerror-race``: the same quarantine and the same false alarm, started by the hardware's
  CERROR_ATC_INV_SYNC (the invalidation timed out after ``hardware.atc_inv_completion_timeout``)
  instead of a software timeout, and lifted when another CMD_SYNC behind an ATC_INV to the device
  completes normally within ``grace`` of that CERROR: a device that answers just after the
  hardware gave up on it.
- ``test-lost-wakeup``: waits for every CMD_SYNC, but drops the waiter of one that met
  CERROR_ATC_INV_SYNC: that flush never returns, and its CPU's later unmaps queue behind it for
  ever (a liveness bug: ``progress``).

The two races keep, with two command queues or more, the last one for their fence and unfence
commands (as fence-on-timeout's recovery queue does): CPU c submits to queue c mod (n - 1). The
others submit as the classic layout has it (CPU c to queue c mod n).
"""

from typing import Optional

from pydantic import Field

from ats_stress.iommu_actor.commands import atc_inv_span, cmd_atc_inv, cmd_cfgi_ste, cmd_sync, cmd_tlbi_nh_va
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
    WriteSte,
)
from ats_stress.iommu_actor.spec import (
    CMDQ_ERR_CERROR_ATC_INV_IDX,
    ETIMEDOUT,
    STRTAB_STE_0_CFG_ABORT,
    STRTAB_STE_0_CFG_S1_TRANS,
    STRTAB_STE_1_EATS_ABT,
    STRTAB_STE_1_EATS_TRANS,
)
from ats_stress.iommu_actor.units import Duration


class SkipLastParams(PolicyParams):
    """No parameters."""


class SkipLastMaster(Policy):
    name = "test-skip-last-master"
    summary = "test only: TLBI + ATC_INVs + CMD_SYNC per unmap, waited for; the ATC batch misses the last master"
    Params = SkipLastParams

    def __init__(self, params, hw):
        super().__init__(params, hw)
        self.waiting: dict[int, int] = {}
        self.token = 0

    def handle(self, now, ev):
        if isinstance(ev, UnmapStart):
            self.token += 1
            base, log2 = atc_inv_span(ev.addr, 1 << ev.size)
            sids = sorted(ev.sids)
            masters = sids[:-1] if len(sids) > 1 else sids  # the bug: range(n - 1) for n > 1
            cmds = [cmd_tlbi_nh_va(ev.asid, ev.addr)] + [cmd_atc_inv(s, base, log2) for s in masters]
            self.waiting[self.token] = ev.unmap
            return [Submit(self.queue_of(ev.cpu), tuple(cmds) + (cmd_sync(self.token),))]
        if isinstance(ev, SyncDone) and ev.token in self.waiting:
            return [CompleteUnmap(self.waiting.pop(ev.token))]
        if isinstance(ev, CmdqError):
            return [AckCmdqError(ev.queue)]
        return []


class GraceParams(PolicyParams):
    sync_timeout: Optional[Duration] = Field(1.0, gt=0, description="software CMD_SYNC timeout (null: none)")
    grace: Duration = Field(0.002, gt=0, description="a completion this soon after the timeout is a false alarm")


class _Quarantine(Policy):
    """The quarantine both races share; ``_suspect`` starts it, ``_false_alarm`` lifts it."""

    Params = GraceParams

    def __init__(self, params, hw):
        super().__init__(params, hw)
        n = hw.command_queues
        self.fence_q = n - 1 if n >= 2 else 0
        self.cpu_queues = n - 1 if n >= 2 else 1
        self.token = 0
        self.batches: dict[int, tuple[int, tuple[int, ...]]] = {}  # CMD_SYNC token -> (unmap, sids in its batch)
        self.done: set[int] = set()  # unmaps already completed (or waiting for their fence)
        self.fence_waiters: dict[int, list[int]] = {}  # fence CMD_SYNC token -> unmaps completed after it
        self.quarantined: dict[int, float] = {}  # sid -> when it was quarantined
        self.cerror: set[int] = set()  # tokens whose CMD_SYNC raised CERROR_ATC_INV_SYNC
        self.timed_out: dict[int, float] = {}  # token -> when its software timeout fired
        self.lifted: set[int] = set()  # quarantines lifted as a false alarm (STE restored)

    def queue_of(self, cpu: int) -> int:
        return cpu % self.cpu_queues

    def _next(self) -> int:
        self.token += 1
        return self.token

    def handle(self, now, ev):
        if isinstance(ev, UnmapStart):
            return self._unmap(now, ev)
        if isinstance(ev, SyncDone):
            return self._sync_done(now, ev.token)
        if isinstance(ev, TimerFired):
            return self._timeout(now, ev.token)
        if isinstance(ev, CmdqError):
            return self._cmdq_error(now, ev)
        return []

    def _unmap(self, now, ev):
        base, log2 = atc_inv_span(ev.addr, 1 << ev.size)
        sids = tuple(s for s in sorted(ev.sids) if s not in self.quarantined)  # no ATC_INV to a quarantined one
        t = self._next()
        self.batches[t] = (ev.unmap, sids)
        cmds = (cmd_tlbi_nh_va(ev.asid, ev.addr),) + tuple(cmd_atc_inv(s, base, log2) for s in sids) + (cmd_sync(t),)
        out = [Submit(self.queue_of(ev.cpu), cmds)]
        if self.params.sync_timeout is not None:
            out.append(SetTimer(now + self.params.sync_timeout, t))
        return out

    def _fence(self, sids, config: int, eats: int, waiters: list[int]) -> list:
        f = self._next()
        self.fence_waiters[f] = waiters
        cmds = tuple(cmd_cfgi_ste(s) for s in sids) + (cmd_sync(f),)
        return [WriteSte(s, config, eats) for s in sids] + [Submit(self.fence_q, cmds)]

    def _quarantine(self, now, t: int, text: str) -> list:
        """Fence the masters of batch ``t``; its unmap completes once the fence is in effect."""
        unmap, sids = self.batches[t]
        suspects = [s for s in sids if s not in self.quarantined]
        for s in suspects:
            self.quarantined[s] = now
        self.done.add(unmap)
        return [Note("sync_timeout", text=text)] + self._fence(suspects, STRTAB_STE_0_CFG_ABORT,
                                                              STRTAB_STE_1_EATS_ABT, [unmap])

    def _sync_done(self, now, token: int) -> list:
        out = [CompleteUnmap(u, -ETIMEDOUT) for u in self.fence_waiters.pop(token, [])]
        if token not in self.batches:
            return out
        unmap, sids = self.batches.pop(token)
        if unmap not in self.done:
            out.append(CompleteUnmap(unmap))
        lifted = self._false_alarm(now, token, sids)
        self.cerror.discard(token)
        if lifted:  # the bug: the STE is restored, but the devices stay out of the invalidations
            for s in lifted:
                self.lifted.add(s)
            out += self._fence(lifted, STRTAB_STE_0_CFG_S1_TRANS, STRTAB_STE_1_EATS_TRANS, [])
        return out

    def _timeout(self, now, token) -> list:
        return []

    def _cmdq_error(self, now, ev) -> list:
        return [AckCmdqError(ev.queue)]

    def _false_alarm(self, now, token: int, sids) -> list[int]:
        return []


class GraceRace(_Quarantine):
    name = "test-grace-race"
    summary = ("test only: quarantine on a CMD_SYNC timeout; a completion within `grace` after it lifts the "
               "quarantine without the skipped invalidations (a planted race)")

    def _timeout(self, now, token) -> list:
        if token not in self.batches or self.batches[token][0] in self.done:
            return []
        self.timed_out[token] = now
        return self._quarantine(now, token, "CMD_SYNC timeout: quarantine")

    def _false_alarm(self, now, token, sids) -> list[int]:
        since = self.timed_out.pop(token, None)
        if since is None or now - since > self.params.grace:
            return []
        return [s for s in sids if s in self.quarantined and s not in self.lifted]


class CerrorRaceParams(GraceParams):
    sync_timeout: Optional[Duration] = Field(None, gt=0, description="software CMD_SYNC timeout (null: none)")
    grace: Duration = Field(0.002, gt=0, description="an answer this soon after the hardware gave up is a false alarm")


class CerrorRace(_Quarantine):
    name = "test-cerror-race"
    summary = ("test only: quarantine on CERROR_ATC_INV_SYNC; a normal completion of an ATC_INV to the device "
               "within `grace` after it lifts the quarantine without the skipped invalidations (a planted race)")
    Params = CerrorRaceParams

    def _cmdq_error(self, now, ev) -> list:
        out: list = [AckCmdqError(ev.queue)]  # the CMD_SYNC re-runs and completes: the unmap waits for the fence
        if ev.cerror == CMDQ_ERR_CERROR_ATC_INV_IDX and ev.token in self.batches:
            self.cerror.add(ev.token)
            out = self._quarantine(now, ev.token, "CERROR_ATC_INV_SYNC: quarantine") + out
        return out

    def _false_alarm(self, now, token, sids) -> list[int]:
        if token in self.cerror:
            return []  # the hardware gave this one up: no answer from the device
        return [s for s in sids if s in self.quarantined and s not in self.lifted
                and now - self.quarantined[s] <= self.params.grace]


class LostWakeup(SkipLastMaster):
    name = "test-lost-wakeup"
    summary = ("test only: every master invalidated and waited for, but the flush whose CMD_SYNC met "
               "CERROR_ATC_INV_SYNC is forgotten: it never returns (a liveness bug)")

    def handle(self, now, ev):
        if isinstance(ev, UnmapStart):
            self.token += 1
            base, log2 = atc_inv_span(ev.addr, 1 << ev.size)
            cmds = [cmd_tlbi_nh_va(ev.asid, ev.addr)] + [cmd_atc_inv(s, base, log2) for s in sorted(ev.sids)]
            self.waiting[self.token] = ev.unmap
            return [Submit(self.queue_of(ev.cpu), tuple(cmds) + (cmd_sync(self.token),))]
        if isinstance(ev, CmdqError):
            self.waiting.pop(ev.token, None)  # the bug: the waiter goes with the error
            return [AckCmdqError(ev.queue)]
        return super().handle(now, ev)
