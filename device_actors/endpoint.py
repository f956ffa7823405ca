"""PCIe ATS endpoints, hosted many to a group (one group per device actor on the live runtime).

Sans-IO: the runtime calls ``start``, ``on_messages``, ``on_timer``, ``apply_fault`` and
``end_fault`` with the scenario time, then ``drain()`` for the upstream messages and the timers.

Each endpoint has an Address Translation Cache (LRU, ``atc_entries``: a dict in use order, oldest
first), filled by Translation Requests; DMA goes out as translated requests on an ATC hit. An
entry is ``(pa, tag, kind)``: ``kind`` is the message its DMA goes out as: MSG_TRANSLATED, or,
once an Invalidate Request that covers it has been received and not processed yet (held while hung; in progress on a device slowed
by chaos: a healthy device's few microseconds are not marked) or answered without dropping it
(lie), MSG_TRANSLATED_PENDING / MSG_TRANSLATED_KEPT: the same TLP, which the story of a UAF reads. Invalidate Requests are processed
after a latency drawn from a log-normal distribution given by its median and p99, and answered
with an Invalidate Completion for their ITag. Behaviours (switched by chaos at any time):

    healthy   answers after the configured latency
    slow      answers after a latency from the step's own distribution
    hang      holds every Invalidate Request unanswered while its DMA goes on using whatever its
              ATC holds, including entries whose invalidation it has received; when the hang ends
              it processes and answers everything it holds
    flap      hangs for ``hang_for`` out of every ``period``
    drop      performs invalidations but loses a ``fraction`` of the completions
    lie       answers on time without dropping the entries (fencing cannot catch it)
    itag_leak never completes invalidations that arrive with one of ``tags`` ITags
    removed   surprise removal: nothing answers, no DMA, config reads fail
    resetting FLR (``MSG_FLR`` from the host's reset path): ATC emptied, held requests dropped,
              requests ignored for ``flr_time``; then healthy again, or dead if the reset fails

Two config-space bits the host writes: ATS Enable (``MSG_ATS_CTRL``; with it clear the endpoint
caches no translation and its DMA goes out untranslated, for the SMMU to walk the page table) and
Bus Master Enable (``MSG_BUS_MASTER``; with it clear the endpoint issues no DMA at all). Both keep
their value across an FLR (the PCI core saves and restores config space around it).
"""

from __future__ import annotations

import math
import random

from .pcie import (
    FLR_AS_DEVICE,
    FLR_OK,
    MSG_ATS_CTRL,
    MSG_BUS_MASTER,
    MSG_FLR,
    MSG_FLR_DONE,
    MSG_INV_CPL,
    MSG_INV_REQ,
    MSG_PRESENCE,
    MSG_PRESENCE_QUERY,
    MSG_TRANS_CPL,
    MSG_TRANS_REQ,
    MSG_TRANSLATED,
    MSG_TRANSLATED_PENDING,
    MSG_TRANSLATED_KEPT,
    MSG_UNTRANSLATED,
)

ATC_INV_SIZE_ALL = 52  # same value as iommu_actor.spec; the device side does not import the SMMU

# endpoint modes
HEALTHY, SLOW, HANG, FLAP, DROP, LIE, ITAG_LEAK, REMOVED, RESETTING, DEAD = range(10)
MODE_NAMES = ("healthy", "slow", "hang", "flap", "drop", "lie", "itag_leak", "removed", "resetting", "dead")
FAULT_MODES = {"slow": SLOW, "hang": HANG, "flap": FLAP, "drop": DROP, "lie": LIE,
               "itag_leak": ITAG_LEAK, "removed": REMOVED}
#: faults that the endpoint itself carries out (``reset`` goes through the host's reset path, the
#: rest act on the SMMU side or on Ray)
ENDPOINT_FAULTS = frozenset(FAULT_MODES)
_INACTIVE = (REMOVED, RESETTING, DEAD)
assert _INACTIVE == tuple(range(REMOVED, len(MODE_NAMES)))  # ``mode >= REMOVED`` tests for them

# timer tags
E_DMA, E_INV, E_FLAP, E_FLR = range(4)
_DMA_TAG = (E_DMA,)

_log = math.log

#: z-score of the 99th percentile of a standard normal
_Z99 = 2.3263478740408408


def lognormal_sigma(median: float, p99: float) -> float:
    if median <= 0 or p99 <= median:
        return 0.0
    return math.log(p99 / median) / _Z99


class Endpoint:
    __slots__ = ("sid", "asid", "atc", "mode", "step", "pending", "lat_median", "lat_sigma",
                 "drop_p", "leak_tags", "flap_period", "flap_hang", "flap_hung", "recover_on_reset",
                 "epoch", "ats", "bus_master")

    def __init__(self, sid: int, asid: int):
        self.sid = sid
        self.asid = asid
        #: addr -> (pa, tag, message kind), least recently used first (a use re-inserts the key)
        self.atc: dict[int, tuple[int, int, int]] = {}
        self.mode = HEALTHY
        self.step = -1  # the chaos step whose fault is active
        self.pending: list[tuple[int, int, int]] = []  # held Invalidate Requests: (itag, addr, size)
        self.lat_median = 0.0  # 0: the group's default distribution
        self.lat_sigma = 0.0
        self.drop_p = 0.0
        self.leak_tags: frozenset[int] = frozenset()
        self.flap_period = 0.0
        self.flap_hang = 0.0
        self.flap_hung = False
        self.recover_on_reset = True
        self.epoch = 0  # bumped by every FLR: work scheduled before it is void
        self.ats = True  # ATS Control.Enable: translations are cached and DMA goes out translated
        self.bus_master = True  # Command.Bus Master Enable: the function may issue DMA

    @property
    def hung(self) -> bool:
        return self.mode == HANG or (self.mode == FLAP and self.flap_hung)

    @property
    def present(self) -> bool:
        return self.mode not in (REMOVED, DEAD)


class EndpointGroup:
    """Many endpoints sharing one random stream and one DMA process."""

    def __init__(self, index: int, endpoints: list[tuple[int, int]], *, atc_entries: int,
                 pages_per_domain: int, dma_per_endpoint_per_s: float, inv_latency_median: float,
                 inv_latency_p99: float, flr_time: float, seed: str):
        self.index = index
        self.eps = [Endpoint(sid, asid) for sid, asid in endpoints]
        self.by_sid = {ep.sid: ep for ep in self.eps}
        self.atc_entries = atc_entries
        self.pages = pages_per_domain
        self.dma_rate = dma_per_endpoint_per_s * len(self.eps)
        self.lat_median = inv_latency_median
        self.lat_sigma = lognormal_sigma(inv_latency_median, inv_latency_p99)
        self.flr_time = flr_time
        self.rng = random.Random(f"{seed}:group:{index}")
        # the DMA process's draws, made as random.Random makes them (see _dma): bound once
        self._random = self.rng.random
        self._getrandbits = self.rng.getrandbits
        self._ep_bits = len(self.eps).bit_length()
        self._page_bits = self.pages.bit_length()
        self.now = 0.0
        self.outbox: list[tuple] = []
        self.timers: list[tuple[float, tuple]] = []
        self.stopped = False
        # counters
        self.dma_issued = 0
        self.translated_sent = 0
        self.untranslated_sent = 0  # DMA with ATS disabled: the SMMU walks the page table
        self.dma_no_bus_master = 0  # DMA the device would have issued with Bus Master Enable clear
        self.translation_requests = 0
        self.translation_failed = 0
        self.inv_received = 0
        self.inv_answered = 0
        self.inv_lost = 0  # drop / itag_leak
        self.inv_ignored = 0  # removed, dead, in reset

    # --- the runtime's interface -------------------------------------------------------------

    def start(self, now: float) -> None:
        self.now = now
        if self.dma_rate > 0 and self.eps:
            self.timers.append((now - _log(1.0 - self._random()) / self.dma_rate, _DMA_TAG))

    def stop(self) -> None:
        self.stopped = True

    def drain(self) -> tuple[list[tuple], list[tuple[float, tuple]]]:
        """The messages and timers since the last call. An empty list returned is the group's own
        (no new list is made for nothing): read it at once, do not keep it."""
        out = self.outbox
        if out:
            self.outbox = []
        timers = self.timers
        if timers:
            self.timers = []
        return out, timers

    def on_timer(self, now: float, tag: tuple) -> None:
        self.now = now
        kind = tag[0]
        if kind == E_DMA:
            if not self.stopped:
                self._dma()
                # rng.expovariate(dma_rate), drawn as random.Random draws it
                self.timers.append((now - _log(1.0 - self._random()) / self.dma_rate, _DMA_TAG))
        elif kind == E_INV:
            ep = self.by_sid[tag[1]]
            if ep.epoch == tag[5]:
                self._process_inv(ep, tag[2], tag[3], tag[4])
        elif kind == E_FLAP:
            self._flap(self.by_sid[tag[1]], tag[2])
        elif kind == E_FLR:
            self._flr_done(self.by_sid[tag[1]], tag[2], tag[3], tag[4])

    def on_messages(self, now: float, batch) -> None:
        self.now = now
        by_sid = self.by_sid
        for m in batch:
            kind = m[0]
            ep = by_sid[m[1]]
            if kind == MSG_INV_REQ:
                self._inv_request(ep, m[2], m[3], m[4])
            elif kind == MSG_TRANS_CPL:
                self._translation_completion(ep, m[2], m[3], m[4])
            elif kind == MSG_FLR:
                outcome = m[2]
                self._flr(ep, ep.recover_on_reset if outcome == FLR_AS_DEVICE else outcome == FLR_OK)
            elif kind == MSG_PRESENCE_QUERY:
                self.outbox.append((MSG_PRESENCE, ep.sid, int(ep.present), 0, 0))
            elif kind == MSG_ATS_CTRL:
                ep.ats = bool(m[2])
                if not ep.ats:
                    ep.atc.clear()  # a function with ATS disabled holds no translation
            elif kind == MSG_BUS_MASTER:
                ep.bus_master = bool(m[2])

    # --- chaos ---------------------------------------------------------------------------------

    def apply_fault(self, now: float, sid: int, fault: str, params: dict, step: int) -> None:
        """Start ``fault`` on endpoint ``sid`` as chaos step ``step`` wants it."""
        self.now = now
        ep = self.by_sid[sid]
        if ep.mode in (RESETTING, DEAD):
            return  # a device in reset or dead cannot take on a new behaviour
        was_hung = ep.hung
        ep.mode = FAULT_MODES[fault]
        ep.step = step
        ep.recover_on_reset = bool(params.get("recover_on_reset", True))
        if fault == "slow":
            lat = params["latency"]
            ep.lat_median = lat["median"]
            ep.lat_sigma = lognormal_sigma(lat["median"], lat["p99"])
        elif fault == "drop":
            ep.drop_p = float(params["fraction"])
        elif fault == "itag_leak":
            ep.leak_tags = frozenset(range(int(params["tags"])))  # the SMMU hands out low ITags first
        elif fault == "flap":
            ep.flap_period = params["period"]
            ep.flap_hang = params["hang_for"]
            ep.flap_hung = True
            self.timers.append((now + ep.flap_hang, (E_FLAP, sid, step)))
        elif fault == "removed":
            ep.pending.clear()
            ep.atc.clear()
        if was_hung and not ep.hung:
            self._release_pending(ep)

    def end_fault(self, now: float, sid: int, step: int) -> None:
        """Chaos step ``step`` is over for ``sid``: back to healthy, unless something replaced it."""
        self.now = now
        ep = self.by_sid[sid]
        if ep.step != step or ep.mode in (RESETTING, DEAD):
            return
        was_hung = ep.hung
        if ep.mode == REMOVED:
            ep.atc.clear()  # hot re-add: a fresh function
        self._heal(ep)
        if was_hung:
            self._release_pending(ep)

    def _heal(self, ep: Endpoint) -> None:
        ep.mode = HEALTHY
        ep.step = -1
        ep.lat_median = 0.0
        ep.lat_sigma = 0.0
        ep.drop_p = 0.0
        ep.leak_tags = frozenset()
        ep.flap_hung = False
        ep.recover_on_reset = True

    def _flap(self, ep: Endpoint, step: int) -> None:
        if ep.step != step or ep.mode != FLAP:
            return
        ep.flap_hung = not ep.flap_hung
        if ep.flap_hung:
            self.timers.append((self.now + ep.flap_hang, (E_FLAP, ep.sid, step)))
        else:
            self.timers.append((self.now + ep.flap_period - ep.flap_hang, (E_FLAP, ep.sid, step)))
            self._release_pending(ep)

    # --- invalidation ------------------------------------------------------------------------------

    def _latency(self, ep: Endpoint) -> float:
        if ep.lat_median > 0:
            median, sigma = ep.lat_median, ep.lat_sigma
        else:
            median, sigma = self.lat_median, self.lat_sigma
        if sigma == 0.0:
            return median
        return median * math.exp(sigma * self.rng.gauss(0.0, 1.0))

    def _inv_request(self, ep: Endpoint, itag: int, addr: int, size: int) -> None:
        self.inv_received += 1
        mode = ep.mode
        if mode >= REMOVED:  # _INACTIVE
            self.inv_ignored += 1
            return
        if ep.hung:
            ep.pending.append((itag, addr, size))
            _mark(ep.atc, addr, size, MSG_TRANSLATED_PENDING)
            return
        if ep.lat_median:  # slowed by chaos: received, in progress for a while
            _mark(ep.atc, addr, size, MSG_TRANSLATED_PENDING)
        self.timers.append((self.now + self._latency(ep), (E_INV, ep.sid, itag, addr, size, ep.epoch)))

    def _release_pending(self, ep: Endpoint) -> None:
        pending, ep.pending = ep.pending, []
        for itag, addr, size in pending:
            self.timers.append((self.now + self._latency(ep), (E_INV, ep.sid, itag, addr, size, ep.epoch)))

    def _process_inv(self, ep: Endpoint, itag: int, addr: int, size: int) -> None:
        mode = ep.mode
        if mode >= REMOVED:  # _INACTIVE
            self.inv_ignored += 1
            return
        if ep.hung:
            ep.pending.append((itag, addr, size))
            _mark(ep.atc, addr, size, MSG_TRANSLATED_PENDING)
            return
        if mode == LIE:
            _mark(ep.atc, addr, size, MSG_TRANSLATED_KEPT)
        else:
            atc = ep.atc
            if size >= ATC_INV_SIZE_ALL:
                atc.clear()
            elif size == 0:
                atc.pop(addr, None)
            else:
                span = 1 << size
                if span <= len(atc):
                    for a in range(addr, addr + span):
                        atc.pop(a, None)
                else:
                    for a in [a for a in atc if addr <= a < addr + span]:
                        del atc[a]
        if (mode == DROP and self.rng.random() < ep.drop_p) or (mode == ITAG_LEAK and itag in ep.leak_tags):
            self.inv_lost += 1
            return
        self.inv_answered += 1
        self.outbox.append((MSG_INV_CPL, ep.sid, itag, 1, 0))

    # --- DMA -------------------------------------------------------------------------------------

    def _dma(self) -> None:
        """One DMA access of one endpoint, both drawn uniformly.

        The draws are rng.randrange(len(eps)) and rng.randrange(pages), made as random.Random makes
        them (``_randbelow_with_getrandbits``: getrandbits(n.bit_length()) until below n), without
        randrange's argument checks: the random stream and so every run stay what they were
        (tests/test_endpoint.py checks the two against each other)."""
        getrandbits = self._getrandbits
        eps = self.eps
        n = len(eps)
        i = getrandbits(self._ep_bits)
        while i >= n:
            i = getrandbits(self._ep_bits)
        ep = eps[i]
        if ep.mode >= REMOVED:  # _INACTIVE: removed, in reset, dead
            return
        n = self.pages
        addr = getrandbits(self._page_bits)
        while addr >= n:
            addr = getrandbits(self._page_bits)
        if not ep.bus_master:
            self.dma_no_bus_master += 1
            return
        self.dma_issued += 1
        if not ep.ats:
            self.untranslated_sent += 1
            self.outbox.append((MSG_UNTRANSLATED, ep.sid, addr, 0, 0))
            return
        atc = ep.atc
        entry = atc.pop(addr, None)
        if entry is not None:
            atc[addr] = entry  # the most recently used now
            self.translated_sent += 1
            self.outbox.append((entry[2], ep.sid, addr, entry[0], entry[1]))
        else:
            self.translation_requests += 1
            self.outbox.append((MSG_TRANS_REQ, ep.sid, addr, 0, 0))

    def _translation_completion(self, ep: Endpoint, addr: int, pa: int, tag: int) -> None:
        if ep.mode >= REMOVED or not ep.ats or not ep.bus_master:
            return  # ATS or bus mastering was switched off while the request was out
        if pa < 0:
            self.translation_failed += 1
            return
        atc = ep.atc
        atc.pop(addr, None)  # a second request for the same page: its entry is replaced, now the newest
        atc[addr] = (pa, tag, MSG_TRANSLATED)
        if len(atc) > self.atc_entries:
            del atc[next(iter(atc))]  # the least recently used
        self.translated_sent += 1
        self.outbox.append((MSG_TRANSLATED, ep.sid, addr, pa, tag))

    # --- reset -------------------------------------------------------------------------------------

    def _flr(self, ep: Endpoint, ok: bool) -> None:
        ep.epoch += 1
        ep.atc.clear()
        ep.pending.clear()
        if ep.mode in (REMOVED, DEAD):
            ok = False  # nothing there to come back
        else:
            ep.mode = RESETTING
        self.timers.append((self.now + self.flr_time, (E_FLR, ep.sid, ok, self.now, ep.epoch)))

    def _flr_done(self, ep: Endpoint, ok: bool, started: float, epoch: int) -> None:
        if ep.epoch != epoch:
            return  # a later reset superseded this one
        if ep.mode == RESETTING:
            if ok:
                self._heal(ep)
            else:
                ep.mode = DEAD
                ep.step = -1
        self.outbox.append((MSG_FLR_DONE, ep.sid, int(ok), started, 0))

    # --- state -------------------------------------------------------------------------------------

    def modes(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for ep in self.eps:
            name = MODE_NAMES[ep.mode]
            counts[name] = counts.get(name, 0) + 1
        return counts


def _mark(atc: dict, addr: int, size: int, kind: int) -> None:
    """Say in the entries an Invalidate Request covers that the device has received it without
    dropping them (``kind``): their DMA goes out as that message. Only faulty devices get here."""
    if size >= ATC_INV_SIZE_ALL:
        keys = list(atc)
    elif size == 0:
        keys = [addr] if addr in atc else []
    else:
        keys = [a for a in atc if addr <= a < addr + (1 << size)]
    for a in keys:
        pa, tag, _ = atc[a]
        atc[a] = (pa, tag, kind)  # an existing key keeps its place in the LRU order
