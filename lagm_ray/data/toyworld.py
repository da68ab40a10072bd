"""The embedded world: a procedural renderer of part-labelled images.

No dataset can be downloaded here, so every feature runs first on this world. A scene is a
parameter vector ``params`` in [0, 1]^P; ``render(category, params, resolution)`` draws it as an
RGB image in [-1, 1] and its exact part mask, at any resolution from 16 to 256 px, vectorised over
the batch. The same scene at two resolutions is the same drawing (coordinates are continuous).

It is made hard enough that colour alone does not give the part: palettes are random per scene
(skin, hair and background hues overlap), parts carry texture, a lighting gradient shades the whole
image, the background has clutter in random colours, and an occluder may hide part of the object
(occluded pixels are labelled background, as CelebAMask-HQ labels a hand in front of a face).

"Real" labelled splits (:func:`real_split`) are renders of fixed seeds plus a little sensor noise;
:func:`stream` is the unlimited unlabelled stream.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

__all__ = ["Category", "CATEGORIES", "SPLIT_SIZES", "get_category", "sample_params", "render", "render_seeds",
           "real_split", "stream"]

MIN_RESOLUTION, MAX_RESOLUTION = 16, 256
SPLIT_SIZES = {"train": 1500, "val": 100, "test": 200}
_SPLIT_SEED_BASE = {"train": 10_000_000, "val": 20_000_000, "test": 30_000_000}
REAL_NOISE_STD = 0.03  # the "camera" noise that separates real images from renders


@dataclass(frozen=True)
class Category:
    name: str
    class_names: tuple[str, ...]
    num_params: int

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


CATEGORIES = {
    # LAGM's CelebAMask-HQ classes, in its order
    "faces": Category("faces", ("background", "ear", "eye", "eyebrow", "skin", "hair", "mouth", "nose"), 48),
    "car": Category("car", ("background", "body", "window", "wheel", "light", "bumper"), 44),
}


def get_category(name: str) -> Category:
    try:
        return CATEGORIES[name]
    except KeyError:
        raise ValueError(f"unknown category {name!r}; available: {', '.join(CATEGORIES)}") from None


def sample_params(category: str, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    return torch.rand(n, get_category(category).num_params, generator=generator)


# ------------------------------------------------------------------------------ drawing helpers


def _grid(resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates in [-1, 1], shape [1, R, R] each (x to the right, y down)."""
    t = (torch.arange(resolution, dtype=torch.float32) + 0.5) / resolution * 2 - 1
    y, x = torch.meshgrid(t, t, indexing="ij")
    return x[None], y[None]


def _col(p: torch.Tensor, i: int, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    """Parameter i mapped to [lo, hi], shaped [B, 1, 1] to broadcast over the image."""
    return (lo + (hi - lo) * p[:, i]).view(-1, 1, 1)


def _ellipse(x, y, cx, cy, rx, ry, angle=None) -> torch.Tensor:
    dx, dy = x - cx, y - cy
    if angle is not None:
        c, s = torch.cos(angle), torch.sin(angle)
        dx, dy = c * dx + s * dy, -s * dx + c * dy
    return (dx / rx) ** 2 + (dy / ry) ** 2 <= 1.0


def _hsv(h, s, v) -> torch.Tensor:
    """HSV in [0, 1] (each [B, 1, 1]) -> RGB [B, 3, 1, 1]."""
    k = torch.stack([(5 + h * 6) % 6, (3 + h * 6) % 6, (1 + h * 6) % 6], 1)
    rgb = v[:, None] - v[:, None] * s[:, None] * torch.clamp(torch.minimum(k, 4 - k), 0, 1)
    return rgb


def _texture(x, y, phase, freq, amp) -> torch.Tensor:
    """Smooth deterministic texture from the scene parameters (sum of two oriented waves), [B, 1, R, R]."""
    a = phase * 2 * math.pi
    t = torch.sin(freq * (x * torch.cos(a) + y * torch.sin(a)) + 7 * phase)
    t = t + torch.sin(1.7 * freq * (x * torch.sin(a) - y * torch.cos(a)) + 3 * phase)
    return (amp * 0.5 * t)[:, None]


def _paint(image, labels, region, colour, label, tex=None):
    """Paint ``region`` [B, R, R] with ``colour`` [B, 3, 1, 1] (times 1 + texture) and its label."""
    fill = colour if tex is None else colour * (1 + tex)
    image = torch.where(region[:, None], fill.expand_as(image), image)
    labels = torch.where(region, torch.full_like(labels, label), labels)
    return image, labels


def _background(p, x, y, i0) -> torch.Tensor:
    """Random base colour plus clutter: two blobs and stripes in random colours. Uses params i0..i0+8."""
    base = _hsv(_col(p, i0), _col(p, i0 + 1, 0.1, 0.8), _col(p, i0 + 2, 0.25, 0.95))
    image = base * (1 + _texture(x, y, _col(p, i0 + 3), 6.0, 0.25))
    for j in range(2):  # clutter blobs whose colours may match any part's
        k = i0 + 4 + 2 * j
        cx, cy = _col(p, k, -1.0, 1.0), _col(p, k + 1, -1.0, 1.0)
        blob = _ellipse(x, y, cx, cy, 0.15 + 0.2 * _col(p, k), 0.15 + 0.2 * _col(p, k + 1))
        colour = _hsv(_col(p, k + 1), _col(p, k, 0.2, 0.9), 0.35 + 0.5 * _col(p, k))
        image = torch.where(blob[:, None], colour.expand_as(image), image)
    return image


def _finish(p, x, y, image, labels, i_light, i_occ):
    """Lighting gradient over the whole image, then an occluder labelled background (params i_occ..+3)."""
    angle = _col(p, i_light, 0, 2 * math.pi)
    strength = _col(p, i_light + 1, 0.0, 0.45)
    shade = 1 + strength * (x * torch.cos(angle) + y * torch.sin(angle)) / 1.42
    image = image * shade[:, None]
    present = (p[:, i_occ] < 0.35).view(-1, 1, 1)  # about a third of scenes are partly occluded
    side = torch.where(p[:, i_occ + 1] < 0.5, -1.0, 1.0).view(-1, 1, 1)
    cx = side * _col(p, i_occ + 2, 0.55, 0.95)
    cy = _col(p, i_occ + 3, -0.2, 0.9)
    occ = present & _ellipse(x, y, cx, cy, 0.22, 0.5, angle=side * 0.5)
    colour = _hsv(_col(p, i_occ + 3), _col(p, i_occ + 1, 0.2, 0.7), _col(p, i_occ + 2, 0.3, 0.9))
    image, labels = _paint(image, labels, occ, colour, 0, _texture(x, y, _col(p, i_occ), 9.0, 0.2))
    return image, labels


# ----------------------------------------------------------------------------------- categories


def _render_faces(p: torch.Tensor, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    B = p.shape[0]
    X, Y = _grid(resolution)
    BG, EAR, EYE, BROW, SKIN, HAIR, MOUTH, NOSE = range(8)
    image = _background(p, X, Y, 40)
    labels = torch.zeros(B, resolution, resolution, dtype=torch.long)

    # face frame: centre, scale, roll; yaw shifts the inner features sideways. Aligned as CelebA-HQ's
    # faces are (cropped on eye and mouth landmarks): the face's place, size and roll vary little, and
    # the inner features sit within a few pixels of their mean. Shapes, colours, hair and expression
    # still vary fully. With the unaligned ranges (5x these), the toy generator learned no small parts.
    cx, cy = _col(p, 0, -0.03, 0.03), _col(p, 1, 0.05, 0.1)
    scale = _col(p, 2, 0.63, 0.67)
    aspect = _col(p, 3, 0.72, 0.92)
    roll = _col(p, 4, -0.07, 0.07)
    yaw = _col(p, 5, -0.05, 0.05)
    c, s = torch.cos(roll), torch.sin(roll)
    u = (c * (X - cx) + s * (Y - cy)) / scale  # face coordinates: face is ~ the unit circle
    v = (-s * (X - cx) + c * (Y - cy)) / scale
    a, b = aspect, torch.ones_like(aspect)

    skin = _hsv(_col(p, 6, 0.0, 1.0) ** 2 * 0.7, _col(p, 7, 0.15, 0.7), _col(p, 8, 0.35, 0.95))
    hair = _hsv(_col(p, 9), _col(p, 10, 0.1, 0.9), _col(p, 11, 0.1, 0.9))
    skin_tex = _texture(u, v, _col(p, 12), 5.0, 0.12)
    hair_tex = _texture(u, v, _col(p, 13), 22.0, 0.35)

    # hair behind the head: a larger ellipse, cut at a random length on the sides
    hair_len = _col(p, 14, -0.1, 1.25)
    back = _ellipse(u, v, 0, -0.1, a * 1.22, b * 1.18) & (v < hair_len)
    image, labels = _paint(image, labels, back, hair, HAIR, hair_tex)
    # ears, the far one smaller under yaw
    ear_r = _col(p, 15, 0.13, 0.22)
    for sign in (-1, 1):
        r = ear_r * (1 - 1.6 * sign * yaw).clamp(0.3, 1.4)
        ear = _ellipse(u, v, sign * a * 0.98, 0.08, r * 0.75, r * 1.2)
        image, labels = _paint(image, labels, ear, skin * 0.9, EAR, skin_tex)
    face = _ellipse(u, v, 0, 0, a, b)
    image, labels = _paint(image, labels, face, skin, SKIN, skin_tex)
    # hairline / bangs over the forehead, with a random wavy edge
    hairline = _col(p, 16, -0.85, -0.35) + 0.08 * torch.sin(8 * u + 6 * _col(p, 17))
    bangs = face & (v < hairline) & (p[:, 18].view(-1, 1, 1) < 0.85)  # some are bald
    image, labels = _paint(image, labels, bangs, hair, HAIR, hair_tex)

    fx = yaw * a  # inner features follow yaw
    eye_y = _col(p, 19, -0.14, -0.06)
    eye_dx = a * _col(p, 20, 0.356, 0.404)
    eye_r = _col(p, 21, 0.09, 0.15)
    eye_open = _col(p, 22, 0.35, 0.8)
    brow_thick = _col(p, 23, 0.03, 0.07)
    brow_tilt = _col(p, 24, -0.3, 0.3)
    brow_col = hair * _col(p, 25, 0.6, 1.0)[:, None]
    eye_col = _hsv(_col(p, 17), _col(p, 12, 0.2, 0.8), _col(p, 13, 0.15, 0.6))
    for sign in (-1, 1):
        ex = fx + sign * eye_dx
        brow = _ellipse(u, v, ex, eye_y - eye_r - 0.1, eye_r * 1.5, brow_thick, angle=sign * brow_tilt)
        image, labels = _paint(image, labels, brow & face, brow_col, BROW)
        eye = _ellipse(u, v, ex, eye_y, eye_r, eye_r * eye_open)
        white = torch.ones_like(skin) * 0.9
        image, labels = _paint(image, labels, eye, white, EYE)
        iris = _ellipse(u, v, ex + 0.3 * yaw * eye_r, eye_y, eye_r * 0.45, eye_r * 0.45) & eye
        image, labels = _paint(image, labels, iris, eye_col, EYE)

    nose_len = _col(p, 31, 0.242, 0.298)
    nose_w = _col(p, 32, 0.08, 0.14)
    nose_top = eye_y + 0.05
    # a triangle-ish nose: narrow at the top, widest at the tip
    t = ((v - nose_top) / nose_len).clamp(0, 1)
    nose = (v >= nose_top) & (v <= nose_top + nose_len) & ((u - fx * 1.2).abs() <= nose_w * (0.35 + 0.65 * t))
    image, labels = _paint(image, labels, nose, skin * 0.78, NOSE, skin_tex)

    mouth_y = nose_top + nose_len + _col(p, 33, 0.157, 0.193)
    mouth_w = a * _col(p, 34, 0.22, 0.36)
    mouth_open = _col(p, 35, 0.04, 0.14)
    smile = _col(p, 30, -0.6, 1.2)  # expression: curvature of the mouth
    lips = _hsv(_col(p, 6, 0.9, 1.0), _col(p, 29, 0.3, 0.8), _col(p, 29, 0.35, 0.85))
    mouth = _ellipse(u, v - smile * (u - fx) ** 2, fx, mouth_y, mouth_w, mouth_open)
    image, labels = _paint(image, labels, mouth, lips, MOUTH)
    inner = _ellipse(u, v - smile * (u - fx) ** 2, fx, mouth_y, mouth_w * 0.8, mouth_open * 0.35)
    image = torch.where(inner[:, None], image * 0.35, image)  # the dark gap between the lips, still mouth

    return _finish(p, X, Y, image, labels, i_light=26, i_occ=36)


def _render_car(p: torch.Tensor, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A car seen from the side or three-quarters, facing left or right."""
    B = p.shape[0]
    X, Y = _grid(resolution)
    BG, BODY, WINDOW, WHEEL, LIGHT, BUMPER = range(6)
    image = _background(p, X, Y, 36)
    labels = torch.zeros(B, resolution, resolution, dtype=torch.long)

    facing = torch.where(p[:, 0] < 0.5, -1.0, 1.0).view(-1, 1, 1)  # +1: front to the right
    view = _col(p, 1, 0.55, 1.0)  # 1 = pure side view; smaller = foreshortened three-quarter view
    cx, cy = _col(p, 2, -0.15, 0.15), _col(p, 3, 0.0, 0.3)
    length = _col(p, 4, 0.7, 0.95) * view
    height = _col(p, 5, 0.18, 0.3)
    tilt = _col(p, 6, -0.12, 0.12)
    c, s = torch.cos(tilt), torch.sin(tilt)
    u = facing * (c * (X - cx) + s * (Y - cy))  # car frame: u forward, v down
    v = -s * (X - cx) + c * (Y - cy)

    paint = _hsv(_col(p, 7), _col(p, 8, 0.0, 0.9), _col(p, 9, 0.25, 0.95))
    body_tex = _texture(u, v, _col(p, 10), 4.0, 0.15)
    # lower body: a rounded box
    r = 0.35 * height
    inner_u, inner_v = (u.abs() - (length - r)).clamp(min=0), ((v - 0).abs() - (height - r)).clamp(min=0)
    body = inner_u ** 2 + inner_v ** 2 <= r ** 2
    # cabin: a trapezoid on top, its roof set back from the front
    roof_h = _col(p, 11, 0.16, 0.3)
    front_slope = _col(p, 12, 0.6, 1.6)
    back_slope = _col(p, 13, 0.3, 1.2)
    cab_front, cab_back = length * _col(p, 14, 0.35, 0.6), -length * _col(p, 15, 0.55, 0.85)
    dv = (-height - v).clamp(min=0)  # height above the body top
    cabin = (v < -height + 0.02) & (dv <= roof_h) & (u <= cab_front - dv * front_slope) & (u >= cab_back + dv * back_slope)
    image, labels = _paint(image, labels, body | cabin, paint, BODY, body_tex)
    # windows inside the cabin, split by a pillar
    margin = 0.04
    glass = (dv >= margin) & (dv <= roof_h - margin) & (u <= cab_front - dv * front_slope - margin) \
        & (u >= cab_back + dv * back_slope + margin)
    pillar_u = _col(p, 16, -0.2, 0.2) * length
    glass = glass & ((u - pillar_u).abs() > 0.025)
    glass_col = _hsv(_col(p, 17, 0.5, 0.7), _col(p, 18, 0.1, 0.5), _col(p, 19, 0.15, 0.7))
    image, labels = _paint(image, labels, glass, glass_col, WINDOW, _texture(u, v, _col(p, 18), 10.0, 0.2))
    # bumpers at both ends of the lower body
    bumper_col = _hsv(_col(p, 24), _col(p, 25, 0.0, 0.3), _col(p, 25, 0.1, 0.8))
    bumper = body & (u.abs() >= length - 0.06) & (v >= height * 0.15)
    image, labels = _paint(image, labels, bumper, bumper_col, BUMPER)
    # head/tail lights
    light_col = _hsv(_col(p, 26, 0.0, 0.17), _col(p, 27, 0.0, 0.9), _col(p, 27, 0.7, 1.0))
    light = _ellipse(u, v, length - 0.06, -height * 0.35, 0.05, 0.04 + 0.04 * _col(p, 28)) \
        | _ellipse(u, v, -length + 0.05, -height * 0.4, 0.035, 0.05)
    image, labels = _paint(image, labels, light & body, light_col, LIGHT)
    # wheels: front and rear, dark tyres with a lighter rim (both are 'wheel')
    wheel_r = _col(p, 29, 0.12, 0.2) * (0.8 + 0.2 * view)
    tyre = _hsv(_col(p, 24), _col(p, 7, 0.0, 0.2), _col(p, 26, 0.05, 0.3))
    rim = _hsv(_col(p, 25), _col(p, 8, 0.0, 0.3), _col(p, 9, 0.5, 0.9))
    for wu in (0.68, -0.66):
        wheel = _ellipse(u, v, wu * length, height, wheel_r * view.sqrt(), wheel_r)
        image, labels = _paint(image, labels, wheel, tyre, WHEEL)
        hub = _ellipse(u, v, wu * length, height, 0.5 * wheel_r * view.sqrt(), 0.5 * wheel_r) & wheel
        image, labels = _paint(image, labels, hub, rim, WHEEL)

    return _finish(p, X, Y, image, labels, i_light=30, i_occ=32)


_RENDERERS = {"faces": _render_faces, "car": _render_car}


def render(category: str, params: torch.Tensor, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scenes [B, P] in [0, 1] -> images [B, 3, R, R] in [-1, 1] (float32) and masks [B, R, R] (int64)."""
    cat = get_category(category)
    if not isinstance(resolution, int) or not MIN_RESOLUTION <= resolution <= MAX_RESOLUTION:
        raise ValueError(f"resolution must be an int in [{MIN_RESOLUTION}, {MAX_RESOLUTION}], got {resolution!r}")
    if params.ndim != 2 or params.shape[1] != cat.num_params:
        raise ValueError(f"{category} params must have shape [B, {cat.num_params}], got {tuple(params.shape)}")
    image, labels = _RENDERERS[category](params.detach().float().cpu(), resolution)
    return (image.clamp(0, 1) * 2 - 1).contiguous(), labels.contiguous()


def render_seeds(category: str, seeds: Sequence[int], resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One scene per seed, the same scene for the same seed at any resolution and batch."""
    P = get_category(category).num_params
    params = torch.stack([torch.rand(P, generator=torch.Generator().manual_seed(int(s))) for s in seeds])
    return render(category, params, resolution)


def real_split(category: str, split: str, resolution: int, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` images of a fixed "real" split (train 1500 / val 100 / test 200), with sensor noise."""
    if split not in SPLIT_SIZES:
        raise ValueError(f"unknown split {split!r}; available: {', '.join(SPLIT_SIZES)}")
    n = SPLIT_SIZES[split] if n is None else n
    if not 0 <= n <= SPLIT_SIZES[split]:
        raise ValueError(f"{n} images requested from the {category} {split} split, which holds {SPLIT_SIZES[split]}")
    seeds = [_SPLIT_SEED_BASE[split] + i for i in range(n)]
    images, masks = render_seeds(category, seeds, resolution)
    noise = torch.stack([torch.randn(3, resolution, resolution, generator=torch.Generator().manual_seed(s + 1))
                         for s in seeds]) if n else torch.zeros_like(images)
    return (images + REAL_NOISE_STD * noise).clamp(-1, 1), masks


def stream(category: str, resolution: int, batch_size: int, seed: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The unlimited unlabelled stream: (params, images, masks) batches, deterministic for a seed."""
    rng = torch.Generator().manual_seed(seed)
    while True:
        params = sample_params(category, batch_size, rng)
        images, masks = render(category, params, resolution)
        yield params, images, masks
