"""The safety oracle: ground truth, kept away from every recovery policy.

It knows what no driver knows: which mapping a translated request really came from, whether the
unmap of that mapping was already reported complete to software, whether the page has been given
to someone else since, and when each device really started misbehaving (from the chaos plan and
from Ray-level faults). From that it counts UAF exposures and judges each fence.

- A **UAF exposure** is a translated request (through a device's ATC) reaching memory with a
  mapping whose flush was reported complete: the page is free, or someone else's.
- In lazy flush mode the caller gets the buffer back as soon as dma_unmap returns, before the
  flush that covers it (dma-iommu's flush queue defers only the IOVA and the page-table pages):
  a translated request in that window is counted apart, as ``lazy_window_dma``, the exposure lazy
  mode accepts by design; once the flush has completed it is a UAF exposure as in strict mode.
- Untranslated requests (ATS disabled) are translated by the SMMU's page walk, so they reach the
  current mapping or fault: counted, never a UAF.
- A **fence** is the recovery policy isolating a device: an STE that blocks its translated
  requests (written by the policy and made effective by CFGI_STE), or its Bus Master Enable
  cleared (the posted series' v1). The IOMMU core's blocking domain during a PCI reset is not a
  fence. A fence of a device with no fault is a culprit mistake (``fenced_healthy``); an unfence
  is the device's translated requests allowed again (after a successful reset).
- A faulty device is **catchable** once the driver has seen a symptom that points at it: an
  Invalidate Request to it was still unanswered when one of the driver's CMD_SYNC waits timed out
  in software, and had been for at least the driver's software timeout (so it alone would have
  timed that wait out), or the hardware gave one of its invalidations up (CERROR_ATC_INV_SYNC,
  VT-d's ITE, AMD's IOTLB_INV_TIMEOUT). A catchable device never fenced is a culprit the policy
  missed (the verdict's "no culprit fenced"). A device that lies is never catchable: nothing a
  driver sees points at it.

Sans-IO: it is told things with the scenario time; it never reads a clock.
"""

from __future__ import annotations

import bisect
from typing import TYPE_CHECKING

from .spec import STRTAB_STE_0_CFG_S1_TRANS, STRTAB_STE_1_EATS_TRANS

if TYPE_CHECKING:
    from .uaftrace import UafTrace

#: who wrote an STE that took effect
BY_POLICY = "policy"
BY_CORE = "core"  # the IOMMU core / PCI reset path (pci_dev_reset_iommu_prepare/done)


class Oracle:
    def __init__(self, fault_starts: dict[int, list[float]] | None = None):
        #: sid -> sorted start times of every fault the scenario gives it (ground truth)
        self.fault_starts: dict[int, list[float]] = {s: sorted(v) for s, v in (fault_starts or {}).items()}
        self.page_owner: dict[int, int] = {}  # pa -> tag of the mapping that owns it now
        self.completed: set[int] = set()  # tags whose unmap was reported complete
        self.returned: set[int] = set()  # lazy mode: unmap returned, its flush not yet complete
        self.uaf_exposures = 0
        self.uaf_reallocated = 0
        self.uaf_by_sid: dict[int, int] = {}
        self.first_uaf_at: float | None = None
        self.lazy_window_dma = 0
        self.translated_allowed = 0
        self.translated_blocked = 0
        self.untranslated_allowed = 0
        self.untranslated_faulted = 0
        self.blocked_by_sid: dict[int, int] = {}
        self.ste_blocks: set[int] = set()  # streams whose effective STE blocks translated requests
        self.bus_master_off: set[int] = set()
        self.fenced: dict[int, float] = {}  # sid -> when the policy's fence took effect
        self.verdict_sync: dict[int, float] = {}  # sid -> when the CMD_SYNC that named it was issued
        self.fences: list[dict] = []
        self.unfences: list[dict] = []
        self.fenced_healthy = 0
        self.reset_blocks = 0  # the core's blocking domain took effect for a reset
        self.last_reset_start: dict[int, float] = {}
        self.resets: list[dict] = []
        #: faulty sid -> when the driver first saw a symptom pointing at it (see "catchable" above)
        self.catchable: dict[int, float] = {}
        #: the story of each UAF (iommu_actor/uaftrace.py), told when one is counted; None: not kept
        self.trace: UafTrace | None = None

    # --- what happened to memory --------------------------------------------------------------

    def on_map(self, tag: int, pa: int) -> None:
        self.page_owner[pa] = tag

    def on_unmap_returned(self, tag: int) -> None:
        """Lazy mode: dma_unmap returned for mapping ``tag``, its flush still queued."""
        self.returned.add(tag)

    def on_unmap_complete(self, tag: int, pa: int) -> None:
        """Software was told the flush for mapping ``tag`` is complete: the page is now free."""
        self.returned.discard(tag)
        self.completed.add(tag)
        if self.page_owner.get(pa) == tag:
            del self.page_owner[pa]

    def on_memory_access(self, sid: int, pa: int, tag: int, now: float) -> None:
        """A translated request reached memory."""
        self.translated_allowed += 1
        if tag in self.completed:
            self.uaf_exposures += 1
            self.uaf_by_sid[sid] = self.uaf_by_sid.get(sid, 0) + 1
            if self.first_uaf_at is None:
                self.first_uaf_at = now
            owner = self.page_owner.get(pa)
            if owner is not None and owner != tag:
                self.uaf_reallocated += 1
            if self.trace is not None:
                self.trace.exposure(sid, pa, tag, now, owner)
        elif tag in self.returned:
            self.lazy_window_dma += 1

    def on_blocked(self, sid: int) -> None:
        self.translated_blocked += 1
        self.blocked_by_sid[sid] = self.blocked_by_sid.get(sid, 0) + 1

    def on_untranslated(self, sid: int, pa: int) -> None:
        """An untranslated request: the SMMU's walk of the current page table (pa < 0: it faulted)."""
        if pa < 0:
            self.untranslated_faulted += 1
        else:
            self.untranslated_allowed += 1

    # --- what happened to devices -------------------------------------------------------------

    def note_fault(self, sid: int, at: float) -> None:
        """A fault not in the plan (an actor or a node died) began at ``at``."""
        bisect.insort(self.fault_starts.setdefault(sid, []), at)

    def fault_start(self, sid: int, now: float) -> float | None:
        """When the latest fault of ``sid`` that began at or before ``now`` began (None: healthy)."""
        starts = self.fault_starts.get(sid)
        if not starts:
            return None
        i = bisect.bisect_right(starts, now)
        return starts[i - 1] if i else None

    def on_unanswered(self, sid: int, now: float) -> None:
        """The driver saw a symptom pointing at ``sid`` (an invalidation it timed out waiting for,
        or one the hardware gave up): a faulty device is catchable from now on."""
        if sid not in self.catchable and self.fault_start(sid, now) is not None:
            self.catchable[sid] = now

    def on_verdict(self, sid: int, sync_issued_at: float) -> None:
        """The policy named ``sid`` as the culprit of a CMD_SYNC whose wait began at
        ``sync_issued_at`` (its issue, or its reaching the head of its queue: what the driver
        knows, kept to time the fence that follows)."""
        self.verdict_sync[sid] = sync_issued_at

    def on_ste_effective(self, sid: int, config: int, eats: int, now: float, by: str = BY_POLICY) -> None:
        """The SMMU started using a new STE for ``sid`` (a CFGI_STE was consumed), written by the
        policy (``BY_POLICY``) or by the IOMMU core's reset path (``BY_CORE``)."""
        blocking = not (config == STRTAB_STE_0_CFG_S1_TRANS and eats == STRTAB_STE_1_EATS_TRANS)
        if blocking:
            self.ste_blocks.add(sid)
            if by == BY_CORE:
                self.reset_blocks += 1
        else:
            self.ste_blocks.discard(sid)
        self._isolation_changed(sid, now, by)

    def on_bus_master(self, sid: int, enabled: bool, now: float, by: str = BY_POLICY) -> None:
        """Bus Master Enable of ``sid`` written: with it clear the device issues no DMA."""
        if enabled:
            self.bus_master_off.discard(sid)
        else:
            self.bus_master_off.add(sid)
        self._isolation_changed(sid, now, by)

    def _isolation_changed(self, sid: int, now: float, by: str) -> None:
        isolated = sid in self.ste_blocks or sid in self.bus_master_off
        if isolated and sid not in self.fenced and by == BY_POLICY:
            self.fenced[sid] = now
            start = self.fault_start(sid, now)
            if start is None:
                self.fenced_healthy += 1
            issued = self.verdict_sync.pop(sid, None)
            self.fences.append({"sid": sid, "at_s": now, "fault_start_s": start,
                                "latency_s": None if start is None else now - start,
                                # from the CMD_SYNC whose timeout (or CERROR) named it to the fence
                                "after_sync_s": None if issued is None else now - issued})
        elif not isolated and sid in self.fenced:
            fenced_at = self.fenced.pop(sid)
            reset_at = self.last_reset_start.get(sid)
            self.unfences.append({"sid": sid, "at_s": now, "fenced_s": now - fenced_at,
                                  "recovery_s": None if reset_at is None else now - reset_at})

    def on_reset(self, sid: int, ok: bool, started_at: float, now: float) -> None:
        self.resets.append({"sid": sid, "ok": ok, "started_s": started_at, "done_s": now})
        if ok:
            self.last_reset_start[sid] = started_at
