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
import weakref
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from avs_agent.tools.lite.deeplab import DeepLabSegmenter, class_map
from avs_agent.tools.lite.yolox import YoloxDetector
from avs_agent.tools.locate import Location
from avs_agent.tools.ops import stretch_to_aspect
from avs_agent.tools.protocols import TextMatcher
from avs_agent.tools.types import Frame, Segments
from avs_agent.tools.vocab import COCO80, COCO_TO_VOC, VOC21, VOC_TO_COCO

MIN_REGION = 0.005
"""A DeepLab region smaller than this share of the frame is not evidence on its own."""
MIN_PURITY = 0.5
"""Inside a box or region, the class must hold at least this share of the non-background pixels."""


@dataclass
class _FrameAnalysis:
    boxes: np.ndarray  # (n, 4) xyxy in frame pixels
    scores: np.ndarray  # (n,)
    classes: np.ndarray  # (n,) COCO ids
    semantic: np.ndarray  # (H, W) uint8 VOC ids
    logits: np.ndarray  # (33, 33, 21) DeepLab's logits on its output grid (the mean over the flip views)
    class_pixels: np.ndarray  # (21,) pixels of each VOC class in ``semantic``


class LiteGrounder:
    name = "lite-yolox-deeplab"

    def __init__(
        self,
        detector: Location,
        segmenter: Location,
        matcher: TextMatcher,
        box_threshold: float = 0.3,
        nms_iou: float = 0.45,
        top_k: int = 5,
        cache_size: int = 64,
    ):
        self.detector = YoloxDetector(detector, score_threshold=0.1, nms_iou=nms_iou)
        self.segmenter = DeepLabSegmenter(segmenter)
        self.matcher = matcher
        self.box_threshold = box_threshold
        self.top_k = top_k
        self._cache: OrderedDict[str, _FrameAnalysis] = OrderedDict()
        self._cache_size = cache_size
        self._digests: dict[int, tuple[weakref.ref, str]] = {}
        self.model_calls = 0

    # --- per-frame model outputs (cached) -------------------------------------------------------
    def _digest(self, image: np.ndarray) -> str:
        """The image's content hash, computed once per image array (a frame is looked up many times:
        once per phrase and class)."""
        known = self._digests.get(id(image))
        if known is not None and known[0]() is image:
            return known[1]
        digest = hashlib.blake2b(
            memoryview(np.ascontiguousarray(image)).cast("B"), digest_size=16
        ).hexdigest()
        digests, key = self._digests, id(image)
        self._digests[key] = (weakref.ref(image, lambda _: digests.pop(key, None)), digest)
        return digest

    def analyse(self, frame: Frame) -> _FrameAnalysis:
        key = self._digest(frame.image) + f"{frame.image.shape}{frame.aspect}"
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        image, sx = stretch_to_aspect(frame)
        boxes, scores, classes = self.detector.detect(image)
        logits = self.segmenter.grid_scores(frame.image)
        semantic = class_map(logits, frame.height, frame.width)
        boxes = boxes.copy()
        boxes[:, [0, 2]] /= sx
        self.model_calls += 1
        counts = np.bincount(semantic.ravel(), minlength=len(VOC21))
        result = _FrameAnalysis(boxes, scores, classes, semantic, logits, counts)
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

    def proposals(self, frame: Frame) -> list[str]:
        """The classes found in the frame without a prompt (``detect_all``): over a closed vocabulary
        the grounder proposes what it sees."""
        return list(dict.fromkeys(self.detect_all(frame).labels))

    def words(self, phrases: list[str]) -> list[str]:
        """Each phrase as the COCO class it names (the text matcher's best match), those naming none
        dropped."""
        if not phrases:
            return []
        return list(dict.fromkeys(m[0][0] for m in self.matcher.match(phrases, list(COCO80)) if m))

    def warm_up(self) -> None:
        self.detect_all(Frame.blank())

    def detect_all(self, frame: Frame) -> Segments:
        analysis = self.analyse(frame)
        names = {COCO80[c] for c in analysis.classes[analysis.scores >= self.box_threshold]}
        # a region DeepLab paints is one object under one name: its VOC class's first COCO class
        names |= {coco for voc, coco in VOC_TO_COCO.items() if analysis.class_pixels[VOC21.index(voc)]}
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
            rows, cols = _box_slices(box, h, w)
            if sem_class is not None:
                fg = np.count_nonzero(foreground[rows, cols])
                cls_px = np.count_nonzero(sem_class[rows, cols])
                if fg and cls_px / fg < MIN_PURITY:
                    continue  # DeepLab sees another object in this box: the detection is not trusted
                mask, source = (
                    (_within(sem_class, rows, cols), "deeplab") if cls_px else (_box_mask(box, h, w), "box")
                )
            else:
                fg_in = np.count_nonzero(foreground[rows, cols])
                area = len(range(h)[rows]) * len(range(w)[cols])
                if fg_in > 0.2 * area:
                    mask, source = _within(foreground, rows, cols), "foreground"
                else:
                    mask, source = _box_mask(box, h, w), "box"
            items.append((box, mask, float(a.scores[i]), source))

        if sem_class is not None:
            # only a confident box hides what DeepLab paints: under a weaker one (asked for by a lower
            # box_threshold, to link an object through time) a clear region still counts on its own
            rest = sem_class.copy()
            for _, m, score, _ in items:
                if score >= self.box_threshold:
                    rest &= ~m
            for part, box, pixels in _components(rest, min_pixels=MIN_REGION * h * w):
                rows, cols = _box_slices(box, h, w)
                fg = np.count_nonzero(foreground[rows, cols])
                purity = float(pixels / fg) if fg else 0.0
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


def _components(mask: np.ndarray, min_pixels: float) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """The connected parts (8-neighbourhood, so a thin gap in DeepLab's paint does not split an object)
    of ``mask`` with at least ``min_pixels`` pixels, largest first (equal sizes: the one whose first
    pixel comes first in raster order): each is one object DeepLab paints. Returns (part (H, W) bool,
    its box xyxy float32 as ``box_from_mask`` gives it, its pixel count) for each."""
    import cv2

    u8 = mask.view(np.uint8)
    if not u8.any() or np.count_nonzero(u8) < min_pixels:
        return []
    x0, y0, cw, ch = cv2.boundingRect(u8)  # label only the part of the frame the mask spans
    crop = u8[y0 : y0 + ch, x0 : x0 + cw]
    n, labels, stats, _ = cv2.connectedComponentsWithStats(crop, connectivity=8, ltype=cv2.CV_32S)
    found = []
    for k in range(1, n):
        x, y, bw, bh, area = (int(v) for v in stats[k])
        if area < min_pixels:
            continue
        first = (
            (y0 + y) * mask.shape[1] + x0 + int(np.argmax(labels[y] == k))
        )  # its first pixel, raster order
        box = np.asarray([x0 + x, y0 + y, x0 + x + bw, y0 + y + bh], np.float32)
        found.append((-area, first, k, box))
    found.sort(key=lambda f: f[:2])
    parts = []
    for neg_area, _, k, box in found:
        part = np.zeros(mask.shape, bool)
        part[y0 : y0 + ch, x0 : x0 + cw] = labels == k
        parts.append((part, box, -neg_area))
    return parts


def _box_slices(box: np.ndarray, h: int, w: int) -> tuple[slice, slice]:
    """The rows and columns of the frame a box covers (as ``_box_mask`` paints them)."""
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    return slice(max(0, y0), max(0, min(h, y1))), slice(max(0, x0), max(0, min(w, x1)))


def _within(mask: np.ndarray, rows: slice, cols: slice) -> np.ndarray:
    """``mask`` inside the rows and columns, False elsewhere."""
    out = np.zeros(mask.shape, bool)
    out[rows, cols] = mask[rows, cols]
    return out


def _box_mask(box: np.ndarray, h: int, w: int) -> np.ndarray:
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    m = np.zeros((h, w), bool)
    m[max(0, y0) : max(0, y1), max(0, x0) : max(0, x1)] = True
    return m
