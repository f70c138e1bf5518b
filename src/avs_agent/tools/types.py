"""The typed data model every tool, the agent and the evals share.

Arrays carry their shapes and units in the field docs. Images are RGB uint8 (H, W, 3); audio is mono
float32 in [-1, 1] at ``SAMPLE_RATE``; boxes are pixel ``xyxy`` in the frame they were computed on;
masks are bool (n, H, W) at the frame's resolution.

``Segments`` follows supervision's ``Detections``: one spatial result type for detections and masks,
invariants checked on construction, numpy-style filtering (``seg[seg.confidence > 0.5]``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

SAMPLE_RATE = 16_000
"""Audio sample rate (Hz) used everywhere after loading."""


@dataclass
class Frame:
    """One analysed video frame.

    Attributes:
        index: 0-based position among the analysed frames.
        time_s: time of the frame in the source media, seconds.
        image: (H, W, 3) uint8 RGB.
        aspect: display aspect ratio (width / height) the frame should be seen at, when it differs
            from its pixel aspect (AVSBench stores 16:9 video squashed to 224x224). None: as stored.
    """

    index: int
    time_s: float
    image: np.ndarray
    aspect: float | None = None

    def __post_init__(self) -> None:
        if self.image.ndim != 3 or self.image.shape[2] != 3 or self.image.dtype != np.uint8:
            raise ValueError(
                f"Frame.image must be (H, W, 3) uint8, got {self.image.shape} {self.image.dtype}"
            )

    @classmethod
    def blank(cls, height: int = 32, width: int = 32) -> Frame:
        """A black frame (a tool's warm-up call)."""
        return cls(index=0, time_s=0.0, image=np.zeros((height, width, 3), np.uint8))

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])


@dataclass
class AudioSegment:
    """A stretch of mono audio.

    Attributes:
        start_s, end_s: where the segment lies in the source, seconds.
        waveform: (n,) float32 in [-1, 1] at ``SAMPLE_RATE``.
    """

    start_s: float
    end_s: float
    waveform: np.ndarray

    def __post_init__(self) -> None:
        if self.waveform.ndim != 1 or self.waveform.dtype != np.float32:
            raise ValueError(
                f"AudioSegment.waveform must be (n,) float32, got {self.waveform.shape} {self.waveform.dtype}"
            )

    @classmethod
    def silence(cls, seconds: float = 1.0) -> AudioSegment:
        """Silent audio (a tool's warm-up call)."""
        return cls(0.0, seconds, np.zeros(round(seconds * SAMPLE_RATE), np.float32))

    @property
    def duration_s(self) -> float:
        return len(self.waveform) / SAMPLE_RATE

    @property
    def rms(self) -> float:
        return float(np.sqrt(np.mean(self.waveform.astype(np.float64) ** 2))) if len(self.waveform) else 0.0


@dataclass
class Clip:
    """Loaded media: frames at 1 fps, the audio cut into one segment per frame, and the whole audio.

    ``segments[i]`` is the audio heard around ``frames[i]`` (the second starting at frame i's time
    slot); ``audio`` is the whole clip.
    """

    source: str
    frames: list[Frame]
    segments: list[AudioSegment]
    audio: AudioSegment
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.frames:
            raise ValueError("Clip needs at least one frame")
        if len(self.segments) != len(self.frames):
            raise ValueError(f"{len(self.frames)} frames but {len(self.segments)} audio segments")

    @property
    def duration_s(self) -> float:
        return self.audio.duration_s


class AudioTags(BaseModel):
    """Audio-event labels with scores for one audio segment, best first.

    ``labels`` are the tagger's vocabulary (AudioSet display names for YAMNet and AST); ``scores`` are in
    [0, 1] (sigmoid outputs, not a distribution).
    """

    start_s: float
    end_s: float
    labels: list[str]
    scores: list[float]

    def top(self, k: int = 5, min_score: float = 0.0) -> list[tuple[str, float]]:
        return [(lab, s) for lab, s in zip(self.labels, self.scores, strict=True) if s >= min_score][:k]


class Captions(BaseModel):
    """Captions of one frame or audio segment, and the noun phrases taken from them."""

    texts: list[str]
    noun_phrases: list[str] = Field(default_factory=list)
    prompts: list[str] = Field(default_factory=list)


@dataclass
class Segments:
    """Detections and their masks on one frame (the shared spatial result type).

    Attributes:
        xyxy: (n, 4) float32 boxes, pixels, in the frame's coordinates.
        mask: (n, H, W) bool masks at the frame's resolution.
        confidence: (n,) float32 detection scores in [0, 1].
        labels: n strings, what each item is (a detector class or a text prompt).
        data: per-item extra arrays or lists, each of length n (e.g. ``phrase``, ``class_id``).
    """

    xyxy: np.ndarray
    mask: np.ndarray
    confidence: np.ndarray
    labels: list[str]
    data: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.labels)
        self.xyxy = np.asarray(self.xyxy, dtype=np.float32).reshape(-1, 4)
        self.confidence = np.asarray(self.confidence, dtype=np.float32).reshape(-1)
        self.mask = np.asarray(self.mask, dtype=bool)
        if self.mask.ndim != 3:
            raise ValueError(f"Segments.mask must be (n, H, W), got {self.mask.shape}")
        for name, arr in (("xyxy", self.xyxy), ("mask", self.mask), ("confidence", self.confidence)):
            if len(arr) != n:
                raise ValueError(f"Segments.{name} has {len(arr)} items, labels has {n}")
        for key, value in self.data.items():
            if len(value) != n:
                raise ValueError(f"Segments.data[{key!r}] has {len(value)} items, expected {n}")

    @classmethod
    def empty(cls, height: int, width: int) -> Segments:
        return cls(
            xyxy=np.zeros((0, 4), np.float32),
            mask=np.zeros((0, height, width), bool),
            confidence=np.zeros((0,), np.float32),
            labels=[],
        )

    @classmethod
    def concat(cls, items: list[Segments], height: int, width: int) -> Segments:
        items = [s for s in items if len(s)]
        if not items:
            return cls.empty(height, width)
        keys = set(items[0].data).intersection(*(s.data for s in items[1:]))
        return cls(
            xyxy=np.concatenate([s.xyxy for s in items]),
            mask=np.concatenate([s.mask for s in items]),
            confidence=np.concatenate([s.confidence for s in items]),
            labels=[lab for s in items for lab in s.labels],
            data={k: [v for s in items for v in list(s.data[k])] for k in keys},
        )

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int | slice | np.ndarray | list[int]) -> Segments:
        if isinstance(index, int):
            index = [index]
        idx = np.arange(len(self))[index]
        return Segments(
            xyxy=self.xyxy[idx],
            mask=self.mask[idx],
            confidence=self.confidence[idx],
            labels=[self.labels[i] for i in idx],
            data={k: [list(v)[i] for i in idx] for k, v in self.data.items()},
        )

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of the frame the masks belong to."""
        return int(self.mask.shape[1]), int(self.mask.shape[2])

    @property
    def area(self) -> np.ndarray:
        """(n,) mask areas in pixels."""
        return self.mask.reshape(len(self), -1).sum(axis=1)

    def union(self) -> np.ndarray:
        """(H, W) bool: the union of all masks (all False when empty)."""
        return self.mask.any(axis=0) if len(self) else np.zeros(self.shape, bool)


class TraceStep(BaseModel):
    """One decision or tool call, kept so an answer can say why.

    What happened is data: ``event`` (a code, e.g. ``check_failed``), ``reason`` (a code, e.g.
    ``too_small``), the ``frame`` and ``object`` it is about, and ``data`` (the values behind it).
    Programs (the chat, the page, the LLM's prompts, the tests) read those; ``message`` says the same in
    words for a person, for the command line, the chat, the page and answer.json."""

    node: str
    """The graph node (or an eval strategy) that took the step."""
    event: str = ""
    """What happened, a code (the agent's: agent/trace.py ``EVENTS``; an eval strategy's steps have
    none)."""
    reason: str = ""
    """Why, a code where there is one (agent/trace.py ``REASONS``); '' otherwise."""
    frame: int | None = None
    """The analysed frame it is about (0-based); None for the whole clip."""
    object: str | None = None
    """The object (phrase) it is about, when it is about one."""
    message: str = ""
    """The step in words, for a person (rendered when the step is taken)."""
    data: dict[str, Any] = Field(default_factory=dict)
    seconds: float = 0.0


class Progress(BaseModel):
    """A run's progress event as it happens (ask's spinner, the chat, the page's bar, a LangGraph
    server's custom stream). ``stage``: where the run is, a code (the graph node, or ``start`` before
    the graph runs); ``event``: what is happening there, a code (a trace step's event, or one of the
    node's own: ``loading_media``, ``tagging_audio``, ...); ``text``: the same in words."""

    stage: str
    event: str
    text: str
    frame: int | None = None
    object: str | None = None

    @classmethod
    def of_step(cls, step: TraceStep, max_chars: int = 120) -> Progress:
        """A trace step as progress: its node and event, its words cut to ``max_chars``."""
        where = f" (frame {step.frame + 1})" if step.frame is not None else ""
        text = f"{step.node}{where}: {step.message}"[:max_chars]
        return cls(stage=step.node, event=step.event, text=text, frame=step.frame, object=step.object)


class FrameResult(BaseModel):
    """What was found on one analysed frame."""

    index: int
    time_s: float
    labels: list[str]
    boxes: list[list[float]]
    scores: list[float]
    mask_area: float = Field(description="share of the frame's pixels in the mask, 0..1")


@dataclass
class Answer:
    """The answer to "what is making the sound?" for one clip.

    Attributes:
        question: what was asked.
        text: the answer for a person.
        labels: the sounding objects found, over the whole clip.
        frames: per analysed frame, what was found.
        masks: (T, H, W) bool, one mask per analysed frame (the union of the sounding objects).
        trace: every decision and tool call, in order.
        stats: run statistics (seconds, LLM calls, tokens, attempts).
    """

    question: str
    text: str
    labels: list[str]
    frames: list[FrameResult]
    masks: list[np.ndarray]
    trace: list[TraceStep]
    stats: dict[str, Any] = field(default_factory=dict)
    evidence: list[dict[str, Any]] = field(default_factory=list)
    """Per frame: ``candidates`` [[phrase, audio evidence], ...] and ``visible`` [phrase, ...]."""
    object_masks: list[dict[str, np.ndarray]] = field(default_factory=list)
    """Per frame, each sounding object's own (H, W) bool mask (their union is ``masks``); empty when
    the producer keeps only the union (the evals' strategies)."""

    def __post_init__(self) -> None:
        if len(self.masks) != len(self.frames):
            raise ValueError(f"{len(self.frames)} frame results but {len(self.masks)} masks")

    @property
    def visible(self) -> bool:
        """True when some frame has a non-empty mask."""
        return any(m.any() for m in self.masks)

    def to_dict(
        self, mask_files: list[str] | None = None, overlay_files: list[str] | None = None
    ) -> dict[str, Any]:
        frames = []
        for i, fr in enumerate(self.frames):
            item = fr.model_dump()
            if mask_files is not None:
                item["mask_file"] = mask_files[i]
            if overlay_files is not None:
                item["overlay_file"] = overlay_files[i]
            frames.append(item)
        return {
            "question": self.question,
            "answer": self.text,
            "labels": self.labels,
            "visible": self.visible,
            "frames": frames,
            "stats": self.stats,
            "evidence": self.evidence,
            "trace": [s.model_dump() for s in self.trace],
        }
