"""Lite grounded segmentation: YOLOX-nano boxes + DeepLabV3 VOC masks over a closed vocabulary.

A phrase is mapped onto COCO-80 classes by the text matcher. For a class DeepLab also knows (VOC-21),
the two models check each other: a YOLOX box counts only if DeepLab paints mostly that class inside it
(YOLOX-nano calls many cats dogs; DeepLab rarely does), and a region DeepLab paints clearly without a
confident YOLOX box over it (one at ``box_threshold``) counts too (YOLOX-nano misses dogs DeepLab
finds), with its purity as the score. The mask of a box is DeepLab's class pixels inside it. A class
DeepLab does not know gets the foreground inside its box, or the box itself (``data['mask_source']``
says which).

Both models run once per frame; their outputs are cached, so other phrases and retries on the same
frame cost no model call.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tools.lite.deeplab import DeepLabSegmenter
from tools.lite.yolox import YoloxDetector
from tools.ops import box_from_mask, stretch_to_aspect
from tools.protocols import TextMatcher
from tools.types import Frame, Segments
from tools.vocab import COCO80, COCO_TO_VOC, VOC21, VOC_TO_COCO

MIN_REGION = 0.005
"""A DeepLab region smaller than this share of the frame is not evidence on its own."""
MIN_PURITY = 0.5
"""Inside a box or region, the class must hold at least this share of the non-background pixels."""


@dataclass
class _FrameAnalysis:
    boxes: np.ndarray  # (n, 4) xyxy in frame pixels
    scores: np.ndarray  # (n,)
    classes: np.ndarray  # (n,) COCO ids
    semantic: np.ndarray  # (H, W) VOC ids
    class_scores: np.ndarray  # (H, W, 21) DeepLab logits


class LiteGrounder:
    name = "lite-yolox-deeplab"

    def __init__(
        self,
        detector_path: Path,
        segmenter_path: Path,
        matcher: TextMatcher,
        box_threshold: float = 0.3,
        nms_iou: float = 0.45,
        top_k: int = 5,
        cache_size: int = 64,
    ):
        self.detector = YoloxDetector(detector_path, score_threshold=0.1, nms_iou=nms_iou)
        self.segmenter = DeepLabSegmenter(segmenter_path)
        self.matcher = matcher
        self.box_threshold = box_threshold
        self.top_k = top_k
        self._cache: OrderedDict[str, _FrameAnalysis] = OrderedDict()
        self._cache_size = cache_size
        self.model_calls = 0

    # --- per-frame model outputs (cached) -------------------------------------------------------
    def analyse(self, frame: Frame) -> _FrameAnalysis:
        key = (
            hashlib.blake2b(frame.image.tobytes(), digest_size=16).hexdigest()
            + f"{frame.image.shape}{frame.aspect}"
        )
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        image, sx = stretch_to_aspect(frame)
        boxes, scores, classes = self.detector.detect(image)
        class_scores = self.segmenter.scores(frame.image)
        semantic = class_scores.argmax(-1).astype(np.uint8)
        boxes = boxes.copy()
        boxes[:, [0, 2]] /= sx
        self.model_calls += 1
        result = _FrameAnalysis(boxes, scores, classes, semantic, class_scores)
        self._cache[key] = result
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return result

    # --- protocol -------------------------------------------------------------------------------
    def ground(self, frame: Frame, phrases: list[str], box_threshold: float | None = None) -> Segments:
        thr = self.box_threshold if box_threshold is None else box_threshold
        found = []
        for phrase, matches in zip(phrases, self.matcher.match(phrases, list(COCO80)), strict=True):
            if not matches:
                continue
            cls_name = matches[0][0]
            seg = self._find_class(frame, cls_name, thr)
            if len(seg):
                seg.labels = [phrase] * len(seg)
                found.append(seg)
        return Segments.concat(found, frame.height, frame.width)

    def detect_all(self, frame: Frame) -> Segments:
        analysis = self.analyse(frame)
        names = {COCO80[c] for c in analysis.classes[analysis.scores >= self.box_threshold]}
        # a region DeepLab paints is one object under one name: its VOC class's first COCO class
        names |= {coco for voc, coco in VOC_TO_COCO.items() if (analysis.semantic == VOC21.index(voc)).any()}
        found = [self._find_class(frame, name, self.box_threshold) for name in sorted(names)]
        return Segments.concat(found, frame.height, frame.width)

    # --- internals ------------------------------------------------------------------------------
    def _find_class(self, frame: Frame, cls_name: str, thr: float) -> Segments:
        a = self.analyse(frame)
        h, w = frame.height, frame.width
        cid = COCO80.index(cls_name)
        voc = COCO_TO_VOC.get(cls_name)
        voc_id = VOC21.index(voc) if voc else None
        sem_class = a.semantic == voc_id if voc_id is not None else None
        foreground = a.semantic > 0

        items: list[tuple[np.ndarray, np.ndarray, float, str]] = []
        idx = np.flatnonzero((a.classes == cid) & (a.scores >= thr))[: self.top_k]
        for i in idx:
            box = a.boxes[i]
            inside = _box_mask(box, h, w)
            if sem_class is not None:
                fg = (foreground & inside).sum()
                cls_px = (sem_class & inside).sum()
                if fg and cls_px / fg < MIN_PURITY:
                    continue  # DeepLab sees another object in this box: the detection is not trusted
                mask, source = (sem_class & inside, "deeplab") if cls_px else (inside, "box")
            else:
                fg_in = foreground & inside
                mask, source = (fg_in, "foreground") if fg_in.sum() > 0.2 * inside.sum() else (inside, "box")
            items.append((box, mask, float(a.scores[i]), source))

        if sem_class is not None:
            # only a confident box hides what DeepLab paints: under a weaker one (asked for by a lower
            # box_threshold, to link an object through time) a clear region still counts on its own
            covered = np.zeros((h, w), bool)
            for _, m, score, _ in items:
                if score >= self.box_threshold:
                    covered |= m
            rest = sem_class & ~covered
            for part in _components(rest, min_pixels=MIN_REGION * h * w):
                box = np.asarray(box_from_mask(part), np.float32)
                region = _box_mask(box, h, w)
                fg = (foreground & region).sum()
                purity = float(part.sum() / fg) if fg else 0.0
                if purity >= MIN_PURITY and purity >= thr:
                    items.append((box, part, purity, "deeplab-region"))

        if not items:
            return Segments.empty(h, w)
        items.sort(key=lambda it: -it[2])
        return Segments(
            xyxy=np.stack([it[0] for it in items]),
            mask=np.stack([it[1] for it in items]),
            confidence=np.asarray([it[2] for it in items]),
            labels=[cls_name] * len(items),
            data={"class": [cls_name] * len(items), "mask_source": [it[3] for it in items]},
        )


def _dilate(mask: np.ndarray, r: int = 1, diagonal: bool = False) -> np.ndarray:
    out = mask.copy()
    for _ in range(r):
        m = out.copy()
        m[1:] |= out[:-1]
        m[:-1] |= out[1:]
        m[:, 1:] |= out[:, :-1]
        m[:, :-1] |= out[:, 1:]
        if diagonal:
            m[1:, 1:] |= out[:-1, :-1]
            m[1:, :-1] |= out[:-1, 1:]
            m[:-1, 1:] |= out[1:, :-1]
            m[:-1, :-1] |= out[1:, 1:]
        out = m
    return out


def _reconstruct(seed: np.ndarray, within: np.ndarray, diagonal: bool = False) -> np.ndarray:
    """The parts of ``within`` connected (4-neighbourhood, or 8 with ``diagonal``) to ``seed``:
    geodesic dilation to a fixed point."""
    cur = seed & within
    while True:
        nxt = _dilate(cur, diagonal=diagonal) & within
        if nxt.sum() == cur.sum():
            return nxt
        cur = nxt


def _components(mask: np.ndarray, min_pixels: float) -> list[np.ndarray]:
    """The connected parts (8-neighbourhood, so a thin gap in DeepLab's paint does not split an object)
    of ``mask`` with at least ``min_pixels`` pixels, largest first: each is one object DeepLab paints."""
    left, parts = mask.copy(), []
    while left.sum() >= min_pixels:
        seed = np.zeros_like(left)
        seed.flat[int(np.flatnonzero(left)[0])] = True
        part = _reconstruct(seed, left, diagonal=True)
        left &= ~part
        if part.sum() >= min_pixels:
            parts.append(part)
    return sorted(parts, key=lambda m: -int(m.sum()))


def _box_mask(box: np.ndarray, h: int, w: int) -> np.ndarray:
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    m = np.zeros((h, w), bool)
    m[max(0, y0) : max(0, y1), max(0, x0) : max(0, x1)] = True
    return m
