"""Results: per-node, per-group and oracle statistics merged into one summary dict.

Every runtime hands plain dicts here (the ray runtime gets them from its actors), so both produce
the same fields. Everything but ``wall`` is deterministic for a given scenario and seed on the sim
runtime.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable

from ats_stress.iommu_actor.policy import validate_params
from ats_stress.iommu_actor.spec import CMDQ_OP_CMD_SYNC, ETIMEDOUT, EVT_NAMES, OPCODE_NAMES

from ats_stress.cluster.scenario import EXPECTABLE, Scenario
from ats_stress.cluster.scenario.plan import last_fault_end
from ats_stress.iommu_actor import uaftrace

from .verdict import verdict


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an already sorted list (None when empty)."""
    if not sorted_values:
        return None
    k = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(k, len(sorted_values)) - 1]


def latency_stats(values: Iterable[float]) -> dict[str, Any]:
    v = sorted(values)
    return {"count": len(v), "p50": percentile(v, 0.50), "p99": percentile(v, 0.99),
            "max": v[-1] if v else None}


def unmap_frontier(trace: list[tuple[float, float, bool]]) -> list[tuple[float, float]]:
    """The completions (time, latency) of ``trace`` (in completion order) that no later completion
    beats on latency: enough to find, for any instant t, the longest an unmap waited after t
    (``progress_max``: max of min(latency, completion - t)), and short (a few per run)."""
    out: list[tuple[float, float]] = []
    best = -1.0
    for done, latency, _ in reversed(trace):
        if latency > best:
            out.append((done, latency))
            best = latency
    return out


def progress_max(frontiers: Iterable[list], open_ages: Iterable[float], since: float | None,
                 now: float) -> float | None:
    """The longest an unmap waited after ``since`` (the last fault's end): from then, or from its
    arrival if later, to its completion, or to ``now`` for one still open. None when ``since`` is
    unknown or not before ``now``."""
    if since is None or since >= now:
        return None
    waits = [min(lat, done - since) for f in frontiers for done, lat in f if done > since]
    waits += [min(age, now - since) for age in open_ages]
    return max(waits, default=0.0)


def node_stats(node, now: float) -> dict[str, Any]:
    """The plain statistics of one SmmuNode at ``now``."""
    smmu = node.smmu
    open_h, open_a = node.open_unmap_ages(now)
    return {
        "smmu": node.spec.index,
        "unmaps_arrived": node.unmaps_arrived,
        "unmaps_skipped": node.unmaps_skipped,
        "latencies_healthy": node.latencies_healthy,
        "latencies_affected": node.latencies_affected,
        "open_healthy": open_h,
        "open_affected": open_a,
        "unmap_frontier": unmap_frontier(node.latency_trace),
        "completion_errors": {str(k): v for k, v in sorted(node.completion_errors.items())},
        "sync_returns": {str(k): v for k, v in sorted(node.sync_returns.items())},
        "lockup_s": node.lockup_s + node.open_spin_s(now),
        "irqs_off_max_s": max([node.irqs_off_max_s] + node.open_irqs_off(now)),
        "flush_max_s": max([node.flush_max_s] + node.open_flushes(now)),
        "irq_delay_max_s": {k: max([v] + [now - r for r, kind, _ in node.held_irqs if kind == k])
                            for k, v in node.irq_delay_max.items()},
        "irqs_raised": {k: v + sum(1 for _, kind, _ in node.held_irqs if kind == k) for k, v in node.irqs_taken.items()},
        "irqs_late": {k: v + sum(1 for _, kind, _ in node.held_irqs if kind == k) for k, v in node.irqs_late.items()},
        "cmdq_full_waits": node.cmdq_full_waits,
        "cmdq_full_wait_s": node.cmdq_full_wait_s + node.open_cmdq_wait_s(now),
        "notes": dict(sorted(node.notes.items())),
        "log": list(node.log),
        "commands": {OPCODE_NAMES.get(op, hex(op)): n for op, n in sorted(smmu.cmd_counts.items())},
        "events": {EVT_NAMES.get(e, hex(e)): n for e, n in sorted(smmu.evt_counts.items())},
        "hw_atc_timeouts": smmu.hw_atc_timeouts,
        "cmdq_errors": smmu.cmdq_errors,
        "stale_completions": smmu.stale_completions,
        "queue_depths": smmu.queue_depths(),
        "cmdq_entries": smmu.queues[0].capacity,
        "resets_requested": node.core.requested,
        "ats_disables_deferred": node.core.deferred_ats_disables,
        "event_records": list(node.event_records),
        "flush_mode": node.spec.flush,
        "flushes": node.flushes,
        "iovas_flushed": node.iovas_flushed,
        "flush_latencies": node.flush_latencies,
        "iovas_pending": node.pending_iovas(),
        "messages_in": node.messages_in,
        **({"replay": node.replay} if node.replay is not None else {}),  # a replayed trace (iommu_actor/replay.py)
        "uaf_trace": node.uaf_trace.export(),
    }


def oracle_stats(oracle) -> dict[str, Any]:
    return {
        "uaf_exposures": oracle.uaf_exposures,
        "uaf_reallocated": oracle.uaf_reallocated,
        "uaf_by_sid": {str(k): v for k, v in sorted(oracle.uaf_by_sid.items())},
        "first_uaf_s": oracle.first_uaf_at,
        "lazy_window_dma": oracle.lazy_window_dma,
        "translated_allowed": oracle.translated_allowed,
        "translated_blocked": oracle.translated_blocked,
        "untranslated_allowed": oracle.untranslated_allowed,
        "untranslated_faulted": oracle.untranslated_faulted,
        "reset_blocks": oracle.reset_blocks,
        "fences": list(oracle.fences),
        "unfences": list(oracle.unfences),
        "fenced_healthy": oracle.fenced_healthy,
        "fenced_now": sorted(oracle.fenced),
        "resets": list(oracle.resets),
        # faulty devices the driver could have caught (Oracle.catchable), with when it first could
        "catchable": [{"sid": sid, "at_s": at, "fault_start_s": oracle.fault_start(sid, at)}
                      for sid, at in sorted(oracle.catchable.items())],
    }


GROUP_COUNTERS = ("dma_issued", "translated_sent", "untranslated_sent", "dma_no_bus_master", "translation_requests",
                  "translation_failed", "inv_received", "inv_answered", "inv_lost", "inv_ignored")


def group_stats(group) -> dict[str, Any]:
    out = {k: getattr(group, k) for k in GROUP_COUNTERS}
    out["modes"] = group.modes()
    out["index"] = group.index
    return out


def _sum(dicts: list[dict], key: str) -> Any:
    return sum(d[key] for d in dicts)


def _merge_counts(dicts: Iterable[dict]) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0) + v
    return dict(sorted(out.items()))


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def build_summary(sc: Scenario, runtime: str, nodes: list[dict], oracles: list[dict], groups: list[dict],
                  sim_time: float, events: int, wall_time: float, status: str = "complete",
                  extra: dict | None = None, checkpoint_results: list[dict] | None = None) -> dict[str, Any]:
    healthy = [x for n in nodes for x in n["latencies_healthy"]]
    affected = [x for n in nodes for x in n["latencies_affected"]]
    open_h = [x for n in nodes for x in n["open_healthy"]]
    open_a = [x for n in nodes for x in n["open_affected"]]
    completed = len(healthy) + len(affected)
    commands = _merge_counts(n["commands"] for n in nodes)
    total_cmds = sum(commands.values())
    syncs = commands.get(OPCODE_NAMES[CMDQ_OP_CMD_SYNC], 0)
    notes = _merge_counts(n["notes"] for n in nodes)
    sync_returns = any(n.get("sync_returns") for n in nodes)
    fences = sorted((f for o in oracles for f in o["fences"]), key=lambda f: (f["at_s"], f["sid"]))
    unfences = sorted((f for o in oracles for f in o["unfences"]), key=lambda f: (f["at_s"], f["sid"]))
    fence_lat = [f["latency_s"] for f in fences if f["latency_s"] is not None]
    after_sync = [f["after_sync_s"] for f in fences if f.get("after_sync_s") is not None]
    recovery = [f["recovery_s"] for f in unfences if f["recovery_s"] is not None]
    healthy_stats = latency_stats(healthy + open_h)
    first_uaf = [o["first_uaf_s"] for o in oracles if o["first_uaf_s"] is not None]
    flushes = _sum(nodes, "flushes")
    flush_lat = [x for n in nodes for x in n.get("flush_latencies", [])]
    since = last_fault_end(sc)
    summary: dict[str, Any] = {
        "scenario": sc.name,
        "policy": sc.policy.name,
        "policy_params": validate_params(sc.policy.name, sc.policy.params()).model_dump(),
        "runtime": runtime,
        "status": status,
        "seed": sc.seed,
        "endpoints": sc.topology.endpoints,
        "smmus": sc.topology.smmus,
        "command_queues": sc.hardware.command_queues,
        "hardware": sc.hardware.model_dump(mode="json"),
        "host": {**sc.host.model_dump(mode="json"), "flush": sc.flush_mode()},  # what ran: default resolved
        "sim_time_s": sim_time,
        "wall": {"time_s": wall_time, "events_per_s": events / wall_time if wall_time > 0 else None},
        "events": events,
        "commands": commands,
        "commands_total": total_cmds,
        "syncs": syncs,
        "unmaps": {
            "count": completed,
            "arrived": _sum(nodes, "unmaps_arrived"),
            "skipped_no_mapping": _sum(nodes, "unmaps_skipped"),
            "incomplete": len(open_h) + len(open_a),
            "latency_s": latency_stats(healthy + affected + open_h + open_a),
        },
        # liveness: once the last fault is over, how long any unmap still waited (to its completion,
        # or to the end of the run for one still open: a lower bound)
        "progress": {"since_s": since,
                     "max_s": progress_max((n.get("unmap_frontier", []) for n in nodes), open_h + open_a, since,
                                           sim_time)},
        "healthy_unmap_latency_s": healthy_stats,
        "affected_unmap_latency_s": latency_stats(affected + open_a),
        "worst_stall_s": healthy_stats["max"],
        # software timeouts as the policy says them (Note("sync_timeout"), one per timed-out wait), or,
        # for a policy that says nothing of its syncs (no such Note, no SyncReturned), from what its
        # flushes returned (CompleteUnmap(err=-ETIMEDOUT))
        "sync_timeouts": (notes.get("sync_timeout", 0) if "sync_timeout" in notes or sync_returns
                          else sum(n["completion_errors"].get(str(-ETIMEDOUT), 0) for n in nodes)),
        "hw_atc_timeouts": _sum(nodes, "hw_atc_timeouts"),
        "cmdq_errors": _sum(nodes, "cmdq_errors"),
        "fences": fences,
        "fence_count": len(fences),
        "fenced_healthy": _sum(oracles, "fenced_healthy"),
        "fence_latency_s": {"max": max(fence_lat) if fence_lat else None, "mean": _mean(fence_lat),
                            # from the start of the wait of the CMD_SYNC that named the device
                            "after_sync_max": max(after_sync) if after_sync else None},
        "unfences": unfences,
        "unfence_count": len(unfences),
        "recovery_s": {"max": max(recovery) if recovery else None, "mean": _mean(recovery)},
        "fenced_at_end": sorted(s for o in oracles for s in o["fenced_now"]),
        "resets": sorted((r for o in oracles for r in o["resets"]), key=lambda r: (r["done_s"], r["sid"])),
        "uaf_exposures": _sum(oracles, "uaf_exposures"),
        "uaf_reallocated": _sum(oracles, "uaf_reallocated"),
        "uaf_by_sid": _merge_counts(o["uaf_by_sid"] for o in oracles),
        "first_uaf_s": min(first_uaf) if first_uaf else None,
        "lazy_window_dma": _sum(oracles, "lazy_window_dma"),
        "translated_allowed": _sum(oracles, "translated_allowed"),
        "translated_blocked": _sum(oracles, "translated_blocked"),
        "untranslated_allowed": _sum(oracles, "untranslated_allowed"),
        "untranslated_faulted": _sum(oracles, "untranslated_faulted"),
        "lockup_s": sum(n["lockup_s"] for n in nodes),
        "irqs_off_max_s": max((n["irqs_off_max_s"] for n in nodes), default=0.0),
        "flush_max_s": max((n["flush_max_s"] for n in nodes), default=0.0),
        # interrupts routed to host.gerror_irq_cpu: the longest wait from raised to taken, and how
        # many waited (that CPU had its interrupts off)
        "gerror_irq_delay_max_s": max((n["irq_delay_max_s"]["gerror"] for n in nodes), default=0.0),
        "gerror_irqs": sum(n["irqs_raised"]["gerror"] for n in nodes),
        "gerror_irqs_late": sum(n["irqs_late"]["gerror"] for n in nodes),
        "event_irq_delay_max_s": max((n["irq_delay_max_s"]["event"] for n in nodes), default=0.0),
        "event_irqs_late": sum(n["irqs_late"]["event"] for n in nodes),
        "cmdq_entries": next((n["cmdq_entries"] for n in nodes if n.get("cmdq_entries")), None),
        "cmdq_full_waits": _sum(nodes, "cmdq_full_waits") + notes.get("cmdq_full", 0),
        "cmdq_full_wait_s": sum(n["cmdq_full_wait_s"] for n in nodes),
        "cmdq_timeouts": notes.get("cmdq_timeout", 0),  # arm: "CMDQ timeout", each second of waiting for room
        "cmdq_dropped": notes.get("cmd_dropped", 0),  # AMD: "Command buffer timeout", the command dropped
        "commands_per_unmap": total_cmds / completed if completed else None,
        "syncs_per_unmap": syncs / completed if completed else None,
        "completion_errors": _merge_counts(n["completion_errors"] for n in nodes),
        # what each waited CMD_SYNC (or COMPLETION_WAIT, wait descriptor) returned, per code
        "sync_returns": _merge_counts(n.get("sync_returns", {}) for n in nodes),
        "flush": {"mode": sc.flush_mode(),
                  "flushes": flushes,
                  "iovas_per_flush": _sum(nodes, "iovas_flushed") / flushes if flushes else None,
                  "latency_s": latency_stats(flush_lat),
                  "iovas_pending_at_end": _sum(nodes, "iovas_pending")},
        "resets_requested": _sum(nodes, "resets_requested"),
        "reset_blocks": _sum(oracles, "reset_blocks"),
        "ats_disables_deferred": _sum(nodes, "ats_disables_deferred"),
        "event_records": sorted((r for n in nodes for r in n.get("event_records", [])),
                                key=lambda r: (r["at_s"], r["sid"]))[:200],
        "notes": notes,
        "smmu_events": _merge_counts(n["events"] for n in nodes),
        "invalidations": {
            "sent": commands.get("ATC_INV", 0),
            "received": _sum(groups, "inv_received"),
            "answered": _sum(groups, "inv_answered"),
            "lost": _sum(groups, "inv_lost"),
            "ignored": _sum(groups, "inv_ignored"),
            "stale_completions": _sum(nodes, "stale_completions"),
        },
        "dma": {k: _sum(groups, k) for k in ("dma_issued", "translated_sent", "untranslated_sent",
                                             "dma_no_bus_master", "translation_requests", "translation_failed")},
        "endpoints_by_state": _merge_counts(g["modes"] for g in groups),
        "log": [line for n in nodes for line in n["log"]][:200],
    }
    if sc.workload.trace is not None:  # the replayed trace: the file, the mapping, what was replayed
        summary["trace"] = _trace_section(sc, nodes)
    fenced_ever = {f["sid"] for f in fences}
    summary["unfenced_culprits"] = sorted((c for o in oracles for c in o.get("catchable", [])
                                           if c["sid"] not in fenced_ever), key=lambda c: (c["at_s"], c["sid"]))
    summary["uaf_trace"] = merge_uaf_traces(nodes)
    if extra:
        summary.update(extra)
    summary["verdict"] = verdict(sc, summary)
    summary["expectations"] = list(checkpoint_results or []) + check_expectations(sc, summary)
    summary["ok"] = status == "complete" and all(e["ok"] for e in summary["expectations"])
    return summary


def _trace_section(sc: Scenario, nodes: list[dict]) -> dict[str, Any]:
    from ats_stress.cluster.scenario import ScenarioError
    from ats_stress.cluster.scenario.trace import build_spec, trace_summary

    try:
        spec, info = build_spec(sc)  # scanned before the run; cached
    except ScenarioError as exc:  # the file changed or went away since
        return {"path": sc.workload.trace, "error": str(exc)}
    return trace_summary(spec, info, nodes)


def merge_uaf_traces(nodes: list[dict]) -> dict[str, Any]:
    """The SMMUs' UAF stories as one trace, in the order the DMA reached memory: the first
    MAX_STORIES exposures of the run, then the first of each stream (``n`` numbers them)."""
    stories = sorted((st for n in nodes for st in (n.get("uaf_trace") or {}).get("stories", [])),
                     key=lambda st: (st["dma_s"], st["smmu"], st["exposure"]))
    cap = uaftrace.MAX_STORIES
    kept = [st for i, st in enumerate(stories) if i < cap or st["first_of_stream"]]
    return {"stories": [{"n": i + 1, **st} for i, st in enumerate(kept)], "recorded": len(kept),
            "exposures": sum((n.get("uaf_trace") or {}).get("exposures", 0) for n in nodes),
            "max_stories": cap,
            "records_dropped": sum((n.get("uaf_trace") or {}).get("records_dropped", 0) for n in nodes)}


def without_stories(summary: dict) -> dict:
    """The summary as summary.json keeps it: the UAF stories go to uaf-trace.jsonl instead."""
    trace = summary.get("uaf_trace")
    if not trace or "stories" not in trace:
        return summary
    return {**summary, "uaf_trace": {**{k: v for k, v in trace.items() if k != "stories"},
                                     "file": UAF_TRACE_FILE}}


#: where ``run`` writes the UAF stories, one JSON object a line
UAF_TRACE_FILE = "uaf-trace.jsonl"


def write_summary(out_dir: Path, summary: dict) -> None:
    """summary.json (without the stories) and uaf-trace.jsonl (the stories, possibly none)."""
    out_dir = Path(out_dir)
    write_json(out_dir / "summary.json", without_stories(summary))
    stories = (summary.get("uaf_trace") or {}).get("stories") or []
    path = out_dir / UAF_TRACE_FILE
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(st, sort_keys=False) + "\n" for st in stories))
    tmp.replace(path)


def lookup(summary: dict, path: tuple[str, ...]) -> Any:
    node: Any = summary
    for p in path:
        if not isinstance(node, dict) or p not in node:
            return None
        node = node[p]
    return node


def check_expectations(sc: Scenario, summary: dict, at: float | None = None) -> list[dict[str, Any]]:
    """Each bound against the summary: all of them at the end (``at`` None), or those whose
    ``at:`` lists the checkpoint ``at`` (named ``figure@<t>s``)."""
    out = []
    for name, bound in sc.expect.items():
        if at is not None and at not in bound.at:
            continue
        path, _ = EXPECTABLE[name]
        observed = lookup(summary, path)
        ok = True
        if observed is None:
            ok = bound.min is None  # nothing observed: a max holds, a min does not
        else:
            if bound.max is not None and observed > bound.max:
                ok = False
            if bound.min is not None and observed < bound.min:
                ok = False
        out.append({"name": name if at is None else f"{name}@{at:g}s", "ok": ok, "observed": observed,
                    "bound": {k: v for k, v in (("min", bound.min), ("max", bound.max)) if v is not None}})
    return out


def checkpoints(sc: Scenario) -> list[float]:
    """The scenario times at which some expectation is also checked during the run."""
    return sorted({t for b in sc.expect.values() for t in b.at})


def deterministic_view(summary: dict) -> dict:
    """The summary without its wall-clock part: equal for equal scenario and seed on ``sim``."""
    return {k: v for k, v in summary.items() if k != "wall"}


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)
