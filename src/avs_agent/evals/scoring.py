"""Scoring: one clip's predictions against its labels, and the summary of a whole run.

A clip's row is a plain dict (it is stored as one JSONL line); ``summarize`` builds every number of
``summary.json`` from rows alone, so a run is re-scored without running models again.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from avs_agent.evals import metrics as M
from avs_agent.evals.datasets import Dataset, DatasetError, Sample, read_prediction


def score_clip(
    sample: Sample, pred: np.ndarray, gt: np.ndarray, pred_classes: np.ndarray | None = None
) -> dict[str, Any]:
    """Scores of one clip.

    Args:
        pred: (T, H, W) probabilities or binary masks.
        gt: (T, H, W) ground truth.
        pred_classes: AVSS only: (T, 224, 224) predicted class indices, scored against the colour labels.
    """
    if pred.shape != gt.shape:
        raise DatasetError(f"prediction for {sample.key} has shape {pred.shape}, ground truth {gt.shape}")
    vs = M.score_video(pred, gt)
    row: dict[str, Any] = {
        "key": sample.key,
        "name": sample.labels.name,
        "category": sample.labels.category,
        "J": vs.j,
        "F": vs.f,
        "gt_empty": vs.gt_empty,
        "pred_empty": vs.pred_empty,
        "frame_ious": vs.frame_ious,
        "topk_ious": vs.topk_ious,
    }
    if pred_classes is not None:
        acc = M.ClasswiseAccumulator()
        acc.add(pred_classes, sample.labels.class_labels())
        row["avss"] = {
            "iou_sum": acc.iou_sum.tolist(),
            "f_sum": acc.f_sum.tolist(),
            "count": acc.count.tolist(),
        }
    return row


def summarize(rows: list[dict[str, Any]], skipped: list[tuple[str, str]] | None = None) -> dict[str, Any]:
    """Dataset-level numbers from per-clip rows.

    J and F: the mean over clips of the per-clip values (the official protocol). ``J_visible`` /
    ``F_visible``: the same over clips whose ground truth is not empty everywhere. ``offscreen_empty``:
    the share of clips whose ground truth is empty on every frame (source not visible) that the
    prediction left empty. ``mIoU``, ``cIoU``, ``AUC``: adaptive top-k IoU pooled over all frames with
    a visible source. AVSS runs add the class-wise ``avss_mIoU`` / ``avss_F``.
    """
    visible = [r for r in rows if not r["gt_empty"]]
    offscreen = [r for r in rows if r["gt_empty"]]
    topk = [v for r in rows for v in r.get("topk_ious", [])]
    out: dict[str, Any] = {
        "n_clips": len(rows),
        "n_visible": len(visible),
        "n_offscreen": len(offscreen),
        "J": M.dataset_mean(r["J"] for r in rows),
        "F": M.dataset_mean(r["F"] for r in rows),
        "J_visible": M.dataset_mean(r["J"] for r in visible),
        "F_visible": M.dataset_mean(r["F"] for r in visible),
        "offscreen_empty": (sum(r["pred_empty"] for r in offscreen) / len(offscreen)) if offscreen else None,
        "mIoU": float(np.mean(topk)) if topk else 0.0,
        "cIoU": M.ciou(topk),
        "AUC": M.auc(topk),
        "skipped": [{"key": k, "reason": why} for k, why in (skipped or [])],
    }
    stats = [r.get("stats") or {} for r in rows]
    if rows:
        out["seconds_per_clip"] = float(np.mean([r.get("seconds", 0.0) for r in rows]))
        out["llm_calls_per_clip"] = float(np.mean([s.get("llm_calls", 0) for s in stats]))
        out["tokens_per_clip"] = float(np.mean([s.get("tokens", 0) for s in stats]))
    if any("avss" in r for r in rows):
        acc = M.ClasswiseAccumulator()
        for r in rows:
            if "avss" in r:
                acc.iou_sum += np.asarray(r["avss"]["iou_sum"])
                acc.f_sum += np.asarray(r["avss"]["f_sum"])
                acc.count += np.asarray(r["avss"]["count"])
        res = acc.result()
        out["avss_mIoU"], out["avss_F"] = res["miou"], res["f"]
        out["avss_mIoU_present"], out["avss_F_present"] = res["miou_present"], res["f_present"]
    per_cat: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        per_cat[r.get("category") or "-"].append(r)
    out["per_category"] = {
        cat: {
            "n": len(rs),
            "J": M.dataset_mean(r["J"] for r in rs),
            "F": M.dataset_mean(r["F"] for r in rs),
            "n_offscreen": sum(r["gt_empty"] for r in rs),
            "offscreen_empty": sum(r["gt_empty"] and r["pred_empty"] for r in rs),
        }
        for cat, rs in sorted(per_cat.items())
    }
    return out


def score_dir(
    ds: Dataset, masks_root: Path, on_missing: str = "error"
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Score predicted masks stored under ``masks_root`` in the dataset's layout.

    Returns (rows, summary). A missing or unreadable prediction raises ``DatasetError`` naming the
    file, or with ``on_missing='skip'`` is counted in ``summary['skipped']``.
    """
    masks_root = Path(masks_root)
    if not masks_root.is_dir():
        raise DatasetError(f"prediction folder not found: {masks_root}")
    rows, skipped = [], list(ds.skipped)
    for sample in ds:
        try:
            pred = read_prediction(ds, sample, masks_root)
            classes = read_prediction(ds, sample, masks_root, semantic=True) if ds.semantic else None
            gt = sample.labels.masks()
        except DatasetError as exc:
            if on_missing == "error":
                raise
            skipped.append((sample.key, str(exc)))
            continue
        rows.append(score_clip(sample, pred, gt, classes))
    return rows, summarize(rows, skipped)
