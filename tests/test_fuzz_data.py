"""Property-based tests of the decoder, the renderers and the geometry, and a timed shard fuzzer.

The fuzzer (marked slow, run by `make test-full`) mutates valid shards byte by byte and in
blocks for a fixed time budget, reads every mutant with the safe reader, and requires that
nothing but the documented skip path happens: no exception escapes, every clip that comes
out validates. The number of inputs tried is written to bench/results/fuzz_shards.json when FGBG_RECORD=1.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fgbg.data.render import render_pose_maps, render_track_maps
from fgbg.data.schema import SampleError, decode_clip, encode_clip
from fgbg.data.shards import ClipShardWriter, SkipCounter, iter_clips

from .conftest import random_clip, record_path

FUZZ_SECONDS = float(os.environ.get("FGBG_FUZZ_SECONDS", "60"))


class Boom:
    def __reduce__(self):
        return (os.system, ("touch /tmp/fgbg_pwned",))


def test_pickle_payload_in_a_shard_is_refused_and_never_runs(tmp_path):
    entries = encode_clip(random_clip())
    buf = io.BytesIO()
    np.save(buf, np.array([Boom()], dtype=object), allow_pickle=True)
    entries["tracks.npy"] = buf.getvalue()
    Path("/tmp/fgbg_pwned").unlink(missing_ok=True)
    with pytest.raises(SampleError, match="tracks.npy"):
        decode_clip(entries)
    entries["pose.npy"] = pickle.dumps(Boom())
    with pytest.raises(SampleError, match="pose.npy"):
        decode_clip(entries)
    assert not Path("/tmp/fgbg_pwned").exists()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    key=st.sampled_from(["frames.png", "mask.png", "pose.npy", "tracks.npy", "visible.npy", "meta.json"]),
    data=st.binary(max_size=256),
)
def test_decoder_rejects_arbitrary_bytes_with_a_sample_error(key, data):
    entries = encode_clip(random_clip(t=2, h=8, w=8, n=3))
    entries[key] = data
    try:
        clip = decode_clip(entries)
    except SampleError as err:
        assert key.split(".")[0] in str(err) or "frames" in str(err)
    else:
        clip.validate()


@settings(max_examples=40, deadline=None)
@given(
    t=st.integers(1, 4),
    h=st.integers(4, 40),
    w=st.integers(4, 40),
    coords=st.lists(st.floats(-1e4, 1e4, allow_nan=False), min_size=18 * 2, max_size=18 * 2),
)
def test_pose_maps_accept_any_finite_coordinates(t, h, w, coords):
    kp = np.ones((t, 18, 3), np.float32)
    kp[..., :2] = np.asarray(coords, np.float32).reshape(18, 2)
    maps = render_pose_maps(kp, h, w)
    assert maps.shape == (t, 3, h, w) and np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(0, 12),
    h=st.integers(4, 32),
    w=st.integers(4, 32),
    seed=st.integers(0, 2**31 - 1),
    far=st.booleans(),
)
def test_track_maps_are_bounded_and_zero_without_points(n, h, w, seed, far):
    rng = np.random.default_rng(seed)
    spread = 1e4 if far else max(h, w)
    tracks = rng.uniform(-spread, spread, (3, n, 2)).astype(np.float32)
    anchor = rng.uniform(-spread, spread, (n, 2)).astype(np.float32)
    vis = rng.random((3, n)) > 0.3
    maps = render_track_maps(tracks, vis, anchor, np.ones(n, bool), h, w)
    assert maps.shape == (3, 3, h, w) and np.isfinite(maps).all()
    assert maps[:, 2].min() >= 0 and maps[:, 2].max() <= 1
    if n == 0:
        assert not maps.any()


def _mutants(data: bytes, rng: np.random.Generator):
    """Endless stream of mutated copies: bit flips, byte runs, truncations, splices, zeroed blocks."""
    while True:
        b = bytearray(data)
        kind = rng.integers(5)
        if kind == 0:
            for i in rng.integers(0, len(b), rng.integers(1, 16)):
                b[i] ^= 1 << int(rng.integers(8))
        elif kind == 1:
            i = int(rng.integers(len(b)))
            b[i : i + 64] = rng.integers(0, 256, 64, dtype=np.uint8).tobytes()
        elif kind == 2:
            b = b[: int(rng.integers(len(b)))]
        elif kind == 3:
            i, j = sorted(rng.integers(0, len(b), 2))
            b = b[:i] + b[j:] + b[i:j]
        else:
            i = int(rng.integers(len(b)))
            b[i : i + 512] = bytes(min(512, len(b) - i))
        yield bytes(b)


@pytest.mark.slow
def test_fuzz_shard_reader_over_mutated_shards(tmp_path):
    with ClipShardWriter(str(tmp_path / "seed-%d.tar"), max_count=4) as w:
        for i in range(4):
            w.write(random_clip(key=f"v_{i:04d}", t=3, h=8, w=8, n=4, seed=i))
    data = Path(w.written[0]).read_bytes()
    rng = np.random.default_rng(0)
    counter = SkipCounter()
    tried = clips_out = 0
    path = tmp_path / "mutant.tar"
    deadline = time.monotonic() + FUZZ_SECONDS
    for mutant in _mutants(data, rng):
        if time.monotonic() > deadline:
            break
        path.write_bytes(mutant)
        for clip in iter_clips([str(path)], counter):  # must never raise
            clip.validate()
            clips_out += 1
        tried += 1
    result = {
        "inputs_tried": tried,
        "seconds": FUZZ_SECONDS,
        "clips_decoded": clips_out,
        "skips": counter.as_dict(),
        "command": "make test-full (tests/test_fuzz_data.py::test_fuzz_shard_reader_over_mutated_shards)",
    }
    out = record_path(Path(__file__).resolve().parents[1] / "bench" / "results" / "fuzz_shards.json", tmp_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    assert tried > 100
