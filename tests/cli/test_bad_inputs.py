"""Bad input, every kind a demanding user has tried: each gives its exit code, one error line that
names the file, no traceback, and leaves what was already written unchanged.

The workspace is tests/files/tiny.yaml: a hand-written annotation file, random features imported
with `etad cache --from-npy`, and a detector trained for one epoch (seconds on a CPU).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import run_cli, snapshot


@dataclass
class Space:
    """A copy of the tiny workspace: its config, work folder and files."""

    root: Path
    config: Path
    work: Path
    npy: Path
    annotations: Path
    predictions: Path

    def checkpoint(self) -> Path:
        return self.work / "pretrain" / "checkpoints" / "last.pt"


@pytest.fixture
def space(trained, tmp_path) -> Space:
    root = tmp_path / "space"
    shutil.copytree(trained, root)
    return Space(
        root,
        root / "tiny.yaml",
        root / "work",
        root / "npy",
        root / "tiny_anet.json",
        root / "tiny_predictions.json",
    )


def edit_json(path: Path, change: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


# ---- the cases: (name, setup(space) -> argv, exit code, text the error line must hold) ----------


def _annotation_case(change: Callable[[dict], None], command: str = "train"):
    def setup(s: Space) -> list:
        edit_json(s.annotations, change)
        if command == "train":
            return ["train", "-c", s.config, "--restart"]
        return ["eval", "-p", s.predictions, "-g", s.annotations]

    return setup


def _settings_case(text: str):
    def setup(s: Space) -> list:
        s.config.write_text(s.config.read_text() + text)
        return ["config", "validate", s.config]

    return setup


def _set_case(*overrides: str, command: str = "train"):
    def setup(s: Space) -> list:
        config = ["validate", s.config] if command == "config" else ["-c", s.config]
        return [command, *config, *sum((["--set", o] for o in overrides), [])]

    return setup


def _npy_case(array_maker: Callable[[], np.ndarray]):
    def setup(s: Space) -> list:
        np.save(s.npy / "vid0.npy", array_maker(), allow_pickle=True)
        return ["cache", "-c", s.config, "--from-npy", s.npy]

    return setup


def _prediction_case(change: Callable[[dict], None], *extra: str):
    def setup(s: Space) -> list:
        edit_json(s.predictions, change)
        return ["eval", "-p", s.predictions, "-g", s.annotations, *extra]

    return setup


def _checkpoint_case(make: Callable[[Path], None]):
    def setup(s: Space) -> list:
        path = s.root / "foreign.pt"
        make(path)
        return ["infer", "-c", s.config, "--checkpoint", path]

    return setup


def _seg(video: str, index: int, segment) -> Callable[[dict], None]:
    def change(d: dict) -> None:
        d["results"][video][index]["segment"] = segment

    return change


def _score(value) -> Callable[[dict], None]:
    def change(d: dict) -> None:
        d["results"]["vid6"][0]["score"] = value

    return change


def _gt(video: str, key: str, value) -> Callable[[dict], None]:
    def change(d: dict) -> None:
        d["database"][video][key] = value

    return change


def _entry(video: str, value) -> Callable[[dict], None]:
    def change(d: dict) -> None:
        d["database"][video] = value

    return change


def _long_id(d: dict) -> None:
    d["database"]["x" * 300] = d["database"].pop("vid0")


def _path_id(d: dict) -> None:
    d["database"]["../escape"] = d["database"].pop("vid0")


def _duplicate_id(s: Space) -> list:
    text = s.annotations.read_text()
    s.annotations.write_text(text.replace('"vid1":', '"vid0":', 1))
    return ["train", "-c", s.config, "--restart"]


def _truncated_h5(s: Space) -> list:
    path = s.work / "cache" / "features" / "vid0.h5"
    path.write_bytes(path.read_bytes()[:300])
    return ["train", "-c", s.config, "--restart"]


def _other_size_resume(s: Space) -> list:
    return [
        "train",
        "-c",
        s.config,
        "--resume",
        "--set",
        "model.hidden_channels=64",
        "--set",
        "train.epochs=2",
    ]


def _results_is_a_file(s: Space) -> list:
    (s.work / "results").write_text("a file, not a folder")
    return ["infer", "-c", s.config]


def _checkpoints_is_a_file(s: Space) -> list:
    shutil.rmtree(s.work / "pretrain")
    (s.work / "pretrain").mkdir()
    (s.work / "pretrain" / "checkpoints").write_text("a file")
    return ["train", "-c", s.config]


def _object_classifier(s: Space) -> list:
    path = s.root / "objects.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    return [
        "infer",
        "-c",
        s.config,
        "--set",
        "infer.classifier=file",
        "--set",
        f"infer.classifier_file={path}",
    ]


def _alias_bomb(s: Space) -> list:
    """9^8 references under a real key: expanded, 43 million numbers."""
    names = "abcdefgh"
    levels = ["&a [1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    levels += [f"&{names[i + 1]} [{', '.join(['*' + names[i]] * 9)}]" for i in range(7)]
    s.config.write_text(s.config.read_text() + f"eval:\n  protocol: [{', '.join(levels)}]\n")
    return ["config", "validate", s.config]


def _json_to_missing_folder(s: Space) -> list:
    return ["eval", "-p", s.predictions, "-g", s.annotations, "--json", s.root / "no" / "such" / "m.json"]


def _unknown_json_folder(s: Space) -> list:
    (s.root / "blocked").write_text("x")
    return ["eval", "-p", s.predictions, "-g", s.annotations, "--json", s.root / "blocked" / "m.json"]


def _e2e_norm_train(s: Space) -> list:
    return ["train", "-c", s.config, "--e2e", "--set", "model.encoder.norm_eval=false"]


def _train_twice(s: Space) -> list:
    return ["train", "-c", s.config]


HELD: list = []  # run-folder locks a case holds while its command runs (released after the test)


def _train_while_another_trains(s: Space) -> list:
    """Another `etad train` holds the run folder (as a second terminal or an orphaned study point)."""
    from stages.training.run_folder import RunLock

    HELD.append(RunLock(s.work / "pretrain"))
    return ["train", "-c", s.config, "--resume", "--set", "train.epochs=3"]


def _resume_on_other_inputs(s: Space) -> list:
    return ["train", "-c", s.config, "--resume", "--set", "data.temporal_scale=16", "--set", "train.epochs=3"]


def _prediction_id_twice(s: Space) -> list:
    """The same video twice in `results`: JSON keeps the last, so the score would depend on order."""
    text = s.predictions.read_text()
    data = json.loads(text)
    first = next(iter(data["results"]))
    body = json.dumps(data["results"][first])
    s.predictions.write_text(text.replace('"results": {', f'"results": {{"{first}": {body}, ', 1))
    return ["eval", "-p", s.predictions, "-g", s.annotations]


def _malformed_checkpoint(change: Callable[[dict], None]):
    def setup(s: Space) -> list:
        state = torch.load(s.checkpoint(), weights_only=True)
        change(state)
        torch.save(state, s.root / "odd.pt")
        return ["checkpoint", "info", s.root / "odd.pt"]

    return setup


def _video_named_like_the_results(s: Space) -> list:
    (s.root / "detections").write_bytes(b"not decoded: refused first")
    return ["infer", "-c", s.config, "--video", s.root / "detections"]


def _truncated_study(s: Space) -> list:
    (s.root / "study").mkdir()
    (s.root / "study" / "study.json").write_text('{"config": "tiny.yaml", "poi')
    return ["study", "--show", s.root / "study"]


CASES = [
    # settings
    ("unknown key", _settings_case("bogus: 1\n"), 2, "bogus: unknown key"),
    ("not a number", _set_case("train.lr=abc", command="config"), 2, "train.lr: got 'abc'"),
    ("NaN in settings", _set_case("train.lr=.nan"), 2, "train.lr"),
    ("inf in settings", _set_case("model.extend_ratio=.inf"), 2, "model.extend_ratio"),
    ("ratio out of range", _set_case("model.proposal_ratio=1.5"), 2, "model.proposal_ratio"),
    ("unknown encoder", _set_case("model.encoder.name=vmae"), 2, "expected one of"),
    ("unknown sampler", _set_case("model.proposal_sampling=nope"), 2, "expected one of"),
    ("tIoU out of range in settings", _set_case("eval.tiou_thresholds=[0.5, 1.5]"), 2, "(0, 1]"),
    ("duplicate YAML key", _settings_case("seed: 1\nseed: 2\n"), 2, "appears twice"),
    ("YAML alias bomb", _alias_bomb, 2, "tiny.yaml"),
    ("YAML python tag", _settings_case("x: !!python/object/apply:os.system ['true']\n"), 2, "invalid YAML"),
    # annotations
    ("entry is a list", _annotation_case(_entry("vid2", [1, 2])), 2, "video 'vid2': malformed"),
    ("entry is a string", _annotation_case(_entry("vid2", "oops")), 2, "video 'vid2': malformed"),
    ("eval: entry is a list", _annotation_case(_entry("vid6", []), "eval"), 2, "video 'vid6': malformed"),
    (
        "annotations not a list",
        _annotation_case(_gt("vid2", "annotations", "x")),
        2,
        "'annotations' is not a list",
    ),
    (
        "segment not a pair",
        _annotation_case(_gt("vid2", "annotations", [{"segment": [1], "label": "a"}])),
        2,
        "not [start, end]",
    ),
    ("300-character id", _annotation_case(_long_id), 2, "longer than 240 bytes"),
    ("path-like id", _annotation_case(_path_id), 2, "path separator"),
    ("duplicate video id", _duplicate_id, 2, "'vid0' appears twice"),
    ("not JSON", _annotation_case(lambda d: d.clear()), 2, "expected a top-level 'database'"),
    (
        "GT NaN segment in eval",
        _annotation_case(
            _gt("vid6", "annotations", [{"segment": [float("nan"), 3.0], "label": "jump"}]), "eval"
        ),
        2,
        "video 'vid6' annotation 0: segment [nan, 3.0] is not finite",
    ),
    # features
    (
        "NaN features",
        _npy_case(lambda: np.full((20, 8), np.nan, dtype=np.float32)),
        1,
        "vid0.npy: 160 non-finite",
    ),
    ("inf features", _npy_case(lambda: np.full((20, 8), np.inf)), 1, "non-finite"),
    ("1-D features", _npy_case(lambda: np.zeros(20)), 1, "expected features of shape [T, D]"),
    ("object features", _npy_case(lambda: np.array([{"a": 1}], dtype=object)), 1, "not a valid .npy"),
    ("string features", _npy_case(lambda: np.array([["a", "b"]])), 1, "expected real numbers"),
    ("truncated cache file", _truncated_h5, 2, "vid0.h5: damaged or truncated cache file"),
    (
        "feature width mismatch",
        _set_case("model.in_channels=16", "train.epochs=1"),
        2,
        "model.in_channels is 16",
    ),
    # checkpoints
    ("resume with another model size", _other_size_resume, 2, "do not fit this model: size mismatch"),
    (
        "pickle checkpoint",
        _checkpoint_case(lambda p: p.write_bytes(b"\x80\x04cos\nsystem\nq\x00.")),
        2,
        "not a loadable checkpoint",
    ),
    ("truncated checkpoint", _checkpoint_case(lambda p: p.write_bytes(b"PK\x03\x04broken")), 2, "foreign.pt"),
    (
        "foreign checkpoint",
        _checkpoint_case(lambda p: torch.save({"state_dict": {}}, p)),
        2,
        "not a checkpoint layout etad knows",
    ),
    ("missing checkpoint", _checkpoint_case(lambda p: None), 2, "foreign.pt: no such checkpoint"),
    # predictions
    (
        "NaN segments",
        _prediction_case(_seg("vid6", 0, [float("nan"), float("nan")])),
        2,
        "video 'vid6' detection 0: segment [nan, nan] is not finite",
    ),
    ("NaN score", _prediction_case(_score(float("nan"))), 2, "detection 0: score nan is not finite"),
    ("inf score", _prediction_case(_score(float("inf"))), 2, "score inf is not finite"),
    ("inf segment", _prediction_case(_seg("vid7", 0, [1.0, float("inf")])), 2, "video 'vid7' detection 0"),
    ("reversed segment", _prediction_case(_seg("vid6", 1, [5.0, 1.0])), 2, "ends before it starts"),
    ("segment of text", _prediction_case(_seg("vid6", 0, ["a", "b"])), 2, "['a', 'b'] is not two numbers"),
    ("segment as one string", _prediction_case(_seg("vid6", 0, "15")), 2, "segment '15' is not [start, end]"),
    ("segment of numeric strings", _prediction_case(_seg("vid6", 0, ["1", "5"])), 2, "is not two numbers"),
    ("score true", _prediction_case(_score(True)), 2, "detection 0: score 'True' is not a number"),
    (
        "label 3.7",
        _prediction_case(lambda d: d["results"]["vid6"][0].update(label=3.7)),
        2,
        "label '3.7' is not a name or a class id",
    ),
    ("results not a mapping", _prediction_case(lambda d: d.update(results=[1])), 2, "'results' mapping"),
    ("tIoU zero", _prediction_case(lambda d: None, "--tiou", "0"), 2, "(0, 1]"),
    ("tIoU above one", _prediction_case(lambda d: None, "--tiou", "1.5"), 2, "(0, 1]"),
    ("eval --json to a missing folder", _json_to_missing_folder, 0, ""),
    ("eval --json under a file", _unknown_json_folder, 2, "blocked/m.json: cannot write"),
    ("norm_eval false with sampled", _e2e_norm_train, 2, "norm_eval: false does not work with"),
    # folders and reruns
    ("results/ is a file", _results_is_a_file, 2, "results: cannot write results"),
    ("checkpoints/ is a file", _checkpoints_is_a_file, 2, "checkpoints: cannot write checkpoints"),
    ("object classifier file", _object_classifier, 2, "objects.npy: not a numeric .npy file"),
    ("train over a finished run", _train_twice, 2, "pass --resume to continue it or --restart"),
    ("two trainers in one folder", _train_while_another_trains, 2, "another training run (process"),
    ("resume on other inputs", _resume_on_other_inputs, 2, "began with data.temporal_scale=8"),
    ("video id twice in predictions", _prediction_id_twice, 2, "appears twice"),
    (
        "checkpoint settings not a mapping",
        _malformed_checkpoint(lambda d: d.update(settings="x")),
        2,
        "'settings' is str, expected a mapping",
    ),
    (
        "checkpoint classes not a list",
        _malformed_checkpoint(lambda d: d.update(classes=5)),
        2,
        "'classes' is int",
    ),
    (
        "checkpoint model settings",
        _malformed_checkpoint(lambda d: d["settings"].update(model=1)),
        2,
        "'settings.model' is int",
    ),
    (
        "--video named like infer.output",
        _video_named_like_the_results,
        2,
        "a file of the subset's detections",
    ),
    ("truncated study.json", _truncated_study, 2, "study.json: invalid JSON"),
]


@pytest.mark.parametrize(("setup", "code", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(space, setup, code, message):
    argv = setup(space)
    before = snapshot(space.work)
    try:
        result = run_cli(*argv)  # an exception escaping the command fails here: a user would see a traceback
    finally:
        while HELD:
            HELD.pop().release()
    assert result.returncode == code, (result.stdout[-800:], result.stderr[-800:])
    assert "Traceback" not in result.stdout + result.stderr
    assert len(result.stderr) < 2000  # cut short, never an expanded value
    if code == 2:
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, result.stderr
        assert message in errors[0], (message, errors[0])
        assert snapshot(space.work) == before  # nothing already written changed
    elif code == 1:
        assert message in result.stderr
        assert all(snapshot(space.work).get(k) == v for k, v in before.items() if "features" not in k)


def test_eval_json_into_a_new_folder_is_written(space):
    target = space.root / "no" / "such" / "m.json"
    assert run_cli("eval", "-p", space.predictions, "-g", space.annotations, "--json", target).returncode == 0
    assert json.loads(target.read_text())["task"] == "detection"


def test_unusable_videos_are_skipped_with_a_note(space):
    def change(d: dict) -> None:
        d["database"]["vid1"]["duration"] = 0
        d["database"]["vid2"]["annotations"][0]["segment"] = [float("nan"), 5.0]
        d["database"]["vid3"]["duration"] = float("inf")

    edit_json(space.annotations, change)
    result = run_cli("train", "-c", space.config, "--restart")
    assert result.returncode == 0, result.stderr
    notes = result.stderr
    assert "'vid1' left out: duration 0.0 is not a positive number" in notes
    assert "'vid2' left out: annotation 0: segment [nan, 5.0] is not finite" in notes
    assert "'vid3' left out: duration inf" in notes
    weights = torch.load(space.checkpoint(), weights_only=True)["model"]
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_a_diverging_run_stops_and_keeps_the_last_good_checkpoint(space):
    """Finite but enormous features (unnormalised) overflow the network: the loss becomes NaN."""
    good = space.checkpoint().read_bytes()
    huge = space.root / "huge"
    huge.mkdir()
    for video_id in json.loads(space.annotations.read_text())["database"]:
        np.save(huge / f"{video_id}.npy", np.full((20, 8), 3e38, dtype=np.float32))
    assert run_cli("cache", "-c", space.config, "--from-npy", huge).returncode == 0
    result = run_cli("train", "-c", space.config, "--resume", "--set", "train.epochs=2")
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "epoch 2, step 3: the loss is nan" in errors[0], errors
    assert space.checkpoint().read_bytes() == good
    assert not (space.work / "pretrain" / "checkpoints" / "epoch_002.pt").exists()


def test_restart_moves_the_earlier_run_aside(space):
    old = snapshot(space.work / "pretrain")
    result = run_cli("train", "-c", space.config, "--restart")
    assert result.returncode == 0, result.stderr
    moved = [p for p in space.work.iterdir() if p.name.startswith("pretrain.")]
    assert len(moved) == 1 and snapshot(moved[0]) == old
    assert "moved to" in result.stderr
    listed = run_cli("report", "-c", space.config)  # the run moved aside is listed, not dropped
    assert listed.returncode == 0
    assert f"runs moved aside by --restart (kept): {moved[0].name}" in listed.stderr


def test_a_symlinked_video_is_not_an_escape(tmp_path):
    from stages.data.annotations import safe_path

    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "real.mp4").write_bytes(b"")
    (tmp_path / "videos").mkdir()
    os.symlink(tmp_path / "elsewhere" / "real.mp4", tmp_path / "videos" / "v1.mp4")
    assert safe_path(tmp_path / "videos", "v1", "{id}.mp4") == tmp_path / "videos" / "v1.mp4"


def test_the_feature_fingerprint_follows_the_encoder_not_the_training_seed():
    """Training runs of any seed (`etad study --seeds`) read the same features, which every reader
    now checks: the seed is not part of the fingerprint; the encoder and its crop are."""
    from stages.core.settings_file import load_settings
    from stages.data.fingerprints import feature_fingerprint

    a, b = (feature_fingerprint(load_settings(None, [f"seed={seed}"])) for seed in (1, 2))
    assert a == b
    assert feature_fingerprint(load_settings(None, ["model.encoder.crop_size=96"])) != a
    assert feature_fingerprint(load_settings(None, ["model.encoder.name=r2plus1d_18"])) != a


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
