"""`etad cache`: cut extracted frames into snippets, or encode them, and store per-video HDF5 files.

- `--what snippets`: uint8 frames of every snippet at the protocol's positions, for end-to-end training.
- `--what features`: a frozen encoder over those snippets, in no-grad batches: features [T, D].
- `--from-npy DIR`: import released per-video features (`v_<id>.npy` or `<id>.npy`, [T, D]) as they are.

Every file carries a fingerprint of the settings that decide its content: a rerun skips files with
the current fingerprint, redoes stale ones, and training refuses a stale cache. Layout: docs/cache.md.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stages.core.errors import UserError
from stages.core.files import ensure_writable_dir, human_bytes
from stages.core.progress import SILENT, Progress
from stages.core.settings import Settings
from stages.core.workdir import features_dir, snippets_dir
from stages.data.annotations import load_annotations, safe_path
from stages.data.fingerprints import (
    ExpectedFingerprint,
    feature_fingerprint,
    npy_fingerprint,
    snippet_fingerprint,
)
from stages.data.frame_codec import encode_jpeg
from stages.data.hdf5_cache import (
    VideoCache,
    require_finite,
    stored_fingerprint,
    video_file,
    write_snippet_file,
    write_video_file,
)
from stages.data.per_video import run_each
from stages.data.protocols import protocol
from stages.data.video_decoders import decoder_problem
from stages.data.video_facts import VideoNotes
from stages.data.video_io import VideoError
from stages.data.video_selection import WHOLE, Shard, drop_missing, select, write_lists
from stages.data.video_snippets import decodable, video_snippets
from stages.model.frozen_encoder import FeatureEncoder

KINDS = ("snippets", "features")


@dataclass
class CacheSummary:
    kind: str
    out_dir: Path
    done: int = 0
    skipped: int = 0
    seconds: float = 0.0
    failures: list[dict] = field(default_factory=list)
    frame_bytes: int = 0  # snippets: what the stored frames of the videos done take
    missing: list[str] = field(default_factory=list)  # data.missing: skip
    notes: list[str] = field(default_factory=list)
    videos: VideoNotes = field(default_factory=VideoNotes)  # what decoding found, per video
    shard: Shard = WHOLE


def _header(kind: str, video_id: str, expected: ExpectedFingerprint, fps: float) -> dict:
    """The attributes every cache file made from frames starts with: what it is, of which video,
    made with which settings (their fingerprint and the settings by name), at which rate."""
    record = json.dumps(expected.as_record())
    return {
        "kind": kind,
        "video_id": video_id,
        "fingerprint": expected.stamp,
        "fingerprint_of": record,
        "fps": fps,
    }


def _snippet_job(
    settings: Settings, video_id: str, path: Path, expected: ExpectedFingerprint, annotated: float | None
) -> tuple[int, dict | None]:
    """Cache one video's snippets (from its extracted frames, else its video file); the frames' bytes
    and what decoding found (VideoFacts' record, recorded in the file as `video`)."""
    source, c = video_snippets(settings, video_id, annotated), settings.cache
    facts: dict = {}

    def attrs() -> dict:
        facts.update((source.facts() if source.facts else None) or {})
        return {**fixed, **({"video": json.dumps(facts)} if facts else {})}

    fixed = _header("snippets", video_id, expected, settings.data.fps) | {"num_frames": source.num_frames}
    fixed["source"] = source.source
    batches = source.batches(as_jpeg=c.jpeg_quality if c.codec == "jpeg" else None)
    shape = (settings.data.frame_height, settings.data.frame_width)
    size = write_snippet_file(
        path,
        batches,
        snippet_frames=source.snippet_frames,
        frame_indices=source.frame_indices,
        attrs=attrs,
        codec=c.codec,
        quality=c.jpeg_quality,
        compression=c.compression,
        shape=shape,
    )
    return size, facts or None


def snippets_to_encode(settings: Settings, video_id: str) -> tuple[Iterator[np.ndarray], int]:
    """A video's snippets, cache.chunk_snippets at a time (uint8 [n, L, H, W, 3]), and its frame
    count: from the snippet cache when it is current, else from its extracted frames or its video
    file. Memory holds one chunk, whatever the video's length."""
    size = settings.cache.chunk_snippets
    folder, stamp = snippets_dir(settings), snippet_fingerprint(settings)
    if _current(folder, stamp)(video_id):
        cache = VideoCache(folder, "snippets", ExpectedFingerprint.of(settings, "snippets"))
        count = cache.length(video_id) or 0
        chunks = (cache.read(video_id, slice(start, start + size)) for start in range(0, count, size))
        return chunks, int(cache.attrs(video_id)["num_frames"])
    source = video_snippets(settings, video_id)
    return source.snippet_chunks(size), source.num_frames


def _feature_job(
    encoder: FeatureEncoder, settings: Settings, video_id: str, path: Path, expected: ExpectedFingerprint
) -> None:
    chunks, num_frames = snippets_to_encode(settings, video_id)
    attrs = _header("features", video_id, expected, settings.data.fps) | {"num_frames": num_frames}
    attrs |= {"encoder": encoder.encoder.name, "source": "snippets"}
    features = np.concatenate([encoder.encode(chunk) for chunk in chunks])
    require_finite(features, f"{path.name} (encoder {encoder.encoder.name!r})")
    write_video_file(path, {"features": features}, attrs)


def _import_npy(npy_dir: Path, video_id: str, path: Path, stamp: str) -> None:
    source = next((c for c in _npy_candidates(npy_dir, video_id) if c.is_file()), None)
    if source is None:
        raise UserError(f"{npy_dir}: no v_{video_id}.npy or {video_id}.npy")
    try:
        features = np.load(source, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise UserError(f"{source}: not a valid .npy file ({str(exc)[:120]})") from None
    if features.ndim != 2 or features.shape[0] == 0 or features.shape[1] == 0:
        raise UserError(f"{source}: expected features of shape [T, D], got {list(features.shape)}")
    if not np.issubdtype(features.dtype, np.number) or np.issubdtype(features.dtype, np.complexfloating):
        raise UserError(f"{source}: expected real numbers, got dtype {features.dtype}")
    require_finite(features, source)
    attrs = {
        "kind": "features",
        "video_id": video_id,
        "fingerprint": stamp,
        "source": str(source),
        "encoder": "npy",
    }
    write_video_file(path, {"features": features}, attrs)


def _npy_candidates(npy_dir: Path, video_id: str) -> list[Path]:
    return [safe_path(npy_dir, video_id, "v_{id}.npy"), safe_path(npy_dir, video_id, "{id}.npy")]


def _input_of(settings: Settings, kind: str, from_npy: Path | None) -> tuple[Callable[[str], bool], str]:
    """Whether a video's input is there, and what that input is called (for data.missing)."""
    if from_npy is not None:
        return lambda v: any(c.is_file() for c in _npy_candidates(Path(from_npy), v)), f".npy in {from_npy}"

    if kind == "snippets":
        return lambda v: decodable(settings, v), f"video file or extracted frames ({_where_videos(settings)})"
    current = _current(snippets_dir(settings), snippet_fingerprint(settings))
    what = f"snippet cache, extracted frames or video file ({_where_videos(settings)})"
    return lambda v: current(v) or decodable(settings, v), what


def _where_videos(settings: Settings) -> str:
    """Where video files were looked for, for a missing video's message."""
    d = settings.data
    if d.video_dir is None:
        return "data.video_dir unset"
    return f"videos named {' or '.join(d.video_names)} in {d.video_dir}"


def _stamp(settings: Settings, kind: str, from_npy: Path | None) -> str:
    """The fingerprint the run's cache files must carry."""
    if from_npy is not None:
        return npy_fingerprint(from_npy)
    return snippet_fingerprint(settings) if kind == "snippets" else feature_fingerprint(settings)


def _current(folder: Path, stamp: str) -> Callable[[str], bool]:
    """Whether a video's file in `folder` is cached with this fingerprint (a rerun skips it)."""
    return lambda video_id: stored_fingerprint(video_file(folder, video_id)) == stamp


HDF5_FILE_BYTES = 9_640  # HDF5's own header and metadata in a snippet file (measured, h5py 3)


def _stored_frames(settings: Settings, record) -> tuple[int, int]:
    """(frames a video's snippets store, snippet frames in all), from its annotated duration (none
    when that is unusable: NaN, or 1e9 s, which would be gigabytes of positions)."""
    d = settings.data
    if record.unusable() and record.problem is None:
        return 0, 0
    positions = protocol(d).snippet_frames(max(1, int(np.floor((record.duration or 0.0) * d.fps + 1e-6))))
    return len(np.unique(positions)), positions.size


def sample_videos(ids: list[str], seed: int, least: int = 8, share: float = 0.01) -> list[str]:
    """The videos a dry run measures: max(least, share of them), drawn (seeded) over the whole set,
    in the set's order. Footage varies by video (2.4x in bytes per frame on six real files), so
    the first few of an annotation file say little about the rest."""
    count = min(len(ids), max(least, int(np.ceil(share * len(ids)))))
    chosen = np.random.default_rng(seed).choice(len(ids), size=count, replace=False)
    return [ids[i] for i in sorted(chosen)]


@dataclass
class Measured:
    """What a dry run measured on its sample of the user's own videos."""

    bytes_per_frame: list[float] = field(default_factory=list)  # each video's mean
    seconds: float = 0.0  # decode + encode, all sampled frames
    frames: int = 0  # sampled frames
    decoded: float = 0.0  # frames at data.fps the measured videos decode to
    annotated: float = 0.0  # ... and their annotations' durations give
    unreadable: list[str] = field(default_factory=list)


def _measure_frames(settings: Settings, stored: dict[str, int], ids: list[str]) -> Measured:
    """Bytes and seconds per stored frame, and decoded against annotated length (`stored`: the
    frames each video's annotated duration gives), measured on `ids`: decode (or read) -> encode,
    as a run does."""
    c, d, out = settings.cache, settings.data, Measured()
    for video_id in ids:
        began = time.perf_counter()
        try:  # a video that cannot be read is the run's to report (exit 1, the others done)
            source = video_snippets(settings, video_id)
            spread = np.linspace(0, len(source.stored) - 1, min(32, len(source.stored))).astype(int)
            frames = source.read(source.stored[spread])
        except Exception as exc:  # noqa: BLE001 - any reason a video cannot be read is reported, not raised
            known = isinstance(exc, UserError | VideoError)
            reason = str(exc) if known else f"{exc.__class__.__name__}: {exc}"
            out.unreadable.append(f"{video_id} ({reason[:120]})")
            continue
        blobs = encode_jpeg(frames, c.jpeg_quality) if c.codec == "jpeg" else list(frames)
        out.seconds += time.perf_counter() - began
        out.frames += len(blobs)
        out.bytes_per_frame.append(float(np.mean([b.nbytes for b in blobs])))
        if stored[video_id]:  # (an unusable annotated duration gives nothing to compare with)
            out.decoded += len(np.unique(source.frame_indices))
            out.annotated += stored[video_id]
    if not out.bytes_per_frame:
        out.bytes_per_frame = [float(d.frame_height * d.frame_width * 3)]
    return out


def _projection(
    settings: Settings, records: dict, todo: list[str], kind: str, *, sample: int | None
) -> tuple:
    """(frames, bytes per frame, seconds per frame, projected bytes, notes, spread) of caching `todo`;
    `sample`: how many videos to measure (None: max(8, 1%) of them)."""
    counts = [_stored_frames(settings, records[v]) for v in todo]
    unusable = [v for v in todo if records[v].unusable() and records[v].problem is None]
    frames, index_bytes = sum(n for n, _ in counts), sum(12 * cells + 8 * (n + 1) for n, cells in counts)
    if kind == "snippets":
        chosen = sample_videos(todo, settings.seed, least=sample or 8, share=0.0 if sample else 0.01)
        measured = _measure_frames(settings, {v: n for v, (n, _) in zip(todo, counts, strict=True)}, chosen)
        if measured.annotated:  # the annotations' durations, corrected by what the videos decode to
            frames = int(round(frames * measured.decoded / measured.annotated))
        per_frame = float(np.mean(measured.bytes_per_frame))
        notes = (
            [
                f"could not measure {len(measured.unreadable)} of {len(chosen)} sampled videos: "
                + "; ".join(measured.unreadable[:3])
            ]
            if measured.unreadable
            else []
        )
        if chosen and len(measured.unreadable) == len(chosen):
            notes.append(
                "no sampled video could be read: bytes per frame assumed raw, time not projected; "
                "a run would list these videos as failed"
            )
        if unusable:
            notes.append(
                f"{len(unusable)} video(s) not projected, their annotated duration unusable (first: "
                f"{unusable[0]}: {records[unusable[0]].unusable()})"
            )
        spread = [float(x) for x in np.percentile(measured.bytes_per_frame, [0, 50, 100])]
        return (
            frames,
            per_frame,
            measured.seconds / max(measured.frames, 1),
            frames * per_frame + index_bytes + HDF5_FILE_BYTES * len(todo),
            notes,
            {"videos": len(chosen) - len(measured.unreadable), "bytes_per_frame": spread},
        )
    from stages.model.encoder import encoder_spec

    width = encoder_spec(settings.model.encoder.name).out_dim
    projected = sum(cells // settings.data.snippet_length for _, cells in counts) * width * 4
    notes = ["features: the time depends on the encoder and device; not projected"]
    return frames, 0.0, 0.0, projected + HDF5_FILE_BYTES * len(todo), notes, None


def _check_space(settings: Settings, records: dict, todo: list[str], kind: str, *, out_dir: Path) -> None:
    """Refuse before any work when the disk cannot hold what the run would write."""
    projected = _projection(settings, records, todo, kind, sample=1)[3]  # one video: a quick check
    free = shutil.disk_usage(out_dir).free
    if projected > free:
        raise UserError(
            f"{out_dir}: caching {len(todo)} videos needs about {human_bytes(projected)}, "
            f"{human_bytes(free)} free; free space, or cache a share of the videos (--subset, --shard)"
        )


def project(
    settings: Settings,
    *,
    what: str = "snippets",
    subsets: list[str] | None = None,
    shard: Shard = WHOLE,
    sample: int | None = None,
) -> dict:
    """What `etad cache` would do, from the annotation durations and the settings, measured on
    `sample` of the user's own videos (None: max(8, 1%), spread over the set): videos, frames,
    projected bytes and seconds, and the spread of bytes per frame over the videos measured."""
    if settings.data.annotations is None:
        raise UserError("data.annotations is not set")
    records = load_annotations(settings.data.annotations)
    kind = "snippets" if what == "snippets" else "features"
    out_dir = snippets_dir(settings) if kind == "snippets" else features_dir(settings)
    present, _ = _input_of(settings, kind, None)
    ids = select(records, subsets, shard, where=str(settings.data.annotations))
    current = set(filter(_current(out_dir, _stamp(settings, kind, None)), ids))
    here = [v for v in ids if v in current or present(v)]
    todo = [v for v in here if v not in current]
    frames, per_frame, per_second, projected, notes, spread = _projection(
        settings, records, todo, kind, sample=sample
    )
    folder = out_dir
    while not folder.exists():
        folder = folder.parent
    return {
        "kind": kind,
        "codec": settings.cache.codec,
        "videos": len(todo),
        "cached": len(here) - len(todo),
        "missing": len(ids) - len(here),
        "frames": frames,
        "bytes_per_frame": per_frame,
        "projected_bytes": int(projected),
        "projected_seconds": frames * per_second,
        "free_bytes": shutil.disk_usage(folder).free,
        "measured": spread,
        "notes": notes,
    }


def _run_jobs(
    settings: Settings,
    kind: str,
    from_npy: Path | None,
    todo: list,
    *,
    stamp: str,
    workers: int | None,
    record: Callable,
    records: dict,
) -> None:
    """One job per video to do: import, cut snippets (in `workers` processes) or encode features;
    the files record the run's fingerprint `stamp` and (snippets, features) its settings by name."""
    if from_npy is not None:
        run_each([(vid, _import_npy, (Path(from_npy), vid, path, stamp)) for vid, path in todo], 1, record)
        return
    expected = ExpectedFingerprint.of(settings, kind)  # once per run, its stamp is `stamp`
    if kind == "snippets":
        durations = {vid: record.duration for vid, record in records.items()}
        jobs = [(vid, _snippet_job, (settings, vid, path, expected, durations[vid])) for vid, path in todo]
        run_each(jobs, workers or settings.cache.workers, record)
    elif todo:
        c = settings.cache  # the encoder runs in this process: torch already uses every core
        encoder = FeatureEncoder(settings, c.device, c.dtype, c.batch_size)
        run_each(
            [(vid, _feature_job, (encoder, settings, vid, path, expected)) for vid, path in todo], 1, record
        )


def run(
    settings: Settings,
    *,
    what: str = "snippets",
    from_npy: Path | None = None,
    workers: int | None = None,
    subsets: list[str] | None = None,
    shard: Shard = WHOLE,
    progress: Progress = SILENT,
) -> CacheSummary:
    """Fill the snippet or feature cache for the videos of `subsets` (None: every video) in this shard."""
    if what not in KINDS:
        raise UserError(f"--what {what}: expected one of {', '.join(KINDS)}")
    if settings.data.annotations is None:
        raise UserError("data.annotations is not set")
    if from_npy is not None and not Path(from_npy).is_dir():
        raise UserError(f"{from_npy}: no such folder of .npy features")
    records = load_annotations(settings.data.annotations)
    kind = "snippets" if what == "snippets" and from_npy is None else "features"
    out_dir = snippets_dir(settings) if kind == "snippets" else features_dir(settings)
    try:
        ensure_writable_dir(out_dir)
    except OSError as exc:
        raise UserError(f"{out_dir}: cannot write the cache folder: {exc.strerror or exc}") from None
    stamp = _stamp(settings, kind, from_npy)
    present, what_input = _input_of(settings, kind, from_npy)
    ids = select(records, subsets, shard, where=str(settings.data.annotations))
    current = set(filter(_current(out_dir, stamp), ids))
    chosen = drop_missing(ids, lambda v: v in current or present(v), settings.data.missing, what=what_input)
    summary = CacheSummary(kind, out_dir, missing=chosen.missing, notes=chosen.notes, shard=shard)
    todo = [(v, video_file(out_dir, v)) for v in chosen.videos if v not in current]
    summary.skipped = len(chosen.videos) - len(todo)
    if todo and from_npy is None:
        if problem := decoder_problem(settings.data.decoder):
            raise UserError(problem)
        _check_space(settings, records, [v for v, _ in todo], kind, out_dir=out_dir)
    progress.start(len(todo))
    start = time.perf_counter()

    def record(video_id: str, result, reason: str | None) -> None:
        if reason is None:
            summary.done += 1
            if kind == "snippets":  # (frame bytes, what decoding found)
                summary.frame_bytes += result[0]
                if result[1]:
                    summary.videos.add(video_id, result[1], records[video_id].duration, settings.data.fps)
        else:
            summary.failures.append({"video_id": video_id, "reason": reason})
        progress.advance()

    _run_jobs(settings, kind, from_npy, todo, stamp=stamp, workers=workers, record=record, records=records)
    summary.seconds = time.perf_counter() - start
    write_lists(out_dir, shard, failures=summary.failures, missing=summary.missing)
    summary.notes += summary.videos.write(out_dir, shard)
    return summary
