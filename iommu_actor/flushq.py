"""dma-iommu's flush queue (lazy mode): unmapped IOVAs wait here for one flush of their whole domain.

As drivers/iommu/dma-iommu.c does it, per domain (``iommu_dma_cookie``):

- each CPU has a ring of IOVA_DEFAULT_FQ_SIZE (256) slots; ``queue_iova()`` first frees what a
  finished flush already covers (``fq_ring_free_locked``), and when the ring is still full the
  unmapping CPU flushes the domain itself, synchronously, before it adds its entry;
- an entry records ``fq_flush_start_cnt`` when queued and is freed once ``fq_flush_finish_cnt``
  is above it: a flush covers exactly the entries queued before it started;
- the first entry arms the domain's timer (IOVA_DEFAULT_FQ_TIMEOUT, 10 ms) on that CPU; when it
  fires (``fq_flush_timeout``) it flushes the domain and frees every CPU's ring.

What waits is the IOVA and the page-table pages. The model frees the data page with its IOVA (the
oracle counts the window before it apart: ``Oracle.on_unmap_returned``).
"""

from __future__ import annotations

from collections import deque
from typing import Final

#: slots per CPU ring (IOVA_DEFAULT_FQ_SIZE); fq_full() leaves one free, as a ring does
IOVA_DEFAULT_FQ_SIZE: Final = 256
#: the flush timer (IOVA_DEFAULT_FQ_TIMEOUT, ms)
IOVA_DEFAULT_FQ_TIMEOUT: Final = 0.010


class FlushQueue:
    """The per-CPU rings, flush counters and timer of one domain."""

    __slots__ = ("dom", "rings", "start_cnt", "finish_cnt", "timer_on", "timer_cpu")

    def __init__(self, dom: int, cpus: int):
        self.dom = dom
        self.rings: list[deque] = [deque() for _ in range(cpus)]  # (counter, payload), oldest first
        self.start_cnt = 0  # fq_flush_start_cnt
        self.finish_cnt = 0  # fq_flush_finish_cnt
        self.timer_on = False  # fq_timer_on
        self.timer_cpu = -1

    def full(self, cpu: int) -> bool:
        """fq_full(): the ring has no free slot left."""
        return len(self.rings[cpu]) >= IOVA_DEFAULT_FQ_SIZE - 1

    def add(self, cpu: int, payload) -> bool:
        """fq_ring_add(): queue an unmapped IOVA; True when the caller must arm the timer."""
        self.rings[cpu].append((self.start_cnt, payload))
        if self.timer_on:
            return False
        self.timer_on = True
        self.timer_cpu = cpu
        return True

    def flush_started(self) -> None:
        self.start_cnt += 1

    def flush_finished(self) -> None:
        self.finish_cnt += 1

    def free(self, cpu: int) -> list:
        """fq_ring_free_locked(): the entries of one CPU's ring a finished flush covers."""
        ring = self.rings[cpu]
        out = []
        while ring and ring[0][0] < self.finish_cnt:
            out.append(ring.popleft()[1])
        return out

    def free_all(self) -> list:
        """fq_flush_timeout(): every CPU's ring, after the timer's flush."""
        out = []
        for cpu in range(len(self.rings)):
            out += self.free(cpu)
        return out

    def pending(self) -> int:
        return sum(len(r) for r in self.rings)
