"""The one decision surface of a recovery policy: driver-visible events in, actions out.

A policy is the invalidation path and the error handling of one IOMMU driver. It sees exactly what
that driver sees: the unmaps it is asked to flush, completions of its own CMD_SYNCs, its own
timers, GERROR with CMDQ_CONS.ERR (and, on VT-d, the ITE source id the hardware records), event
queue records, the outcome of the resets it or the PCI core performed, and config-space presence.
Nothing here says which device is really broken or which page is really free: that ground truth
belongs to the safety oracle in ``iommu_actor/oracle.py``.

Events and actions are frozen, slotted dataclasses (h11's style); a policy returns a list of
actions from ``handle(now, event)`` and keeps whatever state it needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Union

from pydantic import BaseModel, ConfigDict, ValidationError

from .commands import Cmd


class PolicyError(Exception):
    """A policy was misused or misconfigured: unknown name, bad parameter."""


# --- Events: what the driver sees ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UnmapStart:
    """A CPU entered the driver's flush for a domain: iommu_unmap() -> iotlb_sync for one IOVA
    range (strict mode), or, with ``full``, flush_iotlb_all for the whole domain (the dma-iommu
    flush queue in lazy mode: TLBI of the ASID, then a size-52 ATC_INV to every ATS master).

    ``sids`` are the ATS-enabled masters attached to the domain, as the driver's own lists have
    them (a device in the blocking domain for a reset is not attached). The flush is done when the
    policy returns ``CompleteUnmap`` for ``unmap`` (the flush's id).
    """

    cpu: int
    unmap: int
    asid: int
    addr: int
    size: int
    sids: tuple[int, ...]
    full: bool = False


@dataclass(frozen=True, slots=True)
class SyncDone:
    """The CMD_SYNC the driver tagged ``token`` was consumed (its MSI arrived / poll saw CONS pass)."""

    queue: int
    token: int


@dataclass(frozen=True, slots=True)
class CmdqError:
    """GERROR.CMDQ_ERR: CMDQ_CONS.ERR = ``cerror`` with CONS at the command tagged ``token``.

    ``ite_sid`` is only set by hardware that records the source of an invalidation time-out
    (VT-d's IQER.ITESID); SMMUv3 does not name the device, so it is -1 there.
    """

    queue: int
    cerror: int
    token: int
    ite_sid: int = -1


@dataclass(frozen=True, slots=True)
class TimerFired:
    token: Any


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One event-queue record (EVT_ID_*)."""

    evt_id: int
    sid: int
    addr: int


@dataclass(frozen=True, slots=True)
class ResetDone:
    """A function-level reset finished; ``ok`` is whether the function came back.

    Delivered for every reset, whoever started it (the policy's own ``ResetDevice``, or the PCI
    core on behalf of AER, sysfs or VFIO), after pci_dev_reset_iommu_done(): on success the core
    has re-attached the device's domain (ATS enabled, STE restored), which is when the series'
    ``reset_device_done`` op runs; on failure the device stays in the blocking domain.
    """

    sid: int
    ok: bool
    started_at: float


@dataclass(frozen=True, slots=True)
class PresenceReply:
    sid: int
    present: bool


Event = Union[UnmapStart, SyncDone, CmdqError, TimerFired, EventRecord, ResetDone, PresenceReply]


# --- Actions: what the driver does ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Submit:
    """Write ``cmds`` to command queue ``queue`` in one go (one CPU's batch stays contiguous)."""

    queue: int
    cmds: tuple[Cmd, ...]


@dataclass(frozen=True, slots=True)
class SetTimer:
    at: float
    token: Any


@dataclass(frozen=True, slots=True)
class CompleteUnmap:
    """iotlb_sync returns: the caller frees the page. ``err`` is what the flush returned (0,
    -ETIMEDOUT, -EIO, ...); the unmap path ignores it, exactly as Linux does."""

    unmap: int
    err: int = 0


@dataclass(frozen=True, slots=True)
class AckCmdqError:
    """Write GERRORN to acknowledge CMDQ_ERR; the queue restarts at CONS (re-running the command)."""

    queue: int


@dataclass(frozen=True, slots=True)
class ScrubQueuedAtcInv:
    """While ``queue`` is halted by CMDQ_CONS.ERR, rewrite queued ATC_INVs into CMD_SYNCs with
    CS=NONE: ``targets`` maps the token of a batch's CMD_SYNC to the streams whose ATC_INVs in that
    batch go. Only valid between a CmdqError and its AckCmdqError."""

    queue: int
    targets: dict


@dataclass(frozen=True, slots=True)
class WriteSte:
    """Write a stream table entry in memory; it is in effect only after CFGI_STE + CMD_SYNC."""

    sid: int
    config: int
    eats: int


@dataclass(frozen=True, slots=True)
class ResetDevice:
    """pci_reset_function() on the device behind ``sid``: the PCI core's reset path
    (pci_dev_reset_iommu_prepare, the FLR, pci_dev_reset_iommu_done), then ``ResetDone``."""

    sid: int


@dataclass(frozen=True, slots=True)
class DisableAts:
    """pci_disable_ats() on the device behind ``sid``. It takes effect only once no ATC_INV to the
    device is outstanding in any queue (the arm_smmu_invs rwlock's write side)."""

    sid: int


@dataclass(frozen=True, slots=True)
class SetBusMaster:
    """pci_set_master() / pci_clear_master(): with Bus Master Enable clear the device issues no DMA."""

    sid: int
    enable: bool


@dataclass(frozen=True, slots=True)
class ReportBroken:
    """iommu_report_device_broken(): the IOMMU core moves the device to the blocking domain (as
    pci_dev_reset_iommu_prepare does) until a successful reset's done() moves it back."""

    sid: int


@dataclass(frozen=True, slots=True)
class SyncReturned:
    """What one waited CMD_SYNC returned to the driver (0, -ETIMEDOUT, -EIO): counted per code."""

    code: int


@dataclass(frozen=True, slots=True)
class QueryPresence:
    sid: int


@dataclass(frozen=True, slots=True)
class SpinEnd:
    """The CPU stops spinning (interrupts back on) though its unmap is not complete yet."""

    cpu: int


@dataclass(frozen=True, slots=True)
class Note:
    """Something the driver would log or count: ``kind`` is one of NOTE_KINDS."""

    kind: str
    sid: int = -1
    text: str = ""
    #: "culprit": when the wait of the CMD_SYNC whose failure named the device began: its issue, or
    #: its reaching the head of its queue (-1: not known)
    since: float = -1.0


NOTE_KINDS = frozenset({"sync_timeout", "atc_timeout", "culprit", "reset_failed", "retry", "log", "fence",
                        "unfence"})

Action = Union[Submit, SetTimer, CompleteUnmap, AckCmdqError, ScrubQueuedAtcInv, WriteSte, ResetDevice,
               DisableAts, SetBusMaster, ReportBroken, QueryPresence, SpinEnd, SyncReturned, Note]


# --- Policies --------------------------------------------------------------------------------


class PolicyParams(BaseModel):
    """Base of every policy's parameters: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True, slots=True)
class HwInfo:
    """What the driver learns from the hardware at probe: queue count (IDR1/ECMDQ/CMDQV), CPUs,
    and the Invalidate Queue Depth of each ATS capability (uniform here)."""

    command_queues: int
    cpus: int
    invalidate_queue_depth: int


class Policy:
    """Base class: subclasses set ``name``, ``summary``, ``Params`` and implement ``handle``."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    Params: ClassVar[type[PolicyParams]] = PolicyParams
    #: The CPU spins with interrupts off while it waits (VT-d's qi_submit_sync, AMD's wait_on_sem
    #: under iommu->lock): time spent so counts as CPU lockup.
    irqs_off_wait: ClassVar[bool] = False
    #: The IOMMU this driver programs names the device of an invalidation time-out (VT-d ITESID).
    hw_reports_ite_sid: ClassVar[bool] = False
    #: Deliver event-queue records to handle() (most policies ignore them; they are always counted).
    wants_events: ClassVar[bool] = False
    #: Kconfig's default flush mode for the driver's architecture (host.flush: default): lazy on x86
    #: (AMD, VT-d: IOMMU_DEFAULT_DMA_LAZY), strict elsewhere (arm64)
    default_flush: ClassVar[str] = "strict"
    #: what the IOMMU does when an Invalidate Request times out: "cerror" (SMMUv3
    #: CERROR_ATC_INV_SYNC, VT-d ITE: the queue halts at the next sync) or "event" (AMD: an
    #: IOTLB_INV_TIMEOUT event record, the queue goes on)
    inv_timeout_action: ClassVar[str] = "cerror"
    #: the driver's sync (CMD_SYNC, COMPLETION_WAIT) holds its queue until it completes; VT-d's wait
    #: descriptor without the Fence flag does not (the IOMMU fetches on)
    fence_waits: ClassVar[bool] = True

    def __init__(self, params: PolicyParams, hw: HwInfo):
        self.params = params
        self.hw = hw
        #: the driver's MMIO view of the SMMU (CMDQ_CONS and the command at it), set by the host
        self.regs: SmmuRegisters | None = None

    def handle(self, now: float, event: Event) -> list[Action]:
        raise PolicyError(f"policy {self.name!r} does not handle {type(event).__name__}")

    def queue_of(self, cpu: int) -> int:
        """The command queue a CPU submits to: all on queue 0 with the classic single CMDQ,
        one per CPU (modulo the count) with ECMDQ or CMDQV."""
        return cpu % self.hw.command_queues

    @classmethod
    def kconfig_flush(cls, params: PolicyParams) -> str:
        """``host.flush: default`` for this driver: its architecture's Kconfig default."""
        return cls.default_flush

    def reset_queue(self) -> int:
        """Where the IOMMU core's STE changes for a reset go (the blocking domain and back)."""
        return self.queue_of(0)

    def hw_inv_timeout(self, scenario_timeout: float) -> float | None:
        """The Invalidate Request timeout the driver programs at probe (AMD: CTRL_INV_TO); by
        default the hardware's own (PCIe Completion Timeout), as the scenario gives it."""
        return scenario_timeout


class SmmuRegisters:
    """Read-only registers a driver may read at any time: where CONS is, and what is there.

    Linux reads CMDQ_CONS to find the command a CERROR points at and to tell whether its own
    CMD_SYNC has been reached; nothing here reveals which device is broken.
    """

    def __init__(self, smmu):
        self._smmu = smmu

    def cmdq_cons_cmd(self, queue: int):
        """The command CONS points at in ``queue`` (None when the queue is empty)."""
        cmds = self._smmu.queues[queue].cmds
        return cmds[0] if cmds else None

    def cmdq_depth(self, queue: int) -> int:
        return self._smmu.queues[queue].depth

    def cmdq_entry_before_cons(self, queue: int):
        """The queue entry one slot before CONS, as software reads it from queue memory."""
        return self._smmu.queues[queue].before_cons


POLICIES: dict[str, type[Policy]] = {}


def register(cls: type[Policy]) -> type[Policy]:
    """Add a policy under its ``name`` (built-ins by decorator; plug-ins through cluster/plugins.py)."""
    if not cls.name:
        raise PolicyError(f"policy class {cls.__name__} needs a name")
    taken = POLICIES.get(cls.name)
    if taken is not None and taken is not cls:
        raise PolicyError(f"policy class {cls.__name__}: the name {cls.name!r} is taken by "
                          f"{taken.__module__}.{taken.__name__}")
    POLICIES[cls.name] = cls
    return cls


def policy_names() -> list[str]:
    _load_builtin()
    return sorted(POLICIES)


def get_policy(name: str) -> type[Policy]:
    _load_builtin()
    try:
        return POLICIES[name]
    except KeyError:
        raise PolicyError(f"unknown policy {name!r}; known policies: {', '.join(sorted(POLICIES))} (others "
                          "load with --policy-file FILE.py or an ats_stress.policies entry point)") from None


def validate_params(name: str, params: dict[str, Any]) -> PolicyParams:
    """The policy's typed parameters, or PolicyError naming each bad field."""
    cls = get_policy(name)
    try:
        return cls.Params(**params)
    except ValidationError as exc:
        allowed = ", ".join(sorted(cls.Params.model_fields)) or "none"
        problems = "; ".join(
            f"policy.{'.'.join(str(p) for p in e['loc'])}: "
            + (f"unknown field, policy {name!r} has no parameter {e['loc'][-1]!r}" if e["type"] == "extra_forbidden"
               else e["msg"])
            for e in exc.errors())
        raise PolicyError(f"{problems} (parameters of policy {name!r}: {allowed})") from None


def make_policy(name: str, params: dict[str, Any], hw: HwInfo) -> Policy:
    cls = get_policy(name)
    return cls(validate_params(name, params), hw)


def _load_builtin() -> None:
    from . import policies  # noqa: F401  (registers the built-in policies)
