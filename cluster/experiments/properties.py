"""What explore checks: the safety invariants, liveness, and the scenario's own bounds, each as one expectation.

Every property is a figure with a bound, so the minimal scenario of a violation carries exactly
that bound as its ``expect:`` and ``ats-stress run`` fails there. ``expect.FIGURE`` is one of the
scenario's bounds: its ``max`` bounds, and whatever bounds its ``explore.expect`` gives (``min``
included: a ``min`` of the scenario's own ``expect:`` says what its own chaos must cause, and
explore replaces that chaos, so only ``explore.expect`` asks for lower bounds).

``progress`` is liveness: once the last fault is over, every unmap completes within a bound (by
default the longest clock of the policy and the hardware, plus the grammar's settle time). A run
that ends before that can be judged is not a violation: ``decide_progress`` says how long it must
run, and explore runs the variant again that long.
"""

from __future__ import annotations

import math
from typing import Any

from ats_stress.cluster.scenario import EXPECTABLE, Scenario, ScenarioError
from ats_stress.iommu_actor.units import format_duration
from ats_stress.iommu_actor.suggest import did_you_mean

from .clocks import longest

#: property -> (expectable figure, what holding it means)
INVARIANTS: dict[str, tuple[str, str]] = {
    "uaf": ("uaf_exposures", "no UAF exposure"),
    "healthy-fenced": ("fenced_healthy", "no healthy device fenced"),
    "progress": ("progress_max", "once the last fault is over, every unmap completes within the bound"),
    "incomplete": ("unmaps_incomplete", "every unmap completes by the end of the run"),
    "lockup": ("irqs_off_max", "no CPU keeps its interrupts off longer than the bound (hard lockup)"),
    "stall": ("flush_max", "no CPU stays inside one flush, non-preemptible, longer than the bound "
                           "(soft lockup, RCU stall)"),
}
#: the kernel's hard-lockup detector fires after watchdog_thresh = 10 s with interrupts off
LOCKUP_BOUND_S = 10.0
#: the soft-lockup detector (and, about as soon, an RCU stall warning) fires after 2 x watchdog_thresh
#: = 20 s without scheduling
STALL_BOUND_S = 20.0
#: checked when --check is not given: ``incomplete`` only says whether a run was long enough for a
#: wedge to clear (``progress`` says whether it clears), so it is there for those who ask for it
DEFAULT_CHECKS = ("uaf", "healthy-fenced", "progress", "lockup", "stall", "expect")
#: a run judged for progress lasts at least this much past the last fault's end plus the bound
PROGRESS_MARGIN_S = 1.0


def explored_bounds(sc: Scenario) -> dict[str, dict]:
    """The bounds explore keeps: the scenario's ``max`` bounds (with their checkpoints), then its
    ``explore.expect`` bounds (min, max or both) over them."""
    out = {}
    for name, b in sc.expect.items():
        if b.max is not None:
            out[name] = {"max": b.max, **({"at": list(b.at)} if b.at else {})}
    for name, b in (sc.explore.expect if sc.explore else {}).items():
        out[name] = b.model_dump(exclude_defaults=True, exclude_none=True)
    return out


def _bound_text(fig: str, bound: dict) -> str:
    show = format_duration if EXPECTABLE[fig][1] else (lambda v: f"{v:g}")
    lo, hi = bound.get("min"), bound.get("max")
    if lo is not None and hi is not None:
        return f"{show(lo)} <= {fig} <= {show(hi)}"
    return f"{fig} >= {show(lo)}" if lo is not None else f"{fig} <= {show(hi)}"


def progress_bound(sc: Scenario, settle: float) -> tuple[float, str]:
    """``progress``'s default bound and how it was made: the longest clock of the policy and the
    hardware, plus the settle time."""
    name, value = longest(sc)
    return value + settle, f"{name} {format_duration(value)} + settle {format_duration(settle)}"


def select(sc: Scenario, names: list[str] | None, lockup_bound: float = LOCKUP_BOUND_S,
           stall_bound: float = STALL_BOUND_S, progress: float | None = None,
           settle: float | None = None) -> list[dict[str, Any]]:
    """The checks ``--check`` names (default: ``DEFAULT_CHECKS``); each ``{"property", "figure",
    "bound", "means"}``; ScenarioError on a name that is none of them. ``progress``: its bound
    (default: ``progress_bound``, with ``settle``, default the grammar's)."""
    bounds = explored_bounds(sc)
    wanted = names or list(DEFAULT_CHECKS)
    if settle is None:
        settle = (sc.explore.settle if sc.explore else None) or 2.0
    limit = {"lockup": lockup_bound, "stall": stall_bound}
    checks: list[dict[str, Any]] = []
    for name in wanted:
        if name == "progress":
            bound, how = (progress, "--progress-bound") if progress is not None else progress_bound(sc, settle)
            checks.append({"property": name, "figure": "progress_max", "bound": {"max": bound},
                           "means": f"once the last fault is over, every unmap completes within "
                                    f"{format_duration(bound)} ({how})"})
        elif name in INVARIANTS:
            figure, means = INVARIANTS[name]
            checks.append({"property": name, "figure": figure, "means": means,
                           "bound": {"max": limit.get(name, 0)}})
        elif name == "expect" or name.startswith("expect."):
            figures = sorted(bounds) if name == "expect" else [name[len("expect."):]]
            for fig in figures:
                if fig not in bounds:
                    allowed = ", ".join(f"expect.{f}" for f in sorted(bounds)) or "none"
                    raise ScenarioError(f"--check {name}: {did_you_mean(fig, bounds)}the scenario has no bound on "
                                        f"{fig!r} that explore keeps "
                                        f"(a max in expect:, or any bound in explore.expect:; its bounds: {allowed}).")
                origin = "explore.expect" if sc.explore and fig in sc.explore.expect else "the scenario's bound"
                checks.append({"property": f"expect.{fig}", "figure": fig, "bound": bounds[fig],
                               "means": f"{origin} {_bound_text(fig, bounds[fig])}"})
        else:
            raise ScenarioError(f"--check {name}: {did_you_mean(name, list(INVARIANTS) + ['expect'])}the properties "
                                f"are {', '.join(INVARIANTS)}, expect (every bound "
                                "of the scenario's expect: with a max, and of its explore.expect:) and expect.FIGURE.")
    # an invariant checked already makes the scenario's same or looser upper bound on its figure redundant
    inv = {c["figure"]: c["bound"]["max"] for c in checks if c["property"] in INVARIANTS}
    return [c for c in checks if c["property"] in INVARIANTS or not
            (c["figure"] in inv and "min" not in c["bound"] and inv[c["figure"]] <= c["bound"]["max"]
             and not c["bound"].get("at"))]


def expect_of(check: dict) -> dict[str, dict]:
    """The ``expect:`` a minimal scenario of this property carries: exactly its bound."""
    return {check["figure"]: dict(check["bound"])}


def _figure(summary: dict, figure: str) -> Any:
    node: Any = summary
    for p in EXPECTABLE[figure][0]:
        if not isinstance(node, dict):
            return None
        node = node.get(p)
    return node


def verdict(summary: dict, checks: list[dict]) -> dict[str, Any]:
    """What a worker sends back for one run: each violated property with what was observed."""
    violated: dict[str, Any] = {}
    if summary["status"] == "complete":
        failed = {e["name"].split("@")[0]: e["observed"] for e in summary["expectations"] if not e["ok"]}
        for c in checks:
            if c["property"] in INVARIANTS:
                observed = _figure(summary, c["figure"])
                if observed is not None and observed > c["bound"]["max"]:
                    violated[c["property"]] = observed
            elif c["figure"] in failed:
                violated[c["property"]] = failed[c["figure"]]
    return {"violated": violated, "status": summary["status"], "error": summary.get("error")}


def decide_progress(summary: dict, checks: list[dict]) -> float | None:
    """The duration a run must have for ``progress`` to be judged, when this one was too short;
    None when it can be judged as it is (or is not checked). Too short: nothing waited longer than
    the bound, some unmap was still open at the end, and the run ended before the last fault's end
    plus the bound (that unmap might be stuck for good)."""
    check = next((c for c in checks if c["property"] == "progress"), None)
    if check is None or summary["status"] != "complete":
        return None
    since, waited = summary["progress"]["since_s"], summary["progress"]["max_s"]
    bound = check["bound"]["max"]
    if since is None or (waited is not None and waited > bound) or not summary["unmaps"]["incomplete"]:
        return None
    if summary["sim_time_s"] >= since + bound + PROGRESS_MARGIN_S - 1e-9:
        return None
    return float(math.ceil(since + bound + PROGRESS_MARGIN_S))
