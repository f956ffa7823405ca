"""The story of each UAF exposure: which unmap freed the page, what its CMD_SYNCs returned, when
the page was freed and given to someone else, and what the device's ATC had been told.

Ground truth and host facts for the report, never seen by a policy. The node files a small record
for each page it frees (``freed_page``); the oracle calls ``exposure`` when it counts a UAF, and
the story is told then, from that record and from the SMMU's state at that instant, so a DMA that
is not a UAF costs nothing here. Sans-IO: plain data; the runtime writes ``uaf-trace.jsonl`` and
``ats-stress explain`` prints one story as a timeline.

What a story says (one JSON object; times in scenario seconds):

- ``sid``, ``iova`` (the model's IOVA page number in its domain, ``slot``, shifted:
  iova = slot << PAGE_SHIFT), ``page`` (the physical page number) and ``mapping`` (the id of the
  mapping the stale translation came from);
- ``unmap``: the unmap that freed the page (its id, CPU, domain and ASID, ``arrived_s`` when it
  was asked for, ``started_s`` when its CPU cleared the PTE and entered the flush, ``returned_s``
  when it returned, ``err`` what its flush returned); in lazy mode ``flush`` is the flush of the
  whole domain that covered it (``unmap.returned_s`` is then dma_unmap's own return, before it);
- ``sync_codes``: each CMD_SYNC (COMPLETION_WAIT, wait descriptor) that flush waited on: when it
  was written, when the wait ended, what it returned (0, -110 -ETIMEDOUT, -5 -EIO); None when the
  policy reports none (only the flush drivers say what each wait returned: ``SyncReturned``);
- ``flush_returned_s`` (the flush that covered the page returned), ``freed_s`` (the page went back
  to the allocator), ``reallocated_s`` and ``reallocated_to`` (the page's first new mapping after
  that, if any), ``dma_s`` (the translated request reached memory);
- ``atc``: every translated request in the model comes from an ATC hit, and the entry was filled
  before the unmap began (the unmap clears the PTE first, and a Translation Completion cannot
  overtake the Invalidate Request behind it on the link). ``invalidation`` says what the device
  had been told when it sent the request: ``pending`` (it had received an Invalidate Request for
  the page and not processed it: held while hung, in progress while slowed by chaos), ``kept`` (it
  answered one without dropping the entry: a lying device) or ``not-received``; then ``queued``
  says where an ATC_INV for the page still waits in a command queue (queue, entries ahead of it
  from CONS), and ``outstanding`` how many Invalidate Requests to the device are unanswered;
- ``device.faulty_since_s``: when its latest fault began (ground truth; None: a healthy device).

Bounded: the first ``MAX_STORIES`` exposures of the node, then only the first of each stream; the
records of the ``MAX_FREED`` latest frees (a UAF through a page freed before them is told without
its unmap, and says so).
"""

from __future__ import annotations

from collections import deque
from itertools import islice

from ats_stress.device_actors.pcie import MSG_TRANSLATED_KEPT, MSG_TRANSLATED_PENDING

from .spec import ATC_INV_SIZE_ALL, CMDQ_OP_ATC_INV, PAGE_SHIFT

#: stories kept per node: the first this many exposures, then the first of each stream
MAX_STORIES = 1000
#: freed pages whose record is kept (the latest ones)
MAX_FREED = 1 << 15
#: queue entries looked through for an ATC_INV still waiting, per queue
MAX_QUEUE_SCAN = 4096

# a freed page's record: a list, so its reallocation can be filled in when it happens
(R_UNMAP, R_CPU, R_DOM, R_ARRIVED, R_STARTED, R_RETURNED, R_ERR, R_SYNCS, R_FLUSH, R_SLOT, R_PA, R_FREED,
 R_REALLOC) = range(13)


class UafTrace:
    """One node's freed-page records and the stories told from them."""

    def __init__(self, node, max_stories: int | None = None, max_freed: int | None = None):
        self.node = node
        self.max_stories = MAX_STORIES if max_stories is None else max_stories
        self.max_freed = MAX_FREED if max_freed is None else max_freed
        self.freed: dict[int, list] = {}  # mapping tag -> record of the free
        self.order: deque[int] = deque()  # tags in the order freed (the oldest record goes first)
        self.last_free: dict[int, list] = {}  # page -> record of its latest free, until it is mapped again
        #: lazy mode: domain -> its latest completed flush (id, cpu, started, returned, err, syncs)
        self.last_flush: dict[int, tuple] = {}
        self.stories: list[dict] = []
        self.told: set[int] = set()  # streams with a story
        self.exposures = 0
        self.records_dropped = 0
        #: set by the node around a translated request whose entry the device had been told about
        self.inv_seen = 0

    # --- the node's hooks -------------------------------------------------------------------------

    def freed_page(self, now: float, job, d, slot: int, pa: int, tag: int, returned: float, err: int,
                   flush: tuple | None = None) -> None:
        """Page ``pa`` of mapping ``tag`` (IOVA ``slot`` of domain ``d``, unmapped by ``job``) went back
        to the allocator: after ``PageAllocator.release``, which maps the IOVA again at once, to the
        page at the head of the free list. Once per freed page: keep it cheap."""
        rec = [job.id, job.cpu, job.dom, job.arrived, job.started, returned, err, job.syncs, flush, slot, pa, now,
               None]
        freed = self.freed
        freed[tag] = rec
        order = self.order
        order.append(tag)
        if len(freed) > self.max_freed:
            old = freed.pop(order.popleft())
            self.records_dropped += 1
            if self.last_free.get(old[R_PA]) is old:
                del self.last_free[old[R_PA]]
        last_free = self.last_free
        last_free[pa] = rec
        prev = last_free.pop(d.pt[slot][0], None)
        if prev is not None:
            prev[R_REALLOC] = (now, d.pt[slot][1], job.dom, slot)

    def flush_done(self, now: float, job, err: int) -> tuple:
        """Lazy mode: a flush of a whole domain returned; what its frees point at."""
        flush = (job.id, job.cpu, job.started, now, err, job.syncs)
        self.last_flush[job.dom] = flush
        return flush

    # --- the oracle's hook -------------------------------------------------------------------------

    def exposure(self, sid: int, pa: int, tag: int, now: float, owner: int | None) -> None:
        """The oracle counted a UAF exposure: tell its story if it is one of the kept ones."""
        self.exposures += 1
        first = sid not in self.told
        if not first and len(self.stories) >= self.max_stories:
            return
        self.told.add(sid)
        self.stories.append(self._story(sid, pa, tag, now, owner, first))

    def export(self) -> dict:
        return {"stories": list(self.stories), "exposures": self.exposures, "records_dropped": self.records_dropped}

    # --- telling it ---------------------------------------------------------------------------------

    def _story(self, sid: int, pa: int, tag: int, now: float, owner: int | None, first: bool) -> dict:
        node = self.node
        st: dict = {"smmu": node.spec.index, "exposure": self.exposures, "first_of_stream": first, "sid": sid,
                    "dma_s": now, "page": pa, "mapping": tag}
        rec = self.freed.get(tag)
        slot = None
        if rec is None:
            st.update(iova=None, domain=None, asid=None, unmap=None, flush=None, sync_codes=None,
                      flush_returned_s=None, freed_s=None, reallocated_s=None, reallocated_to=None,
                      note=f"the page was freed before the latest {self.max_freed} frees, whose records are kept")
        else:
            slot = rec[R_SLOT]
            dom = rec[R_DOM]
            asid = node.domains[dom].spec.asid
            flush = rec[R_FLUSH]
            syncs = flush[5] if flush is not None else rec[R_SYNCS]
            realloc = rec[R_REALLOC]
            st.update(iova=slot << PAGE_SHIFT, domain=dom, asid=asid,
                      unmap={"id": rec[R_UNMAP], "cpu": rec[R_CPU], "domain": dom, "asid": asid,
                             "arrived_s": rec[R_ARRIVED], "started_s": rec[R_STARTED],
                             "returned_s": rec[R_RETURNED], "err": rec[R_ERR]},
                      flush=None if flush is None else {"id": flush[0], "cpu": flush[1], "started_s": flush[2],
                                                        "returned_s": flush[3], "err": flush[4]},
                      sync_codes=None if syncs is None else [
                          {"issued_s": None if issued < 0 else issued, "returned_s": ret, "code": code}
                          for issued, ret, code in syncs],
                      flush_returned_s=flush[3] if flush is not None else rec[R_RETURNED],
                      freed_s=rec[R_FREED],
                      reallocated_s=None if realloc is None else realloc[0],
                      reallocated_to=None if realloc is None else {
                          "domain": realloc[2], "asid": node.domains[realloc[2]].spec.asid,
                          "iova": realloc[3] << PAGE_SHIFT, "mapping": realloc[1]})
            if syncs is None:
                st["note"] = ("the policy reports no return code per CMD_SYNC (only the flush drivers yield "
                              "SyncReturned)")
        st["page_owner_now"] = owner
        st["atc"] = self._atc(sid, slot)
        st["device"] = {"faulty_since_s": node.oracle.fault_start(sid, now), "fenced": sid in node.oracle.fenced}
        return st

    def _atc(self, sid: int, slot: int | None) -> dict:
        seen = self.inv_seen
        atc: dict = {"hit": True, "invalidation": "pending" if seen == MSG_TRANSLATED_PENDING else
                     "kept" if seen == MSG_TRANSLATED_KEPT else "not-received", "queued": None}
        smmu = self.node.smmu
        if slot is not None:
            for q in smmu.queues:
                for i, c in enumerate(islice(q.cmds, MAX_QUEUE_SCAN)):
                    if c.op == CMDQ_OP_ATC_INV and c.sid == sid and (
                            c.size >= ATC_INV_SIZE_ALL or c.addr <= slot < c.addr + (1 << c.size)):
                        atc["queued"] = {"queue": q.index, "ahead": i, "queue_halted": bool(q.err)}
                        break
                if atc["queued"] is not None:
                    break
        held = (smmu.itag_holder.get(sid) or {}).values()
        atc["outstanding"] = len(held)
        atc["oldest_outstanding_sent_s"] = min((r.sent_at for r in held), default=None)
        return atc
