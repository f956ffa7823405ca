"""The PCI and IOMMU core around a device: resets, ATS enable, bus mastering, the blocking domain.

Mainline since January 2026 (``pci_dev_reset_iommu_prepare/done``), every PCI reset runs as:

1. prepare: the device is attached to the blocking domain (an abort STE, CFGI_STE + CMD_SYNC), so
   none of its translated requests pass, and leaves its domain's invalidation list; ATS is
   disabled at the device (``pci_disable_ats``), which takes effect only once no ATC_INV to it is
   outstanding in any command queue (the arm_smmu_invs rwlock's write side);
2. the FLR, once the blocking STE is in effect and ATS is off: so a reset of a device with a hung
   ATC_INV outstanding starts only after that invalidation completed or the hardware gave it up;
3. done, only after a successful reset (DOMAIN.md): the domain is re-attached (STE restored, ATS
   enabled) and the driver is told (``ResetDone``: the series' ``reset_device_done``); after a
   failed one the device stays in the blocking domain.

Whoever asks: a chaos ``reset`` step (standing for AER, sysfs or VFIO), a policy's own
``ResetDevice``, or ``ReportBroken`` (the core's blocking domain without a reset, until a later
successful reset). The STE changes go through the driver's reset queue with CMD_SYNC tokens of
the core's own (``CORE_TOKEN_BASE`` and up), which the policy never sees completing.

Sans-IO: the node calls in with the scenario time; messages leave through the node's outbox.
"""

from __future__ import annotations

from ats_stress.device_actors.pcie import (
    FLR_AS_DEVICE,
    MSG_ATS_CTRL,
    MSG_BUS_MASTER,
    MSG_FLR,
)

from .commands import cmd_cfgi_ste, cmd_sync
from .oracle import BY_CORE, BY_POLICY
from .policy import ResetDone
from .spec import (
    STRTAB_STE_0_CFG_ABORT,
    STRTAB_STE_0_CFG_S1_TRANS,
    STRTAB_STE_1_EATS_ABT,
    STRTAB_STE_1_EATS_TRANS,
)

#: CMD_SYNC tokens of the core's STE changes (the policies' own count up from 1)
CORE_TOKEN_BASE = 1 << 48


class _Reset:
    __slots__ = ("sid", "outcome", "requested", "ste_token", "ats_off", "flr_started")

    def __init__(self, sid: int, outcome: int, requested: float):
        self.sid = sid
        self.outcome = outcome
        self.requested = requested
        self.ste_token = -1  # the blocking STE's CMD_SYNC, until it retires
        self.ats_off = False
        self.flr_started = -1.0


class ResetPath:
    """The core's side of resets and device isolation for one SMMU node."""

    def __init__(self, node):
        self.node = node
        self.blocked: set[int] = set()  # in the blocking domain: out of the domain's invalidation list
        self.ats_off: set[int] = set()  # ATS disabled at the device
        self.ats_waiting: dict[int, list] = {}  # sid -> callbacks once ATS is off (deferred pci_disable_ats)
        self.resets: dict[int, _Reset] = {}  # resets in progress
        self.again: dict[int, int] = {}  # a reset asked for while one was in progress: its outcome
        self.tokens: dict[int, _Reset | None] = {}  # core CMD_SYNC token -> the reset waiting on it
        self._next_token = CORE_TOKEN_BASE
        self.requested = 0
        self.deferred_ats_disables = 0  # pci_disable_ats calls that had to wait for invalidations

    # --- what the node asks ------------------------------------------------------------------------

    def reset(self, sid: int, outcome: int = FLR_AS_DEVICE) -> None:
        """pci_reset_function(): prepare, FLR, done."""
        self.requested += 1
        if sid in self.resets:
            self.again[sid] = outcome  # the PCI core serialises resets of one device
            return
        r = _Reset(sid, outcome, self.node.now)
        self.resets[sid] = r
        self.block(sid, r)
        self.disable_ats(sid, lambda: self._ats_off(r))

    def report_broken(self, sid: int) -> None:
        """iommu_report_device_broken(): the blocking domain, with no reset. The driver asked for it
        as part of its quarantine, so the abort STE is the policy's fence, not a reset's block."""
        if sid not in self.blocked:
            self.block(sid, None, BY_POLICY)

    def block(self, sid: int, waiter: _Reset | None, by: str = BY_CORE) -> None:
        """Attach ``sid`` to the blocking domain: an abort STE made effective by CFGI_STE + CMD_SYNC."""
        self.blocked.add(sid)
        self._write_ste(sid, STRTAB_STE_0_CFG_ABORT, STRTAB_STE_1_EATS_ABT, waiter, by)

    def disable_ats(self, sid: int, then=None) -> None:
        """pci_disable_ats(): the config write waits until no ATC_INV to ``sid`` is outstanding."""
        if sid in self.ats_off:
            if then is not None:
                then()
            return
        waiting = self.ats_waiting.get(sid)
        if waiting is None:
            waiting = self.ats_waiting[sid] = []
            if self.node.smmu.inv_pending.get(sid, 0):
                self.deferred_ats_disables += 1
        if then is not None:
            waiting.append(then)
        self.poll()

    def set_bus_master(self, sid: int, enable: bool) -> None:
        self.node.outbox.append((MSG_BUS_MASTER, sid, int(enable), 0, 0))
        self.node.oracle.on_bus_master(sid, enable, self.node.now, BY_POLICY)

    # --- what the node tells ------------------------------------------------------------------------

    def owns(self, token: int) -> bool:
        return token >= CORE_TOKEN_BASE

    def sync_done(self, token: int) -> None:
        r = self.tokens.pop(token, None)
        if r is not None and r.ste_token == token:
            r.ste_token = -1
            self._maybe_flr(r)

    def poll(self) -> None:
        """After every step of the node: apply the ATS disables whose invalidations have drained."""
        if not self.ats_waiting:
            return
        pending = self.node.smmu.inv_pending
        for sid in [s for s in self.ats_waiting if not pending.get(s, 0)]:
            callbacks = self.ats_waiting.pop(sid)
            self.ats_off.add(sid)
            self.node.outbox.append((MSG_ATS_CTRL, sid, 0, 0, 0))
            for cb in callbacks:
                cb()

    def flr_done(self, sid: int, ok: bool, started_at: float) -> None:
        """The device answered after its FLR: done() on success, the blocking domain kept otherwise."""
        node = self.node
        r = self.resets.pop(sid, None)
        node.oracle.on_reset(sid, ok, started_at, node.now)
        if ok and sid in self.blocked:
            self.blocked.discard(sid)
            self._write_ste(sid, STRTAB_STE_0_CFG_S1_TRANS, STRTAB_STE_1_EATS_TRANS, None)
        if ok and sid in self.ats_off:
            self.ats_off.discard(sid)
            node.outbox.append((MSG_ATS_CTRL, sid, 1, 0, 0))
        node.post(ResetDone(sid, ok, started_at))
        if r is not None and sid in self.again:
            self.reset(sid, self.again.pop(sid))

    # --- inside ----------------------------------------------------------------------------------------

    def _write_ste(self, sid: int, config: int, eats: int, waiter: _Reset | None, by: str = BY_CORE) -> None:
        """Write the STE and make it effective: CFGI_STE + CMD_SYNC (``waiter`` waits for the sync)."""
        node = self.node
        node.smmu.write_ste(sid, config, eats)
        node.ste_writer[sid] = by
        self._next_token += 1
        token = self._next_token
        self.tokens[token] = waiter
        if waiter is not None:
            waiter.ste_token = token  # before the submit: an idle queue completes it at once
        node.smmu.submit(node.policy.reset_queue(), (cmd_cfgi_ste(sid), cmd_sync(token)), node.now)

    def _ats_off(self, r: _Reset) -> None:
        r.ats_off = True
        self._maybe_flr(r)

    def _maybe_flr(self, r: _Reset) -> None:
        if r.ats_off and r.ste_token < 0 and r.flr_started < 0 and self.resets.get(r.sid) is r:
            r.flr_started = self.node.now
            self.node.outbox.append((MSG_FLR, r.sid, r.outcome, 0, 0))
