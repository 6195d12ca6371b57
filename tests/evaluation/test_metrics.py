"""Detection/proposal metrics: hand-computed values, and the vectorised matcher against a literal,
one-prediction-at-a-time transcription of the official ActivityNet algorithm."""

import numpy as np
import pytest

from stages.data.protocols import ANET_TIOUS
from stages.evaluation.metrics import (
    average_recall_vs_proposals,
    detection_ap,
    interpolated_ap,
    pairwise_tiou,
    recall_auc,
)


def test_tiou_hand_values():
    got = pairwise_tiou(
        np.array([[0.0, 10.0], [5.0, 5.0]]), np.array([[5.0, 15.0], [20.0, 30.0], [5.0, 5.0]])
    )
    assert got[0, 0] == pytest.approx(5 / 15)
    assert got[0, 1] == 0.0
    assert got[0, 2] == 0.0  # a point inside a segment: no intersection, union 10
    assert got[1, 2] == 1.0  # empty union at the same instant: the truth predicted exactly
    empty = pairwise_tiou(np.array([[20.0, 27.0], [4.0, 4.0]]), np.array([[9.0, 2.0], [5.0, 5.0]]))
    assert empty[0, 0] == 0.0 and empty[1, 1] == 0.0 and not np.isnan(empty).any()  # official: NaN, a match


def test_a_reversed_ground_truth_segment_is_refused_by_eval_diagnose_and_view(tmp_path):
    """[9, 2] has an empty union with any segment of its length: it would score 100% at every tIoU;
    every command that scores refuses the file in one line, naming the video."""
    import json

    from stages.core.errors import UserError
    from stages.evaluate import evaluate
    from stages.evaluation.detad_files import read_inputs
    from tests.helpers import one_instance_truth

    truth = one_instance_truth("v", 30.0, [9.0, 2.0], "a")
    predictions = {"results": {"v": [{"segment": [20.0, 27.0], "score": 0.9, "label": "a"}]}}
    (tmp_path / "gt.json").write_text(json.dumps(truth))
    (tmp_path / "p.json").write_text(json.dumps(predictions))
    for score in (
        lambda: evaluate(tmp_path / "p.json", tmp_path / "gt.json", tious=[0.5]),
        lambda: read_inputs(tmp_path / "gt.json", tmp_path / "p.json", "anet", "validation"),
    ):
        with pytest.raises(
            UserError, match="video 'v' annotation 0: segment \\[9.0, 2.0\\] ends before it starts"
        ):
            score()


def test_interpolated_ap_hand_values():
    # tp pattern 1,0,1 with 2 positives: precision 1, .5, 2/3; recall .5, .5, 1
    assert interpolated_ap(np.array([1, 0.5, 2 / 3]), np.array([0.5, 0.5, 1.0])) == pytest.approx(
        0.5 + 0.5 * 2 / 3
    )
    assert interpolated_ap(np.array([0.0]), np.array([0.0])) == 0.0


def reference_ap(gt, preds, n_classes, tious):
    """The official algorithm written out literally: gt = [(video, s, e, label)],
    preds = [(video, s, e, label, score)]."""
    ap = np.zeros((len(tious), n_classes))
    for c in range(n_classes):
        g = [x for x in gt if x[3] == c]
        p = [x for x in preds if x[3] == c]
        if not p or not g:
            continue
        scores = np.array([x[4] for x in p])
        p = [p[i] for i in scores.argsort()[::-1]]
        lock = -np.ones((len(tious), len(g)))
        tp = np.zeros((len(tious), len(p)))
        fp = np.zeros((len(tious), len(p)))
        for i, (v, s, e, _, _) in enumerate(p):
            cand = [j for j, x in enumerate(g) if x[0] == v]
            if not cand:
                fp[:, i] = 1
                continue
            segs = np.array([[g[j][1], g[j][2]] for j in cand])
            tiou = pairwise_tiou(np.array([[s, e]]), segs)[0]
            order = tiou.argsort()[::-1]
            for t, thr in enumerate(tious):
                for k in order:
                    if tiou[k] < thr:
                        fp[t, i] = 1
                        break
                    if lock[t, cand[k]] >= 0:
                        continue
                    tp[t, i] = 1
                    lock[t, cand[k]] = i
                    break
                if fp[t, i] == 0 and tp[t, i] == 0:
                    fp[t, i] = 1
        tpc, fpc = np.cumsum(tp, axis=1), np.cumsum(fp, axis=1)
        for t in range(len(tious)):
            ap[t, c] = interpolated_ap(tpc[t] / (tpc[t] + fpc[t]), tpc[t] / len(g))
    return ap


def _random_case(rng, n_videos=6, n_classes=3, n_gt=25, n_pred=120):
    grid = np.arange(0, 20, 0.5)  # coarse grid: ties, duplicates and zero-length segments happen
    gt = []
    for _ in range(n_gt):
        s = rng.choice(grid)
        gt.append(
            (int(rng.integers(n_videos)), s, s + rng.choice([0, 0.5, 1, 2, 4]), int(rng.integers(n_classes)))
        )
    gt += gt[:3]  # exact duplicates, kept by the official protocol
    preds = []
    for _ in range(n_pred):
        s = rng.choice(grid)
        score = float(rng.choice([0.1, 0.5, 0.9, rng.random()]))
        preds.append(
            (
                int(rng.integers(n_videos + 1)),
                s,
                s + rng.choice([0, 0.5, 1, 2, 4]),
                int(rng.integers(n_classes)),
                score,
            )
        )
    return gt, preds


def _arrays(gt, preds):
    g = np.array(gt, dtype=float).reshape(-1, 4)
    p = np.array(preds, dtype=float).reshape(-1, 5)
    return {
        "gt_video": g[:, 0].astype(int),
        "gt_segments": g[:, 1:3],
        "gt_label": g[:, 3].astype(int),
        "pred_video": p[:, 0].astype(int),
        "pred_segments": p[:, 1:3],
        "pred_label": p[:, 3].astype(int),
        "pred_score": p[:, 4],
    }


@pytest.mark.parametrize("seed", range(8))
def test_vectorised_matches_literal_official_algorithm(seed):
    rng = np.random.default_rng(seed)
    gt, preds = _random_case(rng)
    tious = ANET_TIOUS if seed % 2 else np.linspace(0.1, 0.9, 9)
    fast = detection_ap(**_arrays(gt, preds), n_classes=3, tious=tious)
    slow = reference_ap(gt, preds, 3, tious)
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-12)


def test_detection_ap_hand_case():
    # one video, one class, ground truth [0,10] and [20,30]; predictions by score:
    # [0,10] tp, [0,9] duplicate -> fp, [20,26] tIoU .6, [50,60] fp
    gt = [(0, 0.0, 10.0, 0), (0, 20.0, 30.0, 0)]
    preds = [(0, 0.0, 9.0, 0, 0.8), (0, 0.0, 10.0, 0, 0.9), (0, 20.0, 26.0, 0, 0.7), (0, 50.0, 60.0, 0, 0.6)]
    ap = detection_ap(**_arrays(gt, preds), n_classes=1, tious=np.array([0.5, 0.7]))
    # at 0.5: tp,fp,tp,fp -> precision 1,.5,2/3 recall .5,.5,1 -> .5 + .5*2/3
    assert ap[0, 0] == pytest.approx(0.5 + 0.5 * 2 / 3)
    # at 0.7: tp,fp,fp,fp -> .5
    assert ap[1, 0] == pytest.approx(0.5)


def test_zero_length_ground_truth_matches_identical_prediction():
    gt = [(0, 5.0, 5.0, 0)]
    preds = [(0, 5.0, 5.0, 0, 1.0)]
    assert detection_ap(**_arrays(gt, preds), n_classes=1, tious=ANET_TIOUS).min() == 1.0


def test_class_without_predictions_scores_zero():
    gt = [(0, 0.0, 1.0, 0), (0, 0.0, 1.0, 1)]
    preds = [(0, 0.0, 1.0, 0, 1.0)]
    ap = detection_ap(**_arrays(gt, preds), n_classes=2, tious=ANET_TIOUS)
    assert ap[:, 0].min() == 1.0 and ap[:, 1].max() == 0.0


def test_average_recall_hand_case():
    # two videos, one ground truth each; video 0's best proposal hits, video 1's second one does
    gt_video = np.array([0, 1])
    gt_seg = np.array([[0.0, 10.0], [0.0, 10.0]])
    pred_video = np.array([0, 0, 1, 1])
    pred_seg = np.array([[0.0, 10.0], [50.0, 60.0], [50.0, 60.0], [0.0, 10.0]])
    score = np.array([0.9, 0.1, 0.9, 0.1])
    recall, avg, per_video = average_recall_vs_proposals(
        gt_video, gt_seg, pred_video, pred_seg, pred_score=score, tious=np.array([0.5]), max_avg_proposals=2
    )
    assert per_video[-1] == pytest.approx(2)
    assert recall[0, -1] == 1.0  # both found within 2 proposals per video
    assert recall[0, 49] == 0.5  # with 1 proposal per video only video 0's is found
    assert recall_auc(avg, per_video) > 0
