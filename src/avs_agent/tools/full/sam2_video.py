"""Temporal mask propagation with SAM2's video predictor through transformers (``Sam2VideoModel``),
behind the ``Propagator`` protocol.

Given a clip's frames, a pivot frame and one mask per object on the pivot, every object's mask is
added as a mask prompt on the pivot (object ids 1..n, so id - 1 is the object's index), then tracked
forward from the pivot to the last frame and backward (``reverse=True``) from the pivot to frame 0.
SAM2 takes a mask prompt as the pivot's output as it is (no decoder pass), so the pivot's result is
the input mask after a round trip through the model's resolution.

The frames are treated as consecutive video frames, whatever their ``time_s``. SAM2 resizes every
frame to its square input size, so ``Frame.aspect`` changes nothing and is not used; masks come back
at the frames' stored size.

Preprocessing: transformers' ``Sam2VideoProcessor`` when it loads (it needs torchvision, which the
CPU install cannot have); otherwise the same steps done here (bilinear antialiased resize to the
model's ``image_size``, rescale, ImageNet normalisation or the checkpoint's
``video_preprocessor_config.json`` / ``preprocessor_config.json`` values; mask prompts resized
bilinearly to that size and thresholded at 0.5, as the processor does). Post-processing is done
here in both cases: low-res logits -> model size -> frame size (bilinear), then ``> mask_threshold``.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from avs_agent.tools.errors import ModelNotFoundError
from avs_agent.tools.full import hf
from avs_agent.tools.ops import box_from_mask
from avs_agent.tools.protocols import Propagator
from avs_agent.tools.types import Frame, Segments

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PROCESSOR_MODES = ("auto", "transformers", "internal")


@dataclass
class _Loaded:
    """The model and how its input is prepared.

    processor: transformers' ``Sam2VideoProcessor``, or None when preprocessing is done here
        (``processor_note`` says why).
    size: the model's square input side, pixels.
    mean, std: per-channel normalisation of [0, 1] pixels; rescale: uint8 -> [0, 1] factor.
    """

    model: Any
    processor: Any
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    rescale: float
    processor_note: str = ""


class Sam2VideoPropagator:
    """SAM2's video predictor through transformers.

    Args:
        model: where SAM2 is (``Sam2VideoModel``, e.g. ``facebook/sam2.1-hiera-tiny``; the processor
            files are optional, see the module docstring).
        options:
            ``device`` ('cpu', 'cuda', ...; default cuda when available),
            ``dtype`` ('float32', 'float16', 'bfloat16') / ``half`` (float16 on a GPU), as in ``hf``;
            ``processor``: 'auto' (default: transformers' processor when it loads, else internal),
            'transformers' (require it), 'internal' (never use it);
            ``mask_threshold`` (0.0): logit above which a pixel is in the mask;
            ``max_frames_to_track`` (None: all): at most this many frames tracked in each direction
            from the pivot; frames further away stay empty;
            ``offload_video`` (False): keep the preprocessed frames on the CPU (long clips on a GPU).
    """

    name = "sam2-video"

    def __init__(self, model: hf.Location, options: dict[str, Any] | None = None) -> None:
        self.loc = model
        self.options = dict(options or {})
        mode = str(self.options.get("processor", "auto"))
        if mode not in PROCESSOR_MODES:
            raise ValueError(f"options['processor'] must be one of {PROCESSOR_MODES}, got {mode!r}")
        self.processor_mode = mode

    # --- loading (lazy, cached per process) ------------------------------------------------------
    @property
    def device(self) -> str:
        return hf.pick_device(self.options)

    def _load(self) -> _Loaded:
        device = self.device
        dtype = hf.pick_dtype(self.options, device)

        def load() -> _Loaded:
            from transformers import Sam2VideoModel

            model = hf.load_pretrained(Sam2VideoModel, self.loc, "SAM2 video")
            model = model.to(device, dtype=dtype).eval()
            size = int(model.config.image_size)
            mean, std, rescale = _normalisation(self.loc)
            processor, why = self._load_processor()
            return _Loaded(model, processor, size, mean, std, rescale, why)

        return hf.cached(("sam2_video", self.loc.where, device, str(dtype), self.processor_mode), load)

    def _load_processor(self) -> tuple[Any, str]:
        """(transformers' ``Sam2VideoProcessor`` or None, why it is not used ('' when it is))."""
        if self.processor_mode == "internal":
            return None, "options['processor'] is 'internal'"
        if importlib.util.find_spec("torchvision") is None:
            why = "torchvision is not installed (Sam2VideoProcessor needs it)"
            if self.processor_mode == "transformers":
                raise ImportError(f"options['processor'] is 'transformers' but {why}")
            return None, why
        from transformers import Sam2VideoProcessor

        try:
            return hf.load_pretrained(Sam2VideoProcessor, self.loc, "SAM2 video processor"), ""
        except (ImportError, ModelNotFoundError, OSError, ValueError) as exc:
            # no processor files, or a torchvision that does not import: the internal preprocessing
            # does the same steps
            if self.processor_mode == "transformers":
                raise
            return None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"

    def load(self) -> None:
        """Load the model now (otherwise it loads on first use)."""
        self._load()

    def warm_up(self) -> None:
        self._load()

    @property
    def uses_transformers_processor(self) -> bool:
        """Whether preprocessing goes through transformers' ``Sam2VideoProcessor`` (loads the model)."""
        return self._load().processor is not None

    @property
    def processor_note(self) -> str:
        """Why transformers' processor is not used ('' when it is; loads the model)."""
        return self._load().processor_note

    # --- protocol ---------------------------------------------------------------------------------
    def propagate(self, frames: list[Frame], pivot: int, masks: np.ndarray) -> np.ndarray:
        """masks: (n_obj, H, W) bool on ``frames[pivot]`` -> (T, n_obj, H, W) bool on every frame,
        forward and backward from the pivot; index = object. An object whose pivot mask is empty gets
        no prompt and stays empty everywhere; with no non-empty mask the model is not loaded."""
        masks = np.asarray(masks).astype(bool, copy=False)
        if not frames:
            return np.zeros((0, *masks.shape), bool)
        h, w = frames[0].height, frames[0].width
        if masks.ndim == 1 and not len(masks):
            masks = masks.reshape(0, h, w)
        out = np.zeros((len(frames), len(masks), h, w), bool)
        video, prompted = self._preprocess(frames, pivot, masks)
        if not prompted:
            return out
        size, threshold = self._load().size, self.mask_threshold

        def emit(frame_idx: int, obj_ids: list[int], logits: Any) -> None:
            out[frame_idx, [i - 1 for i in obj_ids]] = _postprocess(logits, size, h, w, threshold)

        self._forward(video, pivot, masks[prompted], prompted, emit)
        return out

    @property
    def mask_threshold(self) -> float:
        return float(self.options.get("mask_threshold", 0.0))

    # --- preprocess -> forward -> postprocess -----------------------------------------------------
    def _preprocess(self, frames: list[Frame], pivot: int, masks: np.ndarray) -> tuple[np.ndarray, list[int]]:
        """-> (video (T, H, W, 3) uint8, indices of the objects with a non-empty pivot mask); the video
        is empty (0, H, W, 3) when no object is prompted."""
        h, w = frames[0].height, frames[0].width
        if masks.ndim != 3 or masks.shape[1:] != (h, w):
            raise ValueError(f"masks must be (n_obj, {h}, {w}) on the pivot frame, got {masks.shape}")
        if not 0 <= pivot < len(frames):
            raise ValueError(f"pivot {pivot} outside the clip's {len(frames)} frames")
        prompted = [i for i, m in enumerate(masks) if m.any()]
        if not prompted:
            return np.zeros((0, h, w, 3), np.uint8), []
        sizes = {(f.height, f.width) for f in frames}
        if len(sizes) > 1:
            raise ValueError(f"all frames of a clip must have one size, got {sorted(sizes)}")
        return np.stack([f.image for f in frames]), prompted

    def _forward(
        self,
        video: np.ndarray,
        pivot: int,
        masks: np.ndarray,
        objects: list[int],
        emit: Callable[[int, list[int], Any], None],
    ) -> None:
        """video: (T, H, W, 3) uint8; masks: (n, H, W) bool pivot prompts of the object indices
        ``objects`` (object id = index + 1). Calls ``emit(frame index, object ids, (n, 1, h, w) mask
        logits at the model's low resolution)`` for every tracked frame as it is tracked: the pivot
        first, then forward to the end, then backward from the pivot (again) to frame 0."""
        import torch

        loaded = self._load()
        model, processor = loaded.model, loaded.processor
        device = self.device
        dtype = next(model.parameters()).dtype
        storage = "cpu" if self.options.get("offload_video") else device
        obj_ids = [i + 1 for i in objects]
        limit = self.options.get("max_frames_to_track")
        limit = None if limit is None else int(limit)
        with torch.inference_mode():
            if processor is not None:
                session = processor.init_video_session(
                    video=video, inference_device=device, video_storage_device=storage, dtype=dtype
                )
                processor.add_inputs_to_inference_session(
                    inference_session=session, frame_idx=pivot, obj_ids=obj_ids, input_masks=list(masks)
                )
            else:
                from transformers import Sam2VideoInferenceSession

                session = Sam2VideoInferenceSession(
                    video=_pixels(video, loaded, device),
                    video_height=video.shape[1],
                    video_width=video.shape[2],
                    inference_device=device,
                    inference_state_device=device,
                    video_storage_device=storage,
                    dtype=dtype,
                )
                for obj_id, mask in zip(obj_ids, masks, strict=True):
                    session.add_mask_inputs(
                        session.obj_id_to_idx(obj_id), pivot, _mask_prompt(mask, loaded.size)
                    )
                session.obj_with_new_inputs = list(obj_ids)
            for reverse in (False, True):
                if reverse and pivot == 0:
                    break
                for step in model.propagate_in_video_iterator(
                    inference_session=session,
                    start_frame_idx=pivot,
                    max_frame_num_to_track=limit,
                    reverse=reverse,
                ):
                    emit(int(step.frame_idx), list(step.object_ids), step.pred_masks)


class Sam2Linker:
    """The full profile's ``Linker`` (tools/protocols.py): a source is followed by carrying its mask
    with SAM2's video predictor from the frame where it is surest, not by linking detections, so each
    frame's grounded instances stay unlinked (``tracks`` is None)."""

    def __init__(self, propagator: Propagator) -> None:
        self.propagator = propagator
        self.name = propagator.name

    def tracks(self, per_frame: list[Segments | None]) -> None:
        return None

    def follow(
        self, frames: list[Frame], found: list[Segments | None], pivot: int, start: Segments | None
    ) -> list[Segments | None] | None:
        """The union of ``start``'s masks carried to every frame: one instance per frame (its box the
        mask's, its score the best of ``start``'s), None where the carried mask is empty."""
        if start is None or not len(start):
            return None
        carried = self.propagator.propagate(frames, pivot, start.union()[None])[:, 0]
        score, label = float(start.confidence.max()), start.labels[0]
        return [
            Segments(xyxy=[box_from_mask(m)], mask=m[None], confidence=[score], labels=[label])
            if m.any()
            else None
            for m in carried
        ]


def _normalisation(loc: hf.Location) -> tuple[tuple[float, ...], tuple[float, ...], float]:
    """(mean, std, rescale) from the checkpoint's video or image preprocessor config, else SAM2's
    defaults (ImageNet mean/std, 1/255)."""
    for filename in ("video_preprocessor_config.json", "preprocessor_config.json"):
        try:
            cfg = json.loads(loc.file("SAM2 video preprocessor config", filename).read_text())
        except Exception:  # noqa: BLE001 - a missing or odd file means SAM2's own defaults
            continue
        if isinstance(cfg, dict):
            mean = tuple(float(v) for v in cfg.get("image_mean", IMAGENET_MEAN))
            std = tuple(float(v) for v in cfg.get("image_std", IMAGENET_STD))
            return mean, std, float(cfg.get("rescale_factor", 1 / 255))
    return IMAGENET_MEAN, IMAGENET_STD, 1 / 255


def _postprocess(logits: Any, size: int, height: int, width: int, threshold: float) -> np.ndarray:
    """(n, 1, h, w) mask logits -> (n, height, width) bool: up to the model's square ``size``, then to
    the frame's (bilinear, as ``Sam2VideoVideoProcessor.post_process_masks``), then ``> threshold``."""
    import torch.nn.functional as F

    x = F.interpolate(logits.float(), (size, size), mode="bilinear", align_corners=False)
    x = F.interpolate(x, (height, width), mode="bilinear", align_corners=False)
    return (x[:, 0] > threshold).cpu().numpy()


def _pixels(video: np.ndarray, loaded: _Loaded, device: str, chunk: int = 16) -> Any:
    """(T, H, W, 3) uint8 -> (T, 3, size, size) float32 normalised tensor on ``device`` (bilinear
    antialiased resize, as the video processor does), converted ``chunk`` frames at a time."""
    import torch
    import torch.nn.functional as F

    mean = torch.tensor(loaded.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(loaded.std, device=device).view(1, 3, 1, 1)
    parts = []
    for start in range(0, len(video), chunk):
        x = torch.from_numpy(np.ascontiguousarray(video[start : start + chunk])).to(device)
        x = x.permute(0, 3, 1, 2).float()
        x = F.interpolate(x, (loaded.size, loaded.size), mode="bilinear", align_corners=False, antialias=True)
        parts.append((x * loaded.rescale - mean) / std)
    return torch.cat(parts)


def _mask_prompt(mask: np.ndarray, size: int) -> Any:
    """(H, W) bool -> (1, 1, size, size) float {0, 1}: bilinear antialiased resize, >= 0.5 (as
    ``Sam2VideoProcessor.process_new_mask_for_video_frame``)."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(mask)).float()[None, None]
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, (size, size), mode="bilinear", align_corners=False, antialias=True)
        x = (x >= 0.5).float()
    return x
