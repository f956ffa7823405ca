"""Feeding a recorded trace's unmaps into the model, one at a time (``workload.trace``).

The runtime owns the file: ``cluster/scenario/trace.py`` reads it line by line and maps each unmap
onto the topology; the node gets plain values (``SmmuNode.replay_unmap``). Whatever the trace's
length, one unmap is pending at a time: the next is read when the previous one is handed in.

- sim: ``SimReplay`` keeps one pending unmap on the event loop for the whole run (all SMMUs).
- ray: each SMMU actor keeps its own (``iommu_actor/actor.py``), reading the file for its own
  domains only; the actors run on the driver's node, where the file is.
"""

from __future__ import annotations

from ats_stress.cluster.scenario.trace import TraceSpec, replay


class SimReplay:
    """The trace's unmaps on the sim runtime's event loop."""

    def __init__(self, world, spec: TraceSpec):
        self.world = world
        self.it = replay(spec)
        for node in world.nodes:
            node.start_replay(spec.bin_s)

    def start(self) -> None:
        self._next()

    def _next(self) -> None:
        ev = next(self.it, None)
        if ev is not None:
            self.world.loop.at(ev.at, self._fire, ev)

    def _fire(self, t: float, ev) -> None:
        self.world.nodes[ev.smmu].replay_unmap(t, ev.cpu, ev.dom, ev.base, ev.log2, ev.capped)
        self.world._flush_node(ev.smmu)
        self._next()


#: the live SMMU actor's heap tag kind of a pending trace unmap
TRACE = "trace"


class LiveReplay:
    """One live SMMU actor's share of the trace (the unmaps of its domains): one pending at a time
    on the actor's timer heap, pushed through ``push(at, tag)``."""

    def __init__(self, spec: TraceSpec, smmu: int, node, push):
        self.it = replay(spec, smmu)
        self.node = node
        self.push = push
        node.start_replay(spec.bin_s)

    def next(self) -> None:
        ev = next(self.it, None)
        if ev is not None:
            self.push(ev.at, (TRACE, ev))

    def fire(self, t: float, ev) -> None:
        self.node.replay_unmap(t, ev.cpu, ev.dom, ev.base, ev.log2, ev.capped)
        self.next()
