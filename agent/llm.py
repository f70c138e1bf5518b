"""LLM backends and the LLM reasoner.

``make_chat_model`` builds the configured chat model (``llm.backend``: openai — also any
OpenAI-compatible server through ``llm.base_url`` — or ollama). ``LLMReasoner`` makes the decide and
retry decisions with structured output (pydantic schemas below). Any failure — timeout, HTTP error after the client's retries with backoff, an answer that does
not parse even after one repair attempt — falls back to the rules for that decision, and the trace says
why. Tool outputs reach the LLM only inside <data>...</data> (prompts/system.md).

Both read the decision model's evidence table (agent/decision.py) as text: per frame the scored
candidates with their named evidence terms and the score of 'none'. A model that takes images
(``llm.vision``) also sees the frames tiled into one image with every candidate drawn as a numbered box
(agent/vision.py) and answers with box numbers. Cost: one call decides all frames of a clip; each retry
round adds at most one call (text only).
"""

from __future__ import annotations

import json
import os
import re
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from agent import decision as D
from agent.prompts import load_prompt
from agent.rules import Decision, Evidence, Reasoner, RulesReasoner
from agent.settings import AgentSettings, LLMSettings
from agent.state import Choice
from tools.errors import ConfigError
from tools.types import TraceStep

MAX_REASONING_CHARS = 300
"""The LLM's reasoning is quoted in the answer up to this length (it is the model's words, not a fact)."""

AUTO_METHODS = {
    "openai": ("json_schema", "json_object_schema", "function_calling"),
    "ollama": ("json_schema", "function_calling"),
}
"""What ``structured_method: auto`` tries, in order, until the server accepts one: OpenAI and vLLM take
a JSON schema; llama.cpp's server takes only ``json_object`` with a ``schema``; most take tool calls."""
VISION_MODELS = (
    "gpt-4o",
    "gpt-4.1",
    "gpt-5",
    "o3",
    "o4",
    "llama3.2-vision",
    "llama4",
    "qwen2.5vl",
    "qwen2.5-vl",
    "qwen2-vl",
    "qwen3-vl",
    "llava",
    "minicpm-v",
    "gemma3:4b",
    "gemma3:12b",
    "gemma3:27b",
    "mistral-small3.1",
    "granite3.2-vision",
)
"""Model names (prefixes, any 'org/' stripped) known to take images: ``llm.vision: auto`` shows them
the frames. Others get the evidence table as text."""
_FOUND: dict[tuple, str] = {}
"""(backend, base_url, model) -> the structured-output method that server accepted (this process)."""


class FrameProposal(BaseModel):
    frame: int = Field(description="frame index, 0-based")
    sounding: list[str] = Field(
        default_factory=list, description="visible objects making the sound, best first"
    )
    not_visible: list[str] = Field(
        default_factory=list, description="sources the audio suggests that are not visible"
    )


class Proposal(BaseModel):
    """The propose decision for all frames of a clip."""

    frames: list[FrameProposal]
    reasoning: str = ""


class FrameRetry(BaseModel):
    frame: int
    phrase: str | None = Field(description="a new phrase to segment, or null to give up on this frame")
    reason: str = ""


class RetryDecision(BaseModel):
    """The retry decision for the frames whose mask failed the check."""

    frames: list[FrameRetry]


class VisionFrame(BaseModel):
    model_config = ConfigDict(extra="forbid")  # an answer in another shape is repaired, not half-read

    frame: int = Field(description="frame index, 0-based")
    boxes: list[int] = Field(
        description="numbers of this frame's boxes whose object makes the sound, best first"
    )
    phrase: str | None = Field(
        None, description="when no box fits: a short noun phrase for the visible object making the sound"
    )
    not_visible: list[str] = Field(
        default_factory=list, description="sources the audio suggests that are not visible"
    )


class VisionProposal(BaseModel):
    """The vision propose decision for the frames the tiled image shows."""

    frames: list[VisionFrame]
    reasoning: str = ""


def takes_images(llm: LLMSettings) -> bool:
    """Whether the propose call shows the model the frames (``llm.vision``)."""
    if llm.vision != "auto":
        return llm.vision == "on"
    name = llm.model.lower().rsplit("/", 1)[-1]
    return name.startswith(VISION_MODELS)


def make_chat_model(llm: LLMSettings):
    """The chat model for ``llm.backend``. Raises ConfigError for a missing API key (one line)."""
    if llm.backend == "openai":
        from langchain_openai import ChatOpenAI

        key = os.environ.get(llm.api_key_env)
        if not key:
            if llm.base_url is None:
                raise ConfigError(
                    f"llm.backend=openai needs an API key: set {llm.api_key_env} (or llm.base_url for a local OpenAI-compatible server)"
                )
            key = "not-needed"  # local OpenAI-compatible servers usually accept any key
        return ChatOpenAI(
            model=llm.model,
            base_url=llm.base_url,
            api_key=key,
            temperature=llm.temperature,
            timeout=llm.timeout_s,
            max_retries=llm.max_retries,  # the openai client retries 408/409/429/5xx and timeouts with backoff
            max_tokens=llm.max_tokens,
            # langchain-openai sends the cap as max_completion_tokens, which llama-cpp-python's server
            # (0.3) ignores: a local server gets it as max_tokens too
            extra_body={"max_tokens": llm.max_tokens} if llm.base_url and llm.max_tokens else None,
        )
    if llm.backend == "ollama":
        from langchain_ollama import ChatOllama

        return ChatOllama(
            model=llm.model,
            base_url=llm.base_url or "http://127.0.0.1:11434",
            temperature=llm.temperature,
            num_predict=llm.max_tokens,
            client_kwargs={"timeout": llm.timeout_s},
        )
    raise ConfigError(f"llm.backend={llm.backend} has no chat model")


def _is_refusal(exc: BaseException) -> bool:
    """The server rejected the request's form (400, 422 or llama.cpp's 500 on an unknown
    response_format), as opposed to a timeout, a 429 or an answer that does not parse."""
    status = getattr(exc, "status_code", None) or getattr(getattr(exc, "response", None), "status_code", None)
    text = str(exc).lower()
    return status in (400, 422, 500) and any(
        w in text for w in ("response_format", "format", "tool", "schema")
    )


def _is_parse_error(exc: BaseException) -> bool:
    """The server answered, but not with the requested structure (worth one repair attempt)."""
    return type(exc).__name__ in {
        "ValidationError",
        "JSONDecodeError",
        "OutputParserException",
        "LengthFinishReasonError",
    }


class LLMReasoner(RulesReasoner):
    """Decides from the evidence table with an LLM; the rules decide what it cannot (failure, an answer
    naming a phrase that is not a candidate of that frame)."""

    def __init__(self, config: AgentSettings, llm: LLMSettings, model: Any | None = None):
        super().__init__(config)
        self.llm = llm
        self.model = model if model is not None else make_chat_model(llm)
        self._given = model is not None
        self.name = f"{llm.backend}:{llm.model}"
        self.spent_s = 0.0
        """Seconds of LLM calls so far (one reasoner per clip: ``llm.clip_budget_s`` bounds them)."""
        self.probes: list[str] = []
        """What ``structured_method: auto`` tried and the server refused, for the trace."""
        self.vision = takes_images(llm)

    def _key(self) -> tuple:
        return (self.llm.backend, self.llm.base_url, self.llm.model)

    def _methods(self) -> list[str]:
        """The structured-output methods to try: the configured one, or (auto) the one this server
        accepted before in this process, else each candidate in turn."""
        if self.llm.structured_method != "auto":
            return [self.llm.structured_method]
        if self._key() in _FOUND:
            return [_FOUND[self._key()]]
        return list(AUTO_METHODS.get(self.llm.backend, ("json_schema",)))

    def _found(self, method: str) -> None:
        if self.llm.structured_method == "auto" and self._key() not in _FOUND:
            _FOUND[self._key()] = method
            self.probes.append(f"structured output: {method} (found by trying)")

    def _within_budget(self) -> tuple[Any, int, bool]:
        """(chat model, retries, capped) for the next call. As configured while the clip's remaining
        LLM time covers the configured timeout and retries; after that a model whose timeout is what
        remains, without retries, so a slow server cannot run a call past ``llm.clip_budget_s``. A
        model handed in (tests) is used as it is."""
        remaining = self.llm.clip_budget_s - self.spent_s
        if self._given or remaining >= self.llm.timeout_s * (self.llm.max_retries + 1):
            return self.model, self.llm.max_retries, False
        capped = self.llm.model_copy(update={"timeout_s": max(0.5, remaining), "max_retries": 0})
        return make_chat_model(capped), 0, True

    def _structured(self, schema: type[BaseModel], method: str, model: Any, retries: int) -> Any:
        """A runnable returning {"raw", "parsed", "parsing_error"} for ``method``."""
        if method == "json_object_schema":
            from langchain_core.runnables import RunnableLambda

            bound = model.bind(response_format={"type": "json_object", "schema": schema.model_json_schema()})

            def parse(msg: Any) -> dict:
                try:
                    return {
                        "raw": msg,
                        "parsed": schema.model_validate_json(str(msg.content)),
                        "parsing_error": None,
                    }
                except ValueError as exc:
                    return {"raw": msg, "parsed": None, "parsing_error": f"{type(exc).__name__}: {exc}"[:300]}

            runnable = bound | RunnableLambda(parse)
        else:
            runnable = model.with_structured_output(schema, method=method, include_raw=True)
        if self.llm.backend == "ollama" and retries:
            # ChatOpenAI retries inside the openai client; Ollama's client does not
            runnable = runnable.with_retry(
                retry_if_exception_type=(Exception,),
                wait_exponential_jitter=True,
                stop_after_attempt=retries + 1,
            )
        return runnable

    # ------------------------------------------------------------------ calls
    def _invoke(
        self, schema: type[BaseModel], user: str | list[dict], node: str
    ) -> tuple[BaseModel | None, list[dict], str]:
        """One structured call, plus one repair call if the answer does not parse. ``user``: the
        message's text, or its content parts (text and images).

        Returns (parsed or None, call stats, error text)."""
        from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

        system = load_prompt("system")
        messages: list = [SystemMessage(system.text), HumanMessage(user)]
        methods = self._methods()
        method = methods[0]
        stats: list[dict] = []
        error = ""
        spent = f"the clip's LLM time budget is spent (%.0f s of {self.llm.clip_budget_s:g})"
        for attempt in range(2):
            if self.spent_s >= self.llm.clip_budget_s:
                return None, stats, spent % self.spent_s
            model, retries, capped = self._within_budget()
            runnable = self._structured(schema, method, model, retries)
            t0 = time.perf_counter()
            try:
                out = runnable.invoke(messages)
            except (
                Exception
            ) as exc:  # network, timeout, HTTP status after retries, or an answer the client could not parse
                reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
                self.spent_s += time.perf_counter() - t0
                if capped and "timeout" in type(exc).__name__.lower():
                    reason = spent % self.spent_s  # the call was cut at what the budget had left
                if _is_refusal(exc) and len(methods) > 1:  # auto: this server does not take that method
                    self.probes.append(f"{method}: refused ({reason[:120]})")
                    methods = methods[1:]
                    method = methods[0]
                    continue
                if not _is_parse_error(exc):
                    stats.append(
                        {
                            "node": node,
                            "tokens": 0,
                            "seconds": round(time.perf_counter() - t0, 3),
                            "ok": False,
                        }
                    )
                    return None, stats, reason
                out = {"raw": None, "parsed": None, "parsing_error": reason}
            else:
                self.spent_s += time.perf_counter() - t0
            self._found(method)
            raw = out.get("raw")
            usage = getattr(raw, "usage_metadata", None) or {}
            parsed = out.get("parsed")
            ok = parsed is not None and out.get("parsing_error") is None
            stats.append(
                {
                    "node": node,
                    "tokens": int(usage.get("total_tokens", 0)),
                    "seconds": round(time.perf_counter() - t0, 3),
                    "ok": ok,
                    "method": method,
                }
            )
            if ok:
                return parsed, stats, ""
            error = f"unusable answer: {str(out.get('parsing_error'))[:200]}"
            if attempt == 0:
                content = getattr(raw, "content", "") or json.dumps(
                    getattr(raw, "tool_calls", ""), default=str
                )
                messages += [
                    AIMessage(str(content)[:2000]),
                    HumanMessage(
                        f"That answer could not be used ({error}). Reply again with only the requested JSON structure."
                    ),
                ]
        return None, stats, error

    def _fallback(self, node: str, what: str, error: str, rules: Decision, stats: list[dict]) -> Decision:
        """The rules' decision, with the failed call's stats and the reason in the trace."""
        step = TraceStep(
            node=node, message=f"LLM {what} failed ({error}); the rules decided", data={"llm": self.name}
        )
        return Decision(rules.phrases, [*self._probe_steps(node), step], stats)

    def _probe_steps(self, node: str) -> list[TraceStep]:
        """What ``structured_method: auto`` found out in this call, as trace steps (then forgotten)."""
        steps = [TraceStep(node=node, message=f"LLM {m}", data={"llm": self.name}) for m in self.probes]
        self.probes = []
        return steps

    # ------------------------------------------------------------------ decisions
    def decide(self, table: list[D.FrameEvidence], data: Evidence) -> Decision:
        rules = super().decide(table)
        if self.vision and data.frames:
            return self._decide_vision(table, data, rules)
        t0 = time.perf_counter()
        parsed, stats, error = self._invoke(
            Proposal, load_prompt("propose").render(last_frame=len(table) - 1, **data.text), "propose"
        )
        if parsed is None:
            return self._fallback("verify", "propose", error, rules, stats)
        per_frame = [list(x) for x in rules.phrases]
        answered: set[int] = set()
        unknown: list[str] = []
        for fp in parsed.frames:
            if not 0 <= fp.frame < len(table):
                continue
            names = {c.phrase for c in table[fp.frame].candidates}
            named = [_clean(p) for p in fp.sounding if _clean(p)][:2]
            picks = [p for p in named if p in names]
            unknown += [p for p in named if p not in names]
            if named and not picks:
                continue  # only phrases the table does not hold: the rules decide this frame
            per_frame[fp.frame] = picks  # a named non-candidate beside a candidate is dropped
            answered.add(fp.frame)
        msg = f"LLM ({self.name}) decided frames {sorted(answered)}: {parsed.reasoning}"
        if len(answered) < len(table):
            msg += "; the rules decided the others" + (
                f" (not candidates: {', '.join(sorted(set(unknown)))})" if unknown else ""
            )
        return self._proposed(per_frame, msg, stats, t0, parsed.reasoning, _unseen(parsed))

    def _proposed(
        self,
        per_frame: list[list[str]],
        msg: str,
        stats: list[dict],
        t0: float,
        reasoning: str,
        unseen: list[str],
        **data,
    ) -> Decision:
        """The LLM's proposal as a Decision: its trace step (calls, tokens, seconds, what it said is not
        visible) and its reasoning."""
        data = {
            "llm": self.name,
            **data,
            "tokens": sum(x["tokens"] for x in stats),
            "seconds": round(time.perf_counter() - t0, 3),
        }
        if unseen:
            msg += f"; not visible, it says: {', '.join(unseen)}"
        step = TraceStep(node="verify", message=msg, data=data)
        said = " ".join(str(reasoning).split())[:MAX_REASONING_CHARS]
        return Decision(per_frame, [*self._probe_steps("verify"), step], stats, said)

    def _decide_vision(self, table: list[D.FrameEvidence], data: Evidence, rules: Decision) -> Decision:
        """The frames tiled with numbered boxes and the evidence table, one call; the chosen boxes'
        phrases are segmented. A frame the image does not show takes the nearest shown frame's choice
        where those phrases are its candidates too; a number that is not a box of its frame, or a
        frame left unanswered, is decided by the rules (the trace says which)."""
        from agent.vision import build_view

        t0 = time.perf_counter()
        llm = self.llm
        view = build_view(
            data.frames,
            table,
            data.groundings,
            self.config.decision,
            llm.vision_frames,
            llm.vision_max_side,
            llm.vision_boxes,
        )
        text = load_prompt("vision").render(legend=view.legend(), **data.text)
        content = [{"type": "text", "text": text}] + [
            {"type": "image_url", "image_url": {"url": url, "detail": llm.vision_detail}}
            for url in view.images
        ]
        parsed, stats, error = self._invoke(VisionProposal, content, "propose")
        if parsed is None:
            return self._fallback("verify", "vision propose", error, rules, stats)
        per_frame = [list(x) for x in rules.phrases]
        answered: dict[int, list[str]] = {}
        wrong: list[str] = []
        for fp in parsed.frames:
            if fp.frame not in view.shown or fp.frame in answered:
                continue
            boxes = [(n, view.box(n)) for n in fp.boxes[:2]]
            picked = [b for _, b in boxes if b is not None and b.frame == fp.frame]
            wrong += [f"box {n} on frame {fp.frame}" for n, b in boxes if b not in picked]
            if boxes and not picked:
                continue  # only numbers that are not boxes of this frame: the rules decide it
            if picked:  # a wrong number beside a right one is dropped (as a non-candidate phrase is)
                answered[fp.frame] = list(dict.fromkeys(b.phrase for b in picked))
            else:
                answered[fp.frame] = [_clean(fp.phrase)] if _clean(fp.phrase) else []
        carried = []
        for t in range(len(table)):
            if t in answered or t in view.shown or not answered:
                continue
            near = min(answered, key=lambda s: (abs(s - t), s))
            names = {c.phrase for c in table[t].candidates}
            if all(ph in names for ph in answered[near]):
                answered[t] = list(answered[near])
                carried.append(t)
        for t, phrases in answered.items():
            per_frame[t] = phrases
        msg = (
            f"vision LLM ({self.name}) saw frames {view.shown} with {len(view.boxes)} numbered boxes and "
            f"decided frames {sorted(answered)}: {parsed.reasoning}"
        )
        if carried:
            msg += f"; frames {carried} took the nearest shown frame's choice"
        if len(answered) < len(table):
            msg += "; the rules decided the others"
        if wrong:
            msg += f" (not a box of that frame: {', '.join(wrong)})"
        return self._proposed(
            per_frame,
            msg,
            stats,
            t0,
            parsed.reasoning,
            _unseen(parsed),
            images=[list(sz) for sz in view.sizes],
            boxes={b.number: [b.frame, b.phrase] for b in view.boxes},
        )

    def retry(
        self, failing: list[int], choices: list[Choice], table: list[D.FrameEvidence], data: Evidence
    ) -> Decision:
        rules = super().retry(failing, choices, table)
        if not failing:
            return rules
        failures = "\n".join(
            f"frame {i}: {', '.join(choices[i].phrases)} -> {choices[i].reason}; tried: {', '.join([*choices[i].tried, *choices[i].phrases])}"
            for i in failing
        )
        evidence = "\n".join(
            line
            for line in data.text["evidence"].splitlines()
            if int(line.split(":")[0].split()[1]) in failing
        )
        parsed, stats, error = self._invoke(
            RetryDecision,
            load_prompt("retry").render(
                question_block=data.text["question_block"],
                clip_tags=data.text["clip_tags"],
                failures=failures,
                evidence=evidence,
            ),
            "retry",
        )
        if parsed is None:
            return self._fallback("retry", "retry", error, rules, stats)
        out = [list(x) for x in rules.phrases]
        for fr in parsed.frames:
            if fr.frame in failing:
                out[fr.frame] = [_clean(fr.phrase)] if fr.phrase and _clean(fr.phrase) else []
        step = TraceStep(
            node="retry",
            message=f"LLM ({self.name}) retry phrases: { {i: out[i] for i in failing} }",
            data={"llm": self.name},
        )
        return Decision(out, [*self._probe_steps("retry"), step], stats)


_TABLE_TAIL = re.compile(r"(\s*\[.*|(\s+[-+]?\d+(\.\d+)?)+)$")
"""What a small model copies from the evidence table after a phrase ("dog 3.946", "dog [audio 0.51 ...")."""


def _unseen(parsed: Proposal | VisionProposal) -> list[str]:
    """The sources the LLM says the audio points to but no frame shows (for the trace)."""
    return list(dict.fromkeys(_clean(p) for fp in parsed.frames for p in fp.not_visible if _clean(p)))[:5]


def _clean(phrase: str | None) -> str:
    if not phrase:
        return ""
    p = " ".join(str(phrase).strip().strip(".").split()).lower()
    p = _TABLE_TAIL.sub("", p).strip()
    for article in ("a ", "an ", "the "):
        if p.startswith(article):
            p = p[len(article) :]
    return p[:60]


def make_reasoner(agent: AgentSettings, llm: LLMSettings) -> Reasoner:
    return RulesReasoner(agent) if llm.backend == "rules" else LLMReasoner(agent, llm)
