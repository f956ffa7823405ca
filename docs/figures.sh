#!/usr/bin/env bash
# Regenerates every figure quoted in docs/policies.md (sim runtime; seeds fixed, so the figures
# are exactly reproducible). Takes ~10 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
A=${ATS_STRESS:-.venv/bin/ats-stress}
L="--set workload.unmaps_per_s=500"
$A compare configs/scenarios/single-hang.yaml --seeds 2 $L --out runs/docs/compare-q1
$A compare configs/scenarios/single-hang.yaml --seeds 2 $L --set hardware.command_queues=33 --out runs/docs/compare-q33
$A sweep configs/scenarios/single-hang.yaml --seeds 2 $L --set policy.name=quarantine \
   --param hardware.command_queues=1,9,17,33 --param policy.culprit_search=bisect,per-device-batches \
   --out runs/docs/sweep-queues
$A sweep configs/scenarios/single-hang.yaml --seeds 2 $L --set policy.name=quarantine --set hardware.atc_inv_completion_timeout=5s \
   --param policy.culprit_search=bisect,per-device-batches --out runs/docs/sweep-q1-hw5
$A sweep configs/scenarios/single-hang.yaml --seeds 2 $L --set policy.name=arm-smmu-v3 \
   --param hardware.command_queues=1,9,33 --out runs/docs/sweep-arm-queues
$A compare configs/scenarios/lying-device.yaml --seeds 2 --set hardware.command_queues=33 --out runs/docs/compare-lying
