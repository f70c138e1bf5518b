"""Strategies: solvers ``(clip, toolset, settings) -> Answer`` over the same tool protocols.

The seed papers' training-free rows are the baselines, each built from the project's tools so every
strategy sees the same perception; ``agent`` is the LangGraph agent itself. A solver gets only the
``Clip`` (frames and audio; its ``source`` is an opaque id): never a name, category or ground truth.
The one exception is ``oracle-label``, which is given the clip's category on purpose (the
literature's 'clip-level label' setting) and says so in its name.

=================  ==========================================================================
name               what it does
=================  ==========================================================================
audio-cls          audio classification -> segment: each second's top audio tags, mapped onto
                   the object vocabulary (``matcher.sound_sources``), grounded on the frame.
audio-caption      audio captioning -> segment: noun phrases of the audio captions grounded on
                   every frame (needs ``toolset.audio_captioner``; the lite profile has none).
vcap-acls          image caption nouns + audio-text scoring (VCap+ACls): the noun phrases of a
                   frame's image captions scored against that second's audio (CLAP, or tags x
                   embeddings), the best one(s) grounded (needs ``toolset.image_captioner``;
                   the lite profile has none: its detector-label variant is segment-all).
acap-vcls          audio caption nouns + image classification (ACap+VCls): audio-caption noun
                   phrases kept when the frame's classes (``grounder.detect_all`` labels) contain
                   them, then grounded (needs ``toolset.audio_captioner``).
openavs            OpenAVS-style translation: audio descriptions (captions under several
                   prompts, or the audio tags when there is no captioner) translated into
                   visual object phrases; kept when most descriptions agree (prompt
                   consistency) and smoothed over frames (frame consistency), then grounded.
                   With ``llm.backend: rules`` the translation is done by the text matcher
                   (rules translation, marked in ``stats['translation']``); with openai or
                   ollama an LLM translates (``prompts/openavs_translate.md``).
segment-all        segment everything, then associate: every object ``detect_all`` finds,
                   scored against the second's audio; the ones the audio supports are kept.
agent              ``agent.run.run_clip`` (the full agent: propose, verify, segment, retry,
                   propagate).
agent-per-frame    the agent with ``agent.propagate`` off: each frame decided alone (the
                   comparison for propagation).
oracle-label       the clip's category label (e.g. ``dog_barking``) as the audio description,
                   then grounded: an upper bound on the perception, NOT a zero-shot result.
=================  ==========================================================================
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from avs_agent.agent.prompts import load_prompt
from avs_agent.agent.state import DEFAULT_QUESTION
from avs_agent.tools.errors import UserError
from avs_agent.tools.types import Answer, Clip, FrameResult, Segments, TraceStep

Solver = Callable[..., Answer]


class StrategyError(UserError):
    """A strategy cannot run with the chosen profile or settings."""


@dataclass(frozen=True)
class Strategy:
    name: str
    solve: Solver
    doc: str
    needs_label: bool = False
    """True only for oracle strategies: the runner passes ``label=category``."""


# ----------------------------------------------------------------------------- shared helpers


class _Run:
    """Collects the trace and the per-frame results of one solver call."""

    def __init__(self, name: str, clip: Clip):
        self.name = name
        self.clip = clip
        self.trace: list[TraceStep] = []
        self.t0 = time.perf_counter()
        self.stats: dict[str, Any] = {"strategy": name, "llm_calls": 0, "llm_tokens": 0}

    def step(self, message: str, frame: int | None = None, **data: Any) -> None:
        self.trace.append(TraceStep(node=self.name, message=message, frame=frame, data=data))

    def answer(self, phrases_per_frame: list[list[str]], toolset: Any) -> Answer:
        """Ground each frame's phrases and build the answer (union mask per frame)."""
        masks, frames, found = [], [], Counter()
        for i, frame in enumerate(self.clip.frames):
            phrases = list(dict.fromkeys(phrases_per_frame[i]))
            seg = (
                toolset.grounder.ground(frame, phrases)
                if phrases
                else Segments.empty(frame.height, frame.width)
            )
            masks.append(seg.union())
            labels = list(dict.fromkeys(seg.labels))
            found.update(labels)
            frames.append(
                FrameResult(
                    index=i,
                    time_s=frame.time_s,
                    labels=labels,
                    boxes=[[round(float(v), 1) for v in b] for b in seg.xyxy],
                    scores=[round(float(s), 4) for s in seg.confidence],
                    mask_area=round(float(masks[-1].mean()), 5),
                )
            )
            self.step(f"grounded {phrases or 'nothing'} -> {labels or 'no object'}", frame=i, boxes=len(seg))
        labels = [lab for lab, _ in found.most_common()]
        text = (
            f"{', '.join(labels)} (strategy {self.name})"
            if labels
            else f"nothing visible makes this sound (strategy {self.name})"
        )
        self.stats["seconds"] = round(time.perf_counter() - self.t0, 3)
        return Answer(
            question=DEFAULT_QUESTION,
            text=text,
            labels=labels,
            frames=frames,
            masks=masks,
            trace=self.trace,
            stats=self.stats,
        )


def _min_score(settings: Any) -> float:
    return float(settings.agent.min_tag_score)


def _map_sources(toolset: Any, labels: list[str]) -> dict[str, list[tuple[str, float]]]:
    """Audio labels -> vocabulary objects that make them (strongest first)."""
    if not labels:
        return {}
    return dict(zip(labels, toolset.matcher.sound_sources(labels, toolset.vocabulary), strict=True))


def _map_phrases(toolset: Any, phrases: list[str]) -> list[str]:
    """Free phrases -> the grounder's words: vocabulary entries (closed vocabulary) or as they are."""
    if not phrases:
        return []
    if not toolset.closed_vocabulary:
        return phrases
    out = []
    for matches in toolset.matcher.match(phrases, toolset.vocabulary):
        if matches:
            out.append(matches[0][0])
    return list(dict.fromkeys(out))


CLIP_WEIGHT = 0.5
"""Baselines: a second's audio score is the larger of its own and this share of the whole clip's."""


def _audio_choice(toolset: Any, clip: Clip, i: int, names: list[str], settings: Any) -> tuple[list[str], Any]:
    """Names of frame ``i`` scored against its second's audio (and the clip's, at ``CLIP_WEIGHT``):
    the best one, plus any at least ``agent.second_source_ratio`` as strong, above the tag floor.
    Returns (chosen names strongest first, scores)."""
    scores = toolset.scorer.score([clip.segments[i], clip.audio], names)
    s = np.maximum(scores[0], CLIP_WEIGHT * scores[1])
    floor, ratio, best = _min_score(settings), float(settings.agent.second_source_ratio), float(s.max())
    ranked = sorted(zip(names, s, strict=True), key=lambda kv: -kv[1])
    return [n for n, v in ranked if v >= floor and v >= ratio * best], s


def _need(toolset: Any, tool: str, name: str) -> None:
    if getattr(toolset, tool) is None:
        what = tool.replace("_", " ")
        raise StrategyError(
            f"strategy '{name}' needs an {what}, and this profile has none (set tools.{tool}, e.g. --profile full)"
        )


def _audio_caption_nouns(toolset: Any, clip: Clip) -> list[list[str]]:
    """Per frame: noun phrases of the captions of that second plus those of the whole clip."""
    caps = toolset.audio_captioner.caption([*clip.segments, clip.audio])
    whole = caps[-1].noun_phrases
    return [list(dict.fromkeys([*c.noun_phrases, *whole])) for c in caps[:-1]]


def _top_tags(
    toolset: Any, clip: Clip, settings: Any
) -> tuple[list[list[tuple[str, float]]], list[tuple[str, float]]]:
    tags = toolset.tagger.tag([*clip.segments, clip.audio])
    k, floor = int(settings.agent.max_tags), _min_score(settings)
    return [t.top(k, floor) for t in tags[:-1]], tags[-1].top(k, floor)


# ----------------------------------------------------------------------------- strategies


def audio_cls(clip: Clip, toolset: Any, settings: Any) -> Answer:
    run = _Run("audio-cls", clip)
    per_frame, whole = _top_tags(toolset, clip, settings)
    sources = _map_sources(toolset, sorted({lab for tags in [*per_frame, whole] for lab, _ in tags}))
    phrases = []
    for i, tags in enumerate(per_frame):
        best: dict[str, float] = {}
        for label, score in tags or whole:
            for obj, strength in sources.get(label, []):
                best[obj] = max(best.get(obj, 0.0), score * strength)
        chosen = sorted(best, key=lambda o: -best[o])[:1]
        if not chosen and not toolset.closed_vocabulary and tags:
            chosen = [tags[0][0]]  # open vocabulary: ground the tag itself
        run.step(f"tags {tags[:3]} -> {chosen}", frame=i)
        phrases.append(chosen)
    return run.answer(phrases, toolset)


def audio_caption(clip: Clip, toolset: Any, settings: Any) -> Answer:
    _need(toolset, "audio_captioner", "audio-caption")
    run = _Run("audio-caption", clip)
    nouns = _audio_caption_nouns(toolset, clip)
    phrases = []
    for i, ns in enumerate(nouns):
        mapped = _map_phrases(toolset, ns)
        run.step(f"audio caption nouns {ns} -> {mapped}", frame=i)
        phrases.append(mapped)
    return run.answer(phrases, toolset)


def vcap_acls(clip: Clip, toolset: Any, settings: Any) -> Answer:
    _need(toolset, "image_captioner", "vcap-acls")
    run = _Run("vcap-acls", clip)
    caps = toolset.image_captioner.caption(clip.frames)
    phrases = []
    for i, cap in enumerate(caps):
        nouns = list(dict.fromkeys(cap.noun_phrases))
        if not nouns:
            phrases.append([])
            run.step("the caption names nothing", frame=i)
            continue
        chosen, s = _audio_choice(toolset, clip, i, nouns, settings)
        run.step(f"caption nouns {nouns}, audio scores {np.round(s, 3).tolist()} -> {chosen}", frame=i)
        phrases.append(_map_phrases(toolset, chosen))
    return run.answer(phrases, toolset)


def acap_vcls(clip: Clip, toolset: Any, settings: Any) -> Answer:
    _need(toolset, "audio_captioner", "acap-vcls")
    run = _Run("acap-vcls", clip)
    nouns = _audio_caption_nouns(toolset, clip)
    phrases = []
    for i, frame in enumerate(clip.frames):
        classes = list(dict.fromkeys(toolset.grounder.detect_all(frame).labels))
        kept = []
        if classes and nouns[i]:
            for noun, matches in zip(nouns[i], toolset.matcher.match(nouns[i], classes), strict=True):
                if matches:
                    kept.append(matches[0][0] if toolset.closed_vocabulary else noun)
        run.step(f"audio nouns {nouns[i]}, frame classes {classes} -> {kept}", frame=i)
        phrases.append(list(dict.fromkeys(kept)))
    return run.answer(phrases, toolset)


def _translate_rules(toolset: Any, descriptions: list[str]) -> list[list[str]]:
    """Each description -> the vocabulary objects that could make it (text matcher)."""
    if not descriptions:
        return []
    srcs = toolset.matcher.sound_sources(descriptions, toolset.vocabulary)
    out = []
    for desc, matches in zip(descriptions, srcs, strict=True):
        objs = [o for o, _ in matches[:2]]
        if not objs:  # a free-text description: match its words directly
            objs = _map_phrases(toolset, [desc])
        out.append(objs)
    return out


def _translate_llm(settings: Any, toolset: Any, descriptions: list[str], run: _Run) -> list[list[str]]:
    """Ask the configured LLM (agent.llm.make_chat_model) to name the visible objects each description
    implies. A call that fails (timeout, refused, server error after the client's retries) or answers
    nothing usable falls back to the rules translation for that description, and the trace says so."""
    try:
        from avs_agent.agent.llm import make_chat_model

        llm = make_chat_model(settings.llm)
    except ImportError:
        raise StrategyError(
            f"llm.backend={settings.llm.backend} needs the 'llm' extra (pip install avs-agent[llm])"
        ) from None
    template = load_prompt("openavs_translate")
    out = []
    for desc in descriptions:
        try:
            msg = llm.invoke(template.render(description=desc))
        except Exception as exc:  # the network or the server: the rules translate this one
            run.stats["translation_fallbacks"] = run.stats.get("translation_fallbacks", 0) + 1
            run.step(f"LLM translation of {desc!r} failed ({type(exc).__name__}); the rules translate it")
            out.extend(_translate_rules(toolset, [desc]))
            continue
        run.stats["llm_calls"] += 1
        usage = getattr(msg, "usage_metadata", None) or {}
        run.stats["llm_tokens"] += int(usage.get("total_tokens", 0))
        objs = [
            w.strip().strip(".").lower()
            for w in str(msg.content).replace("\n", ",").split(",")
            if w.strip() and w.strip().strip(".").lower() != "none"
        ][:3]
        run.step(f"LLM translated {desc!r} -> {objs or 'none'}")
        out.append(objs)
    return out


def openavs(clip: Clip, toolset: Any, settings: Any) -> Answer:
    run = _Run("openavs", clip)
    # 1. audio descriptions per second: captions under several prompts, or the top tags
    if toolset.audio_captioner is not None:
        caps = toolset.audio_captioner.caption(clip.segments)
        descriptions = [c.texts for c in caps]
        run.stats["descriptions_from"] = "audio_captioner"
    else:
        per_frame, whole = _top_tags(toolset, clip, settings)
        descriptions = [[lab for lab, _ in (tags or whole)[:3]] for tags in per_frame]
        run.stats["descriptions_from"] = "audio_tags"
    # 2. translation into visual objects
    flat = sorted({d for ds in descriptions for d in ds})
    if settings.llm.backend == "rules":
        table = dict(zip(flat, _translate_rules(toolset, flat), strict=True))
        run.stats["translation"] = "rules"
    else:
        table = dict(zip(flat, _translate_llm(settings, toolset, flat, run), strict=True))
        run.stats["translation"] = f"llm:{settings.llm.backend}"
    # 3. prompt consistency: an object must be named by at least half of a second's descriptions
    per_frame_objs = []
    for i, ds in enumerate(descriptions):
        votes = Counter(o for d in ds for o in dict.fromkeys(table.get(d, [])))
        need = max(1, (len(ds) + 1) // 2) if toolset.audio_captioner is not None else 1
        objs = [o for o, n in votes.most_common() if n >= need][:2]
        per_frame_objs.append(objs)
        run.step(f"descriptions {ds} -> {objs}", frame=i)
    # 4. frame consistency: keep objects found in at least half of the seconds, on every second
    counts = Counter(o for objs in per_frame_objs for o in objs)
    n = len(per_frame_objs)
    steady = [o for o, c in counts.most_common() if c * 2 >= n]
    phrases = []
    for objs in per_frame_objs:
        kept = [o for o in objs if o in steady] or ([steady[0]] if steady and objs else [])
        phrases.append(_map_phrases(toolset, kept) if run.stats["translation"] != "rules" else kept)
    run.step(f"frame consistency keeps {steady}")
    return run.answer(phrases, toolset)


def segment_all(clip: Clip, toolset: Any, settings: Any) -> Answer:
    run = _Run("segment-all", clip)
    phrases = []
    for i, frame in enumerate(clip.frames):
        seg = toolset.grounder.detect_all(frame)
        names = list(dict.fromkeys(seg.labels))
        if not names:
            phrases.append([])
            run.step("detect_all found nothing", frame=i)
            continue
        kept, s = _audio_choice(toolset, clip, i, names, settings)
        run.step(f"detected {names}, audio scores {np.round(s, 3).tolist()} -> {kept}", frame=i)
        phrases.append(kept)
    return run.answer(phrases, toolset)


def agent(clip: Clip, toolset: Any, settings: Any) -> Answer:
    from avs_agent.agent.run import run_clip

    return run_clip(clip, settings, toolset)


def agent_per_frame(clip: Clip, toolset: Any, settings: Any) -> Answer:
    from avs_agent.agent.run import run_clip

    off = settings.model_copy(update={"agent": settings.agent.model_copy(update={"propagate": False})})
    return run_clip(clip, off, toolset)


def oracle_label(clip: Clip, toolset: Any, settings: Any, label: str = "") -> Answer:
    run = _Run("oracle-label", clip)
    words = label.replace("_", " ").strip()
    objs = [o for o, _ in (toolset.matcher.sound_sources([words], toolset.vocabulary)[0] if words else [])][
        :1
    ]
    if not objs and words:
        objs = _map_phrases(toolset, [words])[:1]
    run.step(f"category label '{words}' -> {objs} (oracle: uses the label)")
    run.stats["oracle"] = True
    return run.answer([objs for _ in clip.frames], toolset)


STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in (
        Strategy("audio-cls", audio_cls, "audio classification -> segment"),
        Strategy("audio-caption", audio_caption, "audio captioning -> segment"),
        Strategy("vcap-acls", vcap_acls, "image caption nouns + audio-text scoring"),
        Strategy("acap-vcls", acap_vcls, "audio caption nouns + image classification"),
        Strategy("openavs", openavs, "OpenAVS-style translation with prompt and frame consistency"),
        Strategy("segment-all", segment_all, "segment everything, then associate with the audio"),
        Strategy("agent", agent, "the agent (agent.run.run_clip)"),
        Strategy("agent-per-frame", agent_per_frame, "the agent with agent.propagate off (each frame alone)"),
        Strategy(
            "oracle-label", oracle_label, "ORACLE: the category label as the description", needs_label=True
        ),
    )
}


def get_strategy(name: str) -> Strategy:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise StrategyError(f"unknown strategy '{name}': use one of {', '.join(STRATEGIES)}") from None
