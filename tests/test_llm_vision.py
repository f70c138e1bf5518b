"""The vision decision (issue 13): the LLM sees the frames tiled with numbered boxes, against the fake
OpenAI and Ollama servers (real HTTP, real ChatOpenAI / ChatOllama) on real dev clips."""

import json

import numpy as np
import pytest
from tests.conftest import LLM_CLIP, LLM_SETS, dev_clip_paths, llm_settings
from tests.fake_llm import FakeLLMServer, images, legend, sent_schema, user_text
from typer.testing import CliRunner

from avs_agent.agent import decision as D
from avs_agent.agent.run import run_clip
from avs_agent.agent.settings import load_settings
from avs_agent.apps.cli import app
from avs_agent.tools.media import load_clip
from avs_agent.tools.wiring import get_toolset

CLIP = LLM_CLIP


def _settings(srv, **extra):
    return llm_settings(srv, "llm.vision=on", **extra)


def pick(phrase: str):
    """A scripted vision model: on every frame, the box the legend names ``phrase``."""

    def reply(body: dict) -> dict:
        boxes = legend(body)
        answer = {f"frame_{t}": [n for n, ph in b if ph == phrase][:1] for t, b in boxes.items() if b}
        return answer | {"reason": f"scripted: the {phrase}"}

    return reply


@pytest.mark.parametrize("protocol", ["openai", "ollama"])
def test_the_frames_go_as_one_tiled_image_and_the_chosen_box_is_segmented(
    llm_clip, llm_rules_answer, protocol
):
    assert llm_rules_answer.labels == ["dog"]
    with FakeLLMServer(protocol, [{"reply": pick("car")}]) as srv:
        s = _settings(srv, **{"llm.vision_max_side": 800})
        ans = run_clip(llm_clip, s, get_toolset(s.tool_config()))
    body = srv.requests[0]["body"]
    imgs = images(body)
    assert len(imgs) == 1 and max(imgs[0].size) <= 800 and imgs[0].size[0] >= 790  # 3 x 2 tiles of 5 frames
    if protocol == "openai":
        part = next(p for p in body["messages"][1]["content"] if p["type"] == "image_url")
        assert part["image_url"]["detail"] == "high" and part["image_url"]["url"].startswith(
            "data:image/jpeg"
        )
    boxes = legend(body)
    assert sorted(boxes) == list(range(5)) and all(
        {ph for _, ph in b} == {"dog", "car"} for b in boxes.values()
    )
    assert ans.labels == ["car"] and ans.stats["llm_calls"] == len(srv.requests) == 1
    # the masks are the car's kept instances, exactly what the rules would segment for 'car'
    frames = llm_clip.frames
    tools = get_toolset(s.tool_config())
    for t, frame in enumerate(frames):
        found = D.split_by_phrase(tools.grounder.ground(frame, ["car"], box_threshold=0.1), ["car"])
        car = D.mask_of(found, ["car"], s.agent.decision, (frame.height, frame.width))
        assert car.any() and (ans.masks[t] & car).sum() / (ans.masks[t] | car).sum() > 0.9
    step = next(t for t in ans.trace if t.event == "llm_chose")
    assert step.data["mode"] == "vision" and step.object == "car"
    assert step.data["answer"]["frame_0"] and step.data["images"] == [list(imgs[0].size)]
    # the schema: per shown frame, an enum of that frame's box numbers (OpenAI: strict; Ollama: format)
    kind, schema = sent_schema(body)
    assert kind == ("json_schema" if protocol == "openai" else "format")
    assert list(schema["properties"]) == [*(f"frame_{t}" for t in range(5)), "reason"]
    for t, b in boxes.items():
        assert schema["properties"][f"frame_{t}"]["items"]["enum"] == [n for n, _ in b]
    if protocol == "openai":
        assert body["response_format"]["json_schema"]["strict"] is True


@pytest.mark.parametrize(
    "wrong,why",
    [
        ({"frame_0": [99]}, "answer.frame_0[0]: 99 is not one of"),  # no such box
        ({"frame_3": [1]}, "answer.frame_3[0]: 1 is not one of"),  # box 1 is frame 0's
    ],
)
def test_a_box_off_the_frames_menu_is_refused(llm_clip, llm_rules_answer, wrong, why):
    """From a server that does not constrain: a number that is not a box of its frame is off the menu,
    one repair, then the rules decide the clip (the trace says what was wrong)."""
    answer = {f"frame_{t}": [2 * t + 1] for t in range(5)} | wrong | {"reason": "x"}
    with FakeLLMServer("openai", [{"json": answer}]) as srv:
        s = _settings(srv)
        ans = run_clip(llm_clip, s, get_toolset(s.tool_config()))
    assert len(srv.requests) == 2 and ans.labels == llm_rules_answer.labels
    for a, b in zip(ans.masks, llm_rules_answer.masks, strict=True):
        assert np.array_equal(a, b)
    assert any(
        t.event == "llm_failed" and t.reason == "unusable" and why in t.data["error"] for t in ans.trace
    )


@pytest.mark.parametrize("protocol", ["openai", "ollama"])
def test_garbage_gets_one_repair_then_the_rules(llm_clip, llm_rules_answer, protocol):
    with FakeLLMServer(protocol, [{"content": "I think it's the dog!"}]) as srv:
        s = _settings(srv)
        ans = run_clip(llm_clip, s, get_toolset(s.tool_config()))
    assert len(srv.requests) == 2 and len(images(srv.requests[1]["body"])) == 1  # the repair resends it
    assert ans.labels == llm_rules_answer.labels
    assert any(
        t.event == "llm_failed" and t.reason == "unusable" and t.data["call"] == "vision propose"
        for t in ans.trace
    )


def test_a_timeout_falls_back_to_the_rules(llm_clip, llm_rules_answer):
    with FakeLLMServer("openai", [{"sleep": 3}, {"reply": pick("car")}]) as srv:
        s = _settings(srv, **{"llm.timeout_s": 1, "llm.max_retries": 0})
        ans = run_clip(llm_clip, s, get_toolset(s.tool_config()))
    assert ans.labels == llm_rules_answer.labels
    assert any(t.event == "llm_failed" and t.reason == "timeout" for t in ans.trace)


def test_auto_shows_images_to_known_vision_models_only(llm_clip):
    for model, expect in [("gpt-4o-mini", 1), ("qwen2.5vl:7b", 1), ("fake", 0), ("llama3.1:8b", 0)]:
        with FakeLLMServer("openai", [{"reply": pick("dog")}]) as srv:
            s = _settings(srv, **{"llm.vision": "auto", "llm.model": model})
            run_clip(llm_clip, s, get_toolset(s.tool_config()))
        assert len(images(srv.requests[0]["body"])) == expect, model


def test_more_frames_than_the_image_shows(dev_set):
    """10 frames, 4 shown: the unshown frames take the nearest shown frame's choice."""
    frames, wav, _ = dev_clip_paths(CLIP)
    clip = load_clip(frames, wav)
    from dataclasses import replace

    clip = replace(
        clip,
        frames=[replace(f, index=i) for i, f in enumerate(clip.frames + clip.frames)],
        segments=clip.segments + clip.segments,
    )
    with FakeLLMServer("openai", [{"reply": pick("car")}]) as srv:
        s = _settings(srv, **{"llm.vision_frames": 4, "agent.propagate": "false"})
        ans = run_clip(clip, s, get_toolset(s.tool_config()))
    assert sorted(legend(srv.requests[0]["body"])) == [0, 3, 6, 9]
    assert all(f.labels == ["car"] for f in ans.frames)
    step = next(t for t in ans.trace if t.event == "llm_chose")
    assert step.data["carried"] == [1, 2, 4, 5, 7, 8] and step.data["rules_decided"] == []


@pytest.mark.parametrize("protocol", ["openai", "ollama"])
def test_cli_ask_with_vision(tmp_path, dev_set, protocol):
    """`ask --set llm.backend=... --set llm.vision=on`: the frames go as images, at most 2 calls (+1
    repair), and the masks follow the box the model chose."""
    frames, wav, _ = dev_clip_paths(CLIP)
    with FakeLLMServer(protocol, [{"reply": pick("car")}]) as srv:
        res = CliRunner().invoke(
            app,
            [
                "ask",
                str(frames),
                "--audio",
                str(wav),
                "--json",
                *("--set", f"llm.backend={protocol}", "--set", f"llm.base_url={srv.url}"),
                *("--set", "llm.model=fake", "--set", "llm.vision=on", *LLM_SETS),
            ],
        )
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["labels"] == ["car"] and 1 <= data["stats"]["llm_calls"] <= 3
    assert len(images(srv.requests[0]["body"])) == 1


@pytest.mark.slow
def test_a_vision_model_picking_the_rules_boxes_reproduces_the_rules_eval(dev_set, tmp_path, monkeypatch):
    """The dev-set eval with a scripted vision model that always picks the boxes of the phrases the
    rules picked gives the rules' masks exactly, and every clip's trace says the vision model decided:
    the plumbing (tiles, numbers, legend, answer -> phrases -> masks) adds nothing of its own."""
    from PIL import Image

    from avs_agent.agent.rules import RulesReasoner
    from avs_agent.evals import runner as R

    picked: dict = {}
    decide, retry = RulesReasoner.decide, RulesReasoner.retry

    def spy_decide(self, table, data=None):  # the LLM reasoner asks the rules first (its fallback)
        d = decide(self, table, data)
        picked["decide"] = d.phrases
        return d

    def spy_retry(self, failing, choices, table, data=None):
        d = retry(self, failing, choices, table, data)
        picked["retry"] = (failing, d.phrases)
        return d

    monkeypatch.setattr(RulesReasoner, "decide", spy_decide)
    monkeypatch.setattr(RulesReasoner, "retry", spy_retry)

    def as_the_rules(body: dict) -> dict:
        if "numbered box" in user_text(body):
            boxes = legend(body)
            answer = {
                f"frame_{t}": [n for ph in picked["decide"][t] for n, p in b if p == ph]
                for t, b in boxes.items()
            }
            return answer | {"reason": "as the rules"}
        failing, phrases = picked["retry"]
        return {f"frame_{t}": (phrases[t] or ["none"])[0] for t in failing} | {"reason": "as the rules"}

    cache = tmp_path / "cache"
    rules = R.run_eval(
        "avsbench-s4",
        dev_set,
        "test",
        "agent",
        tmp_path / "rules",
        load_settings(),
        cache_dir=cache,
        progress=False,
    )
    with FakeLLMServer("openai", [{"reply": as_the_rules}]) as srv:
        s = load_settings(
            overrides=["llm.backend=openai", f"llm.base_url={srv.url}", "llm.model=fake", "llm.vision=on"]
        )
        vision = R.run_eval(
            "avsbench-s4", dev_set, "test", "agent", tmp_path / "vision", s, cache_dir=cache, progress=False
        )
    assert vision["J"] == rules["J"] and vision["n_clips"] == rules["n_clips"] == 40
    pngs = sorted((tmp_path / "rules" / "masks").rglob("*.png"))
    assert len(pngs) == 200
    for png in pngs:
        other = tmp_path / "vision" / png.relative_to(tmp_path / "rules")
        assert np.array_equal(np.asarray(Image.open(png)), np.asarray(Image.open(other))), png
    traces = R.read_jsonl(tmp_path / "vision" / "traces.jsonl")
    for tr in traces:
        events = [t["event"] for t in tr["trace"]]
        assert "llm_chose" in events or "llm_skipped" in events, tr["key"]
        assert "llm_failed" not in events, tr["key"]
    calls = [r["stats"]["llm_calls"] for r in R.read_jsonl(tmp_path / "vision" / "clips.jsonl")]
    assert sum(calls) == len(srv.requests) and max(calls) <= 2


def test_the_reason_is_quoted(llm_clip):
    answer = {f"frame_{t}": [2 * t + 1] for t in range(5)} | {"reason": "a dog barks; a helicopter is heard"}
    with FakeLLMServer("ollama", [{"json": answer}]) as srv:
        s = _settings(srv)
        ans = run_clip(llm_clip, s, get_toolset(s.tool_config()))
    msg = next(t.message for t in ans.trace if t.event == "llm_chose")  # the trace's words quote it
    assert msg.startswith("vision LLM (ollama:fake)") and msg.endswith(": a dog barks; a helicopter is heard")
    assert ans.labels == ["dog"]
    assert ans.text.endswith("reasoned: a dog barks; a helicopter is heard")
