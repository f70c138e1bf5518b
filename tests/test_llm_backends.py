"""LLM backends against local fake servers (real HTTP, real ChatOpenAI / ChatOllama) on real dev clips."""

import csv
import json

import numpy as np
import pytest
from tests.conftest import LLM_CLIP, LLM_EVIDENCE, LLM_SETS, dev_clip_paths, llm_settings, run_cli
from tests.fake_llm import FakeLLMServer, sent_schema
from typer.testing import CliRunner

from avs_agent.agent.run import run_clip
from avs_agent.agent.settings import load_settings
from avs_agent.apps.cli import app
from avs_agent.tools.media import load_clip
from avs_agent.tools.wiring import get_toolset

CLIP = LLM_CLIP
_settings = llm_settings
PEOPLE = {  # the car: a candidate of every frame's evidence table that the rules do not choose
    "source": "car",
    "second_source": "none",
    "reason": "scripted: the car",
}


@pytest.mark.parametrize(
    "protocol,method,item",
    [
        ("openai", "json_schema", {"json": PEOPLE}),
        ("openai", "function_calling", {"tool": PEOPLE}),
        ("ollama", "json_schema", {"json": PEOPLE}),
        ("ollama", "function_calling", {"tool": PEOPLE}),
    ],
)
def test_llm_decisions_are_used(llm_clip, llm_rules_answer, protocol, method, item):
    assert llm_rules_answer.labels == ["dog"]
    with FakeLLMServer(protocol, [item]) as srv:
        s = _settings(srv, **{"llm.structured_method": method})
        ans = run_clip(llm_clip, s, get_toolset(s.tool_config()))
    assert ans.labels == ["car"]  # the server's decision, visible in labels and masks
    assert not np.array_equal(ans.masks[0], llm_rules_answer.masks[0])
    assert ans.stats["llm_calls"] == 1 and ans.stats["llm_tokens"] == 120
    assert any(s.event == "llm_chose" and s.object == "car" for s in ans.trace)
    assert ans.text.endswith("reasoned: scripted: the car")  # its reading is quoted, no extra call
    assert "reasoned" not in llm_rules_answer.text
    assert len(srv.requests) == 1
    # the menu reached the server as the answer's schema: the clip's candidates or none
    kind, schema = sent_schema(srv.requests[0]["body"])
    assert schema["properties"]["source"]["enum"] == ["dog", "car", "none"], schema
    assert kind == {"json_schema": "json_schema" if protocol == "openai" else "format"}.get(method, "tool")


@pytest.mark.parametrize("server", ["openai", "ollama", "llama.cpp"])
def test_the_menu_reaches_every_backend_that_constrains_decoding(llm_clip, server):
    """OpenAI gets a strict json_schema (its strict subset: no length keywords), Ollama the schema as
    ``format``, llama.cpp's server (which refuses json_schema) json_object with the schema; each holds
    the model to the clip's candidates or 'none', with a bounded reason, and caps the answer's tokens
    at what the schema allows."""
    from avs_agent.agent import llm as L

    L._FOUND.clear()
    protocol = "ollama" if server == "ollama" else "openai"
    refuse = ("json_schema",) if server == "llama.cpp" else ()
    with FakeLLMServer(protocol, [{"json": PEOPLE}], refuse=refuse) as srv:
        s = _settings(srv, **{"llm.max_retries": 0, "llm.max_tokens": 4096})
        ans = run_clip(llm_clip, s, get_toolset(s.tool_config()))
    L._FOUND.clear()
    body = srv.requests[-1]["body"]
    kind, schema = sent_schema(body)
    assert kind == {"openai": "json_schema", "ollama": "format", "llama.cpp": "json_object"}[server]
    props = schema["properties"]
    assert list(props) == ["source", "second_source", "reason"] and schema["required"] == list(props)
    assert schema["additionalProperties"] is False
    assert props["source"]["enum"] == props["second_source"]["enum"] == ["dog", "car", "none"]
    if server == "openai":
        assert body["response_format"]["json_schema"]["strict"] is True
        assert "maxLength" not in props["reason"]  # outside OpenAI's strict subset; we cut it ourselves
        cap = body.get("max_tokens", body.get("max_completion_tokens"))
    else:
        assert props["reason"]["maxLength"] == L.REASON_CHARS
        cap = body["options"]["num_predict"] if server == "ollama" else body["max_tokens"]
    assert cap == L.answer_tokens(schema) < 400  # (a string without maxLength counts as REASON_CHARS)
    assert ans.labels == ["car"]


def test_a_phrase_the_table_does_not_hold_is_off_the_menu(llm_clip, llm_rules_answer):
    """The people are in view but nothing in the audio points to them: not a candidate. A server that
    does not constrain decoding answers 'person' anyway: held to the schema on our side, the answer
    gets one repair request, then the rules decide and the trace names what was off the menu."""
    people = {"source": "person", "second_source": "none", "reason": "people"}
    with FakeLLMServer("openai", [{"json": people}]) as srv:
        s = _settings(srv)
        ans = run_clip(llm_clip, s, get_toolset(s.tool_config()))
    assert len(srv.requests) == 2 and ans.labels == llm_rules_answer.labels
    assert any(
        t.event == "llm_failed"
        and t.reason == "unusable"
        and 'off the menu: answer.source: "person" is not one of' in t.data["error"]
        for t in ans.trace
    ), [t.message for t in ans.trace]


def test_a_candidate_named_loosely_is_read_back(llm_clip):
    """'The Car.' from a server that does not constrain is the candidate 'car'."""
    loose = {"source": "The Car.", "second_source": "none", "reason": "x"}
    with FakeLLMServer("openai", [{"json": loose}]) as srv:
        s = _settings(srv)
        ans = run_clip(llm_clip, s, get_toolset(s.tool_config()))
    assert ans.labels == ["car"] and len(srv.requests) == 1


@pytest.mark.parametrize("protocol", ["openai", "ollama"])
def test_garbage_gets_one_repair_then_the_rules(llm_clip, llm_rules_answer, protocol):
    with FakeLLMServer(protocol, [{"content": "I think it is a dog!"}]) as srv:
        s = _settings(srv)
        ans = run_clip(llm_clip, s, get_toolset(s.tool_config()))
    assert len(srv.requests) == 2  # the answer and one repair attempt
    assert ans.labels == llm_rules_answer.labels
    assert all(np.array_equal(a, b) for a, b in zip(ans.masks, llm_rules_answer.masks, strict=True))
    assert any(s.event == "llm_failed" and s.reason == "unusable" for s in ans.trace)
    # in words, as answer.json, the chat's /trace and the page show it
    assert any(s.message.startswith("LLM propose failed (unusable answer: ") for s in ans.trace)
    assert any(s.message.endswith("; the rules decided") for s in ans.trace)


def test_timeout_falls_back_to_the_rules(llm_clip, llm_rules_answer):
    with FakeLLMServer("openai", [{"sleep": 3}, {"json": PEOPLE}]) as srv:
        s = _settings(srv, **{"llm.timeout_s": 0.5, "llm.max_retries": 0})
        ans = run_clip(llm_clip, s, get_toolset(s.tool_config()))
    assert ans.labels == llm_rules_answer.labels
    assert any(s.event == "llm_failed" and s.reason == "timeout" for s in ans.trace)


def test_429_is_retried_with_backoff(llm_clip):
    with FakeLLMServer("openai", [{"status": 429}, {"json": PEOPLE}]) as srv:
        s = _settings(srv, **{"llm.max_retries": 2})
        ans = run_clip(llm_clip, s, get_toolset(s.tool_config()))
    assert len(srv.requests) == 2 and ans.labels == ["car"]


def test_server_down_falls_back(llm_clip, llm_rules_answer):
    s = load_settings(
        overrides=[
            "llm.backend=openai",
            "llm.base_url=http://127.0.0.1:9/v1",
            "llm.max_retries=0",
            "llm.timeout_s=2",
            *LLM_EVIDENCE,
        ]
    )
    ans = run_clip(llm_clip, s, get_toolset(s.tool_config()))
    assert ans.labels == llm_rules_answer.labels
    assert any(  # gpt-4o: shown the frames
        s.event == "llm_failed" and s.reason == "call_failed" and s.data["call"] == "vision propose"
        for s in ans.trace
    )


def test_cli_ask_uses_the_server(tmp_path, dev_set):
    frames, wav, _ = dev_clip_paths(CLIP)
    with FakeLLMServer("openai", [{"json": PEOPLE}]) as srv:
        res = CliRunner().invoke(
            app,
            [
                "ask",
                str(frames),
                "--audio",
                str(wav),
                "--json",
                "--set",
                "llm.backend=openai",
                "--set",
                f"llm.base_url={srv.url}",
                "--set",
                "llm.vision=off",  # gpt-4o (the default model) would be shown the frames: tests/test_llm_vision.py
                *LLM_SETS,
            ],
        )
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert (
        data["labels"] == ["car"]
        and data["stats"]["llm_calls"] == 1
        and data["stats"]["reasoner"].startswith("openai")
    )


def test_missing_api_key_is_one_line(tmp_path, dev_set, monkeypatch):
    frames, wav, _ = dev_clip_paths(CLIP)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    res = run_cli("ask", str(frames), "--audio", str(wav), "--set", "llm.backend=openai")
    assert res.exit_code == 2 and len(res.error_lines) == 1 and "OPENAI_API_KEY" in res.stderr


@pytest.mark.slow
def test_llm_calls_per_clip_over_the_dev_set(dev_set):
    """Target: <= 1.2 LLM calls per clip on average (one proposal per clip; retries add at most one)."""
    rows = list(csv.DictReader(open(dev_set / "s4_meta_data.csv")))
    from tests.fake_llm import menu_answer

    calls = 0
    with FakeLLMServer("openai", [{"reply": menu_answer}]) as srv:
        s = _settings(srv)
        tools = get_toolset(s.tool_config())
        for r in rows:
            frames, wav, _ = dev_clip_paths(r["name"])
            ans = run_clip(load_clip(frames, wav), s, tools)
            calls += ans.stats["llm_calls"]
    assert calls == len(srv.requests)
    assert calls / len(rows) <= 1.2


@pytest.mark.parametrize("protocol", ["openai", "ollama"])
def test_each_call_caps_its_output_tokens(llm_clip, protocol):
    """Small local models run to the timeout without a cap: every request carries the schema's cap,
    or llm.max_tokens where that is lower."""
    with FakeLLMServer(protocol, [{"json": PEOPLE}]) as srv:
        s = _settings(srv, **{"llm.max_tokens": 100})
        run_clip(llm_clip, s, get_toolset(s.tool_config()))
    body = srv.requests[0]["body"]
    cap = (
        body.get("max_tokens", body.get("max_completion_tokens"))
        if protocol == "openai"
        else body["options"]["num_predict"]
    )
    assert cap == 100


def test_the_clip_time_budget_hands_the_rest_to_the_rules(llm_clip, llm_rules_answer):
    """A slow garbage answer spends the clip's budget: no repair call, the rules decide, the trace says why;
    a budget of zero makes no call at all."""
    with FakeLLMServer("openai", [{"sleep": 1.2}, {"content": "not json"}]) as srv:
        s = _settings(srv, **{"llm.clip_budget_s": 1.0})
        ans = run_clip(llm_clip, s, get_toolset(s.tool_config()))
    assert len(srv.requests) == 1 and ans.labels == llm_rules_answer.labels
    assert any(t.event == "llm_failed" and t.reason == "budget_spent" for t in ans.trace)
    with FakeLLMServer("openai", [{"json": PEOPLE}]) as srv:
        s = _settings(srv, **{"llm.clip_budget_s": 0})
        ans = run_clip(llm_clip, s, get_toolset(s.tool_config()))
    assert srv.requests == [] and ans.labels == llm_rules_answer.labels


def test_auto_finds_what_a_llama_cpp_like_server_takes(llm_clip):
    """llama.cpp's server refuses a json_schema response_format (HTTP 500) but takes json_object with a
    schema: auto tries, says so in the trace, and the LLM decides; the next clip asks the found way."""
    from avs_agent.agent import llm as L

    L._FOUND.clear()
    with FakeLLMServer("openai", [{"json": PEOPLE}], refuse=("json_schema",)) as srv:
        s = _settings(srv, **{"llm.max_retries": 0})
        ans = run_clip(llm_clip, s, get_toolset(s.tool_config()))
        again = run_clip(llm_clip, s, get_toolset(s.tool_config()))
    kinds = [(r["body"].get("response_format") or {}).get("type") for r in srv.requests]
    assert kinds == ["json_schema", "json_object", "json_object"]
    schema = srv.requests[1]["body"]["response_format"]["schema"]
    assert schema["title"] == "propose" and schema["properties"]["source"]["enum"] == ["dog", "car", "none"]
    assert ans.labels == again.labels == ["car"]
    found = [(t.data["method"], t.reason) for t in ans.trace if t.event == "llm_method"]
    assert found == [("json_schema", "refused"), ("json_object_schema", "")]
    L._FOUND.clear()


def test_phrases_copied_with_their_table_scores_are_read_back():
    """Small models copy the evidence table's entries ("dog 3.946 [audio ...]"): the phrase is kept."""
    from avs_agent.agent.llm import _clean

    assert _clean("The dog 3.946") == "dog"
    assert _clean("electric shaver [audio 0.51: tag:Shaver 0.5]") == "electric shaver"
    assert _clean("a car.") == "car" and _clean(None) == ""


def test_a_slow_server_cannot_run_a_call_past_the_clip_budget(llm_clip, llm_rules_answer, monkeypatch):
    """A local server that takes 10 s per answer, a 5 s timeout with 2 retries (15 s and more) but a
    3 s clip budget: the call goes out with the budget as its timeout and no retry, is cut (the answer
    the server sends after 10 s would pick the people), and the rules decide."""
    from avs_agent.agent import llm as L

    built = []
    make = L.make_chat_model
    monkeypatch.setattr(L, "make_chat_model", lambda s: built.append(s) or make(s))
    with FakeLLMServer("openai", [{"sleep": 10}, {"json": PEOPLE}]) as srv:
        s = _settings(srv, **{"llm.clip_budget_s": 3, "llm.max_retries": 2})
        ans = run_clip(llm_clip, s, get_toolset(s.tool_config()))
        assert len(srv.requests) == 1
    assert [(b.timeout_s, b.max_retries) for b in built[1:]] == [(3, 0)]  # [0]: as configured, unused
    assert ans.labels == llm_rules_answer.labels
    (failed,) = [t for t in ans.trace if t.event == "llm_failed"]
    assert failed.reason == "budget_spent" and "time budget is spent" in failed.message


def test_the_schema_is_held_on_our_side():
    """What a server that does not constrain decoding may send back: an enum value as named (or as
    _clean reads it back), a reason cut to its bound, unknown keys dropped; anything off the menu
    raises, naming it."""
    from avs_agent.agent import llm as L

    schema = L.retry_schema({0: ["car", "person"], 2: []})
    assert list(schema["properties"]) == ["frame_0", "reason"]  # a frame with nothing to try is not asked
    assert schema["properties"]["frame_0"]["enum"] == ["car", "person", "none"]
    ok = L.validate(schema, {"frame_0": "the car", "reason": "x" * 500, "extra": 1})
    assert ok == {"frame_0": "car", "reason": "x" * L.REASON_CHARS}
    for bad, why in [
        ({"frame_0": "dog", "reason": ""}, 'answer.frame_0: "dog" is not one of "car", "person", "none"'),
        ({"reason": ""}, "answer: missing frame_0"),
        ({"frame_0": 3, "reason": ""}, "answer.frame_0: 3 is not one of"),
    ]:
        with pytest.raises(ValueError, match=why):
            L.validate(schema, bad)
    vision = L.vision_schema({0: [1, 2], 3: [5], 4: []})
    assert list(vision["properties"]) == ["frame_0", "frame_3", "reason"]
    assert L.validate(vision, {"frame_0": [2, 1, 1], "frame_3": [], "reason": ""})["frame_0"] == [2, 1]
    with pytest.raises(ValueError, match="answer.frame_3\\[0\\]: 1 is not one of 5"):
        L.validate(vision, {"frame_0": [], "frame_3": [1], "reason": ""})
    assert L.retry_schema({0: []}) is None and L.vision_schema({0: []}) is None
    # OpenAI's strict subset keeps the menu and drops only length keywords
    strict = L.strict_subset(vision)
    assert strict["properties"]["frame_0"] == {
        "type": "array",
        "items": {"type": "integer", "enum": [1, 2]},
        "description": vision["properties"]["frame_0"]["description"],
    }
    assert "maxLength" not in strict["properties"]["reason"]
    assert L.answer_tokens(schema) < 260 and L.answer_tokens(vision) < 280
