"""YOLOX-nano detector (lite): COCO-80 boxes from an ONNX model.

Input: the image letterboxed into 416x416 (resized keeping aspect into the top-left corner, padding
114), BGR 0-255, NCHW float32. Output (1, 3549, 85) per anchor point of the 52x52, 26x26 and 13x13
grids (strides 8, 16, 32): cx, cy offsets, log w/h, objectness, 80 class scores (already sigmoid).
"""

from __future__ import annotations

import numpy as np

from avs_agent.tools.lite.litert import onnx_session
from avs_agent.tools.locate import Location
from avs_agent.tools.ops import nms
from avs_agent.tools.vocab import COCO80

INPUT_SIZE = 416
STRIDES = (8, 16, 32)


def _grids(size: int = INPUT_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """(3549, 2) grid xy and (3549, 1) strides, in the model's output order."""
    grids, strides = [], []
    for s in STRIDES:
        n = size // s
        yv, xv = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        grids.append(np.stack([xv, yv], -1).reshape(-1, 2))
        strides.append(np.full((n * n, 1), s))
    return np.concatenate(grids).astype(np.float32), np.concatenate(strides).astype(np.float32)


_GRID, _STRIDE = _grids()


class YoloxDetector:
    name = "yolox-nano"
    classes = COCO80

    def __init__(self, model: Location, score_threshold: float = 0.1, nms_iou: float = 0.45):
        self.model = model
        self.score_threshold = score_threshold
        self.nms_iou = nms_iou

    def detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(H, W, 3) uint8 RGB -> boxes (n, 4) xyxy pixels, scores (n,), class ids (n,), best first."""
        blob, ratio = self.preprocess(image)
        return self.postprocess(self._forward(blob), ratio, image.shape[:2])

    @staticmethod
    def preprocess(image: np.ndarray) -> tuple[np.ndarray, float]:
        from PIL import Image

        h, w = image.shape[:2]
        ratio = min(INPUT_SIZE / h, INPUT_SIZE / w)
        nh, nw = max(1, int(round(h * ratio))), max(1, int(round(w * ratio)))
        resized = np.asarray(Image.fromarray(image).resize((nw, nh), Image.Resampling.BILINEAR))
        canvas = np.full((INPUT_SIZE, INPUT_SIZE, 3), 114, np.uint8)
        canvas[:nh, :nw] = resized
        blob = canvas[..., ::-1].transpose(2, 0, 1)[None].astype(np.float32)  # RGB->BGR, HWC->NCHW
        return np.ascontiguousarray(blob), ratio

    def _forward(self, blob: np.ndarray) -> np.ndarray:
        session = onnx_session(self.model, "YOLOX-nano weights")
        return session.run(None, {session.get_inputs()[0].name: blob})[0][0]

    def postprocess(self, raw: np.ndarray, ratio: float, hw: tuple[int, int]):
        xy = (raw[:, :2] + _GRID) * _STRIDE
        wh = np.exp(np.clip(raw[:, 2:4], -10, 10)) * _STRIDE
        cls = raw[:, 5:].argmax(axis=1)
        scores = raw[:, 4] * raw[np.arange(len(raw)), 5 + cls]
        keep = scores >= self.score_threshold
        xy, wh, cls, scores = xy[keep], wh[keep], cls[keep], scores[keep]
        boxes = np.concatenate([xy - wh / 2, xy + wh / 2], axis=1) / ratio
        h, w = hw
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
        kept = nms(boxes, scores, self.nms_iou, classes=cls)
        return boxes[kept].astype(np.float32), scores[kept].astype(np.float32), cls[kept].astype(np.int64)
