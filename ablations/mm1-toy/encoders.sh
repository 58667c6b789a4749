#!/usr/bin/env bash
# Stage 1 of the toy MM1 study: pre-train the tiny image encoders that the grids start from
# (MM1 starts from a CLIP-pre-trained ViT; Table 1 compares CLIP vs. MAE pre-training, sizes and resolutions).
# Deterministic on CPU: the same command gives the same weights. Run from the repository root.
set -euo pipefail
OUT=${OUT:-runs/mm1-toy/encoders}
COMMON="train.steps=300 train.batch_size=64"
enc() {  # name encoder image_size objective
  local dir="$OUT/$1"
  if [ -f "$dir/model.safetensors" ]; then echo "have $dir"; return; fi
  mm pretrain ablations/mm1-toy/base.yaml --stage encoder model.encoder="$2" model.image_size="$3" train.encoder_objective="$4" $COMMON --out "$dir" --force
}
enc clip-vit-tiny-32 vit-tiny 32 clip
enc clip-vit-tiny-64 vit-tiny 64 clip
enc mae-vit-tiny-64 vit-tiny 64 mae
enc clip-vit-small-64 vit-small 64 clip
enc mae-vit-small-64 vit-small 64 mae
