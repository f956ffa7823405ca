#!/usr/bin/env bash
# What `ats-stress explore` finds against each built-in policy (and each earlier version of the posted
# quarantine series), with a fixed budget and seed (sim runtime: the findings are exactly
# reproducible). Writes runs/docs/explore-POLICY/ (explore.json, minimal-*.yaml, report.md) and
# prints a markdown table to paste into docs/policies.md. About 10 minutes on 2 cores: progress runs a
# variant that ends with a wedge again until the hardware timeout (60 s) could have cleared it.
# Override with POLICIES="name name:param=value,...", BUDGET=N, SEED=N, SCENARIO=FILE, and extra
# explore options as arguments (e.g. --set hardware.command_queues=9).
set -euo pipefail
cd "$(dirname "$0")/.."
A=${ATS_STRESS:-.venv/bin/ats-stress}
PY=${PYTHON:-.venv/bin/python}
SCENARIO=${SCENARIO:-examples/explore/small.yaml}
BUDGET=${BUDGET:-30}
SEED=${SEED:-1}
POLICIES=${POLICIES:-"$($A policies | awk '/ \(built-in\): / {print $1}') quarantine:version=v1 quarantine:version=v2 quarantine:version=v3"}
mkdir -p runs/docs
RUNS=()
for entry in $POLICIES; do
  name=${entry%%:*}
  sets=()
  label=$name
  if [[ $entry == *:* ]]; then
    IFS=, read -ra kvs <<< "${entry#*:}"
    for kv in "${kvs[@]}"; do sets+=(--set "policy.$kv"); label+="-${kv#*=}"; done
  fi
  RUNS+=("$label")
  # exit 1 means something was violated: that is a finding, not a failure of this script
  $A explore "$SCENARIO" --policy "$name" "${sets[@]}" --budget "$BUDGET" --seed "$SEED" --shrink-max 1 \
     --shrink-runs 80 --quiet --out "runs/docs/explore-$label" "$@" > "runs/docs/explore-$label.log" || [ $? -eq 1 ]
done
$PY - "${RUNS[@]}" <<'PY'
import json, sys
from ats_stress.cluster.experiments.explore_report import schedule_text, smallest

print("| policy | property | violating variants | smallest minimal schedule (steps) | file |")
print("|---|---|---|---|---|")
for label in sys.argv[1:]:
    r = json.load(open(f"runs/docs/explore-{label}/explore.json"))
    for c in r["checks"]:
        n = sum(v["property"] == c["property"] for v in r["violations"])
        best = smallest(r, c["property"])
        lie = ", needs a lying device" if best and best.get("needs_lie") else ""
        steps = f"{schedule_text(best)} ({best['minimal_steps']}{lie})" if best else "-"
        where = f"runs/docs/explore-{label}/{best['minimal_file']}" if best else "-"
        print(f"| {label} | {c['property']} | {n} of {r['explored']} | {steps} | {where} |")
r = json.load(open(f"runs/docs/explore-{sys.argv[1]}/explore.json"))
print(f"\n{r['budget']} variants of {r['scenario']} per policy, explore seed {r['seed']}, the first violation of each "
      "property shrunk (and the first that has a lying device); everything found: runs/docs/explore-POLICY/report.md")
PY
