"""The protocol's clocks in a scenario: every timing constant its policy and its hardware expose.

Recovery bugs live where a fault ends just before or just after one of these: the driver's
software timeout, the hardware ATC invalidation timeout (as the driver programs it), a reset's
duration, the flush queue's timer. explore draws a share of its durations and gaps there
(``grammar.py``), and its ``progress`` property allows the longest of them (plus the settle time)
for every unmap to complete once the faults are over.

Nothing here lists policies: a policy's clocks are the ``Duration`` fields of its ``Params`` (so a
plug-in's get the same treatment), plus what the driver itself says it waits
(``Policy.poll_timeout()``) and programs (``Policy.hw_inv_timeout()``).
"""

from __future__ import annotations

from ats_stress.cluster.scenario import Scenario
from ats_stress.cluster.scenario.writing import is_duration_field
from ats_stress.iommu_actor.flushq import IOVA_DEFAULT_FQ_TIMEOUT
from ats_stress.iommu_actor.policy import HwInfo


def _driver_clocks(sc: Scenario, params) -> tuple[float | None, float | None]:
    """(poll timeout, programmed invalidation timeout) from the policy itself; (None, None) when it
    cannot be built here (a plug-in whose constructor fails: its runs will say so)."""
    try:
        hw = HwInfo(sc.hardware.command_queues, sc.topology.cpus, sc.topology.invalidate_queue_depth)
        policy = sc.policy_class()(params, hw)
        return policy.poll_timeout(), policy.hw_inv_timeout(sc.hardware.atc_inv_completion_timeout)
    except Exception:  # noqa: BLE001 - a plug-in's bug is reported by its runs, not here
        return None, sc.hardware.atc_inv_completion_timeout


def clocks(sc: Scenario) -> dict[str, float]:
    """Every timing constant of the scenario's policy and hardware in seconds, named where it comes
    from (each value once, its names joined: ``policy.reset_delay = hardware.flr_time``)."""
    params = sc.policy_params()
    poll, inv = _driver_clocks(sc, params)
    found: list[tuple[str, float | None]] = []
    for name, field in type(params).model_fields.items():
        if is_duration_field(field):
            found.append((f"policy.{name}", getattr(params, name)))
    found.append(("the driver's poll timeout", poll))
    found.append(("hardware.atc_inv_completion_timeout" if inv == sc.hardware.atc_inv_completion_timeout
                  else "the invalidation timeout the driver programs (hw_inv_timeout)", inv))
    found += [("hardware.flr_time", sc.hardware.flr_time), ("hardware.link_latency", sc.hardware.link_latency)]
    if sc.flush_mode() == "lazy":
        found.append(("IOVA_DEFAULT_FQ_TIMEOUT", IOVA_DEFAULT_FQ_TIMEOUT))
    names: dict[float, list[str]] = {}
    for name, value in found:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            names.setdefault(float(value), []).append(name)
    return {" = ".join(ns): value for value, ns in names.items()}


def longest(sc: Scenario) -> tuple[str, float]:
    """The longest clock and its name."""
    name, value = max(clocks(sc).items(), key=lambda kv: kv[1])
    return name, value
