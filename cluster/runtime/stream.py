"""The ``stream`` transport between live actors: one connection per peer, batches as frames.

The driver has every actor listen (``listen``: TCP on a random port of its node's address, and on
Linux a Unix socket in the abstract namespace) and hands each actor its peers' addresses and a
per-run token (``connect``); each actor opens one connection per peer (a Unix socket to a peer on
its own node, TCP across nodes) and writes each batch as a length-prefixed msgpack frame; the
receiver answers with cumulative acknowledgements on the same connection. Ray still places,
starts, watches and kills the actors; only the batches leave Ray's call path, which costs a task
submission, a reply object and two thread hand-offs per call (~1 ms round trip, ~1,000 calls/s per
channel here; a frame costs two socket writes, and on loopback TCP those were a third of the SMMU
actor's time). A closed socket marks the peer dead (``transport.py`` drops what it never
acknowledged). Used by ``LiveShell`` through the ``StreamLinks`` mixin.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections import deque

import ray

from .wire import pack, unpack

#: batches in flight at once per destination on a stream (sequence numbers keep them in order)
STREAM_WINDOW = int(os.environ.get("ATS_LIVE_STREAM_WINDOW", "8"))
#: wall seconds a stream flush waits after the first message (0: at the end of this event-loop iteration)
STREAM_FLUSH_DELAY = float(os.environ.get("ATS_LIVE_STREAM_FLUSH_DELAY", "0"))


class _Channel(asyncio.Protocol):
    """The sending end of one stream (this actor -> peer ``dest``): length-prefixed msgpack frames
    out, cumulative acknowledgements (the last sequence number the peer applied, 8 bytes) back."""

    def __init__(self, shell: "StreamLinks", dest: int):
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

    def __init__(self, shell: "StreamLinks"):
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
            try:
                last = shell._on_batch(payload)
            except Exception as exc:  # a bad frame or a bug here: say so (the run fails on it), not a dead peer
                shell._error(f"{shell.kind} actor {shell.index}: receiving from actor {self.src}: "
                             f"{type(exc).__name__}: {exc}")
                self.transport.abort()
                return
        if pos:
            del buf[:pos]
        if last >= 0:
            self.transport.write(last.to_bytes(8, "little"))


class StreamLinks:
    """The stream side of a live actor (mixed into ``LiveShell``): listening, connecting, the
    handshake, and acknowledgements coming back on a channel."""

    def _init_streams(self) -> None:
        self.stream = False
        self.token = b""
        self.server: asyncio.AbstractServer | None = None
        self.unix_server: asyncio.AbstractServer | None = None
        self.links = {"unix": 0, "tcp": 0}  # the streams this actor opened, by kind
        self.channels: dict[int, _Channel] = {}

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

    async def _open_streams(self, addrs: list, token: bytes) -> None:
        """Stream transport, step 2: one connection per peer (a Unix socket to a peer on this
        node, TCP to the others), announced by a first frame with the run's token."""
        self.stream = True
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

