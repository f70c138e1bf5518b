"""The tool protocols. Every backend (lite, full, remote) implements these, so the agent and the
evals never know which one runs. All methods are batch-first and return the types in ``tools.types``.

Each implementation keeps preprocess -> _forward -> postprocess apart; only ``_forward`` touches a
model, and models load lazily on first use (cached per process).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from avs_agent.tools.types import AudioSegment, AudioTags, Captions, Frame, Segments


@runtime_checkable
class AudioTagger(Protocol):
    """Audio events with scores (AudioSet vocabulary). YAMNet (lite), AST (full)."""

    name: str

    def tag(self, segments: list[AudioSegment]) -> list[AudioTags]:
        """One ``AudioTags`` per segment: per-class max over the model's windows inside the segment."""
        ...


@runtime_checkable
class Grounder(Protocol):
    """Text-prompted detection + masks. YOLOX + DeepLab over a closed vocabulary (lite), GroundingDINO +
    SAM (full). The per-frame image features are computed once and reused across phrases and retries.
    """

    name: str

    def ground(self, frame: Frame, phrases: list[str], box_threshold: float | None = None) -> Segments:
        """Boxes and masks for each phrase found in the frame; ``labels`` holds the phrase, ``data['class']``
        the detector's own class name. An empty result is a normal answer, not an error."""
        ...

    def detect_all(self, frame: Frame) -> Segments:
        """Everything the detector sees in the frame without a prompt (lite: all COCO classes; full: the
        image caption's noun phrases grounded). Used for 'what is visible' and segment-everything."""
        ...


@runtime_checkable
class AudioTextScorer(Protocol):
    """How well each text describes the audio, in [0, 1] (CLAP in full; tags x text embeddings in lite)."""

    name: str

    def score(self, audio: list[AudioSegment], texts: list[str]) -> np.ndarray:
        """(len(audio), len(texts)) float32 scores."""
        ...


@runtime_checkable
class AudioCaptioner(Protocol):
    """Free-text descriptions of audio, one per prompt (full profile)."""

    name: str

    def caption(self, audio: list[AudioSegment], prompts: list[str] | None = None) -> list[Captions]: ...


@runtime_checkable
class ImageCaptioner(Protocol):
    """A caption of each frame and its noun phrases (full profile)."""

    name: str

    def caption(self, frames: list[Frame]) -> list[Captions]: ...


@runtime_checkable
class CropChecker(Protocol):
    """Does a mask show what it claims? CLIP on the mask's square crop (full profile)."""

    name: str

    def check(self, frame: Frame, masks: np.ndarray, texts: list[str]) -> np.ndarray:
        """masks: (n, H, W) bool -> (n, len(texts)) float32 probabilities over the texts."""
        ...


@runtime_checkable
class TextMatcher(Protocol):
    """Maps free phrases and audio labels onto a vocabulary of object names."""

    name: str

    def sound_sources(self, labels: list[str], vocabulary: list[str]) -> list[list[tuple[str, float]]]:
        """For each audio label, the vocabulary entries that could make that sound, with a strength in
        [0, 1], strongest first (empty when none)."""
        ...

    def match(self, phrases: list[str], vocabulary: list[str]) -> list[list[tuple[str, float]]]:
        """For each phrase, the vocabulary entries it names, with similarity in [0, 1], best first."""
        ...

    def covers(self, labels: list[str], vocabulary: list[str]) -> list[list[tuple[str, float]]]:
        """For each generic audio label ('Animal', 'Vehicle'), the vocabulary entries it covers, with a
        strength in [0, 1]; empty for a specific label."""
        ...


@runtime_checkable
class Propagator(Protocol):
    """Carries masks of accepted sources through a clip's frames (SAM2's video predictor in full)."""

    name: str

    def propagate(self, frames: list[Frame], pivot: int, masks: np.ndarray) -> np.ndarray:
        """masks: (n_obj, H, W) bool on ``frames[pivot]`` -> (T, n_obj, H, W) bool on every frame,
        forward and backward from the pivot; object identity kept (index = object)."""
        ...


TOOLS: tuple[str, ...] = (
    "tagger",
    "grounder",
    "scorer",
    "matcher",
    "audio_captioner",
    "image_captioner",
    "crop_checker",
)
"""Tool names: the fields of ``wiring.Toolset`` that hold a tool; a tool server serves these names."""

REQUIRED_TOOLS: tuple[str, ...] = ("tagger", "grounder", "scorer", "matcher")
