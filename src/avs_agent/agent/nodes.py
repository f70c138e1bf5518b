"""The graph's nodes. Each reads the state, calls tools or the reasoner, and returns a partial update
with its trace steps. Routing functions are pure and typed with the nodes they lead to."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from langgraph.runtime import Runtime

from avs_agent.agent import decision as D
from avs_agent.agent import trace as T
from avs_agent.agent.rules import Evidence, PersonReasoner, Reasoner
from avs_agent.agent.settings import Settings
from avs_agent.agent.state import AgentState, Choice
from avs_agent.tools.media import open_clip
from avs_agent.tools.types import Answer, FrameResult, Progress, Segments
from avs_agent.tools.wiring import Toolset


@dataclass
class RunContext:
    """What a run needs besides its state: settings, tools and the reasoner (per run, not persisted).

    A LangGraph server builds it from the run's JSON ``context`` (or none): plain configuration,
    ``profile``, ``config_file`` and ``overrides`` (``--set`` pairs), from which the settings, the
    toolset (kept per process, ``tools.wiring.get_toolset``) and the reasoner are built here. In-process
    callers (ask, chat, the evals) hand over the built objects instead (``agent.run.make_context``)."""

    profile: str | None = None
    config_file: str | None = None
    overrides: list[str] = field(default_factory=list)
    segment: list[str] = field(default_factory=list)
    """Objects the person asked to segment ("segment the car instead"): they replace the reasoner's
    proposal (``rules.PersonReasoner``)."""
    settings: Settings | None = None
    toolset: Toolset | None = None
    reasoner: Reasoner | None = None

    def __post_init__(self) -> None:
        if self.settings is None:
            from avs_agent.agent.settings import load_settings

            self.settings = load_settings(self.profile, self.config_file, tuple(self.overrides))
        if self.toolset is None:
            from avs_agent.tools.wiring import get_toolset

            self.toolset = get_toolset(self.settings.tool_config())
        if self.reasoner is None:
            from avs_agent.agent.llm import make_reasoner

            self.reasoner = make_reasoner(self.settings.agent, self.settings.llm)
        if self.segment:
            self.reasoner = PersonReasoner(self.segment, self.reasoner)


def _progress(runtime: Runtime[RunContext], stage: str, event: str, text: str) -> None:
    """A progress event (``tools.types.Progress``, as a dict) on LangGraph's custom stream
    (``stream_mode="custom"``): ask's spinner, the chat and the page show it as it happens, and so
    does a LangGraph server's client."""
    runtime.stream_writer({"progress": Progress(stage=stage, event=event, text=text).model_dump()})


# ---------------------------------------------------------------------------------------------- load
def load(state: AgentState, runtime: Runtime[RunContext]) -> dict:
    t0 = time.perf_counter()
    if "clip" in state and state["clip"] is not None:
        clip = state["clip"]
    else:
        _progress(runtime, "load", "loading_media", "loading media")
        clip = open_clip(state["media"], state.get("audio_path"), runtime.context.settings.media)
    fps = clip.meta.get("fps", 1.0)
    msg = f"{len(clip.frames)} frame(s) at {fps:g} fps, {clip.duration_s:.2f} s of audio"
    truncated = bool(clip.meta.get("truncated"))
    if truncated:
        msg += f" (only the first {runtime.context.settings.media.max_seconds:g} s analysed)"
    step = T.step(
        "load",
        "loaded",
        msg,
        reason="truncated" if truncated else "",
        t0=t0,
        size=[clip.frames[0].width, clip.frames[0].height],
        frames=len(clip.frames),
        fps=fps,
        audio_seconds=round(clip.duration_s, 3),
    )
    return {"clip": clip, "trace": [step]}


# ---------------------------------------------------------------------------------------------- perceive
def perceive(state: AgentState, runtime: Runtime[RunContext]) -> dict:
    """Audio tags per second and for the clip; in the full profile also the audio captions (their noun
    phrases are audio candidates) and the image captions (their noun phrases are visible candidates)."""
    ctx = runtime.context
    clip = state["clip"]
    t0 = time.perf_counter()
    _progress(runtime, "perceive", "tagging_audio", "tagging audio")
    tags = ctx.toolset.tagger.tag([*clip.segments, clip.audio])
    frame_tags, clip_tags = tags[:-1], tags[-1]
    steps = [
        T.step(
            "perceive",
            "audio_tags",
            f"audio tags (clip): {_fmt(clip_tags.top(5))}",
            t0=t0,
            tool=ctx.toolset.tagger.name,
            tags=_pairs(clip_tags.top(5)),
        )
    ]
    for i, ft in enumerate(frame_tags):
        steps.append(
            T.step(
                "perceive", "audio_tags", f"audio tags: {_fmt(ft.top(3))}", frame=i, tags=_pairs(ft.top(3))
            )
        )
    update: dict = {"frame_tags": frame_tags, "clip_tags": clip_tags}
    if ctx.toolset.audio_captioner is not None:
        t1 = time.perf_counter()
        _progress(runtime, "perceive", "captioning_audio", "captioning the audio")
        update["audio_captions"] = ctx.toolset.audio_captioner.caption([clip.audio])
        cap = update["audio_captions"][0]
        steps.append(
            T.step(
                "perceive",
                "audio_captions",
                f"audio captions: {cap.texts} nouns {cap.noun_phrases}",
                t0=t1,
                texts=list(cap.texts),
                nouns=list(cap.noun_phrases),
            )
        )
    if ctx.toolset.image_captioner is not None:
        t1 = time.perf_counter()
        _progress(runtime, "perceive", "captioning_frames", "captioning the frames")
        update["image_captions"] = ctx.toolset.image_captioner.caption(clip.frames)
        for i, cap in enumerate(update["image_captions"]):
            steps.append(
                T.step(
                    "perceive",
                    "image_caption",
                    f"image caption: {cap.texts[:1]} nouns {cap.noun_phrases}",
                    frame=i,
                    t0=t1,
                    texts=list(cap.texts[:1]),
                    nouns=list(cap.noun_phrases),
                )
            )
    update["trace"] = steps
    return update


def _fmt(pairs: list[tuple[str, float]]) -> str:
    return ", ".join(f"{label} {score:.2f}" for label, score in pairs) or "none"


def _pairs(pairs: list[tuple[str, float]]) -> list[list]:
    """(label, score) pairs as the trace's data keeps them: [label, score rounded to 4 places]."""
    return [[label, round(float(score), 4)] for label, score in pairs]


def _nouns(caps: list | None, ctx: RunContext) -> list[str]:
    """Caption noun phrases as the grounder's words (``Grounder.words``)."""
    nouns = list(dict.fromkeys(n for c in caps or [] for n in c.noun_phrases))
    return ctx.toolset.grounder.words(nouns) if nouns else []


# ---------------------------------------------------------------------------------------------- propose
def propose(state: AgentState, runtime: Runtime[RunContext]) -> dict:
    """The audio side of the evidence table: every phrase's tag, generic-parent and (full) CLAP
    evidence per second and for the clip. Candidates come from both directions: what the audio names
    (tags through the ontology, audio-caption nouns) and what is visible (image-caption nouns; the
    detector's own labels join in verify)."""
    ctx = runtime.context
    clip = state["clip"]
    cfg = ctx.settings.agent
    t0 = time.perf_counter()
    heard = _nouns(state.get("audio_captions"), ctx)
    seen = [_nouns([c], ctx) for c in state.get("image_captions") or []]
    asked = ctx.reasoner.requested
    phrases = list(dict.fromkeys([*ctx.toolset.vocabulary, *heard, *(n for f in seen for n in f), *asked]))
    frame_terms = [D.tag_terms(t, phrases, ctx.toolset.matcher, cfg) for t in state["frame_tags"]]
    clip_terms = D.tag_terms(state["clip_tags"], phrases, ctx.toolset.matcher, cfg)
    # visible -> audio and audio-caption nouns: the scorer's own term (CLAP's; none from the lite
    # scorer, whose evidence is the tags') for every phrase some side proposes
    scored = list(
        dict.fromkeys(
            [*D.audio_phrases([*frame_terms, clip_terms]), *heard, *(n for f in seen for n in f), *asked]
        )
    )
    if scored:
        term = ctx.toolset.scorer.evidence([*clip.segments, clip.audio], scored)
        for row, terms in zip(term, [*frame_terms, clip_terms], strict=True):
            for ph, v in zip(scored, row, strict=True):
                terms[ph].clap = float(v)
    origin = {n: "audio-caption" for n in heard} | {n: "caption" for f in seen for n in f}
    candidates = D.audio_phrases([*frame_terms, clip_terms])
    named = [p for p in candidates if p not in origin]
    steps = [
        T.step(
            "propose",
            "proposed",
            f"sound sources the audio names: {', '.join(named) or 'none'}"
            + (f"; from captions: {', '.join(f'{k}:{p}' for p, k in origin.items())}" if origin else ""),
            t0=t0,
            scorer=ctx.toolset.scorer.name,
            named=named,
            captions=origin,
        )
    ]
    return {
        "frame_terms": frame_terms,
        "clip_terms": clip_terms,
        "phrase_origin": origin,
        "caption_nouns": seen,
        "trace": steps,
    }


def grounding_floor(ctx: RunContext) -> float:
    """Detections are grounded down to ``agent.track_floor`` (what propagation may link), never above
    the decision's own floor; the decision counts only those at or above ``detection_floor``."""
    return min(ctx.settings.agent.track_floor, ctx.settings.agent.decision.detection_floor)


def perception(state: AgentState, ctx: RunContext, groundings: list | None = None) -> D.Perception:
    """The clip's tool outputs as the decisions read them (agent/decision/ ``Perception``), from the
    state the nodes before have filled."""
    clip = state["clip"]
    captions = state.get("caption_nouns") or []
    return D.Perception(
        frame_tags=state["frame_tags"],
        clip_tags=state["clip_tags"],
        frame_terms=state["frame_terms"],
        clip_terms=state["clip_terms"],
        found=groundings if groundings is not None else state["groundings"],
        vocabulary=list(dict.fromkeys([*ctx.toolset.vocabulary, *(n for f in captions for n in f)])),
        silent=[clip.audio.rms < ctx.settings.agent.silence_rms] * len(clip.frames),
        shape=(clip.frames[0].height, clip.frames[0].width),
        origin=state.get("phrase_origin") or {},
    )


# ---------------------------------------------------------------------------------------------- verify
def verify(state: AgentState, runtime: Runtime[RunContext]) -> dict:
    """Ground every candidate in every frame, build the evidence table, let the reasoner decide."""
    ctx = runtime.context
    clip = state["clip"]
    p = ctx.settings.agent.decision
    _progress(runtime, "verify", "grounding", "finding candidates in the frames")
    frame_terms, clip_terms = state["frame_terms"], state["clip_terms"]
    asked = ctx.reasoner.requested
    audio_side = D.audio_phrases([*frame_terms, clip_terms])
    captions = state.get("caption_nouns") or []
    groundings, steps = [], []
    for i, frame in enumerate(clip.frames):
        t0 = time.perf_counter()
        shown = ctx.toolset.grounder.proposals(frame)
        phrases = list(
            dict.fromkeys([*audio_side, *(captions[i] if i < len(captions) else []), *shown, *asked])
        )
        seg = (
            ctx.toolset.grounder.ground(frame, phrases, box_threshold=grounding_floor(ctx))
            if phrases
            else None
        )
        groundings.append(D.split_by_phrase(seg, phrases))
        found = list(groundings[-1])
        steps.append(
            T.step(
                "verify", "grounded", f"found: {', '.join(found) or 'nothing'}", frame=i, t0=t0, found=found
            )
        )
    if len(groundings) > 1:
        # instances linked through the clip (ByteTrack's tracks; SAM2 follows masks instead): which
        # one is the source weighs its salience over time
        groundings = D.link_tracks(groundings, ctx.toolset.linker.tracks)
        for i, f in enumerate(groundings):
            for ph, seg in f.items():
                if "seen_as" in seg.data:
                    seen = list(dict.fromkeys(seg.data["seen_as"]))
                    steps.append(
                        T.step(
                            "verify",
                            "renamed",
                            f"the object found as {', '.join(repr(x) for x in seen)} is the {ph} of the "
                            "clip's other frames",
                            frame=i,
                            object=ph,
                            seen_as=seen,
                        )
                    )
    table = D.evidence_table(perception(state, ctx, groundings), p, ctx.settings.agent, ctx.toolset.matcher)
    for i, row in enumerate(table):
        steps.append(T.step("verify", "evidence", f"evidence: {D.describe(row)}", frame=i, **_row_data(row)))
    decided = ctx.reasoner.decide(table, _prompt_data(state, ctx, table, groundings))
    steps += decided.steps
    choices = [
        Choice(
            phrases=phrases,
            status="pending" if phrases else "none",
            reason="" if phrases else _no_choice(table[i]),
        )
        for i, phrases in enumerate(decided.phrases)
    ]
    close = ctx.reasoner.close_call(table, groundings)
    return {
        "groundings": groundings,
        "table": table,
        "choices": choices,
        "close_call": list(close) if close else None,
        "trace": steps,
        "llm_stats": decided.stats,
        "llm_reasoning": decided.reasoning,
    }


def _row_data(row: D.FrameEvidence) -> dict:
    """A frame's row of the evidence table as the trace's data: its candidates, best rank first (each
    with its score and the audio labels behind it), 'none' and what it heard off screen, the clip's
    verdict."""
    return {
        "candidates": [
            {"phrase": c.phrase, "score": c.score, "rank": c.rank, "labels": list(c.labels)}
            for c in row.candidates
        ],
        "none": row.none_score,
        "offscreen_from": row.offscreen_from,
        "clip": row.clip,
    }


def _no_choice(row: D.FrameEvidence) -> str:
    if row.silent:
        return "silent"
    if row.clip == "offscreen":
        return "no visible candidate beats 'none' over the clip"
    return "no visible candidate beats 'none'"


def route_after_verify(state: AgentState) -> Literal["confirm", "segment"]:
    return "confirm" if state.get("close_call") else "segment"


# ---------------------------------------------------------------------------------------------- confirm
def confirm(state: AgentState, runtime: Runtime[RunContext]) -> dict:
    """A close call between two visible candidates (``agent.ask_person``): the graph pauses with a
    LangGraph interrupt that shows both as numbered boxes on the frame where they are surest, and
    resumes with the person's choice (``Command(resume=...)``: "1", "2", "both" or a phrase), which the
    checkpointer keeps. Every frame then segments what the person chose where it is found."""
    from langgraph.types import interrupt

    from avs_agent.agent.vision import boxes_of, numbered_frame

    ctx = runtime.context
    p = ctx.settings.agent.decision
    first, second = state["close_call"]
    table, found = state["table"], state["groundings"]

    def surest(i: int) -> tuple[bool, float]:  # both candidates there, then their summed score
        a, b = D.candidate_score(table[i], first), D.candidate_score(table[i], second)
        return a > 0 and b > 0, a + b

    t = max(range(len(table)), key=surest)
    kept = D.kept(found[t], [first, second], p)
    boxes = [(n, boxes_of(kept[ph])) for n, ph in ((1, first), (2, second)) if ph in kept]
    options = {"1": [first], "2": [second], "both": [first, second]}
    evidence = {  # for the person's follow-ups while the question waits ("why not the person?")
        ph: {
            "frames": [i for i, row in enumerate(table) if any(c.phrase == ph for c in row.candidates)],
            "audio": round(
                max((c.audio for row in table for c in row.candidates if c.phrase == ph), default=0.0), 3
            ),
        }
        for ph in (first, second)
    }
    reply = interrupt(
        {
            "question": f"Two visible objects could be making the sound: 1 = {first}, 2 = {second}. "
            "Which one is it? (1, 2 or both)",
            "options": options,
            "evidence": evidence,
            "frame": t,
            "image": numbered_frame(state["clip"].frames[t], boxes, ctx.settings.llm.vision_max_side),
        }
    )
    chosen = person_choice(reply, options)
    asked = {"options": [first, second], "reply": str(reply), "chosen": chosen}
    if chosen is None:
        step = T.step(
            "confirm",
            "asked_person",
            f"asked: {first} or {second}; the reply {reply!r} named neither, so the rules decided",
            reason="reply_named_neither",
            frame=t,
            **asked,
            text=f"Your reply named neither the {first} nor the {second}, so I decided by the evidence.",
        )
        return {"trace": [step]}
    choices = []
    for row in found:
        here = [ph for ph in chosen if ph in D.kept(row, chosen, p)]
        choices.append(
            Choice(
                phrases=here,
                tried=[ph for ph in (first, second) if ph not in chosen],  # a retry never takes it back
                status="pending" if here else "none",
                reason=f"the person chose {' and '.join(chosen)}"
                + ("" if here else "; not found in this frame"),
            )
        )
    picked = " and ".join(f"the {ph}" for ph in chosen)
    step = T.step(
        "confirm",
        "asked_person",
        f"asked: {first} or {second}; chosen: {' and '.join(chosen)}",
        frame=t,
        object=chosen[0] if len(chosen) == 1 else None,
        **asked,
        text=f"You chose {picked} when I asked: {first} or {second}.",
    )
    return {"choices": choices, "trace": [step]}


def person_choice(reply: object, options: dict[str, list[str]]) -> list[str] | None:
    """The phrases a person's answer picks: an option's key ("1", "2", "both"), a phrase of the options,
    or a list of phrases; None when it names none of them."""
    names = list(dict.fromkeys(ph for v in options.values() for ph in v))
    if isinstance(reply, list | tuple):
        picked = [ph for ph in names if ph in {str(x).strip().lower() for x in reply}]
        return picked or None
    text = str(reply).strip().lower().strip(".!")
    if text in options:
        return options[text]
    if text in ("1 and 2", "1, 2", "1,2", "1+2", "all", "3"):
        return options["both"]
    picked = [ph for ph in names if ph in text]
    return picked or None


def _prompt_data(
    state: AgentState, ctx: RunContext, table: list[D.FrameEvidence], groundings: list | None = None
) -> Evidence:
    """The evidence an LLM sees: plain text lines (placed inside <data> by the template), and the frames
    with their grounded instances (a vision model's numbered boxes)."""
    question = state.get("question") or ""
    audio_caps = state.get("audio_captions") or []
    captions = state.get("image_captions") or []
    rows = []
    for i, row in enumerate(table):
        line = f"frame {i}: {D.describe(row)}"
        if i < len(captions):
            line += f" | image caption: {captions[i].texts[:1]}"
        rows.append(line)
    text = {
        "question_block": f"The person asked: {question!r}" if question else "",
        "clip_tags": _fmt(state["clip_tags"].top(8)),
        "frame_tags": "\n".join(f"second {i}: {_fmt(t.top(4))}" for i, t in enumerate(state["frame_tags"])),
        "audio_captions": "\n".join(f"- {t}" for cap in audio_caps for t in cap.texts)
        or "(no audio captioner in this profile)",
        "evidence": "\n".join(rows),
    }
    found = groundings if groundings is not None else state["groundings"]
    return Evidence(text, state["clip"].frames, found, rows)


# ---------------------------------------------------------------------------------------------- segment
def segment(state: AgentState, runtime: Runtime[RunContext]) -> dict:
    ctx = runtime.context
    clip = state["clip"]
    p = ctx.settings.agent.decision
    masks = list(state.get("masks") or [np.zeros((f.height, f.width), bool) for f in clip.frames])
    groundings = [dict(g) for g in state["groundings"]]
    steps = []
    for i, (frame, choice) in enumerate(zip(clip.frames, state["choices"], strict=True)):
        if choice.status != "pending":
            continue
        t0 = time.perf_counter()
        missing = [ph for ph in choice.phrases if ph not in groundings[i]]
        if missing:  # a phrase the verify step did not ground (proposed by an LLM retry)
            seg = ctx.toolset.grounder.ground(frame, missing, box_threshold=grounding_floor(ctx))
            groundings[i].update(D.split_by_phrase(seg, missing))
        masks[i] = D.mask_of(groundings[i], choice.phrases, p, (frame.height, frame.width))
        which = {ph: _instances(groundings[i].get(ph), p) for ph in choice.phrases}
        told = "; ".join(
            f"{ph}: kept {sum(k for _, k in rows)} of {len(rows)} by salience "
            f"({', '.join(f'{w:.3f}' for w, k in rows if k)}; the others at most "
            f"{max(w for w, k in rows if not k):.3f}, under {p.instance_share:g} x the top)"
            for ph, rows in which.items()
            if not all(k for _, k in rows)
        )
        steps.append(
            T.step(
                "segment",
                "segmented",
                f"segmented {', '.join(choice.phrases)} (attempt {choice.attempt + 1})"
                + (f"; {told}" if told else ""),
                frame=i,
                object=_one(choice.phrases),
                t0=t0,
                phrases=list(choice.phrases),
                attempt=choice.attempt + 1,
                instances={ph: [[round(w, 4), k] for w, k in rows] for ph, rows in which.items()},
            )
        )
    return {"masks": masks, "groundings": groundings, "trace": steps}


# ---------------------------------------------------------------------------------------------- check
def check(state: AgentState, runtime: Runtime[RunContext]) -> dict:
    """Each chosen source's mask: not empty, tiny or the whole frame; in the full profile the crop check
    adds its verdict to the candidate's score, and a source that falls below 'none' fails."""
    ctx = runtime.context
    clip = state["clip"]
    p = ctx.settings.agent.decision
    choices, masks, table = list(state["choices"]), list(state["masks"]), list(state["table"])
    steps = []
    for i, choice in enumerate(choices):
        if choice.status != "pending":
            continue
        frame = clip.frames[i]
        shape = (frame.height, frame.width)
        checked = D.check_frame(
            table[i],
            state["groundings"][i],
            choice.phrases,
            p,
            ctx.settings.agent,
            shape,
            ctx.toolset.crop_check(frame),
        )
        table[i], passed, reasons, codes = checked.row, checked.passed, checked.reasons, checked.codes
        if passed and len(passed) < len(choice.phrases):
            masks[i] = D.mask_of(state["groundings"][i], passed, p, shape)
        choices[i] = choice.model_copy(
            update={
                "status": "ok" if passed else "retry",
                "phrases": passed or choice.phrases,
                "reason": "; ".join(reasons),
            }
        )
        steps.append(
            T.step(
                "check",
                "check_passed" if passed else "check_failed",
                ("ok: " if passed else "failed: ") + "; ".join(reasons),
                reason="" if passed else next((c for c in codes if c != "ok"), ""),
                frame=i,
                object=_one(choice.phrases),
                checks=[
                    {"object": ph, "passed": code == "ok", "reason": code, "crop": _crop(table[i], ph)}
                    for ph, code in zip(choice.phrases, codes, strict=True)
                ],
            )
        )
    return {"choices": choices, "masks": masks, "table": table, "trace": steps}


def _crop(row: D.FrameEvidence, phrase: str) -> float | None:
    """The crop check's verdict on ``phrase``'s mask in a frame (None where none was made)."""
    return next((c.crop for c in row.candidates if c.phrase == phrase), None)


def _instances(seg: Segments | None, p) -> list[tuple[float, bool]]:
    """Of a phrase's instances above the detection floor, best first: each one's salience (the
    weight ``decision.instances`` compares, own and along its track) and whether it is kept."""
    if seg is None:
        return []
    above = np.flatnonzero(seg.confidence >= p.detection_floor)  # as ``kept_index`` selects them
    keep = set(D.kept_index(seg, p).tolist())
    weight = D.instance_weight(seg[above], p) if len(above) else []
    rows = [(float(w), int(j) in keep) for w, j in zip(weight, above, strict=True)]
    return sorted(rows, key=lambda r: -r[0])


def _one(phrases: list[str]) -> str | None:
    """The object a step is about, when it is about one."""
    return phrases[0] if len(phrases) == 1 else None


def route_after_check(state: AgentState) -> Literal["retry", "propagate"]:
    return "retry" if any(c.status == "retry" for c in state["choices"]) else "propagate"


# ---------------------------------------------------------------------------------------------- retry
def retry(state: AgentState, runtime: Runtime[RunContext]) -> dict:
    """The frames whose masks failed: the reasoner picks the next candidate (or gives up), bounded by
    ``agent.max_attempts``."""
    ctx = runtime.context
    choices, masks = list(state["choices"]), list(state["masks"])
    failing = [i for i, c in enumerate(choices) if c.status == "retry"]
    decided = ctx.reasoner.retry(failing, choices, state["table"], _prompt_data(state, ctx, state["table"]))
    steps = list(decided.steps)
    for i in failing:
        choice = choices[i]
        tried = [*choice.tried, *choice.phrases]
        nxt = [ph for ph in decided.phrases[i] if ph not in tried] if decided.phrases[i] else []
        if nxt and choice.attempt + 1 < ctx.settings.agent.max_attempts:
            new = Choice(
                phrases=nxt,
                attempt=choice.attempt + 1,
                tried=tried,
                status="pending",
                reason=f"retry with {', '.join(nxt)}",
            )
            step = T.step("retry", "retry", new.reason, frame=i, object=_one(nxt), phrases=nxt, tried=tried)
        else:
            code = (
                "no_attempts_left"
                if nxt or choice.attempt + 1 >= ctx.settings.agent.max_attempts
                else "no_candidate_left"
            )
            why = {"no_attempts_left": "no attempts left", "no_candidate_left": "no candidate left to try"}
            new = Choice(
                phrases=[],
                attempt=choice.attempt,
                tried=tried,
                status="failed",
                reason=f"{choice.reason}; {why[code]}",
            )
            masks[i] = np.zeros_like(masks[i])
            step = T.step("retry", "gave_up", new.reason, reason=code, frame=i, tried=tried)
        choices[i] = new
        steps.append(step)
    return {"choices": choices, "masks": masks, "trace": steps, "llm_stats": decided.stats}


def route_after_retry(state: AgentState) -> Literal["segment", "propagate"]:
    return "segment" if any(c.status == "pending" for c in state["choices"]) else "propagate"


# ---------------------------------------------------------------------------------------------- propagate
OWN_PICK = {"lost": "its track was lost", "elsewhere": "its track went to another instance"}
"""Why a frame answered its own pick instead of the followed source (``Settled.own_pick``), in words."""


def propagate(state: AgentState, runtime: Runtime[RunContext]) -> dict:
    """Settle each frame's objects (agent/decision/ ``settle``, the step ``decide_clip`` takes too):
    each accepted source is followed through the clip from the frame where it is most certain -- SAM2's
    video predictor carries its mask (full), or ByteTrack links its instances (lite) -- so every frame
    shows that same object, and with ``agent.hold`` frames that accepted nothing take it too; then two
    names on nearly the same pixels become one object under the name the audio supports."""
    ctx = runtime.context
    cfg, clip = ctx.settings.agent, state["clip"]
    p = cfg.decision
    accepted = [c.phrases if c.status == "ok" else [] for c in state["choices"]]
    linker = ctx.toolset.linker
    found = state["groundings"]
    t0 = time.perf_counter()
    link = None
    if cfg.propagate and any(accepted) and len(clip.frames) > 1:
        _progress(runtime, "propagate", "following", "following the source through the clip")

        def link(ph: str, pivot: int) -> list[Segments | None] | None:
            start = D.kept(found[pivot], [ph], p).get(ph)
            return linker.follow(clip.frames, [f.get(ph) for f in found], pivot, start)

    objects, held, pivots, own_pick = D.settle(state["table"], accepted, found, p, cfg, link)
    steps = []
    for ph, pivot in pivots.items():
        on = [t + 1 for t, objs in enumerate(objects) if ph in objs]
        # frames where the followed object was not the one answered: the track lost there, or on an
        # instance the frame did not keep (the frame's own pick is answered instead, never silently)
        instead = {why: [t for t, w in enumerate(own_pick) if w.get(ph) == why] for why in OWN_PICK}
        also = "".join(
            f"; the frame's own {ph} where {OWN_PICK[why]} (frames {[t + 1 for t in ts]})"
            for why, ts in instead.items()
            if ts
        )
        steps.append(
            T.step(
                "propagate",
                "followed",
                f"{ph}: followed from frame {pivot + 1} ({linker.name}), answered on frames {on or 'none'}{also}",
                object=ph,
                t0=t0,
                pivot=pivot,
                linker=linker.name,
                frames=[t - 1 for t in on],
                own_pick=instead,
            )
        )
    renamed = {ph for a in accepted for ph in a} - {ph for objs in objects for ph in objs}
    if renamed:
        kept_names = sorted({ph for objs in objects for ph in objs})
        steps.append(
            T.step(
                "propagate",
                "one_name",
                f"one object, one name: {', '.join(sorted(renamed))} covered the same pixels as "
                f"{', '.join(kept_names)} and is answered under that name",
                t0=t0,
                renamed=sorted(renamed),
                kept=kept_names,
            )
        )
    choices, masks = list(state["choices"]), list(state["masks"])
    for t, objs in enumerate(objects):
        mask = np.zeros((clip.frames[t].height, clip.frames[t].width), bool)
        for seg in objs.values():
            mask |= seg.union()
        masks[t] = mask
        if held[t]:
            choices[t] = choices[t].model_copy(
                update={
                    "status": "ok",
                    "phrases": held[t],
                    "reason": f"held: {', '.join(held[t])} followed through the clip",
                }
            )
            steps.append(
                T.step(
                    "propagate",
                    "held",
                    choices[t].reason,
                    frame=t,
                    object=_one(held[t]),
                    phrases=list(held[t]),
                )
            )
    return {"tracked": objects, "masks": masks, "choices": choices, "trace": steps}


# ---------------------------------------------------------------------------------------------- answer
def answer(state: AgentState, runtime: Runtime[RunContext]) -> dict:
    ctx = runtime.context
    clip = state["clip"]
    dp = ctx.settings.agent.decision
    t0 = time.perf_counter()
    masks = state.get("masks") or [np.zeros((f.height, f.width), bool) for f in clip.frames]
    frames, frames_with, objects = [], {}, []
    for i, frame in enumerate(clip.frames):
        choice = state["choices"][i]
        labels, boxes, scores = [], [], []
        objects.append({})
        tracked = state.get("tracked")
        if choice.status == "ok":
            chosen = tracked[i] if tracked else D.kept(state["groundings"][i], choice.phrases, dp)
            for ph, seg in chosen.items():
                objects[i][ph] = seg.union() & masks[i]
                labels.append(ph)
                boxes += [[round(float(v), 1) for v in b] for b in seg.xyxy]
                scores += [round(float(s), 4) for s in seg.confidence]
                frames_with.setdefault(ph, []).append(i)
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
    heard = D.audio_phrases([*state["frame_terms"], state["clip_terms"]])
    seen = {c.phrase for row in state["table"] for c in row.candidates}
    rejected = sorted(
        ph
        for ph in heard
        if ph not in seen
        and ph not in found
        and D.fuse_audio(state["clip_terms"][ph], D.AudioTerms(), dp)[0] >= dp.none_bias
    )
    # each named with the audio tag behind it: "person (from the tag 'Crying, sobbing', evidence 0.38)"
    terms = state["clip_terms"]
    unseen = list(rejected)
    rejected = [
        f"{ph} (from the tag '{t.tag_from}', evidence {t.tag:.2f})"
        if (t := terms[ph]).tag_from and t.tag >= t.parent
        else f"{ph} (from the tag '{t.parent_from}', evidence {t.parent:.2f})"
        if t.parent_from
        else ph
        for ph in rejected
    ]
    silent = clip.audio.rms < ctx.settings.agent.silence_rms
    failed = any(c.status == "failed" for c in state["choices"]) and not found
    text = ctx.reasoner.explain(
        found, frames_with, len(clip.frames), state["clip_tags"].top(5), rejected, silent, failed
    )
    asked = next((s for s in state.get("trace", []) if s.event == "asked_person"), None)
    if asked is not None:  # the person's choice, in words addressed to them (agent.nodes.confirm)
        text += f" ({asked.data.get('text') or asked.message})"
    if state.get("llm_reasoning"):
        # the facts above come from the trace; the LLM adds its reading of the clip (no extra call)
        text += f" The LLM ({ctx.reasoner.name}) reasoned: {state['llm_reasoning']}"
    trace = [
        *state.get("trace", []),
        T.step("answer", "answered", text, t0=t0, labels=list(found), rejected=unseen),
    ]
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
    evidence = []
    for i, row in enumerate(state["table"]):
        audio = {
            ph: D.fuse_audio(
                state["frame_terms"][i].get(ph, D.AudioTerms()),
                state["clip_terms"].get(ph, D.AudioTerms()),
                dp,
            )[0]
            for ph in heard
        }
        audio.update({c.phrase: c.audio for c in row.candidates})
        evidence.append(
            {
                "candidates": [
                    [ph, round(v, 4)] for ph, v in sorted(audio.items(), key=lambda kv: -kv[1]) if v > 0
                ],
                "visible": [c.phrase for c in row.candidates],
                "table": [
                    {
                        k: getattr(c, k)
                        for k in (
                            "phrase",
                            "score",
                            "audio",
                            "detector",
                            "salience",
                            "support",
                            "crop",
                            "sources",
                        )
                    }
                    for c in row.candidates
                ],
                "none": {"score": row.none_score, "offscreen": row.offscreen, "from": row.offscreen_from},
                "audio_tags": [[lab, round(v, 4)] for lab, v in state["frame_tags"][i].top(5)],
            }
        )
    result = Answer(
        question=state.get("question", ""),
        text=text,
        labels=found,
        frames=frames,
        masks=masks,
        trace=trace,
        stats=stats,
        evidence=evidence,
        object_masks=objects,
    )
    return {"answer": result, "masks": masks, "trace": [trace[-1]]}
