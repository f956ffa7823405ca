"""``fence-on-timeout``: a proposal, the fix the thread asks for: fence before a flush returns.

Not a posted patch. "Any flush without a positive answer must fence before continuing": a flush is
reported complete only when every invalidation it depends on has completed, or the device behind
it is fenced (its STE switched to abort, CFGI_STE + CMD_SYNC completed). Never on a bare timeout,
and it acts at the software timeout, whatever the hardware one. Meanwhile the CPU keeps spinning
with interrupts off, as the arm driver does (iotlb_sync may run in atomic context).

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
- ``culprit_search``: ``bisect`` splits a suspect set in halves, each re-issued with its own
  CMD_SYNC (an ATC_INV of the whole ATC, so one search answers for every flush waiting on those
  streams, and concurrent failures on the same domain share it); ``linear`` probes one suspect
  at a time in sorted order (the series' per-SID retry); ``per-device-batches`` never puts two
  devices' ATC_INVs behind one CMD_SYNC, so a suspect set has one stream from the start. Hardware
  that names the timed-out device (VT-d ITESID) lets the IOMMU-core version skip the search.
- A single suspect is the culprit: fence it. With one command queue the fence waits behind the
  wedged CMD_SYNC until the hardware timeout has been handled; with several it goes through the
  reserved queue (``recovery_queue``).
- Recovery: after ``reset_delay`` ask for a reset through the core's reset path, once none of our
  CMD_SYNCs behind an ATC_INV to the device still waits (an FLR drops the requests the device
  holds, and the SMMU would wait for each until its hardware timeout); its done() restores the STE
  after a successful reset; a failed reset keeps the device fenced.
- VT-d: an ITE aborts every wait descriptor pending on the queue; the probes are written again, as
  qi_submit_sync() restarts.
"""

from __future__ import annotations

from ..commands import cmd_atc_inv, cmd_cfgi_ste, cmd_sync
from ..policy import (
    CmdqError,
    CompleteUnmap,
    EventRecord,
    LocalIrqRestore,
    LocalIrqSave,
    Note,
    Policy,
    PresenceReply,
    ResetDevice,
    ResetDone,
    SetTimer,
    SpinEnd,
    Submit,
    SyncDone,
    TimerFired,
    UnmapStart,
)
from ..spec import ATC_INV_SIZE_ALL, EVT_ID_AMD_IOTLB_INV_TO
from .drivers import ARM_SMMU_V3, DriverHooks
from .fence_state import (
    FENCED,
    FENCING,
    NORMAL,
    VTD_ADDED_SYNC_TIMEOUT,
    FenceOnTimeoutParams,
    _Job,
    _Probe,
)
from .fencing import Fencing


class FenceCore(Fencing, Policy):
    """The fence-then-continue state machine, driven through a driver's hooks."""

    hooks: DriverHooks = ARM_SMMU_V3
    Params = FenceOnTimeoutParams
    irqs_off_windows = "explicit"
    reset_done_on_failure = False  # a failed reset keeps the stream fenced (the proposal, as the series' v3)

    def __init__(self, params, hw, hooks: DriverHooks | None = None):
        super().__init__(params, hw)
        if hooks is not None:
            self.hooks = hooks
        self.irqs_off_wait = self.hooks.irqs_off_wait
        self.hw_reports_ite_sid = self.hooks.hw_reports_ite_sid
        self.fence_waits = self.hooks.fence_waits
        self.inv_timeout_action = self.hooks.inv_timeout_action
        self.wants_events = self.inv_timeout_action == "event"  # AMD names the device in its event log
        timeout = params.sync_timeout if params.sync_timeout is not None else self.hooks.sync_timeout
        self.sync_timeout = timeout if timeout is not None else VTD_ADDED_SYNC_TIMEOUT
        self.state: dict[int, int] = {}
        self.jobs: dict[int, _Job] = {}
        self.probes: dict[int, _Probe] = {}
        self.stuck: list[set[int]] = [set() for _ in range(hw.command_queues)]
        #: per queue, when the last of our CMD_SYNCs there completed: CONS moved on at that moment
        self.cons_moved: list[float] = [-1.0] * hw.command_queues
        self.failed_tokens: set[int] = set()
        self._next_token = 0
        self._seq = 0
        n = self.hooks.queues(hw.command_queues)  # AMD and VT-d: one, however many the scenario has
        self.recovery_q = n - 1 if n >= 2 and params.recovery_queue else None
        self.cpu_queue_count = n - 1 if self.recovery_q is not None else n

    def queue_of(self, cpu: int) -> int:
        return cpu % self.cpu_queue_count

    def reset_queue(self) -> int:
        """The IOMMU core's attach and re-attach commands go to a CPU queue, not the reserved one:
        they carry a whole-ATC ATC_INV for the device, which may be the hung one, and one such on
        the reserved queue would hold every later fence behind it for a hardware timeout."""
        return self._pick_queue(0)

    def poll_timeout(self) -> float | None:
        return self.hooks.sync_timeout

    @classmethod
    def cmdq_entries(cls, params) -> int:
        return cls.hooks.cmdq_entries

    def hw_inv_timeout(self, scenario_timeout):
        return self.hooks.inv_timeout if self.hooks.inv_timeout is not None else scenario_timeout

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
                return self._reset(now, arg)
            if kind == "irqs":
                return self._irq_window(now, arg)
            return []
        if t is CmdqError:
            return self._cmdq_error(now, ev)
        if t is ResetDone:
            return self._reset_done(now, ev)
        if t is EventRecord:
            if ev.evt_id == EVT_ID_AMD_IOTLB_INV_TO and self.state.get(ev.sid, NORMAL) == NORMAL:
                return self._fence(now, ev.sid, 0)  # the hardware named it: no search
            return []
        if t is PresenceReply:
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
            if st == NORMAL:
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
        if self.irqs_off_wait:  # the CPU spins with interrupts off from the flush's first command
            actions.append(LocalIrqSave(ev.cpu))
            if self.params.poll_window is not None:
                actions.append(SetTimer(now + self.params.poll_window, ("irqs", ev.unmap)))
        queue = self._pick_queue(ev.cpu)
        for p in probes:
            actions += self._submit(now, p, queue)
        return actions

    def _reset(self, now: float, sid: int) -> list:
        """Reset the fenced device once none of our CMD_SYNCs behind an ATC_INV to it still waits: an
        FLR makes the device drop the Invalidate Requests it holds, and the SMMU would then wait for
        each until its hardware timeout, its queue wedged (the core's reset path does not wait for
        them: only for the CPUs inside an invalidation)."""
        if any(sid in p.sids for p in self.probes.values() if p.kind != "fence"):
            return [SetTimer(now + self.params.reset_delay, ("reset", sid))]
        return [ResetDevice(sid)]

    def _irq_window(self, now: float, unmap: int) -> list:
        """``poll_window``: the end of one window of polling with interrupts off; they are on for a
        moment (what is held for this CPU is taken), then off again for the next window."""
        job = self.jobs.get(unmap)
        if job is None or not job.spinning:
            return []
        return [LocalIrqRestore(job.cpu), LocalIrqSave(job.cpu),
                SetTimer(now + self.params.poll_window, ("irqs", unmap))]

    def _maybe_complete(self, job: _Job) -> list:
        if job.tlbi_pending or job.unconfirmed:
            return []
        del self.jobs[job.unmap]
        if self.irqs_off_wait:
            return [LocalIrqRestore(job.cpu), CompleteUnmap(job.unmap, 0)]
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
        token = p.token = self._new_token()
        p.queue = queue
        self._seq += 1
        p.seq = self._seq
        kind = p.kind
        if kind == "inv":
            job = self.jobs[p.job]
            cmds = [self.hooks.tlbi(job.asid, job.addr, job.full)] if p.tlbi else []
            cmds += self.hooks.atc_invs(p.sids, job.addr, job.size)
        elif kind == "search":
            cmds = [cmd_atc_inv(sid, 0, ATC_INV_SIZE_ALL) for sid in p.sids]
        else:
            cmds = [cmd_cfgi_ste(p.sids[0])]
        cmds.append(cmd_sync(token))
        p.cmds = cmds = tuple(cmds)
        self.probes[token] = p
        return [Submit(queue, cmds), *self._arm(now, p)]

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

    def _answered(self, sids) -> tuple[int, ...]:
        """The streams a completed CMD_SYNC answers for. On arm-smmu-v3 and VT-d a completion means
        every ATC_INV before it completed (a timed-out one raises CERROR_ATC_INV_SYNC instead). AMD's
        IOMMU gives an invalidation up after CTRL_INV_TO, logs IOTLB_INV_TIMEOUT and completes the
        COMPLETION_WAIT behind it, which says nothing of the device's ATC, and the event may be read
        after the completion: there a stream being fenced keeps its unmaps until the fence is in effect."""
        if not self.wants_events:
            return sids
        state = self.state
        return tuple(s for s in sids if state.get(s, NORMAL) == NORMAL)

    def _sync_done(self, now: float, ev: SyncDone) -> list:
        token = ev.token
        self.stuck[ev.queue].discard(token)
        self.cons_moved[ev.queue] = now
        if token in self.failed_tokens:
            self.failed_tokens.discard(token)  # the re-run after CERROR_ATC_INV_SYNC: not a success
            self.probes.pop(token, None)
            return []
        p = self.probes.pop(token, None)
        if p is None:
            return []
        if p.kind == "inv":
            job = self.jobs.get(p.job)
            if job is None:
                return []
            job.probes.discard(token)
            job.unconfirmed.difference_update(self._answered(p.sids) if self.wants_events else p.sids)
            if p.tlbi:
                job.tlbi_pending = False
            return self._maybe_complete(job)
        if p.kind == "search":
            # the whole ATCs of p.sids are clean: that answers for every unmap whose PTE was gone
            actions: list = []
            for job in list(self.jobs.values()):
                if job.seq < p.seq and job.unconfirmed.intersection(p.sids):
                    job.unconfirmed.difference_update(self._answered(p.sids))
                    actions += self._maybe_complete(job)
            return actions + self._linear_next(now, p)
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
        return []

    def _at_cons(self, p: _Probe) -> bool:
        """Whether ``p`` waits on its own invalidations, not behind someone else's: CONS points into
        it. A VT-d wait descriptor (no Fence flag) does not hold the queue, so there the driver can
        only tell that no earlier wait of its own on that queue is still pending."""
        if not self.fence_waits:
            return not any(q.queue == p.queue and q.seq < p.seq for q in self.probes.values())
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
        if job is not None and job.spinning and self.irqs_off_wait and self.params.hypothetical_sleep_while_held:
            job.spinning = False
            actions.append(SpinEnd(job.cpu))  # the CPU stops spinning and does other work until the flush is safe
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
        if alt != p.queue and not self.stuck[alt] and not p.suspected:
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
        suspects = [s for s in p.sids if self.state.get(s, NORMAL) == NORMAL and (job is None or s in job.unconfirmed)]
        if job is not None:
            # streams that a search submitted after this unmap began will answer for anyway
            covered = {s for q in self.probes.values() if q.kind == "search" and q.seq > job.seq for s in q.sids}
            suspects = [s for s in suspects if s not in covered]
        actions: list = []
        groups: list[tuple[int, ...]] = []
        issued = p.armed  # when p's CMD_SYNC was issued, or reached the head of its queue
        linear = self.params.culprit_search == "linear"
        if named_sid >= 0 and named_sid in suspects:
            actions += self._fence(now, named_sid, p.cpu, issued)
            rest = tuple(s for s in suspects if s != named_sid)
            if rest:
                groups.append(rest)
        elif len(suspects) == 1:
            actions += self._fence(now, suspects[0], p.cpu, issued)
        elif suspects and not linear:
            half = len(suspects) // 2
            groups += [tuple(suspects[:half]), tuple(suspects[half:])]
        elif suspects:
            groups.append(tuple(suspects))
        if linear:  # one SID at a time, in sorted order: the next when this one answers or is fenced
            new = [_Probe("search", -1, p.cpu, (g[0],), False, rest=g[1:]) for g in (sorted(g) for g in groups)]
        else:
            new = [_Probe("search", -1, p.cpu, g, False) for g in groups]
        actions += self._linear_next(now, p)
        if job is not None and p.tlbi and job.tlbi_pending:
            new.append(_Probe("inv", p.job, p.cpu, (), True))  # the TLBI still needs its sync
        used: set[int] = set()
        for np in new:
            q = self._pick_queue(p.cpu, avoid=frozenset(used))
            used.add(q)
            actions += self._submit(now, np, q)
        return actions

    def _linear_next(self, now: float, p: _Probe) -> list:
        """A linear search's probe answered or was fenced: probe the next suspect."""
        if not p.rest:
            return []
        rest, p.rest = p.rest, ()
        return self._submit(now, _Probe("search", -1, p.cpu, (rest[0],), False, rest=rest[1:]), self._pick_queue(p.cpu))
