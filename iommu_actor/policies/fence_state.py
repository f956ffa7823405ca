"""``fence-on-timeout``'s bookkeeping: stream states, flushes (jobs), probes, parameters."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from ..commands import Cmd
from ..policy import (
    PolicyParams,
    UnmapStart,
)
from ..units import Duration

NORMAL, FENCING, FENCED, DEAD = range(4)

#: software timeout the IOMMU-core version adds to VT-d, which has none of its own
VTD_ADDED_SYNC_TIMEOUT = 1.0


class _Job:
    __slots__ = ("cpu", "unmap", "asid", "addr", "size", "full", "unconfirmed", "tlbi_pending", "spinning", "seq",
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
        self.full = ev.full
        self.unconfirmed: set[int] = set()
        self.tlbi_pending = True
        self.spinning = True


class _Probe:
    __slots__ = ("token", "queue", "kind", "job", "cpu", "sids", "tlbi", "cmds", "suspected", "seq", "timed_out",
                 "armed", "deadline", "rest")

    def __init__(self, kind: str, job: int, cpu: int, sids: tuple[int, ...], tlbi: bool,
                 rest: tuple[int, ...] = ()):
        self.token = -1
        self.queue = -1
        self.kind = kind  # "inv" (a flush's own), "search" (whole-ATC, shared) or "fence"
        self.rest = rest  # a linear search: the suspects still to probe after this one
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


class FenceOnTimeoutParams(PolicyParams):
    sync_timeout: Duration = Field(1.0, gt=0, description="software CMD_SYNC timeout that starts a culprit search")
    culprit_search: Literal["bisect", "per-device-batches", "linear"] = Field(
        "bisect", description="bisect: halves, each with its own CMD_SYNC; per-device-batches: never two devices "
                              "behind one CMD_SYNC; linear: one SID at a time in sorted order (the series' retry)")
    recover: bool = Field(True, description="reset a fenced device; a successful reset unfences it")
    reset_delay: Duration = Field(0.1, description="from fence in effect to the reset request (and again while "
                                  "an ATC_INV to the device is still outstanding behind one of our CMD_SYNCs)")
    recovery_queue: bool = Field(True, description=(
        "with several command queues, keep the last one for fence commands only, so a fence never "
        "waits behind a wedged CMD_SYNC (ECMDQ/CMDQV hardware can do it; Linux does not today)"))
    poll_window: Optional[Duration] = Field(None, gt=0, description=(
        "the proposal's choice of how to wait: null spins with interrupts off from a flush's first command "
        "until it may return, one window however long the fence takes; a duration polls in windows of that "
        "length with interrupts on between them (a GERROR held for the CPU is taken there), as "
        "arm_smmu_cmdq_issue_cmdlist() does per call; either way the CPU cannot leave the flush"))
    hypothetical_scrub_halted_queue: bool = Field(False, description=(
        "NOT POSSIBLE IN LINUX (no NOP, CONS cannot be rewound, other CPUs' entries are theirs): while "
        "CERROR_ATC_INV_SYNC halts a queue, rewrite queued ATC_INVs for streams being fenced or searched "
        "into CMD_SYNCs"))
    hypothetical_sleep_while_held: bool = Field(False, description=(
        "NOT POSSIBLE IN LINUX (iotlb_sync may run in atomic context and cannot sleep): a CPU whose "
        "flush is held past the software timeout stops spinning and does other work"))


class IommuCoreParams(FenceOnTimeoutParams):
    driver: Literal["arm-smmu-v3", "amd-iommu", "intel-vtd"] = "arm-smmu-v3"
    sync_timeout: Optional[Duration] = Field(  # type: ignore[assignment]
        None, gt=0, description="default: the driver's own (arm 1 s, AMD 100 ms, VT-d 1 s added)")
