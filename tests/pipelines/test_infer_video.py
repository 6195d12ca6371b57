"""`etad train --e2e` through the CLI, and `etad infer --video`: detections of a video file decoded on
the spot equal those of the same video read from the caches, for frozen-feature and end-to-end
checkpoints alike."""

import json

import pytest

from tests.helpers import demo_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cli, synth_dir, feature_work):
    folder = tmp_path_factory.mktemp("trained")
    cache = {
        "features_dir": str(feature_work / "work" / "cache" / "features"),
        "snippets_dir": str(feature_work / "work" / "cache" / "snippets"),
    }
    config = demo_config(folder, synth_dir, cache=cache, train={"epochs": 2, "lr_step": 2}, e2e={"epochs": 1})
    assert cli("train", "-c", config).returncode == 0
    pretrain = folder / "work" / "pretrain" / "checkpoints" / "last.pt"
    result = cli("train", "-c", config, "--e2e", "--init-from", str(pretrain))
    assert result.returncode == 0, result.output
    return config, {"pretrain": pretrain, "e2e": folder / "work" / "e2e" / "checkpoints" / "last.pt"}


@pytest.mark.parametrize("kind", ["pretrain", "e2e"])
def test_video_file_gives_the_cached_videos_detections(trained, cli, synth_dir, kind):
    config, checkpoints = trained
    work = config.parent / "work"
    # batch size 1: the encoder then sees the same clip batches both ways, so results match bitwise
    # (the random-init model has near-tied scores that float noise would reorder)
    options = (
        "--checkpoint",
        str(checkpoints[kind]),
        "--set",
        f"infer.output={kind}.json",
        "--set",
        "infer.batch_size=1",
    )
    result = cli("infer", "-c", config, *options)
    assert result.returncode == 0, result.output
    cached = json.loads((work / f"{kind}.json").read_text())["results"]
    video_id = sorted(cached)[0]
    video = synth_dir / "videos" / f"{video_id}.mp4"
    result = cli("infer", "-c", config, *options, "--video", str(video))
    assert result.returncode == 0, result.output
    assert "top detections" in result.output
    fresh = json.loads((work / f"{video_id}.json").read_text())["results"][video_id]
    assert len(fresh) == len(cached[video_id]) > 0
    best = sorted(cached[video_id], key=lambda d: -d["score"])
    for a, b in zip(fresh, best, strict=True):
        assert a["label"] == b["label"]
        assert a["score"] == pytest.approx(b["score"], abs=1e-4)
        assert a["segment"] == pytest.approx(b["segment"], abs=1e-3)


def test_video_that_is_not_a_video_is_a_clear_error(trained, cli, tmp_path):
    config, checkpoints = trained
    bad = tmp_path / "clip.mp4"
    bad.write_bytes(b"not a video")
    result = cli("infer", "-c", config, "--checkpoint", str(checkpoints["pretrain"]), "--video", str(bad))
    assert result.returncode == 2
    assert str(bad) in result.output and "Traceback" not in result.output


def test_a_video_shorter_than_a_snippet_says_so(trained, cli, tmp_path):
    """One frame is a valid video, but its detections come from that frame repeated: a note says so."""
    import numpy as np

    from stages.data.video_writer import write_video

    config, checkpoints = trained
    video = tmp_path / "one.mp4"
    write_video(video, [np.full((48, 64, 3), 90, np.uint8)], 15.0)
    result = cli("infer", "-c", config, "--checkpoint", str(checkpoints["pretrain"]), "--video", str(video))
    assert result.returncode == 0, result.output
    text = " ".join(result.output.split())
    assert "1 frame(s) at data.fps, shorter than one snippet (8 frames)" in text


def test_a_video_gets_its_timeline_with_plot_and_eval_is_refused(trained, cli, synth_dir, tmp_path):
    config, checkpoints = trained
    video = sorted((synth_dir / "videos").glob("*.mp4"))[0]
    args = ("infer", "-c", config, "--checkpoint", str(checkpoints["pretrain"]), "--video", str(video))
    result = cli(*args, "--plot")
    assert result.returncode == 0, result.output
    plot = config.parent / "work" / "results" / "detections" / "plots" / f"{video.stem}.png"
    assert str(plot) in " ".join(result.output.split())  # its path printed
    assert plot.read_bytes()[:4] == b"\x89PNG"
    refused = cli(*args, "--eval")
    text = " ".join(refused.output.split())
    assert refused.returncode == 2 and "--eval scores a subset against its annotation file" in text
    assert "Traceback" not in refused.output


def test_a_video_s_notes_are_printed_as_extract_and_cache_print_them(trained, cli, tmp_path):
    """A phone clip whose audio starts half a second before its pictures: its frames count from the
    file's start and the note says so, as `extract` and `cache` say it."""
    from tests.videos import numbered_run

    config, checkpoints = trained
    video = numbered_run(tmp_path / "late.mp4", 30, lead=0.5).path
    result = cli("infer", "-c", config, "--checkpoint", str(checkpoints["pretrain"]), "--video", str(video))
    assert result.returncode == 0, result.output
    text = " ".join(result.output.split())
    assert f"note: {video}: first picture at 0.50 s of the file (held from 0)" in text


def test_a_head_the_checkpoint_was_not_trained_with_is_refused(trained, cli, synth_dir):
    """--set model.classifier=proposal on a video-head checkpoint ran the video head without a word."""
    config, checkpoints = trained
    video = sorted((synth_dir / "videos").glob("*.mp4"))[0]
    result = cli(
        "infer",
        "-c",
        config,
        "--checkpoint",
        str(checkpoints["pretrain"]),
        "--video",
        str(video),
        "--set",
        "model.classifier=proposal",
    )
    text = " ".join(result.output.split())
    assert result.returncode == 2 and "model.classifier 'video', these settings say 'proposal'" in text
