"""LLM backends and the LLM reasoner.

``make_chat_model`` builds the configured chat model (``llm.backend``: openai — also any
OpenAI-compatible server through ``llm.base_url`` — or ollama). ``LLMReasoner`` makes the decide and
retry decisions with structured output. Tool outputs reach the LLM only inside <data>...</data>
(prompts/system.md).

The answer's schema is built per clip from the evidence (issue 28): what the model may name is an enum
of the clip's candidate phrases or 'none' (propose), of each shown frame's box numbers (vision), of
each failing frame's retry menu (retry); the only free text is a short reason, bounded in length. The
schema goes to every backend that constrains decoding with it (OpenAI's strict ``json_schema`` or a
strict tool, Ollama's ``format``, llama.cpp's ``json_object`` with a ``schema``), so such a model cannot
answer off the menu; the answer is held to the same schema on our side (``validate``) for servers that
do not constrain. The output-token cap follows from the schema (``answer_tokens``). Any failure —
timeout, HTTP error after the client's retries with backoff, an answer that does not parse or is off
the menu even after one repair attempt — falls back to the rules for that decision, and the trace says
why.

The decision is clip-level where the decision model is (it weighs 'none' once per clip): one answer
per clip names the source (and a second one, or none); each frame takes the chosen phrases that are its
candidates. The vision path answers per shown frame (a box number belongs to one frame) and a retry
per failing frame. A model that takes images (``llm.vision``) sees the frames tiled into one image
with every candidate drawn as a numbered box (agent/vision.py). Cost: one call decides a clip; each
retry round adds at most one call.
"""

from __future__ import annotations

import json
import os
import re
import time
from typing import Any

from avs_agent.agent import decision as D
from avs_agent.agent import trace as T
from avs_agent.agent.prompts import load_prompt
from avs_agent.agent.rules import Decision, Evidence, Reasoner, RulesReasoner
from avs_agent.agent.settings import AgentSettings, LLMSettings
from avs_agent.agent.state import Choice
from avs_agent.tools.errors import ConfigError
from avs_agent.tools.types import TraceStep

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


REASON_CHARS = 120
"""The one free-text field of an answer, a short reason, is at most this long (the schema says so where
the server constrains lengths; we cut it where it does not)."""
NONE = "none"
"""What the model names when no visible candidate makes the sound (never a candidate's phrase)."""


# ------------------------------------------------------------------ answer schemas, built per clip
def propose_schema(table: list[D.FrameEvidence]) -> dict | None:
    """The clip-level propose answer: which visible candidate makes the sound (an enum of the clip's
    candidate phrases, best clip rank first, or 'none'), a second one or 'none', and a short reason.
    None when the menu is 'none' alone (no frame has a candidate: nothing to ask)."""
    menu = _menu(table)
    return propose_schema_from_menu(menu) if menu else None


def propose_schema_from_menu(menu: list[str]) -> dict:
    """``propose_schema`` for a menu of candidate phrases ('none' is added)."""
    enum = [*menu, NONE]
    return _object(
        "propose",
        {
            "source": {
                "type": "string",
                "enum": enum,
                "description": "the visible candidate making the sound, or none",
            },
            "second_source": {
                "type": "string",
                "enum": enum,
                "description": "another visible candidate making the sound too, or none (usually none)",
            },
            "reason": _reason(),
        },
    )


def vision_schema(boxes: dict[int, list[int]]) -> dict | None:
    """The vision answer: per shown frame (``frame_<i>``), the numbers of its boxes whose object makes
    the sound (an enum of that frame's numbers; empty = none of them), and a short reason. None when no
    frame has a box."""
    if not any(boxes.values()):
        return None
    props = {
        f"frame_{t}": {
            "type": "array",
            "items": {"type": "integer", "enum": nums},
            "maxItems": 2,
            "description": f"the numbers of frame {t}'s boxes whose object makes the sound, best first; [] if none",
        }
        for t, nums in boxes.items()
        if nums
    }
    return _object("vision", {**props, "reason": _reason()})


def retry_schema(menus: dict[int, list[str]]) -> dict | None:
    """The retry answer: per failing frame (``frame_<i>``), the next phrase from that frame's retry menu
    (its candidates not tried yet) or 'none' to give up, and a short reason. None when every menu is
    empty."""
    if not any(menus.values()):
        return None
    props = {
        f"frame_{t}": {
            "type": "string",
            "enum": [*menu, NONE],
            "description": f"the phrase to segment next on frame {t}, or none to give up",
        }
        for t, menu in menus.items()
        if menu
    }
    return _object("retry", {**props, "reason": _reason()})


def _menu(table: list[D.FrameEvidence]) -> list[str]:
    """The clip's candidate phrases, best clip rank first ('none' is never one)."""
    ranked = sorted(D.clip_scores(table, key="rank").items(), key=lambda kv: -kv[1])
    return [ph for ph, _ in ranked if ph != NONE]


def _reason() -> dict:
    return {"type": "string", "maxLength": REASON_CHARS, "description": "one short sentence"}


def _object(name: str, props: dict) -> dict:
    return {
        "title": name,
        "type": "object",
        "properties": props,
        "required": list(props),
        "additionalProperties": False,
    }


STRICT_DROPS = ("maxLength", "minLength", "maxItems", "minItems")
"""Keywords outside the subset every strict JSON-schema API takes (OpenAI's strict mode refuses
length keywords): dropped from what such a server is sent; ``validate`` still applies them."""


def strict_subset(schema: Any) -> Any:
    """The schema without ``STRICT_DROPS`` (recursively); enums, types, required and
    additionalProperties stay, so decoding is still held to the menu."""
    if isinstance(schema, list):
        return [strict_subset(x) for x in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for k, v in schema.items():
        if k in STRICT_DROPS:
            continue
        if k == "properties":
            out[k] = {name: strict_subset(sub) for name, sub in v.items()}
        else:
            out[k] = v if k == "enum" else strict_subset(v)
    return out


def answer_tokens(schema: dict) -> int:
    """The output-token cap that follows from the schema: the longest valid answer's characters (a
    token is at least one character), plus a little whitespace per field."""
    return _max_chars(schema) + 4 * _fields(schema) + 16


def _max_chars(s: dict) -> int:
    if "enum" in s:
        return max(len(json.dumps(v)) for v in s["enum"])
    types = s.get("type") if isinstance(s.get("type"), list) else [s.get("type")]
    if "object" in types:
        return 2 + sum(len(json.dumps(k)) + 2 + _max_chars(v) for k, v in s["properties"].items())
    if "array" in types:
        return 2 + s.get("maxItems", 4) * (_max_chars(s["items"]) + 2)
    if "string" in types:
        return s.get("maxLength", REASON_CHARS) + 2
    return 12  # a number, a boolean or null


def _fields(s: dict) -> int:
    if "properties" in s:
        return len(s["properties"]) + sum(_fields(v) for v in s["properties"].values())
    if "items" in s:
        return s.get("maxItems", 4)
    return 0


def validate(schema: dict, value: Any, path: str = "answer") -> Any:
    """Our side of the contract, for servers that do not constrain decoding: the answer held to the
    schema (an enum value as named, or as ``_clean`` reads it back), a string cut to its maxLength, an
    array to its maxItems, unknown keys dropped. Raises ValueError naming what is off the menu."""
    if "enum" in schema:
        if isinstance(value, str) and value not in schema["enum"] and _clean(value) in schema["enum"]:
            value = _clean(value)
        if isinstance(value, bool) or value not in schema["enum"]:
            shown = ", ".join(json.dumps(v) for v in schema["enum"][:12])
            raise ValueError(f"{path}: {json.dumps(value)[:60]} is not one of {shown}")
        return value
    types = schema.get("type") if isinstance(schema.get("type"), list) else [schema.get("type")]
    if value is None and "null" in types:
        return None
    if "object" in types:
        if not isinstance(value, dict):
            raise ValueError(f"{path}: expected an object")
        missing = [k for k in schema.get("required", []) if k not in value]
        if missing:
            raise ValueError(f"{path}: missing {', '.join(missing)}")
        props = schema["properties"]
        return {k: validate(props[k], v, f"{path}.{k}") for k, v in value.items() if k in props}
    if "array" in types:
        if not isinstance(value, list):
            raise ValueError(f"{path}: expected a list")
        return [validate(schema["items"], v, f"{path}[{i}]") for i, v in enumerate(value)][
            : schema.get("maxItems")
        ]
    if "string" in types:
        if not isinstance(value, str):
            raise ValueError(f"{path}: expected a string")
        return value[: schema.get("maxLength")]
    if "integer" in types:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{path}: expected an integer")
    return value


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
            seed=llm.seed,
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
            seed=llm.seed,
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
        self.probes: list[tuple[str, str, str]] = []
        """What ``structured_method: auto`` tried (method, 'refused' or 'found', in words), for the
        trace."""
        self.vision = takes_images(llm)
        self._models: dict[tuple, Any] = {}
        """Chat models by (output cap, time-capped): one per schema size, built once per clip."""

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
            self.probes.append((method, "found", f"structured output: {method} (found by trying)"))

    def _within_budget(self, cap: int | None) -> tuple[Any, int, bool]:
        """(chat model, retries, capped) for the next call, its output capped at ``cap`` tokens. As
        configured while the clip's remaining LLM time covers the configured timeout and retries;
        after that a model whose timeout is what remains, without retries, so a slow server cannot run
        a call past ``llm.clip_budget_s``. A model handed in (tests) is used as it is."""
        if self._given:
            return self.model, self.llm.max_retries, False
        remaining = self.llm.clip_budget_s - self.spent_s
        update: dict[str, Any] = {"max_tokens": cap}
        capped = remaining < self.llm.timeout_s * (self.llm.max_retries + 1)
        if capped:
            update |= {"timeout_s": max(0.5, remaining), "max_retries": 0}
        key = (cap, capped and round(remaining, 3))
        if key not in self._models:
            self._models[key] = make_chat_model(self.llm.model_copy(update=update))
        return self._models[key], (0 if capped else self.llm.max_retries), capped

    def _structured(self, schema: dict, method: str, model: Any, retries: int) -> Any:
        """A runnable returning {"raw", "parsed", "parsing_error"} for ``method``, the schema sent the
        way that method takes it: OpenAI's strict json_schema (or a strict tool), llama.cpp's
        json_object with a schema, Ollama's ``format``. Whatever comes back is held to the schema on
        our side too (``validate``): a server that does not constrain decoding can still answer off the
        menu."""
        from langchain_core.runnables import RunnableLambda

        name = schema["title"]
        if method == "json_object_schema":

            def parse(msg: Any) -> dict:
                try:
                    return {"raw": msg, "parsed": json.loads(str(msg.content)), "parsing_error": None}
                except ValueError as exc:
                    return {"raw": msg, "parsed": None, "parsing_error": f"{type(exc).__name__}: {exc}"}

            runnable = model.bind(response_format={"type": "json_object", "schema": schema}) | RunnableLambda(
                parse
            )
        elif self.llm.backend == "openai":
            sent = strict_subset(schema)
            if method == "json_schema":
                runnable = model.with_structured_output(
                    {"name": name, "strict": True, "schema": sent}, method="json_schema", include_raw=True
                )
            elif method == "function_calling":
                tool = {**sent, "description": f"the {name} answer"}
                runnable = model.with_structured_output(
                    tool, method="function_calling", strict=True, include_raw=True
                )
            else:
                runnable = model.with_structured_output(sent, method=method, include_raw=True)
        else:  # ollama: the schema as ``format`` (json_schema) or as a tool's parameters
            runnable = model.with_structured_output(
                {**schema, "description": f"the {name} answer"}, method=method, include_raw=True
            )

        def check(out: dict) -> dict:
            if out.get("parsing_error") is not None or out.get("parsed") is None:
                err = out.get("parsing_error") or "no answer"
                return {**out, "parsed": None, "parsing_error": f"{err}"[:300]}
            try:
                return {**out, "parsed": validate(schema, out["parsed"])}
            except ValueError as exc:
                return {**out, "parsed": None, "parsing_error": f"off the menu: {exc}"[:300]}

        runnable = runnable | RunnableLambda(check)
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
        self, schema: dict, user: str | list[dict], node: str
    ) -> tuple[dict | None, list[dict], str, str]:
        """One structured call, plus one repair call if the answer does not parse or is off the
        schema's menu. ``user``: the message's text, or its content parts (text and images). The
        output is capped at what the schema allows (``answer_tokens``, within ``llm.max_tokens``).

        Returns (the answer held to the schema, or None; call stats; error text; its reason code,
        agent/trace.py ``REASONS``: budget_spent, timeout, call_failed or unusable)."""
        from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

        system = load_prompt("system")
        messages: list = [SystemMessage(system.text), HumanMessage(user)]
        methods = self._methods()
        method = methods[0]
        cap = answer_tokens(schema)
        if self.llm.max_tokens:
            cap = min(cap, self.llm.max_tokens)
        stats: list[dict] = []
        error = ""
        spent = f"the clip's LLM time budget is spent (%.0f s of {self.llm.clip_budget_s:g})"
        for attempt in range(2):
            if self.spent_s >= self.llm.clip_budget_s:
                return None, stats, spent % self.spent_s, "budget_spent"
            model, retries, capped = self._within_budget(cap)
            runnable = self._structured(schema, method, model, retries)
            t0 = time.perf_counter()
            try:
                out = runnable.invoke(messages)
            except (
                Exception
            ) as exc:  # network, timeout, HTTP status after retries, or an answer the client could not parse
                reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
                self.spent_s += time.perf_counter() - t0
                timed_out = "timeout" in type(exc).__name__.lower()
                code = "timeout" if timed_out else "call_failed"
                if capped and timed_out:
                    reason = spent % self.spent_s  # the call was cut at what the budget had left
                    code = "budget_spent"
                if _is_refusal(exc) and len(methods) > 1:  # auto: this server does not take that method
                    self.probes.append((method, "refused", f"{method}: refused ({reason[:120]})"))
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
                    return None, stats, reason, code
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
                    "tokens_in": int(usage.get("input_tokens", 0)),
                    "tokens_out": int(usage.get("output_tokens", 0)),
                    "max_tokens": cap,
                    "seconds": round(time.perf_counter() - t0, 3),
                    "ok": ok,
                    "method": method,
                }
            )
            if ok:
                return parsed, stats, "", ""
            error = f"unusable answer: {str(out.get('parsing_error'))[:200]}"
            if attempt == 0:
                content = getattr(raw, "content", "") or json.dumps(
                    getattr(raw, "tool_calls", ""), default=str
                )
                messages += [
                    AIMessage(str(content)[:2000]),
                    HumanMessage(
                        f"That answer could not be used ({error}). Reply again with only the requested JSON structure, naming only what it offers."
                    ),
                ]
        return None, stats, error, "unusable"

    def _fallback(
        self, node: str, what: str, error: str, code: str, rules: Decision, stats: list[dict]
    ) -> Decision:
        """The rules' decision, with the failed call's stats and the reason in the trace."""
        step = T.step(
            node,
            "llm_failed",
            f"LLM {what} failed ({error}); the rules decided",
            reason=code,
            llm=self.name,
            call=what,
            error=error,
        )
        return Decision(rules.phrases, [*self._probe_steps(node), step], stats)

    def _nothing_to_ask(self, node: str, why: str, rules: Decision) -> Decision:
        """No call: the schema's menu would be 'none' alone, so the answer is none (as the rules'
        is); not a fallback."""
        step = T.step(
            node, "llm_skipped", f"no LLM call: {why}, so none", reason="no_candidate", llm=self.name
        )
        return Decision(rules.phrases, [step], [])

    def _probe_steps(self, node: str) -> list[TraceStep]:
        """What ``structured_method: auto`` found out in this call, as trace steps (then forgotten)."""
        steps = [
            T.step(
                node,
                "llm_method",
                f"LLM {text}",
                reason="refused" if outcome == "refused" else "",
                llm=self.name,
                method=method,
            )
            for method, outcome, text in self.probes
        ]
        self.probes = []
        return steps

    # ------------------------------------------------------------------ decisions
    def decide(self, table: list[D.FrameEvidence], data: Evidence) -> Decision:
        """One clip-level answer (the decision model weighs 'none' once per clip): the source, a second
        one or none, from the clip's candidates. Each frame then takes the chosen phrases that are
        candidates of that frame (a frame where the source was not found is left to propagation)."""
        rules = super().decide(table)
        if self.vision and data.frames:
            return self._decide_vision(table, data, rules)
        schema = propose_schema(table)
        if schema is None:
            return self._nothing_to_ask("verify", "no frame has a visible candidate", rules)
        t0 = time.perf_counter()
        menu = schema["properties"]["source"]["enum"]
        text = load_prompt("propose").render(
            menu=", ".join(menu), candidates=_candidate_lines(table), **data.text
        )
        parsed, stats, error, code = self._invoke(schema, text, "propose")
        if parsed is None:
            return self._fallback("verify", "propose", error, code, rules, stats)
        chosen = [] if parsed["source"] == NONE else [parsed["source"]]
        if chosen and parsed["second_source"] not in (NONE, *chosen):
            chosen.append(parsed["second_source"])
        per_frame = [
            [] if row.silent else [ph for ph in chosen if ph in {c.phrase for c in row.candidates}]
            for row in table
        ]
        said = ", ".join(chosen) or "none (the source is not visible)"
        msg = f"LLM ({self.name}) chose for the clip: {said}: {parsed['reason']}"
        missing = [t for t, ph in enumerate(per_frame) if chosen and not ph and not table[t].silent]
        if missing:
            msg += f"; not a candidate of frames {missing}"
        return self._proposed(
            per_frame, msg, stats, t0, parsed["reason"], answer=parsed, mode="text", chosen=chosen
        )

    def _proposed(
        self, per_frame: list[list[str]], msg: str, stats: list[dict], t0: float, reasoning: str, **data
    ) -> Decision:
        """The LLM's proposal as a Decision: its trace step (calls, tokens, seconds, the answer) and
        its reasoning."""
        data = {
            "llm": self.name,
            **data,
            "tokens": sum(x["tokens"] for x in stats),
            "seconds": round(time.perf_counter() - t0, 3),
        }
        chosen = data.get("chosen") or []
        step = T.step("verify", "llm_chose", msg, object=chosen[0] if len(chosen) == 1 else None, **data)
        said = " ".join(str(reasoning).split())[:MAX_REASONING_CHARS]
        return Decision(per_frame, [*self._probe_steps("verify"), step], stats, said)

    def _decide_vision(self, table: list[D.FrameEvidence], data: Evidence, rules: Decision) -> Decision:
        """The frames tiled with numbered boxes and the evidence table, one call; per shown frame the
        model picks from that frame's box numbers (the schema's enum), and the chosen boxes' phrases
        are segmented. A frame the image does not show takes the nearest shown frame's choice where
        those phrases are its candidates too (else the rules decide it)."""
        from avs_agent.agent.vision import build_view

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
        schema = vision_schema({t: [b.number for b in view.boxes if b.frame == t] for t in view.shown})
        if schema is None:
            return self._nothing_to_ask("verify", "no shown frame has a visible candidate", rules)
        t0 = time.perf_counter()
        text = load_prompt("vision").render(legend=view.legend(), **data.text)
        content = [{"type": "text", "text": text}] + [
            {"type": "image_url", "image_url": {"url": url, "detail": llm.vision_detail}}
            for url in view.images
        ]
        parsed, stats, error, code = self._invoke(schema, content, "propose")
        if parsed is None:
            return self._fallback("verify", "vision propose", error, code, rules, stats)
        per_frame = [list(x) for x in rules.phrases]
        answered: dict[int, list[str]] = {}
        for t in view.shown:
            nums = parsed.get(f"frame_{t}", [])
            answered[t] = list(dict.fromkeys(b.phrase for n in nums if (b := view.box(n)) is not None))
        carried = []
        for t in range(len(table)):
            if t in answered:
                continue
            near = min(view.shown, key=lambda s: (abs(s - t), s))
            names = {c.phrase for c in table[t].candidates}
            if all(ph in names for ph in answered[near]):
                per_frame[t] = list(answered[near])
                carried.append(t)
        for t, phrases in answered.items():
            per_frame[t] = phrases
        msg = (
            f"vision LLM ({self.name}) saw frames {view.shown} with {len(view.boxes)} numbered boxes and "
            f"chose boxes { {t: parsed.get(f'frame_{t}', []) for t in view.shown} }: {parsed['reason']}"
        )
        if carried:
            msg += f"; frames {carried} took the nearest shown frame's choice"
        left = [t for t in range(len(table)) if t not in answered and t not in carried]
        if left:
            msg += f"; the rules decided frames {left}"
        return self._proposed(
            per_frame,
            msg,
            stats,
            t0,
            parsed["reason"],
            answer=parsed,
            mode="vision",
            chosen=list(dict.fromkeys(ph for t in view.shown for ph in per_frame[t])),
            carried=carried,
            rules_decided=left,
            images=[list(sz) for sz in view.sizes],
            boxes={b.number: [b.frame, b.phrase] for b in view.boxes},
        )

    def retry(
        self, failing: list[int], choices: list[Choice], table: list[D.FrameEvidence], data: Evidence
    ) -> Decision:
        """Per failing frame, the next phrase from its retry menu (its candidates not tried yet) or
        none, in one call; a frame whose menu is empty gives up without asking."""
        rules = super().retry(failing, choices, table)
        if not failing:
            return rules
        menus = {
            i: [
                c.phrase
                for c in table[i].candidates
                if c.phrase not in (*choices[i].tried, *choices[i].phrases) and c.phrase != NONE
            ]
            for i in failing
        }
        schema = retry_schema(menus)
        if schema is None:
            return self._nothing_to_ask("retry", "no failing frame has a candidate left to try", rules)
        failures = "\n".join(
            f"frame {i}: {', '.join(choices[i].phrases)} -> {choices[i].reason}; tried: {', '.join([*choices[i].tried, *choices[i].phrases])}; "
            f"may try: {', '.join([*menus[i], NONE])}"
            for i in failing
        )
        evidence = "\n".join(data.rows[i] for i in failing)
        parsed, stats, error, code = self._invoke(
            schema,
            load_prompt("retry").render(
                question_block=data.text["question_block"],
                clip_tags=data.text["clip_tags"],
                failures=failures,
                evidence=evidence,
            ),
            "retry",
        )
        if parsed is None:
            return self._fallback("retry", "retry", error, code, rules, stats)
        out = [list(x) for x in rules.phrases]
        for i in failing:
            pick = parsed.get(f"frame_{i}", NONE)
            out[i] = [] if pick == NONE else [pick]
        step = T.step(
            "retry",
            "llm_retry",
            f"LLM ({self.name}) retry phrases: { {i: out[i] for i in failing} }: {parsed['reason']}",
            llm=self.name,
            answer=parsed,
            phrases={i: out[i] for i in failing},
        )
        return Decision(out, [*self._probe_steps("retry"), step], stats)


def _candidate_lines(table: list[D.FrameEvidence]) -> str:
    """The evidence table read for a clip-level answer, one line per candidate: in how many frames it
    is a candidate, its mean score (weighed against 'none') and rank (against the other candidates)
    over the clip, and its evidence terms where it scores best; then 'none' with the clip's mean none
    score, what is heard but not in view, and the clip's verdict."""
    n = max(len(table), 1)
    scores, ranks = D.clip_scores(table), D.clip_scores(table, key="rank")
    lines = []
    for ph in sorted(ranks, key=lambda p: -ranks[p]):
        seen = [c for row in table for c in row.candidates if c.phrase == ph]
        best = max(seen, key=lambda c: c.score)
        lines.append(
            f"- {ph}: a candidate in {len(seen)} of {n} frames; score {scores[ph]:.3f}, rank {ranks[ph]:.3f}; "
            f"audio {best.audio:.2f} ({', '.join(best.sources)}), salience {best.salience:.3f}, support {best.support:.2f}"
        )
    none = sum(row.none_score for row in table) / n
    heard = sorted(
        {(row.offscreen_from, row.offscreen) for row in table if row.offscreen_from}, key=lambda x: -x[1]
    )
    off = ", ".join(dict.fromkeys(f"{lab} {v:.2f}" for lab, v in heard[:3]))
    verdict = next((D.CLIP_VERDICT[row.clip] for row in table if row.clip), "")
    lines.append(
        f"- none (the source is not visible): score {none:.3f}"
        + (f"; heard but not in view: {off}" if off else "")
        + (f" ({verdict})" if verdict else "")
    )
    silent = sum(row.silent for row in table)
    if silent:
        lines.append(f"(the audio is silent in {silent} of {n} frames)")
    return "\n".join(lines)


_TABLE_TAIL = re.compile(r"(\s*\[.*|(\s+[-+]?\d+(\.\d+)?)+)$")
"""What a small model copies from the evidence table after a phrase ("dog 3.946", "dog [audio 0.51 ...")."""


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
