"""One command queue and its invalidations in flight, as the SMMU model keeps them (``smmu.py``)."""

from __future__ import annotations

from collections import deque

from .commands import Cmd
from .spec import CMDQ_ERR_CERROR_NONE_IDX

INV_OUTSTANDING = 0
INV_DONE = 1
INV_TIMED_OUT = 2

#: what the hardware does when an Invalidate Request times out
INV_TIMEOUT_CERROR = "cerror"  # SMMUv3 CERROR_ATC_INV_SYNC (VT-d ITE): the next CMD_SYNC halts the queue
INV_TIMEOUT_EVENT = "event"  # AMD: an IOTLB_INV_TIMEOUT event record, the queue goes on


class InvRecord:
    """One Invalidate Request in flight: which stream and ITag, which queue, when it was sent."""

    __slots__ = ("sid", "itag", "queue", "sent_at", "state", "seq")

    def __init__(self, sid: int, itag: int, queue: int, sent_at: float, seq: int = 0):
        self.seq = seq  # issue order within its queue
        self.sid = sid
        self.itag = itag
        self.queue = queue
        self.sent_at = sent_at
        self.state = INV_OUTSTANDING


class CommandQueue:
    """One in-order command queue (the CMDQ, or one ECMDQ / CMDQV virtual queue)."""

    __slots__ = ("index", "cmds", "cons", "prod", "outstanding", "inflight", "failed_sid",
                 "err", "hw_timer_at", "sync_submitted", "before_cons", "inv_issued", "waits", "capacity",
                 "space_watch")

    def __init__(self, index: int, capacity: int = 1 << 16):
        self.index = index
        self.capacity = capacity  # entries (hardware.cmdq_entries)
        #: the host wants to hear when this many slots are free (0: nobody waits for room)
        self.space_watch = 0
        self.cmds: deque[Cmd] = deque()
        self.cons = 0  # commands consumed (CMDQ_CONS, unwrapped)
        self.prod = 0  # commands written (CMDQ_PROD, unwrapped)
        self.outstanding = 0  # ATC_INVs issued and not yet completed or timed out
        self.inflight: deque[InvRecord] = deque()  # issue order == deadline order
        self.failed_sid = -1  # first stream whose invalidation timed out since the last CMD_SYNC
        self.err = CMDQ_ERR_CERROR_NONE_IDX  # CMDQ_CONS.ERR while halted
        self.hw_timer_at = -1.0
        #: (queue position, submission time) of each CMD_SYNC software queued and not yet retired
        self.sync_submitted: deque[tuple[int, float]] = deque()
        self.before_cons: Cmd | None = None  # the entry one slot before CONS (consumed last)
        self.inv_issued = 0  # ATC_INVs issued so far (their InvRecord.seq)
        #: fence_waits=False: waits fetched and not yet complete: (invalidations before it, token, position)
        self.waits: deque[tuple[int, int, int]] = deque()

    @property
    def depth(self) -> int:
        return self.prod - self.cons
