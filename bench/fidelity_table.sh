#!/usr/bin/env bash
# The whole fidelity study, one resumable job: every row of the table, the robustness
# evaluations and the rate-distortion points. Each step skips what is already in runs/.
#   bash bench/fidelity_table.sh        # ~1.5 h on the 2-core development machine
# Every model of a row gets the same gathers, epochs (5), batch (16), seed and bf16 autocast.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OPENFWI=${OPENFWI:-../shared/openfwi}
ALL=epic,inversionnet,equal-fusion,isolated

# FlatVel-A and CurveVel-A: real OpenFWI maps; with the midpoint-prior ablation.
$PY bench/fidelity_row.py flatvel-a --maps-train "$OPENFWI/FlatVelA_train.zip" \
    --maps-test "$OPENFWI/FlatVelA_test.zip" --train-count 1200 --test-count 200 \
    --epochs 5 --precision bf16 --models $ALL,epic-noprior
$PY bench/fidelity_row.py curvevel-a --maps-train "$OPENFWI/CurveVelA_train.zip" \
    --maps-test "$OPENFWI/CurveVelA_test.zip" --train-count 500 --test-count 100 \
    --epochs 5 --precision bf16 --models $ALL,epic-noprior

# Rate and distortion; token_dim 64 is the row's EPIC (same configuration), reused.
for ds in flatvel-a curvevel-a; do
    mkdir -p runs/rd/$ds/token-64
    for f in model.pt log.jsonl; do
        [ -f runs/rd/$ds/token-64/$f ] || cp runs/fidelity/$ds/epic/$f runs/rd/$ds/token-64/
    done
    $PY bench/rate_distortion.py $ds --epochs 5 --precision bf16
done
$PY bench/rate_distortion.py --plot docs/img/rate-distortion.png

# The eight generator families: 300 / 100 gathers.
for ds in flatvel-b curvevel-b flatfault-a flatfault-b curvefault-a curvefault-b style-a style-b; do
    $PY bench/fidelity_row.py "$ds" --train-count 300 --test-count 100 --epochs 5 \
        --precision bf16 --models $ALL
done
