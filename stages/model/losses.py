"""ETAD losses (docs/method.md §5), each a small function over tensors.

The sampled losses draw random numbers from torch's global generator; training seeds it per epoch
so that runs (and resumed runs) are reproducible.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from stages.model.targets import aligned_iou

EPS = 1e-6
IOU_CLS_POSITIVE = 0.9
IOU_REG_HIGH, IOU_REG_LOW = 0.7, 0.3
COEF_IOU_REG, COEF_BOUNDARY_REG, COEF_BOUNDARY_CLS = 5.0, 10.0, 0.5


def balanced_bce(p: torch.Tensor, y: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """TEM loss: positives (y > threshold) and negatives weighted to contribute equally. With only
    one kind present, the mean log-likelihood of that kind alone."""
    p, y = p.flatten(), y.flatten()
    pos = (y > threshold).float()
    neg = 1.0 - pos
    n_pos, n_neg = pos.sum(), neg.sum()
    log_p, log_q = torch.log(p + EPS), torch.log(1.0 - p + EPS)
    if n_pos == 0:
        return -(neg * log_q).sum() / n_neg
    if n_neg == 0:
        return -(pos * log_p).sum() / n_pos
    n = p.numel()
    return -(0.5 * n / n_pos * pos * log_p + 0.5 * n / n_neg * neg * log_q).mean()


def sampled_bce(p: torch.Tensor, y: torch.Tensor, threshold: float) -> torch.Tensor:
    """BCE on all positives (y > threshold) and as many negatives on average, drawn at random.

    As the original (model_loss.py): an entry takes the negative term when rand * neg > 1 - r with
    r = n_pos / n_neg. When positives outnumber negatives (r > 1, or no negative at all), that holds
    for *every* entry, positives included, so every entry takes the negative term."""
    p, y = p.flatten(), y.flatten()
    pos = (y > threshold).float()
    neg = 1.0 - pos
    n_pos, n_neg = pos.sum(), neg.sum()
    log_q = torch.log(1.0 - p + EPS)
    if n_pos == 0:
        return -log_q.mean()
    ratio = n_pos / n_neg  # inf without negatives, as the original
    kept_neg = ((torch.rand_like(p) * neg) > (1.0 - ratio)).float()
    total = -(pos * torch.log(p + EPS)).sum() - (kept_neg * log_q).sum()
    return total / (n_pos + kept_neg.sum())


def sampled_l2(
    p: torch.Tensor, y: torch.Tensor, high: float = IOU_REG_HIGH, low: float = IOU_REG_LOW
) -> torch.Tensor:
    """MSE with the mid (low, high] and low (<= low) bins each subsampled to the size of the high bin.

    As the original: the three masks are added, and a bin smaller than the high bin (r > 1) keeps
    every entry of the video, so such entries count two or three times."""
    p, y = p.flatten(), y.flatten()
    h = (y > high).float()
    m = ((y <= high) & (y > low)).float()
    lo = (y <= low).float()
    n_h, n_m, n_l = h.sum(), m.sum(), lo.sum()
    if n_h == 0:
        return F.mse_loss(p, y)
    keep_m = (torch.rand_like(p) * m) > (1.0 - n_h / n_m)
    keep_l = (torch.rand_like(p) * lo) > (1.0 - n_h / n_l)
    mask = h + keep_m.float() + keep_l.float()
    return ((p - y) ** 2 * mask).sum() / mask.sum()


def regression_targets(anchors: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """[..., 4] offsets of the matched ground truth from the anchor, in anchor lengths:
    start, end, centre, log width."""
    la = (anchors[..., 1] - anchors[..., 0]).clamp(min=EPS)
    lg = (gt[..., 1] - gt[..., 0]).clamp(min=EPS)
    ds = (gt[..., 0] - anchors[..., 0]) / la
    de = (gt[..., 1] - anchors[..., 1]) / la
    return torch.stack([ds, de, (ds + de) / 2, torch.log(lg / la + EPS)], dim=-1)


def boundary_index(x: torch.Tensor, t: int) -> torch.Tensor:
    """The snippet whose boundary target an anchor edge reads: int(x * T) clamped to [0, T-1]."""
    return (x * t).long().clamp(0, t - 1)


def stage_loss(
    iou: torch.Tensor,
    reg: torch.Tensor,
    anchors: torch.Tensor,
    gt_box: torch.Tensor,
    *,
    gt_start: torch.Tensor,
    gt_end: torch.Tensor,
    positive_iou: float,
) -> dict[str, torch.Tensor]:
    """One cascade stage. iou [B,K,2], reg [B,K,6], anchors and gt_box [B,K,2], gt_start/end [B,T]."""
    t = gt_start.shape[1]
    g_iou = aligned_iou(anchors, gt_box)
    loss_iou_cls = sampled_bce(iou[..., 0], g_iou, IOU_CLS_POSITIVE)
    loss_iou_reg = sampled_l2(iou[..., 1], g_iou)
    positive = (g_iou > positive_iou).flatten()
    if positive.any():
        target = regression_targets(anchors, gt_box).flatten(0, 1)[positive]
        loss_reg = F.smooth_l1_loss(reg.flatten(0, 1)[positive][:, :4], target, beta=1.0, reduction="none")
        loss_reg = loss_reg.mean(dim=0).sum()
    else:
        loss_reg = reg.sum() * 0.0
    cls_s = torch.gather(gt_start, 1, boundary_index(anchors[..., 0], t))
    cls_e = torch.gather(gt_end, 1, boundary_index(anchors[..., 1], t))
    loss_cls = sampled_bce(reg[..., 4], cls_s, 0.5) + sampled_bce(reg[..., 5], cls_e, 0.5)
    total = (
        loss_iou_cls
        + COEF_IOU_REG * loss_iou_reg
        + COEF_BOUNDARY_REG * loss_reg
        + COEF_BOUNDARY_CLS * loss_cls
    )
    return {
        "iou_cls": loss_iou_cls,
        "iou_reg": loss_iou_reg,
        "bnd_reg": loss_reg,
        "bnd_cls": loss_cls,
        "total": total,
    }


def proposal_class_loss(logits: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """The per-proposal head's loss: binary cross-entropy summed over classes, averaged over the
    anchors that overlap an instance (slot 0 set). logits [B, K, n], slots [B, K, S] class ids or -1
    (stages/model/targets.py proposal_classes). Background anchors take no part: the head says which
    action, the IoU heads say whether there is one (the detection score multiplies the two)."""
    positive = slots[..., 0] >= 0
    if not positive.any():
        return logits.sum() * 0.0
    rows, ids = logits[positive], slots[positive]  # [P, n], [P, S]
    hot = F.one_hot(ids.clamp(min=0), rows.shape[1]) * (ids >= 0)[..., None]  # [P, S, n]
    target = hot.amax(dim=1).to(rows.dtype)
    return F.binary_cross_entropy_with_logits(rows, target, reduction="sum") / len(rows)


def detector_loss(
    out: dict, batch: dict, stage_thresholds: list[float], tem_loss=balanced_bce
) -> dict[str, torch.Tensor]:
    """L = TEM(start) + TEM(end) + sum of stage losses (+ the classifier head's BCE when present:
    video-level, or per proposal).
    `tem_loss` is the variant's (stages/model/detector.py VARIANTS). Returns the total and each term
    (summed over stages) for logging."""
    tem = out["tem"]
    terms = {
        "tem": tem_loss(tem[:, 0], batch["gt_start"]) + tem_loss(tem[:, 1], batch["gt_end"]),
        "iou_cls": 0.0,
        "iou_reg": 0.0,
        "bnd_reg": 0.0,
        "bnd_cls": 0.0,
    }
    total = terms["tem"]
    for anchors, iou, reg, thr in zip(out["anchors"], out["iou"], out["reg"], stage_thresholds):
        stage = stage_loss(
            iou,
            reg,
            anchors,
            batch["gt_box"],
            gt_start=batch["gt_start"],
            gt_end=batch["gt_end"],
            positive_iou=thr,
        )
        total = total + stage.pop("total")
        for name, value in stage.items():
            terms[name] = terms[name] + value
    if "classes" in out:
        terms["classifier"] = F.binary_cross_entropy_with_logits(out["classes"], batch["labels"])
        total = total + terms["classifier"]
    if "proposal_classes" in out:
        terms["classifier"] = proposal_class_loss(out["proposal_classes"], batch["proposal_classes"])
        total = total + terms["classifier"]
    terms["total"] = total
    return terms


def as_float(out: dict) -> dict:
    """Detector outputs in float32 for the losses (they may come out of autocast in half precision)."""
    return {k: [t.float() for t in v] if isinstance(v, list) else v.float() for k, v in out.items()}
