"""`etad view` in a real browser (headless Chromium through Playwright): the page opens from the
file system, a click on a detection seeks the player there, the console stays clean; and its
subtitles, text handling and bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tests.helpers import run_cli


def _predictions(synth_dir, path, seed: int = 0) -> list[str]:
    """Validation detections near the synthetic ground truth (seeded), a crafted label among them."""
    database = json.loads((synth_dir / "anet.json").read_text())["database"]
    rng, results = np.random.default_rng(seed), {}
    videos = sorted(v for v, e in database.items() if e["subset"] == "validation")
    for video_id in videos:
        dets = []
        for a in database[video_id]["annotations"]:
            s, e = a["segment"]
            for _ in range(3):
                js, je = rng.normal(0, 0.5, 2)
                segment = [max(0.0, s + js), e + je]
                dets.append({"label": a["label"], "score": float(rng.random()), "segment": segment})
        results[video_id] = dets
    path.write_text(json.dumps({"results": results}))
    return videos


def _view(tmp_path, synth_dir, *extra):
    predictions = tmp_path / "predictions.json"
    videos = _predictions(synth_dir, predictions)
    args = ["view", "--dataset", "anet", "--subset", "validation", "-g", synth_dir / "anet.json"]
    where = ["--videos", synth_dir / "videos", "--out", tmp_path / "view"]
    result = run_cli(*args, "-p", predictions, *where, *extra)
    assert result.returncode == 0, result.stderr
    return videos


@pytest.mark.slow
def test_a_click_on_a_detection_seeks_the_player_in_a_real_browser(tmp_path, synth_dir):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no Chromium: `apt-get install chromium` (Debian's package; .ci/run installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra")
    _view(tmp_path, synth_dir)
    page_file = tmp_path / "view" / "index.html"
    problems = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--allow-file-access-from-files"])
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.goto(page_file.as_uri())
        page.wait_for_function("document.getElementById('player').readyState >= 1", timeout=20_000)
        duration = page.evaluate("document.getElementById('player').duration")
        assert duration > 1  # the video file itself loaded, from the file system
        # it opens on the first row of its own list; a seconds axis and a class legend under the bars
        assert page.locator("#list tr").first.get_attribute("class") == "on"
        ticks = page.locator("#timeline text.tick").all_text_contents()
        assert len(ticks) >= 4 and ticks[0] == "0 s" and all(t.endswith(" s") for t in ticks)
        assert page.locator("#timeline rect.legend").count() >= 1
        detection = page.locator("rect.detection").nth(1)
        start = float(detection.get_attribute("data-start"))
        detection.click()
        page.wait_for_function(f"Math.abs(document.getElementById('player').currentTime - {start}) < 0.05")
        cursor = page.evaluate("Number(document.querySelector('#timeline line.cursor').getAttribute('x1'))")
        rect_x = float(detection.get_attribute("x"))
        assert abs(cursor - rect_x) < 1.5  # the cursor followed the player to the detection
        page.locator("th", has_text="errors").click()  # sort by errors: the list is redrawn
        assert page.locator("#list tr").count() == 2
        page.screenshot(path=str(tmp_path / "view.png"), full_page=True)
        browser.close()
    assert problems == [] and (tmp_path / "view.png").stat().st_size > 10_000


def test_subtitles_and_file_text_are_written_as_text(tmp_path, synth_dir):
    videos = _view(tmp_path, synth_dir, "--subtitles", "srt")
    page = (tmp_path / "view" / "index.html").read_text()
    data = json.loads(page.split('<script type="application/json" id="data">', 1)[1].split("</script>", 1)[0])
    assert [v["id"] for v in data["videos"]] == videos and all(v["src"] for v in data["videos"])
    first = (tmp_path / "view" / "subtitles" / f"{videos[0]}.srt").read_text()
    assert first.startswith("1\n00:00:") and " --> " in first
    args = ["view", "--dataset", "anet", "--subset", "validation", "-g", synth_dir / "anet.json"]
    done = run_cli(*args, "-p", tmp_path / "predictions.json", "--out", tmp_path / "ass", "--subtitles=ass")
    assert done.returncode == 0
    ass = (tmp_path / "ass" / "subtitles" / f"{videos[0]}.ass").read_text()
    assert "[Events]" in ass and "Dialogue: 0,0:00:" in ass
    # a label that would close the script tag stays inside the JSON
    crafted = json.loads((synth_dir / "anet.json").read_text())
    video = videos[0]
    crafted["database"][video]["annotations"][0]["label"] = "</script><img src=x onerror=alert(1)>"
    (tmp_path / "crafted.json").write_text(json.dumps(crafted))
    predictions = json.loads((tmp_path / "predictions.json").read_text())
    for d in predictions["results"][video]:
        d["label"] = "</script><img src=x onerror=alert(1)>"
    (tmp_path / "crafted_p.json").write_text(json.dumps(predictions))
    result = run_cli(
        "view",
        "--dataset",
        "anet",
        "--subset",
        "validation",
        "-g",
        tmp_path / "crafted.json",
        "-p",
        tmp_path / "crafted_p.json",
        "--out",
        tmp_path / "crafted",
    )
    assert result.returncode == 0, result.stderr
    html = (tmp_path / "crafted" / "index.html").read_text()
    assert "<img src=x" not in html and html.count("</script>") == 2


def test_view_refuses_bad_input_in_one_line(tmp_path, synth_dir):
    _view(tmp_path, synth_dir)
    args = ["view", "--dataset", "anet", "--subset", "validation", "-g", synth_dir / "anet.json"]
    result = run_cli(*args, "-p", tmp_path / "predictions.json", "--subtitles=vtt", "--out", tmp_path / "x")
    assert result.returncode == 2 and "--subtitles vtt: expected one of srt, ass" in result.stderr
    predictions = json.loads((tmp_path / "predictions.json").read_text())
    predictions["results"]["../../escape"] = next(iter(predictions["results"].values()))
    (tmp_path / "bad.json").write_text(json.dumps(predictions))
    result = run_cli(*args, "-p", tmp_path / "bad.json", "--out", tmp_path / "y")
    assert result.returncode == 2 and "contains the path separator" in result.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_view_detects_with_a_checkpoint_first(tmp_path, trained):
    root = tmp_path / "tiny"
    shutil.copytree(trained, root)
    checkpoint = root / "work" / "pretrain" / "checkpoints" / "last.pt"
    result = run_cli("view", "-c", root / "tiny.yaml", "--checkpoint", checkpoint)
    assert result.returncode == 0, result.stderr
    assert (root / "work" / "results" / "detections.json").is_file()  # infer ran, into infer.output
    page = (root / "work" / "results" / "detections" / "view" / "index.html").read_text()
    assert '"videos":[{"id":' in page
    assert run_cli("view", "--checkpoint", checkpoint, "-g", root / "tiny_anet.json").returncode == 2


HOSTILE = [
    "walk\n\nDialogue: 0,0:00:00.40,9:00:00.00,Default,INJECTED",  # a blank line: a new SRT cue
    "run\rDialogue: 0,0:00:00.40,9:00:00.00,Default,INJECTED",  # ASS reads \r as a line end
    "jump\u2028two\u2029lines",
    "<i>italic</i> {\\an8}top \\N break",
]


@pytest.mark.parametrize("kind", ["srt", "ass"])
def test_every_detection_is_one_subtitle_event_whatever_its_label(tmp_path, kind):
    """Labels with line breaks, markup and override codes, read back by FFmpeg's own subtitle
    parsers (through PyAV): exactly one event per detection, each with its label's text."""
    import av

    from stages.view import subtitles

    video = {"detections": [(1.0 + i, 2.0 + i, i, 0.5, 0) for i in range(len(HOSTILE))]}
    path = tmp_path / f"cues.{kind}"
    path.write_text(subtitles(video, HOSTILE, kind), encoding="utf-8")
    with av.open(str(path)) as container:
        stream = container.streams.subtitles[0]
        texts = []
        for packet in container.demux(stream):
            if packet.size:
                for sub in packet.decode():  # the event's fields, then its text
                    fields = bytes(sub.ass).decode("utf-8").split("Default,", 1)[1]
                    texts.append(fields.split(",,", 1)[-1] if kind == "srt" else fields)
    assert len(texts) == len(HOSTILE), texts
    assert not any("INJECTED" in t and t.startswith("INJECTED") for t in texts)
    assert all("\n" not in t and "\r" not in t and "\\N" not in t for t in texts), texts
    assert texts[0].startswith("walk") and "INJECTED" in texts[0]  # the text kept, on one line


def test_view_finds_each_video_as_extract_does_and_says_where_it_looked(tmp_path, synth_dir):
    """data.video_name's patterns (a `clip_{id}.mp4` folder) find the players; where none is found,
    the note names the folder and the patterns tried. Sidecar files are never taken for a video."""
    import shutil

    from stages.view import find_video

    videos = _predictions(synth_dir, tmp_path / "predictions.json")
    folder = tmp_path / "renamed"
    folder.mkdir()
    for video_id in videos:
        shutil.copy(synth_dir / "videos" / f"{video_id}.mp4", folder / f"clip_{video_id}.mp4")
    (folder / f"{videos[0]}.srt").write_text("1\n00:00:00,000 --> 00:00:01,000\nx\n")
    assert find_video(folder, videos[0]) is None  # a subtitle file is no video
    assert find_video(folder, videos[0], ("clip_{id}.mp4",)) == folder / f"clip_{videos[0]}.mp4"
    from stages import view

    files = {
        "ground_truth": synth_dir / "anet.json",
        "predictions": tmp_path / "predictions.json",
        "dataset": "anet",
        "subset": "validation",
        "videos": folder,
    }
    done = view.run(**files, out=tmp_path / "v1", video_names=("clip_{id}.mp4",))
    assert done["with_file"] == done["videos"] == len(videos)
    done = view.run(**files, out=tmp_path / "v2")
    assert done["with_file"] == 0
    n = len(videos)
    assert f"{n} of {n} videos have no file in {folder} (tried {{id}}.* for each id)" in done["notes"]
