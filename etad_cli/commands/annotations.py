"""`etad init` and `etad annotations convert|check`: a user's labels into the layout every command reads."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from etad_cli import views
from etad_cli.console import console, print_notes, user_errors
from etad_cli.options import option


def init(
    videos: Annotated[Path, typer.Argument(help="The folder of your videos (<id>.mp4, .mov, ...).")],
    labels: Annotated[Path, typer.Argument(help="Your annotations (CSV: video,start,end,label[,subset]).")],
    from_: Annotated[str, typer.Option("--from", help="Their format (as convert's --from).")] = "csv",
    out: option(Path, "The folder for settings.yaml, annotations.json, work/.") = Path("etad_run"),
) -> None:
    """Start on your own videos: their annotations converted and a settings file, with the next commands.

    The durations are read from the videos, the sizes chosen from what they hold.

    Example: etad init my_videos/ my_labels.csv --out my_run
    """
    from stages import annotations as convert_stage
    from stages import init as stage

    with user_errors():
        annotations = stage.new_run_folder(out) / "annotations.json"
        converted = convert_stage.convert([labels], fmt=from_, out=annotations, videos=videos)
        summary = stage.run(videos, annotations, out, probed=converted.probed)  # the videos read once
    print_notes(converted.notes + summary.notes)
    views.init_summary(summary)


SourcesArg = Annotated[
    list[Path],
    typer.Argument(
        help="The dataset's own annotation file(s), e.g. its training and validation files: one output."
    ),
]
FormatOpt = Annotated[
    str,
    typer.Option(
        "--from",
        help="The format: epic100, multithumos, charades, ego4d-mq, thumos-txt (a folder), or csv (columns "
        "video, start, end, label and optionally subset; seconds; video: an id or a file name).",
    ),
]


def annotations_convert(
    sources: SourcesArg,
    from_: FormatOpt,
    out: Annotated[Path, typer.Option(help="The ActivityNet-layout JSON to write (a new file).")],
    video_info: option(Path | None, "epic100: EPIC_100_video_info.csv (durations).") = None,
    verbs: option(Path | None, "epic100: EPIC_100_verb_classes.csv (names).") = None,
    nouns: option(Path | None, "epic100: EPIC_100_noun_classes.csv (names).") = None,
    label: option(str, "epic100: verb, noun or action (verb noun).") = "action",
    subset: option(str | None, "The subset name the rows get (default: the file's).") = None,
    classes: option(Path | None, "multithumos / charades: the class list (id name).") = None,
    durations: option(Path | None, "csv, thumos-txt: a video,duration CSV.") = None,
    videos: option(Path | None, "The folder of the videos: durations from the files.") = None,
) -> None:
    """Write another benchmark's annotations in ActivityNet's layout (every etad command reads it).

    Examples:
      etad annotations convert EPIC_100_train.csv EPIC_100_validation.csv --from epic100 \\
        --video-info EPIC_100_video_info.csv --verbs EPIC_100_verb_classes.csv \\
        --nouns EPIC_100_noun_classes.csv --label verb --out epic_verb.json
      etad annotations convert multithumos.json --from multithumos --out multithumos_anet.json
      etad annotations convert my_labels.csv --from csv --durations durations.csv --out mine.json
      etad annotations convert my_labels.csv --from csv --videos my_videos/ --out mine.json
    """
    from stages import annotations as stage

    options = dict(video_info=video_info, verbs=verbs, nouns=nouns, label=label, classes=classes)
    options |= dict(durations=durations, **({"subset": subset} if subset else {}))
    with user_errors():
        done = stage.convert(sources, fmt=from_, out=out, videos=videos, **options)
    instances = sum(len(e["annotations"]) for e in done.database.values())
    console.print(
        f"{len(done.database)} videos, {instances} instances ({done.clipped} clipped to their "
        f"video's duration) -> {out}",
        soft_wrap=True,
    )
    print_notes(done.notes)


def annotations_check(
    path: Annotated[Path, typer.Argument(help="An annotation file (ActivityNet layout).")],
) -> None:
    """What an annotation file holds, per subset, in one table."""
    from stages import annotations as stage

    with user_errors():
        report = stage.check(path)
        views.annotations_table(report)
    print_notes(report["notes"])
