#!/usr/bin/env bash
# The whole toy MM1 study, end to end, on a CPU (about 4 hours on 2 cores: 2 h for the five 300-step grids,
# 1 h 45 min for the three 1000-step grids at the end). Resumable: re-running skips
# finished encoders and finished cells. Run from the repository root:
#   bash ablations/mm1-toy/run_study.sh
# Then the report (also what regenerates reports/mm1-toy/ from the committed run files):
#   mm report runs/mm1-toy/resolution_tokens runs/mm1-toy/connector runs/mm1-toy/encoder \
#             runs/mm1-toy/data_mix runs/mm1-toy/lm_size runs/mm1-toy/vqa_world runs/mm1-toy/vqa_world_seed1 \
#             runs/mm1-toy/data_mix_64px -o reports/mm1-toy
set -euo pipefail
HERE=$(dirname "$0")
JOBS=${JOBS:-2}
THREADS=${THREADS:-1}
bash "$HERE/encoders.sh"
for grid in ${GRIDS:-resolution_tokens encoder connector data_mix lm_size vqa_world data_mix_64px vqa_world_seed1}; do
  mm ablate "$HERE/$grid.yaml" --out "runs/mm1-toy/$grid" --jobs "$JOBS" --threads "$THREADS"
done
