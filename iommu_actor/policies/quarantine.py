"""Fence the stream, then carry on: the quarantine series and its generic IOMMU-core version.

The rule: a flush is reported complete only when every invalidation it depends on has completed,
or the device behind it is fenced (its STE switched to abort, CFGI_STE + CMD_SYNC completed).
Never on a bare timeout.

How a culprit is found, without ground truth:
- Each submission that ends in a CMD_SYNC is a *probe* of the streams whose ATC_INVs it carries.
- When a probe's software timeout expires, the driver reads CMDQ_CONS. If CONS points into the
  probe (its CMD_SYNC waits on its own ATC_INVs), its streams are suspects; if CONS is elsewhere
  the probe is only stuck behind someone else's sync, and it is moved to a queue that is not
  wedged (or keeps waiting when there is none). A probe that reached CONS only when a CMD_SYNC
  ahead of it completed (the driver sees that completion) gets a whole timeout from then: else a
  device whose answer is in flight the moment CONS reaches it would be named a culprit (the live
  runtime fenced a healthy device that way). A CERROR_ATC_INV_SYNC at a probe's CMD_SYNC makes
  its streams suspects too (the error is recorded per CMD_SYNC token, so the sync's re-run
  completion is not taken for success).
- ``culprit_search: bisect`` splits a suspect set in halves, each re-issued with its own CMD_SYNC
  (an ATC_INV of the whole ATC, so one search answers for every unmap waiting on those streams,
  and concurrent failures on the same domain share it); ``per-device-batches`` never puts two
  devices' ATC_INVs behind one CMD_SYNC, so a suspect set has one stream from the start. Hardware that names the timed-out device (VT-d ITESID, AMD
  IOTLB_INV_TIMEOUT) lets the IOMMU-core version skip the search.
- A single suspect is the culprit: fence it. With one command queue the fence waits behind the
  wedged CMD_SYNC until the hardware timeout has been handled; with several it goes through a
  queue that is not wedged.
- Recovery: after ``reset_delay`` ask for an FLR; on a successful reset (whoever started it)
  restore the STE (CFGI_STE + CMD_SYNC) and the stream is back; a failed reset keeps it fenced.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from ..commands import Cmd, cmd_atc_inv, cmd_cfgi_ste, cmd_sync
from ..policy import (
    AckCmdqError,
    CmdqError,
    CompleteUnmap,
    EventRecord,
    Note,
    Policy,
    PolicyParams,
    PresenceReply,
    ResetDevice,
    ResetDone,
    ScrubQueuedAtcInv,
    SetTimer,
    SpinEnd,
    Submit,
    SyncDone,
    TimerFired,
    UnmapStart,
    WriteSte,
    register,
)
from ..spec import (
    ATC_INV_SIZE_ALL,
    CERROR_TEXT,
    STRTAB_STE_0_CFG_ABORT,
    STRTAB_STE_0_CFG_S1_TRANS,
    STRTAB_STE_1_EATS_ABT,
    STRTAB_STE_1_EATS_TRANS,
)
from ..units import Duration
from .drivers import ARM_SMMU_V3, DRIVERS, DriverHooks

# stream states, as the driver keeps them
NORMAL, FENCING, FENCED, UNFENCING, DEAD = range(5)
STATE_NAMES = ("normal", "fencing", "fenced", "unfencing", "dead")

#: software timeout the IOMMU-core version adds to VT-d, which has none of its own
VTD_ADDED_SYNC_TIMEOUT = 1.0


class _Job:
    __slots__ = ("cpu", "unmap", "asid", "addr", "size", "unconfirmed", "tlbi_pending", "spinning", "seq",
                 "probes", "timer_at")

    def __init__(self, ev: UnmapStart, seq: int):
        self.seq = seq  # submission counter when the PTE was already gone
        self.probes: set[int] = set()  # tokens of this unmap's own probes still waiting
        self.timer_at = -1.0  # one software timer per unmap covers all its probes
        self.cpu = ev.cpu
        self.unmap = ev.unmap
        self.asid = ev.asid
        self.addr = ev.addr
        self.size = ev.size
        self.unconfirmed: set[int] = set()
        self.tlbi_pending = True
        self.spinning = True


class _Probe:
    __slots__ = ("token", "queue", "kind", "job", "cpu", "sids", "tlbi", "cmds", "suspected", "seq", "timed_out",
                 "armed", "deadline")

    def __init__(self, kind: str, job: int, cpu: int, sids: tuple[int, ...], tlbi: bool):
        self.token = -1
        self.queue = -1
        self.kind = kind  # "inv" (an unmap's), "search" (whole-ATC, shared), "fence" or "unfence"
        self.seq = -1
        self.job = job
        self.cpu = cpu
        self.sids = sids
        self.tlbi = tlbi
        self.cmds: tuple[Cmd, ...] = ()
        self.suspected = False
        self.timed_out = False
        self.armed = 0.0  # when its software timeout (last) started
        self.deadline = 0.0


class QuarantineParams(PolicyParams):
    sync_timeout: Duration = Field(1.0, gt=0, description="software CMD_SYNC timeout that starts a culprit search")
    culprit_search: Literal["bisect", "per-device-batches"] = "bisect"
    recover: bool = Field(True, description="reset fenced devices and unfence them after a successful reset")
    reset_delay: Duration = Field(0.1, description="from fence in effect to the FLR request")
    reset_waits_for_queues: bool = Field(True, description=(
        "hold the FLR while a CMD_SYNC still waits on an ATC_INV to the device: the reset would drop "
        "that invalidation and its queue would stay wedged until the hardware timeout"))
    scrub_halted_queue: bool = Field(True, description=(
        "while CERROR_ATC_INV_SYNC halts a queue, rewrite queued ATC_INVs for streams being fenced or "
        "searched into CMD_SYNCs, so each does not cost another hardware timeout"))
    recovery_queue: bool = Field(True, description=(
        "with several command queues, keep the last one for fence and unfence commands only, so a "
        "fence never waits behind a wedged CMD_SYNC"))


class IommuCoreParams(QuarantineParams):
    driver: Literal["arm-smmu-v3", "amd-iommu", "intel-vtd"] = "arm-smmu-v3"
    sync_timeout: Optional[Duration] = Field(  # type: ignore[assignment]
        None, gt=0, description="default: the driver's own (arm 1 s, AMD 100 ms, VT-d 1 s added)")


class QuarantineCore(Policy):
    """The fence-then-continue state machine, driven through a driver's hooks."""

    hooks: DriverHooks = ARM_SMMU_V3
    Params = QuarantineParams

    def __init__(self, params, hw, hooks: DriverHooks | None = None):
        super().__init__(params, hw)
        if hooks is not None:
            self.hooks = hooks
        self.irqs_off_wait = self.hooks.irqs_off_wait
        self.hw_reports_ite_sid = self.hooks.hw_reports_ite_sid
        timeout = params.sync_timeout if params.sync_timeout is not None else self.hooks.sync_timeout
        self.sync_timeout = timeout if timeout is not None else VTD_ADDED_SYNC_TIMEOUT
        self.state: dict[int, int] = {}
        self.jobs: dict[int, _Job] = {}
        self.probes: dict[int, _Probe] = {}
        self.stuck: list[set[int]] = [set() for _ in range(hw.command_queues)]
        #: per queue, when the last of our CMD_SYNCs there completed: CONS moved on at that moment
        self.cons_moved: list[float] = [-1.0] * hw.command_queues
        self.failed_tokens: set[int] = set()
        self.reset_waiting: set[int] = set()  # fenced streams whose FLR waits for our queues to let go
        self._next_token = 0
        self._seq = 0
        n = hw.command_queues
        self.recovery_q = n - 1 if n >= 2 and params.recovery_queue else None
        self.cpu_queue_count = n - 1 if self.recovery_q is not None else n

    def queue_of(self, cpu: int) -> int:
        return cpu % self.cpu_queue_count

    # --- dispatch ----------------------------------------------------------------------------

    def handle(self, now, ev):
        t = type(ev)
        if t is SyncDone:
            return self._sync_done(now, ev)
        if t is UnmapStart:
            return self._unmap(now, ev)
        if t is TimerFired:
            kind, arg = ev.token
            if kind == "job":
                return self._job_timer(now, arg)
            if kind == "probe":
                return self._probe_timeout(now, arg)
            if kind == "reset" and self.state.get(arg) == FENCED:
                if self.params.reset_waits_for_queues and self._waited_on(arg):
                    self.reset_waiting.add(arg)  # retried whenever a CMD_SYNC of ours retires
                    return []
                return [ResetDevice(arg)]
            return []
        if t is CmdqError:
            return self._cmdq_error(now, ev)
        if t is ResetDone:
            return self._reset_done(now, ev)
        if t in (EventRecord, PresenceReply):
            return []
        return super().handle(now, ev)

    # --- unmaps --------------------------------------------------------------------------------

    def _unmap(self, now: float, ev: UnmapStart) -> list:
        self._seq += 1
        job = _Job(ev, self._seq)
        self.jobs[ev.unmap] = job
        todo = []
        for sid in ev.sids:
            st = self.state.get(sid, NORMAL)
            if st in (NORMAL, UNFENCING):
                todo.append(sid)
                job.unconfirmed.add(sid)
            elif st == FENCING:
                job.unconfirmed.add(sid)  # confirmed when the fence is in effect
            # FENCED, DEAD: the STE blocks translated requests; nothing to invalidate
        hooks = self.hooks
        if self.params.culprit_search == "per-device-batches":
            groups = [(sid,) for sid in todo]
        else:
            per = hooks.descs_per_sync or max(1, len(todo))
            groups = [tuple(todo[i:i + per]) for i in range(0, len(todo), per)]
        probes = []
        if hooks.separate_tlbi_sync or not groups:
            probes.append(_Probe("inv", ev.unmap, ev.cpu, (), True))
            probes += [_Probe("inv", ev.unmap, ev.cpu, g, False) for g in groups]
        else:
            probes.append(_Probe("inv", ev.unmap, ev.cpu, groups[0], True))
            probes += [_Probe("inv", ev.unmap, ev.cpu, g, False) for g in groups[1:]]
        actions: list = []
        queue = self._pick_queue(ev.cpu)
        for p in probes:
            actions += self._submit(now, p, queue)
        return actions

    def _maybe_complete(self, job: _Job) -> list:
        if job.tlbi_pending or job.unconfirmed:
            return []
        del self.jobs[job.unmap]
        return [CompleteUnmap(job.unmap, 0)]

    # --- probes --------------------------------------------------------------------------------

    def _new_token(self) -> int:
        self._next_token += 1
        return self._next_token

    def _pick_queue(self, cpu: int, avoid: frozenset[int] = frozenset()) -> int:
        """Where a CPU's next probe goes: its own queue unless that is wedged; else an idle queue
        (CONS == PROD, so certainly not wedged); else any queue not known to be wedged; else its
        own, to wait behind the wedge until the hardware timeout is handled. Never the recovery
        queue: one probe of a broken device there would hold up every fence behind it."""
        n = self.cpu_queue_count
        own = self.queue_of(cpu)
        if not self.stuck[own] and own not in avoid:
            return own
        order = [(own + i) % n for i in range(1, n)]
        regs = self.regs
        for q in order:
            if q not in avoid and not self.stuck[q] and regs is not None and regs.cmdq_depth(q) == 0:
                return q
        for q in order:
            if q not in avoid and not self.stuck[q]:
                return q
        return own

    def _recovery_queue(self, cpu: int) -> int:
        """Where fence and unfence commands go: the reserved queue unless it is wedged."""
        rq = self.recovery_q
        if rq is not None and not self.stuck[rq]:
            return rq
        return self._pick_queue(cpu)

    def _submit(self, now: float, p: _Probe, queue: int) -> list:
        p.token = self._new_token()
        p.queue = queue
        self._seq += 1
        p.seq = self._seq
        if p.kind == "inv":
            job = self.jobs[p.job]
            cmds = [self.hooks.tlbi(job.asid, job.addr)] if p.tlbi else []
            cmds += self.hooks.atc_invs(p.sids, job.addr, job.size)
        elif p.kind == "search":
            cmds = [cmd_atc_inv(sid, 0, ATC_INV_SIZE_ALL) for sid in p.sids]
        else:
            cmds = [cmd_cfgi_ste(p.sids[0])]
        cmds.append(cmd_sync(p.token))
        p.cmds = tuple(cmds)
        self.probes[p.token] = p
        return [Submit(queue, p.cmds)] + self._arm(now, p)

    def _arm(self, now: float, p: _Probe) -> list:
        """Start (or restart) the software timeout of ``p`` at ``now``. An unmap's own probes share
        one timer (they are polled together); searches, fences and unfences have their own."""
        p.armed = now
        p.deadline = now + self.sync_timeout
        if p.kind != "inv":
            return [SetTimer(p.deadline, ("probe", p.token))]
        job = self.jobs[p.job]
        job.probes.add(p.token)
        if job.timer_at < 0 or p.deadline < job.timer_at:
            job.timer_at = p.deadline
            return [SetTimer(p.deadline, ("job", p.job))]
        return []

    def _job_timer(self, now: float, unmap: int) -> list:
        job = self.jobs.get(unmap)
        if job is None or now < job.timer_at:
            return []  # the unmap is done, or an earlier timer was superseded
        job.timer_at = -1.0
        actions: list = []
        for token in sorted(job.probes):
            p = self.probes.get(token)
            if p is None or p.kind != "inv":
                job.probes.discard(token)
            elif p.deadline <= now:
                actions += self._probe_timeout(now, token)
        if unmap in self.jobs:
            live = [self.probes[t].deadline for t in job.probes if t in self.probes]
            if live and job.timer_at < 0:
                job.timer_at = min(live)
                actions.append(SetTimer(job.timer_at, ("job", unmap)))
        return actions

    def _clone(self, now: float, p: _Probe, queue: int) -> list:
        q = _Probe(p.kind, p.job, p.cpu, p.sids, p.tlbi)
        return self._submit(now, q, queue)

    def _waited_on(self, sid: int) -> bool:
        """Whether a CMD_SYNC of ours still waits on an ATC_INV for ``sid``: an FLR now would drop
        that invalidation, and its queue would stay wedged until the hardware timeout."""
        return any(sid in p.sids for p in self.probes.values() if p.kind in ("inv", "search"))

    def _resets_due(self) -> list:
        due = [sid for sid in sorted(self.reset_waiting)
               if self.state.get(sid) != FENCED or not self._waited_on(sid)]
        for sid in due:
            self.reset_waiting.discard(sid)
        return [ResetDevice(sid) for sid in due if self.state.get(sid) == FENCED]

    def _sync_done(self, now: float, ev: SyncDone) -> list:
        actions = self._sync_done_inner(now, ev)
        if self.reset_waiting:
            actions = actions + self._resets_due()
        return actions

    def _sync_done_inner(self, now: float, ev: SyncDone) -> list:
        self.stuck[ev.queue].discard(ev.token)
        self.cons_moved[ev.queue] = now
        if ev.token in self.failed_tokens:
            self.failed_tokens.discard(ev.token)  # the re-run after CERROR_ATC_INV_SYNC: not a success
            self.probes.pop(ev.token, None)
            return []
        p = self.probes.pop(ev.token, None)
        if p is None:
            return []
        if p.kind == "inv":
            job = self.jobs.get(p.job)
            if job is None:
                return []
            job.probes.discard(ev.token)
            job.unconfirmed.difference_update(p.sids)
            if p.tlbi:
                job.tlbi_pending = False
            return self._maybe_complete(job)
        if p.kind == "search":
            # the whole ATCs of p.sids are clean: that answers for every unmap whose PTE was gone
            actions: list = []
            for job in list(self.jobs.values()):
                if job.seq < p.seq and job.unconfirmed.intersection(p.sids):
                    job.unconfirmed.difference_update(p.sids)
                    actions += self._maybe_complete(job)
            return actions
        sid = p.sids[0]
        if p.kind == "fence":
            if self.state.get(sid) != FENCING:
                return []
            self.state[sid] = FENCED
            actions: list = [Note("fence", sid, f"SID {sid} fenced: STE abort in effect")]
            for job in list(self.jobs.values()):
                if sid in job.unconfirmed:
                    job.unconfirmed.discard(sid)
                    actions += self._maybe_complete(job)
            if self.params.recover:
                actions.append(SetTimer(now + self.params.reset_delay, ("reset", sid)))
            return actions
        if self.state.get(sid) == UNFENCING:  # unfence
            self.state[sid] = NORMAL
            return [Note("unfence", sid, f"SID {sid} restored after a successful reset")]
        return []

    def _at_cons(self, p: _Probe) -> bool:
        cmd = self.regs.cmdq_cons_cmd(p.queue) if self.regs is not None else None
        return cmd is not None and any(cmd is c for c in p.cmds)

    def _probe_timeout(self, now: float, token: int) -> list:
        p = self.probes.get(token)
        if p is None:
            return []
        self.stuck[p.queue].add(token)
        actions: list = []
        job = self.jobs.get(p.job) if p.kind == "inv" else None
        if not p.timed_out:
            p.timed_out = True
            actions.append(Note("sync_timeout", text="CMD_SYNC timeout"))
        if job is not None and job.spinning and self.irqs_off_wait:
            job.spinning = False
            actions.append(SpinEnd(job.cpu))  # the core stops spinning and sleeps until the flush is safe
        at_cons = p.kind in ("inv", "search") and p.sids and not p.suspected and self._at_cons(p)
        if at_cons and self.cons_moved[p.queue] > p.armed:
            # it waited behind a CMD_SYNC of ours that completed since: it has been at the head
            # of its queue only since then. Give it the whole timeout from there, or a device
            # that answers in microseconds, its answer in flight, would be named a culprit.
            started = self.cons_moved[p.queue]
            if started + self.sync_timeout > now:
                self.stuck[p.queue].discard(token)
                return actions + self._arm(started, p)
        if at_cons:
            p.suspected = True
            if job is not None:
                job.probes.discard(token)  # the search or the fence answers for it from now on
            return actions + self._suspect(now, p, -1)
        # Stuck behind another sync (or a sync with nothing of its own to wait for): move it
        # to a queue that is not wedged, or keep waiting.
        alt = self._pick_queue(p.cpu, avoid=frozenset({p.queue}))
        if alt != p.queue and not self.stuck[alt] and not p.suspected and p.kind != "unfence":
            self.probes.pop(token)
            return actions + self._clone(now, p, alt)
        if p.kind == "inv":
            p.armed, p.deadline = now, now + self.sync_timeout  # the unmap's timer picks it up again
            return actions
        return actions + self._arm(now, p)

    def _suspect(self, now: float, p: _Probe, named_sid: int) -> list:
        """``p``'s CMD_SYNC failed: narrow down who did not answer."""
        job = self.jobs.get(p.job) if p.kind == "inv" else None
        if p.kind == "inv" and job is None:
            return []
        live = (NORMAL, UNFENCING)
        suspects = [s for s in p.sids if self.state.get(s, NORMAL) in live and (job is None or s in job.unconfirmed)]
        if job is not None:
            # streams that a search submitted after this unmap began will answer for anyway
            covered = {s for q in self.probes.values() if q.kind == "search" and q.seq > job.seq for s in q.sids}
            suspects = [s for s in suspects if s not in covered]
        actions: list = []
        groups: list[tuple[int, ...]] = []
        issued = p.armed  # when p's CMD_SYNC was issued, or reached the head of its queue
        if named_sid >= 0 and named_sid in suspects:
            actions += self._fence(now, named_sid, p.cpu, issued)
            rest = tuple(s for s in suspects if s != named_sid)
            if rest:
                groups.append(rest)
        elif len(suspects) == 1:
            actions += self._fence(now, suspects[0], p.cpu, issued)
        elif suspects:
            half = len(suspects) // 2
            groups += [tuple(suspects[:half]), tuple(suspects[half:])]
        new = [_Probe("search", -1, p.cpu, g, False) for g in groups]
        if job is not None and p.tlbi and job.tlbi_pending:
            new.append(_Probe("inv", p.job, p.cpu, (), True))  # the TLBI still needs its sync
        used: set[int] = set()
        for np in new:
            q = self._pick_queue(p.cpu, avoid=frozenset(used))
            used.add(q)
            actions += self._submit(now, np, q)
        return actions

    # --- fencing -----------------------------------------------------------------------------

    def _fence(self, now: float, sid: int, cpu: int, issued: float = -1.0) -> list:
        """Isolate ``sid``; ``issued``: when the CMD_SYNC whose failure named it was issued."""
        if self.state.get(sid, NORMAL) in (FENCING, FENCED, DEAD):
            return []
        self.state[sid] = FENCING
        actions: list = [Note("culprit", sid, f"ATC invalidation for SID {sid} did not complete: isolating it",
                              since=issued),
                         WriteSte(sid, STRTAB_STE_0_CFG_ABORT, STRTAB_STE_1_EATS_ABT)]
        return actions + self._submit(now, _Probe("fence", -1, cpu, (sid,), False), self._recovery_queue(cpu))

    def _cmdq_error(self, now: float, ev: CmdqError) -> list:
        actions: list = [Note("log", sid=ev.ite_sid,
                              text=f"CMDQ error (cons token {ev.token}): {CERROR_TEXT.get(ev.cerror, ev.cerror)}")]
        self.failed_tokens.add(ev.token)
        p = self.probes.get(ev.token)
        named = ev.ite_sid if self.hw_reports_ite_sid else -1
        if p is not None and p.kind in ("inv", "search") and not p.suspected:
            p.suspected = True
            actions += self._suspect(now, p, named)
        elif named >= 0:
            actions += self._fence(now, named, p.cpu if p is not None else 0,
                                   p.armed if p is not None else -1.0)
        if self.params.scrub_halted_queue:
            actions += self._scrub(ev.queue)
        actions.append(AckCmdqError(ev.queue))
        return actions

    def _scrub(self, queue: int) -> list:
        """While the queue is halted, neuter the queued ATC_INVs that would only hit the same broken
        device again, each costing another hardware timeout before the fence or the search gets
        its turn: those for streams being fenced (the fence answers for every unmap), and those
        for streams a whole-ATC search submitted after that unmap began is probing (the search, or
        the fence it ends in, answers for the unmap)."""
        fencing = {s for s, st in self.state.items() if st in (FENCING, FENCED, DEAD)}
        searches = [q for q in self.probes.values() if q.kind == "search"]
        targets: dict[int, frozenset] = {}
        for p in self.probes.values():
            if p.queue != queue or p.kind != "inv" or not p.sids:
                continue
            job = self.jobs.get(p.job)
            if job is None:
                continue
            covered = set(fencing)
            for q in searches:
                if q.seq > job.seq:
                    covered.update(q.sids)
            hit = covered.intersection(p.sids)
            if hit:
                p.sids = tuple(s for s in p.sids if s not in hit)
                targets[p.token] = frozenset(hit)
        return [ScrubQueuedAtcInv(queue, targets)] if targets else []

    def _reset_done(self, now: float, ev: ResetDone) -> list:
        st = self.state.get(ev.sid, NORMAL)
        if st not in (FENCED, DEAD):
            return []
        if not ev.ok:
            self.state[ev.sid] = DEAD
            return [Note("reset_failed", ev.sid, f"SID {ev.sid}: reset failed, stays fenced")]
        self.state[ev.sid] = UNFENCING
        actions: list = [WriteSte(ev.sid, STRTAB_STE_0_CFG_S1_TRANS, STRTAB_STE_1_EATS_TRANS)]
        return actions + self._submit(now, _Probe("unfence", -1, 0, (ev.sid,), False), self._recovery_queue(0))

    def stream_states(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for st in self.state.values():
            counts[STATE_NAMES[st]] = counts.get(STATE_NAMES[st], 0) + 1
        return counts


@register
class Quarantine(QuarantineCore):
    name = "quarantine"
    summary = ("arm-smmu-v3 with the 2026 quarantine series: on a CMD_SYNC timeout find the culprit "
               "(bisect or per-device batches), fence it (STE abort + CFGI_STE), unfence after a good reset")
    Params = QuarantineParams


@register
class IommuCore(QuarantineCore):
    name = "iommu-core"
    summary = ("the quarantine state machine in the IOMMU core, driven through per-driver hooks "
               "(driver: arm-smmu-v3, amd-iommu or intel-vtd, each with its own timeout)")
    Params = IommuCoreParams

    def __init__(self, params, hw):
        super().__init__(params, hw, DRIVERS[params.driver])
