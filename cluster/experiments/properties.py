"""What explore checks: the safety invariants and the scenario's own upper bounds, each as one expectation.

Every property is a figure with a bound, so the minimal scenario of a violation carries exactly
that bound as its ``expect:`` and ``ats-stress run`` fails there. ``expect.FIGURE`` is one of the
scenario's bounds; explore keeps only their ``max`` (a ``min`` says what the scenario's own chaos
must cause, and explore replaces that chaos).
"""

from __future__ import annotations

from typing import Any

from ats_stress.cluster.scenario import EXPECTABLE, Scenario, ScenarioError

#: property -> (expectable figure, what holding it means)
INVARIANTS: dict[str, tuple[str, str]] = {
    "uaf": ("uaf_exposures", "no UAF exposure"),
    "healthy-fenced": ("fenced_healthy", "no healthy device fenced"),
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


def upper_bounds(sc: Scenario) -> dict[str, dict]:
    """The scenario's expect: bounds that have a max, as explore keeps them (max and checkpoints)."""
    out = {}
    for name, b in sc.expect.items():
        if b.max is not None:
            out[name] = {"max": b.max, **({"at": list(b.at)} if b.at else {})}
    return out


def select(sc: Scenario, names: list[str] | None, lockup_bound: float = LOCKUP_BOUND_S,
           stall_bound: float = STALL_BOUND_S) -> list[dict[str, Any]]:
    """The checks ``--check`` names (default: every invariant and every upper bound of the scenario);
    each ``{"property", "figure", "bound", "means"}``; ScenarioError on a name that is none of them."""
    bounds = upper_bounds(sc)
    wanted = names or list(INVARIANTS) + ["expect"]
    limit = {"lockup": lockup_bound, "stall": stall_bound}
    checks: list[dict[str, Any]] = []
    for name in wanted:
        if name in INVARIANTS:
            figure, means = INVARIANTS[name]
            checks.append({"property": name, "figure": figure, "means": means,
                           "bound": {"max": limit.get(name, 0)}})
        elif name == "expect" or name.startswith("expect."):
            figures = sorted(bounds) if name == "expect" else [name[len("expect."):]]
            for fig in figures:
                if fig not in bounds:
                    allowed = ", ".join(f"expect.{f}" for f in sorted(bounds)) or "none: the scenario has no max bound"
                    raise ScenarioError(f"--check {name}: the scenario has no upper bound on {fig!r} (its bounds: "
                                        f"{allowed}).")
                checks.append({"property": f"expect.{fig}", "figure": fig, "bound": bounds[fig],
                               "means": f"the scenario's bound {fig} <= {bounds[fig]['max']:g}"})
        else:
            raise ScenarioError(f"--check {name}: the properties are {', '.join(INVARIANTS)}, expect (every upper "
                                "bound of the scenario's expect:) and expect.FIGURE.")
    # an invariant checked already makes the scenario's same or looser bound on its figure redundant
    inv = {c["figure"]: c["bound"]["max"] for c in checks if c["property"] in INVARIANTS}
    return [c for c in checks if c["property"] in INVARIANTS or not
            (c["figure"] in inv and inv[c["figure"]] <= c["bound"]["max"] and not c["bound"].get("at"))]


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
