"""The graph's nodes. Each reads the state, calls tools or the reasoner, and returns a partial update
with its trace steps. Routing functions are pure and typed with the nodes they lead to."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from langgraph.runtime import Runtime

from agent.llm import LLMReasoner
from agent.rules import RulesReasoner
from agent.settings import Settings
from agent.state import AgentState, Candidate, Choice
from agent.toolset import Toolset
from tools.media import load_clip
from tools.types import Answer, Clip, FrameResult, Segments, TraceStep


@dataclass
class RunContext:
    """What a run needs besides its state: settings, tools and the reasoner (per-run, not persisted)."""

    settings: Settings
    toolset: Toolset
    reasoner: RulesReasoner
    progress: Callable[[str], None] = field(default=lambda msg: None)


MAX_REASONING_CHARS = 300
"""The LLM's reasoning is quoted in the answer up to this length (it is the model's words, not a fact)."""


def _step(node: str, message: str, t0: float, frame: int | None = None, **data) -> TraceStep:
    return TraceStep(
        node=node, message=message, frame=frame, data=data, seconds=round(time.perf_counter() - t0, 4)
    )


# ---------------------------------------------------------------------------------------------- load
def load(state: AgentState, runtime: Runtime[RunContext]) -> dict:
    t0 = time.perf_counter()
    if "clip" in state and state["clip"] is not None:
        clip = state["clip"]
    else:
        m = runtime.context.settings.media
        runtime.context.progress("loading media")
        clip = load_clip(
            state["media"],
            state.get("audio_path"),
            max_seconds=m.max_seconds,
            max_side=m.max_side,
            aspect=m.aspect,
        )
    msg = f"{len(clip.frames)} frame(s) at 1 fps, {clip.duration_s:.2f} s of audio"
    if clip.meta.get("truncated"):
        msg += f" (only the first {runtime.context.settings.media.max_seconds:g} s analysed)"
    return {
        "clip": clip,
        "trace": [_step("load", msg, t0, size=[clip.frames[0].width, clip.frames[0].height])],
    }


# ---------------------------------------------------------------------------------------------- perceive
def perceive(state: AgentState, runtime: Runtime[RunContext]) -> dict:
    ctx = runtime.context
    clip = state["clip"]
    t0 = time.perf_counter()
    ctx.progress("tagging audio")
    tags = ctx.toolset.tagger.tag([*clip.segments, clip.audio])
    frame_tags, clip_tags = tags[:-1], tags[-1]
    steps = [
        _step("perceive", f"audio tags (clip): {_fmt(clip_tags.top(5))}", t0, tool=ctx.toolset.tagger.name)
    ]
    for i, ft in enumerate(frame_tags):
        steps.append(TraceStep(node="perceive", frame=i, message=f"audio tags: {_fmt(ft.top(3))}"))
    update: dict = {"frame_tags": frame_tags, "clip_tags": clip_tags}
    if ctx.toolset.audio_captioner is not None:
        t1 = time.perf_counter()
        update["audio_captions"] = ctx.toolset.audio_captioner.caption([clip.audio])
        steps.append(_step("perceive", f"audio captions: {update['audio_captions'][0].texts}", t1))
    if ctx.toolset.image_captioner is not None:
        t1 = time.perf_counter()
        update["image_captions"] = ctx.toolset.image_captioner.caption(clip.frames)
        for i, cap in enumerate(update["image_captions"]):
            steps.append(
                _step("perceive", f"image caption: {cap.texts[:1]} nouns {cap.noun_phrases}", t1, frame=i)
            )
    update["trace"] = steps
    return update


def _merge(candidates: list[list]) -> list:
    best: dict[str, object] = {}
    for frame in candidates:
        for c in frame:
            if c.phrase not in best or c.evidence > best[c.phrase].evidence:
                best[c.phrase] = c
    return sorted(best.values(), key=lambda c: -c.evidence)


def _prompt_data(
    state: AgentState, ctx: RunContext, frames: list, suggestions: list[tuple[str, float]] | None = None
) -> dict[str, str]:
    """The tool outputs an LLM prompt shows, as plain text lines (placed inside <data> by the template)."""
    question = state.get("question") or ""
    visible = []
    captions = state.get("image_captions") or []
    for frame in frames:
        seen = ctx.toolset.grounder.detect_all(frame)
        labels: dict[str, float] = {}
        for lab, conf in zip(seen.labels, seen.confidence, strict=True):
            labels[lab] = max(labels.get(lab, 0.0), float(conf))
        line = f"frame {frame.index}: " + (
            ", ".join(f"{k} {v:.2f}" for k, v in labels.items()) or "nothing detected"
        )
        if frame.index < len(captions):
            line += (
                f" | caption: {captions[frame.index].texts[:1]} nouns: {captions[frame.index].noun_phrases}"
            )
        visible.append(line)
    audio_caps = state.get("audio_captions") or []
    return {
        "question_block": f"The person asked: {question!r}" if question else "",
        "clip_tags": _fmt(state["clip_tags"].top(8)),
        "frame_tags": "\n".join(f"second {i}: {_fmt(t.top(4))}" for i, t in enumerate(state["frame_tags"])),
        "audio_captions": "\n".join(f"- {t}" for cap in audio_caps for t in cap.texts)
        or "(no audio captioner in this profile)",
        "visible": "\n".join(visible),
        "suggestions": ", ".join(f"{p}: {e:.2f}" for p, e in (suggestions or [])) or "none",
    }


def _fmt(pairs: list[tuple[str, float]]) -> str:
    return ", ".join(f"{label} {score:.2f}" for label, score in pairs) or "none"


# ---------------------------------------------------------------------------------------------- propose
def propose(state: AgentState, runtime: Runtime[RunContext]) -> dict:
    ctx = runtime.context
    clip = state["clip"]
    t0 = time.perf_counter()
    labels = ctx.reasoner.source_labels(state["frame_tags"], state["clip_tags"])
    sources = ctx.toolset.matcher.sound_sources(labels, ctx.toolset.vocabulary) if labels else []
    because: dict[str, list[str]] = {}
    for label, matches in zip(labels, sources, strict=True):
        for phrase, _ in matches:
            because.setdefault(phrase, []).append(label)
    phrases = list(because)
    if phrases:
        evidence = ctx.toolset.scorer.score([*clip.segments, clip.audio], phrases)
    else:
        evidence = np.zeros((len(clip.segments) + 1, 0), np.float32)
    silence = ctx.settings.agent.silence_rms
    # Only a silent clip is silent: a pause in a dog's barking does not stop the dog being the source
    # (frame consistency; AVSBench masks the source on every frame of its clip).
    silent = [clip.audio.rms < silence] * len(clip.segments)
    candidates = ctx.reasoner.propose(phrases, because, evidence, silent)
    steps = [
        _step(
            "propose",
            f"sound sources considered: {', '.join(phrases) or 'none'}",
            t0,
            labels=labels,
            scorer=ctx.toolset.scorer.name,
        )
    ]
    llm_stats: list[dict] = []
    llm_reasoning = ""
    forced = state.get("force_phrases") or []
    if forced:
        scores = ctx.toolset.scorer.score([*clip.segments, clip.audio], forced)
        candidates = [
            [
                Candidate(
                    phrase=p,
                    evidence=round(float(max(scores[i, j], 0.5 * scores[-1, j])), 4),
                    because=["asked"],
                )
                for j, p in enumerate(forced)
            ]
            for i in range(len(clip.frames))
        ]
        steps.append(
            TraceStep(node="propose", message=f"segmenting what the person asked for: {', '.join(forced)}")
        )
    elif isinstance(ctx.reasoner, LLMReasoner):
        t1 = time.perf_counter()
        ctx.progress("asking the LLM")
        data = _prompt_data(
            state, ctx, clip.frames, suggestions=[(c.phrase, c.evidence) for c in _merge(candidates)]
        )
        per_frame, not_visible, reasoning, llm_stats, error = ctx.reasoner.propose_llm(data, len(clip.frames))
        if per_frame is None:
            steps.append(
                _step(
                    "propose", f"LLM propose failed ({error}); the rules decided", t1, llm=ctx.reasoner.name
                )
            )
        else:
            llm_reasoning = " ".join(str(reasoning).split())[:MAX_REASONING_CHARS]
            new_phrases = sorted({p for frame in per_frame for p in frame})
            scores = (
                ctx.toolset.scorer.score([*clip.segments, clip.audio], new_phrases)
                if new_phrases
                else np.zeros((len(clip.segments) + 1, 0))
            )
            candidates = []
            for i, frame in enumerate(per_frame):
                if silent[i]:
                    candidates.append([])
                    continue
                ev = {
                    p: float(max(scores[i, new_phrases.index(p)], 0.5 * scores[-1, new_phrases.index(p)]))
                    for p in frame
                }
                candidates.append(ctx.reasoner.candidates_from([frame], ev)[0])
            steps.append(
                _step(
                    "propose",
                    f"LLM ({ctx.reasoner.name}) proposes: {reasoning}",
                    t1,
                    llm=ctx.reasoner.name,
                    not_visible=not_visible,
                    tokens=sum(s["tokens"] for s in llm_stats),
                )
            )
    for i, cands in enumerate(candidates):
        text = (
            "silent"
            if silent[i]
            else (", ".join(f"{c.phrase} {c.evidence:.2f}" for c in cands) or "no candidate")
        )
        steps.append(TraceStep(node="propose", frame=i, message=f"candidates: {text}"))
    return {"candidates": candidates, "trace": steps, "llm_stats": llm_stats, "llm_reasoning": llm_reasoning}


# ---------------------------------------------------------------------------------------------- verify
def verify(state: AgentState, runtime: Runtime[RunContext]) -> dict:
    ctx = runtime.context
    clip = state["clip"]
    ctx.progress("finding candidates in the frames")
    visible_all, groundings, choices, steps = [], [], [], []
    for frame, cands in zip(clip.frames, state["candidates"], strict=True):
        t0 = time.perf_counter()
        found: dict[str, Segments] = {}
        if cands:
            seg = ctx.toolset.grounder.ground(frame, [c.phrase for c in cands])
            for c in cands:
                sel = seg[np.asarray([lab == c.phrase for lab in seg.labels], bool)] if len(seg) else seg
                found[c.phrase] = sel
        visible = ctx.reasoner.verify(cands, found)
        rejected = [c.phrase for c in cands if c not in visible]
        msg = f"visible: {', '.join(c.phrase for c in visible) or 'none'}"
        if rejected:
            msg += f"; not visible: {', '.join(rejected)}"
        steps.append(_step("verify", msg, t0, frame=frame.index, rejected=rejected))
        visible_all.append(visible)
        groundings.append(found)
    relaxed = _look_again(ctx, clip, state["candidates"], visible_all, groundings, steps)
    for i, phrases in enumerate(_clip_choices(ctx, visible_all, steps)):
        choices.append(
            Choice(
                phrases=phrases,
                status="pending" if phrases else "none",
                reason="" if phrases else "no visible candidate",
                relaxed=i in relaxed,
            )
        )
    return {"visible": visible_all, "groundings": groundings, "choices": choices, "trace": steps}


def _look_again(
    ctx: RunContext,
    clip: Clip,
    candidates: list[list[Candidate]],
    visible_all: list[list[Candidate]],
    groundings: list[dict[str, Segments]],
    steps: list[TraceStep],
) -> set[int]:
    """Frame consistency, part 1: a source seen in most frames is looked for again, at a lowered
    threshold, in the frames where nothing was found, also where a distractor's loud second crowded it
    out of the candidates (with the least evidence it had where it was seen). A silent frame (no
    candidates) stays silent. Updates ``visible_all``/``groundings`` in place; returns the frames whose
    candidates this look found."""
    consistent = ctx.reasoner.consistent_phrases(visible_all)
    thr = ctx.settings.tools.grounder.box_threshold * ctx.settings.agent.consistency_threshold
    seen: dict[str, Candidate] = {}
    for cand in (c for visible in visible_all for c in visible if c.phrase in consistent):
        if cand.phrase not in seen or cand.evidence < seen[cand.phrase].evidence:
            seen[cand.phrase] = cand
    relaxed: set[int] = set()
    for i, (frame, cands, visible, found) in enumerate(
        zip(clip.frames, candidates, visible_all, groundings, strict=True)
    ):
        if visible or not cands:
            continue
        here = {c.phrase for c in cands}
        extra = [c for p, c in seen.items() if p not in here]
        missing = [c for c in cands if c.phrase in consistent] + extra
        if not missing:
            continue
        t0 = time.perf_counter()
        seg = ctx.toolset.grounder.ground(frame, [c.phrase for c in missing], box_threshold=thr)
        for c in missing:
            sel = seg[np.asarray([lab == c.phrase for lab in seg.labels], bool)] if len(seg) else seg
            if len(sel):
                found[c.phrase] = sel
        visible[:] = ctx.reasoner.verify([*cands, *extra], found)
        if visible:
            relaxed.add(i)
        steps.append(
            _step(
                "verify",
                f"looked again at threshold {thr:.2f} for {', '.join(c.phrase for c in missing)} (seen in other frames): visible: {', '.join(c.phrase for c in visible) or 'none'}",
                t0,
                frame=frame.index,
            )
        )
    return relaxed


def _clip_choices(
    ctx: RunContext, visible_all: list[list[Candidate]], steps: list[TraceStep]
) -> list[list[str]]:
    """Frame consistency, part 2: each frame's pick, then the clip's sources (chosen in most frames)
    wherever they are visible instead. Reorders a changed frame's visible list so a retry moves on to
    the other candidates."""
    chosen = [ctx.reasoner.choose(visible, 0) for visible in visible_all]
    sources = ctx.reasoner.clip_sources(chosen)
    out = []
    for i, (visible, phrases) in enumerate(zip(visible_all, chosen, strict=True)):
        here = [c.phrase for c in visible if c.phrase in sources]
        if here and set(here) != set(phrases):
            steps.append(
                TraceStep(
                    node="verify",
                    frame=i,
                    message=f"frame consistency: {', '.join(here)} (the clip's source in most frames) instead of {', '.join(phrases)}",
                )
            )
            phrases = here
            visible.sort(key=lambda c: c.phrase not in here)
        out.append(phrases)
    return out


# ---------------------------------------------------------------------------------------------- segment
def segment(state: AgentState, runtime: Runtime[RunContext]) -> dict:
    ctx = runtime.context
    clip = state["clip"]
    masks = list(state.get("masks") or [np.zeros((f.height, f.width), bool) for f in clip.frames])
    groundings = [dict(g) for g in state["groundings"]]
    steps = []
    for i, (frame, choice) in enumerate(zip(clip.frames, state["choices"], strict=True)):
        if choice.status != "pending":
            continue
        t0 = time.perf_counter()
        missing = [p for p in choice.phrases if p not in groundings[i]]
        if missing:  # a phrase the verify step did not ground (e.g. proposed by a retry)
            seg = ctx.toolset.grounder.ground(frame, missing)
            for p in missing:
                groundings[i][p] = (
                    seg[np.asarray([lab == p for lab in seg.labels], bool)] if len(seg) else seg
                )
        parts = [ctx.reasoner.instances(groundings[i][p]) for p in choice.phrases]
        merged = Segments.concat(parts, frame.height, frame.width)
        masks[i] = merged.union()
        steps.append(
            _step(
                "segment",
                f"segmented {', '.join(choice.phrases)} (attempt {choice.attempt + 1})",
                t0,
                frame=i,
                boxes=len(merged),
            )
        )
    return {"masks": masks, "groundings": groundings, "trace": steps}


# ---------------------------------------------------------------------------------------------- check
def check(state: AgentState, runtime: Runtime[RunContext]) -> dict:
    ctx = runtime.context
    choices = list(state["choices"])
    masks = list(state["masks"])
    steps = []
    for i, choice in enumerate(choices):
        if choice.status != "pending":
            continue
        shape = state["masks"][i].shape
        passed, reasons = [], []
        for p in choice.phrases:  # each source is checked on its own mask
            seg = ctx.reasoner.instances(state["groundings"][i][p])
            ok, why = ctx.reasoner.check(
                seg.union() if len(seg) else np.zeros(shape, bool), seg, relaxed=choice.relaxed
            )
            reasons.append(f"{p}: {why}")
            if ok:
                passed.append(p)
        if passed and len(passed) < len(choice.phrases):
            keep = Segments.concat(
                [ctx.reasoner.instances(state["groundings"][i][p]) for p in passed], *shape
            )
            masks[i] = keep.union()
        choices[i] = choice.model_copy(
            update={
                "status": "ok" if passed else "retry",
                "phrases": passed or choice.phrases,
                "reason": "; ".join(reasons),
            }
        )
        steps.append(
            TraceStep(node="check", frame=i, message=("ok: " if passed else "failed: ") + "; ".join(reasons))
        )
    return {"choices": choices, "masks": masks, "trace": steps}


def route_after_check(state: AgentState) -> Literal["retry", "answer"]:
    return "retry" if any(c.status == "retry" for c in state["choices"]) else "answer"


# ---------------------------------------------------------------------------------------------- retry
def retry(state: AgentState, runtime: Runtime[RunContext]) -> dict:
    ctx = runtime.context
    choices = list(state["choices"])
    masks = list(state["masks"])
    steps = []
    llm_stats: list[dict] = []
    decided: dict[int, str | None] = {}
    failing = [i for i, c in enumerate(choices) if c.status == "retry"]
    if isinstance(ctx.reasoner, LLMReasoner) and failing:
        t0 = time.perf_counter()
        clip = state["clip"]
        failures = "\n".join(
            f"frame {i}: {', '.join(choices[i].phrases)} -> {choices[i].reason}; tried: {', '.join([*choices[i].tried, *choices[i].phrases])}"
            for i in failing
        )
        data = _prompt_data(state, ctx, [clip.frames[i] for i in failing])
        result, llm_stats, error = ctx.reasoner.retry_llm(
            {
                "question_block": data["question_block"],
                "clip_tags": data["clip_tags"],
                "failures": failures,
                "visible": data["visible"],
            }
        )
        if result is None:
            steps.append(
                _step("retry", f"LLM retry failed ({error}); the rules decided", t0, llm=ctx.reasoner.name)
            )
        else:
            decided = {i: result.get(i) for i in failing}
            steps.append(
                _step(
                    "retry", f"LLM ({ctx.reasoner.name}) retry phrases: {decided}", t0, llm=ctx.reasoner.name
                )
            )
    for i, choice in enumerate(choices):
        if choice.status != "retry":
            continue
        if i in decided:
            phrase = decided[i]
            tried = [*choice.tried, *choice.phrases]
            if phrase and phrase not in tried and choice.attempt + 1 < ctx.settings.agent.max_attempts:
                new = Choice(
                    phrases=[phrase],
                    attempt=choice.attempt + 1,
                    tried=tried,
                    status="pending",
                    reason=f"LLM: retry with '{phrase}'",
                    relaxed=choice.relaxed and phrase in state["groundings"][i],
                )
            else:
                new = Choice(
                    phrases=[],
                    attempt=choice.attempt,
                    tried=tried,
                    status="failed",
                    reason=f"{choice.reason}; the LLM gave up or repeated itself",
                )
        else:
            new = ctx.reasoner.retry(choice, state["visible"][i])
        if new.status == "failed":
            masks[i] = np.zeros_like(masks[i])
        choices[i] = new
        steps.append(TraceStep(node="retry", frame=i, message=new.reason))
    return {"choices": choices, "masks": masks, "trace": steps, "llm_stats": llm_stats}


def route_after_retry(state: AgentState) -> Literal["segment", "answer"]:
    return "segment" if any(c.status == "pending" for c in state["choices"]) else "answer"


# ---------------------------------------------------------------------------------------------- answer
def answer(state: AgentState, runtime: Runtime[RunContext]) -> dict:
    ctx = runtime.context
    clip = state["clip"]
    t0 = time.perf_counter()
    masks = state.get("masks") or [np.zeros((f.height, f.width), bool) for f in clip.frames]
    frames, frames_with = [], {}
    for i, frame in enumerate(clip.frames):
        choice = state["choices"][i]
        labels, boxes, scores = [], [], []
        if choice.status == "ok":
            for p in choice.phrases:
                seg = ctx.reasoner.instances(state["groundings"][i][p])
                if len(seg):
                    labels.append(p)
                    boxes += [[round(float(v), 1) for v in b] for b in seg.xyxy]
                    scores += [round(float(s), 4) for s in seg.confidence]
                    frames_with.setdefault(p, []).append(i)
        else:
            masks[i] = np.zeros((frame.height, frame.width), bool)
        frames.append(
            FrameResult(
                index=i,
                time_s=frame.time_s,
                labels=labels,
                boxes=boxes,
                scores=scores,
                mask_area=round(float(masks[i].mean()), 5),
            )
        )
    found = sorted(frames_with, key=lambda p: -len(frames_with[p]))
    considered = {c.phrase for cands in state["candidates"] for c in cands}
    rejected = sorted(considered - set(found))
    silent = all(not c for c in state["candidates"]) and clip.audio.rms < ctx.settings.agent.silence_rms
    failed = any(c.status == "failed" for c in state["choices"]) and not found
    text = ctx.reasoner.explain(
        found, frames_with, len(clip.frames), state["clip_tags"].top(5), rejected, silent, failed
    )
    if state.get("llm_reasoning") and not state.get("force_phrases"):
        # the facts above come from the trace; the LLM adds its reading of the clip (no extra call)
        text += f" The LLM ({ctx.reasoner.name}) reasoned: {state['llm_reasoning']}"
    trace = [*state.get("trace", []), _step("answer", text, t0)]
    stats = {
        "frames": len(clip.frames),
        "attempts": sum(c.attempt + 1 for c in state["choices"] if c.phrases or c.status == "failed"),
        "llm_calls": len(state.get("llm_stats", [])),
        "llm_tokens": sum(s.get("tokens", 0) for s in state.get("llm_stats", [])),
        "llm_seconds": round(sum(s.get("seconds", 0.0) for s in state.get("llm_stats", [])), 3),
        "llm": state.get("llm_stats", []),
        "reasoner": ctx.reasoner.name,
        "tools": {
            "tagger": ctx.toolset.tagger.name,
            "grounder": ctx.toolset.grounder.name,
            "scorer": ctx.toolset.scorer.name,
        },
    }
    evidence = [
        {"candidates": [[c.phrase, c.evidence] for c in cands], "visible": [c.phrase for c in vis]}
        for cands, vis in zip(state["candidates"], state["visible"], strict=True)
    ]
    result = Answer(
        question=state.get("question", ""),
        text=text,
        labels=found,
        frames=frames,
        masks=masks,
        trace=trace,
        stats=stats,
        evidence=evidence,
    )
    return {"answer": result, "masks": masks, "trace": [trace[-1]]}
