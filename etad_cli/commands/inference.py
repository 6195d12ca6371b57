"""`etad infer`: detections of a subset, of one shard of it, or of one video file."""

from __future__ import annotations

from pathlib import Path

from etad_cli import views
from etad_cli.console import stage_progress, user_errors
from etad_cli.options import ConfigOpt, SetOpt, ShardOpt, flag, load, option


def infer(
    config: ConfigOpt,
    checkpoint: option(
        Path | None, "Checkpoint (default: <work_dir>/e2e or pretrain/checkpoints/last.pt)."
    ) = None,
    set_: SetOpt = None,
    evaluate: flag("--eval", "Evaluate the detections in the same run.") = False,
    plot: flag("--plot", "Draw a timeline PNG (of --video, or of the first --plot-videos).") = False,
    plot_videos: option(int, "How many of the subset's videos --plot draws.", min=1) = 4,
    video: option(Path | None, "Detect actions in one video file that is in no annotation file.") = None,
    subset: option(str | None, "The annotation subset to detect (default: data.eval_subset).") = None,
    shard: ShardOpt = None,
) -> None:
    """Detect actions in the evaluation subset (or one --video) and write ActivityNet-format JSON.

    With --shard K/N each shard writes its part beside infer.output; the last to finish merges them.

    Examples:
      etad infer --config examples/demo.yaml --eval
      etad infer --config examples/anet_tsp_e2e.yaml --shard 2/4 --eval
      etad infer --config examples/demo.yaml --checkpoint work/demo/pretrain/checkpoints/best.pt --plot
      etad infer --config examples/demo.yaml --video my_clip.mp4 --plot
    """
    from stages import api
    from stages.data.video_selection import WHOLE, parse_shard

    with user_errors():
        settings = load(config, set_, [f"data.eval_subset={subset}"] if subset else [])
        part = WHOLE if video is not None else parse_shard(shard)
        with stage_progress(f"encode {video.name}" if video is not None else "infer") as progress:
            done = api.infer(
                settings,
                checkpoint=checkpoint,
                plot=plot_videos if plot else 0,
                video=video,
                evaluate=evaluate,
                shard=part,
                progress=progress,
            )
        views.infer_summary(done.summary, video is not None)
        if done.report is not None:
            views.eval_report(done.report)
