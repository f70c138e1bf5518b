"""Grounded-SAM with the design card's original packages: ``groundingdino-py`` (IDEA-Research's
GroundingDINO) + ``segment-anything`` (Meta's SAM), behind the same ``Grounder`` interface as the
transformers backend (``tools.full.grounded_sam.GroundedSam``, whose thresholds, phrase scoring, top-k,
NMS, caches and aspect handling this class inherits; only loading and the model calls differ).

Checkpoints:
- detector: a folder (or hub repo, default ``ShilongLiu/GroundingDINO``) with the model's config file
  (``GroundingDINO_SwinT_OGC.cfg.py``) and weights (``groundingdino_swint_ogc.pth``); a local folder
  may hold any one ``*.py`` config and one ``*.pth``. GroundingDINO's text side loads
  ``bert-base-uncased`` through transformers, so that must be in the hub cache when offline.
- segmenter: a ``sam_vit_{b,l,h}_*.pth`` file (or a folder with one); the variant comes from the file
  name. Download from https://github.com/facebookresearch/segment-anything#model-checkpoints.

Environment limits (see STACK.md): groundingdino-py needs torchvision and transformers 4.57, so it
cannot be installed beside this project's transformers-5 CPU stack; use a separate environment (or a
tool server) for this backend. segment-anything's package ``__init__`` imports torchvision for its
automatic mask generator and resize helpers; this module does SAM's resize/normalise itself and, when
torchvision is missing, imports only ``segment_anything.build_sam``/``modeling``, so the SAM half
runs in the CPU environment.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np

from avs_agent.tools.full import hf
from avs_agent.tools.full.grounded_sam import (
    GroundedSam,
    _chunk_phrases,
    _Detection,
    _postprocess_detection,
    _stack_chunks,
    _token_phrases,
    phrase_spans,
)

DINO_CONFIG = "GroundingDINO_SwinT_OGC.cfg.py"
DINO_WEIGHTS = "groundingdino_swint_ogc.pth"
IMAGENET_MEAN = np.asarray([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.asarray([0.229, 0.224, 0.225], np.float32)


def import_segment_anything() -> Any:
    """``segment_anything.build_sam`` (its ``sam_model_registry``), without torchvision if need be."""
    try:
        import segment_anything  # noqa: F401

        return importlib.import_module("segment_anything.build_sam")
    except ModuleNotFoundError as exc:
        if exc.name == "segment_anything":
            raise
        if "torchvision" not in str(exc):
            raise
    spec = importlib.util.find_spec("segment_anything")
    if spec is None or not spec.submodule_search_locations:  # pragma: no cover - checked above
        raise ModuleNotFoundError("segment_anything")
    # A bare package object: its submodules import, its __init__ (which needs torchvision) does not run.
    sys.modules.pop("segment_anything", None)
    pkg = types.ModuleType("segment_anything")
    pkg.__path__ = list(spec.submodule_search_locations)
    pkg.__spec__ = spec
    sys.modules["segment_anything"] = pkg
    return importlib.import_module("segment_anything.build_sam")


def sam_variant(path: Path, default: str = "vit_h") -> str:
    name = path.name.lower()
    for kind in ("vit_b", "vit_l", "vit_h"):
        if kind in name:
            return kind
    return default


def resize_longest(image: np.ndarray, longest: int) -> np.ndarray:
    """SAM's ResizeLongestSide: (H, W, 3) uint8 -> (h', w', 3) uint8 with max(h', w') = longest."""
    from PIL import Image

    h, w = image.shape[:2]
    scale = longest / max(h, w)
    nh, nw = int(h * scale + 0.5), int(w * scale + 0.5)
    return np.asarray(Image.fromarray(image).resize((nw, nh), Image.Resampling.BILINEAR))


def dino_pixels(image: np.ndarray, shortest: int = 800, longest: int = 1333) -> np.ndarray:
    """GroundingDINO's eval transform (RandomResize([800], max_size=1333), ToTensor, Normalize) in
    numpy: (H, W, 3) uint8 -> (3, h', w') float32."""
    from PIL import Image

    h, w = image.shape[:2]
    scale = shortest / min(h, w)
    if max(h, w) * scale > longest:
        scale = longest / max(h, w)
    nh, nw = int(round(h * scale)), int(round(w * scale))
    resized = (
        np.asarray(Image.fromarray(image).resize((nw, nh), Image.Resampling.BILINEAR), np.float32) / 255.0
    )
    return ((resized - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1).copy()


class GroundedSamOriginal(GroundedSam):
    """groundingdino-py + segment-anything. Same constructor and behaviour as ``GroundedSam``;
    ``options`` also takes ``dino_config`` / ``dino_weights`` (file names in the detector folder or
    repo) and ``sam_type`` (vit_b | vit_l | vit_h, default from the file name)."""

    name = "grounded_sam_original"

    # --- loading ---------------------------------------------------------------------------------
    def _detector(self) -> tuple[Any, Any, Any]:
        def load() -> tuple[Any, Any, Any]:
            config_path, weights_path = self._dino_files()
            try:
                import torch
                from groundingdino.models import build_model
                from groundingdino.util.slconfig import SLConfig
                from groundingdino.util.utils import clean_state_dict
            except ImportError as exc:
                raise self.detector_loc.not_found(
                    "groundingdino-py",
                    f"cannot import groundingdino ({exc}); it needs torchvision and transformers<5, so run this backend "
                    "in its own environment or use tools.grounder.impl=transformers",
                ) from None
            args = SLConfig.fromfile(str(config_path))
            args.device = self.device
            model = build_model(args)
            state = torch.load(str(weights_path), map_location="cpu")
            model.load_state_dict(clean_state_dict(state.get("model", state)), strict=False)
            return model.to(self.device).eval(), model.tokenizer, None

        return hf.cached(("groundingdino_py", self.detector_loc.where, self.device), load)

    def _dino_files(self) -> tuple[Path, Path]:
        loc = self.detector_loc
        cfg_name = self.options.get("dino_config")
        w_name = self.options.get("dino_weights")
        if loc.path is not None and loc.path.is_dir() and not (cfg_name and w_name):
            cfgs = sorted(loc.path.glob("*.py"))
            weights = sorted(loc.path.glob("*.pth"))
            if cfgs and weights:
                return (loc.path / cfg_name if cfg_name else cfgs[0]), (
                    loc.path / w_name if w_name else weights[0]
                )
        return (
            loc.file("GroundingDINO config", str(cfg_name or DINO_CONFIG)),
            loc.file("GroundingDINO weights", str(w_name or DINO_WEIGHTS)),
        )

    def _segmenter(self) -> tuple[str, Any, Any]:
        def load() -> tuple[str, Any, Any]:
            loc = self.segmenter_loc
            if loc.path is not None and loc.path.is_dir():
                found = sorted(loc.path.glob("*.pth"))
                if not found:
                    raise loc.not_found("segment-anything checkpoint", "no .pth file in the folder")
                path = found[0]
            else:
                path = loc.file(
                    "segment-anything checkpoint", str(self.options.get("sam_file", "sam_vit_b_01ec64.pth"))
                )
            try:
                build_sam = import_segment_anything()
            except ImportError as exc:
                raise loc.not_found(
                    "segment-anything",
                    f"cannot import segment_anything ({exc}); pip install segment-anything",
                ) from None
            kind = str(self.options.get("sam_type") or sam_variant(path))
            if kind not in build_sam.sam_model_registry:
                raise loc.not_found("segment-anything", f"unknown SAM type {kind!r}")
            sam = build_sam.sam_model_registry[kind](checkpoint=str(path))
            return "sam_original", sam.to(self.device).eval(), {"kind": kind}

        return hf.cached(
            ("segment_anything", self.segmenter_loc.where, self.device, str(self.options.get("sam_type"))),
            load,
        )

    # --- detection -------------------------------------------------------------------------------
    def _detect_uncached(self, image: np.ndarray, key: str, phrases: list[str]) -> _Detection:
        import torch

        model, tokenizer, _ = self._detector()
        limit = int(self.options.get("max_text_tokens", getattr(model, "max_text_len", 256)))
        pixels = torch.from_numpy(dino_pixels(image))[None].to(self.device)
        boxes_all, scores_all = [], []
        for chunk in _chunk_phrases(tokenizer, phrases, limit):
            caption = ". ".join(chunk) + "."
            offsets = tokenizer(caption, return_offsets_mapping=True)["offset_mapping"]
            token_phrase = _token_phrases(offsets, phrase_spans(caption, chunk))
            with torch.inference_mode():
                out = model(pixels, captions=[caption])
                probs = out["pred_logits"][0].float().sigmoid().cpu().numpy()
                pred_boxes = out["pred_boxes"][0].float().cpu().numpy()
            b, s = _postprocess_detection(probs, pred_boxes, token_phrase, len(chunk), image.shape[:2])
            boxes_all.append(b)
            scores_all.append(s)
        return _stack_chunks(boxes_all, scores_all, len(phrases))

    # --- segmentation (SamPredictor's steps, without torchvision) ---------------------------------
    def _embed(self, image: np.ndarray) -> dict[str, Any]:
        import torch

        _, sam, _ = self._segmenter()
        longest = int(sam.image_encoder.img_size)
        resized = resize_longest(image, longest)
        x = torch.as_tensor(np.array(resized), device=self.device).permute(2, 0, 1)[None].float()
        with torch.inference_mode():
            features = sam.image_encoder(sam.preprocess(x))
        return {
            "embedding": features,
            "original": torch.tensor([image.shape[:2]]),
            "reshaped": torch.tensor([resized.shape[:2]]),
        }

    def _segment(self, image: np.ndarray, key: str, boxes: np.ndarray) -> np.ndarray:
        import torch

        _, sam, _ = self._segmenter()
        cached = self.image_embedding(image, key)
        oh, ow = (int(v) for v in cached["original"][0])
        rh, rw = (int(v) for v in cached["reshaped"][0])
        scaled = boxes * np.asarray([rw / ow, rh / oh, rw / ow, rh / oh], np.float32)
        with torch.inference_mode():
            box_t = torch.as_tensor(scaled, dtype=torch.float32, device=self.device)
            sparse, dense = sam.prompt_encoder(points=None, boxes=box_t, masks=None)
            low_res, _ = sam.mask_decoder(
                image_embeddings=cached["embedding"],
                image_pe=sam.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=False,
            )
            masks = sam.postprocess_masks(low_res, (rh, rw), (oh, ow)) > sam.mask_threshold
        return masks[:, 0].cpu().numpy()
