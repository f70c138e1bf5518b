"""The models a config asks for (``avs-agent models`` lists them): config key, the classes that load
each, where it comes from, and whether it is available here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from avs_agent.tools.locate import locate
from avs_agent.tools.settings import ToolConfig


@dataclass
class ModelEntry:
    """One model the settings ask for: config key, what loads it, where from, whether it is here."""

    key: str
    impl: str
    loads: str
    source: str
    revision: str | None
    where: str
    local: bool
    available: bool

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


_CLASSES = {
    ("audio_tagger", "ast"): ("ASTForAudioClassification + AutoFeatureExtractor", "config.json"),
    ("grounder.detector", "transformers"): ("GroundingDinoForObjectDetection + AutoProcessor", "config.json"),
    ("grounder.segmenter", "transformers"): ("SamModel + SamProcessor | Sam2Model", "config.json"),
    ("grounder.detector", "original"): (
        "groundingdino-py build_model (.cfg.py + .pth)",
        "groundingdino_swint_ogc.pth",
    ),
    ("grounder.segmenter", "original"): ("segment_anything sam_model_registry (.pth)", ""),
    ("audio_text_scorer", "clap"): ("ClapModel + ClapProcessor", "config.json"),
    ("audio_text_scorer", "laion_clap"): ("laion_clap.CLAP_Module (.pt)", "630k-audioset-best.pt"),
    ("audio_captioner", "qwen2_audio"): ("Qwen2AudioForConditionalGeneration + AutoProcessor", "config.json"),
    ("image_captioner", "blip"): ("BlipForConditionalGeneration + BlipProcessor", "config.json"),
    ("clip_check", "clip"): ("CLIPModel + CLIPProcessor", "config.json"),
    ("propagator", "sam2_video"): (
        "Sam2VideoModel (+ Sam2VideoProcessor where torchvision is)",
        "config.json",
    ),
}


def model_entries(settings: ToolConfig) -> list[ModelEntry]:
    """The models these settings would load (full-profile tools only; tools set to 'none' left out),
    plus the spaCy pipeline of the noun phrases."""
    t = settings.tools
    wanted: list[tuple[str, str, Any]] = []
    if t.audio_tagger.impl == "ast":
        wanted.append(("audio_tagger", "ast", t.audio_tagger.model))
    if t.grounder.impl in ("transformers", "original"):
        wanted.append(("grounder.detector", t.grounder.impl, t.grounder.detector))
        wanted.append(("grounder.segmenter", t.grounder.impl, t.grounder.segmenter))
    for name in ("audio_text_scorer", "audio_captioner", "image_captioner", "clip_check", "propagator"):
        section = getattr(t, name)
        impl = {"transformers": "clap", "qwen2-audio": "qwen2_audio"}.get(section.impl, section.impl)
        if (name, impl) in _CLASSES:
            wanted.append((name, impl, section.model))
    entries = []
    for name, impl, spec in wanted:
        key = f"tools.{name}" if "." in name else f"tools.{name}.model"
        loads, probe = _CLASSES[(name, impl)]
        if spec is None:
            entries.append(ModelEntry(key, impl, loads, "", None, "(not set)", False, False))
            continue
        loc = locate(key, spec.source, spec.revision, settings.models_dir)
        entries.append(
            ModelEntry(
                key,
                impl,
                loads,
                spec.source,
                spec.revision,
                loc.where,
                loc.is_local,
                loc.available(probe),
            )
        )
    nouns = _spacy_model(settings)
    if nouns:
        entries.append(
            ModelEntry(
                "spacy (noun phrases)",
                "spacy",
                "spacy.load",
                nouns,
                None,
                "installed package",
                True,
                _spacy_available(nouns),
            )
        )
    return entries


def _spacy_model(settings: ToolConfig) -> str | None:
    t = settings.tools
    for section in (t.image_captioner, t.audio_captioner):
        if section.impl != "none":
            from avs_agent.tools.full.blip_captioner import DEFAULT_SPACY_MODEL

            return str(section.options.get("spacy_model", DEFAULT_SPACY_MODEL))
    return None


def _spacy_available(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None
