"""Shrinking one violation to a minimal scenario that still violates the same property (delta debugging).

A round lists smaller candidates of the current scenario, most aggressive first: no fault at all
(a policy that leaks on a healthy machine is reported as such, not as its first fault), no lying
device (every policy fails under one: a violation that needs none is this policy's), fewer chaos steps,
a plain hang for another fault, a shorter run, fewer endpoints, domains and SMMUs, fewer endpoints
per step, shorter faults, lower latency, loss and leaked tags, lower rates. Every candidate is a
real run; the round's first candidate (in list order) that still violates becomes the current
scenario and a new round starts; a round where none does ends the search. Runs may be in flight
several at a time and finish in any order: the choice is still the first in list order, so the
result and ``spent`` (the runs a one-at-a-time search needs) do not depend on the parallelism.
The first "round" re-runs the violation itself with the property's ``expect:`` only, so the
result is always a scenario that was run and failed, exactly as it will be written.
"""

from __future__ import annotations

import copy
import json
import math
from typing import Any, Callable, Iterator

from ats_stress.cluster.scenario import ScenarioError
from ats_stress.cluster.scenario.writing import normalized

from .grammar import ms, nice

#: factors a fault's duration is tried at
DURATION_FACTORS = (0.5, 0.75, 0.9)


def _end(step: dict) -> float:
    return step["at"] + step.get("duration", 0.0)


def _ddmin(items: list) -> Iterator[list]:
    """The list without one chunk: halves first, down to single items."""
    n = len(items)
    k = n // 2
    while k >= 1:
        for start in range(0, n, k):
            rest = items[:start] + items[start + k:]
            if rest:
                yield rest
        k //= 2


def _with(data: dict, fn: Callable[[dict], Any]) -> dict:
    d = copy.deepcopy(data)
    fn(d)
    return d


def _set_step(i: int, **fields) -> Callable[[dict], None]:
    def f(d: dict) -> None:
        d["chaos"][i].update(fields)
    return f


def _step_candidates(d: dict, i: int) -> Iterator[dict]:
    step = d["chaos"][i]
    eps = step["endpoints"]
    for rest in _ddmin(eps):
        yield _with(d, _set_step(i, endpoints=rest))
    if "duration" in step:
        for f in DURATION_FACTORS:
            shorter = nice(step["duration"] * f)
            if 0.001 <= shorter < step["duration"] - 0.0005:
                yield _with(d, _set_step(i, duration=shorter))
    if step["fault"] == "slow" and step["latency"]["median"] > 1e-6:
        lat = step["latency"]
        yield _with(d, _set_step(i, latency={"median": nice(lat["median"] / 2), "p99": nice(lat["p99"] / 2)}))
    if step["fault"] == "drop" and step["loss"] > 0.01:
        yield _with(d, _set_step(i, loss=nice(step["loss"] / 2)))
    if step["fault"] == "itag_leak" and step["tags"] > 1:
        yield _with(d, _set_step(i, tags=step["tags"] // 2))
    if step["fault"] == "flap" and step["period"] > 0.001:
        yield _with(d, _set_step(i, period=nice(step["period"] / 2), hang_for=nice(step["hang_for"] / 2)))


def _topology(d: dict, endpoints: int, domains: int, smmus: int) -> None:
    top = d["topology"]
    top.update(endpoints=endpoints, domains=domains, smmus=smmus)
    for step in d["chaos"]:
        step["endpoints"] = sorted({e % endpoints for e in step["endpoints"]})


def candidates(d: dict, settle: float) -> Iterator[dict]:
    """Smaller variants of scenario dict ``d`` (chaos steps as explore draws them), most aggressive first."""
    chaos = d["chaos"]
    if chaos:
        yield {**copy.deepcopy(d), "chaos": []}
    honest = [st for st in chaos if st["fault"] != "lie"]
    if honest and len(honest) < len(chaos):  # without the lying device, if it still fails: the policy's own
        yield {**copy.deepcopy(d), "chaos": copy.deepcopy(honest)}
    for rest in _ddmin(chaos):
        yield {**copy.deepcopy(d), "chaos": copy.deepcopy(rest)}
    for i, step in enumerate(chaos):
        if step["fault"] not in ("hang", "reset"):
            plain = {k: step[k] for k in ("at", "endpoints", "duration") if k in step}
            hangs = [plain]
            if step["fault"] == "slow":  # an answer p99 late is a hang that long for what was sent then
                hangs.append({**plain, "duration": nice(plain["duration"] + step["latency"]["p99"])})
            for h in hangs:
                yield _with(d, lambda x, i=i, h=h: x["chaos"].__setitem__(i, {**h, "fault": "hang"}))
    need = max((_end(s) for s in chaos), default=0.0) + settle
    if math.ceil(need * 10) / 10 < d["duration"] - 1e-9:
        yield {**copy.deepcopy(d), "duration": math.ceil(need * 10) / 10}
    if any(s["at"] >= 0.002 for s in chaos):
        def earlier(x: dict) -> None:
            for s in x["chaos"]:
                s["at"] = ms(s["at"] / 2)
            x["duration"] = max(math.ceil((max(_end(s) for s in x["chaos"]) + settle) * 10) / 10, 0.1)
        e = _with(d, earlier)
        if e["duration"] < d["duration"]:
            yield e
    top = d["topology"]
    if top["endpoints"] > 1:
        e = top["endpoints"] // 2
        yield _with(d, lambda x: _topology(x, e, min(top["domains"], e), min(top["smmus"], e)))
    if top["domains"] > 1:
        half = top["domains"] // 2
        yield _with(d, lambda x: _topology(x, top["endpoints"], half, min(top["smmus"], half)))
    if top["smmus"] > 1:
        yield _with(d, lambda x: _topology(x, top["endpoints"], top["domains"], top["smmus"] // 2))
    for i in range(len(chaos)):
        yield from _step_candidates(d, i)
    w = d["workload"]
    if w.get("trace") and w.get("trace_speed", 1.0) > 0.125:  # a replayed trace: replay it slower
        yield _with(d, lambda x: x["workload"].__setitem__("trace_speed", w["trace_speed"] / 2))
    for key in ("dma_per_endpoint_per_s",) if w.get("trace") else ("unmaps_per_s", "dma_per_endpoint_per_s"):
        if w[key] >= 2:
            yield _with(d, lambda x, key=key: x["workload"].__setitem__(key, nice(w[key] / 2)))


def _key(d: dict) -> str:
    return json.dumps(d, sort_keys=True)


class Shrink:
    """One violation's search: ``next_job()`` gives candidates to run, ``feed()`` takes their verdicts."""

    def __init__(self, start: dict, prop: str, settle: float, budget: int):
        self.prop = prop
        self.settle = settle
        self.budget = budget
        self.best: dict | None = None  # the smallest scenario that was run and violated
        self.best_observed: Any = None
        self.spent = 0  # runs a one-at-a-time search needs to get here
        self.complete = False  # a round found nothing smaller (not cut by the budget or a deadline)
        self.done = False
        self.round_no = 0
        self._tried: dict[str, Any] = {}  # candidate -> observed value (None: the property held)
        self._start_round([start])

    def _start_round(self, cands: list[dict]) -> None:
        self.round: list[dict] = []
        self.results: dict[int, Any] = {}  # index -> observed value, None when the property held
        self.cached: set[int] = set()  # tried in an earlier round: no run needed
        seen = set()
        for c in cands:
            try:
                c = normalized(c)  # as its YAML reads back: what runs is what is written
            except (ScenarioError, ValueError):
                continue  # not a valid scenario: not a candidate
            k = _key(c)
            if k in seen:
                continue
            seen.add(k)
            if k in self._tried:
                self.results[len(self.round)] = self._tried[k]
                self.cached.add(len(self.round))
            self.round.append(c)
        self.issued = 0
        self._resolve()

    def _runs_before(self, i: int) -> int:
        return sum(1 for j in range(i) if j not in self.cached)

    def next_job(self) -> tuple[tuple[int, int], dict] | None:
        """The next candidate to run, as ((round, index), scenario dict); None: wait for verdicts."""
        while not self.done and self.issued < len(self.round):
            i = self.issued
            if i not in self.cached and self.spent + self._runs_before(i) >= self.budget:
                return None  # the budget ends before this candidate
            self.issued += 1
            if i not in self.cached:
                return (self.round_no, i), self.round[i]
        return None

    def feed(self, key: tuple[int, int], observed: Any) -> None:
        """The verdict of a candidate: what was observed when it violated the property, else None."""
        rnd, i = key
        if rnd != self.round_no or self.done:
            return  # a speculative run of a round already decided
        self.results[i] = observed
        self._resolve()

    def _remember(self, upto: int) -> None:
        """Keep the verdicts a one-at-a-time search would have seen (not the speculative ones past
        the decision: remembering those would make later rounds depend on the parallelism)."""
        for i in range(min(upto, len(self.round))):
            self._tried[_key(self.round[i])] = self.results[i]

    def _resolve(self) -> None:
        j = 0
        while j in self.results:
            if self.results[j] is not None:  # the first in list order that still violates
                self._remember(j + 1)
                self.spent += self._runs_before(j) + (j not in self.cached)
                self.best, self.best_observed = self.round[j], self.results[j]
                self.round_no += 1
                if self.spent >= self.budget:
                    self.done = True
                    return
                self._start_round(list(candidates(self.best, self.settle)))
                return
            j += 1
        if j == len(self.round):  # nothing smaller violates: a fixpoint
            self._remember(j)
            self.spent += self._runs_before(j)
            self.complete = self.done = True
        elif j >= self.issued and self.spent + self._runs_before(j) >= self.budget:
            self.spent += self._runs_before(j)
            self.done = True

    def stop(self) -> None:
        """A deadline or an interruption: keep what was verified."""
        self.done = True
