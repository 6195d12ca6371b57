"""`etad synth`: the built-in synthetic action dataset used by the demo and the tests.

Each video shows a textured background that scrolls, a few distractor shapes that sit still (or
drift slowly) without acting, and 0-4 action instances. An instance is a shape that is already on
screen shortly before the action and stays after it: only its *motion* during the segment tells
that an action happens and which one. So the detector has to read motion over time, not spot a
shape. Classes are documented in docs/synthetic_dataset.md.

Two options tell ETAD's story (docs/synthetic_dataset.md): `pretrain_videos` adds a "pretraining"
subset of clean videos (actions alone on a plain, still background) for `etad train --encoder`;
`movers` adds to every detection video two or three hollow shapes that perform the video's activity
without being an action (not annotated). An encoder pretrained on the clean clips has never seen a
hollow shape and answers to their motion as to an action's; training it end to end on the
detection videos can teach it the difference, frozen features cannot.

Everything is drawn from one seed: the same seed gives the same annotation files, byte for byte.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stages.core.errors import UserError
from stages.core.files import write_json
from stages.core.progress import SILENT, Progress
from stages.data.synthetic_frames import CLASSES, Distractor, Instance, VideoPlan, render_frames
from stages.data.video_writer import write_video

SHAPES = ("square", "disk", "bar")
MAX_INSTANCES = 4
MIN_ACTION_S, MAX_ACTION_S = 1.0, 15.0
MIN_VIDEO_S, MAX_VIDEO_S = 10.0, 60.0
MULTI_LABEL_INSTANCES = (2, 6)  # instances per video with `multi_label` (fewest, most)
EDGE_PROBABILITY = 0.2  # chance that an instance is pinned to the video start (and, separately, the end)


def _color(rng: np.random.Generator) -> tuple[int, int, int]:
    hue = rng.random()
    rgb = [0.5 + 0.5 * math.cos(2 * math.pi * (hue + k / 3)) for k in range(3)]
    return tuple(int(40 + 215 * c) for c in rgb)  # type: ignore[return-value]


def _place_instances(
    rng: np.random.Generator, num_frames: int, fps: float, count: int
) -> list[tuple[int, int]]:
    """Non-overlapping [start, end) frame ranges, some pinned to the video start or end."""
    lengths = sorted(
        (int(round(rng.uniform(MIN_ACTION_S, MAX_ACTION_S) * fps)) for _ in range(count)), reverse=True
    )
    gap = int(fps)  # at least a second between instances
    taken: list[tuple[int, int]] = []
    pin_start = rng.random() < EDGE_PROBABILITY
    pin_end = rng.random() < EDGE_PROBABILITY
    for length in lengths:
        length = min(length, num_frames)
        candidates = []
        if pin_start:
            candidates.append(0)
        if pin_end:
            candidates.append(num_frames - length)
        candidates += [int(rng.integers(0, num_frames - length + 1)) for _ in range(50)]
        for start in candidates:
            end = start + length
            if all(end + gap <= s or start >= e + gap for s, e in taken):
                taken.append((start, end))
                pin_start = pin_start and start != 0
                pin_end = pin_end and end != num_frames
                break
    return sorted(taken)


def _instance(
    rng: np.random.Generator,
    label: int,
    start: int,
    end: int,
    *,
    num_frames: int,
    fps: float,
    width: int,
    height: int,
) -> Instance:
    """An actor of class `label` acting over frames [start, end), on screen a little before and after."""
    size_unit = min(width, height)
    pad_before = int(rng.uniform(0.3, 2.0) * fps)
    pad_after = int(rng.uniform(0.3, 2.0) * fps)
    size = rng.uniform(0.07, 0.11) * size_unit
    inst = Instance(
        label=label,
        start=start,
        end=end,
        visible_from=max(0, start - pad_before),
        visible_to=min(num_frames, end + pad_after),
        x=rng.uniform(0.25, 0.75) * width,
        y=rng.uniform(0.3, 0.7) * height,
        size=size,
        color=_color(rng),
    )
    name = CLASSES[label][0]
    if name == "slide":
        inst.params = {"distance": rng.uniform(0.3, 0.5) * width}
        inst.x = rng.uniform(0.1, 0.3) * width
    elif name == "spin":
        inst.params = {"turns": float(rng.integers(1, 4)), "angle": rng.uniform(0, math.pi)}
    elif name == "bounce":
        inst.params = {"bounces": float(rng.integers(2, 5)), "height": rng.uniform(0.2, 0.35) * height}
        inst.y = rng.uniform(0.6, 0.8) * height
    elif name == "blink":
        inst.params = {"half_period": fps / 6.0}  # off/on three times a second
    elif name == "orbit":
        inst.params = {"loops": float(rng.integers(1, 3)), "radius": rng.uniform(0.12, 0.2) * size_unit}
    return inst


def _overlapping_ranges(rng: np.random.Generator, num_frames: int, fps: float) -> list[tuple[int, int]]:
    """MULTI_LABEL_INSTANCES [start, end) frame ranges placed independently: they may overlap."""
    ranges = []
    for _ in range(int(rng.integers(MULTI_LABEL_INSTANCES[0], MULTI_LABEL_INSTANCES[1] + 1))):
        length = min(int(round(rng.uniform(MIN_ACTION_S, MAX_ACTION_S) * fps)), num_frames)
        start = int(rng.integers(0, num_frames - length + 1))
        ranges.append((start, start + length))
    return sorted(ranges)


def plan_video(
    video_id: str,
    rng: np.random.Generator,
    num_classes: int,
    fps: float,
    *,
    width: int,
    height: int,
    clean: bool = False,
    movers: bool = False,
    multi_label: bool = False,
) -> VideoPlan:
    """Draw everything about one video (no pixels yet). `clean`: a plain still background and no
    distractors (pretraining videos); `movers`: add hollow shapes that act out a motion;
    `multi_label`: instances of several classes, free to overlap in time (as in EPIC-KITCHENS or
    MultiTHUMOS) instead of one activity per video."""
    num_frames = int(round(rng.uniform(MIN_VIDEO_S, MAX_VIDEO_S) * fps))
    if multi_label:
        ranges = _overlapping_ranges(rng, num_frames, fps)
        labels = [int(rng.integers(0, num_classes)) for _ in ranges]
        label = labels[0]  # the movers' motion
    else:
        ranges = _place_instances(rng, num_frames, fps, int(rng.integers(0, MAX_INSTANCES + 1)))
        label = int(rng.integers(0, num_classes))  # one activity per video, as in ActivityNet
        labels = [label] * len(ranges)
    frames = dict(num_frames=num_frames, fps=fps, width=width, height=height)
    instances = [_instance(rng, lab, start, end, **frames) for lab, (start, end) in zip(labels, ranges)]
    if clean:
        still = dict(background_velocity=(0.0, 0.0), plain=True)
        return VideoPlan(
            video_id, num_frames, instances, [], background_seed=int(rng.integers(0, 2**31)), **still
        )
    distractors = [_distractor(rng, num_frames, width, height) for _ in range(int(rng.integers(1, 4)))]
    velocity = (float(rng.uniform(-1.0, 1.0)), float(rng.uniform(-0.6, 0.6)))
    background = dict(background_seed=int(rng.integers(0, 2**31)), background_velocity=velocity)
    plan = VideoPlan(video_id, num_frames, instances, distractors, **background)
    if movers:  # drawn last, so that a dataset without them is the same as before
        for _ in range(int(rng.integers(2, 4))):
            length = min(int(round(rng.uniform(MIN_ACTION_S, MAX_ACTION_S) * fps)), num_frames)
            start = int(rng.integers(0, num_frames - length + 1))
            # the video's own activity: a mover differs from an actor in how it looks, not in its
            # motion, so telling them apart is left to the detector's features
            mover = _instance(rng, label, start, start + length, **frames)
            mover.hollow = True
            plan.movers.append(mover)
    return plan


def _distractor(rng: np.random.Generator, num_frames: int, width: int, height: int) -> Distractor:
    """A shape that never acts: it drifts slowly, and may appear or vanish part-way."""
    a = int(rng.integers(0, num_frames))
    b = int(rng.integers(0, num_frames))
    return Distractor(
        shape=SHAPES[int(rng.integers(0, len(SHAPES)))],
        x=rng.uniform(0.1, 0.9) * width,
        y=rng.uniform(0.1, 0.9) * height,
        size=rng.uniform(0.06, 0.1) * min(width, height),
        angle=rng.uniform(0, math.pi),
        color=_color(rng),
        drift=(rng.uniform(-0.05, 0.05), rng.uniform(-0.05, 0.05)),
        visible_from=min(a, b) if rng.random() < 0.5 else 0,
        visible_to=max(a, b) + 1 if rng.random() < 0.5 else num_frames,
    )


def _annotation_files(
    plans: list[VideoPlan], subsets: list[str], class_names: list[str], fps: float, *, params: dict
) -> tuple[dict, dict]:
    """The ActivityNet-1.3 style and THUMOS-14 (ActionFormer) style annotation mappings."""
    anet_db, thumos_db = {}, {}
    thumos_subset = {"training": "Validation", "validation": "Test", "pretraining": "Pretraining"}
    for plan, subset in zip(plans, subsets):
        duration = plan.num_frames / fps
        anet_anns, thumos_anns = [], []
        for inst in plan.instances:
            segment = [round(inst.start / fps, 6), round(inst.end / fps, 6)]
            anet_anns.append({"segment": segment, "label": class_names[inst.label]})
            thumos_anns.append(
                {
                    "label": class_names[inst.label],
                    "segment": segment,
                    "segment(frames)": [float(inst.start), float(inst.end)],
                    "label_id": inst.label,
                }
            )
        anet_db[plan.video_id] = {"subset": subset, "duration": round(duration, 6), "annotations": anet_anns}
        thumos_db[plan.video_id] = {
            "subset": thumos_subset[subset],
            "duration": round(duration, 6),
            "fps": fps,
            "annotations": thumos_anns,
        }
    taxonomy = [
        {"nodeId": i + 1, "nodeName": name, "parentId": 0, "parentName": "Root"}
        for i, name in enumerate(class_names)
    ]
    anet = {
        "version": "VERSION 1.3 (etad synthetic)",
        "taxonomy": taxonomy,
        "database": anet_db,
        "etad_synth": params,
    }
    thumos = {"version": "Thumos14-style (etad synthetic)", "database": thumos_db, "etad_synth": params}
    return anet, thumos


@dataclass
class SynthSummary:
    out_dir: Path
    videos: int
    written: int
    skipped: int
    instances: int
    train_videos: int
    val_videos: int
    pretrain_videos: int = 0


MAX_VIDEOS = 100_000  # ten times ActivityNet's count: a plan held whole stays small


def run(
    out_dir: Path,
    *,
    videos: int = 24,
    classes: int = 4,
    seed: int = 0,
    fps: float = 15.0,
    width: int = 128,
    height: int = 96,
    pretrain_videos: int = 0,
    movers: bool = False,
    multi_label: bool = False,
    progress: Progress = SILENT,
) -> SynthSummary:
    """Plan and write the dataset. Videos already written for the same parameters are kept
    (resumable). It takes no settings file: the synthetic dataset is an input of the pipeline.
    `pretrain_videos` clean videos form the "pretraining" subset; `movers` adds hollow movers to
    the detection videos (module docstring); `multi_label` gives the detection videos instances of
    several classes that may overlap (plan_video)."""
    _check_bounds(videos=videos, pretrain_videos=pretrain_videos, fps=fps, width=width, height=height)
    shape, kinds = dict(width=width, height=height), dict(movers=movers, multi_label=multi_label)
    params = _parameters(videos, classes, seed, fps, **shape, pretrain_videos=pretrain_videos, **kinds)
    progress.start(videos + pretrain_videos)
    out_dir, video_dir, anet_path = Path(out_dir), Path(out_dir) / "videos", Path(out_dir) / "anet.json"
    video_dir.mkdir(parents=True, exist_ok=True)
    reuse = _written_with(anet_path, params)
    class_names = [name for name, _, _ in CLASSES[:classes]]
    n_val = max(1, round(0.3 * videos)) if videos > 1 else 0
    subsets = ["training"] * (videos - n_val) + ["validation"] * n_val + ["pretraining"] * pretrain_videos
    plans = [
        plan_video(f"synth_{i:04d}", np.random.default_rng([seed, i]), classes, fps, **shape, **kinds)
        for i in range(videos)
    ] + [
        plan_video(
            f"synth_pre_{i:04d}",
            np.random.default_rng([seed, 1_000_000 + i]),
            classes,
            fps,
            **shape,
            clean=True,
        )
        for i in range(pretrain_videos)
    ]
    written = 0
    for plan in plans:
        path = video_dir / f"{plan.video_id}.mp4"
        if not (reuse and path.is_file()):
            write_video(path, render_frames(plan, width, height), fps)
            written += 1
        progress.advance()
    anet, thumos = _annotation_files(plans, subsets, class_names, fps, params=params)
    write_json(out_dir / "thumos.json", thumos)
    write_json(anet_path, anet)  # last: its parameters mark the videos as complete
    counts = dict(videos=videos, written=written, skipped=len(plans) - written)
    counts |= dict(
        instances=sum(len(p.instances) for p in plans), train_videos=videos - n_val, val_videos=n_val
    )
    return SynthSummary(out_dir=out_dir, pretrain_videos=pretrain_videos, **counts)


def _written_with(anet_path: Path, params: dict) -> bool:
    """Whether the videos beside `anet_path` were written with these parameters (then kept); if not,
    the old annotation file goes first: it no longer marks them done."""
    previous = json.loads(anet_path.read_text()) if anet_path.is_file() else {}
    if previous.get("etad_synth") == params:
        return True
    anet_path.unlink(missing_ok=True)
    return False


def _check_bounds(**values: float) -> None:
    """Bounded: memory, disk and time are planned from these."""
    bounds = {"videos": (1, MAX_VIDEOS), "pretrain_videos": (0, MAX_VIDEOS), "fps": (1, 120)}
    bounds |= {"width": (32, 3840), "height": (32, 2160)}
    for name, value in values.items():
        low, high = bounds[name]
        if not low <= value <= high:
            raise UserError(f"synth: {name.replace('_', ' ')} {value} is outside [{low}, {high}]")


def _parameters(
    videos: int,
    classes: int,
    seed: int,
    fps: float,
    *,
    width: int,
    height: int,
    pretrain_videos: int,
    movers: bool,
    multi_label: bool = False,
) -> dict:
    """The dataset's parameters after checking them (recorded in anet.json: a rerun with the same
    ones keeps the videos already written)."""
    if not 1 <= classes <= len(CLASSES):
        raise UserError(f"--classes: must be between 1 and {len(CLASSES)}, got {classes}")
    if videos < 1:
        raise UserError(f"--videos: must be at least 1, got {videos}")
    if pretrain_videos < 0:
        raise UserError(f"--pretrain-videos: must be at least 0, got {pretrain_videos}")
    if width % 2 or height % 2 or width < 32 or height < 32:
        raise UserError(f"frame size must be even and at least 32x32, got {width}x{height}")
    params = {"videos": videos, "classes": classes, "seed": seed, "fps": fps}
    params.update(width=width, height=height)
    if pretrain_videos or movers:  # only then, so that earlier datasets keep their parameters
        params.update(pretrain_videos=pretrain_videos, movers=movers)
    if movers:  # movers once acted another class: a dataset written then no longer matches
        params["mover_motion"] = "activity"
    if multi_label:
        params["multi_label"] = True
    return params
