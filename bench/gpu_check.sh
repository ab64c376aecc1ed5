#!/usr/bin/env bash
# One prepared GPU check (< 8 minutes on one H100/H200), run when a GPU machine is lent:
#   1. SD-1.5-sized model, training step time / frames/s / peak memory / FLOP utilisation (bench/train_step.py)
#   2. sdpa versus xformers attention on the same model
#   3. (issue 7) fsdp on one GPU, once its trainer config exists
# Results go to $OUT (or bench/results/gpu when OUT is unset) as JSON, for docs/benchmarks.md.
#
# The GPU image has torch, lightning, transformers, timm, torchmetrics, safetensors but not
# diffusers, hydra-core/omegaconf, webdataset, av, wandb or xformers: carry them as wheels in .whl/
# (see /work/.library/device/README.md), e.g. from the repo root here:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl diffusers==0.42.1 hydra-core==1.3.8 omegaconf==2.3.1 antlr4-python3-runtime==4.9.3 \
#     webdataset==1.0.2 braceexpand==0.1.7 av==18.1.0 xformers==0.0.35
# and run with carry=[".whl"].
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/gpu}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export HF_HUB_OFFLINE=1 WANDB_MODE=offline PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))" | tee -a "$OUT/gpu.txt"

# 1 + 2: SD-1.5 shapes (random init: shapes only), sdpa then xformers.
for backend in sdpa xformers; do
  timeout 200 python3 bench/train_step.py --model fgbg_sd15 --device cuda --batch 4 --video-batch 1 --frames 16 \
    --size 512 --steps 5 --out "$OUT/train_step_sd15_$backend.json" model.attention_backend="$backend" 2>&1 | tail -20 \
    || echo "train_step with $backend failed (see above)"
done

# 3: FSDP on one GPU (trainer=fsdp), a few steps of the tiny model on synthetic shards.
if [ -f conf/trainer/fsdp.yaml ]; then
  python3 -m fgbg.synth output=/tmp/gpu_synth num_videos=16 seed=0 >/dev/null
  timeout 150 python3 -m fgbg.train experiment=synthetic_tiny_image trainer=fsdp trainer.max_steps=5 \
    data.train_shards=/tmp/gpu_synth/train-000000.tar data.val_shards=/tmp/gpu_synth/train-000000.tar \
    paths.log_dir=/tmp/gpu_runs logger=csv 2>&1 | tail -20 | tee "$OUT/fsdp.txt"
fi
ls -la "$OUT"
