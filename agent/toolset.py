"""Wiring of tools from settings: the one place that decides which implementation runs.

``build_toolset(settings)`` returns a ``Toolset`` whose members satisfy the protocols in
``tools.protocols``. Tools load their models lazily, so building a toolset is cheap; ``get_toolset``
caches one per distinct settings in the process.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from agent.settings import Settings
from tools.protocols import (
    AudioCaptioner,
    AudioTagger,
    AudioTextScorer,
    CropChecker,
    Grounder,
    ImageCaptioner,
    TextMatcher,
)


@dataclass
class Toolset:
    tagger: AudioTagger
    grounder: Grounder
    scorer: AudioTextScorer
    matcher: TextMatcher
    vocabulary: list[str]
    """Object names the rules may propose: the detector's classes (lite) or an open list (full)."""
    audio_captioner: AudioCaptioner | None = None
    image_captioner: ImageCaptioner | None = None
    crop_checker: CropChecker | None = None
    independent_scorer: bool = False
    """The scorer is a model of its own (CLAP), not the audio tags read through the text matcher: its
    scores then enter the decision as the 'clap' term (agent/decision.py)."""

    @property
    def closed_vocabulary(self) -> bool:
        return self.grounder.name.startswith("lite")


def build_toolset(settings: Settings) -> Toolset:
    tools = settings.tools
    if tools.backend != "local":
        from tools.remote import build_remote_toolset

        return build_remote_toolset(settings)

    from tools.text_matcher import EmbeddingTextMatcher, MiniLMEmbedder
    from tools.vocab import COCO80

    embedder = MiniLMEmbedder(
        tools.text_embedder.model.source, tools.text_embedder.model.revision, settings.models_dir
    )
    matcher = EmbeddingTextMatcher(
        embedder,
        ontology_path=settings.resolve(tools.text_embedder.ontology),
        threshold=tools.text_embedder.match_threshold,
    )

    if tools.audio_tagger.impl == "yamnet":
        from tools.yamnet import YamnetTagger

        tagger: AudioTagger = YamnetTagger(
            settings.resolve(tools.audio_tagger.model.source),
            settings.resolve(tools.audio_tagger.class_map or "yamnet/yamnet_class_map.csv"),
        )
    else:
        from tools.full_registry import build_audio_tagger

        tagger = build_audio_tagger(settings)

    if tools.grounder.impl == "lite":
        from tools.lite_grounder import LiteGrounder

        grounder: Grounder = LiteGrounder(
            detector_path=settings.resolve(tools.grounder.detector.source),
            segmenter_path=settings.resolve(tools.grounder.segmenter.source),
            matcher=matcher,
            box_threshold=tools.grounder.box_threshold,
            nms_iou=tools.grounder.nms_iou,
            top_k=tools.grounder.top_k,
        )
        vocabulary = list(COCO80)
    else:
        from tools.full_registry import build_grounder, open_vocabulary

        grounder = build_grounder(settings)
        vocabulary = open_vocabulary()

    scorer_impl = tools.audio_text_scorer.impl
    if scorer_impl in ("tag_embedding", "none"):
        from tools.tag_scorer import TagEmbeddingScorer

        scorer: AudioTextScorer = TagEmbeddingScorer(tagger, matcher)
    else:
        from tools.full_registry import build_audio_text_scorer

        scorer = build_audio_text_scorer(settings)

    optional = {}
    for key, attr in (
        ("audio_captioner", "audio_captioner"),
        ("image_captioner", "image_captioner"),
        ("clip_check", "crop_checker"),
    ):
        if getattr(tools, key).impl != "none":
            from tools import full_registry

            optional[attr] = getattr(full_registry, f"build_{key}")(settings)

    return Toolset(
        tagger=tagger,
        grounder=grounder,
        scorer=scorer,
        matcher=matcher,
        vocabulary=vocabulary,
        independent_scorer=scorer_impl not in ("tag_embedding", "none"),
        **optional,
    )


_CACHE: dict[str, Toolset] = {}


def get_toolset(settings: Settings) -> Toolset:
    """The process-wide toolset for these settings (models stay loaded between clips)."""
    key = json.dumps(settings.tools.model_dump(mode="json"), sort_keys=True) + str(settings.models_dir)
    if key not in _CACHE:
        _CACHE[key] = build_toolset(settings)
    return _CACHE[key]
