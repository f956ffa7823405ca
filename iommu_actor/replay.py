"""Unmaps of a recorded trace, replayed: one span of IOVA pages per unmap, handed in as plain values.

Mixed into ``SmmuNode``. The runtime reads the trace (``cluster/scenario/trace.py``: the file, its
print formats, and how a traced IOVA and size become a domain, a slot base and a span) and calls
``replay_unmap`` at each unmap's time; nothing here reads a file or knows the trace's format.

An unmap of 2**log2 pages at slot ``base`` (naturally aligned, inside the domain's page table):

- Its pages are the span's slots that are mapped and not already being unmapped (every slot of a
  domain has a PTE except while an unmap of it is in flight, as in the synthetic workload). They
  are taken at once, their PTEs cleared when the CPU starts the unmap, and freed (and mapped again,
  with new tags) when the driver's flush returns: in strict mode its own iotlb_sync, in lazy mode the
  flush-queue flush that covers its one queue_iova() entry.
- Its flush is the driver's for the whole span: ``UnmapStart(addr=base, size=log2)``, so every ATC_INV
  is sent with that span (``atc_inv_span`` keeps an aligned span as it is) and covers every page the
  unmap frees. The oracle's ground truth holds as for one page: a page is reported free only after a
  flush whose ATC_INVs covered it.
- A span whose slots are all in flight already (the trace's IOVAs fold onto the domain's
  ``pages_per_domain`` slots, so two IOVAs can land on one slot) still runs its flush, which costs
  what it costs, and frees nothing (``busy``).
"""

from __future__ import annotations

from .host import UNMAP, Domain, Job


class ReplayJobs:
    """What SmmuNode does with a replayed trace's unmap."""

    #: a replayed trace's counters (``start_replay``); None: the synthetic workload
    replay: dict | None = None
    replay_bin_s = 1.0

    def start_replay(self, bin_s: float) -> None:
        """Unmaps will come from a trace; count the offered ones in bins of ``bin_s`` scenario s."""
        self.replay_bin_s = bin_s
        self.replay = {"unmaps": 0, "pages": 0, "busy": 0, "capped": 0, "offered": {}}

    def replay_unmap(self, now: float, cpu: int, dom: int, base: int, log2: int, capped: bool = False) -> None:
        """CPU ``cpu`` unmaps the 2**``log2`` pages at slot ``base`` of domain ``dom`` (this node's
        index) and enters the driver's flush (or waits for its CPU, as every unmap does)."""
        self.now = now
        span = 1 << log2
        pages = self.spec.pages_per_domain
        if not (0 <= dom < len(self.domains) and 0 <= cpu < self.spec.cpus and base >= 0 and base % span == 0
                and base + span <= pages):
            raise ValueError(f"replay_unmap: no span of {span} page(s) at slot {base} of domain {dom} on CPU {cpu} "
                             f"({len(self.domains)} domains of {pages} pages, {self.spec.cpus} CPUs)")
        if self.replay is None:
            self.start_replay(self.replay_bin_s)
        r = self.replay
        d = self.domains[dom]
        pos = d.pos
        if span <= len(pos):
            slots = [s for s in range(base, base + span) if s in pos]
        else:
            slots = sorted(s for s in pos if base <= s < base + span)
        for s in slots:
            d.take_mapped(pos[s])
        self.unmaps_arrived += 1
        r["unmaps"] += 1
        r["pages"] += len(slots)
        r["busy"] += not slots
        r["capped"] += bool(capped)
        k = int(now // self.replay_bin_s)
        r["offered"][k] = r["offered"].get(k, 0) + 1
        job = Job(self._new_job_id(), UNMAP, cpu, dom, base, now)
        job.size = log2
        job.pages = slots
        self._queue_job(job)
        self._pump()

    def _clear_span(self, d: Domain, job: Job) -> None:
        """The page-table update of a span: each taken slot's PTE is gone from now on."""
        pt = d.pt
        taken = []
        for s in job.pages:
            pa, tag = pt[s]
            pt[s] = None
            taken.append((s, pa, tag))
        job.pages = taken
