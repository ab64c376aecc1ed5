"""The demo page's logic without a browser: request checks, the generate config, runs, startup errors,
and ``reference_keypoints=auto`` (mediapipe on the reference) for retargeting."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from PIL import Image

from fgbg.app.examples import DRIVING_EXAMPLES, EXAMPLES_DIR, driving_example, reference_examples
from fgbg.app.request import GenerationRequest, Limits, RequestError, check_request, generation_config, run_request
from fgbg.app.server import AppConfigError, compose_generate_config, resolve_model
from fgbg.data.schema import NUM_KEYPOINTS
from fgbg.data.shards import iter_clips
from fgbg.data.video import VideoFileWriter
from fgbg.generate import prepare_jobs
from fgbg.generation.inputs import InputError
from fgbg.train import CONF_DIR
from tests.conftest import save_tiny_bundle

ROOT = Path(__file__).resolve().parents[1]
LIMITS = Limits(max_frames=12, max_steps=5, max_driving_seconds=1.0)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return save_tiny_bundle(tmp_path_factory.mktemp("app-model") / "model.safetensors", resolution=16, clip_len=4)


@pytest.fixture(scope="module")
def base(model):
    cfg = compose_generate_config()
    cfg.ckpt_path = str(model)
    cfg.gif = False
    return cfg


def request(**changes) -> GenerationRequest:
    """A small valid request (bundled reference and clip, camera pan) with ``changes``."""
    return replace(GenerationRequest(reference=str(EXAMPLES_DIR / "dance_pan.png"), num_frames=8, steps=1), **changes)


def write_video(path: Path, frames: int, fps: float = 8.0, size: int = 64) -> Path:
    """A person-free video: a smooth gradient sliding right."""
    x = np.linspace(0, 255, size * 2)
    with VideoFileWriter(path, fps) as w:
        for t in range(frames):
            row = np.roll(x, 2 * t)[:size]
            w.write(np.repeat(np.stack([row, row[::-1], np.full(size, 90.0)], -1)[None], size, 0).astype(np.uint8))
    return path


def test_bundled_examples_are_one_clip_shards_with_pose_and_tracks(tmp_path):
    for example in DRIVING_EXAMPLES:
        clip = next(iter_clips([str(example.shard)]))
        assert clip.frames.shape == (16, 64, 64, 3) and clip.pose.shape == (16, NUM_KEYPOINTS, 3)
        assert clip.tracks.shape[1] >= 5 and clip.visible.any()
        ref = np.asarray(Image.open(example.shard.with_suffix(".png")))
        np.testing.assert_array_equal(ref, clip.frames[0])
    refs = reference_examples(tmp_path)
    assert all(p.is_file() for p in refs) and len(refs) >= len(DRIVING_EXAMPLES)
    with pytest.raises(KeyError, match="no bundled driving clip 'moonwalk'"):
        driving_example("moonwalk")


def test_check_request_refuses_what_the_page_must_not_run(tmp_path):
    pose = tmp_path / "pose.json"
    pose.write_text('{"width": 16, "height": 16, "keypoints": []}')
    long_video = write_video(tmp_path / "long.mp4", frames=24)  # 3 s at 8 fps
    broken_video = tmp_path / "broken.mp4"
    broken_video.write_bytes(b"\x00\x00\x00\x18ftypmp42 not a video")
    cases = [
        (request(reference=None), "upload a reference image"),
        (request(num_frames=13), "13 frames requested; this page makes 1 to 12 .*max_frames=N"),
        (request(steps=6), "6 sampling steps requested; this page allows 1 to 5"),
        (request(motion_source="file"), "upload a pose/tracks file first"),
        (
            request(motion_source="file", motion_file=str(tmp_path / "gone.json")),
            "gone.json is no longer on the server",
        ),
        (request(motion_source="file", motion_file=str(long_video)), r"long.mp4: expected a \.tar / \.json file"),
        (
            request(motion_source="file", motion_file=str(pose), background="tracks"),
            "pose.json has no background tracks",
        ),
        (request(motion_source="video", driving_video=str(long_video)), "long.mp4 lasts 3.0 s; .* at most 1 s"),
        (request(motion_source="video", driving_video=str(broken_video)), "broken.mp4 is not a readable video"),
        (request(background="camera", preset="orbit"), "camera preset 'orbit'"),
        (request(example="moonwalk"), "no bundled driving clip 'moonwalk'"),
    ]
    for req, message in cases:
        with pytest.raises(RequestError, match=message):
            check_request(req, LIMITS)
    check_request(request(), LIMITS)  # the defaults are a valid request
    check_request(request(motion_source="file", motion_file=str(pose), background="static"), LIMITS)


def test_generation_config_maps_the_page_controls(base, tmp_path):
    cfg = generation_config(
        request(preset="zoom", zoom_rate=-0.02, speed=2.5, seed=7, guidance={"reference": 2.0, "pose": 1.0, "tracks": 1.5}),
        base, tmp_path / "out",
    )  # fmt: skip
    assert cfg.camera == "zoom" and cfg.camera_args.zoom_rate == -0.02 and cfg.camera_args.speed == 2.5
    assert cfg.motion == str(driving_example("dance_pan").shard) and cfg.loop and not cfg.overwrite
    assert cfg.seed == 7 and cfg.guidance.reference == 2.0 and cfg.guidance.tracks == 1.5
    # a bundled example image is its clip's first frame: the person hint gets that clip's first pose
    assert cfg.reference_keypoints == str(driving_example("dance_pan").shard)
    assert not cfg.retarget and cfg.output_dir == str(tmp_path / "out")
    other = tmp_path / "me.png"
    other.write_bytes((EXAMPLES_DIR / "dance_pan.png").read_bytes())
    assert generation_config(request(reference=str(other)), base, tmp_path).reference_keypoints is None
    assert generation_config(request(background="static"), base, tmp_path).camera == "static"
    assert generation_config(request(background="tracks"), base, tmp_path).camera is None
    retarget = generation_config(request(retarget=True), base, tmp_path)
    assert retarget.retarget and retarget.reference_keypoints == "auto"
    assert base.camera is None and base.reference == "unset", "the page's base config is never changed"


def test_each_request_runs_in_its_own_folder_with_per_clip_progress(base, tmp_path):
    seen: list[tuple[float, str]] = []
    first = run_request(request(), base, LIMITS, tmp_path, progress=lambda f, what: seen.append((f, what)))
    second = run_request(request(background="tracks", seed=1), base, LIMITS, tmp_path)
    assert first.output_dir != second.output_dir and first.output_dir.parent == tmp_path
    for result in (first, second):
        assert result.video.is_file() and result.sheet.is_file()
        assert [p.name for p in result.downloads] == ["video.mp4", "generation.json"]
        assert result.report["frames"] == 8 and result.report["clips"] == 2
    assert first.summary().startswith("8 frames at 16x16 in 2 clips")
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == pytest.approx(1.0)
    assert [w for _, w in seen] == [
        "reading the inputs",
        "generating clip 1 of 2",
        "generating clip 2 of 2",
        "writing the video",
    ]


def test_a_failed_request_leaves_no_folder(base, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG broken")
    with pytest.raises(InputError, match="broken.png is not a readable image"):
        run_request(request(reference=str(broken)), base, LIMITS, tmp_path / "out")
    assert not any((tmp_path / "out").iterdir())


def test_a_driving_video_without_a_person_is_reported(base, tmp_path):
    pytest.importorskip("mediapipe", reason="preprocessing a driving video needs mediapipe (make install)")
    video = write_video(tmp_path / "empty street (1).mp4", frames=20, fps=24)  # a clip's 16 frames, under 1 s
    message = r"no person found in the driving video empty street \(1\).mp4 \(no_person: a person was found in 0% of 20 frames\)"
    # Under fgbg-app's @hydra.main Hydra is already initialised: preprocessing must compose inside it,
    # and take a file name that is no valid override value.
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"), pytest.raises(RequestError, match=message):
        run_request(request(motion_source="video", driving_video=str(video)), base, LIMITS, tmp_path / "out")
    assert not any((tmp_path / "out").iterdir())


def test_the_model_is_checked_before_the_page_starts(tmp_path, monkeypatch):
    import fgbg.app.server as server

    monkeypatch.setattr(server, "DEMO_MODEL", tmp_path / "assets" / "demo_model.safetensors")
    with pytest.raises(
        AppConfigError, match="no model at .*demo_model.safetensors: the bundled demo model is not there"
    ):
        resolve_model(None)
    (tmp_path / "plain.safetensors").write_bytes(b"not a bundle")
    with pytest.raises(AppConfigError, match="ckpt_path=.*plain.safetensors"):
        resolve_model(str(tmp_path / "plain.safetensors"))
    proc = subprocess.run(
        [sys.executable, "-m", "fgbg.app", f"ckpt_path={tmp_path / 'missing.safetensors'}"],
        cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1
    assert f"fgbg-app: ckpt_path={tmp_path / 'missing.safetensors'}: no such file or folder" in proc.stderr
    assert "Traceback" not in proc.stderr and not list(tmp_path.glob("*.log"))


def test_reference_keypoints_auto_retargets_the_driving_pose_to_a_real_photo(tmp_path):
    """Astronaut photo: head, shoulders and one arm shown, legs out of frame (kept from the driving pose)."""
    pytest.importorskip("mediapipe", reason="reference_keypoints=auto needs mediapipe (make install)")
    skimage_data = pytest.importorskip("skimage.data")
    Image.fromarray(skimage_data.astronaut()).save(tmp_path / "astronaut.png")
    data = {"resolution": 64, "clip_len": 8, "stage": "video"}

    def jobs(*overrides):
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose("generate", overrides=[
                "ckpt_path=unused", f"reference={tmp_path / 'astronaut.png'}", "reference_mask=none",
                f"motion={driving_example('dance_pan').shard}", "camera=static", "num_frames=16", *overrides,
            ])  # fmt: skip
        return prepare_jobs(cfg, data)[0]

    plain = jobs()
    retargeted = jobs("retarget=true", "reference_keypoints=auto")
    ref = retargeted.reference_keypoints
    assert ref.shape == (NUM_KEYPOINTS, 3)
    assert 20 < ref[0, 0] < 36 and 8 < ref[0, 1] < 24, f"nose at {ref[0, :2]}: expected on the face"
    assert ref[1, 2] > 0.5 and ref[10, 2] < 0.3 and ref[13, 2] < 0.3, "neck shown, ankles hidden"
    drive, out = plain.motion.pose, retargeted.motion.pose
    np.testing.assert_allclose(out[0, 1, :2], ref[1, :2], atol=1e-3)  # neck on the reference's neck
    for a, b in ((1, 2), (2, 3)):  # neck-shoulder and shoulder-elbow: the reference's lengths (median over frames)
        length = np.median(np.linalg.norm(out[:, b, :2] - out[:, a, :2], axis=-1))
        assert length == pytest.approx(np.linalg.norm(ref[b, :2] - ref[a, :2]), rel=1e-3)
    for a, b in ((8, 9), (9, 10), (2, 3)):  # every bone keeps its direction (joint angles kept)
        d_in, d_out = drive[:, b, :2] - drive[:, a, :2], out[:, b, :2] - out[:, a, :2]
        cos = (d_in * d_out).sum(-1) / (np.linalg.norm(d_in, axis=-1) * np.linalg.norm(d_out, axis=-1))
        np.testing.assert_allclose(cos, 1.0, atol=1e-4)
    np.testing.assert_array_equal(out[..., 2], drive[..., 2])


def test_reference_keypoints_auto_without_a_person_says_so(tmp_path):
    pytest.importorskip("mediapipe", reason="reference_keypoints=auto needs mediapipe (make install)")
    from fgbg.generate import estimate_reference_keypoints

    Image.new("RGB", (96, 96), (128, 128, 128)).save(tmp_path / "wall.png")
    with pytest.raises(InputError, match="wall.png: mediapipe pose found no person; give reference_keypoints=FILE"):
        estimate_reference_keypoints(str(tmp_path / "wall.png"), 64, 64, "crop")


def test_page_settings_apply_conf_app_yaml(model, tmp_path):
    from fgbg.app.server import page_settings

    def app_cfg(*overrides):
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            return compose("app", overrides=[f"ckpt_path={model}", f"output_root={tmp_path / 'out'}", *overrides])

    settings = page_settings(app_cfg("generate.fps=4", "generate.sampler=euler", "max_frames=10", "default_frames=6"))
    assert (
        settings.base.ckpt_path == str(model.resolve()) and settings.base.fps == 4 and settings.base.sampler == "euler"
    )
    assert settings.limits == Limits(max_frames=10, max_steps=50, max_driving_seconds=30.0)
    assert settings.default_frames == 6 and settings.output_root.is_dir()
    with pytest.raises(AppConfigError, match="max_frames=0"):
        page_settings(app_cfg("max_frames=0"))


def test_reference_keypoints_from_a_shard_take_its_first_frame(tmp_path):
    """reference_keypoints=<shard.tar>: the reference image is that sample's first frame (the bundled examples)."""
    example = driving_example("wave_zoom")
    data = {"resolution": 32, "clip_len": 8, "stage": "video"}
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("generate", overrides=[
            "ckpt_path=unused", f"reference={example.shard.with_suffix('.png')}", "reference_mask=none",
            f"motion={driving_example('dance_pan').shard}", "camera=static", "num_frames=8",
            f"reference_keypoints={example.shard}",
        ])  # fmt: skip
    ref = prepare_jobs(cfg, data)[0].reference_keypoints
    clip = next(iter_clips([str(example.shard)]))
    truth = clip.pose[0].copy()
    scale = 32 / clip.frames.shape[1]
    seen = truth[:, 2] > 0
    assert np.allclose(ref[seen, :2], truth[seen, :2] * scale, atol=1e-3)
