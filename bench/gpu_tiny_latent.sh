#!/usr/bin/env bash
# Issue 16 on a lent GPU (one call, < 9.5 minutes on one H200): the tiny latent configuration end to end.
#   1. fgbg-synth: 1024 training + 64 validation videos (CPU, 12 workers); meanwhile the SD-1.5-size training
#      step of bench/train_step.py (random init, 512x512, sdpa), as bench/gpu_check.sh's first check
#   2. experiment=synthetic_tiny_vae on synthetic + real frames (.gpu/real/*.tar when carried) -> the VAE folder
#   3. three models of experiment=synthetic_tiny_latent_{image,video} side by side on the GPU (MODELS: models of
#      bench/claims.py --config latent, their overrides from `claims.py overrides`): by default the demo candidate pixel_no_aug (pixel-space hints, no link
#      augmentation), its pose-only twin pixel_no_aug_no_tracks, and pixel_no_aug_pw5 (person 5x in the loss);
#      the same steps, data and seed, capped by time (the cap is reported)
#   4. float16 bundles (VAE embedded) and logs into $OUT, for bench/claims.py --config latent and the demo
# Carry: .whl (diffusers, hydra-core, omegaconf, antlr4 4.9.3, webdataset, braceexpand, transformers) and .gpu.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/gpu_latent}
W=/tmp/fgbg_gpu
mkdir -p "$OUT" "$W/logs"
T0=$(date +%s)
el() { echo "[$(($(date +%s) - T0)) s] $*" | tee -a "$W/logs/timeline.txt"; }
source bench/gpu_env.sh
IMAGE_STEPS=${IMAGE_STEPS:-4000} IMAGE_TIME=${IMAGE_TIME:-00:00:02:50}
VIDEO_STEPS=${VIDEO_STEPS:-1200} VIDEO_TIME=${VIDEO_TIME:-00:00:01:10}
VAE_STEPS=${VAE_STEPS:-2000} VAE_TIME=${VAE_TIME:-00:00:01:20}
VAE_PERSON_WEIGHT=${VAE_PERSON_WEIGHT:-5}   # the person's pixels weigh 5x (CPU A/B, docs/model.md: +0.4 dB person)
MODELS=${MODELS:-"pixel_no_aug pixel_no_aug_no_tracks pixel_no_aug_pw5"}
# each model's overrides come from bench/claims.py (--config latent), per stage (`image:`-scoped ones included)
# shellcheck disable=SC2086
python3 bench/claims.py overrides --config latent --models $MODELS > /dev/null || { echo "MODELS: unknown model in $MODELS"; exit 2; }
TRAINER=${TRAINER:-gpu} NUM_VIDEOS=${NUM_VIDEOS:-1024}   # TRAINER=default NUM_VIDEOS=16 ...: a dry run on a CPU
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$W/logs/gpu.txt"
python3 -c "import torch, diffusers, transformers, lightning, hydra; print('torch', torch.__version__, torch.cuda.get_device_name(0), 'diffusers', diffusers.__version__, 'transformers', transformers.__version__, 'lightning', lightning.__version__)" >> "$W/logs/gpu.txt" 2>&1
cat "$W/logs/gpu.txt"

# 1. data on the CPU cores, the SD-1.5 step on the GPU meanwhile
(python3 -m fgbg.synth output=data/synthetic num_videos=$NUM_VIDEOS seed=0 videos_per_shard=$((NUM_VIDEOS / 8)) \
   workers=12 overwrite=true \
  && python3 -m fgbg.synth output=data/synthetic split=val num_videos=64 seed=1 videos_per_shard=32 workers=12 \
   overwrite=true) \
  > "$W/logs/synth.log" 2>&1 &
SYNTH=$!
[ "$TRAINER" = gpu ] && timeout 100 python3 bench/train_step.py --model fgbg_sd15 --device cuda --batch 4 --video-batch 1 --frames 16 \
  --size 512 --steps 5 --out "$W/logs/train_step_sd15_sdpa.json" model.attention_backend=sdpa > "$W/logs/train_step_sd15.log" 2>&1
el "sd15 train_step rc=$?"
wait $SYNTH; el "synth rc=$?"

COMMON=(trainer=$TRAINER seed=0 logger=csv extras.print_config=false)
NOSAMPLES=(callbacks.sample_video.every_n_steps=0 callbacks.sample_video.at_end=false)  # no av on the GPU image
# 2. the VAE
SHARDS="'data/synthetic/train-{000000..000007}.tar'"
for f in .gpu/real/*.tar; do [ -f "$f" ] && SHARDS="$SHARDS,'$f'"; done
python3 -m fgbg.train experiment=synthetic_tiny_vae "${COMMON[@]}" data.num_workers=6 paths.log_dir=$W/vae_run run_name=vae \
  model.person_weight=$VAE_PERSON_WEIGHT \
  "data.train_shards=[$SHARDS]" trainer.max_steps=$VAE_STEPS trainer.max_time=$VAE_TIME > "$W/logs/vae.log" 2>&1
el "vae rc=$?"
VAE=$W/vae_run/synthetic_tiny_vae/runs/vae/vae
python3 -m fgbg.eval.vae "$VAE" data/synthetic/val-000000.tar --out "$W/logs/vae_eval.json" > /dev/null 2>&1
el "vae eval rc=$? $(grep psnr_mean "$W/logs/vae_eval.json")"

# 3. three models, stage image then stage video, side by side
for stage in image video; do
  for m in $MODELS; do
    steps=$IMAGE_STEPS; cap=$IMAGE_TIME; init=()
    if [ $stage = video ]; then
      steps=$VIDEO_STEPS; cap=$VIDEO_TIME
      init=(model.init_from=$W/claims/image/runs/$m/checkpoints/image_ema.safetensors)
    fi
    mapfile -t extra < <(python3 bench/claims.py overrides --config latent --models "$m" --stage $stage)
    python3 -m fgbg.train experiment=synthetic_tiny_latent_$stage "${COMMON[@]}" "${NOSAMPLES[@]}" task_name=$stage run_name=$m \
      paths.log_dir=$W/claims model.latent.pretrained=$VAE trainer.max_steps=$steps trainer.max_time=$cap \
      data.num_workers=3 "${init[@]}" "${extra[@]}" > "$W/logs/${stage}_$m.log" 2>&1 &
  done
  wait; el "stage $stage done: $(grep -h -o 'training done at step [0-9]*' $W/logs/${stage}_*.log | tr '\n' ' ')"
done

# 4. bundles and logs back
for m in $MODELS; do
  python3 -m fgbg.models.bundle $W/claims/video/runs/$m "$OUT/$m.safetensors" --half >> "$W/logs/bundles.log" 2>&1
done
el "bundles: $(ls -la "$OUT" | grep -c safetensors)"
for d in $W/claims/*/runs/*; do
  mkdir -p "$W/logs/runs/$(basename "$(dirname "$(dirname "$d")")")_$(basename "$d")"
  cp -r "$d/.hydra" "$d"/csv* "$d"/*.log "$W/logs/runs/$(basename "$(dirname "$(dirname "$d")")")_$(basename "$d")/" 2>/dev/null
done
cp -r "$W/vae_run/synthetic_tiny_vae/runs/vae/.hydra" "$W/logs/vae_hydra" 2>/dev/null
tar -C "$(dirname "$VAE")" -cf "$OUT/tiny_vae.tar" vae
tar -C "$W" -czf "$OUT/logs.tar.gz" logs
ls -la "$OUT"
