"""The live event loop shared by the two actor shells (iommu_actor/actor.py, device_actors/actor.py).

Each Ray actor hosts one sans-IO model object (an SmmuNode or an EndpointGroup) and drives it the
way the ``sim`` runtime's EventLoop does, on wall-clock time instead of virtual time:

- **Time.** Every actor gets the same start instant ``t0`` (``time.time()`` seconds, chosen by the
  driver shortly in the future) and ``time_scale`` (wall seconds per scenario second). Scenario
  time is ``(time.time() - t0) / time_scale``. The model only ever sees scenario time, and never a
  time earlier than one it has already seen (a late timer fires at its own time if that is still
  ahead of the model's clock, else at the model's clock). Timers due within the event loop's
  resolution (``EARLY_WALL``, 1 ms wall) fire at once, at their own scenario time.
- **Timers.** A heap of ``(scenario time, seq, tag)``; one asyncio task sleeps until the earliest
  is due, fires every due one (``on_timer``), drains the model and ships what it produced. Chaos
  steps and locally synthesised messages ride the same heap with string-kinded tags.
- **Transport.** ``transport.py`` (batching, sequence numbers, acknowledgements, dead peers) and
  ``stream.py`` (one connection per peer), mixed in.

Of the live runtime, only the modules of ``cluster/runtime/`` and the two ``actor.py`` shells know
about Ray (the fan-out of sim runs, ``cluster/experiments/pool.py``, uses Ray tasks of its own).
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
from heapq import heappop, heappush
from typing import Any

import ray

from ats_stress.cluster.plugins import error_text

from .transport import ECHO, ECHO_REPLY, Transport
from .wire import _Samples, bucket_by_sid

__all__ = ["LiveShell", "LOCAL", "CHAOS", "bucket_by_sid", "node_location"]

#: the model yields to the event loop (so incoming batches get processed) after this many timers
FIRE_SLICE = 256
#: longest the timer task sleeps without looking at the clock (wall seconds)
MAX_SLEEP = 0.1
#: timers due within this much wall time fire now (at their own scenario time): the event loop
#: cannot sleep less than about a millisecond (epoll), so waiting for them would add that much
#: to every device answer
EARLY_WALL = 0.001
#: the actor processes' cyclic garbage collector: young collections every 100,000 allocations
#: (CPython: 700). The model allocates a command object per command; at the default, collections
#: ran so often under load that their cost grew with every object alive (profiled: 20% of the SMMU
#: actor under an overload, charged to whichever line allocated)
GC_THRESHOLDS = tuple(int(x) for x in os.environ.get("ATS_LIVE_GC", "100000,50,100").split(","))

# heap tag kinds that are not the model's (model tags start with an int)
CHAOS = "chaos"
LOCAL = "local"
SAMPLE = "sample"


class LiveShell(Transport):
    """Base of both actor shells. Subclasses set ``self.model`` and implement ``route``,
    ``apply_chaos``, ``sample_row`` and ``stats``; ``on_dead`` is optional."""

    kind = "?"

    def __init__(self, index: int):
        gc.set_threshold(*GC_THRESHOLDS)
        self.index = index
        self.model: Any = None
        self.heap: list = []
        self.seq = 0
        self.t0 = 0.0
        self.scale = 1.0
        self.duration = float("inf")
        self.last = 0.0  # the model's clock (scenario seconds); never goes back
        self.started = False
        self.model_started = False
        self.done = False
        self.stop_at: float | None = None  # scenario time to stop at early (interruption)
        self._task: asyncio.Task | None = None
        self._waiter: asyncio.Future | None = None
        self._sleep_until = float("inf")
        self._finished: asyncio.Event | None = None
        self._init_transport()
        self.early: list = []  # batches that came before this actor's start(): applied at start
        self.lateness = _Samples()  # timers: due -> fired (wall s)
        self.recent_lag = 0.0  # worst lateness/delay since the last progress() call (wall s)
        self.errors: list[str] = []
        self.fired = 0
        self.delivered = 0
        self.exporter = None
        self.sample_every = 0.0  # scenario s between time-series samples (0: none)
        self.sample_rows: list[dict] = []  # taken and not yet sent to the driver

    # --- subclass hooks ------------------------------------------------------------------------

    def route(self, msgs: list) -> dict[int, list]:
        raise NotImplementedError

    def apply_chaos(self, now: float, action: tuple) -> None:
        raise NotImplementedError

    def sample_row(self, now: float) -> dict[str, Any]:
        """One sample of the model for the report's time series (``cluster/results/sampler.py``)."""
        raise NotImplementedError

    def load_plugins(self, sources: tuple) -> None:
        """Register plug-in policies in this process: the installed ``ats_stress.policies`` entry
        points and the --policy-file sources (``cluster/plugins.py``; idempotent)."""
        from ats_stress.cluster.plugins import ensure

        ensure(sources)

    def start_exporter(self, kind: str, bind: str, *model) -> None:
        """Serve this actor's model on /metrics (``cluster/results/metrics.py``); ``self.target``
        says where, for the driver's Prometheus targets file."""
        from ats_stress.cluster.results.metrics import DeviceExporter, SmmuExporter  # only when wanted

        self.exporter = (SmmuExporter if kind == "smmu" else DeviceExporter)(*model, bind)
        host, port = self.exporter.start()
        self.target = f"{host}:{port}"

    def set_exporter_time(self, now: float) -> None:
        if self.exporter is not None:
            try:
                self.exporter.set_time(now)
            except Exception as exc:  # metrics never take the run down
                self._error(f"{self.kind} actor {self.index}: metrics exporter: {exc!r}")
                self.exporter = None

    # --- set-up (called by the driver) ------------------------------------------------------------

    async def start(self, t0: float, time_scale: float, duration: float, chaos: list,
                    sample_every: float | None = None) -> bool:
        self.t0 = t0
        self.scale = time_scale
        self.duration = duration
        for action in chaos:  # (at, step, phase, fault, sids, params)
            self._push(action[0], (CHAOS, action))
        if sample_every:  # the time series, sampled on this actor's clock like the sim's
            self.sample_every = sample_every
            self._push(0.0, (SAMPLE, 0))
        self._finished = asyncio.Event()
        self.started = True
        self._task = asyncio.get_running_loop().create_task(self._run())
        return True

    # --- the clock and the timer heap --------------------------------------------------------------

    def clock(self) -> float:
        return (time.time() - self.t0) / self.scale

    def _push(self, t: float, tag) -> None:
        self.seq += 1
        heappush(self.heap, (t, self.seq, tag))
        if t < self._sleep_until:
            w = self._waiter
            if w is not None and not w.done():
                w.set_result(None)

    def _model_start(self) -> None:
        if not self.model_started:
            self.model_started = True
            self.model.start(0.0)
            self._drain()
            early, self.early = self.early, []
            for batch in early:
                self._apply(batch)

    async def _sleep(self, wall_s: float) -> None:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._waiter = fut
        handle = loop.call_later(wall_s, _wake, fut)
        try:
            await fut
        finally:
            handle.cancel()
            self._waiter = None
            self._sleep_until = float("inf")

    async def _run(self) -> None:
        try:
            delay = self.t0 - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            self._model_start()
            heap = self.heap
            while not self.done:  # a model error in _apply ends this actor's clock too
                end = self.duration if self.stop_at is None else min(self.duration, self.stop_at)
                now = self.clock()
                early = EARLY_WALL / self.scale
                horizon = min(now + early, end)
                n = 0
                while heap and heap[0][0] <= horizon:
                    t, _, tag = heappop(heap)
                    late = now - t
                    if late > 0:
                        late_wall = late * self.scale
                        self.lateness.add(late_wall)
                        if late_wall > self.recent_lag:
                            self.recent_lag = late_wall
                    self._fire(t if t > self.last else self.last, tag)
                    n += 1
                    if n % FIRE_SLICE == 0:
                        await asyncio.sleep(0)  # let incoming batches in
                        now = self.clock()
                        horizon = min(now + early, end)
                if now >= end:
                    break
                nxt = heap[0][0] if heap else end
                nxt = min(nxt, end)
                wait = (nxt - self.clock()) * self.scale - (EARLY_WALL if nxt < end else 0.0)
                if wait > 0:
                    self._sleep_until = nxt
                    await self._sleep(min(wait, MAX_SLEEP))
                elif n == 0:
                    await asyncio.sleep(0)
        except Exception as exc:  # a model bug: say so, stop this actor's clock
            self._error(f"{self.kind} actor {self.index}: {error_text(exc)}")
        finally:
            self.done = True
            if self._finished is not None:
                self._finished.set()

    def _fire(self, t: float, tag) -> None:
        self.last = t
        self.fired += 1
        kind = tag[0]
        if kind == CHAOS:
            self.apply_chaos(t, tag[1])
        elif kind == LOCAL:
            self.model.on_messages(t, (tag[1],))
        elif kind == ECHO:
            self._enqueue_echo(tag[1], (ECHO_REPLY, self.index, tag[2]))
            return
        elif kind == SAMPLE:  # read at the model's clock, filed under the sample's own time
            k = tag[1]
            self.sample_rows.append({**self.sample_row(t), "t": k * self.sample_every})
            if (k + 1) * self.sample_every <= self.duration + 1e-9:
                self._push((k + 1) * self.sample_every, (SAMPLE, k + 1))
            return
        else:
            self.model.on_timer(t, tag)
        self._drain()


    def _apply(self, batch) -> None:
        if self.done:
            self.dropped_late += len(batch)
            return
        now = self.clock()
        end = self.duration if self.stop_at is None else min(self.duration, self.stop_at)
        if now > end:
            self.dropped_late += len(batch)
            return
        self._model_start()
        if now < self.last:
            now = self.last
        self.last = now
        self.delivered += len(batch)
        try:
            self.model.on_messages(now, batch)
            self._drain()
        except Exception as exc:
            self._error(f"{self.kind} actor {self.index}: {error_text(exc)}")
            self.done = True

    def _drain(self) -> None:
        msgs, timers = self.model.drain()
        for t, tag in timers:
            self._push(t, tag)
        if msgs:
            for dest, batch in self.route(msgs).items():
                self._enqueue(dest, batch)

    def _error(self, text: str) -> None:
        if len(self.errors) < 20:
            self.errors.append(text)

    # --- what the driver reads -------------------------------------------------------------------

    async def stop_early(self, at: float | None = None) -> float:
        """Interruption: stop the clock now (or at scenario time ``at``)."""
        self.stop_at = self.clock() if at is None else at
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)
        return self.stop_at

    async def wait_done(self, timeout: float) -> bool:
        if self._finished is None:
            return True
        try:
            await asyncio.wait_for(self._finished.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    def take_samples(self) -> list[dict]:
        """The time-series rows taken since the last call (the driver keeps them)."""
        rows, self.sample_rows = self.sample_rows, []
        return rows

    def progress_base(self) -> dict[str, Any]:
        lag, self.recent_lag = self.recent_lag, 0.0
        echoes, self.recent_echo_samples = self.recent_echo_samples, []
        return {"t": self.last, "lag_wall_s": lag, "echo_wall_s": sorted(echoes),
                "errors": list(self.errors), "done": self.done,
                "msgs_sent": self.msgs_sent, "batches_sent": self.batches_sent, "samples": self.take_samples()}

    def end_time(self) -> float:
        if self.stop_at is not None:
            return max(self.last, min(self.stop_at, self.duration))
        return self.duration if self.done else max(self.last, min(self.clock(), self.duration))


def _wake(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


def node_location() -> dict[str, Any]:
    ctx = ray.get_runtime_context()
    return {"node_id": ctx.get_node_id(), "node_ip": ray.util.get_node_ip_address(), "pid": os.getpid()}
