"""The evidence: audio terms from the tags, the candidates' priors, score and rank, the evidence table per frame and the off-screen evidence behind 'none'."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from avs_agent.agent.decision.instances import detection, instances, visible_phrases
from avs_agent.agent.settings import AgentSettings, DecisionSettings
from avs_agent.tools.protocols import TextMatcher
from avs_agent.tools.types import AudioTags, Segments


@dataclass
class AudioTerms:
    """Audio evidence for one phrase from one audio segment's tags (and the scorer)."""

    tag: float = 0.0
    tag_from: str = ""
    parent: float = 0.0
    parent_from: str = ""
    clap: float = 0.0


@dataclass
class Candidate:
    """One visible candidate on one frame, with its evidence terms and score."""

    phrase: str
    audio: float
    detector: float
    salience: float
    support: float
    labels: list[str] = field(default_factory=list)
    """The audio labels its audio evidence comes from."""
    sources: list[str] = field(default_factory=list)
    """Named evidence, e.g. ['tag:Bark 0.91', 'detector 0.87']."""
    crop: float | None = None
    score: float = 0.0
    rank: float = 0.0


@dataclass
class FrameEvidence:
    """One frame's row of the evidence table: its candidates (best rank first) and the none option."""

    candidates: list[Candidate]
    offscreen: float
    offscreen_from: str
    none_score: float
    silent: bool = False
    clip: str = ""
    """With ``none_per_clip``, the clip's decision: "visible" (its best candidate beats 'none' over the
    clip, so every frame takes its best candidate) or "offscreen" (none does: no frame takes one);
    "" when each frame decides alone."""

    @property
    def above_none(self) -> list[Candidate]:
        if self.clip == "offscreen":
            return []
        if self.clip == "visible":
            return list(self.candidates)
        return [c for c in self.candidates if c.score > self.none_score]


def _read_tags(
    tags: AudioTags, phrases: list[str], matcher: TextMatcher, config: AgentSettings
) -> tuple[
    list[tuple[str, float]],
    list[list[tuple[str, float]]],
    list[tuple[str, float]],
    list[list[tuple[str, float]]],
]:
    """A segment's top tags split by the matcher: (top tags, what each covers (generic labels),
    the specific tags, what each of those names)."""
    top = tags.top(config.max_tags, config.min_tag_score)
    if not top or not phrases:
        return [], [], [], []
    covered = matcher.covers([lab for lab, _ in top], phrases)
    specific = [(lab, s) for (lab, s), cov in zip(top, covered, strict=True) if not cov]
    named = matcher.sound_sources([lab for lab, _ in specific], phrases) if specific else []
    return top, covered, specific, named


def tag_terms(
    tags: AudioTags, phrases: list[str], matcher: TextMatcher, config: AgentSettings
) -> dict[str, AudioTerms]:
    """Per phrase, its tag and generic-parent evidence from one segment's tags (residuals unscaled)."""
    out = {p: AudioTerms() for p in phrases}
    top, covered, specific, named = _read_tags(tags, phrases, matcher, config)
    names: dict[str, set[str]] = {}
    for (lab, s), matches in zip(specific, named, strict=True):
        names[lab] = {p for p, _ in matches}
        for p, strength in matches:
            v = s * strength
            if v > out[p].tag:
                out[p].tag, out[p].tag_from = v, lab
    cover_sets = [{p for p, _ in cov} for cov in covered]
    for (lab, s), cov, under in zip(top, covered, cover_sets, strict=True):
        if not cov:
            continue
        # explained by a specific tag naming something under it, or by a narrower generic tag under
        # it ('Domestic animals, pets' under 'Animal': a meow's 'Animal' lends nothing to the cow)
        explained = max(
            [s2 for lab2, s2 in specific if names.get(lab2, set()) & under]
            + [s2 for (_, s2), u2 in zip(top, cover_sets, strict=True) if u2 and u2 < under],
            default=0.0,
        )
        residual = max(0.0, s - explained)
        for p, strength in cov:
            v = residual * strength
            if v > out[p].parent:
                out[p].parent, out[p].parent_from = v, lab
    return out


class Offscreen(NamedTuple):
    """The strongest tag of a stretch of audio whose sources are named and none of them is visible."""

    score: float
    label: str


class OffscreenRow(NamedTuple):
    """One frame's off-screen evidence: of its own second and of the whole clip."""

    frame: float
    frame_label: str
    clip: float
    clip_label: str


class FusedAudio(NamedTuple):
    """A phrase's audio evidence on one frame: the value, its sources as text, the labels behind it."""

    value: float
    sources: list[str]
    labels: list[str]


def offscreen_evidence(
    tags: AudioTags, visible: set[str], phrases: list[str], matcher: TextMatcher, config: AgentSettings
) -> Offscreen:
    """The strongest specific tag whose sources (among ``phrases``) are named and none is visible."""
    _, _, specific, named = _read_tags(tags, phrases, matcher, config)
    best, best_from = 0.0, ""
    for (lab, s), matches in zip(specific, named, strict=True):
        if matches and not ({p for p, _ in matches} & visible) and s > best:
            best, best_from = s, lab
    return Offscreen(best, best_from)


def fuse_audio(frame: AudioTerms, clip: AudioTerms, p: DecisionSettings) -> FusedAudio:
    """(audio evidence, its sources as text, the audio labels behind it) of one phrase on one frame."""
    terms = []
    for where, t, w in (("", frame, 1.0), ("clip ", clip, p.clip_weight)):
        if t.tag > 0:
            terms.append((w * t.tag, f"{where}tag:{t.tag_from} {t.tag:.2f}", t.tag_from))
        if t.parent > 0:
            terms.append(
                (
                    w * p.generic_share * t.parent,
                    f"{where}parent:{t.parent_from} {t.parent:.2f}",
                    t.parent_from,
                )
            )
        if t.clap > 0:
            terms.append((w * t.clap, f"{where}clap {t.clap:.2f}", ""))
    if not terms:
        return FusedAudio(0.0, [], [])
    best = max(v for v, _, _ in terms)
    kept = sorted((t for t in terms if t[0] > 0), key=lambda t: -t[0])[:3]
    return FusedAudio(best, [s for _, s, _ in kept], list(dict.fromkeys(lab for _, _, lab in kept if lab)))


def _prior(c: Candidate, p: DecisionSettings) -> float:
    prior = p.w_detector * c.detector + p.w_salience * c.salience + p.w_support * c.support
    if c.crop is not None:
        prior += p.w_crop * (c.crop - 0.5)
    return prior


def score(c: Candidate, p: DecisionSettings) -> float:
    return c.audio * math.exp(_prior(c, p))


def rank(c: Candidate, p: DecisionSettings) -> float:
    return c.audio**p.rank_audio_power * math.exp(_prior(c, p))


def build_table(
    frame_terms: list[dict[str, AudioTerms]],
    clip_terms: dict[str, AudioTerms],
    found: list[dict[str, Segments]],
    offscreen: list[OffscreenRow],
    silent: list[bool],
    p: DecisionSettings,
    origin: dict[str, str] | None = None,
) -> list[FrameEvidence]:
    """The evidence table: per frame, the visible candidates scored, and the none option.

    frame_terms: per frame, phrase -> its audio terms from that second; clip_terms: the same for the
    whole clip; found: per frame, phrase -> its instances as grounded (any score; the detection floor
    is applied here); offscreen: per frame, (offscreen evidence of that second, its tag, of the whole
    clip, its tag), see ``offscreen_evidence``; origin: phrase -> where it was proposed besides the
    audio tags ('caption', 'audio-caption'), named first among its sources."""
    n = len(found)
    origin = origin or {}
    kept = [
        {ph: d for ph, seg in f.items() if (d := detection(seg, p.detection_floor)) is not None}
        for f in found
    ]
    support: dict[str, float] = {}
    for f in kept:
        for ph, seg in f.items():
            support[ph] = support.get(ph, 0.0) + float(seg.confidence.max()) / n
    table = []
    for t in range(n):
        f_off, f_from, c_off, c_from = offscreen[t]
        off, off_from = (f_off, f_from) if f_off >= p.clip_weight * c_off else (p.clip_weight * c_off, c_from)
        none = p.none_bias + p.none_offscreen * off
        cands = []
        if not silent[t]:
            for ph, seg in kept[t].items():
                audio, sources, labels = fuse_audio(
                    frame_terms[t].get(ph, AudioTerms()), clip_terms.get(ph, AudioTerms()), p
                )
                if audio <= 0:
                    continue
                inst = instances(seg, p)
                h, w = inst.shape
                c = Candidate(
                    phrase=ph,
                    audio=round(audio, 4),
                    detector=round(float(seg.confidence.max()), 4),
                    salience=round(float(inst.union().sum()) / max(h * w, 1), 4),
                    support=round(support[ph], 4),
                    labels=labels,
                    sources=[
                        *([f"{origin[ph]}:{ph}"] if ph in origin else []),
                        *sources,
                        f"detector {float(seg.confidence.max()):.2f}",
                    ],
                )
                c.score = round(score(c, p), 5)
                c.rank = round(rank(c, p), 5)
                cands.append(c)
        cands.sort(key=lambda c: -c.rank)
        table.append(FrameEvidence(cands, round(off, 4), off_from, round(none, 5), silent[t]))
    if p.none_per_clip and table:
        verdict = "visible" if clip_visible(table) else "offscreen"
        for row in table:
            row.clip = verdict
    return table


def clip_scores(
    table: list[FrameEvidence], above_none: bool = False, key: Literal["score", "rank"] = "score"
) -> dict[str, float]:
    """Per phrase, its clip score: its mean score over the frames (0 where it is not a candidate, or,
    with ``above_none``, not above that frame's none); ``key="rank"``: its mean rank instead (how the
    visible candidates compare with each other)."""
    totals: dict[str, float] = {}
    for row in table:
        for c in row.above_none if above_none else row.candidates:
            totals[c.phrase] = totals.get(c.phrase, 0.0) + getattr(c, key) / len(table)
    return totals


def clip_visible(table: list[FrameEvidence]) -> bool:
    """Does a visible object make the clip's sound? Its best candidate's clip score beats the clip's
    none (the mean none score)."""
    totals = clip_scores(table)
    none = sum(row.none_score for row in table) / len(table)
    return bool(totals) and max(totals.values()) > none


def audio_phrases(terms: list[dict[str, AudioTerms]]) -> list[str]:
    """The phrases some second (or the clip) gives audio evidence: the audio -> objects candidates."""
    out: dict[str, None] = {}
    for row in terms:
        for ph, t in row.items():
            if t.tag > 0 or t.parent > 0 or t.clap > 0:
                out[ph] = None
    return list(out)


def offscreen_rows(
    frame_tags: list[AudioTags],
    clip_tags: AudioTags,
    found: list[dict[str, Segments]],
    phrases: list[str],
    matcher: TextMatcher,
    config: AgentSettings,
    p: DecisionSettings,
) -> list[OffscreenRow]:
    """Per frame, the offscreen evidence of its second and of the whole clip, see build_table. The
    clip's tags are read against what any of its frames shows (a dog seen in three of five frames is
    no off-screen source of the clip's bark); a second's tags against what its own frame shows, or,
    when 'none' is weighed once for the clip (``p.none_per_clip``: a source is in view for its whole
    clip or not at all), against what any frame shows too: the bark in a second where the dog is
    out of view or missed is the seen dog's, not evidence that the clip's source is off screen."""
    visible = [visible_phrases(f, p) for f in found]
    anywhere = set().union(*visible) if visible else set()
    clip_off = offscreen_evidence(clip_tags, anywhere, phrases, matcher, config)
    return [
        OffscreenRow(
            *offscreen_evidence(tags, anywhere if p.none_per_clip else seen, phrases, matcher, config),
            *clip_off,
        )
        for tags, seen in zip(frame_tags, visible, strict=True)
    ]


def candidate_score(row: FrameEvidence, phrase: str) -> float:
    """The score of ``phrase``'s candidate in one frame's row (0 where it is not a candidate)."""
    return next((c.score for c in row.candidates if c.phrase == phrase), 0.0)


@dataclass
class Perception:
    """A clip's tool outputs: everything the decisions read. The graph fills it node by node (perceive,
    propose, verify; the tracker's links in propagate); ``evals.crossval`` runs the graph once per clip,
    keeps this, and runs ``decide_clip`` over it for every parameter draw."""

    frame_tags: list[AudioTags]
    clip_tags: AudioTags
    frame_terms: list[dict[str, AudioTerms]]
    """Per frame, phrase -> its audio terms from that second."""
    clip_terms: dict[str, AudioTerms]
    found: list[dict[str, Segments]]
    """Per frame, phrase -> its instances as grounded (down to the grounding floor)."""
    vocabulary: list[str]
    """The phrases off-screen evidence is read over (the profile's vocabulary and caption nouns)."""
    silent: list[bool]
    shape: tuple[int, int]
    """(H, W) of the analysed frames."""
    origin: dict[str, str] = field(default_factory=dict)

    @property
    def linked(self) -> bool:
        """Whether the instances carry track ids (``link_tracks``: the lite profile's tracker)."""
        return any("track" in seg.data for f in self.found for seg in f.values())


def evidence_table(
    perc: Perception, p: DecisionSettings, config: AgentSettings, matcher: TextMatcher
) -> list[FrameEvidence]:
    """The evidence table of a clip's perception (``build_table`` over its off-screen rows)."""
    off = offscreen_rows(perc.frame_tags, perc.clip_tags, perc.found, perc.vocabulary, matcher, config, p)
    return build_table(perc.frame_terms, perc.clip_terms, perc.found, off, perc.silent, p, perc.origin)
