"""The fence-then-continue state machine's bookkeeping: stream states, unmaps (jobs), probes, parameters."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from ..commands import Cmd
from ..policy import (
    PolicyParams,
    UnmapStart,
)
from ..units import Duration

NORMAL, FENCING, FENCED, UNFENCING, DEAD = range(5)
STATE_NAMES = ("normal", "fencing", "fenced", "unfencing", "dead")

#: software timeout the IOMMU-core version adds to VT-d, which has none of its own
VTD_ADDED_SYNC_TIMEOUT = 1.0


class _Job:
    __slots__ = ("cpu", "unmap", "asid", "addr", "size", "unconfirmed", "tlbi_pending", "spinning", "seq",
                 "probes", "timer_at")

    def __init__(self, ev: UnmapStart, seq: int):
        self.seq = seq  # submission counter when the PTE was already gone
        self.probes: set[int] = set()  # tokens of this unmap's own probes still waiting
        self.timer_at = -1.0  # one software timer per unmap covers all its probes
        self.cpu = ev.cpu
        self.unmap = ev.unmap
        self.asid = ev.asid
        self.addr = ev.addr
        self.size = ev.size
        self.unconfirmed: set[int] = set()
        self.tlbi_pending = True
        self.spinning = True


class _Probe:
    __slots__ = ("token", "queue", "kind", "job", "cpu", "sids", "tlbi", "cmds", "suspected", "seq", "timed_out",
                 "armed", "deadline")

    def __init__(self, kind: str, job: int, cpu: int, sids: tuple[int, ...], tlbi: bool):
        self.token = -1
        self.queue = -1
        self.kind = kind  # "inv" (an unmap's), "search" (whole-ATC, shared), "fence" or "unfence"
        self.seq = -1
        self.job = job
        self.cpu = cpu
        self.sids = sids
        self.tlbi = tlbi
        self.cmds: tuple[Cmd, ...] = ()
        self.suspected = False
        self.timed_out = False
        self.armed = 0.0  # when its software timeout (last) started
        self.deadline = 0.0


class QuarantineParams(PolicyParams):
    sync_timeout: Duration = Field(1.0, gt=0, description="software CMD_SYNC timeout that starts a culprit search")
    culprit_search: Literal["bisect", "per-device-batches"] = "bisect"
    recover: bool = Field(True, description="reset fenced devices and unfence them after a successful reset")
    reset_delay: Duration = Field(0.1, description="from fence in effect to the FLR request")
    reset_waits_for_queues: bool = Field(True, description=(
        "hold the FLR while a CMD_SYNC still waits on an ATC_INV to the device: the reset would drop "
        "that invalidation and its queue would stay wedged until the hardware timeout"))
    scrub_halted_queue: bool = Field(True, description=(
        "while CERROR_ATC_INV_SYNC halts a queue, rewrite queued ATC_INVs for streams being fenced or "
        "searched into CMD_SYNCs, so each does not cost another hardware timeout"))
    recovery_queue: bool = Field(True, description=(
        "with several command queues, keep the last one for fence and unfence commands only, so a "
        "fence never waits behind a wedged CMD_SYNC"))


class IommuCoreParams(QuarantineParams):
    driver: Literal["arm-smmu-v3", "amd-iommu", "intel-vtd"] = "arm-smmu-v3"
    sync_timeout: Optional[Duration] = Field(  # type: ignore[assignment]
        None, gt=0, description="default: the driver's own (arm 1 s, AMD 100 ms, VT-d 1 s added)")
