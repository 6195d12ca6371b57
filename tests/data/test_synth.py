"""The built-in synthetic dataset: real mp4s that decord opens, annotations that match them, determinism."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from stages import synth
from stages.data.video_io import TimedVideo, decord_available
from tests.helpers import REPO, assert_clean_failure

pytestmark = pytest.mark.slow


def test_same_seed_writes_identical_annotation_files(synth_dir, tmp_path):
    again = tmp_path / "again"
    synth.run(again, videos=6, classes=4, seed=7, width=64, height=48)
    for name in ("anet.json", "thumos.json"):
        assert (again / name).read_bytes() == (synth_dir / name).read_bytes()
    other = tmp_path / "other"
    synth.run(other, videos=6, classes=4, seed=8, width=64, height=48)
    assert (other / "anet.json").read_bytes() != (synth_dir / "anet.json").read_bytes()


def test_videos_are_the_same_bytes_whatever_the_process_imported_first(synth_dir, tmp_path):
    # with x264's macroblock tree, synth_0001 of this dataset came out different after `import av`
    # than in a plain process (and so did every figure measured on it)
    write = "from stages import synth; synth.run({!r}, videos=6, classes=4, seed=7, width=64, height=48)"
    for first in ("import av", "import etad_cli.app"):
        out = tmp_path / first.split()[-1]
        code = f"{first}; " + write.format(str(out))
        subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)
        for video in sorted((synth_dir / "videos").glob("*.mp4")):
            assert (out / "videos" / video.name).read_bytes() == video.read_bytes(), (first, video.name)


def test_rerun_keeps_finished_videos(synth_dir):
    before = {p.name: p.stat().st_mtime_ns for p in (synth_dir / "videos").glob("*.mp4")}
    summary = synth.run(synth_dir, videos=6, classes=4, seed=7, width=64, height=48)
    assert (summary.written, summary.skipped) == (0, 6)
    assert before == {p.name: p.stat().st_mtime_ns for p in (synth_dir / "videos").glob("*.mp4")}


@pytest.mark.skipif(not decord_available(), reason="decord has no wheel for this platform")
def test_every_video_opens_with_decord_and_matches_its_annotation(synth_dir):
    anet = json.loads((synth_dir / "anet.json").read_text())
    thumos = json.loads((synth_dir / "thumos.json").read_text())
    classes = {node["nodeName"] for node in anet["taxonomy"]}
    assert len(classes) == 4
    subsets = [v["subset"] for v in anet["database"].values()]
    assert subsets.count("training") == 4 and subsets.count("validation") == 2
    for video_id, entry in anet["database"].items():
        video = TimedVideo(synth_dir / "videos" / f"{video_id}.mp4", 15.0, backend="decord")
        assert video.facts.source_fps == pytest.approx(15.0) and video.facts.header_fps == pytest.approx(15.0)
        assert len(video) == video.facts.coded_frames == round(entry["duration"] * 15)
        assert video.read([0]).shape == (1, 48, 64, 3) and video.facts.anomalies(15.0) == []
        assert synth.MIN_VIDEO_S - 0.1 <= entry["duration"] <= synth.MAX_VIDEO_S + 0.1
        assert len(entry["annotations"]) <= synth.MAX_INSTANCES
        for ann in entry["annotations"]:
            start, end = ann["segment"]
            assert ann["label"] in classes
            assert 0 <= start < end <= entry["duration"] + 1e-6
        thumos_entry = thumos["database"][video_id]
        assert thumos_entry["fps"] == 15.0
        assert thumos_entry["subset"] == {"training": "Validation", "validation": "Test"}[entry["subset"]]
        for ann, t_ann in zip(entry["annotations"], thumos_entry["annotations"]):
            assert t_ann["segment(frames)"] == pytest.approx([x * 15 for x in ann["segment"]], abs=1e-3)


def test_pyav_fallback_reads_the_same_frame_count(synth_dir):
    video = sorted((synth_dir / "videos").glob("*.mp4"))[0]
    reader = TimedVideo(video, 15.0, backend="pyav")
    assert reader.read([0, len(reader) - 1]).shape == (2, 48, 64, 3)
    if decord_available():
        assert len(reader) == len(TimedVideo(video, 15.0, backend="decord"))


def test_plans_cover_the_promised_variety():
    plans = [
        synth.plan_video(f"v{i}", np.random.default_rng([1, i]), 6, 15.0, width=128, height=96)
        for i in range(300)
    ]
    instances = [inst for p in plans for inst in p.instances]
    counts = {len(p.instances) for p in plans}
    assert counts == {0, 1, 2, 3, 4}
    assert {inst.label for inst in instances} == set(range(6))
    lengths = np.array([(inst.end - inst.start) / 15.0 for inst in instances])
    assert lengths.min() >= 1.0 - 1e-6 and lengths.max() <= 15.0 + 1e-6
    assert any(inst.start == 0 for inst in instances)
    assert any(inst.end == p.num_frames for p in plans for inst in p.instances)
    assert all(p.distractors for p in plans)
    assert all(len({inst.label for inst in p.instances}) <= 1 for p in plans)  # one activity per video
    for p in plans:  # instances never overlap
        spans = sorted((i.start, i.end) for i in p.instances)
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))


def _instances_of(label: int):
    for i in range(1000):
        plan = synth.plan_video("v", np.random.default_rng([label, i]), 6, 15.0, width=128, height=96)
        yield from (inst for inst in plan.instances if inst.label == label)


@pytest.mark.parametrize("label", range(len(synth.CLASSES)), ids=[c[0] for c in synth.CLASSES])
def test_actors_move_only_during_their_action(label):
    """With the background and distractors held still, pixels change only inside the segment."""
    inst = next(_instances_of(label))
    inst.start, inst.end, inst.visible_from, inst.visible_to = 45, 105, 15, 135
    plan = synth.VideoPlan("v", 150, [inst], [], background_seed=0, background_velocity=(0.0, 0.0))
    frames = np.stack(list(synth.render_frames(plan, 128, 96))).astype(np.int16)
    change = np.abs(np.diff(frames, axis=0)).sum(axis=(1, 2, 3))  # change[i]: frame i -> i+1
    assert change[15:44].max() == 0 and change[105:134].max() == 0  # on screen and still
    assert all(change[i : i + 3].max() > 0 for i in range(45, 102))  # acting: changes at least every 3 frames
    assert change[14] > 0 and change[134] > 0  # appears, disappears


def test_the_story_options_add_clean_pretraining_videos_and_unannotated_movers(tmp_path):
    summary = synth.run(
        tmp_path, videos=4, classes=3, seed=3, width=64, height=48, pretrain_videos=2, movers=True
    )
    assert summary.pretrain_videos == 2
    anet = json.loads((tmp_path / "anet.json").read_text())
    subsets = [v["subset"] for v in anet["database"].values()]
    assert subsets.count("pretraining") == 2 and subsets.count("training") + subsets.count("validation") == 4
    # without the options the detection videos are the dataset they always were
    plain = synth.run(tmp_path / "plain", videos=4, classes=3, seed=3, width=64, height=48)
    before = json.loads((tmp_path / "plain" / "anet.json").read_text())["database"]
    assert plain.pretrain_videos == 0
    for vid, entry in before.items():
        assert anet["database"][vid]["annotations"] == entry["annotations"]
    # pretraining videos: a plain, still background; detection videos: movers, which are never annotated
    clean = synth.plan_video(
        "p", np.random.default_rng([3, 1_000_000]), 3, 15.0, width=64, height=48, clean=True
    )
    assert clean.plain and not clean.distractors and not clean.movers
    busy = [
        synth.plan_video("v", np.random.default_rng([3, i]), 3, 15.0, width=64, height=48, movers=True)
        for i in range(20)
    ]
    assert all(2 <= len(p.movers) <= 3 and all(m.hollow for m in p.movers) for p in busy)
    # a mover acts out the video's activity: it differs from an actor by its look, not its motion
    assert all(m.label == p.instances[0].label for p in busy if p.instances for m in p.movers)
    first = next(synth.render_frames(clean, 64, 48)).astype(float)
    background = first[np.all(first == first[0, 0], axis=2)]
    assert len(background) > 0.8 * 64 * 48  # one flat colour behind the actors


def test_multi_label_videos_hold_several_classes_that_overlap(tmp_path):
    plans = [
        synth.plan_video("v", np.random.default_rng([5, i]), 4, 15.0, width=64, height=48, multi_label=True)
        for i in range(30)
    ]
    counts = [len(p.instances) for p in plans]
    assert min(counts) >= synth.MULTI_LABEL_INSTANCES[0] and max(counts) <= synth.MULTI_LABEL_INSTANCES[1]
    several = [p for p in plans if len({i.label for i in p.instances}) > 1]
    assert len(several) > 20  # most videos: more than one class (the video head must choose)

    def overlaps(p):
        spans = sorted((i.start, i.end, i.label) for i in p.instances)
        return any(b[0] < a[1] and a[2] != b[2] for a, b in zip(spans, spans[1:]))

    assert sum(map(overlaps, plans)) > 5  # instances of different classes at the same time
    summary = synth.run(tmp_path, videos=3, classes=4, seed=5, width=64, height=48, multi_label=True)
    anet = json.loads((tmp_path / "anet.json").read_text())
    assert anet["etad_synth"]["multi_label"] is True
    assert summary.instances == sum(len(v["annotations"]) for v in anet["database"].values())


def test_sizes_rates_and_counts_are_bounded_before_any_work(tmp_path):
    """200,000-pixel frames (an ArrayMemoryError), 100,000 fps (a minute of writing), 10^8 videos (a
    plan of every video first): refused at once, one line, nothing written."""
    from tests.helpers import run_cli

    for option, value in (
        ("--width", "200000"),
        ("--height", "200000"),
        ("--fps", "100000"),
        ("--videos", "100000000"),
        ("--pretrain-videos", "100000000"),
    ):
        done = run_cli("synth", tmp_path / "out", option, value)
        assert_clean_failure(done)
        assert option in done.stderr and not (tmp_path / "out").exists(), (option, done.stderr)
    from stages import synth
    from stages.core.errors import UserError

    with pytest.raises(UserError, match=r"synth: fps 100000 is outside \[1, 120\]"):
        synth.run(tmp_path / "lib", fps=100000)
