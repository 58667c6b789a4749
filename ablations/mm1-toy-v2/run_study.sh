#!/usr/bin/env bash
# The toy MM1 study, second edition (reports/mm1-toy-v2/), end to end on a CPU, in one resumable command: re-running
# skips finished cells (and the cached pre-trained encoders). Run from the repository root:
#   bash ablations/mm1-toy-v2/run_study.sh
# GRIDS="connector data_mix" runs some grids only; JOBS / THREADS set cells at once / torch threads per cell.
# Afterwards the per-sample files are compressed (gzip -n: the same bytes every time; mm report reads them) and
# the encoders' own held-out results are copied next to the grids. The report (also what regenerates
# reports/mm1-toy-v2/ from the committed run files):
#   mm report runs/mm1-toy-v2/resolution_tokens runs/mm1-toy-v2/connector runs/mm1-toy-v2/data_mix \
#             runs/mm1-toy-v2/encoder runs/mm1-toy-v2/lm_size -o reports/mm1-toy-v2
set -euo pipefail
HERE=$(dirname "$0")
JOBS=${JOBS:-2}
THREADS=${THREADS:-1}
OUT=${OUT:-runs/mm1-toy-v2}
for grid in ${GRIDS:-resolution_tokens connector data_mix encoder lm_size}; do
  mm ablate "$HERE/$grid.yaml" --out "$OUT/$grid" --jobs "$JOBS" --threads "$THREADS"
done
find "$OUT" -path '*/eval/samples/*' -name '*.jsonl' -exec gzip -n -9 -f {} +
# Copy each pre-trained encoder's held-out results (encoder_eval.json, meta.json, config.yaml) next to the grids;
# the script prints the encoder grid's encoder dirs (sorted), which the probes below read.
PROBED=$(python - "$OUT" <<'PY'
"""Copy the encoders' result files to <out>/encoders/<name>/; print the encoder grid's encoder dirs."""
import json, shutil, sys
from pathlib import Path
out = Path(sys.argv[1])
probed = set()
for meta in sorted(out.glob("*/*/meta.json")):
    source = (json.loads(meta.read_text()).get("pretrained_encoder") or {}).get("dir")
    if source and Path(source).is_dir():
        target = out / "encoders" / Path(source).name
        target.mkdir(parents=True, exist_ok=True)
        for name in ("encoder_eval.json", "meta.json", "config.yaml"):
            if (Path(source) / name).is_file():
                shutil.copyfile(Path(source) / name, target / name)
        if meta.parent.parent.name == "encoder":
            probed.add(source)
print("\n".join(sorted(probed)))
PY
)
mapfile -t ENCODERS <<< "$PROBED"
# The encoder grid's encoders side by side on one objective-free measure: linear probes of their frozen features
# for what the questions ask (colours, shapes, counts, positions, written words), next to randomly initialised
# encoders of both sizes and the raw pixels (benchmarks/diagnose_world.py). Skipped once probes.json exists.
if [ -n "$PROBED" ] && [ ! -f "$OUT/encoders/probes.json" ]; then
  python benchmarks/diagnose_world.py --world-version 4 --resolution 64 --num-train 1000 --num-test 300 \
    --encoders random:vit-tiny random:vit-small "${ENCODERS[@]}" --out "$OUT/encoders/probes.json"
fi
