"""DeepLabV3 + MobileNetV2 semantic segmenter (lite): VOC-21 class scores per pixel from a quantised TFLite model.

Input uint8 (1, 513, 513, 3) RGB (the frame is resized to it). The model's own output is the arg-max class
map (1, 513, 513); its logits, (1, 33, 33, 21) at output stride 16, are read from the interpreter too, so
that several views of a frame (the frame and its mirror image: test-time flip) can be averaged before the
arg-max, and the grounder can see how sure DeepLab is. The views are averaged on the model's output grid
(the mirror image's grid mirrored back: with corners aligned, upsampling and mirroring commute), and the
mean is upsampled once, bilinearly with corners aligned as DeepLab's own resize does, straight to the
frame's size (OpenCV), only for the classes that can win the arg-max somewhere.

When a model file has no readable logits tensor, its arg-max map stands in (one-hot scores).
"""

from __future__ import annotations

import functools
import threading
import warnings

import numpy as np

from avs_agent.tools.locate import Location
from avs_agent.tools.vocab import VOC21

INPUT_SIZE = 513


@functools.cache
def _interpreter(path: str, threads: int):
    """(interpreter, lock, logits tensor detail or None). All tensors are kept readable after ``invoke``
    (the logits are an intermediate tensor of this graph)."""
    from ai_edge_litert.interpreter import Interpreter

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "experimental_preserve_all_tensors is for debugging": needed here
        interp = Interpreter(model_path=path, num_threads=threads, experimental_preserve_all_tensors=True)
    interp.allocate_tensors()
    n = len(VOC21)
    cands = [
        t
        for t in interp.get_tensor_details()
        if len(t["shape"]) == 4 and t["shape"][-1] == n and t["shape"][1] < INPUT_SIZE
    ]
    logits = min(cands, key=lambda t: t["shape"][1]) if cands else None
    return interp, threading.Lock(), logits


class DeepLabSegmenter:
    name = "deeplabv3-mnv2-voc"
    classes = VOC21

    def __init__(self, model: Location, flip: bool = True, threads: int = 2):
        self.model = model
        self.flip = flip
        self.threads = threads

    def grid_scores(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 RGB -> (gh, gw, 21) float32 logits on the model's output grid (33x33): the mean
        over the flip views."""
        out = self._forward(self.preprocess(image))
        if self.flip:
            mirrored = self._forward(self.preprocess(np.ascontiguousarray(image[:, ::-1])))
            out = (out + mirrored[:, ::-1]) * np.float32(0.5)
        return out

    @staticmethod
    def preprocess(image: np.ndarray) -> np.ndarray:
        from PIL import Image

        resized = Image.fromarray(image).resize((INPUT_SIZE, INPUT_SIZE), Image.Resampling.BILINEAR)
        return np.asarray(resized, dtype=np.uint8)[None]

    def _forward(self, blob: np.ndarray) -> np.ndarray:
        """(1, 513, 513, 3) uint8 -> (h, w, 21) float32 logits on the model's output grid."""
        interp, lock, logits = _interpreter(
            str(self.model.file("DeepLabV3-MobileNetV2 weights")), self.threads
        )
        with lock:
            interp.set_tensor(interp.get_input_details()[0]["index"], blob)
            interp.invoke()
            if logits is not None:
                q = interp.get_tensor(logits["index"])[0].astype(np.float32)
                scale, zero = logits["quantization"]
                return (q - zero) * scale if scale else q
            class_map = interp.get_tensor(interp.get_output_details()[0]["index"])[0]
        return np.eye(len(VOC21), dtype=np.float32)[class_map]


def upsample(grid: np.ndarray, h: int, w: int) -> np.ndarray:
    """(gh, gw) float32 -> (h, w) bilinear with aligned corners (TF ``resize_bilinear(align_corners=True)``):
    OpenCV's affine warp, whose sampling positions are exact to 1/32 of a grid cell."""
    import cv2

    gh, gw = grid.shape[:2]
    if (gh, gw) == (h, w):
        return grid.astype(np.float32, copy=True)
    sx = (gw - 1) / (w - 1) if w > 1 else 0.0
    sy = (gh - 1) / (h - 1) if h > 1 else 0.0
    m = np.asarray([[sx, 0.0, 0.0], [0.0, sy, 0.0]], np.float64)
    return cv2.warpAffine(
        np.ascontiguousarray(grid, np.float32),
        m,
        (w, h),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REPLICATE,
    )


def contenders(grid: np.ndarray, margin: float = 1e-3) -> np.ndarray:
    """Indices of the classes that can win the arg-max of the upsampled grid somewhere: a class below
    another one at every grid point (by more than ``margin``, far above rounding) stays below it at
    every interpolated point (a bilinear value is a weighted mean of grid values), so it never wins."""
    flat = grid.reshape(-1, grid.shape[-1])
    below = (flat[:, :, None] < flat[:, None, :] - margin).all(axis=0)  # (C, C): c below d everywhere
    return np.flatnonzero(~below.any(axis=1))


def class_map(grid: np.ndarray, h: int, w: int) -> np.ndarray:
    """(gh, gw, C) logits -> (h, w) uint8 arg-max of their bilinear upsampling (corners aligned); only
    the contending classes are upsampled. Ties go to the lower class index, as ``np.argmax`` does."""
    keep = contenders(grid)
    out = np.full((h, w), keep[0], np.uint8)
    if len(keep) == 1:
        return out
    best = upsample(grid[..., keep[0]], h, w)
    for c in keep[1:]:
        score = upsample(grid[..., c], h, w)
        wins = score > best
        out[wins] = c
        np.maximum(best, score, out=best)
    return out
