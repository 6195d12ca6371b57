"""etad against the official evaluators, on seeded cases built here: the source of the comparisons
in docs/diagnose.md and docs/annotations.md.

The official code is not part of etad: give a checkout of it and a Python that has what it needs
(pandas, joblib, numpy); numpy's aliases removed in 1.24 (`np.int`, `np.float`, `np.infty`) are put
back at run time, nothing else is changed. Each comparison prints the largest absolute difference.

  python benchmarks/official.py detad --code DETAD --python /path/to/venv/bin/python
  python benchmarks/official.py epic  --code C2-Action-Detection --python ...
  python benchmarks/official.py ego4d --code episodic-memory --python ...
  python benchmarks/official.py ties  --code DETAD --anet-code ActivityNet --python ... \
      --save tests/files/official_ties.json   (tied scores: tests/evaluation/test_official_ties.py)

(HumamAlwassel/DETAD, epic-kitchens/C2-Action-Detection, EGO4D/episodic-memory; ../shared/data for
the ActivityNet, THUMOS-14 and EPIC-KITCHENS-100 files.)
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "data"
ALIASES = "import numpy as np; np.int = int; np.float = float; np.infty = np.inf\n"

from tests.helpers import largest_difference  # noqa: E402 - after the checkout is on sys.path


def official(python: str, code: str, *args: object) -> dict:
    """Run `code` with `args` (sys.argv[1:]) in the official code's Python; it prints JSON last. The
    aliases go in a sitecustomize, so that joblib's worker processes have them too."""
    with tempfile.TemporaryDirectory() as site:
        (Path(site) / "sitecustomize.py").write_text(ALIASES)
        env = {**os.environ, "PYTHONPATH": site}
        done = subprocess.run([python, "-c", code, *map(str, args)], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"the official code failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


DETAD_DRIVER = """
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1] + "/src")  # DETAD's modules import each other by name
from action_detector_diagnosis import ActionDetectorDiagnosis
from sensitivity_analysis import compute_average_mAP_N_for_characteristic
from false_negative_analysis import fn_distribution_by_characteristic
from false_positive_analysis import split_predictions_by_score_ranges
gt, pred, subset, thumos = sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5] == "thumos"
sizes = ['XS', 'S', 'M', 'L', 'XL']
if thumos:
    bins = {'coverage': (np.array([0, 0.02, 0.04, 0.06, 0.08, 1]), sizes),
            'length': (np.array([0, 3, 6, 12, 18, np.inf]), sizes),
            'num-instances': (np.array([-1, 1, 40, 80, np.inf]), sizes[:4])}
    tious = [0.5]
else:
    bins = {'coverage': (np.linspace(0, 1.0, 6), sizes),
            'length': (np.array([0, 30, 60, 120, 180, np.inf]), sizes),
            'num-instances': (np.array([-1, 1, 4, 8, np.inf]), sizes[:4])}
    tious = np.linspace(0.5, 0.95, 10)
names = {'True Positive': 'true_positive', 'Double Detection Err': 'double_detection',
         'Wrong Label Err': 'wrong_label',
         'Localization Err': 'localization', 'Confusion Err': 'confusion', 'Background Err': 'background'}
def make(limit, min_precision):
    return ActionDetectorDiagnosis(ground_truth_filename=gt, prediction_filename=pred, tiou_thresholds=tious,
        limit_factor=limit, min_tiou_thr=0.1, subset=subset, verbose=False, load_extra_annotations=True,
        characteristic_names_to_bins=bins, normalize_ap=True,
        minimum_normalized_precision_threshold_for_detection=min_precision)
out = {}
s = make(None, 0.0); s.evaluate()
out['average_mAP_N'] = float(s.average_mAP)
out['sensitivity'] = {c: {str(k): (None if np.isnan(v) else float(v))
                          for k, v in compute_average_mAP_N_for_characteristic(s, c).items()} for c in bins}
f = make(None, 0.05); f.evaluate()
missed = {c: fn_distribution_by_characteristic(f, c)['avg']['unmatched'] for c in bins}
out['false_negative'] = {c: {str(k): float(v) for k, v in m.items()} for c, m in missed.items()}
p = make(10, 0.0); p.evaluate(); p.diagnose()
_, _, per_k = split_predictions_by_score_ranges(p, 10)
out['false_positive'] = {'average_mAP_N_top10G': float(p.average_mAP),
                         'over_all': {names[k]: float(v)
                                      for k, v in p.fp_error_types_precentage_df['avg'].items()},
                         'per_k': {f'{g + 1}G': {names[k]: float(v) for k, v in d['avg'].items()}
                                   for g, d in per_k.items()}}
out['mAP_N_gain_removing'] = {names[k]: float(v) for k, v in p.average_mAP_gain.items()}
print(json.dumps(out))
"""


def _thumos_case(published: Path, out: Path, seed: int = 1) -> Path:
    """Seeded predictions around DETAD's published THUMOS-14 test ground truth
    (tests/helpers.jittered_predictions; a video's length from its first instance's coverage)."""
    from tests.helpers import jittered_predictions

    def duration(entry: dict) -> float:
        first = entry["annotations"][0]
        return first["length"] / first["coverage"]

    results = jittered_predictions(json.loads(published.read_text())["database"], duration, seed)
    out.write_text(json.dumps({"version": "THUMOS14", "results": results, "external_data": {}}))
    return out


def detad(code: Path, python: str, folder: Path) -> None:
    from stages import diagnose
    from tests.helpers import with_detad_characteristics, write_anet_diagnosis_case

    gt, pred = write_anet_diagnosis_case(SHARED, folder / "anet")
    predictions = json.loads(pred.read_text())
    database = json.loads(gt.read_text())["database"]
    for video, entry in database.items():  # DETAD judges a video without ground truth against the
        if all(a["segment"][1] <= a["segment"][0] for a in entry["annotations"]):  # previous one's
            predictions["results"].pop(video, None)
    pred.write_text(json.dumps({**predictions, "external_data": {}}))  # a field DETAD's reader requires
    published = code / "data" / "thumos14_test_extra_characteristics.json"
    cases = {
        "anet": (gt, pred, "validation"),
        "thumos": (published, _thumos_case(published, folder / "t.json"), "testing"),
    }
    for dataset, (truth, detections, subset) in cases.items():
        began = time.perf_counter()
        ours = diagnose.run(truth, detections, dataset=dataset, subset=subset, out=folder / f"{dataset}_out")
        mine = time.perf_counter() - began
        truth_for_detad = (
            with_detad_characteristics(truth, folder / "gt_detad.json") if dataset == "anet" else truth
        )
        began = time.perf_counter()
        theirs = official(python, DETAD_DRIVER, code, truth_for_detad, detections, subset, dataset)
        print(
            f"DETAD {dataset}: {ours['counts']['predictions']} predictions, max |DETAD - etad| "
            f"{largest_difference(theirs, ours):.3g}; etad {mine:.1f} s, "
            f"DETAD {time.perf_counter() - began:.1f} s"
        )


EPIC_DRIVER = """
import json, sys
code, annotations_csv, submission_json = sys.argv[1:4]
sys.argv = [sys.argv[0], 'x', 'y']  # the module builds its argument parser at import
sys.path.insert(0, code + '/EvaluationCode')
import pandas as pd
import evaluate_detection_json_ek100 as epic
annotations = pd.read_csv(annotations_csv)
submission = json.load(open(submission_json))
maps = {label: epic.ANETdetection(annotations, submission, label=label).evaluate()[0]
        for label in ('verb', 'noun', 'action')}
print(json.dumps({label: [float(x) for x in m] for label, m in maps.items()}))
"""


def epic(code: Path, python: str, folder: Path, seed: int = 3) -> None:
    """19,336 seeded detections over EPIC-KITCHENS-100 validation: each instance twice, jittered by
    25% of its length, verb and noun each replaced by another occurring class 30% of the time."""
    from stages import annotations, evaluate

    source = SHARED / "epic100"
    rows = list(csv.DictReader((source / "EPIC_100_validation.csv").open()))
    keys = {
        k: {
            int(r["id"]): r["key"]
            for r in csv.DictReader((source / f"EPIC_100_{k}_classes.csv").open(encoding="utf-8-sig"))
        }
        for k in ("verb", "noun")
    }
    occurring = {k: sorted({int(r[f"{k}_class"]) for r in rows}) for k in ("verb", "noun")}
    rng, theirs, ours = np.random.default_rng(seed), {}, {"verb": {}, "noun": {}, "action": {}}

    def seconds(t: str) -> float:
        h, m, s = t.split(":")
        return int(h) * 3600 + int(m) * 60 + float(s)

    for r in rows:
        s, e = seconds(r["start_timestamp"]), seconds(r["stop_timestamp"])
        for _ in range(2):
            js, je = rng.normal(0, 0.25 * (e - s), 2)
            start = max(0.0, s + js)
            end = start + max(0.05, e - s + je - js)
            v = int(r["verb_class"]) if rng.random() > 0.3 else int(rng.choice(occurring["verb"]))
            n = int(r["noun_class"]) if rng.random() > 0.3 else int(rng.choice(occurring["noun"]))
            score = float(rng.random())
            entry = {"verb": v, "noun": n, "action": f"{v},{n}", "score": score, "segment": [start, end]}
            theirs.setdefault(r["video_id"], []).append(entry)
            names = {
                "verb": keys["verb"][v],
                "noun": keys["noun"][n],
                "action": f"{keys['verb'][v]} {keys['noun'][n]}",
            }
            for task, label in names.items():
                ours[task].setdefault(r["video_id"], []).append(
                    {"label": label, "score": score, "segment": [start, end]}
                )
    submission = folder / "epic_submission.json"
    head = {"version": "0.2", "challenge": "action_detection", "sls_pt": 0, "sls_tl": 0, "sls_td": 0}
    submission.write_text(json.dumps({**head, "results": theirs}))
    official_maps = official(python, EPIC_DRIVER, code, source / "EPIC_100_validation.csv", submission)
    for task in ("verb", "noun", "action"):
        gt = folder / f"epic_{task}.json"
        gt.unlink(missing_ok=True)
        annotations.convert(
            [source / "EPIC_100_validation.csv"],
            fmt="epic100",
            out=gt,
            label=task,
            video_info=source / "EPIC_100_video_info.csv",
            verbs=source / "EPIC_100_verb_classes.csv",
            nouns=source / "EPIC_100_noun_classes.csv",
        )
        (folder / f"epic_{task}_pred.json").write_text(json.dumps({"results": ours[task]}))
        report = evaluate.evaluate(folder / f"epic_{task}_pred.json", gt, "epic100")
        gap = largest_difference(official_maps[task], report.values)
        count = sum(map(len, theirs.values()))
        print(
            f"EPIC {task}: {count} detections, average mAP {100 * report.average:.2f}; "
            f"max |official - etad| over tIoU 0.1..0.5 {gap:.3g}"
        )


EGO4D_DRIVER = """
import json, sys
sys.path.insert(0, sys.argv[1] + '/MQ/Evaluation/ego4d')
from get_retrieval_performance import Moment_Retrieval
retrieval = Moment_Retrieval(ground_truth_filename=sys.argv[2], prediction_filename=sys.argv[3], subset='val')
result = retrieval.evaluate()
print(json.dumps({f'R@{r}x tIoU {t:g}': float(result[i, j]) for i, t in enumerate([0.3, 0.5, 0.7])
                  for j, r in enumerate([1, 2, 3, 4, 5])}))
"""


def ego4d(code: Path, python: str, folder: Path) -> None:
    """The worked case of tests/data/test_converters.py, in Ego4D's clip layout and in etad's."""
    from stages import evaluate

    labels = {
        "clip1": [("cut", 10.0, 30.0), ("wash", 50.0, 90.0), ("cut", 12.0, 31.0), ("wash", 470.0, 490.0)],
        "clip2": [("cut", 5.0, 8.0)],
    }
    detections = {
        "clip1": [
            {"label": "cut", "segment": [10.0, 30.0], "score": 0.9},
            {"label": "cut", "segment": [40.0, 45.0], "score": 0.8},
            {"label": "wash", "segment": [460.0, 480.0], "score": 0.7},
        ],
        "clip2": [],
    }
    theirs_gt = {
        c: {
            "subset": "val",
            "clip_id": c,
            "annotations": [{"label": x, "start_time": s, "end_time": e} for x, s, e in rows],
        }
        for c, rows in labels.items()
    }
    (folder / "ego_gt.json").write_text(json.dumps(theirs_gt))
    (folder / "ego_pred.json").write_text(
        json.dumps({"version": "1", "external_data": {}, "results": detections})
    )
    ours_gt = {
        c: {
            "subset": "val",
            "duration": 480.0,  # etad's conversion clips to the 480 s clip
            "annotations": [{"label": label, "segment": [s, min(e, 480.0)]} for label, s, e in rows],
        }
        for c, rows in labels.items()
    }
    (folder / "ego_gt_etad.json").write_text(json.dumps({"database": ours_gt}))
    theirs = official(python, EGO4D_DRIVER, code, folder / "ego_gt.json", folder / "ego_pred.json")
    report = evaluate.evaluate(folder / "ego_pred.json", folder / "ego_gt_etad.json", "ego4d_mq")
    shared = {k: v for k, v in theirs.items() if k in report.recall_at}
    gap = largest_difference(shared, report.recall_at)
    print(f"Ego4D MQ recall: {report.recall_at}; max |official - etad| {gap:.3g}")


ANET_DRIVER = """
import json, os, re, sys, tempfile
code, gt, pred, subset = sys.argv[1:5]
mended = tempfile.mkdtemp()  # the official code is Python 2: its print statements, iteritems, xrange
for name in ('utils', 'eval_detection'):
    text = open(code + '/Evaluation/' + name + '.py').read()
    text = re.sub(r'^(\\s*)print (.*)$', r'\\1pass', text, flags=re.M)
    text = text.replace('import urllib2', '').replace('.iteritems()', '.items()').replace('xrange(', 'range(')
    open(os.path.join(mended, name + '.py'), 'w').write(text)
sys.path.insert(0, mended)  # and for joblib's workers
os.environ['PYTHONPATH'] = mended + os.pathsep + os.environ.get('PYTHONPATH', '')
from eval_detection import ANETdetection
official = ANETdetection(gt, pred, subset=subset, check_status=False)
official.evaluate()
print(json.dumps({'mAP': [float(x) for x in official.mAP], 'average_mAP': float(official.average_mAP)}))
"""


def ties(
    code: Path, python: str, folder: Path, *, anet_code: Path | None = None, save: Path | None = None
) -> None:
    """DETAD's code (and, given `anet_code`, the official ActivityNet evaluator) against etad on the
    tied cases of tests/helpers.write_tied_cases; `save` keeps their numbers (the test's file)."""
    from stages import diagnose, evaluate
    from tests.helpers import write_tied_cases

    kept = {}
    for dataset, (truth, detections, subset) in write_tied_cases(SHARED, folder).items():
        ours = diagnose.run(truth, detections, dataset=dataset, subset=subset, out=folder / f"{dataset}_out")
        theirs = official(python, DETAD_DRIVER, code, truth, detections, subset, dataset)
        kept[f"detad_{dataset}"] = theirs
        print(f"DETAD {dataset}, tied scores: max |DETAD - etad| {largest_difference(theirs, ours):.3g}")
        if anet_code is not None and dataset == "anet":
            report = evaluate.evaluate(detections, truth, dataset="anet", subset=subset)
            theirs = official(python, ANET_DRIVER, anet_code, truth, detections, subset)
            kept["official_anet"] = theirs
            mine = {"mAP": report.values, "average_mAP": report.average}
            print(
                f"official ActivityNet evaluator, tied scores: max |official - etad| "
                f"{largest_difference(theirs, mine):.3g}"
            )
    if save is not None:
        save.write_text(json.dumps(kept, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("which", choices=("detad", "epic", "ego4d", "ties"))
    parser.add_argument("--code", type=Path, required=True, help="a checkout of the official code")
    parser.add_argument("--python", default=sys.executable, help="a Python with pandas and joblib")
    parser.add_argument("--anet-code", type=Path, help="ties: a checkout of activitynet/ActivityNet too")
    parser.add_argument("--save", type=Path, help="ties: keep the official numbers in this JSON file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.which == "ties":
            anet = args.anet_code.resolve() if args.anet_code else None
            ties(args.code.resolve(), args.python, Path(tmp), anet_code=anet, save=args.save)
            return
        {"detad": detad, "epic": epic, "ego4d": ego4d}[args.which](
            args.code.resolve(), args.python, Path(tmp)
        )


if __name__ == "__main__":
    main()
