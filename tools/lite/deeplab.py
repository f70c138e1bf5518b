"""DeepLabV3 + MobileNetV2 semantic segmenter (lite): VOC-21 class scores per pixel from a quantised TFLite model.

Input uint8 (1, 513, 513, 3) RGB (the frame is resized to it). The model's own output is the arg-max class
map (1, 513, 513); its logits, (1, 33, 33, 21) at output stride 16, are read from the interpreter too, so
that several views of a frame (the frame and its mirror image: test-time flip) can be averaged before the
arg-max, and the grounder can see how sure DeepLab is. Logits are upsampled bilinearly (corners aligned,
as DeepLab's own resize does) straight to the frame's size.

When a model file has no readable logits tensor, its arg-max map stands in (one-hot scores).
"""

from __future__ import annotations

import functools
import threading
import warnings
from pathlib import Path

import numpy as np

from tools.lite.litert import require_file
from tools.vocab import VOC21

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

    def __init__(self, model_path: Path, flip: bool = True, threads: int = 2):
        self.model_path = Path(model_path)
        self.flip = flip
        self.threads = threads

    def segment(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 RGB -> (H, W) uint8 VOC class indices."""
        return self.scores(image).argmax(-1).astype(np.uint8)

    def scores(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 RGB -> (H, W, 21) float32 class scores (logits; the mean over the flip views)."""
        h, w = image.shape[:2]
        out = _upsample(self._forward(self.preprocess(image)), h, w)
        if self.flip:
            out += _upsample(self._forward(self.preprocess(np.ascontiguousarray(image[:, ::-1]))), h, w)[
                :, ::-1
            ]
            out *= 0.5
        return out

    @staticmethod
    def preprocess(image: np.ndarray) -> np.ndarray:
        from PIL import Image

        resized = Image.fromarray(image).resize((INPUT_SIZE, INPUT_SIZE), Image.Resampling.BILINEAR)
        return np.asarray(resized, dtype=np.uint8)[None]

    def _forward(self, blob: np.ndarray) -> np.ndarray:
        """(1, 513, 513, 3) uint8 -> (h, w, 21) float32 logits on the model's output grid."""
        interp, lock, logits = _interpreter(
            str(require_file(self.model_path, "DeepLabV3-MobileNetV2")), self.threads
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

    @staticmethod
    def postprocess(class_map: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
        """A class index map resized to (h, w) with nearest neighbour."""
        from PIL import Image

        h, w = hw
        small = Image.fromarray(class_map.astype(np.uint8))
        return np.asarray(small.resize((w, h), Image.Resampling.NEAREST), dtype=np.uint8)


def _upsample(grid: np.ndarray, h: int, w: int) -> np.ndarray:
    """(gh, gw, C) -> (h, w, C) bilinear with aligned corners (TF ``resize_bilinear(align_corners=True)``)."""
    gh, gw = grid.shape[:2]
    if (gh, gw) == (h, w):
        return grid.astype(np.float32, copy=True)
    ys = np.linspace(0.0, gh - 1.0, h)
    xs = np.linspace(0.0, gw - 1.0, w)
    y0 = np.floor(ys).astype(np.int64)
    x0 = np.floor(xs).astype(np.int64)
    y1 = np.minimum(y0 + 1, gh - 1)
    x1 = np.minimum(x0 + 1, gw - 1)
    wy = (ys - y0).astype(np.float32)[:, None, None]
    wx = (xs - x0).astype(np.float32)[None, :, None]
    top = grid[y0][:, x0] * (1 - wx) + grid[y0][:, x1] * wx
    bottom = grid[y1][:, x0] * (1 - wx) + grid[y1][:, x1] * wx
    return (top * (1 - wy) + bottom * wy).astype(np.float32)
