#!/usr/bin/env bash
# One-command GPU check (issue 20 item 4), no downloads, about 5-8 minutes on one H100/H200-class GPU:
#   1. the bf16 matmul ceiling of the GPU;
#   2. a ~100M-parameter MLLM built from config (vit-base-toy + c-abstractor + a 768x12 ladder-shaped GPT-NeoX
#      saved locally as hf:<dir>; `mm build` prints the parameter count) pre-trained with bf16 autocast for
#      STEPS steps: tokens/s and MFU against that ceiling;
#   3. the same command under a 1-process `torchrun` (nccl);
#   4. a 0/4/8-shot eval of the result (synthetic VQA and captioning), and one cell of ablations/scale.yaml (the
#      scaled recipe, shortened) with its VQA - prior and OCR;
#   5. the same training killed with SIGKILL after a checkpoint, then `--resume`d: final weights compared with
#      the uninterrupted run (bit-identical, or within a relative tolerance where CUDA kernels are not
#      deterministic);
#   6. FSDP (train.strategy=fsdp) on every GPU (--device cpu: 2 gloo ranks): MFU, peak memory
#      (torch.cuda.max_memory_allocated) against `mm pretrain --dry-run`'s estimate, and the same run killed
#      with SIGKILL after a checkpoint and re-run (final weights vs the uninterrupted FSDP run);
#   7. a two-stage chain: `align` (train.freeze_lm=true) then `full` (train.init_from: align), its step-0
#      weights checked against align's last;
#   8. everything as JSON: benchmarks/results/gpu_check.json (--device cpu: gpu_check_cpu.json).
#
#   benchmarks/gpu_check.sh                     # on a CUDA machine
#   benchmarks/gpu_check.sh --device cpu        # dry mode: tiny sizes, few steps, gloo (tests/test_gpu_check.py)
#   options: --out FILE  --work DIR  --steps N
set -euo pipefail

DEVICE=cuda
OUT=""
WORK=""
STEPS=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --work) WORK="$2"; shift 2 ;;
    --steps) STEPS="$2"; shift 2 ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [[ -x .venv/bin/python ]]; then PATH="$ROOT/.venv/bin:$PATH"; fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
WORK="${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")}"
mkdir -p "$WORK"
export MMBENCH_CACHE_DIR="${MMBENCH_CACHE_DIR:-$WORK/cache}"

if [[ "$DEVICE" == cpu ]]; then
  OUT="${OUT:-benchmarks/results/gpu_check_cpu.json}"
  STEPS="${STEPS:-40}"
  LM_SHAPE=(--hidden 64 --layers 2 --heads 2 --max-seq-len 128)
  MODEL=(model.encoder=vit-tiny model.image_size=32 model.num_image_tokens=4 model.max_seq_len=128)
  DATA=(data.num_train_images=48 data.num_val_images=8 data.num_test_images=16 data.seq_len=64)
  TRAIN=(train.batch_size=2 train.warmup_steps=2 train.log_every=5 train.checkpoint_every=10 train.device=cpu)
  EVAL=(--num-samples 4 --batch-size 4 --device cpu)
  KILL_AT=10
  # the scaled recipe's plumbing only: its grid file, one cell, shrunk to seconds
  SCALE=(--grid resolution=28 --grid tokens=4 model.encoder=vit-tiny model.lm=pythia-toy-1m model.max_seq_len=128
         train.steps=4 train.batch_size=2 train.warmup_steps=1 train.device=cpu data.num_train_images=32
         data.num_val_images=4 data.num_test_images=24 data.seq_len=64 data.num_workers=0 eval.num_samples=8
         "eval.shots=[0]" eval.batch_size=8)
else
  OUT="${OUT:-benchmarks/results/gpu_check.json}"
  STEPS="${STEPS:-300}"
  LM_SHAPE=(--hidden 768 --layers 12 --heads 12 --max-seq-len 1024)
  MODEL=(model.encoder=vit-base-toy model.image_size=64 model.num_image_tokens=16 model.max_seq_len=1024)
  DATA=(data.num_train_images=2000 data.num_val_images=50 data.num_test_images=200 data.seq_len=1024
        data.num_workers=8)
  TRAIN=(train.batch_size=32 train.warmup_steps=30 train.log_every=25 train.checkpoint_every=100
         train.device=cuda train.precision=bf16)
  EVAL=(--num-samples 64 --batch-size 32 --device cuda)
  KILL_AT=100
  # one cell of the scaled recipe (224 px, 64 tokens, ~95M parameters), a quarter of its 6,000 steps
  SCALE=(--grid resolution=224 --grid tokens=64 train.steps=1500 train.checkpoint_every=500 train.device=cuda
         eval.num_samples=800)
fi
if [[ "$DEVICE" == cpu ]]; then
  RANKS=2
else
  RANKS=$(python -c "import torch; print(max(1, torch.cuda.device_count()))")
fi
OVERRIDES=(name=gpu-check "model.lm=hf:$WORK/lm" model.tokenizer=synthetic-bpe model.resize_embeddings=true
           "${MODEL[@]}" "${DATA[@]}" "${TRAIN[@]}" "train.steps=$STEPS")
: > "$WORK/timings.tsv"
stage() {  # stage NAME command...: run it, record its wall time
  local name="$1"; shift
  local started; started=$(date +%s.%N)
  echo "== $name: $*" >&2
  "$@"
  echo -e "$name\t$(echo "$(date +%s.%N) - $started" | bc)" >> "$WORK/timings.tsv"
}

stage ceiling bash -c "python benchmarks/gpu_check.py ceiling --device $DEVICE --dtype $([[ $DEVICE == cpu ]] && echo fp32 || echo bf16) > '$WORK/ceiling.json'"
stage make_lm python benchmarks/gpu_check.py make-lm "$WORK/lm" "${LM_SHAPE[@]}"
stage build mm build "${OVERRIDES[@]}" -o "$WORK/built"
python -c "import json,sys; print(json.dumps(json.load(open(sys.argv[1]))['param_counts']))" \
  "$WORK/built/mm_config.json" > "$WORK/params.json"
echo "parameters: $(cat "$WORK/params.json")" >&2
stage data mm build --data "${OVERRIDES[@]}"   # render the synthetic images once, outside the timed training
stage train_single mm pretrain "${OVERRIDES[@]}" --out "$WORK/single"
stage train_torchrun torchrun --standalone --nproc_per_node 1 -m mmbench_cli.cli pretrain "${OVERRIDES[@]}" \
  --out "$WORK/ddp"
stage eval mm eval "$WORK/single" --tasks synthetic-vqa synthetic-caption --shots 0 4 8 "${EVAL[@]}"

# one cell of ablations/scale.yaml: does the scaled recipe learn what the CPU default cannot (VQA - prior, OCR)?
stage scale_cell mm ablate ablations/scale.yaml "${SCALE[@]}" --out "$WORK/scale" --jobs 1

# kill -9 after a checkpoint at >= KILL_AT, then resume to the end
echo "== resume: train, SIGKILL after a checkpoint at step >= $KILL_AT, --resume" >&2
started=$(date +%s.%N)
mm pretrain "${OVERRIDES[@]}" --out "$WORK/resumed" &
TRAIN_PID=$!
KILLED_AFTER=$(python benchmarks/gpu_check.py wait-step "$WORK/resumed" "$KILL_AT" --timeout 900 || true)
if kill -0 "$TRAIN_PID" 2>/dev/null; then
  kill -9 "$TRAIN_PID"
else
  echo "gpu_check.sh: the run ended before the kill (it is resumed anyway)" >&2
  KILLED_AFTER=0
fi
wait "$TRAIN_PID" 2>/dev/null || true
mm pretrain "${OVERRIDES[@]}" --out "$WORK/resumed" --resume
echo -e "kill_and_resume\t$(echo "$(date +%s.%N) - $started" | bc)" >> "$WORK/timings.tsv"

# FSDP on RANKS ranks: an uninterrupted run, then the same run killed (torchrun and its ranks) after a checkpoint
# and re-run
FSDP=(torchrun --standalone --nproc_per_node "$RANKS" -m mmbench_cli.cli pretrain "${OVERRIDES[@]}" train.strategy=fsdp)
stage train_fsdp "${FSDP[@]}" --out "$WORK/fsdp"
echo "== fsdp resume: SIGKILL after a checkpoint at step >= $KILL_AT, re-run" >&2
started=$(date +%s.%N)
"${FSDP[@]}" --out "$WORK/fsdp_resumed" > "$WORK/fsdp_killed.log" 2>&1 &
TRAIN_PID=$!
FSDP_KILLED_AFTER=$(python benchmarks/gpu_check.py wait-step "$WORK/fsdp_resumed" "$KILL_AT" --timeout 900 || true)
if kill -0 "$TRAIN_PID" 2>/dev/null; then
  RANK_PIDS=$(pgrep -P "$TRAIN_PID" || true)  # torchrun starts each rank in its own session: kill them by pid
  kill -9 "$TRAIN_PID" $RANK_PIDS
else
  echo "gpu_check.sh: the FSDP run ended before the kill (it is re-run anyway)" >&2
  FSDP_KILLED_AFTER=0
fi
wait "$TRAIN_PID" 2>/dev/null || true
"${FSDP[@]}" --out "$WORK/fsdp_resumed"
echo -e "fsdp_kill_and_resume\t$(echo "$(date +%s.%N) - $started" | bc)" >> "$WORK/timings.tsv"

# two stages: align the connector with a frozen LM, then train everything from there (its own optimizer/schedule)
STAGE_STEPS=$(( STEPS / 4 > 2 ? STEPS / 4 : 2 ))
stage stage_align mm pretrain "${OVERRIDES[@]}" train.freeze_lm=true "train.steps=$STAGE_STEPS" --out "$WORK/align"
stage stage_full mm pretrain "${OVERRIDES[@]}" "train.init_from=$WORK/align" "train.steps=$STAGE_STEPS" --out "$WORK/full"

python benchmarks/gpu_check.py summarize "$WORK" "$OUT" --device "$DEVICE" --killed-after-step "${KILLED_AFTER:-0}" \
  --fsdp-killed-after-step "${FSDP_KILLED_AFTER:-0}" --ranks "$RANKS" --overrides "${OVERRIDES[@]}"
echo "wrote $OUT (work dir $WORK)" >&2
