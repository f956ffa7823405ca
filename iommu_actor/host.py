"""The host's side of one SMMU in plain data: domains, their page tables and mappings, the page
allocator, and the jobs its CPUs run (``node.py`` drives them)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from .flushq import FlushQueue

#: job kinds
UNMAP, FLUSH = 0, 1


@dataclass(frozen=True)
class DomainSpec:
    asid: int
    sids: tuple[int, ...]  # ATS-enabled masters attached to the domain
    affected: bool  # ground truth for the statistics only: a chaos step targets one of its masters


@dataclass(frozen=True)
class NodeSpec:
    """Everything one SMMU node needs, in plain values (built by cluster/scenario/plan.py)."""

    index: int
    domains: tuple[DomainSpec, ...]
    cpus: int
    command_queues: int
    invalidate_queue_depth: int
    atc_inv_completion_timeout: float
    pages_per_domain: int
    spare_pages: int
    unmaps_per_s: float
    seed: str
    tag_stride: int = 1  # mapping tags are index + k * tag_stride: unique across nodes
    flush: str = "strict"  # "strict" or "lazy" (host.flush, resolved against the policy)
    cmdq_entries: int = 1 << 16  # hardware.cmdq_entries, resolved against the driver
    gerror_irq_cpu: int = 0  # host.gerror_irq_cpu; -1: a CPU that runs no flushes ("idle")

    @property
    def sids(self) -> tuple[int, ...]:
        return tuple(s for d in self.domains for s in d.sids)


class Job:
    """One CPU's work item: an unmap, or a lazy flush of a whole domain."""

    __slots__ = ("id", "kind", "cpu", "dom", "slot", "pa", "tag", "arrived", "started", "spin_end", "flushing",
                 "sids", "size", "pages", "syncs")

    def __init__(self, jid: int, kind: int, cpu: int, dom: int, slot: int, arrived: float):
        self.id = jid
        self.kind = kind
        self.cpu = cpu
        self.dom = dom
        self.slot = slot
        self.pa = -1
        self.tag = -1
        self.arrived = arrived
        self.started = -1.0
        self.spin_end = -1.0
        self.flushing = False  # a lazy unmap flushing its domain because its CPU's ring is full
        self.sids: tuple[int, ...] = ()  # the ATS masters its flush invalidates (the invs readers)
        self.size = 0  # log2 of the pages the unmap covers from slot (a replayed trace: replay.py)
        self.pages = None  # a replayed span: its slots, then their (slot, pa, tag); None: the one page at slot
        self.syncs: list | None = None  # (issued, returned, code) of each CMD_SYNC its flush waited on


class Domain:
    __slots__ = ("spec", "pt", "mapped", "pos", "fq")

    def __init__(self, spec: DomainSpec, pages: int, fq: FlushQueue | None):
        self.spec = spec
        self.pt: list = [None] * pages  # IOVA page -> (pa, tag) or None
        self.mapped: list[int] = []  # IOVA pages with a PTE and no unmap pending
        self.pos: dict[int, int] = {}
        self.fq = fq

    def add_mapped(self, slot: int) -> None:
        self.pos[slot] = len(self.mapped)
        self.mapped.append(slot)

    def take_mapped(self, i: int) -> int:
        mapped = self.mapped
        slot = mapped[i]
        last = mapped.pop()
        if last != slot:
            mapped[i] = last
            self.pos[last] = i
        del self.pos[slot]
        return slot


class PageAllocator:
    """Physical pages and mapping tags: freed pages are reused first in, first out (so a freed page
    goes to whoever maps next, typically another domain); tags are unique across SMMU nodes."""

    def __init__(self, index: int, stride: int, oracle):
        self.index = index
        self.stride = stride
        self.oracle = oracle
        self.free: deque[int] = deque()
        self._next_pa = 0
        self._next_tag = 0

    def new_page(self) -> int:
        pa = self._next_pa * self.stride + self.index
        self._next_pa += 1
        return pa

    def map(self, d: Domain, slot: int) -> None:
        """Map IOVA page ``slot`` of ``d`` to a page from the allocator, with a new tag."""
        pa = self.free.popleft() if self.free else self.new_page()
        tag = self._next_tag * self.stride + self.index
        self._next_tag += 1
        d.pt[slot] = (pa, tag)
        d.add_mapped(slot)
        self.oracle.on_map(tag, pa)

    def release(self, d: Domain, slot: int, pa: int, tag: int) -> None:
        """The flush covering this IOVA is complete: free the page, map the IOVA again."""
        self.oracle.on_unmap_complete(tag, pa)
        self.free.append(pa)
        self.map(d, slot)
