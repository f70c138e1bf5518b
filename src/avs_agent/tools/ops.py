"""Small pure vectorised helpers over boxes, masks and frames (shapes in the docstrings)."""

from __future__ import annotations

import numpy as np

from avs_agent.tools.types import Frame


def box_iou_batch(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every pair. a: (n, 4) xyxy, b: (m, 4) xyxy -> (n, m)."""
    a = np.asarray(a, np.float32).reshape(-1, 4)
    b = np.asarray(b, np.float32).reshape(-1, 4)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression. boxes: (n, 4), scores: (n,) -> kept indices, best first."""
    order = np.argsort(-np.asarray(scores))
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        if order.size == 1:
            break
        ious = box_iou_batch(boxes[i : i + 1], boxes[order[1:]])[0]
        order = order[1:][ious <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def batched_nms(
    boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_threshold: float
) -> np.ndarray:
    """Per-class NMS. classes: (n,) int -> kept indices sorted by score."""
    keep = [
        idx[nms(boxes[idx], scores[idx], iou_threshold)]
        for c in np.unique(classes)
        for idx in [np.flatnonzero(classes == c)]
    ]
    if not keep:
        return np.zeros(0, np.int64)
    kept = np.concatenate(keep)
    return kept[np.argsort(-scores[kept])]


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two (H, W) bool masks; two empty masks give 1.0."""
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def box_from_mask(mask: np.ndarray) -> list[float]:
    """(H, W) bool -> xyxy of its pixels (zeros when empty)."""
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return [0.0, 0.0, 0.0, 0.0]
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def stretch_to_aspect(frame: Frame, min_change: float = 0.1) -> tuple[np.ndarray, float]:
    """The frame's image stretched horizontally to ``frame.aspect`` (w/h) when it differs by more than
    ``min_change``; returns (image (H, W', 3) uint8, x scale W'/W)."""
    if not frame.aspect:
        return frame.image, 1.0
    h, w = frame.image.shape[:2]
    target_w = int(round(h * frame.aspect))
    if target_w <= 0 or abs(target_w - w) / w < min_change:
        return frame.image, 1.0
    from PIL import Image

    stretched = np.asarray(Image.fromarray(frame.image).resize((target_w, h), Image.Resampling.BILINEAR))
    return stretched, target_w / w


def resize_masks(masks: np.ndarray, height: int, width: int) -> np.ndarray:
    """(n, h, w) bool -> (n, height, width) bool, nearest neighbour."""
    if masks.shape[1:] == (height, width):
        return masks.astype(bool)
    ys = np.minimum((np.arange(height) + 0.5) * masks.shape[1] / height, masks.shape[1] - 1).astype(int)
    xs = np.minimum((np.arange(width) + 0.5) * masks.shape[2] / width, masks.shape[2] - 1).astype(int)
    return masks[:, ys][:, :, xs].astype(bool)
