"""Test-only plug-in: a policy with a bug. It raises at the first unmap, so every run of it ends
with status "failed" and the error, which compare, sweep and explore must not pass off as figures."""

from ats_stress.iommu_actor.policy import Policy, UnmapStart


class Raises(Policy):
    name = "test-raises"
    summary = "test only: raises at the first unmap"

    def handle(self, now, ev):
        if isinstance(ev, UnmapStart):
            raise RuntimeError("test-raises: a bug in the policy")
        return []
