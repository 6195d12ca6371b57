"""`etad annotations convert / check` on the real EPIC-KITCHENS-100 and MultiTHUMOS files in
../shared/data (skipped where absent), each scored against itself with its own protocol, and bad rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import assert_clean_failure, run_cli, shared_file


def _as_predictions(annotations, path, subset):
    database = json.loads(annotations.read_text())["database"]
    results = {
        v: [{"label": a["label"], "segment": a["segment"], "score": 1.0} for a in e["annotations"]]
        for v, e in database.items()
        if e["subset"] == subset
    }
    path.write_text(json.dumps({"results": results}))


def _perfect(tmp_path, dataset, gt, subset, tious):
    _as_predictions(gt, tmp_path / f"{gt.stem}_pred.json", subset)
    out = tmp_path / f"{gt.stem}_metrics.json"
    done = run_cli(
        "eval",
        "--dataset",
        dataset,
        "-g",
        gt,
        "-p",
        tmp_path / f"{gt.stem}_pred.json",
        "--subset",
        subset,
        "--json",
        out,
    )
    assert done.returncode == 0, done.stderr
    metrics = json.loads(out.read_text())
    assert metrics["tiou_thresholds"] == pytest.approx(tious) and metrics["mAP"] == [1.0] * len(tious)


def _epic_side_files(folder: Path) -> list:
    """The options naming the EPIC-KITCHENS files `--from epic100` reads beside its CSV."""
    names = {"--video-info": "video_info", "--verbs": "verb_classes", "--nouns": "noun_classes"}
    return [x for option, name in names.items() for x in (option, folder / f"EPIC_100_{name}.csv")]


def test_epic_kitchens_validation_converts_with_its_counts_and_scores_itself_perfectly(tmp_path):
    csv = shared_file("epic100", "EPIC_100_validation.csv")
    folder = csv.parent
    expected = {"verb": 78, "noun": 211, "action": 1352}  # classes that occur (../shared/data/SOURCES.md)
    for label, classes in expected.items():
        out = tmp_path / f"epic_{label}.json"
        done = run_cli(
            "annotations",
            "convert",
            csv,
            "--from",
            "epic100",
            "--label",
            label,
            "--out",
            out,
            *_epic_side_files(folder),
        )
        assert done.returncode == 0, done.stderr
        assert "138 videos, 9668 instances (1 clipped" in done.stdout  # P29_05_563 ends 0.01 s past its video
        database = json.loads(out.read_text())["database"]
        assert len({a["label"] for e in database.values() for a in e["annotations"]}) == classes
        first = database["P01_11"]["annotations"][0]
        assert first["segment"] == [0.0, 1.89] and {"verb", "noun", "verb_class", "noun_class"} <= set(first)
    _perfect(tmp_path, "epic100", tmp_path / "epic_action.json", "validation", [0.1, 0.2, 0.3, 0.4, 0.5])
    from stages.annotations import check

    held = check(tmp_path / "epic_verb.json")
    assert held["classes"] == 78 and held["subsets"]["validation"]["instances"] == 9668
    assert held["subsets"]["validation"]["overlapping"] == 684  # same-verb pairs overlapping (counted apart)
    assert run_cli("annotations", "check", tmp_path / "epic_verb.json").returncode == 0


def test_multithumos_converts_with_its_counts_and_scores_itself_perfectly(tmp_path):
    source = shared_file("multithumos", "multithumos.json")
    out = tmp_path / "multithumos.json"
    done = run_cli("annotations", "convert", source, "--from", "multithumos", "--out", out)
    assert done.returncode == 0 and "413 videos, 38690 instances (65 clipped" in done.stdout
    database = json.loads(out.read_text())["database"]
    counts = {}
    for entry in database.values():
        counts[entry["subset"]] = counts.get(entry["subset"], 0) + len(entry["annotations"])
    assert counts == {"training": 18482, "testing": 20208}
    assert len({a["label"] for e in database.values() for a in e["annotations"]}) == 65
    _perfect(tmp_path, "multithumos", out, "testing", [round(0.1 * k, 1) for k in range(1, 10)])
    again = run_cli("annotations", "convert", source, "--from", "multithumos", "--out", out)
    assert again.returncode == 2 and "exists; give a new file name" in again.stderr  # never over a file


MT = '{"v": {"duration": %r, "actions": [%s]}}'


@pytest.mark.parametrize(
    ("fmt", "content", "message"),
    [
        ("csv", "video,start,end,label\nv1,0,5,a\nv1,abc,6,a\n", "row 3: start 'abc' is not a number"),
        ("csv", "video,start,end,label\nv1,0,50,a\n", "row 2: end 50.0 is past the video's duration 10.0"),
        ("csv", "video,begin,end,label\nv1,0,5,a\n", "the columns video, start, end, label; missing start"),
        ("charades", "id,length,actions\nAB,30,c092 1 2;c009 x 3\n", "row 2: start 'x' is not a number"),
        ("charades", "id,length,actions\nAB12,abc,c092 1 2\n", "row 2: length 'abc' is not a number"),
        ("multithumos", '{"v": {"subset": "testing", "actions": [[1, 0, 2]]}}', "video 'v': has no duration"),
        ("multithumos", '{"v": {"duration": "12.5", "actions": []}}', "duration '12.5' is not a number"),
        # the one validator (stages/data/segments.py): numbers, order, durations, for every format
        ("multithumos", MT % (30, "[1, 9, 2]"), "action 0: segment [9, 2] ends before it starts"),
        ("multithumos", MT % (30, "[1, NaN, 2]"), "segment [nan, 2] is not finite"),
        ("multithumos", MT % (30, "[1, 1e400, 2]"), "segment [inf, 2] is not finite"),
        ("multithumos", MT % (-20, "[1, 1, 2]"), "duration -20 is not positive"),
        ("multithumos", MT % (0, "[1, 1, 2]"), "duration 0 is not positive"),
        ("multithumos", MT % (1e300, "[1, 1, 2]"), "is longer than 1e+06 s"),
        ("multithumos", MT % (30, "[3.7, 1, 2]"), "class '3.7' is not a class number"),
        (
            "multithumos",
            '{"v": {"duration": 3, "actions": []}, "v": {"duration": 9, "actions": []}}',
            "key 'v' appears twice",
        ),
        ("multithumos", '{"../x": {"duration": 30, "actions": []}}', "video id '../x' contains the path"),
        ("charades", "id,length,actions\nAB,30,c092 9 2\n", "row 2: segment [9.0, 2.0] ends before"),
        ("charades", "id,length,actions\nAB,-5,c092 1 2\n", "row 2: duration -5.0 is not positive"),
        ("charades", "id,length,actions\nAB,30,c092 1 2\nAB,40,c009 1 5\n", "row 3: video 'AB' again"),
        ("csv", "video,start,end,label\nv1,0,5,a\nv1,0,6,a\n", None),
        (
            "csv",
            "video,start,end,label,subset\nv1,0,5,a,training\nv1,0,6,a,validation\n",
            "row 3: video 'v1' is in subset 'validation' here and 'training' at row 2",
        ),
        ("csv", "video,start,end,label\n.hidden,0,5,a\n", "video id '.hidden' starts with '.'"),
        ("csv", "video,start,end,label\n" + "x" * 300 + ",0,5,a\n", "is longer than 240 bytes"),
    ],
)
def test_a_bad_row_is_one_line_naming_the_file_and_row(tmp_path, fmt, content, message):
    if message is None:  # a control: the same file without the fault converts
        source = tmp_path / "in.csv"
        source.write_text(content)
        (tmp_path / "durations.csv").write_text("video,duration\nv1,10\n")
        done = run_cli(
            "annotations",
            "convert",
            source,
            "--from",
            fmt,
            "--out",
            tmp_path / "out.json",
            "--durations",
            tmp_path / "durations.csv",
        )
        assert done.returncode == 0, done.stderr
        return
    source = tmp_path / ("in.json" if fmt == "multithumos" else "in.csv")
    source.write_text(content)
    (tmp_path / "durations.csv").write_text("video,duration\nv1,10\n")
    extra = ["--durations", tmp_path / "durations.csv"] if fmt == "csv" else []
    done = run_cli("annotations", "convert", source, "--from", fmt, "--out", tmp_path / "out.json", *extra)
    assert done.returncode == 2 and done.stderr.count("error:") == 1, done.stderr
    assert message in " ".join(done.stderr.split()) and str(source) in done.stderr
    assert not (tmp_path / "out.json").exists()


def test_duplicates_and_malformed_ego4d_fields_are_refused_naming_both_places(tmp_path):
    """The same key twice in one file: never merged nor last-wins; Ego4D's fields of the wrong type:
    one line, not a traceback."""
    (tmp_path / "classes.txt").write_text("1 Run\n2 Jump\n1 Walk\n")
    (tmp_path / "m.json").write_text('{"v": {"duration": 30, "actions": [[1, 1, 2]]}}')
    (tmp_path / "dur.csv").write_text("video,duration\nv1,10\nv1,12\n")
    (tmp_path / "in.csv").write_text("video,start,end,label\nv1,0,5,a\n")
    clip = {"clip_uid": "c1", "video_start_sec": 0, "video_end_sec": 30, "annotations": []}
    ego = {"videos": [{"split": "train", "clips": [clip]}, {"split": "val", "clips": [clip]}]}
    (tmp_path / "ego_twice.json").write_text(json.dumps(ego))
    cases = {
        "classes": (("m.json", "multithumos", "--classes", tmp_path / "classes.txt"), "line 3: class id '1'"),
        "durations": (("in.csv", "csv", "--durations", tmp_path / "dur.csv"), "row 3: video 'v1' again"),
        "clips": (("ego_twice.json", "ego4d-mq"), "clip_uid 'c1' again (first at"),
    }
    for kind in ("annotator a string", "labels: 5", "label a string"):
        bad = dict(
            clip,
            annotations=["x"]
            if kind == "annotator a string"
            else [{"labels": 5}]
            if kind == "labels: 5"
            else [{"labels": ["x"]}],
        )
        (tmp_path / f"{kind}.json").write_text(json.dumps({"videos": [{"split": "val", "clips": [bad]}]}))
        cases[kind] = ((f"{kind}.json", "ego4d-mq"), "expected")
    for name, ((source, fmt, *extra), message) in cases.items():
        out = tmp_path / f"{name}.out.json"
        done = run_cli("annotations", "convert", tmp_path / source, "--from", fmt, "--out", out, *extra)
        assert done.returncode == 2 and done.stderr.count("error:") == 1, (name, done.stderr)
        assert message in " ".join(done.stderr.split()) and not out.exists(), (name, done.stderr)


def test_thumos_txt_refuses_reversed_outside_and_non_utf8_rows(tmp_path):
    folder = tmp_path / "thumos"
    folder.mkdir()
    (folder / "Run_test.txt").write_text("video_test_1 5.0 1.0\n")
    done = run_cli("annotations", "convert", folder, "--from", "thumos-txt", "--out", tmp_path / "a.json")
    assert done.returncode == 2 and "row 1: segment [5.0, 1.0] ends before it starts" in done.stderr
    (folder / "Run_test.txt").write_text("video_test_1 1.0 50.0\n")
    (tmp_path / "dur.csv").write_text("video,duration\nvideo_test_1,30\n")
    done = run_cli(
        "annotations",
        "convert",
        folder,
        "--from",
        "thumos-txt",
        "--out",
        tmp_path / "b.json",
        "--durations",
        tmp_path / "dur.csv",
    )
    assert done.returncode == 2 and "is outside the video [0, 30.0]" in " ".join(done.stderr.split())
    (folder / "Run_test.txt").write_bytes("vid\xe9o_1 1.0 2.0\n".encode("latin-1"))
    done = run_cli("annotations", "convert", folder, "--from", "thumos-txt", "--out", tmp_path / "c.json")
    assert done.returncode == 2 and "not UTF-8 text" in done.stderr
    assert not any((tmp_path / n).exists() for n in ("a.json", "b.json", "c.json"))


def test_charades_clips_actions_past_the_video_and_epic_refuses_an_unknown_class(tmp_path):
    (tmp_path / "c.csv").write_text("id,length,actions\nAB12,30.0,c092 11.90 21.20;c009 25 33.5\nCD34,10,\n")
    done = run_cli(
        "annotations", "convert", tmp_path / "c.csv", "--from", "charades", "--out", tmp_path / "c.json"
    )
    assert done.returncode == 0 and "2 videos, 2 instances (1 clipped" in done.stdout
    assert json.loads((tmp_path / "c.json").read_text())["database"]["AB12"]["annotations"][1]["segment"] == [
        25.0,
        30.0,
    ]
    folder = shared_file("epic100", "EPIC_100_validation.csv").parent
    rows = (folder / "EPIC_100_validation.csv").read_text().splitlines()[:3]
    rows[2] = rows[2].replace(",put-down,1,", ",put-down,999,")
    (tmp_path / "e.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "o.json"
    done = run_cli(
        "annotations",
        "convert",
        tmp_path / "e.csv",
        "--from",
        "epic100",
        "--out",
        out,
        *_epic_side_files(folder),
    )
    assert done.returncode == 2 and "row 3: verb_class 999 is not a class of" in done.stderr


def test_ego4d_moment_queries_convert_per_clip_and_score_recall_at_multiples(tmp_path):
    clips = [
        {
            "clip_uid": "clip1",
            "video_start_sec": 100.0,
            "video_end_sec": 580.0,
            "annotations": [
                {
                    "labels": [
                        {"start_time": 10.0, "end_time": 30.0, "label": "cut", "primary": True},
                        {"start_time": 50.0, "end_time": 90.0, "label": "wash", "primary": True},
                        {"start_time": 11.0, "end_time": 29.0, "label": "hold", "primary": False},
                    ]
                },
                {
                    "labels": [
                        {"start_time": 12.0, "end_time": 31.0, "label": "cut", "primary": True},
                        {"start_time": 470.0, "end_time": 490.0, "label": "wash", "primary": True},
                    ]
                },
            ],
        },
        {
            "clip_uid": "clip2",
            "video_start_sec": 580.0,
            "video_end_sec": 1060.0,
            "annotations": [
                {"labels": [{"start_time": 5.0, "end_time": 8.0, "label": "cut", "primary": True}]}
            ],
        },
    ]
    (tmp_path / "moments.json").write_text(
        json.dumps({"videos": [{"video_uid": "A", "split": "val", "clips": clips}]})
    )
    done = run_cli(
        "annotations",
        "convert",
        tmp_path / "moments.json",
        "--from",
        "ego4d-mq",
        "--out",
        tmp_path / "gt.json",
    )
    assert (
        done.returncode == 0 and "2 videos, 5 instances (1 clipped" in done.stdout
    )  # 490 s > the 480 s clip
    database = json.loads((tmp_path / "gt.json").read_text())["database"]
    assert database["clip1"]["duration"] == 480.0 and database["clip1"]["annotations"][3]["segment"] == [
        470.0,
        480.0,
    ]
    predictions = {
        "clip1": [
            {"label": "cut", "segment": [10.0, 30.0], "score": 0.9},
            {"label": "cut", "segment": [40.0, 45.0], "score": 0.8},
            {"label": "wash", "segment": [460.0, 480.0], "score": 0.7},
        ]
    }
    (tmp_path / "p.json").write_text(json.dumps({"results": predictions}))
    out = tmp_path / "m.json"
    done = run_cli(
        "eval", "--dataset", "ego4d_mq", "-g", tmp_path / "gt.json", "-p", tmp_path / "p.json", "--json", out
    )
    assert done.returncode == 0, done.stderr
    recall = json.loads(out.read_text())["recall_at"]
    # cut: [10, 30] retrieves both cut instances (tIoU 1 and 18/21); wash: [460, 480] has tIoU 0.5
    # with [470, 480], retrieved only above 0.3; clip2 has no detection: 2 (or 3) of 5 instances
    assert (
        recall["R@1x tIoU 0.3"] == 0.6 and recall["R@1x tIoU 0.5"] == 0.4 and recall["R@5x tIoU 0.7"] == 0.4
    )
    assert "R@5x tIoU 0.5" in done.stdout


def test_thumos_annotation_folders_convert_without_ambiguous(tmp_path):
    folder = tmp_path / "annotation"
    folder.mkdir()
    (folder / "CliffDiving_test.txt").write_text("video_test_0000004 0.2 1.1\nvideo_test_0000004 11.4 12.2\n")
    (folder / "HighJump_test.txt").write_text("video_test_0000006 3.0 6.5\n")
    (folder / "Ambiguous_test.txt").write_text("video_test_0000004 2.0 3.0\n")
    (tmp_path / "durations.csv").write_text(
        "video,duration\nvideo_test_0000004,33.83\nvideo_test_0000006,67.11\n"
    )
    durations = ["--durations", tmp_path / "durations.csv"]
    args = ["annotations", "convert", folder, "--from=thumos-txt"]
    done = run_cli(*args, *durations, "--out", tmp_path / "t.json")
    assert done.returncode == 0 and "2 videos, 3 instances (0 clipped" in done.stdout
    assert "1 Ambiguous instance(s) left out" in done.stderr
    database = json.loads((tmp_path / "t.json").read_text())["database"]
    expected = [
        {"segment": [0.2, 1.1], "label": "CliffDiving"},
        {"segment": [11.4, 12.2], "label": "CliffDiving"},
    ]
    assert database["video_test_0000004"] == {"subset": "test", "duration": 33.83, "annotations": expected}
    (folder / "HighJump_test.txt").write_text("video_test_0000006 3.0\n")
    done = run_cli("annotations", "convert", folder, "--from", "thumos-txt", "--out", tmp_path / "u.json")
    assert (
        done.returncode == 2 and "HighJump_test.txt: row 1: expected '<video> <start> <end>'" in done.stderr
    )


def test_a_datasets_split_files_convert_into_one_file_with_their_subsets(tmp_path):
    """Training and evaluation read one file (the same classes for both): the split files convert
    together, each video's subset from its file's name; a video in two files is refused."""
    (tmp_path / "Charades_v1_train.csv").write_text("id,length,actions\nAB12,30.0,c092 11.90 21.20\n")
    (tmp_path / "Charades_v1_test.csv").write_text("id,length,actions\nCD34,10,c009 1 2\n")
    out = tmp_path / "charades.json"
    files = (tmp_path / "Charades_v1_train.csv", tmp_path / "Charades_v1_test.csv")
    done = run_cli("annotations", "convert", *files, "--from", "charades", "--out", out)
    assert done.returncode == 0, done.stderr
    database = json.loads(out.read_text())["database"]
    assert {v: e["subset"] for v, e in database.items()} == {"AB12": "training", "CD34": "testing"}
    (tmp_path / "again_test.csv").write_text("id,length,actions\nAB12,30.0,\n")
    again = tmp_path / "again.json"
    done = run_cli(
        "annotations",
        "convert",
        tmp_path / "Charades_v1_train.csv",
        tmp_path / "again_test.csv",
        "--from",
        "charades",
        "--out",
        again,
    )
    assert_clean_failure(done, "video 'AB12' is in")
    assert not again.exists()


def test_ids_lose_a_video_extension_and_durations_come_from_the_videos(tmp_path):
    """A user's CSV naming files (bikes.mp4): ids without the extension, every command finds the
    video by id; with --videos, each duration is the video's own (not its last instance's end)."""
    from tests.videos import numbered_run

    folder = tmp_path / "videos"
    folder.mkdir()
    numbered_run(folder / "walk.mp4", 60)  # 4.0 s
    numbered_run(folder / "jump.mkv", 45)  # 3.0 s
    rows = "video,start,end,label\nwalk.mp4,0.5,3.8,walk\njump.mkv,1,3.5,jump\n"
    (tmp_path / "labels.csv").write_text(rows)
    out = tmp_path / "own.json"
    done = run_cli(
        "annotations", "convert", tmp_path / "labels.csv", "--from", "csv", "--videos", folder, "--out", out
    )
    assert done.returncode == 0, done.stderr
    database = json.loads(out.read_text())["database"]
    assert database["walk"]["duration"] == pytest.approx(4.0)
    assert database["jump"]["duration"] == pytest.approx(3.0)
    assert database["jump"]["annotations"][0]["segment"] == [1.0, 3.0]  # cut to the video's end, counted
    text = " ".join(done.stderr.split())
    assert "the extension stripped (walk.mp4 -> walk)" in text
    assert "durations read from the 2 video files" in text
    (tmp_path / "twice.csv").write_text("video,start,end,label\nwalk.mp4,0,1,a\nwalk.avi,0,1,a\n")
    done = run_cli(
        "annotations", "convert", tmp_path / "twice.csv", "--from", "csv", "--out", tmp_path / "t.json"
    )
    assert done.returncode == 2 and "are one id once the extension is stripped" in done.stderr


def test_check_and_train_say_when_most_videos_hold_several_classes(tmp_path):
    from stages.data.annotations import load_annotations, several_classes

    database = {
        f"v{i}": {
            "subset": "training",
            "duration": 30.0,
            "annotations": [
                {"segment": [1, 5], "label": "a"},
                {"segment": [6, 9], "label": "b" if i < 2 else "a"},
            ],
        }
        for i in range(3)
    }
    (tmp_path / "gt.json").write_text(json.dumps({"database": database}))
    done = run_cli("annotations", "check", tmp_path / "gt.json")
    text = " ".join(done.stderr.split())
    assert done.returncode == 0 and "2 of 3 videos hold instances of several classes" in text
    assert "model.classifier: proposal" in text
    database["v1"]["annotations"][1]["label"] = "a"  # one of three: no note
    (tmp_path / "gt.json").write_text(json.dumps({"database": database}))
    assert several_classes(list(load_annotations(tmp_path / "gt.json").values())) is None
