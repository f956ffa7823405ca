"""One SMMU with the host software above it, and the recovery policy that drives its queues.

The host software: domains, page tables, the page allocator, the submitting CPUs, the unmap
workload.

Sans-IO, like everything in this package: the runtime calls ``start``, ``on_messages`` and
``on_timer`` with the scenario time, then ``drain()`` for the PCIe messages to deliver and the
timers to arm. Ground truth goes to the oracle object the runtime passes in; the policy only ever
receives ``iommu_actor.policy`` events.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass

from ats_stress.device_actors.pcie import (
    MSG_FLR,
    MSG_FLR_DONE,
    MSG_INV_CPL,
    MSG_PRESENCE,
    MSG_PRESENCE_QUERY,
    MSG_TRANS_REQ,
    MSG_TRANSLATED,
)

from .policy import (
    AckCmdqError,
    CmdqError,
    CompleteUnmap,
    EventRecord,
    Note,
    Policy,
    PresenceReply,
    QueryPresence,
    ResetDevice,
    ResetDone,
    ScrubQueuedAtcInv,
    SetTimer,
    SmmuRegisters,
    SpinEnd,
    Submit,
    SyncDone,
    TimerFired,
    UnmapStart,
    WriteSte,
)
from .smmu import Smmu
from .spec import CMDQ_OP_CMD_SYNC, STRTAB_STE_0_CFG_S1_TRANS, STRTAB_STE_1_EATS_TRANS
from .stats import Histogram

# timer tags: (kind, arg)
T_ARRIVAL = 0
T_HW = 1
T_POLICY = 2
T_STORM = 3

#: Log lines kept per node (the rest are only counted).
MAX_LOG_LINES = 200


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

    @property
    def sids(self) -> tuple[int, ...]:
        return tuple(s for d in self.domains for s in d.sids)


class Unmap:
    __slots__ = ("id", "cpu", "dom", "slot", "pa", "tag", "arrived", "started", "spin_end")

    def __init__(self, uid: int, cpu: int, dom: int, slot: int, arrived: float):
        self.id = uid
        self.cpu = cpu
        self.dom = dom
        self.slot = slot
        self.pa = -1
        self.tag = -1
        self.arrived = arrived
        self.started = -1.0
        self.spin_end = -1.0


class _Domain:
    __slots__ = ("spec", "pt", "mapped", "pos")

    def __init__(self, spec: DomainSpec, pages: int):
        self.spec = spec
        self.pt: list = [None] * pages  # IOVA page -> (pa, tag) or None
        self.mapped: list[int] = []  # IOVA pages with a PTE and no unmap pending
        self.pos: dict[int, int] = {}

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


class SmmuNode:
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

        self.domains = [_Domain(d, spec.pages_per_domain) for d in spec.domains]
        self.smmu = Smmu(self, command_queues=spec.command_queues,
                         invalidate_queue_depth=spec.invalidate_queue_depth,
                         atc_inv_completion_timeout=spec.atc_inv_completion_timeout,
                         page_tables={d.spec.asid: d.pt for d in self.domains})
        policy.regs = SmmuRegisters(self.smmu)
        for d in self.domains:
            for sid in d.spec.sids:
                self.smmu.add_stream(sid, STRTAB_STE_0_CFG_S1_TRANS, STRTAB_STE_1_EATS_TRANS, d.spec.asid)

        self._next_tag = 0
        self._next_pa = 0
        self.free_pages: deque[int] = deque()
        for d in self.domains:
            for slot in range(spec.pages_per_domain):
                self._map(d, slot)
        for _ in range(spec.spare_pages):
            self.free_pages.append(self._new_pa())

        self.cpu_current: list[Unmap | None] = [None] * spec.cpus
        self.cpu_pending: list[deque[Unmap]] = [deque() for _ in range(spec.cpus)]
        self.inflight: dict[int, Unmap] = {}
        self._next_unmap = 0

        # statistics (ground-truth split of healthy/affected is for reporting only)
        self.unmaps_arrived = 0
        self.unmaps_skipped = 0  # no mapped page left in the chosen domain
        self.latencies_healthy: list[float] = []
        self.latencies_affected: list[float] = []
        self.completion_errors: dict[int, int] = {}
        self.lockup_s = 0.0
        self.lockup_max_s = 0.0  # the longest one irqs-off spin (one unmap's flush)
        self.notes: dict[str, int] = {}
        self.log: list[str] = []
        self.resets_requested = 0
        self.messages_in = 0
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
        self._pump()

    def on_messages(self, now: float, batch) -> None:
        self.now = now
        smmu = self.smmu
        self.messages_in += len(batch)
        for m in batch:
            kind = m[0]
            if kind == MSG_TRANSLATED:
                smmu.translated_request(m[1], m[2], m[3], m[4])
            elif kind == MSG_INV_CPL:
                smmu.inv_completion(m[1], m[2], now)
            elif kind == MSG_TRANS_REQ:
                smmu.translation_request(m[1], m[2])
            elif kind == MSG_FLR_DONE:
                ok = bool(m[2])
                self.oracle.on_reset(m[1], ok, m[3], now)
                self._events.append(ResetDone(m[1], ok, m[3]))
            elif kind == MSG_PRESENCE:
                self._events.append(PresenceReply(m[1], bool(m[2])))
        self._pump()

    # --- SmmuPorts: what the hardware does to the world ---------------------------------------

    def send(self, msg: tuple) -> None:
        self.outbox.append(msg)

    def hw_timer(self, at: float, queue: int) -> None:
        self.timers.append((at, (T_HW, queue)))

    def sync_done(self, queue: int, token: int) -> None:
        self._events.append(SyncDone(queue, token))

    def cmdq_error(self, queue: int, cerror: int, token: int, ite_sid: int) -> None:
        self._events.append(CmdqError(queue, cerror, token,
                                      ite_sid if self.policy.hw_reports_ite_sid else -1))

    def event(self, evt_id: int, sid: int, addr: int) -> None:
        if self.policy.wants_events:
            self._events.append(EventRecord(evt_id, sid, addr))

    def ste_effective(self, sid: int, config: int, eats: int) -> None:
        self.oracle.on_ste_effective(sid, config, eats, self.now)

    def memory_access(self, sid: int, addr: int, pa: int, tag: int) -> None:
        self.oracle.on_memory_access(sid, pa, tag, self.now)

    def blocked(self, sid: int, addr: int, pa: int, tag: int) -> None:
        self.oracle.on_blocked(sid)

    # --- host software -------------------------------------------------------------------------

    def _new_pa(self) -> int:
        pa = self._next_pa * self.spec.tag_stride + self.spec.index
        self._next_pa += 1
        return pa

    def _map(self, d: _Domain, slot: int) -> None:
        pa = self.free_pages.popleft() if self.free_pages else self._new_pa()
        tag = self._next_tag * self.spec.tag_stride + self.spec.index
        self._next_tag += 1
        d.pt[slot] = (pa, tag)
        d.add_mapped(slot)
        self.oracle.on_map(tag, pa)

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
        u = Unmap(self._next_unmap, cpu, di, slot, self.now)
        self._next_unmap += 1
        if self.cpu_current[cpu] is None:
            self._start_unmap(u)
        else:
            self.cpu_pending[cpu].append(u)

    def _start_unmap(self, u: Unmap) -> None:
        d = self.domains[u.dom]
        u.pa, u.tag = d.pt[u.slot]
        d.pt[u.slot] = None  # the page-table update: the PTE is gone from now on
        u.started = self.now
        self.cpu_current[u.cpu] = u
        self.inflight[u.id] = u
        self._events.append(UnmapStart(u.cpu, u.id, d.spec.asid, u.slot, 0, d.spec.sids))

    def _complete_unmap(self, uid: int, err: int) -> None:
        u = self.inflight.pop(uid, None)
        if u is None:
            raise RuntimeError(f"policy {self.policy.name!r} completed unmap {uid} twice or never started it")
        now = self.now
        d = self.domains[u.dom]
        latency = now - u.arrived
        if d.spec.affected:
            self.latencies_affected.append(latency)
        else:
            self.latencies_healthy.append(latency)
        self.latency_trace.append((now, latency, d.spec.affected))
        self.unmap_duration[d.spec.affected].observe(latency)
        if err:
            self.completion_errors[err] = self.completion_errors.get(err, 0) + 1
        if self.policy.irqs_off_wait:
            end = u.spin_end if u.spin_end >= 0 else now
            self.lockup_s += end - u.started
            self.lockup_max_s = max(self.lockup_max_s, end - u.started)
        self.oracle.on_unmap_complete(u.tag, u.pa)
        self.free_pages.append(u.pa)  # freed: FIFO reuse, so it goes to whoever maps next
        self._map(d, u.slot)  # the IOVA is mapped again, to a page from the allocator
        self.cpu_current[u.cpu] = None
        pending = self.cpu_pending[u.cpu]
        if pending:
            self._start_unmap(pending.popleft())

    def _pump(self) -> None:
        if self._pumping:
            return
        self._pumping = True
        try:
            events = self._events
            handle = self.policy.handle
            while events:
                for action in handle(self.now, events.popleft()):
                    self._apply(action)
        finally:
            self._pumping = False

    def _apply(self, a) -> None:
        t = type(a)
        if t is Submit:
            self.smmu.submit(a.queue, a.cmds, self.now)
        elif t is SetTimer:
            self.timers.append((max(a.at, self.now), (T_POLICY, a.token)))
        elif t is CompleteUnmap:
            self._complete_unmap(a.unmap, a.err)
        elif t is Note:
            self.notes[a.kind] = self.notes.get(a.kind, 0) + 1
            if a.since >= 0:  # the policy's own account of when its verdict's CMD_SYNC was issued
                self.oracle.on_verdict(a.sid, a.since)
            if a.text and len(self.log) < MAX_LOG_LINES:
                self.log.append(f"[{self.now:.6f}] smmu{self.spec.index}: {a.text}")
        elif t is AckCmdqError:
            self.smmu.ack_cmdq_error(a.queue, self.now)
        elif t is ScrubQueuedAtcInv:
            self.smmu.scrub_atc_inv(a.queue, a.targets)
        elif t is WriteSte:
            self.smmu.write_ste(a.sid, a.config, a.eats)
        elif t is ResetDevice:
            self.resets_requested += 1
            self.outbox.append((MSG_FLR, a.sid, 0, 0, 0))
        elif t is QueryPresence:
            self.outbox.append((MSG_PRESENCE_QUERY, a.sid, 0, 0, 0))
        elif t is SpinEnd:
            u = self.cpu_current[a.cpu]
            if u is not None and u.spin_end < 0:
                u.spin_end = self.now
        else:
            raise TypeError(f"policy {self.policy.name!r} returned {a!r}, which is not an action")

    # --- results ---------------------------------------------------------------------------

    def open_unmap_ages(self, now: float) -> tuple[list[float], list[float]]:
        """Ages of unmaps not complete at ``now`` (started or waiting for their CPU): healthy, affected."""
        healthy, affected = [], []
        for cpu in range(self.spec.cpus):
            cur = self.cpu_current[cpu]
            for u in ([cur] if cur is not None else []) + list(self.cpu_pending[cpu]):
                (affected if self.domains[u.dom].spec.affected else healthy).append(now - u.arrived)
        return healthy, affected

    def open_spins(self, now: float) -> list[float]:
        """How long each unmap still spinning with interrupts off at ``now`` has spun so far."""
        if not self.policy.irqs_off_wait:
            return []
        return [(u.spin_end if u.spin_end >= 0 else now) - u.started for u in self.cpu_current if u is not None]

    def open_spin_s(self, now: float) -> float:
        """Lockup time of the unmaps still spinning at ``now``."""
        return sum(self.open_spins(now))

    def sync_count(self) -> int:
        return self.smmu.cmd_counts.get(CMDQ_OP_CMD_SYNC, 0)
