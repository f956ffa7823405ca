"""``ats-stress explore``: search fault schedules for property violations and shrink each to a minimal scenario.

Variants (``grammar.py``) and shrink candidates (``shrink.py``) are sim runs in one ``Pool``; shrink
candidates go first, so what was found is shrunk while the search goes on. A violation's number
(``minimal-uaf-1.yaml``) and whether it is shrunk (the first ``shrink_max`` per property, and as many
again of those whose schedule has a lying device) follow variant order, decided only once every earlier variant has finished: with a run budget, a sharded
search finds, numbers and shrinks exactly what a serial one does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ats_stress.cluster.scenario import Scenario
from ats_stress.cluster.scenario.writing import normalized

from .clocks import clocks
from .grammar import draw_variant, grammar
from .pool import Pool, PoolError
from .properties import PROGRESS_MARGIN_S, expect_of, explored_bounds
from .shrink import Shrink

#: variants drawn when only a time limit is given
UNBOUNDED = 1_000_000


@dataclass
class Violation:
    prop: str
    n: int  # its number among this property's violations, in variant order
    variant: int
    seed: int
    observed: Any
    original: dict
    chain: Shrink | None = None


@dataclass
class Search:
    """The state of one explore (what ``write_outputs`` and the progress display read)."""

    sc: Scenario
    checks: list[dict]
    seed: int
    budget: int | None
    time_limit: float | None
    shrink_runs: int
    shrink_max: int
    explored: int = 0
    failed_runs: int = 0
    first_error: str | None = None
    violations: list[Violation] = field(default_factory=list)
    interrupted: bool = False
    error: str | None = None  # the pool could not carry out a run: the search stopped there
    time_up: bool = False
    started: float = field(default_factory=time.monotonic)
    executed: int = 0
    requeued: int = 0
    extended: int = 0  # variants run again longer, to judge progress
    clocks: dict[str, float] = field(default_factory=dict)  # where boundary draws land

    @property
    def shrink_steps(self) -> int:
        return sum(max(0, v.chain.round_no - 1) for v in self.violations if v.chain)  # round 0 re-runs the violation


def base_dict(sc: Scenario) -> dict:
    """The scenario as variants start from it: no chaos, the bounds explore keeps, no grammar."""
    d = sc.model_dump(mode="json")
    d.pop("explore", None)
    d["chaos"] = []
    d["expect"] = explored_bounds(sc)
    return d


def run_explore(sc: Scenario, pool: Pool, checks: list[dict], *, seed: int, budget: int | None = 100,
                time_limit: float | None = None, shrink_runs: int = 200, shrink_max: int = 3,
                progress: Callable[[Search], None] | None = None) -> Search:
    """Search until ``budget`` variants ran or ``time_limit`` wall seconds passed (whichever first);
    Ctrl-C (KeyboardInterrupt) ends it early with what was found. ScenarioError on a bad grammar."""
    g = grammar(sc)
    base = base_dict(sc)
    by_prop = {c["property"]: c for c in checks}
    s = Search(sc, checks, seed, budget, time_limit, shrink_runs, shrink_max, clocks=clocks(sc))
    edges = sorted(s.clocks.values())
    total = budget if budget is not None else UNBOUNDED
    deadline = None if time_limit is None else s.started + time_limit
    verdicts: dict[int, dict] = {}
    variants: dict[int, dict] = {}
    nxt = settled = 0  # the next variant to draw; the first not yet settled
    counts: dict[str, int] = {}
    shrunk: dict[tuple[str, bool], int] = {}  # (property, has a lying device) -> violations given a shrink
    flying: dict[int, int] = {}  # violation -> its shrink runs in flight

    def settle(i: int, shrink: bool = True) -> None:
        res, drawn = verdicts.pop(i), variants.pop(i)
        if res["status"] == "failed":
            s.failed_runs += 1
            s.first_error = s.first_error or res["error"]
        for prop in (c["property"] for c in checks):  # in --check order
            if prop in res["violated"]:
                # progress's run is as long as judging it took; every other property's is as drawn
                original = res["extended"] if prop == "progress" and "extended" in res else drawn
                counts[prop] = counts.get(prop, 0) + 1
                v = Violation(prop, counts[prop], i, original["seed"], res["violated"][prop], original)
                # schedules with a lying device have their own quota: every policy fails under one, and
                # they must not use up the shrinking of what this policy does wrong
                quota = (prop, any(st["fault"] == "lie" for st in original["chaos"]))
                if shrink and shrunk.get(quota, 0) < shrink_max:
                    shrunk[quota] = shrunk.get(quota, 0) + 1
                    # a shorter run must still reach the last fault's end plus progress's bound
                    settle = g.settle if prop != "progress" else max(
                        g.settle, by_prop[prop]["bound"]["max"] + PROGRESS_MARGIN_S)
                    v.chain = Shrink({**original, "expect": expect_of(by_prop[prop])}, prop, settle, shrink_runs)
                s.violations.append(v)

    def next_job() -> tuple[Any, tuple[str, dict]] | None:
        nonlocal nxt
        # the chain with the fewest runs in flight first: a run beside a round's deciding one is wasted
        chains = sorted((k for k, v in enumerate(s.violations) if v.chain and not v.chain.done),
                        key=lambda k: (flying.get(k, 0), k))
        for k in chains:
            v = s.violations[k]
            job = v.chain.next_job()
            if job is not None:
                flying[k] = flying.get(k, 0) + 1
                key, cand = job
                return ("shrink", k, key), ("check", {"scenario": cand, "checks": [by_prop[v.prop]]})
        if nxt < total:
            variants[nxt] = normalized(draw_variant(base, g, seed, nxt, edges))
            nxt += 1
            return ("variant", nxt - 1), ("check", {"scenario": variants[nxt - 1], "checks": checks,
                                                    "extend": True})
        return None

    try:
        while True:
            if deadline is not None and time.monotonic() >= deadline:
                s.time_up = True
                break
            while pool.free:
                job = next_job()
                if job is None:
                    break
                pool.submit(*job)
            if not pool.in_flight:
                break
            for key, res in pool.wait():
                if key[0] == "variant":
                    verdicts[key[1]] = res
                    if "extended" in res:  # run again longer to judge progress
                        s.extended += 1
                    s.explored += 1
                    while settled in verdicts:  # in variant order, once every earlier one is in
                        settle(settled)
                        settled += 1
                else:
                    flying[key[1]] -= 1
                    chain = s.violations[key[1]].chain
                    chain.feed(key[2], res["violated"].get(chain.prop))
            if progress:
                progress(s)
    except KeyboardInterrupt:
        s.interrupted = True
    except PoolError as exc:  # what was found so far is still settled and written
        s.error = str(exc)
    pool.cancel()
    for i in sorted(verdicts):  # cut short: what finished after a gap is reported, not shrunk
        settle(i, shrink=False)
    for v in s.violations:
        if v.chain:
            v.chain.stop()
    s.executed, s.requeued = pool.executed, pool.requeued
    return s
