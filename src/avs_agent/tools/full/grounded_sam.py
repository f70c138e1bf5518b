"""Grounded-SAM through Hugging Face transformers: GroundingDINO boxes from text, SAM or SAM2 masks
from the boxes (the default full-profile ``Grounder``).

Per frame, the expensive parts are computed once and reused across phrases and retries:
- the SAM/SAM2 image embedding (LRU cache keyed by the frame's pixels),
- GroundingDINO's image backbone features (same key), so a new phrase only runs the text encoder
  and the fusion/decoder layers,
- the raw detection of a phrase list (logits and boxes), so a retry with a lower threshold costs no
  model call at all.

Boxes: a query's score for a phrase is the highest token probability over the phrase's tokens
(GroundingDINO's rule); a box is kept for a phrase when that score reaches both the box and the text
thresholds (defaults 0.25 / 0.25), NMS per phrase, then the top-k best. Each kept box becomes one item
of ``Segments`` (``labels`` = the phrase); ``union_by_label`` turns several boxes of one phrase into
one item (mask union). An empty detection is ``Segments.empty``.

Frames squashed from a wider video (``Frame.aspect``) are stretched back to their display aspect
before both models and the results mapped back to the frame.

transformers' ``Sam2ImageProcessor`` needs torchvision, which the CPU install cannot have, so SAM2
input is prepared here (resize to the model's square size, ImageNet normalisation, as the processor
does) from the checkpoint's ``preprocessor_config.json`` when it has one.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from avs_agent.tools.full import hf
from avs_agent.tools.ops import nms, resize_masks, stretch_to_aspect
from avs_agent.tools.types import Frame, Segments

DEFAULT_BOX_THRESHOLD = 0.25
DEFAULT_TEXT_THRESHOLD = 0.25


def frame_key(image: np.ndarray) -> str:
    """A content key for an (H, W, 3) uint8 image: equal pixels give equal keys."""
    h = hashlib.blake2b(digest_size=16)
    h.update(str(image.shape).encode())
    h.update(np.ascontiguousarray(image).tobytes())
    return h.hexdigest()


def union_by_label(seg: Segments) -> Segments:
    """One item per label: the union of its masks, the hull of its boxes, its best score."""
    if not len(seg):
        return seg
    h, w = seg.shape
    items = []
    for label in dict.fromkeys(seg.labels):
        part = seg[np.asarray([lab == label for lab in seg.labels])]
        xyxy = np.asarray(
            [[part.xyxy[:, 0].min(), part.xyxy[:, 1].min(), part.xyxy[:, 2].max(), part.xyxy[:, 3].max()]]
        )
        data = {k: [v[0]] for k, v in part.data.items()}
        data["n_boxes"] = [len(part)]
        items.append(Segments(xyxy, part.union()[None], [part.confidence.max()], [label], data))
    keys = set.intersection(*(set(s.data) for s in items))
    for s in items:
        s.data = {k: v for k, v in s.data.items() if k in keys}
    return Segments.concat(items, h, w)


def phrase_spans(text: str, phrases: list[str]) -> list[tuple[int, int]]:
    """Character spans of each phrase inside ``text`` built as 'p1. p2.' (searched left to right)."""
    spans, start = [], 0
    for p in phrases:
        i = text.index(p, start)
        spans.append((i, i + len(p)))
        start = i + len(p)
    return spans


def _asked(phrases: list[str]) -> tuple[list[str], list[str]]:
    """The phrases as asked (deduplicated, empty ones dropped) and as the detector reads them."""
    asked = [p for p in dict.fromkeys(phrases) if clean_phrase(p)]
    return asked, [clean_phrase(p) for p in asked]


def clean_phrase(p: str) -> str:
    return " ".join(p.replace(".", " ").lower().split())


@dataclass
class _Detection:
    """Raw detector output for one frame and one phrase list (before thresholds).

    boxes: (Q, 4) float32 xyxy in the stretched image's pixels.
    scores: (Q, P) float32, per query and phrase, max token probability over the phrase's tokens.
    """

    boxes: np.ndarray
    scores: np.ndarray


class _FeatureCache:
    """Wraps GroundingDINO's image backbone so its output for a frame is computed once.

    ``key`` is set around a forward call; outside (key None) the backbone runs as usual.
    """

    def __init__(self, backbone: Any, size: int = 4) -> None:
        self._orig = backbone.forward
        self._store: OrderedDict[str, Any] = OrderedDict()
        self.size = size
        self.key: str | None = None
        self.hits = 0
        backbone.forward = self

    def __call__(self, pixel_values: Any, pixel_mask: Any) -> Any:
        if self.key is None:
            return self._orig(pixel_values, pixel_mask)
        if self.key in self._store:
            self._store.move_to_end(self.key)
            self.hits += 1
            return self._store[self.key]
        out = self._orig(pixel_values, pixel_mask)
        self._store[self.key] = out
        while len(self._store) > self.size:
            self._store.popitem(last=False)
        return out

    def clear(self) -> None:
        self._store.clear()


class _LRU(OrderedDict):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def get_or(self, key: Any, make: Callable[[], Any]) -> tuple[Any, bool]:
        if key in self:
            self.move_to_end(key)
            return self[key], True
        value = make()
        self[key] = value
        while len(self) > self.size:
            self.popitem(last=False)
        return value, False


class GroundedSam:
    """GroundingDINO + SAM/SAM2 through transformers, behind the ``Grounder`` protocol.

    Args:
        detector: where GroundingDINO is (``GroundingDinoForObjectDetection`` + ``AutoProcessor``).
        segmenter: where SAM (``SamModel`` + ``SamProcessor``) or SAM2 (``Sam2Model``) is; the kind is
            read from the checkpoint's config.
        box_threshold, text_threshold: GroundingDINO thresholds.
        top_k: at most this many boxes per phrase.
        nms_iou: IoU above which boxes of one phrase are suppressed.
        options: ``device`` ('cpu', 'cuda', ...), ``dtype``, ``cache_frames`` (frames whose
            embeddings are kept, default 8), ``max_text_tokens`` (default: the detector's limit),
            ``batch_forwards`` (batch a tool server's calls in ``prefetch``; default off: measured no
            faster on CPU, <= 1.2x on a GPU for 4.8x the memory).
        phrase_source: for ``detect_all``: the phrases to look for in a frame (e.g. its caption's noun
            phrases); default ``vocabulary``.
        vocabulary: fallback phrases for ``detect_all``.
    """

    name = "grounded_sam"

    def __init__(
        self,
        detector: hf.Location,
        segmenter: hf.Location,
        box_threshold: float = DEFAULT_BOX_THRESHOLD,
        text_threshold: float = DEFAULT_TEXT_THRESHOLD,
        top_k: int = 5,
        nms_iou: float = 0.5,
        options: dict[str, Any] | None = None,
        phrase_source: Callable[[Frame], list[str]] | None = None,
        vocabulary: list[str] | None = None,
    ) -> None:
        self.detector_loc = detector
        self.segmenter_loc = segmenter
        self.box_threshold = box_threshold
        self.text_threshold = text_threshold
        self.top_k = top_k
        self.nms_iou = nms_iou
        self.options = dict(options or {})
        self.phrase_source = phrase_source
        self.vocabulary = list(vocabulary or [])
        size = int(self.options.get("cache_frames", 8))
        self._embeddings = _LRU(size)
        self._detections = _LRU(4 * size)
        self.stats = {"embedding_hits": 0, "embedding_misses": 0, "detection_hits": 0, "detection_misses": 0}

    # --- loading (lazy, cached per process) ------------------------------------------------------
    @property
    def device(self) -> str:
        return hf.pick_device(self.options)

    def _detector(self) -> tuple[Any, Any, _FeatureCache]:
        def load() -> tuple[Any, Any, _FeatureCache]:
            from transformers import AutoProcessor, GroundingDinoForObjectDetection

            processor = hf.load_pretrained(AutoProcessor, self.detector_loc, "GroundingDINO processor")
            model = hf.load_pretrained(GroundingDinoForObjectDetection, self.detector_loc, "GroundingDINO")
            model = model.to(self.device, dtype=hf.pick_dtype(self.options, self.device)).eval()
            return (
                model,
                processor,
                _FeatureCache(model.model.backbone, int(self.options.get("cache_frames", 8))),
            )

        return hf.cached(("grounding_dino", self.detector_loc.where, self.device), load)

    def _segmenter(self) -> tuple[str, Any, Any]:
        """(kind 'sam' | 'sam2', model, processor or preprocessing dict)."""

        def load() -> tuple[str, Any, Any]:
            from transformers import AutoConfig

            config = hf.load_pretrained(AutoConfig, self.segmenter_loc, "segmenter config")
            dtype = hf.pick_dtype(self.options, self.device)
            if config.model_type.startswith("sam2"):
                from transformers import Sam2Model

                model = hf.load_pretrained(Sam2Model, self.segmenter_loc, "SAM2")
                prep = _sam2_preprocessing(self.segmenter_loc)
                return "sam2", model.to(self.device, dtype=dtype).eval(), prep
            from transformers import SamModel, SamProcessor

            processor = hf.load_pretrained(SamProcessor, self.segmenter_loc, "SAM processor")
            model = hf.load_pretrained(SamModel, self.segmenter_loc, "SAM")
            return "sam", model.to(self.device, dtype=dtype).eval(), processor

        return hf.cached(("sam", self.segmenter_loc.where, self.device), load)

    def load(self) -> None:
        """Load both models now (otherwise they load on first use)."""
        self._detector()
        self._segmenter()

    def warm_up(self) -> None:
        self.load()
        self.detect_all(Frame.blank(240, 320))  # (4:3: a square one is too small for a tiny checkpoint)

    # --- protocol ---------------------------------------------------------------------------------
    def ground(self, frame: Frame, phrases: list[str], box_threshold: float | None = None) -> Segments:
        """Boxes and masks for each phrase in the frame; labels and ``data['phrase']`` hold the phrase as
        asked, ``data['class']`` the same phrase (open vocabulary). Empty when nothing passes."""
        thr = self.box_threshold if box_threshold is None else float(box_threshold)
        asked, cleaned = _asked(phrases)
        if not asked:
            return Segments.empty(frame.height, frame.width)
        image, sx = stretch_to_aspect(frame)
        key = frame_key(image)
        det = self._detect(image, key, cleaned)
        boxes, scores, labels = self._select(det, asked, thr)
        if not len(boxes):
            return Segments.empty(frame.height, frame.width)
        masks = self._segment(image, key, boxes)
        masks = resize_masks(masks, frame.height, frame.width)
        xyxy = boxes / np.asarray([sx, 1.0, sx, 1.0], np.float32)
        xyxy = np.clip(xyxy, 0, [frame.width, frame.height, frame.width, frame.height])
        return Segments(
            xyxy=xyxy,
            mask=masks,
            confidence=scores,
            labels=labels,
            data={"class": list(labels), "phrase": list(labels), "mask_source": [self._kind()] * len(labels)},
        )

    def detect_all(self, frame: Frame) -> Segments:
        """The phrases of ``phrase_source`` (the frame caption's noun phrases) or the vocabulary, grounded."""
        phrases = self.phrase_source(frame) if self.phrase_source is not None else []
        if not phrases:
            phrases = self.vocabulary
        return self.ground(frame, phrases)

    def proposals(self, frame: Frame) -> list[str]:
        """None: over an open vocabulary the candidates come from the audio and the captions."""
        return []

    def words(self, phrases: list[str]) -> list[str]:
        """The phrases as they are (GroundingDINO takes any phrase)."""
        return list(dict.fromkeys(phrases))

    def prefetch(self, method: str, calls: list[tuple]) -> None:
        """Run the heavy forwards of several ``ground`` calls as batches (a tool server's batch), so the
        calls that follow find them cached: GroundingDINO once over every (frame, phrases) pair of one
        image size, then the segmenter's image encoder once over every frame with a box to segment.
        Phrase lists too long for one detector pass, and other methods, are left to the calls.

        Off by default (``options['batch_forwards']: true`` turns it on): on CPU a batch of 4 fresh
        frames took 1.4x as long as the four calls one by one (benchmarks/results/full_cpu.json); on an
        H200 a batch of 8 ran 1.09-1.2x faster for 4.8x the GPU memory, 14.2 GB against 3.0 GB
        (benchmarks/results/full_gpu.json): the time goes to per-frame work, not to idle GPU cores."""
        if method != "ground" or len(calls) < 2:
            return
        if not self.options.get("batch_forwards", False):
            return
        todo = []
        for frame, phrases, *rest in calls:
            thr = self.box_threshold if not rest or rest[0] is None else float(rest[0])
            asked, cleaned = _asked(phrases)
            if asked:
                image, _ = stretch_to_aspect(frame)
                todo.append((image, frame_key(image), asked, cleaned, thr))
        self._detect_many([(image, key, cleaned) for image, key, _, cleaned, _ in todo])
        need: dict[str, np.ndarray] = {}
        for image, key, asked, cleaned, thr in todo:
            det = self._detections.get((key, tuple(cleaned)))
            if det is not None and key not in self._embeddings and len(self._select(det, asked, thr)[0]):
                need[key] = image
        if need:
            for key, value in zip(need, self._embed_batch(list(need.values())), strict=True):
                self.stats["embedding_misses"] += 1
                self._embeddings.get_or(key, lambda value=value: value)

    # --- preprocess / forward / postprocess ---------------------------------------------------------
    def _text_limit(self, model: Any) -> int:
        """Text tokens one detector pass takes (``options['max_text_tokens']`` or the model's limit)."""
        return int(self.options.get("max_text_tokens", getattr(model.config, "max_text_len", 256)))

    def _detect_many(self, requests: list[tuple[np.ndarray, str, list[str]]]) -> None:
        """Detections for (image, key, phrases) requests not cached yet, batched by image size."""
        model, processor, _ = self._detector()
        limit = self._text_limit(model)
        groups: dict[tuple[int, ...], dict[tuple[str, tuple[str, ...]], tuple[np.ndarray, list[str]]]] = {}
        for image, key, phrases in requests:
            cache_key = (key, tuple(phrases))
            if cache_key in self._detections or len(_chunk_phrases(processor.tokenizer, phrases, limit)) > 1:
                continue
            groups.setdefault(image.shape, {})[cache_key] = (image, phrases)
        for group in groups.values():
            images = [image for image, _ in group.values()]
            lists = [phrases for _, phrases in group.values()]
            for cache_key, det in zip(group, self._detect_batch(images, lists), strict=True):
                self.stats["detection_misses"] += 1
                self._detections.get_or(cache_key, lambda det=det: det)

    def _detect(self, image: np.ndarray, key: str, phrases: list[str]) -> _Detection:
        """Raw detection for a phrase list, cached per (frame, phrases)."""
        cache_key = (key, tuple(phrases))
        if cache_key in self._detections:
            self.stats["detection_hits"] += 1
        else:
            self.stats["detection_misses"] += 1
        value, _ = self._detections.get_or(cache_key, lambda: self._detect_uncached(image, key, phrases))
        return value

    def _detect_uncached(self, image: np.ndarray, key: str, phrases: list[str]) -> _Detection:
        model, processor, feature_cache = self._detector()
        limit = self._text_limit(model)
        boxes_all, scores_all = [], []
        for chunk in _chunk_phrases(processor.tokenizer, phrases, limit):
            feature_cache.key = key  # the backbone's features of this frame serve every chunk
            try:
                (det,) = self._detect_batch([image], [chunk])
            finally:
                feature_cache.key = None
            boxes_all.append(det.boxes)
            scores_all.append(det.scores)
        return _stack_chunks(boxes_all, scores_all, len(phrases))

    def _detect_batch(self, images: list[np.ndarray], phrase_lists: list[list[str]]) -> list[_Detection]:
        """One GroundingDINO forward over images of one size, each with its own text 'p1. p2.' (padded to
        the longest); each list must fit the detector's token limit."""
        import torch

        model, processor, _ = self._detector()
        texts = [". ".join(phrases) + "." for phrases in phrase_lists]
        inputs = processor(
            images=images, text=texts, padding="longest", return_tensors="pt", return_offsets_mapping=True
        )
        offsets = inputs.pop("offset_mapping").tolist()
        with torch.inference_mode():
            moved = {k: v.to(self.device) for k, v in dict(inputs).items()}
            moved["pixel_values"] = moved["pixel_values"].to(model.dtype)
            out = model(**moved)
            probs = out.logits.float().sigmoid().cpu().numpy()
            pred_boxes = out.pred_boxes.float().cpu().numpy()
        dets = []
        for b, (image, text, phrases) in enumerate(zip(images, texts, phrase_lists, strict=True)):
            token_phrase = _token_phrases(offsets[b], phrase_spans(text, phrases))
            boxes, scores = _postprocess_detection(
                probs[b], pred_boxes[b], token_phrase, len(phrases), image.shape[:2]
            )
            dets.append(_Detection(boxes, scores))
        return dets

    def _select(
        self, det: _Detection, phrases: list[str], thr: float
    ) -> tuple[np.ndarray, np.ndarray, list[str]]:
        boxes, scores, labels = [], [], []
        for p, phrase in enumerate(phrases):
            s = det.scores[:, p]
            idx = np.flatnonzero((s >= thr) & (s >= self.text_threshold))
            if not len(idx):
                continue
            keep = idx[nms(det.boxes[idx], s[idx], self.nms_iou)][: self.top_k]
            boxes.append(det.boxes[keep])
            scores.append(s[keep])
            labels += [phrase] * len(keep)
        if not boxes:
            return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), []
        return np.concatenate(boxes), np.concatenate(scores).astype(np.float32), labels

    def _kind(self) -> str:
        return self._segmenter()[0]

    def image_embedding(self, image: np.ndarray, key: str | None = None) -> Any:
        """The segmenter's embedding of an (H, W, 3) image, computed once per image content."""
        key = key or frame_key(image)
        hit = key in self._embeddings
        self.stats["embedding_hits" if hit else "embedding_misses"] += 1
        value, _ = self._embeddings.get_or(key, lambda: self._embed(image))
        return value

    def _embed(self, image: np.ndarray) -> dict[str, Any]:
        return self._embed_batch([image])[0]

    def _embed_batch(self, images: list[np.ndarray]) -> list[dict[str, Any]]:
        """The segmenter's image encoder over several images in one forward; one embedding each."""
        import torch

        kind, model, prep = self._segmenter()
        if kind == "sam":
            inputs = prep.image_processor(images=images, return_tensors="pt")
            pixel_values = inputs["pixel_values"]
            original, reshaped = inputs["original_sizes"], inputs["reshaped_input_sizes"]
        else:
            pixel_values = torch.cat([_sam2_pixels(image, prep) for image in images])
            original = torch.tensor([image.shape[:2] for image in images])
            reshaped = torch.tensor([[prep["height"], prep["width"]]] * len(images))
        with torch.inference_mode():
            emb = model.get_image_embeddings(pixel_values.to(self.device, dtype=model.dtype))
        return [
            {
                # SAM gives one tensor, SAM2 a list of feature levels: keep item b of each
                "embedding": [e[b : b + 1] for e in emb]
                if isinstance(emb, (list, tuple))
                else emb[b : b + 1],
                "original": original[b : b + 1],
                "reshaped": reshaped[b : b + 1],
            }
            for b in range(len(images))
        ]

    def _segment(self, image: np.ndarray, key: str, boxes: np.ndarray) -> np.ndarray:
        """(n, 4) xyxy boxes in the image's pixels -> (n, H, W) bool masks at the image's size."""
        import torch

        kind, model, prep = self._segmenter()
        cached = self.image_embedding(image, key)
        orig = cached["original"][0].tolist()
        resh = cached["reshaped"][0].tolist()
        scale = np.asarray([resh[1] / orig[1], resh[0] / orig[0]] * 2, np.float32)
        input_boxes = torch.from_numpy((boxes * scale)[None].astype(np.float32))
        with torch.inference_mode():
            emb = cached["embedding"]
            out = model(
                image_embeddings=emb,
                input_boxes=input_boxes.to(self.device, dtype=model.dtype),
                multimask_output=False,
            )
            low_res = out.pred_masks.float().cpu()  # (1, n, 1, h, w) logits
        if kind == "sam":
            masks = prep.image_processor.post_process_masks(low_res, cached["original"], cached["reshaped"])[
                0
            ]
            return masks[:, 0].numpy().astype(bool)
        import torch.nn.functional as F

        up = F.interpolate(low_res[0], size=tuple(int(v) for v in orig), mode="bilinear", align_corners=False)
        return (up[:, 0] > 0).numpy()


def _stack_chunks(boxes_all: list[np.ndarray], scores_all: list[np.ndarray], n_phrases: int) -> _Detection:
    """One detection from per-chunk ones: each chunk has its own queries, so queries are stacked and
    the phrase columns are block-diagonal."""
    n_q = sum(len(b) for b in boxes_all)
    scores = np.zeros((n_q, n_phrases), np.float32)
    row = col = 0
    for b, s in zip(boxes_all, scores_all, strict=True):
        scores[row : row + len(b), col : col + s.shape[1]] = s
        row += len(b)
        col += s.shape[1]
    return _Detection(np.concatenate(boxes_all).astype(np.float32), scores)


def _token_phrases(offsets: list[list[int]], spans: list[tuple[int, int]]) -> np.ndarray:
    """Per token (character offsets into the text), the index of the phrase it belongs to (-1: none,
    special and padding tokens included)."""
    token_phrase = np.full(len(offsets), -1, np.int64)
    for t, (a, b) in enumerate(offsets):
        if b <= a:
            continue
        for p, (s, e) in enumerate(spans):
            if a >= s and b <= e:
                token_phrase[t] = p
                break
    return token_phrase


def _postprocess_detection(
    probs: np.ndarray, pred_boxes: np.ndarray, token_phrase: np.ndarray, n_phrases: int, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """probs: (Q, T') token probabilities (T' >= tokens), pred_boxes: (Q, 4) normalised cxcywh ->
    (Q, 4) xyxy pixels, (Q, P) phrase scores."""
    h, w = size
    scores = np.zeros((probs.shape[0], n_phrases), np.float32)
    n_tok = min(len(token_phrase), probs.shape[1])
    for p in range(n_phrases):
        cols = np.flatnonzero(token_phrase[:n_tok] == p)
        if len(cols):
            scores[:, p] = probs[:, cols].max(axis=1)
    cx, cy, bw, bh = pred_boxes.T
    xyxy = np.stack([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h], axis=1)
    return xyxy.astype(np.float32), scores


def _chunk_phrases(tokenizer: Any, phrases: list[str], limit: int) -> list[list[str]]:
    """Split phrases into groups whose 'p1. p2.' text fits the detector's token limit."""
    chunks: list[list[str]] = [[]]
    used = 2  # [CLS] ... [SEP]
    for p in phrases:
        n = len(tokenizer(p + ".", add_special_tokens=False)["input_ids"])
        if chunks[-1] and used + n > limit:
            chunks.append([])
            used = 2
        chunks[-1].append(p)
        used += n
    return [c for c in chunks if c]


def _sam2_preprocessing(loc: hf.Location) -> dict[str, Any]:
    """Size and normalisation for SAM2 input: the checkpoint's preprocessor_config.json, else SAM2's
    defaults (1024x1024, ImageNet mean/std)."""
    cfg: dict[str, Any] = {}
    try:
        cfg = json.loads(loc.file("SAM2 preprocessor config", "preprocessor_config.json").read_text())
    except Exception:  # noqa: BLE001 - the defaults are SAM2's own
        cfg = {}
    size = cfg.get("size") or {}
    return {
        "height": int(size.get("height", size.get("longest_edge", 1024))),
        "width": int(size.get("width", size.get("longest_edge", 1024))),
        "mean": list(cfg.get("image_mean", [0.485, 0.456, 0.406])),
        "std": list(cfg.get("image_std", [0.229, 0.224, 0.225])),
        "rescale": float(cfg.get("rescale_factor", 1 / 255)),
    }


def _sam2_pixels(image: np.ndarray, prep: dict[str, Any]) -> Any:
    """(H, W, 3) uint8 -> (1, 3, size, size) float32 normalised tensor."""
    import torch
    from PIL import Image

    resized = np.asarray(
        Image.fromarray(image).resize((prep["width"], prep["height"]), Image.Resampling.BILINEAR), np.float32
    )
    x = (resized * prep["rescale"] - np.asarray(prep["mean"], np.float32)) / np.asarray(
        prep["std"], np.float32
    )
    return torch.from_numpy(x.transpose(2, 0, 1)[None].copy())
