"""The tool protocols. Every backend (lite, full, remote) implements these, so the agent and the
evals never know which one runs. All methods are batch-first and return the types in ``tools.types``.

Where the profiles differ in what they can do, the difference lives in the tool, not in the agent's
nodes: a grounder proposes what it sees by itself (``proposals``: the closed-vocabulary lite grounder
its classes, an open-vocabulary one nothing) and reads free phrases as its own words (``words``); a
scorer always gives its evidence term (``evidence``: CLAP its scores, the lite scorer, which reads the
audio tags, zeros, since the tag terms carry that evidence already); a linker follows an object through
the clip (``Linker``: ByteTrack over the detections in lite, SAM2's video predictor in full).

Each implementation keeps preprocess -> _forward -> postprocess apart; only ``_forward`` touches a
model, and models load lazily on first use (cached per process) or at ``warm_up()`` (a tool server
loads every model before it takes requests).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from avs_agent.tools.types import AudioSegment, AudioTags, Captions, Frame, Segments


@runtime_checkable
class Tool(Protocol):
    """What every tool has: a name (traces and stats say which ran) and a warm-up."""

    name: str

    def warm_up(self) -> None:
        """Load the tool's models now, with one tiny call (they otherwise load on first use)."""
        ...


@runtime_checkable
class AudioTagger(Tool, Protocol):
    """Audio events with scores (AudioSet vocabulary). YAMNet (lite), AST (full)."""

    def tag(self, segments: list[AudioSegment]) -> list[AudioTags]:
        """One ``AudioTags`` per segment: per-class max over the model's windows inside the segment."""
        ...


@runtime_checkable
class Grounder(Tool, Protocol):
    """Text-prompted detection + masks. YOLOX + DeepLab over a closed vocabulary (lite), GroundingDINO +
    SAM (full). The per-frame image features are computed once and reused across phrases and retries.
    """

    def ground(self, frame: Frame, phrases: list[str], box_threshold: float | None = None) -> Segments:
        """Boxes and masks for each phrase found in the frame; ``labels`` holds the phrase, ``data['class']``
        the detector's own class name. An empty result is a normal answer, not an error."""
        ...

    def detect_all(self, frame: Frame) -> Segments:
        """Everything the detector sees in the frame without a prompt (lite: all COCO classes; full: the
        image caption's noun phrases grounded). Used for 'what is visible' and segment-everything."""
        ...

    def proposals(self, frame: Frame) -> list[str]:
        """What the grounder itself proposes as candidates in this frame, without being asked: a
        closed-vocabulary grounder the classes it detects (lite: YOLOX's and DeepLab's); an
        open-vocabulary one nothing (its candidates come from the audio and the captions)."""
        ...

    def words(self, phrases: list[str]) -> list[str]:
        """Free phrases (caption nouns) as this grounder's words, repeats dropped: a closed-vocabulary
        grounder maps each onto the class it names (dropping those that name none); an open-vocabulary
        one takes them as they are."""
        ...


@runtime_checkable
class AudioTextScorer(Tool, Protocol):
    """How well each text describes the audio, in [0, 1] (CLAP in full; tags x text embeddings in lite)."""

    def score(self, audio: list[AudioSegment], texts: list[str]) -> np.ndarray:
        """(len(audio), len(texts)) float32 scores."""
        ...

    def evidence(self, audio: list[AudioSegment], texts: list[str]) -> np.ndarray:
        """(len(audio), len(texts)) float32: the scorer's own term of the audio evidence (the decision's
        ``clap`` term). A model of its own (CLAP) gives its scores; a scorer that reads the audio tags
        (lite) gives zeros, since the tag terms already carry what it would say."""
        ...


@runtime_checkable
class AudioCaptioner(Tool, Protocol):
    """Free-text descriptions of audio, one per prompt (full profile)."""

    def caption(self, audio: list[AudioSegment], prompts: list[str] | None = None) -> list[Captions]: ...


@runtime_checkable
class ImageCaptioner(Tool, Protocol):
    """A caption of each frame and its noun phrases (full profile)."""

    def caption(self, frames: list[Frame]) -> list[Captions]: ...


@runtime_checkable
class CropChecker(Tool, Protocol):
    """Does a mask show what it claims? CLIP on the mask's square crop (full profile)."""

    def check(self, frame: Frame, masks: np.ndarray, texts: list[str]) -> np.ndarray:
        """masks: (n, H, W) bool -> (n, len(texts)) float32 probabilities over the texts."""
        ...


@runtime_checkable
class TextMatcher(Tool, Protocol):
    """Maps free phrases and audio labels onto a vocabulary of object names. Its ``warm_up`` also embeds
    the vocabulary it was built with (the first call over a vocabulary costs seconds on CPU)."""

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
class Propagator(Tool, Protocol):
    """Carries masks of accepted sources through a clip's frames (SAM2's video predictor in full; the
    ``Linker`` the agent calls wraps it, tools/full/sam2_video.py ``Sam2Linker``)."""

    def propagate(self, frames: list[Frame], pivot: int, masks: np.ndarray) -> np.ndarray:
        """masks: (n_obj, H, W) bool on ``frames[pivot]`` -> (T, n_obj, H, W) bool on every frame,
        forward and backward from the pivot; object identity kept (index = object)."""
        ...


@runtime_checkable
class Linker(Protocol):
    """Follows an object through a clip's analysed frames: ByteTrack links the grounder's detections
    frame to frame (lite, tools/lite/tracker.py), SAM2's video predictor carries a mask (full,
    tools/full/sam2_video.py). The agent links every phrase's instances once they are grounded
    (``tracks``) and follows each accepted source from the frame where it is surest (``follow``)."""

    name: str

    def tracks(self, per_frame: list[Segments | None]) -> list[np.ndarray] | None:
        """One phrase's instances linked across the frames: per frame, the track id of each instance
        (-1: linked to none), so that ``follow`` can find the same object again. None for a linker
        that links no detections (SAM2 follows the mask itself)."""
        ...

    def follow(
        self, frames: list[Frame], found: list[Segments | None], pivot: int, start: Segments | None
    ) -> list[Segments | None] | None:
        """The object whose instances on ``frames[pivot]`` are ``start`` (one phrase's kept instances),
        followed through the clip: per frame, its instances there (None where it is not found), given
        that phrase's instances per frame as grounded (``found``, linked by ``tracks``). None when it
        cannot be followed."""
        ...


class FrameByFrame:
    """A linker that follows nothing: each frame keeps what it found itself (a toolset built without
    a linker, e.g. for the evals' baselines or a test's scripted tools)."""

    name = "frame-by-frame"

    def tracks(self, per_frame: list[Segments | None]) -> list[np.ndarray] | None:
        return None

    def follow(
        self, frames: list[Frame], found: list[Segments | None], pivot: int, start: Segments | None
    ) -> list[Segments | None] | None:
        return None


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
