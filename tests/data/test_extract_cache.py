"""extract + cache on real mp4s from `etad synth`: exact content, resumability, kill-safety, bad inputs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import h5py
import numpy as np
import pytest
import torch
import yaml

from stages.core.errors import UserError
from stages.core.settings_file import load_settings
from stages.data.hdf5_cache import VideoCache
from stages.data.snippet_positions import anet_snippet_frames
from stages.data.video_io import decord_available
from stages.data.video_snippets import video_snippets
from stages.model.encoder import build_encoder, center_crop
from tests.helpers import assert_clean_failure, demo_config, run_cli, start_etad, tiny_data, write_config

pytestmark = pytest.mark.slow
needs_decord = pytest.mark.skipif(not decord_available(), reason="decord has no wheel for this platform")


def make_config(tmp_path, synth_dir, **sections) -> tuple:
    """A config for the synthetic data with 32-frame-high extraction (a resize from 64x48)."""
    config = {
        "seed": 3,
        "work_dir": str(tmp_path / "work"),
        "data": tiny_data(synth_dir),
        "model": {"encoder": {"name": "tiny", "crop_size": 24, "frozen_stages": -1, "norm_eval": False}},
        "cache": {"device": "cpu", "batch_size": 5},
    }
    path = write_config(tmp_path / "config.yaml", config, **sections)
    return path, yaml.safe_load(path.read_text())


def tsp_checkpoint(path) -> dict:
    """A checkpoint for the tiny encoder in the public TSP layout: key 'model', 'features.' prefix, fc."""
    torch.manual_seed(11)
    encoder = build_encoder("tiny")
    state = {f"features.{k}": v for k, v in encoder.backbone.state_dict().items()}
    state["fc.weight"] = torch.zeros(3, 64)
    torch.save({"model": state, "epoch": 5}, path)
    return encoder.backbone.state_dict()


def _direct(synth_dir, video_id):
    """A video's snippet frames decoded by decord alone: [12, 4, 32, 40, 3] and their indices."""
    import decord

    reader = decord.VideoReader(str(synth_dir / "videos" / f"{video_id}.mp4"), height=32, width=40)
    indices = anet_snippet_frames(len(reader), 12, 4)  # the synthetic videos are at data.fps
    return reader.get_batch(indices.reshape(-1).tolist()).asnumpy().reshape(12, 4, 32, 40, 3), indices


@needs_decord
@pytest.mark.parametrize("route", ["extracted frames", "straight from the videos"])
def test_raw_snippet_cache_matches_direct_decord_decoding(tmp_path, synth_dir, cli, route):
    config, settings = make_config(tmp_path, synth_dir, cache={"codec": "raw"})
    if route == "extracted frames":
        assert cli("extract", "--config", config).returncode == 0
    assert cli("cache", "--config", config, "--what", "snippets").returncode == 0
    assert (tmp_path / "work/frames").is_dir() == (route == "extracted frames")
    cache = VideoCache(tmp_path / "work/cache/snippets", "snippets")
    ids = list(json.loads((synth_dir / "anet.json").read_text())["database"])
    assert cache.ids() == sorted(ids)
    for video_id in ids:
        direct, indices = _direct(synth_dir, video_id)
        assert (cache.frame_indices(video_id) == indices).all()
        snippets = cache.read(video_id)
        assert snippets.dtype == np.uint8 and snippets.shape == (12, 4, 32, 40, 3)
        assert np.array_equal(snippets, direct)  # pixel for pixel: both resize inside decord
        assert np.array_equal(cache.read(video_id, 5), direct[5])  # one snippet alone
        assert np.array_equal(cache.read(video_id, np.array([7, 2])), direct[[7, 2]])
        assert cache.attrs(video_id)["fps"] == 15.0


@needs_decord
def test_jpeg_snippet_cache_stores_each_frame_once_close_to_the_pixels(tmp_path, synth_dir, cli):
    """The default: each frame the snippets use is stored once as JPEG (quality 90); decoding
    gives the frames within JPEG's error, and the same files whether frames were extracted first."""
    config, _ = make_config(tmp_path, synth_dir)
    assert cli("cache", "--config", config, "--what", "snippets").returncode == 0
    cache = VideoCache(tmp_path / "work/cache/snippets", "snippets")
    straight = {video_id: cache.read(video_id) for video_id in cache.ids()}
    for video_id, snippets in straight.items():
        direct, indices = _direct(synth_dir, video_id)
        assert snippets.shape == direct.shape and snippets.dtype == np.uint8
        mse = np.mean((snippets.astype(float) - direct.astype(float)) ** 2)
        assert 10 * np.log10(255**2 / mse) > 30  # PSNR in dB
        assert np.array_equal(cache.read(video_id, 3), snippets[3])
        with h5py.File(tmp_path / "work/cache/snippets" / f"{video_id}.h5") as f:
            assert f.attrs["codec"] == "jpeg" and f.attrs["jpeg_quality"] == 90
            assert len(f["jpeg_offsets"]) == len(np.unique(indices)) + 1  # each frame once
            assert f["jpeg"].size / len(np.unique(indices)) < 32 * 40 * 3 / 2  # under half the raw bytes
    assert cli("extract", "--config", config).returncode == 0
    for video_id in straight:  # extract writes the same compact frames: every frame at data.fps once
        record = json.loads((tmp_path / f"work/frames/{video_id}.json").read_text())
        with h5py.File(tmp_path / f"work/frames/{video_id}.h5") as f:
            assert (f.attrs["codec"], record["codec"], record["jpeg_quality"]) == ("jpeg", "jpeg", 90)
            assert len(f["jpeg_offsets"]) == record["num_frames"] + 1
            assert f["jpeg"].size / record["num_frames"] < 32 * 40 * 3 / 2
    shutil.rmtree(tmp_path / "work/cache/snippets")
    assert cli("cache", "--config", config, "--what", "snippets").returncode == 0
    for video_id, snippets in straight.items():  # the JPEG bytes copied as they are: the same pixels
        assert np.array_equal(cache.read(video_id), snippets)
        assert cache.attrs(video_id)["source"].endswith("frames")  # this time from the extracted frames


def test_cached_features_equal_the_encoder_on_the_snippets(tmp_path, synth_dir, cli):
    weights = tsp_checkpoint(tmp_path / "tsp.pth")
    config, _ = make_config(tmp_path, synth_dir, model={})
    raw = yaml.safe_load(config.read_text())
    raw["model"]["encoder"]["checkpoint"] = str(tmp_path / "tsp.pth")
    write_config(config, raw)
    assert cli("extract", "--config", config).returncode == 0
    result = cli("cache", "--config", config, "--what", "features")
    assert result.returncode == 0, result.output
    encoder = build_encoder("tiny")
    encoder.backbone.load_state_dict(weights)
    encoder.eval()
    features = VideoCache(tmp_path / "work/cache/features", "features")
    settings = load_settings(config)
    for video_id in features.ids():
        clips = np.concatenate(list(video_snippets(settings, video_id).snippet_chunks(5)))
        with torch.no_grad():
            expected = encoder(center_crop(torch.from_numpy(clips), 24)).numpy()
        got = features.read(video_id)
        assert got.shape == (12, 64)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_from_npy_round_trips_exactly(tmp_path, synth_dir, cli):
    config, _ = make_config(tmp_path, synth_dir)
    npy_dir = tmp_path / "npy"
    npy_dir.mkdir()
    ids = list(json.loads((synth_dir / "anet.json").read_text())["database"])
    rng = np.random.default_rng(0)
    originals = {}
    for i, video_id in enumerate(ids):
        originals[video_id] = rng.standard_normal((17 + i, 8)).astype(np.float32 if i % 2 else np.float16)
        np.save(npy_dir / (f"v_{video_id}.npy" if i % 2 else f"{video_id}.npy"), originals[video_id])
    result = cli("cache", "--config", config, "--from-npy", npy_dir)
    assert result.returncode == 0, result.output
    cache = VideoCache(tmp_path / "work/cache/features", "features")
    for video_id, array in originals.items():
        got = cache.read(video_id)
        assert got.dtype == array.dtype and np.array_equal(got, array)
    again = cli("cache", "--config", config, "--from-npy", npy_dir)
    assert "0 / 6 / 0" in again.stdout  # nothing redone


def test_extract_is_resumable(tmp_path, synth_dir, cli):
    config, _ = make_config(tmp_path, synth_dir)
    assert cli("extract", "--config", config).returncode == 0
    frames = tmp_path / "work/frames"
    first = sorted(frames.glob("synth_*.json"))[0]
    first.unlink()  # as if killed after the frames but before the completion record
    (frames / ".half-written.h5.tmp1.h5").write_bytes(b"junk")
    result = cli("extract", "--config", config)
    assert result.returncode == 0
    assert "1 / 5 / 0" in result.stdout
    assert first.is_file()


def test_a_truncated_frames_file_is_passed_over_for_its_video_file(tmp_path, synth_dir, cli):
    config, _ = make_config(tmp_path, synth_dir)
    assert cli("extract", "--config", config).returncode == 0
    broken = sorted((tmp_path / "work/frames").glob("synth_*.h5"))[0]
    broken.write_bytes(broken.read_bytes()[:600])
    result = cli("cache", "--config", config, "--what", "snippets")
    assert result.returncode == 0, result.output  # frames that cannot be read are not extracted frames
    cached = {p.stem: p for p in (tmp_path / "work/cache/snippets").glob("*.h5")}
    assert len(cached) == len(list(broken.parent.glob("synth_*.h5")))
    with h5py.File(cached[broken.stem], "r") as f:
        assert f.attrs["source"].endswith(f"{broken.stem}.mp4")  # decoded from the video file
    with h5py.File(cached[sorted(cached)[1]], "r") as f:
        assert f.attrs["source"] == str(broken.parent)  # the others from their frames


def test_sigkill_during_cache_loses_nothing(tmp_path, synth_dir, cli):
    config, _ = make_config(tmp_path, synth_dir)
    assert cli("extract", "--config", config).returncode == 0
    out = tmp_path / "work/cache/features"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = start_etad("cache", "--config", config, "--what", "features", quiet=True, env=env)
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.glob("*.h5")):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = sorted(out.glob("*.h5"))
    assert 1 <= len(finished) < 6, "the kill should land part way through"
    result = run_cli("cache", "--config", config, "--what", "features")
    assert result.returncode == 0, result.stderr
    cache = VideoCache(out, "features")
    assert len(cache.ids()) == 6
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left behind
    reference_dir = tmp_path / "reference"
    shutil.copytree(tmp_path / "work/frames", reference_dir / "work/frames")
    ref_config, _ = make_config(reference_dir, synth_dir)
    assert run_cli("cache", "--config", ref_config, "--what", "features").returncode == 0
    reference = VideoCache(reference_dir / "work/cache/features", "features")
    for video_id in cache.ids():
        np.testing.assert_allclose(cache.read(video_id), reference.read(video_id), rtol=1e-5, atol=1e-7)


def write_annotations(path, ids):
    database = {vid: {"subset": "training", "duration": 10.0, "annotations": []} for vid in ids}
    path.write_text(json.dumps({"version": "1.3", "taxonomy": [], "database": database}))


def test_missing_and_corrupt_videos_are_listed_and_do_not_stop_the_run(tmp_path, synth_dir):
    videos = tmp_path / "videos"
    videos.mkdir()
    good = sorted((synth_dir / "videos").glob("*.mp4"))[0]
    shutil.copy(good, videos / "good.mp4")
    (videos / "truncated.mp4").write_bytes(good.read_bytes()[:1500])
    write_annotations(tmp_path / "ann.json", ["good", "truncated", "missing"])
    config, _ = make_config(
        tmp_path, synth_dir, data={"annotations": str(tmp_path / "ann.json"), "video_dir": str(videos)}
    )
    result = run_cli("extract", "--config", config)  # data.missing: error, before any work
    assert_clean_failure(result)
    assert "1 of 3 videos have no video file" in result.stderr and "'missing'" in result.stderr
    assert not (tmp_path / "work/frames/good.json").exists()
    result = run_cli("extract", "--config", config, "--set", "data.missing=skip")
    assert result.returncode == 1  # the truncated video failed; the other one is done
    assert "Traceback" not in result.stderr
    failures = {
        f["video_id"]: f["reason"] for f in json.loads((tmp_path / "work/frames/failures.json").read_text())
    }
    assert set(failures) == {"truncated"} and "truncated.mp4" in failures["truncated"]
    assert json.loads((tmp_path / "work/frames/missing.json").read_text()) == ["missing"]
    assert "1 video(s) failed" in result.stderr
    assert (tmp_path / "work/frames/good.json").is_file()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "empty annotation file"),
        ("{not json", "invalid JSON at line 1"),
        ('{"database": {}}', "the 'database' has no videos"),
    ],
)
def test_bad_annotation_files(tmp_path, synth_dir, content, message):
    (tmp_path / "ann.json").write_text(content)
    config, _ = make_config(tmp_path, synth_dir, data={"annotations": str(tmp_path / "ann.json")})
    for command in ("extract", "cache"):
        result = run_cli(command, "--config", config)
        assert_clean_failure(result)
        assert f"{tmp_path / 'ann.json'}: {message}" in result.stderr


@pytest.mark.parametrize("bad_id", ["../escape", "a/b", "..", ".hidden"])
def test_video_ids_that_are_paths_are_rejected(tmp_path, synth_dir, bad_id):
    write_annotations(tmp_path / "ann.json", ["fine", bad_id])
    config, _ = make_config(tmp_path, synth_dir, data={"annotations": str(tmp_path / "ann.json")})
    result = run_cli("extract", "--config", config)
    assert_clean_failure(result)
    assert f"video id {bad_id!r}" in result.stderr and "file name" in result.stderr
    assert not (tmp_path / "escape.npy").exists()


def test_unwritable_output_folder(tmp_path, synth_dir):
    (tmp_path / "a_file").write_text("not a folder")
    config, _ = make_config(tmp_path, synth_dir)
    for command in ("extract", "cache"):
        result = run_cli(command, "--config", config, "--set", f"work_dir={tmp_path / 'a_file' / 'work'}")
        assert_clean_failure(result)
        assert "cannot write" in result.stderr and "a_file" in result.stderr


def test_tsp_checkpoint_with_wrong_keys_is_a_clear_error(tmp_path):
    from stages.core.checkpoints import load_tsp_checkpoint

    torch.save({"model": {"features.not_a_layer.weight": torch.zeros(1)}}, tmp_path / "bad.pth")
    with pytest.raises(
        UserError, match=r"bad.pth: keys do not match the encoder: \d+ missing .* 1 unexpected"
    ):
        load_tsp_checkpoint(build_encoder("tiny").backbone, tmp_path / "bad.pth")


def test_r2plus1d_34_tsp_loads_the_tsp_layout(tmp_path):
    """The full TSP backbone: layers [3,4,6,3], BN eps 1e-3 / momentum 0.9, fc dropped, 512-d output."""
    source = build_encoder("r2plus1d_34_tsp")
    state = {f"features.{k}": v for k, v in source.backbone.state_dict().items()}
    state["fc.weight"], state["fc.bias"] = torch.zeros(201, 512), torch.zeros(201)
    torch.save({"model": state}, tmp_path / "tsp34.pth")
    encoder = build_encoder("r2plus1d_34_tsp", tmp_path / "tsp34.pth", frozen_stages=2, norm_eval=True)
    assert [len(getattr(encoder.backbone, f"layer{i}")) for i in range(1, 5)] == [3, 4, 6, 3]
    bns = [m for m in encoder.modules() if isinstance(m, torch.nn.BatchNorm3d)]
    assert all(m.eps == 1e-3 and m.momentum == 0.9 for m in bns)
    for key, value in source.backbone.state_dict().items():
        assert torch.equal(encoder.backbone.state_dict()[key], value)
    trainable = {n.split(".")[1] for n, p in encoder.named_parameters() if p.requires_grad}
    assert trainable == {"layer3", "layer4"}  # stem, layer1, layer2 frozen
    encoder.train()
    assert not any(m.training for m in bns)  # norm_eval
    with torch.no_grad():
        out = encoder(torch.zeros(1, 8, 32, 32, 3, dtype=torch.uint8))
    assert out.shape == (1, 512)


def test_stale_temporaries_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    """A run killed mid-write leaves `.<name>.tmp<pid>@<host>`; the next run on this host clears it,
    not a live run's, and never another host's (shards of a Slurm array share the folder)."""
    import os

    from stages.core.files import HOST, ensure_writable_dir, temporary

    gone = subprocess.Popen(["true"])
    gone.wait()
    dead = tmp_path / f".a.h5.tmp{gone.pid}@{HOST}.h5"
    old_style = tmp_path / f".c.h5.tmp{gone.pid}.h5"  # written by an earlier etad
    elsewhere = tmp_path / f".d.h5.tmp{gone.pid}@another-node-07.h5"  # its pid means nothing here
    live = temporary(tmp_path / "b.npy")
    assert live.name == f".b.npy.tmp{os.getpid()}@{HOST}.npy"
    final = tmp_path / "a.h5"
    for path in (dead, old_style, elsewhere, live, final):
        path.write_bytes(b"x")
    ensure_writable_dir(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, elsewhere.name, final.name])


def test_extract_redoes_a_video_whose_file_changed(tmp_path, synth_dir, cli):
    """The record keeps the source file's path, size and time: another data.video_dir, or a video
    replaced in place, is extracted again, not kept from the old file."""
    config, _ = make_config(tmp_path, synth_dir)
    assert cli("extract", "--config", config).returncode == 0
    videos = tmp_path / "other_videos"
    shutil.copytree(synth_dir / "videos", videos)
    result = cli("extract", "--config", config, "--set", f"data.video_dir={videos}")
    assert result.returncode == 0 and "6 / 0 / 0" in result.stdout, result.stdout  # another folder
    first, second = sorted(videos.glob("*.mp4"))[:2]
    shutil.copyfile(second, first)  # replaced in place by another video
    result = cli("extract", "--config", config, "--set", f"data.video_dir={videos}")
    assert result.returncode == 0 and "1 / 5 / 0" in result.stdout, result.stdout
    record = json.loads((tmp_path / "work" / "frames" / f"{first.stem}.json").read_text())
    assert record["source_stamp"] == [first.stat().st_size, first.stat().st_mtime_ns]


def test_a_dry_run_names_the_videos_it_could_not_measure_and_ignores_absurd_durations(tmp_path, synth_dir):
    from stages import cache

    videos = tmp_path / "videos"
    videos.mkdir()
    database = json.loads((synth_dir / "anet.json").read_text())["database"]
    ids = sorted(database)
    for i, video_id in enumerate(ids):  # zero-length, text, and an mp4 cut to its first bytes
        content = [b"", b"not a video\n", (synth_dir / "videos" / f"{video_id}.mp4").read_bytes()[:300]][
            i % 3
        ]
        (videos / f"{video_id}.mp4").write_bytes(content)
    database[ids[0]]["duration"] = 1e9  # 7 GB of snippet positions under the THUMOS protocol
    annotations = tmp_path / "anet.json"
    annotations.write_text(json.dumps({"database": database}))
    config = demo_config(tmp_path, synth_dir)
    sets = [f"data.annotations={annotations}", f"data.video_dir={videos}", "data.protocol=thumos"]
    settings = load_settings(config, sets)
    projection = cache.project(settings, subsets=None)
    notes = " ".join(projection["notes"])
    assert f"could not measure 6 of 6 sampled videos: {ids[0]} (" in notes
    assert "no sampled video could be read" in notes
    assert f"1 video(s) not projected, their annotated duration unusable (first: {ids[0]}" in notes


def test_extract_redoes_a_cut_frames_file_and_cache_names_one_with_garbage_frames(tmp_path, synth_dir):
    from stages import cache, extract
    from stages.core.workdir import frames_dir
    from stages.data.video_snippets import extracted

    settings = load_settings(demo_config(tmp_path, synth_dir), [])
    assert extract.run(settings, subsets=["validation"]).done == 2
    frames = frames_dir(settings)
    cut, garbage = sorted(p.stem for p in frames.glob("*.h5"))
    path = frames / f"{cut}.h5"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert not extracted(settings, cut)  # the record alone no longer says done
    again = extract.run(settings, subsets=["validation"])
    assert (again.done, again.skipped) == (1, 1) and extracted(settings, cut)
    with h5py.File(frames / f"{garbage}.h5", "r+") as f:  # the structure intact, the bytes noise
        f["jpeg"][...] = np.random.default_rng(0).integers(0, 255, f["jpeg"].shape, dtype=np.uint8)
    summary = cache.run(settings, what="snippets", subsets=["validation"])
    assert summary.done == 1 and [f["video_id"] for f in summary.failures] == [garbage]
    reason = summary.failures[0]["reason"]
    assert f"{frames / garbage}.h5: damaged frames file (frame 0 is not a JPEG)" in reason
    assert "delete it and rerun `etad extract`" in reason
