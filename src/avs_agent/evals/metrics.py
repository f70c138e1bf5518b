"""Audio-visual segmentation metrics, computed exactly as the published evaluation code computes them.

Pure numpy; every function takes whole videos as arrays and documents their shapes.

AVSBench J and F (S4, MS3, and the binary V3 protocol) follow the official AVSBench test code,
``OpenNLPLab/AVSBench`` at commit 4d4c901, ``avs_scripts/avs_s4/utils/utility.py``
(``mask_iou``, ``_eval_pr``, ``Eval_Fmeasure``) driven by ``avs_scripts/avs_s4/test.py`` with
``--test_batch_size 1`` (one video per batch, so every quantity below is per video, and the dataset
score is the mean of the per-video values kept by ``pyutils.AverageMeter``):

* ``mask_iou``: the model's logits go through ``sigmoid(.) > 0.5``; per frame
  ``inter / (union + 1e-7)``; a frame whose ground truth is empty scores the number of pixels both
  call background over the frame's pixel count; the video's value is the mean over its frames.
* ``Eval_Fmeasure``: ``sigmoid(logits)`` is thresholded at 255 values ``linspace(0, 1 - 1e-10)``
  (``>=``), precision ``tp / (n_pred + 1e-20)``, recall ``tp / (n_gt + 1e-20)``,
  ``F = (1 + 0.3) P R / (0.3 P + R)`` with NaN set to 0; frames with an empty ground truth are
  skipped; the curves of the remaining frames are averaged and the maximum taken. A video whose
  frames are all empty keeps the initial all-zero curve, so it scores 0.

Predictions here are probability maps ``p`` in [0, 1] (``p = sigmoid(logits)``) or binary masks
(``p`` in {0, 1}). Both code paths above only ever see ``sigmoid(logits)``, so passing ``p`` is exact:
J uses ``p > 0.5`` and F thresholds ``p`` itself. One consequence, true of the official code too: the
first threshold is 0, at which every pixel counts as foreground, so an empty binary prediction on a
frame with a visible source still gets F = 1.3 g / (0.3 g + 1) from that point (g = the ground
truth's share of the frame). The thresholds are built in float32 the way ``torch.linspace`` builds
them on CPU, and ``p`` is compared in float32, so maps that came from a float32 sigmoid split at
exactly the same pixels.

AVSS class-wise mIoU and F follow ``avs_scripts/avss/utils/compute_color_metrics.py``
(``_batch_miou_fscore``) and the accumulation in ``avs_scripts/avss/test.py`` (commit 35d0b42).

The zero-shot literature's localisation metrics (adaptive top-k mIoU, cIoU, AUC) are defined in
``topk_ious``, ``ciou`` and ``auc``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

PR_NUM = 255
"""Number of F-measure thresholds (official ``pr_num``)."""
BETA2 = 0.3
"""F-measure beta squared (official ``beta2``)."""
IOU_EPS = 1e-7
"""Added to the union in ``mask_iou``."""
PR_EPS = 1e-20
"""Added to the denominators of precision and recall in ``_eval_pr``."""
AVSS_EPS = 2.220446049250313e-16
"""Added to the union in ``_batch_miou_fscore``."""
AVSS_CLASSES = 71
"""AVSBench-semantic classes, background (index 0) included."""


# ----------------------------------------------------------------------------- input checking


def as_prob(pred: np.ndarray) -> np.ndarray:
    """Prediction(s) as float32 probabilities in [0, 1], same shape.

    Accepts bool masks, integer masks with values in {0, 1}, uint8 masks with values in {0, 255}
    (PNG masks as saved), and float maps in [0, 1]. Anything else raises ``ValueError``.
    """
    arr = np.asarray(pred)
    if arr.dtype == bool:
        return arr.astype(np.float32)
    if np.issubdtype(arr.dtype, np.integer):
        if arr.size and arr.max() > 1:
            if arr.min() < 0 or not np.isin(arr, (0, 255)).all():
                raise ValueError("integer predictions must be 0/1 or 0/255 masks")
            return (arr > 0).astype(np.float32)
        if arr.size and arr.min() < 0:
            raise ValueError("integer predictions must be 0/1 or 0/255 masks")
        return arr.astype(np.float32)
    arr = arr.astype(np.float32)
    if arr.size and (not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1):
        raise ValueError("probability predictions must lie in [0, 1]")
    return arr


def as_gt(gt: np.ndarray) -> np.ndarray:
    """Ground truth as a bool array (any non-zero value is foreground), same shape."""
    return np.asarray(gt) > 0


def _video_arrays(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p, g = as_prob(pred), as_gt(gt)
    if p.ndim == 2:
        p = p[None]
    if g.ndim == 2:
        g = g[None]
    if p.ndim != 3 or p.shape != g.shape:
        raise ValueError(f"prediction {p.shape} and ground truth {g.shape} must both be (T, H, W)")
    return p, g


# ----------------------------------------------------------------------------- AVSBench J


def frame_ious(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Per-frame IoU as the official ``mask_iou``.

    Args:
        pred: (T, H, W) probabilities in [0, 1] or a binary mask ((H, W) for one frame).
        gt: (T, H, W) ground truth; non-zero is foreground.

    Returns:
        (T,) float64. A frame with empty ground truth scores (pixels both call background) / (H * W).
    """
    p, g = _video_arrays(pred, gt)
    t = p.shape[0]
    fg = (p > 0.5).reshape(t, -1)
    g = g.reshape(t, -1)
    n_pixels = fg.shape[1]
    inter = (fg & g).sum(axis=1).astype(np.float64)
    union = (fg | g).sum(axis=1).astype(np.float64)
    empty = ~g.any(axis=1)
    inter[empty] = (~fg[empty] & ~g[empty]).sum(axis=1)
    union[empty] = n_pixels
    return inter / (union + IOU_EPS)


def video_j(pred: np.ndarray, gt: np.ndarray) -> float:
    """J of one video: the mean of ``frame_ious``. (T, H, W) inputs; a video with no frame is an error."""
    ious = frame_ious(pred, gt)
    if len(ious) == 0:
        raise ValueError("a video needs at least one frame")
    return float(ious.mean())


# ----------------------------------------------------------------------------- AVSBench F


def f_thresholds(num: int = PR_NUM) -> np.ndarray:
    """(num,) float32 thresholds: ``torch.linspace(0, 1 - 1e-10, num)`` as the official code builds it
    (``_eval_pr`` with its default ``cuda_flag=True``, i.e. torch's CUDA linspace kernel).

    That kernel computes ``start + step * i`` for the first half and ``end - step * (num - 1 - i)``
    for the rest in float32, with ``end = float32(1 - 1e-10) = 1.0``; nvcc fuses each into one
    multiply-add, rounded once, which is what this reproduces. (torch's vectorised CPU kernel
    rounds differently and can differ by one float32 ulp at some thresholds; only a prediction value
    within that ulp of a threshold could be split differently. Binary masks never are.)
    """
    start = np.float32(0.0)
    end = np.float32(1 - 1e-10)
    if num == 1:
        return np.array([start], np.float32)
    step = np.float32((end - start) / np.float32(num - 1))
    idx = np.arange(num, dtype=np.float64)
    half = num // 2
    out = np.empty(num, np.float64)
    out[:half] = np.float64(start) + np.float64(step) * idx[:half]
    out[half:] = np.float64(end) - np.float64(step) * (num - 1 - idx[half:])
    return out.astype(np.float32)


def frame_f_curves(pred: np.ndarray, gt: np.ndarray, num: int = PR_NUM) -> np.ndarray:
    """Per-frame F-measure curves as the official ``_eval_pr`` + ``Eval_Fmeasure`` body.

    Args:
        pred: (T, H, W) probabilities or binary masks.
        gt: (T, H, W) ground truth.

    Returns:
        (T, num) float64, F at each threshold. Rows of frames with empty ground truth are NaN (the
        official code skips those frames).
    """
    p, g = _video_arrays(pred, gt)
    t = p.shape[0]
    th = f_thresholds(num)
    out = np.full((t, num), np.nan)
    for i in range(t):
        gi = g[i].reshape(-1)
        n_gt = int(gi.sum())
        if n_gt == 0:
            continue
        pi = p[i].reshape(-1)
        all_sorted = np.sort(pi)
        gt_sorted = np.sort(pi[gi])
        n_pred = pi.size - np.searchsorted(all_sorted, th, side="left")
        tp = n_gt - np.searchsorted(gt_sorted, th, side="left")
        prec = tp / (n_pred + PR_EPS)
        rec = tp / (n_gt + PR_EPS)
        with np.errstate(invalid="ignore", divide="ignore"):
            f = (1 + BETA2) * prec * rec / (BETA2 * prec + rec)
        f[np.isnan(f)] = 0.0
        out[i] = f
    return out


def video_f(pred: np.ndarray, gt: np.ndarray, num: int = PR_NUM) -> float:
    """F of one video: the curves of its frames with a non-empty ground truth, averaged, then the
    maximum. 0.0 when every frame's ground truth is empty. (T, H, W) inputs."""
    curves = frame_f_curves(pred, gt, num)
    kept = curves[~np.isnan(curves[:, 0])] if len(curves) else curves
    if len(kept) == 0:
        return 0.0
    return float(kept.mean(axis=0).max())


def dataset_mean(values: Iterable[float]) -> float:
    """Mean over videos (the official ``AverageMeter``); 0.0 for no videos."""
    vals = [float(v) for v in values]
    return float(np.mean(vals)) if vals else 0.0


@dataclass
class VideoScore:
    """All per-video numbers of one clip."""

    j: float
    f: float
    frame_ious: list[float]
    gt_empty: bool
    """True when every frame's ground truth is empty (the source is not visible)."""
    pred_empty: bool
    """True when the prediction has no foreground pixel (``p > 0.5``) on any frame."""
    topk_ious: list[float] = field(default_factory=list)
    """Adaptive top-k IoU of each frame with a non-empty ground truth."""


def score_video(pred: np.ndarray, gt: np.ndarray) -> VideoScore:
    """Every binary metric of one video. pred, gt: (T, H, W)."""
    p, g = _video_arrays(pred, gt)
    ious = frame_ious(p, g)
    return VideoScore(
        j=float(ious.mean()) if len(ious) else 0.0,
        f=video_f(p, g),
        frame_ious=[float(v) for v in ious],
        gt_empty=not bool(g.any()),
        pred_empty=not bool((p > 0.5).any()),
        topk_ious=[float(v) for v in topk_ious(p, g)],
    )


# ----------------------------------------------------------------------------- zero-shot localisation


def topk_mask(pred: np.ndarray, k: int) -> np.ndarray:
    """(H, W) bool: the ``k`` highest-scoring pixels of one (H, W) map, ties broken in raster order,
    leaving out pixels whose score is 0 (a binary mask smaller than ``k`` is not padded with
    arbitrary background pixels)."""
    p = as_prob(pred)
    flat = p.reshape(-1)
    out = np.zeros(flat.shape, bool)
    if k > 0:
        order = np.argsort(-flat, kind="stable")[:k]
        out[order] = True
        out &= flat > 0
    return out.reshape(p.shape)


def topk_ious(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Adaptive top-k IoU of each frame with a non-empty ground truth (the zero-shot AVS/SSL
    protocol: the prediction map is binarised by keeping its top-k pixels, k = the ground truth's
    pixel count, so no threshold is tuned). Frames with empty ground truth are left out.

    Args:
        pred: (T, H, W) scores in [0, 1] or binary masks.
        gt: (T, H, W) ground truth.

    Returns:
        (n,) float64, n = frames with a non-empty ground truth.
    """
    p, g = _video_arrays(pred, gt)
    out = []
    for i in range(p.shape[0]):
        k = int(g[i].sum())
        if k == 0:
            continue
        m = topk_mask(p[i], k)
        inter = np.logical_and(m, g[i]).sum()
        union = np.logical_or(m, g[i]).sum()
        out.append(inter / union)
    return np.asarray(out, dtype=np.float64)


def ciou(ious: Sequence[float] | np.ndarray, threshold: float = 0.5) -> float:
    """cIoU: the share of frames whose IoU is at least ``threshold`` (0.0 for none)."""
    arr = np.asarray(ious, dtype=np.float64)
    return float((arr >= threshold).mean()) if arr.size else 0.0


AUC_THRESHOLDS = np.linspace(0.0, 1.0, 21)
"""IoU thresholds 0, 0.05, ..., 1 of the success curve (as in LVS / EZ-VSL evaluation)."""


def auc(ious: Sequence[float] | np.ndarray) -> float:
    """Area under the success curve: share of frames with IoU >= t for t in 0, 0.05, ..., 1,
    integrated with the trapezoid rule over [0, 1] (0.0 for no frames)."""
    arr = np.asarray(ious, dtype=np.float64)
    if not arr.size:
        return 0.0
    rates = np.array([(arr >= t).mean() for t in AUC_THRESHOLDS])
    return float(np.sum((rates[1:] + rates[:-1]) / 2 * np.diff(AUC_THRESHOLDS)))


# ----------------------------------------------------------------------------- AVSS class-wise


def avss_palette(n: int = AVSS_CLASSES) -> np.ndarray:
    """(n, 3) uint8 colours of the AVSBench-semantic labels: the VOC bit-interleaved palette as built
    by ``get_v2_pallete`` in ``avs_scripts/avss/color_dataloader.py``; index 0 (black) is background."""
    pal = np.zeros((n, 3), np.int64)
    for j in range(n):
        lab, i = j, 0
        while lab > 0:
            pal[j, 0] |= ((lab >> 0) & 1) << (7 - i)
            pal[j, 1] |= ((lab >> 1) & 1) << (7 - i)
            pal[j, 2] |= ((lab >> 2) & 1) << (7 - i)
            i += 1
            lab >>= 3
    return pal.astype(np.uint8)


def rgb_to_labels(rgb: np.ndarray, palette: np.ndarray | None = None) -> np.ndarray:
    """(H, W, 3) colour label image -> (H, W) int64 class indices (``color_mask_to_label``: colours
    not in the palette become 0, background)."""
    pal = avss_palette() if palette is None else palette
    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"colour labels must be (H, W, 3), got {arr.shape}")
    code = (arr[..., 0].astype(np.int64) << 16) | (arr[..., 1].astype(np.int64) << 8) | arr[..., 2]
    pal_code = (pal[:, 0].astype(np.int64) << 16) | (pal[:, 1].astype(np.int64) << 8) | pal[:, 2]
    out = np.zeros(code.shape, np.int64)
    # argmax over the equality stack: the first palette entry with a colour wins
    for i in range(len(pal_code) - 1, 0, -1):
        out[code == pal_code[i]] = i
    return out


def labels_to_rgb(labels: np.ndarray, palette: np.ndarray | None = None) -> np.ndarray:
    """(H, W) class indices -> (H, W, 3) uint8 colours."""
    pal = avss_palette() if palette is None else palette
    return pal[np.asarray(labels, dtype=np.int64)]


@dataclass
class ClasswiseAccumulator:
    """Running sums of the AVSS class-wise metrics, exactly as ``avs_scripts/avss/test.py`` keeps them.

    Per frame and class c (background included): IoU_c = inter / (union + 2.2e-16), F_c with
    beta^2 = 0.3 from precision inter/pred and recall inter/label (NaN -> 0); both summed over frames,
    and a frame counts for class c when c is in the prediction or the ground truth (union > 0).
    """

    n_classes: int = AVSS_CLASSES
    iou_sum: np.ndarray = field(default=None)  # type: ignore[assignment]
    f_sum: np.ndarray = field(default=None)  # type: ignore[assignment]
    count: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.iou_sum is None:
            self.iou_sum = np.zeros(self.n_classes)
            self.f_sum = np.zeros(self.n_classes)
            self.count = np.zeros(self.n_classes)

    def add(self, pred: np.ndarray, gt: np.ndarray, pad_frames: int = 0) -> None:
        """Add one video.

        Args:
            pred: (T, H, W) int predicted class per pixel.
            gt: (T, H, W) int true class per pixel.
            pad_frames: frames the official loader pads a 5-frame v1 video with (to 10), on which
                prediction and truth are both background; 0 scores only the real frames.
        """
        pred = np.asarray(pred, dtype=np.int64)
        gt = np.asarray(gt, dtype=np.int64)
        if pred.ndim == 2:
            pred, gt = pred[None], gt[None]
        if pred.shape != gt.shape or pred.ndim != 3:
            raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} must both be (T, H, W)")
        n = self.n_classes
        if pred.size and (pred.min() < 0 or pred.max() >= n or gt.min() < 0 or gt.max() >= n):
            raise ValueError(f"class indices must lie in [0, {n})")
        for i in range(pred.shape[0]):
            self._add_frame(pred[i], gt[i])
        if pad_frames:
            bg = np.zeros((1, 1), np.int64)
            for _ in range(pad_frames):
                self._add_frame(bg, bg)

    def _add_frame(self, p: np.ndarray, g: np.ndarray) -> None:
        n = self.n_classes
        inter = np.bincount(p[p == g].reshape(-1), minlength=n)[:n].astype(np.float64)
        area_p = np.bincount(p.reshape(-1), minlength=n)[:n].astype(np.float64)
        area_g = np.bincount(g.reshape(-1), minlength=n)[:n].astype(np.float64)
        union = area_p + area_g - inter
        self.iou_sum += inter / (AVSS_EPS + union)
        self.count[union > 0] += 1
        with np.errstate(invalid="ignore", divide="ignore"):
            prec = inter / area_p
            rec = inter / area_g
            f = (1 + BETA2) * prec * rec / (BETA2 * prec + rec)
        f[np.isnan(f)] = 0.0
        self.f_sum += f

    def result(self) -> dict[str, float | list[float]]:
        """``miou`` and ``f``: the official headline, the mean over all classes of the per-class
        means (a class never seen counts 0); ``miou_present`` / ``f_present``: the mean over classes
        that occurred; ``miou_no_bg`` / ``f_no_bg``: the headline without background (index 0)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            miou_pc = self.iou_sum / self.count
            f_pc = self.f_sum / self.count
        miou_pc[np.isnan(miou_pc)] = 0.0
        f_pc[np.isnan(f_pc)] = 0.0
        present = self.count > 0
        n_present = int(present.sum())
        return {
            "miou": float(miou_pc.mean()),
            "f": float(f_pc.mean()),
            "miou_present": float(miou_pc[present].sum() / n_present) if n_present else 0.0,
            "f_present": float(f_pc[present].sum() / n_present) if n_present else 0.0,
            "miou_no_bg": float(miou_pc[1:].mean()),
            "f_no_bg": float(f_pc[1:].mean()),
            "classes_present": n_present,
            "per_class_miou": [float(v) for v in miou_pc],
            "per_class_f": [float(v) for v in f_pc],
        }


def binary_from_labels(labels: np.ndarray) -> np.ndarray:
    """(…, H, W) class indices -> bool foreground (any class but background 0)."""
    return np.asarray(labels) > 0
