"""Small pure vectorised helpers over boxes, masks and frames (shapes in the docstrings). IoU and NMS are
supervision's (``sv.box_iou_batch``, ``sv.mask_iou_batch``, ``sv.box_non_max_suppression``)."""

from __future__ import annotations

import numpy as np

from avs_agent.tools.types import Frame


def nms(
    boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, classes: np.ndarray | None = None
) -> np.ndarray:
    """Greedy non-maximum suppression (supervision's ``box_non_max_suppression``), within each class
    when ``classes`` is given. boxes: (n, 4) xyxy, scores: (n,), classes: (n,) int -> kept indices,
    best first."""
    import supervision as sv

    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    scores = np.asarray(scores, np.float64).reshape(-1)
    if not len(scores):
        return np.zeros(0, np.int64)
    columns = [boxes, scores[:, None]] if classes is None else [boxes, scores[:, None], np.c_[classes]]
    kept = np.flatnonzero(sv.box_non_max_suppression(np.hstack(columns), iou_threshold))
    return kept[np.argsort(-scores[kept], kind="stable")].astype(np.int64)


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
