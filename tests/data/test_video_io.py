"""Frames by display time on videos that carry what real files carry (tests/videos.py writes them
with PyAV, in the codecs of the issue's real files: H.264, MPEG-4 Part 2, MS-MPEG4, Cinepak, and
what users' own files carry: lost packets, cuts, open GOPs, edit lists, rotation, restarts, audio
before video, cover pictures; each picture shows its own number): for every decoder, exactly which
source picture is stored for each time; the decoders agree; damaged, cut, empty and video-less
files are one line each; and the reader's memory stays flat on a long video."""

from __future__ import annotations

import json
import subprocess
import sys
from fractions import Fraction

import h5py
import numpy as np
import pytest
import yaml

from stages.data.hdf5_cache import read_frames
from stages.data.video_decoders import torchcodec_missing
from stages.data.video_io import TimedVideo, VideoError, decord_available
from stages.data.video_writer import write_video
from tests import videos
from tests.helpers import assert_clean_failure, run_cli, write_config
from tests.videos import number_of, shown, write

pytestmark = pytest.mark.slow
FPS = 15.0


def _decoders() -> list:
    """Every decoder, each skipped with its reason where it cannot run here."""
    missing = {
        "decord": None if decord_available() else "decord has no wheel for this platform",
        "torchcodec": torchcodec_missing(),
    }
    return [
        pytest.param(name, marks=pytest.mark.skipif(bool(missing.get(name)), reason=missing.get(name) or ""))
        for name in ("pyav", "decord", "torchcodec")
    ]


DECODERS = _decoders()

# name -> (file, how it is written, the anomaly a summary should name)
VIDEOS = {
    "bframes_audio_first": ("mp4", {"times": np.arange(90) / 30, "audio_first": True}, None),
    "bframes_in_avi": ("avi", {"times": np.arange(90) / 30}, "out-of-order timestamps"),
    "mpeg4_avi": ("avi", {"times": np.arange(90) / 30, "codec": "mpeg4"}, None),
    "variable_rate": (
        "mp4",
        {
            "times": np.cumsum(np.random.default_rng(0).choice([0.02, 0.05, 0.1], 80)),
            "time_base": Fraction(1, 1000),
        },
        "variable rate",
    ),
    "dropped_frames": (
        "avi",
        {"times": np.r_[np.arange(30), np.arange(60, 120)] / 15, "codec": "mpeg4", "rate": 15, "b_frames": 0},
        "variable rate",
    ),
    "header_disagrees": (
        "mkv",
        {"times": np.arange(45) / 15, "rate": 30, "time_base": Fraction(1, 1000)},
        "rate mismatch",
    ),
    "ten_fps": ("mp4", {"times": np.arange(40) / 10, "rate": 10}, "upsampled"),
    "msmpeg4_ten_fps": (
        "avi",
        {"times": np.arange(40) / 10, "codec": "msmpeg4", "rate": 10, "b_frames": 0},
        "upsampled",
    ),
    "cinepak_dropped": (
        "avi",
        {
            "times": np.r_[np.arange(20), np.arange(50, 80)] / 15,
            "codec": "cinepak",
            "rate": 15,
            "b_frames": 0,
        },
        "variable rate",
    ),
}


@pytest.fixture(scope="module")
def numbered(tmp_path_factory):
    """The test videos, an annotation file naming them (true durations), and a config whose
    data.video_name finds .mp4, .avi and .mkv alike."""
    root = tmp_path_factory.mktemp("numbered")
    (root / "videos").mkdir()
    written = {}
    for name, (ext, how, _) in VIDEOS.items():
        written[name] = write(
            root / "videos" / f"{name}.{ext}",
            list(how["times"]),
            **{k: v for k, v in how.items() if k != "times"},
        )
    database = {
        name: {"subset": "validation", "duration": round(v.duration, 3), "annotations": []}
        for name, v in written.items()
    }
    (root / "anet.json").write_text(json.dumps({"database": database}))
    return root, written


def _config(root, decoder: str, **data) -> str:
    config = {
        "work_dir": str(root / f"work-{decoder}"),
        "data": {
            "annotations": str(root / "anet.json"),
            "video_dir": str(root / "videos"),
            "video_name": ["{id}.mp4", "{id}.*"],
            "fps": FPS,
            "frame_height": 48,
            "frame_width": 64,
            "decoder": decoder,
            "eval_subset": "validation",
            **data,
        },
        "cache": {"jpeg_quality": 90},
    }
    return write_config(root / f"{decoder}.yaml", config)


def _stored_numbers(frames_h5) -> np.ndarray:
    with h5py.File(frames_h5, "r") as f:
        count = len(f["jpeg_offsets"]) - 1
        return np.array([number_of(frame) for frame in read_frames(f, np.arange(count))])


@pytest.mark.parametrize("decoder", DECODERS)
def test_extract_stores_the_picture_shown_at_each_time(numbered, decoder):
    root, written = numbered
    result = run_cli("extract", "-c", _config(root, decoder), "--subset", "all")
    assert result.returncode == 0, result.stderr
    frames = root / f"work-{decoder}" / "frames"
    for name, video in written.items():
        expected = shown(video, FPS)  # what a player shows at k / fps, from the times the test wrote
        got = _stored_numbers(frames / f"{name}.h5")
        assert len(got) == len(expected), (name, len(got), len(expected))
        assert np.array_equal(got, expected), (name, np.flatnonzero(got != expected)[:5])
        record = json.loads((frames / f"{name}.json").read_text())
        assert record["video"]["duration"] == pytest.approx(video.duration, abs=2e-3)
    facts = json.loads((frames / "videos.json").read_text())
    text = " ".join(result.stderr.split())
    for name, (_, _, anomaly) in VIDEOS.items():
        kinds = " ".join(facts[name]["anomalies"])
        if anomaly is None:
            assert facts[name]["anomalies"] == [], (name, kinds)
        else:
            assert f"video(s) {anomaly}:" in text and name in text, (name, anomaly)
    assert facts["ten_fps"]["held"] == pytest.approx(1 / 3, abs=0.02)  # 10 fps shown at 15
    assert facts["dropped_frames"]["source_fps"] == pytest.approx(15.0)


def test_the_decoders_store_the_same_pictures_within_the_resizers_difference(numbered, synth_dir):
    names = [p.values[0] for p in DECODERS if not any(m.args and m.args[0] for m in p.marks)]
    if len(names) < 2:
        pytest.skip("one decoder here: nothing to agree with")
    root, written = numbered
    for name, video in written.items():  # the same source picture for every frame (numbers)
        stored = [TimedVideo(video.path, FPS, decoder, height=48, width=64) for decoder in names]
        numbers = [[number_of(x) for x in v.read(np.arange(len(v)))] for v in stored]
        assert all(n == numbers[0] for n in numbers), (name, names)
    # pixels of real-looking frames (textured movers): the scalers (and torchcodec's colour
    # conversion) differ by under MEAN_GREY on average, by at most TAIL_GREY at 99.9% of pixels
    mp4 = sorted((synth_dir / "videos").glob("*.mp4"))[0]
    reference = TimedVideo(mp4, FPS, "pyav", height=40, width=56)
    pyav = reference.read(np.arange(len(reference))).astype(int)
    for decoder in names[1:]:
        other = TimedVideo(mp4, FPS, decoder, height=40, width=56)
        diff = np.abs(pyav - other.read(np.arange(len(other))).astype(int))
        assert diff.mean() < MEAN_GREY and np.percentile(diff, 99.9) <= TAIL_GREY, (decoder, diff.mean())


MEAN_GREY, TAIL_GREY = 3.0, 80  # measured: docs/extract.md gives the figures


FRAMES, HEIGHT, WIDTH = 2000, 240, 320  # 8 groups of pictures (x264 keyint 250); 460 MB decoded


def _pattern(count: int):
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    for i in range(count):
        frame = np.empty((HEIGHT, WIDTH, 3), np.uint8)
        frame[..., 0], frame[..., 1], frame[..., 2] = (x + 3 * i) % 256, (2 * y + i) % 256, (7 * i) % 256
        yield frame


@pytest.fixture(scope="module")
def long_video(tmp_path_factory):
    path = tmp_path_factory.mktemp("long") / "long.mp4"
    assert write_video(path, _pattern(FRAMES), 30.0) == FRAMES
    return path


def test_reads_in_any_order_give_the_frames_of_a_full_decode(long_video):
    import av

    with av.open(str(long_video)) as container:
        everything = np.stack(
            [
                f.to_ndarray(format="rgb24", width=80, height=60, interpolation="BICUBIC")
                for f in container.decode(container.streams.video[0])
            ]
        )
    video = TimedVideo(long_video, 30.0, "pyav", height=60, width=80)
    assert len(video) == FRAMES == len(everything) and video.facts.source_fps == pytest.approx(30.0)
    rng = np.random.default_rng(0)
    reads = [
        np.arange(0, 300),
        np.sort(rng.integers(0, FRAMES, 60)),
        np.array([FRAMES - 1, 0, 1200, 3]),
        np.arange(FRAMES - 260, FRAMES),
        np.array([700, 250, 249, 251]),
    ]
    for indices in reads:  # forward runs, jumps, steps back (decoding starts over), repeats
        assert np.array_equal(video.read(indices), everything[indices]), indices[:4]
    if decord_available():  # at the native size PyAV and decord decode the same pixels
        native = np.sort(rng.integers(0, FRAMES, 20))
        decoded = TimedVideo(long_video, 30.0, "decord").read(native)
        assert np.array_equal(TimedVideo(long_video, 30.0, "pyav").read(native), decoded)


MEASURE = """
import json, resource, sys
import numpy as np
from stages.data.video_io import TimedVideo
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
video = TimedVideo(sys.argv[1], 30.0, sys.argv[2])
seen = sum(len(batch) for batch in video.frames(64))  # as `etad extract` reads: ascending batches
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"frames": seen, "grew_mib": (after - before) / 1024}))
"""


@pytest.mark.parametrize("decoder", DECODERS)
def test_peak_memory_does_not_grow_with_the_video(long_video, decoder):
    """Reading every frame of a 460 MB-decoded video raises the peak RSS by about one batch."""
    result = subprocess.run(
        [sys.executable, "-c", MEASURE, str(long_video), decoder], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    measured = json.loads(result.stdout)
    decoded_mib = FRAMES * HEIGHT * WIDTH * 3 / 2**20
    assert measured["frames"] == FRAMES
    assert measured["grew_mib"] < decoded_mib / 8, (measured, decoded_mib)


def test_crop_keeps_the_aspect_ratio_and_stretch_keeps_everything(tmp_path):
    """A 4:3 source with red bands at the top and bottom eighths, to a 16:9 frame: `stretch` (the
    original's) squashes the bands in, `crop` cuts them off and keeps the centre's proportions."""
    import av

    path = tmp_path / "banded.mp4"
    picture = np.zeros((96, 128, 3), np.uint8)
    picture[:, :] = (0, 200, 0)
    picture[:12], picture[-12:] = (200, 0, 0), (200, 0, 0)
    write_video(path, [picture] * 10, 10.0)
    for decoder in ("pyav", "decord") if decord_available() else ("pyav",):
        stretched = TimedVideo(path, 10.0, decoder, height=36, width=64).read([0])[0].astype(int)
        cropped = TimedVideo(path, 10.0, decoder, height=36, width=64, resize="crop").read([0])[0].astype(int)
        assert cropped.shape == stretched.shape == (36, 64, 3)
        assert stretched[1, 32, 0] > 150 and stretched[-2, 32, 0] > 150  # the bands, squashed in
        assert cropped[:, :, 0].max() < 60 and cropped[18, 32, 1] > 150  # only the green centre
    assert av  # PyAV wrote it


def test_dry_run_projects_the_bytes_of_a_mixed_set_within_ten_percent(numbered):
    root, _ = numbered
    config = _config(root, "pyav")
    work = root / "work-pyav"
    args = ("cache", "-c", config, "--subset", "all", "--set", f"work_dir={work}-dry")
    projected = run_cli(*args, "--dry-run", "--json")
    assert projected.returncode == 0, projected.stderr
    plan = json.loads(projected.stdout)
    low, median, high = plan["measured"]["bytes_per_frame"]
    assert plan["measured"]["videos"] == min(len(VIDEOS), 8) and low <= median <= high  # max(8, 1%)
    assert run_cli(*args).returncode == 0
    written = sum(p.stat().st_size for p in (root / "work-pyav-dry" / "cache" / "snippets").glob("*.h5"))
    assert abs(plan["projected_bytes"] - written) <= 0.10 * written, (plan["projected_bytes"], written)


def test_a_damaged_file_is_decoded_around_its_bad_packets(tmp_path):
    """PyAV skips packets that do not decode (as players do) and says how many pictures it lost;
    where decord stops on them, PyAV goes on with the video (noted)."""
    rng = np.random.default_rng(0)
    path = tmp_path / "broken.mp4"
    write_video(path, [rng.integers(0, 255, (96, 128, 3), dtype=np.uint8) for _ in range(60)], 30.0, crf=30)
    data = bytearray(path.read_bytes())
    for at in range(len(data) // 3, 2 * len(data) // 3, 997):
        data[at : at + 40] = bytes(range(40))
    path.write_bytes(bytes(data))
    video = TimedVideo(path, 15.0, "pyav", height=48, width=64)
    assert sum(len(batch) for batch in video.frames(64)) == 30
    facts = video.finish()
    assert 0 < facts.lost < facts.coded_frames == 60
    assert any(kind == "damaged" for kind, _ in facts.anomalies(15.0))
    assert any("did not decode" in note for note in facts.notes)
    if decord_available():
        video = TimedVideo(path, 15.0, "decord", height=48, width=64)
        assert np.array_equal(
            video.read(np.arange(30)), TimedVideo(path, 15.0, "pyav", height=48, width=64).read(np.arange(30))
        )
        facts = video.finish()
        assert facts.decoder == "pyav" and any(
            n.startswith("decord: stopped at picture") for n in facts.notes
        )


# ---- what users' own files carry: each case for every decoder ---------------------------------


def _cut(folder, name: str, first_packet: int, fmt: str, **how):
    """A copy-cut of a 90-picture 30 fps source from packet `first_packet` on."""
    source = folder / f"{name}-source.{fmt if fmt == 'mp4' else 'ts'}"
    videos.numbered_run(source, 90, rate=30, fmt=None if fmt == "mp4" else "mpegts", options=how["options"])
    keys = how.get("key")
    if keys is not None:  # the cut starts at the keyframe after the first
        import av

        with av.open(str(source)) as container:
            first_packet = [i for i, p in enumerate(container.demux(video=0)) if p.is_keyframe and p.size][
                keys
            ]
    path = folder / f"{name}.{fmt}"
    copied = videos.cut_copy(
        source, path, first_packet, shift=how.get("shift", 0.0), fmt=None if fmt == "mp4" else "mpegts"
    )
    return videos.cut_truth(path, copied, 30)


CLOSED = {"g": "30", "bf": "2", "x264-params": "scenecut=0"}
OPEN = {"x264-params": "keyint=30:min-keyint=30:scenecut=0:open-gop=1:bframes=3:b-adapt=0"}
# name -> (how it is made, the anomalies a summary names: kinds)
OWN_FILES = {
    "zeroed_packet": (lambda d: videos.zeroed_packet(d / "zeroed_packet.mp4"), {"damaged"}),
    "ts_mid_gop": (lambda d: _cut(d, "ts_mid_gop", 18, "ts", options=CLOSED), {"late start"}),
    "open_gop": (lambda d: _cut(d, "open_gop", 0, "ts", options=OPEN, key=1), set()),
    "edit_list_preroll": (
        lambda d: _cut(d, "edit_list_preroll", 0, "mp4", options=CLOSED, key=1, shift=-1.5),
        set(),
    ),
    "rotate_90": (lambda d: videos.rotated(d / "rotate_90.mp4", "cclock"), set()),
    "rotate_180": (lambda d: videos.rotated(d / "rotate_180.mp4", "rotate 180"), set()),
    "rotate_270": (lambda d: videos.rotated(d / "rotate_270.mp4", "clock"), set()),
    "flip": (lambda d: videos.rotated(d / "flip.mp4", "hflip"), set()),
    "audio_leads": (lambda d: videos.numbered_run(d / "audio_leads.mp4", 30, lead=0.5), {"late start"}),
    "two_ts_recordings": (
        lambda d: videos.concatenated_ts(d / "two_ts_recordings.ts"),
        {"timestamp discontinuity"},
    ),
    "forward_splice": (lambda d: videos.spliced_ts(d / "forward_splice.ts"), {"timestamp discontinuity"}),
    "thumbnail_first": (
        lambda d: videos.numbered_run(d / "thumbnail_first.mp4", 30, cover_first=True),
        set(),
    ),
}


@pytest.fixture(scope="module")
def own_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("own")
    return {name: make(folder) for name, (make, _) in OWN_FILES.items()}


@pytest.mark.parametrize("decoder", DECODERS)
def test_each_picture_at_its_own_time_upright_on_the_players_clock(own_files, decoder):
    """The picture a player shows at each k / fps, for every case of users' own files: a lost
    packet moves no other picture, leading pictures and preroll are not shown, rotation and flips
    applied, restarts and splices joined, time from the file's start; and only true notes."""
    for name, truth in own_files.items():
        video = TimedVideo(truth.path, FPS, decoder, height=48, width=64)
        got = np.array([number_of(frame) for frame in video.read(np.arange(len(video)))])
        facts = video.finish()
        expected = truth.shown(FPS)
        assert len(got) == len(expected), (name, len(got), len(expected))
        assert np.array_equal(got, expected), (
            name,
            np.flatnonzero(got != expected)[:5],
            got[:8],
            expected[:8],
        )
        kinds = {kind for kind, _ in facts.anomalies(FPS)}
        assert kinds == OWN_FILES[name][1], (name, kinds, facts.notes)
    lost = TimedVideo(own_files["zeroed_packet"].path, FPS, decoder)
    lost.read(np.arange(len(lost)))
    assert "1 of 60 pictures not decoded (at 0.67 s)" in " ".join(p for _, p in lost.finish().anomalies(FPS))
    joined = TimedVideo(own_files["two_ts_recordings"].path, FPS, decoder).facts
    assert joined.duration == pytest.approx(6.0, abs=0.1) and joined.discontinuities == [
        pytest.approx(3.0, abs=0.15)
    ]
    turned = TimedVideo(own_files["rotate_90"].path, FPS, decoder).facts
    assert (turned.rotation, turned.display) == (270, "cclock")
    assert TimedVideo(own_files["audio_leads"].path, FPS, decoder).facts.start_offset == pytest.approx(0.5)


def test_a_gap_in_a_file_that_keeps_its_clock_is_kept_and_noted(tmp_path):
    """In MP4 a jump of the clock is the file's timing (a paused recording): kept, noted however
    small a share of the intervals it is."""
    times = np.r_[np.arange(30) / 15, 12 + np.arange(30) / 15]
    videos._encode(tmp_path / "paused.mp4", [videos.numbered(i) for i in range(60)], times, rate=15)
    video = TimedVideo(tmp_path / "paused.mp4", FPS, "pyav", height=48, width=64)
    got = [number_of(frame) for frame in video.read(np.arange(len(video)))]
    assert len(got) == 14 * 15 and got[29] == 29 and got[30 : 12 * 15] == [29] * (12 * 15 - 30)
    assert got[12 * 15] == 30
    assert ("gap", "a gap of 10.1 s at 1.93 s (the picture before holds)") in video.finish().anomalies(FPS)


@pytest.mark.parametrize("decoder", DECODERS)
def test_crop_uses_the_displayed_shape_sample_aspect_and_rotation(tmp_path, decoder):
    """Anamorphic 4:3 pixels (128x96 coded shows as 171x96, 16:9): cropped to 16:9 nothing is cut,
    the red bands at the top and bottom stay; a portrait phone video (rotated 90) cropped to 16:9
    keeps its upright centre."""
    picture = np.zeros((96, 128, 3), np.uint8)
    picture[:, :] = (0, 200, 0)
    picture[:8], picture[-8:] = (200, 0, 0), (200, 0, 0)
    path = tmp_path / "anamorphic.mp4"
    videos._encode(path, [picture] * 5, np.arange(5) / 15, rate=15, sar=Fraction(4, 3))
    video = TimedVideo(path, FPS, decoder, height=36, width=64, resize="crop")
    frame = video.read([0])[0].astype(int)
    assert frame.shape == (36, 64, 3) and frame[0, 32, 0] > 150 and frame[-1, 32, 0] > 150, frame[:, 32, 0]
    assert video.facts.sample_aspect == pytest.approx(4 / 3, abs=1e-4)
    # a phone's portrait video: coded landscape with red columns at its sides, turned a quarter by
    # its display matrix: upright it is 128 high and 96 wide, the red bands at its top and bottom
    coded = np.zeros((96, 128, 3), np.uint8)
    coded[:, :] = (0, 200, 0)
    coded[:, :8], coded[:, -8:] = (200, 0, 0), (200, 0, 0)
    path = tmp_path / "portrait.mp4"
    videos._encode(path, [coded] * 5, np.arange(5) / 15, rate=15, matrix=videos.upright_source("cclock"))
    video = TimedVideo(path, FPS, decoder, height=48, width=64, resize="crop")
    assert video.size == (85, 64)  # covers 48x64 at the upright 3:4
    frame = video.read([0])[0].astype(int)
    assert frame.shape == (48, 64, 3) and frame[:, :, 0].max() < 60, frame[:, 32, 0]  # bands cut off
    stretched = TimedVideo(path, FPS, decoder, height=48, width=64).read([0])[0].astype(int)
    assert stretched[0, 32, 0] > 150 and stretched[24, 0, 0] < 60  # upright: bands top and bottom


@pytest.mark.parametrize("decoder", DECODERS)
def test_files_without_a_video_stream_or_any_decodable_picture_are_one_line(tmp_path, decoder):
    cases = {
        "audio.m4a": (videos.audio_only(tmp_path / "audio.m4a"), "no video stream"),
        "cover.m4a": (
            videos.audio_only(tmp_path / "cover.m4a", cover=True),
            "only a cover picture, no video stream",
        ),
        "zeroed.mp4": (videos.every_packet_zeroed(tmp_path / "zeroed.mp4"), "no picture could be decoded"),
    }
    for name, (path, reason) in cases.items():
        with pytest.raises(VideoError) as failed:
            video = TimedVideo(path, FPS, decoder, height=48, width=64)
            video.read(np.arange(len(video)))
        assert str(failed.value) == f"{path}: {reason}", name


def test_extract_names_each_file_without_pictures_in_one_line_and_keeps_what_it_had(numbered, tmp_path):
    """An audio file, an audio file with cover art and a file whose every packet is damaged beside
    a good video: one line each in failures.json, exit 1, and the good video's frames, extracted
    by an earlier run, untouched."""
    root, _ = numbered
    folder = tmp_path / "videos"
    folder.mkdir()
    good = write(folder / "good.mp4", list(np.arange(30) / 15), rate=15)
    config = yaml.safe_load(_config(root, "pyav").read_text())
    config["work_dir"] = str(tmp_path / "work")
    config["data"].update(annotations=str(tmp_path / "anet.json"), video_dir=str(folder))
    write_config(tmp_path / "c.yaml", config)
    database = {"good": {"subset": "validation", "duration": good.duration, "annotations": []}}
    (tmp_path / "anet.json").write_text(json.dumps({"database": database}))
    assert run_cli("extract", "-c", tmp_path / "c.yaml", "--subset", "all").returncode == 0
    frames = tmp_path / "work" / "frames" / "good.h5"
    before = frames.read_bytes()
    bad = {
        "music": videos.audio_only(folder / "music.m4a"),
        "album": videos.audio_only(folder / "album.m4a", cover=True),
        "broken": videos.every_packet_zeroed(folder / "broken.mp4"),
    }
    for name in bad:
        database[name] = {"subset": "validation", "duration": 1.0, "annotations": []}
    (tmp_path / "anet.json").write_text(json.dumps({"database": database}))
    done = run_cli("extract", "-c", tmp_path / "c.yaml", "--subset", "all")
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    failures = {f["video_id"]: f["reason"] for f in json.loads((frames.parent / "failures.json").read_text())}
    assert failures == {
        "music": f"{bad['music']}: no video stream",
        "album": f"{bad['album']}: only a cover picture, no video stream",
        "broken": f"{bad['broken']}: no picture could be decoded",
    }
    assert frames.read_bytes() == before


def test_a_decoder_that_cannot_run_here_is_one_line_before_any_work(numbered, monkeypatch, tmp_path):
    """torchcodec absent (or without FFmpeg's libraries): `extract` stops at once, exit 2, saying
    what to install; nothing is written."""
    import sys

    root, _ = numbered
    monkeypatch.setitem(sys.modules, "torchcodec", None)  # as if not installed
    work = tmp_path / "work"
    done = run_cli(
        "extract",
        "-c",
        _config(root, "pyav"),
        "--set",
        f"work_dir={work}",
        "--set",
        "data.decoder=torchcodec",
    )
    text = " ".join(done.stderr.split())
    assert_clean_failure(done)
    assert "data.decoder torchcodec: torchcodec is not installed: pip install 'etad[torchcodec]'" in text
    assert not (work / "frames").exists() or not any((work / "frames").iterdir())


def test_a_crop_larger_than_the_video_is_cut_in_source_pixels(tmp_path):
    """data.frame_width 4000 on a 128x96 video: decoded at 128x96 (not 3000x4000), the output's
    aspect cut from the source's centre, then resized; the numbers still read."""
    truth = videos.numbered_run(tmp_path / "small.mp4", 5)
    video = TimedVideo(truth.path, FPS, "pyav", height=2000, width=2000, resize="crop")
    assert video.size == (96, 128)
    frames = video.read(np.arange(3))
    assert frames.shape == (3, 2000, 2000, 3)


def test_two_files_for_one_id_are_named_and_refused(numbered, tmp_path):
    root, _ = numbered
    folder = tmp_path / "videos"
    folder.mkdir()
    write(folder / "clip.mp4", list(np.arange(15) / 15), rate=15)
    write(folder / "clip.mkv", list(np.arange(15) / 15), rate=15)
    (folder / "clip.srt").write_text("1\n00:00:00,000 --> 00:00:01,000\nhi\n")  # a sidecar: not a video
    (tmp_path / "anet.json").write_text(
        json.dumps({"database": {"clip": {"subset": "validation", "duration": 1.0, "annotations": []}}})
    )
    config = yaml.safe_load(_config(root, "pyav").read_text())
    config["work_dir"] = str(tmp_path / "work")
    config["data"].update(
        annotations=str(tmp_path / "anet.json"), video_dir=str(folder), video_name=["{id}.*"]
    )
    write_config(tmp_path / "c.yaml", config)
    done = run_cli("extract", "-c", tmp_path / "c.yaml", "--subset", "all")
    text = " ".join(done.stderr.split())
    assert done.returncode == 2 and f"matches {folder / 'clip.mkv'} and {folder / 'clip.mp4'}" in text, text
    (folder / "clip.mkv").unlink()
    assert run_cli("extract", "-c", tmp_path / "c.yaml", "--subset", "all").returncode == 0
