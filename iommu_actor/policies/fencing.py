"""Fencing, the halted queue and recovery for ``fence-on-timeout`` (``fence_core``).

A culprit is isolated by an abort STE made effective by CFGI_STE + CMD_SYNC; CERROR_ATC_INV_SYNC
makes the probe at CONS suspect (and, with ``hypothetical_scrub_halted_queue``, queued ATC_INVs for
streams being fenced or searched are rewritten into CMD_SYNCs while the queue is halted, which
Linux cannot do); the reset goes through the core's reset path, whose done() restores the STE.
"""

from __future__ import annotations

from ..policy import (
    AckCmdqError,
    CmdqError,
    Note,
    ResetDone,
    ScrubQueuedAtcInv,
    WriteSte,
)
from ..spec import (
    CERROR_TEXT,
    STRTAB_STE_0_CFG_ABORT,
    STRTAB_STE_1_EATS_ABT,
)
from .fence_state import DEAD, FENCED, FENCING, NORMAL, _Probe


class Fencing:
    """Mixed into ``FenceCore``: what happens once a stream is suspected or reset."""

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
        aborted = [] if self.fence_waits else sorted(t for t, p in self.probes.items() if p.queue == ev.queue)
        actions: list = [Note("log", sid=ev.ite_sid,
                              text=f"CMDQ error (cons token {ev.token}): {CERROR_TEXT.get(ev.cerror, ev.cerror)}")]
        if ev.token >= 0:  # a VT-d ITE names no wait of ours (token -1)
            self.failed_tokens.add(ev.token)
        p = self.probes.get(ev.token)
        named = ev.ite_sid if self.hw_reports_ite_sid else -1
        if p is not None and p.kind in ("inv", "search") and not p.suspected:
            p.suspected = True
            actions += self._suspect(now, p, named)
        elif named >= 0:
            actions += self._fence(now, named, p.cpu if p is not None else 0,
                                   p.armed if p is not None else -1.0)
        if self.params.hypothetical_scrub_halted_queue:
            actions += self._scrub(ev.queue)
        actions.append(AckCmdqError(ev.queue))
        if aborted:
            actions += self._restart_aborted(now, ev.queue, aborted)
        return actions

    def _restart_aborted(self, now: float, queue: int, tokens: list[int]) -> list:
        """VT-d: qi_check_fault() marks every wait descriptor in use on the queue QI_ABORT and each
        submitter restarts (qi_submit_sync()'s -EAGAIN): our probes there are written again, less
        the streams being fenced (the fence answers for them)."""
        actions: list = []
        for token in tokens:
            p = self.probes.pop(token, None)
            if p is None:
                continue
            self.stuck[queue].discard(token)
            if p.suspected:
                continue  # the search or the fence it started answers for it
            if p.kind == "fence":
                actions += self._submit(now, _Probe("fence", -1, p.cpu, p.sids, False), queue)
                continue
            job = self.jobs.get(p.job) if p.kind == "inv" else None
            if p.kind == "inv" and job is None:
                continue
            sids = tuple(s for s in p.sids if self.state.get(s, NORMAL) == NORMAL
                         and (job is None or s in job.unconfirmed))
            tlbi = p.tlbi and job is not None and job.tlbi_pending
            if job is not None:
                job.probes.discard(token)
            if sids or tlbi:
                actions += self._submit(now, _Probe(p.kind, p.job, p.cpu, sids, tlbi, rest=p.rest), queue)
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
        self.state[ev.sid] = NORMAL  # the core's done() re-attached the domain: the STE is restored
        return [Note("unfence", ev.sid, f"SID {ev.sid} restored after a successful reset")]
