"""One synthetic video: sample a world, render it exactly, and derive its ground truth.

A world is a textured canvas seen through a moving camera (per-frame affine
world -> image), 0-3 textured elements moving in world coordinates in front of
the canvas, and one articulated person drawn in image space in front of
everything. Frames are rendered by inverse mapping (``camera.warp_texture``);
tracks are the same transforms applied forward to points fixed on the canvas
or on an element, so they agree with the pixels up to interpolation error.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from fgbg.data.schema import SCHEMA_VERSION, Clip
from fgbg.synth.background import MovingElement, make_canvas, sample_elements
from fgbg.synth.camera import CameraPath, apply_affine, compose_affine, invert_affine, sample_camera, warp_texture
from fgbg.synth.config import SynthConfig
from fgbg.synth.person import (
    Appearance,
    Body,
    JointAngles,
    draw_person,
    keypoints_from_points,
    pose_points,
    sample_appearance,
    sample_body,
    sample_motion,
)


@dataclass
class World:
    """Everything needed to render a video of ``num_frames`` frames.

    canvas: float32 (Hc, Wc, 3); world_to_canvas: (2, 3); person_points: (T, P, 3) x, y, depth.
    """

    height: int
    width: int
    canvas: np.ndarray
    world_to_canvas: np.ndarray
    camera: CameraPath
    elements: list[MovingElement]
    motion: str
    body: Body
    appearance: Appearance
    angles: JointAngles
    person_points: np.ndarray

    @property
    def num_frames(self) -> int:
        return int(self.camera.world_to_image.shape[0])


@dataclass
class Rendering:
    """Rendered frames uint8 (T, H, W, 3), person masks bool (T, H, W), element alphas float32 (E, T, H, W)."""

    frames: np.ndarray
    masks: np.ndarray
    element_alpha: np.ndarray


def sample_world(
    rng: np.random.Generator,
    cfg: SynthConfig,
    num_frames: int,
    camera_kind: str | None = None,
    motion: str | None = None,
) -> World:
    """Draw a world for ``num_frames`` frames (``camera_kind`` / ``motion`` force a type, else drawn from weights)."""
    h, w = cfg.height, cfg.width
    px = min(h, w) / 64.0
    camera = sample_camera(rng, cfg.camera, num_frames, h, w, kind=camera_kind)
    elements = sample_elements(rng, cfg.background, num_frames, h, w)
    appearance = sample_appearance(rng)
    body = sample_body(rng, rng.uniform(*cfg.person.height) * h)
    motion, angles = sample_motion(rng, cfg.person, body, num_frames, cfg.num_frames, h, w, motion=motion)
    # the canvas covers everything any frame sees (plus a margin), and at least canvas_scale frames
    corners = np.array([[0, 0], [w, 0], [0, h], [w, h]], np.float64)
    seen = apply_affine(invert_affine(camera.world_to_image), corners[None]).reshape(-1, 2)
    centre = np.array([w, h]) / 2.0
    lo = np.minimum(seen.min(0) - 4, centre - cfg.background.canvas_scale * np.array([w, h]) / 2)
    hi = np.maximum(seen.max(0) + 4, centre + cfg.background.canvas_scale * np.array([w, h]) / 2)
    lo = np.floor(lo)
    size = np.ceil(hi - lo).astype(int)
    canvas = make_canvas(rng, int(size[1]), int(size[0]), px)
    world_to_canvas = np.array([[1.0, 0.0, -lo[0]], [0.0, 1.0, -lo[1]]])
    return World(
        height=h,
        width=w,
        canvas=canvas,
        world_to_canvas=world_to_canvas,
        camera=camera,
        elements=elements,
        motion=motion,
        body=body,
        appearance=appearance,
        angles=angles,
        person_points=pose_points(body, angles),
    )


def element_to_image(world: World, element: MovingElement) -> np.ndarray:
    """(T, 2, 3) sprite texel -> image affines of one element."""
    return compose_affine(world.camera.world_to_image, element.sprite_to_world)


def render_world(world: World, draw_people: bool = True) -> Rendering:
    """Render every frame: canvas, then elements (premultiplied alpha), then the person."""
    h, w, t_len = world.height, world.width, world.num_frames
    image_to_canvas = compose_affine(world.world_to_canvas, invert_affine(world.camera.world_to_image))
    frames = np.zeros((t_len, h, w, 3), np.uint8)
    masks = np.zeros((t_len, h, w), bool)
    alphas = np.zeros((len(world.elements), t_len, h, w), np.float32)
    sprites = [np.dstack([e.rgb * e.alpha[..., None], e.alpha]) for e in world.elements]
    image_to_sprite = [invert_affine(element_to_image(world, e)) for e in world.elements]
    for t in range(t_len):
        frame = warp_texture(world.canvas, image_to_canvas[t], h, w, "reflect")
        for e, sprite in enumerate(sprites):
            rgba = warp_texture(sprite, image_to_sprite[e][t], h, w, "zero")
            alpha = np.clip(rgba[..., 3:], 0.0, 1.0)
            frame = frame * (1.0 - alpha) + rgba[..., :3]
            alphas[e, t] = alpha[..., 0]
        if draw_people:
            draw_person(
                frame, masks[t], world.person_points[t], float(world.angles.theta[t]), world.body, world.appearance
            )
        frames[t] = np.clip(np.rint(frame), 0, 255).astype(np.uint8)
    return Rendering(frames, masks, alphas)


def keypoints(world: World) -> np.ndarray:
    """(T, 18, 3) float32 OpenPose-18 keypoints of the person (x, y pixels, confidence)."""
    return keypoints_from_points(world.person_points, world.body, world.angles.theta, world.height, world.width)


def _dilate(masks: np.ndarray, margin: int) -> np.ndarray:
    """Dilate (T, H, W) bool masks by a (2 margin + 1)^2 square."""
    if margin == 0 or not masks.size:
        return masks
    kernel = np.ones((2 * margin + 1, 2 * margin + 1), np.uint8)
    return np.stack([cv2.dilate(m.astype(np.uint8), kernel) > 0 for m in masks])


def _erode(masks: np.ndarray, margin: int) -> np.ndarray:
    return ~_dilate(~masks, margin)


def sample_tracks(
    rng: np.random.Generator, world: World, rendering: Rendering, frames: slice, cfg: SynthConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth background tracks of the frames in ``frames``: (T, N, 2) float32 and visible (T, N) bool.

    ``cfg.candidates_per_track * cfg.num_tracks`` candidate points are fixed on
    the canvas (drawn under a random pixel of a random frame of the clip) or on
    an element's sprite (``cfg.element_track_fraction`` of them, away from the
    sprite's edge) and projected through the exact transforms. A point is
    visible at frame t iff it lies in the frame, no pixel within
    ``cfg.occlusion_margin`` of the pixel under it is person or an element in
    front of it, and (for element points) its element fully covers that
    neighbourhood. The ``num_tracks`` candidates visible in the most frames are kept
    (with a random bonus of up to a quarter of the clip, so partly occluded points stay too).
    """
    h, w, margin = world.height, world.width, cfg.occlusion_margin
    cam = world.camera.world_to_image[frames]
    t_len = cam.shape[0]
    n_cand = cfg.num_tracks * cfg.candidates_per_track
    n_elem = int(round(cfg.element_track_fraction * n_cand)) if world.elements else 0
    person = _dilate(rendering.masks[frames], margin)
    covers = [_dilate(a[frames] > 1e-3, margin) for a in rendering.element_alpha]
    full = [_erode(a[frames] >= 0.999, margin) for a in rendering.element_alpha]
    in_front = [np.zeros_like(person)]  # in_front[k]: covered by an element above layer k - 1
    for cover in reversed(covers):
        in_front.insert(0, in_front[0] | cover)

    positions, visible = [], []

    def project_and_test(points_img: np.ndarray, layer: int) -> None:
        """points_img: (T, M, 2); layer: 0 canvas, e + 1 element e."""
        x, y = points_img[..., 0], points_img[..., 1]
        inside = (x >= 0) & (x < w) & (y >= 0) & (y < h)
        ti = np.arange(t_len)[:, None]
        yi, xi = np.clip(np.floor(y).astype(int), 0, h - 1), np.clip(np.floor(x).astype(int), 0, w - 1)
        vis = inside & ~person[ti, yi, xi] & ~in_front[layer][ti, yi, xi]
        if layer > 0:
            vis &= full[layer - 1][ti, yi, xi]
        positions.append(points_img)
        visible.append(vis)

    # canvas points: under random pixels of random frames of the clip
    n_canvas = n_cand - n_elem
    t_pick = rng.integers(0, t_len, n_canvas)
    pix = rng.uniform(0, 1, (n_canvas, 2)) * [w, h]
    world_pts = apply_affine(invert_affine(cam[t_pick]), pix[:, None])[:, 0]  # (M, 2)
    project_and_test(apply_affine(cam, world_pts[None]), 0)
    # element points: texels well inside the sprite, spread over the elements
    owner = rng.integers(0, max(len(world.elements), 1), n_elem)
    for e, element in enumerate(world.elements):
        count = int(np.sum(owner == e))
        interior = np.argwhere(_erode(element.alpha[None] > 0.5, 2)[0])  # (M, 2) rows, cols
        if count == 0 or not len(interior):
            continue
        texels = interior[rng.integers(0, len(interior), count)][:, ::-1] + rng.uniform(0, 1, (count, 2))
        project_and_test(apply_affine(element_to_image(world, element)[frames], texels[None]), e + 1)
    tracks = np.concatenate(positions, 1) if positions else np.zeros((t_len, 0, 2))
    vis = np.concatenate(visible, 1) if visible else np.zeros((t_len, 0), bool)
    # prefer points visible in many frames, with a random bonus of up to a quarter of the clip so that
    # points that get occluded or leave the frame for a while are kept too
    score = vis.sum(0) + rng.uniform(0, 0.25 * t_len, vis.shape[1])
    keep = np.sort(np.argsort(-score, kind="stable")[: cfg.num_tracks])
    return tracks[:, keep].astype(np.float32), vis[:, keep]


def video_key(seed: int, index: int, clip: int) -> str:
    """Sample key ``synth-s{seed}-v{index:06d}_{clip:04d}`` (clips of one video share the prefix)."""
    return f"synth-s{seed}-v{index:06d}_{clip:04d}"


def synthesize_video(cfg: SynthConfig, index: int) -> list[Clip]:
    """Render video ``index`` of ``cfg.seed`` as ``cfg.clips_per_video`` consecutive clips.

    The RNG is ``np.random.default_rng([seed, index])``, so a video does not
    depend on how many others are rendered, nor on the worker that renders it.
    """
    rng = np.random.default_rng([cfg.seed, index])
    total = cfg.num_frames * cfg.clips_per_video
    world = sample_world(rng, cfg, total)
    rendering = render_world(world)
    pose = keypoints(world)
    clips = []
    for c in range(cfg.clips_per_video):
        frames = slice(c * cfg.num_frames, (c + 1) * cfg.num_frames)
        tracks, visible = sample_tracks(rng, world, rendering, frames, cfg)
        meta = {
            "fps": cfg.fps,
            "height": cfg.height,
            "width": cfg.width,
            "num_frames": cfg.num_frames,
            "schema_version": SCHEMA_VERSION,
            "source": "synthetic",
            "pose_estimator": "ground_truth",
            "tracker": "ground_truth",
            "camera": world.camera.kind,
            "person_motion": world.motion,
            "elements": [e.motion for e in world.elements],
            "seed": cfg.seed,
            "video_index": index,
            "clip_index": c,
            "first_frame": c * cfg.num_frames,
        }
        clips.append(
            Clip(
                frames=rendering.frames[frames],
                masks=rendering.masks[frames],
                pose=pose[frames],
                tracks=tracks,
                visible=visible,
                meta=meta,
                key=video_key(cfg.seed, index, c),
            )
        )
    return clips
