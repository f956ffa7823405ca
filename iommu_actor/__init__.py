"""SMMUv3 model (sans-IO): stream table, command queues, host software and recovery policies.

``iommu_actor.actor`` is the only module here that knows about Ray.
"""
