"""Background paths drawn by hand, on the shipped demo model: how well the generated video follows them.

    python bench/drawn_paths.py [--ckpt fgbg/assets/demo_model.safetensors] [--frames 16] [--steps 20] [--sweep]

The demo page's own request path (``fgbg.app.request.run_request``, what the page runs after the browser
hands it the drawing): the ``dance_pan`` reference (64x64), the two strokes of the browser test
(``tests/test_app_drawn_paths.py``: rightwards across the left checks, up and to the right over the bottom-left
triangle) combined with the pan preset, at the model's resolution. The generated video is tracked with LK from the given tracks' first positions
(``fgbg.eval.track_following_error``) and compared with the tracks handed to generation: over all tracks and
over the stroke tracks alone, for the whole video and re-seeded at every clip. Each model is run with the
hint anchor its bundle recommends and with ``hint_anchor=0``. Two rows need no model: the reference itself
(its shipped person mask) warped along the same tracks, by the affine fitted to them (a video that follows the
camera and ignores the strokes' own motion) and with each track's neighbourhood moved as the track says (what
``hint_anchor`` pastes).
Writes ``bench/results/drawn_paths.json``. ``--sweep`` instead runs the anchored model on four stroke pairs under
three camera presets with the anchor's per-track neighbourhood at 4 and 6 px (``ANCHOR_TRACK_SIGMA``) and writes
``bench/results/drawn_paths_sigma.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Reference pixels, as the browser test draws them: each on background the reference shows, and with the pan
# (1 px a frame leftwards) each stays inside the frame and off the person for all 16 frames. The first pair
# (2026-12-01: along the top edge from (4, 6), up the right edge from (60, 60)) had its second stroke carried by
# the pan into the person, where no background can be followed, and its first pinned to the left border.
STROKES = [[(8, 20), (20, 20)], [(16, 50), (22, 40)]]


def scores(video: np.ndarray, tracks: np.ndarray, visible: np.ndarray, group: np.ndarray, clip_len: int) -> dict:
    """Track following of ``video`` (T, H, W, 3) uint8 along the given tracks: all of them and the strokes'."""
    from fgbg.eval import track_following_error
    from fgbg.eval.motion import track_following_error_per_clip

    out = {}
    for name, sel in (("all", slice(None)), ("strokes", group >= 0)):
        whole = track_following_error(video, tracks[:, sel], visible[:, sel])
        per_clip = track_following_error_per_clip(video, tracks[:, sel], visible[:, sel], clip_len)
        out[name] = {
            "track_error_px": whole["track_error_px"], "track_lost_fraction": whole["track_lost_fraction"],
            "track_error_clip_px": per_clip["track_error_clip_px"],
            "track_lost_fraction_clip": per_clip["track_lost_fraction_clip"],
        }  # fmt: skip
    return out


def paste_baseline(tracks: np.ndarray, visible: np.ndarray, group: np.ndarray, clip_len: int, sigma: float) -> dict:
    """No model: the dance_pan reference (person masked by its shipped mask) warped along ``tracks`` by
    ``motion_hint`` (``sigma`` 0: the affine fitted to all tracks; > 0: each track's neighbourhood too), scored."""
    import torch
    from PIL import Image

    from fgbg.app.examples import EXAMPLES_DIR
    from fgbg.models.motion_hint import motion_hint

    ref = np.array(Image.open(EXAMPLES_DIR / "dance_pan.png").convert("RGB"))
    mask = np.asarray(Image.open(EXAMPLES_DIR / "dance_pan_mask.png").convert("L")) > 127
    image = torch.from_numpy(ref).permute(2, 0, 1)[None].float() / 127.5 - 1
    if ref.shape[:2] != (64, 64):
        raise ValueError(f"{EXAMPLES_DIR / 'dance_pan.png'}: expected 64x64 (the tracks' size), got {ref.shape[:2]}")
    tr, vis = torch.from_numpy(tracks)[None], torch.from_numpy(visible)[None]
    hint = motion_hint(image, torch.from_numpy(mask)[None, None].float(), tr, vis, tr[:, 0], vis[:, 0], (64, 64),
                       1, "irls", sigma)[0]  # fmt: skip
    video = ((hint[:, :3].clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    return {"sigma_px": sigma, **scores(video, tracks, visible, group, clip_len)}


def measure(
    ckpt: str, frames: int, steps: int, hint_anchor: float | None, out: Path, strokes=STROKES, preset: str = "pan"
) -> tuple[dict, tuple]:
    from fgbg.app.examples import EXAMPLES_DIR
    from fgbg.app.request import DRAWN_TRACKS, GenerationRequest, Limits, run_request
    from fgbg.app.server import compose_generate_config
    from fgbg.data.video import read_video

    base = compose_generate_config()
    base.ckpt_path, base.gif = ckpt, False
    base.hint_anchor = hint_anchor
    drawing = {"width": 64, "height": 64, "strokes": [[[x + 0.5, y + 0.5] for x, y in s] for s in strokes]}
    req = GenerationRequest(reference=str(EXAMPLES_DIR / "dance_pan.png"), num_frames=frames, steps=steps,
                            background="camera", preset=preset, drawn_paths=json.dumps(drawing))  # fmt: skip
    t0 = time.perf_counter()
    result = run_request(req, base, Limits(max_frames=max(frames, 16), max_steps=max(steps, 20)), out)
    seconds = time.perf_counter() - t0
    saved = np.load(result.output_dir / DRAWN_TRACKS)
    tracks, visible, group = saved["tracks"][:frames], saved["visible"][:frames], saved["group"]
    video, _ = read_video(str(result.output_dir / "video.mp4"))
    strokes = group >= 0
    clip_len = int(result.report["settings"]["resolved"]["clip_len"])
    row = {"size": list(video.shape[1:3]), "frames": int(video.shape[0]), "clip_len": clip_len, "seconds": seconds,
           "hint_anchor": result.report["settings"]["resolved"]["sampling"]["hint_anchor"],
           "stroke_tracks": int(strokes.sum()), "all_tracks": int(len(group))}  # fmt: skip
    row |= scores(video, tracks, visible, group, clip_len)
    return row, (tracks, visible, group, clip_len)


# --sweep: the neighbourhood each track carries in the anchor's paste (fgbg.models.module.ANCHOR_TRACK_SIGMA), on
# the test's strokes and three other pairs on background the reference shows, under three camera presets.
SWEEP_STROKES = {
    "test": STROKES,
    "left_top": [[(6, 44), (6, 30)], [(10, 8), (22, 12)]],
    "right_top": [[(58, 6), (62, 16)], [(26, 6), (20, 14)]],
    "long": [[(4, 60), (24, 58)], [(8, 30), (14, 8)]],
}
SWEEP_PRESETS = ("pan", "zoom", "shake")
PASTE_SIGMA_PX = (0.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0)
SWEEP_SIGMA_PX = (4.0, 6.0)  # at 64x64: the anchor's neighbourhood before 2026-12-02, and since


def sweep(ckpt: str, frames: int, steps: int, out: str, sigmas=SWEEP_SIGMA_PX, sets=None, presets=SWEEP_PRESETS):
    """Stroke and all-track error per clip, with the bundle's recommended anchor, for each stroke pair x camera
    preset x anchor neighbourhood (px at 64x64; the module constant is set for the run and restored after)."""
    import fgbg.models.module as module

    sets = sets or list(SWEEP_STROKES)
    cases, saved, paste = [], module.ANCHOR_TRACK_SIGMA, None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for name, preset, sigma in itertools.product(sets, presets, sigmas):
                module.ANCHOR_TRACK_SIGMA = sigma / 64
                r, given = measure(ckpt, frames, steps, None, Path(tmp) / f"{name}_{preset}_{sigma}",
                                   SWEEP_STROKES[name], preset)  # fmt: skip
                if name == "test" and preset == "pan" and r["size"] == [64, 64]:
                    paste = given  # the no-model paste's sweep below uses the test's tracks
                c = {"strokes": name, "preset": preset, "sigma_px": sigma,
                     "stroke_clip_px": r["strokes"]["track_error_clip_px"],
                     "stroke_lost_clip": r["strokes"]["track_lost_fraction_clip"],
                     "stroke_whole_px": r["strokes"]["track_error_px"], "all_clip_px": r["all"]["track_error_clip_px"],
                     "all_lost_clip": r["all"]["track_lost_fraction_clip"]}  # fmt: skip
                cases.append(c)
                print(f"[drawn-paths] sweep {name} {preset} sigma {sigma:g} px: strokes per clip "
                      f"{c['stroke_clip_px']:.2f} px (lost {c['stroke_lost_clip']:.2f}), all per clip "
                      f"{c['all_clip_px']:.2f} px", flush=True)  # fmt: skip
    finally:
        module.ANCHOR_TRACK_SIGMA = saved
    summary = {}
    for sigma in sigmas:
        mine = [c for c in cases if c["sigma_px"] == sigma]
        summary[f"{sigma:g}"] = {k: float(np.mean([c[k] for c in mine]))
                                 for k in ("stroke_clip_px", "stroke_lost_clip", "stroke_whole_px", "all_clip_px")}  # fmt: skip
    report = {"ckpt": ckpt, "frames": frames, "steps": steps, "strokes": {k: SWEEP_STROKES[k] for k in sets},
              "mean": summary, "cases": cases}  # fmt: skip
    if paste is not None:  # no model: the reference warped along the test's tracks, neighbourhood 0 (affine) to 10 px
        tracks, visible, group, clip_len = paste
        report["paste_strokes_clip_px"] = {
            f"{s:g}": paste_baseline(tracks, visible, group, clip_len, s)["strokes"]["track_error_clip_px"]
            for s in PASTE_SIGMA_PX
        }
        print(f"[drawn-paths] sweep paste (no model), strokes per clip by sigma px: {report['paste_strokes_clip_px']}")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(report, indent=1, default=float))
    for sigma, m in summary.items():
        print(f"[drawn-paths] sweep sigma {sigma} px, mean of {len(cases) // len(sigmas)}: strokes per clip "
              f"{m['stroke_clip_px']:.3f} px, all per clip {m['all_clip_px']:.3f} px", flush=True)  # fmt: skip
    print(f"[drawn-paths] wrote {out}")
    return report


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", default=str(ROOT / "fgbg" / "assets" / "demo_model.safetensors"))
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--out", default=None, help="default bench/results/drawn_paths.json (_sigma.json with --sweep)")
    p.add_argument("--sweep", action="store_true",
                   help="instead: the anchor's per-track neighbourhood (4 and 6 px) over four stroke pairs x three presets")  # fmt: skip
    args = p.parse_args(argv)
    if args.sweep:
        sweep(
            args.ckpt, args.frames, args.steps, args.out or str(ROOT / "bench" / "results" / "drawn_paths_sigma.json")
        )
        return
    args.out = args.out or str(ROOT / "bench" / "results" / "drawn_paths.json")
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, anchor in (("recommended", None), ("hint_anchor_0", 0.0)):
            rows[name], given = measure(args.ckpt, args.frames, args.steps, anchor, Path(tmp) / name)
            r = rows[name]
            print(f"[drawn-paths] {name} (hint_anchor {r['hint_anchor']}), {r['frames']} frames {r['size']}: "
                  f"strokes {r['strokes']['track_error_px']:.2f} px (lost {r['strokes']['track_lost_fraction']:.2f}), "
                  f"per clip {r['strokes']['track_error_clip_px']:.2f} px; all {r['all']['track_error_px']:.2f} px "
                  f"(lost {r['all']['track_lost_fraction']:.2f}); {r['seconds']:.0f} s", flush=True)  # fmt: skip
    if rows["recommended"]["size"] == [64, 64]:  # the baselines are drawn at the reference's own 64x64
        tracks, visible, group, clip_len = given
        baselines = {"paste_affine": paste_baseline(tracks, visible, group, clip_len, 0.0),
                     "paste_tracks": paste_baseline(tracks, visible, group, clip_len, 4.0)}  # fmt: skip
        for name, r in baselines.items():
            print(f"[drawn-paths] {name} (no model): strokes per clip {r['strokes']['track_error_clip_px']:.2f} px "
                  f"(lost {r['strokes']['track_lost_fraction_clip']:.2f}); all per clip "
                  f"{r['all']['track_error_clip_px']:.2f} px", flush=True)  # fmt: skip
        rows |= baselines
    report = {"ckpt": str(Path(args.ckpt).resolve().relative_to(ROOT)) if Path(args.ckpt).resolve().is_relative_to(ROOT)
              else args.ckpt, "strokes": STROKES, "preset": "pan", "steps": args.steps, "rows": rows}  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1, default=float))
    print(f"[drawn-paths] wrote {args.out}")


if __name__ == "__main__":
    main()
