"""Procedural videos written in the exact on-disk layouts of HMDB51, UCF101, Kinetics-400 and SSv2.

Used by tests, the demo and benchmarks: every adapter, the transcoder and the trainer can run on
these folders as if they were the real downloads. The four datasets get different label spaces
and visual domains but share motion primitives (move, circle, bounce, spin, ...), so, as with
the real sets, features learned on one dataset help the others. A class is defined by its motion
only: shape, colour, size and background are drawn independently of the label.
generate(..., look="different") draws a third setting instead: looks far apart and motion
primitives mostly each dataset's own, so transfer between them is not built in (render()).

    from jedi_pipe import synth
    roots = synth.generate("data/synth", videos_per_class=30, seed=0)   # {"hmdb51": Path, ...}
"""
import colorsys
import json
import math
import multiprocessing as mp
import os
import shutil
import signal
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .errors import InputError

DATASETS = ("hmdb51", "ucf101", "kinetics400", "ssv2")
# In a dataset's folder while generate() writes it: a folder that holds it was cut short (a kill, Ctrl-C),
# and `jedi-pipe shard` refuses it rather than take the videos written so far for the whole dataset.
INCOMPLETE = ".jedi-pipe-synth-incomplete"
# In a finished dataset's folder: the settings that made it. A second generate() with the same ones
# keeps it; with others it is refused (or replaced, overwrite=True), never mixed with the new files.
MADE = ".jedi-pipe-synth-settings.json"
LEGACY_RECORD = ".jedi-pipe-synth.json"   # before MADE: the names synth made, a list in the parent folder

# -----------------------------------------------------------------------------
# label spaces: (class name, motion primitive, sign)
# sign: +1 right / down / clockwise / grow, -1 the opposite, 0 drawn per video. Classes with
# sign 0 stay correct under horizontal flips; ssv2 alone has direction-dependent pairs, as the
# real set does, whose labels a flip swaps (preprocess/ssv2.yaml's flip_pairs).
_TABLE = {
    "hmdb51": [
        ("cartwheel", "spin", 0), ("clap", "pulse", 0), ("climb_stairs", "step_v", -1),
        ("golf", "circle", 0), ("jump", "bounce", 0), ("pullup", "osc_v", 0),
        ("walk", "move_h", 0), ("wave", "osc_h", 0),
    ],
    "ucf101": [  # alphabetical, as classInd.txt is
        ("Biking", "move_h", 0), ("BoxingSpeedBag", "osc_h", 0), ("HandstandPushups", "osc_v", 0),
        ("HulaHoop", "circle", 0), ("JumpingJack", "pulse", 0), ("PizzaTossing", "spin", 0),
        ("RopeClimbing", "step_v", -1), ("Skiing", "zigzag", 0), ("SkyDiving", "zoom", +1),
        ("TrampolineJumping", "bounce", 0),
    ],
    "kinetics400": [
        ("air drumming", "pulse", 0), ("bowling", "zoom", -1), ("breakdancing", "spin", 0),
        ("dribbling basketball", "bounce", 0), ("pull ups", "osc_v", 0),
        ("pushing car", "step_h", 0), ("riding a bike", "move_h", 0), ("rock climbing", "move_v", -1),
        ("shaking head", "osc_h", 0), ("skiing slalom", "zigzag", 0), ("skydiving", "move_v", +1),
        ("spinning poi", "circle", 0),
    ],
    "ssv2": [  # templates; labels.json is alphabetical, as the real one
        ("Moving [something] away from the camera", "zoom", -1),
        ("Moving [something] down", "move_v", +1),
        ("Moving [something] towards the camera", "zoom", +1),
        ("Moving [something] up", "move_v", -1),
        ("Pushing [something] from left to right", "move_h", +1),
        ("Pushing [something] from right to left", "move_h", -1),
        ("Spinning [something] so it continues spinning", "spin", 0),
        ("Spinning [something] that quickly stops spinning", "spin_stop", 0),
    ],
}
# class names in label-index order; for ssv2 the labels.json keys (template without brackets)
CLASSES = {ds: [name.replace("[", "").replace("]", "") for name, _, _ in rows] for ds, rows in _TABLE.items()}
SSV2_TEMPLATES = [name for name, _, _ in _TABLE["ssv2"]]

# look="different": the same class names (label spaces and layouts are the datasets'), but each
# dataset's classes move in primitives mostly its own. Shared with another dataset: circle
# (hmdb51 golf, ucf101 HulaHoop), pulse (ucf101 TrampolineJumping, kinetics400 air drumming) and
# zoom (kinetics400 bowling, ssv2 towards / away): at most 2 classes of a dataset (SHARED_AT_MOST).
# ssv2 keeps its motions: its direction pairs are the real set's and the loaders' flips rely on them.
_MOTIONS_DIFFERENT = {
    "hmdb51": [("roll", 0), ("beat", 0), ("stairs", -1), ("circle", 0), ("bounce", 0), ("sawtooth_v", -1),
               ("step_h", 0), ("rock", 0)],
    "ucf101": [("diagonal", 0), ("shake", 0), ("osc_v", 0), ("circle", 0), ("blink", 0), ("toss", 0),
               ("climb", -1), ("slalom", +1), ("fall", +1), ("pulse", 0)],
    "kinetics400": [("pulse", 0), ("zoom", -1), ("figure8", 0), ("dribble", 0), ("step_v", 0), ("launch", 0),
                    ("osc_h", 0), ("square", 0), ("dash", 0), ("zigzag", 0), ("still", 0), ("spiral", 0)],
    "ssv2": [(prim, sign) for _, prim, sign in _TABLE["ssv2"]],
}
SHARED_AT_MOST = 2
LOOKS = ("alike", "different")
_TABLES = {"alike": _TABLE,
           "different": {ds: [(name, *ms) for (name, _, _), ms in zip(_TABLE[ds], _MOTIONS_DIFFERENT[ds], strict=True)]
                         for ds in DATASETS}}

# -----------------------------------------------------------------------------
# visual domains. Static looks vary little inside a dataset (places, shapes, palette: how many
# backgrounds, actor shapes and actor colours it draws from, before jitter) and a lot between
# datasets: see render() for why.
# Sizes: (height, aspect) draws, width clamped to 64..176 and even (yuv420p). size: actor length
# in short sides; speed: multiplies every rate of the motion; noise: grain sigma in 0..255;
# flicker: per-frame gain; jitter: hand-held shake in short sides; pan: camera speed in short
# sides per second; distractors: (min, max) count; occlusion: probability of a pole in front.
_DOMAIN = {
    "hmdb51": dict(  # old film: muted colours on a flat wall, grain and flicker, 24-30 fps
        bg="flat", places=1, shapes=("ellipse",), palette=1, sat=(0.1, 0.45), size=(0.24, 0.34),
        heights=(72, 80, 96), aspects=(4 / 3, 1.45, 16 / 9), fps=(30, 25, 24), dur=(1.5, 3.5),
        speed=(0.8, 1.1), noise=(6, 12), flicker=0.05, jitter=0.012, pan=0.0, distractors=(0, 1), occlusion=0.15),
    "ucf101": dict(  # clean 4:3 look (128x96 here; 320x240 real): saturated actors on sky-to-ground gradients, mostly 25 fps
        bg="gradient", places=1, shapes=("diamond",), palette=1, sat=(0.6, 1.0), size=(0.26, 0.36),
        heights=(96,), aspects=(4 / 3,), fps=(25, 25, 30), dur=(1.5, 3.5),
        speed=(0.9, 1.2), noise=(2, 5), flicker=0.0, jitter=0.006, pan=0.0, distractors=(0, 1), occlusion=0.1),
    "kinetics400": dict(  # YouTube: textured outdoor scenes, panning camera, any size and fps
        bg="texture", places=1, shapes=("ellipse",), palette=1, sat=(0.3, 0.9), size=(0.28, 0.38),
        heights=(64, 72, 96, 128), aspects=(16 / 9, 4 / 3, 1.0, 3 / 4), fps=(12, 15, 24, 25, 30), dur=(1.5, 3.5),
        speed=(1.0, 1.35), noise=(2, 6), flicker=0.02, jitter=0.012, pan=0.04, distractors=(0, 2), occlusion=0.2),
    "ssv2": dict(  # phone close-ups: big boxy objects on cluttered table tops, mostly 12 fps, height 96
        bg="clutter", places=1, shapes=("rect",), palette=1, sat=(0.2, 0.8), size=(0.28, 0.38),
        heights=(96,), aspects=(1.0, 4 / 3, 1.5, 16 / 9), fps=(12, 12, 15), dur=(2.0, 4.0),
        speed=(0.7, 1.0), noise=(3, 6), flicker=0.0, jitter=0.01, pan=0.0, distractors=(0, 1), occlusion=0.1),
}
# look="different": four looks far apart, on every axis a small model could lean on. Extra keys:
# val: background brightness range (default 0.25..0.85); bg_sat: background saturation range
# (default from sat); texture: amplitude of the fine background texture (default 1); gray: a
# black-and-white film; cast: per-channel gains of the camera (a colour cast).
_DOMAIN_DIFFERENT = {
    "hmdb51": dict(  # night footage in black and white: dark flat rooms, heavy grain and flicker, small frames
        bg="flat", val=(0.04, 0.16), gray=True, places=1, shapes=("ellipse",), palette=1, sat=(0.0, 0.3),
        size=(0.22, 0.3), heights=(64, 72), aspects=(4 / 3, 16 / 9), fps=(24, 25, 30), dur=(1.5, 3.5),
        speed=(0.8, 1.1), noise=(12, 18), flicker=0.1, jitter=0.015, pan=0.0, distractors=(0, 1), occlusion=0.1),
    "ucf101": dict(  # bright studio: pale high-key gradients, big saturated actors, no grain, large frames
        bg="gradient", val=(0.85, 1.0), bg_sat=(0.0, 0.15), places=1, shapes=("diamond",), palette=1,
        sat=(0.85, 1.0), size=(0.36, 0.46), heights=(120, 128), aspects=(4 / 3,), fps=(25, 30), dur=(1.5, 3.5),
        speed=(0.9, 1.2), noise=(0, 1), flicker=0.0, jitter=0.004, pan=0.0, distractors=(0, 0), occlusion=0.0),
    "kinetics400": dict(  # jungle: busy high-contrast texture, green cast, tiny actors far away, panning
        bg="texture", val=(0.4, 0.6), bg_sat=(0.0, 0.3), texture=3.0, cast=(0.55, 1.25, 0.55), places=1,
        shapes=("ellipse",), palette=1, sat=(0.5, 1.0), size=(0.2, 0.26), heights=(64, 72, 96, 128), aspects=(16 / 9, 4 / 3, 1.0, 3 / 4),
        fps=(12, 15, 24, 30), dur=(1.5, 3.5), speed=(1.0, 1.3), noise=(2, 6), flicker=0.02, jitter=0.01,
        pan=0.05, distractors=(0, 2), occlusion=0.1),
    "ssv2": dict(  # warm close-ups: sepia-cast table tops, huge boxy objects, square frames, low fps
        bg="clutter", cast=(1.2, 0.9, 0.6), places=1, shapes=("rect",), palette=1, sat=(0.2, 0.7),
        size=(0.46, 0.58), heights=(96,), aspects=(1.0,), fps=(10, 12), dur=(2.0, 4.0),
        speed=(0.7, 1.0), noise=(3, 6), flicker=0.0, jitter=0.01, pan=0.0, distractors=(0, 1), occlusion=0.05),
}
_DOMAINS = {"alike": _DOMAIN, "different": _DOMAIN_DIFFERENT}
_CODEC = {"hmdb51": "mpeg4", "ucf101": "mpeg4", "kinetics400": "libx264", "ssv2": "libvpx-vp9"}


# -----------------------------------------------------------------------------
# motion: trajectories of the main object, in pixels and radians, vectorised over time

def _fit(p, lo, hi, rng):
    """A straight path placed at random inside [lo, hi], slowed down where it would not fit: the
    object never jumps from one edge to the other (a wrap-around inside an 8-frame window makes
    "moving down" look like "moving up")."""
    span = float(p.max() - p.min())
    if span > hi - lo:
        p, span = p * ((hi - lo) / span), hi - lo
    return lo + rng.uniform(0, hi - lo - span) + (p - p.min())


def _reflect(p, lo, hi):
    span = hi - lo
    q = np.mod(p - lo, 2 * span)
    return lo + np.where(q < span, q, 2 * span - q)


def motion(prim, sign, t, H, W, r, speed, rng):
    """-> x, y, scale, angle arrays over t (seconds) for a primitive; r is the object half-size."""
    S = min(H, W)
    sign = sign or rng.choice((-1, 1))
    v = rng.uniform(0.5, 0.9) * speed * S           # px / s: a few px per frame at 32 px and 8 fps
    f = rng.uniform(0.7, 1.2) * speed               # Hz of periodic motions: ~1 cycle per 8-frame clip
    ph = rng.uniform(0, 2 * np.pi)
    x = np.full_like(t, W / 2 + rng.uniform(-0.15, 0.15) * W)
    y = np.full_like(t, H / 2 + rng.uniform(-0.15, 0.15) * H)
    scale = np.ones_like(t)
    angle = np.full_like(t, rng.uniform(0, 2 * np.pi))
    if prim in ("move_h", "move_v", "step_h", "step_v"):
        d = v * t
        if prim.startswith("step"):  # stop and go: speed (1 - cos) swings between 0 and 2v
            w = 2 * np.pi * f * 0.7
            d = v * (t - (np.sin(w * t + ph) - np.sin(ph)) / w)
        if prim.endswith("h"):   # the centre may reach the border: half the object still shows
            x = _fit(sign * d, 0, W, rng)
        else:
            y = _fit(sign * d, 0, H, rng)
    elif prim in ("osc_h", "osc_v"):
        a = rng.uniform(0.25, 0.35) * S
        if prim == "osc_h":
            x = W / 2 + rng.uniform(-0.05, 0.05) * W + a * np.sin(2 * np.pi * f * t + ph)
        else:
            y = H / 2 + rng.uniform(-0.05, 0.05) * H + a * np.sin(2 * np.pi * f * t + ph)
    elif prim == "circle":  # clockwise on screen for sign +1 (y points down)
        R = rng.uniform(0.2, 0.3) * S
        x = W / 2 + R * np.cos(sign * 2 * np.pi * f * t + ph)
        y = H / 2 + R * np.sin(sign * 2 * np.pi * f * t + ph)
    elif prim == "bounce":  # |sin|: sharp turn at the floor, slow at the top, unlike osc_v
        a = rng.uniform(0.4, 0.5) * S
        y = H / 2 + a / 2 - a * np.abs(np.sin(np.pi * f * 0.8 * t + ph))
        x = _reflect(x + sign * 0.1 * S * t, r, W - r)
    elif prim == "zigzag":  # steady sideways drift, sharp vertical turns
        p = f * t + ph / (2 * np.pi)
        y = H / 2 + rng.uniform(0.2, 0.28) * S * (4 * np.abs(p - np.floor(p + 0.5)) - 1)
        x = _fit(sign * 0.8 * v * t, 0, W, rng)
    elif prim == "pulse":
        scale = 1 + 0.4 * np.sin(2 * np.pi * f * t + ph)
    elif prim == "zoom":  # steady exponential growth (or shrink) within the size limits
        lo, hi = np.log(0.55), np.log(1.7)
        k = min(rng.uniform(0.5, 0.8) * speed, (hi - lo) / max(float(t[-1]), 1e-3))
        s = rng.uniform(0, hi - lo - k * float(t[-1])) + k * t
        scale = np.exp(lo + s if sign > 0 else hi - s)
    elif prim == "spin":
        angle = angle + sign * rng.uniform(3.0, 6.0) * speed * t
    elif prim == "spin_stop":  # angular speed decays with time constant tau: quickly still
        tau = rng.uniform(0.3, 0.6)
        angle = angle + sign * rng.uniform(4.0, 7.0) * speed * tau * (1 - np.exp(-t / tau))
    # primitives of look="different" (_MOTIONS_DIFFERENT): each used by one dataset alone
    elif prim == "roll":  # a wheel: travels sideways, turning by the distance over its radius
        x = _fit(sign * v * t, 0, W, rng)
        angle = angle + (x - x[0]) / max(r, 1.0)
    elif prim == "beat":  # sharp swellings, flat in between (a heartbeat, not pulse's sine)
        scale = 1 + 0.6 * np.maximum(0, np.sin(2 * np.pi * 1.2 * f * t + ph)) ** 4
    elif prim in ("stairs", "climb"):  # stop and go upwards (sign -1); stairs step sideways in the
        w = 2 * np.pi * f                # pauses, climb sways from side to side as it pulls
        go = t - (np.sin(w * t + ph) - np.sin(ph)) / w
        y = _fit(sign * 0.6 * v * go, 0, H, rng)
        if prim == "stairs":
            x = _fit(rng.choice((-1, 1)) * 0.6 * v * (2 * t - go), 0, W, rng)
        else:
            x = x + 0.12 * S * np.sin(w / 2 * t + ph)
    elif prim == "sawtooth_v":  # slow steady rise (sign -1), quick drop back
        p = np.mod(0.8 * f * t + ph / (2 * np.pi), 1)
        y = H / 2 + sign * 0.4 * S * (np.where(p < 0.8, p / 0.8, (1 - p) / 0.2) - 0.5)
    elif prim == "rock":  # tilts to and fro in place
        angle = angle + rng.uniform(0.6, 0.9) * np.sin(2 * np.pi * f * t + ph)
    elif prim == "diagonal":  # straight along a diagonal, both directions drawn
        x = _fit(sign * 0.7 * v * t, 0, W, rng)
        y = _fit(rng.choice((-1, 1)) * 0.7 * v * t, 0, H, rng)
    elif prim == "shake":  # fast, small, sideways: 2.5-3.5 Hz, under the 4 Hz a clip of 8 fps shows
        x = x + rng.uniform(0.06, 0.1) * S * np.sin(2 * np.pi * rng.uniform(2.5, 3.5) * t + ph)
    elif prim == "blink":  # on and off in place
        scale = np.where(np.sin(2 * np.pi * f * t + ph) > 0, 1.0, 0.02)
    elif prim == "toss":  # up and down while spinning
        y = H / 2 + rng.uniform(0.2, 0.3) * S * np.sin(2 * np.pi * f * t + ph)
        angle = angle + sign * rng.uniform(4.0, 6.0) * speed * t
    elif prim == "slalom":  # steady drift down (sign +1) weaving from side to side
        y = _fit(sign * 0.5 * v * t, 0, H, rng)
        x = W / 2 + rng.uniform(0.2, 0.28) * S * np.sin(2 * np.pi * f * t + ph)
    elif prim in ("fall", "launch"):  # from rest, ever faster, then again from the start: gravity
        p = np.mod(f * t + ph / (2 * np.pi), 1)  # (fall, down for sign +1) or a push (launch)
        d = sign * 0.6 * S * (p ** 2 - 0.5)
        x, y = (x, H / 2 + d) if prim == "fall" else (W / 2 + d, y)
    elif prim == "figure8":
        R = rng.uniform(0.22, 0.3) * S
        x = W / 2 + R * np.sin(sign * 2 * np.pi * f * t + ph)
        y = H / 2 + 0.5 * R * np.sin(2 * (2 * np.pi * f * t + ph))
    elif prim == "dribble":  # quick small bounces in place: |sin| at 2-3 Hz
        y = y + rng.uniform(0.12, 0.18) * S * (0.5 - np.abs(np.sin(np.pi * rng.uniform(2.0, 3.0) * t + ph)))
    elif prim == "square":  # round a square at steady speed, clockwise for sign +1
        q = np.mod(sign * 0.8 * f * t + ph / (2 * np.pi), 1) * 4
        side = np.floor(q).astype(int)
        corners = np.array([(0, 0), (1, 0), (1, 1), (0, 1), (0, 0)], np.float32) - 0.5
        pos = corners[side] + (q - side)[:, None] * (corners[side + 1] - corners[side])
        L = rng.uniform(0.35, 0.45) * S
        x, y = W / 2 + L * pos[:, 0], H / 2 + L * pos[:, 1]
    elif prim == "dash":  # still, then a jump to another spot, every 0.3-0.5 s
        hold = rng.uniform(0.3, 0.5) / speed
        k = np.floor(t / hold + rng.uniform()).astype(int)
        spots = rng.uniform(0.25, 0.75, (int(k.max()) + 1, 2)) * (W, H)
        x, y = spots[k, 0], spots[k, 1]
    elif prim == "still":  # no motion of its own: only the camera's shake
        pass
    elif prim == "spiral":  # round and round, the radius swelling and shrinking
        R = rng.uniform(0.15, 0.2) * S * (1 + 0.6 * np.sin(np.pi * f * t + ph))
        turn = sign * 2 * np.pi * 1.3 * f * t + rng.uniform(0, 2 * np.pi)  # from anywhere on the round
        x, y = W / 2 + R * np.cos(turn), H / 2 + R * np.sin(turn)
    else:
        raise ValueError(f"unknown motion primitive {prim!r}")
    # float32 all the way: a float64 slipping in here doubles the cost of every paint below
    return [np.asarray(a, np.float32) for a in (x, y, scale, angle)]


def _shake(t, amp, rng):
    # hand-held camera: two small sinusoids per axis
    out = []
    for _ in range(2):
        fr, phs = rng.uniform(0.8, 3.0, 2), rng.uniform(0, 2 * np.pi, 2)
        out.append(amp * 0.5 * (np.sin(2 * np.pi * fr[0] * t + phs[0]) + np.sin(2 * np.pi * fr[1] * t + phs[1])))
    return [o.astype(np.float32) for o in out]


# -----------------------------------------------------------------------------
# appearance

def _colour(rng, sat, val=(0.35, 1.0)):
    return np.array(colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(*sat), rng.uniform(*val)), np.float32) * 255


def _lum(c):
    return float(c @ np.array([0.299, 0.587, 0.114], np.float32))


def _upsample(grid, H, W):
    # separable linear interpolation of a coarse random grid to H x W: a smooth texture.
    # (Gathers, not matrix products: tiny BLAS calls pay threading overheads in every worker.)
    def lerp(g, n, axis):
        pos = np.linspace(0, g.shape[axis] - 1, n, dtype=np.float32)
        i = np.minimum(pos.astype(int), g.shape[axis] - 2)
        w = (pos - i).astype(np.float32).reshape([-1 if ax == axis else 1 for ax in range(g.ndim)])
        return np.take(g, i, axis) * (1 - w) + np.take(g, i + 1, axis) * w
    return lerp(lerp(np.asarray(grid, np.float32), H, 0), W, 1)


def _background(kind, H, W, dom, rng):
    bg_sat = dom.get("bg_sat", (dom["sat"][0] * 0.5, dom["sat"][1] * 0.6))
    base = _colour(rng, bg_sat, dom.get("val", (0.25, 0.85)))
    if kind == "flat":  # muted wall with a soft vignette, like old indoor footage
        yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
        d = ((yy / H - 0.5) ** 2 + (xx / W - 0.5) ** 2)[..., None]
        return base * (1 - 0.6 * d)
    if kind == "gradient":  # sky-to-ground style blend along a random direction
        other = _colour(rng, dom.get("bg_sat", dom["sat"]), dom.get("val", (0.2, 0.9)))
        a = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
        g = (np.cos(a) * (xx / W - 0.5) + np.sin(a) * (yy / H - 0.5)) / 1.42 + 0.5
        return base + g[..., None] * (other - base)
    if kind == "texture":  # outdoor clutter: coarse colour blobs plus finer luminance texture
        # grids of fixed size: one place looks the same at every resolution
        coarse = _upsample(base + rng.normal(0, 20, (7, 9, 3)).astype(np.float32), H, W)
        fine = _upsample(rng.normal(0, 7 * dom.get("texture", 1), (24, 30, 1)).astype(np.float32), H, W)
        return coarse + fine
    if kind == "clutter":  # table top: two-tone surface with static items on it
        img = np.empty((H, W, 3), np.float32)
        edge = int(rng.uniform(0.3, 0.6) * H)
        img[:edge], img[edge:] = base, _colour(rng, (0.1, 0.5), (0.3, 0.8))
        for _ in range(rng.integers(4, 10)):
            h, w = (rng.uniform(0.08, 0.25, 2) * (H, W)).astype(int) + 2
            y0, x0 = rng.integers(0, H - h + 1), rng.integers(0, W - w + 1)
            img[y0:y0 + h, x0:x0 + w] = 0.5 * img[y0, x0] + 0.5 * _colour(rng, (0.1, 0.6), (0.2, 0.95))
        return img
    raise ValueError(kind)


def _shape_mask(kind, u, v, a, b):
    # soft (anti-aliased) inside-ness in [0, 1]; u, v in object coordinates, half-axes a, b
    if kind == "ellipse":
        d = (np.sqrt((u / a) ** 2 + (v / b) ** 2) - 1) * b
    elif kind == "rect":
        d = np.maximum(np.abs(u) - a, np.abs(v) - b)
    else:  # diamond
        d = (np.abs(u) / a + np.abs(v) / b - 1) * b * 0.8
    return np.clip(0.5 - d, 0, 1)


def _sprite(canvas, x, y, half, draw):
    """Composite one moving object into canvas [T, H, W, 3], touching only a box of 2 * half
    around its centre (x, y) in each frame: objects cover a few % of a frame, so this is several
    times cheaper than full-frame masks. draw(dx, dy) -> (alpha [T, B, B], colour) with dx, dy
    the offsets of the box's pixels from the centre."""
    T, H, W, _ = canvas.shape
    B = min(int(2 * half) + 3, H, W)
    # a box clipped into the frame still covers the visible part of an object half outside it
    y0 = np.clip(np.floor(y - B / 2).astype(int), 0, H - B)
    x0 = np.clip(np.floor(x - B / 2).astype(int), 0, W - B)
    rows, cols = y0[:, None] + np.arange(B), x0[:, None] + np.arange(B)
    idx = (np.arange(T)[:, None, None], rows[:, :, None], cols[:, None, :])
    dx = (cols + 0.5 - x[:, None]).astype(np.float32)[:, None, :]
    dy = (rows + 0.5 - y[:, None]).astype(np.float32)[:, :, None]
    alpha, colour = draw(dx, dy)
    box = canvas[idx]
    canvas[idx] = box + alpha[..., None] * (colour - box)


def render(dataset, label, seed=0, scene=0, index=0, look="alike", videos_seed=None):
    """Video `index` of `dataset`, of class `label`, shot in `scene` -> (frames uint8 [T, H, W, 3], fps).

    Static looks vary little inside a dataset: its place(s) and actor palette are shared by all
    classes and only jittered per scene/video, so the look says nothing about the label and a
    small model must learn the motion. (With one random look per video, a tiny 3D CNN memorises
    looks and stays at chance even with all labels.) Clips of one scene (a UCF group, an HMDB
    subject) share framing size, fps, actor look and white balance.

    look: "alike" (the default) draws the four datasets' looks moderately apart, and their classes
    share motion primitives: features learned on one dataset help the others by construction.
    "different" keeps that rule inside each dataset but sets the datasets far apart (dark
    grayscale hmdb51, bright large-actor ucf101, green textured tiny-actor kinetics400, sepia
    close-up ssv2: _DOMAIN_DIFFERENT) and gives them motions mostly their own (_MOTIONS_DIFFERENT),
    so whatever one dataset teaches another has to be found, not built in. Both looks are drawn
    by this one function, so they differ only where the tables say.

    seed draws the dataset (its palette and places, and its videos); videos_seed, when given, draws
    the scenes and videos instead: other videos of the same dataset, as a fresh validation set needs."""
    dom, d = _DOMAINS[look][dataset], DATASETS.index(dataset)
    rng_of = lambda s, *key: np.random.default_rng(np.random.SeedSequence([s, d, *key]))   # noqa: E731
    videos = seed if videos_seed is None else videos_seed
    srng, rng = rng_of(videos, 1, scene), rng_of(videos, 2, index)
    palette = [_colour(rng_of(seed, 3, i), dom["sat"]) for i in range(dom["palette"])]
    extras = 0.6 * (255 - palette[0]) + 0.4 * 128  # distractors: a muted complement of the actor
    # scene: frame size, fps, place, actor look
    H = int(srng.choice(dom["heights"]))
    W = int(np.clip(round(H * srng.choice(dom["aspects"]) / 2) * 2, 64, 176))
    fps = int(srng.choice(dom["fps"]))
    S = min(H, W)
    # the place is drawn larger than the frame: each video frames it differently, kinetics pans over it
    room = int(math.ceil(0.1 * S + dom["pan"] * S * dom["dur"][1] / 2 + (0.03 * S if dom["pan"] else 0))) + 1
    place = rng_of(seed, 4, int(srng.integers(dom["places"])))
    bg = _background(dom["bg"], H + 2 * room, W + 2 * room, dom, place).astype(np.float32)
    bg *= srng.uniform(0.9, 1.1, 3).astype(np.float32)  # white balance differs between cameras
    shape = srng.choice(dom["shapes"])
    colour = np.clip(palette[srng.integers(len(palette))] + srng.normal(0, 15, 3), 0, 255).astype(np.float32)
    if abs(_lum(colour) - _lum(bg.mean((0, 1)))) < 60:  # keep the actor visible on its background
        colour = 255 - colour
    a = srng.uniform(*dom["size"]) * S / 2
    b = a * srng.uniform(0.5, 0.8)  # elongated, and one half darker: rotation is visible
    # video: duration, motion, camera
    T = max(16, int(round(rng.uniform(*dom["dur"]) * fps)))
    t = np.arange(T, dtype=np.float32) / fps
    prim, sign = _TABLES[look][dataset][label][1:]
    x, y, scale, angle = motion(prim, sign, t, H, W, a, rng.uniform(*dom["speed"]), rng)
    jx, jy = _shake(t, dom["jitter"] * S, rng)
    x, y = x + jx, y + jy
    # camera over the place: a random framing, then (kinetics) a slow pan with shake. It follows
    # the actor, so only the jitter above moves the actor in the frame.
    fx, fy = rng.uniform(-0.1, 0.1, 2) * S + room
    if dom["pan"]:
        ang, ps = rng.uniform(0, 2 * np.pi), rng.uniform(0.3, 1.0) * dom["pan"] * S
        cx, cy = _shake(t, 0.02 * S, rng)
        ox = np.clip(np.round(fx + ps * np.cos(ang) * (t - t[-1] / 2) + cx), 0, 2 * room).astype(int)
        oy = np.clip(np.round(fy + ps * np.sin(ang) * (t - t[-1] / 2) + cy), 0, 2 * room).astype(int)
        frames = np.stack([bg[oy[i]:oy[i] + H, ox[i]:ox[i] + W] for i in range(T)])
    else:
        frames = np.broadcast_to(bg[int(fy):int(fy) + H, int(fx):int(fx) + W], (T, H, W, 3)).copy()

    for _ in range(rng.integers(dom["distractors"][0], dom["distractors"][1] + 1)):
        # small things wandering in straight lines, bouncing off the borders: motion with no label
        rd = rng.uniform(0.04, 0.08) * S
        vel = rng.uniform(0.2, 0.6) * S * rng.choice((-1, 1), 2)
        dxs = _reflect(rng.uniform(rd, W - rd) + vel[0] * t, rd, W - rd)
        dys = _reflect(rng.uniform(rd, H - rd) + vel[1] * t, rd, H - rd)
        col = np.clip(extras + rng.normal(0, 20, 3), 0, 255).astype(np.float32)
        _sprite(frames, dxs, dys, rd, lambda dx, dy: (np.clip(rd + 0.5 - np.sqrt(dx * dx + dy * dy), 0, 1), col))

    def actor(dx, dy):
        c, s, k = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None], 1 / scale[:, None, None]
        u, v = (dx * c + dy * s) * k, (dy * c - dx * s) * k
        shade = np.where(u > 0, np.float32(0.55), np.float32(1))[..., None]
        return _shape_mask(shape, u, v, a, b), colour * shade
    _sprite(frames, x, y, a * scale.max() + 1, actor)
    if rng.uniform() < dom["occlusion"]:  # a pole in front of the camera, hiding part of the path
        x0 = int(rng.uniform(0.2, 0.7) * W)
        frames[:, :, x0:x0 + int(rng.uniform(0.1, 0.18) * W)] = _colour(rng, (0, 0.5), (0.1, 0.6))
    if dom.get("gray"):  # black-and-white film: luminance only
        frames[:] = (frames @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
    if "cast" in dom:  # the camera's colour cast
        frames *= np.array(dom["cast"], np.float32)
    # sensor: per-frame gain (film flicker) and grey grain; uniform noise is 5x cheaper than normal
    frames *= 1 + dom["flicker"] * (2 * rng.random((T, 1, 1, 1), dtype=np.float32) - 1)
    grain = rng.random((T, H, W, 1), dtype=np.float32)
    grain -= 0.5
    grain *= rng.uniform(*dom["noise"]) * 12 ** 0.5  # uniform noise with that sigma
    frames += grain
    return np.clip(frames, 0, 255, out=frames).astype(np.uint8), fps


# -----------------------------------------------------------------------------
# encoding (in-process PyAV; bitexact so the bytes depend on the seed only)

def _encode(path, frames, fps, codec):
    import av  # imported where used (style guide); the workers import it once each
    fmt = {"mpeg4": "avi", "libx264": "mp4", "libvpx-vp9": "webm"}[codec]
    # fastest settings that still look like the real files; one thread: we parallelise over videos
    opts = {"libx264": {"preset": "superfast", "crf": "26", "threads": "1"},
            "libvpx-vp9": {"deadline": "realtime", "cpu-used": "8", "crf": "36", "b": "0",
                           "threads": "1", "lag-in-frames": "0", "row-mt": "0"}}.get(codec, {})
    tmp = path.with_name(path.name + ".part")  # a video appears under its name only when complete
    with av.open(str(tmp), "w", format=fmt, options={"fflags": "+bitexact"}) as out:
        st = out.add_stream(codec, rate=fps, options=opts)
        st.height, st.width, st.pix_fmt = frames.shape[1], frames.shape[2], "yuv420p"
        st.codec_context.flags |= av.codec.context.Flags.bitexact
        if codec == "mpeg4":  # Xvid FourCC and a modest bit rate (0.4 bit per pixel), as HMDB51 / UCF101
            st.codec_context.codec_tag = "XVID"
            st.codec_context.bit_rate = int(0.4 * frames.shape[1] * frames.shape[2] * fps)
        for f in frames:
            out.mux(st.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        out.mux(st.encode())
    os.replace(tmp, path)


def _make_video(job):
    seed, ds, index, label, scene, path, look, videos_seed = job
    frames, fps = render(ds, label, seed, scene, index, look, videos_seed)
    _encode(Path(path), frames, fps, _CODEC[ds])
    return 1


# -----------------------------------------------------------------------------
# layouts: each writes the annotation files and returns its video jobs
# (label, scene, path); the main process does all the drawing, so it is worker-independent

def _train_test_counts(n):
    n_test = max(1, round(0.3 * n))
    return n - n_test, n_test


def _write_lines(path, lines, eol):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:  # newline="": we choose the line ends, not the OS
        f.writelines(line + eol for line in lines)


_SUBJECTS = ["April_09", "AmericanGangster", "Bad_Boys_2", "Blonde_being_brushed", "Catch_Me_If_You_Can",
             "DerSchuh", "Faith_Rewarded", "Fellowship_3", "KUNG_FU_HUSTLE", "LONGESTYARD", "Megamind",
             "NoCountryForOldMen", "Pirates_5", "RushHour2", "Sixth_Sense", "TheBigLebowski",
             "Veoh_Alpha_Dog_1", "WhatWomenWant", "likebeckam", "prelinger_LetsPlay"]


def _hmdb51(root, n, rng):
    jobs = []
    for ci, cls in enumerate(CLASSES["hmdb51"]):
        # subjects (source movies) of 1-4 clips share a look; the split keeps a subject on one side
        subjects, names, order = [], [], rng.permutation(len(_SUBJECTS))
        while len(names) < n:
            s, size = len(subjects), min(n - len(names), int(rng.integers(1, max(1, min(4, n // 3)) + 1)))
            who = _SUBJECTS[order[s % len(order)]] + (f"_{s // len(order)}" if s >= len(order) else "")
            # body part, camera motion, people, view, quality: the real name fields, drawn per subject
            tags = "_".join([rng.choice(["f", "h", "u", "l"]), rng.choice(["cm", "nm"]), rng.choice(["np1", "np2"]),
                             rng.choice(["fr", "ba", "le", "ri"]), rng.choice(["bad", "med", "goo"])])
            subjects.append(list(range(len(names), len(names) + size)))
            for i in range(size):
                names.append(f"{who}_{cls}_{tags}_{i}.avi")
                jobs.append((ci, ci * 1000 + s, root / cls / names[-1]))
        _, n_test = _train_test_counts(n)
        for k in (1, 2, 3):
            tag, n_in_test = [1] * n, 0
            for sub in rng.permutation(len(subjects)):
                if n_in_test >= n_test or n_in_test + len(subjects[sub]) >= n:
                    continue
                for i in subjects[sub]:
                    tag[i] = 2
                n_in_test += len(subjects[sub])
            if n_in_test == 0:  # every subject was too big: test its first clip alone
                tag[0] = 2
            train = [i for i in range(n) if tag[i] == 1]
            for i in rng.permutation(train)[: max(0, (len(train) - 1) // 10)]:
                tag[i] = 0  # a few clips unused, as in the real split files
            lines = [f"{names[i]} {tag[i]} " for i in sorted(range(n), key=names.__getitem__)]
            _write_lines(root / "testTrainMulti_7030_splits" / f"{cls}_test_split{k}.txt", lines, "\n")
    return jobs


def ucf_test_groups(n_groups, split):
    """Groups (1-based) tested by split 1..3: disjoint consecutive blocks, as the real
    g01-07 / g08-14 / g15-21 for 25 groups; blocks wrap around when there are too few groups."""
    b = max(1, round(n_groups * 7 / 25))
    return sorted({((split - 1) * b + j) % n_groups + 1 for j in range(b)})


def _ucf101(root, n, rng):
    jobs, trainlists, testlists = [], {k: [] for k in (1, 2, 3)}, {k: [] for k in (1, 2, 3)}
    G = int(np.clip(round(n / 4.5), 2, 25))  # real: 25 groups of 4-7 clips
    for ci, cls in enumerate(CLASSES["ucf101"]):
        stem = "HandStandPushups" if cls == "HandstandPushups" else cls  # the real set's odd spelling
        sizes = np.full(G, n // G)
        sizes[rng.permutation(G)[: n % G]] += 1
        for g in range(1, G + 1):
            for c in range(1, sizes[g - 1] + 1):
                rel = f"{cls}/v_{stem}_g{g:02d}_c{c:02d}.avi"
                jobs.append((ci, ci * 1000 + g, root / "UCF-101" / rel))
                for k in (1, 2, 3):
                    if g in ucf_test_groups(G, k):
                        testlists[k].append(rel)
                    else:
                        trainlists[k].append(f"{rel} {ci + 1}")
    lists = root / "ucfTrainTestlist"
    _write_lines(lists / "classInd.txt", [f"{i + 1} {c}" for i, c in enumerate(CLASSES["ucf101"])], "\r\n")
    for k in (1, 2, 3):
        _write_lines(lists / f"trainlist0{k}.txt", trainlists[k], "\r\n")
        _write_lines(lists / f"testlist0{k}.txt", testlists[k], "\r\n")
    return jobs


_YT = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def _csv_field(s):
    # the real annotation files quote labels with spaces; csv.QUOTE_MINIMAL alone would not
    return '"' + s.replace('"', '""') + '"' if any(ch in s for ch in ' ,"') else s


def _kinetics400(root, n, rng, layout):
    rows, seen = [], set()
    n_train, _ = _train_test_counts(n)
    for ci, cls in enumerate(CLASSES["kinetics400"]):
        for i in range(n):
            while True:  # ids starting with '-' or holding '_' break naive parsers: include both
                yt = "".join(rng.choice(list(_YT), 11))
                if len(rows) % 7 == 0:
                    yt = "-" + yt[1:]
                if len(rows) % 5 == 0:
                    yt = yt[:4] + "_" + yt[5:]
                if yt not in seen:
                    break
            seen.add(yt)
            start = int(rng.integers(0, 300))
            rows.append((cls, yt, start, start + 10, "train" if i < n_train else "val", int(rng.uniform() < 0.1), ci))
    missing = set(rng.permutation(len(rows))[: max(1, round(0.03 * len(rows)))].tolist())
    jobs = []
    for split in ("train", "val"):
        part = sorted((r for r in rows if r[4] == split), key=lambda r: (r[0], r[1]))
        lines = ["label,youtube_id,time_start,time_end,split,is_cc"]
        lines += [f"{_csv_field(r[0])},{r[1]},{r[2]},{r[3]},{r[4]},{r[5]}" for r in part]
        _write_lines(root / "annotations" / f"{split}.csv", lines, "\n")
    for idx, (cls, yt, s, e, split, _, ci) in enumerate(rows):
        if idx in missing:  # listed in the csv, never downloaded
            continue
        name = f"{yt}_{s:06d}_{e:06d}.mp4"
        # MMAction2 layout: class folders renamed with '_' for ' ' (its rename_classnames.sh)
        folder = root / split if layout == "flat" else root / f"videos_{split}" / cls.replace(" ", "_")
        jobs.append((ci, idx, folder / name))
    return jobs


_THINGS = ["cup", "pen", "phone", "remote control", "book", "bottle", "box", "spoon", "shoe", "apple",
           "toy car", "wallet"]


def _ssv2(root, n, rng):
    n_train, n_val = _train_test_counts(n)
    C = len(SSV2_TEMPLATES)
    n_test = max(2, round(0.1 * n * C))
    labels = [ci for ci in range(C) for _ in range(n)] + rng.integers(0, C, n_test).tolist()
    ids = (rng.permutation(220000)[: len(labels)] + 1).tolist()
    entries = {"train": [], "validation": [], "test": []}
    jobs = []
    for j, (ci, vid) in enumerate(zip(labels, ids)):
        split = "test" if j >= n * C else ("train" if j % n < n_train else "validation")
        if split == "test":
            entries[split].append({"id": str(vid)})
        else:
            thing = str(rng.choice(_THINGS))
            tpl = SSV2_TEMPLATES[ci]
            label = tpl.replace("[something]", thing)
            entries[split].append({"id": str(vid), "label": label[0].lower() + label[1:], "template": tpl,
                                   "placeholders": [thing]})
        jobs.append((ci, j, root / "20bn-something-something-v2" / f"{vid}.webm"))
    lab = root / "labels"
    lab.mkdir(parents=True, exist_ok=True)
    (lab / "labels.json").write_text(json.dumps({c: str(i) for i, c in enumerate(CLASSES["ssv2"])}, indent=1))
    for split, items in entries.items():
        order = rng.permutation(len(items))  # the real files are not sorted by class
        (lab / f"{split}.json").write_text(json.dumps([items[i] for i in order], indent=1))
    return jobs


# -----------------------------------------------------------------------------

def generate(out, datasets=DATASETS, videos_per_class=30, seed=0, workers=None, kinetics_layout="flat",
             top_dirs=None, progress=None, look="alike", videos_seed=None, overwrite=False, log=None):
    """Write synthetic copies of `datasets` under `out` (one folder each, named by `top_dirs` or the
    dataset). kinetics_layout: "flat" (CVDF: train/, val/) or "per_class" (MMAction2: videos_train/
    <label>/). progress(n) is called as videos finish. The same seed gives the same files for any
    number of workers, and each dataset the same files whatever else is generated with it.
    videos_per_class: one number for all, or {dataset: number}. look: "alike" (datasets that share
    motion primitives, moderately different looks) or "different" (far-apart looks, motions mostly
    their own; same layouts, codecs and class names): see render(). videos_seed: other videos of
    the same datasets (their looks stay those of `seed`; the videos and file layouts come from
    videos_seed), e.g. a validation set for models trained on `seed`'s; another `seed` redraws the
    looks too, and models trained on one look read near chance on another. Returns {dataset: root folder}.

    A dataset folder already made with the same settings is kept as it is (even with `overwrite`);
    one cut short (a kill) is made again; one made with other settings is refused (InputError)
    unless `overwrite`, which replaces it; a non-empty folder synth did not make is always refused.
    All are checked before anything is written. log: a function of one line for what is kept or
    made again (None: quiet)."""
    datasets = [datasets] if isinstance(datasets, str) else list(datasets)
    unknown = [d for d in datasets if d not in DATASETS]
    if unknown:
        raise ValueError(f"unknown dataset(s) {unknown}; choose from {list(DATASETS)}")
    if look not in LOOKS:
        raise ValueError(f"look must be one of {list(LOOKS)}, not {look!r}")
    if kinetics_layout not in ("flat", "per_class"):
        raise ValueError(f"kinetics_layout must be 'flat' or 'per_class', not {kinetics_layout!r}")
    per_dataset = (dict(videos_per_class) if isinstance(videos_per_class, Mapping)
                   else {ds: videos_per_class for ds in datasets})
    missing = [ds for ds in datasets if ds not in per_dataset]
    if missing:
        raise ValueError(f"videos_per_class has no number for {missing}")
    if any(isinstance(per_dataset[ds], bool) or not hasattr(per_dataset[ds], "__index__") or per_dataset[ds] < 2
           for ds in datasets):   # __index__: ints, numpy's too; not 2.5
        raise ValueError("videos_per_class must be an integer of at least 2 (one train and one test clip per class), "
                         f"got {videos_per_class}")
    out, top_dirs = Path(out), top_dirs or {}
    videos_seed = seed if videos_seed is None else videos_seed
    roots = {ds: out / top_dirs.get(ds, ds) for ds in datasets}
    made = {ds: {"dataset": ds, "seed": seed, "videos_seed": videos_seed, "videos_per_class": per_dataset[ds],
                 "look": look, **({"kinetics_layout": kinetics_layout} if ds == "kinetics400" else {})}
            for ds in datasets}
    todo = _claim_folders(roots, made, overwrite, log or (lambda m: None))
    jobs = []
    for ds in todo:
        root = roots[ds]
        root.mkdir(parents=True, exist_ok=True)
        (root / INCOMPLETE).touch()
        rng = np.random.default_rng(np.random.SeedSequence([videos_seed, DATASETS.index(ds), 0]))
        if ds == "kinetics400":
            found = _kinetics400(root, per_dataset[ds], rng, kinetics_layout)
        else:
            found = {"hmdb51": _hmdb51, "ucf101": _ucf101, "ssv2": _ssv2}[ds](root, per_dataset[ds], rng)
        for index, (label, scene, path) in enumerate(found):
            path.parent.mkdir(parents=True, exist_ok=True)
            jobs.append((seed, ds, index, label, scene, str(path), look, videos_seed))
    workers = os.cpu_count() if workers is None else workers
    if workers <= 1:
        done = map(_make_video, jobs)
    else:
        # fork: no re-import of the caller's __main__, so plain scripts without a main guard work
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        pool = ctx.Pool(workers, _ignore_sigint)
        done = pool.imap_unordered(_make_video, jobs, chunksize=4)
    finished = False
    try:
        for n in done:
            if progress is not None:
                progress(n)
        finished = True
    finally:
        if workers > 1:
            # after a failure or Ctrl-C, close() + join() would wait for the jobs still queued: forever
            pool.close() if finished else pool.terminate()
            pool.join()
    for ds in todo:
        (roots[ds] / MADE).write_text(json.dumps(made[ds], indent=1))
        (roots[ds] / INCOMPLETE).unlink()
    return roots


def _legacy_names(folder: Path) -> list:
    """The dataset folders an older jedi-pipe synth recorded as its own in `folder` (settings unknown)."""
    try:
        names = json.loads((folder / LEGACY_RECORD).read_text())
    except (OSError, ValueError):
        return []
    return names if isinstance(names, list) else []


def _claim_folders(roots: dict, made: dict, overwrite: bool, log) -> list:
    """The datasets to generate; refuses (before any change) what must not be replaced, clears the rest."""
    todo, clear = [], []
    for ds, root in roots.items():
        if not (root.is_dir() and any(root.iterdir())):
            todo.append(ds)
            continue
        try:
            saved = json.loads((root / MADE).read_text())
        except OSError:
            saved = None
        except ValueError:   # a damaged record: synth's folder, settings unknown
            saved = {}
        ours = saved is not None or (root / INCOMPLETE).exists() or root.name in _legacy_names(root.parent)
        if not ours:
            raise InputError(f"{root}: not empty, and not made by jedi-pipe synth; choose another folder")
        if (root / INCOMPLETE).exists():
            log(f"{root}: cut short by an interrupted synth; generating again")
        elif saved == made[ds]:   # the same files again: nothing to do, even with overwrite
            log(f"{root}: already made with these settings; kept")
            continue
        elif not overwrite:
            diff = sorted(k for k in made[ds] if (saved or {}).get(k) != made[ds][k])
            raise InputError(f"{root}: made by an earlier synth with other settings ({', '.join(diff)}); "
                             f"overwrite=True (--overwrite) replaces it, or choose another folder")
        todo.append(ds)
        clear.append(root)
    for root in clear:
        shutil.rmtree(root)
    return todo


def _ignore_sigint():
    # Ctrl-C reaches every process of the terminal's group: the parent stops the pool, workers stay quiet
    signal.signal(signal.SIGINT, signal.SIG_IGN)
