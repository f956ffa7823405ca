"""The PCI and IOMMU core around a device: resets, ATS enable, bus mastering, the blocking domain.

Mainline since January 2026 (``pci_dev_reset_iommu_prepare/done``), every PCI reset runs as:

1. prepare: the device is attached to the blocking domain. That is an attach like any other
   (``__iommu_attach_device`` -> arm_smmu_attach_dev_blocked()): ``arm_smmu_attach_prepare()``
   disables ATS at the device (``pci_disable_ats``), which waits for the arm_smmu_invs rwlock's
   readers, the CPUs inside an invalidation that includes the device (each at most its poll
   timeout); the abort STE is installed (CFGI_STE + CMD_SYNC); ``arm_smmu_attach_commit()`` sends an
   ATC_INV of the whole ATC ("ATS is being switched off, invalidate the entire ATC") + CMD_SYNC. Each
   CMD_SYNC is polled for the driver's timeout and its error ignored, as every
   arm_smmu_cmdq_issue_cmdlist() caller there does; an ATC_INV to a hung device costs one more
   hardware timeout in its queue;
2. the FLR;
3. done: the device's domain is re-attached (STE restored, a whole-ATC ATC_INV, ATS enabled: the
   order of arm_smmu_enable_ats()) and the driver is told (``ResetDone``: the series'
   ``reset_device_done``). Mainline 7.0 calls done() whatever the reset's outcome; the series from
   v3 on only after a successful reset, so a failed one leaves the device in the blocking domain
   (``Policy.reset_done_on_failure``).

Whoever asks: a chaos ``reset`` step (standing for AER, sysfs or VFIO), a policy's own
``ResetDevice``, or ``ReportBroken`` (iommu_report_device_broken(): the same attach of the blocking
domain, asynchronously in a work item, with no reset, until a later successful reset). The
commands go through the driver's reset queue with CMD_SYNC tokens of the core's own
(``CORE_TOKEN_BASE`` and up), which the policy never sees completing.

Sans-IO: the node calls in with the scenario time; messages leave through the node's outbox.
"""

from __future__ import annotations

from typing import Callable

from ats_stress.device_actors.pcie import (
    FLR_AS_DEVICE,
    MSG_ATS_CTRL,
    MSG_BUS_MASTER,
    MSG_FLR,
)

from .commands import cmd_atc_inv, cmd_cfgi_ste, cmd_sync
from .oracle import BY_CORE, BY_POLICY
from .policy import ResetDone
from .spec import (
    ATC_INV_SIZE_ALL,
    CMDQ_OP_CMD_SYNC,
    STRTAB_STE_0_CFG_ABORT,
    STRTAB_STE_0_CFG_S1_TRANS,
    STRTAB_STE_1_EATS_ABT,
    STRTAB_STE_1_EATS_TRANS,
)

#: CMD_SYNC tokens of the core's STE changes (the policies' own count up from 1)
CORE_TOKEN_BASE = 1 << 48

#: the node's timer tag: the core's poll of one of its CMD_SYNCs gives up
T_CORE = 5

_NOTHING = object()


class _Reset:
    __slots__ = ("sid", "outcome", "requested", "flr_started")

    def __init__(self, sid: int, outcome: int, requested: float):
        self.sid = sid
        self.outcome = outcome
        self.requested = requested
        self.flr_started = -1.0


class ResetPath:
    """The core's side of resets and device isolation for one SMMU node."""

    def __init__(self, node):
        self.node = node
        self.blocked: set[int] = set()  # in the blocking domain: out of the domain's invalidation list
        self.ats_off: set[int] = set()  # ATS disabled at the device
        self.ats_waiting: dict[int, list] = {}  # sid -> callbacks once ATS is off (pci_disable_ats waits)
        self.resets: dict[int, _Reset] = {}  # resets in progress
        self.again: dict[int, int] = {}  # a reset asked for while one was in progress: its outcome
        #: core CMD_SYNC token -> what to do once it completed or its poll gave up (None: nothing)
        self.tokens: dict[int, Callable[[], None] | None] = {}
        self.issued: dict[int, tuple[int, tuple]] = {}  # core token -> (queue, commands) while it waits
        #: what to do next, run by the node between steps (never from inside the SMMU's queue walk)
        self.due: list[Callable[[], None]] = []
        self._next_token = CORE_TOKEN_BASE
        self.requested = 0
        self.deferred_ats_disables = 0  # pci_disable_ats calls that had to wait for the invs readers
        self.poll_timeouts = 0  # the core's CMD_SYNC polls that gave up (the error is ignored)

    # --- what the node asks ------------------------------------------------------------------------

    def reset(self, sid: int, outcome: int = FLR_AS_DEVICE) -> None:
        """pci_reset_function(): prepare, FLR, done."""
        self.requested += 1
        if sid in self.resets:
            self.again[sid] = outcome  # the PCI core serialises resets of one device
            return
        r = _Reset(sid, outcome, self.node.now)
        self.resets[sid] = r
        if sid in self.blocked:  # already in the blocking domain (quarantined, or a failed reset): no attach
            self._flr(r)
        else:
            self._attach_blocking(sid, BY_CORE, lambda: self._flr(r))

    def report_broken(self, sid: int) -> None:
        """iommu_report_device_broken(): the blocking domain, with no reset (the series' broken_work,
        run asynchronously). The driver asked for it as part of its quarantine, so the abort STE is
        the policy's fence, not a reset's block."""
        if sid not in self.blocked:
            self._attach_blocking(sid, BY_POLICY, None)

    def disable_ats(self, sid: int, then: Callable[[], None] | None = None) -> None:
        """pci_disable_ats() from an attach: the config write waits until no CPU is inside an
        invalidation that includes ``sid`` (the write side of the arm_smmu_invs rwlock)."""
        if sid in self.ats_off:
            if then is not None:
                then()
            return
        waiting = self.ats_waiting.get(sid)
        if waiting is None:
            waiting = self.ats_waiting[sid] = []
            if self.node.invalidating(sid):
                self.deferred_ats_disables += 1
        if then is not None:
            waiting.append(then)
        self.poll()

    def ats_off_now(self, sid: int) -> None:
        """pci_disable_ats() from the invalidation context itself (the series' v4): at once."""
        if sid not in self.ats_off:
            self._ats_off(sid)

    def set_bus_master(self, sid: int, enable: bool) -> None:
        self.node.outbox.append((MSG_BUS_MASTER, sid, int(enable), 0, 0))
        self.node.oracle.on_bus_master(sid, enable, self.node.now, BY_POLICY)

    # --- what the node tells ------------------------------------------------------------------------

    def owns(self, token: int) -> bool:
        return token >= CORE_TOKEN_BASE

    def sync_done(self, token: int) -> None:
        self.issued.pop(token, None)
        then = self.tokens.pop(token, _NOTHING)
        if then is not _NOTHING and then is not None:
            self.due.append(then)

    def poll_timeout(self, token: int) -> None:
        """The driver's poll of a core CMD_SYNC gave up: the caller carries on (the error is ignored)."""
        self.issued.pop(token, None)
        then = self.tokens.pop(token, _NOTHING)
        if then is _NOTHING:
            return
        self.poll_timeouts += 1
        if then is not None:
            self.due.append(then)

    def ite(self, queue: int) -> None:
        """VT-d's Invalidation Time-out Error aborted the waits behind the invalidation that timed
        out: the core's own qi_submit_sync() calls restart, as every caller's does (with the device
        still there, for as long as it takes)."""
        q = self.node.smmu.queues[queue]
        alive = {w[1] for w in q.waits} | {c.token for c in q.cmds if c.op == CMDQ_OP_CMD_SYNC}
        for token, (qi, cmds) in list(self.issued.items()):
            if qi == queue and token not in alive:
                del self.issued[token]
                then = self.tokens.pop(token, None)
                self.due.append(lambda cmds=cmds, then=then: self._issue(cmds, then))

    def run_due(self) -> None:
        due, self.due = self.due, []
        for then in due:
            then()

    def poll(self) -> None:
        """After every step of the node: apply the ATS disables whose invalidations' readers are out."""
        if not self.ats_waiting:
            return
        for sid in [s for s in self.ats_waiting if not self.node.invalidating(s)]:
            self._ats_off(sid)

    def flr_done(self, sid: int, ok: bool, started_at: float) -> None:
        """The device answered after its FLR: done() (after a failed reset too, where the policy's
        kernel does so), then the driver is told."""
        node = self.node
        r = self.resets.pop(sid, None)
        node.oracle.on_reset(sid, ok, started_at, node.now)
        if sid in self.blocked and (ok or node.policy.reset_done_on_failure):
            self._restore(sid)
        node.post(ResetDone(sid, ok, started_at))
        if r is not None and sid in self.again:
            self.reset(sid, self.again.pop(sid))

    # --- inside ----------------------------------------------------------------------------------------

    def _attach_blocking(self, sid: int, by: str, then: Callable[[], None] | None) -> None:
        """Attach the blocking domain: prepare (ATS off), the abort STE, commit (a whole-ATC ATC_INV)."""
        self.blocked.add(sid)  # the device leaves its domain's invalidation list
        ats_was_on = sid not in self.ats_off  # master->ats_enabled (v4 has already turned it off)

        def commit() -> None:  # "ATS is being switched off, invalidate the entire ATC"
            if ats_was_on:
                self._issue((cmd_atc_inv(sid, 0, ATC_INV_SIZE_ALL),), then)
            elif then is not None:
                then()

        self.disable_ats(sid, lambda: self._write_ste(sid, STRTAB_STE_0_CFG_ABORT, STRTAB_STE_1_EATS_ABT, by, commit))

    def _restore(self, sid: int) -> None:
        """pci_dev_reset_iommu_done(): the device's domain again: STE, then arm_smmu_enable_ats()
        (a whole-ATC ATC_INV, then ATS on)."""
        self.blocked.discard(sid)  # back in its domain's invalidation list

        def enable_ats() -> None:
            self._issue((cmd_atc_inv(sid, 0, ATC_INV_SIZE_ALL),), lambda: self._ats_on(sid))

        self._write_ste(sid, STRTAB_STE_0_CFG_S1_TRANS, STRTAB_STE_1_EATS_TRANS, BY_CORE, enable_ats)

    def _write_ste(self, sid: int, config: int, eats: int, by: str, then: Callable[[], None] | None) -> None:
        """Write the STE and make it effective: CFGI_STE + CMD_SYNC (arm_smmu_sync_ste_for_sid())."""
        node = self.node
        node.smmu.write_ste(sid, config, eats)
        node.ste_writer[sid] = by
        self._issue((cmd_cfgi_ste(sid),), then)

    def _issue(self, cmds: tuple, then: Callable[[], None] | None) -> None:
        """arm_smmu_cmdq_issue_cmdlist(..., sync=true) from the core: ``cmds`` and a CMD_SYNC, polled for
        the driver's timeout; ``then`` runs once it completed or the poll gave up."""
        node = self.node
        self._next_token += 1
        token = self._next_token
        self.tokens[token] = then  # before the write: an idle queue completes it at once
        queue = node.policy.reset_queue()
        self.issued[token] = (queue, cmds)
        node.write_cmds(queue, cmds + (cmd_sync(token),))
        timeout = node.policy.poll_timeout()
        if timeout is not None and token in self.tokens:
            node.timers.append((node.now + timeout, (T_CORE, token)))

    def _ats_off(self, sid: int) -> None:
        self.ats_off.add(sid)
        self.node.outbox.append((MSG_ATS_CTRL, sid, 0, 0, 0))
        for cb in self.ats_waiting.pop(sid, ()):
            cb()

    def _ats_on(self, sid: int) -> None:
        if sid in self.ats_off and sid not in self.blocked:
            self.ats_off.discard(sid)
            self.node.outbox.append((MSG_ATS_CTRL, sid, 1, 0, 0))

    def _flr(self, r: _Reset) -> None:
        if r.flr_started < 0 and self.resets.get(r.sid) is r:
            r.flr_started = self.node.now
            self.node.outbox.append((MSG_FLR, r.sid, r.outcome, 0, 0))
