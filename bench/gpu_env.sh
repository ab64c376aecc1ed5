# Sourced by the GPU scripts (bench/gpu_check.sh, bench/gpu_tiny_latent.sh) from the repo root: installs the
# carried wheels (.whl/, see bench/gpu_check.sh for the list) into /tmp/site and sets the environment.
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export HF_HUB_OFFLINE=1 WANDB_MODE=offline PYTHONUNBUFFERED=1
