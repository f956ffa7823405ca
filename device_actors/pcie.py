"""The PCIe messages that cross between the SMMU side and the endpoints.

Each message is a plain tuple of ints, ``(kind, sid, a, b, c)``, so a batch of them is one msgpack
array on the live runtime and costs nothing to build in the simulator. The first element names the
TLP or message as the PCIe ATS specification does.

Downstream (root complex -> endpoint):
    (MSG_INV_REQ, sid, itag, addr, size)        Invalidate Request: pages [addr, addr + 2**size)
    (MSG_TRANS_CPL, sid, addr, pa, tag)         Translation Completion; pa < 0 means UR/CA
    (MSG_FLR, sid, outcome, 0, 0)               Function Level Reset written by host software; outcome
                                                FLR_AS_DEVICE (the device's fault decides whether it
                                                comes back), FLR_OK or FLR_FAILS (a chaos reset says)
    (MSG_PRESENCE_QUERY, sid, 0, 0, 0)          config read of the Vendor ID (pci_device_is_present)
    (MSG_ATS_CTRL, sid, enable, 0, 0)           config write of the ATS Control Enable bit
                                                (pci_enable_ats / pci_disable_ats)
    (MSG_BUS_MASTER, sid, enable, 0, 0)         config write of Command.Bus Master Enable

Upstream (endpoint -> root complex):
    (MSG_INV_CPL, sid, itag, count, 0)          Invalidate Completion (Completion Count = count)
    (MSG_TRANS_REQ, sid, addr, 0, 0)            Translation Request (AT = 0b01)
    (MSG_TRANSLATED, sid, addr, pa, tag)        memory write with AT = 0b10 (translated)
    (MSG_TRANSLATED_PENDING, sid, addr, pa, tag) the same TLP, sent through an ATC entry that an
                                                Invalidate Request the device has received and not
                                                processed yet covers (hung: held; slow: in progress)
    (MSG_TRANSLATED_KEPT, sid, addr, pa, tag)   the same TLP, through an entry that an Invalidate
                                                Request the device answered without dropping it
                                                (lie) covered
    (MSG_UNTRANSLATED, sid, addr, 0, 0)         memory write with AT = 0b00: the SMMU walks the page
                                                table itself (a device with ATS disabled sends these)
    (MSG_FLR_DONE, sid, ok, started_at, 0)      the function answered (or not) after its reset
    (MSG_PRESENCE, sid, present, 0, 0)          the config read's answer

``tag`` in a translation and a translated request is the ground-truth identity of the mapping
the translation came from. Real TLPs do not carry it: only the safety oracle reads it, never a
recovery policy. Nor do they carry what MSG_TRANSLATED_PENDING and MSG_TRANSLATED_KEPT add (the SMMU
treats all three alike): only the story of a UAF exposure reads it (iommu_actor/uaftrace.py).
"""

from __future__ import annotations

from typing import Final

MSG_INV_REQ: Final = 1
MSG_TRANS_CPL: Final = 2
MSG_FLR: Final = 3
MSG_PRESENCE_QUERY: Final = 4
MSG_ATS_CTRL: Final = 5
MSG_BUS_MASTER: Final = 6

MSG_INV_CPL: Final = 11
MSG_TRANS_REQ: Final = 12
MSG_TRANSLATED: Final = 13
MSG_FLR_DONE: Final = 14
MSG_PRESENCE: Final = 15
MSG_UNTRANSLATED: Final = 16
MSG_TRANSLATED_PENDING: Final = 17
MSG_TRANSLATED_KEPT: Final = 18

#: MSG_FLR outcomes
FLR_AS_DEVICE: Final = 0  # the device comes back unless its fault says it does not (recover_on_reset)
FLR_OK: Final = 1
FLR_FAILS: Final = 2

MSG_NAMES: Final[dict[int, str]] = {
    MSG_INV_REQ: "Invalidate Request",
    MSG_TRANS_CPL: "Translation Completion",
    MSG_FLR: "FLR",
    MSG_PRESENCE_QUERY: "config read (presence)",
    MSG_ATS_CTRL: "config write (ATS Enable)",
    MSG_BUS_MASTER: "config write (Bus Master Enable)",
    MSG_INV_CPL: "Invalidate Completion",
    MSG_TRANS_REQ: "Translation Request",
    MSG_TRANSLATED: "translated request",
    MSG_FLR_DONE: "FLR done",
    MSG_PRESENCE: "presence",
    MSG_UNTRANSLATED: "untranslated request",
    MSG_TRANSLATED_PENDING: "translated request (its invalidation received, not processed yet)",
    MSG_TRANSLATED_KEPT: "translated request (its invalidation answered, the entry kept)",
}

DOWNSTREAM: Final = frozenset({MSG_INV_REQ, MSG_TRANS_CPL, MSG_FLR, MSG_PRESENCE_QUERY, MSG_ATS_CTRL,
                               MSG_BUS_MASTER})
UPSTREAM: Final = frozenset({MSG_INV_CPL, MSG_TRANS_REQ, MSG_TRANSLATED, MSG_FLR_DONE, MSG_PRESENCE,
                             MSG_UNTRANSLATED, MSG_TRANSLATED_PENDING, MSG_TRANSLATED_KEPT})

Msg = tuple  # (kind, sid, a, b, c): see the module docstring
