#!/usr/bin/env bash
# Plan accuracy: runs example workflows with the sample inputs in benches/inputs/ on this
# machine, as planned (no --model override), and compares every llm step's predicted latency
# with the measured one. Prints a table and the median absolute error; keeps the reports.
#   scripts/plan-accuracy.sh [OUT_DIR]      (needs smollm2-135m and the qwen2.5-coder models)
#   JOULE_RUN_ARGS="--profiles profiles/cpu-2core.yaml" scripts/plan-accuracy.sh target/acc-measured
set -euo pipefail
cd "$(dirname "$0")/.."
JOULE=${JOULE:-target/debug/joule}
out=${1:-target/plan-accuracy}
mkdir -p "$out"
for wf in ticket-triage document-qa invoice-extraction; do
  echo "== $wf" >&2
  # shellcheck disable=SC2086 # JOULE_RUN_ARGS is a list of arguments
  "$JOULE" run "workflows/$wf.yaml" --inputs "benches/inputs/$wf.json" --no-store --json ${JOULE_RUN_ARGS:-} \
    >"$out/$wf.json" 2>"$out/$wf.log" || echo "   (run failed; see $out/$wf.log)" >&2
done
python3 - "$out" <<'PY'
import json, statistics, sys, pathlib
rows = []
for f in sorted(pathlib.Path(sys.argv[1]).glob("*.json")):
    r = json.loads(f.read_text())
    for s in r.get("steps", []):
        if s["kind"] == "llm" and s["status"] == "succeeded":
            rows.append((f.stem, s["id"], s["model"], s["latency_s"], s["predicted_latency_s"]))
print(f"{'workflow':20} {'step':10} {'model':20} {'measured s':>10} {'predicted s':>11} {'error s':>8}")
for w, sid, m, got, want in rows:
    print(f"{w:20} {sid:10} {m:20} {got:10.2f} {want:11.2f} {got - want:8.2f}")
errs = [abs(g - p) for *_, g, p in rows]
rel = sorted(abs(g - p) / g for *_, g, p in rows if g > 0)
if errs:
    p90 = rel[min(len(rel) - 1, int(round(0.9 * (len(rel) - 1))))]
    print(f"llm steps: {len(errs)}; median absolute error {statistics.median(errs):.2f} s; "
          f"median relative error {100 * statistics.median(rel):.0f}%, p90 {100 * p90:.0f}%")
PY
