"""Long-video scaling: fgbg's clip chaining against AnimateDiff's FreeNoise sliding windows.

For 16, 64 and 256 frames, each case runs in a fresh subprocess and reports
seconds per frame and peak memory. Peak memory is the process's peak resident
set (VmHWM) reset right before generation starts (``/proc/self/clear_refs``),
so it measures what generation itself needs, not the interpreter and weights;
the total peak is recorded too. Both methods use a UNet of the same shape
(``conf/model/fgbg_tiny.yaml``'s spatial blocks plus motion modules) in pixel
space at the same size, random weights, the same number of DDIM steps:

- fgbg: ``fgbg.generate.generate`` (clip by clip, each clip linked to the
  previous one's last frame; ReferenceNet once; frames streamed to mp4),
  clip length 16, a panning camera preset;
- AnimateDiff: ``diffusers.AnimateDiffPipeline`` with ``enable_free_noise``
  (context 16, stride 4), a tiny CLIP text encoder, an identity-sized VAE.

    python bench/long_video.py [--size 64] [--steps 4] [--frames 16 64 256] [--repeats 1]

writes ``bench/results/long_video.json`` and prints a markdown table.

The two methods run one after the other at each length (fgbg 16, AnimateDiff 16, fgbg 64, ...), so
that on a shared machine both numbers of a row see about the same load; each case records the
1-minute load average before and after its timed run and the process CPU seconds beside the wall
seconds. ``--repeats N`` times each case N times in its process and keeps the fastest (all are
recorded). fgbg's seconds are those of ``fgbg.generate.generate`` end to end, model loading
included (``model_load_seconds`` says how much), while AnimateDiff's pipeline is built before its
clock starts: ``seconds_per_frame_excluding_load`` is fgbg's figure on that footing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def tiny_unet_config(size: int) -> dict:
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(ROOT / "conf" / "model" / "fgbg_tiny.yaml")
    unet = OmegaConf.to_container(cfg.unet.config)
    unet["sample_size"] = size
    return unet


def run_fgbg(frames: int, size: int, steps: int, workdir: Path) -> dict:
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from omegaconf import OmegaConf
    from PIL import Image

    from fgbg.generate import generate
    from fgbg.models.bundle import save_bundle
    from fgbg.train import CONF_DIR

    torch.manual_seed(0)
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["model=fgbg_tiny", f"model.unet.config.sample_size={size}"])
    model_cfg = cfg.model
    model_cfg.image_encoder.config.image_size = size
    bundle = workdir / "model.safetensors"
    save_bundle(instantiate(model_cfg), bundle, model_cfg, {"resolution": size, "clip_len": 16, "max_tracks": 50})
    import numpy as np

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(workdir / "ref.png")
    mask = np.zeros((size, size), np.uint8)
    mask[size // 4 : 3 * size // 4, size // 3 : 2 * size // 3] = 255
    Image.fromarray(mask).save(workdir / "mask.png")
    pose = rng.uniform(size * 0.3, size * 0.7, (frames, 18, 3)).astype(np.float32)
    pose[..., 2] = 1
    json.dump({"width": size, "height": size, "keypoints": pose.tolist()}, open(workdir / "pose.json", "w"))
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        gcfg = compose("generate", overrides=[
            f"ckpt_path={bundle}", f"reference={workdir / 'ref.png'}", f"reference_mask={workdir / 'mask.png'}",
            f"motion={workdir / 'pose.json'}", "camera=pan", f"num_frames={frames}", "clip_len=16",
            f"steps={steps}", f"output_dir={workdir / 'out'}", "gif=false", "device=cpu",
        ])  # fmt: skip
    base = rss_mb("VmRSS")
    reset_peak()
    t0, c0 = time.perf_counter(), time.process_time()
    report = generate(gcfg)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = rss_mb("VmHWM")
    load = report["settings"]["model_load_seconds"]
    return {
        "seconds": seconds,
        "seconds_per_frame": seconds / frames,
        "cpu_seconds": cpu,
        "model_load_seconds": load,
        "seconds_per_frame_excluding_load": (seconds - load) / frames,
        "sampling_seconds_per_frame": report["seconds_per_frame"],
        "peak_mb_total": peak,
        "peak_mb_generation": peak - base,
        "referencenet_calls": report["referencenet_calls"],
        "_cfg": OmegaConf.to_container(gcfg),
    }


def run_animatediff(frames: int, size: int, steps: int, workdir: Path) -> dict:
    import torch
    from diffusers import AnimateDiffPipeline, AutoencoderKL, DDIMScheduler, MotionAdapter, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    unet_cfg = tiny_unet_config(size)
    toks = (
        ["<|startoftext|>", "<|endoftext|>"]
        + list(string.ascii_lowercase)
        + [c + "</w>" for c in string.ascii_lowercase]
    )
    (workdir / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(toks)}))
    (workdir / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(workdir / "vocab.json"), str(workdir / "merges.txt"), model_max_length=16)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(toks), hidden_size=unet_cfg["cross_attention_dim"], intermediate_size=128, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    ))  # fmt: skip
    unet = UNet2DConditionModel(**unet_cfg)
    adapter = MotionAdapter(
        block_out_channels=unet_cfg["block_out_channels"], motion_layers_per_block=unet_cfg["layers_per_block"],
        motion_num_attention_heads=4, motion_norm_num_groups=unet_cfg["norm_num_groups"], motion_max_seq_length=32,
        use_motion_mid_block=False,
    )  # fmt: skip
    # One encoder block: no downsampling, so the UNet runs at the frame size as fgbg's pixel-space model does.
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=unet_cfg["in_channels"], block_out_channels=(8,),
        down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",), norm_num_groups=4,
    )  # fmt: skip
    pipe = AnimateDiffPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                               motion_adapter=adapter, scheduler=DDIMScheduler())  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    pipe.enable_free_noise(context_length=16, context_stride=4)
    base = rss_mb("VmRSS")
    reset_peak()
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        out = pipe(prompt="a person", num_frames=frames, height=size, width=size, num_inference_steps=steps,
                   guidance_scale=1.0, output_type="np").frames  # fmt: skip
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = rss_mb("VmHWM")
    assert out.shape[1] == frames
    return {
        "seconds": seconds,
        "seconds_per_frame": seconds / frames,
        "cpu_seconds": cpu,
        "peak_mb_total": peak,
        "peak_mb_generation": peak - base,
    }


def child(method: str, frames: int, size: int, steps: int, repeats: int = 1) -> None:
    fn = run_fgbg if method == "fgbg" else run_animatediff
    with tempfile.TemporaryDirectory() as tmp:
        fn(16, size, 1, Path(tmp))  # warm-up: one-time costs (imports, allocator, kernels) stay out of the timing
    runs = []
    for _ in range(repeats):
        load_before = os.getloadavg()[0]
        with tempfile.TemporaryDirectory() as tmp:
            result = fn(frames, size, steps, Path(tmp))
        result.pop("_cfg", None)
        result["load_average_1min"] = [load_before, os.getloadavg()[0]]
        runs.append(result)
    result = dict(min(runs, key=lambda r: r["seconds"]))
    if repeats > 1:
        result["all_seconds"] = [r["seconds"] for r in runs]
    print("RESULT " + json.dumps(result))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--frames", type=int, nargs="+", default=[16, 64, 256])
    p.add_argument("--methods", nargs="+", default=["fgbg", "animatediff_freenoise"])
    p.add_argument("--repeats", type=int, default=1, help="timed runs per case (the fastest is kept)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "long_video.json"), help="results JSON")
    p.add_argument("--child", nargs=2, metavar=("METHOD", "FRAMES"))
    args = p.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), args.size, args.steps, args.repeats)
        return
    results: dict[str, dict] = {}
    load_start = os.getloadavg()
    for frames in args.frames:  # both methods at one length back to back: about the same machine load
        for method in args.methods:
            cmd = [
                sys.executable,
                __file__,
                "--size",
                str(args.size),
                "--steps",
                str(args.steps),
                "--repeats",
                str(args.repeats),
                "--child",
                method,
                str(frames),
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if proc.returncode or line is None:
                raise RuntimeError(f"{method} at {frames} frames failed:\n{proc.stderr[-3000:]}")
            results.setdefault(method, {})[str(frames)] = json.loads(line[7:])
            print(f"{method:>22} {frames:4d} frames: {results[method][str(frames)]}", flush=True)
    lo, hi = str(min(args.frames)), str(max(args.frames))
    summary = {
        m: {
            "time_ratio": r[hi]["seconds"] / r[lo]["seconds"],
            "frames_ratio": int(hi) / int(lo),
            "peak_generation_ratio": r[hi]["peak_mb_generation"] / max(r[lo]["peak_mb_generation"], 1e-6),
            "peak_total_ratio": r[hi]["peak_mb_total"] / r[lo]["peak_mb_total"],
        }
        for m, r in results.items()
    }
    results = {m: {str(f): results[m][str(f)] for f in args.frames} for m in args.methods}
    out = {
        "benchmark": "long-video scaling",
        "size": args.size,
        "steps": args.steps,
        "frames": args.frames,
        "repeats": args.repeats,
        "results": results,
        "summary": summary,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, CPU",
        "load_average_1_5_15min": {"start": load_start, "end": os.getloadavg()},
        "command": "python bench/long_video.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
    }
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(
        "\n| method | frames | s/frame | s/frame without model load | CPU s | load avg (1 min) "
        "| peak MB (generation) | peak MB (process) |\n|---|---|---|---|---|---|---|---|"
    )
    for m, r in results.items():
        for f in args.frames:
            x = r[str(f)]
            no_load = x.get("seconds_per_frame_excluding_load", x["seconds_per_frame"])
            load = "-".join(f"{v:.1f}" for v in x["load_average_1min"])
            print(
                f"| {m} | {f} | {x['seconds_per_frame']:.3f} | {no_load:.3f} | {x['cpu_seconds']:.1f} | {load} "
                f"| {x['peak_mb_generation']:.0f} | {x['peak_mb_total']:.0f} |"
            )
    for m, s in summary.items():
        print(
            f"{m}: time x{s['time_ratio']:.1f} for x{s['frames_ratio']:.0f} frames, peak (generation) x{s['peak_generation_ratio']:.2f}"
        )


if __name__ == "__main__":
    main()
