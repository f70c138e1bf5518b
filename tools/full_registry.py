"""Builders of the full-profile tools from settings (``agent.toolset`` calls these for non-lite impls),
the open vocabulary the rule-based reasoner may propose, and the model registry listing that
``avs-agent models`` prints.

Building is cheap: every tool loads its model on first use (cached per process, ``tools.hf``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tools import hf
from tools.errors import ConfigError

# Objects that make sounds and can be seen: the AVSBench / AVSS classes plus common sound sources.
OPEN_VOCABULARY: tuple[str, ...] = (
    # people
    "man",
    "woman",
    "boy",
    "girl",
    "baby",
    "child",
    "person",
    "singer",
    "crowd",
    # animals
    "dog",
    "cat",
    "bird",
    "chicken",
    "rooster",
    "duck",
    "goose",
    "horse",
    "cow",
    "sheep",
    "goat",
    "pig",
    "donkey",
    "lion",
    "tiger",
    "elephant",
    "wolf",
    "monkey",
    "frog",
    "owl",
    "parrot",
    "crow",
    "pigeon",
    "seal",
    "whale",
    "dolphin",
    "bee",
    "insect",
    "mouse",
    "squirrel",
    # instruments
    "guitar",
    "acoustic guitar",
    "electric guitar",
    "bass guitar",
    "ukulele",
    "banjo",
    "harp",
    "piano",
    "keyboard",
    "organ",
    "accordion",
    "violin",
    "cello",
    "double bass",
    "flute",
    "clarinet",
    "saxophone",
    "trumpet",
    "trombone",
    "tuba",
    "french horn",
    "harmonica",
    "bagpipes",
    "drum",
    "drum kit",
    "snare drum",
    "tabla",
    "marimba",
    "xylophone",
    "glockenspiel",
    "cymbal",
    "gong",
    "bell",
    "tambourine",
    "erhu",
    "guzheng",
    "pipa",
    "sitar",
    "microphone",
    "loudspeaker",
    # vehicles and machines
    "car",
    "race car",
    "truck",
    "bus",
    "ambulance",
    "fire truck",
    "police car",
    "motorcycle",
    "bicycle",
    "train",
    "tram",
    "airplane",
    "helicopter",
    "boat",
    "ship",
    "tractor",
    "lawn mower",
    "chainsaw",
    "drill",
    "hammer",
    "saw",
    "vacuum cleaner",
    "hair dryer",
    "blender",
    "washing machine",
    "sewing machine",
    "fan",
    "engine",
    "siren",
    "horn",
    # household and other
    "clock",
    "alarm clock",
    "phone",
    "telephone",
    "computer",
    "keyboard",
    "typewriter",
    "television",
    "radio",
    "door",
    "toilet",
    "faucet",
    "water",
    "fountain",
    "waterfall",
    "fire",
    "fireworks",
    "gun",
    "ball",
    "tennis racket",
    "whistle",
    "kettle",
    "pan",
    "cup",
    "glass",
    "toy",
    "robot",
)


def open_vocabulary() -> list[str]:
    """Object names the rule-based reasoner may propose in the full (open-vocabulary) profile."""
    return list(dict.fromkeys(OPEN_VOCABULARY))


def _loc(settings: Any, key: str, spec: Any) -> hf.Location:
    if spec is None:
        raise ConfigError(f"{key} is not set: give it a hub id or a local folder (see configs/full.yaml)")
    return hf.locate(key, spec.source, spec.revision, settings.models_dir)


def build_audio_tagger(settings: Any) -> Any:
    s = settings.tools.audio_tagger
    if s.impl != "ast":
        raise ConfigError(
            f"tools.audio_tagger.impl '{s.impl}' is not a full-profile tagger (use ast or yamnet)"
        )
    from tools.ast_tagger import AstTagger

    return AstTagger(_loc(settings, "tools.audio_tagger.model", s.model))


def build_grounder(settings: Any) -> Any:
    s = settings.tools.grounder
    kwargs: dict[str, Any] = dict(
        detector=_loc(settings, "tools.grounder.detector", s.detector),
        segmenter=_loc(settings, "tools.grounder.segmenter", s.segmenter),
        box_threshold=s.box_threshold,
        text_threshold=s.text_threshold,
        top_k=s.top_k,
        nms_iou=s.nms_iou,
        vocabulary=open_vocabulary(),
    )
    if settings.tools.image_captioner.impl != "none":
        kwargs["phrase_source"] = build_image_captioner(settings).noun_phrases
    if s.impl == "transformers":
        from tools.grounded_sam import GroundedSam

        return GroundedSam(**kwargs)
    if s.impl == "original":
        from tools.grounded_sam_original import GroundedSamOriginal

        return GroundedSamOriginal(**kwargs)
    raise ConfigError(
        f"tools.grounder.impl '{s.impl}' is not a full-profile grounder (use transformers or original)"
    )


def build_audio_text_scorer(settings: Any) -> Any:
    s = settings.tools.audio_text_scorer
    opts = dict(s.options)
    templates = opts.pop("templates", None) or ["the sound of a {x}"]
    mode = str(opts.pop("mode", "softmax"))
    loc = _loc(settings, "tools.audio_text_scorer.model", s.model)
    if s.impl in ("clap", "transformers"):
        from tools.clap import ClapScorer

        return ClapScorer(loc, templates=templates, mode=mode, options=opts)
    if s.impl == "laion_clap":
        from tools.clap import LaionClapScorer

        return LaionClapScorer(loc, templates=templates, mode=mode, options=opts)
    raise ConfigError(
        f"tools.audio_text_scorer.impl '{s.impl}' is unknown (use clap, laion_clap or tag_embedding)"
    )


def build_audio_captioner(settings: Any) -> Any:
    s = settings.tools.audio_captioner
    if s.impl not in ("qwen2_audio", "qwen2-audio"):
        raise ConfigError(f"tools.audio_captioner.impl '{s.impl}' is unknown (use qwen2_audio or none)")
    from tools.audio_captioner import Qwen2AudioCaptioner

    return Qwen2AudioCaptioner(
        _loc(settings, "tools.audio_captioner.model", s.model), options=dict(s.options)
    )


def build_image_captioner(settings: Any) -> Any:
    s = settings.tools.image_captioner
    if s.impl != "blip":
        raise ConfigError(f"tools.image_captioner.impl '{s.impl}' is unknown (use blip or none)")
    from tools.blip_captioner import BlipCaptioner

    return BlipCaptioner(_loc(settings, "tools.image_captioner.model", s.model), options=dict(s.options))


def build_clip_check(settings: Any) -> Any:
    s = settings.tools.clip_check
    if s.impl != "clip":
        raise ConfigError(f"tools.clip_check.impl '{s.impl}' is unknown (use clip or none)")
    from tools.clip_check import ClipCropChecker

    return ClipCropChecker(_loc(settings, "tools.clip_check.model", s.model), options=dict(s.options))


# --- registry listing ------------------------------------------------------------------------------


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
}


def model_entries(settings: Any) -> list[ModelEntry]:
    """The models these settings would load (full-profile tools only; tools set to 'none' left out),
    plus the spaCy pipeline of the noun phrases."""
    t = settings.tools
    wanted: list[tuple[str, str, Any]] = []
    if t.audio_tagger.impl == "ast":
        wanted.append(("audio_tagger", "ast", t.audio_tagger.model))
    if t.grounder.impl in ("transformers", "original"):
        wanted.append(("grounder.detector", t.grounder.impl, t.grounder.detector))
        wanted.append(("grounder.segmenter", t.grounder.impl, t.grounder.segmenter))
    for name in ("audio_text_scorer", "audio_captioner", "image_captioner", "clip_check"):
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
        loc = hf.locate(key, spec.source, spec.revision, settings.models_dir)
        entries.append(
            ModelEntry(
                key,
                impl,
                loads,
                spec.source,
                spec.revision,
                loc.where,
                loc.is_local,
                hf.available(loc, probe),
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


def _spacy_model(settings: Any) -> str | None:
    t = settings.tools
    for section in (t.image_captioner, t.audio_captioner):
        if section.impl != "none":
            from tools.blip_captioner import DEFAULT_SPACY_MODEL

            return str(section.options.get("spacy_model", DEFAULT_SPACY_MODEL))
    return None


def _spacy_available(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None
