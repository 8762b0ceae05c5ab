#!/usr/bin/env bash
# The whole fidelity study, one resumable job: every row of the table, the robustness
# evaluations and the rate-distortion points. Each step skips what is already in runs/.
#   bash bench/fidelity_table.sh            # ~2.5 h on the 2-core development machine
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OPENFWI=${OPENFWI:-../shared/openfwi}

# FlatVel-A: real maps, 1,200 / 200 gathers, float32 (the shipped EPIC and InversionNet).
mkdir -p runs/fidelity/flatvel-a/epic
[ -f runs/fidelity/flatvel-a/epic/model.pt ] || \
    cp artifacts/epic-flatvel-a.pt runs/fidelity/flatvel-a/epic/model.pt
$PY bench/fidelity_row.py flatvel-a --maps-train "$OPENFWI/FlatVelA_train.zip" \
    --maps-test "$OPENFWI/FlatVelA_test.zip" --train-count 1200 --test-count 200 \
    --epochs 5 --precision fp32 --models epic,inversionnet,equal-fusion,isolated

# The other nine: 500 / 100 gathers, 5 epochs, bf16 autocast for every model.
ROW=(--train-count 500 --test-count 100 --epochs 5 --precision bf16)
$PY bench/fidelity_row.py curvevel-a --maps-train "$OPENFWI/CurveVelA_train.zip" \
    --maps-test "$OPENFWI/CurveVelA_test.zip" "${ROW[@]}"
$PY bench/rate_distortion.py flatvel-a --epochs 5 --precision bf16
$PY bench/rate_distortion.py curvevel-a --epochs 5 --precision bf16
$PY bench/rate_distortion.py --plot docs/img/rate-distortion.png
for ds in flatvel-b curvevel-b flatfault-a flatfault-b curvefault-a curvefault-b style-a style-b; do
    $PY bench/fidelity_row.py "$ds" "${ROW[@]}" --models epic,inversionnet,isolated,equal-fusion
done
