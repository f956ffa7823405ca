"""ats-stress: a distributed fault-injection testbed for IOMMU ATC-invalidation recovery.

The repository root is this package (``pyproject.toml`` maps it with ``package-dir``): its
subpackages are the design card's top-level folders, ``ats_stress.iommu_actor`` (the SMMUv3 model,
sans-IO), ``ats_stress.device_actors`` (the ATS endpoints, sans-IO) and ``ats_stress.cluster``
(scenarios, runtimes, results, experiments, the CLI); ``configs/`` and ``grafana/`` ship with it as
package data. ``pip install`` puts this one name, ``ats_stress``, into site-packages.
"""

__version__ = "0.1.0"
