#!/usr/bin/env bash
# Retrain the bundled demo model from scratch with chexgen's own commands.
#
#   bash scripts/train_demo_model.sh [WORK_DIR] [DEST]
#
# WORK_DIR (default runs/demo-model) receives the phantom cohort, the VAE, the feature cache, the DiT run
# and the classifier; DEST (default src/chexgen/assets/demo) receives the packed model (fp16 weights).
# On 2 CPU cores this takes about 3 hours (the time budgets below); on a GPU raise the budgets / steps.
# Every step resumes where it stopped if the script is run again.
#
# Continuing a packed model: INIT_FROM=DIR (a demo model folder such as src/chexgen/assets/demo) reuses
# its VAE and classifier (the cohort is the same, seed 0) and starts the DiT from DIR/pipeline and the
# adapter from DIR/control instead of from scratch (steps 2 and 5 are skipped). This is how the bundled
# model was continued on 2026-12-01 (see its MODEL_CARD.md, which lists the settings of each stage).
#
# Quality curve: CURVE_EVERY=N trains the DiT in sessions of N steps (resumed exactly, so the result is
# the same run) and keeps each session's export as WORK/dit/pipeline-step-<step>, for
# benchmarks/demo_quality.py --model ... to score; DIT_MINUTES is then the budget of all sessions together.
#
# Annealing: DIT_STEPS / CONTROL_STEPS set --max-steps (default 100000: the minute budgets decide) and
# DIT_DECAY_STEPS / CONTROL_DECAY_STEPS decay the learning rate linearly to 0 over the last N of them
# (warmup-stable-decay; the run must reach its --max-steps within the minutes for the decay to finish).
# A constant-LR run is annealed by running the script again with these set: it resumes and decays.
# KEEP_CHECKPOINTS=0 keeps every DiT checkpoint (for scoring the steps afterwards; default 2).
#
# Decoder: DECODER_STEPS (default 3000, 0 = skip) fine-tunes the VAE's decoder alone before packing
# (train-vae --decoder-only; the latents, and so the DiT and adapter, stay as they are).
# Classifier: CLASSIFIER_ROUNDS (default 2; 0 with INIT_FROM) continues the evaluation classifier in
# rounds of 12 epochs from the one before (downstream classifier --init FOLDER).
#
# Precision: the DiT and the ControlNet adapter train in bf16 mixed precision (PRECISION, default bf16:
# fp32 master weights, AdamW state, EMA and loss; bf16 matrix products). On a 2-core AVX512-BF16 CPU a
# tiny-f4 step at batch 32 takes about a third of the fp32 step (benchmarks/precision.py), so the same
# DIT_MINUTES budget buys about 3x the steps. PRECISION=no trains in fp32 (on a CPU without bf16
# instructions bf16 is emulated and slower). The small VAE stays fp32 (bf16 measured only 1.2x faster
# for its narrow convolutions).
set -euo pipefail
WORK="${1:-runs/demo-model}"
DEST="${2:-src/chexgen/assets/demo}"
HERE="$(cd "$(dirname "$0")" && pwd)"
PREVALENCE="$HERE/demo_prevalence.yaml"
THREADS="${CHEXGEN_THREADS:-2}"
VAE_MINUTES="${VAE_MINUTES:-10}"
DECODER_STEPS="${DECODER_STEPS:-3000}"   # decoder-only fine-tune of the VAE before packing (0 = skip)
# classifier continuation rounds (12 epochs each); with INIT_FROM its classifier is reused as it is (0)
CLASSIFIER_ROUNDS="${CLASSIFIER_ROUNDS:-$([[ -n "${INIT_FROM:-}" ]] && echo 0 || echo 2)}"
DIT_MINUTES="${DIT_MINUTES:-130}"
CONTROL_MINUTES="${CONTROL_MINUTES:-14}"
PRECISION="${PRECISION:-bf16}"
INIT_FROM="${INIT_FROM:-}"
CURVE_EVERY="${CURVE_EVERY:-0}"
DIT_LR="${DIT_LR:-3e-4}"
REGION_WEIGHT="${REGION_WEIGHT:-5}"   # adapter loss counts the cells a condition marks 6x (small findings)
DIT_STEPS="${DIT_STEPS:-100000}"
DIT_DECAY_STEPS="${DIT_DECAY_STEPS:-0}"
CONTROL_STEPS="${CONTROL_STEPS:-100000}"
CONTROL_DECAY_STEPS="${CONTROL_DECAY_STEPS:-0}"
KEEP_CHECKPOINTS="${KEEP_CHECKPOINTS:-2}"
# adapter captions replaced by the null caption this often (the ControlNet recipe drops half of them, so
# that the layout has to come from the condition; the DiT keeps 0.1 for guidance)
CONTROL_CAPTION_DROPOUT="${CONTROL_CAPTION_DROPOUT:-0.1}"
# outside the cells a condition marks, the adapter's epsilon is pulled toward the frozen base's with this
# weight (train-control --base-anchor-weight): the adapter then changes the picture where the mask / box is
CONTROL_ANCHOR_WEIGHT="${CONTROL_ANCHOR_WEIGHT:-5}"
if (( CURVE_EVERY > 0 && DIT_DECAY_STEPS > 0 )); then
  echo "CURVE_EVERY sessions end at intermediate --max-steps, which a decay is scheduled against; use" \
       "KEEP_CHECKPOINTS=0 with DIT_DECAY_STEPS instead" >&2
  exit 2
fi
mkdir -p "$WORK"
VAE="$WORK/vae/vae"
CLASSIFIER="$WORK/classifier"   # set in step 5
DIT_INIT=()
CONTROL_INIT=()
if [[ -n "$INIT_FROM" ]]; then
  VAE="$INIT_FROM/pipeline/vae"
  CLASSIFIER="$INIT_FROM/classifier"
  DIT_INIT=(--init-from "$INIT_FROM/pipeline")
  CONTROL_INIT=(--init-control "$INIT_FROM/control")
fi

# 1. 4,000 phantom radiographs at 128 px (seed 0) with the demo's eight findings
chexgen phantom --n 4000 --size 128 --seed 0 --prevalence "$PREVALENCE" --out "$WORK/phantom" --workers 2

# 2. the small grayscale VAE (random 64 px crops: 4x cheaper steps; it is fully convolutional)
[[ -n "$INIT_FROM" ]] || chexgen train-vae "$WORK/phantom/manifest.jsonl" --preset tiny-f4 --output-dir "$WORK/vae" --batch-size 16 --crop-size 64 \
  --lr-warmup-steps 50 --max-steps 100000 --max-minutes "$VAE_MINUTES" --checkpoint-every 200 \
  --mixed-precision no --num-threads "$THREADS" --no-progress

# 3. cached VAE latents (mean + std) and MiniLM embeddings of the impressions
chexgen prepare "$WORK/phantom/manifest.jsonl" --preset tiny-f4 --vae "$VAE" --out "$WORK/cache" --device cpu

# 4. the tiny DiT (text-to-image), EMA weights exported as a pipeline folder
train_dit() {  # $1 = --max-steps, $2 = --max-minutes
  chexgen train "$WORK/cache" --preset tiny-f4 --vae "$VAE" --output-dir "$WORK/dit" "${DIT_INIT[@]}" \
    --batch-size 32 --learning-rate "$DIT_LR" --lr-warmup-steps 100 --max-steps "$1" --max-minutes "$2" \
    --lr-decay-steps "$DIT_DECAY_STEPS" --keep-checkpoints "$KEEP_CHECKPOINTS" --snr-gamma 5 --checkpoint-every 250 --mixed-precision "$PRECISION" --num-threads "$THREADS" --no-progress
}
dit_step() {  # the newest checkpoint's step (0 before the first)
  local last
  last=$(ls -d "$WORK"/dit/checkpoints/step-* 2>/dev/null | sed 's/.*step-0*//' | sort -n | tail -1)
  echo "${last:-0}"
}
if (( CURVE_EVERY > 0 )); then
  deadline=$(( $(date +%s) + DIT_MINUTES * 60 ))
  while (( $(date +%s) < deadline )); do
    target=$(( ( $(dit_step) / CURVE_EVERY + 1 ) * CURVE_EVERY ))
    train_dit "$target" "$(( (deadline - $(date +%s) + 59) / 60 ))"
    step=$(dit_step)
    rm -rf "$WORK/dit/pipeline-step-$step" && cp -r "$WORK/dit/pipeline" "$WORK/dit/pipeline-step-$step"
    (( step >= target )) || break   # stopped by the time budget
  done
else
  train_dit "$DIT_STEPS" "$DIT_MINUTES"
fi

# 5. the phantom classifier the demo evaluates with (ResNet18 from scratch, 128 px, 5 epochs), then
#    CLASSIFIER_ROUNDS rounds of 12 more epochs, each from the last one's backbone (fresh head, cosine LR)
if [[ -z "$INIT_FROM" ]]; then
  [[ -f "$WORK/classifier-r0/config.json" ]] || chexgen downstream classifier --real "$WORK/phantom/manifest.jsonl" \
    --output "$WORK/classifier-r0" --arch resnet18 --init scratch --image-size 128 --epochs 5 --batch-size 32 \
    --lr 1e-3 --num-threads "$THREADS"
  CLASSIFIER="$WORK/classifier-r0"
fi
for (( r = 1; r <= CLASSIFIER_ROUNDS; r++ )); do
  [[ -f "$WORK/classifier-r$r/config.json" ]] || chexgen downstream classifier --real "$WORK/phantom/manifest.jsonl" \
    --output "$WORK/classifier-r$r" --arch resnet18 --init "$CLASSIFIER" --image-size 128 --epochs 12 \
    --batch-size 32 --lr 5e-4 --num-threads "$THREADS"
  CLASSIFIER="$WORK/classifier-r$r"
done

# 6. spatial control: finding masks or boxes (alternating per case) as condition latents, then a ControlNet
#    adapter (3 copied blocks) on the frozen DiT of step 4
chexgen prepare "$WORK/phantom/manifest.jsonl" --preset tiny-f4 --vae "$VAE" --out "$WORK/cache-control" \
  --device cpu --conditions --condition-kinds finding --condition-style alternate
chexgen train-control "$WORK/cache-control" --base-model "$WORK/dit/pipeline" --output-dir "$WORK/control" "${CONTROL_INIT[@]}" \
  --batch-size 32 --learning-rate 2e-4 --lr-warmup-steps 50 --max-steps "$CONTROL_STEPS" --max-minutes "$CONTROL_MINUTES" \
  --lr-decay-steps "$CONTROL_DECAY_STEPS" --caption-dropout "$CONTROL_CAPTION_DROPOUT" --region-loss-weight "$REGION_WEIGHT" --base-anchor-weight "$CONTROL_ANCHOR_WEIGHT" --snr-gamma 5 --checkpoint-every 250 --mixed-precision "$PRECISION" --num-threads "$THREADS" --no-progress

# 7. a sharper decoder: the VAE's decoder alone, fine-tuned with its encoder and scaling_factor frozen, so
#    the DiT and adapter above (trained on its latents) are unchanged; packed instead of the pipeline's VAE
PACK_VAE=()
if (( DECODER_STEPS > 0 )); then
  chexgen train-vae "$WORK/phantom/manifest.jsonl" --preset tiny-f4 --init-from "$VAE" --decoder-only \
    --output-dir "$WORK/vae-decoder" --batch-size 16 --crop-size 64 --learning-rate 2e-4 --lr-warmup-steps 50 \
    --max-steps "$DECODER_STEPS" --lr-decay-steps $(( DECODER_STEPS * 4 / 15 )) --checkpoint-every 250 \
    --mixed-precision no --num-threads "$THREADS" --no-progress
  PACK_VAE=(--pack-vae "$WORK/vae-decoder/vae")
fi

# 8. pack: fp16 weights into DEST (the model card there is kept); sampling default = the one
#    benchmarks/sampler_quality.py chose for the current model (rerun it with --apply after retraining)
chexgen demo --pack-pipeline "$WORK/dit/pipeline" --pack-classifier "$CLASSIFIER" \
  --pack-prevalence "$PREVALENCE" --pack-control "$WORK/control/controlnet" "${PACK_VAE[@]}" --pack-to "$DEST" \
  --pack-clip-latents 5 --sampler dpmsolver++sde --steps 10
