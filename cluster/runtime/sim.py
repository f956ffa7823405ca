"""The ``sim`` runtime: the whole model in one process on virtual time.

A SimPy-sized event loop of ``(time, sequence, callback, argument)`` entries: a heap for timers, a
FIFO for PCIe batches; the sequence number makes ties deterministic, so a scenario and a seed give
the same run, bit for bit. PCIe messages travel in batches (everything one side emits in one step,
per destination) after ``hardware.link_latency``, in order, the way the ray runtime ships msgpack
batches.
"""

from __future__ import annotations

import time
from collections import deque
from heapq import heappop, heappush
from itertools import count
from typing import Any, Callable

from ats_stress.device_actors.endpoint import EndpointGroup
from ats_stress.iommu_actor.node import SmmuNode
from ats_stress.iommu_actor.policy import HwInfo, make_policy

from ats_stress.cluster.plugins import error_text
from ats_stress.cluster.scenario import Scenario, ScenarioError
from ats_stress.iommu_actor.oracle import Oracle
from ats_stress.cluster.scenario.plan import ChaosAction, Plan, build_plan
from ats_stress.cluster.runtime.wire import bucket_by_sid
from ats_stress.cluster.results.summary import build_summary, check_expectations, checkpoints, group_stats, node_stats, oracle_stats


class EventLoop:
    """Virtual time. ``at`` schedules, ``run`` pops in (time, sequence) order.

    Two queues make one order: a heap for timers, and a FIFO for PCIe batches (the world's flushes
    append them at ``now`` + ``hardware.link_latency``): they all travel the same latency, so they
    arrive in the order they were sent and need no heap. ``run``
    takes whichever head is earlier by (time, sequence): the same order one heap would give.
    An entry is ``(time, sequence, fn, arg, after)``: ``run`` calls ``fn(time, arg)``, then
    ``after()`` if there is one (a model's step, then the delivery of what it emitted).
    """

    __slots__ = ("heap", "fifo", "seq", "now", "events")

    # ``seq`` is an itertools.count: ``next(loop.seq)`` numbers an event (one C call, where an
    # attribute += 1 is two bytecodes and a store per event)

    def __init__(self) -> None:
        self.heap: list = []
        self.fifo: deque = deque()
        self.seq = count(1)
        self.now = 0.0
        self.events = 0

    def at(self, t: float, fn: Callable[[float, Any], None], arg: Any = None,
           after: Callable[[], None] | None = None) -> None:
        if t < self.now:
            raise ValueError(f"cannot schedule in the past ({t} < {self.now})")
        heappush(self.heap, (t, next(self.seq), fn, arg, after))

    def run(self, until: float) -> None:
        heap = self.heap
        fifo = self.fifo
        pop = heappop
        popleft = fifo.popleft
        n = 0
        try:
            while True:
                if fifo:
                    e = fifo[0]
                    if heap and heap[0] < e:  # (time, sequence): sequences are unique
                        e = heap[0]
                        if e[0] > until:
                            break
                        pop(heap)
                    else:
                        if e[0] > until:
                            break
                        popleft()
                elif heap:
                    e = heap[0]
                    if e[0] > until:
                        break
                    pop(heap)
                else:
                    break
                t = e[0]
                self.now = t
                e[2](t, e[3])
                if e[4] is not None:
                    e[4]()
                n += 1
        finally:
            self.events += n
        self.now = until


class SimWorld:
    """The plan's nodes and groups wired together through one EventLoop."""

    def __init__(self, plan: Plan):
        sc = plan.scenario
        self.plan = plan
        self.sc = sc
        self.loop = EventLoop()
        hw = HwInfo(command_queues=sc.hardware.command_queues, cpus=sc.topology.cpus,
                    invalidate_queue_depth=sc.topology.invalidate_queue_depth)
        self.oracles = []
        self.nodes = []
        for spec in plan.nodes:
            sids = set(spec.sids)
            oracle = Oracle({s: t for s, t in plan.fault_starts.items() if s in sids})
            self.oracles.append(oracle)
            self.nodes.append(SmmuNode(spec, make_policy(sc.policy.name, sc.policy.params(), hw), oracle))
        lat = sc.workload.inv_latency
        self.groups = [
            EndpointGroup(g.index, list(g.endpoints), atc_entries=sc.topology.atc_entries,
                          pages_per_domain=sc.topology.pages_per_domain,
                          dma_per_endpoint_per_s=sc.workload.dma_per_endpoint_per_s,
                          inv_latency_median=lat.median, inv_latency_p99=lat.p99,
                          flr_time=sc.hardware.flr_time, seed=plan.seed)
            for g in plan.groups]
        self.link = sc.hardware.link_latency
        self.sid_node = plan.sid_node
        self.sid_group = plan.sid_group
        # an event runs a node's or a group's step (its on_timer or on_messages), then its flush:
        # the delivery of what the step emitted (its timers on the heap, its messages after the link
        # latency, one batch per peer). The flushes are made once per node and group.
        self._flush_node_fns: list = []
        self._flush_group_fns: list = []
        for i in range(len(self.nodes)):
            self._flush_node_fns.append(self._make_node_flush(i))
        for i in range(len(self.groups)):
            self._flush_group_fns.append(self._make_group_flush(i))

    # callbacks ---------------------------------------------------------------------------------

    def _make_node_flush(self, i: int):
        node = self.nodes[i]
        loop = self.loop
        heap = loop.heap
        fifo = loop.fifo
        seq = loop.seq
        link = self.link
        sid_group = self.sid_group
        group_messages = [g.on_messages for g in self.groups]
        group_flushes = self._flush_group_fns  # filled once every flush exists
        single = len(self.groups) == 1
        on_timer = node.on_timer

        def flush():  # node.drain(), without fresh lists; most steps (DMA, a completion) emit nothing
            now = loop.now
            timers = node.timers
            if timers:
                node.timers = []
                for t, tag in timers:
                    if t < now:
                        raise ValueError(f"cannot schedule in the past ({t} < {now})")
                    heappush(heap, (t, next(seq), on_timer, tag, flush))
            msgs = node.outbox
            if msgs:
                node.outbox = []
                at = now + link
                if single:
                    fifo.append((at, next(seq), group_messages[0], msgs, group_flushes[0]))
                    return
                if len(msgs) == 1:  # one message (an Invalidate Request, a translation)
                    g = sid_group.get(msgs[0][1])
                    if g is not None:
                        fifo.append((at, next(seq), group_messages[g], msgs, group_flushes[g]))
                    return
                # a StreamID with no endpoint behind it (None): nobody answers
                for g, batch in bucket_by_sid(msgs, sid_group).items():
                    fifo.append((at, next(seq), group_messages[g], batch, group_flushes[g]))
        return flush

    def _make_group_flush(self, i: int):
        group = self.groups[i]
        loop = self.loop
        heap = loop.heap
        fifo = loop.fifo
        seq = loop.seq
        link = self.link
        sid_node = self.sid_node
        node_messages = [n.on_messages for n in self.nodes]
        node_flushes = self._flush_node_fns
        single = len(self.nodes) == 1
        on_timer = group.on_timer
        drain = group.drain

        def flush():
            msgs, timers = drain()
            now = loop.now
            for t, tag in timers:
                if t < now:
                    raise ValueError(f"cannot schedule in the past ({t} < {now})")
                heappush(heap, (t, next(seq), on_timer, tag, flush))
            if msgs:
                at = now + link
                if single or len(msgs) == 1:  # one node, or one message (a DMA, a completion)
                    n = 0 if single else sid_node[msgs[0][1]]
                    fifo.append((at, next(seq), node_messages[n], msgs, node_flushes[n]))
                    return
                for n, batch in bucket_by_sid(msgs, sid_node).items():
                    fifo.append((at, next(seq), node_messages[n], batch, node_flushes[n]))
        return flush

    def _flush_node(self, i: int) -> None:
        self._flush_node_fns[i]()

    def _flush_group(self, i: int) -> None:
        self._flush_group_fns[i]()

    def _chaos(self, t: float, action: ChaosAction) -> None:
        if action.fault == "storm":
            for n in action.params["smmus"]:
                if action.phase == "start":
                    self.nodes[n].apply_storm(t, action.params["factor"])
                else:
                    self.nodes[n].end_storm(t)
                self._flush_node(n)
            return
        if action.fault == "reset":  # AER, sysfs or VFIO: the host's reset path (pci_reset_function)
            for sid in action.sids:
                n = self.sid_node[sid]
                self.nodes[n].chaos_reset(t, sid, bool(action.params.get("ok", True)))
                self._flush_node(n)
            return
        touched = set()
        for sid in action.sids:
            g = self.sid_group[sid]
            group = self.groups[g]
            touched.add(g)
            if action.fault == "kill_actor":
                if action.phase == "start":  # the actor's endpoints vanish: a surprise removal
                    group.apply_fault(t, sid, "removed", {}, action.step)
            elif action.phase == "start":
                group.apply_fault(t, sid, action.fault, action.params, action.step)
            else:
                group.end_fault(t, sid, action.step)
        for g in sorted(touched):
            self._flush_group(g)

    # running -----------------------------------------------------------------------------------

    def start(self) -> None:
        for i, node in enumerate(self.nodes):
            node.start(0.0)
            self._flush_node(i)
        for i, group in enumerate(self.groups):
            group.start(0.0)
            self._flush_group(i)
        for action in self.plan.actions:
            self.loop.at(action.at, self._chaos, action)
        if self.plan.trace is not None:  # workload.trace: read as the run goes, one unmap ahead
            from .replay import SimReplay

            SimReplay(self, self.plan.trace).start()

    def stats(self, now: float) -> tuple[list[dict], list[dict], list[dict]]:
        return ([node_stats(n, now) for n in self.nodes], [oracle_stats(o) for o in self.oracles],
                [group_stats(g) for g in self.groups])


def run_sim(sc: Scenario, *, progress: Callable[[float, SimWorld], None] | None = None,
            progress_every: float = 1.0,
            sample: Callable[[float, SimWorld], None] | None = None) -> dict[str, Any]:
    """Run ``sc`` on virtual time and return its summary.

    ``progress`` (if given) is called every ``progress_every`` scenario seconds, and ``sample``
    (metrics and report sampling; it only reads the world) at 0 and at the same steps. An interruption
    (KeyboardInterrupt) ends the run early with status "interrupted"; the summary so far is returned.
    """
    plan = build_plan(sc)
    for action in plan.actions:  # bad input: said before the run, not when the step comes
        if action.fault == "kill_node":
            raise ScenarioError(f"chaos.{action.step}: kill_node needs the ray runtime on a multi-node cluster "
                                "(the sim runtime has no nodes)")
    world = SimWorld(plan)
    started = time.perf_counter()
    world.start()
    if sample is not None:
        sample(0.0, world)
    loop = world.loop
    status = "complete"
    error = None
    checks = checkpoints(sc)
    checked: list[dict] = []
    try:
        t = 0.0
        while t < sc.duration:
            step_end = min(sc.duration, t + progress_every)
            while checks and checks[0] <= step_end:
                at = checks.pop(0)
                loop.run(at)
                partial = build_summary(sc, "sim", *world.stats(at), sim_time=at, events=loop.events,
                                        wall_time=time.perf_counter() - started)
                checked += check_expectations(sc, partial, at=at)
            t = step_end
            loop.run(t)
            if progress is not None:
                progress(t, world)
            if sample is not None:
                sample(t, world)
    except KeyboardInterrupt:
        status = "interrupted"
    except Exception as exc:  # a defect: keep what was gathered, say what broke
        status = "failed"
        error = error_text(exc)  # with the plug-in's file and line when the error is its own
    else:
        error = None
    wall = time.perf_counter() - started
    now = loop.now
    nodes, oracles, groups = world.stats(now)
    return build_summary(sc, "sim", nodes, oracles, groups, sim_time=now, events=loop.events,
                         wall_time=wall, status=status, checkpoint_results=checked,
                         extra={"error": error} if status == "failed" else None)
