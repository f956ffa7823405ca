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
from .spec import ARM_SMMU_CMDQ_ENTRIES
from .suggest import did_you_mean


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
    """A timer the policy set (``SetTimer(at, token)``) is due: ``token`` is the one it gave. Timers
    cannot be cancelled: a policy ignores one it no longer needs (check its own state)."""

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
    """The answer to ``QueryPresence(sid)``: whether config space still answers (a removed device
    does not; a hung one does)."""

    sid: int
    present: bool


@dataclass(frozen=True, slots=True)
class CmdqSpace:
    """CONS of ``queue`` moved on while the driver waited for room (``WaitCmdqSpace`` tagged
    ``token``): the driver reads CMDQ_CONS again (``SmmuRegisters.cmdq_space``) to see whether what
    it wants to write fits now; another CPU may have taken the room first."""

    queue: int
    token: Any


Event = Union[UnmapStart, SyncDone, CmdqError, TimerFired, EventRecord, ResetDone, PresenceReply, CmdqSpace]


# --- Actions: what the driver does ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Submit:
    """Write ``cmds`` to command queue ``queue`` in one go (one CPU's batch stays contiguous).

    A queue has ``hardware.cmdq_entries`` slots. A driver that models its own wait for room reads
    ``SmmuRegisters.cmdq_space`` first and waits with ``WaitCmdqSpace``; a write that does not fit
    anyway waits in the host, in the order it was made, until CONS has moved on far enough (counted
    in the summary's ``cmdq_full_waits``)."""

    queue: int
    cmds: tuple[Cmd, ...]


@dataclass(frozen=True, slots=True)
class SetTimer:
    """Deliver ``TimerFired(token)`` at scenario time ``at``: absolute seconds, the same clock as
    ``handle(now, ...)``'s ``now``, not a delay: write ``SetTimer(now + delay, token)``. ``at`` may
    be ``now`` (the timer fires once the current actions are applied) but not earlier: a time in
    the past fails the run naming the action (it is nearly always a delay written as a time)."""

    at: float
    token: Any


@dataclass(frozen=True, slots=True)
class LocalIrqSave:
    """local_irq_save() on ``cpu``: its interrupts are off from now until the matching
    ``LocalIrqRestore`` (saves nest). The time counts as CPU lockup, and an interrupt routed to that
    CPU (``host.gerror_irq_cpu``: GERROR, the event queue's) waits until its interrupts are on again."""

    cpu: int


@dataclass(frozen=True, slots=True)
class LocalIrqRestore:
    """local_irq_restore() on ``cpu``: the outermost one turns its interrupts back on, and the
    interrupts held for it are taken at once (in the same instant, before the CPU runs on)."""

    cpu: int


@dataclass(frozen=True, slots=True)
class WaitCmdqSpace:
    """The driver polls CMDQ_CONS until ``entries`` slots of ``queue`` are free
    (arm_smmu_cmdq_poll_until_not_full(), AMD's __iommu_queue_command_sync() loop, qi_submit_sync()'s
    free_cnt loop): ``CmdqSpace(queue, token)`` comes when CONS has moved on so far. ``until`` is when
    the driver stops waiting (its own timeout; it also sets its own timer): the host counts the
    wait's time up to then at the latest."""

    queue: int
    entries: int
    token: Any
    until: float = float("inf")


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
    """pci_disable_ats() on the device behind ``sid``. ``deferred`` (the IOMMU core's way, through
    an attach): it takes effect only once no CPU is inside an invalidation that includes the device
    (the arm_smmu_invs rwlock's write side waits for its readers). ``deferred=False``: at once, from
    the invalidation context itself (the series' v4 does so in its per-SID retry)."""

    sid: int
    deferred: bool = True


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
    """What one waited CMD_SYNC returned to the driver (0, -ETIMEDOUT, -EIO): counted per code.

    ``cpu`` is the CPU whose flush waited on it and ``issued`` when it was written (-1: not said);
    with ``cpu`` the host files the code under that CPU's unmap, for the story of a UAF
    (``uaf-trace.jsonl``). The flush drivers (``policies/flusher.py``) fill both in themselves."""

    code: int
    cpu: int = -1
    issued: float = -1.0


@dataclass(frozen=True, slots=True)
class QueryPresence:
    """Read the device's config space (pci_device_is_present()): ``PresenceReply`` comes back."""

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
                        "unfence", "cmdq_timeout", "cmd_dropped"})

Action = Union[Submit, SetTimer, CompleteUnmap, AckCmdqError, ScrubQueuedAtcInv, WriteSte, ResetDevice,
               DisableAts, SetBusMaster, ReportBroken, QueryPresence, SpinEnd, SyncReturned, Note,
               LocalIrqSave, LocalIrqRestore, WaitCmdqSpace]


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
    """Base class of a recovery policy: the invalidation path and error handling of one driver.

    A subclass sets ``name`` (what ``--policy`` and ``policy.name`` take), ``summary`` (one line for
    ``ats-stress policies``) and ``Params`` (a ``PolicyParams`` model: the keys it accepts under
    ``policy:``; a ``Duration`` field takes ``100ms``), and implements ``handle(now, event)``:
    given the scenario time in seconds and one event (``UnmapStart``, ``SyncDone``, ``TimerFired``,
    ``CmdqError``, ``EventRecord``, ``ResetDone``, ``PresenceReply``, ``CmdqSpace``), it returns a
    list of actions (``Submit``, ``SetTimer``, ``CompleteUnmap``, ...; each documented on its class).
    ``self.params`` holds its parameters, ``self.hw`` what probe found (``HwInfo``),
    ``self.queue_of(cpu)`` the queue a CPU submits to, ``self.regs`` CMDQ_CONS and the command at
    it. docs/writing-a-policy.md walks through a complete one.

    Class attributes a subclass may override to say how its driver waits and what its hardware
    does (the defaults are arm-smmu-v3's on an SMMUv3, except ``irqs_off_wait``):

    irqs_off_wait (bool, False)
        The CPU spins with interrupts off while it waits for its sync (arm-smmu-v3, VT-d, AMD all
        do): that time counts as CPU lockup, and the GERROR interrupt routed to that CPU
        (``host.gerror_irq_cpu``) waits until its interrupts are on again.
    irqs_off_windows ("flush" or "explicit", "flush")
        With ``irqs_off_wait``: "flush", the host turns interrupts off for the whole flush (from
        UnmapStart to CompleteUnmap or SpinEnd); "explicit", the policy says when, with
        LocalIrqSave / LocalIrqRestore.
    reset_done_on_failure (bool, True)
        pci_dev_reset_iommu_done() also runs after a failed reset, re-attaching the device's
        domain (mainline); False leaves it in the blocking domain (the posted series from v3).
    hw_reports_ite_sid (bool, False)
        The IOMMU names the device of an invalidation time-out (VT-d's ITESID): ``CmdqError.ite_sid``.
    wants_events (bool, False)
        Deliver event-queue records (``EventRecord``) to ``handle``; they are counted either way.
    default_flush ("strict" or "lazy", "strict")
        ``host.flush: default`` for this driver (Kconfig: lazy on x86, strict on arm64).
    inv_timeout_action ("cerror" or "event", "cerror")
        What the IOMMU does when an Invalidate Request times out: "cerror" (SMMUv3
        CERROR_ATC_INV_SYNC, VT-d ITE: the queue halts at the next sync; the policy gets
        ``CmdqError`` and must ``AckCmdqError``) or "event" (AMD: an EventRecord, the queue goes on).
    fence_waits (bool, True)
        The driver's sync holds its queue until it completes (CMD_SYNC, COMPLETION_WAIT); False
        for VT-d's wait descriptor without the Fence flag.
    can_fence (bool, True)
        The policy has a recovery path that can fence a device; False makes report.md say "no
        recovery" when nothing was fenced.

    Methods a subclass may override: ``poll_timeout()`` (its software timeout for one sync, 1 s;
    the host uses it to judge which devices it could have caught), ``cmdq_entries(params)`` (the
    queue size it ends up with), ``hw_inv_timeout(t)`` (the Invalidate Request timeout it programs),
    ``kconfig_flush(params)``, ``reset_queue()``, ``queue_of(cpu)``.

    What the host counts from what it returns: software timeouts from ``Note("sync_timeout")``,
    or, for a policy that says nothing of its syncs (no such Note, no ``SyncReturned``), from
    ``CompleteUnmap(err=-ETIMEDOUT)``; flush return codes
    from ``CompleteUnmap.err``; each sync's code from ``SyncReturned``. A bad action (a queue,
    stream or CPU that does not exist, a flush completed twice, a timer in the past) fails the run
    with one paragraph naming the action and the field. A policy never sees ground truth.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    Params: ClassVar[type[PolicyParams]] = PolicyParams
    #: The CPU spins with interrupts off while it waits (arm_smmu_cmdq_issue_cmdlist() between
    #: local_irq_save and local_irq_restore, VT-d's qi_submit_sync under raw_spin_lock_irqsave, AMD's
    #: flush under spin_lock_irqsave(&dom->lock)): time spent so counts as CPU lockup.
    irqs_off_wait: ClassVar[bool] = False
    #: Where the interrupts-off windows are: "flush" (the host turns the CPU's interrupts off for
    #: the whole flush, from UnmapStart to CompleteUnmap or SpinEnd, when ``irqs_off_wait``), or
    #: "explicit" (the policy says when, with LocalIrqSave / LocalIrqRestore: one window per
    #: arm_smmu_cmdq_issue_cmdlist() call on arm, per qi_submit_sync() attempt on VT-d).
    irqs_off_windows: ClassVar[str] = "flush"
    #: pci_dev_reset_iommu_done() runs after a failed reset too, re-attaching the device's domain
    #: (mainline 7.0 calls it whatever the outcome); False: only after a successful reset (the
    #: posted series from v3, and the proposals built on it), so a failed reset leaves the device in
    #: the blocking domain.
    reset_done_on_failure: ClassVar[bool] = True
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
    #: The driver has a recovery path that can fence a device (block its translated requests or its
    #: DMA). False for the mainline drivers, which only log and go on; the report uses it to say why
    #: nothing was fenced.
    can_fence: ClassVar[bool] = True

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

    def poll_timeout(self) -> float | None:
        """How long the driver polls one CMD_SYNC before it gives up (None: for ever). The IOMMU core's
        own syncs (the STE and ATC invalidations of an attach) are polled so too, their errors ignored.
        Default: ARM_SMMU_POLL_TIMEOUT_US, 1 s."""
        return 1.0

    def reset_queue(self) -> int:
        """Where the IOMMU core's STE changes for a reset go (the blocking domain and back)."""
        return self.queue_of(0)

    @classmethod
    def cmdq_entries(cls, params: PolicyParams) -> int:
        """``hardware.cmdq_entries: null``: the command queue size this driver ends up with on its
        hardware (arm-smmu-v3's by default: ``spec.ARM_SMMU_CMDQ_ENTRIES``)."""
        return ARM_SMMU_CMDQ_ENTRIES

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

    def cmdq_space(self, queue: int) -> int:
        """Free slots of ``queue``: its size less what is written and not yet consumed (PROD - CONS)."""
        q = self._smmu.queues[queue]
        return q.capacity - q.depth


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
        raise PolicyError(f"unknown policy {name!r}; {did_you_mean(name, POLICIES)}known policies: "
                          f"{', '.join(sorted(POLICIES))} (others "
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
            + (f"unknown field, policy {name!r} has no parameter {e['loc'][-1]!r}"
               + (f"; {did_you_mean(e['loc'][-1], cls.Params.model_fields).strip()}"
                  if did_you_mean(e['loc'][-1], cls.Params.model_fields) else "")
               if e["type"] == "extra_forbidden"
               else e["msg"])
            for e in exc.errors())
        raise PolicyError(f"{problems} (parameters of policy {name!r}: {allowed})") from None


def make_policy(name: str, params: dict[str, Any], hw: HwInfo) -> Policy:
    cls = get_policy(name)
    return cls(validate_params(name, params), hw)


def _load_builtin() -> None:
    from . import policies  # noqa: F401  (registers the built-in policies)
