"""Where many sim runs go: this process (one worker, no address) or Ray tasks, results as they finish.

``Pool`` takes jobs (``submit(key, job)``) and hands back ``(key, result)`` pairs as runs finish
(``wait``). On Ray each job is one task of one CPU, on an embedded local Ray by default or on the
cluster at ``address`` (the forms ``run --runtime ray`` takes, through the same ``connect``); at
most ``capacity`` are in flight. A task whose worker process or node dies is submitted again
(``requeued`` counts them) and its result is handed back once; any other failure is a PoolError.
Plug-in policy files travel with each task as source (``cluster/plugins.py``).

A job is ``(kind, payload)``: ``"summary"`` returns the run's summary (``payload["series"]``: with
its compact time series), ``"check"`` the explore verdict of ``cluster/experiments/properties.py`` (with ``payload["extend"]``,
a run too short to judge ``progress`` is run again as long as it takes: progress is judged on that
run, whose scenario the verdict carries as ``extended``).
"""

from __future__ import annotations

import os
from collections import deque
from typing import Any, Callable, Iterable

#: a job lost with its worker this many times is not tried again
MAX_REQUEUES = 3


class PoolError(Exception):
    """A run could not be carried out (not a model failure: those come back as status "failed")."""


def run_job(job: tuple[str, dict], sources: tuple = ()) -> dict:
    """One sim run, in whichever process the pool put it."""
    from ats_stress.cluster import plugins
    from ats_stress.cluster.results.summary import without_stories
    from ats_stress.cluster.runtime.sim import run_sim
    from ats_stress.cluster.scenario import Scenario

    plugins.ensure(sources)
    kind, payload = job
    sc = Scenario.model_validate(payload["scenario"])
    if kind == "check":
        from ats_stress.cluster.scenario.writing import normalized

        from .properties import decide_progress, verdict

        summary = run_sim(sc)
        found = verdict(summary, payload["checks"])
        longer = decide_progress(summary, payload["checks"]) if payload.get("extend") else None
        if longer is None:
            return found
        # too short to judge progress: progress is judged on this scenario run that long (the other
        # properties keep the run as drawn)
        data = normalized({**payload["scenario"], "duration": longer})
        again = verdict(run_sim(Scenario.model_validate(data)), [c for c in payload["checks"]
                                                                 if c["property"] == "progress"])
        found["violated"].pop("progress", None)
        if "progress" in again["violated"]:
            found["violated"]["progress"] = again["violated"]["progress"]
        return {**found, "extended": data}
    if payload.get("series"):  # compare: also the time series for the per-figure charts
        from ats_stress.cluster.results.sampler import SAMPLE_EVERY, RunSampler, compact_series

        sampler = RunSampler(sc, om_every=None)
        summary = without_stories(run_sim(sc, progress_every=SAMPLE_EVERY, sample=sampler))
        summary["series"] = compact_series(sampler.samples())
        return summary
    return without_stories(run_sim(sc))  # the UAF stories stay with ``run`` (uaf-trace.jsonl)


def _lost_worker_errors() -> tuple[type[BaseException], ...]:
    from ray import exceptions as rx

    names = ("WorkerCrashedError", "NodeDiedError", "ObjectLostError", "OwnerDiedError", "LocalRayletDiedError",
             "OutOfMemoryError")  # the memory monitor killed the worker: the run itself did nothing wrong
    return tuple(getattr(rx, n) for n in names if hasattr(rx, n))


class Pool:
    """In-process when ``workers == 1`` and no address; otherwise Ray tasks."""

    def __init__(self, workers: int | None = None, address: str | None = None, sources: tuple = (),
                 use_ray: bool | None = None):
        self.workers = workers
        self.address = address
        self.sources = tuple(sources)
        self.use_ray = use_ray if use_ray is not None else not (workers == 1 and address is None)
        self.capacity = 1
        self.requeued = 0
        self.executed = 0
        self._owned = False
        self._task = None
        self._local: deque = deque()
        self._refs: dict[Any, tuple[Any, tuple, int]] = {}  # ref -> (key, job, times lost)

    # --- lifetime --------------------------------------------------------------------------------

    def __enter__(self) -> "Pool":
        if not self.use_ray:
            return self
        import ray

        from ats_stress.cluster.runtime.connect import connect

        local = self.address is None and not os.environ.get("RAY_ADDRESS")
        self._owned = connect(self.address, num_cpus=self.workers if local else None)
        cpus = int(ray.cluster_resources().get("CPU", 0)) or 1
        self.capacity = max(1, min(self.workers or cpus, cpus))
        self._task = ray.remote(num_cpus=1, max_retries=0)(run_job)
        return self

    def __exit__(self, *exc) -> None:
        self.cancel()
        if self._owned:
            import ray

            ray.shutdown()
            self._owned = False

    # --- jobs ------------------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return len(self._refs) + len(self._local)

    @property
    def free(self) -> int:
        return max(0, self.capacity - self.in_flight)

    def submit(self, key: Any, job: tuple[str, dict], lost: int = 0) -> None:
        if not self.use_ray:
            self._local.append((key, job))
            return
        ref = self._task.remote(job, self.sources)
        self._refs[ref] = (key, job, lost)

    def wait(self) -> list[tuple[Any, dict]]:
        """Block until at least one run finished; its (key, result) pairs (empty when nothing is in flight)."""
        if not self.use_ray:
            if not self._local:
                return []
            key, job = self._local.popleft()
            result = run_job(job, self.sources)
            if result.get("status") == "interrupted":  # run_sim caught our Ctrl-C: it is ours, not the run's
                raise KeyboardInterrupt
            self.executed += 1
            return [(key, result)]
        import ray
        from ray.exceptions import RayError, RayTaskError

        from ats_stress.cluster.runtime.connect import last_line as _last_line
        from ats_stress.cluster.scenario import ScenarioError

        lost_errors = _lost_worker_errors()
        while self._refs:
            done, _ = ray.wait(list(self._refs), num_returns=1)
            out = []
            for ref in done:
                key, job, lost = self._refs.pop(ref)
                try:
                    result = ray.get(ref)
                except RayTaskError as exc:
                    if isinstance(exc.cause, ScenarioError):  # bad input the run found (kill_node on sim): exit 2
                        raise exc.cause from None
                    raise PoolError(f"a run failed in its Ray worker: {_last_line(exc)}") from None
                except lost_errors as exc:
                    if lost + 1 > MAX_REQUEUES:
                        raise PoolError(f"a run lost its worker {lost + 1} times ({_last_line(exc)}); the cluster "
                                        "is losing workers faster than runs finish.") from None
                    self.requeued += 1
                    self.submit(key, job, lost + 1)
                    continue
                except RayError as exc:  # cancelled, object store full, Ray itself failing
                    raise PoolError(f"Ray could not carry out a run: {_last_line(exc)}") from None
                self.executed += 1
                out.append((key, result))
            if out:
                return out
        return []

    def cancel(self) -> None:
        """Drop every run not yet handed back (Ctrl-C, a time limit)."""
        self._local.clear()
        if self._refs:
            import ray

            for ref in list(self._refs):
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # already finished or its worker gone: nothing to cancel
                    pass
            self._refs.clear()

    def map(self, jobs: Iterable[tuple[str, dict]], on_result: Callable[[int, dict], None] | None = None) -> list:
        """Every job, ``capacity`` at a time; results in job order (``on_result`` as each finishes)."""
        todo = deque(enumerate(jobs))
        results: list = [None] * len(todo)
        while todo or self.in_flight:
            while todo and self.free:
                self.submit(*todo.popleft())
            for i, r in self.wait():
                results[i] = r
                if on_result:
                    on_result(i, r)
        return results
