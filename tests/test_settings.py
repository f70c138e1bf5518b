import pytest

from avs_agent.agent.settings import load_settings, parse_overrides
from avs_agent.tools.errors import ConfigError


def test_defaults_are_lite_rules():
    s = load_settings()
    assert s.profile == "lite"
    assert s.llm.backend == "rules"
    assert s.tools.grounder.impl == "lite"


def test_precedence_default_profile_file_env_cli(tmp_path, monkeypatch):
    # default 0.3 (code), profile file lite.yaml says 0.3 too; user file < env < --set
    user = tmp_path / "user.yaml"
    user.write_text(
        "tools:\n  grounder:\n    box_threshold: 0.41\nagent:\n  max_attempts: 7\n  min_mask_area: 0.01\nllm:\n  model: from-file\n"
    )
    s = load_settings(config_file=user)
    assert s.tools.grounder.box_threshold == 0.41 and s.agent.max_attempts == 7

    monkeypatch.setenv("AVS_AGENT_TOOLS__GROUNDER__BOX_THRESHOLD", "0.52")
    monkeypatch.setenv("AVS_AGENT_AGENT__MAX_ATTEMPTS", "5")
    s = load_settings(config_file=user)
    assert s.tools.grounder.box_threshold == 0.52  # env beats file
    assert s.agent.max_attempts == 5
    assert s.agent.min_mask_area == 0.01  # file beats default, untouched by env
    assert s.llm.model == "from-file"

    s = load_settings(config_file=user, overrides=["tools.grounder.box_threshold=0.63"])
    assert s.tools.grounder.box_threshold == 0.63  # CLI beats env
    assert s.agent.max_attempts == 5


def test_profile_from_cli_beats_env(monkeypatch):
    monkeypatch.setenv("AVS_AGENT_PROFILE", "full")
    assert load_settings().profile == "full"
    assert load_settings(profile="lite").profile == "lite"


def test_profile_file_beats_code_default(tmp_path):
    s = load_settings()
    assert (
        s.tools.audio_text_scorer.impl == "tag_embedding"
    )  # set in configs/lite.yaml, code default is 'none'


def test_models_dir_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("AVS_AGENT_MODELS_DIR", str(tmp_path))
    tools = load_settings().tool_config()
    assert tools.locate("k", "yamnet/yamnet.tflite", hub=False).path == tmp_path / "yamnet" / "yamnet.tflite"
    assert tools.locate("k", "/abs/model").path.as_posix() == "/abs/model"


def test_parse_overrides_types():
    out = parse_overrides(["a.b=1", "a.c=true", "d=hello", "e=null", "f=[1, 2]"])
    assert out == {"a": {"b": 1, "c": True}, "d": "hello", "e": None, "f": [1, 2]}


@pytest.mark.parametrize("bad", [["nonsense"], ["=3"]])
def test_bad_override_syntax(bad):
    with pytest.raises(ConfigError):
        parse_overrides(bad)


def test_unknown_key_is_one_line_error():
    with pytest.raises(ConfigError, match="invalid setting agent.no_such_key"):
        load_settings(overrides=["agent.no_such_key=1"])


def test_bad_value_and_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="llm.backend"):
        load_settings(overrides=["llm.backend=gpt-5000"])
    with pytest.raises(ConfigError, match="not found"):
        load_settings(config_file=tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [unclosed")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_settings(config_file=bad)
