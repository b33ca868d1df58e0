"""The embedded sample track: small synthetic edit clips with ground truth known by construction.

Every clip is a layered scene rendered by one camera: a background texture (the world) and textured
sprites with alpha that move on their own paths. The camera pans, zooms and rotates over the world.
An edit is an operation on the layers (add a sprite, remove one, swap its texture, recolor it, change
its material), so the correctly edited video is simply the edited scene rendered by the same camera.
Since every layer moves by a known affine map, the source's optical flow is exact, too.

All images come from scikit-image's bundled data: nothing is downloaded, and a build is bit-for-bit
deterministic on a given machine.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import skimage.color
import skimage.data
import skimage.draw
import skimage.filters
import skimage.transform
import torch
import torch.nn.functional as F

from data.folder import FolderDataset
from harness.files import write_json, write_npz

HEIGHT, WIDTH, FRAMES, FPS = 256, 448, 14, 7.0
TRACK_VERSION = 1


# ---------------------------------------------------------------------------------------------------------
# Sprites: float32 h×w×4 RGBA in [0, 1], colour not premultiplied.


def _smooth(img: np.ndarray, sigma: float = 0.7) -> np.ndarray:
    return skimage.filters.gaussian(img, sigma=sigma, channel_axis=-1, preserve_range=True).astype(np.float32)


def _aa_mask(shape: tuple[int, int], draw: Callable[[int], tuple[np.ndarray, np.ndarray]], ss: int = 4) -> np.ndarray:
    """Anti-aliased coverage of a shape drawn at `ss`× resolution and averaged down."""
    big = np.zeros((shape[0] * ss, shape[1] * ss), np.float32)
    rr, cc = draw(ss)
    big[rr, cc] = 1.0
    return big.reshape(shape[0], ss, shape[1], ss).mean(axis=(1, 3))


def ball(rgb: tuple[float, float, float], radius: int = 28) -> np.ndarray:
    """A shaded sphere."""
    n = 2 * radius + 2
    alpha = _aa_mask((n, n), lambda s: skimage.draw.disk((n * s / 2, n * s / 2), radius * s, shape=(n * s, n * s)))
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    d = np.hypot(xx - n * 0.38, yy - n * 0.35) / radius
    shade = np.clip(1.15 - 0.55 * d, 0.25, 1.0)[..., None]
    color = np.clip(np.asarray(rgb, np.float32) * shade + 0.35 * np.clip(1 - 2.5 * d, 0, 1)[..., None], 0, 1)
    return np.dstack([color, alpha])


def star(rgb: tuple[float, float, float], radius: int = 40, points: int = 5) -> np.ndarray:
    n = 2 * radius + 2
    ang = np.arange(2 * points) * math.pi / points - math.pi / 2
    rad = np.where(np.arange(2 * points) % 2 == 0, radius, radius * 0.45)

    def draw(s: int):
        r = n * s / 2 + rad * s * np.sin(ang)
        c = n * s / 2 + rad * s * np.cos(ang)
        return skimage.draw.polygon(r, c, shape=(n * s, n * s))

    alpha = _aa_mask((n, n), draw)
    color = np.broadcast_to(np.asarray(rgb, np.float32), (n, n, 3))
    return np.dstack([color, alpha]).astype(np.float32)


def ellipse_crop(image: np.ndarray, center_xy: tuple[int, int], axes_xy: tuple[int, int], size: int) -> np.ndarray:
    """An elliptical cut-out of a photo, resized so its longer side is `size` pixels."""
    cx, cy = center_xy
    ax, ay = axes_xy
    crop = image[cy - ay : cy + ay, cx - ax : cx + ax].astype(np.float32) / 255
    h, w = crop.shape[:2]
    alpha = _aa_mask((h, w), lambda s: skimage.draw.ellipse(h * s / 2, w * s / 2, ay * s, ax * s, shape=(h * s, w * s)))
    rgba = np.dstack([crop, alpha])
    scale = size / max(h, w)
    return _smooth(skimage.transform.rescale(rgba, scale, channel_axis=-1, anti_aliasing=True), 0.5)


def horse(rgb: tuple[float, float, float], width: int = 150) -> np.ndarray:
    """scikit-image's horse silhouette, shaded."""
    shape = ~skimage.data.horse()
    alpha = skimage.filters.gaussian(shape.astype(np.float32), sigma=1.0)
    h, w = alpha.shape
    yy = np.linspace(0, 1, h, dtype=np.float32)[:, None]
    shade = (1.1 - 0.4 * yy) * np.ones((1, w), np.float32)
    color = np.clip(np.asarray(rgb, np.float32) * shade[..., None], 0, 1)
    rgba = np.dstack([color, alpha])
    return skimage.transform.rescale(rgba, width / w, channel_axis=-1, anti_aliasing=True).astype(np.float32)


def logo(size: int = 110) -> np.ndarray:
    rgba = skimage.data.logo().astype(np.float32) / 255
    return skimage.transform.rescale(rgba, size / rgba.shape[1], channel_axis=-1, anti_aliasing=True).astype(np.float32)


# Edits of a sprite's colour or material (alpha is kept).


def hue_shift(rgba: np.ndarray, shift: float, saturation: float = 1.0) -> np.ndarray:
    hsv = skimage.color.rgb2hsv(np.clip(rgba[..., :3], 0, 1))
    hsv[..., 0] = (hsv[..., 0] + shift) % 1.0
    hsv[..., 1] = np.clip(hsv[..., 1] * saturation, 0, 1)
    return np.dstack([skimage.color.hsv2rgb(hsv), rgba[..., 3]]).astype(np.float32)


def zebra(rgba: np.ndarray, period: float = 14.0) -> np.ndarray:
    """Black-and-white stripes following the sprite's shading."""
    h, w = rgba.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    stripes = 0.5 + 0.5 * np.tanh(3 * np.sin(2 * math.pi * (xx + 0.6 * yy + 4 * np.sin(yy / 9)) / period))
    lum = skimage.color.rgb2gray(np.clip(rgba[..., :3], 0, 1)).astype(np.float32)
    value = (0.08 + 0.9 * stripes) * np.clip(0.6 + lum, 0, 1.2)
    return np.dstack([np.repeat(np.clip(value, 0, 1)[..., None], 3, -1), rgba[..., 3]]).astype(np.float32)


def bronze(rgba: np.ndarray) -> np.ndarray:
    """Recast as a metal statue: luminance times a bronze tint."""
    lum = skimage.color.rgb2gray(np.clip(rgba[..., :3], 0, 1)).astype(np.float32)
    color = np.clip((0.25 + 1.1 * lum)[..., None] * np.array([0.80, 0.52, 0.25], np.float32), 0, 1)
    return np.dstack([color, rgba[..., 3]]).astype(np.float32)


def pencil_sketch(rgba: np.ndarray) -> np.ndarray:
    """Grey pencil strokes: the image's edges on paper white."""
    lum = skimage.color.rgb2gray(np.clip(rgba[..., :3], 0, 1))
    edges = skimage.filters.sobel(skimage.filters.gaussian(lum, 1.0))
    value = np.clip(0.97 - 6.0 * edges, 0.15, 1.0).astype(np.float32)
    return np.dstack([np.repeat(value[..., None], 3, -1), rgba[..., 3]]).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------
# Scenes: background, camera, layers.


@dataclass(frozen=True)
class Pose:
    """Similarity pose: position (x, y), rotation in degrees, scale."""

    x: float
    y: float
    angle: float = 0.0
    scale: float = 1.0


def _lerp(a: Pose, b: Pose, s: float, wobble: float = 0.0) -> Pose:
    return Pose(
        a.x + (b.x - a.x) * s,
        a.y + (b.y - a.y) * s + wobble * math.sin(2 * math.pi * s),
        a.angle + (b.angle - a.angle) * s,
        a.scale + (b.scale - a.scale) * s,
    )


@dataclass
class Layer:
    """A sprite placed in the world; `anchored` layers stay put in the world (they move with the camera)."""

    name: str
    rgba: np.ndarray
    start: Pose
    end: Pose | None = None
    wobble: float = 0.0

    def pose(self, s: float) -> Pose:
        return self.start if self.end is None else _lerp(self.start, self.end, s, self.wobble)


@dataclass
class Edit:
    """What the user did to frame 0, expressed on the layers."""

    kind: str  # add_object | remove_object | replace_object | change_color | change_appearance
    layer: str  # the layer added, removed or changed
    new_layer: Layer | None = None  # for add_object
    new_rgba: Callable[[np.ndarray], np.ndarray] | np.ndarray | None = None  # for replace / color / appearance


@dataclass
class Clip:
    id: str
    background: Callable[[], np.ndarray]  # uint8 or float RGB world texture
    world_scale: float  # texture is rescaled by this to make the world
    camera_start: Pose  # camera centre in world px, roll, zoom (frame px per world px)
    camera_end: Pose
    layers: list[Layer]
    edit: Edit
    instruction: str
    source_prompt: str
    target_prompt: str
    extra: dict = field(default_factory=dict)


def _affine(p: Pose) -> np.ndarray:
    """3×3 matrix of x ↦ scale·R(angle)·x + (x, y)."""
    a = math.radians(p.angle)
    c, s = math.cos(a) * p.scale, math.sin(a) * p.scale
    return np.array([[c, -s, p.x], [s, c, p.y], [0, 0, 1]], np.float64)


def _camera(p: Pose) -> np.ndarray:
    """World → frame: zoom·R(roll)·(w − centre) + frame centre."""
    a = math.radians(p.angle)
    c, s = math.cos(a) * p.scale, math.sin(a) * p.scale
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]], np.float64)
    to_centre = np.array([[1, 0, -p.x], [0, 1, -p.y], [0, 0, 1]], np.float64)
    to_frame = np.array([[1, 0, WIDTH / 2], [0, 1, HEIGHT / 2], [0, 0, 1]], np.float64)
    return to_frame @ rot @ to_centre


def _sprite_to_world(layer: Layer, rgba: np.ndarray, s: float) -> np.ndarray:
    h, w = rgba.shape[:2]
    centre = np.array([[1, 0, -w / 2], [0, 1, -h / 2], [0, 0, 1]], np.float64)
    return _affine(layer.pose(s)) @ centre


def _sample(texture: torch.Tensor, frame_to_tex: np.ndarray, padding: str) -> torch.Tensor:
    """Sample a C×h×w texture at every pixel centre of T frames; frame_to_tex is T×3×3 (pixel coords)."""
    c, h, w = texture.shape
    ys, xs = torch.meshgrid(torch.arange(HEIGHT, dtype=torch.float64) + 0.5, torch.arange(WIDTH, dtype=torch.float64) + 0.5, indexing="ij")
    pix = torch.stack([xs, ys, torch.ones_like(xs)], -1).reshape(-1, 3)  # P×3
    m = torch.from_numpy(frame_to_tex)  # T×3×3
    tex_xy = torch.einsum("tij,pj->tpi", m, pix)[..., :2]
    grid = torch.empty_like(tex_xy)
    grid[..., 0] = tex_xy[..., 0] / w * 2 - 1
    grid[..., 1] = tex_xy[..., 1] / h * 2 - 1
    grid = grid.reshape(len(m), HEIGHT, WIDTH, 2).float()
    out = F.grid_sample(texture[None].expand(len(m), -1, -1, -1), grid, mode="bilinear", padding_mode=padding, align_corners=False)
    return out  # T×C×H×W


@dataclass
class Rendered:
    frames: np.ndarray  # uint8 T×H×W×3
    visible: dict[str, np.ndarray]  # layer name -> float T×H×W visible coverage
    top: np.ndarray  # int T×H×W: index of the frontmost layer covering a pixel by > 0.5 (−1 = background)
    soft: np.ndarray  # bool T×H×W: pixel on a soft (partially covered) sprite edge


def _timeline(frames: int = FRAMES) -> np.ndarray:
    """Each frame's time in [0, 1]: a clip of any length follows the same motion, sampled at `frames` instants."""
    return np.linspace(0.0, 1.0, frames)


def _world(clip: Clip) -> np.ndarray:
    tex = clip.background()
    tex = tex.astype(np.float32) / 255 if tex.dtype == np.uint8 else tex.astype(np.float32)
    if tex.ndim == 2:
        tex = np.repeat(tex[..., None], 3, -1)
    return _smooth(np.clip(_rescale(tex, clip.world_scale), 0, 1), 0.7)


def _rescale(img: np.ndarray, scale: float) -> np.ndarray:
    """Bicubic, antialiased resize of an H×W×C float image by `scale`."""
    if scale == 1.0:
        return img
    t = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None]
    size = (round(img.shape[0] * scale), round(img.shape[1] * scale))
    return F.interpolate(t, size=size, mode="bicubic", antialias=True, align_corners=False)[0].numpy().transpose(1, 2, 0)


def _camera_maps(clip: Clip, frames: int = FRAMES) -> np.ndarray:
    """T×3×3 world → frame matrices."""
    return np.stack([_camera(_lerp(clip.camera_start, clip.camera_end, s)) for s in _timeline(frames)])


def render(clip: Clip, layers: list[Layer], world: np.ndarray, frames: int = FRAMES) -> Rendered:
    cams = _camera_maps(clip, frames)
    tex = torch.from_numpy(np.ascontiguousarray(world.transpose(2, 0, 1)))
    h, w = world.shape[:2]
    corners = np.array([[0, 0, 1], [WIDTH, 0, 1], [0, HEIGHT, 1], [WIDTH, HEIGHT, 1]], np.float64).T
    for cam in cams:
        wc = np.linalg.inv(cam) @ corners
        if wc[0].min() < 0 or wc[1].min() < 0 or wc[0].max() > w or wc[1].max() > h:
            raise AssertionError(f"clip {clip.id}: camera leaves the world texture ({w}×{h})")
    image = _sample(tex, np.linalg.inv(cams), "border")  # T×3×H×W
    coverage = []
    for layer in layers:
        rgba = torch.from_numpy(np.ascontiguousarray(layer.rgba.transpose(2, 0, 1)))
        premult = torch.cat([rgba[:3] * rgba[3:], rgba[3:]])
        maps = np.stack([cams[i] @ _sprite_to_world(layer, layer.rgba, s) for i, s in enumerate(_timeline(frames))])
        sp = _sample(premult, np.linalg.inv(maps), "zeros")
        alpha = sp[:, 3].clamp(0, 1)
        image = image * (1 - alpha[:, None]) + sp[:, :3]
        coverage.append(alpha)
    # Visible coverage of each layer: its alpha times the transparency of every layer above it.
    visible = {}
    for i, layer in enumerate(layers):
        v = coverage[i].clone()
        for j in range(i + 1, len(layers)):
            v = v * (1 - coverage[j])
        visible[layer.name] = v.numpy()
    top = -np.ones((frames, HEIGHT, WIDTH), np.int64)
    soft = np.zeros((frames, HEIGHT, WIDTH), bool)
    for i, a in enumerate(coverage):
        a = a.numpy()
        top[a > 0.5] = i
        soft |= (a > 0.01) & (a < 0.99)
    frames = (image.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return Rendered(frames, visible, top, soft)


def ground_truth_flow(clip: Clip, layers: list[Layer], rendered: Rendered) -> tuple[np.ndarray, np.ndarray]:
    """Exact forward flow (dx, dy) of every pixel of frame t to frame t+1, and where it is unoccluded.

    A pixel moves with its frontmost layer (or the background), whose frame-to-frame motion is affine.
    It is valid when it is not on a soft sprite edge, lands inside frame t+1 and is not covered there by a
    different layer.
    """
    frames = len(rendered.frames)
    cams = _camera_maps(clip, frames)
    ts = _timeline(frames)
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float64) + 0.5
    pix = np.stack([xs, ys, np.ones_like(xs)], -1)  # H×W×3
    flows = np.zeros((frames - 1, HEIGHT, WIDTH, 2), np.float32)
    valid = np.zeros((frames - 1, HEIGHT, WIDTH), bool)
    for t in range(frames - 1):
        step = {-1: cams[t + 1] @ np.linalg.inv(cams[t])}
        for i, layer in enumerate(layers):
            a = cams[t] @ _sprite_to_world(layer, layer.rgba, ts[t])
            b = cams[t + 1] @ _sprite_to_world(layer, layer.rgba, ts[t + 1])
            step[i] = b @ np.linalg.inv(a)
        dst = np.zeros_like(pix)
        for i, m in step.items():
            sel = rendered.top[t] == i
            dst[sel] = pix[sel] @ m.T
        flows[t] = (dst[..., :2] - pix[..., :2]).astype(np.float32)
        xi = np.floor(dst[..., 0]).astype(int)
        yi = np.floor(dst[..., 1]).astype(int)
        inside = (xi >= 1) & (yi >= 1) & (xi < WIDTH - 1) & (yi < HEIGHT - 1)
        xi, yi = np.clip(xi, 0, WIDTH - 1), np.clip(yi, 0, HEIGHT - 1)
        same = rendered.top[t + 1][yi, xi] == rendered.top[t]
        valid[t] = inside & same & ~rendered.soft[t] & ~rendered.soft[t + 1][yi, xi]
    return flows, valid


@dataclass
class BuiltClip:
    """A clip in memory: what the layout files hold."""

    clip: Clip
    source: np.ndarray
    target: np.ndarray
    masks: np.ndarray
    flow: np.ndarray
    flow_valid: np.ndarray


def _edited_layers(clip: Clip) -> list[Layer]:
    e = clip.edit
    if e.kind == "add_object":
        assert e.new_layer is not None
        return [*clip.layers, e.new_layer]
    if e.kind == "remove_object":
        return [l for l in clip.layers if l.name != e.layer]
    out = []
    for l in clip.layers:
        if l.name == e.layer:
            rgba = e.new_rgba(l.rgba) if callable(e.new_rgba) else e.new_rgba
            l = replace(l, rgba=np.asarray(rgba, np.float32))
        out.append(l)
    return out


def build_clip(clip: Clip, frames: int = FRAMES) -> BuiltClip:
    """Render the clip and its edit at `frames` frames (the same motion, sampled more or less densely)."""
    world = _world(clip)
    src = render(clip, clip.layers, world, frames)
    edited_layers = _edited_layers(clip)
    tgt = render(clip, edited_layers, world, frames)
    name = clip.edit.layer
    masks = np.zeros((frames, HEIGHT, WIDTH), bool)
    for r in (src, tgt):
        if name in r.visible:
            masks |= r.visible[name] > 0.5
    flow, valid = ground_truth_flow(clip, clip.layers, src)
    return BuiltClip(clip, src.frames, tgt.frames, masks, flow, valid)


# ---------------------------------------------------------------------------------------------------------
# The clips. Camera poses are in world pixels; zoom is frame pixels per world pixel.


def _tint(gray: np.ndarray, rgb: tuple[float, float, float]) -> np.ndarray:
    g = gray.astype(np.float32) / 255
    return np.clip(g[..., None] * np.asarray(rgb, np.float32) * 1.2, 0, 1)


def _cat_face(size: int = 120) -> np.ndarray:
    return ellipse_crop(skimage.data.chelsea(), (165, 150), (105, 120), size)


def _astronaut_face(size: int = 120) -> np.ndarray:
    return ellipse_crop(skimage.data.astronaut(), (245, 105), (62, 72), size)


def _region(world_fn: Callable[[], np.ndarray], scale: float, centre: tuple[int, int], axes: tuple[int, int]) -> np.ndarray:
    """An elliptical patch of the world itself (for edits of a background region)."""
    tex = _rescale(world_fn().astype(np.float32) / 255, scale)
    patch = ellipse_crop((np.clip(tex, 0, 1) * 255).astype(np.uint8), centre, axes, 2 * max(axes))
    return patch


def clips() -> list[Clip]:
    """The track's clip definitions (two edits of each of the five kinds)."""
    red, blue, green = (0.85, 0.12, 0.10), (0.15, 0.30, 0.90), (0.15, 0.70, 0.25)
    immuno_patch = _region(skimage.data.immunohistochemistry, 1.3, (330, 300), (70, 55))
    return [
        Clip(
            "astronaut_add_logo", skimage.data.astronaut, 1.25, Pose(250, 300, 0, 1.0), Pose(390, 300, 0, 1.0),
            [Layer("ball", ball(red), Pose(230, 420), Pose(420, 380), wobble=-40)],
            Edit("add_object", "logo", new_layer=Layer("logo", logo(100), Pose(180, 200, -8))),
            "Add the scikit-image logo next to the astronaut",
            "a portrait of an astronaut with a red ball rolling past",
            "a portrait of an astronaut with a red ball rolling past and a snake logo beside her",
        ),
        Clip(
            "coffee_remove_cat", skimage.data.coffee, 1.3, Pose(390, 260, -6, 1.05), Pose(390, 260, 6, 1.05),
            [Layer("cat", _cat_face(110), Pose(250, 210, -10), Pose(480, 300, 15), wobble=20)],
            Edit("remove_object", "cat"),
            "Remove the picture of the cat",
            "a cup of espresso on a wooden table with a picture of a cat floating over it",
            "a cup of espresso on a wooden table",
        ),
        Clip(
            "rocket_replace_cat", skimage.data.rocket, 1.2, Pose(384, 330, 0, 1.0), Pose(384, 200, 0, 1.0),
            [Layer("portrait", _cat_face(120), Pose(300, 330, 0), Pose(450, 200, 10), wobble=15)],
            Edit("replace_object", "portrait", new_rgba=_astronaut_face(120)),
            "Replace the cat with an astronaut",
            "a rocket on a launch pad at night with a cat's face drifting in the sky",
            "a rocket on a launch pad at night with an astronaut's face drifting in the sky",
        ),
        Clip(
            "chelsea_color_ball", skimage.data.chelsea, 2.0, Pose(450, 300, 0, 1.0), Pose(450, 300, 0, 1.35),
            [Layer("ball", ball(blue, 30), Pose(330, 250), Pose(560, 340), wobble=30)],
            Edit("change_color", "ball", new_rgba=lambda rgba: hue_shift(rgba, 0.52, 1.0)),
            "Make the blue ball yellow",
            "a tabby cat with a blue ball bouncing in front of it",
            "a tabby cat with a yellow ball bouncing in front of it",
        ),
        Clip(
            "hubble_appearance_horse", lambda: skimage.data.hubble_deep_field(), 1.0, Pose(520, 430, 0, 1.3), Pose(470, 430, 0, 1.0),
            [Layer("horse", horse((0.55, 0.33, 0.15), 150), Pose(380, 450, 0), Pose(590, 420, 0), wobble=-15)],
            Edit("change_appearance", "horse", new_rgba=zebra),
            "Give the horse zebra stripes",
            "a brown horse galloping across a field of galaxies",
            "a zebra-striped horse galloping across a field of galaxies",
        ),
        Clip(
            "retina_add_star", skimage.data.retina, 0.6, Pose(420, 420, -5, 1.0), Pose(480, 400, 8, 1.1),
            [Layer("coin", ball(green, 24), Pose(330, 480), Pose(520, 360), wobble=25)],
            Edit("add_object", "star", new_layer=Layer("star", star((1.0, 0.85, 0.1), 38), Pose(520, 470, 10))),
            "Add a yellow star at the bottom right",
            "a photo of a retina with a green ball moving across it",
            "a photo of a retina with a green ball moving across it and a yellow star",
        ),
        Clip(
            "immuno_color_region", skimage.data.immunohistochemistry, 1.3, Pose(300, 280, 0, 1.0), Pose(380, 360, 0, 1.0),
            [
                Layer("stain", immuno_patch, Pose(330, 300)),
                Layer("ball", ball(red, 22), Pose(480, 250), Pose(260, 380), wobble=20),
            ],
            Edit("change_color", "stain", new_rgba=lambda rgba: hue_shift(rgba, 0.6, 1.3)),
            "Turn the brown tissue in the middle blue",
            "a microscope image of brown stained tissue with a red ball passing by",
            "a microscope image of tissue stained blue in the middle with a red ball passing by",
        ),
        Clip(
            "brick_appearance_cat", lambda: _tint(skimage.data.brick(), (0.75, 0.45, 0.35)), 1.4, Pose(360, 360, 3, 1.0), Pose(360, 360, -5, 1.15),
            [Layer("cat", _cat_face(130), Pose(280, 330, -5), Pose(440, 390, 5), wobble=-20)],
            Edit("change_appearance", "cat", new_rgba=pencil_sketch),
            "Make the cat a pencil drawing",
            "a photo of a cat's face moving in front of a red brick wall",
            "a pencil drawing of a cat's face moving in front of a red brick wall",
        ),
        Clip(
            "gravel_remove_ball", lambda: _tint(skimage.data.gravel(), (0.7, 0.65, 0.55)), 1.4, Pose(360, 360, 0, 1.1), Pose(330, 380, 10, 1.1),
            [
                Layer("blue_ball", ball(blue, 26), Pose(250, 320), Pose(440, 420), wobble=-25),
                Layer("red_ball", ball(red, 26), Pose(460, 330), Pose(300, 410), wobble=25),
            ],
            Edit("remove_object", "red_ball"),
            "Remove the red ball",
            "a red ball and a blue ball rolling on gravel",
            "a blue ball rolling on gravel",
        ),
        Clip(
            "astronaut_replace_ball", skimage.data.astronaut, 1.3, Pose(300, 360, 4, 1.0), Pose(360, 330, -4, 1.05),
            [Layer("ball", ball(green, 30), Pose(200, 470), Pose(460, 420), wobble=-30)],
            Edit("replace_object", "ball", new_rgba=star((0.95, 0.2, 0.6), 36)),
            "Replace the green ball with a pink star",
            "an astronaut with a green ball moving in front of her",
            "an astronaut with a pink star moving in front of her",
        ),
        Clip(
            "rocket_appearance_horse", skimage.data.rocket, 1.3, Pose(420, 300, 0, 1.1), Pose(440, 300, 0, 0.95),
            [Layer("horse", horse((0.9, 0.9, 0.9), 140), Pose(300, 420, 0), Pose(520, 400, -5), wobble=10)],
            Edit("change_appearance", "horse", new_rgba=bronze),
            "Turn the horse into a bronze statue",
            "a white horse galloping past a rocket on a launch pad",
            "a bronze horse statue moving past a rocket on a launch pad",
        ),
    ]


# ---------------------------------------------------------------------------------------------------------
# Writing the track in the common layout (see README: "On-disk layout").


def build(root: str | Path, only: list[str] | None = None, num_frames: int = FRAMES) -> Path:
    """Render every clip at `num_frames` frames into `root` in the common layout. Idempotent: finished clips are
    skipped."""
    from data.video_io import write_image, write_video_lossless

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for clip in clips():
        if only and clip.id not in only:
            continue
        out = root / clip.id
        if (out / "meta.json").exists():
            continue
        b = build_clip(clip, num_frames)
        write_video_lossless(out / "source.mkv", b.source, FPS)
        write_image(out / "edited.png", b.target[0])
        write_image(out / "mask.png", (b.masks[0] * 255).astype(np.uint8))
        write_video_lossless(out / "truth" / "video.mkv", b.target, FPS)
        write_npz(out / "truth" / "masks.npz", masks=b.masks)
        write_npz(out / "truth" / "flow.npz", flow=b.flow.astype(np.float16), valid=b.flow_valid)
        write_json(
            out / "meta.json",  # written last: its presence marks the clip as complete
            {
                "instruction": clip.instruction,
                "source_prompt": clip.source_prompt,
                "target_prompt": clip.target_prompt,
                "edit_type": clip.edit.kind,
                "fps": FPS,
                "provenance": {"builder": "data.sample_track", "version": TRACK_VERSION},
            },
        )
    write_json(root / "dataset.json", {"name": "sample", "version": TRACK_VERSION, "num_frames": num_frames, "size": [HEIGHT, WIDTH]})
    return root


def folder_name(name: str, num_frames: int) -> str:
    """The track's folder under data_dir: `name` at the default 14 frames, `<name>_<N>f` at any other length."""
    return name if num_frames == FRAMES else f"{name}_{num_frames}f"


class SampleTrack(FolderDataset):
    """`dataset=sample`: the embedded track at `num_frames` frames (any length ≥ 2: the same motions sampled at
    that many instants, ground truth included), built into `data_dir/sample` (14 frames) or
    `data_dir/sample_<N>f` on first use. Its clips are rendered at that length, never resampled."""

    def __init__(self, data_dir: str | Path, name: str = "sample", num_frames: int = FRAMES, **kw):
        num_frames = int(num_frames)
        if num_frames < 2:
            raise ValueError(f"dataset.num_frames must be at least 2 for the sample track, got {num_frames}")
        super().__init__(Path(data_dir) / folder_name(name, num_frames), name=name, num_frames=num_frames, **kw)
        self._data_dir = data_dir

    def all_ids(self) -> list[str]:
        if [c.id for c in clips() if not (self.root / c.id / "meta.json").exists()]:
            build(self.root, num_frames=self.num_frames)
        return [c.id for c in clips()]

    def build(self, data_dir: str | Path) -> None:
        build(Path(data_dir) / folder_name(self.name, self.num_frames), num_frames=self.num_frames)
