"""What crosses between live actors: msgpack batches, their routing, and bounded timing samples."""

from __future__ import annotations

from typing import Any

import msgpack

#: transport delay samples kept per actor (beyond it, every other one is dropped)
MAX_SAMPLES = 20_000


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
