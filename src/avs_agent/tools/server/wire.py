"""The shared tool types over HTTP: one codec per tool method, used by the server and the remote backend.

A message (request or response body) is an ``.npz`` archive (``numpy.savez``, read back with
``allow_pickle=False``): numeric arrays as raw bytes (frames uint8, audio float32, masks bit-packed with
``np.packbits``) plus one ``__meta__`` entry holding UTF-8 JSON for the small fields (phrases, labels,
times). Media always travel as bytes; no message names a file, so a client never makes the server read a
path of its choosing. Content type: ``CONTENT_TYPE``.

``METHODS`` maps ``"tool.method"`` (``"grounder.ground"``...) to a ``Method``: how to encode the call's
arguments, decode them on the server (validating them: a ``WireError`` becomes HTTP 422), and the same for
the result. Decoded arguments are a tuple, called as ``getattr(tool, method)(*args)``.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from avs_agent.tools.protocols import REQUIRED_TOOLS, TOOLS  # noqa: F401  (re-exported: the wire names the tools)
from avs_agent.tools.types import SAMPLE_RATE, AudioSegment, AudioTags, Captions, Frame, Segments

CONTENT_TYPE = "application/x-avs-npz"
WIRE_VERSION = 1
_META = "__meta__"

Arrays = dict[str, np.ndarray]
Message = tuple[dict[str, Any], Arrays]


class WireError(ValueError):
    """A message that does not decode into the expected types (HTTP 422)."""


class TooLarge(WireError):
    """A message whose decoded arrays exceed the size cap (HTTP 413)."""


# ------------------------------------------------------------------------------------------ archive
def pack(meta: dict[str, Any], arrays: Arrays | None = None) -> bytes:
    """meta (JSON-able) + named arrays -> npz bytes (uncompressed: the CPU time matters more than bytes)."""
    buf = io.BytesIO()
    payload = {_META: np.frombuffer(json.dumps({"v": WIRE_VERSION, **meta}).encode(), np.uint8)}
    for key, arr in (arrays or {}).items():
        payload[key] = np.ascontiguousarray(arr)
    np.savez(buf, **payload)
    return buf.getvalue()


def unpack(body: bytes, max_bytes: int | None = None) -> Message:
    """npz bytes -> (meta, arrays). Raises ``TooLarge`` when the arrays would decode to more than
    ``max_bytes`` (a compressed archive cannot smuggle a large payload past the size cap) and
    ``WireError`` on anything malformed; never unpickles."""
    try:
        with zipfile.ZipFile(io.BytesIO(body)) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise WireError(f"body is not an npz archive ({exc})") from None
    total = sum(i.file_size for i in infos)
    if max_bytes is not None and total > max_bytes:
        raise TooLarge(
            f"payload decodes to {total / 2**20:.1f} MB, over the server's cap of {max_bytes / 2**20:.1f} MB"
        )
    try:
        with np.load(io.BytesIO(body), allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except Exception as exc:  # zipfile, format and pickle refusals all mean a malformed body
        raise WireError(f"cannot read npz payload: {type(exc).__name__}: {exc}") from None
    raw = arrays.pop(_META, None)
    if raw is None or raw.dtype != np.uint8 or raw.ndim != 1:
        raise WireError("payload has no __meta__ entry")
    try:
        meta = json.loads(raw.tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WireError(f"__meta__ is not JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise WireError("__meta__ must be a JSON object")
    if meta.get("v") != WIRE_VERSION:
        raise WireError(f"wire version {meta.get('v')!r} not supported (this side speaks {WIRE_VERSION})")
    return meta, arrays


# ------------------------------------------------------------------------------------------ fields
def _field(meta: dict[str, Any], key: str) -> Any:
    if key not in meta:
        raise WireError(f"missing field '{key}'")
    return meta[key]


def _str_list(meta: dict[str, Any], key: str, optional: bool = False) -> list[str] | None:
    value = meta.get(key) if optional else _field(meta, key)
    if value is None and optional:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise WireError(f"field '{key}' must be a list of strings")
    return value


def _number(value: Any, what: str, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise WireError(f"{what} must be a finite number")
    return float(value)


def _array(arrays: Arrays, key: str, dtype: Any, ndim: int) -> np.ndarray:
    if key not in arrays:
        raise WireError(f"missing array '{key}'")
    arr = arrays[key]
    if arr.dtype != np.dtype(dtype) or arr.ndim != ndim:
        raise WireError(f"array '{key}' must be {ndim}-d {np.dtype(dtype)}, got {arr.ndim}-d {arr.dtype}")
    return arr


def put_frames(arrays: Arrays, frames: list[Frame], prefix: str = "frame") -> list[dict[str, Any]]:
    out = []
    for i, f in enumerate(frames):
        arrays[f"{prefix}{i}"] = f.image
        out.append({"index": f.index, "time_s": f.time_s, "aspect": f.aspect})
    return out


def get_frames(meta_list: Any, arrays: Arrays, prefix: str = "frame") -> list[Frame]:
    if not isinstance(meta_list, list):
        raise WireError("frames must be a list")
    frames = []
    for i, m in enumerate(meta_list):
        if not isinstance(m, dict) or isinstance(m.get("index"), bool) or not isinstance(m.get("index"), int):
            raise WireError(f"frame {i}: needs an integer index")
        image = _array(arrays, f"{prefix}{i}", np.uint8, 3)
        if image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
            raise WireError(f"frame {i}: image must be (H, W, 3) uint8, got {image.shape}")
        aspect = _number(m.get("aspect"), f"frame {i} aspect", optional=True)
        if aspect is not None and aspect <= 0:
            raise WireError(f"frame {i}: aspect must be positive")
        frames.append(
            Frame(
                index=m["index"],
                time_s=_number(m.get("time_s"), f"frame {i} time_s"),
                image=image,
                aspect=aspect,
            )
        )
    return frames


def put_audio(arrays: Arrays, audio: list[AudioSegment], prefix: str = "audio") -> list[list[float]]:
    for i, seg in enumerate(audio):
        arrays[f"{prefix}{i}"] = seg.waveform
    return [[seg.start_s, seg.end_s] for seg in audio]


def get_audio(meta_list: Any, arrays: Arrays, prefix: str = "audio") -> list[AudioSegment]:
    if not isinstance(meta_list, list):
        raise WireError("audio must be a list")
    out = []
    for i, span in enumerate(meta_list):
        if not isinstance(span, list) or len(span) != 2:
            raise WireError(f"audio {i}: needs [start_s, end_s]")
        wave = _array(arrays, f"{prefix}{i}", np.float32, 1)
        out.append(AudioSegment(_number(span[0], "start_s"), _number(span[1], "end_s"), wave))
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def put_segments(arrays: Arrays, seg: Segments, prefix: str = "seg") -> dict[str, Any]:
    """Segments -> meta; masks bit-packed (8x smaller), boxes and scores as float32."""
    n, h, w = seg.mask.shape
    arrays[f"{prefix}.xyxy"] = seg.xyxy.astype(np.float32)
    arrays[f"{prefix}.confidence"] = seg.confidence.astype(np.float32)
    arrays[f"{prefix}.mask"] = np.packbits(seg.mask.reshape(-1))
    data_arrays, data_json = [], {}
    for key, value in seg.data.items():
        if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
            arrays[f"{prefix}.data.{key}"] = value
            data_arrays.append(key)
        else:
            data_json[key] = _jsonable(list(value))
    return {"shape": [n, h, w], "labels": list(seg.labels), "data": data_json, "data_arrays": data_arrays}


def get_segments(meta: Any, arrays: Arrays, prefix: str = "seg") -> Segments:
    if not isinstance(meta, dict):
        raise WireError("segments must be an object")
    shape = _field(meta, "shape")
    if not (
        isinstance(shape, list) and len(shape) == 3 and all(isinstance(v, int) and v >= 0 for v in shape)
    ):
        raise WireError("segments shape must be [n, H, W]")
    n, h, w = shape
    packed = _array(arrays, f"{prefix}.mask", np.uint8, 1)
    if len(packed) != (n * h * w + 7) // 8:
        raise WireError("segments mask has the wrong size for its shape")
    mask = np.unpackbits(packed, count=n * h * w).astype(bool).reshape(n, h, w)
    data = dict(meta.get("data") or {})
    for key in meta.get("data_arrays") or []:
        data[key] = arrays[f"{prefix}.data.{key}"]
    return Segments(
        xyxy=_array(arrays, f"{prefix}.xyxy", np.float32, 2),
        mask=mask,
        confidence=_array(arrays, f"{prefix}.confidence", np.float32, 1),
        labels=_str_list(meta, "labels"),
        data=data,
    )


def _matches(value: Any) -> list[list[tuple[str, float]]]:
    if not isinstance(value, list):
        raise WireError("matches must be a list")
    try:
        return [[(str(name), float(score)) for name, score in row] for row in value]
    except (TypeError, ValueError) as exc:
        raise WireError(f"matches malformed: {exc}") from None


def _models(value: Any, model: type) -> list[Any]:
    if not isinstance(value, list):
        raise WireError(f"{model.__name__} list expected")
    try:
        return [model.model_validate(v) for v in value]
    except Exception as exc:
        raise WireError(f"{model.__name__} malformed: {exc}") from None


# ------------------------------------------------------------------------------------------ methods
@dataclass(frozen=True)
class Method:
    """How one tool method crosses the wire.

    encode_args(*args) -> (meta, arrays); decode_args(meta, arrays) -> args tuple (validated);
    encode_result(result) -> (meta, arrays); decode_result(meta, arrays) -> result.
    ``media`` gives (audio seconds, frames) carried by decoded args, for the server's duration cap.
    """

    tool: str
    name: str
    encode_args: Callable[..., Message]
    decode_args: Callable[[dict[str, Any], Arrays], tuple]
    encode_result: Callable[[Any], Message]
    decode_result: Callable[[dict[str, Any], Arrays], Any]
    media: Callable[[tuple], tuple[float, int]]

    @property
    def key(self) -> str:
        return f"{self.tool}.{self.name}"

    @property
    def path(self) -> str:
        return f"/v1/{self.tool}/{self.name}"


def _seconds(audio: list[AudioSegment]) -> float:
    return sum(len(a.waveform) for a in audio) / SAMPLE_RATE


# tagger.tag(segments) -> list[AudioTags]
def _enc_tag(segments: list[AudioSegment]) -> Message:
    arrays: Arrays = {}
    return {"audio": put_audio(arrays, segments)}, arrays


def _dec_tag(meta: dict, arrays: Arrays) -> tuple:
    return (get_audio(_field(meta, "audio"), arrays),)


def _enc_tags(tags: list[AudioTags]) -> Message:
    return {"tags": [t.model_dump() for t in tags]}, {}


def _dec_tags(meta: dict, arrays: Arrays) -> list[AudioTags]:
    return _models(_field(meta, "tags"), AudioTags)


# grounder.ground(frame, phrases, box_threshold) / detect_all(frame) -> Segments
def _enc_ground(frame: Frame, phrases: list[str], box_threshold: float | None = None) -> Message:
    arrays: Arrays = {}
    return {
        "frames": put_frames(arrays, [frame]),
        "phrases": list(phrases),
        "box_threshold": box_threshold,
    }, arrays


def _dec_ground(meta: dict, arrays: Arrays) -> tuple:
    frames = get_frames(_field(meta, "frames"), arrays)
    if len(frames) != 1:
        raise WireError("ground takes exactly one frame")
    return (
        frames[0],
        _str_list(meta, "phrases"),
        _number(meta.get("box_threshold"), "box_threshold", optional=True),
    )


def _enc_detect_all(frame: Frame) -> Message:
    arrays: Arrays = {}
    return {"frames": put_frames(arrays, [frame])}, arrays


def _dec_detect_all(meta: dict, arrays: Arrays) -> tuple:
    frames = get_frames(_field(meta, "frames"), arrays)
    if len(frames) != 1:
        raise WireError("detect_all takes exactly one frame")
    return (frames[0],)


def _enc_segments(seg: Segments) -> Message:
    arrays: Arrays = {}
    return {"segments": put_segments(arrays, seg)}, arrays


def _dec_segments(meta: dict, arrays: Arrays) -> Segments:
    return get_segments(_field(meta, "segments"), arrays)


# scorer.score(audio, texts) -> (len(audio), len(texts)) float32
def _enc_score(audio: list[AudioSegment], texts: list[str]) -> Message:
    arrays: Arrays = {}
    return {"audio": put_audio(arrays, audio), "texts": list(texts)}, arrays


def _dec_score(meta: dict, arrays: Arrays) -> tuple:
    return get_audio(_field(meta, "audio"), arrays), _str_list(meta, "texts")


def _enc_matrix(scores: np.ndarray) -> Message:
    return {}, {"scores": np.asarray(scores, np.float32)}


def _dec_matrix(meta: dict, arrays: Arrays) -> np.ndarray:
    return _array(arrays, "scores", np.float32, 2)


# matcher.sound_sources(labels, vocabulary) / match(phrases, vocabulary) / covers(labels, vocabulary) -> list[list[(str, float)]]
def _enc_match(texts: list[str], vocabulary: list[str]) -> Message:
    return {"texts": list(texts), "vocabulary": list(vocabulary)}, {}


def _dec_match(meta: dict, arrays: Arrays) -> tuple:
    return _str_list(meta, "texts"), _str_list(meta, "vocabulary")


def _enc_matches(rows: list[list[tuple[str, float]]]) -> Message:
    return {"matches": [[[name, float(score)] for name, score in row] for row in rows]}, {}


def _dec_matches(meta: dict, arrays: Arrays) -> list[list[tuple[str, float]]]:
    return _matches(_field(meta, "matches"))


# audio_captioner.caption(audio, prompts) / image_captioner.caption(frames) -> list[Captions]
def _enc_audio_caption(audio: list[AudioSegment], prompts: list[str] | None = None) -> Message:
    arrays: Arrays = {}
    return {"audio": put_audio(arrays, audio), "prompts": None if prompts is None else list(prompts)}, arrays


def _dec_audio_caption(meta: dict, arrays: Arrays) -> tuple:
    return get_audio(_field(meta, "audio"), arrays), _str_list(meta, "prompts", optional=True)


def _enc_image_caption(frames: list[Frame]) -> Message:
    arrays: Arrays = {}
    return {"frames": put_frames(arrays, frames)}, arrays


def _dec_image_caption(meta: dict, arrays: Arrays) -> tuple:
    return (get_frames(_field(meta, "frames"), arrays),)


def _enc_captions(caps: list[Captions]) -> Message:
    return {"captions": [c.model_dump() for c in caps]}, {}


def _dec_captions(meta: dict, arrays: Arrays) -> list[Captions]:
    return _models(_field(meta, "captions"), Captions)


# crop_checker.check(frame, masks, texts) -> (n, len(texts)) float32
def _enc_check(frame: Frame, masks: np.ndarray, texts: list[str]) -> Message:
    arrays: Arrays = {}
    masks = np.asarray(masks, bool)
    arrays["masks"] = np.packbits(masks.reshape(-1))
    return {
        "frames": put_frames(arrays, [frame]),
        "mask_shape": list(masks.shape),
        "texts": list(texts),
    }, arrays


def _dec_check(meta: dict, arrays: Arrays) -> tuple:
    frames = get_frames(_field(meta, "frames"), arrays)
    if len(frames) != 1:
        raise WireError("check takes exactly one frame")
    shape = _field(meta, "mask_shape")
    if not (
        isinstance(shape, list) and len(shape) == 3 and all(isinstance(v, int) and v >= 0 for v in shape)
    ):
        raise WireError("mask_shape must be [n, H, W]")
    if shape[1:] != [frames[0].height, frames[0].width]:
        raise WireError(f"masks {shape[1:]} do not match the frame {[frames[0].height, frames[0].width]}")
    packed = _array(arrays, "masks", np.uint8, 1)
    count = shape[0] * shape[1] * shape[2]
    if len(packed) != (count + 7) // 8:
        raise WireError("masks have the wrong size for mask_shape")
    masks = np.unpackbits(packed, count=count).astype(bool).reshape(shape)
    return frames[0], masks, _str_list(meta, "texts")


def _audio_media(index: int) -> Callable[[tuple], tuple[float, int]]:
    return lambda args: (_seconds(args[index]), 0)


def _frame_media(args: tuple) -> tuple[float, int]:
    return 0.0, 1


METHODS: dict[str, Method] = {
    m.key: m
    for m in (
        Method("tagger", "tag", _enc_tag, _dec_tag, _enc_tags, _dec_tags, _audio_media(0)),
        Method("grounder", "ground", _enc_ground, _dec_ground, _enc_segments, _dec_segments, _frame_media),
        Method(
            "grounder",
            "detect_all",
            _enc_detect_all,
            _dec_detect_all,
            _enc_segments,
            _dec_segments,
            _frame_media,
        ),
        Method("scorer", "score", _enc_score, _dec_score, _enc_matrix, _dec_matrix, _audio_media(0)),
        Method(
            "matcher", "sound_sources", _enc_match, _dec_match, _enc_matches, _dec_matches, lambda a: (0.0, 0)
        ),
        Method("matcher", "match", _enc_match, _dec_match, _enc_matches, _dec_matches, lambda a: (0.0, 0)),
        Method("matcher", "covers", _enc_match, _dec_match, _enc_matches, _dec_matches, lambda a: (0.0, 0)),
        Method(
            "audio_captioner",
            "caption",
            _enc_audio_caption,
            _dec_audio_caption,
            _enc_captions,
            _dec_captions,
            _audio_media(0),
        ),
        Method(
            "image_captioner",
            "caption",
            _enc_image_caption,
            _dec_image_caption,
            _enc_captions,
            _dec_captions,
            lambda a: (0.0, len(a[0])),
        ),
        Method("crop_checker", "check", _enc_check, _dec_check, _enc_matrix, _dec_matrix, _frame_media),
    )
}
"""Every tool method a server answers, by ``"tool.method"``."""
