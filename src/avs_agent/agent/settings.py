"""The settings of everything, composed: the agent's own sections (agent, llm, chat) are defined here,
the tools' (tools, models_dir, media) in tools/settings.py and the tool server's (serve) in
tools/server/settings.py.

Precedence, lowest to highest (a test pins it):
    defaults in this file
    < the profile's file ``configs/{profile}.yaml``
    < a user config file (``--config FILE``)
    < environment variables ``AVS_AGENT_...`` (nested keys joined with ``__``, e.g.
      ``AVS_AGENT_LLM__BACKEND=openai``)
    < the command line (``--set key=value`` for any dotted key, ``--profile lite|full``).

Model locations (``ModelSpec.source``) are a Hugging Face hub id or a local path; relative local paths
resolve against ``models_dir`` (env ``AVS_AGENT_MODELS_DIR``, default the user's cache,
``tools.settings.default_models_dir``); ``tool_config().locate`` resolves them.
"""

from __future__ import annotations

import contextvars
import os
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from avs_agent.tools.errors import ConfigError
from avs_agent.tools.server.settings import ServeSettings
from avs_agent.tools.settings import (
    MediaSettings,
    Profile,
    Section,
    ToolConfig,
    ToolsSettings,
    default_models_dir,
)


class DecisionSettings(Section):
    """The decision model's parameters (agent/decision/ says how each enters the score). The defaults
    are fitted on the dev set by ``python -m avs_agent.evals.crossval`` with propagation and none per clip on: the
    mean of the best 5% of 400 random draws of all thirteen on all 40 clips (the fit and its
    cross-validated numbers are in benchmarks/results/crossval.json). Fourteen in all, thirteen fitted;
    w_crop needs the full profile's crop check and is set, not fitted."""

    clip_weight: float = Field(
        0.512, description="share of the whole clip's audio evidence each second inherits"
    )
    generic_share: float = Field(
        0.387, description="share of a generic tag's unexplained score lent to the visible objects it covers"
    )
    w_detector: float = Field(0.948, description="weight of the detection score in the candidate's prior")
    w_salience: float = Field(3.026, description="weight of the mask's share of the frame in the prior")
    w_support: float = Field(1.116, description="weight of the mean detection score over the clip's frames")
    w_crop: float = Field(2.0, description="weight of the crop check's probability (full profile)")
    none_bias: float = Field(
        0.283, description="score of 'none of the visible objects' with no other evidence"
    )
    none_offscreen: float = Field(
        1.048, description="weight of the strongest tag whose source is named but not visible, for 'none'"
    )
    second_source_ratio: float = Field(
        0.84,
        description="a second visible source is kept when its score is at least this share of the first's",
    )
    instance_share: float = Field(
        0.599,
        description="of a phrase's instances, those at least this share as salient as the top one are kept",
    )
    detection_floor: float = Field(0.224, description="detections below this score are not evidence")
    rank_audio_power: float = Field(
        0.576,
        description="exponent of the audio evidence when visible candidates are ranked against each other (1: as for 'none'; lower: the visual prior weighs more)",
    )
    instance_track_weight: float = Field(
        0.516,
        description="how much an instance's salience over the clip (its track's mean) weighs against its salience in the frame when choosing among a phrase's instances (0: the frame only; 1: the clip only; lite: ByteTrack's links)",
    )
    rider_overlap: float = Field(
        0.642,
        description="a person whose box lies at least this share inside an answered ridden object's box (a scooter, a horse) is part of its sounding unit, and the other way round (above 1: never)",
    )
    none_per_clip: bool = Field(
        True,
        description="decide 'none of the visible objects' once for the clip (mean scores over its frames) instead of on each frame; a design switch, not fitted",
    )


class AgentSettings(Section):
    """How the agent reads its tools and how far it retries; the decision model's parameters are in
    ``decision``."""

    min_tag_score: float = Field(0.1, description="audio tags below this score are ignored")
    max_tags: int = Field(10, description="audio tags considered per second")
    max_attempts: int = Field(3, description="segmentation attempts per frame (first try + retries)")
    min_mask_area: float = Field(
        0.002, description="a mask smaller than this share of the frame counts as empty"
    )
    max_mask_area: float = Field(
        0.95, description="a mask larger than this share of the frame counts as wrong"
    )
    silence_rms: float = Field(0.001, description="audio quieter than this RMS is silence")
    second_source_ratio: float = Field(
        0.5,
        description="baseline strategies (vcap-acls, segment-all): a second object is kept when its audio score is at least this share of the first's",
    )
    track_floor: float = Field(
        0.1,
        description="detections down to this score are grounded and linked through time (the decision's own detection_floor decides what is evidence)",
    )
    propagate: bool = Field(
        True,
        description="follow each accepted source through the clip (SAM2's video predictor in full, ByteTrack in lite)",
    )
    hold: bool = Field(
        True,
        description="with propagate: frames that accepted no source take the followed one (AVSBench masks the source in every frame)",
    )
    same_object_iou: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="two answered phrases whose masks overlap at least this much (IoU) in a frame are one object under one name, the one the audio supports more (agent/decision/ one_name; COCO's 'same object' overlap)",
    )
    ask_person: bool = Field(
        False,
        description="pause with a LangGraph interrupt and ask the person when two visible candidates are a close call; needs a checkpointer: the chat and the page set it from chat.ask_person, a LangGraph server run through its context; ask and eval never ask",
    )
    ask_margin: float = Field(
        0.15,
        ge=0.0,
        le=1.0,
        description="a close call: the second candidate's clip score within this share of the first's (agent/decision/ close_call)",
    )
    decision: DecisionSettings = DecisionSettings()


class LLMSettings(Section):
    """Who decides: the rules, or an LLM behind LangChain's chat models (agent/llm.py)."""

    backend: Literal["rules", "openai", "ollama"] = "rules"
    """rules (no LLM), openai (also any OpenAI-compatible server, with base_url) or ollama."""
    model: str = "gpt-4o"
    """The model's name on the backend (openai, ollama)."""
    base_url: str | None = None
    """The server's URL (an OpenAI-compatible server, Ollama's host); none: the backend's default."""
    api_key_env: str = Field(
        "OPENAI_API_KEY", description="environment variable holding the API key (openai)"
    )
    temperature: float = 0.0
    """Sampling temperature sent with every request (0: greedy)."""
    seed: int | None = Field(
        0, description="sampling seed sent with every request (with temperature 0: repeatable answers)"
    )
    timeout_s: float = Field(60.0, description="seconds before one LLM request is abandoned")
    max_tokens: int | None = Field(
        512, description="output tokens per call (a cap: small local models otherwise run to the timeout)"
    )
    clip_budget_s: float = Field(
        120.0, description="seconds of LLM calls per clip; once spent, the rules decide what is left"
    )
    max_retries: int = Field(
        2, description="retries with backoff on timeouts, 429 and 5xx before the rules decide"
    )
    structured_method: Literal[
        "auto", "json_schema", "json_object_schema", "function_calling", "json_mode"
    ] = Field(
        "auto",
        description="how structured output is requested: a response_format JSON schema, json_object with a schema (llama.cpp's server), a tool call, plain JSON mode; auto finds what the server takes, once per process",
    )
    vision: Literal["auto", "on", "off"] = Field(
        "auto",
        description="show the model the frames tiled into one image with the candidates as numbered boxes; auto: when the model is known to take images (agent/llm.py VISION_MODELS)",
    )
    vision_frames: int = Field(6, ge=1, description="frames tiled into the image (evenly spaced)")
    vision_max_side: int = Field(1024, ge=64, description="long side of the tiled image, pixels")
    vision_detail: Literal["low", "high", "auto"] = Field(
        "high",
        description="OpenAI's image detail level (low: 85 tokens per image; high: 85 + 170 per 512 px tile)",
    )
    vision_boxes: int = Field(6, ge=1, description="numbered candidates per frame at most (best rank first)")

    @field_validator("vision", mode="before")
    @classmethod
    def _yaml_switch(cls, v: object) -> object:
        """YAML reads on/off (``--set llm.vision=on``) as booleans."""
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v


class OutputSettings(Section):
    """What ask, the chat and the page write beside answer.json (apps/output.py)."""

    analysed_only: bool = Field(
        False, description="overlay.mp4 holds the analysed frames only (not every frame of the source video)"
    )
    video_max_fps: float = Field(
        10.0,
        ge=0,
        description="overlay.mp4's frame rate is the source video's, at most this (each mask is held for its analysed frame's slot anyway; 0: the source's own rate)",
    )


class ChatSettings(Section):
    """The terminal chat and the web page."""

    checkpoint_path: str = Field(
        "~/.cache/avs-agent/chat.sqlite", description="SQLite file of the chat checkpointer"
    )
    ask_person: bool = Field(
        True,
        description="the chat and the page ask the person to choose on a close call between two visible candidates (agent.ask_margin)",
    )


_yaml_layer: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "_yaml_layer", default=None
)


class _DictSource(PydanticBaseSettingsSource):
    """The merged YAML layer (profile file, then user file)."""

    def get_field_value(self, field, field_name):  # pragma: no cover - unused, __call__ returns all
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return _yaml_layer.get() or {}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AVS_AGENT_", env_nested_delimiter="__", extra="forbid")

    profile: Profile = "lite"
    """lite (small CPU models) or full (foundation models, GPU): which profile file and tools (--profile)."""
    models_dir: Path = Field(
        default_factory=default_models_dir,
        description="folder of local weights (lite models live here); `avs-agent models download` fills it",
    )
    tools: ToolsSettings = ToolsSettings()
    agent: AgentSettings = AgentSettings()
    llm: LLMSettings = LLMSettings()
    media: MediaSettings = MediaSettings()
    chat: ChatSettings = ChatSettings()
    output: OutputSettings = OutputSettings()
    serve: ServeSettings = ServeSettings()

    @classmethod
    def settings_customise_sources(
        cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
    ):
        return (init_settings, env_settings, _DictSource(settings_cls))

    def tool_config(self) -> ToolConfig:
        """The tool layer's part of these settings (what ``tools.wiring.build_toolset`` takes)."""
        return ToolConfig.model_construct(
            profile=self.profile,
            models_dir=self.models_dir,
            tools=self.tools,
            media=self.media,
            serve=self.serve,
        )


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: Path | str, missing_ok: bool = False) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        if missing_ok:
            return {}
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"cannot parse config file {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings")
    return data


def profile_config(profile: str) -> dict[str, Any]:
    if profile not in ("lite", "full"):
        raise ConfigError(f"unknown profile '{profile}': use lite or full")
    text = resources.files("avs_agent.configs").joinpath(f"{profile}.yaml").read_text()
    return yaml.safe_load(text) or {}


def parse_overrides(pairs: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``["llm.backend=openai", "agent.max_attempts=2"]`` -> nested dict; values parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got '{pair}'")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: '{part}' is not a section")
        node[parts[-1]] = value
    return out


def load_settings(
    profile: str | None = None,
    config_file: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> Settings:
    """Build the settings with the documented precedence."""
    cli = parse_overrides(overrides)
    if profile is not None:
        cli["profile"] = profile
    user = read_yaml(config_file) if config_file else {}
    chosen = cli.get("profile") or os.environ.get("AVS_AGENT_PROFILE") or user.get("profile") or "lite"
    token = _yaml_layer.set(deep_merge(profile_config(str(chosen)), user))
    try:
        return Settings(**cli)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"invalid setting {where}: {err['msg']}") from None
    finally:
        _yaml_layer.reset(token)
