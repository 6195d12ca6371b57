"""The HDF5 caches: one small HDF5 file per video, written under a temporary name and renamed.

One file per video (instead of one big file) is what makes a kill at any moment harmless: HDF5 can
corrupt a whole file that is being written when the process dies, but here only the temporary file
of the video in progress is lost. Layout (docs/cache.md):

  <cache>/snippets/<id>.h5   each frame the snippets use, once: jpeg uint8 [bytes] + jpeg_offsets
                             int64 [F + 1] (codec jpeg), or frames uint8 [F, H, W, 3] (codec raw);
                             snippet_frames int32 [T, L]: which stored frame each snippet frame is;
                             frame_indices int64 [T, L]: those frames' indices in the video at data.fps
  <cache>/features/<id>.h5   features [T, D] float32/float16
  attributes on the root:    kind, video_id, fingerprint, fps, num_frames, source (+ encoder for
                             features; codec, jpeg_quality, height, width for snippets)
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np

from stages.core.errors import FULL, UserError, disk_full
from stages.core.files import atomic_output
from stages.data.annotations import safe_path
from stages.data.fingerprints import ExpectedFingerprint
from stages.data.frame_codec import decode_jpeg, encode_jpeg

MAIN = {"snippets": "snippet_frames", "features": "features"}  # the dataset that gives a file's rows
JPEG_CHUNK = 1 << 16  # bytes per HDF5 chunk of the JPEG stream


def require_finite(array: np.ndarray, where: object) -> None:
    """Features with NaN or inf are bad input: they would train a NaN model without a word."""
    bad = ~np.isfinite(array)
    if bad.any():
        row = int(np.argwhere(bad)[0][0])
        raise UserError(f"{where}: {int(bad.sum())} non-finite value(s) (NaN or inf), first in row {row}")


def video_file(folder: Path, video_id: str) -> Path:
    return safe_path(folder, video_id, "{id}.h5")


@contextmanager
def new_hdf5(path: Path) -> Iterator[h5py.File]:
    """A new HDF5 file, built in memory, then written under a temporary name and renamed. In memory
    because when the disk fills while libhdf5 itself writes, closing the file crashes the process
    (exit 139 after pages of tracebacks, measured with h5py 3 under `ulimit -f`), where Python's own
    write raises an OSError: a full disk stops the run with one line (errors.DiskFull). The memory
    is one video's file (its JPEG frames are gathered in memory anyway)."""
    with h5py.File(
        f"{path}.{os.getpid()}.{threading.get_ident()}", "w", driver="core", backing_store=False
    ) as f:
        yield f
        f.flush()
        image = f.id.get_file_image()
    try:
        with atomic_output(path) as tmp:
            tmp.write_bytes(image)
    except OSError as exc:
        if exc.errno in FULL:
            raise disk_full(path, exc) from None
        raise


def write_video_file(path: Path, arrays: dict[str, np.ndarray], attrs: dict) -> None:
    """Write one video's arrays + attributes atomically (features; snippets: write_snippet_file).
    The first array is chunked by its first axis."""
    with new_hdf5(path) as f:
        for i, (name, array) in enumerate(arrays.items()):
            options = {"chunks": (1, *array.shape[1:])} if i == 0 and array.ndim >= 2 else {}
            f.create_dataset(name, data=array, **options)
        for key, value in attrs.items():
            f.attrs[key] = value


def store_frames(
    f: h5py.File,
    batches: Iterable[np.ndarray | list[np.ndarray]],
    count: int,
    *,
    codec: str,
    quality: int = 90,
    compression: str = "none",
    shape: tuple[int, int] | None = None,
) -> int:
    """Write `count` frames, arriving in `batches` (uint8 [n, H, W, 3], in order: memory stays one
    batch's, plus the JPEG bytes), into an open HDF5 file in the layout `read_frames` reads, with
    the codec, height and width attributes. With codec jpeg a batch may be a list of JPEG byte
    strings already at `quality` (extracted frames: stored as they are, no second generation of
    loss; `shape` (H, W) then says their size). Returns the frames' bytes (before HDF5's overhead)."""
    stored, blobs, frames = 0, [], None
    for batch in batches:
        if isinstance(batch, list):
            blobs += batch
        else:
            shape = batch.shape[1:3]
            if codec == "jpeg":
                blobs += encode_jpeg(batch, quality)
            else:
                if frames is None:
                    options = {} if compression == "none" else {"compression": compression}
                    frames = f.create_dataset(
                        "frames", (count, *shape, 3), np.uint8, chunks=(1, *shape, 3), **options
                    )
                frames[stored : stored + len(batch)] = batch
        stored += len(batch)
    if stored != count or shape is None:
        raise ValueError(f"{Path(f.filename).name}: {stored} frames stored, {count} expected")
    f.attrs.update({"codec": codec, "height": int(shape[0]), "width": int(shape[1])})
    if codec == "raw":
        return count * int(np.prod(shape)) * 3
    offsets = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64)
    f.create_dataset("jpeg", data=np.concatenate(blobs), chunks=(min(int(offsets[-1]), JPEG_CHUNK),))
    f.create_dataset("jpeg_offsets", data=offsets)
    f.attrs["jpeg_quality"] = quality
    return int(offsets[-1])


def write_snippet_file(
    path: Path,
    batches: Iterable,
    *,
    snippet_frames: np.ndarray,
    frame_indices: np.ndarray,
    attrs: dict | Callable[[], dict],
    **storage,
) -> int:
    """Write one video's snippet cache atomically: its stored frames (`store_frames`, which takes
    `storage`: codec, quality, ...) and `snippet_frames` [T, L], which points into them; `attrs`,
    when a function, is asked once the frames are read (what decoding found is known then).
    Returns the frames' bytes."""
    with new_hdf5(path) as f:
        size = store_frames(f, batches, int(snippet_frames.max()) + 1, **storage)
        f.create_dataset("snippet_frames", data=snippet_frames.astype(np.int32))
        f.create_dataset("frame_indices", data=frame_indices.astype(np.int64))
        f.attrs.update(attrs() if callable(attrs) else attrs)
        return size


def read_jpeg(f: h5py.File, wanted: np.ndarray) -> list[np.ndarray]:
    """The JPEG byte strings of stored frames `wanted` (sorted, unique) of a jpeg-codec file."""
    offsets = f["jpeg_offsets"][()]
    lo, hi = int(offsets[wanted[0]]), int(offsets[wanted[-1] + 1])
    stream = f["jpeg"][lo:hi]  # one read over the span (a snippet's frames are neighbours)
    return [stream[offsets[i] - lo : offsets[i + 1] - lo] for i in wanted]


def frame_count(f: h5py.File) -> int:
    """How many frames a snippet or frames file stores (either codec)."""
    return len(f["jpeg_offsets"]) - 1 if f.attrs.get("codec") == "jpeg" else len(f["frames"])


def read_frames(f: h5py.File, wanted: np.ndarray) -> np.ndarray:
    """Stored frames [n, H, W, 3] of a snippet or frames file, `wanted` sorted and unique."""
    if f.attrs.get("codec") == "jpeg":
        return decode_jpeg(read_jpeg(f, wanted))
    return f["frames"][wanted]


def stored_fingerprint(path: Path) -> str | None:
    """The fingerprint of a finished cache file, or None if it is missing or unreadable."""
    try:
        with h5py.File(path, "r") as f:
            return str(f.attrs.get("fingerprint", ""))
    except (OSError, KeyError):
        return None


def _imported(f: h5py.File) -> bool:
    return f.attrs.get("kind") == "features" and f.attrs.get("encoder") == "npy"


def _origin(f: h5py.File) -> str:
    """Where a feature file's features come from, as messages and checkpoints name it."""
    return "imported .npy" if _imported(f) else "encoder"


def _source(f: h5py.File) -> str:
    """An imported file's .npy folder, or `encoder`."""
    return f"imported .npy from {Path(str(f.attrs.get('source', '?'))).parent}" if _imported(f) else "encoder"


class VideoCache:
    """Read one kind of cache ('snippets' or 'features') by video id.

    `expected` (fingerprints.ExpectedFingerprint: the settings a reader runs with), when given, makes reading
    a file written with other settings an error naming the settings that differ (a stale cache),
    instead of silently training on it. Imported features (`--from-npy`) depend on no setting, but a
    feature folder holds features of one origin: its first file's (an encoder, or one import); a
    file of another origin is refused, and `expected` then records the origin (a checkpoint's
    `inputs`), so that a detector trained on one origin refuses the other.
    """

    def __init__(self, folder: Path, kind: str, expected: ExpectedFingerprint | None = None) -> None:
        self.folder = Path(folder)
        self.kind = kind
        self.expected = expected
        if not self.folder.is_dir():
            raise UserError(f"{self.folder}: no {kind} cache here; run `etad cache --what {kind}` first")
        self.origin: tuple[str, str, Path] | None = None  # features: (origin, its fingerprint, first file)
        first = next(iter(self.ids()), None) if kind == "features" and expected is not None else None
        if first is not None:
            path = video_file(self.folder, first)
            with self._checked(path) as f:
                origin = _origin(f)
                stamp = str(f.attrs.get("fingerprint")) if _imported(f) else expected.stamp
                self.origin = (origin, stamp, path)
            self.expected = expected.with_origin(origin)

    def ids(self) -> list[str]:
        return sorted(p.stem for p in self.folder.glob("*.h5") if not p.name.startswith("."))

    def _open(self, video_id: str) -> h5py.File:
        path = video_file(self.folder, video_id)
        if not path.is_file():
            raise UserError(f"{path}: video {video_id!r} is not in the {self.kind} cache; run `etad cache`")
        f = self._checked(path)
        if self.origin is not None:
            self._same_origin(f)
        elif self.expected is not None and self._stale(f):
            self._refuse_stale(f)
        return f

    def _checked(self, path: Path) -> h5py.File:
        """The open file, refused when it is damaged or holds another kind."""
        damaged = (
            f"{path}: damaged or truncated cache file; delete it and rerun `etad cache --what {self.kind}`"
        )
        try:
            f = h5py.File(path, "r")
        except OSError:
            raise UserError(damaged) from None
        if MAIN[self.kind] not in f:
            older = self.kind == "snippets" and "snippets" in f
            f.close()
            if older:
                raise UserError(
                    f"{path}: a snippet cache of an older etad (every snippet's frames stored apart); "
                    "rerun `etad cache --what snippets`"
                )
            raise UserError(damaged)
        held = f.attrs.get("kind")
        if held != self.kind:  # readers go by what a file says it holds, never by its dtype
            f.close()
            raise UserError(f"{path}: holds {held or 'an unknown kind'}, not {self.kind}; rerun `etad cache`")
        return f

    def _stale(self, f: h5py.File) -> bool:
        return f.attrs.get("fingerprint") != self.expected.stamp

    def _refuse_stale(self, f: h5py.File) -> None:
        try:
            recorded = json.loads(f.attrs.get("fingerprint_of", "{}"))
        except (TypeError, ValueError):
            recorded = {}
        path = f.filename
        f.close()
        differs = self.expected.differences(recorded) or "other settings"
        raise UserError(
            f"{path}: stale {self.kind} cache, written with {differs}; rerun `etad cache --what {self.kind}`"
        )

    def _same_origin(self, f: h5py.File) -> None:
        """A feature file of the folder's origin (its first file's), and current when of an encoder."""
        origin, stamp, first = self.origin
        imported = _imported(f)
        if imported != origin.startswith("imported") or (imported and f.attrs.get("fingerprint") != stamp):
            mine, path = _source(f), f.filename
            with h5py.File(first, "r") as held:
                theirs = _source(held)
            f.close()
            raise UserError(
                f"{path}: features {mine}, but {first.name} in the same folder holds features "
                f"{theirs}: a feature folder holds one origin; give each its own "
                "cache.features_dir"
            )
        if not imported and self._stale(f):
            self._refuse_stale(f)

    def read(self, video_id: str, index: slice | np.ndarray | int | None = None) -> np.ndarray:
        """The main array of a video (all of it, or the given rows: one snippet reads one chunk)."""
        with self._open(video_id) as f:
            data = f[MAIN[self.kind]]
            try:
                if index is None:
                    out = data[()]
                elif isinstance(index, np.ndarray):  # h5py wants increasing, unique indices
                    unique, inverse = np.unique(index, return_inverse=True)
                    out = data[unique][inverse]
                else:
                    out = data[index]
                if self.kind == "snippets":  # frame numbers [..., L] -> the frames [..., L, H, W, 3]
                    wanted, where = np.unique(out, return_inverse=True)
                    stored = frame_count(f)
                    if wanted.size and (wanted[0] < 0 or wanted[-1] >= stored):
                        raise IndexError(f"snippet_frames points at frame {wanted[-1]} of {stored}")
                    out = read_frames(f, wanted)[where.reshape(out.shape)]
            except (OSError, KeyError, RuntimeError, ValueError, IndexError) as exc:  # RuntimeError: JPEG
                problem = str(exc) if isinstance(exc, IndexError) else "frames that do not decode"
                raise UserError(
                    f"{f.filename}: damaged cache file ({problem[:100]}); delete it and rerun "
                    f"`etad cache --what {self.kind}`"
                ) from None
        if self.kind == "features":
            require_finite(out, f"{video_file(self.folder, video_id)} (video {video_id!r})")
        return out

    def length(self, video_id: str) -> int | None:
        """Rows (snippets) cached for a video, or None when the video is not cached."""
        if not video_file(self.folder, video_id).is_file():
            return None
        with self._open(video_id) as f:
            return int(f[MAIN[self.kind]].shape[0])

    def attrs(self, video_id: str) -> dict:
        with self._open(video_id) as f:
            return dict(f.attrs)

    def frame_indices(self, video_id: str) -> np.ndarray:
        with self._open(video_id) as f:
            return f["frame_indices"][()]
