#!/usr/bin/env bash
# From the command line: search, refit the winner on the full budget, export it, predict new images.
#
# Run: AUTOTRANSFER_ZOO=../shared/data/weights/zoo.yaml bash examples/refit_predict_cli.sh [DATA] [N_TRIALS] [EPOCHS] [OUT]
#
# DATA defaults to the hymenoptera photos (train/ and val/ folders). With no test/ folder the refit
# trains on train and is judged once on val, so predicting val/ reproduces the refit's accuracy; a
# dataset with test/ (or one folder per class, split 70/15/15 here) is refit on train+val and judged
# on test. SPACE (default small) picks the search space.
set -euo pipefail
DATA=${1:-../shared/data/datasets/hymenoptera_data}
N_TRIALS=${2:-6}
EPOCHS=${3:-2}
OUT=${4:-examples_out/cli}
SPACE=${SPACE:-small}

autotransfer search "$DATA" --space "$SPACE" --n-trials "$N_TRIALS" --epochs "$EPOCHS" --out "$OUT" --study-name example
autotransfer refit --storage "sqlite:///$OUT/study.db" --study-name example --out "$OUT/model"
if [ -d "$DATA/val" ]; then images="$DATA/val"; else images="$DATA"; fi
autotransfer predict "$OUT/model" "$images" --out "$OUT/predictions.csv"
python - "$OUT/predictions.csv" <<'PY'
import sys
from pathlib import Path

import pandas as pd

table = pd.read_csv(sys.argv[1])
truth = table["image"].map(lambda p: Path(p).parent.name)  # the class folder of each image
print(table.head().to_string(index=False))
print(f"accuracy of the exported model on these {len(table)} images: {(table['label'] == truth).mean():.4f}")
PY
