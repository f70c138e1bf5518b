"""Writing an answer to disk: answer.json, masks/frame_0001.png (0/255 at the frame's resolution) and
overlays/frame_0001.png (the frame with the mask tinted and the boxes labelled)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from tools.types import Answer, Clip, Frame, FrameResult

MASK_COLOUR = np.array([255, 40, 40], np.float32)


def answer_json(answer: Answer, files: dict[str, list[str]] | None = None) -> dict[str, Any]:
    files = files or {}
    return answer.to_dict(mask_files=files.get("masks"), overlay_files=files.get("overlays"))


def overlay(frame: Frame, mask: np.ndarray, result: FrameResult, alpha: float = 0.5) -> np.ndarray:
    """(H, W, 3) uint8: the frame with the mask tinted red, boxes drawn and the labels written."""
    from PIL import Image, ImageDraw

    img = frame.image.astype(np.float32)
    img[mask] = img[mask] * (1 - alpha) + MASK_COLOUR * alpha
    pil = Image.fromarray(img.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    label = ", ".join(result.labels) or "no visible source"
    for box in result.boxes:
        draw.rectangle(box, outline=(255, 220, 0), width=max(1, frame.width // 200))
    draw.rectangle([0, 0, min(frame.width, 8 + 7 * len(label)), 14], fill=(0, 0, 0))
    draw.text((4, 1), label, fill=(255, 255, 255))
    return np.asarray(pil)


def write_outputs(answer: Answer, clip: Clip, out: Path) -> dict[str, list[str]]:
    """Write masks, overlays and answer.json under ``out``; returns the relative file names."""
    from PIL import Image

    out = Path(out)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    files: dict[str, list[str]] = {"masks": [], "overlays": []}
    for frame, mask, result in zip(clip.frames, answer.masks, answer.frames, strict=True):
        name = f"frame_{frame.index + 1:04d}.png"
        Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(out / "masks" / name)
        Image.fromarray(overlay(frame, mask, result)).save(out / "overlays" / name)
        files["masks"].append(f"masks/{name}")
        files["overlays"].append(f"overlays/{name}")
    tmp = out / "answer.json.tmp"
    tmp.write_text(json.dumps(answer_json(answer, files), indent=2))
    os.replace(tmp, out / "answer.json")
    return files
