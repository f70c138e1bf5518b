"""The tool layer's settings: which implementation each tool uses, where its weights are, how media is
read. ``ToolConfig`` is everything building the tools needs; the agent's ``Settings`` (agent/settings.py)
holds it as its ``tools``, ``models_dir``, ``media`` and ``serve`` sections and hands it over with
``Settings.tool_config()``.

Model locations (``ModelSpec.source``) are a Hugging Face hub id or a local path; relative local paths
resolve against ``models_dir``. ``ToolConfig.locate`` resolves them (``tools.locate``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from avs_agent.tools.errors import ConfigError
from avs_agent.tools.locate import Location, locate
from avs_agent.tools.server.settings import ServeSettings


def default_models_dir() -> Path:
    """The user's cache: ``$XDG_CACHE_HOME/avs-agent/models``, else ``~/.cache/avs-agent/models``
    (``avs-agent models download`` fills it; ``AVS_AGENT_MODELS_DIR`` points elsewhere)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "avs-agent" / "models"


Profile = Literal["lite", "full"]

MAX_FPS = 30.0
"""The most frames per second analysed (each frame costs a detection and a segmentation)."""


class Section(BaseModel):
    """A settings section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class ModelSpec(Section):
    """Where a model's weights live."""

    source: str = Field(
        description="hub id ('org/name') or a local file/folder; relative paths resolve against models_dir"
    )
    revision: str | None = Field(
        None, description="hub revision (commit, tag or branch); pin it for reproducible runs"
    )


class AudioTaggerSettings(Section):
    """AudioSet tags per second and for the whole clip."""

    impl: Literal["yamnet", "ast"] = "yamnet"
    """yamnet (lite: YAMNet TFLite) or ast (full: the Audio Spectrogram Transformer)."""
    model: ModelSpec = ModelSpec(source="yamnet/yamnet.tflite")
    class_map: str | None = Field("yamnet/yamnet_class_map.csv", description="YAMNet's class-name CSV (lite)")


class GrounderSettings(Section):
    """Text-prompted detection + masks (Grounded-SAM in the full profile; YOLOX + DeepLab in lite)."""

    impl: Literal["lite", "transformers", "original"] = "lite"
    """lite (YOLOX-nano + DeepLabV3), transformers (GroundingDINO + SAM/SAM2) or original
    (groundingdino-py + segment-anything, in an environment of their own)."""
    detector: ModelSpec = ModelSpec(source="yolox_nano/yolox_nano.onnx")
    segmenter: ModelSpec = ModelSpec(source="deeplabv3_mnv2_voc/deeplabv3_mnv2_pascal_quant.tflite")
    box_threshold: float = Field(0.3, description="minimum detection score for a box to count")
    text_threshold: float = Field(0.25, description="GroundingDINO text-token threshold (full)")
    top_k: int = Field(5, description="at most this many boxes per phrase")
    nms_iou: float = Field(0.45, description="IoU above which overlapping boxes of one class are suppressed")
    options: dict[str, Any] = Field(
        default_factory=dict, description="backend extras (full: device, cache_frames)"
    )


class TextEmbedderSettings(Section):
    """The sentence embedder that maps phrases and AudioSet labels onto object names (MiniLM)."""

    model: ModelSpec = ModelSpec(source="sentence-transformers/all-MiniLM-L6-v2")
    ontology: str = Field("audioset_ontology/ontology.json", description="AudioSet ontology JSON")
    match_threshold: float = Field(
        0.6, description="cosine similarity above which a phrase matches a detector class"
    )


class OptionalToolSettings(Section):
    """A tool a profile may leave out (``impl: none``)."""

    impl: str = Field("none", description="'none' turns the tool off")
    model: ModelSpec | None = None
    """Where its weights live (``source``, ``revision``); none for a tool without weights."""
    options: dict[str, Any] = Field(default_factory=dict)
    """Backend extras, passed to the tool (configs/full.yaml shows each one's)."""


class ToolsSettings(Section):
    """Which implementation each tool uses and where its weights are (tools/wiring.py builds them)."""

    backend: str = Field(
        "local", description="'local' runs models in-process; 'http://host:port' uses a tool server"
    )
    audio_tagger: AudioTaggerSettings = AudioTaggerSettings()
    grounder: GrounderSettings = GrounderSettings()
    text_embedder: TextEmbedderSettings = TextEmbedderSettings()
    audio_captioner: OptionalToolSettings = OptionalToolSettings()
    """Free-text audio descriptions: qwen2_audio (full) or none."""
    image_captioner: OptionalToolSettings = OptionalToolSettings()
    """Image captions and their noun phrases: blip (full, with spaCy) or none."""
    audio_text_scorer: OptionalToolSettings = OptionalToolSettings()
    """Each visible object scored against the audio: clap or laion_clap (full), tag_embedding (lite:
    the audio's tags x sentence-embedding similarity), or none."""
    clip_check: OptionalToolSettings = OptionalToolSettings()
    """Does a mask's crop show its label: clip (full) or none."""
    propagator: OptionalToolSettings = OptionalToolSettings()
    """SAM2's video predictor (full); with 'none' the lite ByteTrack linking follows the source."""


class MediaSettings(Section):
    """How media is read: frames per second, frame size, length."""

    max_seconds: float = Field(120.0, description="only the first N seconds of longer media are analysed")
    max_side: int = Field(1280, description="frames are downscaled to this longer side")
    aspect: float | None = Field(
        None, description="display aspect (w/h) of squashed frames, e.g. 1.7778 for AVSBench"
    )
    fps: float = Field(
        1.0, gt=0, le=MAX_FPS, description="frames analysed per second (1: AVSBench's convention; --fps)"
    )


class ToolConfig(Section):
    """What building the tools needs (``tools.wiring.build_toolset``)."""

    profile: Profile = "lite"
    models_dir: Path = Field(default_factory=default_models_dir)
    tools: ToolsSettings = ToolsSettings()
    media: MediaSettings = MediaSettings()
    serve: ServeSettings = ServeSettings()

    def locate(self, key: str, spec: ModelSpec | str | None, *, hub: bool = True) -> Location:
        """Where the model (or file) set at ``key`` is (``tools.locate.locate``, against ``models_dir``).
        ``hub=False`` for files a tool reads locally only (the lite models)."""
        if spec is None:
            raise ConfigError(f"{key} is not set: give it a hub id or a local folder (see configs/full.yaml)")
        if isinstance(spec, str):
            return locate(key, spec, None, self.models_dir, hub=hub)
        return locate(key, spec.source, spec.revision, self.models_dir, hub=hub)
