"""Background paths drawn on the reference: strokes -> tracks (fgbg.generation.drawn), without a browser."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fgbg.generation.camera import CameraPreset, camera_affines
from fgbg.generation.drawn import along_stroke, drawn_tracks, parse_strokes


def test_a_straight_stroke_gives_tracks_advancing_evenly_along_it():
    stroke = np.array([[4.0, 10.0], [10.0, 10.0], [24.0, 10.0]])  # 20 px to the right, uneven vertices
    d = drawn_tracks([stroke], num_frames=11, height=32, width=32, num_points=3, points_per_stroke=3)
    assert d.tracks.shape == (11, 3, 2) and list(d.group) == [0, 0, 0] and not d.warnings
    lead = d.tracks[:, 0]
    np.testing.assert_allclose(lead[:, 0], np.linspace(4, 24, 11), atol=1e-5)  # 2 px a frame, by arc length
    np.testing.assert_allclose(lead[:, 1], 10, atol=1e-5)
    step = np.diff(d.tracks, axis=0)
    np.testing.assert_allclose(step, np.broadcast_to([2.0, 0.0], step.shape), atol=1e-5)  # the group moves as one
    np.testing.assert_allclose(np.sort(d.tracks[0, :, 1]), [8.5, 10, 11.5], atol=1e-5)  # beside the start
    assert d.visible.all()


def test_arc_length_timing_on_a_bent_stroke():
    bent = np.array([[0.0, 0.0], [3.0, 0.0], [3.0, 9.0]])  # 3 px then 9 px
    np.testing.assert_allclose(along_stroke(bent, np.array([0.0, 0.25, 0.5, 1.0])),
                               [[0, 0], [3, 0], [3, 3], [3, 9]], atol=1e-9)  # fmt: skip
    held = drawn_tracks([bent], 8, 16, 16, num_points=1, points_per_stroke=1, duration=5).tracks[:, 0]
    np.testing.assert_allclose(held[4:], np.broadcast_to([3, 9], (4, 2)), atol=1e-5)  # the end reached, then held


def test_two_strokes_give_two_track_groups_and_the_preset_fills_the_rest():
    a = np.array([[2.0, 4.0], [12.0, 4.0]])
    b = np.array([[28.0, 28.0], [28.0, 18.0]])
    d = drawn_tracks([a, b], 9, 32, 32, num_points=20, points_per_stroke=2)
    assert list(d.group[:4]) == [0, 0, 1, 1] and (d.group[4:] == -1).all() and d.tracks.shape[1] == 20
    np.testing.assert_allclose(d.tracks[-1, 0], [12, 4], atol=1e-5)
    np.testing.assert_allclose(d.tracks[-1, 2], [28, 18], atol=1e-5)
    grid = d.tracks[:, d.group == -1]
    np.testing.assert_allclose(grid, np.broadcast_to(grid[:1], grid.shape))  # no preset: the rest is static
    assert np.linalg.norm(grid[0][:, None] - d.tracks[0, :4][None], axis=-1).min() > 2  # cleared near the strokes


def test_a_preset_adds_its_motion_to_the_strokes():
    stroke = np.array([[8.0, 16.0], [16.0, 16.0]])
    pan = CameraPreset("pan", direction_deg=90, speed=1.0)  # camera goes down: the background slides up 1 px/frame
    d = drawn_tracks([stroke], 9, 32, 32, preset=pan, num_points=10, points_per_stroke=1)
    np.testing.assert_allclose(d.tracks[:, 0, 0], np.linspace(8, 16, 9), atol=1e-5)
    np.testing.assert_allclose(d.tracks[:, 0, 1], 16 - np.arange(9), atol=1e-5)
    grid = d.tracks[:, d.group == -1]
    np.testing.assert_allclose(grid[-1] - grid[0], np.broadcast_to([0, -8], grid[0].shape), atol=1e-4)


def test_strokes_on_the_person_are_dropped_with_a_warning():
    person = np.zeros((32, 32), bool)
    person[8:24, 12:20] = True
    on = np.array([[15.0, 15.0], [30.0, 15.0]])  # starts on the person
    off = np.array([[2.0, 2.0], [2.0, 12.0]])
    d = drawn_tracks([on, off], 8, 32, 32, num_points=12, points_per_stroke=3, person_region=person)
    assert 0 not in d.group and (d.group == 1).sum() == 3
    assert any("stroke 1 starts on the person" in w for w in d.warnings)
    iy, ix = d.tracks[0, :, 1].astype(int), d.tracks[0, :, 0].astype(int)
    assert not person[iy, ix].any()  # no background track starts on the person


def test_an_empty_drawing_gives_the_preset_only():
    zoom = CameraPreset("zoom", zoom_rate=0.02)
    d = drawn_tracks([], 6, 32, 32, preset=zoom, num_points=16)
    assert d.tracks.shape[1] == 16 and (d.group == -1).all() and not d.warnings
    a = camera_affines(zoom, 6, 32, 32)
    expected = np.einsum("tij,nj->tni", a[:, :, :2], d.tracks[0]) + a[:, None, :, 2]
    np.testing.assert_allclose(d.tracks, expected, atol=1e-4)
    assert parse_strokes("") == ([], None) and parse_strokes('{"width": 5, "height": 4, "strokes": []}') == ([], None)


def test_the_page_drawing_is_parsed_and_bad_input_is_named():
    strokes, size = parse_strokes(json.dumps({"width": 64, "height": 48, "strokes": [[[1, 2], [3, 4]], [[5, 6]]]}))
    assert size == (48, 64) and [s.shape for s in strokes] == [(2, 2), (1, 2)]
    with pytest.raises(ValueError, match="drawn paths: expected JSON"):
        parse_strokes("{not json")
    with pytest.raises(ValueError, match="drawn paths: expected JSON"):
        parse_strokes(json.dumps({"strokes": [[[1, 2]]]}))  # no size
    with pytest.raises(ValueError, match="num_frames=0"):
        drawn_tracks([], 0, 32, 32)


def test_a_page_request_with_drawn_paths_gives_generation_tracks_that_follow_the_strokes(tmp_path):
    from PIL import Image

    from fgbg.app.examples import EXAMPLES_DIR
    from fgbg.app.request import DRAWN_TRACKS, GenerationRequest, Limits, RequestError, check_request, run_request
    from fgbg.app.server import compose_generate_config
    from tests.conftest import save_tiny_bundle

    base = compose_generate_config()
    base.ckpt_path = str(save_tiny_bundle(tmp_path / "model.safetensors", resolution=16, clip_len=4))
    base.gif = False
    reference = EXAMPLES_DIR / "dance_pan.png"
    with Image.open(reference) as img:
        w, h = img.size  # 64 x 64: the model's 16 x 16 is a quarter
    drawing = {"width": w, "height": h, "strokes": [[[4, 4], [20, 4]], [[60, 60], [60, 28]]]}
    req = GenerationRequest(reference=str(reference), num_frames=8, steps=1, background="static",
                            drawn_paths=json.dumps(drawing))  # fmt: skip
    limits = Limits(max_frames=12, max_steps=5)
    result = run_request(req, base, limits, tmp_path / "out")
    settings = result.report["settings"]
    assert settings["camera"] is None and settings["tracks"].endswith(DRAWN_TRACKS)
    saved = np.load(result.output_dir / DRAWN_TRACKS)
    tracks, group = saved["tracks"], saved["group"]
    assert tuple(saved["size"]) == (16, 16) and {0, 1} <= set(group.tolist())
    lead0, lead1 = tracks[:, np.argmax(group == 0)], tracks[:, np.argmax(group == 1)]
    np.testing.assert_allclose(lead0[:8, 0], np.linspace(1, 5, 8), atol=1e-4)  # 4 -> 20 px at a quarter scale
    np.testing.assert_allclose(lead1[:8, 1], np.linspace(15, 7, 8), atol=1e-4)
    np.testing.assert_allclose(lead0[8:], np.broadcast_to(lead0[7], lead0[8:].shape))  # held after the 8 frames
    assert (result.output_dir / DRAWN_TRACKS) in result.downloads
    with pytest.raises(RequestError, match="combine with a camera preset or a static background"):
        check_request(GenerationRequest(reference=str(reference), num_frames=8, steps=1, background="tracks",
                                        drawn_paths=json.dumps(drawing)),
                      limits)  # fmt: skip
    with pytest.raises(RequestError, match="drawn paths: expected JSON"):
        check_request(GenerationRequest(reference=str(reference), num_frames=8, steps=1, drawn_paths="[1, 2"), limits)


def test_the_drawn_paths_benchmark_runs_the_page_path_with_and_without_the_anchor(tmp_path):
    """bench/drawn_paths.py on a tiny bundle that recommends hint_anchor=1 (8 frames, 1 step): both rows are
    written, the first with the recommendation, the second with hint_anchor 0, each with the strokes' figures."""
    from bench.drawn_paths import main
    from tests.conftest import save_tiny_bundle

    bundle = save_tiny_bundle(tmp_path / "m.safetensors", resolution=16, clip_len=4,
                              extra={"generation": {"hint_anchor": 1.0}})  # fmt: skip
    out = tmp_path / "drawn_paths.json"
    main(["--ckpt", str(bundle), "--frames", "8", "--steps", "1", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert rows["recommended"]["hint_anchor"] == 1.0 and rows["hint_anchor_0"]["hint_anchor"] == 0.0
    for row in rows.values():
        assert row["size"] == [16, 16] and row["frames"] == 8 and row["stroke_tracks"] > 0
        assert set(row["strokes"]) == {"track_error_px", "track_lost_fraction", "track_error_clip_px",
                                       "track_lost_fraction_clip"}  # fmt: skip
        assert 0.0 <= row["all"]["track_lost_fraction"] <= 1.0


def test_the_benchmarks_baseline_without_a_model_moves_the_reference_along_the_strokes():
    """bench/drawn_paths.paste_baseline: the dance_pan reference warped along two drawn strokes over a still camera;
    moving each track's neighbourhood (sigma 4 px) is followed better than the affine fitted to all tracks."""
    from bench.drawn_paths import STROKES, paste_baseline

    d = drawn_tracks([np.asarray(s, np.float64) + 0.5 for s in STROKES], 16, 64, 64, num_points=30)
    affine = paste_baseline(d.tracks, d.visible, d.group, 8, 0.0)
    local = paste_baseline(d.tracks, d.visible, d.group, 8, 4.0)
    assert local["sigma_px"] == 4.0 and set(local) == {"sigma_px", "all", "strokes"}
    assert local["strokes"]["track_error_clip_px"] < affine["strokes"]["track_error_clip_px"]


def test_the_sweep_runs_each_anchor_neighbourhood_and_restores_the_constant(tmp_path):
    """bench/drawn_paths.py --sweep's loop on a tiny anchored bundle (one stroke pair, one preset, two sigmas): a
    case per sigma with the strokes' figures, their mean per sigma, and the module constant as it was after."""
    import fgbg.models.module as module
    from bench.drawn_paths import sweep
    from tests.conftest import save_tiny_bundle

    bundle = save_tiny_bundle(tmp_path / "m.safetensors", resolution=16, clip_len=4,
                              extra={"generation": {"hint_anchor": 1.0}})  # fmt: skip
    before = module.ANCHOR_TRACK_SIGMA
    report = sweep(str(bundle), 8, 1, str(tmp_path / "s.json"), sigmas=(2.0, 6.0), sets=["test"], presets=("pan",))
    assert module.ANCHOR_TRACK_SIGMA == before
    assert [(c["strokes"], c["preset"], c["sigma_px"]) for c in report["cases"]] == [("test", "pan", 2.0),
                                                                                       ("test", "pan", 6.0)]  # fmt: skip
    assert set(report["mean"]) == {"2", "6"} and json.loads((tmp_path / "s.json").read_text())["mean"] == report["mean"]
    for case in report["cases"]:
        assert case["stroke_clip_px"] >= 0 and 0.0 <= case["stroke_lost_clip"] <= 1.0
