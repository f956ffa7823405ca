"""``fence-on-timeout`` on arm-smmu-v3, and ``iommu-core``: the same proposal in the IOMMU core.

Both are proposals, not posted code: see ``fence_core``. ``iommu-core`` drives the state machine
through a driver's hooks (its timeout, batching, and whether the hardware names a timed-out
device); with ``driver: intel-vtd`` it is the VT-d translated fence the thread announced.
"""

from __future__ import annotations

from ..policy import register
from .drivers import DRIVERS
from .fence_core import FenceCore
from .fence_state import FenceOnTimeoutParams, IommuCoreParams


@register
class FenceOnTimeout(FenceCore):
    name = "fence-on-timeout"
    summary = ("a proposal, not posted code: on arm-smmu-v3, any CMD_SYNC without an answer by the software "
               "timeout starts a culprit search (bisect, linear or per-device batches); the culprit is "
               "fenced (STE abort) before the flush returns; reset, unfenced after a good reset")
    Params = FenceOnTimeoutParams


@register
class IommuCore(FenceCore):
    name = "iommu-core"
    summary = ("the fence-on-timeout proposal in the IOMMU core, driven through per-driver hooks "
               "(driver: arm-smmu-v3, amd-iommu or intel-vtd, each with its own timeout)")
    Params = IommuCoreParams

    def __init__(self, params, hw):
        super().__init__(params, hw, DRIVERS[params.driver])

    @classmethod
    def cmdq_entries(cls, params) -> int:
        return DRIVERS[params.driver].cmdq_entries

    @classmethod
    def kconfig_flush(cls, params) -> str:
        return "strict" if params.driver == "arm-smmu-v3" else "lazy"
