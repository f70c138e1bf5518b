"""Does a mask show what it claims? CLIP (``CLIPModel``, e.g. ``openai/clip-vit-base-patch32``) on the
mask's square crop, behind the ``CropChecker`` protocol.

The crop follows OV-AVSS: a square centred on the mask's bounding box, side = the box's longer side
(times ``margin``, default 1.0), taken from the frame (stretched to its display aspect first) and
padded with the image mean where it leaves the frame. With ``options['blank_background']`` the pixels
outside the mask are replaced by that mean colour. Texts become prompts ("a photo of a {x}"); the
result is a softmax over the texts per mask. An empty mask gets a row of zeros.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from avs_agent.tools.full import hf
from avs_agent.tools.types import Frame

DEFAULT_TEMPLATE = "a photo of a {x}"


def square_crop(
    image: np.ndarray, mask: np.ndarray, margin: float = 1.0, blank_background: bool = False
) -> np.ndarray | None:
    """image: (H, W, 3) uint8, mask: (H, W) bool -> (S, S, 3) uint8 square crop centred on the mask's box,
    S = longer box side x margin; None for an empty mask."""
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return None
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    side = max(1, int(round(max(x1 - x0, y1 - y0) * margin)))
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    left, top = int(round(cx - side / 2.0)), int(round(cy - side / 2.0))
    fill = image.reshape(-1, 3).mean(axis=0).astype(np.uint8)
    src = image.copy()
    if blank_background:
        src[~mask] = fill
    out = np.empty((side, side, 3), np.uint8)
    out[:] = fill
    h, w = image.shape[:2]
    sx0, sy0 = max(left, 0), max(top, 0)
    sx1, sy1 = min(left + side, w), min(top + side, h)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - top : sy1 - top, sx0 - left : sx1 - left] = src[sy0:sy1, sx0:sx1]
    return out


class ClipCropChecker:
    """CLIP through transformers.

    Args:
        model: where CLIP is (``CLIPModel`` + ``CLIPProcessor``).
        options: ``device``, ``template`` ("a photo of a {x}"), ``margin`` (1.0),
            ``blank_background`` (False).
    """

    name = "clip"

    def __init__(self, model: hf.Location, options: dict[str, Any] | None = None) -> None:
        self.loc = model
        self.options = dict(options or {})

    @property
    def device(self) -> str:
        return hf.pick_device(self.options)

    def _load(self) -> tuple[Any, Any]:
        return hf.load_model_and_processor(
            "clip", self.loc, "CLIPModel", "CLIPProcessor", "CLIP", self.device
        )

    def warm_up(self) -> None:
        frame = Frame.blank()
        self.check(frame, np.ones((1, frame.height, frame.width), bool), ["dog"])

    def check(self, frame: Frame, masks: np.ndarray, texts: list[str]) -> np.ndarray:
        """masks: (n, H, W) bool -> (n, len(texts)) float32 probabilities over the texts."""
        masks = np.asarray(masks, bool).reshape(-1, frame.height, frame.width)
        out = np.zeros((len(masks), len(texts)), np.float32)
        if not len(masks) or not texts:
            return out
        crops, rows = self._preprocess(frame, masks)
        if crops:
            out[rows] = self._forward(crops, self._prompts(texts))
        return out

    def _prompts(self, texts: list[str]) -> list[str]:
        template = str(self.options.get("template", DEFAULT_TEMPLATE))
        return [t if "photo" in t.lower() else template.format(x=t) for t in texts]

    def _preprocess(self, frame: Frame, masks: np.ndarray) -> tuple[list[np.ndarray], list[int]]:
        from avs_agent.tools.ops import resize_masks, stretch_to_aspect

        image, _ = stretch_to_aspect(frame)
        if image.shape[:2] != masks.shape[1:]:
            masks = resize_masks(masks, image.shape[0], image.shape[1])
        margin = float(self.options.get("margin", 1.0))
        blank = bool(self.options.get("blank_background", False))
        crops, rows = [], []
        for i, m in enumerate(masks):
            crop = square_crop(image, m, margin, blank)
            if crop is not None:
                crops.append(crop)
                rows.append(i)
        return crops, rows

    def _forward(self, crops: list[np.ndarray], prompts: list[str]) -> np.ndarray:
        import torch

        model, processor = self._load()
        inputs = processor(text=prompts, images=crops, return_tensors="pt", padding=True)
        with torch.inference_mode():
            out = model(**{k: v.to(self.device) for k, v in inputs.items()})
            return out.logits_per_image.float().softmax(dim=-1).cpu().numpy()
