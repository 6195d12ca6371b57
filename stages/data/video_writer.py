"""Writing synthetic and test videos (H.264 in MP4, with PyAV); reading is video_io.py's."""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import numpy as np

from stages.core.files import atomic_output


def write_video(path: Path, frames: Iterable[np.ndarray], fps: float, crf: int = 18) -> int:
    """Write uint8 RGB frames [H, W, 3] to an H.264 mp4 with PyAV; atomically (temp name, then rename).

    Returns the number of frames written. H and W must be even (yuv420p).
    """
    import av

    count = 0
    with atomic_output(Path(path)) as tmp, av.open(str(tmp), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.pix_fmt = "yuv420p"
        # one thread and no macroblock tree: x264's mbtree code gave different bytes for the same
        # frames depending on what the process had imported before (docs/synthetic_dataset.md)
        stream.options = {"crf": str(crf), "preset": "veryfast", "threads": "1", "x264-params": "mbtree=0"}
        for frame in frames:
            if count == 0:
                stream.height, stream.width = frame.shape[0], frame.shape[1]
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            for packet in stream.encode(video_frame):
                container.mux(packet)
            count += 1
        for packet in stream.encode():
            container.mux(packet)
    return count
