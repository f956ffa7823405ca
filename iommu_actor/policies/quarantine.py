"""The quarantine policies: arm-smmu-v3 with the fence-then-continue core, and the same core in the IOMMU core."""

from __future__ import annotations

from ..policy import register
from .drivers import DRIVERS
from .fence_core import QuarantineCore
from .fence_state import IommuCoreParams, QuarantineParams


@register
class Quarantine(QuarantineCore):
    name = "quarantine"
    summary = ("arm-smmu-v3 with the 2026 quarantine series: on a CMD_SYNC timeout find the culprit "
               "(bisect or per-device batches), fence it (STE abort + CFGI_STE), unfence after a good reset")
    Params = QuarantineParams


@register
class IommuCore(QuarantineCore):
    name = "iommu-core"
    summary = ("the quarantine state machine in the IOMMU core, driven through per-driver hooks "
               "(driver: arm-smmu-v3, amd-iommu or intel-vtd, each with its own timeout)")
    Params = IommuCoreParams

    def __init__(self, params, hw):
        super().__init__(params, hw, DRIVERS[params.driver])
