"""DeepLabV3 + MobileNetV2 semantic segmenter (lite): a VOC-21 class per pixel from a quantised TFLite model.

Input uint8 (1, 513, 513, 3) RGB (the frame is resized to it); output the class index map (1, 513, 513),
resized back to the frame with nearest neighbour.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tools.litert import tflite_interpreter
from tools.vocab import VOC21

INPUT_SIZE = 513


class DeepLabSegmenter:
    name = "deeplabv3-mnv2-voc"
    classes = VOC21

    def __init__(self, model_path: Path):
        self.model_path = Path(model_path)

    def segment(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 RGB -> (H, W) uint8 VOC class indices."""
        return self.postprocess(self._forward(self.preprocess(image)), image.shape[:2])

    @staticmethod
    def preprocess(image: np.ndarray) -> np.ndarray:
        from PIL import Image

        resized = Image.fromarray(image).resize((INPUT_SIZE, INPUT_SIZE), Image.Resampling.BILINEAR)
        return np.asarray(resized, dtype=np.uint8)[None]

    def _forward(self, blob: np.ndarray) -> np.ndarray:
        interp, lock = tflite_interpreter(self.model_path, "DeepLabV3-MobileNetV2")
        with lock:
            interp.set_tensor(interp.get_input_details()[0]["index"], blob)
            interp.invoke()
            return interp.get_tensor(interp.get_output_details()[0]["index"])[0].copy()

    @staticmethod
    def postprocess(class_map: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
        from PIL import Image

        h, w = hw
        small = Image.fromarray(class_map.astype(np.uint8))
        return np.asarray(small.resize((w, h), Image.Resampling.NEAREST), dtype=np.uint8)
