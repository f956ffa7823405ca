"""The SMMU hardware: stream table, command queues, ITag bookkeeping, translation checks.

Sans-IO. The SMMU never sends or schedules anything itself: it calls the ``ports`` object it is
given (``SmmuPorts``) to emit a PCIe message, ask for a timer, or raise an interrupt. Tests pass a
recorder as the ports and count what a command sequence costs.

Semantics (DOMAIN.md):
- Each command queue is consumed strictly in order. CFGI_STE copies the STE from memory into the
  SMMU's configuration cache (it is in effect from then on); TLBI_* are retired at once (the
  SMMU's TLB is not modelled: translation requests walk the page table directly); ATC_INV takes
  a free ITag for its stream (at most the device's Invalidate Queue Depth outstanding, otherwise
  CONS waits: back-pressure) and sends an Invalidate Request; CMD_SYNC completes only when every
  ATC_INV before it in its queue has completed, and CONS does not pass it before then.
- Each Invalidate Request has a hardware completion timeout. When it expires the request is
  given up (its ITag becomes free), and the next CMD_SYNC of that queue raises GERROR.CMDQ_ERR with
  CERROR_ATC_INV_SYNC, CONS still pointing at the CMD_SYNC, naming no device. The queue is halted
  until software acknowledges; the CMD_SYNC then re-runs. AMD's IOMMU (``INV_TIMEOUT_EVENT``)
  instead logs an IOTLB_INV_TIMEOUT event naming the DeviceID and goes on: its COMPLETION_WAIT
  completes. A timeout of None (AMD's CTRL_INV_TO_NONE) never gives up.
- Untranslated requests (a device with ATS disabled) are translated by the SMMU's own page walk:
  they reach the page the page table maps now, or fault (F_TRANSLATION); EATS does not matter.
- A CMD_SYNC covers only its own queue: with several queues (ECMDQ, CMDQV), a wedged queue stalls
  only the CPUs that submit to it.
- VT-d's invalidation wait descriptor as Linux writes it (Fence flag clear, ``fence_waits=False``)
  does not stop the fetch: the hardware goes on with the descriptors behind it, and the wait
  completes once every invalidation before it has. An invalidation that times out raises the
  Invalidation Time-out Error at once, naming its device (IQER.ITESID); the queue fetches nothing
  more until software clears it, and the waits still pending behind that invalidation are never
  completed by the hardware (software aborts and resubmits them).
"""

from __future__ import annotations

from collections import deque
from typing import Protocol

from ats_stress.device_actors.pcie import MSG_INV_REQ, MSG_TRANS_CPL

from .cmdq import (
    INV_DONE,
    INV_OUTSTANDING,
    INV_TIMED_OUT,
    INV_TIMEOUT_CERROR,
    INV_TIMEOUT_EVENT,
    CommandQueue,
    InvRecord,
)
from .commands import Cmd
from .spec import (
    ATS_MAX_ITAGS,
    CMDQ_ERR_CERROR_ATC_INV_IDX,
    CMDQ_ERR_CERROR_NONE_IDX,
    CMDQ_OP_ATC_INV,
    CMDQ_OP_CFGI_ALL,
    CMDQ_OP_CFGI_STE,
    CMDQ_OP_CMD_SYNC,
    CMDQ_SYNC_0_CS_NONE,
    EVT_ID_AMD_IOTLB_INV_TO,
    EVT_ID_BAD_ATS_TREQ,
    EVT_ID_TRANSL_FORBIDDEN,
    EVT_ID_TRANSLATION_FAULT,
    STRTAB_STE_0_CFG_ABORT,
    STRTAB_STE_0_CFG_S1_TRANS,
    STRTAB_STE_1_EATS_TRANS,
)
from .stats import Histogram


class SmmuPorts(Protocol):
    """What the SMMU can do to the world around it."""

    def send(self, msg: tuple) -> None: ...  # a PCIe message towards an endpoint
    def hw_timer(self, at: float, queue: int) -> None: ...  # wake on_hw_timeout(queue) at ``at``
    def sync_done(self, queue: int, token: int) -> None: ...
    def cmdq_error(self, queue: int, cerror: int, token: int, ite_sid: int) -> None: ...
    def cmdq_space(self, queue: int) -> None: ...  # CONS moved on: ``space_watch`` slots are free
    def event(self, evt_id: int, sid: int, addr: int) -> None: ...
    def ste_effective(self, sid: int, config: int, eats: int) -> None: ...
    def memory_access(self, sid: int, addr: int, pa: int, tag: int) -> None: ...  # reached memory
    def blocked(self, sid: int, addr: int, pa: int, tag: int) -> None: ...
    def untranslated(self, sid: int, addr: int, pa: int, tag: int) -> None: ...  # pa < 0: faulted or aborted


class Ste:
    """A stream table entry, reduced to what the model uses: Config, EATS and the S1 context
    (the domain's ASID, standing in for S1ContextPtr -> CD)."""

    __slots__ = ("config", "eats", "asid")

    def __init__(self, config: int, eats: int, asid: int):
        self.config = config
        self.eats = eats
        self.asid = asid

    def copy(self) -> Ste:
        return Ste(self.config, self.eats, self.asid)

    def allows_ats(self) -> bool:
        return self.config == STRTAB_STE_0_CFG_S1_TRANS and self.eats == STRTAB_STE_1_EATS_TRANS


class Smmu:
    """One SMMUv3: its stream table, its command queue(s) and its ITag pools."""

    def __init__(self, ports: SmmuPorts, *, command_queues: int, invalidate_queue_depth: int,
                 atc_inv_completion_timeout: float | None, page_tables: dict[int, list],
                 inv_timeout_action: str = INV_TIMEOUT_CERROR, fence_waits: bool = True,
                 cmdq_entries: int = 1 << 16):
        if not 1 <= invalidate_queue_depth <= ATS_MAX_ITAGS:
            raise ValueError(f"invalidate_queue_depth must be 1..{ATS_MAX_ITAGS}")
        self.ports = ports
        self.queues = [CommandQueue(i, cmdq_entries) for i in range(command_queues)]
        self.depth = invalidate_queue_depth
        self.hw_timeout = atc_inv_completion_timeout  # None: the hardware never gives up
        self.inv_timeout_action = inv_timeout_action
        self.fence_waits = fence_waits  # a CMD_SYNC holds CONS until it completes (False: VT-d FN=0)
        self.page_tables = page_tables  # asid -> list indexed by IOVA page: (pa, tag) or None
        self.ste_mem: dict[int, Ste] = {}  # the stream table in memory, as software wrote it
        self.ste_cache: dict[int, Ste] = {}  # what the SMMU uses (after CFGI_STE)
        self.free_itags: dict[int, list[int]] = {}
        self.itag_holder: dict[int, dict[int, InvRecord]] = {}
        self.tag_waiters: dict[int, set[int]] = {}
        #: per stream, ATC_INVs submitted and not yet completed or given up (queued or in flight):
        #: what disabling ATS waits for (the arm_smmu_invs rwlock's readers)
        self.inv_pending: dict[int, int] = {}
        self.cmd_counts: dict[int, int] = {}
        self.evt_counts: dict[int, int] = {}
        self.hw_atc_timeouts = 0  # invalidations given up by the hardware
        self.cmdq_errors = 0  # GERROR.CMDQ_ERR raised with CERROR_ATC_INV_SYNC
        self.stale_completions = 0  # Invalidate Completions for no outstanding ITag
        self.translated_allowed = 0
        self.translated_blocked = 0
        self.untranslated_allowed = 0
        self.untranslated_faulted = 0  # no PTE (F_TRANSLATION) or an abort STE
        self.scrubbed = 0  # queued ATC_INVs rewritten by software while a queue was halted
        self.sync_duration = Histogram()  # each CMD_SYNC, from submission to retirement

    # --- configuration ----------------------------------------------------------------------

    def add_stream(self, sid: int, config: int, eats: int, asid: int) -> None:
        """Install an STE at probe time (in memory and in effect, as after a CFGI_ALL)."""
        self.ste_mem[sid] = Ste(config, eats, asid)
        self.ste_cache[sid] = Ste(config, eats, asid)
        self.free_itags[sid] = list(range(self.depth - 1, -1, -1))
        self.itag_holder[sid] = {}
        self.tag_waiters[sid] = set()

    def write_ste(self, sid: int, config: int, eats: int) -> None:
        """Software writes the STE in memory; nothing changes until CFGI_STE is consumed."""
        ste = self.ste_mem[sid]
        ste.config = config
        ste.eats = eats

    # --- command queue ----------------------------------------------------------------------

    def submit(self, queue: int, cmds, now: float) -> None:
        """Software writes ``cmds`` at PROD. It must have checked for room (CMDQ_CONS): writing
        over entries the SMMU has not consumed yet is a driver bug, refused here."""
        q = self.queues[queue]
        if len(cmds) > q.capacity - q.prod + q.cons:
            raise ValueError(f"command queue {queue} has {q.capacity - q.prod + q.cons} free slots of "
                             f"{q.capacity}, not the {len(cmds)} written")
        counts = self.cmd_counts
        pos = q.prod
        pending = self.inv_pending
        for c in cmds:
            op = c.op
            counts[op] = counts.get(op, 0) + 1
            if op == CMDQ_OP_CMD_SYNC:
                q.sync_submitted.append((pos, now))
            elif op == CMDQ_OP_ATC_INV:
                pending[c.sid] = pending.get(c.sid, 0) + 1
            pos += 1
        # A queue that still holds entries has its head waiting (a CMD_SYNC on its ATC_INVs, an
        # ATC_INV on an ITag, a halt): every change that can move it advances the queue itself, so
        # entries written behind it have nothing to do yet.
        waiting = bool(q.cmds)
        q.cmds.extend(cmds)
        q.prod += len(cmds)
        if not waiting:
            self._advance(q, now)

    def ack_cmdq_error(self, queue: int, now: float) -> None:
        """GERRORN written: clear CMDQ_CONS.ERR and restart at CONS (the CMD_SYNC re-runs)."""
        q = self.queues[queue]
        if q.err == CMDQ_ERR_CERROR_NONE_IDX:
            return
        q.err = CMDQ_ERR_CERROR_NONE_IDX
        q.failed_sid = -1
        self._advance(q, now)

    def scrub_atc_inv(self, queue: int, targets: dict[int, frozenset]) -> int:
        """While CMDQ_CONS.ERR halts ``queue``, rewrite queued ATC_INVs into CMD_SYNCs with CS=NONE:
        in the batch ending in the CMD_SYNC tagged ``token``, those for the streams ``targets[token]``.

        Not what Linux does: Linux rewrites only the entry at CONS, and only for CERROR_ILL
        (arm_smmu_cmdq_skip_err()); the entries behind it belong to the CPUs that wrote them. It is
        here for ``hypothetical_scrub_halted_queue`` (off by default). Returns how many entries
        were rewritten.
        """
        q = self.queues[queue]
        if q.err == CMDQ_ERR_CERROR_NONE_IDX:
            raise ValueError(f"command queue {queue} is not halted: its entries belong to the SMMU")
        cmds = q.cmds
        sids: frozenset = frozenset()
        rewritten = 0
        for i in range(len(cmds) - 1, 0, -1):  # entry 0 is at CONS: it is the failed CMD_SYNC
            c = cmds[i]
            if c.op == CMDQ_OP_CMD_SYNC:
                sids = targets.get(c.token, frozenset())
            elif c.op == CMDQ_OP_ATC_INV and c.sid in sids:
                cmds[i] = Cmd(CMDQ_OP_CMD_SYNC, token=-1, cs=CMDQ_SYNC_0_CS_NONE)
                self.inv_pending[c.sid] -= 1
                rewritten += 1
        self.scrubbed += rewritten
        return rewritten

    def _advance(self, q: CommandQueue, now: float) -> None:
        cmds = q.cmds
        ports = self.ports
        none = CMDQ_ERR_CERROR_NONE_IDX
        popleft = cmds.popleft
        while cmds and q.err == none:
            c = cmds[0]
            op = c.op
            if op == CMDQ_OP_ATC_INV:
                sid = c.sid
                tags = self.free_itags.get(sid)
                if tags is None:
                    tags = self._unknown_stream(sid)
                if not tags:
                    self.tag_waiters[sid].add(q.index)  # back-pressure: CONS waits for an ITag
                    break
                itag = tags.pop()
                rec = InvRecord(sid, itag, q.index, now, q.inv_issued)
                q.inv_issued += 1
                self.itag_holder[sid][itag] = rec
                q.outstanding += 1
                q.inflight.append(rec)
                if q.hw_timer_at < 0 and self.hw_timeout is not None:
                    q.hw_timer_at = now + self.hw_timeout
                    ports.hw_timer(q.hw_timer_at, q.index)
                ports.send((MSG_INV_REQ, sid, itag, c.addr, c.size))
            elif op == CMDQ_OP_CMD_SYNC:
                if not self.fence_waits:
                    q.waits.append((q.inv_issued, c.token, q.cons))  # fetched; the fetch goes on
                    self._complete_waits(q, now)
                else:
                    if q.outstanding:
                        break  # CONS stays at the CMD_SYNC
                    if q.failed_sid >= 0:
                        q.err = CMDQ_ERR_CERROR_ATC_INV_IDX
                        self.cmdq_errors += 1
                        ports.cmdq_error(q.index, q.err, c.token, q.failed_sid)
                        break
                    if c.token >= 0:  # a scrubbed entry (token -1, CS=NONE) signals nobody and was never submitted
                        ports.sync_done(q.index, c.token)
                    self._sync_retired(q, now)
            elif op == CMDQ_OP_CFGI_STE:
                self._cfgi_ste(c.sid)
            elif op == CMDQ_OP_CFGI_ALL:
                for sid in self.ste_mem:
                    self._cfgi_ste(sid)
            # TLBI_*: retired at once (the SMMU TLB is not modelled)
            q.before_cons = popleft()
            q.cons += 1
        if q.space_watch and q.capacity - q.prod + q.cons >= q.space_watch:
            q.space_watch = 0
            ports.cmdq_space(q.index)

    def _complete_waits(self, q: CommandQueue, now: float) -> None:
        """fence_waits=False: complete the waits every invalidation before which has completed."""
        inflight = q.inflight
        oldest = inflight[0].seq if inflight else q.inv_issued
        waits = q.waits
        while waits and waits[0][0] <= oldest:
            _, token, pos = waits.popleft()
            if token >= 0:
                self.ports.sync_done(q.index, token)
            self._sync_retired(q, now, pos)

    def _unknown_stream(self, sid: int) -> list[int]:
        # An ATC_INV for a StreamID with no STE: real hardware sends it anyway; nobody answers.
        self.free_itags[sid] = list(range(self.depth - 1, -1, -1))
        self.itag_holder[sid] = {}
        self.tag_waiters[sid] = set()
        return self.free_itags[sid]

    def _cfgi_ste(self, sid: int) -> None:
        mem = self.ste_mem[sid]
        cached = self.ste_cache[sid]
        changed = cached.config != mem.config or cached.eats != mem.eats
        self.ste_cache[sid] = mem.copy()
        if changed:
            self.ports.ste_effective(sid, mem.config, mem.eats)

    def _release_itag(self, rec: InvRecord, now: float) -> None:
        sid = rec.sid
        self.inv_pending[sid] -= 1
        del self.itag_holder[sid][rec.itag]
        self.free_itags[sid].append(rec.itag)
        waiters = self.tag_waiters[sid]
        if waiters:
            queues = sorted(waiters)
            waiters.clear()
            for qi in queues:
                self._advance(self.queues[qi], now)

    def inv_completion(self, sid: int, itag: int, now: float) -> None:
        """An Invalidate Completion arrived from the endpoint."""
        holder = self.itag_holder.get(sid)
        rec = holder.get(itag) if holder is not None else None
        if rec is None:
            self.stale_completions += 1  # late answer to an invalidation the hardware gave up on
            return
        rec.state = INV_DONE
        q = self.queues[rec.queue]
        q.outstanding -= 1
        inflight = q.inflight
        while inflight and inflight[0].state != INV_OUTSTANDING:
            inflight.popleft()
        self._release_itag(rec, now)
        if q.waits:
            self._complete_waits(q, now)
        self._advance(q, now)

    def on_hw_timeout(self, queue: int, now: float) -> None:
        """The hardware completion timer of queue ``queue`` fired."""
        q = self.queues[queue]
        q.hw_timer_at = -1.0
        inflight = q.inflight
        timeout = self.hw_timeout
        assert timeout is not None  # the timer is armed only when the hardware gives up
        expired = []
        while inflight:
            rec = inflight[0]
            if rec.state != INV_OUTSTANDING:
                inflight.popleft()
                continue
            if rec.sent_at + timeout > now:
                break
            inflight.popleft()
            rec.state = INV_TIMED_OUT
            q.outstanding -= 1
            if self.inv_timeout_action == INV_TIMEOUT_EVENT:
                self._event(EVT_ID_AMD_IOTLB_INV_TO, rec.sid, 0)  # logged; the queue goes on
            elif not self.fence_waits:
                self._ite(q, rec)
            elif q.failed_sid < 0:
                q.failed_sid = rec.sid
            self.hw_atc_timeouts += 1
            expired.append(rec)
        if inflight:
            q.hw_timer_at = inflight[0].sent_at + timeout
            self.ports.hw_timer(q.hw_timer_at, q.index)
        for rec in expired:
            self._release_itag(rec, now)
        self._advance(q, now)

    def _ite(self, q: CommandQueue, rec: InvRecord) -> None:
        """VT-d Invalidation Time-out Error: the waits behind ``rec`` are never completed, the queue
        fetches nothing more until software clears the error; it names ``rec``'s device."""
        q.waits = deque(w for w in q.waits if w[0] <= rec.seq)
        if q.err == CMDQ_ERR_CERROR_NONE_IDX:
            q.err = CMDQ_ERR_CERROR_ATC_INV_IDX
            self.cmdq_errors += 1
            self.ports.cmdq_error(q.index, q.err, -1, rec.sid)

    # --- the device side ---------------------------------------------------------------------

    def translation_request(self, sid: int, addr: int) -> None:
        ste = self.ste_cache.get(sid)
        if ste is not None and ste.config == STRTAB_STE_0_CFG_S1_TRANS and ste.eats == STRTAB_STE_1_EATS_TRANS:
            pt = self.page_tables[ste.asid]  # Ste.allows_ats(), written out: every DMA miss comes here
            pte = pt[addr] if 0 <= addr < len(pt) else None
            if pte is not None:
                self.ports.send((MSG_TRANS_CPL, sid, addr, pte[0], pte[1]))
                return
            self._event(EVT_ID_TRANSLATION_FAULT, sid, addr)
        elif ste is not None and ste.config != STRTAB_STE_0_CFG_ABORT:
            self._event(EVT_ID_BAD_ATS_TREQ, sid, addr)
        self.ports.send((MSG_TRANS_CPL, sid, addr, -1, 0))

    def translated_request(self, sid: int, addr: int, pa: int, tag: int) -> None:
        """A translated request: STE.EATS lets it skip translation and go straight to memory."""
        ste = self.ste_cache.get(sid)
        if ste is not None and ste.config == STRTAB_STE_0_CFG_S1_TRANS and ste.eats == STRTAB_STE_1_EATS_TRANS:
            self.translated_allowed += 1  # Ste.allows_ats(), written out: every DMA hit comes here
            self.ports.memory_access(sid, addr, pa, tag)
            return
        self.translated_blocked += 1
        if ste is not None and ste.config != STRTAB_STE_0_CFG_ABORT:
            self._event(EVT_ID_TRANSL_FORBIDDEN, sid, addr)
        self.ports.blocked(sid, addr, pa, tag)

    def untranslated_request(self, sid: int, addr: int) -> None:
        """An untranslated request (AT = 0b00): the SMMU walks the stream's page table itself."""
        ste = self.ste_cache.get(sid)
        if ste is None or ste.config != STRTAB_STE_0_CFG_S1_TRANS:
            self.untranslated_faulted += 1  # abort (the blocking domain): terminated, no event
            self.ports.untranslated(sid, addr, -1, -1)
            return
        pt = self.page_tables[ste.asid]
        pte = pt[addr] if 0 <= addr < len(pt) else None
        if pte is None:
            self.untranslated_faulted += 1
            self._event(EVT_ID_TRANSLATION_FAULT, sid, addr)
            self.ports.untranslated(sid, addr, -1, -1)
            return
        self.untranslated_allowed += 1
        self.ports.untranslated(sid, addr, pte[0], pte[1])

    def _event(self, evt_id: int, sid: int, addr: int) -> None:
        self.evt_counts[evt_id] = self.evt_counts.get(evt_id, 0) + 1
        self.ports.event(evt_id, sid, addr)

    def queue_depths(self) -> list[int]:
        return [q.depth for q in self.queues]

    def _sync_retired(self, q: CommandQueue, now: float, pos: int = -1) -> None:
        """The CMD_SYNC at CONS (or at ``pos``) completed: observe its duration from submission (one
        that software rewrote into the queue while it was halted has no submission record)."""
        pos = q.cons if pos < 0 else pos
        subs = q.sync_submitted
        while subs:
            head = subs[0][0]
            if head == pos:
                self.sync_duration.observe(now - subs.popleft()[1])
                return
            if head > pos:
                return
            subs.popleft()

    def oldest_sync_age(self, now: float) -> float:
        """How long the oldest CMD_SYNC not yet retired has been queued (0 when there is none)."""
        oldest = now
        for q in self.queues:
            subs = q.sync_submitted
            if subs:
                oldest = min(oldest, subs[0][1])
        return max(0.0, now - oldest)
