"""What is wrong with an action a policy returned, said as the policy's author needs it.

The host applies a policy's actions without checking them one by one (that is its hot path); when
applying one fails, or one would be silently meaningless (a timer in the past, a stream this SMMU
does not have), the host asks ``diagnose`` what is wrong and raises ``PolicyActionError``: one
paragraph naming the policy, the action, the field and what is allowed, and where the policy's
``handle()`` is. Sans-IO, like the rest of the model.
"""

from __future__ import annotations

import math

from .commands import Cmd
from .policy import (
    AckCmdqError,
    CompleteUnmap,
    DisableAts,
    LocalIrqRestore,
    LocalIrqSave,
    QueryPresence,
    ReportBroken,
    ResetDevice,
    ScrubQueuedAtcInv,
    SetBusMaster,
    SetTimer,
    SpinEnd,
    Submit,
    SyncReturned,
    WaitCmdqSpace,
    WriteSte,
)
from .spec import STRTAB_STE_0_CFG_ABORT, STRTAB_STE_0_CFG_BYPASS, STRTAB_STE_0_CFG_S1_TRANS, STRTAB_STE_0_CFG_S2_TRANS

_SID_ACTIONS = (WriteSte, ResetDevice, DisableAts, SetBusMaster, ReportBroken, QueryPresence)
_QUEUE_ACTIONS = (Submit, AckCmdqError, ScrubQueuedAtcInv, WaitCmdqSpace)
_CPU_ACTIONS = (LocalIrqSave, LocalIrqRestore, SpinEnd)
_STE_CONFIGS = {STRTAB_STE_0_CFG_ABORT: "abort", STRTAB_STE_0_CFG_BYPASS: "bypass",
                STRTAB_STE_0_CFG_S1_TRANS: "S1 translate", STRTAB_STE_0_CFG_S2_TRANS: "S2 translate"}


class PolicyActionError(Exception):
    """A policy returned an action the host cannot apply (a plug-in's bug): the message says which."""


def _ranges(values) -> str:
    """0..31, 40..47: sorted integers as runs."""
    vs = sorted(values)
    if not vs:
        return "none"
    out, start, prev = [], vs[0], vs[0]
    for v in vs[1:] + [None]:
        if v is not None and v == prev + 1:
            prev = v
            continue
        out.append(str(start) if start == prev else f"{start}..{prev}")
        if v is not None:
            start = prev = v
    return ", ".join(out)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _short(a) -> str:
    text = repr(a)
    return text if len(text) <= 160 else text[:150] + "...)"


def where(policy) -> str:
    """Where the policy's handle() is: 'FILE:LINE'."""
    code = getattr(type(policy).handle, "__code__", None)
    return f"{code.co_filename}:{code.co_firstlineno}" if code is not None else type(policy).__module__


def problem(node, a) -> str | None:
    """What is wrong with action ``a`` on ``node`` (an ``SmmuNode``), or None if nothing we know."""
    queues = node.smmu.queues
    cpus = len(node.irq_depth)
    if isinstance(a, _QUEUE_ACTIONS):
        if not _is_int(a.queue) or not 0 <= a.queue < len(queues):
            return (f"queue={a.queue!r} is not a command queue of this SMMU: they are 0..{len(queues) - 1} "
                    f"(hardware.command_queues: {len(queues)}); self.queue_of(cpu) gives the one a CPU submits to")
    if isinstance(a, Submit):
        if not isinstance(a.cmds, (tuple, list)):
            return f"cmds={a.cmds!r} is not a tuple of commands (build them with iommu_actor/commands.py)"
        for i, c in enumerate(a.cmds):
            if not isinstance(c, Cmd):
                return (f"cmds[{i}] is {c!r} ({type(c).__name__}), not a command: build commands with "
                        "iommu_actor/commands.py (cmd_tlbi_nh_va, cmd_atc_inv, cmd_sync, ...)")
        cap = queues[a.queue].capacity
        if len(a.cmds) > cap:
            return (f"{len(a.cmds)} commands at once, but command queue {a.queue} has {cap} entries "
                    "(hardware.cmdq_entries): split the batch, as Linux does in CMDQ_BATCH_ENTRIES chunks")
    elif isinstance(a, WaitCmdqSpace):
        cap = queues[a.queue].capacity
        if not _is_int(a.entries) or not 1 <= a.entries <= cap:
            return (f"entries={a.entries!r}: a wait for room must ask for 1..{cap} entries (command queue "
                    f"{a.queue} has {cap}: hardware.cmdq_entries); more would never be free")
        if not isinstance(a.until, (int, float)) or math.isnan(a.until):
            return f"until={a.until!r} is not a time in seconds (absolute scenario time, or inf)"
    elif isinstance(a, SetTimer):
        if not isinstance(a.at, (int, float)) or isinstance(a.at, bool) or math.isnan(a.at):
            return f"at={a.at!r} is not a time in seconds: SetTimer.at is absolute scenario time, now + delay"
        if a.at < node.now:
            return (f"at={a.at!r} is in the past (now is {node.now!r}): SetTimer.at is absolute scenario "
                    "time, not a delay: write SetTimer(now + delay, token)")
    elif isinstance(a, CompleteUnmap):
        if not _is_int(a.err):
            return f"err={a.err!r} is not an error number (0, -ETIMEDOUT, -EIO from iommu_actor/spec.py, negated)"
        if a.unmap not in node.inflight:
            if _is_int(a.unmap) and 0 <= a.unmap < node._next_job:
                return (f"unmap={a.unmap!r} was already completed: a flush returns once (one CompleteUnmap "
                        "per UnmapStart)")
            open_ = _ranges(node.inflight) if len(node.inflight) <= 8 else f"{len(node.inflight)} flushes"
            return (f"unmap={a.unmap!r} is no flush the host started: it must be the ``unmap`` of an UnmapStart "
                    f"not completed yet (the flushes open now: {open_})")
    elif isinstance(a, SyncReturned):
        if not _is_int(a.code) or not _is_int(a.cpu) or not -1 <= a.cpu < cpus:
            return f"code must be an error number and cpu -1 or 0..{cpus - 1} (topology.cpus: {cpus})"
    elif isinstance(a, _CPU_ACTIONS):
        if not _is_int(a.cpu) or not 0 <= a.cpu < cpus:
            return f"cpu={a.cpu!r} is not a CPU of this host: they are 0..{cpus - 1} (topology.cpus: {cpus})"
    elif isinstance(a, _SID_ACTIONS):
        sids = node.smmu.ste_mem
        if a.sid not in sids:
            return (f"sid={a.sid!r} is not a stream behind this SMMU: its streams are {_ranges(sids)} "
                    "(the sids of UnmapStart, CmdqError.ite_sid, EventRecord, ResetDone)")
        if isinstance(a, WriteSte):
            if a.config not in _STE_CONFIGS:
                return (f"config={a.config!r}: an STE's Config is one of "
                        + ", ".join(f"{v} ({n})" for v, n in _STE_CONFIGS.items())
                        + " (STRTAB_STE_0_CFG_* in iommu_actor/spec.py)")
            if a.eats not in (0, 1, 2):
                return f"eats={a.eats!r}: STE.EATS is 0 (ATS off), 1 (full ATS) or 2 (split-stage; STRTAB_STE_1_EATS_*)"
    return None


def bad_action(node, a, exc: BaseException | None = None) -> BaseException | None:
    """The error to raise for action ``a``: a ``PolicyActionError`` if ``problem`` finds one (or if
    ``a`` is no action at all), else None (then ``exc``, if any, is a defect of the model: re-raise it)."""
    why = problem(node, a)
    return None if why is None else _error(node, a, why)


def refused(node, a) -> PolicyActionError:
    """The error for action ``a``, which the node has found wrong itself (a negative queue, a time
    in the past, an unknown SID): ``problem`` names why."""
    return _error(node, a, problem(node, a) or "the model cannot carry it out")


def _error(node, a, why: str) -> PolicyActionError:
    policy = node.policy
    return PolicyActionError(f"policy {policy.name!r} returned {_short(a)} at {node.now:.6f} s: {why}. "
                             f"(its handle() is at {where(policy)})")
