#!/usr/bin/env bash
# Regenerates every figure quoted in docs/policies.md (sim runtime; seeds fixed, so the figures are
# exactly reproducible), then rewrites its tables (docs/render.py). About 16 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
A=${ATS_STRESS:-.venv/bin/ats-stress}
PY=${PYTHON:-.venv/bin/python}
HANG=configs/scenarios/single-hang.yaml
L="--set workload.unmaps_per_s=500"
HW=50ms,500ms,1s,5s,60s
# today's drivers, the posted series (v4) and the proposal on one hang, one queue, 60 s hardware timeout
$A compare $HANG --seeds 2 $L --policies arm-smmu-v3,amd-iommu,intel-vtd,quarantine,fence-on-timeout,iommu-core \
   --out runs/docs/compare-q1
# the series, version by version, over the hardware ATC timeout and the command queues, with the
# GERROR interrupt on CPU 0 (busy: the default) and on an idle CPU (the best case)
$A sweep $HANG $L --set policy.name=quarantine --param hardware.atc_inv_completion_timeout=$HW \
   --param policy.version=v1,v2,v3,v4 --param hardware.command_queues=1,9,33 \
   --param host.gerror_irq_cpu=0,idle --out runs/docs/sweep-series
# the proposal over the same, with each culprit search
$A sweep $HANG $L --set policy.name=fence-on-timeout --param hardware.atc_inv_completion_timeout=$HW \
   --param policy.culprit_search=bisect,linear,per-device-batches --param hardware.command_queues=1,9,33 \
   --out runs/docs/sweep-fot
# the proposal's two ways to wait (one spin with interrupts off, or 1 s windows), GERROR CPU busy and idle
$A sweep $HANG $L --set policy.name=fence-on-timeout --set policy.culprit_search=per-device-batches \
   --param hardware.atc_inv_completion_timeout=$HW --param host.gerror_irq_cpu=0,idle \
   --param policy.poll_window=null,1s --out runs/docs/sweep-fot-irq
# strict against lazy flushing, one hang, each mainline driver
$A sweep configs/scenarios/lazy-flush.yaml --param policy.name=amd-iommu,intel-vtd,arm-smmu-v3 \
   --param host.flush=strict,lazy --out runs/docs/sweep-lazy
# the limit of fencing
$A compare configs/scenarios/lying-device.yaml --seeds 2 --set hardware.command_queues=33 \
   --policies arm-smmu-v3,amd-iommu,intel-vtd,quarantine,fence-on-timeout,iommu-core --out runs/docs/compare-lying
# what explore finds against each policy (fixed budget and seed)
./docs/explore.sh > runs/docs/explore.md
cp runs/docs/compare-q1/compare.png docs/img/compare-q1.png
$PY docs/render.py
