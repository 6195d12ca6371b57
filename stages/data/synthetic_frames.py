"""The synthetic dataset's videos drawn: its classes (a shape and a motion each), what a video holds
(VideoPlan: its actors, distractors and background) and its frames, rendered from the plan alone."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

# (name, shape drawn, what the motion is). The order fixes the label ids.
CLASSES: list[tuple[str, str, str]] = [
    ("slide", "square", "moves in a straight line across the frame, left to right"),
    ("grow", "disk", "grows to about three times its radius, steadily"),
    ("spin", "bar", "rotates about its centre, at least one full turn"),
    ("bounce", "disk", "bounces up and down, two to four times"),
    ("blink", "square", "switches off and on about three times a second"),
    ("orbit", "disk", "travels around a circle, at least one loop"),
]


@dataclass
class Instance:
    label: int
    start: int  # first frame of the action
    end: int  # one past the last frame of the action
    visible_from: int  # the actor sits still on screen from here ...
    visible_to: int  # ... to here (exclusive)
    x: float
    y: float
    size: float
    color: tuple[int, int, int]
    params: dict[str, float] = field(default_factory=dict)
    hollow: bool = False  # drawn as an outline: a mover (a distractor), not an actor


@dataclass
class Distractor:
    shape: str
    x: float
    y: float
    size: float
    angle: float
    color: tuple[int, int, int]
    drift: tuple[float, float]
    visible_from: int
    visible_to: int


@dataclass
class VideoPlan:
    video_id: str
    num_frames: int
    instances: list[Instance]
    distractors: list[Distractor]
    background_seed: int
    background_velocity: tuple[float, float]
    movers: list[Instance] = field(default_factory=list)  # hollow shapes acting out a motion, unannotated
    plain: bool = False  # a flat, still background (the clean pretraining videos)


def _background(seed: int, width: int, height: int) -> np.ndarray:
    """A smooth, low-contrast coloured noise texture twice the frame size (it scrolls and wraps)."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((height // 8 + 1, width // 8 + 1, 3))
    big = np.kron(coarse, np.ones((16, 16, 1)))[: 2 * height, : 2 * width]
    fine = rng.random((2 * height, 2 * width, 1)) * 0.25
    return (60 + 80 * big + 60 * fine).astype(np.float32)


def _shape_mask(
    shape: str, xx: np.ndarray, yy: np.ndarray, x: float, *, y: float, size: float, angle: float
) -> np.ndarray:
    dx, dy = xx - x, yy - y
    if shape == "disk":
        return dx * dx + dy * dy <= size * size
    if shape == "square":
        c, s = math.cos(angle), math.sin(angle)
        return (np.abs(c * dx + s * dy) <= size) & (np.abs(-s * dx + c * dy) <= size)
    c, s = math.cos(angle), math.sin(angle)  # bar: long and thin
    return (np.abs(c * dx + s * dy) <= 2.2 * size) & (np.abs(-s * dx + c * dy) <= 0.45 * size)


def _actor_pose(inst: Instance, frame: int) -> tuple[bool, float, float, float, float]:
    """(visible, x, y, size, angle) of an actor at a frame; outside [start, end) it holds its end pose."""
    name = CLASSES[inst.label][0]
    t = min(max((frame - inst.start) / max(inst.end - inst.start, 1), 0.0), 1.0)
    x, y, size, angle, visible = inst.x, inst.y, inst.size, inst.params.get("angle", 0.0), True
    if name == "slide":
        x = inst.x + inst.params["distance"] * t
    elif name == "grow":
        size = inst.size * (1.0 + 2.0 * t)
    elif name == "spin":
        angle += 2 * math.pi * inst.params["turns"] * t
    elif name == "bounce":
        y = inst.y - inst.params["height"] * abs(math.sin(math.pi * inst.params["bounces"] * t))
    elif name == "blink":
        half_periods = int((frame - inst.start) / inst.params["half_period"])
        visible = not (inst.start <= frame < inst.end and half_periods % 2 == 1)
    elif name == "orbit":
        phase = 2 * math.pi * inst.params["loops"] * t
        r = inst.params["radius"]
        x, y = inst.x + r * math.sin(phase), inst.y - r * (1 - math.cos(phase))
    return visible, x, y, size, angle


def _actor_mask(inst: Instance, frame: int, xx: np.ndarray, yy: np.ndarray) -> np.ndarray | None:
    """The pixels an actor (or a mover: its outline) covers at a frame, None when not visible."""
    if not inst.visible_from <= frame < inst.visible_to:
        return None
    visible, x, y, size, angle = _actor_pose(inst, frame)
    if not visible:
        return None
    shape = CLASSES[inst.label][1]
    mask = _shape_mask(shape, xx, yy, x, y=y, size=size, angle=angle)
    if inst.hollow:
        mask &= ~_shape_mask(shape, xx, yy, x, y=y, size=0.55 * size, angle=angle)
    return mask


def render_frames(plan: VideoPlan, width: int, height: int) -> Iterator[np.ndarray]:
    """Yield the uint8 RGB frames [H, W, 3] of a planned video."""
    texture = _background(plan.background_seed, width, height)
    if plan.plain:
        texture = np.broadcast_to(texture.mean(axis=(0, 1)), texture.shape).astype(np.float32)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    vx, vy = plan.background_velocity
    for f in range(plan.num_frames):
        ox, oy = int(round(vx * f)) % width, int(round(vy * f)) % height
        frame = texture[oy : oy + height, ox : ox + width].copy()
        for d in plan.distractors:
            if d.visible_from <= f < d.visible_to:
                mask = _shape_mask(
                    d.shape, xx, yy, d.x + d.drift[0] * f, y=d.y + d.drift[1] * f, size=d.size, angle=d.angle
                )
                frame[mask] = d.color
        for inst in plan.movers + plan.instances:
            mask = _actor_mask(inst, f, xx, yy)
            if mask is not None:
                frame[mask] = inst.color
        yield frame.astype(np.uint8)
