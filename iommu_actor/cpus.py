"""The host CPUs of one SMMU node and the jobs they run: strict unmaps, lazy unmaps, lazy flushes.

Mixed into ``SmmuNode``. A CPU runs one job at a time, to the end: an unmap (strict: the driver's
iotlb_sync for its range; lazy: ``queue_iova()``, which flushes the whole domain first when this
CPU's ring is full) or a lazy flush of a whole domain (``fq_flush_timeout()`` on the CPU that armed
the timer, before that CPU's next process-context unmap). It spins, with interrupts off where the
driver does, from the flush's first command to its return (or, where the policy says so, in one
window per poll: ``Policy.irqs_off_windows``); the time with interrupts off is the lockup, the time
inside the flush ``flush_max_s``.
"""

from __future__ import annotations

from .flushq import IOVA_DEFAULT_FQ_TIMEOUT
from .host import FLUSH, UNMAP, Domain, Job
from .policy import UnmapStart
from .spec import ATC_INV_SIZE_ALL, ETIMEDOUT

#: the node's timer tag of a domain's flush-queue timer
T_FQ = 4


class CpuJobs:
    """What SmmuNode does with a job: start it on its CPU, hand its flush to the policy, finish it."""

    def _queue_job(self, job: Job, first: bool = False) -> None:
        if self.cpu_current[job.cpu] is None:
            self._start_job(job)
        elif first:  # the flush-queue timer runs (softirq) before the next process-context unmap
            self.cpu_pending[job.cpu].appendleft(job)
        else:
            self.cpu_pending[job.cpu].append(job)

    def _flush_sids(self, d: Domain) -> tuple[int, ...]:
        """The domain's ATS masters as the driver lists them: not those in the blocking domain."""
        blocked = self.core.blocked
        return tuple(s for s in d.spec.sids if s not in blocked) if blocked else d.spec.sids

    def _start_job(self, job: Job) -> None:
        d = self.domains[job.dom]
        job.started = self.now
        self.cpu_current[job.cpu] = job
        if job.kind == FLUSH:
            d.fq.timer_on = False  # fq_flush_timeout(): the next unmap arms the timer again
            self._start_flush(job, d)
            return
        if job.pages is None:
            job.pa, job.tag = d.pt[job.slot]
            d.pt[job.slot] = None  # the page-table update: the PTE is gone from now on
        else:
            self._clear_span(d, job)  # a replayed trace's span of pages (replay.py)
        if not self.lazy:
            self.inflight[job.id] = job
            job.sids = self._flush_sids(d)
            if self.auto_irqs:
                self.irq_save(job.cpu)
            self._events.append(UnmapStart(job.cpu, job.id, d.spec.asid, job.slot, job.size, job.sids))
            return
        # queue_iova(): dma_unmap returns at once unless this CPU's ring is full
        if job.pages is None:
            self.oracle.on_unmap_returned(job.tag)
        else:
            for _, _, tag in job.pages:
                self.oracle.on_unmap_returned(tag)
        self._free_entries(d, d.fq.free(job.cpu), self.uaf_trace.last_flush.get(job.dom))
        if d.fq.full(job.cpu):
            job.flushing = True
            self._start_flush(job, d)
            return
        self._queue_iova(job, d)
        self._job_done(job)

    def _start_flush(self, job: Job, d: Domain) -> None:
        """fq_flush_iotlb(): the driver's flush_iotlb_all for the whole domain."""
        d.fq.flush_started()
        self.inflight[job.id] = job
        job.sids = self._flush_sids(d)
        if self.auto_irqs:
            self.irq_save(job.cpu)
        self._events.append(UnmapStart(job.cpu, job.id, d.spec.asid, 0, ATC_INV_SIZE_ALL, job.sids, full=True))

    def _queue_iova(self, job: Job, d: Domain) -> None:
        # one entry per unmapped IOVA range, as queue_iova(); a replayed span carries its pages
        if d.fq.add(job.cpu, (job.slot, job.pa, job.tag, job, self.now) if job.pages is None
                    else (-1, job.pages, -1, job, self.now)):
            self.timers.append((self.now + IOVA_DEFAULT_FQ_TIMEOUT, (T_FQ, job.dom)))

    def _fq_timer(self, dom: int) -> None:
        d = self.domains[dom]
        self._queue_job(Job(self._new_job_id(), FLUSH, d.fq.timer_cpu, dom, -1, self.now), first=True)

    def _free_entries(self, d: Domain, entries: list, flush: tuple | None) -> int:
        """Free what a completed lazy flush (``flush``, as UafTrace.flush_done has it) covers."""
        for slot, pa, tag, job, returned in entries:
            if slot < 0:  # a replayed span: pa holds its pages
                for s, p, t in pa:
                    self._free_page(d, job, s, p, t, returned, 0, flush)
            else:
                self._free_page(d, job, slot, pa, tag, returned, 0, flush)
        return len(entries)

    def _free_page(self, d: Domain, job: Job, slot: int, pa: int, tag: int, returned: float, err: int,
                   flush: tuple | None = None) -> None:
        """The flush covering this page returned: free it (and map its IOVA again), and tell the UAF trace."""
        self.pages.release(d, slot, pa, tag)
        self.uaf_trace.freed_page(self.now, job, d, slot, pa, tag, returned, err, flush)

    def _complete(self, jid: int, err: int) -> None:
        """The policy's CompleteUnmap: the driver's flush for job ``jid`` returned ``err``."""
        job = self.inflight.pop(jid, None)
        if job is None:
            raise RuntimeError(f"policy {self.policy.name!r} completed flush {jid} twice or never started it")
        if err:
            self.completion_errors[err] = self.completion_errors.get(err, 0) + 1
            if err == -ETIMEDOUT and "sync_timeout" not in self.notes and not self.sync_returns:
                # a policy that says its timeouts only by what its flush returns (no Note, no
                # SyncReturned: a driver that reports its syncs may return -ETIMEDOUT for another
                # reason, VT-d for a removed device): the devices unanswered for its whole timeout
                # are as catchable as after a Note
                self._timeout_symptoms()
        d = self.domains[job.dom]
        if job.kind == UNMAP and not self.lazy:
            if job.pages is None:
                self._free_page(d, job, job.slot, job.pa, job.tag, self.now, err)
            else:
                for s, p, t in job.pages:
                    self._free_page(d, job, s, p, t, self.now, err)
        else:  # a lazy flush returned: what it covers is freed (this CPU's ring, or all of them)
            d.fq.flush_finished()
            flush = self.uaf_trace.flush_done(self.now, job, err)
            freed = self._free_entries(d, d.fq.free(job.cpu) if job.kind == UNMAP else d.fq.free_all(), flush)
            self.flushes += 1
            self.iovas_flushed += freed
            self.flush_latencies.append(self.now - job.started)
            if job.kind == UNMAP:
                self._queue_iova(job, d)
        self._job_done(job)

    def _job_done(self, job: Job) -> None:
        now = self.now
        if job.kind == FLUSH or job.flushing or not self.lazy:  # the CPU was inside the driver's flush
            inside = (job.spin_end if job.spin_end >= 0 else now) - job.started
            if inside > self.flush_max_s:
                self.flush_max_s = inside
            if self.auto_irqs:
                self.irq_restore(job.cpu)
        if job.kind == UNMAP:
            affected = self.domains[job.dom].spec.affected
            latency = now - job.arrived
            (self.latencies_affected if affected else self.latencies_healthy).append(latency)
            self.latency_trace.append((now, latency, affected))
            self.unmap_duration[affected].observe(latency)
        self.cpu_current[job.cpu] = None
        pending = self.cpu_pending[job.cpu]
        if pending:
            self._start_job(pending.popleft())
