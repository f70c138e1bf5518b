"""Strategies over the fake toolset (fast) and the real lite tools on the dev set (slow)."""

from __future__ import annotations

import pytest

from avs_agent.agent.settings import load_settings
from avs_agent.evals import datasets as D
from avs_agent.evals.strategies import STRATEGIES, StrategyError, get_strategy
from avs_agent.tools.types import Captions
from test_eval_runner import fake_toolset
from test_loaders import make_s4


@pytest.fixture
def clips(tmp_path):
    ds = D.load_dataset("avsbench-s4", make_s4(tmp_path), "test")
    return [s.inputs.load() for s in ds], ds


class FakeImageCaptioner:
    """Captions name what the fake grounder sees, plus the background."""

    name = "fake-vcap"

    def __init__(self, grounder):
        self.grounder = grounder

    def caption(self, frames):
        return [
            Captions(texts=["a photo"], noun_phrases=[*self.grounder.detect_all(f).labels, "grass"])
            for f in frames
        ]


@pytest.mark.parametrize("name", ["audio-cls", "vcap-acls", "openavs", "segment-all"])
def test_baselines_find_the_sounding_object(name, clips):
    settings = load_settings("lite")
    (dog, car, siren), _ = clips
    ts = fake_toolset()
    ts.image_captioner = FakeImageCaptioner(ts.grounder)
    a = get_strategy(name).solve(dog, ts, settings)
    assert len(a.masks) == 5 and a.masks[0].shape == (16, 16)
    assert a.labels == ["dog"] and a.visible
    assert get_strategy(name).solve(car, ts, settings).labels == ["car"]
    off = get_strategy(name).solve(siren, ts, settings)  # a siren: nothing visible makes it
    assert not off.visible and off.labels == []
    assert a.stats["strategy"] == name and a.trace


def test_openavs_rules_translation_is_marked(clips):
    (dog, _, _), _ = clips
    a = get_strategy("openavs").solve(dog, fake_toolset(), load_settings("lite"))
    assert a.stats["translation"] == "rules" and a.stats["llm_calls"] == 0


@pytest.mark.parametrize("protocol", ["openai", "ollama"])
def test_openavs_llm_translation_through_a_server(clips, protocol):
    """The LLM's translation is used (real HTTP to a local fake server), one call per distinct
    description; its answer 'car' for the dog's sounds makes the strategy segment the car."""
    from fake_llm import FakeLLMServer

    (dog, _, _), _ = clips
    with FakeLLMServer(protocol, [{"content": "Car, none"}]) as srv:
        settings = load_settings(
            "lite",
            overrides=[
                f"llm.backend={protocol}",
                f"llm.base_url={srv.url}",
                "llm.model=fake",
                "llm.timeout_s=5",
            ],
        )
        a = get_strategy("openavs").solve(dog, fake_toolset(), settings)
        n = len(srv.requests)
    assert a.stats["translation"] == f"llm:{protocol}" and a.stats["llm_calls"] == n >= 1
    assert a.labels == ["car"]
    assert "<description>" in str(srv.requests[0]["body"]["messages"])
    assert any("LLM translated" in t.message and "['car']" in t.message for t in a.trace)


def test_openavs_llm_down_falls_back_to_the_rules(clips):
    """Nothing listens at the LLM's address: every description is translated by the rules instead,
    the answer equals the rules run, and the trace says why."""
    from test_serve import free_port

    (dog, _, _), _ = clips
    down = load_settings(
        "lite",
        overrides=[
            "llm.backend=openai",
            f"llm.base_url=http://127.0.0.1:{free_port()}/v1",
            "llm.model=fake",
            "llm.timeout_s=2",
            "llm.max_retries=0",
        ],
    )
    a = get_strategy("openavs").solve(dog, fake_toolset(), down)
    rules = get_strategy("openavs").solve(dog, fake_toolset(), load_settings("lite"))
    assert a.labels == rules.labels == ["dog"] and a.stats["llm_calls"] == 0
    assert a.stats["translation_fallbacks"] >= 1
    assert any("failed" in t.message and "the rules translate it" in t.message for t in a.trace)


def test_caption_strategies_need_their_captioner(clips):
    """Without the captioner a strategy is built on, it refuses (one line) rather than becoming another
    strategy: vcap-acls on detector labels would be segment-all."""
    (dog, _, _), _ = clips
    for name, what in (
        ("audio-caption", "audio captioner"),
        ("acap-vcls", "audio captioner"),
        ("vcap-acls", "image captioner"),
    ):
        with pytest.raises(StrategyError, match=what):
            get_strategy(name).solve(dog, fake_toolset(), load_settings("lite"))


class FakeAudioCaptioner:
    name = "fake-acap"

    def caption(self, audio, prompts=None):
        return [Captions(texts=["a dog is barking"], noun_phrases=["dog"]) for _ in audio]


def test_caption_strategies_with_a_captioner(clips):
    (dog, _, _), _ = clips
    ts = fake_toolset()
    ts.audio_captioner = FakeAudioCaptioner()
    for name in ("audio-caption", "acap-vcls"):
        assert get_strategy(name).solve(dog, ts, load_settings("lite")).labels == ["dog"]


def test_only_the_oracle_gets_the_label(clips):
    assert [s.name for s in STRATEGIES.values() if s.needs_label] == ["oracle-label"]
    (_, car, _), _ = clips
    a = get_strategy("oracle-label").solve(car, fake_toolset(), load_settings("lite"), label="car_horn")
    assert a.labels == ["car"] and a.stats["oracle"]
    with pytest.raises(StrategyError, match="unknown strategy"):
        get_strategy("nope")


@pytest.mark.slow
def test_lite_strategies_on_dev_set(dev_set, tmp_path):
    """Every lite strategy over all 40 dev clips; the agent leaves off-screen clips empty."""
    from avs_agent.evals.runner import run_eval

    settings = load_settings("lite")
    cache = tmp_path / "cache"
    out = {}
    for name in ("segment-all", "audio-cls", "openavs", "agent"):
        out[name] = run_eval(
            "avsbench-s4", dev_set, "test", name, tmp_path / name, settings, cache_dir=cache, progress=False
        )
        assert out[name]["n_clips"] == 40
    assert out["agent"]["offscreen_empty"] >= 0.8
    assert out["segment-all"]["J_visible"] > 0.3
    assert all(0.0 <= s["J"] <= 1.0 and 0.0 <= s["F"] <= 1.0 for s in out.values())
