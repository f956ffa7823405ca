"""The device actor: a thin Ray shell around one EndpointGroup of many endpoints.

A group holds ``topology.endpoints_per_actor`` endpoints; an endpoint is never a process. The live
event loop (clock, timer heap, batched msgpack transport) is ``LiveShell``
(``cluster/runtime/live.py``); this class builds the group, routes upstream messages to the SMMU
actor owning each StreamID, and applies the endpoint chaos steps (``EndpointGroup.apply_fault`` /
``end_fault``) at their times. The runtime applies ``ray.remote`` to it (cluster/runtime/startup.py).

This file and iommu_actor/actor.py are the only modules of the two model packages that may import
Ray, asyncio or time.
"""

from __future__ import annotations

from typing import Any

from ats_stress.cluster.runtime.live import LiveShell, bucket_by_sid, node_location
from ats_stress.cluster.results.sampler import group_row
from ats_stress.cluster.results.summary import group_stats

from .endpoint import EndpointGroup


class DeviceActor(LiveShell):
    kind = "device"

    def __init__(self, index: int, endpoints: list[tuple[int, int]], group_kwargs: dict,
                 sid_node: dict[int, int], metrics_bind: str | None = None,
                 labels: dict[str, str] | None = None):
        super().__init__(index)
        self.group = EndpointGroup(index, [tuple(e) for e in endpoints], **group_kwargs)
        self.model = self.group
        self.sid_node = sid_node
        self.single = len(set(sid_node.values())) == 1
        self.only = next(iter(sid_node.values())) if self.single else 0
        self.labels = dict(labels or {})
        self.target: str | None = None
        if metrics_bind:  # a Prometheus exporter of this actor's model (off unless asked for)
            self.start_exporter("device", metrics_bind, self.group, self.labels)

    def ready(self) -> dict[str, Any]:
        return {**node_location(), "target": self.target}

    def route(self, msgs: list) -> dict[int, list]:
        if self.single:
            return {self.only: msgs}
        return bucket_by_sid(msgs, self.sid_node)

    def apply_chaos(self, now: float, action: tuple) -> None:
        _, step, phase, fault, sids, params = action
        group = self.group
        for sid in sids:
            if sid not in group.by_sid:
                continue
            if phase == "start":
                group.apply_fault(now, sid, fault, params, step)
            else:
                group.end_fault(now, sid, step)

    async def progress(self) -> dict[str, Any]:
        self.set_exporter_time(self.last)
        return {**self.progress_base(), "group": group_stats(self.group)}

    def sample_row(self, now: float) -> dict[str, Any]:
        return group_row(self.group, now)

    async def stats(self, final: bool = False) -> dict[str, Any]:
        now = self.end_time()
        self.set_exporter_time(now)
        return {"group": group_stats(self.group), "transport": self.transport_stats(), "end_s": now,
                "samples": self.take_samples()}
