"""The tool layer's settings: which implementation each tool uses, where its weights are, how media is
read. ``ToolConfig`` is everything building the tools needs; the agent's ``Settings`` (agent/settings.py)
holds it as its ``tools``, ``models_dir``, ``media`` and ``serve`` sections and hands it over with
``Settings.tool_config()``.

Model locations (``ModelSpec.source``) are a Hugging Face hub id or a local path; relative local paths
resolve against ``models_dir``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

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
    impl: Literal["yamnet", "ast"] = "yamnet"
    model: ModelSpec = ModelSpec(source="yamnet/yamnet.tflite")
    class_map: str | None = Field("yamnet/yamnet_class_map.csv", description="YAMNet's class-name CSV (lite)")


class GrounderSettings(Section):
    """Text-prompted detection + masks (Grounded-SAM in the full profile; YOLOX + DeepLab in lite)."""

    impl: Literal["lite", "transformers", "original"] = "lite"
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
    model: ModelSpec = ModelSpec(source="sentence-transformers/all-MiniLM-L6-v2")
    ontology: str = Field("audioset_ontology/ontology.json", description="AudioSet ontology JSON")
    match_threshold: float = Field(
        0.6, description="cosine similarity above which a phrase matches a detector class"
    )


class OptionalToolSettings(Section):
    impl: str = Field("none", description="'none' turns the tool off")
    model: ModelSpec | None = None
    options: dict[str, Any] = Field(default_factory=dict)


class ToolsSettings(Section):
    backend: str = Field(
        "local", description="'local' runs models in-process; 'http://host:port' uses a tool server"
    )
    audio_tagger: AudioTaggerSettings = AudioTaggerSettings()
    grounder: GrounderSettings = GrounderSettings()
    text_embedder: TextEmbedderSettings = TextEmbedderSettings()
    audio_captioner: OptionalToolSettings = OptionalToolSettings()
    image_captioner: OptionalToolSettings = OptionalToolSettings()
    audio_text_scorer: OptionalToolSettings = OptionalToolSettings()
    clip_check: OptionalToolSettings = OptionalToolSettings()
    propagator: OptionalToolSettings = OptionalToolSettings()
    """SAM2's video predictor (full); with 'none' the lite ByteTrack linking follows the source."""


class MediaSettings(Section):
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

    def resolve(self, source: str) -> Path:
        """A model source as a local path: absolute, or relative to ``models_dir`` (may not exist)."""
        return resolve(self.models_dir, source)


def resolve(models_dir: Path | str, source: str) -> Path:
    """A model source as a local path: absolute, or relative to ``models_dir`` (may not exist)."""
    path = Path(os.path.expanduser(source))
    return path if path.is_absolute() else Path(models_dir).expanduser() / path
