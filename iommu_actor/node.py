"""One SMMU with the host software above it, and the recovery policy that drives its queues.

The host software: domains, page tables, the page allocator, the submitting CPUs, the unmap
workload, the flush mode (strict, or dma-iommu's lazy flush queue: ``flushq.py``) and the PCI /
IOMMU core's reset path (``reset.py``).

Sans-IO, like everything in this package: the runtime calls ``start``, ``on_messages`` and
``on_timer`` with the scenario time, then ``drain()`` for the PCIe messages to deliver and the
timers to arm. Ground truth goes to the oracle object the runtime passes in; the policy only ever
receives ``iommu_actor.policy`` events.

A CPU runs one job at a time, to the end (the flush path is synchronous and may not sleep): an
unmap (strict: the driver's iotlb_sync for its range; lazy: queue the IOVA, and flush the domain
first when this CPU's ring is full) or a lazy flush of a whole domain (the flush queue's timer,
run on the CPU that armed it). Other work for that CPU waits its turn: that is the healthy stall.
"""

from __future__ import annotations

import random
from collections import deque

from ats_stress.device_actors.pcie import (
    FLR_FAILS,
    FLR_OK,
    MSG_FLR_DONE,
    MSG_INV_CPL,
    MSG_PRESENCE,
    MSG_PRESENCE_QUERY,
    MSG_TRANS_REQ,
    MSG_TRANSLATED,
    MSG_TRANSLATED_KEPT,
    MSG_TRANSLATED_PENDING,
    MSG_UNTRANSLATED,
)

from .bad_action import bad_action, refused
from .cmdq import INV_OUTSTANDING
from .cpus import T_FQ, CpuJobs
from .flushq import FlushQueue
from .host import UNMAP, Domain, Job, NodeSpec, PageAllocator
from .oracle import BY_POLICY
from .policy import (
    AckCmdqError,
    CmdqError,
    CmdqSpace,
    CompleteUnmap,
    DisableAts,
    EventRecord,
    LocalIrqRestore,
    LocalIrqSave,
    Note,
    Policy,
    PresenceReply,
    QueryPresence,
    ReportBroken,
    ResetDevice,
    ScrubQueuedAtcInv,
    SetBusMaster,
    SetTimer,
    SmmuRegisters,
    SpinEnd,
    Submit,
    SyncDone,
    SyncReturned,
    TimerFired,
    WaitCmdqSpace,
    WriteSte,
)
from .replay import ReplayJobs
from .reset import T_CORE, ResetPath
from .smmu import Smmu
from .spec import (
    CMDQ_OP_CMD_SYNC,
    EVT_NAMES,
    STRTAB_STE_0_CFG_S1_TRANS,
    STRTAB_STE_1_EATS_TRANS,
)
from .stats import Histogram
from .uaftrace import UafTrace

# timer tags: (kind, arg)
T_ARRIVAL = 0
T_HW = 1
T_POLICY = 2
T_STORM = 3

#: Log lines and event records kept per node (the rest are only counted).
MAX_LOG_LINES = 200

class SmmuNode(CpuJobs, ReplayJobs):
    """Host software + SMMU + policy. The runtime's only handle on the SMMU side."""

    def __init__(self, spec: NodeSpec, policy: Policy, oracle):
        self.spec = spec
        self.policy = policy
        self.oracle = oracle
        self.rng = random.Random(f"{spec.seed}:smmu:{spec.index}")
        self.now = 0.0
        self.outbox: list[tuple] = []
        self.timers: list[tuple[float, tuple]] = []
        self._events: deque = deque()
        self._pumping = False
        self.stopped = False
        self.storm_factor = 1.0  # an invalidation storm multiplies the unmap rate
        self._storm_gen = 0
        self.lazy = spec.flush == "lazy"

        self.domains = [Domain(d, spec.pages_per_domain, FlushQueue(i, spec.cpus) if self.lazy else None)
                        for i, d in enumerate(spec.domains)]
        self.smmu = Smmu(self, command_queues=spec.command_queues,
                         invalidate_queue_depth=spec.invalidate_queue_depth,
                         atc_inv_completion_timeout=policy.hw_inv_timeout(spec.atc_inv_completion_timeout),
                         page_tables={d.spec.asid: d.pt for d in self.domains},
                         inv_timeout_action=policy.inv_timeout_action, fence_waits=policy.fence_waits,
                         cmdq_entries=spec.cmdq_entries)
        policy.regs = SmmuRegisters(self.smmu)
        for d in self.domains:
            for sid in d.spec.sids:
                self.smmu.add_stream(sid, STRTAB_STE_0_CFG_S1_TRANS, STRTAB_STE_1_EATS_TRANS, d.spec.asid)
        self.core = ResetPath(self)
        self.ste_writer: dict[int, str] = {}  # who wrote each STE last: the policy or the core

        #: the story of each UAF exposure (the oracle tells it when it counts one)
        self.uaf_trace = UafTrace(self)
        oracle.trace = self.uaf_trace
        self.pages = PageAllocator(spec.index, spec.tag_stride, oracle)
        for d in self.domains:
            for slot in range(spec.pages_per_domain):
                self.pages.map(d, slot)
        for _ in range(spec.spare_pages):
            self.pages.free.append(self.pages.new_page())

        self.cpu_current: list[Job | None] = [None] * spec.cpus
        self.cpu_pending: list[deque[Job]] = [deque() for _ in range(spec.cpus)]
        self.inflight: dict[int, Job] = {}
        self._next_job = 0

        # statistics (ground-truth split of healthy/affected is for reporting only)
        self.unmaps_arrived = 0
        self.unmaps_skipped = 0  # no mapped page left in the chosen domain
        self.latencies_healthy: list[float] = []
        self.latencies_affected: list[float] = []
        self.completion_errors: dict[int, int] = {}
        self.sync_returns: dict[int, int] = {}
        # interrupts: each CPU's local_irq_save depth and since when they are off (-1: on)
        self.irq_depth = [0] * spec.cpus
        self.irqs_off_at = [-1.0] * spec.cpus
        #: the host turns a flushing CPU's interrupts off for its whole flush (Policy.irqs_off_windows)
        self.auto_irqs = policy.irqs_off_wait and policy.irqs_off_windows == "flush"
        self.irq_cpu = spec.gerror_irq_cpu  # -1: an idle CPU takes them at once
        self.held_irqs: list[tuple[float, str, object]] = []  # (raised, "gerror"/"event"/"fault", event)
        self.lockup_s = 0.0  # CPU-seconds with interrupts off (closed windows)
        self.irqs_off_max_s = 0.0  # the longest single interrupts-off window
        self.flush_max_s = 0.0  # the longest time one CPU stayed inside one flush (non-preemptible)
        self.irq_delay_max = {"gerror": 0.0, "event": 0.0}  # raised -> taken, by interrupt
        self.irqs_taken = {"gerror": 0, "event": 0}
        self.irqs_late = {"gerror": 0, "event": 0}  # taken later than raised: the CPU had interrupts off
        # command-queue room: writes waiting in the host, and drivers waiting to hear of room
        self.parked: dict[int, deque] = {}  # queue -> (cmds, since) in the order written
        self.space_waiters: dict[int, list] = {}  # queue -> [entries, token, since, until]
        self.space_due: set[int] = set()  # queues whose CONS moved on while someone waited
        self.cmdq_full_waits = 0  # writes that found their queue full (drivers' waits and the host's)
        self.cmdq_full_wait_s = 0.0
        self.notes: dict[str, int] = {}
        self.log: list[str] = []
        self.event_records: list[dict] = []
        self.messages_in = 0
        self.flushes = 0  # lazy: flushes of a whole domain that completed
        self.iovas_flushed = 0  # lazy: IOVAs those flushes released
        self.flush_latencies: list[float] = []
        #: (scenario second, unmap latency, affected) samples for reports, one per completion
        self.latency_trace: list[tuple[float, float, bool]] = []
        #: software-visible unmap duration (arrival to completion), by affected (True) / healthy (False)
        self.unmap_duration = {False: Histogram(), True: Histogram()}

    # --- the runtime's interface ---------------------------------------------------------------

    def start(self, now: float) -> None:
        self.now = now
        if self.spec.unmaps_per_s > 0:
            self._arm_arrival()

    def stop(self) -> None:
        """No more workload arrivals (the run has reached its duration)."""
        self.stopped = True

    def drain(self) -> tuple[list[tuple], list[tuple[float, tuple]]]:
        out, self.outbox = self.outbox, []
        timers, self.timers = self.timers, []
        return out, timers

    def on_timer(self, now: float, tag: tuple) -> None:
        self.now = now
        kind = tag[0]
        if kind == T_ARRIVAL:
            if not self.stopped:
                self._arrival()
                self._arm_arrival()
        elif kind == T_STORM:
            if not self.stopped and tag[1] == self._storm_gen and self.storm_factor > 1.0:
                self._arrival()
                self._arm_storm()
        elif kind == T_HW:
            self.smmu.on_hw_timeout(tag[1], now)
        elif kind == T_POLICY:
            self._events.append(TimerFired(tag[1]))
        elif kind == T_FQ:
            self._fq_timer(tag[1])
        elif kind == T_CORE:
            self.core.poll_timeout(tag[1])
        self._pump()

    def on_messages(self, now: float, batch) -> None:
        self.now = now
        smmu = self.smmu
        translated = smmu.translated_request
        self.messages_in += len(batch)
        for m in batch:
            kind = m[0]
            if kind == MSG_TRANSLATED:
                translated(m[1], m[2], m[3], m[4])
            elif kind == MSG_INV_CPL:
                smmu.inv_completion(m[1], m[2], now)
            elif kind == MSG_TRANS_REQ:
                smmu.translation_request(m[1], m[2])
            elif kind == MSG_UNTRANSLATED:
                smmu.untranslated_request(m[1], m[2])
            elif kind == MSG_FLR_DONE:
                self.core.flr_done(m[1], bool(m[2]), m[3])
            elif kind == MSG_PRESENCE:
                self._events.append(PresenceReply(m[1], bool(m[2])))
            elif kind == MSG_TRANSLATED_PENDING or kind == MSG_TRANSLATED_KEPT:
                # the same TLP; the kind says what the device had been told, for the UAF's story
                trace = self.uaf_trace
                trace.inv_seen = kind
                smmu.translated_request(m[1], m[2], m[3], m[4])
                trace.inv_seen = 0
        core = self.core
        if self._events or core.due or core.ats_waiting or self.space_due:  # else the pump has nothing to do
            self._pump()

    def chaos_reset(self, now: float, sid: int, ok: bool) -> None:
        """A chaos ``reset`` step: AER, sysfs or VFIO resetting the device (pci_reset_function)."""
        self.now = now
        self.core.reset(sid, FLR_OK if ok else FLR_FAILS)
        self._pump()

    def post(self, event) -> None:
        """An event for the policy (from the core), handled at the next pump."""
        self._events.append(event)

    # --- SmmuPorts: what the hardware does to the world ---------------------------------------

    def send(self, msg: tuple) -> None:
        self.outbox.append(msg)

    def hw_timer(self, at: float, queue: int) -> None:
        self.timers.append((at, (T_HW, queue)))

    def sync_done(self, queue: int, token: int) -> None:
        if self.core.owns(token):
            self.core.sync_done(token)
        else:
            self._events.append(SyncDone(queue, token))

    def cmdq_error(self, queue: int, cerror: int, token: int, ite_sid: int) -> None:
        if ite_sid >= 0:  # the stream whose invalidation the hardware gave up (ground truth on SMMUv3)
            self.oracle.on_unanswered(ite_sid, self.now)
        ev = CmdqError(queue, cerror, token, ite_sid if self.policy.hw_reports_ite_sid else -1)
        if self.policy.fence_waits:  # SMMUv3: GERROR.CMDQ_ERR, a hard IRQ (arm_smmu_gerror_handler)
            self._raise_irq("gerror", ev)
        else:  # VT-d: the spinning submitter reads DMA_FSTS_ITE itself (qi_check_fault), no interrupt
            self._events.append(ev)
            self.core.ite(queue)

    def cmdq_space(self, queue: int) -> None:
        self.space_due.add(queue)

    def event(self, evt_id: int, sid: int, addr: int) -> None:
        if evt_id in _LOGGED_EVENTS:  # IOTLB_INV_TIMEOUT: the hardware gave an invalidation of ``sid`` up
            self.oracle.on_unanswered(sid, self.now)
            if len(self.event_records) < MAX_LOG_LINES:
                self.event_records.append({"event": EVT_NAMES.get(evt_id, hex(evt_id)), "sid": sid, "at_s": self.now})
        if self.policy.wants_events:  # the event queue's interrupt (arm_smmu_evtq_thread, AMD's event log)
            self._raise_irq("event" if evt_id in _LOGGED_EVENTS else "fault", EventRecord(evt_id, sid, addr))

    def ste_effective(self, sid: int, config: int, eats: int) -> None:
        self.oracle.on_ste_effective(sid, config, eats, self.now, self.ste_writer.get(sid, BY_POLICY))

    def memory_access(self, sid: int, addr: int, pa: int, tag: int) -> None:
        self.oracle.on_memory_access(sid, pa, tag, self.now)

    def blocked(self, sid: int, addr: int, pa: int, tag: int) -> None:
        self.oracle.on_blocked(sid)

    def untranslated(self, sid: int, addr: int, pa: int, tag: int) -> None:
        self.oracle.on_untranslated(sid, pa)

    # --- host software: pages and the workload ---------------------------------------------------

    def apply_storm(self, now: float, factor: float) -> None:
        """An invalidation storm begins: unmaps arrive ``factor`` times as often."""
        self.now = now
        self.storm_factor = factor
        self._storm_gen += 1
        if self.spec.unmaps_per_s > 0:
            self._arm_storm()

    def end_storm(self, now: float) -> None:
        self.now = now
        self.storm_factor = 1.0
        self._storm_gen += 1

    def _arm_storm(self) -> None:
        # the extra arrivals are a Poisson process of their own, (factor - 1) x the base rate
        rate = self.spec.unmaps_per_s * (self.storm_factor - 1.0)
        self.timers.append((self.now + self.rng.expovariate(rate), (T_STORM, self._storm_gen)))

    def _arm_arrival(self) -> None:
        self.timers.append((self.now + self.rng.expovariate(self.spec.unmaps_per_s), (T_ARRIVAL, 0)))

    def _arrival(self) -> None:
        rng = self.rng
        self.unmaps_arrived += 1
        cpu = rng.randrange(self.spec.cpus)
        di = rng.randrange(len(self.domains))
        d = self.domains[di]
        if not d.mapped:
            self.unmaps_skipped += 1
            return
        slot = d.take_mapped(rng.randrange(len(d.mapped)))
        self._queue_job(Job(self._new_job_id(), UNMAP, cpu, di, slot, self.now))

    def _new_job_id(self) -> int:
        self._next_job += 1
        return self._next_job - 1

    # --- the policy -----------------------------------------------------------------------------

    def _pump(self) -> None:
        if self._pumping:
            return
        self._pumping = True
        try:
            events = self._events
            handle = self.policy.handle
            apply = self._apply
            core = self.core
            while True:
                while events:
                    for action in handle(self.now, events.popleft()):
                        try:
                            apply(action)
                        except Exception as exc:  # a plug-in's bad action: say which field, not IndexError
                            raise (bad_action(self, action, exc) or exc) from exc
                if core.ats_waiting:
                    core.poll()  # ATS disables whose invalidations' readers are out
                if core.due:
                    core.run_due()
                if self.space_due:
                    self._serve_space()
                if not events and not core.due:
                    break
        finally:
            self._pumping = False

    def _apply(self, a) -> None:
        t = type(a)
        if t is Submit:
            if a.queue < 0:  # Python would index from the end: a plug-in's bug, not the last queue
                raise refused(self, a)
            self.write_cmds(a.queue, a.cmds)
        elif t is SetTimer:
            if not a.at >= self.now:  # in the past, or not a time: a relative delay is the usual slip
                raise refused(self, a)
            self.timers.append((a.at, (T_POLICY, a.token)))
        elif t is CompleteUnmap:
            self._complete(a.unmap, a.err)
        elif t is Note:
            self.notes[a.kind] = self.notes.get(a.kind, 0) + 1
            if a.kind == "sync_timeout":
                self._timeout_symptoms()
            if a.since >= 0:  # the policy's own account of when its verdict's CMD_SYNC was issued
                self.oracle.on_verdict(a.sid, a.since)
            if a.text and len(self.log) < MAX_LOG_LINES:
                self.log.append(f"[{self.now:.6f}] smmu{self.spec.index}: {a.text}")
        elif t is SyncReturned:
            self.sync_returns[a.code] = self.sync_returns.get(a.code, 0) + 1
            j = self.cpu_current[a.cpu] if a.cpu >= 0 else None
            if j is not None:  # filed under the CPU's flush, for the story of a UAF
                if j.syncs is None:
                    j.syncs = []
                j.syncs.append((a.issued, self.now, a.code))
        elif t is AckCmdqError:
            self.smmu.ack_cmdq_error(a.queue, self.now)
        elif t is ScrubQueuedAtcInv:
            self.smmu.scrub_atc_inv(a.queue, a.targets)
        elif t is WriteSte:
            self.smmu.write_ste(a.sid, a.config, a.eats)
            self.ste_writer[a.sid] = BY_POLICY
        elif t is ResetDevice:
            self.core.reset(a.sid)
        elif t is DisableAts:
            if a.sid not in self.smmu.ste_mem:
                raise refused(self, a)
            if a.deferred:
                self.core.disable_ats(a.sid)
            else:
                self.core.ats_off_now(a.sid)
        elif t is SetBusMaster:
            if a.sid not in self.smmu.ste_mem:
                raise refused(self, a)
            self.core.set_bus_master(a.sid, a.enable)
        elif t is ReportBroken:
            if a.sid not in self.smmu.ste_mem:
                raise refused(self, a)
            self.core.report_broken(a.sid)
        elif t is QueryPresence:
            if a.sid not in self.smmu.ste_mem:
                raise refused(self, a)
            self.outbox.append((MSG_PRESENCE_QUERY, a.sid, 0, 0, 0))
        elif t is LocalIrqSave or t is LocalIrqRestore:
            if a.cpu < 0:  # as for a queue: not the last CPU
                raise refused(self, a)
            if t is LocalIrqSave:
                self.irq_save(a.cpu)
            else:
                self.irq_restore(a.cpu)
        elif t is WaitCmdqSpace:
            self._wait_space(a)
        elif t is SpinEnd:
            j = self.cpu_current[a.cpu]
            if j is not None and j.spin_end < 0:
                j.spin_end = self.now
            self.irq_restore(a.cpu, every=True)  # it sleeps: interrupts on, the CPU free for other work
        else:
            raise TypeError(f"policy {self.policy.name!r} returned {a!r}, which is not an action")

    def _timeout_symptoms(self) -> None:
        """A CMD_SYNC wait timed out in software: each device with an Invalidate Request unanswered
        for the whole software timeout is one the driver could have caught (the oracle keeps the
        faulty ones: ``Oracle.catchable``)."""
        timeout = self.policy.poll_timeout()
        if timeout is None:
            return
        before = self.now - timeout + 1e-9
        for q in self.smmu.queues:
            for rec in q.inflight:
                if rec.state == INV_OUTSTANDING and rec.sent_at <= before:
                    self.oracle.on_unanswered(rec.sid, self.now)

    # --- interrupts --------------------------------------------------------------------------

    def irq_save(self, cpu: int) -> None:
        """local_irq_save(): nests; the outermost one starts an interrupts-off window."""
        d = self.irq_depth[cpu]
        self.irq_depth[cpu] = d + 1
        if d == 0:
            self.irqs_off_at[cpu] = self.now

    def irq_restore(self, cpu: int, every: bool = False) -> None:
        """local_irq_restore() (``every``: all the way out): the outermost one ends the window, and
        the interrupts held for this CPU are taken."""
        d = self.irq_depth[cpu]
        if d == 0:
            return
        self.irq_depth[cpu] = 0 if every else d - 1
        if self.irq_depth[cpu]:
            return
        spun = self.now - self.irqs_off_at[cpu]
        self.irqs_off_at[cpu] = -1.0
        self.lockup_s += spun
        if spun > self.irqs_off_max_s:
            self.irqs_off_max_s = spun
        if cpu == self.irq_cpu and self.held_irqs:
            held, self.held_irqs = self.held_irqs, []
            for raised, kind, ev in held:
                self._take_irq(kind, ev, raised)

    def _raise_irq(self, kind: str, ev) -> None:
        """An interrupt routed to ``host.gerror_irq_cpu``: taken now if that CPU's interrupts are on,
        else when they next are (the IOMMU keeps its queue halted meanwhile)."""
        cpu = self.irq_cpu
        if cpu >= 0 and self.irq_depth[cpu]:
            self.held_irqs.append((self.now, kind, ev))
        else:
            self._take_irq(kind, ev, self.now)

    def _take_irq(self, kind: str, ev, raised: float) -> None:
        """Counted for GERROR and the logged event records (IOTLB_INV_TIMEOUT), not every fault record."""
        if kind in self.irqs_taken:
            delay = self.now - raised
            self.irqs_taken[kind] += 1
            if delay > 0:
                self.irqs_late[kind] += 1
                if delay > self.irq_delay_max[kind]:
                    self.irq_delay_max[kind] = delay
        self._events.append(ev)

    # --- command-queue room -----------------------------------------------------------------------

    def write_cmds(self, queue: int, cmds) -> None:
        """Write to a queue; a write that does not fit (or would jump writes already waiting) waits
        in the host until CONS has moved on far enough."""
        q = self.smmu.queues[queue]
        parked = self.parked.get(queue)
        if not parked and len(cmds) <= q.capacity - q.prod + q.cons:  # capacity - depth
            self.smmu.submit(queue, cmds, self.now)
            return
        if len(cmds) > q.capacity:
            raise ValueError(f"policy {self.policy.name!r} wrote {len(cmds)} commands at once to command queue "
                             f"{queue}, which has {q.capacity} entries (hardware.cmdq_entries)")
        self.cmdq_full_waits += 1
        self.parked.setdefault(queue, deque()).append((tuple(cmds), self.now))
        self._watch(queue)

    def _wait_space(self, a: WaitCmdqSpace) -> None:
        q = self.smmu.queues[a.queue]
        if not 0 < a.entries <= q.capacity:  # room that can never be free
            raise refused(self, a)
        if q.capacity - q.depth >= a.entries and not self.parked.get(a.queue):
            self._events.append(CmdqSpace(a.queue, a.token))  # room already: the driver reads CONS again
            return
        self.space_waiters.setdefault(a.queue, []).append([a.entries, a.token, self.now, a.until])
        self._watch(a.queue)

    def _watch(self, queue: int) -> None:
        """Ask the SMMU to say when the smallest room anyone waits for on ``queue`` is free."""
        parked = self.parked.get(queue)
        waiters = self.space_waiters.get(queue)
        need = [len(parked[0][0])] if parked else []
        need += [w[0] for w in waiters or ()]
        self.smmu.queues[queue].space_watch = min(need) if need else 0

    def _serve_space(self) -> None:
        """CONS moved on where someone waited: write the waiting writes that fit now, in order, then
        wake the drivers waiting for room (each reads CONS again; one may take the room first)."""
        now = self.now
        for queue in sorted(self.space_due):
            q = self.smmu.queues[queue]
            parked = self.parked.get(queue)
            while parked and len(parked[0][0]) <= q.capacity - q.depth:
                cmds, since = parked.popleft()
                self.cmdq_full_wait_s += now - since
                self.smmu.submit(queue, cmds, now)
            waiters = self.space_waiters.get(queue) or []
            still = []
            for w in waiters:
                entries, token, since, until = w
                if now >= until:  # the driver stopped waiting (and said so with its own timer)
                    self.cmdq_full_wait_s += until - since
                elif not parked and entries <= q.capacity - q.depth:
                    self.cmdq_full_wait_s += now - since
                    self._events.append(CmdqSpace(queue, token))
                else:
                    still.append(w)
            self.space_waiters[queue] = still
            self._watch(queue)
        self.space_due.clear()

    def open_cmdq_wait_s(self, now: float) -> float:
        """Time spent so far by the waits for room still open at ``now``."""
        t = sum(now - since for parked in self.parked.values() for _, since in parked)
        return t + sum(min(now, w[3]) - w[2] for ws in self.space_waiters.values() for w in ws)

    # --- results ---------------------------------------------------------------------------

    def invalidating(self, sid: int) -> bool:
        """Whether a CPU is inside a flush that invalidates ``sid`` (a reader of the arm_smmu_invs
        rwlock, which pci_disable_ats() in an attach waits out)."""
        return any(sid in j.sids for j in self.inflight.values())

    def open_unmap_ages(self, now: float) -> tuple[list[float], list[float]]:
        """Ages of unmaps not complete at ``now`` (started or waiting for their CPU): healthy, affected."""
        healthy: list[float] = []
        affected: list[float] = []
        for cpu in range(self.spec.cpus):
            cur = self.cpu_current[cpu]
            for j in ([cur] if cur is not None else []) + list(self.cpu_pending[cpu]):
                if j.kind == UNMAP:
                    (affected if self.domains[j.dom].spec.affected else healthy).append(now - j.arrived)
        return healthy, affected

    def open_irqs_off(self, now: float) -> list[float]:
        """How long each CPU whose interrupts are off at ``now`` has had them off."""
        return [now - t for t in self.irqs_off_at if t >= 0]

    def open_spin_s(self, now: float) -> float:
        """Lockup time of the interrupts-off windows still open at ``now``."""
        return sum(self.open_irqs_off(now))

    def open_flushes(self, now: float) -> list[float]:
        """How long each CPU still inside a flush at ``now`` has been inside it."""
        return [(j.spin_end if j.spin_end >= 0 else now) - j.started for j in self.cpu_current
                if j is not None and j.started >= 0 and j.id in self.inflight]

    def pending_iovas(self) -> int:
        """Lazy mode: IOVAs still waiting in flush queues."""
        return sum(d.fq.pending() for d in self.domains if d.fq is not None) if self.lazy else 0

    def sync_count(self) -> int:
        return self.smmu.cmd_counts.get(CMDQ_OP_CMD_SYNC, 0)


#: event records the node keeps one by one for the summary (the others are only counted)
_LOGGED_EVENTS = frozenset(k for k, v in EVT_NAMES.items() if v == "IOTLB_INV_TIMEOUT")
