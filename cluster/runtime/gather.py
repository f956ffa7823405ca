"""Gathering a live run: the actors' statistics, placement, Prometheus targets, transport figures.

``Gathering`` is mixed into ``LiveRun`` (``ray_runtime.py``). A lost actor contributes what it
last reported (its endpoints count as removed); the transport section says whether the run
measured devices or the runtime (``saturated``).
"""

from __future__ import annotations

import math

import time
from typing import Any

from ats_stress.cluster.results.summary import GROUP_COUNTERS, build_summary, check_expectations, percentile

from .connect import last_line
from .startup import STALL_FRACTION, SUSTAINED, transport_ceiling

class Gathering:
    """Reading the actors at a checkpoint and at the end, and what the summary says about them."""

    def _checkpoint(self, at: float) -> None:
        """Check the bounds that name ``at`` against the actors' figures as they stand now (the
        first poll at or after scenario time ``at``)."""
        nodes, oracles, groups, _, _ = self.gather(final=False)
        partial = build_summary(self.sc, "ray", nodes, oracles, groups, sim_time=at, events=0,
                                wall_time=max(1e-9, time.time() - self.t0))
        self.checked += check_expectations(self.sc, partial, at=at)

    def gather(self, final: bool = True) -> tuple[list, list, list, list, list]:
        import ray

        live = [a for a in self.smmus + self.devices if a.alive]
        refs = [a.handle.stats.remote(final) for a in live]
        try:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=60.0 if final else 10.0)
        except Exception:
            ready = []
        ready = set(ready)
        got: dict[tuple[str, int], dict] = {}
        t = self.scenario_now()
        for a, ref in zip(live, refs):
            if ref in ready:
                try:
                    got[(a.kind, a.index)] = st = ray.get(ref)
                    self.keep_samples(a, st)
                    continue
                except Exception as exc:
                    self._actor_died(a, t, f"died ({last_line(exc)})")
            elif final:
                self._actor_died(a, t, "did not answer at the end")
        nodes, oracles, smmu_tr = [], [], []
        for s in self.smmus:
            st = got.get(("smmu", s.index))
            if st is None:
                nodes.append(_empty_node(s.index))
                oracles.append(_empty_oracle())
                continue
            nodes.append(st["node"])
            oracles.append(st["oracle"])
            smmu_tr.append(st)
        groups, dev_tr = [], []
        for d in self.devices:
            st = got.get(("device", d.index))
            if st is not None:
                groups.append(st["group"])
                dev_tr.append(st)
            else:
                g = dict((d.last or {}).get("group") or _empty_group(d.index))
                g["modes"] = {"removed": len(d.endpoints)}  # lost with its actor: surprise-removed
                groups.append(g)
                if d.last:
                    dev_tr.append({"transport": {"messages_sent": d.last.get("msgs_sent", 0),
                                                 "batches_sent": d.last.get("batches_sent", 0)},
                                   "partial": True})
        return nodes, oracles, groups, smmu_tr, dev_tr

    def keep_samples(self, a, report: dict) -> None:
        """The time-series rows (and at the end the latency trace) an actor sent, for the plots."""
        if self.sampler is not None:
            self.sampler.add(a.kind, a.index, report.get("samples") or [])
            self.sampler.trace += report.get("latency_trace") or []

    def placement(self) -> dict[str, Any]:
        actors = []
        nodes: dict[str, dict] = {}
        for a in self.smmus + self.devices:
            nid = a.info.get("node_id")
            actors.append({"kind": a.kind, "index": a.index, "node_id": nid, "node_ip": a.info.get("node_ip"),
                           "pid": a.info.get("pid"), "endpoints": a.endpoints})
            if nid is not None:
                n = nodes.setdefault(nid, {"node_ip": a.info.get("node_ip"), "smmu_actors": [],
                                           "device_actors": [], "endpoints": 0})
                if a.kind == "smmu":
                    n["smmu_actors"].append(a.index)
                else:
                    n["device_actors"].append(a.index)
                    n["endpoints"] += len(a.endpoints)
        out: dict[str, Any] = {"driver_node_id": self.driver_node, "nodes": nodes, "actors": actors}
        if self.metrics_bind:
            out["targets"] = self.targets()
        return out

    def targets(self, alive_only: bool = False) -> list[dict]:
        out = []
        for a in self.smmus + self.devices:
            t = a.info.get("target")
            if t and (a.alive or not alive_only):
                out.append({"targets": [t], "labels": {"job": "ats-stress", "scenario": self.sc.name,
                                                       "policy": self.sc.policy.name, "kind": a.kind,
                                                       "index": str(a.index),
                                                       "node": str(a.info.get("node_id") or "")[:12]}})
        return out

    def transport(self, smmu_tr: list[dict], dev_tr: list[dict], wall: float) -> dict[str, Any]:
        def tot(trs, key):
            return sum(t["transport"].get(key, 0) for t in trs)

        def dist(trs, key):
            vals = sorted(v for t in trs if key in t["transport"] for v in t["transport"][key]["samples"])
            mx = max((t["transport"][key]["max"] for t in trs if key in t["transport"]), default=None)
            return {"p50": percentile(vals, 0.5), "p99": percentile(vals, 0.99), "max": mx}

        rtt = self.rtt
        live_rtt = dist(smmu_tr, "batch_rtt")
        delay = dist(smmu_tr + dev_tr, "delay")
        late = dist(smmu_tr + dev_tr, "timer_lateness")
        worst = max([x for x in (delay["max"], late["max"]) if x is not None] or [0.0])
        worst = max(worst, self.max_lag_wall)
        reasons = []
        c = dict(self.ceiling)
        if c.get("load", 0.0) > 1.0:
            reasons.append(f"the scenario asks for {c['load']:.2f}x the transport ceiling measured at start-up")
        echo_vals = sorted(v for t in smmu_tr for v in t["transport"].get("echo_rtt", {}).get("samples", []))
        echo = {"p50": percentile(echo_vals, 0.5), "p99": percentile(echo_vals, 0.99),
                "mean": sum(echo_vals) / len(echo_vals) if echo_vals else None, "samples": len(echo_vals)}
        if echo["mean"]:
            live_c = transport_ceiling(self.sc, echo["mean"], c.get("syncs_per_unmap"))
            c["live"] = {"device_round_trip_wall_s": echo["mean"],
                         "syncs_per_s_per_queue": live_c["syncs_per_s_per_queue"],
                         "unmaps_per_s": live_c["unmaps_per_s"], "load": live_c["load"],
                         "peak_load": max(self.live_loads, default=live_c["load"]),
                         "windows": len(self.live_loads),
                         "windows_over_ceiling": sum(1 for x in self.live_loads if x > 1.0)}
            if live_c["load"] > 1.0:
                reasons.append(f"during the run a device round trip took {echo['mean'] * 1e3:.2f} ms wall on "
                               f"average: the scenario asked for {live_c['load']:.2f}x what the transport carried")
            elif self.saturated_during:
                reasons.append(f"for {SUSTAINED * 3} s wall or more in a row the transport carried less than the "
                               f"scenario asked for (up to {max(self.live_loads):.2f}x)")
        if worst / self.scale > self.stall_budget:
            reasons.append(f"the actors ran up to {worst * 1e3:.0f} ms wall ({worst / self.scale:.3g} s scenario) "
                           f"behind, beyond {STALL_FRACTION:g} x the policy's software timeout "
                           f"({self.stall_budget:.3g} s scenario)")
        return {
            "kind": self.sc.runtime.transport,
            # stream connections opened: Unix sockets between actors on one node, TCP across nodes
            "links": {k: sum(t["transport"].get("links", {}).get(k, 0) for t in smmu_tr + dev_tr)
                      for k in ("unix", "tcp")},
            "time_scale": self.scale,
            "downstream": {"messages": tot(smmu_tr, "messages_sent"), "bytes": tot(smmu_tr, "bytes_sent"),
                           "batches": tot(smmu_tr, "batches_sent")},
            "upstream": {"messages": tot(dev_tr, "messages_sent"), "bytes": tot(dev_tr, "bytes_sent"),
                         "batches": tot(dev_tr, "batches_sent")},
            "messages_per_wall_s": (tot(smmu_tr, "messages_sent") + tot(dev_tr, "messages_sent")) / wall if wall > 0 else None,
            "dropped_dead_peer": tot(smmu_tr + dev_tr, "dropped_dead_peer"),
            "dropped_after_end": tot(smmu_tr + dev_tr, "dropped_after_end"),
            "synthesised_root_complex_replies": sum(t["transport"].get("synthesised_root_complex_replies", 0)
                                                    for t in smmu_tr),
            "round_trip_wall_s": {"p50": percentile(rtt, 0.5), "p99": percentile(rtt, 0.99), "samples": len(rtt)},
            "batch_round_trip_wall_s": live_rtt,
            "device_round_trip_wall_s": echo,
            "delivery_delay_wall_s": delay,
            "timer_lateness_wall_s": late,
            "ceiling": c,
            "stall_budget_s": self.stall_budget,
            "saturated": bool(reasons),
            "saturation": reasons,
            # the time_scale this run's own measurements say would have carried it (None: it was not
            # saturated): the warning's hint, from the worst of what it measured, not the idle start-up
            "time_scale_hint": scale_hint(self.scale, c, worst, self.stall_budget) if reasons else None,
        }



def _empty_node(index: int) -> dict[str, Any]:
    return {"smmu": index, "unmaps_arrived": 0, "unmaps_skipped": 0, "latencies_healthy": [],
            "latencies_affected": [], "open_healthy": [], "open_affected": [], "completion_errors": {},
            "lockup_s": 0.0, "irqs_off_max_s": 0.0, "flush_max_s": 0.0,
            "irq_delay_max_s": {"gerror": 0.0, "event": 0.0}, "irqs_raised": {"gerror": 0, "event": 0},
            "irqs_late": {"gerror": 0, "event": 0}, "cmdq_full_waits": 0, "cmdq_full_wait_s": 0.0,
            "cmdq_entries": None, "notes": {}, "log": [], "commands": {}, "events": {},
            "hw_atc_timeouts": 0, "sync_returns": {}, "event_records": [], "flushes": 0, "iovas_flushed": 0,
            "flush_latencies": [], "iovas_pending": 0, "ats_disables_deferred": 0,
            "cmdq_errors": 0, "stale_completions": 0, "queue_depths": [], "resets_requested": 0, "messages_in": 0,
            "uaf_trace": {"stories": [], "exposures": 0, "records_dropped": 0}}


def _empty_oracle() -> dict[str, Any]:
    return {"uaf_exposures": 0, "uaf_reallocated": 0, "uaf_by_sid": {}, "first_uaf_s": None, "lazy_window_dma": 0,
            "translated_allowed": 0, "translated_blocked": 0, "untranslated_allowed": 0,
            "untranslated_faulted": 0, "reset_blocks": 0, "fences": [], "unfences": [],
            "fenced_healthy": 0, "fenced_now": [], "resets": [], "catchable": []}


def _empty_group(index: int) -> dict[str, Any]:
    return {**{k: 0 for k in GROUP_COUNTERS}, "modes": {}, "index": index}


#: the headroom a hint leaves: at the suggested time_scale the load measured would be 1 / HEADROOM
HEADROOM = 2.0


def scale_hint(scale: float, ceiling: dict, worst_lag_wall: float, stall_budget: float) -> float:
    """The time_scale at which every load this run measured would fit with ``HEADROOM``: the
    start-up ceiling, the device round trip measured during the run (which grows under load, so the
    start-up figure alone undershoots), its worst window, and the actors' lag against the stall
    budget (scenario lag = wall lag / time_scale). Rounded up to two significant digits."""
    loads = [ceiling.get("load") or 0.0]
    live = ceiling.get("live") or {}
    loads += [live.get("load") or 0.0, live.get("peak_load") or 0.0]
    need = scale * max(loads) * HEADROOM
    if stall_budget > 0:
        need = max(need, worst_lag_wall / stall_budget * HEADROOM)
    need = max(need, scale)
    digits = 10 ** max(0, math.floor(math.log10(need)) - 1)
    return math.ceil(need / digits) * digits
