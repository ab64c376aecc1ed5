#!/usr/bin/env bash
# One prepared GPU check (< 8 minutes on one H100/H200), run when a GPU machine is lent:
#   1. SD-1.5-sized model, training step time / frames/s / peak memory / FLOP utilisation (bench/train_step.py)
#   2. sdpa versus xformers attention on the same model; stage video at 512x512 x 16 with checkpointing against
#      bench/sd15_memory.py's meta-device prediction (step time, MFU, peak memory)
#   3. issue 13 on one GPU: DDP (find_unused_parameters=False) with whole conditions dropped,
#      trainer=fsdp (FSDP2: EMA, stage weights, sample video, sharded checkpoint, resume=auto), the tiny
#      model trained with attention_backend=xformers (both stages), xformers vs sdpa past batch 65,535
# Results go to $OUT (or bench/results/gpu when OUT is unset) as JSON, for docs/benchmarks.md.
#
# The GPU image has torch (2.11.0+cu130 on 2026-11-30, not our 2.14.1), lightning, transformers, timm,
# torchmetrics, safetensors, huggingface-hub but not diffusers, hydra-core/omegaconf, webdataset, av, wandb or
# xformers: carry them as wheels in .whl/ (see /work/.library/device/README.md), e.g. from the repo root here:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl diffusers==0.42.1 hydra-core==1.3.8 omegaconf==2.3.1 webdataset==1.0.2 braceexpand==0.1.7 \
#     transformers==5.24.0
#   python3 -m pip wheel --no-deps -w .whl antlr4-python3-runtime==4.9.3   # published as an sdist only
# and run with carry=[".whl"] (20 MB). av (36 MB) does not fit beside them under the 64 MiB transfer limit: without
# it the tiny runs below write no sample videos. xformers 0.0.35 is built for torch 2.14: on that machine's torch
# it does not load, so the xformers checks report themselves skipped until a matching build is carried.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/gpu}
mkdir -p "$OUT"
source bench/gpu_env.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))" | tee -a "$OUT/gpu.txt"

# 1 + 2: SD-1.5 shapes (random init: shapes only), sdpa then xformers.
BACKENDS=(sdpa); python3 -c "import xformers.ops" 2>/dev/null && BACKENDS+=(xformers)
for backend in "${BACKENDS[@]}"; do
  timeout 150 python3 bench/train_step.py --model fgbg_sd15 --device cuda --batch 4 --video-batch 1 --frames 16 \
    --size 512 --steps 5 --out "$OUT/train_step_sd15_$backend.json" model.attention_backend="$backend" 2>&1 | tail -20 \
    || echo "train_step with $backend failed (see above)"
done

# 2b: the prediction of bench/sd15_memory.py checked (stage video, 512x512 x 16, bf16, checkpointing on)
timeout 150 python3 bench/sd15_memory.py gpu --device cuda --steps 3 > "$OUT/sd15_memory_gpu.json" 2>"$OUT/sd15_memory_gpu.log" \
  && cat "$OUT/sd15_memory_gpu.json" || { echo "sd15_memory gpu failed:"; tail -5 "$OUT/sd15_memory_gpu.log"; }

# 3: issue 13 on one GPU, tiny model on synthetic shards (each run a few steps; logs under $OUT).
python3 -m fgbg.synth output=/tmp/gpu_synth num_videos=16 num_frames=8 seed=0 videos_per_shard=8 >/dev/null
SAMPLES=()
python3 -c "import av" 2>/dev/null || SAMPLES=(callbacks.sample_video.every_n_steps=0 callbacks.sample_video.at_end=false)
XF=1; python3 -c "import xformers.ops" 2>/dev/null || { XF=0; echo "xformers does not import here: its checks are skipped"; }
RUN=(experiment=synthetic_tiny_image "data.train_shards='/tmp/gpu_synth/train-{000000..000001}.tar'"
     data.val_shards=/tmp/gpu_synth/train-000000.tar data.num_workers=2 trainer.max_steps=6
     trainer.val_check_interval=null trainer.limit_val_batches=0 callbacks.sample_video.every_n_steps=3
     callbacks.sample_video.num_inference_steps=4 callbacks.stage_weights.every_n_train_steps=3
     callbacks.model_checkpoint.every_n_train_steps=3 logger=csv extras.print_config=false "${SAMPLES[@]}")
check() {  # name (a _resume suffix reuses the name's run folder), timeout, overrides...
  local name=$1 limit=$2; shift 2
  if timeout "$limit" python3 -m fgbg.train "${RUN[@]}" paths.log_dir=/tmp/gpu_runs/"${name%_resume}" "$@" >"$OUT/$name.log" 2>&1
  then echo "$name: ok"; else echo "$name: FAILED (rc $?, tail of $OUT/$name.log:)"; tail -5 "$OUT/$name.log"; fi
}
# DDP with every sample's pose and tracks dropped (the branches run gated to zero: no unused parameters)
check ddp_dropped_conditions 90 trainer=ddp trainer.devices=1 data.batch_size=1 model.cfg_dropout.pose=1.0 \
  model.cfg_dropout.tracks=1.0
check fsdp 90 trainer=fsdp trainer.devices=1 data.batch_size=2 run_name=fsdp
check fsdp_resume 90 trainer=fsdp trainer.devices=1 data.batch_size=2 run_name=fsdp resume=auto trainer.max_steps=9
[ $XF = 1 ] && check xformers_image 90 trainer=gpu model.attention_backend=xformers data.batch_size=2
[ $XF = 1 ] && check xformers_video 90 trainer=gpu model.attention_backend=xformers data.batch_size=1 model.stage=video
ls -R /tmp/gpu_runs/fsdp 2>&1 | grep -E "ckpt|safetensors|mp4" | tee "$OUT/fsdp_files.txt"
# xformers kernels against SDPA: a temporal-attention batch past 65,535 (split into chunks), fp16
[ $XF = 1 ] && timeout 60 python3 - <<'EOF' 2>&1 | tee "$OUT/xformers_kernels.txt"
import torch
from fgbg.models.attention import attention
q, k, v = (torch.randn(70_000, 16, 8, 40, device="cuda", dtype=torch.float16) for _ in range(3))
d = (attention(q, k, v, "xformers") - attention(q, k, v, "sdpa")).abs().max().item()
print("xformers (split) vs sdpa, batch 70,000: max |diff|", d)
EOF
ls -la "$OUT"
