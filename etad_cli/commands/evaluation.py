"""`etad eval`, `etad diagnose` and `etad view`: scores, errors and a page of a detections file."""

from __future__ import annotations

from pathlib import Path

from etad_cli import views
from etad_cli.console import console, print_notes, stage_progress, user_errors
from etad_cli.options import (
    BlockedOpt,
    DatasetOpt,
    EvalConfigOpt,
    GroundTruthOpt,
    GroundTruthSubsetOpt,
    JsonOpt,
    PlotOpt,
    PredictionsOpt,
    ProtocolOpt,
    SetOpt,
    TaskOpt,
    TiouOpt,
    flag,
    load,
    option,
)
from stages.core.errors import UserError


def eval_(
    predictions: PredictionsOpt = None,
    ground_truth: GroundTruthOpt = None,
    dataset: DatasetOpt = None,
    subset: GroundTruthSubsetOpt = None,
    blocked: BlockedOpt = None,
    task: TaskOpt = None,
    tiou: TiouOpt = None,
    protocol: ProtocolOpt = None,
    per_class: flag("--per-class", "Also show AP per class.") = False,
    plot: PlotOpt = None,
    json_out: JsonOpt = None,
    config: EvalConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Score detections (mAP per tIoU) or proposals (average recall) as the official ActivityNet code does.

    Examples:
      etad eval --dataset anet -p results.json -g activity_net.v1-3.min.json --blocked blocked.json
      etad eval --dataset thumos -p results.json -g thumos14.json --per-class --plot map.png
      etad eval --config examples/demo.yaml
    """
    from stages import evaluate as stage

    with user_errors():
        s = load(config, set_, check_parts=False) if config is not None else None
        files = dict(predictions=predictions, ground_truth=ground_truth, dataset=dataset, subset=subset)
        scoring = dict(blocked=blocked, task=task, tious=tiou, protocol=protocol)
        request = stage.EvalRequest.from_settings(s, **files, **scoring)
        stage.check_outputs(request, json_out=json_out, plot=plot)
        report = stage.run(request)
        views.eval_report(report, per_class)
        views.diagnose_hint(request, report)
        if json_out is not None:
            stage.save_json(report, json_out)
            console.print(f"metrics: {json_out}", style="dim", soft_wrap=True)
        if plot is not None:
            stage.plot(report, plot, per_class)
            console.print(f"plot: {plot}", style="dim", soft_wrap=True)


def diagnose(
    predictions: PredictionsOpt = None,
    ground_truth: GroundTruthOpt = None,
    dataset: option(
        str | None, "anet or thumos: DETAD's tIoUs and buckets (default: the setting data.protocol)."
    ) = None,
    subset: option(str | None, "Ground-truth subset (default: data.eval_subset; validation / test).") = None,
    out: option(Path | None, "Output folder (default: <stem>/diagnosis beside <stem>.json).") = None,
    config: EvalConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """What a detector gets wrong: DETAD's false-positive profile, sensitivity and false negatives.

    Writes diagnosis.json, diagnosis.md and three PNG figures (docs/diagnose.md).

    Examples:
      etad diagnose --dataset anet -g activity_net.v1-3.min.json -p results.json --out diagnosis
      etad diagnose --config examples/demo.yaml
    """
    from stages import diagnose as stage

    with user_errors():
        s = load(config, set_, check_parts=False) if config is not None else None
        request = stage.request(
            s, predictions=predictions, ground_truth=ground_truth, dataset=dataset, subset=subset, out=out
        )
        result = stage.run(**request)
    console.print(stage.headline(result), soft_wrap=True)
    where = f"diagnosis: {request['out']} (diagnosis.json, diagnosis.md, 3 figures)"
    console.print(where, style="dim", soft_wrap=True)
    print_notes(result["notes"])


def view_page(
    predictions: PredictionsOpt = None,
    ground_truth: GroundTruthOpt = None,
    dataset: option(str | None, "anet or thumos (default: the setting data.protocol).") = None,
    subset: option(str | None, "Ground-truth subset (default: data.eval_subset; validation / test).") = None,
    videos: option(Path | None, "Folder of the video files (<id>.*), played beside the timeline.") = None,
    out: option(Path | None, "Output folder (default: <stem>/view beside results/<stem>.json).") = None,
    top: option(int, "Detections shown per video.", min=1) = 20,
    subtitles: option(
        str | None, "Also write srt or ass subtitles of the detections (one file a video)."
    ) = None,
    checkpoint: option(Path | None, "With --config: detect with this checkpoint first (etad infer).") = None,
    config: EvalConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Look at detections: a self-contained HTML page (offline) with each video's timeline and player.

    Ground truth above the top detections (colour: class, opacity: score, hover: DETAD error type),
    a click seeks the video; videos sortable by AP or errors; AP per class; the diagnosis figures.

    Examples:
      etad view --dataset anet -g activity_net.v1-3.min.json -p results.json --videos videos/ --out view
      etad view --config examples/demo.yaml --subtitles srt
      etad view --config examples/demo.yaml --checkpoint work/demo/e2e/checkpoints/best.pt
    """
    from stages import api
    from stages import view as stage

    with user_errors():
        if checkpoint is not None and config is None:
            raise UserError("--checkpoint detects with the settings of --config: give both")
        s = load(config, set_, check_parts=checkpoint is not None) if config is not None else None
        if checkpoint is not None:  # detections of this checkpoint first, into infer.output
            with stage_progress("infer") as progress:
                api.infer(s, checkpoint=checkpoint, progress=progress)
        files = {"predictions": predictions, "ground_truth": ground_truth, "videos": videos, "out": out}
        request = stage.request(s, **files, dataset=dataset, subset=subset)
        done = stage.run(**request, top=top, subtitle=subtitles)
    shown = f"{done['videos']} videos ({done['with_file']} with a local file) -> {done['page']}"
    console.print(shown, soft_wrap=True)
    print_notes(done["notes"])
