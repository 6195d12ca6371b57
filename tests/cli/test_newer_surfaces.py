"""Bad input on the newer surfaces (issue 39): subsets and shards, dry runs, damaged frames and
caches, feature origins, sharded infer parts, resumes, studies, numbers too large for a float,
checkpoints, and file text shown as text. One test per group; each asserts the one line (or the
right result) a user now gets."""

from __future__ import annotations

import errno
import importlib.abc
import io
import json
import os
import shutil
import signal
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from stages.core.errors import UserError
from tests.helpers import demo_config, run_cli


def _load(config: Path, *sets: str):
    from stages.core.settings_file import load_settings

    return load_settings(config, list(sets))


# 1, 8 and the Slurm step: which videos a run takes
def test_subset_lists_and_shards_mean_what_they_say():
    from stages.data.video_selection import Shard, parse_shard, parse_subsets

    settings = None  # parse_subsets reads settings only when --subset is absent
    assert parse_subsets("all,training", settings) is None  # `all` in a list means all
    assert parse_subsets("training, validation", settings) == ["training", "validation"]
    for bad in ("²/2", "1/²", "１/2"):  # str.isdigit() takes superscripts and full-width digits
        with pytest.raises(UserError, match="expected K/N"):
            parse_shard(bad, env={})
    # --array=0-6:2 runs tasks 0, 2, 4, 6: four shards, task 4 is the third
    stepped = {
        "SLURM_ARRAY_TASK_ID": "4",
        "SLURM_ARRAY_TASK_COUNT": "4",
        "SLURM_ARRAY_TASK_MIN": "0",
        "SLURM_ARRAY_TASK_STEP": "2",
    }
    assert parse_shard(None, env=stepped) == Shard(3, 4)
    with pytest.raises(UserError, match="not min 0 \\+ a multiple of step 2"):
        parse_shard(None, env={**stepped, "SLURM_ARRAY_TASK_ID": "3"})


# 9: a worker killed from outside (the OOM killer)
def _dies_on_b(video_id: str) -> str:
    if video_id == "b":
        os.kill(os.getpid(), signal.SIGKILL)
    return video_id


def test_a_killed_worker_fails_the_videos_it_took_and_the_run_ends_cleanly():
    from stages.data.per_video import LOST, run_each

    ended: dict[str, str | None] = {}
    tasks = [(v, _dies_on_b, (v,)) for v in "abcdef"]
    run_each(tasks, 2, lambda video_id, result, reason: ended.__setitem__(video_id, reason))
    assert sorted(ended) == list("abcdef")  # every video accounted for: done, or failed with the reason
    assert ended["b"] == LOST and "rerun" in LOST
    assert all(reason in (None, LOST) for reason in ended.values())


# 2 and 10: a dry run over videos it cannot read and durations it cannot use
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
    settings = _load(config, *sets)
    projection = cache.project(settings, subsets=None)
    notes = " ".join(projection["notes"])
    assert f"could not measure 6 of 6 sampled videos: {ids[0]} (" in notes
    assert "no sampled video could be read" in notes
    assert f"1 video(s) not projected, their annotated duration unusable (first: {ids[0]}" in notes


# 3: frames files cut short or overwritten
def test_extract_redoes_a_cut_frames_file_and_cache_names_one_with_garbage_frames(tmp_path, synth_dir):
    from stages import cache, extract
    from stages.core.workdir import frames_dir
    from stages.data.video_snippets import extracted

    settings = _load(demo_config(tmp_path, synth_dir))
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


# 11: a snippet cache file damaged after it was written
def test_a_damaged_snippet_cache_file_is_named_with_how_to_rebuild_it(tmp_path, feature_work):
    from stages.data.hdf5_cache import VideoCache

    source = feature_work / "work" / "cache" / "snippets"
    video_id = sorted(p.stem for p in source.glob("*.h5"))[0]
    for damage in ("jpeg", "index"):
        folder = tmp_path / damage
        folder.mkdir()
        shutil.copy(source / f"{video_id}.h5", folder)
        with h5py.File(folder / f"{video_id}.h5", "r+") as f:
            if damage == "jpeg":
                f["jpeg"][...] = 7
            else:
                f["snippet_frames"][0, 0] = 10**6
        with pytest.raises(UserError) as caught:
            VideoCache(folder, "snippets").read(video_id)
        assert str(caught.value).startswith(f"{folder / video_id}.h5: damaged cache file")
        assert "rerun `etad cache --what snippets`" in str(caught.value)
    assert "points at frame 1000000" in str(caught.value)


# 4: imported .npy features beside encoder features
def test_a_feature_folder_holds_one_origin_and_a_detector_refuses_the_other(trained, tmp_path):
    from stages.core.checkpoints import load_checkpoint
    from stages.data.fingerprints import Expected, feature_fingerprint
    from stages.data.hdf5_cache import VideoCache

    root = tmp_path / "tiny"
    shutil.copytree(trained, root)
    config = root / "tiny.yaml"
    settings = _load(config)
    features = root / "work" / "cache" / "features"
    state = load_checkpoint(root / "work" / "pretrain" / "checkpoints" / "last.pt")
    assert state["inputs"]["features"] == "imported .npy"
    files = sorted(features.glob("*.h5"))
    with h5py.File(files[-1], "r+") as f:  # one file of an encoder, current for these settings
        f.attrs.update(encoder="tiny", fingerprint=feature_fingerprint(settings), source="snippets")
    with pytest.raises(
        UserError, match="features encoder, but vid0.h5 in the same folder holds features imported"
    ):
        VideoCache(features, "features", Expected.of(settings, "features")).read(files[-1].stem)
    for path in files:  # now all of an encoder: the detector trained on imports refuses them
        with h5py.File(path, "r+") as f:
            f.attrs.update(encoder="tiny", fingerprint=feature_fingerprint(settings), source="snippets")
    result = run_cli("infer", "-c", config, "--eval")
    assert result.returncode == 2
    line = " ".join(result.stderr.split())
    assert "the checkpoint was trained on other features: the features' origin" in line
    assert "'imported .npy' at training, 'encoder' now" in line


# 5 and 12: the parts of a sharded infer
def test_sharded_infer_merges_only_well_formed_parts_of_the_same_settings(trained, tmp_path):
    root = tmp_path / "tiny"
    shutil.copytree(trained, root)
    config, results = root / "tiny.yaml", root / "work" / "results"
    sets = ["--set", "infer.output=results/sharded.json"]
    assert run_cli("infer", "-c", config, *sets, "--set", "infer.top_k=3", "--shard", "1/2").returncode == 0
    done = run_cli("infer", "-c", config, *sets, "--shard", "2/2")
    assert done.returncode == 0 and "waiting for the other shards" in done.stdout  # top_k differs: not merged
    assert run_cli("infer", "-c", config, *sets, "--shard", "1/2").returncode == 0
    assert (results / "sharded.json").is_file()
    part_path = results / "sharded.shard1of2.json"
    part = json.loads(part_path.read_text())
    video = next(v for v, dets in part["results"].items() if dets)
    edits = {
        "a NaN score": ("score", float("nan"), "score nan is not finite"),
        "a reversed segment": ("segment", [5.0, 1.0], "ends before it starts"),
        "an id outside the folder": (None, None, "contains the path separator '/'"),
    }
    for name, (key, value, message) in edits.items():
        edited = json.loads(json.dumps(part))
        if key is None:
            edited["results"]["../escape"] = edited["results"].pop(video)
        else:
            edited["results"][video][0][key] = value
        part_path.write_text(json.dumps(edited))
        result = run_cli("infer", "-c", config, *sets, "--shard", "2/2")
        assert result.returncode == 2, name
        assert str(part_path) in result.stderr and message in " ".join(result.stderr.split()), name
    for content in (b"\xff\xfe not UTF-8", b"[1, 2]"):
        part_path.write_bytes(content)
        result = run_cli("infer", "-c", config, *sets, "--shard", "2/2")
        assert result.returncode in (0, 2) and "Traceback" not in result.stderr
        assert result.returncode == 0 or "not a shard part" in result.stderr
    assert json.loads((results / "sharded.json").read_text())  # the earlier merge is valid JSON


# 6 and 13: --resume with other optimisation settings
def test_resume_refuses_other_optimisation_settings_with_the_one_that_changed(trained, tmp_path):
    from stages.core.checkpoints import load_checkpoint
    from stages.training.loop import _same_settings

    root = tmp_path / "tiny"
    shutil.copytree(trained, root)
    config = root / "tiny.yaml"
    changes = {
        "train.optimizer=adam": "train.optimizer",
        "train.batch_size=2": "train.batch_size",
        "train.lr_step=2": "train.lr_step",
    }
    for change, key in changes.items():
        result = run_cli("train", "-c", config, "--resume", "--set", change, "--set", "train.epochs=2")
        assert result.returncode == 2, change
        assert f"the run began with {key}=" in result.stderr and "Traceback" not in result.stderr
    assert (
        run_cli("train", "-c", config, "--resume", "--set", "train.epochs=2").returncode == 0
    )  # more epochs: fine
    state = load_checkpoint(root / "work" / "pretrain" / "checkpoints" / "last.pt")
    for change in ("e2e.encoder_lr=0", "model.encoder.frozen_stages=1"):
        key = change.partition("=")[0]
        with pytest.raises(UserError, match=f"began with {key}="):
            _same_settings(Path("last.pt"), state, _load(config, change), "e2e")


# 14: a broken optional extra
class _BrokenTensorBoard(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch.utils.tensorboard":
            raise TypeError("protobuf version clash")
        return None


def test_a_broken_tensorboard_never_stops_a_run(tmp_path, monkeypatch):
    from stages.training.curves import TensorBoard

    monkeypatch.delitem(sys.modules, "torch.utils.tensorboard", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_BrokenTensorBoard(), *sys.meta_path])
    board, note = TensorBoard.open(tmp_path / "tensorboard", purge_step=None)
    assert board is None and "fails to import (TypeError: protobuf version clash)" in note


# 15: metrics.jsonl edited into something else
def test_a_resume_drops_metrics_lines_that_are_not_records(tmp_path):
    from stages.training.loop import MetricsLog

    path = tmp_path / "metrics.jsonl"
    lines = [
        "[1, 2]",
        '{"epoch": "one"}',
        '{"epoch": 1.5}',
        '"text"',
        '{"epoch": 1, "loss": 2}',
        '{"epoch": 2}',
    ]
    path.write_text("\n".join(lines) + "\n")
    MetricsLog(path, keep_epochs=1).close()
    assert path.read_text() == '{"epoch": 1, "loss": 2}\n'


# 7 and 16: study points and their results
def test_study_refuses_empty_and_owned_keys_and_checks_every_point_first(tmp_path, synth_dir):
    from stages import study

    config = demo_config(tmp_path, synth_dir)
    settings = _load(config)
    for vary, message in (
        ("train.lr=,,", "expected KEY=V1,V2"),
        ("seed=1,2", "use --seeds"),
        ("work_dir=/tmp/other", "each point has its own folder"),
    ):
        with pytest.raises(UserError, match=message):
            study.prepare(settings, config=config, overrides=[], vary=[vary], also=[], out=tmp_path / "s")
    checked = []

    def check(sets):
        checked.append(sets)
        return _load(config, *sets)

    with pytest.raises(UserError, match=r"point train.lr=2: .*train.lr: got 2"):
        study.prepare(
            settings,
            config=config,
            overrides=[],
            vary=["train.lr=0.1,2"],
            also=[],
            out=tmp_path / "s",
            check=check,
        )
    assert len(checked) == 2 and not (tmp_path / "s").exists()  # both points checked, nothing written


def test_a_malformed_result_is_left_out_of_the_table_and_redone(tmp_path):
    from stages import study

    out = tmp_path / "study"
    good = {
        "point": "a",
        "overrides": {"train.lr": "0.1"},
        "seed": 0,
        "average_mAP": 0.5,
        "truth_labels_mAP": None,
        "mAP": [0.6, 0.4],
        "tiou_thresholds": [0.5, 0.75],
        "mAP_first_tiou": 0.6,
        "proposal_AUC": 40.0,
        "peak_memory_mib": 100.0,
        "memory_kind": "peak RSS",
        "seconds_per_iteration": float("nan"),
        "seconds": 3.0,
    }
    (out / "points/a/seed0").mkdir(parents=True)
    (out / "points/b/seed0").mkdir(parents=True)
    (out / "study.json").write_text(json.dumps({"varied": ["train.lr"]}))
    (out / "points/a/seed0/result.json").write_text(json.dumps(good))
    bad = {**good, "point": "b", "average_mAP": "abc"}
    bad.pop("memory_kind")
    (out / "points/b/seed0/result.json").write_text(json.dumps(bad))
    text = study.table(out)
    assert "| a | 1 | 50.00 ± 0.00 |" in text and "| b |" not in text
    assert (
        "1 result file(s) left out" in text
        and "b/seed0/result.json: average_mAP: unexpected value 'abc'" in text
    )
    assert study.finished(out / "points/b/seed0/result.json") is None  # a rerun redoes the point


# 17: integers longer than a float
def test_integers_too_long_for_a_float_are_refused_as_non_finite(tmp_path, trained):
    from stages.data.annotations import load_annotations

    huge = "9" * 401
    gt = json.loads((trained / "tiny_anet.json").read_text())
    first, second = list(gt["database"])[:2]
    gt["database"][first]["duration"] = "DURATION"
    gt["database"][second]["annotations"][0]["segment"][1] = "BOUND"
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt).replace('"DURATION"', huge).replace('"BOUND"', huge))
    records = load_annotations(path)
    assert "duration inf is not a positive number" in records[first].unusable()
    assert "is not finite" in records[second].unusable()
    predictions = json.loads((trained / "tiny_predictions.json").read_text())
    scored = next(v for v, dets in predictions["results"].items() if dets)
    predictions["results"][scored][0]["score"] = 0.5
    pred = tmp_path / "pred.json"
    pred.write_text(json.dumps(predictions).replace('"score": 0.5', f'"score": {huge}', 1))
    result = run_cli(
        "eval", "--ground-truth", trained / "tiny_anet.json", "--predictions", pred, "--subset", "validation"
    )
    assert result.returncode == 2 and "score inf is not finite" in result.stderr


# 18, 19 and 20: checkpoints, and file text on the terminal
def _crafted_checkpoint(path: Path, **changes) -> Path:
    state = {
        "format": "etad-checkpoint-1",
        "kind": "[/]",
        "epoch": 1,
        "classes": ["a"],
        "model": {"w": torch.zeros(2)},
        "encoder": {"v": torch.zeros(3)},
        "settings": {
            "model": {"variant": "[link=https://evil.example]original[/link]", "encoder": {"name": 5}}
        },
    }
    state.update(changes)
    torch.save(state, path)
    return path


def test_checkpoint_info_shows_crafted_fields_as_text_and_convert_checks_first(tmp_path, monkeypatch):
    path = _crafted_checkpoint(tmp_path / "crafted.pt")
    result = run_cli("checkpoint", "info", path)
    assert result.returncode == 0, result.stderr
    shown = " ".join(result.stdout.split())
    assert "[/]" in shown and "[link=https://evil.example]original[/link]" in shown and "5" in shown
    malformed = _crafted_checkpoint(tmp_path / "malformed.pt", settings="abc")
    target = tmp_path / "out" / "converted.pt"
    result = run_cli("checkpoint", "convert", malformed, target)
    assert result.returncode == 2 and "malformed checkpoint: 'settings' is str" in result.stderr
    assert not target.exists() and not target.parent.exists()

    def full_disk(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 1472 vs 1376")

    monkeypatch.setattr(torch, "save", full_disk)
    result = run_cli("checkpoint", "convert", path, target)
    assert result.returncode == 2 and "is the disk full?" in result.stderr
    assert not target.exists() and not list(target.parent.iterdir())  # no temporary left either


def test_the_consoles_print_file_text_as_text_even_on_a_terminal():
    from rich.table import Table

    from etad_cli.console import TextConsole

    out = io.StringIO()
    console = TextConsole(file=out, force_terminal=True, color_system="truecolor", width=200)
    table = Table(title="[bold]title")
    table.add_row(
        "[link=https://evil.example]click[/link]", "\x1b]8;;https://evil.example\x1b\\x\x1b]8;;\x1b\\"
    )
    console.print(table)
    console.print("[red]video[/red] id")
    text = out.getvalue()
    assert "[link=https://evil.example]click[/link]" in text and "[red]video[/red] id" in text
    assert "]8;;https" not in text.replace("\\x1b]8;;https", "")  # no OSC 8 hyperlink reaches the terminal
    assert "\\x1b]8;;https://evil.example" in text  # shown as an escape


# the weak but clean ones
def test_weak_spots_name_the_file_and_use_units_that_fit(tmp_path, synth_dir):
    from stages.core.files import atomic_output, human_bytes, temporary
    from stages.model.frozen_encoder import FeatureEncoder

    assert (
        human_bytes(4_096) == "4.10 kB" and human_bytes(12) == "12 bytes" and human_bytes(3.2e9) == "3.20 GB"
    )
    long_name = "v" * 240 + ".json"
    assert len(temporary(tmp_path / long_name).name.encode()) <= 255
    with atomic_output(tmp_path / long_name) as tmp:  # a 240-byte id's file and its temporary fit
        tmp.write_text("{}")
    target = tmp_path / "detections.json"
    with pytest.raises(OSError) as caught, atomic_output(target):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert caught.value.filename == str(target) and caught.value.errno == errno.ENOSPC
    config = demo_config(tmp_path, synth_dir)
    settings = _load(config, "model.encoder.crop_size=96")
    with pytest.raises(UserError, match="crop_size 96 is larger than the frames .data.frame_height 48"):
        FeatureEncoder(settings, "cpu")


def test_init_from_an_encoder_checkpoint_says_what_it_is(tmp_path, synth_dir):
    from stages.train_e2e import build_models

    encoder_checkpoint = tmp_path / "encoder.pt"
    state = {"format": "etad-checkpoint-1", "kind": "encoder", "model": {}, "encoder": {}}
    torch.save(state, encoder_checkpoint)
    settings = _load(demo_config(tmp_path, synth_dir), f"e2e.init_from={encoder_checkpoint}")
    with pytest.raises(UserError, match="an encoder checkpoint .* not a detector's"):
        build_models(settings, ["a"], torch.device("cpu"), [])
