"""Batches between live actors: per-destination batching, sequence numbers, acks, echo probes.

Messages are routed per destination actor and appended to that destination's pending list; one
flush ships each pending list as one msgpack-encoded batch (at most ``BATCH_CAP`` messages; the
rest goes in the next batch). Every batch carries the sender's index and a per-(sender, receiver)
sequence number; the receiver applies batches in sequence and acknowledges them, and up to a
window of batches may be unacknowledged per destination; beyond that messages pile up and leave
as one bigger batch when a slot frees, so batches grow by themselves under load. Two ways to
carry a batch (``runtime.transport``):

- ``stream`` (default): frames on one connection per peer (``stream.py``); window
  ``STREAM_WINDOW`` (8), flush at the end of the event-loop iteration.
- ``ray``: one Ray actor call (``deliver``) per batch, acknowledged by its return. Ray does not
  promise submission order for an async actor's calls; the sequence numbers restore it. On a
  small machine fewer and bigger calls win: window ``WINDOW`` 1, flush ``FLUSH_DELAY`` (1 ms)
  after the first message.

The env variables ``ATS_LIVE_[STREAM_]WINDOW`` and ``ATS_LIVE_[STREAM_]FLUSH_DELAY`` override the
defaults (docs/performance.md). Nothing here ever awaits per message, so a hung endpoint never
blocks its neighbours. A call that fails because the destination actor died, or a stream its
peer closed, marks it dead; its unacknowledged, pending and later messages are dropped and
counted (``on_dead`` lets the SMMU shell answer for the root complex). Transport probes
(``ECHO_*``) ride real batches and measure the device round trip during a run.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from ray.exceptions import RayActorError, RayError, RayTaskError

from .stream import STREAM_FLUSH_DELAY, STREAM_WINDOW, StreamLinks
from .wire import _Samples, pack, unpack

#: batches in flight at once per destination on the ``ray`` transport (one Ray call per batch)
WINDOW = int(os.environ.get("ATS_LIVE_WINDOW", "1"))
#: wall seconds a flush waits after the first message for more to join the batch
FLUSH_DELAY = float(os.environ.get("ATS_LIVE_FLUSH_DELAY", "0.001"))
#: most messages in one batch; the rest leaves in the next one
BATCH_CAP = 1024
#: heap tag of a transport probe answered from the timer task
ECHO = "echo"
#: transport probes: (kind, origin actor index, wall time sent), piggy-backed on batches
ECHO_REQUEST, ECHO_REPLY = 0, 1
#: at most one probe per destination this often (wall s)
ECHO_EVERY = 0.05


class Transport(StreamLinks):
    """The sending and receiving side of a live actor (mixed into ``LiveShell``)."""

    def _init_transport(self) -> None:
        self._init_streams()
        self.peers: list = []
        self.dead: set[int] = set()
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
        # one Ray call per batch, or (``stream``) frames on one connection per peer
        self.window = WINDOW
        self.flush_delay = FLUSH_DELAY
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
        self.batch_rtt = _Samples()  # send -> acknowledged (wall s)
        self.delay = _Samples()  # oldest message of a batch: queued -> acknowledged (wall s)

    def on_dead(self, dest: int, msgs: list) -> None:
        self.dropped_dead += len(msgs)

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


    async def connect(self, peers: list, addrs: list | None = None, token: bytes = b"") -> bool:
        """``peers``: the actor handles this one sends to (index = destination). With ``addrs``
        (each peer's ``listen`` answer) batches go as frames on one connection per peer
        (``stream.py``) instead of one Ray call each."""
        self.peers = list(peers)
        if addrs is None:
            return True
        self.window = STREAM_WINDOW
        self.flush_delay = STREAM_FLUSH_DELAY
        await self._open_streams(addrs, token)
        return True

    # --- messages ---------------------------------------------------------------------------------

    async def deliver(self, payload: bytes) -> None:
        """A batch from a peer (its messages in order), by Ray call."""
        self._on_batch(payload)


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
            except RayTaskError as exc:  # the peer's code failed: a bug, not a lost peer, so its
                self._error(f"{self.kind} actor {self.index} -> peer {dest}: {exc}")  # endpoints stay
                self.dropped_dead += len(batch)  # the run fails on the error; nothing is surprise-removed
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


    def _on_echoes(self, echoes) -> None:
        for kind, origin, sent in echoes:
            if kind == ECHO_REQUEST:
                if self.started:
                    # answered from the timer task, like a device's answer to an Invalidate Request;
                    # due now (not at the model's last step, which an idle device left behind: that
                    # gap would count as timer lateness)
                    self._push(max(self.last, self.clock()), (ECHO, origin, sent))
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

