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
- **Transport.** Messages are routed per destination actor and appended to that destination's
  pending list; one flush ships each pending list as one msgpack-encoded batch (at most
  ``BATCH_CAP`` messages; the rest goes in the next batch). Every batch carries the sender's index
  and a per-(sender, receiver) sequence number; the receiver applies batches in sequence and
  acknowledges them, and up to a window of batches may be unacknowledged per destination; beyond
  that messages pile up and leave as one bigger batch when a slot frees, so batches grow by
  themselves under load. Two ways to carry a batch (``runtime.transport``):

  - ``stream`` (default): the driver has every actor listen (``listen``: TCP on a random port of
    its node's address, and on Linux a Unix socket in the abstract namespace) and hands each actor
    its peers' addresses and a per-run token (``connect``); each actor opens one connection per
    peer (a Unix socket to a peer on its own node, TCP across nodes) and writes each batch as a
    length-prefixed frame; the receiver answers with cumulative acknowledgements on the same
    connection. Ray still places, starts, watches and kills the actors; only the batches leave
    Ray's call path, which costs a task submission, a reply object and two thread hand-offs per
    call (~1 ms round trip, ~1,000 calls/s per channel here; a frame costs two socket writes, and
    on loopback TCP those were a third of the SMMU actor's time). Window ``STREAM_WINDOW`` (8),
    flush at the end of the event-loop iteration (``STREAM_FLUSH_DELAY`` 0).
  - ``ray``: one Ray actor call (``deliver``) per batch, acknowledged by its return. Ray does not
    promise submission order for an async actor's calls; the sequence numbers restore it. On a
    small machine fewer and bigger calls win: window ``WINDOW`` 1, flush ``FLUSH_DELAY`` (1 ms)
    after the first message.

  The env variables ``ATS_LIVE_[STREAM_]WINDOW`` and ``ATS_LIVE_[STREAM_]FLUSH_DELAY`` override
  the defaults (docs/performance.md). Nothing here ever awaits per message, so a hung endpoint
  never blocks its neighbours.
- **Dead peers.** A call that fails because the destination actor died, or a stream its peer
  closed, marks it dead; its unacknowledged, pending and later messages are dropped and counted
  (``on_dead`` lets the SMMU shell answer for the root complex).

Only this module, ``cluster/ray_runtime.py`` and the two ``actor.py`` shells know about Ray.
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import time
from collections import deque
from heapq import heappop, heappush
from typing import Any

import msgpack
import ray
from ray.exceptions import RayActorError, RayError, RayTaskError

#: the model yields to the event loop (so incoming batches get processed) after this many timers
FIRE_SLICE = 256
#: longest the timer task sleeps without looking at the clock (wall seconds)
MAX_SLEEP = 0.1
#: timers due within this much wall time fire now (at their own scenario time): the event loop
#: cannot sleep less than about a millisecond (epoll), so waiting for them would add that much
#: to every device answer
EARLY_WALL = 0.001
#: batches in flight at once per destination (sequence numbers keep them in order at the receiver),
#: for the ``ray`` transport (one Ray call per batch) and the ``stream`` transport (TCP frames)
WINDOW = int(os.environ.get("ATS_LIVE_WINDOW", "1"))
STREAM_WINDOW = int(os.environ.get("ATS_LIVE_STREAM_WINDOW", "8"))
#: wall seconds a flush waits after the first message for more to join the batch (0: at the end of
#: this event-loop iteration)
FLUSH_DELAY = float(os.environ.get("ATS_LIVE_FLUSH_DELAY", "0.001"))
STREAM_FLUSH_DELAY = float(os.environ.get("ATS_LIVE_STREAM_FLUSH_DELAY", "0"))
#: most messages in one batch; the rest leaves in the next one
BATCH_CAP = 1024
#: the actor processes' cyclic garbage collector: young collections every 100,000 allocations
#: (CPython: 700). The model allocates a command object per command; at the default, collections
#: ran so often under load that their cost grew with every object alive (profiled: 20% of the SMMU
#: actor under an overload, charged to whichever line allocated)
GC_THRESHOLDS = tuple(int(x) for x in os.environ.get("ATS_LIVE_GC", "100000,50,100").split(","))
#: transport delay samples kept per actor (beyond it, every other one is dropped)
MAX_SAMPLES = 20_000

# heap tag kinds that are not the model's (model tags start with an int)
CHAOS = "chaos"
LOCAL = "local"
ECHO = "echo"
#: transport probes: (kind, origin actor index, wall time sent), piggy-backed on batches
ECHO_REQUEST, ECHO_REPLY = 0, 1
#: at most one probe per destination this often (wall s)
ECHO_EVERY = 0.05


def pack(batch) -> bytes:
    return msgpack.packb(batch, use_bin_type=True)


def unpack(payload: bytes):
    return msgpack.unpackb(payload, use_list=False, raw=False)


class _Samples:
    """A bounded sample of non-negative floats (wall seconds), for p50/p99/max."""

    __slots__ = ("values", "stride", "skip", "max", "count")

    def __init__(self):
        self.values: list[float] = []
        self.stride = 1
        self.skip = 0
        self.max = 0.0
        self.count = 0

    def add(self, v: float) -> None:
        self.count += 1
        if v > self.max:
            self.max = v
        self.skip += 1
        if self.skip >= self.stride:
            self.skip = 0
            self.values.append(v)
            if len(self.values) >= MAX_SAMPLES:
                self.values = self.values[::2]
                self.stride *= 2

    def export(self) -> dict[str, Any]:
        return {"count": self.count, "max": self.max, "samples": list(self.values)}



def bucket_by_sid(msgs: list, dest_of: dict[int, int]) -> dict[int, list]:
    """PCIe messages grouped by ``dest_of[sid]``, in order; a StreamID with no destination (no
    endpoint behind it) is dropped: nobody answers it."""
    out: dict[int, list] = {}
    for m in msgs:
        d = dest_of.get(m[1])
        if d is not None:
            b = out.get(d)
            if b is None:
                out[d] = [m]
            else:
                b.append(m)
    return out

class _Channel(asyncio.Protocol):
    """The sending end of one stream (this actor -> peer ``dest``): length-prefixed msgpack frames
    out, cumulative acknowledgements (the last sequence number the peer applied, 8 bytes) back."""

    def __init__(self, shell: "LiveShell", dest: int):
        self.shell = shell
        self.dest = dest
        self.transport: asyncio.Transport | None = None
        self.unacked: deque = deque()  # (seq, payload bytes, batch, sent, since), oldest first
        self.buf = bytearray()
        self.closed = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def write_frame(self, payload: bytes) -> None:
        self.transport.writelines((len(payload).to_bytes(4, "little"), payload))

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        n = len(buf) - len(buf) % 8
        if n:
            last = int.from_bytes(buf[n - 8:n], "little")  # acks only grow: the newest says it all
            del buf[:n]
            self.shell._stream_acked(self, last)

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.shell._stream_lost(self)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class _Inbound(asyncio.Protocol):
    """The receiving end of one stream: the first frame names the sender (and carries the run's
    token); every later one is a batch, applied in order, then acknowledged."""

    def __init__(self, shell: "LiveShell"):
        self.shell = shell
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.src: int | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        pos, n, last = 0, len(buf), -1
        shell = self.shell
        while n - pos >= 4:
            size = int.from_bytes(buf[pos:pos + 4], "little")
            if n - pos - 4 < size:
                break
            payload = bytes(buf[pos + 4:pos + 4 + size])
            pos += 4 + size
            if self.src is None:
                self.src = shell._handshake(payload)
                if self.src is None:  # not one of this run's actors
                    self.transport.abort()
                    return
                continue
            last = shell._on_batch(payload)
        if pos:
            del buf[:pos]
        if last >= 0:
            self.transport.write(last.to_bytes(8, "little"))


class LiveShell:
    """Base of both actor shells. Subclasses set ``self.model`` and implement ``route``,
    ``apply_chaos`` and ``stats``; ``on_dead`` is optional."""

    kind = "?"

    def __init__(self, index: int):
        gc.set_threshold(*GC_THRESHOLDS)
        self.index = index
        self.model: Any = None
        self.peers: list = []
        self.dead: set[int] = set()
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
        # transport
        self.pending: dict[int, list] = {}
        self.pending_since: dict[int, float] = {}
        self.pending_echo: dict[int, list] = {}
        # live transport probes (sent by the SMMU shells): a probe rides a downstream batch, is
        # answered from the device actor's timer task and rides an upstream batch back, so its
        # round trip is what one CMD_SYNC waiting on a device costs on this transport
        self.probe_echoes = False
        self.echo_last: dict[int, float] = {}
        self.echo_out: set[int] = set()
        self.echo_rtt = _Samples()
        self.recent_echo_samples: list[float] = []
        self.flush_scheduled = False
        # the transport: one Ray call per batch, or (``stream``) one TCP connection per peer
        self.stream = False
        self.window = WINDOW
        self.flush_delay = FLUSH_DELAY
        self.token = b""
        self.server: asyncio.AbstractServer | None = None
        self.unix_server: asyncio.AbstractServer | None = None
        self.links = {"unix": 0, "tcp": 0}  # the streams this actor opened, by kind
        self.channels: dict[int, _Channel] = {}
        self._echo_waiters: dict[float, asyncio.Future] = {}
        self.in_flight: dict[int, int] = {}  # batches sent and not yet acknowledged, per destination
        self.out_seq: dict[int, int] = {}  # next sequence number, per destination
        self.in_seq: dict[int, int] = {}  # next sequence number expected, per sender
        self.reorder: dict[int, dict[int, tuple]] = {}  # batches that came in early, per sender
        self.reordered = 0
        self.msgs_sent = 0
        self.bytes_sent = 0
        self.batches_sent = 0
        self.msgs_received = 0
        self.bytes_received = 0
        self.batches_received = 0
        self.dropped_dead = 0  # messages for a dead peer
        self.dropped_late = 0  # messages that arrived after the end of the run
        self.early: list = []  # batches that came before this actor's start(): applied at start
        self.batch_rtt = _Samples()  # send -> acknowledged (wall s)
        self.delay = _Samples()  # oldest message of a batch: queued -> acknowledged (wall s)
        self.lateness = _Samples()  # timers: due -> fired (wall s)
        self.recent_lag = 0.0  # worst lateness/delay since the last progress() call (wall s)
        self.errors: list[str] = []
        self.fired = 0
        self.delivered = 0
        self.exporter = None

    # --- subclass hooks ------------------------------------------------------------------------

    def route(self, msgs: list) -> dict[int, list]:
        raise NotImplementedError

    def apply_chaos(self, now: float, action: tuple) -> None:
        raise NotImplementedError

    def on_dead(self, dest: int, msgs: list) -> None:
        self.dropped_dead += len(msgs)

    def set_exporter_time(self, now: float) -> None:
        if self.exporter is not None:
            try:
                self.exporter.set_time(now)
            except Exception as exc:  # metrics never take the run down
                self._error(f"metrics exporter: {exc!r}")
                self.exporter = None

    # --- set-up (called by the driver) ------------------------------------------------------------

    async def ping(self, payload: bytes = b"") -> int:
        """An empty round trip, for the start-up transport measurement."""
        if payload:
            unpack(payload)
        return len(payload)

    async def measure_rtt(self, n: int, batch: list) -> list[float]:
        """Round trips (wall s) to every live peer, ``n`` each: a Ray call with a batch like the real
        ones, or on a stream an empty batch carrying a transport probe, answered at once."""
        payload = pack(batch)
        out = []
        loop = asyncio.get_running_loop()
        for _ in range(n):
            for p, h in enumerate(self.peers):
                if h is None or p in self.dead:
                    continue
                if self.stream:
                    sent = time.time()
                    fut = loop.create_future()
                    self._echo_waiters[sent] = fut
                    self._enqueue_echo(p, (ECHO_REQUEST, self.index, sent))
                    out.append(await fut)
                    continue
                t = time.perf_counter()
                await h.ping.remote(payload)
                out.append(time.perf_counter() - t)
        return out

    async def listen(self, token: bytes) -> dict:
        """Stream transport, step 1: accept this run's peers, by TCP on the node's address and,
        for peers on the same node, on a Unix socket (Linux abstract namespace: no file to clean
        up; a frame costs no TCP stack). Returns where to reach this actor."""
        self.token = bytes(token)
        host = ray.util.get_node_ip_address()
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _Inbound(self), host=host, port=0)
        port = self.server.sockets[0].getsockname()[1]
        where = {"tcp": f"{host}:{port}", "node": ray.get_runtime_context().get_node_id(), "unix": None}
        if sys.platform.startswith("linux"):
            path = f"\0ats-stress-{os.getpid()}-{token.hex()[:16]}"
            self.unix_server = await loop.create_unix_server(lambda: _Inbound(self), path=path)
            where["unix"] = path
        return where

    async def connect(self, peers: list, addrs: list | None = None, token: bytes = b"") -> bool:
        """``peers``: the actor handles this one sends to (index = destination). With ``addrs``
        (each peer's ``listen`` answer) batches go as frames on one connection per peer, opened
        here (a Unix socket to a peer on this node, TCP to the others), instead of one Ray call
        each."""
        self.peers = list(peers)
        if addrs is None:
            return True
        self.stream = True
        self.window = STREAM_WINDOW
        self.flush_delay = STREAM_FLUSH_DELAY
        loop = asyncio.get_running_loop()
        node = ray.get_runtime_context().get_node_id()
        for dest, where in enumerate(addrs):
            if where is None:
                continue
            proto = (lambda d=dest: _Channel(self, d))
            if where.get("unix") and where.get("node") == node:
                _, ch = await loop.create_unix_connection(proto, path=where["unix"])
                self.links["unix"] += 1
            else:
                host, port = where["tcp"].rsplit(":", 1)
                _, ch = await loop.create_connection(proto, host, int(port))
                self.links["tcp"] += 1
            ch.write_frame(pack((bytes(token), self.index)))
            self.channels[dest] = ch
        return True

    async def start(self, t0: float, time_scale: float, duration: float, chaos: list) -> bool:
        self.t0 = t0
        self.scale = time_scale
        self.duration = duration
        for action in chaos:  # (at, step, phase, fault, sids, params)
            self._push(action[0], (CHAOS, action))
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
            while True:
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
            self._error(f"{self.kind} actor {self.index}: {type(exc).__name__}: {exc}")
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
        else:
            self.model.on_timer(t, tag)
        self._drain()

    # --- messages ---------------------------------------------------------------------------------

    async def deliver(self, payload: bytes) -> None:
        """A batch from a peer (its messages in order), by Ray call."""
        self._on_batch(payload)

    def _handshake(self, payload: bytes) -> int | None:
        """The first frame of an inbound stream: this run's token and the sender's index."""
        try:
            token, src = unpack(payload)
        except Exception:
            return None
        if token != self.token or not isinstance(src, int):
            self._error(f"{self.kind} actor {self.index}: refused a stream that did not carry this run's token")
            return None
        return src

    def _on_batch(self, payload: bytes) -> int:
        """Apply one batch; returns its sequence number. Batches carry the sender's index and a
        per-(sender, receiver) sequence number; up to ``window`` are in flight at once and Ray
        does not promise to run an async actor's calls in submission order, so a batch that
        arrives early waits here until the ones before it came in: per-direction FIFO."""
        self.batches_received += 1
        self.bytes_received += len(payload)
        src, seq, batch, echoes = unpack(payload)
        expected = self.in_seq.get(src, 0)
        if seq != expected:
            self.reorder.setdefault(src, {})[seq] = (batch, echoes)
            self.reordered += 1
            return seq
        last = seq
        while True:
            self.in_seq[src] = seq + 1  # first: a model error must not stall the channel
            self._accept(batch, echoes)
            held = self.reorder.get(src)
            if not held or seq + 1 not in held:
                break
            seq += 1
            batch, echoes = held.pop(seq)
        return last

    def _accept(self, batch, echoes) -> None:
        if echoes:
            self._on_echoes(echoes)
        self.msgs_received += len(batch)
        if not batch:
            return
        if not self.started:
            # a peer's clock started before the driver's start() reached this actor (a busy
            # machine): hold it, do not lose it; a lost Invalidate Request would look like a hang
            self.early.append(batch)
            return
        self._apply(batch)

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
            self._error(f"{self.kind} actor {self.index}: {type(exc).__name__}: {exc}")
            self.done = True

    def _drain(self) -> None:
        msgs, timers = self.model.drain()
        for t, tag in timers:
            self._push(t, tag)
        if msgs:
            for dest, batch in self.route(msgs).items():
                self._enqueue(dest, batch)

    def _enqueue(self, dest: int, msgs: list) -> None:
        if dest in self.dead:
            self.on_dead(dest, msgs)
            return
        buf = self.pending.get(dest)
        if buf is None:
            self.pending[dest] = msgs
            self.pending_since[dest] = time.time()
        else:
            buf.extend(msgs)
        self._want_flush()

    def _enqueue_echo(self, dest: int, echo: tuple) -> None:
        if dest in self.dead:
            return
        self.pending_echo.setdefault(dest, []).append(echo)
        self._want_flush()

    def _want_flush(self) -> None:
        # one flush at the end of this event-loop iteration, for every destination: whatever the
        # model produced meanwhile (timers fired, batches delivered) leaves as one batch each
        if not self.flush_scheduled:
            self.flush_scheduled = True
            loop = asyncio.get_running_loop()
            if self.flush_delay > 0:
                loop.call_later(self.flush_delay, self._flush)
            else:
                loop.call_soon(self._flush)

    def _flush(self) -> None:
        self.flush_scheduled = False
        for dest in list(self.pending) + [d for d in self.pending_echo if d not in self.pending]:
            while dest not in self.dead and self.in_flight.get(dest, 0) < self.window:
                if not self._send_one(dest):
                    break

    def _send_one(self, dest: int) -> bool:
        batch = self.pending.pop(dest, None)
        echoes = self.pending_echo.pop(dest, None)
        if not batch and not echoes:
            return False
        since = self.pending_since.pop(dest, None)
        if batch and len(batch) > BATCH_CAP:  # the rest goes next, in order
            self.pending[dest] = batch[BATCH_CAP:]
            self.pending_since[dest] = since
            batch = batch[:BATCH_CAP]
        sent = time.time()
        if batch and self.probe_echoes and sent - self.echo_last.get(dest, 0.0) >= ECHO_EVERY \
                and dest not in self.echo_out:
            # piggy-back a transport probe on a batch that goes anyway
            self.echo_last[dest] = sent
            self.echo_out.add(dest)
            echoes = (echoes or []) + [(ECHO_REQUEST, self.index, sent)]
        seq = self.out_seq.get(dest, 0)
        self.out_seq[dest] = seq + 1
        payload = pack((self.index, seq, batch or (), echoes or ()))
        if self.stream:
            ch = self.channels.get(dest)
            if ch is None or ch.closed:
                self.mark_dead(dest)
                self.on_dead(dest, batch or [])
                return False
            ch.write_frame(payload)
            ch.unacked.append((seq, len(payload), batch or [], sent, since))
            self.in_flight[dest] = self.in_flight.get(dest, 0) + 1
            return True
        try:
            ref = self.peers[dest].deliver.remote(payload)
        except (RayActorError, RayError):
            self.mark_dead(dest)
            self.on_dead(dest, batch or [])
            return False
        self.in_flight[dest] = self.in_flight.get(dest, 0) + 1
        asyncio.get_running_loop().create_task(self._acked(dest, ref, payload, batch or [], sent, since))
        return True

    async def _acked(self, dest: int, ref, payload: bytes, batch: list, sent: float, since: float | None) -> None:
        try:
            try:
                await ref
            except RayTaskError as exc:  # the peer's code failed: a bug, not a lost peer
                self._error(f"{self.kind} actor {self.index} -> peer {dest}: {exc}")
                self.on_dead(dest, batch)
                return
            except (RayActorError, RayError):
                self.mark_dead(dest)
                self.on_dead(dest, batch)
                return
            self._delivered(len(payload), batch, sent, since, time.time())
        finally:
            self.in_flight[dest] -= 1
            if dest not in self.dead and (dest in self.pending or dest in self.pending_echo):
                self._want_flush()

    def _delivered(self, nbytes: int, batch: list, sent: float, since: float | None, ack: float) -> None:
        """A batch was acknowledged: the peer applied it."""
        self.bytes_sent += nbytes
        self.batches_sent += 1
        self.batch_rtt.add(ack - sent)
        if batch:
            self.msgs_sent += len(batch)
            d = ack - (since or sent)
            self.delay.add(d)
            if d > self.recent_lag:
                self.recent_lag = d

    def _stream_acked(self, ch: _Channel, last: int) -> None:
        if self.channels.get(ch.dest) is not ch:
            return
        dest, unacked, now = ch.dest, ch.unacked, time.time()
        while unacked and unacked[0][0] <= last:
            _, nbytes, batch, sent, since = unacked.popleft()
            self._delivered(nbytes, batch, sent, since, now)
            self.in_flight[dest] -= 1
        if dest in self.pending or dest in self.pending_echo:
            self._want_flush()

    def _stream_lost(self, ch: _Channel) -> None:
        """The peer closed its end (its process is gone): like a failed Ray call."""
        if self.channels.get(ch.dest) is ch:
            self.mark_dead(ch.dest)

    def _on_echoes(self, echoes) -> None:
        for kind, origin, sent in echoes:
            if kind == ECHO_REQUEST:
                if self.started:
                    # answered from the timer task, like a device's answer to an Invalidate Request
                    self._push(self.last, (ECHO, origin, sent))
                else:  # the start-up measurement (measure_rtt)
                    self._enqueue_echo(origin, (ECHO_REPLY, self.index, sent))
            else:
                rtt = time.time() - sent
                waiter = self._echo_waiters.pop(sent, None)
                if waiter is not None:
                    if not waiter.done():
                        waiter.set_result(rtt)
                    continue
                self.echo_rtt.add(rtt)
                self.echo_out.discard(origin)
                self.recent_echo_samples.append(rtt)

    def mark_dead(self, dest: int) -> None:
        if dest in self.dead:
            return
        self.dead.add(dest)
        ch = self.channels.pop(dest, None)
        if ch is not None:  # what the peer never acknowledged is lost with it
            lost = [m for u in ch.unacked for m in u[2]]
            self.in_flight[dest] = 0
            ch.unacked.clear()
            ch.close()
            if lost:
                self.on_dead(dest, lost)
        left = self.pending.pop(dest, None)
        self.pending_since.pop(dest, None)
        self.pending_echo.pop(dest, None)
        if left:
            self.on_dead(dest, left)

    async def peer_lost(self, dest: int) -> bool:
        """The driver killed peer ``dest`` (or saw it die): stop sending to it."""
        self.mark_dead(dest)
        return True

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

    def progress_base(self) -> dict[str, Any]:
        lag, self.recent_lag = self.recent_lag, 0.0
        echoes, self.recent_echo_samples = self.recent_echo_samples, []
        return {"t": self.last, "lag_wall_s": lag, "echo_wall_s": sorted(echoes),
                "errors": list(self.errors), "done": self.done,
                "msgs_sent": self.msgs_sent, "batches_sent": self.batches_sent}

    def transport_stats(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "index": self.index,
            "messages_sent": self.msgs_sent, "bytes_sent": self.bytes_sent, "batches_sent": self.batches_sent,
            "messages_received": self.msgs_received, "bytes_received": self.bytes_received,
            "batches_received": self.batches_received,
            "dropped_dead_peer": self.dropped_dead, "dropped_after_end": self.dropped_late,
            "batch_rtt": self.batch_rtt.export(), "delay": self.delay.export(),
            "timer_lateness": self.lateness.export(),
            "echo_rtt": self.echo_rtt.export(),
            "timers_fired": self.fired, "errors": list(self.errors), "reordered": self.reordered,
            "links": dict(self.links),
        }

    def end_time(self) -> float:
        if self.stop_at is not None:
            return max(self.last, min(self.stop_at, self.duration))
        return self.duration if self.done else max(self.last, min(self.clock(), self.duration))


def _wake(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


def node_location() -> dict[str, Any]:
    ctx = ray.get_runtime_context()
    import os

    return {"node_id": ctx.get_node_id(), "node_ip": ray.util.get_node_ip_address(), "pid": os.getpid()}
