"""Articulated synthetic people: appearance, motions, OpenPose-18 keypoints and exact rasterisation.

The body lives in a 2.5-D model: a body vector ``(lat, down, fwd)`` (pixels;
``lat`` towards the person's left, ``fwd`` where the person faces) relative to
the pelvis maps to the image and to a depth (positive = away from the camera)
through the facing angle ``theta`` (0 = facing the camera, pi = back view)::

    x = root_x + lat cos(theta) - fwd sin(theta)
    y = root_y + down
    depth = -lat sin(theta) - fwd cos(theta)

So a turn scales shoulder and hip width by ``cos(theta)`` and swaps the near
and far sides when ``cos(theta)`` changes sign. Body parts are capsules, one
convex torso polygon and a head ellipse, rasterised exactly at pixel centres
(a pixel belongs to a part iff its centre lies inside it); the person mask is
the union of the parts, painted far to near.

Keypoints follow ``fgbg.data.schema``: (x, y) pixels with a corner origin.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from fgbg.data.schema import OPENPOSE18_NAMES
from fgbg.synth.background import random_color
from fgbg.synth.camera import check_range, check_weights, choose

PERSON_MOTIONS = ("walk", "wave", "dance", "turn")
SHIRT_PATTERNS = ("solid", "hstripes", "vstripes", "checks", "dots", "diagonal")
_K = {name: i for i, name in enumerate(OPENPOSE18_NAMES)}
# points drawn besides the 18 keypoints
_EXTRA = ("pelvis", "head", "r_toe", "l_toe", "r_hand", "l_hand")
_P = {**_K, **{name: len(OPENPOSE18_NAMES) + i for i, name in enumerate(_EXTRA)}}

SKIN_TONES = np.array(
    [[255, 224, 196], [241, 194, 125], [224, 172, 105], [198, 134, 66], [141, 85, 36], [92, 58, 34]], np.float32
)
HAIR_COLOURS = np.array(
    [[25, 20, 18], [70, 45, 25], [120, 80, 40], [215, 185, 120], [160, 60, 30], [170, 170, 170]], np.float32
)
TROUSER_COLOURS = np.array(
    [[45, 65, 115], [30, 30, 35], [190, 170, 120], [110, 110, 115], [80, 60, 40], [230, 230, 225]], np.float32
)


@dataclass
class PersonConfig:
    """Person motions and size (pixel magnitudes at a 64-pixel frame)."""

    motion_weights: dict[str, float] = field(default_factory=lambda: {m: 1.0 for m in PERSON_MOTIONS})
    height: list[float] = field(default_factory=lambda: [0.55, 0.85])  # fraction of the frame height
    drift_speed: list[float] = field(default_factory=lambda: [0.0, 0.4])  # px/frame, slow drift across the frame
    turn_deg: list[float] = field(default_factory=lambda: [150.0, 300.0])  # rotation over one clip for `turn`

    def __post_init__(self) -> None:
        check_weights("person.motion_weights", self.motion_weights, PERSON_MOTIONS)
        check_range("person.height", self.height, low=0.05)
        check_range("person.drift_speed", self.drift_speed, low=0.0)
        check_range("person.turn_deg", self.turn_deg, low=0.0)


@dataclass
class Appearance:
    """What a person looks like; constant within a video. Colours RGB float in [0, 255]."""

    skin: np.ndarray
    hair: np.ndarray
    shirt: np.ndarray
    shirt_alt: np.ndarray
    pattern: str
    pattern_period: float  # fraction of the person height
    trousers: np.ndarray
    shoes: np.ndarray
    long_sleeves: bool
    shorts: bool


@dataclass
class Body:
    """Body proportions in pixels."""

    height: float
    head_r: float
    neck: float
    torso: float
    upper_arm: float
    forearm: float
    thigh: float
    shin: float
    foot: float
    shoulder_half: float
    hip_half: float
    chest_depth: float
    arm_r: float
    forearm_r: float
    hand_r: float
    thigh_r: float
    shin_r: float
    foot_r: float
    neck_r: float


def sample_appearance(rng: np.random.Generator) -> Appearance:
    skin = SKIN_TONES[rng.integers(len(SKIN_TONES))] * rng.uniform(0.9, 1.08, 3)
    hair = HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))] if rng.random() < 0.85 else random_color(rng)
    shirt = random_color(rng, sat=(0.35, 1.0), val=(0.35, 1.0))
    pattern = SHIRT_PATTERNS[int(rng.integers(len(SHIRT_PATTERNS)))]
    # the pattern's second colour: white, black or another random colour
    shirt_alt = [np.array([245, 245, 240], np.float32), np.array([20, 20, 25], np.float32), random_color(rng)][
        int(rng.integers(3))
    ]
    trousers = TROUSER_COLOURS[rng.integers(len(TROUSER_COLOURS))] if rng.random() < 0.7 else random_color(rng)
    return Appearance(
        skin=np.clip(skin, 0, 255),
        hair=hair.astype(np.float32),
        shirt=shirt,
        shirt_alt=shirt_alt,
        pattern=pattern,
        pattern_period=float(rng.uniform(0.05, 0.11)),
        trousers=trousers.astype(np.float32),
        shoes=random_color(rng, sat=(0.0, 0.6), val=(0.05, 0.5)),
        long_sleeves=bool(rng.random() < 0.5),
        shorts=bool(rng.random() < 0.25),
    )


def sample_body(rng: np.random.Generator, height_px: float) -> Body:
    """Proportions around a cartoon-ish human (big head so it reads at 64 px), varied per person."""
    h = height_px
    build = rng.uniform(0.8, 1.3)  # overall width
    legs = rng.uniform(0.92, 1.08)
    j = lambda: rng.uniform(0.9, 1.1)  # noqa: E731
    head_r = 0.075 * h * rng.uniform(0.9, 1.12)
    thigh, shin = 0.235 * h * legs, 0.225 * h * legs
    foot = 0.04 * h
    torso = h - 2 * head_r - 0.035 * h - thigh - shin - foot
    return Body(
        height=h,
        head_r=head_r,
        neck=0.035 * h,
        torso=torso,
        upper_arm=0.17 * h * j(),
        forearm=0.16 * h * j(),
        thigh=thigh,
        shin=shin,
        foot=foot,
        shoulder_half=0.105 * h * build * j(),
        hip_half=0.06 * h * build * j(),
        chest_depth=0.1 * h * build,
        arm_r=0.034 * h * build,
        forearm_r=0.028 * h * build,
        hand_r=0.03 * h,
        thigh_r=0.048 * h * build * j(),
        shin_r=0.038 * h * build,
        foot_r=0.026 * h,
        neck_r=0.03 * h * build,
    )


@dataclass
class JointAngles:
    """Per-frame joint angles in radians ((T,) or (T, 2) for right, left) and the pelvis; see ``limb_direction``."""

    theta: np.ndarray  # facing
    lean_lat: np.ndarray
    lean_fwd: np.ndarray
    arm_abd: np.ndarray  # (T, 2) right, left: abduction of the upper arm
    arm_flex: np.ndarray  # (T, 2) forward flexion of the upper arm
    elbow_abd: np.ndarray  # (T, 2) extra abduction of the forearm
    elbow_flex: np.ndarray  # (T, 2) extra forward flexion of the forearm
    leg_abd: np.ndarray  # (T, 2)
    leg_flex: np.ndarray  # (T, 2)
    knee: np.ndarray  # (T, 2) knee bend (shin flexes backwards)
    root: np.ndarray  # (T, 2) pelvis in pixels


def limb_direction(side: float, abd: np.ndarray, flex: np.ndarray) -> np.ndarray:
    """Unit body vectors (T, 3) = (lat, down, fwd) of a limb hanging down, abducted then flexed.

    side: -1 for the right limb, +1 for the left one.
    """
    return np.stack([side * np.sin(abd), np.cos(abd) * np.cos(flex), np.cos(abd) * np.sin(flex)], -1)


def sample_motion(
    rng: np.random.Generator,
    cfg: PersonConfig,
    body: Body,
    num_frames: int,
    clip_len: int,
    height: int,
    width: int,
    motion: str | None = None,
) -> tuple[str, JointAngles]:
    """Draw a motion (from ``cfg.motion_weights`` unless given) and its joint angles for ``num_frames`` frames.

    ``clip_len`` sets the speed of one-off movements (a ``turn`` of ``cfg.turn_deg`` takes one clip).
    """
    motion = motion or choose(rng, cfg.motion_weights, PERSON_MOTIONS)
    if motion not in PERSON_MOTIONS:
        raise ValueError(f"person motion must be one of {PERSON_MOTIONS}, got {motion!r}")
    t = np.arange(num_frames, dtype=np.float64)
    zeros, z2 = np.zeros(num_frames), np.zeros((num_frames, 2))
    px = min(height, width) / 64.0
    a = JointAngles(
        theta=np.full(num_frames, rng.uniform(-0.5, 0.5)),
        lean_lat=zeros.copy(),
        lean_fwd=zeros.copy(),
        arm_abd=np.full((num_frames, 2), np.deg2rad(rng.uniform(6, 18))),
        arm_flex=z2.copy(),
        elbow_abd=z2.copy(),
        elbow_flex=np.full((num_frames, 2), np.deg2rad(rng.uniform(5, 20))),
        leg_abd=np.full((num_frames, 2), np.deg2rad(rng.uniform(2, 8))),
        leg_flex=z2.copy(),
        knee=z2.copy(),
        root=np.zeros((num_frames, 2)),
    )
    drift_dir = rng.choice([-1.0, 1.0])
    drift = rng.uniform(*cfg.drift_speed) * px * drift_dir
    if motion == "walk":
        a.theta[:] = rng.choice([-np.pi / 2, np.pi / 2, 0.0, np.pi], p=[0.35, 0.35, 0.15, 0.15]) + rng.uniform(
            -0.3, 0.3
        )
        phase = 2 * np.pi * rng.uniform(0.07, 0.14) * t + rng.uniform(0, 2 * np.pi)
        swing = np.deg2rad(rng.uniform(20, 35))
        a.leg_flex = swing * np.stack([np.sin(phase), -np.sin(phase)], -1)
        a.knee = np.deg2rad(rng.uniform(20, 45)) * np.maximum(0, np.stack([np.cos(phase), -np.cos(phase)], -1))
        a.arm_flex = -0.9 * a.leg_flex
        a.elbow_flex += np.deg2rad(10) * (1 + np.stack([np.sin(phase), -np.sin(phase)], -1))
        a.arm_abd[:] = np.deg2rad(rng.uniform(3, 8))
        a.lean_fwd[:] = np.deg2rad(rng.uniform(0, 8))
        drift = -np.sin(a.theta[0]) * rng.uniform(0.2, 0.7) * px  # walks where it faces
    elif motion == "wave":
        phase = 2 * np.pi * rng.uniform(0.12, 0.25) * t + rng.uniform(0, 2 * np.pi)
        arms = [int(rng.integers(2))] if rng.random() < 0.65 else [0, 1]
        for arm in arms:
            a.arm_abd[:, arm] = np.deg2rad(rng.uniform(95, 150)) + np.deg2rad(8) * np.sin(phase)
            # the forearm points up (about 170 deg from hanging) and swings sideways
            forearm = np.deg2rad(rng.uniform(160, 180)) + np.deg2rad(rng.uniform(25, 45)) * np.sin(phase)
            a.elbow_abd[:, arm] = forearm - a.arm_abd[:, arm]
            a.elbow_flex[:, arm] = 0.0
        a.lean_lat = np.deg2rad(4) * np.sin(phase / 2)
    elif motion == "dance":
        f = rng.uniform(0.06, 0.14)
        phase = 2 * np.pi * f * t + rng.uniform(0, 2 * np.pi)
        for arm, p in enumerate(rng.uniform(0, 2 * np.pi, 2)):
            centre, amp = np.deg2rad(rng.uniform(40, 100)), np.deg2rad(rng.uniform(30, 60))
            a.arm_abd[:, arm] = centre + amp * np.sin(phase + p)
            a.elbow_abd[:, arm] = np.deg2rad(rng.uniform(20, 70)) * np.sin(2 * phase + p)
            a.arm_flex[:, arm] = np.deg2rad(rng.uniform(0, 40)) * np.cos(phase + p)
        a.leg_abd = np.deg2rad(rng.uniform(5, 15)) + np.deg2rad(rng.uniform(0, 12)) * np.stack(
            [np.sin(phase), -np.sin(phase)], -1
        )
        bend = np.deg2rad(rng.uniform(15, 40)) * (0.5 - 0.5 * np.cos(2 * phase))
        a.leg_flex = np.stack([bend, bend], -1) * 0.5
        a.knee = np.stack([bend, bend], -1)
        a.lean_lat = np.deg2rad(rng.uniform(5, 15)) * np.sin(phase)
        a.theta = a.theta + rng.uniform(0, 0.5) * np.sin(phase / 2)
        sway = rng.uniform(0.02, 0.06) * body.height * np.sin(phase)
        a.root[:, 0] += sway
    else:  # turn: rotates about the vertical axis; one clip turns by cfg.turn_deg
        omega = np.deg2rad(rng.uniform(*cfg.turn_deg)) / max(clip_len - 1, 1) * rng.choice([-1.0, 1.0])
        a.theta = a.theta[0] * 0.5 + omega * t
        phase = 2 * np.pi * rng.uniform(0.05, 0.12) * t
        a.arm_abd += np.deg2rad(rng.uniform(5, 20)) * (0.5 - 0.5 * np.cos(phase))[:, None]
    # root: standing on a ground line, drifting slowly; the path is centred on the video's middle
    ground = rng.uniform(0.86, 0.99) * height
    a.root[:, 0] += rng.uniform(0.3, 0.7) * width + drift * (t - (num_frames - 1) / 2)
    a.root[:, 1] = ground - 0.5 * body.foot - body.foot_r - _leg_reach(body, a).max(1)
    return motion, a


def _leg_reach(body: Body, a: JointAngles) -> np.ndarray:
    """Vertical reach hip -> ankle (T, 2) of both legs; the longer one stands on the ground."""
    down = np.cos(a.leg_abd)
    return down * (body.thigh * np.cos(a.leg_flex) + body.shin * np.cos(a.leg_flex - a.knee))


def pose_points(body: Body, a: JointAngles) -> np.ndarray:
    """Image points (T, 18 + extras, 3) = (x, y, depth) of the 18 keypoints and the extra drawing points."""
    n = len(a.theta)
    pts = np.zeros((n, len(_P), 3))  # body vectors (lat, down, fwd) relative to the pelvis

    def put(name, vec):
        pts[:, _P[name]] = vec

    put("pelvis", np.zeros((n, 3)))
    neck = body.torso * np.stack([np.sin(a.lean_lat), -np.cos(a.lean_lat) * np.cos(a.lean_fwd), np.sin(a.lean_fwd)], -1)
    put("neck", neck)
    up = neck / np.linalg.norm(neck, axis=-1, keepdims=True)
    head = neck + up * (body.neck + body.head_r)
    put("head", head)
    for side, s in (("r", -1.0), ("l", 1.0)):
        i = 0 if side == "r" else 1
        shoulder = neck + np.array([s * body.shoulder_half, 0.012 * body.height, 0.0])
        elbow = shoulder + body.upper_arm * limb_direction(s, a.arm_abd[:, i], a.arm_flex[:, i])
        fore = limb_direction(s, a.arm_abd[:, i] + a.elbow_abd[:, i], a.arm_flex[:, i] + a.elbow_flex[:, i])
        wrist = elbow + body.forearm * fore
        hip = np.array([s * body.hip_half, 0.0, 0.0]) * np.ones((n, 1))
        knee = hip + body.thigh * limb_direction(s, a.leg_abd[:, i], a.leg_flex[:, i])
        ankle = knee + body.shin * limb_direction(s, a.leg_abd[:, i], a.leg_flex[:, i] - a.knee[:, i])
        put(f"{side}_shoulder", shoulder)
        put(f"{side}_elbow", elbow)
        put(f"{side}_wrist", wrist)
        put(f"{side}_hand", wrist + fore * body.hand_r * 0.8)
        put(f"{side}_hip", hip)
        put(f"{side}_knee", knee)
        put(f"{side}_ankle", ankle)
        put(f"{side}_toe", ankle + np.array([0.0, body.foot * 0.5, body.foot * 1.6]))
        # face points on the head sphere: eyes 35 deg off the facing direction, ears on the sides
        eye_dir = np.array([s * np.sin(0.6), -0.2, np.cos(0.6)])
        put(f"{side}_eye", head + body.head_r * 0.85 * eye_dir)
        put(f"{side}_ear", head + body.head_r * np.array([s * 0.98, 0.05, -0.15]))
    put("nose", head + body.head_r * np.array([0.0, 0.2, 0.95]))
    lat, down, fwd = pts[..., 0], pts[..., 1], pts[..., 2]
    c, s_ = np.cos(a.theta)[:, None], np.sin(a.theta)[:, None]
    x = a.root[:, :1] + lat * c - fwd * s_
    y = a.root[:, 1:2] + down
    depth = -lat * s_ - fwd * c
    return np.stack([x, y, depth], -1)


def keypoints_from_points(points: np.ndarray, body: Body, theta: np.ndarray, height: int, width: int) -> np.ndarray:
    """(T, 18, 3) float32 keypoints x, y, confidence.

    Confidence is 0 for points outside the frame and for face points turned
    away from the camera (eyes and nose whose surface normal points away,
    ears on the far side), 1 otherwise.
    """
    kp = points[:, : len(OPENPOSE18_NAMES)]
    x, y = kp[..., 0], kp[..., 1]
    conf = ((x >= 0) & (x < width) & (y >= 0) & (y < height)).astype(np.float32)
    head_depth = points[:, _P["head"], 2]
    facing = np.cos(theta)
    for name in ("r_eye", "l_eye", "r_ear", "l_ear", "nose"):
        normal_depth = (points[:, _P[name], 2] - head_depth) / body.head_r  # < 0: facing the camera
        limit = {"nose": 0.3, "r_ear": 0.25, "l_ear": 0.25}.get(name, 0.0)
        hidden = normal_depth > limit
        if name == "nose":
            hidden |= facing < -0.3
        conf[:, _K[name]] *= ~hidden
    return np.concatenate([kp[..., :2], conf[..., None]], -1).astype(np.float32)


# ---------------------------------------------------------------- rasterisation (pixel-centre tests)


def _window(lo: np.ndarray, hi: np.ndarray, height: int, width: int):
    """Pixel window covering the box [lo, hi] (x, y): slices, pixel-centre x (1, w) and y (h, 1); or None."""
    x0, y0 = max(0, int(np.floor(lo[0]))), max(0, int(np.floor(lo[1])))
    x1, y1 = min(width, int(np.ceil(hi[0])) + 1), min(height, int(np.ceil(hi[1])) + 1)
    if x0 >= x1 or y0 >= y1:
        return None
    xs, ys = np.arange(x0, x1)[None, :] + 0.5, np.arange(y0, y1)[:, None] + 0.5  # broadcast to the window
    return (slice(y0, y1), slice(x0, x1)), xs, ys


def capsule_mask(p0: np.ndarray, p1: np.ndarray, radius: float, height: int, width: int) -> np.ndarray:
    """bool (H, W): pixel centres within ``radius`` of the segment p0-p1 (x, y)."""
    mask = np.zeros((height, width), bool)
    win = _window(np.minimum(p0, p1) - radius, np.maximum(p0, p1) + radius, height, width)
    if win is None:
        return mask
    sl, xs, ys = win
    d = p1 - p0
    length2 = float(d @ d)
    u = 0.0 if length2 < 1e-12 else np.clip(((xs - p0[0]) * d[0] + (ys - p0[1]) * d[1]) / length2, 0, 1)
    mask[sl] = (xs - p0[0] - u * d[0]) ** 2 + (ys - p0[1] - u * d[1]) ** 2 <= radius * radius
    return mask


def convex_polygon_mask(points: np.ndarray, height: int, width: int) -> np.ndarray:
    """bool (H, W): pixel centres inside the convex hull of ``points`` (M, 2)."""
    mask = np.zeros((height, width), bool)
    hull = cv2.convexHull(points.astype(np.float32)).reshape(-1, 2).astype(np.float64)
    win = _window(hull.min(0), hull.max(0), height, width)
    if win is None or len(hull) < 3:
        return mask
    sl, xs, ys = win
    inside = np.ones((ys.shape[0], xs.shape[1]), bool)
    area2 = np.sum(hull[:, 0] * np.roll(hull[:, 1], -1) - np.roll(hull[:, 0], -1) * hull[:, 1])
    sign = np.sign(area2) or 1.0
    for p, q in zip(hull, np.roll(hull, -1, 0)):
        inside &= sign * ((q[0] - p[0]) * (ys - p[1]) - (q[1] - p[1]) * (xs - p[0])) >= 0
    mask[sl] = inside
    return mask


def ellipse_mask(centre: np.ndarray, rx: float, ry: float, height: int, width: int) -> np.ndarray:
    """bool (H, W): pixel centres inside the axis-aligned ellipse."""
    mask = np.zeros((height, width), bool)
    win = _window(centre - [rx, ry], centre + [rx, ry], height, width)
    if win is not None:
        sl, xs, ys = win
        mask[sl] = ((xs - centre[0]) / rx) ** 2 + ((ys - centre[1]) / ry) ** 2 <= 1.0
    return mask


def _shirt_colours(app: Appearance, body: Body, neck: np.ndarray, pelvis: np.ndarray, ys, xs) -> np.ndarray:
    """Shirt colours (M, 3) at pixels (ys, xs), the pattern attached to the torso axis."""
    axis = pelvis - neck
    axis = axis / max(np.linalg.norm(axis), 1e-6)
    u = ((xs + 0.5 - neck[0]) * axis[0] + (ys + 0.5 - neck[1]) * axis[1]) / (app.pattern_period * body.height)
    v = ((xs + 0.5 - neck[0]) * -axis[1] + (ys + 0.5 - neck[1]) * axis[0]) / (app.pattern_period * body.height)
    if app.pattern == "hstripes":
        alt = np.floor(u) % 2 == 1
    elif app.pattern == "vstripes":
        alt = np.floor(v) % 2 == 1
    elif app.pattern == "checks":
        alt = (np.floor(u) + np.floor(v)) % 2 == 1
    elif app.pattern == "dots":
        alt = (u - np.round(u)) ** 2 + (v - np.round(v)) ** 2 < 0.09
    elif app.pattern == "diagonal":
        alt = np.floor(u + v) % 2 == 1
    else:
        alt = np.zeros(u.shape, bool)
    return np.where(alt[:, None], app.shirt_alt, app.shirt)


def draw_person(
    frame: np.ndarray, mask: np.ndarray, points: np.ndarray, theta: float, body: Body, app: Appearance
) -> None:
    """Paint one person into ``frame`` (H, W, 3) float32 and OR its pixels into ``mask`` (H, W) bool, in place.

    points: (P, 3) x, y, depth of one frame (from ``pose_points``). Parts are
    painted far to near; the head last.
    """
    h, w = mask.shape
    p = lambda name: points[_P[name], :2]  # noqa: E731
    depth = lambda *names: float(np.mean([points[_P[n], 2] for n in names]))  # noqa: E731
    facing = np.cos(theta)
    parts = []  # (sort key, name, mask-function, colour role)
    arm_bias = -0.03 * body.height * facing  # arms hang slightly in front of the body
    for s in ("r", "l"):
        sleeve = "shirt" if app.long_sleeves else "skin"
        legwear = "skin" if app.shorts else "trousers"
        parts += [
            (depth(f"{s}_hip", f"{s}_knee") + 0.02 * body.height, lambda s=s: capsule_mask(p(f"{s}_hip"), p(f"{s}_knee"), body.thigh_r, h, w), "trousers"),
            (depth(f"{s}_knee", f"{s}_ankle") + 0.02 * body.height, lambda s=s: capsule_mask(p(f"{s}_knee"), p(f"{s}_ankle"), body.shin_r, h, w), legwear),
            (depth(f"{s}_ankle", f"{s}_toe") + 0.019 * body.height, lambda s=s: capsule_mask(p(f"{s}_ankle"), p(f"{s}_toe"), body.foot_r, h, w), "shoes"),
            (depth(f"{s}_shoulder", f"{s}_elbow") + arm_bias, lambda s=s: capsule_mask(p(f"{s}_shoulder"), p(f"{s}_elbow"), body.arm_r, h, w), "shirt"),
            (depth(f"{s}_elbow", f"{s}_wrist") + arm_bias - 1e-3, lambda s=s: capsule_mask(p(f"{s}_elbow"), p(f"{s}_wrist"), body.forearm_r, h, w), sleeve),
            (depth(f"{s}_wrist") + arm_bias - 2e-3, lambda s=s: capsule_mask(p(f"{s}_hand"), p(f"{s}_hand"), body.hand_r, h, w), "skin"),
        ]  # fmt: skip
    # torso: convex hull of a box between shoulder and hip level, so its width follows the turn
    corners = []
    for level, half in (("neck", body.shoulder_half + 0.5 * body.arm_r), ("pelvis", body.hip_half + body.thigh_r)):
        for lat in (-half, half):
            for fwd in (-body.chest_depth / 2, body.chest_depth / 2):
                c = points[_P[level], :2] + [lat * np.cos(theta) - fwd * np.sin(theta), 0.0]
                corners.append(c + ([0, 0.02 * body.height] if level == "neck" else [0, 0]))
    corners = np.array(corners)
    parts.append((0.0, lambda: convex_polygon_mask(corners, h, w), "shirt"))
    parts.sort(key=lambda item: -item[0])  # far (large depth) first
    parts.append((0.0, lambda: capsule_mask(p("neck"), (p("neck") + p("head")) / 2, body.neck_r, h, w), "skin"))
    colours = {"skin": app.skin, "trousers": app.trousers, "shoes": app.shoes}
    for _, make_mask, role in parts:
        m = make_mask()
        if not m.any():
            continue
        ys, xs = np.nonzero(m)
        frame[ys, xs] = _shirt_colours(app, body, p("neck"), p("pelvis"), ys, xs) if role == "shirt" else colours[role]
        mask |= m
    _draw_head(frame, mask, points, theta, body, app)


def _draw_head(frame, mask, points, theta, body: Body, app: Appearance) -> None:
    """Head ellipse: face where the sphere's surface faces forward and below the hairline, hair elsewhere."""
    h, w = mask.shape
    centre = points[_P["head"], :2]
    rx, ry = body.head_r * 0.86, body.head_r
    m = ellipse_mask(centre, rx, ry, h, w)
    if not m.any():
        return
    ys, xs = np.nonzero(m)
    dx, dy = (xs + 0.5 - centre[0]) / rx, (ys + 0.5 - centre[1]) / ry
    dz = -np.sqrt(np.clip(1 - dx * dx - dy * dy, 0, None))  # visible hemisphere, towards the camera
    along_face = -np.sin(theta) * dx - np.cos(theta) * dz  # dot(normal, facing direction)
    face = (along_face > 0.05) & (dy > -0.35)
    frame[ys, xs] = np.where(face[:, None], app.skin, app.hair)
    mask |= m
    for eye in ("r_eye", "l_eye"):
        if points[_P[eye], 2] - points[_P["head"], 2] < 0:
            em = ellipse_mask(points[_P[eye], :2], max(0.6, 0.12 * body.head_r), max(0.6, 0.12 * body.head_r), h, w) & m
            frame[em] = (30, 25, 25)
