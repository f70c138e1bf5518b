"""Wiring: the one place that decides which implementation of each tool runs.

``build_toolset(config)`` returns a ``Toolset`` whose members satisfy the protocols in
``tools.protocols``: the lite tools (tools/lite/), the full-profile tools (tools/full/) or, when
``tools.backend`` is a URL, clients of a tool server (tools/server/remote.py). Tools load their models on
first use, so building a toolset is cheap; ``get_toolset`` keeps one per distinct config in the process.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from avs_agent.tools.errors import ConfigError
from avs_agent.tools.full.ast_tagger import AstTagger
from avs_agent.tools.full.audio_captioner import Qwen2AudioCaptioner
from avs_agent.tools.full.blip_captioner import BlipCaptioner
from avs_agent.tools.full.clap import ClapScorer, LaionClapScorer
from avs_agent.tools.full.clip_check import ClipCropChecker
from avs_agent.tools.full.grounded_sam import GroundedSam
from avs_agent.tools.full.grounded_sam_original import GroundedSamOriginal
from avs_agent.tools.full.sam2_video import Sam2Linker, Sam2VideoPropagator
from avs_agent.tools.lite.grounder import LiteGrounder
from avs_agent.tools.lite.tag_scorer import TagEmbeddingScorer
from avs_agent.tools.lite.tracker import InstanceTracker
from avs_agent.tools.lite.yamnet import YamnetTagger
from avs_agent.tools.protocols import (
    AudioCaptioner,
    AudioTagger,
    AudioTextScorer,
    CropChecker,
    FrameByFrame,
    Grounder,
    ImageCaptioner,
    Linker,
    Propagator,
    TextMatcher,
)
from avs_agent.tools.settings import ToolConfig
from avs_agent.tools.text_matcher import EmbeddingTextMatcher, MiniLMEmbedder
from avs_agent.tools.types import Frame
from avs_agent.tools.vocab import COCO80, open_vocabulary


@dataclass
class Toolset:
    """One profile's tools. The agent's nodes call them through their protocols and never ask which
    profile runs: what differs between profiles is in the tools (tools/protocols.py)."""

    tagger: AudioTagger
    grounder: Grounder
    scorer: AudioTextScorer
    matcher: TextMatcher
    vocabulary: list[str]
    """Object names the rules may propose: the detector's classes (lite) or an open list (full)."""
    closed_vocabulary: bool
    """The grounder finds only ``vocabulary``'s names (lite: COCO-80); an open-vocabulary grounder
    (GroundingDINO) takes any phrase. The evals' baselines read it; the agent asks the grounder
    (``proposals``, ``words``)."""
    audio_captioner: AudioCaptioner | None = None
    image_captioner: ImageCaptioner | None = None
    crop_checker: CropChecker | None = None
    linker: Linker = field(default_factory=FrameByFrame)
    """Follows an accepted source through the clip: SAM2's video predictor (full), ByteTrack over the
    detections (lite, and a remote toolset, which links the served detections here); a toolset built
    without one follows nothing."""

    def crop_check(self, frame: Frame) -> Callable[[np.ndarray, list[str]], float] | None:
        """Frame ``frame``'s crop check as the decision takes it (agent/decision/ ``CropFn``: a mask
        (H, W) bool and texts, its label first -> the label's probability), or None without a crop
        checker (the mask is then judged alone)."""
        checker = self.crop_checker
        if checker is None:
            return None

        def crop(mask: np.ndarray, texts: list[str]) -> float:
            return float(checker.check(frame, mask[None], texts)[0, 0])

        return crop


def build_toolset(config: ToolConfig) -> Toolset:
    t = config.tools
    if t.backend != "local":
        from avs_agent.tools.server.remote import build_remote_toolset

        return build_remote_toolset(config)

    vocabulary = list(COCO80) if t.grounder.impl == "lite" else open_vocabulary()
    embedder = MiniLMEmbedder(config.locate("tools.text_embedder.model", t.text_embedder.model))
    matcher = EmbeddingTextMatcher(
        embedder,
        ontology=config.locate("tools.text_embedder.ontology", t.text_embedder.ontology, hub=False),
        threshold=t.text_embedder.match_threshold,
        vocabulary=vocabulary,
    )
    tagger = _tagger(config)
    captioner = _image_captioner(config) if t.image_captioner.impl != "none" else None
    grounder = _grounder(config, matcher, captioner)
    independent = t.audio_text_scorer.impl not in ("tag_embedding", "none")
    scorer = _scorer(config) if independent else TagEmbeddingScorer(tagger, matcher)
    linker = (
        Sam2Linker(_propagator(config))
        if t.propagator.impl != "none"
        else InstanceTracker(fps=config.media.fps)
    )
    return Toolset(
        tagger=tagger,
        grounder=grounder,
        scorer=scorer,
        matcher=matcher,
        vocabulary=vocabulary,
        closed_vocabulary=t.grounder.impl == "lite",
        audio_captioner=_audio_captioner(config) if t.audio_captioner.impl != "none" else None,
        image_captioner=captioner,
        crop_checker=_crop_checker(config) if t.clip_check.impl != "none" else None,
        linker=linker,
    )


_CACHE: dict[str, Toolset] = {}


def get_toolset(config: ToolConfig) -> Toolset:
    """The process-wide toolset for this config (models stay loaded between clips)."""
    key = json.dumps(config.tools.model_dump(mode="json"), sort_keys=True) + str(config.models_dir)
    if key not in _CACHE:
        _CACHE[key] = build_toolset(config)
    return _CACHE[key]


def _tagger(config: ToolConfig) -> AudioTagger:
    s = config.tools.audio_tagger
    if s.impl == "yamnet":
        return YamnetTagger(
            config.locate("tools.audio_tagger.model", s.model, hub=False),
            config.locate(
                "tools.audio_tagger.class_map", s.class_map or "yamnet/yamnet_class_map.csv", hub=False
            ),
        )
    if s.impl == "ast":
        return AstTagger(config.locate("tools.audio_tagger.model", s.model))
    raise ConfigError(f"tools.audio_tagger.impl '{s.impl}' is unknown (use yamnet or ast)")


def _grounder(config: ToolConfig, matcher: TextMatcher, captioner: BlipCaptioner | None) -> Grounder:
    """The grounder. GroundingDINO's phrases for "everything visible" come from the image captioner
    when there is one."""
    s = config.tools.grounder
    if s.impl == "lite":
        lite = LiteGrounder(
            detector=config.locate("tools.grounder.detector", s.detector, hub=False),
            segmenter=config.locate("tools.grounder.segmenter", s.segmenter, hub=False),
            matcher=matcher,
            box_threshold=s.box_threshold,
            nms_iou=s.nms_iou,
            top_k=s.top_k,
        )
        return lite
    kwargs: dict[str, Any] = dict(
        detector=config.locate("tools.grounder.detector", s.detector),
        segmenter=config.locate("tools.grounder.segmenter", s.segmenter),
        box_threshold=s.box_threshold,
        text_threshold=s.text_threshold,
        top_k=s.top_k,
        nms_iou=s.nms_iou,
        vocabulary=open_vocabulary(),
    )
    if captioner is not None:
        kwargs["phrase_source"] = captioner.noun_phrases
    if s.impl == "transformers":
        return GroundedSam(**kwargs)
    if s.impl == "original":
        return GroundedSamOriginal(**kwargs)
    raise ConfigError(f"tools.grounder.impl '{s.impl}' is unknown (use lite, transformers or original)")


def _scorer(config: ToolConfig) -> AudioTextScorer:
    s = config.tools.audio_text_scorer
    opts = dict(s.options)
    templates = opts.pop("templates", None) or ["the sound of a {x}"]
    mode = str(opts.pop("mode", "softmax"))
    if s.impl in ("clap", "transformers"):
        loc = config.locate("tools.audio_text_scorer.model", s.model)
        return ClapScorer(loc, templates=templates, mode=mode, options=opts)
    if s.impl == "laion_clap":
        loc = config.locate("tools.audio_text_scorer.model", s.model)
        return LaionClapScorer(loc, templates=templates, mode=mode, options=opts)
    raise ConfigError(
        f"tools.audio_text_scorer.impl '{s.impl}' is unknown (use clap, laion_clap or tag_embedding)"
    )


def _audio_captioner(config: ToolConfig) -> AudioCaptioner:
    s = config.tools.audio_captioner
    if s.impl not in ("qwen2_audio", "qwen2-audio"):
        raise ConfigError(f"tools.audio_captioner.impl '{s.impl}' is unknown (use qwen2_audio or none)")
    return Qwen2AudioCaptioner(config.locate("tools.audio_captioner.model", s.model), options=dict(s.options))


def _image_captioner(config: ToolConfig) -> BlipCaptioner:
    s = config.tools.image_captioner
    if s.impl != "blip":
        raise ConfigError(f"tools.image_captioner.impl '{s.impl}' is unknown (use blip or none)")
    return BlipCaptioner(config.locate("tools.image_captioner.model", s.model), options=dict(s.options))


def _propagator(config: ToolConfig) -> Propagator:
    s = config.tools.propagator
    if s.impl != "sam2_video":
        raise ConfigError(f"tools.propagator.impl '{s.impl}' is unknown (use sam2_video or none)")
    return Sam2VideoPropagator(config.locate("tools.propagator.model", s.model), options=dict(s.options))


def _crop_checker(config: ToolConfig) -> CropChecker:
    s = config.tools.clip_check
    if s.impl != "clip":
        raise ConfigError(f"tools.clip_check.impl '{s.impl}' is unknown (use clip or none)")
    return ClipCropChecker(config.locate("tools.clip_check.model", s.model), options=dict(s.options))
