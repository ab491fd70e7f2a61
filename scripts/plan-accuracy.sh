#!/usr/bin/env bash
# Plan accuracy: runs example workflows with the sample inputs in benches/inputs/ on this
# machine, as planned (no --model override), ROUNDS times each, and compares every llm step's
# predicted latency with the measured one. Calibration is on, in a fresh profiles directory,
# so round 1 plans from the profiles alone and later rounds also from what earlier rounds
# taught (speeds, and how many tokens each step really takes). A step's model load is
# counted by the plan apart from the step (its `loads`), so the step is compared without it.
#   scripts/plan-accuracy.sh [OUT_DIR]      (needs smollm2-135m and the qwen2.5-coder models)
#   ROUNDS=3 JOULE_RUN_ARGS="--profiles profiles/cpu-2core.yaml" scripts/plan-accuracy.sh target/acc
set -euo pipefail
cd "$(dirname "$0")/.."
JOULE=${JOULE:-target/debug/joule}
out=${1:-target/plan-accuracy}
rounds=${ROUNDS:-3}
rm -rf "$out"
mkdir -p "$out/profiles"
export JOULE_PROFILES_DIR="$PWD/$out/profiles"
for round in $(seq 1 "$rounds"); do
  for wf in ticket-triage document-qa invoice-extraction; do
    echo "== round $round: $wf" >&2
    # shellcheck disable=SC2086 # JOULE_RUN_ARGS is a list of arguments
    "$JOULE" run "workflows/$wf.yaml" --inputs "benches/inputs/$wf.json" --no-store --json ${JOULE_RUN_ARGS:-} \
      >"$out/$wf.$round.json" 2>"$out/$wf.$round.log" || echo "   (run failed; see $out/$wf.$round.log)" >&2
  done
done
python3 - "$out" <<'PY'
import json, statistics, sys, pathlib
rows = []
for f in sorted(pathlib.Path(sys.argv[1]).glob("*.json")):
    wf, rnd = f.stem.rsplit(".", 1)
    r = json.loads(f.read_text())
    for s in r.get("steps", []):
        if s["kind"] == "llm" and s["status"] == "succeeded":
            got = s["latency_s"] - s.get("load_s", 0.0)
            rows.append((int(rnd), wf, s["id"], s["model"], got, s["predicted_latency_s"],
                         s["tokens_out"], s.get("predicted_tokens_out", 0.0)))
rows.sort()
print(f"{'round':>5} {'workflow':20} {'step':8} {'model':20} {'measured s':>10} {'predicted s':>11} {'error':>7} {'tokens out':>10} {'predicted':>9}")
for rnd, w, sid, m, got, want, tout, pout in rows:
    print(f"{rnd:5} {w:20} {sid:8} {m:20} {got:10.2f} {want:11.2f} {100 * (want - got) / got:6.0f}% {tout:10} {pout:9.0f}")
def summary(label, sel):
    rel = sorted(abs(g - p) / g for _, _, _, _, g, p, *_ in sel if g > 0)
    if not rel:
        return
    p90 = rel[min(len(rel) - 1, int(round(0.9 * (len(rel) - 1))))]
    errs = [abs(g - p) for _, _, _, _, g, p, *_ in sel]
    print(f"{label}: {len(rel)} llm steps; median absolute error {statistics.median(errs):.2f} s; "
          f"median relative error {100 * statistics.median(rel):.1f}%, p90 {100 * p90:.1f}%")
summary("round 1 (profiles only)", [r for r in rows if r[0] == 1])
summary("rounds 2+ (after calibration)", [r for r in rows if r[0] > 1])
PY
