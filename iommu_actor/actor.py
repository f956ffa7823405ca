"""The SMMU actor: a thin Ray shell around one SmmuNode and its safety oracle.

One per SMMU (``topology.smmus``). It owns the node (stream table, command queues, host software,
policy) and the Oracle for that SMMU's streams. The live event loop (clock, timer heap, batched
msgpack transport) is ``LiveShell`` (``cluster/runtime/live.py``); this class only builds the
model, routes the downstream messages to the device actor hosting each StreamID, and answers for
the root complex when a device actor is gone. The runtime applies ``ray.remote`` to it (cluster/runtime/startup.py).

This file and device_actors/actor.py are the only modules of the two model packages that may
import Ray, asyncio or time.
"""

from __future__ import annotations

from typing import Any

from ats_stress.cluster.results.sampler import MAX_TRACE_POINTS, smmu_row, thin
from ats_stress.cluster.results.summary import node_stats, oracle_stats
from ats_stress.cluster.runtime.live import (
    LOCAL,
    LiveShell,
    bucket_by_sid,
    node_location,
)
from ats_stress.cluster.runtime.replay import TRACE, LiveReplay
from ats_stress.device_actors.pcie import (
    MSG_FLR,
    MSG_FLR_DONE,
    MSG_PRESENCE,
    MSG_PRESENCE_QUERY,
)

from .host import NodeSpec
from .node import SmmuNode
from .oracle import Oracle
from .policy import HwInfo, make_policy


class SmmuActor(LiveShell):
    kind = "smmu"

    def __init__(self, spec: NodeSpec, policy_name: str, policy_params: dict, hw: dict,
                 fault_starts: dict[int, list[float]], sid_group: dict[int, int], group_sids: dict[int, list[int]],
                 flr_time: float, metrics_bind: str | None = None, labels: dict[str, str] | None = None,
                 plugins: tuple = (), trace=None):
        super().__init__(spec.index)
        self.load_plugins(plugins)  # --policy-file policies, as the driver registered them
        self.oracle = Oracle(fault_starts)
        self.node = SmmuNode(spec, make_policy(policy_name, policy_params, HwInfo(**hw)), self.oracle)
        self.model = self.node
        self.probe_echoes = True  # measure the live device round trip (cluster/runtime/transport.py)
        self.sid_group = sid_group
        self.group_sids = group_sids  # group -> its sids that belong to this SMMU
        self.flr_time = flr_time
        self.single = len(set(sid_group.values())) == 1
        self.lost_sids: dict[int, float] = {}
        self.lost_sids_groups: set[int] = set()
        self.synthesised = 0
        self.fences_seen = 0
        self.labels = dict(labels or {})
        self.metrics_bind = metrics_bind
        self.target: str | None = None
        if metrics_bind:  # a Prometheus exporter of this actor's model (off unless asked for)
            self.start_exporter("smmu", metrics_bind, self.node, self.oracle, self.labels)
        self.replay = None
        if trace is not None:  # workload.trace: this SMMU's unmaps, read from the file as the run goes
            self.replay = LiveReplay(trace, spec.index, self.node, self._push)
            self.replay.next()

    def _fire(self, t: float, tag) -> None:
        if tag[0] == TRACE:  # the trace's next unmap is due
            self.last = t
            self.fired += 1
            self.replay.fire(t, tag[1])
            self._drain()
            return
        super()._fire(t, tag)

    def ready(self) -> dict[str, Any]:
        return {**node_location(), "target": self.target}

    def route(self, msgs: list) -> dict[int, list]:
        sid_group = self.sid_group
        if self.single:
            g = sid_group.get(msgs[0][1])
            return {g: msgs} if g is not None else {}
        return bucket_by_sid(msgs, sid_group)

    def _drain(self) -> None:
        super()._drain()
        fences = self.oracle.fences
        if len(fences) > self.fences_seen:
            # the model stamps a late timer with its due time; the wall clock says when the fence
            # really happened (scenario seconds), for the timer-accuracy figures
            wall = self.clock()
            for f in fences[self.fences_seen:]:
                f["wall_at_s"] = wall
            self.fences_seen = len(fences)

    def on_dead(self, dest: int, msgs: list) -> None:
        """The device actor is gone; its endpoints behave like surprise-removed devices (as the sim
        runtime makes them): the root complex completes a config read with "absent", an FLR comes
        back failed after flr_time, everything else is lost."""
        self.dropped_dead += len(msgs)
        now = self.last
        for m in msgs:
            kind = m[0]
            if kind == MSG_PRESENCE_QUERY:
                self.synthesised += 1
                self._push(now, (LOCAL, (MSG_PRESENCE, m[1], 0, 0, 0)))
            elif kind == MSG_FLR:
                self.synthesised += 1
                self._push(now + self.flr_time, (LOCAL, (MSG_FLR_DONE, m[1], 0, now, 0)))
            # config writes (ATS Enable, Bus Master Enable) to a device that is gone go nowhere
        if dest not in self.lost_sids_groups:
            self.lost_sids_groups.add(dest)
            for sid in self.group_sids.get(dest, ()):
                if sid not in self.lost_sids:
                    self.lost_sids[sid] = now
                    self.oracle.note_fault(sid, now)

    async def endpoints_lost(self, group: int, at: float) -> int:
        """The driver killed device actor ``group`` at scenario time ``at`` (chaos or node loss):
        its endpoints are surprise-removed; tell the oracle when their fault began."""
        self.lost_sids_groups.add(group)
        n = 0
        for sid in self.group_sids.get(group, ()):
            if sid not in self.lost_sids:
                self.lost_sids[sid] = at
                self.oracle.note_fault(sid, at)
                n += 1
        self.mark_dead(group)
        return n

    def apply_chaos(self, now: float, action: tuple) -> None:
        """The host's chaos steps: an invalidation storm, or a reset through the host's reset path."""
        _, _, phase, fault, sids, params = action
        node = self.node
        if fault == "storm":
            if phase == "start":
                node.apply_storm(now, params["factor"])
            else:
                node.end_storm(now)
        elif fault == "reset":
            for sid in sids:
                node.chaos_reset(now, sid, bool(params.get("ok", True)))

    async def progress(self) -> dict[str, Any]:
        self.set_exporter_time(self.last)
        node, oracle = self.node, self.oracle
        return {**self.progress_base(), "commands": sum(node.smmu.cmd_counts.values()),
                "syncs": node.sync_count(), "fenced": len(oracle.fenced), "uaf": oracle.uaf_exposures,
                "unmaps": len(node.latencies_healthy) + len(node.latencies_affected)}

    def sample_row(self, now: float) -> dict[str, Any]:
        return smmu_row(self.node, self.oracle, now)

    async def stats(self, final: bool = False) -> dict[str, Any]:
        """Everything so far; ``final``: also the unmap latency trace (thinned) for the plots."""
        now = self.end_time()
        self.set_exporter_time(now)
        transport = self.transport_stats()
        transport["synthesised_root_complex_replies"] = self.synthesised
        out = {"node": node_stats(self.node, now), "oracle": oracle_stats(self.oracle),
               "transport": transport, "end_s": now, "lost_sids": len(self.lost_sids),
               "samples": self.take_samples()}
        if final:
            out["latency_trace"] = thin(self.node.latency_trace, MAX_TRACE_POINTS)
        return out
