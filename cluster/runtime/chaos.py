"""Ray-level chaos on a live run: ``kill_actor`` and ``kill_node``, and actors lost on their own.

The lost endpoints behave as surprise-removed: the SMMU actors answer for the root complex
(config reads "absent", FLRs fail) and the oracle records their fault start. ``ChaosKills`` is
mixed into ``LiveRun`` (``ray_runtime.py``); everything lost is listed in the summary's ``lost``.
"""

from __future__ import annotations

from .connect import last_line, say as _say
from .startup import _Actor


class ChaosKills:
    """What a live run does when an actor or a node goes, by chaos or by itself."""

    def write_targets(self) -> None:
        """The file_sd targets file, rewritten (atomically) whenever the set of live actors changes."""
        if self.targets_file is not None:
            from ats_stress.cluster.results.metrics import write_file_sd

            write_file_sd(self.targets_file, self.targets(alive_only=True))

    def _actor_died(self, a: _Actor, t: float, cause: str) -> None:
        if not a.alive:
            return
        self._record_lost(a, t, cause)
        if a.kind == "smmu":
            self.failure = f"SMMU actor {a.index} {cause}"
            return
        self._endpoints_lost(a, t)

    def _endpoints_lost(self, a: _Actor, t: float) -> None:
        for sid in a.endpoints:
            self.lost_endpoints.setdefault(sid, t)
        for s in self.smmus:
            if s.alive:
                s.handle.endpoints_lost.remote(a.index, t)

    def _kill_device(self, a: _Actor, t: float, cause: str) -> None:
        import ray

        if not a.alive:
            return
        try:
            ray.kill(a.handle, no_restart=True)
        except Exception:
            pass
        self._record_lost(a, t, cause)
        self._endpoints_lost(a, t)

    def _record_lost(self, a: _Actor, t: float, cause: str) -> None:
        """``a`` is gone: out of the Prometheus targets, into the summary's ``lost``."""
        a.alive = False
        self.write_targets()
        a.lost_cause = cause
        self.lost_actors.append({"kind": a.kind, "index": a.index, "node_id": a.info.get("node_id"),
                                 "at_s": t, "cause": cause, "endpoints": len(a.endpoints)})

    def _chaos_kill(self, action) -> None:
        groups = sorted({self.plan.sid_group[s] for s in action.sids})
        t = action.at
        if action.fault == "kill_actor":
            for g in groups:
                self._kill_device(self.devices[g], t, f"kill_actor (chaos.{action.step})")
            if not self.quiet:
                _say(f"  chaos.{action.step}: killed device actor(s) {groups} at t={t:g} s")
            return
        nodes = sorted({self.devices[g].info.get("node_id") for g in groups if self.devices[g].alive} - {None})
        smmu_nodes = {s.info.get("node_id") for s in self.smmus}
        for node in nodes:
            on_node = [d for d in self.devices if d.alive and d.info.get("node_id") == node]
            ip = on_node[0].info.get("node_ip") if on_node else None
            if self.node_killer is not None and node not in smmu_nodes and node != self.driver_node:
                how = "node killed by the node killer"
                try:
                    self.node_killer(node)
                except Exception as exc:
                    how = f"node killer failed ({last_line(exc)}); its device actors were killed instead"
                for d in on_node:
                    self._kill_device(d, t, f"kill_node (chaos.{action.step})")
            else:
                why = ("no node killer was given" if self.node_killer is None
                       else "it hosts the driver or the SMMU actors (the host itself)")
                how = f"device actors killed, node left up ({why})"
                for d in on_node:
                    self._kill_device(d, t, f"kill_node (chaos.{action.step})")
                if not self.quiet:
                    _say(f"  chaos.{action.step}: kill_node: {why}: killed the {len(on_node)} device actor(s) on "
                         f"node {node[:12]} instead; the node itself stays up")
            self.lost_nodes.append({"node_id": node, "node_ip": ip, "at_s": t, "how": how,
                                    "device_actors": [d.index for d in on_node],
                                    "endpoints": sum(len(d.endpoints) for d in on_node)})
            if not self.quiet:
                _say(f"  chaos.{action.step}: node {node[:12]} lost at t={t:g} s "
                     f"({len(on_node)} device actor(s), {sum(len(d.endpoints) for d in on_node)} endpoints)")


    def kill_all(self) -> None:
        import ray

        for a in self.smmus + self.devices:
            try:
                ray.kill(a.handle, no_restart=True)
            except Exception:
                pass
            a.alive = False
