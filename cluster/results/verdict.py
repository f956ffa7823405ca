"""The verdict of a run: every failure a kernel would show, in one line a reviewer can quote.

``verdict(sc, summary)`` (called by ``build_summary``, so both runtimes and every command share it)
names each failure mode that applies, "SAFE" only when none does:

- ``uaf``: a translated request reached memory after its unmap was reported complete;
- ``hard_lockup``: a CPU kept its interrupts off longer than watchdog_thresh (10 s: explore's
  LOCKUP_BOUND_S), summary ``irqs_off_max_s``;
- ``soft_lockup``: a CPU stayed inside one flush, non-preemptible, longer than 2 x watchdog_thresh
  (20 s: explore's STALL_BOUND_S; an RCU stall warning comes about as soon), ``flush_max_s``;
- ``healthy_fenced``: the policy fenced a device that had no fault (``fenced_healthy``);
- ``no_culprit_fenced``: a faulty device the driver could have caught was never fenced
  (``unfenced_culprits``): an Invalidate Request to it was unanswered for the driver's whole
  software timeout when a CMD_SYNC wait timed out, or the hardware gave one up (CERROR_ATC_INV_SYNC,
  ITE, IOTLB_INV_TIMEOUT); see ``Oracle.catchable``. A lying device is never caught by this:
  nothing a driver sees points at it;
- ``saturated`` (live runs): the transport could not carry what the scenario asked for, so the
  run's timeouts, fences and latencies measure the runtime (``transport.saturated``).

A kernel failure makes the line UNSAFE; saturation alone makes it INCONCLUSIVE. When the policy
fenced nothing while a device was faulty, ``inaction`` says why, from what the run saw.
"""

from __future__ import annotations

from typing import Any

from ats_stress.cluster.experiments.properties import LOCKUP_BOUND_S, STALL_BOUND_S
from ats_stress.iommu_actor.units import format_duration

#: failure modes, in the order the verdict names them
MODES = ("uaf", "hard_lockup", "soft_lockup", "healthy_fenced", "no_culprit_fenced", "saturated")
#: short names, for tables (compare)
SHORT = {"uaf": "UAF", "hard_lockup": "hard lockup", "soft_lockup": "soft lockup", "healthy_fenced": "healthy fenced",
         "no_culprit_fenced": "no culprit fenced", "saturated": "saturated"}
#: chaos faults that keep ATC invalidations from completing on time (the ones a policy may act on)
DEVICE_FAULTS = frozenset({"hang", "slow", "flap", "drop", "lie", "itag_leak", "removed", "kill_actor", "kill_node"})


def _d(v: float | None) -> str:
    return "-" if v is None else format_duration(v)


def _streams(sids: list[int], most: int = 5) -> str:
    head = ", ".join(map(str, sids[:most])) + (f" and {len(sids) - most} more" if len(sids) > most else "")
    return f"stream{'s' if len(sids) > 1 else ''} {head}"


def failures(s: dict) -> list[dict[str, Any]]:
    """Each failure mode that applies: ``{"mode", "text"}`` in MODES order."""
    out = []
    n = s.get("uaf_exposures") or 0
    if n:
        leaked = len(s.get("uaf_by_sid") or {})
        of = f" of {s['endpoints']:,}" if s.get("endpoints") else ""
        out.append({"mode": "uaf", "text": f"{n:,} UAF exposure{'s' if n != 1 else ''} (first at "
                                           f"{_d(s.get('first_uaf_s'))}; {leaked:,}{of} stream"
                                           f"{'s' if (s.get('endpoints') or leaked) != 1 else ''} leaked)"})
    off = s.get("irqs_off_max_s") or 0.0
    if off > LOCKUP_BOUND_S:
        out.append({"mode": "hard_lockup", "text": f"hard lockup: a CPU kept interrupts off for {_d(off)} "
                                                   f"(watchdog_thresh {_d(LOCKUP_BOUND_S)})"})
    inside = s.get("flush_max_s") or 0.0
    if inside > STALL_BOUND_S:
        out.append({"mode": "soft_lockup", "text": f"soft lockup / RCU stall: a CPU spent {_d(inside)} inside one "
                                                   f"flush without scheduling (2 x watchdog_thresh {_d(STALL_BOUND_S)})"})
    healthy = s.get("fenced_healthy") or 0
    if healthy:
        out.append({"mode": "healthy_fenced", "text": f"{healthy} healthy device{'s' if healthy != 1 else ''} fenced"})
    missed = s.get("unfenced_culprits") or []
    if missed:
        first = missed[0]
        which = "" if len(missed) == 1 else f"stream {first['sid']} "
        out.append({"mode": "no_culprit_fenced", "sids": [m["sid"] for m in missed],
                    "text": f"no culprit fenced: {_streams([m['sid'] for m in missed])} ({which}faulty from "
                            f"{_d(first['fault_start_s'])}, its invalidation timed out at {_d(first['at_s'])}) "
                            f"{'was' if len(missed) == 1 else 'were'} never fenced"})
    if (s.get("transport") or {}).get("saturated"):
        out.append({"mode": "saturated", "text": "transport saturated: the live runtime did not keep up, so the "
                                                 "run's timeouts, fences and latencies measure it, not the devices"})
    return out


def verdict(sc, s: dict) -> dict[str, Any]:
    """``{"safe", "modes", "failures", "line", "inaction"}`` for summary ``s`` of scenario ``sc``."""
    found = failures(s)
    kernel = [f for f in found if f["mode"] != "saturated"]
    if kernel:
        line = "UNSAFE: " + "; ".join(f["text"] for f in found)
    elif found:
        line = "INCONCLUSIVE: " + "; ".join(f["text"] for f in found)
    else:
        caught = len(s.get("fences") or []) - (s.get("fenced_healthy") or 0)
        line = (f"SAFE: no UAF exposure; interrupts off at most {_d(s.get('irqs_off_max_s'))} (hard lockup past "
                f"{_d(LOCKUP_BOUND_S)}), at most {_d(s.get('flush_max_s'))} inside one flush (soft lockup past "
                f"{_d(STALL_BOUND_S)}); no healthy device fenced"
                + (f"; every faulty device the driver timed out on fenced ({caught} fence{'s' if caught != 1 else ''})"
                   if caught > 0 else ""))
    if s.get("status") not in (None, "complete"):
        line += f" (the run {s['status']} at {_d(s.get('sim_time_s'))}: so far)"
    return {"safe": not found, "modes": [f["mode"] for f in found], "failures": found, "line": line,
            "inaction": inaction(sc, s)}


def inaction(sc, s: dict) -> list[str]:
    """Why the policy fenced nothing while a device was faulty ([] when it fenced, or nothing was faulty)."""
    if s.get("fences") or sc is None:
        return []
    faults = [step for step in sc.chaos if step.fault in DEVICE_FAULTS]
    lost = (s.get("lost") or {}).get("endpoints")
    if not faults and not lost:
        return []
    policy = _policy(sc)
    timeouts, hw, cerrors = s.get("sync_timeouts") or 0, s.get("hw_atc_timeouts") or 0, s.get("cmdq_errors") or 0
    if policy is not None and not type(policy).can_fence:
        return [f"{sc.policy.name} has no recovery: it never fences a device"
                + (f"; its {timeouts} software CMD_SYNC timeout{'s were' if timeouts != 1 else ' was'} logged and "
                   "ignored, and each page freed." if timeouts else ".")]
    why = []
    if not timeouts and not hw and not cerrors:
        lie = any(step.fault == "lie" for step in faults)
        why.append("The driver saw no error: every CMD_SYNC it waited on completed within its software timeout"
                   + (" (a lying device answers on time, so nothing a driver sees points at it)." if lie else "."))
        return why
    notes = s.get("notes") or {}
    culprits = notes.get("culprit", 0)
    wedged = (" With one command queue, whatever it writes (a culprit search, a fence) waits behind the wedged "
              "CMD_SYNC until the device answers or the hardware gives it up.") if s.get("command_queues") == 1 else ""
    if timeouts and not culprits:
        why.append(f"It had {timeouts} software CMD_SYNC timeout{'s' if timeouts != 1 else ''} and named no "
                   f"culprit.{wedged}")
    elif culprits:
        why.append(f"It named a culprit {culprits} time{'s' if culprits != 1 else ''}, but no fence took effect "
                   f"before the run ended.{wedged}")
    if not cerrors and not hw:
        hw_timeout = _hw_timeout(sc, policy)
        longest = _longest_hold(sc, faults)
        if hw_timeout is None:
            why.append("The hardware raised no CERROR_ATC_INV_SYNC: it never gives an invalidation up.")
        elif longest is not None and longest < hw_timeout:
            # the posted series acts on CERROR_ATC_INV_SYNC alone (v2 on a software timeout too)
            only_cerror = sc.policy.name == "quarantine" and getattr(policy, "version", 0) != 2
            why.append(f"The hardware raised no CERROR_ATC_INV_SYNC: its ATC_INV timeout ({_d(hw_timeout)}) is longer "
                       f"than the fault ({_d(longest)}), so the device answered first"
                       + (", and the series, which acts only on CERROR_ATC_INV_SYNC, had nothing to act on."
                          if only_cerror else "."))
        else:
            why.append(f"The hardware raised no CERROR_ATC_INV_SYNC within the run (its ATC_INV timeout is "
                       f"{_d(hw_timeout)}).")
    late = s.get("gerror_irqs_late") or 0
    if late:
        why.append(f"{late} of {s.get('gerror_irqs')} GERROR interrupt(s) waited up to "
                   f"{_d(s.get('gerror_irq_delay_max_s'))} for their CPU (host.gerror_irq_cpu), which was spinning "
                   "inside a flush with interrupts off; the queue stayed halted meanwhile.")
    return why


def _policy(sc):
    """The scenario's policy, built as the run built it (None if it cannot be)."""
    from ats_stress.iommu_actor.policy import HwInfo, make_policy

    try:
        return make_policy(sc.policy.name, sc.policy.params(),
                           HwInfo(command_queues=sc.hardware.command_queues, cpus=sc.topology.cpus,
                                  invalidate_queue_depth=sc.topology.invalidate_queue_depth))
    except Exception:  # noqa: BLE001 - a plug-in that cannot be built says nothing here
        return None


def _hw_timeout(sc, policy) -> float | None:
    """The ATC_INV timeout the hardware runs with (the driver may program its own: AMD's CTRL_INV_TO)."""
    t = sc.hardware.atc_inv_completion_timeout
    return policy.hw_inv_timeout(t) if policy is not None else t


def _longest_hold(sc, faults) -> float | None:
    """How long the longest fault held an invalidation unanswered (None: one never ends, or is not a hang)."""
    holds = []
    for step in faults:
        if step.fault == "hang" and step.duration is not None:
            holds.append(float(step.duration))
        elif step.fault == "flap":
            holds.append(float(step.hang_for))
        else:
            return None
    return max(holds) if holds else None
